//! Counting in memory, flushing to the store.

use super::{UsageCountSettings, OUTCOMES};
use crate::clock::Clock;
use crate::domain::{AccountId, KeyId, KeyRecord, OwnerId, Timestamp};
use crate::store::usage::{Granularity, SubjectKind, UsageIncrement, UsageStore};
use crate::store::StoreError;
use std::collections::hash_map::Entry as MapEntry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

/// Shards of the in-memory map: a decision locks one, for reading.
pub const SHARDS: usize = 32;
/// Increments per transaction of a flush.
const BATCH: usize = 5_000;
/// Old buckets are pruned at most this often (milliseconds).
const PRUNE_EVERY_MS: i64 = 60_000;

/// One key's decisions in one minute, by outcome slot.
struct Tally {
    owner: Option<OwnerId>,
    account: AccountId,
    counts: [AtomicU32; OUTCOMES.len()],
}

type Shard = RwLock<HashMap<(KeyId, i64), Tally>>;

/// A row of a flush before it is written: (kind, subject, account, granularity, bucket, slot).
type Row = (SubjectKind, String, AccountId, Granularity, i64, u8);

/// What the metrics read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageCountsStats {
    /// (key, minute) tallies in memory now.
    pub keys: usize,
    /// Increments a failed flush left for the next one.
    pub pending: usize,
    /// Decisions not counted: the map held `max_keys` keys already.
    pub dropped_keys_full: u64,
    /// Decisions not counted: their account held `max_keys_per_account` keys already.
    pub dropped_account_full: u64,
    /// Decisions whose failed increments could not be kept (pending was full).
    pub dropped_pending_full: u64,
    /// Increments written to the store.
    pub written: u64,
    pub flush_failures: u64,
}

pub struct UsageCounts {
    shards: Box<[Shard]>,
    keys: AtomicUsize,
    /// Keys each account holds in the shards (changed only when a key enters or leaves).
    per_account: Mutex<HashMap<AccountId, usize>>,
    settings: UsageCountSettings,
    store: Arc<dyn UsageStore>,
    clock: Arc<dyn Clock>,
    /// Increments of failed flushes, summed, for the next one.
    pending: Mutex<HashMap<Row, u64>>,
    /// One flush at a time (the timer's, a read's, the shutdown's).
    flushing: tokio::sync::Mutex<()>,
    last_prune: AtomicI64,
    dropped_keys_full: AtomicU64,
    dropped_account_full: AtomicU64,
    dropped_pending_full: AtomicU64,
    written: AtomicU64,
    flush_failures: AtomicU64,
}

fn shard_of(id: &KeyId) -> usize {
    let hash = id.as_body().bytes().fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(usize::from(b)));
    hash % SHARDS
}

impl UsageCounts {
    pub fn new(store: Arc<dyn UsageStore>, clock: Arc<dyn Clock>, settings: UsageCountSettings) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            keys: AtomicUsize::new(0),
            per_account: Mutex::default(),
            settings,
            store,
            clock,
            pending: Mutex::default(),
            flushing: tokio::sync::Mutex::new(()),
            last_prune: AtomicI64::new(i64::MIN),
            dropped_keys_full: AtomicU64::new(0),
            dropped_account_full: AtomicU64::new(0),
            dropped_pending_full: AtomicU64::new(0),
            written: AtomicU64::new(0),
            flush_failures: AtomicU64::new(0),
        }
    }

    /// Where the counts are written and read.
    pub fn store(&self) -> &dyn UsageStore {
        &*self.store
    }

    pub fn settings(&self) -> &UsageCountSettings {
        &self.settings
    }

    /// Counts one decision made on `key` at `now` ending in `outcome` (a slot of
    /// [`OUTCOMES`]). A read lock, a lookup and an atomic add; the key's first decision of
    /// a minute (since the last flush) inserts it under the shard's write lock.
    pub fn count(&self, key: &KeyRecord, now: Timestamp, outcome: usize) {
        let minute = now.as_millis().div_euclid(60_000);
        let shard = &self.shards[shard_of(&key.id)];
        if let Some(tally) = shard.read().unwrap_or_else(PoisonError::into_inner).get(&(key.id, minute)) {
            tally.counts[outcome].fetch_add(1, Relaxed);
            return;
        }
        // Full: a new key is not counted, and no write lock is taken to learn it (a flood
        // of new keys would otherwise stall every read of the shard).
        if self.keys.load(Relaxed) >= self.settings.max_keys {
            self.dropped_keys_full.fetch_add(1, Relaxed);
            return;
        }
        let mut map = shard.write().unwrap_or_else(PoisonError::into_inner);
        let tally = match map.entry((key.id, minute)) {
            MapEntry::Occupied(tally) => tally.into_mut(),
            MapEntry::Vacant(vacant) => {
                if self.keys.load(Relaxed) >= self.settings.max_keys {
                    self.dropped_keys_full.fetch_add(1, Relaxed);
                    return;
                }
                if !self.enter_account(&key.account_id) {
                    self.dropped_account_full.fetch_add(1, Relaxed);
                    return;
                }
                self.keys.fetch_add(1, Relaxed);
                vacant.insert(Tally {
                    owner: key.owner_id.clone(),
                    account: key.account_id.clone(),
                    counts: std::array::from_fn(|_| AtomicU32::new(0)),
                })
            }
        };
        tally.counts[outcome].fetch_add(1, Relaxed);
    }

    /// Whether `account` may have one more key counted, taking its place when it may.
    /// Only a key's first decision of a minute comes here (under its shard's write lock).
    fn enter_account(&self, account: &AccountId) -> bool {
        let mut held = self.per_account.lock().unwrap_or_else(PoisonError::into_inner);
        match held.get_mut(account) {
            Some(n) if *n >= self.settings.max_keys_per_account => false,
            Some(n) => {
                *n += 1;
                true
            }
            None => {
                held.insert(account.clone(), 1);
                true
            }
        }
    }

    pub fn stats(&self) -> UsageCountsStats {
        UsageCountsStats {
            keys: self.keys.load(Relaxed),
            pending: self.pending.lock().unwrap_or_else(PoisonError::into_inner).len(),
            dropped_keys_full: self.dropped_keys_full.load(Relaxed),
            dropped_account_full: self.dropped_account_full.load(Relaxed),
            dropped_pending_full: self.dropped_pending_full.load(Relaxed),
            written: self.written.load(Relaxed),
            flush_failures: self.flush_failures.load(Relaxed),
        }
    }

    /// The accounts of keys taken out of a shard give their places back.
    fn leave_accounts<'a>(&self, accounts: impl Iterator<Item = &'a AccountId>) {
        let mut held = self.per_account.lock().unwrap_or_else(PoisonError::into_inner);
        for account in accounts {
            if let Some(n) = held.get_mut(account) {
                *n -= 1;
                if *n == 0 {
                    held.remove(account);
                }
            }
        }
    }

    /// Takes what the shards hold, summed per key, owner and account and per minute, hour
    /// and day, with what earlier failed flushes left.
    fn take(&self) -> HashMap<Row, u64> {
        let mut rows: HashMap<Row, u64> =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        for shard in self.shards.iter() {
            let taken = std::mem::take(&mut *shard.write().unwrap_or_else(PoisonError::into_inner));
            self.keys.fetch_sub(taken.len(), Relaxed);
            self.leave_accounts(taken.values().map(|tally| &tally.account));
            for ((key, minute), tally) in taken {
                let key = key.to_string();
                for (slot, n) in tally.counts.iter().enumerate() {
                    let n = u64::from(n.load(Relaxed));
                    if n == 0 {
                        continue;
                    }
                    for granularity in Granularity::ALL {
                        let bucket = granularity.bucket_of(minute * 60_000);
                        let mut add = |kind, subject: &str| {
                            let row =
                                (kind, subject.to_owned(), tally.account.clone(), granularity, bucket, slot as u8);
                            *rows.entry(row).or_default() += n;
                        };
                        add(SubjectKind::Key, &key);
                        if let Some(owner) = &tally.owner {
                            add(SubjectKind::Owner, owner.as_str());
                        }
                        add(SubjectKind::Account, tally.account.as_str());
                    }
                }
            }
        }
        rows
    }

    /// Keeps increments that could not be written for the next flush, up to a bound
    /// (twice `max_keys` increments); past it they are counted as dropped.
    fn keep(&self, rows: impl Iterator<Item = (Row, u64)>) {
        let bound = self.settings.max_keys.saturating_mul(2);
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        for (row, n) in rows {
            let len = pending.len();
            match pending.entry(row) {
                MapEntry::Occupied(mut kept) => *kept.get_mut() += n,
                MapEntry::Vacant(vacant) if len < bound => {
                    vacant.insert(n);
                }
                // Each decision is in exactly one key-minute row: those count the loss.
                MapEntry::Vacant(vacant) => {
                    let (kind, _, _, granularity, _, _) = vacant.key();
                    if *kind == SubjectKind::Key && *granularity == Granularity::Minute {
                        self.dropped_pending_full.fetch_add(n, Relaxed);
                    }
                }
            }
        }
    }

    /// Writes what was counted since the last flush, and prunes old buckets (at most once
    /// a minute). On failure, what was not written is kept for the next flush.
    pub async fn flush(&self) -> Result<usize, StoreError> {
        let _one = self.flushing.lock().await;
        let mut rows: Vec<(Row, u64)> = self.take().into_iter().collect();
        // In one order on every replica: two replicas flushing at once upsert the shared
        // account, owner, hour and day rows in the same order, so Postgres's row locks
        // cannot deadlock them.
        rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut written = 0;
        for (i, batch) in rows.chunks(BATCH).enumerate() {
            let increments: Vec<UsageIncrement> = batch
                .iter()
                .map(|((kind, subject, account, granularity, bucket_start, slot), n)| UsageIncrement {
                    kind: *kind,
                    subject: subject.clone(),
                    account: account.clone(),
                    granularity: *granularity,
                    bucket_start: *bucket_start,
                    code: OUTCOMES[usize::from(*slot)].0,
                    reason: OUTCOMES[usize::from(*slot)].1,
                    n: *n,
                })
                .collect();
            if let Err(e) = self.store.add_usage(&increments).await {
                self.flush_failures.fetch_add(1, Relaxed);
                self.keep(rows[i * BATCH..].iter().cloned());
                return Err(e);
            }
            written += batch.len();
            self.written.fetch_add(batch.len() as u64, Relaxed);
        }
        self.prune().await;
        Ok(written)
    }

    /// Deletes buckets past their retention, at most once a minute.
    async fn prune(&self) {
        let now = self.clock.now().as_millis();
        let last = self.last_prune.load(Relaxed);
        if now.saturating_sub(last) < PRUNE_EVERY_MS {
            return;
        }
        self.last_prune.store(now, Relaxed);
        for granularity in Granularity::ALL {
            let keep = self.settings.retention(granularity).as_millis() as i64;
            let before = Timestamp::from_millis(now.saturating_sub(keep));
            if let Err(e) = self.store.prune_usage(granularity, before).await {
                tracing::warn!(error = %e, granularity = granularity.as_str(), "cannot prune old usage counts yet");
            }
        }
    }

    /// Flushes every `flush_interval` until aborted.
    pub fn spawn_flusher(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        crate::usage::every(self.settings.flush_interval, move || {
            let this = self.clone();
            async move {
                if let Err(e) = this.flush().await {
                    let pending = this.stats().pending;
                    tracing::warn!(error = %e, pending, "cannot write usage counts yet; kept for the next flush");
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What one key costs in memory while it is counted (a minute of it): the map's key
    /// and value, and hashbrown's control byte, at its 7/8 load; ids on the heap not included.
    #[test]
    fn a_counted_key_costs_under_200_bytes_of_map() {
        let entry = std::mem::size_of::<((KeyId, i64), Tally)>() + 1;
        let at_load = entry * 8 / 7;
        eprintln!("a counted key: {entry} bytes of entry, {at_load} at 7/8 load");
        assert!(at_load < 200, "{at_load} bytes");
    }
}
