//! argon2id hashing and verification, off the async workers, shared fairly.
//!
//! Each verification costs ~14 ms of CPU at the OWASP minimum; an imported bcrypt or
//! argon2 hash may cost many times that. Verifications run on the blocking pool, each
//! holding one of a few **slots**, and wait for a slot in a queue of their key's account:
//! - what a job costs is estimated from its hash ([`cost`]): argon2 m × t, bcrypt 2^cost
//!   (measured against argon2, [`BCRYPT_KIB_PASSES_PER_ROUND`]);
//! - one account's jobs hold at most half the slots (at least one), so with two slots or
//!   more another account finds one free while the first one's expensive work runs (with
//!   one, it waits for the job running, whose cost the import cap bounds);
//! - free slots go to the accounts waiting in turn, by deficit round robin on cost: an
//!   account of 400 ms bcrypts gets as much CPU as one of 26 ms argon2s, not 15 times it;
//! - each account's queue is bounded by cost; past it the caller is told to come back
//!   ([`VerifierError::Busy`], answered throttled with a retry time), and that account
//!   only is refused;
//! - a job still waiting when its caller leaves is taken out of the queue and costs
//!   nothing; only a job that has its slot runs on, detached (the permit travels into the
//!   blocking task, so a caller that goes away does not free a slot while its hash runs).
//!
//! Admin hashing (new, rolled and rotated keys) does not wait in these queues: it has a
//! slot of its own and a deadline ([`ADMIN_HASH_DEADLINE`]), so guessing at any account's
//! keys can neither hang `CreateApiKey` nor take its CPU.

use crate::domain::{AccountId, SecretHash};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, Semaphore};
use tracing::Instrument;

#[derive(Debug, Clone, Copy)]
pub struct Argon2Settings {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    /// Verifications running at once (slots); one account's hold at most half of them.
    pub max_concurrent: usize,
}

impl Argon2Settings {
    /// The OWASP minimum for argon2id: m = 19 MiB, t = 2, p = 1.
    pub const OWASP_MEMORY_KIB: u32 = 19 * 1024;
    pub const OWASP_ITERATIONS: u32 = 2;

    /// What one verification at these settings costs, in KiB-passes (see [`cost`]).
    pub fn cost(&self) -> u64 {
        u64::from(self.memory_kib).max(1) * u64::from(self.iterations).max(1)
    }

    /// Slots one account's verifications may hold: half of them, at least one.
    pub fn per_account(&self) -> usize {
        (self.max_concurrent / 2).max(1)
    }
}

impl Default for Argon2Settings {
    fn default() -> Self {
        Self {
            memory_kib: Self::OWASP_MEMORY_KIB,
            iterations: Self::OWASP_ITERATIONS,
            parallelism: 1,
            // Half the cores, at least two, and one account holds at most half of them:
            // misses (a flood of first uses) take no more than half the machine from the hot
            // keys on four cores or more, one account's (an attacker's guesses at its
            // expensive imports) no more than a quarter, and another account's first use
            // always finds a slot beside them (on 2 cores: two slots, one per account).
            max_concurrent: std::thread::available_parallelism().map_or(2, |n| (n.get() / 2).max(2)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VerifierError {
    #[error("invalid argon2 parameters: {0}")]
    Params(String),
    #[error("the stored secret hash cannot be parsed")]
    BadHash,
    #[error("hashing failed: {0}")]
    Hash(String),
    /// The OS random source failed while making a salt.
    #[error("the OS random source failed")]
    Salt(#[from] getrandom::Error),
    #[error("the hashing task did not finish")]
    Task(#[from] tokio::task::JoinError),
    /// The key's account has as much verification work waiting as it may: its callers
    /// are told to come back (other accounts' queues are their own).
    #[error("this account's verifications are queued to their limit")]
    Busy,
    /// Admin hashing waited its whole deadline for its slot.
    #[error("hashing a new secret is busy; retry in {} s", .0.as_secs())]
    AdminBusy(Duration),
}

/// An account's queue holds at most this many verifications at the server's own cost (at
/// least the OWASP minimum's) per slot it may hold (~26 ms each measured here: about a quarter second's work per slot,
/// an edge's whole budget). A job that costs more is still taken into an empty queue.
pub const QUEUED_PER_SLOT: u64 = 16;

/// An imported hash may cost at most this many verifications at the server's own settings
/// (counted from at least the OWASP minimum): 16 × (19 MiB × 2) allows bcrypt 12 and
/// argon2 up to m × t = 608 MiB-passes (e.g. 64 MiB, t = 9), ~0.4 s per guess.
pub const IMPORT_COST_MULTIPLE: u64 = 16;

/// One verification at the OWASP minimum (m = 19 MiB, t = 2), in KiB-passes.
const OWASP_COST: u64 = Argon2Settings::OWASP_MEMORY_KIB as u64 * Argon2Settings::OWASP_ITERATIONS as u64;

/// How long admin hashing waits for its slot before answering UNAVAILABLE.
pub const ADMIN_HASH_DEADLINE: Duration = Duration::from_secs(5);

/// What verifying a hash costs (kept beside the imported hashes it prices).
pub use crate::domain::imported::{cost, BCRYPT_KIB_PASSES_PER_ROUND};

pub struct Verifier {
    argon2: Argon2<'static>,
    lanes: Arc<Lanes>,
    /// Admin hashing's own slot, and how often it was not had within the deadline.
    admin: Arc<Semaphore>,
    admin_refused: AtomicU64,
    /// What one verification at the server's own settings costs (see [`cost`]).
    own_cost: u64,
    verifications: AtomicU64,
    /// What every hash [`Verifier::hash`] makes starts with: algorithm, version, parameters.
    current_prefix: String,
    /// Seconds per verification, waiting for a slot included: what a cache miss costs.
    durations: Histogram,
}

/// A slot to run one verification in, for an account; given back when dropped (after the
/// work, inside the blocking task).
pub struct Slot {
    lanes: Arc<Lanes>,
    account: AccountId,
    /// When its caller started waiting.
    since: Instant,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.lanes.release(&self.account);
    }
}

impl Verifier {
    pub fn new(settings: Argon2Settings) -> Result<Self, VerifierError> {
        let params = Params::new(settings.memory_kib, settings.iterations, settings.parallelism, None)
            .map_err(|e| VerifierError::Params(e.to_string()))?;
        let slots = settings.max_concurrent.max(1);
        let own_cost = settings.cost();
        // Turns and queue bounds count in verifications of at least the OWASP minimum's
        // cost: a server set cheaper (tests) still queues a real import's bcrypt.
        let unit = own_cost.max(OWASP_COST);
        Ok(Self {
            argon2: Argon2::new(Algorithm::Argon2id, Version::V0x13, params),
            lanes: Arc::new(Lanes {
                slots,
                per_account: settings.per_account().min(slots),
                quantum: unit,
                max_waiting_cost: unit * QUEUED_PER_SLOT * settings.per_account().min(slots) as u64,
                state: Mutex::default(),
                queued: AtomicU64::new(0),
                refused: AtomicU64::new(0),
                abandoned: AtomicU64::new(0),
            }),
            admin: Arc::new(Semaphore::new(1)),
            admin_refused: AtomicU64::new(0),
            own_cost,
            verifications: AtomicU64::new(0),
            current_prefix: format!(
                "$argon2id$v=19$m={},t={},p={}$",
                settings.memory_kib, settings.iterations, settings.parallelism
            ),
            // 1 ms to ~4 s.
            durations: Histogram::new(exponential_buckets(0.001, 2.0, 13)),
        })
    }

    /// Hashes a new secret into a PHC string with a fresh random salt, in admin hashing's
    /// own slot: past [`ADMIN_HASH_DEADLINE`] waiting for it, [`VerifierError::AdminBusy`].
    pub async fn hash(&self, secret: &[u8]) -> Result<SecretHash, VerifierError> {
        let permit = tokio::time::timeout(ADMIN_HASH_DEADLINE, self.admin.clone().acquire_owned())
            .await
            .map_err(|_| {
                self.admin_refused.fetch_add(1, Ordering::Relaxed);
                VerifierError::AdminBusy(Duration::from_secs(1))
            })?
            .expect("the semaphore is never closed");
        self.hash_in(permit, secret).await
    }

    /// Re-hashes an imported key's secret into keygate's own, in its account's share.
    pub async fn rehash(&self, account: &AccountId, secret: &[u8]) -> Result<SecretHash, VerifierError> {
        let slot = self.lanes.clone().acquire(account, self.own_cost).await?;
        self.hash_in(slot, secret).await
    }

    async fn hash_in<P: Send + 'static>(&self, slot: P, secret: &[u8]) -> Result<SecretHash, VerifierError> {
        let mut salt = [0u8; 16];
        getrandom::getrandom(&mut salt)?;
        let secret = secret.to_vec();
        let argon2 = self.argon2.clone();
        run(slot, move || {
            let salt = SaltString::encode_b64(&salt).map_err(|e| VerifierError::Hash(e.to_string()))?;
            let hash = argon2.hash_password(&secret, &salt).map_err(|e| VerifierError::Hash(e.to_string()))?;
            Ok(SecretHash::new(hash.to_string()))
        })
        .await
    }

    /// What verifying `hash` costs in verifications at the server's own settings (at least
    /// the OWASP minimum's), rounded up: 1 for keygate's own keys, ~13 for an imported
    /// bcrypt 12.
    pub fn weight(&self, hash: &SecretHash) -> u32 {
        let unit = self.own_cost.max(OWASP_COST);
        let cost = cost(hash.expose_phc()).unwrap_or(unit);
        u32::try_from(cost.div_ceil(unit)).unwrap_or(u32::MAX).max(1)
    }

    /// Waits for a slot to verify `hash` in, in `account`'s queue: [`VerifierError::Busy`]
    /// when that queue is full. Cancel-safe: a caller that leaves while waiting is taken
    /// out of the queue, and nothing runs for it.
    pub async fn admit(&self, account: &AccountId, hash: &SecretHash) -> Result<Slot, VerifierError> {
        let cost = cost(hash.expose_phc()).unwrap_or(self.own_cost);
        self.lanes.clone().acquire(account, cost).await
    }

    /// Checks `secret` against `hash` in `slot`: keygate's argon2id, or an imported key's
    /// bcrypt or any argon2 (the scheme is read off the hash). SHA-256 imports are checked
    /// without the verifier ([`crate::domain::imported::verify_sha256`]). Once called, the
    /// work runs to its end whether or not the caller waits for it.
    pub async fn verify_in(&self, slot: Slot, secret: &str, hash: &SecretHash) -> Result<bool, VerifierError> {
        let phc = hash.expose_phc().to_owned();
        let secret = secret.as_bytes().to_vec();
        let argon2 = self.argon2.clone();
        self.verifications.fetch_add(1, Ordering::Relaxed);
        let since = slot.since;
        let verified = run(slot, move || {
            if phc.starts_with("$2") {
                // bcrypt reads 72 bytes: a longer secret is never its match (every variant
                // sharing those bytes would be).
                if secret.len() > crate::domain::imported::BCRYPT_MAX_BYTES {
                    return Ok(false);
                }
                return bcrypt::verify(&secret, &phc).map_err(|_| VerifierError::BadHash);
            }
            let parsed = PasswordHash::new(&phc).map_err(|_| VerifierError::BadHash)?;
            // The parameters (and the variant) come from the stored hash, so keys hashed
            // under older settings, or imported, keep verifying.
            let matches = argon2.verify_password(&secret, &parsed).is_ok();
            Ok(matches)
        })
        .await;
        self.durations.observe(since.elapsed().as_secs_f64());
        verified
    }

    /// The most an imported hash may cost, in KiB-passes: [`IMPORT_COST_MULTIPLE`] times
    /// the server's own verification, counted from at least the OWASP minimum's.
    pub fn max_imported_cost(&self) -> u64 {
        self.own_cost.max(OWASP_COST) * IMPORT_COST_MULTIPLE
    }

    /// Whether `hash` is what [`Verifier::hash`] makes now: argon2id with these settings.
    /// An imported key's hash is replaced by one when its credential is first verified.
    /// Asked on every call with an imported key: a prefix comparison, no parsing.
    pub fn is_current(&self, hash: &SecretHash) -> bool {
        hash.expose_phc().starts_with(&self.current_prefix)
    }

    /// The verification time histogram (shared: cloning it shares the counts).
    pub fn durations(&self) -> Histogram {
        self.durations.clone()
    }

    /// How many argon2 verifications have run (a job dropped while it waited never ran).
    pub fn verifications(&self) -> u64 {
        self.verifications.load(Ordering::Relaxed)
    }

    /// Verifications waiting or running now.
    pub fn queued(&self) -> usize {
        let state = self.lanes.lock();
        state.running + state.waiting
    }

    /// Verifications waiting for a slot now.
    pub fn waiting(&self) -> usize {
        self.lanes.lock().waiting
    }

    /// Counts since start: jobs that waited for a slot, jobs refused because their
    /// account's queue was full, jobs whose caller left while they waited, admin hashes
    /// refused at their deadline.
    pub fn queue_counts(&self) -> QueueCounts {
        QueueCounts {
            queued: self.lanes.queued.load(Ordering::Relaxed),
            refused_account_full: self.lanes.refused.load(Ordering::Relaxed),
            abandoned: self.lanes.abandoned.load(Ordering::Relaxed),
            refused_admin_deadline: self.admin_refused.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueCounts {
    pub queued: u64,
    pub refused_account_full: u64,
    pub abandoned: u64,
    /// Admin hashing that waited [`ADMIN_HASH_DEADLINE`] for its slot.
    pub refused_admin_deadline: u64,
}

/// Runs `work` on the blocking pool holding `slot` until it is done.
async fn run<T: Send + 'static, P: Send + 'static>(
    slot: P,
    work: impl FnOnce() -> Result<T, VerifierError> + Send + 'static,
) -> Result<T, VerifierError> {
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        span.in_scope(work)
    })
    .instrument(tracing::Span::current())
    .await?
}

/// The slots and the accounts' queues.
struct Lanes {
    slots: usize,
    per_account: usize,
    /// What an account's turn adds to its deficit: one verification at the server's cost
    /// (at least the OWASP minimum's).
    quantum: u64,
    /// The most cost an account may have waiting.
    max_waiting_cost: u64,
    state: Mutex<LaneState>,
    queued: AtomicU64,
    refused: AtomicU64,
    abandoned: AtomicU64,
}

#[derive(Default)]
struct LaneState {
    running: usize,
    waiting: usize,
    lanes: HashMap<AccountId, Lane>,
    /// Accounts with jobs waiting, in the order of their turns.
    turns: VecDeque<AccountId>,
    next_ticket: u64,
}

/// One account's jobs.
#[derive(Default)]
struct Lane {
    running: usize,
    waiting: VecDeque<Waiter>,
    waiting_cost: u64,
    /// Deficit round robin: cost this account may still spend before its next turn.
    deficit: u64,
}

struct Waiter {
    ticket: u64,
    cost: u64,
    since: Instant,
    grant: oneshot::Sender<Slot>,
}

/// Slots handed out under the lock, sent after it: a send to a caller that has just left
/// gives the slot back, which takes the lock again.
type Grants = Vec<(oneshot::Sender<Slot>, Slot)>;

impl Lanes {
    fn lock(&self) -> std::sync::MutexGuard<'_, LaneState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn acquire(self: Arc<Self>, account: &AccountId, cost: u64) -> Result<Slot, VerifierError> {
        let since = Instant::now();
        let (grant, granted) = oneshot::channel();
        let (ticket, grants) = {
            let mut state = self.lock();
            let state = &mut *state;
            let lane = state.lanes.entry(account.clone()).or_default();
            // Bounded per account, by cost; an empty queue takes any one job (an imported
            // hash may cost more than the bound, and must be verifiable).
            if !lane.waiting.is_empty() && lane.waiting_cost + cost > self.max_waiting_cost {
                self.refused.fetch_add(1, Ordering::Relaxed);
                return Err(VerifierError::Busy);
            }
            let ticket = state.next_ticket;
            state.next_ticket += 1;
            if lane.waiting.is_empty() {
                state.turns.push_back(account.clone());
            }
            lane.waiting.push_back(Waiter { ticket, cost, since, grant });
            lane.waiting_cost += cost;
            state.waiting += 1;
            let grants = self.dispatch(state);
            let waits = state.lanes.get(account).is_some_and(|l| l.waiting.iter().any(|w| w.ticket == ticket));
            if waits {
                self.queued.fetch_add(1, Ordering::Relaxed);
            }
            (ticket, grants)
        };
        send(grants);
        let mut waiting = Waiting { lanes: &self, account, ticket, granted: false };
        // The sender is dropped unsent only when the job leaves the queue, which only its
        // caller does (by dropping this future): not while this waits.
        let slot = granted.await.map_err(|_| VerifierError::Busy)?;
        waiting.granted = true;
        Ok(slot)
    }

    /// Hands free slots to waiting jobs: accounts in turn, each below its share, by
    /// deficit round robin on cost.
    fn dispatch(self: &Arc<Self>, state: &mut LaneState) -> Grants {
        let mut grants = Vec::new();
        while state.running < self.slots {
            let Some(account) = self.pick(state) else { break };
            let lane = state.lanes.get_mut(&account).expect("an account in turn has a lane");
            let waiter = lane.waiting.pop_front().expect("an account in turn has a job waiting");
            lane.waiting_cost -= waiter.cost;
            lane.deficit = lane.deficit.saturating_sub(waiter.cost);
            lane.running += 1;
            if lane.waiting.is_empty() {
                lane.deficit = 0;
            }
            let still_waiting = !lane.waiting.is_empty();
            state.running += 1;
            state.waiting -= 1;
            // Its turn is over: to the back of the line, or out of it.
            state.turns.retain(|a| a != &account);
            if still_waiting {
                state.turns.push_back(account.clone());
            }
            let slot = Slot { lanes: self.clone(), account, since: waiter.since };
            grants.push((waiter.grant, slot));
        }
        grants
    }

    /// The account whose turn it is: the first in line, below its share, whose deficit
    /// covers its next job; when none does, every eligible account gets as many quanta as
    /// the closest one needs (the rounds deficit round robin would go through).
    fn pick(&self, state: &mut LaneState) -> Option<AccountId> {
        loop {
            let mut rounds = u64::MAX;
            for account in &state.turns {
                let lane = &state.lanes[account];
                if lane.running >= self.per_account {
                    continue;
                }
                let next = lane.waiting.front().map_or(0, |w| w.cost);
                if lane.deficit >= next {
                    return Some(account.clone());
                }
                rounds = rounds.min((next - lane.deficit).div_ceil(self.quantum.max(1)));
            }
            if rounds == u64::MAX {
                return None;
            }
            for account in &state.turns {
                let lane = state.lanes.get_mut(account).expect("an account in turn has a lane");
                if lane.running < self.per_account {
                    lane.deficit = lane.deficit.saturating_add(rounds * self.quantum.max(1));
                }
            }
        }
    }

    fn release(self: &Arc<Self>, account: &AccountId) {
        let grants = {
            let mut state = self.lock();
            let state = &mut *state;
            state.running -= 1;
            if let Some(lane) = state.lanes.get_mut(account) {
                lane.running -= 1;
                if lane.running == 0 && lane.waiting.is_empty() {
                    state.lanes.remove(account);
                }
            }
            self.dispatch(state)
        };
        send(grants);
    }

    /// A caller left while its job waited: the job leaves the queue, having cost nothing.
    fn abandon(&self, account: &AccountId, ticket: u64) {
        let mut state = self.lock();
        let state = &mut *state;
        let Some(lane) = state.lanes.get_mut(account) else { return };
        let Some(at) = lane.waiting.iter().position(|w| w.ticket == ticket) else { return };
        let waiter = lane.waiting.remove(at).expect("found above");
        lane.waiting_cost -= waiter.cost;
        state.waiting -= 1;
        self.abandoned.fetch_add(1, Ordering::Relaxed);
        if lane.waiting.is_empty() {
            lane.deficit = 0;
            state.turns.retain(|a| a != account);
            if lane.running == 0 {
                state.lanes.remove(account);
            }
        }
    }
}

fn send(grants: Grants) {
    for (grant, slot) in grants {
        // A caller gone since: the slot comes back here, outside the lock.
        drop(grant.send(slot));
    }
}

/// A job in its account's queue, taken out if its caller leaves before it has a slot.
struct Waiting<'a> {
    lanes: &'a Lanes,
    account: &'a AccountId,
    ticket: u64,
    granted: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if !self.granted {
            self.lanes.abandon(self.account, self.ticket);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_fresh_hash_is_current_and_another_setting_is_not() {
        let cheap = Argon2Settings { memory_kib: 64, iterations: 1, parallelism: 1, max_concurrent: 1 };
        let verifier = Verifier::new(cheap).unwrap();
        let hash = verifier.hash(b"secret").await.unwrap();
        assert!(verifier.is_current(&hash), "{}", hash.expose_phc().split('$').nth(3).unwrap_or_default());
        let other = Verifier::new(Argon2Settings { iterations: 2, ..cheap }).unwrap();
        assert!(!other.is_current(&hash));
        assert!(!verifier.is_current(&SecretHash::new("$2b$04$abc".into())));
    }
}
