//! Catching up (§4.3 state transfer, Castro's thesis §5.2–5.3): replicas broadcast their
//! status; a peer that is ahead answers with committed batches (each with its commit
//! certificate) or, when the laggard is below its low watermark, with the stable checkpoint
//! state and its 2f+1 proof. Everything received is verified; nothing is taken on trust.

use std::collections::BTreeSet;

use super::app::Application;
use super::messages::{CommittedBatch, Message, ReplicaId, Signed, StateTransfer, Status};
use super::persist::StableCheckpoint;
use super::replica::{Action, Replica};
use super::state::{decode_state, state_digest};

impl<A: Application> Replica<A> {
    pub(crate) fn on_status(&mut self, from: ReplicaId, s: Signed<Status>, out: &mut Vec<Action>) {
        if s.signer != from {
            self.errors.wrong_sender += 1;
            return;
        }
        if !self.verify(&s) {
            self.errors.bad_signature += 1;
            return;
        }
        let st = s.body;
        let behind = st.last_executed < self.last_executed;
        let old_view = st.view < self.view && !self.view_changing && self.new_view.is_some();
        if !(behind || old_view) || !self.may_help(from) {
            return;
        }
        if old_view && let Some((nv, batches)) = self.new_view.clone() {
            out.push(Action::Send {
                to: from,
                msg: Message::NewView {
                    new_view: nv,
                    batches,
                },
            });
        }
        if !behind {
            return;
        }
        let h = self.stable.proof.seq;
        let mut next = st.last_executed + 1;
        if st.last_executed < h {
            let last = self.last_state_transfer_ms[from as usize];
            if last.is_some_and(|t| self.now_ms < t + self.cfg.state_transfer_interval_ms) {
                return;
            }
            self.last_state_transfer_ms[from as usize] = Some(self.now_ms);
            let msg = Message::StateTransfer(self.sign(StateTransfer {
                proof: self.stable.proof.clone(),
                state: self.stable.state.clone(),
            }));
            out.push(Action::Send { to: from, msg });
            next = h + 1;
        }
        let end = self
            .last_executed
            .min(next.saturating_add(self.cfg.max_catchup_batches - 1));
        for seq in next..=end {
            let Some((commits, batch)) = self.log.get(&seq).and_then(|e| e.committed.clone())
            else {
                break;
            };
            let msg = Message::CommittedBatch(self.sign(CommittedBatch { batch, commits }));
            out.push(Action::Send { to: from, msg });
        }
    }

    pub(crate) fn on_committed_batch(
        &mut self,
        from: ReplicaId,
        cb: Signed<CommittedBatch>,
        out: &mut Vec<Action>,
    ) {
        if cb.signer != from {
            self.errors.wrong_sender += 1;
            return;
        }
        let Some(first) = cb.body.commits.first().map(|c| c.body) else {
            self.errors.invalid_proof += 1;
            return;
        };
        let seq = first.seq;
        if seq <= self.last_executed || self.log.get(&seq).is_some_and(|e| e.committed.is_some()) {
            self.errors.duplicate += 1;
            return;
        }
        if !self.in_window(seq) {
            self.errors.out_of_window += 1;
            return;
        }
        if !self.verify(&cb) {
            self.errors.bad_signature += 1;
            return;
        }
        let body = cb.body;
        let lim = &self.cfg.limits;
        if body.batch.requests.len() > lim.max_batch_requests
            || body.batch.op_bytes() > lim.max_batch_bytes
        {
            self.errors.oversized += 1;
            return;
        }
        if body.batch.digest() != first.digest {
            self.errors.bad_digest += 1;
            return;
        }
        // A commit certificate: 2f+1 distinct replicas committed the same (view, seq, digest).
        let mut signers = BTreeSet::new();
        let cert_ok = body.commits.len() >= self.cfg.quorum()
            && body.commits.len() <= self.cfg.n()
            && body
                .commits
                .iter()
                .all(|c| c.body == first && signers.insert(c.signer) && self.verify(c));
        if !cert_ok {
            self.errors.invalid_proof += 1;
            return;
        }
        self.log.entry(seq).or_default().committed = Some((body.commits, body.batch));
        self.try_execute(out);
    }

    pub(crate) fn on_state_transfer(
        &mut self,
        from: ReplicaId,
        st: Signed<StateTransfer>,
        out: &mut Vec<Action>,
    ) {
        if st.signer != from {
            self.errors.wrong_sender += 1;
            return;
        }
        let seq = st.body.proof.seq;
        if seq <= self.last_executed {
            self.errors.stale += 1;
            return;
        }
        if !self.verify(&st) {
            self.errors.bad_signature += 1;
            return;
        }
        if !self.checkpoint_proof_is_valid(&st.body.proof) {
            self.errors.invalid_proof += 1;
            return;
        }
        if state_digest(&st.body.state) != st.body.proof.state_digest {
            self.errors.bad_digest += 1;
            return;
        }
        let Ok((clients, app_snapshot)) =
            decode_state(&st.body.state, &self.cfg.limits, self.cfg.max_clients)
        else {
            self.errors.restore_failed += 1;
            return;
        };
        if self.app.restore(app_snapshot).is_err() {
            self.errors.restore_failed += 1;
            return;
        }
        self.clients = clients;
        self.last_executed = seq;
        self.next_seq = self.next_seq.max(seq + 1);
        let digest = st.body.proof.state_digest;
        let stale: Vec<_> = self
            .pending
            .keys()
            .filter(|(c, n)| self.clients.get(c).is_some_and(|r| r.request_num >= *n))
            .copied()
            .collect();
        for k in stale {
            self.pending.remove(&k);
        }
        out.push(Action::StateRestored {
            seq,
            state_digest: digest,
        });
        self.make_stable(
            StableCheckpoint {
                proof: st.body.proof,
                state: st.body.state,
            },
            out,
        );
        // The state a waiting new-view needed at its min-s (§4.4) may have arrived.
        self.resume_view_change(out);
        self.try_execute(out);
    }
}
