//! dBQS membership service (MS) replication.
//!
//! This crate owns the PBFT engine ([`pbft`]): a sans-IO Byzantine-fault-tolerant state
//! machine replication core (no sockets, no clocks, no tokio, no randomness inside), its wire
//! format and signatures, its persistence contract, and a deterministic simulator that runs
//! whole groups with injected crashes, partitions and Byzantine replicas.
//!
//! What it must not know: what it replicates (the membership state machine plugs in through
//! [`pbft::Application`]), how bytes travel (tonic, TLS) or where they are stored (redb).
//! Those belong to the runtime that drives the engine. For now it depends on neither
//! `dbqs-common` nor `dbqs-proto`.

pub mod pbft;
