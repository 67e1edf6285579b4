//! Rate limits: the page's route limits, sliding windows under an injected clock, and
//! limits shared by replicas through Redis.

use crate::helpers::{fresh_prefix, limits_in_redis, redis_url, Db, TestApp, TestDb};
use crate::relay::Relay;
use crate::sessions::create_session;
use keygate::grpc::proto as pb;
use std::time::Duration;

pub(crate) const CREATE_KEYS: &str = "/api/v1/panel/api-keys";
const ROTATE: &str = "/api/v1/panel/update-api-keys";

#[tokio::test]
async fn the_eleventh_key_creation_in_an_hour_is_limited_until_the_window_moves() {
    let mut app = TestApp::spawn(Db::Sqlite).await.unwrap();
    let (_, token) = create_session(&mut app, "acct_l", 86_400).await;
    for i in 0..10 {
        let r = app.authorize(&token, "POST", CREATE_KEYS).await;
        assert!(r.allowed, "creation {} is allowed", i + 1);
        assert_eq!((r.limit, r.remaining), (10, 9 - i));
        app.clock.advance(Duration::from_secs(60));
    }
    // The first was at t=0; it leaves the window at t=3600; we are at t=600.
    let r = app.authorize(&token, "POST", CREATE_KEYS).await;
    assert_eq!((r.allowed, r.code.as_str(), r.http_status), (false, "rate_limit_reached", 429));
    assert_eq!((r.limit, r.remaining, r.retry_after_seconds), (10, 0, 3000));
    // Denied attempts use no quota.
    for _ in 0..5 {
        assert!(!app.authorize(&token, "POST", CREATE_KEYS).await.allowed);
    }
    app.clock.advance(Duration::from_secs(2999));
    let r = app.authorize(&token, "POST", CREATE_KEYS).await;
    assert_eq!((r.code.as_str(), r.retry_after_seconds), ("rate_limit_reached", 1));
    app.clock.advance(Duration::from_secs(1));
    assert!(app.authorize(&token, "POST", CREATE_KEYS).await.allowed, "the window moved past the first");
    assert!(!app.authorize(&token, "POST", CREATE_KEYS).await.allowed, "but only the first");

    // Another account has its own budget.
    let (_, other) = create_session(&mut app, "acct_other", 86_400).await;
    assert!(app.authorize(&other, "POST", CREATE_KEYS).await.allowed);
}

#[tokio::test]
async fn the_third_rotation_in_an_hour_is_limited_per_application() {
    let mut app = TestApp::spawn(Db::Sqlite).await.unwrap();
    let a = app.create_app("acct_rot").await;
    let b = app.create_app("acct_rot").await;
    let (_, key) = app.create_key("acct_rot", &["applications:write"], &[]).await;
    let rotate = |application: &str| pb::AuthorizeRequest {
        credential: key.clone(),
        method: "PATCH".into(),
        path: ROTATE.into(),
        application_id: application.into(),
        ..Default::default()
    };
    assert!(app.authorize_with(rotate(&a.id)).await.allowed);
    assert!(app.authorize_with(rotate(&a.id)).await.allowed);
    let r = app.authorize_with(rotate(&a.id)).await;
    assert_eq!((r.code.as_str(), r.http_status, r.limit, r.retry_after_seconds), ("rate_limit_reached", 429, 2, 3600));
    assert!(app.authorize_with(rotate(&b.id)).await.allowed, "each application has its own budget");
    app.clock.advance(Duration::from_secs(3600));
    assert!(app.authorize_with(rotate(&a.id)).await.allowed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_redis_admit_exactly_ten_of_fifty() {
    let Some(redis) = redis_url() else { return };
    two_replicas_admit_exactly_ten_of_fifty(&redis).await;
}

/// 50 concurrent key creations of one account through two replicas counting in the Redis
/// (a node or a cluster) at `redis`: exactly 10 admitted.
pub(crate) async fn two_replicas_admit_exactly_ten_of_fifty(redis: &str) {
    // Both replicas share one SQLite file (sessions) and one Redis prefix (counters).
    let db = TestDb::new(Db::Sqlite).await.unwrap();
    let prefix = fresh_prefix();
    let configure = |s: &mut keygate::config::Settings| limits_in_redis(s, redis, &prefix);
    let mut a = TestApp::spawn_url(&db.url, configure).await;
    let b = TestApp::spawn_url(&db.url, configure).await;
    let (_, token) = create_session(&mut a, "acct_shared", 86_400).await;

    let attempts = (0..50).map(|i| {
        let mut client = if i % 2 == 0 { a.authorizer.clone() } else { b.authorizer.clone() };
        let token = token.clone();
        tokio::spawn(async move {
            let request = pb::AuthorizeRequest {
                credential: token,
                method: "POST".into(),
                path: CREATE_KEYS.into(),
                ..Default::default()
            };
            client.authorize(request).await.unwrap().into_inner()
        })
    });
    let mut admitted = 0;
    for attempt in attempts.collect::<Vec<_>>() {
        let r = attempt.await.unwrap();
        if r.allowed {
            admitted += 1;
        } else {
            assert_eq!((r.code.as_str(), r.http_status), ("rate_limit_reached", 429));
            assert!(r.retry_after_seconds > 0);
        }
    }
    assert_eq!(admitted, 10, "exactly 10 across both replicas");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_redis_is_unreachable_business_limits_fail_closed_and_the_global_limit_counts_locally() {
    let Some(redis) = redis_url() else { return };
    let relay = Relay::start(crate::relay::target_of(&redis)).await;
    let through_relay = relay.url_for(&redis);
    let prefix = fresh_prefix();
    let mut app =
        TestApp::spawn_on(TestDb::new(Db::Sqlite).await.unwrap(), |s| limits_in_redis(s, &through_relay, &prefix))
            .await;
    let (_, token) = create_session(&mut app, "acct_down", 86_400).await;
    let (_, key) = app.create_key("acct_down", &["*"], &[]).await;
    assert!(app.authorize(&token, "POST", CREATE_KEYS).await.allowed, "Redis up: counted in Redis");

    relay.cut();
    // A route limit (closed): no decision, UNAVAILABLE, never an allow.
    let err = app
        .authorizer
        .authorize(pb::AuthorizeRequest {
            credential: token.clone(),
            method: "POST".into(),
            path: CREATE_KEYS.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    // Only the global limit (local, high-rate): the slice this replica leased is spent
    // first (29 of 30: the call above took one), then it counts in this replica alone.
    for i in 0..29 {
        assert!(app.authorize(&key, "GET", "/api/v1/panel/applications").await.allowed, "held request {i}");
    }
    let r = app.authorize(&key, "GET", "/api/v1/panel/applications").await;
    assert!(r.allowed, "{r:?}");
    assert_eq!((r.limit, r.remaining), (3000, 2999), "counted locally from zero");

    relay.restore().await;
    // Counted in Redis again, after the first call's count: remaining 8, or fewer if a try of
    // this loop reached Redis unanswered and its count was not yet taken back when the next
    // was admitted. Never 9 or more: a business limit is counted nowhere but in Redis.
    crate::helpers::eventually("Redis is used again", || async {
        app.authorizer
            .clone()
            .authorize(pb::AuthorizeRequest {
                credential: token.clone(),
                method: "POST".into(),
                path: CREATE_KEYS.into(),
                ..Default::default()
            })
            .await
            .is_ok_and(|r| r.get_ref().allowed && r.get_ref().remaining <= 8)
    })
    .await;
}

/// A replica counting key creations in Redis through a relay that can hold Redis' answers,
/// with a session of `account` allowed to create keys.
struct SlowRedis {
    relay: Relay,
    app: TestApp,
    token: String,
    redis: String,
    prefix: String,
}

impl SlowRedis {
    async fn start(redis: String, account: &str, customize: impl FnOnce(&mut keygate::config::Settings)) -> Self {
        let relay = Relay::start(crate::relay::target_of(&redis)).await;
        let through_relay = relay.url_for(&redis);
        let prefix = fresh_prefix();
        let mut app = TestApp::spawn_on(TestDb::new(Db::Sqlite).await.unwrap(), |s| {
            limits_in_redis(s, &through_relay, &prefix);
            s.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
            customize(s);
        })
        .await;
        let (_, token) = create_session(&mut app, account, 86_400).await;
        Self { relay, app, token, redis, prefix }
    }

    fn create_key(&self) -> pb::AuthorizeRequest {
        pb::AuthorizeRequest {
            credential: self.token.clone(),
            method: "POST".into(),
            path: CREATE_KEYS.into(),
            ..Default::default()
        }
    }

    /// Counts this replica took back.
    fn uncounted(&self) -> u64 {
        match &*self.app.handles.limiter {
            keygate::ratelimit::Limiter::Redis(redis) => {
                redis.stats().uncounted.load(std::sync::atomic::Ordering::Relaxed)
            }
            keygate::ratelimit::Limiter::Local(_) => panic!("limits are on Redis"),
        }
    }

    /// Requests counted in Redis, in every exact limit of this test.
    async fn counted(&self) -> u64 {
        let client = redis::Client::open(self.redis.as_str()).unwrap();
        let mut redis = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> =
            redis::cmd("KEYS").arg(format!("{}*", self.prefix)).query_async(&mut redis).await.unwrap();
        let mut counted = 0;
        for key in keys {
            if redis::cmd("TYPE").arg(&key).query_async::<String>(&mut redis).await.unwrap() == "zset" {
                counted += redis::cmd("ZCARD").arg(&key).query_async::<u64>(&mut redis).await.unwrap();
            }
        }
        counted
    }

    /// Sends one key creation while Redis' answers are held, and returns how it ended
    /// once they flow again.
    async fn create_key_unanswered(&self) -> tonic::Status {
        self.relay.hold_answers();
        let answer = self.app.authorizer.clone().authorize(self.create_key()).await;
        self.relay.release_answers();
        answer.expect_err("no answer from Redis: refused")
    }

    /// Waits until a count was taken back after `before` and Redis holds `left`.
    async fn taken_back(&self, before: u64, left: u64) {
        crate::helpers::eventually("the unanswered request's count is taken back", || async {
            self.uncounted() > before && self.counted().await == left
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_answer_from_redis_comes_too_late_is_taken_back() {
    let Some(redis) = redis_url() else { return };
    let slow = SlowRedis::start(redis, "acct_late", |_| {}).await;
    let first = slow.app.authorizer.clone().authorize(slow.create_key()).await.unwrap().into_inner();
    assert_eq!((first.allowed, first.remaining), (true, 9));

    // The script reaches Redis and runs; its answer is held past the connection's response
    // timeout (500 ms), so the call is refused.
    let refused = slow.create_key_unanswered().await;
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    // Without the removal Redis would hold 2.
    slow.taken_back(0, 1).await;

    // 10 - the first - this one: 8 left (7 had the refused request stayed counted).
    let r = slow.app.authorizer.clone().authorize(slow.create_key()).await.unwrap().into_inner();
    assert_eq!((r.allowed, r.remaining), (true, 8), "{r:?}");
    let text = reqwest::get(slow.app.metrics_url.clone().unwrap()).await.unwrap().text().await.unwrap();
    assert_eq!(keygate::metrics::sample(&text, "keygate_rate_limit_uncounted_total"), Some(1.0), "{text}");
    assert_eq!(keygate::metrics::sample(&text, "keygate_rate_limit_uncount_lost_total"), Some(0.0), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_caller_hung_up_while_redis_counted_it_is_taken_back() {
    let Some(redis) = redis_url() else { return };
    let slow = SlowRedis::start(redis, "acct_gone", |_| {}).await;
    assert!(slow.app.authorizer.clone().authorize(slow.create_key()).await.unwrap().get_ref().allowed);

    // The script runs in Redis while its answer is held; then the caller goes away.
    slow.relay.hold_answers();
    let mut client = slow.app.authorizer.clone();
    let request = slow.create_key();
    let call = tokio::spawn(async move { client.authorize(request).await });
    crate::helpers::eventually("the script ran in Redis", || async { slow.counted().await == 2 }).await;
    call.abort();
    let _ = call.await;
    // keygate drops the decision when the stream is reset (or, were it slower than that, the
    // connection's response timeout refuses it): either way nobody heard it was admitted,
    // and the removal reaches Redis while the script's answer is still held (released
    // sooner, the answer could complete the decision first, and the count would stand).
    crate::helpers::eventually("the count is taken back", || async { slow.counted().await == 1 }).await;
    slow.relay.release_answers();
    slow.taken_back(0, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_local_fallback_serves_stays_counted_in_redis() {
    let Some(redis) = redis_url() else { return };
    // One exact limit that falls back to local counting, as a global limit without `kind`.
    let policy = std::env::temp_dir().join(format!("kg-served-{}.toml", keygate::domain::random_token(8).unwrap()));
    std::fs::write(
        &policy,
        r#"
[global_limit]
limit = 100
window = "minute"
per = "account"
on_store_error = "local"

[[routes]]
route = "GET /api/v1/panel/applications"
accepts = ["api_key"]
scopes = ["applications:read"]
"#,
    )
    .unwrap();
    let mut slow = SlowRedis::start(redis, "acct_served", |s| s.policy = Some(policy.clone())).await;
    let (_, key) = slow.app.create_key("acct_served", &["applications:read"], &[]).await;
    let ask = crate::helpers::ask;
    assert!(slow.app.authorizer.clone().authorize(ask(&key)).await.unwrap().get_ref().allowed);

    // The script runs; its answer comes too late; the replica serves the request from its
    // own count. It was served, so its count in Redis stands.
    slow.relay.hold_answers();
    let served = slow.app.authorizer.clone().authorize(ask(&key)).await.unwrap().into_inner();
    slow.relay.release_answers();
    assert!(served.allowed, "served by the local fallback: {served:?}");
    let keygate::ratelimit::Limiter::Redis(limiter) = &*slow.app.handles.limiter else { panic!("limits are on Redis") };
    // A removal, had one been started, has ended (it is started before the answer is sent).
    limiter.settle_uncounts(Duration::from_secs(5)).await;
    assert_eq!(slow.counted().await, 2, "both served requests are counted");
    assert_eq!(slow.uncounted(), 0);
    let _ = std::fs::remove_file(&policy);
}
