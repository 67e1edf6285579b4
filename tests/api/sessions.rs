//! Dashboard sessions, route access modes and application runtime keys.

use crate::backend_tests;
use crate::helpers::{reason, Db, TestApp};
use keygate::grpc::proto as pb;
use std::time::Duration;

const CREATE_KEYS: &str = "/api/v1/panel/api-keys";

backend_tests!(sessions_are_accepted_where_the_policy_says, runtime_keys_rotate_with_a_grace_period);

pub async fn create_session(app: &mut TestApp, account: &str, ttl_seconds: u32) -> (pb::Session, String) {
    let created = app
        .admin
        .create_session(pb::CreateSessionRequest { account_id: account.into(), user_id: "user_1".into(), ttl_seconds })
        .await
        .unwrap()
        .into_inner();
    (created.session.unwrap(), created.token)
}

fn decision(r: &pb::AuthorizeResponse) -> (&str, u32) {
    (if r.allowed { "allowed" } else { r.code.as_str() }, r.http_status)
}

async fn sessions_are_accepted_where_the_policy_says(db: Db) {
    let Some(mut app) = TestApp::spawn(db).await else { return };
    let mine = app.create_app("acct_s").await;
    let (session, token) = create_session(&mut app, "acct_s", 3600).await;
    assert!(token.starts_with("kgs_"));
    let (_, key) = app.create_key("acct_s", &["*"], &[]).await;

    // Session-only route: the session is allowed, a key gets session_required without argon2.
    let r = app.authorize(&token, "POST", CREATE_KEYS).await;
    assert_eq!(decision(&r), ("allowed", 200));
    let principal = r.principal.unwrap();
    assert_eq!(
        (principal.kind.as_str(), principal.session_id.as_str(), principal.user_id.as_str()),
        ("session", session.id.as_str(), "user_1")
    );
    let before = app.verifications();
    let r = app.authorize(&key, "POST", CREATE_KEYS).await;
    assert_eq!(decision(&r), ("session_required", 403));
    assert_eq!(app.verifications(), before, "session_required costs no argon2");

    // Missing, malformed, unknown sessions on a session-only route are unauth.
    let forged = keygate::domain::GeneratedKey::generate_kind(keygate::domain::CredentialKind::Session)
        .unwrap()
        .into_secret_string();
    for bad in ["", "kgs_short", "garbage", forged.as_str()] {
        let r = app.authorize(bad, "POST", CREATE_KEYS).await;
        assert_eq!(decision(&r), ("unauth", 401), "{bad:.12}");
    }

    // Either-routes take both; sessions need no scopes but stay in their account.
    assert_eq!(
        decision(&app.authorize(&token, "GET", &format!("/api/v1/panel/applications/{}", mine.id)).await).0,
        "allowed"
    );
    let theirs = app.create_app("acct_other").await;
    let r = app.authorize(&token, "GET", &format!("/api/v1/panel/applications/{}", theirs.id)).await;
    assert_eq!(decision(&r), ("not_found", 404));

    // Public routes need nothing.
    assert_eq!(decision(&app.authorize("", "GET", "/api/v1/health").await), ("allowed", 200));

    // Expired, then revoked: unauth.
    app.clock.advance(Duration::from_secs(3600));
    let r = app.authorize(&token, "POST", CREATE_KEYS).await;
    assert_eq!(decision(&r), ("unauth", 401));
    let (session, token) = create_session(&mut app, "acct_s", 0).await;
    assert_eq!(decision(&app.authorize(&token, "POST", CREATE_KEYS).await).0, "allowed");
    let revoked =
        app.admin.revoke_session(pb::RevokeSessionRequest { id: session.id.clone() }).await.unwrap().into_inner();
    assert_eq!(revoked.status, "revoked");
    assert_eq!(decision(&app.authorize(&token, "POST", CREATE_KEYS).await), ("unauth", 401));
    let got = app.admin.get_session(pb::GetSessionRequest { id: session.id }).await.unwrap().into_inner();
    assert_eq!(got.status, "revoked");
    assert!(!format!("{got:?}").contains(&token[20..]), "the token is never shown again");
}

async fn runtime_keys_rotate_with_a_grace_period(db: Db) {
    let Some(mut app) = TestApp::spawn(db).await else { return };
    let application = app.create_app("acct_rt").await;
    let other = app.create_app("acct_rt").await;
    let rotate = |grace: Option<u32>| pb::RotateApplicationKeyRequest {
        application_id: application.id.clone(),
        grace_period_seconds: grace,
    };
    let first = app.admin.rotate_application_key(rotate(None)).await.unwrap().into_inner();
    assert!(first.secret.starts_with("kgr_"));
    assert_eq!((first.key.as_ref().unwrap().kind.as_str(), first.previous_key_id.as_str()), ("runtime", ""));
    let path = format!("/api/v1/panel/applications/{}", application.id);
    let r = app.authorize(&first.secret, "GET", &path).await;
    assert_eq!(decision(&r), ("allowed", 200));
    assert_eq!(r.principal.unwrap().kind, "runtime_key");
    // Only its own application, and only where the policy accepts runtime keys.
    let r = app.authorize(&first.secret, "GET", &format!("/api/v1/panel/applications/{}", other.id)).await;
    assert_eq!(decision(&r), ("application_forbidden", 403));
    let r = app.authorize(&first.secret, "GET", &format!("{path}/logs")).await;
    assert_eq!(decision(&r), ("api_key_invalid", 401));

    // Rotating keeps the old key for the grace period, then it is revoked.
    let second = app.admin.rotate_application_key(rotate(Some(600))).await.unwrap().into_inner();
    assert_eq!(second.previous_key_id, first.key.as_ref().unwrap().id);
    assert_eq!(decision(&app.authorize(&first.secret, "GET", &path).await).0, "allowed");
    assert_eq!(decision(&app.authorize(&second.secret, "GET", &path).await).0, "allowed");
    app.clock.advance(Duration::from_secs(599));
    assert_eq!(decision(&app.authorize(&first.secret, "GET", &path).await).0, "allowed", "inside the grace period");
    app.clock.advance(Duration::from_secs(1));
    assert_eq!(decision(&app.authorize(&first.secret, "GET", &path).await), ("api_key_revoked", 401));
    assert_eq!(decision(&app.authorize(&second.secret, "GET", &path).await).0, "allowed");

    // Runtime keys are not API keys: not listed, not updatable.
    let listed = app
        .admin
        .list_api_keys(pb::ListApiKeysRequest { account_id: "acct_rt".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.keys.is_empty());
    let err = app
        .admin
        .update_api_key(pb::UpdateApiKeyRequest {
            id: second.key.unwrap().id,
            name: Some("x".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "bad_request");
    let err = app
        .admin
        .rotate_application_key(pb::RotateApplicationKeyRequest {
            application_id: "app_missing".into(),
            grace_period_seconds: None,
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "not_found");
}

#[tokio::test]
async fn session_requests_are_validated() {
    let mut app = TestApp::spawn(Db::Sqlite).await.unwrap();
    for (account, user, ttl) in [("", "u", 60), ("a", "", 60), ("a", "u 1", 60), ("a", "u", u32::MAX)] {
        let err = app
            .admin
            .create_session(pb::CreateSessionRequest {
                account_id: account.into(),
                user_id: user.into(),
                ttl_seconds: ttl,
            })
            .await
            .unwrap_err();
        assert_eq!(reason(&err), "VALIDATION_ERROR", "{account:?} {user:?} {ttl}");
    }
    let err = app.admin.get_session(pb::GetSessionRequest { id: "ses_0000000000000000".into() }).await.unwrap_err();
    assert_eq!(reason(&err), "not_found");
    let err =
        app.admin.revoke_session(pb::RevokeSessionRequest { id: "key_0000000000000000".into() }).await.unwrap_err();
    assert_eq!(reason(&err), "VALIDATION_ERROR");
}

#[tokio::test]
async fn credentials_of_the_wrong_kind_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        r#"
        [[routes]]
        route = "GET /keys-only"
        [[routes]]
        route = "GET /sessions-only"
        accepts = ["session"]
        [[routes]]
        route = "GET /public/{application_id}"
        public = true
        [[routes.limits]]
        limit = 1
        window = "minute"
        per = "ip"
        "#,
    )
    .unwrap();
    let db = crate::helpers::TestDb::new(Db::Sqlite).await.unwrap();
    let mut app = TestApp::spawn_on(db, |s| s.policy = Some(policy)).await;
    let (_, token) = create_session(&mut app, "acct_w", 3600).await;
    let (_, key) = app.create_key("acct_w", &[], &[]).await;
    let r = app.authorize(&token, "GET", "/keys-only").await;
    assert_eq!(decision(&r), ("api_key_invalid", 401));
    assert!(r.message.contains("session"), "{}", r.message);
    assert_eq!(decision(&app.authorize(&key, "GET", "/keys-only").await), ("allowed", 200));
    assert_eq!(decision(&app.authorize("", "GET", "/sessions-only").await), ("unauth", 401));
    assert_eq!(decision(&app.authorize("", "GET", "/keys-only").await), ("api_key_invalid", 401));

    // Public routes decide without a credential, yet their per-IP limits still count.
    let public = |ip: &str| pb::AuthorizeRequest {
        method: "GET".into(),
        path: "/public/app_whatever".into(),
        client_ip: ip.into(),
        ..Default::default()
    };
    assert!(app.authorize_with(public("10.0.0.1")).await.allowed);
    assert_eq!(app.authorize_with(public("10.0.0.1")).await.code, "rate_limit_reached");
    assert!(app.authorize_with(public("10.0.0.2")).await.allowed);
    // No client_ip on a route that counts per address: refused, never unlimited.
    assert_eq!(decision(&app.authorize_with(public("")).await), ("bad_request", 400));
}
