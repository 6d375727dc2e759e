//! Self-verifying objects (PROTOCOL.md, "dBQS storage").
//!
//! - Content objects: `id = SHA-256("content" ‖ bytes)`, immutable.
//! - Owned objects: `id = SHA-256("owned" ‖ owner key ‖ name)`; each version is
//!   signed by the owner over (id, timestamp, value hash).

use std::cmp::Ordering;
use std::fmt;

use dbqs_proto::v1 as pb;
use thiserror::Error;

use crate::codec::{DecodeError, Reader, Writer, sha256};
use crate::identity::{KeyPair, PublicKey, SignatureError};

/// Largest value of one object (content or owned). Files larger than this are
/// chunked by the client.
pub const MAX_VALUE_BYTES: usize = 4 << 20;
/// Largest name of an owned object.
pub const MAX_NAME_BYTES: usize = 1024;

/// A position on the 256-bit ring: object ids and node ring positions.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectId(pub [u8; 32]);

impl ObjectId {
    pub fn content(bytes: &[u8]) -> ObjectId {
        ObjectId(sha256(&[b"content", bytes]))
    }

    pub fn owned(owner: &PublicKey, name: &[u8]) -> ObjectId {
        ObjectId(sha256(&[b"owned", &owner.0, name]))
    }

    pub fn from_slice(b: &[u8]) -> Result<ObjectId, ObjectError> {
        b.try_into()
            .map(ObjectId)
            .map_err(|_| ObjectError::BadId(b.len()))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Result<ObjectId, ObjectError> {
        let v = hex::decode(s).map_err(|_| ObjectError::BadId(s.len() / 2))?;
        ObjectId::from_slice(&v)
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId({})", &self.to_hex()[..16])
    }
}

/// What is wrong with an object, a version or a request about one.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ObjectError {
    #[error("object id must be 32 bytes, got {0}")]
    BadId(usize),
    #[error("value is {0} bytes, more than the limit of {MAX_VALUE_BYTES}")]
    ValueTooLarge(usize),
    #[error("name must be 1..={MAX_NAME_BYTES} bytes, got {0}")]
    BadName(usize),
    #[error("content does not hash to the object id")]
    ContentMismatch,
    #[error("object id does not match owner key and name")]
    OwnedIdMismatch,
    #[error("value does not match the signed value hash")]
    ValueHashMismatch,
    #[error("writer id must be 32 bytes")]
    BadWriter,
    #[error("missing field {0}")]
    Missing(&'static str),
    #[error("owner signature: {0}")]
    Signature(#[from] SignatureError),
    #[error("stored record: {0}")]
    Decode(#[from] DecodeError),
}

/// `(counter, writer)`: the version of an owned object.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Timestamp {
    pub counter: u64,
    pub writer: [u8; 32],
}

/// Everything needed to check an owned version's signature, without its value.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct OwnedHeader {
    pub id: ObjectId,
    pub owner: PublicKey,
    pub name: Vec<u8>,
    pub timestamp: Timestamp,
    pub value_hash: [u8; 32],
    pub signature: [u8; 64],
}

/// The total order of versions: timestamp, then value hash (PROTOCOL.md: ties,
/// which only a faulty owner makes, break on the value hash).
pub fn version_cmp(a: &OwnedHeader, b: &OwnedHeader) -> Ordering {
    (a.timestamp, a.value_hash).cmp(&(b.timestamp, b.value_hash))
}

/// The exact bytes an owner signs (documented in `proto/dbqs/v1/types.proto`).
pub fn owned_signing_bytes(id: &ObjectId, ts: &Timestamp, value_hash: &[u8; 32]) -> Vec<u8> {
    let mut w = Writer::tagged("owned-write");
    w.fixed(&id.0)
        .u64(ts.counter)
        .fixed(&ts.writer)
        .fixed(value_hash);
    w.finish()
}

impl OwnedHeader {
    /// Signs a new version as the owner.
    pub fn sign(owner: &KeyPair, name: &[u8], timestamp: Timestamp, value: &[u8]) -> OwnedHeader {
        let id = ObjectId::owned(&owner.public(), name);
        let value_hash = sha256(&[value]);
        let signature = owner.sign(&owned_signing_bytes(&id, &timestamp, &value_hash));
        OwnedHeader {
            id,
            owner: owner.public(),
            name: name.to_vec(),
            timestamp,
            value_hash,
            signature,
        }
    }

    /// Checks the name bound, that the id belongs to owner and name, and the
    /// owner's signature.
    pub fn verify(&self) -> Result<(), ObjectError> {
        if self.name.is_empty() || self.name.len() > MAX_NAME_BYTES {
            return Err(ObjectError::BadName(self.name.len()));
        }
        if ObjectId::owned(&self.owner, &self.name) != self.id {
            return Err(ObjectError::OwnedIdMismatch);
        }
        let msg = owned_signing_bytes(&self.id, &self.timestamp, &self.value_hash);
        self.owner.verify(&msg, &self.signature)?;
        Ok(())
    }

    pub fn to_proto(&self) -> pb::OwnedHeader {
        pb::OwnedHeader {
            object_id: self.id.0.to_vec(),
            owner_key: self.owner.0.to_vec(),
            name: self.name.clone(),
            timestamp: Some(pb::Timestamp {
                counter: self.timestamp.counter,
                writer: self.timestamp.writer.to_vec(),
            }),
            value_hash: self.value_hash.to_vec(),
            signature: self.signature.to_vec(),
        }
    }

    /// Converts and validates (signature included) a header from the wire.
    pub fn from_proto(p: &pb::OwnedHeader) -> Result<OwnedHeader, ObjectError> {
        let ts = p
            .timestamp
            .as_ref()
            .ok_or(ObjectError::Missing("timestamp"))?;
        if p.name.len() > MAX_NAME_BYTES {
            return Err(ObjectError::BadName(p.name.len()));
        }
        let h = OwnedHeader {
            id: ObjectId::from_slice(&p.object_id)?,
            owner: PublicKey::from_slice(&p.owner_key).map_err(ObjectError::Signature)?,
            name: p.name.clone(),
            timestamp: Timestamp {
                counter: ts.counter,
                writer: ts
                    .writer
                    .as_slice()
                    .try_into()
                    .map_err(|_| ObjectError::BadWriter)?,
            },
            value_hash: p
                .value_hash
                .as_slice()
                .try_into()
                .map_err(|_| ObjectError::Missing("value_hash (32 bytes)"))?,
            signature: p
                .signature
                .as_slice()
                .try_into()
                .map_err(|_| ObjectError::Signature(SignatureError::Malformed))?,
        };
        h.verify()?;
        Ok(h)
    }

    fn encode_into(&self, w: &mut Writer) {
        w.fixed(&self.id.0)
            .fixed(&self.owner.0)
            .bytes(&self.name)
            .u64(self.timestamp.counter)
            .fixed(&self.timestamp.writer)
            .fixed(&self.value_hash)
            .fixed(&self.signature);
    }

    fn decode_from(r: &mut Reader<'_>) -> Result<OwnedHeader, DecodeError> {
        Ok(OwnedHeader {
            id: ObjectId(r.array("id")?),
            owner: PublicKey(r.array("owner")?),
            name: r.bytes("name", MAX_NAME_BYTES)?.to_vec(),
            timestamp: Timestamp {
                counter: r.u64("counter")?,
                writer: r.array("writer")?,
            },
            value_hash: r.array("value_hash")?,
            signature: r.array("signature")?,
        })
    }
}

/// A complete owned version.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct OwnedValue {
    pub header: OwnedHeader,
    pub value: Vec<u8>,
}

impl OwnedValue {
    pub fn sign(owner: &KeyPair, name: &[u8], timestamp: Timestamp, value: Vec<u8>) -> Self {
        OwnedValue {
            header: OwnedHeader::sign(owner, name, timestamp, &value),
            value,
        }
    }

    /// Header checks plus the value's size and hash.
    pub fn verify(&self) -> Result<(), ObjectError> {
        if self.value.len() > MAX_VALUE_BYTES {
            return Err(ObjectError::ValueTooLarge(self.value.len()));
        }
        if sha256(&[&self.value]) != self.header.value_hash {
            return Err(ObjectError::ValueHashMismatch);
        }
        self.header.verify()
    }

    pub fn to_proto(&self) -> pb::OwnedValue {
        pb::OwnedValue {
            header: Some(self.header.to_proto()),
            value: self.value.clone(),
        }
    }

    pub fn from_proto(p: &pb::OwnedValue) -> Result<OwnedValue, ObjectError> {
        if p.value.len() > MAX_VALUE_BYTES {
            return Err(ObjectError::ValueTooLarge(p.value.len()));
        }
        let header =
            OwnedHeader::from_proto(p.header.as_ref().ok_or(ObjectError::Missing("header"))?)?;
        let v = OwnedValue {
            header,
            value: p.value.clone(),
        };
        if sha256(&[&v.value]) != v.header.value_hash {
            return Err(ObjectError::ValueHashMismatch);
        }
        Ok(v)
    }
}

/// Checks content bytes against their id.
pub fn verify_content(id: &ObjectId, bytes: &[u8]) -> Result<(), ObjectError> {
    if bytes.len() > MAX_VALUE_BYTES {
        return Err(ObjectError::ValueTooLarge(bytes.len()));
    }
    if ObjectId::content(bytes) != *id {
        return Err(ObjectError::ContentMismatch);
    }
    Ok(())
}

/// An object as a replica stores it on disk.
// Both variants own a heap buffer of the value; the inline header is ~200 bytes
// and these values are short-lived, so boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum StoredObject {
    Content(Vec<u8>),
    Owned(OwnedValue),
}

impl StoredObject {
    /// The on-disk record: tag "object", a kind byte, the fields.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::tagged("object");
        match self {
            StoredObject::Content(b) => {
                w.u8(1).bytes(b);
            }
            StoredObject::Owned(v) => {
                w.u8(2);
                v.header.encode_into(&mut w);
                w.bytes(&v.value);
            }
        }
        w.finish()
    }

    /// Decodes and re-verifies a record read from disk: a corrupted record is an
    /// error, never served.
    pub fn decode(id: &ObjectId, buf: &[u8]) -> Result<StoredObject, ObjectError> {
        let mut r = Reader::new(buf);
        r.expect_tag("object")?;
        let obj = match r.u8("kind")? {
            1 => {
                let b = r.bytes("content", MAX_VALUE_BYTES)?.to_vec();
                verify_content(id, &b)?;
                StoredObject::Content(b)
            }
            2 => {
                let header = OwnedHeader::decode_from(&mut r)?;
                let value = r.bytes("value", MAX_VALUE_BYTES)?.to_vec();
                let v = OwnedValue { header, value };
                if v.header.id != *id {
                    return Err(ObjectError::OwnedIdMismatch);
                }
                v.verify()?;
                StoredObject::Owned(v)
            }
            _ => {
                return Err(ObjectError::Decode(DecodeError::Invalid {
                    field: "kind",
                    reason: "unknown object kind",
                }));
            }
        };
        r.finish()?;
        Ok(obj)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(c: u64) -> Timestamp {
        Timestamp {
            counter: c,
            writer: [1; 32],
        }
    }

    #[test]
    fn content_and_owned_ids_are_domain_separated() {
        let k = KeyPair::from_seed([3; 32]);
        let mut crafted = k.public().0.to_vec();
        crafted.extend_from_slice(b"n");
        // "owned" ‖ key ‖ name can never equal "content" ‖ bytes for the same bytes.
        assert_ne!(
            ObjectId::owned(&k.public(), b"n"),
            ObjectId::content(&crafted)
        );
    }

    #[test]
    fn signed_version_verifies_and_tampering_is_caught() {
        let k = KeyPair::from_seed([1; 32]);
        let v = OwnedValue::sign(&k, b"a", ts(3), b"hello".to_vec());
        v.verify().unwrap();
        let back = OwnedValue::from_proto(&v.to_proto()).unwrap();
        assert_eq!(back, v);

        let mut bad = v.clone();
        bad.value = b"hellO".to_vec();
        assert_eq!(bad.verify(), Err(ObjectError::ValueHashMismatch));

        let mut bad = v.clone();
        bad.header.timestamp.counter = 4;
        assert!(matches!(bad.verify(), Err(ObjectError::Signature(_))));

        let other = KeyPair::from_seed([2; 32]);
        let mut bad = v.clone();
        bad.header.owner = other.public();
        assert_eq!(bad.verify(), Err(ObjectError::OwnedIdMismatch));
    }

    #[test]
    fn versions_order_by_timestamp_then_value_hash() {
        let k = KeyPair::from_seed([1; 32]);
        let a = OwnedHeader::sign(&k, b"a", ts(1), b"x");
        let b = OwnedHeader::sign(&k, b"a", ts(2), b"x");
        let c = OwnedHeader::sign(&k, b"a", ts(2), b"y");
        assert_eq!(version_cmp(&a, &b), Ordering::Less);
        assert_ne!(version_cmp(&b, &c), Ordering::Equal);
        assert_eq!(version_cmp(&b, &c), b.value_hash.cmp(&c.value_hash));
    }

    #[test]
    fn stored_records_round_trip_and_corruption_is_detected() {
        let k = KeyPair::from_seed([1; 32]);
        let v = OwnedValue::sign(&k, b"a", ts(1), vec![9; 100]);
        let rec = StoredObject::Owned(v.clone()).encode();
        assert_eq!(
            StoredObject::decode(&v.header.id, &rec).unwrap(),
            StoredObject::Owned(v.clone())
        );
        let mut flipped = rec.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(StoredObject::decode(&v.header.id, &flipped).is_err());
        assert!(StoredObject::decode(&v.header.id, &rec[..rec.len() - 1]).is_err());

        let c = b"blob".to_vec();
        let id = ObjectId::content(&c);
        let rec = StoredObject::Content(c.clone()).encode();
        assert_eq!(
            StoredObject::decode(&id, &rec).unwrap(),
            StoredObject::Content(c)
        );
        assert!(StoredObject::decode(&ObjectId([0; 32]), &rec).is_err());
    }

    proptest::proptest! {
        #[test]
        fn record_decoder_never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = StoredObject::decode(&ObjectId([0; 32]), &data);
        }
    }
}
