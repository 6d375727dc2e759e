//! Static configuration of one replica: the group's keys, this replica's key, and every bound.

use ed25519_dalek::{SigningKey, VerifyingKey};
use thiserror::Error;

use super::codec::Limits;
use super::messages::ReplicaId;

/// Why a configuration cannot run PBFT.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    #[error("group of {0} replicas: PBFT needs n = 3f+1 with n >= 1")]
    BadGroupSize(usize),
    #[error("replica id {me} is not in a group of {n}")]
    UnknownReplica { me: ReplicaId, n: usize },
    #[error("signing key does not match replica {0}'s public key")]
    KeyMismatch(ReplicaId),
    #[error("log window must be a positive multiple of the checkpoint interval, at least twice it")]
    BadWindow,
    #[error("limit {0} is zero or too small")]
    BadLimit(&'static str),
}

/// Everything a replica needs to know before it starts. Times are in milliseconds of the
/// runtime's clock, which the engine only sees through `tick(now_ms)`.
#[derive(Clone, Debug)]
pub struct Config {
    /// Public keys of all replicas, indexed by `ReplicaId`; n = 3f+1.
    pub replica_keys: Vec<VerifyingKey>,
    pub me: ReplicaId,
    pub signing_key: SigningKey,
    /// Names this replica group in every signature (`Signed`): groups with the same keys
    /// (successive MS terms) must use different domains. Zero by default.
    pub domain: [u8; 32],
    /// K of §4.3: a checkpoint is taken every K sequence numbers.
    pub checkpoint_interval_seqs: u64,
    /// L of §4.3: sequence numbers accepted lie in (h, h+L] above the stable checkpoint h.
    pub log_window_seqs: u64,
    /// How many batches the primary keeps in flight before it waits (pipelining bound).
    pub max_inflight_batches: u64,
    /// Base view-change timer (§4.5.2); doubles on each consecutive failed view change.
    pub view_change_timeout_ms: u64,
    /// Cap of the doubled view-change timer.
    pub max_view_change_timeout_ms: u64,
    /// How often a replica broadcasts its status and retransmits its own messages.
    pub status_interval_ms: u64,
    /// At most one state transfer is sent to each peer per this interval.
    pub state_transfer_interval_ms: u64,
    /// Client requests waiting to be ordered (one per client is kept).
    pub max_pending_requests: usize,
    /// Clients in the reply cache; the least recently executed is evicted deterministically.
    pub max_clients: usize,
    /// Most committed batches sent to a lagging peer in answer to one status message.
    pub max_catchup_batches: u64,
    pub limits: Limits,
}

impl Config {
    /// A configuration with the default bounds.
    pub fn new(replica_keys: Vec<VerifyingKey>, me: ReplicaId, signing_key: SigningKey) -> Self {
        Config {
            replica_keys,
            me,
            signing_key,
            domain: [0; 32],
            checkpoint_interval_seqs: 16,
            log_window_seqs: 32,
            max_inflight_batches: 4,
            view_change_timeout_ms: 2_000,
            max_view_change_timeout_ms: 60_000,
            status_interval_ms: 200,
            state_transfer_interval_ms: 1_000,
            max_pending_requests: 4_096,
            max_clients: 65_536,
            max_catchup_batches: 32,
            limits: Limits::default(),
        }
    }

    pub fn n(&self) -> usize {
        self.replica_keys.len()
    }
    /// Faults tolerated: n = 3f+1.
    pub fn f(&self) -> usize {
        (self.n().saturating_sub(1)) / 3
    }
    /// 2f+1: the size of prepared/commit/checkpoint/view-change quorums.
    pub fn quorum(&self) -> usize {
        2 * self.f() + 1
    }
    /// The primary of view v is v mod n (§4.1).
    pub fn primary(&self, view: u64) -> ReplicaId {
        (view % self.n() as u64) as ReplicaId
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let n = self.n();
        if n == 0 || n != 3 * self.f() + 1 {
            return Err(ConfigError::BadGroupSize(n));
        }
        let Some(mine) = self.replica_keys.get(self.me as usize) else {
            return Err(ConfigError::UnknownReplica { me: self.me, n });
        };
        if self.signing_key.verifying_key() != *mine {
            return Err(ConfigError::KeyMismatch(self.me));
        }
        let k = self.checkpoint_interval_seqs;
        let l = self.log_window_seqs;
        if k == 0 || l < 2 * k || !l.is_multiple_of(k) {
            return Err(ConfigError::BadWindow);
        }
        let lim = &self.limits;
        if lim.max_signatures < n {
            return Err(ConfigError::BadLimit("max_signatures"));
        }
        if (lim.max_proofs as u64) < l {
            return Err(ConfigError::BadLimit("max_proofs"));
        }
        for (name, v) in [
            ("max_batch_requests", lim.max_batch_requests),
            ("max_batch_bytes", lim.max_batch_bytes),
            ("max_pending_requests", self.max_pending_requests),
            ("max_clients", self.max_clients),
        ] {
            if v == 0 {
                return Err(ConfigError::BadLimit(name));
            }
        }
        if self.max_inflight_batches == 0 || self.max_catchup_batches == 0 {
            return Err(ConfigError::BadLimit("max_inflight_batches"));
        }
        Ok(())
    }
}
