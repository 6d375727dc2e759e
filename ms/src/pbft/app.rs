//! The replicated application: whatever PBFT orders. It must be deterministic (§4.1): the
//! same batches in the same order give the same replies and the same snapshot bytes.

use thiserror::Error;

use super::messages::Request;

/// A snapshot could not be restored.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("snapshot rejected: {reason}")]
pub struct RestoreError {
    pub reason: String,
}

/// The state machine PBFT replicates. The engine never calls it with a read-only request in
/// a batch, never with a duplicate request, and calls `execute` in sequence-number order.
pub trait Application {
    /// Executes one committed batch and returns exactly one reply per request, in order.
    fn execute(&mut self, batch: &[Request]) -> Vec<Vec<u8>>;
    /// Answers a read-only operation against the current state, without changing it (§5.1.3).
    fn query(&self, op: &[u8]) -> Vec<u8>;
    /// A deterministic encoding of the whole state; equal states give equal bytes.
    fn snapshot(&self) -> Vec<u8>;
    /// Replaces the state with a snapshot produced by `snapshot` on a correct replica.
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError>;
}
