//! The reads a decision waits on ([`Records`]), on the decisions' pool: a key, an
//! application, a session, the imported keys a credential may be.

use super::applications::application_from_row;
use super::sessions::{session_from_row, SESSION_COLUMNS};
use super::*;

#[async_trait::async_trait]
impl Records for SqlStore {
    #[tracing::instrument(skip_all, fields(key_id = %id), err)]
    async fn key(&self, id: KeyId) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        sqlx::query(&format!("{KEY_SELECT} WHERE api_keys.id = $1"))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .map(|row| key_from_row(&row).map(Arc::new))
            .transpose()
    }

    #[tracing::instrument(skip_all, fields(application_id = %id), err)]
    async fn application(&self, id: &ApplicationId) -> Result<Option<Arc<Application>>, StoreError> {
        sqlx::query("SELECT id, account_id, name, created_at FROM applications WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?
            .map(|row| application_from_row(&row).map(Arc::new))
            .transpose()
    }

    #[tracing::instrument(skip_all, fields(session_id = %id), err)]
    async fn session(&self, id: SessionId) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        sqlx::query(&format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1"))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .map(|row| session_from_row(&row).map(Arc::new))
            .transpose()
    }

    #[tracing::instrument(skip_all, err)]
    async fn keys_by_lookup(&self, lookups: &[String]) -> Result<Vec<Arc<KeyRecord>>, StoreError> {
        if lookups.is_empty() {
            return Ok(Vec::new());
        }
        let all: Vec<String> = (1..=lookups.len()).map(|i| format!("${i}")).collect();
        // Each account's records in turn (the keyed match first, then the earliest import),
        // and every account's first turn before any account's second: records one account
        // imported under other accounts' starts wait behind theirs.
        let sql = format!(
            "{KEY_SELECT} JOIN (SELECT id AS found_id, CASE WHEN lookup = $1 THEN 0 ELSE 1 END AS keyed, \
             ROW_NUMBER() OVER (PARTITION BY account_id ORDER BY CASE WHEN lookup = $1 THEN 0 ELSE 1 END, \
             created_at, id) AS turn FROM api_keys WHERE lookup IN ({}) OR import_ref IN ({})) found \
             ON found.found_id = api_keys.id ORDER BY found.keyed, found.turn, api_keys.created_at, api_keys.id \
             LIMIT {}",
            all.join(", "),
            if all.len() > 1 { all[1..].join(", ") } else { "NULL".to_owned() },
            crate::domain::imported::MAX_CANDIDATES,
        );
        let mut query = sqlx::query(&sql);
        for lookup in lookups {
            query = query.bind(lookup.as_str());
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter().map(|row| key_from_row(row).map(Arc::new)).collect()
    }
}
