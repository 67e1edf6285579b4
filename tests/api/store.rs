//! The store conformance suite: the same assertions, a category at a time, against every
//! backend (SQLite, Postgres), against the cache stacked on SQL, and — the decision's
//! side: records and hot-path writes — against the in-memory store; plus the cache
//! decorator's race guard.

use crate::backend_tests;
use crate::helpers::{Db, TestDb};
use keygate::audit::{AuditAction, AuditCategory, AuditEvent, AuditQuery};
use keygate::breaker::{Breaker, BreakerSettings};
use keygate::domain::{
    AccountId, ApplicationId, KeyId, Name, NewKeyRecord, Scopes, SecretHash, SessionId, Timestamp, UserId,
    VerifiedDigest,
};
use keygate::store::cached::{CacheSettings, CachedStore};
use keygate::store::invalidating::Invalidating;
use keygate::store::memory::MemoryStore;
use keygate::store::sql::SqlStore;
use keygate::store::{
    AdminStore, Application, ApplicationAdmin, KeyAdmin, KeyChanges, KeyFilter, KeyKind, KeyRecord, KeyUse, Page,
    PageRequest, Records, SessionAdmin, SessionRecord, Stack, StoreError, UpdateOutcome,
};
use std::sync::Arc;
use std::time::Duration;

backend_tests!(
    conformance,
    conformance_through_the_cache,
    a_load_racing_a_revoke_does_not_cache_the_stale_record,
    credits_spend_and_refill_under_their_own_rule_only,
    sql_records
);

async fn connect(db: Db) -> Option<(SqlStore, TestDb)> {
    let test_db = TestDb::new(db).await?;
    let store = SqlStore::connect(&test_db.url, 5, Duration::from_secs(5)).await.unwrap();
    Some((store, test_db))
}

fn key(id: &str, account: &str, name: &str) -> KeyRecord {
    KeyRecord::issued(
        NewKeyRecord {
            id: KeyId::parse(id).unwrap(),
            account_id: AccountId::parse(account).unwrap(),
            kind: KeyKind::ApiKey,
            name: Name::parse("name", name).unwrap(),
            scopes: Scopes::parse_grants(&["applications:read", "logs:*"]).unwrap(),
            application_ids: vec![ApplicationId::parse("app_1").unwrap()],
            secret_hash: SecretHash::new("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA".into()),
            expires_at: Some(Timestamp::from_millis(1_800_000_000_000)),
        },
        Timestamp::from_millis(1_700_000_000_123),
    )
}

/// Credits through the trait, as the SQL statement computes them: a refill due, the
/// balance never below zero, and a spend under another refill rule than the balance's
/// (a replica deciding on the record from before a change) spending nothing.
async fn credits_spend_and_refill_under_their_own_rule_only(db: Db) {
    let Some((store, _db)) = connect(db).await else {
        return;
    };
    let record = metered_key();
    store.create_key(&record, &ev(AuditAction::ApiKeyCreate, record.id)).await.unwrap();
    credits(&store, &record).await;
}

/// A key with 2 credits, refilled by 3 a minute.
fn metered_key() -> KeyRecord {
    use keygate::domain::Refill;
    use keygate::store::Credits;
    let minute = Refill::parse(3, "60s", "add").unwrap();
    let mut record = key("key_credits000000001", "acct_a", "metered");
    record.terms.refill = Some(minute);
    let at = |s: i64| Timestamp::from_millis(1_700_000_000_000 + s * 1000);
    record.credits = Some(Credits { remaining: 2, refill: Some(minute) }.balance(at(0)));
    record
}

/// Spends [`metered_key`]'s credits.
async fn credits(store: &dyn KeyUse, record: &KeyRecord) {
    use keygate::domain::{CreditBalance, Refill};
    use keygate::store::Spend;
    let minute = Refill::parse(3, "60s", "add").unwrap();
    let at = |s: i64| Timestamp::from_millis(1_700_000_000_000 + s * 1000);
    let id = &keygate::domain::CreditHolder::Key(record.id);
    let spent = |s: Spend| match s {
        Spend::Spent(CreditBalance { remaining, .. }) => Some(remaining),
        _ => None,
    };
    assert_eq!(spent(store.spend_credits(id, 2, Some(&minute), at(1)).await.unwrap()), Some(0));
    assert!(matches!(store.spend_credits(id, 1, Some(&minute), at(2)).await.unwrap(), Spend::Exhausted(_)));
    // Two periods later: 2 × 3 added.
    assert_eq!(spent(store.spend_credits(id, 1, Some(&minute), at(121)).await.unwrap()), Some(5));
    let daily = Refill::parse(100, "daily", "to").unwrap();
    assert_eq!(store.spend_credits(id, 1, Some(&daily), at(122)).await.unwrap(), Spend::RuleChanged);
    assert_eq!(store.spend_credits(id, 1, None, at(122)).await.unwrap(), Spend::RuleChanged);
    assert_eq!(spent(store.spend_credits(id, 5, Some(&minute), at(123)).await.unwrap()), Some(0), "nothing was spent");
}

fn search(term: &str) -> KeyFilter {
    KeyFilter { search: Some(term.to_owned()), ..KeyFilter::default() }
}

fn first_page() -> PageRequest {
    PageRequest { after: None, limit: 50 }
}

/// The record of an action on `target` of account `acct_a`.
fn ev(action: AuditAction, target: impl ToString) -> AuditEvent {
    let account = AccountId::parse("acct_a").unwrap();
    AuditEvent::system(account, action, target.to_string(), Timestamp::from_millis(1_000)).unwrap()
}

/// The whole suite, a category at a time, against one backend: its admin side (which reads
/// records as a decision does), its hot-path writes, and the records beneath any cache
/// (where what those writes did is read back).
async fn suite(store: Arc<dyn AdminStore>, key_use: Arc<dyn KeyUse>, beneath: Arc<dyn Records>) {
    let app = applications(&store).await;
    let [_, b, c] = keys(&store).await;
    runtime_keys(&store, &app).await;
    sessions(&store).await;
    audit_trail(&store, &b).await;
    key_usage(&*key_use, &*beneath, &b, &c).await;
    let account = AccountId::parse("acct_a").unwrap();
    let listed = store.list_keys(&account, &search("beta"), &first_page()).await.unwrap();
    assert_eq!(listed.items[0].last_used_at, Some(Timestamp::from_millis(500)));
}

async fn conformance(db: Db) {
    let Some((sql, _db)) = connect(db).await else {
        return;
    };
    let store = Arc::new(sql);
    suite(store.clone(), store.clone(), store).await;
}

/// The same suite through the server's own stack: the cache, the meter and the breaker
/// over SQL, the admin side making the cache forget what it writes.
async fn conformance_through_the_cache(db: Db) {
    let Some((sql, _db)) = connect(db).await else {
        return;
    };
    let sql = Arc::new(sql);
    let breaker =
        BreakerSettings { timeout: Duration::from_secs(5), failures_to_open: 5, probe_every: Duration::from_secs(1) };
    let cache = CacheSettings { capacity: 100, ttl: Duration::from_secs(30), max_stale: Duration::ZERO };
    let stack = Stack::build(sql.clone(), Arc::new(Breaker::new("key store", breaker)), cache);
    suite(stack.admin, stack.cache, sql).await;
}

/// Applications: created, read back by id, a duplicate id refused.
async fn applications(store: &Arc<dyn AdminStore>) -> Application {
    let app = first_app();
    store.create_application(&app, &ev(AuditAction::ApplicationCreate, &app.id)).await.unwrap();
    assert_eq!(store.application(&app.id).await.unwrap().as_deref(), Some(&app));
    assert!(store.application(&ApplicationId::parse("app_2").unwrap()).await.unwrap().is_none());
    let err = store.create_application(&app, &ev(AuditAction::ApplicationCreate, "app_dup")).await.unwrap_err();
    assert!(matches!(err, StoreError::Other(_)), "a duplicate id is refused");
    app
}

/// API keys: round-trip, listing, updates, revocation.
async fn keys(store: &Arc<dyn AdminStore>) -> [KeyRecord; 3] {
    // Keys round-trip every field.
    let a = key("key_aaaaaaaaaaaaaaaa", "acct_a", "Alpha");
    let b = key("key_bbbbbbbbbbbbbbbb", "acct_a", "Beta 100%");
    let c = key("key_cccccccccccccccc", "acct_b", "Alpha");
    for k in [&a, &b, &c] {
        store.create_key(k, &ev(AuditAction::ApiKeyCreate, k.id)).await.unwrap();
    }
    assert_eq!(store.key(a.id).await.unwrap().as_deref(), Some(&a));
    assert!(store.key(KeyId::parse("key_zzzzzzzzzzzzzzzz").unwrap()).await.unwrap().is_none());

    // Listing: by account, in id order, paged, searched.
    let account = AccountId::parse("acct_a").unwrap();
    let ids = |page: &Page<KeyRecord>| page.items.iter().map(|k| k.id.to_string()).collect::<Vec<_>>();
    let page = store.list_keys(&account, &KeyFilter::default(), &PageRequest { after: None, limit: 1 }).await.unwrap();
    assert_eq!(ids(&page), ["key_aaaaaaaaaaaaaaaa"]);
    let page = store
        .list_keys(&account, &KeyFilter::default(), &PageRequest { after: page.next_after, limit: 1 })
        .await
        .unwrap();
    assert_eq!((ids(&page), page.next_after), (vec!["key_bbbbbbbbbbbbbbbb".to_owned()], None));
    let found = store.list_keys(&account, &search("0%"), &first_page()).await.unwrap();
    assert_eq!(ids(&found), ["key_bbbbbbbbbbbbbbbb"]);
    let found = store.list_keys(&account, &search("alpha"), &first_page()).await.unwrap();
    assert_eq!(ids(&found), ["key_aaaaaaaaaaaaaaaa"]);

    // Updates change only what they name and bump the version.
    let changes = KeyChanges {
        scopes: Some(Scopes::parse_grants(&["*"]).unwrap()),
        expires_at: Some(None),
        ..Default::default()
    };
    let UpdateOutcome::Updated(updated) = store
        .update_key(a.id, &changes, Timestamp::from_millis(9), &ev(AuditAction::ApiKeyUpdate, a.id))
        .await
        .unwrap()
    else {
        panic!("expected an update")
    };
    assert_eq!((updated.name.as_str(), updated.expires_at, updated.version), ("Alpha", None, 2));
    assert_eq!(updated.scopes, Scopes::parse_grants(&["*"]).unwrap());
    assert_eq!(updated.updated_at, Timestamp::from_millis(9));
    let missing = KeyId::parse("key_zzzzzzzzzzzzzzzz").unwrap();
    let update_missing = ev(AuditAction::ApiKeyUpdate, "missing-update");
    let outcome = store.update_key(missing, &changes, Timestamp::from_millis(9), &update_missing).await.unwrap();
    assert_eq!(outcome, UpdateOutcome::NotFound);

    // Revocation: durable, idempotent, and it freezes the key.
    let revoke = |id: KeyId, reason: &'static str, at: i64| {
        let store = store.clone();
        async move { store.revoke_key(id, reason, Timestamp::from_millis(at), &ev(AuditAction::ApiKeyRevoke, id)).await }
    };
    let revoked = revoke(a.id, "leaked", 10).await.unwrap().unwrap();
    assert_eq!(
        (revoked.revoked_at, revoked.revoked_reason.as_deref(), revoked.version),
        (Some(Timestamp::from_millis(10)), Some("leaked"), 3)
    );
    let again = revoke(a.id, "again", 11).await.unwrap().unwrap();
    assert_eq!(again, revoked);
    let update_revoked = ev(AuditAction::ApiKeyUpdate, "revoked-update");
    let outcome = store.update_key(a.id, &changes, Timestamp::from_millis(12), &update_revoked).await.unwrap();
    assert_eq!(outcome, UpdateOutcome::Revoked);
    let revoke_missing = ev(AuditAction::ApiKeyRevoke, "missing-revoke");
    let outcome = store.revoke_key(missing, "x", Timestamp::from_millis(10), &revoke_missing).await.unwrap();
    assert!(outcome.is_none());
    store.ping().await.unwrap();
    [a, b, c]
}

async fn runtime_keys(store: &Arc<dyn AdminStore>, app: &Application) {
    let account = AccountId::parse("acct_a").unwrap();
    let revoke = |id: KeyId, reason: &'static str, at: i64| {
        let store = store.clone();
        async move { store.revoke_key(id, reason, Timestamp::from_millis(at), &ev(AuditAction::ApiKeyRevoke, id)).await }
    };
    // Runtime keys: one current per application; rotation schedules the old one's end,
    // and an explicit revoke brings it forward. They never show in API key listings.
    let runtime = |id: &str| KeyRecord {
        kind: KeyKind::Runtime,
        scopes: Scopes::default(),
        application_ids: vec![app.id.clone()],
        expires_at: None,
        ..key(id, "acct_a", "runtime")
    };
    let rotate = |new: KeyRecord, retire_at: i64| {
        let store = store.clone();
        async move {
            let audit = ev(AuditAction::ApplicationRotateKey, "app_1");
            store.rotate_runtime_key(&new, Timestamp::from_millis(retire_at), &audit).await.unwrap()
        }
    };
    let first = runtime("key_r000000000000001");
    assert_eq!(rotate(first.clone(), 100).await, vec![]);
    let second = runtime("key_r000000000000002");
    assert_eq!(rotate(second.clone(), 100).await, vec![first.id]);
    let retiring = store.key(first.id).await.unwrap().unwrap();
    assert_eq!((retiring.kind, retiring.retire_at), (KeyKind::Runtime, Some(Timestamp::from_millis(100))));
    assert!(!retiring.is_revoked_at(Timestamp::from_millis(99)) && retiring.is_revoked_at(Timestamp::from_millis(100)));
    let now_revoked = revoke(first.id, "leaked", 50).await.unwrap().unwrap();
    assert!(now_revoked.is_revoked_at(Timestamp::from_millis(0)), "an explicit revoke counts at once");
    let third = runtime("key_r000000000000003");
    assert_eq!(rotate(third.clone(), 200).await, vec![second.id]);
    // Grace chaining: a rotation with a shorter grace ends every older grace with it.
    let fourth = runtime("key_r000000000000004");
    assert_eq!(rotate(fourth, 500).await, vec![third.id], "second's grace (200) ends before 500: untouched");
    let fifth = runtime("key_r000000000000005");
    let mut ended = rotate(fifth, 150).await;
    ended.sort();
    // second retires at 200 (the third rotation's grace), third at 500: both outlast 150.
    let expected = vec![second.id, third.id, runtime("key_r000000000000004").id];
    assert_eq!(ended, expected, "a shorter grace caps the still-current one and every longer one");
    for id in expected {
        assert_eq!(store.key(id).await.unwrap().unwrap().retire_at, Some(Timestamp::from_millis(150)));
    }
    let first_now = store.key(first.id).await.unwrap().unwrap();
    assert_eq!(first_now.retire_at, Some(Timestamp::from_millis(100)), "revoked and ended keys stay as they were");
    let listed = store.list_keys(&account, &KeyFilter::default(), &first_page()).await.unwrap();
    assert!(listed.items.iter().all(|k| k.kind == KeyKind::ApiKey));
}

async fn sessions(store: &Arc<dyn AdminStore>) {
    // Sessions.
    let session = first_session();
    store.create_session(&session, &ev(AuditAction::SessionCreate, session.id)).await.unwrap();
    assert_eq!(store.session(session.id).await.unwrap().as_deref(), Some(&session));
    let end = |id: SessionId, at: i64| {
        let store = store.clone();
        async move { store.revoke_session(id, Timestamp::from_millis(at), &ev(AuditAction::SessionRevoke, id)).await }
    };
    let revoked = end(session.id, 5).await.unwrap().unwrap();
    assert_eq!((revoked.revoked_at, revoked.version), (Some(Timestamp::from_millis(5)), 2));
    assert_eq!(end(session.id, 9).await.unwrap().unwrap(), revoked);
    let unknown = SessionId::parse("ses_zzzzzzzzzzzzzzzz").unwrap();
    assert!(store.session(unknown).await.unwrap().is_none());
    let revoke_unknown = ev(AuditAction::SessionRevoke, "missing-session");
    assert!(store.revoke_session(unknown, Timestamp::from_millis(9), &revoke_unknown).await.unwrap().is_none());
}

/// Every write before this one left its event; a write whose event cannot be stored is
/// not made.
async fn audit_trail(store: &Arc<dyn AdminStore>, b: &KeyRecord) {
    let account = AccountId::parse("acct_a").unwrap();
    // The audit trail holds one event per write that happened, newest first, and none for
    // writes that failed or changed nothing that exists.
    let all = store.list_audit_events(&account, &AuditQuery::default(), &first_page()).await.unwrap();
    let actions: Vec<_> = all.items.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "session.revoke",
            "session.revoke",
            "session.create",
            "application.rotate_key",
            "application.rotate_key",
            "application.rotate_key",
            "api_key.revoke",
            "application.rotate_key",
            "application.rotate_key",
            "api_key.revoke",
            "api_key.revoke",
            "api_key.update",
            "api_key.create",
            "api_key.create",
            "api_key.create",
            "application.create",
        ]
    );
    let targets: Vec<_> = all.items.iter().map(|e| e.target.as_str()).collect();
    for refused in ["app_dup", "missing-update", "revoked-update", "missing-revoke", "missing-session"] {
        assert!(!targets.contains(&refused), "a refused write left an audit event for {refused}");
    }
    assert!(all.items.iter().all(|e| e.account_id == account), "acct_b's key is not in acct_a's trail");
    let query = |search: Option<&str>, categories: Vec<AuditCategory>| AuditQuery {
        search: search.map(str::to_owned),
        categories,
    };
    let logins = store.list_audit_events(&account, &query(None, vec![AuditCategory::Login]), &first_page()).await;
    assert_eq!(logins.unwrap().items.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(), ["session.create"]);
    let two = query(None, vec![AuditCategory::Session, AuditCategory::Application]);
    assert_eq!(store.list_audit_events(&account, &two, &first_page()).await.unwrap().items.len(), 8);
    let found = store.list_audit_events(&account, &query(Some("KEY_BBBB"), vec![]), &first_page()).await.unwrap();
    assert_eq!(found.items.iter().map(|e| e.target.as_str()).collect::<Vec<_>>(), ["key_bbbbbbbbbbbbbbbb"]);
    let wildcard = store.list_audit_events(&account, &query(Some("_%"), vec![]), &first_page()).await.unwrap();
    assert!(wildcard.items.is_empty(), "LIKE wildcards in the search are literal");
    // Paging newest first, without gaps or repeats.
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page =
            store.list_audit_events(&account, &AuditQuery::default(), &PageRequest { after, limit: 5 }).await.unwrap();
        paged.extend(page.items);
        match page.next_after {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(paged, all.items);

    // A change whose record cannot be written is not made: the audit insert fails on a
    // duplicate event id, and the key stays unrevoked.
    let reused = all.items.iter().find(|e| e.action == AuditAction::ApiKeyCreate).unwrap().clone();
    let err = store.revoke_key(b.id, "no record, no change", Timestamp::from_millis(13), &reused).await;
    assert!(err.is_err());
    assert!(store.key(b.id).await.unwrap().unwrap().revoked_at.is_none(), "the revoke was rolled back");
}

/// Hot-path writes, read back from `read_back` (beneath any cache: usage is not a change
/// a cache forgets).
async fn key_usage(key_use: &dyn KeyUse, read_back: &dyn Records, b: &KeyRecord, c: &KeyRecord) {
    // Key usage: raised, never lowered; not a change (the version stays).
    assert_eq!(read_back.key(b.id).await.unwrap().unwrap().last_used_at, None);
    key_use.record_key_usage(&[(b.id, Timestamp::from_millis(500)), (c.id, Timestamp::from_millis(7))]).await.unwrap();
    key_use.record_key_usage(&[(b.id, Timestamp::from_millis(400))]).await.unwrap();
    let used = read_back.key(b.id).await.unwrap().unwrap();
    assert_eq!((used.last_used_at, used.version), (Some(Timestamp::from_millis(500)), 1));
}

/// The application, keys and session every category starts from.
fn first_app() -> Application {
    Application {
        id: ApplicationId::parse("app_1").unwrap(),
        account_id: AccountId::parse("acct_a").unwrap(),
        name: Name::parse("name", "One").unwrap(),
        created_at: Timestamp::from_millis(5),
    }
}

fn first_session() -> SessionRecord {
    SessionRecord {
        id: SessionId::parse("ses_ssssssssssssssss").unwrap(),
        account_id: AccountId::parse("acct_a").unwrap(),
        user_id: UserId::parse("user_1").unwrap(),
        secret_digest: [7; 32],
        created_at: Timestamp::from_millis(1),
        expires_at: Timestamp::from_millis(1_000),
        revoked_at: None,
        version: 1,
    }
}

/// Records read back by id as they were put in; unknown ids are none.
async fn records(store: &dyn Records, app: &Application, key: &KeyRecord, session: &SessionRecord) {
    assert_eq!(store.application(&app.id).await.unwrap().as_deref(), Some(app));
    assert!(store.application(&ApplicationId::parse("app_2").unwrap()).await.unwrap().is_none());
    assert_eq!(store.key(key.id).await.unwrap().as_deref(), Some(key));
    assert!(store.key(KeyId::parse("key_zzzzzzzzzzzzzzzz").unwrap()).await.unwrap().is_none());
    assert_eq!(store.session(session.id).await.unwrap().as_deref(), Some(session));
    assert!(store.session(SessionId::parse("ses_zzzzzzzzzzzzzzzz").unwrap()).await.unwrap().is_none());
}

/// The decision's side of the suite against the in-memory store.
#[tokio::test]
async fn memory_conformance() {
    let memory = MemoryStore::default();
    let (app, session) = (first_app(), first_session());
    let a = key("key_aaaaaaaaaaaaaaaa", "acct_a", "Alpha");
    let b = key("key_bbbbbbbbbbbbbbbb", "acct_a", "Beta 100%");
    let c = key("key_cccccccccccccccc", "acct_b", "Alpha");
    memory.insert_application(&app);
    memory.insert_session(&session);
    [&a, &b, &c].into_iter().for_each(|k| memory.insert_key(k));
    records(&memory, &app, &a, &session).await;
    key_usage(&memory, &memory, &b, &c).await;
    let record = metered_key();
    memory.insert_key(&record);
    credits(&memory, &record).await;
}

/// The rest of the decision's side in memory, as on SQL: an imported key is found by its
/// lookup or its import form, and adopted (or given a verified digest) only while it still
/// has the hash the call names; an owner's shared credits are spent and read with its keys.
#[tokio::test]
async fn memory_lookups_adoption_and_shared_credits() {
    use keygate::domain::{CreditBalance, CreditHolder, Lookup, OwnerId};
    use keygate::store::{ImportedKey, Owner, Spend};
    let memory = MemoryStore::default();
    let mut old = key("key_imported00000001", "acct_a", "Old");
    old.lookup = Some(Lookup::new("form-digest".into()));
    memory.insert_imported(&ImportedKey { record: old.clone(), import_ref: "start-of-it".into() });
    let found = memory.keys_by_lookup(&["keyed".into(), "start-of-it".into()]).await.unwrap();
    assert_eq!(found.iter().map(|k| k.id).collect::<Vec<_>>(), [old.id]);
    assert!(memory.keys_by_lookup(&["keyed".into()]).await.unwrap().is_empty());

    let new = SecretHash::new("$argon2id$v=19$m=1024,t=1,p=1$bmV3c2FsdA$bmV3".into());
    let digest = VerifiedDigest { key_fingerprint: [1; 8], digest: [2; 32] };
    memory.adopt_imported(old.id, &new, &new, "keyed", &digest).await.unwrap();
    assert_eq!(memory.key(old.id).await.unwrap().unwrap().lookup, old.lookup, "not its hash: nothing changes");
    memory.adopt_imported(old.id, &old.secret_hash, &new, "keyed", &digest).await.unwrap();
    let adopted = memory.keys_by_lookup(&["keyed".into()]).await.unwrap();
    assert_eq!(adopted.len(), 1);
    assert!(adopted[0].secret_hash == new && adopted[0].verified_digest == Some(digest));
    let other = VerifiedDigest { key_fingerprint: [3; 8], digest: [4; 32] };
    memory.remember_verified(old.id, &old.secret_hash, &other).await.unwrap();
    assert_eq!(memory.key(old.id).await.unwrap().unwrap().verified_digest, Some(digest), "the old hash is gone");

    let account = AccountId::parse("acct_a").unwrap();
    let owner = Owner {
        account_id: account.clone(),
        id: OwnerId::parse("team_1").unwrap(),
        limits: vec![],
        refill: None,
        credits: Some(CreditBalance { remaining: 3, period: 0 }),
        updated_at: Timestamp::from_millis(1),
    };
    memory.insert_owner(&owner);
    let mut shared = key("key_shared0000000001", "acct_a", "Shared");
    shared.owner_id = Some(owner.id.clone());
    memory.insert_key(&shared);
    let holder = CreditHolder::Owner(account, owner.id.clone());
    let spent = memory.spend_credits(&holder, 2, None, Timestamp::from_millis(2)).await.unwrap();
    assert_eq!(spent, Spend::Spent(CreditBalance { remaining: 1, period: 0 }));
    let read = memory.key(shared.id).await.unwrap().unwrap();
    assert_eq!(read.owner.as_ref().and_then(|o| o.credits), Some(CreditBalance { remaining: 1, period: 0 }));
    assert!(matches!(
        memory.spend_credits(&holder, 2, None, Timestamp::from_millis(3)).await.unwrap(),
        Spend::Exhausted(_)
    ));
}

/// The decision's reads against SQL, from records the admin side put in.
async fn sql_records(db: Db) {
    let Some((store, _db)) = connect(db).await else {
        return;
    };
    let (app, session) = (first_app(), first_session());
    let a = key("key_aaaaaaaaaaaaaaaa", "acct_a", "Alpha");
    store.create_application(&app, &ev(AuditAction::ApplicationCreate, &app.id)).await.unwrap();
    store.create_key(&a, &ev(AuditAction::ApiKeyCreate, a.id)).await.unwrap();
    store.create_session(&session, &ev(AuditAction::SessionCreate, session.id)).await.unwrap();
    records(&store, &app, &a, &session).await;
}

/// A store whose key reads wait for a signal, to hold a load open across a revoke.
struct Gated {
    inner: SqlStore,
    entered: tokio::sync::mpsc::Sender<()>,
    release: tokio::sync::Mutex<tokio::sync::mpsc::Receiver<()>>,
}

#[async_trait::async_trait]
impl Records for Gated {
    async fn key(&self, id: KeyId) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        let record = self.inner.key(id).await;
        self.entered.send(()).await.unwrap();
        self.release.lock().await.recv().await;
        record
    }
    async fn application(&self, id: &ApplicationId) -> Result<Option<Arc<Application>>, StoreError> {
        self.inner.application(id).await
    }
    async fn session(&self, id: SessionId) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        self.inner.session(id).await
    }
    async fn keys_by_lookup(&self, lookups: &[String]) -> Result<Vec<Arc<KeyRecord>>, StoreError> {
        self.inner.keys_by_lookup(lookups).await
    }
}

#[async_trait::async_trait]
impl KeyUse for Gated {
    async fn spend_credits(
        &self,
        holder: &keygate::domain::CreditHolder,
        cost: i64,
        refill: Option<&keygate::domain::Refill>,
        now: Timestamp,
    ) -> Result<keygate::store::Spend, StoreError> {
        self.inner.spend_credits(holder, cost, refill, now).await
    }
    async fn record_key_usage(&self, uses: &[(KeyId, Timestamp)]) -> Result<(), StoreError> {
        self.inner.record_key_usage(uses).await
    }
    async fn remember_verified(&self, id: KeyId, hash: &SecretHash, digest: &VerifiedDigest) -> Result<(), StoreError> {
        self.inner.remember_verified(id, hash, digest).await
    }
    async fn adopt_imported(
        &self,
        id: KeyId,
        old: &SecretHash,
        new: &SecretHash,
        lookup: &str,
        digest: &VerifiedDigest,
    ) -> Result<(), StoreError> {
        self.inner.adopt_imported(id, old, new, lookup, digest).await
    }
}

async fn a_load_racing_a_revoke_does_not_cache_the_stale_record(db: Db) {
    let Some((sql, _db)) = connect(db).await else {
        return;
    };
    let record = key("key_rrrrrrrrrrrrrrrr", "acct_a", "Racer");
    sql.create_key(&record, &ev(AuditAction::ApiKeyCreate, record.id)).await.unwrap();
    let (entered_tx, mut entered) = tokio::sync::mpsc::channel(1);
    let (release, release_rx) = tokio::sync::mpsc::channel(1);
    let admin = Arc::new(sql.clone());
    let gated = Gated { inner: sql, entered: entered_tx, release: tokio::sync::Mutex::new(release_rx) };
    let cache = Arc::new(CachedStore::new(
        Arc::new(gated),
        CacheSettings { capacity: 100, ttl: Duration::from_secs(30), max_stale: Duration::ZERO },
    ));
    let admin = Invalidating::new(cache.clone(), admin);

    // A read loads the live record and is held before it can cache it...
    let reader = tokio::spawn({
        let cache = cache.clone();
        async move { cache.key(record.id).await.unwrap() }
    });
    entered.recv().await.unwrap();
    // ...while a revoke commits and invalidates.
    admin
        .revoke_key(record.id, "race", Timestamp::from_millis(20), &ev(AuditAction::ApiKeyRevoke, record.id))
        .await
        .unwrap();
    release.send(()).await.unwrap();
    let stale = reader.await.unwrap().unwrap();
    assert!(!stale.is_revoked_at(Timestamp::from_millis(i64::MAX)), "the racing read saw the old row");

    // The next read must not be served that stale record from the cache. Its store read,
    // if it makes one, is let through in advance.
    release.send(()).await.unwrap();
    let next = cache.key(record.id).await.unwrap().unwrap();
    assert!(next.is_revoked_at(Timestamp::from_millis(i64::MAX)), "the cache served the record from before the revoke");
}
