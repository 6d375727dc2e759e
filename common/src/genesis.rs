//! Genesis: the trusted dealer that creates a cluster (PROTOCOL.md: "a trusted
//! dealer is acceptable at genesis"). Pure: it returns every key and certificate
//! in memory; writing them to a cluster directory is the CLI's job.

use std::net::IpAddr;

use blsttc::SecretKeyShare;
use thiserror::Error;

use crate::certs::{AddCert, ClientCert};
use crate::codec::sha256;
use crate::config::{ConfigCert, Configuration, Member, Params};
use crate::identity::{KeyPair, NodeId};
use crate::quorum::ms_f_for;
use crate::threshold::{MsPublicKey, combine, deal};
use crate::tls::{ClusterCa, IssuedCert, TlsError};

/// Far-future expiry of genesis certificates (ms since the Unix epoch, year 2100).
pub const GENESIS_NOT_AFTER_MS: u64 = 4_102_444_800_000;

#[derive(Debug, Error)]
pub enum GenesisError {
    #[error("need at least one node")]
    NoNodes,
    #[error("f = {f} needs groups of {need} nodes but only {have} were given")]
    TooFewNodes { f: u32, need: usize, have: usize },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("threshold signing failed: {0}")]
    Threshold(#[from] crate::threshold::ThresholdError),
}

/// Where one genesis node will listen.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    /// "host:port" clients and peers use.
    pub address: String,
    /// IPs to put in the TLS certificate besides its names.
    pub ips: Vec<IpAddr>,
}

/// Everything one node needs to run.
pub struct NodeMaterial {
    pub key: KeyPair,
    pub x25519_secret: [u8; 32],
    pub tls: IssuedCert,
    pub add_cert: AddCert,
    pub address: String,
    /// (0-based share index, share) for genesis MS members.
    pub ms_share: Option<(usize, SecretKeyShare)>,
}

impl NodeMaterial {
    pub fn node_id(&self) -> NodeId {
        self.key.node_id()
    }
}

/// A client's credentials: owner key, TLS certificate, `ClientCert`.
pub struct ClientMaterial {
    pub owner: KeyPair,
    pub tls: IssuedCert,
    pub client_cert: ClientCert,
}

pub struct Genesis {
    pub authority: KeyPair,
    pub ca: ClusterCa,
    pub ms_public_key: MsPublicKey,
    pub cert: ConfigCert,
    pub nodes: Vec<NodeMaterial>,
    pub client: ClientMaterial,
}

/// Creates a cluster of `specs.len()` nodes with storage fault threshold `params.f`.
pub fn create(specs: &[NodeSpec], params: Params) -> Result<Genesis, GenesisError> {
    if specs.is_empty() {
        return Err(GenesisError::NoNodes);
    }
    let need = crate::quorum::group_size(params.f);
    if specs.len() < need {
        return Err(GenesisError::TooFewNodes {
            f: params.f,
            need,
            have: specs.len(),
        });
    }
    let authority = KeyPair::generate();
    let ca = ClusterCa::generate()?;
    let mut ring_salt = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut ring_salt);

    let mut nodes = Vec::with_capacity(specs.len());
    for (serial, spec) in specs.iter().enumerate() {
        let key = KeyPair::generate();
        let mut x = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut x);
        let x_pub = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(x)).to_bytes();
        let host = spec
            .address
            .rsplit_once(':')
            .map_or(spec.address.as_str(), |(h, _)| h);
        let mut ips = spec.ips.clone();
        let mut hosts = Vec::new();
        match host.trim_matches(['[', ']']).parse::<IpAddr>() {
            Ok(ip) if !ips.contains(&ip) => ips.push(ip),
            Ok(_) => {}
            Err(_) if !host.is_empty() => hosts.push(host.to_string()),
            Err(_) => {}
        }
        let tls = ca.issue_node(&key.node_id(), &hosts, &ips)?;
        let add_cert = AddCert::issue(
            &authority,
            key.public(),
            tls.hash(),
            x_pub,
            spec.address.clone(),
            serial as u64 + 1,
            GENESIS_NOT_AFTER_MS,
        );
        nodes.push(NodeMaterial {
            key,
            x25519_secret: x,
            tls,
            add_cert,
            address: spec.address.clone(),
            ms_share: None,
        });
    }

    // MS members: the first 3f_ms+1 nodes in the order of SHA-256(salt ‖ NodeId),
    // which nobody could choose before the salt was drawn.
    let f_ms = ms_f_for(nodes.len(), params.ms_f_max);
    let n_ms = 3 * f_ms as usize + 1;
    let mut order: Vec<usize> = (0..nodes.len()).collect();
    order.sort_by_key(|&i| sha256(&[&ring_salt, &nodes[i].node_id().0]));
    let ms_idx: Vec<usize> = order[..n_ms].to_vec();
    let (pks, shares) = deal(n_ms, f_ms);
    for (pos, &i) in ms_idx.iter().enumerate() {
        nodes[i].ms_share = Some((pos, shares[pos].clone()));
    }

    let mut config = Configuration {
        epoch: 1,
        prev_hash: [0; 32],
        ring_salt,
        authority: authority.public(),
        ms_key_set: pks.to_bytes(),
        params,
        members: nodes
            .iter()
            .map(|n| Member {
                key: n.key.public(),
                tls_cert_hash: n.tls.hash(),
                x25519_key: n.add_cert.x25519_key,
                address: n.address.clone(),
                // Genesis members take their positions from the genesis salt.
                ring_position: Some(sha256(&[&n.key.public().0, &ring_salt])),
            })
            .collect(),
        ms_members: ms_idx.iter().map(|&i| nodes[i].node_id()).collect(),
        ms_next: Vec::new(),
        revoked_clients: Vec::new(),
    };
    config.normalize();
    let bytes = config.encode();
    let msg = Configuration::signing_bytes(1, &sha256(&[&bytes]));
    let sig_shares: Vec<_> = shares
        .iter()
        .enumerate()
        .map(|(i, s)| (i, s.sign(&msg)))
        .collect();
    let sig = combine(&pks, &msg, &sig_shares)?;
    let cert = ConfigCert {
        epoch: 1,
        configuration: bytes,
        signature: sig.to_bytes().to_vec(),
    };

    let owner = KeyPair::generate();
    let tls = ca.issue_client(&hex::encode(&owner.node_id().0[..8]))?;
    let client_cert = ClientCert::issue(
        &authority,
        owner.public(),
        &tls.cert_der,
        GENESIS_NOT_AFTER_MS,
    );
    Ok(Genesis {
        authority,
        ca,
        ms_public_key: MsPublicKey(pks.public_key()),
        cert,
        nodes,
        client: ClientMaterial {
            owner,
            tls,
            client_cert,
        },
    })
}

/// The genesis members' AddCerts in one file (`genesis.adds`): the MS state machine starts
/// from them (their serials and expiries). Tag `genesis-adds`, u32 count, then each
/// AddCert's encoding as length-prefixed bytes.
pub fn encode_adds(adds: &[AddCert]) -> Vec<u8> {
    let mut w = crate::codec::Writer::tagged("genesis-adds");
    w.u32(adds.len() as u32);
    for a in adds {
        w.bytes(&a.encode());
    }
    w.finish()
}

/// Decodes [`encode_adds`]; bounded by `MAX_MEMBERS`.
pub fn decode_adds(bytes: &[u8]) -> Result<Vec<AddCert>, crate::certs::CertError> {
    let mut r = crate::codec::Reader::new(bytes);
    r.expect_tag("genesis-adds")?;
    let n = r.count("AddCerts", crate::config::MAX_MEMBERS, 4)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(AddCert::decode(r.bytes("AddCert", 4096)?)?);
    }
    r.finish()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ActiveConfig;

    fn specs(n: usize) -> Vec<NodeSpec> {
        (0..n)
            .map(|i| NodeSpec {
                address: format!("127.0.0.1:{}", 9000 + i),
                ips: vec![],
            })
            .collect()
    }

    #[test]
    fn genesis_config_verifies_and_ms_size_follows_rule() {
        let g = create(&specs(8), Params::default()).unwrap();
        let a = ActiveConfig::verify(g.cert.clone(), &g.ms_public_key).unwrap();
        assert_eq!(a.config.ms_members.len(), 4);
        assert_eq!(g.nodes.iter().filter(|n| n.ms_share.is_some()).count(), 4);
        for n in &g.nodes {
            n.add_cert.verify(&g.authority.public(), 0).unwrap();
            assert_eq!(a.node_by_tls_hash(&n.tls.hash()), Some(n.node_id()));
        }
        let one = create(
            &specs(1),
            Params {
                f: 0,
                ..Params::default()
            },
        )
        .unwrap();
        let a = ActiveConfig::verify(one.cert, &one.ms_public_key).unwrap();
        assert_eq!(a.config.ms_members.len(), 1);
        assert_eq!(a.group_size(), 1);
    }

    #[test]
    fn too_few_nodes_for_f_is_an_error() {
        assert!(matches!(
            create(&specs(3), Params::default()),
            Err(GenesisError::TooFewNodes { need: 4, .. })
        ));
    }
}
