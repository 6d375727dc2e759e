//! The gRPC services of a storage node: `Storage` (quorum replica) and
//! `Membership` (configuration only, until the MS lands).
//!
//! Every request is checked in this order, and rejected with a precise status
//! before anything changes: the TLS peer (a member's certificate, or a client
//! certificate from the cluster CA that is not revoked), the epoch, the request's
//! shape and signatures, then group membership. The store re-checks the epoch in
//! the transaction that applies a write.

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
use crate::metrics::Stats;
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
    pub config: watch::Receiver<ActiveConfig>,
    pub store: ObjectStore,
    pub behaviour: Behaviour,
    pub stats: Arc<Stats>,
    stopped: std::sync::atomic::AtomicBool,
    /// For the `stale` and `equivocate` behaviours: the first version seen of
    /// each owned object (bounded; empty for honest nodes).
    first_seen: Mutex<HashMap<ObjectId, OwnedValue>>,
}

const FIRST_SEEN_MAX: usize = 100_000;

impl NodeCore {
    pub fn new(
        id: NodeId,
        config: watch::Receiver<ActiveConfig>,
        store: ObjectStore,
        behaviour: Behaviour,
    ) -> Arc<Self> {
        Arc::new(NodeCore {
            id,
            config,
            store,
            behaviour,
            stats: Arc::new(Stats::default()),
            stopped: std::sync::atomic::AtomicBool::new(false),
            first_seen: Mutex::new(HashMap::new()),
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
            return Ok(Peer::Node(n));
        }
        if cfg.is_revoked(&h) {
            return Err(Status::permission_denied("client certificate is revoked"));
        }
        Ok(Peer::Client(h))
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

    /// Common checks for every Storage request: peer, epoch, id, group.
    fn admit<T>(
        &self,
        req: &Request<T>,
        epoch: u64,
        id: &ObjectId,
    ) -> Result<(ActiveConfig, Peer), Status> {
        let cfg = self.current();
        let peer = self.peer(req, &cfg)?;
        self.check_epoch(&cfg, epoch)?;
        self.check_group(&cfg, id)?;
        Ok((cfg, peer))
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
    /// Maps a store error to a status, counting engine failures and corruption.
    fn store_error(&self, e: StoreError) -> Status {
        if matches!(e, StoreError::Engine(_) | StoreError::Corrupt { .. }) {
            self.stats.store_errors.inc();
        }
        store_status(e)
    }
}

fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::EpochChanged { store, write } => Status::failed_precondition(format!(
            "epoch changed while writing: replica is in epoch {store}, the write was for {write}"
        )),
        StoreError::KindMismatch => {
            Status::already_exists("an object of the other kind has this id")
        }
        StoreError::Corrupt { id, .. } => {
            tracing::error!(object = ?id, "corrupted record in store");
            Status::data_loss(format!("replica's copy of {} is corrupted", id.to_hex()))
        }
        StoreError::Closed => Status::unavailable("store is shutting down"),
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
}

impl StorageService {
    async fn read_timestamp_inner(
        &self,
        req: Request<pb::ReadTimestampRequest>,
    ) -> Result<Response<pb::ReadTimestampReply>, Status> {
        let c = &self.core;
        c.behaviour.before_reply().await;
        let id = parse_id(&req.get_ref().object_id)?;
        let (cfg, peer) = c.admit(&req, req.get_ref().epoch, &id)?;
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
        let (cfg, _peer) = c.admit(&req, req.get_ref().epoch, &id)?;
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
        Ok(Response::new(pb::WriteReply {
            epoch: cfg.epoch(),
            object_id: id.0.to_vec(),
            stored: outcome == WriteOutcome::Stored,
        }))
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
        let (cfg, peer) = c.admit(&req, req.get_ref().epoch, &id)?;
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
        Ok(Response::new(pb::ReadReply {
            epoch: cfg.epoch(),
            object,
        }))
    }
}

/// The `Membership` service (configuration only, for now).
#[derive(Clone)]
pub struct MembershipService {
    pub core: Arc<NodeCore>,
}

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
        if want != 0 && want != cfg.epoch() {
            return Err(Status::not_found(format!(
                "this node holds the configuration of epoch {} only",
                cfg.epoch()
            )));
        }
        Ok(Response::new(pb::GetConfigReply {
            cert: Some(cfg.cert.to_proto()),
            members: cfg.member_infos(),
            f: cfg.f(),
        }))
    }
}
