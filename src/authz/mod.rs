//! Authorize: from a request to a [`Verdict`], in the order of the decision table (README).
//!
//! A decision runs in named stages, each of which answers the call or hands it on: the
//! route ([`Routed`]), who is calling ([`Authenticator`]) and what they may do (the
//! application, through the [`DecisionStore`] trait, and [`decision::evaluate`]), the limits
//! ([`limits`], through the [`Limiter`]), then the credits ([`credits`]).

mod credits;
pub mod decision;
mod limits;
mod metrics;

use crate::analytics::{outcome_of, UsageCounts};
use crate::authn::verifier::VerifierError;
use crate::authn::{Authentication, Authenticator, AuthnError, Throttled};
use crate::clock::Clock;
use crate::code::{Code, Reason};
use crate::domain::{ApplicationId, ClientNetwork, Scope, Timestamp};
use crate::policy::{Access, NamedApplication, Policy, RequestParts, Route};
use crate::ratelimit::{Limiter, LimiterError};
use crate::store::{DecisionStore, StoreError};
use crate::usage::UsageRecorder;
use credits::SpentOut;
use decision::{evaluate, ApplicationFact, Deny, Principal};
use limits::Quota;
use metrics::{ActivePolicy, DecisionCounters, LimitOutcomes};
pub use metrics::{AuthorizeMetrics, CauseLabels, DecisionLabels, OutcomeLabels};
use std::ops::ControlFlow;
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
    /// The key's record counts its credits under another rule than the store's (changed
    /// on another replica, not yet heard of here): decided again on the record reloaded,
    /// once; a failure only if it is still out of step.
    #[error("the key's credits changed while the call was decided")]
    StaleCredits(crate::domain::KeyId),
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
    /// Decisions on keys by outcome (usage analytics), when counted.
    counts: Option<Arc<UsageCounts>>,
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
            counts: None,
            limit_outcomes: LimitOutcomes::of(&metrics.limits),
            metrics,
            spent_out: quick_cache::sync::Cache::new(10_000),
        }
    }

    /// Counts every decision made on a key by outcome (usage analytics).
    pub fn with_usage_counts(mut self, counts: Arc<UsageCounts>) -> Self {
        self.counts = Some(counts);
        self
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
        let mut decided = self.decide(query, now, &active.policy).await;
        if let Err(AuthzError::StaleCredits(id)) = decided {
            // Another replica changed the key's refill rule and this one has not heard yet:
            // reload the record and decide again (once), rather than fail the call.
            self.store.stale_key(id);
            decided = self.decide(query, now, &active.policy).await;
        }
        match &decided {
            Ok(verdict) => {
                let counters = verdict.route_index.and_then(|i| active.decisions.get(i)).unwrap_or(&self.unrouted);
                counters.count(&self.metrics.decisions, verdict);
                if let Some(Principal::Key(key)) = &verdict.principal {
                    if let Some(counts) = &self.counts {
                        counts.count(key, now, outcome_of(verdict.decision.denial()));
                    }
                    if verdict.decision.is_allowed() {
                        self.usage.used(key, now);
                    }
                }
            }
            Err(e) => {
                let cause = match e {
                    AuthzError::Unavailable(_) => "store_unavailable",
                    AuthzError::Store(_) => "store",
                    AuthzError::LimiterUnavailable(_) => "limiter_unavailable",
                    AuthzError::Verifier(_) => "verifier",
                    AuthzError::DeadlineExceeded(_) => "deadline",
                    AuthzError::StaleCredits(_) => "stale_credits",
                };
                self.metrics.failures.get_or_create(&CauseLabels { cause }).inc();
            }
        }
        decided
    }

    /// The decision in its stages, in the order of the decision table: the route, who is
    /// calling and what they may do, the limits, the credits. Each stage either answers
    /// the call or hands it to the next.
    async fn decide(&self, query: &AuthorizeQuery<'_>, now: Timestamp, policy: &Policy) -> Result<Verdict, AuthzError> {
        // The route first: without one there is nothing to check a credential against.
        let Some(routed) = Routed::find(query, policy) else { return Ok(Verdict::unrouted(query)) };
        let route = routed.route;
        let mut verdict = Verdict {
            decision: Decision::Allowed,
            principal: None,
            route: Some(route.template.clone()),
            route_index: Some(routed.index),
            application_id: routed.application_id().map(str::to_owned),
            rate_limit: None,
            credits_remaining: None,
        };
        // Guessing budgets and per-IP limits count a client's network (IPv6 per /64).
        let network = query.client.map(ClientNetwork::of);
        if let ControlFlow::Break(deny) = self.access(query, &routed, network, now, &mut verdict).await? {
            return Ok(verdict.deny(deny));
        }
        // Limits last, so that only requests that would otherwise be allowed use quota;
        // credits after them, and a call they refuse gives its counts back.
        let key = match &verdict.principal {
            Some(Principal::Key(key)) => Some(key.clone()),
            _ => None,
        };
        let subjects = limits::Subjects {
            principal: verdict.principal.as_ref(),
            application: routed.application_id(),
            network: network.as_ref(),
        };
        let admission = match self.admit_limits(policy, route, subjects, key.as_deref(), now).await? {
            Quota::Admitted { admission, tightest } => {
                verdict.rate_limit = tightest;
                admission
            }
            Quota::Refused { deny, rate_limit } => {
                verdict.rate_limit = rate_limit;
                return Ok(verdict.deny(deny));
            }
        };
        let decided = self.spend_credits_of(key, query, route, now, verdict).await;
        if let Some(admission) = admission {
            match &decided {
                Ok(verdict) if verdict.decision.is_allowed() => admission.keep(),
                // Refused for its credits (or not decided): the call uses no quota.
                _ => admission.give_back().await,
            }
        }
        decided
    }

    /// Who is calling, before anything about the request is looked up for them; then what
    /// they may do: the key's state, the application, the scopes (decided only now that
    /// the secret is proven, so none of it shows without it). Notes the principal in
    /// `verdict`; `Break` with the deny of a call refused here.
    async fn access(
        &self,
        query: &AuthorizeQuery<'_>,
        routed: &Routed<'_, '_>,
        network: Option<ClientNetwork>,
        now: Timestamp,
        verdict: &mut Verdict,
    ) -> Result<ControlFlow<Deny>, AuthzError> {
        let route = routed.route;
        let accepts = match route.access {
            Access::Credentials(accepts) => accepts,
            // A public route checks no credential, but a request that names its
            // application twice, or not at all where it must, is still malformed.
            Access::Public => {
                return Ok(match routed.named {
                    NamedApplication::Conflict => ControlFlow::Break(decision::application_conflict()),
                    NamedApplication::None if route.needs_application => {
                        ControlFlow::Break(decision::application_missing())
                    }
                    NamedApplication::None | NamedApplication::One(_) => ControlFlow::Continue(()),
                })
            }
        };
        let principal = match self.authn.authenticate(query.credential, accepts, network).await? {
            Authentication::Verified(principal) => principal,
            Authentication::Refused(deny) => return Ok(ControlFlow::Break(deny)),
            Authentication::Throttled(throttled) => {
                let (deny, rate_limit) = throttled_deny(throttled);
                verdict.rate_limit = Some(rate_limit);
                return Ok(ControlFlow::Break(deny));
            }
        };
        let application = match routed.application_id() {
            None => None,
            Some(raw) => match ApplicationId::parse(raw) {
                Ok(id) => self.store.application(&id).await?,
                Err(_) => None,
            },
        };
        let fact = match (&routed.named, &application) {
            (NamedApplication::Conflict, _) => ApplicationFact::Conflicting,
            (NamedApplication::None, _) if route.needs_application => ApplicationFact::Missing,
            (NamedApplication::None, _) => ApplicationFact::NotRequested,
            (NamedApplication::One(_), None) => ApplicationFact::Unknown,
            (NamedApplication::One(_), Some(app)) => ApplicationFact::Known(app),
        };
        let required = route.scopes.iter().chain(&query.required_scopes);
        let outcome = evaluate(&principal, fact, required, query.client, now);
        verdict.principal = Some(principal);
        Ok(match outcome {
            Ok(()) => ControlFlow::Continue(()),
            Err(deny) => ControlFlow::Break(deny),
        })
    }
}

/// The first stage's answer: the route a request matches, and the application it names.
struct Routed<'p, 'q> {
    route: &'p Route,
    /// The route's position in the policy.
    index: usize,
    named: NamedApplication<'q>,
}

impl<'p, 'q> Routed<'p, 'q> {
    /// One reading of the target at every entry; a path that normalising would change
    /// matches nothing.
    fn find(query: &AuthorizeQuery<'q>, policy: &'p Policy) -> Option<Self> {
        let target = keygate_api::edge::request_target(query.path).ok()?;
        let matched = policy.match_route(query.method, target.path)?;
        let route = matched.route;
        let parts = RequestParts { query: target.query.or(query.parts.query), ..query.parts };
        let named = crate::policy::named_application(
            &route.application,
            matched.path_application,
            query.application_id,
            &parts,
        );
        Some(Routed { route, index: matched.index, named })
    }

    /// The one application the request names, if it names exactly one.
    fn application_id(&self) -> Option<&str> {
        match &self.named {
            NamedApplication::One(id) => Some(id.as_ref()),
            NamedApplication::None | NamedApplication::Conflict => None,
        }
    }
}

impl Verdict {
    /// No route matches the request.
    fn unrouted(query: &AuthorizeQuery<'_>) -> Self {
        Verdict {
            decision: Decision::Denied(
                Deny::new(Code::NotFound, "no route matches the request").because(Reason::NoRoute),
            ),
            principal: None,
            route: None,
            route_index: None,
            application_id: query.application_id.map(str::to_owned),
            rate_limit: None,
            credits_remaining: None,
        }
    }
}

/// Guessing spent a budget: said honestly, as a limit with a time to retry, never as a
/// wrong credential (nobody checked it).
fn throttled_deny(throttled: Throttled) -> (Deny, RateLimitState) {
    let retry_after_seconds = throttled.retry_after.as_millis().div_ceil(1000).max(1) as u32;
    let deny = Deny::new(
        Code::RateLimitReached,
        format!("{}; retry after {retry_after_seconds} s", throttled.spent.describe()),
    )
    .because(Reason::Throttled);
    (deny, RateLimitState { limit: throttled.limit, remaining: 0, retry_after_seconds })
}
