//! The bounding decorator: a read on the request path waits at most the breaker's timeout,
//! and nothing waits for a store that is known to be down (see [`crate::breaker`]).
//!
//! It sits under the cache, so a cached record is answered without it, and a record the
//! cache must reload (its freshness ran out, or the invalidation listener was lost) is
//! served from the cache's fallback the moment this store says it is unavailable, instead
//! of after the pool's own connect timeout.
//!
//! The admin side (through [`AdminLayer::call`]) and the hot path's after-writes (through
//! [`DecisionLayer::write`]) are only
//! refused while the store is down: their failures never count towards the breaker.

use super::layer::Call;
use super::{AdminLayer, AdminStore, DecisionLayer, KeyRecord, Store, StoreError};
use crate::breaker::{Breaker, Refused};
use crate::domain::KeyId;
use std::future::Future;
use std::sync::Arc;

/// Bounds the decision's reads by the breaker; refuses writes and admin calls while it is open.
pub struct BoundedStore {
    inner: Arc<dyn Store>,
    breaker: Arc<Breaker>,
}

fn is_outage(e: &StoreError) -> bool {
    matches!(e, StoreError::Unavailable(_))
}

fn unavailable(refused: Refused) -> StoreError {
    StoreError::Unavailable(Box::new(refused))
}

/// A statement the database cut short for running past its limit (Postgres's
/// `statement_timeout`, SQLite's busy timeout): the caller is told to retry
/// (UNAVAILABLE), not that keygate failed (INTERNAL).
fn cut_short(e: StoreError) -> StoreError {
    match e {
        StoreError::CutShort(e) => StoreError::Unavailable(e),
        other => other,
    }
}

impl BoundedStore {
    pub fn new(inner: Arc<dyn Store>, breaker: Arc<Breaker>) -> Self {
        Self { inner, breaker }
    }

    /// A read a decision waits on: bounded, and refused while the store is down.
    async fn bounded<T>(&self, call: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        self.breaker.guard(call, is_outage).await.map_err(unavailable)?
    }

    /// An admin call (or a write): refused while the store is down, otherwise left to the
    /// pool's own limits (a write must not be abandoned between its statements by a timer
    /// of ours; the admin pool's statement timeout cancels it in the database, which rolls
    /// its transaction back). Its failures never count towards the breaker.
    async fn admin<T>(&self, call: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        self.breaker.check_closed().map_err(unavailable)?;
        call.await.map_err(cut_short)
    }
}

/// A read a decision waits on is bounded; a write on the request path is refused at once
/// while the store is down, otherwise bounded by the decision's deadline, not the read
/// timeout: calls on one key queue on its row, and a queue is not an outage that must open
/// the breaker.
impl DecisionLayer for BoundedStore {
    fn below(&self) -> &dyn Store {
        &*self.inner
    }

    fn read<'a, T: Send + 'a>(&'a self, _operation: &'static str, call: impl Call<T> + 'a) -> impl Call<T> + 'a {
        self.bounded(call)
    }

    fn write<'a, T: Send + 'a>(&'a self, _operation: &'static str, call: impl Call<T> + 'a) -> impl Call<T> + 'a {
        self.admin(call)
    }
}

impl AdminLayer for BoundedStore {
    fn below(&self) -> &dyn AdminStore {
        &*self.inner
    }

    fn call<'a, T: Send + 'a>(&'a self, _operation: &'static str, call: impl Call<T> + 'a) -> impl Call<T> + 'a {
        self.admin(call)
    }

    /// The admin API's read of one key runs on the decisions' pool: it is bounded as their
    /// reads are, so a flood of them cannot hold the connections decisions wait for
    /// (admin calls count nothing towards the breaker: `breaker::uncounted`).
    async fn key_as_stored(&self, id: KeyId) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        self.bounded(self.inner.key_as_stored(id)).await
    }

    /// Health checks ask the store itself: the breaker is not the answer they want.
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}
