//! Confinement: a token confined to one account reaches that account's records only. The
//! one place it is checked; every [`Manager`] method that reads or changes an account's
//! records calls one of these before it answers, or is reached through an [`AccountView`].

use super::{ManageError, Manager};
use crate::domain::{AccountId, AdminGrant, AdminRole, KeyId};
use crate::store::KeyKind;

/// Another account's record, to a token confined elsewhere, is as if it did not exist:
/// `not_found`, saying nothing of whose it is.
pub(super) fn visible(
    grant: &AdminGrant,
    owner: &AccountId,
    what: &str,
    id: impl std::fmt::Display,
) -> Result<(), ManageError> {
    match grant.covers(owner) {
        true => Ok(()),
        false => Err(ManageError::NotFound(format!("{what} {id} was not found"))),
    }
}

/// A token confined to an account may act on that account only.
pub(super) fn within(grant: &AdminGrant, account: &AccountId) -> Result<(), ManageError> {
    match grant.covers(account) {
        true => Ok(()),
        false => Err(ManageError::OutOfScope(format!(
            "this admin token acts on account {} only",
            grant.account.as_ref().map_or("", |a| a.as_str())
        ))),
    }
}

/// One account's records, to a caller whose grant covers the account: made only by
/// [`Manager::account`], which checks it. The listings hang off it, so none can be read
/// without the check.
pub struct AccountView<'a> {
    pub(super) manager: &'a Manager,
    pub(super) account: &'a AccountId,
}

impl Manager {
    /// `account`'s records, to `grant`, if it covers the account (a token confined to an
    /// account acts on that account only).
    pub fn account<'a>(&'a self, grant: &AdminGrant, account: &'a AccountId) -> Result<AccountView<'a>, ManageError> {
        within(grant, account)?;
        Ok(AccountView { manager: self, account })
    }

    /// May `grant` change key `id`? An admin any; another role only its account's (another
    /// account's key is as if it did not exist), and only API keys: an application's
    /// runtime key is rotated by an admin (`RotateApplicationKey`), so a key writer cannot
    /// take an application down by revoking it.
    pub(super) async fn key_within(&self, grant: &AdminGrant, id: KeyId) -> Result<(), ManageError> {
        if grant.role == AdminRole::Admin {
            return Ok(());
        }
        let key = self.stored_key(id).await?;
        visible(grant, &key.account_id, "API key", id)?;
        if key.kind == KeyKind::Runtime {
            return Err(ManageError::OutOfScope(format!(
                "{id} is an application's runtime key: only an admin token changes it (RotateApplicationKey)"
            )));
        }
        Ok(())
    }
}
