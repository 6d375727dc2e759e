//! Certificates signed by the trusted authority (PROTOCOL.md, "Identities").
//!
//! Each is signed with the authority's ed25519 key over its canonical encoding,
//! which starts with its own domain tag.

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
}
