//! Where applications and keys live. [`Store`] is small on purpose: one SQL
//! implementation serves SQLite and Postgres ([`sql::SqlStore`]), and caching is a
//! decorator over the same trait ([`cached::CachedStore`]).

pub mod bounded;
pub mod cached;
pub mod invalidation;
pub mod memory;
pub mod metered;
pub mod sql;

use crate::audit::{AuditEvent, AuditQuery};
use crate::domain::{AccountId, ApplicationId, KeyId, Name, Scopes, SecretHash, SessionId, Timestamp, UserId};
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Application {
    pub id: ApplicationId,
    pub account_id: AccountId,
    pub name: Name,
    pub created_at: Timestamp,
}

/// What a key record is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// A management API key, made by `CreateApiKey`.
    ApiKey,
    /// An application's runtime key, made by `RotateApplicationKey`; restricted to that one
    /// application and accepted only on routes whose policy names `runtime_key`.
    Runtime,
}

impl KeyKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            KeyKind::ApiKey => "api_key",
            KeyKind::Runtime => "runtime",
        }
    }
}

/// A stored API key: everything but the secret, which is never stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: KeyId,
    pub account_id: AccountId,
    pub kind: KeyKind,
    pub name: Name,
    pub scopes: Scopes,
    /// Empty means every application of the account.
    pub application_ids: Vec<ApplicationId>,
    pub secret_hash: SecretHash,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
    /// A rotated runtime key keeps working until then and counts as revoked after.
    pub retire_at: Option<Timestamp>,
    pub revoked_reason: Option<String>,
    /// Bumped by every change; lets caches and replicas tell old from new.
    pub version: i64,
    /// Not stored: which credential argon2 has accepted for this record, so a cached
    /// record answers "is this the secret?" without a second cache entry per hot key.
    pub verified: VerifiedMemo,
    /// When the key was last used: as stored (batched, about once a minute), or later if
    /// this replica has seen a use since.
    pub usage: UsageMemo,
}

/// The last known use of a key, in Unix milliseconds (0 = never). Lives on the cached
/// record so that deciding whether a use must be reported takes no lock and no lookup.
#[derive(Default)]
pub struct UsageMemo(std::sync::atomic::AtomicI64);

impl UsageMemo {
    pub fn new(last_used_at: Option<Timestamp>) -> Self {
        Self(std::sync::atomic::AtomicI64::new(last_used_at.map_or(0, Timestamp::as_millis)))
    }

    pub fn last_used_at(&self) -> Option<Timestamp> {
        let millis = self.0.load(std::sync::atomic::Ordering::Relaxed);
        (millis > 0).then(|| Timestamp::from_millis(millis))
    }

    /// True for the one caller that should report a use at `now`: when the last known use
    /// is at least `every` old. Concurrent callers race on one compare-and-swap.
    pub fn claim_report(&self, now: Timestamp, every: std::time::Duration) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let last = self.0.load(Relaxed);
        now.as_millis().saturating_sub(last) >= every.as_millis() as i64
            && self.0.compare_exchange(last, now.as_millis(), Relaxed, Relaxed).is_ok()
    }

    /// Raises the last use to `at` (never lowers it).
    pub fn raise(&self, at: Timestamp) {
        self.0.fetch_max(at.as_millis(), std::sync::atomic::Ordering::Relaxed);
    }

    /// Keeps the later of what `previous` knew and what was loaded.
    pub fn carry_over(&self, previous: &UsageMemo) {
        if let Some(at) = previous.last_used_at() {
            self.raise(at);
        }
    }
}

impl Clone for UsageMemo {
    fn clone(&self) -> Self {
        Self(std::sync::atomic::AtomicI64::new(self.0.load(std::sync::atomic::Ordering::Relaxed)))
    }
}

/// Like [`VerifiedMemo`], usage is not part of what a record says.
impl PartialEq for UsageMemo {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for UsageMemo {}

impl std::fmt::Debug for UsageMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.last_used_at())
    }
}

/// The SHA-256 digest of the one credential verified against a record's hash. A key has a
/// single secret, so every write stores the same value and a reader can never see a mix
/// of two digests; a reader racing the first write sees "not verified" and verifies.
#[derive(Default)]
pub struct VerifiedMemo {
    set: std::sync::atomic::AtomicBool,
    digest: [std::sync::atomic::AtomicU64; 4],
}

impl VerifiedMemo {
    pub fn matches(&self, digest: &[u8; 32]) -> bool {
        use std::sync::atomic::Ordering::Acquire;
        self.set.load(Acquire)
            && self.digest.iter().enumerate().all(|(i, word)| {
                word.load(Acquire) == u64::from_le_bytes(digest[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
            })
    }

    pub fn remember(&self, digest: &[u8; 32]) {
        use std::sync::atomic::Ordering::Release;
        for (i, word) in self.digest.iter().enumerate() {
            word.store(u64::from_le_bytes(digest[i * 8..i * 8 + 8].try_into().expect("8 bytes")), Release);
        }
        self.set.store(true, Release);
    }

    fn digest(&self) -> Option<[u8; 32]> {
        use std::sync::atomic::Ordering::Acquire;
        if !self.set.load(Acquire) {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, word) in self.digest.iter().enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&word.load(Acquire).to_le_bytes());
        }
        Some(out)
    }

    /// Keeps what `previous` knew, when it was about the same secret hash.
    pub fn carry_over(&self, previous: &KeyRecord, current: &KeyRecord) {
        if previous.secret_hash == current.secret_hash {
            if let Some(digest) = previous.verified.digest() {
                self.remember(&digest);
            }
        }
    }
}

impl Clone for VerifiedMemo {
    fn clone(&self) -> Self {
        let memo = Self::default();
        if let Some(digest) = self.digest() {
            memo.remember(&digest);
        }
        memo
    }
}

/// A memo is not data: records compare equal whatever their memos hold.
impl PartialEq for VerifiedMemo {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for VerifiedMemo {}

impl std::fmt::Debug for VerifiedMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.set.load(std::sync::atomic::Ordering::Relaxed) { "verified" } else { "unverified" })
    }
}

impl KeyRecord {
    /// An explicit revoke counts at once, whatever any replica's clock says; a scheduled
    /// retirement counts from its time.
    pub fn is_revoked_at(&self, now: Timestamp) -> bool {
        self.revoked_at.is_some() || self.retire_at.is_some_and(|at| at <= now)
    }

    pub fn is_expired_at(&self, now: Timestamp) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    pub fn allows_application(&self, id: &ApplicationId) -> bool {
        self.application_ids.is_empty() || self.application_ids.contains(id)
    }
}

/// A dashboard session. Its token's secret is kept only as a SHA-256 digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub id: SessionId,
    pub account_id: AccountId,
    pub user_id: UserId,
    pub secret_digest: [u8; 32],
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
    pub version: i64,
}

impl SessionRecord {
    /// Usable at `now`: neither revoked nor expired.
    pub fn is_live_at(&self, now: Timestamp) -> bool {
        self.revoked_at.is_none() && now < self.expires_at
    }
}

/// A change to a key; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct KeyChanges {
    pub name: Option<Name>,
    pub scopes: Option<Scopes>,
    pub application_ids: Option<Vec<ApplicationId>>,
    /// `Some(None)` removes the expiry.
    pub expires_at: Option<Option<Timestamp>>,
}

#[derive(Debug, Clone)]
pub struct PageRequest {
    /// Items strictly after this id, in id order.
    pub after: Option<String>,
    pub limit: u32,
}

#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// The id to continue after; `None` on the last page.
    pub next_after: Option<String>,
}

/// What a key update can run into, besides the store failing.
#[derive(Debug, PartialEq, Eq)]
pub enum UpdateOutcome {
    Updated(Box<KeyRecord>),
    NotFound,
    Revoked,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached right now; retrying later may work.
    #[error("the store is unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A row says something keygate never writes.
    #[error("the store holds a corrupt row: {0}")]
    Corrupt(String),
    #[error("store error")]
    Other(#[source] sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(Box::new(e)),
            other => StoreError::Other(other),
        }
    }
}

/// Every write takes the [`AuditEvent`] that records it and stores both in one
/// transaction, or neither.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    async fn create_application(&self, app: &Application, audit: &AuditEvent) -> Result<(), StoreError>;
    async fn application(&self, id: &ApplicationId) -> Result<Option<Arc<Application>>, StoreError>;
    async fn list_applications(&self, account: &AccountId, page: &PageRequest)
        -> Result<Page<Application>, StoreError>;

    async fn create_key(&self, key: &KeyRecord, audit: &AuditEvent) -> Result<(), StoreError>;
    async fn key(&self, id: KeyId) -> Result<Option<Arc<KeyRecord>>, StoreError>;
    /// `search` matches the name or the id, case-insensitively, as a substring.
    async fn list_keys(
        &self,
        account: &AccountId,
        search: Option<&str>,
        page: &PageRequest,
    ) -> Result<Page<KeyRecord>, StoreError>;
    /// Records nothing unless the key was updated.
    async fn update_key(
        &self,
        id: KeyId,
        changes: &KeyChanges,
        now: Timestamp,
        audit: &AuditEvent,
    ) -> Result<UpdateOutcome, StoreError>;
    /// Idempotent: revoking a revoked key returns it unchanged (and records the attempt).
    /// `None`, recording nothing, if there is no such key.
    async fn revoke_key(
        &self,
        id: KeyId,
        reason: &str,
        now: Timestamp,
        audit: &AuditEvent,
    ) -> Result<Option<KeyRecord>, StoreError>;
    /// Makes `new` (a runtime key) its application's current runtime key, in one
    /// transaction; the key it replaces keeps working until `retire_at`. Returns that key.
    async fn rotate_runtime_key(
        &self,
        new: &KeyRecord,
        retire_at: Timestamp,
        audit: &AuditEvent,
    ) -> Result<Option<KeyId>, StoreError>;
    /// Raises each key's `last_used_at` to the given time (never lowers it).
    async fn record_key_usage(&self, uses: &[(KeyId, Timestamp)]) -> Result<(), StoreError>;

    async fn create_session(&self, session: &SessionRecord, audit: &AuditEvent) -> Result<(), StoreError>;
    async fn session(&self, id: SessionId) -> Result<Option<Arc<SessionRecord>>, StoreError>;
    /// Idempotent. `None`, recording nothing, if there is no such session.
    async fn revoke_session(
        &self,
        id: SessionId,
        now: Timestamp,
        audit: &AuditEvent,
    ) -> Result<Option<SessionRecord>, StoreError>;

    /// An account's audit events, newest first; pages continue *before* `page.after`.
    async fn list_audit_events(
        &self,
        account: &AccountId,
        query: &AuditQuery,
        page: &PageRequest,
    ) -> Result<Page<AuditEvent>, StoreError>;

    /// Cheap round trip, for health checks.
    async fn ping(&self) -> Result<(), StoreError>;
}
