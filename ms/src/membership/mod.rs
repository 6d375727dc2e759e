//! The membership service's deterministic state machine (PROTOCOL.md, "Membership service"),
//! which PBFT replicates. Sans-IO: no tokio, clocks, randomness or I/O inside; time arrives
//! only as data in ordered operations.
//!
//! - [`ops`]: the operations (Add, Remove, Renew, RevokeClient, RotateAuthority, Evict,
//!   EndEpoch, CertifiedEpoch, Freshness, and the rotation's Deal, AckDealing, Accuse and
//!   HandoverShare), each tagged with its epoch, and the replies;
//! - [`state`]: [`MembershipState`], which checks and queues them and computes the next
//!   configuration when an epoch ends;
//! - [`certs`]: the authority certificates only the MS consumes (renewal, client revocation,
//!   authority rotation);
//! - [`signing`]: threshold-signing helpers ([`ShareCollector`] for ConfigCerts,
//!   [`FreshnessCombiner`] for freshness proofs);
//! - [`freshness`]: batch Merkle trees, transferable proofs and the requester-only check;
//! - [`resharing`]: the cryptography of MS key resharing (dealings, accusations,
//!   combination), and [`rotation`]: how the state machine orders it and hands over;
//! - [`app`]: [`MembershipApp`], the [`crate::pbft::Application`] adapter;
//! - `snapshot`: the canonical, bounded snapshot encoding.
//!
//! What it must not know: the PBFT engine's internals, the network, storage, or the MS key
//! shares themselves (the runtime signs; see `Output::SignConfig`). docs/membership.md
//! records the design choices.

pub mod app;
pub mod certs;
pub mod freshness;
mod next;
pub mod ops;
pub mod resharing;
pub mod rotation;
pub mod signing;
mod snapshot;
pub mod state;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use app::{
    MAX_OUTBOX, MembershipApp, QUERY_RETIRED_STATE, QUERY_ROTATION, QUERY_STATUS, RotationStatus,
};
pub use certs::{RenewCert, RevokeClientCert, RotateAuthorityCert};
pub use freshness::{
    FreshnessAnswer, FreshnessError, FreshnessProof, MAX_FRESHNESS_NONCES, merkle_path,
    merkle_paths, merkle_root, verify_matching_answers,
};
pub use ops::{Op, OpError, OpKind, Outcome, Reply};
pub use rotation::{RotationState, handover_signing_bytes, pbft_domain};
pub use signing::{
    FreshnessCombiner, Progress, ShareCollector, ShareError, SignRequest, ms_public_key,
    share_from_bytes, sign_freshness,
};
pub use snapshot::{MAX_SNAPSHOT_CONFIG_BYTES, SnapshotError};
pub use state::{
    Change, GenesisError, LeaveReason, MAX_EVICT_PROPOSALS_PER_REPLICA, MAX_PENDING,
    MAX_REJOINABLE, MAX_USED_SERIALS, MembershipState, MsChangeReason, Output, Rejoin,
};
