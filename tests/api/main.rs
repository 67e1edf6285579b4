//! One integration binary: the real server, real databases, real gRPC clients.

mod abuse;
mod admin;
mod admin_tokens;
mod answers;
mod authorize;
mod cli;
mod console;
mod console_browser;
mod credentials_credits;
mod credentials_import;
mod credentials_request;
mod credentials_rolls;
mod drain;
mod edge;
mod edge_contract;
/// The example axum edge (examples/edge.rs), compiled in as it is.
#[path = "../../examples/edge.rs"]
#[allow(dead_code)]
mod example;
mod ext_authz;
mod faults;
mod forward_auth;
mod helpers;
mod isolation_admin;
mod isolation_budget;
mod isolation_verify;
mod leases;
mod lifecycle;
mod limits;
mod operations;
mod operator_output;
mod outage;
mod postgres_tls;
mod process;
mod quickstart;
mod redis_cluster;
mod redis_failover;
mod redis_tls;
mod relay;
mod replicas;
mod secrets;
mod sessions;
mod slices;
mod store;
mod terms;
mod tls;
mod usage;
mod watch;
