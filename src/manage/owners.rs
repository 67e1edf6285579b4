//! Owners: the limits and credits an owner's keys share.

use super::confinement::within;
use super::keys::terms_detail;
use super::{Caller, ManageError, Manager};
use crate::audit::AuditAction;
use crate::domain::{AccountId, AdminGrant, KeyTerms, OwnerId};
use crate::store::{KeyChanges, Owner, OwnerChanges};

impl Manager {
    /// Sets an owner's shared limits and credits (creating the owner).
    pub async fn update_owner(
        &self,
        account: &AccountId,
        id: &OwnerId,
        changes: OwnerChanges,
        caller: &Caller,
    ) -> Result<Owner, ManageError> {
        within(&caller.grant, account)?;
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
        let audit = self.event(account, AuditAction::OwnerUpdate, &caller.actor, id.as_str(), detail.into())?;
        Ok(self.store.set_owner(account, id, &changes, now, &audit).await?.0)
    }

    pub async fn owner(&self, grant: &AdminGrant, account: &AccountId, id: &OwnerId) -> Result<Owner, ManageError> {
        within(grant, account)?;
        self.store
            .owner(account, id)
            .await?
            .ok_or_else(|| ManageError::NotFound(format!("owner {id} was not found for account {account}")))
    }
}
