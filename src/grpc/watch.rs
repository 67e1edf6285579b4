//! `keygate.v1.Watch`: the change feed as a stream, on the admin listener behind the admin
//! gate. A subscriber says where to start ([`pb::WatchStart`]); its stream sends a
//! snapshot when it must, then every change it watches, in revision order, and a
//! [`pb::Progress`] whenever the feed moves or the subscriber acknowledges. The
//! subscriber's acks are what admin changes wait on ([`crate::feed`]).

use super::admin::call::grant_of;
use super::admin::{AdminGate, AdminGateSettings, BootstrapToken};
use super::proto::{self as pb, watch_server};
use super::spans::CallSpans;
use super::{convert, status};
use crate::code::Code;
use crate::domain::{AccountId, AdminGrant};
use crate::feed::{Membership, Subscribers};
use crate::manage::Manager;
use crate::store::changes::{ChangeFeed, ChangeKind, ChangeRow, FeedRecord, Resume, SnapshotPage};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// Rows read at a time, and records a snapshot page holds.
const BATCH: u32 = 256;
/// Events a stream holds for a subscriber slow to read them.
const BUFFER: usize = 64;
/// How often a stream looks for changes other replicas made (this replica's own wake it).
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// The longest `since` accepted (an i64 has 19 digits).
const MAX_SINCE_LEN: usize = 19;

pub struct WatchService {
    feed: Arc<dyn ChangeFeed>,
    subscribers: Arc<Subscribers>,
    manager: Arc<Manager>,
    /// Revisions kept (`--change-retention`): a subscriber further behind gets a snapshot.
    retention: u64,
}

/// The service as the server mounts it: behind the admin gate, with call spans.
pub type GatedWatch = CallSpans<AdminGate<watch_server::WatchServer<WatchService>>>;

impl WatchService {
    /// The service, and the task that keeps the feed within `retention` (every 10 s).
    pub fn start(
        feed: Arc<dyn ChangeFeed>,
        subscribers: Arc<Subscribers>,
        manager: Arc<Manager>,
        retention: u64,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let pruning = spawn_pruning(feed.clone(), retention, Duration::from_secs(10));
        (Self { feed, subscribers, manager, retention }, pruning)
    }

    /// Behind the admin gate (its tokens, roles, budgets), as Admin is: on Admin's listener.
    pub fn behind(self, bootstrap: BootstrapToken, manager: Arc<Manager>, settings: AdminGateSettings) -> GatedWatch {
        CallSpans::new(AdminGate::new(watch_server::WatchServer::new(self), bootstrap, manager, settings))
    }
}

/// What a subscription asked for, checked.
struct Subscription {
    since: Option<i64>,
    /// Empty: every kind.
    kinds: Vec<ChangeKind>,
    /// `None`: every account (and admin tokens).
    account: Option<AccountId>,
    /// The admin token's name that opened it (`None`: the bootstrap token): the stream
    /// ends when that token is revoked.
    token: Option<String>,
}

impl Subscription {
    fn parse(start: &pb::WatchStart, grant: &AdminGrant) -> Result<Self, Status> {
        let since = match start.since.as_str() {
            "" => None,
            raw if raw.len() <= MAX_SINCE_LEN && raw.bytes().all(|b| b.is_ascii_digit()) => {
                Some(raw.parse::<i64>().map_err(|_| invalid_since())?)
            }
            _ => return Err(invalid_since()),
        };
        let kinds =
            start.kinds.iter().enumerate().map(|(i, raw)| kind_from_proto(i, *raw)).collect::<Result<Vec<_>, _>>()?;
        let account = match start.account_id.as_str() {
            "" => grant.account.clone(),
            raw => {
                let account = AccountId::parse_field("account_id", raw)?;
                if !grant.covers(&account) {
                    return Err(status::coded(
                        Code::InsufficientScope,
                        "account_id: this admin token is confined to another account",
                    ));
                }
                Some(account)
            }
        };
        let token = grant.credential.strip_prefix("token:").map(str::to_owned);
        Ok(Self { since, kinds, account, token })
    }

    fn watches_kind(&self, kind: ChangeKind) -> bool {
        self.kinds.is_empty() || self.kinds.contains(&kind)
    }

    fn watches(&self, row: &ChangeRow) -> bool {
        if !self.watches_kind(row.kind) {
            return false;
        }
        match &self.account {
            None => true,
            // Admin tokens are the deployment's: a confined subscriber sees none.
            Some(_) if row.kind == ChangeKind::AdminToken => false,
            Some(account) => row.account_id.as_deref() == Some(account.as_str()),
        }
    }
}

fn invalid_since() -> Status {
    status::coded(
        Code::ValidationError,
        "since: must be a revision as the feed gave it (decimal digits), or empty for a snapshot",
    )
}

fn kind_from_proto(index: usize, raw: i32) -> Result<ChangeKind, Status> {
    match pb::ChangeKind::try_from(raw) {
        Ok(pb::ChangeKind::Key) => Ok(ChangeKind::Key),
        Ok(pb::ChangeKind::Application) => Ok(ChangeKind::Application),
        Ok(pb::ChangeKind::Session) => Ok(ChangeKind::Session),
        Ok(pb::ChangeKind::Owner) => Ok(ChangeKind::Owner),
        Ok(pb::ChangeKind::AdminToken) => Ok(ChangeKind::AdminToken),
        Ok(pb::ChangeKind::Policy) => Err(status::coded(
            Code::BadRequest,
            format!("kinds[{index}]: policy changes are not in the feed yet (the policy is each replica's file)"),
        )),
        Ok(pb::ChangeKind::Unspecified) | Err(_) => Err(status::coded(
            Code::ValidationError,
            format!("kinds[{index}]: unknown kind {raw}; one of key, application, session, owner, admin_token"),
        )),
    }
}

fn kind_to_proto(kind: ChangeKind) -> pb::ChangeKind {
    match kind {
        ChangeKind::Key => pb::ChangeKind::Key,
        ChangeKind::Application => pb::ChangeKind::Application,
        ChangeKind::Session => pb::ChangeKind::Session,
        ChangeKind::Owner => pb::ChangeKind::Owner,
        ChangeKind::AdminToken => pb::ChangeKind::AdminToken,
    }
}

fn event(event: pb::watch_event::Event) -> pb::WatchEvent {
    pb::WatchEvent { event: Some(event) }
}

/// Revisions are positive and below 2^63: as u64 for the wire.
fn wire(revision: i64) -> u64 {
    u64::try_from(revision).unwrap_or(0)
}

#[tonic::async_trait]
impl watch_server::Watch for WatchService {
    type SubscribeStream = ReceiverStream<Result<pb::WatchEvent, Status>>;

    async fn subscribe(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let grant = grant_of(&request)?;
        let mut inbound = request.into_inner();
        let start = match inbound.message().await? {
            Some(pb::WatchRequest { message: Some(pb::watch_request::Message::Start(start)) }) => start,
            _ => {
                return Err(status::coded(Code::ValidationError, "the first message of Subscribe must be `start`"));
            }
        };
        let subscription = Subscription::parse(&start, &grant)?;
        // Pruned here as well as in the background, so a subscriber is told about the
        // window as it is.
        self.feed.prune_changes(self.retention).await?;
        let window = self.feed.feed_window().await?;
        let reset = match subscription.since.map(|since| window.resumes(since)) {
            None => Some("no_since"),
            Some(Resume::Yes) => None,
            Some(Resume::TooOld) => Some("too_old"),
            Some(Resume::Unknown) => Some("unknown"),
        };
        let (tx, rx) = mpsc::channel(BUFFER);
        let stream = Stream {
            feed: self.feed.clone(),
            manager: self.manager.clone(),
            subscription,
            tx,
            position: 0,
            // The first look always tells where the feed is.
            progressed: -1,
        };
        let since = match reset {
            Some(_) => window.latest,
            None => stream.subscription.since.unwrap_or(0),
        };
        // A member before the call is answered: a change made once the subscriber has its
        // answer waits for it.
        let member = self.subscribers.join(stream.subscription.account.clone(), since);
        let hello = pb::Hello {
            subscriber_id: member.id().to_string(),
            lease_ms: u64::try_from(self.subscribers.lease().as_millis()).unwrap_or(u64::MAX),
            revision: wire(window.latest),
            oldest_revision: wire(window.oldest.unwrap_or(0)),
        };
        tokio::spawn(async move {
            let mut stream = stream;
            stream.position = since;
            if let Err(status) = stream.run(&member, hello, reset, &mut inbound).await {
                // The subscriber may be gone already: then no one is told.
                let _ = stream.tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// One subscriber's stream.
struct Stream {
    feed: Arc<dyn ChangeFeed>,
    manager: Arc<Manager>,
    subscription: Subscription,
    tx: mpsc::Sender<Result<pb::WatchEvent, Status>>,
    /// Every row up to here was looked at.
    position: i64,
    /// The last position a `Progress` told.
    progressed: i64,
}

/// The subscriber has gone: the stream ends quietly.
struct Gone;

impl From<Gone> for Status {
    fn from(_: Gone) -> Self {
        Status::cancelled("the subscriber has gone")
    }
}

impl Stream {
    async fn send(&self, event: pb::WatchEvent) -> Result<(), Gone> {
        self.tx.send(Ok(event)).await.map_err(|_| Gone)
    }

    async fn run(
        &mut self,
        member: &Membership,
        hello: pb::Hello,
        reset: Option<&str>,
        inbound: &mut Streaming<pb::WatchRequest>,
    ) -> Result<(), Status> {
        let mut published = member.subscribers().published();
        let mut fencings = member.subscribers().fencings();
        let mut poll = tokio::time::interval(POLL_INTERVAL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let revision = hello.revision;
        if self.send(event(pb::watch_event::Event::Hello(hello))).await.is_err() {
            return Ok(());
        }
        if let Some(reason) = reset {
            self.send(event(pb::watch_event::Event::Reset(pb::Reset { reason: reason.to_owned() }))).await?;
            self.snapshot(revision as i64).await?;
            member.reset_to(revision as i64);
            self.send(event(pb::watch_event::Event::SnapshotEnd(pb::SnapshotEnd { revision }))).await?;
        }
        let mut told_fenced = None;
        loop {
            match self.scan(member).await {
                Ok(()) => {}
                Err(Ended::Gone) => return Ok(()),
                Err(Ended::Status(status)) => return Err(status),
            }
            if member.fenced_at() != told_fenced {
                told_fenced = member.fenced_at();
                if let Some(at) = told_fenced {
                    self.send(event(pb::watch_event::Event::Fenced(pb::Fenced { revision: wire(at) }))).await?;
                }
            }
            let message = tokio::select! {
                _ = published.changed() => None,
                _ = fencings.changed() => None,
                _ = poll.tick() => None,
                _ = self.tx.closed() => return Ok(()),
                message = inbound.message() => Some(message),
            };
            match message {
                None => {}
                Some(Ok(Some(pb::WatchRequest { message: Some(pb::watch_request::Message::Ack(ack)) }))) => {
                    member.ack(i64::try_from(ack.revision).unwrap_or(i64::MAX));
                    // Answered after a fresh look: whatever was committed before the ack
                    // was sent is in it (the subscriber's lease rests on this).
                    match self.scan(member).await {
                        Ok(()) => {}
                        Err(Ended::Gone) => return Ok(()),
                        Err(Ended::Status(status)) => return Err(status),
                    }
                    let progress = pb::Progress { revision: wire(self.position), echo: ack.echo };
                    self.progressed = self.position;
                    self.send(event(pb::watch_event::Event::Progress(progress))).await?;
                }
                Some(Ok(Some(_))) => {
                    return Err(status::coded(Code::ValidationError, "after `start`, only `ack` messages"));
                }
                // The subscriber hung up or its stream broke: nothing to tell.
                Some(Ok(None) | Err(_)) => return Ok(()),
            }
        }
    }

    /// Sends every watched change after `position`, then a `Progress` if it moved.
    async fn scan(&mut self, member: &Membership) -> Result<(), Ended> {
        loop {
            let rows = self.feed.changes_after(self.position, BATCH).await?;
            let full = rows.len() == BATCH as usize;
            // A gap is a rolled-back revision, or rows pruned before this stream read them.
            if rows.first().is_some_and(|row| row.revision > self.position + 1)
                && self.feed.feed_window().await?.resumes(self.position) == Resume::TooOld
            {
                return Err(Ended::Status(Status::aborted(
                    "this subscriber fell behind the feed's retention (--change-retention): \
                     subscribe again with its last revision to get a snapshot",
                )));
            }
            for row in &rows {
                self.token_still_valid(row).await?;
                if self.subscription.watches(row) {
                    let record = match row.deleted {
                        true => None,
                        false => self.feed.record(row).await?,
                    };
                    if !member.sending(row.revision) {
                        return Err(Ended::Status(Status::resource_exhausted(format!(
                            "{} changes sent and not acknowledged: acknowledge what you applied, then \
                             subscribe again with your last revision",
                            crate::feed::MAX_UNACKED
                        ))));
                    }
                    self.send(self.change(row.revision, row.kind, &row.id, row.account_id.as_deref(), record)).await?;
                }
                self.position = row.revision;
            }
            member.scanned(self.position);
            if !full {
                break;
            }
        }
        if self.position > self.progressed {
            self.progressed = self.position;
            let progress = pb::Progress { revision: wire(self.position), echo: 0 };
            self.send(event(pb::watch_event::Event::Progress(progress))).await?;
        }
        Ok(())
    }

    /// The stream ends when the admin token that opened it is revoked or deleted: the
    /// gate checked it once, at the start.
    async fn token_still_valid(&self, row: &ChangeRow) -> Result<(), Ended> {
        if row.kind != ChangeKind::AdminToken || self.subscription.token.as_deref() != Some(row.id.as_str()) {
            return Ok(());
        }
        let live = match self.feed.record(row).await? {
            Some(FeedRecord::AdminToken(token)) => token.revoked_at.is_none(),
            _ => false,
        };
        match live {
            true => Ok(()),
            false => Err(Ended::Status(status::coded(Code::Unauth, "the admin token of this stream was revoked"))),
        }
    }

    /// Every record the subscriber watches, as of `revision` or later.
    async fn snapshot(&self, revision: i64) -> Result<(), Status> {
        for kind in ChangeKind::ALL.into_iter().filter(|k| self.subscription.watches_kind(*k)) {
            let mut after = String::new();
            loop {
                let page =
                    SnapshotPage { kind, account: self.subscription.account.as_ref(), after: &after, limit: BATCH };
                let (records, next) = self.feed.snapshot(&page).await?;
                for (_, record) in records {
                    let (id, account) = identity(&record);
                    self.send(self.change(revision, kind, &id, account.as_deref(), Some(record))).await?;
                }
                match next {
                    Some(next) => after = next,
                    None => break,
                }
            }
        }
        Ok(())
    }

    fn change(
        &self,
        revision: i64,
        kind: ChangeKind,
        id: &str,
        account: Option<&str>,
        record: Option<FeedRecord>,
    ) -> pb::WatchEvent {
        let now = self.manager.now();
        let record = record.map(|record| match record {
            FeedRecord::Key(key) => {
                pb::change::Record::Key(convert::key_to_proto(&key, now, self.manager.last_used_at(&key)))
            }
            FeedRecord::Application(app) => pb::change::Record::Application(convert::application_to_proto(&app)),
            FeedRecord::Session(session) => pb::change::Record::Session(convert::session_to_proto(&session, now)),
            FeedRecord::Owner(owner) => pb::change::Record::Owner(convert::owner_to_proto(&owner)),
            FeedRecord::AdminToken(token) => pb::change::Record::AdminToken(convert::admin_token_to_proto(&token, now)),
        });
        event(pb::watch_event::Event::Change(pb::Change {
            revision: wire(revision),
            kind: kind_to_proto(kind) as i32,
            id: id.to_owned(),
            account_id: account.unwrap_or_default().to_owned(),
            deleted: record.is_none(),
            record,
        }))
    }
}

/// A record's id and account, as its change row names them.
fn identity(record: &FeedRecord) -> (String, Option<String>) {
    match record {
        FeedRecord::Key(key) => (key.id.to_string(), Some(key.account_id.as_str().to_owned())),
        FeedRecord::Application(app) => (app.id.as_str().to_owned(), Some(app.account_id.as_str().to_owned())),
        FeedRecord::Session(session) => (session.id.to_string(), Some(session.account_id.as_str().to_owned())),
        FeedRecord::Owner(owner) => (owner.id.as_str().to_owned(), Some(owner.account_id.as_str().to_owned())),
        FeedRecord::AdminToken(token) => {
            (token.name.as_str().to_owned(), token.account_id.as_ref().map(|a| a.as_str().to_owned()))
        }
    }
}

/// Why a scan stopped.
enum Ended {
    Gone,
    Status(Status),
}

impl From<Gone> for Ended {
    fn from(_: Gone) -> Self {
        Ended::Gone
    }
}

impl From<crate::store::StoreError> for Ended {
    fn from(e: crate::store::StoreError) -> Self {
        Ended::Status(e.into())
    }
}

/// Keeps the feed within its retention, every `every`, for the life of the server.
pub fn spawn_pruning(feed: Arc<dyn ChangeFeed>, retention: u64, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            if let Err(e) = feed.prune_changes(retention).await {
                tracing::warn!(error = %e, "cannot prune the change feed");
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(account: Option<&str>) -> AdminGrant {
        AdminGrant {
            credential: "token:ops".into(),
            role: crate::domain::AdminRole::ReadOnly,
            account: account.map(|a| AccountId::parse(a).unwrap()),
        }
    }

    fn start(since: &str, kinds: Vec<i32>, account: &str) -> pb::WatchStart {
        pb::WatchStart { since: since.into(), kinds, account_id: account.into() }
    }

    #[test]
    fn a_subscription_is_checked() {
        let all = grant(None);
        assert_eq!(Subscription::parse(&start("", vec![], ""), &all).unwrap().since, None);
        assert_eq!(Subscription::parse(&start("42", vec![1, 3], ""), &all).unwrap().since, Some(42));
        for since in ["-1", "+4", "1e3", " 7", "99999999999999999999", "abc"] {
            let refused = Subscription::parse(&start(since, vec![], ""), &all).err().expect(since);
            assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{since}");
            assert!(refused.message().starts_with("since:"), "{since}");
        }
        let refused = Subscription::parse(&start("", vec![1, 99], ""), &all).err().unwrap();
        assert!(refused.message().starts_with("kinds[1]: unknown kind 99"), "{}", refused.message());
        let refused = Subscription::parse(&start("", vec![0], ""), &all).err().unwrap();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        let refused = Subscription::parse(&start("", vec![6], ""), &all).err().unwrap();
        assert!(refused.message().contains("policy"));
        let confined = grant(Some("acct_a"));
        assert_eq!(Subscription::parse(&start("", vec![], ""), &confined).unwrap().account.unwrap().as_str(), "acct_a");
        let refused = Subscription::parse(&start("", vec![], "acct_b"), &confined).err().unwrap();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    }
}
