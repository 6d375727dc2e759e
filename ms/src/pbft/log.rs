//! The message log for sequence numbers inside the watermark window (§4.3). It holds at most
//! L entries, and each entry at most one vote per replica, so it is bounded by L·n votes.

use std::collections::BTreeMap;

use super::messages::{
    Batch, Commit, Digest, PrePrepare, Prepare, PreparedCert, ReplicaId, Signed,
};
use super::persist::PersistedEntry;

/// Everything known about one sequence number.
#[derive(Clone, Debug, Default)]
pub(crate) struct Entry {
    /// The pre-prepare accepted in `accepted.0.body.view` (promised: see `persist`).
    pub accepted: Option<(Signed<PrePrepare>, Batch)>,
    /// Prepares for the current view only; cleared when the view changes.
    pub prepares: BTreeMap<ReplicaId, Signed<Prepare>>,
    /// Commits for the current view only; cleared when the view changes.
    pub commits: BTreeMap<ReplicaId, Signed<Commit>>,
    /// The view in which this replica sent its commit, if it did in the current view.
    pub commit_sent_view: Option<u64>,
    /// Highest-view prepared certificate (kept across views for view changes, §4.4).
    pub prepared: Option<(PreparedCert, Batch)>,
    /// Commit certificate (2f+1 matching commits) and the batch: ready to execute.
    pub committed: Option<(Vec<Signed<Commit>>, Batch)>,
}

impl Entry {
    pub fn from_persisted(p: PersistedEntry) -> Self {
        Entry {
            accepted: p.accepted,
            prepared: p.prepared,
            ..Entry::default()
        }
    }

    pub fn to_persisted(&self, seq: u64) -> PersistedEntry {
        PersistedEntry {
            seq,
            accepted: self.accepted.clone(),
            prepared: self.prepared.clone(),
        }
    }

    /// The (view, digest) this replica accepted, if any.
    pub fn accepted_in(&self, view: u64) -> Option<Digest> {
        self.accepted
            .as_ref()
            .filter(|(pp, _)| pp.body.view == view)
            .map(|(pp, _)| pp.body.digest)
    }

    /// Forget votes of an old view (§4.4: only certificates carry over).
    pub fn clear_votes(&mut self) {
        self.prepares.clear();
        self.commits.clear();
        self.commit_sent_view = None;
    }
}
