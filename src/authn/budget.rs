//! What guessing may cost keygate, bounded, without ever locking the real holder out.
//!
//! Budgets bound *work* (argon2 runs, store lookups of ids not in memory), never the
//! answer to a credential keygate can already judge for free: a holder recognised by the
//! stored digest is allowed however hard its key id is being guessed at. When a budget is
//! spent, the answer says so — throttled, with a retry time — never `api_key_invalid` for
//! a credential nobody checked.
//!
//! - per key id: argon2 verifications that failed (or are running) in a window;
//! - per client network (IPv4 address, IPv6 /64; requests without an address share one):
//!   failed verifications, failed lookups and lookups running, in a window;
//! - globally: once a key id or a client has failed, its further argon2 runs also need a
//!   token from a bucket refilled at a fixed rate (a quarter of argon2's capacity by
//!   default), so first verifications of real keys — clean key, clean client — keep the
//!   rest.
//!
//! Attempts are reserved before the work starts and given back when it succeeds, so 32
//! guesses in flight cannot overshoot a budget of 10.

use crate::domain::{ClientNetwork, KeyId};
use smallvec::SmallVec;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct BudgetSettings {
    /// Failed argon2 verifications per key id per window.
    pub max_failures_per_key: u32,
    /// Failed verifications and lookups per client network per window.
    pub max_failures_per_client: u32,
    pub window: Duration,
    /// argon2 runs per second for key ids and clients that have failed before.
    pub suspect_verifications_per_second: u32,
    /// Capacity of the failure memories (key ids, client networks).
    pub capacity: u64,
}

impl BudgetSettings {
    pub const DEFAULT_MAX_FAILURES_PER_KEY: u32 = 20;
    pub const DEFAULT_MAX_FAILURES_PER_CLIENT: u32 = 100;
}

impl Default for BudgetSettings {
    fn default() -> Self {
        Self {
            max_failures_per_key: Self::DEFAULT_MAX_FAILURES_PER_KEY,
            max_failures_per_client: Self::DEFAULT_MAX_FAILURES_PER_CLIENT,
            window: Duration::from_secs(60),
            suspect_verifications_per_second: 12,
            capacity: 100_000,
        }
    }
}

/// Attempts in a fixed window that starts at the first one.
struct Window {
    started: Instant,
    used: AtomicU32,
}

impl Window {
    /// Takes one unit if fewer than `max` are used; says how many were used before.
    fn take(&self, max: u32) -> Option<u32> {
        self.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| (used < max).then_some(used + 1)).ok()
    }

    fn give_back(&self) {
        let _ = self.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| used.checked_sub(1));
    }

    fn retry_after(&self, window: Duration) -> Duration {
        window.saturating_sub(self.started.elapsed()).max(Duration::from_secs(1))
    }
}

/// Tokens for suspect verifications.
struct Bucket {
    tokens: f64,
    refilled: Instant,
}

/// Why work was refused, and when to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    pub retry_after: Duration,
    /// The budget that was spent, as a count per window (for the answer's `limit`).
    pub limit: u32,
}

pub struct FailureBudgets {
    settings: BudgetSettings,
    per_key: moka::sync::Cache<KeyId, Arc<Window>>,
    /// By client network; `None` is every request without an address, together.
    per_client: moka::sync::Cache<Option<ClientNetwork>, Arc<Window>>,
    suspects: Mutex<Bucket>,
}

/// Units held for one piece of work: given back when it succeeds (or is abandoned), kept
/// when it fails.
#[must_use]
pub struct Reservation {
    windows: SmallVec<[Arc<Window>; 2]>,
    suspect_token: bool,
    budgets: Option<Arc<FailureBudgets>>,
}

impl Reservation {
    /// The work failed: what it took stays taken.
    pub fn failed(mut self) {
        self.windows.clear();
        self.suspect_token = false;
    }

    /// The work succeeded (or showed nothing about guessing): everything goes back.
    pub fn succeeded(self) {}
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation").field("units", &self.windows.len()).field("suspect", &self.suspect_token).finish()
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        for window in &self.windows {
            window.give_back();
        }
        if self.suspect_token {
            if let Some(budgets) = &self.budgets {
                budgets.return_token();
            }
        }
    }
}

impl FailureBudgets {
    pub fn new(settings: BudgetSettings) -> Arc<Self> {
        let rate = f64::from(settings.suspect_verifications_per_second.max(1));
        Arc::new(Self {
            settings,
            per_key: moka::sync::Cache::builder().max_capacity(settings.capacity).time_to_live(settings.window).build(),
            per_client: moka::sync::Cache::builder()
                .max_capacity(settings.capacity)
                .time_to_live(settings.window)
                .build(),
            suspects: Mutex::new(Bucket { tokens: rate, refilled: Instant::now() }),
        })
    }

    pub fn settings(&self) -> BudgetSettings {
        self.settings
    }

    fn window_of<K: std::hash::Hash + Eq + Send + Sync + 'static>(
        cache: &moka::sync::Cache<K, Arc<Window>>,
        key: K,
    ) -> Arc<Window> {
        cache.get_with(key, || Arc::new(Window { started: Instant::now(), used: AtomicU32::new(0) }))
    }

    fn client_window(&self, client: Option<ClientNetwork>) -> Arc<Window> {
        Self::window_of(&self.per_client, client)
    }

    fn throttled(&self, window: &Window, limit: u32) -> Throttled {
        Throttled { retry_after: window.retry_after(self.settings.window), limit }
    }

    /// May this client make keygate look up an id that is not in memory?
    pub fn admit_lookup(self: &Arc<Self>, client: Option<ClientNetwork>) -> Result<Reservation, Throttled> {
        let max = self.settings.max_failures_per_client;
        let window = self.client_window(client);
        match window.take(max) {
            Some(_) => Ok(Reservation { windows: SmallVec::from_iter([window]), suspect_token: false, budgets: None }),
            None => Err(self.throttled(&window, max)),
        }
    }

    /// May this credential for `key` from this client cost an argon2 verification?
    pub fn admit_verification(
        self: &Arc<Self>,
        key: KeyId,
        client: Option<ClientNetwork>,
    ) -> Result<Reservation, Throttled> {
        let BudgetSettings { max_failures_per_key, max_failures_per_client, .. } = self.settings;
        let key_window = Self::window_of(&self.per_key, key);
        let Some(key_before) = key_window.take(max_failures_per_key) else {
            return Err(self.throttled(&key_window, max_failures_per_key));
        };
        let client_window = self.client_window(client);
        let Some(client_before) = client_window.take(max_failures_per_client) else {
            key_window.give_back();
            return Err(self.throttled(&client_window, max_failures_per_client));
        };
        let mut reservation = Reservation {
            windows: SmallVec::from_iter([key_window, client_window]),
            suspect_token: false,
            budgets: Some(self.clone()),
        };
        // A key id or client with failures (or work in flight) behind it is a suspect: its
        // argon2 runs share a bucket, so they cannot crowd out first verifications.
        if key_before > 0 || client_before > 0 {
            if !self.take_token() {
                let retry_after = Duration::from_secs(1);
                return Err(Throttled { retry_after, limit: self.settings.suspect_verifications_per_second });
            }
            reservation.suspect_token = true;
        }
        Ok(reservation)
    }

    /// A failure that cost no work worth reserving (a wrong credential judged by its
    /// digest, an id known absent): counted against the client all the same.
    pub fn note_client_failure(&self, client: Option<ClientNetwork>) {
        let _ = self.client_window(client).take(u32::MAX);
    }

    /// Whether this client has spent its budget (for work that cannot be reserved).
    pub fn client_spent(&self, client: Option<ClientNetwork>) -> Option<Throttled> {
        let max = self.settings.max_failures_per_client;
        let window = self.per_client.get(&client)?;
        (window.used.load(Ordering::Acquire) >= max).then(|| self.throttled(&window, max))
    }

    fn take_token(&self) -> bool {
        let rate = f64::from(self.settings.suspect_verifications_per_second.max(1));
        let mut bucket = self.suspects.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.refilled).as_secs_f64() * rate).min(rate);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn return_token(&self) {
        let rate = f64::from(self.settings.suspect_verifications_per_second.max(1));
        let mut bucket = self.suspects.lock().unwrap_or_else(|e| e.into_inner());
        bucket.tokens = (bucket.tokens + 1.0).min(rate);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budgets(per_key: u32, per_client: u32, suspects: u32) -> Arc<FailureBudgets> {
        FailureBudgets::new(BudgetSettings {
            max_failures_per_key: per_key,
            max_failures_per_client: per_client,
            window: Duration::from_secs(60),
            suspect_verifications_per_second: suspects,
            capacity: 1000,
        })
    }

    fn key(n: u8) -> KeyId {
        KeyId::parse(&format!("key_{:016}", n)).unwrap()
    }

    fn client(ip: &str) -> Option<ClientNetwork> {
        Some(ClientNetwork::of(ip.parse().unwrap()))
    }

    #[test]
    fn reservations_held_in_flight_count_so_nothing_overshoots() {
        let b = budgets(100, 3, 100);
        let held: Vec<_> = (0..3).map(|n| b.admit_verification(key(n), client("192.0.2.1")).unwrap()).collect();
        assert!(b.admit_verification(key(9), client("192.0.2.1")).is_err(), "three in flight fill a budget of 3");
        assert!(b.admit_verification(key(9), client("192.0.2.2")).is_ok(), "another client is unaffected");
        // Success gives the units back; failure keeps them.
        let mut held = held.into_iter();
        held.next().unwrap().succeeded();
        let again = b.admit_verification(key(9), client("192.0.2.1")).unwrap();
        again.failed();
        drop(held);
        let _eight = b.admit_verification(key(8), client("192.0.2.1")).unwrap();
        let _seven = b.admit_verification(key(7), client("192.0.2.1")).unwrap();
        assert!(b.admit_verification(key(6), client("192.0.2.1")).is_err(), "one failure kept: two left, both taken");
    }

    #[test]
    fn a_spent_key_is_throttled_with_a_retry_time() {
        let b = budgets(2, 100, 100);
        for n in 0..2 {
            b.admit_verification(key(1), client(&format!("192.0.2.{n}"))).unwrap().failed();
        }
        let throttled = b.admit_verification(key(1), client("198.51.100.1")).unwrap_err();
        assert_eq!(throttled.limit, 2);
        assert!(throttled.retry_after > Duration::ZERO && throttled.retry_after <= Duration::from_secs(60));
    }

    #[test]
    fn suspects_share_a_bucket_and_clean_first_attempts_do_not() {
        let b = budgets(100, 100, 2);
        // A client that failed once is a suspect for every key it tries next.
        b.admit_verification(key(0), client("203.0.113.1")).unwrap().failed();
        b.admit_verification(key(1), client("203.0.113.1")).unwrap().failed();
        b.admit_verification(key(2), client("203.0.113.1")).unwrap().failed();
        assert!(b.admit_verification(key(3), client("203.0.113.1")).is_err(), "the bucket of 2 is spent");
        // A clean key from a clean client needs no token.
        assert!(b.admit_verification(key(4), client("198.51.100.7")).is_ok());
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
}
