//! The SQL store. One implementation over sqlx's `any` driver serves SQLite and Postgres:
//! the schema uses only TEXT and BIGINT and every statement is portable (`$n`
//! placeholders, `RETURNING`), so the conformance suite proves both with the same code.
//! What differs per backend (connection set-up, migrations) is chosen by [`Backend`].

use super::{AdminStore, KeyUse, Records};
use super::{
    Application, Deleted, Deletion, Imported, ImportedKey, KeyChanges, KeyFilter, KeyKind, KeyRecord, Owner,
    OwnerChanges, Page, PageRequest, RollOutcome, SessionRecord, Spend, StoreError, UpdateOutcome, VerifiedDigest,
};
use crate::audit::{Actor, AuditAction, AuditEvent, AuditQuery};
use crate::domain::{
    hex, AccountId, AdminRole, AdminTokenName, AdminTokenRecord, ApplicationId, CreditBalance, CreditHolder, KeyId,
    KeyLimit, KeyTerms, Metadata, Name, Network, OwnerId, Refill, RefillMode, Scopes, SecretHash, SessionId, Timestamp,
    UserId,
};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Row};
use std::sync::Arc;
use std::time::Duration;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// A key with its last use, which lives in its own table: usage is written in batches
/// and must not notify replicas or bump the key's version as a change would. Its credits
/// are its successor's while a roll overlaps (they moved there); its owner's shared terms
/// and balance come with it.
const KEY_SELECT: &str = "SELECT api_keys.id, api_keys.account_id, kind, name, scopes, application_ids, \
     secret_hash, api_keys.created_at, api_keys.updated_at, expires_at, revoked_at, retire_at, revoked_reason, \
     version, verified_digest, u.last_used_at, disabled, api_keys.terms, \
     c.remaining AS credits_remaining, c.period AS credits_period, \
     api_keys.owner_id, rolled_from, rolled_to, lookup, o.owner_id AS owner_found, o.terms AS owner_terms, \
     o.updated_at AS owner_updated_at, oc.remaining AS owner_credits_remaining, oc.period AS owner_credits_period \
     FROM api_keys LEFT JOIN key_usage u ON u.key_id = api_keys.id \
     LEFT JOIN key_credits c ON c.key_id = COALESCE(api_keys.rolled_to, api_keys.id) \
     LEFT JOIN owners o ON o.account_id = api_keys.account_id AND o.owner_id = api_keys.owner_id \
     LEFT JOIN key_credits oc ON oc.key_id = 'owner/' || api_keys.account_id || '/' || api_keys.owner_id";
const OWNER_SELECT: &str = "SELECT o.account_id, o.owner_id, o.terms, o.updated_at, \
     c.remaining AS credits_remaining, c.period AS credits_period FROM owners o \
     LEFT JOIN key_credits c ON c.key_id = 'owner/' || o.account_id || '/' || o.owner_id";
const AUDIT_COLUMNS: &str = "id, account_id, action, actor, on_behalf_of, target, request_id, occurred_at, detail";
const ADMIN_TOKEN_COLUMNS: &str =
    "name, digest, role, account_id, created_at, expires_at, revoked_at, created_by, revoked_by";
const SESSION_COLUMNS: &str = "id, account_id, user_id, secret_digest, created_at, expires_at, revoked_at, version";

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

/// How credit spends share the database. Calls wait in memory, in one of a few lanes (by
/// key), rather than each holding a connection while it waits for the row's lock; one
/// caller at a time per lane takes everything waiting and spends it per key in **one**
/// `UPDATE` of the summed cost (a group commit), answering each call with its own balance.
/// Only when the sum does not fit are the calls spent one by one, in arrival order, so the
/// last credits go exactly as far as they go. Spends hold at most half the pool, so a hot
/// key with credits never takes the connections that key reads need.
struct Spending {
    lanes: Vec<Lane>,
    slots: tokio::sync::Semaphore,
}

#[derive(Default)]
struct Lane {
    waiting: std::sync::Mutex<Vec<Waiter>>,
    turn: Arc<tokio::sync::Mutex<()>>,
}

/// A call waiting to spend, and where its answer goes.
struct Waiter {
    /// The holder, as `key_credits.key_id` names it.
    id: String,
    cost: i64,
    refill: Option<Refill>,
    now: Timestamp,
    answer: tokio::sync::oneshot::Sender<Result<Spend, StoreError>>,
}

impl Spending {
    const LANES: usize = 64;

    fn new(max_connections: u32, backend: Backend) -> Self {
        // SQLite has one writer: batches queue here, in memory, rather than in its busy
        // handler (which sleeps in growing steps). Postgres writes rows in parallel.
        // One lane, too: every waiting spend goes into the one transaction, one fsync.
        let (lanes, slots) = match backend {
            Backend::Sqlite => (1, 1),
            Backend::Postgres => (Self::LANES, (max_connections as usize / 2).max(1)),
        };
        Self { lanes: (0..lanes).map(|_| Lane::default()).collect(), slots: tokio::sync::Semaphore::new(slots) }
    }

    fn lane(&self, id: &str) -> &Lane {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        id.hash(&mut hasher);
        &self.lanes[hasher.finish() as usize % self.lanes.len()]
    }
}

/// What a waiter is told when the call that took its spend failed: the cause is logged
/// once, by that call; no SQL text travels.
fn spend_failed(e: &StoreError) -> StoreError {
    StoreError::Unavailable(Box::new(std::io::Error::other(format!("spending credits failed: {e}"))))
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
        let pool = with_session(options, backend, None).connect(&url).await?;
        let migrator = match backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator.run(&pool).await?;
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
    async fn begin_unbounded(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        let mut tx = self.admin_pool.begin().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SET LOCAL statement_timeout = 0").execute(&mut *tx).await?;
        }
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

fn application_from_row(row: &AnyRow) -> Result<Application, StoreError> {
    Ok(Application {
        id: ApplicationId::parse(row.try_get("id")?).map_err(|_| corrupt("applications.id"))?,
        account_id: AccountId::parse(row.try_get("account_id")?).map_err(|_| corrupt("applications.account_id"))?,
        name: Name::from_trusted(row.try_get("name")?),
        created_at: Timestamp::from_millis(row.try_get("created_at")?),
    })
}

fn key_from_row(row: &AnyRow) -> Result<KeyRecord, StoreError> {
    let scopes: Vec<String> = serde_json::from_str(row.try_get("scopes")?).map_err(|_| corrupt("api_keys.scopes"))?;
    let application_ids: Vec<String> =
        serde_json::from_str(row.try_get("application_ids")?).map_err(|_| corrupt("api_keys.application_ids"))?;
    let optional_time = |column| -> Result<Option<Timestamp>, StoreError> {
        Ok(row.try_get::<Option<i64>, _>(column)?.map(Timestamp::from_millis))
    };
    let kind = match row.try_get::<&str, _>("kind")? {
        "api_key" => KeyKind::ApiKey,
        "runtime" => KeyKind::Runtime,
        _ => return Err(corrupt("api_keys.kind")),
    };
    Ok(KeyRecord {
        id: KeyId::from_stored(row.try_get("id")?).ok_or_else(|| corrupt("api_keys.id"))?,
        account_id: AccountId::parse(row.try_get("account_id")?).map_err(|_| corrupt("api_keys.account_id"))?,
        kind,
        name: Name::from_trusted(row.try_get("name")?),
        scopes: Scopes::parse_grants(&scopes).map_err(|_| corrupt("api_keys.scopes"))?,
        application_ids: application_ids
            .iter()
            .map(|id| ApplicationId::parse(id))
            .collect::<Result<_, _>>()
            .map_err(|_| corrupt("api_keys.application_ids"))?,
        secret_hash: SecretHash::new(row.try_get("secret_hash")?),
        created_at: Timestamp::from_millis(row.try_get("created_at")?),
        updated_at: Timestamp::from_millis(row.try_get("updated_at")?),
        expires_at: optional_time("expires_at")?,
        revoked_at: optional_time("revoked_at")?,
        retire_at: optional_time("retire_at")?,
        revoked_reason: row.try_get("revoked_reason")?,
        version: row.try_get("version")?,
        verified_digest: match row.try_get::<Option<&str>, _>("verified_digest")? {
            None => None,
            Some(text) => Some(VerifiedDigest::from_hex(text).ok_or_else(|| corrupt("api_keys.verified_digest"))?),
        },
        last_used_at: optional_time("last_used_at")?,
        disabled: row.try_get::<i64, _>("disabled")? != 0,
        terms: match row.try_get::<Option<&str>, _>("terms")? {
            None => KeyTerms::default(),
            Some(text) => StoredTerms::read(text).ok_or_else(|| corrupt("api_keys.terms"))?,
        },
        credits: balance_of(row, "credits_remaining", "credits_period")?,
        owner_id: match row.try_get::<Option<&str>, _>("owner_id")? {
            None => None,
            Some(id) => Some(OwnerId::parse(id).map_err(|_| corrupt("api_keys.owner_id"))?),
        },
        owner: match row.try_get::<Option<&str>, _>("owner_found")? {
            None => None,
            Some(_) => {
                Some(Arc::new(owner_from_row(row, "owner_found", "owner_terms", "owner_updated_at", "owner_credits")?))
            }
        },
        rolled_from: stored_key_id(row, "rolled_from")?,
        rolled_to: stored_key_id(row, "rolled_to")?,
        lookup: row.try_get::<Option<String>, _>("lookup")?.map(crate::domain::Lookup::new),
    })
}

fn stored_key_id(row: &AnyRow, column: &'static str) -> Result<Option<KeyId>, StoreError> {
    match row.try_get::<Option<&str>, _>(column)? {
        None => Ok(None),
        Some(id) => KeyId::from_stored(id).map(Some).ok_or_else(|| corrupt(column)),
    }
}

/// A balance from its two columns (`<prefix>_remaining`, `<prefix>_period`), if any.
fn balance_of(row: &AnyRow, remaining: &str, period: &str) -> Result<Option<CreditBalance>, StoreError> {
    Ok(match row.try_get::<Option<i64>, _>(remaining)? {
        None => None,
        Some(remaining) => Some(CreditBalance { remaining, period: row.try_get(period)? }),
    })
}

/// An owner from a row that names its columns (alone, or joined to a key's).
fn owner_from_row(row: &AnyRow, id: &str, terms: &str, updated_at: &str, credits: &str) -> Result<Owner, StoreError> {
    let stored = match row.try_get::<Option<&str>, _>(terms)? {
        None => KeyTerms::default(),
        Some(text) => StoredTerms::read(text).ok_or_else(|| corrupt("owners.terms"))?,
    };
    Ok(Owner {
        account_id: AccountId::parse(row.try_get("account_id")?).map_err(|_| corrupt("owners.account_id"))?,
        id: OwnerId::parse(row.try_get(id)?).map_err(|_| corrupt("owners.owner_id"))?,
        limits: stored.limits,
        refill: stored.refill,
        credits: balance_of(row, &format!("{credits}_remaining"), &format!("{credits}_period"))?,
        updated_at: Timestamp::from_millis(row.try_get(updated_at)?),
    })
}

/// A key's terms as the `terms` column holds them (JSON), written and read only here.
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct StoredTerms {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    limits: Vec<StoredLimit>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    allowed_networks: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    metadata: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refill: Option<StoredRefill>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredLimit {
    name: String,
    limit: u32,
    window_seconds: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    route: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredRefill {
    amount: i64,
    interval: String,
    mode: String,
}

impl StoredTerms {
    /// `None` for terms that carry nothing: the column stays NULL.
    fn write(terms: &KeyTerms) -> Option<String> {
        if *terms == KeyTerms::default() {
            return None;
        }
        let stored = StoredTerms {
            limits: terms
                .limits
                .iter()
                .map(|l| StoredLimit {
                    name: l.name.to_string(),
                    limit: l.limit,
                    window_seconds: l.window.as_secs(),
                    route: l.route.as_deref().unwrap_or_default().to_owned(),
                })
                .collect(),
            allowed_networks: terms.allowed_networks.iter().map(ToString::to_string).collect(),
            metadata: terms.metadata.as_ref().map(|m| m.as_json().to_owned()),
            refill: terms.refill.map(|r| StoredRefill {
                amount: r.amount,
                interval: r.interval_str(),
                mode: r.mode_str().to_owned(),
            }),
        };
        Some(serde_json::to_string(&stored).expect("terms serialize"))
    }

    /// Through the same parsers and checks as the admin API: a row keygate did not write
    /// is corrupt.
    fn read(text: &str) -> Option<KeyTerms> {
        let stored: StoredTerms = serde_json::from_str(text).ok()?;
        let terms = KeyTerms {
            limits: stored
                .limits
                .iter()
                .map(|l| KeyLimit::parse(&l.name, l.limit, l.window_seconds, &l.route).ok())
                .collect::<Option<_>>()?,
            allowed_networks: stored.allowed_networks.iter().map(|n| Network::parse(n).ok()).collect::<Option<_>>()?,
            metadata: match &stored.metadata {
                None => None,
                Some(json) => Some(Metadata::parse(json).ok()?),
            },
            refill: match &stored.refill {
                None => None,
                Some(r) => Some(Refill::parse(r.amount, &r.interval, &r.mode).ok()?),
            },
        };
        terms.check().ok()?;
        Some(terms)
    }
}

fn audit_from_row(row: &AnyRow) -> Result<AuditEvent, StoreError> {
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

fn insert_audit(event: &AuditEvent) -> sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments<'_>> {
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

/// A SHA-256 digest stored as 64 hex digits.
fn digest_from_hex(digest_hex: &str, column: &'static str) -> Result<[u8; 32], StoreError> {
    crate::domain::from_hex(digest_hex).ok_or_else(|| corrupt(column))
}

fn admin_token_from_row(row: &AnyRow) -> Result<AdminTokenRecord, StoreError> {
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

fn session_from_row(row: &AnyRow) -> Result<SessionRecord, StoreError> {
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

fn scopes_json(scopes: &Scopes) -> String {
    serde_json::to_string(&scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>()).expect("strings serialize")
}

fn application_ids_json(ids: &[ApplicationId]) -> String {
    serde_json::to_string(&ids.iter().map(|s| s.as_str()).collect::<Vec<_>>()).expect("strings serialize")
}

const INSERT_KEY: &str = "INSERT INTO api_keys (id, account_id, kind, runtime_of, name, scopes, application_ids, \
     secret_hash, created_at, updated_at, expires_at, revoked_at, retire_at, revoked_reason, version, disabled, terms, \
     owner_id, rolled_from, rolled_to, lookup) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21)";

/// An imported key, unless a unique index (its id, or its lookup or import_ref within its
/// account) already holds it: the conflict is found by the indexes themselves, whatever the
/// planner thinks of the table's size. Another account's key never conflicts.
const INSERT_IMPORTED_KEY: &str = "INSERT INTO api_keys (id, account_id, kind, runtime_of, name, scopes, \
     application_ids, secret_hash, created_at, updated_at, expires_at, revoked_at, retire_at, revoked_reason, \
     version, disabled, terms, owner_id, rolled_from, rolled_to, lookup, import_ref, import_id) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23) \
     ON CONFLICT DO NOTHING RETURNING id";

fn insert_key(key: &KeyRecord) -> sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments<'_>> {
    bind_key(sqlx::query(INSERT_KEY), key)
}

/// Binds `$1`..`$21` of [`INSERT_KEY`] (and of [`INSERT_IMPORTED_KEY`]).
fn bind_key<'q>(
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

/// The refill rule as `key_credits.refill` holds it.
fn refill_spec(refill: Option<&Refill>) -> String {
    refill.map_or_else(String::new, |r| format!("{}/{}/{}", r.amount, r.interval_str(), r.mode_str()))
}

/// Sets (or, with `None`, removes) a holder's credits, counted under `refill`.
async fn set_credits(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    holder: &CreditHolder,
    balance: Option<CreditBalance>,
    refill: Option<&Refill>,
) -> Result<(), StoreError> {
    match balance {
        Some(balance) => {
            sqlx::query(
                "INSERT INTO key_credits (key_id, remaining, period, refill) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (key_id) DO UPDATE SET remaining = excluded.remaining, period = excluded.period, \
                 refill = excluded.refill",
            )
            .bind(holder.stored())
            .bind(balance.remaining)
            .bind(balance.period)
            .bind(refill_spec(refill))
            .execute(&mut **tx)
            .await?;
        }
        None => {
            sqlx::query("DELETE FROM key_credits WHERE key_id = $1").bind(holder.stored()).execute(&mut **tx).await?;
        }
    }
    Ok(())
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

/// A key as the transaction `tx` sees it.
async fn key_in(tx: &mut sqlx::Transaction<'_, sqlx::Any>, id: KeyId) -> Result<Option<KeyRecord>, StoreError> {
    sqlx::query(&format!("{KEY_SELECT} WHERE api_keys.id = $1"))
        .bind(id.to_string())
        .fetch_optional(&mut **tx)
        .await?
        .map(|row| key_from_row(&row))
        .transpose()
}

/// An owner as the transaction `tx` sees it.
async fn owner_in(
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

/// A key rolled into `key` and still in its overlap stands in for it, so it follows every
/// change of it (enabled or not, scopes, applications, expiry, owner, limits, allowlist,
/// metadata, refill) in the transaction that made it: disabling or narrowing the successor
/// reaches the old credential at once. Its version moves, so every replica's cache hears
/// of it as of the successor (and the admin call's barrier covers it).
async fn follow_successor(
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
async fn retire_predecessors(
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

/// Deletes the keys `condition` (on `$1`) selects, with what hangs off them (credits,
/// usage), and an audit event each; `false` if there were none.
async fn delete_keys(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    condition: &str,
    value: String,
    audit: &AuditEvent,
    deleted: &mut Deleted,
) -> Result<bool, StoreError> {
    for table in ["key_credits", "key_usage"] {
        sqlx::query(&format!(
            "DELETE FROM {table} WHERE key_id IN (SELECT api_keys.id FROM api_keys WHERE {condition})"
        ))
        .bind(&value)
        .execute(&mut **tx)
        .await?;
    }
    let rows = sqlx::query(&format!("DELETE FROM api_keys WHERE {condition} RETURNING id"))
        .bind(&value)
        .fetch_all(&mut **tx)
        .await?;
    for row in &rows {
        let id = stored_key_id(row, "id")?.ok_or_else(|| corrupt("api_keys.id"))?;
        let event = if audit.action == AuditAction::ApiKeyDelete && audit.target == id.to_string() {
            audit.clone()
        } else {
            audit.for_object(AuditAction::ApiKeyDelete, id.to_string())?
        };
        insert_audit(&event).execute(&mut **tx).await?;
        deleted.keys.push(id);
    }
    Ok(!rows.is_empty())
}

#[async_trait::async_trait]
impl Records for SqlStore {
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

    #[tracing::instrument(skip_all, fields(key_id = %id), err)]
    async fn key(&self, id: KeyId) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        sqlx::query(&format!("{KEY_SELECT} WHERE api_keys.id = $1"))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .map(|row| key_from_row(&row).map(Arc::new))
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

#[async_trait::async_trait]
impl KeyUse for SqlStore {
    #[tracing::instrument(skip_all, fields(keys = uses.len()), err)]
    async fn record_key_usage(&self, uses: &[(KeyId, Timestamp)]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for (id, at) in uses {
            sqlx::query(
                "INSERT INTO key_usage (key_id, last_used_at) VALUES ($1, $2) \
                 ON CONFLICT (key_id) DO UPDATE SET last_used_at = CASE \
                   WHEN excluded.last_used_at > key_usage.last_used_at THEN excluded.last_used_at \
                   ELSE key_usage.last_used_at END",
            )
            .bind(id.to_string())
            .bind(at.as_millis())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    #[tracing::instrument(skip_all, err)]
    async fn spend_credits(
        &self,
        holder: &CreditHolder,
        cost: i64,
        refill: Option<&Refill>,
        now: Timestamp,
    ) -> Result<Spend, StoreError> {
        let id = holder.stored();
        let lane = self.spending.lane(&id);
        let (answer, mut answered) = tokio::sync::oneshot::channel();
        let waiter = Waiter { id, cost, refill: refill.copied(), now, answer };
        lane.waiting.lock().unwrap_or_else(|e| e.into_inner()).push(waiter);
        let turn = lane.turn.clone().lock_owned().await;
        // Whoever took this call's spend answered it before giving up the turn; if nobody
        // did, it is still waiting and this call takes the lane's whole queue.
        if let Ok(answer) = answered.try_recv() {
            return answer;
        }
        let batch = std::mem::take(&mut *lane.waiting.lock().unwrap_or_else(|e| e.into_inner()));
        // The batch runs on its own task: the calls in it (other keys' among them) are
        // answered even if this call's deadline passes and its future is dropped.
        let store = self.clone();
        tokio::spawn(async move {
            match store.spending.slots.acquire().await {
                Ok(_slot) => store.spend_batch(batch).await,
                Err(_) => batch.into_iter().for_each(|w| drop(w.answer.send(Err(corrupt("the spend slots closed"))))),
            }
            drop(turn);
        });
        // Not answered: the call that took it was abandoned (its deadline passed) mid-spend.
        answered.await.unwrap_or_else(|_| {
            Err(StoreError::Unavailable(Box::new(std::io::Error::other("the credit spend was abandoned"))))
        })
    }

    #[tracing::instrument(skip_all, fields(key_id = %id), err)]
    async fn adopt_imported(
        &self,
        id: KeyId,
        old: &SecretHash,
        new: &SecretHash,
        lookup: &str,
        digest: &VerifiedDigest,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE api_keys SET secret_hash = $3, lookup = $4, verified_digest = $5 \
             WHERE id = $1 AND secret_hash = $2",
        )
        .bind(id.to_string())
        .bind(old.expose_phc())
        .bind(new.expose_phc())
        .bind(lookup)
        .bind(digest.to_hex())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Not a change of the key (no version bump, no audit event), but on Postgres the
    /// row's trigger still tells every replica to reload it, digest included.
    #[tracing::instrument(skip_all, fields(key_id = %id), err)]
    async fn remember_verified(&self, id: KeyId, hash: &SecretHash, digest: &VerifiedDigest) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE api_keys SET verified_digest = $1 WHERE id = $2 AND secret_hash = $3 \
             AND (verified_digest IS NULL OR verified_digest <> $1)",
        )
        .bind(digest.to_hex())
        .bind(id.to_string())
        .bind(hash.expose_phc())
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl AdminStore for SqlStore {
    /// The decision's read: the store holds no cache.
    async fn key_as_stored(&self, id: KeyId) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        self.key(id).await
    }

    #[tracing::instrument(skip_all, fields(application_id = %app.id), err)]
    async fn create_application(&self, app: &Application, audit: &AuditEvent) -> Result<(), StoreError> {
        let mut tx = self.admin_pool.begin().await?;
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

    #[tracing::instrument(skip_all, fields(key_id = %key.id), err)]
    async fn create_key(&self, key: &KeyRecord, audit: &AuditEvent) -> Result<(), StoreError> {
        let mut tx = self.admin_pool.begin().await?;
        insert_key(key).execute(&mut *tx).await?;
        if key.credits.is_some() {
            set_credits(&mut tx, &CreditHolder::Key(key.id), key.credits, key.terms.refill.as_ref()).await?;
        }
        insert_audit(audit).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(key_id = %new.id), err)]
    async fn rotate_runtime_key(
        &self,
        new: &KeyRecord,
        retire_at: Timestamp,
        audit: &AuditEvent,
    ) -> Result<Vec<KeyId>, StoreError> {
        let application = new.application_ids.first().ok_or_else(|| corrupt("a runtime key names its application"))?;
        let mut tx = self.admin_pool.begin().await?;
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

    #[tracing::instrument(skip_all, fields(session_id = %session.id), err)]
    async fn create_session(&self, session: &SessionRecord, audit: &AuditEvent) -> Result<(), StoreError> {
        let mut tx = self.admin_pool.begin().await?;
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

    #[tracing::instrument(skip_all, fields(session_id = %id), err)]
    async fn revoke_session(
        &self,
        id: SessionId,
        now: Timestamp,
        audit: &AuditEvent,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let mut tx = self.admin_pool.begin().await?;
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
        let rows = sqlx::query(&format!(
            "{KEY_SELECT} WHERE api_keys.account_id = $1 AND kind = 'api_key' AND api_keys.id > $2 \
             AND ($3 = '' OR lower(name) LIKE $3 ESCAPE '\\' OR lower(api_keys.id) LIKE $3 ESCAPE '\\') \
             AND ($5 = '' OR api_keys.owner_id = $5) AND ($6 = '' OR api_keys.id <= $6) \
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
        let mut tx = self.admin_pool.begin().await?;
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
                sqlx::query("UPDATE api_keys SET terms = $2 WHERE id = $1")
                    .bind(id.to_string())
                    .bind(StoredTerms::write(&changes.terms_after(&key.terms)))
                    .execute(&mut *tx)
                    .await?;
                if let Some(credits) = changes.credits {
                    let refill = credits.and_then(|c| c.refill);
                    set_credits(&mut tx, &CreditHolder::Key(id), credits.map(|c| c.balance(now)), refill.as_ref())
                        .await?;
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
        let mut tx = self.admin_pool.begin().await?;
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

    #[tracing::instrument(skip_all, fields(application_id = %id), err)]
    async fn rename_application(
        &self,
        id: &ApplicationId,
        name: &Name,
        audit: &AuditEvent,
    ) -> Result<Option<Application>, StoreError> {
        let mut tx = self.admin_pool.begin().await?;
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

    #[tracing::instrument(skip_all, fields(key_id = %old, new_key_id = %new.id), err)]
    async fn roll_key(
        &self,
        new: &KeyRecord,
        old: KeyId,
        retire_at: Timestamp,
        audit: &AuditEvent,
    ) -> Result<RollOutcome, StoreError> {
        let now = new.created_at;
        let mut tx = self.admin_pool.begin().await?;
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

    #[tracing::instrument(skip_all, err)]
    async fn delete(&self, target: &Deletion, audit: &AuditEvent) -> Result<Deleted, StoreError> {
        let now = audit.occurred_at;
        let mut deleted = Deleted::default();
        let mut tx = self.begin_unbounded().await?;
        match target {
            Deletion::Key(id) => {
                if !delete_keys(&mut tx, "api_keys.id = $1", id.to_string(), audit, &mut deleted).await? {
                    return Ok(deleted);
                }
                // A key overlapping this one (rolled to it) spent its balance, which is gone:
                // its overlap ends now rather than running unmetered.
                deleted.changed_keys = retire_predecessors(&mut tx, *id, now).await?;
            }
            Deletion::Application { id, cascade } => {
                // The application's row first, as a rotation takes it: rotations and this
                // deletion of one application serialize (and SQLite's write lock is taken).
                sqlx::query("UPDATE applications SET runtime_rotations = runtime_rotations WHERE id = $1")
                    .bind(id.as_str())
                    .execute(&mut *tx)
                    .await?;
                let Some(app) = sqlx::query("SELECT account_id FROM applications WHERE id = $1")
                    .bind(id.as_str())
                    .fetch_optional(&mut *tx)
                    .await?
                else {
                    return Ok(deleted);
                };
                let account: String = app.try_get("account_id")?;
                // The application's runtime keys go with it.
                delete_keys(&mut tx, "runtime_of = $1", id.as_str().to_owned(), audit, &mut deleted).await?;
                let rows =
                    sqlx::query("SELECT id, application_ids FROM api_keys WHERE account_id = $1 AND kind = 'api_key'")
                        .bind(&account)
                        .fetch_all(&mut *tx)
                        .await?;
                let mut naming = Vec::new();
                for row in rows {
                    let apps: Vec<String> = serde_json::from_str(row.try_get("application_ids")?)
                        .map_err(|_| corrupt("api_keys.application_ids"))?;
                    if apps.iter().any(|a| a == id.as_str()) {
                        let key = stored_key_id(&row, "id")?.ok_or_else(|| corrupt("api_keys.id"))?;
                        naming.push((key, apps));
                    }
                }
                if !cascade && !naming.is_empty() {
                    tx.rollback().await?;
                    return Ok(Deleted {
                        blocked_by: naming.into_iter().map(|(k, _)| k).collect(),
                        ..Deleted::default()
                    });
                }
                for (key, apps) in naming {
                    let left: Vec<&String> = apps.iter().filter(|a| *a != id.as_str()).collect();
                    if left.is_empty() {
                        delete_keys(&mut tx, "api_keys.id = $1", key.to_string(), audit, &mut deleted).await?;
                        deleted.changed_keys.extend(retire_predecessors(&mut tx, key, now).await?);
                    } else {
                        sqlx::query(
                            "UPDATE api_keys SET application_ids = $2, updated_at = $3, version = version + 1 \
                             WHERE id = $1",
                        )
                        .bind(key.to_string())
                        .bind(serde_json::to_string(&left).expect("strings serialize"))
                        .bind(now.as_millis())
                        .execute(&mut *tx)
                        .await?;
                        let mut event = audit.for_object(AuditAction::ApiKeyUpdate, key.to_string())?;
                        event.detail = serde_json::json!({ "application_ids": left, "cause": audit.action.as_str() });
                        insert_audit(&event).execute(&mut *tx).await?;
                        deleted.changed_keys.push(key);
                    }
                }
                sqlx::query("DELETE FROM applications WHERE id = $1").bind(id.as_str()).execute(&mut *tx).await?;
                deleted.applications.push(id.clone());
                insert_audit(audit).execute(&mut *tx).await?;
            }
            Deletion::Account(account) => {
                let account = account.as_str();
                delete_keys(&mut tx, "api_keys.account_id = $1", account.to_owned(), audit, &mut deleted).await?;
                let owners = sqlx::query("DELETE FROM owners WHERE account_id = $1 RETURNING owner_id")
                    .bind(account)
                    .fetch_all(&mut *tx)
                    .await?;
                for row in owners {
                    let owner = OwnerId::parse(row.try_get("owner_id")?).map_err(|_| corrupt("owners.owner_id"))?;
                    sqlx::query("DELETE FROM key_credits WHERE key_id = $1")
                        .bind(CreditHolder::Owner(AccountId::parse(account).expect("checked"), owner.clone()).stored())
                        .execute(&mut *tx)
                        .await?;
                    insert_audit(&audit.for_object(AuditAction::OwnerDelete, owner.as_str())?)
                        .execute(&mut *tx)
                        .await?;
                    deleted.owners.push(owner);
                }
                let sessions = sqlx::query("DELETE FROM sessions WHERE account_id = $1 RETURNING id")
                    .bind(account)
                    .fetch_all(&mut *tx)
                    .await?;
                for row in sessions {
                    let id = SessionId::parse(row.try_get("id")?).map_err(|_| corrupt("sessions.id"))?;
                    insert_audit(&audit.for_object(AuditAction::SessionDelete, id.to_string())?)
                        .execute(&mut *tx)
                        .await?;
                    deleted.sessions.push(id);
                }
                let applications = sqlx::query("DELETE FROM applications WHERE account_id = $1 RETURNING id")
                    .bind(account)
                    .fetch_all(&mut *tx)
                    .await?;
                for row in applications {
                    let id = ApplicationId::parse(row.try_get("id")?).map_err(|_| corrupt("applications.id"))?;
                    insert_audit(&audit.for_object(AuditAction::ApplicationDelete, id.as_str())?)
                        .execute(&mut *tx)
                        .await?;
                    deleted.applications.push(id);
                }
                insert_audit(audit).execute(&mut *tx).await?;
            }
        }
        tx.commit().await?;
        Ok(deleted)
    }

    #[tracing::instrument(skip_all, fields(keys = keys.len()), err)]
    async fn import_keys(
        &self,
        import_id: &str,
        keys: &[ImportedKey],
        audit: &AuditEvent,
    ) -> Result<Vec<Imported>, StoreError> {
        let mut tx = self.begin_unbounded().await?;
        let mut outcomes = Vec::with_capacity(keys.len());
        // Already there (a re-run) or held by another key: told apart below, once.
        let mut refused = Vec::new();
        for key in keys {
            let record = &key.record;
            let inserted = bind_key(sqlx::query(INSERT_IMPORTED_KEY), record)
                .bind(&key.import_ref)
                .bind(import_id)
                .fetch_optional(&mut *tx)
                .await?;
            if inserted.is_none() {
                refused.push((outcomes.len(), key.import_ref.as_str(), record.account_id.as_str()));
                outcomes.push(Imported::Conflict);
                continue;
            }
            let mut event = audit.for_object(AuditAction::ApiKeyImport, record.id.to_string())?;
            event.account_id = record.account_id.clone();
            insert_audit(&event).execute(&mut *tx).await?;
            outcomes.push(Imported::Created(record.id));
        }
        // A key this import brought before, into the same account, is `AlreadyImported`;
        // anything else is a conflict within the account (keys are unique per account:
        // another account's never conflicts, nor is its id told).
        for chunk in refused.chunks(500) {
            let placeholders: Vec<String> = (2..chunk.len() + 2).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT id, import_ref, account_id FROM api_keys WHERE import_id = $1 AND import_ref IN ({})",
                placeholders.join(", ")
            );
            let mut query = sqlx::query(&sql).bind(import_id);
            for (_, import_ref, _) in chunk {
                query = query.bind(*import_ref);
            }
            for row in query.fetch_all(&mut *tx).await? {
                let id = stored_key_id(&row, "id")?.ok_or_else(|| corrupt("api_keys.id"))?;
                let (import_ref, account): (&str, &str) = (row.try_get("import_ref")?, row.try_get("account_id")?);
                for (index, _, _) in chunk.iter().filter(|(_, r, a)| *r == import_ref && *a == account) {
                    outcomes[*index] = Imported::AlreadyImported(id);
                }
            }
        }
        tx.commit().await?;
        Ok(outcomes)
    }

    #[tracing::instrument(skip_all, fields(account_id = %account, owner_id = %id), err)]
    async fn set_owner(
        &self,
        account: &AccountId,
        id: &OwnerId,
        changes: &OwnerChanges,
        now: Timestamp,
        audit: &AuditEvent,
    ) -> Result<(Owner, Vec<KeyId>), StoreError> {
        let mut tx = self.admin_pool.begin().await?;
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

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn close(&self) {
        self.admin_pool.close().await;
        self.pool.close().await;
    }
}

impl SqlStore {
    /// Spends every waiter's cost, per key in arrival order, in **one transaction** (one
    /// commit, one fsync, for the whole batch), and answers each only once it committed:
    /// a call is never told it spent what a rolled-back transaction did not. Keys are
    /// spent in id order, so two replicas' batches take row locks in the same order.
    async fn spend_batch(&self, batch: Vec<Waiter>) {
        // A call whose caller gave up (its deadline passed while it waited) spends nothing.
        let mut batch: Vec<Waiter> = batch.into_iter().filter(|w| !w.answer.is_closed()).collect();
        if batch.is_empty() {
            return;
        }
        batch.sort_by(|a, b| a.id.cmp(&b.id));
        let mut answers: Vec<(Waiter, Spend)> = Vec::with_capacity(batch.len());
        // A batch on one key needs no transaction: its one UPDATE commits itself (and when
        // the calls are spent one by one, each is answered by its own commit).
        let one_key = batch.first().is_some_and(|f| batch.iter().all(|w| w.id == f.id && w.refill == f.refill));
        let spent: Result<(), StoreError> = async {
            let mut tx = if one_key {
                Spender::Alone(self.pool.acquire().await?)
            } else {
                Spender::Batch(self.pool.begin().await?)
            };
            while let Some(first) = batch.first() {
                let (id, refill) = (first.id.clone(), first.refill);
                // Calls on one key under one refill rule (a rule changed mid-batch is its own
                // group); the stable sort kept their arrival order.
                let (group, rest): (Vec<_>, Vec<_>) =
                    std::mem::take(&mut batch).into_iter().partition(|w| w.id == id && w.refill == refill);
                let id = id.as_str();
                batch = rest;
                // One instant for the group: the latest call's, so a refill due for any is applied.
                let now = group.iter().map(|w| w.now).max().unwrap_or(Timestamp::from_millis(0));
                let total: i64 = group.iter().map(|w| w.cost).sum();
                let all_at_once = match spend_once(tx.connection(), id, total, refill.as_ref(), now).await {
                    Ok(spent) => spent,
                    Err(e) => {
                        batch.extend(group);
                        return Err(e);
                    }
                };
                match all_at_once {
                    Spend::Spent(after) => {
                        // Each call's balance is what was left after it, in arrival order.
                        let mut left = after.remaining + total;
                        for waiter in group {
                            left -= waiter.cost;
                            answers.push((waiter, Spend::Spent(CreditBalance { remaining: left, ..after })));
                        }
                    }
                    // Not all fit: one by one, so the last credits go to the earliest calls.
                    Spend::Exhausted(_) if group.len() > 1 => {
                        let mut group = group.into_iter();
                        while let Some(waiter) = group.next() {
                            // Gone meanwhile: it spends nothing (and its credit is not
                            // briefly missing for the calls after it).
                            if waiter.answer.is_closed() {
                                continue;
                            }
                            match spend_once(tx.connection(), id, waiter.cost, refill.as_ref(), now).await {
                                Ok(spent) => answers.push((waiter, spent)),
                                Err(e) => {
                                    batch.push(waiter);
                                    batch.extend(group);
                                    return Err(e);
                                }
                            }
                        }
                    }
                    other => answers.extend(group.into_iter().map(|w| (w, other))),
                }
            }
            if let Spender::Batch(tx) = tx {
                tx.commit().await?;
            }
            Ok(())
        }
        .await;
        let committed = match &spent {
            Ok(()) => answers,
            // Spent one by one, each by its own commit: those before the failure stand.
            Err(_) if one_key => answers,
            Err(_) => {
                batch.extend(answers.into_iter().map(|(w, _)| w));
                Vec::new()
            }
        };
        if let Err(e) = &spent {
            tracing::warn!(calls = batch.len(), error = %e, "spending credits failed; these calls spent nothing");
            for waiter in batch {
                let _ = waiter.answer.send(Err(spend_failed(e)));
            }
        }
        // A call whose caller gave up while its spend ran (its deadline passed) was refused:
        // what it spent goes back.
        let mut abandoned = Vec::new();
        for (waiter, spent) in committed {
            let Waiter { id, cost, refill, answer, .. } = waiter;
            if let Err(Ok(Spend::Spent(after))) = answer.send(Ok(spent)) {
                abandoned.push(Abandoned { id, cost, refill, period: after.period });
            }
        }
        if !abandoned.is_empty() {
            self.refund(&abandoned).await;
        }
    }

    /// Gives back what calls nobody heard were admitted spent, capped at the most a
    /// balance holds. Under a `to` refill, only
    /// within the period it was spent in: a refill since then set the balance anew. Runs
    /// before this replica's next batch on the lane, so none of its calls decides on a
    /// balance the refund is about to change (another replica's may).
    async fn refund(&self, abandoned: &[Abandoned]) {
        for Abandoned { id, cost, refill, period } in abandoned {
            let adds = refill.is_some_and(|r| r.mode == RefillMode::Add);
            let refunded = sqlx::query(
                "UPDATE key_credits SET remaining = CASE WHEN remaining + $2 > $5 THEN $5 ELSE remaining + $2 END \
                 WHERE key_id = $1 AND refill = $3 AND ($6 = 1 OR period = $4)",
            )
            .bind(id.as_str())
            .bind(*cost)
            .bind(refill_spec(refill.as_ref()))
            .bind(*period)
            .bind(CreditBalance::MAX)
            .bind(i32::from(adds))
            .execute(&self.pool)
            .await;
            if let Err(e) = refunded {
                tracing::warn!(error = %e, "credits spent by a call nobody was answered for were not given back");
            }
        }
    }
}

/// A spend that committed for a call whose caller had gone: given back.
struct Abandoned {
    /// The holder, as `key_credits.key_id` names it.
    id: String,
    cost: i64,
    refill: Option<Refill>,
    /// The refill period it was spent in.
    period: i64,
}

/// Where a batch spends: a connection of its own (one key), or a transaction (several).
enum Spender {
    Alone(sqlx::pool::PoolConnection<sqlx::Any>),
    Batch(sqlx::Transaction<'static, sqlx::Any>),
}

impl Spender {
    fn connection(&mut self) -> &mut sqlx::AnyConnection {
        match self {
            Spender::Alone(connection) => connection,
            Spender::Batch(tx) => tx,
        }
    }
}

/// One conditional UPDATE: the row lock (Postgres) or the write lock (SQLite) makes the
/// check and the spend one step, so two replicas never spend the last credit twice. The
/// refill is computed in the same statement, as Refill::refilled does.
async fn spend_once(
    conn: &mut sqlx::AnyConnection,
    id: &str,
    cost: i64,
    refill: Option<&Refill>,
    now: Timestamp,
) -> Result<Spend, StoreError> {
    let (period, amount, add) = match refill {
        Some(r) => (r.period(now), r.amount, r.mode == RefillMode::Add),
        // No refill: no stored period is ever older than i64::MIN.
        None => (i64::MIN, 0, false),
    };
    let refilled = if add {
        "CASE WHEN period < $3 THEN CASE WHEN remaining + $4 * ($3 - period) > $5 THEN $5 \
               ELSE remaining + $4 * ($3 - period) END ELSE remaining END"
    } else {
        "CASE WHEN period < $3 THEN $4 ELSE remaining END"
    };
    let sql = format!(
        "UPDATE key_credits SET remaining = ({refilled}) - $2, \
               period = CASE WHEN period < $3 THEN $3 ELSE period END \
             WHERE key_id = $1 AND refill = $6 AND ({refilled}) >= $2 \
             RETURNING remaining, period"
    );
    let spent = sqlx::query(&sql)
        .bind(id)
        .bind(cost)
        .bind(period)
        .bind(amount)
        .bind(CreditBalance::MAX)
        .bind(refill_spec(refill))
        .fetch_optional(&mut *conn)
        .await?;
    let balance = |row: &AnyRow| -> Result<CreditBalance, StoreError> {
        Ok(CreditBalance { remaining: row.try_get("remaining")?, period: row.try_get("period")? })
    };
    if let Some(row) = spent {
        return Ok(Spend::Spent(balance(&row)?));
    }
    let left = sqlx::query("SELECT remaining, period, refill FROM key_credits WHERE key_id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(match left {
        Some(row) if row.try_get::<&str, _>("refill")? != refill_spec(refill) => Spend::RuleChanged,
        Some(row) => Spend::Exhausted(balance(&row)?),
        None => Spend::Unmetered,
    })
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
