//! Hostile callers, as they would call: guesses at a known key id from many addresses,
//! floods of forged credentials with valid checksums, guesses in flight at once, grace
//! chains, undecodable messages, credentials in URLs. The holder of a key must always get
//! in, and what guessing costs keygate must stay inside the documented budgets.

use crate::authorize::{forge_with_key_id, wait_for_stored_digest};
use crate::helpers::{ask, Db, TestApp, TestDb};
use keygate::grpc::proto as pb;
use keygate::metrics::sample;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const APPS: &str = "/api/v1/panel/applications";

fn from(credential: &str, ip: &str) -> pb::AuthorizeRequest {
    pb::AuthorizeRequest { client_ip: ip.into(), ..ask(credential) }
}

/// 200 wrong secrets for the holder's key id from 50 addresses, the holder calling after
/// every tenth; returns how the holder's calls were answered.
async fn flood_with_holder(app: &TestApp, secret: &str, round: u32) -> (u64, u64) {
    let (allowed, turned_away) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let tasks: Vec<_> = (0..4)
        .map(|worker| {
            let (mut client, secret) = (app.authorizer.clone(), secret.to_owned());
            let (allowed, turned_away) = (allowed.clone(), turned_away.clone());
            tokio::spawn(async move {
                for n in 0..50u32 {
                    let address = format!("198.51.{}.{}", round, (worker * 50 + n) % 50 + 1);
                    let guess = client.authorize(from(&forge_with_key_id(&secret), &address)).await.unwrap();
                    assert_eq!(guess.into_inner().code, "api_key_invalid");
                    if n % 10 == 0 {
                        let r = client.authorize(from(&secret, "203.0.113.200")).await.unwrap().into_inner();
                        assert_ne!(r.code, "api_key_invalid", "the holder was told its key is invalid: {r:?}");
                        if r.allowed {
                            allowed.fetch_add(1, Ordering::Relaxed);
                        } else {
                            // Turned away for load: it must say so, with a time to retry.
                            assert_eq!(r.code, "rate_limit_reached", "{r:?}");
                            assert!(r.retry_after_seconds > 0, "{r:?}");
                            turned_away.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    (allowed.load(Ordering::Relaxed), turned_away.load(Ordering::Relaxed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_holder_gets_in_through_guessing_updates_and_restarts() {
    let db = TestDb::new(Db::Sqlite).await.unwrap();
    let url = db.url.clone();
    let mut app = TestApp::spawn_url(&url, |_| {}).await;
    let (key, secret) = app.create_key("acct_holder", &["*"], &[]).await;
    assert!(app.authorize_with(from(&secret, "203.0.113.200")).await.allowed, "the holder, once before");
    wait_for_stored_digest(&app, &key.id).await;

    let mut total = (0, 0);
    let before = app.verifications();
    for round in 0..3 {
        let (allowed, away) = flood_with_holder(&app, &secret, round).await;
        total = (total.0 + allowed, total.1 + away);
    }
    assert_eq!(app.verifications(), before, "600 guesses at a verified key ran no argon2");
    // An update invalidates the record everywhere; the reload still knows the holder.
    app.admin
        .update_api_key(pb::UpdateApiKeyRequest {
            id: key.id.clone(),
            name: Some("renamed".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let (allowed, away) = flood_with_holder(&app, &secret, 3).await;
    total = (total.0 + allowed, total.1 + away);
    // A restart (a new replica would be the same): nothing in memory, the digest in the row.
    app.stop().await;
    let app = TestApp::spawn_url(&url, |_| {}).await;
    let (allowed, away) = flood_with_holder(&app, &secret, 4).await;
    total = (total.0 + allowed, total.1 + away);
    assert_eq!(app.verifications(), 0, "the restarted replica recognised the holder without argon2");
    let calls = total.0 + total.1;
    assert_eq!(calls, 100, "1000 guesses, a holder call after every tenth");
    assert!(total.0 * 100 >= calls * 99, "the holder was allowed on {} of {calls} calls", total.0);
    drop(db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_credentials_cost_bounded_work_and_never_push_out_real_keys() {
    let db = TestDb::new(Db::Sqlite).await.unwrap();
    let mut app = TestApp::spawn_on(db, |s| {
        s.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        // Work is counted here, not the store's latency: on a loaded machine 32 reads in
        // flight on SQLite outlast 100 ms and would open the store's breaker mid-count.
        s.store_breaker.timeout = std::time::Duration::from_secs(10);
        // A record is reloaded once its age passes the cache's TTL (30 s at most, on the
        // monotonic clock): on a loaded machine the flood lasts longer than that, and such
        // a reload is not the flood pushing the hot key out.
        s.cache.ttl = std::time::Duration::from_secs(3600);
    })
    .await;
    let (hot_key, hot) = app.create_key("acct_flood", &["*"], &[]).await;
    let (cold_key, cold) = app.create_key("acct_flood", &["*"], &[]).await;
    // Read back through the admin API: its record is in memory, so its first use needs no
    // lookup (the flood spends the replica's unknown-id lookups; see the guarantees).
    app.admin.get_api_key(pb::GetApiKeyRequest { id: cold_key.id }).await.unwrap();
    assert!(app.authorize_with(from(&hot, "203.0.113.1")).await.allowed);
    wait_for_stored_digest(&app, &hot_key.id).await;
    assert!(app.authorize_with(from(&hot, "203.0.113.1")).await.allowed, "hot, and cached with its digest");
    let metrics = |app: &TestApp| {
        let url = app.metrics_url.clone().unwrap();
        async move { reqwest::get(url).await.unwrap().text().await.unwrap() }
    };
    let value = |text: &str, series: &str| sample(text, series).unwrap_or(0.0);
    let lookups = r#"keygate_store_operation_seconds_count{operation="key"}"#;
    let before = metrics(&app).await;
    let argon2_before = app.verifications();

    // 10,000 well-formed credentials with fresh random ids (the checksum is public): half
    // from 5,000 addresses, half with none, 32 in flight.
    let (throttled, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let tasks: Vec<_> = (0..32u32)
        .map(|worker| {
            let mut client = app.authorizer.clone();
            let (throttled, refused) = (throttled.clone(), refused.clone());
            tokio::spawn(async move {
                for n in (worker..10_000).step_by(32) {
                    let forged = keygate::domain::GeneratedKey::generate().unwrap().into_secret_string();
                    let address = if n % 2 == 0 {
                        format!("10.{}.{}.{}", n >> 16 & 255, n >> 8 & 255, n & 255)
                    } else {
                        String::new()
                    };
                    let r = client.authorize(from(&forged, &address)).await.unwrap().into_inner();
                    match r.code.as_str() {
                        "api_key_invalid" => refused.fetch_add(1, Ordering::Relaxed),
                        "rate_limit_reached" => throttled.fetch_add(1, Ordering::Relaxed),
                        other => panic!("a forged credential was answered {other}"),
                    };
                }
            })
        })
        .collect();
    // Meanwhile a real key nobody has used yet is verified, from its own address.
    let first_use = app.authorize_with(from(&cold, "192.0.2.50")).await;
    assert!(first_use.allowed, "a real cold key is verified during the flood: {first_use:?}");
    for task in tasks {
        task.await.unwrap();
    }
    let after = metrics(&app).await;
    assert_eq!(app.verifications() - argon2_before, 1, "no argon2 for any forged credential (one for the cold key)");
    let looked_up = value(&after, lookups) - value(&before, lookups);
    // The budgets: one lookup per address per unknown id, at most 100 per address (and per
    // "no address") per minute, and 200 for everyone together while the test's clock
    // stands still (the replica's cap on unknown-id lookups).
    assert!(looked_up <= 200.0, "{looked_up} store lookups");
    assert!(throttled.load(Ordering::Relaxed) >= 4_900, "addressless guesses past their budget were throttled");
    assert_eq!(refused.load(Ordering::Relaxed) + throttled.load(Ordering::Relaxed), 10_000);
    // The hot key was never pushed out: answered from memory, no lookup.
    let hits = r#"keygate_cache_lookups_total{cache="keys",result="hit"}"#;
    let hot_after = app.authorize_with(from(&hot, "203.0.113.1")).await;
    assert!(hot_after.allowed);
    let last = metrics(&app).await;
    assert_eq!(value(&last, lookups), value(&after, lookups), "the hot key needed no store lookup");
    assert!(value(&last, hits) > value(&after, hits));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_budget_holds_with_32_guesses_in_flight() {
    let db = TestDb::new(Db::Sqlite).await.unwrap();
    let mut app = TestApp::spawn_on(db, |s| {
        s.budgets.max_failures_per_client = 10;
        s.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        // Work is counted here, not speed: on a loaded machine ten verifications queued in
        // one account's share of the slots outlast the 800 ms decision deadline, and 300
        // lookups in flight on SQLite outlast 100 ms and would open the store's breaker.
        s.edge.decision_deadline = std::time::Duration::from_secs(60);
        s.store_breaker.timeout = std::time::Duration::from_secs(10);
        // The client's budget is what is counted, not its account's share of the suspects'
        // bucket (tests/api/isolation_verify.rs counts that).
        s.budgets.suspect_verifications_per_second = 1_000_000;
    })
    .await;
    let mut keys = Vec::new();
    for _ in 0..40 {
        let (key, secret) = app.create_key("acct_conc", &["*"], &[]).await;
        // Read back through the admin API: the record is in memory before the guesses.
        app.admin.get_api_key(pb::GetApiKeyRequest { id: key.id }).await.unwrap();
        keys.push(secret);
    }
    let before = app.verifications();
    let guesses: Vec<_> = keys
        .iter()
        .map(|key| {
            let (mut client, guess) = (app.authorizer.clone(), forge_with_key_id(key));
            tokio::spawn(async move { client.authorize(from(&guess, "192.0.2.77")).await.unwrap().into_inner().code })
        })
        .collect();
    let mut codes = Vec::new();
    for guess in guesses {
        codes.push(guess.await.unwrap());
    }
    assert_eq!(app.verifications() - before, 10, "exactly the budget, however many were in flight");
    assert_eq!(codes.iter().filter(|c| *c == "api_key_invalid").count(), 10);
    assert_eq!(codes.iter().filter(|c| *c == "rate_limit_reached").count(), 30);

    // Lookups of unknown ids from one address, in flight together, stop at its budget too.
    let lookups = r#"keygate_store_operation_seconds_count{operation="key"}"#;
    let url = app.metrics_url.clone().unwrap();
    let count = || async { sample(&reqwest::get(&url).await.unwrap().text().await.unwrap(), lookups).unwrap_or(0.0) };
    let before = count().await;
    let forged: Vec<_> = (0..300)
        .map(|_| {
            let mut client = app.authorizer.clone();
            let forged = keygate::domain::GeneratedKey::generate().unwrap().into_secret_string();
            tokio::spawn(async move { client.authorize(from(&forged, "192.0.2.78")).await.unwrap() })
        })
        .collect();
    for call in forged {
        call.await.unwrap();
    }
    assert!(count().await - before <= 10.0, "{} lookups for a budget of 10", count().await - before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emergency_rotation_ends_every_older_grace() {
    let mut app = TestApp::spawn(Db::Sqlite).await.unwrap();
    let application = app.create_app("acct_grace").await;
    let rotate = |grace: u32| pb::RotateApplicationKeyRequest {
        application_id: application.id.clone(),
        grace_period_seconds: Some(grace),
    };
    let path = format!("{APPS}/{}", application.id);
    let first = app.admin.rotate_application_key(rotate(0)).await.unwrap().into_inner().secret;
    let second = app.admin.rotate_application_key(rotate(7 * 86_400)).await.unwrap().into_inner().secret;
    assert!(app.authorize(&first, "GET", &path).await.allowed, "in its 7-day grace");
    let third = app.admin.rotate_application_key(rotate(0)).await.unwrap().into_inner().secret;
    assert_eq!(app.authorize(&first, "GET", &path).await.code, "api_key_revoked", "no grace outlives the emergency");
    assert_eq!(app.authorize(&second, "GET", &path).await.code, "api_key_revoked");
    assert!(app.authorize(&third, "GET", &path).await.allowed);
}

/// An Authorize request whose credential field is not UTF-8, as bytes on the wire.
#[derive(Clone, PartialEq, prost::Message)]
struct RawAuthorizeRequest {
    #[prost(bytes = "vec", tag = "1")]
    credential: Vec<u8>,
    #[prost(string, tag = "2")]
    method: String,
    #[prost(string, tag = "3")]
    path: String,
}

#[tokio::test]
async fn an_undecodable_request_is_invalid_argument_not_internal() {
    let app = TestApp::spawn(Db::Sqlite).await.unwrap();
    let mut grpc = tonic::client::Grpc::new(app.channel.clone());
    grpc.ready().await.unwrap();
    let request = RawAuthorizeRequest { credential: vec![0xff, 0xfe, b'k'], method: "GET".into(), path: APPS.into() };
    let codec = tonic_prost::ProstCodec::<RawAuthorizeRequest, pb::AuthorizeResponse>::default();
    let path = http::uri::PathAndQuery::from_static("/keygate.v1.Authorizer/Authorize");
    let err = grpc.unary(tonic::Request::new(request), path, codec).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    // A failure of keygate's own is still INTERNAL/UNAVAILABLE: only decoding is remapped.
    assert!(app.authorizer.clone().authorize(ask("")).await.is_ok());
}

#[test]
fn a_password_in_a_database_url_never_reaches_a_log_line() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
        // Nothing listens on port 1: start-up fails and says why, naming the URL.
        .env("KEYGATE_DATABASE_URL", "postgres://kg@127.0.0.1:1/db?sslmode=disable&password=hunter2-secret")
        .env("KEYGATE_ADMIN_TOKEN", crate::helpers::ADMIN_TOKEN)
        .env("KEYGATE_DIGEST_KEY", crate::helpers::DIGEST_KEY)
        .output()
        .expect("the keygate binary runs");
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(!output.status.success(), "{said}");
    assert!(said.contains("password=***"), "the URL is named, masked: {said}");
    assert!(!said.contains("hunter2"), "{said}");
}
