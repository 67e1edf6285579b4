//! The SQL store. One implementation over sqlx's `any` driver serves SQLite and Postgres:
//! the schema uses only TEXT and BIGINT and every statement is portable (`$n`
//! placeholders, `RETURNING`), so the conformance suite proves both with the same code.
//! What differs per backend (connection set-up, migrations) is chosen by [`Backend`].
//!
//! What decisions wait on is on the decisions' pool, in two files: `records` (the reads,
//! [`Records`]) and `key_use` (the writes after answering, [`KeyUse`]: the credit spend
//! batcher, last uses, verified digests, imported keys re-hashed). The admin plane's side is
//! one file per resource, each implementing its admin trait ([`super::admin`]):
//! `applications`, `keys` (API and runtime keys, rotation, rolls), `import`, `owners`,
//! `sessions`, `admin_tokens`, `audit` and `delete`; `changes` is the change feed; `rows`
//! reads rows into records. This
//! file connects, and answers [`Direct`].

mod admin_tokens;
mod applications;
mod audit;
mod changes;
mod connect_error;
mod delete;
mod import;
mod key_use;
mod keys;
mod migrations;
mod owners;
mod records;
mod rows;
mod sessions;
mod usage;

use self::{audit::*, key_use::*, keys::*, rows::*};

use super::{AdminTokens, ApplicationAdmin, AuditLog, DeleteAdmin, Direct, ImportAdmin, KeyAdmin, KeyUse, OwnerAdmin};
use super::{
    Application, Deleted, Deletion, Imported, ImportedKey, KeyChanges, KeyFilter, KeyKind, KeyRecord, Owner,
    OwnerChanges, Page, PageRequest, RollOutcome, SessionRecord, Spend, StoreError, UpdateOutcome, VerifiedDigest,
};
use super::{Records, SessionAdmin};
use crate::audit::{Actor, AuditAction, AuditEvent, AuditQuery};
use crate::domain::{
    hex, AccountId, AdminRole, AdminTokenName, AdminTokenRecord, ApplicationId, CreditBalance, CreditHolder, KeyId,
    KeyLimit, KeyTerms, Metadata, Name, Network, OwnerId, Refill, RefillMode, Scopes, SecretHash, SessionId, Timestamp,
    UserId,
};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn of_url(url: &str) -> Option<Self> {
        if url.starts_with("sqlite:") {
            Some(Self::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Some(Self::Postgres)
        } else {
            None
        }
    }
}

#[derive(Clone)]
pub struct SqlStore {
    /// What decisions read and write (keys, sessions, applications by id, credit spends,
    /// verified digests, last uses): nothing the admin plane does can hold these.
    pool: AnyPool,
    /// The admin plane's own connections (its writes, lists, searches and token reads),
    /// each statement bounded: 48 searches from one read-only token once held every
    /// connection decisions had and opened the store's breaker for every tenant. A
    /// semaphore over one pool would bound admin's share as well, but a pool of its own
    /// is where a per-connection `statement_timeout` can live, and decisions keep their
    /// whole pool, sized as before.
    admin_pool: AnyPool,
    backend: Backend,
    spending: Arc<Spending>,
}

impl SqlStore {
    /// Connects, creating a SQLite file (and its folder) if needed, and applies the
    /// migrations. Safe when several replicas start at once: sqlx takes a database lock
    /// around migrations.
    pub async fn connect(url: &str, max_connections: u32, connect_timeout: Duration) -> anyhow::Result<Self> {
        Self::connect_with(url, max_connections, connect_timeout, AdminPoolSettings::default()).await
    }

    /// [`connect`](Self::connect), with the admin plane's pool as `admin` says.
    pub async fn connect_with(
        url: &str,
        max_connections: u32,
        connect_timeout: Duration,
        admin: AdminPoolSettings,
    ) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = Backend::of_url(url)
            .ok_or_else(|| anyhow::anyhow!("the database URL must start with sqlite: or postgres:"))?;
        let url = match backend {
            Backend::Sqlite => prepare_sqlite_url(url)?,
            Backend::Postgres => url.to_owned(),
        };
        let options = AnyPoolOptions::new().max_connections(max_connections).acquire_timeout(connect_timeout);
        // Decisions keep their own limits: the breaker's timeout bounds their reads.
        let pool = with_session(options, backend, None).connect(&url).await.map_err(connect_error::explained)?;
        let migrations = match backend {
            Backend::Sqlite => migrations::SQLITE,
            Backend::Postgres => migrations::POSTGRES,
        };
        migrations.migrator().await?.run(&pool).await?;
        // An admin call waits for a connection no longer than one statement may run: a
        // queue of searches answers UNAVAILABLE rather than piling up.
        let admin_options =
            AnyPoolOptions::new().max_connections(admin.max_connections).acquire_timeout(admin.statement_timeout);
        let admin_pool = with_session(admin_options, backend, Some(admin.statement_timeout)).connect_lazy(&url)?;
        Ok(Self { pool, admin_pool, backend, spending: Arc::new(Spending::new(max_connections, backend)) })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// An admin transaction whose size the caller chooses (deleting an account, importing
    /// a thousand keys): the admin pool's statement timeout, meant for scans, is lifted for
    /// it, so a large one is not rolled back every time it is tried. Its connection is
    /// still the admin pool's, so decisions are not waited on.
    /// Like [`begin_change`](Self::begin_change), it may write the change feed.
    async fn begin_unbounded(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        let mut tx = self.admin_pool.begin().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SET LOCAL statement_timeout = 0").execute(&mut *tx).await?;
        }
        changes::lock_feed(&mut tx, self.backend).await?;
        Ok(tx)
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }
}

/// The admin plane's pool: its size and how long one of its statements may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminPoolSettings {
    pub max_connections: u32,
    /// Postgres: the connections' `statement_timeout` (a statement past it is cancelled and
    /// its transaction rolled back). SQLite has no such limit: there it is how long a
    /// statement waits for the write lock (`busy_timeout`), and scans are bounded by rows
    /// ([`SEARCH_SCAN_ROWS`]) instead. Also the longest wait for a free admin connection.
    pub statement_timeout: Duration,
}

impl AdminPoolSettings {
    /// Two: the CLI and a dashboard at once, and on SQLite at most two threads scanning
    /// beside the decisions' reads.
    pub const DEFAULT_CONNECTIONS: u32 = 2;
}

impl Default for AdminPoolSettings {
    fn default() -> Self {
        Self { max_connections: Self::DEFAULT_CONNECTIONS, statement_timeout: Duration::from_secs(5) }
    }
}

/// Rows a search that needs a scan (audit events with a search string or categories, API
/// keys with a search string) looks at per page, in the page's order. Past it the page
/// ends, short or even empty, with a `next_page_token` that continues the search after
/// the last row looked at: a search costs at most this many rows a call, and nothing is
/// skipped. Pages without such a filter read by an index and need no bound.
pub const SEARCH_SCAN_ROWS: i64 = 10_000;

/// Per-connection set-up of a pool; `statement_timeout` for the admin pool's.
fn with_session(options: AnyPoolOptions, backend: Backend, statement_timeout: Option<Duration>) -> AnyPoolOptions {
    // Whole milliseconds, formatted here: SET and PRAGMA take no bound parameters.
    let limit_ms = statement_timeout.map(|t| t.as_millis().max(1) as u64);
    match backend {
        Backend::Sqlite => options.after_connect(move |conn, _| {
            Box::pin(async move {
                // WAL lets readers run beside the one writer; FULL makes a commit durable
                // before the RPC that made it returns; the busy timeout makes
                // writers queue instead of failing at once (admin's, at most its limit).
                sqlx::query("PRAGMA journal_mode = WAL").execute(&mut *conn).await?;
                let busy = format!("PRAGMA busy_timeout = {}", limit_ms.unwrap_or(5000));
                sqlx::query(&busy).execute(&mut *conn).await?;
                sqlx::query("PRAGMA synchronous = FULL").execute(&mut *conn).await?;
                Ok(())
            })
        }),
        Backend::Postgres => match limit_ms {
            None => options,
            Some(ms) => options.after_connect(move |conn, _| {
                Box::pin(async move {
                    sqlx::query(&format!("SET statement_timeout = {ms}")).execute(&mut *conn).await?;
                    Ok(())
                })
            }),
        },
    }
}

/// Creates the folder of a SQLite file and asks sqlx to create the file itself.
fn prepare_sqlite_url(url: &str) -> anyhow::Result<String> {
    let rest = url.trim_start_matches("sqlite:").trim_start_matches("//");
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path.is_empty() || path.starts_with(":memory:") {
        anyhow::bail!(
            "an in-memory SQLite database is not supported: each pooled connection would see its own empty database"
        );
    }
    if let Some(parent) = std::path::Path::new(path).parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| anyhow::anyhow!("cannot create the folder {} for the database: {e}", parent.display()))?;
    }
    Ok(if query.contains("mode=") {
        url.to_owned()
    } else if query.is_empty() {
        format!("sqlite://{path}?mode=rwc")
    } else {
        format!("sqlite://{path}?{query}&mode=rwc")
    })
}

/// A driver's error as a store error that does not name the driver: one that says the
/// database is out of reach is [`StoreError::Unavailable`], a statement the database cut
/// short for running past its limit (Postgres's `statement_timeout`, SQLite's busy
/// timeout) [`StoreError::CutShort`].
impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(Box::new(e)),
            sqlx::Error::Database(ref db) if matches!(db.code().as_deref(), Some("57014" | "5" | "517")) => {
                StoreError::CutShort(Box::new(e))
            }
            other => StoreError::Other(Box::new(other)),
        }
    }
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(what.to_owned())
}

/// `%term%` for LIKE, with LIKE's own wildcards in the term escaped.
fn like_pattern(term: &str) -> String {
    let mut pattern = String::with_capacity(term.len() + 2);
    pattern.push('%');
    for c in term.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// Fetches one row more than the page holds, to know whether another page follows.
fn into_page<T>(mut items: Vec<T>, limit: u32, id_of: impl Fn(&T) -> String) -> Page<T> {
    let next_after = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(id_of)
    } else {
        None
    };
    Page { items, next_after }
}

/// A bounded search's page: when the bound (`last_scanned`, the last row it looked at)
/// cut it before it was full, it continues after that row.
fn scanned_to<T>(page: Page<T>, last_scanned: Option<String>) -> Page<T> {
    match page.next_after {
        Some(_) => page,
        None => Page { next_after: last_scanned, items: page.items },
    }
}

/// What the SQL store answers itself: it holds no cache, and is the store at the bottom.
#[async_trait::async_trait]
impl Direct for SqlStore {
    /// The decision's read: the store holds no cache.
    async fn key_as_stored(&self, id: KeyId) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        self.key(id).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn close(&self) {
        self.admin_pool.close().await;
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(like_pattern("John"), "%john%");
        assert_eq!(like_pattern("50%_off\\"), "%50\\%\\_off\\\\%");
    }

    #[test]
    fn sqlite_urls_get_create_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/k.db");
        let url = prepare_sqlite_url(&format!("sqlite://{}", path.display())).unwrap();
        assert!(url.ends_with("?mode=rwc"));
        assert!(path.parent().unwrap().is_dir());
        assert!(prepare_sqlite_url("sqlite::memory:").is_err());
    }
}
