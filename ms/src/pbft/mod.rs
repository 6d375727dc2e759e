//! A sans-IO PBFT engine (Castro and Liskov, OSDI 1999 / TOCS 2002, the signature variant).
//!
//! The engine is a plain struct, [`Replica`], driven by three calls: [`Replica::step`] for a
//! message from another replica, [`Replica::propose`] for a request from a client, and
//! [`Replica::tick`] for the passage of time. Each returns a list of [`Action`]s that the
//! runtime performs in order; a [`Action::Persist`] must be durable before any later send in
//! the same list leaves. There are no sockets, clocks, threads or random numbers inside, so
//! the [`sim`] module can run whole groups deterministically from a seed.
//!
//! Module map: `messages` + `codec` (wire format and signatures), `normal` (§4.2), `checkpoint`
//! (§4.3), `view_change` (§4.4–4.5), `catchup` (state transfer), `persist` (what survives a
//! crash), `client` (reply quorums), `sim` (deterministic simulator).

mod app;
mod catchup;
mod checkpoint;
mod client;
pub(crate) mod codec;
mod config;
mod errors;
mod log;
mod messages;
mod normal;
mod persist;
mod replica;
mod state;
mod view_change;

pub mod sim;

pub use app::{Application, RestoreError};
pub use client::{ReplyCollector, ReplyError};
pub use codec::{DecodeError, Limits};
pub use config::{Config, ConfigError};
pub use errors::ErrorCounters;
pub use messages::{
    Batch, Checkpoint, CheckpointProof, ClientId, Commit, CommittedBatch, Digest, Message, NewView,
    PrePrepare, Prepare, PreparedCert, ReplicaId, Reply, Request, Signed, SignedBody,
    StateTransfer, Status, ViewChange, Wire, decode_reply, encode_reply,
};
pub use persist::{PersistOp, PersistedEntry, PersistentState, StableCheckpoint};
pub use replica::{Action, RecoverError, Replica, genesis_state};
pub use state::state_digest;
