//! Applications: create, read, list, rename, delete, and rotate an application's runtime key.

use super::confinement::{visible, within};
use super::{AccountView, Caller, ManageError, Manager};
use crate::audit::AuditAction;
use crate::domain::{
    AccountId, AdminGrant, ApplicationId, CredentialKind, GeneratedKey, InvalidField, KeyId, Name, NewKeyRecord,
    Scopes, Timestamp,
};
use crate::store::{Application, Deleted, Deletion, KeyKind, KeyRecord, Page, PageRequest};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// The longest a rotated runtime key may keep working: a week, whatever is asked.
pub const MAX_RUNTIME_KEY_GRACE: Duration = Duration::from_secs(7 * 86_400);

/// A rotation's result: the new key (and its credential, shown once) and the one it replaces.
pub struct Rotation {
    pub key: KeyRecord,
    pub credential: GeneratedKey,
    pub previous: Option<(KeyId, Timestamp)>,
}

impl Manager {
    pub async fn create_application(
        &self,
        account_id: AccountId,
        name: Name,
        caller: &Caller,
    ) -> Result<Application, ManageError> {
        within(&caller.grant, &account_id)?;
        let app = Application { id: ApplicationId::generate()?, account_id, name, created_at: self.clock.now() };
        let audit = self.event(
            &app.account_id,
            AuditAction::ApplicationCreate,
            &caller.actor,
            app.id.as_str(),
            json!({ "name": app.name.as_str() }),
        )?;
        self.store.create_application(&app, &audit).await?;
        Ok(app)
    }

    pub async fn application(&self, grant: &AdminGrant, id: &ApplicationId) -> Result<Arc<Application>, ManageError> {
        let app = self.store.application(id).await?.ok_or_else(|| application_not_found(id))?;
        visible(grant, &app.account_id, "application", id)?;
        Ok(app)
    }

    pub async fn rename_application(
        &self,
        id: &ApplicationId,
        name: Name,
        caller: &Caller,
    ) -> Result<Application, ManageError> {
        let app = self.application(&caller.grant, id).await?;
        let audit = self.event(
            &app.account_id,
            AuditAction::ApplicationUpdate,
            &caller.actor,
            id.as_str(),
            json!({ "name": name.as_str() }),
        )?;
        self.store.rename_application(id, &name, &audit).await?.ok_or_else(|| application_not_found(id))
    }

    /// Deletes an application; refused while keys are restricted to it unless `cascade`.
    pub async fn delete_application(
        &self,
        id: &ApplicationId,
        cascade: bool,
        caller: &Caller,
    ) -> Result<(Deleted, AccountId), ManageError> {
        let app = self.application(&caller.grant, id).await?;
        let audit = self.event(
            &app.account_id,
            AuditAction::ApplicationDelete,
            &caller.actor,
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
            return Err(application_not_found(id));
        }
        Ok((deleted, app.account_id.clone()))
    }

    /// Makes a new runtime key for an application; the current one keeps working for the
    /// grace period (the server's default unless given).
    pub async fn rotate_application_key(
        &self,
        application_id: &ApplicationId,
        grace: Option<Duration>,
        caller: &Caller,
    ) -> Result<Rotation, ManageError> {
        let grace = grace.unwrap_or(self.settings.default_runtime_grace);
        if grace > self.settings.max_runtime_grace {
            return Err(InvalidField::new(
                "grace_period_seconds",
                format!("must be at most {}", self.settings.max_runtime_grace.as_secs()),
            )
            .into());
        }
        let application = self.application(&caller.grant, application_id).await?;
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
            &caller.actor,
            application.id.as_str(),
            json!({ "key_id": key.id.to_string(), "grace_period_seconds": grace.as_secs() }),
        )?;
        let previous = self.store.rotate_runtime_key(&key, retire_at, &audit).await?;
        // As stored: with the terms it took over from the key it replaces.
        let key = self.store.key(key.id).await?.map_or(key, |stored| (*stored).clone());
        Ok(Rotation { key, credential, previous: previous.first().map(|id| (*id, retire_at)) })
    }
}

impl AccountView<'_> {
    pub async fn list_applications(&self, page: &PageRequest) -> Result<Page<Application>, ManageError> {
        Ok(self.manager.store.list_applications(self.account, page).await?)
    }
}

fn application_not_found(id: &ApplicationId) -> ManageError {
    ManageError::NotFound(format!("application {id} was not found"))
}
