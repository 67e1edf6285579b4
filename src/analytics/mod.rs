//! Usage analytics: every decision made on a verified key, counted by outcome (allowed, or
//! the deny's code and reason) per key, owner and account, per minute, hour and day.
//!
//! A decision costs a read lock on one of [`counter::SHARDS`] shards, a hash lookup and one
//! atomic add ([`UsageCounts::count`]); only a key's first decision of a flush interval
//! inserts (and allocates). Every `flush_interval` a background task swaps the shards out
//! and writes what they held, summed per owner and account as well, as additive increments
//! ([`crate::store::usage::UsageStore`]): replicas add up exactly. A failed write is kept
//! for the next flush; what cannot be kept is counted in a metric, never lost silently.

pub mod counter;
mod outcome;

pub use counter::{UsageCounts, UsageCountsStats};
pub use outcome::{outcome_of, OUTCOMES};

use std::time::Duration;

/// How usage is counted and kept (`--usage-*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageCountSettings {
    /// How often counts are written to the store.
    pub flush_interval: Duration,
    /// Keys counted in memory at once (per minute of a flush interval): a key past it is
    /// not counted until the next flush, and `keygate_usage_dropped_total` says how many.
    pub max_keys: usize,
    /// Of those, the most one account's keys may take, so that one account's many keys
    /// cannot leave another's uncounted: past it, `keygate_usage_dropped_total` says how
    /// many of its decisions were not counted.
    pub max_keys_per_account: usize,
    /// How long per-minute, per-hour and per-day buckets are kept.
    pub minute_retention: Duration,
    pub hour_retention: Duration,
    pub day_retention: Duration,
}

impl UsageCountSettings {
    pub const FLUSH_INTERVAL: Duration = Duration::from_secs(10);
    pub const MAX_KEYS: usize = 100_000;
    pub const MAX_KEYS_PER_ACCOUNT: usize = 10_000;
    pub const MINUTE_RETENTION: Duration = Duration::from_secs(24 * 3600);
    pub const HOUR_RETENTION: Duration = Duration::from_secs(30 * 86_400);
    pub const DAY_RETENTION: Duration = Duration::from_secs(365 * 86_400);

    /// How long `granularity`'s buckets are kept.
    pub fn retention(&self, granularity: crate::store::usage::Granularity) -> Duration {
        use crate::store::usage::Granularity;
        match granularity {
            Granularity::Minute => self.minute_retention,
            Granularity::Hour => self.hour_retention,
            Granularity::Day => self.day_retention,
        }
    }
}

impl Default for UsageCountSettings {
    fn default() -> Self {
        Self {
            flush_interval: Self::FLUSH_INTERVAL,
            max_keys: Self::MAX_KEYS,
            max_keys_per_account: Self::MAX_KEYS_PER_ACCOUNT,
            minute_retention: Self::MINUTE_RETENTION,
            hour_retention: Self::HOUR_RETENTION,
            day_retention: Self::DAY_RETENTION,
        }
    }
}
