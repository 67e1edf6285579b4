use super::*;

/// Deletes the keys `condition` (on `$1`) selects, with what hangs off them (credits,
/// usage), and an audit event each; `false` if there were none.
pub(super) async fn delete_keys(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    condition: &str,
    value: String,
    audit: &AuditEvent,
    deleted: &mut Deleted,
) -> Result<bool, StoreError> {
    for table in ["key_credits", "key_usage"] {
        sqlx::query(&format!(
            "DELETE FROM {table} WHERE key_id IN (SELECT api_keys.id FROM api_keys WHERE {condition})"
        ))
        .bind(&value)
        .execute(&mut **tx)
        .await?;
    }
    let rows = sqlx::query(&format!("DELETE FROM api_keys WHERE {condition} RETURNING id"))
        .bind(&value)
        .fetch_all(&mut **tx)
        .await?;
    for row in &rows {
        let id = stored_key_id(row, "id")?.ok_or_else(|| corrupt("api_keys.id"))?;
        let event = if audit.action == AuditAction::ApiKeyDelete && audit.target == id.to_string() {
            audit.clone()
        } else {
            audit.for_object(AuditAction::ApiKeyDelete, id.to_string())?
        };
        insert_audit(&event).execute(&mut **tx).await?;
        deleted.keys.push(id);
    }
    Ok(!rows.is_empty())
}

#[async_trait::async_trait]
impl DeleteAdmin for SqlStore {
    #[tracing::instrument(skip_all, err)]
    async fn delete(&self, target: &Deletion, audit: &AuditEvent) -> Result<Deleted, StoreError> {
        let mut deleted = Deleted::default();
        let mut tx = self.begin_unbounded().await?;
        let found = match target {
            Deletion::Key(id) => delete_key(&mut tx, *id, audit, &mut deleted).await?,
            Deletion::Application { id, cascade } => {
                delete_application(&mut tx, id, *cascade, audit, &mut deleted).await?
            }
            Deletion::Account(account) => {
                delete_account(&mut tx, account.as_str(), audit, &mut deleted).await?;
                true
            }
        };
        if !found {
            // Nothing to delete, or refused (`blocked_by`): nothing changes.
            tx.rollback().await?;
            return Ok(Deleted { blocked_by: deleted.blocked_by, ..Deleted::default() });
        }
        tx.commit().await?;
        Ok(deleted)
    }
}

/// A key and what hangs off it; `false` if there is no such key.
async fn delete_key(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    id: KeyId,
    audit: &AuditEvent,
    deleted: &mut Deleted,
) -> Result<bool, StoreError> {
    let now = audit.occurred_at;
    if !delete_keys(tx, "api_keys.id = $1", id.to_string(), audit, deleted).await? {
        return Ok(false);
    }
    // A key overlapping this one (rolled to it) spent its balance, which is gone:
    // its overlap ends now rather than running unmetered.
    deleted.changed_keys = retire_predecessors(tx, id, now).await?;
    Ok(true)
}

/// An application, its runtime keys, and the API keys restricted to it; `false` if there
/// is no such application, or if keys are restricted to it and `cascade` is not set (they
/// are put in `deleted.blocked_by`).
async fn delete_application(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    id: &ApplicationId,
    cascade: bool,
    audit: &AuditEvent,
    deleted: &mut Deleted,
) -> Result<bool, StoreError> {
    let now = audit.occurred_at;
    // The application's row first, as a rotation takes it: rotations and this
    // deletion of one application serialize (and SQLite's write lock is taken).
    sqlx::query("UPDATE applications SET runtime_rotations = runtime_rotations WHERE id = $1")
        .bind(id.as_str())
        .execute(&mut **tx)
        .await?;
    let Some(app) = sqlx::query("SELECT account_id FROM applications WHERE id = $1")
        .bind(id.as_str())
        .fetch_optional(&mut **tx)
        .await?
    else {
        return Ok(false);
    };
    let account: String = app.try_get("account_id")?;
    // The application's runtime keys go with it.
    delete_keys(tx, "runtime_of = $1", id.as_str().to_owned(), audit, deleted).await?;
    let rows = sqlx::query("SELECT id, application_ids FROM api_keys WHERE account_id = $1 AND kind = 'api_key'")
        .bind(&account)
        .fetch_all(&mut **tx)
        .await?;
    let mut naming = Vec::new();
    for row in rows {
        let apps: Vec<String> =
            serde_json::from_str(row.try_get("application_ids")?).map_err(|_| corrupt("api_keys.application_ids"))?;
        if apps.iter().any(|a| a == id.as_str()) {
            let key = stored_key_id(&row, "id")?.ok_or_else(|| corrupt("api_keys.id"))?;
            naming.push((key, apps));
        }
    }
    if !cascade && !naming.is_empty() {
        deleted.blocked_by = naming.into_iter().map(|(k, _)| k).collect();
        return Ok(false);
    }
    for (key, apps) in naming {
        let left: Vec<&String> = apps.iter().filter(|a| *a != id.as_str()).collect();
        if left.is_empty() {
            delete_keys(tx, "api_keys.id = $1", key.to_string(), audit, deleted).await?;
            deleted.changed_keys.extend(retire_predecessors(tx, key, now).await?);
        } else {
            sqlx::query(
                "UPDATE api_keys SET application_ids = $2, updated_at = $3, version = version + 1 \
                 WHERE id = $1",
            )
            .bind(key.to_string())
            .bind(serde_json::to_string(&left).expect("strings serialize"))
            .bind(now.as_millis())
            .execute(&mut **tx)
            .await?;
            let mut event = audit.for_object(AuditAction::ApiKeyUpdate, key.to_string())?;
            event.detail = serde_json::json!({ "application_ids": left, "cause": audit.action.as_str() });
            insert_audit(&event).execute(&mut **tx).await?;
            deleted.changed_keys.push(key);
        }
    }
    sqlx::query("DELETE FROM applications WHERE id = $1").bind(id.as_str()).execute(&mut **tx).await?;
    deleted.applications.push(id.clone());
    insert_audit(audit).execute(&mut **tx).await?;
    Ok(true)
}

/// Every key, owner, session and application of an account.
async fn delete_account(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    account: &str,
    audit: &AuditEvent,
    deleted: &mut Deleted,
) -> Result<(), StoreError> {
    delete_keys(tx, "api_keys.account_id = $1", account.to_owned(), audit, deleted).await?;
    let owners = sqlx::query("DELETE FROM owners WHERE account_id = $1 RETURNING owner_id")
        .bind(account)
        .fetch_all(&mut **tx)
        .await?;
    for row in owners {
        let owner = OwnerId::parse(row.try_get("owner_id")?).map_err(|_| corrupt("owners.owner_id"))?;
        sqlx::query("DELETE FROM key_credits WHERE key_id = $1")
            .bind(CreditHolder::Owner(AccountId::parse(account).expect("checked"), owner.clone()).stored())
            .execute(&mut **tx)
            .await?;
        insert_audit(&audit.for_object(AuditAction::OwnerDelete, owner.as_str())?).execute(&mut **tx).await?;
        deleted.owners.push(owner);
    }
    let sessions = sqlx::query("DELETE FROM sessions WHERE account_id = $1 RETURNING id")
        .bind(account)
        .fetch_all(&mut **tx)
        .await?;
    for row in sessions {
        let id = SessionId::parse(row.try_get("id")?).map_err(|_| corrupt("sessions.id"))?;
        insert_audit(&audit.for_object(AuditAction::SessionDelete, id.to_string())?).execute(&mut **tx).await?;
        deleted.sessions.push(id);
    }
    let applications = sqlx::query("DELETE FROM applications WHERE account_id = $1 RETURNING id")
        .bind(account)
        .fetch_all(&mut **tx)
        .await?;
    for row in applications {
        let id = ApplicationId::parse(row.try_get("id")?).map_err(|_| corrupt("applications.id"))?;
        insert_audit(&audit.for_object(AuditAction::ApplicationDelete, id.as_str())?).execute(&mut **tx).await?;
        deleted.applications.push(id);
    }
    insert_audit(audit).execute(&mut **tx).await?;
    Ok(())
}
