//! The membership state machine against PROTOCOL.md, "Membership service": each test names
//! the rule it checks. The MS key is dealt fresh per cluster; failures name the epoch.
//!
//! - `operations`: every operation, replay, authority, expiry, eviction, epoch ends;
//! - `snapshots`: determinism, snapshot round trips, the PBFT application adapter;
//! - `signing`: ConfigCert share combination and freshness proofs;
//! - `rejoin`: an evicted node submitting its own AddCert again.

mod operations;
mod rejoin;
mod signing;
mod snapshots;
mod support;
