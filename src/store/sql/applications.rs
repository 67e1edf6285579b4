use super::*;

pub(super) fn application_from_row(row: &AnyRow) -> Result<Application, StoreError> {
    Ok(Application {
        id: ApplicationId::parse(row.try_get("id")?).map_err(|_| corrupt("applications.id"))?,
        account_id: AccountId::parse(row.try_get("account_id")?).map_err(|_| corrupt("applications.account_id"))?,
        name: Name::from_trusted(row.try_get("name")?),
        created_at: Timestamp::from_millis(row.try_get("created_at")?),
    })
}

#[async_trait::async_trait]
impl ApplicationAdmin for SqlStore {
    #[tracing::instrument(skip_all, fields(application_id = %app.id), err)]
    async fn create_application(&self, app: &Application, audit: &AuditEvent) -> Result<(), StoreError> {
        let mut tx = self.begin_change().await?;
        sqlx::query("INSERT INTO applications (id, account_id, name, created_at) VALUES ($1, $2, $3, $4)")
            .bind(app.id.as_str())
            .bind(app.account_id.as_str())
            .bind(app.name.as_str())
            .bind(app.created_at.as_millis())
            .execute(&mut *tx)
            .await?;
        insert_audit(audit).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(account_id = %account), err)]
    async fn list_applications(
        &self,
        account: &AccountId,
        page: &PageRequest,
    ) -> Result<Page<Application>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, account_id, name, created_at FROM applications \
             WHERE account_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(account.as_str())
        .bind(page.after.as_deref().unwrap_or(""))
        .bind(i64::from(page.limit) + 1)
        .fetch_all(&self.admin_pool)
        .await?;
        let items = rows.iter().map(application_from_row).collect::<Result<Vec<_>, _>>()?;
        Ok(into_page(items, page.limit, |a| a.id.to_string()))
    }

    #[tracing::instrument(skip_all, fields(application_id = %id), err)]
    async fn rename_application(
        &self,
        id: &ApplicationId,
        name: &Name,
        audit: &AuditEvent,
    ) -> Result<Option<Application>, StoreError> {
        let mut tx = self.begin_change().await?;
        let row =
            sqlx::query("UPDATE applications SET name = $2 WHERE id = $1 RETURNING id, account_id, name, created_at")
                .bind(id.as_str())
                .bind(name.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        let Some(row) = row else { return Ok(None) };
        let application = application_from_row(&row)?;
        insert_audit(audit).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(Some(application))
    }
}
