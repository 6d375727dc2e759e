//! Which ranges of the ring a node must take over when the epoch changes (PROTOCOL.md,
//! "State transfer"). Pure: ring arithmetic over two configurations, no I/O.
//!
//! An object's group is the first 3f+1 ring members at or after its id, so between two
//! consecutive positions of *either* ring the group of every id is the same in both
//! configurations. Those elementary ranges `(a, b]` (a range with `a >= b` wraps past
//! the top of the ring; `a == b` is the whole ring) are the unit of planning: a node
//! gains `(a, b]` when it is in `b`'s group in the new configuration but not in the old.

use std::collections::{BTreeMap, BTreeSet};

use dbqs_common::codec::{DecodeError, Reader, Writer};
use dbqs_common::{ActiveConfig, Epoch, NodeId, ObjectId};

/// Most ranges a plan may hold (two rings of at most `MAX_MEMBERS` positions each).
pub const MAX_RANGES: usize = 2 * dbqs_common::config::MAX_MEMBERS;

/// A range `(start, end]` of the ring; wraps when `start >= end`, is the whole ring when
/// `start == end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Range {
    pub start: [u8; 32],
    pub end: [u8; 32],
}

impl Range {
    pub fn contains(&self, id: &[u8; 32]) -> bool {
        if self.start < self.end {
            self.start < *id && *id <= self.end
        } else {
            *id > self.start || *id <= self.end
        }
    }

    /// Whether the two ranges share an id.
    pub fn overlaps(&self, other: &Range) -> bool {
        // Each range is a union of at most two plain intervals (lo, hi]; compare those.
        let parts = |r: &Range| -> Vec<([u8; 32], [u8; 32], bool)> {
            // (lo, hi, lo_inclusive)
            if r.start < r.end {
                vec![(r.start, r.end, false)]
            } else {
                vec![([0; 32], r.end, true), (r.start, [0xff; 32], false)]
            }
        };
        for (alo, ahi, ainc) in parts(self) {
            for (blo, bhi, binc) in parts(other) {
                // Lowest id in each: lo+1 unless inclusive.
                let a_first_le_bhi = if ainc { alo <= bhi } else { alo < bhi };
                let b_first_le_ahi = if binc { blo <= ahi } else { blo < ahi };
                if a_first_le_bhi && b_first_le_ahi {
                    return true;
                }
            }
        }
        false
    }
}

/// The range holding `id` alone: `(id - 1, id]` (for id 0, `(max, 0]`, which wraps).
pub fn just(id: &ObjectId) -> Range {
    let mut start = id.0;
    // 256-bit big-endian decrement (0 wraps to all ones).
    for b in start.iter_mut().rev() {
        let (v, borrow) = b.overflowing_sub(1);
        *b = v;
        if !borrow {
            break;
        }
    }
    Range { start, end: id.0 }
}

/// Where a pending range comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Source {
    /// The epoch whose group the node lists the range from: it gained the range in
    /// `from + 1` and lacks what was acknowledged up to `from`. Until that take-over is
    /// done it lists the range as a source for no later epoch.
    pub from: Epoch,
    /// Set when the node lost the range before it finished taking it over and regained
    /// it in `then + 1`: it must also take it from `then`'s group (what was acknowledged
    /// while it was away). Taking it from `from` first (older groups only: no cycle of
    /// nodes waiting for each other) makes it a valid source again for the epochs it
    /// was a member before; taking it from `then` finishes it. (The seeded churn
    /// simulation found both the stale copy of keeping only `from` and the waiting
    /// cycles of keeping only `then`.)
    pub then: Option<Epoch>,
}

impl Source {
    /// A range gained in `epoch + 1`, from `epoch`'s group.
    pub fn of(epoch: Epoch) -> Source {
        Source {
            from: epoch,
            then: None,
        }
    }

    /// The epoch whose group holds everything acknowledged before the node serves the
    /// range again: what an on-demand take-over of one object must list.
    pub fn newest(&self) -> Epoch {
        self.then.unwrap_or(self.from)
    }
}

/// The ranges a node still has to take over, each with where it takes it from. A range
/// keeps its source until it is taken over, even when later epochs pass (PROTOCOL.md:
/// "its members fetch what they lack from their own predecessors first; nobody skips an
/// epoch"), and even when the node no longer serves it: others may need the node as a
/// source for it. Pending ranges never overlap.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    pub ranges: BTreeMap<Range, Source>,
    /// Ranges the node deleted after their newest group held them: it must never list
    /// them as a source again (it no longer holds their objects) until it takes them
    /// over anew.
    pub deleted: BTreeSet<Range>,
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The pending range holding `id`, if any.
    pub fn holding(&self, id: &ObjectId) -> Option<(&Range, &Source)> {
        self.ranges.iter().find(|(r, _)| r.contains(&id.0))
    }

    pub fn overlaps(&self, r: &Range) -> bool {
        self.ranges.keys().any(|p| p.overlaps(r))
    }

    /// Whether the node held everything of `r` that epoch `source` acknowledged, so it
    /// may list `r` as a member of `source`'s group: nothing overlapping `r` is still
    /// to be taken from an epoch before `source`, and it has not deleted `r`. (A write
    /// acknowledged while the node was a member but refused it reached a quorum of the
    /// others, so any q listings still include a correct holder of it.)
    pub fn complete_as_of(&self, r: &Range, source: Epoch) -> bool {
        !self
            .ranges
            .iter()
            .any(|(p, s)| s.from < source && p.overlaps(r))
            && !self.deleted.iter().any(|d| d.overlaps(r))
    }

    /// `r` was taken over from `epoch`'s group. If that was its last stage (`newest`),
    /// it is no longer pending and the node holds its objects again (what it had
    /// recorded as deleted of it is forgotten); if it was the first stage of a regained
    /// range, it is next taken from `then`. Anything else means the range changed while
    /// the take-over ran (split, regained again, dropped and regained): nothing happens,
    /// and the next pass takes it over as it now stands.
    pub fn complete(&mut self, r: &Range, epoch: Epoch) {
        let Some(s) = self.ranges.get(r).copied() else {
            return;
        };
        if s.newest() == epoch {
            self.ranges.remove(r);
            self.forget_deleted(r);
        } else if let (true, Some(t)) = (s.from == epoch, s.then) {
            self.ranges.insert(*r, Source::of(t));
        }
    }

    /// Removes `r` from the deleted records, cutting records it covers only in part.
    fn forget_deleted(&mut self, r: &Range) {
        let ends: BTreeSet<[u8; 32]> = [r.start, r.end].into_iter().collect();
        let old = std::mem::take(&mut self.deleted);
        for d in old {
            if !d.overlaps(r) {
                self.deleted.insert(d);
                continue;
            }
            for piece in cut(&d, &ends) {
                if !covers(r, &piece) {
                    self.deleted.insert(piece);
                }
            }
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::tagged("transfer-pending-v2");
        w.u32(self.ranges.len() as u32);
        for (r, s) in &self.ranges {
            w.fixed(&r.start)
                .fixed(&r.end)
                .u64(s.from)
                .u64(s.then.unwrap_or(0));
        }
        w.u32(self.deleted.len() as u32);
        for r in &self.deleted {
            w.fixed(&r.start).fixed(&r.end);
        }
        w.finish()
    }

    /// Decodes a record of this version, or of the first one (`transfer-pending`: one
    /// source epoch per range), which every node that adopted an epoch wrote.
    pub fn decode(buf: &[u8]) -> Result<Pending, DecodeError> {
        let mut r = Reader::new(buf);
        if r.expect_tag("transfer-pending-v2").is_err() {
            return Self::decode_v1(buf);
        }
        let n = r.count("ranges", MAX_RANGES, 80)?;
        let mut ranges = BTreeMap::new();
        for _ in 0..n {
            let range = Range {
                start: r.array("range start")?,
                end: r.array("range end")?,
            };
            let from = r.u64("source epoch")?;
            let then = r.u64("regained from epoch")?;
            let source = Source {
                from,
                then: (then != 0).then_some(then),
            };
            ranges.insert(range, source);
        }
        let n = r.count("deleted ranges", MAX_RANGES, 64)?;
        let mut deleted = BTreeSet::new();
        for _ in 0..n {
            deleted.insert(Range {
                start: r.array("range start")?,
                end: r.array("range end")?,
            });
        }
        r.finish()?;
        Ok(Pending { ranges, deleted })
    }

    fn decode_v1(buf: &[u8]) -> Result<Pending, DecodeError> {
        let mut r = Reader::new(buf);
        r.expect_tag("transfer-pending")?;
        let n = r.count("ranges", MAX_RANGES, 72)?;
        let mut ranges = BTreeMap::new();
        for _ in 0..n {
            let range = Range {
                start: r.array("range start")?,
                end: r.array("range end")?,
            };
            ranges.insert(range, Source::of(r.u64("source epoch")?));
        }
        let n = r.count("deleted ranges", MAX_RANGES, 64)?;
        let mut deleted = BTreeSet::new();
        for _ in 0..n {
            deleted.insert(Range {
                start: r.array("range start")?,
                end: r.array("range end")?,
            });
        }
        r.finish()?;
        Ok(Pending { ranges, deleted })
    }
}

/// Whether `outer` contains every id of `inner`.
fn covers(outer: &Range, inner: &Range) -> bool {
    if outer.start == outer.end {
        return true;
    }
    if inner.start == inner.end {
        return false;
    }
    // Both ends of `inner` inside `outer`, and `inner` does not wrap around `outer`'s gap.
    let end_in = outer.contains(&inner.end);
    let start_in = inner.start == outer.start || outer.contains(&inner.start);
    let gap = Range {
        start: outer.end,
        end: outer.start,
    };
    end_in && start_in && !inner.overlaps(&gap)
}

/// The elementary ranges of two configurations: between consecutive positions of the
/// union of both rings. Empty if neither ring has a member.
pub fn elementary_ranges(a: &ActiveConfig, b: &ActiveConfig) -> Vec<Range> {
    let points: BTreeSet<[u8; 32]> = a
        .ring()
        .members()
        .chain(b.ring().members())
        .map(|(p, _)| *p)
        .collect();
    let points: Vec<[u8; 32]> = points.into_iter().collect();
    let n = points.len();
    (0..n)
        .map(|i| Range {
            start: points[(i + n - 1) % n],
            end: points[i],
        })
        .collect()
}

fn in_group(cfg: &ActiveConfig, r: &Range, node: &NodeId) -> bool {
    cfg.in_group(&ObjectId(r.end), node)
}

/// `r` cut at every point of `points` strictly inside it, in the range's order.
fn cut(r: &Range, points: &BTreeSet<[u8; 32]>) -> Vec<Range> {
    let whole = r.start == r.end;
    let inside: Vec<[u8; 32]> = points
        .iter()
        .filter(|p| (whole || r.contains(p)) && **p != r.end)
        .copied()
        .collect();
    // In the range's order: the ids above `start` first, then (if it wraps) the rest.
    let (mut above, below): (Vec<_>, Vec<_>) = inside.into_iter().partition(|p| *p > r.start);
    above.extend(below);
    let mut out = Vec::with_capacity(above.len() + 1);
    let mut start = r.start;
    for p in above {
        out.push(Range { start, end: p });
        start = p;
    }
    out.push(Range { start, end: r.end });
    out
}

/// What `me` must take over after moving from `old` to `new` (consecutive epochs), given
/// what was still pending (`carried`):
/// - every range it serves in `new` but did not serve in `old`, from `old`'s groups;
/// - every carried range, with its own source, cut at the points of both rings so each
///   piece lies in one group of each; a carried piece the node regains in `new` (it had
///   lost it before finishing it) must also be taken from `old`'s group, which holds
///   what was acknowledged while the node was away (`Source::then`).
pub fn next_pending(
    old: &ActiveConfig,
    new: &ActiveConfig,
    me: &NodeId,
    carried: &Pending,
) -> Pending {
    let points: BTreeSet<[u8; 32]> = old
        .ring()
        .members()
        .chain(new.ring().members())
        .map(|(p, _)| *p)
        .collect();
    let gained = |r: &Range| in_group(new, r, me) && !in_group(old, r, me);
    let mut next = Pending {
        ranges: BTreeMap::new(),
        deleted: carried.deleted.clone(),
    };
    let mut cuts = points.clone();
    for (p, src) in &carried.ranges {
        cuts.insert(p.start);
        cuts.insert(p.end);
        for piece in cut(p, &points) {
            let src = if gained(&piece) {
                Source {
                    from: src.from,
                    then: Some(old.epoch()),
                }
            } else {
                *src
            };
            next.ranges.insert(piece, src);
        }
    }
    for e in elementary_ranges(old, new) {
        if !gained(&e) {
            continue;
        }
        // The parts of `e` no carried range covers.
        for piece in cut(&e, &cuts) {
            if !carried.ranges.keys().any(|p| covers(p, &piece)) {
                next.ranges.insert(piece, Source::of(old.epoch()));
            }
        }
    }
    next
}

/// What a node whose store was lost or found damaged (`ObjectStore::open_checked`) must
/// take over before it answers again: every range it serves in `cfg`, from `cfg`'s own
/// groups (the other members of each; `take_over` never asks the node itself). Until a
/// range is taken over the node answers nothing about its objects (it fetches them on
/// demand), reports it incomplete to `RangeStatus` (so no old replica deletes it), and
/// lists nothing as a source for any epoch: the whole ring is recorded as deleted, and
/// each range taken over is forgotten from that record. The groups list `cfg`'s ranges
/// once they moved past `cfg`'s epoch, so the rebuild completes after the next epoch end
/// (the node takes part in the next epoch's writes meanwhile, as after any epoch change).
pub fn rebuild_pending(cfg: &ActiveConfig, me: &NodeId) -> Pending {
    let ranges = elementary_ranges(cfg, cfg)
        .into_iter()
        .filter(|r| in_group(cfg, r, me))
        .map(|r| (r, Source::of(cfg.epoch())))
        .collect();
    Pending {
        ranges,
        deleted: BTreeSet::from([Range {
            start: [0; 32],
            end: [0; 32],
        }]),
    }
}

/// What a node must take over when its process first starts in the last of `chain`
/// although an earlier configuration already placed it on the ring (PROTOCOL.md, "State
/// transfer" 7): it was admitted and placed while it was not running, so it holds
/// nothing of what it serves. `chain` runs from the configuration that admitted it (where
/// it has no ring position) to the one it starts in, one epoch at a time. The plan is
/// the one a node that adopted each of those epochs and never finished a take-over would
/// hold: every range it gained since its admission, each keeping the source epoch it
/// was gained from (regained ones also their later source, [`Source::then`]), so it
/// takes everything it serves over and lists nothing as a source before that. Planning
/// only the last epoch's gains, as the join path first did, left it serving an empty
/// store as if it held what it was placed in; taking everything from the previous
/// epoch's groups, as a second version did, never finished where the node was the
/// whole group there (f = 0).
pub fn late_start_pending(chain: &[ActiveConfig], me: &NodeId) -> Pending {
    let mut pending = Pending::default();
    for w in chain.windows(2) {
        pending = next_pending(&w[0], &w[1], me, &pending);
    }
    pending
}

/// For the side that serves a listing: whether `me` was a member of the group of the
/// range `r` in `source` (it may only answer as a source for ranges it served).
pub fn served(source: &ActiveConfig, r: &Range, me: &NodeId) -> bool {
    in_group(source, r, me)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(a: u8, b: u8) -> Range {
        let mut s = [0u8; 32];
        let mut e = [0u8; 32];
        s[0] = a;
        e[0] = b;
        Range { start: s, end: e }
    }

    fn id(x: u8) -> [u8; 32] {
        let mut i = [0u8; 32];
        i[0] = x;
        i
    }

    #[test]
    fn ranges_contain_their_end_not_their_start_and_wrap() {
        assert!(r(10, 20).contains(&id(20)));
        assert!(!r(10, 20).contains(&id(10)));
        assert!(r(200, 10).contains(&id(250)));
        assert!(r(200, 10).contains(&id(5)));
        assert!(!r(200, 10).contains(&id(100)));
        assert!(r(7, 7).contains(&id(1)), "start == end is the whole ring");
    }

    #[test]
    fn overlap_agrees_with_membership_on_every_byte() {
        let cases = [
            (10, 20),
            (20, 30),
            (15, 25),
            (200, 10),
            (5, 12),
            (250, 3),
            (7, 7),
        ];
        for &(a, b) in &cases {
            for &(c, d) in &cases {
                let (x, y) = (r(a, b), r(c, d));
                let brute = (0..=255u8).any(|v| x.contains(&id(v)) && y.contains(&id(v)))
                    // ids between byte values (e.g. [20, 1, 0…]) count too
                    || (0..=255u8).any(|v| {
                        let mut i = id(v);
                        i[1] = 1;
                        x.contains(&i) && y.contains(&i)
                    });
                assert_eq!(x.overlaps(&y), brute, "{a}..{b} vs {c}..{d}");
            }
        }
    }

    #[test]
    fn a_single_id_range_holds_that_id_only() {
        let mut ids: Vec<[u8; 32]> = vec![[0; 32], [0xff; 32], id(1), id(200)];
        let mut carry = [0u8; 32];
        carry[30] = 1; // 0x...0100: decrementing borrows across a byte
        ids.push(carry);
        for x in &ids {
            let r = just(&ObjectId(*x));
            assert!(r.contains(x), "{r:?} must hold its id");
            assert_ne!(r.start, r.end, "never the whole ring");
            for y in &ids {
                assert_eq!(r.contains(y), y == x, "{r:?} and {y:?}");
            }
        }
        let r = just(&ObjectId(carry));
        let mut below = carry;
        below[30] = 0;
        below[31] = 0xff;
        assert_eq!(r.start, below);
        assert!(!r.contains(&below));
    }

    #[test]
    fn a_stale_completion_changes_nothing_and_a_final_one_forgets_deleted_parts() {
        let mut p = Pending::default();
        p.ranges.insert(
            r(10, 20),
            Source {
                from: 1,
                then: Some(5),
            },
        );
        // A take-over that started when the range was to come from epoch 3.
        p.complete(&r(10, 20), 3);
        assert_eq!(p.ranges[&r(10, 20)].newest(), 5);
        // The first stage, then the last.
        p.complete(&r(10, 20), 1);
        assert_eq!(p.ranges[&r(10, 20)], Source::of(5));
        p.complete(&r(10, 20), 1);
        assert_eq!(p.ranges[&r(10, 20)], Source::of(5));
        // Deleted (5, 30] is forgotten where (10, 20] was taken over, kept elsewhere.
        p.deleted.insert(r(5, 30));
        p.complete(&r(10, 20), 5);
        assert!(p.is_empty());
        assert_eq!(
            p.deleted.iter().copied().collect::<Vec<_>>(),
            vec![r(5, 10), r(20, 30)]
        );
        assert!(p.complete_as_of(&r(12, 15), 9));
        assert!(!p.complete_as_of(&r(25, 26), 9));
    }

    #[test]
    fn a_first_version_record_still_decodes() {
        let mut w = Writer::tagged("transfer-pending");
        w.u32(1).fixed(&r(1, 2).start).fixed(&r(1, 2).end).u64(7);
        w.u32(1).fixed(&r(9, 10).start).fixed(&r(9, 10).end);
        let p = Pending::decode(&w.finish()).unwrap();
        assert_eq!(p.ranges[&r(1, 2)], Source::of(7));
        assert!(p.deleted.contains(&r(9, 10)));
    }

    #[test]
    fn pending_round_trips_and_refuses_garbage() {
        let p = Pending {
            ranges: [
                (r(1, 2), Source::of(7)),
                (
                    r(200, 3),
                    Source {
                        from: 4,
                        then: Some(6),
                    },
                ),
            ]
            .into_iter()
            .collect(),
            deleted: [r(9, 10)].into_iter().collect(),
        };
        assert_eq!(Pending::decode(&p.encode()).unwrap(), p);
        let mut bad = p.encode();
        bad.push(0);
        assert!(Pending::decode(&bad).is_err());
        assert!(Pending::decode(&[1, 2, 3]).is_err());
    }

    /// A configuration derived from `base` (epoch + 1, `edit` applied), signed with the
    /// genesis MS shares, so plans can be checked on real rings.
    /// A genesis of 9 nodes (addresses 127.0.0.1:9100…) with default parameters, and its
    /// verified configuration.
    fn nine_node_genesis() -> (dbqs_common::genesis::Genesis, ActiveConfig) {
        let specs: Vec<_> = (0..9)
            .map(|i| dbqs_common::genesis::NodeSpec {
                address: format!("127.0.0.1:{}", 9100 + i),
                ips: vec![],
            })
            .collect();
        let g =
            dbqs_common::genesis::create(&specs, dbqs_common::config::Params::default()).unwrap();
        let c1 = ActiveConfig::verify(g.cert.clone(), &g.ms_public_key).unwrap();
        (g, c1)
    }

    fn derive(
        g: &dbqs_common::genesis::Genesis,
        base: &ActiveConfig,
        edit: impl FnOnce(&mut dbqs_common::config::Configuration),
    ) -> ActiveConfig {
        use dbqs_common::config::Configuration;
        let mut c = (*base.config).clone();
        c.epoch += 1;
        edit(&mut c);
        c.normalize();
        let bytes = c.encode();
        let msg = Configuration::signing_bytes(c.epoch, &dbqs_common::codec::sha256(&[&bytes]));
        let pks = blsttc::PublicKeySet::from_bytes(c.ms_key_set.clone()).unwrap();
        let shares: Vec<_> = g
            .nodes
            .iter()
            .filter_map(|n| n.ms_share.as_ref())
            .map(|(i, s)| (*i, s.sign(&msg)))
            .collect();
        let sig = dbqs_common::threshold::combine(&pks, &msg, &shares).unwrap();
        let cert = dbqs_common::ConfigCert {
            epoch: c.epoch,
            configuration: bytes,
            signature: sig.to_bytes().to_vec(),
        };
        ActiveConfig::verify(cert, &g.ms_public_key).unwrap()
    }

    #[test]
    fn plans_cover_exactly_the_gained_ids_and_carry_unfinished_ranges() {
        use rand::RngCore as _;
        let (g, c1) = nine_node_genesis();
        let ring: Vec<NodeId> = c1.ring().members().map(|(_, n)| *n).collect();
        // Epoch 2 drops one member, epoch 3 another (not MS members): ranges move twice.
        let leaving: Vec<NodeId> = ring
            .iter()
            .filter(|n| !c1.config.ms_members.contains(n))
            .copied()
            .take(2)
            .collect();
        let c2 = derive(&g, &c1, |c| c.members.retain(|m| m.node_id() != leaving[0]));
        let c3 = derive(&g, &c2, |c| c.members.retain(|m| m.node_id() != leaving[1]));
        let mut rng = rand::thread_rng();
        let ids: Vec<[u8; 32]> = (0..2_000)
            .map(|_| {
                let mut b = [0u8; 32];
                rng.fill_bytes(&mut b);
                b
            })
            .chain(c1.ring().members().map(|(p, _)| *p))
            .collect();
        let mut gained_somewhere = 0;
        for me in ring.iter().filter(|n| !leaving.contains(n)) {
            let p2 = next_pending(&c1, &c2, me, &Pending::default());
            for id in &ids {
                let gained = c2.in_group(&ObjectId(*id), me) && !c1.in_group(&ObjectId(*id), me);
                assert_eq!(p2.holding(&ObjectId(*id)).is_some(), gained);
                gained_somewhere += usize::from(gained);
            }
            // Nothing of epoch 2 was taken over: every range stays pending from its own
            // source epoch, new ones come from epoch 2, and the unfinished ranges may not
            // be listed as epoch-2 data (but may as epoch-1 data).
            let p3 = next_pending(&c2, &c3, me, &p2);
            for (r, s) in &p2.ranges {
                assert_eq!(p3.ranges.get(r), Some(s));
                assert_eq!(*s, Source::of(1));
                assert!(!p3.complete_as_of(r, 2));
                assert!(p3.complete_as_of(r, 1));
            }
            for id in &ids {
                let oid = ObjectId(*id);
                let gained = c3.in_group(&oid, me) && !c2.in_group(&oid, me);
                let carried = p2.holding(&oid).is_some();
                let pending = p3.holding(&oid).is_some();
                assert_eq!(pending, gained || carried, "id {}", oid.to_hex());
            }
            let mut done = p3.clone();
            for (r, s) in &p3.ranges {
                done.complete(r, s.from);
            }
            assert!(done.is_empty());
            assert!(p3.ranges.keys().all(|r| done.complete_as_of(r, 3)));
        }
        assert!(gained_somewhere > 0, "the removals moved no range");
    }

    #[test]
    fn a_rebuilding_node_takes_over_all_it_serves_and_lists_nothing_until_then() {
        use rand::RngCore as _;
        let (g, c1) = nine_node_genesis();
        let c2 = derive(&g, &c1, |_| {});
        let me = c2.ring().members().next().unwrap().1;
        let p = rebuild_pending(&c2, &me);
        let decoded = Pending::decode(&p.encode()).unwrap();
        assert_eq!(decoded, p);
        let mut rng = rand::thread_rng();
        for _ in 0..2_000 {
            let mut b = [0u8; 32];
            rng.fill_bytes(&mut b);
            let id = ObjectId(b);
            let held = p.holding(&id);
            assert_eq!(held.is_some(), c2.in_group(&id, &me));
            if let Some((_, s)) = held {
                assert_eq!(*s, Source::of(2), "from the current epoch's group");
            }
        }
        for r in elementary_ranges(&c1, &c2) {
            for e in 1..=3 {
                assert!(
                    !p.complete_as_of(&r, e),
                    "lists nothing before the take-over"
                );
            }
        }
        // Once every range is taken over, the node lists what it serves, and still not
        // what it does not (it holds none of that).
        let mut done = p.clone();
        for (r, s) in &p.ranges {
            done.complete(r, s.from);
        }
        assert!(done.is_empty());
        for r in elementary_ranges(&c2, &c2) {
            assert_eq!(
                done.complete_as_of(&r, 2),
                c2.in_group(&ObjectId(r.end), &me)
            );
        }
    }

    #[test]
    fn a_node_first_started_after_the_epoch_that_placed_it_takes_over_all_it_serves() {
        use rand::RngCore as _;
        let (g, c1) = nine_node_genesis();
        let me = c1
            .ring()
            .members()
            .map(|(_, n)| *n)
            .find(|n| !c1.config.ms_members.contains(n))
            .unwrap();
        let pos = c1.member(&me).unwrap().ring_position;
        // Epoch 2 admits `me` (listed, no position), epoch 3 places it, and in epoch 4,
        // when its process first starts, another member has left.
        let c2 = derive(&g, &c1, |c| {
            for m in c.members.iter_mut().filter(|m| m.node_id() == me) {
                m.ring_position = None;
            }
        });
        let c3 = derive(&g, &c2, |c| {
            for m in c.members.iter_mut().filter(|m| m.node_id() == me) {
                m.ring_position = pos;
            }
        });
        let gone = c3
            .ring()
            .members()
            .map(|(_, n)| *n)
            .find(|n| *n != me && !c3.config.ms_members.contains(n))
            .unwrap();
        let c4 = derive(&g, &c3, |c| c.members.retain(|m| m.node_id() != gone));
        let p = late_start_pending(&[c2.clone(), c3.clone(), c4.clone()], &me);
        assert_eq!(Pending::decode(&p.encode()).unwrap(), p);
        let gains_only = next_pending(&c3, &c4, &me, &Pending::default());
        let mut rng = rand::thread_rng();
        let mut missed_by_gains_only = 0;
        for _ in 0..2_000 {
            let mut b = [0u8; 32];
            rng.fill_bytes(&mut b);
            let id = ObjectId(b);
            let held = p.holding(&id);
            assert_eq!(
                held.is_some(),
                c4.in_group(&id, &me),
                "everything it serves"
            );
            if let Some((r, s)) = held {
                // From the admission epoch where it was placed in epoch 3, from epoch 3
                // where it gained the range only in epoch 4.
                let from = if c3.in_group(&id, &me) { 2 } else { 3 };
                assert_eq!(*s, Source::of(from));
                // It is asked as a source only for epochs it served the range in.
                for c in [&c2, &c3, &c4] {
                    if served(c, r, &me) {
                        assert!(
                            !p.complete_as_of(r, c.epoch()),
                            "lists nothing before the take-over"
                        );
                    }
                }
            }
            if held.is_some() && gains_only.holding(&id).is_none() {
                missed_by_gains_only += 1;
            }
        }
        assert!(
            missed_by_gains_only > 0,
            "planning only the gains leaves served ids the node never took over"
        );
    }

    #[test]
    fn a_range_lost_before_it_was_taken_over_and_regained_comes_from_the_epoch_before() {
        use rand::RngCore as _;
        let specs: Vec<_> = (0..9)
            .map(|i| dbqs_common::genesis::NodeSpec {
                address: format!("127.0.0.1:{}", 9200 + i),
                ips: vec![],
            })
            .collect();
        let g =
            dbqs_common::genesis::create(&specs, dbqs_common::config::Params::default()).unwrap();
        let c1 = ActiveConfig::verify(g.cert.clone(), &g.ms_public_key).unwrap();
        let leaving = c1
            .ring()
            .members()
            .map(|(_, n)| *n)
            .find(|n| !c1.config.ms_members.contains(n))
            .unwrap();
        let back = c1.member(&leaving).unwrap().clone();
        // Epoch 2 drops a member, epoch 3 brings it back at the same position, epoch 4
        // drops it again: its successors gain, lose and regain the same ranges.
        let c2 = derive(&g, &c1, |c| c.members.retain(|m| m.node_id() != leaving));
        let c3 = derive(&g, &c2, |c| c.members.push(back.clone()));
        let c4 = derive(&g, &c3, |c| c.members.retain(|m| m.node_id() != leaving));
        let mut rng = rand::thread_rng();
        let ids: Vec<ObjectId> = (0..2_000)
            .map(|_| {
                let mut b = [0u8; 32];
                rng.fill_bytes(&mut b);
                ObjectId(b)
            })
            .collect();
        let mut regained = 0;
        for me in c4.ring().members().map(|(_, n)| *n) {
            let p2 = next_pending(&c1, &c2, &me, &Pending::default());
            let p3 = next_pending(&c2, &c3, &me, &p2);
            let p4 = next_pending(&c3, &c4, &me, &p3);
            for (a, b) in p4.ranges.keys().zip(p4.ranges.keys().skip(1)) {
                assert!(!a.overlaps(b), "pending ranges overlap: {a:?} {b:?}");
            }
            for id in &ids {
                let carried = p2.holding(id).is_some();
                let gained4 = c4.in_group(id, &me) && !c3.in_group(id, &me);
                let held = p4.holding(id).map(|(r, s)| (*r, *s));
                match (carried, gained4) {
                    (true, true) => {
                        regained += 1;
                        let (r, s) = held.expect("a regained id is pending");
                        let want = Source {
                            from: 1,
                            then: Some(3),
                        };
                        assert_eq!(s, want, "{}", id.to_hex());
                        assert_eq!(s.newest(), 3);
                        assert!(!p4.complete_as_of(&r, 2));
                        assert!(p4.complete_as_of(&r, 1));
                        // Taken from epoch 1: a source again for epoch 2, still to be
                        // taken from epoch 3.
                        let mut q = p4.clone();
                        q.complete(&r, 1);
                        assert_eq!(q.ranges.get(&r), Some(&Source::of(3)));
                        assert!(q.complete_as_of(&r, 2));
                        assert!(!q.complete_as_of(&r, 4));
                        q.complete(&r, 3);
                        assert!(!q.ranges.contains_key(&r));
                        // Taken from epoch 3 directly: done at once.
                        let mut q = p4.clone();
                        q.complete(&r, 3);
                        assert!(!q.ranges.contains_key(&r));
                    }
                    (true, false) => assert_eq!(held.map(|(_, s)| s), Some(Source::of(1))),
                    (false, true) => assert_eq!(held.map(|(_, s)| s), Some(Source::of(3))),
                    (false, false) => assert!(held.is_none()),
                }
            }
        }
        assert!(regained > 0, "no range was lost and regained");
    }
}
