use super::*;

pub(super) const INSERT_KEY: &str =
    "INSERT INTO api_keys (id, account_id, kind, runtime_of, name, scopes, application_ids, \
     secret_hash, created_at, updated_at, expires_at, revoked_at, retire_at, revoked_reason, version, disabled, terms, \
     owner_id, rolled_from, rolled_to, lookup) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21)";

pub(super) fn insert_key(key: &KeyRecord) -> sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments<'_>> {
    bind_key(sqlx::query(INSERT_KEY), key)
}

/// Binds `$1`..`$21` of [`INSERT_KEY`] (and of [`INSERT_IMPORTED_KEY`]).
pub(super) fn bind_key<'q>(
    query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    key: &'q KeyRecord,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    let runtime_of = match key.kind {
        KeyKind::Runtime => key.application_ids.first().map(|a| a.as_str()),
        KeyKind::ApiKey => None,
    };
    query
        .bind(key.id.to_string())
        .bind(key.account_id.as_str())
        .bind(key.kind.as_str())
        .bind(runtime_of)
        .bind(key.name.as_str())
        .bind(scopes_json(&key.scopes))
        .bind(application_ids_json(&key.application_ids))
        .bind(key.secret_hash.expose_phc())
        .bind(key.created_at.as_millis())
        .bind(key.updated_at.as_millis())
        .bind(key.expires_at.map(Timestamp::as_millis))
        .bind(key.revoked_at.map(Timestamp::as_millis))
        .bind(key.retire_at.map(Timestamp::as_millis))
        .bind(key.revoked_reason.as_deref())
        .bind(key.version)
        .bind(i64::from(key.disabled))
        .bind(StoredTerms::write(&key.terms))
        .bind(key.owner_id.as_ref().map(|o| o.as_str().to_owned()))
        .bind(key.rolled_from.map(|id| id.to_string()))
        .bind(key.rolled_to.map(|id| id.to_string()))
        .bind(key.lookup.as_deref())
}

/// A key as the transaction `tx` sees it.
pub(super) async fn key_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    id: KeyId,
) -> Result<Option<KeyRecord>, StoreError> {
    sqlx::query(&format!("{KEY_SELECT} WHERE api_keys.id = $1"))
        .bind(id.to_string())
        .fetch_optional(&mut **tx)
        .await?
        .map(|row| key_from_row(&row))
        .transpose()
}

/// A key rolled into `key` and still in its overlap stands in for it, so it follows every
/// change of it (enabled or not, scopes, applications, expiry, owner, limits, allowlist,
/// metadata, refill) in the transaction that made it: disabling or narrowing the successor
/// reaches the old credential at once. Its version moves, so every replica's cache hears
/// of it as of the successor (and the admin call's barrier covers it).
pub(super) async fn follow_successor(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    key: &KeyRecord,
    now: Timestamp,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE api_keys SET scopes = $2, application_ids = $3, expires_at = $4, disabled = $5, owner_id = $6, \
         terms = $7, updated_at = $8, version = version + 1 \
         WHERE rolled_to = $1 AND revoked_at IS NULL AND retire_at > $8",
    )
    .bind(key.id.to_string())
    .bind(scopes_json(&key.scopes))
    .bind(application_ids_json(&key.application_ids))
    .bind(key.expires_at.map(Timestamp::as_millis))
    .bind(i64::from(key.disabled))
    .bind(key.owner_id.as_ref().map(|o| o.as_str().to_owned()))
    .bind(StoredTerms::write(&key.terms))
    .bind(now.as_millis())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Ends now the overlap of every key rolled to `id` that still works; returns them.
pub(super) async fn retire_predecessors(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    id: KeyId,
    now: Timestamp,
) -> Result<Vec<KeyId>, StoreError> {
    let rows = sqlx::query(
        "UPDATE api_keys SET retire_at = $2, updated_at = $2, version = version + 1 \
         WHERE rolled_to = $1 AND revoked_at IS NULL AND retire_at > $2 RETURNING id",
    )
    .bind(id.to_string())
    .bind(now.as_millis())
    .fetch_all(&mut **tx)
    .await?;
    rows.iter().map(|row| stored_key_id(row, "id")?.ok_or_else(|| corrupt("api_keys.id"))).collect()
}

#[async_trait::async_trait]
impl KeyAdmin for SqlStore {
    #[tracing::instrument(skip_all, fields(key_id = %key.id), err)]
    async fn create_key(&self, key: &KeyRecord, audit: &AuditEvent) -> Result<(), StoreError> {
        let mut tx = self.begin_change().await?;
        insert_key(key).execute(&mut *tx).await?;
        if key.credits.is_some() {
            set_credits(&mut tx, &CreditHolder::Key(key.id), key.credits, key.terms.refill.as_ref()).await?;
        }
        insert_audit(audit).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(account_id = %account), err)]
    async fn list_keys(
        &self,
        account: &AccountId,
        filter: &KeyFilter,
        page: &PageRequest,
    ) -> Result<Page<KeyRecord>, StoreError> {
        let after = page.after.as_deref().unwrap_or("");
        // A search string is a scan of the account's keys: bounded, by the index.
        let ceiling = match filter.search {
            None => None,
            Some(_) => {
                sqlx::query("SELECT id FROM api_keys WHERE account_id = $1 AND id > $2 ORDER BY id LIMIT 1 OFFSET $3")
                    .bind(account.as_str())
                    .bind(after)
                    .bind(SEARCH_SCAN_ROWS - 1)
                    .fetch_optional(&self.admin_pool)
                    .await?
                    .map(|row| row.try_get::<String, _>("id"))
                    .transpose()?
            }
        };
        // The owner's condition is written only when there is one, so the planner can read
        // the owner's keys from their index (an `OR` with the empty string would walk the
        // account's keys for matches); `$5 = ''` keeps the parameter bound otherwise.
        let owner = if filter.owner_id.is_some() { "api_keys.owner_id = $5" } else { "$5 = ''" };
        let rows = sqlx::query(&format!(
            "{KEY_SELECT} WHERE api_keys.account_id = $1 AND kind = 'api_key' AND api_keys.id > $2 \
             AND ($3 = '' OR lower(name) LIKE $3 ESCAPE '\\' OR lower(api_keys.id) LIKE $3 ESCAPE '\\') \
             AND {owner} AND ($6 = '' OR api_keys.id <= $6) \
             ORDER BY api_keys.id LIMIT $4"
        ))
        .bind(account.as_str())
        .bind(after)
        .bind(filter.search.as_deref().map(like_pattern).unwrap_or_default())
        .bind(i64::from(page.limit) + 1)
        .bind(filter.owner_id.as_ref().map(|o| o.as_str().to_owned()).unwrap_or_default())
        .bind(ceiling.clone().unwrap_or_default())
        .fetch_all(&self.admin_pool)
        .await?;
        let items = rows.iter().map(key_from_row).collect::<Result<Vec<_>, _>>()?;
        Ok(scanned_to(into_page(items, page.limit, |k| k.id.to_string()), ceiling))
    }

    #[tracing::instrument(skip_all, fields(key_id = %id), err)]
    async fn update_key(
        &self,
        id: KeyId,
        changes: &KeyChanges,
        now: Timestamp,
        audit: &AuditEvent,
    ) -> Result<UpdateOutcome, StoreError> {
        let mut tx = self.begin_change().await?;
        let updated = sqlx::query(
            "UPDATE api_keys SET \
               name = COALESCE($2, name), \
               scopes = COALESCE($3, scopes), \
               application_ids = COALESCE($4, application_ids), \
               expires_at = CASE WHEN $5 = 1 THEN $6 ELSE expires_at END, \
               updated_at = $7, \
               disabled = COALESCE($8, disabled), \
               owner_id = CASE WHEN $9 = 1 THEN $10 ELSE owner_id END, \
               version = version + 1 \
             WHERE id = $1 AND revoked_at IS NULL \
             RETURNING id",
        )
        .bind(id.to_string())
        .bind(changes.name.as_ref().map(|n| n.as_str().to_owned()))
        .bind(changes.scopes.as_ref().map(scopes_json))
        .bind(changes.application_ids.as_deref().map(application_ids_json))
        .bind(i64::from(changes.expires_at.is_some()))
        .bind(changes.expires_at.flatten().map(Timestamp::as_millis))
        .bind(now.as_millis())
        .bind(changes.disabled.map(i64::from))
        .bind(i64::from(changes.owner_id.is_some()))
        .bind(changes.owner_id.clone().flatten().map(|o| o.as_str().to_owned()))
        .fetch_optional(&mut *tx)
        .await?;
        if updated.is_some() {
            let mut key = key_in(&mut tx, id).await?.ok_or_else(|| corrupt("an updated key is gone"))?;
            if changes.touches_terms() {
                // The UPDATE above holds the row (Postgres) or the database (SQLite) until
                // commit: the terms merged here are the ones no other update can change.
                let after = changes.terms_after(&key.terms);
                sqlx::query("UPDATE api_keys SET terms = $2 WHERE id = $1")
                    .bind(id.to_string())
                    .bind(StoredTerms::write(&after))
                    .execute(&mut *tx)
                    .await?;
                if let Some(credits) = changes.credits {
                    // The refill as it stands after the change (kept, when the change names none).
                    let credits = credits.map(|c| crate::store::Credits { refill: after.refill, ..c });
                    let balance = credits.map(|c| c.balance(now));
                    set_credits(&mut tx, &CreditHolder::Key(id), balance, after.refill.as_ref()).await?;
                }
                key = key_in(&mut tx, id).await?.ok_or_else(|| corrupt("an updated key is gone"))?;
            }
            follow_successor(&mut tx, &key, now).await?;
            insert_audit(audit).execute(&mut *tx).await?;
            tx.commit().await?;
            return Ok(UpdateOutcome::Updated(Box::new(key)));
        }
        tx.rollback().await?;
        Ok(match self.key(id).await? {
            Some(_) => UpdateOutcome::Revoked,
            None => UpdateOutcome::NotFound,
        })
    }

    #[tracing::instrument(skip_all, fields(key_id = %id), err)]
    async fn revoke_key(
        &self,
        id: KeyId,
        reason: &str,
        now: Timestamp,
        audit: &AuditEvent,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let mut tx = self.begin_change().await?;
        // Every SET expression reads the row as it was, so a second revoke changes nothing.
        let revoked = sqlx::query(
            "UPDATE api_keys SET \
               revoked_at = COALESCE(revoked_at, $2), \
               revoked_reason = CASE WHEN revoked_at IS NULL THEN $3 ELSE revoked_reason END, \
               updated_at = CASE WHEN revoked_at IS NULL THEN $2 ELSE updated_at END, \
               version = CASE WHEN revoked_at IS NULL THEN version + 1 ELSE version END \
             WHERE id = $1 \
             RETURNING id",
        )
        .bind(id.to_string())
        .bind(now.as_millis())
        .bind(reason)
        .fetch_optional(&mut *tx)
        .await?;
        if revoked.is_none() {
            return Ok(None);
        }
        let key = key_in(&mut tx, id).await?.ok_or_else(|| corrupt("a revoked key is gone"))?;
        // A key rolled into this one spent its balance and stood in for it: it stops too.
        retire_predecessors(&mut tx, id, now).await?;
        insert_audit(audit).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(Some(key))
    }

    #[tracing::instrument(skip_all, fields(key_id = %new.id), err)]
    async fn rotate_runtime_key(
        &self,
        new: &KeyRecord,
        retire_at: Timestamp,
        audit: &AuditEvent,
    ) -> Result<Vec<KeyId>, StoreError> {
        let application = new.application_ids.first().ok_or_else(|| corrupt("a runtime key names its application"))?;
        let mut tx = self.begin_change().await?;
        // Taking the application's row first serializes concurrent rotations of one
        // application on both backends, so exactly one key is current afterwards.
        sqlx::query("UPDATE applications SET runtime_rotations = runtime_rotations + 1 WHERE id = $1")
            .bind(application.as_str())
            .execute(&mut *tx)
            .await?;
        // The new key carries what the current one carried (its limits, allowlist, metadata,
        // and whether it is switched off): rotating a secret changes nothing else.
        let current = sqlx::query(
            "SELECT terms, disabled FROM api_keys \
             WHERE runtime_of = $1 AND kind = 'runtime' AND revoked_at IS NULL AND retire_at IS NULL",
        )
        .bind(application.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let mut new = new.clone();
        if let Some(row) = current {
            new.disabled = row.try_get::<i64, _>("disabled")? != 0;
            if let Some(text) = row.try_get::<Option<&str>, _>("terms")? {
                new.terms = StoredTerms::read(text).ok_or_else(|| corrupt("api_keys.terms"))?;
            }
        }
        // The current key retires at `retire_at`; so does every older key whose grace
        // would outlast it (a rotation with grace 0 ends them all at once: no chains).
        let mut retired = Vec::new();
        for condition in ["retire_at IS NULL", "retire_at > $2"] {
            let rows = sqlx::query(&format!(
                "UPDATE api_keys SET retire_at = $2, updated_at = $3, version = version + 1 \
                 WHERE runtime_of = $1 AND kind = 'runtime' AND revoked_at IS NULL AND {condition} RETURNING id"
            ))
            .bind(application.as_str())
            .bind(retire_at.as_millis())
            .bind(new.created_at.as_millis())
            .fetch_all(&mut *tx)
            .await?;
            for row in rows {
                retired.push(KeyId::from_stored(row.try_get("id")?).ok_or_else(|| corrupt("api_keys.id"))?);
            }
        }
        insert_key(&new).execute(&mut *tx).await?;
        insert_audit(audit).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(retired)
    }

    #[tracing::instrument(skip_all, fields(key_id = %old, new_key_id = %new.id), err)]
    async fn roll_key(
        &self,
        new: &KeyRecord,
        old: KeyId,
        retire_at: Timestamp,
        audit: &AuditEvent,
    ) -> Result<RollOutcome, StoreError> {
        let now = new.created_at;
        let mut tx = self.begin_change().await?;
        // Taking the old key's row first serializes concurrent rolls of one key on both
        // backends: exactly one of them finds it not rolled yet.
        let taken = sqlx::query(
            "UPDATE api_keys SET version = version WHERE id = $1 AND kind = 'api_key' \
             RETURNING revoked_at, rolled_to, retire_at",
        )
        .bind(old.to_string())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(taken) = taken else { return Ok(RollOutcome::NotFound) };
        if let Some(successor) = stored_key_id(&taken, "rolled_to")? {
            return Ok(RollOutcome::AlreadyRolled(successor));
        }
        if taken.try_get::<Option<i64>, _>("revoked_at")?.is_some()
            || taken.try_get::<Option<i64>, _>("retire_at")?.is_some()
        {
            return Ok(RollOutcome::Revoked);
        }
        // What the new key carries is the old key's as this transaction holds it: a change
        // committed since the caller read it is not lost.
        let current = key_in(&mut tx, old).await?.ok_or_else(|| corrupt("a locked key is gone"))?;
        let new = KeyRecord {
            name: current.name,
            scopes: current.scopes,
            application_ids: current.application_ids,
            expires_at: current.expires_at,
            disabled: current.disabled,
            terms: current.terms,
            owner_id: current.owner_id,
            ..new.clone()
        };
        // The roll that made the old key ends its overlap now: no chains of working keys.
        let ended = retire_predecessors(&mut tx, old, now).await?;
        insert_key(&new).execute(&mut *tx).await?;
        // One balance for both keys: it moves to the new key, and the old key's reads
        // follow `rolled_to` to it while the overlap lasts.
        sqlx::query("UPDATE key_credits SET key_id = $2 WHERE key_id = $1")
            .bind(old.to_string())
            .bind(new.id.to_string())
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE api_keys SET retire_at = $2, rolled_to = $3, updated_at = $4, version = version + 1 \
             WHERE id = $1",
        )
        .bind(old.to_string())
        .bind(retire_at.as_millis())
        .bind(new.id.to_string())
        .bind(now.as_millis())
        .execute(&mut *tx)
        .await?;
        let old = key_in(&mut tx, old).await?.ok_or_else(|| corrupt("a rolled key is gone"))?;
        insert_audit(audit).execute(&mut *tx).await?;
        // The new key's own record, linking back: searching the trail for either id finds
        // the roll.
        let mut created = audit.for_object(AuditAction::ApiKeyCreate, new.id.to_string())?;
        created.detail = serde_json::json!({ "name": new.name.as_str(), "rolled_from": old.id.to_string() });
        insert_audit(&created).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(RollOutcome::Rolled { old: Box::new(old), ended })
    }
}
