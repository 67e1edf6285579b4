//! Key and application management: the admin API's rules, free of gRPC.

use crate::audit::{Actor, AuditAction, AuditEvent, AuditQuery};
use crate::authn::digest::CredentialDigester;
use crate::authn::verifier::{Verifier, VerifierError};
use crate::clock::Clock;
use crate::domain::imported::ForeignHash;
use crate::domain::{
    admin_token_digest, is_admin_token_signed, new_admin_token, AccountId, AdminRole, AdminTokenName, AdminTokenRecord,
    ApplicationId, CredentialKind, GeneratedKey, InvalidField, KeyId, KeyLimit, KeyTerms, Metadata, Name, NewKeyRecord,
    OwnerId, Scopes, SessionId, Timestamp, UserId,
};
use crate::store::invalidation::{Replicas, Settled};
use crate::store::{
    AdminStore, Application, Credits, Deleted, Deletion, Imported, ImportedKey, KeyChanges, KeyFilter, KeyKind,
    KeyRecord, Owner, OwnerChanges, Page, PageRequest, RollOutcome, SessionRecord, StoreError, UpdateOutcome,
};
use crate::usage::UsageRecorder;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

/// Limits and defaults of sessions and runtime keys.
#[derive(Debug, Clone, Copy)]
pub struct ManageSettings {
    pub default_session_ttl: Duration,
    pub max_session_ttl: Duration,
    pub default_runtime_grace: Duration,
    pub max_runtime_grace: Duration,
    /// With other replicas (Postgres): the longest a change waits for every live replica to
    /// acknowledge it before those that have not are fenced (`--change-ack-timeout-ms`).
    pub change_ack_timeout: Duration,
}

impl ManageSettings {
    pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
    pub const MAX_SESSION_TTL: Duration = Duration::from_secs(30 * 86_400);
    pub const DEFAULT_RUNTIME_GRACE: Duration = Duration::from_secs(3600);
    pub const CHANGE_ACK_TIMEOUT: Duration = Duration::from_secs(1);
}

impl Default for ManageSettings {
    fn default() -> Self {
        Self {
            default_session_ttl: Self::DEFAULT_SESSION_TTL,
            max_session_ttl: Self::MAX_SESSION_TTL,
            default_runtime_grace: Self::DEFAULT_RUNTIME_GRACE,
            max_runtime_grace: MAX_RUNTIME_KEY_GRACE,
            change_ack_timeout: Self::CHANGE_ACK_TIMEOUT,
        }
    }
}

/// A rotation's result: the new key (and its credential, shown once) and the one it replaces.
pub struct Rotation {
    pub key: KeyRecord,
    pub credential: GeneratedKey,
    pub previous: Option<(KeyId, Timestamp)>,
}

/// The most applications a key can be restricted to.
pub const MAX_KEY_APPLICATIONS: usize = 100;
pub const MAX_REASON_LEN: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum ManageError {
    /// The request does not have the expected shape (VALIDATION_ERROR).
    #[error(transparent)]
    Invalid(#[from] InvalidField),
    /// Well-formed but not valid for the resource (bad_request).
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Verifier(#[from] VerifierError),
    /// The OS random source failed while making an id or a secret.
    #[error("the OS random source failed")]
    Randomness(#[from] getrandom::Error),
}

/// The longest an admin token may be made to live: ten years (and by default, forever).
pub const MAX_ADMIN_TOKEN_LIFETIME: Duration = Duration::from_secs(3650 * 86_400);

/// The longest a rotated runtime key may keep working: a week, whatever is asked.
pub const MAX_RUNTIME_KEY_GRACE: Duration = Duration::from_secs(7 * 86_400);

/// The longest a rolled key may keep working beside its successor: a week.
pub const MAX_ROLL_OVERLAP: Duration = Duration::from_secs(7 * 86_400);
/// The most keys one `ImportApiKeys` call takes.
pub const MAX_IMPORT_BATCH: usize = 1000;

#[derive(Debug)]
pub struct NewApiKey {
    pub account_id: AccountId,
    pub name: Name,
    pub scopes: Scopes,
    pub application_ids: Vec<ApplicationId>,
    pub expires_at: Option<Timestamp>,
    pub terms: KeyTerms,
    pub credits: Option<Credits>,
    pub owner_id: Option<OwnerId>,
}

/// A roll's result: the new key (and its credential, shown once) and the old key as it
/// now is, retiring at the end of the overlap.
pub struct Roll {
    pub key: KeyRecord,
    pub credential: GeneratedKey,
    pub previous: KeyRecord,
    pub retires_at: Timestamp,
}

/// One key to import, as the other system kept it.
#[derive(Debug)]
pub struct KeyToImport {
    pub account_id: AccountId,
    pub name: Name,
    pub scopes: Scopes,
    pub application_ids: Vec<ApplicationId>,
    pub expires_at: Option<Timestamp>,
    pub metadata: Option<Metadata>,
    pub owner_id: Option<OwnerId>,
    pub hash: ForeignHash,
}

/// What importing one key came to; `Invalid` keys were not sent to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportResult {
    Imported(Imported),
    Invalid(String),
}

/// Is `template` a route of the policy in force, as the policy writes it? What a key's or
/// an owner's limit may name (the authorizer answers; a reload changes the answer).
pub type RouteTemplates = Arc<dyn Fn(&str) -> bool + Send + Sync>;

pub struct Manager {
    store: Arc<dyn AdminStore>,
    verifier: Arc<Verifier>,
    clock: Arc<dyn Clock>,
    usage: Arc<UsageRecorder>,
    settings: ManageSettings,
    /// Signs the admin tokens it makes (see [`Manager::made_admin_token`]).
    digester: CredentialDigester,
    /// Other replicas that must apply a change before it is answered (Postgres only).
    replicas: Option<Arc<Replicas>>,
    /// The routes limits may name; `None`: any (no policy to ask).
    routes: Option<RouteTemplates>,
}

impl Manager {
    pub fn new(
        store: Arc<dyn AdminStore>,
        verifier: Arc<Verifier>,
        clock: Arc<dyn Clock>,
        usage: Arc<UsageRecorder>,
        settings: ManageSettings,
        digester: CredentialDigester,
    ) -> Self {
        Self { store, verifier, clock, usage, settings, digester, replicas: None, routes: None }
    }

    /// Limits that name a route must name one of these.
    pub fn with_routes(mut self, routes: RouteTemplates) -> Self {
        self.routes = Some(routes);
        self
    }

    /// Changes are answered only once every live replica has applied them (or was fenced).
    pub fn with_replicas(mut self, replicas: Arc<Replicas>) -> Self {
        self.replicas = Some(replicas);
        self
    }

    /// Call after a change that narrows what a credential may do has committed: returns
    /// once every live replica has applied it or has stopped trusting its cache. None on
    /// one process alone on its store (SQLite), whose own cache the write invalidated.
    pub async fn settle(&self) -> Option<Settled> {
        match &self.replicas {
            Some(replicas) => Some(replicas.settle().await),
            None => None,
        }
    }

    /// Did this deployment make `token` (its tag under the digest key)? Admin tokens
    /// that did not are refused without a store read.
    pub fn made_admin_token(&self, token: &str) -> bool {
        is_admin_token_signed(token, |random| self.digester.digest(random))
    }

    /// A key's last use as this replica knows it: stored, or seen since (batched writes).
    pub fn last_used_at(&self, key: &KeyRecord) -> Option<Timestamp> {
        self.usage.last_known(key)
    }

    pub async fn create_application(
        &self,
        account_id: AccountId,
        name: Name,
        actor: &Actor,
    ) -> Result<Application, ManageError> {
        let app = Application { id: ApplicationId::generate()?, account_id, name, created_at: self.clock.now() };
        let audit = self.event(
            &app.account_id,
            AuditAction::ApplicationCreate,
            actor,
            app.id.as_str(),
            json!({ "name": app.name.as_str() }),
        )?;
        self.store.create_application(&app, &audit).await?;
        Ok(app)
    }

    pub async fn application(&self, id: &ApplicationId) -> Result<Arc<Application>, ManageError> {
        self.store
            .application(id)
            .await?
            .ok_or_else(|| ManageError::NotFound(format!("application {id} was not found")))
    }

    pub async fn list_applications(
        &self,
        account: &AccountId,
        page: &PageRequest,
    ) -> Result<Page<Application>, ManageError> {
        Ok(self.store.list_applications(account, page).await?)
    }

    /// Creates a key; the returned credential is the only copy of the secret anywhere.
    pub async fn create_api_key(
        &self,
        new: NewApiKey,
        actor: &Actor,
    ) -> Result<(KeyRecord, GeneratedKey), ManageError> {
        let now = self.clock.now();
        self.check_expiry(new.expires_at, now)?;
        self.check_applications(&new.account_id, &new.application_ids).await?;
        let generated = GeneratedKey::generate()?;
        let secret_hash = self.verifier.hash(generated.credential().secret().as_bytes()).await?;
        let mut record = KeyRecord::issued(
            NewKeyRecord {
                id: generated.credential().key_id(),
                account_id: new.account_id,
                kind: KeyKind::ApiKey,
                name: new.name,
                scopes: new.scopes,
                application_ids: new.application_ids,
                secret_hash,
                expires_at: new.expires_at,
            },
            now,
        );
        new.terms.check()?;
        self.check_limit_routes(&new.terms.limits)?;
        record.terms = KeyTerms { refill: new.credits.and_then(|c| c.refill), ..new.terms };
        record.owner_id = new.owner_id;
        record.credits = new.credits.map(|c| c.balance(now));
        let mut detail = json!({
            "name": record.name.as_str(),
            "scopes": scope_names(&record.scopes),
            "application_ids": application_names(&record.application_ids),
            "expires_at": record.expires_at.map(|t| t.to_string()),
        });
        if let (Some(owner), serde_json::Value::Object(fields)) = (&record.owner_id, &mut detail) {
            fields.insert("owner_id".into(), json!(owner.as_str()));
        }
        if let serde_json::Value::Object(fields) = &mut detail {
            // What the key carries, when it carries anything.
            let terms = &record.terms;
            let changes = KeyChanges {
                limits: Some(terms.limits.clone()).filter(|l| !l.is_empty()),
                allowed_networks: Some(terms.allowed_networks.clone()).filter(|n| !n.is_empty()),
                metadata: terms.metadata.clone().map(Some),
                credits: new.credits.map(Some),
                ..KeyChanges::default()
            };
            terms_detail(&changes, fields);
        }
        let audit = self.event(&record.account_id, AuditAction::ApiKeyCreate, actor, &record.id.to_string(), detail)?;
        self.store.create_key(&record, &audit).await?;
        Ok((record, generated))
    }

    /// With its credits balance as the store holds it (not as this replica last heard).
    pub async fn api_key(&self, id: KeyId) -> Result<Arc<KeyRecord>, ManageError> {
        self.store.key_as_stored(id).await?.ok_or_else(|| key_not_found(id))
    }

    pub async fn list_api_keys(
        &self,
        account: &AccountId,
        filter: &KeyFilter,
        page: &PageRequest,
    ) -> Result<Page<KeyRecord>, ManageError> {
        Ok(self.store.list_keys(account, filter, page).await?)
    }

    pub async fn update_api_key(
        &self,
        id: KeyId,
        changes: KeyChanges,
        actor: &Actor,
    ) -> Result<KeyRecord, ManageError> {
        let now = self.clock.now();
        if let Some(expires_at) = changes.expires_at {
            self.check_expiry(expires_at, now)?;
        }
        let key = self.api_key(id).await?;
        let identity_changes = changes.name.is_some()
            || changes.scopes.is_some()
            || changes.application_ids.is_some()
            || changes.expires_at.is_some()
            || changes.owner_id.is_some();
        if key.kind == KeyKind::Runtime && (identity_changes || changes.credits.is_some()) {
            return Err(ManageError::BadRequest(format!(
                "{id} is a runtime key: rotate it instead of changing its name, scopes, applications, expiry \
                 or owner; it carries no credits"
            )));
        }
        changes.terms_after(&key.terms).check()?;
        self.check_limit_routes(changes.limits.as_deref().unwrap_or_default())?;
        if let Some(apps) = &changes.application_ids {
            self.check_applications(&key.account_id, apps).await?;
        }
        // Only what the update sets; a cleared expiry shows as null.
        let mut detail = serde_json::Map::new();
        if let Some(name) = &changes.name {
            detail.insert("name".into(), json!(name.as_str()));
        }
        if let Some(scopes) = &changes.scopes {
            detail.insert("scopes".into(), json!(scope_names(scopes)));
        }
        if let Some(apps) = &changes.application_ids {
            detail.insert("application_ids".into(), json!(application_names(apps)));
        }
        if let Some(expires_at) = changes.expires_at {
            detail.insert("expires_at".into(), json!(expires_at.map(|t| t.to_string())));
        }
        if let Some(disabled) = changes.disabled {
            detail.insert("enabled".into(), json!(!disabled));
        }
        if let Some(owner) = &changes.owner_id {
            detail.insert("owner_id".into(), json!(owner.as_ref().map(OwnerId::as_str)));
        }
        terms_detail(&changes, &mut detail);
        let audit = self.event(&key.account_id, AuditAction::ApiKeyUpdate, actor, &id.to_string(), detail.into())?;
        match self.store.update_key(id, &changes, now, &audit).await? {
            UpdateOutcome::Updated(key) => Ok(*key),
            UpdateOutcome::NotFound => Err(key_not_found(id)),
            UpdateOutcome::Revoked => {
                Err(ManageError::BadRequest(format!("API key {id} is revoked and cannot be changed")))
            }
        }
    }

    pub async fn revoke_api_key(&self, id: KeyId, reason: &str, actor: &Actor) -> Result<KeyRecord, ManageError> {
        if reason.chars().count() > MAX_REASON_LEN {
            return Err(InvalidField::new("reason", format!("must be at most {MAX_REASON_LEN} characters")).into());
        }
        let reason = reason.trim();
        // The account the event belongs to; it never changes, so a cached record tells it.
        let account = self.api_key(id).await?.account_id.clone();
        let audit =
            self.event(&account, AuditAction::ApiKeyRevoke, actor, &id.to_string(), json!({ "reason": reason }))?;
        self.store.revoke_key(id, reason, self.clock.now(), &audit).await?.ok_or_else(|| key_not_found(id))
    }

    /// Replaces a key with a new one that carries everything it carried; the old one
    /// keeps working for `overlap` (0: it stops at once), then is denied as rolled.
    pub async fn roll_api_key(&self, id: KeyId, overlap: Duration, actor: &Actor) -> Result<Roll, ManageError> {
        if overlap > MAX_ROLL_OVERLAP {
            return Err(InvalidField::new(
                "overlap_seconds",
                format!("must be at most {} (7 days)", MAX_ROLL_OVERLAP.as_secs()),
            )
            .into());
        }
        let old = self.api_key(id).await?;
        if old.kind == KeyKind::Runtime {
            return Err(ManageError::BadRequest(format!(
                "{id} is a runtime key: rotate its application's key instead (RotateApplicationKey)"
            )));
        }
        let now = self.clock.now();
        let credential = GeneratedKey::generate()?;
        let secret_hash = self.verifier.hash(credential.credential().secret().as_bytes()).await?;
        let mut key = KeyRecord::issued(
            NewKeyRecord {
                id: credential.credential().key_id(),
                account_id: old.account_id.clone(),
                kind: KeyKind::ApiKey,
                name: old.name.clone(),
                scopes: old.scopes.clone(),
                application_ids: old.application_ids.clone(),
                secret_hash,
                expires_at: old.expires_at,
            },
            now,
        );
        key.terms = old.terms.clone();
        key.disabled = old.disabled;
        key.owner_id = old.owner_id.clone();
        key.rolled_from = Some(old.id);
        let retires_at = now.saturating_add(overlap);
        let audit = self.event(
            &old.account_id,
            AuditAction::ApiKeyRoll,
            actor,
            &id.to_string(),
            json!({ "rolled_to": key.id.to_string(), "overlap_seconds": overlap.as_secs(), "retires_at": retires_at.to_string() }),
        )?;
        match self.store.roll_key(&key, id, retires_at, &audit).await? {
            RollOutcome::Rolled { old, .. } => {
                // As stored: with the credits that moved to it.
                let key = self.store.key(key.id).await?.map_or(key, |stored| (*stored).clone());
                Ok(Roll { key, credential, previous: *old, retires_at })
            }
            RollOutcome::NotFound => Err(key_not_found(id)),
            RollOutcome::Revoked => {
                Err(ManageError::BadRequest(format!("API key {id} is revoked and cannot be rolled")))
            }
            RollOutcome::AlreadyRolled(next) => Err(ManageError::BadRequest(format!(
                "API key {id} was rolled already, to {next}: roll that key instead"
            ))),
        }
    }

    /// Deletes a key for good; its audit events stay.
    pub async fn delete_api_key(&self, id: KeyId, actor: &Actor) -> Result<Deleted, ManageError> {
        let key = self.api_key(id).await?;
        let audit = self.event(
            &key.account_id,
            AuditAction::ApiKeyDelete,
            actor,
            &id.to_string(),
            json!({ "name": key.name.as_str() }),
        )?;
        let deleted = self.store.delete(&Deletion::Key(id), &audit).await?;
        if deleted.keys.is_empty() {
            return Err(key_not_found(id));
        }
        Ok(deleted)
    }

    /// Imports keys made by another system, by their hashes; each is checked on its own,
    /// and the valid ones are stored in one transaction. Idempotent by `import_id`.
    pub async fn import_api_keys(
        &self,
        import_id: &str,
        keys: Vec<Result<KeyToImport, InvalidField>>,
        actor: &Actor,
    ) -> Result<Vec<ImportResult>, ManageError> {
        if import_id.is_empty() || import_id.len() > 64 || !import_id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(InvalidField::new("import_id", "must be 1 to 64 printable characters").into());
        }
        if keys.is_empty() || keys.len() > MAX_IMPORT_BATCH {
            return Err(InvalidField::new("keys", format!("must hold 1 to {MAX_IMPORT_BATCH} keys")).into());
        }
        let now = self.clock.now();
        let mut results: Vec<Option<ImportResult>> = Vec::with_capacity(keys.len());
        let mut valid = Vec::new();
        let mut first_account = None;
        for key in keys {
            let checked = match key {
                Ok(key) => self.importable(key, now).await,
                Err(invalid) => Err(ManageError::Invalid(invalid)),
            };
            match checked {
                Ok(imported) => {
                    first_account.get_or_insert_with(|| imported.record.account_id.clone());
                    valid.push((results.len(), imported));
                    results.push(None);
                }
                Err(ManageError::Store(e)) => return Err(e.into()),
                Err(e) => results.push(Some(ImportResult::Invalid(e.to_string()))),
            }
        }
        if let Some(account) = first_account {
            let audit =
                self.event(&account, AuditAction::ApiKeyImport, actor, import_id, json!({ "import_id": import_id }))?;
            let records: Vec<ImportedKey> = valid.iter().map(|(_, k)| k.clone()).collect();
            let stored = self.store.import_keys(import_id, &records, &audit).await?;
            for ((index, _), outcome) in valid.iter().zip(stored) {
                results[*index] = Some(ImportResult::Imported(outcome));
            }
        }
        Ok(results.into_iter().map(|r| r.expect("every key has a result")).collect())
    }

    async fn importable(&self, key: KeyToImport, now: Timestamp) -> Result<ImportedKey, ManageError> {
        key.hash.check_cost(self.verifier.max_imported_cost())?;
        self.check_expiry(key.expires_at, now)?;
        self.check_applications(&key.account_id, &key.application_ids).await?;
        let mut record = KeyRecord::issued(
            NewKeyRecord {
                id: KeyId::generate()?,
                account_id: key.account_id,
                kind: KeyKind::ApiKey,
                name: key.name,
                scopes: key.scopes,
                application_ids: key.application_ids,
                secret_hash: key.hash.secret_hash(),
                expires_at: key.expires_at,
            },
            now,
        );
        record.terms.metadata = key.metadata;
        record.owner_id = key.owner_id;
        record.lookup = Some(crate::domain::Lookup::new(key.hash.lookup()));
        Ok(ImportedKey { import_ref: key.hash.lookup(), record })
    }

    /// Sets an owner's shared limits and credits (creating the owner).
    pub async fn update_owner(
        &self,
        account: &AccountId,
        id: &OwnerId,
        changes: OwnerChanges,
        actor: &Actor,
    ) -> Result<Owner, ManageError> {
        let now = self.clock.now();
        let current = self.store.owner(account, id).await?;
        let after = KeyTerms {
            limits: changes.limits.clone().or_else(|| current.as_ref().map(|o| o.limits.clone())).unwrap_or_default(),
            refill: match changes.credits {
                Some(credits) => credits.and_then(|c| c.refill),
                None => current.as_ref().and_then(|o| o.refill),
            },
            ..KeyTerms::default()
        };
        after.check()?;
        self.check_limit_routes(changes.limits.as_deref().unwrap_or_default())?;
        let mut detail = serde_json::Map::new();
        let as_key_changes =
            KeyChanges { limits: changes.limits.clone(), credits: changes.credits, ..KeyChanges::default() };
        terms_detail(&as_key_changes, &mut detail);
        let audit = self.event(account, AuditAction::OwnerUpdate, actor, id.as_str(), detail.into())?;
        Ok(self.store.set_owner(account, id, &changes, now, &audit).await?.0)
    }

    pub async fn owner(&self, account: &AccountId, id: &OwnerId) -> Result<Owner, ManageError> {
        self.store
            .owner(account, id)
            .await?
            .ok_or_else(|| ManageError::NotFound(format!("owner {id} was not found for account {account}")))
    }

    pub async fn rename_application(
        &self,
        id: &ApplicationId,
        name: Name,
        actor: &Actor,
    ) -> Result<Application, ManageError> {
        let app = self.application(id).await?;
        let audit = self.event(
            &app.account_id,
            AuditAction::ApplicationUpdate,
            actor,
            id.as_str(),
            json!({ "name": name.as_str() }),
        )?;
        self.store
            .rename_application(id, &name, &audit)
            .await?
            .ok_or_else(|| ManageError::NotFound(format!("application {id} was not found")))
    }

    /// Deletes an application; refused while keys are restricted to it unless `cascade`.
    pub async fn delete_application(
        &self,
        id: &ApplicationId,
        cascade: bool,
        actor: &Actor,
    ) -> Result<Deleted, ManageError> {
        let app = self.application(id).await?;
        let audit = self.event(
            &app.account_id,
            AuditAction::ApplicationDelete,
            actor,
            id.as_str(),
            json!({ "name": app.name.as_str(), "cascade": cascade }),
        )?;
        let deleted = self.store.delete(&Deletion::Application { id: id.clone(), cascade }, &audit).await?;
        if let Some(first) = deleted.blocked_by.first() {
            return Err(ManageError::BadRequest(format!(
                "application {id} is named by {} API key(s) (first: {first}); remove it from them, or delete with \
                 cascade",
                deleted.blocked_by.len()
            )));
        }
        if deleted.applications.is_empty() {
            return Err(ManageError::NotFound(format!("application {id} was not found")));
        }
        Ok(deleted)
    }

    pub async fn list_sessions(
        &self,
        account: &AccountId,
        user: Option<&UserId>,
        page: &PageRequest,
    ) -> Result<Page<SessionRecord>, ManageError> {
        Ok(self.store.list_sessions(account, user, page).await?)
    }

    /// Erases an account: every key, application, session and owner, in one transaction,
    /// with an audit event each. Its audit events stay. Deleting it again deletes nothing.
    pub async fn delete_account(&self, account: &AccountId, actor: &Actor) -> Result<Deleted, ManageError> {
        let audit = self.event(account, AuditAction::AccountDelete, actor, account.as_str(), json!({}))?;
        Ok(self.store.delete(&Deletion::Account(account.clone()), &audit).await?)
    }

    /// Makes a new runtime key for an application; the current one keeps working for the
    /// grace period (the server's default unless given).
    pub async fn rotate_application_key(
        &self,
        application_id: &ApplicationId,
        grace: Option<Duration>,
        actor: &Actor,
    ) -> Result<Rotation, ManageError> {
        let grace = grace.unwrap_or(self.settings.default_runtime_grace);
        if grace > self.settings.max_runtime_grace {
            return Err(InvalidField::new(
                "grace_period_seconds",
                format!("must be at most {}", self.settings.max_runtime_grace.as_secs()),
            )
            .into());
        }
        let application = self.application(application_id).await?;
        let now = self.clock.now();
        let credential = GeneratedKey::generate_kind(CredentialKind::RuntimeKey)?;
        let secret_hash = self.verifier.hash(credential.credential().secret().as_bytes()).await?;
        let key = KeyRecord::issued(
            NewKeyRecord {
                id: credential.credential().key_id(),
                account_id: application.account_id.clone(),
                kind: KeyKind::Runtime,
                name: Name::from_trusted(format!("runtime key of {}", application.id)),
                scopes: Scopes::default(),
                application_ids: vec![application.id.clone()],
                secret_hash,
                expires_at: None,
            },
            now,
        );
        let retire_at = now.saturating_add(grace);
        let audit = self.event(
            &key.account_id,
            AuditAction::ApplicationRotateKey,
            actor,
            application.id.as_str(),
            json!({ "key_id": key.id.to_string(), "grace_period_seconds": grace.as_secs() }),
        )?;
        let previous = self.store.rotate_runtime_key(&key, retire_at, &audit).await?;
        // As stored: with the terms it took over from the key it replaces.
        let key = self.store.key(key.id).await?.map_or(key, |stored| (*stored).clone());
        Ok(Rotation { key, credential, previous: previous.first().map(|id| (*id, retire_at)) })
    }

    /// Starts a dashboard session; the token is the only copy of its secret anywhere.
    pub async fn create_session(
        &self,
        account_id: AccountId,
        user_id: UserId,
        ttl: Option<Duration>,
        actor: &Actor,
    ) -> Result<(SessionRecord, GeneratedKey), ManageError> {
        let ttl = ttl.unwrap_or(self.settings.default_session_ttl);
        if ttl.is_zero() || ttl > self.settings.max_session_ttl {
            return Err(InvalidField::new(
                "ttl_seconds",
                format!("must be at most {}", self.settings.max_session_ttl.as_secs()),
            )
            .into());
        }
        let now = self.clock.now();
        let token = GeneratedKey::generate_kind(CredentialKind::Session)?;
        let session = SessionRecord {
            id: token.credential().session_id(),
            account_id,
            user_id,
            secret_digest: Sha256::digest(token.credential().secret().as_bytes()).into(),
            created_at: now,
            expires_at: now.saturating_add(ttl),
            revoked_at: None,
            version: 1,
        };
        let audit = self.event(
            &session.account_id,
            AuditAction::SessionCreate,
            actor,
            &session.id.to_string(),
            json!({ "user_id": session.user_id.as_str(), "expires_at": session.expires_at.to_string() }),
        )?;
        self.store.create_session(&session, &audit).await?;
        Ok((session, token))
    }

    /// A new admin token, shown once. A name ever used before is refused.
    pub async fn create_admin_token(
        &self,
        name: AdminTokenName,
        role: AdminRole,
        account_id: Option<AccountId>,
        lifetime: Option<Duration>,
        actor: &Actor,
    ) -> Result<(AdminTokenRecord, String), ManageError> {
        if role == AdminRole::Admin && account_id.is_some() {
            return Err(ManageError::BadRequest(
                "an admin token cannot be confined to an account: its role reaches beyond accounts".into(),
            ));
        }
        if lifetime.is_some_and(|l| l.is_zero() || l > MAX_ADMIN_TOKEN_LIFETIME) {
            return Err(InvalidField::new(
                "expires_in_seconds",
                format!("must be at most {} (or 0: no expiry)", MAX_ADMIN_TOKEN_LIFETIME.as_secs()),
            )
            .into());
        }
        let now = self.clock.now();
        let secret = new_admin_token(|random| self.digester.digest(random))?;
        let token = AdminTokenRecord {
            name,
            role,
            account_id,
            digest: admin_token_digest(&secret),
            created_at: now,
            expires_at: lifetime.map(|l| now.saturating_add(l)),
            revoked_at: None,
            created_by: actor.credential.clone(),
            revoked_by: None,
        };
        if !self.store.create_admin_token(&token).await? {
            return Err(ManageError::BadRequest(format!(
                "an admin token named {} exists or existed (names are never reused)",
                token.name.as_str()
            )));
        }
        Ok((token, secret))
    }

    /// The admin token presented as `token`, if there is one (live or not).
    pub async fn admin_token(&self, token: &str) -> Result<Option<AdminTokenRecord>, ManageError> {
        Ok(self.store.admin_token(&admin_token_digest(token)).await?)
    }

    pub async fn list_admin_tokens(&self) -> Result<Vec<AdminTokenRecord>, ManageError> {
        Ok(self.store.list_admin_tokens().await?)
    }

    /// Idempotent: a token revoked before keeps its first revocation.
    pub async fn revoke_admin_token(
        &self,
        name: &AdminTokenName,
        actor: &Actor,
    ) -> Result<AdminTokenRecord, ManageError> {
        self.store
            .revoke_admin_token(name, self.clock.now(), &actor.credential)
            .await?
            .ok_or_else(|| ManageError::NotFound(format!("admin token {} was not found", name.as_str())))
    }

    pub async fn session(&self, id: SessionId) -> Result<Arc<SessionRecord>, ManageError> {
        self.store.session(id).await?.ok_or_else(|| ManageError::NotFound(format!("session {id} was not found")))
    }

    pub async fn revoke_session(&self, id: SessionId, actor: &Actor) -> Result<SessionRecord, ManageError> {
        let session = self.session(id).await?;
        let audit = self.event(
            &session.account_id,
            AuditAction::SessionRevoke,
            actor,
            &id.to_string(),
            json!({ "user_id": session.user_id.as_str() }),
        )?;
        self.store
            .revoke_session(id, self.clock.now(), &audit)
            .await?
            .ok_or_else(|| ManageError::NotFound(format!("session {id} was not found")))
    }

    pub async fn list_audit_events(
        &self,
        account: &AccountId,
        query: &AuditQuery,
        page: &PageRequest,
    ) -> Result<Page<AuditEvent>, ManageError> {
        Ok(self.store.list_audit_events(account, query, page).await?)
    }

    /// The record of an action, stamped now; `detail` must hold no secret.
    fn event(
        &self,
        account: &AccountId,
        action: AuditAction,
        actor: &Actor,
        target: &str,
        detail: serde_json::Value,
    ) -> Result<AuditEvent, ManageError> {
        Ok(AuditEvent::new(account.clone(), action, actor, target, self.clock.now(), detail)?)
    }

    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    fn check_expiry(&self, expires_at: Option<Timestamp>, now: Timestamp) -> Result<(), ManageError> {
        match expires_at {
            Some(at) if at <= now => Err(ManageError::BadRequest("expires_at must be in the future".into())),
            _ => Ok(()),
        }
    }

    /// A limit that names a route names one the policy in force has, as it writes it
    /// (`GET /api/v1/panel/applications/{application_id}`): any other would limit nothing.
    fn check_limit_routes(&self, limits: &[KeyLimit]) -> Result<(), ManageError> {
        let Some(known) = &self.routes else { return Ok(()) };
        match limits.iter().filter_map(|l| l.route.as_deref()).find(|route| !known(route)) {
            None => Ok(()),
            Some(route) => Err(InvalidField::new(
                "limits.route",
                format!(
                    "{route:?} is not a route of the policy: name a route template exactly as the policy writes \
                     it, such as \"GET /api/v1/panel/applications/{{application_id}}\""
                ),
            )
            .into()),
        }
    }

    /// Every application a key is restricted to must belong to the key's account.
    async fn check_applications(&self, account: &AccountId, ids: &[ApplicationId]) -> Result<(), ManageError> {
        if ids.len() > MAX_KEY_APPLICATIONS {
            return Err(
                InvalidField::new("application_ids", format!("at most {MAX_KEY_APPLICATIONS} applications")).into()
            );
        }
        for id in ids {
            match self.store.application(id).await? {
                Some(app) if app.account_id == *account => {}
                _ => {
                    return Err(ManageError::NotFound(format!("application {id} was not found for account {account}")))
                }
            }
        }
        Ok(())
    }
}

/// What an audit event says of a key's terms: all but the metadata's contents, which may
/// be the customer's own (its size is recorded).
fn terms_detail(changes: &KeyChanges, detail: &mut serde_json::Map<String, serde_json::Value>) {
    if let Some(limits) = &changes.limits {
        let limits: Vec<_> = limits
            .iter()
            .map(|l| json!({ "name": &*l.name, "limit": l.limit, "window_seconds": l.window.as_secs(), "route": l.route.as_deref() }))
            .collect();
        detail.insert("limits".into(), json!(limits));
    }
    if let Some(networks) = &changes.allowed_networks {
        let networks: Vec<_> = networks.iter().map(ToString::to_string).collect();
        detail.insert("allowed_networks".into(), json!(networks));
    }
    if let Some(metadata) = &changes.metadata {
        detail.insert("metadata_bytes".into(), json!(metadata.as_ref().map(|m| m.as_json().len())));
    }
    if let Some(credits) = &changes.credits {
        let credits = credits.map(|c| {
            json!({
                "remaining": c.remaining,
                "refill": c.refill.map(|r| json!({ "amount": r.amount, "interval": r.interval_str(), "mode": r.mode_str() })),
            })
        });
        detail.insert("credits".into(), json!(credits));
    }
}

fn scope_names(scopes: &Scopes) -> Vec<&str> {
    scopes.iter().map(|s| s.as_str()).collect()
}

fn application_names(ids: &[ApplicationId]) -> Vec<&str> {
    ids.iter().map(|a| a.as_str()).collect()
}

fn key_not_found(id: KeyId) -> ManageError {
    ManageError::NotFound(format!("API key {id} was not found"))
}
