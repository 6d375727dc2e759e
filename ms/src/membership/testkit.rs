//! A test driver for the membership state machine with real MS shares and x25519 keys
//! (feature `testkit`; never built into the binaries). [`World`] holds one
//! [`MembershipState`] standing for the replicated state (PBFT gives every replica the same
//! order; a mirror copy fed the same operations checks that replies and snapshots agree),
//! and acts for the authority, the MS members and the incoming members of a rotation, some
//! of them Byzantine ([`Fault`]). Used by `ms/tests/rotation.rs` and by the churn
//! simulation of `dbqs-server`, which runs its storage model over the configurations a
//! rotating MS signs. Every run is seeded; any failed step panics, as in a test.

use std::collections::BTreeMap;

use blsttc::rand::rngs::StdRng;
use blsttc::rand::{RngCore, SeedableRng};
use blsttc::{Fr, PublicKeySet, SecretKeySet, SecretKeyShare};
use dbqs_common::ConfigCert;
use dbqs_common::certs::{AddCert, RemoveCert};
use dbqs_common::codec::sha256;
use dbqs_common::config::{Configuration, Member, Params};
use dbqs_common::identity::{KeyPair, NodeId};
use dbqs_common::threshold::{MsPublicKey, combine};

use crate::membership::freshness;
use crate::membership::resharing::{
    Rotation, accuse, combine_share, deal, open_sub_share, threshold_for,
};
use crate::membership::{
    MembershipState, Op, OpError, OpKind, Outcome, Output, Reply, handover_signing_bytes,
};

/// Not-after of the driver's add certificates (year 2100, in ms).
pub const FAR_MS: u64 = 4_102_444_800_000;

pub struct TestNode {
    pub key: KeyPair,
    pub x_secret: [u8; 32],
    pub x_public: [u8; 32],
}

impl TestNode {
    pub fn new(rng: &mut StdRng) -> TestNode {
        let mut seed = [0u8; 32];
        let mut x_secret = [0u8; 32];
        rng.fill_bytes(&mut seed);
        rng.fill_bytes(&mut x_secret);
        let x_public =
            x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(x_secret)).to_bytes();
        TestNode {
            key: KeyPair::from_seed(seed),
            x_secret,
            x_public,
        }
    }

    pub fn id(&self) -> NodeId {
        self.key.node_id()
    }
}

/// How a party misbehaves in a rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Never sends anything.
    Silent,
    /// Old member: seals garbage to the new member at this position.
    BadSubShareFor(usize),
    /// Old member: deals a share that is not its own (the commitment does not match).
    WrongCommitment,
    /// New member: accuses every dealing, acknowledges nothing, gives a bad handover share.
    Liar,
}

pub struct World {
    pub rng: StdRng,
    pub authority: KeyPair,
    pub nodes: Vec<TestNode>,
    pub ms_key: MsPublicKey,
    /// The replicated state, and a second copy fed the same operations.
    pub state: MembershipState,
    pub mirror: MembershipState,
    /// Current MS shares by node (what the nodes hold on disk).
    pub shares: BTreeMap<NodeId, SecretKeyShare>,
    pub faults: BTreeMap<NodeId, Fault>,
    pub serial: u64,
    pub now_ms: u64,
    /// Every ConfigCert, in order.
    pub certs: Vec<ConfigCert>,
}

impl World {
    pub fn new(seed: u64, n: usize, ms_rotation_epochs: u64) -> World {
        let mut rng = StdRng::seed_from_u64(seed);
        let authority = KeyPair::from_seed([0xAA; 32]);
        let nodes: Vec<TestNode> = (0..n).map(|_| TestNode::new(&mut rng)).collect();
        let mut serial = 0;
        let adds: Vec<AddCert> = nodes
            .iter()
            .map(|t| {
                serial += 1;
                add_cert(&authority, t, serial)
            })
            .collect();
        let mut members: Vec<Member> = adds
            .iter()
            .map(|c| Member {
                key: c.node_key,
                tls_cert_hash: c.tls_cert_hash,
                x25519_key: c.x25519_key,
                address: c.address.clone(),
                ring_position: Some(sha256(&[&c.node_key.0, b"genesis"])),
            })
            .collect();
        members.sort_by_key(Member::node_id);
        let ms_ids: Vec<NodeId> = members.iter().take(4).map(Member::node_id).collect();
        let sks = SecretKeySet::random(threshold_for(4) - 1, &mut rng);
        let params = Params {
            f: 1,
            ms_rotation_epochs,
            max_changes_per_epoch: 64,
            ..Params::default()
        };
        let config = Configuration {
            epoch: 1,
            prev_hash: [0; 32],
            ring_salt: [7; 32],
            authority: authority.public(),
            ms_key_set: sks.public_keys().to_bytes(),
            params,
            members,
            ms_members: ms_ids.clone(),
            ms_next: Vec::new(),
            revoked_clients: vec![],
        };
        let bytes = config.encode();
        let msg = Configuration::signing_bytes(1, &sha256(&[&bytes]));
        let ms_key = MsPublicKey(sks.public_keys().public_key());
        let genesis = ConfigCert {
            epoch: 1,
            configuration: bytes,
            signature: sks.secret_key().sign(msg).to_bytes().to_vec(),
        };
        let state = MembershipState::genesis(&genesis, &ms_key, &adds).unwrap();
        let shares = ms_ids
            .iter()
            .enumerate()
            .map(|(i, id)| (*id, sks.secret_key_share(i)))
            .collect();
        World {
            rng,
            authority,
            nodes,
            ms_key,
            mirror: state.clone(),
            state,
            shares,
            faults: BTreeMap::new(),
            serial,
            now_ms: 1_000,
            certs: vec![genesis],
        }
    }

    pub fn node(&self, id: &NodeId) -> &TestNode {
        self.nodes.iter().find(|t| t.id() == *id).unwrap()
    }

    pub fn fault(&self, id: &NodeId) -> Option<Fault> {
        self.faults.get(id).copied()
    }

    /// Orders one operation from `proposer` (both copies).
    pub fn apply(&mut self, proposer: NodeId, kind: OpKind) -> (Reply, Vec<Output>) {
        let op = Op::new(self.state.epoch(), kind);
        let (reply, outs) = self.state.apply(proposer, &op);
        let (mirror_reply, _) = self.mirror.apply(proposer, &op);
        assert_eq!(reply, mirror_reply);
        (reply, outs)
    }

    pub fn outcome(&mut self, proposer: NodeId, kind: OpKind) -> Outcome {
        self.apply(proposer, kind).0.outcome
    }

    pub fn key_set(&self) -> PublicKeySet {
        PublicKeySet::from_bytes(self.state.configuration().ms_key_set.clone()).unwrap()
    }

    /// The MS of the current configuration signs it with the shares its members hold.
    pub fn certify(&mut self) {
        let Some(req) = self.state.signing_request() else {
            return;
        };
        let cfg = self.state.configuration().clone();
        let pks = self.key_set();
        let msg = req.signing_bytes();
        let sigs: Vec<_> = cfg
            .ms_members
            .iter()
            .enumerate()
            .filter(|(_, id)| self.fault(id) != Some(Fault::Silent))
            .filter_map(|(i, id)| self.shares.get(id).map(|s| (i, s.sign(&msg))))
            .collect();
        let sig = combine(&pks, &msg, &sigs).expect("the MS can sign its configuration");
        let cert = ConfigCert {
            epoch: cfg.epoch,
            configuration: cfg.encode(),
            signature: sig.to_bytes().to_vec(),
        };
        cert.verify(&self.ms_key)
            .expect("every ConfigCert verifies with the genesis MS key");
        let out = self.outcome(
            NodeId([0xEE; 32]),
            OpKind::CertifiedEpoch {
                signature: sig.to_bytes(),
            },
        );
        assert!(
            matches!(out, Outcome::Certified | Outcome::EpochEnded),
            "{out:?}"
        );
        self.certs.push(cert);
    }

    /// A freshness batch executed now, signed by the current MS, verifies with the genesis
    /// key (the transferable form storage nodes keep).
    pub fn check_freshness(&mut self) {
        let nonces = vec![[self.rng.next_u32() as u8; 32]];
        let epoch = self.state.epoch();
        let Outcome::Freshness { root, .. } =
            self.outcome(NodeId([0xEE; 32]), OpKind::Freshness { nonces })
        else {
            panic!("freshness batch refused");
        };
        let msg = freshness::signing_bytes(&root, epoch);
        let ms = self.state.configuration().ms_members.clone();
        let sigs: Vec<_> = ms
            .iter()
            .enumerate()
            .filter_map(|(i, id)| self.shares.get(id).map(|s| (i, s.sign(&msg))))
            .collect();
        let sig = combine(&self.key_set(), &msg, &sigs).unwrap();
        assert!(
            self.ms_key.0.verify(&sig, &msg),
            "freshness proof verifies with the genesis key"
        );
    }

    /// f_ms+1 MS members propose EndEpoch; returns the outputs of the epoch end.
    pub fn end_epoch(&mut self) -> Vec<Output> {
        self.certify();
        self.now_ms += 1_000;
        let start = self.state.epoch();
        let mut outs = Vec::new();
        for id in self.state.configuration().ms_members.clone() {
            if self.state.epoch() > start {
                break;
            }
            if self.fault(&id) == Some(Fault::Silent) {
                continue;
            }
            let (_, o) = self.apply(
                id,
                OpKind::EndEpoch {
                    now_ms: self.now_ms,
                },
            );
            outs.extend(o);
        }
        assert_eq!(self.state.epoch(), start + 1, "the epoch ended");
        outs
    }

    pub fn add_nodes(&mut self, k: usize) {
        for _ in 0..k {
            let t = TestNode::new(&mut self.rng);
            self.serial += 1;
            let c = add_cert(&self.authority, &t, self.serial);
            self.nodes.push(t);
            let out = self.outcome(NodeId([0xEE; 32]), OpKind::Add(c));
            assert!(matches!(out, Outcome::Queued { .. }), "{out:?}");
        }
    }

    /// The authority removes `node` (a removal of an MS member waits for a rotation, as the
    /// state machine rules).
    pub fn remove_node(&mut self, node: NodeId) {
        self.serial += 1;
        let c = RemoveCert::issue(&self.authority, node, self.serial);
        let out = self.outcome(NodeId([0xEE; 32]), OpKind::Remove(c));
        assert!(matches!(out, Outcome::Queued { .. }), "{out:?}");
    }

    pub fn rotation(&self) -> Option<Rotation> {
        self.state.rotation().map(|r| r.rotation().clone())
    }

    /// Every old member deals (as its fault says).
    pub fn deal_all(&mut self) {
        let rot = self.rotation().expect("a rotation runs");
        for (i, id) in rot.old_members().to_vec().iter().enumerate() {
            let fault = self.fault(id);
            if fault == Some(Fault::Silent) {
                continue;
            }
            let share = match fault {
                Some(Fault::WrongCommitment) => {
                    SecretKeySet::random(0, &mut self.rng).secret_key_share(0)
                }
                _ => match self.shares.get(id) {
                    Some(s) => s.clone(),
                    // A member that was silent in the rotation that made it a member holds
                    // no share: it has nothing to deal.
                    None => continue,
                },
            };
            let mut d = deal(&rot, i, &share, &mut self.rng).unwrap();
            if let Some(Fault::BadSubShareFor(k)) = fault {
                d.ciphertexts[k][0] ^= 1;
            }
            let out = self.outcome(*id, OpKind::Deal(Box::new(d)));
            match fault {
                Some(Fault::WrongCommitment) => assert!(
                    matches!(&out, Outcome::Rejected { code, .. } if *code == OpError::BadDealing(String::new()).code()),
                    "{out:?}"
                ),
                _ => assert!(matches!(out, Outcome::Recorded { .. }), "{out:?}"),
            }
        }
    }

    /// Every new member checks every dealing: acknowledges a good sub-share, accuses a bad
    /// one (a liar accuses everything and acknowledges nothing).
    pub fn check_dealings(&mut self) {
        let rot = self.rotation().unwrap();
        let dealings = self.state.rotation().unwrap().dealings().to_vec();
        for (k, m) in rot.new_members().iter().enumerate() {
            let fault = self.fault(&m.id);
            if fault == Some(Fault::Silent) {
                continue;
            }
            for d in &dealings {
                let x = self.node(&m.id).x_secret;
                let opened = open_sub_share(&rot, d, k, &x);
                if fault == Some(Fault::Liar) {
                    // A false accusation is refused; the proof itself is honest, so only the
                    // claim is false.
                    if opened.is_ok() {
                        assert!(accuse(&rot, d, k, &x, &mut self.rng).is_err());
                    }
                    continue;
                }
                match opened {
                    Ok(_) => {
                        let out = self.outcome(
                            m.id,
                            OpKind::AckDealing {
                                dealer_index: d.dealer_index,
                                digest: d.digest(),
                            },
                        );
                        assert!(!matches!(out, Outcome::Rejected { .. }), "{out:?}");
                    }
                    Err(_) => {
                        let a = accuse(&rot, d, k, &x, &mut self.rng).unwrap();
                        let out = self.outcome(m.id, OpKind::Accuse(Box::new(a)));
                        assert!(!matches!(out, Outcome::Rejected { .. }), "{out:?}");
                    }
                }
            }
        }
    }

    /// New members that can compute their share from S do so and sign the handover
    /// statement. Returns the new shares by node.
    pub fn hand_over(&mut self) -> BTreeMap<NodeId, SecretKeyShare> {
        let rot = self.rotation().unwrap();
        let rs = self.state.rotation().unwrap();
        let (set, key_set) = rs.chosen().expect("S is chosen");
        let (set, key_set) = (set.to_vec(), key_set.to_vec());
        let s_dealings: Vec<_> = set
            .iter()
            .map(|i| rs.dealing_of(*i).unwrap().clone())
            .collect();
        let new_pks = PublicKeySet::from_bytes(key_set.clone()).unwrap();
        assert_eq!(new_pks.public_key(), self.ms_key.0, "the group key is kept");
        let msg = handover_signing_bytes(rot.epoch(), &key_set);
        let mut new_shares = BTreeMap::new();
        for (k, m) in rot.new_members().iter().enumerate() {
            let fault = self.fault(&m.id);
            if fault == Some(Fault::Silent) {
                continue;
            }
            let x = self.node(&m.id).x_secret;
            let subs: Vec<(u32, Fr)> = s_dealings
                .iter()
                .map(|d| (d.dealer_index, open_sub_share(&rot, d, k, &x).unwrap()))
                .collect();
            let share = combine_share(&rot, &subs).unwrap();
            assert!(new_pks.public_key_share(k).verify(&share.sign(&msg), &msg));
            let sig = if fault == Some(Fault::Liar) {
                SecretKeySet::random(0, &mut self.rng)
                    .secret_key_share(0)
                    .sign(&msg)
            } else {
                share.sign(&msg)
            };
            if self.state.retired().is_some() {
                // Handover already executed; later shares are not needed. A member whose
                // fault is only in dealing (as an old member) still holds a good new share.
                if fault != Some(Fault::Liar) {
                    new_shares.insert(m.id, share);
                }
                continue;
            }
            let out = self.outcome(
                m.id,
                OpKind::HandoverShare {
                    share: sig.to_bytes(),
                },
            );
            if fault == Some(Fault::Liar) {
                assert!(
                    matches!(&out, Outcome::Rejected { code, .. } if *code == OpError::BadHandoverShare.code()),
                    "{out:?}"
                );
            } else {
                assert!(!matches!(out, Outcome::Rejected { .. }), "{out:?}");
                new_shares.insert(m.id, share);
            }
        }
        new_shares
    }

    /// The new MS takes over: it decodes the old MS's retired state (the snapshot 2f+1 old
    /// replicas certify), continues from it, and the old members erase their shares.
    pub fn take_over(&mut self, new_shares: BTreeMap<NodeId, SecretKeyShare>) {
        let epoch = self.state.retired().expect("the old MS retired");
        assert_eq!(self.state.epoch(), epoch);
        let refused = self.outcome(NodeId([0xEE; 32]), OpKind::EndEpoch { now_ms: 0 });
        assert!(
            matches!(&refused, Outcome::Rejected { code, .. } if *code == OpError::Retired(0).code()),
            "a retired MS refuses everything: {refused:?}"
        );
        let snapshot = self.state.encode();
        assert_eq!(snapshot, self.mirror.encode());
        let mut next = MembershipState::decode(&snapshot).unwrap();
        next.take_over();
        self.mirror = next.clone();
        self.state = next;
        let cfg = self.state.configuration();
        assert!(cfg.ms_next.is_empty() || self.state.rotation().is_some());
        let old: Vec<NodeId> = self.shares.keys().copied().collect();
        for id in old {
            self.shares.remove(&id);
        }
        self.shares = new_shares;
        assert_eq!(
            self.key_set().public_key(),
            self.ms_key.0,
            "the configuration's key set keeps the group key"
        );
    }

    /// Runs the rotation that the current configuration started, to the new MS's first
    /// certified configuration. Returns the (old, new) MS lists.
    pub fn rotate(&mut self) -> (Vec<NodeId>, Vec<NodeId>) {
        self.certify();
        let rot = self.rotation().expect("a rotation runs");
        let old = rot.old_members().to_vec();
        let new: Vec<NodeId> = rot.new_members().iter().map(|m| m.id).collect();
        self.deal_all();
        self.check_dealings();
        let shares = self.hand_over();
        self.take_over(shares);
        assert_eq!(self.state.configuration().ms_members, new);
        self.certify();
        (old, new)
    }
}

pub fn add_cert(authority: &KeyPair, t: &TestNode, serial: u64) -> AddCert {
    AddCert::issue(
        authority,
        t.key.public(),
        sha256(&[b"tls", &t.key.public().0]),
        t.x_public,
        format!("10.0.{}.{}:7000", serial / 250, serial % 250),
        serial,
        FAR_MS,
    )
}
