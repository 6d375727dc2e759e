//! The operations PBFT orders for the membership state machine, the replies it gives, and
//! the reasons it rejects (PROTOCOL.md, "Membership service").
//!
//! Encodings (docs/membership.md, "Encodings") use `dbqs_common::codec`: big-endian integers,
//! `u32` length prefixes, a domain tag per kind, no trailing bytes. The decoders return
//! errors and check every count and length against an explicit bound before allocating.

use dbqs_common::Epoch;
use dbqs_common::certs::{AddCert, CertError, RemoveCert};
use dbqs_common::codec::{DecodeError, Reader, Writer};
use dbqs_common::identity::NodeId;
use thiserror::Error;

use super::certs::{RenewCert, RevokeClientCert, RotateAuthorityCert};
use super::freshness::MAX_FRESHNESS_NONCES;
use super::resharing::{ACCUSATION_BYTES, Accusation, Dealing};

/// Largest encoded dealing inside an operation: 301 commitment coefficients and 301 sealed
/// sub-shares of 48 bytes each, plus the header (about 29 KiB; PBFT takes 64 KiB ops).
pub const MAX_DEALING_BYTES: usize = 32 << 10;

/// Largest encoded certificate inside an operation (an `AddCert` with a 255-byte address
/// is about 460 bytes).
pub const MAX_CERT_BYTES: usize = 1024;
/// Longest rejection reason carried in a reply.
pub const MAX_REASON_BYTES: usize = 1024;

/// One ordered operation: what it does and the epoch it was made for. An operation for an
/// older epoch is ignored (PROTOCOL.md: "Every operation names the epoch it was made for");
/// one for a newer epoch cannot be checked against that epoch's authority, so it is refused
/// too and the submitter retries once the MS has reached it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    pub epoch: Epoch,
    pub kind: OpKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpKind {
    Add(AddCert),
    Remove(RemoveCert),
    Renew(RenewCert),
    RevokeClient(RevokeClientCert),
    RotateAuthority(RotateAuthorityCert),
    /// Proposed by an MS replica whose probes of `node` failed.
    Evict(NodeId),
    /// Proposed by an MS replica whose epoch timer expired; `now_ms` is its clock, the only
    /// way time enters the state machine (see `MembershipState::agreed_time_ms`).
    EndEpoch {
        now_ms: u64,
    },
    /// The combined BLS signature of `ConfigCert` for `Op::epoch`, which salts the ring
    /// positions assigned at the end of that epoch (PROTOCOL.md, "ring positions resist
    /// grinding").
    CertifiedEpoch {
        signature: [u8; 96],
    },
    /// A batch of freshness nonces (PROTOCOL.md, "Freshness(nonces)").
    Freshness {
        nonces: Vec<[u8; 32]>,
    },
    /// An old MS member's dealing for the running rotation (PROTOCOL.md, "MS rotation and
    /// resharing", step 2).
    Deal(Box<Dealing>),
    /// A new MS member opened its sub-share of this dealing and it matched the commitment.
    AckDealing {
        dealer_index: u32,
        digest: [u8; 32],
    },
    /// A new MS member shows that its sub-share of a dealing is bad (step 3).
    Accuse(Box<Accusation>),
    /// A new MS member's signature share, under its new key share, over the handover
    /// statement of the chosen set S (step 5; `rotation::handover_signing_bytes`).
    HandoverShare {
        share: [u8; 96],
    },
    /// Proposed by an old MS member whose timer ran out while S (attempt `attempt` of the
    /// rotation that configuration `rotation` started) had not led to Handover (step 5:
    /// "the old MS picks a new S and tries again"). Effective once f_ms+1 distinct old
    /// members proposed the same attempt of the same rotation.
    RetryHandover {
        rotation: Epoch,
        attempt: u32,
    },
}

impl OpKind {
    /// Whether this is an MS member's vote about the epoch it was proposed in (ending it,
    /// evicting a node its probes saw dead in it, or certifying its configuration). Such a
    /// proposal refused as stale must not be resubmitted at the newer epoch: there it
    /// would count as a vote about an epoch the member has not judged (a retried
    /// EndEpoch, joined by the other members' late proposals for the old epoch, used to
    /// end every other epoch right after it began). Certificates from admins and nodes,
    /// freshness nonces and rotation steps carry their own validity and may be retried.
    pub fn bound_to_epoch(&self) -> bool {
        matches!(
            self,
            OpKind::EndEpoch { .. } | OpKind::Evict(_) | OpKind::CertifiedEpoch { .. }
        )
    }
}

impl Op {
    pub fn new(epoch: Epoch, kind: OpKind) -> Op {
        Op { epoch, kind }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::tagged("ms-op");
        w.u64(self.epoch);
        write_kind(&mut w, &self.kind);
        w.finish()
    }

    pub fn decode(buf: &[u8]) -> Result<Op, OpError> {
        let mut r = Reader::new(buf);
        r.expect_tag("ms-op")?;
        let epoch = r.u64("epoch")?;
        let kind = read_kind(&mut r)?;
        r.finish()?;
        Ok(Op { epoch, kind })
    }
}

/// `u8 kind ‖ body`; shared by operations and the snapshot's queue of pending changes.
pub(super) fn write_kind(w: &mut Writer, kind: &OpKind) {
    match kind {
        OpKind::Add(c) => w.u8(1).bytes(&c.encode()),
        OpKind::Remove(c) => w.u8(2).fixed(&c.node.0).u64(c.serial).fixed(&c.signature),
        OpKind::Renew(c) => w.u8(3).bytes(&c.encode()),
        OpKind::RevokeClient(c) => w.u8(4).bytes(&c.encode()),
        OpKind::RotateAuthority(c) => w.u8(5).bytes(&c.encode()),
        OpKind::Evict(node) => w.u8(6).fixed(&node.0),
        OpKind::EndEpoch { now_ms } => w.u8(7).u64(*now_ms),
        OpKind::CertifiedEpoch { signature } => w.u8(8).fixed(signature),
        OpKind::Freshness { nonces } => {
            w.u8(9).u32(nonces.len() as u32);
            for n in nonces {
                w.fixed(n);
            }
            w
        }
        OpKind::Deal(d) => w.u8(10).bytes(&d.encode()),
        OpKind::AckDealing {
            dealer_index,
            digest,
        } => w.u8(11).u32(*dealer_index).fixed(digest),
        OpKind::Accuse(a) => w.u8(12).bytes(&a.encode()),
        OpKind::HandoverShare { share } => w.u8(13).fixed(share),
        OpKind::RetryHandover { rotation, attempt } => w.u8(14).u64(*rotation).u32(*attempt),
    };
}

pub(super) fn read_kind(r: &mut Reader<'_>) -> Result<OpKind, OpError> {
    Ok(match r.u8("op kind")? {
        1 => OpKind::Add(AddCert::decode(r.bytes("add cert", MAX_CERT_BYTES)?)?),
        2 => OpKind::Remove(RemoveCert {
            node: NodeId(r.array("node")?),
            serial: r.u64("serial")?,
            signature: r.array("signature")?,
        }),
        3 => OpKind::Renew(RenewCert::decode(r.bytes("renew cert", MAX_CERT_BYTES)?)?),
        4 => OpKind::RevokeClient(RevokeClientCert::decode(
            r.bytes("revoke cert", MAX_CERT_BYTES)?,
        )?),
        5 => OpKind::RotateAuthority(RotateAuthorityCert::decode(
            r.bytes("rotate cert", MAX_CERT_BYTES)?,
        )?),
        6 => OpKind::Evict(NodeId(r.array("node")?)),
        7 => OpKind::EndEpoch {
            now_ms: r.u64("now_ms")?,
        },
        8 => OpKind::CertifiedEpoch {
            signature: r.array("signature")?,
        },
        9 => {
            let n = r.count("nonces", MAX_FRESHNESS_NONCES, 32)?;
            let mut nonces = Vec::with_capacity(n);
            for _ in 0..n {
                nonces.push(r.array("nonce")?);
            }
            OpKind::Freshness { nonces }
        }
        10 => OpKind::Deal(Box::new(Dealing::decode(
            r.bytes("dealing", MAX_DEALING_BYTES)?,
        )?)),
        11 => OpKind::AckDealing {
            dealer_index: r.u32("dealer_index")?,
            digest: r.array("dealing digest")?,
        },
        12 => OpKind::Accuse(Box::new(Accusation::decode(
            r.bytes("accusation", ACCUSATION_BYTES)?,
        )?)),
        13 => OpKind::HandoverShare {
            share: r.array("handover share")?,
        },
        14 => OpKind::RetryHandover {
            rotation: r.u64("retry rotation")?,
            attempt: r.u32("retry attempt")?,
        },
        _ => {
            return Err(DecodeError::Invalid {
                field: "op kind",
                reason: "unknown",
            }
            .into());
        }
    })
}

/// What an accepted operation did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A certificate was verified and queued for the next epoch; `changes` counts the
    /// configuration changes now queued.
    Queued { changes: u32 },
    /// An Evict or EndEpoch proposal was counted: `votes` of the `needed` distinct MS
    /// replicas have proposed it in this epoch.
    Recorded { votes: u32, needed: u32 },
    /// This operation ended the epoch; the reply's epoch is the new one.
    EpochEnded,
    /// The configuration's combined signature was verified and recorded.
    Certified,
    /// A freshness batch executed in the reply's epoch; `root` is the batch's Merkle root.
    Freshness { root: [u8; 32], leaf_count: u32 },
    /// Refused; nothing changed. `code` is `OpError::code`, `reason` its message.
    Rejected { code: u8, reason: String },
}

/// The reply to one operation: the epoch current after it executed, and what it did.
/// Deterministic, so f_ms+1 matching replies from distinct replicas prove it (PBFT replies).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub epoch: Epoch,
    pub outcome: Outcome,
}

impl Reply {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::tagged("ms-reply");
        w.u64(self.epoch);
        match &self.outcome {
            Outcome::Queued { changes } => w.u8(0).u32(*changes),
            Outcome::Recorded { votes, needed } => w.u8(1).u32(*votes).u32(*needed),
            Outcome::EpochEnded => w.u8(2),
            Outcome::Certified => w.u8(3),
            Outcome::Freshness { root, leaf_count } => w.u8(4).fixed(root).u32(*leaf_count),
            Outcome::Rejected { code, reason } => {
                let b = reason.as_bytes();
                w.u8(5).u8(*code).bytes(&b[..b.len().min(MAX_REASON_BYTES)])
            }
        };
        w.finish()
    }

    pub fn decode(buf: &[u8]) -> Result<Reply, DecodeError> {
        let mut r = Reader::new(buf);
        r.expect_tag("ms-reply")?;
        let epoch = r.u64("epoch")?;
        let outcome = match r.u8("outcome")? {
            0 => Outcome::Queued {
                changes: r.u32("changes")?,
            },
            1 => Outcome::Recorded {
                votes: r.u32("votes")?,
                needed: r.u32("needed")?,
            },
            2 => Outcome::EpochEnded,
            3 => Outcome::Certified,
            4 => Outcome::Freshness {
                root: r.array("root")?,
                leaf_count: r.u32("leaf_count")?,
            },
            5 => {
                let code = r.u8("code")?;
                let reason = String::from_utf8_lossy(r.bytes("reason", MAX_REASON_BYTES)?);
                Outcome::Rejected {
                    code,
                    reason: reason.into_owned(),
                }
            }
            _ => {
                return Err(DecodeError::Invalid {
                    field: "outcome",
                    reason: "unknown",
                });
            }
        };
        r.finish()?;
        Ok(Reply { epoch, outcome })
    }
}

/// Why an operation was refused. A refused operation changes nothing; each refusal is
/// counted by its `kind()` (`MembershipState::rejections`).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OpError {
    #[error("operation for epoch {op_epoch} is older than the current epoch {current}")]
    StaleEpoch { op_epoch: Epoch, current: Epoch },
    #[error("operation for epoch {op_epoch} is ahead of the current epoch {current}")]
    FutureEpoch { op_epoch: Epoch, current: Epoch },
    #[error("malformed operation: {0}")]
    Malformed(#[from] DecodeError),
    #[error("certificate rejected: {0}")]
    Certificate(#[from] CertError),
    #[error("serial {0} was already used")]
    Replay(u64),
    #[error("node {0} is already a member or queued to join")]
    AlreadyMember(NodeId),
    #[error("node {0} is not a member of the current configuration")]
    NotAMember(NodeId),
    #[error("node {0} is already queued to leave")]
    AlreadyLeaving(NodeId),
    #[error("the TLS certificate is already bound to another member")]
    DuplicateTlsCert,
    #[error("address longer than {max} bytes")]
    AddressTooLong { max: usize },
    #[error("the client certificate is already revoked or queued for revocation")]
    AlreadyRevoked,
    #[error("an authority rotation is already queued in this epoch")]
    RotationQueued,
    #[error("proposer {0} is not an MS member of the current configuration")]
    NotMsMember(NodeId),
    #[error("proposer {0} already proposed this in the current epoch")]
    DuplicateProposal(NodeId),
    #[error("proposer {proposer} already cast {max} eviction proposals in this epoch")]
    TooManyProposals { proposer: NodeId, max: usize },
    #[error("{max} certificates are already pending; resubmit in the next epoch")]
    PendingFull { max: usize },
    #[error("{max} changes are queued and the epoch is ending; resubmit in the next epoch")]
    ChangeLimit { max: usize },
    #[error("the configuration would fall below {min} members (one storage group)")]
    BelowMinimumSize { min: usize },
    #[error("the configuration would exceed {max} members")]
    TooManyMembers { max: usize },
    #[error("the revocation list would exceed {max} entries")]
    TooManyRevoked { max: usize },
    #[error("the configuration signature for epoch {0} does not verify with the MS key")]
    BadConfigSignature(Epoch),
    #[error("epoch {0} is already certified")]
    AlreadyCertified(Epoch),
    #[error("a freshness batch holds 1..={max} nonces, not {len}")]
    FreshnessBatchSize { len: usize, max: usize },
    #[error("no MS rotation is in progress")]
    NoRotation,
    #[error("{0} is not the party of the running MS rotation this operation names")]
    NotRotationParty(NodeId),
    #[error("dealing refused: {0}")]
    BadDealing(String),
    #[error("no dealing from dealer index {0} with that digest")]
    UnknownDealing(u32),
    #[error("accusation refused: {0}")]
    FalseAccusation(String),
    #[error("no set of dealings is chosen yet")]
    NoChosenSet,
    #[error("the handover share does not verify against the new key share")]
    BadHandoverShare,
    #[error("this MS handed over to the MS of configuration {0}; ask that MS")]
    Retired(Epoch),
    #[error(
        "retry for attempt {attempt} of the rotation of epoch {rotation} refused: the running rotation is epoch {current_rotation}'s, at attempt {current}"
    )]
    StaleRetry {
        rotation: Epoch,
        attempt: u32,
        current_rotation: Epoch,
        current: u32,
    },
}

impl OpError {
    /// Stable code carried in replies; also the index of the rejection counter.
    pub fn code(&self) -> u8 {
        match self {
            OpError::StaleEpoch { .. } => 1,
            OpError::FutureEpoch { .. } => 2,
            OpError::Malformed(_) => 3,
            OpError::Certificate(_) => 4,
            OpError::Replay(_) => 5,
            OpError::AlreadyMember(_) => 6,
            OpError::NotAMember(_) => 7,
            OpError::AlreadyLeaving(_) => 8,
            OpError::DuplicateTlsCert => 9,
            OpError::AddressTooLong { .. } => 10,
            OpError::AlreadyRevoked => 11,
            OpError::RotationQueued => 12,
            OpError::NotMsMember(_) => 13,
            OpError::DuplicateProposal(_) => 14,
            OpError::TooManyProposals { .. } => 15,
            OpError::PendingFull { .. } => 16,
            OpError::ChangeLimit { .. } => 17,
            OpError::BelowMinimumSize { .. } => 18,
            OpError::TooManyMembers { .. } => 19,
            OpError::TooManyRevoked { .. } => 20,
            OpError::BadConfigSignature(_) => 21,
            OpError::AlreadyCertified(_) => 22,
            OpError::FreshnessBatchSize { .. } => 23,
            OpError::NoRotation => 24,
            OpError::NotRotationParty(_) => 25,
            OpError::BadDealing(_) => 26,
            OpError::UnknownDealing(_) => 27,
            OpError::FalseAccusation(_) => 28,
            OpError::NoChosenSet => 29,
            OpError::BadHandoverShare => 30,
            OpError::Retired(_) => 31,
            OpError::StaleRetry { .. } => 32,
        }
    }
}

/// Number of distinct `OpError::code` values plus one (code 0 is unused).
pub const REJECTION_CODES: usize = 33;

#[cfg(test)]
mod tests {
    use super::*;
    use dbqs_common::identity::KeyPair;

    fn sample_ops() -> Vec<Op> {
        let auth = KeyPair::from_seed([1; 32]);
        let node = KeyPair::from_seed([2; 32]);
        let add = AddCert::issue(
            &auth,
            node.public(),
            [3; 32],
            [4; 32],
            "10.0.0.1:7000".into(),
            5,
            6,
        );
        vec![
            Op::new(1, OpKind::Add(add)),
            Op::new(
                2,
                OpKind::Remove(RemoveCert::issue(&auth, node.node_id(), 7)),
            ),
            Op::new(
                3,
                OpKind::Renew(RenewCert::issue(&auth, node.node_id(), 9, 8)),
            ),
            Op::new(
                4,
                OpKind::RevokeClient(RevokeClientCert::issue(&auth, node.public(), [1; 32], 10)),
            ),
            Op::new(
                5,
                OpKind::RotateAuthority(RotateAuthorityCert::issue(&auth, &node, 11)),
            ),
            Op::new(6, OpKind::Evict(node.node_id())),
            Op::new(7, OpKind::EndEpoch { now_ms: 12 }),
            Op::new(
                8,
                OpKind::CertifiedEpoch {
                    signature: [13; 96],
                },
            ),
            Op::new(
                9,
                OpKind::Freshness {
                    nonces: vec![[14; 32], [15; 32]],
                },
            ),
            Op::new(
                10,
                OpKind::AckDealing {
                    dealer_index: 2,
                    digest: [16; 32],
                },
            ),
            Op::new(11, OpKind::HandoverShare { share: [17; 96] }),
            Op::new(
                12,
                OpKind::RetryHandover {
                    rotation: 11,
                    attempt: 3,
                },
            ),
        ]
    }

    #[test]
    fn every_operation_kind_round_trips_through_its_encoding() {
        for op in sample_ops() {
            let b = op.encode();
            assert_eq!(Op::decode(&b).unwrap(), op);
            assert!(Op::decode(&b[..b.len() - 1]).is_err(), "truncated {op:?}");
            let mut long = b.clone();
            long.push(0);
            assert!(Op::decode(&long).is_err(), "trailing byte {op:?}");
        }
    }

    #[test]
    fn every_reply_round_trips_through_its_encoding() {
        let outcomes = [
            Outcome::Queued { changes: 3 },
            Outcome::Recorded {
                votes: 1,
                needed: 3,
            },
            Outcome::EpochEnded,
            Outcome::Certified,
            Outcome::Freshness {
                root: [7; 32],
                leaf_count: 9,
            },
            Outcome::Rejected {
                code: 5,
                reason: "serial 3 was already used".into(),
            },
        ];
        for outcome in outcomes {
            let r = Reply { epoch: 4, outcome };
            assert_eq!(Reply::decode(&r.encode()).unwrap(), r);
        }
    }

    #[test]
    fn an_oversized_freshness_batch_is_refused_before_allocation() {
        let mut w = Writer::tagged("ms-op");
        w.u64(1).u8(9).u32(MAX_FRESHNESS_NONCES as u32 + 1);
        assert!(matches!(
            Op::decode(&w.finish()),
            Err(OpError::Malformed(DecodeError::TooLong { .. }))
        ));
    }

    #[test]
    fn rejection_codes_are_distinct_and_below_the_counter_bound() {
        let errs = [
            OpError::StaleEpoch {
                op_epoch: 1,
                current: 2,
            },
            OpError::Replay(1),
            OpError::FreshnessBatchSize { len: 0, max: 1 },
            OpError::AlreadyCertified(1),
        ];
        let mut codes: Vec<u8> = errs.iter().map(OpError::code).collect();
        assert!(
            codes
                .iter()
                .all(|&c| (c as usize) < REJECTION_CODES && c > 0)
        );
        codes.dedup();
        assert_eq!(codes.len(), errs.len());
    }

    proptest::proptest! {
        #[test]
        fn op_and_reply_decoders_never_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let _ = Op::decode(&data);
            let _ = Reply::decode(&data);
        }
    }
}
