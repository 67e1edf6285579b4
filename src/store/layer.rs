//! The store's decorators. A decorator treats every call alike (the meter times it, the
//! breaker bounds it or refuses it while the store is down) or cares only about what an
//! admin write changed (the cache forgets it): it implements a handful of hooks
//! ([`DecisionLayer`], [`AdminLayer`]) and gets the whole store. The table that passes each
//! call on is made by [`layered_trait!`] from the same text that defines the call (in
//! [`super`] and [`admin`](super::admin)), with what each admin write changed ([`Changed`]).

use super::{AdminStore, ApplicationId, Deleted, Direct, KeyId, KeyRecord, Records, SessionId, Store, StoreError};
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

/// A store call as a layer's hook takes and returns it: a future of its result.
pub trait Call<T>: Future<Output = Result<T, StoreError>> + Send {}

impl<T, F: Future<Output = Result<T, StoreError>> + Send> Call<T> for F {}

/// A decorator of the admin side: [`AdminStore`] comes with it, each call passed through
/// [`call`](Self::call) to the store [`below`](Self::below), each write's changes told to
/// [`changed`](Self::changed). Records are read through the layer's own [`Records`].
pub trait AdminLayer: Records {
    /// The admin store this layer wraps.
    fn below(&self) -> &dyn AdminStore;

    /// Runs one admin call; `operation` names it (as metrics label it). As it is, by default.
    fn call<'a, T: Send + 'a>(&'a self, _operation: &'static str, call: impl Call<T> + 'a) -> impl Call<T> + 'a {
        call
    }

    /// After a write (whether it succeeded or not): what it changed. Nothing to do, by default.
    fn changed(&self, _changed: Changed<'_>) {}

    /// [`Direct::key_as_stored`]: from the store below, by default.
    fn key_as_stored(&self, id: KeyId) -> impl Call<Option<Arc<KeyRecord>>> {
        // Labelled as the read it is.
        self.call("key", self.below().key_as_stored(id))
    }

    /// [`Direct::ping`]: through [`call`](Self::call), by default.
    fn ping(&self) -> impl Call<()> {
        self.call("ping", self.below().ping())
    }
}

/// Defines a store trait (`async` methods, then any `provided` ones with a body) and,
/// from the same text, its implementation for every layer of kind `$layer` (an
/// [`AdminLayer`] or a [`DecisionLayer`]): each `async` call passed through the layer's
/// hook `$hook` (named as the method is) to the store [`below`](AdminLayer::below);
/// `provided` methods keep their body in layers. A write says after `=>` what it changed,
/// as a closure of the call's result and `report`, which hands each [`Changed`] to
/// [`AdminLayer::changed`]; it runs whether the call succeeded or not (a write that failed
/// may have committed).
macro_rules! layered_trait {
    (
        $(#[$meta:meta])*
        pub trait $name:ident: $first:ident $(+ $bound:tt)*, through $layer:ident::$hook:ident {
            $(
                $(#[$method_meta:meta])*
                async fn $method:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty
                $(=> |$result:ident, $report:ident| $changed:expr)?;
            )*
            $(provided {
                $(
                    $(#[$provided_meta:meta])*
                    fn $provided:ident(&self $(, $provided_arg:ident: $provided_ty:ty)*) $body:block
                )*
            })?
        }
    ) => {
        $(#[$meta])*
        #[async_trait::async_trait]
        pub trait $name: $first $(+ $bound)* {
            $(
                $(#[$method_meta])*
                async fn $method(&self $(, $arg: $ty)*) -> $ret;
            )*
            $($(
                $(#[$provided_meta])*
                fn $provided(&self $(, $provided_arg: $provided_ty)*) $body
            )*)?
        }

        #[async_trait::async_trait]
        impl<L: $crate::store::$layer> $name for L {
            $(
                async fn $method(&self $(, $arg: $ty)*) -> $ret {
                    let below = $crate::store::$layer::below(self);
                    let result = $crate::store::$layer::$hook(self, stringify!($method), below.$method($($arg),*)).await;
                    $({
                        let $result = &result;
                        let $report = |changed| $crate::store::$layer::changed(self, changed);
                        $changed;
                    })?
                    result
                }
            )*
        }
    };
}

pub(crate) use layered_trait;

/// A decorator of the decision's side (the meter, the breaker): [`Records`] and
/// [`KeyUse`](super::KeyUse) come with it, each read passed through [`read`](Self::read)
/// and each write through [`write`](Self::write) to the store [`below`](Self::below).
/// `KeyUse::stale_key` is not passed on: a layer under the cache has nothing to forget.
pub trait DecisionLayer: Send + Sync + 'static {
    /// The store this layer wraps.
    fn below(&self) -> &dyn Store;

    /// Runs one read a decision waits on; `operation` names it. As it is, by default.
    fn read<'a, T: Send + 'a>(&'a self, _operation: &'static str, call: impl Call<T> + 'a) -> impl Call<T> + 'a {
        call
    }

    /// Runs one of the hot path's writes after answering. As a read is, by default.
    fn write<'a, T: Send + 'a>(&'a self, operation: &'static str, call: impl Call<T> + 'a) -> impl Call<T> + 'a {
        self.read(operation, call)
    }
}

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
