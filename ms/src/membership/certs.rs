//! Authority certificates the membership service consumes (PROTOCOL.md, "Identities, keys
//! and certificates"): renewal, client revocation and authority rotation.
//!
//! They are defined in `dbqs_common::certs`, beside `AddCert`, `RemoveCert` and
//! `ClientCert`, because `dbqs admin` (which may not depend on the MS) issues them too; the
//! encodings, domain tags and signatures are unchanged. This module re-exports them so the
//! state machine keeps naming them as its own.

pub use dbqs_common::certs::{RenewCert, RevokeClientCert, RotateAuthorityCert};
