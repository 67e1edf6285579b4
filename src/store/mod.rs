//! Where applications and keys live, split by who waits (the SpiceDB datastore model):
//!
//! - [`Records`]: the reads a decision waits on (a key, an application, a session, the
//!   imported keys a credential may be). Bounded by the breaker, cached in memory.
//! - [`KeyUse`]: the writes the hot path makes after it has answered (credits spent, last
//!   uses, a verified digest, an imported key re-hashed).
//! - [`AdminStore`]: the rest, the admin plane's reads and writes, on its own pool, one
//!   trait a resource ([`admin`]).
//!
//! One SQL implementation serves SQLite and Postgres ([`sql::SqlStore`]); [`memory::MemoryStore`]
//! keeps the decision's side ([`Records`] + [`KeyUse`]) in process memory. A decorator
//! implements only what it changes: the cache ([`cached::CachedStore`]) the decision's
//! side, the meter and the breaker ([`metered`], [`bounded`]) a few hooks, as a
//! [`DecisionLayer`] and an [`AdminLayer`] (in [`layer`]: the table that passes each call
//! on is made from the call's definition, so no signature is spelled again), and
//! [`invalidating::Invalidating`] applies what each admin write changed to the cache.

pub mod admin;
pub mod bounded;
pub mod cached;
pub mod changes;
pub mod invalidating;
pub mod invalidation;
pub mod layer;
pub mod memory;
pub mod metered;
pub mod sql;
pub mod usage;

pub use admin::{
    AdminStore, AdminTokens, ApplicationAdmin, AuditLog, DeleteAdmin, Direct, ImportAdmin, KeyAdmin, OwnerAdmin,
    SessionAdmin,
};
use layer::layered_trait;
pub use layer::{AdminLayer, Changed, DecisionLayer};

use crate::domain::{
    AccountId, ApplicationId, CreditBalance, CreditHolder, KeyId, KeyLimit, KeyTerms, Metadata, Name, Network, OwnerId,
    Refill, Scopes, SecretHash, SessionId, Timestamp,
};
pub use crate::domain::{Application, KeyKind, KeyRecord, Owner, SessionRecord, VerifiedDigest};
use std::sync::Arc;

/// A change to a key; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct KeyChanges {
    pub name: Option<Name>,
    pub scopes: Option<Scopes>,
    pub application_ids: Option<Vec<ApplicationId>>,
    /// `Some(None)` removes the expiry.
    pub expires_at: Option<Option<Timestamp>>,
    pub disabled: Option<bool>,
    pub limits: Option<Vec<KeyLimit>>,
    pub allowed_networks: Option<Vec<Network>>,
    /// `Some(None)` removes the metadata.
    pub metadata: Option<Option<Metadata>>,
    /// `Some(None)` removes the credits (and their refill).
    pub credits: Option<Option<Credits>>,
    /// With `credits` set without a refill: the key's refill stays as it is (an update
    /// that names none keeps it; removing it is said explicitly).
    pub keep_refill: bool,
    /// `Some(None)` removes the owner.
    pub owner_id: Option<Option<OwnerId>>,
}

/// A change to an owner's shared terms; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct OwnerChanges {
    pub limits: Option<Vec<KeyLimit>>,
    /// `Some(None)` removes the shared credits.
    pub credits: Option<Option<Credits>>,
}

/// Which keys `list_keys` returns.
#[derive(Debug, Clone, Default)]
pub struct KeyFilter {
    /// Matches the name or the id, case-insensitively, as a substring.
    pub search: Option<String>,
    pub owner_id: Option<OwnerId>,
}

/// What a roll came to.
#[derive(Debug, PartialEq, Eq)]
pub enum RollOutcome {
    /// The old key as it now is (retiring at the end of the overlap) and the keys whose
    /// overlap this roll ended at once (the old key's own predecessor: no chains).
    Rolled {
        old: Box<KeyRecord>,
        ended: Vec<KeyId>,
    },
    NotFound,
    Revoked,
    /// Rolled already, to this key: a key is rolled once; roll its successor.
    AlreadyRolled(KeyId),
}

/// What to delete, for good.
#[derive(Debug, Clone)]
pub enum Deletion {
    /// The key's row, its hash, credits and usage. Its audit events stay.
    Key(KeyId),
    /// Refused while keys are restricted to it, unless `cascade`: then each such key loses
    /// it, and a key restricted to it alone is deleted (an empty list would mean every
    /// application). Its runtime keys go with it.
    Application { id: ApplicationId, cascade: bool },
    /// Every key, application, session and owner of the account. Its audit events stay.
    Account(AccountId),
}

/// What a deletion removed or changed, for caches to forget.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Deleted {
    pub keys: Vec<KeyId>,
    /// Keys that stay but lost a deleted application.
    pub changed_keys: Vec<KeyId>,
    pub applications: Vec<ApplicationId>,
    pub sessions: Vec<SessionId>,
    pub owners: Vec<OwnerId>,
    /// Nothing was deleted: these keys are restricted to the application (no cascade).
    pub blocked_by: Vec<KeyId>,
}

impl Deleted {
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
            && self.changed_keys.is_empty()
            && self.applications.is_empty()
            && self.sessions.is_empty()
            && self.owners.is_empty()
    }
}

/// A key brought from another system: its record (with `lookup` set) and the form it
/// was imported in, which re-running the import finds it by. Debug shows the record only:
/// the form is a start of the credential or a digest of it.
#[derive(Clone)]
pub struct ImportedKey {
    pub record: KeyRecord,
    pub import_ref: String,
}

impl std::fmt::Debug for ImportedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImportedKey").field("record", &self.record).field("import_ref", &"<redacted>").finish()
    }
}

/// What importing one key came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Imported {
    Created(KeyId),
    /// This import (same import id) brought it already: nothing changed.
    AlreadyImported(KeyId),
    /// Another import or key holds the same credential form: nothing changed.
    Conflict,
}

/// Credits as an operator sets them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credits {
    pub remaining: i64,
    pub refill: Option<Refill>,
}

impl Credits {
    /// The balance a key starts with at `now`: refilled in the current period.
    pub fn balance(&self, now: Timestamp) -> CreditBalance {
        CreditBalance { remaining: self.remaining, period: self.refill.map_or(0, |r| r.period(now)) }
    }
}

impl KeyChanges {
    /// The key's terms after this change: what it does not name stays. Stores apply it
    /// to the row as their transaction reads it, so concurrent updates lose nothing.
    pub fn terms_after(&self, terms: &KeyTerms) -> KeyTerms {
        let mut after = terms.clone();
        if let Some(limits) = &self.limits {
            after.limits = limits.clone();
        }
        if let Some(networks) = &self.allowed_networks {
            after.allowed_networks = networks.clone();
        }
        if let Some(metadata) = &self.metadata {
            after.metadata = metadata.clone();
        }
        if let Some(credits) = &self.credits {
            after.refill = match credits {
                Some(Credits { refill: None, .. }) if self.keep_refill => terms.refill,
                credits => credits.and_then(|c| c.refill),
            };
        }
        after
    }

    /// Whether the change touches the terms or the credits.
    pub fn touches_terms(&self) -> bool {
        self.limits.is_some() || self.allowed_networks.is_some() || self.metadata.is_some() || self.credits.is_some()
    }
}

/// What spending credits came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spend {
    /// Spent; the balance after.
    Spent(CreditBalance),
    /// Not enough left: nothing was spent.
    Exhausted(CreditBalance),
    /// The key carries no credits (they were removed): nothing to spend.
    Unmetered,
    /// The balance is counted under another refill rule than the caller's (an operator
    /// changed it, and the caller decided on the record from before): nothing was spent.
    RuleChanged,
}

#[derive(Debug, Clone)]
pub struct PageRequest {
    /// Items strictly after this id, in id order.
    pub after: Option<String>,
    pub limit: u32,
}

#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// The id to continue after; `None` on the last page.
    pub next_after: Option<String>,
}

/// What a key update can run into, besides the store failing.
#[derive(Debug, PartialEq, Eq)]
pub enum UpdateOutcome {
    Updated(Box<KeyRecord>),
    NotFound,
    Revoked,
}

/// A store failure, named without its driver: the cause travels as a source error.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached right now; retrying later may work.
    #[error("the store is unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A row says something keygate never writes.
    #[error("the store holds a corrupt row: {0}")]
    Corrupt(String),
    /// The database cut a statement short for running past its limit (Postgres's
    /// `statement_timeout`, SQLite's busy timeout). Where a write or an admin call must be
    /// retried rather than reported as keygate's failure, [`bounded`] makes it
    /// [`StoreError::Unavailable`]; elsewhere it is a failure like [`StoreError::Other`].
    #[error("store error")]
    CutShort(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("store error")]
    Other(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// An audit event's id could not be made inside a transaction: nothing is written.
impl From<getrandom::Error> for StoreError {
    fn from(e: getrandom::Error) -> Self {
        StoreError::Unavailable(Box::new(e))
    }
}

layered_trait! {
    /// The reads a decision waits on. Cached ([`cached::CachedStore`]) and bounded by the
    /// store's breaker ([`bounded::BoundedStore`]).
    pub trait Records: Send + Sync + 'static, through DecisionLayer::read {
        async fn key(&self, id: KeyId) -> Result<Option<Arc<KeyRecord>>, StoreError>;
        async fn application(&self, id: &ApplicationId) -> Result<Option<Arc<Application>>, StoreError>;
        async fn session(&self, id: SessionId) -> Result<Option<Arc<SessionRecord>>, StoreError>;
        /// The imported keys whose `lookup` is one of `lookups`, or whose `import_ref` is one of
        /// `lookups[1..]` (the form it was imported in, which finds it after a new digest key
        /// too), at most [`crate::domain::imported::MAX_CANDIDATES`]: those matching
        /// `lookups[0]` (the keyed digest) first, then each account's best match before any
        /// account's next, earliest import first.
        async fn keys_by_lookup(&self, lookups: &[String]) -> Result<Vec<Arc<KeyRecord>>, StoreError>;
    }
}

layered_trait! {
    /// The writes the hot path makes after it has answered. None is a change of what a key
    /// may do: no version, no audit event.
    pub trait KeyUse: Send + Sync + 'static, through DecisionLayer::write {
        /// Spends `cost` of a holder's credits in one atomic step (across replicas: never
        /// two calls spending the last credit), first refilling them when `refill` says a new
        /// period has begun at `now`.
        async fn spend_credits(&self, holder: &CreditHolder, cost: i64, refill: Option<&Refill>, now: Timestamp)
            -> Result<Spend, StoreError>;
        /// Raises each key's `last_used_at` to the given time (never lowers it).
        async fn record_key_usage(&self, uses: &[(KeyId, Timestamp)]) -> Result<(), StoreError>;
        /// Stores the keyed digest of a credential argon2 accepted for key `id`, if the key
        /// still has `hash` (see [`VerifiedDigest`]).
        async fn remember_verified(&self, id: KeyId, hash: &SecretHash, digest: &VerifiedDigest)
            -> Result<(), StoreError>;
        /// After an imported key's first verification: its hash becomes `new` (keygate's own),
        /// its lookup the keyed digest of the whole credential, and the verified digest is stored,
        /// if the key still has `old`.
        async fn adopt_imported(
            &self,
            id: KeyId,
            old: &SecretHash,
            new: &SecretHash,
            lookup: &str,
            digest: &VerifiedDigest,
        ) -> Result<(), StoreError>;
        provided {
            /// A decision found the record of key `id` out of step with the store (its credits'
            /// rule changed before this replica heard of it): a cache forgets it, so the next read
            /// loads it. Stores that hold nothing in memory have nothing to forget.
            fn stale_key(&self, _id: KeyId) {}
        }
    }
}

/// What a decision uses of a store: its reads and its after-writes.
pub trait DecisionStore: Records + KeyUse {}

impl<T: Records + KeyUse + ?Sized> DecisionStore for T {}

/// A whole backend: both sides. What the server is built on.
pub trait Store: DecisionStore + AdminStore {}

impl<T: DecisionStore + AdminStore + ?Sized> Store for T {}

/// A store at the bottom of the stack, which also keeps the change feed (its layers do
/// not: the feed is read from the store itself).
pub trait FeedStore: Store + changes::ChangeFeed {}

impl<T: Store + changes::ChangeFeed + ?Sized> FeedStore for T {}

/// The store as the server uses it: cache → metering → bounding → the store. The meter
/// sees timeouts and refusals as the store errors they are; the cache falls back on them
/// at once. The admin side is metered and bounded alike, reads records through the cache
/// and makes it forget what it writes.
pub struct Stack {
    /// The decision's side, and what the authenticator asks about memory.
    pub cache: Arc<cached::CachedStore>,
    pub admin: Arc<dyn AdminStore>,
    pub metrics: metered::StoreMetrics,
}

impl Stack {
    pub fn build(store: Arc<dyn Store>, breaker: Arc<crate::breaker::Breaker>, cache: cached::CacheSettings) -> Self {
        let bounded = Arc::new(bounded::BoundedStore::new(store, breaker));
        let metered = Arc::new(metered::MeteredStore::new(bounded));
        let metrics = metered.metrics();
        let cache = Arc::new(cached::CachedStore::new(metered.clone(), cache));
        let admin = Arc::new(invalidating::Invalidating::new(cache.clone(), metered));
        Self { cache, admin, metrics }
    }
}

/// What memory says about an id, before any I/O.
#[derive(Debug)]
pub enum InMemory<T> {
    /// The record, fresh.
    Fresh(Arc<T>),
    /// Known not to exist, freshly.
    Absent,
    /// A record is held but must be reloaded before it is served (it exists: reloading
    /// it is no guess).
    Stale,
    /// Only asking the store would tell.
    Unknown,
}
