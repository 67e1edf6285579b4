//! `last_used_at` without a database write per request.
//!
//! An allowed call asks whether the key's last known use — the later of what is stored and
//! what this replica last reported, kept here, not on the record — is older than the
//! reporting interval. Only a call that claims the report touches the pending map; a
//! background task
//! writes the map to the store in one transaction every few seconds. So each key costs at
//! most one write per interval per replica, and a failed write is kept for the next flush.

use crate::domain::{KeyId, Timestamp};
use crate::store::{KeyRecord, KeyUse, StoreError};
use prometheus_client::metrics::counter::Counter;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Largest batch in one transaction.
const MAX_BATCH: usize = 500;

#[derive(Debug, Clone, Copy)]
pub struct UsageSettings {
    /// A key's use is written at most once per this long (per replica).
    pub every: Duration,
    /// How often pending uses are written.
    pub flush_interval: Duration,
}

impl UsageSettings {
    pub const DEFAULT_EVERY: Duration = Duration::from_secs(60);
}

impl Default for UsageSettings {
    fn default() -> Self {
        Self { every: Self::DEFAULT_EVERY, flush_interval: Duration::from_secs(5) }
    }
}

pub struct UsageRecorder {
    store: Arc<dyn KeyUse>,
    settings: UsageSettings,
    /// The last use this replica reported per key, in Unix milliseconds.
    reported: quick_cache::sync::Cache<KeyId, i64>,
    pending: Mutex<HashMap<KeyId, Timestamp>>,
    /// Key uses written to the store.
    written: Counter,
}

impl UsageRecorder {
    /// `capacity`: the keys whose last report is remembered (as many as the cache holds).
    pub fn new(store: Arc<dyn KeyUse>, settings: UsageSettings, capacity: u64) -> Self {
        Self {
            store,
            settings,
            reported: quick_cache::sync::Cache::new(usize::try_from(capacity.max(1)).unwrap_or(usize::MAX)),
            pending: Mutex::default(),
            written: Counter::default(),
        }
    }

    /// Called for every allowed call made with a key. Two calls racing past the interval
    /// may both report: the pending map keeps one use per key either way.
    pub fn used(&self, key: &KeyRecord, now: Timestamp) {
        let every = self.settings.every.as_millis() as i64;
        let due =
            |last: Option<Timestamp>| now.as_millis().saturating_sub(last.map_or(0, Timestamp::as_millis)) >= every;
        // The stored use, read with the record, settles most calls without a lookup.
        if due(key.last_used_at) && due(self.last_known(key)) {
            self.reported.insert(key.id, now.as_millis());
            self.keep(&[(key.id, now)]);
        }
    }

    /// The key's last use as known here: stored, or reported since.
    pub fn last_known(&self, key: &KeyRecord) -> Option<Timestamp> {
        let reported = self.reported.get(&key.id).map(Timestamp::from_millis);
        key.last_used_at.max(reported)
    }

    /// Writes what is pending. On failure everything not written stays pending.
    pub async fn flush(&self) -> Result<usize, StoreError> {
        let batch: Vec<(KeyId, Timestamp)> = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::take(&mut *pending).into_iter().collect()
        };
        let mut written = 0;
        for (i, chunk) in batch.chunks(MAX_BATCH).enumerate() {
            if let Err(e) = self.store.record_key_usage(chunk).await {
                self.keep(&batch[i * MAX_BATCH..]);
                return Err(e);
            }
            written += chunk.len();
            self.written.inc_by(chunk.len() as u64);
        }
        Ok(written)
    }

    /// Adds uses to the pending ones, keeping the later time per key.
    fn keep(&self, uses: &[(KeyId, Timestamp)]) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for &(id, at) in uses {
            let kept = pending.entry(id).or_insert(at);
            *kept = (*kept).max(at);
        }
    }

    /// How many key uses have been written; the counter the metrics export.
    pub fn written(&self) -> Counter {
        self.written.clone()
    }

    pub fn pending(&self) -> usize {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Flushes every `flush_interval` until aborted.
    pub fn spawn_flusher(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        every(self.settings.flush_interval, move || {
            let this = self.clone();
            async move {
                if let Err(e) = this.flush().await {
                    tracing::warn!(error = %e, pending = this.pending(), "cannot record key usage yet; will retry");
                }
            }
        })
    }
}

/// Runs `task` every `interval` (the first at once; a late tick delays the next) until
/// aborted: the background writers' loop.
pub fn every<F, Fut>(interval: Duration, mut task: F) -> tokio::task::JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            task().await;
        }
    })
}
