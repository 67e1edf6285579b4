use super::*;

/// An imported key, unless a unique index (its id, or its lookup or import_ref within its
/// account) already holds it: the conflict is found by the indexes themselves, whatever the
/// planner thinks of the table's size. Another account's key never conflicts.
pub(super) const INSERT_IMPORTED_KEY: &str = "INSERT INTO api_keys (id, account_id, kind, runtime_of, name, scopes, \
     application_ids, secret_hash, created_at, updated_at, expires_at, revoked_at, retire_at, revoked_reason, \
     version, disabled, terms, owner_id, rolled_from, rolled_to, lookup, import_ref, import_id) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23) \
     ON CONFLICT DO NOTHING RETURNING id";

#[async_trait::async_trait]
impl ImportAdmin for SqlStore {
    #[tracing::instrument(skip_all, fields(keys = keys.len()), err)]
    async fn import_keys(
        &self,
        import_id: &str,
        keys: &[ImportedKey],
        audit: &AuditEvent,
    ) -> Result<Vec<Imported>, StoreError> {
        let mut tx = self.begin_unbounded().await?;
        let mut outcomes = Vec::with_capacity(keys.len());
        // Already there (a re-run) or held by another key: told apart below, once.
        let mut refused = Vec::new();
        for key in keys {
            let record = &key.record;
            let inserted = bind_key(sqlx::query(INSERT_IMPORTED_KEY), record)
                .bind(&key.import_ref)
                .bind(import_id)
                .fetch_optional(&mut *tx)
                .await?;
            if inserted.is_none() {
                refused.push((outcomes.len(), key.import_ref.as_str(), record.account_id.as_str()));
                outcomes.push(Imported::Conflict);
                continue;
            }
            let mut event = audit.for_object(AuditAction::ApiKeyImport, record.id.to_string())?;
            event.account_id = record.account_id.clone();
            insert_audit(&event).execute(&mut *tx).await?;
            outcomes.push(Imported::Created(record.id));
        }
        // A key this import brought before, into the same account, is `AlreadyImported`;
        // anything else is a conflict within the account (keys are unique per account:
        // another account's never conflicts, nor is its id told).
        for chunk in refused.chunks(500) {
            let placeholders: Vec<String> = (2..chunk.len() + 2).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT id, import_ref, account_id FROM api_keys WHERE import_id = $1 AND import_ref IN ({})",
                placeholders.join(", ")
            );
            let mut query = sqlx::query(&sql).bind(import_id);
            for (_, import_ref, _) in chunk {
                query = query.bind(*import_ref);
            }
            for row in query.fetch_all(&mut *tx).await? {
                let id = stored_key_id(&row, "id")?.ok_or_else(|| corrupt("api_keys.id"))?;
                let (import_ref, account): (&str, &str) = (row.try_get("import_ref")?, row.try_get("account_id")?);
                for (index, _, _) in chunk.iter().filter(|(_, r, a)| *r == import_ref && *a == account) {
                    outcomes[*index] = Imported::AlreadyImported(id);
                }
            }
        }
        tx.commit().await?;
        Ok(outcomes)
    }
}
