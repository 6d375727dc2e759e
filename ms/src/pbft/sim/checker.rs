//! Safety checks run on every action of every correct replica.
//!
//! - Agreement: no two correct replicas execute different batches at the same seq.
//! - Prefixes: each correct replica executes seqs contiguously (a state transfer may skip
//!   ahead, but only to a state equal to the one other correct replicas certified).
//! - Persist before send: a message that carries a promise leaves only after the promise is
//!   in the persisted state (openraft's rule, §4.2/§4.4 of the paper for what is promised).

use std::collections::BTreeMap;

use crate::pbft::{Digest, Message, PersistentState, ReplicaId};

#[derive(Default)]
pub struct SafetyChecker {
    executed: BTreeMap<u64, (Digest, ReplicaId)>,
    checkpoints: BTreeMap<u64, (Digest, ReplicaId)>,
    last_executed: BTreeMap<ReplicaId, u64>,
}

impl SafetyChecker {
    pub fn reset_replica(&mut self, id: ReplicaId, executed: u64) {
        self.last_executed.insert(id, executed);
    }

    pub fn on_executed(&mut self, id: ReplicaId, seq: u64, digest: Digest) -> Result<(), String> {
        let last = self.last_executed.entry(id).or_insert(0);
        if seq != *last + 1 {
            return Err(format!(
                "replica {id} executed seq {seq} right after seq {last}: executed prefix has a gap"
            ));
        }
        *last = seq;
        match self.executed.get(&seq) {
            Some((d, other)) if *d != digest => Err(format!(
                "replicas {other} and {id} executed different batches at seq {seq}"
            )),
            Some(_) => Ok(()),
            None => {
                self.executed.insert(seq, (digest, id));
                Ok(())
            }
        }
    }

    /// A correct replica signed a checkpoint: its state digest at `seq`.
    pub fn on_checkpoint(&mut self, id: ReplicaId, seq: u64, digest: Digest) -> Result<(), String> {
        match self.checkpoints.get(&seq) {
            Some((d, other)) if *d != digest => Err(format!(
                "replicas {other} and {id} have different states after seq {seq}"
            )),
            Some(_) => Ok(()),
            None => {
                self.checkpoints.insert(seq, (digest, id));
                Ok(())
            }
        }
    }

    pub fn on_restored(&mut self, id: ReplicaId, seq: u64, digest: Digest) -> Result<(), String> {
        let last = self.last_executed.entry(id).or_insert(0);
        if seq <= *last {
            return Err(format!(
                "replica {id} restored seq {seq} at or below {last}"
            ));
        }
        *last = seq;
        self.on_checkpoint(id, seq, digest)
    }

    pub fn max_executed(&self) -> u64 {
        self.executed.keys().next_back().copied().unwrap_or(0)
    }
}

/// Checks that everything `msg` (sent by `me`) promises is already in `p`.
pub fn promise_is_durable(me: ReplicaId, msg: &Message, p: &PersistentState) -> Result<(), String> {
    let h = p.stable.proof.seq;
    // A slot promise (view, seq, digest) is covered when the persisted entry holds it, or when
    // the slot was since truncated below the stable checkpoint.
    let accepted_covered = |view: u64, seq: u64, digest: Digest| {
        seq <= h
            || p.entries.get(&seq).is_some_and(|e| {
                e.accepted.as_ref().is_some_and(|(pp, _)| {
                    pp.body.view > view || (pp.body.view == view && pp.body.digest == digest)
                })
            })
    };
    let fail = |what: String| Err(format!("replica {me} sent {what} before persisting it"));
    match msg {
        Message::PrePrepare { pre_prepare, .. } if pre_prepare.signer == me => {
            let b = pre_prepare.body;
            if !accepted_covered(b.view, b.seq, b.digest) {
                return fail(format!("pre-prepare v{} n{}", b.view, b.seq));
            }
        }
        Message::Prepare(pr) if pr.signer == me => {
            let b = pr.body;
            if !accepted_covered(b.view, b.seq, b.digest) {
                return fail(format!("prepare v{} n{}", b.view, b.seq));
            }
        }
        Message::Commit(c) if c.signer == me => {
            let b = c.body;
            let ok = b.seq <= h
                || p.entries.get(&b.seq).is_some_and(|e| {
                    e.prepared.as_ref().is_some_and(|(cert, _)| {
                        let v = cert.pre_prepare.body.view;
                        v > b.view || (v == b.view && cert.pre_prepare.body.digest == b.digest)
                    })
                });
            if !ok {
                return fail(format!("commit v{} n{}", b.view, b.seq));
            }
        }
        Message::ViewChange { view_change, .. }
            if view_change.signer == me && p.view < view_change.body.new_view =>
        {
            return fail(format!(
                "view-change for view {}",
                view_change.body.new_view
            ));
        }
        Message::NewView { new_view, .. } if new_view.signer == me => {
            if p.view < new_view.body.view {
                return fail(format!("new-view for view {}", new_view.body.view));
            }
            for pp in &new_view.body.pre_prepares {
                let b = pp.body;
                if !accepted_covered(b.view, b.seq, b.digest) {
                    return fail(format!("new-view pre-prepare v{} n{}", b.view, b.seq));
                }
            }
        }
        _ => {}
    }
    Ok(())
}
