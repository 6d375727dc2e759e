//! Freshness leases (PROTOCOL.md, "Leases"; proto/dbqs/v1/membership.proto, "How a client
//! in any language obtains its freshness lease").
//!
//! The client picks a random nonce, notes the local time T, and asks every MS member of its
//! configuration for `Freshness{nonce}`. A reply counts only if it came over the channel to
//! a distinct MS member, names that member, places the nonce under the batch root by a
//! valid Merkle path, and carries that member's valid BLS signature share over
//! `(epoch, root)`. Once f_ms+1 counted replies name the same epoch e, the client may treat
//! e as current until `T + lease_ms / (1 + ρ)`.
//!
//! This module holds the checks (pure, unit-tested) and the one fan-out that asks the MS;
//! [`crate::client::Client`] decides when to renew and checks the lease when an operation's
//! last reply arrives. It must not depend on the MS crate: the hashing below follows the
//! byte layout documented in membership.proto's `FreshnessReply` comment.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blsttc::{PublicKeySet, SignatureShare};
use dbqs_common::codec::Writer;
use dbqs_common::config::Configuration;
use dbqs_common::{ActiveConfig, Epoch, NodeId};
use dbqs_proto::v1 as pb;
use thiserror::Error;

use crate::client::Client;
use crate::quorum::{CallError, Stragglers, fan_out};

/// Assumed bound on the drift of the local clock's rate (PROTOCOL.md, "Fault model": ρ, 1%).
pub const CLOCK_DRIFT_RHO: f64 = 0.01;
/// Bytes of a freshness nonce.
pub const NONCE_BYTES: usize = 32;
/// Bytes of a BLS signature share.
pub const SHARE_BYTES: usize = 96;
/// Longest Merkle path a reply may carry: a tree of at most 2^32 leaves has 32 levels.
pub const MAX_PATH_LEN: usize = 32;
/// Most MS members asked (`dbqs_common::config::MAX_MS_MEMBERS` bounds configurations).
pub const MAX_MS_ASKED: usize = dbqs_common::config::MAX_MS_MEMBERS;

/// Why one MS member's freshness reply does not count.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReplyError {
    #[error("reply names node {claimed} but came over the channel to {from}")]
    WrongNode { from: NodeId, claimed: String },
    #[error("{0} is not an MS member of the configuration")]
    NotMsMember(NodeId),
    #[error("share index {got}, but the member is at MS position {want}")]
    WrongShareIndex { got: u32, want: usize },
    #[error("nonce index {index} is outside a batch of {leaf_count}")]
    BadIndex { index: u32, leaf_count: u32 },
    #[error("the Merkle path does not lead from the nonce to the root")]
    BadPath,
    #[error("malformed {0}")]
    Malformed(&'static str),
    #[error("signature share over epoch {epoch} does not verify with the member's key share")]
    BadShare { epoch: Epoch },
}

/// Why the client holds no usable lease.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LeaseError {
    #[error(
        "no freshness lease: fewer than f_ms+1 MS members answered ({have} matching of the {need} needed from {ms_members} MS members{details})"
    )]
    NotEnough {
        need: usize,
        have: usize,
        ms_members: usize,
        /// "; node: why" for every member whose reply did not count.
        details: String,
    },
    #[error("no freshness lease: the configuration of epoch {0} names no MS member")]
    NoMsMembers(Epoch),
    #[error("no freshness lease: the MS key set of the configuration of epoch {0} is malformed")]
    BadKeySet(Epoch),
    #[error(
        "no freshness lease: the MS vouched for epoch {lease} but no certificate for it could be fetched (we hold epoch {ours})"
    )]
    Unproven { lease: Epoch, ours: Epoch },
    #[error(
        "the freshness lease for epoch {epoch} ran out before the operation's last reply arrived, {attempts} times"
    )]
    Lapsed { epoch: Epoch, attempts: usize },
}

/// A lease on an epoch: the client may treat `epoch` as current until `expires_at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    pub epoch: Epoch,
    /// When the nonce was sent (T).
    pub sent_at: Instant,
    /// T + lease_ms / (1 + ρ).
    pub expires_at: Instant,
}

impl Lease {
    /// The lease length for a configuration's `lease_ms`: `lease_ms / (1 + ρ)`, so that a
    /// local clock running up to ρ fast still ends the lease before the MS's does.
    /// Rounded down to the nanosecond (never longer than the exact value).
    pub fn duration(lease_ms: u64) -> Duration {
        // `as` saturates and floors; lease_ms fits an f64 far beyond any sane lease.
        Duration::from_nanos((lease_ms as f64 * 1e6 / (1.0 + CLOCK_DRIFT_RHO)) as u64)
    }

    pub fn new(epoch: Epoch, sent_at: Instant, lease_ms: u64) -> Lease {
        Lease {
            epoch,
            sent_at,
            expires_at: sent_at + Self::duration(lease_ms),
        }
    }

    /// Time left at `now` (zero once it ran out).
    pub fn remaining(&self, now: Instant) -> Duration {
        self.expires_at.saturating_duration_since(now)
    }

    /// True while the lease runs.
    pub fn runs_at(&self, now: Instant) -> bool {
        now < self.expires_at
    }

    /// True once less than half of the lease remains: time to renew before an operation.
    pub fn needs_renewal(&self, now: Instant) -> bool {
        let whole = self.expires_at.saturating_duration_since(self.sent_at);
        self.remaining(now) < whole / 2
    }
}

/// Checks that `nonce` is leaf `index` of a batch of `leaf_count` nonces whose root is
/// `root`. `path` lists the siblings from the leaf upwards; a level where the node is the
/// odd last one is carried up unchanged and has no entry (membership.proto,
/// `FreshnessReply`).
pub fn verify_path(
    nonce: &[u8; 32],
    index: u32,
    leaf_count: u32,
    path: &[[u8; 32]],
    root: &[u8; 32],
) -> Result<(), ReplyError> {
    if index >= leaf_count {
        return Err(ReplyError::BadIndex { index, leaf_count });
    }
    if path.len() > MAX_PATH_LEN {
        return Err(ReplyError::BadPath);
    }
    if dbqs_common::merkle::root_from_path(nonce, index, leaf_count, path) != Some(*root) {
        return Err(ReplyError::BadPath);
    }
    Ok(())
}

/// What each MS member signs with its key share after executing a freshness batch:
/// `"dbqs.v1.freshness" 0x00 ‖ u64be(epoch) ‖ root`.
pub fn signing_bytes(epoch: Epoch, root: &[u8; 32]) -> Vec<u8> {
    let mut w = Writer::tagged("freshness");
    w.u64(epoch).fixed(root);
    w.finish()
}

/// The MS members of one configuration and their public key shares.
#[derive(Clone, Debug)]
pub struct MsKeyShares {
    pub epoch: Epoch,
    pub members: Vec<NodeId>,
    keys: PublicKeySet,
}

impl MsKeyShares {
    pub fn from_config(config: &Configuration) -> Result<MsKeyShares, LeaseError> {
        if config.ms_members.is_empty() {
            return Err(LeaseError::NoMsMembers(config.epoch));
        }
        if config.ms_members.len() > MAX_MS_ASKED {
            return Err(LeaseError::BadKeySet(config.epoch));
        }
        let keys = PublicKeySet::from_bytes(config.ms_key_set.clone())
            .map_err(|_| LeaseError::BadKeySet(config.epoch))?;
        Ok(Self::new(config.epoch, config.ms_members.clone(), keys))
    }

    pub fn new(epoch: Epoch, members: Vec<NodeId>, keys: PublicKeySet) -> MsKeyShares {
        MsKeyShares {
            epoch,
            members,
            keys,
        }
    }

    /// f_ms = (number of MS members − 1) / 3.
    pub fn f_ms(&self) -> usize {
        self.members.len().saturating_sub(1) / 3
    }

    /// Matching replies a lease needs: f_ms + 1.
    pub fn need(&self) -> usize {
        self.f_ms() + 1
    }

    /// Checks one reply that arrived over the channel to `from`; returns the epoch it
    /// vouches for.
    pub fn check_reply(
        &self,
        nonce: &[u8; 32],
        from: NodeId,
        r: &pb::FreshnessReply,
    ) -> Result<Epoch, ReplyError> {
        let position = self
            .members
            .iter()
            .position(|m| *m == from)
            .ok_or(ReplyError::NotMsMember(from))?;
        if r.node_id.as_slice() != from.0.as_slice() {
            return Err(ReplyError::WrongNode {
                from,
                claimed: hex::encode(&r.node_id[..r.node_id.len().min(32)]),
            });
        }
        if r.share_index as usize != position + 1 {
            return Err(ReplyError::WrongShareIndex {
                got: r.share_index,
                want: position + 1,
            });
        }
        let root: [u8; 32] = r
            .root
            .as_slice()
            .try_into()
            .map_err(|_| ReplyError::Malformed("root"))?;
        if r.path.len() > MAX_PATH_LEN {
            return Err(ReplyError::BadPath);
        }
        let path = r
            .path
            .iter()
            .map(|s| <[u8; 32]>::try_from(s.as_slice()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| ReplyError::Malformed("path node"))?;
        verify_path(nonce, r.index, r.leaf_count, &path, &root)?;
        let share: [u8; SHARE_BYTES] = r
            .share
            .as_slice()
            .try_into()
            .map_err(|_| ReplyError::Malformed("signature share"))?;
        let share = SignatureShare::from_bytes(share)
            .map_err(|_| ReplyError::Malformed("signature share"))?;
        if !self
            .keys
            .public_key_share(position)
            .verify(&share, signing_bytes(r.epoch, &root))
        {
            return Err(ReplyError::BadShare { epoch: r.epoch });
        }
        Ok(r.epoch)
    }
}

/// Counts counted replies per epoch by distinct member.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    votes: BTreeMap<Epoch, BTreeSet<NodeId>>,
}

impl Tally {
    /// Records `from`'s vote for `epoch`; a member counts once per epoch.
    pub fn add(&mut self, from: NodeId, epoch: Epoch) {
        self.votes.entry(epoch).or_default().insert(from);
    }

    /// The epoch that has `need` distinct votes, if any (the newest if several do, which
    /// only more than f_ms faulty members could cause).
    pub fn decided(&self, need: usize) -> Option<Epoch> {
        self.votes
            .iter()
            .rev()
            .find(|(_, v)| v.len() >= need)
            .map(|(e, _)| *e)
    }

    /// The most votes any one epoch has.
    pub fn best(&self) -> usize {
        self.votes.values().map(BTreeSet::len).max().unwrap_or(0)
    }

    /// The members that voted for `epoch`.
    pub fn voters(&self, epoch: Epoch) -> Vec<NodeId> {
        self.votes
            .get(&epoch)
            .map(|v| v.iter().copied().collect())
            .unwrap_or_default()
    }
}

/// Decides a lease from checked replies: `counted` pairs each member with the epoch its
/// valid reply named. Returns the epoch and the members that vouched for it.
pub fn decide(need: usize, counted: &[(NodeId, Epoch)]) -> Option<(Epoch, Vec<NodeId>)> {
    let mut t = Tally::default();
    for (n, e) in counted {
        t.add(*n, *e);
    }
    t.decided(need).map(|e| (e, t.voters(e)))
}

/// What one round of freshness requests gave.
#[derive(Debug)]
pub struct Attempt {
    /// The lease, if f_ms+1 counted replies agreed.
    pub lease: Option<Lease>,
    /// The members that vouched for the lease's epoch (where to fetch its certificate).
    pub voters: Vec<NodeId>,
    /// Members whose reply did not count, and why.
    pub failed: Vec<(NodeId, CallError)>,
    pub need: usize,
    pub have: usize,
    pub ms_members: usize,
}

impl Attempt {
    /// The error to report when no lease came of it.
    pub fn error(&self) -> LeaseError {
        let mut details = String::new();
        for (n, e) in &self.failed {
            details.push_str(&format!("; {n}: {e}"));
        }
        LeaseError::NotEnough {
            need: self.need,
            have: self.have,
            ms_members: self.ms_members,
            details,
        }
    }
}

/// One round: a fresh nonce to every MS member of `cfg`, each call bounded by the client's
/// timeout; stops as soon as f_ms+1 counted replies agree or that has become impossible.
///
/// A reply whose share fails but that names an epoch newer than `cfg`'s is reported as
/// [`CallError::Epoch`], so the caller can fetch (and verify) that epoch's certificate: an
/// MS rotation changes the key shares, and a claim that cannot be proven is ignored.
/// Start of the message an MS member answers while its MS has handed over to a new one
/// (docs/resharing.md): the new MS is named by a configuration the client will see
/// shortly, so a lease request that meets it is retried.
pub const MS_HANDED_OVER: &str = "the MS handed over";

/// Whether a failed freshness call met an MS that handed over.
pub fn met_handed_over(failed: &[(NodeId, CallError)]) -> bool {
    failed.iter().any(|(_, e)| match e {
        CallError::Status(_, m) | CallError::Unavailable(m) => m.contains(MS_HANDED_OVER),
        _ => false,
    })
}

pub async fn request(client: &Client, cfg: &ActiveConfig) -> Result<Attempt, LeaseError> {
    let ms = Arc::new(MsKeyShares::from_config(&cfg.config)?);
    let need = ms.need();
    let ours = cfg.epoch();
    let mut nonce = [0u8; NONCE_BYTES];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
    let sent_at = Instant::now();
    let this = client.clone();
    let checker = ms.clone();
    let out = fan_out(
        &ms.members,
        client.timeout(),
        Stragglers::Cancel,
        move |n| {
            let this = this.clone();
            let checker = checker.clone();
            async move {
                let r = this
                    .membership(n)?
                    .freshness(pb::FreshnessRequest {
                        nonce: nonce.to_vec(),
                    })
                    .await?
                    .into_inner();
                checker.check_reply(&nonce, n, &r).map_err(|e| match e {
                    ReplyError::BadShare { epoch } if epoch > ours => CallError::Epoch {
                        ours,
                        theirs: epoch,
                    },
                    e => CallError::Invalid(e.to_string()),
                })
            }
        },
        |ok, pending| {
            let mut t = Tally::default();
            for (n, e) in ok {
                t.add(*n, *e);
            }
            t.decided(need).is_some() || t.best() + pending < need
        },
    )
    .await;
    let mut t = Tally::default();
    for (n, e) in &out.ok {
        t.add(*n, *e);
    }
    let decided = t.decided(need);
    Ok(Attempt {
        lease: decided.map(|e| Lease::new(e, sent_at, cfg.config.params.lease_ms)),
        voters: decided.map(|e| t.voters(e)).unwrap_or_default(),
        failed: out.failed,
        need,
        have: t.best(),
        ms_members: ms.members.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use blsttc::SecretKeySet;
    use dbqs_common::codec::sha256;

    fn h(parts: &[&[u8]]) -> [u8; 32] {
        sha256(parts)
    }

    const LEAF: &[u8] = b"dbqs.v1.freshness-leaf\0";
    const NODE: &[u8] = b"dbqs.v1.freshness-node\0";
    const ROOT: &[u8] = b"dbqs.v1.freshness-root\0";

    fn nonce(i: u8) -> [u8; 32] {
        [i; 32]
    }

    fn leaf(i: u8) -> [u8; 32] {
        h(&[LEAF, &nonce(i)])
    }

    fn node(l: &[u8; 32], r: &[u8; 32]) -> [u8; 32] {
        h(&[NODE, l, r])
    }

    fn root(count: u32, top: &[u8; 32]) -> [u8; 32] {
        h(&[ROOT, &count.to_be_bytes(), top])
    }

    #[test]
    fn a_two_leaf_tree_built_by_hand_verifies_both_leaves() {
        let top = node(&leaf(0), &leaf(1));
        let r = root(2, &top);
        verify_path(&nonce(0), 0, 2, &[leaf(1)], &r).unwrap();
        verify_path(&nonce(1), 1, 2, &[leaf(0)], &r).unwrap();
        // Swapped position, wrong count, missing or extra sibling.
        assert_eq!(
            verify_path(&nonce(0), 1, 2, &[leaf(1)], &r),
            Err(ReplyError::BadPath)
        );
        assert!(verify_path(&nonce(0), 0, 3, &[leaf(1)], &r).is_err());
        assert!(verify_path(&nonce(0), 0, 2, &[], &r).is_err());
        assert!(verify_path(&nonce(0), 0, 2, &[leaf(1), leaf(1)], &r).is_err());
        assert_eq!(
            verify_path(&nonce(0), 2, 2, &[leaf(1)], &r),
            Err(ReplyError::BadIndex {
                index: 2,
                leaf_count: 2
            })
        );
    }

    #[test]
    fn a_three_leaf_tree_carries_the_odd_leaf_up_without_a_sibling() {
        //        top
        //      /     \
        //   n01       l2   (carried up unchanged)
        //  /   \
        // l0   l1
        let n01 = node(&leaf(0), &leaf(1));
        let top = node(&n01, &leaf(2));
        let r = root(3, &top);
        verify_path(&nonce(0), 0, 3, &[leaf(1), leaf(2)], &r).unwrap();
        verify_path(&nonce(1), 1, 3, &[leaf(0), leaf(2)], &r).unwrap();
        verify_path(&nonce(2), 2, 3, &[n01], &r).unwrap();
        // The odd leaf has no sibling at level 0: a path that gives it one fails.
        assert!(verify_path(&nonce(2), 2, 3, &[leaf(2), n01], &r).is_err());
        // A root for a duplicated last leaf (4 leaves) is a different root.
        let dup = root(4, &node(&n01, &node(&leaf(2), &leaf(2))));
        assert_ne!(dup, r);
        assert!(verify_path(&nonce(2), 2, 4, &[leaf(2), n01], &r).is_err());
    }

    #[test]
    fn a_five_leaf_tree_verifies_every_leaf_and_rejects_foreign_nonces() {
        // level 0: l0 l1 l2 l3 l4
        // level 1: n01 n23 l4
        // level 2: n0123 l4
        // level 3: top = node(n0123, l4)
        let n01 = node(&leaf(0), &leaf(1));
        let n23 = node(&leaf(2), &leaf(3));
        let n0123 = node(&n01, &n23);
        let top = node(&n0123, &leaf(4));
        let r = root(5, &top);
        let paths: [Vec<[u8; 32]>; 5] = [
            vec![leaf(1), n23, leaf(4)],
            vec![leaf(0), n23, leaf(4)],
            vec![leaf(3), n01, leaf(4)],
            vec![leaf(2), n01, leaf(4)],
            vec![n0123],
        ];
        for (i, p) in paths.iter().enumerate() {
            verify_path(&nonce(i as u8), i as u32, 5, p, &r)
                .unwrap_or_else(|e| panic!("leaf {i}: {e}"));
            assert!(verify_path(&nonce(9), i as u32, 5, p, &r).is_err());
        }
        assert!(verify_path(&nonce(4), 4, 5, &paths[4], &root(4, &top)).is_err());
        let long = vec![[0u8; 32]; MAX_PATH_LEN + 1];
        assert_eq!(
            verify_path(&nonce(0), 0, 5, &long, &r),
            Err(ReplyError::BadPath)
        );
    }

    #[test]
    fn a_single_nonce_batch_has_an_empty_path() {
        let r = root(1, &leaf(7));
        verify_path(&nonce(7), 0, 1, &[], &r).unwrap();
        assert!(verify_path(&nonce(7), 0, 1, &[leaf(7)], &r).is_err());
        assert!(verify_path(&nonce(7), 0, 0, &[], &r).is_err());
    }

    #[test]
    fn signing_bytes_follow_the_documented_layout() {
        let mut want = b"dbqs.v1.freshness\0".to_vec();
        want.extend_from_slice(&7u64.to_be_bytes());
        want.extend_from_slice(&[3; 32]);
        assert_eq!(signing_bytes(7, &[3; 32]), want);
    }

    /// A 4-member MS (f_ms = 1) with its secret shares, and a 3-nonce batch holding ours at
    /// index 1.
    struct Fixture {
        sks: SecretKeySet,
        ms: MsKeyShares,
        nonce: [u8; 32],
        root: [u8; 32],
    }

    fn fixture() -> Fixture {
        let sks = SecretKeySet::random(1, &mut rand::rngs::OsRng);
        let members: Vec<NodeId> = (1..=4).map(|i| NodeId([i; 32])).collect();
        let ms = MsKeyShares::new(5, members, sks.public_keys());
        let n01 = node(&leaf(0), &leaf(1));
        let root = root(3, &node(&n01, &leaf(2)));
        Fixture {
            sks,
            ms,
            nonce: nonce(1),
            root,
        }
    }

    impl Fixture {
        /// The honest reply of the member at 0-based MS position `pos` for `epoch`.
        fn reply(&self, pos: usize, epoch: Epoch) -> pb::FreshnessReply {
            let share = self
                .sks
                .secret_key_share(pos)
                .sign(signing_bytes(epoch, &self.root));
            pb::FreshnessReply {
                epoch,
                root: self.root.to_vec(),
                leaf_count: 3,
                index: 1,
                path: vec![leaf(0).to_vec(), leaf(2).to_vec()],
                share: share.to_bytes().to_vec(),
                share_index: pos as u32 + 1,
                node_id: self.ms.members[pos].0.to_vec(),
            }
        }

        fn from(&self, pos: usize) -> NodeId {
            self.ms.members[pos]
        }
    }

    #[test]
    fn an_honest_reply_counts_and_each_forgery_is_named() {
        let f = fixture();
        assert_eq!(f.ms.need(), 2);
        assert_eq!(f.ms.check_reply(&f.nonce, f.from(2), &f.reply(2, 5)), Ok(5));

        // Came over another member's channel.
        assert!(matches!(
            f.ms.check_reply(&f.nonce, f.from(1), &f.reply(2, 5)),
            Err(ReplyError::WrongNode { .. })
        ));
        // From a node that is not an MS member.
        assert_eq!(
            f.ms.check_reply(&f.nonce, NodeId([9; 32]), &f.reply(2, 5)),
            Err(ReplyError::NotMsMember(NodeId([9; 32])))
        );
        // Claims another member's evaluation point.
        let mut r = f.reply(2, 5);
        r.share_index = 1;
        assert!(matches!(
            f.ms.check_reply(&f.nonce, f.from(2), &r),
            Err(ReplyError::WrongShareIndex { got: 1, want: 3 })
        ));
        // A share made with another member's secret share.
        let mut r = f.reply(2, 5);
        r.share = f.reply(0, 5).share;
        assert_eq!(
            f.ms.check_reply(&f.nonce, f.from(2), &r),
            Err(ReplyError::BadShare { epoch: 5 })
        );
        // The epoch changed after signing.
        let mut r = f.reply(2, 5);
        r.epoch = 6;
        assert_eq!(
            f.ms.check_reply(&f.nonce, f.from(2), &r),
            Err(ReplyError::BadShare { epoch: 6 })
        );
        // Another nonce's path (our nonce is not in the batch).
        assert_eq!(
            f.ms.check_reply(&nonce(7), f.from(2), &f.reply(2, 5)),
            Err(ReplyError::BadPath)
        );
        // Malformed fields are errors, not panics.
        let mut r = f.reply(2, 5);
        r.share.truncate(95);
        assert_eq!(
            f.ms.check_reply(&f.nonce, f.from(2), &r),
            Err(ReplyError::Malformed("signature share"))
        );
        let mut r = f.reply(2, 5);
        r.root.push(0);
        assert_eq!(
            f.ms.check_reply(&f.nonce, f.from(2), &r),
            Err(ReplyError::Malformed("root"))
        );
        let mut r = f.reply(2, 5);
        r.path[0].pop();
        assert_eq!(
            f.ms.check_reply(&f.nonce, f.from(2), &r),
            Err(ReplyError::Malformed("path node"))
        );
        let mut r = f.reply(2, 5);
        r.path = vec![vec![0; 32]; MAX_PATH_LEN + 1];
        assert_eq!(
            f.ms.check_reply(&f.nonce, f.from(2), &r),
            Err(ReplyError::BadPath)
        );
    }

    #[test]
    fn a_lease_needs_f_ms_plus_one_distinct_members_on_one_epoch() {
        let f = fixture();
        let counted = |replies: &[(usize, Epoch)]| -> Vec<(NodeId, Epoch)> {
            replies
                .iter()
                .filter_map(|&(pos, e)| {
                    f.ms.check_reply(&f.nonce, f.from(pos), &f.reply(pos, e))
                        .ok()
                        .map(|e| (f.from(pos), e))
                })
                .collect()
        };
        // One member alone is not enough, even repeated.
        assert_eq!(decide(f.ms.need(), &counted(&[(0, 5)])), None);
        assert_eq!(decide(f.ms.need(), &counted(&[(0, 5), (0, 5)])), None);
        // Two members that disagree on the epoch are not enough.
        assert_eq!(decide(f.ms.need(), &counted(&[(0, 5), (1, 6)])), None);
        // Two distinct members on one epoch are.
        let (e, voters) = decide(f.ms.need(), &counted(&[(0, 6), (1, 5), (3, 5)])).unwrap();
        assert_eq!(e, 5);
        assert_eq!(voters, vec![f.from(1), f.from(3)]);
        // A forged reply does not count towards the majority.
        let mut forged = f.reply(2, 5);
        forged.share = f.reply(0, 5).share;
        let mut c = counted(&[(0, 5)]);
        if let Ok(e) = f.ms.check_reply(&f.nonce, f.from(2), &forged) {
            c.push((f.from(2), e));
        }
        assert_eq!(decide(f.ms.need(), &c), None);
    }

    #[test]
    fn f_ms_follows_the_ms_size() {
        let sks = SecretKeySet::random(0, &mut rand::rngs::OsRng);
        let one = MsKeyShares::new(1, vec![NodeId([1; 32])], sks.public_keys());
        assert_eq!((one.f_ms(), one.need()), (0, 1));
        let seven = MsKeyShares::new(
            1,
            (0..7).map(|i| NodeId([i; 32])).collect(),
            sks.public_keys(),
        );
        assert_eq!((seven.f_ms(), seven.need()), (2, 3));
    }

    #[test]
    fn a_lease_runs_for_lease_ms_over_one_plus_rho_and_asks_renewal_at_half() {
        let t = Instant::now();
        let l = Lease::new(3, t, 10_100);
        let d = l.expires_at - t;
        assert!(d <= Duration::from_secs(10) && d > Duration::from_micros(9_999_999));
        assert!(l.runs_at(t + Duration::from_millis(9_999)));
        assert!(!l.runs_at(t + Duration::from_secs(10)));
        assert!(!l.needs_renewal(t + Duration::from_secs(4)));
        assert!(l.needs_renewal(t + Duration::from_millis(5_001)));
        assert_eq!(l.remaining(t + Duration::from_secs(11)), Duration::ZERO);
    }

    /// A host's monotonic clock that runs at `num/den` local seconds per real second and
    /// reads whole nanoseconds; real time 0 is local time `base`. Real times are
    /// nanoseconds as u128.
    struct HostClock {
        base: Instant,
        num: u128,
        den: u128,
    }

    impl HostClock {
        fn new((num, den): (u128, u128)) -> HostClock {
            HostClock {
                base: Instant::now(),
                num,
                den,
            }
        }

        /// What the clock reads at real time `real_ns`.
        fn at(&self, real_ns: u128) -> Instant {
            let local = real_ns * self.num / self.den;
            self.base + Duration::from_nanos(u64::try_from(local).expect("fits"))
        }

        fn rate(&self) -> f64 {
            self.num as f64 / self.den as f64
        }
    }

    const MS: u128 = 1_000_000;
    /// The MS leaves epoch e an hour (and an odd few nanoseconds) into the run.
    const T_LEAVE_NS: u128 = 3_600_000 * MS + 123_457;
    /// Lease lengths: the tests', the devnet's and the default, and odd ones for rounding.
    const LEASES_MS: [u64; 8] = [1, 51, 100, 4_000, 5_000, 10_000, 12_345, 600_000];

    /// The first real time at which a lease on a nonce sent at real `sent_ns` no longer
    /// runs on a host with `clock` (by bisection over [`Lease::runs_at`]); checks that
    /// [`Lease::remaining`] agrees.
    fn lease_ends(clock: &HostClock, lease_ms: u64, sent_ns: u128) -> u128 {
        let l = Lease::new(7, clock.at(sent_ns), lease_ms);
        let runs = |t: u128| l.runs_at(clock.at(t));
        let (mut lo, mut hi) = (sent_ns, sent_ns + 3 * u128::from(lease_ms) * MS);
        assert!(runs(lo) && !runs(hi));
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if runs(mid) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        assert_eq!(l.remaining(clock.at(hi)), Duration::ZERO);
        assert!(l.remaining(clock.at(hi - 1)) > Duration::ZERO);
        hi
    }

    /// Nonce send times T across [t_leave - lease_ms, t_leave], both ends included.
    fn send_times(lease_ns: u128) -> impl Iterator<Item = u128> {
        (0..=40u128)
            .map(move |i| T_LEAVE_NS - lease_ns + lease_ns * i / 40)
            .chain([T_LEAVE_NS - 1, T_LEAVE_NS - lease_ns + 1])
    }

    /// PROTOCOL.md ("Fault model": clocks): the MS leaves epoch e at real time t_leave,
    /// having answered a nonce the client sent at real T <= t_leave, and counts epoch-e
    /// members against f until t_leave + lease_ms. A client whose clock runs at
    /// r >= 1/(1+ρ) local seconds per real second holds no lease on e after that.
    #[test]
    fn client_leases_end_by_t_leave_plus_lease_ms_on_clocks_of_rate_at_least_1_over_1_plus_rho() {
        assert_eq!(
            CLOCK_DRIFT_RHO, 0.01,
            "the rates below are written for ρ = 1%"
        );
        // Exactly 1/(1+ρ), just above it, exact, ρ fast, twice and a thousand times fast.
        let rates: [(u128, u128); 6] = [
            (100, 101),
            (991, 1_000),
            (1, 1),
            (101, 100),
            (2, 1),
            (1_000, 1),
        ];
        for rate in rates {
            let clock = HostClock::new(rate);
            for lease_ms in LEASES_MS {
                let lease_ns = u128::from(lease_ms) * MS;
                let bound = T_LEAVE_NS + lease_ns;
                for sent in send_times(lease_ns) {
                    let end = lease_ends(&clock, lease_ms, sent);
                    // Not running at `end`, so at no real time after the bound.
                    assert!(
                        end <= bound + 1,
                        "rate {:.6}, lease {lease_ms} ms, nonce sent {} ns before t_leave: \
                         the lease runs {} ns past t_leave + lease_ms",
                        clock.rate(),
                        T_LEAVE_NS - sent,
                        end - 1 - bound
                    );
                }
                if rate == (100, 101) {
                    // The bound is tight: a nonce sent at t_leave gives a lease that ends
                    // within a microsecond of it.
                    let end = lease_ends(&clock, lease_ms, T_LEAVE_NS);
                    assert!(
                        end.abs_diff(bound) < 1_000,
                        "lease {lease_ms} ms: {end} vs {bound}"
                    );
                }
            }
        }
    }

    /// The documented failure mode (docs/threat-model.md, "Leases and clocks"): on a clock
    /// slower than 1/(1+ρ) a lease lasts lease_ms/((1+ρ) r) of real time, and one on a
    /// nonce sent at t_leave outlives the bound by lease_ms (1/((1+ρ) r) - 1).
    #[test]
    fn client_leases_overrun_the_bound_by_the_predicted_amount_on_slower_clocks() {
        // 0.01% and about half a percent below 1/(1+ρ).
        for rate in [(99u128, 100u128), (197, 200)] {
            let clock = HostClock::new(rate);
            for lease_ms in LEASES_MS {
                let lease_ns = u128::from(lease_ms) * MS;
                let bound = T_LEAVE_NS + lease_ns;
                let overrun_ns =
                    lease_ns as f64 * (1.0 / ((1.0 + CLOCK_DRIFT_RHO) * clock.rate()) - 1.0);
                assert!(overrun_ns > 0.0);
                for sent in send_times(lease_ns) {
                    let lasted = (lease_ends(&clock, lease_ms, sent) - sent) as f64;
                    assert!(
                        (lasted - (lease_ns as f64 + overrun_ns)).abs() < 1_000.0,
                        "rate {:.4}, lease {lease_ms} ms: lasted {lasted} ns, predicted {} ns",
                        clock.rate(),
                        lease_ns as f64 + overrun_ns
                    );
                }
                let end = lease_ends(&clock, lease_ms, T_LEAVE_NS);
                assert!(end > bound + 1, "rate {:.4}: no overrun", clock.rate());
                let past = (end - 1 - bound) as f64;
                assert!(
                    (past - overrun_ns).abs() < 1_000.0,
                    "rate {:.4}, lease {lease_ms} ms: {past} ns past the bound, predicted {overrun_ns} ns",
                    clock.rate()
                );
            }
        }
    }
}
