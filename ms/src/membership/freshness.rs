//! Freshness (PROTOCOL.md, "Membership service", Freshness(nonces)): a batch of nonces is
//! ordered through PBFT; after it executes at epoch e each replica vouches for
//! (Merkle root of the batch, e). Two forms come out of that:
//!
//! - transferable: f_ms+1 signature shares over `signing_bytes(root, e)` combine into one
//!   BLS signature; with the nonce's Merkle path it is a [`FreshnessProof`] anyone holding
//!   the MS public key can check (storage nodes show it to others);
//! - requester-only: f_ms+1 matching [`FreshnessAnswer`]s from distinct MS replicas
//!   ([`verify_matching_answers`]); enough for a client convincing only itself.
//!
//! Tree shape: leaves `H("freshness-leaf" ‖ nonce)`, inner nodes `H("freshness-node" ‖ l ‖ r)`,
//! an odd last node is carried up unchanged (never duplicated, so no two batches share a
//! root by repeating a leaf), and the root binds the leaf count:
//! `H("freshness-root" ‖ u32 count ‖ top)`. Domain tags keep leaves, nodes and roots apart.

use std::collections::{BTreeMap, BTreeSet};

use dbqs_common::Epoch;
use dbqs_common::codec::{DecodeError, Reader, Writer};
use dbqs_common::identity::NodeId;
use dbqs_common::merkle::{self, leaf_hash, node_hash, root_hash};
use dbqs_common::threshold::{MsPublicKey, ThresholdError};
use thiserror::Error;

/// Most nonces in one ordered freshness batch.
pub const MAX_FRESHNESS_NONCES: usize = 4096;
/// Longest Merkle path: ⌈log2(MAX_FRESHNESS_NONCES)⌉.
pub const MAX_PATH_LEN: usize = 12;
/// Most answers the requester-only verifier looks at (3 · 100 + 1 MS replicas is far more
/// than any configuration allows; see `dbqs_common::config::MAX_MS_MEMBERS`).
pub const MAX_ANSWERS: usize = 301;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FreshnessError {
    #[error("nonce index {index} is outside a batch of {leaf_count}")]
    BadIndex { index: u32, leaf_count: u32 },
    #[error("the Merkle path does not lead from the nonce to the root")]
    BadPath,
    #[error("MS signature: {0}")]
    Signature(#[from] ThresholdError),
    #[error("only {have} matching answers from distinct MS replicas, need {need}")]
    NotEnoughAnswers { need: usize, have: usize },
    #[error("malformed freshness proof: {0}")]
    Decode(#[from] DecodeError),
}

/// The levels of the tree, leaves first. `nonces` is non-empty and bounded by the caller.
fn levels(nonces: &[[u8; 32]]) -> Vec<Vec<[u8; 32]>> {
    let mut levels = vec![nonces.iter().map(leaf_hash).collect::<Vec<_>>()];
    while let Some(last) = levels.last()
        && last.len() > 1
    {
        let next = last
            .chunks(2)
            .map(|c| {
                if c.len() == 2 {
                    node_hash(&c[0], &c[1])
                } else {
                    c[0]
                }
            })
            .collect();
        levels.push(next);
    }
    levels
}

/// The Merkle root of a batch (`nonces` must hold 1..=MAX_FRESHNESS_NONCES nonces; the state
/// machine refuses other batches before calling this).
pub fn merkle_root(nonces: &[[u8; 32]]) -> [u8; 32] {
    debug_assert!(!nonces.is_empty() && nonces.len() <= MAX_FRESHNESS_NONCES);
    let levels = levels(nonces);
    let top = levels
        .last()
        .and_then(|l| l.first())
        .copied()
        .unwrap_or([0; 32]);
    root_hash(nonces.len() as u32, &top)
}

/// The sibling hashes from the leaf at `index` up to the top, skipping levels where the
/// node is carried up alone. None if `index` is outside the batch.
pub fn merkle_path(nonces: &[[u8; 32]], index: usize) -> Option<Vec<[u8; 32]>> {
    if index >= nonces.len() || nonces.len() > MAX_FRESHNESS_NONCES {
        return None;
    }
    Some(path_in(&levels(nonces), index))
}

/// Every nonce's path (`merkle_path` for each index), building the tree once: a batch of
/// n nonces costs about 2n hashes, not n² as n calls of `merkle_path` would. None if the
/// batch is empty or too large.
pub fn merkle_paths(nonces: &[[u8; 32]]) -> Option<Vec<Vec<[u8; 32]>>> {
    if nonces.is_empty() || nonces.len() > MAX_FRESHNESS_NONCES {
        return None;
    }
    let levels = levels(nonces);
    Some((0..nonces.len()).map(|i| path_in(&levels, i)).collect())
}

fn path_in(levels: &[Vec<[u8; 32]>], index: usize) -> Vec<[u8; 32]> {
    let mut path = Vec::new();
    let mut i = index;
    for level in levels {
        if level.len() == 1 {
            break;
        }
        let sibling = i ^ 1;
        if sibling < level.len() {
            path.push(level[sibling]);
        }
        i /= 2;
    }
    path
}

/// Checks that `nonce` sits at `index` of a batch of `leaf_count` with root `root`.
pub fn verify_path(
    nonce: &[u8; 32],
    index: u32,
    leaf_count: u32,
    path: &[[u8; 32]],
    root: &[u8; 32],
) -> Result<(), FreshnessError> {
    if index >= leaf_count || leaf_count as usize > MAX_FRESHNESS_NONCES {
        return Err(FreshnessError::BadIndex { index, leaf_count });
    }
    if merkle::root_from_path(nonce, index, leaf_count, path) != Some(*root) {
        return Err(FreshnessError::BadPath);
    }
    Ok(())
}

/// What each MS replica signs with its key share after executing a batch: domain-separated
/// from configuration certificates, so neither can stand for the other.
pub fn signing_bytes(root: &[u8; 32], epoch: Epoch) -> Vec<u8> {
    let mut w = Writer::tagged("freshness");
    w.u64(epoch).fixed(root);
    w.finish()
}

/// Transferable freshness: `nonce` was in a batch the MS executed at `epoch`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FreshnessProof {
    pub nonce: [u8; 32],
    pub epoch: Epoch,
    pub root: [u8; 32],
    pub leaf_count: u32,
    pub index: u32,
    pub path: Vec<[u8; 32]>,
    /// The combined BLS signature over `signing_bytes(root, epoch)`.
    pub signature: [u8; 96],
}

impl FreshnessProof {
    /// Checks the path and the MS signature; returns the epoch it vouches for. The caller
    /// checks that `nonce` is the one it sent (PROTOCOL.md, "Leases": the lease runs from
    /// when that nonce was sent).
    pub fn verify(&self, ms_key: &MsPublicKey) -> Result<Epoch, FreshnessError> {
        verify_path(
            &self.nonce,
            self.index,
            self.leaf_count,
            &self.path,
            &self.root,
        )?;
        ms_key.verify(&signing_bytes(&self.root, self.epoch), &self.signature)?;
        Ok(self.epoch)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::tagged("freshness-proof");
        w.fixed(&self.nonce)
            .u64(self.epoch)
            .fixed(&self.root)
            .u32(self.leaf_count)
            .u32(self.index)
            .u32(self.path.len() as u32);
        for s in &self.path {
            w.fixed(s);
        }
        w.fixed(&self.signature);
        w.finish()
    }

    pub fn decode(buf: &[u8]) -> Result<FreshnessProof, FreshnessError> {
        let mut r = Reader::new(buf);
        r.expect_tag("freshness-proof")?;
        let nonce = r.array("nonce")?;
        let epoch = r.u64("epoch")?;
        let root = r.array("root")?;
        let leaf_count = r.u32("leaf_count")?;
        let index = r.u32("index")?;
        let n = r.count("path", MAX_PATH_LEN, 32)?;
        let mut path = Vec::with_capacity(n);
        for _ in 0..n {
            path.push(r.array("path node")?);
        }
        let signature = r.array("signature")?;
        r.finish()?;
        Ok(FreshnessProof {
            nonce,
            epoch,
            root,
            leaf_count,
            index,
            path,
            signature,
        })
    }
}

/// One MS replica's answer to a freshness request, as the requester receives it over the
/// authenticated channel (the PBFT reply gives epoch, root and leaf count; the replica that
/// batched the nonce adds its index and path).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FreshnessAnswer {
    pub epoch: Epoch,
    pub root: [u8; 32],
    pub leaf_count: u32,
    pub index: u32,
    pub path: Vec<[u8; 32]>,
}

/// The requester-only form: accepts an epoch once f_ms+1 distinct MS replicas of
/// `ms_members` answered with that epoch and a path that places `nonce` under the root of
/// their answer. `answers` pairs each answer with the NodeId its channel authenticated;
/// answers from non-members, repeats from one replica and answers with bad paths don't count.
///
/// Answers match on the epoch alone: each MS member orders its own batches (a requester
/// sends its nonce to every member), so their roots differ. f_ms+1 answers naming epoch e
/// include a correct replica's, which ordered a batch holding the nonce (so after the
/// nonce existed) and executed it while e was current.
pub fn verify_matching_answers(
    nonce: &[u8; 32],
    ms_members: &[NodeId],
    answers: &[(NodeId, FreshnessAnswer)],
) -> Result<Epoch, FreshnessError> {
    let need = (ms_members.len().saturating_sub(1)) / 3 + 1;
    let mut votes: BTreeMap<Epoch, BTreeSet<NodeId>> = BTreeMap::new();
    for (from, a) in answers.iter().take(MAX_ANSWERS) {
        if !ms_members.contains(from)
            || verify_path(nonce, a.index, a.leaf_count, &a.path, &a.root).is_err()
        {
            continue;
        }
        let voters = votes.entry(a.epoch).or_default();
        voters.insert(*from);
        if voters.len() >= need {
            return Ok(a.epoch);
        }
    }
    Err(FreshnessError::NotEnoughAnswers {
        need,
        have: votes.values().map(BTreeSet::len).max().unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dbqs_common::codec::sha256;

    fn nonces(n: usize) -> Vec<[u8; 32]> {
        (0..n)
            .map(|i| sha256(&[&(i as u64).to_be_bytes()]))
            .collect()
    }

    #[test]
    fn every_nonce_of_every_batch_size_has_a_path_to_the_root() {
        for n in [1, 2, 3, 4, 5, 7, 8, 9, 33, 100] {
            let batch = nonces(n);
            let root = merkle_root(&batch);
            for (i, nonce) in batch.iter().enumerate() {
                let path = merkle_path(&batch, i).unwrap();
                assert!(path.len() <= MAX_PATH_LEN);
                verify_path(nonce, i as u32, n as u32, &path, &root)
                    .unwrap_or_else(|e| panic!("batch {n} index {i}: {e}"));
            }
        }
    }

    #[test]
    fn all_paths_at_once_equal_each_path_alone() {
        for n in [1, 2, 3, 5, 8, 33, 100, MAX_FRESHNESS_NONCES] {
            let batch = nonces(n);
            let all = merkle_paths(&batch).unwrap();
            assert_eq!(all.len(), n);
            for i in [0, n / 2, n - 1] {
                assert_eq!(
                    all[i],
                    merkle_path(&batch, i).unwrap(),
                    "batch {n} index {i}"
                );
            }
        }
        assert!(merkle_paths(&[]).is_none());
        assert!(merkle_paths(&nonces(MAX_FRESHNESS_NONCES + 1)).is_none());
    }

    #[test]
    fn a_path_proves_only_its_own_nonce_position_and_batch() {
        let batch = nonces(5);
        let root = merkle_root(&batch);
        let path = merkle_path(&batch, 2).unwrap();
        assert_eq!(
            verify_path(&batch[3], 2, 5, &path, &root),
            Err(FreshnessError::BadPath)
        );
        assert!(verify_path(&batch[2], 3, 5, &path, &root).is_err());
        assert!(verify_path(&batch[2], 2, 6, &path, &root).is_err());
        assert!(verify_path(&batch[2], 5, 5, &path, &root).is_err());
        let mut longer = path.clone();
        longer.push([0; 32]);
        assert!(verify_path(&batch[2], 2, 5, &longer, &root).is_err());
        assert!(verify_path(&batch[2], 2, 5, &path[..1], &root).is_err());
    }

    #[test]
    fn batches_that_differ_by_a_repeated_last_nonce_have_different_roots() {
        let a = nonces(3);
        let mut b = a.clone();
        b.push(a[2]);
        assert_ne!(merkle_root(&a), merkle_root(&b));
    }

    #[test]
    fn largest_batch_path_fits_the_path_bound() {
        let batch = nonces(MAX_FRESHNESS_NONCES);
        let path = merkle_path(&batch, MAX_FRESHNESS_NONCES - 1).unwrap();
        assert!(path.len() <= MAX_PATH_LEN);
        assert!(merkle_path(&batch, MAX_FRESHNESS_NONCES).is_none());
    }

    proptest::proptest! {
        #[test]
        fn freshness_proof_decoder_never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..700)) {
            let _ = FreshnessProof::decode(&data);
        }
    }
}
