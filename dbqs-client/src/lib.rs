//! The dBQS client library and the `dbqs` command line.
//!
//! [`Client`] performs the Byzantine quorum protocol of PROTOCOL.md ("dBQS
//! storage"): owned writes in two phases, reads with write-back, content objects,
//! epoch catch-up. Every fan-out goes through [`quorum`]. [`chunked`] splits large
//! files into content objects plus a manifest; [`files`] reads and writes keys,
//! TOML configurations and the cluster directory.
//!
//! The library knows nothing of servers or storage engines.

pub mod bench;
pub mod chunked;
pub mod client;
pub mod files;
pub mod quorum;

pub use client::{Client, ClientError, ClientIdentity, PutReceipt};
