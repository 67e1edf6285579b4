//! Settings for `keygate serve`. Each has a documented default, a flag and a `KEYGATE_*`
//! environment variable; [`ServeArgs::into_settings`] checks them all and reports every
//! bad value at once.
//!
//! The flags come in groups by what they set ([`args`], [`tls`]); a number's range is
//! declared with its flag, in its value parser ([`range`]); database and Redis URLs are
//! printed masked ([`url`]).

pub mod args;
pub mod range;
mod secret;
pub(crate) mod secret_files;
pub mod tls;
pub mod url;
pub mod usage;

use crate::authn::budget::BudgetSettings;
use crate::authn::verifier::Argon2Settings;
use crate::authn::AuthnSettings;
use crate::breaker::BreakerSettings;
use crate::edge::EdgeSettings;
use crate::grpc::admin::AdminGateSettings;
use crate::grpc::ext_authz::ExtAuthzSettings;
use crate::manage::ManageSettings;
use crate::ratelimit::lease::LeaseSettings;
use crate::store::cached::CacheSettings;
use crate::store::sql::AdminPoolSettings;
use crate::usage::UsageSettings;
use args::Listeners;
use args::{
    AdminArgs, BudgetArgs, CacheArgs, CredentialArgs, DatabaseArgs, EdgeArgs, LifetimeArgs, ListenArgs, RateLimitArgs,
};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
pub use tls::TlsSettings;
pub use url::{weak_postgres_tls, MaskedUrl};

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
    /// Text lines for people; coloured only when stderr is a terminal (`text` is the same).
    #[value(alias = "text")]
    Pretty,
    Json,
}

/// The flags of `keygate serve`, by group.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub listeners: ListenArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Route policy file (TOML). Default: the built-in policy for the management API.
    #[arg(long, env = "KEYGATE_POLICY")]
    pub policy: Option<PathBuf>,
    /// Log format (on stderr): pretty (alias text; coloured only on a terminal) or json.
    #[arg(long, env = "KEYGATE_LOG_FORMAT", value_enum, default_value = "pretty")]
    pub log_format: LogFormat,
    #[command(flatten)]
    pub admin: AdminArgs,
    #[command(flatten)]
    pub cache: CacheArgs,
    #[command(flatten)]
    pub credentials: CredentialArgs,
    #[command(flatten)]
    pub budgets: BudgetArgs,
    #[command(flatten)]
    pub rate_limits: RateLimitArgs,
    #[command(flatten)]
    pub lifetimes: LifetimeArgs,
    #[command(flatten)]
    pub edge: EdgeArgs,
    #[command(flatten)]
    pub tls: tls::TlsArgs,
    #[command(flatten)]
    pub usage_counts: usage::UsageArgs,
    /// Accept secret files (`--…-file`) that their group may read, as Kubernetes' fsGroup
    /// makes them; files others may read are refused all the same.
    #[arg(long, env = "KEYGATE_ALLOW_GROUP_READABLE_SECRET_FILES")]
    pub allow_group_readable_secret_files: bool,
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

/// How `keygate serve` stops (SIGTERM, Ctrl-C): health NOT_SERVING, `delay` of serving
/// on, then listeners closed and calls in flight given up to `timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainSettings {
    pub delay: Duration,
    pub timeout: Duration,
}

/// TLS to Redis (a `rediss://` store): the CA to trust instead of the system's, and
/// keygate's client certificate and key. Files, read when the limiter is built.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisTls {
    pub ca: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
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
    pub rate_limit_store_tls: RedisTls,
    pub rate_limit_key_prefix: String,
    pub manage: ManageSettings,
    pub ext_authz: ExtAuthzSettings,
    pub budgets: BudgetSettings,
    pub metrics_listen: Option<SocketAddr>,
    pub http_listen: Option<SocketAddr>,
    /// Admin apart from Authorize and Check; None: on `listen`.
    pub admin_listen: Option<SocketAddr>,
    /// The operator console's listener and sessions.
    pub console: crate::console::ConsoleSettings,
    /// TLS on every listener; None: plaintext.
    pub tls: Option<TlsSettings>,
    pub usage: UsageSettings,
    /// Usage analytics: decisions by outcome per key, owner and account.
    pub usage_counts: crate::analytics::UsageCountSettings,
    pub edge: EdgeSettings,
    pub store_breaker: BreakerSettings,
    pub limiter_breaker: BreakerSettings,
    /// High-rate limits on Redis: slice size and lease period.
    pub limit_leases: LeaseSettings,
    pub drain: DrainSettings,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:{}", .0.iter().map(|p| format!("\n  - {p}")).collect::<String>())]
pub struct ConfigError(pub Vec<String>);

impl ServeArgs {
    pub fn into_settings(mut self) -> Result<Settings, ConfigError> {
        let mut problems = Vec::new();
        let group_readable = self.allow_group_readable_secret_files;
        let Listeners { listen, http_listen, metrics_listen, admin_listen, console } =
            self.listeners.addresses(&mut problems);
        let drain = self.listeners.drain(&mut problems);
        let database_url = self.database.url(group_readable, &mut problems);
        let cache = self.cache.settings(&mut problems);
        let argon2 = self.credentials.argon2(&mut problems);
        let rate_limit_store = self.rate_limits.store(group_readable, &mut problems);
        let rate_limit_store_tls = self.rate_limits.tls(rate_limit_store.as_ref(), group_readable, &mut problems);
        let manage = self.lifetimes.settings(&mut problems);
        let ext_authz = self.edge.ext_authz(&mut problems);
        let tls = self.tls.settings(self.listeners.admin_listen.is_some(), &mut problems);
        let usage = self.edge.usage(&mut problems);
        let usage_counts = self.usage_counts.settings(&mut problems);
        let edge = self.edge.settings(&mut problems);
        let store_breaker = breaker(self.database.store_timeout_ms.value(&mut problems));
        let limiter_breaker = breaker(self.rate_limits.rate_limit_timeout_ms.value(&mut problems));
        let limit_leases = self.rate_limits.leases(&mut problems);
        let database_max_connections = self.database.database_max_connections.value(&mut problems);
        let admin_pool = self.database.admin_pool(&mut problems);
        let admin_gate = self.admin.gate(&mut problems);
        let digest_key = self.credentials.digest_key(group_readable, &mut problems);
        let admin_token = self.admin.token(group_readable, &mut problems);
        if !problems.is_empty() {
            return Err(ConfigError(problems));
        }
        Ok(Settings {
            listen,
            database_url,
            database_max_connections,
            admin_pool,
            admin_gate,
            policy: self.policy,
            admin_token,
            log_format: self.log_format,
            authn: AuthnSettings { capacity: cache.capacity, ..AuthnSettings::default() },
            budgets: self.budgets.settings(argon2.max_concurrent, cache.capacity),
            cache,
            digest_key,
            argon2,
            rate_limit_store,
            rate_limit_store_tls,
            rate_limit_key_prefix: self.rate_limits.rate_limit_key_prefix,
            manage,
            ext_authz,
            metrics_listen,
            http_listen,
            admin_listen,
            console: crate::console::ConsoleSettings { listen: console, ..Default::default() },
            tls,
            usage,
            usage_counts,
            edge,
            store_breaker,
            limiter_breaker,
            limit_leases,
            drain,
        })
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
    /// Defaults for a given database, as `keygate serve` with no flags would use, but no
    /// console (see the body).
    pub fn with_database(database_url: &str) -> Self {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let mut args = Only::parse_from(["keygate"]).serve;
        args.database.database_url = Some(database_url.to_owned());
        let mut settings = args.into_settings().expect("defaults are valid");
        // Servers built in code (the tests: many at once) have no console unless they ask.
        settings.console.listen = crate::console::ConsoleListen::Off;
        settings
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::ClientCertificates;

    /// `keygate serve` with `flags`.
    fn parse(flags: &[&str]) -> ServeArgs {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            serve: ServeArgs,
        }
        Only::parse_from(["keygate"].iter().chain(flags)).serve
    }

    #[test]
    fn every_bad_value_is_reported_at_once() {
        let bad = parse(&[
            "--listen=nowhere",
            "--database-url=mysql://x",
            "--admin-token=short",
            "--admin-token-file=t",
            "--cache-capacity=0",
            "--cache-ttl-seconds=0",
            "--rate-limit-store=http://nope",
            "--rate-limit-key-prefix=p",
            "--session-ttl-seconds=60",
            "--session-max-ttl-seconds=3600",
            "--ext-authz-credential-headers=authorization",
            "--digest-key-file=d",
            "--metrics-listen=localhost",
            "--http-listen=nowhere:80",
            "--admin-listen=nowhere",
            "--tls-cert=server.pem",
            "--tls-client-names=*.edges",
            "--admin-tls-client-ca=ca.pem",
            "--decision-deadline-ms=5",
            "--rate-limit-lease-ms=10",
            "--rate-limit-lease-percent=60",
        ]);
        let err = bad.into_settings().unwrap_err();
        // The four TLS ones: --admin-listen, names without a CA, a wildcard name, a cert
        // without its key; the admin token given twice (as a value and as a file).
        assert_eq!(err.0.len(), 16, "{err}");
        assert!(!err.to_string().contains("short\""), "{err}");
    }

    /// guards: the Redis TLS flags' checks (a plain redis:// store ignored them).
    #[test]
    fn redis_tls_flags_need_rediss_and_go_together() {
        let settings = |flags: &[&str]| parse(flags).into_settings();
        let tls = settings(&["--rate-limit-store", "rediss://cache:6380", "--rate-limit-store-ca", "ca.pem"])
            .expect("valid")
            .rate_limit_store_tls;
        assert_eq!(tls, RedisTls { ca: Some("ca.pem".into()), ..RedisTls::default() });
        // A cluster's seed nodes, over TLS with the same flags.
        let cluster = ["--rate-limit-store", "rediss+cluster://:pw@a:7001,b:7002", "--rate-limit-store-ca", "ca.pem"];
        assert_eq!(settings(&cluster).expect("valid").rate_limit_store_tls.ca, Some("ca.pem".into()));
        let dir = tempfile::tempdir().unwrap();
        let open_key = dir.path().join("client.key");
        std::fs::write(&open_key, "key").unwrap();
        std::fs::set_permissions(&open_key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        let open_key = open_key.to_str().unwrap();
        for (flags, problem) in [
            (&["--rate-limit-store", "redis://cache", "--rate-limit-store-ca", "ca.pem"][..], "needs a rediss://"),
            (&["--rate-limit-store-ca", "ca.pem"][..], "needs a rediss://"),
            (
                &["--rate-limit-store", "redis+cluster://a:1", "--rate-limit-store-ca", "ca.pem"][..],
                "needs a rediss://",
            ),
            (&["--rate-limit-store", "redis+cluster://"][..], "names no seed node"),
            (&["--rate-limit-store", "memcached://cache"][..], "redis+cluster://host:port,host:port"),
            (&["--rate-limit-store", "rediss://cache#insecure"][..], "#insecure (TLS without verifying the server)"),
            (&["--rate-limit-store", "rediss://cache", "--rate-limit-store-client-cert", "c.pem"][..], "give both"),
            (
                &[
                    "--rate-limit-store",
                    "rediss://cache",
                    "--rate-limit-store-client-cert",
                    "c",
                    "--rate-limit-store-client-key",
                    open_key,
                ][..],
                "--rate-limit-store-client-key: the key file",
            ),
        ] {
            let err = settings(flags).unwrap_err().to_string();
            assert!(err.contains(problem), "{flags:?}: {err}");
        }
    }

    #[test]
    fn tls_flags_go_together() {
        let settings = |flags: &[&str]| parse(flags).into_settings();
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

    /// guards: slices' bounds (the largest share at least the smallest; every number in
    /// its range).
    #[test]
    fn lease_shares_and_target_are_checked() {
        let settings = |flags: &[&str]| parse(flags).into_settings();
        assert_eq!(settings(&[]).expect("valid").limit_leases, LeaseSettings::default());
        let wide = settings(&["--rate-limit-lease-percent", "10"]).expect("valid").limit_leases;
        assert_eq!((wide.share, wide.max_share), (0.1, 0.1), "the largest share follows a larger smallest");
        let given = ["--rate-limit-lease-max-percent", "20", "--rate-limit-lease-target-ms", "250"];
        let given = settings(&given).expect("valid").limit_leases;
        assert_eq!((given.max_share, given.target), (0.2, std::time::Duration::from_millis(250)));
        for (flags, problem) in [
            (
                &["--rate-limit-lease-percent", "2", "--rate-limit-lease-max-percent", "1"][..],
                "--rate-limit-lease-max-percent (1) is below --rate-limit-lease-percent (2)",
            ),
            (&["--rate-limit-lease-max-percent", "0"][..], "--rate-limit-lease-max-percent"),
            (&["--rate-limit-lease-max-percent", "NaN"][..], "--rate-limit-lease-max-percent"),
            (&["--rate-limit-lease-max-percent", "51"][..], "--rate-limit-lease-max-percent"),
            (&["--rate-limit-lease-target-ms", "0"][..], "--rate-limit-lease-target-ms"),
            (&["--rate-limit-lease-target-ms", "60001"][..], "--rate-limit-lease-target-ms"),
        ] {
            let err = settings(flags).unwrap_err();
            assert_eq!(err.0.len(), 1, "{flags:?}: {err}");
            assert!(err.to_string().contains(problem), "{flags:?}: {err}");
        }
    }
}
