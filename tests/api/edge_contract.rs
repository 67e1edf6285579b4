//! The edge contract: keygate decides on exactly what real edges send. Envoy's Check sends
//! headers (and a body only with `with_request_body`), never an `application_id`; the
//! layer sends what an axum service received; Authorize's callers send what they choose.

use crate::example;
use crate::helpers::{Db, TestApp, TestDb};
use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse, HttpResponse};
use envoy_types::pb::envoy::config::core::v3::{address, socket_address, Address, SocketAddress};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use keygate::grpc::proto as pb;
use keygate_client::{KeygateClient, KeygateLayer};
use serde_json::{json, Value};
use std::collections::HashMap;

const ROTATE: &str = "/api/v1/panel/update-api-keys";

/// What Envoy sends: the peer it saw, the request's headers (lower-case names), and the
/// body only when `with_request_body` is on.
pub fn envoy_check(source: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: source.into(),
                        port_specifier: Some(socket_address::PortSpecifier::PortValue(41_000)),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            }),
            request: Some(Request {
                http: Some(HttpRequest {
                    method: method.into(),
                    path: path.into(),
                    headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                    body: body.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

async fn check(app: &TestApp, request: CheckRequest) -> CheckResponse {
    AuthorizationClient::new(app.channel.clone()).check(request).await.expect("Check answers").into_inner()
}

/// The HTTP status Envoy would answer with: 200 for an allow, the deny's status otherwise.
fn status_of(response: &CheckResponse) -> i32 {
    match &response.http_response {
        Some(HttpResponse::OkResponse(_)) => 200,
        Some(HttpResponse::DeniedResponse(denied)) => denied.status.as_ref().unwrap().code,
        other => panic!("no HTTP response: {other:?}"),
    }
}

fn denied_body(response: &CheckResponse) -> Value {
    let Some(HttpResponse::DeniedResponse(denied)) = &response.http_response else {
        panic!("expected a deny, got {response:?}")
    };
    serde_json::from_str(&denied.body).unwrap()
}

async fn spawn_edge(layer: KeygateLayer) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { example::serve(listener, layer).await.unwrap() });
    format!("http://{address}")
}

async fn http(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rotation_route_is_limited_per_application_and_restricted_at_every_edge() {
    let mut app = TestApp::spawn(Db::Sqlite).await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(app.create_app("acct_rot").await.id);
    }
    let elsewhere = app.create_app("acct_rot").await.id;
    let restricted: Vec<&str> = ids.iter().map(String::as_str).collect();
    let (_, key) = app.create_key("acct_rot", &["applications:write"], &restricted).await;
    let (via_authorize, via_headers, via_body, via_layer) = (&ids[0], &ids[1], &ids[2], &ids[3]);

    // Authorize without application_id, the body naming the application.
    let rotate = |body: Value| pb::AuthorizeRequest {
        credential: key.clone(),
        method: "PATCH".into(),
        path: ROTATE.into(),
        body: body.to_string().into_bytes(),
        ..Default::default()
    };
    for _ in 0..2 {
        let r = app.authorize_with(rotate(json!({ "application_id": via_authorize }))).await;
        assert!(r.allowed, "{r:?}");
        assert_eq!(&r.application_id, via_authorize);
    }
    let r = app.authorize_with(rotate(json!({ "application_id": via_authorize }))).await;
    assert_eq!((r.code.as_str(), r.http_status), ("rate_limit_reached", 429), "the third rotation in an hour");
    assert!(r.retry_after_seconds > 0);
    // Naming no application is a bad request, never an unlimited allow.
    let r = app.authorize_with(rotate(json!({ "other": 1 }))).await;
    assert_eq!((r.code.as_str(), r.http_status), ("bad_request", 400), "{r:?}");
    assert!(r.message.contains("application id is required"), "{}", r.message);
    // A key restricted to A cannot act on B.
    let r = app.authorize_with(rotate(json!({ "application_id": elsewhere }))).await;
    assert_eq!(r.code, "application_forbidden");
    // The stated application_id and the body must agree.
    let r = app
        .authorize_with(pb::AuthorizeRequest {
            application_id: via_headers.clone(),
            ..rotate(json!({ "application_id": elsewhere }))
        })
        .await;
    assert_eq!((r.code.as_str(), r.http_status), ("bad_request", 400), "{r:?}");

    // Envoy's Check, headers only: the application in a header.
    let bearer = format!("Bearer {key}");
    let by_header = |application: &str| {
        let headers = [("authorization", bearer.as_str()), ("x-application-id", application)];
        envoy_check("203.0.113.7", "PATCH", ROTATE, &headers, "")
    };
    for expected in [200, 200, 429] {
        assert_eq!(status_of(&check(&app, by_header(via_headers)).await), expected);
    }
    assert_eq!(denied_body(&check(&app, by_header(&elsewhere)).await)["code"], "application_forbidden");
    let none = check(&app, envoy_check("203.0.113.7", "PATCH", ROTATE, &[("authorization", &bearer)], "")).await;
    assert_eq!((status_of(&none), denied_body(&none)["code"].as_str()), (400, Some("bad_request")));

    // Check with the JSON body, as Envoy's with_request_body sends it.
    let by_body = |application: &str| {
        let body = json!({ "application_id": application, "rotate": true }).to_string();
        envoy_check("203.0.113.7", "PATCH", ROTATE, &[("authorization", &bearer)], &body)
    };
    for expected in [200, 200, 429] {
        assert_eq!(status_of(&check(&app, by_body(via_body)).await), expected);
    }
    assert_eq!(denied_body(&check(&app, by_body(&elsewhere)).await)["code"], "application_forbidden");
    // A header and a body that disagree: the upstream might read either.
    let body = json!({ "application_id": elsewhere }).to_string();
    let split = envoy_check(
        "203.0.113.7",
        "PATCH",
        ROTATE,
        &[("authorization", &bearer), ("x-application-id", via_body)],
        &body,
    );
    assert_eq!(denied_body(&check(&app, split).await)["code"], "bad_request");

    // The layer, over real HTTP through the example edge: header or query.
    let edge = spawn_edge(KeygateLayer::new(KeygateClient::connect_lazy(&app.address).unwrap())).await;
    let client = reqwest::Client::new();
    let patch = |query: &str| client.patch(format!("{edge}{ROTATE}{query}")).header("x-api-key", &key);
    let (status, body) = http(patch("").header("x-application-id", via_layer)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["rotated"], via_layer.as_str());
    assert_eq!(http(patch(&format!("?application_id={via_layer}"))).await.0, 200);
    let (status, body) = http(patch("").header("x-application-id", via_layer)).await;
    assert_eq!((status, body["code"].as_str()), (429, Some("rate_limit_reached")));
    let (status, body) = http(patch("").header("x-application-id", &elsewhere)).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("application_forbidden")));
    let (status, body) = http(patch("")).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("bad_request")));
    let (status, body) =
        http(patch(&format!("?application_id={elsewhere}")).header("x-application-id", via_layer)).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("bad_request")), "query and header disagree");
}

/// A policy whose one route allows one call per client address per hour.
const ONE_PER_ADDRESS: &str = r#"
[[routes]]
route = "GET /api/v1/panel/applications"

[[routes.limits]]
limit = 1
window = "hour"
per = "ip"
"#;

async fn spawn_with_policy(policy: &str, trusted_proxy_hops: usize) -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, policy).unwrap();
    let db = TestDb::new(Db::Sqlite).await.unwrap();
    let app = TestApp::spawn_on(db, move |s| {
        s.policy = Some(path);
        s.edge.trusted_proxy_hops = trusted_proxy_hops;
    })
    .await;
    (app, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_addresses_are_counted_under_the_trusted_hop_rule_at_every_edge() {
    const APPS: &str = "/api/v1/panel/applications";
    // No trusted hop: the address the edge saw, whatever x-forwarded-for says.
    let (mut app, _dir) = spawn_with_policy(ONE_PER_ADDRESS, 0).await;
    let (_, key) = app.create_key("acct_ip", &["*"], &[]).await;
    let from = |source: &str, xff: &str| {
        envoy_check(source, "GET", APPS, &[("x-api-key", key.as_str()), ("x-forwarded-for", xff)], "")
    };
    assert_eq!(status_of(&check(&app, from("203.0.113.7", "198.51.100.1")).await), 200);
    assert_eq!(status_of(&check(&app, from("203.0.113.7", "198.51.100.2")).await), 429, "a spoofed XFF is ignored");
    assert_eq!(status_of(&check(&app, from("203.0.113.8", "198.51.100.1")).await), 200);
    // Authorize: one spelling per address, and IPv6 counted per /64.
    let ask = |ip: &str| pb::AuthorizeRequest { client_ip: ip.into(), ..crate::helpers::ask(&key) };
    assert!(app.authorize_with(ask("::ffff:192.0.2.1")).await.allowed);
    assert_eq!(app.authorize_with(ask("192.0.2.1")).await.code, "rate_limit_reached");
    assert!(app.authorize_with(ask("2001:db8:0:1::1")).await.allowed);
    assert_eq!(app.authorize_with(ask("2001:db8:0:1:ffff::9")).await.code, "rate_limit_reached");
    assert!(app.authorize_with(ask("2001:db8:0:2::1")).await.allowed);
    // A route that counts per address, asked without one: refused, not unlimited.
    let r = app.authorize(&key, "GET", APPS).await;
    assert_eq!((r.code.as_str(), r.http_status), ("bad_request", 400), "{r:?}");
    // The layer: the TCP peer (127.0.0.1), whatever x-forwarded-for says.
    let edge = spawn_edge(KeygateLayer::new(KeygateClient::connect_lazy(&app.address).unwrap())).await;
    let client = reqwest::Client::new();
    let get = |xff: &str| client.get(format!("{edge}{APPS}")).header("x-api-key", &key).header("x-forwarded-for", xff);
    assert_eq!(http(get("198.51.100.3")).await.0, 200);
    assert_eq!(http(get("198.51.100.4")).await.0, 429, "a spoofed XFF is ignored behind the layer");

    // One trusted hop (a proxy in front): the entry it appended, never the client's own.
    let (mut app, _dir) = spawn_with_policy(ONE_PER_ADDRESS, 1).await;
    let (_, key) = app.create_key("acct_ip", &["*"], &[]).await;
    let via_proxy =
        |xff: &str| envoy_check("10.0.0.2", "GET", APPS, &[("x-api-key", key.as_str()), ("x-forwarded-for", xff)], "");
    assert_eq!(status_of(&check(&app, via_proxy("6.6.6.6, 198.51.100.10")).await), 200);
    assert_eq!(status_of(&check(&app, via_proxy("7.7.7.7, 198.51.100.10")).await), 429);
    assert_eq!(status_of(&check(&app, via_proxy("6.6.6.6, 198.51.100.11")).await), 200);
    let edge =
        spawn_edge(KeygateLayer::new(KeygateClient::connect_lazy(&app.address).unwrap()).trusted_proxy_hops(1)).await;
    let get = |xff: &str| client.get(format!("{edge}{APPS}")).header("x-api-key", &key).header("x-forwarded-for", xff);
    assert_eq!(http(get("6.6.6.6, 198.51.100.20")).await.0, 200);
    assert_eq!(http(get("7.7.7.7, 198.51.100.20")).await.0, 429);
    assert_eq!(http(get("198.51.100.21")).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_x_keygate_header_the_client_sent_reaches_the_upstream() {
    let mut app = TestApp::spawn(Db::Sqlite).await.unwrap();
    let application = app.create_app("acct_ns").await;
    let (key, secret) = app.create_key("acct_ns", &["*"], &[]).await;
    let spoofed = [
        ("x-api-key", secret.as_str()),
        ("x-keygate-application-id", "app_spoofed"),
        ("x-keygate-account-id", "acct_admin"),
        ("x-keygate-anything", "1"),
        ("x-keygate-", "bare"),
    ];
    // Check: names keygate sets are overwritten, every other one is removed.
    let path = format!("/api/v1/panel/applications/{}", application.id);
    let response = check(&app, envoy_check("203.0.113.7", "GET", &path, &spoofed, "")).await;
    let Some(HttpResponse::OkResponse(ok)) = &response.http_response else { panic!("{response:?}") };
    let set: HashMap<_, _> =
        ok.headers.iter().map(|h| h.header.as_ref().unwrap()).map(|h| (h.key.as_str(), h.value.as_str())).collect();
    assert_eq!(set.get("x-keygate-application-id"), Some(&application.id.as_str()));
    assert_eq!(set.get("x-keygate-account-id"), Some(&"acct_ns"));
    assert_eq!(set.get("x-keygate-key-id"), Some(&key.id.as_str()));
    for name in ["x-keygate-anything", "x-keygate-"] {
        assert!(ok.headers_to_remove.iter().any(|h| h == name), "{name} reaches the upstream: {ok:?}");
    }
    // On a route about no application, the spoofed application header goes too.
    let response = check(&app, envoy_check("203.0.113.7", "GET", "/api/v1/panel/applications", &spoofed, "")).await;
    let Some(HttpResponse::OkResponse(ok)) = &response.http_response else { panic!("{response:?}") };
    assert!(ok.headers_to_remove.iter().any(|h| h == "x-keygate-application-id"), "{ok:?}");

    // The layer: the handler sees none of them.
    use axum::routing::get;
    let layer = KeygateLayer::new(KeygateClient::connect_lazy(&app.address).unwrap());
    let echo = axum::Router::new()
        .route(
            "/api/v1/panel/applications",
            get(|headers: axum::http::HeaderMap| async move {
                let seen: Vec<String> =
                    headers.keys().map(|k| k.as_str().to_owned()).filter(|k| k.starts_with("x-keygate")).collect();
                axum::Json(json!({ "seen": seen }))
            }),
        )
        .layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, echo).await.unwrap() });
    let mut request = reqwest::Client::new().get(format!("http://{address}/api/v1/panel/applications"));
    for (name, value) in spoofed {
        request = request.header(name, value);
    }
    let (status, body) = http(request.header("X-Keygate-Mixed-Case", "1")).await;
    assert_eq!((status, &body["seen"]), (200, &json!([])), "{body}");
}
