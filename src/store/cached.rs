//! The caching decorator: key records by key id and applications by id, in memory.
//!
//! It caches the decision's side ([`Records`], and keeps the records it holds in step with
//! [`KeyUse`]'s writes). Admin writes through [`super::invalidating::Invalidating`] are
//! forgotten at once ([`CachedStore::forget`]), so a revoke or update is seen by the very
//! next read on this instance. Other replicas' changes arrive through [`CachedStore::invalidate_key`]
//! and friends; the TTL is only the backstop if every notification is lost. What memory
//! holds is asked of the cache itself ([`CachedStore::key_in_memory`]): the authenticator
//! holds the cache it asks.
//!
//! The race it closes: a read that loaded a record *before* a write committed must not put
//! that stale record into the cache *after* the write invalidated it. Each id hashes to a
//! shard holding an epoch; invalidation bumps the epoch under the shard's lock, and a load
//! inserts only if the epoch it saw before reading the store is still current, checked
//! under the same lock. A cache hit takes only the cache's shard read lock, never an epoch lock.
//!
//! When the store cannot be reached, a record loaded at most `ttl + max_stale` ago is
//! still served (and counted): keys already in use keep working through a short outage.
//! A record that was invalidated — changed through this replica or announced by another —
//! is gone and never served stale. [`CachedStore::distrust_all`], used when
//! notifications may have been missed, keeps records only as that fallback: every one is
//! reloaded before it is served fresh again.
//!
//! With other replicas (Postgres), memory is also trusted only under a lease ([`Trust`]):
//! the invalidation listener renews it each time it hears back its own heartbeat, which
//! proves every change committed before the heartbeat was sent has been applied here. Past
//! the lease every record is reloaded before it is served fresh, so a replica whose
//! listener has fallen behind asks the store instead of trusting what it holds (see
//! `store::invalidation` for the argument).

use super::{
    Application, Changed, DecisionStore, InMemory, KeyRecord, KeyUse, Records, SessionRecord, Spend, StoreError,
};
use crate::clock::Clock;
use crate::domain::{ApplicationId, CreditHolder, KeyId, Refill, SecretHash, SessionId, Timestamp, VerifiedDigest};
use quick_cache::sync::Cache;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

const SHARDS: usize = 64;

#[derive(Debug, Clone, Copy)]
pub struct CacheSettings {
    /// Most key records (and, separately, applications and sessions) held.
    pub capacity: u64,
    /// Backstop: no entry is served as fresh longer than this, whatever else fails.
    pub ttl: Duration,
    /// How much longer an entry may be served while the store is unreachable.
    pub max_stale: Duration,
}

/// Whether this replica may trust what it holds in memory at all.
///
/// One process alone on its store (SQLite, the in-memory store) always may: its own writes
/// invalidate its cache. Replicas sharing Postgres trust memory only until a lease ends,
/// renewed by the invalidation listener; the check on the decision path is one atomic load
/// and, for a leased replica, one read of the injected clock.
pub struct Trust {
    /// Milliseconds on `clock` until which memory is trusted; `i64::MAX` when not leased.
    until: AtomicI64,
    clock: OnceLock<Arc<dyn Clock>>,
}

impl Trust {
    fn always() -> Self {
        Self { until: AtomicI64::new(i64::MAX), clock: OnceLock::new() }
    }

    /// From now on memory is trusted only under a lease, and not before the first renewal.
    pub fn lease(&self, clock: Arc<dyn Clock>) {
        // A second call keeps the first clock: there is one listener per cache.
        let _ = self.clock.set(clock);
        self.until.store(0, Ordering::Release);
    }

    /// Trusts memory until `until` (milliseconds on the lease's clock), unless it already
    /// trusts it for longer: renewals may be handled out of order.
    pub fn renew(&self, until: i64) {
        self.until.fetch_max(until, Ordering::AcqRel);
    }

    /// Milliseconds on the lease's clock until which memory is trusted (`i64::MAX`: always).
    pub fn until_millis(&self) -> i64 {
        self.until.load(Ordering::Acquire)
    }

    pub fn holds(&self) -> bool {
        let until = self.until.load(Ordering::Acquire);
        until == i64::MAX || self.clock.get().is_some_and(|clock| clock.now().as_millis() < until)
    }
}

/// A cached value and when (and under which generation) it was loaded.
#[derive(Clone)]
struct Stamped<V> {
    value: V,
    loaded_at: Instant,
    generation: u64,
}

impl<V> Stamped<V> {
    /// `trusted`: the replica's lease on its memory holds ([`Trust::holds`]).
    fn fresh(&self, generation: u64, ttl: Duration, trusted: bool) -> bool {
        trusted && self.generation == generation && self.loaded_at.elapsed() < ttl
    }
}

/// A cache whose loads cannot resurrect what an invalidation removed. Ids the store does
/// not know are remembered apart, in a cache of their own: a flood of forged ids can fill
/// that one, never push real records out of this one.
struct GuardedCache<K, T> {
    entries: Cache<K, Stamped<Arc<T>>>,
    absent: Cache<K, Stamped<()>>,
    epochs: Box<[Mutex<u64>]>,
    /// One load at a time per record: a burst of misses for one record (a new key's first
    /// calls, or every call after a change invalidated it) becomes one store read, not a
    /// herd that queues on the pool and trips the store's breaker. Per record, so a slow
    /// load never holds up another record's. Entries live only while a load is under way.
    loading: Mutex<std::collections::HashMap<K, Arc<tokio::sync::Mutex<()>>>>,
    hasher: std::collections::hash_map::RandomState,
    /// Bumped by `distrust_all`: entries of older generations are not fresh.
    generation: AtomicU64,
    /// Shared by the caches of one store: past the lease nothing in them is fresh.
    trust: Arc<Trust>,
    ttl: Duration,
    max_stale: Duration,
    served_stale: Arc<AtomicU64>,
    /// Lookups answered from memory, and those that went to the store.
    hits: AtomicU64,
    misses: AtomicU64,
}

/// A place in the line of loads for one record; leaving it removes the line once empty.
struct LoadTurn<'c, K: Hash + Eq + Clone> {
    lines: &'c Mutex<std::collections::HashMap<K, Arc<tokio::sync::Mutex<()>>>>,
    key: K,
    gate: Arc<tokio::sync::Mutex<()>>,
}

impl<'c, K: Hash + Eq + Clone> LoadTurn<'c, K> {
    fn take(lines: &'c Mutex<std::collections::HashMap<K, Arc<tokio::sync::Mutex<()>>>>, key: &K) -> Self {
        let gate = lines.lock().unwrap_or_else(|e| e.into_inner()).entry(key.clone()).or_default().clone();
        Self { lines, key: key.clone(), gate }
    }
}

impl<K: Hash + Eq + Clone> Drop for LoadTurn<'_, K> {
    fn drop(&mut self) {
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        // Only the map's and this turn's: nobody else is in line (clones are taken under
        // this same lock).
        if Arc::strong_count(&self.gate) == 2 {
            lines.remove(&self.key);
        }
    }
}

impl<K, T> GuardedCache<K, T>
where
    K: Hash + Eq + Send + Sync + Clone + 'static,
    T: Send + Sync + 'static,
{
    fn new(settings: CacheSettings, served_stale: Arc<AtomicU64>, trust: Arc<Trust>) -> Self {
        let capacity = usize::try_from(settings.capacity).unwrap_or(usize::MAX);
        Self {
            // Entries outlive their freshness (each carries its load time, checked on every
            // read): as the fallback through a store outage. Capacity bounds them.
            entries: Cache::new(capacity),
            absent: Cache::new(capacity),
            epochs: (0..SHARDS).map(|_| Mutex::new(0)).collect(),
            loading: Mutex::new(std::collections::HashMap::new()),
            hasher: Default::default(),
            generation: AtomicU64::new(0),
            trust,
            ttl: settings.ttl,
            max_stale: settings.max_stale,
            served_stale,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn shard(&self, key: &K) -> &Mutex<u64> {
        &self.epochs[self.hasher.hash_one(key) as usize % SHARDS]
    }

    fn epoch(&self, key: &K) -> u64 {
        *self.shard(key).lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What memory says, without loading.
    fn in_memory(&self, key: &K) -> InMemory<T> {
        let generation = self.generation.load(Ordering::Acquire);
        let trusted = self.trust.holds();
        match self.entries.get(key) {
            Some(entry) if entry.fresh(generation, self.ttl, trusted) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                InMemory::Fresh(entry.value)
            }
            Some(_) => InMemory::Stale,
            None if self.absent.get(key).is_some_and(|e| e.fresh(generation, self.ttl, trusted)) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                InMemory::Absent
            }
            None => InMemory::Unknown,
        }
    }

    /// A hit borrows the key and builds no future: the hot path allocates nothing here.
    async fn get_or_load<F, Fut>(&self, key: &K, load: F) -> Result<Option<Arc<T>>, StoreError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Option<Arc<T>>, StoreError>>,
    {
        let generation = self.generation.load(Ordering::Acquire);
        let trusted = self.trust.holds();
        let cached = self.entries.get(key);
        if let Some(entry) = cached.as_ref().filter(|e| e.fresh(generation, self.ttl, trusted)) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(entry.value.clone()));
        }
        if self.absent.get(key).is_some_and(|e| e.fresh(generation, self.ttl, trusted)) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        }
        let arrived = Instant::now();
        let turn = LoadTurn::take(&self.loading, key);
        let _held = turn.gate.lock().await;
        // Loaded by the call this one waited for? Without the lease, a load that began
        // after this call arrived read a store at least as new as the call, which is all
        // it may ask: a lapsed lease costs one read per record at a time, not one per call.
        let generation = self.generation.load(Ordering::Acquire);
        let trusted = self.trust.holds();
        let usable = |generation_of: u64, loaded_at: Instant, fresh: bool| {
            fresh || (generation_of == generation && loaded_at >= arrived && loaded_at.elapsed() < self.ttl)
        };
        if let Some(entry) =
            self.entries.get(key).filter(|e| usable(e.generation, e.loaded_at, e.fresh(generation, self.ttl, trusted)))
        {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(entry.value));
        }
        if self
            .absent
            .get(key)
            .is_some_and(|e| usable(e.generation, e.loaded_at, e.fresh(generation, self.ttl, trusted)))
        {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let seen = self.epoch(key);
        let loaded_at = Instant::now();
        let value = match load().await {
            Ok(value) => value,
            Err(StoreError::Unavailable(e)) => {
                return match cached {
                    Some(entry) if entry.loaded_at.elapsed() < self.ttl + self.max_stale => {
                        self.served_stale.fetch_add(1, Ordering::Relaxed);
                        Ok(Some(entry.value))
                    }
                    _ => Err(StoreError::Unavailable(e)),
                }
            }
            Err(e) => return Err(e),
        };
        let epoch = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
        if *epoch == seen {
            match &value {
                Some(found) => {
                    self.entries.insert(key.clone(), Stamped { value: found.clone(), loaded_at, generation });
                    self.absent.remove(key);
                }
                None => {
                    self.absent.insert(key.clone(), Stamped { value: (), loaded_at, generation });
                    self.entries.remove(key);
                }
            }
        }
        Ok(value)
    }

    /// Replaces a cached value with `change(value)`, keeping its load time, unless an
    /// invalidation removed it first (checked under the shard's lock, so a changed record
    /// can never be resurrected).
    fn update_in_place(&self, key: &K, change: impl FnOnce(&T) -> Option<T>) {
        let _epoch = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = self.entries.get(key) {
            if let Some(changed) = change(&entry.value) {
                let value = Arc::new(changed);
                self.entries
                    .insert(key.clone(), Stamped { value, loaded_at: entry.loaded_at, generation: entry.generation });
            }
        }
    }

    fn counts(&self) -> CacheCounts {
        CacheCounts {
            entries: self.entries.len() as u64,
            absent: self.absent.len() as u64,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }

    fn invalidate(&self, key: &K) {
        let mut epoch = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
        *epoch += 1;
        self.entries.remove(key);
        self.absent.remove(key);
    }

    /// Distrusts every entry: each is reloaded before it is served fresh again, and kept
    /// only as the fallback for when the store is unreachable. Loads under way insert
    /// entries of the old generation, which are not fresh either.
    fn distrust_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// One cache's size and lookups.
#[derive(Debug, Clone, Copy)]
pub struct CacheCounts {
    pub entries: u64,
    /// Ids remembered as unknown to the store, apart from the entries.
    pub absent: u64,
    /// Lookups answered from memory, and those that went to the store.
    pub hits: u64,
    pub misses: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct CacheStats {
    pub keys: CacheCounts,
    pub applications: CacheCounts,
    pub sessions: CacheCounts,
    pub served_stale: u64,
}

pub struct CachedStore {
    inner: Arc<dyn DecisionStore>,
    served_stale: Arc<AtomicU64>,
    keys: GuardedCache<KeyId, KeyRecord>,
    applications: GuardedCache<ApplicationId, Application>,
    sessions: GuardedCache<SessionId, SessionRecord>,
    trust: Arc<Trust>,
}

impl CachedStore {
    pub fn new(inner: Arc<dyn DecisionStore>, settings: CacheSettings) -> Self {
        let served_stale = Arc::new(AtomicU64::new(0));
        let trust = Arc::new(Trust::always());
        Self {
            inner,
            keys: GuardedCache::new(settings, served_stale.clone(), trust.clone()),
            applications: GuardedCache::new(settings, served_stale.clone(), trust.clone()),
            sessions: GuardedCache::new(settings, served_stale.clone(), trust.clone()),
            served_stale,
            trust,
        }
    }

    /// The lease on this cache's memory: the invalidation listener renews it.
    pub fn trust(&self) -> &Arc<Trust> {
        &self.trust
    }

    pub fn invalidate_key(&self, id: KeyId) {
        self.keys.invalidate(&id);
    }

    pub fn invalidate_application(&self, id: &ApplicationId) {
        self.applications.invalidate(id);
    }

    pub fn invalidate_session(&self, id: SessionId) {
        self.sessions.invalidate(&id);
    }

    /// For when invalidations may have been missed: nothing cached is served as fresh
    /// again before it is reloaded (but it may still bridge a store outage).
    pub fn distrust_all(&self) {
        self.keys.distrust_all();
        self.applications.distrust_all();
        self.sessions.distrust_all();
    }

    /// Forgets what an admin write changed (or may have changed).
    pub fn forget(&self, changed: Changed<'_>) {
        match changed {
            Changed::Key(id) => self.keys.invalidate(&id),
            Changed::Application(id) => self.applications.invalidate(id),
            Changed::Session(id) => self.sessions.invalidate(&id),
            Changed::Deleted(deleted) => {
                deleted.keys.iter().chain(&deleted.changed_keys).for_each(|id| self.keys.invalidate(id));
                deleted.applications.iter().for_each(|id| self.applications.invalidate(id));
                deleted.sessions.iter().for_each(|id| self.sessions.invalidate(id));
            }
            Changed::SomeKeys => self.keys.distrust_all(),
            Changed::Anything => self.distrust_all(),
        }
    }

    /// What memory holds about key `id`, found with no I/O.
    pub fn key_in_memory(&self, id: KeyId) -> InMemory<KeyRecord> {
        self.keys.in_memory(&id)
    }

    /// The same for a session.
    pub fn session_in_memory(&self, id: SessionId) -> InMemory<SessionRecord> {
        self.sessions.in_memory(&id)
    }

    /// How many reads were answered from the cache because the store was unreachable.
    pub fn served_stale(&self) -> u64 {
        self.served_stale.load(Ordering::Relaxed)
    }

    /// Sizes and lookup counts, for metrics.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            keys: self.keys.counts(),
            applications: self.applications.counts(),
            sessions: self.sessions.counts(),
            served_stale: self.served_stale(),
        }
    }
}

#[async_trait::async_trait]
impl Records for CachedStore {
    async fn key(&self, id: KeyId) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        self.keys.get_or_load(&id, || self.inner.key(id)).await
    }

    async fn application(&self, id: &ApplicationId) -> Result<Option<Arc<Application>>, StoreError> {
        self.applications.get_or_load(id, || self.inner.application(id)).await
    }

    async fn session(&self, id: SessionId) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        self.sessions.get_or_load(&id, || self.inner.session(id)).await
    }

    /// Not cached by lookup (the authenticator remembers which key a credential found);
    /// the keys found are then read by id through the cache, so the next call is served
    /// from memory. (Caching the lookup's own rows could resurrect a record a change
    /// invalidated between that read and this insert; a read by id is guarded against that.)
    async fn keys_by_lookup(&self, lookups: &[String]) -> Result<Vec<Arc<KeyRecord>>, StoreError> {
        let mut keys = Vec::new();
        for found in self.inner.keys_by_lookup(lookups).await? {
            keys.extend(self.key(found.id).await?);
        }
        Ok(keys)
    }
}

/// Usage is not a change: cached records stay (the usage recorder knows the later use).
#[async_trait::async_trait]
impl KeyUse for CachedStore {
    async fn spend_credits(
        &self,
        holder: &CreditHolder,
        cost: i64,
        refill: Option<&Refill>,
        now: Timestamp,
    ) -> Result<Spend, StoreError> {
        let spent = self.inner.spend_credits(holder, cost, refill, now).await?;
        // The cached record shows the balance the store just said; the decision never
        // trusts it (the store's answer is the balance), and GetApiKey reads the store.
        if let (Spend::Spent(balance) | Spend::Exhausted(balance), CreditHolder::Key(id)) = (spent, holder) {
            self.keys.update_in_place(id, |record| {
                record.credits.map(|_| KeyRecord { credits: Some(balance), ..record.clone() })
            });
        }
        Ok(spent)
    }

    async fn record_key_usage(&self, uses: &[(KeyId, Timestamp)]) -> Result<(), StoreError> {
        self.inner.record_key_usage(uses).await
    }

    async fn remember_verified(&self, id: KeyId, hash: &SecretHash, digest: &VerifiedDigest) -> Result<(), StoreError> {
        self.inner.remember_verified(id, hash, digest).await?;
        // The cached record learns its digest without a reload (other replicas reload it on
        // the database's notification). Only the same secret hash: anything else changed.
        self.keys.update_in_place(&id, |record| {
            (record.secret_hash == *hash).then(|| KeyRecord { verified_digest: Some(*digest), ..record.clone() })
        });
        Ok(())
    }

    async fn adopt_imported(
        &self,
        id: KeyId,
        old: &SecretHash,
        new: &SecretHash,
        lookup: &str,
        digest: &VerifiedDigest,
    ) -> Result<(), StoreError> {
        let result = self.inner.adopt_imported(id, old, new, lookup, digest).await;
        self.keys.invalidate(&id);
        result
    }

    fn stale_key(&self, id: KeyId) {
        self.keys.invalidate(&id);
    }
}
