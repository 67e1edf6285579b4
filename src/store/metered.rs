//! The metering decorator: how long each store operation takes and how often it fails.
//! It sits under the cache, so it sees only what reaches the database. The decision's
//! side is timed through [`DecisionLayer::read`] (and `write`), the admin side through
//! [`AdminLayer::call`]: each call under its method's name.

use super::layer::Call;
use super::{AdminLayer, AdminStore, DecisionLayer, Store, StoreError};
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

/// Times every call to the store beneath (the decision's side through [`DecisionLayer`],
/// the admin side through [`AdminLayer`]).
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

impl DecisionLayer for MeteredStore {
    fn below(&self) -> &dyn Store {
        &*self.inner
    }

    fn read<'a, T: Send + 'a>(&'a self, operation: &'static str, call: impl Call<T> + 'a) -> impl Call<T> + 'a {
        self.timed(operation, call)
    }
}

impl AdminLayer for MeteredStore {
    fn below(&self) -> &dyn AdminStore {
        &*self.inner
    }

    fn call<'a, T: Send + 'a>(&'a self, operation: &'static str, call: impl Call<T> + 'a) -> impl Call<T> + 'a {
        self.timed(operation, call)
    }
}
