//! The metering decorator: how long each store operation takes and how often it fails.
//! It sits under the cache, so it sees only what reaches the database.

use super::Spend;
use super::{
    Application, Deleted, Deletion, Imported, ImportedKey, KeyChanges, KeyFilter, KeyRecord, Owner, OwnerChanges, Page,
    PageRequest, RollOutcome, SessionRecord, Store, StoreError, UpdateOutcome,
};
use crate::audit::{AuditEvent, AuditQuery};
use crate::domain::{
    AccountId, AdminTokenName, AdminTokenRecord, ApplicationId, CreditHolder, KeyId, Name, OwnerId, Refill, SecretHash,
    SessionId, Timestamp, UserId, VerifiedDigest,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub operation: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub operation: &'static str,
    /// `unavailable`, `corrupt` or `other`.
    pub kind: &'static str,
}

/// The store's instruments; cloning shares them.
#[derive(Clone)]
pub struct StoreMetrics {
    pub seconds: Family<OperationLabels, Histogram>,
    pub errors: Family<ErrorLabels, Counter>,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        Self {
            // 100 µs to ~3 s.
            seconds: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0001, 2.0, 16))),
            errors: Family::default(),
        }
    }
}

pub struct MeteredStore {
    inner: Arc<dyn Store>,
    metrics: StoreMetrics,
}

impl MeteredStore {
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self { inner, metrics: StoreMetrics::default() }
    }

    pub fn metrics(&self) -> StoreMetrics {
        self.metrics.clone()
    }

    async fn timed<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = call.await;
        self.metrics.seconds.get_or_create(&OperationLabels { operation }).observe(started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            let kind = match e {
                StoreError::Unavailable(_) => "unavailable",
                StoreError::Corrupt(_) => "corrupt",
                StoreError::Other(_) => "other",
                StoreError::Unsupported(_) => "unsupported",
            };
            self.metrics.errors.get_or_create(&ErrorLabels { operation, kind }).inc();
        }
        result
    }
}

#[async_trait::async_trait]
impl Store for MeteredStore {
    async fn create_application(&self, app: &Application, audit: &AuditEvent) -> Result<(), StoreError> {
        self.timed("create_application", self.inner.create_application(app, audit)).await
    }

    async fn application(&self, id: &ApplicationId) -> Result<Option<Arc<Application>>, StoreError> {
        self.timed("application", self.inner.application(id)).await
    }

    async fn list_applications(
        &self,
        account: &AccountId,
        page: &PageRequest,
    ) -> Result<Page<Application>, StoreError> {
        self.timed("list_applications", self.inner.list_applications(account, page)).await
    }

    async fn create_key(&self, key: &KeyRecord, audit: &AuditEvent) -> Result<(), StoreError> {
        self.timed("create_key", self.inner.create_key(key, audit)).await
    }

    async fn key(&self, id: KeyId) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        self.timed("key", self.inner.key(id)).await
    }

    async fn list_keys(
        &self,
        account: &AccountId,
        filter: &KeyFilter,
        page: &PageRequest,
    ) -> Result<Page<KeyRecord>, StoreError> {
        self.timed("list_keys", self.inner.list_keys(account, filter, page)).await
    }

    async fn update_key(
        &self,
        id: KeyId,
        changes: &KeyChanges,
        now: Timestamp,
        audit: &AuditEvent,
    ) -> Result<UpdateOutcome, StoreError> {
        self.timed("update_key", self.inner.update_key(id, changes, now, audit)).await
    }

    async fn revoke_key(
        &self,
        id: KeyId,
        reason: &str,
        now: Timestamp,
        audit: &AuditEvent,
    ) -> Result<Option<KeyRecord>, StoreError> {
        self.timed("revoke_key", self.inner.revoke_key(id, reason, now, audit)).await
    }

    async fn rotate_runtime_key(
        &self,
        new: &KeyRecord,
        retire_at: Timestamp,
        audit: &AuditEvent,
    ) -> Result<Vec<KeyId>, StoreError> {
        self.timed("rotate_runtime_key", self.inner.rotate_runtime_key(new, retire_at, audit)).await
    }

    async fn spend_credits(
        &self,
        holder: &CreditHolder,
        cost: i64,
        refill: Option<&Refill>,
        now: Timestamp,
    ) -> Result<Spend, StoreError> {
        self.timed("spend_credits", self.inner.spend_credits(holder, cost, refill, now)).await
    }

    async fn rename_application(
        &self,
        id: &ApplicationId,
        name: &Name,
        audit: &AuditEvent,
    ) -> Result<Option<Application>, StoreError> {
        self.timed("rename_application", self.inner.rename_application(id, name, audit)).await
    }

    async fn list_sessions(
        &self,
        account: &AccountId,
        user: Option<&UserId>,
        page: &PageRequest,
    ) -> Result<Page<SessionRecord>, StoreError> {
        self.timed("list_sessions", self.inner.list_sessions(account, user, page)).await
    }

    async fn roll_key(
        &self,
        new: &KeyRecord,
        old: KeyId,
        retire_at: Timestamp,
        audit: &AuditEvent,
    ) -> Result<RollOutcome, StoreError> {
        self.timed("roll_key", self.inner.roll_key(new, old, retire_at, audit)).await
    }

    async fn delete(&self, target: &Deletion, audit: &AuditEvent) -> Result<Deleted, StoreError> {
        self.timed("delete", self.inner.delete(target, audit)).await
    }

    async fn import_keys(
        &self,
        import_id: &str,
        keys: &[ImportedKey],
        audit: &AuditEvent,
    ) -> Result<Vec<Imported>, StoreError> {
        self.timed("import_keys", self.inner.import_keys(import_id, keys, audit)).await
    }

    async fn keys_by_lookup(&self, lookups: &[String]) -> Result<Vec<Arc<KeyRecord>>, StoreError> {
        self.timed("keys_by_lookup", self.inner.keys_by_lookup(lookups)).await
    }

    async fn adopt_imported(
        &self,
        id: KeyId,
        old: &SecretHash,
        new: &SecretHash,
        lookup: &str,
        digest: &VerifiedDigest,
    ) -> Result<(), StoreError> {
        self.timed("adopt_imported", self.inner.adopt_imported(id, old, new, lookup, digest)).await
    }

    async fn set_owner(
        &self,
        account: &AccountId,
        id: &OwnerId,
        changes: &OwnerChanges,
        now: Timestamp,
        audit: &AuditEvent,
    ) -> Result<(Owner, Vec<KeyId>), StoreError> {
        self.timed("set_owner", self.inner.set_owner(account, id, changes, now, audit)).await
    }

    async fn owner(&self, account: &AccountId, id: &OwnerId) -> Result<Option<Owner>, StoreError> {
        self.timed("owner", self.inner.owner(account, id)).await
    }

    async fn record_key_usage(&self, uses: &[(KeyId, Timestamp)]) -> Result<(), StoreError> {
        self.timed("record_key_usage", self.inner.record_key_usage(uses)).await
    }

    async fn create_session(&self, session: &SessionRecord, audit: &AuditEvent) -> Result<(), StoreError> {
        self.timed("create_session", self.inner.create_session(session, audit)).await
    }

    async fn session(&self, id: SessionId) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        self.timed("session", self.inner.session(id)).await
    }

    async fn revoke_session(
        &self,
        id: SessionId,
        now: Timestamp,
        audit: &AuditEvent,
    ) -> Result<Option<SessionRecord>, StoreError> {
        self.timed("revoke_session", self.inner.revoke_session(id, now, audit)).await
    }

    async fn list_audit_events(
        &self,
        account: &AccountId,
        query: &AuditQuery,
        page: &PageRequest,
    ) -> Result<Page<AuditEvent>, StoreError> {
        self.timed("list_audit_events", self.inner.list_audit_events(account, query, page)).await
    }

    async fn create_admin_token(&self, token: &AdminTokenRecord) -> Result<bool, StoreError> {
        self.timed("create_admin_token", self.inner.create_admin_token(token)).await
    }

    async fn admin_token(&self, digest: &[u8; 32]) -> Result<Option<AdminTokenRecord>, StoreError> {
        self.timed("admin_token", self.inner.admin_token(digest)).await
    }

    async fn list_admin_tokens(&self) -> Result<Vec<AdminTokenRecord>, StoreError> {
        self.timed("list_admin_tokens", self.inner.list_admin_tokens()).await
    }

    async fn revoke_admin_token(
        &self,
        name: &AdminTokenName,
        now: Timestamp,
        by: &str,
    ) -> Result<Option<AdminTokenRecord>, StoreError> {
        self.timed("revoke_admin_token", self.inner.revoke_admin_token(name, now, by)).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.timed("ping", self.inner.ping()).await
    }

    async fn remember_verified(&self, id: KeyId, hash: &SecretHash, digest: &VerifiedDigest) -> Result<(), StoreError> {
        self.timed("remember_verified", self.inner.remember_verified(id, hash, digest)).await
    }
}
