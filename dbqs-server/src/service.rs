//! The gRPC services of a storage node: `Storage` (quorum replica, probes,
//! configuration pushes) and `Membership` (configurations, and on MS members the
//! MS's submissions, freshness, signature shares and status).
//!
//! Every Storage request is checked in this order, and rejected with a precise
//! status before anything changes: the TLS peer (a member's certificate, or a
//! client certificate from the cluster CA that is not revoked), the epoch, the
//! node's freshness lease, the request's shape and signatures, then group
//! membership. The store re-checks the epoch in the transaction that applies a
//! write.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use dbqs_client::quorum::EPOCH_METADATA;
use dbqs_common::codec::sha256;
use dbqs_common::object::{MAX_VALUE_BYTES, ObjectError, StoredObject, verify_content};
use dbqs_common::{ActiveConfig, NodeId, ObjectId, OwnedValue};
use dbqs_proto::v1 as pb;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::byzantine::Behaviour;
use crate::configs::ConfigManager;
use crate::lease::NodeLease;
use crate::metrics::Stats;
use crate::ms_host::MsHandle;
use crate::store::{ObjectStore, StoreError, WriteOp, WriteOutcome};

/// Who is on the other end of a TLS connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// A member of the current configuration (its certificate is recorded there).
    Node(NodeId),
    /// A client with a certificate from the cluster CA; the SHA-256 of it.
    Client([u8; 32]),
}

impl Peer {
    fn key(&self) -> [u8; 32] {
        match self {
            Peer::Node(n) => n.0,
            Peer::Client(h) => *h,
        }
    }
}

/// Shared state of one node's services.
pub struct NodeCore {
    pub id: NodeId,
    /// Signs probe echoes.
    pub key: dbqs_common::KeyPair,
    pub config: watch::Receiver<ActiveConfig>,
    pub configs: Arc<ConfigManager>,
    pub lease: Arc<NodeLease>,
    /// The MS terms this node hosts (`active()` is the one that serves).
    pub ms: Arc<crate::ms_rotation::MsSlots>,
    pub store: ObjectStore,
    pub behaviour: Behaviour,
    pub stats: Arc<Stats>,
    /// State transfer progress.
    pub transfer: Arc<crate::transfer::TransferStats>,
    stopped: std::sync::atomic::AtomicBool,
    /// For the `stale` and `equivocate` behaviours: the first version seen of
    /// each owned object (bounded; empty for honest nodes).
    first_seen: Mutex<HashMap<ObjectId, OwnedValue>>,
    /// Connections to other members, for fetching objects on demand.
    peers: Option<Arc<crate::peers::PeerChannels>>,
    /// Objects of still-pending ranges taken over on demand, by (id, source epoch, the
    /// epoch it was taken over in): an entry counts only in that epoch, so an object whose
    /// range this node lost and regained while it was still pending is taken over again
    /// (the churn simulation found the stale answer an epoch-blind memo gave). Bounded
    /// and in memory: after a restart objects are fetched again, which is harmless.
    on_demand: Mutex<std::collections::HashSet<(ObjectId, u64, u64)>>,
    /// Fair admission of client Storage requests (fair.rs).
    pub fair: crate::fair::Fair,
    /// Fair admission of `Membership.Freshness` calls to this node's MS role: clients
    /// and member nodes each have their own slots, taken in turn per caller (fair.rs).
    pub fresh_fair: FreshFair,
}

/// The freshness schedulers of one node (see [`NodeCore::fresh_fair`]).
pub struct FreshFair {
    pub clients: crate::fair::Fair,
    pub nodes: crate::fair::Fair,
}

impl Default for FreshFair {
    fn default() -> Self {
        use crate::fair::*;
        FreshFair {
            clients: Fair::with_cap(
                FRESH_CLIENT_SLOTS,
                FRESH_RUNNING_PER_CLIENT,
                FRESH_QUEUE_PER_CLIENT,
            ),
            nodes: Fair::with_cap(
                FRESH_NODE_SLOTS,
                FRESH_RUNNING_PER_NODE,
                FRESH_QUEUE_PER_NODE,
            ),
        }
    }
}

/// Most objects remembered as taken over on demand; beyond it the set is cleared.
const ON_DEMAND_MAX: usize = 100_000;

const FIRST_SEEN_MAX: usize = 100_000;

impl NodeCore {
    pub fn new(
        key: dbqs_common::KeyPair,
        configs: Arc<ConfigManager>,
        lease: Arc<NodeLease>,
        ms: Arc<crate::ms_rotation::MsSlots>,
        store: ObjectStore,
        behaviour: Behaviour,
        peers: Option<Arc<crate::peers::PeerChannels>>,
    ) -> Arc<Self> {
        Arc::new(NodeCore {
            id: key.node_id(),
            key,
            config: configs.subscribe(),
            configs,
            lease,
            ms,
            store,
            behaviour,
            stats: Arc::new(Stats::default()),
            transfer: Arc::new(crate::transfer::TransferStats::default()),
            stopped: std::sync::atomic::AtomicBool::new(false),
            first_seen: Mutex::new(HashMap::new()),
            peers,
            on_demand: Mutex::new(std::collections::HashSet::new()),
            fair: crate::fair::Fair::new(crate::fair::CLIENT_SLOTS, crate::fair::QUEUE_PER_CLIENT),
            fresh_fair: FreshFair::default(),
        })
    }

    /// Marks the node stopped and closes its store; connections that outlive the
    /// server get UNAVAILABLE.
    pub fn stop(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.store.close();
    }

    fn alive(&self) -> Result<(), Status> {
        if self.stopped.load(std::sync::atomic::Ordering::SeqCst) {
            Err(Status::unavailable("node stopped"))
        } else {
            Ok(())
        }
    }

    fn current(&self) -> ActiveConfig {
        self.config.borrow().clone()
    }

    fn peer<T>(&self, req: &Request<T>, cfg: &ActiveConfig) -> Result<Peer, Status> {
        self.alive()?;
        let certs = req.peer_certs().ok_or_else(|| {
            Status::unauthenticated("a TLS client certificate from the cluster CA is required")
        })?;
        let leaf = certs
            .first()
            .ok_or_else(|| Status::unauthenticated("empty client certificate chain"))?;
        let h = sha256(&[leaf.as_ref()]);
        if let Some(n) = cfg.node_by_tls_hash(&h) {
            if self.partition().is_some_and(|p| p.blocks(&n)) {
                return Err(crate::byzantine::Partition::refusal(&n));
            }
            return Ok(Peer::Node(n));
        }
        if cfg.is_revoked(&h) {
            return Err(Status::permission_denied("client certificate is revoked"));
        }
        Ok(Peer::Client(h))
    }

    /// The member of `cfg` this request's TLS peer is, if any: the key it proved in the
    /// handshake is the one `cfg` binds to that member. For the transfer RPCs, which
    /// serve a requester by the configuration in which it needs a range, not the
    /// newest one (PROTOCOL.md, "State transfer" 6).
    fn member_of<T>(&self, req: &Request<T>, cfg: &ActiveConfig) -> Result<Option<NodeId>, Status> {
        self.alive()?;
        let leaf = leaf_hash(req)?;
        let Some(n) = cfg.node_by_tls_hash(&leaf) else {
            return Ok(None);
        };
        if self.partition().is_some_and(|p| p.blocks(&n)) {
            return Err(crate::byzantine::Partition::refusal(&n));
        }
        Ok(Some(n))
    }

    /// Refuses a peer that is not a member of any configuration this node adopted or
    /// holds, before anything costly is done for it (verifying an older configuration,
    /// adopting an offered certificate). The transfer RPCs then check the configuration
    /// that matters.
    fn known_peer<T>(&self, req: &Request<T>, what: &str) -> Result<(), Status> {
        self.alive()?;
        let leaf = leaf_hash(req)?;
        if self.current().node_by_tls_hash(&leaf).is_some() || self.configs.known_node(&leaf) {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "{what} are for members of the configuration"
            )))
        }
    }

    /// The configuration of `epoch` if this node holds it, verified.
    fn held_config(&self, epoch: u64) -> Result<ActiveConfig, Status> {
        self.configs
            .verified(epoch)
            .map_err(|e| self.store_error(e))?
            .ok_or_else(|| {
                Status::unavailable(format!(
                    "this replica does not hold the configuration of epoch {epoch}"
                ))
            })
    }

    /// The test-only partition between this node and chosen members (byzantine.rs).
    pub fn partition(&self) -> Option<&crate::byzantine::Partition> {
        self.peers.as_deref().map(|p| p.partition())
    }

    /// Refuses a request from a member the test-only partition cuts this node off from,
    /// as if it never arrived. [`NodeCore::peer`] does this too; this is for handlers
    /// that act on a request before they identify the peer.
    fn check_partition<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let Some(p) = self.partition().filter(|p| !p.is_empty()) else {
            return Ok(());
        };
        let cut = req
            .peer_certs()
            .and_then(|certs| certs.first().map(|leaf| sha256(&[leaf.as_ref()])))
            .and_then(|h| self.current().node_by_tls_hash(&h))
            .filter(|n| p.blocks(n));
        match cut {
            Some(n) => Err(crate::byzantine::Partition::refusal(&n)),
            None => Ok(()),
        }
    }

    fn check_epoch(&self, cfg: &ActiveConfig, epoch: u64) -> Result<(), Status> {
        let ours = cfg.epoch();
        let with_epoch = |mut s: Status| {
            if let Ok(v) = ours.to_string().parse() {
                s.metadata_mut().insert(EPOCH_METADATA, v);
            }
            s
        };
        if epoch == 0 {
            Err(Status::invalid_argument(
                "request epoch 0: set the epoch of your configuration",
            ))
        } else if epoch < ours {
            Err(with_epoch(Status::failed_precondition(format!(
                "stale epoch {epoch}: replica is in epoch {ours}; fetch the newer configuration with GetConfig"
            ))))
        } else if epoch > ours {
            // The requester knows a newer epoch: catch up from the MS now.
            self.lease.wake();
            Err(with_epoch(Status::unavailable(format!(
                "unknown epoch {epoch}: replica is still in epoch {ours}"
            ))))
        } else {
            Ok(())
        }
    }

    fn check_group(&self, cfg: &ActiveConfig, id: &ObjectId) -> Result<(), Status> {
        if cfg.in_group(id, &self.id) {
            Ok(())
        } else {
            Err(Status::failed_precondition(format!(
                "not in group: node {} does not serve object {} in epoch {}",
                self.id,
                id.to_hex(),
                cfg.epoch()
            )))
        }
    }

    /// Common checks for every Storage request: peer, epoch, id, group; then, for a
    /// client, its turn among the clients (fair.rs). The permit is held while the request
    /// runs.
    async fn admit<T>(
        &self,
        req: &Request<T>,
        epoch: u64,
        id: &ObjectId,
    ) -> Result<(ActiveConfig, Peer, Option<crate::fair::Permit>), Status> {
        let cfg = self.current();
        let peer = self.peer(req, &cfg)?;
        self.check_epoch(&cfg, epoch)?;
        let permit = match peer {
            Peer::Client(h) => Some(
                self.fair
                    .admit(h)
                    .await
                    .map_err(|e| Status::resource_exhausted(e.to_string()))?,
            ),
            Peer::Node(_) => None,
        };
        // The configuration may have moved on while the request waited for its turn.
        let cfg = self.current();
        self.check_epoch(&cfg, epoch)?;
        self.lease.check(cfg.epoch())?;
        self.check_group(&cfg, id)?;
        // PROTOCOL.md, "State transfer" 3: nothing about an object of a range this
        // replica has not taken over yet; it takes that object over first.
        let holding = self
            .configs
            .pending()
            .holding(id)
            .map(|(r, source)| (*r, source.newest()));
        // The pending ranges read must be those of `cfg`'s epoch.
        // Answered like a stale request (FAILED_PRECONDITION with the newer epoch in the
        // metadata) once the newer configuration is current here, so the client fetches
        // it and restarts the phase in the new epoch instead of counting a failure.
        let moved_on = || match self.check_epoch(&self.current(), cfg.epoch()) {
            Err(stale) => stale,
            Ok(()) => Status::unavailable(format!(
                "node {} moved past epoch {} while admitting the request; retry",
                self.id,
                cfg.epoch()
            )),
        };
        if self.configs.epoch() != cfg.epoch() {
            return Err(moved_on());
        }
        if let Some((range, source)) = holding
            && !self
                .on_demand
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&(*id, source, cfg.epoch()))
        {
            let refused = |why: String| {
                Status::unavailable(format!(
                    "transferring: node {} has not yet taken over object {} from the group of epoch {source} ({why})",
                    self.id,
                    id.to_hex(),
                ))
            };
            let Some(peers) = &self.peers else {
                return Err(refused("no connections to fetch it".into()));
            };
            let started = Instant::now();
            crate::transfer::take_over_one(
                &self.configs,
                &self.store,
                peers,
                &self.transfer,
                source,
                &range,
                id,
            )
            .await
            .map_err(|e| refused(e.to_string()))?;
            if self.configs.epoch() != cfg.epoch() {
                return Err(moved_on());
            }
            self.transfer
                .on_demand
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(object = %id.to_hex(), ms = started.elapsed().as_secs_f64() * 1e3, "object taken over on demand");
            let mut set = self.on_demand.lock().unwrap_or_else(|e| e.into_inner());
            if set.len() >= ON_DEMAND_MAX {
                set.clear();
            }
            set.insert((*id, source, cfg.epoch()));
        }
        Ok((cfg, peer, permit))
    }

    fn load(&self, id: &ObjectId) -> Result<Option<StoredObject>, Status> {
        self.store.get(id).map_err(|e| self.store_error(e))
    }

    fn remember_first(&self, v: &OwnedValue) {
        if self.behaviour.remembers_first() {
            let mut m = self.first_seen.lock().unwrap_or_else(|e| e.into_inner());
            if m.len() < FIRST_SEEN_MAX {
                m.entry(v.header.id).or_insert_with(|| v.clone());
            }
        }
    }

    fn first_seen(&self, id: &ObjectId) -> Option<OwnedValue> {
        self.first_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    /// The owned version this replica shows `peer`: honest, or what its
    /// Byzantine behaviour substitutes.
    fn owned_for(
        &self,
        peer: &Peer,
        id: &ObjectId,
        honest: Option<OwnedValue>,
    ) -> Option<OwnedValue> {
        self.behaviour
            .owned_reply(&peer.key(), honest, || self.first_seen(id))
    }
}

impl NodeCore {
    /// Whether this node plays [`Behaviour::StillHere`] now: it has been removed.
    fn still_here(&self) -> bool {
        self.behaviour == Behaviour::StillHere && self.current().member(&self.id).is_none()
    }

    /// The version a removed [`Behaviour::StillHere`] node offers: the oldest it saw.
    fn still_here_version(&self, id: &ObjectId) -> Option<OwnedValue> {
        self.first_seen(id).or_else(|| match self.load(id) {
            Ok(Some(StoredObject::Owned(v))) => Some(v),
            _ => None,
        })
    }

    /// Maps a store error to a status, counting engine failures and corruption.
    fn store_error(&self, e: StoreError) -> Status {
        if matches!(
            e,
            StoreError::Engine(_)
                | StoreError::Corrupt { .. }
                | StoreError::DiskFull(_)
                | StoreError::Io(_)
        ) {
            self.stats.store_errors.inc();
        }
        store_status(e)
    }
}

/// The SHA-256 of the peer's TLS leaf certificate, by which configurations bind members.
fn leaf_hash<T>(req: &Request<T>) -> Result<[u8; 32], Status> {
    req.peer_certs()
        .and_then(|certs| certs.first().map(|leaf| sha256(&[leaf.as_ref()])))
        .ok_or_else(|| {
            Status::unauthenticated("a TLS client certificate from the cluster CA is required")
        })
}

fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::EpochChanged { store, write } => {
            let mut s = Status::failed_precondition(format!(
                "epoch changed while writing: replica is in epoch {store}, the write was for {write}"
            ));
            // Like a stale-epoch refusal, so clients catch up and redo the phase.
            if let Ok(v) = store.to_string().parse() {
                s.metadata_mut().insert(EPOCH_METADATA, v);
            }
            s
        }
        StoreError::KindMismatch => {
            Status::already_exists("an object of the other kind has this id")
        }
        StoreError::Corrupt { id, .. } => {
            tracing::error!(object = ?id, "corrupted record in store");
            Status::data_loss(format!("replica's copy of {} is corrupted", id.to_hex()))
        }
        StoreError::Closed => Status::unavailable("store is shutting down"),
        // The other replicas of the group answer; a client sees this only in the list of
        // replicas that failed, or if more than f of them did.
        StoreError::DiskFull(m) => {
            tracing::error!(error = %m, "the store's disk is full");
            Status::resource_exhausted("replica's disk is full; nothing was stored")
        }
        StoreError::Io(m) => {
            tracing::error!(error = %m, "store I/O error");
            Status::unavailable("replica's storage failed an I/O operation and is reopening")
        }
        StoreError::Engine(m) => {
            tracing::error!(error = %m, "storage engine error");
            Status::internal("storage engine error")
        }
    }
}

fn object_status(e: ObjectError) -> Status {
    Status::invalid_argument(e.to_string())
}

fn parse_id(b: &[u8]) -> Result<ObjectId, Status> {
    ObjectId::from_slice(b).map_err(object_status)
}

/// A 32-byte field of a request, or INVALID_ARGUMENT naming it.
fn bytes32(b: &[u8], name: &str) -> Result<[u8; 32], Status> {
    b.try_into()
        .map_err(|_| Status::invalid_argument(format!("{name} must be 32 bytes")))
}

/// The ring range `(start, end]` of a transfer request.
fn range_of(start: &[u8], end: &[u8]) -> Result<crate::transfer::plan::Range, Status> {
    Ok(crate::transfer::plan::Range {
        start: bytes32(start, "start")?,
        end: bytes32(end, "end")?,
    })
}

/// The `Storage` service.
#[derive(Clone)]
pub struct StorageService {
    pub core: Arc<NodeCore>,
}

#[tonic::async_trait]
impl pb::storage_server::Storage for StorageService {
    async fn read_timestamp(
        &self,
        req: Request<pb::ReadTimestampRequest>,
    ) -> Result<Response<pb::ReadTimestampReply>, Status> {
        let start = Instant::now();
        let r = self.read_timestamp_inner(req).await;
        self.core.stats.record("read_timestamp", start, &r);
        r
    }

    async fn write(
        &self,
        req: Request<pb::WriteRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let start = Instant::now();
        let r = self.write_inner(req).await;
        self.core.stats.record("write", start, &r);
        r
    }

    async fn read(&self, req: Request<pb::ReadRequest>) -> Result<Response<pb::ReadReply>, Status> {
        let start = Instant::now();
        let r = self.read_inner(req).await;
        self.core.stats.record("read", start, &r);
        r
    }

    async fn probe(
        &self,
        req: Request<pb::ProbeRequest>,
    ) -> Result<Response<pb::ProbeReply>, Status> {
        let c = &self.core;
        c.behaviour.before_reply().await;
        let cfg = c.current();
        match c.peer(&req, &cfg)? {
            Peer::Node(n) if cfg.config.ms_members.contains(&n) => {}
            _ => {
                return Err(Status::permission_denied(
                    "probes are answered only to MS members",
                ));
            }
        }
        let epoch = cfg.epoch();
        let nonce = &req.get_ref().nonce;
        let signature = if nonce.is_empty() {
            Vec::new()
        } else {
            let n: [u8; 32] = nonce
                .as_slice()
                .try_into()
                .map_err(|_| Status::invalid_argument("probe nonce must be empty or 32 bytes"))?;
            c.key
                .sign(&crate::ms_host::probe_signing_bytes(&n, &c.id, epoch))
                .to_vec()
        };
        if req.get_ref().epoch > epoch {
            c.lease.wake();
        }
        Ok(Response::new(pb::ProbeReply {
            epoch,
            node_id: c.id.0.to_vec(),
            signature,
        }))
    }

    async fn list_range(
        &self,
        req: Request<pb::ListRangeRequest>,
    ) -> Result<Response<pb::ListRangeReply>, Status> {
        let c = &self.core;
        c.behaviour.before_reply().await;
        c.check_partition(&req)?;
        c.known_peer(&req, "range listings")?;
        let r = req.get_ref();
        // Adopt the requester's configuration first (PROTOCOL.md, "State transfer" 1):
        // from then on this replica refuses writes of the older epoch.
        if r.epoch > c.configs.epoch()
            && let Some(cert) = &r.cert
        {
            let offered = c
                .configs
                .offer(&[dbqs_common::ConfigCert::from_proto(cert.clone())])
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            if offered.gap_to.is_some() {
                c.lease.wake();
            }
        }
        let cfg = c.current();
        // Which configuration the requester must be a member of is checked below, once
        // the source epoch is known.
        let range = range_of(&r.start, &r.end)?;
        let source_epoch = if r.source_epoch == 0 {
            cfg.epoch().saturating_sub(1)
        } else {
            r.source_epoch
        };
        if source_epoch == 0 {
            return Err(Status::invalid_argument(
                "there is no epoch before the first to list a range of",
            ));
        }
        // Fencing: this replica has moved past the source epoch (it adopted the
        // requester's certificate above if it had not), so it refuses writes of the
        // source epoch from now on and no write of that epoch can land after the listing.
        if source_epoch >= cfg.epoch() {
            return Err(Status::unavailable(format!(
                "this replica is in epoch {}; it lists epoch {source_epoch}'s ranges once it moved past it",
                cfg.epoch()
            )));
        }
        let source = c.held_config(source_epoch)?;
        // The requester gained the range in the epoch after the source epoch; it keeps
        // taking it over even if a later epoch moved the range away from it or removed
        // it (others may need it as a source: PROTOCOL.md, "State transfer" 6), so it is
        // identified by that configuration, not the current one.
        let gained = c.held_config(source_epoch + 1)?;
        let Some(requester) = c.member_of(&req, &gained)? else {
            return Err(Status::permission_denied(format!(
                "the requester was not a member in epoch {}, when this range was gained",
                gained.epoch()
            )));
        };
        if !gained.in_group(&ObjectId(range.end), &requester) {
            return Err(Status::permission_denied(format!(
                "the requester did not gain this range in epoch {}",
                gained.epoch()
            )));
        }
        if !crate::transfer::plan::served(&source, &range, &c.id) {
            return Err(Status::failed_precondition(format!(
                "not a source: node {} was not in this range's group in epoch {}",
                c.id,
                source.epoch()
            )));
        }
        if !c.configs.pending().complete_as_of(&range, source_epoch) {
            return Err(Status::unavailable(format!(
                "not ready: node {} had not finished taking over this range in epoch {}",
                c.id,
                source.epoch()
            )));
        }
        let after: Option<[u8; 32]> = if r.after.is_empty() {
            None
        } else {
            Some(
                r.after
                    .as_slice()
                    .try_into()
                    .map_err(|_| Status::invalid_argument("after must be empty or 32 bytes"))?,
            )
        };
        if after.is_some_and(|a| !range.contains(&a)) {
            return Err(Status::invalid_argument("after must lie inside the range"));
        }
        let limit = (r.limit as usize).clamp(1, crate::store::MAX_LIST);
        let honest = c
            .store
            .list_range(&range.start, &range.end, after.as_ref(), limit)
            .map_err(|e| c.store_error(e))?;
        // A Byzantine replica lists something else (byzantine.rs); an honest one, its page.
        let (objects, done) = {
            let first_seen = c.first_seen.lock().unwrap_or_else(|e| e.into_inner());
            c.behaviour
                .listing(&range, after.as_ref(), limit, honest, &first_seen)
        };
        Ok(Response::new(pb::ListRangeReply {
            epoch: cfg.epoch(),
            objects: objects
                .iter()
                .map(|(id, o)| crate::transfer::listed_to_proto(id, o))
                .collect(),
            done,
        }))
    }

    async fn range_status(
        &self,
        req: Request<pb::RangeStatusRequest>,
    ) -> Result<Response<pb::RangeStatusReply>, Status> {
        let c = &self.core;
        c.behaviour.before_reply().await;
        let cfg = c.current();
        // Any node of a configuration this node holds: a node removed while a range was
        // pending on it asks too, to learn when it may drop the range.
        c.check_partition(&req)?;
        c.known_peer(&req, "range status requests")?;
        let r = req.get_ref();
        let range = range_of(&r.start, &r.end)?;
        let complete = r.epoch == cfg.epoch()
            && cfg.in_group(&ObjectId(range.end), &c.id)
            && !c.configs.pending().overlaps(&range);
        // A Byzantine replica may claim anything (byzantine.rs).
        let (epoch, complete) = c.behaviour.range_status(r.epoch, (cfg.epoch(), complete));
        Ok(Response::new(pb::RangeStatusReply { epoch, complete }))
    }

    async fn fetch_objects(
        &self,
        req: Request<pb::FetchObjectsRequest>,
    ) -> Result<Response<pb::FetchObjectsReply>, Status> {
        let c = &self.core;
        c.behaviour.before_reply().await;
        let cfg = c.current();
        c.known_peer(&req, "object fetches")?;
        // A member of the current configuration, or of the one in which it gained the
        // objects it takes over (a node removed since still finishes its take-over:
        // PROTOCOL.md, "State transfer" 6).
        let source_epoch = req.get_ref().source_epoch;
        let member = c.member_of(&req, &cfg)?.is_some()
            || (source_epoch > 0
                && source_epoch < cfg.epoch()
                && c.member_of(&req, &c.held_config(source_epoch + 1)?)?
                    .is_some());
        if !member {
            return Err(Status::permission_denied(
                "object fetches are for members of the configuration",
            ));
        }
        // Any epoch: bodies are checked by the requester (owner signature or content
        // hash) against the versions q sources listed, so serving them needs no fencing.
        let ids = &req.get_ref().ids;
        if ids.len() > MAX_FETCH_IDS {
            return Err(Status::invalid_argument(format!(
                "{} ids; at most {MAX_FETCH_IDS}",
                ids.len()
            )));
        }
        // Bounded in bytes (PROTOCOL.md, "State transfer" 5): the reply stops before the
        // object that would take it past FETCH_REPLY_MAX_BYTES, but always holds the
        // first object found (one value fits the message limit), and says how many ids
        // it covered so the requester continues from there.
        let mut objects = Vec::new();
        let mut bytes = 0usize;
        let mut considered = 0usize;
        for raw in ids {
            let id = parse_id(raw)?;
            // A Byzantine replica serves other bodies (byzantine.rs).
            let object = match c.behaviour.fetched(c.load(&id)?, c.first_seen(&id)) {
                None => {
                    considered += 1;
                    continue;
                }
                Some(StoredObject::Content(b)) => pb::fetched_object::Object::Content(b),
                Some(StoredObject::Owned(v)) => pb::fetched_object::Object::Owned(v.to_proto()),
            };
            let fetched = pb::FetchedObject {
                object_id: id.0.to_vec(),
                object: Some(object),
            };
            // The field's tag and length prefix come on top of the object's own bytes.
            let size = prost::Message::encoded_len(&fetched) + 8;
            if !objects.is_empty() && bytes + size > crate::transfer::FETCH_REPLY_MAX_BYTES {
                break;
            }
            bytes += size;
            considered += 1;
            objects.push(fetched);
        }
        Ok(Response::new(pb::FetchObjectsReply {
            epoch: cfg.epoch(),
            objects,
            considered: considered as u32,
        }))
    }

    async fn push_config(
        &self,
        req: Request<pb::PushConfigRequest>,
    ) -> Result<Response<pb::PushConfigReply>, Status> {
        let c = &self.core;
        c.alive()?;
        // Anyone with a cluster certificate may push: a certificate proves itself.
        let cfg = c.current();
        c.peer(&req, &cfg)?;
        let certs: Vec<dbqs_common::ConfigCert> = req
            .into_inner()
            .certs
            .into_iter()
            .map(dbqs_common::ConfigCert::from_proto)
            .collect();
        let offered = c.configs.offer(&certs).map_err(|e| match e {
            crate::configs::ConfigOfferError::Store(e) => c.store_error(e),
            e => Status::invalid_argument(e.to_string()),
        })?;
        if offered.gap_to.is_some() {
            // Missing epochs in between: the lease keeper fetches them from the MS.
            c.lease.wake();
        }
        Ok(Response::new(pb::PushConfigReply { epoch: offered.to }))
    }
}

/// Most ids one FetchObjects call may ask for.
pub const MAX_FETCH_IDS: usize = 256;

impl StorageService {
    async fn read_timestamp_inner(
        &self,
        req: Request<pb::ReadTimestampRequest>,
    ) -> Result<Response<pb::ReadTimestampReply>, Status> {
        let c = &self.core;
        c.behaviour.before_reply().await;
        let id = parse_id(&req.get_ref().object_id)?;
        if c.still_here() {
            return Ok(Response::new(pb::ReadTimestampReply {
                epoch: req.get_ref().epoch,
                header: c.still_here_version(&id).map(|v| v.header.to_proto()),
            }));
        }
        let (cfg, peer, _permit) = c.admit(&req, req.get_ref().epoch, &id).await?;
        let honest = match c.load(&id)? {
            None => None,
            Some(StoredObject::Owned(v)) => Some(v),
            Some(StoredObject::Content(_)) => {
                return Err(Status::invalid_argument(
                    "object is a content object; content objects have no timestamp",
                ));
            }
        };
        let shown = c.owned_for(&peer, &id, honest);
        Ok(Response::new(pb::ReadTimestampReply {
            epoch: cfg.epoch(),
            header: shown.map(|v| c.behaviour.corrupt_header(v).header.to_proto()),
        }))
    }

    async fn write_inner(
        &self,
        req: Request<pb::WriteRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let c = &self.core;
        c.behaviour.before_reply().await;
        let op = match &req.get_ref().object {
            None => return Err(Status::invalid_argument("write carries no object")),
            Some(pb::write_request::Object::Content(b)) => {
                if b.len() > MAX_VALUE_BYTES {
                    return Err(object_status(ObjectError::ValueTooLarge(b.len())));
                }
                let id = ObjectId::content(b);
                verify_content(&id, b).map_err(object_status)?;
                WriteOp::Content {
                    id,
                    bytes: b.clone(),
                }
            }
            Some(pb::write_request::Object::Owned(v)) => {
                WriteOp::Owned(OwnedValue::from_proto(v).map_err(object_status)?)
            }
        };
        let id = op.id();
        if c.still_here() {
            // Byzantine, removed: acknowledges in whatever epoch it is asked, stores nothing.
            return Ok(Response::new(Self::write_reply(
                req.get_ref().epoch,
                &id,
                WriteOutcome::Stored,
            )));
        }
        let (cfg, _peer, _permit) = c.admit(&req, req.get_ref().epoch, &id).await?;
        if let WriteOp::Owned(v) = &op {
            c.remember_first(v);
        }
        let outcome = if c.behaviour.drops_writes() {
            // Byzantine: acknowledge without storing.
            WriteOutcome::Stored
        } else {
            c.store
                .write(cfg.epoch(), op)
                .await
                .map_err(|e| c.store_error(e))?
        };
        tracing::debug!(object = %id.to_hex(), ?outcome, "write applied");
        Ok(Response::new(Self::write_reply(cfg.epoch(), &id, outcome)))
    }

    /// The answer to a write (PROTOCOL.md, "dBQS storage", Write): an acknowledgement
    /// that tells "stored" from "already held", or "older" with the stored owner-signed
    /// header, which is never an acknowledgement.
    fn write_reply(epoch: u64, id: &ObjectId, outcome: WriteOutcome) -> pb::WriteReply {
        let (outcome, stored_header) = match outcome {
            WriteOutcome::Stored => (pb::WriteOutcome::Stored, None),
            WriteOutcome::AlreadyHeld => (pb::WriteOutcome::AlreadyHeld, None),
            WriteOutcome::Older(h) => (pb::WriteOutcome::Older, Some(h.to_proto())),
        };
        pb::WriteReply {
            epoch,
            object_id: id.0.to_vec(),
            outcome: outcome as i32,
            stored_header,
        }
    }

    async fn read_inner(
        &self,
        req: Request<pb::ReadRequest>,
    ) -> Result<Response<pb::ReadReply>, Status> {
        let c = &self.core;
        c.behaviour.before_reply().await;
        let id = parse_id(&req.get_ref().object_id)?;
        let kind = pb::ObjectKind::try_from(req.get_ref().kind)
            .ok()
            .filter(|k| *k != pb::ObjectKind::Unspecified)
            .ok_or_else(|| Status::invalid_argument("read kind must be CONTENT or OWNED"))?;
        if c.still_here() {
            return Ok(Response::new(pb::ReadReply {
                epoch: req.get_ref().epoch,
                object: c
                    .still_here_version(&id)
                    .map(|v| pb::read_reply::Object::Owned(v.to_proto())),
            }));
        }
        let (cfg, peer, _permit) = c.admit(&req, req.get_ref().epoch, &id).await?;
        let object = match (kind, c.load(&id)?) {
            (pb::ObjectKind::Content, None) => None,
            (pb::ObjectKind::Content, Some(StoredObject::Content(b))) => Some(
                pb::read_reply::Object::Content(c.behaviour.corrupt_content(b)),
            ),
            (_, Some(StoredObject::Content(_)))
            | (pb::ObjectKind::Content, Some(StoredObject::Owned(_))) => {
                return Err(Status::invalid_argument(
                    "object exists with the other kind",
                ));
            }
            (_, stored) => {
                let honest = match stored {
                    Some(StoredObject::Owned(v)) => Some(v),
                    _ => None,
                };
                c.owned_for(&peer, &id, honest)
                    .map(|v| pb::read_reply::Object::Owned(c.behaviour.corrupt_owned(v).to_proto()))
            }
        };
        c.behaviour.before_read_reply_leaves().await;
        Ok(Response::new(pb::ReadReply {
            epoch: cfg.epoch(),
            object,
        }))
    }
}

/// The `Membership` service.
#[derive(Clone)]
pub struct MembershipService {
    pub core: Arc<NodeCore>,
}

impl MembershipService {
    fn ms(&self) -> Result<MsHandle, Status> {
        self.core.ms.active().ok_or_else(|| {
            Status::failed_precondition(format!(
                "not an MS member: node {} does not run the membership service; ask a node with ms_member set",
                self.core.id
            ))
        })
    }

    fn config_reply(cfg: &ActiveConfig) -> pb::GetConfigReply {
        pb::GetConfigReply {
            cert: Some(cfg.cert.to_proto()),
            members: cfg.member_infos(),
            f: cfg.f(),
            lease_ms: cfg.config.params.lease_ms,
        }
    }
}

/// Most configurations a WatchConfigs stream buffers for a slow reader; it skips to the
/// newest beyond that (each certificate verifies on its own).
const WATCH_BUFFER: usize = 4;

#[tonic::async_trait]
impl pb::membership_server::Membership for MembershipService {
    async fn get_config(
        &self,
        req: Request<pb::GetConfigRequest>,
    ) -> Result<Response<pb::GetConfigReply>, Status> {
        let c = &self.core;
        c.behaviour.before_reply().await;
        let cfg = c.current();
        c.peer(&req, &cfg)?;
        let want = req.get_ref().epoch;
        if want == 0 || want == cfg.epoch() {
            return Ok(Response::new(Self::config_reply(&cfg)));
        }
        let cert = c
            .configs
            .get(want)
            .map_err(|e| c.store_error(e))?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "this node does not hold the configuration of epoch {want} (it is in epoch {})",
                    cfg.epoch()
                ))
            })?;
        let active = ActiveConfig::verify(cert, c.configs.ms_key())
            .map_err(|e| Status::internal(format!("stored certificate {want}: {e}")))?;
        Ok(Response::new(Self::config_reply(&active)))
    }

    type WatchConfigsStream =
        tokio_stream::wrappers::ReceiverStream<Result<pb::GetConfigReply, Status>>;

    async fn watch_configs(
        &self,
        req: Request<pb::WatchConfigsRequest>,
    ) -> Result<Response<Self::WatchConfigsStream>, Status> {
        let c = &self.core;
        let cfg = c.current();
        c.peer(&req, &cfg)?;
        let mut rx = c.configs.subscribe();
        let (tx, out) = tokio::sync::mpsc::channel(WATCH_BUFFER);
        tokio::spawn(async move {
            loop {
                let cfg = rx.borrow_and_update().clone();
                if tx.send(Ok(Self::config_reply(&cfg))).await.is_err() {
                    return;
                }
                // End with the caller, not only with the node.
                tokio::select! {
                    r = rx.changed() => if r.is_err() { return },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            out,
        )))
    }

    async fn submit(
        &self,
        req: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::SubmitReply>, Status> {
        use dbqs_ms::membership::{OpKind, Outcome};
        let c = &self.core;
        let cfg = c.current();
        c.peer(&req, &cfg)?;
        let ms = self.ms()?;
        let bad = |e: dbqs_common::certs::CertError| {
            Status::invalid_argument(format!("certificate does not decode: {e}"))
        };
        use dbqs_common::certs as cc;
        use pb::submit_request::Cert;
        let kind = match req.into_inner().cert {
            None => return Err(Status::invalid_argument("no certificate")),
            Some(Cert::Add(b)) => OpKind::Add(cc::AddCert::decode(&b).map_err(bad)?),
            Some(Cert::Remove(b)) => OpKind::Remove(cc::RemoveCert::decode(&b).map_err(bad)?),
            Some(Cert::Renew(b)) => OpKind::Renew(cc::RenewCert::decode(&b).map_err(bad)?),
            Some(Cert::RevokeClient(b)) => {
                OpKind::RevokeClient(cc::RevokeClientCert::decode(&b).map_err(bad)?)
            }
            Some(Cert::RotateAuthority(b)) => {
                OpKind::RotateAuthority(cc::RotateAuthorityCert::decode(&b).map_err(bad)?)
            }
        };
        let reply = ms.submit(kind).await?;
        match reply.outcome {
            Outcome::Queued { changes } => Ok(Response::new(pb::SubmitReply {
                epoch: reply.epoch,
                queued_changes: changes,
                epoch_ended: false,
            })),
            Outcome::EpochEnded => Ok(Response::new(pb::SubmitReply {
                epoch: reply.epoch.saturating_sub(1),
                queued_changes: 0,
                epoch_ended: true,
            })),
            Outcome::Rejected { reason, .. } => Err(Status::failed_precondition(format!(
                "the MS refused the certificate: {reason}"
            ))),
            other => Err(Status::internal(format!("unexpected MS outcome {other:?}"))),
        }
    }

    async fn freshness(
        &self,
        req: Request<pb::FreshnessRequest>,
    ) -> Result<Response<pb::FreshnessReply>, Status> {
        let c = &self.core;
        c.behaviour.before_reply().await;
        let cfg = c.current();
        let peer = c.peer(&req, &cfg)?;
        let ms = self.ms()?;
        let nonce = bytes32(&req.get_ref().nonce, "nonce")?;
        // Each caller waits its turn among callers of its kind; member nodes' lease
        // renewals have their own slots and go ahead of clients in the MS's batches.
        let (fair, from_member) = match peer {
            Peer::Node(_) => (&c.fresh_fair.nodes, true),
            Peer::Client(_) => (&c.fresh_fair.clients, false),
        };
        let permit = match fair.admit(peer.key()).await {
            Ok(p) => p,
            Err(e) => {
                // A refused flooder would retry at once; make that cost it time.
                tokio::time::sleep(std::time::Duration::from_millis(
                    crate::fair::FRESH_REFUSAL_DELAY_MS,
                ))
                .await;
                return Err(Status::resource_exhausted(e.to_string()));
            }
        };
        Ok(Response::new(
            ms.freshness(nonce, from_member, permit).await?,
        ))
    }

    async fn freshness_share(
        &self,
        req: Request<pb::FreshnessShareRequest>,
    ) -> Result<Response<pb::FreshnessShareReply>, Status> {
        let c = &self.core;
        c.behaviour.before_reply().await;
        let cfg = c.current();
        c.peer(&req, &cfg)?;
        let ms = self.ms()?;
        let root = bytes32(&req.get_ref().root, "root")?;
        Ok(Response::new(
            ms.freshness_share(root, req.get_ref().epoch)?,
        ))
    }

    async fn config_share(
        &self,
        req: Request<pb::ConfigShareRequest>,
    ) -> Result<Response<pb::ConfigShareReply>, Status> {
        let c = &self.core;
        let cfg = c.current();
        let ms = self.ms()?;
        // The MS that signs a configuration is the one it names: after Handover that is
        // the new MS, which the node's current configuration does not name yet.
        let signers = ms.view.borrow().config.ms_members.clone();
        let from = match c.peer(&req, &cfg)? {
            Peer::Node(n) if cfg.config.ms_members.contains(&n) || signers.contains(&n) => n,
            _ => {
                return Err(Status::permission_denied(
                    "signature shares are accepted only from MS members",
                ));
            }
        };
        let r = req.get_ref();
        let hash = bytes32(&r.config_hash, "config_hash")?;
        ms.share(from, r.epoch, hash, &r.share)?;
        Ok(Response::new(pb::ConfigShareReply {}))
    }

    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        let c = &self.core;
        let cfg = c.current();
        c.peer(&req, &cfg)?;
        let (left, lease_epoch) = c.lease.remaining(cfg.epoch());
        let ms = c.ms.active().map(|m| {
            let v = m.view.borrow().clone();
            let rs = m.replica.borrow().clone();
            let (timer_epoch, due, proposed) = *m.timer.lock().unwrap_or_else(|e| e.into_inner());
            let probes = m
                .probes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|(id, p)| pb::ProbeState {
                    node_id: id.0.to_vec(),
                    answering: p.answering,
                    misses: p.misses,
                    last_rtt_us: p.last_rtt_us,
                })
                .collect();
            pb::MsStatus {
                epoch: v.epoch,
                certified: v.certified.is_some(),
                pending: v
                    .pending
                    .iter()
                    .map(|(k, n)| pb::PendingChange {
                        kind: (*k).to_string(),
                        node_id: n.map(|n| n.0.to_vec()).unwrap_or_default(),
                    })
                    .collect(),
                end_votes: v.end_votes,
                end_votes_needed: v.end_needed,
                probes,
                view: rs.view,
                last_executed: rs.last_executed,
                epoch_timer_remaining_ms: if proposed || timer_epoch != v.epoch {
                    0
                } else {
                    due.saturating_duration_since(Instant::now()).as_millis() as u64
                },
            }
        });
        Ok(Response::new(pb::StatusReply {
            epoch: cfg.epoch(),
            members: cfg.member_infos(),
            f: cfg.f(),
            node_id: c.id.0.to_vec(),
            lease_remaining_ms: left.as_millis() as u64,
            lease_epoch,
            ms,
            lease_proof_epoch: c.lease.proof().map_or(0, |p| p.epoch),
            objects: c.store.len().unwrap_or(0),
            transfer_pending_ranges: c.configs.pending().ranges.len() as u32,
            transfer_objects_stored: c
                .transfer
                .objects_stored
                .load(std::sync::atomic::Ordering::Relaxed),
            transfer_objects_deleted: c
                .transfer
                .objects_deleted
                .load(std::sync::atomic::Ordering::Relaxed),
        }))
    }
}
