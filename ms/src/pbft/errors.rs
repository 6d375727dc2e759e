//! Per-replica counters of rejected input, exposed for metrics. Every reject path in the
//! engine increments exactly one of these; none of them allocates or stores the input.

/// Counts of messages the replica refused, by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorCounters {
    /// Bytes that did not decode (truncated, unknown tag, trailing bytes, bad bool).
    pub malformed: u64,
    /// Bytes or collections above a configured limit.
    pub oversized: u64,
    /// A replica or client signature that failed `verify_strict`.
    pub bad_signature: u64,
    /// A message signed by someone other than the authenticated sender, or by a replica that
    /// may not send it (e.g. a pre-prepare not from the view's primary).
    pub wrong_sender: u64,
    /// A view-bound message for a view other than the current one.
    pub out_of_view: u64,
    /// A sequence number outside the watermark window (h, h+L].
    pub out_of_window: u64,
    /// A certificate (prepared, commit, checkpoint, view-change, new-view) that does not prove
    /// what it claims.
    pub invalid_proof: u64,
    /// A batch or state whose digest does not match the one it is bound to.
    pub bad_digest: u64,
    /// A second, different pre-prepare or vote from the same replica for the same slot.
    pub conflicting: u64,
    /// A retransmission or replay of something already processed.
    pub duplicate: u64,
    /// A message about something already executed or garbage-collected.
    pub stale: u64,
    /// A request refused because the pending queue is full.
    pub queue_full: u64,
    /// A request that is malformed for its path (read-only in a batch, oversized op).
    pub invalid_request: u64,
    /// Our own checkpoint digest disagrees with a stable 2f+1 quorum: our state is corrupt.
    pub state_mismatch: u64,
    /// A verified state transfer whose content the client table or application rejected.
    pub restore_failed: u64,
}

impl ErrorCounters {
    /// Rejections that point at a faulty or malicious peer (or at our own state):
    /// malformed, oversized, bad signature, wrong sender, invalid proof, bad digest,
    /// conflicting, invalid request, state mismatch, failed restore.
    pub fn suspicious(&self) -> u64 {
        self.malformed
            + self.oversized
            + self.bad_signature
            + self.wrong_sender
            + self.invalid_proof
            + self.bad_digest
            + self.conflicting
            + self.invalid_request
            + self.state_mismatch
            + self.restore_failed
    }

    /// Rejections a healthy group produces in normal operation: retransmissions and
    /// replays, messages about executed or collected slots, messages for another view or
    /// outside the window (around view changes and checkpoints), and a full queue.
    pub fn routine(&self) -> u64 {
        self.out_of_view + self.out_of_window + self.duplicate + self.stale + self.queue_full
    }

    /// Sum of all counters.
    pub fn total(&self) -> u64 {
        self.malformed
            + self.oversized
            + self.bad_signature
            + self.wrong_sender
            + self.out_of_view
            + self.out_of_window
            + self.invalid_proof
            + self.bad_digest
            + self.conflicting
            + self.duplicate
            + self.stale
            + self.queue_full
            + self.invalid_request
            + self.state_mismatch
            + self.restore_failed
    }
}
