//! The task that owns the `Replica` and its `PbftStore`: the only place the engine is
//! driven. One round = a bounded batch of inputs (peer messages, client submissions, a tick)
//! → their actions → persist ops committed in one redb transaction → sends and replies.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::StreamExt as _;
use tokio_stream::StreamMap;
use tokio_stream::wrappers::ReceiverStream;

use super::store::PbftStore;
use super::{ReplicaStatus, RuntimeBounds, RuntimeCounters, RuntimeError};
use crate::pbft::{
    Action, Application, ClientId, PersistOp, Replica, ReplicaId, Reply, Request, Signed,
};

/// A client submission handed from the gRPC server to the actor.
pub(crate) struct ClientInput {
    pub request: Request,
    /// Hand the request to the engine (`propose`), or only wait for its reply.
    pub propose: bool,
    pub reply: oneshot::Sender<Result<Signed<Reply>, SubmitError>>,
}

/// Why a Submit got no reply from the actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SubmitError {
    TooManyWaiters,
    Superseded,
}

/// (client, request number, read-only): what a reply answers.
type ReplyKey = (ClientId, u64, bool);
type Waiter = oneshot::Sender<Result<Signed<Reply>, SubmitError>>;

pub(crate) struct Actor<A: Application> {
    replica: Replica<A>,
    store: PbftStore,
    /// Per-peer outbound queues (`None` at this replica's own index).
    outbound: Vec<Option<mpsc::Sender<Arc<Vec<u8>>>>>,
    counters: Arc<RuntimeCounters>,
    status: watch::Sender<ReplicaStatus>,
    bounds: RuntimeBounds,
    /// Submit calls waiting for this replica's reply.
    waiters: HashMap<ReplyKey, Waiter>,
    /// Replies produced with nobody waiting, for a Submit that arrives late (bounded FIFO).
    recent: HashMap<ReplyKey, Signed<Reply>>,
    recent_order: VecDeque<ReplyKey>,
    started: Instant,
}

impl<A: Application> Actor<A> {
    pub(crate) fn new(
        replica: Replica<A>,
        store: PbftStore,
        outbound: Vec<Option<mpsc::Sender<Arc<Vec<u8>>>>>,
        counters: Arc<RuntimeCounters>,
        status: watch::Sender<ReplicaStatus>,
        bounds: RuntimeBounds,
    ) -> Self {
        Actor {
            replica,
            store,
            outbound,
            counters,
            status,
            bounds,
            waiters: HashMap::new(),
            recent: HashMap::new(),
            recent_order: VecDeque::new(),
            started: Instant::now(),
        }
    }

    /// Milliseconds of a monotonic clock since the actor started.
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Runs until `shutdown` fires or a persist fails (fail-stop: the replica must not send
    /// what it could not make durable).
    pub(crate) async fn run(
        mut self,
        inbound: Vec<mpsc::Receiver<Vec<u8>>>,
        mut clients: mpsc::Receiver<ClientInput>,
        mut shutdown: oneshot::Receiver<()>,
    ) -> Result<(), RuntimeError> {
        let me = self.replica.id();
        let mut peers: StreamMap<ReplicaId, ReceiverStream<Vec<u8>>> = StreamMap::new();
        for (i, rx) in inbound.into_iter().enumerate() {
            if i != me as usize {
                peers.insert(i as ReplicaId, ReceiverStream::new(rx));
            }
        }
        let mut ticker = tokio::time::interval(Duration::from_millis(self.bounds.tick_ms.max(1)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let max_inputs = self.bounds.actor_batch_max_inputs.max(1);
        let mut actions = Vec::new();
        let result = loop {
            // Ticks first (timers), then replicas (finishing ordered work), then clients.
            tokio::select! {
                biased;
                _ = &mut shutdown => break Ok(()),
                _ = ticker.tick() => {
                    actions.extend(self.replica.tick(self.now_ms()));
                    self.waiters.retain(|_, w| !w.is_closed());
                }
                Some((from, bytes)) = peers.next() => {
                    actions.extend(self.replica.step_encoded(from, &bytes));
                }
                Some(input) = clients.recv() => self.on_client(input, &mut actions),
            }
            // Drain what is already queued, bounded, so one commit covers many inputs.
            let mut inputs = 1;
            while inputs < max_inputs {
                let mut progressed = false;
                if let Some(Some((from, bytes))) = peers.next().now_or_never() {
                    actions.extend(self.replica.step_encoded(from, &bytes));
                    inputs += 1;
                    progressed = true;
                }
                if let Ok(input) = clients.try_recv() {
                    self.on_client(input, &mut actions);
                    inputs += 1;
                    progressed = true;
                }
                if !progressed {
                    break;
                }
            }
            if let Err(e) = self.perform(&mut actions) {
                tracing::error!(replica = me, error = %e, "persist failed: stopping the replica");
                break Err(e);
            }
            self.publish_status(false);
        };
        self.publish_status(true);
        result
    }

    fn on_client(&mut self, input: ClientInput, actions: &mut Vec<Action>) {
        let r = &input.request;
        let key = (r.client, r.request_num, r.read_only);
        if let Some(reply) = self.recent.get(&key) {
            let _ = input.reply.send(Ok(reply.clone()));
            return;
        }
        if !self.waiters.contains_key(&key) && self.waiters.len() >= self.bounds.max_waiters {
            self.waiters.retain(|_, w| !w.is_closed());
            if self.waiters.len() >= self.bounds.max_waiters {
                RuntimeCounters::add(&self.counters.client_rejected, 1);
                let _ = input.reply.send(Err(SubmitError::TooManyWaiters));
                return;
            }
        }
        if let Some(old) = self.waiters.insert(key, input.reply) {
            let _ = old.send(Err(SubmitError::Superseded));
        }
        if input.propose {
            actions.extend(self.replica.propose(input.request));
        }
    }

    /// Performs `actions` (and empties the list): every persist op in one durable
    /// transaction first, then sends and replies in list order.
    fn perform(&mut self, actions: &mut Vec<Action>) -> Result<(), RuntimeError> {
        let ops: Vec<&PersistOp> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Persist(op) => Some(op),
                _ => None,
            })
            .collect();
        if !ops.is_empty() {
            let n = ops.len() as u64;
            let store = &mut self.store;
            // redb's commit fsyncs: keep it off the other tasks' worker thread.
            let committed = if tokio::runtime::Handle::current().runtime_flavor()
                == tokio::runtime::RuntimeFlavor::MultiThread
            {
                tokio::task::block_in_place(|| store.apply(ops))
            } else {
                store.apply(ops)
            };
            committed?;
            RuntimeCounters::add(&self.counters.persist_commits, 1);
            RuntimeCounters::add(&self.counters.persist_ops, n);
        }
        for action in actions.drain(..) {
            match action {
                Action::Persist(_) => {}
                Action::Send { to, msg } => {
                    let bytes = Arc::new(msg.encode());
                    self.enqueue(to, bytes);
                }
                Action::Broadcast { msg } => {
                    let bytes = Arc::new(msg.encode());
                    for to in 0..self.outbound.len() {
                        self.enqueue(to as ReplicaId, bytes.clone());
                    }
                }
                Action::Reply { client, reply } => {
                    let key = (client, reply.body.request_num, reply.body.read_only);
                    match self.waiters.remove(&key) {
                        Some(w) => {
                            if let Err(Ok(reply)) = w.send(Ok(reply)) {
                                self.remember(key, reply);
                            }
                        }
                        None => self.remember(key, reply),
                    }
                }
                Action::Executed { seq, batch, .. } => {
                    tracing::trace!(seq, requests = batch.requests.len(), "executed");
                }
                Action::StateRestored { seq, .. } => {
                    tracing::info!(
                        replica = self.replica.id(),
                        seq,
                        "state restored from peers"
                    );
                }
                Action::ViewInstalled { view } => {
                    tracing::info!(replica = self.replica.id(), view, "view installed");
                }
            }
        }
        Ok(())
    }

    fn enqueue(&self, to: ReplicaId, bytes: Arc<Vec<u8>>) {
        let Some(Some(q)) = self.outbound.get(to as usize) else {
            return;
        };
        if q.try_send(bytes).is_err() {
            // Full (or the sender task is gone): PBFT tolerates loss; count it.
            RuntimeCounters::add(&self.counters.outbound_dropped, 1);
        }
    }

    fn remember(&mut self, key: ReplyKey, reply: Signed<Reply>) {
        if self.bounds.recent_replies == 0 {
            return;
        }
        if self.recent.insert(key, reply).is_none() {
            self.recent_order.push_back(key);
        }
        while self.recent_order.len() > self.bounds.recent_replies {
            if let Some(old) = self.recent_order.pop_front() {
                self.recent.remove(&old);
            }
        }
    }

    fn publish_status(&self, stopped: bool) {
        let s = ReplicaStatus {
            stopped,
            ..status_of(&self.replica)
        };
        self.status.send_if_modified(|old| {
            if *old == s {
                false
            } else {
                *old = s;
                true
            }
        });
    }
}

/// The status of a replica that is running.
pub(crate) fn status_of<A: Application>(r: &Replica<A>) -> ReplicaStatus {
    ReplicaStatus {
        view: r.view(),
        view_changing: r.is_view_changing(),
        is_primary: r.is_primary(),
        last_executed: r.last_executed(),
        stable_seq: r.stable_seq(),
        engine_errors: r.errors().suspicious(),
        engine_routine_rejects: r.errors().routine(),
        stopped: false,
    }
}
