use super::*;

/// An owner as the transaction `tx` sees it.
pub(super) async fn owner_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    account: &AccountId,
    id: &OwnerId,
) -> Result<Option<Owner>, StoreError> {
    sqlx::query(&format!("{OWNER_SELECT} WHERE o.account_id = $1 AND o.owner_id = $2"))
        .bind(account.as_str())
        .bind(id.as_str())
        .fetch_optional(&mut **tx)
        .await?
        .map(|row| owner_from_row(&row, "owner_id", "terms", "updated_at", "credits"))
        .transpose()
}

#[async_trait::async_trait]
impl OwnerAdmin for SqlStore {
    #[tracing::instrument(skip_all, fields(account_id = %account, owner_id = %id), err)]
    async fn set_owner(
        &self,
        account: &AccountId,
        id: &OwnerId,
        changes: &OwnerChanges,
        now: Timestamp,
        audit: &AuditEvent,
    ) -> Result<(Owner, Vec<KeyId>), StoreError> {
        let mut tx = self.begin_change().await?;
        // Creates the row, or takes its lock, before its terms are read and merged.
        sqlx::query(
            "INSERT INTO owners (account_id, owner_id, terms, created_at, updated_at) VALUES ($1, $2, NULL, $3, $3) \
             ON CONFLICT (account_id, owner_id) DO UPDATE SET updated_at = excluded.updated_at",
        )
        .bind(account.as_str())
        .bind(id.as_str())
        .bind(now.as_millis())
        .execute(&mut *tx)
        .await?;
        let current = owner_in(&mut tx, account, id).await?.ok_or_else(|| corrupt("an owner just written is gone"))?;
        let terms = KeyTerms {
            limits: changes.limits.clone().unwrap_or(current.limits),
            refill: match changes.credits {
                Some(credits) => credits.and_then(|c| c.refill),
                None => current.refill,
            },
            ..KeyTerms::default()
        };
        sqlx::query("UPDATE owners SET terms = $3 WHERE account_id = $1 AND owner_id = $2")
            .bind(account.as_str())
            .bind(id.as_str())
            .bind(StoredTerms::write(&terms))
            .execute(&mut *tx)
            .await?;
        if let Some(credits) = changes.credits {
            let holder = CreditHolder::Owner(account.clone(), id.clone());
            set_credits(&mut tx, &holder, credits.map(|c| c.balance(now)), terms.refill.as_ref()).await?;
        }
        // Each key reads its owner's terms with itself: each is changed (and, on Postgres,
        // every replica is told) like a key update.
        let rows = sqlx::query(
            "UPDATE api_keys SET version = version + 1 WHERE account_id = $1 AND owner_id = $2 RETURNING id",
        )
        .bind(account.as_str())
        .bind(id.as_str())
        .fetch_all(&mut *tx)
        .await?;
        let keys = rows
            .iter()
            .map(|row| stored_key_id(row, "id")?.ok_or_else(|| corrupt("api_keys.id")))
            .collect::<Result<_, _>>()?;
        let owner = owner_in(&mut tx, account, id).await?.ok_or_else(|| corrupt("an owner just written is gone"))?;
        insert_audit(audit).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok((owner, keys))
    }

    #[tracing::instrument(skip_all, fields(account_id = %account, owner_id = %id), err)]
    async fn owner(&self, account: &AccountId, id: &OwnerId) -> Result<Option<Owner>, StoreError> {
        sqlx::query(&format!("{OWNER_SELECT} WHERE o.account_id = $1 AND o.owner_id = $2"))
            .bind(account.as_str())
            .bind(id.as_str())
            .fetch_optional(&self.admin_pool)
            .await?
            .map(|row| owner_from_row(&row, "owner_id", "terms", "updated_at", "credits"))
            .transpose()
    }
}
