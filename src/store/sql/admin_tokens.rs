use super::*;

pub(super) const ADMIN_TOKEN_COLUMNS: &str =
    "name, digest, role, account_id, created_at, expires_at, revoked_at, created_by, revoked_by";
pub(super) fn admin_token_from_row(row: &AnyRow) -> Result<AdminTokenRecord, StoreError> {
    let account: Option<String> = row.try_get("account_id")?;
    Ok(AdminTokenRecord {
        name: AdminTokenName::parse(row.try_get("name")?).map_err(|_| corrupt("admin_tokens.name"))?,
        role: AdminRole::parse(row.try_get("role")?).map_err(|_| corrupt("admin_tokens.role"))?,
        account_id: account
            .map(|a| AccountId::parse(&a))
            .transpose()
            .map_err(|_| corrupt("admin_tokens.account_id"))?,
        digest: digest_from_hex(row.try_get("digest")?, "admin_tokens.digest")?,
        created_at: Timestamp::from_millis(row.try_get("created_at")?),
        expires_at: row.try_get::<Option<i64>, _>("expires_at")?.map(Timestamp::from_millis),
        revoked_at: row.try_get::<Option<i64>, _>("revoked_at")?.map(Timestamp::from_millis),
        created_by: row.try_get("created_by")?,
        revoked_by: row.try_get("revoked_by")?,
    })
}

#[async_trait::async_trait]
impl AdminTokens for SqlStore {
    #[tracing::instrument(skip_all, fields(name = token.name.as_str()), err)]
    async fn create_admin_token(&self, token: &AdminTokenRecord) -> Result<bool, StoreError> {
        let inserted = sqlx::query(&format!(
            "INSERT INTO admin_tokens ({ADMIN_TOKEN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT DO NOTHING RETURNING name"
        ))
        .bind(token.name.as_str())
        .bind(hex(&token.digest))
        .bind(token.role.as_str())
        .bind(token.account_id.as_ref().map(|a| a.as_str()))
        .bind(token.created_at.as_millis())
        .bind(token.expires_at.map(Timestamp::as_millis))
        .bind(token.revoked_at.map(Timestamp::as_millis))
        .bind(token.created_by.as_str())
        .bind(token.revoked_by.as_deref())
        .fetch_optional(&self.admin_pool)
        .await?;
        Ok(inserted.is_some())
    }

    #[tracing::instrument(skip_all, err)]
    async fn admin_token(&self, digest: &[u8; 32]) -> Result<Option<AdminTokenRecord>, StoreError> {
        sqlx::query(&format!("SELECT {ADMIN_TOKEN_COLUMNS} FROM admin_tokens WHERE digest = $1"))
            .bind(hex(digest))
            .fetch_optional(&self.admin_pool)
            .await?
            .map(|row| admin_token_from_row(&row))
            .transpose()
    }

    #[tracing::instrument(skip_all, err)]
    async fn list_admin_tokens(&self) -> Result<Vec<AdminTokenRecord>, StoreError> {
        sqlx::query(&format!("SELECT {ADMIN_TOKEN_COLUMNS} FROM admin_tokens ORDER BY name"))
            .fetch_all(&self.admin_pool)
            .await?
            .iter()
            .map(admin_token_from_row)
            .collect()
    }

    #[tracing::instrument(skip_all, fields(name = name.as_str()), err)]
    async fn revoke_admin_token(
        &self,
        name: &AdminTokenName,
        now: Timestamp,
        by: &str,
    ) -> Result<Option<AdminTokenRecord>, StoreError> {
        sqlx::query(&format!(
            "UPDATE admin_tokens SET revoked_by = CASE WHEN revoked_at IS NULL THEN $3 ELSE revoked_by END, \
               revoked_at = COALESCE(revoked_at, $2) \
             WHERE name = $1 RETURNING {ADMIN_TOKEN_COLUMNS}"
        ))
        .bind(name.as_str())
        .bind(now.as_millis())
        .bind(by)
        .fetch_optional(&self.admin_pool)
        .await?
        .map(|row| admin_token_from_row(&row))
        .transpose()
    }
}
