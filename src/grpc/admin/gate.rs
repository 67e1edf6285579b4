//! The admin gate: proves who makes an admin call before any handler runs, refuses an RPC
//! the token's role does not reach, throttles wrong tokens per source and calls per token,
//! and hands the handlers the [`AdminGrant`].

use super::bootstrap::BootstrapToken;
use super::roles::{call_units, need_of};
use crate::code::Code;
use crate::domain::{admin_token_digest, AdminGrant, AdminRole, ClientNetwork};
use crate::grpc::status;
use crate::manage::Manager;
use std::sync::Arc;
use tonic::Status;

/// What the gate allows each admin token and each source address.
#[derive(Debug, Clone, Copy)]
pub struct AdminGateSettings {
    /// Calls per second one token may make on average (its bucket's refill).
    pub calls_per_second: u32,
    /// Calls one token may make at once (its bucket's size).
    pub burst: u32,
    /// Wrong admin tokens one source (IPv4 address, IPv6 /64) may send per window.
    pub failures_per_source: u32,
    pub failure_window: std::time::Duration,
    /// Tokens and sources remembered; one forgotten starts afresh.
    pub capacity: usize,
}

impl AdminGateSettings {
    /// The CLI makes one call a command; scripts of commands and the tests' set-ups a few
    /// hundred at once, then nothing.
    pub const DEFAULT_CALLS_PER_SECOND: u32 = 50;
    pub const DEFAULT_BURST: u32 = 500;
    /// A person who mistypes a token a few times a minute never meets it; 20,000 guesses
    /// from one /64 take 1,000 minutes.
    pub const DEFAULT_FAILURES_PER_SOURCE: u32 = 20;
}

impl Default for AdminGateSettings {
    fn default() -> Self {
        Self {
            calls_per_second: Self::DEFAULT_CALLS_PER_SECOND,
            burst: Self::DEFAULT_BURST,
            failures_per_source: Self::DEFAULT_FAILURES_PER_SOURCE,
            failure_window: std::time::Duration::from_secs(60),
            capacity: 16_384,
        }
    }
}

/// Why the gate refused a call, for `keygate_admin_refusals_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct RefusalLabels {
    /// `wrong_token` (unknown, revoked or expired), `source_throttled` (its source spent
    /// its budget of wrong tokens; the token was not checked), `rate_limited` (a valid
    /// token past its calls per second).
    pub reason: &'static str,
}

/// The gate's counters.
#[derive(Clone, Default)]
pub struct AdminGateMetrics {
    pub refusals:
        prometheus_client::metrics::family::Family<RefusalLabels, prometheus_client::metrics::counter::Counter>,
}

impl AdminGateMetrics {
    /// How many calls were refused for `reason`.
    pub fn refused(&self, reason: &'static str) -> u64 {
        self.refusals.get_or_create(&RefusalLabels { reason }).get()
    }

    fn count(&self, reason: &'static str) {
        self.refusals.get_or_create(&RefusalLabels { reason }).inc();
    }
}

/// Wrong tokens from one source in a window that starts at the first.
struct SourceWindow {
    started_ms: i64,
    failures: u32,
}

/// A token's calls: a bucket refilled at `calls_per_second`, holding at most `burst`.
struct CallBucket {
    tokens: f64,
    refilled_ms: i64,
}

/// RESOURCE_EXHAUSTED (`rate_limit_reached`, HTTP 429) with when to retry, as
/// `RetryInfo` and as `retry_after_seconds` in the ErrorInfo.
fn throttled(message: String, retry_after: std::time::Duration) -> Status {
    use tonic_types::{ErrorDetails, StatusExt};
    let seconds = retry_after.as_secs_f64().ceil().max(1.0) as u64;
    let metadata = std::collections::HashMap::from([("retry_after_seconds".to_owned(), seconds.to_string())]);
    let mut details = ErrorDetails::with_error_info(Code::RateLimitReached.as_str(), status::ERROR_DOMAIN, metadata);
    details.set_retry_info(Some(std::time::Duration::from_secs(seconds)));
    Status::with_error_details(Code::RateLimitReached.grpc_code(), message, details)
}

/// The caller's address, over plain TCP or TLS (tonic puts the connection's info in every
/// request's extensions; for TLS it wraps the TCP one).
fn source_of<B>(request: &http::Request<B>) -> Option<std::net::IpAddr> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let extensions = request.extensions();
    extensions
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| extensions.get::<TlsConnectInfo<TcpConnectInfo>>().and_then(|tls| tls.get_ref().remote_addr()))
        .map(|address| address.ip())
}

/// Proves who makes an admin call, before any handler runs: the bootstrap token (in
/// memory, so it works while the store is down) or a named token read from the store at
/// every call (a revocation is in force at once on every replica). Then refuses an RPC
/// the token's role does not reach, and hands the handlers the [`AdminGrant`] (for the
/// account check and the audit trail).
#[derive(Clone)]
pub struct AdminGate<S> {
    inner: S,
    keeper: Arc<Gatekeeper>,
}

/// What every admin call's check shares.
struct Gatekeeper {
    bootstrap: BootstrapToken,
    manager: Arc<Manager>,
    settings: AdminGateSettings,
    /// Wrong tokens per source network (`None`: requests without an address share one).
    sources: quick_cache::sync::Cache<Option<ClientNetwork>, Arc<std::sync::Mutex<SourceWindow>>>,
    /// Calls per valid token, by digest (only tokens that passed: guesses make no entry).
    calls: quick_cache::sync::Cache<[u8; 32], Arc<std::sync::Mutex<CallBucket>>>,
    metrics: AdminGateMetrics,
    /// When a wrong token was last logged, and how many were not logged since: one line
    /// per [`FAILURE_LOG_EVERY`], whatever the rate of guesses.
    failure_log: std::sync::Mutex<(Option<i64>, u64)>,
    /// Named-token reads in flight: anyone who can reach Admin can make keygate read
    /// the store, so at most a few connections of the pool (which decisions share) go to it.
    lookups: tokio::sync::Semaphore,
    /// Named tokens found revoked (`true`) or expired (`false`), by digest: both are for
    /// good, so a leaked dead token sent in a loop costs no read and cannot hold the
    /// lookups that live tokens wait for.
    dead: quick_cache::sync::Cache<[u8; 32], bool>,
}

/// Named-token reads at once, and how long a call waits for its turn.
const TOKEN_LOOKUPS: usize = 4;
/// Dead tokens remembered (a few dozen bytes each); one forgotten is only read again.
const DEAD_TOKENS: usize = 4096;
const TOKEN_LOOKUP_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// At most one warning line about wrong admin tokens this often (ms of the clock).
const FAILURE_LOG_EVERY: i64 = 10_000;

impl<S> AdminGate<S> {
    pub fn new(inner: S, bootstrap: BootstrapToken, manager: Arc<Manager>, settings: AdminGateSettings) -> Self {
        let keeper = Gatekeeper {
            bootstrap,
            manager,
            settings,
            sources: quick_cache::sync::Cache::new(settings.capacity),
            calls: quick_cache::sync::Cache::new(settings.capacity),
            metrics: AdminGateMetrics::default(),
            failure_log: std::sync::Mutex::new((None, 0)),
            lookups: tokio::sync::Semaphore::new(TOKEN_LOOKUPS),
            dead: quick_cache::sync::Cache::new(DEAD_TOKENS),
        };
        Self { inner, keeper: Arc::new(keeper) }
    }

    /// The gate's counters, for the metrics endpoint and tests.
    pub fn metrics(&self) -> AdminGateMetrics {
        self.keeper.metrics.clone()
    }

    /// The same check for callers that are not gRPC calls (the console).
    pub fn check(&self) -> AdminCheck {
        AdminCheck(self.keeper.clone())
    }
}

/// The gate's check of an admin token, for the console: the same token lookup, role rule
/// ([`need_of`] the RPC an action stands for), budget of wrong tokens per source and calls
/// per token as a gRPC admin call.
#[derive(Clone)]
pub struct AdminCheck(Arc<Gatekeeper>);

impl AdminCheck {
    /// What `token` may do, if it may do what `rpc` needs; refused as the gate refuses the RPC.
    pub async fn admit(&self, token: &str, source: Option<std::net::IpAddr>, rpc: &str) -> Result<AdminGrant, Status> {
        let mut headers = http::HeaderMap::new();
        // A token that cannot be a header value is no admin token; an empty one is not either.
        let value = http::HeaderValue::from_str(&format!("Bearer {}", token.trim()))
            .ok()
            .filter(|_| !token.trim().is_empty())
            .unwrap_or_else(|| http::HeaderValue::from_static("Bearer -"));
        headers.insert("authorization", value);
        self.0.admit(&headers, source.map(ClientNetwork::of), rpc).await
    }

    /// May a role do what `rpc` needs (for showing an action, not for doing it)?
    pub fn allows(grant: &AdminGrant, rpc: &str) -> bool {
        grant.may(need_of(rpc))
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for AdminGate<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tower::Service<http::Request<B>> for AdminGate<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The service that was polled ready serves this call; its clone serves the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let keeper = self.keeper.clone();
        Box::pin(async move {
            let rpc = request.uri().path().rsplit('/').next().unwrap_or("").to_owned();
            let source = source_of(&request).map(ClientNetwork::of);
            match keeper.admit(request.headers(), source, &rpc).await {
                Ok(grant) => {
                    request.extensions_mut().insert(grant);
                    // The handler's store reads never count towards the store's breaker.
                    crate::breaker::uncounted(inner.call(request)).await
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

impl Gatekeeper {
    /// [`grant`](Self::grant), unless `source` has sent too many wrong tokens (then the
    /// token is not even looked at) or the token has made too many calls.
    async fn admit(
        &self,
        headers: &http::HeaderMap,
        source: Option<ClientNetwork>,
        rpc: &str,
    ) -> Result<AdminGrant, Status> {
        if !headers.contains_key("authorization") {
            // Nothing to check, nothing guessed: grant says what is missing.
            return self.grant(headers, rpc).await;
        }
        let now = self.manager.now().as_millis();
        let window_ms = i64::try_from(self.settings.failure_window.as_millis()).unwrap_or(i64::MAX);
        let window = self.sources.get_or_insert_with(&source, || {
            Ok::<_, std::convert::Infallible>(Arc::new(std::sync::Mutex::new(SourceWindow {
                started_ms: now,
                failures: 0,
            })))
        });
        let window = match window {
            Ok(window) => window,
            Err(never) => match never {},
        };
        // Checked before the token, and charged after it was found wrong. No unit is
        // reserved up front: a dashboard's 48 calls at once with a valid token must not
        // spend a budget meant for wrong ones. Guesses cannot overshoot it either: a token
        // keygate did not make is judged without an await between this check and the
        // charge (only tokens carrying this deployment's tag are read from the store).
        {
            let mut w = window.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if now.saturating_sub(w.started_ms) >= window_ms {
                *w = SourceWindow { started_ms: now, failures: 0 };
            }
            if w.failures >= self.settings.failures_per_source {
                let left = (w.started_ms.saturating_add(window_ms) - now).max(1);
                drop(w);
                self.metrics.count("source_throttled");
                self.log_failure(source, "source_throttled", now);
                return Err(throttled(
                    "too many wrong admin tokens from this address; its admin calls are refused until the retry time"
                        .to_owned(),
                    std::time::Duration::from_millis(left as u64),
                ));
            }
        }
        let grant = match self.grant(headers, rpc).await {
            Ok(grant) => grant,
            Err(refused) if refused.code() == tonic::Code::Unauthenticated => {
                let mut w = window.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                w.failures = w.failures.saturating_add(1);
                drop(w);
                self.metrics.count("wrong_token");
                self.log_failure(source, "wrong_token", now);
                return Err(refused);
            }
            // Busy, or a role that does not reach the RPC: the token itself was right.
            Err(other) => return Err(other),
        };
        self.take_call(&grant, headers, now, call_units(rpc))?;
        Ok(grant)
    }

    /// One call from the token `grant` was made for, from its bucket: `units` of it.
    fn take_call(&self, grant: &AdminGrant, headers: &http::HeaderMap, now: i64, units: u32) -> Result<(), Status> {
        let Some(digest) = bearer(headers).map(admin_token_digest) else { return Ok(()) };
        let AdminGateSettings { calls_per_second, burst, .. } = self.settings;
        let bucket = self.calls.get_or_insert_with(&digest, || {
            Ok::<_, std::convert::Infallible>(Arc::new(std::sync::Mutex::new(CallBucket {
                tokens: f64::from(burst),
                refilled_ms: now,
            })))
        });
        let bucket = match bucket {
            Ok(bucket) => bucket,
            Err(never) => match never {},
        };
        let mut b = bucket.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let elapsed = now.saturating_sub(b.refilled_ms).max(0) as f64 / 1000.0;
        b.tokens = (b.tokens + elapsed * f64::from(calls_per_second)).min(f64::from(burst));
        b.refilled_ms = now.max(b.refilled_ms);
        // A call never needs more than the burst, or a small burst would refuse it for good.
        let units = f64::from(units).min(f64::from(burst.max(1)));
        if b.tokens >= units {
            b.tokens -= units;
            return Ok(());
        }
        let wait = (units - b.tokens) / f64::from(calls_per_second);
        drop(b);
        self.metrics.count("rate_limited");
        Err(throttled(
            format!(
                "the admin token {} made more than {calls_per_second} calls a second (burst {burst})",
                grant.credential
            ),
            std::time::Duration::from_secs_f64(wait),
        ))
    }

    /// A warning about a wrong token (never the token itself), at most one line per
    /// [`FAILURE_LOG_EVERY`]; the lines between are counted in the next one.
    fn log_failure(&self, source: Option<ClientNetwork>, outcome: &'static str, now: i64) {
        let mut log = self.failure_log.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (last, suppressed) = &mut *log;
        if last.is_some_and(|at| now.saturating_sub(at) < FAILURE_LOG_EVERY) {
            *suppressed += 1;
            return;
        }
        let not_logged = std::mem::take(suppressed);
        *last = Some(now);
        drop(log);
        let source = source.map_or_else(|| "(no address)".to_owned(), |s| s.to_string());
        tracing::warn!(
            %source,
            outcome,
            not_logged_since_last_line = not_logged,
            "an admin call with a wrong admin token was refused"
        );
    }

    /// Who the bearer token is, and whether its role reaches `rpc`.
    async fn grant(&self, headers: &http::HeaderMap, rpc: &str) -> Result<AdminGrant, Status> {
        let Self { bootstrap, manager, lookups, dead, .. } = self;
        let Some(token) = bearer(headers) else {
            return Err(status::coded(Code::Unauth, "admin calls need `authorization: Bearer <admin token>`"));
        };
        let digest = admin_token_digest(token);
        let grant = if bootstrap.accepts(&digest) {
            AdminGrant { credential: bootstrap.credential.clone(), role: AdminRole::Admin, account: None }
        } else {
            // Only tokens this deployment made (their tag under the digest key) and not known
            // dead are looked up: made-up ones cost no query, however many. And a few at a time.
            let dead_answer = |revoked: bool| {
                let why = if revoked { "the admin token was revoked" } else { "the admin token expired" };
                status::coded(Code::Unauth, why)
            };
            if let Some(was_revoked) = dead.get(&digest) {
                return Err(dead_answer(was_revoked));
            }
            let named = match manager.made_admin_token(token) {
                true => {
                    let _turn = tokio::time::timeout(TOKEN_LOOKUP_WAIT, lookups.acquire())
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .ok_or_else(|| status::busy("too many admin token checks at once; retry"))?;
                    manager.admin_token(token).await?
                }
                false => None,
            };
            match named {
                Some(named) if named.is_live(manager.now()) => named.grant(),
                Some(named) => {
                    let was_revoked = named.revoked_at.is_some();
                    dead.insert(digest, was_revoked);
                    return Err(dead_answer(was_revoked));
                }
                None => return Err(status::coded(Code::Unauth, "the admin token is not valid")),
            }
        };
        let need = need_of(rpc);
        if !grant.may(need) {
            return Err(status::coded(
                Code::InsufficientScope,
                format!("an admin token with the role {} may not call {rpc}", grant.role.as_str()),
            ));
        }
        Ok(grant)
    }
}

/// The bearer token of an admin call, if it has one.
fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}
