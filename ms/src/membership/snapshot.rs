//! The canonical snapshot of the membership state (PBFT checkpoints and state transfer:
//! docs/pbft.md, "Checkpoints"). Equal states give equal bytes; the decoder checks every
//! count against an explicit bound before allocating, checks the invariants the state
//! machine keeps, and accepts only canonical bytes (it re-encodes and compares), so a
//! snapshot's digest names exactly one state.
//!
//! Layout (docs/membership.md, "Encodings"):
//! ```text
//! tag "ms-snapshot"
//! bytes(configuration) ‖ u8 certified ‖ [96] signature if certified ‖ u64 agreed_time_ms
//! u32 n, n × ([32] MS member ‖ u64 reported now_ms)       sorted by NodeId
//! u32 n, n × ([32] member ‖ u64 not_after_ms)             exactly the members, sorted
//! u32 n, n × ([32] member ‖ [32] SHA-256(AddCert))        exactly the members, sorted
//! u32 n, n × ([32] node ‖ [32] SHA-256(AddCert) ‖ u64 not_after_ms)
//!                                                          rejoin rights, sorted, no member
//! u32 n, n × [32] member admitted by a rejoin              sorted, members only
//! u64 serial floor ‖ u32 n, n × u64 used serial           increasing, above the floor
//! u32 n, n × (u8 kind ‖ body)                              pending changes, in order
//! u32 n, n × ([32] target ‖ u32 m, m × [32] proposer)     evict votes, sorted
//! u32 n, n × [32] EndEpoch proposer                        sorted
//! u8 end_requested
//! u32 n, n × ([32] MS member ‖ u8 leave reason)           deferred leaves, sorted
//! u64 ms_term_start
//! u32 n, n × (u8 kind ‖ fields)                            MS change reasons, in order
//! u8 rotation ‖ if 1: u64 rotation epoch                   (see rotation.rs)
//!   bytes(old key set) ‖ u32 n, n × [32] old member ‖ u32 m, m × ([32] id ‖ [32] x25519)
//!   u32 n, n × bytes(dealing)                              in PBFT order
//!   u32 n, n × (u32 dealer ‖ u32 m, m × u32 position)      acks, sorted
//!   u32 n, n × u32 dealer                                  upheld accusations, sorted
//!   u8 chosen ‖ if 1: u32 n, n × u32 dealer                S (its key set is recomputed)
//!   u32 n, n × (u32 position ‖ [96] share)                 handover shares, sorted
//!   u8 handed_over
//!   u32 attempt ‖ u32 n, n × u32 old position              RetryHandover votes, sorted
//!   u32 n, n × (u32 dealer ‖ u32 times)                    dealings in dropped sets S
//! u8 retired ‖ if 1: u64 epoch of the successor MS's first configuration ‖ the rotation
//!   that handed over (same layout as above)
//! ```

use std::collections::{BTreeMap, BTreeSet};

use dbqs_common::codec::{DecodeError, Reader, Writer, sha256};
use dbqs_common::config::{Configuration, MAX_MEMBERS, MAX_MS_MEMBERS};
use dbqs_common::identity::NodeId;
use thiserror::Error;

use super::ops::{OpError, OpKind, REJECTION_CODES, read_kind, write_kind};
use super::rotation::RotationState;
use super::signing::ms_public_key;
use super::state::{
    Change, LeaveReason, MAX_EVICT_PROPOSALS_PER_REPLICA, MAX_PENDING, MAX_REJOINABLE,
    MAX_USED_SERIALS, MembershipState, MsChangeReason, Rejoin, SerialWindow,
};

/// Largest configuration inside a snapshot (the same bound as a `ConfigCert` file).
pub const MAX_SNAPSHOT_CONFIG_BYTES: usize = 64 << 20;
/// Most MS-change reasons: one per MS member leaving, plus the size rule and the period.
const MAX_MS_CHANGE_REASONS: usize = MAX_MS_MEMBERS + 2;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SnapshotError {
    #[error("malformed snapshot: {0}")]
    Decode(#[from] DecodeError),
    #[error("malformed snapshot: {0}")]
    Op(#[from] OpError),
    #[error("snapshot configuration: {0}")]
    Config(#[from] dbqs_common::config::ConfigError),
    #[error("snapshot is not in canonical form")]
    NotCanonical,
    #[error("snapshot breaks an invariant: {0}")]
    Invalid(&'static str),
}

fn invalid(field: &'static str, reason: &'static str) -> DecodeError {
    DecodeError::Invalid { field, reason }
}

fn leave_code(r: LeaveReason) -> u8 {
    r as u8
}

fn leave_from(code: u8) -> Result<LeaveReason, DecodeError> {
    match code {
        1 => Ok(LeaveReason::Removed),
        2 => Ok(LeaveReason::Evicted),
        3 => Ok(LeaveReason::Expired),
        _ => Err(invalid("leave reason", "unknown")),
    }
}

fn change_to_kind(c: &Change) -> OpKind {
    match c {
        Change::Add(x) => OpKind::Add(x.clone()),
        Change::Remove(x) => OpKind::Remove(x.clone()),
        Change::Renew(x) => OpKind::Renew(x.clone()),
        Change::RevokeClient(x) => OpKind::RevokeClient(x.clone()),
        Change::RotateAuthority(x) => OpKind::RotateAuthority(x.clone()),
        Change::Evict(n) => OpKind::Evict(*n),
    }
}

fn kind_to_change(k: OpKind) -> Result<Change, DecodeError> {
    Ok(match k {
        OpKind::Add(x) => Change::Add(x),
        OpKind::Remove(x) => Change::Remove(x),
        OpKind::Renew(x) => Change::Renew(x),
        OpKind::RevokeClient(x) => Change::RevokeClient(x),
        OpKind::RotateAuthority(x) => Change::RotateAuthority(x),
        OpKind::Evict(n) => Change::Evict(n),
        _ => return Err(invalid("pending change", "not a queued kind")),
    })
}

fn write_ids(w: &mut Writer, ids: &BTreeSet<NodeId>) {
    w.u32(ids.len() as u32);
    for id in ids {
        w.fixed(&id.0);
    }
}

fn read_ids(r: &mut Reader<'_>, field: &'static str) -> Result<BTreeSet<NodeId>, DecodeError> {
    let n = r.count(field, MAX_MS_MEMBERS, 32)?;
    let mut out = BTreeSet::new();
    for _ in 0..n {
        out.insert(NodeId(r.array(field)?));
    }
    Ok(out)
}

fn write_times(w: &mut Writer, m: &BTreeMap<NodeId, u64>) {
    w.u32(m.len() as u32);
    for (id, t) in m {
        w.fixed(&id.0).u64(*t);
    }
}

fn read_times(
    r: &mut Reader<'_>,
    field: &'static str,
    max: usize,
) -> Result<BTreeMap<NodeId, u64>, DecodeError> {
    let n = r.count(field, max, 40)?;
    let mut out = BTreeMap::new();
    for _ in 0..n {
        let id = NodeId(r.array(field)?);
        out.insert(id, r.u64(field)?);
    }
    Ok(out)
}

impl MembershipState {
    /// The canonical snapshot bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::tagged("ms-snapshot");
        w.bytes(&self.config.encode());
        match &self.certified {
            Some(s) => w.u8(1).fixed(s),
            None => w.u8(0),
        };
        w.u64(self.agreed_time_ms);
        write_times(&mut w, &self.time_reports);
        write_times(&mut w, &self.not_after);
        w.u32(self.admission.len() as u32);
        for (id, digest) in &self.admission {
            w.fixed(&id.0).fixed(digest);
        }
        w.u32(self.rejoinable.len() as u32);
        for (id, r) in &self.rejoinable {
            w.fixed(&id.0).fixed(&r.add_cert).u64(r.not_after_ms);
        }
        w.u32(self.rejoined.len() as u32);
        for id in &self.rejoined {
            w.fixed(&id.0);
        }
        w.u64(self.serials.floor)
            .u32(self.serials.used.len() as u32);
        for s in &self.serials.used {
            w.u64(*s);
        }
        w.u32(self.pending.len() as u32);
        for c in &self.pending {
            write_kind(&mut w, &change_to_kind(c));
        }
        w.u32(self.evict_votes.len() as u32);
        for (target, voters) in &self.evict_votes {
            w.fixed(&target.0);
            write_ids(&mut w, voters);
        }
        write_ids(&mut w, &self.end_votes);
        w.u8(u8::from(self.end_requested));
        w.u32(self.deferred_leaves.len() as u32);
        for (id, reason) in &self.deferred_leaves {
            w.fixed(&id.0).u8(leave_code(*reason));
        }
        w.u64(self.ms_term_start);
        w.u32(self.ms_change.len() as u32);
        for reason in &self.ms_change {
            match reason {
                MsChangeReason::MemberLeaving { node, reason } => {
                    w.u8(1).fixed(&node.0).u8(leave_code(*reason))
                }
                MsChangeReason::SizeRule {
                    current_f_ms,
                    wanted_f_ms,
                } => w.u8(2).u32(*current_f_ms).u32(*wanted_f_ms),
                MsChangeReason::Periodic { term_start } => w.u8(3).u64(*term_start),
            };
        }
        match &self.rotation {
            Some(rs) => {
                w.u8(1);
                rs.encode_to(&mut w);
            }
            None => {
                w.u8(0);
            }
        }
        match (self.retired, &self.handed_over_rotation) {
            (Some(e), Some(rs)) => {
                w.u8(1).u64(e);
                rs.encode_to(&mut w);
            }
            _ => {
                w.u8(0);
            }
        }
        w.finish()
    }

    /// Decodes and checks a snapshot produced by [`encode`](Self::encode).
    pub fn decode(buf: &[u8]) -> Result<MembershipState, SnapshotError> {
        let mut r = Reader::new(buf);
        r.expect_tag("ms-snapshot")?;
        let config_bytes = r.bytes("configuration", MAX_SNAPSHOT_CONFIG_BYTES)?;
        let config = Configuration::decode(config_bytes)?;
        let certified = match r.u8("certified")? {
            0 => None,
            1 => Some(r.array::<96>("signature")?),
            _ => return Err(invalid("certified", "must be 0 or 1").into()),
        };
        let agreed_time_ms = r.u64("agreed_time_ms")?;
        let time_reports = read_times(&mut r, "time reports", MAX_MS_MEMBERS)?;
        let not_after = read_times(&mut r, "not_after", MAX_MEMBERS)?;
        let n = r.count("admission", MAX_MEMBERS, 64)?;
        let mut admission = BTreeMap::new();
        for _ in 0..n {
            let id = NodeId(r.array("admitted member")?);
            admission.insert(id, r.array("admission AddCert digest")?);
        }
        let n = r.count("rejoin rights", MAX_REJOINABLE, 72)?;
        let mut rejoinable = BTreeMap::new();
        for _ in 0..n {
            let id = NodeId(r.array("rejoinable node")?);
            rejoinable.insert(
                id,
                Rejoin {
                    add_cert: r.array("rejoin AddCert digest")?,
                    not_after_ms: r.u64("rejoin not_after_ms")?,
                },
            );
        }
        let n = r.count("rejoined members", MAX_MEMBERS, 32)?;
        let mut rejoined = BTreeSet::new();
        for _ in 0..n {
            rejoined.insert(NodeId(r.array("rejoined member")?));
        }
        let floor = r.u64("serial floor")?;
        let n = r.count("used serials", MAX_USED_SERIALS, 8)?;
        let mut used = BTreeSet::new();
        for _ in 0..n {
            used.insert(r.u64("serial")?);
        }
        let n = r.count("pending", MAX_PENDING, 1)?;
        let mut pending = Vec::with_capacity(n);
        for _ in 0..n {
            pending.push(kind_to_change(read_kind(&mut r)?)?);
        }
        let n = r.count(
            "evict votes",
            MAX_MS_MEMBERS * MAX_EVICT_PROPOSALS_PER_REPLICA,
            36,
        )?;
        let mut evict_votes = BTreeMap::new();
        for _ in 0..n {
            let target = NodeId(r.array("evict target")?);
            evict_votes.insert(target, read_ids(&mut r, "evict voters")?);
        }
        let end_votes = read_ids(&mut r, "end votes")?;
        let end_requested = match r.u8("end_requested")? {
            0 => false,
            1 => true,
            _ => return Err(invalid("end_requested", "must be 0 or 1").into()),
        };
        let n = r.count("deferred leaves", MAX_MS_MEMBERS, 33)?;
        let mut deferred_leaves = BTreeMap::new();
        for _ in 0..n {
            let id = NodeId(r.array("deferred leave")?);
            deferred_leaves.insert(id, leave_from(r.u8("leave reason")?)?);
        }
        let ms_term_start = r.u64("ms_term_start")?;
        let n = r.count("ms change reasons", MAX_MS_CHANGE_REASONS, 9)?;
        let mut ms_change = Vec::with_capacity(n);
        for _ in 0..n {
            ms_change.push(match r.u8("ms change kind")? {
                1 => MsChangeReason::MemberLeaving {
                    node: NodeId(r.array("node")?),
                    reason: leave_from(r.u8("leave reason")?)?,
                },
                2 => MsChangeReason::SizeRule {
                    current_f_ms: r.u32("current_f_ms")?,
                    wanted_f_ms: r.u32("wanted_f_ms")?,
                },
                3 => MsChangeReason::Periodic {
                    term_start: r.u64("term_start")?,
                },
                _ => return Err(invalid("ms change kind", "unknown").into()),
            });
        }
        let rotation = match r.u8("rotation")? {
            0 => None,
            1 => Some(RotationState::decode_from(&mut r)?),
            _ => return Err(invalid("rotation", "must be 0 or 1").into()),
        };
        if rotation.as_ref().is_some_and(|rs| !rs.fits(&config)) {
            return Err(invalid("rotation", "does not fit the configuration").into());
        }
        let (retired, handed_over_rotation) = match r.u8("retired")? {
            0 => (None, None),
            1 => {
                let e = r.u64("retired epoch")?;
                let rs = RotationState::decode_from(&mut r)?;
                if !rs.handed_over() {
                    return Err(invalid("retired", "its rotation did not hand over").into());
                }
                (Some(e), Some(rs))
            }
            _ => return Err(invalid("retired", "must be 0 or 1").into()),
        };
        r.finish()?;

        let ms_key =
            ms_public_key(&config).map_err(|_| SnapshotError::Invalid("MS key set malformed"))?;
        let state = MembershipState {
            config_hash: sha256(&[config_bytes]),
            ms_key,
            certified,
            agreed_time_ms,
            time_reports,
            not_after,
            admission,
            rejoinable,
            rejoined,
            serials: SerialWindow { floor, used },
            pending,
            evict_votes,
            end_votes,
            end_requested,
            deferred_leaves,
            ms_term_start,
            ms_change,
            rotation,
            retired,
            handed_over_rotation,
            rejections: [0; REJECTION_CODES],
            config,
        };
        state.check()?;
        if state.encode() != buf {
            return Err(SnapshotError::NotCanonical);
        }
        Ok(state)
    }

    /// Invariants the state machine keeps; a snapshot that breaks one came from a faulty
    /// replica or a bug, and restoring it could wedge the machine.
    fn check(&self) -> Result<(), SnapshotError> {
        let ids: BTreeSet<NodeId> = self.config.members.iter().map(|m| m.node_id()).collect();
        if !self.not_after.keys().eq(ids.iter()) {
            return Err(SnapshotError::Invalid(
                "expiry not recorded for exactly the members",
            ));
        }
        if !self.admission.keys().eq(ids.iter()) {
            return Err(SnapshotError::Invalid(
                "admission not recorded for exactly the members",
            ));
        }
        if self.rejoinable.keys().any(|id| ids.contains(id)) {
            return Err(SnapshotError::Invalid("a member holds a rejoin right"));
        }
        if !self.rejoined.is_subset(&ids) {
            return Err(SnapshotError::Invalid(
                "a node admitted by a rejoin is not a member",
            ));
        }
        let ms: BTreeSet<NodeId> = self.config.ms_members.iter().copied().collect();
        if !self.end_votes.is_subset(&ms)
            || !self.time_reports.keys().all(|id| ms.contains(id))
            || !self
                .deferred_leaves
                .keys()
                .all(|id| ms.contains(id) || self.config.ms_next.contains(id))
            || !self
                .evict_votes
                .values()
                .all(|v| v.is_subset(&ms) && !v.is_empty())
        {
            return Err(SnapshotError::Invalid(
                "a vote or report from a non-MS member",
            ));
        }
        if self
            .serials
            .used
            .first()
            .is_some_and(|s| *s <= self.serials.floor)
        {
            return Err(SnapshotError::Invalid("used serial at or below the floor"));
        }
        if self.ms_term_start > self.config.epoch {
            return Err(SnapshotError::Invalid(
                "MS term starts after the current epoch",
            ));
        }
        if self.rotation.is_some() == self.config.ms_next.is_empty() {
            return Err(SnapshotError::Invalid(
                "a rotation runs exactly while the configuration names a next MS",
            ));
        }
        if self.retired.is_some_and(|e| e != self.config.epoch) {
            return Err(SnapshotError::Invalid(
                "a retired MS stays at its successor's first epoch",
            ));
        }
        if self.end_requested && self.certified.is_some() {
            return Err(SnapshotError::Invalid("end requested although certified"));
        }
        if let Some(sig) = &self.certified {
            let msg = Configuration::signing_bytes(self.config.epoch, &self.config_hash);
            if self.ms_key.verify(&msg, sig).is_err() {
                return Err(SnapshotError::Invalid(
                    "configuration signature does not verify",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn snapshot_decoder_never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
            let _ = MembershipState::decode(&data);
        }

        #[test]
        fn snapshot_decoder_never_panics_past_a_valid_tag(tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
            let mut data = Writer::tagged("ms-snapshot").finish();
            data.extend_from_slice(&tail);
            let _ = MembershipState::decode(&data);
        }
    }
}
