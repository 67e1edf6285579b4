//! Usage counts' storage: decisions by outcome per subject and time bucket, written as
//! additive increments (each replica adds what it counted, so replicas sum exactly), read
//! back as series and as an account's top keys. Its own trait: the analytics flusher and
//! the admin reads are its only users, and none of the decision's stores carries it.

use super::StoreError;
use crate::domain::{AccountId, Timestamp};

/// Whose decisions a count is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SubjectKind {
    Key,
    Owner,
    Account,
}

impl SubjectKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            SubjectKind::Key => "key",
            SubjectKind::Owner => "owner",
            SubjectKind::Account => "account",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        [SubjectKind::Key, SubjectKind::Owner, SubjectKind::Account].into_iter().find(|k| k.as_str() == raw)
    }
}

/// A bucket's width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Granularity {
    Minute,
    Hour,
    Day,
}

impl Granularity {
    pub const ALL: [Granularity; 3] = [Granularity::Minute, Granularity::Hour, Granularity::Day];

    pub const fn as_str(self) -> &'static str {
        match self {
            Granularity::Minute => "minute",
            Granularity::Hour => "hour",
            Granularity::Day => "day",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|g| g.as_str() == raw)
    }

    pub const fn millis(self) -> i64 {
        match self {
            Granularity::Minute => 60_000,
            Granularity::Hour => 3_600_000,
            Granularity::Day => 86_400_000,
        }
    }

    /// The start of the bucket `at` falls in (UTC).
    pub const fn bucket_of(self, at: i64) -> i64 {
        at.div_euclid(self.millis()) * self.millis()
    }
}

/// One increment: `n` more decisions of `subject` ending in (`code`, `reason`) in the
/// bucket that starts at `bucket_start`. `code` is `allowed` (and `reason` empty) for
/// allowed calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageIncrement {
    pub kind: SubjectKind,
    pub subject: String,
    /// The subject's account: an account's top keys are read by it.
    pub account: AccountId,
    pub granularity: Granularity,
    pub bucket_start: i64,
    pub code: &'static str,
    pub reason: &'static str,
    pub n: u64,
}

/// Which counts to read: one subject's buckets in [from, to).
#[derive(Debug, Clone)]
pub struct UsageQuery {
    pub kind: SubjectKind,
    pub subject: String,
    /// For a key or an owner: only counts made under this account.
    pub account: AccountId,
    pub granularity: Granularity,
    pub from: Timestamp,
    pub to: Timestamp,
}

/// One stored count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageCount {
    pub bucket_start: i64,
    pub code: String,
    pub reason: String,
    pub n: u64,
}

/// An account's key, with its counts over a range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTotals {
    pub key_id: String,
    pub allowed: u64,
    pub denied: u64,
}

#[async_trait::async_trait]
pub trait UsageStore: Send + Sync {
    /// Adds every increment (`n = n + excluded.n`) in one transaction: all or none.
    async fn add_usage(&self, increments: &[UsageIncrement]) -> Result<(), StoreError>;

    /// The subject's counts in [from, to), by bucket then outcome.
    async fn usage(&self, query: &UsageQuery) -> Result<Vec<UsageCount>, StoreError>;

    /// The account's keys with the most decisions in [from, to) (`by_denials`: the most
    /// denied), at most `limit`.
    async fn top_keys(
        &self,
        account: &AccountId,
        granularity: Granularity,
        range: (Timestamp, Timestamp),
        by_denials: bool,
        limit: u32,
    ) -> Result<Vec<KeyTotals>, StoreError>;

    /// Deletes `granularity`'s buckets that start before `before`; how many rows went.
    async fn prune_usage(&self, granularity: Granularity, before: Timestamp) -> Result<u64, StoreError>;
}
