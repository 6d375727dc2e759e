//! Byzantine behaviours injected around an otherwise honest replica: the replica runs the
//! real engine, and the simulator rewrites, drops or adds to what it sends or receives.

use std::collections::VecDeque;

use ed25519_dalek::SigningKey;

use super::rng::Rng;
use crate::pbft::{
    Batch, Checkpoint, CheckpointProof, Commit, CommittedBatch, Digest, Message, PrePrepare,
    ReplicaId, Signed, StateTransfer,
};

/// What a faulty replica does. Each counts as one of the f faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behavior {
    /// As primary, sends different pre-prepares to different backups (§4.2).
    EquivocatingPrimary,
    /// Sends nothing at all while it is the primary (§4.5.2: backups must change view).
    SilentPrimary,
    /// Drops every request of this client (index into the simulation's clients).
    CensorClient(usize),
    /// Every message it sends has one byte flipped: bad signatures, digests, encodings.
    CorruptMessages,
    /// Replays old messages (its own and others') to random replicas, and duplicates.
    Replay,
    /// Signs checkpoints of states it does not have, and offers forged state transfers and
    /// commit certificates.
    FalseCheckpoint,
}

/// Bound on the replay buffer: a faulty replica's memory is bounded too.
const REPLAY_BUFFER_MSGS: usize = 64;

pub struct ByzState {
    pub behavior: Behavior,
    pub key: SigningKey,
    pub id: ReplicaId,
    pub seen: VecDeque<Vec<u8>>,
}

impl ByzState {
    pub fn remember(&mut self, bytes: &[u8]) {
        if self.seen.len() >= REPLAY_BUFFER_MSGS {
            self.seen.pop_front();
        }
        self.seen.push_back(bytes.to_vec());
    }

    /// Rewrites one outgoing message for recipient `to`; `None` drops it.
    pub fn outgoing(
        &mut self,
        rng: &mut Rng,
        to: ReplicaId,
        msg: &Message,
        is_primary: bool,
    ) -> Option<Vec<u8>> {
        match self.behavior {
            Behavior::SilentPrimary if is_primary => None,
            Behavior::EquivocatingPrimary => match msg {
                Message::PrePrepare { pre_prepare, batch } if to % 2 == 1 => {
                    let mut alt = Batch {
                        requests: batch.requests.iter().rev().cloned().collect(),
                    };
                    if alt == *batch {
                        alt = Batch::default();
                    }
                    let body = PrePrepare {
                        digest: alt.digest(),
                        ..pre_prepare.body
                    };
                    let pp = Signed::sign(body, self.id, &self.key, &[0; 32]);
                    Some(
                        Message::PrePrepare {
                            pre_prepare: pp,
                            batch: alt,
                        }
                        .encode(),
                    )
                }
                _ => Some(msg.encode()),
            },
            Behavior::CorruptMessages => {
                let mut bytes = msg.encode();
                let i = rng.below(bytes.len() as u64) as usize;
                bytes[i] ^= 1 << rng.below(8);
                Some(bytes)
            }
            Behavior::FalseCheckpoint => match msg {
                Message::Checkpoint(c) => {
                    let body = Checkpoint {
                        state_digest: Digest(rng.bytes32()),
                        ..c.body
                    };
                    Some(
                        Message::Checkpoint(Signed::sign(body, self.id, &self.key, &[0; 32]))
                            .encode(),
                    )
                }
                _ => Some(msg.encode()),
            },
            Behavior::Replay => {
                let bytes = msg.encode();
                self.remember(&bytes);
                Some(bytes)
            }
            _ => Some(msg.encode()),
        }
    }

    /// Extra messages a faulty replica sends on its own each tick: (recipient, bytes).
    pub fn on_tick(
        &mut self,
        rng: &mut Rng,
        n: usize,
        last_executed: u64,
        checkpoint_interval_seqs: u64,
    ) -> Vec<(ReplicaId, Vec<u8>)> {
        let mut out = Vec::new();
        let to = rng.below(n as u64) as ReplicaId;
        if to == self.id {
            return out;
        }
        match self.behavior {
            Behavior::Replay if !self.seen.is_empty() && rng.chance_per_mille(300) => {
                let i = rng.below(self.seen.len() as u64) as usize;
                out.push((to, self.seen[i].clone()));
            }
            Behavior::FalseCheckpoint if rng.chance_per_mille(100) => {
                let k = checkpoint_interval_seqs;
                let seq = (last_executed / k + 1) * k;
                let state = rng.bytes32().to_vec();
                let digest = crate::pbft::state_digest(&state);
                let vote = Signed::sign(
                    Checkpoint {
                        seq,
                        state_digest: digest,
                    },
                    self.id,
                    &self.key,
                    &[0; 32],
                );
                // Only its own signature is real; the "others" are relabelled copies.
                let votes = (0..n as ReplicaId)
                    .map(|signer| Signed {
                        signer,
                        ..vote.clone()
                    })
                    .collect();
                let st = StateTransfer {
                    proof: CheckpointProof {
                        seq,
                        state_digest: digest,
                        votes,
                    },
                    state,
                };
                out.push((
                    to,
                    Message::StateTransfer(Signed::sign(st, self.id, &self.key, &[0; 32])).encode(),
                ));
                let batch = Batch::default();
                let commit = Signed::sign(
                    Commit {
                        view: 0,
                        seq: last_executed + 1,
                        digest: Digest(rng.bytes32()),
                    },
                    self.id,
                    &self.key,
                    &[0; 32],
                );
                let commits = (0..n as ReplicaId)
                    .map(|signer| Signed {
                        signer,
                        ..commit.clone()
                    })
                    .collect();
                let cb = CommittedBatch { batch, commits };
                out.push((
                    to,
                    Message::CommittedBatch(Signed::sign(cb, self.id, &self.key, &[0; 32]))
                        .encode(),
                ));
            }
            _ => {}
        }
        out
    }
}
