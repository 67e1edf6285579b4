//! Usage analytics through the real server: decisions counted by outcome per key, owner
//! and account in the bucket the injected clock says, read back with GetUsage and TopKeys;
//! exact across two replicas (Postgres), written at shutdown, one tenant's flood apart
//! from another's, confinement, bad ranges, and the memory bound.

use crate::admin_tokens::{admin_with, token};
use crate::backend_tests;
use crate::helpers::{ask, reason, Db, TestApp, TestDb};
use keygate::clock::Clock;
use keygate::domain::Timestamp;
use keygate::grpc::proto as pb;
use keygate::metrics::sample;
use std::time::Duration;

/// Half a minute into the minute the clock is in, so a test's calls share one bucket.
fn mid_minute(app: &TestApp) -> i64 {
    let at = app.clock.now().as_millis().div_euclid(60_000) * 60_000 + 30_000;
    app.clock.set(Timestamp::from_millis(at));
    at - 30_000
}

fn ts(millis: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds: millis.div_euclid(1000), nanos: 0 })
}

fn usage_of(subject: &str, id: &str, account: &str, minute: i64, granularity: &str) -> pb::GetUsageRequest {
    let width = match granularity {
        "hour" => 3_600_000,
        "day" => 86_400_000,
        _ => 60_000,
    };
    let from = minute.div_euclid(width) * width;
    pb::GetUsageRequest {
        subject: subject.into(),
        id: id.into(),
        account_id: account.into(),
        from: ts(from),
        to: ts(from + width),
        granularity: granularity.into(),
    }
}

/// The one bucket's counts as "code/reason=n", sorted; empty when there is no bucket.
async fn counts(app: &mut TestApp, request: pb::GetUsageRequest) -> Vec<String> {
    let usage = app.admin.get_usage(request).await.expect("GetUsage answers").into_inner();
    assert!(usage.buckets.len() <= 1, "{usage:?}");
    let mut out: Vec<String> = usage
        .buckets
        .iter()
        .flat_map(|b| &b.outcomes)
        .map(|o| format!("{}/{}={}", o.code, o.reason, o.count))
        .collect();
    out.sort();
    out
}

fn scoped(secret: &str, scope: &str) -> pb::AuthorizeRequest {
    pb::AuthorizeRequest { required_scopes: vec![scope.into()], ..ask(secret) }
}

async fn counts_each_outcome_per_key_owner_and_account(db: Db) {
    let Some(mut app) = TestApp::spawn(db).await else { return };
    let minute = mid_minute(&app);
    let owner_key = pb::CreateApiKeyRequest { owner_id: "o1".into(), ..Default::default() };
    let (key, secret) = app.key_with("acct_u", owner_key.clone()).await;
    let (other, other_secret) = app.key_with("acct_u", owner_key).await;
    for _ in 0..7 {
        assert!(app.authorize_with(ask(&secret)).await.allowed);
    }
    for _ in 0..3 {
        assert_eq!(app.authorize_with(scoped(&secret, "billing:write")).await.code, "insufficient_scope");
    }
    assert!(app.authorize_with(ask(&other_secret)).await.allowed);
    app.admin.revoke_api_key(pb::RevokeApiKeyRequest { id: key.id.clone(), reason: String::new() }).await.unwrap();
    for _ in 0..2 {
        assert_eq!(app.authorize_with(ask(&secret)).await.code, "api_key_revoked");
    }

    let want = ["allowed/=7", "api_key_revoked/revoked=2", "insufficient_scope/insufficient_scope=3"];
    for granularity in ["minute", "hour", "day"] {
        assert_eq!(counts(&mut app, usage_of("key", &key.id, "", minute, granularity)).await, want);
    }
    let both = ["allowed/=8", "api_key_revoked/revoked=2", "insufficient_scope/insufficient_scope=3"];
    assert_eq!(counts(&mut app, usage_of("owner", "o1", "acct_u", minute, "minute")).await, both);
    assert_eq!(counts(&mut app, usage_of("account", "acct_u", "", minute, "hour")).await, both);
    assert_eq!(counts(&mut app, usage_of("key", &other.id, "", minute, "minute")).await, ["allowed/=1"]);
    // The next minute is a bucket of its own.
    assert!(app.authorize_with(ask(&other_secret)).await.allowed);
    app.clock.set(Timestamp::from_millis(minute + 90_000));
    assert!(app.authorize_with(ask(&other_secret)).await.allowed);
    assert_eq!(counts(&mut app, usage_of("key", &other.id, "", minute + 60_000, "minute")).await, ["allowed/=1"]);
    assert_eq!(counts(&mut app, usage_of("key", &other.id, "", minute, "minute")).await, ["allowed/=2"]);

    // Top keys: by requests the first key (12), by denials too; the other has none denied.
    let top = |by: &str| pb::TopKeysRequest {
        account_id: "acct_u".into(),
        from: ts(minute),
        to: ts(minute + 120_000),
        by: by.into(),
        ..Default::default()
    };
    let keys = app.admin.top_keys(top("requests")).await.unwrap().into_inner().keys;
    let rows: Vec<_> = keys.iter().map(|k| (k.key_id.as_str(), k.requests, k.allowed, k.denied)).collect();
    assert_eq!(rows, [(key.id.as_str(), 12, 7, 5), (other.id.as_str(), 3, 3, 0)]);
    let keys = app.admin.top_keys(top("denials")).await.unwrap().into_inner().keys;
    assert_eq!(keys.iter().map(|k| k.key_id.as_str()).collect::<Vec<_>>(), [key.id.as_str()]);
}

async fn bad_ranges_are_invalid_argument_saying_why(db: Db) {
    let Some(mut app) = TestApp::spawn(db).await else { return };
    let (key, _) = app.key_with("acct_u", Default::default()).await;
    let now = app.clock.now().as_millis();
    let base = usage_of("key", &key.id, "", now, "minute");
    let cases = [
        (pb::GetUsageRequest { from: ts(now), to: ts(now - 3_600_000), ..base.clone() }, "from: must be before to"),
        (pb::GetUsageRequest { granularity: "week".into(), ..base.clone() }, "must be minute, hour or day"),
        (
            pb::GetUsageRequest { from: ts(now - 30 * 86_400_000), to: ts(now), ..base.clone() },
            "minute buckets; at most 1500",
        ),
        (pb::GetUsageRequest { subject: "app".into(), ..base.clone() }, "subject: must be key, owner or account"),
        (pb::GetUsageRequest { subject: "owner".into(), id: "o1".into(), ..base.clone() }, "required for an owner"),
    ];
    for (request, message) in cases {
        let status = app.admin.get_usage(request.clone()).await.expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{request:?}: {status:?}");
        assert!(status.message().contains(message), "{request:?}: {}", status.message());
    }
    let top = pb::TopKeysRequest { account_id: "acct_u".into(), by: "errors".into(), ..Default::default() };
    let status = app.admin.top_keys(top).await.expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("must be requests or denials"), "{}", status.message());
}

async fn one_tenants_flood_leaves_anothers_figures_and_stays_confined(db: Db) {
    let Some(mut app) = TestApp::spawn(db).await else { return };
    let minute = mid_minute(&app);
    let (a_key, a_secret) = app.key_with("acct_a", Default::default()).await;
    let (b_key, b_secret) = app.key_with("acct_b", Default::default()).await;
    for _ in 0..3 {
        assert!(app.authorize_with(ask(&b_secret)).await.allowed);
    }
    let b_before = counts(&mut app, usage_of("account", "acct_b", "", minute, "minute")).await;
    assert_eq!(b_before, ["allowed/=3"]);
    for _ in 0..60 {
        app.authorize_with(scoped(&a_secret, "billing:write")).await;
    }
    assert_eq!(counts(&mut app, usage_of("account", "acct_b", "", minute, "minute")).await, b_before);
    assert_eq!(counts(&mut app, usage_of("key", &b_key.id, "", minute, "minute")).await, b_before);
    assert_eq!(
        counts(&mut app, usage_of("account", "acct_a", "", minute, "minute")).await,
        ["insufficient_scope/insufficient_scope=60"]
    );

    // A's confined token reads A's usage, never B's.
    let secret = token(&mut app, "a-reader", "read_only", "acct_a", 0).await;
    let mut a_admin = admin_with(&app, &secret);
    let mine = a_admin.get_usage(usage_of("key", &a_key.id, "", minute, "minute")).await.unwrap().into_inner();
    assert_eq!(mine.buckets.len(), 1);
    let status = a_admin.get_usage(usage_of("key", &b_key.id, "", minute, "minute")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    assert!(!status.message().contains("acct_b"), "{}", status.message());
    for request in
        [usage_of("account", "acct_b", "", minute, "minute"), usage_of("owner", "o1", "acct_b", minute, "minute")]
    {
        let status = a_admin.get_usage(request).await.unwrap_err();
        assert_eq!((status.code(), reason(&status).as_str()), (tonic::Code::PermissionDenied, "insufficient_scope"));
    }
    let top = pb::TopKeysRequest { account_id: "acct_b".into(), ..Default::default() };
    let status = a_admin.top_keys(top).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
}

backend_tests!(
    counts_each_outcome_per_key_owner_and_account,
    bad_ranges_are_invalid_argument_saying_why,
    one_tenants_flood_leaves_anothers_figures_and_stays_confined,
);

/// No timer flush in a test's time: only a read or the shutdown writes the counts.
fn no_timer(settings: &mut keygate::config::Settings) {
    settings.usage_counts.flush_interval = Duration::from_secs(300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_are_written_at_shutdown_and_read_after_a_restart() {
    let db = TestDb::new(Db::Sqlite).await.unwrap();
    let mut app = TestApp::spawn_url(&db.url, no_timer).await;
    let minute = mid_minute(&app);
    let (key, secret) = app.key_with("acct_r", Default::default()).await;
    for _ in 0..5 {
        assert!(app.authorize_with(ask(&secret)).await.allowed);
    }
    assert_eq!(app.handles.usage_counts.stats().keys, 1, "counted in memory, not yet written");
    app.stop().await;

    let mut again = TestApp::spawn_url(&db.url, no_timer).await;
    again.clock.set(Timestamp::from_millis(minute + 30_000));
    assert_eq!(counts(&mut again, usage_of("key", &key.id, "", minute, "minute")).await, ["allowed/=5"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_postgres_add_up_exactly() {
    let with_console = |s: &mut keygate::config::Settings| {
        no_timer(s);
        s.console.listen = keygate::console::ConsoleListen::Given("127.0.0.1:0".parse().unwrap());
    };
    let Some((_db, mut a, mut b)) = crate::replicas::two_replicas_with(with_console).await else {
        eprintln!("skipped: KEYGATE_TEST_POSTGRES_URL is not set");
        return;
    };
    let minute = mid_minute(&a);
    b.clock.set(a.clock.now());
    let (key, secret) = a.key_with("acct_rep", Default::default()).await;
    const N: usize = 40;
    for i in 0..N {
        let app = if i % 2 == 0 { &mut a } else { &mut b };
        let request = if i % 4 == 1 { scoped(&secret, "billing:write") } else { ask(&secret) };
        app.authorize_with(request).await;
    }
    // Each read writes its own replica's counts first: B's, then A's (and reads the sum).
    counts(&mut b, usage_of("key", &key.id, "", minute, "minute")).await;
    let both = counts(&mut a, usage_of("key", &key.id, "", minute, "minute")).await;
    assert_eq!(both, [format!("allowed/={}", N - N / 4), format!("insufficient_scope/insufficient_scope={}", N / 4)]);
    assert_eq!(counts(&mut a, usage_of("account", "acct_rep", "", minute, "day")).await, both);
    // The console on either replica draws the same sum.
    for app in [&a, &b] {
        let base = app.console_url.clone().expect("the console is on");
        let operator = crate::console::Operator::sign_in(&base, crate::helpers::ADMIN_TOKEN).await;
        let (_, page) = operator.get(&format!("/keys/{}", key.id)).await;
        for (outcome, n) in [("allowed", N - N / 4), ("insufficient_scope", N / 4)] {
            let row = format!("<td>{outcome}</td><td class=\"n\">{n}</td>");
            assert!(page.contains(&row), "{base}: no {row} in the key's chart");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_past_the_bound_are_not_counted_and_the_metric_says_so() {
    let db = TestDb::new(Db::Sqlite).await.unwrap();
    let mut app = TestApp::spawn_on(db, |s| {
        no_timer(s);
        s.usage_counts.max_keys = 2;
        s.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let minute = mid_minute(&app);
    let mut keys = Vec::new();
    for _ in 0..3 {
        keys.push(app.key_with("acct_m", Default::default()).await);
    }
    for (_, secret) in &keys {
        for _ in 0..2 {
            assert!(app.authorize_with(ask(secret)).await.allowed, "counting never refuses a call");
        }
    }
    let text = reqwest::get(app.metrics_url.clone().unwrap()).await.unwrap().text().await.unwrap();
    assert_eq!(sample(&text, r#"keygate_usage_dropped_total{reason="keys_full"}"#), Some(2.0), "{text}");
    assert_eq!(sample(&text, "keygate_usage_keys"), Some(2.0));
    assert_eq!(counts(&mut app, usage_of("key", &keys[0].0.id, "", minute, "minute")).await, ["allowed/=2"]);
    assert_eq!(counts(&mut app, usage_of("key", &keys[2].0.id, "", minute, "minute")).await, Vec::<String>::new());
    // The flush made room: the third key is counted again.
    assert!(app.authorize_with(ask(&keys[2].1)).await.allowed);
    assert_eq!(counts(&mut app, usage_of("key", &keys[2].0.id, "", minute, "minute")).await, ["allowed/=1"]);
}

/// One account's keys cannot take the whole bound: past its share, its further keys are
/// not counted, and another account's first key still is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_account_cannot_take_another_accounts_room_in_the_count() {
    let db = TestDb::new(Db::Sqlite).await.unwrap();
    let mut app = TestApp::spawn_on(db, |s| {
        no_timer(s);
        s.usage_counts.max_keys = 3;
        s.usage_counts.max_keys_per_account = 2;
        s.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let minute = mid_minute(&app);
    let mut hostile = Vec::new();
    for _ in 0..3 {
        hostile.push(app.key_with("acct_heavy", Default::default()).await);
    }
    let (quiet, quiet_secret) = app.key_with("acct_quiet", Default::default()).await;
    for (_, secret) in &hostile {
        assert!(app.authorize_with(ask(secret)).await.allowed, "counting never refuses a call");
    }
    assert!(app.authorize_with(ask(&quiet_secret)).await.allowed);
    let text = reqwest::get(app.metrics_url.clone().unwrap()).await.unwrap().text().await.unwrap();
    assert_eq!(sample(&text, r#"keygate_usage_dropped_total{reason="account_full"}"#), Some(1.0), "{text}");
    assert_eq!(counts(&mut app, usage_of("key", &quiet.id, "", minute, "minute")).await, ["allowed/=1"]);
    assert_eq!(counts(&mut app, usage_of("account", "acct_heavy", "", minute, "minute")).await, ["allowed/=2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_shows_usage_as_a_table_and_as_json() {
    use crate::cli::keygate;
    let mut app = TestApp::spawn(Db::Sqlite).await.unwrap();
    let minute = mid_minute(&app);
    let (key, secret) = app.key_with("acct_cli_u", Default::default()).await;
    for _ in 0..3 {
        assert!(app.authorize_with(ask(&secret)).await.allowed);
    }
    app.authorize_with(scoped(&secret, "billing:write")).await;
    let (from, to) = (Timestamp::from_millis(minute).to_string(), Timestamp::from_millis(minute + 60_000).to_string());
    let range = ["--from", from.as_str(), "--to", to.as_str()];

    let args = [&["usage", "key", key.id.as_str()][..], &range, &["--json"]].concat();
    let (ok, out, err) = keygate(&app, &args);
    assert!(ok, "{err}");
    let usage: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(usage["buckets"].as_array().unwrap().len(), 1, "{usage}");
    assert_eq!((usage["buckets"][0]["allowed"].as_u64(), usage["buckets"][0]["denied"].as_u64()), (Some(3), Some(1)));
    assert_eq!(usage["buckets"][0]["start"], from.as_str());

    let (ok, table, err) = keygate(&app, &[&["usage", "account", "acct_cli_u"][..], &range].concat());
    assert!(ok, "{err}");
    let lines: Vec<_> = table.lines().collect();
    assert!(lines[1].starts_with("BUCKET") && lines[1].contains("ALLOWED"), "{table}");
    assert!(lines[2].starts_with(&from) && lines[2].contains("allowed=3"), "{table}");
    assert_eq!(lines[3], "TOTAL  allowed=3 insufficient_scope/insufficient_scope=1", "{table}");

    let args = [&["usage", "top", "--account", "acct_cli_u", "--by", "denials"][..], &range, &["--json"]].concat();
    let (ok, out, err) = keygate(&app, &args);
    assert!(ok, "{err}");
    let top: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (top["keys"][0]["key_id"].as_str(), top["keys"][0]["requests"].as_u64()),
        (Some(key.id.as_str()), Some(4))
    );

    let (ok, _, err) = keygate(&app, &["usage", "key", &key.id, "--granularity", "week"]);
    assert!(!ok);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("VALIDATION_ERROR") && err.contains("must be minute, hour or day"), "{err}");
    let (ok, _, err) = keygate(&app, &["usage", "key", &key.id, "--from", "yesterday"]);
    assert!(!ok && err.contains("neither a time"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_flush_is_kept_and_written_by_the_next() {
    use sqlx::Connection;
    let db = TestDb::new(Db::Sqlite).await.unwrap();
    let mut app = TestApp::spawn_url(&db.url, no_timer).await;
    let minute = mid_minute(&app);
    let (key, secret) = app.key_with("acct_f", Default::default()).await;
    for _ in 0..4 {
        assert!(app.authorize_with(ask(&secret)).await.allowed);
    }
    // The table gone from under the server: its writes fail as a store's would.
    let mut side = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
    sqlx::query("ALTER TABLE usage_counts RENAME TO usage_counts_away").execute(&mut side).await.unwrap();
    assert!(app.handles.usage_counts.flush().await.is_err());
    for _ in 0..2 {
        assert!(app.authorize_with(ask(&secret)).await.allowed, "a failing store never refuses a call");
    }
    assert!(app.handles.usage_counts.flush().await.is_err());
    let stats = app.handles.usage_counts.stats();
    assert_eq!((stats.flush_failures, stats.dropped_pending_full), (2, 0));
    assert!(stats.pending > 0, "{stats:?}");
    sqlx::query("ALTER TABLE usage_counts_away RENAME TO usage_counts").execute(&mut side).await.unwrap();
    assert_eq!(counts(&mut app, usage_of("key", &key.id, "", minute, "minute")).await, ["allowed/=6"]);
    assert_eq!(app.handles.usage_counts.stats().pending, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets_past_their_retention_are_pruned() {
    let db = TestDb::new(Db::Sqlite).await.unwrap();
    let mut app = TestApp::spawn_url(&db.url, |s| {
        no_timer(s);
        s.usage_counts.minute_retention = Duration::from_secs(3600);
    })
    .await;
    let minute = mid_minute(&app);
    let (key, secret) = app.key_with("acct_p", Default::default()).await;
    assert!(app.authorize_with(ask(&secret)).await.allowed);
    assert_eq!(counts(&mut app, usage_of("key", &key.id, "", minute, "minute")).await, ["allowed/=1"]);
    // Two hours on: the minute is past its hour of retention, the hour and day are kept.
    app.clock.set(Timestamp::from_millis(minute + 2 * 3_600_000));
    assert_eq!(counts(&mut app, usage_of("key", &key.id, "", minute, "minute")).await, Vec::<String>::new());
    assert_eq!(counts(&mut app, usage_of("key", &key.id, "", minute, "hour")).await, ["allowed/=1"]);
    assert_eq!(counts(&mut app, usage_of("key", &key.id, "", minute, "day")).await, ["allowed/=1"]);
}

/// Usage reads cost a list's units of their token's calls a second: each writes the
/// replica's pending counts and reads up to 1,500 buckets, so a read-only token's 50
/// calls a second would otherwise flush and scan 50 times a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_reads_cost_what_a_list_costs_of_the_tokens_calls() {
    let db = TestDb::new(Db::Sqlite).await.unwrap();
    let app = TestApp::spawn_on(db, |s| {
        s.admin_gate.calls_per_second = 1;
        s.admin_gate.burst = 20;
    })
    .await;
    let minute = mid_minute(&app);
    let mut admin = app.admin.clone();
    admin.get_usage(usage_of("account", "acct_u", "acct_u", minute, "minute")).await.expect("the first read");
    let top = pb::TopKeysRequest {
        account_id: "acct_u".into(),
        from: ts(minute),
        to: ts(minute + 60_000),
        by: "requests".into(),
        ..Default::default()
    };
    admin.top_keys(top).await.expect("the second read");
    // The clock has not moved: the bucket of 20 is spent by two reads of 10.
    let refused = admin
        .get_usage(usage_of("account", "acct_u", "acct_u", minute, "minute"))
        .await
        .expect_err("a third read within the second");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
    assert_eq!(reason(&refused), "rate_limit_reached");
}
