//! A real store outage, seen from the edges: the `keygate` binary as operators run it, its
//! database behind a port that refuses connections (as when the Postgres host is down),
//! asked through Envoy's Check with the shipped example's 250 ms timeout and through the
//! layer with the client's default timeout.

use crate::edge_contract::envoy_check;
use crate::example;
use crate::forward_auth::{Kind as ProxyKind, Proxy};
use crate::helpers::{eventually, Db, TestDb, ADMIN_TOKEN};
use crate::relay::{target_of, Relay};
use envoy_types::ext_authz::v3::pb::{CheckResponse, HttpResponse};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use keygate::grpc::proto::{self as pb, admin_client::AdminClient};
use keygate_client::AdminToken;
use keygate_client::{KeygateClient, KeygateLayer};
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// The Envoy example's ext_authz timeout.
const ENVOY_TIMEOUT: Duration = Duration::from_millis(250);
const APPS: &str = "/api/v1/panel/applications";

/// `keygate serve` in its own process, its JSON log lines collected.
struct Server {
    child: Child,
    address: String,
    /// host:port of the forward-auth listener.
    http: String,
    /// http://host:port/metrics
    metrics: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(database_url: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_keygate"))
            .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
            .args(["--http-listen", "127.0.0.1:0", "--trusted-proxy-hops", "1", "--metrics-listen", "127.0.0.1:0"])
            // Short freshness, so that cached keys are reloaded (and so served stale) soon.
            .args(["--cache-ttl-seconds", "1", "--serve-stale-seconds", "120"])
            .env("KEYGATE_DATABASE_URL", database_url)
            .env("KEYGATE_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("KEYGATE_DIGEST_KEY", crate::helpers::DIGEST_KEY)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the keygate binary starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (address_tx, address_rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) {
                    let address = event["address"].as_str().unwrap_or_default().to_owned();
                    if event["message"] == "serving forward auth at /forward-auth" {
                        let _ = address_tx.send(("http", address));
                    } else if event["message"] == "serving metrics at /metrics" {
                        let _ = address_tx.send(("metrics", address));
                    } else if event["message"] == "keygate is serving" {
                        let _ = address_tx.send(("grpc", address));
                    }
                }
                lines.lock().unwrap().push(line);
            }
        });
        let (mut address, mut http, mut metrics) = (String::new(), String::new(), String::new());
        while address.is_empty() || http.is_empty() || metrics.is_empty() {
            let (which, value) = address_rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| {
                panic!("keygate did not start:\n{}", log.lock().unwrap().join("\n"));
            });
            *(match which {
                "http" => &mut http,
                "metrics" => &mut metrics,
                _ => &mut address,
            }) = value;
        }
        Self { child, address: format!("http://{address}"), http, metrics: format!("http://{metrics}/metrics"), log }
    }

    /// The log line that names `error_id`, if keygate logged one.
    fn logged(&self, error_id: &str) -> Option<String> {
        self.log.lock().unwrap().iter().find(|line| line.contains(error_id) && line.contains("ERROR")).cloned()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn error_id_of(message: &str) -> String {
    let id = message.split("(error id ").nth(1).and_then(|rest| rest.split(')').next()).unwrap_or_default();
    assert!(!id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit()), "no error id in {message:?}");
    id.to_owned()
}

/// Asks Check as Envoy does: with its timeout as the call's deadline (`grpc-timeout`).
/// A call the client had to give up on is `Err`: Envoy would have answered its own 403.
async fn envoy_asks(channel: &Channel, credential: &str) -> (Result<CheckResponse, tonic::Status>, Duration) {
    let mut request = tonic::Request::new(envoy_check("203.0.113.7", "GET", APPS, &[("x-api-key", credential)], ""));
    request.set_timeout(ENVOY_TIMEOUT);
    let started = Instant::now();
    let answer = AuthorizationClient::new(channel.clone()).check(request).await.map(tonic::Response::into_inner);
    (answer, started.elapsed())
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_store_is_answered_within_the_edges_timeouts() {
    let Some(db) = TestDb::new(Db::Postgres).await else {
        eprintln!("skipped: KEYGATE_TEST_POSTGRES_URL is not set");
        return;
    };
    let relay = Relay::start(target_of(&db.url)).await;
    let server = Server::start(&relay.url_for(&db.url));
    let channel = Channel::from_shared(server.address.clone()).unwrap().connect().await.unwrap();
    let admin = AdminClient::with_interceptor(channel.clone(), AdminToken::new(ADMIN_TOKEN).unwrap());
    let create = || {
        let request = pb::CreateApiKeyRequest {
            account_id: "acct_outage".into(),
            name: "k".into(),
            scopes: vec!["*".into()],
            ..Default::default()
        };
        let mut admin = admin.clone();
        async move { admin.create_api_key(request).await.unwrap().into_inner().secret }
    };
    let (in_use, never_seen) = (create().await, create().await);
    let edge = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let layer = KeygateLayer::new(KeygateClient::connect_lazy(&server.address).unwrap());
        tokio::spawn(async move { example::serve(listener, layer).await.unwrap() });
        format!("http://{address}{APPS}")
    };
    let http = reqwest::Client::new();
    assert!(matches!(envoy_asks(&channel, &in_use).await.0.unwrap().http_response, Some(HttpResponse::OkResponse(_))));
    // The first use stores the key's verified digest (this replica updates its cached
    // record in place; a stored digest notifies nobody): wait until the two creates'
    // notifications have arrived, then use the key again, so the record in memory when the
    // store goes away is the current one.
    eventually("the creates' notifications arrived", || {
        let (http, url) = (http.clone(), server.metrics.clone());
        async move {
            let text = http.get(url).send().await.unwrap().text().await.unwrap();
            keygate::metrics::sample(&text, "keygate_invalidation_notifications_total").unwrap_or(0.0) >= 2.0
        }
    })
    .await;
    assert!(matches!(envoy_asks(&channel, &in_use).await.0.unwrap().http_response, Some(HttpResponse::OkResponse(_))));
    assert_eq!(http.get(&edge).header("x-api-key", &in_use).send().await.unwrap().status(), 200);

    relay.close().await;
    // Every call is answered before Envoy would give up: the key in use from the cache,
    // the key never seen with the page's 500 and an error id that is in keygate's log.
    let (mut cached, mut refused) = (Vec::new(), Vec::new());
    for round in 0..20 {
        let (answer, took) = envoy_asks(&channel, &in_use).await;
        let answer = answer.unwrap_or_else(|e| panic!("round {round}: Envoy gave up on a cached key: {e:?}"));
        assert!(matches!(answer.http_response, Some(HttpResponse::OkResponse(_))), "round {round}: {answer:?}");
        cached.push(took);

        let (answer, took) = envoy_asks(&channel, &never_seen).await;
        let answer = answer.unwrap_or_else(|e| panic!("round {round}: Envoy gave up: {e:?}"));
        let Some(HttpResponse::DeniedResponse(denied)) = &answer.http_response else {
            panic!("round {round}: a key keygate cannot look up was not denied: {answer:?}")
        };
        assert_eq!(denied.status.as_ref().unwrap().code, 500);
        let envelope: keygate::code::Envelope = serde_json::from_str(&denied.body).unwrap();
        assert_eq!(envelope.code, "INTERNAL_ERROR");
        let id = error_id_of(&envelope.message);
        eventually("the error id is in keygate's log", || {
            let found = server.logged(&id).is_some();
            async move { found }
        })
        .await;
        assert!(!denied.body.contains(&never_seen));
        refused.push(took);
        // Time moves on, so the cached key's freshness runs out and it is served stale.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Through the layer, with the client's default timeout: keygate's own error id.
    let response = http.get(&edge).header("x-api-key", &never_seen).send().await.unwrap();
    assert_eq!(response.status(), 500);
    let envelope: keygate::code::Envelope = response.json().await.unwrap();
    let id = error_id_of(&envelope.message);
    eventually("the layer's error id is keygate's", || {
        let found = server.logged(&id).is_some();
        async move { found }
    })
    .await;
    assert_eq!(http.get(&edge).header("x-api-key", &in_use).send().await.unwrap().status(), 200);
    // Through nginx and Caddy with the shipped configurations (1 s auth timeouts).
    let upstream = crate::forward_auth::echo_upstream().await;
    for kind in [ProxyKind::Nginx, ProxyKind::Caddy] {
        let Some(proxy) = Proxy::start(kind, &server.http, &upstream).await else { continue };
        let url = format!("{}{APPS}", proxy.url);
        let response = http.get(&url).header("x-api-key", &never_seen).send().await.unwrap();
        assert_eq!(response.status(), 500, "{kind:?}");
        assert_eq!(response.headers()["content-type"], "application/json", "{kind:?}");
        let envelope: keygate::code::Envelope = response.json().await.unwrap();
        assert_eq!(envelope.code, "INTERNAL_ERROR", "{kind:?}");
        let id = error_id_of(&envelope.message);
        eventually("the proxy's error id is keygate's", || {
            let found = server.logged(&id).is_some();
            async move { found }
        })
        .await;
        let response = http.get(&url).header("x-api-key", &in_use).send().await.unwrap();
        assert_eq!(response.status(), 200, "{kind:?}: a cached key is served through the proxy");
    }
    let stale = server.log.lock().unwrap().iter().any(|l| l.contains("unreachable: not waiting"));
    assert!(stale, "the breaker opened and said so");

    cached.sort();
    refused.sort();
    println!(
        "store refusing connections, 20 rounds through Check: cached key p50 {:.2} ms max {:.2} ms; \
         unknown key (500) p50 {:.2} ms max {:.2} ms",
        millis(cached[10]),
        millis(cached[19]),
        millis(refused[10]),
        millis(refused[19]),
    );

    // The port opens again: a probe finds the store, and nothing needs a restart.
    relay.restore().await;
    eventually("keygate uses the store again", || async {
        matches!(
            envoy_asks(&channel, &never_seen).await.0,
            Ok(CheckResponse { http_response: Some(HttpResponse::OkResponse(_)), .. })
        )
    })
    .await;
}
