//! The metering decorator: how long each store operation takes and how often it fails.
//! It sits under the cache, so it sees only what reaches the database. The decision's
//! side is timed call by call; the admin side through [`AdminLayer::call`].

use super::{AdminLayer, AdminStore, Application, KeyRecord, KeyUse, Records, SessionRecord, Spend, Store, StoreError};
use crate::domain::{ApplicationId, CreditHolder, KeyId, Refill, SecretHash, SessionId, Timestamp, VerifiedDigest};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub operation: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub operation: &'static str,
    /// `unavailable`, `corrupt` or `other`.
    pub kind: &'static str,
}

/// The store's instruments; cloning shares them.
#[derive(Clone)]
pub struct StoreMetrics {
    pub seconds: Family<OperationLabels, Histogram>,
    pub errors: Family<ErrorLabels, Counter>,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        Self {
            // 100 µs to ~3 s.
            seconds: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0001, 2.0, 16))),
            errors: Family::default(),
        }
    }
}

/// Times every call to the store beneath (the decision's side call by call, the admin side
/// through [`AdminLayer::call`]).
pub struct MeteredStore {
    inner: Arc<dyn Store>,
    metrics: StoreMetrics,
}

impl MeteredStore {
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self { inner, metrics: StoreMetrics::default() }
    }

    pub fn metrics(&self) -> StoreMetrics {
        self.metrics.clone()
    }

    async fn timed<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = call.await;
        self.metrics.seconds.get_or_create(&OperationLabels { operation }).observe(started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            let kind = match e {
                StoreError::Unavailable(_) => "unavailable",
                StoreError::Corrupt(_) => "corrupt",
                StoreError::CutShort(_) | StoreError::Other(_) => "other",
            };
            self.metrics.errors.get_or_create(&ErrorLabels { operation, kind }).inc();
        }
        result
    }
}

#[async_trait::async_trait]
impl Records for MeteredStore {
    async fn key(&self, id: KeyId) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        self.timed("key", self.inner.key(id)).await
    }

    async fn application(&self, id: &ApplicationId) -> Result<Option<Arc<Application>>, StoreError> {
        self.timed("application", self.inner.application(id)).await
    }

    async fn session(&self, id: SessionId) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        self.timed("session", self.inner.session(id)).await
    }

    async fn keys_by_lookup(&self, lookups: &[String]) -> Result<Vec<Arc<KeyRecord>>, StoreError> {
        self.timed("keys_by_lookup", self.inner.keys_by_lookup(lookups)).await
    }
}

#[async_trait::async_trait]
impl KeyUse for MeteredStore {
    async fn spend_credits(
        &self,
        holder: &CreditHolder,
        cost: i64,
        refill: Option<&Refill>,
        now: Timestamp,
    ) -> Result<Spend, StoreError> {
        self.timed("spend_credits", self.inner.spend_credits(holder, cost, refill, now)).await
    }

    async fn record_key_usage(&self, uses: &[(KeyId, Timestamp)]) -> Result<(), StoreError> {
        self.timed("record_key_usage", self.inner.record_key_usage(uses)).await
    }

    async fn remember_verified(&self, id: KeyId, hash: &SecretHash, digest: &VerifiedDigest) -> Result<(), StoreError> {
        self.timed("remember_verified", self.inner.remember_verified(id, hash, digest)).await
    }

    async fn adopt_imported(
        &self,
        id: KeyId,
        old: &SecretHash,
        new: &SecretHash,
        lookup: &str,
        digest: &VerifiedDigest,
    ) -> Result<(), StoreError> {
        self.timed("adopt_imported", self.inner.adopt_imported(id, old, new, lookup, digest)).await
    }
}

impl AdminLayer for MeteredStore {
    fn below(&self) -> &dyn AdminStore {
        &*self.inner
    }

    fn call<'a, T: Send + 'a>(
        &'a self,
        operation: &'static str,
        call: impl Future<Output = Result<T, StoreError>> + Send + 'a,
    ) -> impl Future<Output = Result<T, StoreError>> + Send + 'a {
        self.timed(operation, call)
    }
}
