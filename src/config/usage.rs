//! Usage analytics' flags: how often counts are written, how many keys are counted in
//! memory at once, how long each bucket width is kept.

use super::range::{in_range, Checked};
use crate::analytics::UsageCountSettings;
use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct UsageArgs {
    /// Usage counts (decisions by outcome per key, owner and account) are written to the
    /// database this often, as additive increments.
    #[arg(
        long,
        env = "KEYGATE_USAGE_FLUSH_SECONDS",
        default_value_t = UsageCountSettings::FLUSH_INTERVAL.as_secs().into(),
        value_parser = in_range::<u64>(1..=300)
    )]
    pub usage_flush_seconds: Checked<u64>,
    /// Keys counted in memory between two flushes (a key counts once per minute it is used
    /// in). Past it, a further key's decisions are not counted until the next flush, and
    /// keygate_usage_dropped_total{reason="keys_full"} counts them.
    #[arg(
        long,
        env = "KEYGATE_USAGE_MAX_KEYS",
        default_value_t = (UsageCountSettings::MAX_KEYS as u64).into(),
        value_parser = in_range::<u64>(1..=10_000_000)
    )]
    pub usage_max_keys: Checked<u64>,
    /// Of --usage-max-keys, the most one account's keys may take between two flushes, so
    /// that one account's many keys cannot leave another account's uncounted. Past it, the
    /// account's further keys are not counted until the next flush, and
    /// keygate_usage_dropped_total{reason="account_full"} counts them.
    #[arg(
        long,
        env = "KEYGATE_USAGE_MAX_KEYS_PER_ACCOUNT",
        default_value_t = (UsageCountSettings::MAX_KEYS_PER_ACCOUNT as u64).into(),
        value_parser = in_range::<u64>(1..=10_000_000)
    )]
    pub usage_max_keys_per_account: Checked<u64>,
    /// Per-minute usage buckets are kept this many hours.
    #[arg(
        long,
        env = "KEYGATE_USAGE_MINUTE_RETENTION_HOURS",
        default_value_t = 24.into(),
        value_parser = in_range::<u64>(1..=24 * 31)
    )]
    pub usage_minute_retention_hours: Checked<u64>,
    /// Per-hour usage buckets are kept this many days.
    #[arg(
        long,
        env = "KEYGATE_USAGE_HOUR_RETENTION_DAYS",
        default_value_t = 30.into(),
        value_parser = in_range::<u64>(1..=366)
    )]
    pub usage_hour_retention_days: Checked<u64>,
    /// Per-day usage buckets are kept this many days.
    #[arg(
        long,
        env = "KEYGATE_USAGE_DAY_RETENTION_DAYS",
        default_value_t = 365.into(),
        value_parser = in_range::<u64>(1..=3660)
    )]
    pub usage_day_retention_days: Checked<u64>,
}

impl UsageArgs {
    pub(super) fn settings(&self, problems: &mut Vec<String>) -> UsageCountSettings {
        const HOUR: u64 = 3600;
        const DAY: u64 = 86_400;
        UsageCountSettings {
            flush_interval: Duration::from_secs(self.usage_flush_seconds.value(problems)),
            max_keys: usize::try_from(self.usage_max_keys.value(problems)).unwrap_or(usize::MAX),
            max_keys_per_account: usize::try_from(self.usage_max_keys_per_account.value(problems))
                .unwrap_or(usize::MAX),
            minute_retention: Duration::from_secs(self.usage_minute_retention_hours.value(problems) * HOUR),
            hour_retention: Duration::from_secs(self.usage_hour_retention_days.value(problems) * DAY),
            day_retention: Duration::from_secs(self.usage_day_retention_days.value(problems) * DAY),
        }
    }
}
