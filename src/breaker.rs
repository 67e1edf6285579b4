//! A circuit breaker for what a decision waits on (the key store, the rate-limit store).
//!
//! An edge gives keygate a fraction of a second (Envoy's ext_authz: 200 ms by default).
//! A store that refuses connections makes every call that touches it wait for its own
//! timeout; a store that is known to be down should cost nothing. So each call is bounded
//! by `timeout`, `failures_to_open` consecutive failures open the breaker, and while it is
//! open calls are refused at once, without touching the store: the caller answers from
//! its cache or fails closed immediately. A background probe (not a request: no caller
//! pays for the trial) closes it again once the store answers.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct BreakerSettings {
    /// The longest one call may take on the request path.
    pub timeout: Duration,
    /// Consecutive failures (errors that mean an outage, or timeouts) that open it.
    pub failures_to_open: u32,
    /// How often an open breaker probes the store.
    pub probe_every: Duration,
}

/// Why a guarded call was not answered by the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the {0} is known to be unreachable (circuit open); not waiting for it")]
    Open(&'static str),
    #[error("the {0} did not answer within {1:?}")]
    TimedOut(&'static str, Duration),
}

tokio::task_local! {
    /// Set while an admin call runs: see [`uncounted`].
    static UNCOUNTED: ();
}

/// Runs `call` (an admin call) with its outcomes kept out of every breaker's count. A
/// breaker opens on the decision path's own failures: an admin read that times out (the
/// record it wanted, on a loaded store) says nothing a decision would not find out for
/// itself, and must not refuse every tenant's decisions for it; nor may an admin success
/// reset the count that decisions' failures are building.
pub async fn uncounted<F: Future>(call: F) -> F::Output {
    UNCOUNTED.scope((), call).await
}

/// Whether the running call's outcomes count (it is not an admin call).
fn counted() -> bool {
    UNCOUNTED.try_with(|_| ()).is_err()
}

pub struct Breaker {
    /// What it guards, for messages: "key store", "rate limit store".
    name: &'static str,
    settings: BreakerSettings,
    open: AtomicBool,
    consecutive_failures: AtomicU32,
    opened: AtomicU64,
}

impl Breaker {
    pub fn new(name: &'static str, settings: BreakerSettings) -> Self {
        Self {
            name,
            settings,
            open: AtomicBool::new(false),
            consecutive_failures: AtomicU32::new(0),
            opened: AtomicU64::new(0),
        }
    }

    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Relaxed)
    }

    /// How many times it has opened since start.
    pub fn times_opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    pub fn settings(&self) -> BreakerSettings {
        self.settings
    }

    /// Runs `call` unless the breaker is open, for at most `timeout`. `is_outage` says
    /// which of its errors mean the store is unreachable (they count towards opening);
    /// other errors and successes show it is up.
    /// The longest one guarded call may take.
    pub fn timeout(&self) -> std::time::Duration {
        self.settings.timeout
    }

    pub async fn guard<T, E>(
        &self,
        call: impl Future<Output = Result<T, E>>,
        is_outage: impl FnOnce(&E) -> bool,
    ) -> Result<Result<T, E>, Refused> {
        if self.is_open() {
            return Err(Refused::Open(self.name));
        }
        let counted = counted();
        match tokio::time::timeout(self.settings.timeout, call).await {
            Ok(result) => {
                match &result {
                    _ if !counted => {}
                    Err(e) if is_outage(e) => self.failed(),
                    _ => self.succeeded(),
                }
                Ok(result)
            }
            Err(_) => {
                if counted {
                    self.failed();
                }
                Err(Refused::TimedOut(self.name, self.settings.timeout))
            }
        }
    }

    /// Refuses at once while open; otherwise runs `call` unbounded (for writes, which
    /// must not be abandoned half-way by a timeout of ours).
    pub fn check_closed(&self) -> Result<(), Refused> {
        if self.is_open() {
            Err(Refused::Open(self.name))
        } else {
            Ok(())
        }
    }

    fn failed(&self) {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= self.settings.failures_to_open && !self.open.swap(true, Ordering::Relaxed) {
            self.opened.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                store = self.name,
                failures,
                "the {} is unreachable: not waiting for it until a probe succeeds",
                self.name
            );
        }
    }

    fn succeeded(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
    }

    fn close(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
        if self.open.swap(false, Ordering::Relaxed) {
            tracing::info!(store = self.name, "the {} answers again", self.name);
        }
    }

    /// Probes the store every `probe_every` while the breaker is open, and closes it
    /// when `probe` succeeds within a second.
    pub fn spawn_probe<F, Fut>(self: &Arc<Self>, probe: F) -> tokio::task::JoinHandle<()>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = bool> + Send,
    {
        let breaker = Arc::clone(self);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(breaker.settings.probe_every);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                if breaker.is_open() && tokio::time::timeout(Duration::from_secs(1), probe()).await.unwrap_or(false) {
                    breaker.close();
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(
            "test store",
            BreakerSettings {
                timeout: Duration::from_secs(60),
                failures_to_open: 2,
                probe_every: Duration::from_secs(60),
            },
        )
    }

    /// Opens at its first failure; a call waits at most 100 ms.
    fn slow_breaker() -> Breaker {
        Breaker::new(
            "slow store",
            BreakerSettings {
                timeout: Duration::from_millis(100),
                failures_to_open: 1,
                probe_every: Duration::from_secs(60),
            },
        )
    }

    #[tokio::test]
    async fn consecutive_outages_open_it_and_then_nothing_waits() {
        let b = breaker();
        let outage = |_: &&str| true;
        assert_eq!(b.guard(async { Err::<(), _>("down") }, outage).await, Ok(Err("down")));
        // A success in between resets the count.
        assert_eq!(b.guard(async { Ok::<_, &str>(1) }, outage).await, Ok(Ok(1)));
        assert_eq!(b.guard(async { Err::<(), _>("down") }, outage).await, Ok(Err("down")));
        assert!(!b.is_open());
        assert_eq!(b.guard(async { Err::<(), _>("down") }, outage).await, Ok(Err("down")));
        assert!(b.is_open());
        assert_eq!(b.times_opened(), 1);
        // Open: the call is not even started.
        let started = AtomicBool::new(false);
        let refused = b
            .guard(
                async {
                    started.store(true, Ordering::Relaxed);
                    Ok::<_, &str>(())
                },
                outage,
            )
            .await;
        assert_eq!(refused, Err(Refused::Open("test store")));
        assert!(!started.load(Ordering::Relaxed));
        assert!(b.check_closed().is_err());
        b.close();
        assert!(b.check_closed().is_ok());
    }

    #[tokio::test]
    async fn errors_that_are_no_outage_show_the_store_is_up() {
        let b = breaker();
        for _ in 0..5 {
            let _ = b.guard(async { Err::<(), _>("constraint") }, |_| false).await;
        }
        assert!(!b.is_open());
    }

    // Guards the fix "admin timeouts/errors never open the store breaker" (issue 27).
    #[tokio::test(start_paused = true)]
    async fn an_admin_calls_timeouts_and_outages_never_count() {
        let b = slow_breaker();
        let never = std::future::pending::<Result<(), ()>>();
        let timed_out = uncounted(b.guard(never, |_| true)).await;
        assert_eq!(timed_out, Err(Refused::TimedOut("slow store", Duration::from_millis(100))));
        assert_eq!(uncounted(b.guard(async { Err::<(), _>("down") }, |_| true)).await, Ok(Err("down")));
        assert!(!b.is_open());
        assert_eq!(b.times_opened(), 0);
        // The decision path's own failure still opens it.
        assert_eq!(b.guard(async { Err::<(), _>("down") }, |_| true).await, Ok(Err("down")));
        assert!(b.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_past_the_timeout_is_abandoned_and_counts_as_a_failure() {
        let b = slow_breaker();
        let never = std::future::pending::<Result<(), ()>>();
        assert_eq!(b.guard(never, |_| true).await, Err(Refused::TimedOut("slow store", Duration::from_millis(100))));
        assert!(b.is_open());
    }
}
