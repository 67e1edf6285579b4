//! The admin plane's side of a store, by resource: everything a decision does not wait on.
//! [`AdminStore`] is their union. Each trait is spelled once, here, through
//! [`layered_trait!`](super::layer::layered_trait): the same text makes the table a decorator
//! ([`AdminLayer`](super::AdminLayer)) gets it from, and says after `=>` what each write
//! changed, for the layer that keeps a cache in step. [`sql::SqlStore`](super::sql::SqlStore)
//! implements each in its resource's file.
//!
//! Admin calls read records as a decision does (through the cache, above one). Every write
//! takes the [`AuditEvent`] that records it and stores both in one transaction, or neither;
//! what a write changed is in what it returns (or in its arguments).

use super::layer::layered_trait;
use super::{
    Application, Changed, Deleted, Deletion, Imported, ImportedKey, KeyChanges, KeyFilter, KeyRecord, Owner,
    OwnerChanges, Page, PageRequest, Records, RollOutcome, SessionRecord, StoreError, UpdateOutcome,
};
use crate::audit::{AuditEvent, AuditQuery};
use crate::domain::{AccountId, AdminTokenName, AdminTokenRecord, ApplicationId, KeyId, Name, OwnerId, SessionId};
use crate::domain::{Timestamp, UserId};
use std::sync::Arc;

layered_trait! {
    /// An account's applications.
    pub trait ApplicationAdmin: Records, through AdminLayer::call {
        // A miss may have been cached as "no such application".
        async fn create_application(&self, app: &Application, audit: &AuditEvent) -> Result<(), StoreError>
            => |_result, report| report(Changed::Application(&app.id));
        async fn list_applications(&self, account: &AccountId, page: &PageRequest)
            -> Result<Page<Application>, StoreError>;
        /// `None`, recording nothing, if there is no such application.
        async fn rename_application(&self, id: &ApplicationId, name: &Name, audit: &AuditEvent)
            -> Result<Option<Application>, StoreError>
            => |_result, report| report(Changed::Application(id));
    }
}

layered_trait! {
    /// API and runtime keys, as the admin plane makes and changes them.
    pub trait KeyAdmin: Records, through AdminLayer::call {
        async fn create_key(&self, key: &KeyRecord, audit: &AuditEvent) -> Result<(), StoreError>
            => |_result, report| report(Changed::Key(key.id));
        async fn list_keys(&self, account: &AccountId, filter: &KeyFilter, page: &PageRequest)
            -> Result<Page<KeyRecord>, StoreError>;
        /// Records nothing unless the key was updated.
        async fn update_key(&self, id: KeyId, changes: &KeyChanges, now: Timestamp, audit: &AuditEvent)
            -> Result<UpdateOutcome, StoreError>
            => |result, report| {
                // Changed even when the write errors: it may have committed before the error.
                report(Changed::Key(id));
                // A key rolled into this one follows it (its credits, its state, its terms).
                if let Ok(UpdateOutcome::Updated(key)) = result {
                    key.rolled_from.iter().for_each(|predecessor| report(Changed::Key(*predecessor)));
                }
            };
        /// Idempotent: revoking a revoked key returns it unchanged (and records the attempt).
        /// `None`, recording nothing, if there is no such key.
        async fn revoke_key(&self, id: KeyId, reason: &str, now: Timestamp, audit: &AuditEvent)
            -> Result<Option<KeyRecord>, StoreError>
            => |result, report| {
                report(Changed::Key(id));
                // A key rolled into this one stops with it.
                if let Ok(Some(key)) = result {
                    key.rolled_from.iter().for_each(|predecessor| report(Changed::Key(*predecessor)));
                }
            };
        /// Makes `new` (a runtime key) its application's current runtime key, in one
        /// transaction; the key it replaces keeps working until `retire_at`. Returns that key.
        async fn rotate_runtime_key(&self, new: &KeyRecord, retire_at: Timestamp, audit: &AuditEvent)
            -> Result<Vec<KeyId>, StoreError>
            => |result, report| {
                report(Changed::Key(new.id));
                result.iter().flatten().for_each(|retired| report(Changed::Key(*retired)));
            };
        /// Makes `new` (built from key `old`: same account, name, scopes, applications, expiry,
        /// terms, owner) replace `old` in one transaction: `old` keeps working until
        /// `retire_at`, its credits move to `new` (spent by both meanwhile), and a roll that
        /// made `old` ends its own overlap now.
        async fn roll_key(&self, new: &KeyRecord, old: KeyId, retire_at: Timestamp, audit: &AuditEvent)
            -> Result<RollOutcome, StoreError>
            => |result, report| {
                report(Changed::Key(new.id));
                report(Changed::Key(old));
                if let Ok(RollOutcome::Rolled { ended, .. }) = result {
                    ended.iter().for_each(|id| report(Changed::Key(*id)));
                }
            };
    }
}

layered_trait! {
    /// Keys brought from another system.
    pub trait ImportAdmin: Records, through AdminLayer::call {
        /// Stores keys from another system, in one transaction, skipping those already there
        /// (by `import_ref`): re-running an import changes nothing. One audit event per key
        /// created, made from `audit`.
        async fn import_keys(&self, import_id: &str, keys: &[ImportedKey], audit: &AuditEvent)
            -> Result<Vec<Imported>, StoreError>
            // An id may have been remembered as unknown.
            => |_result, report| keys.iter().for_each(|k| report(Changed::Key(k.record.id)));
    }
}

layered_trait! {
    /// Deleting for good.
    pub trait DeleteAdmin: Records, through AdminLayer::call {
        /// Deletes for good, in one transaction, with an audit event per object deleted (made
        /// from `audit`, which names the action that asked for it).
        async fn delete(&self, target: &Deletion, audit: &AuditEvent) -> Result<Deleted, StoreError>
            => |result, report| {
                match target {
                    Deletion::Key(id) => report(Changed::Key(*id)),
                    Deletion::Application { id, .. } => report(Changed::Application(id)),
                    Deletion::Account(_) => {}
                }
                match result {
                    Ok(deleted) => report(Changed::Deleted(deleted)),
                    // It may have committed before the error: what it removed is unknown here.
                    Err(_) if matches!(target, Deletion::Account(_) | Deletion::Application { .. }) => {
                        report(Changed::Anything)
                    }
                    Err(_) => {}
                }
            };
    }
}

layered_trait! {
    /// Owners: terms shared by their keys.
    pub trait OwnerAdmin: Records, through AdminLayer::call {
        /// Creates or changes an owner's shared terms; each of its keys counts as changed
        /// (version, notification). Returns the owner and its keys.
        async fn set_owner(
            &self,
            account: &AccountId,
            id: &OwnerId,
            changes: &OwnerChanges,
            now: Timestamp,
            audit: &AuditEvent,
        ) -> Result<(Owner, Vec<KeyId>), StoreError>
            => |result, report| match result {
                Ok((_, keys)) => keys.iter().for_each(|key| report(Changed::Key(*key))),
                // Which keys it changed is unknown here.
                Err(_) => report(Changed::SomeKeys),
            };
        async fn owner(&self, account: &AccountId, id: &OwnerId) -> Result<Option<Owner>, StoreError>;
    }
}

layered_trait! {
    /// Sessions, as the admin plane makes and ends them.
    pub trait SessionAdmin: Records, through AdminLayer::call {
        async fn create_session(&self, session: &SessionRecord, audit: &AuditEvent) -> Result<(), StoreError>
            => |_result, report| report(Changed::Session(session.id));
        /// An account's sessions (of one user, if given), in id order.
        async fn list_sessions(&self, account: &AccountId, user: Option<&UserId>, page: &PageRequest)
            -> Result<Page<SessionRecord>, StoreError>;
        /// Idempotent. `None`, recording nothing, if there is no such session.
        async fn revoke_session(&self, id: SessionId, now: Timestamp, audit: &AuditEvent)
            -> Result<Option<SessionRecord>, StoreError>
            => |_result, report| report(Changed::Session(id));
    }
}

layered_trait! {
    /// The audit trail, as the admin plane reads it (writes record their events themselves).
    pub trait AuditLog: Records, through AdminLayer::call {
        /// An account's audit events, newest first; pages continue *before* `page.after`.
        async fn list_audit_events(&self, account: &AccountId, query: &AuditQuery, page: &PageRequest)
            -> Result<Page<AuditEvent>, StoreError>;
    }
}

layered_trait! {
    /// The admin plane's own credentials.
    pub trait AdminTokens: Records, through AdminLayer::call {
        /// Stores a new admin token. `false`, storing nothing, when its name was ever used
        /// (names are unique for all time: the audit trail names tokens by them).
        async fn create_admin_token(&self, token: &AdminTokenRecord) -> Result<bool, StoreError>;
        /// The admin token with this digest, live or not. Read at every admin call (never
        /// cached): a revocation is in force on every replica at the next call.
        async fn admin_token(&self, digest: &[u8; 32]) -> Result<Option<AdminTokenRecord>, StoreError>;
        /// Every admin token, revoked ones too, by name.
        async fn list_admin_tokens(&self) -> Result<Vec<AdminTokenRecord>, StoreError>;
        /// Idempotent: the first revocation's time and revoker stay. `None` when no token has
        /// that name.
        async fn revoke_admin_token(&self, name: &AdminTokenName, now: Timestamp, by: &str)
            -> Result<Option<AdminTokenRecord>, StoreError>;
    }
}

/// What each layer answers its own way, not through the table (see [`AdminLayer`]'s
/// hooks of the same names).
///
/// [`AdminLayer`]: super::AdminLayer
#[async_trait::async_trait]
pub trait Direct: Records {
    /// The key as the admin API shows it: with its credits balance as the store holds it
    /// now (a replica's cached record can hold one other replicas have spent since).
    async fn key_as_stored(&self, id: KeyId) -> Result<Option<Arc<KeyRecord>>, StoreError>;

    /// Cheap round trip, for health checks: the breaker's probe asks the store itself.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Releases connections at shutdown, after the last write. Stores without any keep
    /// the default; layers do not forward it (shutdown closes the store beneath).
    async fn close(&self) {}
}

/// The admin plane's side, whole: what [`crate::manage::Manager`] is given.
pub trait AdminStore:
    ApplicationAdmin + KeyAdmin + ImportAdmin + DeleteAdmin + OwnerAdmin + SessionAdmin + AuditLog + AdminTokens + Direct
{
}

impl<T> AdminStore for T where
    T: ApplicationAdmin
        + KeyAdmin
        + ImportAdmin
        + DeleteAdmin
        + OwnerAdmin
        + SessionAdmin
        + AuditLog
        + AdminTokens
        + Direct
        + ?Sized
{
}
