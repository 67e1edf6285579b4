//! Issue 27, item 2: one account's expensive imported hashes and the guesses sent at them
//! can slow only that account. Verifications wait for a slot in their key's account's
//! queue, an account holds at most half the slots, admin hashing has a slot of its own,
//! and a job whose caller left before it had a slot never runs.
//!
//! The attack's running verification is a slot the test holds in account A's name
//! (`Verifier::admit`, what every verification asks for): it stands for an expensive
//! import being verified, and ends when the test says so, so nothing here depends on how
//! fast the machine hashes.

use crate::helpers::{ask, eventually, TestApp, TestDb};
use keygate::authn::verifier::Slot;
use keygate::domain::{AccountId, SecretHash};
use keygate::grpc::proto as pb;
use std::time::Duration;

/// bcrypt 10 (~0.1 s on one core, within the import cap): as the scheduler counts it,
/// a few of these fill what one account may queue. None of them runs in these tests.
fn expensive_hash(secret: &str) -> String {
    bcrypt::hash_with_salt(secret, 10, [7u8; 16]).unwrap().to_string()
}

/// A server with `slots` verification slots, whose decisions wait as long as the test
/// needs (only a caller that leaves ends a wait). Its suspects' bucket is too large to
/// matter: these tests are about the queues behind it.
async fn server(slots: usize) -> TestApp {
    let db = TestDb::new(crate::helpers::Db::Sqlite).await.unwrap();
    TestApp::spawn_on(db, |s| {
        s.argon2.max_concurrent = slots;
        s.budgets.suspect_verifications_per_second = 1_000_000;
        s.edge.decision_deadline = Duration::from_secs(60);
        // The attack's store lookups in flight on SQLite can outlast 100 ms on a loaded
        // machine and would open the store's breaker: these tests count queue work.
        s.store_breaker.timeout = Duration::from_secs(10);
    })
    .await
}

/// Account A's import-cost attack: `keys` keys imported with one expensive bcrypt hash,
/// one of their verifications running (the held slot), and a wrong guess at each key's
/// start from an address of its own, all in flight. Returns the slot and the guesses.
async fn import_cost_attack(app: &mut TestApp, keys: usize) -> (Slot, Vec<tokio::task::JoinHandle<()>>) {
    let hash = expensive_hash("the real secret of every imported key");
    let imports: Vec<_> = (0..keys)
        .map(|n| pb::ImportedKey {
            account_id: "acct_a".into(),
            name: format!("import {n}"),
            scopes: vec!["applications:read".into()],
            algorithm: "bcrypt".into(),
            hash: hash.clone(),
            start: format!("ak_{n:08}"),
            ..Default::default()
        })
        .collect();
    let request = pb::ImportApiKeysRequest { import_id: "attack".into(), keys: imports };
    let results = app.admin.import_api_keys(request).await.unwrap().into_inner().results;
    assert!(results.iter().all(|r| r.status == "imported"), "{:?}", &results[0]);

    let account = AccountId::parse("acct_a").unwrap();
    let running = app.handles.verifier.admit(&account, &SecretHash::new(hash)).await.unwrap();
    let guesses = (0..keys)
        .map(|n| {
            let mut client = app.authorizer.clone();
            let request = pb::AuthorizeRequest {
                client_ip: format!("10.27.{}.{}", n / 250, n % 250 + 1),
                ..ask(&format!("ak_{n:08}_wrong_guess_{n}"))
            };
            tokio::spawn(async move {
                let _ = client.authorize(request).await;
            })
        })
        .collect();
    (running, guesses)
}

/// Waits until every guess has been answered (refused) or is at the verifier, waiting or
/// running, beside the `held` slots the test holds.
async fn arrived(app: &TestApp, guesses: &[tokio::task::JoinHandle<()>], held: usize) {
    let verifier = app.handles.verifier.clone();
    eventually("every guess of A's reached the verifier", || {
        let answered = guesses.iter().filter(|g| g.is_finished()).count();
        let verifier = verifier.clone();
        async move { answered + verifier.queued() - held == guesses.len() }
    })
    .await;
}

/// Ends the attack without running any of it: the guessers hang up (their jobs leave the
/// queue), then the held slot is given back.
async fn stop(app: &TestApp, running: Slot, guesses: Vec<tokio::task::JoinHandle<()>>) {
    for guess in &guesses {
        guess.abort();
    }
    let verifier = app.handles.verifier.clone();
    eventually("the attack's queued guesses left with their callers", || {
        let verifier = verifier.clone();
        async move { verifier.waiting() == 0 }
    })
    .await;
    drop(running);
}

// Guards the per-account queues and shares (Verifier's Lanes): before them one FIFO queue
// of 16 jobs per slot served every account, and A's guesses filled it, so B's first use
// was answered throttled (429) while A's attack lasted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_use_in_another_account_is_allowed_during_the_import_cost_attack() {
    // Two slots: A's work may hold one of them (half), so B finds the other free.
    let mut app = server(2).await;
    let (_, b_secret) = app.create_key("acct_b", &["applications:read"], &[]).await;
    let (running, guesses) = import_cost_attack(&mut app, 48).await;
    arrived(&app, &guesses, 1).await;
    assert!(app.handles.verifier.queue_counts().refused_account_full > 0, "A's own queue is full");
    let before = app.verifications();

    let first_use = app.authorize_with(pb::AuthorizeRequest { client_ip: "192.0.2.7".into(), ..ask(&b_secret) }).await;
    assert!(first_use.allowed, "B's never-verified key during A's attack: {first_use:?}");
    assert_eq!(app.verifications() - before, 1, "B's verification ran; none of A's queued ones did");
    stop(&app, running, guesses).await;
}

// Guards admin hashing's own slot and deadline (Verifier::hash): before, CreateApiKey's
// hash waited for the verifiers' semaphore with no deadline, behind every guess.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_api_key_in_another_account_answers_while_every_verification_slot_is_taken() {
    let mut app = server(2).await;
    let (running, guesses) = import_cost_attack(&mut app, 48).await;
    // The other slot goes to a second hostile account: no verification slot is free.
    let other = AccountId::parse("acct_c").unwrap();
    let also_running = app.handles.verifier.admit(&other, &SecretHash::new(expensive_hash("c"))).await.unwrap();
    assert_eq!(app.handles.verifier.queued() - app.handles.verifier.waiting(), 2, "both slots are held");
    arrived(&app, &guesses, 2).await;

    // The timeout only stops a hang (the admin deadline is 5 s); no speed is asserted.
    let mut admin = app.admin.clone();
    let request = pb::CreateApiKeyRequest {
        account_id: "acct_b".into(),
        name: "made during the attack".into(),
        scopes: vec!["applications:read".into()],
        ..Default::default()
    };
    let created = tokio::time::timeout(Duration::from_secs(60), admin.create_api_key(request))
        .await
        .expect("CreateApiKey answered (it did not hang behind the verifications)");
    let created = created.expect("CreateApiKey succeeded, not UNAVAILABLE").into_inner();
    assert!(created.secret.starts_with("kg_"), "a new key's credential is shown");

    drop(also_running);
    stop(&app, running, guesses).await;
}

// Guards the wait for a slot being the caller's own (Authenticator::verify admits before
// it detaches): before, the verification was spawned first, so one still queued when its
// caller hung up ran anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verification_whose_caller_left_while_it_waited_never_runs() {
    let mut app = server(1).await;
    let (_, b_secret) = app.create_key("acct_b", &["applications:read"], &[]).await;
    let a = AccountId::parse("acct_a").unwrap();
    let running = app.handles.verifier.admit(&a, &SecretHash::new(expensive_hash("a"))).await.unwrap();

    let mut client = app.authorizer.clone();
    let request = ask(&b_secret);
    let caller = tokio::spawn(async move { client.authorize(request).await });
    let verifier = app.handles.verifier.clone();
    eventually("B's first use waits for the only slot", || {
        let verifier = verifier.clone();
        async move { verifier.waiting() == 1 }
    })
    .await;
    caller.abort();
    eventually("the job left the queue with its caller", || {
        let verifier = verifier.clone();
        async move { verifier.waiting() == 0 }
    })
    .await;
    assert_eq!(app.handles.verifier.queue_counts().abandoned, 1);
    drop(running);

    // The key is still never verified: its next use runs the only verification there is.
    let answer = app.authorize_with(ask(&b_secret)).await;
    assert!(answer.allowed, "{answer:?}");
    assert_eq!(app.verifications(), 1, "only the verification whose caller waited ran");
}

// Guards the import cap relative to the server's own cost (ForeignHash::check_cost):
// before, bcrypt 14 and argon2 m=64 MiB, t=10 were taken whatever the server's settings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_costlier_than_the_cap_is_refused_naming_its_hash() {
    let mut app = server(2).await;
    let line = |n: usize, algorithm: &str, hash: &str| pb::ImportedKey {
        account_id: "acct_a".into(),
        name: format!("import {n}"),
        scopes: vec!["applications:read".into()],
        algorithm: algorithm.into(),
        hash: hash.into(),
        start: format!("ak_{n:08}"),
        ..Default::default()
    };
    // The default server (argon2id 19 MiB, t=2) takes 16 times its own cost: bcrypt 12,
    // argon2 m × t up to 622,592 KiB-passes. Hashes need only their shape to be judged.
    let bcrypt = |cost: u32| format!("$2b${cost:02}${}", ".".repeat(53));
    let argon2 = |m: u32, t: u32| format!("$argon2id$v=19$m={m},t={t},p=4$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA");
    let keys = vec![
        line(0, "bcrypt", &bcrypt(12)),
        line(1, "bcrypt", &bcrypt(13)),
        line(2, "bcrypt", &bcrypt(14)),
        line(3, "argon2", &argon2(65_536, 9)),
        line(4, "argon2", &argon2(65_536, 10)),
    ];
    let request = pb::ImportApiKeysRequest { import_id: "costly".into(), keys };
    let results = app.admin.import_api_keys(request).await.unwrap().into_inner().results;
    let statuses: Vec<&str> = results.iter().map(|r| r.status.as_str()).collect();
    assert_eq!(statuses, ["imported", "invalid", "invalid", "imported", "invalid"], "{results:?}");
    for refused in [&results[1], &results[2], &results[4]] {
        assert!(refused.error.starts_with("hash"), "the field is named: {refused:?}");
        assert!(refused.error.contains("bcrypt cost 12"), "the cap is said: {refused:?}");
    }
}

/// A server whose guessing budgets are `per_key` failures per key id and a suspects'
/// bucket of `suspects` (a quarter of it for each account's suspects). Its clock is
/// frozen: nothing refills during a test.
async fn budgeted(per_key: u32, suspects: u32) -> TestApp {
    let db = TestDb::new(crate::helpers::Db::Sqlite).await.unwrap();
    TestApp::spawn_on(db, |s| {
        s.budgets.max_failures_per_key = per_key;
        s.budgets.suspect_verifications_per_second = suspects;
    })
    .await
}

/// `keys` keys of `account` imported with one cheap bcrypt hash (weight 1), their starts
/// `{prefix}_00000000`, `{prefix}_00000001`, ...
async fn import_cheap(app: &mut TestApp, account: &str, prefix: &str, keys: usize) {
    let hash = bcrypt::hash_with_salt("the real secret", 4, [9u8; 16]).unwrap().to_string();
    let imports: Vec<_> = (0..keys)
        .map(|n| pb::ImportedKey {
            account_id: account.into(),
            name: format!("import {n}"),
            scopes: vec!["applications:read".into()],
            algorithm: "bcrypt".into(),
            hash: hash.clone(),
            start: format!("{prefix}_{n:08}"),
            ..Default::default()
        })
        .collect();
    let request = pb::ImportApiKeysRequest { import_id: format!("cheap-{prefix}"), keys: imports };
    let results = app.admin.import_api_keys(request).await.unwrap().into_inner().results;
    assert!(results.iter().all(|r| r.status == "imported"), "{:?}", &results[0]);
}

/// Sends `credentials` one at a time, each from a network of its own (10.{net}.n.1),
/// until one is throttled: how many were judged first, and the throttled answer.
async fn guess_until_throttled(
    app: &mut TestApp,
    net: u8,
    credentials: impl Iterator<Item = String>,
) -> (usize, Option<pb::AuthorizeResponse>) {
    let mut judged = 0;
    for (n, credential) in credentials.enumerate() {
        let request = pb::AuthorizeRequest { client_ip: format!("10.{net}.{n}.1"), ..ask(&credential) };
        let answer = app.authorize_with(request).await;
        if answer.code == "rate_limit_reached" {
            return (judged, Some(answer));
        }
        assert_eq!(answer.code, "api_key_invalid", "guess {n}: {answer:?}");
        judged += 1;
    }
    (judged, None)
}

// Guards each account's share of the suspects' bucket (FailureBudgets::admit_verification,
// ACCOUNT_SUSPECT_SHARE): before it, guesses at one account's imported keys (every one a
// suspect's: a start is guessable) took the whole bucket, and a guess at another account's
// key was throttled with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guesses_at_one_accounts_imports_take_only_its_share_of_the_suspects_bucket() {
    let mut app = budgeted(20, 8).await;
    import_cheap(&mut app, "acct_a", "aa", 12).await;
    import_cheap(&mut app, "acct_b", "bb", 1).await;

    let a_guesses = (0..12).map(|n| format!("aa_{n:08}_wrong_guess"));
    let (judged, throttled) = guess_until_throttled(&mut app, 100, a_guesses).await;
    let throttled = throttled.expect("A's guesses were throttled");
    assert!(throttled.message.contains("this account's keys"), "A's share, not everyone's: {throttled:?}");
    assert_eq!(judged, 2, "a quarter of a bucket of 8");

    let before = app.verifications();
    let (judged, throttled) = guess_until_throttled(&mut app, 101, ["bb_00000000_wrong".to_string()].into_iter()).await;
    assert_eq!((judged, throttled), (1, None), "B's suspect is judged beside A's spent share");
    assert_eq!(app.verifications(), before + 1);
}

// Guards the account rule (FailureBudgets::admit_verification): before it, a guess at each
// of an account's keys from a fresh network was no suspect's, so an account with many keys
// had a full-price first guess per key. Now an account whose keys' failures weigh what one
// key's budget allows makes every verification of its keys a suspect's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_whose_keys_failed_a_keys_budget_makes_all_its_keys_suspects() {
    let (per_key, suspects) = (3, 8);
    let mut app = budgeted(per_key, suspects).await;
    let mut secrets = Vec::new();
    for _ in 0..10 {
        secrets.push(app.create_key("acct_a", &["applications:read"], &[]).await.1);
    }
    let (_, b_secret) = app.create_key("acct_b", &["applications:read"], &[]).await;

    let guesses = secrets.iter().map(|s| crate::authorize::forge_with_key_id(s));
    let (judged, throttled) = guess_until_throttled(&mut app, 102, guesses).await;
    let throttled = throttled.expect("A's guesses turned suspect");
    assert!(throttled.message.contains("this account's keys"), "{throttled:?}");
    assert_eq!(judged, per_key as usize + 2, "three free guesses, then A's share of 8");

    let first_use = app.authorize_with(pb::AuthorizeRequest { client_ip: "192.0.2.7".into(), ..ask(&b_secret) }).await;
    assert!(first_use.allowed, "B's first use is no suspect's: {first_use:?}");
}
