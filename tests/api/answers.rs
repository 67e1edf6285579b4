//! Answers that say no more and no less than the truth (issue 30, items 1 to 7): what a
//! refused call may retry, a deadline keygate caps, a replica that hears of a refill
//! change late, import lines, metadata's order and size, mapped IPv6 ranges, and what an
//! update leaves alone.

use crate::forward_auth::{call, keygate};
use crate::helpers::{ask, Db, TestApp, TestDb};
use crate::relay::{target_of, Relay};
use keygate::clock::Clock;
use keygate::grpc::proto as pb;
use std::time::Duration;

const DEADLINE: &str = "x-keygate-decision-deadline-ms";

fn credits(remaining: i64, refill: Option<(i64, &str, &str)>) -> Option<pb::Credits> {
    let refill =
        refill.map(|(amount, interval, mode)| pb::Refill { amount, interval: interval.into(), mode: mode.into() });
    Some(pb::Credits { remaining, refill })
}

/// The seconds from `app`'s clock to the start of the next minute since the epoch.
fn to_next_minute(app: &TestApp) -> u32 {
    let now = app.clock.now().as_millis();
    let next = (now.div_euclid(60_000) + 1) * 60_000;
    u32::try_from((next - now + 999) / 1000).unwrap()
}

/// Item 1: a `credits_exhausted` answer never suggests a retry that cannot pass. Without a
/// refill: no retry-after (0 from Authorize, no header from forward auth) and a message
/// that says there is no refill; with one, the time until a refill brings enough; with a
/// `to` refill smaller than the cost, none. `limit` is the call's cost, and
/// `credits_remaining` what is left (1, not 0, for a call of 3 on 1).
/// guards: retry_after 0 / `limit` = the refill amount / credits_remaining 0 (before the fix).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credits_refusal_says_what_is_left_and_when_a_retry_can_pass() {
    let mut app = keygate().await;
    let url = format!("{}/forward-auth", app.http_url.clone().unwrap());
    let client = reqwest::Client::new();
    let forward = |secret: &str| {
        client
            .get(&url)
            .header("x-forwarded-method", "GET")
            .header("x-forwarded-uri", "/api/v1/panel/applications")
            .header("x-api-key", secret)
    };

    // No refill: 1 left, a call of 3.
    let no_refill = pb::CreateApiKeyRequest { credits: credits(1, None), ..Default::default() };
    let (_, secret) = app.key_with("acct_ans1", no_refill).await;
    let r = app.authorize_with(pb::AuthorizeRequest { cost: 3, ..ask(&secret) }).await;
    assert_eq!(
        (r.reason.as_str(), r.credits_remaining, r.limit, r.remaining, r.retry_after_seconds),
        ("credits_exhausted", Some(1), 3, 0, 0),
        "{r:?}"
    );
    assert!(r.message.contains("no refill") && r.message.contains("1 left, this call costs 3"), "{}", r.message);
    assert!(app.authorize_with(ask(&secret)).await.allowed, "the 1 left pays for a call of 1");
    let (status, _, body, retry_after) = call(forward(&secret)).await;
    assert_eq!((status, retry_after), (429, None), "nothing to wait for: {body}");
    assert!(body.contains("no refill"), "{body}");

    // A refill to 5 every minute: enough at the next minute, by the test's clock.
    let refilled = pb::CreateApiKeyRequest { credits: credits(0, Some((5, "60s", "to"))), ..Default::default() };
    let (_, secret) = app.key_with("acct_ans1", refilled).await;
    let wait = to_next_minute(&app);
    let r = app.authorize_with(pb::AuthorizeRequest { cost: 3, ..ask(&secret) }).await;
    assert_eq!((r.credits_remaining, r.limit, r.retry_after_seconds), (Some(0), 3, wait), "{r:?}");
    assert!(r.message.contains(&format!("refilled in {wait} s")), "{}", r.message);
    let (status, _, body, retry_after) = call(forward(&secret)).await;
    assert_eq!((status, retry_after), (429, Some(wait.to_string())), "{body}");

    // A refill to 2 never pays for a call of 3: no retry-after.
    let too_small = pb::CreateApiKeyRequest { credits: credits(1, Some((2, "60s", "to"))), ..Default::default() };
    let (_, secret) = app.key_with("acct_ans1", too_small).await;
    let r = app.authorize_with(pb::AuthorizeRequest { cost: 3, ..ask(&secret) }).await;
    assert_eq!((r.credits_remaining, r.retry_after_seconds), (Some(1), 0), "{r:?}");
    assert!(r.message.contains("never brings 3"), "{}", r.message);

    // An `add` refill of 1 a minute: 1 left, a call of 3 passes two refills from now.
    let adding = pb::CreateApiKeyRequest { credits: credits(1, Some((1, "60s", "add"))), ..Default::default() };
    let (_, secret) = app.key_with("acct_ans1", adding).await;
    let r = app.authorize_with(pb::AuthorizeRequest { cost: 3, ..ask(&secret) }).await;
    assert_eq!((r.credits_remaining, r.retry_after_seconds), (Some(1), wait + 60), "{r:?}");
}

/// Item 2: a caller's `grpc-timeout` beyond keygate's cap (`--decision-deadline-ms`) is
/// told so: the cap in the answer's metadata, and a call the cap cuts fails with a message
/// naming the cap, the flag and the caller's own deadline (Postgres' answers held).
/// guards: an unexplained "the key store is unavailable" at the cap (before the fix).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_keygate_caps_is_answered_naming_the_cap() {
    let Some(db) = TestDb::new(Db::Postgres).await else {
        eprintln!("skipped: KEYGATE_TEST_POSTGRES_URL is not set");
        return;
    };
    let relay = Relay::start(target_of(&db.url)).await;
    let mut app = TestApp::spawn_url(&relay.url_for(&db.url), |s| {
        // The store waits longer than the decision: the cap is what cuts the call.
        s.store_breaker.timeout = Duration::from_secs(30);
        s.edge.decision_deadline = Duration::from_secs(3);
    })
    .await;
    let (_, secret) = app.create_key("acct_cap", &["applications:read"], &[]).await;
    let (_, unread) = app.create_key("acct_cap", &["applications:read"], &[]).await;
    let patient = |secret: &str| {
        let mut request = tonic::Request::new(ask(secret));
        request.set_timeout(Duration::from_secs(30));
        request
    };
    let answered = app.authorizer.authorize(patient(&secret)).await.unwrap();
    assert!(answered.get_ref().allowed);
    assert_eq!(answered.metadata().get(DEADLINE).map(|v| v.to_str().unwrap()), Some("3000"));
    let mut short = tonic::Request::new(ask(&secret));
    short.set_timeout(Duration::from_secs(1));
    assert!(app.authorizer.authorize(short).await.unwrap().metadata().get(DEADLINE).is_none(), "not capped");

    // A key no replica has read: its record waits for Postgres, whose answers are held.
    relay.hold_answers();
    let failed = app.authorizer.authorize(patient(&unread)).await.unwrap_err();
    relay.release_answers();
    assert_eq!(failed.code(), tonic::Code::Unavailable, "{failed:?}");
    assert!(
        failed.message().starts_with(
            "no decision in time: keygate decides within 3 s (--decision-deadline-ms); \
             your grpc-timeout of 30 s was capped (error id "
        ),
        "{failed:?}"
    );
    assert_eq!(failed.metadata().get(DEADLINE).map(|v| v.to_str().unwrap()), Some("3000"));
}

/// Item 3: right after a refill-rule change on one replica, the other's first call on the
/// key is decided, not failed: B (its listener paused, so it has not heard of the change
/// and still trusts its memory) finds its record out of step with the store, reloads it
/// and decides on the new terms.
/// guards: UNAVAILABLE ("the key's credits changed while the call was decided") on B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refill_rule_changed_on_one_replica_is_decided_at_once_on_the_other() {
    let Some((_db, mut a, b)) = crate::replicas::two_replicas().await else {
        eprintln!("skipped: KEYGATE_TEST_POSTGRES_URL is not set");
        return;
    };
    let terms = pb::CreateApiKeyRequest { credits: credits(10, Some((10, "60s", "to"))), ..Default::default() };
    let (key, secret) = a.key_with("acct_rule", terms).await;
    crate::helpers::eventually("B serves the key from its cache", || async {
        crate::replicas::code_on(&b, &secret).await == "allowed" && b.handles.cache.stats().keys.entries > 0
    })
    .await;
    crate::helpers::eventually("B trusts its cache", || async { b.handles.cache.trust().holds() }).await;

    let on_b = b.handles.invalidation.clone().unwrap();
    on_b.pause(true);
    let change = pb::UpdateApiKeyRequest {
        id: key.id.clone(),
        credits: credits(5, Some((100, "daily", "to"))),
        ..Default::default()
    };
    a.admin.update_api_key(change).await.unwrap();
    assert!(b.handles.cache.trust().holds(), "B still trusts the record it holds");
    let on_b_now = b.authorizer.clone().authorize(ask(&secret)).await;
    on_b.pause(false);
    let answer = on_b_now.expect("decided, not UNAVAILABLE").into_inner();
    assert_eq!((answer.allowed, answer.credits_remaining), (true, Some(4)), "the new balance: {answer:?}");
}

fn sha256_line(account: &str, name: &str, hash: &str) -> pb::ImportedKey {
    pb::ImportedKey {
        account_id: account.into(),
        name: name.into(),
        algorithm: "sha256".into(),
        hash: hash.into(),
        ..Default::default()
    }
}

/// Item 4: a line whose credential an earlier line of the same batch brings is answered on
/// its own (`duplicate_in_batch`, naming the first), never with the first line's key id;
/// an import id with a space is told exactly what is allowed; the CLI names both lines,
/// also when the earlier one came in an earlier run.
/// guards: `already_imported` with the first line's key id; "must be 1 to 64 printable
/// characters"; a CLI summary that counted the duplicate as already imported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_import_line_is_named_and_an_import_id_is_told_what_is_allowed() {
    let mut app = TestApp::spawn(Db::Sqlite).await.unwrap();
    let (one, two) = ("ab".repeat(32), "cd".repeat(32));
    let keys = vec![
        sha256_line("acct_dup", "first", &one),
        sha256_line("acct_dup", "second", &one),
        sha256_line("acct_dup", "other", &two),
        // The same form in another account is a key of its own.
        sha256_line("acct_dup2", "elsewhere", &one),
    ];
    let request = pb::ImportApiKeysRequest { import_id: "dup-1".into(), keys };
    let results = app.admin.import_api_keys(request).await.unwrap().into_inner().results;
    let said: Vec<_> = results.iter().map(|r| (r.status.as_str(), r.duplicate_of, r.key_id.is_empty())).collect();
    assert_eq!(
        said,
        [("imported", 0, false), ("duplicate_in_batch", 1, true), ("imported", 0, false), ("imported", 0, false)]
    );
    assert!(results[1].error.contains("as key 1 of this batch"), "{:?}", results[1]);

    let spaced = pb::ImportApiKeysRequest {
        import_id: "billing 2026".into(),
        keys: vec![sha256_line("acct_dup", "n", &"ef".repeat(32))],
    };
    let refused = app.admin.import_api_keys(spaced).await.unwrap_err();
    assert_eq!(crate::helpers::reason(&refused), "VALIDATION_ERROR");
    assert!(refused.message().contains("no spaces") && refused.message().contains("(it has a space)"), "{refused:?}");

    // The CLI: a duplicate in the file, and a rerun that finds the first line's key again.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.jsonl");
    let line = |name: &str, hash: &str| {
        serde_json::json!({"account_id": "acct_dupcli", "name": name, "algorithm": "sha256", "hash": hash}).to_string()
    };
    let three = "01".repeat(32);
    std::fs::write(&file, format!("{}\n{}\n", line("first", &three), line("second", &three))).unwrap();
    for run in ["first run", "rerun"] {
        let (ok, out, err) = crate::cli::keygate(&app, &["key", "import", file.to_str().unwrap()]);
        assert!(ok, "{run}: {err}");
        assert!(out.contains(", 1 duplicate"), "{run}: {out}");
        assert!(
            out.contains("line 2: the same credential, in the same account, as line 1: not imported"),
            "{run}: {out}"
        );
    }
}

/// Item 5: metadata keeps the operator's key order (stored and returned as written, less
/// the whitespace), and its 4,096-byte limit is on that compact form: pretty-printed
/// metadata over 4,096 bytes as written, under it compact, is accepted.
/// guards: keys returned sorted; "must be at most 4096 bytes" on the written form.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_keeps_the_operators_order_and_is_bounded_compact() {
    let mut app = TestApp::spawn(Db::Sqlite).await.unwrap();
    let fields: Vec<String> = (0..40).map(|i| format!("\"k{:02}\": \"{}\"", 40 - i, "v".repeat(60))).collect();
    let pretty =
        format!("{{\n    \"plan\": \"pro\",\n    {}\n}}", fields.join(",\n                                        "));
    assert!(pretty.len() > 4096, "written: {} bytes", pretty.len());
    let compact = format!("{{\"plan\":\"pro\",{}}}", fields.join(",").replace("\": \"", "\":\""));
    assert!(compact.len() <= 4096, "compact: {} bytes", compact.len());
    let terms = pb::CreateApiKeyRequest { metadata_json: pretty, ..Default::default() };
    let (key, secret) = app.key_with("acct_meta", terms).await;
    assert_eq!(key.metadata_json, compact, "as written, in the operator's order");
    let shown = app.admin.get_api_key(pb::GetApiKeyRequest { id: key.id.clone() }).await.unwrap().into_inner();
    assert_eq!(shown.metadata_json, compact);
    let allowed = app.authorize_with(ask(&secret)).await;
    assert_eq!(allowed.principal.unwrap().metadata_json, compact);

    let over = format!("{{\"a\":\"{}\"}}", "x".repeat(4096));
    let change = pb::UpdateApiKeyRequest { id: key.id, metadata_json: Some(over), ..Default::default() };
    let refused = app.admin.update_api_key(change).await.unwrap_err();
    assert!(refused.message().contains("at most 4096 bytes in compact form"), "{refused:?}");
}

/// Item 6: an IPv4-mapped IPv6 range is the IPv4 range it maps, as a mapped address is
/// the IPv4 address: `::ffff:192.0.2.0/120` is stored as `192.0.2.0/24` and decides as it;
/// a prefix under /96 reaches past the mapped range and is refused saying so.
/// guards: "not a CIDR range" for `::ffff:192.0.2.0/120`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv4_mapped_range_is_its_ipv4_range() {
    let mut app = TestApp::spawn(Db::Sqlite).await.unwrap();
    let networks = vec!["::ffff:192.0.2.0/120".to_owned(), "::ffff:198.51.100.7".to_owned()];
    let terms = pb::CreateApiKeyRequest { allowed_networks: networks, ..Default::default() };
    let (key, secret) = app.key_with("acct_mapped", terms).await;
    assert_eq!(key.allowed_networks, ["192.0.2.0/24", "198.51.100.7/32"]);
    let from = |ip: &str| pb::AuthorizeRequest { client_ip: ip.into(), ..ask(&secret) };
    assert!(app.authorize_with(from("192.0.2.200")).await.allowed);
    assert!(app.authorize_with(from("::ffff:192.0.2.9")).await.allowed);
    assert_eq!(app.authorize_with(from("192.0.3.1")).await.reason, "ip_not_allowed");

    let wide = pb::UpdateApiKeyRequest {
        id: key.id,
        allowed_networks: Some(pb::StringList { values: vec!["::ffff:0.0.0.0/95".into()] }),
        ..Default::default()
    };
    let refused = app.admin.update_api_key(wide).await.unwrap_err();
    assert_eq!(crate::helpers::reason(&refused), "VALIDATION_ERROR");
    assert!(refused.message().contains("must be /96 to /128"), "{refused:?}");
}

/// Item 7: `UpdateApiKey.credits` without a refill keeps the key's refill (as the CLI
/// always did); `clear_refill` removes it, and not without credits.
/// guards: the refill removed by a top-up through the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credits_update_keeps_the_refill_unless_told_to_clear_it() {
    let mut app = TestApp::spawn(Db::Sqlite).await.unwrap();
    let terms = pb::CreateApiKeyRequest { credits: credits(1, Some((5, "daily", "to"))), ..Default::default() };
    let (key, _) = app.key_with("acct_keep", terms).await;
    let refill_of = |key: pb::ApiKey| key.credits.and_then(|c| c.refill).map(|r| (r.amount, r.interval, r.mode));
    let top_up = pb::UpdateApiKeyRequest { id: key.id.clone(), credits: credits(50, None), ..Default::default() };
    let kept = app.admin.update_api_key(top_up).await.unwrap().into_inner();
    assert_eq!(kept.credits.as_ref().map(|c| c.remaining), Some(50));
    assert_eq!(refill_of(kept), Some((5, "daily".to_owned(), "to".to_owned())), "a top-up keeps the refill");
    let shown = app.admin.get_api_key(pb::GetApiKeyRequest { id: key.id.clone() }).await.unwrap().into_inner();
    assert_eq!(refill_of(shown), Some((5, "daily".to_owned(), "to".to_owned())));

    let alone = pb::UpdateApiKeyRequest { id: key.id.clone(), clear_refill: true, ..Default::default() };
    let refused = app.admin.update_api_key(alone).await.unwrap_err();
    assert!(refused.message().contains("clear_refill"), "{refused:?}");
    let clear = pb::UpdateApiKeyRequest {
        id: key.id.clone(),
        credits: credits(7, None),
        clear_refill: true,
        ..Default::default()
    };
    let cleared = app.admin.update_api_key(clear).await.unwrap().into_inner();
    assert_eq!((cleared.credits.as_ref().map(|c| c.remaining), refill_of(cleared)), (Some(7), None));
    // The CLI's --no-refill says the same.
    let (ok, _, err) = crate::cli::keygate(&app, &["key", "update", &key.id, "--credits", "3", "--no-refill"]);
    assert!(ok, "{err}");
}
