//! The change feed's side of a store: the `changes` table, one row per change to what a
//! decision reads, written in the transaction that made it (by triggers: see the
//! `change_feed` migrations). A row's revision is its place in the feed; revisions commit
//! in their own order, so a reader that has seen revision `r` has seen every change
//! committed before it. Rows carry ids only: the feed reads the records themselves
//! ([`ChangeFeed::record`], [`ChangeFeed::snapshot`]), so no secret is ever in the table.

use super::{Application, KeyRecord, Owner, SessionRecord, StoreError};
use crate::domain::{AccountId, AdminTokenRecord};

/// What changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChangeKind {
    Key,
    Application,
    Session,
    Owner,
    AdminToken,
}

impl ChangeKind {
    pub const ALL: [ChangeKind; 5] = [Self::Key, Self::Application, Self::Session, Self::Owner, Self::AdminToken];

    /// As the `changes` table's `kind` column spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Key => "key",
            Self::Application => "application",
            Self::Session => "session",
            Self::Owner => "owner",
            Self::AdminToken => "admin_token",
        }
    }

    pub fn from_stored(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == raw)
    }
}

/// One row of the feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeRow {
    pub revision: i64,
    pub kind: ChangeKind,
    /// The record's id (an owner's id within its account, an admin token's name).
    pub id: String,
    /// `None` for admin tokens that reach every account.
    pub account_id: Option<String>,
    pub deleted: bool,
}

/// The revisions the table holds now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FeedWindow {
    /// The oldest revision retained (`None`: the table is empty).
    pub oldest: Option<i64>,
    /// The newest revision ever written that is still retained (0: none).
    pub latest: i64,
}

impl FeedWindow {
    /// Can a subscriber that has applied everything up to `since` resume from the rows
    /// retained? Only if none after it was pruned, and `since` is not from the future.
    pub fn resumes(&self, since: i64) -> Resume {
        if since > self.latest {
            return Resume::Unknown;
        }
        match self.oldest {
            Some(oldest) if since < oldest - 1 => Resume::TooOld,
            _ => Resume::Yes,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    Yes,
    /// Changes after it were pruned.
    TooOld,
    /// Newer than any revision here (another deployment's, or a restored database).
    Unknown,
}

/// A record as the feed sends it.
#[derive(Debug, Clone)]
pub enum FeedRecord {
    Key(Box<KeyRecord>),
    Application(Application),
    Session(SessionRecord),
    Owner(Owner),
    AdminToken(AdminTokenRecord),
}

/// Which records a snapshot page reads: `account` (`None`: every account, and admin
/// tokens), of `kind`, after the id `after`.
#[derive(Debug, Clone)]
pub struct SnapshotPage<'a> {
    pub kind: ChangeKind,
    pub account: Option<&'a AccountId>,
    pub after: &'a str,
    pub limit: u32,
}

/// The change feed, as a store keeps it.
#[async_trait::async_trait]
pub trait ChangeFeed: Send + Sync {
    async fn feed_window(&self) -> Result<FeedWindow, StoreError>;

    /// Up to `limit` rows after revision `after`, in revision order.
    async fn changes_after(&self, after: i64, limit: u32) -> Result<Vec<ChangeRow>, StoreError>;

    /// Deletes all but the newest `keep` revisions; returns how many rows went.
    async fn prune_changes(&self, keep: u64) -> Result<u64, StoreError>;

    /// The record a row names, as stored now (`None`: gone).
    async fn record(&self, row: &ChangeRow) -> Result<Option<FeedRecord>, StoreError>;

    /// A page of a snapshot: records in id order, with the id to continue after (`None`:
    /// the last page).
    async fn snapshot(
        &self,
        page: &SnapshotPage<'_>,
    ) -> Result<(Vec<(String, FeedRecord)>, Option<String>), StoreError>;
}
