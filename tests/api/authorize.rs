//! Every row of the decision table, through the real server.

use crate::backend_tests;
use crate::helpers::{reason, Db, TestApp};
use keygate::grpc::proto as pb;
use std::time::Duration;

const APPS: &str = "/api/v1/panel/applications";

fn app_path(id: &str) -> String {
    format!("{APPS}/{id}")
}

backend_tests!(
    decision_table,
    revoke_takes_effect_on_the_next_call,
    expiry_follows_the_clock,
    scope_update_takes_effect_at_once,
    cache_hits_run_no_argon2,
);

async fn decision_table(db: Db) {
    let Some(mut app) = TestApp::spawn(db).await else {
        return;
    };
    let mine = app.create_app("acct_a").await;
    let other = app.create_app("acct_a").await;
    let theirs = app.create_app("acct_b").await;
    let (key, secret) = app.create_key("acct_a", &["applications:read"], &[]).await;
    let (_, restricted) = app.create_key("acct_a", &["applications:*"], &[&mine.id]).await;

    // Allowed: principal, route and the application from the path.
    let ok = app.authorize(&secret, "GET", &app_path(&mine.id)).await;
    assert!(ok.allowed, "{ok:?}");
    assert_eq!((ok.code.as_str(), ok.http_status), ("", 200));
    assert_eq!(ok.route, "GET /api/v1/panel/applications/{application_id}");
    assert_eq!(ok.application_id, mine.id);
    let principal = ok.principal.unwrap();
    assert_eq!((principal.key_id.as_str(), principal.account_id.as_str()), (key.id.as_str(), "acct_a"));
    assert_eq!(principal.scopes, ["applications:read"]);

    // 1. No route.
    let r = app.authorize(&secret, "GET", "/api/v1/nothing-here").await;
    assert_eq!((r.allowed, r.code.as_str(), r.http_status), (false, "not_found", 404));
    let r = app.authorize(&secret, "DELETE", "/api/v1/panel/api-keys").await;
    assert_eq!(r.code, "not_found");

    // 2. No credential.
    let r = app.authorize("", "GET", APPS).await;
    assert_eq!((r.code.as_str(), r.http_status), ("api_key_invalid", 401));

    // 3. Malformed, decided before any argon2 work.
    let before = app.verifications();
    let mut bad_checksum = secret.clone().into_bytes();
    let last = bad_checksum.len() - 1;
    bad_checksum[last] = if bad_checksum[last] == b'a' { b'b' } else { b'a' };
    for garbage in [
        "sk_live_123".to_owned(),
        String::from_utf8(bad_checksum).unwrap(),
        "kg_".to_owned() + &"x".repeat(10_000),
        "kg_ключ🔑".to_owned(),
        "Bearer ".to_owned() + &secret,
        secret[..secret.len() - 1].to_owned(),
    ] {
        let r = app.authorize(&garbage, "GET", APPS).await;
        assert_eq!((r.code.as_str(), r.http_status), ("api_key_invalid", 401), "{garbage:.40}");
        assert!(!r.message.contains(&garbage), "the message must not echo the credential");
        assert!(r.principal.is_none());
    }
    assert_eq!(app.verifications(), before, "malformed credentials cost no argon2");

    // 4. Unknown key id (well-formed) and wrong secret: the same answer.
    let unknown = keygate::domain::GeneratedKey::generate().unwrap().into_secret_string();
    let r = app.authorize(&unknown, "GET", APPS).await;
    assert_eq!(r.code, "api_key_invalid");
    let wrong_secret = forge_with_key_id(&secret);
    let r = app.authorize(&wrong_secret, "GET", APPS).await;
    assert_eq!(r.code, "api_key_invalid");
    assert!(r.principal.is_none());

    // 6. Applications: absent, another account's, restricted away.
    let r = app.authorize(&secret, "GET", &app_path("app_doesnotexist")).await;
    assert_eq!((r.code.as_str(), r.http_status), ("not_found", 404));
    let r = app.authorize(&secret, "GET", &app_path(&theirs.id)).await;
    assert_eq!(r.code, "not_found", "another account's application is not found");
    let r = app.authorize(&restricted, "GET", &app_path(&other.id)).await;
    assert_eq!((r.code.as_str(), r.http_status), ("application_forbidden", 403));
    assert!(app.authorize(&restricted, "GET", &app_path(&mine.id)).await.allowed);
    // The request's application_id wins over the path.
    let r = app
        .authorize_with(pb::AuthorizeRequest {
            credential: restricted.clone(),
            method: "PATCH".into(),
            path: "/api/v1/panel/update-api-keys".into(),
            application_id: other.id.clone(),
            ..Default::default()
        })
        .await;
    assert_eq!(r.code, "application_forbidden");

    // 7. Scopes, from the route and from the request; wildcards.
    let r = app.authorize(&secret, "PATCH", &app_path(&mine.id)).await;
    assert_eq!((r.code.as_str(), r.http_status), ("insufficient_scope", 403));
    assert!(r.message.contains("applications:write"), "{}", r.message);
    assert!(app.authorize(&restricted, "PATCH", &app_path(&mine.id)).await.allowed);
    let r = app
        .authorize_with(pb::AuthorizeRequest {
            credential: secret.clone(),
            method: "GET".into(),
            path: APPS.into(),
            required_scopes: vec!["billing:read".into()],
            ..Default::default()
        })
        .await;
    assert_eq!(r.code, "insufficient_scope");
}

/// Same key id, a different secret, a valid checksum: passes parsing, fails argon2.
/// Built from the documented format (CRC-32 of the body, six base62 digits), independently
/// of keygate's own code.
pub fn forge_with_key_id(credential: &str) -> String {
    let other = keygate::domain::GeneratedKey::generate().unwrap().into_secret_string();
    let body = format!("{}{}", &credential[..19], &other[19..63]);
    let mut crc = !0u32;
    for &byte in body.as_bytes() {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { 0xEDB8_8320 ^ (crc >> 1) } else { crc >> 1 };
        }
    }
    let mut value = !crc;
    let alphabet = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut checksum = [b'0'; 6];
    for slot in checksum.iter_mut().rev() {
        *slot = alphabet[(value % 62) as usize];
        value /= 62;
    }
    let forged = body + std::str::from_utf8(&checksum).unwrap();
    assert!(keygate::domain::ApiKeyCredential::parse(&forged).is_ok());
    forged
}

async fn revoke_takes_effect_on_the_next_call(db: Db) {
    let Some(mut app) = TestApp::spawn(db).await else {
        return;
    };
    let (key, secret) = app.create_key("acct_a", &["*"], &[]).await;
    assert!(app.authorize(&secret, "GET", APPS).await.allowed);
    let revoked = app
        .admin
        .revoke_api_key(pb::RevokeApiKeyRequest { id: key.id.clone(), reason: "leaked".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.status, pb::ApiKeyStatus::Revoked as i32);
    assert_eq!(revoked.revoked_reason, "leaked");
    let r = app.authorize(&secret, "GET", APPS).await;
    assert_eq!((r.allowed, r.code.as_str(), r.http_status), (false, "api_key_revoked", 401));
    // Revoking again changes nothing.
    let again = app
        .admin
        .revoke_api_key(pb::RevokeApiKeyRequest { id: key.id.clone(), reason: "other".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((again.revoked_reason.as_str(), again.revoked_at), ("leaked", revoked.revoked_at));
    // A revoked key cannot be changed back.
    let err = app
        .admin
        .update_api_key(pb::UpdateApiKeyRequest { id: key.id, name: Some("revived".into()), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "bad_request");
}

async fn expiry_follows_the_clock(db: Db) {
    let Some(mut app) = TestApp::spawn(db).await else {
        return;
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    // The server's clock is a manual one started at "now"; expire an hour from it.
    let expires = prost_types::Timestamp { seconds: now.as_secs() as i64 + 3600, nanos: 0 };
    let created = app
        .admin
        .create_api_key(pb::CreateApiKeyRequest {
            account_id: "acct_a".into(),
            name: "short-lived".into(),
            scopes: vec!["*".into()],
            expires_at: Some(expires),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let secret = created.secret;
    assert!(app.authorize(&secret, "GET", APPS).await.allowed);
    app.clock.advance(Duration::from_secs(3599));
    assert!(app.authorize(&secret, "GET", APPS).await.allowed, "cached decisions never outlive expiry");
    app.clock.advance(Duration::from_secs(2));
    let r = app.authorize(&secret, "GET", APPS).await;
    assert_eq!((r.code.as_str(), r.http_status), ("api_key_expired", 401));
    // Extending the expiry brings it back at once.
    let later = prost_types::Timestamp { seconds: now.as_secs() as i64 + 7200, nanos: 0 };
    app.admin
        .update_api_key(pb::UpdateApiKeyRequest {
            id: created.key.unwrap().id,
            expires_at: Some(later),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(app.authorize(&secret, "GET", APPS).await.allowed);
}

async fn scope_update_takes_effect_at_once(db: Db) {
    let Some(mut app) = TestApp::spawn(db).await else {
        return;
    };
    let target = app.create_app("acct_a").await;
    let (key, secret) = app.create_key("acct_a", &["applications:read"], &[]).await;
    assert_eq!(app.authorize(&secret, "PATCH", &app_path(&target.id)).await.code, "insufficient_scope");
    app.admin
        .update_api_key(pb::UpdateApiKeyRequest {
            id: key.id.clone(),
            scopes: Some(pb::StringList { values: vec!["applications:write".into()] }),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(app.authorize(&secret, "PATCH", &app_path(&target.id)).await.allowed);
    assert_eq!(app.authorize(&secret, "GET", &app_path(&target.id)).await.code, "insufficient_scope");
    // And a restriction added later forbids at once too.
    let other = app.create_app("acct_a").await;
    app.admin
        .update_api_key(pb::UpdateApiKeyRequest {
            id: key.id,
            application_ids: Some(pb::StringList { values: vec![other.id.clone()] }),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(app.authorize(&secret, "PATCH", &app_path(&target.id)).await.code, "application_forbidden");
}

async fn cache_hits_run_no_argon2(db: Db) {
    let Some(mut app) = TestApp::spawn(db).await else {
        return;
    };
    let (_, secret) = app.create_key("acct_a", &["*"], &[]).await;
    let before = app.verifications();
    assert!(app.authorize(&secret, "GET", APPS).await.allowed);
    assert_eq!(app.verifications(), before + 1, "the first call verifies");
    for _ in 0..20 {
        assert!(app.authorize(&secret, "GET", APPS).await.allowed);
    }
    assert_eq!(app.verifications(), before + 1, "hits run no argon2");

    // Concurrent misses for one credential verify once.
    let (_, fresh) = app.create_key("acct_a", &["*"], &[]).await;
    let before = app.verifications();
    let calls = (0..16).map(|_| {
        let mut client = app.authorizer.clone();
        let credential = fresh.clone();
        tokio::spawn(async move {
            client
                .authorize(pb::AuthorizeRequest {
                    credential,
                    method: "GET".into(),
                    path: APPS.into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .allowed
        })
    });
    for call in calls.collect::<Vec<_>>() {
        assert!(call.await.unwrap());
    }
    assert_eq!(app.verifications(), before + 1, "concurrent misses share one verification");
}

#[tokio::test]
async fn malformed_requests_are_invalid_argument() {
    let mut app = TestApp::spawn(Db::Sqlite).await.unwrap();
    let cases = [
        pb::AuthorizeRequest { method: "".into(), path: "/x".into(), ..Default::default() },
        pb::AuthorizeRequest { method: "GET".into(), path: "no-slash".into(), ..Default::default() },
        pb::AuthorizeRequest { method: "GÉT".into(), path: "/x".into(), ..Default::default() },
        pb::AuthorizeRequest { method: "GET".into(), path: format!("/{}", "a".repeat(5000)), ..Default::default() },
        pb::AuthorizeRequest {
            method: "GET".into(),
            path: "/x".into(),
            required_scopes: vec!["a b".into()],
            ..Default::default()
        },
        pb::AuthorizeRequest {
            method: "GET".into(),
            path: "/x".into(),
            client_ip: "not-an-ip".into(),
            ..Default::default()
        },
    ];
    for case in cases {
        let err = app.authorizer.authorize(case.clone()).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{case:?}");
        assert_eq!(reason(&err), "VALIDATION_ERROR");
    }
}

/// The caller's id comes back. With none, and the Authorize span off (no log line would
/// carry an id: this test process logs nothing), none is made; `tests/hygiene.rs` has the
/// debug-level half, where one is made, logged and echoed.
#[tokio::test]
async fn request_ids_are_echoed_and_made_only_to_be_logged() {
    let mut app = TestApp::spawn(Db::Sqlite).await.unwrap();
    let call = || pb::AuthorizeRequest { method: "GET".into(), path: APPS.into(), ..Default::default() };
    let mut request = tonic::Request::new(call());
    request.metadata_mut().insert("x-request-id", "edge-42".parse().unwrap());
    let response = app.authorizer.authorize(request).await.unwrap();
    assert_eq!(response.metadata().get("x-request-id").unwrap(), "edge-42");
    // An id that is not one (too long) is not echoed, and none is made in its place.
    let mut request = tonic::Request::new(call());
    request.metadata_mut().insert("x-request-id", "x".repeat(300).parse().unwrap());
    let response = app.authorizer.authorize(request).await.unwrap();
    assert_eq!(response.metadata().get("x-request-id"), None);
    let response = app.authorizer.authorize(call()).await.unwrap();
    assert_eq!(response.metadata().get("x-request-id"), None);
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    let app = TestApp::spawn(Db::Sqlite).await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(app.channel.clone());
    for service in ["", "keygate.v1.Authorizer", "keygate.v1.Admin"] {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest { service: service.into() })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32, "{service:?}");
    }
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest,
        server_reflection_response::MessageResponse, ServerReflectionRequest,
    };
    let mut reflection = ServerReflectionClient::new(app.channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) = stream.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list")
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"keygate.v1.Authorizer") && names.contains(&"keygate.v1.Admin"), "{names:?}");
}

#[tokio::test]
async fn shutdown_stops_taking_calls() {
    let app = TestApp::spawn(Db::Sqlite).await.unwrap();
    let address = app.address.clone();
    app.stop().await;
    let reconnect = tonic::transport::Channel::from_shared(address).unwrap().connect().await;
    assert!(reconnect.is_err(), "the listener is closed after shutdown");
}

#[tokio::test]
async fn wrong_secrets_cost_bounded_argon2_and_a_spent_budget_says_so() {
    let db = crate::helpers::TestDb::new(Db::Sqlite).await.unwrap();
    let mut app = TestApp::spawn_on(db, |s| s.budgets.max_failures_per_key = 3).await;
    let (key, secret) = app.create_key("acct_bf", &["*"], &[]).await;
    assert!(app.authorize(&secret, "GET", APPS).await.allowed, "verified before the attack");
    wait_for_stored_digest(&app, &key.id).await;

    // A key verified once: any other credential for it is wrong at the cost of an HMAC.
    let before = app.verifications();
    for _ in 0..15 {
        assert_eq!(app.authorize(&forge_with_key_id(&secret), "GET", APPS).await.code, "api_key_invalid");
    }
    assert_eq!(app.verifications(), before, "no argon2 for guesses at a verified key");
    assert!(app.authorize(&secret, "GET", APPS).await.allowed, "the holder is recognised throughout");

    // A key nobody has verified yet: argon2 decides, at most 3 times per minute; then the
    // answer is a limit with a retry time, never "invalid" for a credential not checked.
    let (_, fresh) = app.create_key("acct_bf", &["*"], &[]).await;
    let wrong = forge_with_key_id(&fresh);
    let before = app.verifications();
    for _ in 0..5 {
        assert_eq!(app.authorize(&wrong, "GET", APPS).await.code, "api_key_invalid");
    }
    assert_eq!(app.verifications(), before + 1, "a repeated wrong secret is remembered");
    for _ in 0..2 {
        assert_eq!(app.authorize(&forge_with_key_id(&fresh), "GET", APPS).await.code, "api_key_invalid");
    }
    assert_eq!(app.verifications(), before + 3);
    let throttled = app.authorize(&forge_with_key_id(&fresh), "GET", APPS).await;
    assert_eq!((throttled.code.as_str(), throttled.http_status), ("rate_limit_reached", 429), "{throttled:?}");
    assert!(throttled.retry_after_seconds > 0);
    let holder = app.authorize(&fresh, "GET", APPS).await;
    assert_eq!(holder.code, "rate_limit_reached", "the holder too is told to retry, not that the key is invalid");
    assert_eq!(app.verifications(), before + 3);
}

#[tokio::test]
async fn one_client_guessing_across_many_keys_is_bounded_too() {
    let db = crate::helpers::TestDb::new(Db::Sqlite).await.unwrap();
    let mut app = TestApp::spawn_on(db, |s| s.budgets.max_failures_per_client = 2).await;
    let mut keys = Vec::new();
    for _ in 0..4 {
        keys.push(app.create_key("acct_ip", &["*"], &[]).await.1);
    }
    let from = |credential: &str, ip: &str| pb::AuthorizeRequest {
        credential: credential.into(),
        method: "GET".into(),
        path: APPS.into(),
        client_ip: ip.into(),
        ..Default::default()
    };
    let before = app.verifications();
    let mut codes = Vec::new();
    for key in &keys {
        codes.push(app.authorize_with(from(&forge_with_key_id(key), "198.51.100.9")).await.code);
    }
    assert_eq!(codes, ["api_key_invalid", "api_key_invalid", "rate_limit_reached", "rate_limit_reached"]);
    assert_eq!(app.verifications(), before + 2, "two failures from that client, then no more argon2");
    let unknown = keygate::domain::GeneratedKey::generate().unwrap().into_secret_string();
    assert_eq!(app.authorize_with(from(&unknown, "198.51.100.9")).await.code, "rate_limit_reached");
    assert_eq!(app.verifications(), before + 2, "unknown key ids from that client cost nothing more either");
    // Another client is unaffected, and so is a correct secret from elsewhere.
    assert!(app.authorize_with(from(&keys[3], "198.51.100.10")).await.allowed);
}

/// The digest of a verified credential is stored off the request path: wait for it.
pub async fn wait_for_stored_digest(app: &TestApp, key_id: &str) {
    let id = keygate::domain::KeyId::parse(key_id).unwrap();
    let store = app.handles.store.clone();
    crate::helpers::eventually("the verified digest is stored", || {
        let store = store.clone();
        async move { store.key(id).await.unwrap().unwrap().verified_digest.is_some() }
    })
    .await;
}

#[tokio::test]
async fn a_reloaded_record_keeps_its_verified_credential() {
    let mut app = TestApp::spawn(Db::Sqlite).await.unwrap();
    use keygate::store::Records;
    let (key, secret) = app.create_key("acct_re", &["*"], &[]).await;
    let id = keygate::domain::KeyId::parse(&key.id).unwrap();
    assert!(app.authorize(&secret, "GET", APPS).await.allowed);
    wait_for_stored_digest(&app, &key.id).await;
    let before = app.verifications();
    // What the invalidation listener does after missed notifications: every record is
    // reloaded before it is served again; the reload carries the stored digest.
    app.handles.cache.distrust_all();
    let reloaded = app.handles.cache.key(id).await.unwrap().unwrap();
    assert!(reloaded.verified_digest.is_some(), "the reload carries the verified digest");
    assert!(app.authorize(&secret, "GET", APPS).await.allowed);
    assert_eq!(app.verifications(), before, "no argon2 for a reload of the same hash");
}
