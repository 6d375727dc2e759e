//! Simulated PBFT client (§4.1): one outstanding request, sent to the primary it believes
//! in; on timeout it broadcasts to all replicas (the anti-censorship path of §4.5.2). A
//! read-only request goes to all replicas and falls back to read-write when 2f+1 replicas
//! do not agree (§5.1.3).

use ed25519_dalek::{SigningKey, VerifyingKey};

use super::Scenario;
use super::app::{add_op, get_op};
use super::rng::Rng;
use crate::pbft::{ClientId, ReplicaId, Reply, ReplyCollector, Request, Signed};

struct Outstanding {
    request: Request,
    collector: ReplyCollector,
    sent_ms: u64,
}

pub struct SimClient {
    pub id: ClientId,
    index: usize,
    key: SigningKey,
    replica_keys: Vec<VerifyingKey>,
    next_num: u64,
    remaining: usize,
    read_only_every: usize,
    think_ms: u64,
    retry_ms: u64,
    next_start_ms: u64,
    view_hint: u64,
    out: Option<Outstanding>,
    pub completed: usize,
    pub read_only_completed: usize,
}

impl SimClient {
    pub fn new(
        index: usize,
        key: SigningKey,
        replica_keys: Vec<VerifyingKey>,
        s: &Scenario,
        start_ms: u64,
    ) -> Self {
        SimClient {
            id: ClientId(key.verifying_key().to_bytes()),
            index,
            key,
            replica_keys,
            next_num: 1,
            remaining: s.requests_per_client,
            read_only_every: s.read_only_every,
            think_ms: s.client_think_ms,
            retry_ms: s.client_retry_ms,
            next_start_ms: start_ms,
            view_hint: 0,
            out: None,
            completed: 0,
            read_only_completed: 0,
        }
    }

    pub fn done(&self) -> bool {
        self.remaining == 0
    }

    fn n(&self) -> ReplicaId {
        self.replica_keys.len() as ReplicaId
    }

    fn all(&self, req: &Request, sends: &mut Vec<(ReplicaId, Request)>) {
        for r in 0..self.n() {
            sends.push((r, req.clone()));
        }
    }

    fn issue(&mut self, now: u64, read_only: bool, sends: &mut Vec<(ReplicaId, Request)>) {
        let num = self.next_num;
        self.next_num += 1;
        let op = if read_only {
            get_op()
        } else {
            add_op(self.index as u64 * 1_000 + num)
        };
        let request = Request::sign(&self.key, num, read_only, op);
        if read_only {
            self.all(&request, sends);
        } else {
            let primary = (self.view_hint % u64::from(self.n())) as ReplicaId;
            sends.push((primary, request.clone()));
        }
        self.out = Some(Outstanding {
            collector: ReplyCollector::new(self.replica_keys.clone(), &request),
            request,
            sent_ms: now,
        });
    }

    pub fn tick(&mut self, now: u64, rng: &mut Rng, sends: &mut Vec<(ReplicaId, Request)>) {
        let _ = rng;
        match &mut self.out {
            Some(o) if now >= o.sent_ms + self.retry_ms => {
                if o.request.read_only {
                    self.issue(now, false, sends);
                } else {
                    o.sent_ms = now;
                    let req = o.request.clone();
                    self.all(&req, sends);
                }
            }
            Some(_) => {}
            None if self.remaining > 0 && now >= self.next_start_ms => {
                let k = self.read_only_every;
                let read_only = k > 0 && self.remaining.is_multiple_of(k);
                self.issue(now, read_only, sends);
            }
            None => {}
        }
    }

    pub fn on_reply(
        &mut self,
        now: u64,
        from: ReplicaId,
        reply: &Signed<Reply>,
        rng: &mut Rng,
        sends: &mut Vec<(ReplicaId, Request)>,
    ) {
        let Some(o) = &mut self.out else {
            return;
        };
        let Ok(decided) = o.collector.add(from, reply) else {
            return;
        };
        self.view_hint = self.view_hint.max(reply.body.view);
        if decided.is_some() {
            if o.request.read_only {
                self.read_only_completed += 1;
            }
            self.out = None;
            self.completed += 1;
            self.remaining -= 1;
            self.next_start_ms = now + rng.below(self.think_ms + 1);
        } else if o.request.read_only && o.collector.cannot_decide() {
            self.issue(now, false, sends);
        }
    }
}
