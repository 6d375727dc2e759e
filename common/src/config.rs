//! `Configuration` (the membership of one epoch) and `ConfigCert`, its MS threshold
//! signature (PROTOCOL.md, "Identities, keys and certificates").
//!
//! The configuration travels in its canonical encoding (docs/protocol.md,
//! "Configuration encoding"); the decoder accepts only canonical bytes, so the
//! hash of the bytes received is the hash of the configuration they describe.

use std::collections::HashMap;
use std::sync::Arc;

use dbqs_proto::v1 as pb;
use thiserror::Error;

use crate::certs::MAX_ADDRESS_BYTES;
use crate::codec::{DecodeError, Reader, Writer, sha256};
use crate::identity::{NodeId, PublicKey};
use crate::object::ObjectId;
use crate::quorum::{group_size, quorum_size};
use crate::ring::Ring;
use crate::threshold::{MsPublicKey, ThresholdError};

/// Most members a configuration may list.
pub const MAX_MEMBERS: usize = 200_000;
/// Most MS members (3 * ms_f_max + 1 with a generous ms_f_max).
pub const MAX_MS_MEMBERS: usize = 301;
/// Most revoked client certificates listed.
pub const MAX_REVOKED: usize = 1_000_000;
/// Largest encoded BLS public key set (48 bytes per coefficient).
const MAX_KEY_SET_BYTES: usize = 48 * MAX_MS_MEMBERS;

/// An epoch number; epoch 1 is genesis.
pub type Epoch = u64;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    #[error("malformed configuration: {0}")]
    Decode(#[from] DecodeError),
    #[error("configuration is not in canonical form")]
    NotCanonical,
    #[error("certificate says epoch {cert} but the configuration is for epoch {config}")]
    EpochMismatch { cert: Epoch, config: Epoch },
    #[error("MS signature: {0}")]
    Signature(#[from] ThresholdError),
    #[error("invalid configuration: {0}")]
    Invalid(&'static str),
}

/// Parameters fixed by genesis (they may change with later MS operations).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    /// Byzantine members tolerated per storage group; groups have 3f+1 members.
    pub f: u32,
    pub ms_f_max: u32,
    pub epoch_length_ms: u64,
    pub lease_ms: u64,
    pub max_changes_per_epoch: u32,
    /// How long an MS member must have seen no successful probe of a node before it
    /// proposes evicting it (PROTOCOL.md, "Evict": the threshold is a time, so a restart,
    /// an upgrade or a reschedule does not cost the node its membership).
    pub evict_after_ms: u64,
    pub ms_rotation_epochs: u64,
}

/// Default of [`Params::evict_after_ms`]: five minutes, far above a container restart or a
/// binary upgrade (seconds) and a Kubernetes reschedule (tens of seconds).
pub const DEFAULT_EVICT_AFTER_MS: u64 = 300_000;

impl Default for Params {
    fn default() -> Self {
        Params {
            f: 1,
            ms_f_max: 3,
            epoch_length_ms: 600_000,
            lease_ms: 10_000,
            max_changes_per_epoch: 64,
            evict_after_ms: DEFAULT_EVICT_AFTER_MS,
            ms_rotation_epochs: 10,
        }
    }
}

/// One storage node of a configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub key: PublicKey,
    pub tls_cert_hash: [u8; 32],
    pub x25519_key: [u8; 32],
    pub address: String,
    /// None for a member admitted in this epoch: it owns ranges from the next.
    pub ring_position: Option<[u8; 32]>,
}

impl Member {
    pub fn node_id(&self) -> NodeId {
        NodeId::of(&self.key)
    }
}

/// The membership of one epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Configuration {
    pub epoch: Epoch,
    /// SHA-256 of the previous configuration's encoding; zero at genesis.
    pub prev_hash: [u8; 32],
    /// Randomness for the ring positions of members admitted in this epoch.
    pub ring_salt: [u8; 32],
    pub authority: PublicKey,
    /// blsttc `PublicKeySet` bytes: the MS group key and its commitment, from
    /// which each MS member's public key share follows.
    pub ms_key_set: Vec<u8>,
    pub params: Params,
    /// Sorted by NodeId, no duplicates.
    pub members: Vec<Member>,
    /// MS members; the member at 1-based position p holds the share at x = p.
    pub ms_members: Vec<NodeId>,
    /// The MS being reshared to (PROTOCOL.md, "MS rotation and resharing"): named by the
    /// configuration that starts a rotation, kept until Handover installs it as
    /// `ms_members`; empty when no rotation runs. Its member at 1-based position p will
    /// hold the new share at x = p.
    pub ms_next: Vec<NodeId>,
    /// SHA-256 of revoked client TLS certificates; sorted, no duplicates.
    pub revoked_clients: Vec<[u8; 32]>,
}

impl Configuration {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::tagged("configuration");
        w.u64(self.epoch)
            .fixed(&self.prev_hash)
            .fixed(&self.ring_salt)
            .fixed(&self.authority.0)
            .bytes(&self.ms_key_set);
        let p = &self.params;
        w.u32(p.f)
            .u32(p.ms_f_max)
            .u64(p.epoch_length_ms)
            .u64(p.lease_ms)
            .u32(p.max_changes_per_epoch)
            .u64(p.evict_after_ms)
            .u64(p.ms_rotation_epochs);
        w.u32(self.members.len() as u32);
        for m in &self.members {
            w.fixed(&m.key.0)
                .fixed(&m.tls_cert_hash)
                .fixed(&m.x25519_key)
                .bytes(m.address.as_bytes());
            match &m.ring_position {
                Some(p) => w.u8(1).fixed(p),
                None => w.u8(0),
            };
        }
        w.u32(self.ms_members.len() as u32);
        for id in &self.ms_members {
            w.fixed(&id.0);
        }
        w.u32(self.ms_next.len() as u32);
        for id in &self.ms_next {
            w.fixed(&id.0);
        }
        w.u32(self.revoked_clients.len() as u32);
        for r in &self.revoked_clients {
            w.fixed(r);
        }
        w.finish()
    }

    pub fn decode(buf: &[u8]) -> Result<Configuration, ConfigError> {
        let mut r = Reader::new(buf);
        r.expect_tag("configuration")?;
        let epoch = r.u64("epoch")?;
        let prev_hash = r.array("prev_hash")?;
        let ring_salt = r.array("ring_salt")?;
        let authority = PublicKey(r.array("authority")?);
        let ms_key_set = r.bytes("ms_key_set", MAX_KEY_SET_BYTES)?.to_vec();
        let params = Params {
            f: r.u32("f")?,
            ms_f_max: r.u32("ms_f_max")?,
            epoch_length_ms: r.u64("epoch_length_ms")?,
            lease_ms: r.u64("lease_ms")?,
            max_changes_per_epoch: r.u32("max_changes_per_epoch")?,
            evict_after_ms: r.u64("evict_after_ms")?,
            ms_rotation_epochs: r.u64("ms_rotation_epochs")?,
        };
        let n = r.count("members", MAX_MEMBERS, 32 * 3 + 5)?;
        let mut members = Vec::with_capacity(n);
        for _ in 0..n {
            let key = PublicKey(r.array("member key")?);
            let tls_cert_hash = r.array("tls_cert_hash")?;
            let x25519_key = r.array("x25519_key")?;
            let address = r.text("address", MAX_ADDRESS_BYTES)?;
            let ring_position = match r.u8("has_position")? {
                0 => None,
                1 => Some(r.array("ring_position")?),
                _ => {
                    return Err(DecodeError::Invalid {
                        field: "has_position",
                        reason: "must be 0 or 1",
                    }
                    .into());
                }
            };
            members.push(Member {
                key,
                tls_cert_hash,
                x25519_key,
                address,
                ring_position,
            });
        }
        let n = r.count("ms_members", MAX_MS_MEMBERS, 32)?;
        let mut ms_members = Vec::with_capacity(n);
        for _ in 0..n {
            ms_members.push(NodeId(r.array("ms member")?));
        }
        let n = r.count("ms_next", MAX_MS_MEMBERS, 32)?;
        let mut ms_next = Vec::with_capacity(n);
        for _ in 0..n {
            ms_next.push(NodeId(r.array("next ms member")?));
        }
        let n = r.count("revoked_clients", MAX_REVOKED, 32)?;
        let mut revoked_clients = Vec::with_capacity(n);
        for _ in 0..n {
            revoked_clients.push(r.array("revoked client")?);
        }
        r.finish()?;
        let c = Configuration {
            epoch,
            prev_hash,
            ring_salt,
            authority,
            ms_key_set,
            params,
            members,
            ms_members,
            ms_next,
            revoked_clients,
        };
        c.check()?;
        Ok(c)
    }

    /// Structural rules every configuration obeys.
    fn check(&self) -> Result<(), ConfigError> {
        if self.epoch == 0 {
            return Err(ConfigError::Invalid("epoch 0"));
        }
        if self.params.f > 100 {
            return Err(ConfigError::Invalid("f above 100"));
        }
        let ids: Vec<NodeId> = self.members.iter().map(Member::node_id).collect();
        if ids.windows(2).any(|w| w[0] >= w[1]) {
            return Err(ConfigError::Invalid(
                "members not sorted by NodeId or duplicated",
            ));
        }
        if self.revoked_clients.windows(2).any(|w| w[0] >= w[1]) {
            return Err(ConfigError::Invalid(
                "revoked clients not sorted or duplicated",
            ));
        }
        for m in &self.ms_members {
            if ids.binary_search(m).is_err() {
                return Err(ConfigError::Invalid("MS member is not a member"));
            }
        }
        let mut ms = self.ms_members.clone();
        ms.sort();
        ms.dedup();
        if ms.len() != self.ms_members.len() || ms.is_empty() {
            return Err(ConfigError::Invalid("MS members empty or duplicated"));
        }
        for m in &self.ms_next {
            if ids.binary_search(m).is_err() {
                return Err(ConfigError::Invalid("next MS member is not a member"));
            }
        }
        let mut next = self.ms_next.clone();
        next.sort();
        next.dedup();
        if next.len() != self.ms_next.len() {
            return Err(ConfigError::Invalid("next MS members duplicated"));
        }
        let mut tls: Vec<_> = self.members.iter().map(|m| m.tls_cert_hash).collect();
        tls.sort();
        tls.dedup();
        if tls.len() != self.members.len() {
            return Err(ConfigError::Invalid("two members share a TLS certificate"));
        }
        Ok(())
    }

    pub fn hash(&self) -> [u8; 32] {
        sha256(&[&self.encode()])
    }

    /// Sorts the lists into canonical order (for builders).
    pub fn normalize(&mut self) {
        self.members.sort_by_key(Member::node_id);
        self.revoked_clients.sort();
        self.revoked_clients.dedup();
    }

    /// The bytes the MS signs for this configuration.
    pub fn signing_bytes(epoch: Epoch, config_hash: &[u8; 32]) -> Vec<u8> {
        let mut w = Writer::tagged("config-cert");
        w.u64(epoch).fixed(config_hash);
        w.finish()
    }
}

/// A configuration and the MS signature over it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigCert {
    pub epoch: Epoch,
    pub configuration: Vec<u8>,
    pub signature: Vec<u8>,
}

impl ConfigCert {
    /// Checks the MS signature and decodes the configuration.
    pub fn verify(&self, ms_key: &MsPublicKey) -> Result<Configuration, ConfigError> {
        let config = Configuration::decode(&self.configuration)?;
        if config.epoch != self.epoch {
            return Err(ConfigError::EpochMismatch {
                cert: self.epoch,
                config: config.epoch,
            });
        }
        if config.encode() != self.configuration {
            return Err(ConfigError::NotCanonical);
        }
        let hash = sha256(&[&self.configuration]);
        ms_key.verify(
            &Configuration::signing_bytes(self.epoch, &hash),
            &self.signature,
        )?;
        Ok(config)
    }

    pub fn to_proto(&self) -> pb::ConfigCert {
        pb::ConfigCert {
            epoch: self.epoch,
            configuration: self.configuration.clone(),
            signature: self.signature.clone(),
        }
    }

    pub fn from_proto(p: pb::ConfigCert) -> ConfigCert {
        ConfigCert {
            epoch: p.epoch,
            configuration: p.configuration,
            signature: p.signature,
        }
    }

    /// A self-contained file form: tag, epoch, configuration, signature.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::tagged("config-cert-file");
        w.u64(self.epoch)
            .bytes(&self.configuration)
            .bytes(&self.signature);
        w.finish()
    }

    pub fn decode(buf: &[u8]) -> Result<ConfigCert, ConfigError> {
        let mut r = Reader::new(buf);
        r.expect_tag("config-cert-file")?;
        let c = ConfigCert {
            epoch: r.u64("epoch")?,
            configuration: r.bytes("configuration", 64 << 20)?.to_vec(),
            signature: r.bytes("signature", 96)?.to_vec(),
        };
        r.finish()?;
        Ok(c)
    }
}

/// A verified configuration with the indexes every lookup needs. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ActiveConfig {
    pub cert: Arc<ConfigCert>,
    pub config: Arc<Configuration>,
    pub hash: [u8; 32],
    ring: Arc<Ring>,
    by_id: Arc<HashMap<NodeId, usize>>,
    by_tls: Arc<HashMap<[u8; 32], NodeId>>,
}

impl ActiveConfig {
    /// Verifies `cert` with the MS public key and indexes it.
    pub fn verify(cert: ConfigCert, ms_key: &MsPublicKey) -> Result<ActiveConfig, ConfigError> {
        let config = cert.verify(ms_key)?;
        Ok(Self::index(cert, config))
    }

    fn index(cert: ConfigCert, config: Configuration) -> ActiveConfig {
        let ring = Ring::new(
            config
                .members
                .iter()
                .filter_map(|m| m.ring_position.map(|p| (p, m.node_id())))
                .collect(),
        );
        let by_id = config
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| (m.node_id(), i))
            .collect();
        let by_tls = config
            .members
            .iter()
            .map(|m| (m.tls_cert_hash, m.node_id()))
            .collect();
        ActiveConfig {
            hash: sha256(&[&cert.configuration]),
            cert: Arc::new(cert),
            config: Arc::new(config),
            ring: Arc::new(ring),
            by_id: Arc::new(by_id),
            by_tls: Arc::new(by_tls),
        }
    }

    pub fn epoch(&self) -> Epoch {
        self.config.epoch
    }

    pub fn f(&self) -> u32 {
        self.config.params.f
    }

    pub fn group_size(&self) -> usize {
        group_size(self.f())
    }

    pub fn quorum(&self) -> usize {
        quorum_size(self.f())
    }

    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// The group of `id` in this epoch.
    pub fn group(&self, id: &ObjectId) -> Vec<NodeId> {
        self.ring.group(id, self.group_size())
    }

    pub fn in_group(&self, id: &ObjectId, node: &NodeId) -> bool {
        self.ring.in_group(id, self.group_size(), node)
    }

    pub fn member(&self, id: &NodeId) -> Option<&Member> {
        self.by_id.get(id).map(|&i| &self.config.members[i])
    }

    /// The member whose TLS certificate has this SHA-256, if any.
    pub fn node_by_tls_hash(&self, h: &[u8; 32]) -> Option<NodeId> {
        self.by_tls.get(h).copied()
    }

    pub fn is_revoked(&self, tls_cert_hash: &[u8; 32]) -> bool {
        self.config
            .revoked_clients
            .binary_search(tls_cert_hash)
            .is_ok()
    }

    /// Members in ring order, for clients (`GetConfig`).
    pub fn member_infos(&self) -> Vec<pb::MemberInfo> {
        let mut out: Vec<pb::MemberInfo> = self
            .ring
            .members()
            .filter_map(|(pos, id)| {
                self.member(id).map(|m| pb::MemberInfo {
                    node_id: id.0.to_vec(),
                    address: m.address.clone(),
                    tls_name: id.tls_name(),
                    ring_position: pos.to_vec(),
                    ms_member: self.config.ms_members.contains(id),
                })
            })
            .collect();
        for m in &self.config.members {
            if m.ring_position.is_none() {
                let id = m.node_id();
                out.push(pb::MemberInfo {
                    node_id: id.0.to_vec(),
                    address: m.address.clone(),
                    tls_name: id.tls_name(),
                    ring_position: Vec::new(),
                    ms_member: self.config.ms_members.contains(&id),
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::KeyPair;
    use crate::threshold::{combine, deal};

    pub(crate) fn sample(
        n: usize,
    ) -> (
        Configuration,
        Vec<blsttc::SecretKeyShare>,
        blsttc::PublicKeySet,
    ) {
        let (pks, shares) = deal(4, 1);
        let mut members: Vec<Member> = (0..n)
            .map(|i| {
                let k = KeyPair::from_seed([i as u8 + 1; 32]);
                Member {
                    key: k.public(),
                    tls_cert_hash: [i as u8; 32],
                    x25519_key: [0; 32],
                    address: format!("127.0.0.1:{}", 7000 + i),
                    ring_position: Some(sha256(&[&k.public().0, b"salt"])),
                }
            })
            .collect();
        members.sort_by_key(Member::node_id);
        let ms_members = members.iter().take(4).map(Member::node_id).collect();
        let c = Configuration {
            epoch: 1,
            prev_hash: [0; 32],
            ring_salt: [9; 32],
            authority: KeyPair::from_seed([99; 32]).public(),
            ms_key_set: pks.to_bytes(),
            params: Params::default(),
            members,
            ms_members,
            ms_next: Vec::new(),
            revoked_clients: vec![],
        };
        (c, shares, pks)
    }

    fn certify(
        c: &Configuration,
        shares: &[blsttc::SecretKeyShare],
        pks: &blsttc::PublicKeySet,
    ) -> ConfigCert {
        let bytes = c.encode();
        let msg = Configuration::signing_bytes(c.epoch, &sha256(&[&bytes]));
        let sig_shares: Vec<_> = shares
            .iter()
            .enumerate()
            .map(|(i, s)| (i, s.sign(&msg)))
            .collect();
        let sig = combine(pks, &msg, &sig_shares).unwrap();
        ConfigCert {
            epoch: c.epoch,
            configuration: bytes,
            signature: sig.to_bytes().to_vec(),
        }
    }

    #[test]
    fn configuration_round_trips_canonically() {
        let (c, _, _) = sample(8);
        let b = c.encode();
        assert_eq!(Configuration::decode(&b).unwrap(), c);
    }

    #[test]
    fn the_eviction_threshold_is_a_signed_time_in_milliseconds() {
        // docs/protocol.md, "Configuration encoding": u64 evict_after_ms, so thresholds of
        // minutes or days (beyond u32 milliseconds) are carried exactly.
        assert_eq!(Params::default().evict_after_ms, 300_000);
        let (mut c, _, _) = sample(4);
        c.params.evict_after_ms = 5_000_000_000;
        let b = c.encode();
        assert_eq!(
            Configuration::decode(&b).unwrap().params.evict_after_ms,
            5_000_000_000
        );
        let mut other = c.clone();
        other.params.evict_after_ms = 60_000;
        assert_ne!(
            other.encode(),
            b,
            "the threshold is part of the signed bytes"
        );
    }

    #[test]
    fn config_cert_verifies_with_ms_key_and_rejects_tampering() {
        let (c, shares, pks) = sample(8);
        let cert = certify(&c, &shares, &pks);
        let ms = MsPublicKey(pks.public_key());
        let active = ActiveConfig::verify(cert.clone(), &ms).unwrap();
        assert_eq!(active.epoch(), 1);
        assert_eq!(active.group(&ObjectId([0; 32])).len(), 4);

        let mut bad = cert.clone();
        bad.epoch = 2;
        assert!(ActiveConfig::verify(bad, &ms).is_err());

        let mut c2 = c.clone();
        c2.members[0].address = "10.9.9.9:1".into();
        let mut bad = cert.clone();
        bad.configuration = c2.encode();
        assert!(matches!(
            ActiveConfig::verify(bad, &ms),
            Err(ConfigError::Signature(_))
        ));

        let (_, _, other) = sample(1);
        assert!(ActiveConfig::verify(cert.clone(), &MsPublicKey(other.public_key())).is_err());
        assert_eq!(ConfigCert::decode(&cert.encode()).unwrap(), cert);
    }

    #[test]
    fn unsorted_or_duplicate_members_are_rejected() {
        let (mut c, _, _) = sample(3);
        c.members.swap(0, 1);
        assert!(Configuration::decode(&c.encode()).is_err());
        let (mut c, _, _) = sample(3);
        let m = c.members[0].clone();
        c.members.insert(0, m);
        assert!(Configuration::decode(&c.encode()).is_err());
    }

    proptest::proptest! {
        #[test]
        fn configuration_decoder_never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1024)) {
            let _ = Configuration::decode(&data);
            let _ = ConfigCert::decode(&data);
        }

        #[test]
        fn truncated_or_flipped_configuration_is_an_error(cut in 0usize..600, flip in 0usize..600) {
            let (c, _, _) = sample(4);
            let b = c.encode();
            let cut = cut % b.len();
            proptest::prop_assert!(Configuration::decode(&b[..cut]).is_err());
            let mut f = b.clone();
            let i = flip % f.len();
            f[i] ^= 0x80;
            if let Ok(d) = Configuration::decode(&f) {
                proptest::prop_assert_ne!(d, c);
            }
        }
    }
}
