//! What a key carries (issue 16): its own limits, credits, an IP allowlist, metadata and
//! a reversible switch, each decided with a finer `reason` beside the page's code, through
//! Authorize, Envoy's Check and the Rust layer, on one replica and across two.

use crate::backend_tests;
use crate::helpers::{ask, burst, eventually, reason, Db, TestApp, TestDb};
use keygate::grpc::proto as pb;
use std::collections::HashMap;
use std::time::Duration;

const LIST: &str = "/api/v1/panel/applications";

fn limit(name: &str, limit: u32, window_seconds: u32, route: &str) -> pb::KeyLimit {
    pb::KeyLimit { name: name.into(), limit, window_seconds, route: route.into() }
}

fn credits(remaining: i64, refill: Option<(i64, &str, &str)>) -> Option<pb::Credits> {
    let refill =
        refill.map(|(amount, interval, mode)| pb::Refill { amount, interval: interval.into(), mode: mode.into() });
    Some(pb::Credits { remaining, refill })
}

/// A server for a burst of 200 calls on one key. The burst is about exactness, not about
/// the store's read timeout, which a debug build on a busy 2-core machine can exceed.
pub(crate) fn patient(settings: &mut keygate::config::Settings) {
    settings.store_breaker.timeout = Duration::from_secs(5);
    settings.edge.decision_deadline = Duration::from_secs(10);
}

fn from(credential: &str, client_ip: &str) -> pb::AuthorizeRequest {
    pb::AuthorizeRequest { client_ip: client_ip.into(), ..ask(credential) }
}

backend_tests!(a_key_limit_tighter_than_the_route_is_enforced_with_its_reason);
async fn a_key_limit_tighter_than_the_route_is_enforced_with_its_reason(db: Db) {
    let mut app = TestApp::spawn(db).await.unwrap();
    let terms = pb::CreateApiKeyRequest {
        limits: vec![
            limit("burst", 2, 60, ""),
            limit("elsewhere", 1, 60, "GET /api/v1/panel/applications/{application_id}/logs"),
        ],
        ..Default::default()
    };
    let (_, limited) = app.key_with("acct_kl", terms).await;
    let (_, free) = app.create_key("acct_kl", &["applications:read"], &[]).await;
    for _ in 0..2 {
        assert!(app.authorize_with(ask(&limited)).await.allowed, "the route-scoped limit is elsewhere");
    }
    let third = app.authorize_with(ask(&limited)).await;
    assert_eq!(
        (third.code.as_str(), third.reason.as_str(), third.http_status, third.limit),
        ("rate_limit_reached", "key_rate_limited", 429, 2)
    );
    assert!((1..=60).contains(&third.retry_after_seconds), "{third:?}");
    assert!(app.authorize_with(ask(&free)).await.allowed, "a key without limits shares none of them");
    app.clock.advance(Duration::from_secs(60));
    assert!(app.authorize_with(ask(&limited)).await.allowed, "the window moved on");
}

backend_tests!(credits_are_spent_exactly_once_each_under_concurrency);
async fn credits_are_spent_exactly_once_each_under_concurrency(db: Db) {
    let mut app = TestApp::spawn_on(TestDb::new(db).await.unwrap(), patient).await;
    let terms = pb::CreateApiKeyRequest { credits: credits(100, None), ..Default::default() };
    let (key, secret) = app.key_with("acct_cr", terms).await;
    // The first call verifies the secret (argon2); the burst is about spending, not about
    // 200 first uses at once, which the verifier's bounded queue may throttle.
    assert_eq!(app.authorize_with(ask(&secret)).await.credits_remaining, Some(99));
    let calls = (0..200).map(|_| {
        let mut client = app.authorizer.clone();
        let secret = secret.clone();
        tokio::spawn(async move { client.authorize(ask(&secret)).await.unwrap().into_inner() })
    });
    let mut balances = Vec::new();
    for call in calls.collect::<Vec<_>>() {
        let r = call.await.unwrap();
        if r.allowed {
            balances.push(r.credits_remaining.expect("an allowed call says what is left"));
        } else {
            assert_eq!(
                (r.code.as_str(), r.reason.as_str(), r.remaining),
                ("rate_limit_reached", "credits_exhausted", 0)
            );
            assert_eq!(r.credits_remaining, Some(0));
        }
    }
    balances.sort_unstable();
    // Spends grouped into one UPDATE still tell each call its own balance: 98 down to 0.
    assert_eq!(balances, (0..99).collect::<Vec<i64>>(), "exactly the 99 credits left, each once");
    let shown = app.admin.get_api_key(pb::GetApiKeyRequest { id: key.id }).await.unwrap().into_inner();
    assert_eq!(shown.credits.unwrap().remaining, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credits_spent_for_a_caller_that_gave_up_are_given_back() {
    let Some(db) = TestDb::new(Db::Postgres).await else {
        eprintln!("skipped: KEYGATE_TEST_POSTGRES_URL is not set");
        return;
    };
    let relay = crate::relay::Relay::start(crate::relay::target_of(&db.url)).await;
    let mut app = TestApp::spawn_url(&relay.url_for(&db.url), patient).await;
    let terms = pb::CreateApiKeyRequest { credits: credits(10, None), ..Default::default() };
    let (key, secret) = app.key_with("acct_gave_up", terms).await;
    let listener = app.handles.invalidation.clone().unwrap();
    eventually("the invalidation listener connects", || {
        let listener = listener.clone();
        async move { listener.is_connected() }
    })
    .await;
    assert_eq!(app.authorize_with(ask(&secret)).await.credits_remaining, Some(9));
    // The record in memory is the one the held call decides on: verified (no argon2 within
    // its deadline), and the create's notification heard (no reload through the relay).
    crate::authorize::wait_for_stored_digest(&app, &key.id).await;
    eventually("the create's notification arrived", || {
        let heard = listener.clone();
        async move { heard.notifications() >= 1 }
    })
    .await;
    assert_eq!(app.authorize_with(ask(&secret)).await.credits_remaining, Some(8));

    // Postgres' answers are held: the call with a 100 ms deadline reaches its spend, which
    // waits for a connection (the pool's check of it is held) and runs, committed, once
    // the answers flow again; by then its caller has given up and heard no allow.
    relay.hold_answers();
    let mut hasty = tonic::Request::new(ask(&secret));
    hasty.set_timeout(Duration::from_millis(100));
    let answer = app.authorizer.authorize(hasty).await;
    relay.release_answers();
    assert!(answer.is_err(), "no answer from the store, no allow: {answer:?}");

    // The next spend on the key waits for the abandoned one (and its give-back): 8 - this
    // one; 6 had the abandoned call's credit stayed spent.
    assert_eq!(app.authorize_with(ask(&secret)).await.credits_remaining, Some(7));
}

backend_tests!(a_replica_that_saw_no_credits_asks_again_within_a_second);
async fn a_replica_that_saw_no_credits_asks_again_within_a_second(db: Db) {
    let mut app = TestApp::spawn(db).await.unwrap();
    let terms = pb::CreateApiKeyRequest { credits: credits(1, None), ..Default::default() };
    let (key, secret) = app.key_with("acct_recheck", terms).await;
    assert_eq!(app.authorize_with(ask(&secret)).await.credits_remaining, Some(0));
    let refused = app.authorize_with(ask(&secret)).await;
    assert_eq!(refused.reason, "credits_exhausted");

    // A credit comes back without a change of the key (as one given back to a caller that
    // gave up does): no version, so no cache hears of it.
    let holder = keygate::domain::CreditHolder::Key(keygate::domain::KeyId::parse(&key.id).unwrap());
    let now = keygate::clock::Clock::now(&app.clock);
    app.handles.store.spend_credits(&holder, -1, None, now).await.unwrap();
    assert_eq!(app.authorize_with(ask(&secret)).await.reason, "credits_exhausted", "still known spent out");
    app.clock.advance(Duration::from_secs(1));
    let allowed = app.authorize_with(ask(&secret)).await;
    assert_eq!((allowed.allowed, allowed.credits_remaining), (true, Some(0)), "asked the store again: {allowed:?}");
}

backend_tests!(credits_refill_on_the_clock_to_or_by_the_amount);
async fn credits_refill_on_the_clock_to_or_by_the_amount(db: Db) {
    let mut app = TestApp::spawn(db).await.unwrap();
    let to = pb::CreateApiKeyRequest { credits: credits(2, Some((2, "60s", "to"))), ..Default::default() };
    let (_, refilled_to) = app.key_with("acct_rf", to).await;
    let add = pb::CreateApiKeyRequest { credits: credits(1, Some((1, "60s", "add"))), ..Default::default() };
    let (_, refilled_by) = app.key_with("acct_rf", add).await;
    assert_eq!(app.authorize_with(ask(&refilled_to)).await.credits_remaining, Some(1));
    assert_eq!(app.authorize_with(ask(&refilled_to)).await.credits_remaining, Some(0));
    let spent = app.authorize_with(ask(&refilled_to)).await;
    assert_eq!(spent.reason, "credits_exhausted");
    assert!((1..=60).contains(&spent.retry_after_seconds), "retry when the next period begins: {spent:?}");
    assert!(app.authorize_with(ask(&refilled_by)).await.allowed);
    assert!(!app.authorize_with(ask(&refilled_by)).await.allowed);

    // Three periods later: "to" is back at 2 (not 6); "add" gained one per period.
    app.clock.advance(Duration::from_secs(180));
    assert_eq!(app.authorize_with(ask(&refilled_to)).await.credits_remaining, Some(1));
    assert_eq!(app.authorize_with(ask(&refilled_by)).await.credits_remaining, Some(2));

    // A request may say what it costs; more than is left spends nothing.
    let costly = pb::AuthorizeRequest { cost: 5, ..ask(&refilled_by) };
    let refused = app.authorize_with(costly).await;
    assert_eq!((refused.reason.as_str(), refused.credits_remaining), ("credits_exhausted", Some(2)), "what is left");
    let two = pb::AuthorizeRequest { cost: 2, ..ask(&refilled_by) };
    assert_eq!(app.authorize_with(two).await.credits_remaining, Some(0), "the refused call spent nothing");
}

backend_tests!(a_top_up_restores_a_spent_key_at_once);
async fn a_top_up_restores_a_spent_key_at_once(db: Db) {
    let mut app = TestApp::spawn(db).await.unwrap();
    let terms = pb::CreateApiKeyRequest { credits: credits(1, None), ..Default::default() };
    let (key, secret) = app.key_with("acct_top", terms).await;
    assert!(app.authorize_with(ask(&secret)).await.allowed);
    for _ in 0..3 {
        // Refused without a refill to wait for: no retry time.
        let r = app.authorize_with(ask(&secret)).await;
        assert_eq!((r.reason.as_str(), r.retry_after_seconds), ("credits_exhausted", 0));
    }
    let top_up = pb::UpdateApiKeyRequest { id: key.id, credits: credits(2, None), ..Default::default() };
    app.admin.update_api_key(top_up).await.unwrap();
    assert_eq!(app.authorize_with(ask(&secret)).await.credits_remaining, Some(1), "the spent-out memo is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_postgres_never_spend_the_last_credit_twice() {
    let Some(db) = TestDb::new(Db::Postgres).await else {
        eprintln!("skipped: KEYGATE_TEST_POSTGRES_URL is not set");
        return;
    };
    let (mut a, b) = tokio::join!(TestApp::spawn_url(&db.url, patient), TestApp::spawn_url(&db.url, patient));
    let terms = pb::CreateApiKeyRequest { credits: credits(100, None), ..Default::default() };
    let (_, secret) = a.key_with("acct_cr2", terms).await;
    // Each replica has verified the secret once (2 credits): the burst is about spending.
    for app in [&a, &b] {
        let mut client = app.authorizer.clone();
        assert!(client.authorize(ask(&secret)).await.unwrap().into_inner().allowed);
    }
    assert_eq!(burst(&a, &b, &[secret.as_str()], 200, "credits_exhausted").await, 98, "exactly the 98 left, on both");
}

backend_tests!(an_ip_allowlist_admits_its_ranges_only_after_the_secret_is_proven);
async fn an_ip_allowlist_admits_its_ranges_only_after_the_secret_is_proven(db: Db) {
    let mut app = TestApp::spawn(db).await.unwrap();
    let terms = pb::CreateApiKeyRequest {
        allowed_networks: vec!["10.0.0.0/8".into(), "2001:db8::/32".into()],
        ..Default::default()
    };
    let (key, secret) = app.key_with("acct_ip", terms).await;
    for inside in ["10.1.2.3", "::ffff:10.9.9.9", "2001:db8:1::7"] {
        assert!(app.authorize_with(from(&secret, inside)).await.allowed, "{inside}");
    }
    for outside in ["11.0.0.1", "2001:db9::1", ""] {
        let r = app.authorize_with(from(&secret, outside)).await;
        assert_eq!(
            (r.code.as_str(), r.reason.as_str(), r.http_status),
            ("application_forbidden", "ip_not_allowed", 403),
            "{outside:?}"
        );
    }
    // Without the secret the allowlist says nothing: a wrong secret is only wrong.
    let forged = secret.replace(&secret[secret.len() - 4..], "AAAA");
    let r = app.authorize_with(from(&forged, "11.0.0.1")).await;
    assert_eq!((r.code.as_str(), r.reason.as_str()), ("api_key_invalid", "invalid_credential"));
    let shown = app.admin.get_api_key(pb::GetApiKeyRequest { id: key.id }).await.unwrap().into_inner();
    assert_eq!(shown.allowed_networks, ["10.0.0.0/8", "2001:db8::/32"]);

    // Envoy's Check decides on its source address, and says why in x-keygate-reason.
    let mut check =
        envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::new(app.channel.clone());
    let outside = crate::edge_contract::envoy_check("203.0.113.7", "GET", LIST, &[("x-api-key", &secret)], "");
    let response = check.check(outside).await.unwrap().into_inner();
    let Some(envoy_types::ext_authz::v3::pb::HttpResponse::DeniedResponse(denied)) = response.http_response else {
        panic!("a deny from outside the allowlist")
    };
    let headers: HashMap<_, _> =
        denied.headers.iter().map(|h| h.header.as_ref().unwrap()).map(|h| (h.key.clone(), h.value.clone())).collect();
    assert_eq!(denied.status.unwrap().code, 403);
    assert_eq!(headers.get("x-keygate-reason").map(String::as_str), Some("ip_not_allowed"));
    assert_eq!(
        denied.body,
        r#"{"success":false,"code":"application_forbidden","message":"the key may not be used from this client's address"}"#
    );
    let inside = crate::edge_contract::envoy_check("10.0.0.9", "GET", LIST, &[("x-api-key", &secret)], "");
    let response = check.check(inside).await.unwrap().into_inner();
    assert!(matches!(response.http_response, Some(envoy_types::ext_authz::v3::pb::HttpResponse::OkResponse(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_reaches_the_upstream_through_authorize_check_and_the_layer() {
    let mut app = TestApp::spawn(Db::Sqlite).await.unwrap();
    let terms =
        pb::CreateApiKeyRequest { metadata_json: r#"{"plan": "pro", "seats": 5}"#.into(), ..Default::default() };
    let (_, secret) = app.key_with("acct_meta", terms).await;
    let decided = app.authorize_with(ask(&secret)).await;
    assert_eq!(decided.principal.unwrap().metadata_json, r#"{"plan":"pro","seats":5}"#);

    let mut check =
        envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::new(app.channel.clone());
    let request = crate::edge_contract::envoy_check("203.0.113.7", "GET", LIST, &[("x-api-key", &secret)], "");
    let response = check.check(request).await.unwrap().into_inner();
    let Some(envoy_types::ext_authz::v3::pb::HttpResponse::OkResponse(ok)) = response.http_response else {
        panic!("an allow")
    };
    let meta = ok
        .headers
        .iter()
        .map(|h| h.header.as_ref().unwrap())
        .find(|h| h.key == "x-keygate-meta")
        .expect("the metadata header")
        .value
        .clone();
    use base64::Engine;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(meta).unwrap();
    assert_eq!(String::from_utf8(json).unwrap(), r#"{"plan":"pro","seats":5}"#);

    // The Rust layer hands it to the handler.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let edge = format!("http://{}", listener.local_addr().unwrap());
    let layer = keygate_client::KeygateLayer::new(keygate_client::KeygateClient::connect_lazy(&app.address).unwrap());
    tokio::spawn(async move { crate::example::serve(listener, layer).await.unwrap() });
    let body: serde_json::Value = reqwest::Client::new()
        .get(format!("{edge}{LIST}"))
        .header("x-api-key", &secret)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["caller"]["metadata"], serde_json::json!({ "plan": "pro", "seats": 5 }));
}

backend_tests!(a_disabled_key_is_refused_until_enabled_and_revoke_stays_final);
async fn a_disabled_key_is_refused_until_enabled_and_revoke_stays_final(db: Db) {
    let mut app = TestApp::spawn(db).await.unwrap();
    let (key, secret) = app.create_key("acct_sw", &["applications:read"], &[]).await;
    assert!(app.authorize_with(ask(&secret)).await.allowed);
    let switch = |enabled| pb::UpdateApiKeyRequest { id: key.id.clone(), enabled: Some(enabled), ..Default::default() };
    let off = app.admin.update_api_key(switch(false)).await.unwrap().into_inner();
    assert!(!off.enabled);
    let r = app.authorize_with(ask(&secret)).await;
    assert_eq!((r.code.as_str(), r.reason.as_str(), r.http_status), ("api_key_revoked", "disabled", 401));
    assert!(app.admin.update_api_key(switch(true)).await.unwrap().into_inner().enabled);
    assert!(app.authorize_with(ask(&secret)).await.allowed, "enabling restores it at once");

    app.admin.revoke_api_key(pb::RevokeApiKeyRequest { id: key.id.clone(), reason: "leak".into() }).await.unwrap();
    let refused = app.admin.update_api_key(switch(true)).await.unwrap_err();
    assert_eq!(reason(&refused), "bad_request", "a revoked key cannot be switched back on");
    assert_eq!(app.authorize_with(ask(&secret)).await.reason, "revoked");

    // The audit trail says who switched it, and how.
    let events = app
        .admin
        .list_audit_events(pb::ListAuditEventsRequest { account_id: "acct_sw".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .events;
    let switched: Vec<_> = events.iter().filter(|e| e.detail_json.contains("\"enabled\"")).collect();
    assert_eq!(switched.len(), 2, "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_on_one_replica_is_seen_on_the_other_and_enabling_restores() {
    let Some(db) = TestDb::new(Db::Postgres).await else {
        eprintln!("skipped: KEYGATE_TEST_POSTGRES_URL is not set");
        return;
    };
    let (mut a, b) = tokio::join!(TestApp::spawn_url(&db.url, |_| {}), TestApp::spawn_url(&db.url, |_| {}));
    for app in [&a, &b] {
        let status = app.handles.invalidation.clone().unwrap();
        eventually("the listener connects", || {
            let status = status.clone();
            async move { status.is_connected() }
        })
        .await;
    }
    let (key, secret) = a.create_key("acct_sw2", &["applications:read"], &[]).await;
    let on_b = |secret: String| {
        let mut client = b.authorizer.clone();
        async move { client.authorize(ask(&secret)).await.unwrap().into_inner() }
    };
    assert!(on_b(secret.clone()).await.allowed, "b has the key cached");
    let switch = |enabled| pb::UpdateApiKeyRequest { id: key.id.clone(), enabled: Some(enabled), ..Default::default() };
    a.admin.update_api_key(switch(false)).await.unwrap();
    eventually("b denies the disabled key", || {
        let ask = on_b(secret.clone());
        async move { ask.await.reason == "disabled" }
    })
    .await;
    a.admin.update_api_key(switch(true)).await.unwrap();
    eventually("b allows the enabled key", || {
        let ask = on_b(secret.clone());
        async move { ask.await.allowed }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_limits_on_redis_are_shared_by_replicas() {
    let Some(redis) = crate::helpers::redis_url() else { return };
    let db = TestDb::new(Db::Sqlite).await.unwrap();
    let prefix = crate::helpers::fresh_prefix();
    let configure = |s: &mut keygate::config::Settings| crate::helpers::limits_in_redis(s, &redis, &prefix);
    let mut a = TestApp::spawn_url(&db.url, configure).await;
    let b = TestApp::spawn_url(&db.url, configure).await;
    let terms = pb::CreateApiKeyRequest { limits: vec![limit("hourly", 5, 3600, "")], ..Default::default() };
    let (_, secret) = a.key_with("acct_klr", terms).await;
    assert_eq!(
        burst(&a, &b, &[secret.as_str()], 20, "key_rate_limited").await,
        5,
        "exactly the key's 5 across both replicas"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_terms_are_refused_with_the_field_named() {
    let mut app = TestApp::spawn(Db::Sqlite).await.unwrap();
    let cases: Vec<(pb::CreateApiKeyRequest, &str)> = vec![
        (
            pb::CreateApiKeyRequest { allowed_networks: vec!["10.0.0.0/33".into()], ..Default::default() },
            "allowed_networks",
        ),
        (
            pb::CreateApiKeyRequest {
                allowed_networks: (0..101).map(|i| format!("10.0.{i}.0/24")).collect(),
                ..Default::default()
            },
            "allowed_networks",
        ),
        (pb::CreateApiKeyRequest { metadata_json: "[1,2]".into(), ..Default::default() }, "metadata_json"),
        (
            pb::CreateApiKeyRequest {
                metadata_json: format!(r#"{{"a":"{}"}}"#, "x".repeat(5000)),
                ..Default::default()
            },
            "metadata_json",
        ),
        (pb::CreateApiKeyRequest { limits: vec![limit("x", 0, 60, "")], ..Default::default() }, "limits.limit"),
        (
            pb::CreateApiKeyRequest {
                limits: vec![limit("x", 1, 60, ""), limit("x", 2, 60, "")],
                ..Default::default()
            },
            "limits",
        ),
        (pb::CreateApiKeyRequest { credits: credits(-1, None), ..Default::default() }, "credits.remaining"),
        (
            pb::CreateApiKeyRequest { credits: credits(5, Some((5, "weekly", ""))), ..Default::default() },
            "credits.refill.interval",
        ),
    ];
    for (terms, field) in cases {
        let refused = app
            .admin
            .create_api_key(pb::CreateApiKeyRequest { account_id: "acct_bad".into(), name: "bad".into(), ..terms })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{field}: {refused:?}");
        assert!(refused.message().starts_with(field), "{field}: {}", refused.message());
    }
    let (_, secret) = app.create_key("acct_bad", &["applications:read"], &[]).await;
    let too_costly = app.authorizer.authorize(pb::AuthorizeRequest { cost: 1001, ..ask(&secret) }).await.unwrap_err();
    assert_eq!(too_costly.code(), tonic::Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_runtime_key_keeps_what_the_old_one_carried() {
    let mut app = TestApp::spawn(Db::Sqlite).await.unwrap();
    let application = app.create_app("acct_rt").await;
    let rotate = |grace| pb::RotateApplicationKeyRequest {
        application_id: application.id.clone(),
        grace_period_seconds: Some(grace),
    };
    let first = app.admin.rotate_application_key(rotate(0)).await.unwrap().into_inner();
    let id = first.key.unwrap().id;
    let carry = pb::UpdateApiKeyRequest {
        id: id.clone(),
        allowed_networks: Some(pb::StringList { values: vec!["10.0.0.0/8".into()] }),
        limits: Some(pb::KeyLimitList { values: vec![limit("runtime", 50, 60, "")] }),
        ..Default::default()
    };
    app.admin.update_api_key(carry).await.unwrap();
    let credits_refused = app
        .admin
        .update_api_key(pb::UpdateApiKeyRequest { id, credits: credits(5, None), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(reason(&credits_refused), "bad_request", "runtime keys carry no credits");

    let second = app.admin.rotate_application_key(rotate(0)).await.unwrap().into_inner();
    let key = second.key.unwrap();
    assert_eq!(key.allowed_networks, ["10.0.0.0/8"], "rotation keeps the allowlist: it never fails open");
    assert_eq!(key.limits.len(), 1);
    let outside = app
        .authorize_with(pb::AuthorizeRequest {
            credential: second.secret.clone(),
            method: "GET".into(),
            path: format!("/api/v1/panel/applications/{}", application.id),
            client_ip: "192.0.2.1".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(outside.reason, "ip_not_allowed", "{outside:?}");
}
