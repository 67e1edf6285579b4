//! Several keygate replicas on one Postgres: changes made through one reach the others'
//! caches without waiting for the TTL, even when the listener's connection is lost; and
//! once a revoke has returned, no replica allows the key again, loaded or stalled.

use crate::helpers::{eventually, Db, TestApp, TestDb};
use crate::relay::{target_of, Relay};
use keygate::grpc::proto as pb;
use sqlx::Connection;

const PATH: &str = "/api/v1/panel/applications";

/// Two replicas on a fresh Postgres schema, with their listeners connected.
pub(crate) async fn two_replicas() -> Option<(TestDb, TestApp, TestApp)> {
    two_replicas_with(|_| {}).await
}

/// The same, each replica's settings changed by `customize`.
pub(crate) async fn two_replicas_with(
    customize: impl Fn(&mut keygate::config::Settings) + Copy,
) -> Option<(TestDb, TestApp, TestApp)> {
    let db = TestDb::new(Db::Postgres).await?;
    let (a, b) = tokio::join!(TestApp::spawn_url(&db.url, customize), TestApp::spawn_url(&db.url, customize));
    listeners_connected(&[&a, &b]).await;
    Some((db, a, b))
}

/// Waits until each replica's Postgres listener (invalidations) is connected.
pub(crate) async fn listeners_connected(apps: &[&TestApp]) {
    for app in apps {
        let status = app.handles.invalidation.clone().expect("Postgres replicas listen");
        eventually("the listener connects", || {
            let status = status.clone();
            async move { status.is_connected() }
        })
        .await;
    }
}

pub(crate) async fn code_on(app: &TestApp, secret: &str) -> String {
    let mut client = app.authorizer.clone();
    let request = pb::AuthorizeRequest {
        credential: secret.into(),
        method: "GET".into(),
        path: PATH.into(),
        ..Default::default()
    };
    match client.authorize(request).await {
        Ok(response) if response.get_ref().allowed => "allowed".into(),
        Ok(response) => response.into_inner().code,
        // While its store is cut off a replica may answer UNAVAILABLE: never an allow.
        Err(status) => format!("{:?}", status.code()),
    }
}

async fn revoke(app: &mut TestApp, id: &str) {
    app.admin.revoke_api_key(pb::RevokeApiKeyRequest { id: id.into(), reason: "test".into() }).await.unwrap();
}

macro_rules! skip_without_postgres {
    ($e:expr) => {
        match $e {
            Some(v) => v,
            None => {
                eprintln!("skipped: KEYGATE_TEST_POSTGRES_URL is not set");
                return;
            }
        }
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_on_one_replica_is_denied_on_the_other() {
    let (_db, mut a, mut b) = skip_without_postgres!(two_replicas().await);
    let (key, secret) = a.create_key("acct_r", &["applications:read"], &[]).await;
    // The create's own notification may reach B during its first load, which then keeps
    // nothing; a later one is cached.
    eventually("B serves the key from its cache", || async {
        code_on(&b, &secret).await == "allowed" && b.handles.cache.stats().keys.entries > 0
    })
    .await;

    revoke(&mut a, &key.id).await;
    eventually("B denies the revoked key", || async { code_on(&b, &secret).await == "api_key_revoked" }).await;

    // Updates travel the same way: a scope removed on B is missing on A.
    let (key, secret) = b.create_key("acct_r", &["applications:read"], &[]).await;
    assert_eq!(code_on(&a, &secret).await, "allowed");
    b.admin
        .update_api_key(pb::UpdateApiKeyRequest {
            id: key.id,
            scopes: Some(pb::StringList { values: vec!["logs:read".into()] }),
            ..Default::default()
        })
        .await
        .unwrap();
    eventually("A sees the scope change", || async { code_on(&a, &secret).await == "insufficient_scope" }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_listener_was_terminated_still_converges() {
    let (db, mut a, b) = skip_without_postgres!(two_replicas().await);
    let (key, secret) = a.create_key("acct_t", &["applications:read"], &[]).await;
    assert_eq!(code_on(&b, &secret).await, "allowed");

    let status = b.handles.invalidation.clone().unwrap();
    let pid = status.backend_pid();
    let mut admin = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let terminated: bool =
        sqlx::query_scalar("SELECT pg_terminate_backend($1)").bind(pid).fetch_one(&mut admin).await.unwrap();
    assert!(terminated);
    revoke(&mut a, &key.id).await;

    eventually("B denies the revoked key", || async { code_on(&b, &secret).await == "api_key_revoked" }).await;
    eventually("B's listener reconnects", || {
        let status = status.clone();
        async move { status.connections() >= 2 && status.is_connected() && status.backend_pid() != pid }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_while_the_listener_was_cut_off_are_not_served_after_it_returns() {
    let db = skip_without_postgres!(TestDb::new(Db::Postgres).await);
    let relay = Relay::start(target_of(&db.url)).await;
    let mut a = TestApp::spawn_url(&db.url, |_| {}).await;
    let b = TestApp::spawn_url(&relay.url_for(&db.url), |_| {}).await;
    let status = b.handles.invalidation.clone().unwrap();
    eventually("B's listener connects", || {
        let status = status.clone();
        async move { status.is_connected() }
    })
    .await;
    let (key, secret) = a.create_key("acct_c", &["applications:read"], &[]).await;
    assert_eq!(code_on(&b, &secret).await, "allowed");

    // B loses Postgres entirely; the revoke's notification can never reach it.
    relay.cut();
    eventually("B notices", || {
        let status = status.clone();
        async move { !status.is_connected() }
    })
    .await;
    revoke(&mut a, &key.id).await;
    relay.restore().await;

    eventually("B denies once it is back", || async { code_on(&b, &secret).await == "api_key_revoked" }).await;
    eventually("B's listener reconnects", || {
        let status = status.clone();
        async move { status.connections() >= 2 && status.is_connected() }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_and_revokes_on_both_replicas_lose_nothing() {
    let (_db, a, b) = skip_without_postgres!(two_replicas().await);
    const PER_REPLICA: usize = 12;
    let create = |app: &TestApp, i: usize| {
        let mut admin = app.admin.clone();
        async move {
            admin
                .create_api_key(pb::CreateApiKeyRequest {
                    account_id: "acct_many".into(),
                    name: format!("key {i}"),
                    scopes: vec!["applications:read".into()],
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let creates = (0..PER_REPLICA).flat_map(|i| [create(&a, i), create(&b, PER_REPLICA + i)]);
    let created = futures_join_all(creates.collect()).await;
    assert_eq!(created.len(), 2 * PER_REPLICA);

    // Every other key is revoked, half of them through the replica that did not create it.
    let revokes = created.iter().enumerate().filter(|(i, _)| i % 2 == 0).map(|(i, c)| {
        let mut admin = if i % 4 == 0 { a.admin.clone() } else { b.admin.clone() };
        let id = c.key.as_ref().unwrap().id.clone();
        async move {
            admin.revoke_api_key(pb::RevokeApiKeyRequest { id, reason: "churn".into() }).await.unwrap();
        }
    });
    futures_join_all(revokes.collect()).await;

    let mut listed = a
        .admin
        .clone()
        .list_api_keys(pb::ListApiKeysRequest { account_id: "acct_many".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .keys;
    listed.sort_by(|x, y| x.id.cmp(&y.id));
    assert_eq!(listed.len(), 2 * PER_REPLICA, "every create is there");
    for (i, c) in created.iter().enumerate() {
        let expected = if i % 2 == 0 { "api_key_revoked" } else { "allowed" };
        for (name, replica) in [("a", &a), ("b", &b)] {
            eventually(&format!("both replicas agree on key {i}: {expected}"), || async {
                let code = code_on(replica, &c.secret).await;
                if code != expected {
                    eprintln!("key {i} on {name}: {code}");
                }
                code == expected
            })
            .await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_at_once_share_one_migration() {
    let db = skip_without_postgres!(TestDb::new(Db::Postgres).await);
    let starts = (0..3).map(|_| {
        let url = db.url.clone();
        async move { TestApp::spawn_url(&url, |_| {}).await }
    });
    let apps: Vec<TestApp> = futures_join_all(starts.collect()).await;
    let mut a = apps.into_iter().next().unwrap();
    a.create_key("acct_m", &["*"], &[]).await;
}

/// One busy thread per core beside the servers, as a loaded machine has: stopped when
/// dropped (a failing test included), and after a minute whatever happens. (Heavier
/// contention slowed everything alike and showed the race less often.)
const BUSY_PER_CORE: usize = 1;

struct Contention {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Contention {
    fn start() -> Self {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let threads = (0..cores * BUSY_PER_CORE)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
                    let mut spin = 0u64;
                    while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < until {
                        for _ in 0..10_000 {
                            spin = std::hint::black_box(spin.wrapping_mul(31).wrapping_add(7));
                        }
                    }
                })
            })
            .collect();
        Self { stop, threads }
    }
}

impl Drop for Contention {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.threads.drain(..).for_each(|t| t.join().unwrap());
    }
}

/// How many replicas the admin response says acknowledged the change, and how many it fenced.
fn settled<T>(response: &tonic::Response<T>) -> (usize, usize) {
    let count = |name: &str| {
        let value = response.metadata().get(name).unwrap_or_else(|| panic!("the response says {name}"));
        value.to_str().unwrap().parse::<usize>().unwrap()
    };
    (count("x-keygate-acknowledged"), count("x-keygate-fenced"))
}

/// Guards the barrier and acknowledgements (store::invalidation, Replicas::settle): a
/// revoke returns only once the other replica's listener has applied it. Without them,
/// B's listener, starved of CPU, read the revoke's notification after B had already
/// answered the next Authorize: 17 to 100 of 100 keys were still allowed (five runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_cpu_contention_no_replica_allows_a_key_after_its_revoke_returned() {
    let (_db, mut a, b) = skip_without_postgres!(two_replicas().await);
    const KEYS: usize = 100;
    let mut keys = Vec::with_capacity(KEYS);
    for _ in 0..KEYS {
        let (key, secret) = a.create_key("acct_load", &["applications:read"], &[]).await;
        assert_eq!(code_on(&b, &secret).await, "allowed");
        keys.push((key.id, secret));
    }
    let lease = b.handles.invalidation.clone().unwrap().replicas().lease();

    let contention = Contention::start();
    let (mut allowed, mut fenced) = (0, 0);
    for (id, secret) in &keys {
        // Under this load the store's breaker may refuse the call (UNAVAILABLE, nothing
        // promised); a client retries, and only an answered revoke counts.
        let mut tries = 0;
        let response = loop {
            let revoke = pb::RevokeApiKeyRequest { id: id.clone(), reason: "load".into() };
            match a.admin.revoke_api_key(revoke).await {
                Ok(response) => break response,
                Err(status) if status.code() == tonic::Code::Unavailable && tries < 200 => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(status) => panic!("the revoke failed: {status:?}"),
            }
        };
        let (acknowledged, fenced_now) = settled(&response);
        assert_eq!(acknowledged + fenced_now, 2, "both replicas are live");
        if fenced_now > 0 {
            // The call waited longer than B's lease in real time; B's clock is the test's,
            // so it moves as real time would have moved it.
            b.clock.advance(lease);
            fenced += fenced_now;
        }
        if code_on(&b, secret).await == "allowed" {
            allowed += 1;
        }
    }
    drop(contention);
    eprintln!("{KEYS} revokes under contention: {allowed} allows on B after a revoke returned, {fenced} fenced");
    assert_eq!(allowed, 0, "B allowed revoked keys after their revoke returned");
}

/// Guards the lease (cached::Trust, renewed by each replica's own heartbeats) and the
/// bounded wait: a replica whose listener has stopped (paused through the test hook, as
/// one starved of CPU) neither acknowledges nor renews its lease; the revoke returns after
/// the wait saying one replica was fenced, and that replica asks the store instead of
/// trusting its cache. Without them the revoke returned at once, said nothing, and B kept
/// allowing the key from its cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_does_not_acknowledge_is_fenced_and_denies() {
    let (_db, mut a, b) = skip_without_postgres!(two_replicas().await);
    let (key, secret) = a.create_key("acct_fence", &["applications:read"], &[]).await;
    let on_b = b.handles.invalidation.clone().unwrap();
    let on_a = a.handles.invalidation.clone().unwrap();
    // A knows B is live, and B serves the key from the memory it trusts.
    eventually("A hears B's heartbeats", || {
        let on_a = on_a.clone();
        async move { on_a.replicas().live() == 2 }
    })
    .await;
    eventually("B trusts its cache", || async { b.handles.cache.trust().holds() }).await;
    assert_eq!(code_on(&b, &secret).await, "allowed");

    on_b.pause(true);
    let response =
        a.admin.revoke_api_key(pb::RevokeApiKeyRequest { id: key.id.clone(), reason: "fence".into() }).await.unwrap();
    assert_eq!(settled(&response), (1, 1), "A applied it, B was fenced");
    // The call waited longer than B's lease, in real time; B's clock is the test's.
    b.clock.advance(on_b.replicas().lease());
    assert_eq!(code_on(&b, &secret).await, "api_key_revoked");
    assert!(!b.handles.cache.trust().holds(), "B's lease ran out: it reads from the store");

    on_b.pause(false);
    eventually("B trusts its cache again once its listener is back", || async { b.handles.cache.trust().holds() })
        .await;
    assert_eq!(code_on(&b, &secret).await, "api_key_revoked");
}

/// Runs futures concurrently on the test's runtime and collects their outputs in order.
async fn futures_join_all<F>(futures: Vec<F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}
