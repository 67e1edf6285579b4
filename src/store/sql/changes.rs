//! The change feed ([`ChangeFeed`]): the `changes` table the triggers write, and the
//! records its rows name, read on the admin plane's pool.

use super::admin_tokens::{admin_token_from_row, ADMIN_TOKEN_COLUMNS};
use super::applications::application_from_row;
use super::sessions::{session_from_row, SESSION_COLUMNS};
use super::*;
use crate::store::changes::{ChangeFeed, ChangeKind, ChangeRow, FeedRecord, FeedWindow, SnapshotPage};

/// How one kind of record is read: the SELECT, the expression a snapshot pages by (unique
/// across accounts), and the account's column.
struct Source {
    select: String,
    id: &'static str,
    account: &'static str,
}

fn source(kind: ChangeKind) -> Source {
    match kind {
        ChangeKind::Key => Source { select: KEY_SELECT.to_owned(), id: "api_keys.id", account: "api_keys.account_id" },
        ChangeKind::Application => Source {
            select: "SELECT id, account_id, name, created_at FROM applications".to_owned(),
            id: "id",
            account: "account_id",
        },
        ChangeKind::Session => {
            Source { select: format!("SELECT {SESSION_COLUMNS} FROM sessions"), id: "id", account: "account_id" }
        }
        // Owner ids are an account's own: a snapshot pages by account and id.
        ChangeKind::Owner => Source {
            select: OWNER_SELECT.to_owned(),
            id: "(o.account_id || '/' || o.owner_id)",
            account: "o.account_id",
        },
        ChangeKind::AdminToken => Source {
            select: format!("SELECT {ADMIN_TOKEN_COLUMNS} FROM admin_tokens"),
            id: "name",
            account: "account_id",
        },
    }
}

fn record_from_row(kind: ChangeKind, row: &AnyRow) -> Result<(String, FeedRecord), StoreError> {
    Ok(match kind {
        ChangeKind::Key => {
            let key = key_from_row(row)?;
            (key.id.to_string(), FeedRecord::Key(Box::new(key)))
        }
        ChangeKind::Application => {
            let app = application_from_row(row)?;
            (app.id.as_str().to_owned(), FeedRecord::Application(app))
        }
        ChangeKind::Session => {
            let session = session_from_row(row)?;
            (session.id.to_string(), FeedRecord::Session(session))
        }
        ChangeKind::Owner => {
            let owner = owner_from_row(row, "owner_id", "terms", "updated_at", "credits")?;
            (format!("{}/{}", owner.account_id.as_str(), owner.id.as_str()), FeedRecord::Owner(owner))
        }
        ChangeKind::AdminToken => {
            let token = admin_token_from_row(row)?;
            (token.name.as_str().to_owned(), FeedRecord::AdminToken(token))
        }
    })
}

fn change_from_row(row: &AnyRow) -> Result<ChangeRow, StoreError> {
    Ok(ChangeRow {
        revision: row.try_get("revision")?,
        kind: ChangeKind::from_stored(row.try_get("kind")?).ok_or_else(|| corrupt("changes.kind"))?,
        id: row.try_get("object_id")?,
        account_id: row.try_get("account_id")?,
        deleted: row.try_get::<i64, _>("deleted")? != 0,
    })
}

impl SqlStore {
    /// An admin transaction that may write the change feed. On Postgres it takes the
    /// feed's lock first (the triggers take it again, at no cost): changes then commit in
    /// revision order, and no transaction waits for that lock while holding a row.
    pub(super) async fn begin_change(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        let mut tx = self.admin_pool.begin().await?;
        lock_feed(&mut tx, self.backend).await?;
        Ok(tx)
    }
}

/// See [`SqlStore::begin_change`]: the same lock, for transactions begun otherwise.
pub(super) async fn lock_feed(tx: &mut sqlx::Transaction<'_, sqlx::Any>, backend: Backend) -> Result<(), StoreError> {
    if backend == Backend::Postgres {
        sqlx::query("SELECT 1 AS locked FROM pg_advisory_xact_lock(hashtext('keygate_changes_' || current_schema()))")
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl ChangeFeed for SqlStore {
    async fn feed_window(&self) -> Result<FeedWindow, StoreError> {
        // Two subqueries: SQLite reads a lone MIN or MAX from the index, both at once by a scan.
        let row = sqlx::query(
            "SELECT (SELECT MIN(revision) FROM changes) AS oldest, (SELECT MAX(revision) FROM changes) AS latest",
        )
        .fetch_one(&self.admin_pool)
        .await?;
        let oldest: Option<i64> = row.try_get("oldest")?;
        let latest: Option<i64> = row.try_get("latest")?;
        Ok(FeedWindow { oldest, latest: latest.unwrap_or(0) })
    }

    async fn changes_after(&self, after: i64, limit: u32) -> Result<Vec<ChangeRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT revision, kind, object_id, account_id, deleted FROM changes WHERE revision > $1 \
             ORDER BY revision LIMIT $2",
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.admin_pool)
        .await?;
        rows.iter().map(change_from_row).collect()
    }

    async fn prune_changes(&self, keep: u64) -> Result<u64, StoreError> {
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        let done = sqlx::query("DELETE FROM changes WHERE revision <= (SELECT MAX(revision) FROM changes) - $1")
            .bind(keep)
            .execute(&self.admin_pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn record(&self, row: &ChangeRow) -> Result<Option<FeedRecord>, StoreError> {
        let source = source(row.kind);
        let query = match row.kind {
            ChangeKind::Owner => format!("{} WHERE o.owner_id = $1 AND o.account_id = $2", source.select),
            _ => format!("{} WHERE {} = $1 AND ($2 = '' OR {} = $2)", source.select, source.id, source.account),
        };
        sqlx::query(&query)
            .bind(row.id.as_str())
            .bind(row.account_id.as_deref().unwrap_or(""))
            .fetch_optional(&self.admin_pool)
            .await?
            .map(|found| record_from_row(row.kind, &found).map(|(_, record)| record))
            .transpose()
    }

    async fn snapshot(
        &self,
        page: &SnapshotPage<'_>,
    ) -> Result<(Vec<(String, FeedRecord)>, Option<String>), StoreError> {
        // Admin tokens belong to the deployment: only an unconfined snapshot has them.
        if page.kind == ChangeKind::AdminToken && page.account.is_some() {
            return Ok((Vec::new(), None));
        }
        let Source { select, id, account } = source(page.kind);
        let query = format!(
            "{select} WHERE ($1 = '' OR {account} = $1) AND {id} > $2 ORDER BY {id} LIMIT $3",
            select = select,
            account = account,
            id = id
        );
        let rows = sqlx::query(&query)
            .bind(page.account.map(AccountId::as_str).unwrap_or(""))
            .bind(page.after)
            .bind(i64::from(page.limit))
            .fetch_all(&self.admin_pool)
            .await?;
        let records = rows.iter().map(|row| record_from_row(page.kind, row)).collect::<Result<Vec<_>, _>>()?;
        let next = match records.len() < page.limit as usize {
            true => None,
            false => records.last().map(|(id, _)| id.clone()),
        };
        Ok((records, next))
    }
}
