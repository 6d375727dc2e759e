//! View changes (§4.4) with signed, transferable proofs, and their liveness rules (§4.5.2).
//!
//! Safety rests on one rule: if a batch committed at seq n in some view, then f+1 correct
//! replicas hold a prepared certificate for it, any 2f+1 view-change messages include at
//! least one of them, and the new primary re-proposes the highest-view certificate per seq.
//! Backups recompute the new primary's choice from the same view-change messages. Seqs at or
//! below the new-view's min-s are settled by its stable checkpoint instead, so a replica
//! enters the new view only with its stable checkpoint at or above min-s (fetching the state
//! first if it lacks it): no pre-prepare at or below min-s is ever accepted in the new view
//! (PROTOCOL.md, "Membership service"; issue 20, defect 2).

use std::collections::{BTreeMap, BTreeSet};

use super::app::Application;
use super::messages::{
    Batch, CheckpointProof, Digest, Message, NewView, PrePrepare, PreparedCert, ReplicaId, Signed,
    ViewChange,
};
use super::persist::{PersistOp, StableCheckpoint};
use super::replica::{Action, Replica};

/// What the new primary must pre-prepare: computed identically by primary and backups.
pub(crate) struct Plan {
    /// min-s: the latest stable checkpoint among the view-change messages.
    pub stable: CheckpointProof,
    /// For every seq in (min-s, max-s]: the digest to re-propose (the null batch for gaps).
    pub slots: Vec<(u64, Digest)>,
}

/// A verified new-view this replica cannot install yet: the state at its min-s is missing.
pub(crate) struct WaitingNewView {
    pub new_view: Signed<NewView>,
    pub batches: Vec<Batch>,
    pub plan: Plan,
    pub slots: Vec<(Signed<PrePrepare>, Batch)>,
}

/// The O-set computation of §4.4 over a set of valid view-change messages.
pub(crate) fn plan_new_view(vcs: &[Signed<ViewChange>]) -> Option<Plan> {
    let stable = vcs
        .iter()
        .map(|v| &v.body.stable)
        .fold(None::<&CheckpointProof>, |best, p| match best {
            Some(b) if b.seq >= p.seq => Some(b),
            _ => Some(p),
        })?
        .clone();
    let min_s = stable.seq;
    let mut best: BTreeMap<u64, (u64, Digest)> = BTreeMap::new();
    for vc in vcs {
        for cert in &vc.body.prepared {
            let b = cert.pre_prepare.body;
            if b.seq <= min_s {
                continue;
            }
            let slot = best.entry(b.seq).or_insert((b.view, b.digest));
            // Highest view wins; equal views with different digests cannot both be prepared
            // by correct replicas, but the tie-break keeps the choice deterministic anyway.
            if (b.view, std::cmp::Reverse(b.digest)) > (slot.0, std::cmp::Reverse(slot.1)) {
                *slot = (b.view, b.digest);
            }
        }
    }
    let max_s = best.keys().next_back().copied().unwrap_or(min_s);
    let null = Batch::default().digest();
    let slots = (min_s + 1..=max_s)
        .map(|s| (s, best.get(&s).map_or(null, |x| x.1)))
        .collect();
    Some(Plan { stable, slots })
}

impl<A: Application> Replica<A> {
    /// Our view-change message for `view`: stable checkpoint proof plus, per seq above it,
    /// the highest-view prepared certificate we hold, with the batches beside it.
    pub(crate) fn build_view_change(&self, view: u64) -> (Signed<ViewChange>, Vec<Batch>) {
        let h = self.stable.proof.seq;
        let mut prepared = Vec::new();
        let mut batches: Vec<Batch> = Vec::new();
        let mut digests = BTreeSet::new();
        for (_, e) in self.log.range(h + 1..) {
            if let Some((cert, batch)) = &e.prepared {
                prepared.push(cert.clone());
                if digests.insert(cert.pre_prepare.body.digest) && !batch.requests.is_empty() {
                    batches.push(batch.clone());
                }
            }
        }
        let vc = self.sign(ViewChange {
            new_view: view,
            stable: self.stable.proof.clone(),
            prepared,
        });
        (vc, batches)
    }

    /// Moves to `new_view` and multicasts a view-change (§4.4). The new view is persisted
    /// first: after a crash we must not act in the old view again.
    pub(crate) fn start_view_change(&mut self, new_view: u64, out: &mut Vec<Action>) {
        if new_view <= self.view {
            return;
        }
        self.view = new_view;
        self.view_changing = true;
        self.view_change_deadline_ms = None;
        self.request_deadline_ms = None;
        self.new_view = None;
        self.waiting_new_view = None;
        for e in self.log.values_mut() {
            e.clear_votes();
        }
        out.push(Action::Persist(PersistOp::View {
            view: new_view,
            view_changing: true,
        }));
        let (vc, batches) = self.build_view_change(new_view);
        self.view_changes
            .insert(self.cfg.me, (vc.clone(), batches.clone()));
        out.push(Action::Broadcast {
            msg: Message::ViewChange {
                view_change: vc,
                batches,
            },
        });
        self.after_view_change_stored(out);
    }

    pub(crate) fn on_view_change(
        &mut self,
        from: ReplicaId,
        vc: Signed<ViewChange>,
        batches: Vec<Batch>,
        out: &mut Vec<Action>,
    ) {
        let v = vc.body.new_view;
        if vc.signer != from {
            self.errors.wrong_sender += 1;
            return;
        }
        if v < self.view {
            self.errors.stale += 1;
            return;
        }
        if v == self.view && !self.view_changing {
            // The sender missed the new-view that installed our view: forward it.
            self.errors.stale += 1;
            if let Some((nv, b)) = self.new_view.clone()
                && self.may_help(from)
            {
                out.push(Action::Send {
                    to: from,
                    msg: Message::NewView {
                        new_view: nv,
                        batches: b,
                    },
                });
            }
            return;
        }
        if let Some((old, _)) = self.view_changes.get(&from)
            && old.body.new_view >= v
        {
            self.errors.duplicate += 1;
            return;
        }
        if !self.verify(&vc) {
            self.errors.bad_signature += 1;
            return;
        }
        if !self.view_change_proofs_are_valid(&vc.body) {
            self.errors.invalid_proof += 1;
            return;
        }
        let Some(batches) = self.attachments_for(&vc.body, &batches) else {
            self.errors.bad_digest += 1;
            return;
        };
        self.view_changes.insert(from, (vc, batches));
        self.after_view_change_stored(out);
    }

    /// The batches a view-change must carry: one per non-null prepared digest.
    fn attachments_for(&self, vc: &ViewChange, batches: &[Batch]) -> Option<Vec<Batch>> {
        let by_digest: BTreeMap<Digest, &Batch> = batches.iter().map(|b| (b.digest(), b)).collect();
        let null = Batch::default().digest();
        let mut needed = BTreeSet::new();
        let mut out = Vec::new();
        for cert in &vc.prepared {
            let d = cert.pre_prepare.body.digest;
            if d == null || !needed.insert(d) {
                continue;
            }
            out.push((*by_digest.get(&d)?).clone());
        }
        Some(out)
    }

    /// Checks the checkpoint proof and every prepared certificate (signatures included).
    pub(crate) fn view_change_proofs_are_valid(&self, vc: &ViewChange) -> bool {
        if !self.checkpoint_proof_is_valid(&vc.stable) {
            return false;
        }
        let h = vc.stable.seq;
        if vc.prepared.len() as u64 > self.cfg.log_window_seqs {
            return false;
        }
        let mut seqs = BTreeSet::new();
        vc.prepared.iter().all(|cert| {
            let s = cert.pre_prepare.body.seq;
            s > h
                && s <= h.saturating_add(self.cfg.log_window_seqs)
                && seqs.insert(s)
                && self.prepared_cert_is_valid(cert, vc.new_view)
        })
    }

    fn prepared_cert_is_valid(&self, cert: &PreparedCert, new_view: u64) -> bool {
        let pp = &cert.pre_prepare;
        let primary = self.cfg.primary(pp.body.view);
        if pp.body.view >= new_view
            || pp.signer != primary
            || cert.prepares.len() < 2 * self.cfg.f()
            || cert.prepares.len() > self.cfg.n()
        {
            return false;
        }
        let mut signers = BTreeSet::new();
        let votes_ok = cert.prepares.iter().all(|p| {
            p.body.view == pp.body.view
                && p.body.seq == pp.body.seq
                && p.body.digest == pp.body.digest
                && p.signer != primary
                && signers.insert(p.signer)
        });
        votes_ok && self.verify(pp) && cert.prepares.iter().all(|p| self.verify(p))
    }

    /// Liveness rules of §4.5.2 after a view-change was recorded.
    fn after_view_change_stored(&mut self, out: &mut Vec<Action>) {
        let f = self.cfg.f();
        let me = self.cfg.me;
        // Join rule: f+1 replicas want a higher view, so at least one correct one does.
        let mut higher: Vec<u64> = self
            .view_changes
            .iter()
            .filter(|(id, _)| **id != me)
            .map(|(_, (vc, _))| vc.body.new_view)
            .filter(|v| *v > self.view)
            .collect();
        if higher.len() > f {
            higher.sort_unstable_by(|a, b| b.cmp(a));
            let target = higher[f];
            self.start_view_change(target, out);
            return;
        }
        if !self.view_changing {
            return;
        }
        let count = self
            .view_changes
            .values()
            .filter(|(vc, _)| vc.body.new_view == self.view)
            .count();
        if count < self.cfg.quorum() {
            return;
        }
        if self.view_change_deadline_ms.is_none() {
            self.view_change_deadline_ms = Some(self.now_ms + self.view_change_timeout_ms);
        }
        if self.cfg.primary(self.view) == me {
            self.send_new_view(out);
        }
    }

    /// Finds a batch by digest among `extra` and our own log.
    fn find_batch(&self, digest: Digest, extra: &[&Batch]) -> Option<Batch> {
        if digest == Batch::default().digest() {
            return Some(Batch::default());
        }
        if let Some(b) = extra.iter().find(|b| b.digest() == digest) {
            return Some((*b).clone());
        }
        self.log.values().find_map(|e| {
            [
                e.accepted.as_ref().map(|(pp, b)| (pp.body.digest, b)),
                e.prepared
                    .as_ref()
                    .map(|(c, b)| (c.pre_prepare.body.digest, b)),
                e.committed.as_ref().map(|(c, b)| (c[0].body.digest, b)),
            ]
            .into_iter()
            .flatten()
            .find(|(d, _)| *d == digest)
            .map(|(_, b)| b.clone())
        })
    }

    /// The new primary's part of §4.4: pick 2f+1 view-changes, compute O, persist, multicast.
    fn send_new_view(&mut self, out: &mut Vec<Action>) {
        let view = self.view;
        let me = self.cfg.me;
        // Our own view-change first, then the others; among those, first the ones whose
        // stable checkpoint we hold (min-s is the highest in the set, and we need its state
        // before we may send the new-view), then by replica id. Any 2f+1 valid view-changes
        // make a safe new-view (§4.4); this choice only spares a fetch, or a state that no
        // correct replica holds any more.
        let mut others: Vec<(bool, ReplicaId)> = self
            .view_changes
            .iter()
            .filter(|(id, (vc, _))| **id != me && vc.body.new_view == view)
            .map(|(id, (vc, _))| (!self.holds_checkpoint(&vc.body.stable), *id))
            .collect();
        others.sort_unstable();
        let mut chosen: Vec<ReplicaId> = Vec::new();
        if self.view_changes.contains_key(&me) {
            chosen.push(me);
        }
        chosen.extend(others.into_iter().map(|(_, id)| id));
        chosen.truncate(self.cfg.quorum());
        let vcs: Vec<Signed<ViewChange>> = chosen
            .iter()
            .filter_map(|id| self.view_changes.get(id))
            .map(|(vc, _)| vc.clone())
            .collect();
        if vcs.len() < self.cfg.quorum() || vcs[0].body.new_view != view {
            return;
        }
        let Some(plan) = plan_new_view(&vcs) else {
            return;
        };
        // PROTOCOL.md, "Membership service" (§4.4): the new view starts at min-s, so the new
        // primary needs the state at min-s before it sends the new-view; it fetches it first
        // (catch-up answers our status) and comes back here once it has it.
        if !self.reach_low_watermark(&plan.stable, out) {
            self.next_status_ms = self.now_ms;
            return;
        }
        let extra: Vec<&Batch> = chosen
            .iter()
            .filter_map(|id| self.view_changes.get(id))
            .flat_map(|(_, b)| b.iter())
            .collect();
        let mut slots = Vec::with_capacity(plan.slots.len());
        for (seq, digest) in &plan.slots {
            let Some(batch) = self.find_batch(*digest, &extra) else {
                // Attachments were checked on receipt, so this is unreachable in practice;
                // refusing is safe (the view change times out and moves on).
                self.errors.bad_digest += 1;
                return;
            };
            let pp = self.sign(PrePrepare {
                view,
                seq: *seq,
                digest: *digest,
            });
            slots.push((pp, batch));
        }
        let nv = self.sign(NewView {
            view,
            view_changes: vcs,
            pre_prepares: slots.iter().map(|(pp, _)| pp.clone()).collect(),
        });
        let mut attachments: Vec<Batch> = Vec::new();
        for (_, b) in &slots {
            if !b.requests.is_empty() && !attachments.contains(b) {
                attachments.push(b.clone());
            }
        }
        // Promises first: the new view, and every pre-prepare the new-view carries.
        out.push(Action::Persist(PersistOp::View {
            view,
            view_changing: false,
        }));
        for (pp, batch) in &slots {
            let seq = pp.body.seq;
            if self.in_window(seq) {
                let e = self.log.entry(seq).or_default();
                e.clear_votes();
                e.accepted = Some((pp.clone(), batch.clone()));
                self.persist_entry(seq, out);
            }
        }
        out.push(Action::Broadcast {
            msg: Message::NewView {
                new_view: nv.clone(),
                batches: attachments.clone(),
            },
        });
        self.install_new_view(nv, attachments, &plan, slots, out);
        self.try_propose(out);
    }

    pub(crate) fn on_new_view(
        &mut self,
        nv: Signed<NewView>,
        batches: Vec<Batch>,
        out: &mut Vec<Action>,
    ) {
        let v = nv.body.view;
        // Any replica may relay a new-view: it is self-certifying.
        if nv.signer != self.cfg.primary(v) {
            self.errors.wrong_sender += 1;
            return;
        }
        if v < self.view || (v == self.view && !self.view_changing) {
            self.errors.stale += 1;
            return;
        }
        if v == self.view
            && self
                .waiting_new_view
                .as_ref()
                .is_some_and(|w| w.new_view.body.view == v)
        {
            // We hold a valid new-view for this view already and wait for its min-s state.
            self.errors.duplicate += 1;
            return;
        }
        if !self.verify(&nv) {
            self.errors.bad_signature += 1;
            return;
        }
        let vcs = &nv.body.view_changes;
        let mut signers = BTreeSet::new();
        let vcs_ok = vcs.len() >= self.cfg.quorum()
            && vcs.len() <= self.cfg.n()
            && vcs.iter().all(|vc| {
                vc.body.new_view == v
                    && signers.insert(vc.signer)
                    && self.verify(vc)
                    && self.view_change_proofs_are_valid(&vc.body)
            });
        let Some(plan) = vcs_ok.then(|| plan_new_view(vcs)).flatten() else {
            self.errors.invalid_proof += 1;
            return;
        };
        // Backups recompute O and accept only the same pre-prepares (§4.4).
        let pps = &nv.body.pre_prepares;
        let primary = self.cfg.primary(v);
        let o_ok = pps.len() == plan.slots.len()
            && pps.iter().zip(&plan.slots).all(|(pp, (seq, d))| {
                pp.signer == primary
                    && pp.body
                        == PrePrepare {
                            view: v,
                            seq: *seq,
                            digest: *d,
                        }
                    && self.verify(pp)
            });
        if !o_ok {
            self.errors.invalid_proof += 1;
            return;
        }
        let extra: Vec<&Batch> = batches.iter().collect();
        let mut slots = Vec::with_capacity(pps.len());
        for pp in pps {
            let Some(batch) = self.find_batch(pp.body.digest, &extra) else {
                self.errors.bad_digest += 1;
                return;
            };
            slots.push((pp.clone(), batch));
        }
        let waiting = WaitingNewView {
            new_view: nv,
            batches,
            plan,
            slots,
        };
        if !self.reach_low_watermark(&waiting.plan.stable, out) {
            self.wait_for_min_s(waiting, out);
            return;
        }
        self.enter_new_view(waiting, out);
    }

    /// PROTOCOL.md, "Membership service" (§4.4): on NEW-VIEW the low watermark becomes
    /// min-s. Returns whether our stable checkpoint is at or above `min_s` now: it already
    /// was, or we hold our own checkpoint at min-s with the proven digest and make it stable.
    /// Otherwise the state at min-s must be fetched before we may enter the view.
    pub(crate) fn reach_low_watermark(
        &mut self,
        min_s: &CheckpointProof,
        out: &mut Vec<Action>,
    ) -> bool {
        if min_s.seq <= self.stable.proof.seq {
            return true;
        }
        if !self.holds_checkpoint(min_s) {
            return false;
        }
        let Some((_, state)) = self.own_checkpoints.remove(&min_s.seq) else {
            return false;
        };
        self.make_stable(
            StableCheckpoint {
                proof: min_s.clone(),
                state,
            },
            out,
        );
        true
    }

    /// Whether the state a checkpoint proof certifies is ours: our stable checkpoint is at or
    /// above it, or it is one of our own checkpoints with the same digest.
    fn holds_checkpoint(&self, proof: &CheckpointProof) -> bool {
        proof.seq <= self.stable.proof.seq
            || self
                .own_checkpoints
                .get(&proof.seq)
                .is_some_and(|(d, _)| *d == proof.state_digest)
    }

    /// We hold a valid new-view for `view` but not the state at its min-s. Entering the
    /// view now would leave every seq in (h, min-s] open to a pre-prepare of the new view
    /// that no new-view certified (issue 20, defect 2); so we stay changing view (persisted
    /// as such: after a restart we are still outside the view), accept no pre-prepare of
    /// it, and fetch the state through catch-up: our next status makes a peer whose stable
    /// checkpoint is ahead send it (`on_status`). `resume_view_change` enters the view once
    /// the state is ours.
    fn wait_for_min_s(&mut self, waiting: WaitingNewView, out: &mut Vec<Action>) {
        let v = waiting.new_view.body.view;
        if v > self.view {
            // A new-view for a view we had not reached: join that view change first.
            self.start_view_change(v, out);
        }
        if self.view != v || !self.view_changing {
            return;
        }
        // The view-change timer keeps running (§4.5.2): if no correct replica can give us the
        // state at min-s in time (unstable checkpoints do not survive a restart, so the
        // only holder may be faulty), we move on to a view whose new-view we can enter.
        if self.view_change_deadline_ms.is_none() {
            self.view_change_deadline_ms = Some(self.now_ms + self.view_change_timeout_ms);
        }
        self.next_status_ms = self.now_ms;
        self.waiting_new_view = Some(waiting);
    }

    /// Called whenever our stable checkpoint or our own checkpoints moved on: enters a view
    /// whose new-view waited for the state at its min-s, or (as the new primary) sends the
    /// new-view it held back for the same reason.
    pub(crate) fn resume_view_change(&mut self, out: &mut Vec<Action>) {
        if !self.view_changing {
            self.waiting_new_view = None;
            return;
        }
        if let Some(waiting) = self.waiting_new_view.take() {
            if waiting.new_view.body.view != self.view {
                return;
            }
            if self.reach_low_watermark(&waiting.plan.stable, out) {
                self.enter_new_view(waiting, out);
            } else {
                self.waiting_new_view = Some(waiting);
            }
        } else if self.is_primary() {
            self.send_new_view(out);
        }
    }

    /// Installs a verified new-view once our stable checkpoint is at or above its min-s.
    fn enter_new_view(&mut self, waiting: WaitingNewView, out: &mut Vec<Action>) {
        let WaitingNewView {
            new_view,
            batches,
            plan,
            slots,
        } = waiting;
        out.push(Action::Persist(PersistOp::View {
            view: new_view.body.view,
            view_changing: false,
        }));
        self.install_new_view(new_view, batches, &plan, slots, out);
        self.try_propose(out);
    }

    /// Enters the new view: accept (and, as backups, prepare) the re-proposed pre-prepares,
    /// and push waiting requests to the new primary. Our stable checkpoint is at or above
    /// min-s already (`reach_low_watermark`), so the window (h, h+L] holds no seq at or below
    /// min-s: no pre-prepare there can be accepted in this view (§4.4).
    fn install_new_view(
        &mut self,
        nv: Signed<NewView>,
        batches: Vec<Batch>,
        plan: &Plan,
        slots: Vec<(Signed<PrePrepare>, Batch)>,
        out: &mut Vec<Action>,
    ) {
        let v = nv.body.view;
        self.view = v;
        self.view_changing = false;
        self.view_change_deadline_ms = None;
        for e in self.log.values_mut() {
            e.clear_votes();
        }
        self.view_changes.retain(|_, (vc, _)| vc.body.new_view > v);
        self.new_view = Some((nv, batches));
        self.waiting_new_view = None;
        out.push(Action::ViewInstalled { view: v });
        debug_assert!(self.stable.proof.seq >= plan.stable.seq);
        let max_s = plan.slots.last().map_or(plan.stable.seq, |(s, _)| *s);
        self.next_seq = (max_s + 1).max(self.last_executed + 1);
        for (pp, batch) in slots {
            // Requests the new view already re-proposes must not be proposed twice.
            for req in &batch.requests {
                if let Some(p) = self.pending.get_mut(&(req.client, req.request_num)) {
                    p.proposed_in_view = Some(v);
                }
            }
            if self.in_window(pp.body.seq) {
                self.accept_pre_prepare(pp, batch, out);
            }
        }
        self.request_deadline_ms =
            (!self.pending.is_empty()).then(|| self.now_ms + self.cfg.view_change_timeout_ms);
        if !self.is_primary() {
            let to = self.cfg.primary(v);
            for p in self.pending.values() {
                out.push(Action::Send {
                    to,
                    msg: Message::Request(p.request.clone()),
                });
            }
        }
    }

    /// At most one unsolicited help message (catch-up, new-view) per peer per half status
    /// interval, so a replaying peer cannot make us amplify traffic.
    pub(crate) fn may_help(&mut self, peer: ReplicaId) -> bool {
        let gap = self.cfg.status_interval_ms / 2;
        let Some(slot) = self.last_help_ms.get_mut(peer as usize) else {
            return false;
        };
        if slot.is_some_and(|t| self.now_ms < t + gap) {
            return false;
        }
        *slot = Some(self.now_ms);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pbft::messages::Prepare;

    fn cert(view: u64, seq: u64, digest: Digest) -> PreparedCert {
        let body = PrePrepare { view, seq, digest };
        PreparedCert {
            pre_prepare: Signed {
                body,
                signer: 0,
                sig: [0; 64],
            },
            prepares: vec![Signed {
                body: Prepare { view, seq, digest },
                signer: 1,
                sig: [0; 64],
            }],
        }
    }

    fn vc(stable_seq: u64, prepared: Vec<PreparedCert>) -> Signed<ViewChange> {
        Signed {
            body: ViewChange {
                new_view: 9,
                stable: CheckpointProof {
                    seq: stable_seq,
                    state_digest: Digest([0; 32]),
                    votes: Vec::new(),
                },
                prepared,
            },
            signer: 0,
            sig: [0; 64],
        }
    }

    /// §4.4: for each seq the certificate of the highest view wins, whatever the order of
    /// the view-change messages.
    #[test]
    fn new_view_reproposes_highest_view_prepared_certificate() {
        let (old, new) = (Digest([1; 32]), Digest([2; 32]));
        let a = vc(0, vec![cert(3, 1, new)]);
        let b = vc(0, vec![cert(1, 1, old)]);
        for vcs in [vec![a.clone(), b.clone()], vec![b, a]] {
            let plan = plan_new_view(&vcs).expect("non-empty");
            assert_eq!(plan.slots, vec![(1, new)]);
        }
    }

    /// §4.4: gaps between min-s and max-s are filled with null requests, and certificates
    /// at or below the newest stable checkpoint are ignored.
    #[test]
    fn new_view_fills_gaps_with_null_batches_above_newest_checkpoint() {
        let d = Digest([5; 32]);
        let vcs = vec![vc(4, vec![cert(0, 7, d)]), vc(0, vec![cert(0, 2, d)])];
        let plan = plan_new_view(&vcs).expect("non-empty");
        let null = Batch::default().digest();
        assert_eq!(plan.stable.seq, 4);
        assert_eq!(plan.slots, vec![(5, null), (6, null), (7, d)]);
    }
}
