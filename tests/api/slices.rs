//! Slices that follow the traffic: a subject's slice of a high-rate limit grows with its
//! admission rate on a replica (estimated on the replica's injected clock), within the
//! smallest slice and the largest share, and renewals due together go to Redis in one
//! script. Replicas, Redis (a node, or the test cluster) and the clients are real; the
//! renewals are counted by the replicas' metrics.

use crate::helpers::{eventually, redis_url, TestApp};
use crate::leases::Cluster;
use keygate::ratelimit::lease::LeaseSettings;
use std::time::Duration;

/// 6,000 a minute per account, high-rate.
const POLICY: &str = r#"
[global_limit]
limit = 6000
window = "minute"
per = "account"
on_store_error = "closed"
kind = "high_rate"

[[routes]]
route = "GET /api/v1/panel/applications"
accepts = ["api_key"]
scopes = ["applications:read"]
"#;

const ROUTE: &str = "/api/v1/panel/applications";

/// The defaults: slices of 1% (60) at least, 5% (300) for all replicas' together at
/// most, about a second of a subject's traffic, lapsing after 2 s.
const ADAPTIVE: LeaseSettings =
    LeaseSettings { share: 0.01, max_share: 0.05, target: Duration::from_secs(1), period: Duration::from_secs(2) };
/// Every slice 1% of the limit, whatever the traffic: as before slices followed it.
const FIXED: LeaseSettings = LeaseSettings { max_share: 0.01, ..ADAPTIVE };

async fn metric(app: &TestApp, name: &str) -> u64 {
    let text = reqwest::get(app.metrics_url.clone().unwrap()).await.unwrap().text().await.unwrap();
    keygate::metrics::sample(&text, name).unwrap_or_else(|| panic!("{name} in {text}")) as u64
}

async fn renewals(app: &TestApp) -> u64 {
    metric(app, "keygate_rate_limit_lease_renewals_total").await
}

/// `calls` calls of `key`, `step` apart on the replica's clock, every one allowed.
async fn steady(app: &mut TestApp, key: &str, calls: usize, step: Duration) {
    for i in 0..calls {
        app.clock.advance(step);
        let r = app.authorize(key, "GET", ROUTE).await;
        assert!(r.allowed, "call {i}: {r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_subject_renews_far_less_often_and_an_idle_one_holds_the_smallest_slice() {
    let Some(redis) = redis_url() else { return };
    busy_and_idle(redis).await;
}

/// A subject at 400 calls a second (2,000 calls over 5 s of the replica's clock) beside
/// one called twice a second, with fixed slices and then with slices that follow the
/// traffic, on the Redis (a node or a cluster) at `redis`.
pub(crate) async fn busy_and_idle(redis: String) {
    let mut counted = Vec::new();
    for leases in [FIXED, ADAPTIVE] {
        let cluster = Cluster::configured(redis.clone(), POLICY, leases).await;
        let mut app = cluster.replica(None).await;
        let (_, busy) = app.create_key("acct_busy", &["applications:read"], &[]).await;
        let (_, idle) = app.create_key("acct_idle", &["applications:read"], &[]).await;
        for _ in 0..10 {
            steady(&mut app, &busy, 199, Duration::from_micros(2_500)).await;
            steady(&mut app, &idle, 1, Duration::from_micros(2_500)).await;
        }
        let before = renewals(&app).await;
        steady(&mut app, &busy, 2_000, Duration::from_micros(2_500)).await;
        counted.push(renewals(&app).await - before);
        // What each holds now: the busy subject about a second of its calls, up to the
        // largest share; the one called twice a second the smallest slice.
        let (_, busy_slices) = cluster.slices("acct_busy").await;
        let (_, idle_slices) = cluster.slices("acct_idle").await;
        if leases == ADAPTIVE {
            assert!(busy_slices.iter().all(|&s| (150..=300).contains(&s)), "busy: {busy_slices:?}");
        } else {
            assert!(busy_slices.iter().all(|&s| s <= 60), "busy, fixed: {busy_slices:?}");
        }
        assert!(idle_slices.iter().all(|&s| s <= 60), "idle: {idle_slices:?}");
        app.stop().await;
    }
    let [fixed, adaptive] = counted[..] else { unreachable!() };
    eprintln!("renewals for 2,000 calls at 400 a second: {fixed} with fixed slices, {adaptive} following the traffic");
    // Fixed: a slice of 60 renewed when an eighth is left, every 53 calls (about 38 for
    // 2,000). Following the traffic: 300, every 263 calls or each second (about 8).
    assert!(adaptive * 3 <= fixed, "{adaptive} renewals following the traffic, {fixed} with fixed slices");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_with_growing_slices_admit_exactly_the_limit_and_hold_within_the_largest_share() {
    let Some(redis) = redis_url() else { return };
    two_replicas_within_the_bound(redis).await;
}

/// 1,000 a minute, slices of 1% (10) to 10% (100) for both replicas together; two
/// replicas called in turn, 500 a second each.
pub(crate) async fn two_replicas_within_the_bound(redis: String) {
    let policy = POLICY.replace("limit = 6000", "limit = 1000");
    let cluster = Cluster::configured(redis, &policy, LeaseSettings { max_share: 0.1, ..ADAPTIVE }).await;
    let mut a = cluster.replica(None).await;
    let mut b = cluster.replica(None).await;
    let (_, key) = a.create_key("acct_two", &["applications:read"], &[]).await;
    let mut admitted = 0;
    let mut most_reserved = 0;
    for i in 0..1_500 {
        a.clock.advance(Duration::from_millis(1));
        b.clock.advance(Duration::from_millis(1));
        let app = if i % 2 == 0 { &mut a } else { &mut b };
        let r = app.authorize(&key, "GET", ROUTE).await;
        if r.allowed {
            admitted += 1;
        } else {
            assert_eq!((r.code.as_str(), r.http_status), ("rate_limit_reached", 429), "{r:?}");
        }
        if i % 50 == 0 {
            let (_, slices) = cluster.slices("acct_two").await;
            assert!(slices.len() <= 2, "{slices:?}");
            // The largest share (100) and a smallest slice (10) per replica, at most.
            let reserved: u64 = slices.iter().sum();
            assert!(reserved <= 100 + 2 * 10, "{slices:?} at call {i}");
            most_reserved = most_reserved.max(reserved);
        }
    }
    assert_eq!(admitted, 1_000, "never more than the limit, and every slice was spent");
    assert!(most_reserved > 2 * 10, "the slices grew past the smallest: at most {most_reserved} reserved");
    eventually("the spends are reported", || async {
        a.clock.advance(Duration::from_millis(100));
        b.clock.advance(Duration::from_millis(100));
        cluster.spent_and_reserved("acct_two").await == (1_000, 0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_at_its_limit_changes_neither_the_admissions_nor_the_slice_of_another() {
    let Some(redis) = redis_url() else { return };
    let policy = POLICY.replace("limit = 6000", "limit = 1000");
    // B alone, then B beside A, each in a store of its own: the same calls at the same
    // moments of B's replica's clock.
    let mut seen = Vec::new();
    for with_a in [false, true] {
        let cluster = Cluster::configured(redis.clone(), &policy, ADAPTIVE).await;
        let mut app = cluster.replica(None).await;
        let (_, a) = app.create_key("acct_a", &["applications:read"], &[]).await;
        let (_, b) = app.create_key("acct_b", &["applications:read"], &[]).await;
        let (mut b_allowed, mut a_refused) = (0, 0);
        for i in 0..2_000 {
            app.clock.advance(Duration::from_millis(1));
            if i % 10 == 0 {
                b_allowed += usize::from(app.authorize(&b, "GET", ROUTE).await.allowed);
            } else if with_a {
                // A: 900 calls a second against its 1,000 a minute.
                a_refused += usize::from(!app.authorize(&a, "GET", ROUTE).await.allowed);
            }
        }
        assert_eq!(a_refused, if with_a { 1_800 - 1_000 } else { 0 }, "A at its limit");
        let (_, b_slices) = cluster.slices("acct_b").await;
        seen.push((b_allowed, b_slices));
        app.stop().await;
    }
    assert_eq!(seen[0].0, 200, "B alone: every call allowed");
    assert_eq!(seen[1], seen[0], "B beside A at its limit: the same admissions and the same slice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_of_many_subjects_share_round_trips() {
    let Some(redis) = redis_url() else { return };
    let cluster = Cluster::configured(redis, POLICY, ADAPTIVE).await;
    let mut app = cluster.replica(None).await;
    let mut keys = Vec::new();
    for i in 0..200 {
        keys.push(app.create_key(&format!("acct_many_{i}"), &["applications:read"], &[]).await.1);
    }
    for key in &keys {
        assert!(app.authorize(key, "GET", ROUTE).await.allowed);
    }
    let (renewed, trips) = (renewals(&app).await, metric(&app, "keygate_rate_limit_lease_round_trips_total").await);
    // Idle for half a period: the release task hands back all 200 slices, in scripts of
    // up to 32 subjects each.
    app.clock.advance(Duration::from_secs(1));
    eventually("every slice is handed back", || async { renewals(&app).await >= renewed + 200 }).await;
    assert_eq!(metric(&app, "keygate_rate_limit_leases").await, 0);
    let released = renewals(&app).await - renewed;
    let released_trips = metric(&app, "keygate_rate_limit_lease_round_trips_total").await - trips;
    assert_eq!(released, 200);
    assert!(released_trips <= 200 / 32 + 2, "{released_trips} round trips for 200 releases");
    for (i, key) in keys.iter().enumerate().step_by(50) {
        assert_eq!(cluster.spent_and_reserved(&format!("acct_many_{i}")).await, (1, 0), "{key}");
    }
}
