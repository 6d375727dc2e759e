//! Compiles the dbqs.v1 protos with protox (pure Rust), so no `protoc` is needed.
use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "dbqs/v1/types.proto",
    "dbqs/v1/storage.proto",
    "dbqs/v1/membership.proto",
    "dbqs/v1/pbft.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(PROTOS, ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("dbqs_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
