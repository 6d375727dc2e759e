//! dBQS membership service (MS) replication.
//!
//! This crate owns the PBFT engine ([`pbft`]): a sans-IO Byzantine-fault-tolerant state
//! machine replication core (no sockets, no clocks, no tokio, no randomness inside), its wire
//! format and signatures, its persistence contract, and a deterministic simulator that runs
//! whole groups with injected crashes, partitions and Byzantine replicas.
//!
//! The engine must not know what it replicates (the membership state machine plugs in
//! through [`pbft::Application`]), how bytes travel (tonic, TLS) or where they are stored
//! (redb). Those belong to [`service`], the runtime that drives one replica over gRPC with
//! mutual TLS and persists it to redb; `pbft` itself uses none of tokio, tonic or redb.

pub mod membership;
pub mod pbft;
pub mod service;
