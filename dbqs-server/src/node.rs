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
use tonic::transport::Server;
use tracing::Instrument;

use crate::byzantine::Behaviour;
use crate::configs::ConfigManager;
use crate::lease::NodeLease;
use crate::ms_host::{MsBehaviour, MsHost, MsHostParams, MsStart};
use crate::peers::PeerChannels;
use crate::service::{MembershipService, NodeCore, StorageService};
use crate::store::ObjectStore;
use dbqs_common::certs::AddCert;

/// Concurrent HTTP/2 streams a connection may open.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 256;
/// Requests served at once per connection.
pub const MAX_REQUESTS_PER_CONNECTION: usize = 256;
/// How long the status page waits for each peer's answer.
pub const STATUS_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Server-side limit on one request's handling.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the gRPC health status follows the lease.
pub const HEALTH_POLL: Duration = Duration::from_millis(100);
/// Timeout of the node's own calls to other members (probes, pushes, freshness).
pub const PEER_TIMEOUT: Duration = Duration::from_secs(3);
/// Most epochs between a node's admission and its first start that the join path plans
/// over (one configuration fetched per epoch).
pub const LATE_START_MAX_EPOCHS: usize = 1_024;

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
    /// Serve the status port over TLS with the node's certificate (plain HTTP if false).
    pub status_tls: bool,
    /// Only devnet and tests set anything but `Honest`.
    pub behaviour: Behaviour,
    /// The node's MS key share (0-based index, share), if genesis dealt it one and it
    /// was not erased after a rotation.
    pub ms_share: Option<(usize, blsttc::SecretKeyShare)>,
    /// The file that share came from (erased when the genesis MS term retires).
    pub ms_share_path: Option<PathBuf>,
    /// The node's x25519 secret: new MS shares are sealed to its public key.
    pub x25519_secret: [u8; 32],
    /// Every genesis member's AddCert (the MS state machine starts from them).
    pub genesis_adds: Vec<AddCert>,
    /// Only devnet and tests set anything but `Honest`.
    pub ms_behaviour: MsBehaviour,
    /// Wait for admission if no configuration the node holds includes it yet
    /// (`dbqs-server join`), instead of refusing to start.
    pub join: bool,
    /// The node's own AddCert (`add.cert` next to its TLS certificate), which it submits
    /// again to rejoin after an eviction (rejoin.rs). A genesis member falls back on its
    /// entry in `genesis_adds`.
    pub add_cert: Option<AddCert>,
}

/// Reads `genesis.adds`: the genesis members' AddCerts, each as u32 length + encoding.
pub fn read_genesis_adds(path: &Path) -> anyhow::Result<Vec<AddCert>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    dbqs_common::genesis::decode_adds(&bytes).with_context(|| format!("{}", path.display()))
}

/// Reads an `ms-share.key` file: "INDEX HEX" (0-based index, blsttc share bytes).
pub fn read_ms_share(path: &Path) -> anyhow::Result<(usize, blsttc::SecretKeyShare)> {
    let text = String::from_utf8(files::read_secret(path)?)
        .with_context(|| format!("{} is not text", path.display()))?;
    let (idx, hex_share) = text
        .trim()
        .split_once(' ')
        .with_context(|| format!("{}: expected \"INDEX HEX\"", path.display()))?;
    let idx: usize = idx
        .parse()
        .with_context(|| format!("{}: bad share index", path.display()))?;
    let bytes: [u8; 32] = hex::decode(hex_share)
        .ok()
        .and_then(|b| b.try_into().ok())
        .with_context(|| format!("{}: the share must be 32 bytes of hex", path.display()))?;
    let share = blsttc::SecretKeyShare::from_bytes(bytes)
        .map_err(|e| anyhow::anyhow!("{}: bad share: {e}", path.display()))?;
    Ok((idx, share))
}

/// Reads a node's x25519 secret: 64 hex digits, mode 0600.
pub fn read_x25519_secret(path: &Path) -> anyhow::Result<[u8; 32]> {
    let text = String::from_utf8(files::read_secret(path)?)
        .with_context(|| format!("{} is not text", path.display()))?;
    hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .with_context(|| format!("{}: expected 64 hex digits", path.display()))
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
            status_tls: nf.status_tls,
            behaviour: Behaviour::Honest,
            // A genesis share erased after a rotation is gone for good.
            ms_share: match &nf.ms_share {
                Some(f) if p(f).exists() => Some(read_ms_share(&p(f))?),
                _ => None,
            },
            ms_share_path: nf.ms_share.as_deref().map(p),
            x25519_secret: read_x25519_secret(&p(&nf.x25519_key))?,
            genesis_adds: {
                let adds = p(&nf.config_cert).with_file_name("genesis.adds");
                if adds.exists() {
                    read_genesis_adds(&adds)?
                } else {
                    Vec::new()
                }
            },
            ms_behaviour: MsBehaviour::Honest,
            join: false,
            add_cert: crate::rejoin::read_own_add_cert(&p(&nf.tls_cert)),
        })
    }
}

/// Asks the node described by `path` (its node.toml) for its gRPC health over
/// TLS, authenticating with the node's own certificate. For container
/// healthchecks: `dbqs-server health --config NODE.toml` exits 0 when serving
/// (holding a lease); with `live`, whenever the node answers. Returns what the
/// node said.
pub async fn health_check(path: &Path, timeout: Duration, live: bool) -> anyhow::Result<String> {
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
    let tls = dbqs_common::tls::grpc_client_config_tls13(
        &files::read_text(&p(&nf.ca_cert))?,
        &files::read_text(&p(&nf.tls_cert))?,
        &String::from_utf8(files::read_secret(&p(&nf.tls_key))?)
            .context("the TLS key is not UTF-8 PEM")?,
    )?;
    let channel = dbqs_client::tls::channel(
        &target.to_string(),
        &key.node_id().tls_name(),
        Arc::new(tls),
        |e| e.connect_timeout(timeout).timeout(timeout),
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    let mut h = tonic_health::pb::health_client::HealthClient::new(channel);
    let r = h
        .check(tonic_health::pb::HealthCheckRequest {
            service: "dbqs.v1.Storage".into(),
        })
        .await
        .with_context(|| format!("health check of {target}"))?
        .into_inner();
    if r.status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 {
        Ok("serving".into())
    } else if live {
        Ok("alive (not serving: no freshness lease)".into())
    } else {
        bail!(
            "node at {target} is not serving (status {}): it holds no freshness lease from the MS",
            r.status
        )
    }
}

/// How often a joining node asks the members it knows for a newer configuration.
pub const JOIN_POLL: Duration = Duration::from_secs(1);

/// Polls the members of the newest configuration the node knows until one answers with a
/// configuration (verified with the MS key) that includes `id`. Logs its progress.
async fn wait_for_admission(
    id: &NodeId,
    mut active: ActiveConfig,
    ms_key: &MsPublicKey,
    peers: &PeerChannels,
) -> ActiveConfig {
    let started = std::time::Instant::now();
    let mut last_log = std::time::Instant::now();
    tracing::info!(node = %id, epoch = active.epoch(), "waiting until a configuration admits this node");
    loop {
        for m in active.config.members.clone() {
            let Ok(mut c) = peers.membership(&m) else {
                continue;
            };
            let Ok(Ok(r)) = tokio::time::timeout(
                PEER_TIMEOUT,
                c.get_config(dbqs_proto::v1::GetConfigRequest { epoch: 0 }),
            )
            .await
            else {
                continue;
            };
            let Some(cert) = r.into_inner().cert else {
                continue;
            };
            match ActiveConfig::verify(ConfigCert::from_proto(cert), ms_key) {
                Ok(newer) if newer.epoch() > active.epoch() => {
                    active = newer;
                    break;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(from = %m.node_id(), error = %e, "configuration refused"),
            }
        }
        if active.member(id).is_some() {
            tracing::info!(
                node = %id,
                epoch = active.epoch(),
                waited_s = started.elapsed().as_secs(),
                "admitted"
            );
            return active;
        }
        if last_log.elapsed() >= Duration::from_secs(10) {
            last_log = std::time::Instant::now();
            tracing::info!(
                node = %id,
                epoch = active.epoch(),
                waited_s = started.elapsed().as_secs(),
                "still waiting for admission (has an admin submitted `dbqs admin add` for this node?)"
            );
        }
        tokio::time::sleep(JOIN_POLL).await;
    }
}

/// Whether a store file set aside as damaged (`store.redb.damaged-*`) is next to `path`.
fn damaged_file_exists(path: &Path) -> bool {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return false;
    };
    let prefix = format!("{}.damaged-", name.to_string_lossy());
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(&prefix))
    })
}

/// The newest configuration the members of `active` (then of each newer one found) answer
/// with, verified with the MS key (PROTOCOL.md, "State transfer" 7). Asks every other
/// member and waits (logging every 10 s) until q = 2f+1 of the newest configuration's
/// other members (all of them, if fewer) answered in one pass and the newest is at least
/// `floor`, the epoch the node last recorded: a rebuild must start from a current epoch's
/// groups, never from an old configuration (their members may have deleted those
/// ranges). A first version returned once any one member answered, so one lagging or
/// faulty member could start the rebuild epochs in the past.
async fn newest_config(
    id: &NodeId,
    mut active: ActiveConfig,
    floor: u64,
    ms_key: &MsPublicKey,
    peers: &PeerChannels,
) -> ActiveConfig {
    let started = std::time::Instant::now();
    let mut last_log = started;
    loop {
        // One pass over the members of the newest configuration known: who answered
        // (a verified answer, whatever its epoch), and the newest they showed.
        let mut answered: std::collections::BTreeSet<NodeId> = std::collections::BTreeSet::new();
        let mut newest = active.clone();
        for m in active.config.members.iter().filter(|m| m.node_id() != *id) {
            let Ok(mut c) = peers.membership(m) else {
                continue;
            };
            let Ok(Ok(r)) = tokio::time::timeout(
                PEER_TIMEOUT,
                c.get_config(dbqs_proto::v1::GetConfigRequest { epoch: 0 }),
            )
            .await
            else {
                continue;
            };
            let Some(cert) = r.into_inner().cert else {
                continue;
            };
            let Ok(a) = ActiveConfig::verify(ConfigCert::from_proto(cert), ms_key) else {
                continue;
            };
            answered.insert(m.node_id());
            if a.epoch() > newest.epoch() {
                newest = a;
            }
        }
        let others = newest
            .config
            .members
            .iter()
            .filter(|m| m.node_id() != *id)
            .count();
        let need = newest.quorum().min(others);
        let counted = answered
            .iter()
            .filter(|n| newest.member(n).is_some())
            .count();
        let moved = newest.epoch() > active.epoch();
        active = newest;
        if moved {
            // Ask the members of the newer configuration before deciding.
            continue;
        }
        if active.epoch() >= floor && counted >= need {
            return active;
        }
        if last_log.elapsed() >= Duration::from_secs(10) {
            last_log = std::time::Instant::now();
            tracing::warn!(
                epoch = active.epoch(),
                last_served = floor,
                answered = counted,
                need,
                waited_s = started.elapsed().as_secs(),
                "rebuilding: waiting for a quorum of members to show the newest configuration, at or above the epoch this node last served"
            );
        }
        tokio::time::sleep(JOIN_POLL).await;
    }
}

/// The configuration of `epoch`, fetched from a member of `from` and verified.
async fn fetch_verified(
    me: &NodeId,
    from: &ActiveConfig,
    epoch: u64,
    ms_key: &MsPublicKey,
    peers: &PeerChannels,
) -> anyhow::Result<ActiveConfig> {
    for _ in 0..30 {
        // Not this node: it does not serve yet, and the MS probes it meanwhile.
        for m in from.config.members.iter().filter(|m| m.node_id() != *me) {
            let Ok(mut c) = peers.membership(m) else {
                continue;
            };
            let Ok(Ok(r)) = tokio::time::timeout(
                PEER_TIMEOUT,
                c.get_config(dbqs_proto::v1::GetConfigRequest { epoch }),
            )
            .await
            else {
                continue;
            };
            if let Some(cert) = r.into_inner().cert
                && let Ok(a) = ActiveConfig::verify(ConfigCert::from_proto(cert), ms_key)
                && a.epoch() == epoch
            {
                return Ok(a);
            }
        }
        tokio::time::sleep(JOIN_POLL).await;
    }
    bail!("no member answered with the configuration of epoch {epoch}")
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
    ms: Arc<crate::ms_rotation::MsSlots>,
    agent_task: JoinHandle<()>,
    /// Stops the lease keeper.
    stop_tx: watch::Sender<bool>,
    lease_task: JoinHandle<()>,
    health_task: JoinHandle<()>,
    transfer_task: JoinHandle<()>,
    gc_task: JoinHandle<()>,
}

impl RunningNode {
    /// The MS role this node runs, if it is an MS member now.
    pub fn ms(&self) -> Option<crate::ms_host::MsHandle> {
        self.ms.active()
    }

    /// Stops the node: the MS role first, then no new connections, requests in
    /// flight get a short grace period, then the store is closed.
    pub async fn stop(mut self) {
        let _ = self.stop_tx.send(true);
        self.lease_task.abort();
        self.health_task.abort();
        self.transfer_task.abort();
        self.gc_task.abort();
        self.agent_task.abort();
        self.ms.stop_all().await;
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
        if let Some(t) = &self.status_task {
            t.abort();
        }
        self.core.stop();
    }

    /// Stops the node at once, as a crash would (acknowledged writes and MS votes
    /// are already on disk; nothing else is flushed). Files are released when it
    /// returns.
    pub async fn crash(self) {
        self.task.abort();
        self.lease_task.abort();
        self.health_task.abort();
        self.transfer_task.abort();
        self.gc_task.abort();
        if let Some(t) = &self.status_task {
            t.abort();
        }
        self.agent_task.abort();
        self.ms.kill_all().await;
        self.core.stop();
    }
}

/// Verifies the configuration, opens the store and starts serving.
pub async fn start(p: NodeParams) -> anyhow::Result<RunningNode> {
    let id = p.key.node_id();
    std::fs::create_dir_all(&p.data_dir)
        .with_context(|| format!("creating {}", p.data_dir.display()))?;
    let store_path = p.data_dir.join("store.redb");
    let (store, damage) = ObjectStore::open_checked(&store_path)?;
    // Rebuild when the file was found damaged now, or was before and the node stopped
    // before it recorded what to rebuild (the fresh store still has no epoch).
    // PROTOCOL.md, "State transfer" 7: a store at an older epoch than the node had
    // recorded (emptied, replaced, or restored from an older copy) is rebuilt too; it
    // must not answer as if it held what the node served since.
    let floor_path = p.data_dir.join(crate::configs::EPOCH_FLOOR_FILE);
    let floor = crate::configs::read_epoch_floor(&floor_path, &p.ms_key);
    let rebuild = match &damage {
        Some(d) => Some(d.reason.clone()),
        None if store.epoch()? == 0 && damaged_file_exists(&store_path) => {
            Some("an earlier start found the store damaged and set it aside".to_string())
        }
        None if store.epoch()? < floor => Some(format!(
            "the store is at epoch {} but this node had served epoch {floor} (the store file was emptied, replaced or restored from an older copy)",
            store.epoch()?
        )),
        None => None,
    };

    // Start from the newest configuration we can verify: the one given, or a
    // newer one the store recorded.
    let genesis_cert = p.config_cert.clone();
    let mut active =
        ActiveConfig::verify(p.config_cert, &p.ms_key).context("configuration certificate")?;
    if let Some(bytes) = store.config_cert()? {
        let stored = ConfigCert::decode(&bytes).context("stored configuration certificate")?;
        if stored.epoch > active.epoch() {
            active = ActiveConfig::verify(stored, &p.ms_key)
                .context("stored configuration certificate")?;
        }
    }
    let peers = Arc::new(PeerChannels::new(
        &p.ca_pem,
        &p.tls_cert_pem,
        &p.tls_key_pem,
        PEER_TIMEOUT,
    ));
    if let Some(reason) = rebuild {
        // With f = 0 a group is one node: nobody else holds what this node serves.
        if active.f() == 0 || active.config.members.iter().all(|m| m.node_id() == id) {
            bail!(
                "the store in {} must be rebuilt ({reason}) but no other member holds its objects (f = 0); restore the data directory from a backup, with its {} file (or delete that file to start from an older copy of the store on purpose)",
                p.data_dir.display(),
                crate::configs::EPOCH_FLOOR_FILE
            );
        }
        // Everything this node serves now comes back from its groups; meanwhile it
        // answers nothing it does not hold from a quorum of the others.
        active = newest_config(&id, active, floor, &p.ms_key, &peers).await;
        if active.member(&id).is_some() {
            let pending = crate::transfer::plan::rebuild_pending(&active, &id);
            store.set_epoch_with_pending(
                active.epoch(),
                &active.cert.encode(),
                &pending.encode(),
            )?;
            tracing::warn!(
                node = %id,
                epoch = active.epoch(),
                ranges = pending.ranges.len(),
                %reason,
                "rebuilding the store from this node's groups"
            );
        }
    }
    // Restarted after an eviction it had already adopted (rejoin.rs): an older stored
    // configuration lists the node and its AddCert is at hand. It starts as a non-member
    // (serving nothing; the epoch manager takes it through the configurations to come)
    // and its rejoin task submits the AddCert at once.
    let own_add = crate::rejoin::own_add_cert(&id, p.add_cert.as_ref(), &p.genesis_adds);
    let member_until = match (&own_add, active.member(&id)) {
        (Some(_), None) => {
            crate::rejoin::last_member_epoch(&store, &id, active.epoch(), &p.ms_key)?
        }
        _ => None,
    };
    if let Some(was) = member_until {
        tracing::warn!(
            node = %id,
            epoch = active.epoch(),
            member_until = was,
            "this node is not a member of its newest configuration but was of an older one (evicted, or removed): starting outside it and submitting its own AddCert to rejoin"
        );
    }
    if active.member(&id).is_none() && member_until.is_none() {
        if !p.join {
            bail!(
                "node {} is not a member of the configuration of epoch {}; start it with `dbqs-server join` to wait for its admission",
                id.to_hex(),
                active.epoch()
            );
        }
        active = wait_for_admission(&id, active, &p.ms_key, &peers).await;
        // The configuration found may already place the node on the ring (it joined
        // a few epochs late): everything it serves there must be taken over from the
        // previous epoch's groups before it answers for it.
        let prev = fetch_verified(&id, &active, active.epoch() - 1, &p.ms_key, &peers)
            .await
            .context("fetching the configuration before the one that admitted this node")?;
        let placed_before = prev.ring().members().any(|(_, n)| *n == id);
        let pending = if placed_before {
            // PROTOCOL.md, "State transfer" 7: placed while it was not running, it
            // holds nothing of what it serves; it plans as if it had adopted every
            // epoch since its admission and finished no take-over.
            let mut chain = vec![active.clone(), prev.clone()];
            while chain
                .last()
                .is_some_and(|c| c.ring().members().any(|(_, n)| *n == id))
            {
                let e = chain.last().map_or(0, |c| c.epoch()) - 1;
                anyhow::ensure!(
                    e >= 1 && chain.len() <= LATE_START_MAX_EPOCHS,
                    "this node was placed on the ring more than {LATE_START_MAX_EPOCHS} epochs before it first started; start it with an empty data directory after an admin removes and adds it again"
                );
                chain.push(
                    fetch_verified(&id, &active, e, &p.ms_key, &peers)
                        .await
                        .context("fetching the configurations since this node's admission")?,
                );
            }
            chain.reverse();
            tracing::warn!(
                node = %id,
                epoch = active.epoch(),
                admitted = chain[0].epoch(),
                "this node starts after the epoch that placed it: it takes over everything it serves before answering for it"
            );
            for c in &chain[..chain.len() - 1] {
                store.put_config(c.epoch(), &c.cert.encode())?;
            }
            crate::transfer::plan::late_start_pending(&chain, &id)
        } else {
            crate::transfer::plan::next_pending(
                &prev,
                &active,
                &id,
                &crate::transfer::plan::Pending::default(),
            )
        };
        store.put_config(prev.epoch(), &prev.cert.encode())?;
        store.set_epoch_with_pending(active.epoch(), &active.cert.encode(), &pending.encode())?;
    }
    store.set_epoch(active.epoch(), &active.cert.encode())?;
    let epoch = active.epoch();
    if let Err(e) = crate::configs::write_epoch_floor(&floor_path, &p.ms_key, epoch.max(floor)) {
        tracing::warn!(file = %floor_path.display(), error = %e, "cannot record the last epoch");
    }
    let configs = Arc::new(
        ConfigManager::new(p.ms_key, store.clone(), id, active.clone())?
            .with_epoch_floor_file(floor_path),
    );
    let lease = Arc::new(NodeLease::default());
    // The MS role: the genesis term if genesis dealt this node a share it still holds,
    // and every later term it joined (docs/resharing.md, "On the nodes").
    let tls_material = dbqs_ms::service::TlsMaterial {
        ca_pem: p.ca_pem.clone(),
        cert_pem: p.tls_cert_pem.clone(),
        key_pem: p.tls_key_pem.clone(),
    };
    let ms = Arc::new(crate::ms_rotation::MsSlots::default());
    let genesis_cfg = dbqs_common::config::Configuration::decode(&genesis_cert.configuration)
        .context("genesis configuration")?;
    if let Some(share) = p.ms_share
        && genesis_cert.epoch == 1
        && genesis_cfg.ms_members.contains(&id)
    {
        if p.genesis_adds.is_empty() {
            bail!("node {id} is a genesis MS member but was not given genesis.adds");
        }
        let (host, svc) = MsHost::start(
            MsHostParams {
                key: p.key.clone(),
                share: (share.0, Some(share.1)),
                ms_key: p.ms_key,
                start: MsStart::Genesis {
                    cert: genesis_cert,
                    adds: p.genesis_adds.clone(),
                },
                tls: tls_material.clone(),
                data_path: p.data_dir.join("ms.redb"),
                behaviour: p.ms_behaviour,
            },
            configs.clone(),
            peers.clone(),
        )
        .await?;
        ms.install(host, svc).await;
    }
    let agent = crate::ms_rotation::Agent {
        key: p.key.clone(),
        x25519_secret: p.x25519_secret,
        ms_key: p.ms_key,
        tls: tls_material,
        data_dir: p.data_dir.clone(),
        configs: configs.clone(),
        peers: peers.clone(),
        slots: ms.clone(),
        genesis_share_path: p.ms_share_path.clone(),
        behaviour: p.ms_behaviour,
    };
    for t in crate::ms_rotation::TermFile::load_all(&p.data_dir)? {
        let epoch = t.epoch;
        agent
            .start_term(t)
            .await
            .with_context(|| format!("hosting the MS term of epoch {epoch}"))?;
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let agent_task = tokio::spawn(crate::ms_rotation::run(agent, stop_rx.clone()));
    // Rejoin after an eviction (rejoin.rs). It ends with the node: `stop()` sets
    // `stop_rx`, `crash()` drops its sender.
    crate::rejoin::spawn(
        p.key.clone(),
        own_add,
        dbqs_ms::service::TlsMaterial {
            ca_pem: p.ca_pem.clone(),
            cert_pem: p.tls_cert_pem.clone(),
            key_pem: p.tls_key_pem.clone(),
        },
        configs.subscribe(),
        stop_rx.clone(),
        member_until,
    );
    let lease_task = tokio::spawn(crate::lease::keep(
        lease.clone(),
        configs.clone(),
        peers.clone(),
        stop_rx.clone(),
    ));
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
    let span_epoch = configs.subscribe();
    let transfer_store = store.clone();
    let core = NodeCore::new(
        p.key.clone(),
        configs.clone(),
        lease,
        ms.clone(),
        store,
        p.behaviour,
        Some(peers.clone()),
    );

    // TLS 1.3 only, mutual: accepted by the node itself (status_tls.rs), not by tonic.
    let tls = crate::status_tls::grpc_server_config(&p.tls_cert_pem, &p.tls_key_pem, &p.ca_pem)?;
    let (health, health_service) = tonic_health::server::health_reporter();
    // Storage is SERVING only while the node holds a freshness lease (it refuses
    // Storage requests otherwise), so container healthchecks see the same thing.
    health
        .set_not_serving::<StorageServer<StorageService>>()
        .await;
    let transfer_task = tokio::spawn(crate::transfer::run(
        configs.clone(),
        transfer_store,
        peers.clone(),
        core.transfer.clone(),
        stop_tx.subscribe(),
    ));
    let gc_task = tokio::spawn(crate::transfer::collect_garbage(
        configs.clone(),
        core.store.clone(),
        peers.clone(),
        core.transfer.clone(),
        stop_tx.subscribe(),
    ));
    let health_task = {
        let health = health.clone();
        let core = core.clone();
        tokio::spawn(async move {
            let mut serving = false;
            loop {
                let ok = core.lease.check(core.configs.epoch()).is_ok();
                if ok != serving {
                    serving = ok;
                    if ok {
                        health.set_serving::<StorageServer<StorageService>>().await;
                    } else {
                        health
                            .set_not_serving::<StorageServer<StorageService>>()
                            .await;
                    }
                    tracing::info!(serving, "storage health changed");
                }
                tokio::time::sleep(HEALTH_POLL).await;
            }
        })
    };
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
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
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
        )
        // The MS's PBFT transport, routed to the hosted MS term each call names (an
        // UNAVAILABLE answer where this node hosts none).
        .add_service(crate::ms_rotation::PbftRouter { slots: ms.clone() });

    p.listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(p.listener)?;
    let addr = listener.local_addr()?;
    // Our own listener (so tests and restarts can hold the port) and our own TLS
    // acceptor (TLS 1.3 only); TCP_NODELAY is set on each accepted connection. A client
    // identity holds at most MAX_CONNECTIONS_PER_CLIENT connections (conn_limit.rs).
    let limits = crate::conn_limit::ConnLimits::new(crate::conn_limit::MAX_CONNECTIONS_PER_CLIENT);
    let members = configs.subscribe();
    let refused = std::sync::atomic::AtomicU64::new(0);
    let incoming = futures::StreamExt::filter_map(
        tokio_stream::wrappers::ReceiverStream::new(crate::status_tls::accept(listener, tls, true)),
        move |(stream, peer)| {
            let id = crate::conn_limit::identity(&stream).unwrap_or([0; 32]);
            let member = members.borrow().node_by_tls_hash(&id).is_some();
            let admitted = if member {
                Some(crate::conn_limit::Limited::new(stream, None))
            } else if let Some(slot) = limits.take(id) {
                Some(crate::conn_limit::Limited::new(stream, Some(slot)))
            } else {
                let n = refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    tracing::warn!(
                        %peer,
                        client = %hex::encode(&id[..8]),
                        limit = crate::conn_limit::MAX_CONNECTIONS_PER_CLIENT,
                        refused_so_far = n,
                        "closed a connection: this client certificate already holds the most connections a client may have open"
                    );
                }
                None
            };
            std::future::ready(admitted.map(Ok::<_, std::io::Error>))
        },
    );
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
            let t = if p.status_tls {
                let tls = crate::status_tls::server_config(&p.tls_cert_pem, &p.tls_key_pem)?;
                tokio::spawn(async move {
                    let l = crate::status_tls::TlsListener::new(l, tls);
                    if let Err(e) = axum::serve(l, app).await {
                        tracing::error!(error = %e, "status port stopped");
                    }
                })
            } else {
                tokio::spawn(async move {
                    if let Err(e) = axum::serve(l, app).await {
                        tracing::error!(error = %e, "status port stopped");
                    }
                })
            };
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
        ms,
        agent_task,
        stop_tx,
        lease_task,
        health_task,
        transfer_task,
        gc_task,
    })
}
