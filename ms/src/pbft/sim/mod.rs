//! Deterministic simulator: whole PBFT groups on a seeded fake network.
//!
//! One seed fixes everything: keys, message delays, drops, duplicates, reordering,
//! partitions, crashes and restarts (from the persisted state only), client timing, and the
//! choices of Byzantine replicas. A [`SafetyChecker`] watches every action of every correct
//! replica; after the fault phase the network heals and every crashed replica restarts, and
//! the liveness check demands that every client request completes (when at most f replicas
//! are Byzantine). Failures carry the seed; [`run_seeds`] prints a one-line replay command.

mod app;
mod byzantine;
mod checker;
mod client;
mod rng;

use std::collections::BTreeMap;
use std::fmt;

use ed25519_dalek::{SigningKey, VerifyingKey};

pub use app::{CounterApp, add_op, get_op};
pub use byzantine::Behavior;
pub use checker::{SafetyChecker, promise_is_durable};
pub use rng::Rng;

use byzantine::{ByzState, TickContext};
use client::SimClient;

use super::{Action, Config, Message, PersistentState, Replica, ReplicaId, Reply, Request, Signed};
use super::{ClientId, genesis_state};

/// Simulated time advances in steps of this many milliseconds; every replica ticks each step.
pub const STEP_MS: u64 = 10;

/// What one simulated run looks like.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Group size, 3f+1.
    pub n: usize,
    pub clients: usize,
    pub requests_per_client: usize,
    /// Every k-th request of a client is a read-only read (0: none).
    pub read_only_every: usize,
    pub byzantine: Vec<(ReplicaId, Behavior)>,
    /// Faults below apply only before `fault_phase_ms`; then the network heals.
    pub drop_per_mille: u32,
    pub duplicate_per_mille: u32,
    pub max_delay_ms: u64,
    pub partitions: bool,
    pub crashes: bool,
    /// In the fault phase, a correct replica that signs a checkpoint crashes right then with
    /// this chance, before the checkpoint is stable there (its vote reaches a random subset
    /// of the others), and restarts 50–400 ms later. Independent of `crashes`.
    pub crash_after_checkpoint_per_mille: u32,
    pub fault_phase_ms: u64,
    /// Liveness deadline: all requests must complete by then.
    pub max_time_ms: u64,
    /// Pause between a client's requests, up to this many milliseconds.
    pub client_think_ms: u64,
    pub client_retry_ms: u64,
    pub checkpoint_interval_seqs: u64,
    pub log_window_seqs: u64,
    pub view_change_timeout_ms: u64,
}

impl Scenario {
    /// A reliable network and no faults.
    pub fn calm(n: usize) -> Self {
        Scenario {
            n,
            clients: 2,
            requests_per_client: 4,
            read_only_every: 0,
            byzantine: Vec::new(),
            drop_per_mille: 0,
            duplicate_per_mille: 0,
            max_delay_ms: 5,
            partitions: false,
            crashes: false,
            crash_after_checkpoint_per_mille: 0,
            fault_phase_ms: 0,
            max_time_ms: 60_000,
            client_think_ms: 40,
            client_retry_ms: 300,
            checkpoint_interval_seqs: 4,
            log_window_seqs: 8,
            view_change_timeout_ms: 400,
        }
    }

    /// Lossy, duplicating, reordering network with partitions and crash-restarts.
    pub fn faulty(n: usize) -> Self {
        Scenario {
            drop_per_mille: 80,
            duplicate_per_mille: 50,
            max_delay_ms: 40,
            partitions: true,
            crashes: true,
            fault_phase_ms: 1_500,
            ..Scenario::calm(n)
        }
    }

    pub fn with_byzantine(mut self, id: ReplicaId, behavior: Behavior) -> Self {
        self.byzantine.push((id, behavior));
        self
    }

    pub fn f(&self) -> usize {
        (self.n - 1) / 3
    }
}

/// What a run achieved, for assertions that the scenario exercised what it claims.
#[derive(Clone, Debug, Default)]
pub struct SimReport {
    pub seed: u64,
    pub requests_completed: usize,
    pub time_ms: u64,
    pub max_view: u64,
    pub max_executed_seq: u64,
    pub delivered_msgs: u64,
    pub crashes: u64,
    pub state_transfers: u64,
    pub read_only_completed: usize,
    /// Sum of error counters over correct replicas (rejected hostile or stale input).
    pub rejected_msgs: u64,
}

/// A violated property, with the seed that reproduces it.
#[derive(Clone, Debug)]
pub struct SimFailure {
    pub seed: u64,
    pub time_ms: u64,
    pub reason: String,
}

impl fmt::Display for SimFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {} at {} ms: {}",
            self.seed, self.time_ms, self.reason
        )
    }
}

enum Event {
    ToReplica {
        from: ReplicaId,
        to: ReplicaId,
        bytes: Vec<u8>,
    },
    ClientToReplica {
        to: ReplicaId,
        request: Request,
    },
    ToClient {
        client: usize,
        from: ReplicaId,
        reply: Signed<Reply>,
    },
}

struct Node {
    replica: Option<Replica<CounterApp>>,
    persisted: PersistentState,
    config: Config,
    byz: Option<ByzState>,
    restart_at_ms: Option<u64>,
}

/// A running simulation. Tests may drive it step by step and inject faults by hand.
pub struct Sim {
    pub seed: u64,
    scenario: Scenario,
    rng: Rng,
    now_ms: u64,
    events: BTreeMap<(u64, u64), Event>,
    next_event_id: u64,
    nodes: Vec<Node>,
    clients: Vec<SimClient>,
    client_index: BTreeMap<ClientId, usize>,
    partition: Option<(Vec<u8>, u64)>,
    checker: SafetyChecker,
    failure: Option<String>,
    report: SimReport,
}

impl Sim {
    pub fn new(scenario: Scenario, seed: u64) -> Sim {
        let mut rng = Rng::new(seed);
        let keys: Vec<SigningKey> = (0..scenario.n)
            .map(|_| SigningKey::from_bytes(&rng.bytes32()))
            .collect();
        let replica_keys: Vec<VerifyingKey> = keys.iter().map(|k| k.verifying_key()).collect();
        let nodes = keys
            .iter()
            .enumerate()
            .map(|(i, key)| {
                let id = i as ReplicaId;
                let mut config = Config::new(replica_keys.clone(), id, key.clone());
                config.checkpoint_interval_seqs = scenario.checkpoint_interval_seqs;
                config.log_window_seqs = scenario.log_window_seqs;
                config.max_inflight_batches = 2;
                config.view_change_timeout_ms = scenario.view_change_timeout_ms;
                config.max_view_change_timeout_ms = scenario.view_change_timeout_ms * 8;
                config.status_interval_ms = 150;
                config.state_transfer_interval_ms = 300;
                config.max_catchup_batches = scenario.log_window_seqs;
                let app = CounterApp::default();
                let persisted = genesis_state(&app);
                let replica = Replica::recover(config.clone(), persisted.clone(), app)
                    .expect("simulated configuration is valid");
                let byz = scenario
                    .byzantine
                    .iter()
                    .find(|(b, _)| *b == id)
                    .map(|(_, behavior)| ByzState {
                        behavior: *behavior,
                        key: key.clone(),
                        id,
                        seen: Default::default(),
                        low_attack: None,
                    });
                Node {
                    replica: Some(replica),
                    persisted,
                    config,
                    byz,
                    restart_at_ms: None,
                }
            })
            .collect();
        let mut clients = Vec::new();
        let mut client_index = BTreeMap::new();
        for c in 0..scenario.clients {
            let key = SigningKey::from_bytes(&rng.bytes32());
            let start = rng.below(scenario.client_think_ms + 1);
            let client = SimClient::new(c, key, replica_keys.clone(), &scenario, start);
            client_index.insert(client.id, c);
            clients.push(client);
        }
        Sim {
            seed,
            scenario,
            rng,
            now_ms: 0,
            events: BTreeMap::new(),
            next_event_id: 0,
            nodes,
            clients,
            client_index,
            partition: None,
            checker: SafetyChecker::default(),
            failure: None,
            report: SimReport {
                seed,
                ..SimReport::default()
            },
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }
    pub fn replica(&self, id: ReplicaId) -> Option<&Replica<CounterApp>> {
        self.nodes[id as usize].replica.as_ref()
    }
    pub fn persisted(&self, id: ReplicaId) -> &PersistentState {
        &self.nodes[id as usize].persisted
    }
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }
    pub fn requests_completed(&self) -> usize {
        self.clients.iter().map(|c| c.completed).sum()
    }
    pub fn all_requests_done(&self) -> bool {
        self.clients.iter().all(|c| c.done())
    }
    fn is_correct(&self, i: usize) -> bool {
        self.nodes[i].byz.is_none()
    }

    /// Stops a replica; it keeps only its persisted state.
    pub fn crash(&mut self, id: ReplicaId) {
        let node = &mut self.nodes[id as usize];
        if node.replica.take().is_some() {
            self.report.crashes += 1;
        }
    }

    /// Restarts a crashed replica from its persisted state.
    pub fn restart(&mut self, id: ReplicaId) {
        let i = id as usize;
        let node = &mut self.nodes[i];
        node.restart_at_ms = None;
        if node.replica.is_some() {
            return;
        }
        match Replica::recover(
            node.config.clone(),
            node.persisted.clone(),
            CounterApp::default(),
        ) {
            Ok(r) => {
                self.checker
                    .reset_replica(id, node.persisted.stable.proof.seq);
                node.replica = Some(r);
            }
            Err(e) => self.fail(format!("replica {id} cannot recover: {e}")),
        }
    }

    /// Cuts `id` off from every other replica until `heal`.
    pub fn isolate(&mut self, id: ReplicaId) {
        let mut groups = vec![0u8; self.scenario.n];
        groups[id as usize] = 1;
        self.partition = Some((groups, u64::MAX));
    }
    pub fn heal(&mut self) {
        self.partition = None;
    }

    fn fail(&mut self, reason: String) {
        if self.failure.is_none() {
            self.failure = Some(reason);
        }
    }

    fn in_fault_phase(&self) -> bool {
        self.now_ms < self.scenario.fault_phase_ms
    }

    fn schedule(&mut self, delay_ms: u64, ev: Event) {
        self.next_event_id += 1;
        self.events
            .insert((self.now_ms + delay_ms, self.next_event_id), ev);
    }

    /// Delay, drop and duplicate according to the current network conditions.
    fn transmit(&mut self, ev: Event, partitioned: bool) {
        if partitioned {
            return;
        }
        let faulty = self.in_fault_phase();
        if faulty && self.rng.chance_per_mille(self.scenario.drop_per_mille) {
            return;
        }
        let max_delay = if faulty {
            self.scenario.max_delay_ms
        } else {
            5
        };
        let dup = faulty && self.rng.chance_per_mille(self.scenario.duplicate_per_mille);
        if dup {
            let copy = match &ev {
                Event::ToReplica { from, to, bytes } => Event::ToReplica {
                    from: *from,
                    to: *to,
                    bytes: bytes.clone(),
                },
                Event::ClientToReplica { to, request } => Event::ClientToReplica {
                    to: *to,
                    request: request.clone(),
                },
                Event::ToClient {
                    client,
                    from,
                    reply,
                } => Event::ToClient {
                    client: *client,
                    from: *from,
                    reply: reply.clone(),
                },
            };
            let d = self.rng.range(1, max_delay);
            self.schedule(d, copy);
        }
        let d = self.rng.range(1, max_delay);
        self.schedule(d, ev);
    }

    fn cut(&self, a: ReplicaId, b: ReplicaId) -> bool {
        self.partition
            .as_ref()
            .is_some_and(|(g, _)| g[a as usize] != g[b as usize])
    }

    fn net_send(&mut self, from: ReplicaId, to: ReplicaId, bytes: Vec<u8>) {
        let cut = self.cut(from, to);
        self.transmit(Event::ToReplica { from, to, bytes }, cut);
    }

    fn apply_actions(&mut self, i: usize, actions: Vec<Action>) {
        let id = i as ReplicaId;
        let correct = self.is_correct(i);
        for a in actions {
            if self.nodes[i].replica.is_none() {
                // Crashed part-way through this list (`crash_after_checkpoint`): the rest of
                // it never happened.
                break;
            }
            match a {
                Action::Persist(op) => self.nodes[i].persisted.apply(&op),
                Action::Send { to, msg } => self.replica_send(i, Some(to), msg),
                Action::Broadcast { msg } => self.replica_send(i, None, msg),
                Action::Reply { client, reply } => {
                    let silent = self.nodes[i].byz.as_ref().is_some_and(|b| {
                        b.behavior == Behavior::SilentPrimary
                            && self.nodes[i]
                                .replica
                                .as_ref()
                                .is_some_and(|r| r.is_primary())
                    });
                    if let Some(&c) = self.client_index.get(&client)
                        && !silent
                    {
                        self.transmit(
                            Event::ToClient {
                                client: c,
                                from: id,
                                reply,
                            },
                            false,
                        );
                    }
                }
                Action::Executed { seq, digest, .. } if correct => {
                    if let Err(e) = self.checker.on_executed(id, seq, digest) {
                        self.fail(e);
                    }
                }
                Action::StateRestored { seq, state_digest } if correct => {
                    self.report.state_transfers += 1;
                    if let Err(e) = self.checker.on_restored(id, seq, state_digest) {
                        self.fail(e);
                    }
                }
                Action::ViewInstalled { view } => {
                    self.report.max_view = self.report.max_view.max(view);
                }
                _ => {}
            }
        }
    }

    fn replica_send(&mut self, i: usize, to: Option<ReplicaId>, msg: Message) {
        let id = i as ReplicaId;
        let recipients: Vec<ReplicaId> = match to {
            Some(t) => vec![t],
            None => (0..self.scenario.n as ReplicaId)
                .filter(|r| *r != id)
                .collect(),
        };
        if self.is_correct(i) {
            if let Err(e) = promise_is_durable(id, &msg, &self.nodes[i].persisted) {
                self.fail(e);
            }
            if let Message::Checkpoint(c) = &msg
                && c.signer == id
                && let Err(e) = self
                    .checker
                    .on_checkpoint(id, c.body.seq, c.body.state_digest)
            {
                self.fail(e);
            }
            let bytes = msg.encode();
            // (No draw at all when the chance is 0, so other scenarios keep their seeds.)
            let crash_now = self.scenario.crash_after_checkpoint_per_mille > 0
                && matches!(&msg, Message::Checkpoint(c) if c.signer == id)
                && self.in_fault_phase()
                && self
                    .rng
                    .chance_per_mille(self.scenario.crash_after_checkpoint_per_mille);
            for r in recipients {
                if crash_now && self.rng.chance_per_mille(500) {
                    continue;
                }
                self.net_send(id, r, bytes.clone());
            }
            if crash_now {
                self.crash(id);
                self.nodes[i].restart_at_ms = Some(self.now_ms + self.rng.range(50, 400));
            }
            return;
        }
        let is_primary = self.nodes[i]
            .replica
            .as_ref()
            .is_some_and(|r| r.is_primary() && !r.is_view_changing());
        for r in recipients {
            let out = match self.nodes[i].byz.as_mut() {
                Some(b) => b.outgoing(&mut self.rng, r, &msg, is_primary),
                None => None,
            };
            if let Some(bytes) = out {
                self.net_send(id, r, bytes);
            }
        }
    }

    fn censored(&self, i: usize, client: &ClientId) -> bool {
        match self.nodes[i].byz.as_ref().map(|b| b.behavior) {
            Some(Behavior::CensorClient(c)) => {
                self.clients.get(c).is_some_and(|cl| cl.id == *client)
            }
            _ => false,
        }
    }

    fn deliver(&mut self, ev: Event) {
        match ev {
            Event::ToReplica { from, to, bytes } => {
                let i = to as usize;
                if self.nodes[i].replica.is_none() {
                    return;
                }
                if let Some(b) = self.nodes[i].byz.as_mut() {
                    if b.behavior == Behavior::Replay {
                        b.remember(&bytes);
                    }
                    if let Some(Behavior::CensorClient(_)) = Some(b.behavior)
                        && let Ok(Message::Request(req)) =
                            Message::decode(&bytes, &self.nodes[i].config.limits)
                        && self.censored(i, &req.client)
                    {
                        return;
                    }
                }
                self.report.delivered_msgs += 1;
                let Some(r) = self.nodes[i].replica.as_mut() else {
                    return;
                };
                let actions = r.step_encoded(from, &bytes);
                self.apply_actions(i, actions);
            }
            Event::ClientToReplica { to, request } => {
                let i = to as usize;
                if self.censored(i, &request.client) {
                    return;
                }
                let Some(r) = self.nodes[i].replica.as_mut() else {
                    return;
                };
                let actions = r.propose(request);
                self.apply_actions(i, actions);
            }
            Event::ToClient {
                client,
                from,
                reply,
            } => {
                let now = self.now_ms;
                let mut sends = Vec::new();
                self.clients[client].on_reply(now, from, &reply, &mut self.rng, &mut sends);
                self.client_sends(sends);
            }
        }
    }

    fn client_sends(&mut self, sends: Vec<(ReplicaId, Request)>) {
        for (to, request) in sends {
            self.transmit(Event::ClientToReplica { to, request }, false);
        }
    }

    /// Random partitions and crash-restarts while in the fault phase; healing after it.
    fn inject_faults(&mut self) {
        let n = self.scenario.n as u64;
        if !self.in_fault_phase() {
            if self.scenario.fault_phase_ms > 0
                && self.partition.as_ref().is_some_and(|(_, t)| *t != u64::MAX)
            {
                self.partition = None;
            }
            for i in 0..self.nodes.len() {
                if self.nodes[i].restart_at_ms.is_some() {
                    self.restart(i as ReplicaId);
                }
            }
            return;
        }
        if self.scenario.partitions {
            match &self.partition {
                Some((_, heal_at)) if self.now_ms >= *heal_at => self.partition = None,
                None if self.rng.chance_per_mille(15) => {
                    let groups: Vec<u8> = (0..n).map(|_| self.rng.below(2) as u8).collect();
                    let heal_at = self.now_ms + self.rng.range(100, 600);
                    self.partition = Some((groups, heal_at));
                }
                _ => {}
            }
        }
        for i in 0..self.nodes.len() {
            if self.nodes[i]
                .restart_at_ms
                .is_some_and(|t| self.now_ms >= t)
            {
                self.restart(i as ReplicaId);
            }
        }
        if self.scenario.crashes && self.rng.chance_per_mille(8) {
            let i = self.rng.below(n) as usize;
            if self.is_correct(i) && self.nodes[i].replica.is_some() {
                self.crash(i as ReplicaId);
                self.nodes[i].restart_at_ms = Some(self.now_ms + self.rng.range(50, 800));
            }
        }
    }

    /// Advances simulated time by one step: deliver due messages, inject faults, tick all.
    pub fn step(&mut self) {
        let end = self.now_ms + STEP_MS;
        while let Some(entry) = self.events.first_entry() {
            if entry.key().0 > end {
                break;
            }
            let ((at, _), ev) = entry.remove_entry();
            self.now_ms = at.max(self.now_ms);
            self.deliver(ev);
            if self.failure.is_some() {
                return;
            }
        }
        self.now_ms = end;
        self.inject_faults();
        for i in 0..self.nodes.len() {
            let now = self.now_ms;
            let Some(r) = self.nodes[i].replica.as_mut() else {
                continue;
            };
            let actions = r.tick(now);
            let cx = TickContext {
                n: self.scenario.n,
                now_ms: now,
                last_executed: r.last_executed(),
                checkpoint_interval_seqs: r.config().checkpoint_interval_seqs,
                log_window_seqs: r.config().log_window_seqs,
                view: r.view(),
                active_primary: r.is_primary() && !r.is_view_changing(),
            };
            self.apply_actions(i, actions);
            let extra = match self.nodes[i].byz.as_mut() {
                Some(b) => b.on_tick(&mut self.rng, &cx),
                None => Vec::new(),
            };
            for (to, bytes) in extra {
                self.net_send(i as ReplicaId, to, bytes);
            }
        }
        let now = self.now_ms;
        let mut sends = Vec::new();
        for c in &mut self.clients {
            c.tick(now, &mut self.rng, &mut sends);
        }
        self.client_sends(sends);
    }

    pub fn run_for(&mut self, ms: u64) {
        let end = self.now_ms + ms;
        while self.now_ms < end && self.failure.is_none() {
            self.step();
        }
    }

    /// Steps until `done(self)` or `max_ms` elapse; returns whether `done` became true.
    pub fn run_until(&mut self, max_ms: u64, done: impl Fn(&Sim) -> bool) -> bool {
        let end = self.now_ms + max_ms;
        while self.now_ms < end && self.failure.is_none() {
            if done(self) {
                return true;
            }
            self.step();
        }
        done(self)
    }

    /// Runs to the end of the scenario and checks safety and liveness.
    pub fn finish(mut self) -> Result<SimReport, SimFailure> {
        let max = self.scenario.max_time_ms;
        let fault_end = self.scenario.fault_phase_ms;
        self.run_until(max.saturating_sub(self.now_ms), |s| {
            s.all_requests_done() && s.now_ms >= fault_end
        });
        let byz = self.scenario.byzantine.len();
        if self.failure.is_none() && byz <= self.scenario.f() && !self.all_requests_done() {
            let views: Vec<String> = self
                .nodes
                .iter()
                .map(|n| match &n.replica {
                    Some(r) => format!(
                        "v{}{} exec{}",
                        r.view(),
                        if r.is_view_changing() { "*" } else { "" },
                        r.last_executed()
                    ),
                    None => "down".into(),
                })
                .collect();
            let total = self.scenario.clients * self.scenario.requests_per_client;
            self.fail(format!(
                "liveness: {} of {} requests completed by {} ms; replicas [{}]",
                self.requests_completed(),
                total,
                self.now_ms,
                views.join(", ")
            ));
        }
        self.final_checks();
        if let Some(reason) = self.failure.take() {
            return Err(SimFailure {
                seed: self.seed,
                time_ms: self.now_ms,
                reason,
            });
        }
        self.report.requests_completed = self.requests_completed();
        self.report.read_only_completed = self.clients.iter().map(|c| c.read_only_completed).sum();
        self.report.time_ms = self.now_ms;
        self.report.max_executed_seq = self.checker.max_executed();
        Ok(self.report)
    }

    /// Correct replicas at the same point hold the same state, and none executed twice.
    fn final_checks(&mut self) {
        let mut at: BTreeMap<u64, (super::Digest, usize)> = BTreeMap::new();
        let mut problems = Vec::new();
        for i in 0..self.nodes.len() {
            if !self.is_correct(i) {
                continue;
            }
            let Some(r) = &self.nodes[i].replica else {
                continue;
            };
            self.report.rejected_msgs += r.errors().total();
            if r.app().duplicates != 0 {
                let d = r.app().duplicates;
                problems.push(format!("replica {i} executed {d} requests twice"));
            }
            let bound = r.config().log_window_seqs as usize;
            if r.log_len() > bound {
                problems.push(format!(
                    "replica {i} holds {} log entries, above {bound}",
                    r.log_len()
                ));
            }
            let d = r.state_digest();
            match at.get(&r.last_executed()) {
                Some((other, j)) if *other != d => problems.push(format!(
                    "replicas {j} and {i} differ in state at seq {}",
                    r.last_executed()
                )),
                _ => {
                    at.insert(r.last_executed(), (d, i));
                }
            }
        }
        for p in problems {
            self.fail(p);
        }
    }
}

/// Runs one seed of a scenario to completion.
pub fn run_seed(scenario: Scenario, seed: u64) -> Result<SimReport, SimFailure> {
    Sim::new(scenario, seed).finish()
}

/// Runs `count` seeds starting at `first_seed` (or only `PBFT_SEED` when that is set) and
/// panics on the first failure with a one-line replay command. `test_path` is what follows
/// `cargo test -p dbqs-ms` to select the calling test, e.g. `--test sim_faults name`.
pub fn run_seeds(
    test_path: &str,
    first_seed: u64,
    count: u64,
    scenario: impl Fn(u64) -> Scenario,
) -> Vec<SimReport> {
    let seeds: Vec<u64> = match std::env::var("PBFT_SEED").ok().and_then(|s| s.parse().ok()) {
        Some(seed) => vec![seed],
        None => (first_seed..first_seed + count).collect(),
    };
    let mut reports = Vec::with_capacity(seeds.len());
    for seed in seeds {
        match run_seed(scenario(seed), seed) {
            Ok(r) => reports.push(r),
            Err(e) => panic!(
                "simulation failed: {e}\nreplay: PBFT_SEED={seed} cargo test -p dbqs-ms {test_path}"
            ),
        }
    }
    reports
}
