//! Where applications and keys live. [`Store`] is small on purpose: one SQL
//! implementation serves SQLite and Postgres ([`sql::SqlStore`]), and caching is a
//! decorator over the same trait ([`cached::CachedStore`]).

pub mod cached;
pub mod invalidation;
pub mod sql;

use crate::domain::{AccountId, ApplicationId, KeyId, Name, Scopes, SecretHash, Timestamp};
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Application {
    pub id: ApplicationId,
    pub account_id: AccountId,
    pub name: Name,
    pub created_at: Timestamp,
}

/// A stored API key: everything but the secret, which is never stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: KeyId,
    pub account_id: AccountId,
    pub name: Name,
    pub scopes: Scopes,
    /// Empty means every application of the account.
    pub application_ids: Vec<ApplicationId>,
    pub secret_hash: SecretHash,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
    pub revoked_reason: Option<String>,
    /// Bumped by every change; lets caches and replicas tell old from new.
    pub version: i64,
}

impl KeyRecord {
    pub fn is_revoked(&self) -> bool {
        self.revoked_at.is_some()
    }

    pub fn is_expired_at(&self, now: Timestamp) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    pub fn allows_application(&self, id: &ApplicationId) -> bool {
        self.application_ids.is_empty() || self.application_ids.contains(id)
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
    Unavailable(#[source] sqlx::Error),
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
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e),
            other => StoreError::Other(other),
        }
    }
}

#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    async fn create_application(&self, app: &Application) -> Result<(), StoreError>;
    async fn application(&self, id: &ApplicationId) -> Result<Option<Arc<Application>>, StoreError>;
    async fn list_applications(&self, account: &AccountId, page: &PageRequest)
        -> Result<Page<Application>, StoreError>;

    async fn create_key(&self, key: &KeyRecord) -> Result<(), StoreError>;
    async fn key(&self, id: KeyId) -> Result<Option<Arc<KeyRecord>>, StoreError>;
    /// `search` matches the name or the id, case-insensitively, as a substring.
    async fn list_keys(
        &self,
        account: &AccountId,
        search: Option<&str>,
        page: &PageRequest,
    ) -> Result<Page<KeyRecord>, StoreError>;
    async fn update_key(&self, id: KeyId, changes: &KeyChanges, now: Timestamp) -> Result<UpdateOutcome, StoreError>;
    /// Idempotent: revoking a revoked key returns it unchanged. `None` if there is no such key.
    async fn revoke_key(&self, id: KeyId, reason: &str, now: Timestamp) -> Result<Option<KeyRecord>, StoreError>;

    /// Cheap round trip, for health checks.
    async fn ping(&self) -> Result<(), StoreError>;
}
