//! keygate: decides, on every request, whether a credential may call a route.
//!
//! Each module's purpose, and the crates around this one: `docs/development.md` (Layout).

pub mod analytics;
pub mod audit;
pub mod authn;
pub mod authz;
pub mod breaker;
pub mod clock;
pub use keygate_api::code;
pub mod config;
pub mod console;
pub mod domain;
pub mod edge;
pub mod feed;
pub mod grpc;
pub mod manage;
pub mod metrics;
pub mod policy;
pub mod process;
#[cfg(test)]
mod properties;
pub mod ratelimit;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod usage;
