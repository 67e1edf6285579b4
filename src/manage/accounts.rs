//! What is kept per account as a whole: its audit trail, and erasing it.

use super::confinement::within;
use super::{Caller, ManageError, Manager};
use crate::audit::{AuditAction, AuditEvent, AuditQuery};
use crate::domain::{AccountId, AdminGrant};
use crate::store::{Deleted, Deletion, Page, PageRequest};
use serde_json::json;

impl Manager {
    pub async fn list_audit_events(
        &self,
        grant: &AdminGrant,
        account: &AccountId,
        query: &AuditQuery,
        page: &PageRequest,
    ) -> Result<Page<AuditEvent>, ManageError> {
        within(grant, account)?;
        Ok(self.store.list_audit_events(account, query, page).await?)
    }

    /// Erases an account: every key, application, session and owner, in one transaction,
    /// with an audit event each. Its audit events stay. Deleting it again deletes nothing.
    pub async fn delete_account(&self, account: &AccountId, caller: &Caller) -> Result<Deleted, ManageError> {
        within(&caller.grant, account)?;
        let audit = self.event(account, AuditAction::AccountDelete, &caller.actor, account.as_str(), json!({}))?;
        Ok(self.store.delete(&Deletion::Account(account.clone()), &audit).await?)
    }
}
