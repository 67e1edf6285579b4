//! `last_used_at` without a database write per request.
//!
//! An allowed call asks the cached key record whether its last known use is older than
//! the reporting interval (an atomic on the record: no lock, no lookup on the hot path).
//! Only the one call that claims the report touches the pending map; a background task
//! writes the map to the store in one transaction every few seconds. So each key costs at
//! most one write per interval per replica, and a failed write is kept for the next flush.

use crate::domain::{KeyId, Timestamp};
use crate::store::{KeyRecord, Store, StoreError};
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

impl Default for UsageSettings {
    fn default() -> Self {
        Self { every: Duration::from_secs(60), flush_interval: Duration::from_secs(5) }
    }
}

pub struct UsageRecorder {
    store: Arc<dyn Store>,
    settings: UsageSettings,
    pending: Mutex<HashMap<KeyId, Timestamp>>,
    /// Key uses written to the store.
    written: Counter,
}

impl UsageRecorder {
    pub fn new(store: Arc<dyn Store>, settings: UsageSettings) -> Self {
        Self { store, settings, pending: Mutex::default(), written: Counter::default() }
    }

    /// Called for every allowed call made with a key.
    pub fn used(&self, key: &KeyRecord, now: Timestamp) {
        if key.usage.claim_report(now, self.settings.every) {
            self.keep(&[(key.id, now)]);
        }
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
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(self.settings.flush_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = self.flush().await {
                    tracing::warn!(error = %e, pending = self.pending(), "cannot record key usage yet; will retry");
                }
            }
        })
    }
}
