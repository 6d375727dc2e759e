//! A hand-driven group of replicas with a synchronous, filterable network, for tests that
//! walk through one protocol path step by step.
#![allow(dead_code)]

use std::collections::VecDeque;

use dbqs_ms::pbft::sim::{CounterApp, add_op};
use dbqs_ms::pbft::{
    Action, Config, Digest, Message, PersistentState, Replica, ReplicaId, Reply, Request, Signed,
    genesis_state,
};
use ed25519_dalek::SigningKey;

/// Decides whether a message (from, to, msg) is delivered.
pub type Filter = Box<dyn Fn(ReplicaId, ReplicaId, &Message) -> bool>;

pub struct Group {
    pub replicas: Vec<Option<Replica<CounterApp>>>,
    pub persisted: Vec<PersistentState>,
    pub configs: Vec<Config>,
    pub queue: VecDeque<(ReplicaId, ReplicaId, Message)>,
    pub replies: Vec<(ReplicaId, Signed<Reply>)>,
    pub executed: Vec<Vec<(u64, Digest)>>,
    pub restored: Vec<Vec<u64>>,
    pub now_ms: u64,
    /// Returns false to drop a message (from, to, msg).
    pub filter: Filter,
    pub client_key: SigningKey,
    pub next_num: u64,
}

impl Group {
    pub fn new(n: usize, checkpoint_interval_seqs: u64, log_window_seqs: u64) -> Group {
        let keys: Vec<SigningKey> = (0..n)
            .map(|i| SigningKey::from_bytes(&[i as u8 + 1; 32]))
            .collect();
        let vks: Vec<_> = keys.iter().map(|k| k.verifying_key()).collect();
        let mut configs = Vec::new();
        let mut replicas = Vec::new();
        let mut persisted = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            let mut c = Config::new(vks.clone(), i as ReplicaId, k.clone());
            c.checkpoint_interval_seqs = checkpoint_interval_seqs;
            c.log_window_seqs = log_window_seqs;
            c.view_change_timeout_ms = 1_000;
            c.status_interval_ms = 100;
            c.state_transfer_interval_ms = 100;
            let app = CounterApp::default();
            persisted.push(genesis_state(&app));
            replicas.push(Some(Replica::new(c.clone(), app).expect("valid config")));
            configs.push(c);
        }
        Group {
            replicas,
            persisted,
            configs,
            queue: VecDeque::new(),
            replies: Vec::new(),
            executed: vec![Vec::new(); n],
            restored: vec![Vec::new(); n],
            now_ms: 0,
            filter: Box::new(|_, _, _| true),
            client_key: SigningKey::from_bytes(&[99; 32]),
            next_num: 1,
        }
    }

    pub fn n(&self) -> usize {
        self.replicas.len()
    }

    pub fn r(&self, i: usize) -> &Replica<CounterApp> {
        self.replicas[i].as_ref().expect("replica is up")
    }

    pub fn request(&mut self) -> Request {
        let num = self.next_num;
        self.next_num += 1;
        Request::sign(&self.client_key, num, false, add_op(num))
    }

    pub fn handle(&mut self, i: usize, actions: Vec<Action>) {
        let me = i as ReplicaId;
        for a in actions {
            match a {
                Action::Persist(op) => self.persisted[i].apply(&op),
                Action::Send { to, msg } => self.enqueue(me, to, msg),
                Action::Broadcast { msg } => {
                    for to in 0..self.n() as ReplicaId {
                        if to != me {
                            self.enqueue(me, to, msg.clone());
                        }
                    }
                }
                Action::Reply { reply, .. } => self.replies.push((me, reply)),
                Action::Executed { seq, digest, .. } => self.executed[i].push((seq, digest)),
                Action::StateRestored { seq, .. } => self.restored[i].push(seq),
                Action::ViewInstalled { .. } => {}
            }
        }
    }

    fn enqueue(&mut self, from: ReplicaId, to: ReplicaId, msg: Message) {
        if (self.filter)(from, to, &msg) {
            self.queue.push_back((from, to, msg));
        }
    }

    pub fn propose(&mut self, to: usize, req: Request) {
        if let Some(r) = self.replicas[to].as_mut() {
            let actions = r.propose(req);
            self.handle(to, actions);
        }
    }

    /// Delivers queued messages until quiet (bounded).
    pub fn deliver_all(&mut self) {
        for _ in 0..200_000 {
            let Some((from, to, msg)) = self.queue.pop_front() else {
                return;
            };
            // Round-trip through the codec, as a real transport would.
            let bytes = msg.encode();
            if let Some(r) = self.replicas[to as usize].as_mut() {
                let actions = r.step_encoded(from, &bytes);
                self.handle(to as usize, actions);
            }
        }
        panic!("network did not go quiet");
    }

    pub fn tick_all(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
        for i in 0..self.n() {
            if let Some(r) = self.replicas[i].as_mut() {
                let actions = r.tick(now_ms);
                self.handle(i, actions);
            }
        }
    }

    /// Ticks every `step_ms` up to `ms` later, delivering between ticks.
    pub fn run_for(&mut self, ms: u64, step_ms: u64) {
        let end = self.now_ms + ms;
        while self.now_ms < end {
            let t = self.now_ms + step_ms;
            self.tick_all(t);
            self.deliver_all();
        }
    }

    pub fn crash(&mut self, i: usize) {
        self.replicas[i] = None;
    }

    pub fn restart(&mut self, i: usize) {
        let r = Replica::recover(
            self.configs[i].clone(),
            self.persisted[i].clone(),
            CounterApp::default(),
        )
        .expect("recovers from persisted state");
        self.replicas[i] = Some(r);
    }
}
