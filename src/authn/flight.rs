//! One run of a piece of work per key at a time: callers that ask for a key while its work
//! is running wait for that run and share its result, whatever it is (an error too: a
//! wrong secret presented by 32 callers at once costs one argon2 run, not 32).
//!
//! A caller that gives up (its deadline, a disconnect) while running the work leaves it to
//! the next waiter, which runs it again (tokio's `OnceCell`). Nothing is remembered after
//! the last caller leaves: what a finished run proved is the caller's to remember (the
//! authenticator's memories of verified and rejected credentials), so the map holds only
//! work in flight and needs no bound or expiry of its own.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::OnceCell;

pub struct SingleFlight<K, V> {
    running: Mutex<HashMap<K, Arc<OnceCell<V>>>>,
}

impl<K, V> Default for SingleFlight<K, V> {
    fn default() -> Self {
        Self { running: Mutex::new(HashMap::new()) }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> SingleFlight<K, V> {
    /// The result of the run for `key` in flight, or of `work`, run now.
    pub async fn run<F: Future<Output = V>>(&self, key: K, work: F) -> V {
        let cell = self.running().entry(key.clone()).or_default().clone();
        let hold = Leave { flight: self, key, cell };
        hold.cell.get_or_init(|| work).await.clone()
    }

    /// Runs in flight (for tests).
    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.running().len()
    }

    fn running(&self) -> MutexGuard<'_, HashMap<K, Arc<OnceCell<V>>>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A caller's hold on a run: the last one to leave (done or gone) removes the run, so the
/// next caller starts afresh.
struct Leave<'a, K: Hash + Eq, V> {
    flight: &'a SingleFlight<K, V>,
    key: K,
    cell: Arc<OnceCell<V>>,
}

impl<K: Hash + Eq, V> Drop for Leave<'_, K, V> {
    fn drop(&mut self) {
        let mut running = self.flight.running.lock().unwrap_or_else(|e| e.into_inner());
        // Clones are made only under this lock: the map's and this one are the last.
        let last = running.get(&self.key).is_some_and(|cell| Arc::ptr_eq(cell, &self.cell))
            && Arc::strong_count(&self.cell) == 2;
        if last {
            running.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn callers_at_the_same_time_share_one_run_and_its_error() {
        let flight: Arc<SingleFlight<u8, Result<(), &'static str>>> = Arc::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let (release, released) = tokio::sync::watch::channel(false);
        let mut callers = Vec::new();
        for _ in 0..8 {
            let (flight, runs, mut released) = (flight.clone(), runs.clone(), released.clone());
            callers.push(tokio::spawn(async move {
                flight
                    .run(1, async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        let _ = released.wait_for(|r| *r).await;
                        Err("mismatch")
                    })
                    .await
            }));
        }
        while flight.running().get(&1).map_or(0, Arc::strong_count) < 9 {
            tokio::task::yield_now().await;
        }
        release.send(true).unwrap();
        for caller in callers {
            assert_eq!(caller.await.unwrap(), Err("mismatch"));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(flight.in_flight(), 0, "nothing is kept once the callers leave");
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_that_gives_up_leaves_the_run_to_the_next_and_nothing_behind() {
        let flight: SingleFlight<u8, u32> = SingleFlight::default();
        let gave_up = tokio::time::timeout(Duration::from_millis(1), flight.run(1, std::future::pending())).await;
        assert!(gave_up.is_err());
        assert_eq!(flight.in_flight(), 0, "an abandoned run is not left in the map");
        assert_eq!(flight.run(1, async { 7 }).await, 7);
        assert_eq!(flight.run(1, async { 8 }).await, 8, "a finished run is not remembered");
    }
}
