//! Dashboard sessions: start, read, list and revoke.

use super::confinement::{visible, within};
use super::{AccountView, Caller, ManageError, Manager};
use crate::audit::AuditAction;
use crate::domain::{AccountId, AdminGrant, CredentialKind, GeneratedKey, InvalidField, SessionId, UserId};
use crate::store::{Page, PageRequest, SessionRecord};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

impl Manager {
    /// Starts a dashboard session; the token is the only copy of its secret anywhere.
    pub async fn create_session(
        &self,
        account_id: AccountId,
        user_id: UserId,
        ttl: Option<Duration>,
        caller: &Caller,
    ) -> Result<(SessionRecord, GeneratedKey), ManageError> {
        within(&caller.grant, &account_id)?;
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
            &caller.actor,
            &session.id.to_string(),
            json!({ "user_id": session.user_id.as_str(), "expires_at": session.expires_at.to_string() }),
        )?;
        self.store.create_session(&session, &audit).await?;
        Ok((session, token))
    }

    pub async fn session(&self, grant: &AdminGrant, id: SessionId) -> Result<Arc<SessionRecord>, ManageError> {
        let session = self.store.session(id).await?.ok_or_else(|| session_not_found(id))?;
        visible(grant, &session.account_id, "session", id)?;
        Ok(session)
    }

    pub async fn revoke_session(&self, id: SessionId, caller: &Caller) -> Result<SessionRecord, ManageError> {
        let session = self.session(&caller.grant, id).await?;
        let audit = self.event(
            &session.account_id,
            AuditAction::SessionRevoke,
            &caller.actor,
            &id.to_string(),
            json!({ "user_id": session.user_id.as_str() }),
        )?;
        self.store.revoke_session(id, self.clock.now(), &audit).await?.ok_or_else(|| session_not_found(id))
    }
}

impl AccountView<'_> {
    pub async fn list_sessions(
        &self,
        user: Option<&UserId>,
        page: &PageRequest,
    ) -> Result<Page<SessionRecord>, ManageError> {
        Ok(self.manager.store.list_sessions(self.account, user, page).await?)
    }
}

fn session_not_found(id: SessionId) -> ManageError {
    ManageError::NotFound(format!("session {id} was not found"))
}
