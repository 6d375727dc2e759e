//! The sans-IO replica: state, construction, recovery, and the three entry points
//! (`step`, `tick`, `propose`). Protocol handlers live in sibling modules as `impl` blocks.

use std::collections::BTreeMap;

use thiserror::Error;

use super::app::{Application, RestoreError};
use super::codec::DecodeError;
use super::config::{Config, ConfigError};
use super::errors::ErrorCounters;
use super::log::Entry;
use super::messages::{
    Batch, Checkpoint, CheckpointProof, ClientId, Digest, Message, NewView, ReplicaId, Reply,
    Request, Signed, SignedBody, Status, ViewChange,
};
use super::persist::{PersistOp, PersistentState, StableCheckpoint};
use super::state::{ClientTable, decode_state, encode_state, state_digest};
use super::view_change::WaitingNewView;

/// What the runtime must do, in list order. A `Persist` must be durable before any later
/// `Send`/`Broadcast` of the same list leaves the process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Send {
        to: ReplicaId,
        msg: Message,
    },
    /// To every replica except this one.
    Broadcast {
        msg: Message,
    },
    Persist(PersistOp),
    /// Deliver a signed reply to a client.
    Reply {
        client: ClientId,
        reply: Signed<Reply>,
    },
    /// The engine applied this committed batch to the application (for logs and tests; the
    /// runtime must not execute it again).
    Executed {
        seq: u64,
        digest: Digest,
        batch: Batch,
    },
    /// The state was replaced by a verified stable checkpoint fetched from peers.
    StateRestored {
        seq: u64,
        state_digest: Digest,
    },
    /// A new view was installed (§4.4).
    ViewInstalled {
        view: u64,
    },
}

/// Why a replica could not be constructed from persisted state.
#[derive(Debug, Error)]
pub enum RecoverError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("persisted checkpoint state does not decode: {0}")]
    State(#[from] DecodeError),
    #[error("persisted checkpoint state digest does not match its proof")]
    StateDigest,
    #[error("application refused the persisted snapshot: {0}")]
    Restore(#[from] RestoreError),
}

/// A client request waiting to be ordered.
#[derive(Clone, Debug)]
pub(crate) struct Pending {
    pub request: Request,
    /// Arrival order, so the primary proposes first come, first served.
    pub order: u64,
    /// The view in which this replica (as primary) put it in a pre-prepare.
    pub proposed_in_view: Option<u64>,
}

/// One PBFT replica. Owns the application; performs no I/O.
pub struct Replica<A: Application> {
    pub(crate) cfg: Config,
    pub(crate) app: A,
    pub(crate) now_ms: u64,
    pub(crate) view: u64,
    pub(crate) view_changing: bool,
    pub(crate) log: BTreeMap<u64, Entry>,
    /// Stable checkpoint: h, the low watermark (§4.3).
    pub(crate) stable: StableCheckpoint,
    pub(crate) genesis_digest: Digest,
    pub(crate) last_executed: u64,
    /// Next sequence number the primary assigns.
    pub(crate) next_seq: u64,
    pub(crate) clients: ClientTable,
    /// Checkpoints taken above h, not yet stable: seq → (digest, state).
    pub(crate) own_checkpoints: BTreeMap<u64, (Digest, Vec<u8>)>,
    pub(crate) checkpoint_votes: BTreeMap<u64, BTreeMap<ReplicaId, Signed<Checkpoint>>>,
    pub(crate) pending: BTreeMap<(ClientId, u64), Pending>,
    pub(crate) pending_order: u64,
    /// Backup's timer on a waiting request (§4.5.2).
    pub(crate) request_deadline_ms: Option<u64>,
    /// Timer on a view change that has a quorum but no new-view yet (§4.5.2).
    pub(crate) view_change_deadline_ms: Option<u64>,
    pub(crate) view_change_timeout_ms: u64,
    /// Latest valid view-change per replica, with the batches of its prepared certificates.
    pub(crate) view_changes: BTreeMap<ReplicaId, (Signed<ViewChange>, Vec<Batch>)>,
    /// The new-view that installed the current view, forwarded to replicas left behind.
    pub(crate) new_view: Option<(Signed<NewView>, Vec<Batch>)>,
    /// A verified new-view for the view we are changing to whose min-s is above our stable
    /// checkpoint while we lack the state at min-s: installed once that state is ours (§4.4).
    pub(crate) waiting_new_view: Option<WaitingNewView>,
    /// Set by [`Replica::recover`] when the replica restarts in the middle of a view
    /// change: its view-change timer is lost with the process and no peer may relay the
    /// new-view it was waiting for, so the first tick arms the timer again.
    pub(crate) rearm_view_change_timer: bool,
    pub(crate) next_status_ms: u64,
    pub(crate) last_help_ms: Vec<Option<u64>>,
    pub(crate) last_state_transfer_ms: Vec<Option<u64>>,
    pub(crate) errors: ErrorCounters,
}

/// The durable state of a replica that has never run: view 0 and the genesis checkpoint.
pub fn genesis_state<A: Application>(app: &A) -> PersistentState {
    let state = encode_state(&ClientTable::default(), &app.snapshot());
    let digest = state_digest(&state);
    PersistentState {
        view: 0,
        view_changing: false,
        genesis_digest: digest,
        stable: StableCheckpoint {
            proof: CheckpointProof {
                seq: 0,
                state_digest: digest,
                votes: Vec::new(),
            },
            state,
        },
        entries: BTreeMap::new(),
    }
}

impl<A: Application> Replica<A> {
    /// A fresh replica at genesis. The runtime should persist `genesis_state(&app)` first.
    pub fn new(cfg: Config, app: A) -> Result<Self, RecoverError> {
        let persisted = genesis_state(&app);
        Self::recover(cfg, persisted, app)
    }

    /// Restarts a replica from what it persisted. Execution resumes at the stable checkpoint;
    /// later batches are re-learned from peers (commit certificates or state transfer).
    pub fn recover(
        cfg: Config,
        persisted: PersistentState,
        mut app: A,
    ) -> Result<Self, RecoverError> {
        cfg.validate()?;
        let st = &persisted.stable;
        if state_digest(&st.state) != st.proof.state_digest {
            return Err(RecoverError::StateDigest);
        }
        let (clients, app_snapshot) = decode_state(&st.state, &cfg.limits, cfg.max_clients)?;
        app.restore(app_snapshot)?;
        let h = st.proof.seq;
        let n = cfg.n();
        let mut log = BTreeMap::new();
        let mut next_seq = h + 1;
        for (seq, e) in persisted.entries {
            if seq <= h || seq > h + cfg.log_window_seqs {
                continue;
            }
            if e.accepted
                .as_ref()
                .is_some_and(|(pp, _)| pp.body.view == persisted.view)
            {
                next_seq = next_seq.max(seq + 1);
            }
            log.insert(seq, Entry::from_persisted(e));
        }
        let mut r = Replica {
            view_change_timeout_ms: cfg.view_change_timeout_ms,
            cfg,
            app,
            now_ms: 0,
            view: persisted.view,
            view_changing: persisted.view_changing,
            log,
            stable: persisted.stable,
            genesis_digest: persisted.genesis_digest,
            last_executed: h,
            next_seq,
            clients,
            own_checkpoints: BTreeMap::new(),
            checkpoint_votes: BTreeMap::new(),
            pending: BTreeMap::new(),
            pending_order: 0,
            request_deadline_ms: None,
            view_change_deadline_ms: None,
            view_changes: BTreeMap::new(),
            new_view: None,
            waiting_new_view: None,
            rearm_view_change_timer: persisted.view_changing,
            next_status_ms: 0,
            last_help_ms: vec![None; n],
            last_state_transfer_ms: vec![None; n],
            errors: ErrorCounters::default(),
        };
        if r.view_changing {
            // Rebuild (not re-promise) our view-change; the tick retransmits it.
            let vc = r.build_view_change(r.view);
            r.view_changes.insert(r.cfg.me, vc);
        }
        Ok(r)
    }

    /// Handles one decoded message from replica `from` (the transport's authenticated peer).
    pub fn step(&mut self, from: ReplicaId, msg: Message) -> Vec<Action> {
        let mut out = Vec::new();
        if from as usize >= self.cfg.n() || from == self.cfg.me {
            self.errors.wrong_sender += 1;
            return out;
        }
        match msg {
            Message::Request(req) => self.on_request(req, false, &mut out),
            Message::PrePrepare { pre_prepare, batch } => {
                self.on_pre_prepare(from, pre_prepare, batch, &mut out)
            }
            Message::Prepare(p) => self.on_prepare(from, p, &mut out),
            Message::Commit(c) => self.on_commit(from, c, &mut out),
            Message::Checkpoint(c) => self.on_checkpoint(from, c, &mut out),
            Message::ViewChange {
                view_change,
                batches,
            } => self.on_view_change(from, view_change, batches, &mut out),
            Message::NewView { new_view, batches } => self.on_new_view(new_view, batches, &mut out),
            Message::Status(s) => self.on_status(from, s, &mut out),
            Message::CommittedBatch(c) => self.on_committed_batch(from, c, &mut out),
            Message::StateTransfer(s) => self.on_state_transfer(from, s, &mut out),
        }
        out
    }

    /// Decodes and handles raw bytes; decoding failures are counted, never propagated.
    pub fn step_encoded(&mut self, from: ReplicaId, bytes: &[u8]) -> Vec<Action> {
        match Message::decode(bytes, &self.cfg.limits) {
            Ok(msg) => self.step(from, msg),
            Err(e) => {
                match e {
                    DecodeError::Oversized { .. } | DecodeError::TooMany { .. } => {
                        self.errors.oversized += 1
                    }
                    _ => self.errors.malformed += 1,
                }
                Vec::new()
            }
        }
    }

    /// A client request arrived directly from the client.
    pub fn propose(&mut self, request: Request) -> Vec<Action> {
        let mut out = Vec::new();
        self.on_request(request, true, &mut out);
        out
    }

    /// Advances the replica's notion of time; fires timers and periodic retransmission.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Action> {
        let mut out = Vec::new();
        self.now_ms = self.now_ms.max(now_ms);
        let now = self.now_ms;
        if std::mem::take(&mut self.rearm_view_change_timer)
            && self.view_changing
            && self.view_change_deadline_ms.is_none()
        {
            self.view_change_deadline_ms = Some(now + self.view_change_timeout_ms);
        }
        if !self.view_changing {
            let expired = self.request_deadline_ms.is_some_and(|d| now >= d);
            if expired && !self.is_primary() && !self.pending.is_empty() {
                // §4.5.2: the primary did not order a request in time.
                self.start_view_change(self.view.saturating_add(1), &mut out);
            }
        } else if self.view_change_deadline_ms.is_some_and(|d| now >= d) {
            // §4.5.2: the new primary did not deliver a new-view in time; try the next one
            // and wait twice as long.
            self.view_change_timeout_ms = self
                .view_change_timeout_ms
                .saturating_mul(2)
                .min(self.cfg.max_view_change_timeout_ms);
            self.start_view_change(self.view.saturating_add(1), &mut out);
        }
        if now >= self.next_status_ms {
            self.next_status_ms = now + self.cfg.status_interval_ms;
            let status = Status {
                view: self.view,
                view_changing: self.view_changing,
                last_executed: self.last_executed,
                stable_seq: self.stable.proof.seq,
            };
            let msg = Message::Status(self.sign(status));
            out.push(Action::Broadcast { msg });
            self.retransmit(&mut out);
        }
        self.try_propose(&mut out);
        out
    }

    // ---- accessors for runtimes, metrics and tests ----

    pub fn id(&self) -> ReplicaId {
        self.cfg.me
    }
    pub fn view(&self) -> u64 {
        self.view
    }
    pub fn is_view_changing(&self) -> bool {
        self.view_changing
    }
    pub fn is_primary(&self) -> bool {
        self.cfg.primary(self.view) == self.cfg.me
    }
    pub fn last_executed(&self) -> u64 {
        self.last_executed
    }
    pub fn stable_seq(&self) -> u64 {
        self.stable.proof.seq
    }
    pub fn errors(&self) -> &ErrorCounters {
        &self.errors
    }
    pub fn app(&self) -> &A {
        &self.app
    }
    pub fn config(&self) -> &Config {
        &self.cfg
    }
    /// Entries held in the log (at most `log_window_seqs`).
    pub fn log_len(&self) -> usize {
        self.log.len()
    }
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }
    /// Digest of the current replicated state (client table plus application snapshot).
    pub fn state_digest(&self) -> Digest {
        state_digest(&encode_state(&self.clients, &self.app.snapshot()))
    }

    // ---- helpers shared by the handlers ----

    pub(crate) fn sign<T: SignedBody>(&self, body: T) -> Signed<T> {
        Signed::sign(body, self.cfg.me, &self.cfg.signing_key, &self.cfg.domain)
    }

    pub(crate) fn verify<T: SignedBody>(&self, s: &Signed<T>) -> bool {
        s.verify(&self.cfg.replica_keys, &self.cfg.domain)
    }

    /// Within (h, h+L] (§4.2 watermarks).
    pub(crate) fn in_window(&self, seq: u64) -> bool {
        let h = self.stable.proof.seq;
        seq > h && seq <= h.saturating_add(self.cfg.log_window_seqs)
    }

    pub(crate) fn persist_entry(&self, seq: u64, out: &mut Vec<Action>) {
        if let Some(e) = self.log.get(&seq) {
            out.push(Action::Persist(PersistOp::Entry(Box::new(
                e.to_persisted(seq),
            ))));
        }
    }

    pub(crate) fn reply(&self, req: &Request, read_only: bool, result: Vec<u8>) -> Action {
        let reply = Reply {
            view: self.view,
            client: req.client,
            request_num: req.request_num,
            read_only,
            result,
        };
        Action::Reply {
            client: req.client,
            reply: self.sign(reply),
        }
    }

    /// Retransmits this replica's own messages that peers may have lost (Castro's thesis
    /// §5.2): bounded by the window, once per status interval.
    fn retransmit(&mut self, out: &mut Vec<Action>) {
        let me = self.cfg.me;
        if self.view_changing {
            if let Some((vc, batches)) = self.view_changes.get(&me) {
                out.push(Action::Broadcast {
                    msg: Message::ViewChange {
                        view_change: vc.clone(),
                        batches: batches.clone(),
                    },
                });
            }
            return;
        }
        let primary = self.is_primary();
        for (_, e) in self.log.range(self.last_executed + 1..) {
            let Some((pp, batch)) = e
                .accepted
                .as_ref()
                .filter(|(pp, _)| pp.body.view == self.view)
            else {
                continue;
            };
            if primary {
                out.push(Action::Broadcast {
                    msg: Message::PrePrepare {
                        pre_prepare: pp.clone(),
                        batch: batch.clone(),
                    },
                });
            } else if let Some(p) = e.prepares.get(&me) {
                out.push(Action::Broadcast {
                    msg: Message::Prepare(p.clone()),
                });
            }
            if let Some(c) = e.commits.get(&me) {
                out.push(Action::Broadcast {
                    msg: Message::Commit(c.clone()),
                });
            }
        }
        for votes in self.checkpoint_votes.values() {
            if let Some(c) = votes.get(&me) {
                out.push(Action::Broadcast {
                    msg: Message::Checkpoint(c.clone()),
                });
            }
        }
    }
}
