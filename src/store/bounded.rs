//! The bounding decorator: a read on the request path waits at most the breaker's timeout,
//! and nothing waits for a store that is known to be down (see [`crate::breaker`]).
//!
//! It sits under the cache, so a cached record is answered without it, and a record the
//! cache must reload (its freshness ran out, or the invalidation listener was lost) is
//! served from the cache's fallback the moment this store says it is unavailable, instead
//! of after the pool's own connect timeout.

use super::Spend;
use super::{
    Application, Deleted, Deletion, Imported, ImportedKey, KeyChanges, KeyFilter, KeyRecord, Owner, OwnerChanges, Page,
    PageRequest, RollOutcome, SessionRecord, Store, StoreError, UpdateOutcome,
};
use crate::audit::{AuditEvent, AuditQuery};
use crate::breaker::{Breaker, Refused};
use crate::domain::{
    AccountId, AdminTokenName, AdminTokenRecord, ApplicationId, CreditHolder, KeyId, Name, OwnerId, Refill, SecretHash,
    SessionId, Timestamp, UserId, VerifiedDigest,
};
use std::future::Future;
use std::sync::Arc;

pub struct BoundedStore {
    inner: Arc<dyn Store>,
    breaker: Arc<Breaker>,
}

fn is_outage(e: &StoreError) -> bool {
    matches!(e, StoreError::Unavailable(_))
}

fn unavailable(refused: Refused) -> StoreError {
    StoreError::Unavailable(Box::new(refused))
}

/// A statement the database cut short for running past its limit (Postgres's
/// `statement_timeout`, SQLite's busy timeout): the caller is told to retry
/// (UNAVAILABLE), not that keygate failed (INTERNAL).
fn cut_short(e: StoreError) -> StoreError {
    match e {
        StoreError::Other(sqlx::Error::Database(db)) if matches!(db.code().as_deref(), Some("57014" | "5" | "517")) => {
            StoreError::Unavailable(Box::new(sqlx::Error::Database(db)))
        }
        other => other,
    }
}

impl BoundedStore {
    pub fn new(inner: Arc<dyn Store>, breaker: Arc<Breaker>) -> Self {
        Self { inner, breaker }
    }

    /// A read a decision waits on: bounded, and refused while the store is down.
    async fn read<T>(&self, call: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        self.breaker.guard(call, is_outage).await.map_err(unavailable)?
    }

    /// An admin call (or a write): refused while the store is down, otherwise left to the
    /// pool's own limits (a write must not be abandoned between its statements by a timer
    /// of ours; the admin pool's statement timeout cancels it in the database, which rolls
    /// its transaction back). Its failures never count towards the breaker.
    async fn admin<T>(&self, call: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        self.breaker.check_closed().map_err(unavailable)?;
        call.await.map_err(cut_short)
    }
}

#[async_trait::async_trait]
impl Store for BoundedStore {
    async fn create_application(&self, app: &Application, audit: &AuditEvent) -> Result<(), StoreError> {
        self.admin(self.inner.create_application(app, audit)).await
    }

    async fn application(&self, id: &ApplicationId) -> Result<Option<Arc<Application>>, StoreError> {
        self.read(self.inner.application(id)).await
    }

    async fn list_applications(
        &self,
        account: &AccountId,
        page: &PageRequest,
    ) -> Result<Page<Application>, StoreError> {
        self.admin(self.inner.list_applications(account, page)).await
    }

    async fn create_key(&self, key: &KeyRecord, audit: &AuditEvent) -> Result<(), StoreError> {
        self.admin(self.inner.create_key(key, audit)).await
    }

    async fn key(&self, id: KeyId) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        self.read(self.inner.key(id)).await
    }

    async fn list_keys(
        &self,
        account: &AccountId,
        filter: &KeyFilter,
        page: &PageRequest,
    ) -> Result<Page<KeyRecord>, StoreError> {
        self.admin(self.inner.list_keys(account, filter, page)).await
    }

    async fn update_key(
        &self,
        id: KeyId,
        changes: &KeyChanges,
        now: Timestamp,
        audit: &AuditEvent,
    ) -> Result<UpdateOutcome, StoreError> {
        self.admin(self.inner.update_key(id, changes, now, audit)).await
    }

    async fn revoke_key(
        &self,
        id: KeyId,
        reason: &str,
        now: Timestamp,
        audit: &AuditEvent,
    ) -> Result<Option<KeyRecord>, StoreError> {
        self.admin(self.inner.revoke_key(id, reason, now, audit)).await
    }

    async fn rotate_runtime_key(
        &self,
        new: &KeyRecord,
        retire_at: Timestamp,
        audit: &AuditEvent,
    ) -> Result<Vec<KeyId>, StoreError> {
        self.admin(self.inner.rotate_runtime_key(new, retire_at, audit)).await
    }

    /// A write on the request path: refused at once while the store is down, otherwise
    /// bounded by the decision's deadline, not the read timeout. Calls on one key queue
    /// on its row; a queue is not an outage and must not open the breaker.
    async fn spend_credits(
        &self,
        holder: &CreditHolder,
        cost: i64,
        refill: Option<&Refill>,
        now: Timestamp,
    ) -> Result<Spend, StoreError> {
        self.admin(self.inner.spend_credits(holder, cost, refill, now)).await
    }

    async fn rename_application(
        &self,
        id: &ApplicationId,
        name: &Name,
        audit: &AuditEvent,
    ) -> Result<Option<Application>, StoreError> {
        self.admin(self.inner.rename_application(id, name, audit)).await
    }

    async fn list_sessions(
        &self,
        account: &AccountId,
        user: Option<&UserId>,
        page: &PageRequest,
    ) -> Result<Page<SessionRecord>, StoreError> {
        self.admin(self.inner.list_sessions(account, user, page)).await
    }

    async fn roll_key(
        &self,
        new: &KeyRecord,
        old: KeyId,
        retire_at: Timestamp,
        audit: &AuditEvent,
    ) -> Result<RollOutcome, StoreError> {
        self.admin(self.inner.roll_key(new, old, retire_at, audit)).await
    }

    async fn delete(&self, target: &Deletion, audit: &AuditEvent) -> Result<Deleted, StoreError> {
        self.admin(self.inner.delete(target, audit)).await
    }

    async fn import_keys(
        &self,
        import_id: &str,
        keys: &[ImportedKey],
        audit: &AuditEvent,
    ) -> Result<Vec<Imported>, StoreError> {
        self.admin(self.inner.import_keys(import_id, keys, audit)).await
    }

    async fn keys_by_lookup(&self, lookups: &[String]) -> Result<Vec<Arc<KeyRecord>>, StoreError> {
        self.read(self.inner.keys_by_lookup(lookups)).await
    }

    async fn adopt_imported(
        &self,
        id: KeyId,
        old: &SecretHash,
        new: &SecretHash,
        lookup: &str,
        digest: &VerifiedDigest,
    ) -> Result<(), StoreError> {
        self.admin(self.inner.adopt_imported(id, old, new, lookup, digest)).await
    }

    async fn set_owner(
        &self,
        account: &AccountId,
        id: &OwnerId,
        changes: &OwnerChanges,
        now: Timestamp,
        audit: &AuditEvent,
    ) -> Result<(Owner, Vec<KeyId>), StoreError> {
        self.admin(self.inner.set_owner(account, id, changes, now, audit)).await
    }

    async fn owner(&self, account: &AccountId, id: &OwnerId) -> Result<Option<Owner>, StoreError> {
        self.admin(self.inner.owner(account, id)).await
    }

    async fn record_key_usage(&self, uses: &[(KeyId, Timestamp)]) -> Result<(), StoreError> {
        self.admin(self.inner.record_key_usage(uses)).await
    }

    async fn create_session(&self, session: &SessionRecord, audit: &AuditEvent) -> Result<(), StoreError> {
        self.admin(self.inner.create_session(session, audit)).await
    }

    async fn session(&self, id: SessionId) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        self.read(self.inner.session(id)).await
    }

    async fn revoke_session(
        &self,
        id: SessionId,
        now: Timestamp,
        audit: &AuditEvent,
    ) -> Result<Option<SessionRecord>, StoreError> {
        self.admin(self.inner.revoke_session(id, now, audit)).await
    }

    async fn list_audit_events(
        &self,
        account: &AccountId,
        query: &AuditQuery,
        page: &PageRequest,
    ) -> Result<Page<AuditEvent>, StoreError> {
        self.admin(self.inner.list_audit_events(account, query, page)).await
    }

    async fn remember_verified(&self, id: KeyId, hash: &SecretHash, digest: &VerifiedDigest) -> Result<(), StoreError> {
        self.admin(self.inner.remember_verified(id, hash, digest)).await
    }

    async fn create_admin_token(&self, token: &AdminTokenRecord) -> Result<bool, StoreError> {
        self.admin(self.inner.create_admin_token(token)).await
    }

    async fn admin_token(&self, digest: &[u8; 32]) -> Result<Option<AdminTokenRecord>, StoreError> {
        self.admin(self.inner.admin_token(digest)).await
    }

    async fn list_admin_tokens(&self) -> Result<Vec<AdminTokenRecord>, StoreError> {
        self.admin(self.inner.list_admin_tokens()).await
    }

    async fn revoke_admin_token(
        &self,
        name: &AdminTokenName,
        now: Timestamp,
        by: &str,
    ) -> Result<Option<AdminTokenRecord>, StoreError> {
        self.admin(self.inner.revoke_admin_token(name, now, by)).await
    }

    /// Health checks ask the store itself: the breaker is not the answer they want.
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}
