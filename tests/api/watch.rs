//! The change feed (`keygate.v1.Watch`) through a real gRPC client: resuming from a
//! revision gets exactly the changes missed, in order; a revision no longer retained gets a
//! snapshot; an admin change that narrows access waits for subscribers' acks and says how
//! many acknowledged and how many were fenced; a token confined to one account sees only
//! that account, and its subscriber cannot hold up another's changes; bad subscriptions
//! get clear codes; no secret is ever in the feed.

use crate::backend_tests;
use crate::helpers::{reason, Db, TestApp, TestDb, ADMIN_TOKEN};
use keygate::grpc::proto::{self as pb, watch_client::WatchClient};
use keygate_client::AdminToken;
use pb::watch_event::Event;
use prost::Message;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// A subscription: what it sends, and what it is sent.
struct Subscriber {
    tx: mpsc::Sender<pb::WatchRequest>,
    events: tonic::Streaming<pb::WatchEvent>,
}

fn start(since: &str) -> pb::WatchStart {
    pb::WatchStart { since: since.into(), ..Default::default() }
}

async fn subscribe(app: &TestApp, token: &str, start: pb::WatchStart) -> Result<Subscriber, tonic::Status> {
    let (tx, rx) = mpsc::channel(64);
    tx.send(pb::WatchRequest { message: Some(pb::watch_request::Message::Start(start)) }).await.unwrap();
    let mut client = WatchClient::with_interceptor(app.channel.clone(), AdminToken::new(token).unwrap());
    let events = client.subscribe(ReceiverStream::new(rx)).await?.into_inner();
    Ok(Subscriber { tx, events })
}

impl Subscriber {
    /// The next event; the deadline only stops a hang.
    async fn next(&mut self) -> Event {
        let message = tokio::time::timeout(Duration::from_secs(20), self.events.message())
            .await
            .expect("an event within 20 s")
            .expect("the stream is healthy")
            .expect("the stream is open");
        message.event.expect("an event")
    }

    /// Events up to and including the first `Progress` at `revision` or later.
    async fn until_progress(&mut self, revision: u64) -> Vec<Event> {
        let mut events = Vec::new();
        loop {
            let event = self.next().await;
            let done = matches!(&event, Event::Progress(p) if p.revision >= revision);
            events.push(event);
            if done {
                return events;
            }
        }
    }

    async fn ack(&self, revision: u64) {
        let ack = pb::WatchAck { revision, echo: 7 };
        self.tx.send(pb::WatchRequest { message: Some(pb::watch_request::Message::Ack(ack)) }).await.unwrap();
    }

    /// The snapshot after `hello`: (its reset reason, its changes, its revision).
    async fn snapshot(&mut self) -> (String, Vec<pb::Change>, u64) {
        let Event::Hello(_) = self.next().await else { panic!("hello first") };
        let Event::Reset(reset) = self.next().await else { panic!("a reset") };
        let mut changes = Vec::new();
        loop {
            match self.next().await {
                Event::Change(change) => changes.push(change),
                Event::SnapshotEnd(end) => return (reset.reason, changes, end.revision),
                other => panic!("unexpected in a snapshot: {other:?}"),
            }
        }
    }
}

fn changes(events: &[Event]) -> Vec<&pb::Change> {
    events.iter().filter_map(|e| if let Event::Change(c) = e { Some(c) } else { None }).collect()
}

/// A subscriber that acknowledges everything it is sent, keeping the events.
fn acknowledging(mut subscriber: Subscriber) -> Arc<Mutex<Vec<Event>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kept = seen.clone();
    tokio::spawn(async move {
        while let Ok(Some(message)) = subscriber.events.message().await {
            let Some(event) = message.event else { continue };
            let revision = match &event {
                Event::Change(c) => Some(c.revision),
                Event::Progress(p) => Some(p.revision),
                Event::SnapshotEnd(e) => Some(e.revision),
                _ => None,
            };
            kept.lock().unwrap().push(event);
            if let Some(revision) = revision {
                subscriber.ack(revision).await;
            }
        }
    });
    seen
}

/// A subscriber that reads everything and never acknowledges.
fn never_acknowledging(mut subscriber: Subscriber) -> Arc<Mutex<Vec<Event>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kept = seen.clone();
    tokio::spawn(async move {
        let _tx = subscriber.tx.clone();
        while let Ok(Some(message)) = subscriber.events.message().await {
            kept.lock().unwrap().push(message.event.unwrap());
        }
    });
    seen
}

fn counts<T>(response: &tonic::Response<T>) -> (u64, u64) {
    let count = |name: &str| -> u64 {
        response
            .metadata()
            .get(name)
            .unwrap_or_else(|| panic!("{name} in the response"))
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    (count("x-keygate-subscribers-acknowledged"), count("x-keygate-subscribers-fenced"))
}

async fn revoke(app: &mut TestApp, id: &str) -> tonic::Response<pb::ApiKey> {
    app.admin.revoke_api_key(pb::RevokeApiKeyRequest { id: id.into(), reason: "test".into() }).await.unwrap()
}

async fn app_on(db: Db, customize: impl FnOnce(&mut keygate::config::Settings)) -> TestApp {
    TestApp::spawn_on(TestDb::new(db).await.unwrap(), customize).await
}

backend_tests!(
    resuming_from_since_gets_exactly_the_missed_changes_in_order,
    a_since_no_longer_retained_gets_a_snapshot,
    a_revoke_waits_for_a_subscriber_that_acknowledges,
    a_subscriber_that_never_acknowledges_is_fenced,
    a_confined_subscriber_sees_only_its_account_and_holds_up_no_other,
    bad_subscriptions_get_clear_codes,
    no_secret_is_ever_in_the_feed,
);

async fn resuming_from_since_gets_exactly_the_missed_changes_in_order(db: Db) {
    let mut app = app_on(db, |_| {}).await;
    app.create_app("acct_w").await;
    let mut first = subscribe(&app, ADMIN_TOKEN, start("")).await.unwrap();
    let (reason, snapshot, revision) = first.snapshot().await;
    assert_eq!(reason, "no_since");
    assert_eq!(snapshot.len(), 1, "the application: {snapshot:?}");
    drop(first);

    // Missed while away: made, changed, revoked, deleted; and an application made.
    let app_b = app.create_app("acct_w").await;
    let (key, _) = app.create_key("acct_w", &["applications:read"], &[]).await;
    app.admin
        .update_api_key(pb::UpdateApiKeyRequest {
            id: key.id.clone(),
            scopes: Some(pb::StringList { values: vec!["logs:read".into()] }),
            ..Default::default()
        })
        .await
        .unwrap();
    revoke(&mut app, &key.id).await;
    app.admin.delete_api_key(pb::DeleteApiKeyRequest { id: key.id.clone() }).await.unwrap();

    let mut resumed = subscribe(&app, ADMIN_TOKEN, start(&revision.to_string())).await.unwrap();
    let Event::Hello(hello) = resumed.next().await else { panic!("hello first") };
    let events = resumed.until_progress(hello.revision).await;
    assert!(!events.iter().any(|e| matches!(e, Event::Reset(_))), "no snapshot: {events:?}");
    let seen: Vec<(i32, &str, bool)> = changes(&events).iter().map(|c| (c.kind, c.id.as_str(), c.deleted)).collect();
    let (application, api_key) = (pb::ChangeKind::Application as i32, pb::ChangeKind::Key as i32);
    assert_eq!(
        seen,
        vec![
            (application, app_b.id.as_str(), false),
            (api_key, key.id.as_str(), true),
            (api_key, key.id.as_str(), true),
            (api_key, key.id.as_str(), true),
            (api_key, key.id.as_str(), true),
        ],
        "each change once, in order (the key's record is read when sent: it is gone by then)"
    );
    let revisions: Vec<u64> = changes(&events).iter().map(|c| c.revision).collect();
    assert!(revisions.windows(2).all(|w| w[0] < w[1]), "{revisions:?}");
    assert!(revisions[0] > revision);
    assert_eq!(*revisions.last().unwrap(), hello.revision);
}

async fn a_since_no_longer_retained_gets_a_snapshot(db: Db) {
    let mut app = app_on(db, |s| s.manage.change_retention = 2).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(app.create_key("acct_w", &["applications:read"], &[]).await.0.id);
    }
    let mut old = subscribe(&app, ADMIN_TOKEN, start("1")).await.unwrap();
    let (reason, snapshot, revision) = old.snapshot().await;
    assert_eq!(reason, "too_old");
    let mut keys: Vec<String> = snapshot.iter().map(|c| c.id.clone()).collect();
    keys.sort();
    ids.sort();
    assert_eq!(keys, ids, "every key, once");
    assert!(snapshot.iter().all(|c| c.revision == revision && matches!(c.record, Some(pb::change::Record::Key(_)))));

    // A revision this deployment never reached: a restored database, another deployment.
    let mut ahead = subscribe(&app, ADMIN_TOKEN, start(&(revision + 1000).to_string())).await.unwrap();
    assert_eq!(ahead.snapshot().await.0, "unknown");
    // The newest retained resumes.
    let mut current = subscribe(&app, ADMIN_TOKEN, start(&revision.to_string())).await.unwrap();
    let Event::Hello(hello) = current.next().await else { panic!("hello first") };
    assert_eq!(hello.revision, revision);
    assert!(matches!(current.next().await, Event::Progress(_)), "no reset");
}

async fn a_revoke_waits_for_a_subscriber_that_acknowledges(db: Db) {
    let mut app = app_on(db, |_| {}).await;
    let (key, _) = app.create_key("acct_w", &["applications:read"], &[]).await;
    let seen = acknowledging(subscribe(&app, ADMIN_TOKEN, start("")).await.unwrap());

    let response = revoke(&mut app, &key.id).await;
    assert_eq!(counts(&response), (1, 0), "1 acknowledged, 0 fenced");
    // What it acknowledged was the revoked key.
    let events = seen.lock().unwrap();
    let revoked = changes(&events).into_iter().rev().find(|c| c.id == key.id).cloned().expect("the key's change");
    let Some(pb::change::Record::Key(record)) = revoked.record else { panic!("a key") };
    assert_eq!(record.status, pb::ApiKeyStatus::Revoked as i32);
}

async fn a_subscriber_that_never_acknowledges_is_fenced(db: Db) {
    let mut app = app_on(db, |s| s.manage.change_ack_timeout = Duration::from_millis(100)).await;
    let (first, _) = app.create_key("acct_w", &["applications:read"], &[]).await;
    let (second, _) = app.create_key("acct_w", &["applications:read"], &[]).await;
    let seen = never_acknowledging(subscribe(&app, ADMIN_TOKEN, start("")).await.unwrap());

    assert_eq!(counts(&revoke(&mut app, &first.id).await), (0, 1), "0 acknowledged, 1 fenced");
    crate::helpers::eventually("the subscriber is told it was fenced", || {
        let seen = seen.clone();
        async move { seen.lock().unwrap().iter().any(|e| matches!(e, Event::Fenced(_))) }
    })
    .await;
    // Still fenced (it acknowledged nothing since): counted so again.
    assert_eq!(counts(&revoke(&mut app, &second.id).await), (0, 1));
}

async fn a_confined_subscriber_sees_only_its_account_and_holds_up_no_other(db: Db) {
    let mut app = app_on(db, |s| s.manage.change_ack_timeout = Duration::from_millis(100)).await;
    let token = app
        .admin
        .create_admin_token(pb::CreateAdminTokenRequest {
            name: "watch-a".into(),
            role: "read_only".into(),
            account_id: "acct_a".into(),
            expires_in_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .secret;
    let (a_key, _) = app.create_key("acct_a", &["applications:read"], &[]).await;
    let (b_key, _) = app.create_key("acct_b", &["applications:read"], &[]).await;
    app.create_app("acct_b").await;

    // Asking for B's changes with A's token is refused.
    let refused = subscribe(&app, &token, pb::WatchStart { account_id: "acct_b".into(), ..Default::default() })
        .await
        .err()
        .expect("refused");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert_eq!(reason(&refused), "insufficient_scope");

    let mut subscriber = subscribe(&app, &token, start("")).await.unwrap();
    let (_, snapshot, _) = subscriber.snapshot().await;
    assert_eq!(snapshot.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), vec![a_key.id.as_str()], "A's only");
    let seen = never_acknowledging(subscriber);

    // B's revoke does not wait for A's subscriber, which never acknowledges: it is not
    // counted at all. A's own revoke fences it.
    assert_eq!(counts(&revoke(&mut app, &b_key.id).await), (0, 0));
    // Nor does an unconfined admin's delete of B's key or application: the deletion names
    // its account, so A's subscriber is not waited for (nor fenced) for it.
    let deleted = app.admin.delete_api_key(pb::DeleteApiKeyRequest { id: b_key.id.clone() }).await.unwrap();
    assert_eq!(counts(&deleted), (0, 0), "a delete in B holds up nothing of A's");
    let b_app = app.create_app("acct_b").await;
    let request = pb::DeleteApplicationRequest { id: b_app.id.clone(), cascade: true };
    assert_eq!(counts(&app.admin.delete_application(request).await.unwrap()), (0, 0));
    let (a_other, _) = app.create_key("acct_a", &["applications:read"], &[]).await;
    assert_eq!(counts(&revoke(&mut app, &a_other.id).await), (0, 1));
    crate::helpers::eventually("A's subscriber gets A's changes", || {
        let seen = seen.clone();
        let id = a_other.id.clone();
        async move { changes(&seen.lock().unwrap()).iter().any(|c| c.id == id) }
    })
    .await;
    let events = seen.lock().unwrap();
    assert!(changes(&events).iter().all(|c| c.account_id == "acct_a"), "{events:?}");
    assert!(!changes(&events).iter().any(|c| c.id == b_key.id));
}

async fn bad_subscriptions_get_clear_codes(db: Db) {
    let app = app_on(db, |_| {}).await;
    let refused = |start: pb::WatchStart| {
        let app = &app;
        async move { subscribe(app, ADMIN_TOKEN, start).await.err().expect("refused") }
    };
    for since in ["abc", "-1", "1.5", "99999999999999999999"] {
        let status = refused(start(since)).await;
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{since}");
        assert_eq!(reason(&status), "VALIDATION_ERROR");
        assert!(status.message().starts_with("since:"), "{}", status.message());
    }
    let status = refused(pb::WatchStart { kinds: vec![1, 42], ..Default::default() }).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().starts_with("kinds[1]: unknown kind 42"), "{}", status.message());
    let status = refused(pb::WatchStart { kinds: vec![pb::ChangeKind::Policy as i32], ..Default::default() }).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("policy"), "{}", status.message());
    let status = refused(pb::WatchStart { account_id: "not an account!".into(), ..Default::default() }).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().starts_with("account_id"), "{}", status.message());

    // An ack before `start`.
    let (tx, rx) = mpsc::channel(4);
    let ack = pb::WatchAck { revision: 1, echo: 0 };
    tx.send(pb::WatchRequest { message: Some(pb::watch_request::Message::Ack(ack)) }).await.unwrap();
    let mut client = WatchClient::with_interceptor(app.channel.clone(), AdminToken::new(ADMIN_TOKEN).unwrap());
    let status = client.subscribe(ReceiverStream::new(rx)).await.expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    // No token, or a wrong one.
    let (tx, rx) = mpsc::channel(4);
    tx.send(pb::WatchRequest { message: Some(pb::watch_request::Message::Start(start(""))) }).await.unwrap();
    let status = WatchClient::new(app.channel.clone()).subscribe(ReceiverStream::new(rx)).await.err().unwrap();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    let status = subscribe(&app, "kgadm_wrong-token-0123456789abcdef", start("")).await.err().unwrap();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
}

async fn no_secret_is_ever_in_the_feed(db: Db) {
    let mut app = app_on(db, |_| {}).await;
    let (_, key_secret) = app.create_key("acct_w", &["applications:read"], &[]).await;
    let session = app
        .admin
        .create_session(pb::CreateSessionRequest {
            account_id: "acct_w".into(),
            user_id: "user_1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let token = app
        .admin
        .create_admin_token(pb::CreateAdminTokenRequest {
            name: "ops".into(),
            role: "admin".into(),
            account_id: String::new(),
            expires_in_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .secret;

    // The snapshot, then the same records as changes.
    let mut subscriber = subscribe(&app, ADMIN_TOKEN, start("")).await.unwrap();
    let (_, snapshot, _) = subscriber.snapshot().await;
    let kinds: std::collections::BTreeSet<i32> = snapshot.iter().map(|c| c.kind).collect();
    assert_eq!(kinds.len(), 3, "a key, a session and an admin token: {snapshot:?}");
    let mut bytes: Vec<u8> = snapshot.iter().flat_map(|c| c.encode_to_vec()).collect();
    // Every change from the first (0: before any revision).
    let mut from_start = subscribe(&app, ADMIN_TOKEN, start("0")).await.unwrap();
    let Event::Hello(hello) = from_start.next().await else { panic!("hello first") };
    for event in from_start.until_progress(hello.revision).await {
        bytes.extend(pb::WatchEvent { event: Some(event) }.encode_to_vec());
    }
    let text = String::from_utf8_lossy(&bytes);
    for secret in [key_secret.as_str(), session.token.as_str(), token.as_str()] {
        assert!(!secret.is_empty());
        assert!(!text.contains(secret), "a secret in the feed");
    }
    assert!(!text.contains("$argon2"), "a secret's hash in the feed");
}

/// On Postgres, changes commit in revision order: a second writer waits for the first
/// one's commit before it takes a revision, so a reader that has seen revision `r` can
/// never later find a smaller one committed. Seen from the database: the second writer
/// waits on the feed's lock while the first is open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_changes_commit_in_revision_order() {
    use sqlx::{Connection, Row};
    let Some(db) = TestDb::new(Db::Postgres).await else {
        eprintln!("skipped: KEYGATE_TEST_POSTGRES_URL is not set");
        return;
    };
    let url = db.url.clone();
    let _app = TestApp::spawn_on(db, |_| {}).await;
    let insert = "INSERT INTO applications (id, account_id, name, created_at) VALUES ($1, 'acct_o', 'x', 0)";
    let mut first = sqlx::PgConnection::connect(&url).await.unwrap();
    let mut tx = first.begin().await.unwrap();
    sqlx::query(insert).bind("app_first").execute(&mut *tx).await.unwrap();

    let mut second = sqlx::PgConnection::connect(&url).await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut second).await.unwrap();
    let writer = tokio::spawn(async move {
        sqlx::query(insert).bind("app_second").execute(&mut second).await.unwrap();
    });
    let observer = sqlx::PgPool::connect(&url).await.unwrap();
    crate::helpers::eventually("the second writer waits for the feed's lock", || {
        let observer = observer.clone();
        async move {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_locks WHERE pid = $1 AND locktype = 'advisory' AND NOT granted",
            )
            .bind(pid)
            .fetch_one(&observer)
            .await
            .unwrap();
            waiting == 1
        }
    })
    .await;
    assert!(!writer.is_finished());
    tx.commit().await.unwrap();
    writer.await.unwrap();

    let rows = sqlx::query("SELECT object_id FROM changes WHERE kind = 'application' ORDER BY revision")
        .fetch_all(&observer)
        .await
        .unwrap();
    let order: Vec<String> = rows.iter().map(|row| row.get("object_id")).collect();
    assert_eq!(order, vec!["app_first", "app_second"]);
}
