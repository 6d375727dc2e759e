//! The dBQS client library and the `dbqs` command line.
//!
//! [`Client`] performs the Byzantine quorum protocol of PROTOCOL.md ("dBQS
//! storage"): owned writes in two phases, reads with write-back, content objects,
//! epoch catch-up, each operation completed only under a freshness lease on its
//! epoch ([`lease`]). Every fan-out goes through [`quorum`]. [`chunked`] splits large
//! files into content objects plus a manifest; [`files`] reads and writes keys,
//! TOML configurations and the cluster directory; [`admin`] issues authority
//! certificates and submits them to the MS (`dbqs admin`).
//!
//! The library knows nothing of servers or storage engines.

pub mod admin;
pub mod bench;
pub mod chunked;
pub mod client;
pub mod files;
pub mod lease;
pub mod quorum;
pub mod tls;

pub use client::{Client, ClientError, ClientIdentity, PutReceipt};
