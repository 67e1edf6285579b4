//! Shared limits on a real Redis Cluster: three masters started by
//! `scripts/redis-cluster.sh` (`.ci/run` runs it and sets KEYGATE_TEST_REDIS_CLUSTER_URL;
//! skipped, saying so, without it). Exact limits across replicas, leased high-rate limits,
//! limits of one request in different slots, a slot moved to another master under load,
//! and a master stopped and started again. One test at a time: two of them change the
//! cluster under the others.

use crate::helpers::{ask, eventually, fresh_prefix, limits_in_redis, Db, TestApp, TestDb};
use crate::limits::CREATE_KEYS;
use crate::sessions::create_session;
use keygate::grpc::proto as pb;
use keygate::ratelimit::Limiter;
use redis::AsyncCommands;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The test cluster's URL, or `None` (and a line saying the test is skipped).
fn cluster_url() -> Option<String> {
    let url = std::env::var("KEYGATE_TEST_REDIS_CLUSTER_URL").ok();
    if url.is_none() {
        eprintln!("skipped: KEYGATE_TEST_REDIS_CLUSTER_URL is not set (scripts/redis-cluster.sh starts a cluster)");
    }
    url
}

/// One master of the test cluster, spoken to directly (not through the cluster client).
#[derive(Debug, Clone)]
struct Master {
    id: String,
    port: u16,
    /// The slot ranges it serves.
    slots: Vec<(u16, u16)>,
}

impl Master {
    async fn connection(&self) -> redis::aio::MultiplexedConnection {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}", self.port)).unwrap();
        client.get_multiplexed_async_connection().await.unwrap()
    }

    async fn command<T: redis::FromRedisValue>(&self, command: &mut redis::Cmd) -> T {
        command.query_async(&mut self.connection().await).await.unwrap()
    }
}

/// The masters as the first seed node sees them (`CLUSTER NODES`).
async fn masters(url: &str) -> Vec<Master> {
    let seed = keygate::ratelimit::connection::cluster_nodes(url).unwrap().unwrap()[0].clone();
    let port = seed.rsplit(':').next().unwrap().trim_end_matches('/').parse().unwrap();
    let nodes: String =
        Master { id: String::new(), port, slots: vec![] }.command(redis::cmd("CLUSTER").arg("NODES")).await;
    nodes
        .lines()
        .filter(|line| line.contains("master") && !line.contains("fail"))
        .map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let port = fields[1].split(['@', ':']).nth(1).unwrap().parse().unwrap();
            let slots = fields[8..]
                .iter()
                .filter(|range| !range.starts_with('['))
                .map(|range| match range.split_once('-') {
                    Some((from, to)) => (from.parse().unwrap(), to.parse().unwrap()),
                    None => (range.parse().unwrap(), range.parse().unwrap()),
                })
                .collect();
            Master { id: fields[0].to_owned(), port, slots }
        })
        .collect()
}

/// The slot of `key`, and the master serving it.
async fn owner_of(url: &str, key: &str) -> (u16, Master) {
    let masters = masters(url).await;
    let slot: u16 = masters[0].command(redis::cmd("CLUSTER").arg("KEYSLOT").arg(key)).await;
    let owner = masters.iter().find(|m| m.slots.iter().any(|&(from, to)| (from..=to).contains(&slot))).unwrap();
    (slot, owner.clone())
}

/// The exact counter of the default policy's key creation limit for `account`.
fn creations_key(prefix: &str, account: &str) -> String {
    format!("{prefix}POST /api/v1/panel/api-keys#0:{account}")
}

fn create_key_request(token: &str) -> pb::AuthorizeRequest {
    pb::AuthorizeRequest {
        credential: token.into(),
        method: "POST".into(),
        path: CREATE_KEYS.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_a_redis_cluster_admit_exactly_ten_of_fifty() {
    let Some(url) = cluster_url() else { return };
    let _alone = ONE_AT_A_TIME.lock().await;
    crate::limits::two_replicas_admit_exactly_ten_of_fifty(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_a_redis_cluster_spend_exactly_a_high_rate_limit_from_slices() {
    let Some(url) = cluster_url() else { return };
    let _alone = ONE_AT_A_TIME.lock().await;
    crate::leases::two_replicas_spend_exactly_the_limit(url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_slices_follow_the_traffic_within_the_bound() {
    let Some(url) = cluster_url() else { return };
    let _alone = ONE_AT_A_TIME.lock().await;
    crate::slices::busy_and_idle(url.clone()).await;
    crate::slices::two_replicas_within_the_bound(url).await;
}

/// Per account 5 an hour, per key 3 an hour: two exact limits of one request, whose
/// counters live in two slots.
const TWO_SLOTS: &str = r#"
[[routes]]
route = "GET /api/v1/panel/applications"
accepts = ["api_key"]
scopes = ["applications:read"]

[[routes.limits]]
limit = 5
window = "hour"
per = "account"

[[routes.limits]]
limit = 3
window = "hour"
per = "key"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_refused_in_one_slot_is_taken_back_from_the_other() {
    let Some(url) = cluster_url() else { return };
    let _alone = ONE_AT_A_TIME.lock().await;
    let policy = std::env::temp_dir().join(format!("kg-slots-{}.toml", keygate::domain::random_token(8).unwrap()));
    std::fs::write(&policy, TWO_SLOTS).unwrap();
    let prefix = fresh_prefix();
    let mut app = TestApp::spawn_on(TestDb::new(Db::Sqlite).await.unwrap(), |s| {
        limits_in_redis(s, &url, &prefix);
        s.policy = Some(policy.clone());
    })
    .await;
    let (first, a) = app.create_key("acct_slots", &["applications:read"], &[]).await;
    let (_, b) = app.create_key("acct_slots", &["applications:read"], &[]).await;
    let per_account = format!("{prefix}GET /api/v1/panel/applications#0:acct_slots");
    let per_key = format!("{prefix}GET /api/v1/panel/applications#1:{}", first.id);
    assert_ne!(owner_of(&url, &per_account).await.0, owner_of(&url, &per_key).await.0, "two slots");

    // Key a: 3 allowed, then refused by its own limit, which the account's slot (another
    // script) had already counted: those counts are taken back.
    for i in 0..5 {
        let r = app.authorize(&a, "GET", "/api/v1/panel/applications").await;
        assert_eq!(r.allowed, i < 3, "call {i}: {r:?}");
        assert!(r.allowed || r.limit == 3, "refused by the key's limit: {r:?}");
    }
    let Limiter::Redis(limiter) = &*app.handles.limiter else { panic!("limits are on Redis") };
    let stats = limiter.stats();
    eventually("the refused calls' account counts are taken back", || async {
        stats.rolled_back.load(Ordering::Relaxed) == 2
    })
    .await;
    // So key b has the account's 2 left, not 0.
    let mut admitted = 0;
    for _ in 0..3 {
        admitted += usize::from(app.authorize(&b, "GET", "/api/v1/panel/applications").await.allowed);
    }
    assert_eq!(admitted, 2, "the account's limit of 5 less key a's 3");
    let client = keygate::ratelimit::connection::StoreClient::open(&url, None).unwrap();
    let mut connection = client.connect().await.unwrap();
    eventually("the account's count holds only what was allowed", || async {
        connection.clone().zcard::<_, u64>(&per_account).await.unwrap() == 5
    })
    .await;
    assert_eq!(connection.zcard::<_, u64>(&per_key).await.unwrap(), 3, "key a's own count: its 3 allowed");
    let _ = std::fs::remove_file(&policy);
}

/// Moves `slot` from `from` to `to` as `redis-cli --cluster reshard` does, one key at a
/// time, pausing between the steps so that calls meet each of them: the slot migrating
/// (keys still on `from`), its keys moved (`ASK` to `to`), and the slot `to`'s (`MOVED`).
async fn move_slot(slot: u16, from: &Master, to: &Master, others: &[Master]) {
    let pause = Duration::from_millis(300);
    let set = |state: &str, node: &str| redis::cmd("CLUSTER").arg("SETSLOT").arg(slot).arg(state).arg(node).clone();
    let () = to.command(&mut set("IMPORTING", &from.id)).await;
    let () = from.command(&mut set("MIGRATING", &to.id)).await;
    tokio::time::sleep(pause).await;
    loop {
        let keys: Vec<String> = from.command(redis::cmd("CLUSTER").arg("GETKEYSINSLOT").arg(slot).arg(100)).await;
        if keys.is_empty() {
            break;
        }
        for key in keys {
            let mut migrate = redis::cmd("MIGRATE");
            migrate.arg("127.0.0.1").arg(to.port).arg(&key).arg(0).arg(5000);
            let _: redis::Value = from.command(&mut migrate).await;
        }
    }
    tokio::time::sleep(pause).await;
    for node in [to, from].into_iter().chain(others) {
        let () = node.command(&mut set("NODE", &to.id)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_moved_to_another_master_under_load_admits_no_more_than_the_limit() {
    let Some(url) = cluster_url() else { return };
    let _alone = ONE_AT_A_TIME.lock().await;
    let db = TestDb::new(Db::Sqlite).await.unwrap();
    let prefix = fresh_prefix();
    let configure = |s: &mut keygate::config::Settings| limits_in_redis(s, &url, &prefix);
    let mut a = TestApp::spawn_url(&db.url, configure).await;
    let b = TestApp::spawn_url(&db.url, configure).await;
    let (_, token) = create_session(&mut a, "acct_moved", 86_400).await;
    // 6 of the 10 before the move: the counter exists, on its slot's master.
    for i in 0..6 {
        assert!(a.authorize(&token, "POST", CREATE_KEYS).await.allowed, "creation {i}");
    }
    let key = creations_key(&prefix, "acct_moved");
    let (slot, from) = owner_of(&url, &key).await;
    let masters = masters(&url).await;
    let to = masters.iter().find(|m| m.id != from.id).unwrap().clone();
    let others: Vec<Master> = masters.iter().filter(|m| m.id != from.id && m.id != to.id).cloned().collect();

    // Calls from both replicas for as long as the slot moves.
    let moving = Arc::new(AtomicBool::new(true));
    let (allowed, during) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load: Vec<_> = (0..4)
        .map(|i| {
            let mut client = if i % 2 == 0 { a.authorizer.clone() } else { b.authorizer.clone() };
            let (token, moving, allowed, during) = (token.clone(), moving.clone(), allowed.clone(), during.clone());
            tokio::spawn(async move {
                while moving.load(Ordering::Relaxed) {
                    during.fetch_add(1, Ordering::Relaxed);
                    // An UNAVAILABLE (a call that met the move and timed out) is no allow.
                    if let Ok(r) = client.authorize(create_key_request(&token)).await {
                        allowed.fetch_add(usize::from(r.get_ref().allowed), Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    move_slot(slot, &from, &to, &others).await;
    moving.store(false, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    assert!(during.load(Ordering::Relaxed) >= 8, "calls met the move");
    let moved: u16 = owner_of(&url, &key).await.0;
    assert_eq!(moved, slot);
    assert_eq!(owner_of(&url, &key).await.1.id, to.id, "the slot is the other master's now");

    // keygate answers again, from the slot's new master, and never past the limit.
    eventually("keygate decides again", || async {
        let answer = a.authorizer.clone().authorize(create_key_request(&token)).await;
        answer.is_ok_and(|r| {
            allowed.fetch_add(usize::from(r.get_ref().allowed), Ordering::Relaxed);
            !r.get_ref().allowed
        })
    })
    .await;
    let admitted = 6 + allowed.load(Ordering::Relaxed);
    assert_eq!(admitted, 10, "the limit, and not one more, across the move");
    let counted: u64 = to.command(redis::cmd("ZCARD").arg(&key)).await;
    assert_eq!(counted, 10, "every allowed call is counted on the new master");
}

/// Starts a stopped master again (its configuration as scripts/redis-cluster.sh wrote it),
/// also when the test fails half-way.
struct Restart {
    port: u16,
    done: bool,
}

impl Restart {
    fn start(&mut self) -> bool {
        self.done = true;
        let dir = std::env::var("KEYGATE_TEST_REDIS_CLUSTER_DIR")
            .unwrap_or_else(|_| "/var/tmp/keygate-redis-cluster".to_owned());
        let conf = format!("{dir}/{}.conf", self.port);
        std::process::Command::new("redis-server").arg(&conf).status().is_ok_and(|s| s.success())
    }
}

impl Drop for Restart {
    fn drop(&mut self) {
        if !self.done {
            self.start();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_down_fails_business_limits_closed_and_keygate_recovers_when_it_is_back() {
    let Some(url) = cluster_url() else { return };
    let _alone = ONE_AT_A_TIME.lock().await;
    let prefix = fresh_prefix();
    let mut app =
        TestApp::spawn_on(TestDb::new(Db::Sqlite).await.unwrap(), |s| limits_in_redis(s, &url, &prefix)).await;
    let (_, token) = create_session(&mut app, "acct_down", 86_400).await;
    let (_, key) = app.create_key("acct_down", &["*"], &[]).await;
    assert!(app.authorize(&token, "POST", CREATE_KEYS).await.allowed, "the cluster up: counted there");

    let (_, master) = owner_of(&url, &creations_key(&prefix, "acct_down")).await;
    let mut restart = Restart { port: master.port, done: false };
    let _: redis::RedisResult<()> =
        redis::cmd("SHUTDOWN").arg("NOSAVE").query_async(&mut master.connection().await).await;

    // The business limit (closed) is counted nowhere else: no decision, never an allow.
    eventually("the creation limit fails closed", || async {
        let answer = app.authorizer.clone().authorize(create_key_request(&token)).await;
        assert!(answer.as_ref().map_or(true, |r| !r.get_ref().allowed), "never allowed while its master is down");
        answer.is_err_and(|status| status.code() == tonic::Code::Unavailable)
    })
    .await;
    // The global limit (local on a store error) still admits.
    assert!(app.authorizer.clone().authorize(ask(&key)).await.unwrap().get_ref().allowed);

    assert!(restart.start(), "the master starts again");
    // Back (with no counts: the test cluster keeps none on disk), keygate decides again.
    eventually("the creation limit is counted in the cluster again", || async {
        app.authorizer.clone().authorize(create_key_request(&token)).await.is_ok_and(|r| r.get_ref().allowed)
    })
    .await;
}
