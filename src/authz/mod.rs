//! Authorize: from a request to a [`Verdict`], in the order of the decision table (README).
//!
//! This module gathers the facts — the route, who is calling ([`Authenticator`]), the
//! application (through the [`DecisionStore`] trait), the limits ([`Limiter`]) — and
//! [`decision::evaluate`] decides on them.

pub mod decision;
mod metrics;

use crate::authn::verifier::VerifierError;
use crate::authn::{Authentication, Authenticator, AuthnError, Throttled};
use crate::clock::Clock;
use crate::code::{Code, Reason};
use crate::domain::{ApplicationId, ClientNetwork, CreditHolder, KeyLimit, KeyRecord, Scope, Timestamp};
use crate::policy::{
    Access, LimitKind, LimitRule, LimitSubject, NamedApplication, OnStoreError, Policy, RequestParts, Route,
};
use crate::ratelimit::{LimitCheck, LimitOutcome, Limiter, LimiterError, Room};
use crate::store::{DecisionStore, Spend, StoreError};
use crate::usage::UsageRecorder;
use decision::{evaluate, ApplicationFact, Deny, Principal};
use metrics::{ActivePolicy, DecisionCounters, LimitOutcomes};
pub use metrics::{AuthorizeMetrics, CauseLabels, DecisionLabels, OutcomeLabels};
use std::sync::Arc;
use std::time::Duration;

/// A request to decide, borrowed from the wire message.
#[derive(Debug)]
pub struct AuthorizeQuery<'a> {
    pub credential: &'a str,
    pub method: &'a str,
    /// The request target as the edge got it: the path, and maybe its query.
    pub path: &'a str,
    /// The application the edge says the request acts on, if it says.
    pub application_id: Option<&'a str>,
    pub required_scopes: Vec<Scope>,
    /// The client's address, as the edge determined it under its trusted-hop rule.
    pub client: Option<std::net::IpAddr>,
    /// Credits the call spends on a key that carries them; `None`: the route's cost.
    pub cost: Option<u32>,
    /// Headers and body, for routes that read their application there.
    pub parts: RequestParts<'a>,
}

/// The answer itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    Denied(Deny),
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allowed)
    }

    /// Why it was denied; `None` when allowed.
    pub fn denial(&self) -> Option<&Deny> {
        match self {
            Decision::Allowed => None,
            Decision::Denied(deny) => Some(deny),
        }
    }
}

/// A decision and the facts it was made on, for the edge that asked.
#[derive(Debug)]
pub struct Verdict {
    pub decision: Decision,
    /// Who presented a verified credential (even when denied: the caller proved
    /// possession, so saying whose it is tells them nothing new).
    pub principal: Option<Principal>,
    pub route: Option<Arc<str>>,
    /// The route's position in the policy the call was decided under.
    route_index: Option<usize>,
    pub application_id: Option<String>,
    /// The tightest limit that applied, and when denied by one, how long to wait.
    pub rate_limit: Option<RateLimitState>,
    /// The key's credits after the call, when it carries credits and got that far.
    pub credits_remaining: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitState {
    pub limit: u32,
    pub remaining: u32,
    /// Whole seconds, rounded up; 0 unless limited.
    pub retry_after_seconds: u32,
}

impl Verdict {
    fn deny(mut self, deny: Deny) -> Self {
        self.decision = Decision::Denied(deny);
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthzError {
    #[error("the key store is unavailable")]
    Unavailable(#[source] StoreError),
    #[error("the rate limit store is unavailable and the limit fails closed")]
    LimiterUnavailable(#[source] LimiterError),
    #[error(transparent)]
    Store(StoreError),
    #[error(transparent)]
    Verifier(#[from] VerifierError),
    /// The caller's deadline (or keygate's own) came before a decision did.
    #[error("no decision within {0:?}: a store or the verifier is too slow")]
    DeadlineExceeded(Duration),
}

impl From<StoreError> for AuthzError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => AuthzError::Unavailable(e),
            other => AuthzError::Store(other),
        }
    }
}

impl From<AuthnError> for AuthzError {
    fn from(e: AuthnError) -> Self {
        match e {
            AuthnError::Store(e) => e.into(),
            AuthnError::Verifier(e) => AuthzError::Verifier(e),
        }
    }
}

pub struct Authorizer {
    /// Replaced whole by a reload; each call decides under the one it loaded.
    policy: arc_swap::ArcSwap<ActivePolicy>,
    /// Decisions of calls no route matched.
    unrouted: DecisionCounters,
    /// Applications, looked up by the id a request names.
    store: Arc<dyn DecisionStore>,
    authn: Arc<Authenticator>,
    limiter: Arc<Limiter>,
    clock: Arc<dyn Clock>,
    usage: Arc<UsageRecorder>,
    metrics: AuthorizeMetrics,
    /// The limit check counters, resolved once: counting takes no lock.
    limit_outcomes: LimitOutcomes,
    /// Keys whose credits this replica saw at zero. Until `ask_again_at`, and while the
    /// record is that version, a call is refused without asking the store. The balance
    /// grows by a refill (time), an operator's change (a new version, which every replica's
    /// cache hears of), or a spend given back to a caller that gave up (which no cache
    /// hears of: hence a call at most every [`SPENT_OUT_RECHECK`] still asks).
    spent_out: quick_cache::sync::Cache<crate::domain::KeyId, SpentOut>,
}

impl Authorizer {
    pub fn new(
        policy: Policy,
        store: Arc<dyn DecisionStore>,
        authn: Arc<Authenticator>,
        limiter: Arc<Limiter>,
        clock: Arc<dyn Clock>,
        usage: Arc<UsageRecorder>,
    ) -> Self {
        let metrics = AuthorizeMetrics::default();
        Self {
            policy: arc_swap::ArcSwap::new(Arc::new(ActivePolicy::new(policy))),
            unrouted: DecisionCounters::default(),
            store,
            authn,
            limiter,
            clock,
            usage,
            limit_outcomes: LimitOutcomes::of(&metrics.limits),
            metrics,
            spent_out: quick_cache::sync::Cache::new(10_000),
        }
    }

    /// Puts `policy` in force for every call that starts from now on.
    pub fn replace_policy(&self, policy: Policy) {
        self.policy.store(Arc::new(ActivePolicy::new(policy)));
    }

    /// The route templates of the policy in force, as it writes them.
    pub fn route_templates(&self) -> Vec<Arc<str>> {
        self.policy.load().policy.routes().iter().map(|r| r.template.clone()).collect()
    }

    /// Is `template` one of them?
    pub fn has_route(&self, template: &str) -> bool {
        self.policy.load().policy.routes().iter().any(|r| &*r.template == template)
    }

    pub fn metrics(&self) -> AuthorizeMetrics {
        self.metrics.clone()
    }

    /// [`Authorizer::authorize`], answered within `budget`: past it the caller gets an
    /// error (fail closed) while it can still use one, not the edge's own timeout.
    pub async fn authorize_within(&self, query: &AuthorizeQuery<'_>, budget: Duration) -> Result<Verdict, AuthzError> {
        let deadline = tokio::time::Instant::now() + budget;
        let mut decided = std::pin::pin!(self.authorize(query));
        // Most calls decide at their first poll (the key, application and limits are in
        // memory): those arm no timer. The budget still counts from the call's start.
        let first =
            std::future::poll_fn(|cx| std::task::Poll::Ready(std::future::Future::poll(decided.as_mut(), cx))).await;
        if let std::task::Poll::Ready(decided) = first {
            return decided;
        }
        match tokio::time::timeout_at(deadline, decided).await {
            Ok(decided) => decided,
            Err(_) => {
                self.metrics.failures.get_or_create(&CauseLabels { cause: "deadline" }).inc();
                Err(AuthzError::DeadlineExceeded(budget))
            }
        }
    }

    /// Decides, then counts the decision and notes the key's use.
    pub async fn authorize(&self, query: &AuthorizeQuery<'_>) -> Result<Verdict, AuthzError> {
        // One reading of the clock per call: every step decides at the same instant.
        let now = self.clock.now();
        let active = self.policy.load();
        let decided = self.decide(query, now, &active.policy).await;
        match &decided {
            Ok(verdict) => {
                let counters = verdict.route_index.and_then(|i| active.decisions.get(i)).unwrap_or(&self.unrouted);
                counters.count(&self.metrics.decisions, verdict);
                if let (Decision::Allowed, Some(Principal::Key(key))) = (&verdict.decision, &verdict.principal) {
                    self.usage.used(key, now);
                }
            }
            Err(e) => {
                let cause = match e {
                    AuthzError::Unavailable(_) => "store_unavailable",
                    AuthzError::Store(_) => "store",
                    AuthzError::LimiterUnavailable(_) => "limiter_unavailable",
                    AuthzError::Verifier(_) => "verifier",
                    AuthzError::DeadlineExceeded(_) => "deadline",
                };
                self.metrics.failures.get_or_create(&CauseLabels { cause }).inc();
            }
        }
        decided
    }

    async fn decide(&self, query: &AuthorizeQuery<'_>, now: Timestamp, policy: &Policy) -> Result<Verdict, AuthzError> {
        // The route first: without one there is nothing to check a credential against. One
        // reading of the target at every entry; a path that normalising
        //    would change matches nothing.
        let matched = keygate_api::edge::request_target(query.path)
            .ok()
            .and_then(|target| policy.match_route(query.method, target.path).map(|m| (m, target.query)));
        let Some((matched, target_query)) = matched else {
            return Ok(Verdict {
                decision: Decision::Denied(
                    Deny::new(Code::NotFound, "no route matches the request").because(Reason::NoRoute),
                ),
                principal: None,
                route: None,
                route_index: None,
                application_id: query.application_id.map(str::to_owned),
                rate_limit: None,
                credits_remaining: None,
            });
        };
        let route = matched.route;
        let parts = RequestParts { query: target_query.or(query.parts.query), ..query.parts };
        let named = crate::policy::named_application(
            &route.application,
            matched.path_application,
            query.application_id,
            &parts,
        );
        let application_id = match &named {
            NamedApplication::One(id) => Some(id.as_ref()),
            NamedApplication::None | NamedApplication::Conflict => None,
        };
        let mut verdict = Verdict {
            decision: Decision::Allowed,
            principal: None,
            route: Some(route.template.clone()),
            route_index: Some(matched.index),
            application_id: application_id.map(str::to_owned),
            rate_limit: None,
            credits_remaining: None,
        };
        // Guessing budgets and per-IP limits count a client's network (IPv6 per /64).
        let network = query.client.map(ClientNetwork::of);

        match route.access {
            // Who is calling, before anything about the request is looked up for them.
            Access::Credentials(accepts) => {
                let principal = match self.authn.authenticate(query.credential, accepts, network).await? {
                    Authentication::Verified(principal) => principal,
                    Authentication::Refused(deny) => return Ok(verdict.deny(deny)),
                    Authentication::Throttled(throttled) => return Ok(throttled_verdict(verdict, throttled)),
                };
                // What they may do: the key's state, the application, the scopes (decided
                // only now that the secret is proven, so none of it shows without it).
                let application = match application_id {
                    None => None,
                    Some(raw) => match ApplicationId::parse(raw) {
                        Ok(id) => self.store.application(&id).await?,
                        Err(_) => None,
                    },
                };
                let fact = match (&named, &application) {
                    (NamedApplication::Conflict, _) => ApplicationFact::Conflicting,
                    (NamedApplication::None, _) if route.needs_application => ApplicationFact::Missing,
                    (NamedApplication::None, _) => ApplicationFact::NotRequested,
                    (NamedApplication::One(_), None) => ApplicationFact::Unknown,
                    (NamedApplication::One(_), Some(app)) => ApplicationFact::Known(app),
                };
                let required = route.scopes.iter().chain(&query.required_scopes);
                let outcome = evaluate(&principal, fact, required, query.client, now);
                verdict.principal = Some(principal);
                if let Err(deny) = outcome {
                    return Ok(verdict.deny(deny));
                }
            }
            // A public route checks no credential, but a request that names its
            // application twice, or not at all where it must, is still malformed.
            Access::Public => match named {
                NamedApplication::Conflict => return Ok(verdict.deny(decision::application_conflict())),
                NamedApplication::None if route.needs_application => {
                    return Ok(verdict.deny(decision::application_missing()))
                }
                NamedApplication::None | NamedApplication::One(_) => {}
            },
        }

        // Limits last, so that only requests that would otherwise be allowed use quota;
        // credits after them, and a call they refuse gives its counts back.
        let subject_of = |per: LimitSubject| -> Option<std::borrow::Cow<'_, str>> {
            let principal = verdict.principal.as_ref();
            match per {
                LimitSubject::Account => principal.map(|p| p.account_id().as_str().into()),
                LimitSubject::Credential => principal.map(|p| match p {
                    Principal::Key(key) => key.id.to_string().into(),
                    Principal::Session(session) => session.id.to_string().into(),
                }),
                LimitSubject::Application => application_id.map(Into::into),
                LimitSubject::Ip => network.as_ref().map(|c| c.as_str().into()),
            }
        };
        // The global limit applies to every authenticated request.
        let global = policy.global_limit().filter(|_| verdict.principal.is_some());
        let mut subjects: smallvec::SmallVec<[_; 4]> = smallvec::SmallVec::new();
        for rule in global.into_iter().chain(&route.limits) {
            // A limit is never skipped for want of its subject: the request is refused.
            let Some(subject) = subject_of(rule.per) else {
                let deny = Deny::new(
                    Code::BadRequest,
                    format!("the route counts requests per {}, and the request names none", rule.per.as_str()),
                );
                drop(subjects);
                return Ok(verdict.deny(deny));
            };
            subjects.push((rule, subject));
        }
        // The key's own limits, after the policy's: they only tighten.
        let key = match &verdict.principal {
            Some(Principal::Key(key)) => Some(key.clone()),
            _ => None,
        };
        let key_rules = key.as_deref().map(|key| key_limit_rules("key", &key.terms.limits, route)).unwrap_or_default();
        let key_subject = match &key {
            Some(key) if !key_rules.is_empty() => key.id.to_string(),
            _ => String::new(),
        };
        // Then its owner's, counted once for all of the owner's keys.
        let owner = key.as_deref().and_then(|key| key.owner.as_deref());
        let owner_rules = owner.map(|owner| key_limit_rules("owner", &owner.limits, route)).unwrap_or_default();
        let owner_subject = match owner {
            Some(owner) if !owner_rules.is_empty() => {
                CreditHolder::Owner(owner.account_id.clone(), owner.id.clone()).stored()
            }
            _ => String::new(),
        };
        let policy_checks = subjects.len();
        let key_checks = policy_checks + key_rules.len();
        let mut checks: smallvec::SmallVec<[LimitCheck<'_>; 4]> =
            subjects.iter().map(|(rule, subject)| LimitCheck { rule, subject: subject.as_ref() }).collect();
        checks.extend(key_rules.iter().map(|rule| LimitCheck { rule, subject: key_subject.as_str() }));
        checks.extend(owner_rules.iter().map(|rule| LimitCheck { rule, subject: owner_subject.as_str() }));
        if checks.is_empty() {
            drop(checks);
            drop(subjects);
            return self.spend_credits_of(key, query, route, now, verdict).await;
        }
        let checked = self.limiter.admit(&checks, now).await;
        drop(checks);
        drop(subjects);
        match &checked {
            Ok((LimitOutcome::Admitted { .. }, _)) => &self.limit_outcomes.admitted,
            Ok((LimitOutcome::Limited { .. }, _)) => &self.limit_outcomes.limited,
            Err(_) => &self.limit_outcomes.unavailable,
        }
        .inc();
        let (outcome, admission) = checked.map_err(AuthzError::LimiterUnavailable)?;
        match outcome {
            LimitOutcome::Admitted { tightest } => {
                verdict.rate_limit = tightest.map(|Room { limit, remaining }| RateLimitState {
                    limit,
                    remaining,
                    retry_after_seconds: 0,
                });
            }
            LimitOutcome::Limited { limit, retry_after, check } => {
                let retry_after_seconds = retry_after.as_millis().div_ceil(1000).max(1) as u32;
                verdict.rate_limit = Some(RateLimitState { limit, remaining: 0, retry_after_seconds });
                let reason = match check {
                    check if check >= key_checks => Reason::OwnerRateLimited,
                    check if check >= policy_checks => Reason::KeyRateLimited,
                    _ => Reason::RateLimited,
                };
                let deny = Deny::new(
                    Code::RateLimitReached,
                    format!("rate limit of {limit} reached; retry after {retry_after_seconds} s"),
                );
                return Ok(verdict.deny(deny.because(reason)));
            }
        }
        let decided = self.spend_credits_of(key, query, route, now, verdict).await;
        match &decided {
            Ok(verdict) if verdict.decision.is_allowed() => admission.keep(),
            // Refused for its credits (or not decided): the call uses no quota.
            _ => admission.give_back().await,
        }
        decided
    }

    /// Credits last: a call that any other rule refuses spends none.
    async fn spend_credits_of(
        &self,
        key: Option<Arc<KeyRecord>>,
        query: &AuthorizeQuery<'_>,
        route: &Route,
        now: Timestamp,
        verdict: Verdict,
    ) -> Result<Verdict, AuthzError> {
        match key {
            Some(key) if key.credit_holder().is_some() => match i64::from(query.cost.unwrap_or(route.cost)) {
                // A free route spends nothing and asks the store nothing.
                0 => Ok(verdict),
                cost => self.spend(&key, cost, now, verdict).await,
            },
            _ => Ok(verdict),
        }
    }

    /// Spends the call's cost from the key's credits, in the store (atomic across
    /// replicas); a key whose credits are spent is refused until they are refilled.
    async fn spend(
        &self,
        key: &KeyRecord,
        cost: i64,
        now: Timestamp,
        mut verdict: Verdict,
    ) -> Result<Verdict, AuthzError> {
        let never = Timestamp::from_millis(i64::MAX);
        let Some((holder, refill)) = key.credit_holder() else { return Ok(verdict) };
        let known_empty =
            self.spent_out.get(&key.id).filter(|seen| seen.version == key.version && now < seen.ask_again_at);
        // When the credits next come back: `never` without a refill.
        let refilled_at = match known_empty {
            Some(seen) => seen.refilled_at,
            None => match self.store.spend_credits(&holder, cost, refill, now).await? {
                Spend::Spent(balance) => {
                    verdict.credits_remaining = Some(balance.remaining);
                    return Ok(verdict);
                }
                // The record said credits, the store has none (or under another rule): the
                // record is stale. Fail closed for this call; the next one decides on the
                // changed record, never spending nothing on one it has not read.
                Spend::Unmetered | Spend::RuleChanged => {
                    return Err(StoreError::Unavailable(Box::new(std::io::Error::other(
                        "the key's credits changed while the call was decided",
                    )))
                    .into())
                }
                Spend::Exhausted(balance) => {
                    let at = refill
                        .map_or(never, |refill| refill.next_period_starts(refill.period(now).max(balance.period)));
                    // Nothing at all left: no call can pass before `at` (or a change).
                    if balance.remaining == 0 {
                        let ask_again_at = at.min(now.saturating_add(SPENT_OUT_RECHECK));
                        self.spent_out.insert(key.id, SpentOut { version: key.version, ask_again_at, refilled_at: at });
                    }
                    at
                }
            },
        };
        verdict.credits_remaining = Some(0);
        let retry_after_seconds = if refilled_at == never {
            0
        } else {
            let wait_millis = (refilled_at.as_millis() - now.as_millis()).max(0);
            u32::try_from((wait_millis + 999) / 1000).unwrap_or(u32::MAX)
        };
        let limit = u32::try_from(refill.map_or(0, |r| r.amount)).unwrap_or(u32::MAX);
        verdict.rate_limit = Some(RateLimitState { limit, remaining: 0, retry_after_seconds });
        let message = if retry_after_seconds > 0 {
            format!("the key's credits are spent; they refill in {retry_after_seconds} s")
        } else {
            "the key's credits are spent".to_owned()
        };
        Ok(verdict.deny(Deny::new(Code::RateLimitReached, message).because(Reason::CreditsExhausted)))
    }
}

/// A key this replica saw without credits, at its record's `version`.
#[derive(Clone, Copy)]
struct SpentOut {
    version: i64,
    ask_again_at: Timestamp,
    /// When the next refill begins (never, without one): the caller's retry-after.
    refilled_at: Timestamp,
}

/// How long a replica refuses a key it saw without credits before asking the store again
/// (a spend given back to a caller that gave up is heard of no other way): one store write
/// a second per such key under a flood of its calls.
const SPENT_OUT_RECHECK: Duration = Duration::from_secs(1);

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

/// Guessing spent a budget: said honestly, as a limit with a time to retry, never as a
/// wrong credential (nobody checked it).
fn throttled_verdict(verdict: Verdict, throttled: Throttled) -> Verdict {
    let retry_after_seconds = throttled.retry_after.as_millis().div_ceil(1000).max(1) as u32;
    let mut verdict = verdict.deny(
        Deny::new(
            Code::RateLimitReached,
            format!("{}; retry after {retry_after_seconds} s", throttled.spent.describe()),
        )
        .because(Reason::Throttled),
    );
    verdict.rate_limit = Some(RateLimitState { limit: throttled.limit, remaining: 0, retry_after_seconds });
    verdict
}
