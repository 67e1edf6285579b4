//! `keygate.v1.Admin`, behind an admin-token check.

use super::proto::{self as pb, admin_server};
use super::{convert, status, RequestId};
use crate::audit::{Actor, AuditCategory, AuditQuery};
use crate::authn::digest::CredentialDigester;
use crate::code::Code;
use crate::domain::{
    admin_token_digest, hex, AccountId, AdminGrant, AdminNeed, AdminRole, AdminTokenName, ApplicationId, ClientNetwork,
    KeyId, Name, OwnerId, SearchParams, SessionId, UserId,
};
use crate::manage::Manager;
use crate::store::KeyFilter;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tonic::{Request, Response, Status};

/// The bootstrap token, kept only as its SHA-256 digest and compared in constant time,
/// and how the audit trail names it.
#[derive(Clone)]
pub struct BootstrapToken {
    digest: [u8; 32],
    /// `admin:` and 8 hex digits of the token's keyed digest (the one credentials get,
    /// under the digest key): tells bootstrap tokens apart in the trail, which read-only
    /// tokens may read, without giving anyone a fingerprint to test guesses of a chosen
    /// token against offline.
    credential: String,
}

impl BootstrapToken {
    pub fn new(token: &str, digester: &CredentialDigester) -> Self {
        let bits = entropy_bits(token);
        if bits < MIN_BOOTSTRAP_BITS {
            // Said at every start: guessing it is bounded per source, not impossible.
            tracing::warn!(
                estimated_bits = bits.round() as u64,
                "the bootstrap admin token has less than {MIN_BOOTSTRAP_BITS} bits of entropy (estimated from its \
                 length and the kinds of characters it uses): give KEYGATE_ADMIN_TOKEN at least 22 random \
                 letters and digits, or let keygate make one (delete the admin-token file)"
            );
        }
        let keyed = digester.digest(token);
        Self { digest: admin_token_digest(token), credential: format!("admin:{}", hex(&keyed[..4])) }
    }

    /// Whether a presented token, by its SHA-256, is this one (in constant time).
    fn accepts(&self, digest: &[u8; 32]) -> bool {
        self.digest.ct_eq(digest).into()
    }
}

/// Entropy below which `serve` warns about the bootstrap token.
pub const MIN_BOOTSTRAP_BITS: f64 = 128.0;

/// An upper estimate of a token's entropy: its length times log2 of the alphabet its kinds
/// of characters span (lowercase 26, uppercase 26, digits 10, anything else 33; hex digits
/// alone 16). keygate's own prefix (`kgadm_`) is no secret and not counted. An upper
/// bound: a dictionary word scores like random letters, so a warning is certain and its
/// absence is not proof.
pub fn entropy_bits(token: &str) -> f64 {
    let secret = token.strip_prefix("kgadm_").unwrap_or(token);
    let has = |f: fn(&char) -> bool| secret.chars().any(|c| f(&c));
    let hex_only = secret.chars().all(|c| c.is_ascii_hexdigit());
    let alphabet = if hex_only {
        16
    } else {
        [
            (has(char::is_ascii_lowercase), 26),
            (has(char::is_ascii_uppercase), 26),
            (has(char::is_ascii_digit), 10),
            (has(|c| !c.is_ascii_alphanumeric()), 33),
        ]
        .iter()
        .filter(|(present, _)| *present)
        .map(|(_, size)| size)
        .sum()
    };
    match alphabet {
        0 | 1 => 0.0,
        n => secret.chars().count() as f64 * f64::from(n).log2(),
    }
}

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

/// What each admin RPC needs of its caller's role (README: "Admin token roles"). An RPC
/// missing here needs `admin`.
pub const ADMIN_RPCS: [(&str, AdminNeed); 25] = [
    ("CreateApplication", AdminNeed::Admin),
    ("GetApplication", AdminNeed::Read),
    ("ListApplications", AdminNeed::Read),
    ("UpdateApplication", AdminNeed::Admin),
    ("DeleteApplication", AdminNeed::Admin),
    ("CreateApiKey", AdminNeed::KeysWrite),
    ("GetApiKey", AdminNeed::Read),
    ("ListApiKeys", AdminNeed::Read),
    ("UpdateApiKey", AdminNeed::KeysWrite),
    ("RevokeApiKey", AdminNeed::KeysWrite),
    ("RerollApiKey", AdminNeed::KeysWrite),
    ("DeleteApiKey", AdminNeed::KeysWrite),
    ("ImportApiKeys", AdminNeed::KeysWrite),
    ("UpdateOwner", AdminNeed::Admin),
    ("GetOwner", AdminNeed::Read),
    ("RotateApplicationKey", AdminNeed::Admin),
    ("CreateSession", AdminNeed::Admin),
    ("GetSession", AdminNeed::Read),
    ("RevokeSession", AdminNeed::Admin),
    ("ListSessions", AdminNeed::Read),
    ("DeleteAccount", AdminNeed::Admin),
    ("ListAuditEvents", AdminNeed::Read),
    ("CreateAdminToken", AdminNeed::Admin),
    ("ListAdminTokens", AdminNeed::Admin),
    ("RevokeAdminToken", AdminNeed::Admin),
];

/// What one call costs of its token's calls a second: a list reads up to a page of records
/// and a search scans up to 10,000 rows for it, so it counts as `LIST_UNITS` calls. At the
/// default 50 a second a token lists 5 pages a second, and one reader's scans take a few
/// percent of a core, not the machine (`keygate-bench neighbours`, admin-scans).
fn call_units(rpc: &str) -> u32 {
    if rpc.starts_with("List") {
        LIST_UNITS
    } else {
        1
    }
}

/// See [`call_units`].
const LIST_UNITS: u32 = 10;

fn need_of(rpc: &str) -> AdminNeed {
    ADMIN_RPCS.iter().find(|(name, _)| *name == rpc).map_or(AdminNeed::Admin, |(_, need)| *need)
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

/// Whom the caller acts for, when it says (the dashboard back end names its user).
pub const ACTOR_HEADER: &str = "x-keygate-actor";

/// The gate's grant for this call.
fn grant_of<T>(request: &Request<T>) -> Result<AdminGrant, Status> {
    // Every admin call passes the gate; a call that did not is refused, not trusted.
    request.extensions().get::<AdminGrant>().cloned().ok_or_else(|| status::coded(Code::Unauth, "no admin token"))
}

/// Another account's record, to a token confined elsewhere, is as if it did not exist:
/// `not_found`, saying nothing of whose it is.
fn visible(grant: &AdminGrant, owner: &AccountId, what: &str, id: impl std::fmt::Display) -> Result<(), Status> {
    match grant.covers(owner) {
        true => Ok(()),
        false => Err(status::coded(Code::NotFound, format!("{what} {id} was not found"))),
    }
}

/// A token confined to an account may act on that account only.
fn within(grant: &AdminGrant, account: &AccountId) -> Result<(), Status> {
    match grant.covers(account) {
        true => Ok(()),
        false => Err(status::coded(
            Code::InsufficientScope,
            format!("this admin token acts on account {} only", grant.account.as_ref().map_or("", |a| a.as_str())),
        )),
    }
}

/// The request id and the actor of an admin call, for its audit record.
fn actor_of<T>(request: &Request<T>) -> Result<(RequestId, Actor), Status> {
    let request_id = RequestId::from_metadata(request.metadata());
    let credential = grant_of(request)?.credential;
    let on_behalf_of = match request.metadata().get(ACTOR_HEADER) {
        None => None,
        Some(value) => {
            let raw = value.to_str().map_err(|_| {
                status::coded(Code::ValidationError, format!("{ACTOR_HEADER}: must be printable ASCII"))
            })?;
            Some(Actor::parse_on_behalf_of(raw)?)
        }
    };
    let actor = Actor { credential, on_behalf_of, request_id: request_id.as_str().to_owned() };
    Ok((request_id, actor))
}

pub struct AdminService {
    manager: Arc<Manager>,
}

impl AdminService {
    pub fn new(manager: Arc<Manager>) -> Self {
        Self { manager }
    }

    /// `respond`, for a change that narrows what a credential may do: answered once every
    /// live replica has applied it (or was fenced), saying how many of each.
    async fn respond_settled<T>(
        &self,
        request_id: RequestId,
        action: &str,
        target: &str,
        message: T,
    ) -> Result<Response<T>, Status> {
        let settled = self.manager.settle().await;
        let mut response = respond(request_id, action, target, message)?;
        if let Some(settled) = settled {
            let metadata = response.metadata_mut();
            metadata.insert(ACKNOWLEDGED_HEADER, settled.acknowledged.into());
            metadata.insert(FENCED_HEADER, settled.fenced.into());
        }
        Ok(response)
    }

    /// May a `keys_write` token change key `id`? Only its account's (another account's key
    /// is as if it did not exist), and only API keys: an application's runtime key is
    /// rotated by an admin (`RotateApplicationKey`), so a key writer cannot take an
    /// application down by revoking it.
    async fn key_within(&self, grant: &AdminGrant, id: KeyId) -> Result<(), Status> {
        if grant.role == AdminRole::Admin {
            return Ok(());
        }
        let key = self.manager.api_key(id).await?;
        visible(grant, &key.account_id, "API key", id)?;
        if key.kind == crate::store::KeyKind::Runtime {
            return Err(status::coded(
                Code::InsufficientScope,
                format!("{id} is an application's runtime key: only an admin token changes it (RotateApplicationKey)"),
            ));
        }
        Ok(())
    }
}

/// The response's metadata: how many replicas applied the change before it was answered,
/// and how many were fenced instead (they no longer trust their caches).
pub const ACKNOWLEDGED_HEADER: &str = "x-keygate-acknowledged";
pub const FENCED_HEADER: &str = "x-keygate-fenced";

/// Logs an admin action with its request id and echoes the id back.
fn respond<T>(request_id: RequestId, action: &str, target: &str, message: T) -> Result<Response<T>, Status> {
    tracing::info!(request_id = %request_id, action, target, "admin action");
    Ok(request_id.attach(Response::new(message)))
}

#[tonic::async_trait]
impl admin_server::Admin for AdminService {
    async fn create_application(
        &self,
        request: Request<pb::CreateApplicationRequest>,
    ) -> Result<Response<pb::Application>, Status> {
        let (request_id, actor) = actor_of(&request)?;
        let req = request.into_inner();
        let account = AccountId::parse(&req.account_id)?;
        let name = Name::parse("name", &req.name)?;
        let app = self.manager.create_application(account, name, &actor).await?;
        respond(request_id, "create_application", app.id.as_str(), convert::application_to_proto(&app))
    }

    async fn get_application(
        &self,
        request: Request<pb::GetApplicationRequest>,
    ) -> Result<Response<pb::Application>, Status> {
        let request_id = RequestId::from_metadata(request.metadata());
        let grant = grant_of(&request)?;
        let id = ApplicationId::parse_field("id", &request.get_ref().id)?;
        let app = self.manager.application(&id).await?;
        visible(&grant, &app.account_id, "application", id)?;
        Ok(request_id.attach(Response::new(convert::application_to_proto(&app))))
    }

    async fn list_applications(
        &self,
        request: Request<pb::ListApplicationsRequest>,
    ) -> Result<Response<pb::ListApplicationsResponse>, Status> {
        let request_id = RequestId::from_metadata(request.metadata());
        let grant = grant_of(&request)?;
        let req = request.into_inner();
        let account = AccountId::parse(&req.account_id)?;
        within(&grant, &account)?;
        let page = convert::page_request(req.page_size, &req.page_token, |t| ApplicationId::parse(t).is_ok())?;
        let page = self.manager.list_applications(&account, &page).await?;
        Ok(request_id.attach(Response::new(pb::ListApplicationsResponse {
            applications: page.items.iter().map(convert::application_to_proto).collect(),
            next_page_token: page.next_after.unwrap_or_default(),
        })))
    }

    async fn create_api_key(
        &self,
        request: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        let (request_id, actor) = actor_of(&request)?;
        let grant = grant_of(&request)?;
        let new: crate::manage::NewApiKey = request.into_inner().try_into()?;
        within(&grant, &new.account_id)?;
        let (key, generated) = self.manager.create_api_key(new, &actor).await?;
        let response = pb::CreateApiKeyResponse {
            key: Some(convert::key_to_proto(&key, self.manager.now(), self.manager.last_used_at(&key))),
            secret: generated.into_secret_string(),
        };
        respond(request_id, "create_api_key", &key.id.to_string(), response)
    }

    async fn get_api_key(&self, request: Request<pb::GetApiKeyRequest>) -> Result<Response<pb::ApiKey>, Status> {
        let request_id = RequestId::from_metadata(request.metadata());
        let grant = grant_of(&request)?;
        let id = KeyId::parse(&request.get_ref().id)?;
        let key = self.manager.api_key(id).await?;
        visible(&grant, &key.account_id, "API key", id)?;
        Ok(request_id.attach(Response::new(convert::key_to_proto(
            &key,
            self.manager.now(),
            self.manager.last_used_at(&key),
        ))))
    }

    async fn list_api_keys(
        &self,
        request: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        let request_id = RequestId::from_metadata(request.metadata());
        let grant = grant_of(&request)?;
        let req = request.into_inner();
        let account = AccountId::parse(&req.account_id)?;
        within(&grant, &account)?;
        let search = SearchParams::parse(&req.search_params)?;
        if !search.categories.is_empty() {
            return Err(status::coded(
                Code::ValidationError,
                "search_params: categories are not supported when listing API keys",
            ));
        }
        let page = convert::page_request(req.page_size, &req.page_token, |t| KeyId::parse(t).is_ok())?;
        let owner_id = Some(req.owner_id.as_str()).filter(|o| !o.is_empty()).map(OwnerId::parse).transpose()?;
        let filter = KeyFilter { search: search.search_string, owner_id };
        let page = self.manager.list_api_keys(&account, &filter, &page).await?;
        let now = self.manager.now();
        Ok(request_id.attach(Response::new(pb::ListApiKeysResponse {
            keys: page.items.iter().map(|k| convert::key_to_proto(k, now, self.manager.last_used_at(k))).collect(),
            next_page_token: page.next_after.unwrap_or_default(),
        })))
    }

    async fn update_api_key(&self, request: Request<pb::UpdateApiKeyRequest>) -> Result<Response<pb::ApiKey>, Status> {
        let (request_id, actor) = actor_of(&request)?;
        let (id, changes) = convert::key_changes(request.get_ref())?;
        self.key_within(&grant_of(&request)?, id).await?;
        let key = self.manager.update_api_key(id, changes, &actor).await?;
        self.respond_settled(
            request_id,
            "update_api_key",
            &id.to_string(),
            convert::key_to_proto(&key, self.manager.now(), self.manager.last_used_at(&key)),
        )
        .await
    }

    async fn revoke_api_key(&self, request: Request<pb::RevokeApiKeyRequest>) -> Result<Response<pb::ApiKey>, Status> {
        let (request_id, actor) = actor_of(&request)?;
        let grant = grant_of(&request)?;
        let req = request.into_inner();
        let id = KeyId::parse(&req.id)?;
        self.key_within(&grant, id).await?;
        let key = self.manager.revoke_api_key(id, &req.reason, &actor).await?;
        self.respond_settled(
            request_id,
            "revoke_api_key",
            &id.to_string(),
            convert::key_to_proto(&key, self.manager.now(), self.manager.last_used_at(&key)),
        )
        .await
    }

    async fn rotate_application_key(
        &self,
        request: Request<pb::RotateApplicationKeyRequest>,
    ) -> Result<Response<pb::RotateApplicationKeyResponse>, Status> {
        let (request_id, actor) = actor_of(&request)?;
        let req = request.into_inner();
        let application = ApplicationId::parse(&req.application_id)?;
        let grace = req.grace_period_seconds.map(|s| std::time::Duration::from_secs(s.into()));
        let rotation = self.manager.rotate_application_key(&application, grace, &actor).await?;
        let response = pb::RotateApplicationKeyResponse {
            key: Some(convert::key_to_proto(&rotation.key, self.manager.now(), None)),
            secret: rotation.credential.into_secret_string(),
            previous_key_id: rotation.previous.map(|(id, _)| id.to_string()).unwrap_or_default(),
            previous_key_retires_at: rotation.previous.map(|(_, at)| convert::timestamp_to_proto(at)),
        };
        self.respond_settled(request_id, "rotate_application_key", application.as_str(), response).await
    }

    async fn create_session(
        &self,
        request: Request<pb::CreateSessionRequest>,
    ) -> Result<Response<pb::CreateSessionResponse>, Status> {
        let (request_id, actor) = actor_of(&request)?;
        let req = request.into_inner();
        let account = AccountId::parse(&req.account_id)?;
        let user = UserId::parse(&req.user_id)?;
        let ttl = (req.ttl_seconds > 0).then(|| std::time::Duration::from_secs(req.ttl_seconds.into()));
        let (session, token) = self.manager.create_session(account, user, ttl, &actor).await?;
        let response = pb::CreateSessionResponse {
            session: Some(convert::session_to_proto(&session, self.manager.now())),
            token: token.into_secret_string(),
        };
        respond(request_id, "create_session", &session.id.to_string(), response)
    }

    async fn get_session(&self, request: Request<pb::GetSessionRequest>) -> Result<Response<pb::Session>, Status> {
        let request_id = RequestId::from_metadata(request.metadata());
        let grant = grant_of(&request)?;
        let id = SessionId::parse(&request.get_ref().id)?;
        let session = self.manager.session(id).await?;
        visible(&grant, &session.account_id, "session", id)?;
        Ok(request_id.attach(Response::new(convert::session_to_proto(&session, self.manager.now()))))
    }

    async fn revoke_session(
        &self,
        request: Request<pb::RevokeSessionRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        let (request_id, actor) = actor_of(&request)?;
        let id = SessionId::parse(&request.get_ref().id)?;
        let session = self.manager.revoke_session(id, &actor).await?;
        self.respond_settled(
            request_id,
            "revoke_session",
            &id.to_string(),
            convert::session_to_proto(&session, self.manager.now()),
        )
        .await
    }

    async fn update_application(
        &self,
        request: Request<pb::UpdateApplicationRequest>,
    ) -> Result<Response<pb::Application>, Status> {
        let (request_id, actor) = actor_of(&request)?;
        let req = request.into_inner();
        let id = ApplicationId::parse_field("id", &req.id)?;
        let name = Name::parse("name", &req.name)?;
        let app = self.manager.rename_application(&id, name, &actor).await?;
        respond(request_id, "update_application", id.as_str(), convert::application_to_proto(&app))
    }

    async fn delete_application(
        &self,
        request: Request<pb::DeleteApplicationRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let (request_id, actor) = actor_of(&request)?;
        let req = request.into_inner();
        let id = ApplicationId::parse_field("id", &req.id)?;
        let deleted = self.manager.delete_application(&id, req.cascade, &actor).await?;
        self.respond_settled(request_id, "delete_application", id.as_str(), convert::deleted_to_proto(&deleted)).await
    }

    async fn reroll_api_key(
        &self,
        request: Request<pb::RerollApiKeyRequest>,
    ) -> Result<Response<pb::RerollApiKeyResponse>, Status> {
        let (request_id, actor) = actor_of(&request)?;
        let grant = grant_of(&request)?;
        let req = request.into_inner();
        let id = KeyId::parse(&req.id)?;
        self.key_within(&grant, id).await?;
        let overlap = std::time::Duration::from_secs(req.overlap_seconds.into());
        let roll = self.manager.roll_api_key(id, overlap, &actor).await?;
        let now = self.manager.now();
        let response = pb::RerollApiKeyResponse {
            key: Some(convert::key_to_proto(&roll.key, now, None)),
            secret: roll.credential.into_secret_string(),
            previous: Some(convert::key_to_proto(&roll.previous, now, self.manager.last_used_at(&roll.previous))),
            previous_retires_at: Some(convert::timestamp_to_proto(roll.retires_at)),
        };
        self.respond_settled(request_id, "reroll_api_key", &id.to_string(), response).await
    }

    async fn delete_api_key(
        &self,
        request: Request<pb::DeleteApiKeyRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let (request_id, actor) = actor_of(&request)?;
        let id = KeyId::parse(&request.get_ref().id)?;
        self.key_within(&grant_of(&request)?, id).await?;
        let deleted = self.manager.delete_api_key(id, &actor).await?;
        self.respond_settled(request_id, "delete_api_key", &id.to_string(), convert::deleted_to_proto(&deleted)).await
    }

    async fn import_api_keys(
        &self,
        request: Request<pb::ImportApiKeysRequest>,
    ) -> Result<Response<pb::ImportApiKeysResponse>, Status> {
        let (request_id, actor) = actor_of(&request)?;
        let grant = grant_of(&request)?;
        let req = request.into_inner();
        // A confined token imports into its account only: the whole batch, or nothing.
        if let Some(own) = &grant.account {
            if let Some(other) = req.keys.iter().find(|k| k.account_id != own.as_str()) {
                let account = AccountId::parse(&other.account_id)?;
                within(&grant, &account)?;
            }
        }
        let keys = req.keys.iter().map(convert::key_to_import).collect();
        let results = self.manager.import_api_keys(&req.import_id, keys, &actor).await?;
        let response =
            pb::ImportApiKeysResponse { results: results.iter().map(convert::import_result_to_proto).collect() };
        respond(request_id, "import_api_keys", &req.import_id, response)
    }

    async fn update_owner(&self, request: Request<pb::UpdateOwnerRequest>) -> Result<Response<pb::Owner>, Status> {
        let (request_id, actor) = actor_of(&request)?;
        let (account, id, changes) = convert::owner_changes(request.get_ref())?;
        let owner = self.manager.update_owner(&account, &id, changes, &actor).await?;
        self.respond_settled(request_id, "update_owner", id.as_str(), convert::owner_to_proto(&owner)).await
    }

    async fn get_owner(&self, request: Request<pb::GetOwnerRequest>) -> Result<Response<pb::Owner>, Status> {
        let request_id = RequestId::from_metadata(request.metadata());
        let req = request.get_ref();
        let (account, id) = (AccountId::parse(&req.account_id)?, OwnerId::parse(&req.owner_id)?);
        within(&grant_of(&request)?, &account)?;
        let owner = self.manager.owner(&account, &id).await?;
        Ok(request_id.attach(Response::new(convert::owner_to_proto(&owner))))
    }

    async fn list_sessions(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let request_id = RequestId::from_metadata(request.metadata());
        let grant = grant_of(&request)?;
        let req = request.into_inner();
        let account = AccountId::parse(&req.account_id)?;
        within(&grant, &account)?;
        let user = Some(req.user_id.as_str()).filter(|u| !u.is_empty()).map(UserId::parse).transpose()?;
        let page = convert::page_request(req.page_size, &req.page_token, |t| SessionId::parse(t).is_ok())?;
        let page = self.manager.list_sessions(&account, user.as_ref(), &page).await?;
        let now = self.manager.now();
        Ok(request_id.attach(Response::new(pb::ListSessionsResponse {
            sessions: page.items.iter().map(|s| convert::session_to_proto(s, now)).collect(),
            next_page_token: page.next_after.unwrap_or_default(),
        })))
    }

    async fn delete_account(
        &self,
        request: Request<pb::DeleteAccountRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let (request_id, actor) = actor_of(&request)?;
        let account = AccountId::parse(&request.get_ref().account_id)?;
        let deleted = self.manager.delete_account(&account, &actor).await?;
        self.respond_settled(request_id, "delete_account", account.as_str(), convert::deleted_to_proto(&deleted)).await
    }

    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let request_id = RequestId::from_metadata(request.metadata());
        let grant = grant_of(&request)?;
        let req = request.into_inner();
        let account = AccountId::parse(&req.account_id)?;
        within(&grant, &account)?;
        let search = SearchParams::parse(&req.search_params)?;
        let categories = search.categories.iter().map(|c| AuditCategory::parse(c)).collect::<Result<_, _>>()?;
        let query = AuditQuery { search: search.search_string, categories };
        let page = convert::page_request(req.page_size, &req.page_token, crate::audit::is_event_id)?;
        let page = self.manager.list_audit_events(&account, &query, &page).await?;
        Ok(request_id.attach(Response::new(pb::ListAuditEventsResponse {
            events: page.items.iter().map(convert::audit_event_to_proto).collect(),
            next_page_token: page.next_after.unwrap_or_default(),
        })))
    }

    async fn create_admin_token(
        &self,
        request: Request<pb::CreateAdminTokenRequest>,
    ) -> Result<Response<pb::CreateAdminTokenResponse>, Status> {
        let (request_id, actor) = actor_of(&request)?;
        let req = request.into_inner();
        let name = AdminTokenName::parse(&req.name)?;
        let role = AdminRole::parse(&req.role)?;
        let account = Some(req.account_id.as_str()).filter(|a| !a.is_empty()).map(AccountId::parse).transpose()?;
        let lifetime = (req.expires_in_seconds > 0).then(|| std::time::Duration::from_secs(req.expires_in_seconds));
        let (token, secret) = self.manager.create_admin_token(name, role, account, lifetime, &actor).await?;
        let response = pb::CreateAdminTokenResponse {
            token: Some(convert::admin_token_to_proto(&token, self.manager.now())),
            secret,
        };
        respond(request_id, "create_admin_token", token.name.as_str(), response)
    }

    async fn list_admin_tokens(
        &self,
        request: Request<pb::ListAdminTokensRequest>,
    ) -> Result<Response<pb::ListAdminTokensResponse>, Status> {
        let request_id = RequestId::from_metadata(request.metadata());
        let tokens = self.manager.list_admin_tokens().await?;
        let now = self.manager.now();
        Ok(request_id.attach(Response::new(pb::ListAdminTokensResponse {
            tokens: tokens.iter().map(|t| convert::admin_token_to_proto(t, now)).collect(),
        })))
    }

    async fn revoke_admin_token(
        &self,
        request: Request<pb::RevokeAdminTokenRequest>,
    ) -> Result<Response<pb::AdminToken>, Status> {
        let (request_id, actor) = actor_of(&request)?;
        let name = AdminTokenName::parse(&request.get_ref().name)?;
        let token = self.manager.revoke_admin_token(&name, &actor).await?;
        respond(
            request_id,
            "revoke_admin_token",
            name.as_str(),
            convert::admin_token_to_proto(&token, self.manager.now()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn every_admin_rpc_has_a_row_in_the_roles_table() {
        let set = prost_types::FileDescriptorSet::decode(super::super::proto::FILE_DESCRIPTOR_SET).unwrap();
        let admin = set.file.iter().flat_map(|f| &f.service).find(|s| s.name() == "Admin").expect("the Admin service");
        let mut in_proto: Vec<&str> = admin.method.iter().map(|m| m.name()).collect();
        let mut in_table: Vec<&str> = ADMIN_RPCS.iter().map(|(name, _)| *name).collect();
        in_proto.sort_unstable();
        in_table.sort_unstable();
        assert_eq!(in_proto, in_table, "a new admin RPC needs a row (and a line in the README's table)");
        assert_eq!(need_of("NoSuchRpc"), AdminNeed::Admin, "unknown RPCs need admin");
    }

    // Guards the start-up warning about a weak bootstrap token (issue 27, item 5).
    #[test]
    fn bootstrap_token_entropy_is_estimated_from_length_and_alphabet() {
        // 16 lowercase letters and digits: the shortest token accepted, 83 bits.
        assert!(entropy_bits("abcdefgh12345678") < MIN_BOOTSTRAP_BITS);
        assert!((entropy_bits("abcdefgh12345678") - 16.0 * 36f64.log2()).abs() < 1e-9);
        // 32 hex digits: 128 bits exactly, no warning; 31 are short of it.
        assert_eq!(entropy_bits(&"a1".repeat(16)), 128.0);
        assert!(entropy_bits(&"a".repeat(31)) < MIN_BOOTSTRAP_BITS);
        // What keygate generates: kgadm_ and 43 random letters and digits (~256 bits).
        let generated = format!("kgadm_{}", crate::domain::random_token(43).unwrap());
        assert!(entropy_bits(&generated) >= MIN_BOOTSTRAP_BITS, "{generated}");
        assert_eq!(entropy_bits(""), 0.0);
    }
}
