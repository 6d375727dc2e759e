//! The membership state machine as PBFT's replicated application
//! ([`crate::pbft::Application`]).
//!
//! The proposer of each operation is the NodeId of the PBFT request's client key: requests
//! are signed by the client's ed25519 key (docs/pbft.md, "Client requests"), and an MS
//! replica submits its Evict and EndEpoch proposals with its node identity key, so
//! `NodeId::of(client key)` names the replica (PROTOCOL.md: "Quorums count distinct
//! authenticated NodeIds").
//!
//! Replies are deterministic (every correct replica gives the same bytes, so f_ms+1 matching
//! replies prove them). What the runtime must do besides replying (sign a configuration or a
//! freshness root, persist a ConfigCert) goes to a bounded outbox it reads with a cursor;
//! the outbox is not part of the state, and after a restore the runtime re-derives the
//! signing task from [`MembershipState::signing_request`].

use std::collections::VecDeque;

use dbqs_common::identity::{NodeId, PublicKey};

use super::ops::{Op, Outcome, Reply};
use super::state::{MembershipState, Output};
use crate::pbft::{Application, Request, RestoreError};

/// Most outputs kept for the runtime; older ones are dropped (the runtime notices by its
/// cursor falling behind [`MembershipApp::first_output_id`]).
pub const MAX_OUTBOX: usize = 1024;

/// Read-only query: a summary of the current state (docs/membership.md, "Queries").
pub const QUERY_STATUS: u8 = 1;

#[derive(Clone, Debug)]
pub struct MembershipApp {
    state: MembershipState,
    outbox: VecDeque<(u64, Output)>,
    next_output_id: u64,
}

impl MembershipApp {
    pub fn new(state: MembershipState) -> MembershipApp {
        MembershipApp {
            state,
            outbox: VecDeque::new(),
            next_output_id: 0,
        }
    }

    pub fn state(&self) -> &MembershipState {
        &self.state
    }

    /// Outputs with id ≥ `cursor`, oldest first, with their ids. The runtime keeps the id
    /// after the last one it handled.
    pub fn outputs_since(&self, cursor: u64) -> impl Iterator<Item = &(u64, Output)> {
        self.outbox.iter().filter(move |(id, _)| *id >= cursor)
    }

    /// The oldest output still held; a cursor below it missed outputs.
    pub fn first_output_id(&self) -> u64 {
        self.outbox
            .front()
            .map_or(self.next_output_id, |(id, _)| *id)
    }

    /// The id the next output will get.
    pub fn next_output_id(&self) -> u64 {
        self.next_output_id
    }

    fn push_output(&mut self, o: Output) {
        self.outbox.push_back((self.next_output_id, o));
        self.next_output_id += 1;
        while self.outbox.len() > MAX_OUTBOX {
            self.outbox.pop_front();
        }
    }

    /// Executes one encoded operation from `proposer`.
    pub fn execute_op(&mut self, proposer: NodeId, op_bytes: &[u8]) -> Reply {
        let (reply, outputs) = match Op::decode(op_bytes) {
            Ok(op) => self.state.apply(proposer, &op),
            Err(e) => {
                let outcome = self.state.reject(&e);
                let reply = Reply {
                    epoch: self.state.epoch(),
                    outcome,
                };
                (reply, Vec::new())
            }
        };
        for o in outputs {
            self.push_output(o);
        }
        reply
    }

    /// The status summary answered to [`QUERY_STATUS`]: epoch, configuration hash, whether
    /// it is certified, queued changes and proposal counts. Not for freshness (PROTOCOL.md:
    /// freshness is never answered on the read-only path).
    pub fn status(&self) -> Vec<u8> {
        let s = &self.state;
        let mut w = dbqs_common::codec::Writer::tagged("ms-status");
        w.u64(s.epoch())
            .fixed(&s.config_hash())
            .u8(u8::from(s.signing_request().is_none()))
            .u32(s.pending().len() as u32)
            .u32(s.queued_changes() as u32)
            .u32(s.end_votes() as u32)
            .u32(s.ms_change().len() as u32);
        w.finish()
    }
}

impl Application for MembershipApp {
    fn execute(&mut self, batch: &[Request]) -> Vec<Vec<u8>> {
        batch
            .iter()
            .map(|req| {
                let proposer = NodeId::of(&PublicKey(req.client.0));
                self.execute_op(proposer, &req.op).encode()
            })
            .collect()
    }

    fn query(&self, op: &[u8]) -> Vec<u8> {
        if op == [QUERY_STATUS] {
            self.status()
        } else {
            Reply {
                epoch: self.state.epoch(),
                outcome: Outcome::Rejected {
                    code: 0,
                    reason: "unknown read-only query".into(),
                },
            }
            .encode()
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        self.state.encode()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError> {
        let state = MembershipState::decode(snapshot).map_err(|e| RestoreError {
            reason: e.to_string(),
        })?;
        self.state = state;
        self.outbox.clear();
        Ok(())
    }
}
