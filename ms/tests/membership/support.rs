//! A genesis cluster for membership state machine tests: authority, node keys, AddCerts,
//! a dealt MS key and the genesis ConfigCert, plus helpers that drive epochs.

use blsttc::{PublicKeySet, SecretKeyShare};
use dbqs_common::certs::{AddCert, RemoveCert};
use dbqs_common::codec::sha256;
use dbqs_common::config::{ConfigCert, Configuration, Member, Params};
use dbqs_common::identity::{KeyPair, NodeId};
use dbqs_common::quorum::ms_f_for;
use dbqs_common::threshold::{MsPublicKey, combine, deal};
use dbqs_ms::membership::{MembershipState, Op, OpError, OpKind, Outcome, Output, Reply};

/// Far-future expiry for certificates that should not expire in a test.
pub const FAR_MS: u64 = 4_102_444_800_000;

pub struct Cluster {
    pub authority: KeyPair,
    /// Node keys of the genesis members, by seed order.
    pub nodes: Vec<KeyPair>,
    /// Node keys of the MS members in MS-list order (share i belongs to ms[i]).
    pub ms: Vec<KeyPair>,
    pub shares: Vec<SecretKeyShare>,
    pub pks: PublicKeySet,
    pub ms_key: MsPublicKey,
    pub add_certs: Vec<AddCert>,
    pub genesis: ConfigCert,
    next_serial: u64,
}

pub fn node_key(i: usize) -> KeyPair {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
    seed[31] = 0xA5;
    KeyPair::from_seed(seed)
}

impl Cluster {
    /// `n` genesis members (all certificates valid until `not_after_ms`), MS sized by the
    /// fault model's rule.
    pub fn new(n: usize, params: Params, not_after_ms: u64) -> Cluster {
        let authority = KeyPair::from_seed([0xAA; 32]);
        let nodes: Vec<KeyPair> = (0..n).map(node_key).collect();
        let add_certs: Vec<AddCert> = nodes
            .iter()
            .enumerate()
            .map(|(i, k)| {
                AddCert::issue(
                    &authority,
                    k.public(),
                    sha256(&[b"tls", &(i as u64).to_be_bytes()]),
                    [i as u8; 32],
                    format!("10.0.0.{}:7000", i % 250),
                    i as u64 + 1,
                    not_after_ms,
                )
            })
            .collect();
        let ring_salt = [7u8; 32];
        let mut members: Vec<Member> = add_certs
            .iter()
            .map(|c| Member {
                key: c.node_key,
                tls_cert_hash: c.tls_cert_hash,
                x25519_key: c.x25519_key,
                address: c.address.clone(),
                ring_position: Some(sha256(&[&c.node_key.0, &ring_salt])),
            })
            .collect();
        members.sort_by_key(Member::node_id);
        let f_ms = ms_f_for(n, params.ms_f_max);
        let n_ms = 3 * f_ms as usize + 1;
        let ms_ids: Vec<NodeId> = members.iter().take(n_ms).map(Member::node_id).collect();
        let ms: Vec<KeyPair> = ms_ids
            .iter()
            .map(|id| nodes.iter().find(|k| k.node_id() == *id).unwrap().clone())
            .collect();
        let (pks, shares) = deal(n_ms, f_ms);
        let config = Configuration {
            epoch: 1,
            prev_hash: [0; 32],
            ring_salt,
            authority: authority.public(),
            ms_key_set: pks.to_bytes(),
            params,
            members,
            ms_members: ms_ids,
            ms_next: Vec::new(),
            revoked_clients: vec![],
        };
        let mut c = Cluster {
            authority,
            nodes,
            ms,
            shares,
            ms_key: MsPublicKey(pks.public_key()),
            pks,
            add_certs,
            genesis: ConfigCert {
                epoch: 0,
                configuration: vec![],
                signature: vec![],
            },
            next_serial: n as u64 + 1,
        };
        let bytes = config.encode();
        let sig = c.sign_config(1, &sha256(&[&bytes]));
        c.genesis = ConfigCert {
            epoch: 1,
            configuration: bytes,
            signature: sig.to_vec(),
        };
        c
    }

    pub fn state(&self) -> MembershipState {
        MembershipState::genesis(&self.genesis, &self.ms_key, &self.add_certs).unwrap()
    }

    pub fn serial(&mut self) -> u64 {
        self.next_serial += 1;
        self.next_serial
    }

    /// Combines all MS shares over (epoch, hash).
    pub fn sign_config(&self, epoch: u64, hash: &[u8; 32]) -> [u8; 96] {
        let msg = Configuration::signing_bytes(epoch, hash);
        let shares: Vec<_> = self
            .shares
            .iter()
            .enumerate()
            .map(|(i, s)| (i, s.sign(&msg)))
            .collect();
        combine(&self.pks, &msg, &shares).unwrap().to_bytes()
    }

    pub fn f_ms(&self) -> usize {
        (self.ms.len() - 1) / 3
    }

    /// An AddCert for a fresh node `i` (seed index beyond the genesis nodes).
    pub fn add_cert(&mut self, i: usize, not_after_ms: u64) -> (KeyPair, AddCert) {
        let k = node_key(i);
        let serial = self.serial();
        let c = AddCert::issue(
            &self.authority,
            k.public(),
            sha256(&[b"tls", &(i as u64).to_be_bytes()]),
            [1; 32],
            format!("10.1.0.{}:7000", i % 250),
            serial,
            not_after_ms,
        );
        (k, c)
    }

    pub fn remove_cert(&mut self, node: NodeId) -> RemoveCert {
        let serial = self.serial();
        RemoveCert::issue(&self.authority, node, serial)
    }

    /// A non-MS genesis member.
    pub fn non_ms_member(&self, skip: usize) -> NodeId {
        let ms: Vec<NodeId> = self.ms.iter().map(KeyPair::node_id).collect();
        self.nodes
            .iter()
            .map(KeyPair::node_id)
            .filter(|id| !ms.contains(id))
            .nth(skip)
            .unwrap()
    }
}

/// Applies `kind` for the state's current epoch from `proposer`.
pub fn apply(s: &mut MembershipState, proposer: NodeId, kind: OpKind) -> (Reply, Vec<Output>) {
    let op = Op::new(s.epoch(), kind);
    s.apply(proposer, &op)
}

pub fn anyone() -> NodeId {
    NodeId([0xEE; 32])
}

/// Records ConfigCert of the current epoch in `s` (signed by every share).
pub fn certify(c: &Cluster, s: &mut MembershipState) -> Reply {
    let sig = c.sign_config(s.epoch(), &s.config_hash());
    apply(s, anyone(), OpKind::CertifiedEpoch { signature: sig }).0
}

/// f_ms+1 MS replicas propose EndEpoch at `now_ms`; certifies first if needed. Returns the
/// new epoch and that epoch's outputs.
pub fn end_epoch(c: &Cluster, s: &mut MembershipState, now_ms: u64) -> Vec<Output> {
    if s.signing_request().is_some() {
        certify(c, s);
    }
    let start = s.epoch();
    let mut outs = Vec::new();
    // Replicas that already proposed in this epoch are refused as duplicates; the others
    // complete the f_ms+1.
    for k in &c.ms {
        if s.epoch() > start {
            break;
        }
        let (r, o) = apply(s, k.node_id(), OpKind::EndEpoch { now_ms });
        assert!(
            !matches!(r.outcome, Outcome::Rejected { code, .. } if code != 14),
            "EndEpoch refused: {r:?}"
        );
        outs.extend(o);
    }
    assert_eq!(s.epoch(), start + 1, "epoch {start} did not end");
    outs
}

pub fn is_rejected(r: &Reply, code: u8) -> bool {
    matches!(&r.outcome, Outcome::Rejected { code: c, .. } if *c == code)
}

pub fn member(s: &MembershipState, id: &NodeId) -> Option<Member> {
    s.configuration()
        .members
        .iter()
        .find(|m| m.node_id() == *id)
        .cloned()
}

pub fn try_op(s: &mut MembershipState, proposer: NodeId, kind: OpKind) -> Result<Outcome, OpError> {
    let op = Op::new(s.epoch(), kind);
    let mut outputs = Vec::new();
    s.try_apply(proposer, &op, &mut outputs)
}

pub fn cluster(n: usize) -> Cluster {
    Cluster::new(n, Params::default(), FAR_MS)
}
