//! Ring placement: node positions and object ids share one 256-bit ring; the
//! group of an object is the first 3f+1 distinct members clockwise from its id.

use crate::identity::NodeId;
use crate::object::ObjectId;

/// The members that own ranges in one epoch, sorted by ring position.
#[derive(Clone, Debug, Default)]
pub struct Ring {
    /// (position, node), sorted by position; positions are distinct.
    points: Vec<([u8; 32], NodeId)>,
}

impl Ring {
    /// Builds the ring from (position, node) pairs. Equal positions (a SHA-256
    /// collision) are ordered by NodeId, so every replica builds the same ring.
    pub fn new(mut points: Vec<([u8; 32], NodeId)>) -> Ring {
        points.sort();
        points.dedup_by(|a, b| a.1 == b.1);
        Ring { points }
    }

    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// The first `n` members clockwise from `id` (fewer if the ring is smaller):
    /// the member at or after `id`, then its successors, wrapping around.
    pub fn group(&self, id: &ObjectId, n: usize) -> Vec<NodeId> {
        let len = self.points.len();
        let start = self.points.partition_point(|(p, _)| p < &id.0);
        (0..n.min(len))
            .map(|k| self.points[(start + k) % len].1)
            .collect()
    }

    /// Whether `node` is in the group of `id`.
    pub fn in_group(&self, id: &ObjectId, n: usize, node: &NodeId) -> bool {
        self.group(id, n).contains(node)
    }

    /// Members in ring order.
    pub fn members(&self) -> impl Iterator<Item = &([u8; 32], NodeId)> {
        self.points.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(n: u8) -> Ring {
        Ring::new((0..n).map(|i| ([i * 10; 32], NodeId([i; 32]))).collect())
    }

    #[test]
    fn group_is_successors_clockwise_with_wrap() {
        let r = ring(8);
        let g = r.group(&ObjectId([15; 32]), 4);
        assert_eq!(
            g,
            vec![
                NodeId([2; 32]),
                NodeId([3; 32]),
                NodeId([4; 32]),
                NodeId([5; 32])
            ]
        );
        let g = r.group(&ObjectId([65; 32]), 4);
        assert_eq!(
            g,
            vec![
                NodeId([7; 32]),
                NodeId([0; 32]),
                NodeId([1; 32]),
                NodeId([2; 32])
            ]
        );
        // An id exactly at a position belongs to that member first.
        assert_eq!(r.group(&ObjectId([30; 32]), 1), vec![NodeId([3; 32])]);
    }

    #[test]
    fn small_ring_gives_whole_ring_once() {
        let r = ring(2);
        assert_eq!(r.group(&ObjectId([0; 32]), 4).len(), 2);
        assert!(Ring::default().group(&ObjectId([0; 32]), 4).is_empty());
    }
}
