//! Authority certificates that only the membership service consumes (PROTOCOL.md,
//! "Identities, keys and certificates"): renewal, client revocation and authority rotation.
//!
//! `AddCert`, `RemoveCert` and `ClientCert` live in `dbqs_common::certs` because nodes and
//! clients check them too; these three matter only to the MS state machine, so they live
//! beside it. Each is signed with ed25519 over its canonical encoding, which starts with its
//! own domain tag, so a signature over one kind can never be replayed as another.

use dbqs_common::certs::CertError;
use dbqs_common::codec::{Reader, Writer};
use dbqs_common::identity::{KeyPair, NodeId, PublicKey};

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
}
