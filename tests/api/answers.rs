//! Answers that say no more and no less than the truth (issue 30, items 1 to 7): what a
//! refused call may retry, a deadline keygate caps, a replica that hears of a refill
//! change late, import lines, metadata's order and size, mapped IPv6 ranges, and what an
//! update leaves alone.

use crate::forward_auth::{call, keygate};
use crate::helpers::{ask, Db, TestApp, TestDb};
use crate::relay::{target_of, Relay};
use keygate::clock::Clock;
use keygate::grpc::proto as pb;
use std::time::Duration;

const DEADLINE: &str = "x-keygate-decision-deadline-ms";

fn credits(remaining: i64, refill: Option<(i64, &str, &str)>) -> Option<pb::Credits> {
    let refill =
        refill.map(|(amount, interval, mode)| pb::Refill { amount, interval: interval.into(), mode: mode.into() });
    Some(pb::Credits { remaining, refill })
}

/// The seconds from `app`'s clock to the start of the next minute since the epoch.
fn to_next_minute(app: &TestApp) -> u32 {
    let now = app.clock.now().as_millis();
    let next = (now.div_euclid(60_000) + 1) * 60_000;
    u32::try_from((next - now + 999) / 1000).unwrap()
}

/// Item 1: a `credits_exhausted` answer never suggests a retry that cannot pass. Without a
/// refill: no retry-after (0 from Authorize, no header from forward auth) and a message
/// that says there is no refill; with one, the time until a refill brings enough; with a
/// `to` refill smaller than the cost, none. `limit` is the call's cost, and
/// `credits_remaining` what is left (1, not 0, for a call of 3 on 1).
/// guards: retry_after 0 / `limit` = the refill amount / credits_remaining 0 (before the fix).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credits_refusal_says_what_is_left_and_when_a_retry_can_pass() {
    let mut app = keygate().await;
    let url = format!("{}/forward-auth", app.http_url.clone().unwrap());
    let client = reqwest::Client::new();
    let forward = |secret: &str| {
        client
            .get(&url)
            .header("x-forwarded-method", "GET")
            .header("x-forwarded-uri", "/api/v1/panel/applications")
            .header("x-api-key", secret)
    };

    // No refill: 1 left, a call of 3.
    let no_refill = pb::CreateApiKeyRequest { credits: credits(1, None), ..Default::default() };
    let (_, secret) = app.key_with("acct_ans1", no_refill).await;
    let r = app.authorize_with(pb::AuthorizeRequest { cost: 3, ..ask(&secret) }).await;
    assert_eq!(
        (r.reason.as_str(), r.credits_remaining, r.limit, r.remaining, r.retry_after_seconds),
        ("credits_exhausted", Some(1), 3, 0, 0),
        "{r:?}"
    );
    assert!(r.message.contains("no refill") && r.message.contains("1 left, this call costs 3"), "{}", r.message);
    assert!(app.authorize_with(ask(&secret)).await.allowed, "the 1 left pays for a call of 1");
    let (status, _, body, retry_after) = call(forward(&secret)).await;
    assert_eq!((status, retry_after), (429, None), "nothing to wait for: {body}");
    assert!(body.contains("no refill"), "{body}");

    // A refill to 5 every minute: enough at the next minute, by the test's clock.
    let refilled = pb::CreateApiKeyRequest { credits: credits(0, Some((5, "60s", "to"))), ..Default::default() };
    let (_, secret) = app.key_with("acct_ans1", refilled).await;
    let wait = to_next_minute(&app);
    let r = app.authorize_with(pb::AuthorizeRequest { cost: 3, ..ask(&secret) }).await;
    assert_eq!((r.credits_remaining, r.limit, r.retry_after_seconds), (Some(0), 3, wait), "{r:?}");
    assert!(r.message.contains(&format!("refilled in {wait} s")), "{}", r.message);
    let (status, _, body, retry_after) = call(forward(&secret)).await;
    assert_eq!((status, retry_after), (429, Some(wait.to_string())), "{body}");

    // A refill to 2 never pays for a call of 3: no retry-after.
    let too_small = pb::CreateApiKeyRequest { credits: credits(1, Some((2, "60s", "to"))), ..Default::default() };
    let (_, secret) = app.key_with("acct_ans1", too_small).await;
    let r = app.authorize_with(pb::AuthorizeRequest { cost: 3, ..ask(&secret) }).await;
    assert_eq!((r.credits_remaining, r.retry_after_seconds), (Some(1), 0), "{r:?}");
    assert!(r.message.contains("never brings 3"), "{}", r.message);

    // An `add` refill of 1 a minute: 1 left, a call of 3 passes two refills from now.
    let adding = pb::CreateApiKeyRequest { credits: credits(1, Some((1, "60s", "add"))), ..Default::default() };
    let (_, secret) = app.key_with("acct_ans1", adding).await;
    let r = app.authorize_with(pb::AuthorizeRequest { cost: 3, ..ask(&secret) }).await;
    assert_eq!((r.credits_remaining, r.retry_after_seconds), (Some(1), wait + 60), "{r:?}");
}

/// Item 2: a caller's `grpc-timeout` beyond keygate's cap (`--decision-deadline-ms`) is
/// told so: the cap in the answer's metadata, and a call the cap cuts fails with a message
/// naming the cap, the flag and the caller's own deadline (Postgres' answers held).
/// guards: an unexplained "the key store is unavailable" at the cap (before the fix).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_keygate_caps_is_answered_naming_the_cap() {
    let Some(db) = TestDb::new(Db::Postgres).await else {
        eprintln!("skipped: KEYGATE_TEST_POSTGRES_URL is not set");
        return;
    };
    let relay = Relay::start(target_of(&db.url)).await;
    let mut app = TestApp::spawn_url(&relay.url_for(&db.url), |s| {
        // The store waits longer than the decision: the cap is what cuts the call.
        s.store_breaker.timeout = Duration::from_secs(30);
        s.edge.decision_deadline = Duration::from_secs(3);
    })
    .await;
    let (_, secret) = app.create_key("acct_cap", &["applications:read"], &[]).await;
    let (_, unread) = app.create_key("acct_cap", &["applications:read"], &[]).await;
    let patient = |secret: &str| {
        let mut request = tonic::Request::new(ask(secret));
        request.set_timeout(Duration::from_secs(30));
        request
    };
    let answered = app.authorizer.authorize(patient(&secret)).await.unwrap();
    assert!(answered.get_ref().allowed);
    assert_eq!(answered.metadata().get(DEADLINE).map(|v| v.to_str().unwrap()), Some("3000"));
    let mut short = tonic::Request::new(ask(&secret));
    short.set_timeout(Duration::from_secs(1));
    assert!(app.authorizer.authorize(short).await.unwrap().metadata().get(DEADLINE).is_none(), "not capped");

    // A key no replica has read: its record waits for Postgres, whose answers are held.
    relay.hold_answers();
    let failed = app.authorizer.authorize(patient(&unread)).await.unwrap_err();
    relay.release_answers();
    assert_eq!(failed.code(), tonic::Code::Unavailable, "{failed:?}");
    assert!(
        failed.message().starts_with(
            "no decision in time: keygate decides within 3 s (--decision-deadline-ms); \
             your grpc-timeout of 30 s was capped (error id "
        ),
        "{failed:?}"
    );
    assert_eq!(failed.metadata().get(DEADLINE).map(|v| v.to_str().unwrap()), Some("3000"));
}

/// Item 3: right after a refill-rule change on one replica, the other's first call on the
/// key is decided, not failed: B (its listener paused, so it has not heard of the change
/// and still trusts its memory) finds its record out of step with the store, reloads it
/// and decides on the new terms.
/// guards: UNAVAILABLE ("the key's credits changed while the call was decided") on B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refill_rule_changed_on_one_replica_is_decided_at_once_on_the_other() {
    let Some((_db, mut a, b)) = crate::replicas::two_replicas().await else {
        eprintln!("skipped: KEYGATE_TEST_POSTGRES_URL is not set");
        return;
    };
    let terms = pb::CreateApiKeyRequest { credits: credits(10, Some((10, "60s", "to"))), ..Default::default() };
    let (key, secret) = a.key_with("acct_rule", terms).await;
    crate::helpers::eventually("B serves the key from its cache", || async {
        crate::replicas::code_on(&b, &secret).await == "allowed" && b.handles.cache.stats().keys.entries > 0
    })
    .await;
    crate::helpers::eventually("B trusts its cache", || async { b.handles.cache.trust().holds() }).await;

    let on_b = b.handles.invalidation.clone().unwrap();
    on_b.pause(true);
    let change = pb::UpdateApiKeyRequest {
        id: key.id.clone(),
        credits: credits(5, Some((100, "daily", "to"))),
        ..Default::default()
    };
    a.admin.update_api_key(change).await.unwrap();
    assert!(b.handles.cache.trust().holds(), "B still trusts the record it holds");
    let on_b_now = b.authorizer.clone().authorize(ask(&secret)).await;
    on_b.pause(false);
    let answer = on_b_now.expect("decided, not UNAVAILABLE").into_inner();
    assert_eq!((answer.allowed, answer.credits_remaining), (true, Some(4)), "the new balance: {answer:?}");
}
