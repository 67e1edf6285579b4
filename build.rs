//! Generates Envoy's ext_authz v3 service (`envoy.service.auth.v3.Authorization`) and the
//! messages its Check carries, from the Envoy API files vendored in `proto/third_party/`,
//! with protox (no `protoc`) as `api/build.rs` does ours. Only the server side: the tests'
//! client is envoy-types', written by someone else.
//!
//! The annotation-only packages (validation rules, versioning and status marks) are needed
//! to read the files but generate nothing the messages use, so they are left out.

use std::{env, path::PathBuf};

const ROOT: &str = "proto/third_party";
/// The packages whose messages a Check request or response reaches.
const GENERATED: [&str; 5] =
    ["envoy.service.auth.v3", "envoy.config.core.v3", "envoy.type.v3", "google.rpc", "xds.core.v3"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={ROOT}");
    let mut fds = protox::compile([format!("{ROOT}/envoy/service/auth/v3/external_auth.proto")], [ROOT])?;
    // google.protobuf stays: prost maps it to prost-types but reads its messages' fields.
    fds.file.retain(|file| GENERATED.contains(&file.package()) || file.package() == "google.protobuf");
    let out = PathBuf::from(env::var("OUT_DIR")?);
    tonic_prost_build::configure().build_client(false).include_file(out.join("envoy.rs")).compile_fds(fds)?;
    Ok(())
}
