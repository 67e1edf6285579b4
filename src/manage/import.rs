//! Importing keys made by another system, by their hashes: each key checked on its own,
//! the valid ones stored in one transaction, idempotent by import id.

use super::confinement::within;
use super::{Caller, ManageError, Manager};
use crate::audit::AuditAction;
use crate::domain::imported::ForeignHash;
use crate::domain::{
    AccountId, ApplicationId, InvalidField, KeyId, Metadata, Name, NewKeyRecord, OwnerId, Scopes, Timestamp,
};
use crate::store::{Imported, ImportedKey, KeyKind, KeyRecord};
use serde_json::json;

/// The most keys one `ImportApiKeys` call takes.
pub const MAX_IMPORT_BATCH: usize = 1000;

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

/// One key of a batch as it came: the account it names, as sent (a confined token's batch
/// is refused whole if one names another), and the key, checked field by field (a bad one
/// is reported on its own line).
#[derive(Debug)]
pub struct ImportEntry<'a> {
    pub account_id: &'a str,
    pub key: Result<KeyToImport, InvalidField>,
}

/// What importing one key came to; `Invalid` keys were not sent to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportResult {
    Imported(Imported),
    Invalid(String),
    /// The same credential form, in the same account, as the key at this 1-based position
    /// of the batch: not imported (the first one is), and never answered with its key id.
    DuplicateInBatch(usize),
}

/// What an import id may be: the message says exactly what is allowed.
fn check_import_id(import_id: &str) -> Result<(), InvalidField> {
    let allowed = |b: u8| b.is_ascii_graphic();
    if (1..=64).contains(&import_id.len()) && import_id.bytes().all(allowed) {
        return Ok(());
    }
    let found = match import_id.chars().find(|c| !c.is_ascii_graphic()) {
        Some(' ') => " (it has a space)".to_owned(),
        Some(c) => format!(" (it has {c:?})"),
        None if import_id.is_empty() => " (it is empty)".to_owned(),
        None => format!(" (it has {})", import_id.len()),
    };
    Err(InvalidField::new(
        "import_id",
        format!(
            "must be 1 to 64 characters, each a printable ASCII letter, digit or punctuation mark              (no spaces or other whitespace), e.g. \"billing-2026-12\"{found}"
        ),
    ))
}

impl Manager {
    /// Imports keys made by another system, by their hashes; each is checked on its own,
    /// and the valid ones are stored in one transaction. Idempotent by `import_id`.
    pub async fn import_api_keys(
        &self,
        import_id: &str,
        keys: Vec<ImportEntry<'_>>,
        caller: &Caller,
    ) -> Result<Vec<ImportResult>, ManageError> {
        // A confined token imports into its account only: the whole batch, or nothing.
        if let Some(own) = &caller.grant.account {
            if let Some(other) = keys.iter().find(|k| k.account_id != own.as_str()) {
                within(&caller.grant, &AccountId::parse(other.account_id)?)?;
            }
        }
        check_import_id(import_id)?;
        if keys.is_empty() || keys.len() > MAX_IMPORT_BATCH {
            return Err(InvalidField::new("keys", format!("must hold 1 to {MAX_IMPORT_BATCH} keys")).into());
        }
        let now = self.clock.now();
        let mut results: Vec<Option<ImportResult>> = Vec::with_capacity(keys.len());
        let mut valid = Vec::new();
        let mut first_account = None;
        // Each credential form of an account, by the 1-based position of its first key.
        let mut forms: std::collections::HashMap<(AccountId, String), usize> = std::collections::HashMap::new();
        for entry in keys {
            let checked = match entry.key {
                Ok(key) => self.importable(key, now).await,
                Err(invalid) => Err(ManageError::Invalid(invalid)),
            };
            match checked {
                Ok(imported) => {
                    let form = (imported.record.account_id.clone(), imported.import_ref.clone());
                    if let Some(first) = forms.get(&form) {
                        results.push(Some(ImportResult::DuplicateInBatch(*first)));
                        continue;
                    }
                    forms.insert(form, results.len() + 1);
                    first_account.get_or_insert_with(|| imported.record.account_id.clone());
                    valid.push((results.len(), imported));
                    results.push(None);
                }
                Err(ManageError::Store(e)) => return Err(e.into()),
                Err(e) => results.push(Some(ImportResult::Invalid(e.to_string()))),
            }
        }
        if let Some(account) = first_account {
            let audit = self.event(
                &account,
                AuditAction::ApiKeyImport,
                &caller.actor,
                import_id,
                json!({ "import_id": import_id }),
            )?;
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
}
