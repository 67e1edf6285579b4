//! Cross-replica cache invalidation over Postgres `LISTEN`/`NOTIFY`, and the promise that a
//! change has reached every live replica before the admin call that made it returns.
//!
//! A trigger notifies on every change to a key or an application, inside the writing
//! transaction (see the Postgres migrations). Each replica runs one listener task that
//! invalidates what a notification names. Notifications are lost while the listener's
//! connection is down, so each (re)connection distrusts the whole cache *after* `LISTEN` is
//! active: nothing changed during the gap can survive it. The cache TTL bounds staleness
//! if everything else fails.
//!
//! # Applied, acknowledged, fenced
//!
//! A notification reaches a listener only when that replica gets round to reading it: under
//! CPU contention, seconds after the admin call returned. So replicas say what they have
//! applied, on a second channel (`keygate_replicas_<schema>`) that old replicas do not
//! listen to. Postgres keeps one notification queue for every channel and hands each
//! listener what it listens to in commit order, so a listener that has handled a
//! notification committed at `t` has handled every change committed before `t`:
//!
//! - **barrier**: after a change commits, the admin call ([`Replicas::settle`]) has its
//!   own listener's connection notify a barrier (a later transaction than the change's);
//! - **ack**: every listener answers a barrier it reads with an ack naming itself;
//! - **heartbeat**: every listener notifies a heartbeat (its id and the time on its clock
//!   when it sent it) every lease/4. Reading back its *own* heartbeat sent at `h` proves it
//!   has applied everything committed before `h`, so it trusts its cache until `h + lease`
//!   ([`Trust`]); past that every cached record is reloaded from the store before it is
//!   served fresh. Others' heartbeats tell a listener who is live.
//!
//! The admin call waits until every replica that was live when its own listener read the
//! barrier has acknowledged, or for at most `--change-ack-timeout`, whichever is first. The
//! lease is shorter than that wait ([`LEASE_PERCENT_OF_WAIT`]), so a replica that never
//! acknowledged is fenced by the time the call returns: its trust rests on a heartbeat it
//! read back, sent (on its clock) at `h`; if that heartbeat was committed after the change,
//! its listener applied the change before reading it; if before, `h` is before the change's
//! commit, which is before the wait began, so `h + lease` has passed when the wait ends.
//! Who counts as live needs no clock agreement either: a heartbeat committed before the
//! change reaches this listener before the barrier does, and one read more than the
//! liveness window (twice the wait) ago grants no trust any more.
//!
//! What this rests on: replicas' clocks run at the rate of real time (steps backwards
//! extend a lease by the step: keep NTP slewing, not stepping), and a record served stale
//! because the store is unreachable (`--serve-stale-seconds`) is outside the promise.

use super::cached::{CachedStore, Trust};
use crate::clock::Clock;
use crate::domain::{ApplicationId, KeyId, SessionId};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use sqlx::postgres::{PgListener, PgNotification};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;

/// The lease on a replica's memory, in percent of the admin call's longest wait: the rest
/// is the margin for the two being measured on different clocks (the injected clock for
/// the lease, the runtime's monotonic clock for the wait) and for rounding to milliseconds.
pub const LEASE_PERCENT_OF_WAIT: u32 = 90;

/// Heartbeats per lease: a replica keeps its trust through three late ones in a row.
const BEATS_PER_LEASE: u32 = 4;

/// What the listener is doing, for health, tests and metrics.
pub struct ListenerStatus {
    connected: AtomicBool,
    backend_pid: AtomicI32,
    connections: AtomicU64,
    notifications: AtomicU64,
    /// Milliseconds from the writer's commit-time clock to this replica's invalidation.
    last_lag_millis: AtomicI64,
    /// The same lag, in seconds, for every notification.
    lag: Histogram,
    /// Set by tests: the listener reads nothing and sends nothing, as one starved of CPU.
    paused: watch::Sender<bool>,
    replicas: Arc<Replicas>,
}

impl ListenerStatus {
    fn new(replicas: Arc<Replicas>) -> Self {
        Self {
            connected: Default::default(),
            backend_pid: Default::default(),
            connections: Default::default(),
            notifications: Default::default(),
            last_lag_millis: Default::default(),
            // 100 µs to ~3 s.
            lag: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            paused: watch::channel(false).0,
            replicas,
        }
    }

    /// Acknowledgements and fencing: what admin calls wait on.
    pub fn replicas(&self) -> &Arc<Replicas> {
        &self.replicas
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    /// The Postgres backend pid of the listening connection (0 when not connected).
    pub fn backend_pid(&self) -> i32 {
        self.backend_pid.load(Ordering::SeqCst)
    }

    /// How many times the listener has connected (1 + reconnects).
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn notifications(&self) -> u64 {
        self.notifications.load(Ordering::SeqCst)
    }

    pub fn last_lag_millis(&self) -> i64 {
        self.last_lag_millis.load(Ordering::SeqCst)
    }

    pub fn lag(&self) -> Histogram {
        self.lag.clone()
    }

    /// For tests: stops (or resumes) the listener between two notifications, the way a
    /// replica starved of CPU stops: no invalidation, no acknowledgement, no heartbeat.
    pub fn pause(&self, paused: bool) {
        self.paused.send_replace(paused);
    }
}

/// How many live replicas confirmed a change, and how many were fenced instead.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settled {
    /// Replicas (this one included) whose listener applied the change before the call returned.
    pub acknowledged: usize,
    /// Live replicas that did not confirm within the wait: by now none trusts its cache.
    pub fenced: usize,
}

/// This replica's side of "every live replica has applied the change": its id, the
/// replicas it has heard from, and the admin calls waiting for acknowledgements.
pub struct Replicas {
    id: String,
    /// Longest wait of an admin call (`--change-ack-timeout`).
    wait: Duration,
    lease: Duration,
    clock: Arc<dyn Clock>,
    trust: Arc<Trust>,
    /// What the listener's connection is to notify: barriers of this replica's admin calls.
    outbox: mpsc::UnboundedSender<String>,
    state: Mutex<Membership>,
    /// Woken on every acknowledgement and every barrier this replica's listener reads.
    changed: Notify,
    next_barrier: AtomicU64,
    acknowledged: AtomicU64,
    fenced: AtomicU64,
}

#[derive(Default)]
struct Membership {
    /// Replicas by id, and when this listener last read a heartbeat of theirs.
    seen: HashMap<String, Instant>,
    /// This replica's barriers still waited for.
    barriers: HashMap<String, Barrier>,
}

#[derive(Default)]
struct Barrier {
    /// Who was live when this replica's listener read the barrier (None: not read yet).
    live: Option<HashSet<String>>,
    acked: HashSet<String>,
}

/// Removes an admin call's barrier however the call ends.
struct Pending<'a>(&'a Replicas, &'a str);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.lock().barriers.remove(self.1);
    }
}

impl Replicas {
    fn new(wait: Duration, clock: Arc<dyn Clock>, trust: Arc<Trust>, outbox: mpsc::UnboundedSender<String>) -> Self {
        // Random, so that a restarted replica is a new one (its old self is not live).
        let id = crate::domain::random_token(12).unwrap_or_else(|_| format!("pid{}", std::process::id()));
        Self {
            id,
            wait,
            lease: wait * LEASE_PERCENT_OF_WAIT / 100,
            clock,
            trust,
            outbox,
            state: Mutex::new(Membership::default()),
            changed: Notify::new(),
            next_barrier: AtomicU64::new(0),
            acknowledged: AtomicU64::new(0),
            fenced: AtomicU64::new(0),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// How long a replica trusts its cache after sending a heartbeat.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Replicas heard from within the liveness window (this one included).
    pub fn live(&self) -> usize {
        let now = Instant::now();
        self.lock().seen.values().filter(|at| now.duration_since(**at) < self.window()).count()
    }

    /// Acknowledgements and fencings over every admin call, for metrics.
    pub fn acknowledged_total(&self) -> u64 {
        self.acknowledged.load(Ordering::Relaxed)
    }

    pub fn fenced_total(&self) -> u64 {
        self.fenced.load(Ordering::Relaxed)
    }

    /// Admin calls waiting whose barrier this replica's listener has read (for tests).
    pub fn waiting(&self) -> usize {
        self.lock().barriers.values().filter(|b| b.live.is_some()).count()
    }

    /// A heartbeat read more than this long ago says nothing about its sender any more:
    /// it granted trust for one lease at most. Twice the wait, so that a replica slow to
    /// beat is still waited for rather than fenced.
    fn window(&self) -> Duration {
        self.wait * 2
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Membership> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Call after a change has committed: returns once every live replica has applied it,
    /// or after the wait, when those that have not are fenced (they no longer trust their
    /// caches). Never fails: the change is already durable, and fencing is the fallback.
    pub async fn settle(&self) -> Settled {
        let barrier = format!("{}.{}", self.id, self.next_barrier.fetch_add(1, Ordering::Relaxed));
        self.lock().barriers.insert(barrier.clone(), Barrier::default());
        // An admin call whose caller hangs up is dropped mid-wait: its barrier goes with it.
        let _pending = Pending(self, &barrier);
        // The deadline counts from before the barrier is sent, so from after the commit.
        let deadline = Instant::now() + self.wait;
        // The listener task owns the receiver for the life of the server.
        let _ = self.outbox.send(barrier.clone());
        loop {
            let woken = self.changed.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let done = self.lock().barriers.get(&barrier).is_some_and(|b| {
                b.live.as_ref().is_some_and(|live| live.iter().all(|replica| b.acked.contains(replica)))
            });
            if done || tokio::time::timeout_at(deadline, woken).await.is_err() {
                break;
            }
        }
        let now = Instant::now();
        let mut state = self.lock();
        let waited = state.barriers.remove(&barrier).unwrap_or_default();
        // Not read back by this listener: who was live is what it knows now.
        let live = waited.live.unwrap_or_else(|| {
            state
                .seen
                .iter()
                .filter(|(_, at)| now.duration_since(**at) < self.window())
                .map(|(id, _)| id.clone())
                .collect()
        });
        drop(state);
        let acknowledged = waited.acked.len();
        let fenced = live.iter().filter(|replica| !waited.acked.contains(*replica)).count();
        self.acknowledged.fetch_add(acknowledged as u64, Ordering::Relaxed);
        self.fenced.fetch_add(fenced as u64, Ordering::Relaxed);
        if fenced > 0 {
            tracing::warn!(
                acknowledged,
                fenced,
                wait_ms = self.wait.as_millis() as u64,
                "replicas did not acknowledge a change in time; they no longer trust their caches"
            );
        }
        Settled { acknowledged, fenced }
    }

    /// The listener read a notification on the replicas' channel. Returns what it must
    /// answer (an acknowledgement), if anything.
    fn read(&self, payload: &str) -> Option<String> {
        let mut parts = payload.splitn(3, ':');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("beat"), Some(replica), Some(sent)) => {
                let sent = sent.parse::<i64>().ok()?;
                if replica == self.id {
                    // Everything committed before `sent` has been applied here.
                    let lease = i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX);
                    self.trust.renew(sent.saturating_add(lease));
                }
                let now = Instant::now();
                let mut state = self.lock();
                match state.seen.get_mut(replica) {
                    Some(at) => *at = now,
                    None => {
                        // A new id (a replica restarted): forget those silent past the window,
                        // so restarts over months do not grow the map.
                        let window = self.window();
                        state.seen.retain(|_, at| now.duration_since(*at) < window);
                        state.seen.insert(replica.to_owned(), now);
                    }
                }
                None
            }
            (Some("barrier"), Some(barrier), None) => {
                let mut state = self.lock();
                let now = Instant::now();
                let live: HashSet<String> = state
                    .seen
                    .iter()
                    .filter(|(_, at)| now.duration_since(**at) < self.window())
                    .map(|(id, _)| id.clone())
                    .chain([self.id.clone()])
                    .collect();
                if let Some(mine) = state.barriers.get_mut(barrier) {
                    mine.live = Some(live);
                    mine.acked.insert(self.id.clone());
                    drop(state);
                    self.changed.notify_waiters();
                    // Others learn nothing from this replica's ack of its own barrier.
                    return None;
                }
                Some(format!("ack:{barrier}:{}", self.id))
            }
            (Some("ack"), Some(barrier), Some(replica)) => {
                if let Some(mine) = self.lock().barriers.get_mut(barrier) {
                    mine.acked.insert(replica.to_owned());
                }
                self.changed.notify_waiters();
                None
            }
            _ => {
                tracing::warn!(payload, "unknown replica notification; ignored");
                None
            }
        }
    }
}

/// Starts the listener task; it runs until the returned handle is aborted. `wait` is the
/// longest an admin call waits for acknowledgements (`--change-ack-timeout`).
pub fn spawn(
    database_url: String,
    cache: Arc<CachedStore>,
    clock: Arc<dyn Clock>,
    wait: Duration,
) -> (Arc<ListenerStatus>, tokio::task::JoinHandle<()>) {
    cache.trust().lease(clock.clone());
    let (outbox, barriers) = mpsc::unbounded_channel();
    let replicas = Arc::new(Replicas::new(wait, clock, cache.trust().clone(), outbox));
    let status = Arc::new(ListenerStatus::new(replicas.clone()));
    let task = tokio::spawn(listen_forever(database_url, cache, status.clone(), replicas, barriers));
    (status, task)
}

async fn listen_forever(
    database_url: String,
    cache: Arc<CachedStore>,
    status: Arc<ListenerStatus>,
    replicas: Arc<Replicas>,
    mut barriers: mpsc::UnboundedReceiver<String>,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        match connect(&database_url).await {
            Ok((mut listener, pid, channels)) => {
                backoff = Duration::from_millis(50);
                status.backend_pid.store(pid, Ordering::SeqCst);
                status.connected.store(true, Ordering::SeqCst);
                let connections = status.connections.fetch_add(1, Ordering::SeqCst) + 1;
                // Whatever changed while nobody listened is unknown: reload everything.
                cache.distrust_all();
                if connections > 1 {
                    tracing::info!(
                        backend_pid = pid,
                        "invalidation listener reconnected; every cached record will be reloaded"
                    );
                }
                let reason = receive(&mut listener, &channels, &cache, &status, &replicas, &mut barriers).await;
                status.connected.store(false, Ordering::SeqCst);
                status.backend_pid.store(0, Ordering::SeqCst);
                tracing::warn!(%reason, "invalidation listener lost its connection; reconnecting");
                // Distrust now too, so the gap serves nothing fresh from before it.
                cache.distrust_all();
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "invalidation listener cannot connect");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// The two channels of a schema: changes (the migration's trigger), and replicas.
struct Channels {
    changes: String,
    replicas: String,
}

async fn connect(database_url: &str) -> Result<(PgListener, i32, Channels), sqlx::Error> {
    let mut listener = PgListener::connect(database_url).await?;
    // We reconnect ourselves, so that distrusting the cache comes after LISTEN is active again.
    listener.eager_reconnect(false);
    let (schema, pid): (String, i32) =
        sqlx::query_as("SELECT current_schema()::TEXT, pg_backend_pid()").fetch_one(&mut listener).await?;
    let channels = Channels { changes: channel_for(&schema), replicas: format!("keygate_replicas_{schema}") };
    listener.listen_all([channels.changes.as_str(), channels.replicas.as_str()]).await?;
    Ok((listener, pid, channels))
}

/// The channel the migration's trigger notifies on.
fn channel_for(schema: &str) -> String {
    format!("keygate_changes_{schema}")
}

/// Handles notifications, sends heartbeats and barriers, until the connection fails;
/// returns why it stopped.
async fn receive(
    listener: &mut PgListener,
    channels: &Channels,
    cache: &CachedStore,
    status: &ListenerStatus,
    replicas: &Replicas,
    barriers: &mut mpsc::UnboundedReceiver<String>,
) -> String {
    let beat_every = replicas.lease / BEATS_PER_LEASE;
    let mut beats = tokio::time::interval(beat_every.max(Duration::from_millis(1)));
    // A late beat is sent once, not in a burst: the lease counts from its sending.
    beats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut paused = status.paused.subscribe();
    loop {
        if *paused.borrow_and_update() {
            // Nothing read, nothing sent: the lease runs out as it would on a starved replica.
            if paused.wait_for(|paused| !*paused).await.is_err() {
                return "status dropped".to_owned();
            }
        }
        // Sent from this connection: in the notification queue, after whatever this
        // listener has read, and no pool connection is taken from the decisions.
        let send = tokio::select! {
            // Notifications first: a backlog is read before more is sent.
            biased;
            received = listener.try_recv() => match received {
                Ok(Some(notification)) if notification.channel() == channels.replicas => {
                    match replicas.read(notification.payload()) {
                        Some(ack) => ack,
                        None => continue,
                    }
                }
                Ok(Some(notification)) => {
                    apply(&notification, cache, status);
                    continue;
                }
                Ok(None) => return "connection closed".to_owned(),
                Err(e) => return e.to_string(),
            },
            _ = paused.changed() => continue,
            Some(barrier) = barriers.recv() => {
                // Its call gave up (or its caller left) while this listener was away.
                if !replicas.lock().barriers.contains_key(&barrier) {
                    continue;
                }
                format!("barrier:{barrier}")
            }
            _ = beats.tick() => format!("beat:{}:{}", replicas.id, replicas.clock.now().as_millis()),
        };
        if let Err(e) =
            sqlx::query("SELECT pg_notify($1, $2)").bind(&channels.replicas).bind(&send).execute(&mut *listener).await
        {
            return e.to_string();
        }
    }
}

fn apply(notification: &PgNotification, cache: &CachedStore, status: &ListenerStatus) {
    status.notifications.fetch_add(1, Ordering::SeqCst);
    let mut parts = notification.payload().splitn(3, ':');
    let (kind, id, sent) = (parts.next(), parts.next(), parts.next());
    match (kind, id) {
        (Some("key"), Some(id)) if KeyId::parse(id).is_ok() => {
            cache.invalidate_key(KeyId::parse(id).expect("checked"));
        }
        (Some("ses"), Some(id)) if SessionId::parse(id).is_ok() => {
            cache.invalidate_session(SessionId::parse(id).expect("checked"));
        }
        (Some("app"), Some(id)) if ApplicationId::parse(id).is_ok() => {
            cache.invalidate_application(&ApplicationId::parse(id).expect("checked"));
        }
        // Something we do not understand may still be a change: be safe.
        _ => {
            tracing::warn!(
                payload = notification.payload(),
                "unknown change notification; reloading every cached record"
            );
            cache.distrust_all();
        }
    }
    if let Some(sent) = sent.and_then(|s| s.parse::<i64>().ok()) {
        let now = crate::clock::Clock::now(&crate::clock::SystemClock).as_millis();
        status.last_lag_millis.store(now - sent, Ordering::SeqCst);
        // Clocks of two machines can disagree a little; a negative lag counts as none.
        status.lag.observe((now - sent).max(0) as f64 / 1000.0);
    }
}
