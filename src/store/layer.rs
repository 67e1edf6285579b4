//! The admin side's one forwarding table. A decorator of the admin plane treats every
//! admin call alike (the meter times it, the breaker refuses it while the store is down)
//! or cares only about what a write changed (the cache forgets it): it implements
//! [`AdminLayer`], a handful of hooks, and gets [`AdminStore`] from the table below, which
//! spells each call's signature once and says what each write changed ([`Changed`]).

use super::{
    AdminStore, Application, Deleted, Deletion, Imported, ImportedKey, KeyChanges, KeyFilter, KeyRecord, Owner,
    OwnerChanges, Page, PageRequest, Records, RollOutcome, SessionRecord, StoreError, UpdateOutcome,
};
use crate::audit::{AuditEvent, AuditQuery};
use crate::domain::{AccountId, AdminTokenName, AdminTokenRecord, ApplicationId, KeyId, Name, OwnerId, SessionId};
use crate::domain::{Timestamp, UserId};
use std::future::Future;
use std::sync::Arc;

/// What an admin write changed (or, when it failed, may have changed), for a cache to
/// forget. A write can report several.
#[derive(Debug, Clone, Copy)]
pub enum Changed<'a> {
    Key(KeyId),
    Application(&'a ApplicationId),
    Session(SessionId),
    /// What a deletion removed or changed.
    Deleted(&'a Deleted),
    /// Some keys, which ones unknown here (a write that failed may have committed).
    SomeKeys,
    /// Anything at all (a deletion that failed may have committed).
    Anything,
}

/// A decorator of the admin side: [`AdminStore`] comes with it, each call passed through
/// [`call`](Self::call) to the store [`below`](Self::below), each write's changes told to
/// [`changed`](Self::changed). Records are read through the layer's own [`Records`].
pub trait AdminLayer: Records {
    /// The admin store this layer wraps.
    fn below(&self) -> &dyn AdminStore;

    /// Runs one admin call; `operation` names it (as metrics label it). As it is, by default.
    fn call<'a, T: Send + 'a>(
        &'a self,
        _operation: &'static str,
        call: impl Future<Output = Result<T, StoreError>> + Send + 'a,
    ) -> impl Future<Output = Result<T, StoreError>> + Send + 'a {
        call
    }

    /// After a write (whether it succeeded or not): what it changed. Nothing to do, by default.
    fn changed(&self, _changed: Changed<'_>) {}

    /// [`AdminStore::key_as_stored`]: from the store below, by default.
    fn key_as_stored(&self, id: KeyId) -> impl Future<Output = Result<Option<Arc<KeyRecord>>, StoreError>> + Send {
        // Labelled as the read it is.
        self.call("key", self.below().key_as_stored(id))
    }

    /// [`AdminStore::ping`]: through [`call`](Self::call), by default.
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.call("ping", self.below().ping())
    }
}

#[async_trait::async_trait]
impl<L: AdminLayer> AdminStore for L {
    async fn create_application(&self, app: &Application, audit: &AuditEvent) -> Result<(), StoreError> {
        let result = self.call("create_application", self.below().create_application(app, audit)).await;
        // A miss may have been cached as "no such application".
        self.changed(Changed::Application(&app.id));
        result
    }

    async fn list_applications(
        &self,
        account: &AccountId,
        page: &PageRequest,
    ) -> Result<Page<Application>, StoreError> {
        self.call("list_applications", self.below().list_applications(account, page)).await
    }

    async fn rename_application(
        &self,
        id: &ApplicationId,
        name: &Name,
        audit: &AuditEvent,
    ) -> Result<Option<Application>, StoreError> {
        let result = self.call("rename_application", self.below().rename_application(id, name, audit)).await;
        self.changed(Changed::Application(id));
        result
    }

    async fn create_key(&self, key: &KeyRecord, audit: &AuditEvent) -> Result<(), StoreError> {
        let result = self.call("create_key", self.below().create_key(key, audit)).await;
        self.changed(Changed::Key(key.id));
        result
    }

    async fn key_as_stored(&self, id: KeyId) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        AdminLayer::key_as_stored(self, id).await
    }

    async fn list_keys(
        &self,
        account: &AccountId,
        filter: &KeyFilter,
        page: &PageRequest,
    ) -> Result<Page<KeyRecord>, StoreError> {
        self.call("list_keys", self.below().list_keys(account, filter, page)).await
    }

    async fn update_key(
        &self,
        id: KeyId,
        changes: &KeyChanges,
        now: Timestamp,
        audit: &AuditEvent,
    ) -> Result<UpdateOutcome, StoreError> {
        // Changed even when the write errors: it may have committed before the error.
        let result = self.call("update_key", self.below().update_key(id, changes, now, audit)).await;
        self.changed(Changed::Key(id));
        // A key rolled into this one follows it (its credits, its state, its terms).
        if let Ok(UpdateOutcome::Updated(key)) = &result {
            key.rolled_from.iter().for_each(|predecessor| self.changed(Changed::Key(*predecessor)));
        }
        result
    }

    async fn revoke_key(
        &self,
        id: KeyId,
        reason: &str,
        now: Timestamp,
        audit: &AuditEvent,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let result = self.call("revoke_key", self.below().revoke_key(id, reason, now, audit)).await;
        self.changed(Changed::Key(id));
        // A key rolled into this one stops with it.
        if let Ok(Some(key)) = &result {
            key.rolled_from.iter().for_each(|predecessor| self.changed(Changed::Key(*predecessor)));
        }
        result
    }

    async fn rotate_runtime_key(
        &self,
        new: &KeyRecord,
        retire_at: Timestamp,
        audit: &AuditEvent,
    ) -> Result<Vec<KeyId>, StoreError> {
        let result = self.call("rotate_runtime_key", self.below().rotate_runtime_key(new, retire_at, audit)).await;
        self.changed(Changed::Key(new.id));
        result.iter().flatten().for_each(|retired| self.changed(Changed::Key(*retired)));
        result
    }

    async fn roll_key(
        &self,
        new: &KeyRecord,
        old: KeyId,
        retire_at: Timestamp,
        audit: &AuditEvent,
    ) -> Result<RollOutcome, StoreError> {
        let result = self.call("roll_key", self.below().roll_key(new, old, retire_at, audit)).await;
        self.changed(Changed::Key(new.id));
        self.changed(Changed::Key(old));
        if let Ok(RollOutcome::Rolled { ended, .. }) = &result {
            ended.iter().for_each(|id| self.changed(Changed::Key(*id)));
        }
        result
    }

    async fn delete(&self, target: &Deletion, audit: &AuditEvent) -> Result<Deleted, StoreError> {
        let result = self.call("delete", self.below().delete(target, audit)).await;
        match target {
            Deletion::Key(id) => self.changed(Changed::Key(*id)),
            Deletion::Application { id, .. } => self.changed(Changed::Application(id)),
            Deletion::Account(_) => {}
        }
        match &result {
            Ok(deleted) => self.changed(Changed::Deleted(deleted)),
            // It may have committed before the error: what it removed is unknown here.
            Err(_) if matches!(target, Deletion::Account(_) | Deletion::Application { .. }) => {
                self.changed(Changed::Anything)
            }
            Err(_) => {}
        }
        result
    }

    async fn import_keys(
        &self,
        import_id: &str,
        keys: &[ImportedKey],
        audit: &AuditEvent,
    ) -> Result<Vec<Imported>, StoreError> {
        let result = self.call("import_keys", self.below().import_keys(import_id, keys, audit)).await;
        // An id may have been remembered as unknown.
        keys.iter().for_each(|k| self.changed(Changed::Key(k.record.id)));
        result
    }

    async fn set_owner(
        &self,
        account: &AccountId,
        id: &OwnerId,
        changes: &OwnerChanges,
        now: Timestamp,
        audit: &AuditEvent,
    ) -> Result<(Owner, Vec<KeyId>), StoreError> {
        let result = self.call("set_owner", self.below().set_owner(account, id, changes, now, audit)).await;
        match &result {
            Ok((_, keys)) => keys.iter().for_each(|key| self.changed(Changed::Key(*key))),
            // Which keys it changed is unknown here.
            Err(_) => self.changed(Changed::SomeKeys),
        }
        result
    }

    async fn owner(&self, account: &AccountId, id: &OwnerId) -> Result<Option<Owner>, StoreError> {
        self.call("owner", self.below().owner(account, id)).await
    }

    async fn create_session(&self, session: &SessionRecord, audit: &AuditEvent) -> Result<(), StoreError> {
        let result = self.call("create_session", self.below().create_session(session, audit)).await;
        self.changed(Changed::Session(session.id));
        result
    }

    async fn list_sessions(
        &self,
        account: &AccountId,
        user: Option<&UserId>,
        page: &PageRequest,
    ) -> Result<Page<SessionRecord>, StoreError> {
        self.call("list_sessions", self.below().list_sessions(account, user, page)).await
    }

    async fn revoke_session(
        &self,
        id: SessionId,
        now: Timestamp,
        audit: &AuditEvent,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let result = self.call("revoke_session", self.below().revoke_session(id, now, audit)).await;
        self.changed(Changed::Session(id));
        result
    }

    async fn list_audit_events(
        &self,
        account: &AccountId,
        query: &AuditQuery,
        page: &PageRequest,
    ) -> Result<Page<AuditEvent>, StoreError> {
        self.call("list_audit_events", self.below().list_audit_events(account, query, page)).await
    }

    async fn create_admin_token(&self, token: &AdminTokenRecord) -> Result<bool, StoreError> {
        self.call("create_admin_token", self.below().create_admin_token(token)).await
    }

    async fn admin_token(&self, digest: &[u8; 32]) -> Result<Option<AdminTokenRecord>, StoreError> {
        self.call("admin_token", self.below().admin_token(digest)).await
    }

    async fn list_admin_tokens(&self) -> Result<Vec<AdminTokenRecord>, StoreError> {
        self.call("list_admin_tokens", self.below().list_admin_tokens()).await
    }

    async fn revoke_admin_token(
        &self,
        name: &AdminTokenName,
        now: Timestamp,
        by: &str,
    ) -> Result<Option<AdminTokenRecord>, StoreError> {
        self.call("revoke_admin_token", self.below().revoke_admin_token(name, now, by)).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        AdminLayer::ping(self).await
    }
}
