//! Byzantine behaviours for devnet and tests. `dbqs-server run` never sets one:
//! only `devnet --byzantine` and the test harness construct a node with anything
//! but [`Behaviour::Honest`].
//!
//! Each behaviour lies on the client path (`ReadTimestamp`, `Write`, `Read`) and on the
//! state-transfer path (`ListRange`, `FetchObjects`, `RangeStatus`; see
//! docs/transfer.md), through the helpers below that `service.rs` calls.
//!
//! [`Partition`] is the one fault that tests switch on while a node runs: it cuts the node
//! off from chosen members (in practice, the MS) in both directions.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;
use std::sync::RwLock;
use std::time::Duration;

use dbqs_common::codec::sha256;
use dbqs_common::object::StoredObject;
use dbqs_common::{NodeId, ObjectId, OwnedValue};

use crate::transfer::plan::Range;

/// How a node answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Behaviour {
    #[default]
    Honest,
    /// Never answers anything.
    Silent,
    /// Acknowledges writes without storing them; serves values whose bytes were
    /// altered and timestamps raised without a valid signature. As a transfer
    /// source it lists every version it saw raised (a higher timestamp, the hash of
    /// an altered value) and serves those altered bodies: forged versions that
    /// would win if they were believed.
    WrongValue,
    /// Serves the oldest validly signed version it saw (a replay of an older
    /// value, stale timestamps). As a transfer source it lists and serves that
    /// oldest version (a rollback).
    Stale,
    /// Serves values and timestamps with forged signatures, also as a transfer
    /// source (bodies with forged signatures, content with altered bytes).
    BadSignature,
    /// Answers half of the clients honestly and the other half with the oldest
    /// version it saw: different answers to different clients. As a transfer
    /// source it lists the stored versions but serves the oldest one it saw.
    Equivocate,
    /// Honest on the client path; on the transfer path it claims to hold nothing
    /// (empty listings marked done, no bodies) and reports every range asked about
    /// as completely held, to make new replicas skip ranges and old replicas delete
    /// ranges early.
    SkipRange,
    /// Honest while it is a member. Once a configuration removes it, it plays the
    /// "I still work here" attack (Kuznetsov and Tonkikh, DISC 2020) of a node whose
    /// key is stolen after its removal: it answers every `Read` and `ReadTimestamp` as
    /// if still a member of the epoch the request names, with the oldest version it
    /// saw, and acknowledges every `Write` in that epoch without storing it. Not in
    /// [`ALL_FAULTY`]: it only matters for removed nodes.
    StillHere,
    /// Honest, but every `Read` reply leaves `delay_ms` after the node computed it: a slow
    /// network between it and readers (the slow-reader attack of Kuznetsov and Tonkikh).
    /// Nothing else is delayed. Not in [`ALL_FAULTY`]: it never gives a wrong answer.
    SlowReads { delay_ms: u32 },
}

pub const ALL_FAULTY: [Behaviour; 6] = [
    Behaviour::Silent,
    Behaviour::WrongValue,
    Behaviour::Stale,
    Behaviour::BadSignature,
    Behaviour::Equivocate,
    Behaviour::SkipRange,
];

impl fmt::Display for Behaviour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Behaviour::Honest => "honest",
            Behaviour::Silent => "silent",
            Behaviour::WrongValue => "wrong-value",
            Behaviour::Stale => "stale",
            Behaviour::BadSignature => "bad-signature",
            Behaviour::Equivocate => "equivocate",
            Behaviour::SkipRange => "skip-range",
            Behaviour::StillHere => "still-here",
            Behaviour::SlowReads { delay_ms } => return write!(f, "slow-reads-{delay_ms}"),
        })
    }
}

impl FromStr for Behaviour {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "honest" => Behaviour::Honest,
            "silent" => Behaviour::Silent,
            "wrong-value" => Behaviour::WrongValue,
            "stale" => Behaviour::Stale,
            "bad-signature" => Behaviour::BadSignature,
            "equivocate" => Behaviour::Equivocate,
            "skip-range" => Behaviour::SkipRange,
            "still-here" => Behaviour::StillHere,
            _ => match s.strip_prefix("slow-reads-").map(str::parse) {
                Some(Ok(delay_ms)) => Behaviour::SlowReads { delay_ms },
                _ => {
                    return Err(format!(
                        "unknown behaviour {s:?}: use silent, wrong-value, stale, bad-signature, equivocate, skip-range, still-here or slow-reads-MS"
                    ));
                }
            },
        })
    }
}

/// A network partition between this node and chosen members, for tests only (nothing
/// else cuts anything): the node's calls to them fail at once (`PeerChannels`), and their
/// calls to it are refused as if they never arrived (`NodeCore`'s peer check). Clients
/// still reach the node. Calls already in flight when the cut is made finish.
#[derive(Debug, Default)]
pub struct Partition {
    cut: RwLock<BTreeSet<NodeId>>,
}

impl Partition {
    /// Cuts the node off from `members` (in addition to any already cut).
    pub fn cut_off(&self, members: impl IntoIterator<Item = NodeId>) {
        self.cut
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .extend(members);
    }

    /// Ends the partition.
    pub fn heal(&self) {
        self.cut.write().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Whether nothing is cut (always, outside tests).
    pub fn is_empty(&self) -> bool {
        self.cut
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// Whether traffic with `member` is cut.
    pub fn blocks(&self, member: &NodeId) -> bool {
        self.cut
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(member)
    }

    /// What a cut call fails with.
    pub fn refusal(member: &NodeId) -> tonic::Status {
        tonic::Status::unavailable(format!("partitioned from {} (test fault)", member.short()))
    }
}

fn flip(b: &mut Vec<u8>) {
    match b.first_mut() {
        Some(x) => *x ^= 0xff,
        None => b.push(0x5a),
    }
}

impl Behaviour {
    /// Silent nodes never get past this.
    pub async fn before_reply(&self) {
        if *self == Behaviour::Silent {
            std::future::pending::<()>().await;
        }
    }

    /// `SlowReads` holds a computed `Read` reply back here.
    pub async fn before_read_reply_leaves(&self) {
        if let Behaviour::SlowReads { delay_ms } = self {
            tokio::time::sleep(Duration::from_millis(u64::from(*delay_ms))).await;
        }
    }

    pub fn remembers_first(&self) -> bool {
        matches!(
            self,
            Behaviour::Stale | Behaviour::Equivocate | Behaviour::WrongValue | Behaviour::StillHere
        )
    }

    pub fn drops_writes(&self) -> bool {
        *self == Behaviour::WrongValue
    }

    /// The owned version shown to the peer whose key (NodeId or certificate hash)
    /// is `peer`.
    pub fn owned_reply(
        &self,
        peer: &[u8; 32],
        honest: Option<OwnedValue>,
        first_seen: impl FnOnce() -> Option<OwnedValue>,
    ) -> Option<OwnedValue> {
        match self {
            Behaviour::Stale => first_seen().or(honest),
            Behaviour::Equivocate if peer[0] & 1 == 1 => first_seen().or(honest),
            Behaviour::WrongValue => honest.or_else(first_seen),
            _ => honest,
        }
    }

    /// Alters a version as the behaviour dictates (for `Read`).
    pub fn corrupt_owned(&self, mut v: OwnedValue) -> OwnedValue {
        match self {
            Behaviour::WrongValue => flip(&mut v.value),
            Behaviour::BadSignature => v.header.signature[0] ^= 0xff,
            _ => {}
        }
        v
    }

    /// Alters a version as the behaviour dictates (for `ReadTimestamp`).
    pub fn corrupt_header(&self, mut v: OwnedValue) -> OwnedValue {
        match self {
            Behaviour::WrongValue => {
                v.header.timestamp.counter = v.header.timestamp.counter.saturating_add(1_000_000)
            }
            Behaviour::BadSignature => v.header.signature[0] ^= 0xff,
            _ => {}
        }
        v
    }

    pub fn corrupt_content(&self, mut b: Vec<u8>) -> Vec<u8> {
        if matches!(self, Behaviour::WrongValue | Behaviour::BadSignature) {
            flip(&mut b);
        }
        b
    }

    /// The forged version a `WrongValue` source lists and serves in place of `v`: the
    /// value altered, its hash recomputed and the timestamp raised, so it is higher
    /// than anything the owner signed and consistent with itself; only the owner's
    /// signature (left as it was) gives it away.
    pub fn forged_version(mut v: OwnedValue) -> OwnedValue {
        flip(&mut v.value);
        v.header.value_hash = sha256(&[&v.value]);
        v.header.timestamp.counter = v.header.timestamp.counter.saturating_add(1_000_000);
        v
    }

    /// What this replica lists for `ListRange` of range `r` (after `after`, at most
    /// `limit` entries), given the honest page from its store and the first version
    /// it saw of each object (empty for behaviours that remember nothing).
    pub fn listing(
        &self,
        r: &Range,
        after: Option<&[u8; 32]>,
        limit: usize,
        honest: (Vec<(ObjectId, StoredObject)>, bool),
        first_seen: &HashMap<ObjectId, OwnedValue>,
    ) -> (Vec<(ObjectId, StoredObject)>, bool) {
        let (page, done) = honest;
        match self {
            // Claims to hold nothing: an empty listing that says it is complete.
            Behaviour::SkipRange => (Vec::new(), true),
            // The oldest version it saw instead of the stored one (a rollback).
            Behaviour::Stale => (
                page.into_iter()
                    .map(|(id, o)| match (&o, first_seen.get(&id)) {
                        (StoredObject::Owned(_), Some(first)) => {
                            (id, StoredObject::Owned(first.clone()))
                        }
                        _ => (id, o),
                    })
                    .collect(),
                done,
            ),
            // It stored nothing (it drops writes): it lists what it saw, raised.
            Behaviour::WrongValue => {
                // The range's own order (a wrapping range starts after `start`).
                let key = |id: &[u8; 32]| (r.start >= r.end && *id <= r.end, *id);
                let after = after.map(key);
                // Remembered ids past the honest page's end belong to later pages.
                let last = if done {
                    None
                } else {
                    page.last().map(|(id, _)| key(&id.0))
                };
                let mut all: BTreeMap<(bool, [u8; 32]), (ObjectId, StoredObject)> = page
                    .into_iter()
                    .map(|(id, o)| (key(&id.0), (id, o)))
                    .collect();
                for (id, v) in first_seen {
                    let k = key(&id.0);
                    if r.contains(&id.0)
                        && after.is_none_or(|a| k > a)
                        && last.is_none_or(|l| k <= l)
                    {
                        all.entry(k)
                            .or_insert_with(|| (*id, StoredObject::Owned(v.clone())));
                    }
                }
                let mut out: Vec<(ObjectId, StoredObject)> = all
                    .into_values()
                    .map(|(id, o)| match o {
                        StoredObject::Owned(v) => {
                            (id, StoredObject::Owned(Self::forged_version(v)))
                        }
                        other => (id, other),
                    })
                    .collect();
                let limit = limit.max(1);
                let mut done = done;
                if out.len() > limit {
                    out.truncate(limit);
                    done = false;
                }
                (out, done)
            }
            _ => (page, done),
        }
    }

    /// The body this replica serves for `FetchObjects` of one object, given what its
    /// store holds and the first version it saw (None if it remembers none).
    pub fn fetched(
        &self,
        honest: Option<StoredObject>,
        first_seen: Option<OwnedValue>,
    ) -> Option<StoredObject> {
        match self {
            Behaviour::SkipRange => None,
            // A rollback: an older, validly signed version.
            Behaviour::Stale | Behaviour::Equivocate => match (first_seen, honest) {
                (Some(first), Some(StoredObject::Owned(_)) | None) => {
                    Some(StoredObject::Owned(first))
                }
                (_, honest) => honest,
            },
            // The same forged versions it lists.
            Behaviour::WrongValue => match honest.or(first_seen.map(StoredObject::Owned)) {
                Some(StoredObject::Owned(v)) => Some(StoredObject::Owned(Self::forged_version(v))),
                Some(StoredObject::Content(b)) => {
                    Some(StoredObject::Content(self.corrupt_content(b)))
                }
                None => None,
            },
            Behaviour::BadSignature => honest.map(|o| match o {
                StoredObject::Owned(v) => StoredObject::Owned(self.corrupt_owned(v)),
                StoredObject::Content(b) => StoredObject::Content(self.corrupt_content(b)),
            }),
            _ => honest,
        }
    }

    /// The `RangeStatus` answer: `(epoch, complete)`, given the honest one and the
    /// epoch the asker named.
    pub fn range_status(&self, asked_epoch: u64, honest: (u64, bool)) -> (u64, bool) {
        match self {
            // "I hold it completely, in your epoch", whatever the range.
            Behaviour::SkipRange => (asked_epoch, true),
            _ => honest,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dbqs_common::{KeyPair, Timestamp};

    #[test]
    fn names_round_trip() {
        let more = [
            Behaviour::Honest,
            Behaviour::StillHere,
            Behaviour::SlowReads { delay_ms: 4_500 },
        ];
        for b in ALL_FAULTY.into_iter().chain(more) {
            assert_eq!(b.to_string().parse::<Behaviour>(), Ok(b));
        }
        assert!(
            "nonsense"
                .parse::<Behaviour>()
                .unwrap_err()
                .contains("slow-reads-MS")
        );
        assert!("slow-reads-".parse::<Behaviour>().is_err());
    }

    #[test]
    fn a_partition_blocks_only_the_members_cut_off_until_healed() {
        let p = Partition::default();
        let (a, b) = (NodeId([1; 32]), NodeId([2; 32]));
        assert!(!p.blocks(&a));
        p.cut_off([a]);
        assert!(p.blocks(&a) && !p.blocks(&b));
        assert!(Partition::refusal(&a).message().contains("partitioned"));
        p.heal();
        assert!(!p.blocks(&a));
    }

    fn version(owner: &KeyPair, k: usize, counter: u64) -> OwnedValue {
        let ts = Timestamp {
            counter,
            writer: [1; 32],
        };
        OwnedValue::sign(owner, format!("o{k}").as_bytes(), ts, vec![k as u8])
    }

    /// The forged versions a wrong-value source lists come page by page, in the
    /// range's order, each above the real one, with a matching body that fails only
    /// the owner's signature.
    #[test]
    fn wrong_value_lists_raised_versions_in_pages() {
        let owner = KeyPair::generate();
        let seen: HashMap<ObjectId, OwnedValue> = (0..50)
            .map(|k| version(&owner, k, 1))
            .map(|v| (v.header.id, v))
            .collect();
        // A wrapping range holding about half of the ids.
        let r = Range {
            start: [0xc0; 32],
            end: [0x40; 32],
        };
        let want: Vec<[u8; 32]> = {
            let mut ids: Vec<[u8; 32]> = seen
                .keys()
                .map(|id| id.0)
                .filter(|id| r.contains(id))
                .collect();
            ids.sort_by_key(|id| (*id <= r.end, *id));
            ids
        };
        assert!(want.len() > 8);
        let mut got = Vec::new();
        let mut after = None;
        loop {
            let (page, done) =
                Behaviour::WrongValue.listing(&r, after.as_ref(), 7, (Vec::new(), true), &seen);
            assert!(page.len() <= 7);
            for (id, o) in page {
                let StoredObject::Owned(v) = o else {
                    panic!("content listed")
                };
                let real = &seen[&id];
                assert!(v.header.timestamp > real.header.timestamp);
                assert_eq!(v.header.value_hash, sha256(&[&v.value]));
                assert!(OwnedValue::from_proto(&v.to_proto()).is_err());
                assert_eq!(
                    Behaviour::WrongValue.fetched(None, Some(real.clone())),
                    Some(StoredObject::Owned(v))
                );
                got.push(id.0);
                after = Some(id.0);
            }
            if done {
                break;
            }
        }
        assert_eq!(got, want);
    }

    #[test]
    fn stale_skip_range_and_honest_listings() {
        let owner = KeyPair::generate();
        let old = version(&owner, 1, 1);
        let new = version(&owner, 1, 2);
        let id = old.header.id;
        let seen = HashMap::from([(id, old.clone())]);
        let r = Range {
            start: [0; 32],
            end: [0; 32],
        };
        let page = || (vec![(id, StoredObject::Owned(new.clone()))], true);
        let listed = |b: Behaviour| b.listing(&r, None, 10, page(), &seen);
        assert_eq!(listed(Behaviour::Honest), page());
        assert_eq!(
            listed(Behaviour::Stale),
            (vec![(id, StoredObject::Owned(old.clone()))], true)
        );
        assert_eq!(listed(Behaviour::SkipRange), (Vec::new(), true));
        let stored = Some(StoredObject::Owned(new.clone()));
        assert_eq!(
            Behaviour::Equivocate.fetched(stored.clone(), Some(old.clone())),
            Some(StoredObject::Owned(old))
        );
        assert_eq!(Behaviour::SkipRange.fetched(stored.clone(), None), None);
        assert_eq!(Behaviour::Honest.fetched(stored.clone(), None), stored);
        assert_eq!(Behaviour::SkipRange.range_status(9, (3, false)), (9, true));
        assert_eq!(Behaviour::Honest.range_status(9, (3, false)), (3, false));
    }
}
