//! Usage counts on SQLite and Postgres: one table, additive upserts
//! (`n = usage_counts.n + excluded.n`), on the admin plane's pool so that neither a flush
//! nor a read waits on, or holds, a connection a decision needs.

use super::SqlStore;
use crate::domain::{AccountId, Timestamp};
use crate::store::usage::{Granularity, KeyTotals, UsageCount, UsageIncrement, UsageQuery, UsageStore};
use crate::store::StoreError;
use sqlx::Row;

/// Rows per INSERT statement (8 parameters each).
const ROWS_PER_STATEMENT: usize = 100;

fn count(raw: i64) -> u64 {
    u64::try_from(raw).unwrap_or(0)
}

#[async_trait::async_trait]
impl UsageStore for SqlStore {
    async fn add_usage(&self, increments: &[UsageIncrement]) -> Result<(), StoreError> {
        let mut tx = self.admin_pool.begin().await?;
        for chunk in increments.chunks(ROWS_PER_STATEMENT) {
            let mut sql = String::from(
                "INSERT INTO usage_counts (subject_kind, subject_id, account_id, granularity, bucket_start, code, \
                 reason, n) VALUES ",
            );
            for i in 0..chunk.len() {
                let p = i * 8;
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!(
                    "(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${})",
                    p + 1,
                    p + 2,
                    p + 3,
                    p + 4,
                    p + 5,
                    p + 6,
                    p + 7,
                    p + 8
                ));
            }
            sql.push_str(
                " ON CONFLICT (subject_kind, account_id, subject_id, granularity, bucket_start, code, reason) \
                 DO UPDATE SET n = usage_counts.n + excluded.n",
            );
            let mut query = sqlx::query(&sql);
            for row in chunk {
                query = query
                    .bind(row.kind.as_str())
                    .bind(row.subject.as_str())
                    .bind(row.account.as_str())
                    .bind(row.granularity.as_str())
                    .bind(row.bucket_start)
                    .bind(row.code)
                    .bind(row.reason)
                    .bind(i64::try_from(row.n).unwrap_or(i64::MAX));
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn usage(&self, query: &UsageQuery) -> Result<Vec<UsageCount>, StoreError> {
        let rows = sqlx::query(
            "SELECT bucket_start, code, reason, n FROM usage_counts WHERE subject_kind = $1 AND account_id = $2 \
             AND subject_id = $3 AND granularity = $4 AND bucket_start >= $5 AND bucket_start < $6 \
             ORDER BY bucket_start, code, reason",
        )
        .bind(query.kind.as_str())
        .bind(query.account.as_str())
        .bind(query.subject.as_str())
        .bind(query.granularity.as_str())
        .bind(query.from.as_millis())
        .bind(query.to.as_millis())
        .fetch_all(&self.admin_pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(UsageCount {
                    bucket_start: row.try_get("bucket_start")?,
                    code: row.try_get("code")?,
                    reason: row.try_get("reason")?,
                    n: count(row.try_get("n")?),
                })
            })
            .collect()
    }

    async fn top_keys(
        &self,
        account: &AccountId,
        granularity: Granularity,
        (from, to): (Timestamp, Timestamp),
        by_denials: bool,
        limit: u32,
    ) -> Result<Vec<KeyTotals>, StoreError> {
        let denied = "SUM(CASE WHEN code <> 'allowed' THEN n ELSE 0 END)";
        let order = if by_denials { denied } else { "SUM(n)" };
        let sql = format!(
            "SELECT subject_id, CAST(SUM(CASE WHEN code = 'allowed' THEN n ELSE 0 END) AS BIGINT) AS allowed, \
             CAST({denied} AS BIGINT) AS denied FROM usage_counts WHERE account_id = $1 AND subject_kind = 'key' \
             AND granularity = $2 AND bucket_start >= $3 AND bucket_start < $4 GROUP BY subject_id \
             HAVING {order} > 0 ORDER BY {order} DESC, subject_id LIMIT $5"
        );
        let rows = sqlx::query(&sql)
            .bind(account.as_str())
            .bind(granularity.as_str())
            .bind(from.as_millis())
            .bind(to.as_millis())
            .bind(i64::from(limit))
            .fetch_all(&self.admin_pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(KeyTotals {
                    key_id: row.try_get("subject_id")?,
                    allowed: count(row.try_get("allowed")?),
                    denied: count(row.try_get("denied")?),
                })
            })
            .collect()
    }

    async fn prune_usage(&self, granularity: Granularity, before: Timestamp) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM usage_counts WHERE granularity = $1 AND bucket_start < $2")
            .bind(granularity.as_str())
            .bind(before.as_millis())
            .execute(&self.admin_pool)
            .await?;
        Ok(done.rows_affected())
    }
}
