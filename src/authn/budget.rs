//! What guessing may cost keygate, bounded, without ever locking the real holder out.
//!
//! Budgets bound *work* (argon2 runs, store lookups of ids not in memory), never the
//! answer to a credential keygate can already judge for free: a holder recognised by the
//! stored digest is allowed however hard its key id is being guessed at. When a budget is
//! spent, the answer says so — throttled, with a retry time — never `api_key_invalid` for
//! a credential nobody checked.
//!
//! - per key id: argon2 verifications that failed (or are running) in a window;
//! - per client network (IPv4 address, IPv6 /64; requests without an address share one),
//!   and again per wider network around it (IPv4 /24; IPv6 /56 and /48), each with a
//!   larger budget: failed verifications, failed lookups and lookups running, in a window.
//!   A client that can pick any /64 of a /48 still spends one budget;
//! - globally: store lookups of ids not in memory take a token from a bucket refilled at
//!   a fixed rate; a lookup that finds a record gives its token back, so the bucket bounds
//!   the store reads that unknown ids cost, however many networks they come from;
//! - globally: once a key id or a client has failed, its further argon2 runs also need a
//!   token from a bucket refilled at a fixed rate (a quarter of argon2's capacity by
//!   default), so first verifications of real keys — clean key, clean client — keep the
//!   rest. An account whose keys' failures in a window weigh as much as one key's budget
//!   (in verifications at the server's cost: two guesses at an imported bcrypt 12) is a
//!   suspect for all its keys: guesses spread over its many keys, each from a fresh
//!   network, get no full-price first try per key. One account's suspects take at most a
//!   quarter of the bucket ([`ACCOUNT_SUSPECT_SHARE`], a bucket of their own beside it),
//!   so guesses at one account's (expensive, imported) keys leave the rest to the others.
//!   Both buckets are spent by cost, exactly: a verification costlier than a bucket holds
//!   is taken from a full one, which then owes the rest.
//!
//! Attempts are reserved before the work starts and given back when it succeeds, so 32
//! guesses in flight cannot overshoot a budget of 10. Time is the server's [`Clock`], so
//! windows and buckets move when a test moves it.

use crate::clock::{Clock, SystemClock};
use crate::domain::{AccountId, ClientNetwork, KeyId, NetworkPrefix, Timestamp};
use smallvec::SmallVec;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct BudgetSettings {
    /// Failed argon2 verifications per key id per window.
    pub max_failures_per_key: u32,
    /// Failed verifications and lookups per client network (IPv4 address, IPv6 /64) per
    /// window.
    pub max_failures_per_client: u32,
    /// The same for every client in one IPv4 /24, together.
    pub max_failures_per_ipv4_24: u32,
    /// The same for every client in one IPv6 /56, together.
    pub max_failures_per_ipv6_56: u32,
    /// The same for every client in one IPv6 /48, together.
    pub max_failures_per_ipv6_48: u32,
    /// Store lookups of ids not in memory that find nothing, per second, for all clients
    /// together (also the most that may be under way at once).
    pub unknown_lookups_per_second: u32,
    pub window: Duration,
    /// argon2 runs per second for key ids and clients that have failed before.
    pub suspect_verifications_per_second: u32,
    /// Capacity of the failure memories (key ids, client networks).
    pub capacity: u64,
}

impl BudgetSettings {
    pub const DEFAULT_MAX_FAILURES_PER_KEY: u32 = 20;
    pub const DEFAULT_MAX_FAILURES_PER_CLIENT: u32 = 100;
    /// Ten addresses' worth: a /24 behind one NAT or office keeps room for honest typos.
    pub const DEFAULT_MAX_FAILURES_PER_IPV4_24: u32 = 1_000;
    /// Four /64s' worth: a /56 is commonly one subscriber.
    pub const DEFAULT_MAX_FAILURES_PER_IPV6_56: u32 = 400;
    /// Ten /64s' worth for a /48 (a site: 65,536 /64s).
    pub const DEFAULT_MAX_FAILURES_PER_IPV6_48: u32 = 1_000;
    /// Well above what honest clients miss (a typo, a deleted key, each remembered absent
    /// once found so), and well below what a store serves: a lookup that finds its record
    /// holds a token only while it runs.
    pub const DEFAULT_UNKNOWN_LOOKUPS_PER_SECOND: u32 = 200;
}

impl Default for BudgetSettings {
    fn default() -> Self {
        Self {
            max_failures_per_key: Self::DEFAULT_MAX_FAILURES_PER_KEY,
            max_failures_per_client: Self::DEFAULT_MAX_FAILURES_PER_CLIENT,
            max_failures_per_ipv4_24: Self::DEFAULT_MAX_FAILURES_PER_IPV4_24,
            max_failures_per_ipv6_56: Self::DEFAULT_MAX_FAILURES_PER_IPV6_56,
            max_failures_per_ipv6_48: Self::DEFAULT_MAX_FAILURES_PER_IPV6_48,
            unknown_lookups_per_second: Self::DEFAULT_UNKNOWN_LOOKUPS_PER_SECOND,
            window: Duration::from_secs(60),
            suspect_verifications_per_second: 12,
            capacity: 100_000,
        }
    }
}

/// Attempts in a fixed window that starts at the first one (and again at the first one
/// after it ends).
struct Window {
    state: Mutex<WindowState>,
}

#[derive(Clone, Copy)]
struct WindowState {
    started: Timestamp,
    used: u32,
}

impl Window {
    fn new(now: Timestamp) -> Self {
        Self { state: Mutex::new(WindowState { started: now, used: 0 }) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, WindowState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The window as of `now`: a new one once `length` has passed since it started.
    fn current(state: &mut WindowState, now: Timestamp, length: Duration) -> WindowState {
        if now >= state.started.saturating_add(length) {
            *state = WindowState { started: now, used: 0 };
        }
        *state
    }

    /// Takes one unit if fewer than `max` are used: says how many were used before, and
    /// which window the unit belongs to (to give it back to that one only).
    fn take(&self, max: u32, now: Timestamp, length: Duration) -> Result<(u32, Timestamp), Timestamp> {
        let mut state = self.state();
        let current = Self::current(&mut state, now, length);
        if current.used >= max {
            return Err(current.started);
        }
        state.used += 1;
        Ok((current.used, current.started))
    }

    /// A unit taken in the window that started at `started`: a later window owes nothing.
    fn give_back(&self, started: Timestamp) {
        let mut state = self.state();
        if state.started == started {
            state.used = state.used.saturating_sub(1);
        }
    }

    fn spent(&self, max: u32, now: Timestamp, length: Duration) -> Option<Timestamp> {
        let current = Self::current(&mut self.state(), now, length);
        (current.used >= max).then_some(current.started)
    }

    /// Adds `n` units to the window that started at `started` (a later one owes nothing).
    fn add(&self, n: u32, started: Timestamp) {
        let mut state = self.state();
        if state.started == started {
            state.used = state.used.saturating_add(n);
        }
    }

    /// Units used in the window as of `now`, and when it started.
    fn used(&self, now: Timestamp, length: Duration) -> WindowState {
        Self::current(&mut self.state(), now, length)
    }
}

/// What a client's networks had used before a unit was taken: its own (address or /64)
/// and the most of any of them.
#[derive(Debug, Default, Clone, Copy)]
struct Used {
    own: u32,
    any: u32,
}

/// The share of the suspects' bucket one account's suspects may use (a bucket of its own,
/// refilled at this share of the suspects' rate).
pub const ACCOUNT_SUSPECT_SHARE: f64 = 0.25;

/// The share of the replica's unknown-id reads kept for clients none of whose networks
/// has failed: their first uses still find a read while forged ids from networks that
/// have failed spend the rest.
const CLEAN_RESERVE: f64 = 0.25;

/// A token bucket on the server's clock, holding at most a second's tokens.
struct Bucket {
    rate: f64,
    state: Mutex<BucketState>,
}

struct BucketState {
    tokens: f64,
    refilled: Timestamp,
}

impl Bucket {
    fn new(per_second: u32, now: Timestamp) -> Self {
        Self::with_rate(f64::from(per_second.max(1)), now)
    }

    fn with_rate(rate: f64, now: Timestamp) -> Self {
        Self { rate, state: Mutex::new(BucketState { tokens: rate, refilled: now }) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, BucketState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes `n` tokens only if `reserve` tokens are left after. More than the bucket
    /// holds (a second's worth) is taken from a full one, which then owes the rest: what
    /// costs three seconds' worth takes three seconds to pay for.
    fn take_leaving(&self, now: Timestamp, n: f64, reserve: f64) -> bool {
        let mut bucket = self.state();
        // A clock that steps back refills nothing (and takes nothing away).
        let elapsed = (now.as_millis() - bucket.refilled.as_millis()).max(0) as f64 / 1000.0;
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.rate);
        bucket.refilled = Timestamp::from_millis(bucket.refilled.as_millis().max(now.as_millis()));
        if bucket.tokens >= n.min(self.rate) + reserve {
            bucket.tokens -= n;
            true
        } else {
            false
        }
    }

    fn give_back(&self, n: f64) {
        let mut bucket = self.state();
        bucket.tokens = (bucket.tokens + n).min(self.rate);
    }

    /// How long until `n` tokens (at most a full bucket) are there, at least a second.
    fn retry_after(&self, n: f64) -> Duration {
        let missing = (n.min(self.rate) - self.state().tokens).max(0.0);
        Duration::from_secs_f64(missing / self.rate).max(Duration::from_secs(1))
    }
}

/// Why work was refused, and when to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    pub retry_after: Duration,
    /// The budget that was spent, as a count per window (for the answer's `limit`).
    pub limit: u32,
    /// Which budget it was, for the answer's message.
    pub spent: Spent,
}

/// The budget a throttled answer names: the caller is told what it ran into, not a
/// generic "too many failures" when the replica as a whole is busy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spent {
    /// Failed verifications of this key id.
    Key,
    /// Failures from the client's address or one of the wider networks it is in.
    Client,
    /// Verifications of keys and clients that failed before, all of them together.
    Suspects,
    /// The same, for one account's keys: its share of them.
    AccountSuspects,
    /// Store reads of ids not in memory, on this replica, all clients together.
    UnknownLookups,
    /// The key's account has as much verification work queued as it may.
    AccountQueue,
}

impl Spent {
    pub fn describe(self) -> &'static str {
        match self {
            Spent::Key => "too many failed verifications for this key",
            Spent::Client => "too many failed verifications or unknown keys from this client's network",
            Spent::Suspects => "too many verifications of keys or clients that failed before",
            Spent::AccountSuspects => {
                "too many verifications of this account's keys by keys or clients that failed before"
            }
            Spent::UnknownLookups => "this replica is looking up as many unknown keys as it may",
            Spent::AccountQueue => "this account has as many first verifications waiting as it may",
        }
    }
}

/// Windows and buckets by what they count, bounded by count (quick_cache: a sharded
/// CLOCK-Pro, which keeps entries in use over a flood of new ones). An entry needs no
/// expiry: a window past its length starts empty when next used, as a new one does, and a
/// bucket refills by time; eviction only forgets what an idle subject had spent.
type Memory<K, V> = quick_cache::sync::Cache<K, Arc<V>>;

/// The networks a client's failures are counted in, with each one's budget.
type ClientWindows = SmallVec<[(Arc<Window>, u32); 3]>;

pub struct FailureBudgets {
    settings: BudgetSettings,
    clock: Arc<dyn Clock>,
    per_key: Memory<KeyId, Window>,
    /// By account: the weight of its keys' failed verifications.
    per_account: Memory<AccountId, Window>,
    /// By account: its share of the suspects' bucket.
    account_suspects: Memory<AccountId, Bucket>,
    /// By client network; `None` is every request without an address, together.
    per_client: Memory<Option<ClientNetwork>, Window>,
    /// By the wider networks around client networks (IPv4 /24; IPv6 /56 and /48).
    per_prefix: Memory<NetworkPrefix, Window>,
    suspects: Bucket,
    lookups: Bucket,
}

/// Units held for one piece of work: given back when it succeeds (or is abandoned), kept
/// when it fails.
#[must_use]
pub struct Reservation {
    /// Each window's unit, with the start of the window it was taken in.
    windows: SmallVec<[(Arc<Window>, Timestamp); 4]>,
    /// Tokens of the suspects' bucket held (a verification's weight), 0 for none, and of
    /// its account's share.
    suspect_tokens: f64,
    account_suspects: Option<Arc<Bucket>>,
    lookup_token: bool,
    /// The account's window, the one it was read in and the verification's weight: added
    /// to it only when the verification fails.
    account: Option<(Arc<Window>, Timestamp, u32)>,
    budgets: Arc<FailureBudgets>,
}

impl Reservation {
    fn new(budgets: &Arc<FailureBudgets>) -> Self {
        Self {
            windows: SmallVec::new(),
            suspect_tokens: 0.0,
            account_suspects: None,
            lookup_token: false,
            account: None,
            budgets: budgets.clone(),
        }
    }

    /// The work failed: what it took stays taken, and its weight counts against its account.
    pub fn failed(mut self) {
        if let Some((window, started, weight)) = self.account.take() {
            window.add(weight, started);
        }
        self.windows.clear();
        self.suspect_tokens = 0.0;
        self.lookup_token = false;
    }

    /// The work succeeded (or showed nothing about guessing): everything goes back.
    pub fn succeeded(self) {}

    /// A lookup that found a record by something an attacker may know (an imported key's
    /// start): the client's units stay spent, but the replica's unknown-id read goes back,
    /// since the id was not unknown (the cap bounds reads that find nothing).
    pub fn found_by_guessable(mut self) {
        self.windows.clear();
        self.suspect_tokens = 0.0;
    }
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("units", &self.windows.len())
            .field("suspect", &self.suspect_tokens)
            .field("lookup", &self.lookup_token)
            .finish()
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        for (window, started) in &self.windows {
            window.give_back(*started);
        }
        if self.suspect_tokens > 0.0 {
            self.budgets.suspects.give_back(self.suspect_tokens);
            if let Some(bucket) = &self.account_suspects {
                bucket.give_back(self.suspect_tokens);
            }
        }
        if self.lookup_token {
            self.budgets.lookups.give_back(1.0);
        }
    }
}

impl FailureBudgets {
    /// On the wall clock.
    pub fn new(settings: BudgetSettings) -> Arc<Self> {
        Self::with_clock(settings, Arc::new(SystemClock))
    }

    /// On the server's clock (a test's moves windows and buckets).
    pub fn with_clock(settings: BudgetSettings, clock: Arc<dyn Clock>) -> Arc<Self> {
        let now = clock.now();
        Arc::new(Self {
            settings,
            clock,
            per_key: Self::memory(settings),
            per_account: Self::memory(settings),
            account_suspects: Self::memory(settings),
            per_client: Self::memory(settings),
            per_prefix: Self::memory(settings),
            suspects: Bucket::new(settings.suspect_verifications_per_second, now),
            lookups: Bucket::new(settings.unknown_lookups_per_second, now),
        })
    }

    fn memory<K: std::hash::Hash + Eq, V>(settings: BudgetSettings) -> Memory<K, V> {
        Memory::new(usize::try_from(settings.capacity.max(1)).unwrap_or(usize::MAX))
    }

    /// The server's clock, for the authenticator's own memories.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    pub fn settings(&self) -> BudgetSettings {
        self.settings
    }

    fn window_of<K: std::hash::Hash + Eq + Clone>(cache: &Memory<K, Window>, key: K, now: Timestamp) -> Arc<Window> {
        Self::entry(cache, &key, || Window::new(now))
    }

    /// The entry for `key`, made by `new` when there is none (once, however many ask at once).
    fn entry<K: std::hash::Hash + Eq + Clone, V>(cache: &Memory<K, V>, key: &K, new: impl FnOnce() -> V) -> Arc<V> {
        let made: Result<_, std::convert::Infallible> = cache.get_or_insert_with(key, || Ok(Arc::new(new())));
        made.unwrap_or_else(|never| match never {})
    }

    /// The client's own network's window first, then the wider ones'.
    fn client_windows(&self, client: Option<ClientNetwork>, now: Timestamp) -> ClientWindows {
        let mut windows = ClientWindows::new();
        windows.push((Self::window_of(&self.per_client, client, now), self.settings.max_failures_per_client));
        for prefix in client.iter().flat_map(ClientNetwork::wider) {
            let max = match (prefix.network, prefix.len) {
                (IpAddr::V4(_), _) => self.settings.max_failures_per_ipv4_24,
                (IpAddr::V6(_), 56) => self.settings.max_failures_per_ipv6_56,
                (IpAddr::V6(_), _) => self.settings.max_failures_per_ipv6_48,
            };
            windows.push((Self::window_of(&self.per_prefix, prefix, now), max));
        }
        windows
    }

    fn throttled(&self, started: Timestamp, limit: u32, now: Timestamp, spent: Spent) -> Throttled {
        let ends = started.saturating_add(self.settings.window).as_millis();
        let left = Duration::from_millis(u64::try_from(ends - now.as_millis()).unwrap_or(0));
        Throttled { retry_after: left.max(Duration::from_secs(1)), limit, spent }
    }

    /// Takes a unit from every network the client is counted in, into `reservation` (which
    /// gives them back if one is spent); says how many the client's own network had used.
    fn take_client(
        &self,
        client: Option<ClientNetwork>,
        now: Timestamp,
        reservation: &mut Reservation,
    ) -> Result<Used, Throttled> {
        let mut used = Used::default();
        for (n, (window, max)) in self.client_windows(client, now).into_iter().enumerate() {
            match window.take(max, now, self.settings.window) {
                Ok((before, started)) => {
                    if n == 0 {
                        used.own = before;
                    }
                    used.any = used.any.max(before);
                    reservation.windows.push((window, started));
                }
                Err(started) => return Err(self.throttled(started, max, now, Spent::Client)),
            }
        }
        Ok(used)
    }

    /// May this client make keygate look up an id that is not in memory? One unit of each
    /// of its networks' budgets, and a token of the store's, all kept if nothing is found.
    pub fn admit_lookup(self: &Arc<Self>, client: Option<ClientNetwork>) -> Result<Reservation, Throttled> {
        let now = self.clock.now();
        let mut reservation = Reservation::new(self);
        let used = self.take_client(client, now, &mut reservation)?;
        // A client none of whose networks has failed (or has a lookup running) may use the
        // last quarter of the bucket; the others may not, so a flood of forged ids spread
        // over many networks cannot take every read from a clean client's first use.
        let reserve = if used.any == 0 { 0.0 } else { self.lookups.rate * CLEAN_RESERVE };
        if !self.lookups.take_leaving(now, 1.0, reserve) {
            // Spent by everyone together: a token comes back within the second.
            return Err(Throttled {
                retry_after: Duration::from_secs(1),
                limit: self.settings.unknown_lookups_per_second,
                spent: Spent::UnknownLookups,
            });
        }
        reservation.lookup_token = true;
        Ok(reservation)
    }

    /// May this credential for `key` (of `account`) from this client cost an argon2
    /// verification? `weight` is what the verification costs in verifications at the
    /// server's own settings (an imported bcrypt 12 weighs about 13): the suspects' bucket
    /// is spent by cost, not by run, so guesses at expensive imports get the same CPU as
    /// any others.
    pub fn admit_verification(
        self: &Arc<Self>,
        key: KeyId,
        account: &AccountId,
        client: Option<ClientNetwork>,
        weight: u32,
    ) -> Result<Reservation, Throttled> {
        let now = self.clock.now();
        let BudgetSettings { max_failures_per_key, window, .. } = self.settings;
        let mut reservation = Reservation::new(self);
        let key_window = Self::window_of(&self.per_key, key, now);
        let key_before = match key_window.take(max_failures_per_key, now, window) {
            Ok((before, started)) => {
                reservation.windows.push((key_window, started));
                before
            }
            Err(started) => return Err(self.throttled(started, max_failures_per_key, now, Spent::Key)),
        };
        let client_before = self.take_client(client, now, &mut reservation)?.own;
        let account_window = Self::window_of(&self.per_account, account.clone(), now);
        let account_failed = account_window.used(now, window);
        reservation.account = Some((account_window, account_failed.started, weight.max(1)));
        // A key id or client with failures (or work in flight) behind it is a suspect, and
        // so is every key of an account whose keys failed as much as one key may: their
        // argon2 runs share a bucket, so they cannot crowd out first verifications.
        if key_before > 0 || client_before > 0 || account_failed.used >= max_failures_per_key {
            let weight = f64::from(weight.max(1));
            let share = Self::entry(&self.account_suspects, account, || {
                Bucket::with_rate(self.suspects.rate * ACCOUNT_SUSPECT_SHARE, now)
            });
            let limit = self.settings.suspect_verifications_per_second;
            if !share.take_leaving(now, weight, 0.0) {
                let retry_after = share.retry_after(weight);
                let limit = (f64::from(limit) * ACCOUNT_SUSPECT_SHARE).ceil() as u32;
                return Err(Throttled { retry_after, limit, spent: Spent::AccountSuspects });
            }
            if !self.suspects.take_leaving(now, weight, 0.0) {
                share.give_back(weight);
                let retry_after = self.suspects.retry_after(weight);
                return Err(Throttled { retry_after, limit, spent: Spent::Suspects });
            }
            reservation.suspect_tokens = weight;
            reservation.account_suspects = Some(share);
        }
        Ok(reservation)
    }

    /// A failure that cost no work worth reserving (a wrong credential judged by its
    /// digest, an id known absent): counted against the client's networks all the same.
    pub fn note_client_failure(&self, client: Option<ClientNetwork>) {
        let now = self.clock.now();
        for (window, _) in self.client_windows(client, now) {
            let _ = window.take(u32::MAX, now, self.settings.window);
        }
    }

    /// Whether one of this client's networks has spent its budget (for work that cannot
    /// be reserved).
    pub fn client_spent(&self, client: Option<ClientNetwork>) -> Option<Throttled> {
        let now = self.clock.now();
        self.client_windows(client, now).into_iter().find_map(|(window, max)| {
            window.spent(max, now, self.settings.window).map(|started| self.throttled(started, max, now, Spent::Client))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn budgets(per_key: u32, per_client: u32, suspects: u32) -> Arc<FailureBudgets> {
        FailureBudgets::new(BudgetSettings {
            max_failures_per_key: per_key,
            max_failures_per_client: per_client,
            max_failures_per_ipv4_24: 10_000,
            max_failures_per_ipv6_56: 10_000,
            max_failures_per_ipv6_48: 10_000,
            unknown_lookups_per_second: 10_000,
            window: Duration::from_secs(60),
            suspect_verifications_per_second: suspects,
            capacity: 1000,
        })
    }

    /// Budgets on a clock the test moves.
    fn on_clock(settings: BudgetSettings) -> (Arc<FailureBudgets>, ManualClock) {
        let clock = ManualClock::new(Timestamp::from_millis(1_000_000));
        (FailureBudgets::with_clock(settings, Arc::new(clock.clone())), clock)
    }

    fn key(n: u8) -> KeyId {
        KeyId::parse(&format!("key_{:016}", n)).unwrap()
    }

    /// An account of its own per key, unless a test says otherwise.
    fn account(n: u8) -> AccountId {
        AccountId::parse(&format!("acct_{n}")).unwrap()
    }

    fn client(ip: &str) -> Option<ClientNetwork> {
        Some(ClientNetwork::of(ip.parse().unwrap()))
    }

    #[test]
    fn reservations_held_in_flight_count_so_nothing_overshoots() {
        let b = budgets(100, 3, 100);
        let held: Vec<_> =
            (0..3).map(|n| b.admit_verification(key(n), &account(n), client("192.0.2.1"), 1).unwrap()).collect();
        assert!(
            b.admit_verification(key(9), &account(9), client("192.0.2.1"), 1).is_err(),
            "three in flight fill a budget of 3"
        );
        assert!(
            b.admit_verification(key(9), &account(9), client("192.0.2.2"), 1).is_ok(),
            "another client is unaffected"
        );
        // Success gives the units back; failure keeps them.
        let mut held = held.into_iter();
        held.next().unwrap().succeeded();
        let again = b.admit_verification(key(9), &account(9), client("192.0.2.1"), 1).unwrap();
        again.failed();
        drop(held);
        let _eight = b.admit_verification(key(8), &account(8), client("192.0.2.1"), 1).unwrap();
        let _seven = b.admit_verification(key(7), &account(7), client("192.0.2.1"), 1).unwrap();
        assert!(
            b.admit_verification(key(6), &account(6), client("192.0.2.1"), 1).is_err(),
            "one failure kept: two left, both taken"
        );
    }

    #[test]
    fn a_spent_key_is_throttled_with_a_retry_time() {
        let b = budgets(2, 100, 100);
        for n in 0..2 {
            b.admit_verification(key(1), &account(1), client(&format!("192.0.2.{n}")), 1).unwrap().failed();
        }
        let throttled = b.admit_verification(key(1), &account(1), client("198.51.100.1"), 1).unwrap_err();
        assert_eq!(throttled.limit, 2);
        assert!(throttled.retry_after > Duration::ZERO && throttled.retry_after <= Duration::from_secs(60));
    }

    #[test]
    fn suspects_share_a_bucket_and_clean_first_attempts_do_not() {
        let b = budgets(100, 100, 2);
        // A client that failed once is a suspect for every key it tries next.
        b.admit_verification(key(0), &account(0), client("203.0.113.1"), 1).unwrap().failed();
        b.admit_verification(key(1), &account(1), client("203.0.113.1"), 1).unwrap().failed();
        b.admit_verification(key(2), &account(2), client("203.0.113.1"), 1).unwrap().failed();
        assert!(
            b.admit_verification(key(3), &account(3), client("203.0.113.1"), 1).is_err(),
            "the bucket of 2 is spent"
        );
        // A clean key from a clean client needs no token.
        assert!(b.admit_verification(key(4), &account(4), client("198.51.100.7"), 1).is_ok());
    }

    #[test]
    fn lookups_and_cheap_failures_count_against_the_client_and_ipv6_per_64() {
        let b = budgets(100, 2, 100);
        b.note_client_failure(client("2001:db8:0:1::1"));
        b.admit_lookup(client("2001:db8:0:1::2")).unwrap().failed();
        assert!(b.client_spent(client("2001:db8:0:1:ffff::3")).is_some());
        assert!(b.admit_lookup(client("2001:db8:0:1::4")).is_err());
        assert!(b.admit_lookup(client("2001:db8:0:2::1")).is_ok());
        assert!(b.client_spent(None).is_none());
    }

    #[test]
    fn wider_networks_share_a_budget_each() {
        let (b, _) = on_clock(BudgetSettings {
            max_failures_per_client: 100,
            max_failures_per_ipv4_24: 3,
            max_failures_per_ipv6_56: 2,
            max_failures_per_ipv6_48: 3,
            ..BudgetSettings::default()
        });
        // Three addresses of one /24 spend its budget; the next /24 is untouched.
        for n in 1..=3 {
            b.admit_lookup(client(&format!("192.0.2.{n}"))).unwrap().failed();
        }
        assert_eq!(b.admit_lookup(client("192.0.2.200")).unwrap_err().limit, 3);
        assert!(b.admit_lookup(client("192.0.3.1")).is_ok());
        // Two /64s of one /56 spend the /56's; a third /64 of the /48 in another /56 still
        // has the /48's last unit, and after it no /64 of the /48 has any.
        b.admit_lookup(client("2001:db8:1:100::1")).unwrap().failed();
        b.note_client_failure(client("2001:db8:1:101::1"));
        assert_eq!(b.admit_lookup(client("2001:db8:1:1ff::1")).unwrap_err().limit, 2);
        b.admit_lookup(client("2001:db8:1:200::1")).unwrap().failed();
        assert_eq!(b.admit_lookup(client("2001:db8:1:ffff::1")).unwrap_err().limit, 3);
        assert!(b.admit_lookup(client("2001:db8:2::1")).is_ok(), "another /48");
        assert!(b.client_spent(client("2001:db8:1:300::1")).is_some());
    }

    #[test]
    fn a_refused_wider_network_gives_back_what_the_narrower_took() {
        let (b, _) = on_clock(BudgetSettings {
            max_failures_per_client: 2,
            max_failures_per_ipv4_24: 1,
            ..BudgetSettings::default()
        });
        b.admit_lookup(client("198.51.100.1")).unwrap().failed();
        // Refused by the /24: the address's own unit goes back, so it still has two.
        for _ in 0..5 {
            assert!(b.admit_lookup(client("198.51.100.2")).is_err());
        }
        assert!(b.client_spent(client("198.51.100.2")).is_some(), "by the /24");
        assert_eq!(b.per_client.get(&client("198.51.100.2")).unwrap().state().used, 0);
    }

    #[test]
    fn unknown_lookups_share_a_bucket_that_found_records_give_back_to() {
        let (b, clock) = on_clock(BudgetSettings { unknown_lookups_per_second: 3, ..BudgetSettings::default() });
        // Found records hold a token only while their lookup runs.
        for n in 0..10 {
            b.admit_lookup(client(&format!("203.0.{n}.1"))).unwrap().succeeded();
        }
        for n in 0..3 {
            b.admit_lookup(client(&format!("2001:db8:{n}::1"))).unwrap().failed();
        }
        let spent = b.admit_lookup(client("2001:db8:99::1")).unwrap_err();
        assert_eq!(spent, Throttled { retry_after: Duration::from_secs(1), limit: 3, spent: Spent::UnknownLookups });
        // The client's units went back with the refusal: it was not charged.
        assert!(b.client_spent(client("2001:db8:99::1")).is_none());
        clock.advance(Duration::from_millis(400));
        assert!(b.admit_lookup(None).is_ok(), "a token a third of a second");
    }

    #[test]
    fn suspects_spend_their_bucket_by_cost_not_by_run() {
        // Guards the weight: before it, a guess at an imported bcrypt 12 (~13 verifications
        // at the server's cost) took one token, as a guess at a key of keygate's own does.
        let b = budgets(100, 100, 26);
        // The client's first guess is no suspect's; after it, each takes 13 of the 26.
        b.admit_verification(key(0), &account(0), client("203.0.113.1"), 13).unwrap().failed();
        b.admit_verification(key(1), &account(1), client("203.0.113.1"), 13).unwrap().failed();
        b.admit_verification(key(2), &account(2), client("203.0.113.1"), 13).unwrap().failed();
        assert_eq!(
            b.admit_verification(key(3), &account(3), client("203.0.113.1"), 13).unwrap_err().spent,
            Spent::Suspects
        );
        assert!(
            b.admit_verification(key(3), &account(3), client("203.0.113.1"), 1).is_err(),
            "nothing left, not even 1"
        );
        // Given back whole when the work proves nothing.
        let b = budgets(100, 100, 26);
        b.admit_verification(key(0), &account(0), client("203.0.113.1"), 13).unwrap().failed();
        b.admit_verification(key(1), &account(1), client("203.0.113.1"), 13).unwrap().succeeded();
        b.admit_verification(key(2), &account(2), client("203.0.113.1"), 13).unwrap().failed();
        b.admit_verification(key(3), &account(3), client("203.0.113.1"), 13).unwrap().failed();
    }

    #[test]
    fn clean_clients_keep_a_quarter_of_the_unknown_id_reads() {
        // Guards the reserve: before it, forged ids spread over the /64s of one /48 spent
        // every read of the replica, and a clean client's first use was throttled.
        let (b, _clock) = on_clock(BudgetSettings { unknown_lookups_per_second: 8, ..BudgetSettings::default() });
        let mut spread = 0;
        while b.admit_lookup(client(&format!("2001:db8:a:{spread:x}::1"))).map(Reservation::failed).is_ok() {
            spread += 1;
        }
        assert_eq!(spread, 6, "the first id is clean; the rest leave the quarter (2 of 8)");
        b.admit_lookup(client("198.51.100.7")).unwrap().failed();
        b.admit_lookup(client("203.0.113.7")).unwrap().failed();
        assert_eq!(b.admit_lookup(client("192.0.2.7")).unwrap_err().spent, Spent::UnknownLookups);
    }

    #[test]
    fn windows_follow_the_servers_clock() {
        let (b, clock) = on_clock(BudgetSettings { max_failures_per_client: 2, ..BudgetSettings::default() });
        let reserved = b.admit_lookup(client("192.0.2.9")).unwrap();
        b.note_client_failure(client("192.0.2.9"));
        b.note_client_failure(client("192.0.2.9"));
        let throttled = b.admit_lookup(client("192.0.2.9")).unwrap_err();
        assert_eq!(throttled.retry_after, Duration::from_secs(60));
        clock.advance(Duration::from_secs(45));
        assert_eq!(b.admit_lookup(client("192.0.2.9")).unwrap_err().retry_after, Duration::from_secs(15));
        clock.advance(Duration::from_secs(15));
        // A new window: the unit reserved in the old one owes it nothing when it comes back.
        drop(reserved);
        b.admit_lookup(client("192.0.2.9")).unwrap().failed();
        b.admit_lookup(client("192.0.2.9")).unwrap().failed();
        assert!(b.admit_lookup(client("192.0.2.9")).is_err());
    }

    #[test]
    fn an_account_whose_keys_failed_a_keys_budget_is_a_suspect_for_all_its_keys() {
        // Guards the account rule: before it, each of an account's keys had a full-price
        // first guess from every fresh network, whatever its other keys had failed.
        let b = budgets(3, 100, 40);
        let a = account(1);
        // Fresh key, fresh client each time: two guesses of weight 2 fail (4 ≥ 3).
        b.admit_verification(key(10), &a, client("192.0.2.1"), 2).unwrap().failed();
        b.admit_verification(key(11), &a, client("198.51.100.1"), 2).unwrap().failed();
        // Now every key of the account is a suspect, and its suspects have a quarter of the
        // bucket (10): a weight of 13 is taken from the full share, which then owes 3.
        b.admit_verification(key(13), &a, client("203.0.113.2"), 13).unwrap().failed();
        let refused = b.admit_verification(key(14), &a, client("203.0.113.3"), 1).unwrap_err();
        assert_eq!(refused.spent, Spent::AccountSuspects);
        assert!(refused.retry_after >= Duration::from_secs(1));
        // Another account's suspect (a client that failed before) has its own share, and
        // the bucket (40 - 13) has room for it.
        b.admit_verification(key(15), &account(2), client("192.0.2.1"), 1).unwrap().failed();
    }
}
