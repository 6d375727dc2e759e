//! The deterministic membership state machine (PROTOCOL.md, "Membership service").
//!
//! It holds the current configuration e, whether ConfigCert e's combined signature is known,
//! and the changes queued for e+1. Operations arrive in PBFT order with the identity of the
//! replica that submitted them; no clock, randomness or I/O is consulted. Time enters only as
//! the `now_ms` of EndEpoch proposals (see [`MembershipState::agreed_time_ms`]).
//!
//! Rules kept here (docs/membership.md has the full list):
//! - a refused operation changes nothing and is counted by reason;
//! - every certificate is checked against the authority key of the current configuration,
//!   and each serial is used once, with one exception: an evicted node's own AddCert may
//!   come back once to rejoin (PROTOCOL.md, Evict), unless a RemoveCert answered it, and
//!   an AddCert serves for one rejoin at most;
//! - a RemoveCert always wins over an eviction: it replaces a queued Evict, turns a
//!   deferred leave into a removal, and withdraws a queued rejoin;
//! - epoch e ends only once ConfigCert e's signature is known, because the ring positions of
//!   members admitted in e are salted with it;
//! - MS members stay in the MS list until the MS is rotated (issue [E]): their share's
//!   evaluation point is their list position, so dropping one would shift everyone after
//!   it. A removed, evicted or expired MS member is therefore kept and reported in
//!   [`MembershipState::ms_change`] until a rotation takes it out.

use std::collections::{BTreeMap, BTreeSet};

use dbqs_common::Epoch;
use dbqs_common::certs::{AddCert, MAX_ADDRESS_BYTES, RemoveCert};
use dbqs_common::codec::sha256;
use dbqs_common::config::{
    ConfigCert, ConfigError, Configuration, MAX_MEMBERS, MAX_REVOKED, Member,
};
use dbqs_common::identity::NodeId;
use dbqs_common::quorum::group_size;
use dbqs_common::threshold::MsPublicKey;
use thiserror::Error;

use super::certs::{RenewCert, RevokeClientCert, RotateAuthorityCert};
use super::freshness::{self, MAX_FRESHNESS_NONCES};
use super::ops::{Op, OpError, OpKind, Outcome, REJECTION_CODES, Reply};
use super::rotation::RotationState;
use super::signing::{SignRequest, ms_public_key};

/// Most certificates (of every kind, renewals included) queued in one epoch. Beyond it an
/// operation is refused with [`OpError::PendingFull`] and must be resubmitted next epoch.
pub const MAX_PENDING: usize = 4096;
/// Most Evict proposals one MS replica may cast per epoch: a faulty replica cannot grow the
/// vote table beyond MS size × this.
pub const MAX_EVICT_PROPOSALS_PER_REPLICA: usize = 256;
/// Most serials remembered above the floor (see `SerialWindow`).
pub const MAX_USED_SERIALS: usize = 65_536;
/// Most evicted nodes whose rejoin right is remembered (see [`Rejoin`]). Beyond it the
/// rights that expire first are dropped: such a node then needs an admin's new AddCert.
pub const MAX_REJOINABLE: usize = 65_536;

/// Why a member leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LeaveReason {
    Removed = 1,
    Evicted = 2,
    Expired = 3,
}

/// Why the MS must be rotated (the rotation itself is issue [E]; PROTOCOL.md, "MS rotation
/// and resharing" lists the triggers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MsChangeReason {
    /// An MS member should leave; it stays in the MS list (and the membership) until then.
    MemberLeaving { node: NodeId, reason: LeaveReason },
    /// The size rule of the fault model gives a different MS size.
    SizeRule { current_f_ms: u32, wanted_f_ms: u32 },
    /// `ms_rotation_epochs` have passed since the MS term started.
    Periodic { term_start: Epoch },
}

/// A verified change queued for the next epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Add(AddCert),
    Remove(RemoveCert),
    Renew(RenewCert),
    RevokeClient(RevokeClientCert),
    RotateAuthority(RotateAuthorityCert),
    Evict(NodeId),
}

impl Change {
    /// Renewals change no field of the configuration, so they do not count towards
    /// `max_changes_per_epoch` (they still count towards `MAX_PENDING`).
    fn alters_configuration(&self) -> bool {
        !matches!(self, Change::Renew(_))
    }
}

/// What the runtime must do after an operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// The epoch ended; `epoch` is the new one.
    EpochEnded {
        epoch: Epoch,
        config_hash: [u8; 32],
        ms_change: Vec<MsChangeReason>,
    },
    /// Sign the new configuration with this replica's key share and broadcast the share.
    SignConfig(SignRequest),
    /// ConfigCert `epoch` is complete: the runtime may persist and push it.
    Certified { epoch: Epoch, signature: [u8; 96] },
    /// Handover executed: configuration `epoch` names the new MS, which continues from
    /// this state; this MS is retired (its members erase their old shares).
    HandedOver { epoch: Epoch },
    /// Configuration `epoch` names a new MS to reshare to (`Configuration::ms_next`).
    RotationStarted { epoch: Epoch },
    /// Sign `freshness::signing_bytes(root, epoch)` and send the share to the requesters.
    SignFreshness {
        epoch: Epoch,
        root: [u8; 32],
        leaf_count: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum GenesisError {
    #[error("genesis certificate: {0}")]
    Config(#[from] ConfigError),
    #[error("the configuration's MS key set is malformed or is not the given MS key")]
    KeySet,
    #[error("member {0} has no valid AddCert from the genesis authority")]
    MissingAddCert(NodeId),
    #[error("serial {0} appears twice among the genesis AddCerts")]
    DuplicateSerial(u64),
}

/// The right of an evicted node to rejoin (PROTOCOL.md, Evict: "an evicted node whose
/// AddCert is still unexpired and was never answered by a RemoveCert may submit it again").
/// It names the one AddCert that admitted the node last, so no other spent certificate can
/// come back through it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejoin {
    /// SHA-256 of the encoding of the AddCert that admitted the node last.
    pub add_cert: [u8; 32],
    /// The node's not-after when it was evicted; the right is dropped once the agreed time
    /// passes it (the AddCert's own not-after is checked when it comes back).
    pub not_after_ms: u64,
}

/// The digest that identifies an AddCert in [`Rejoin`] and `MembershipState::admission`.
pub(super) fn add_cert_digest(c: &AddCert) -> [u8; 32] {
    sha256(&[&c.encode()])
}

/// Serials against replay: every serial at or below `floor` counts as used, and `used`
/// holds the used serials above it. When `used` outgrows `MAX_USED_SERIALS` the floor rises
/// to its smallest entry, so a certificate with a very old unused serial may be refused;
/// the authority issues increasing serials, so that only costs a re-issue.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct SerialWindow {
    pub(super) floor: u64,
    pub(super) used: BTreeSet<u64>,
}

impl SerialWindow {
    fn is_used(&self, s: u64) -> bool {
        s <= self.floor || self.used.contains(&s)
    }

    fn mark(&mut self, s: u64) {
        debug_assert!(!self.is_used(s));
        self.used.insert(s);
        while self.used.remove(&(self.floor + 1)) {
            self.floor += 1;
        }
        while self.used.len() > MAX_USED_SERIALS {
            if let Some(min) = self.used.pop_first() {
                self.floor = min;
            }
        }
    }
}

/// The membership state machine. See the module comment.
#[derive(Clone, Debug)]
pub struct MembershipState {
    pub(super) config: Configuration,
    pub(super) config_hash: [u8; 32],
    pub(super) ms_key: MsPublicKey,
    /// The combined signature of ConfigCert `config.epoch`, once verified.
    pub(super) certified: Option<[u8; 96]>,
    pub(super) agreed_time_ms: u64,
    /// Latest `now_ms` each MS member reported.
    pub(super) time_reports: BTreeMap<NodeId, u64>,
    /// Certificate expiry of every current member.
    pub(super) not_after: BTreeMap<NodeId, u64>,
    /// For every current member, the digest of the AddCert that admitted it.
    pub(super) admission: BTreeMap<NodeId, [u8; 32]>,
    /// Evicted nodes that may rejoin with their own AddCert, at most `MAX_REJOINABLE`;
    /// never a current member. A right stays while its rejoin is queued (so a RemoveCert
    /// can still withdraw both) and ends when the epoch admits the node.
    pub(super) rejoinable: BTreeMap<NodeId, Rejoin>,
    /// The members admitted by a rejoin, a subset of the members: the AddCert named in
    /// their `admission` has served for its one rejoin, so evicting them again grants no
    /// right (PROTOCOL.md, "Ring positions resist grinding": otherwise a node could get
    /// itself evicted on purpose to redraw its position again and again). A digest can
    /// only come back through a right, and rights are only granted from `admission`, so
    /// remembering the mark per member (at most `MAX_MEMBERS`) is enough; nothing is lost
    /// to a cap.
    pub(super) rejoined: BTreeSet<NodeId>,
    pub(super) serials: SerialWindow,
    /// Changes for the next epoch, in the order they executed.
    pub(super) pending: Vec<Change>,
    /// Per target, the MS replicas that proposed evicting it in this epoch.
    pub(super) evict_votes: BTreeMap<NodeId, BTreeSet<NodeId>>,
    pub(super) end_votes: BTreeSet<NodeId>,
    /// The epoch should end but ConfigCert e's signature is not known yet.
    pub(super) end_requested: bool,
    /// MS members that should leave and wait for an MS rotation.
    pub(super) deferred_leaves: BTreeMap<NodeId, LeaveReason>,
    /// The epoch whose configuration first named the current MS.
    pub(super) ms_term_start: Epoch,
    /// Why the current configuration's MS is due for rotation (empty: it is not).
    pub(super) ms_change: Vec<MsChangeReason>,
    /// The running MS rotation (`rotation.rs`), while `config.ms_next` is not empty.
    pub(super) rotation: Option<RotationState>,
    /// Set when this MS handed over: the epoch whose configuration names its successor.
    pub(super) retired: Option<Epoch>,
    /// While retired: the rotation that handed over.
    pub(super) handed_over_rotation: Option<RotationState>,
    /// Refusals per `OpError::code`. Metrics only: not part of the snapshot.
    pub(super) rejections: [u64; REJECTION_CODES],
}

impl MembershipState {
    /// Starts from the genesis certificate and the AddCerts of its members (for their
    /// expiry and serials). The certificate must verify with `ms_key`, and the configuration's
    /// key set must carry that same key.
    pub fn genesis(
        cert: &ConfigCert,
        ms_key: &MsPublicKey,
        add_certs: &[AddCert],
    ) -> Result<MembershipState, GenesisError> {
        let config = cert.verify(ms_key)?;
        if ms_public_key(&config).ok() != Some(*ms_key) {
            return Err(GenesisError::KeySet);
        }
        let signature: [u8; 96] = cert
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| GenesisError::KeySet)?;
        let mut not_after = BTreeMap::new();
        let mut admission = BTreeMap::new();
        let mut serials = SerialWindow::default();
        let by_key: BTreeMap<_, &AddCert> = add_certs.iter().map(|c| (c.node_key, c)).collect();
        for m in &config.members {
            let id = m.node_id();
            let c = by_key
                .get(&m.key)
                .filter(|c| {
                    c.tls_cert_hash == m.tls_cert_hash
                        && c.x25519_key == m.x25519_key
                        && c.address == m.address
                        && c.verify(&config.authority, 0).is_ok()
                })
                .ok_or(GenesisError::MissingAddCert(id))?;
            if serials.is_used(c.serial) {
                return Err(GenesisError::DuplicateSerial(c.serial));
            }
            serials.mark(c.serial);
            not_after.insert(id, c.not_after_ms);
            admission.insert(id, add_cert_digest(c));
        }
        Ok(MembershipState {
            config_hash: sha256(&[&cert.configuration]),
            ms_key: *ms_key,
            certified: Some(signature),
            agreed_time_ms: 0,
            time_reports: BTreeMap::new(),
            not_after,
            admission,
            rejoinable: BTreeMap::new(),
            rejoined: BTreeSet::new(),
            serials,
            pending: Vec::new(),
            evict_votes: BTreeMap::new(),
            end_votes: BTreeSet::new(),
            end_requested: false,
            deferred_leaves: BTreeMap::new(),
            ms_term_start: config.epoch,
            ms_change: Vec::new(),
            rotation: None,
            retired: None,
            handed_over_rotation: None,
            rejections: [0; REJECTION_CODES],
            config,
        })
    }

    pub fn epoch(&self) -> Epoch {
        self.config.epoch
    }

    pub fn configuration(&self) -> &Configuration {
        &self.config
    }

    pub fn config_hash(&self) -> [u8; 32] {
        self.config_hash
    }

    /// ConfigCert of the current epoch, if its combined signature is known.
    pub fn config_cert(&self) -> Option<ConfigCert> {
        self.certified.map(|s| ConfigCert {
            epoch: self.config.epoch,
            configuration: self.config.encode(),
            signature: s.to_vec(),
        })
    }

    /// What this replica must sign while the current configuration is uncertified. The
    /// runtime can ask this at any time (after a restart or a state transfer too).
    pub fn signing_request(&self) -> Option<SignRequest> {
        match self.certified {
            Some(_) => None,
            None => Some(SignRequest {
                epoch: self.config.epoch,
                config_hash: self.config_hash,
            }),
        }
    }

    /// f_ms of the current MS (its size is 3f_ms+1).
    pub fn f_ms(&self) -> u32 {
        (self.config.ms_members.len().saturating_sub(1) / 3) as u32
    }

    pub fn pending(&self) -> &[Change] {
        &self.pending
    }

    /// Number of queued changes that alter the next configuration.
    pub fn queued_changes(&self) -> usize {
        self.pending
            .iter()
            .filter(|c| c.alters_configuration())
            .count()
    }

    pub fn end_votes(&self) -> usize {
        self.end_votes.len()
    }

    pub fn evict_votes(&self, node: &NodeId) -> usize {
        self.evict_votes.get(node).map_or(0, BTreeSet::len)
    }

    pub fn deferred_leaves(&self) -> &BTreeMap<NodeId, LeaveReason> {
        &self.deferred_leaves
    }

    /// Why the MS of the current configuration is due for rotation; empty if it is not.
    pub fn ms_change(&self) -> &[MsChangeReason] {
        &self.ms_change
    }

    pub fn not_after_ms(&self, node: &NodeId) -> Option<u64> {
        self.not_after.get(node).copied()
    }

    /// The rejoin right of an evicted node, if it holds one (also while its rejoin is
    /// queued).
    pub fn rejoin_right(&self, node: &NodeId) -> Option<Rejoin> {
        self.rejoinable.get(node).copied()
    }

    /// Whether `node` is a member admitted by a rejoin (its AddCert served for its one
    /// rejoin).
    pub fn rejoined(&self, node: &NodeId) -> bool {
        self.rejoined.contains(node)
    }

    /// The time the MS agrees on: the (f_ms+1)-th largest of the latest `now_ms` each MS
    /// member reported with its EndEpoch proposals, never decreasing. At least one correct
    /// replica's clock reached it, so f_ms faulty replicas can neither push it into the
    /// future (expiring everyone) nor hold it back once 2f_ms+1 correct replicas report.
    pub fn agreed_time_ms(&self) -> u64 {
        self.agreed_time_ms
    }

    /// Refusals so far with this `OpError::code`.
    pub fn rejections(&self, code: u8) -> u64 {
        self.rejections.get(code as usize).copied().unwrap_or(0)
    }

    fn is_member(&self, id: &NodeId) -> bool {
        self.config
            .members
            .binary_search_by_key(id, Member::node_id)
            .is_ok()
    }

    pub(super) fn is_ms_member(&self, id: &NodeId) -> bool {
        self.config.ms_members.contains(id)
    }

    fn pending_adds(&self) -> impl Iterator<Item = &AddCert> {
        self.pending.iter().filter_map(|c| match c {
            Change::Add(a) => Some(a),
            _ => None,
        })
    }

    fn is_leaving(&self, id: &NodeId) -> bool {
        self.deferred_leaves.contains_key(id)
            || self.pending.iter().any(|c| match c {
                Change::Remove(r) => r.node == *id,
                Change::Evict(n) => n == id,
                _ => false,
            })
    }

    /// Members the next configuration would place on the ring, from the queue alone
    /// (before expiry). A member admitted by a queued AddCert is listed in the next
    /// configuration but gets its ring position only in the one after (PROTOCOL.md,
    /// "Ring positions resist grinding"), so it does not count: an add plus a removal
    /// could otherwise leave fewer than 3f+1 members on the next ring.
    fn projected_members(&self) -> usize {
        let leaving: BTreeSet<NodeId> = self
            .pending
            .iter()
            .filter_map(|c| match c {
                Change::Remove(r) => Some(r.node),
                Change::Evict(n) => Some(*n),
                _ => None,
            })
            .filter(|n| !self.is_ms_member(n))
            .collect();
        self.config.members.len().saturating_sub(leaving.len())
    }

    fn max_changes(&self) -> usize {
        (self.config.params.max_changes_per_epoch.max(1) as usize).min(MAX_PENDING)
    }

    fn check_capacity(&self, alters_configuration: bool) -> Result<(), OpError> {
        if self.pending.len() >= MAX_PENDING {
            return Err(OpError::PendingFull { max: MAX_PENDING });
        }
        if alters_configuration && self.queued_changes() >= self.max_changes() {
            return Err(OpError::ChangeLimit {
                max: self.max_changes(),
            });
        }
        Ok(())
    }

    fn check_serial(&self, serial: u64) -> Result<(), OpError> {
        if self.serials.is_used(serial) {
            return Err(OpError::Replay(serial));
        }
        Ok(())
    }

    fn check_min_size(&self, leaving: &NodeId) -> Result<(), OpError> {
        let min = group_size(self.config.params.f);
        if !self.is_ms_member(leaving) && self.projected_members() <= min {
            return Err(OpError::BelowMinimumSize { min });
        }
        Ok(())
    }

    /// Executes one ordered operation submitted by `proposer` (the NodeId of the PBFT
    /// client that signed the request). Refusals are counted and become a `Rejected` reply.
    pub fn apply(&mut self, proposer: NodeId, op: &Op) -> (Reply, Vec<Output>) {
        let mut outputs = Vec::new();
        let outcome = match self.try_apply(proposer, op, &mut outputs) {
            Ok(o) => o,
            Err(e) => self.reject(&e),
        };
        let reply = Reply {
            epoch: self.config.epoch,
            outcome,
        };
        (reply, outputs)
    }

    /// Counts a refusal and turns it into the reply's outcome.
    pub(super) fn reject(&mut self, e: &OpError) -> Outcome {
        self.rejections[e.code() as usize] += 1;
        Outcome::Rejected {
            code: e.code(),
            reason: e.to_string(),
        }
    }

    /// Like [`apply`](Self::apply) but returns the refusal itself. Nothing changes (not even
    /// the counters) when it returns an error.
    pub fn try_apply(
        &mut self,
        proposer: NodeId,
        op: &Op,
        outputs: &mut Vec<Output>,
    ) -> Result<Outcome, OpError> {
        let current = self.config.epoch;
        if let Some(successor) = self.retired {
            return Err(OpError::Retired(successor));
        }
        if op.epoch < current {
            return Err(OpError::StaleEpoch {
                op_epoch: op.epoch,
                current,
            });
        }
        if op.epoch > current {
            return Err(OpError::FutureEpoch {
                op_epoch: op.epoch,
                current,
            });
        }
        let authority = self.config.authority;
        let now = self.agreed_time_ms;
        match &op.kind {
            OpKind::Add(c) => {
                if c.address.len() > MAX_ADDRESS_BYTES {
                    return Err(OpError::AddressTooLong {
                        max: MAX_ADDRESS_BYTES,
                    });
                }
                c.verify(&authority, now)?;
                let id = c.node_id();
                // PROTOCOL.md, Evict: an evicted node may submit its own AddCert (the one
                // that admitted it last) once more; its serial is spent, so it is not
                // checked. Only the node itself, signing the PBFT request with its identity
                // key: AddCerts are public (genesis.adds is on every node), and anyone else
                // could otherwise bring a dead node back into its groups again and again.
                // Every other spent serial stays a replay.
                let rejoin = proposer == id
                    && self
                        .rejoinable
                        .get(&id)
                        .is_some_and(|r| r.add_cert == add_cert_digest(c));
                if !rejoin {
                    self.check_serial(c.serial)?;
                }
                if self.is_member(&id) || self.pending_adds().any(|a| a.node_id() == id) {
                    return Err(OpError::AlreadyMember(id));
                }
                if self
                    .config
                    .members
                    .iter()
                    .any(|m| m.tls_cert_hash == c.tls_cert_hash)
                    || self
                        .pending_adds()
                        .any(|a| a.tls_cert_hash == c.tls_cert_hash)
                {
                    return Err(OpError::DuplicateTlsCert);
                }
                if self.config.members.len() + self.pending_adds().count() >= MAX_MEMBERS {
                    return Err(OpError::TooManyMembers { max: MAX_MEMBERS });
                }
                // The right stays until the epoch admits the node (next.rs), so that a
                // RemoveCert arriving meanwhile can still withdraw the queued rejoin; a
                // second submission meanwhile is refused above as AlreadyMember.
                let serial = (!rejoin).then_some(c.serial);
                self.queue(serial, Change::Add(c.clone()), outputs)
            }
            OpKind::Remove(c) => {
                c.verify(&authority)?;
                self.check_serial(c.serial)?;
                if !self.is_member(&c.node) {
                    // An evicted node's rejoin right ends with a RemoveCert (PROTOCOL.md,
                    // Evict: "never answered by a RemoveCert"), and so does its rejoin if
                    // it is already queued: the node does not come back. Nothing else is
                    // queued: the node is no member, so the configuration does not change.
                    if let Some(right) = self.rejoinable.remove(&c.node) {
                        self.pending.retain(|p| {
                            !matches!(p, Change::Add(a)
                                if a.node_id() == c.node && add_cert_digest(a) == right.add_cert)
                        });
                        self.serials.mark(c.serial);
                        return Ok(Outcome::Queued {
                            changes: self.queued_changes() as u32,
                        });
                    }
                    return Err(OpError::NotAMember(c.node));
                }
                // A RemoveCert wins over an eviction (or expiry) that is under way: the
                // node leaves as removed, with no rejoin right (PROTOCOL.md, Evict). A
                // queued Evict is replaced in place (the number of changes stays); the
                // deferred leave of an MS member changes its reason.
                if let Some(i) = self
                    .pending
                    .iter()
                    .position(|p| matches!(p, Change::Evict(n) if *n == c.node))
                {
                    self.serials.mark(c.serial);
                    self.pending[i] = Change::Remove(c.clone());
                    return Ok(Outcome::Queued {
                        changes: self.queued_changes() as u32,
                    });
                }
                if let Some(reason) = self.deferred_leaves.get_mut(&c.node)
                    && *reason != LeaveReason::Removed
                {
                    *reason = LeaveReason::Removed;
                    for m in &mut self.ms_change {
                        if let MsChangeReason::MemberLeaving { node, reason } = m
                            && *node == c.node
                        {
                            *reason = LeaveReason::Removed;
                        }
                    }
                    self.serials.mark(c.serial);
                    return Ok(Outcome::Queued {
                        changes: self.queued_changes() as u32,
                    });
                }
                if self.is_leaving(&c.node) {
                    return Err(OpError::AlreadyLeaving(c.node));
                }
                self.check_min_size(&c.node)?;
                self.queue(Some(c.serial), Change::Remove(c.clone()), outputs)
            }
            OpKind::Renew(c) => {
                c.verify(&authority, now)?;
                self.check_serial(c.serial)?;
                if !self.is_member(&c.node) && !self.pending_adds().any(|a| a.node_id() == c.node) {
                    return Err(OpError::NotAMember(c.node));
                }
                self.queue(Some(c.serial), Change::Renew(c.clone()), outputs)
            }
            OpKind::RevokeClient(c) => {
                c.verify(&authority)?;
                self.check_serial(c.serial)?;
                let pending_revokes: Vec<&[u8; 32]> = self
                    .pending
                    .iter()
                    .filter_map(|p| match p {
                        Change::RevokeClient(r) => Some(&r.tls_cert_hash),
                        _ => None,
                    })
                    .collect();
                if self
                    .config
                    .revoked_clients
                    .binary_search(&c.tls_cert_hash)
                    .is_ok()
                    || pending_revokes.contains(&&c.tls_cert_hash)
                {
                    return Err(OpError::AlreadyRevoked);
                }
                if self.config.revoked_clients.len() + pending_revokes.len() >= MAX_REVOKED {
                    return Err(OpError::TooManyRevoked { max: MAX_REVOKED });
                }
                self.queue(Some(c.serial), Change::RevokeClient(c.clone()), outputs)
            }
            OpKind::RotateAuthority(c) => {
                c.verify(&authority)?;
                self.check_serial(c.serial)?;
                if self
                    .pending
                    .iter()
                    .any(|p| matches!(p, Change::RotateAuthority(_)))
                {
                    return Err(OpError::RotationQueued);
                }
                self.queue(Some(c.serial), Change::RotateAuthority(c.clone()), outputs)
            }
            OpKind::Evict(node) => self.propose_evict(proposer, *node, outputs),
            OpKind::EndEpoch { now_ms } => self.propose_end(proposer, *now_ms, outputs),
            OpKind::CertifiedEpoch { signature } => {
                if self.certified.is_some() {
                    return Err(OpError::AlreadyCertified(current));
                }
                let msg = Configuration::signing_bytes(current, &self.config_hash);
                if self.ms_key.verify(&msg, signature).is_err() {
                    return Err(OpError::BadConfigSignature(current));
                }
                self.certified = Some(*signature);
                outputs.push(Output::Certified {
                    epoch: current,
                    signature: *signature,
                });
                if self.end_requested {
                    self.end_epoch(outputs);
                    return Ok(Outcome::EpochEnded);
                }
                Ok(Outcome::Certified)
            }
            OpKind::Freshness { nonces } => {
                if nonces.is_empty() || nonces.len() > MAX_FRESHNESS_NONCES {
                    return Err(OpError::FreshnessBatchSize {
                        len: nonces.len(),
                        max: MAX_FRESHNESS_NONCES,
                    });
                }
                let root = freshness::merkle_root(nonces);
                let leaf_count = nonces.len() as u32;
                outputs.push(Output::SignFreshness {
                    epoch: current,
                    root,
                    leaf_count,
                });
                Ok(Outcome::Freshness { root, leaf_count })
            }
            OpKind::Deal(d) => self.apply_deal(proposer, d),
            OpKind::AckDealing {
                dealer_index,
                digest,
            } => self.apply_ack(proposer, *dealer_index, digest),
            OpKind::Accuse(a) => self.apply_accuse(proposer, a),
            OpKind::HandoverShare { share } => self.apply_handover_share(proposer, share, outputs),
            OpKind::RetryHandover { rotation, attempt } => {
                self.apply_retry(proposer, *rotation, *attempt)
            }
        }
    }

    /// Queues a verified certificate and spends its serial (`None`: a rejoining node's
    /// AddCert, whose serial was spent when it first admitted the node); ends the epoch when
    /// the queue reaches `max_changes_per_epoch` (PROTOCOL.md: "ends the epoch by itself,
    /// deterministically").
    fn queue(
        &mut self,
        serial: Option<u64>,
        change: Change,
        outputs: &mut Vec<Output>,
    ) -> Result<Outcome, OpError> {
        self.check_capacity(change.alters_configuration())?;
        if let Some(serial) = serial {
            self.serials.mark(serial);
        }
        self.pending.push(change);
        let changes = self.queued_changes();
        if changes >= self.max_changes() && self.request_end(outputs) {
            return Ok(Outcome::EpochEnded);
        }
        Ok(Outcome::Queued {
            changes: changes as u32,
        })
    }

    /// PROTOCOL.md, Evict(node): effective once 2f_ms+1 distinct MS replicas proposed it in
    /// this epoch, so f_ms faulty replicas plus one badly routed correct one cannot evict.
    fn propose_evict(
        &mut self,
        proposer: NodeId,
        node: NodeId,
        outputs: &mut Vec<Output>,
    ) -> Result<Outcome, OpError> {
        if !self.is_ms_member(&proposer) {
            return Err(OpError::NotMsMember(proposer));
        }
        if !self.is_member(&node) {
            return Err(OpError::NotAMember(node));
        }
        if self.is_leaving(&node) {
            return Err(OpError::AlreadyLeaving(node));
        }
        let votes = self.evict_votes.get(&node);
        if votes.is_some_and(|v| v.contains(&proposer)) {
            return Err(OpError::DuplicateProposal(proposer));
        }
        let cast = self
            .evict_votes
            .values()
            .filter(|v| v.contains(&proposer))
            .count();
        if cast >= MAX_EVICT_PROPOSALS_PER_REPLICA {
            return Err(OpError::TooManyProposals {
                proposer,
                max: MAX_EVICT_PROPOSALS_PER_REPLICA,
            });
        }
        let count = votes.map_or(0, BTreeSet::len) + 1;
        let needed = 2 * self.f_ms() as usize + 1;
        if count >= needed {
            self.check_min_size(&node)?;
            self.check_capacity(true)?;
            self.evict_votes.entry(node).or_default().insert(proposer);
            self.pending.push(Change::Evict(node));
            if self.queued_changes() >= self.max_changes() && self.request_end(outputs) {
                return Ok(Outcome::EpochEnded);
            }
        } else {
            self.evict_votes.entry(node).or_default().insert(proposer);
        }
        Ok(Outcome::Recorded {
            votes: count as u32,
            needed: needed as u32,
        })
    }

    /// PROTOCOL.md, EndEpoch(e): the epoch ends once f_ms+1 distinct MS replicas proposed it,
    /// so faulty replicas can only make it as short as the fastest correct timer.
    fn propose_end(
        &mut self,
        proposer: NodeId,
        now_ms: u64,
        outputs: &mut Vec<Output>,
    ) -> Result<Outcome, OpError> {
        if !self.is_ms_member(&proposer) {
            return Err(OpError::NotMsMember(proposer));
        }
        if self.end_votes.contains(&proposer) {
            return Err(OpError::DuplicateProposal(proposer));
        }
        self.end_votes.insert(proposer);
        let report = self.time_reports.entry(proposer).or_insert(0);
        *report = (*report).max(now_ms);
        self.recompute_agreed_time();
        let votes = self.end_votes.len();
        let needed = self.f_ms() as usize + 1;
        if votes >= needed && !self.end_requested && self.request_end(outputs) {
            return Ok(Outcome::EpochEnded);
        }
        Ok(Outcome::Recorded {
            votes: votes as u32,
            needed: needed as u32,
        })
    }

    fn recompute_agreed_time(&mut self) {
        let mut times: Vec<u64> = self
            .time_reports
            .iter()
            .filter(|(id, _)| self.is_ms_member(id))
            .map(|(_, t)| *t)
            .collect();
        times.sort_unstable_by(|a, b| b.cmp(a));
        if let Some(t) = times.get(self.f_ms() as usize) {
            self.agreed_time_ms = self.agreed_time_ms.max(*t);
        }
    }

    /// Ends the epoch now if ConfigCert e is known, else once it arrives. True if it ended.
    pub(super) fn request_end(&mut self, outputs: &mut Vec<Output>) -> bool {
        if self.certified.is_some() {
            self.end_epoch(outputs);
            true
        } else {
            self.end_requested = true;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguous_serials_fold_into_the_floor() {
        let mut w = SerialWindow::default();
        for s in 1..=10 {
            assert!(!w.is_used(s));
            w.mark(s);
        }
        assert_eq!((w.floor, w.used.len()), (10, 0));
        w.mark(20);
        assert!(w.is_used(20) && w.is_used(3) && !w.is_used(15));
    }

    #[test]
    fn remembered_serials_stay_bounded_and_old_ones_stay_spent() {
        let mut w = SerialWindow::default();
        for i in 0..(MAX_USED_SERIALS as u64 + 10) {
            w.mark(2 * i + 2);
        }
        assert!(w.used.len() <= MAX_USED_SERIALS);
        assert!(
            w.is_used(2) && w.is_used(3),
            "below the risen floor counts as used"
        );
        assert!(!w.is_used(2 * (MAX_USED_SERIALS as u64 + 10) + 1));
    }
}
