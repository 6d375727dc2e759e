//! Checkpoints and garbage collection (§4.3): every K sequence numbers a replica signs the
//! digest of its state; 2f+1 matching signatures make the checkpoint stable, which moves the
//! low watermark and discards the log below it. This keeps memory and disk bounded.

use std::collections::BTreeSet;

use super::app::Application;
use super::messages::{Checkpoint, CheckpointProof, Message, ReplicaId, Signed};
use super::persist::{PersistOp, StableCheckpoint};
use super::replica::{Action, Replica};
use super::state::{encode_state, state_digest};

impl<A: Application> Replica<A> {
    pub(crate) fn take_checkpoint(&mut self, seq: u64, out: &mut Vec<Action>) {
        let state = encode_state(&self.clients, &self.app.snapshot());
        let digest = state_digest(&state);
        self.own_checkpoints.insert(seq, (digest, state));
        let vote = self.sign(Checkpoint {
            seq,
            state_digest: digest,
        });
        self.checkpoint_votes
            .entry(seq)
            .or_default()
            .insert(self.cfg.me, vote.clone());
        out.push(Action::Broadcast {
            msg: Message::Checkpoint(vote),
        });
        self.check_stable(seq, out);
        // Our own checkpoint may be the state a waiting new-view needs at its min-s.
        self.resume_view_change(out);
    }

    pub(crate) fn on_checkpoint(
        &mut self,
        from: ReplicaId,
        c: Signed<Checkpoint>,
        out: &mut Vec<Action>,
    ) {
        let seq = c.body.seq;
        if c.signer != from {
            self.errors.wrong_sender += 1;
            return;
        }
        if seq <= self.stable.proof.seq {
            self.errors.stale += 1;
            return;
        }
        if !self.in_window(seq) || !seq.is_multiple_of(self.cfg.checkpoint_interval_seqs) {
            // Bounded buffering: votes beyond the window are dropped; a replica that far
            // behind catches up through status and state transfer instead.
            self.errors.out_of_window += 1;
            return;
        }
        if let Some(old) = self
            .checkpoint_votes
            .get(&seq)
            .and_then(|v| v.get(&c.signer))
        {
            if old.body == c.body {
                self.errors.duplicate += 1;
            } else {
                self.errors.conflicting += 1;
            }
            return;
        }
        if !self.verify(&c) {
            self.errors.bad_signature += 1;
            return;
        }
        self.checkpoint_votes
            .entry(seq)
            .or_default()
            .insert(c.signer, c);
        self.check_stable(seq, out);
        self.resume_view_change(out);
    }

    /// A checkpoint is stable once 2f+1 replicas (us included) signed our own digest.
    fn check_stable(&mut self, seq: u64, out: &mut Vec<Action>) {
        let Some((digest, _)) = self.own_checkpoints.get(&seq) else {
            return;
        };
        let digest = *digest;
        let Some(votes) = self.checkpoint_votes.get(&seq) else {
            return;
        };
        let matching: Vec<Signed<Checkpoint>> = votes
            .values()
            .filter(|v| v.body.state_digest == digest)
            .take(self.cfg.quorum())
            .cloned()
            .collect();
        if matching.len() < self.cfg.quorum() {
            let others = votes
                .values()
                .filter(|v| v.body.state_digest != digest)
                .count();
            if others >= self.cfg.quorum() {
                // 2f+1 replicas agree on a state we do not have: ours is corrupt.
                self.errors.state_mismatch += 1;
            }
            return;
        }
        let Some((_, state)) = self.own_checkpoints.remove(&seq) else {
            return;
        };
        let proof = CheckpointProof {
            seq,
            state_digest: digest,
            votes: matching,
        };
        self.make_stable(StableCheckpoint { proof, state }, out);
    }

    /// Moves the low watermark to the new stable checkpoint and truncates (§4.3).
    pub(crate) fn make_stable(&mut self, stable: StableCheckpoint, out: &mut Vec<Action>) {
        let seq = stable.proof.seq;
        if seq <= self.stable.proof.seq {
            return;
        }
        out.push(Action::Persist(PersistOp::Stable(Box::new(stable.clone()))));
        self.stable = stable;
        self.log = self.log.split_off(&(seq + 1));
        self.own_checkpoints = self.own_checkpoints.split_off(&(seq + 1));
        self.checkpoint_votes = self.checkpoint_votes.split_off(&(seq + 1));
        self.try_propose(out);
    }

    /// A proof names 2f+1 distinct replicas that signed the same (seq, digest); the genesis
    /// checkpoint is the one exception and must carry the genesis digest.
    pub(crate) fn checkpoint_proof_is_valid(&self, proof: &CheckpointProof) -> bool {
        if proof.seq == 0 {
            return proof.votes.is_empty() && proof.state_digest == self.genesis_digest;
        }
        if !proof.seq.is_multiple_of(self.cfg.checkpoint_interval_seqs)
            || proof.votes.len() < self.cfg.quorum()
            || proof.votes.len() > self.cfg.n()
        {
            return false;
        }
        let mut signers = BTreeSet::new();
        proof.votes.iter().all(|v| {
            v.body.seq == proof.seq
                && v.body.state_digest == proof.state_digest
                && signers.insert(v.signer)
                && self.verify(v)
        })
    }
}
