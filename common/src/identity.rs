//! ed25519 identities: node and owner keys, `NodeId`, domain-separated signatures.

use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use thiserror::Error;

use crate::codec::sha256;

/// A signature check failed, or a key was malformed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SignatureError {
    #[error("malformed ed25519 public key")]
    BadKey,
    #[error("malformed signature (need 64 bytes)")]
    Malformed,
    #[error("signature does not verify")]
    Invalid,
}

/// An ed25519 public key (32 bytes).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    pub fn from_slice(b: &[u8]) -> Result<Self, SignatureError> {
        let a: [u8; 32] = b.try_into().map_err(|_| SignatureError::BadKey)?;
        Ok(PublicKey(a))
    }

    /// Verifies `sig` over `msg` (which must already start with its domain tag),
    /// strictly: non-canonical and small-order encodings are rejected.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> Result<(), SignatureError> {
        let vk = VerifyingKey::from_bytes(&self.0).map_err(|_| SignatureError::BadKey)?;
        let sig: [u8; 64] = sig.try_into().map_err(|_| SignatureError::Malformed)?;
        vk.verify_strict(msg, &Signature::from_bytes(&sig))
            .map_err(|_| SignatureError::Invalid)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", &self.to_hex()[..16])
    }
}

/// A node's identity: `SHA-256("node" ‖ ed25519 public key)`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub [u8; 32]);

impl NodeId {
    pub fn of(key: &PublicKey) -> NodeId {
        NodeId(sha256(&[b"node", &key.0]))
    }

    pub fn from_slice(b: &[u8]) -> Option<NodeId> {
        b.try_into().ok().map(NodeId)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The short form used in logs and tables: the first 8 hex digits.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }

    /// The DNS name in the node's TLS certificate (a label is at most 63 bytes, so
    /// the 64 hex digits are split in two labels).
    pub fn tls_name(&self) -> String {
        let h = self.to_hex();
        format!("{}.{}.node.dbqs", &h[..32], &h[32..])
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.short())
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.short())
    }
}

/// An ed25519 secret key: a node's identity key, an owner key, or the authority.
#[derive(Clone)]
pub struct KeyPair {
    sk: SigningKey,
}

impl KeyPair {
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed);
        Self::from_seed(seed)
    }

    pub fn from_seed(seed: [u8; 32]) -> Self {
        KeyPair {
            sk: SigningKey::from_bytes(&seed),
        }
    }

    pub fn seed(&self) -> [u8; 32] {
        self.sk.to_bytes()
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.sk.verifying_key().to_bytes())
    }

    pub fn node_id(&self) -> NodeId {
        NodeId::of(&self.public())
    }

    /// Signs `msg`, which must start with its domain tag (see [`crate::codec`]).
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.sk.sign(msg).to_bytes()
    }
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyPair({:?})", self.public())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_verifies_only_for_its_message_and_key() {
        let k = KeyPair::generate();
        let other = KeyPair::generate();
        let sig = k.sign(b"dbqs.v1.test\0hello");
        assert!(k.public().verify(b"dbqs.v1.test\0hello", &sig).is_ok());
        assert_eq!(
            k.public().verify(b"dbqs.v1.test\0hellO", &sig),
            Err(SignatureError::Invalid)
        );
        assert!(other.public().verify(b"dbqs.v1.test\0hello", &sig).is_err());
        assert_eq!(
            k.public().verify(b"x", &sig[..63]),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn node_id_is_domain_separated_hash_of_key() {
        let k = KeyPair::from_seed([7; 32]);
        assert_eq!(k.node_id().0, sha256(&[b"node", &k.public().0]));
        let name = k.node_id().tls_name();
        assert!(name.split('.').all(|l| l.len() <= 63));
    }
}
