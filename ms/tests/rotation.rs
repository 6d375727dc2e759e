//! MS rotation in the membership state machine (PROTOCOL.md, "MS rotation and resharing";
//! docs/resharing.md). One `MembershipState` stands for the replicated state (PBFT gives
//! every replica the same order; a second copy fed the same operations checks that the
//! bytes agree); old and new members act on it with their real shares and x25519 keys,
//! some of them Byzantine. Every run is seeded.

use std::collections::BTreeMap;

use blsttc::rand::rngs::StdRng;
use blsttc::rand::{RngCore, SeedableRng};
use blsttc::{Fr, PublicKeySet, SecretKeySet, SecretKeyShare};
use dbqs_common::ConfigCert;
use dbqs_common::certs::AddCert;
use dbqs_common::codec::sha256;
use dbqs_common::config::{Configuration, Member, Params};
use dbqs_common::identity::{KeyPair, NodeId};
use dbqs_common::threshold::{MsPublicKey, combine};
use dbqs_ms::membership::freshness;
use dbqs_ms::membership::resharing::{
    Rotation, accuse, combine_share, deal, open_sub_share, threshold_for,
};
use dbqs_ms::membership::{
    MembershipState, Op, OpError, OpKind, Outcome, Output, Reply, handover_signing_bytes,
};

const FAR_MS: u64 = 4_102_444_800_000;

struct TestNode {
    key: KeyPair,
    x_secret: [u8; 32],
    x_public: [u8; 32],
}

impl TestNode {
    fn new(rng: &mut StdRng) -> TestNode {
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

    fn id(&self) -> NodeId {
        self.key.node_id()
    }
}

/// How a party misbehaves in a rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// Never sends anything.
    Silent,
    /// Old member: seals garbage to the new member at this position.
    BadSubShareFor(usize),
    /// Old member: deals a share that is not its own (the commitment does not match).
    WrongCommitment,
    /// New member: accuses every dealing, acknowledges nothing, gives a bad handover share.
    Liar,
}

struct World {
    rng: StdRng,
    authority: KeyPair,
    nodes: Vec<TestNode>,
    ms_key: MsPublicKey,
    /// The replicated state, and a second copy fed the same operations.
    state: MembershipState,
    mirror: MembershipState,
    /// Current MS shares by node (what the nodes hold on disk).
    shares: BTreeMap<NodeId, SecretKeyShare>,
    faults: BTreeMap<NodeId, Fault>,
    serial: u64,
    now_ms: u64,
    /// Every ConfigCert, in order.
    certs: Vec<ConfigCert>,
}

impl World {
    fn new(seed: u64, n: usize, ms_rotation_epochs: u64) -> World {
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

    fn node(&self, id: &NodeId) -> &TestNode {
        self.nodes.iter().find(|t| t.id() == *id).unwrap()
    }

    fn fault(&self, id: &NodeId) -> Option<Fault> {
        self.faults.get(id).copied()
    }

    /// Orders one operation from `proposer` (both copies).
    fn apply(&mut self, proposer: NodeId, kind: OpKind) -> (Reply, Vec<Output>) {
        let op = Op::new(self.state.epoch(), kind);
        let (reply, outs) = self.state.apply(proposer, &op);
        let (mirror_reply, _) = self.mirror.apply(proposer, &op);
        assert_eq!(reply, mirror_reply);
        (reply, outs)
    }

    fn outcome(&mut self, proposer: NodeId, kind: OpKind) -> Outcome {
        self.apply(proposer, kind).0.outcome
    }

    fn key_set(&self) -> PublicKeySet {
        PublicKeySet::from_bytes(self.state.configuration().ms_key_set.clone()).unwrap()
    }

    /// The MS of the current configuration signs it with the shares its members hold.
    fn certify(&mut self) {
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
    fn check_freshness(&mut self) {
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
    fn end_epoch(&mut self) -> Vec<Output> {
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

    fn add_nodes(&mut self, k: usize) {
        for _ in 0..k {
            let t = TestNode::new(&mut self.rng);
            self.serial += 1;
            let c = add_cert(&self.authority, &t, self.serial);
            self.nodes.push(t);
            let out = self.outcome(NodeId([0xEE; 32]), OpKind::Add(c));
            assert!(matches!(out, Outcome::Queued { .. }), "{out:?}");
        }
    }

    fn rotation(&self) -> Option<Rotation> {
        self.state.rotation().map(|r| r.rotation().clone())
    }

    /// Every old member deals (as its fault says).
    fn deal_all(&mut self) {
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
                _ => self.shares[id].clone(),
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
    fn check_dealings(&mut self) {
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
    fn hand_over(&mut self) -> BTreeMap<NodeId, SecretKeyShare> {
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
                // Handover already executed; later shares are not needed.
                if fault.is_none() {
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
    fn take_over(&mut self, new_shares: BTreeMap<NodeId, SecretKeyShare>) {
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
    fn rotate(&mut self) -> (Vec<NodeId>, Vec<NodeId>) {
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

fn add_cert(authority: &KeyPair, t: &TestNode, serial: u64) -> AddCert {
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

#[test]
fn twenty_rotations_keep_the_genesis_key_and_the_ms_grows_from_4_to_7() {
    let mut w = World::new(1, 8, 2);
    let mut rotations = 0;
    let mut sizes = Vec::new();
    let mut seen_ms = std::collections::BTreeSet::new();
    while rotations < 20 {
        if w.state.configuration().members.len() < 70 {
            w.add_nodes(4);
        }
        w.end_epoch();
        w.check_freshness();
        if w.state.rotation().is_some() {
            let (old, new) = w.rotate();
            rotations += 1;
            sizes.push((old.len(), new.len()));
            seen_ms.extend(new.iter().copied());
            w.check_freshness();
        }
    }
    assert!(sizes.contains(&(4, 7)), "the MS grew 4 → 7: {sizes:?}");
    assert!(
        seen_ms.len() > 7,
        "the MS moved between nodes ({} distinct members)",
        seen_ms.len()
    );
    for c in &w.certs {
        c.verify(&w.ms_key).unwrap();
    }
    assert!(w.certs.len() > 40, "{} ConfigCerts", w.certs.len());
}

#[test]
fn old_shares_with_fewer_than_t_current_shares_cannot_sign() {
    let mut w = World::new(2, 12, 2);
    let old_pks = w.key_set();
    let old_shares: Vec<(usize, SecretKeyShare)> = w
        .state
        .configuration()
        .ms_members
        .iter()
        .enumerate()
        .map(|(i, id)| (i, w.shares[id].clone()))
        .collect();
    while w.state.rotation().is_none() {
        w.end_epoch();
    }
    w.rotate();
    let new_pks = w.key_set();
    let cfg = w.state.configuration().clone();
    let t = new_pks.threshold() + 1;
    let msg = b"anything the MS could sign".to_vec();
    let current: Vec<(usize, blsttc::SignatureShare)> = cfg
        .ms_members
        .iter()
        .enumerate()
        .take(t - 1)
        .map(|(i, id)| (i, w.shares[id].sign(&msg)))
        .collect();
    // Every old share, at every position the current shares leave free.
    let mut mixed = current.clone();
    for (i, s) in &old_shares {
        if !mixed.iter().any(|(j, _)| j == i) {
            mixed.push((*i, s.sign(&msg)));
        }
    }
    assert!(mixed.len() >= t);
    assert!(combine(&new_pks, &msg, &mixed).is_err());
    // Raw Lagrange combination of t−1 current shares and one old share also fails.
    let mut raw = current.clone();
    let free = (0..cfg.ms_members.len())
        .find(|i| !current.iter().any(|(j, _)| j == i))
        .unwrap();
    raw.push((free, old_shares[free % old_shares.len()].1.sign(&msg)));
    let sig = new_pks
        .combine_signatures(raw.iter().map(|(i, s)| (*i, s)))
        .unwrap();
    assert!(!new_pks.public_key().verify(&sig, &msg));
    // Old shares alone still combine under the old key set (that is why they are erased),
    // and t current shares sign.
    let old_sigs: Vec<_> = old_shares.iter().map(|(i, s)| (*i, s.sign(&msg))).collect();
    assert!(combine(&old_pks, &msg, &old_sigs).is_ok());
    let all: Vec<_> = cfg
        .ms_members
        .iter()
        .enumerate()
        .take(t)
        .map(|(i, id)| (i, w.shares[id].sign(&msg)))
        .collect();
    assert!(combine(&new_pks, &msg, &all).is_ok());
}

#[test]
fn byzantine_dealers_and_new_members_cannot_stop_or_corrupt_a_rotation() {
    let mut w = World::new(3, 12, 2);
    while w.state.rotation().is_none() {
        w.end_epoch();
    }
    w.certify();
    let rot = w.rotation().unwrap();
    let old = rot.old_members().to_vec();
    let new: Vec<NodeId> = rot.new_members().iter().map(|m| m.id).collect();
    // f_ms = 1 of the old MS is Byzantine (bad sub-share for an honest new member), and
    // f'_ms = 1 of the new MS lies. A second old member deals a wrong commitment; it is
    // refused at once, so it costs only its own dealing (t = 2 of the 4 remain).
    w.faults.insert(old[0], Fault::BadSubShareFor(1));
    w.faults.insert(old[1], Fault::WrongCommitment);
    w.faults.insert(new[0], Fault::Liar);
    w.deal_all();
    w.check_dealings();
    let rs = w.state.rotation().unwrap();
    assert!(
        rs.is_upheld(0),
        "the accusation against the bad dealing is upheld"
    );
    let (set, _) = rs.chosen().unwrap();
    assert!(!set.contains(&0) && !set.contains(&1), "S = {set:?}");
    let shares = w.hand_over();
    assert!(!shares.contains_key(&new[0]));
    assert_eq!(
        w.state.rejections(OpError::BadHandoverShare.code()),
        1,
        "the liar's handover share was refused"
    );
    w.take_over(shares);
    w.faults.clear();
    w.certify();
    w.check_freshness();
}

#[test]
fn an_accusation_upheld_after_s_was_chosen_makes_the_ms_choose_again() {
    let mut w = World::new(4, 12, 2);
    while w.state.rotation().is_none() {
        w.end_epoch();
    }
    w.certify();
    let rot = w.rotation().unwrap();
    let old = rot.old_members().to_vec();
    // Dealer 0 seals garbage to new member 3; the other three new members acknowledge
    // first (2f'+1 = 3), so S = {0, 1} is chosen before member 3 accuses.
    w.faults.insert(old[0], Fault::BadSubShareFor(3));
    w.deal_all();
    let dealings = w.state.rotation().unwrap().dealings().to_vec();
    for (k, m) in rot.new_members().iter().enumerate().take(3) {
        let x = w.node(&m.id).x_secret;
        for d in &dealings {
            assert!(open_sub_share(&rot, d, k, &x).is_ok());
            w.outcome(
                m.id,
                OpKind::AckDealing {
                    dealer_index: d.dealer_index,
                    digest: d.digest(),
                },
            );
        }
    }
    assert_eq!(w.state.rotation().unwrap().chosen().unwrap().0, &[0, 1]);
    let m3 = rot.new_members()[3].id;
    let x = w.node(&m3).x_secret;
    let a = accuse(&rot, &dealings[0], 3, &x, &mut w.rng).unwrap();
    // A false accusation (against a good dealing) is refused and changes nothing.
    let mut false_a = accuse(&rot, &dealings[0], 3, &x, &mut w.rng).unwrap();
    false_a.dealer_index = 1;
    false_a.dealing_digest = dealings[1].digest();
    let out = w.outcome(m3, OpKind::Accuse(Box::new(false_a)));
    assert!(matches!(out, Outcome::Rejected { .. }), "{out:?}");
    let out = w.outcome(m3, OpKind::Accuse(Box::new(a)));
    assert!(!matches!(out, Outcome::Rejected { .. }), "{out:?}");
    let rs = w.state.rotation().unwrap();
    assert_eq!(
        rs.chosen().unwrap().0,
        &[1, 2],
        "S chosen again without dealer 0"
    );
    assert_eq!(rs.handover_count(), 0);
    let shares = w.hand_over();
    assert_eq!(
        shares.len(),
        4,
        "every new member computes a share from the new S"
    );
    w.take_over(shares);
    w.certify();
}

#[test]
fn a_rotation_survives_restarts_and_applies_certificates_submitted_during_it() {
    let mut w = World::new(5, 12, 2);
    while w.state.rotation().is_none() {
        w.end_epoch();
    }
    w.certify();
    w.deal_all();
    // A replica restarts mid-rotation from its snapshot: the state is the same.
    let snap = w.state.encode();
    let restored = MembershipState::decode(&snap).unwrap();
    assert_eq!(restored.encode(), snap);
    w.state = restored;
    // An epoch ends during the rotation (the old MS keeps serving), and an admin adds a
    // node, before and after the epoch end.
    w.add_nodes(1);
    w.end_epoch();
    assert!(w.state.rotation().is_some(), "the rotation carries on");
    w.certify();
    let joined_before = w.nodes.last().unwrap().id();
    assert!(
        w.state
            .configuration()
            .members
            .iter()
            .any(|m| m.node_id() == joined_before)
    );
    w.add_nodes(1);
    let joined_during = w.nodes.last().unwrap().id();
    w.check_dealings();
    let snap = w.state.encode();
    w.state = MembershipState::decode(&snap).unwrap();
    let shares = w.hand_over();
    w.take_over(shares);
    assert!(
        w.state
            .configuration()
            .members
            .iter()
            .any(|m| m.node_id() == joined_during),
        "the Add submitted during the rotation is in the new MS's first configuration"
    );
    w.certify();
}

#[test]
fn a_rotation_whose_incoming_member_is_removed_is_drawn_again() {
    let mut w = World::new(6, 12, 2);
    while w.state.rotation().is_none() {
        w.end_epoch();
    }
    w.certify();
    let first: Vec<NodeId> = w.state.configuration().ms_next.clone();
    let victim = first[0];
    w.serial += 1;
    let rm = dbqs_common::certs::RemoveCert::issue(&w.authority, victim, w.serial);
    let out = w.outcome(NodeId([0xEE; 32]), OpKind::Remove(rm));
    assert!(matches!(out, Outcome::Queued { .. }), "{out:?}");
    let outs = w.end_epoch();
    assert!(
        outs.iter()
            .any(|o| matches!(o, Output::RotationStarted { .. }))
    );
    let second = w.state.configuration().ms_next.clone();
    assert!(
        !second.contains(&victim),
        "the removed node is not drawn again"
    );
    assert!(
        !w.state
            .configuration()
            .members
            .iter()
            .any(|m| m.node_id() == victim),
        "once it is out of both MS lists, its removal takes effect"
    );
    w.rotate();
}

#[test]
fn operations_for_the_rotation_from_outsiders_are_refused() {
    let mut w = World::new(7, 12, 2);
    while w.state.rotation().is_none() {
        w.end_epoch();
    }
    w.certify();
    let rot = w.rotation().unwrap();
    let d = deal(
        &rot,
        0,
        &w.shares[&rot.old_members()[0]].clone(),
        &mut w.rng,
    )
    .unwrap();
    // Submitted by someone other than the dealer.
    let out = w.outcome(NodeId([0xEE; 32]), OpKind::Deal(Box::new(d.clone())));
    assert!(
        matches!(&out, Outcome::Rejected { code, .. } if *code == OpError::NotRotationParty(NodeId([0; 32])).code())
    );
    let out = w.outcome(rot.old_members()[0], OpKind::Deal(Box::new(d.clone())));
    assert!(matches!(out, Outcome::Recorded { .. }));
    // Twice.
    let out = w.outcome(rot.old_members()[0], OpKind::Deal(Box::new(d.clone())));
    assert!(matches!(out, Outcome::Rejected { .. }));
    // An ack from a node outside the new MS, and one for a digest that is not the dealing's.
    let out = w.outcome(
        rot.old_members()[0],
        OpKind::AckDealing {
            dealer_index: 0,
            digest: d.digest(),
        },
    );
    let outsider = !rot
        .new_members()
        .iter()
        .any(|m| m.id == rot.old_members()[0]);
    if outsider {
        assert!(matches!(out, Outcome::Rejected { .. }));
    }
    let m0 = rot.new_members()[0].id;
    let out = w.outcome(
        m0,
        OpKind::AckDealing {
            dealer_index: 0,
            digest: [9; 32],
        },
    );
    assert!(
        matches!(&out, Outcome::Rejected { code, .. } if *code == OpError::UnknownDealing(0).code())
    );
    // A handover share before S exists.
    let out = w.outcome(m0, OpKind::HandoverShare { share: [0; 96] });
    assert!(matches!(out, Outcome::Rejected { .. }));
    // Encodings round-trip.
    for kind in [
        OpKind::Deal(Box::new(d.clone())),
        OpKind::AckDealing {
            dealer_index: 3,
            digest: [1; 32],
        },
        OpKind::HandoverShare { share: [2; 96] },
    ] {
        let op = Op::new(5, kind);
        assert_eq!(Op::decode(&op.encode()).unwrap(), op);
    }
}
