//! One storage node: verifies its configuration, opens its store and serves
//! Storage, Membership and gRPC health over mutual TLS.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use dbqs_client::client::MAX_MESSAGE_BYTES;
use dbqs_client::files::{self, NodeFile};
use dbqs_common::threshold::MsPublicKey;
use dbqs_common::{ActiveConfig, ConfigCert, KeyPair, NodeId};
use dbqs_proto::v1::membership_server::MembershipServer;
use dbqs_proto::v1::storage_server::StorageServer;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tracing::Instrument;

use crate::byzantine::Behaviour;
use crate::service::{MembershipService, NodeCore, StorageService};
use crate::store::ObjectStore;

/// Concurrent HTTP/2 streams a connection may open.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 256;
/// Requests served at once per connection.
pub const MAX_REQUESTS_PER_CONNECTION: usize = 256;
/// How long the status page waits for each peer's answer.
pub const STATUS_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Server-side limit on one request's handling.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything needed to start a node.
pub struct NodeParams {
    pub key: KeyPair,
    pub tls_cert_pem: String,
    pub tls_key_pem: String,
    pub ca_pem: String,
    pub ms_key: MsPublicKey,
    /// The configuration to start from if the store holds none newer.
    pub config_cert: ConfigCert,
    pub data_dir: PathBuf,
    pub listener: std::net::TcpListener,
    /// The read-only status port (status page, /status.json, /metrics), if any.
    pub status_listener: Option<std::net::TcpListener>,
    /// Only devnet and tests set anything but `Honest`.
    pub behaviour: Behaviour,
}

impl NodeParams {
    /// Reads a node's files as `genesis` wrote them (`node.toml` and what it
    /// names) and binds its listen address.
    pub fn from_file(path: &Path) -> anyhow::Result<NodeParams> {
        let nf = NodeFile::load(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        let p = |s: &str| NodeFile::path(base, s);
        let ms_key = files::parse_ms_key(path, &nf.ms_public_key)?;
        let listen: SocketAddr = nf
            .listen
            .parse()
            .with_context(|| format!("{}: listen address {:?}", path.display(), nf.listen))?;
        let listener =
            std::net::TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
        let status_listener = match &nf.status_listen {
            None => None,
            Some(a) => {
                let addr: SocketAddr = a
                    .parse()
                    .with_context(|| format!("{}: status_listen address {a:?}", path.display()))?;
                Some(
                    std::net::TcpListener::bind(addr)
                        .with_context(|| format!("binding status port {addr}"))?,
                )
            }
        };
        Ok(NodeParams {
            key: files::read_keypair(&p(&nf.node_key))?,
            tls_cert_pem: files::read_text(&p(&nf.tls_cert))?,
            tls_key_pem: String::from_utf8(files::read_secret(&p(&nf.tls_key))?)
                .context("TLS key is not PEM")?,
            ca_pem: files::read_text(&p(&nf.ca_cert))?,
            ms_key,
            config_cert: files::read_config_cert(&p(&nf.config_cert))?,
            data_dir: p(&nf.data_dir),
            listener,
            status_listener,
            behaviour: Behaviour::Honest,
        })
    }
}

/// Asks the node described by `path` (its node.toml) for its gRPC health over
/// TLS, authenticating with the node's own certificate. For container
/// healthchecks: `dbqs-server health --config NODE.toml` exits 0 when serving.
pub async fn health_check(path: &Path, timeout: Duration) -> anyhow::Result<()> {
    let nf = NodeFile::load(path)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let p = |s: &str| NodeFile::path(base, s);
    let key = files::read_keypair(&p(&nf.node_key))?;
    let listen: SocketAddr = nf.listen.parse().context("listen address")?;
    let target = if listen.ip().is_unspecified() {
        SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), listen.port())
    } else {
        listen
    };
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(files::read_text(&p(&nf.ca_cert))?))
        .identity(Identity::from_pem(
            files::read_text(&p(&nf.tls_cert))?,
            files::read_secret(&p(&nf.tls_key))?,
        ))
        .domain_name(key.node_id().tls_name());
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{target}"))?
        .tls_config(tls)?
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect()
        .await
        .with_context(|| format!("connecting to {target}"))?;
    let mut h = tonic_health::pb::health_client::HealthClient::new(channel);
    let r = h
        .check(tonic_health::pb::HealthCheckRequest {
            service: "dbqs.v1.Storage".into(),
        })
        .await
        .context("health check")?
        .into_inner();
    if r.status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 {
        Ok(())
    } else {
        bail!("node at {target} is not serving (status {})", r.status)
    }
}

/// A node being served.
pub struct RunningNode {
    pub id: NodeId,
    pub addr: SocketAddr,
    pub core: Arc<NodeCore>,
    pub status_addr: Option<SocketAddr>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    status_task: Option<JoinHandle<()>>,
}

impl RunningNode {
    /// Stops the node: no new connections, requests in flight get a short grace
    /// period, then the store is closed.
    pub async fn stop(mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        let abort = self.task.abort_handle();
        if tokio::time::timeout(Duration::from_secs(2), &mut self.task)
            .await
            .is_err()
        {
            abort.abort();
        }
        self.core.stop();
    }

    /// Stops the node at once, as a crash would (acknowledged writes are already
    /// on disk; nothing else is flushed).
    pub fn crash(self) {
        self.task.abort();
        if let Some(t) = &self.status_task {
            t.abort();
        }
        self.core.stop();
    }
}

/// Verifies the configuration, opens the store and starts serving.
pub async fn start(p: NodeParams) -> anyhow::Result<RunningNode> {
    let id = p.key.node_id();
    std::fs::create_dir_all(&p.data_dir)
        .with_context(|| format!("creating {}", p.data_dir.display()))?;
    let store = ObjectStore::open(&p.data_dir.join("store.redb"))?;

    // Start from the newest configuration we can verify: the one given, or a
    // newer one the store recorded.
    let mut active =
        ActiveConfig::verify(p.config_cert, &p.ms_key).context("configuration certificate")?;
    if let Some(bytes) = store.config_cert()? {
        let stored = ConfigCert::decode(&bytes).context("stored configuration certificate")?;
        if stored.epoch > active.epoch() {
            active = ActiveConfig::verify(stored, &p.ms_key)
                .context("stored configuration certificate")?;
        }
    }
    if active.member(&id).is_none() {
        bail!(
            "node {} is not a member of the configuration of epoch {}",
            id.to_hex(),
            active.epoch()
        );
    }
    store.set_epoch(active.epoch(), &active.cert.encode())?;
    let epoch = active.epoch();
    let peer_client = dbqs_client::Client::with_identity(
        p.ms_key,
        active.clone(),
        dbqs_client::ClientIdentity {
            ca_pem: p.ca_pem.clone(),
            tls_cert_pem: p.tls_cert_pem.clone(),
            tls_key_pem: p.tls_key_pem.clone(),
        },
        None,
        STATUS_PROBE_TIMEOUT,
    );
    let (_config_tx, config_rx) = watch::channel(active);
    let span_epoch = config_rx.clone();
    let core = NodeCore::new(id, config_rx, store, p.behaviour);

    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(&p.tls_cert_pem, &p.tls_key_pem))
        .client_ca_root(Certificate::from_pem(&p.ca_pem));
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<StorageServer<StorageService>>().await;
    // Both reflection versions: grpcurl and newer stacks ask v1, older ones
    // (Python's grpcio-reflection among them) v1alpha.
    let reflection_builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(dbqs_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // Advertise what this port serves, not every service in the protos
            // (the MS's Pbft service is not hosted here).
            .with_service_name("dbqs.v1.Storage")
            .with_service_name("dbqs.v1.Membership")
            .with_service_name("grpc.health.v1.Health")
    };
    let reflection = reflection_builder().build_v1()?;
    let reflection_alpha = reflection_builder().build_v1alpha()?;
    let router = Server::builder()
        // Every request's span names the node and the epoch it is serving.
        .trace_fn(move |req| {
            tracing::info_span!(
                "request",
                node = %id,
                epoch = span_epoch.borrow().epoch(),
                rpc = %req.uri().path()
            )
        })
        .tls_config(tls)?
        .tcp_nodelay(true)
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .concurrency_limit_per_connection(MAX_REQUESTS_PER_CONNECTION)
        .timeout(REQUEST_TIMEOUT)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(
            StorageServer::new(StorageService { core: core.clone() })
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            MembershipServer::new(MembershipService { core: core.clone() })
                .max_encoding_message_size(64 << 20),
        );

    p.listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(p.listener)?;
    let addr = listener.local_addr()?;
    // Our own listener (so tests and restarts can hold the port), so set
    // TCP_NODELAY here: the builder's setting applies only to listeners it binds.
    let incoming = tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(30)));
    let (tx, rx) = oneshot::channel::<()>();
    let span = tracing::info_span!("node", id = %id, epoch);
    let task = tokio::spawn(
        async move {
            tracing::info!(%addr, "serving");
            if let Err(e) = router
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = rx.await;
                })
                .await
            {
                tracing::error!(error = %e, "server stopped with an error");
            }
            // Keep the health reporter alive as long as the server.
            drop(health);
        }
        .instrument(span),
    );
    let (status_addr, status_task) = match p.status_listener {
        None => (None, None),
        Some(l) => {
            l.set_nonblocking(true)?;
            let l = tokio::net::TcpListener::from_std(l)?;
            let saddr = l.local_addr()?;
            let app = crate::status::router(crate::status::StatusState {
                core: core.clone(),
                peers: peer_client,
            });
            let t = tokio::spawn(async move {
                if let Err(e) = axum::serve(l, app).await {
                    tracing::error!(error = %e, "status port stopped");
                }
            });
            (Some(saddr), Some(t))
        }
    };
    Ok(RunningNode {
        id,
        addr,
        core,
        status_addr,
        shutdown: Some(tx),
        task,
        status_task,
    })
}
