//! The checks behind the fuzz targets in `fuzz_targets/` (one line each) and the seed
//! program `make_seeds.rs`, which runs every seed through them to prove it decodes.
//!
//! Every check asserts, for arbitrary bytes, that the decoder returns (never panics), and:
//! - where the encoding is documented canonical (`dbqs_common::codec`, "the one
//!   deterministic binary encoding"; `ms/src/pbft/codec.rs`, "the encoding must be
//!   canonical"; the configuration and the snapshot, which say so themselves): whatever
//!   decodes re-encodes to exactly the input bytes;
//! - where it is not (the MS `Reply`, whose reason is decoded lossily as UTF-8, the PBFT
//!   persistence records, which are not signed, the node's transfer plan record and the MS
//!   rotation query answer, which decode lists into sets and maps): the re-encoding decodes
//!   again, to the same value (compared by its encoding where the type has no `PartialEq`).
//!
//! A canonical decoder also round-trips the other way: for a decoded `x` from bytes `b`,
//! `encode(x) == b`, so `decode(encode(x))` is `decode(b)`, which is `x`.
//!
//! Each function returns whether the input decoded, so seeds can be checked.

use std::fmt::Debug;
use std::sync::OnceLock;

use dbqs_client::chunked::Manifest;
use dbqs_common::certs::{
    AddCert, ClientCert, RemoveCert, RenewCert, RevokeClientCert, RotateAuthorityCert,
};
use dbqs_common::config::{ConfigCert, Configuration};
use dbqs_common::genesis::{decode_adds, encode_adds};
use dbqs_common::object::{ObjectId, StoredObject};
use dbqs_common::threshold::MsPublicKey;
use dbqs_ms::membership::resharing::{Accusation, Dealing, open_sub_share};
use dbqs_ms::membership::{
    FreshnessProof, MembershipState, Op, Outcome, Reply, RotationState, RotationStatus,
};
use dbqs_ms::pbft::{Limits, Message, PersistOp, PersistentState, decode_reply, encode_reply};
use dbqs_server::ms_rotation::TermFile;
use dbqs_server::transfer::plan::Pending;

/// First input byte of `common_decoders`, taken modulo [`common::COUNT`].
pub mod common {
    pub const CONFIGURATION: u8 = 0;
    pub const CONFIG_CERT: u8 = 1;
    pub const ADD_CERT: u8 = 2;
    pub const REMOVE_CERT: u8 = 3;
    pub const CLIENT_CERT: u8 = 4;
    pub const RENEW_CERT: u8 = 5;
    pub const REVOKE_CLIENT_CERT: u8 = 6;
    pub const ROTATE_AUTHORITY_CERT: u8 = 7;
    pub const GENESIS_ADDS: u8 = 8;
    pub const STORED_OBJECT: u8 = 9;
    pub const COUNT: u8 = 10;
}

/// First input byte of `ms_ops`, taken modulo [`ms::COUNT`].
pub mod ms {
    pub const OP: u8 = 0;
    pub const REPLY: u8 = 1;
    pub const FRESHNESS_PROOF: u8 = 2;
    pub const DEALING: u8 = 3;
    pub const ACCUSATION: u8 = 4;
    pub const COUNT: u8 = 5;
}

/// First input byte of `pbft_messages`: the low bits, modulo [`pbft::COUNT`], pick the
/// decoder; the high bit [`pbft::TIGHT`] picks small [`Limits`] instead of the defaults.
pub mod pbft {
    pub const MESSAGE: u8 = 0;
    pub const REPLY: u8 = 1;
    pub const PERSIST_OP: u8 = 2;
    pub const PERSISTENT_STATE: u8 = 3;
    pub const COUNT: u8 = 4;
    pub const TIGHT: u8 = 0x80;
}

/// First input byte of `node_decoders`, taken modulo [`node::COUNT`].
pub mod node {
    pub const PENDING: u8 = 0;
    pub const TERM_FILE: u8 = 1;
    pub const ROTATION_STATUS: u8 = 2;
    pub const COUNT: u8 = 3;
}

/// Panics unless the re-encoding is exactly the input.
fn assert_same(kind: &str, input: &[u8], reencoded: &[u8]) {
    if input != reencoded {
        let at = input
            .iter()
            .zip(reencoded)
            .position(|(a, b)| a != b)
            .unwrap_or(input.len().min(reencoded.len()));
        panic!(
            "{kind}: decode then encode changed the bytes (first difference at offset {at}; \
             {} bytes in, {} bytes out)",
            input.len(),
            reencoded.len()
        );
    }
}

/// For a canonical decoder: a successful decode must re-encode to the input.
fn canonical<T, E>(
    kind: &str,
    input: &[u8],
    decoded: Result<T, E>,
    encode: impl Fn(&T) -> Vec<u8>,
) -> Option<T> {
    let value = decoded.ok()?;
    assert_same(kind, input, &encode(&value));
    Some(value)
}

/// For a non-canonical decoder: the re-encoding of a decoded value decodes to that value.
fn stable<T: PartialEq + Debug, E: Debug>(
    kind: &str,
    value: &T,
    encode: impl Fn(&T) -> Vec<u8>,
    decode: impl Fn(&[u8]) -> Result<T, E>,
) {
    let again = decode(&encode(value))
        .unwrap_or_else(|e| panic!("{kind}: the re-encoding of a decoded value fails: {e:?}"));
    assert_eq!(&again, value, "{kind}: decode(encode(v)) != v");
}

/// `Configuration`, `ConfigCert` (and the configuration inside it), the six authority
/// certificates, `genesis.adds`, and `StoredObject`.
pub fn common_decoders(data: &[u8]) -> bool {
    let Some((&sel, buf)) = data.split_first() else {
        return false;
    };
    match sel % common::COUNT {
        common::CONFIGURATION => canonical(
            "Configuration",
            buf,
            Configuration::decode(buf),
            Configuration::encode,
        )
        .is_some(),
        common::CONFIG_CERT => {
            let Some(cert) = canonical(
                "ConfigCert",
                buf,
                ConfigCert::decode(buf),
                ConfigCert::encode,
            ) else {
                return false;
            };
            // The configuration inside is untrusted too (verify decodes it first).
            let c = &cert.configuration;
            canonical(
                "Configuration in ConfigCert",
                c,
                Configuration::decode(c),
                Configuration::encode,
            );
            true
        }
        common::ADD_CERT => {
            canonical("AddCert", buf, AddCert::decode(buf), AddCert::encode).is_some()
        }
        common::REMOVE_CERT => canonical(
            "RemoveCert",
            buf,
            RemoveCert::decode(buf),
            RemoveCert::encode,
        )
        .is_some(),
        common::CLIENT_CERT => canonical(
            "ClientCert",
            buf,
            ClientCert::decode(buf),
            ClientCert::encode,
        )
        .is_some(),
        common::RENEW_CERT => {
            canonical("RenewCert", buf, RenewCert::decode(buf), RenewCert::encode).is_some()
        }
        common::REVOKE_CLIENT_CERT => canonical(
            "RevokeClientCert",
            buf,
            RevokeClientCert::decode(buf),
            RevokeClientCert::encode,
        )
        .is_some(),
        common::ROTATE_AUTHORITY_CERT => canonical(
            "RotateAuthorityCert",
            buf,
            RotateAuthorityCert::decode(buf),
            RotateAuthorityCert::encode,
        )
        .is_some(),
        common::GENESIS_ADDS => {
            canonical("genesis.adds", buf, decode_adds(buf), |a| encode_adds(a)).is_some()
        }
        _ => stored_object(buf),
    }
}

const OBJECT_TAG_LEN: usize = b"dbqs.v1.object\0".len();

/// `StoredObject::decode` takes the id the record was looked up by. Besides a fixed id, try
/// the two the input itself suggests, so that mutated records still reach the checks past
/// the id: the content id of everything after tag, kind and length (a content object), and
/// the 32 bytes after tag and kind (an owned object's header id).
fn stored_object(buf: &[u8]) -> bool {
    let mut ids = vec![ObjectId([0; 32])];
    if let Some(content) = buf.get(OBJECT_TAG_LEN + 5..) {
        ids.push(ObjectId::content(content));
    }
    if let Some(id) = buf.get(OBJECT_TAG_LEN + 1..OBJECT_TAG_LEN + 33) {
        ids.push(ObjectId::from_slice(id).expect("32 bytes"));
    }
    let mut ok = false;
    for id in &ids {
        ok |= canonical(
            "StoredObject",
            buf,
            StoredObject::decode(id, buf),
            StoredObject::encode,
        )
        .is_some();
    }
    ok
}

/// Any fixed MS public key: `FreshnessProof::verify` checks the Merkle path (hostile index,
/// leaf count and path) before the signature, so a key that never matches still reaches it.
fn fixed_ms_key() -> &'static MsPublicKey {
    static KEY: OnceLock<MsPublicKey> = OnceLock::new();
    KEY.get_or_init(|| {
        let mut b = [0u8; 32];
        b[31] = 7;
        let sk = blsttc::SecretKey::from_bytes(b).expect("a valid scalar");
        MsPublicKey(sk.public_key())
    })
}

/// The MS operations, replies and freshness proofs.
pub fn ms_ops(data: &[u8]) -> bool {
    let Some((&sel, buf)) = data.split_first() else {
        return false;
    };
    match sel % ms::COUNT {
        ms::OP => canonical("Op", buf, Op::decode(buf), Op::encode).is_some(),
        ms::REPLY => {
            let Ok(reply) = Reply::decode(buf) else {
                return false;
            };
            // Not canonical: the reason is decoded with `from_utf8_lossy`. Its re-encoding
            // must decode, and a reason that was valid UTF-8 (no U+FFFD came in) round-trips.
            let re = reply.encode();
            let again = Reply::decode(&re)
                .unwrap_or_else(|e| panic!("Reply: the re-encoding fails to decode: {e:?}"));
            let lossless = match &reply.outcome {
                Outcome::Rejected { reason, .. } => !reason.contains('\u{FFFD}'),
                _ => true,
            };
            if lossless {
                assert_same("Reply", buf, &re);
                assert_eq!(again, reply, "Reply: decode(encode(v)) != v");
            }
            true
        }
        ms::DEALING => canonical("Dealing", buf, Dealing::decode(buf), Dealing::encode).is_some(),
        ms::ACCUSATION => canonical(
            "Accusation",
            buf,
            Accusation::decode(buf),
            Accusation::encode,
        )
        .is_some(),
        _ => {
            let Some(proof) = canonical(
                "FreshnessProof",
                buf,
                FreshnessProof::decode(buf),
                FreshnessProof::encode,
            ) else {
                return false;
            };
            let _ = proof.verify(fixed_ms_key());
            true
        }
    }
}

/// Small limits, so that inputs the fuzzer can reach hit every bound.
pub fn tight_limits() -> Limits {
    Limits {
        max_message_bytes: 4096,
        max_batch_requests: 3,
        max_batch_bytes: 256,
        max_op_bytes: 128,
        max_reply_bytes: 128,
        max_signatures: 4,
        max_proofs: 3,
        max_state_bytes: 1024,
    }
}

/// The PBFT wire messages, client replies and persistence records.
pub fn pbft_messages(data: &[u8]) -> bool {
    let Some((&sel, buf)) = data.split_first() else {
        return false;
    };
    let limits = if sel & pbft::TIGHT != 0 {
        tight_limits()
    } else {
        Limits::default()
    };
    let l = &limits;
    match (sel & !pbft::TIGHT) % pbft::COUNT {
        pbft::MESSAGE => {
            let Some(m) = canonical(
                "pbft Message",
                buf,
                Message::decode(buf, l),
                Message::encode,
            ) else {
                return false;
            };
            if let Message::Request(r) = &m {
                // Parses the hostile client key and signature.
                let _ = r.verify();
            }
            true
        }
        pbft::REPLY => canonical("pbft Reply", buf, decode_reply(buf, l), encode_reply).is_some(),
        pbft::PERSIST_OP => {
            let Ok(op) = PersistOp::decode(buf, l) else {
                return false;
            };
            stable("PersistOp", &op, PersistOp::encode, |b| {
                PersistOp::decode(b, l)
            });
            true
        }
        _ => {
            let Ok(state) = PersistentState::decode(buf, l) else {
                return false;
            };
            stable("PersistentState", &state, PersistentState::encode, |b| {
                PersistentState::decode(b, l)
            });
            true
        }
    }
}

/// The membership state machine's snapshot (the whole input, no selector byte).
pub fn membership_snapshot(data: &[u8]) -> bool {
    let Some(state) = canonical(
        "MembershipState snapshot",
        data,
        MembershipState::decode(data),
        MembershipState::encode,
    ) else {
        return false;
    };
    // Read-only queries on a restored state must not panic either.
    let _ = (
        state.epoch(),
        state.config_cert(),
        state.signing_request(),
        state.f_ms(),
    );
    let _ = (
        state.queued_changes(),
        state.end_votes(),
        state.agreed_time_ms(),
    );
    true
}

/// What a storage node decodes outside the MS replica: its transfer plan record (redb,
/// `META_PENDING`), its `ms-term-E.bin` file, and the MS rotation query answer its rotation
/// agent reads from the old MS.
pub fn node_decoders(data: &[u8]) -> bool {
    let Some((&sel, buf)) = data.split_first() else {
        return false;
    };
    match sel % node::COUNT {
        node::PENDING => pending(buf),
        node::TERM_FILE => term_file(buf),
        _ => rotation_status(buf),
    }
}

/// `transfer::plan::Pending`: not canonical (ranges go into a map and a set, so order and
/// repeats are lost, and a first-version record re-encodes as the second version).
fn pending(buf: &[u8]) -> bool {
    let Ok(p) = Pending::decode(buf) else {
        return false;
    };
    stable("transfer Pending", &p, Pending::encode, Pending::decode);
    // What the node does with a loaded plan must not panic either, even on one that breaks
    // the plan's invariants (ranges that overlap, `then` before `from`): a few ranges of
    // each list, so that one input stays cheap.
    let mut q = p.clone();
    for (r, s) in p.ranges.iter().take(8) {
        let _ = (
            p.holding(&ObjectId(r.end)),
            p.holding(&ObjectId(r.start)),
            p.overlaps(r),
            p.complete_as_of(r, s.from),
            p.complete_as_of(r, s.newest()),
        );
        q.complete(r, s.from);
        q.complete(r, s.newest());
    }
    for d in p.deleted.iter().take(8) {
        let _ = (p.overlaps(d), p.complete_as_of(d, u64::MAX));
    }
    let _ = q.is_empty();
    true
}

/// `ms_rotation::TermFile`: canonical (fixed-width fields, a share that decodes only from
/// its canonical 32 bytes). The state inside is what a restart decodes (and takes over).
fn term_file(buf: &[u8]) -> bool {
    let Some(t) = canonical("ms-term file", buf, TermFile::decode(buf), TermFile::encode) else {
        return false;
    };
    if let Some(mut s) = canonical(
        "MembershipState in an ms-term file",
        &t.state,
        MembershipState::decode(&t.state),
        MembershipState::encode,
    ) {
        s.take_over();
        let _ = (s.epoch(), s.configuration(), s.rotation().is_some());
    }
    let _ = t.share.map(|s| s.public_key_share());
    true
}

/// Any fixed x25519 secret: the rotation agent opens its sub-share of every dealing in the
/// answer; with a key that never matches, the hostile dealing is still parsed and checked.
const FIXED_X25519_SECRET: [u8; 32] = [0x42; 32];

/// `RotationStatus` (the answer to `QUERY_ROTATION`): not canonical when a rotation is
/// inside (its acks, upheld dealers and handover shares are decoded into maps and sets);
/// canonical without one. Neither it nor `RotationState` has `PartialEq`; their encodings
/// hold every field (S's key set is recomputed from the dealings), so those are compared.
fn rotation_status(buf: &[u8]) -> bool {
    let Ok(status) = RotationStatus::decode(buf) else {
        return false;
    };
    let re = status.encode();
    if status.rotation.is_none() {
        assert_same("RotationStatus without a rotation", buf, &re);
    }
    let again = RotationStatus::decode(&re)
        .unwrap_or_else(|e| panic!("RotationStatus: the re-encoding fails to decode: {e:?}"));
    assert_eq!(
        again.encode(),
        re,
        "RotationStatus: decode(encode(v)) != v (compared by encoding)"
    );
    assert_eq!(
        (again.epoch, again.retired),
        (status.epoch, status.retired),
        "RotationStatus: decode(encode(v)) != v"
    );
    if let Some(rs) = &status.rotation {
        rotation_queries(rs);
    }
    true
}

/// What the rotation agent reads of a decoded rotation (ms_rotation.rs, `join_step`).
fn rotation_queries(rs: &RotationState) {
    let rot = rs.rotation();
    let _ = (
        rot.epoch(),
        rot.old_members().len(),
        rot.old_threshold(),
        rot.new_threshold(),
        rs.new_quorum(),
        rs.handed_over(),
        rs.attempt(),
        rs.handover_count(),
        rs.chosen().map(|(set, keys)| (set.len(), keys.len())),
    );
    for d in rs.dealings() {
        let _ = (d.digest(), rs.is_upheld(d.dealer_index));
        for k in 0..rot.new_members().len() {
            let _ = rs.acked(k as u32, d.dealer_index);
        }
    }
    if let Some(d) = rs.dealings().first() {
        let _ = open_sub_share(rot, d, 0, &FIXED_X25519_SECRET);
    }
    for k in 0..rot.new_members().len() {
        let _ = rs.handover_given(k as u32);
    }
}

const MANIFEST_TAG: &[u8] = b"dbqs.v1.manifest\0";

/// The client's chunked-file manifest (`dbqs_client::chunked::Manifest`), the whole input:
/// a value read from the store is a manifest exactly when it starts with the manifest tag.
/// Canonical; and a decoded manifest is consistent (non-zero chunk size within the value
/// limit, as many chunks as the total size needs), which reassembly relies on.
pub fn client_manifest(data: &[u8]) -> bool {
    match Manifest::decode(data) {
        Ok(Some(m)) => {
            assert_same("manifest", data, &m.encode());
            assert!(m.chunk_bytes > 0, "manifest: a chunk size of 0 decoded");
            assert!(
                m.chunk_bytes as usize <= dbqs_common::object::MAX_VALUE_BYTES,
                "manifest: a chunk larger than a value decoded"
            );
            assert_eq!(
                m.total_bytes.div_ceil(u64::from(m.chunk_bytes)),
                m.chunks.len() as u64,
                "manifest: the chunk count does not match the sizes"
            );
            true
        }
        Ok(None) => {
            assert!(
                !data.starts_with(MANIFEST_TAG),
                "manifest: a tagged value was taken for a plain file"
            );
            false
        }
        Err(_) => {
            assert!(
                data.starts_with(MANIFEST_TAG),
                "manifest: an untagged value was refused instead of read as a plain file"
            );
            false
        }
    }
}
