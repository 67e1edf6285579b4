//! keygate's API, shared by the server and every client:
//! - [`proto`]: the generated `keygate.v1` messages, clients and servers;
//! - [`code`]: the management API error page's codes, with their HTTP statuses, gRPC
//!   statuses and JSON envelopes — the one place that spells them;
//! - [`edge`]: what every edge agrees on when it reads a request;
//! - [`answer`]: how an HTTP edge answers a request it does not pass on.

pub mod answer;
pub mod code;
pub mod edge;
pub mod time;

/// Where `keygate serve` writes the admin token it generates, and where the CLI reads it.
pub const DEFAULT_ADMIN_TOKEN_FILE: &str = "keygate-data/admin-token";

/// Generated from `proto/keygate/v1`.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("keygate.v1");

    /// For gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/keygate_descriptor.bin"));
}

pub use code::{Code, Reason};
