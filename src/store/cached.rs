//! The caching decorator: key records by key id and applications by id, in memory.
//!
//! Writes through this store invalidate at once, so a revoke or update is seen by the very
//! next read on this instance. Other replicas' changes arrive through [`CachedStore::invalidate_key`]
//! and friends; the TTL is only the backstop if every notification is lost.
//!
//! The race it closes: a read that loaded a record *before* a write committed must not put
//! that stale record into the cache *after* the write invalidated it. Each id hashes to a
//! shard holding an epoch; invalidation bumps the epoch under the shard's lock, and a load
//! inserts only if the epoch it saw before reading the store is still current, checked
//! under the same lock. Cache hits take no lock.

use super::{Application, KeyChanges, KeyRecord, Page, PageRequest, SessionRecord, Store, StoreError, UpdateOutcome};
use crate::domain::{AccountId, ApplicationId, KeyId, SessionId, Timestamp};
use moka::sync::Cache;
use std::hash::{BuildHasher, Hash};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SHARDS: usize = 64;

#[derive(Debug, Clone, Copy)]
pub struct CacheSettings {
    /// Most key records (and, separately, applications) held.
    pub capacity: u64,
    /// Backstop: no entry is served longer than this, whatever else fails.
    pub ttl: Duration,
}

/// A cache whose loads cannot resurrect what an invalidation removed.
struct GuardedCache<K, V> {
    entries: Cache<K, V>,
    epochs: Box<[Mutex<u64>]>,
    hasher: std::collections::hash_map::RandomState,
}

impl<K, V> GuardedCache<K, V>
where
    K: Hash + Eq + Send + Sync + Clone + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn new(settings: CacheSettings) -> Self {
        Self {
            entries: Cache::builder().max_capacity(settings.capacity).time_to_live(settings.ttl).build(),
            epochs: (0..SHARDS).map(|_| Mutex::new(0)).collect(),
            hasher: Default::default(),
        }
    }

    fn shard(&self, key: &K) -> &Mutex<u64> {
        &self.epochs[self.hasher.hash_one(key) as usize % SHARDS]
    }

    fn epoch(&self, key: &K) -> u64 {
        *self.shard(key).lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A hit borrows the key and builds no future: the hot path allocates nothing here.
    async fn get_or_load<F, Fut>(&self, key: &K, load: F) -> Result<V, StoreError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<V, StoreError>>,
    {
        if let Some(hit) = self.entries.get(key) {
            return Ok(hit);
        }
        let seen = self.epoch(key);
        let value = load().await?;
        let epoch = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
        if *epoch == seen {
            self.entries.insert(key.clone(), value.clone());
        }
        Ok(value)
    }

    fn invalidate(&self, key: &K) {
        let mut epoch = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
        *epoch += 1;
        self.entries.invalidate(key);
    }

    fn invalidate_all(&self) {
        // Bump every shard first so that loads under way cannot insert afterwards.
        let mut guards: Vec<_> = self.epochs.iter().map(|m| m.lock().unwrap_or_else(|e| e.into_inner())).collect();
        for epoch in guards.iter_mut() {
            **epoch += 1;
        }
        self.entries.invalidate_all();
    }
}

pub struct CachedStore {
    inner: Arc<dyn Store>,
    keys: GuardedCache<KeyId, Option<Arc<KeyRecord>>>,
    applications: GuardedCache<ApplicationId, Option<Arc<Application>>>,
    sessions: GuardedCache<SessionId, Option<Arc<SessionRecord>>>,
}

impl CachedStore {
    pub fn new(inner: Arc<dyn Store>, settings: CacheSettings) -> Self {
        Self {
            inner,
            keys: GuardedCache::new(settings),
            applications: GuardedCache::new(settings),
            sessions: GuardedCache::new(settings),
        }
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

    /// Drops everything, for when invalidations may have been missed.
    pub fn invalidate_all(&self) {
        self.keys.invalidate_all();
        self.applications.invalidate_all();
        self.sessions.invalidate_all();
    }

    pub fn cached_keys(&self) -> u64 {
        self.keys.entries.run_pending_tasks();
        self.keys.entries.entry_count()
    }
}

#[async_trait::async_trait]
impl Store for CachedStore {
    async fn create_application(&self, app: &Application) -> Result<(), StoreError> {
        let result = self.inner.create_application(app).await;
        // A miss may have been cached as "no such application".
        self.applications.invalidate(&app.id);
        result
    }

    async fn application(&self, id: &ApplicationId) -> Result<Option<Arc<Application>>, StoreError> {
        self.applications.get_or_load(id, || self.inner.application(id)).await
    }

    async fn list_applications(
        &self,
        account: &AccountId,
        page: &PageRequest,
    ) -> Result<Page<Application>, StoreError> {
        self.inner.list_applications(account, page).await
    }

    async fn create_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        let result = self.inner.create_key(key).await;
        self.keys.invalidate(&key.id);
        result
    }

    async fn key(&self, id: KeyId) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        self.keys.get_or_load(&id, || self.inner.key(id)).await
    }

    async fn list_keys(
        &self,
        account: &AccountId,
        search: Option<&str>,
        page: &PageRequest,
    ) -> Result<Page<KeyRecord>, StoreError> {
        self.inner.list_keys(account, search, page).await
    }

    async fn update_key(&self, id: KeyId, changes: &KeyChanges, now: Timestamp) -> Result<UpdateOutcome, StoreError> {
        // Invalidate even when the write errors: it may have committed before the error.
        let result = self.inner.update_key(id, changes, now).await;
        self.keys.invalidate(&id);
        result
    }

    async fn revoke_key(&self, id: KeyId, reason: &str, now: Timestamp) -> Result<Option<KeyRecord>, StoreError> {
        let result = self.inner.revoke_key(id, reason, now).await;
        self.keys.invalidate(&id);
        result
    }

    async fn rotate_runtime_key(&self, new: &KeyRecord, retire_at: Timestamp) -> Result<Option<KeyId>, StoreError> {
        let result = self.inner.rotate_runtime_key(new, retire_at).await;
        self.keys.invalidate(&new.id);
        if let Ok(Some(retired)) = &result {
            self.keys.invalidate(retired);
        }
        result
    }

    async fn create_session(&self, session: &SessionRecord) -> Result<(), StoreError> {
        let result = self.inner.create_session(session).await;
        self.sessions.invalidate(&session.id);
        result
    }

    async fn session(&self, id: SessionId) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        self.sessions.get_or_load(&id, || self.inner.session(id)).await
    }

    async fn revoke_session(&self, id: SessionId, now: Timestamp) -> Result<Option<SessionRecord>, StoreError> {
        let result = self.inner.revoke_session(id, now).await;
        self.sessions.invalidate(&id);
        result
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}
