//! Normal-case operation (§4.2): requests, batching, pre-prepare, prepare, commit, execution.

use super::app::Application;
use super::messages::{
    Batch, Commit, Message, PrePrepare, Prepare, PreparedCert, ReplicaId, Request, Signed,
    SignedBody,
};
use super::replica::{Action, Pending, Replica};
use super::state::ClientRecord;

impl<A: Application> Replica<A> {
    /// A client request, either straight from the client or forwarded by a backup.
    pub(crate) fn on_request(&mut self, req: Request, from_client: bool, out: &mut Vec<Action>) {
        if req.op.len() > self.cfg.limits.max_op_bytes {
            self.errors.oversized += 1;
            return;
        }
        if !req.verify() {
            self.errors.bad_signature += 1;
            return;
        }
        if req.read_only {
            // §5.1.3: answered at once from the current state; the client needs 2f+1
            // matching replies, or it retries the request as read-write.
            if from_client && !self.view_changing {
                let result = self.app.query(&req.op);
                out.push(self.reply(&req, true, result));
            } else if !from_client {
                self.errors.invalid_request += 1;
            }
            return;
        }
        if let Some(rec) = self.clients.get(&req.client) {
            if req.request_num < rec.request_num {
                self.errors.stale += 1;
                return;
            }
            if req.request_num == rec.request_num {
                // §4.1: a retransmission of the last request gets the cached reply.
                if from_client {
                    out.push(self.reply(&req, false, rec.reply.clone()));
                }
                return;
            }
        }
        let key = (req.client, req.request_num);
        if self.pending.contains_key(&key) {
            if from_client && !self.is_primary() && !self.view_changing {
                // The client is still waiting: push the request to the primary again.
                let to = self.cfg.primary(self.view);
                out.push(Action::Send {
                    to,
                    msg: Message::Request(req),
                });
            }
            return;
        }
        // A client has one outstanding request (§4.1): a newer one replaces older ones, so
        // the queue holds at most one request per client.
        let older: Vec<_> = self
            .pending
            .range((req.client, 0)..(req.client, req.request_num))
            .map(|(k, _)| *k)
            .collect();
        let has_newer = self
            .pending
            .range((req.client, req.request_num)..=(req.client, u64::MAX))
            .next()
            .is_some();
        if has_newer {
            self.errors.stale += 1;
            return;
        }
        for k in older {
            self.pending.remove(&k);
        }
        if self.pending.len() >= self.cfg.max_pending_requests {
            self.errors.queue_full += 1;
            return;
        }
        self.pending_order += 1;
        self.pending.insert(
            key,
            Pending {
                request: req.clone(),
                order: self.pending_order,
                proposed_in_view: None,
            },
        );
        if self.request_deadline_ms.is_none() {
            self.request_deadline_ms = Some(self.now_ms + self.cfg.view_change_timeout_ms);
        }
        if from_client && !self.is_primary() && !self.view_changing {
            // Anti-censorship (§4.5.2): a backup that hears from the client directly relays
            // the request and starts its timer; the primary must order it in time.
            let to = self.cfg.primary(self.view);
            out.push(Action::Send {
                to,
                msg: Message::Request(req),
            });
        }
        self.try_propose(out);
    }

    /// The primary cuts batches while the window and the pipeline allow (§5.1.4).
    pub(crate) fn try_propose(&mut self, out: &mut Vec<Action>) {
        if self.view_changing || !self.is_primary() {
            return;
        }
        self.next_seq = self.next_seq.max(self.last_executed + 1);
        let limits = self.cfg.limits.clone();
        for _ in 0..self.cfg.max_inflight_batches {
            let seq = self.next_seq;
            if !self.in_window(seq) || seq - self.last_executed > self.cfg.max_inflight_batches {
                return;
            }
            let mut candidates: Vec<(u64, (crate::pbft::ClientId, u64))> = self
                .pending
                .iter()
                .filter(|(_, p)| p.proposed_in_view != Some(self.view))
                .map(|(k, p)| (p.order, *k))
                .collect();
            if candidates.is_empty() {
                return;
            }
            candidates.sort_unstable();
            let mut batch = Batch::default();
            let mut bytes = 0usize;
            for (_, key) in candidates {
                if batch.requests.len() >= limits.max_batch_requests {
                    break;
                }
                let Some(p) = self.pending.get_mut(&key) else {
                    continue;
                };
                if bytes + p.request.op.len() > limits.max_batch_bytes {
                    break;
                }
                bytes += p.request.op.len();
                p.proposed_in_view = Some(self.view);
                batch.requests.push(p.request.clone());
            }
            if batch.requests.is_empty() {
                return;
            }
            let pp = self.sign(PrePrepare {
                view: self.view,
                seq,
                digest: batch.digest(),
            });
            self.next_seq += 1;
            let entry = self.log.entry(seq).or_default();
            entry.accepted = Some((pp.clone(), batch.clone()));
            // The pre-prepare is a promise: durable before it leaves.
            self.persist_entry(seq, out);
            out.push(Action::Broadcast {
                msg: Message::PrePrepare {
                    pre_prepare: pp,
                    batch,
                },
            });
            self.check_prepared(seq, out);
        }
    }

    pub(crate) fn on_pre_prepare(
        &mut self,
        from: ReplicaId,
        pp: Signed<PrePrepare>,
        batch: Batch,
        out: &mut Vec<Action>,
    ) {
        let b = pp.body;
        if pp.signer != from || pp.signer != self.cfg.primary(b.view) {
            self.errors.wrong_sender += 1;
            return;
        }
        if self.view_changing || b.view != self.view {
            self.errors.out_of_view += 1;
            return;
        }
        if !self.in_window(b.seq) {
            self.errors.out_of_window += 1;
            return;
        }
        if let Some(d) = self.log.get(&b.seq).and_then(|e| e.accepted_in(b.view)) {
            if d == b.digest {
                self.errors.duplicate += 1;
            } else {
                // An equivocating primary (§4.2): the first pre-prepare stands.
                self.errors.conflicting += 1;
            }
            return;
        }
        if !self.verify(&pp) {
            self.errors.bad_signature += 1;
            return;
        }
        if batch.digest() != b.digest {
            self.errors.bad_digest += 1;
            return;
        }
        if !self.batch_is_valid(&batch) {
            self.errors.invalid_request += 1;
            return;
        }
        self.accept_pre_prepare(pp, batch, out);
    }

    /// Every request must be client-signed and read-write, and the batch within limits.
    pub(crate) fn batch_is_valid(&self, batch: &Batch) -> bool {
        let lim = &self.cfg.limits;
        batch.requests.len() <= lim.max_batch_requests
            && batch.op_bytes() <= lim.max_batch_bytes
            && batch
                .requests
                .iter()
                .all(|r| !r.read_only && r.op.len() <= lim.max_op_bytes && r.verify())
    }

    /// Records the pre-prepare as accepted, persists the promise, then prepares (§4.2).
    pub(crate) fn accept_pre_prepare(
        &mut self,
        pp: Signed<PrePrepare>,
        batch: Batch,
        out: &mut Vec<Action>,
    ) {
        let seq = pp.body.seq;
        let me = self.cfg.me;
        let is_primary = self.cfg.primary(pp.body.view) == me;
        let prepare = (!is_primary).then(|| {
            self.sign(Prepare {
                view: pp.body.view,
                seq,
                digest: pp.body.digest,
            })
        });
        let entry = self.log.entry(seq).or_default();
        if entry.accepted.as_ref().is_some_and(|(a, _)| *a == pp) {
            // The new primary recorded and persisted its own new-view pre-prepares already.
            self.check_prepared(seq, out);
            self.check_committed(seq, out);
            return;
        }
        entry.accepted = Some((pp, batch));
        if let Some(p) = &prepare {
            entry.prepares.insert(me, p.clone());
        }
        self.persist_entry(seq, out);
        if let Some(p) = prepare {
            out.push(Action::Broadcast {
                msg: Message::Prepare(p),
            });
        }
        self.check_prepared(seq, out);
        self.check_committed(seq, out);
    }

    pub(crate) fn on_prepare(
        &mut self,
        from: ReplicaId,
        p: Signed<Prepare>,
        out: &mut Vec<Action>,
    ) {
        let b = p.body;
        // The primary sends pre-prepares, never prepares (§4.2).
        let wrong_sender = p.signer != from || p.signer == self.cfg.primary(b.view);
        let prior = self
            .log
            .get(&b.seq)
            .and_then(|e| e.prepares.get(&p.signer))
            .map(|old| old.body == b);
        if !self.admit_vote(wrong_sender, b.view, b.seq, prior, &p) {
            return;
        }
        self.log
            .entry(b.seq)
            .or_default()
            .prepares
            .insert(p.signer, p);
        self.check_prepared(b.seq, out);
    }

    /// The checks a prepare or a commit passes before it is counted, cheapest
    /// first and the signature last: the right sender, this view (and not
    /// changing views), inside the watermarks, not the signer's second vote
    /// for the slot (`prior`: whether the signer's earlier vote there was the
    /// same), and a valid signature. Each refusal is counted.
    fn admit_vote<T: SignedBody>(
        &mut self,
        wrong_sender: bool,
        view: u64,
        seq: u64,
        prior: Option<bool>,
        vote: &Signed<T>,
    ) -> bool {
        if wrong_sender {
            self.errors.wrong_sender += 1;
            return false;
        }
        if self.view_changing || view != self.view {
            self.errors.out_of_view += 1;
            return false;
        }
        if !self.in_window(seq) {
            self.errors.out_of_window += 1;
            return false;
        }
        match prior {
            Some(true) => {
                self.errors.duplicate += 1;
                return false;
            }
            Some(false) => {
                self.errors.conflicting += 1;
                return false;
            }
            None => {}
        }
        if !self.verify(vote) {
            self.errors.bad_signature += 1;
            return false;
        }
        true
    }

    /// prepared(m, v, n, i) of §4.2: the pre-prepare plus 2f matching prepares from distinct
    /// backups. Then persist the certificate and multicast a commit.
    pub(crate) fn check_prepared(&mut self, seq: u64, out: &mut Vec<Action>) {
        let view = self.view;
        let need = 2 * self.cfg.f();
        let Some(entry) = self.log.get_mut(&seq) else {
            return;
        };
        if entry.commit_sent_view == Some(view) {
            return;
        }
        let Some((pp, batch)) = entry
            .accepted
            .as_ref()
            .filter(|(pp, _)| pp.body.view == view)
        else {
            return;
        };
        let digest = pp.body.digest;
        let matching: Vec<Signed<Prepare>> = entry
            .prepares
            .values()
            .filter(|p| p.body.digest == digest && p.body.view == view)
            .take(need)
            .cloned()
            .collect();
        if matching.len() < need {
            return;
        }
        entry.prepared = Some((
            PreparedCert {
                pre_prepare: pp.clone(),
                prepares: matching,
            },
            batch.clone(),
        ));
        entry.commit_sent_view = Some(view);
        let commit = Signed::sign(
            Commit { view, seq, digest },
            self.cfg.me,
            &self.cfg.signing_key,
            &self.cfg.domain,
        );
        entry.commits.insert(self.cfg.me, commit.clone());
        // The prepared certificate must survive a crash: it goes into view changes (§4.4).
        self.persist_entry(seq, out);
        out.push(Action::Broadcast {
            msg: Message::Commit(commit),
        });
        self.check_committed(seq, out);
    }

    pub(crate) fn on_commit(&mut self, from: ReplicaId, c: Signed<Commit>, out: &mut Vec<Action>) {
        let b = c.body;
        let prior = self
            .log
            .get(&b.seq)
            .and_then(|e| e.commits.get(&c.signer))
            .map(|old| old.body == b);
        if !self.admit_vote(c.signer != from, b.view, b.seq, prior, &c) {
            return;
        }
        self.log
            .entry(b.seq)
            .or_default()
            .commits
            .insert(c.signer, c);
        self.check_committed(b.seq, out);
    }

    /// committed-local of §4.2, with signatures: 2f+1 matching commits prove that f+1
    /// correct replicas prepared, which is what makes the order permanent.
    pub(crate) fn check_committed(&mut self, seq: u64, out: &mut Vec<Action>) {
        let view = self.view;
        let quorum = self.cfg.quorum();
        let Some(entry) = self.log.get_mut(&seq) else {
            return;
        };
        if entry.committed.is_some() {
            return;
        }
        let Some((pp, batch)) = entry
            .accepted
            .as_ref()
            .filter(|(pp, _)| pp.body.view == view)
        else {
            return;
        };
        let digest = pp.body.digest;
        let cert: Vec<Signed<Commit>> = entry
            .commits
            .values()
            .filter(|c| c.body.digest == digest && c.body.view == view)
            .take(quorum)
            .cloned()
            .collect();
        if cert.len() < quorum {
            return;
        }
        entry.committed = Some((cert, batch.clone()));
        self.try_execute(out);
    }

    /// Executes committed batches in sequence order (§4.2); bounded by the window.
    pub(crate) fn try_execute(&mut self, out: &mut Vec<Action>) {
        for _ in 0..self.cfg.log_window_seqs {
            let seq = self.last_executed + 1;
            let Some(batch) = self
                .log
                .get(&seq)
                .and_then(|e| e.committed.as_ref())
                .map(|(_, b)| b.clone())
            else {
                break;
            };
            self.execute_batch(seq, batch, out);
        }
        self.try_propose(out);
    }

    fn execute_batch(&mut self, seq: u64, batch: Batch, out: &mut Vec<Action>) {
        // Exactly-once (§4.1): skip requests at or below the client's last executed number;
        // a retransmitted last request gets its cached reply again.
        let mut fresh: Vec<Request> = Vec::new();
        for req in &batch.requests {
            let last = fresh
                .iter()
                .rev()
                .find(|r| r.client == req.client)
                .map(|r| r.request_num)
                .or_else(|| self.clients.get(&req.client).map(|r| r.request_num));
            match last {
                Some(n) if req.request_num < n => {}
                Some(n) if req.request_num == n => {
                    if let Some(rec) = self.clients.get(&req.client)
                        && rec.request_num == n
                    {
                        out.push(self.reply(req, false, rec.reply.clone()));
                    }
                }
                _ => fresh.push(req.clone()),
            }
        }
        let replies = if fresh.is_empty() {
            Vec::new()
        } else {
            self.app.execute(&fresh)
        };
        assert_eq!(
            replies.len(),
            fresh.len(),
            "Application::execute must return one reply per request"
        );
        for (req, result) in fresh.iter().zip(replies) {
            out.push(self.reply(req, false, result.clone()));
            self.clients.record(
                req.client,
                ClientRecord {
                    request_num: req.request_num,
                    reply: result,
                    executed_seq: seq,
                },
                self.cfg.max_clients,
            );
        }
        for req in &batch.requests {
            self.drop_pending_upto(req.client, req.request_num);
        }
        self.last_executed = seq;
        out.push(Action::Executed {
            seq,
            digest: batch.digest(),
            batch,
        });
        // Progress: the view works, so the timers start afresh (§4.5.2).
        self.view_change_timeout_ms = self.cfg.view_change_timeout_ms;
        self.request_deadline_ms =
            (!self.pending.is_empty()).then(|| self.now_ms + self.cfg.view_change_timeout_ms);
        if seq.is_multiple_of(self.cfg.checkpoint_interval_seqs) {
            self.take_checkpoint(seq, out);
        }
    }

    pub(crate) fn drop_pending_upto(&mut self, client: crate::pbft::ClientId, request_num: u64) {
        let keys: Vec<_> = self
            .pending
            .range((client, 0)..=(client, request_num))
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            self.pending.remove(&k);
        }
    }
}
