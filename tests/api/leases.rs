//! High-rate limits on Redis: each replica leases a slice of a subject's budget and spends
//! it without a round trip. Replicas, Redis and the clients are real; time is each
//! replica's injected clock (Redis judges a slice's lapse by the clock its caller sends).

use crate::helpers::{ask, eventually, redis_url, Db, TestApp, TestDb};
use crate::relay::Relay;
use keygate::ratelimit::lease::LeaseSettings;
use keygate::ratelimit::Limiter;
use std::collections::HashMap;
use std::time::Duration;

/// 100 a minute per account, high-rate; slices of 10 (a tenth), lapsing after a second.
const POLICY: &str = r#"
[global_limit]
limit = 100
window = "minute"
per = "account"
on_store_error = "ON_ERROR"
kind = "high_rate"

[[routes]]
route = "GET /api/v1/panel/applications"
accepts = ["api_key"]
scopes = ["applications:read"]
"#;
const LEASES: LeaseSettings =
    LeaseSettings { share: 0.1, max_share: 0.1, target: Duration::from_secs(1), period: Duration::from_secs(1) };

/// What every replica of one test shares: a SQLite file, a policy, a Redis prefix, how
/// slices are sized.
pub(crate) struct Cluster {
    db: TestDb,
    policy: std::path::PathBuf,
    redis: String,
    prefix: String,
    leases: LeaseSettings,
    /// Every replica's clock starts here, so their slices lapse at the same moments.
    pub(crate) start: keygate::domain::Timestamp,
}

impl Cluster {
    async fn new(redis: String, on_error: &str) -> Self {
        Self::configured(redis, &POLICY.replace("ON_ERROR", on_error), LEASES).await
    }

    /// Replicas with `policy` (the global limit under the rule "global", a minute, per
    /// account), slices sized as `leases` say.
    pub(crate) async fn configured(redis: String, policy: &str, leases: LeaseSettings) -> Self {
        let db = TestDb::new(Db::Sqlite).await.unwrap();
        let path = std::env::temp_dir().join(format!("kg-lease-{}.toml", keygate::domain::random_token(8).unwrap()));
        std::fs::write(&path, policy).unwrap();
        let prefix = crate::helpers::fresh_prefix();
        let start = keygate::clock::Clock::now(&keygate::clock::SystemClock);
        Self { db, policy: path, redis, prefix, leases, start }
    }

    /// A replica; `redis` overrides the Redis URL (a relay's).
    pub(crate) async fn replica(&self, redis: Option<&str>) -> TestApp {
        let (policy, prefix, leases) = (self.policy.clone(), self.prefix.clone(), self.leases);
        let url = redis.unwrap_or(&self.redis).to_owned();
        let app = TestApp::spawn_url(&self.db.url, move |s| {
            s.policy = Some(policy);
            crate::helpers::limits_in_redis(s, &url, &prefix);
            s.limit_leases = leases;
            s.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        })
        .await;
        app.clock.set(self.start);
        app
    }

    /// What Redis holds for the subject: requests counted spent (the running total of its
    /// window's buckets), and the slices replicas have reserved.
    pub(crate) async fn spent_and_reserved(&self, account: &str) -> (u64, u64) {
        let (spent, slices) = self.slices(account).await;
        (spent, slices.iter().sum())
    }

    /// The subject's spends counted in Redis, and each live reservation's amount.
    pub(crate) async fn slices(&self, account: &str) -> (u64, Vec<u64>) {
        let client = keygate::ratelimit::connection::StoreClient::open(&self.redis, None).unwrap();
        let mut connection = client.connect().await.unwrap();
        let (counts, reservations) = keygate::ratelimit::redis::lease_keys(&self.prefix, "global", 60_000, account);
        let spent: Option<u64> = redis::cmd("HGET").arg(&counts).arg("t").query_async(&mut connection).await.unwrap();
        let reserved: HashMap<String, String> =
            redis::cmd("HGETALL").arg(reservations).query_async(&mut connection).await.unwrap();
        let slices = reserved.values().map(|v| v.split(':').next().unwrap().parse::<u64>().unwrap()).collect();
        (spent.unwrap_or(0), slices)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.policy);
    }
}

fn renewals(app: &TestApp) -> u64 {
    match &*app.handles.limiter {
        Limiter::Redis(redis) => redis.stats().renewals.load(std::sync::atomic::Ordering::Relaxed),
        Limiter::Local(_) => panic!("limits are on Redis"),
    }
}

/// Calls `app` until it is refused (at most `most` times); returns how many were allowed.
async fn admitted_until_refused(app: &mut TestApp, key: &str, most: usize) -> usize {
    for i in 0..most {
        let r = app.authorize(key, "GET", "/api/v1/panel/applications").await;
        if !r.allowed {
            assert_eq!((r.code.as_str(), r.reason.as_str()), ("rate_limit_reached", "rate_limited"), "{r:?}");
            assert!((1..=60).contains(&r.retry_after_seconds), "{r:?}");
            return i;
        }
    }
    most
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_spend_exactly_the_limit_from_slices_and_renew_as_the_window_moves() {
    let Some(redis) = redis_url() else { return };
    two_replicas_spend_exactly_the_limit(redis).await;
}

/// Two replicas leasing slices of one account's high-rate limit from the Redis (a node or
/// a cluster) at `redis`: exactly the limit admitted, far fewer round trips than calls,
/// every spend reported, and a full window again once it has moved.
pub(crate) async fn two_replicas_spend_exactly_the_limit(redis: String) {
    let cluster = Cluster::new(redis, "closed").await;
    let mut a = cluster.replica(None).await;
    let mut b = cluster.replica(None).await;
    let (_, key) = a.create_key("acct_lease", &["applications:read"], &[]).await;

    // 150 calls, alternating: exactly 100 admitted, whatever the slices' timing.
    let mut admitted = 0;
    for i in 0..150 {
        let app = if i % 2 == 0 { &mut a } else { &mut b };
        let r = app.authorize(&key, "GET", "/api/v1/panel/applications").await;
        if r.allowed {
            admitted += 1;
            assert_eq!(r.limit, 100);
        } else {
            assert_eq!(
                (r.code.as_str(), r.reason.as_str(), r.http_status),
                ("rate_limit_reached", "rate_limited", 429)
            );
        }
    }
    assert_eq!(admitted, 100, "never more than the limit, and every slice was spent");
    // Far fewer round trips than requests: a slice of 10 is renewed when one is left.
    let trips = renewals(&a) + renewals(&b);
    assert!(trips <= 150 / 5 + 10, "{trips} round trips for 150 requests");

    // Everything spent is counted in Redis once the slices are reported; nothing is lost.
    eventually("the spends are reported", || async {
        a.clock.advance(Duration::from_millis(100));
        b.clock.advance(Duration::from_millis(100));
        cluster.spent_and_reserved("acct_lease").await == (100, 0)
    })
    .await;

    // A minute on, the window has moved past them all.
    a.clock.advance(Duration::from_secs(61));
    b.clock.advance(Duration::from_secs(61));
    let again = admitted_until_refused(&mut a, &key, 150).await;
    assert_eq!(again, 100, "a full window again, now from one replica");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_dies_with_a_slice_gives_it_back_after_a_lease_period() {
    let Some(redis) = redis_url() else { return };
    let cluster = Cluster::new(redis, "closed").await;
    let mut a = cluster.replica(None).await;
    let mut b = cluster.replica(None).await;
    let (_, key) = a.create_key("acct_dies", &["applications:read"], &[]).await;

    // A takes a slice of 10 and spends one of it.
    assert!(a.authorize(&key, "GET", "/api/v1/panel/applications").await.allowed);
    assert_eq!(cluster.spent_and_reserved("acct_dies").await, (0, 10));
    // B gets the other 90, and no more while A's slice is reserved.
    assert_eq!(admitted_until_refused(&mut b, &key, 200).await, 90);

    a.kill().await;
    b.clock.advance(Duration::from_millis(999));
    assert!(!b.authorize(&key, "GET", "/api/v1/panel/applications").await.allowed, "A's slice is still reserved");
    // A lease period after A's last renewal, its slice lapses: its 9 unspent come back to
    // B, and so does its one spend it never reported (the documented bound: a dying
    // replica can add at most one slice to a window).
    b.clock.advance(Duration::from_millis(1));
    assert_eq!(admitted_until_refused(&mut b, &key, 200).await, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_slice_is_reported_and_returned() {
    let Some(redis) = redis_url() else { return };
    let cluster = Cluster::new(redis, "closed").await;
    let mut a = cluster.replica(None).await;
    let mut b = cluster.replica(None).await;
    let (_, key) = a.create_key("acct_idle", &["applications:read"], &[]).await;
    for _ in 0..3 {
        assert!(a.authorize(&key, "GET", "/api/v1/panel/applications").await.allowed);
    }
    assert_eq!(cluster.spent_and_reserved("acct_idle").await, (0, 10));
    // Half a period without a call: A's release task reports its 3 spends and returns 7.
    a.clock.advance(Duration::from_millis(500));
    eventually("A releases its idle slice", || async { cluster.spent_and_reserved("acct_idle").await == (3, 0) }).await;
    assert_eq!(admitted_until_refused(&mut b, &key, 200).await, 97, "B may spend all the rest at once");
}

/// Spends leave Redis' window a bucket at a time, not all at once: 40 at the start and 60
/// half a minute on fill the limit; a minute after the first 40, only their room is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spends_leave_the_window_bucket_by_bucket() {
    let Some(redis) = redis_url() else { return };
    let cluster = Cluster::new(redis, "closed").await;
    let mut a = cluster.replica(None).await;
    let (_, key) = a.create_key("acct_window", &["applications:read"], &[]).await;
    for i in 0..40 {
        assert!(a.authorize(&key, "GET", "/api/v1/panel/applications").await.allowed, "{i}");
    }
    a.clock.advance(Duration::from_millis(500));
    eventually("the first 40 are reported", || async { cluster.spent_and_reserved("acct_window").await == (40, 0) })
        .await;
    a.clock.set(cluster.start.saturating_add(Duration::from_secs(30)));
    assert_eq!(admitted_until_refused(&mut a, &key, 100).await, 60, "the rest of the window");
    a.clock.advance(Duration::from_millis(500));
    eventually("all 100 are reported", || async { cluster.spent_and_reserved("acct_window").await == (100, 0) }).await;
    // 62 s: the buckets of the first second have left the window; those of the 30th have
    // not.
    a.clock.set(cluster.start.saturating_add(Duration::from_secs(62)));
    assert_eq!(admitted_until_refused(&mut a, &key, 100).await, 40, "only the first 40's room is back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_mid_lease_spends_what_is_held_then_fails_closed_or_counts_locally() {
    let Some(redis) = redis_url() else { return };
    for on_error in ["closed", "local"] {
        let relay = Relay::start(crate::relay::target_of(&redis)).await;
        let cluster = Cluster::new(redis.clone(), on_error).await;
        let mut app = cluster.replica(Some(&relay.url_for(&redis))).await;
        let (_, key) = app.create_key("acct_down", &["applications:read"], &[]).await;
        assert!(app.authorize(&key, "GET", "/api/v1/panel/applications").await.allowed);

        relay.cut();
        // The 9 held are spent (a renewal attempted at the last fails and changes nothing).
        for i in 0..9 {
            let r = app.authorize(&key, "GET", "/api/v1/panel/applications").await;
            assert!(r.allowed, "{on_error}: held request {i}: {r:?}");
        }
        let next = app.authorizer.authorize(ask(&key)).await;
        match on_error {
            "closed" => assert_eq!(next.unwrap_err().code(), tonic::Code::Unavailable),
            _ => {
                let r = next.unwrap().into_inner();
                assert!(r.allowed, "{r:?}");
                assert_eq!((r.limit, r.remaining), (100, 99), "then counted locally, from zero");
            }
        }
        relay.restore().await;
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_returns_the_slices() {
    let Some(redis) = redis_url() else { return };
    let cluster = Cluster::new(redis, "closed").await;
    let mut a = cluster.replica(None).await;
    let (_, key) = a.create_key("acct_stop", &["applications:read"], &[]).await;
    assert!(a.authorize(&key, "GET", "/api/v1/panel/applications").await.allowed);
    assert_eq!(cluster.spent_and_reserved("acct_stop").await, (0, 10));
    a.stop().await;
    assert_eq!(cluster.spent_and_reserved("acct_stop").await, (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_gives_up_during_a_renewal_leaves_no_slice_stuck() {
    let Some(redis) = redis_url() else { return };
    let relay = Relay::start(crate::relay::target_of(&redis)).await;
    let cluster = Cluster::new(redis.clone(), "closed").await;
    let mut app = cluster.replica(Some(&relay.url_for(&redis))).await;
    let (_, key) = app.create_key("acct_gives_up", &["applications:read"], &[]).await;

    // The key verified (argon2 is not what the caller waits for), then its slice lapses.
    assert!(app.authorize(&key, "GET", "/api/v1/panel/applications").await.allowed);
    app.clock.advance(Duration::from_secs(1));
    // Redis stops answering; a caller with a 20 ms deadline finds no slice and gives up
    // while this replica waits for Redis (up to the limiter's timeout).
    relay.stall();
    let mut hasty = tonic::Request::new(ask(&key));
    hasty.set_timeout(Duration::from_millis(20));
    let answer = app.authorizer.authorize(hasty).await;
    assert!(answer.as_ref().map_or(true, |r| !r.get_ref().allowed), "never allowed without a slice: {answer:?}");

    // Redis answers again: the slice is renewed for the next caller (it was not left
    // marked as renewing by the caller that went away).
    relay.unstall();
    eventually("a slice is leased again", || async {
        app.authorizer.clone().authorize(ask(&key)).await.is_ok_and(|r| r.get_ref().allowed)
    })
    .await;
    app.stop().await;
}
