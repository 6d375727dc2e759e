//! MS rotation inside the membership state machine (PROTOCOL.md, "MS rotation and
//! resharing"; docs/resharing.md, "In the state machine"). The cryptography is in
//! [`super::resharing`]; this module orders it:
//!
//! 1. When epoch e ends and the MS is due for rotation (`MsChangeReason`), configuration e+1
//!    names the new MS in `ms_next`, drawn with r_e from the members of configuration e. The
//!    old MS (`ms_members`) keeps serving and signs ConfigCert e+1.
//! 2. Old members submit `Deal`; every replica runs `verify_dealing`, and keeps the first
//!    dealing of each old member, in PBFT order.
//! 3. New members submit `AckDealing` for a dealing whose sub-share opened and matched, or
//!    `Accuse` with a proof when it did not. An upheld accusation disqualifies the dealing
//!    for good; a false one is refused.
//! 4. S = the first t dealings in PBFT order that have no upheld accusation and 2f'+1
//!    acknowledgements. It is fixed as soon as it exists, with the new key set Σλ_i·C_i; an
//!    accusation upheld later against a dealing of S drops S (and the handover shares given
//!    for it) and S is chosen again from the dealings that still qualify.
//! 5. New members submit `HandoverShare`: a BLS signature share under their new key share
//!    over [`handover_signing_bytes`]. Once 2f'+1 distinct ones verify, Handover executes:
//!    the epoch ends (as soon as ConfigCert e is known), and the next configuration names
//!    the new MS in `ms_members` with the new key set. The state right after that epoch end
//!    is where the new MS starts ([`MembershipState::take_over`]); the old MS's copy is
//!    retired and refuses every operation from then on.
//!
//! 6. If Handover does not follow S in time, old members propose `RetryHandover` for the
//!    current attempt on their local timers; once f_ms+1 distinct old members did (so at
//!    least one correct member's timer ran out), S is dropped and chosen again, preferring
//!    the dealings that were in the fewest failed sets ("the old MS picks a new S and tries
//!    again"). The clock stays outside: the state machine only counts proposals.
//!
//! A rotation is abandoned when a member of the incoming MS is removed, evicted or expires
//! before Handover: the next epoch end draws a new MS.

use std::collections::{BTreeMap, BTreeSet};

use blsttc::{PublicKeySet, SignatureShare};
use dbqs_common::Epoch;
use dbqs_common::codec::{DecodeError, Reader, Writer, sha256};
use dbqs_common::config::{Configuration, MAX_MS_MEMBERS};
use dbqs_common::identity::NodeId;

use super::ops::{MAX_DEALING_BYTES, OpError, Outcome};
use super::resharing::{
    Accusation, Dealing, NewMember, Rotation, check_accusation, combine_key_set, verify_dealing,
};
use super::state::{MembershipState, Output};

/// The state of a running rotation; part of the snapshot.
#[derive(Clone, Debug)]
pub struct RotationState {
    pub(super) rot: Rotation,
    /// Accepted dealings in PBFT order, at most one per old member.
    pub(super) dealings: Vec<Dealing>,
    /// Per dealer index: the 0-based new-MS positions that acknowledged its dealing.
    pub(super) acks: BTreeMap<u32, BTreeSet<u32>>,
    /// Dealer indices with an upheld accusation; their dealings never count.
    pub(super) upheld: BTreeSet<u32>,
    /// S (dealer indices, in PBFT order) and the new key set bytes it gives.
    pub(super) chosen: Option<(Vec<u32>, Vec<u8>)>,
    /// Verified handover shares for the current S, by new-MS position.
    pub(super) handover: BTreeMap<u32, [u8; 96]>,
    /// 2f'+1 handover shares verified: the epoch end installs the new MS.
    pub(super) handed_over: bool,
    /// How many times S was dropped (by an upheld accusation or by `RetryHandover`);
    /// retry proposals name it, so one about an earlier S never counts against a later.
    pub(super) attempt: u32,
    /// Old-MS positions that proposed `RetryHandover` for the current attempt.
    pub(super) retry_votes: BTreeSet<u32>,
    /// Per dealer index: how many sets S it was part of that `RetryHandover` dropped
    /// (choose prefers fewer; an S dropped by an upheld accusation does not count here:
    /// its bad dealing is excluded for good instead).
    pub(super) passed_over: BTreeMap<u32, u32>,
}

/// The statement new members sign with their new key shares to show the shares work:
/// tag "ms-handover" ‖ rotation epoch ‖ SHA-256(new key set bytes).
pub fn handover_signing_bytes(epoch: Epoch, key_set: &[u8]) -> Vec<u8> {
    let mut w = Writer::tagged("ms-handover");
    w.u64(epoch).fixed(&sha256(&[key_set]));
    w.finish()
}

/// The PBFT signature domain of the MS that `config` names (`pbft::Config::domain`): MS
/// terms with overlapping members run separate replica groups, and a message of one never
/// counts in another. Each term has a fresh key set, so (key set, MS list) names it.
pub fn pbft_domain(config: &Configuration) -> [u8; 32] {
    let mut w = Writer::tagged("ms-pbft-domain");
    w.bytes(&config.ms_key_set)
        .u32(config.ms_members.len() as u32);
    for id in &config.ms_members {
        w.fixed(&id.0);
    }
    sha256(&[&w.finish()])
}

impl RotationState {
    /// A rotation with nothing dealt yet, from the configuration that names the new MS.
    pub(super) fn start(config: &Configuration) -> Result<RotationState, OpError> {
        Self::start_at(config, config.epoch)
    }

    /// The rotation that configuration `epoch` started, seen from `config` (the same or a
    /// later configuration of the same MS term: the MS lists and key set are unchanged
    /// while a rotation runs).
    pub(super) fn start_at(config: &Configuration, epoch: Epoch) -> Result<RotationState, OpError> {
        let key_set = PublicKeySet::from_bytes(config.ms_key_set.clone())
            .map_err(|_| OpError::BadDealing("malformed MS key set".into()))?;
        let mut new = Vec::with_capacity(config.ms_next.len());
        for id in &config.ms_next {
            let m = config
                .members
                .iter()
                .find(|m| m.node_id() == *id)
                .ok_or(OpError::NotAMember(*id))?;
            new.push(NewMember {
                id: *id,
                x25519_key: m.x25519_key,
            });
        }
        let rot = Rotation::new(epoch, key_set, config.ms_members.clone(), new)
            .map_err(|e| OpError::BadDealing(e.to_string()))?;
        Ok(RotationState::empty(rot))
    }

    fn empty(rot: Rotation) -> RotationState {
        RotationState {
            rot,
            dealings: Vec::new(),
            acks: BTreeMap::new(),
            upheld: BTreeSet::new(),
            chosen: None,
            handover: BTreeMap::new(),
            handed_over: false,
            attempt: 0,
            retry_votes: BTreeSet::new(),
            passed_over: BTreeMap::new(),
        }
    }

    /// Whether this rotation's context is the one `config` names (its MS, key set and
    /// incoming MS with their x25519 keys).
    pub(super) fn fits(&self, config: &Configuration) -> bool {
        RotationState::start_at(config, self.rot.epoch()).is_ok_and(|other| {
            other.rot.old_members() == self.rot.old_members()
                && other.rot.new_members() == self.rot.new_members()
                && other.rot.old_key_set() == self.rot.old_key_set()
        })
    }

    /// The encoding of [`encode_to`](Self::encode_to) on its own (for queries).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::tagged("ms-rotation");
        self.encode_to(&mut w);
        w.finish()
    }

    pub fn decode(bytes: &[u8]) -> Result<RotationState, DecodeError> {
        let mut r = Reader::new(bytes);
        r.expect_tag("ms-rotation")?;
        let rs = Self::decode_from(&mut r)?;
        r.finish()?;
        Ok(rs)
    }

    pub fn rotation(&self) -> &Rotation {
        &self.rot
    }

    /// Accepted dealings, in PBFT order.
    pub fn dealings(&self) -> &[Dealing] {
        &self.dealings
    }

    pub fn dealing_of(&self, dealer_index: u32) -> Option<&Dealing> {
        self.dealings
            .iter()
            .find(|d| d.dealer_index == dealer_index)
    }

    /// Whether the new member at `position` acknowledged the dealing of `dealer_index`.
    pub fn acked(&self, position: u32, dealer_index: u32) -> bool {
        self.acks
            .get(&dealer_index)
            .is_some_and(|s| s.contains(&position))
    }

    pub fn is_upheld(&self, dealer_index: u32) -> bool {
        self.upheld.contains(&dealer_index)
    }

    /// S and the new key set, once chosen.
    pub fn chosen(&self) -> Option<(&[u32], &[u8])> {
        self.chosen
            .as_ref()
            .map(|(s, k)| (s.as_slice(), k.as_slice()))
    }

    /// Whether the new member at `position` gave a verified handover share for this S.
    pub fn handover_given(&self, position: u32) -> bool {
        self.handover.contains_key(&position)
    }

    pub fn handover_count(&self) -> usize {
        self.handover.len()
    }

    /// How many times S was dropped (upheld accusation or `RetryHandover`); old members
    /// propose `RetryHandover` for this attempt.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    pub fn handed_over(&self) -> bool {
        self.handed_over
    }

    /// 2f'+1 of the new MS: acknowledgements a dealing needs, and handover shares.
    pub fn new_quorum(&self) -> usize {
        2 * (self.rot.new_threshold() - 1) + 1
    }

    pub(super) fn new_position(&self, id: &NodeId) -> Option<u32> {
        self.rot
            .new_members()
            .iter()
            .position(|m| m.id == *id)
            .map(|p| p as u32)
    }

    /// The snapshot's rotation part (see `snapshot.rs` for the layout).
    pub(super) fn encode_to(&self, w: &mut Writer) {
        w.u64(self.rot.epoch());
        w.bytes(&self.rot.old_key_set().to_bytes());
        w.u32(self.rot.old_members().len() as u32);
        for id in self.rot.old_members() {
            w.fixed(&id.0);
        }
        w.u32(self.rot.new_members().len() as u32);
        for m in self.rot.new_members() {
            w.fixed(&m.id.0).fixed(&m.x25519_key);
        }
        w.u32(self.dealings.len() as u32);
        for d in &self.dealings {
            w.bytes(&d.encode());
        }
        w.u32(self.acks.len() as u32);
        for (dealer, positions) in &self.acks {
            w.u32(*dealer).u32(positions.len() as u32);
            for p in positions {
                w.u32(*p);
            }
        }
        w.u32(self.upheld.len() as u32);
        for u in &self.upheld {
            w.u32(*u);
        }
        match &self.chosen {
            Some((s, _)) => {
                w.u8(1).u32(s.len() as u32);
                for d in s {
                    w.u32(*d);
                }
            }
            None => {
                w.u8(0);
            }
        }
        w.u32(self.handover.len() as u32);
        for (p, share) in &self.handover {
            w.u32(*p).fixed(share);
        }
        w.u8(u8::from(self.handed_over));
        w.u32(self.attempt).u32(self.retry_votes.len() as u32);
        for i in &self.retry_votes {
            w.u32(*i);
        }
        w.u32(self.passed_over.len() as u32);
        for (dealer, n) in &self.passed_over {
            w.u32(*dealer).u32(*n);
        }
    }

    /// Reads what [`encode_to`](Self::encode_to) wrote and checks it as the state machine
    /// would have built it: every dealing verifies, acks and shares come from new members,
    /// S is recomputed from its dealings. Whether the context fits a configuration is the
    /// caller's check.
    pub fn decode_from(r: &mut Reader<'_>) -> Result<RotationState, DecodeError> {
        let bad = |reason| DecodeError::Invalid {
            field: "rotation",
            reason,
        };
        let epoch = r.u64("rotation epoch")?;
        let key_set = r.bytes("old key set", MAX_MS_MEMBERS * 48)?;
        // blsttc reads fewer than 48 bytes as a key set with no coefficient (its threshold
        // underflows) and drops trailing bytes: only whole, non-empty key sets.
        if key_set.is_empty() || !key_set.len().is_multiple_of(48) {
            return Err(bad("malformed old key set"));
        }
        let key_set =
            PublicKeySet::from_bytes(key_set.to_vec()).map_err(|_| bad("malformed old key set"))?;
        let n = r.count("old members", MAX_MS_MEMBERS, 32)?;
        let mut old = Vec::with_capacity(n);
        for _ in 0..n {
            old.push(NodeId(r.array("old member")?));
        }
        let n = r.count("new members", MAX_MS_MEMBERS, 64)?;
        let mut new = Vec::with_capacity(n);
        for _ in 0..n {
            new.push(NewMember {
                id: NodeId(r.array("new member")?),
                x25519_key: r.array("new member x25519 key")?,
            });
        }
        let rot = Rotation::new(epoch, key_set, old, new).map_err(|_| bad("invalid context"))?;
        let mut rs = RotationState::empty(rot);
        let n_old = rs.rot.old_members().len();
        let n_new = rs.rot.new_members().len();
        let n = r.count("dealings", n_old, 4)?;
        for _ in 0..n {
            let d = Dealing::decode(r.bytes("dealing", MAX_DEALING_BYTES)?)?;
            if verify_dealing(&rs.rot, &d).is_err() || rs.dealing_of(d.dealer_index).is_some() {
                return Err(bad("dealing does not verify or is repeated"));
            }
            rs.dealings.push(d);
        }
        let n = r.count("acks", n_old, 8)?;
        for _ in 0..n {
            let dealer = r.u32("ack dealer")?;
            let m = r.count("ack positions", n_new, 4)?;
            let mut set = BTreeSet::new();
            for _ in 0..m {
                let p = r.u32("ack position")?;
                if p as usize >= n_new {
                    return Err(bad("ack from outside the new MS"));
                }
                set.insert(p);
            }
            if rs.dealing_of(dealer).is_none() || set.is_empty() {
                return Err(bad("acks for no dealing"));
            }
            rs.acks.insert(dealer, set);
        }
        let n = r.count("upheld", n_old, 4)?;
        for _ in 0..n {
            rs.upheld.insert(r.u32("upheld dealer")?);
        }
        let chosen = match r.u8("chosen")? {
            0 => None,
            1 => {
                let n = r.count("chosen dealers", n_old, 4)?;
                let mut s = Vec::with_capacity(n);
                for _ in 0..n {
                    s.push(r.u32("chosen dealer")?);
                }
                Some(s)
            }
            _ => return Err(bad("chosen flag must be 0 or 1")),
        };
        if let Some(s) = chosen {
            let set: Vec<&Dealing> = s.iter().filter_map(|i| rs.dealing_of(*i)).collect();
            if set.len() != s.len() {
                return Err(bad("S names a missing dealing"));
            }
            let keys = combine_key_set(&rs.rot, &set).map_err(|_| bad("S does not combine"))?;
            rs.chosen = Some((s, keys.to_bytes()));
        }
        let n = r.count("handover shares", n_new, 100)?;
        for _ in 0..n {
            let p = r.u32("handover position")?;
            if p as usize >= n_new || rs.chosen.is_none() {
                return Err(bad("handover share without S or from outside the new MS"));
            }
            rs.handover.insert(p, r.array("handover share")?);
        }
        rs.handed_over = match r.u8("handed_over")? {
            0 => false,
            1 if rs.chosen.is_some() => true,
            _ => return Err(bad("handed_over must be 0, or 1 with S chosen")),
        };
        rs.attempt = r.u32("retry attempt")?;
        let n = r.count("retry votes", n_old, 4)?;
        for _ in 0..n {
            let i = r.u32("retry vote")?;
            if i as usize >= n_old || rs.chosen.is_none() || !rs.retry_votes.insert(i) {
                return Err(bad(
                    "retry vote without S, repeated, or from outside the old MS",
                ));
            }
        }
        let n = r.count("passed over", n_old, 8)?;
        for _ in 0..n {
            let dealer = r.u32("passed-over dealer")?;
            let times = r.u32("passed-over count")?;
            if rs.dealing_of(dealer).is_none() || times == 0 {
                return Err(bad("passed-over entry for no dealing"));
            }
            rs.passed_over.insert(dealer, times);
        }
        Ok(rs)
    }

    /// Chooses S if none is chosen and enough dealings qualify: t qualifying dealings, those
    /// that were in the fewest dropped sets first, then in PBFT order (before any retry,
    /// simply the first t in PBFT order). S is listed in PBFT order.
    pub(super) fn choose(&mut self) {
        if self.chosen.is_some() {
            return;
        }
        let need = self.new_quorum();
        let mut candidates: Vec<(u32, usize, &Dealing)> = self
            .dealings
            .iter()
            .enumerate()
            .filter(|(_, d)| {
                !self.upheld.contains(&d.dealer_index)
                    && self.acks.get(&d.dealer_index).map_or(0, BTreeSet::len) >= need
            })
            .map(|(pos, d)| {
                let dropped = self.passed_over.get(&d.dealer_index).copied().unwrap_or(0);
                (dropped, pos, d)
            })
            .collect();
        if candidates.len() < self.rot.old_threshold() {
            return;
        }
        candidates.sort_unstable_by_key(|(dropped, pos, _)| (*dropped, *pos));
        candidates.truncate(self.rot.old_threshold());
        candidates.sort_unstable_by_key(|(_, pos, _)| *pos);
        let set: Vec<&Dealing> = candidates.into_iter().map(|(_, _, d)| d).collect();
        // Every dealing passed verify_dealing, so the group key is kept; a failure here
        // would mean a bug, and S simply stays unchosen.
        if let Ok(keys) = combine_key_set(&self.rot, &set) {
            let ids = set.iter().map(|d| d.dealer_index).collect();
            self.chosen = Some((ids, keys.to_bytes()));
        }
    }

    /// `RetryHandover` took effect: S is dropped, its dealings count as passed over once
    /// more, and S is chosen again. If the same set comes back (no other dealing
    /// qualifies), the handover shares already given for it still count.
    fn retry(&mut self) {
        let Some((old_set, _)) = self.chosen.take() else {
            return;
        };
        for d in &old_set {
            *self.passed_over.entry(*d).or_default() += 1;
        }
        self.attempt = self.attempt.saturating_add(1);
        self.retry_votes.clear();
        let given = std::mem::take(&mut self.handover);
        self.choose();
        if self.chosen.as_ref().is_some_and(|(s, _)| *s == old_set) {
            self.handover = given;
        }
    }
}

impl MembershipState {
    /// The running rotation, if any.
    pub fn rotation(&self) -> Option<&RotationState> {
        self.rotation.as_ref()
    }

    /// `Some(e)` once this MS handed over to the MS that configuration e names: this copy
    /// of the state refuses every operation, and the new MS continues from it after
    /// [`take_over`](Self::take_over).
    pub fn retired(&self) -> Option<Epoch> {
        self.retired
    }

    /// The rotation that handed over, kept while this MS is retired so that new members
    /// that were slow can still compute their shares from S.
    pub fn handed_over_rotation(&self) -> Option<&RotationState> {
        self.handed_over_rotation.as_ref()
    }

    /// Turns the state the old MS retired with into the new MS's starting state (each new
    /// member does the same to the same certified snapshot, so they agree).
    pub fn take_over(&mut self) {
        self.retired = None;
        self.handed_over_rotation = None;
    }

    fn running_rotation(&mut self) -> Result<&mut RotationState, OpError> {
        match self.rotation.as_mut() {
            Some(r) if !r.handed_over => Ok(r),
            _ => Err(OpError::NoRotation),
        }
    }

    pub(super) fn apply_deal(&mut self, proposer: NodeId, d: &Dealing) -> Result<Outcome, OpError> {
        let rs = self.running_rotation()?;
        if d.dealer != proposer {
            return Err(OpError::NotRotationParty(proposer));
        }
        verify_dealing(&rs.rot, d).map_err(|e| OpError::BadDealing(e.to_string()))?;
        if rs.dealing_of(d.dealer_index).is_some() {
            return Err(OpError::DuplicateProposal(proposer));
        }
        rs.dealings.push(d.clone());
        Ok(Outcome::Recorded {
            votes: rs.dealings.len() as u32,
            needed: rs.rot.old_threshold() as u32,
        })
    }

    pub(super) fn apply_ack(
        &mut self,
        proposer: NodeId,
        dealer_index: u32,
        digest: &[u8; 32],
    ) -> Result<Outcome, OpError> {
        let rs = self.running_rotation()?;
        let k = rs
            .new_position(&proposer)
            .ok_or(OpError::NotRotationParty(proposer))?;
        if rs
            .dealing_of(dealer_index)
            .is_none_or(|d| d.digest() != *digest)
        {
            return Err(OpError::UnknownDealing(dealer_index));
        }
        let acks = rs.acks.entry(dealer_index).or_default();
        if !acks.insert(k) {
            return Err(OpError::DuplicateProposal(proposer));
        }
        let votes = acks.len() as u32;
        rs.choose();
        Ok(Outcome::Recorded {
            votes,
            needed: rs.new_quorum() as u32,
        })
    }

    pub(super) fn apply_accuse(
        &mut self,
        proposer: NodeId,
        a: &Accusation,
    ) -> Result<Outcome, OpError> {
        let rs = self.running_rotation()?;
        if a.accuser != proposer {
            return Err(OpError::NotRotationParty(proposer));
        }
        let d = rs
            .dealing_of(a.dealer_index)
            .ok_or(OpError::UnknownDealing(a.dealer_index))?;
        check_accusation(&rs.rot, d, a).map_err(|e| OpError::FalseAccusation(e.to_string()))?;
        if !rs.upheld.insert(a.dealer_index) {
            return Err(OpError::DuplicateProposal(proposer));
        }
        rs.acks.remove(&a.dealer_index);
        if rs
            .chosen
            .as_ref()
            .is_some_and(|(s, _)| s.contains(&a.dealer_index))
        {
            rs.chosen = None;
            rs.handover.clear();
            // Retry proposals were about the dropped S; the next S is a new attempt.
            rs.attempt = rs.attempt.saturating_add(1);
            rs.retry_votes.clear();
        }
        rs.choose();
        Ok(Outcome::Recorded {
            votes: rs.upheld.len() as u32,
            needed: 1,
        })
    }

    /// PROTOCOL.md, step 5, "if that does not happen in time, the old MS picks a new S and
    /// tries again": each old member proposes it on its own timer; f_ms+1 distinct old
    /// members are needed, so the f_ms faulty ones alone cannot churn S.
    pub(super) fn apply_retry(
        &mut self,
        proposer: NodeId,
        rotation: Epoch,
        attempt: u32,
    ) -> Result<Outcome, OpError> {
        let rs = self.running_rotation()?;
        let i = rs
            .rot
            .old_members()
            .iter()
            .position(|m| *m == proposer)
            .ok_or(OpError::NotRotationParty(proposer))? as u32;
        if rs.chosen.is_none() {
            return Err(OpError::NoChosenSet);
        }
        // A proposal about another rotation (an abandoned one whose attempt numbers start
        // at 0 too) or another S of this one never counts.
        if rotation != rs.rot.epoch() || attempt != rs.attempt {
            return Err(OpError::StaleRetry {
                rotation,
                attempt,
                current_rotation: rs.rot.epoch(),
                current: rs.attempt,
            });
        }
        if !rs.retry_votes.insert(i) {
            return Err(OpError::DuplicateProposal(proposer));
        }
        let votes = rs.retry_votes.len();
        let needed = rs.rot.old_threshold();
        if votes >= needed {
            rs.retry();
        }
        Ok(Outcome::Recorded {
            votes: votes as u32,
            needed: needed as u32,
        })
    }

    pub(super) fn apply_handover_share(
        &mut self,
        proposer: NodeId,
        share: &[u8; 96],
        outputs: &mut Vec<Output>,
    ) -> Result<Outcome, OpError> {
        let rs = self.running_rotation()?;
        let k = rs
            .new_position(&proposer)
            .ok_or(OpError::NotRotationParty(proposer))?;
        let (_, key_set) = rs.chosen.as_ref().ok_or(OpError::NoChosenSet)?;
        if rs.handover.contains_key(&k) {
            return Err(OpError::DuplicateProposal(proposer));
        }
        let keys = PublicKeySet::from_bytes(key_set.clone()).map_err(|_| OpError::NoChosenSet)?;
        let sig = SignatureShare::from_bytes(*share).map_err(|_| OpError::BadHandoverShare)?;
        let msg = handover_signing_bytes(rs.rot.epoch(), key_set);
        if !keys.public_key_share(k as usize).verify(&sig, msg) {
            return Err(OpError::BadHandoverShare);
        }
        rs.handover.insert(k, *share);
        let votes = rs.handover.len();
        let needed = rs.new_quorum();
        if votes >= needed {
            rs.handed_over = true;
            if self.request_end(outputs) {
                return Ok(Outcome::EpochEnded);
            }
        }
        Ok(Outcome::Recorded {
            votes: votes as u32,
            needed: needed as u32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::RotationStatus;

    /// A rotation of one old member and one new one, nothing dealt, with `key_set` as the
    /// old key set's bytes.
    fn encoded(key_set: &[u8]) -> Vec<u8> {
        let mut w = Writer::tagged("ms-rotation");
        w.u64(5).bytes(key_set);
        w.u32(1).fixed(&[1; 32]);
        w.u32(1).fixed(&[2; 32]).fixed(&[3; 32]);
        // dealings, acks, upheld; no S; handover shares; not handed over; attempt, retry
        // votes, passed over.
        w.u32(0)
            .u32(0)
            .u32(0)
            .u8(0)
            .u32(0)
            .u8(0)
            .u32(0)
            .u32(0)
            .u32(0);
        w.finish()
    }

    /// Found by the `node_decoders` fuzz target: blsttc reads a key set of fewer than 48
    /// bytes as a commitment with no coefficient, whose threshold underflows (a panic with
    /// overflow checks, a threshold of usize::MAX without), and drops trailing bytes.
    #[test]
    fn an_empty_or_ragged_old_key_set_is_refused_not_a_panic() {
        let one = blsttc::SecretKeySet::random(0, &mut blsttc::rand::rngs::OsRng)
            .public_keys()
            .to_bytes();
        assert_eq!(one.len(), 48);
        let good = RotationState::decode(&encoded(&one)).expect("a one-coefficient key set");
        assert_eq!(good.encode(), encoded(&one));
        let mut ragged = one.clone();
        ragged.push(0);
        for bad in [&[][..], &one[..47], &ragged[..]] {
            assert!(
                RotationState::decode(&encoded(bad)).is_err(),
                "a key set of {} bytes decoded",
                bad.len()
            );
            // The same inside the answer to QUERY_ROTATION, which nodes read from the MS.
            let mut w = Writer::tagged("ms-rotation-status");
            w.u64(5).u8(0).u8(1).bytes(&encoded(bad));
            assert!(RotationStatus::decode(&w.finish()).is_err());
        }
    }
}
