//! The admin side over a cache: records are read through the cache (an admin read puts a
//! record in memory for its first use), and what each admin write changed — as the
//! [`layer`](super::layer) table reads it from the write's arguments and result — is
//! forgotten by the cache at once, even when the write failed (it may have committed).

use super::cached::CachedStore;
use super::{AdminLayer, AdminStore, Application, Changed, KeyRecord, Records, SessionRecord, StoreError};
use crate::domain::{ApplicationId, KeyId, SessionId};
use std::sync::Arc;

/// An [`AdminStore`] that keeps `cache` in step with the writes it passes to `admin`.
pub struct Invalidating {
    cache: Arc<CachedStore>,
    admin: Arc<dyn AdminStore>,
}

impl Invalidating {
    /// `admin` must be the store beneath `cache` (or decorate it): what it changes is what
    /// the cache holds.
    pub fn new(cache: Arc<CachedStore>, admin: Arc<dyn AdminStore>) -> Self {
        Self { cache, admin }
    }
}

#[async_trait::async_trait]
impl Records for Invalidating {
    async fn key(&self, id: KeyId) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        self.cache.key(id).await
    }

    async fn application(&self, id: &ApplicationId) -> Result<Option<Arc<Application>>, StoreError> {
        self.cache.application(id).await
    }

    async fn session(&self, id: SessionId) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        self.cache.session(id).await
    }

    async fn keys_by_lookup(&self, lookups: &[String]) -> Result<Vec<Arc<KeyRecord>>, StoreError> {
        self.cache.keys_by_lookup(lookups).await
    }
}

impl AdminLayer for Invalidating {
    fn below(&self) -> &dyn AdminStore {
        &*self.admin
    }

    fn changed(&self, changed: Changed<'_>) {
        self.cache.forget(changed);
    }

    /// Through the cache, but a balance is read from the store: other replicas spend it
    /// without telling this one.
    async fn key_as_stored(&self, id: KeyId) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        match self.cache.key(id).await? {
            Some(key) if key.credit_holder().is_some() => self.admin.key_as_stored(id).await,
            cached => Ok(cached),
        }
    }
}
