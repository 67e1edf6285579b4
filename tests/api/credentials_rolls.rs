//! Rolled keys mean what their successor says (issue 28, items 1 and 2): during a roll's
//! overlap the old credential follows every change of its successor, on this replica and
//! on the other, and the admin API says of a key's state what Authorize decides.

use crate::backend_tests;
use crate::helpers::{ask, Db, TestApp};
use crate::replicas::{code_on, two_replicas};
use keygate::clock::Clock;
use keygate::grpc::proto as pb;
use std::time::Duration;

async fn roll(app: &mut TestApp, id: &str, overlap_seconds: u32) -> pb::RerollApiKeyResponse {
    let request = pb::RerollApiKeyRequest { id: id.into(), overlap_seconds };
    app.admin.reroll_api_key(request).await.unwrap().into_inner()
}

async fn update(app: &mut TestApp, changes: pb::UpdateApiKeyRequest) {
    app.admin.update_api_key(changes).await.unwrap();
}

async fn get_key(app: &mut TestApp, id: &str) -> pb::ApiKey {
    app.admin.get_api_key(pb::GetApiKeyRequest { id: id.into() }).await.unwrap().into_inner()
}

/// What Authorize says to `request`: "allowed", or the deny's reason (its code when it
/// has none).
async fn said(app: &mut TestApp, request: pb::AuthorizeRequest) -> String {
    let r = app.authorize_with(request).await;
    match (r.allowed, r.reason.is_empty()) {
        (true, _) => "allowed".into(),
        (false, true) => r.code,
        (false, false) => r.reason,
    }
}

fn scopes(values: &[&str]) -> Option<pb::StringList> {
    Some(pb::StringList { values: values.iter().map(|v| v.to_string()).collect() })
}

backend_tests!(every_narrowing_of_the_successor_reaches_the_key_rolled_into_it);
/// Issue 28 item 1: disabling the successor, narrowing its scopes, applications,
/// allowlist or limits, or shortening its expiry, reaches the key rolled into it in the
/// same change (before the fix the old credential kept working as before for the whole
/// overlap: only revoke and delete reached it).
async fn every_narrowing_of_the_successor_reaches_the_key_rolled_into_it(db: Db) {
    let mut app = TestApp::spawn(db).await.unwrap();
    let (mine, other) = (app.create_app("acct_follow").await, app.create_app("acct_follow").await);
    let (old, old_secret) = app.key_with("acct_follow", Default::default()).await;
    let rolled = roll(&mut app, &old.id, 3600).await;
    let new_id = rolled.key.unwrap().id;
    assert_eq!(said(&mut app, ask(&old_secret)).await, "allowed", "the overlap runs");
    let of = |id: &str| pb::UpdateApiKeyRequest { id: id.into(), ..Default::default() };

    update(&mut app, pb::UpdateApiKeyRequest { enabled: Some(false), ..of(&new_id) }).await;
    assert_eq!(said(&mut app, ask(&old_secret)).await, "disabled");
    update(&mut app, pb::UpdateApiKeyRequest { enabled: Some(true), ..of(&new_id) }).await;
    assert_eq!(said(&mut app, ask(&old_secret)).await, "allowed", "and enabled again with it");

    update(&mut app, pb::UpdateApiKeyRequest { scopes: scopes(&["logs:read"]), ..of(&new_id) }).await;
    assert_eq!(said(&mut app, ask(&old_secret)).await, "insufficient_scope");
    update(&mut app, pb::UpdateApiKeyRequest { scopes: scopes(&["applications:read"]), ..of(&new_id) }).await;

    update(&mut app, pb::UpdateApiKeyRequest { application_ids: scopes(&[&mine.id]), ..of(&new_id) }).await;
    let on = |app_id: &str| pb::AuthorizeRequest {
        path: format!("/api/v1/panel/applications/{app_id}"),
        ..ask(&old_secret)
    };
    assert_eq!(said(&mut app, on(&mine.id)).await, "allowed");
    assert_eq!(said(&mut app, on(&other.id)).await, "application_not_allowed");

    update(&mut app, pb::UpdateApiKeyRequest { allowed_networks: scopes(&["10.0.0.0/8"]), ..of(&new_id) }).await;
    let from = |ip: &str| pb::AuthorizeRequest { client_ip: ip.into(), ..ask(&old_secret) };
    assert_eq!(said(&mut app, from("192.168.1.1")).await, "ip_not_allowed");
    assert_eq!(said(&mut app, from("10.1.2.3")).await, "allowed");

    let one_a_minute = pb::KeyLimit { name: "tight".into(), limit: 1, window_seconds: 60, route: String::new() };
    let limits = Some(pb::KeyLimitList { values: vec![one_a_minute] });
    update(&mut app, pb::UpdateApiKeyRequest { limits, ..of(&new_id) }).await;
    assert_eq!(said(&mut app, from("10.1.2.3")).await, "allowed");
    assert_eq!(said(&mut app, from("10.1.2.3")).await, "key_rate_limited");

    let soon = app.clock.now().saturating_add(Duration::from_secs(60));
    let expires_at = Some(keygate::grpc::convert::timestamp_to_proto(soon));
    update(&mut app, pb::UpdateApiKeyRequest { expires_at, ..of(&new_id) }).await;
    app.clock.advance(Duration::from_secs(61));
    assert_eq!(said(&mut app, from("10.1.2.3")).await, "expired", "the overlap has 3,539 s left");

    // What the old key shows is what it follows.
    let shown = get_key(&mut app, &old.id).await;
    assert_eq!((shown.scopes, shown.application_ids), (vec!["applications:read".to_owned()], vec![mine.id]));
    assert_eq!((shown.allowed_networks, shown.limits.len()), (vec!["10.0.0.0/8".to_owned()], 1));
    assert_eq!(shown.status, pb::ApiKeyStatus::Expired as i32);
}

/// Issue 28 item 1, across replicas: disabling the successor on replica A is acknowledged
/// by B before the call returns, and B then refuses the old credential it had cached
/// (before the fix B, like A, kept allowing it for the overlap).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_the_successor_on_one_replica_stops_the_old_key_on_the_other() {
    let Some((_db, mut a, b)) = two_replicas().await else {
        eprintln!("skipped: KEYGATE_TEST_POSTGRES_URL is not set");
        return;
    };
    let (old, old_secret) = a.key_with("acct_follow_rep", Default::default()).await;
    let rolled = roll(&mut a, &old.id, 3600).await;
    let new_id = rolled.key.unwrap().id;
    crate::helpers::eventually("B serves the old key from its cache", || async {
        code_on(&b, &old_secret).await == "allowed" && b.handles.cache.stats().keys.entries > 0
    })
    .await;
    let off = pb::UpdateApiKeyRequest { id: new_id, enabled: Some(false), ..Default::default() };
    a.admin.update_api_key(off).await.unwrap();
    // No waiting: every replica applied the change (or stopped trusting its cache) before
    // the answer came.
    assert_eq!(code_on(&b, &old_secret).await, "api_key_revoked");
    assert_eq!(code_on(&a, &old_secret).await, "api_key_revoked");
}

backend_tests!(a_keys_status_says_what_authorize_decides);
/// Issue 28 item 2: GetApiKey and ListApiKeys say DISABLED for a disabled key and, for a
/// key whose overlap ended, REVOKED with the reason "rolled" — what Authorize says (before
/// the fix: ACTIVE, and an empty revoked_reason).
async fn a_keys_status_says_what_authorize_decides(db: Db) {
    let mut app = TestApp::spawn(db).await.unwrap();
    let (off, off_secret) = app.key_with("acct_status", Default::default()).await;
    let disable = pb::UpdateApiKeyRequest { id: off.id.clone(), enabled: Some(false), ..Default::default() };
    update(&mut app, disable).await;
    assert_eq!(said(&mut app, ask(&off_secret)).await, "disabled");
    let shown = get_key(&mut app, &off.id).await;
    assert_eq!((shown.status, shown.enabled), (pb::ApiKeyStatus::Disabled as i32, false));

    let (old, old_secret) = app.key_with("acct_status", Default::default()).await;
    roll(&mut app, &old.id, 60).await;
    assert_eq!(get_key(&mut app, &old.id).await.status, pb::ApiKeyStatus::Active as i32, "in its overlap");
    app.clock.advance(Duration::from_secs(60));
    assert_eq!(said(&mut app, ask(&old_secret)).await, "rolled");
    let shown = get_key(&mut app, &old.id).await;
    assert_eq!((shown.status, shown.revoked_reason.as_str()), (pb::ApiKeyStatus::Revoked as i32, "rolled"));

    let list = pb::ListApiKeysRequest { account_id: "acct_status".into(), ..Default::default() };
    let listed = app.admin.list_api_keys(list).await.unwrap().into_inner().keys;
    let status_of = |id: &str| listed.iter().find(|k| k.id == id).map(|k| (k.status, k.revoked_reason.clone()));
    assert_eq!(status_of(&off.id), Some((pb::ApiKeyStatus::Disabled as i32, String::new())));
    assert_eq!(status_of(&old.id), Some((pb::ApiKeyStatus::Revoked as i32, "rolled".to_owned())));
}
