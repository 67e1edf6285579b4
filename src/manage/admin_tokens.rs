//! Named admin tokens: made (shown once), looked up by the admin gate, listed, revoked.
//! Only the `admin` role reaches these, and it is never confined to an account.

use super::{Caller, ManageError, Manager};
use crate::domain::{
    admin_token_digest, new_admin_token, AccountId, AdminRole, AdminTokenName, AdminTokenRecord, InvalidField,
};
use std::time::Duration;

/// The longest an admin token may be made to live: ten years (and by default, forever).
pub const MAX_ADMIN_TOKEN_LIFETIME: Duration = Duration::from_secs(3650 * 86_400);

impl Manager {
    /// A new admin token, shown once. A name ever used before is refused.
    pub async fn create_admin_token(
        &self,
        name: AdminTokenName,
        role: AdminRole,
        account_id: Option<AccountId>,
        lifetime: Option<Duration>,
        caller: &Caller,
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
            created_by: caller.actor.credential.clone(),
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

    /// The admin token presented as `token`, if there is one (live or not): what the admin
    /// gate asks before any grant exists.
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
        caller: &Caller,
    ) -> Result<AdminTokenRecord, ManageError> {
        self.store
            .revoke_admin_token(name, self.clock.now(), &caller.actor.credential)
            .await?
            .ok_or_else(|| ManageError::NotFound(format!("admin token {} was not found", name.as_str())))
    }
}
