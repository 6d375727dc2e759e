//! The dBQS wire protocol: the `dbqs.v1` protobuf messages and tonic services,
//! generated at build time from `proto/dbqs/v1/*.proto` with protox (no protoc).
//!
//! This crate owns no logic: domain types and their validation live in
//! `dbqs-common`, which converts from these messages and reports errors.

/// Generated code for the `dbqs.v1` package.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("dbqs.v1");
}

/// The encoded file descriptor set of every dbqs.v1 proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/dbqs_descriptor.bin"));
