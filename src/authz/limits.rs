//! The limits stage of a decision: the limits a request is counted under — the policy's
//! (global, then the route's), the key's own, then its owner's — and the limiter's answer.
//! Each check carries its [`LimitSource`]: a refusal says whose limit was reached from the
//! check that refused, not from where it sat in the list.

use super::decision::{Deny, Principal};
use super::{Authorizer, AuthzError, RateLimitState};
use crate::code::{Code, Reason};
use crate::domain::{ClientNetwork, CreditHolder, KeyLimit, KeyRecord, Timestamp};
use crate::policy::{LimitKind, LimitRule, LimitSubject, OnStoreError, Policy, Route};
use crate::ratelimit::{Admission, LimitCheck, LimitOutcome, LimitSource, Room};
use smallvec::SmallVec;
use std::borrow::Cow;

/// What a request can be counted per.
pub(super) struct Subjects<'a> {
    pub principal: Option<&'a Principal>,
    /// The one application the request names.
    pub application: Option<&'a str>,
    pub network: Option<&'a ClientNetwork>,
}

impl<'a> Subjects<'a> {
    fn of(&self, per: LimitSubject) -> Option<Cow<'a, str>> {
        match per {
            LimitSubject::Account => self.principal.map(|p| p.account_id().as_str().into()),
            LimitSubject::Credential => self.principal.map(|p| match p {
                Principal::Key(key) => key.id.to_string().into(),
                Principal::Session(session) => session.id.to_string().into(),
            }),
            LimitSubject::Application => self.application.map(Into::into),
            LimitSubject::Ip => self.network.map(|c| c.as_str().into()),
        }
    }
}

/// The limits stage's answer. Moved once per call: boxing the admission (the larger
/// variant) would cost an allocation per call instead.
#[allow(clippy::large_enum_variant)]
pub(super) enum Quota {
    /// Every limit had room: the call is counted, in `admission` (none when no limit
    /// applied) until it is decided; `tightest` is the limit with the least room left.
    Admitted {
        admission: Option<Admission>,
        tightest: Option<RateLimitState>,
    },
    Refused {
        deny: Deny,
        rate_limit: Option<RateLimitState>,
    },
}

impl Authorizer {
    /// Checks and counts the request under every limit that applies to it.
    pub(super) async fn admit_limits(
        &self,
        policy: &Policy,
        route: &Route,
        subjects: Subjects<'_>,
        key: Option<&KeyRecord>,
        now: Timestamp,
    ) -> Result<Quota, AuthzError> {
        // The global limit applies to every authenticated request.
        let global = policy.global_limit().filter(|_| subjects.principal.is_some());
        let mut named: SmallVec<[(&LimitRule, Cow<'_, str>); 4]> = SmallVec::new();
        for rule in global.into_iter().chain(&route.limits) {
            // A limit is never skipped for want of its subject: the request is refused.
            let Some(subject) = subjects.of(rule.per) else {
                let deny = Deny::new(
                    Code::BadRequest,
                    format!("the route counts requests per {}, and the request names none", rule.per.as_str()),
                );
                return Ok(Quota::Refused { deny, rate_limit: None });
            };
            named.push((rule, subject));
        }
        // The key's own limits, after the policy's: they only tighten.
        let key_rules = key.map(|key| key_limit_rules("key", &key.terms.limits, route)).unwrap_or_default();
        let key_subject = match key {
            Some(key) if !key_rules.is_empty() => key.id.to_string(),
            _ => String::new(),
        };
        // Then its owner's, counted once for all of the owner's keys.
        let owner = key.and_then(|key| key.owner.as_deref());
        let owner_rules = owner.map(|owner| key_limit_rules("owner", &owner.limits, route)).unwrap_or_default();
        let owner_subject = match owner {
            Some(owner) if !owner_rules.is_empty() => {
                CreditHolder::Owner(owner.account_id.clone(), owner.id.clone()).stored()
            }
            _ => String::new(),
        };
        let mut checks: SmallVec<[LimitCheck<'_>; 4]> = named
            .iter()
            .map(|(rule, subject)| LimitCheck { rule, subject: subject.as_ref(), source: LimitSource::Policy })
            .collect();
        checks.extend(key_rules.iter().map(|rule| LimitCheck {
            rule,
            subject: &key_subject,
            source: LimitSource::Key,
        }));
        checks.extend(owner_rules.iter().map(|rule| LimitCheck {
            rule,
            subject: &owner_subject,
            source: LimitSource::Owner,
        }));
        if checks.is_empty() {
            return Ok(Quota::Admitted { admission: None, tightest: None });
        }
        let checked = self.limiter.admit(&checks, now).await;
        match &checked {
            Ok((LimitOutcome::Admitted { .. }, _)) => &self.limit_outcomes.admitted,
            Ok((LimitOutcome::Limited { .. }, _)) => &self.limit_outcomes.limited,
            Err(_) => &self.limit_outcomes.unavailable,
        }
        .inc();
        let (outcome, admission) = checked.map_err(AuthzError::LimiterUnavailable)?;
        Ok(match outcome {
            LimitOutcome::Admitted { tightest } => Quota::Admitted {
                admission: Some(admission),
                tightest: tightest.map(|Room { limit, remaining }| RateLimitState {
                    limit,
                    remaining,
                    retry_after_seconds: 0,
                }),
            },
            LimitOutcome::Limited { limit, retry_after, check } => {
                let retry_after_seconds = retry_after.as_millis().div_ceil(1000).max(1) as u32;
                let reason = match checks[check].source {
                    LimitSource::Policy => Reason::RateLimited,
                    LimitSource::Key => Reason::KeyRateLimited,
                    LimitSource::Owner => Reason::OwnerRateLimited,
                };
                let deny = Deny::new(
                    Code::RateLimitReached,
                    format!("rate limit of {limit} reached; retry after {retry_after_seconds} s"),
                );
                Quota::Refused {
                    deny: deny.because(reason),
                    rate_limit: Some(RateLimitState { limit, remaining: 0, retry_after_seconds }),
                }
            }
        })
    }
}

/// A key's (or its owner's) own limits that apply on `route`, as rules. Their names are
/// the key's, under a prefix (`key:`, `owner:`) no policy rule key has.
fn key_limit_rules(prefix: &str, limits: &[KeyLimit], route: &Route) -> smallvec::SmallVec<[LimitRule; 2]> {
    limits
        .iter()
        .filter(|limit| limit.applies_to(&route.template))
        .map(|limit| LimitRule {
            key: format!("{prefix}:{}", limit.name).into(),
            limit: limit.limit,
            window: limit.window,
            per: LimitSubject::Credential,
            on_store_error: OnStoreError::Closed,
            kind: LimitKind::Exact,
        })
        .collect()
}
