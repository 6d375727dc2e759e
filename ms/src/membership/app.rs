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
use super::rotation::RotationState;
use super::state::{MembershipState, Output};
use crate::pbft::{Application, Request, RestoreError};

/// Most outputs kept for the runtime; older ones are dropped (the runtime notices by its
/// cursor falling behind [`MembershipApp::first_output_id`]).
pub const MAX_OUTBOX: usize = 1024;

/// Read-only query: a summary of the current state (docs/membership.md, "Queries").
pub const QUERY_STATUS: u8 = 1;
/// Read-only query: the running (or, once retired, the handed-over) MS rotation, for new
/// MS members ([`RotationStatus`]).
pub const QUERY_ROTATION: u8 = 2;
/// Read-only query: the whole state, answered only once this MS retired (the successor
/// MS starts from it; 2f+1 matching read-only replies certify it).
pub const QUERY_RETIRED_STATE: u8 = 3;

/// The answer to [`QUERY_ROTATION`].
#[derive(Clone, Debug)]
pub struct RotationStatus {
    pub epoch: dbqs_common::Epoch,
    pub retired: Option<dbqs_common::Epoch>,
    pub rotation: Option<RotationState>,
}

impl RotationStatus {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = dbqs_common::codec::Writer::tagged("ms-rotation-status");
        w.u64(self.epoch);
        match self.retired {
            Some(e) => w.u8(1).u64(e),
            None => w.u8(0),
        };
        match &self.rotation {
            Some(r) => w.u8(1).bytes(&r.encode()),
            None => w.u8(0),
        };
        w.finish()
    }

    pub fn decode(bytes: &[u8]) -> Result<RotationStatus, dbqs_common::codec::DecodeError> {
        use dbqs_common::codec::{DecodeError, Reader};
        let bad = |field| DecodeError::Invalid {
            field,
            reason: "must be 0 or 1",
        };
        let mut r = Reader::new(bytes);
        r.expect_tag("ms-rotation-status")?;
        let epoch = r.u64("epoch")?;
        let retired = match r.u8("retired")? {
            0 => None,
            1 => Some(r.u64("retired epoch")?),
            _ => return Err(bad("retired")),
        };
        let rotation = match r.u8("rotation")? {
            0 => None,
            1 => Some(RotationState::decode(
                r.bytes("rotation", super::snapshot::MAX_SNAPSHOT_CONFIG_BYTES)?,
            )?),
            _ => return Err(bad("rotation")),
        };
        r.finish()?;
        Ok(RotationStatus {
            epoch,
            retired,
            rotation,
        })
    }
}

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
                // A query whose read-only answers disagreed (replicas at different points)
                // is ordered instead (docs/pbft.md); it answers from the ordered state and
                // changes nothing. No operation encodes to a single byte.
                if let [q @ (QUERY_STATUS | QUERY_ROTATION | QUERY_RETIRED_STATE)] =
                    req.op.as_slice()
                {
                    return self.query(&[*q]);
                }
                let proposer = NodeId::of(&PublicKey(req.client.0));
                self.execute_op(proposer, &req.op).encode()
            })
            .collect()
    }

    fn query(&self, op: &[u8]) -> Vec<u8> {
        if op == [QUERY_STATUS] {
            self.status()
        } else if op == [QUERY_ROTATION] {
            let s = &self.state;
            RotationStatus {
                epoch: s.epoch(),
                retired: s.retired(),
                rotation: match s.retired() {
                    Some(_) => s.handed_over_rotation(),
                    None => s.rotation(),
                }
                .cloned(),
            }
            .encode()
        } else if op == [QUERY_RETIRED_STATE] && self.state.retired().is_some() {
            self.state.encode()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotation_status_round_trips_and_refuses_truncation() {
        let s = RotationStatus {
            epoch: 7,
            retired: Some(8),
            rotation: None,
        };
        let b = s.encode();
        let back = RotationStatus::decode(&b).unwrap();
        assert_eq!(
            (back.epoch, back.retired, back.rotation.is_none()),
            (7, Some(8), true)
        );
        for n in 0..b.len() {
            assert!(RotationStatus::decode(&b[..n]).is_err(), "truncated at {n}");
        }
        let mut long = b.clone();
        long.push(0);
        assert!(RotationStatus::decode(&long).is_err());
    }

    proptest::proptest! {
        #[test]
        fn rotation_status_decoder_never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1024)) {
            let _ = RotationStatus::decode(&data);
            let mut tagged = dbqs_common::codec::Writer::tagged("ms-rotation-status").finish();
            tagged.extend_from_slice(&data);
            let _ = RotationStatus::decode(&tagged);
        }
    }
}
