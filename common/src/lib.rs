//! Shared dBQS types: ed25519 identities and `NodeId`, authority certificates,
//! the epoch `Configuration` and its threshold-signed `ConfigCert`, ring placement,
//! self-verifying objects, quorum arithmetic, the genesis dealer and TLS issuance.
//!
//! This crate does no networking and owns no storage engine; it knows the wire
//! messages of `dbqs-proto` only to convert them into validated domain types.

pub mod certs;
pub mod codec;
pub mod config;
pub mod genesis;
pub mod identity;
pub mod merkle;
pub mod object;
pub mod quorum;
pub mod ring;
pub mod threshold;
pub mod tls;

pub use config::{ActiveConfig, ConfigCert, Configuration, Epoch};
pub use identity::{KeyPair, NodeId, PublicKey};
pub use object::{ObjectId, OwnedHeader, OwnedValue, Timestamp};
