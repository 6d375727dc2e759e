//! The dBQS storage node (binary `dbqs-server`): the redb object store, the
//! quorum replica services, the node runtime, and `devnet`.
//!
//! Protocol decisions live in `dbqs-common` and PROTOCOL.md; this crate is where
//! tonic and redb meet them. Byzantine behaviours ([`byzantine`]) exist for devnet
//! and tests only.

pub mod byzantine;
pub mod configs;
pub mod conn_limit;
pub mod devnet;
pub mod fair;
pub mod lease;
pub mod metrics;
pub mod ms_host;
pub mod ms_rotation;
pub mod node;
pub mod peers;
pub mod rejoin;
pub mod service;
pub mod status;
pub mod status_tls;
pub mod store;
pub mod transfer;

/// Installs the ring crypto provider for rustls (once per process; later calls
/// are harmless).
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM, so `kill` stops a node or a devnet as
/// cleanly as Ctrl-C does (devnet then stops the node processes it started).
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
