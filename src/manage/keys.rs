//! API keys: create, read, list, update, revoke, roll (a new key that carries everything
//! the old one carried) and delete.

use super::confinement::{visible, within};
use super::{AccountView, Caller, ManageError, Manager};
use crate::audit::AuditAction;
use crate::domain::{
    AccountId, AdminGrant, ApplicationId, GeneratedKey, InvalidField, KeyId, KeyTerms, Name, NewKeyRecord, OwnerId,
    Scopes, Timestamp,
};
use crate::store::{
    Credits, Deleted, Deletion, KeyChanges, KeyFilter, KeyKind, KeyRecord, Page, PageRequest, RollOutcome,
    UpdateOutcome,
};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// The most applications a key can be restricted to.
pub const MAX_KEY_APPLICATIONS: usize = 100;
/// The longest reason a revocation may give.
pub const MAX_REASON_LEN: usize = 500;
/// The longest a rolled key may keep working beside its successor: a week.
pub const MAX_ROLL_OVERLAP: Duration = Duration::from_secs(7 * 86_400);

/// A new API key, as its creator asks for it.
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

impl Manager {
    /// Creates a key; the returned credential is the only copy of the secret anywhere.
    pub async fn create_api_key(
        &self,
        new: NewApiKey,
        caller: &Caller,
    ) -> Result<(KeyRecord, GeneratedKey), ManageError> {
        within(&caller.grant, &new.account_id)?;
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
        let audit =
            self.event(&record.account_id, AuditAction::ApiKeyCreate, &caller.actor, &record.id.to_string(), detail)?;
        self.store.create_key(&record, &audit).await?;
        Ok((record, generated))
    }

    /// With its credits balance as the store holds it (not as this replica last heard).
    pub async fn api_key(&self, grant: &AdminGrant, id: KeyId) -> Result<Arc<KeyRecord>, ManageError> {
        let key = self.stored_key(id).await?;
        visible(grant, &key.account_id, "API key", id)?;
        Ok(key)
    }

    /// [`api_key`](Self::api_key), whoever asks (for the checks of a change, which confine
    /// the caller first).
    pub(super) async fn stored_key(&self, id: KeyId) -> Result<Arc<KeyRecord>, ManageError> {
        self.store.key_as_stored(id).await?.ok_or_else(|| key_not_found(id))
    }

    pub async fn update_api_key(
        &self,
        id: KeyId,
        changes: KeyChanges,
        caller: &Caller,
    ) -> Result<KeyRecord, ManageError> {
        self.key_within(&caller.grant, id).await?;
        let now = self.clock.now();
        if let Some(expires_at) = changes.expires_at {
            self.check_expiry(expires_at, now)?;
        }
        let key = self.stored_key(id).await?;
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
        let audit =
            self.event(&key.account_id, AuditAction::ApiKeyUpdate, &caller.actor, &id.to_string(), detail.into())?;
        match self.store.update_key(id, &changes, now, &audit).await? {
            UpdateOutcome::Updated(key) => Ok(*key),
            UpdateOutcome::NotFound => Err(key_not_found(id)),
            UpdateOutcome::Revoked => {
                Err(ManageError::BadRequest(format!("API key {id} is revoked and cannot be changed")))
            }
        }
    }

    pub async fn revoke_api_key(&self, id: KeyId, reason: &str, caller: &Caller) -> Result<KeyRecord, ManageError> {
        self.key_within(&caller.grant, id).await?;
        if reason.chars().count() > MAX_REASON_LEN {
            return Err(InvalidField::new("reason", format!("must be at most {MAX_REASON_LEN} characters")).into());
        }
        let reason = reason.trim();
        // The account the event belongs to; it never changes, so a cached record tells it.
        let account = self.stored_key(id).await?.account_id.clone();
        let audit = self.event(
            &account,
            AuditAction::ApiKeyRevoke,
            &caller.actor,
            &id.to_string(),
            json!({ "reason": reason }),
        )?;
        self.store.revoke_key(id, reason, self.clock.now(), &audit).await?.ok_or_else(|| key_not_found(id))
    }

    /// Replaces a key with a new one that carries everything it carried; the old one
    /// keeps working for `overlap` (0: it stops at once), then is denied as rolled.
    pub async fn roll_api_key(&self, id: KeyId, overlap: Duration, caller: &Caller) -> Result<Roll, ManageError> {
        self.key_within(&caller.grant, id).await?;
        if overlap > MAX_ROLL_OVERLAP {
            return Err(InvalidField::new(
                "overlap_seconds",
                format!("must be at most {} (7 days)", MAX_ROLL_OVERLAP.as_secs()),
            )
            .into());
        }
        let old = self.stored_key(id).await?;
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
            &caller.actor,
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
    /// What was deleted, and the account it was in (the change feed's subscribers that
    /// see it are the ones a settled answer waits for).
    pub async fn delete_api_key(&self, id: KeyId, caller: &Caller) -> Result<(Deleted, AccountId), ManageError> {
        self.key_within(&caller.grant, id).await?;
        let key = self.stored_key(id).await?;
        let audit = self.event(
            &key.account_id,
            AuditAction::ApiKeyDelete,
            &caller.actor,
            &id.to_string(),
            json!({ "name": key.name.as_str() }),
        )?;
        let deleted = self.store.delete(&Deletion::Key(id), &audit).await?;
        if deleted.keys.is_empty() {
            return Err(key_not_found(id));
        }
        Ok((deleted, key.account_id.clone()))
    }
}

impl AccountView<'_> {
    pub async fn list_api_keys(&self, filter: &KeyFilter, page: &PageRequest) -> Result<Page<KeyRecord>, ManageError> {
        Ok(self.manager.store.list_keys(self.account, filter, page).await?)
    }
}

/// What an audit event says of a key's terms: all but the metadata's contents, which may
/// be the customer's own (its size is recorded).
pub(super) fn terms_detail(changes: &KeyChanges, detail: &mut serde_json::Map<String, serde_json::Value>) {
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
            let refill =
                c.refill.map(|r| json!({ "amount": r.amount, "interval": r.interval_str(), "mode": r.mode_str() }));
            // A refill the change keeps is not part of it.
            match changes.keep_refill {
                true => json!({ "remaining": c.remaining }),
                false => json!({ "remaining": c.remaining, "refill": refill }),
            }
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
