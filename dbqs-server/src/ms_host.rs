//! The MS role of a node (ARCHITECTURE.md: "hosts the MS role from `dbqs-ms` when the
//! configuration names it"): the PBFT replica running the membership state machine, served
//! on the node's own gRPC port, and the driver tasks around it (docs/membership.md,
//! "Hosting"):
//!
//! - **control** (PBFT client signing with the node's identity key, so the state machine
//!   counts this replica's proposals): proposes EndEpoch when the local epoch timer runs
//!   out, proposes Evict for nodes the prober reports, signs each new configuration with the
//!   key share, exchanges shares with the other MS members (`Membership.ConfigShare`),
//!   combines f_ms+1 of them into the ConfigCert, submits it as CertifiedEpoch, adopts it
//!   and pushes it to every node;
//! - **freshness** (PBFT client with a random key): batches the nonces of
//!   `Membership.Freshness` calls, orders each batch, and answers every caller with the
//!   epoch it executed in, the nonce's Merkle path and this member's signature share;
//!   member nodes' lease renewals have their own queue and go into the next batch, alone,
//!   ahead of every client nonce; a client batch holds at most 256 nonces;
//! - **admin** (PBFT client with a random key): relays `Membership.Submit` certificates;
//! - **prober**: probes every member on a fixed schedule and reports nodes it has seen
//!   no successful probe of for `evict_after_ms` (PROTOCOL.md, Evict: the threshold is a
//!   time, so a restart does not evict) and that missed at least [`MIN_MISSED_ROUNDS`]
//!   probe rounds in a row (so a prober starved for that long does not evict on one miss).
//!
//! The state machine's view reaches the driver through [`Observed`]: after every executed
//! batch the actor publishes an [`MsView`] on a `watch` channel.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use blsttc::{SecretKeyShare, SignatureShare};
use dbqs_common::certs::AddCert;
use dbqs_common::codec::{Writer, sha256};
use dbqs_common::config::{Configuration, Member};
use dbqs_common::threshold::MsPublicKey;
use dbqs_common::{ConfigCert, Epoch, KeyPair, NodeId};
use dbqs_ms::membership::{
    Change, MembershipApp, MembershipState, Op, OpError, OpKind, Outcome, Output, Reply,
    RotationState, ShareCollector, merkle_paths, pbft_domain, share_from_bytes, sign_freshness,
};
use dbqs_ms::pbft::Config as PbftConfig;
use dbqs_ms::service::{
    HostedPbftService, Observed, PbftClient, PbftClientConfig, PeerInfo, ReplicaStatus,
    RunningReplica, RuntimeBounds, RuntimeConfig, TlsMaterial,
};
use dbqs_proto::v1 as pb;
use ed25519_dalek::SigningKey;
use futures::StreamExt as _;
use rand::RngCore as _;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tonic::Status;

use crate::configs::ConfigManager;
use crate::peers::PeerChannels;

/// Period of the control loop.
pub const CONTROL_TICK_MS: u64 = 100;
/// How often an uncertified configuration's share is sent again (shares can be lost).
pub const SHARE_RESEND_MS: u64 = 1_000;
/// Period of the prober.
pub const PROBE_INTERVAL_MS: u64 = 1_000;
/// How long a probe waits for its answer.
pub const PROBE_TIMEOUT_MS: u64 = 800;
/// One probe in this many carries a nonce and must come back signed.
pub const SIGNED_PROBE_EVERY: u64 = 4;
/// Consecutive missed probe rounds (that ran) an eviction needs besides `evict_after_ms`
/// without an answer (see [`ProbeRecord::observe`]).
pub const MIN_MISSED_ROUNDS: u32 = 3;
/// Probes in flight at once.
pub const MAX_PROBES_IN_FLIGHT: usize = 64;
/// Configuration pushes in flight at once.
pub const MAX_PUSHES_IN_FLIGHT: usize = 32;
/// Queued requests per driver queue (freshness nonces, admin submissions, shares,
/// evictions); a full queue answers RESOURCE_EXHAUSTED.
pub const QUEUE_LEN: usize = 4_096;
// The freshness schedulers in front of the queues (fair.rs) admit fewer calls than a
// queue holds, so a flood is turned away per caller, never by a full queue.
const _: () = assert!(crate::fair::FRESH_CLIENT_SLOTS < QUEUE_LEN);
const _: () = assert!(crate::fair::FRESH_NODE_SLOTS < QUEUE_LEN);
/// Shares buffered per future epoch (they can arrive before this replica ends the epoch).
pub const MAX_EARLY_EPOCHS: u64 = 2;
/// Client nonces in one freshness batch: a member node's renewal may wait for one such
/// batch to be ordered, so this bounds that wait under a client flood.
pub const MAX_CLIENT_NONCES_PER_BATCH: usize = 256;
/// Freshness batches remembered for `Membership.FreshnessShare`.
pub const RECENT_FRESHNESS_ROOTS: usize = 4096;
/// Why a member without a key share (docs/resharing.md) vouches for nothing.
pub const NO_SHARE: &str = "this MS member holds no key share (it could not open its sub-share in the rotation that named it); ask the others";
/// How long an old MS member waits before dealing again when its dealing was not ordered.
pub const DEAL_RETRY_MS: u64 = 3_000;
/// How long an old MS member waits, once S is chosen, for Handover before it proposes
/// `RetryHandover` (PROTOCOL.md, "MS rotation and resharing", step 5): this many epoch
/// lengths, and at least `HANDOVER_RETRY_MIN_MS`. New members give their handover shares
/// within a few agent ticks of S, so a healthy rotation never gets near it.
pub const HANDOVER_RETRY_EPOCHS: u64 = 3;
pub const HANDOVER_RETRY_MIN_MS: u64 = 5_000;
/// Longest wait of an RPC caller for the driver's answer.
pub const CALLER_TIMEOUT_MS: u64 = 15_000;

/// Faults a devnet or a test may inject into an MS member (PROTOCOL.md: f_ms Byzantine MS
/// replicas must not produce a wrong configuration or evict a correct node).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MsBehaviour {
    #[default]
    Honest,
    /// Sends signature shares that do not verify.
    ForgeShares,
    /// Signs a configuration other than the one the MS computed, and submits a bogus
    /// CertifiedEpoch.
    WrongConfig,
    /// Never sends its share.
    WithholdShares,
    /// Proposes evicting every other member, every epoch, without probing.
    EvictHealthy,
    /// Runs the replica but its driver does nothing: no proposals, shares, answers.
    Silent,
    /// As an old member in a rotation: seals garbage to the first new member (whose
    /// accusation must be upheld, so the dealing never counts).
    BadDealing,
    /// As an old member in a rotation: deals a polynomial that does not hide its share
    /// (wrong Feldman commitment), which every replica refuses.
    WrongCommitment,
    /// As a new member in a rotation: acknowledges nothing, accuses every dealing falsely
    /// (a proof made for a sub-share it altered itself), and gives a handover share made
    /// with a random key.
    RotationLiar,
}

impl std::str::FromStr for MsBehaviour {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "honest" => MsBehaviour::Honest,
            "forge-shares" => MsBehaviour::ForgeShares,
            "wrong-config" => MsBehaviour::WrongConfig,
            "withhold-shares" => MsBehaviour::WithholdShares,
            "evict-healthy" => MsBehaviour::EvictHealthy,
            "ms-silent" => MsBehaviour::Silent,
            "bad-dealing" => MsBehaviour::BadDealing,
            "wrong-commitment" => MsBehaviour::WrongCommitment,
            "rotation-liar" => MsBehaviour::RotationLiar,
            _ => return Err(format!("unknown MS behaviour {s:?}")),
        })
    }
}

/// What the driver and the Status RPC see of the replicated state machine.
#[derive(Clone, Debug)]
pub struct MsView {
    pub epoch: Epoch,
    pub config: Arc<Configuration>,
    pub config_bytes: Arc<Vec<u8>>,
    /// The combined signature of the current configuration, once known.
    pub certified: Option<[u8; 96]>,
    /// (kind, node) of each queued change.
    pub pending: Vec<(&'static str, Option<NodeId>)>,
    pub end_votes: u32,
    pub end_needed: u32,
    /// Evictions this member saw take effect: (epoch without the node, node), oldest
    /// first, at most `RECENT_EVICTIONS` (since this member started).
    pub evictions: Arc<std::collections::VecDeque<(Epoch, NodeId)>>,
    /// The running MS rotation (docs/resharing.md), if any.
    pub rotation: Option<Arc<RotationState>>,
    /// Some(e) once this MS handed over to the MS that configuration e names.
    pub retired: Option<Epoch>,
}

/// What changes in a rotation's progress (the view is republished when it does).
fn rotation_progress(
    r: Option<&RotationState>,
) -> Option<(usize, usize, usize, bool, usize, bool)> {
    r.map(|r| {
        let acks = r
            .dealings()
            .iter()
            .map(|d| {
                (0..r.rotation().new_members().len() as u32)
                    .filter(|k| r.acked(*k, d.dealer_index))
                    .count()
            })
            .sum();
        let upheld = r
            .dealings()
            .iter()
            .filter(|d| r.is_upheld(d.dealer_index))
            .count();
        (
            r.dealings().len(),
            acks,
            upheld,
            r.chosen().is_some(),
            r.handover_count(),
            r.handed_over(),
        )
    })
}

/// Evictions an MS member remembers for its status page.
pub const RECENT_EVICTIONS: usize = 16;

impl MsView {
    fn of(s: &MembershipState, prev: Option<&MsView>) -> MsView {
        let (config, config_bytes) = match prev {
            Some(p) if p.epoch == s.epoch() => (p.config.clone(), p.config_bytes.clone()),
            _ => (
                Arc::new(s.configuration().clone()),
                Arc::new(s.configuration().encode()),
            ),
        };
        let evictions = match prev {
            None => Arc::default(),
            Some(p) if s.epoch() <= p.epoch => p.evictions.clone(),
            Some(p) => {
                // The queued evictions of the epoch that ended, whose node the new
                // configuration no longer has.
                let mut e = (*p.evictions).clone();
                for (kind, node) in &p.pending {
                    if let (&"evict", Some(n)) = (kind, node)
                        && !config.members.iter().any(|m| m.node_id() == *n)
                    {
                        if e.len() >= RECENT_EVICTIONS {
                            e.pop_front();
                        }
                        e.push_back((s.epoch(), *n));
                    }
                }
                Arc::new(e)
            }
        };
        MsView {
            epoch: s.epoch(),
            config,
            config_bytes,
            evictions,
            certified: s.config_cert().and_then(|c| c.signature.try_into().ok()),
            pending: s.pending().iter().map(change_summary).collect(),
            end_votes: s.end_votes() as u32,
            end_needed: s.f_ms() + 1,
            rotation: match prev {
                Some(p)
                    if rotation_progress(p.rotation.as_deref())
                        == rotation_progress(s.rotation()) =>
                {
                    p.rotation.clone()
                }
                _ => s.rotation().map(|r| Arc::new(r.clone())),
            },
            retired: s.retired(),
        }
    }

    /// The certificate of the current epoch, once certified.
    pub fn cert(&self) -> Option<ConfigCert> {
        self.certified.map(|s| ConfigCert {
            epoch: self.epoch,
            configuration: self.config_bytes.to_vec(),
            signature: s.to_vec(),
        })
    }
}

fn change_summary(c: &Change) -> (&'static str, Option<NodeId>) {
    match c {
        Change::Add(a) => ("add", Some(a.node_id())),
        Change::Remove(r) => ("remove", Some(r.node)),
        Change::Renew(r) => ("renew", Some(r.node)),
        Change::RevokeClient(_) => ("revoke-client", None),
        Change::RotateAuthority(_) => ("rotate-authority", None),
        Change::Evict(n) => ("evict", Some(*n)),
    }
}

/// This member's probe record of one node.
#[derive(Clone, Copy, Debug)]
pub struct ProbeRecord {
    pub answering: bool,
    /// Probes missed in a row (status and metrics; eviction goes by `last_ok` and
    /// `counted_misses`).
    pub misses: u32,
    /// Probe rounds in a row, since the last answer and since probation ended, in which
    /// this member probed the node and the node did not answer.
    pub counted_misses: u32,
    pub last_rtt_us: u64,
    /// The first epoch in which this member probed the node.
    pub first_seen: Epoch,
    /// Local monotonic time of the last successful probe, or of the last probe whose miss
    /// did not count (probation), or of the record's creation: the node is proposed for
    /// eviction once `evict_after_ms` passed since it.
    pub last_ok: Instant,
}

impl ProbeRecord {
    fn new(first_seen: Epoch, now: Instant) -> ProbeRecord {
        ProbeRecord {
            answering: false,
            misses: 0,
            counted_misses: 0,
            last_rtt_us: 0,
            first_seen,
            last_ok: now,
        }
    }
}

/// What one probe round did to a node's record (see [`ProbeRecord::observe`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeVerdict {
    /// The node answered.
    Answered,
    /// A miss that does not count: the node is on probation (just admitted).
    NotCounted,
    /// A miss that counts; `evict`: the node is due for an Evict proposal.
    Missed { evict: bool },
}

impl ProbeRecord {
    /// Records the outcome of one probe round that ran at `now` (`rtt`: the node answered
    /// in that time; `None`: it did not) and decides whether the node is due for an Evict
    /// proposal. `probation`: the node was just admitted, so its misses do not count and
    /// its eviction clock starts afresh.
    pub fn observe(
        &mut self,
        rtt: Option<Duration>,
        probation: bool,
        now: Instant,
        evict_after_ms: u64,
    ) -> ProbeVerdict {
        match rtt {
            Some(rtt) => {
                self.answering = true;
                self.misses = 0;
                self.counted_misses = 0;
                self.last_rtt_us = rtt.as_micros() as u64;
                self.last_ok = now;
                ProbeVerdict::Answered
            }
            None => {
                self.answering = false;
                self.misses = self.misses.saturating_add(1);
                if probation {
                    // The eviction clock starts when probation ends.
                    self.last_ok = now;
                    self.counted_misses = 0;
                    return ProbeVerdict::NotCounted;
                }
                self.counted_misses = self.counted_misses.saturating_add(1);
                // PROTOCOL.md, Evict: proposed once no probe succeeded for
                // evict_after_ms, and again each epoch while that goes on (the control
                // task proposes once per node and epoch). Time alone is not enough: if
                // this prober was starved (a loaded machine, a paused process) for
                // evict_after_ms, the first round that runs again would see a long
                // silence the node may have no part in, and its one miss may be the
                // stall's too. So the node must also have missed MIN_MISSED_ROUNDS
                // rounds in a row that actually ran.
                ProbeVerdict::Missed {
                    evict: self.counted_misses >= MIN_MISSED_ROUNDS
                        && evict_due(self.last_ok, now, evict_after_ms),
                }
            }
        }
    }
}

/// Whether a node whose last good probe (or probation miss) was at `last_ok` is due for
/// an Evict proposal at `now` (PROTOCOL.md, Evict: "the threshold is a time"). A
/// threshold below one probe interval counts as one interval: one lost probe alone never
/// evicts.
pub fn evict_due(last_ok: Instant, now: Instant, evict_after_ms: u64) -> bool {
    let threshold = Duration::from_millis(evict_after_ms.max(PROBE_INTERVAL_MS));
    now.saturating_duration_since(last_ok) >= threshold
}

type Reply1<T> = oneshot::Sender<Result<T, Status>>;

/// Freshness batches this member's replica executed: root → epoch, oldest dropped first.
#[derive(Default)]
pub struct RecentRoots {
    order: std::collections::VecDeque<[u8; 32]>,
    epochs: std::collections::HashMap<[u8; 32], Epoch>,
}

impl RecentRoots {
    fn insert(&mut self, root: [u8; 32], epoch: Epoch) {
        if self.epochs.insert(root, epoch).is_none() {
            self.order.push_back(root);
        }
        while self.order.len() > RECENT_FRESHNESS_ROOTS {
            if let Some(old) = self.order.pop_front() {
                self.epochs.remove(&old);
            }
        }
    }

    pub fn epoch_of(&self, root: &[u8; 32]) -> Option<Epoch> {
        self.epochs.get(root).copied()
    }
}

/// The handle the gRPC services use to reach the MS role.
#[derive(Clone)]
pub struct MsHandle {
    pub view: watch::Receiver<MsView>,
    pub replica: watch::Receiver<ReplicaStatus>,
    pub probes: Arc<Mutex<BTreeMap<NodeId, ProbeRecord>>>,
    /// (epoch, when this member proposes EndEpoch, whether it did).
    pub timer: Arc<Mutex<(Epoch, Instant, bool)>>,
    pub share_index: u32,
    pub me: NodeId,
    /// None for a member that could not open its sub-share in the rotation that made it
    /// one (docs/resharing.md): it runs its PBFT replica but signs nothing.
    key_share: Option<Arc<SecretKeyShare>>,
    recent: Arc<Mutex<RecentRoots>>,
    /// Freshness nonces of clients.
    fresh_tx: mpsc::Sender<FreshItem>,
    /// Freshness nonces of member nodes renewing their leases: the batcher takes these
    /// first, so no client flood can delay a renewal by more than one batch.
    node_fresh_tx: mpsc::Sender<FreshItem>,
    admin_tx: mpsc::Sender<(OpKind, Reply1<Reply>)>,
    share_tx: mpsc::Sender<(NodeId, Epoch, [u8; 32], SignatureShare)>,
    member_tx: mpsc::Sender<(OpKind, Reply1<Reply>)>,
}

fn enqueue<T>(tx: &mpsc::Sender<T>, item: T) -> Result<(), Status> {
    tx.try_send(item).map_err(|e| match e {
        mpsc::error::TrySendError::Full(_) => Status::resource_exhausted("MS driver queue full"),
        mpsc::error::TrySendError::Closed(_) => Status::unavailable("MS role stopped"),
    })
}

/// A queued freshness nonce: the nonce, where its answer goes, and the caller's
/// scheduler permit (held until the answer is sent).
type FreshItem = ([u8; 32], Reply1<pb::FreshnessReply>, crate::fair::Permit);

async fn answer<T>(rx: oneshot::Receiver<Result<T, Status>>) -> Result<T, Status> {
    match tokio::time::timeout(Duration::from_millis(CALLER_TIMEOUT_MS), rx).await {
        Err(_) => Err(Status::unavailable(
            "the MS did not order the request in time",
        )),
        Ok(Err(_)) => Err(Status::unavailable("MS role stopped")),
        Ok(Ok(r)) => r,
    }
}

impl MsHandle {
    /// Whether `other` is a handle of the same hosted term.
    pub fn same_as(&self, other: &MsHandle) -> bool {
        Arc::ptr_eq(&self.timer, &other.timer)
    }

    /// Orders `nonce` and returns this member's answer. `from_member` marks a member
    /// node's lease renewal, which goes ahead of every client nonce. `permit` is the
    /// caller's place in its scheduler (fair.rs): it travels with the nonce and is freed
    /// once the nonce's batch is answered, so a caller that gives up early cannot leave
    /// more nonces queued than its slots allow.
    pub async fn freshness(
        &self,
        nonce: [u8; 32],
        from_member: bool,
        permit: crate::fair::Permit,
    ) -> Result<pb::FreshnessReply, Status> {
        let (tx, rx) = oneshot::channel();
        let queue = if from_member {
            &self.node_fresh_tx
        } else {
            &self.fresh_tx
        };
        enqueue(queue, (nonce, tx, permit))?;
        answer(rx).await
    }

    /// This member's share over a batch its replica executed at `epoch`.
    pub fn freshness_share(
        &self,
        root: [u8; 32],
        epoch: Epoch,
    ) -> Result<pb::FreshnessShareReply, Status> {
        let known = self
            .recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .epoch_of(&root);
        let Some(key_share) = &self.key_share else {
            return Err(Status::failed_precondition(NO_SHARE));
        };
        match known {
            Some(e) if e == epoch => Ok(pb::FreshnessShareReply {
                share: sign_freshness(key_share, &root, epoch).to_bytes().to_vec(),
                share_index: self.share_index,
                node_id: self.me.0.to_vec(),
            }),
            Some(e) => Err(Status::failed_precondition(format!(
                "that batch executed in epoch {e}, not {epoch}"
            ))),
            None => Err(Status::not_found(
                "this MS member has not executed that freshness batch (yet)",
            )),
        }
    }

    /// Orders an authority certificate and returns the MS's reply.
    pub async fn submit(&self, kind: OpKind) -> Result<Reply, Status> {
        let (tx, rx) = oneshot::channel();
        enqueue(&self.admin_tx, (kind, tx))?;
        answer(rx).await
    }

    /// Whether this member holds a key share (docs/resharing.md: a member whose sub-share
    /// of S did not open runs without one).
    pub fn has_share(&self) -> bool {
        self.key_share.is_some()
    }

    /// Orders `kind` as this node (signed with its identity key, so the state machine
    /// sees this node as the proposer): a new MS member's rotation operations go through
    /// here when the node also hosts the old MS, so that one client numbers its requests.
    pub async fn submit_as_member(&self, kind: OpKind) -> Result<Reply, Status> {
        let (tx, rx) = oneshot::channel();
        enqueue(&self.member_tx, (kind, tx))?;
        answer(rx).await
    }

    /// A share another MS member sent (`from` as its TLS certificate names it).
    pub fn share(
        &self,
        from: NodeId,
        epoch: Epoch,
        config_hash: [u8; 32],
        share: &[u8],
    ) -> Result<(), Status> {
        let s = share_from_bytes(share)
            .map_err(|_| Status::invalid_argument("share must be a 96-byte BLS signature share"))?;
        enqueue(&self.share_tx, (from, epoch, config_hash, s))
    }
}

/// Everything the MS role needs.
pub struct MsHostParams {
    pub key: KeyPair,
    /// (0-based index, share): the share's evaluation point is index + 1. No share for a
    /// member that could not open its sub-share in the rotation that named it: it runs
    /// the PBFT replica (so the MS keeps 2f+1 live replicas) but signs nothing.
    pub share: (usize, Option<SecretKeyShare>),
    pub ms_key: MsPublicKey,
    /// Where the state machine starts (PBFT replays or transfers everything after it).
    pub start: MsStart,
    pub tls: TlsMaterial,
    pub data_path: PathBuf,
    pub behaviour: MsBehaviour,
}

/// Where an MS term's state machine starts.
pub enum MsStart {
    /// The genesis certificate and every genesis member's AddCert.
    Genesis {
        cert: ConfigCert,
        adds: Vec<AddCert>,
    },
    /// The state the previous MS retired with (`QUERY_RETIRED_STATE`, certified by 2f+1 of
    /// its replicas' matching answers); the new MS takes over from it.
    Successor { state: Vec<u8> },
}

/// A running MS role.
pub struct MsHost {
    pub handle: MsHandle,
    /// The PBFT signature domain of this MS term (`pbft_domain`).
    pub domain: [u8; 32],
    /// The epoch this term's state machine started at (1 for genesis).
    pub term: Epoch,
    replica: Option<RunningReplica>,
    tasks: Vec<JoinHandle<()>>,
}

impl MsHost {
    /// Starts the replica and the driver. Returns the `Pbft` service for the node's server.
    pub async fn start(
        p: MsHostParams,
        configs: Arc<ConfigManager>,
        peers: Arc<PeerChannels>,
    ) -> anyhow::Result<(MsHost, HostedPbftService)> {
        let state = match &p.start {
            MsStart::Genesis { cert, adds } => MembershipState::genesis(cert, &p.ms_key, adds)
                .map_err(|e| anyhow::anyhow!("MS genesis state: {e}"))?,
            MsStart::Successor { state } => {
                let mut s = MembershipState::decode(state)
                    .map_err(|e| anyhow::anyhow!("the retired MS's state: {e}"))?;
                s.take_over();
                s
            }
        };
        let genesis_cfg = state.configuration().clone();
        let term = state.epoch();
        let domain = pbft_domain(&genesis_cfg);
        let me = p.key.node_id();
        let my_pos = genesis_cfg
            .ms_members
            .iter()
            .position(|m| *m == me)
            .ok_or_else(|| {
                anyhow::anyhow!("node {me} is not a member of the MS of epoch {term}")
            })?;
        if my_pos != p.share.0 {
            anyhow::bail!(
                "MS share index {} does not match this node's MS position {my_pos}",
                p.share.0
            );
        }
        let (infos, keys) = ms_group(&genesis_cfg)?;
        let signing = SigningKey::from_bytes(&p.key.seed());
        let mut pbft = PbftConfig::new(keys.clone(), my_pos as u32, signing.clone());
        pbft.domain = domain;
        let (view_tx, view_rx) = watch::channel(MsView::of(&state, None));
        let recent = Arc::new(Mutex::new(RecentRoots::default()));
        let recent_w = recent.clone();
        let mut cursor = 0u64;
        let app = Observed::new(MembershipApp::new(state), move |a: &MembershipApp| {
            {
                let mut r = recent_w.lock().unwrap_or_else(|e| e.into_inner());
                for (id, out) in a.outputs_since(cursor) {
                    cursor = id + 1;
                    if let Output::SignFreshness { epoch, root, .. } = out {
                        r.insert(*root, *epoch);
                    }
                }
            }
            let prev = view_tx.borrow().clone();
            let next = MsView::of(a.state(), Some(&prev));
            if next.epoch != prev.epoch
                || next.certified != prev.certified
                || next.pending != prev.pending
                || next.end_votes != prev.end_votes
                || next.retired != prev.retired
                || rotation_progress(next.rotation.as_deref())
                    != rotation_progress(prev.rotation.as_deref())
            {
                view_tx.send_replace(next);
            }
        });
        let rcfg = RuntimeConfig {
            pbft,
            peers: infos.clone(),
            tls: p.tls.clone(),
            data_path: p.data_path.clone(),
            bounds: RuntimeBounds::default(),
            database: None,
        };
        let (replica, service) = RunningReplica::start_hosted(rcfg, app).await?;
        let first_num = unix_micros();
        let client_cfg = PbftClientConfig {
            domain,
            ..PbftClientConfig::default()
        };
        let control = PbftClient::new(
            &infos,
            keys.clone(),
            &p.tls,
            signing,
            first_num,
            client_cfg.clone(),
        )?;
        let random_key = || {
            let mut seed = [0u8; 32];
            rand::thread_rng().fill_bytes(&mut seed);
            SigningKey::from_bytes(&seed)
        };
        let fresh_client = PbftClient::new(
            &infos,
            keys.clone(),
            &p.tls,
            random_key(),
            1,
            client_cfg.clone(),
        )?;
        let admin_client =
            PbftClient::new(&infos, keys, &p.tls, random_key(), 1, client_cfg.clone())?;

        let (fresh_tx, fresh_rx) = mpsc::channel(QUEUE_LEN);
        let (node_fresh_tx, node_fresh_rx) = mpsc::channel(QUEUE_LEN);
        let (admin_tx, admin_rx) = mpsc::channel(QUEUE_LEN);
        let (share_tx, share_rx) = mpsc::channel(QUEUE_LEN);
        let (evict_tx, evict_rx) = mpsc::channel(QUEUE_LEN);
        let (member_tx, member_rx) = mpsc::channel(QUEUE_LEN);
        let view0 = view_rx.borrow().clone();
        let epoch_ms = view0.config.params.epoch_length_ms;
        let handle = MsHandle {
            view: view_rx.clone(),
            replica: replica.watch_status(),
            probes: Arc::new(Mutex::new(BTreeMap::new())),
            timer: Arc::new(Mutex::new((
                view0.epoch,
                Instant::now() + Duration::from_millis(epoch_ms),
                false,
            ))),
            share_index: my_pos as u32 + 1,
            me,
            key_share: p.share.1.map(Arc::new),
            recent,
            fresh_tx,
            node_fresh_tx,
            admin_tx,
            share_tx,
            member_tx,
        };
        let share = handle.key_share.clone();
        let mut tasks = Vec::new();
        if p.behaviour != MsBehaviour::Silent {
            let ctl = Control {
                me,
                share: share.clone(),
                behaviour: p.behaviour,
                client: control,
                view: view_rx.clone(),
                configs: configs.clone(),
                peers: peers.clone(),
                timer: handle.timer.clone(),
                collector: None,
                early: BTreeMap::new(),
                signed: None,
                last_sent: None,
                submitted_cert: None,
                evicted: (0, BTreeSet::new()),
                dealt: None,
                retry_timer: None,
            };
            tasks.push(tokio::spawn(ctl.run(share_rx, evict_rx, member_rx)));
            tasks.push(tokio::spawn(freshness_batcher(
                fresh_client,
                view_rx.clone(),
                share.clone(),
                me,
                my_pos as u32 + 1,
                node_fresh_rx,
                fresh_rx,
            )));
            tasks.push(tokio::spawn(admin_relay(
                admin_client,
                view_rx.clone(),
                admin_rx,
            )));
            tasks.push(tokio::spawn(prober(
                me,
                p.behaviour,
                view_rx,
                peers,
                handle.probes.clone(),
                evict_tx,
            )));
        }
        Ok((
            MsHost {
                handle,
                domain,
                term,
                replica: Some(replica),
                tasks,
            },
            service,
        ))
    }

    /// Stops the driver and the replica cleanly.
    pub async fn stop(mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Some(r) = self.replica.take()
            && let Err(e) = r.shutdown().await
        {
            tracing::warn!(error = %e, "MS replica stopped with an error");
        }
    }

    /// Stops everything at once, as a crash would; the replica's redb file is released
    /// when this returns.
    pub async fn kill(mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Some(r) = self.replica.take() {
            r.kill().await;
        }
    }
}

impl Drop for MsHost {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The PBFT group of the MS that `config` names: each member's peer address and TLS
/// identity, and its ed25519 key, in MS-list order (replica id = list position).
pub fn ms_group(
    config: &Configuration,
) -> anyhow::Result<(Vec<PeerInfo>, Vec<ed25519_dalek::VerifyingKey>)> {
    let mut infos = Vec::new();
    let mut keys = Vec::new();
    for id in &config.ms_members {
        let m = config
            .members
            .iter()
            .find(|m| m.node_id() == *id)
            .ok_or_else(|| anyhow::anyhow!("MS member {id} is not a member"))?;
        keys.push(
            ed25519_dalek::VerifyingKey::from_bytes(&m.key.0)
                .map_err(|e| anyhow::anyhow!("MS member {id} key: {e}"))?,
        );
        infos.push(PeerInfo {
            address: m.address.clone(),
            tls_name: id.tls_name(),
            cert_sha256: m.tls_cert_hash,
        });
    }
    Ok((infos, keys))
}

/// Microseconds since the Unix epoch: the first request number of a PBFT client keyed by
/// this node's identity, so numbers keep growing across restarts.
pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(1)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Decodes a PBFT result as the state machine's reply.
fn decode_reply(result: &[u8]) -> Result<Reply, Status> {
    Reply::decode(result).map_err(|e| Status::internal(format!("undecodable MS reply: {e}")))
}

/// Runs `kind` at the MS's current epoch; retries once at the epoch a stale or early
/// refusal names (the view can lag the replicas that answered).
async fn invoke(
    client: &mut PbftClient,
    view: &watch::Receiver<MsView>,
    kind: OpKind,
) -> Result<Reply, Status> {
    let mut epoch = view.borrow().epoch;
    let mut last = None;
    // An operation tagged with an epoch that ended meanwhile is refused with the
    // current one; retry with it. More than once: this member's view may lag an epoch
    // and the next one may end while the retry is ordered (the devnet transfer check saw
    // a lease refused that way). Never a member's vote about its epoch
    // (`OpKind::bound_to_epoch`): the refusal is the answer.
    let tries = if kind.bound_to_epoch() { 1 } else { 4 };
    for _ in 0..tries {
        let op = Op::new(epoch, kind.clone()).encode();
        let inv = client
            .invoke(op)
            .await
            .map_err(|e| Status::unavailable(format!("the MS did not order it: {e}")))?;
        let reply = decode_reply(&inv.result)?;
        match &reply.outcome {
            Outcome::Rejected { code: 1 | 2, .. } if reply.epoch != epoch => {
                epoch = reply.epoch;
                last = Some(reply);
            }
            _ => return Ok(reply),
        }
    }
    last.ok_or_else(|| Status::internal("no reply"))
}

struct Control {
    me: NodeId,
    share: Option<Arc<SecretKeyShare>>,
    behaviour: MsBehaviour,
    client: PbftClient,
    view: watch::Receiver<MsView>,
    configs: Arc<ConfigManager>,
    peers: Arc<PeerChannels>,
    timer: Arc<Mutex<(Epoch, Instant, bool)>>,
    /// Collector for the configuration being certified: (epoch, hash, collector).
    collector: Option<(Epoch, [u8; 32], ShareCollector)>,
    /// Shares that arrived before this replica reached their epoch.
    early: BTreeMap<Epoch, Vec<(NodeId, [u8; 32], SignatureShare)>>,
    /// The epoch this member signed, and its share.
    signed: Option<(Epoch, [u8; 32], SignatureShare)>,
    last_sent: Option<Instant>,
    submitted_cert: Option<Epoch>,
    /// Evictions proposed in this epoch.
    evicted: (Epoch, BTreeSet<NodeId>),
    /// (rotation epoch, when) of this member's last dealing.
    dealt: Option<(Epoch, Instant)>,
    /// ((rotation epoch, attempt), when this member first saw that attempt's S, whether
    /// it proposed RetryHandover for it).
    retry_timer: Option<((Epoch, u32), Instant, bool)>,
}

impl Control {
    async fn run(
        mut self,
        mut shares: mpsc::Receiver<(NodeId, Epoch, [u8; 32], SignatureShare)>,
        mut evictions: mpsc::Receiver<NodeId>,
        mut member_ops: mpsc::Receiver<(OpKind, Reply1<Reply>)>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(CONTROL_TICK_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                r = self.view.changed() => if r.is_err() { return },
                s = shares.recv() => match s {
                    None => return,
                    Some((from, epoch, hash, share)) => self.on_share(from, epoch, hash, share),
                },
                n = evictions.recv() => match n {
                    None => return,
                    Some(n) => self.propose_evict(n).await,
                },
                m = member_ops.recv() => match m {
                    None => return,
                    Some((kind, reply)) => {
                        let r = invoke(&mut self.client, &self.view, kind).await;
                        let _ = reply.send(r);
                    }
                },
            }
            self.step().await;
        }
    }

    async fn step(&mut self) {
        let view = self.view.borrow().clone();
        if view.retired.is_some() {
            // Handed over: the new MS signs and ends epochs now; the node stops this role
            // and erases the share once the new MS's configuration is certified.
            return;
        }
        self.deal(&view).await;
        self.handover_timer(&view).await;
        // A certified epoch this node has not adopted yet: adopt and push it.
        if let Some(cert) = view.cert()
            && self.configs.epoch() < view.epoch
        {
            self.adopt_and_push(cert).await;
        }
        if view.certified.is_none() {
            self.certify(&view).await;
        }
        self.epoch_timer(&view).await;
        if self.behaviour == MsBehaviour::EvictHealthy {
            let others: Vec<NodeId> = view
                .config
                .members
                .iter()
                .map(Member::node_id)
                .filter(|n| *n != self.me)
                .collect();
            for n in others {
                self.propose_evict(n).await;
            }
        }
    }

    /// PROTOCOL.md, "MS rotation and resharing", step 2: this old member's dealing, once per
    /// rotation (again after `DEAL_RETRY_MS` if it was not ordered).
    async fn deal(&mut self, view: &MsView) {
        let Some(rs) = view.rotation.as_deref() else {
            return;
        };
        let rot = rs.rotation();
        let Some(i) = rot.old_members().iter().position(|m| *m == self.me) else {
            return;
        };
        if rs.handed_over() || rs.dealing_of(i as u32).is_some() {
            return;
        }
        if self.dealt.is_some_and(|(e, t)| {
            e == rot.epoch() && t.elapsed() < Duration::from_millis(DEAL_RETRY_MS)
        }) {
            return;
        }
        let Some(share) = &self.share else {
            return; // No share to deal: this member counts as one that did not deal.
        };
        self.dealt = Some((rot.epoch(), Instant::now()));
        let wrong;
        let share = if self.behaviour == MsBehaviour::WrongCommitment {
            wrong = blsttc::SecretKeySet::random(0, &mut blsttc::rand::rngs::OsRng)
                .secret_key_share(0usize);
            &wrong
        } else {
            share.as_ref()
        };
        let dealing = match dbqs_ms::membership::resharing::deal(
            rot,
            i,
            share,
            &mut blsttc::rand::rngs::OsRng,
        ) {
            Ok(mut d) => {
                if self.behaviour == MsBehaviour::BadDealing
                    && let Some(c) = d.ciphertexts.first_mut()
                {
                    c[0] ^= 1;
                }
                d
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot deal this member's share");
                return;
            }
        };
        match invoke(
            &mut self.client,
            &self.view,
            OpKind::Deal(Box::new(dealing)),
        )
        .await
        {
            Ok(r) => {
                tracing::info!(rotation = rot.epoch(), outcome = ?r.outcome, "dealt to the new MS")
            }
            Err(e) => tracing::warn!(error = %e, "dealing not ordered; will retry"),
        }
    }

    /// Step 5's timer: S chosen, no Handover after `HANDOVER_RETRY_EPOCHS` epoch lengths,
    /// so this old member proposes that the MS pick a new S (it takes f_ms+1 of them).
    async fn handover_timer(&mut self, view: &MsView) {
        let Some(rs) = view.rotation.as_deref() else {
            self.retry_timer = None;
            return;
        };
        let rot = rs.rotation();
        if rs.handed_over() || rs.chosen().is_none() || !rot.old_members().contains(&self.me) {
            return;
        }
        let attempt = (rot.epoch(), rs.attempt());
        let since = match self.retry_timer {
            Some((a, since, proposed)) if a == attempt => {
                if proposed {
                    return;
                }
                since
            }
            _ => {
                self.retry_timer = Some((attempt, Instant::now(), false));
                return;
            }
        };
        let wait =
            (view.config.params.epoch_length_ms * HANDOVER_RETRY_EPOCHS).max(HANDOVER_RETRY_MIN_MS);
        if since.elapsed() < Duration::from_millis(wait) {
            return;
        }
        match invoke(
            &mut self.client,
            &self.view,
            OpKind::RetryHandover {
                rotation: rot.epoch(),
                attempt: rs.attempt(),
            },
        )
        .await
        {
            // Ordered (counted, or refused because S or the rotation moved on, which
            // restarts the timer for the new attempt): done with this attempt.
            Ok(r) => {
                tracing::warn!(
                    rotation = rot.epoch(),
                    attempt = rs.attempt(),
                    outcome = ?r.outcome,
                    "no Handover {wait} ms after S was chosen; proposed choosing S again"
                );
                if let Some(t) = self.retry_timer.as_mut() {
                    t.2 = true;
                }
            }
            // Not ordered: try again after DEAL_RETRY_MS, not at every tick.
            Err(e) => {
                tracing::warn!(error = %e, "RetryHandover not ordered; will retry");
                if let Some(t) = self.retry_timer.as_mut() {
                    let back = Duration::from_millis(wait.saturating_sub(DEAL_RETRY_MS));
                    t.1 = Instant::now().checked_sub(back).unwrap_or(t.1);
                }
            }
        }
    }

    async fn epoch_timer(&mut self, view: &MsView) {
        let length = Duration::from_millis(view.config.params.epoch_length_ms.max(100));
        let due = {
            let mut t = self.timer.lock().unwrap_or_else(|e| e.into_inner());
            if t.0 != view.epoch {
                *t = (view.epoch, Instant::now() + length, false);
            }
            !t.2 && Instant::now() >= t.1
        };
        if !due {
            return;
        }
        match invoke(
            &mut self.client,
            &self.view,
            OpKind::EndEpoch { now_ms: unix_ms() },
        )
        .await
        {
            Ok(r) => {
                tracing::info!(epoch = view.epoch, outcome = ?r.outcome, "proposed EndEpoch");
                let mut t = self.timer.lock().unwrap_or_else(|e| e.into_inner());
                if t.0 == view.epoch {
                    t.2 = true;
                }
            }
            Err(e) => tracing::warn!(error = %e, "EndEpoch proposal not ordered; will retry"),
        }
    }

    async fn propose_evict(&mut self, node: NodeId) {
        let epoch = self.view.borrow().epoch;
        if self.evicted.0 != epoch {
            self.evicted = (epoch, BTreeSet::new());
        }
        if self.evicted.1.contains(&node) {
            return;
        }
        match invoke(&mut self.client, &self.view, OpKind::Evict(node)).await {
            Ok(r) => {
                tracing::info!(%node, epoch, outcome = ?r.outcome, "proposed Evict");
                self.evicted.1.insert(node);
            }
            Err(e) => tracing::warn!(%node, error = %e, "Evict proposal not ordered"),
        }
    }

    fn on_share(&mut self, from: NodeId, epoch: Epoch, hash: [u8; 32], share: SignatureShare) {
        let current = self.view.borrow().epoch;
        if epoch < current || epoch > current + MAX_EARLY_EPOCHS {
            return;
        }
        if let Some((e, h, c)) = &mut self.collector
            && *e == epoch
        {
            if *h == hash {
                match c.add(from, share) {
                    Ok(_) => {}
                    Err(err) => tracing::debug!(%from, error = %err, "share not counted"),
                }
            }
            return;
        }
        let buf = self.early.entry(epoch).or_default();
        // One share per sender and epoch; MS size bounds the buffer.
        if buf.len() < 1024 && !buf.iter().any(|(f, _, _)| *f == from) {
            buf.push((from, hash, share));
        }
        self.early.retain(|e, _| *e >= current);
    }

    /// Signs the current configuration, sends the share around, and turns f_ms+1 shares
    /// into the certificate.
    async fn certify(&mut self, view: &MsView) {
        let epoch = view.epoch;
        let hash = sha256(&[&view.config_bytes]);
        if self.collector.as_ref().is_none_or(|(e, _, _)| *e != epoch) {
            // Configuration e is signed by the MS it names: the same MS as e-1's, except
            // for the first configuration of a new MS after Handover, which the new
            // members sign with their new shares (the old ones are being erased).
            match ShareCollector::new(&view.config, epoch, view.config_bytes.to_vec()) {
                Ok(c) => self.collector = Some((epoch, hash, c)),
                Err(e) => {
                    tracing::error!(error = %e, epoch, "cannot collect shares");
                    return;
                }
            }
            for (from, h, s) in self.early.remove(&epoch).unwrap_or_default() {
                if h == hash
                    && let Some((_, _, c)) = &mut self.collector
                {
                    let _ = c.add(from, s);
                }
            }
        }
        // A member without a share (docs/resharing.md) still combines the others' shares.
        if let Some(key) = self.share.clone()
            && self.signed.as_ref().is_none_or(|(e, _, _)| *e != epoch)
        {
            let (signed_hash, share) = self.my_share(&key, view, epoch, hash);
            if let Some((_, _, c)) = &mut self.collector {
                let _ = c.add(self.me, share.clone());
            }
            self.signed = Some((epoch, signed_hash, share));
            self.last_sent = None;
        }
        let resend = self
            .last_sent
            .is_none_or(|t| t.elapsed() >= Duration::from_millis(SHARE_RESEND_MS));
        if resend && self.behaviour != MsBehaviour::WithholdShares {
            self.last_sent = Some(Instant::now());
            if let Some((e, h, s)) = &self.signed {
                self.broadcast_share(view, *e, *h, s.clone());
            }
        }
        let cert = self
            .collector
            .as_ref()
            .and_then(|(e, _, c)| if *e == epoch { c.cert() } else { None });
        if let Some(cert) = cert
            && self.submitted_cert != Some(epoch)
        {
            let mut sig = [0u8; 96];
            sig.copy_from_slice(&cert.signature);
            match invoke(
                &mut self.client,
                &self.view,
                OpKind::CertifiedEpoch { signature: sig },
            )
            .await
            {
                Ok(r) => {
                    tracing::info!(epoch, outcome = ?r.outcome, "submitted the combined ConfigCert");
                    self.submitted_cert = Some(epoch);
                }
                Err(e) => tracing::warn!(epoch, error = %e, "CertifiedEpoch not ordered"),
            }
            self.adopt_and_push(cert).await;
        }
        if self.behaviour == MsBehaviour::WrongConfig && self.submitted_cert != Some(epoch) {
            // A bogus combined signature: the state machine must refuse it.
            let _ = invoke(
                &mut self.client,
                &self.view,
                OpKind::CertifiedEpoch {
                    signature: [0x5a; 96],
                },
            )
            .await;
        }
    }

    /// This member's share (honest, or as its fault dictates) and the hash it signed.
    fn my_share(
        &self,
        key: &SecretKeyShare,
        view: &MsView,
        epoch: Epoch,
        hash: [u8; 32],
    ) -> ([u8; 32], SignatureShare) {
        match self.behaviour {
            MsBehaviour::ForgeShares => {
                let mut junk = [0u8; 32];
                rand::thread_rng().fill_bytes(&mut junk);
                (hash, key.sign(Configuration::signing_bytes(epoch, &junk)))
            }
            MsBehaviour::WrongConfig => {
                let mut wrong = (*view.config).clone();
                wrong
                    .members
                    .truncate(wrong.members.len().saturating_sub(1));
                let h = sha256(&[&wrong.encode()]);
                (h, key.sign(Configuration::signing_bytes(epoch, &h)))
            }
            _ => (hash, key.sign(Configuration::signing_bytes(epoch, &hash))),
        }
    }

    fn broadcast_share(&self, view: &MsView, epoch: Epoch, hash: [u8; 32], share: SignatureShare) {
        let req = pb::ConfigShareRequest {
            epoch,
            config_hash: hash.to_vec(),
            share: share.to_bytes().to_vec(),
        };
        for id in &view.config.ms_members {
            if *id == self.me {
                continue;
            }
            let Some(m) = view.config.members.iter().find(|m| m.node_id() == *id) else {
                continue;
            };
            let Ok(mut c) = self.peers.membership(m) else {
                continue;
            };
            let req = req.clone();
            tokio::spawn(async move {
                let _ = c.config_share(req).await;
            });
        }
    }

    /// Adopts `cert` on this node and pushes it to every member of the new configuration
    /// and of the one before (removed nodes learn that they left).
    async fn adopt_and_push(&self, cert: ConfigCert) {
        let prev = self.configs.current();
        if let Err(e) = self.configs.offer(std::slice::from_ref(&cert)) {
            tracing::error!(error = %e, "our own ConfigCert was refused");
            return;
        }
        let Ok(new) = Configuration::decode(&cert.configuration) else {
            return;
        };
        let mut targets: BTreeMap<NodeId, Member> = BTreeMap::new();
        for m in prev.config.members.iter().chain(new.members.iter()) {
            if m.node_id() != self.me {
                targets.insert(m.node_id(), m.clone());
            }
        }
        let peers = self.peers.clone();
        tokio::spawn(push_to(peers, targets.into_values().collect(), cert));
    }
}

/// Pushes `cert` to `targets`, a bounded number at a time.
pub async fn push_to(peers: Arc<PeerChannels>, targets: Vec<Member>, cert: ConfigCert) {
    let epoch = cert.epoch;
    let req = pb::PushConfigRequest {
        certs: vec![cert.to_proto()],
    };
    let mut ok = 0usize;
    let n = targets.len();
    let mut calls = futures::stream::iter(targets.into_iter().map(|m| {
        let peers = peers.clone();
        let req = req.clone();
        async move {
            let mut c = peers.storage(&m).ok()?;
            c.push_config(req).await.ok().map(|r| r.into_inner().epoch)
        }
    }))
    .buffer_unordered(MAX_PUSHES_IN_FLIGHT);
    while let Some(r) = calls.next().await {
        if r.is_some_and(|e| e >= epoch) {
            ok += 1;
        }
    }
    tracing::info!(epoch, pushed = ok, of = n, "pushed ConfigCert");
}

/// Waits for a freshness nonce and returns the next batch. Member nodes' renewals go
/// first and alone: while any is queued the batch holds only those (at most `max`), so a
/// renewal waits for at most the batch being ordered plus its own small one, however many
/// client nonces are queued (docs/threat-model.md, "Byzantine clients"). Otherwise the
/// batch holds at most `max_clients` client nonces, which bounds how long that wait is.
/// `None` once both queues are closed.
async fn next_batch(
    nodes_rx: &mut mpsc::Receiver<FreshItem>,
    clients_rx: &mut mpsc::Receiver<FreshItem>,
    max: usize,
    max_clients: usize,
) -> Option<Vec<FreshItem>> {
    let (first, rx, limit) = tokio::select! {
        biased;
        Some(x) = nodes_rx.recv() => (x, nodes_rx, max),
        Some(x) = clients_rx.recv() => (x, clients_rx, max_clients.min(max)),
        else => return None,
    };
    let mut batch = vec![first];
    while batch.len() < limit {
        match rx.try_recv() {
            Ok(x) => batch.push(x),
            Err(_) => break,
        }
    }
    Some(batch)
}

async fn freshness_batcher(
    mut client: PbftClient,
    view: watch::Receiver<MsView>,
    share: Option<Arc<SecretKeyShare>>,
    me: NodeId,
    share_index: u32,
    mut nodes_rx: mpsc::Receiver<FreshItem>,
    mut clients_rx: mpsc::Receiver<FreshItem>,
) {
    let max = dbqs_ms::membership::MAX_FRESHNESS_NONCES;
    while let Some(batch) = next_batch(
        &mut nodes_rx,
        &mut clients_rx,
        max,
        MAX_CLIENT_NONCES_PER_BATCH,
    )
    .await
    {
        let nonces: Vec<[u8; 32]> = batch.iter().map(|(n, _, _)| *n).collect();
        let result = invoke(
            &mut client,
            &view,
            OpKind::Freshness {
                nonces: nonces.clone(),
            },
        )
        .await;
        match result {
            Ok(Reply {
                epoch,
                outcome: Outcome::Freshness { root, leaf_count },
            }) if leaf_count as usize == nonces.len() && share.is_some() => {
                // f_ms+1 matching PBFT replies say the batch executed at `epoch`, so one
                // correct replica did: this member may vouch for it.
                let Some(key) = share.as_deref() else {
                    continue;
                };
                let sig = sign_freshness(key, &root, epoch).to_bytes().to_vec();
                let mut paths = merkle_paths(&nonces).unwrap_or_default().into_iter();
                for (i, (_, reply, _permit)) in batch.into_iter().enumerate() {
                    let path = paths.next().unwrap_or_default();
                    let _ = reply.send(Ok(pb::FreshnessReply {
                        epoch,
                        root: root.to_vec(),
                        leaf_count,
                        index: i as u32,
                        path: path.iter().map(|p| p.to_vec()).collect(),
                        share: sig.clone(),
                        share_index,
                        node_id: me.0.to_vec(),
                    }));
                }
            }
            other => {
                let status = match other {
                    Err(s) => s,
                    Ok(_) if share.is_none() => Status::failed_precondition(NO_SHARE),
                    Ok(Reply {
                        outcome: Outcome::Rejected { code, reason },
                        ..
                    }) if code == OpError::Retired(0).code() => Status::unavailable(format!(
                        "{}: {reason}",
                        dbqs_client::lease::MS_HANDED_OVER
                    )),
                    Ok(r) => Status::internal(format!("unexpected MS reply {:?}", r.outcome)),
                };
                for (_, reply, _permit) in batch {
                    let _ = reply.send(Err(status.clone()));
                }
            }
        }
    }
}

async fn admin_relay(
    mut client: PbftClient,
    view: watch::Receiver<MsView>,
    mut rx: mpsc::Receiver<(OpKind, Reply1<Reply>)>,
) {
    while let Some((kind, reply)) = rx.recv().await {
        let r = invoke(&mut client, &view, kind).await;
        let _ = reply.send(r);
    }
}

/// The bytes a node signs to answer a probe that carries a nonce.
pub fn probe_signing_bytes(nonce: &[u8; 32], node: &NodeId, epoch: Epoch) -> Vec<u8> {
    let mut w = Writer::tagged("probe-reply");
    w.fixed(nonce).fixed(&node.0).u64(epoch);
    w.finish()
}

async fn probe_one(
    peers: &PeerChannels,
    m: &Member,
    epoch: Epoch,
    signed: bool,
) -> Result<Duration, String> {
    let mut c = peers.storage(m).map_err(|e| e.message().to_string())?;
    let mut nonce = [0u8; 32];
    if signed {
        rand::thread_rng().fill_bytes(&mut nonce);
    }
    let started = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_millis(PROBE_TIMEOUT_MS),
        c.probe(pb::ProbeRequest {
            nonce: if signed { nonce.to_vec() } else { Vec::new() },
            epoch,
        }),
    )
    .await
    .map_err(|_| "timed out".to_string())?
    .map_err(|s| s.message().to_string())?
    .into_inner();
    let rtt = started.elapsed();
    let id = m.node_id();
    if NodeId::from_slice(&r.node_id) != Some(id) {
        return Err("answered for another node".into());
    }
    if signed {
        m.key
            .verify(&probe_signing_bytes(&nonce, &id, r.epoch), &r.signature)
            .map_err(|_| "bad probe signature".to_string())?;
    }
    Ok(rtt)
}

async fn prober(
    me: NodeId,
    behaviour: MsBehaviour,
    view: watch::Receiver<MsView>,
    peers: Arc<PeerChannels>,
    records: Arc<Mutex<BTreeMap<NodeId, ProbeRecord>>>,
    evict: mpsc::Sender<NodeId>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(PROBE_INTERVAL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut round = 0u64;
    // The epoch of this member's first probe round: nodes of that configuration get no
    // start-up grace (they were admitted before).
    let mut started_in: Option<Epoch> = None;
    loop {
        tick.tick().await;
        round += 1;
        if behaviour == MsBehaviour::EvictHealthy {
            continue;
        }
        let v = view.borrow().clone();
        let first_epoch = *started_in.get_or_insert(v.epoch);
        let evict_after_ms = v.config.params.evict_after_ms;
        let members: Vec<Member> = v
            .config
            .members
            .iter()
            .filter(|m| m.node_id() != me)
            .cloned()
            .collect();
        // A node just admitted owns nothing yet (no ring position) and may still be
        // starting up: its misses count only once it holds a ring position and, if it
        // joined after this member started probing, from the epoch after the one in
        // which this member first saw it.
        let on_probation: BTreeMap<NodeId, bool> = members
            .iter()
            .map(|m| (m.node_id(), m.ring_position.is_none()))
            .collect();
        let signed = round.is_multiple_of(SIGNED_PROBE_EVERY);
        let epoch = v.epoch;
        let calls: Vec<_> = members
            .iter()
            .cloned()
            .map(|m| {
                let peers = peers.clone();
                async move {
                    let r = probe_one(&peers, &m, epoch, signed).await;
                    (m.node_id(), r)
                }
            })
            .collect();
        let results: Vec<(NodeId, Result<Duration, String>)> = futures::stream::iter(calls)
            .buffer_unordered(MAX_PROBES_IN_FLIGHT)
            .collect()
            .await;
        // Measured after the round: a probe that timed out counts as the time it took.
        let now = Instant::now();
        let mut to_evict = Vec::new();
        {
            let mut recs = records.lock().unwrap_or_else(|e| e.into_inner());
            recs.retain(|id, _| members.iter().any(|m| m.node_id() == *id));
            for (id, r) in results {
                let rec = recs
                    .entry(id)
                    .or_insert_with(|| ProbeRecord::new(epoch, now));
                let probation = on_probation.get(&id).copied().unwrap_or(true)
                    || (rec.first_seen > first_epoch && rec.first_seen >= epoch);
                let verdict = rec.observe(r.as_ref().ok().copied(), probation, now, evict_after_ms);
                let Err(e) = r else { continue };
                match verdict {
                    ProbeVerdict::Answered => {}
                    ProbeVerdict::NotCounted => {
                        tracing::debug!(node = %id, error = %e, "probe missed (node just admitted; not counted)");
                    }
                    ProbeVerdict::Missed { evict } => {
                        let silent_ms =
                            now.saturating_duration_since(rec.last_ok).as_millis() as u64;
                        tracing::debug!(node = %id, misses = rec.misses, silent_ms, error = %e, "probe missed");
                        if evict {
                            to_evict.push(id);
                        }
                    }
                }
            }
        }
        for id in to_evict {
            let _ = evict.try_send(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fair::Fair;

    #[test]
    fn eviction_is_due_once_no_probe_succeeded_for_evict_after_ms() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // PROTOCOL.md, Evict: a time, not a count of probes.
        assert!(!evict_due(t0, at(59_999), 60_000));
        assert!(evict_due(t0, at(60_000), 60_000));
        // A 30 s restart under the genesis default stays far below it.
        let default = dbqs_common::config::Params::default().evict_after_ms;
        assert!(!evict_due(t0, at(30_000), default));
        // Below one probe interval: one interval, so one lost probe never evicts.
        assert!(!evict_due(t0, at(PROBE_INTERVAL_MS - 1), 0));
        assert!(evict_due(t0, at(PROBE_INTERVAL_MS), 0));
        // The largest threshold never overflows, nor does a clock read out of order.
        assert!(!evict_due(t0, at(1 << 40), u64::MAX));
        assert!(!evict_due(at(10), t0, 1_000));
    }

    #[test]
    fn a_starved_prober_needs_three_missed_rounds_before_it_evicts() {
        // The prober task was starved (a loaded machine, a paused process) for longer than
        // evict_after_ms after the node's last answer: the first round that runs again
        // misses once, maybe only because the node's answer was queued behind the same
        // stall. Eviction also needs MIN_MISSED_ROUNDS consecutive missed rounds that ran.
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut rec = ProbeRecord::new(1, t0);
        let rtt = Some(Duration::from_millis(2));
        assert_eq!(
            rec.observe(rtt, false, at(0), 3_000),
            ProbeVerdict::Answered
        );
        assert_eq!(
            rec.observe(None, false, at(5_000), 3_000),
            ProbeVerdict::Missed { evict: false },
            "one timed-out probe after a stall is not a node gone for evict_after_ms"
        );
        assert_eq!(
            rec.observe(None, false, at(6_000), 3_000),
            ProbeVerdict::Missed { evict: false }
        );
        assert_eq!(
            rec.observe(None, false, at(7_000), 3_000),
            ProbeVerdict::Missed { evict: true },
            "three missed rounds and no answer for evict_after_ms"
        );
        // An answer starts both counts afresh.
        assert_eq!(
            rec.observe(rtt, false, at(7_500), 3_000),
            ProbeVerdict::Answered
        );
        for ms in [20_000, 21_000] {
            assert_eq!(
                rec.observe(None, false, at(ms), 3_000),
                ProbeVerdict::Missed { evict: false }
            );
        }
        // Misses on probation do not count towards the rounds either.
        let mut rec = ProbeRecord::new(1, t0);
        for k in 0..5 {
            assert_eq!(
                rec.observe(None, true, at(k * 1_000), 3_000),
                ProbeVerdict::NotCounted
            );
        }
        assert_eq!(
            rec.observe(None, false, at(30_000), 3_000),
            ProbeVerdict::Missed { evict: false },
            "the first counted miss after probation, after a stall"
        );
        // Without a stall, the time is what decides: three rounds within evict_after_ms
        // are not enough.
        let mut rec = ProbeRecord::new(1, t0);
        for ms in [1_000, 2_000, 2_900] {
            assert_eq!(
                rec.observe(None, false, at(ms), 3_000),
                ProbeVerdict::Missed { evict: false }
            );
        }
        assert_eq!(
            rec.observe(None, false, at(3_000), 3_000),
            ProbeVerdict::Missed { evict: true }
        );
    }

    async fn item(
        fair: &Fair,
        nonce: u8,
    ) -> (
        FreshItem,
        oneshot::Receiver<Result<pb::FreshnessReply, Status>>,
    ) {
        let (tx, rx) = oneshot::channel();
        let permit = fair.admit([nonce; 32]).await.unwrap();
        (([nonce; 32], tx, permit), rx)
    }

    #[tokio::test]
    async fn member_renewals_go_into_the_next_batch_ahead_of_a_full_client_queue() {
        let fair = Fair::new(10_000, 10_000);
        let (node_tx, mut nodes_rx) = mpsc::channel(QUEUE_LEN);
        let (client_tx, mut clients_rx) = mpsc::channel(QUEUE_LEN);
        let mut answers = Vec::new();
        // A flood has filled the clients' queue.
        for i in 0..QUEUE_LEN {
            let (it, rx) = item(&fair, (i % 200) as u8).await;
            client_tx.try_send(it).unwrap();
            answers.push(rx);
        }
        let (it, _rx) = item(&fair, 250).await;
        assert!(
            client_tx.try_send(it).is_err(),
            "the clients' queue is full"
        );
        // Three member nodes renew: their queue is separate, so they are accepted.
        for n in [201u8, 202, 203] {
            let (it, rx) = item(&fair, n).await;
            node_tx.try_send(it).unwrap();
            answers.push(rx);
        }
        // The renewals go first and alone.
        let batch = next_batch(&mut nodes_rx, &mut clients_rx, 100, 50)
            .await
            .unwrap();
        let nonces: Vec<u8> = batch.iter().map(|(n, _, _)| n[0]).collect();
        assert_eq!(nonces, [201, 202, 203], "renewals first and alone");
        // Then client batches, at most `max_clients` nonces each.
        let batch = next_batch(&mut nodes_rx, &mut clients_rx, 100, 50)
            .await
            .unwrap();
        assert_eq!(batch.len(), 50);
        assert!(batch.iter().all(|(n, _, _)| n[0] < 200));
        // A renewal that arrives while client nonces wait is in the very next batch.
        let (it, _rx2) = item(&fair, 204).await;
        node_tx.try_send(it).unwrap();
        let batch = next_batch(&mut nodes_rx, &mut clients_rx, 100, 50)
            .await
            .unwrap();
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].0[0], 204);
        // `max` bounds a client batch too.
        let batch = next_batch(&mut nodes_rx, &mut clients_rx, 30, 50)
            .await
            .unwrap();
        assert_eq!(batch.len(), 30);
        let batch = next_batch(&mut nodes_rx, &mut clients_rx, 5_000, 5_000)
            .await
            .unwrap();
        assert_eq!(batch.len(), QUEUE_LEN - 50 - 30);
        drop((node_tx, client_tx));
        assert!(
            next_batch(&mut nodes_rx, &mut clients_rx, 100, 50)
                .await
                .is_none()
        );
    }

    #[tokio::test]
    async fn a_queued_nonce_keeps_its_callers_slot_until_its_batch_is_answered() {
        // One slot: a caller that gives up after queueing its nonce does not free the
        // slot; the next call waits until the queued nonce's batch is done with.
        let fair = Fair::new(1, 4);
        let (tx, mut rx) = mpsc::channel(QUEUE_LEN);
        let (it, answer) = item(&fair, 7).await;
        tx.try_send(it).unwrap();
        drop(answer); // the caller gave up
        let next = fair.admit([7; 32]);
        tokio::pin!(next);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut next)
                .await
                .is_err(),
            "the slot is still held by the queued nonce"
        );
        let (_, mut empty_rx) = mpsc::channel::<FreshItem>(1);
        let batch = next_batch(&mut empty_rx, &mut rx, 10, 10).await.unwrap();
        drop(batch);
        tokio::time::timeout(Duration::from_millis(500), next)
            .await
            .expect("the slot is free once the batch is answered")
            .unwrap();
    }
}
