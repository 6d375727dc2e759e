//! The Merkle tree of a freshness batch (PROTOCOL.md, "Freshness"), shared by the MS,
//! which builds it, and the clients and nodes, which check a nonce's path in it. Leaves
//! and inner nodes are domain-separated; an odd last node is carried up unchanged; the
//! root commits to the leaf count.

use crate::codec::{Writer, sha256};

pub fn leaf_hash(nonce: &[u8; 32]) -> [u8; 32] {
    sha256(&[&Writer::tagged("freshness-leaf").finish(), nonce])
}

pub fn node_hash(l: &[u8; 32], r: &[u8; 32]) -> [u8; 32] {
    sha256(&[&Writer::tagged("freshness-node").finish(), l, r])
}

pub fn root_hash(leaf_count: u32, top: &[u8; 32]) -> [u8; 32] {
    let mut w = Writer::tagged("freshness-root");
    w.u32(leaf_count).fixed(top);
    sha256(&[&w.finish()])
}

/// The root that `path` (siblings from the leaf upwards, none for a level where the node
/// is the odd last one) leads to from `nonce` at `index` of `leaf_count` leaves; None if
/// the path is too short or too long for that position. The caller checks
/// `index < leaf_count` and bounds `leaf_count` and the path first.
pub fn root_from_path(
    nonce: &[u8; 32],
    index: u32,
    leaf_count: u32,
    path: &[[u8; 32]],
) -> Option<[u8; 32]> {
    let mut h = leaf_hash(nonce);
    let (mut i, mut n) = (index, leaf_count);
    let mut siblings = path.iter();
    // At most 32 rounds: n halves (rounding up) each time.
    while n > 1 {
        let sibling = i ^ 1;
        if sibling < n {
            let s = siblings.next()?;
            h = if i % 2 == 0 {
                node_hash(&h, s)
            } else {
                node_hash(s, &h)
            };
        }
        i /= 2;
        n = n.div_ceil(2);
    }
    if siblings.next().is_some() {
        return None;
    }
    Some(root_hash(leaf_count, &h))
}
