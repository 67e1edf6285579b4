//! Rate-limit counters in Redis, shared by every replica.
//!
//! - *Exact* limits: one Lua script checks every exact limit of a request and counts it in
//!   all of them, atomically, so "10 per hour per account" means 10 across all replicas.
//!   Each counter is a sorted set of admitted requests scored by time, expiring with its
//!   window.
//! - *High-rate* limits are leased ([`super::lease`]): each replica spends a slice of the
//!   subject's budget locally and renews it in the background, so the hot path makes no
//!   round trip.
//!
//! On a Redis Cluster ([`super::connection`]) a script's keys must share a slot: the exact
//! limits of a request are checked per slot, one script each, and a request one slot
//! refuses is taken back out of the others (see [`RedisLimiter::check_exact`]).
//!
//! Time comes from the replica's clock (keep replicas NTP-synced; skew of milliseconds is
//! immaterial for windows of a second or more).

use super::connection::{by_slot, Connection, StoreClient};
use super::lease::{Lease, LeaseSettings, Take, LEASE};
use super::{LimitCheck, LimitOutcome, LimiterError, LocalLimiter, Room};
use crate::breaker::Breaker;
use crate::domain::Timestamp;
use crate::policy::LimitKind;
use smallvec::SmallVec;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, OnceCell};

mod renewals;

/// KEYS: one sorted set per limit. ARGV: now (ms), a unique member, then per key its window
/// (ms) and limit. Returns {1, tightest limit, remaining} or {0, limit, retry after ms, which
/// key (1-based)}.
const CHECK_AND_COUNT: &str = r#"
local now = tonumber(ARGV[1])
local member = ARGV[2]
local worst_limit, worst_retry, worst_index = 0, -1, 0
local tight_limit, tight_remaining = 0, -1
for i = 1, #KEYS do
  local window = tonumber(ARGV[1 + 2 * i])
  local limit = tonumber(ARGV[2 + 2 * i])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - window)
  local count = redis.call('ZCARD', KEYS[i])
  if count >= limit then
    local oldest = tonumber(redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')[2])
    local retry = oldest + window - now
    if retry > worst_retry then worst_limit, worst_retry, worst_index = limit, retry, i end
  else
    local remaining = limit - count - 1
    if tight_remaining < 0 or remaining < tight_remaining then tight_limit, tight_remaining = limit, remaining end
  end
end
if worst_retry >= 0 then return {0, worst_limit, worst_retry, worst_index} end
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], now, member)
  redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[1 + 2 * i]))
end
return {1, tight_limit, tight_remaining}
"#;

pub struct RedisLimiter {
    redis: Arc<Redis>,
    /// The slices of high-rate limits this replica holds, by their Redis key.
    leases: quick_cache::sync::Cache<String, Arc<LeaseCell>>,
    /// Makes each counted request a distinct member of the sorted sets, and each slice a
    /// distinct reservation.
    counter: AtomicU64,
    fallback: LocalLimiter,
}

use super::lease::counts_key_on_stack;
pub use super::lease::lease_keys;

/// The connection and what every call to Redis shares (renewals run in tasks of their own).
struct Redis {
    client: StoreClient,
    connection: OnceCell<Connection>,
    exact: redis::Script,
    lease: redis::Script,
    prefix: String,
    /// This replica: names its reservations, and its exact members.
    replica: String,
    settings: LeaseSettings,
    /// Bounds each call, and skips Redis entirely while it is known to be down.
    breaker: Arc<Breaker>,
    stats: Arc<RedisStats>,
    /// Permits for taking back unanswered exact counts ([`Uncount`]).
    uncounting: Arc<tokio::sync::Semaphore>,
    /// Slices due for renewal in the background ([`renewals`]).
    queue: Mutex<renewals::Queue>,
}

/// Counters of what the limiter does in Redis, for metrics and tests.
#[derive(Debug, Default)]
pub struct RedisStats {
    /// Slices renewed or released: a subject's renewal each (several may share a round
    /// trip).
    pub renewals: AtomicU64,
    /// Round trips (script runs) that renewed or released slices: the only ones high-rate
    /// limits make.
    pub round_trips: AtomicU64,
    /// Renewals Redis did not answer.
    pub failed: AtomicU64,
    /// Requests that found nothing held and waited for Redis.
    pub waited: AtomicU64,
    /// Requests to exact limits that Redis counted but whose answer never came in time
    /// (the limiter's timeout, the decision budget, a caller that hung up), taken back.
    pub uncounted: AtomicU64,
    /// Such counts that could not be taken back (Redis did not answer the removal, or too
    /// many were under way): each stays until its window passes.
    pub uncount_lost: AtomicU64,
    /// Exact counts of requests refused after their limits (for credits), taken back.
    pub given_back: AtomicU64,
    /// On a cluster: exact counts of requests one slot refused, taken back out of the
    /// slots that had counted them.
    pub rolled_back: AtomicU64,
}

/// Unanswered exact counts being taken back at once; past it (Redis slow for a flood of
/// requests) a count stays, and `uncount_lost` says so.
const MAX_UNCOUNTING: usize = 1_024;

/// Tries at taking back one unanswered count: the first at once, on the connection the
/// script went out on, so Redis runs it after the script; the others across a reconnection.
const UNCOUNT_TRIES: u32 = 3;
const UNCOUNT_RETRY_AFTER: Duration = Duration::from_millis(250);

/// A request the exact script may have counted in Redis, from the moment the script may be
/// sent until its answer is read. Dropped before then, nobody heard the request was
/// admitted (the caller was refused, or went away), so its count is taken back; otherwise
/// Redis being slow for a moment would spend a "10 per hour" budget on requests that were
/// never served.
struct Uncount {
    redis: Option<Arc<Redis>>,
    keys: SmallVec<[String; 4]>,
    member: String,
    /// The request was refused by one slot after others had counted it (a cluster).
    refused: bool,
}

impl Uncount {
    /// The caller hears the answer (or is served without it): the count stands.
    fn disarm(slot: &mut Option<Self>) {
        if let Some(mut held) = slot.take() {
            held.redis = None;
        }
    }
}

impl Drop for Uncount {
    fn drop(&mut self) {
        let Some(redis) = self.redis.take() else { return };
        // A permit per removal under way: it goes with the task, also when the task is
        // cancelled at shutdown, so none is ever lost.
        let permit = redis.uncounting.clone().try_acquire_owned();
        let (Ok(runtime), Ok(permit)) = (tokio::runtime::Handle::try_current(), permit) else {
            redis.stats.uncount_lost.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let (keys, member) = (std::mem::take(&mut self.keys), std::mem::take(&mut self.member));
        let refused = self.refused;
        runtime.spawn(async move {
            redis.uncount(&keys, &member, refused).await;
            drop(permit);
        });
    }
}

/// Requests taken from this replica's slices for one call: given back unless the call is
/// allowed, also when the call is dropped half-way (a timeout, a caller that hung up).
#[derive(Default)]
struct Taken(SmallVec<[Spent; 2]>);

impl Taken {
    fn keep(mut self) {
        for spent in self.0.drain(..) {
            spent.cell.lock().settle(spent.generation, true);
        }
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        for spent in self.0.drain(..) {
            spent.cell.lock().settle(spent.generation, false);
        }
    }
}

/// What a request admitted through Redis counted (see [`super::Admission`]): requests
/// taken from slices, and a member of the exact limits' sets.
pub(super) struct Counted {
    taken: Taken,
    uncount: Option<Uncount>,
}

impl Counted {
    pub(super) fn keep(mut self) {
        std::mem::take(&mut self.taken).keep();
        Uncount::disarm(&mut self.uncount);
    }

    /// The slices' requests go back at once; the exact counts are taken out of Redis
    /// before this returns when Redis answers within the limiter's timeout, else by the
    /// background removal (its tries and its stats, as for an unanswered count).
    pub(super) async fn give_back(mut self) {
        drop(std::mem::take(&mut self.taken));
        let Some(held) = self.uncount.as_ref() else { return };
        let Some(redis) = held.redis.clone() else { return };
        let removal = redis.uncount_once(&held.keys, &held.member);
        if let Ok(true) = tokio::time::timeout(redis.breaker.timeout(), removal).await {
            redis.stats.given_back.fetch_add(1, Ordering::Relaxed);
            Uncount::disarm(&mut self.uncount);
        }
    }
}

/// One slice, and what a request that finds it empty waits on.
struct LeaseCell {
    lease: Mutex<Lease>,
    renewed: Notify,
    /// The subject's two hashes in Redis: counts, reservations.
    keys: (String, String),
    /// This slice's field among the reservations: the replica and a number of its own, so
    /// a slice handed back never touches the one that replaced it.
    field: String,
    /// The rule's window (ms) and limit at the last use: a release needs them.
    window: std::sync::atomic::AtomicI64,
    limit: std::sync::atomic::AtomicU32,
}

impl LeaseCell {
    fn lock(&self) -> std::sync::MutexGuard<'_, Lease> {
        self.lease.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the rule's terms (a policy reload may change them); no write when unchanged.
    fn set_terms(&self, window: i64, limit: u32) {
        let (w, l) = (self.window.load(Ordering::Relaxed), self.limit.load(Ordering::Relaxed));
        if (w, l) != (window, limit) {
            self.window.store(window, Ordering::Relaxed);
            self.limit.store(limit, Ordering::Relaxed);
        }
    }

    fn terms(&self) -> (i64, u32) {
        (self.window.load(Ordering::Relaxed), self.limit.load(Ordering::Relaxed))
    }
}

/// A request taken from a slice, to put back if another limit refuses it.
struct Spent {
    cell: Arc<LeaseCell>,
    generation: u64,
}

/// Takes one request from `cell`'s slice, sized by its subject's rate.
fn take_sized(cell: &LeaseCell, now: i64, sizing: super::lease::Sizing, period: i64) -> Take {
    let mut lease = cell.lock();
    let size = lease.size(sizing);
    lease.take(now, size, period)
}

enum Leased {
    Spent(Spent, Room),
    Limited { limit: u32, retry_after_ms: i64 },
}

impl RedisLimiter {
    /// Does not connect yet: keygate starts (and fails closed per limit) while Redis is down.
    pub fn new(
        url: &str,
        prefix: String,
        breaker: Arc<Breaker>,
        settings: LeaseSettings,
    ) -> Result<Self, redis::RedisError> {
        Self::with_client(StoreClient::open(url, None)?, prefix, breaker, settings)
    }

    /// [`new`](Self::new) on a client made already (TLS with a CA or client certificate
    /// of its own: [`StoreClient::open`] with certificates).
    pub fn with_client(
        client: StoreClient,
        prefix: String,
        breaker: Arc<Breaker>,
        settings: LeaseSettings,
    ) -> Result<Self, redis::RedisError> {
        // Two replicas with one name would overwrite each other's reservations.
        let replica = crate::domain::random_token(12).map_err(|_| {
            redis::RedisError::from((redis::ErrorKind::Client, "no randomness to name this replica's reservations"))
        })?;
        Ok(Self {
            redis: Arc::new(Redis {
                client,
                connection: OnceCell::new(),
                exact: redis::Script::new(CHECK_AND_COUNT),
                lease: redis::Script::new(LEASE),
                prefix,
                replica,
                settings,
                breaker,
                stats: Arc::default(),
                uncounting: Arc::new(tokio::sync::Semaphore::new(MAX_UNCOUNTING)),
                queue: Mutex::default(),
            }),
            // The release task drops idle slices; a slice pushed out by a flood of subjects
            // lapses in Redis after a period (its unreported spends, under a slice, are lost).
            leases: quick_cache::sync::Cache::new(1_000_000),
            counter: AtomicU64::new(0),
            fallback: LocalLimiter::default(),
        })
    }

    pub fn breaker(&self) -> &Arc<Breaker> {
        &self.redis.breaker
    }

    pub fn stats(&self) -> Arc<RedisStats> {
        self.redis.stats.clone()
    }

    pub fn lease_settings(&self) -> LeaseSettings {
        self.redis.settings
    }

    /// Slices held now.
    pub fn leases_held(&self) -> u64 {
        self.leases.len() as u64
    }

    /// Why TLS to Redis fails, if it does: one connection tried at start-up, so that a CA
    /// or a name that cannot work stops start-up instead of failing every limit. Redis
    /// down (or slow) is not this: keygate starts, and limits fail closed until it is up.
    pub async fn tls_refusal(&self) -> Option<String> {
        let connect = self.redis.client.try_connect();
        match tokio::time::timeout(Duration::from_secs(2), connect).await {
            Ok(Err(e)) => crate::tls::handshake_failure(&e, "give the server's CA with --rate-limit-store-ca"),
            Ok(Ok(_)) | Err(_) => None,
        }
    }

    /// Does Redis answer a PING? For the breaker's background probe.
    pub async fn ping(&self) -> bool {
        let Ok(mut connection) = self.redis.connection().await else { return false };
        redis::cmd("PING").query_async::<String>(&mut connection).await.is_ok()
    }

    /// Checks every limit and counts the request in all of them, or in none: high-rate
    /// limits from this replica's slices, exact ones in Redis (one script). While Redis is
    /// unreachable, limits that all may fall back count locally; any that must not, fail
    /// closed.
    pub async fn check(&self, checks: &[LimitCheck<'_>], now: Timestamp) -> Result<LimitOutcome, LimiterError> {
        let (outcome, admission) = self.admit(checks, now).await?;
        admission.keep();
        Ok(outcome)
    }

    /// [`RedisLimiter::check`], with the counts held until the call is decided.
    pub async fn admit(
        &self,
        checks: &[LimitCheck<'_>],
        now: Timestamp,
    ) -> Result<(LimitOutcome, super::Admission), LimiterError> {
        // Here, not in `check_in_redis`, so that a decision dropped half-way (the budget, a
        // caller that hung up) takes back a count Redis may hold for it, and so that the
        // fallback can keep one for a request it serves.
        let mut counted = Counted { taken: Taken::default(), uncount: None };
        match self.check_in_redis(checks, now, &mut counted).await {
            Ok(outcome @ LimitOutcome::Admitted { .. }) => {
                Ok((outcome, super::Admission { local: None, redis: Some(counted) }))
            }
            Ok(outcome) => Ok((outcome, super::Admission::default())),
            Err(e) if super::falls_back(checks) => {
                tracing::warn!(error = %e, "rate limit store unreachable; counting locally");
                let (local, mut admission) = self.fallback.admit(checks, now);
                if matches!(local, LimitOutcome::Admitted { .. }) {
                    // Served or given back with the local count: a count Redis may hold
                    // for it goes the same way.
                    admission.redis = Some(Counted { taken: Taken::default(), uncount: counted.uncount.take() });
                }
                Ok((local, admission))
            }
            Err(e) => Err(e),
        }
    }

    async fn check_in_redis(
        &self,
        checks: &[LimitCheck<'_>],
        now: Timestamp,
        counted: &mut Counted,
    ) -> Result<LimitOutcome, LimiterError> {
        let now_ms = now.as_millis();
        let spent = &mut counted.taken;
        let mut tightest: Option<Room> = None;
        let mut limited: Option<(u32, i64, usize)> = None;
        for (i, check) in checks.iter().enumerate().filter(|(_, c)| c.rule.kind == LimitKind::HighRate) {
            match self.take(check, now_ms).await? {
                Leased::Spent(taken, room) => {
                    spent.0.push(taken);
                    tightest = tighter(tightest, room);
                }
                Leased::Limited { limit, retry_after_ms } => {
                    if limited.is_none_or(|(_, r, _)| retry_after_ms > r) {
                        limited = Some((limit, retry_after_ms, i));
                    }
                }
            }
        }
        if let Some((limit, retry_after, check)) = limited {
            // Not admitted: what was taken from other slices goes back.
            *spent = Taken::default();
            let retry_after = Duration::from_millis(retry_after.max(0) as u64);
            return Ok(LimitOutcome::Limited { limit, retry_after, check });
        }
        let exact: SmallVec<[usize; 4]> =
            (0..checks.len()).filter(|&i| checks[i].rule.kind == LimitKind::Exact).collect();
        if exact.is_empty() {
            return Ok(LimitOutcome::Admitted { tightest });
        }
        let outcome = self
            .redis
            .breaker
            .guard(self.check_exact(checks, &exact, now, &mut counted.uncount), |_| true)
            .await
            .map_err(|refused| LimiterError::Unreachable(Box::new(refused)))
            .and_then(|checked| checked);
        match outcome {
            Ok(LimitOutcome::Admitted { tightest: room }) => {
                Ok(LimitOutcome::Admitted { tightest: room.map_or(tightest, |room| tighter(tightest, room)) })
            }
            Ok(LimitOutcome::Limited { limit, retry_after, check }) => {
                counted.taken = Taken::default();
                Ok(LimitOutcome::Limited { limit, retry_after, check: exact.get(check).copied().unwrap_or(0) })
            }
            Err(e) => {
                counted.taken = Taken::default();
                Err(e)
            }
        }
    }

    /// One request from this replica's slice of `check`'s subject; waits for Redis only
    /// when nothing is held.
    async fn take(&self, check: &LimitCheck<'_>, now: i64) -> Result<Leased, LimiterError> {
        let settings = self.redis.settings;
        let (limit, window) = (check.rule.limit, check.rule.window.as_millis() as i64);
        let (sizing, period) = (settings.sizing(limit), settings.period_ms());
        // A renewal in flight is waited for a few times at most (each wait is bounded by
        // the breaker's timeout, which bounds every renewal); a released slice is replaced.
        let (mut waits, mut replaced) = (0, 0);
        while waits < 4 && replaced < 4 {
            let cell = self.cell(check, window);
            cell.set_terms(window, limit);
            let mut taken = take_sized(&cell, now, sizing, period);
            if let Take::Empty { renew: None } = taken {
                // Waiting for a renewal in flight: listen first, then look again, so its
                // answer cannot slip by between the look and the wait. (Only here: the hot
                // path builds no listener.)
                let renewed = cell.renewed.notified();
                tokio::pin!(renewed);
                renewed.as_mut().enable();
                taken = take_sized(&cell, now, sizing, period);
                if let Take::Empty { renew: None } = taken {
                    self.redis.stats.waited.fetch_add(1, Ordering::Relaxed);
                    waits += 1;
                    let _ = tokio::time::timeout(self.redis.breaker.timeout(), renewed).await;
                    continue;
                }
            }
            match taken {
                Take::Spent { generation, remaining, renew } => {
                    if let Some(sent) = renew {
                        self.redis.enqueue(cell.clone(), sent);
                    }
                    let room = Room { limit, remaining: remaining.min(limit.saturating_sub(1)) };
                    return Ok(Leased::Spent(Spent { cell, generation }, room));
                }
                Take::Limited { retry_after_ms } => return Ok(Leased::Limited { limit, retry_after_ms }),
                Take::Released => {
                    // Handed back just now: this replica takes a new slice.
                    self.leases.remove_if(cell.keys.0.as_str(), |held| Arc::ptr_eq(held, &cell));
                    replaced += 1;
                }
                Take::Empty { renew: Some(sent) } => {
                    self.redis.stats.waited.fetch_add(1, Ordering::Relaxed);
                    // Bounded like the waits: a slice granted and spent by others between
                    // our renewal and our look is renewed again a few times at most.
                    waits += 1;
                    if self.redis.breaker.is_open() {
                        // Refused with no I/O: no task per request while Redis is down.
                        self.redis.clone().renew(cell.clone(), sent).await?;
                    } else {
                        // In a task of its own: a caller that goes away (its deadline, a
                        // reset stream) cannot leave the slice marked as renewing forever.
                        let renewal = tokio::spawn(self.redis.clone().renew(cell.clone(), sent));
                        renewal.await.map_err(|e| LimiterError::Unreachable(Box::new(e)))??;
                    }
                }
                // Waited for above.
                Take::Empty { renew: None } => {}
            }
        }
        Err(LimiterError::Unreachable("no slice of the limit could be leased in time".into()))
    }

    /// The slice of `check`'s subject, by its counts key.
    fn cell(&self, check: &LimitCheck<'_>, window: i64) -> Arc<LeaseCell> {
        // The hot path: a subject seen before is found by its counts key written on the
        // stack (as `lease_keys` writes it), with no allocation.
        let (rule, subject) = (&check.rule.key, check.subject);
        let mut buffer = [0u8; 512];
        if let Some(cell) = counts_key_on_stack(&self.redis.prefix, rule, window, subject, &mut buffer)
            .and_then(|key| self.leases.get(key))
        {
            return cell;
        }
        let keys = lease_keys(&self.redis.prefix, rule, window, subject);
        let counts = keys.0.clone();
        let made = self.leases.get_or_insert_with(counts.as_str(), || {
            let field = format!("{}.{}", self.redis.replica, self.counter.fetch_add(1, Ordering::Relaxed));
            Ok::<_, std::convert::Infallible>(Arc::new(LeaseCell {
                lease: Mutex::new(Lease::default()),
                renewed: Notify::new(),
                keys,
                field,
                window: window.into(),
                limit: check.rule.limit.into(),
            }))
        });
        made.unwrap_or_else(|never| match never {})
    }

    /// Waits (at most `within`) for unanswered exact counts being taken back: at
    /// shutdown, before the runtime cancels them.
    pub async fn settle_uncounts(&self, within: Duration) {
        let all = self.redis.uncounting.acquire_many(MAX_UNCOUNTING as u32);
        let _ = tokio::time::timeout(within, all).await;
    }

    /// Releases every slice idle for `min_idle` (spends reported, the rest returned to
    /// Redis), and forgets it. The release task calls it every half period with half a
    /// period; a graceful shutdown with zero.
    pub async fn release_idle(&self, now: Timestamp, min_idle: Duration) {
        let min_idle = min_idle.as_millis() as i64;
        let mut released = Vec::new();
        for (walked, (key, cell)) in self.leases.iter().enumerate() {
            // A table of many subjects does not hold a worker for the whole walk.
            if walked % 1024 == 1023 {
                tokio::task::yield_now().await;
            }
            let Some(sent) = cell.lock().release(now.as_millis(), min_idle) else { continue };
            self.leases.remove_if(key.as_str(), |held| Arc::ptr_eq(held, &cell));
            released.push((cell, sent));
            // Batched, a bounded number at once: a burst of idle subjects does not flood
            // Redis.
            if released.len() >= 16 * renewals::MAX_BATCH {
                self.redis.renew_all(std::mem::take(&mut released)).await;
            }
        }
        if !released.is_empty() {
            self.redis.renew_all(released).await;
        }
    }

    /// Exact limits (the positions `exact` of `checks`): checked and counted in Redis by
    /// one script per slot (one in all on a single node), sent at once. A refusal's
    /// `check` is a position in `exact`.
    /// `uncount` holds the request's count from the moment a script may be sent until
    /// its answer is read (see [`Uncount`]). On a cluster, a request one slot refuses
    /// after others counted it is taken out of those (by `uncount`, as the call ends):
    /// every slot's script counts only what it admits, so no limit admits more than its
    /// limit; until the removal lands, the count may refuse another request early.
    async fn check_exact(
        &self,
        checks: &[LimitCheck<'_>],
        exact: &[usize],
        now: Timestamp,
        uncount: &mut Option<Uncount>,
    ) -> Result<LimitOutcome, LimiterError> {
        let redis = &self.redis;
        let connection = redis.connection().await?;
        let keys: SmallVec<[String; 4]> =
            exact.iter().map(|&i| format!("{}{}:{}", redis.prefix, checks[i].rule.key, checks[i].subject)).collect();
        let terms: SmallVec<[(i64, u32); 4]> =
            exact.iter().map(|&i| (checks[i].rule.window.as_millis() as i64, checks[i].rule.limit)).collect();
        let member = format!("{}-{}", redis.replica, self.counter.fetch_add(1, Ordering::Relaxed));
        let groups = by_slot(&keys, redis.client.is_cluster());
        *uncount =
            Some(Uncount { redis: Some(redis.clone()), keys: keys.clone(), member: member.clone(), refused: false });
        let mut answers: SmallVec<[Vec<i64>; 2]> = SmallVec::new();
        if let [_] = groups[..] {
            answers.push(redis.count_in_slot(connection, &keys, &terms, now.as_millis(), &member).await?);
        } else {
            // One task per slot, so that the scripts go out together.
            let mut scripts = tokio::task::JoinSet::new();
            for (n, group) in groups.iter().enumerate() {
                let keys: Vec<String> = group.iter().map(|&g| keys[g].clone()).collect();
                let terms: Vec<(i64, u32)> = group.iter().map(|&g| terms[g]).collect();
                let (redis, connection, member) = (redis.clone(), connection.clone(), member.clone());
                scripts.spawn(async move {
                    (n, redis.count_in_slot(connection, &keys, &terms, now.as_millis(), &member).await)
                });
            }
            answers.resize(groups.len(), Vec::new());
            while let Some(done) = scripts.join_next().await {
                let (n, answer) = done.map_err(|e| LimiterError::Unreachable(Box::new(e)))?;
                answers[n] = answer?;
            }
        }
        let mut tightest: Option<Room> = None;
        // The refusal with the longest wait: (limit, retry after, position in `exact`).
        let mut refused: Option<(i64, i64, usize)> = None;
        for (answer, group) in answers.iter().zip(&groups) {
            let [admitted, limit, value, ..] = answer[..] else {
                return Err(LimiterError::Unreachable("the limit script answered in an unknown shape".into()));
            };
            if admitted == 1 {
                if value >= 0 {
                    tightest = tighter(tightest, Room { limit: limit.max(0) as u32, remaining: value.max(0) as u32 });
                }
            } else if refused.is_none_or(|(_, retry, _)| value > retry) {
                let which = answer.get(3).map_or(0, |i| (*i - 1).max(0) as usize);
                refused = Some((limit, value, group.get(which).copied().unwrap_or(0)));
            }
        }
        let Some((limit, retry_after, check)) = refused else { return Ok(LimitOutcome::Admitted { tightest }) };
        match (uncount.as_mut(), answers.iter().any(|answer| answer.first() == Some(&1))) {
            // Counted in another slot: taken back from there (see above).
            (Some(held), true) => held.refused = true,
            // Refused everywhere: nothing was counted. Admitted, the count stays held
            // until the call is decided (see `Counted`).
            _ => Uncount::disarm(uncount),
        }
        Ok(LimitOutcome::Limited {
            limit: limit.max(0) as u32,
            retry_after: Duration::from_millis(retry_after.max(0) as u64),
            check,
        })
    }
}

fn tighter(current: Option<Room>, room: Room) -> Option<Room> {
    Some(match current {
        Some(t) if t.remaining <= room.remaining => t,
        _ => room,
    })
}

impl Redis {
    async fn connection(&self) -> Result<Connection, LimiterError> {
        self.connection
            .get_or_try_init(|| self.client.connect())
            .await
            .cloned()
            .map_err(|e| LimiterError::Unreachable(Box::new(e)))
    }

    /// The exact script over `keys` (one slot's), with their windows and limits in `terms`.
    async fn count_in_slot(
        &self,
        mut connection: Connection,
        keys: &[String],
        terms: &[(i64, u32)],
        now: i64,
        member: &str,
    ) -> Result<Vec<i64>, LimiterError> {
        let mut invocation = self.exact.prepare_invoke();
        for key in keys {
            invocation.key(key);
        }
        invocation.arg(now).arg(member);
        for (window, limit) in terms {
            invocation.arg(window).arg(limit);
        }
        invocation.invoke_async(&mut connection).await.map_err(|e| LimiterError::Unreachable(Box::new(e)))
    }

    /// Takes an unanswered request's `member` out of the exact limits' `keys`. A member the
    /// script never added is not there, so this is right whether or not the script ran.
    /// Across a reconnection the script may still be on its way on the old connection
    /// (through a proxy, say) and run after the removal: that count stays.
    async fn uncount(&self, keys: &[String], member: &str, refused: bool) {
        for attempt in 0..UNCOUNT_TRIES {
            if attempt > 0 {
                tokio::time::sleep(UNCOUNT_RETRY_AFTER * attempt).await;
            }
            if let Ok(removed) = self.remove_member(keys, member).await {
                // After a try whose answer was lost, that try may be what removed it.
                if refused {
                    self.stats.rolled_back.fetch_add(1, Ordering::Relaxed);
                } else if attempt > 0 || removed {
                    self.stats.uncounted.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
        }
        self.stats.uncount_lost.fetch_add(1, Ordering::Relaxed);
        tracing::debug!("Redis did not take back an unanswered rate-limit count: it stays until its window passes");
    }

    /// One try at taking `member` out of `keys`: `true` once Redis answered.
    async fn uncount_once(&self, keys: &[String], member: &str) -> bool {
        self.remove_member(keys, member).await.is_ok()
    }

    /// Whether any of `keys` held `member`, which is now gone from all of them (one
    /// pipeline per slot).
    async fn remove_member(&self, keys: &[String], member: &str) -> Result<bool, LimiterError> {
        let mut connection = self.connection().await?;
        let mut removed = false;
        for group in by_slot(keys, self.client.is_cluster()) {
            let mut removal = redis::pipe();
            for i in group {
                removal.zrem(&keys[i], member);
            }
            let counts = removal
                .query_async::<Vec<u64>>(&mut connection)
                .await
                .map_err(|e| LimiterError::Unreachable(Box::new(e)))?;
            removed |= counts.iter().any(|&n| n > 0);
        }
        Ok(removed)
    }

    /// Sends `sent` for `cell`'s slice alone, at once (a request waits for it), tells the
    /// slice the answer, and wakes whoever waits.
    async fn renew(self: Arc<Self>, cell: Arc<LeaseCell>, sent: super::lease::Renewal) -> Result<(), LimiterError> {
        self.renew_slices(&[(cell, sent)]).await
    }
}
