//! What the request says (issue 28, items 11–13): the original request named once, method
//! overrides refused or stripped, every spelling of the application id that an upstream
//! framework reads, and no secret of a database or Redis URL in keygate's output. Each
//! entry is asked for real: Authorize and Envoy's Check over gRPC, forward auth over HTTP
//! and through the real nginx and Caddy, and the `keygate serve` binary.

use crate::forward_auth::{assert_envelope, call, echo_upstream, host_port, keygate, Kind, Proxy};
use crate::helpers::{TestApp, ADMIN_TOKEN, DIGEST_KEY};
use envoy_types::ext_authz::v3::pb::{CheckResponse, HttpResponse};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use keygate::code::Code;
use keygate::grpc::proto as pb;
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;

const ROTATE: &str = "/api/v1/panel/update-api-keys";
/// Header lines to send, in order.
type Headers<'a> = Vec<(&'a str, &'a str)>;
const APPS: &str = "/api/v1/panel/applications";

/// Forward auth asked directly, as a proxy would: (status, code).
async fn forward_auth(app: &TestApp, headers: &[(&str, &str)]) -> (u16, String) {
    let mut request = reqwest::Client::new().get(format!("{}/forward-auth", app.http_url.as_ref().unwrap()));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let code = response.headers().get("x-keygate-code").map_or("", |v| v.to_str().unwrap()).to_owned();
    (response.status().as_u16(), code)
}

/// Envoy's Check: (HTTP status, code); 200 and "" for an allow.
async fn check(app: &TestApp, method: &str, path: &str, headers: &[(&str, &str)]) -> (i32, String) {
    let request = crate::edge_contract::envoy_check("203.0.113.7", method, path, headers, "");
    let response: CheckResponse =
        AuthorizationClient::new(app.channel.clone()).check(request).await.expect("Check answers").into_inner();
    match response.http_response {
        Some(HttpResponse::DeniedResponse(denied)) => {
            let envelope: Value = serde_json::from_str(&denied.body).unwrap();
            (denied.status.unwrap().code, envelope["code"].as_str().unwrap().to_owned())
        }
        _ => (200, String::new()),
    }
}

/// Authorize: (HTTP status, code); 200 and "" for an allow.
async fn authorize(
    app: &mut TestApp,
    secret: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u32, String) {
    let request = pb::AuthorizeRequest {
        credential: secret.into(),
        method: method.into(),
        path: path.into(),
        headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<HashMap<_, _>>(),
        ..Default::default()
    };
    let answer = app.authorize_with(request).await;
    (answer.http_status, answer.code)
}

/// Issue 28 item 11: a proxy that appends its X-Forwarded-Uri/-Method line to the client's
/// (or joins them into one) no longer lets the client's line choose the request keygate
/// decides on: 400 bad_request. Before the fix the first line won (`/api/v1/health` → 200).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_or_joined_original_request_header_is_refused() {
    let app = keygate().await;
    for (uri_header, method_header) in
        [("x-forwarded-uri", "x-forwarded-method"), ("x-original-uri", "x-original-method")]
    {
        let twice = [(method_header, "GET"), (uri_header, "/api/v1/health"), (uri_header, APPS)];
        assert_eq!(forward_auth(&app, &twice).await, (400, "bad_request".into()), "{uri_header} twice");
        let twice = [(method_header, "GET"), (method_header, "DELETE"), (uri_header, "/api/v1/health")];
        assert_eq!(forward_auth(&app, &twice).await, (400, "bad_request".into()), "{method_header} twice");
        let joined = [(method_header, "GET"), (uri_header, "/api/v1/health?a=1, /api/v1/panel/applications")];
        assert_eq!(forward_auth(&app, &joined).await, (400, "bad_request".into()), "{uri_header} joined");
    }
    let joined = [("x-forwarded-method", "GET, DELETE"), ("x-forwarded-uri", "/api/v1/health")];
    assert_eq!(forward_auth(&app, &joined).await.0, 400, "a joined method is no method");
    // Once each, the public route is still public.
    let once = [("x-forwarded-method", "GET"), ("x-forwarded-uri", "/api/v1/health")];
    assert_eq!(forward_auth(&app, &once).await, (200, String::new()));
}

/// Issue 28 item 11: a method-override header naming another method than the one keygate
/// decides on is refused at every entry (an upstream framework may honour it), under any
/// spelling a CGI upstream reads; naming the same method is harmless. Before the fix a
/// GET with `X-HTTP-Method-Override: DELETE` was allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_override_naming_another_method_is_refused_at_every_entry() {
    let mut app = keygate().await;
    let (_, secret) = app.create_key("acct_mo", &["applications:read"], &[]).await;
    for (name, value) in [
        ("x-http-method-override", "DELETE"),
        ("X-Method-Override", "delete"),
        ("x-http-method", "GET, DELETE"),
        ("x_http_method_override", "PUT"),
    ] {
        let override_ = [(name, value)];
        let refused = app.authorizer.authorize(pb::AuthorizeRequest {
            credential: secret.clone(),
            method: "GET".into(),
            path: APPS.into(),
            headers: HashMap::from([(name.to_owned(), value.to_owned())]),
            ..Default::default()
        });
        let status = refused.await.expect_err("Authorize refuses the request");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{name}: {status:?}");
        assert!(status.message().contains("another method"), "{status:?}");
        let with_key = [("x-api-key", secret.as_str()), (name, value)];
        assert_eq!(check(&app, "GET", APPS, &with_key).await, (400, "bad_request".into()), "{name}");
        if !name.contains('_') {
            let asked =
                [("x-forwarded-method", "GET"), ("x-forwarded-uri", APPS), ("x-api-key", &secret), override_[0]];
            assert_eq!(forward_auth(&app, &asked).await, (400, "bad_request".into()), "{name}");
        }
    }
    let same = [("x-http-method-override", "get")];
    assert_eq!(authorize(&mut app, &secret, "GET", APPS, &same).await, (200, String::new()));
    let with_key = [("x-api-key", secret.as_str()), same[0]];
    assert_eq!(check(&app, "GET", APPS, &with_key).await, (200, String::new()));
}

/// Issue 28 item 11, through the real proxies with the shipped configurations: an override
/// naming another method is answered 400, one naming the same method never reaches the
/// upstream, and a client's repeated X-Forwarded-Uri is replaced by the proxy's own.
/// Before the fix the DELETE override passed keygate and reached the upstream.
async fn overrides_through(kind: Kind) {
    let mut app = keygate().await;
    let upstream = echo_upstream().await;
    let Some(proxy) = Proxy::start(kind, &host_port(app.http_url.as_ref().unwrap()), &upstream).await else {
        return;
    };
    let (_, reader) = app.create_key("acct_px", &["applications:read"], &[]).await;
    let client = reqwest::Client::new();
    let get = || client.get(format!("{}{APPS}", proxy.url)).header("x-api-key", &reader);
    assert_envelope(kind, &call(get().header("x-http-method-override", "DELETE")).await, Code::BadRequest);
    let same =
        get().header("x-http-method-override", "GET").header("x-method-override", "GET").header("x-http-method", "GET");
    let (status, _, echoed, _) = call(same).await;
    assert_eq!(status, 200, "{kind:?}: {echoed}");
    let seen = &serde_json::from_str::<Value>(&echoed).unwrap()["headers"];
    for name in keygate_api::edge::METHOD_OVERRIDE_HEADERS {
        assert!(seen.get(name).is_none(), "{kind:?}: the upstream saw {name}: {seen}");
    }
    // The proxy writes the original request itself: a client's lines are never read.
    let spoofed = client
        .get(format!("{}{APPS}", proxy.url))
        .header("x-forwarded-uri", "/api/v1/health")
        .header("x-forwarded-uri", "/api/v1/health");
    assert_envelope(kind, &call(spoofed).await, Code::ApiKeyInvalid);
}

/// Issue 28 item 11 (keygate's override refusal and the shipped nginx configuration's
/// stripping): see [`overrides_through`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_overrides_never_reach_the_upstream_through_a_real_nginx() {
    overrides_through(Kind::Nginx).await
}

/// Issue 28 item 11 (keygate's override refusal and the shipped Caddy configuration's
/// stripping): see [`overrides_through`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_overrides_never_reach_the_upstream_through_a_real_caddy() {
    overrides_through(Kind::Caddy).await
}

/// Issue 28 item 11 (keygate's override refusal and the shipped Traefik configuration's
/// stripping): see [`overrides_through`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_overrides_never_reach_the_upstream_through_a_real_traefik() {
    overrides_through(Kind::Traefik).await
}

/// Issue 28 item 12: every spelling of the application id that a common upstream framework
/// reads names the application for keygate too, at Authorize, Check and forward auth, and
/// one that disagrees is 400 bad_request. Before the fix a key restricted to M was allowed
/// with `?application_id=M&x=1;application_id=V` (and each spelling below).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spelling_of_the_application_id_is_read_at_every_entry() {
    let mut app = keygate().await;
    let (m, v) = (app.create_app("acct_sp").await.id, app.create_app("acct_sp").await.id);
    let (_, secret) = app.create_key("acct_sp", &["applications:write"], &[&m]).await;
    let spellings: [(&str, String, Headers); 5] = [
        ("';' separates pairs", format!("application_id={m}&x=1;application_id={v}"), vec![]),
        ("PHP reads '.' as '_'", format!("application_id={m}&application.id={v}"), vec![]),
        ("PHP reads ' ' as '_'", format!("application_id={m}&application+id={v}"), vec![]),
        ("PHP reads '[' as '_'", format!("application_id={m}&application[id={v}"), vec![]),
        ("CGI reads '_' as '-'", format!("application_id={m}"), vec![("x-application_id", v.as_str())]),
    ];
    for (what, query, headers) in &spellings {
        let path = format!("{ROTATE}?{query}");
        let got = authorize(&mut app, &secret, "PATCH", &path, headers).await;
        assert_eq!(got, (400, "bad_request".into()), "Authorize: {what}");
        let mut with_key = headers.clone();
        with_key.push(("x-api-key", &secret));
        assert_eq!(check(&app, "PATCH", &path, &with_key).await, (400, "bad_request".into()), "Check: {what}");
        with_key.extend([("x-forwarded-method", "PATCH"), ("x-forwarded-uri", path.as_str())]);
        assert_eq!(forward_auth(&app, &with_key).await, (400, "bad_request".into()), "forward auth: {what}");
    }
    // A second spelling in Authorize's (and Check's) header map.
    let two = [("x-application-id", m.as_str()), ("X-Application-Id", v.as_str())];
    assert_eq!(authorize(&mut app, &secret, "PATCH", ROTATE, &two).await, (400, "bad_request".into()));
    let with_key = [two[0], two[1], ("x-api-key", secret.as_str())];
    assert_eq!(check(&app, "PATCH", ROTATE, &with_key).await, (400, "bad_request".into()));
    // The same application under every spelling is one naming (the route allows two
    // rotations an hour per application: a new hour for each entry).
    let path = format!("{ROTATE}?application_id={m};application.id={m}");
    let agreeing = [("x-application_id", m.as_str()), ("X-Application-Id", m.as_str())];
    assert_eq!(authorize(&mut app, &secret, "PATCH", &path, &agreeing).await, (200, String::new()));
    app.clock.advance(Duration::from_secs(3601));
    let with_key = [agreeing[0], ("x-api-key", secret.as_str())];
    assert_eq!(check(&app, "PATCH", &path, &with_key).await, (200, String::new()));
    app.clock.advance(Duration::from_secs(3601));
    let asked = [with_key[0], with_key[1], ("x-forwarded-method", "PATCH"), ("x-forwarded-uri", path.as_str())];
    assert_eq!(forward_auth(&app, &asked).await, (200, String::new()));
}

/// `keygate serve` with `env`, until it exits (at most 60 s): everything it printed.
fn serve_output(env: &[(&str, &str)]) -> (bool, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"));
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .env("KEYGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("KEYGATE_DIGEST_KEY", DIGEST_KEY)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("the keygate binary starts");
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), said)
}

/// Issue 28 item 13: a database password holding an unencoded '?', a Redis password
/// holding one, and an unknown connect parameter's value (which sqlx's warning printed)
/// never appear in what `keygate serve` prints; the URL and the parameter are still named.
/// Before the fix the masking split the URL at the password's '?' and printed the rest,
/// and sqlx printed `sslpassword`'s value.
#[test]
fn no_secret_of_a_database_or_redis_url_reaches_the_output() {
    let (ok, said) = serve_output(&[("KEYGATE_DATABASE_URL", "postgres://kg:pw?Sekr1t-one@127.0.0.1:1/db")]);
    assert!(!ok, "{said}");
    assert!(said.contains("postgres://kg:***@127.0.0.1:1/db"), "the URL is named, masked: {said}");
    assert!(!said.contains("Sekr1t") && !said.contains("pw?"), "{said}");

    let (ok, said) = serve_output(&[(
        "KEYGATE_DATABASE_URL",
        "postgres://kg@127.0.0.1:1/db?sslmode=disable&sslpassword=Sekr1t-two",
    )]);
    assert!(!ok, "{said}");
    assert!(said.contains("unknown connect parameter(s) sslpassword"), "{said}");
    assert!(!said.contains("Sekr1t"), "{said}");

    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}/k.db?mode=rwc", dir.path().display());
    let redis = [
        ("KEYGATE_DATABASE_URL", sqlite.as_str()),
        ("KEYGATE_RATE_LIMIT_STORE", "redis://:pw?Sekr1t-three@127.0.0.1:1/0"),
    ];
    let (ok, said) = serve_output(&redis);
    assert!(!ok, "{said}");
    assert!(said.contains("redis://:***@127.0.0.1:1/0"), "the URL is named, masked: {said}");
    assert!(!said.contains("Sekr1t") && !said.contains("pw?"), "{said}");
}
