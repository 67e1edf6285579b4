//! Compiles the service's contract, `proto/` at the top of the repository, with protox (a
//! pure-Rust protobuf compiler) so a fresh machine needs no `protoc`. The descriptor set is
//! kept for gRPC server reflection.

use prost::Message;
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos =
        ["../proto/keygate/v1/authorizer.proto", "../proto/keygate/v1/admin.proto", "../proto/keygate/v1/watch.proto"];
    // tonic-prost-build emits no rerun-if-changed of its own.
    println!("cargo:rerun-if-changed=../proto");
    let fds = protox::compile(protos, ["../proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(out.join("keygate_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
