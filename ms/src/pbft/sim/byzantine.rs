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
    /// Issue 20 defect 2 (§4.4): as the primary of a view it installed by NEW-VIEW, it
    /// pre-prepares and commits the null batch at every seq of the window at or below that
    /// NEW-VIEW's min-s, where other batches committed. To find replicas whose low watermark
    /// is still below min-s it withholds its checkpoint votes (so checkpoints stabilise late,
    /// and a correct replica that restarts in between loses its unstable one) and never helps
    /// a replica catch up (no state transfers, no committed batches). Run it with
    /// `Scenario::crash_after_checkpoint_per_mille` so correct replicas restart between
    /// signing and stabilising a checkpoint.
    PrePrepareAtOrBelowMinS,
}

/// How long (simulated ms) the primary keeps sending its pre-prepares at or below min-s
/// after it sent a NEW-VIEW, and how often.
const LOW_ATTACK_MS: u64 = 1_500;
const LOW_ATTACK_EVERY_MS: u64 = 50;

/// What a Byzantine wrapper may know of its own honest engine on each tick.
pub struct TickContext {
    pub n: usize,
    pub now_ms: u64,
    pub last_executed: u64,
    pub checkpoint_interval_seqs: u64,
    pub log_window_seqs: u64,
    /// The engine's view, and whether it is that view's primary with the view installed.
    pub view: u64,
    pub active_primary: bool,
}

/// A pending attack of [`Behavior::PrePrepareAtOrBelowMinS`]: the view whose NEW-VIEW it
/// sent, that NEW-VIEW's min-s, when to stop, and when it last sent.
#[derive(Clone, Copy, Debug)]
pub struct LowAttack {
    pub view: u64,
    pub min_s: u64,
    pub until_ms: Option<u64>,
    pub next_ms: u64,
}

/// Bound on the replay buffer: a faulty replica's memory is bounded too.
const REPLAY_BUFFER_MSGS: usize = 64;

pub struct ByzState {
    pub behavior: Behavior,
    pub key: SigningKey,
    pub id: ReplicaId,
    pub seen: VecDeque<Vec<u8>>,
    pub low_attack: Option<LowAttack>,
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
            Behavior::PrePrepareAtOrBelowMinS => match msg {
                Message::Checkpoint(_) | Message::StateTransfer(_) | Message::CommittedBatch(_) => {
                    None
                }
                Message::NewView { new_view, .. } if new_view.signer == self.id => {
                    let min_s = new_view
                        .body
                        .view_changes
                        .iter()
                        .map(|vc| vc.body.stable.seq)
                        .max()
                        .unwrap_or(0);
                    let view = new_view.body.view;
                    if self.low_attack.is_none_or(|a| a.view != view) {
                        self.low_attack = Some(LowAttack {
                            view,
                            min_s,
                            until_ms: None,
                            next_ms: 0,
                        });
                    }
                    Some(msg.encode())
                }
                _ => Some(msg.encode()),
            },
            _ => Some(msg.encode()),
        }
    }

    /// [`Behavior::PrePrepareAtOrBelowMinS`]: the null batch pre-prepared and committed at
    /// every seq in the window at or below min-s, to every other replica.
    fn low_pre_prepares(&mut self, cx: &TickContext) -> Vec<(ReplicaId, Vec<u8>)> {
        let mut out = Vec::new();
        let Some(mut a) = self.low_attack else {
            return out;
        };
        if !cx.active_primary || cx.view != a.view {
            return out;
        }
        let until = *a.until_ms.get_or_insert(cx.now_ms + LOW_ATTACK_MS);
        if cx.now_ms > until || cx.now_ms < a.next_ms {
            self.low_attack = Some(a);
            return out;
        }
        a.next_ms = cx.now_ms + LOW_ATTACK_EVERY_MS;
        self.low_attack = Some(a);
        let batch = Batch::default();
        let digest = batch.digest();
        let lowest = a.min_s.saturating_sub(cx.log_window_seqs - 1).max(1);
        for seq in lowest..=a.min_s {
            let pp = Signed::sign(
                PrePrepare {
                    view: a.view,
                    seq,
                    digest,
                },
                self.id,
                &self.key,
                &[0; 32],
            );
            let commit = Signed::sign(
                Commit {
                    view: a.view,
                    seq,
                    digest,
                },
                self.id,
                &self.key,
                &[0; 32],
            );
            let pp = Message::PrePrepare {
                pre_prepare: pp,
                batch: batch.clone(),
            }
            .encode();
            let commit = Message::Commit(commit).encode();
            for to in (0..cx.n as ReplicaId).filter(|t| *t != self.id) {
                out.push((to, pp.clone()));
                out.push((to, commit.clone()));
            }
        }
        out
    }

    /// Extra messages a faulty replica sends on its own each tick: (recipient, bytes).
    pub fn on_tick(&mut self, rng: &mut Rng, cx: &TickContext) -> Vec<(ReplicaId, Vec<u8>)> {
        if self.behavior == Behavior::PrePrepareAtOrBelowMinS {
            return self.low_pre_prepares(cx);
        }
        let (n, last_executed) = (cx.n, cx.last_executed);
        let checkpoint_interval_seqs = cx.checkpoint_interval_seqs;
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
