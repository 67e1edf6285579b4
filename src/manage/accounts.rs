//! What is kept per account as a whole: its audit trail, and erasing it.

use super::confinement::within;
use super::{AccountView, Caller, ManageError, Manager};
use crate::audit::{AuditAction, AuditEvent, AuditQuery};
use crate::domain::AccountId;
use crate::store::{Deleted, Deletion, Page, PageRequest};
use serde_json::json;

impl AccountView<'_> {
    pub async fn list_audit_events(
        &self,
        query: &AuditQuery,
        page: &PageRequest,
    ) -> Result<Page<AuditEvent>, ManageError> {
        Ok(self.manager.store.list_audit_events(self.account, query, page).await?)
    }
}

impl Manager {
    /// Erases an account: every key, application, session and owner, in one transaction,
    /// with an audit event each. Its audit events stay. Deleting it again deletes nothing.
    pub async fn delete_account(&self, account: &AccountId, caller: &Caller) -> Result<Deleted, ManageError> {
        within(&caller.grant, account)?;
        let audit = self.event(account, AuditAction::AccountDelete, &caller.actor, account.as_str(), json!({}))?;
        Ok(self.store.delete(&Deletion::Account(account.clone()), &audit).await?)
    }
}
