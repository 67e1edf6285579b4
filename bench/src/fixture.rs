//! Servers for the benchmarks: keygate (the real `Application`) and the floor, each on a
//! runtime of its own in a thread of its own.

use keygate::clock::SystemClock;
use keygate::config::{AdminTokenSource, DigestKeySource, Settings};
use keygate::grpc::proto::{self as pb, admin_client::AdminClient, authorizer_server};
use keygate::startup::{Application, Handles};
use keygate_client::AdminToken;
use std::sync::Arc;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub const ADMIN_TOKEN: &str = "bench-admin-token-0123456789";

pub type Admin = AdminClient<InterceptedService<Channel, AdminToken>>;

/// A server running on its own runtime; dropping it shuts the server down.
pub struct Server {
    pub address: String,
    pub handles: Option<Handles>,
    /// How to reach it over TLS, when it speaks TLS.
    pub tls: Option<keygate_client::ClientTls>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Server {
    /// A server this process did not start (`load --target`): nothing to stop.
    pub fn external(address: String) -> Self {
        Self { address, handles: None, tls: None, stop: None, thread: None }
    }

    /// A server someone else runs, reached over TLS with `tls`.
    pub fn external_tls(address: String, tls: keygate_client::ClientTls) -> Self {
        Self { address, handles: None, tls: Some(tls), stop: None, thread: None }
    }

    pub async fn channel(&self) -> anyhow::Result<Channel> {
        Ok(keygate_client::endpoint(&self.address, self.tls.as_ref())?.connect().await?)
    }

    pub async fn admin(&self) -> anyhow::Result<Admin> {
        Ok(AdminClient::with_interceptor(self.channel().await?, AdminToken::new(ADMIN_TOKEN)?))
    }
}

/// Runs `serve` on a fresh two-worker runtime in its own thread.
fn spawn_on_own_runtime<F, Fut>(serve: F) -> anyhow::Result<Server>
where
    F: FnOnce(
            tokio::sync::oneshot::Receiver<()>,
            std::sync::mpsc::Sender<anyhow::Result<(String, Option<Handles>)>>,
        ) -> Fut
        + Send
        + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            // Named, so a profile can tell the server's time from the load's.
            .thread_name("server")
            .enable_all()
            .build()
            .expect("a runtime for the server");
        runtime.block_on(serve(stopped, ready_tx));
    });
    let (address, handles) = ready_rx.recv()??;
    Ok(Server { address, handles, tls: None, stop: Some(stop), thread: Some(thread) })
}

/// keygate over a SQLite file in `dir`, with the benchmark's policy.
pub fn keygate(
    dir: &std::path::Path,
    customize: impl FnOnce(&mut Settings) + Send + 'static,
) -> anyhow::Result<Server> {
    keygate_with_policy(dir, POLICY, customize)
}

/// keygate over a SQLite file in `dir` (replicas started on one `dir` share it), with
/// `policy`.
pub fn keygate_with_policy(
    dir: &std::path::Path,
    policy: &str,
    customize: impl FnOnce(&mut Settings) + Send + 'static,
) -> anyhow::Result<Server> {
    let url = format!("sqlite://{}", dir.join("bench.db").display());
    let policy_text = policy;
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, policy_text)?;
    spawn_on_own_runtime(move |stopped, ready| async move {
        let mut settings = Settings::with_database(&url);
        settings.listen = "127.0.0.1:0".parse().expect("address");
        settings.admin_token = AdminTokenSource::Given(ADMIN_TOKEN.into());
        // Not the default file: a benchmark leaves nothing in the working directory.
        settings.digest_key = DigestKeySource::Given("bench-digest-key-0123456789abcdefghijklmnop".into());
        settings.policy = Some(policy);
        customize(&mut settings);
        let app = match Application::build(settings, Arc::new(SystemClock)).await {
            Ok(app) => app,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let _ = ready.send(Ok((format!("http://{}", app.local_addr()), Some(app.handles()))));
        let _ = app
            .run_until(async {
                let _ = stopped.await;
            })
            .await;
    })
}

/// The benchmark's routes: the hot route has an application in its path (so the decision
/// looks the application up) and no rate limit (limits would cap the load, not measure it).
pub const POLICY: &str = r#"
[[routes]]
route = "GET /api/v1/panel/applications/{application_id}"
accepts = ["api_key", "session", "runtime_key"]
scopes = ["applications:read"]
"#;

/// The floor: a tonic service that answers Authorize with a canned response of the size
/// keygate's allowed responses have, doing nothing else.
pub fn floor() -> anyhow::Result<Server> {
    floor_with(None)
}

/// The floor; over TLS (mTLS, through keygate's own listener code) when `tls` is given.
pub fn floor_with(tls: Option<Arc<keygate::tls::ListenerTls>>) -> anyhow::Result<Server> {
    spawn_on_own_runtime(|stopped, ready| async move {
        let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
            Ok(listener) => listener,
            Err(e) => {
                let _ = ready.send(Err(e.into()));
                return;
            }
        };
        let address = listener.local_addr().expect("bound");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let _ = ready.send(Ok((format!("{scheme}://{address}"), None)));
        let router = tonic::transport::Server::builder()
            .add_service(authorizer_server::AuthorizerServer::new(Floor { response: canned_response() }));
        let stopped = async {
            let _ = stopped.await;
        };
        let _ = match tls {
            None => {
                let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
                router.serve_with_incoming_shutdown(incoming, stopped).await
            }
            Some(tls) => router.serve_with_incoming_shutdown(keygate::tls::grpc_incoming(listener, tls), stopped).await,
        };
    })
}

struct Floor {
    response: pb::AuthorizeResponse,
}

#[tonic::async_trait]
impl authorizer_server::Authorizer for Floor {
    async fn authorize(
        &self,
        _request: tonic::Request<pb::AuthorizeRequest>,
    ) -> Result<tonic::Response<pb::AuthorizeResponse>, tonic::Status> {
        Ok(tonic::Response::new(self.response.clone()))
    }
}

/// What keygate answers for an allowed hot-key call, field for field.
fn canned_response() -> pb::AuthorizeResponse {
    pb::AuthorizeResponse {
        allowed: true,
        http_status: 200,
        principal: Some(pb::Principal {
            kind: "api_key".into(),
            key_id: "key_0123456789abcdef".into(),
            account_id: "acct_bench".into(),
            scopes: vec!["applications:read".into()],
            ..Default::default()
        }),
        route: "GET /api/v1/panel/applications/{application_id}".into(),
        application_id: "app_0123456789abcdef".into(),
        ..Default::default()
    }
}

/// `count` keys with `applications:read`, each in an account of its own
/// (`{accounts}_{i}`), made through the Admin API at `address` with `admin_token`.
pub async fn keys_in_own_accounts(
    address: &str,
    tls: Option<&keygate_client::ClientTls>,
    admin_token: &str,
    accounts: &str,
    count: usize,
) -> anyhow::Result<Vec<String>> {
    let channel = keygate_client::endpoint(address, tls)?.connect().await?;
    let admin = AdminClient::with_interceptor(channel, AdminToken::new(admin_token)?);
    // A few at once (each is an argon2 hash on the server): thousands of keys in minutes.
    let mut secrets = vec![String::new(); count];
    let mut making = tokio::task::JoinSet::new();
    for i in 0..count {
        if making.len() >= 8 {
            let (i, secret) = making.join_next().await.expect("some are making")??;
            secrets[i] = secret;
        }
        let (mut admin, account_id) = (admin.clone(), format!("{accounts}_{i}"));
        making.spawn(async move {
            let request = pb::CreateApiKeyRequest {
                account_id,
                name: "bench".into(),
                scopes: vec!["applications:read".into()],
                ..Default::default()
            };
            anyhow::Ok((i, admin.create_api_key(request).await?.into_inner().secret))
        });
    }
    while let Some(made) = making.join_next().await {
        let (i, secret) = made??;
        secrets[i] = secret;
    }
    Ok(secrets)
}
