//! What a replica must not forget across a crash, and the operations that update it.
//!
//! A correct replica may never contradict a message it sent (§4.2, §4.4): it must remember
//! the view it moved to, the pre-prepare it accepted (hence prepared) per sequence number, its
//! prepared certificates (it sent commits for them and must show them in view changes), and
//! its stable checkpoint with the state. The engine emits `Action::Persist(op)` *before* any
//! send that depends on `op`; the runtime applies ops in order, durably, before sending on.

use std::collections::BTreeMap;

use super::codec::{DecodeError, Limits, Reader, Writer};
use super::messages::{Batch, CheckpointProof, Digest, PrePrepare, PreparedCert, Signed, Wire};

/// Promises made for one sequence number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PersistedEntry {
    pub seq: u64,
    /// The pre-prepare this replica accepted (and so prepared, or as primary proposed) in the
    /// highest view it did so.
    pub accepted: Option<(Signed<PrePrepare>, Batch)>,
    /// The highest-view prepared certificate; a commit may have been sent for it.
    pub prepared: Option<(PreparedCert, Batch)>,
}

/// A stable checkpoint: the 2f+1 proof and the state bytes it certifies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StableCheckpoint {
    pub proof: CheckpointProof,
    pub state: Vec<u8>,
}

/// One durable update. Apply with [`PersistentState::apply`] (or an equivalent store).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PersistOp {
    /// The replica moved to `view`; `view_changing` means it sent a view-change for it and
    /// has not yet installed it.
    View { view: u64, view_changing: bool },
    /// Replace the promises for `entry.seq`.
    Entry(Box<PersistedEntry>),
    /// A new stable checkpoint: entries at or below its seq may be dropped.
    Stable(Box<StableCheckpoint>),
}

/// Everything [`super::Replica::recover`] needs to restart a replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PersistentState {
    pub view: u64,
    pub view_changing: bool,
    /// Digest of the genesis state; seq-0 checkpoint proofs must name it.
    pub genesis_digest: Digest,
    pub stable: StableCheckpoint,
    pub entries: BTreeMap<u64, PersistedEntry>,
}

impl PersistentState {
    /// Applies one update in place; this is the reference semantics a store must follow.
    pub fn apply(&mut self, op: &PersistOp) {
        match op {
            PersistOp::View {
                view,
                view_changing,
            } => {
                self.view = *view;
                self.view_changing = *view_changing;
            }
            PersistOp::Entry(e) => {
                if e.seq > self.stable.proof.seq {
                    self.entries.insert(e.seq, (**e).clone());
                }
            }
            PersistOp::Stable(s) => {
                if s.proof.seq > self.stable.proof.seq {
                    self.stable = (**s).clone();
                    let keep = self.entries.split_off(&(s.proof.seq + 1));
                    self.entries = keep;
                }
            }
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u64(self.view);
        w.bool(self.view_changing);
        self.genesis_digest.encode_to(&mut w);
        encode_stable(&mut w, &self.stable);
        w.len(self.entries.len());
        for e in self.entries.values() {
            encode_entry(&mut w, e);
        }
        w.bytes
    }

    /// Decodes bytes from disk, with the same limits as network input (disks lie too).
    pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let view = r.u64()?;
        let view_changing = r.bool()?;
        let genesis_digest = Digest::decode_from(&mut r, limits)?;
        let stable = decode_stable(&mut r, limits)?;
        let n = r.len("persisted entries", limits.max_proofs, 9)?;
        let mut entries = BTreeMap::new();
        for _ in 0..n {
            let e = decode_entry(&mut r, limits)?;
            entries.insert(e.seq, e);
        }
        r.finish()?;
        Ok(PersistentState {
            view,
            view_changing,
            genesis_digest,
            stable,
            entries,
        })
    }
}

impl PersistOp {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        match self {
            PersistOp::View {
                view,
                view_changing,
            } => {
                w.u8(1);
                w.u64(*view);
                w.bool(*view_changing);
            }
            PersistOp::Entry(e) => {
                w.u8(2);
                encode_entry(&mut w, e);
            }
            PersistOp::Stable(s) => {
                w.u8(3);
                encode_stable(&mut w, s);
            }
        }
        w.bytes
    }

    pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let op = match r.u8()? {
            1 => PersistOp::View {
                view: r.u64()?,
                view_changing: r.bool()?,
            },
            2 => PersistOp::Entry(Box::new(decode_entry(&mut r, limits)?)),
            3 => PersistOp::Stable(Box::new(decode_stable(&mut r, limits)?)),
            tag => return Err(DecodeError::UnknownTag(tag)),
        };
        r.finish()?;
        Ok(op)
    }
}

fn encode_stable(w: &mut Writer, s: &StableCheckpoint) {
    s.proof.encode_to(w);
    w.var_bytes(&s.state);
}

fn decode_stable(r: &mut Reader<'_>, limits: &Limits) -> Result<StableCheckpoint, DecodeError> {
    Ok(StableCheckpoint {
        proof: CheckpointProof::decode_from(r, limits)?,
        state: r.var_bytes("state bytes", limits.max_state_bytes)?,
    })
}

fn encode_entry(w: &mut Writer, e: &PersistedEntry) {
    w.u64(e.seq);
    match &e.accepted {
        None => w.bool(false),
        Some((pp, b)) => {
            w.bool(true);
            pp.encode_to(w);
            b.encode_to(w);
        }
    }
    match &e.prepared {
        None => w.bool(false),
        Some((c, b)) => {
            w.bool(true);
            c.encode_to(w);
            b.encode_to(w);
        }
    }
}

fn decode_entry(r: &mut Reader<'_>, limits: &Limits) -> Result<PersistedEntry, DecodeError> {
    let seq = r.u64()?;
    let accepted = if r.bool()? {
        Some((
            Signed::decode_from(r, limits)?,
            Batch::decode_from(r, limits)?,
        ))
    } else {
        None
    };
    let prepared = if r.bool()? {
        Some((
            PreparedCert::decode_from(r, limits)?,
            Batch::decode_from(r, limits)?,
        ))
    } else {
        None
    };
    Ok(PersistedEntry {
        seq,
        accepted,
        prepared,
    })
}
