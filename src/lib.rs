//! keygate: decides, on every request, whether a credential may call a route.
//!
//! # Layout
//! - [`domain`]: ids, credentials, scopes, search params — parsed once at the edge.
//! - [`code`] (from the `keygate-api` crate, with the protos): the error page's codes,
//!   statuses, envelopes and messages; the only place that spells them.
//! - [`policy`]: the route policy file and its route matcher.
//! - [`authn`]: who is calling — credentials, keyed digests, argon2, guessing budgets.
//! - [`authz`]: Authorize — gathers facts and decides ([`authz::decision`] is pure).
//! - [`manage`]: the admin API's rules, a file per resource; told who calls, it checks that a
//!   token confined to one account touches nothing of another's.
//! - [`audit`]: the audit trail's events and categories.
//! - [`usage`]: batched `last_used_at`.
//! - [`metrics`]: the Prometheus registry and its endpoint.
//! - [`breaker`]: bounded waits on the stores a decision needs, none on a store known down.
//! - [`store`]: storage split by who waits (decision reads, hot-path writes, admin), its SQL
//!   and in-memory implementations, and the decorators (cache, meter, breaker).
//! - [`edge`]: every entry's question and answer: one builder from an HTTP-shaped request
//!   to Authorize's query, one answer rendered per protocol, failures logged with an error
//!   id; [`edge::forward_auth`], the HTTP listener for nginx, Caddy and Traefik.
//! - [`grpc`]: tonic services (Authorize, Envoy's Check, Admin); protobuf types stop here.
//! - [`config`], [`startup`], [`telemetry`]: settings, wiring, logs.
//! - [`tls`]: TLS and mTLS on every listener, certificates reloaded in place.
//! - [`clock`]: time as a dependency, so tests move it.

pub mod audit;
pub mod authn;
pub mod authz;
pub mod breaker;
pub mod clock;
pub use keygate_api::code;
pub mod config;
pub mod domain;
pub mod edge;
pub mod grpc;
pub mod manage;
pub mod metrics;
pub mod policy;
#[cfg(test)]
mod properties;
pub mod ratelimit;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod usage;
