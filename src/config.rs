//! Settings for `keygate serve`. Each has a documented default, a flag and a `KEYGATE_*`
//! environment variable; [`ServeArgs::into_settings`] checks them all and reports every
//! bad value at once.

use crate::authn::budget::BudgetSettings;
use crate::authn::verifier::Argon2Settings;
use crate::authn::AuthnSettings;
use crate::breaker::BreakerSettings;
use crate::edge::EdgeSettings;
use crate::grpc::admin::AdminGateSettings;
use crate::grpc::ext_authz::ExtAuthzSettings;
use crate::manage::{ManageSettings, MAX_RUNTIME_KEY_GRACE};
use crate::ratelimit::lease::LeaseSettings;
use crate::store::cached::CacheSettings;
use crate::store::sql::AdminPoolSettings;
use crate::tls::{CertificateFiles, ClientCertificates};
use crate::usage::UsageSettings;
use keygate_api::edge::CredentialSource;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
pub const DEFAULT_DATABASE_URL: &str = "sqlite://keygate-data/keygate.db";
pub use keygate_api::DEFAULT_ADMIN_TOKEN_FILE;
/// Admin tokens shorter than this are refused: they guard every key.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;
pub const DEFAULT_DIGEST_KEY_FILE: &str = "keygate-data/digest-key";
/// Digest keys shorter than this are refused.
pub const MIN_DIGEST_KEY_LEN: usize = crate::authn::digest::MIN_DIGEST_KEY_LEN;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to serve gRPC on.
    #[arg(long, env = "KEYGATE_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: String,
    /// sqlite://PATH (created if missing) or postgres://USER@HOST/DB.
    #[arg(long, env = "KEYGATE_DATABASE_URL", default_value = DEFAULT_DATABASE_URL, hide_env_values = true)]
    pub database_url: String,
    /// Route policy file (TOML). Default: the built-in policy for the management API.
    #[arg(long, env = "KEYGATE_POLICY")]
    pub policy: Option<PathBuf>,
    /// An accepted admin token (at least 16 characters). When unset, the token file is used.
    #[arg(long, env = "KEYGATE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Used when no admin token is given: read, or created with a new random token (mode 0600).
    #[arg(long, env = "KEYGATE_ADMIN_TOKEN_FILE", default_value = DEFAULT_ADMIN_TOKEN_FILE)]
    pub admin_token_file: PathBuf,
    /// Log format.
    #[arg(long, env = "KEYGATE_LOG_FORMAT", value_enum, default_value = "pretty")]
    pub log_format: LogFormat,
    /// Most key records (and applications) cached in memory.
    #[arg(long, env = "KEYGATE_CACHE_CAPACITY", default_value_t = 100_000)]
    pub cache_capacity: u64,
    /// Backstop on cached records, in seconds: staleness never exceeds it (1..=30).
    #[arg(long, env = "KEYGATE_CACHE_TTL_SECONDS", default_value_t = 30)]
    pub cache_ttl_seconds: u64,
    /// While the store is unreachable, records cached up to this many seconds past the TTL
    /// are still served (0: never serve stale).
    #[arg(long, env = "KEYGATE_SERVE_STALE_SECONDS", default_value_t = 60)]
    pub serve_stale_seconds: u64,
    /// argon2id memory cost in KiB (OWASP minimum: 19456).
    #[arg(long, env = "KEYGATE_ARGON2_MEMORY_KIB", default_value_t = Argon2Settings::OWASP_MEMORY_KIB)]
    pub argon2_memory_kib: u32,
    /// argon2id iterations.
    #[arg(long, env = "KEYGATE_ARGON2_ITERATIONS", default_value_t = Argon2Settings::OWASP_ITERATIONS)]
    pub argon2_iterations: u32,
    /// argon2 verifications running at once (default: half the cores, at least 2); one account's
    /// verifications hold at most half of them.
    #[arg(long, env = "KEYGATE_ARGON2_CONCURRENCY")]
    pub argon2_concurrency: Option<usize>,
    /// Database connections in the pool.
    #[arg(long, env = "KEYGATE_DATABASE_MAX_CONNECTIONS", default_value_t = 10)]
    pub database_max_connections: u32,
    /// redis://HOST:PORT to share rate-limit counters across replicas. Default: in-process.
    #[arg(long, env = "KEYGATE_RATE_LIMIT_STORE", hide_env_values = true)]
    pub rate_limit_store: Option<String>,
    /// Prefix of every Redis key keygate writes.
    #[arg(long, env = "KEYGATE_RATE_LIMIT_KEY_PREFIX", default_value = "keygate:rl:")]
    pub rate_limit_key_prefix: String,
    /// How long a rotated runtime key keeps working, unless the rotation says otherwise.
    #[arg(long, env = "KEYGATE_RUNTIME_KEY_GRACE_SECONDS", default_value_t = ManageSettings::DEFAULT_RUNTIME_GRACE.as_secs())]
    pub runtime_key_grace_seconds: u64,
    /// With several replicas on Postgres: the longest a change (a revoke, an update, a
    /// delete) waits for every live replica to apply it (100..=30000). A replica that has
    /// not by then no longer trusts its cache: each replica's lease on its cache is 90% of
    /// this, and it reads from the store while the lease has run out.
    #[arg(long, env = "KEYGATE_CHANGE_ACK_TIMEOUT_MS", default_value_t = ManageSettings::CHANGE_ACK_TIMEOUT.as_millis() as u64)]
    pub change_ack_timeout_ms: u64,
    /// Session lifetime when CreateSession gives none.
    #[arg(long, env = "KEYGATE_SESSION_TTL_SECONDS", default_value_t = ManageSettings::DEFAULT_SESSION_TTL.as_secs())]
    pub session_ttl_seconds: u64,
    /// Where Envoy's Check finds the credential, in order: `authorization` (Bearer), a
    /// header name (bare credential), or `cookie:NAME`.
    #[arg(
        long,
        env = "KEYGATE_EXT_AUTHZ_CREDENTIAL_HEADERS",
        value_delimiter = ',',
        default_value = CredentialSource::DEFAULTS
    )]
    pub ext_authz_credential_headers: Vec<String>,
    /// Check removes the credential's header before the request goes upstream.
    #[arg(long, env = "KEYGATE_EXT_AUTHZ_STRIP_CREDENTIAL")]
    pub ext_authz_strip_credential: bool,
    /// Failed argon2 verifications per key id per minute before further unrecognised
    /// credentials for it are throttled (answered 429 with a retry time, never refused as
    /// invalid). A credential recognised by its stored digest is never throttled.
    #[arg(long, env = "KEYGATE_MAX_FAILURES_PER_KEY", default_value_t = BudgetSettings::DEFAULT_MAX_FAILURES_PER_KEY)]
    pub max_failures_per_key: u32,
    /// Failed verifications and lookups of unknown ids per client network (IPv4 address,
    /// IPv6 /64) per minute before that client's unrecognised credentials are throttled.
    #[arg(long, env = "KEYGATE_MAX_FAILURES_PER_IP", default_value_t = BudgetSettings::DEFAULT_MAX_FAILURES_PER_CLIENT)]
    pub max_failures_per_ip: u32,
    /// The same per IPv4 /24, for all its addresses together (so a client that can pick
    /// any address of a /24 does not get a budget with each).
    #[arg(
        long,
        env = "KEYGATE_MAX_FAILURES_PER_IPV4_24",
        default_value_t = BudgetSettings::DEFAULT_MAX_FAILURES_PER_IPV4_24
    )]
    pub max_failures_per_ipv4_24: u32,
    /// The same per IPv6 /56, for all its /64s together.
    #[arg(
        long,
        env = "KEYGATE_MAX_FAILURES_PER_IPV6_56",
        default_value_t = BudgetSettings::DEFAULT_MAX_FAILURES_PER_IPV6_56
    )]
    pub max_failures_per_ipv6_56: u32,
    /// The same per IPv6 /48, for all its /64s together.
    #[arg(
        long,
        env = "KEYGATE_MAX_FAILURES_PER_IPV6_48",
        default_value_t = BudgetSettings::DEFAULT_MAX_FAILURES_PER_IPV6_48
    )]
    pub max_failures_per_ipv6_48: u32,
    /// Store lookups of ids not in memory that find nothing, per second on this replica,
    /// from every client together; past it such lookups are throttled (retry in 1 s). A
    /// lookup that finds its record costs none.
    #[arg(
        long,
        env = "KEYGATE_UNKNOWN_LOOKUPS_PER_SECOND",
        default_value_t = BudgetSettings::DEFAULT_UNKNOWN_LOOKUPS_PER_SECOND
    )]
    pub unknown_lookups_per_second: u32,
    /// argon2 runs per second for key ids and clients that have failed before (default:
    /// a quarter of argon2's capacity), so first verifications of real keys keep the rest.
    #[arg(long, env = "KEYGATE_SUSPECT_VERIFICATIONS_PER_SECOND")]
    pub suspect_verifications_per_second: Option<u32>,
    /// The key of the digests of verified credentials (at least 32 characters; every
    /// replica must have the same). When unset, the digest key file is used.
    #[arg(long, env = "KEYGATE_DIGEST_KEY", hide_env_values = true)]
    pub digest_key: Option<String>,
    /// Used when no digest key is given: read, or created with a new random key (mode 0600).
    #[arg(long, env = "KEYGATE_DIGEST_KEY_FILE", default_value = DEFAULT_DIGEST_KEY_FILE)]
    pub digest_key_file: PathBuf,
    /// The longest session CreateSession may ask for.
    #[arg(long, env = "KEYGATE_SESSION_MAX_TTL_SECONDS", default_value_t = ManageSettings::MAX_SESSION_TTL.as_secs())]
    pub session_max_ttl_seconds: u64,
    /// Serve HTTP forward auth (nginx auth_request, Caddy forward_auth, Traefik forwardAuth)
    /// at http://ADDRESS/forward-auth, with /healthz (e.g. 127.0.0.1:8081). Off unless set.
    #[arg(long, env = "KEYGATE_HTTP_LISTEN")]
    pub http_listen: Option<String>,
    /// Serve Prometheus metrics at http://ADDRESS/metrics (e.g. 127.0.0.1:9090). Off unless set.
    #[arg(long, env = "KEYGATE_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Serve Admin on this address instead (e.g. 10.0.0.5:50052), apart from Authorize and
    /// Check, which --listen then serves alone. Default: Admin shares --listen.
    #[arg(long, env = "KEYGATE_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,
    /// TLS on every listener: the server's certificate chain (PEM), with --tls-key. Both
    /// files are read again on SIGHUP and when they change.
    #[arg(long, env = "KEYGATE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "KEYGATE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// mTLS on the decision listeners (--listen, --http-listen): a client certificate that
    /// chains to this CA (PEM) is required.
    #[arg(long, env = "KEYGATE_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// With --tls-client-ca: the client certificate must also name one of these (a DNS or
    /// IP subject alternative name), comma-separated.
    #[arg(long, env = "KEYGATE_TLS_CLIENT_NAMES", value_delimiter = ',')]
    pub tls_client_names: Vec<String>,
    /// mTLS on the admin listener (--admin-listen): a client certificate that chains to
    /// this CA (PEM) is required, besides the admin token.
    #[arg(long, env = "KEYGATE_ADMIN_TLS_CLIENT_CA")]
    pub admin_tls_client_ca: Option<PathBuf>,
    /// With --admin-tls-client-ca: the names (SAN) an admin client certificate may carry.
    #[arg(long, env = "KEYGATE_ADMIN_TLS_CLIENT_NAMES", value_delimiter = ',')]
    pub admin_tls_client_names: Vec<String>,
    /// A key's last_used_at is written at most once per this many seconds (per replica).
    #[arg(long, env = "KEYGATE_LAST_USED_INTERVAL_SECONDS", default_value_t = UsageSettings::DEFAULT_EVERY.as_secs())]
    pub last_used_interval_seconds: u64,
    /// Proxies in front of the edge whose `x-forwarded-for` entries are believed (Check
    /// and forward auth). 0: the client is the address the edge saw; 1: the last entry a
    /// proxy (e.g. nginx) appended; entries a client wrote are never believed.
    #[arg(long, env = "KEYGATE_TRUSTED_PROXY_HOPS", default_value_t = 0)]
    pub trusted_proxy_hops: u8,
    /// Longest time a decision may take when the caller sets no deadline (`grpc-timeout`);
    /// a caller's deadline is honoured with a fifth of it kept for the answer's way back.
    /// Past it, keygate answers its fail-closed INTERNAL_ERROR with an error id.
    #[arg(long, env = "KEYGATE_DECISION_DEADLINE_MS", default_value_t = 800)]
    pub decision_deadline_ms: u64,
    /// Longest wait for one key-store read on the request path; 3 failures in a row mark
    /// the store down, and until a background probe finds it up nothing waits for it.
    #[arg(long, env = "KEYGATE_STORE_TIMEOUT_MS", default_value_t = 100)]
    pub store_timeout_ms: u64,
    /// The same for the rate-limit store (Redis).
    #[arg(long, env = "KEYGATE_RATE_LIMIT_TIMEOUT_MS", default_value_t = 50)]
    pub rate_limit_timeout_ms: u64,
    /// With Redis: how long a replica may spend its slice of a high-rate limit before
    /// renewing it (a slice is 1% of the limit). A replica that dies returns its unused
    /// slice after this long.
    #[arg(long, env = "KEYGATE_RATE_LIMIT_LEASE_MS", default_value_t = 2000)]
    pub rate_limit_lease_ms: u64,
    /// With Redis: a replica's slice of a high-rate limit, in percent of the limit. Larger
    /// slices mean fewer round trips and a looser bound (a window may admit up to the limit
    /// plus one slice per replica).
    #[arg(long, env = "KEYGATE_RATE_LIMIT_LEASE_PERCENT", default_value_t = 1.0)]
    pub rate_limit_lease_percent: f64,
    /// Database connections of the admin plane's own pool (on top of
    /// --database-max-connections, which decisions keep to themselves).
    #[arg(long, env = "KEYGATE_ADMIN_DATABASE_CONNECTIONS", default_value_t = AdminPoolSettings::DEFAULT_CONNECTIONS)]
    pub admin_database_connections: u32,
    /// Longest one admin statement may run (Postgres `statement_timeout`; SQLite: the
    /// longest wait for a lock), and the longest wait for an admin connection.
    #[arg(long, env = "KEYGATE_ADMIN_STATEMENT_TIMEOUT_MS", default_value_t = 5_000)]
    pub admin_statement_timeout_ms: u64,
    /// Admin calls per second each admin token may make, on average.
    #[arg(long, env = "KEYGATE_ADMIN_CALLS_PER_SECOND", default_value_t = AdminGateSettings::DEFAULT_CALLS_PER_SECOND)]
    pub admin_calls_per_second: u32,
    /// Admin calls one token may make at once beyond that rate (its bucket's size).
    #[arg(long, env = "KEYGATE_ADMIN_CALL_BURST", default_value_t = AdminGateSettings::DEFAULT_BURST)]
    pub admin_call_burst: u32,
    /// Wrong admin tokens a minute from one source (an IPv4 address or an IPv6 /64); past
    /// it, the source's admin calls are refused without their token being checked.
    #[arg(long, env = "KEYGATE_ADMIN_TOKEN_FAILURES_PER_SOURCE", default_value_t = AdminGateSettings::DEFAULT_FAILURES_PER_SOURCE)]
    pub admin_token_failures_per_source: u32,
}

/// A database or Redis URL whose password `Debug` does not print.
#[derive(Clone)]
pub struct MaskedUrl(String);

impl MaskedUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl MaskedUrl {
    /// The URL split where masking needs it: what comes before the userinfo
    /// (`scheme://`), the userinfo if any, and the rest (`host/db?query`). The userinfo
    /// ends at the URL's last '@', so a password holding an unencoded '?', '#', '/' or '@'
    /// still counts as userinfo; an '@' after a '/', '?' or '#' in the user name's place is
    /// a query's or a path's, and there is no userinfo.
    fn parts(&self) -> (&str, Option<&str>, &str) {
        let (head, rest) = self.0.find("://").map_or(("", self.0.as_str()), |i| self.0.split_at(i + 3));
        let userinfo = rest.rfind('@').map(|at| (&rest[..at], &rest[at + 1..]));
        match userinfo {
            Some((userinfo, after)) if !userinfo.split(':').next().unwrap_or("").contains(['/', '?', '#']) => {
                (head, Some(userinfo), after)
            }
            _ => (head, None, rest),
        }
    }

    /// The query parameters' names, as written (after the userinfo).
    pub fn parameter_names(&self) -> impl Iterator<Item = &str> {
        let query = self.parts().2.split_once('?').map_or("", |(_, query)| query);
        let query = query.split_once('#').map_or(query, |(query, _)| query);
        query.split('&').filter(|pair| !pair.is_empty()).map(|pair| pair.split_once('=').map_or(pair, |(name, _)| name))
    }
}

/// Query parameters whose value says nothing secret, so a masked URL shows it.
const SHOWN_PARAMETERS: [&str; 9] = [
    "sslmode",
    "ssl-mode",
    "statement-cache-capacity",
    "port",
    "dbname",
    "application_name",
    "mode",
    "cache",
    "immutable",
];

impl fmt::Debug for MaskedUrl {
    /// `scheme://user:***@host/db?sslmode=require&password=***`: the userinfo's password,
    /// and the value of every query parameter but those in [`SHOWN_PARAMETERS`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (head, userinfo, rest) = self.parts();
        f.write_str(head)?;
        if let Some(userinfo) = userinfo {
            match userinfo.split_once(':') {
                Some((user, _)) => write!(f, "{user}:***@")?,
                None => write!(f, "{userinfo}@")?,
            }
        }
        let (before_query, query) = rest.split_once('?').map_or((rest, None), |(b, q)| (b, Some(q)));
        f.write_str(before_query)?;
        let Some(query) = query else { return Ok(()) };
        f.write_str("?")?;
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                f.write_str("&")?;
            }
            match pair.split_once('=') {
                Some((name, _)) if !SHOWN_PARAMETERS.contains(&name) => write!(f, "{name}=***")?,
                _ => f.write_str(pair)?,
            }
        }
        Ok(())
    }
}

/// Whether sqlx reads the connect parameter `name` from a URL of `backend`. sqlx ignores
/// any other Postgres parameter with a warning that prints its value (`sslpassword=…`),
/// so keygate refuses them first, naming the parameter and never its value.
fn known_connect_parameter(backend: crate::store::sql::Backend, name: &str) -> bool {
    use crate::store::sql::Backend;
    const POSTGRES: [&str; 18] = [
        "sslmode",
        "ssl-mode",
        "sslrootcert",
        "ssl-root-cert",
        "ssl-ca",
        "sslcert",
        "ssl-cert",
        "sslkey",
        "ssl-key",
        "statement-cache-capacity",
        "host",
        "hostaddr",
        "port",
        "dbname",
        "user",
        "password",
        "application_name",
        "options",
    ];
    match backend {
        Backend::Postgres => POSTGRES.contains(&name) || (name.starts_with("options[") && name.ends_with(']')),
        Backend::Sqlite => ["mode", "cache", "immutable", "vfs"].contains(&name),
    }
}

/// Every parameter of the database URL that sqlx would not read, each named once.
fn unknown_connect_parameters(url: &MaskedUrl, backend: crate::store::sql::Backend) -> Vec<String> {
    let mut unknown: Vec<String> = Vec::new();
    for name in url.parameter_names().filter(|name| !known_connect_parameter(backend, name)) {
        // A name is printed, never a value; odd bytes are shown escaped.
        let name = name.escape_default().to_string();
        if !unknown.contains(&name) {
            unknown.push(name);
        }
    }
    unknown
}

impl fmt::Display for MaskedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Where the digest key comes from: given, or a file (created on first start).
#[derive(Clone)]
pub enum DigestKeySource {
    Given(String),
    File(PathBuf),
}

impl fmt::Debug for DigestKeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Given(_) => f.write_str("Given(<redacted>)"),
            Self::File(path) => write!(f, "File({})", path.display()),
        }
    }
}

/// Where admin tokens come from.
#[derive(Clone)]
pub enum AdminTokenSource {
    Given(String),
    File(PathBuf),
}

impl fmt::Debug for AdminTokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Given(_) => f.write_str("Given(<redacted>)"),
            Self::File(path) => write!(f, "File({})", path.display()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub database_url: MaskedUrl,
    pub database_max_connections: u32,
    /// The admin plane's own connections.
    pub admin_pool: AdminPoolSettings,
    /// Per-token call rates and per-source budgets of wrong admin tokens.
    pub admin_gate: AdminGateSettings,
    pub policy: Option<PathBuf>,
    pub admin_token: AdminTokenSource,
    pub log_format: LogFormat,
    pub cache: CacheSettings,
    pub authn: AuthnSettings,
    /// Where the key of the verified-credential digests comes from.
    pub digest_key: DigestKeySource,
    pub argon2: Argon2Settings,
    pub rate_limit_store: Option<MaskedUrl>,
    pub rate_limit_key_prefix: String,
    pub manage: ManageSettings,
    pub ext_authz: ExtAuthzSettings,
    pub budgets: BudgetSettings,
    pub metrics_listen: Option<SocketAddr>,
    pub http_listen: Option<SocketAddr>,
    /// Admin apart from Authorize and Check; None: on `listen`.
    pub admin_listen: Option<SocketAddr>,
    /// TLS on every listener; None: plaintext.
    pub tls: Option<TlsSettings>,
    pub usage: UsageSettings,
    pub edge: EdgeSettings,
    pub store_breaker: BreakerSettings,
    pub limiter_breaker: BreakerSettings,
    /// High-rate limits on Redis: slice size and lease period.
    pub limit_leases: LeaseSettings,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:{}", .0.iter().map(|p| format!("\n  - {p}")).collect::<String>())]
pub struct ConfigError(pub Vec<String>);

impl ServeArgs {
    pub fn into_settings(self) -> Result<Settings, ConfigError> {
        let mut problems = Vec::new();
        let listen = self.listen.parse().unwrap_or_else(|_| {
            problems
                .push(format!("--listen / KEYGATE_LISTEN: {:?} is not an address like 127.0.0.1:50051", self.listen));
            SocketAddr::from(([127, 0, 0, 1], 0))
        });
        match crate::store::sql::Backend::of_url(&self.database_url) {
            None => problems
                .push("--database-url / KEYGATE_DATABASE_URL: must start with sqlite:// or postgres://".to_owned()),
            Some(backend) => {
                let unknown = unknown_connect_parameters(&MaskedUrl::new(self.database_url.as_str()), backend);
                if !unknown.is_empty() {
                    problems.push(format!(
                        "--database-url / KEYGATE_DATABASE_URL: unknown connect parameter(s) {} (the driver \
                         would ignore them; see docs/configuration.md)",
                        unknown.join(", ")
                    ));
                }
            }
        }
        if !(1..=30).contains(&self.cache_ttl_seconds) {
            problems.push("--cache-ttl-seconds: must be between 1 and 30".to_owned());
        }
        if self.serve_stale_seconds > 3600 {
            problems.push("--serve-stale-seconds: must be at most 3600".to_owned());
        }
        if self.cache_capacity == 0 {
            problems.push("--cache-capacity: must be at least 1".to_owned());
        }
        if self.argon2_memory_kib < 8 * 1024 || self.argon2_iterations == 0 {
            problems.push("--argon2-memory-kib must be at least 8192 and --argon2-iterations at least 1".to_owned());
        }
        if self.argon2_concurrency == Some(0) {
            problems.push("--argon2-concurrency: must be at least 1".to_owned());
        }
        if let Some(url) = &self.rate_limit_store {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                problems.push("--rate-limit-store / KEYGATE_RATE_LIMIT_STORE: must start with redis://".to_owned());
            }
        }
        if self.session_ttl_seconds == 0 || self.session_ttl_seconds > self.session_max_ttl_seconds {
            problems.push("--session-ttl-seconds: must be between 1 and --session-max-ttl-seconds".to_owned());
        }
        if self.runtime_key_grace_seconds > MAX_RUNTIME_KEY_GRACE.as_secs() {
            problems.push(format!(
                "--runtime-key-grace-seconds: must be at most {} (7 days)",
                MAX_RUNTIME_KEY_GRACE.as_secs()
            ));
        }
        if !(100..=30_000).contains(&self.change_ack_timeout_ms) {
            problems.push("--change-ack-timeout-ms: must be between 100 and 30000".to_owned());
        }
        let credential_headers = self
            .ext_authz_credential_headers
            .iter()
            .filter_map(|raw| {
                CredentialSource::parse(raw)
                    .map_err(|e| problems.push(format!("--ext-authz-credential-headers: {e}")))
                    .ok()
            })
            .collect();
        let mut address = |raw: Option<&str>, flag: &str, example: &str| {
            raw.and_then(|raw| {
                let parsed = raw.parse().ok();
                if parsed.is_none() {
                    let env = format!("KEYGATE_{}", flag.to_uppercase().replace('-', "_"));
                    problems.push(format!("--{flag} / {env}: {raw:?} is not an address like {example}"));
                }
                parsed
            })
        };
        let metrics_listen = address(self.metrics_listen.as_deref(), "metrics-listen", "127.0.0.1:9090");
        let http_listen = address(self.http_listen.as_deref(), "http-listen", "127.0.0.1:8081");
        let admin_listen: Option<SocketAddr> = address(self.admin_listen.as_deref(), "admin-listen", "127.0.0.1:50052");
        let tls = tls_settings(
            (self.tls_cert, self.tls_key),
            (self.tls_client_ca, self.tls_client_names),
            (self.admin_tls_client_ca, self.admin_tls_client_names),
            self.admin_listen.is_some(),
            &mut problems,
        );
        if !(1..=3600).contains(&self.last_used_interval_seconds) {
            problems.push("--last-used-interval-seconds: must be between 1 and 3600".to_owned());
        }
        if !(10..=60_000).contains(&self.decision_deadline_ms) {
            problems.push("--decision-deadline-ms: must be between 10 and 60000".to_owned());
        }
        if !(1..=10_000).contains(&self.store_timeout_ms) {
            problems.push("--store-timeout-ms: must be between 1 and 10000".to_owned());
        }
        if !(1..=10_000).contains(&self.rate_limit_timeout_ms) {
            problems.push("--rate-limit-timeout-ms: must be between 1 and 10000".to_owned());
        }
        if !(100..=60_000).contains(&self.rate_limit_lease_ms) {
            problems.push("--rate-limit-lease-ms: must be between 100 and 60000".to_owned());
        }
        if !(0.01..=50.0).contains(&self.rate_limit_lease_percent) {
            problems.push("--rate-limit-lease-percent: must be between 0.01 and 50".to_owned());
        }
        if self.database_max_connections == 0 {
            problems.push("--database-max-connections: must be at least 1".to_owned());
        }
        if self.admin_database_connections == 0 {
            problems.push("--admin-database-connections: must be at least 1".to_owned());
        }
        if !(100..=600_000).contains(&self.admin_statement_timeout_ms) {
            problems.push("--admin-statement-timeout-ms: must be between 100 and 600000".to_owned());
        }
        if self.admin_calls_per_second == 0 || self.admin_call_burst == 0 {
            problems.push("--admin-calls-per-second and --admin-call-burst: must be at least 1".to_owned());
        }
        if self.admin_token_failures_per_source == 0 {
            problems.push("--admin-token-failures-per-source: must be at least 1".to_owned());
        }
        let digest_key = match self.digest_key {
            Some(key) if key.trim().len() < MIN_DIGEST_KEY_LEN => {
                problems.push(format!("KEYGATE_DIGEST_KEY: must be at least {MIN_DIGEST_KEY_LEN} characters"));
                DigestKeySource::Given(key)
            }
            Some(key) => DigestKeySource::Given(key.trim().to_owned()),
            None => DigestKeySource::File(self.digest_key_file),
        };
        let admin_token = match self.admin_token {
            Some(token) if token.trim().len() < MIN_ADMIN_TOKEN_LEN => {
                problems.push(format!("KEYGATE_ADMIN_TOKEN: must be at least {MIN_ADMIN_TOKEN_LEN} characters"));
                AdminTokenSource::Given(token)
            }
            Some(token) => AdminTokenSource::Given(token.trim().to_owned()),
            None => AdminTokenSource::File(self.admin_token_file),
        };
        if !problems.is_empty() {
            return Err(ConfigError(problems));
        }
        let ttl = Duration::from_secs(self.cache_ttl_seconds);
        let defaults = Argon2Settings::default();
        let argon2_slots = self.argon2_concurrency.unwrap_or(defaults.max_concurrent).max(1);
        Ok(Settings {
            listen,
            database_url: MaskedUrl::new(self.database_url),
            database_max_connections: self.database_max_connections,
            admin_pool: AdminPoolSettings {
                max_connections: self.admin_database_connections,
                statement_timeout: Duration::from_millis(self.admin_statement_timeout_ms),
            },
            admin_gate: AdminGateSettings {
                calls_per_second: self.admin_calls_per_second,
                burst: self.admin_call_burst,
                failures_per_source: self.admin_token_failures_per_source,
                ..AdminGateSettings::default()
            },
            policy: self.policy,
            admin_token,
            log_format: self.log_format,
            cache: CacheSettings {
                capacity: self.cache_capacity,
                ttl,
                max_stale: Duration::from_secs(self.serve_stale_seconds),
            },
            authn: AuthnSettings { capacity: self.cache_capacity, ..AuthnSettings::default() },
            digest_key,
            argon2: Argon2Settings {
                memory_kib: self.argon2_memory_kib,
                iterations: self.argon2_iterations,
                parallelism: 1,
                max_concurrent: self.argon2_concurrency.unwrap_or(defaults.max_concurrent),
            },
            rate_limit_store: self.rate_limit_store.map(MaskedUrl::new),
            rate_limit_key_prefix: self.rate_limit_key_prefix,
            manage: ManageSettings {
                default_session_ttl: Duration::from_secs(self.session_ttl_seconds),
                max_session_ttl: Duration::from_secs(self.session_max_ttl_seconds),
                default_runtime_grace: Duration::from_secs(self.runtime_key_grace_seconds),
                max_runtime_grace: MAX_RUNTIME_KEY_GRACE,
                change_ack_timeout: Duration::from_millis(self.change_ack_timeout_ms),
            },
            ext_authz: ExtAuthzSettings { credential_headers, strip_credential: self.ext_authz_strip_credential },
            budgets: BudgetSettings {
                max_failures_per_key: self.max_failures_per_key.max(1),
                max_failures_per_client: self.max_failures_per_ip.max(1),
                max_failures_per_ipv4_24: self.max_failures_per_ipv4_24.max(1),
                max_failures_per_ipv6_56: self.max_failures_per_ipv6_56.max(1),
                max_failures_per_ipv6_48: self.max_failures_per_ipv6_48.max(1),
                unknown_lookups_per_second: self.unknown_lookups_per_second.max(1),
                suspect_verifications_per_second: self.suspect_verifications_per_second.unwrap_or(
                    // A quarter of argon2's capacity at ~20 ms per verification.
                    u32::try_from(argon2_slots * 50 / 4).unwrap_or(u32::MAX).max(1),
                ),
                capacity: self.cache_capacity,
                ..BudgetSettings::default()
            },
            metrics_listen,
            http_listen,
            admin_listen,
            tls,
            usage: UsageSettings {
                every: Duration::from_secs(self.last_used_interval_seconds),
                ..UsageSettings::default()
            },
            edge: EdgeSettings {
                trusted_proxy_hops: usize::from(self.trusted_proxy_hops),
                decision_deadline: Duration::from_millis(self.decision_deadline_ms),
            },
            store_breaker: breaker(self.store_timeout_ms),
            limiter_breaker: breaker(self.rate_limit_timeout_ms),
            limit_leases: LeaseSettings {
                period: Duration::from_millis(self.rate_limit_lease_ms),
                share: self.rate_limit_lease_percent / 100.0,
            },
        })
    }
}

/// TLS on keygate's listeners.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsSettings {
    /// The server certificate of every listener.
    pub certificate: CertificateFiles,
    /// mTLS on the decision listeners (gRPC, and forward auth).
    pub clients: Option<ClientCertificates>,
    /// mTLS on the admin listener, when Admin has one of its own.
    pub admin_clients: Option<ClientCertificates>,
    /// How often the files are looked at for a change (SIGHUP reloads at once).
    pub watch_every: Duration,
}

impl TlsSettings {
    pub const WATCH_EVERY: Duration = Duration::from_secs(10);
}

type ClientFlags = (Option<PathBuf>, Vec<String>);

/// The TLS flags, checked together: each problem is named by its flag.
fn tls_settings(
    (cert, key): (Option<PathBuf>, Option<PathBuf>),
    clients: ClientFlags,
    admin_clients: ClientFlags,
    admin_apart: bool,
    problems: &mut Vec<String>,
) -> Option<TlsSettings> {
    // `flag` is the flags' stem: `--{flag}-ca`, `--{flag}-names` (static, for the CA's errors).
    let mut client_certificates = |(ca, names): ClientFlags, flag: &str, ca_flag: &'static str| {
        let given = !names.is_empty();
        let names: Vec<String> = names.into_iter().map(|n| n.trim().to_owned()).filter(|n| !n.is_empty()).collect();
        // An empty list admits every certificate of the CA: a blank value must not mean that.
        if given && names.is_empty() {
            problems
                .push(format!("--{flag}-names: no name given (leave the flag out to admit any certificate of the CA)"));
        }
        if ca.is_none() && !names.is_empty() {
            problems.push(format!("--{flag}-names: needs --{flag}-ca (the CA the client certificates chain to)"));
        }
        for name in &names {
            if rustls::pki_types::ServerName::try_from(name.as_str()).is_err() {
                problems.push(format!("--{flag}-names: {name:?} is not a DNS name or an IP address"));
            }
        }
        ca.map(|ca| ClientCertificates { ca, names, flag: ca_flag })
    };
    let clients = client_certificates(clients, "tls-client", "--tls-client-ca");
    let admin_clients = client_certificates(admin_clients, "admin-tls-client", "--admin-tls-client-ca");
    if admin_clients.is_some() && !admin_apart {
        problems.push(
            "--admin-tls-client-ca: needs --admin-listen (Admin on the decision port takes --tls-client-ca's clients)"
                .to_owned(),
        );
    }
    match (cert, key) {
        (Some(cert), Some(key)) => Some(TlsSettings {
            certificate: CertificateFiles { cert, key },
            clients,
            admin_clients,
            watch_every: TlsSettings::WATCH_EVERY,
        }),
        (None, None) => {
            if clients.is_some() || admin_clients.is_some() {
                problems.push("--tls-client-ca / --admin-tls-client-ca: need --tls-cert and --tls-key".to_owned());
            }
            None
        }
        (Some(_), None) => {
            problems.push("--tls-cert: needs --tls-key".to_owned());
            None
        }
        (None, Some(_)) => {
            problems.push("--tls-key: needs --tls-cert".to_owned());
            None
        }
    }
}

/// Consecutive failures that mark a store down, and how often a down store is probed.
pub const BREAKER_FAILURES_TO_OPEN: u32 = 3;
pub const BREAKER_PROBE_EVERY: Duration = Duration::from_millis(250);

fn breaker(timeout_ms: u64) -> BreakerSettings {
    BreakerSettings {
        timeout: Duration::from_millis(timeout_ms),
        failures_to_open: BREAKER_FAILURES_TO_OPEN,
        probe_every: BREAKER_PROBE_EVERY,
    }
}

impl Settings {
    /// Defaults for a given database, as `keygate serve` with no flags would use.
    pub fn with_database(database_url: &str) -> Self {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let mut args = Only::parse_from(["keygate"]).serve;
        args.database_url = database_url.to_owned();
        args.into_settings().expect("defaults are valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_url_debug_masks_the_password() {
        let url = MaskedUrl::new("postgres://kg:hunter2@db:5432/keygate");
        assert_eq!(format!("{url:?}"), "postgres://kg:***@db:5432/keygate");
        let url = MaskedUrl::new("postgres://kg@db/keygate?sslmode=require&password=hunter2&sslpassword=x&PWD=y");
        assert_eq!(url.to_string(), "postgres://kg@db/keygate?sslmode=require&password=***&sslpassword=***&PWD=***");
        let url = MaskedUrl::new("redis://:hunter2@cache:6379/0?token=t");
        assert_eq!(url.to_string(), "redis://:***@cache:6379/0?token=***");
        assert_eq!(MaskedUrl::new("sqlite://data/k.db").to_string(), "sqlite://data/k.db");
    }

    #[test]
    fn a_password_with_url_delimiters_and_every_parameter_value_are_masked() {
        for (url, shown) in [
            (
                "postgres://kg:hun?ter2@db:5432/keygate?sslmode=require",
                "postgres://kg:***@db:5432/keygate?sslmode=require",
            ),
            ("postgres://kg:a#b/c@d@db/k", "postgres://kg:***@db/k"),
            ("postgres://db/k?options=-c%20x&application_name=kg", "postgres://db/k?options=***&application_name=kg"),
            ("postgres://db/k?application_name=a@b&token=t", "postgres://db/k?application_name=a@b&token=***"),
            ("postgres://db?x=a:b@c&password=p", "postgres://db?x=***&password=***"),
            ("redis://:s3cret?x@cache:6379/0", "redis://:***@cache:6379/0"),
        ] {
            assert_eq!(MaskedUrl::new(url).to_string(), shown);
        }
    }

    #[test]
    fn connect_parameters_sqlx_would_ignore_are_named_without_their_value() {
        use crate::store::sql::Backend;
        let url = MaskedUrl::new("postgres://kg:p?w@db/k?sslmode=require&sslpassword=hunter2&options[search_path]=x&x");
        assert_eq!(unknown_connect_parameters(&url, Backend::Postgres), ["sslpassword", "x"]);
        let url = MaskedUrl::new("sqlite://data/k.db?mode=rwc&password=hunter2");
        assert_eq!(unknown_connect_parameters(&url, Backend::Sqlite), ["password"]);
        let url = MaskedUrl::new("postgres://kg:p?sslpassword=1@db/k");
        assert!(unknown_connect_parameters(&url, Backend::Postgres).is_empty(), "a password's '?' starts no query");
        let url = MaskedUrl::new("postgres://db/k?sslpassword=a@b");
        assert_eq!(unknown_connect_parameters(&url, Backend::Postgres), ["sslpassword"], "an '@' in the query");
    }

    #[test]
    fn every_bad_value_is_reported_at_once() {
        let bad = ServeArgs {
            listen: "nowhere".into(),
            database_url: "mysql://x".into(),
            policy: None,
            admin_token: Some("short".into()),
            admin_token_file: "t".into(),
            log_format: LogFormat::Pretty,
            cache_capacity: 0,
            cache_ttl_seconds: 0,
            serve_stale_seconds: 60,
            argon2_memory_kib: 19_456,
            argon2_iterations: 2,
            argon2_concurrency: None,
            database_max_connections: 10,
            rate_limit_store: Some("http://nope".into()),
            rate_limit_key_prefix: "p".into(),
            runtime_key_grace_seconds: 3600,
            change_ack_timeout_ms: 1000,
            session_ttl_seconds: 60,
            session_max_ttl_seconds: 3600,
            ext_authz_credential_headers: vec!["authorization".into()],
            ext_authz_strip_credential: false,
            max_failures_per_key: 20,
            max_failures_per_ip: 100,
            max_failures_per_ipv4_24: 1_000,
            max_failures_per_ipv6_56: 400,
            max_failures_per_ipv6_48: 1_000,
            unknown_lookups_per_second: 200,
            suspect_verifications_per_second: None,
            digest_key: None,
            digest_key_file: "d".into(),
            metrics_listen: Some("localhost".into()),
            http_listen: Some("nowhere:80".into()),
            admin_listen: Some("nowhere".into()),
            tls_cert: Some("server.pem".into()),
            tls_key: None,
            tls_client_ca: None,
            tls_client_names: vec!["*.edges".into()],
            admin_tls_client_ca: Some("ca.pem".into()),
            admin_tls_client_names: vec![],
            last_used_interval_seconds: 60,
            trusted_proxy_hops: 0,
            decision_deadline_ms: 5,
            store_timeout_ms: 100,
            rate_limit_timeout_ms: 50,
            rate_limit_lease_ms: 10,
            rate_limit_lease_percent: 60.0,
            admin_database_connections: 2,
            admin_statement_timeout_ms: 5_000,
            admin_calls_per_second: 50,
            admin_call_burst: 500,
            admin_token_failures_per_source: 20,
        };
        let err = bad.into_settings().unwrap_err();
        // The four TLS ones: --admin-listen, names without a CA, a wildcard name, a cert
        // without its key.
        assert_eq!(err.0.len(), 15, "{err}");
        assert!(!err.to_string().contains("short\""), "{err}");
    }

    #[test]
    fn tls_flags_go_together() {
        let settings = |flags: &[&str]| {
            use clap::Parser;
            #[derive(clap::Parser)]
            struct Only {
                #[command(flatten)]
                serve: ServeArgs,
            }
            Only::parse_from(["keygate"].iter().chain(flags)).serve.into_settings()
        };
        let tls = settings(&["--tls-cert", "c.pem", "--tls-key", "k.pem", "--tls-client-ca", "ca.pem"])
            .expect("valid")
            .tls
            .expect("TLS on");
        assert_eq!(
            tls.clients,
            Some(ClientCertificates { ca: "ca.pem".into(), names: vec![], flag: "--tls-client-ca" })
        );
        assert_eq!(tls.admin_clients, None);
        assert!(settings(&[]).expect("valid").tls.is_none(), "plaintext by default");
        for (flags, problem) in [
            (&["--tls-key", "k.pem"][..], "--tls-key: needs --tls-cert"),
            (&["--tls-client-ca", "ca.pem"][..], "need --tls-cert"),
            (&["--tls-cert", "c", "--tls-key", "k", "--admin-tls-client-ca", "ca"][..], "needs --admin-listen"),
            (&["--tls-cert", "c", "--tls-key", "k", "--tls-client-names", "edge"][..], "needs --tls-client-ca"),
            (
                &["--tls-cert", "c", "--tls-key", "k", "--tls-client-ca", "ca", "--tls-client-names", " , "][..],
                "no name given",
            ),
        ] {
            let err = settings(flags).unwrap_err().to_string();
            assert!(err.contains(problem), "{flags:?}: {err}");
        }
        let apart = settings(&["--admin-listen", "127.0.0.1:50052"]).expect("valid");
        assert_eq!(apart.admin_listen, Some("127.0.0.1:50052".parse().unwrap()));
    }
}
