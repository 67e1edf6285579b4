//! Renewals batched: a replica's slices due for renewal (in the background, or released)
//! go to Redis together, several subjects in one run of the lease script and so one round
//! trip, as a group commit does: the first slice due starts a flush, and whatever comes due
//! while a flush is on its way goes in the next one. Nothing waits to fill a batch. On a
//! cluster a script's keys share a slot, so a batch is one script per slot, sent at once.
//!
//! A request that finds its slice empty does not queue: its renewal goes alone, at once.

use super::{LeaseCell, Redis};
use crate::ratelimit::connection::by_slot;
use crate::ratelimit::lease::{Granted, Renewal, LEASE_ARGS};
use crate::ratelimit::window::{bucket_ms, BUCKETS};
use crate::ratelimit::LimiterError;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// The most slices one script renews: a script holds Redis for its length (about 20 µs a
/// slice), so a batch stays well under a millisecond of other clients' wait.
pub(super) const MAX_BATCH: usize = 32;

/// The most slices one flush takes from the queue (the rest go in the next).
const MAX_FLUSH: usize = 1_024;

/// One slice's renewal.
pub(super) type Due = (Arc<LeaseCell>, Renewal);

/// Renewals waiting for the flush under way.
#[derive(Default)]
pub(super) struct Queue {
    slices: Vec<Due>,
    /// A flush is under way: it takes what is queued when its round trip is done.
    flushing: bool,
}

impl Queue {
    fn lock(queue: &Mutex<Queue>) -> std::sync::MutexGuard<'_, Queue> {
        queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Redis {
    /// Renews `cell`'s slice in the background, with whatever else is due.
    pub(super) fn enqueue(self: &Arc<Self>, cell: Arc<LeaseCell>, sent: Renewal) {
        let start = {
            let mut queue = Queue::lock(&self.queue);
            queue.slices.push((cell, sent));
            !std::mem::replace(&mut queue.flushing, true)
        };
        if start {
            tokio::spawn(self.clone().flush());
        }
    }

    /// Sends what is queued until nothing is.
    async fn flush(self: Arc<Self>) {
        loop {
            let batch: Vec<Due> = {
                let mut queue = Queue::lock(&self.queue);
                if queue.slices.is_empty() {
                    queue.flushing = false;
                    return;
                }
                let take = queue.slices.len().min(MAX_FLUSH);
                queue.slices.drain(..take).collect()
            };
            self.renew_all(batch).await;
        }
    }

    /// Renews every slice of `batch`: one script per slot and per [`MAX_BATCH`] slices,
    /// all sent at once.
    pub(super) async fn renew_all(self: &Arc<Self>, mut batch: Vec<Due>) {
        let groups =
            by_slot(&batch.iter().map(|(cell, _)| cell.keys.0.as_str()).collect::<Vec<_>>(), self.client.is_cluster());
        if let [group] = &groups[..] {
            if group.len() <= MAX_BATCH {
                let _ = self.renew_slices(&batch).await;
                return;
            }
        }
        let mut slots: Vec<Vec<Due>> = groups.iter().map(|g| Vec::with_capacity(g.len())).collect();
        let mut slot_of = vec![0; batch.len()];
        for (n, group) in groups.iter().enumerate() {
            group.iter().for_each(|&i| slot_of[i] = n);
        }
        for (i, due) in batch.drain(..).enumerate() {
            slots[slot_of[i]].push(due);
        }
        let mut scripts = tokio::task::JoinSet::new();
        for slot in slots {
            for chunk in slot.chunks(MAX_BATCH) {
                let (redis, chunk) = (self.clone(), chunk.to_vec());
                scripts.spawn(async move {
                    let _ = redis.renew_slices(&chunk).await;
                });
            }
        }
        while scripts.join_next().await.is_some() {}
    }

    /// Sends `slices` (of one slot) in one script, tells each its answer, and wakes whoever
    /// waits on it.
    pub(super) async fn renew_slices(&self, slices: &[Due]) -> Result<(), LimiterError> {
        self.stats.renewals.fetch_add(slices.len() as u64, Ordering::Relaxed);
        self.stats.round_trips.fetch_add(1, Ordering::Relaxed);
        let answer = self
            .breaker
            .guard(self.lease_in_redis(slices), |_| true)
            .await
            .map_err(|refused| LimiterError::Unreachable(Box::new(refused)))
            .and_then(|answered| answered);
        let period = self.settings.period_ms();
        match &answer {
            Ok(granted) => {
                for ((cell, sent), granted) in slices.iter().zip(granted) {
                    cell.lock().renewed(sent, *granted, period);
                    cell.renewed.notify_waiters();
                }
            }
            Err(e) => {
                self.stats.failed.fetch_add(slices.len() as u64, Ordering::Relaxed);
                tracing::debug!(error = %e, slices = slices.len(), "rate limit leases were not renewed");
                for (cell, sent) in slices {
                    cell.lock().renewal_failed(sent);
                    cell.renewed.notify_waiters();
                }
            }
        }
        answer.map(drop)
    }

    async fn lease_in_redis(&self, slices: &[Due]) -> Result<Vec<Granted>, LimiterError> {
        let mut connection = self.connection().await?;
        let period = self.settings.period_ms();
        let mut invocation = self.lease.prepare_invoke();
        for (cell, sent) in slices {
            let (window, limit) = cell.terms();
            let sizing = self.settings.sizing(limit);
            invocation.key(&cell.keys.0).key(&cell.keys.1);
            let args = invocation.arg(sent.at).arg(window).arg(limit).arg(bucket_ms(window)).arg(BUCKETS + 1);
            let args = args.arg(&cell.field).arg(sent.reported).arg(sent.acked).arg(sent.keep).arg(sent.want);
            args.arg(period).arg(sizing.least).arg(sizing.most);
        }
        let answer: Vec<i64> =
            invocation.invoke_async(&mut connection).await.map_err(|e| LimiterError::Unreachable(Box::new(e)))?;
        if answer.len() != 4 * slices.len() {
            return Err(LimiterError::Unreachable("the lease script answered in an unknown shape".into()));
        }
        let clamp = |v: i64| v.clamp(0, i64::from(u32::MAX)) as u32;
        Ok(answer
            .chunks_exact(4)
            .map(|a| Granted { granted: clamp(a[0]), room: clamp(a[1]), retry_after_ms: a[2], kept: clamp(a[3]) })
            .collect())
    }
}

/// Every slice's arguments are [`LEASE_ARGS`] long, as the script reads them.
const _: () = assert!(LEASE_ARGS == 13);
