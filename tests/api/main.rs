//! One integration binary: the real server, real databases, real gRPC clients.

mod admin;
mod authorize;
mod cli;
mod edge;
mod edge_contract;
mod ext_authz;
mod faults;
mod helpers;
mod limits;
mod operations;
mod outage;
mod relay;
mod replicas;
mod sessions;
mod store;
