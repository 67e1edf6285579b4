//! Envoy's ext_authz `Check`, driven by a real tonic client with Envoy's own message types.

use crate::helpers::{Db, TestApp, TestDb};
use crate::sessions::create_session;
use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse, HttpResponse};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use keygate::code::Code;
use std::collections::HashMap;
use std::time::Duration;

/// What Envoy sends, from the client address the tests use.
fn check_request(method: &str, path: &str, headers: &[(&str, &str)]) -> CheckRequest {
    crate::edge_contract::envoy_check("203.0.113.7", method, path, headers, "")
}

async fn check(app: &TestApp, method: &str, path: &str, headers: &[(&str, &str)]) -> CheckResponse {
    let mut client = AuthorizationClient::new(app.channel.clone());
    client.check(check_request(method, path, headers)).await.expect("Check answers").into_inner()
}

/// A denied response's HTTP status, headers and body.
fn denied(response: &CheckResponse) -> (i32, HashMap<String, String>, String) {
    let Some(HttpResponse::DeniedResponse(denied)) = &response.http_response else {
        panic!("expected a denied response, got {response:?}")
    };
    assert_ne!(response.status.as_ref().unwrap().code, 0, "a deny carries a non-OK status");
    let headers = denied.headers.iter().map(|h| h.header.as_ref().unwrap()).map(|h| (h.key.clone(), h.value.clone()));
    (denied.status.as_ref().unwrap().code, headers.collect(), denied.body.clone())
}

fn assert_denied(response: &CheckResponse, status: i32, code: Code, message: &str) {
    let (got_status, headers, body) = denied(response);
    assert_eq!(got_status, status, "{body}");
    assert_eq!(headers.get("content-type").map(String::as_str), Some("application/json"));
    assert_eq!(body, format!(r#"{{"success":false,"code":"{}","message":"{message}"}}"#, code.as_str()));
}

#[tokio::test]
async fn check_answers_every_code_with_the_pages_envelope() {
    let mut app = TestApp::spawn(Db::Sqlite).await.unwrap();
    let mine = app.create_app("acct_e").await;
    let theirs = app.create_app("acct_x").await;
    let (_, reader) = app.create_key("acct_e", &["applications:read"], &[&mine.id]).await;
    let bearer = format!("Bearer {reader}");
    let apps = "/api/v1/panel/applications";
    let mine_path = format!("{apps}/{}", mine.id);

    assert_denied(&check(&app, "GET", "/nowhere", &[]).await, 404, Code::NotFound, "no route matches the request");
    assert_denied(&check(&app, "GET", apps, &[]).await, 401, Code::ApiKeyInvalid, "no credential was presented");
    let response = check(&app, "GET", apps, &[("authorization", "Bearer kg_bogus")]).await;
    assert_denied(&response, 401, Code::ApiKeyInvalid, "the credential has the wrong length");
    let response = check(&app, "PATCH", &mine_path, &[("authorization", &bearer)]).await;
    assert_denied(&response, 403, Code::InsufficientScope, "the key does not include the scope applications:write");
    let other_app = app.create_app("acct_e").await;
    let response = check(&app, "GET", &format!("{apps}/{}", other_app.id), &[("x-api-key", &reader)]).await;
    let message = format!("the key is restricted away from application {}", other_app.id);
    assert_denied(&response, 403, Code::ApplicationForbidden, &message);
    let response = check(&app, "GET", &format!("{apps}/{}", theirs.id), &[("x-api-key", &reader)]).await;
    assert_denied(&response, 404, Code::NotFound, "the application was not found for the account");
    let response = check(&app, "POST", "/api/v1/panel/api-keys", &[("authorization", &bearer)]).await;
    assert_denied(&response, 403, Code::SessionRequired, Code::SessionRequired.default_message());
    let response = check(&app, "POST", "/api/v1/panel/api-keys", &[("cookie", "keygate_session=kgs_nope")]).await;
    assert_denied(&response, 401, Code::Unauth, "the credential has the wrong length");

    // Expired, then revoked.
    let created = app
        .admin
        .create_api_key(keygate::grpc::proto::CreateApiKeyRequest {
            account_id: "acct_e".into(),
            name: "soon".into(),
            scopes: vec!["*".into()],
            expires_at: Some(prost_types::Timestamp {
                seconds: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
                    + 60,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    app.clock.advance(Duration::from_secs(61));
    let response = check(&app, "GET", apps, &[("x-api-key", &created.secret)]).await;
    assert_denied(&response, 401, Code::ApiKeyExpired, Code::ApiKeyExpired.default_message());
    app.admin
        .revoke_api_key(keygate::grpc::proto::RevokeApiKeyRequest {
            id: created.key.unwrap().id,
            reason: String::new(),
        })
        .await
        .unwrap();
    let response = check(&app, "GET", apps, &[("x-api-key", &created.secret)]).await;
    assert_denied(&response, 401, Code::ApiKeyRevoked, "API key has been revoked");

    // 429 with retry-after.
    let (_, session) = create_session(&mut app, "acct_e", 86_400).await;
    let cookie = format!("theme=dark; keygate_session={session}");
    for _ in 0..10 {
        let response = check(&app, "POST", "/api/v1/panel/api-keys", &[("cookie", &cookie)]).await;
        assert!(matches!(response.http_response, Some(HttpResponse::OkResponse(_))));
    }
    let response = check(&app, "POST", "/api/v1/panel/api-keys", &[("cookie", &cookie)]).await;
    let (status, headers, body) = denied(&response);
    assert_eq!((status, headers.get("retry-after").map(String::as_str)), (429, Some("3600")));
    assert_eq!(
        body,
        r#"{"success":false,"code":"rate_limit_reached","message":"rate limit of 10 reached; retry after 3600 s"}"#
    );

    // A request without HTTP attributes is malformed.
    let mut client = AuthorizationClient::new(app.channel.clone());
    let response = client.check(CheckRequest::default()).await.unwrap().into_inner();
    assert_denied(&response, 400, Code::ValidationError, "the check request has no HTTP attributes");
}

#[tokio::test]
async fn an_allowed_check_tells_the_upstream_who_called_and_strips_what_it_must() {
    let db = TestDb::new(Db::Sqlite).await.unwrap();
    let mut app = TestApp::spawn_on(db, |s| s.ext_authz.strip_credential = true).await;
    let (key, secret) = app.create_key("acct_ok", &["applications:read", "logs:*"], &[]).await;
    let response = check(
        &app,
        "GET",
        "/api/v1/panel/applications?page=2",
        &[("x-api-key", &secret), ("x-keygate-user-id", "spoofed")],
    )
    .await;
    assert_eq!(response.status.as_ref().unwrap().code, 0);
    let Some(HttpResponse::OkResponse(ok)) = response.http_response else { panic!("expected an allow") };
    let added: HashMap<_, _> =
        ok.headers.iter().map(|h| h.header.as_ref().unwrap()).map(|h| (h.key.as_str(), h.value.as_str())).collect();
    assert_eq!(added.get("x-keygate-account-id"), Some(&"acct_ok"));
    assert_eq!(added.get("x-keygate-key-id"), Some(&key.id.as_str()));
    assert_eq!(added.get("x-keygate-scopes"), Some(&"applications:read,logs:*"));
    assert_eq!(added.get("x-keygate-principal-kind"), Some(&"api_key"));
    assert!(ok.headers_to_remove.contains(&"x-api-key".to_owned()), "the credential does not go upstream");
    assert!(ok.headers_to_remove.contains(&"x-keygate-user-id".to_owned()), "spoofed principal headers go");
    assert!(!ok.headers_to_remove.contains(&"x-keygate-key-id".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_fails_closed_with_the_pages_500_when_the_store_is_down() {
    let Some(db) = TestDb::new(Db::Postgres).await else {
        eprintln!("skipped: KEYGATE_TEST_POSTGRES_URL is not set");
        return;
    };
    let relay = crate::relay::Relay::start(crate::relay::target_of(&db.url)).await;
    let mut app = TestApp::spawn_url(&relay.url_for(&db.url), |s| {
        s.database_max_connections = 2;
    })
    .await;
    let (_, secret) = app.create_key("acct_down", &["*"], &[]).await;
    relay.cut();
    // A key keygate has never seen needs the store: no decision, so the page's 500 deny.
    let unknown = keygate::domain::GeneratedKey::generate().unwrap().into_secret_string();
    let response = check(&app, "GET", "/api/v1/panel/applications", &[("x-api-key", &unknown)]).await;
    assert_eq!(response.status.as_ref().unwrap().code, tonic::Code::Internal as i32);
    let (status, headers, body) = denied(&response);
    assert_eq!((status, headers.get("content-type").map(String::as_str)), (500, Some("application/json")));
    let envelope: keygate::code::Envelope = serde_json::from_str(&body).unwrap();
    assert_eq!((envelope.success, envelope.code.as_str()), (false, "INTERNAL_ERROR"));
    assert!(envelope.message.contains("error id"), "{}", envelope.message);
    assert!(!body.contains(&secret) && !body.contains("sql"), "{body}");
}
