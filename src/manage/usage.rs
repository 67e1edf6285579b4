//! Usage: a key's, an owner's or an account's decisions by outcome over time, and an
//! account's top keys. Read under the same confinement as the records themselves: a key of
//! another account is not found, another account's owner or account is out of scope.

use super::confinement::{visible, within};
use super::{ManageError, Manager};
use crate::domain::{AccountId, AdminGrant, InvalidField, KeyId, OwnerId, Timestamp};
use crate::store::usage::{Granularity, KeyTotals, SubjectKind, UsageCount, UsageQuery};

/// Most buckets one read returns: a day of minutes, two months of hours, four years of days.
pub const MAX_USAGE_BUCKETS: i64 = 1_500;
/// Most keys a top-keys read returns.
pub const MAX_TOP_KEYS: u32 = 100;
pub const DEFAULT_TOP_KEYS: u32 = 10;

/// A range of time, as asked: either end may be left to its default.
#[derive(Debug, Clone, Copy)]
pub struct UsageRange {
    pub from: Option<Timestamp>,
    pub to: Option<Timestamp>,
    pub granularity: Granularity,
}

/// Whose usage: a key (its account is the key's), an owner within an account, an account.
#[derive(Debug, Clone)]
pub enum UsageSubject {
    Key(KeyId),
    Owner(AccountId, OwnerId),
    Account(AccountId),
}

/// One subject's counts over [from, to) in buckets of `granularity`.
#[derive(Debug, Clone)]
pub struct UsageSeries {
    pub granularity: Granularity,
    pub from: Timestamp,
    pub to: Timestamp,
    /// Buckets with at least one decision, oldest first; each count by outcome.
    pub counts: Vec<UsageCount>,
}

impl UsageRange {
    /// The range with its defaults filled in and aligned to whole buckets: `to` now (the end
    /// of the bucket now is in), `from` an hour, a day or thirty days before (by
    /// granularity). A reversed, empty or too long range is refused, saying why.
    pub fn resolve(self, now: Timestamp) -> Result<(Timestamp, Timestamp), InvalidField> {
        let width = self.granularity.millis();
        let to = self.to.map_or(now.as_millis(), Timestamp::as_millis);
        let to = to.div_euclid(width) * width + if to.rem_euclid(width) == 0 { 0 } else { width };
        let default_span = match self.granularity {
            Granularity::Minute => 60 * width,
            Granularity::Hour => 24 * width,
            Granularity::Day => 30 * width,
        };
        let from = self.from.map_or(to.saturating_sub(default_span), Timestamp::as_millis);
        if from >= to {
            return Err(InvalidField::new(
                "from",
                format!(
                    "must be before to ({} is not before {})",
                    Timestamp::from_millis(from),
                    Timestamp::from_millis(to)
                ),
            ));
        }
        let from = self.granularity.bucket_of(from);
        let buckets = (to - from) / width;
        if buckets > MAX_USAGE_BUCKETS {
            return Err(InvalidField::new(
                "to",
                format!(
                    "the range holds {buckets} {} buckets; at most {MAX_USAGE_BUCKETS}: narrow it or use a coarser \
                     granularity",
                    self.granularity.as_str()
                ),
            ));
        }
        Ok((Timestamp::from_millis(from), Timestamp::from_millis(to)))
    }
}

impl Manager {
    /// This replica's counts are written first, so that a read sees what it counted.
    async fn usage_store(&self) -> Result<&crate::analytics::UsageCounts, ManageError> {
        let counts = self
            .usage_counts
            .as_deref()
            .ok_or_else(|| ManageError::BadRequest("usage is not counted on this server".into()))?;
        if let Err(e) = counts.flush().await {
            tracing::warn!(error = %e, "cannot write this replica's usage counts before reading; read without them");
        }
        Ok(counts)
    }

    pub async fn usage(
        &self,
        grant: &AdminGrant,
        subject: &UsageSubject,
        range: UsageRange,
    ) -> Result<UsageSeries, ManageError> {
        let (from, to) = range.resolve(self.clock.now())?;
        let (kind, id, account) = match subject {
            UsageSubject::Key(id) => {
                let key = self.stored_key(*id).await?;
                visible(grant, &key.account_id, "API key", id)?;
                (SubjectKind::Key, id.to_string(), key.account_id.clone())
            }
            UsageSubject::Owner(account, owner) => {
                within(grant, account)?;
                (SubjectKind::Owner, owner.as_str().to_owned(), account.clone())
            }
            UsageSubject::Account(account) => {
                within(grant, account)?;
                (SubjectKind::Account, account.as_str().to_owned(), account.clone())
            }
        };
        let counts = self.usage_store().await?;
        let query = UsageQuery { kind, subject: id, account, granularity: range.granularity, from, to };
        let counts = counts.store().usage(&query).await?;
        Ok(UsageSeries { granularity: range.granularity, from, to, counts })
    }

    /// The account's keys with the most decisions (or denials) over the range.
    pub async fn top_keys(
        &self,
        grant: &AdminGrant,
        account: &AccountId,
        range: UsageRange,
        by_denials: bool,
        limit: Option<u32>,
    ) -> Result<(Timestamp, Timestamp, Vec<KeyTotals>), ManageError> {
        within(grant, account)?;
        let (from, to) = range.resolve(self.clock.now())?;
        let limit = limit.unwrap_or(DEFAULT_TOP_KEYS);
        if !(1..=MAX_TOP_KEYS).contains(&limit) {
            return Err(InvalidField::new("limit", format!("must be from 1 to {MAX_TOP_KEYS}")).into());
        }
        let counts = self.usage_store().await?;
        let top = counts.store().top_keys(account, range.granularity, (from, to), by_denials, limit).await?;
        Ok((from, to, top))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(from: Option<i64>, to: Option<i64>, granularity: Granularity) -> UsageRange {
        UsageRange { from: from.map(Timestamp::from_millis), to: to.map(Timestamp::from_millis), granularity }
    }

    #[test]
    fn ranges_are_aligned_defaulted_and_bounded() {
        let now = Timestamp::from_millis(10 * 3_600_000 + 90_000);
        let (from, to) = range(None, None, Granularity::Minute).resolve(now).unwrap();
        assert_eq!((from.as_millis(), to.as_millis()), (9 * 3_600_000 + 120_000, 10 * 3_600_000 + 120_000));
        let reversed = range(Some(2_000_000), Some(1_000_000), Granularity::Minute).resolve(now).unwrap_err();
        assert!(reversed.to_string().contains("must be before to"), "{reversed}");
        let long = range(Some(0), Some(30 * 86_400_000), Granularity::Minute).resolve(now).unwrap_err();
        assert!(long.to_string().contains("43200 minute buckets; at most 1500"), "{long}");
        assert!(range(Some(0), Some(30 * 86_400_000), Granularity::Hour).resolve(now).is_ok());
    }
}
