//! A failover under load, on a Redis Cluster of the tests' own: three masters each with a
//! replica on ports 7111-7116, started by `scripts/redis-failover-cluster.sh` (`.ci/run`
//! runs it and sets KEYGATE_TEST_REDIS_FAILOVER_URL; skipped, saying so, without it), so
//! that promoting a replica leaves the cluster of tests/api/redis_cluster.rs alone.
//!
//! Two keygate replicas spend an exact limit while the replica of the master holding it is
//! promoted (`CLUSTER FAILOVER`, the planned failover of an upgrade or a managed service's
//! maintenance): no call is allowed past the limit, and once the replica has taken over,
//! every call is decided again at once (the bound docs/policy.md#redis-cluster states).
//! Another account, whose count lives on another master, gets exactly its limit.

use crate::helpers::{fresh_prefix, limits_in_redis, TestApp, TestDb};
use crate::limits::CREATE_KEYS;
use crate::sessions::create_session;
use keygate::grpc::proto as pb;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The failover cluster's URL, or `None` (and a line saying the test is skipped).
fn failover_url() -> Option<String> {
    let url = std::env::var("KEYGATE_TEST_REDIS_FAILOVER_URL").ok();
    if url.is_none() {
        eprintln!("skipped: KEYGATE_TEST_REDIS_FAILOVER_URL is not set (scripts/redis-failover-cluster.sh starts it)");
    }
    url
}

/// One node of the cluster, spoken to directly.
#[derive(Debug, Clone)]
struct Node {
    id: String,
    port: u16,
    /// A replica's master (its id); `None` for a master.
    replica_of: Option<String>,
    slots: Vec<(u16, u16)>,
}

impl Node {
    async fn command<T: redis::FromRedisValue>(&self, command: &mut redis::Cmd) -> redis::RedisResult<T> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}", self.port))?;
        command.query_async(&mut client.get_multiplexed_async_connection().await?).await
    }

    fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(from, to)| (from..=to).contains(&slot))
    }
}

/// The cluster's nodes as the node on `port` sees them (`CLUSTER NODES`).
async fn nodes(port: u16) -> Vec<Node> {
    let any = Node { id: String::new(), port, replica_of: None, slots: vec![] };
    let text: String = any.command(redis::cmd("CLUSTER").arg("NODES")).await.unwrap();
    text.lines()
        .filter(|line| !line.contains("fail") && !line.contains("handshake"))
        .map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let port = fields[1].split(['@', ':']).nth(1).unwrap().parse().unwrap();
            let replica_of = (fields[3] != "-").then(|| fields[3].to_owned());
            let slots = fields[8..]
                .iter()
                .filter(|range| !range.starts_with('['))
                .map(|range| match range.split_once('-') {
                    Some((from, to)) => (from.parse().unwrap(), to.parse().unwrap()),
                    None => (range.parse().unwrap(), range.parse().unwrap()),
                })
                .collect();
            Node { id: fields[0].to_owned(), port, replica_of, slots }
        })
        .collect()
}

fn seed_port(url: &str) -> u16 {
    let seed = keygate::ratelimit::connection::cluster_nodes(url).unwrap().unwrap()[0].clone();
    seed.rsplit(':').next().unwrap().trim_end_matches('/').parse().unwrap()
}

/// The slot of `key`, its master, and that master's replica (if the seed knows one).
async fn holders(url: &str, key: &str) -> (u16, Node, Option<Node>) {
    let nodes = nodes(seed_port(url)).await;
    let slot: u16 = nodes[0].command(redis::cmd("CLUSTER").arg("KEYSLOT").arg(key)).await.unwrap();
    let master = nodes.iter().find(|n| n.replica_of.is_none() && n.serves(slot)).unwrap().clone();
    let replica = nodes.iter().find(|n| n.replica_of.as_deref() == Some(&master.id)).cloned();
    (slot, master, replica)
}

/// The exact counter of the default policy's key creation limit (10 an hour) for `account`.
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

/// What the calls of one account met.
#[derive(Default)]
struct Tally {
    calls: AtomicUsize,
    allowed: AtomicUsize,
    /// Not decided (UNAVAILABLE: the call met the failover and timed out); never an allow.
    undecided: AtomicUsize,
}

impl Tally {
    fn get(&self) -> (usize, usize, usize) {
        let load = |n: &AtomicUsize| n.load(Ordering::Relaxed);
        (load(&self.calls), load(&self.allowed), load(&self.undecided))
    }
}

/// Calls from `client` with `token` while `running`, into `tally`.
fn load(
    mut client: keygate::grpc::proto::authorizer_client::AuthorizerClient<tonic::transport::Channel>,
    token: String,
    running: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while running.load(Ordering::Relaxed) {
            tally.calls.fetch_add(1, Ordering::Relaxed);
            match client.authorize(create_key_request(&token)).await {
                Ok(r) => tally.allowed.fetch_add(usize::from(r.get_ref().allowed), Ordering::Relaxed),
                Err(_) => tally.undecided.fetch_add(1, Ordering::Relaxed),
            };
        }
    })
}

/// An account of `app`'s whose creation counter lives on a master other than `avoid`'s
/// (`None`: any), and that counter's key.
async fn account_on(app: &mut TestApp, url: &str, prefix: &str, avoid: Option<&str>, name: &str) -> (String, String) {
    for i in 0.. {
        let account = format!("{name}_{i}");
        let key = creations_key(prefix, &account);
        let elsewhere = match avoid {
            Some(id) => holders(url, &key).await.1.id != id,
            None => true,
        };
        if elsewhere {
            let (_, token) = create_session(app, &account, 86_400).await;
            return (token, key);
        }
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_promoted_under_load_admits_no_more_than_the_exact_limit_and_decides_again_at_once() {
    let Some(url) = failover_url() else { return };
    let _alone = ONE_AT_A_TIME.lock().await;
    let db = TestDb::new(crate::helpers::Db::Sqlite).await.unwrap();
    let prefix = fresh_prefix();
    let configure = |s: &mut keygate::config::Settings| limits_in_redis(s, &url, &prefix);
    let mut a = TestApp::spawn_url(&db.url, configure).await;
    let b = TestApp::spawn_url(&db.url, configure).await;

    let (token, key) = account_on(&mut a, &url, &prefix, None, "acct_failover").await;
    // 6 of the 10 before the failover: the counter exists on its master, and its replica.
    for i in 0..6 {
        assert!(a.authorize(&token, "POST", CREATE_KEYS).await.allowed, "creation {i}");
    }
    let (_, master, replica) = holders(&url, &key).await;
    let replica = replica.expect("the master has a replica");
    // In step with its master (a failover of an earlier run may still be settling).
    let mut polls = 0;
    while !replica
        .command::<String>(redis::cmd("INFO").arg("replication"))
        .await
        .unwrap()
        .contains("master_link_status:up")
    {
        polls += 1;
        assert!(polls < 2_000, "the replica never linked to its master");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The second tenant: an account whose count lives on another master.
    let (other, other_key) = account_on(&mut a, &url, &prefix, Some(&master.id), "acct_bystander").await;

    let running = Arc::new(AtomicBool::new(true));
    let (tally, bystander) = (Arc::new(Tally::default()), Arc::new(Tally::default()));
    let mut tasks = vec![];
    for app in [&a, &b] {
        for _ in 0..2 {
            tasks.push(load(app.authorizer.clone(), token.clone(), running.clone(), tally.clone()));
        }
        tasks.push(load(app.authorizer.clone(), other.clone(), running.clone(), bystander.clone()));
    }
    // Load meets the master first.
    while tally.get().0 < 20 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // The planned failover: the master stops writes, its replica catches up and takes over.
    let () = replica.command(redis::cmd("CLUSTER").arg("FAILOVER")).await.unwrap();
    let mut polls = 0;
    loop {
        let role: Vec<redis::Value> = replica.command(&mut redis::cmd("ROLE")).await.unwrap();
        if matches!(&role[0], redis::Value::BulkString(r) if r == b"master") {
            break;
        }
        polls += 1;
        assert!(polls < 2_000, "the replica never became master");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (calls_at_promotion, _, undecided_at_promotion) = tally.get();
    eprintln!("promoted after {polls} polls, {calls_at_promotion} calls");
    // The recovery bound: after the promotion, every further call is decided (the client
    // follows MOVED to the new master within the call). 40 more calls, none undecided.
    while tally.get().0 < calls_at_promotion + 40 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    running.store(false, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let (calls, allowed, undecided) = tally.get();
    eprintln!(
        "failover: {calls} calls, {allowed} allowed, {undecided} undecided ({undecided_at_promotion} before the \
         promotion was seen); bystander {:?}",
        bystander.get()
    );
    assert_eq!(undecided, undecided_at_promotion, "every call after the promotion was decided");
    assert_eq!(6 + allowed, 10, "the limit, and not one more, across the failover");
    let counted: u64 = replica.command(redis::cmd("ZCARD").arg(&key)).await.unwrap();
    assert_eq!(counted, 10, "every allowed call is counted on the new master");
    let (_, now_master, _) = holders(&url, &key).await;
    assert_eq!(now_master.id, replica.id, "the replica serves the slot now");

    // The bystander's master did not move: exactly its 10 allowed. (Alone, every one of
    // its calls was decided; on a loaded machine one may time out, failing closed.)
    let (calls, allowed, _) = bystander.get();
    assert!(calls > 10, "the bystander called past its limit: {calls}");
    assert_eq!(allowed, 10, "the other account, on another master");
    let counted: u64 = holders(&url, &other_key).await.1.command(redis::cmd("ZCARD").arg(&other_key)).await.unwrap();
    assert_eq!(counted, 10);
}
