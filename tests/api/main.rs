//! One integration binary: the real server, real databases, real gRPC clients.

mod admin;
mod authorize;
mod helpers;
mod limits;
mod ext_authz;
mod relay;
mod replicas;
mod sessions;
mod store;
