use super::*;

pub(super) const AUDIT_COLUMNS: &str =
    "id, account_id, action, actor, on_behalf_of, target, request_id, occurred_at, detail";
pub(super) fn audit_from_row(row: &AnyRow) -> Result<AuditEvent, StoreError> {
    let action = AuditAction::from_stored(row.try_get("action")?).ok_or_else(|| corrupt("audit_events.action"))?;
    Ok(AuditEvent {
        id: row.try_get("id")?,
        account_id: AccountId::parse(row.try_get("account_id")?).map_err(|_| corrupt("audit_events.account_id"))?,
        action,
        actor: Actor {
            credential: row.try_get("actor")?,
            on_behalf_of: row.try_get("on_behalf_of")?,
            request_id: row.try_get("request_id")?,
        },
        target: row.try_get("target")?,
        occurred_at: Timestamp::from_millis(row.try_get("occurred_at")?),
        detail: serde_json::from_str(row.try_get("detail")?).map_err(|_| corrupt("audit_events.detail"))?,
    })
}

pub(super) fn insert_audit(event: &AuditEvent) -> sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments<'_>> {
    sqlx::query(
        "INSERT INTO audit_events (id, account_id, category, action, actor, on_behalf_of, target, request_id, \
         occurred_at, detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(event.id.as_str())
    .bind(event.account_id.as_str())
    .bind(event.category().as_str())
    .bind(event.action.as_str())
    .bind(event.actor.credential.as_str())
    .bind(event.actor.on_behalf_of.as_deref())
    .bind(event.target.as_str())
    .bind(event.actor.request_id.as_str())
    .bind(event.occurred_at.as_millis())
    .bind(event.detail.to_string())
}

#[async_trait::async_trait]
impl AuditLog for SqlStore {
    #[tracing::instrument(skip_all, fields(account_id = %account), err)]
    async fn list_audit_events(
        &self,
        account: &AccountId,
        query: &AuditQuery,
        page: &PageRequest,
    ) -> Result<Page<AuditEvent>, StoreError> {
        let before = page.after.as_deref().unwrap_or("evt_~");
        // A search string or categories make a scan of the account's trail: bounded, by
        // the index, to the newest SEARCH_SCAN_ROWS below the page's start.
        let floor = match query.search.is_some() || !query.categories.is_empty() {
            false => None,
            true => sqlx::query(
                "SELECT id FROM audit_events WHERE account_id = $1 AND id < $2 ORDER BY id DESC LIMIT 1 OFFSET $3",
            )
            .bind(account.as_str())
            .bind(before)
            .bind(SEARCH_SCAN_ROWS - 1)
            .fetch_optional(&self.admin_pool)
            .await?
            .map(|row| row.try_get::<String, _>("id"))
            .transpose()?,
        };
        // One placeholder per category; the categories themselves are bound, never spliced.
        let categories = (0..query.categories.len()).map(|i| format!("${}", i + 6)).collect::<Vec<_>>().join(", ");
        let category_filter =
            if categories.is_empty() { String::new() } else { format!("AND category IN ({categories})") };
        let sql = format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_events WHERE account_id = $1 AND id < $2 AND id >= $5 \
             AND ($3 = '' OR lower(action) LIKE $3 ESCAPE '\\' OR lower(target) LIKE $3 ESCAPE '\\' \
               OR lower(actor) LIKE $3 ESCAPE '\\' OR lower(COALESCE(on_behalf_of, '')) LIKE $3 ESCAPE '\\' \
               OR lower(request_id) LIKE $3 ESCAPE '\\') \
             {category_filter} ORDER BY id DESC LIMIT $4"
        );
        let mut statement = sqlx::query(&sql)
            .bind(account.as_str())
            // Newest first: a page continues below the last id it showed; "~" sorts after every id.
            .bind(before)
            .bind(query.search.as_deref().map(like_pattern).unwrap_or_default())
            .bind(i64::from(page.limit) + 1)
            .bind(floor.clone().unwrap_or_default());
        for category in &query.categories {
            statement = statement.bind(category.as_str());
        }
        let rows = statement.fetch_all(&self.admin_pool).await?;
        let items = rows.iter().map(audit_from_row).collect::<Result<Vec<_>, _>>()?;
        Ok(scanned_to(into_page(items, page.limit, |e| e.id.clone()), floor))
    }
}
