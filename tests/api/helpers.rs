//! `TestApp`: the real server on a random port over a real database, driven through
//! real gRPC clients. SQLite always; Postgres when KEYGATE_TEST_POSTGRES_URL is set, each
//! test in a schema of its own.

use keygate::clock::ManualClock;
use keygate::config::{AdminTokenSource, DigestKeySource, Settings};
use keygate::grpc::proto::{self as pb, admin_client::AdminClient, authorizer_client::AuthorizerClient};
use keygate::startup::{Application, Handles};
use keygate_client::AdminToken;
use std::sync::Arc;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
/// Every test server's digest key: replicas of one deployment share it.
pub const DIGEST_KEY: &str = "test-digest-key-0123456789abcdefghijklmnop";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// A database of the test's own; dropped with it (SQLite) or left as a schema (Postgres).
pub struct TestDb {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    /// `None` when the backend is not configured on this machine.
    pub async fn new(db: Db) -> Option<Self> {
        match db {
            Db::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}", dir.path().join("keygate.db").display());
                Some(Self { url, _dir: Some(dir) })
            }
            Db::Postgres => {
                let base = std::env::var("KEYGATE_TEST_POSTGRES_URL").ok()?;
                let schema = format!("kg_test_{}", keygate::domain::random_token(12).unwrap().to_lowercase());
                use sqlx::Connection;
                let mut conn = sqlx::PgConnection::connect(&base).await.expect("KEYGATE_TEST_POSTGRES_URL reachable");
                sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&mut conn).await.unwrap();
                let sep = if base.contains('?') { '&' } else { '?' };
                let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
                Some(Self { url, _dir: None })
            }
        }
    }
}

pub struct TestApp {
    pub address: String,
    /// Admin's own address, when the settings set it apart from `address`.
    pub admin_address: Option<String>,
    pub clock: ManualClock,
    pub handles: Handles,
    pub admin: AdminClient<InterceptedService<Channel, AdminToken>>,
    pub authorizer: AuthorizerClient<Channel>,
    pub channel: Channel,
    /// `http://ADDRESS/metrics`, when the settings turned metrics on.
    pub metrics_url: Option<String>,
    /// `http://ADDRESS` of the forward-auth listener, when the settings turned it on.
    pub http_url: Option<String>,
    /// `http://ADDRESS` of the console, when the settings turned it on.
    pub console_url: Option<String>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _db: Option<TestDb>,
}

pub fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        // Like the subscriber itself, the exporter (if any) lives as long as the test process.
        std::mem::forget(keygate::telemetry::init(keygate::config::LogFormat::Pretty));
    }
}

impl TestApp {
    pub async fn spawn(db: Db) -> Option<Self> {
        let db = TestDb::new(db).await?;
        Some(Self::spawn_on(db, |_| {}).await)
    }

    pub async fn spawn_on(db: TestDb, customize: impl FnOnce(&mut Settings)) -> Self {
        let mut app = Self::spawn_url(&db.url.clone(), customize).await;
        app._db = Some(db);
        app
    }

    /// On SQLite, with settings that may turn TLS on; the test's clients use `client`.
    pub async fn spawn_with_tls(
        client: Option<keygate_client::ClientTls>,
        customize: impl FnOnce(&mut Settings),
    ) -> Self {
        let db = TestDb::new(Db::Sqlite).await.expect("SQLite is always there");
        let mut app = Self::spawn_with_client(&db.url.clone(), client, customize).await;
        app._db = Some(db);
        app
    }

    /// Another replica on a database that someone else owns.
    pub async fn spawn_url(url: &str, customize: impl FnOnce(&mut Settings)) -> Self {
        Self::spawn_with_client(url, None, customize).await
    }

    /// A server whose settings may turn TLS on: the test's own clients connect with
    /// `client` (its CA, its certificate for mTLS) over `https://`; Admin goes to the
    /// admin listener when the settings set one apart.
    pub async fn spawn_with_client(
        url: &str,
        client: Option<keygate_client::ClientTls>,
        customize: impl FnOnce(&mut Settings),
    ) -> Self {
        init_logs();
        let mut settings = Settings::with_database(url);
        settings.listen = "127.0.0.1:0".parse().unwrap();
        settings.admin_token = AdminTokenSource::Given(ADMIN_TOKEN.into());
        settings.digest_key = DigestKeySource::Given(DIGEST_KEY.into());
        customize(&mut settings);
        let tls = settings.tls.is_some();
        let clock = ManualClock::starting_now();
        let app = Application::build(settings, Arc::new(clock.clone())).await.expect("server builds");
        let scheme = if tls { "https" } else { "http" };
        let address = format!("{scheme}://{}", app.local_addr());
        let admin_address = app.admin_addr().map(|a| format!("{scheme}://{a}"));
        let handles = app.handles();
        let metrics_url = app.metrics_addr().map(|a| format!("{scheme}://{a}/metrics"));
        let http_url = app.http_addr().map(|a| format!("{scheme}://{a}"));
        let console_url = app.console_addr().map(|a| format!("{scheme}://{a}"));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let server = tokio::spawn(app.run_until(async {
            let _ = rx.await;
        }));
        // The listener is already bound, so connecting cannot race the server's start.
        let connect = |address: &str| {
            let endpoint = keygate_client::endpoint(address, client.as_ref()).expect("a valid address");
            async move { endpoint.connect().await.expect("the test's client connects") }
        };
        let channel = connect(&address).await;
        let admin_channel = match &admin_address {
            Some(admin_address) => connect(admin_address).await,
            None => channel.clone(),
        };
        let token = AdminToken::new(ADMIN_TOKEN).unwrap();
        Self {
            address,
            admin_address,
            clock,
            handles,
            admin: AdminClient::with_interceptor(admin_channel, token),
            authorizer: AuthorizerClient::new(channel.clone()),
            channel,
            metrics_url,
            http_url,
            console_url,
            shutdown: Some(tx),
            server: Some(server),
            _db: None,
        }
    }

    /// Stops the server as a crash would: nothing is flushed or handed back.
    pub async fn kill(mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
            let _ = server.await;
        }
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
    }

    pub async fn create_app(&mut self, account: &str) -> pb::Application {
        self.admin
            .create_application(pb::CreateApplicationRequest { account_id: account.into(), name: "app".into() })
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn create_key(&mut self, account: &str, scopes: &[&str], apps: &[&str]) -> (pb::ApiKey, String) {
        let created = self
            .admin
            .create_api_key(pb::CreateApiKeyRequest {
                account_id: account.into(),
                name: "test key".into(),
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
                application_ids: apps.iter().map(|s| s.to_string()).collect(),
                expires_at: None,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        (created.key.unwrap(), created.secret)
    }

    /// A key of `account` with what `fields` sets; by default named "test key" and scoped
    /// `applications:read` (what [`ask`] needs).
    pub async fn key_with(&mut self, account: &str, fields: pb::CreateApiKeyRequest) -> (pb::ApiKey, String) {
        let created = self
            .admin
            .create_api_key(pb::CreateApiKeyRequest {
                account_id: account.into(),
                name: Some(fields.name.clone()).filter(|n| !n.is_empty()).unwrap_or_else(|| "test key".into()),
                scopes: Some(fields.scopes.clone())
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| vec!["applications:read".into()]),
                ..fields
            })
            .await
            .expect("the key is created")
            .into_inner();
        (created.key.unwrap(), created.secret)
    }

    pub async fn authorize(&mut self, credential: &str, method: &str, path: &str) -> pb::AuthorizeResponse {
        self.authorize_with(pb::AuthorizeRequest {
            credential: credential.into(),
            method: method.into(),
            path: path.into(),
            ..Default::default()
        })
        .await
    }

    pub async fn authorize_with(&mut self, request: pb::AuthorizeRequest) -> pb::AuthorizeResponse {
        self.authorizer.authorize(request).await.expect("Authorize answers").into_inner()
    }

    pub fn verifications(&self) -> u64 {
        self.handles.verifier.verifications()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// `GET /api/v1/panel/applications` with `credential`: the route most tests ask about.
pub fn ask(credential: &str) -> pb::AuthorizeRequest {
    pb::AuthorizeRequest {
        credential: credential.into(),
        method: "GET".into(),
        path: "/api/v1/panel/applications".into(),
        ..Default::default()
    }
}

/// The ErrorInfo reason of a failed call.
pub fn reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status.get_details_error_info().map(|i| i.reason).unwrap_or_default()
}

/// Runs a test body once per configured backend: `backend_tests!(name);` makes
/// `name::sqlite` and `name::postgres` (which says it skipped when Postgres is not set).
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::helpers::Db::Sqlite).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if std::env::var_os("KEYGATE_TEST_POSTGRES_URL").is_none() {
                    eprintln!("skipped: KEYGATE_TEST_POSTGRES_URL is not set");
                    return;
                }
                super::$name($crate::helpers::Db::Postgres).await
            }
        }
    )*};
}

/// Polls `check` until it holds; the deadline only stops a hang, it asserts no speed.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// The test Redis, or `None` (and a line saying the test is skipped) without one.
pub fn redis_url() -> Option<String> {
    let url = std::env::var("KEYGATE_TEST_REDIS_URL").ok();
    if url.is_none() {
        eprintln!("skipped: KEYGATE_TEST_REDIS_URL is not set");
    }
    url
}

/// Limits counted in the Redis at `url`, under `prefix`. The limiter's timeout is raised
/// from 50 ms, which a loaded 2-core CI machine can reach: the call is then refused
/// `UNAVAILABLE`, so a test of exact counts would fail for the machine's load, not for
/// keygate's counting. Tests that are about the timeout set their own.
pub fn limits_in_redis(s: &mut Settings, url: &str, prefix: &str) {
    s.rate_limit_store = Some(keygate::config::MaskedUrl::new(url.to_owned()));
    s.rate_limit_key_prefix = prefix.to_owned();
    s.limiter_breaker.timeout = std::time::Duration::from_secs(2);
}

/// A Redis key prefix no other test (or run) uses.
pub fn fresh_prefix() -> String {
    format!("keygate-test:{}:", keygate::domain::random_token(12).unwrap())
}

/// `calls` concurrent calls, alternating between two replicas and cycling through
/// `secrets`; every deny must be for `reason`. Returns how many were allowed.
pub async fn burst(a: &TestApp, b: &TestApp, secrets: &[&str], calls: usize, reason: &str) -> usize {
    let calls: Vec<_> = (0..calls)
        .map(|i| {
            let mut client = if i % 2 == 0 { a.authorizer.clone() } else { b.authorizer.clone() };
            let secret = secrets[i % secrets.len()].to_owned();
            tokio::spawn(async move { client.authorize(ask(&secret)).await.unwrap().into_inner() })
        })
        .collect();
    let mut allowed = 0;
    for call in calls {
        let r = call.await.unwrap();
        if r.allowed {
            allowed += 1;
        } else {
            assert_eq!(r.reason, reason, "{r:?}");
        }
    }
    allowed
}
