//! Operating keygate: the audit trail of every admin RPC, batched `last_used_at`, and the
//! Prometheus endpoint read over HTTP after a scripted scenario.

use crate::backend_tests;
use crate::helpers::{ask, reason, Db, TestApp, TestDb, ADMIN_TOKEN};
use keygate::clock::Clock;
use keygate::grpc::proto as pb;
use keygate::metrics::sample;
use sha2::{Digest, Sha256};
use std::time::Duration;
use tonic::Code;

backend_tests!(every_admin_write_leaves_one_audit_event, last_used_at_is_written_at_most_once_a_minute);

/// A request carrying the caller's request id and the user it acts for.
fn on_behalf<T>(message: T, request_id: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("x-request-id", request_id.parse().unwrap());
    request.metadata_mut().insert("x-keygate-actor", "user_ops@example.com".parse().unwrap());
    request
}

async fn trail(app: &mut TestApp, account: &str, search_params: &str) -> Result<Vec<pb::AuditEvent>, tonic::Status> {
    let mut events = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = app
            .admin
            .list_audit_events(pb::ListAuditEventsRequest {
                account_id: account.into(),
                page_size: 3,
                page_token,
                search_params: search_params.into(),
            })
            .await?
            .into_inner();
        events.extend(page.events);
        if page.next_page_token.is_empty() {
            return Ok(events);
        }
        page_token = page.next_page_token;
    }
}

async fn every_admin_write_leaves_one_audit_event(db: Db) {
    let Some(mut app) = TestApp::spawn(db).await else {
        return;
    };
    let account = "acct_audit";
    let application = app
        .admin
        .create_application(on_behalf(
            pb::CreateApplicationRequest { account_id: account.into(), name: "Shop".into() },
            "req-1",
        ))
        .await
        .unwrap()
        .into_inner();
    let created = app
        .admin
        .create_api_key(on_behalf(
            pb::CreateApiKeyRequest {
                account_id: account.into(),
                name: "CI deploy".into(),
                scopes: vec!["applications:read".into()],
                ..Default::default()
            },
            "req-2",
        ))
        .await
        .unwrap()
        .into_inner();
    let key = created.key.unwrap();
    app.clock.advance(Duration::from_secs(1));
    app.admin
        .update_api_key(on_behalf(
            pb::UpdateApiKeyRequest { id: key.id.clone(), name: Some("CI deploy (old)".into()), ..Default::default() },
            "req-3",
        ))
        .await
        .unwrap();
    app.admin
        .revoke_api_key(on_behalf(pb::RevokeApiKeyRequest { id: key.id.clone(), reason: "rotated".into() }, "req-4"))
        .await
        .unwrap();
    let rotation = app
        .admin
        .rotate_application_key(on_behalf(
            pb::RotateApplicationKeyRequest { application_id: application.id.clone(), grace_period_seconds: Some(60) },
            "req-5",
        ))
        .await
        .unwrap()
        .into_inner();
    let session = app
        .admin
        .create_session(on_behalf(
            pb::CreateSessionRequest { account_id: account.into(), user_id: "user_42".into(), ttl_seconds: 0 },
            "req-6",
        ))
        .await
        .unwrap()
        .into_inner();
    let session_id = session.session.unwrap().id;
    app.admin.revoke_session(on_behalf(pb::RevokeSessionRequest { id: session_id.clone() }, "req-7")).await.unwrap();

    // Writes that are refused leave nothing behind.
    let err = app
        .admin
        .update_api_key(pb::UpdateApiKeyRequest { id: key.id.clone(), name: Some("x".into()), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "bad_request", "a revoked key cannot change");
    let err = app
        .admin
        .revoke_api_key(pb::RevokeApiKeyRequest { id: "key_0000000000000000".into(), reason: String::new() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = app
        .admin
        .create_api_key(pb::CreateApiKeyRequest {
            account_id: account.into(),
            name: "elsewhere".into(),
            application_ids: vec!["app_of_someone_else".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let events = trail(&mut app, account, "").await.unwrap();
    let summary: Vec<_> = events
        .iter()
        .map(|e| (e.action.as_str(), e.category.as_str(), e.target.as_str(), e.request_id.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            ("session.revoke", "Session", session_id.as_str(), "req-7"),
            ("session.create", "Login", session_id.as_str(), "req-6"),
            ("application.rotate_key", "Application", application.id.as_str(), "req-5"),
            ("api_key.revoke", "ApiKey", key.id.as_str(), "req-4"),
            ("api_key.update", "ApiKey", key.id.as_str(), "req-3"),
            ("api_key.create", "ApiKey", key.id.as_str(), "req-2"),
            ("application.create", "Application", application.id.as_str(), "req-1"),
        ],
        "newest first, one per write, none for the refused ones"
    );
    // An HMAC under the digest key, not a bare digest: read-only tokens read the trail, and
    // a fingerprint of a chosen bootstrap token must not let them test guesses offline.
    let digester = keygate::authn::digest::CredentialDigester::new(crate::helpers::DIGEST_KEY.as_bytes());
    let fingerprint = keygate::domain::hex(&digester.digest(ADMIN_TOKEN)[..4]);
    assert_ne!(
        fingerprint,
        Sha256::digest(ADMIN_TOKEN.as_bytes())[..4].iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    for event in &events {
        assert_eq!(event.actor, format!("admin:{fingerprint}"));
        assert_eq!(event.on_behalf_of, "user_ops@example.com");
        assert_eq!(event.account_id, account);
        assert!(event.occurred_at.is_some());
        let detail: serde_json::Value = serde_json::from_str(&event.detail_json).unwrap();
        assert!(detail.is_object());
        for secret in [&created.secret, &rotation.secret, &session.token] {
            assert!(!event.detail_json.contains(secret.as_str()), "a secret reached the audit trail");
        }
    }
    let update: serde_json::Value = serde_json::from_str(&events[4].detail_json).unwrap();
    assert_eq!(update, serde_json::json!({ "name": "CI deploy (old)" }));
    let revoke: serde_json::Value = serde_json::from_str(&events[3].detail_json).unwrap();
    assert_eq!(revoke["reason"], "rotated");
    let rotate: serde_json::Value = serde_json::from_str(&events[2].detail_json).unwrap();
    assert_eq!(rotate["key_id"], rotation.key.unwrap().id.as_str());

    // search_params as on the error page.
    let actions = |events: Vec<pb::AuditEvent>| events.into_iter().map(|e| e.action).collect::<Vec<_>>();
    let logins = trail(&mut app, account, r#"{"categories": ["Login"]}"#).await.unwrap();
    assert_eq!(actions(logins), ["session.create"]);
    let keys = trail(&mut app, account, r#"{"categories": ["ApiKey", "Session"]}"#).await.unwrap();
    assert_eq!(actions(keys), ["session.revoke", "api_key.revoke", "api_key.update", "api_key.create"]);
    let found = trail(&mut app, account, r#"{"searchString": "REQ-5"}"#).await.unwrap();
    assert_eq!(actions(found), ["application.rotate_key"]);
    let found = trail(&mut app, account, &format!(r#"{{"searchString": "{}", "categories": []}}"#, key.id)).await;
    assert_eq!(found.unwrap().len(), 3, "searchString matches the target");
    assert!(trail(&mut app, "acct_nobody", "").await.unwrap().is_empty(), "each account sees its own trail");

    // Malformed JSON, an unknown category, a bad page token: VALIDATION_ERROR naming it.
    for (bad, names) in [
        ("{", "search_params"),
        (r#"{"categories": ["Logins"]}"#, "unknown category \"Logins\""),
        (r#"{"categories": "Login"}"#, "search_params"),
        (r#"{"searchText": "x"}"#, "search_params"),
    ] {
        let err = trail(&mut app, account, bad).await.unwrap_err();
        assert_eq!((err.code(), reason(&err).as_str()), (Code::InvalidArgument, "VALIDATION_ERROR"), "{bad}");
        assert!(err.message().contains(names), "{bad}: {}", err.message());
    }
    let err = app
        .admin
        .list_audit_events(pb::ListAuditEventsRequest {
            account_id: account.into(),
            page_token: "key_0000000000000000".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "VALIDATION_ERROR");

    // An actor header that cannot be recorded is refused before anything changes.
    let mut request =
        tonic::Request::new(pb::CreateApplicationRequest { account_id: account.into(), name: "x".into() });
    request.metadata_mut().insert("x-keygate-actor", "u".repeat(200).parse().unwrap());
    let err = app.admin.create_application(request).await.unwrap_err();
    assert_eq!(reason(&err), "VALIDATION_ERROR");
    assert_eq!(trail(&mut app, account, "").await.unwrap().len(), 7);
}

async fn last_used_at_is_written_at_most_once_a_minute(db: Db) {
    let Some(db) = TestDb::new(db).await else {
        return;
    };
    let mut app = TestApp::spawn_url(&db.url, |_| {}).await;
    let (key, secret) = app.create_key("acct_used", &["applications:read"], &[]).await;
    assert_eq!(key.last_used_at, None, "never used");
    let stored_use = |app: &TestApp, id: String| {
        let store = app.handles.store.clone();
        async move {
            let id = keygate::domain::KeyId::parse(&id).unwrap();
            store.key(id).await.unwrap().unwrap().last_used_at
        }
    };

    let first_use = app.clock.now();
    for _ in 0..5 {
        assert!(app.authorize_with(ask(&secret)).await.allowed);
    }
    assert_eq!(app.handles.usage.flush().await.unwrap(), 1, "five uses, one write");
    assert_eq!(stored_use(&app, key.id.clone()).await, Some(first_use));
    let written = app.handles.usage.written().get();

    // Within the minute: no more writes, however many calls.
    app.clock.advance(Duration::from_secs(30));
    for _ in 0..5 {
        assert!(app.authorize_with(ask(&secret)).await.allowed);
    }
    assert_eq!(app.handles.usage.flush().await.unwrap(), 0);
    assert_eq!(app.handles.usage.written().get(), written);

    // A minute after the last write: one more.
    app.clock.advance(Duration::from_secs(31));
    let second_use = app.clock.now();
    assert!(app.authorize_with(ask(&secret)).await.allowed);
    assert_eq!(app.handles.usage.flush().await.unwrap(), 1);
    assert_eq!(stored_use(&app, key.id.clone()).await, Some(second_use));
    let shown = app.admin.get_api_key(pb::GetApiKeyRequest { id: key.id.clone() }).await.unwrap().into_inner();
    assert_eq!(
        shown.last_used_at.map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000),
        Some(second_use.as_millis())
    );

    // A use still pending at shutdown is written before the server stops.
    app.clock.advance(Duration::from_secs(61));
    let last_use = app.clock.now();
    assert!(app.authorize_with(ask(&secret)).await.allowed);
    app.stop().await;
    let reopened = keygate::store::sql::SqlStore::connect(&db.url, 1, Duration::from_secs(5)).await.unwrap();
    use keygate::store::Records;
    let id = keygate::domain::KeyId::parse(&key.id).unwrap();
    assert_eq!(reopened.key(id).await.unwrap().unwrap().last_used_at, Some(last_use));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_off_by_default() {
    let app = TestApp::spawn(Db::Sqlite).await.unwrap();
    assert!(app.metrics_url.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_a_scripted_scenario_did() {
    let db = TestDb::new(Db::Sqlite).await.unwrap();
    let policy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policy/default.toml");
    let mut app = TestApp::spawn_on(db, |settings| {
        settings.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        settings.policy = Some(policy);
    })
    .await;
    let url = app.metrics_url.clone().expect("metrics are on");

    // The scenario: a key allowed three times, a wrong secret, a route that does not
    // exist, the key revoked and tried again, a policy reload, a usage flush.
    let (key, secret) = app.create_key("acct_metrics", &["applications:read"], &[]).await;
    for _ in 0..3 {
        assert!(app.authorize_with(ask(&secret)).await.allowed);
    }
    let wrong = keygate::domain::GeneratedKey::impostor_of(&keygate::domain::Credential::parse(&secret).unwrap())
        .unwrap()
        .into_secret_string();
    assert_eq!(app.authorize_with(ask(&wrong)).await.code, "api_key_invalid");
    assert_eq!(app.authorize(&secret, "GET", "/nowhere").await.code, "not_found");
    app.admin.revoke_api_key(pb::RevokeApiKeyRequest { id: key.id.clone(), reason: String::new() }).await.unwrap();
    assert_eq!(app.authorize_with(ask(&secret)).await.code, "api_key_revoked");
    app.handles.reload_policy().unwrap();
    app.handles.usage.flush().await.unwrap();

    let response = reqwest::get(&url).await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
    let text = response.text().await.unwrap();
    let value = |series: &str| sample(&text, series).unwrap_or_else(|| panic!("no sample {series} in:\n{text}"));

    let route = r#"route="GET /api/v1/panel/applications""#;
    assert_eq!(value(&format!(r#"keygate_decisions_total{{{route},code="allowed"}}"#)), 3.0);
    assert_eq!(value(&format!(r#"keygate_decisions_total{{{route},code="api_key_invalid"}}"#)), 1.0);
    assert_eq!(value(&format!(r#"keygate_decisions_total{{{route},code="api_key_revoked"}}"#)), 1.0);
    assert_eq!(value(r#"keygate_decisions_total{route="",code="not_found"}"#), 1.0);
    // The default policy's global limit counted the three allowed calls, and only those.
    assert_eq!(value(r#"keygate_rate_limit_checks_total{outcome="admitted"}"#), 3.0);
    assert_eq!(value(r#"keygate_rate_limit_checks_total{outcome="limited"}"#), 0.0);
    let verifications = app.verifications() as f64;
    // The first use ran argon2; the wrong secret that followed was judged by the stored
    // digest (or, if that was still being written, by argon2 too).
    assert!(verifications >= 1.0, "the first use ran argon2");
    assert_eq!(value("keygate_argon2_verifications_total"), verifications);
    assert_eq!(value("keygate_argon2_verification_seconds_count"), verifications);
    assert!(value(r#"keygate_cache_lookups_total{cache="keys",result="hit"}"#) >= 2.0);
    assert!(value(r#"keygate_cache_lookups_total{cache="keys",result="miss"}"#) >= 1.0);
    assert_eq!(value(r#"keygate_cache_entries{cache="keys"}"#), 1.0, "the revoked key, reloaded");
    assert_eq!(value(r#"keygate_store_operation_seconds_count{operation="create_key"}"#), 1.0);
    assert_eq!(value(r#"keygate_store_operation_seconds_count{operation="revoke_key"}"#), 1.0);
    assert_eq!(sample(&text, r#"keygate_store_errors_total{operation="key",kind="unavailable"}"#), None);
    assert_eq!(value(r#"keygate_policy_reloads_total{outcome="applied"}"#), 1.0);
    assert_eq!(value("keygate_key_usage_written_total"), 1.0);
    assert_eq!(value("keygate_key_usage_pending"), 0.0);
    assert_eq!(value("keygate_served_stale_total"), 0.0);
    assert!(!text.contains(&secret) && !text.contains(&wrong), "no credential in the metrics");
    assert!(text.trim_end().ends_with("# EOF"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_call_without_a_request_id_gets_one_that_its_audit_event_shares() {
    let mut app = TestApp::spawn(Db::Sqlite).await.unwrap();
    let response = app
        .admin
        .create_application(pb::CreateApplicationRequest { account_id: "acct_ids".into(), name: "x".into() })
        .await
        .unwrap();
    let echoed = response.metadata().get("x-request-id").expect("an id is echoed").to_str().unwrap().to_owned();
    assert!(echoed.starts_with("kg-"), "{echoed}");
    let events = trail(&mut app, "acct_ids", "").await.unwrap();
    assert_eq!(events[0].request_id, echoed, "the span's id, the handler's and the response's are one");

    // A caller's own id is kept; an unusable one is replaced.
    let mut request = tonic::Request::new(pb::GetApplicationRequest { id: events[0].target.clone() });
    request.metadata_mut().insert("x-request-id", "edge-7f3a".parse().unwrap());
    let response = app.admin.get_application(request).await.unwrap();
    assert_eq!(response.metadata().get("x-request-id").unwrap(), "edge-7f3a");
    let mut request = tonic::Request::new(pb::GetApplicationRequest { id: events[0].target.clone() });
    request.metadata_mut().insert("x-request-id", "x".repeat(300).parse().unwrap());
    let response = app.admin.get_application(request).await.unwrap();
    assert!(response.metadata().get("x-request-id").unwrap().to_str().unwrap().starts_with("kg-"));
}
