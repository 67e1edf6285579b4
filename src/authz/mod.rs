//! Authorize: from a request to a [`Verdict`], in the order of the README's decision table.
//!
//! This module gathers the facts (route, credential, principal, application, limits)
//! through the [`Store`] trait, the [`Verifier`] and the [`Limiter`];
//! [`decision::evaluate`] decides on them.

pub mod decision;
mod metrics;
pub mod verifier;

use crate::clock::Clock;
use crate::code::Code;
use crate::domain::{ApplicationId, ClientNetwork, Credential, CredentialKind, KeyId, Scope, Timestamp};
use crate::policy::{Accepts, Access, LimitSubject, NamedApplication, Policy, RequestParts};
use crate::ratelimit::{LimitCheck, LimitOutcome, Limiter, LimiterError, Room};
use crate::store::{KeyKind, KeyRecord, Store, StoreError};
use crate::usage::UsageRecorder;
use decision::{evaluate, ApplicationFact, Deny, Principal};
use metrics::{ActivePolicy, DecisionCounters, LimitOutcomes};
pub use metrics::{AuthorizeMetrics, CauseLabels, DecisionLabels, OutcomeLabels};
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;
use verifier::{Verifier, VerifierError};

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
    /// The client's network, as the edge determined it under its trusted-hop rule.
    pub client: Option<ClientNetwork>,
    /// Headers and body, for routes that read their application there.
    pub parts: RequestParts<'a>,
}

#[derive(Debug)]
pub struct Verdict {
    /// `None` when allowed.
    pub deny: Option<Deny>,
    /// Who presented a verified credential (even when denied: the caller proved
    /// possession, so saying whose it is tells them nothing new).
    pub principal: Option<Principal>,
    pub route: Option<Arc<str>>,
    /// The route's position in the policy the call was decided under.
    route_index: Option<usize>,
    pub application_id: Option<String>,
    /// The tightest limit that applied, and when denied by one, how long to wait.
    pub rate_limit: Option<RateLimitState>,
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
        self.deny = Some(deny);
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

#[derive(Debug, Clone, Copy)]
pub struct VerifiedCacheSettings {
    pub capacity: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct AuthorizerSettings {
    pub verified_cache: VerifiedCacheSettings,
    pub brute_force: BruteForceSettings,
}

/// Bounds on what wrong secrets can cost.
#[derive(Debug, Clone, Copy)]
pub struct BruteForceSettings {
    /// A wrong credential is remembered this long, so repeating it costs no argon2.
    pub negative_ttl: Duration,
    /// Failed verifications allowed per key id per window; past it, that key id is
    /// refused without argon2 until the window (counted from the first failure) ends.
    pub max_failures_per_key: u32,
    /// The same per client IP (when the request names one), across key ids.
    pub max_failures_per_ip: u32,
    pub failure_window: Duration,
}

impl Default for BruteForceSettings {
    fn default() -> Self {
        Self {
            negative_ttl: Duration::from_secs(60),
            max_failures_per_key: 20,
            max_failures_per_ip: 100,
            failure_window: Duration::from_secs(60),
        }
    }
}

/// Why a presented secret was not accepted; shared by callers that waited on one check.
#[derive(Debug, thiserror::Error)]
enum NotVerified {
    #[error("wrong secret")]
    Mismatch,
    #[error(transparent)]
    Failed(#[from] VerifierError),
}

pub struct Authorizer {
    /// Replaced whole by a reload; each call decides under the one it loaded.
    policy: arc_swap::ArcSwap<ActivePolicy>,
    /// Decisions of calls no route matched.
    unrouted: DecisionCounters,
    store: Arc<dyn Store>,
    verifier: Arc<Verifier>,
    limiter: Arc<Limiter>,
    /// Verifications in flight and just finished, by SHA-256 digest of the whole credential
    /// (never the credential): concurrent misses for one credential share one argon2 run.
    /// What was verified is then remembered on the cached record itself
    /// ([`KeyRecord::verified`]), so a hot key costs one cache entry, not two.
    verifying: moka::future::Cache<[u8; 32], ()>,
    /// Digests of credentials argon2 rejected: a repeated wrong secret costs a lookup.
    rejected: moka::sync::Cache<[u8; 32], ()>,
    /// Failed verifications per key id, in a window that starts at the first failure.
    failures: moka::sync::Cache<KeyId, Arc<AtomicU32>>,
    /// The same per client IP.
    failures_by_ip: moka::sync::Cache<Box<str>, Arc<AtomicU32>>,
    brute_force: BruteForceSettings,
    clock: Arc<dyn Clock>,
    usage: Arc<UsageRecorder>,
    metrics: AuthorizeMetrics,
    /// The limit check counters, resolved once: counting takes no lock.
    limit_outcomes: LimitOutcomes,
}

impl Authorizer {
    pub fn new(
        policy: Policy,
        store: Arc<dyn Store>,
        verifier: Arc<Verifier>,
        limiter: Arc<Limiter>,
        clock: Arc<dyn Clock>,
        usage: Arc<UsageRecorder>,
        settings: AuthorizerSettings,
    ) -> Self {
        let AuthorizerSettings { verified_cache: settings, brute_force } = settings;
        let metrics = AuthorizeMetrics::default();
        Self {
            policy: arc_swap::ArcSwap::new(Arc::new(ActivePolicy::new(policy))),
            unrouted: DecisionCounters::default(),
            store,
            verifier,
            limiter,
            verifying: moka::future::Cache::builder()
                .max_capacity(settings.capacity)
                .time_to_live(Duration::from_secs(10))
                .build(),
            rejected: moka::sync::Cache::builder()
                .max_capacity(settings.capacity)
                .time_to_live(brute_force.negative_ttl)
                .build(),
            failures: moka::sync::Cache::builder()
                .max_capacity(settings.capacity)
                .time_to_live(brute_force.failure_window)
                .build(),
            failures_by_ip: moka::sync::Cache::builder()
                .max_capacity(settings.capacity)
                .time_to_live(brute_force.failure_window)
                .build(),
            brute_force,
            clock,
            usage,
            limit_outcomes: LimitOutcomes::of(&metrics.limits),
            metrics,
        }
    }

    /// Puts `policy` in force for every call that starts from now on.
    pub fn replace_policy(&self, policy: Policy) {
        self.policy.store(Arc::new(ActivePolicy::new(policy)));
    }

    pub fn metrics(&self) -> AuthorizeMetrics {
        self.metrics.clone()
    }

    /// [`Authorizer::authorize`], answered within `budget`: past it the caller gets an
    /// error (fail closed) while it can still use one, not the edge's own timeout.
    pub async fn authorize_within(&self, query: &AuthorizeQuery<'_>, budget: Duration) -> Result<Verdict, AuthzError> {
        match tokio::time::timeout(budget, self.authorize(query)).await {
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
                if let (None, Some(Principal::Key(key))) = (&verdict.deny, &verdict.principal) {
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
        // 1. The route: one reading of the target at every entry; a path that normalising
        //    would change matches nothing.
        let matched = keygate_api::edge::request_target(query.path)
            .ok()
            .and_then(|target| policy.match_route(query.method, target.path).map(|m| (m, target.query)));
        let Some((matched, target_query)) = matched else {
            return Ok(Verdict {
                deny: Some(Deny::new(Code::NotFound, "no route matches the request")),
                principal: None,
                route: None,
                route_index: None,
                application_id: query.application_id.map(str::to_owned),
                rate_limit: None,
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
            deny: None,
            principal: None,
            route: Some(route.template.clone()),
            route_index: Some(matched.index),
            application_id: application_id.map(str::to_owned),
            rate_limit: None,
        };

        match route.access {
            // 2-4. Who is calling.
            Access::Credentials(accepts) => {
                let principal = match self.authenticate(query.credential, accepts, query.client).await? {
                    Ok(principal) => principal,
                    Err(deny) => return Ok(verdict.deny(deny)),
                };
                // 5-7. State, application, scopes.
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
                let outcome = evaluate(&principal, fact, required, now);
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

        // 8. Limits, counted only for requests that would otherwise be allowed.
        let subject_of = |per: LimitSubject| -> Option<std::borrow::Cow<'_, str>> {
            let principal = verdict.principal.as_ref();
            match per {
                LimitSubject::Account => principal.map(|p| p.account_id().as_str().into()),
                LimitSubject::Key => principal.map(|p| match p {
                    Principal::Key(key) => key.id.to_string().into(),
                    Principal::Session(session) => session.id.to_string().into(),
                }),
                LimitSubject::Application => application_id.map(Into::into),
                LimitSubject::Ip => query.client.as_ref().map(|c| c.as_str().into()),
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
        if subjects.is_empty() {
            drop(subjects);
            return Ok(verdict);
        }
        let checks: smallvec::SmallVec<[LimitCheck<'_>; 4]> =
            subjects.iter().map(|(rule, subject)| LimitCheck { rule, subject: subject.as_ref() }).collect();
        let checked = self.limiter.check(&checks, now).await;
        drop(checks);
        drop(subjects);
        match &checked {
            Ok(LimitOutcome::Admitted { .. }) => &self.limit_outcomes.admitted,
            Ok(LimitOutcome::Limited { .. }) => &self.limit_outcomes.limited,
            Err(_) => &self.limit_outcomes.unavailable,
        }
        .inc();
        let outcome = checked.map_err(AuthzError::LimiterUnavailable)?;
        match outcome {
            LimitOutcome::Admitted { tightest } => {
                verdict.rate_limit = tightest.map(|Room { limit, remaining }| RateLimitState {
                    limit,
                    remaining,
                    retry_after_seconds: 0,
                });
                Ok(verdict)
            }
            LimitOutcome::Limited { limit, retry_after } => {
                let retry_after_seconds = retry_after.as_millis().div_ceil(1000).max(1) as u32;
                verdict.rate_limit = Some(RateLimitState { limit, remaining: 0, retry_after_seconds });
                Ok(verdict.deny(Deny::new(
                    Code::RateLimitReached,
                    format!("rate limit of {limit} reached; retry after {retry_after_seconds} s"),
                )))
            }
        }
    }

    /// Steps 2-4: a credential the route accepts, well-formed, known and verified.
    async fn authenticate(
        &self,
        raw: &str,
        accepts: Accepts,
        client: Option<ClientNetwork>,
    ) -> Result<Result<Principal, Deny>, AuthzError> {
        // What a missing or unusable credential is called depends on what the route wants.
        let missing = if accepts.any_key() { Code::ApiKeyInvalid } else { Code::Unauth };
        if raw.is_empty() {
            return Ok(Err(Deny::new(missing, "no credential was presented")));
        }
        let Some(kind) = CredentialKind::of(raw) else {
            return Ok(Err(Deny::new(missing, "the credential is not in a format keygate issues")));
        };
        if !accepts.allows(kind) {
            let deny = match kind {
                // A key where only a session will do: said without any argon2 work.
                CredentialKind::ApiKey | CredentialKind::RuntimeKey if !accepts.any_key() => {
                    Deny::of(Code::SessionRequired)
                }
                CredentialKind::ApiKey | CredentialKind::RuntimeKey => {
                    Deny::new(Code::ApiKeyInvalid, format!("a {} is not accepted on this route", kind.as_str()))
                }
                CredentialKind::Session => {
                    Deny::new(Code::ApiKeyInvalid, "this route needs an API key, not a dashboard session")
                }
            };
            return Ok(Err(deny));
        }
        let invalid = match kind {
            CredentialKind::Session => Code::Unauth,
            CredentialKind::ApiKey | CredentialKind::RuntimeKey => Code::ApiKeyInvalid,
        };
        let credential = match Credential::parse(raw) {
            Ok(credential) => credential,
            Err(malformed) => return Ok(Err(Deny::new(invalid, malformed.to_string()))),
        };
        match kind {
            CredentialKind::Session => {
                let session = self.store.session(credential.session_id()).await?;
                let digest: [u8; 32] = Sha256::digest(credential.secret().as_bytes()).into();
                match session {
                    Some(session) if bool::from(session.secret_digest.ct_eq(&digest)) => {
                        Ok(Ok(Principal::Session(session)))
                    }
                    _ => Ok(Err(Deny::new(Code::Unauth, "unknown dashboard session"))),
                }
            }
            CredentialKind::ApiKey | CredentialKind::RuntimeKey => {
                let expected = if kind == CredentialKind::RuntimeKey { KeyKind::Runtime } else { KeyKind::ApiKey };
                // A record of the other kind is as unknown as no record at all.
                let key = self.store.key(credential.key_id()).await?.filter(|k| k.kind == expected);
                if !self.verify(&credential, key.as_deref(), client).await? {
                    return Ok(Err(Deny::new(Code::ApiKeyInvalid, "unknown API key or wrong secret")));
                }
                Ok(Ok(Principal::Key(key.expect("a verified credential has a key record"))))
            }
        }
    }

    /// Is this the key's secret? A cache hit costs a SHA-256; a miss costs one argon2
    /// verification, shared by every concurrent caller presenting the same credential.
    async fn verify(
        &self,
        credential: &Credential<'_>,
        key: Option<&KeyRecord>,
        client: Option<ClientNetwork>,
    ) -> Result<bool, AuthzError> {
        let Some(key) = key else {
            // An unknown key id costs the decoy verification a wrong secret would, unless
            // this client has failed too often already; it counts as a failure either way.
            if !self.client_over_limit(client) {
                self.verifier.verify(credential.secret(), None).await?;
            }
            self.count_client_failure(client);
            return Ok(false);
        };
        let digest: [u8; 32] = Sha256::digest(credential.as_str().as_bytes()).into();
        if key.verified.matches(&digest) {
            return Ok(true);
        }
        if self.rejected.contains_key(&digest) {
            return Ok(false);
        }
        // The rest runs argon2 (or refuses to): boxed, so the hit path's future stays small.
        Box::pin(self.verify_miss(credential, key, digest, client)).await
    }

    fn client_over_limit(&self, client: Option<ClientNetwork>) -> bool {
        let over = client
            .and_then(|c| self.failures_by_ip.get(c.as_str()))
            .is_some_and(|count| count.load(Ordering::Relaxed) >= self.brute_force.max_failures_per_ip);
        if over {
            tracing::debug!(client = ?client, "too many failed verifications from this client; refusing without argon2");
        }
        over
    }

    fn count_client_failure(&self, client: Option<ClientNetwork>) {
        if let Some(c) = client {
            self.failures_by_ip.get_with(c.as_str().into(), Default::default).fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn verify_miss(
        &self,
        credential: &Credential<'_>,
        key: &KeyRecord,
        digest: [u8; 32],
        client: Option<ClientNetwork>,
    ) -> Result<bool, AuthzError> {
        let over =
            |count: Option<Arc<AtomicU32>>, limit: u32| count.is_some_and(|c| c.load(Ordering::Relaxed) >= limit);
        if over(self.failures.get(&key.id), self.brute_force.max_failures_per_key) {
            tracing::debug!(key_id = %key.id, "too many failed verifications for this key id; refusing without argon2");
            return Ok(false);
        }
        if self.client_over_limit(client) {
            return Ok(false);
        }
        let checked = self
            .verifying
            .try_get_with(digest, async {
                match self.verifier.verify(credential.secret(), Some(&key.secret_hash)).await {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(NotVerified::Mismatch),
                    Err(e) => Err(NotVerified::Failed(e)),
                }
            })
            .await;
        if let Err(e) = &checked {
            if matches!(**e, NotVerified::Mismatch) {
                self.rejected.insert(digest, ());
                self.failures.get_with(key.id, Default::default).fetch_add(1, Ordering::Relaxed);
                self.count_client_failure(client);
            }
        }
        match checked {
            Ok(()) => {
                key.verified.remember(&digest);
                Ok(true)
            }
            Err(e) => match Arc::try_unwrap(e) {
                Ok(NotVerified::Mismatch) => Ok(false),
                Ok(NotVerified::Failed(e)) => Err(e.into()),
                // Shared with other waiters: a mismatch for them is a mismatch for us.
                Err(shared) => match *shared {
                    NotVerified::Mismatch => Ok(false),
                    NotVerified::Failed(_) => {
                        Err(AuthzError::Verifier(VerifierError::Hash("a shared verification failed".into())))
                    }
                },
            },
        }
    }
}
