//! Wiring: store → cache → verifier → authorizer and manager → gRPC services.
//! [`Application::build`] binds the listener (port 0 works), so tests and `main` start
//! the very same server.

use crate::analytics::UsageCounts;
use crate::authn::budget::FailureBudgets;
use crate::authn::digest::CredentialDigester;
use crate::authn::verifier::Verifier;
use crate::authn::Authenticator;
use crate::authz::Authorizer;
use crate::breaker::Breaker;
use crate::clock::Clock;
use crate::config::secret_files::{load_admin_token, load_digest_key};
use crate::config::{DrainSettings, Settings};
use crate::edge::forward_auth::ForwardAuth;
use crate::grpc::admin::{AdminGate, AdminGateMetrics, AdminService, BootstrapToken};
use crate::grpc::authorizer::AuthorizerService;
use crate::grpc::envoy::AuthorizationServer;
use crate::grpc::ext_authz::CheckService;
use crate::grpc::proto::{self, admin_server::AdminServer, authorizer_server::AuthorizerServer};
use crate::grpc::spans::CallSpans;
use crate::grpc::undecodable::UndecodableIsInvalidArgument;
use crate::grpc::watch::WatchService;
use crate::manage::Manager;
use crate::policy::Policy;
use crate::ratelimit::{Limiter, LimiterTasks};
use crate::store::cached::CachedStore;
use crate::store::invalidation::{self, ListenerStatus};
use crate::store::metered::StoreMetrics;
use crate::store::sql::{Backend, SqlStore};
use crate::store::usage::UsageStore;
use crate::store::{FeedStore, Stack, Store};
use crate::tls::{HttpListener, ListenerTls, Protocol};
use crate::usage::UsageRecorder;
use anyhow::Context;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::transport::server::{Router, TcpIncoming};
use tonic::transport::Server;

/// Largest Authorize request: a credential, a path of at most 4 KiB, some scopes.
pub const MAX_AUTHORIZE_MESSAGE: usize = 64 * 1024;
/// Largest Envoy Check request: headers can be large, bodies are not sent.
pub const MAX_CHECK_MESSAGE: usize = 256 * 1024;
pub const MAX_ADMIN_MESSAGE: usize = 1024 * 1024;
pub const MAX_STREAMS_PER_CONNECTION: u32 = 1024;

/// Parts of a running server that tests and operators may look at.
#[derive(Clone)]
pub struct Handles {
    pub verifier: Arc<Verifier>,
    pub cache: Arc<CachedStore>,
    /// The store under the cache and its decorators.
    pub store: Arc<dyn Store>,
    /// The cross-replica invalidation listener (Postgres only).
    pub invalidation: Option<Arc<ListenerStatus>>,
    pub authorizer: Arc<Authorizer>,
    /// The policy file, when one was given (the built-in policy cannot be reloaded).
    pub policy_path: Option<std::path::PathBuf>,
    pub store_metrics: StoreMetrics,
    pub usage: Arc<UsageRecorder>,
    /// Decisions by outcome per key, owner and account, counted here until flushed.
    pub usage_counts: Arc<UsageCounts>,
    /// Open while the key store is known to be unreachable.
    pub store_breaker: Arc<Breaker>,
    /// The same for Redis, when limits are shared there.
    pub limiter_breaker: Option<Arc<Breaker>>,
    pub limiter: Arc<Limiter>,
    /// Each TLS listener's certificates (empty without TLS).
    pub tls: Vec<Arc<ListenerTls>>,
    /// What the admin gate refused, and why.
    pub admin: AdminGateMetrics,
}

impl Handles {
    /// Reads every listener's certificate files again (what SIGHUP does besides the
    /// policy); files that do not load leave the last good ones serving.
    pub fn reload_tls(&self) -> anyhow::Result<()> {
        crate::tls::reload_all(&self.tls)
    }

    /// What the metrics endpoint reads.
    pub fn metric_sources(&self) -> crate::metrics::Sources {
        crate::metrics::Sources {
            authorize: self.authorizer.metrics(),
            verifier: self.verifier.clone(),
            store: self.store_metrics.clone(),
            usage: self.usage.clone(),
            usage_counts: self.usage_counts.clone(),
            cache: self.cache.clone(),
            invalidation: self.invalidation.clone(),
            store_breaker: self.store_breaker.clone(),
            limiter_breaker: self.limiter_breaker.clone(),
            limiter: self.limiter.clone(),
            tls: self.tls.clone(),
            admin: self.admin.clone(),
        }
    }

    /// Reads the policy file again and puts it in force if it is valid; a bad file changes
    /// nothing and the last good policy keeps serving. What SIGHUP does.
    pub fn reload_policy(&self) -> Result<usize, crate::policy::PolicyError> {
        let reloads = self.authorizer.metrics().policy_reloads;
        let count = |outcome| reloads.get_or_create(&crate::authz::OutcomeLabels { outcome }).inc();
        let Some(path) = &self.policy_path else {
            count("rejected");
            tracing::warn!("policy reload asked for, but keygate started with the built-in policy: nothing to reload");
            return Err(crate::policy::PolicyError {
                source_name: "(built-in default)".into(),
                problems: vec!["no policy file was given at start-up; nothing to reload".into()],
            });
        };
        match Policy::load(path) {
            Ok(policy) => {
                let routes = policy.routes().len();
                let gone: Vec<_> = self
                    .authorizer
                    .route_templates()
                    .into_iter()
                    .filter(|old| !policy.routes().iter().any(|r| r.template == *old))
                    .collect();
                self.authorizer.replace_policy(policy);
                count("applied");
                tracing::info!(path = %path.display(), routes, "policy reloaded");
                for route in gone {
                    // Limits are checked against the policy when they are set, not after.
                    tracing::warn!(
                        route = %route,
                        "the reloaded policy has no such route: key and owner limits that name it limit nothing \
                         until they are changed to a route the policy has"
                    );
                }
                Ok(routes)
            }
            Err(e) => {
                count("rejected");
                tracing::error!(error = %e, "policy reload rejected; the last good policy keeps serving");
                Err(e)
            }
        }
    }
}

/// How other replicas' writes reach this replica's cache.
pub enum Peers {
    /// No other writer (SQLite, the in-memory store): this replica's writes are all.
    None,
    /// Postgres LISTEN/NOTIFY on this database.
    Notify { database_url: String },
}

/// Aborts a background task when the server it belongs to goes away.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// keygate's gRPC services on one listener.
type GrpcRouter = Router<tower::layer::util::Stack<UndecodableIsInvalidArgument, tower::layer::util::Identity>>;

/// Each listener's TLS, when TLS is on.
#[derive(Default)]
struct ListenerTlsSet {
    decision: Option<Arc<ListenerTls>>,
    admin: Option<Arc<ListenerTls>>,
    http: Option<Arc<ListenerTls>>,
    metrics: Option<Arc<ListenerTls>>,
    console: Option<Arc<ListenerTls>>,
}

impl ListenerTlsSet {
    fn load(settings: &Settings) -> anyhow::Result<Self> {
        let Some(tls) = &settings.tls else { return Ok(Self::default()) };
        let load = |name, clients: &Option<_>, protocol| {
            ListenerTls::load(name, tls.certificate.clone(), clients.clone(), protocol).map(Some)
        };
        Ok(Self {
            decision: load("grpc", &tls.clients, Protocol::Grpc)?,
            admin: match settings.admin_listen {
                Some(_) => load("admin", &tls.admin_clients, Protocol::Grpc)?,
                None => None,
            },
            // Forward auth is asked by the same edges as Check: the same clients.
            http: match settings.http_listen {
                Some(_) => load("forward-auth", &tls.clients, Protocol::Http1)?,
                None => None,
            },
            metrics: match settings.metrics_listen {
                Some(_) => load("metrics", &None, Protocol::Http1)?,
                None => None,
            },
            console: match settings.console.listen {
                crate::console::ConsoleListen::Off => None,
                _ => load("console", &None, Protocol::Http1)?,
            },
        })
    }

    fn all(&self) -> Vec<Arc<ListenerTls>> {
        [&self.decision, &self.admin, &self.http, &self.metrics, &self.console].into_iter().flatten().cloned().collect()
    }
}

pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    router: GrpcRouter,
    /// Admin's own listener and router, when `--admin-listen` set it apart.
    admin: Option<(TcpListener, GrpcRouter)>,
    tls: ListenerTlsSet,
    metrics: Option<TcpListener>,
    /// The forward-auth listener and what it serves, when `--http-listen` was given.
    forward_auth: Option<(TcpListener, ForwardAuth)>,
    /// The console's listener and what it serves, unless `--console-listen off`.
    console: Option<(TcpListener, crate::console::Console)>,
    health: tonic_health::server::HealthReporter,
    /// The admin listener's, when Admin is apart.
    admin_health: Option<tonic_health::server::HealthReporter>,
    handles: Handles,
    clock: Arc<dyn Clock>,
    /// Set on shutdown, before the listeners close: /healthz answers 503.
    draining: Arc<AtomicBool>,
    drain: DrainSettings,
    _background: Vec<AbortOnDrop>,
    _limiter: LimiterTasks,
}

impl Application {
    /// The server on the SQL store `settings.database_url` names (SQLite or Postgres).
    pub async fn build(settings: Settings, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        if let Some(warning) = crate::config::weak_postgres_tls(&settings.database_url) {
            tracing::warn!("{warning}");
        }
        let store = SqlStore::connect_with(
            settings.database_url.expose(),
            settings.database_max_connections,
            Duration::from_secs(5),
            settings.admin_pool,
        )
        .await
        .with_context(|| format!("cannot open the database {}", settings.database_url))?;
        let peers = match store.backend() {
            Backend::Postgres => Peers::Notify { database_url: settings.database_url.expose().to_owned() },
            // One process owns a SQLite file: its own writes invalidate its cache.
            Backend::Sqlite => Peers::None,
        };
        let store = Arc::new(store);
        Self::build_on(settings, store.clone(), store, peers, clock).await
    }

    /// The server on any [`FeedStore`] (usage counts on `usage_store`); `peers` says how other
    /// replicas' writes reach this one's cache.
    pub async fn build_on(
        settings: Settings,
        store: Arc<dyn FeedStore>,
        usage_store: Arc<dyn UsageStore>,
        peers: Peers,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Self> {
        let policy = match &settings.policy {
            Some(path) => Policy::load(path)?,
            None => Policy::default_policy(),
        };
        let digester = CredentialDigester::new(load_digest_key(&settings.digest_key)?.as_bytes());
        let bootstrap = BootstrapToken::new(&load_admin_token(&settings.admin_token)?, &digester);
        // Certificates before the listeners and background tasks: a wrong file stops
        // start-up (after the database, which `build` opened) with its name.
        let tls = ListenerTlsSet::load(&settings)?;

        let store_breaker = Arc::new(Breaker::new("key store", settings.store_breaker));
        let mut background = Vec::new();
        background.push(AbortOnDrop(store_breaker.spawn_probe({
            let store = store.clone();
            move || {
                let store = store.clone();
                async move { store.ping().await.is_ok() }
            }
        })));
        let Stack { cache, admin, metrics: store_metrics } =
            Stack::build(store.clone(), store_breaker.clone(), settings.cache);
        let usage = Arc::new(UsageRecorder::new(cache.clone(), settings.usage, settings.cache.capacity));
        let verifier = Arc::new(Verifier::new(settings.argon2)?);
        let invalidation = match peers {
            Peers::Notify { database_url } => {
                let (status, task) =
                    invalidation::spawn(database_url, cache.clone(), clock.clone(), settings.manage.change_ack_timeout);
                background.push(AbortOnDrop(task));
                Some(status)
            }
            Peers::None => None,
        };

        let limiter = Arc::new(limiter(&settings)?);
        if let Some(refusal) = limiter.tls_refusal().await {
            let url = settings.rate_limit_store.as_ref().map(ToString::to_string).unwrap_or_default();
            anyhow::bail!("cannot use the rate limit store {url}: {refusal}");
        }
        let limiter_tasks = limiter.start(clock.clone());
        let limiter_breaker = limiter.breaker().cloned();
        let authn = Arc::new(Authenticator::new(
            cache.clone(),
            verifier.clone(),
            digester.clone(),
            FailureBudgets::with_clock(settings.budgets, clock.clone()),
            settings.authn,
        ));
        let usage_counts = Arc::new(UsageCounts::new(usage_store, clock.clone(), settings.usage_counts));
        let authorizer = Arc::new(
            Authorizer::new(policy, cache.clone(), authn, limiter.clone(), clock.clone(), usage.clone())
                .with_usage_counts(usage_counts.clone()),
        );
        let manager =
            Manager::new(admin, verifier.clone(), clock.clone(), usage.clone(), settings.manage, digester.clone())
                .with_usage_counts(usage_counts.clone());
        // Key and owner limits may name only the policy's routes (the one in force).
        let routes = authorizer.clone();
        let manager = manager.with_routes(Arc::new(move |template: &str| routes.has_route(template)));
        // Changes wait for the change feed's subscribers, and for the other replicas
        // (Postgres); alone on SQLite, no replicas to wait for.
        let subscribers = Arc::new(crate::feed::Subscribers::new(settings.manage.change_ack_timeout));
        let manager = manager.with_feed(subscribers.clone(), store.clone());
        let manager = Arc::new(match &invalidation {
            Some(status) => manager.with_replicas(status.replicas().clone()),
            None => manager,
        });
        let (watch, pruning) =
            WatchService::start(store.clone(), subscribers, manager.clone(), settings.manage.change_retention);
        background.push(AbortOnDrop(pruning));

        let GrpcRouters { router, admin, health, admin_health, admin_metrics, admin_check } =
            grpc_routers(&settings, &authorizer, manager.clone(), bootstrap, watch).await?;
        let console = crate::console::bind(settings.console.listen).await?.map(|listener| {
            let tls = tls.console.is_some();
            (listener, crate::console::Console::new(manager, admin_check, clock.clone(), settings.console, tls))
        });

        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        let local_addr = listener.local_addr()?;
        warn_if_plaintext_beyond_loopback(&settings);
        let metrics = crate::metrics::bind(settings.metrics_listen).await?;
        let draining = Arc::new(AtomicBool::new(false));
        let forward_auth = forward_auth(&settings, &authorizer, &store_breaker, &draining).await?;
        background.push(AbortOnDrop(usage.clone().spawn_flusher()));
        background.push(AbortOnDrop(usage_counts.clone().spawn_flusher()));
        let handles = Handles {
            verifier,
            cache,
            store,
            invalidation,
            authorizer,
            policy_path: settings.policy.clone(),
            store_metrics,
            usage,
            usage_counts,
            store_breaker,
            limiter_breaker,
            limiter,
            tls: tls.all(),
            admin: admin_metrics,
        };
        if let Some(every) = settings.tls.as_ref().map(|tls| tls.watch_every) {
            background.push(AbortOnDrop(crate::tls::spawn_watcher(tls.all(), every)));
        }
        Ok(Self {
            listener,
            local_addr,
            router,
            admin,
            tls,
            metrics,
            forward_auth,
            console,
            health,
            admin_health,
            handles,
            clock,
            draining,
            drain: settings.drain,
            _background: background,
            _limiter: limiter_tasks,
        })
    }

    /// Where metrics are served, when `--metrics-listen` was given.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|listener| listener.local_addr().ok())
    }

    /// Where Admin is served, when `--admin-listen` set it apart.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|(listener, _)| listener.local_addr().ok())
    }

    /// Where the console is served, when it is on.
    pub fn console_addr(&self) -> Option<SocketAddr> {
        self.console.as_ref().and_then(|(listener, _)| listener.local_addr().ok())
    }

    /// Where forward auth is served, when `--http-listen` was given.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.forward_auth.as_ref().and_then(|(listener, _)| listener.local_addr().ok())
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn port(&self) -> u16 {
        self.local_addr.port()
    }

    pub fn handles(&self) -> Handles {
        self.handles.clone()
    }

    /// Serves until `shutdown` completes, then drains: health says NOT_SERVING (gRPC
    /// health, /healthz) while serving goes on for the drain delay, then the listeners
    /// take no new calls and those in flight get up to the drain timeout to finish.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        self.run(Box::pin(shutdown)).await
    }

    /// [`Self::run_until`]'s body, not generic: compiled once here, in the library. A
    /// generic body was compiled again in the `keygate` binary (every listener's tonic,
    /// hyper and tower stack with it), about a third of a cold release build.
    async fn run(self, shutdown: std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> anyhow::Result<()> {
        let health = Announce {
            health: self.health.clone(),
            admin_health: self.admin_health.clone(),
            draining: self.draining.clone(),
            delay: self.drain.delay,
        };
        // The decision listeners stop when `shutdown` completes and the delay has passed.
        let (stopping, stop_grpc) = tokio::sync::watch::channel(false);
        let _signal = AbortOnDrop(tokio::spawn(async move {
            shutdown.await;
            health.not_serving().await;
            let _ = stopping.send(true);
        }));
        let stop = |mut stop: tokio::sync::watch::Receiver<bool>| async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        };
        // The metrics listener stops after the others: it is read while they drain.
        let (stopped, stop_metrics) = tokio::sync::watch::channel(false);
        let (metrics_tls, http_tls) = (self.tls.metrics.clone(), self.tls.http.clone());
        if let Some(listener) = self.metrics {
            let address = listener.local_addr()?;
            let registry = Arc::new(crate::metrics::registry(&self.handles.metric_sources()));
            let stop = stop(stop_metrics.clone());
            tracing::info!(%address, "serving metrics at /metrics");
            tokio::spawn(async move {
                let listener = match HttpListener::new(listener, metrics_tls) {
                    Ok(listener) => listener,
                    Err(e) => return tracing::error!(error = %e, "the metrics endpoint failed"),
                };
                if let Err(e) = crate::metrics::serve(listener, registry, stop).await {
                    tracing::error!(error = %e, "the metrics endpoint failed");
                }
            });
        }
        let mut forward_auth = None;
        if let Some((listener, state)) = self.forward_auth {
            let address = listener.local_addr()?;
            let stop = stop(stop_grpc.clone());
            tracing::info!(%address, "serving forward auth at /forward-auth");
            forward_auth = Some(tokio::spawn(async move {
                let listener = match HttpListener::new(listener, http_tls) {
                    Ok(listener) => listener,
                    Err(e) => return tracing::error!(error = %e, "the forward-auth listener failed"),
                };
                if let Err(e) = crate::edge::forward_auth::serve(listener, state, stop).await {
                    tracing::error!(error = %e, "the forward-auth listener failed");
                }
            }));
        }
        if let Some((listener, console)) = self.console {
            let address = listener.local_addr()?;
            let (stop, tls) = (stop(stop_metrics.clone()), self.tls.console.clone());
            tracing::info!(%address, "serving the console");
            tokio::spawn(async move {
                let served = match HttpListener::new(listener, tls) {
                    Ok(listener) => crate::console::serve(listener, console, stop).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = served {
                    tracing::error!(error = %e, "the console failed");
                }
            });
        }
        tracing::info!(address = %self.local_addr, tls = self.tls.decision.is_some(), "keygate is serving");
        let decisions = serve_grpc(self.router, self.listener, self.tls.decision.clone(), stop(stop_grpc.clone()));
        let admin = async {
            match self.admin {
                Some((listener, router)) => {
                    let address = listener.local_addr().ok();
                    tracing::info!(address = ?address, tls = self.tls.admin.is_some(), "serving Admin apart");
                    serve_grpc(router, listener, self.tls.admin.clone(), stop(stop_grpc.clone())).await
                }
                None => Ok(()),
            }
        };
        // One listener failing stops the other.
        let listeners = async {
            let served = tokio::try_join!(decisions, admin);
            if let Some(forward_auth) = forward_auth {
                let _ = forward_auth.await;
            }
            served
        };
        let served = drain_within(self.drain.timeout, stop_grpc.clone(), listeners).await;
        let _ = stopped.send(true);
        drop(stop_metrics);
        // Uses seen since the last flush are written before the pool closes.
        if let Err(e) = self.handles.usage.flush().await {
            tracing::warn!(error = %e, pending = self.handles.usage.pending(), "could not record the last key uses");
        }
        // Decisions counted since the last flush, likewise.
        if let Err(e) = self.handles.usage_counts.flush().await {
            let pending = self.handles.usage_counts.stats().pending;
            tracing::warn!(error = %e, pending, "could not write the last usage counts");
        }
        self.handles.limiter.shut_down(self.clock.now()).await;
        self.handles.store.close().await;
        served?;
        Ok(())
    }
}

/// What a shutdown tells before the listeners close.
struct Announce {
    health: tonic_health::server::HealthReporter,
    admin_health: Option<tonic_health::server::HealthReporter>,
    draining: Arc<AtomicBool>,
    delay: Duration,
}

impl Announce {
    /// Health NOT_SERVING on every listener, then the drain delay while serving goes on.
    async fn not_serving(self) {
        tracing::info!(delay_ms = self.delay.as_millis() as u64, "shutting down: health is NOT_SERVING");
        self.draining.store(true, Ordering::Relaxed);
        let health = &self.health;
        // "": the server as a whole, what Kubernetes' gRPC probe asks by default.
        health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
        health.set_not_serving::<AuthorizerServer<AuthorizerService>>().await;
        health.set_not_serving::<AdminServer<AdminService>>().await;
        health.set_not_serving::<AuthorizationServer<CheckService>>().await;
        if let Some(admin_health) = &self.admin_health {
            admin_health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
            admin_health.set_not_serving::<AdminServer<AdminService>>().await;
        }
        tokio::time::sleep(self.delay).await;
        tracing::info!("shutting down: listeners closed, finishing calls in flight");
    }
}

/// `listeners` (which stop taking calls once `stop` says so) until they have finished
/// their calls in flight, or `timeout` after `stop`, when whatever is left is cut.
async fn drain_within<T>(
    timeout: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
    listeners: impl Future<Output = Result<T, tonic::transport::Error>>,
) -> Result<Option<T>, tonic::transport::Error> {
    let started = std::sync::OnceLock::new();
    let bound = async {
        if stop.wait_for(|stopped| *stopped).await.is_err() {
            std::future::pending::<()>().await;
        }
        let _ = started.set(std::time::Instant::now());
        tokio::time::sleep(timeout).await;
    };
    tokio::select! {
        served = listeners => {
            if let Some(at) = started.get() {
                let drained_ms = at.elapsed().as_millis() as u64;
                tracing::info!(drained_ms, "shutting down: every call in flight finished");
            }
            served.map(Some)
        }
        () = bound => {
            tracing::warn!(
                timeout_ms = timeout.as_millis() as u64,
                "shutting down: calls still in flight after the drain timeout are cut"
            );
            Ok(None)
        }
    }
}

/// The rate limiter `--rate-limit-store` asks for: on Redis, or in this process.
fn limiter(settings: &Settings) -> anyhow::Result<Limiter> {
    Ok(match &settings.rate_limit_store {
        Some(url) => Limiter::redis(
            redis_client(url, &settings.rate_limit_store_tls)?,
            settings.rate_limit_key_prefix.clone(),
            settings.limiter_breaker,
            settings.limit_leases,
        )
        .with_context(|| format!("invalid rate limit store URL {url}"))?,
        None => Limiter::local(),
    })
}

/// The Redis client of `url` (a node, or a cluster's seed nodes): over TLS with `tls`'s CA
/// and client certificate when given.
fn redis_client(
    url: &crate::config::MaskedUrl,
    tls: &crate::config::RedisTls,
) -> anyhow::Result<crate::ratelimit::connection::StoreClient> {
    use crate::ratelimit::connection::StoreClient;
    let invalid = || format!("invalid rate limit store URL {url}");
    if *tls == crate::config::RedisTls::default() {
        return StoreClient::open(url.expose(), None).with_context(invalid);
    }
    let read = |flag: &str, path: &std::path::Path| {
        std::fs::read(path).with_context(|| format!("{flag}: cannot read {}", path.display()))
    };
    let root_cert = tls.ca.as_deref().map(|ca| read("--rate-limit-store-ca", ca)).transpose()?;
    let client_tls = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => Some(::redis::ClientTlsConfig {
            client_cert: read("--rate-limit-store-client-cert", cert)?,
            client_key: read("--rate-limit-store-client-key", key)?,
        }),
        _ => None,
    };
    StoreClient::open(url.expose(), Some(::redis::TlsCertificates { client_tls, root_cert })).with_context(|| {
        format!("the rate limit store's TLS files (--rate-limit-store-ca, …-client-cert, …-client-key) for {url}")
    })
}

/// The forward-auth listener and what it serves, when `--http-listen` is given.
async fn forward_auth(
    settings: &Settings,
    authorizer: &Arc<Authorizer>,
    store_breaker: &Arc<Breaker>,
    draining: &Arc<AtomicBool>,
) -> anyhow::Result<Option<(TcpListener, ForwardAuth)>> {
    let Some(address) = settings.http_listen else { return Ok(None) };
    let listener =
        TcpListener::bind(address).await.with_context(|| format!("cannot listen for forward auth on {address}"))?;
    let forward_auth = ForwardAuth {
        authorizer: authorizer.clone(),
        credential_headers: settings.ext_authz.credential_headers.clone().into(),
        edge: settings.edge,
        store_breaker: store_breaker.clone(),
        draining: draining.clone(),
    };
    Ok(Some((listener, forward_auth)))
}

/// What the gRPC listeners serve.
struct GrpcRouters {
    /// The decisions (Authorize, Check), with Admin unless it has a listener of its own.
    router: GrpcRouter,
    /// Admin's own listener and router, when `--admin-listen` set it apart.
    admin: Option<(TcpListener, GrpcRouter)>,
    health: tonic_health::server::HealthReporter,
    admin_health: Option<tonic_health::server::HealthReporter>,
    admin_metrics: AdminGateMetrics,
    /// The gate's check, for the console.
    admin_check: crate::grpc::admin::AdminCheck,
}

/// The gRPC services, on one listener or two (`--admin-listen`), each with health and
/// reflection.
async fn grpc_routers(
    settings: &Settings,
    authorizer: &Arc<Authorizer>,
    manager: Arc<Manager>,
    bootstrap: BootstrapToken,
    watch: WatchService,
) -> anyhow::Result<GrpcRouters> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<AuthorizerServer<AuthorizerService>>().await;
    health.set_serving::<AuthorizationServer<CheckService>>().await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
    };

    // Bounds on what one caller can make keygate hold: message sizes per service (a
    // larger message is refused with OUT_OF_RANGE before it is decoded), streams per
    // connection, and keepalives that find dead peers.
    let server = || {
        Server::builder()
            .layer(UndecodableIsInvalidArgument)
            .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
    };
    let watch = watch.behind(bootstrap.clone(), manager.clone(), settings.admin_gate);
    let admin_gate = AdminGate::new(
        AdminServer::new(AdminService::new(manager.clone())).max_decoding_message_size(MAX_ADMIN_MESSAGE),
        bootstrap,
        manager,
        settings.admin_gate,
    );
    let admin_metrics = admin_gate.metrics();
    let admin_check = admin_gate.check();
    let admin_service = CallSpans::new(admin_gate);
    let router = server()
        .add_service(health_service.clone())
        .add_service(reflection()?)
        .add_service(
            AuthorizerServer::new(AuthorizerService::new(authorizer.clone(), settings.edge))
                .max_decoding_message_size(MAX_AUTHORIZE_MESSAGE),
        )
        .add_service(
            AuthorizationServer::new(CheckService::new(authorizer.clone(), settings.ext_authz.clone(), settings.edge))
                .max_decoding_message_size(MAX_CHECK_MESSAGE),
        );
    // Admin on its own listener, or beside the decisions (the quickstart's one port).
    // Each listener's health service reports what that listener serves.
    let (router, admin, admin_health) = match settings.admin_listen {
        Some(address) => {
            let listener =
                TcpListener::bind(address).await.with_context(|| format!("cannot listen for Admin on {address}"))?;
            let (admin_health, admin_health_service) = tonic_health::server::health_reporter();
            admin_health.set_serving::<AdminServer<AdminService>>().await;
            let admin_router = server().add_service(admin_health_service).add_service(reflection()?);
            (router, Some((listener, admin_router.add_service(admin_service).add_service(watch))), Some(admin_health))
        }
        None => {
            health.set_serving::<AdminServer<AdminService>>().await;
            (router.add_service(admin_service).add_service(watch), None, None)
        }
    };
    Ok(GrpcRouters { router, admin, health, admin_health, admin_metrics, admin_check })
}

/// One gRPC listener, plain or TLS, until `stop` completes.
async fn serve_grpc(
    router: GrpcRouter,
    listener: TcpListener,
    tls: Option<Arc<ListenerTls>>,
    stop: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    match tls {
        None => {
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            router.serve_with_incoming_shutdown(incoming, stop).await
        }
        Some(tls) => router.serve_with_incoming_shutdown(crate::tls::grpc_incoming(listener, tls), stop).await,
    }
}

/// Credentials and admin tokens in the clear, beyond this machine, or an admin listener
/// that asks for less than the decision port: said at start-up.
fn warn_if_plaintext_beyond_loopback(settings: &Settings) {
    if let Some(tls) = &settings.tls {
        if settings.admin_listen.is_some() && tls.clients.is_some() && tls.admin_clients.is_none() {
            tracing::warn!(
                "the admin listener asks for no client certificate (the decision port does): \
                 give --admin-tls-client-ca to ask operators for one"
            );
        }
        return;
    }
    let console = match settings.console.listen {
        crate::console::ConsoleListen::Given(a) | crate::console::ConsoleListen::Default(a) => Some(a),
        crate::console::ConsoleListen::Off => None,
    };
    let listeners = [Some(settings.listen), settings.admin_listen, settings.http_listen, console];
    for address in listeners.into_iter().flatten().filter(|a| !crate::tls::is_loopback(a)) {
        tracing::warn!(
            %address,
            "serving plaintext beyond loopback: API keys and admin tokens cross the network in the clear \
             (give --tls-cert and --tls-key; see docs/deployment.md)"
        );
    }
}
