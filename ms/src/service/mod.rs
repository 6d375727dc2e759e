//! The runtime that drives one [`crate::pbft::Replica`] over tonic gRPC with mutual TLS and
//! persists it to redb (docs/pbft.md, "Runtime").
//!
//! Shape (one tokio runtime, no locks held across awaits):
//!
//! ```text
//!  peers ──Deliver──► gRPC server ──► per-peer inbound queue (bounded) ─┐
//!  clients ─Submit──► gRPC server ──► client queue (bounded) ───────────┤
//!                                                      ticker (tick_ms) ┤
//!                                                                       ▼
//!                                  actor: owns Replica + PbftStore (redb)
//!                                  1. step/propose/tick a bounded batch of inputs
//!                                  2. persist every Persist op: one write txn + fsync
//!                                  3. then sends → per-peer outbound queues (bounded,
//!                                     drop when full) → per-peer sender task → Deliver
//!                                  4. replies → the waiting Submit calls
//! ```
//!
//! The actor collects the actions of several inputs and commits all their persist ops in
//! one transaction before any of their sends (group commit). Moving a send later than a
//! persist never breaks "persist before send"; it only delays the send.
//!
//! Modules: `store` (redb layout), `actor` (the loop), `transport` (gRPC server and
//! per-peer senders), `client` (a client that counts f+1 matching signed replies).

mod actor;
mod client;
#[cfg(feature = "testkit")]
pub mod faulty_disk;
mod local;
mod observed;
mod store;
mod transport;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use thiserror::Error;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::pbft::{Application, Config, ReplicaId};

pub use client::{ClientError, Invocation, PbftClient, PbftClientConfig};
pub use local::LocalGroup;
pub use observed::Observed;
pub use store::{PbftStore, StoreError};
pub use transport::{DOMAIN_HEADER, PbftService};

/// The `Pbft` gRPC service of a hosted replica, ready to add to the host's own server.
pub type HostedPbftService = dbqs_proto::v1::pbft_server::PbftServer<PbftService>;

/// TLS material of one endpoint: the cluster CA and this endpoint's certificate and key
/// (PEM), issued by `dbqs_common::tls::ClusterCa`.
#[derive(Clone, Debug)]
pub struct TlsMaterial {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// How to reach and recognise one replica of the group.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// `host:port` of its Pbft service.
    pub address: String,
    /// The DNS name in its certificate (`NodeId::tls_name()`), checked when connecting.
    pub tls_name: String,
    /// SHA-256 of its DER TLS certificate: how the server side recognises it.
    pub cert_sha256: [u8; 32],
}

/// Every bound of the runtime. Queues drop (and count) rather than grow.
#[derive(Clone, Debug)]
pub struct RuntimeBounds {
    /// Period of `Replica::tick`.
    pub tick_ms: u64,
    /// Messages from one peer waiting for the actor.
    pub inbound_queue_per_peer: usize,
    /// Client submissions waiting for the actor.
    pub client_queue_len: usize,
    /// Messages waiting to be sent to one peer.
    pub outbound_queue_per_peer: usize,
    /// Most messages in one `Deliver` stream batch.
    pub outbound_batch_max_messages: usize,
    /// A `Deliver` stream batch stops growing once it holds this many bytes.
    pub outbound_batch_max_bytes: usize,
    /// Most inputs (messages, submissions) the actor handles before it persists and sends.
    pub actor_batch_max_inputs: usize,
    /// Most Submit calls waiting for a reply on this replica.
    pub max_waiters: usize,
    /// Recent replies kept for a Submit that arrives after its request executed.
    pub recent_replies: usize,
    /// How long a Submit call waits for its reply.
    pub submit_timeout_ms: u64,
    /// Connect timeout towards peers.
    pub connect_timeout_ms: u64,
    /// Longest pause before reopening a broken `Deliver` stream to a peer.
    pub peer_backoff_max_ms: u64,
    /// Concurrent RPCs served per connection.
    pub max_requests_per_connection: usize,
}

impl Default for RuntimeBounds {
    fn default() -> Self {
        RuntimeBounds {
            tick_ms: 10,
            inbound_queue_per_peer: 4_096,
            client_queue_len: 4_096,
            outbound_queue_per_peer: 4_096,
            outbound_batch_max_messages: 256,
            outbound_batch_max_bytes: 1 << 20,
            actor_batch_max_inputs: 256,
            max_waiters: 8_192,
            recent_replies: 4_096,
            submit_timeout_ms: 10_000,
            connect_timeout_ms: 2_000,
            peer_backoff_max_ms: 1_000,
            max_requests_per_connection: 1_024,
        }
    }
}

/// How long `shutdown` lets open connections finish before cutting them.
const SHUTDOWN_GRACE_MS: u64 = 2_000;

/// Everything one replica's runtime needs.
#[derive(Clone)]
pub struct RuntimeConfig {
    pub pbft: Config,
    /// Every replica of the group, indexed by `ReplicaId` (this one's entry is not dialled).
    pub peers: Vec<PeerInfo>,
    pub tls: TlsMaterial,
    /// The redb file; a replica restarted on the same file resumes from it.
    pub data_path: PathBuf,
    pub bounds: RuntimeBounds,
    /// Opens the replica's database instead of `data_path` (which is then not checked
    /// or set aside when damaged). None in production; fault-injection tests put a
    /// storage backend under the replica whose writes fail.
    pub database: Option<DatabaseOpener>,
}

/// Opens a replica's redb database (see `RuntimeConfig::database`).
pub type DatabaseOpener =
    Arc<dyn Fn() -> Result<redb::Database, redb::DatabaseError> + Send + Sync>;

/// Why a replica runtime could not start or stopped.
#[derive(Debug, Error)]
pub enum RuntimeError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("recovery: {0}")]
    Recover(#[from] crate::pbft::RecoverError),
    #[error("transport: {0}")]
    Transport(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Counters of the runtime (the engine's own are in `ReplicaStatus::engine_errors`).
#[derive(Debug, Default)]
pub struct RuntimeCounters {
    /// Messages dropped because a peer's outbound queue was full.
    pub outbound_dropped: AtomicU64,
    /// Messages lost because the `Deliver` stream to a peer broke (peer down or restarted).
    pub outbound_failed: AtomicU64,
    /// Messages handed to peers' `Deliver` streams.
    pub outbound_sent: AtomicU64,
    /// Peer messages dropped because the inbound queue for that peer was full.
    pub inbound_dropped: AtomicU64,
    /// `Deliver` streams refused because the caller is not another replica of the group.
    pub unauthenticated: AtomicU64,
    /// Submit calls refused (client queue full, too many waiters, malformed).
    pub client_rejected: AtomicU64,
    /// redb write transactions committed, and persist ops in them.
    pub persist_commits: AtomicU64,
    pub persist_ops: AtomicU64,
}

impl RuntimeCounters {
    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// What the actor publishes after each round, for tests, metrics and the hosting node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicaStatus {
    pub view: u64,
    pub view_changing: bool,
    pub is_primary: bool,
    pub last_executed: u64,
    pub stable_seq: u64,
    /// Rejections by the engine that point at a faulty peer (`ErrorCounters::suspicious`).
    pub engine_errors: u64,
    /// Rejections a healthy group produces too (`ErrorCounters::routine`): duplicates,
    /// stale or out-of-view messages, a full queue.
    pub engine_routine_rejects: u64,
    /// True once the actor stopped (a storage failure stops it: fail-stop).
    pub stopped: bool,
}

/// A running replica: its gRPC server, actor and per-peer senders.
pub struct RunningReplica {
    pub id: ReplicaId,
    /// Where its own server listens (None when hosted by another server).
    pub addr: Option<SocketAddr>,
    pub counters: Arc<RuntimeCounters>,
    status: watch::Receiver<ReplicaStatus>,
    shutdown: Option<oneshot::Sender<()>>,
    server_stop: Option<oneshot::Sender<()>>,
    actor: Option<JoinHandle<Result<(), RuntimeError>>>,
    server: Option<JoinHandle<()>>,
    senders: Vec<JoinHandle<()>>,
}

impl RunningReplica {
    /// Starts replica `cfg.pbft.me` serving on `listener`: resumes from the redb file at
    /// `cfg.data_path` if it holds a state, else starts at genesis and persists that first.
    pub async fn start<A: Application + Send + 'static>(
        cfg: RuntimeConfig,
        app: A,
        listener: tokio::net::TcpListener,
    ) -> Result<RunningReplica, RuntimeError> {
        let (mut replica, service) = Self::start_inner(cfg.clone(), app).await?;
        let addr = listener.local_addr()?;
        let (server_stop_tx, server_stop_rx) = oneshot::channel::<()>();
        let server = tokio::spawn(transport::serve(
            service,
            &cfg.tls,
            &cfg.bounds,
            limits_for_wire(&cfg),
            listener,
            server_stop_rx,
        )?);
        replica.addr = Some(addr);
        replica.server_stop = Some(server_stop_tx);
        replica.server = Some(server);
        Ok(replica)
    }

    /// Starts replica `cfg.pbft.me` without a server of its own: the host adds the
    /// returned `Pbft` service to its gRPC server (a storage node serves it on its one
    /// port, with the TLS of its own server). Peers are still dialled at their
    /// `PeerInfo::address`.
    pub async fn start_hosted<A: Application + Send + 'static>(
        cfg: RuntimeConfig,
        app: A,
    ) -> Result<(RunningReplica, HostedPbftService), RuntimeError> {
        let max = limits_for_wire(&cfg);
        let (replica, service) = Self::start_inner(cfg, app).await?;
        let service = dbqs_proto::v1::pbft_server::PbftServer::new(service)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        Ok((replica, service))
    }

    async fn start_inner<A: Application + Send + 'static>(
        cfg: RuntimeConfig,
        app: A,
    ) -> Result<(RunningReplica, PbftService), RuntimeError> {
        let n = cfg.pbft.n();
        let me = cfg.pbft.me;
        if cfg.peers.len() != n {
            return Err(RuntimeError::Config(format!(
                "{} peers for a group of {n}",
                cfg.peers.len()
            )));
        }
        cfg.pbft
            .validate()
            .map_err(|e| RuntimeError::Config(e.to_string()))?;
        let path = cfg.data_path.clone();
        let limits = cfg.pbft.limits.clone();
        let opener = cfg.database.clone();
        let (store, persisted) = tokio::task::spawn_blocking(move || {
            let store = match opener {
                Some(open) => PbftStore::on(
                    open().map_err(|e| StoreError::Engine(e.to_string()))?,
                    limits,
                )?,
                None => PbftStore::open_checked(&path, limits)?.0,
            };
            let persisted = store.load()?;
            Ok::<_, StoreError>((store, persisted))
        })
        .await
        .map_err(|e| RuntimeError::Config(format!("store task: {e}")))??;
        let mut store = store;
        let replica = match persisted {
            Some(state) => {
                tracing::info!(
                    replica = me,
                    view = state.view,
                    stable_seq = state.stable.proof.seq,
                    entries = state.entries.len(),
                    "resuming from the redb file"
                );
                crate::pbft::Replica::recover(cfg.pbft.clone(), state, app)?
            }
            None => {
                let genesis = crate::pbft::genesis_state(&app);
                store.init(&genesis)?;
                crate::pbft::Replica::recover(cfg.pbft.clone(), genesis, app)?
            }
        };

        let counters = Arc::new(RuntimeCounters::default());
        let b = &cfg.bounds;
        // Per-peer inbound queues, so one flooding peer cannot starve the others.
        let mut inbound_tx = Vec::with_capacity(n);
        let mut inbound_rx = Vec::with_capacity(n);
        for _ in 0..n {
            let (tx, rx) = mpsc::channel(b.inbound_queue_per_peer.max(1));
            inbound_tx.push(tx);
            inbound_rx.push(rx);
        }
        let (client_tx, client_rx) = mpsc::channel(b.client_queue_len.max(1));
        let mut outbound = Vec::with_capacity(n);
        let mut senders = Vec::new();
        for (i, peer) in cfg.peers.iter().enumerate() {
            if i == me as usize {
                outbound.push(None);
                continue;
            }
            let (tx, rx) = mpsc::channel(b.outbound_queue_per_peer.max(1));
            let client = transport::peer_client(peer, &cfg.tls, b, limits_for_wire(&cfg))?;
            senders.push(tokio::spawn(transport::peer_sender(
                i as ReplicaId,
                rx,
                client,
                b.clone(),
                counters.clone(),
                cfg.pbft.domain,
            )));
            outbound.push(Some(tx));
        }
        let (status_tx, status_rx) = watch::channel(actor::status_of(&replica));
        let (shutdown_tx, shutdown_rx) = oneshot::channel();
        let actor = actor::Actor::new(
            replica,
            store,
            outbound,
            counters.clone(),
            status_tx,
            b.clone(),
        );
        let actor = tokio::spawn(actor.run(inbound_rx, client_rx, shutdown_rx));

        let service = transport::PbftService::new(
            &cfg.peers,
            me,
            inbound_tx,
            client_tx,
            counters.clone(),
            cfg.pbft.limits.clone(),
            b.submit_timeout_ms,
        );
        let replica = RunningReplica {
            id: me,
            addr: None,
            counters,
            status: status_rx,
            shutdown: Some(shutdown_tx),
            server_stop: None,
            actor: Some(actor),
            server: None,
            senders,
        };
        Ok((replica, service))
    }

    /// The latest status the actor published.
    pub fn status(&self) -> ReplicaStatus {
        self.status.borrow().clone()
    }

    /// A watch on the status, to wait for a condition.
    pub fn watch_status(&self) -> watch::Receiver<ReplicaStatus> {
        self.status.clone()
    }

    /// Stops the replica as a crash would: every task is aborted (whatever was persisted
    /// stays, nothing else is flushed), and the redb file is released before this returns.
    pub async fn kill(mut self) {
        self.abort_all();
        if let Some(a) = self.actor.take() {
            let _ = a.await;
        }
        if let Some(s) = self.server.take() {
            let _ = s.await;
        }
        for s in self.senders.drain(..) {
            let _ = s.await;
        }
    }

    /// Stops the actor cleanly, then the rest; returns the actor's result.
    pub async fn shutdown(mut self) -> Result<(), RuntimeError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let result = match self.actor.take() {
            Some(a) => a
                .await
                .map_err(|e| RuntimeError::Config(format!("actor task: {e}")))?,
            None => Ok(()),
        };
        if let Some(tx) = self.server_stop.take() {
            let _ = tx.send(());
        }
        if let Some(mut s) = self.server.take() {
            // Graceful: connections finish their calls; bounded, then cut.
            let grace = std::time::Duration::from_millis(SHUTDOWN_GRACE_MS);
            if tokio::time::timeout(grace, &mut s).await.is_err() {
                s.abort();
                let _ = s.await;
            }
        }
        self.abort_all();
        for s in self.senders.drain(..) {
            let _ = s.await;
        }
        result
    }

    fn abort_all(&mut self) {
        if let Some(a) = &self.actor {
            a.abort();
        }
        if let Some(s) = &self.server {
            s.abort();
        }
        for s in &self.senders {
            s.abort();
        }
    }
}

impl Drop for RunningReplica {
    fn drop(&mut self) {
        self.abort_all();
    }
}

/// The largest gRPC message either side accepts: one full `Deliver` batch plus one
/// engine message of the largest size.
fn limits_for_wire(cfg: &RuntimeConfig) -> usize {
    cfg.bounds
        .outbound_batch_max_bytes
        .saturating_add(cfg.pbft.limits.max_message_bytes)
        .saturating_add(64 << 10)
}
