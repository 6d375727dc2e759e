//! Certificates signed by the trusted authority (PROTOCOL.md, "Identities").
//!
//! Each is signed with the authority's ed25519 key over its canonical body, which
//! starts with its own domain tag, so a signature over one kind can never be replayed
//! as another. `encode()` is that body followed by the signature(s); `decode()` checks
//! the tag, bounds every field and refuses trailing bytes. The tags:
//!
//! | kind | tag | who consumes it |
//! |---|---|---|
//! | [`AddCert`] | `add-cert` | MS, nodes |
//! | [`RemoveCert`] | `remove-cert` | MS |
//! | [`RenewCert`] | `ms-renew-cert` | MS |
//! | [`RevokeClientCert`] | `ms-revoke-client-cert` | MS |
//! | [`RotateAuthorityCert`] | `ms-rotate-authority-cert` | MS |
//! | [`ClientCert`] | `client-cert` | nodes |
//!
//! They all live here, below both the MS and the client, because the MS checks them
//! and `dbqs admin` issues them (ARCHITECTURE.md, "Dependencies run one way"); the
//! `ms-` tags are kept from when the last three lived in the MS crate, so signatures
//! made then stay valid.

use thiserror::Error;

use crate::codec::{DecodeError, Reader, Writer, sha256};
use crate::identity::{KeyPair, NodeId, PublicKey, SignatureError};

/// Longest node address ("host:port") in a certificate or configuration.
pub const MAX_ADDRESS_BYTES: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CertError {
    #[error("certificate is not signed by the authority: {0}")]
    Signature(#[from] SignatureError),
    #[error("certificate expired at {not_after_ms} ms (now {now_ms} ms)")]
    Expired { not_after_ms: u64, now_ms: u64 },
    #[error("malformed certificate: {0}")]
    Decode(#[from] DecodeError),
}

/// Admits a node: binds its identity key to its TLS certificate, its x25519 key
/// (for receiving MS key shares) and its address.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct AddCert {
    pub node_key: PublicKey,
    /// SHA-256 of the DER TLS certificate the authority issued to the node.
    pub tls_cert_hash: [u8; 32],
    pub x25519_key: [u8; 32],
    pub address: String,
    pub serial: u64,
    /// Milliseconds since the Unix epoch.
    pub not_after_ms: u64,
    pub signature: [u8; 64],
}

impl AddCert {
    fn body(&self) -> Vec<u8> {
        let mut w = Writer::tagged("add-cert");
        w.fixed(&self.node_key.0)
            .fixed(&self.tls_cert_hash)
            .fixed(&self.x25519_key)
            .bytes(self.address.as_bytes())
            .u64(self.serial)
            .u64(self.not_after_ms);
        w.finish()
    }

    #[allow(clippy::too_many_arguments)]
    pub fn issue(
        authority: &KeyPair,
        node_key: PublicKey,
        tls_cert_hash: [u8; 32],
        x25519_key: [u8; 32],
        address: String,
        serial: u64,
        not_after_ms: u64,
    ) -> AddCert {
        let mut c = AddCert {
            node_key,
            tls_cert_hash,
            x25519_key,
            address,
            serial,
            not_after_ms,
            signature: [0; 64],
        };
        c.signature = authority.sign(&c.body());
        c
    }

    pub fn node_id(&self) -> NodeId {
        NodeId::of(&self.node_key)
    }

    pub fn verify(&self, authority: &PublicKey, now_ms: u64) -> Result<(), CertError> {
        authority.verify(&self.body(), &self.signature)?;
        if now_ms > self.not_after_ms {
            return Err(CertError::Expired {
                not_after_ms: self.not_after_ms,
                now_ms,
            });
        }
        Ok(())
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = self.body();
        b.extend_from_slice(&self.signature);
        b
    }

    pub fn decode(buf: &[u8]) -> Result<AddCert, CertError> {
        let mut r = Reader::new(buf);
        r.expect_tag("add-cert")?;
        let node_key = PublicKey(r.array("node_key")?);
        let tls_cert_hash = r.array("tls_cert_hash")?;
        let x25519_key = r.array("x25519_key")?;
        let address = r.text("address", MAX_ADDRESS_BYTES)?;
        let c = AddCert {
            node_key,
            tls_cert_hash,
            x25519_key,
            address,
            serial: r.u64("serial")?,
            not_after_ms: r.u64("not_after")?,
            signature: r.array("signature")?,
        };
        r.finish()?;
        Ok(c)
    }
}

/// Removes a node at the next epoch.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RemoveCert {
    pub node: NodeId,
    pub serial: u64,
    pub signature: [u8; 64],
}

impl RemoveCert {
    fn body(node: &NodeId, serial: u64) -> Vec<u8> {
        let mut w = Writer::tagged("remove-cert");
        w.fixed(&node.0).u64(serial);
        w.finish()
    }

    pub fn issue(authority: &KeyPair, node: NodeId, serial: u64) -> RemoveCert {
        RemoveCert {
            node,
            serial,
            signature: authority.sign(&Self::body(&node, serial)),
        }
    }

    pub fn verify(&self, authority: &PublicKey) -> Result<(), CertError> {
        Ok(authority.verify(&Self::body(&self.node, self.serial), &self.signature)?)
    }

    /// The canonical encoding: the signed body, then the signature.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Self::body(&self.node, self.serial);
        b.extend_from_slice(&self.signature);
        b
    }

    pub fn decode(buf: &[u8]) -> Result<RemoveCert, CertError> {
        let mut r = Reader::new(buf);
        r.expect_tag("remove-cert")?;
        let c = RemoveCert {
            node: NodeId(r.array("node")?),
            serial: r.u64("serial")?,
            signature: r.array("signature")?,
        };
        r.finish()?;
        Ok(c)
    }
}

/// A client credential: the client's ed25519 key and the TLS certificate the
/// authority (as cluster CA) issued with it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ClientCert {
    pub client_key: PublicKey,
    /// SHA-256 of the client's DER TLS certificate.
    pub tls_cert_hash: [u8; 32],
    pub not_after_ms: u64,
    pub signature: [u8; 64],
}

impl ClientCert {
    fn body(client_key: &PublicKey, tls_cert_hash: &[u8; 32], not_after_ms: u64) -> Vec<u8> {
        let mut w = Writer::tagged("client-cert");
        w.fixed(&client_key.0)
            .fixed(tls_cert_hash)
            .u64(not_after_ms);
        w.finish()
    }

    pub fn issue(
        authority: &KeyPair,
        client_key: PublicKey,
        tls_cert_der: &[u8],
        not_after_ms: u64,
    ) -> ClientCert {
        let tls_cert_hash = sha256(&[tls_cert_der]);
        ClientCert {
            client_key,
            tls_cert_hash,
            not_after_ms,
            signature: authority.sign(&Self::body(&client_key, &tls_cert_hash, not_after_ms)),
        }
    }

    pub fn verify(&self, authority: &PublicKey, now_ms: u64) -> Result<(), CertError> {
        authority.verify(
            &Self::body(&self.client_key, &self.tls_cert_hash, self.not_after_ms),
            &self.signature,
        )?;
        if now_ms > self.not_after_ms {
            return Err(CertError::Expired {
                not_after_ms: self.not_after_ms,
                now_ms,
            });
        }
        Ok(())
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Self::body(&self.client_key, &self.tls_cert_hash, self.not_after_ms);
        b.extend_from_slice(&self.signature);
        b
    }

    pub fn decode(buf: &[u8]) -> Result<ClientCert, CertError> {
        let mut r = Reader::new(buf);
        r.expect_tag("client-cert")?;
        let c = ClientCert {
            client_key: PublicKey(r.array("client_key")?),
            tls_cert_hash: r.array("tls_cert_hash")?,
            not_after_ms: r.u64("not_after")?,
            signature: r.array("signature")?,
        };
        r.finish()?;
        Ok(c)
    }
}

/// Extends a member's certificate: the node stays past its old not-after
/// (PROTOCOL.md, "Membership service": a node whose certificate passes its not-after leaves
/// at the next epoch unless renewed).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RenewCert {
    pub node: NodeId,
    /// New expiry, milliseconds since the Unix epoch.
    pub not_after_ms: u64,
    pub serial: u64,
    pub signature: [u8; 64],
}

impl RenewCert {
    fn body(node: &NodeId, not_after_ms: u64, serial: u64) -> Vec<u8> {
        let mut w = Writer::tagged("ms-renew-cert");
        w.fixed(&node.0).u64(not_after_ms).u64(serial);
        w.finish()
    }

    pub fn issue(authority: &KeyPair, node: NodeId, not_after_ms: u64, serial: u64) -> RenewCert {
        RenewCert {
            node,
            not_after_ms,
            serial,
            signature: authority.sign(&Self::body(&node, not_after_ms, serial)),
        }
    }

    /// Checks the authority signature and that the new expiry is still ahead of `now_ms`.
    pub fn verify(&self, authority: &PublicKey, now_ms: u64) -> Result<(), CertError> {
        authority.verify(
            &Self::body(&self.node, self.not_after_ms, self.serial),
            &self.signature,
        )?;
        if now_ms > self.not_after_ms {
            return Err(CertError::Expired {
                not_after_ms: self.not_after_ms,
                now_ms,
            });
        }
        Ok(())
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Self::body(&self.node, self.not_after_ms, self.serial);
        b.extend_from_slice(&self.signature);
        b
    }

    pub fn decode(buf: &[u8]) -> Result<RenewCert, CertError> {
        let mut r = Reader::new(buf);
        r.expect_tag("ms-renew-cert")?;
        let c = RenewCert {
            node: NodeId(r.array("node")?),
            not_after_ms: r.u64("not_after")?,
            serial: r.u64("serial")?,
            signature: r.array("signature")?,
        };
        r.finish()?;
        Ok(c)
    }
}

/// Revokes a client credential: from the next configuration on, nodes refuse the TLS
/// certificate whose SHA-256 is listed (docs/protocol.md, "Configuration encoding").
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RevokeClientCert {
    pub client_key: PublicKey,
    /// SHA-256 of the client's DER TLS certificate: what the configuration lists.
    pub tls_cert_hash: [u8; 32],
    pub serial: u64,
    pub signature: [u8; 64],
}

impl RevokeClientCert {
    fn body(client_key: &PublicKey, tls_cert_hash: &[u8; 32], serial: u64) -> Vec<u8> {
        let mut w = Writer::tagged("ms-revoke-client-cert");
        w.fixed(&client_key.0).fixed(tls_cert_hash).u64(serial);
        w.finish()
    }

    pub fn issue(
        authority: &KeyPair,
        client_key: PublicKey,
        tls_cert_hash: [u8; 32],
        serial: u64,
    ) -> RevokeClientCert {
        RevokeClientCert {
            client_key,
            tls_cert_hash,
            serial,
            signature: authority.sign(&Self::body(&client_key, &tls_cert_hash, serial)),
        }
    }

    pub fn verify(&self, authority: &PublicKey) -> Result<(), CertError> {
        Ok(authority.verify(
            &Self::body(&self.client_key, &self.tls_cert_hash, self.serial),
            &self.signature,
        )?)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Self::body(&self.client_key, &self.tls_cert_hash, self.serial);
        b.extend_from_slice(&self.signature);
        b
    }

    pub fn decode(buf: &[u8]) -> Result<RevokeClientCert, CertError> {
        let mut r = Reader::new(buf);
        r.expect_tag("ms-revoke-client-cert")?;
        let c = RevokeClientCert {
            client_key: PublicKey(r.array("client_key")?),
            tls_cert_hash: r.array("tls_cert_hash")?,
            serial: r.u64("serial")?,
            signature: r.array("signature")?,
        };
        r.finish()?;
        Ok(c)
    }
}

/// Replaces the authority key from the next configuration on. Signed by the current
/// authority (PROTOCOL.md's table) and, as a proof of possession, by the new key too:
/// rotating to a key nobody holds would leave the cluster with no one able to admit or
/// remove nodes ever again, and no later certificate could undo it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RotateAuthorityCert {
    pub new_authority: PublicKey,
    pub serial: u64,
    /// By the current authority.
    pub signature: [u8; 64],
    /// By `new_authority`, over the same body.
    pub new_key_signature: [u8; 64],
}

impl RotateAuthorityCert {
    fn body(new_authority: &PublicKey, serial: u64) -> Vec<u8> {
        let mut w = Writer::tagged("ms-rotate-authority-cert");
        w.fixed(&new_authority.0).u64(serial);
        w.finish()
    }

    pub fn issue(current: &KeyPair, new: &KeyPair, serial: u64) -> RotateAuthorityCert {
        let body = Self::body(&new.public(), serial);
        RotateAuthorityCert {
            new_authority: new.public(),
            serial,
            signature: current.sign(&body),
            new_key_signature: new.sign(&body),
        }
    }

    /// Checks both signatures: the current authority's, then the new key's possession proof.
    pub fn verify(&self, authority: &PublicKey) -> Result<(), CertError> {
        let body = Self::body(&self.new_authority, self.serial);
        authority.verify(&body, &self.signature)?;
        self.new_authority.verify(&body, &self.new_key_signature)?;
        Ok(())
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Self::body(&self.new_authority, self.serial);
        b.extend_from_slice(&self.signature);
        b.extend_from_slice(&self.new_key_signature);
        b
    }

    pub fn decode(buf: &[u8]) -> Result<RotateAuthorityCert, CertError> {
        let mut r = Reader::new(buf);
        r.expect_tag("ms-rotate-authority-cert")?;
        let c = RotateAuthorityCert {
            new_authority: PublicKey(r.array("new_authority")?),
            serial: r.u64("serial")?,
            signature: r.array("signature")?,
            new_key_signature: r.array("new_key_signature")?,
        };
        r.finish()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_cert_verifies_only_under_authority_and_before_expiry() {
        let auth = KeyPair::from_seed([1; 32]);
        let node = KeyPair::from_seed([2; 32]);
        let c = AddCert::issue(
            &auth,
            node.public(),
            [3; 32],
            [4; 32],
            "127.0.0.1:1".into(),
            1,
            1000,
        );
        c.verify(&auth.public(), 999).unwrap();
        assert!(matches!(
            c.verify(&auth.public(), 1001),
            Err(CertError::Expired { .. })
        ));
        assert!(c.verify(&node.public(), 0).is_err());
        let back = AddCert::decode(&c.encode()).unwrap();
        assert_eq!(back, c);
        let mut forged = c.clone();
        forged.address = "10.0.0.1:1".into();
        assert!(forged.verify(&auth.public(), 0).is_err());
    }

    #[test]
    fn a_signature_of_one_certificate_kind_is_not_valid_for_another() {
        let auth = KeyPair::from_seed([1; 32]);
        let r = RemoveCert::issue(&auth, NodeId([5; 32]), 7);
        r.verify(&auth.public()).unwrap();
        let c = ClientCert::issue(&auth, PublicKey([5; 32]), b"der", 10);
        c.verify(&auth.public(), 0).unwrap();
        let back = ClientCert::decode(&c.encode()).unwrap();
        assert_eq!(back, c);
        let mut as_client = c.clone();
        as_client.signature = r.signature;
        assert!(as_client.verify(&auth.public(), 0).is_err());
    }

    #[test]
    fn renew_cert_verifies_only_under_its_authority_and_before_its_expiry() {
        let auth = KeyPair::from_seed([1; 32]);
        let other = KeyPair::from_seed([2; 32]);
        let c = RenewCert::issue(&auth, NodeId([3; 32]), 1_000, 7);
        c.verify(&auth.public(), 1_000).unwrap();
        assert!(matches!(
            c.verify(&auth.public(), 1_001),
            Err(CertError::Expired { .. })
        ));
        assert!(c.verify(&other.public(), 0).is_err());
        assert_eq!(RenewCert::decode(&c.encode()).unwrap(), c);
        let mut forged = c.clone();
        forged.not_after_ms = u64::MAX;
        assert!(forged.verify(&auth.public(), 0).is_err());
    }

    #[test]
    fn revoke_client_cert_round_trips_and_rejects_forgery() {
        let auth = KeyPair::from_seed([1; 32]);
        let c = RevokeClientCert::issue(&auth, PublicKey([4; 32]), [5; 32], 9);
        c.verify(&auth.public()).unwrap();
        assert_eq!(RevokeClientCert::decode(&c.encode()).unwrap(), c);
        let mut forged = c.clone();
        forged.tls_cert_hash = [6; 32];
        assert!(forged.verify(&auth.public()).is_err());
    }

    #[test]
    fn rotate_authority_needs_the_current_key_and_possession_of_the_new_one() {
        let cur = KeyPair::from_seed([1; 32]);
        let new = KeyPair::from_seed([2; 32]);
        let c = RotateAuthorityCert::issue(&cur, &new, 3);
        c.verify(&cur.public()).unwrap();
        assert!(c.verify(&new.public()).is_err(), "wrong current authority");
        assert_eq!(RotateAuthorityCert::decode(&c.encode()).unwrap(), c);
        // A rotation to a key whose holder never signed: possession proof missing.
        let mut no_pop = c.clone();
        no_pop.new_key_signature = c.signature;
        assert!(no_pop.verify(&cur.public()).is_err());
    }

    #[test]
    fn a_signature_of_one_ms_certificate_kind_does_not_verify_as_another() {
        let auth = KeyPair::from_seed([1; 32]);
        let renew = RenewCert::issue(&auth, NodeId([0; 32]), 0, 0);
        let mut revoke = RevokeClientCert::issue(&auth, PublicKey([0; 32]), [0; 32], 0);
        revoke.signature = renew.signature;
        assert!(revoke.verify(&auth.public()).is_err());
        assert!(RenewCert::decode(&revoke.encode()).is_err());
    }

    /// One issued certificate of every kind, with its encoding and its domain tag.
    fn one_of_each() -> Vec<(&'static str, Vec<u8>)> {
        let auth = KeyPair::from_seed([1; 32]);
        let new = KeyPair::from_seed([2; 32]);
        vec![
            (
                "add-cert",
                AddCert::issue(&auth, new.public(), [3; 32], [4; 32], "h:1".into(), 5, 6).encode(),
            ),
            (
                "remove-cert",
                RemoveCert::issue(&auth, NodeId([7; 32]), 8).encode(),
            ),
            (
                "ms-renew-cert",
                RenewCert::issue(&auth, NodeId([7; 32]), 9, 10).encode(),
            ),
            (
                "ms-revoke-client-cert",
                RevokeClientCert::issue(&auth, PublicKey([11; 32]), [12; 32], 13).encode(),
            ),
            (
                "ms-rotate-authority-cert",
                RotateAuthorityCert::issue(&auth, &new, 14).encode(),
            ),
            (
                "client-cert",
                ClientCert::issue(&auth, PublicKey([15; 32]), b"der", 16).encode(),
            ),
        ]
    }

    /// Decodes `b` as the kind whose tag is `kind`, re-encoding it on success.
    fn decode_as(kind: &str, b: &[u8]) -> Result<Vec<u8>, CertError> {
        Ok(match kind {
            "add-cert" => AddCert::decode(b)?.encode(),
            "remove-cert" => RemoveCert::decode(b)?.encode(),
            "ms-renew-cert" => RenewCert::decode(b)?.encode(),
            "ms-revoke-client-cert" => RevokeClientCert::decode(b)?.encode(),
            "ms-rotate-authority-cert" => RotateAuthorityCert::decode(b)?.encode(),
            "client-cert" => ClientCert::decode(b)?.encode(),
            other => panic!("unknown kind {other}"),
        })
    }

    #[test]
    fn every_certificate_kind_round_trips_and_rejects_trailing_truncated_and_foreign_bytes() {
        let all = one_of_each();
        for (kind, b) in &all {
            assert_eq!(&decode_as(kind, b).unwrap(), b, "{kind} round trip");
            let mut long = b.clone();
            long.push(0);
            assert!(
                matches!(
                    decode_as(kind, &long),
                    Err(CertError::Decode(DecodeError::Trailing(1)))
                ),
                "{kind} with a trailing byte"
            );
            assert!(
                decode_as(kind, &b[..b.len() - 1]).is_err(),
                "{kind} truncated"
            );
            for (other, ob) in &all {
                if other != kind {
                    assert!(
                        matches!(
                            decode_as(kind, ob),
                            Err(CertError::Decode(DecodeError::WrongTag { .. }))
                        ),
                        "{other} decoded as {kind}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_remove_cert_encoding_is_its_signed_body_then_the_signature() {
        let auth = KeyPair::from_seed([1; 32]);
        let c = RemoveCert::issue(&auth, NodeId([5; 32]), 7);
        let b = c.encode();
        assert!(b.starts_with(b"dbqs.v1.remove-cert\0"));
        let body = &b[..b.len() - 64];
        auth.public().verify(body, &b[b.len() - 64..]).unwrap();
        RemoveCert::decode(&b)
            .unwrap()
            .verify(&auth.public())
            .unwrap();
    }

    proptest::proptest! {
        #[test]
        fn certificate_decoders_never_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            for kind in ["add-cert", "remove-cert", "ms-renew-cert", "ms-revoke-client-cert",
                         "ms-rotate-authority-cert", "client-cert"] {
                let _ = decode_as(kind, &data);
                // Behind a valid tag too, so the field readers are reached.
                let mut tagged = Writer::tagged(kind).finish();
                tagged.extend_from_slice(&data);
                let _ = decode_as(kind, &tagged);
            }
        }
    }
}
