//! Rate limits: sliding windows — never more than `limit` admitted requests in any
//! `window` for a subject, so there is no burst at a fixed window's boundary. An *exact*
//! limit keeps a log of admitted requests; a *high-rate* one counts in buckets
//! ([`window::BucketedWindow`]): constant memory, refusing up to a hundredth of the window
//! early, never admitting late.
//!
//! A request is checked against all of its limits in one step: it is admitted only if
//! every limit has room, and only then counted in all of them. A denied request uses no
//! quota, also when it is denied after its limits (for credits): what it counted is held
//! in an [`Admission`] until the call is decided, and given back unless kept. In one process the counters live in memory ([`LocalLimiter`]); across replicas
//! they live in Redis ([`redis::RedisLimiter`]): exact limits checked and counted there by
//! one Lua script, high-rate ones spent from slices each replica leases ([`lease`]).

pub mod connection;
pub mod lease;
pub mod redis;
pub mod window;

use crate::breaker::{Breaker, BreakerSettings};
use crate::clock::Clock;
use crate::domain::Timestamp;
use crate::policy::{LimitKind, LimitRule, OnStoreError};
use smallvec::SmallVec;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One limit to check for one subject ("acct_42", "key_…", an application id, an IP).
#[derive(Debug, Clone, Copy)]
pub struct LimitCheck<'a> {
    pub rule: &'a LimitRule,
    pub subject: &'a str,
    /// Whose limit it is: a refusal says which kind of limit was reached.
    pub source: LimitSource,
}

/// Where a limit comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitSource {
    /// The policy's: its global limit or the route's.
    Policy,
    /// The key's own terms.
    Key,
    /// The terms of the key's owner, shared by all of the owner's keys.
    Owner,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitOutcome {
    /// Admitted and counted; the limit with the least room left, if any applied.
    Admitted { tightest: Option<Room> },
    /// Not admitted, and not counted anywhere; `check` is the position of the limit that
    /// refused longest among the checks (its [`LimitCheck::source`] says whose it is).
    Limited { limit: u32, retry_after: Duration, check: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    pub limit: u32,
    pub remaining: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum LimiterError {
    #[error("the rate limit store is unreachable")]
    Unreachable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

pub enum Limiter {
    Local(LocalLimiter),
    Redis(Box<redis::RedisLimiter>),
}

/// A limiter's background tasks: they stop when this drops.
#[must_use = "the limiter's background tasks stop when this drops"]
pub struct LimiterTasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for LimiterTasks {
    fn drop(&mut self) {
        self.0.iter().for_each(tokio::task::JoinHandle::abort);
    }
}

impl Limiter {
    /// Counts in this process.
    pub fn local() -> Self {
        Limiter::Local(LocalLimiter::default())
    }

    /// Counts in the Redis at `url`, every key under `prefix`, each call waiting for it as
    /// `breaker` says; high-rate limits are spent from slices as `leases` say. Does not
    /// connect yet.
    /// Counting in the Redis (a node or a cluster) `client` names
    /// ([`connection::StoreClient::open`]).
    pub fn redis(
        client: connection::StoreClient,
        prefix: String,
        breaker: BreakerSettings,
        leases: lease::LeaseSettings,
    ) -> Result<Self, ::redis::RedisError> {
        let breaker = Arc::new(Breaker::new("rate limit store", breaker));
        Ok(Limiter::Redis(Box::new(redis::RedisLimiter::with_client(client, prefix, breaker, leases)?)))
    }

    /// Why TLS to Redis cannot work, tried once at start-up; `None` in process, when it
    /// works, and when Redis is only down.
    pub async fn tls_refusal(&self) -> Option<String> {
        match self {
            Limiter::Redis(redis) => redis.tls_refusal().await,
            Limiter::Local(_) => None,
        }
    }

    /// Starts what the limiter does in the background, until the tasks drop: on Redis, the
    /// probe that finds a store marked down up again, and the release of idle slices.
    pub fn start(self: &Arc<Self>, clock: Arc<dyn Clock>) -> LimiterTasks {
        let Limiter::Redis(redis) = &**self else { return LimiterTasks(Vec::new()) };
        let probed = self.clone();
        let probe = redis.breaker().spawn_probe(move || {
            let limiter = probed.clone();
            async move {
                match &*limiter {
                    Limiter::Redis(redis) => redis.ping().await,
                    Limiter::Local(_) => true,
                }
            }
        });
        LimiterTasks(vec![probe, tokio::spawn(release_idle_leases(self.clone(), clock))])
    }

    /// Before the process ends: counts of requests nobody was answered for are taken back
    /// (three tries of up to 500 ms each, 250 and 500 ms apart), and slices of high-rate
    /// limits go back to Redis, for the other replicas to spend.
    pub async fn shut_down(&self, now: Timestamp) {
        if let Limiter::Redis(redis) = self {
            redis.settle_uncounts(Duration::from_millis(2_500)).await;
            redis.release_idle(now, Duration::ZERO).await;
        }
    }

    /// The shared store's breaker; `None` in process.
    pub fn breaker(&self) -> Option<&Arc<Breaker>> {
        match self {
            Limiter::Redis(redis) => Some(redis.breaker()),
            Limiter::Local(_) => None,
        }
    }

    /// Checks and counts, for good: [`Limiter::admit`] with the admission kept.
    pub async fn check(&self, checks: &[LimitCheck<'_>], now: Timestamp) -> Result<LimitOutcome, LimiterError> {
        let (outcome, admission) = self.admit(checks, now).await?;
        admission.keep();
        Ok(outcome)
    }

    /// Checks and counts; the counts are the call's to keep ([`Admission::keep`]) once it
    /// is allowed, and are given back otherwise.
    pub async fn admit(
        &self,
        checks: &[LimitCheck<'_>],
        now: Timestamp,
    ) -> Result<(LimitOutcome, Admission), LimiterError> {
        if checks.is_empty() {
            return Ok((LimitOutcome::Admitted { tightest: None }, Admission::default()));
        }
        match self {
            Limiter::Local(local) => Ok(local.admit(checks, now)),
            Limiter::Redis(shared) => shared.admit(checks, now).await,
        }
    }
}

/// Every half lease period, releases the slices of high-rate limits idle that long: their
/// spends are reported to Redis and what they still hold goes back to the other replicas.
async fn release_idle_leases(limiter: Arc<Limiter>, clock: Arc<dyn Clock>) {
    let Limiter::Redis(redis) = &*limiter else { return };
    let half = redis.lease_settings().period / 2;
    let mut every = tokio::time::interval(half);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        redis.release_idle(clock.now(), half).await;
    }
}

/// What an admitted request counted, until its call is decided: kept by a call that is
/// allowed, given back by one refused after its limits (its credits were spent) — on
/// every limiter, exactly. Dropped unkept (an error, a caller that went away), it is
/// given back too.
#[must_use = "an admission is kept or given back"]
#[derive(Default)]
pub struct Admission {
    local: Option<LocalCounts>,
    redis: Option<redis::Counted>,
}

impl Admission {
    /// The call was allowed: its counts stand.
    pub fn keep(mut self) {
        self.local = None;
        if let Some(redis) = self.redis.take() {
            redis.keep();
        }
    }

    /// The call was refused: its counts are taken back before this returns (in Redis, as
    /// far as Redis answers within the limiter's timeout; past it, in the background).
    pub async fn give_back(mut self) {
        if let Some(redis) = self.redis.take() {
            redis.give_back().await;
        }
        // The local counts go back as `self` drops.
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some(local) = self.local.take() {
            local.give_back();
        }
    }
}

/// The logs a request was counted in, locally, and when.
struct LocalCounts {
    logs: SmallVec<[(Log, i64); 4]>,
    at: i64,
}

impl LocalCounts {
    fn give_back(self) {
        for (log, window) in &self.logs {
            log.lock().unwrap_or_else(|e| e.into_inner()).give_back(*window, self.at);
        }
    }
}

/// Whether a request under `checks` is counted locally while the shared store is
/// unreachable (every limit allows it), rather than refused.
fn falls_back(checks: &[LimitCheck<'_>]) -> bool {
    checks.iter().all(|c| c.rule.on_store_error == OnStoreError::Local)
}

/// What one subject under one rule has admitted.
type Log = Arc<Mutex<Tally>>;

/// An exact log (oldest first) or a high-rate limit's buckets, as the rule's kind says.
#[derive(Debug)]
pub enum Tally {
    Exact(VecDeque<i64>),
    HighRate(window::BucketedWindow),
}

impl Default for Tally {
    fn default() -> Self {
        Tally::Exact(VecDeque::new())
    }
}

impl Tally {
    /// Room after admitting one more (`Ok`), or the ms until one fits (`Err`). A rule whose
    /// kind changed (a policy reload) keeps its counts, converted.
    fn room(&mut self, rule: &LimitRule, now: i64) -> Result<u32, i64> {
        let window = rule.window.as_millis() as i64;
        self.convert(rule.kind, window);
        match self {
            Tally::Exact(log) => window_room(log, rule.limit, window, now),
            Tally::HighRate(buckets) => buckets.room(rule.limit, window, now),
        }
    }

    fn admit(&mut self, rule: &LimitRule, now: i64) {
        match self {
            Tally::Exact(log) => log.push_back(now),
            Tally::HighRate(buckets) => buckets.admit(rule.window.as_millis() as i64, now),
        }
    }

    /// Takes back one request admitted at `at` (the newest at or before it).
    fn give_back(&mut self, window: i64, at: i64) {
        match self {
            Tally::Exact(log) => {
                if let Some(i) = log.iter().rposition(|&t| t <= at) {
                    log.remove(i);
                }
            }
            Tally::HighRate(buckets) => buckets.give_back(window, at),
        }
    }

    fn convert(&mut self, kind: LimitKind, window: i64) {
        match (kind, &*self) {
            (LimitKind::HighRate, Tally::Exact(log)) => {
                let mut buckets = window::BucketedWindow::default();
                log.iter().for_each(|&at| buckets.admit(window, at));
                *self = Tally::HighRate(buckets);
            }
            (LimitKind::Exact, Tally::HighRate(buckets)) => {
                *self = Tally::Exact(buckets.admissions(window).into());
            }
            _ => {}
        }
    }
}

/// In-process sliding-window logs. Exact for one process.
pub struct LocalLimiter {
    /// By [`log_key`]: one string, so a hit can be looked up by `&str` without allocating.
    /// quick_cache, as for the record cache: a read records no access log (moka's
    /// bookkeeping showed in the hot path's profile), and its eviction keeps the subjects
    /// in use over a flood of new ones.
    logs: quick_cache::sync::Cache<String, Log>,
}

impl Default for LocalLimiter {
    fn default() -> Self {
        Self::new(1_000_000)
    }
}

impl LocalLimiter {
    /// At most `capacity` subjects are kept; the least used go first.
    pub fn new(capacity: u64) -> Self {
        Self { logs: quick_cache::sync::Cache::new(usize::try_from(capacity).unwrap_or(usize::MAX)) }
    }

    pub fn check(&self, checks: &[LimitCheck<'_>], now: Timestamp) -> LimitOutcome {
        let (outcome, admission) = self.admit(checks, now);
        admission.keep();
        outcome
    }

    /// Checks and counts; the counts go back unless the admission is kept.
    pub fn admit(&self, checks: &[LimitCheck<'_>], now: Timestamp) -> (LimitOutcome, Admission) {
        let logs: SmallVec<[Log; 4]> = checks.iter().map(|c| self.log(&c.rule.key, c.subject)).collect();
        // Always locked in one global order (by the log's address), whatever order the
        // checks came in — a key's own limits may be listed differently by two versions of
        // its record — so two requests never wait on each other in a cycle; a log named
        // twice is locked once.
        let mut order: SmallVec<[usize; 4]> = (0..logs.len()).collect();
        order.sort_by_key(|&i| Arc::as_ptr(&logs[i]));
        let mut guards: SmallVec<[Option<std::sync::MutexGuard<'_, Tally>>; 4]> =
            (0..logs.len()).map(|_| None).collect();
        // Which check holds the guard of each check's log.
        let mut holder: SmallVec<[usize; 4]> = (0..logs.len()).collect();
        let mut previous: Option<usize> = None;
        for &i in &order {
            match previous {
                Some(p) if Arc::ptr_eq(&logs[p], &logs[i]) => holder[i] = holder[p],
                _ => guards[i] = Some(logs[i].lock().unwrap_or_else(|e| e.into_inner())),
            }
            previous = Some(i);
        }
        let now = now.as_millis();
        let mut limited: Option<(u32, i64, usize)> = None;
        let mut tightest: Option<Room> = None;
        for (i, check) in checks.iter().enumerate() {
            let Some(tally) = guards[holder[i]].as_mut() else { continue };
            let room = tally.room(check.rule, now);
            match room {
                Err(retry_after) if limited.is_none_or(|(_, r, _)| retry_after > r) => {
                    limited = Some((check.rule.limit, retry_after, i))
                }
                Err(_) => {}
                Ok(remaining) if tightest.is_none_or(|t| remaining < t.remaining) => {
                    tightest = Some(Room { limit: check.rule.limit, remaining })
                }
                Ok(_) => {}
            }
        }
        if let Some((limit, retry_after, check)) = limited {
            let retry_after = Duration::from_millis(retry_after.max(0) as u64);
            return (LimitOutcome::Limited { limit, retry_after, check }, Admission::default());
        }
        let mut counted = LocalCounts { logs: SmallVec::new(), at: now };
        for (i, check) in checks.iter().enumerate() {
            // A log checked twice is counted once: by the check that holds its guard.
            if holder[i] == i {
                if let Some(tally) = guards[i].as_mut() {
                    tally.admit(check.rule, now);
                    counted.logs.push((logs[i].clone(), check.rule.window.as_millis() as i64));
                }
            }
        }
        drop(guards);
        (LimitOutcome::Admitted { tightest }, Admission { local: Some(counted), redis: None })
    }
}

impl LocalLimiter {
    /// The log of `subject` under the rule `rule`; a subject seen before costs no allocation.
    fn log(&self, rule: &str, subject: &str) -> Log {
        let mut buffer = [0u8; 256];
        let new = || Ok::<_, std::convert::Infallible>(Log::default());
        let log = match log_key(rule, subject, &mut buffer) {
            Some(key) => self.logs.get_or_insert_with(key, new),
            None => self.logs.get_or_insert_with(log_key_owned(rule, subject).as_str(), new),
        };
        log.unwrap_or_else(|never| match never {})
    }
}

/// `<rule length>:<rule><subject>`: the length prefix keeps any two (rule, subject) pairs
/// apart whatever characters they hold. Written into `buffer` when it fits.
fn log_key<'b>(rule: &str, subject: &str, buffer: &'b mut [u8]) -> Option<&'b str> {
    StackKey::new(buffer).number(rule.len() as u64)?.text(":")?.text(rule)?.text(subject).map(StackKey::finish)
}

/// A key written into the caller's stack buffer, text and numbers as `format!` writes them:
/// every request looks its subjects up this way, with no allocation and none of the
/// formatting machinery (`write!` into a buffer cost as much as the lookup itself).
pub(crate) struct StackKey<'b> {
    buffer: &'b mut [u8],
    len: usize,
}

impl<'b> StackKey<'b> {
    pub fn new(buffer: &'b mut [u8]) -> Self {
        Self { buffer, len: 0 }
    }

    /// `None` when it does not fit.
    pub fn text(self, text: &str) -> Option<Self> {
        self.bytes(text.as_bytes())
    }

    pub fn number(self, mut n: u64) -> Option<Self> {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.bytes(&digits[at..])
    }

    fn bytes(mut self, bytes: &[u8]) -> Option<Self> {
        let end = self.len.checked_add(bytes.len())?;
        self.buffer.get_mut(self.len..end)?.copy_from_slice(bytes);
        self.len = end;
        Some(self)
    }

    pub fn finish(self) -> &'b str {
        std::str::from_utf8(&self.buffer[..self.len]).expect("only text and ASCII digits were written")
    }
}

fn log_key_owned(rule: &str, subject: &str) -> String {
    format!("{}:{rule}{subject}", rule.len())
}

/// Drops what has left the window `(now - window, now]`; then either the room left after
/// admitting one more (`Ok`) or how long until the oldest entry leaves (`Err`, in ms).
fn window_room(log: &mut VecDeque<i64>, limit: u32, window: i64, now: i64) -> Result<u32, i64> {
    while log.front().is_some_and(|&t| t <= now - window) {
        log.pop_front();
    }
    if log.len() < limit as usize {
        Ok(limit - log.len() as u32 - 1)
    } else {
        Err(log.front().map_or(0, |&oldest| oldest + window - now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::LimitSubject;

    fn rule(key: &str, limit: u32, window_secs: u64) -> LimitRule {
        LimitRule {
            key: key.into(),
            limit,
            window: Duration::from_secs(window_secs),
            per: LimitSubject::Account,
            on_store_error: OnStoreError::Closed,
            kind: LimitKind::Exact,
        }
    }

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_millis(seconds * 1000)
    }

    #[test]
    fn the_eleventh_in_an_hour_waits_for_the_first_to_leave() {
        let limiter = LocalLimiter::default();
        let hourly = rule("r", 10, 3600);
        let check = [LimitCheck { rule: &hourly, subject: "acct", source: LimitSource::Policy }];
        for i in 0..10 {
            let outcome = limiter.check(&check, at(i * 60));
            assert_eq!(outcome, LimitOutcome::Admitted { tightest: Some(Room { limit: 10, remaining: 9 - i as u32 }) });
        }
        // 10 admitted between t=0 and t=540 s; the 11th at t=600 s waits until t=3600 s.
        assert_eq!(
            limiter.check(&check, at(600)),
            LimitOutcome::Limited { limit: 10, retry_after: Duration::from_secs(3000), check: 0 }
        );
        assert!(matches!(limiter.check(&check, at(3599)), LimitOutcome::Limited { .. }));
        assert!(matches!(limiter.check(&check, at(3600)), LimitOutcome::Admitted { .. }));
        // No boundary burst: the second request (t=60) still counts until t=3660.
        assert!(matches!(limiter.check(&check, at(3601)), LimitOutcome::Limited { .. }));
    }

    #[test]
    fn a_denied_request_uses_no_quota_anywhere() {
        let limiter = LocalLimiter::default();
        let wide = rule("wide", 100, 60);
        let narrow = rule("narrow", 1, 60);
        let checks = [
            LimitCheck { rule: &wide, subject: "a", source: LimitSource::Policy },
            LimitCheck { rule: &narrow, subject: "a", source: LimitSource::Policy },
        ];
        assert!(matches!(limiter.check(&checks, at(0)), LimitOutcome::Admitted { .. }));
        for _ in 0..5 {
            assert!(matches!(limiter.check(&checks, at(1)), LimitOutcome::Limited { .. }));
        }
        let only_wide = [LimitCheck { rule: &wide, subject: "a", source: LimitSource::Policy }];
        let LimitOutcome::Admitted { tightest: Some(room) } = limiter.check(&only_wide, at(2)) else { panic!() };
        assert_eq!(room.remaining, 98, "only the one admitted request was counted");
    }

    #[test]
    fn a_limit_checked_twice_is_locked_once_and_counted_once() {
        let limiter = LocalLimiter::default();
        let two = rule("dup", 2, 60);
        let checks = [
            LimitCheck { rule: &two, subject: "a", source: LimitSource::Policy },
            LimitCheck { rule: &two, subject: "a", source: LimitSource::Policy },
        ];
        assert!(matches!(limiter.check(&checks, at(0)), LimitOutcome::Admitted { .. }));
        assert!(matches!(limiter.check(&checks, at(0)), LimitOutcome::Admitted { .. }));
        assert!(matches!(limiter.check(&checks, at(0)), LimitOutcome::Limited { .. }));
    }

    #[test]
    fn log_keys_never_run_together() {
        let mut a = [0u8; 256];
        let mut b = [0u8; 256];
        assert_ne!(log_key("ab", "c", &mut a), log_key("a", "bc", &mut b));
        assert_eq!(log_key("global", "acct_1", &mut a), Some("6:globalacct_1"));
        assert_eq!(log_key(&"r".repeat(300), "s", &mut a), None, "too long for the buffer");
        assert_eq!(log_key_owned("global", "acct_1"), "6:globalacct_1");
        let mut buffer = [0u8; 40];
        for n in [0, 7, 10, 60_000, u64::MAX] {
            let written = StackKey::new(&mut buffer).text("n=").and_then(|k| k.number(n)).map(StackKey::finish);
            assert_eq!(written, Some(format!("n={n}").as_str()));
        }
        let mut small = [0u8; 3];
        assert!(StackKey::new(&mut small).text("abcd").is_none(), "does not fit");
    }

    #[test]
    fn a_high_rate_limit_holds_and_keeps_its_counts_when_its_kind_changes() {
        let limiter = LocalLimiter::default();
        let mut global = LimitRule { kind: LimitKind::HighRate, ..rule("global", 100, 60) };
        let check = |rule: &LimitRule, s: i64| {
            limiter.check(&[LimitCheck { rule, subject: "acct", source: LimitSource::Policy }], at(s))
        };
        for i in 0..100 {
            assert!(matches!(check(&global, i % 30), LimitOutcome::Admitted { .. }), "{i}");
        }
        let LimitOutcome::Limited { retry_after, .. } = check(&global, 30) else { panic!("the 101st") };
        // The first bucket ([0, 0.6 s)) leaves the ring at 60.6 s.
        assert_eq!(retry_after, Duration::from_millis(30_600));
        // A reload makes it exact: the counts stay (at their buckets' starts).
        global.kind = LimitKind::Exact;
        assert!(matches!(check(&global, 31), LimitOutcome::Limited { .. }));
        global.kind = LimitKind::HighRate;
        assert!(matches!(check(&global, 32), LimitOutcome::Limited { .. }));
        assert!(matches!(check(&global, 61), LimitOutcome::Admitted { .. }), "the first second's requests left");
    }

    #[test]
    fn subjects_are_counted_apart() {
        let limiter = LocalLimiter::default();
        let one = rule("one", 1, 60);
        assert!(matches!(
            limiter.check(&[LimitCheck { rule: &one, subject: "a", source: LimitSource::Policy }], at(0)),
            LimitOutcome::Admitted { .. }
        ));
        assert!(matches!(
            limiter.check(&[LimitCheck { rule: &one, subject: "b", source: LimitSource::Policy }], at(0)),
            LimitOutcome::Admitted { .. }
        ));
        assert!(matches!(
            limiter.check(&[LimitCheck { rule: &one, subject: "a", source: LimitSource::Policy }], at(0)),
            LimitOutcome::Limited { .. }
        ));
    }
}
