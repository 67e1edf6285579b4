//! The admin side's decorators. A decorator of the admin plane treats every admin call
//! alike (the meter times it, the breaker refuses it while the store is down) or cares
//! only about what a write changed (the cache forgets it): it implements [`AdminLayer`], a
//! handful of hooks, and gets [`AdminStore`] whole. The table that passes each call on is
//! made by [`admin_trait!`] from the same text that defines the call (in
//! [`admin`](super::admin)), with what each write changed ([`Changed`]).

use super::{AdminStore, ApplicationId, Deleted, Direct, KeyId, KeyRecord, Records, SessionId, StoreError};
use std::future::Future;
use std::sync::Arc;

/// What an admin write changed (or, when it failed, may have changed), for a cache to
/// forget. A write can report several.
#[derive(Debug, Clone, Copy)]
pub enum Changed<'a> {
    Key(KeyId),
    Application(&'a ApplicationId),
    Session(SessionId),
    /// What a deletion removed or changed.
    Deleted(&'a Deleted),
    /// Some keys, which ones unknown here (a write that failed may have committed).
    SomeKeys,
    /// Anything at all (a deletion that failed may have committed).
    Anything,
}

/// A decorator of the admin side: [`AdminStore`] comes with it, each call passed through
/// [`call`](Self::call) to the store [`below`](Self::below), each write's changes told to
/// [`changed`](Self::changed). Records are read through the layer's own [`Records`].
pub trait AdminLayer: Records {
    /// The admin store this layer wraps.
    fn below(&self) -> &dyn AdminStore;

    /// Runs one admin call; `operation` names it (as metrics label it). As it is, by default.
    fn call<'a, T: Send + 'a>(
        &'a self,
        _operation: &'static str,
        call: impl Future<Output = Result<T, StoreError>> + Send + 'a,
    ) -> impl Future<Output = Result<T, StoreError>> + Send + 'a {
        call
    }

    /// After a write (whether it succeeded or not): what it changed. Nothing to do, by default.
    fn changed(&self, _changed: Changed<'_>) {}

    /// [`AdminStore::key_as_stored`]: from the store below, by default.
    fn key_as_stored(&self, id: KeyId) -> impl Future<Output = Result<Option<Arc<KeyRecord>>, StoreError>> + Send {
        // Labelled as the read it is.
        self.call("key", self.below().key_as_stored(id))
    }

    /// [`AdminStore::ping`]: through [`call`](Self::call), by default.
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.call("ping", self.below().ping())
    }
}

/// Defines an admin trait (a `Records` subtrait of `async` methods) and, from the same
/// text, its implementation for every [`AdminLayer`]: each call passed through
/// [`AdminLayer::call`] (named as the method is) to the store [`below`](AdminLayer::below).
/// A write says after `=>` what it changed, as a closure of the call's result and `report`,
/// which hands each [`Changed`] to [`AdminLayer::changed`]; it runs whether the call
/// succeeded or not (a write that failed may have committed).
macro_rules! admin_trait {
    (
        $(#[$meta:meta])*
        pub trait $name:ident {
            $(
                $(#[$method_meta:meta])*
                async fn $method:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty
                $(=> |$result:ident, $report:ident| $changed:expr)?;
            )*
        }
    ) => {
        $(#[$meta])*
        #[async_trait::async_trait]
        pub trait $name: $crate::store::Records {
            $(
                $(#[$method_meta])*
                async fn $method(&self $(, $arg: $ty)*) -> $ret;
            )*
        }

        #[async_trait::async_trait]
        impl<L: $crate::store::AdminLayer> $name for L {
            $(
                async fn $method(&self $(, $arg: $ty)*) -> $ret {
                    let below = $crate::store::AdminLayer::below(self);
                    let result = $crate::store::AdminLayer::call(self, stringify!($method), below.$method($($arg),*)).await;
                    $({
                        let $result = &result;
                        let $report = |changed| $crate::store::AdminLayer::changed(self, changed);
                        $changed;
                    })?
                    result
                }
            )*
        }
    };
}

pub(crate) use admin_trait;

/// The calls each layer answers its own way: through its hooks.
#[async_trait::async_trait]
impl<L: AdminLayer> Direct for L {
    async fn key_as_stored(&self, id: KeyId) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        AdminLayer::key_as_stored(self, id).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        AdminLayer::ping(self).await
    }
}
