//! Shared limits over TLS: a real `redis-server` started by the test with TLS only
//! (`--port 0 --tls-port P`), its certificate from the test's own CA (rcgen), and keygate
//! given that CA with `--rate-limit-store-ca`. Skipped, saying so, without redis-server.

use crate::helpers::{fresh_prefix, limits_in_redis, Db, TestApp, TestDb, ADMIN_TOKEN, DIGEST_KEY};
use crate::sessions::create_session;
use crate::tls::{Files, TestCa};
use keygate::config::{RedisTls, Settings};
use keygate::grpc::proto as pb;
use rcgen::ExtendedKeyUsagePurpose;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

const CREATE_KEYS: &str = "/api/v1/panel/api-keys";

/// A `redis-server` that speaks only TLS, on a port of its own; stopped on drop.
struct TlsRedis {
    port: u16,
    child: Child,
    files: Files,
}

impl TlsRedis {
    /// With a certificate of `ca` for localhost and 127.0.0.1; clients must show a
    /// certificate of `ca` when `client_certificates`. `None` without redis-server.
    async fn start(ca: &TestCa, client_certificates: bool) -> Option<Self> {
        if Command::new("redis-server").arg("--version").output().is_err() {
            eprintln!("skipped: no redis-server on this machine");
            return None;
        }
        let files = Files::new();
        let server = ca.server();
        let (cert, key, ca_file) = (
            files.write("redis.pem", &server.cert),
            files.write("redis.key", &server.key),
            files.write("ca.pem", &ca.pem),
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--tls-port", &port.to_string()])
            .arg("--tls-cert-file")
            .arg(&cert)
            .arg("--tls-key-file")
            .arg(&key)
            .arg("--tls-ca-cert-file")
            .arg(&ca_file)
            .args(["--tls-auth-clients", if client_certificates { "yes" } else { "no" }])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let redis = Self { port, child, files };
        for _ in 0..500 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return Some(redis);
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("redis-server never listened on {port}");
    }

    fn url(&self) -> String {
        format!("rediss://localhost:{}", self.port)
    }

    /// `--rate-limit-store-ca` naming `ca` (written beside the server's files).
    fn ca_file(&self, name: &str, ca: &TestCa) -> PathBuf {
        self.files.write(name, &ca.pem)
    }

    /// Keys under `prefix`, read with redis-cli over TLS: the limits really counted here.
    fn keys(&self, ca: &std::path::Path, prefix: &str) -> String {
        let out = Command::new("redis-cli")
            .args(["--tls", "-h", "localhost", "-p", &self.port.to_string(), "--cacert"])
            .arg(ca)
            .args(["--scan", "--pattern", &format!("{prefix}*")])
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Ten key creations an hour per account (an exact limit): the eleventh is refused.
async fn eleventh_is_refused(app: &mut TestApp) {
    let (_, token) = create_session(app, "acct_rediss", 86_400).await;
    for i in 0..10 {
        let r = app.authorize(&token, "POST", CREATE_KEYS).await;
        assert!(r.allowed, "creation {} is allowed: {r:?}", i + 1);
    }
    let r = app.authorize(&token, "POST", CREATE_KEYS).await;
    assert_eq!((r.allowed, r.code.as_str(), r.http_status), (false, "rate_limit_reached", 429));
}

/// guards: the redis crate's TLS (rediss://) and --rate-limit-store-ca reaching the
/// client; without the CA the handshake fails (unknown CA) and start-up stops.
#[tokio::test]
async fn limits_count_in_redis_over_tls() {
    let ca = TestCa::new("redis CA");
    let Some(redis) = TlsRedis::start(&ca, false).await else { return };
    let ca_file = redis.ca_file("trusted.pem", &ca);
    let prefix = fresh_prefix();
    let db = TestDb::new(Db::Sqlite).await.unwrap();
    let mut app = TestApp::spawn_on(db, |s| {
        limits_in_redis(s, &redis.url(), &prefix);
        s.rate_limit_store_tls = RedisTls { ca: Some(ca_file.clone()), ..RedisTls::default() };
    })
    .await;
    eleventh_is_refused(&mut app).await;
    assert!(redis.keys(&ca_file, &prefix).contains(&prefix), "the counts are in the TLS Redis");
}

/// guards: the client certificate (--rate-limit-store-client-cert/-key) reaching the
/// handshake of a Redis that asks for one.
#[tokio::test]
async fn a_client_certificate_is_shown_to_a_redis_that_asks() {
    let ca = TestCa::new("redis CA");
    let Some(redis) = TlsRedis::start(&ca, true).await else { return };
    let client = ca.issue(&["keygate"], ExtendedKeyUsagePurpose::ClientAuth);
    let tls = RedisTls {
        ca: Some(redis.ca_file("trusted.pem", &ca)),
        client_cert: Some(redis.files.write("client.pem", &client.cert)),
        client_key: Some(redis.files.write("client.key", &client.key)),
    };
    let prefix = fresh_prefix();
    let db = TestDb::new(Db::Sqlite).await.unwrap();
    let mut app = TestApp::spawn_on(db, |s| {
        limits_in_redis(s, &redis.url(), &prefix);
        s.rate_limit_store_tls = tls.clone();
    })
    .await;
    eleventh_is_refused(&mut app).await;
}

/// guards: the start-up check of TLS to Redis; without it keygate started and failed
/// every limit closed, saying only that Redis was unreachable.
#[tokio::test]
async fn a_wrong_ca_stops_start_up_naming_the_unknown_ca() {
    let ca = TestCa::new("redis CA");
    let Some(redis) = TlsRedis::start(&ca, false).await else { return };
    let other = redis.ca_file("other.pem", &TestCa::new("another CA"));
    let files = Files::new();
    let mut settings = Settings::with_database(&format!("sqlite://{}", files.path("k.db").display()));
    settings.listen = "127.0.0.1:0".parse().unwrap();
    settings.admin_token = keygate::config::AdminTokenSource::Given(ADMIN_TOKEN.into());
    settings.digest_key = keygate::config::DigestKeySource::Given(DIGEST_KEY.into());
    limits_in_redis(&mut settings, &redis.url(), &fresh_prefix());
    settings.rate_limit_store_tls = RedisTls { ca: Some(other), ..RedisTls::default() };
    let clock = Arc::new(keygate::clock::ManualClock::starting_now());
    let error = match keygate::startup::Application::build(settings, clock).await {
        Ok(_) => panic!("started with a CA that did not sign Redis's certificate"),
        Err(e) => format!("{e:#}"),
    };
    assert!(error.contains("cannot use the rate limit store rediss://localhost:"), "{error}");
    assert!(error.contains("TLS: the server's certificate is signed by an unknown CA"), "{error}");
    assert!(error.contains("--rate-limit-store-ca"), "{error}");
}

/// Three `redis-server`s that speak only TLS, made one cluster over TLS (its bus too:
/// `--tls-cluster yes`) by `redis-cli --tls --cluster create`; stopped on drop. `None`
/// without redis-server.
struct TlsCluster {
    ports: Vec<u16>,
    children: Vec<Child>,
    files: Files,
}

impl TlsCluster {
    async fn start(ca: &TestCa) -> Option<Self> {
        if Command::new("redis-server").arg("--version").output().is_err() {
            eprintln!("skipped: no redis-server on this machine");
            return None;
        }
        let files = Files::new();
        let server = ca.server();
        let (cert, key, ca_file) = (
            files.write("redis.pem", &server.cert),
            files.write("redis.key", &server.key),
            files.write("ca.pem", &ca.pem),
        );
        // The cluster bus always asks the connecting node for a certificate (whatever
        // --tls-auth-clients says): each node shows one for client authentication.
        let node = ca.issue(&["redis-node"], ExtendedKeyUsagePurpose::ClientAuth);
        let (node_cert, node_key) = (files.write("node.pem", &node.cert), files.write("node.key", &node.key));
        // Six free ports: each node's and its cluster bus'.
        let listeners: Vec<_> = (0..6).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
        let free: Vec<u16> = listeners.iter().map(|l| l.local_addr().unwrap().port()).collect();
        drop(listeners);
        let mut cluster = Self { ports: free[..3].to_vec(), children: vec![], files };
        for (port, bus) in free[..3].iter().zip(&free[3..]) {
            let child = Command::new("redis-server")
                .args(["--port", "0", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .args(["--tls-port", &port.to_string(), "--cluster-port", &bus.to_string()])
                .args(["--cluster-enabled", "yes", "--tls-cluster", "yes", "--tls-replication", "yes"])
                .arg("--cluster-config-file")
                .arg(cluster.files.path(&format!("nodes-{port}.conf")))
                .arg("--dir")
                .arg(cluster.files.path(""))
                .arg("--tls-cert-file")
                .arg(&cert)
                .arg("--tls-key-file")
                .arg(&key)
                .arg("--tls-ca-cert-file")
                .arg(&ca_file)
                .arg("--tls-client-cert-file")
                .arg(&node_cert)
                .arg("--tls-client-key-file")
                .arg(&node_key)
                .args(["--tls-auth-clients", "no"])
                .arg("--logfile")
                .arg(cluster.files.path(&format!("{port}.log")))
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server starts");
            cluster.children.push(child);
        }
        for &port in &cluster.ports {
            let mut tries = 0;
            while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
                tries += 1;
                assert!(tries < 500, "redis-server never listened on {port}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
        let nodes: Vec<String> = cluster.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        // Bounded: a cluster whose bus cannot connect waits to join for ever.
        let created = Command::new("timeout")
            .args(["60", "redis-cli", "--tls", "--cacert"])
            .arg(&ca_file)
            .arg("--cluster")
            .arg("create")
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stdout));
        for &port in &cluster.ports {
            let mut tries = 0;
            while !cluster.cli(port, &ca_file, &["cluster", "info"]).contains("cluster_state:ok") {
                tries += 1;
                assert!(tries < 500, "the TLS cluster never became ok on {port}");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
        Some(cluster)
    }

    fn cli(&self, port: u16, ca: &std::path::Path, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["--tls", "-h", "127.0.0.1", "-p", &port.to_string(), "--cacert"])
            .arg(ca)
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn url(&self) -> String {
        let seeds: Vec<String> = self.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        format!("rediss+cluster://{}", seeds.join(","))
    }
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// guards: `rediss+cluster://` reaching the cluster client with the CA, over a cluster
/// whose nodes (and bus) speak only TLS; the counts land on the masters their slots name.
#[tokio::test]
async fn limits_count_in_a_redis_cluster_over_tls() {
    let ca = TestCa::new("redis cluster CA");
    let Some(cluster) = TlsCluster::start(&ca).await else { return };
    let ca_file = cluster.files.write("trusted.pem", &ca.pem);
    let prefix = fresh_prefix();
    let db = TestDb::new(Db::Sqlite).await.unwrap();
    let mut app = TestApp::spawn_on(db, |s| {
        limits_in_redis(s, &cluster.url(), &prefix);
        s.rate_limit_store_tls = RedisTls { ca: Some(ca_file.clone()), ..RedisTls::default() };
    })
    .await;
    // The first use connects to every master (three TLS handshakes; slow on a loaded
    // machine): until then a creation fails closed. Another account's.
    let (_, warm) = create_session(&mut app, "acct_warm", 86_400).await;
    crate::helpers::eventually("keygate reaches the TLS cluster", || async {
        let request = pb::AuthorizeRequest {
            credential: warm.clone(),
            method: "POST".into(),
            path: CREATE_KEYS.into(),
            ..Default::default()
        };
        app.authorizer.clone().authorize(request).await.is_ok()
    })
    .await;
    eleventh_is_refused(&mut app).await;
    let counter = format!("{prefix}POST /api/v1/panel/api-keys#0:acct_rediss");
    let counted: usize = cluster
        .ports
        .iter()
        .map(|&port| cluster.cli(port, &ca_file, &["zcard", &counter]).trim().parse::<usize>().unwrap_or(0))
        .sum();
    assert_eq!(counted, 10, "the ten allowed creations are counted in the TLS cluster");
}
