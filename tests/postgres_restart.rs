//! A real Postgres restart under load. Its own test binary, because it takes Postgres away
//! from everything else for a few seconds: cargo runs test binaries one at a time.
//! Runs when KEYGATE_TEST_POSTGRES_URL is set and KEYGATE_TEST_POSTGRES_RESTART=1 (as
//! .ci/run sets them) and this process may run `pg_ctlcluster`.

#[path = "api/helpers.rs"]
#[allow(dead_code)]
mod helpers;

use helpers::{ask, eventually, Db, TestApp, TestDb};
use keygate::grpc::proto as pb;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const APPS: &str = "/api/v1/panel/applications";

fn restart_postgres() {
    let version = std::fs::read_dir("/etc/postgresql")
        .expect("a Debian Postgres cluster")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .expect("a Postgres version");
    let status = std::process::Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version, "main", "restart"])
        .status()
        .expect("pg_ctlcluster runs");
    assert!(status.success(), "pg_ctlcluster restart failed: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_postgres_restart_under_load_errors_return_to_zero() {
    if std::env::var("KEYGATE_TEST_POSTGRES_RESTART").as_deref() != Ok("1") {
        eprintln!("skipped: KEYGATE_TEST_POSTGRES_RESTART is not 1");
        return;
    }
    let Some(db) = TestDb::new(Db::Postgres).await else {
        eprintln!("skipped: KEYGATE_TEST_POSTGRES_URL is not set");
        return;
    };
    let mut app = TestApp::spawn_on(db, |_| {}).await;
    let (_, hot) = app.create_key("acct_pg", &["*"], &[]).await;
    assert!(app.authorize(&hot, "GET", APPS).await.allowed);

    let running = Arc::new(AtomicBool::new(true));
    let (decided, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let (mut client, hot, running) = (app.authorizer.clone(), hot.clone(), running.clone());
            let (decided, failed) = (decided.clone(), failed.clone());
            tokio::spawn(async move {
                while running.load(Ordering::Relaxed) {
                    match client.authorize(ask(&hot)).await {
                        Ok(r) => {
                            assert!(
                                r.get_ref().allowed || r.get_ref().code == "rate_limit_reached",
                                "{:?}",
                                r.get_ref()
                            );
                            decided.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        })
        .collect();
    eventually("load is flowing", || async { decided.load(Ordering::Relaxed) > 50 }).await;

    tokio::task::spawn_blocking(restart_postgres).await.unwrap();

    // keygate reconnects by itself: a key it has never seen (so the store is needed) is
    // decided again, and then a stretch of calls has no error at all. The key is in an
    // account of its own: the load may have spent acct_pg's 3,000 a minute by now (how soon
    // depends on the machine's speed), and a limited call is decided but not allowed.
    let (_, fresh) = loop {
        let created = app
            .admin
            .create_api_key(pb::CreateApiKeyRequest {
                account_id: "acct_pg_fresh".into(),
                name: "after restart".into(),
                scopes: vec!["*".into()],
                ..Default::default()
            })
            .await;
        match created {
            Ok(created) => {
                let created = created.into_inner();
                break (created.key, created.secret);
            }
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    eventually("a key it has never seen is decided", || async {
        app.authorizer.clone().authorize(ask(&fresh)).await.is_ok_and(|r| r.get_ref().allowed)
    })
    .await;
    let failed_before = failed.load(Ordering::Relaxed);
    let decided_before = decided.load(Ordering::Relaxed);
    eventually("a stretch of calls", || async { decided.load(Ordering::Relaxed) > decided_before + 200 }).await;
    assert_eq!(failed.load(Ordering::Relaxed), failed_before, "errors are back to zero");
    running.store(false, Ordering::Relaxed);
    for caller in callers {
        caller.await.unwrap();
    }
}
