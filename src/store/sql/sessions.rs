use super::*;

pub(super) const SESSION_COLUMNS: &str =
    "id, account_id, user_id, secret_digest, created_at, expires_at, revoked_at, version";

pub(super) fn session_from_row(row: &AnyRow) -> Result<SessionRecord, StoreError> {
    let secret_digest = digest_from_hex(row.try_get("secret_digest")?, "sessions.secret_digest")?;
    Ok(SessionRecord {
        id: SessionId::parse(row.try_get("id")?).map_err(|_| corrupt("sessions.id"))?,
        account_id: AccountId::parse(row.try_get("account_id")?).map_err(|_| corrupt("sessions.account_id"))?,
        user_id: UserId::parse(row.try_get("user_id")?).map_err(|_| corrupt("sessions.user_id"))?,
        secret_digest,
        created_at: Timestamp::from_millis(row.try_get("created_at")?),
        expires_at: Timestamp::from_millis(row.try_get("expires_at")?),
        revoked_at: row.try_get::<Option<i64>, _>("revoked_at")?.map(Timestamp::from_millis),
        version: row.try_get("version")?,
    })
}

#[async_trait::async_trait]
impl SessionAdmin for SqlStore {
    #[tracing::instrument(skip_all, fields(session_id = %session.id), err)]
    async fn create_session(&self, session: &SessionRecord, audit: &AuditEvent) -> Result<(), StoreError> {
        let mut tx = self.begin_change().await?;
        sqlx::query(
            "INSERT INTO sessions (id, account_id, user_id, secret_digest, created_at, expires_at, revoked_at, version) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(session.id.to_string())
        .bind(session.account_id.as_str())
        .bind(session.user_id.as_str())
        .bind(hex(&session.secret_digest))
        .bind(session.created_at.as_millis())
        .bind(session.expires_at.as_millis())
        .bind(session.revoked_at.map(Timestamp::as_millis))
        .bind(session.version)
        .execute(&mut *tx)
        .await?;
        insert_audit(audit).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(account_id = %account), err)]
    async fn list_sessions(
        &self,
        account: &AccountId,
        user: Option<&UserId>,
        page: &PageRequest,
    ) -> Result<Page<SessionRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE account_id = $1 AND ($2 = '' OR user_id = $2) \
             AND id > $3 ORDER BY id LIMIT $4"
        ))
        .bind(account.as_str())
        .bind(user.map(|u| u.as_str().to_owned()).unwrap_or_default())
        .bind(page.after.as_deref().unwrap_or(""))
        .bind(i64::from(page.limit) + 1)
        .fetch_all(&self.admin_pool)
        .await?;
        let items = rows.iter().map(session_from_row).collect::<Result<Vec<_>, _>>()?;
        Ok(into_page(items, page.limit, |s| s.id.to_string()))
    }

    #[tracing::instrument(skip_all, fields(session_id = %id), err)]
    async fn revoke_session(
        &self,
        id: SessionId,
        now: Timestamp,
        audit: &AuditEvent,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let mut tx = self.begin_change().await?;
        let row = sqlx::query(&format!(
            "UPDATE sessions SET revoked_at = COALESCE(revoked_at, $2), \
               version = CASE WHEN revoked_at IS NULL THEN version + 1 ELSE version END \
             WHERE id = $1 RETURNING {SESSION_COLUMNS}"
        ))
        .bind(id.to_string())
        .bind(now.as_millis())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let session = session_from_row(&row)?;
        insert_audit(audit).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(Some(session))
    }
}
