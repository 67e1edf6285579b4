//! The flags of `keygate serve`, in groups by what they set. Each group checks its own
//! values (ranges in its flags' value parsers, the rest here) and adds every problem to
//! one list, so that all are reported at once.

use super::range::{in_range, Checked};
use super::secret::{check_key_file, Secret};
use super::url::{unknown_connect_parameters, with_default_sslmode, MaskedUrl};
use super::{
    AdminTokenSource, DigestKeySource, DrainSettings, RedisTls, DEFAULT_ADMIN_TOKEN_FILE, DEFAULT_DATABASE_URL,
    DEFAULT_DIGEST_KEY_FILE, DEFAULT_LISTEN, MIN_ADMIN_TOKEN_LEN, MIN_DIGEST_KEY_LEN,
};
use crate::authn::budget::BudgetSettings;
use crate::authn::verifier::Argon2Settings;
use crate::edge::EdgeSettings;
use crate::grpc::admin::AdminGateSettings;
use crate::grpc::ext_authz::ExtAuthzSettings;
use crate::manage::{ManageSettings, MAX_RUNTIME_KEY_GRACE};
use crate::ratelimit::lease::LeaseSettings;
use crate::store::cached::CacheSettings;
use crate::store::sql::AdminPoolSettings;
use crate::usage::UsageSettings;
use keygate_api::edge::CredentialSource;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Where keygate listens.
#[derive(Debug, Clone, clap::Args)]
pub struct ListenArgs {
    /// Address to serve gRPC on.
    #[arg(long, env = "KEYGATE_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: String,
    /// Serve HTTP forward auth (nginx auth_request, Caddy forward_auth, Traefik forwardAuth)
    /// at http://ADDRESS/forward-auth, with /healthz (e.g. 127.0.0.1:8081). Off unless set.
    /// With --tls-cert it serves https:// only, and with --tls-client-ca it requires the
    /// edges' client certificates (mTLS), as --listen does.
    #[arg(long, env = "KEYGATE_HTTP_LISTEN")]
    pub http_listen: Option<String>,
    /// Serve Prometheus metrics at http://ADDRESS/metrics (e.g. 127.0.0.1:9090). Off unless set.
    /// With --tls-cert it serves https:// only (no client certificate is asked for, even
    /// under --tls-client-ca).
    #[arg(long, env = "KEYGATE_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Serve Admin on this address instead (e.g. 10.0.0.5:50052), apart from Authorize and
    /// Check, which --listen then serves alone. Default: Admin shares --listen.
    #[arg(long, env = "KEYGATE_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,
    /// Serve the operator console at http://ADDRESS/ (docs/console.md); `off`: no console.
    /// On the default address, a port already taken is a warning and no console; on an
    /// address given, it stops start-up. With --tls-cert it serves https:// only.
    #[arg(long, env = "KEYGATE_CONSOLE_LISTEN", default_value = crate::console::DEFAULT_LISTEN)]
    pub console_listen: String,
    /// On SIGTERM or Ctrl-C, how long keygate goes on serving once its health says
    /// NOT_SERVING (gRPC health, /healthz), so that load balancers take it out before its
    /// listeners close. 0: they close at once.
    #[arg(long, env = "KEYGATE_DRAIN_DELAY_MS", default_value_t = 0.into(), value_parser = in_range::<u64>(0..=600_000))]
    pub drain_delay_ms: Checked<u64>,
    /// Then the longest that calls in flight get to finish once the listeners take no new
    /// ones; past it they are cut and keygate exits.
    #[arg(long, env = "KEYGATE_DRAIN_TIMEOUT_MS", default_value_t = 10_000.into(), value_parser = in_range::<u64>(0..=600_000))]
    pub drain_timeout_ms: Checked<u64>,
}

/// The addresses, parsed.
pub(super) struct Listeners {
    pub listen: SocketAddr,
    pub http_listen: Option<SocketAddr>,
    pub metrics_listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    pub console: crate::console::ConsoleListen,
}

impl ListenArgs {
    pub(super) fn addresses(&self, problems: &mut Vec<String>) -> Listeners {
        let listen = self.listen.parse().unwrap_or_else(|_| {
            problems
                .push(format!("--listen / KEYGATE_LISTEN: {:?} is not an address like 127.0.0.1:50051", self.listen));
            SocketAddr::from(([127, 0, 0, 1], 0))
        });
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
        let admin_listen = address(self.admin_listen.as_deref(), "admin-listen", "127.0.0.1:50052");
        let console = match self.console_listen.as_str() {
            "off" => crate::console::ConsoleListen::Off,
            raw => match raw.parse() {
                Ok(address) if raw == crate::console::DEFAULT_LISTEN => crate::console::ConsoleListen::Default(address),
                Ok(address) => crate::console::ConsoleListen::Given(address),
                Err(_) => {
                    problems.push(format!(
                        "--console-listen / KEYGATE_CONSOLE_LISTEN: {raw:?} is not an address like 127.0.0.1:8090, \
                         or off"
                    ));
                    crate::console::ConsoleListen::Off
                }
            },
        };
        Listeners { listen, http_listen, metrics_listen, admin_listen, console }
    }

    pub(super) fn drain(&self, problems: &mut Vec<String>) -> DrainSettings {
        DrainSettings {
            delay: Duration::from_millis(self.drain_delay_ms.value(problems)),
            timeout: Duration::from_millis(self.drain_timeout_ms.value(problems)),
        }
    }
}

/// The secrets, each with its file twin.
const DATABASE_URL: Secret = Secret { flag: "database-url", what: "database URL" };
const REDIS_URL: Secret = Secret { flag: "rate-limit-store", what: "Redis URL" };
const ADMIN_TOKEN: Secret = Secret { flag: "admin-token", what: "admin token" };
const DIGEST_KEY: Secret = Secret { flag: "digest-key", what: "digest key" };

/// The key store and its two pools.
#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseArgs {
    /// sqlite://PATH (created if missing) or postgres://USER@HOST/DB. Default:
    /// sqlite://keygate-data/keygate.db.
    #[arg(long, env = "KEYGATE_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// A file holding the database URL (with its password), instead of --database-url.
    #[arg(long, env = "KEYGATE_DATABASE_URL_FILE")]
    pub database_url_file: Option<PathBuf>,
    /// Database connections in the pool.
    #[arg(long, env = "KEYGATE_DATABASE_MAX_CONNECTIONS", default_value_t = 10.into(), value_parser = in_range::<u32>(1..=u32::MAX))]
    pub database_max_connections: Checked<u32>,
    /// Database connections of the admin plane's own pool (on top of
    /// --database-max-connections, which decisions keep to themselves).
    #[arg(
        long,
        env = "KEYGATE_ADMIN_DATABASE_CONNECTIONS",
        default_value_t = AdminPoolSettings::DEFAULT_CONNECTIONS.into(),
        value_parser = in_range::<u32>(1..=u32::MAX)
    )]
    pub admin_database_connections: Checked<u32>,
    /// Longest one admin statement may run (Postgres `statement_timeout`; SQLite: the
    /// longest wait for a lock), and the longest wait for an admin connection.
    #[arg(long, env = "KEYGATE_ADMIN_STATEMENT_TIMEOUT_MS", default_value_t = 5_000.into(), value_parser = in_range::<u64>(100..=600_000))]
    pub admin_statement_timeout_ms: Checked<u64>,
    /// Longest wait for one key-store read on the request path; 3 failures in a row mark
    /// the store down, and until a background probe finds it up nothing waits for it.
    #[arg(long, env = "KEYGATE_STORE_TIMEOUT_MS", default_value_t = 100.into(), value_parser = in_range::<u64>(1..=10_000))]
    pub store_timeout_ms: Checked<u64>,
}

impl DatabaseArgs {
    /// The URL, given or from its file, and its problems: a backend keygate does not
    /// know, parameters its driver ignores. Postgres elsewhere than this machine without
    /// an `sslmode` gets `verify-full`.
    pub(super) fn url(&mut self, group_readable: bool, problems: &mut Vec<String>) -> MaskedUrl {
        let given =
            DATABASE_URL.either(self.database_url.take(), self.database_url_file.as_deref(), group_readable, problems);
        let url = with_default_sslmode(MaskedUrl::new(given.unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned())));
        Self::check_url(&url, problems);
        url
    }

    fn check_url(url: &MaskedUrl, problems: &mut Vec<String>) {
        match crate::store::sql::Backend::of_url(url.expose()) {
            None => problems
                .push("--database-url / KEYGATE_DATABASE_URL: must start with sqlite:// or postgres://".to_owned()),
            Some(backend) => {
                let unknown = unknown_connect_parameters(url, backend);
                if !unknown.is_empty() {
                    problems.push(format!(
                        "--database-url / KEYGATE_DATABASE_URL: unknown connect parameter(s) {} (the driver \
                         would ignore them; see docs/configuration.md)",
                        unknown.join(", ")
                    ));
                }
            }
        }
    }

    pub(super) fn admin_pool(&self, problems: &mut Vec<String>) -> AdminPoolSettings {
        AdminPoolSettings {
            max_connections: self.admin_database_connections.value(problems),
            statement_timeout: Duration::from_millis(self.admin_statement_timeout_ms.value(problems)),
        }
    }
}

/// Admin tokens, and what one token may do.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    /// An accepted admin token (at least 16 characters). When unset, the token file is used.
    #[arg(long, env = "KEYGATE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// The admin token's file, instead of --admin-token: read, or created with a new random
    /// token (mode 0600) when missing. Default: keygate-data/admin-token.
    #[arg(long, env = "KEYGATE_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Admin calls per second each admin token may make, on average.
    #[arg(long, env = "KEYGATE_ADMIN_CALLS_PER_SECOND", default_value_t = AdminGateSettings::DEFAULT_CALLS_PER_SECOND)]
    pub admin_calls_per_second: u32,
    /// Admin calls one token may make at once beyond that rate (its bucket's size).
    #[arg(long, env = "KEYGATE_ADMIN_CALL_BURST", default_value_t = AdminGateSettings::DEFAULT_BURST)]
    pub admin_call_burst: u32,
    /// Wrong admin tokens a minute from one source (an IPv4 address or an IPv6 /64); past
    /// it, the source's admin calls are refused without their token being checked.
    #[arg(
        long,
        env = "KEYGATE_ADMIN_TOKEN_FAILURES_PER_SOURCE",
        default_value_t = AdminGateSettings::DEFAULT_FAILURES_PER_SOURCE.into(),
        value_parser = in_range::<u32>(1..=u32::MAX)
    )]
    pub admin_token_failures_per_source: Checked<u32>,
}

impl AdminArgs {
    pub(super) fn token(self, group_readable: bool, problems: &mut Vec<String>) -> AdminTokenSource {
        ADMIN_TOKEN.not_both(self.admin_token.is_some(), self.admin_token_file.as_deref(), group_readable, problems);
        match self.admin_token {
            Some(token) if token.trim().len() < MIN_ADMIN_TOKEN_LEN => {
                problems.push(format!("KEYGATE_ADMIN_TOKEN: must be at least {MIN_ADMIN_TOKEN_LEN} characters"));
                AdminTokenSource::Given(token)
            }
            Some(token) => AdminTokenSource::Given(token.trim().to_owned()),
            None => AdminTokenSource::File(self.admin_token_file.unwrap_or_else(|| DEFAULT_ADMIN_TOKEN_FILE.into())),
        }
    }

    pub(super) fn gate(&self, problems: &mut Vec<String>) -> AdminGateSettings {
        // One problem for the two: they make one bucket.
        if self.admin_calls_per_second == 0 || self.admin_call_burst == 0 {
            problems.push("--admin-calls-per-second and --admin-call-burst: must be at least 1".to_owned());
        }
        AdminGateSettings {
            calls_per_second: self.admin_calls_per_second,
            burst: self.admin_call_burst,
            failures_per_source: self.admin_token_failures_per_source.value(problems),
            ..AdminGateSettings::default()
        }
    }
}

/// The record cache.
#[derive(Debug, Clone, clap::Args)]
pub struct CacheArgs {
    /// Most key records (and applications) cached in memory.
    #[arg(long, env = "KEYGATE_CACHE_CAPACITY", default_value_t = 100_000.into(), value_parser = in_range::<u64>(1..=u64::MAX))]
    pub cache_capacity: Checked<u64>,
    /// Backstop on cached records, in seconds: staleness never exceeds it (1..=30).
    #[arg(long, env = "KEYGATE_CACHE_TTL_SECONDS", default_value_t = 30.into(), value_parser = in_range::<u64>(1..=30))]
    pub cache_ttl_seconds: Checked<u64>,
    /// While the store is unreachable, records cached up to this many seconds past the TTL
    /// are still served (0: never serve stale).
    #[arg(long, env = "KEYGATE_SERVE_STALE_SECONDS", default_value_t = 60.into(), value_parser = in_range::<u64>(0..=3600))]
    pub serve_stale_seconds: Checked<u64>,
}

impl CacheArgs {
    pub(super) fn settings(&self, problems: &mut Vec<String>) -> CacheSettings {
        CacheSettings {
            ttl: Duration::from_secs(self.cache_ttl_seconds.value(problems)),
            max_stale: Duration::from_secs(self.serve_stale_seconds.value(problems)),
            capacity: self.cache_capacity.value(problems),
        }
    }
}

/// How credentials are verified: argon2, and the digests of verified credentials.
#[derive(Debug, Clone, clap::Args)]
pub struct CredentialArgs {
    /// argon2id memory cost in KiB (OWASP minimum: 19456).
    #[arg(long, env = "KEYGATE_ARGON2_MEMORY_KIB", default_value_t = Argon2Settings::OWASP_MEMORY_KIB)]
    pub argon2_memory_kib: u32,
    /// argon2id iterations.
    #[arg(long, env = "KEYGATE_ARGON2_ITERATIONS", default_value_t = Argon2Settings::OWASP_ITERATIONS)]
    pub argon2_iterations: u32,
    /// argon2 verifications running at once (default: half the cores, at least 2); one account's
    /// verifications hold at most half of them.
    #[arg(long, env = "KEYGATE_ARGON2_CONCURRENCY", value_parser = in_range::<usize>(1..=usize::MAX))]
    pub argon2_concurrency: Option<Checked<usize>>,
    /// The key of the digests of verified credentials (at least 32 characters; every
    /// replica must have the same). When unset, the digest key file is used.
    #[arg(long, env = "KEYGATE_DIGEST_KEY", hide_env_values = true)]
    pub digest_key: Option<String>,
    /// The digest key's file, instead of --digest-key: read, or created with a new random
    /// key (mode 0600) when missing. Default: keygate-data/digest-key.
    #[arg(long, env = "KEYGATE_DIGEST_KEY_FILE")]
    pub digest_key_file: Option<PathBuf>,
}

impl CredentialArgs {
    pub(super) fn argon2(&self, problems: &mut Vec<String>) -> Argon2Settings {
        // One problem for the two: together they are the cost of a hash.
        if self.argon2_memory_kib < 8 * 1024 || self.argon2_iterations == 0 {
            problems.push("--argon2-memory-kib must be at least 8192 and --argon2-iterations at least 1".to_owned());
        }
        let defaults = Argon2Settings::default();
        Argon2Settings {
            memory_kib: self.argon2_memory_kib,
            iterations: self.argon2_iterations,
            parallelism: 1,
            max_concurrent: self.argon2_concurrency.as_ref().map_or(defaults.max_concurrent, |c| c.value(problems)),
        }
    }

    pub(super) fn digest_key(self, group_readable: bool, problems: &mut Vec<String>) -> DigestKeySource {
        DIGEST_KEY.not_both(self.digest_key.is_some(), self.digest_key_file.as_deref(), group_readable, problems);
        match self.digest_key {
            Some(key) if key.trim().len() < MIN_DIGEST_KEY_LEN => {
                problems.push(format!("KEYGATE_DIGEST_KEY: must be at least {MIN_DIGEST_KEY_LEN} characters"));
                DigestKeySource::Given(key)
            }
            Some(key) => DigestKeySource::Given(key.trim().to_owned()),
            None => DigestKeySource::File(self.digest_key_file.unwrap_or_else(|| DEFAULT_DIGEST_KEY_FILE.into())),
        }
    }
}

/// What failed verifications and unknown ids may cost before they are throttled.
#[derive(Debug, Clone, clap::Args)]
pub struct BudgetArgs {
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
}

impl BudgetArgs {
    /// A budget of 0 is taken as 1. `argon2_slots`: verifications at once; `capacity`: the
    /// most clients and keys remembered.
    pub(super) fn settings(&self, argon2_slots: usize, capacity: u64) -> BudgetSettings {
        BudgetSettings {
            max_failures_per_key: self.max_failures_per_key.max(1),
            max_failures_per_client: self.max_failures_per_ip.max(1),
            max_failures_per_ipv4_24: self.max_failures_per_ipv4_24.max(1),
            max_failures_per_ipv6_56: self.max_failures_per_ipv6_56.max(1),
            max_failures_per_ipv6_48: self.max_failures_per_ipv6_48.max(1),
            unknown_lookups_per_second: self.unknown_lookups_per_second.max(1),
            suspect_verifications_per_second: self.suspect_verifications_per_second.unwrap_or(
                // A quarter of argon2's capacity at ~20 ms per verification.
                u32::try_from(argon2_slots.max(1) * 50 / 4).unwrap_or(u32::MAX).max(1),
            ),
            capacity,
            ..BudgetSettings::default()
        }
    }
}

/// Rate limits shared across replicas (Redis).
#[derive(Debug, Clone, clap::Args)]
pub struct RateLimitArgs {
    /// redis://HOST:PORT to share rate-limit counters across replicas (rediss:// over TLS);
    /// redis+cluster://HOST:PORT,HOST:PORT,… for a Redis Cluster's seed nodes
    /// (rediss+cluster:// over TLS). Default: in-process.
    #[arg(long, env = "KEYGATE_RATE_LIMIT_STORE", hide_env_values = true)]
    pub rate_limit_store: Option<String>,
    /// A file holding the Redis URL (with its password), instead of --rate-limit-store.
    #[arg(long, env = "KEYGATE_RATE_LIMIT_STORE_FILE")]
    pub rate_limit_store_file: Option<PathBuf>,
    /// With a rediss:// (or rediss+cluster://) store: a PEM file of the CA certificate(s)
    /// that Redis's certificate must chain to, trusted instead of the system's roots.
    /// Default: the system's roots.
    #[arg(long, env = "KEYGATE_RATE_LIMIT_STORE_CA")]
    pub rate_limit_store_ca: Option<PathBuf>,
    /// With a rediss:// store: keygate's client certificate (PEM), for a Redis that asks
    /// for one (`tls-auth-clients`). With --rate-limit-store-client-key.
    #[arg(long, env = "KEYGATE_RATE_LIMIT_STORE_CLIENT_CERT")]
    pub rate_limit_store_client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM); refused when others may read it.
    #[arg(long, env = "KEYGATE_RATE_LIMIT_STORE_CLIENT_KEY")]
    pub rate_limit_store_client_key: Option<PathBuf>,
    /// Prefix of every Redis key keygate writes.
    #[arg(long, env = "KEYGATE_RATE_LIMIT_KEY_PREFIX", default_value = "keygate:rl:")]
    pub rate_limit_key_prefix: String,
    /// Longest wait for one rate-limit store (Redis) call on the request path, as
    /// `--store-timeout-ms` is for the key store.
    #[arg(long, env = "KEYGATE_RATE_LIMIT_TIMEOUT_MS", default_value_t = 50.into(), value_parser = in_range::<u64>(1..=10_000))]
    pub rate_limit_timeout_ms: Checked<u64>,
    /// With Redis: how long a replica may spend its slice of a high-rate limit before
    /// renewing it. A replica that dies returns its unused slice after this long.
    #[arg(long, env = "KEYGATE_RATE_LIMIT_LEASE_MS", default_value_t = 2000.into(), value_parser = in_range::<u64>(100..=60_000))]
    pub rate_limit_lease_ms: Checked<u64>,
    /// With Redis: the smallest slice of a high-rate limit a replica holds (a subject new,
    /// slow or idle there), in percent of the limit.
    #[arg(long, env = "KEYGATE_RATE_LIMIT_LEASE_PERCENT", default_value_t = 1.0.into(), value_parser = in_range::<f64>(0.01..=50.0))]
    pub rate_limit_lease_percent: Checked<f64>,
    /// With Redis: what every replica's slices of one subject may hold together beyond
    /// their smallest ones, in percent of the limit (default: 5, or the smallest slice's
    /// percent if that is more). A busy subject's slices grow up to it; a window may admit
    /// up to the limit plus this plus a smallest slice per replica.
    #[arg(long, env = "KEYGATE_RATE_LIMIT_LEASE_MAX_PERCENT", value_parser = in_range::<f64>(0.01..=50.0))]
    pub rate_limit_lease_max_percent: Option<Checked<f64>>,
    /// With Redis: a busy subject's slice holds about this long of its traffic on a replica
    /// (its rate there, estimated at each renewal), within the two percents above.
    #[arg(long, env = "KEYGATE_RATE_LIMIT_LEASE_TARGET_MS", default_value_t = 1000.into(), value_parser = in_range::<u64>(1..=60_000))]
    pub rate_limit_lease_target_ms: Checked<u64>,
}

/// A Redis URL over TLS: one node's or a cluster's.
fn is_tls(url: &str) -> bool {
    url.starts_with("rediss://") || url.starts_with("rediss+cluster://")
}

impl RateLimitArgs {
    pub(super) fn store(&mut self, group_readable: bool, problems: &mut Vec<String>) -> Option<MaskedUrl> {
        let file = self.rate_limit_store_file.as_deref();
        let url = REDIS_URL.either(self.rate_limit_store.take(), file, group_readable, problems)?;
        let schemes = ["redis://", "rediss://", "redis+cluster://", "rediss+cluster://"];
        if !schemes.iter().any(|scheme| url.starts_with(scheme)) {
            problems.push(
                "--rate-limit-store / KEYGATE_RATE_LIMIT_STORE: must start with redis:// (or rediss:// for TLS), or \
                 redis+cluster://host:port,host:port,… for a Redis Cluster (rediss+cluster:// for TLS)"
                    .to_owned(),
            );
        }
        if let Some(Err(e)) = crate::ratelimit::connection::cluster_nodes(&url) {
            problems.push(format!("--rate-limit-store / KEYGATE_RATE_LIMIT_STORE: {e}"));
        }
        if is_tls(&url) && url.ends_with("#insecure") {
            problems.push(
                "--rate-limit-store / KEYGATE_RATE_LIMIT_STORE: #insecure (TLS without verifying the server) is not \
                 supported; give the server's CA with --rate-limit-store-ca"
                    .to_owned(),
            );
        }
        Some(MaskedUrl::new(url.as_str()))
    }

    /// The files of TLS to Redis; problems: any of them without a `rediss://` store, a
    /// certificate without its key (or the other way), a key others may read.
    pub(super) fn tls(&self, store: Option<&MaskedUrl>, group_readable: bool, problems: &mut Vec<String>) -> RedisTls {
        let tls = RedisTls {
            ca: self.rate_limit_store_ca.clone(),
            client_cert: self.rate_limit_store_client_cert.clone(),
            client_key: self.rate_limit_store_client_key.clone(),
        };
        let given = tls.ca.is_some() || tls.client_cert.is_some() || tls.client_key.is_some();
        if given && !store.is_some_and(|url| is_tls(url.expose())) {
            problems.push(
                "--rate-limit-store-ca / --rate-limit-store-client-cert / --rate-limit-store-client-key: TLS to \
                 Redis needs a rediss:// (or rediss+cluster://) --rate-limit-store"
                    .to_owned(),
            );
        }
        if tls.client_cert.is_some() != tls.client_key.is_some() {
            problems.push(
                "--rate-limit-store-client-cert and --rate-limit-store-client-key: give both or neither".to_owned(),
            );
        }
        if let Some(key) = &tls.client_key {
            check_key_file("--rate-limit-store-client-key", key, group_readable, problems);
        }
        tls
    }

    pub(super) fn leases(&self, problems: &mut Vec<String>) -> LeaseSettings {
        let least = self.rate_limit_lease_percent.value(problems);
        let most = match &self.rate_limit_lease_max_percent {
            Some(most) => {
                let known = problems.len();
                let most = most.value(problems);
                // Out of its range, it is refused as such already.
                if problems.len() == known && most < least {
                    problems.push(format!(
                        "--rate-limit-lease-max-percent ({most}) is below --rate-limit-lease-percent ({least}): the \
                         slices' largest share cannot be less than the smallest slice"
                    ));
                }
                most
            }
            None => least.max(LeaseSettings::default().max_share * 100.0),
        };
        LeaseSettings {
            period: Duration::from_millis(self.rate_limit_lease_ms.value(problems)),
            share: least / 100.0,
            max_share: most / 100.0,
            target: Duration::from_millis(self.rate_limit_lease_target_ms.value(problems)),
        }
    }
}

/// How long sessions, rotated runtime keys and a change's acknowledgements last.
#[derive(Debug, Clone, clap::Args)]
pub struct LifetimeArgs {
    /// How long a rotated runtime key keeps working, unless the rotation says otherwise.
    #[arg(
        long,
        env = "KEYGATE_RUNTIME_KEY_GRACE_SECONDS",
        default_value_t = ManageSettings::DEFAULT_RUNTIME_GRACE.as_secs().into(),
        value_parser = in_range::<u64>(0..=MAX_RUNTIME_KEY_GRACE.as_secs()).note("7 days")
    )]
    pub runtime_key_grace_seconds: Checked<u64>,
    /// With several replicas on Postgres: the longest a change (a revoke, an update, a
    /// delete) waits for every live replica to apply it (100..=30000). A replica that has
    /// not by then no longer trusts its cache: each replica's lease on its cache is 90% of
    /// this, and it reads from the store while the lease has run out.
    #[arg(
        long,
        env = "KEYGATE_CHANGE_ACK_TIMEOUT_MS",
        default_value_t = (ManageSettings::CHANGE_ACK_TIMEOUT.as_millis() as u64).into(),
        value_parser = in_range::<u64>(100..=30_000)
    )]
    pub change_ack_timeout_ms: Checked<u64>,
    /// Revisions the change feed (keygate.v1.Watch) keeps (1..=100000000); older ones are
    /// deleted. A subscriber that resumes from before the oldest gets a snapshot.
    #[arg(
        long,
        env = "KEYGATE_CHANGE_RETENTION",
        default_value_t = ManageSettings::CHANGE_RETENTION.into(),
        value_parser = in_range::<u64>(1..=100_000_000)
    )]
    pub change_retention: Checked<u64>,
    /// Session lifetime when CreateSession gives none.
    #[arg(long, env = "KEYGATE_SESSION_TTL_SECONDS", default_value_t = ManageSettings::DEFAULT_SESSION_TTL.as_secs())]
    pub session_ttl_seconds: u64,
    /// The longest session CreateSession may ask for.
    #[arg(long, env = "KEYGATE_SESSION_MAX_TTL_SECONDS", default_value_t = ManageSettings::MAX_SESSION_TTL.as_secs())]
    pub session_max_ttl_seconds: u64,
}

impl LifetimeArgs {
    pub(super) fn settings(&self, problems: &mut Vec<String>) -> ManageSettings {
        // A range with a bound of its own: another flag.
        if self.session_ttl_seconds == 0 || self.session_ttl_seconds > self.session_max_ttl_seconds {
            problems.push("--session-ttl-seconds: must be between 1 and --session-max-ttl-seconds".to_owned());
        }
        ManageSettings {
            default_session_ttl: Duration::from_secs(self.session_ttl_seconds),
            max_session_ttl: Duration::from_secs(self.session_max_ttl_seconds),
            default_runtime_grace: Duration::from_secs(self.runtime_key_grace_seconds.value(problems)),
            max_runtime_grace: MAX_RUNTIME_KEY_GRACE,
            change_ack_timeout: Duration::from_millis(self.change_ack_timeout_ms.value(problems)),
            change_retention: self.change_retention.value(problems),
        }
    }
}

/// The edges: how a request's credential and client are read, and how long a decision
/// and the note of a key's use may take.
#[derive(Debug, Clone, clap::Args)]
pub struct EdgeArgs {
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
    /// Proxies in front of the edge whose `x-forwarded-for` entries are believed (Check
    /// and forward auth). 0: the client is the address the edge saw; 1: the last entry a
    /// proxy (e.g. nginx) appended; entries a client wrote are never believed.
    #[arg(long, env = "KEYGATE_TRUSTED_PROXY_HOPS", default_value_t = 0)]
    pub trusted_proxy_hops: u8,
    /// Longest time a decision may take, whatever the caller's deadline: a caller's
    /// `grpc-timeout` is honoured with a fifth of it kept for the answer's way back, capped
    /// at this (a capped call is told so). Past it, keygate answers its fail-closed
    /// INTERNAL_ERROR with an error id.
    #[arg(long, env = "KEYGATE_DECISION_DEADLINE_MS", default_value_t = 800.into(), value_parser = in_range::<u64>(10..=60_000))]
    pub decision_deadline_ms: Checked<u64>,
    /// A key's last_used_at is written at most once per this many seconds (per replica).
    #[arg(
        long,
        env = "KEYGATE_LAST_USED_INTERVAL_SECONDS",
        default_value_t = UsageSettings::DEFAULT_EVERY.as_secs().into(),
        value_parser = in_range::<u64>(1..=3600)
    )]
    pub last_used_interval_seconds: Checked<u64>,
}

impl EdgeArgs {
    pub(super) fn ext_authz(&self, problems: &mut Vec<String>) -> ExtAuthzSettings {
        let credential_headers = self
            .ext_authz_credential_headers
            .iter()
            .filter_map(|raw| {
                CredentialSource::parse(raw)
                    .map_err(|e| problems.push(format!("--ext-authz-credential-headers: {e}")))
                    .ok()
            })
            .collect();
        ExtAuthzSettings { credential_headers, strip_credential: self.ext_authz_strip_credential }
    }

    pub(super) fn settings(&self, problems: &mut Vec<String>) -> EdgeSettings {
        EdgeSettings {
            trusted_proxy_hops: usize::from(self.trusted_proxy_hops),
            decision_deadline: Duration::from_millis(self.decision_deadline_ms.value(problems)),
        }
    }

    pub(super) fn usage(&self, problems: &mut Vec<String>) -> UsageSettings {
        UsageSettings {
            every: Duration::from_secs(self.last_used_interval_seconds.value(problems)),
            ..UsageSettings::default()
        }
    }
}
