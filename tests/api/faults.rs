//! Faults and hostile input: outages of the store, shutdowns under load, oversized input.

use crate::helpers::{ask, eventually, reason, Db, TestApp, TestDb};
use crate::relay::{target_of, Relay};
use keygate::grpc::proto as pb;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const APPS: &str = "/api/v1/panel/applications";

#[tokio::test]
async fn oversized_and_overlong_input_gets_clear_codes() {
    let mut app = TestApp::spawn(Db::Sqlite).await.unwrap();
    // Larger than the Authorize message limit: refused before decoding.
    let err = app.authorizer.authorize(ask(&"k".repeat(100 * 1024))).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err:?}");
    // Under it but longer than any credential: an invalid key, decided without I/O.
    let r = app.authorize(&"kg_".repeat(3000), "GET", APPS).await;
    assert_eq!(r.code, "api_key_invalid");
    // Too many scopes, too long a path: the request itself is malformed.
    let many = pb::AuthorizeRequest { required_scopes: vec!["a".into(); 33], ..ask("") };
    assert_eq!(reason(&app.authorizer.authorize(many).await.unwrap_err()), "VALIDATION_ERROR");
    let long = pb::AuthorizeRequest { path: format!("/{}", "p/".repeat(3000)), ..ask("") };
    assert_eq!(reason(&app.authorizer.authorize(long).await.unwrap_err()), "VALIDATION_ERROR");
    // A name beyond its limit in an admin call.
    let err = app
        .admin
        .create_application(pb::CreateApplicationRequest { account_id: "acct".into(), name: "n".repeat(201) })
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "VALIDATION_ERROR");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_store_outage_cached_keys_are_decided_and_nothing_else_is_allowed() {
    let Some(db) = TestDb::new(Db::Postgres).await else {
        eprintln!("skipped: KEYGATE_TEST_POSTGRES_URL is not set");
        return;
    };
    let relay = Relay::start(target_of(&db.url)).await;
    // Short freshness and staleness, so that the bound is reached within the test.
    let mut app = TestApp::spawn_url(&relay.url_for(&db.url), |s| {
        s.cache.ttl = Duration::from_secs(1);
        s.cache.max_stale = Duration::from_secs(2);
        s.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let listener = app.handles.invalidation.clone().unwrap();
    eventually("the invalidation listener connects", || {
        let listener = listener.clone();
        async move { listener.is_connected() }
    })
    .await;
    let (key, secret) = app.create_key("acct_out", &["*"], &[]).await;
    let (_, never_used) = app.create_key("acct_out", &["*"], &[]).await;
    assert!(app.authorize(&secret, "GET", APPS).await.allowed, "the key is in use, so cached");
    // Its verified digest is stored (off the request path) and this replica's cached record
    // updated in place; a stored digest notifies nobody. The two creates' notifications
    // have arrived before the record in memory is the one the outage will find.
    crate::authorize::wait_for_stored_digest(&app, &key.id).await;
    let heard = listener.clone();
    eventually("the creates' notifications arrived", || {
        let heard = heard.clone();
        async move { heard.notifications() >= 2 }
    })
    .await;
    assert!(app.authorize(&secret, "GET", APPS).await.allowed);
    let stale_before = app.handles.cache.served_stale();

    relay.cut();
    // The key in use keeps being decided from the cache once its freshness runs out, and
    // that is counted.
    eventually("the cached key is served stale", || async {
        let _ = app.authorizer.clone().authorize(ask(&secret)).await;
        app.handles.cache.served_stale() > stale_before
    })
    .await;
    // ...a key never seen needs the store: UNAVAILABLE, never an allow.
    let err = app.authorizer.authorize(ask(&never_used)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert!(!err.message().contains("sql") && !err.message().contains(&never_used));
    // Staleness is bounded: TTL + max_stale after it was loaded, the key has no decision
    // either.
    eventually("the stale bound is reached", || async {
        app.authorizer.clone().authorize(ask(&secret)).await.is_err_and(|e| e.code() == tonic::Code::Unavailable)
    })
    .await;
    // Admin writes fail cleanly.
    let err = app
        .admin
        .revoke_api_key(pb::RevokeApiKeyRequest { id: key.id.clone(), reason: "during outage".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);

    relay.restore().await;
    eventually("keygate recovers by itself", || async {
        app.authorizer.clone().authorize(ask(&never_used)).await.is_ok_and(|r| r.get_ref().allowed)
    })
    .await;
    // The failed revoke was not half-applied.
    let got = app.admin.get_api_key(pb::GetApiKeyRequest { id: key.id }).await.unwrap().into_inner();
    assert_eq!(got.status, pb::ApiKeyStatus::Active as i32);
    // ...and left no audit event behind.
    let trail = app
        .admin
        .list_audit_events(pb::ListAuditEventsRequest { account_id: got.account_id, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(trail.events.iter().all(|e| e.action != "api_key.revoke"), "{:?}", trail.events);
    assert!(trail.events.iter().any(|e| e.action == "api_key.create"));

    // The operator saw it all in the metrics.
    let text = reqwest::get(app.metrics_url.clone().unwrap()).await.unwrap().text().await.unwrap();
    let value = |series: &str| {
        keygate::metrics::sample(&text, series).unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
    };
    assert!(value(r#"keygate_authorize_failures_total{cause="store_unavailable"}"#) >= 1.0);
    assert!(value(r#"keygate_store_errors_total{operation="key",kind="unavailable"}"#) >= 1.0);
    assert!(value("keygate_served_stale_total") >= 1.0);
    assert!(value("keygate_invalidation_listener_connections_total") >= 1.0);
    assert!(value("keygate_invalidation_notifications_total") >= 2.0, "the two creates were announced");
    assert!(value("keygate_invalidation_lag_seconds_count") >= 2.0);
}

/// Calls in a closed loop until told to stop; counts successes and failures.
fn load(
    app: &TestApp,
    secret: &str,
    callers: usize,
    stop: Arc<AtomicBool>,
) -> (Arc<AtomicU64>, Arc<AtomicU64>, Vec<tokio::task::JoinHandle<()>>) {
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    // Decided calls count as answered, whether allowed or (past the global limit) limited.
    let tasks = (0..callers)
        .map(|_| {
            let (mut client, secret, stop) = (app.authorizer.clone(), secret.to_owned(), stop.clone());
            let (ok, failed) = (ok.clone(), failed.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match client.authorize(ask(&secret)).await {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    (ok, failed, tasks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_under_load_finishes_what_it_took_and_refuses_the_rest() {
    let mut app = TestApp::spawn(Db::Sqlite).await.unwrap();
    let (_, secret) = app.create_key("acct_sd", &["*"], &[]).await;
    let address = app.address.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, tasks) = load(&app, &secret, 8, stop.clone());
    eventually("load is flowing", || async { ok.load(Ordering::Relaxed) > 200 }).await;
    let failed_before = failed.load(Ordering::Relaxed);
    app.stop().await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(failed_before, 0, "nothing failed before the shutdown");
    // After: the listener is gone; new connections are refused.
    assert!(tonic::transport::Channel::from_shared(address).unwrap().connect().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_under_load_fails_no_call_of_a_client_that_retries_unavailable() {
    let db = TestDb::new(Db::Sqlite).await.unwrap();
    // The database outlives both replicas.
    let url = db.url.clone();
    let mut first = TestApp::spawn_url(&url, |_| {}).await;
    let (_, secret) = first.create_key("acct_rs", &["*"], &[]).await;
    let listen: std::net::SocketAddr = first.address.trim_start_matches("http://").parse().unwrap();
    // keygate-client on a channel that reconnects, retrying what it reports as Unavailable
    // (UNAVAILABLE, and transport failures of calls the server never took) with backoff.
    let client = keygate_client::KeygateClient::connect_lazy(&first.address).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (answered, gave_up) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let (client, secret, stop, answered, gave_up) =
                (client.clone(), secret.clone(), stop.clone(), answered.clone(), gave_up.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let mut attempt = 0;
                    loop {
                        match client.authorize(ask(&secret)).await {
                            // Allowed, or (past the default global limit) rate limited: decided.
                            Ok(decision) => {
                                assert!(decision.allowed || decision.retry_after_seconds > 0, "{decision:?}");
                                answered.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                            Err(keygate_client::ClientError::Unavailable(_)) if attempt < 200 => {
                                attempt += 1;
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            Err(e) => {
                                eprintln!("gave up: {e:?}");
                                gave_up.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                        }
                    }
                }
            })
        })
        .collect();
    eventually("load is flowing", || async { answered.load(Ordering::Relaxed) > 100 }).await;
    first.stop().await;
    let second = TestApp::spawn_url(&url, |s| s.listen = listen).await;
    let before = answered.load(Ordering::Relaxed);
    eventually("the restarted replica answers", || async { answered.load(Ordering::Relaxed) > before + 100 }).await;
    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        caller.await.unwrap();
    }
    assert_eq!(gave_up.load(Ordering::Relaxed), 0, "no call failed for good");
    second.stop().await;
    drop(db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_reloads_swap_good_policies_under_load_and_refuse_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    let policy = |route: &str| format!("[[routes]]\nroute = \"GET {route}\"\n");
    std::fs::write(&path, policy("/v1/old")).unwrap();
    let db = TestDb::new(Db::Sqlite).await.unwrap();
    let policy_path = path.clone();
    let mut app = TestApp::spawn_on(db, move |s| s.policy = Some(policy_path)).await;
    let (_, secret) = app.create_key("acct_pol", &["*"], &[]).await;
    assert!(app.authorize(&secret, "GET", "/v1/old").await.allowed);

    // Callers keep asking about both routes while the policy changes under them: every
    // call is decided (allowed under one policy, not_found under the other), none fails.
    let running = Arc::new(AtomicBool::new(true));
    let (decided, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let callers: Vec<_> = (0..4)
        .map(|i| {
            let (mut client, secret, running) = (app.authorizer.clone(), secret.clone(), running.clone());
            let (decided, failed) = (decided.clone(), failed.clone());
            tokio::spawn(async move {
                while running.load(Ordering::Relaxed) {
                    let route = if i % 2 == 0 { "/v1/old" } else { "/v1/new" };
                    let ask = pb::AuthorizeRequest { path: route.into(), ..ask(&secret) };
                    match client.authorize(ask).await {
                        Ok(r) if r.get_ref().allowed || r.get_ref().code == "not_found" => {
                            decided.fetch_add(1, Ordering::Relaxed)
                        }
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for round in 0..3 {
        std::fs::write(&path, policy("/v1/new")).unwrap();
        assert_eq!(app.handles.reload_policy().unwrap(), 1, "round {round}");
        assert!(app.authorize(&secret, "GET", "/v1/new").await.allowed);
        assert_eq!(app.authorize(&secret, "GET", "/v1/old").await.code, "not_found");
        // A bad policy is refused, naming its problem; the last good one keeps serving.
        std::fs::write(&path, "[[routes]]\nroute = \"FETCH /v1/broken\"\n").unwrap();
        let err = app.handles.reload_policy().unwrap_err();
        assert!(err.to_string().contains("route #1"), "{err}");
        assert!(app.authorize(&secret, "GET", "/v1/new").await.allowed);
        std::fs::write(&path, policy("/v1/old")).unwrap();
        app.handles.reload_policy().unwrap();
        assert!(app.authorize(&secret, "GET", "/v1/old").await.allowed);
    }
    running.store(false, Ordering::Relaxed);
    for caller in callers {
        caller.await.unwrap();
    }
    assert!(decided.load(Ordering::Relaxed) > 0);
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no call failed across six reloads");
}
