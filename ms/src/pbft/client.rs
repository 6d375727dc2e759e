//! Client-side helper: counts signed replies from distinct replicas until a result is certain.
//!
//! §4.1: a read-write result is certain with f+1 matching replies (one is from a correct
//! replica). §5.1.3: a read-only result needs 2f+1, because replicas answer it without
//! ordering and a minority may be behind; if that cannot be reached the client retries the
//! operation as read-write.

use std::collections::BTreeMap;

use ed25519_dalek::VerifyingKey;
use thiserror::Error;

use super::messages::{ReplicaId, Reply, Request, Signed};

/// Why a reply was not counted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReplyError {
    #[error("reply signed by {signer} but delivered as from {from}")]
    WrongSender { from: ReplicaId, signer: ReplicaId },
    #[error("reply signature does not verify")]
    BadSignature,
    #[error("reply is for another request")]
    WrongRequest,
}

/// Collects the replies to one request.
pub struct ReplyCollector {
    replica_keys: Vec<VerifyingKey>,
    domain: [u8; 32],
    request: Request,
    /// One result per replica; a replica's later reply replaces its earlier one.
    results: BTreeMap<ReplicaId, Vec<u8>>,
}

impl ReplyCollector {
    pub fn new(replica_keys: Vec<VerifyingKey>, request: &Request) -> Self {
        ReplyCollector {
            replica_keys,
            domain: [0; 32],
            request: request.clone(),
            results: BTreeMap::new(),
        }
    }

    /// The group's signature domain (`Config::domain`), when it is not zero.
    pub fn with_domain(mut self, domain: [u8; 32]) -> Self {
        self.domain = domain;
        self
    }

    fn f(&self) -> usize {
        self.replica_keys.len().saturating_sub(1) / 3
    }

    /// Matching replies needed: f+1 for read-write, 2f+1 for read-only.
    pub fn quorum(&self) -> usize {
        if self.request.read_only {
            2 * self.f() + 1
        } else {
            self.f() + 1
        }
    }

    /// Counts a reply from `from`; returns the result once enough replicas agree.
    pub fn add(
        &mut self,
        from: ReplicaId,
        reply: &Signed<Reply>,
    ) -> Result<Option<Vec<u8>>, ReplyError> {
        if reply.signer != from {
            return Err(ReplyError::WrongSender {
                from,
                signer: reply.signer,
            });
        }
        let b = &reply.body;
        if b.client != self.request.client
            || b.request_num != self.request.request_num
            || b.read_only != self.request.read_only
        {
            return Err(ReplyError::WrongRequest);
        }
        if !reply.verify(&self.replica_keys, &self.domain) {
            return Err(ReplyError::BadSignature);
        }
        self.results.insert(from, b.result.clone());
        Ok(self.decided())
    }

    /// The result held by at least `quorum()` distinct replicas, if any.
    pub fn decided(&self) -> Option<Vec<u8>> {
        let mut counts: BTreeMap<&[u8], usize> = BTreeMap::new();
        for r in self.results.values() {
            *counts.entry(r.as_slice()).or_default() += 1;
        }
        counts
            .into_iter()
            .find(|(_, c)| *c >= self.quorum())
            .map(|(r, _)| r.to_vec())
    }

    /// True when no result can reach the quorum any more, even if every silent replica
    /// answered the most common result: a read-only client should retry as read-write.
    pub fn cannot_decide(&self) -> bool {
        let mut counts: BTreeMap<&[u8], usize> = BTreeMap::new();
        for r in self.results.values() {
            *counts.entry(r.as_slice()).or_default() += 1;
        }
        let best = counts.values().copied().max().unwrap_or(0);
        let silent = self.replica_keys.len() - self.results.len();
        best + silent < self.quorum()
    }
}
