//! Determinism, canonical snapshots and the PBFT application adapter.

use dbqs_common::config::{Configuration, Params};
use dbqs_common::identity::{KeyPair, NodeId};
use dbqs_ms::membership::{
    MembershipApp, MembershipState, Op, OpError, OpKind, Outcome, Output, RenewCert, Reply,
    RevokeClientCert, RotateAuthorityCert,
};
use dbqs_ms::pbft::{Application, Request};
use ed25519_dalek::SigningKey;

use crate::support::*;

/// A script touching every operation; two instances fed it must agree byte for byte.
fn script(c: &mut Cluster) -> Vec<(NodeId, OpKind)> {
    let (_, a) = c.add_cert(100, FAR_MS);
    let rc = c.remove_cert(c.non_ms_member(0));
    let serial = c.serial();
    let renew = RenewCert::issue(&c.authority, c.nodes[1].node_id(), FAR_MS, serial);
    let serial = c.serial();
    let client = KeyPair::from_seed([5; 32]).public();
    let rv = RevokeClientCert::issue(&c.authority, client, [5; 32], serial);
    let serial = c.serial();
    let rot = RotateAuthorityCert::issue(&c.authority, &c.authority, serial);
    let victim = c.non_ms_member(1);
    vec![
        (anyone(), OpKind::Add(a)),
        (anyone(), OpKind::Remove(rc)),
        (anyone(), OpKind::Renew(renew)),
        (anyone(), OpKind::RevokeClient(rv)),
        (anyone(), OpKind::RotateAuthority(rot)),
        (c.ms[0].node_id(), OpKind::Evict(victim)),
        (c.ms[1].node_id(), OpKind::Evict(victim)),
        (c.ms[0].node_id(), OpKind::EndEpoch { now_ms: 10 }),
        (
            anyone(),
            OpKind::Freshness {
                nonces: vec![[1; 32], [2; 32]],
            },
        ),
    ]
}

fn run(s: &mut MembershipState, ops: &[(NodeId, OpKind)]) -> Vec<Reply> {
    ops.iter().map(|(p, k)| apply(s, *p, k.clone()).0).collect()
}

fn scripted_run(c: &mut Cluster, s: &mut MembershipState) -> Vec<Reply> {
    let ops = script(c);
    run(s, &ops)
}

#[test]
fn two_instances_fed_the_same_operations_have_identical_snapshots_and_configurations() {
    let mut c = cluster(8);
    let mut a = c.state();
    let mut b = c.state();
    let ops = script(&mut c);
    let ra = run(&mut a, &ops);
    let rb = run(&mut b, &ops);
    assert_eq!(ra, rb);
    assert!(
        ra.iter()
            .all(|r| !matches!(r.outcome, Outcome::Rejected { .. })),
        "{ra:?}"
    );
    assert_eq!(a.encode(), b.encode());
    end_epoch(&c, &mut a, 20);
    end_epoch(&c, &mut b, 20);
    assert_eq!(a.config_hash(), b.config_hash());
    assert_eq!(a.encode(), b.encode());
    assert_ne!(a.config_hash(), c.state().config_hash());
}

#[test]
fn snapshot_round_trips_and_restored_state_continues_identically() {
    let mut c = cluster(8);
    let mut s = c.state();
    scripted_run(&mut c, &mut s);
    let snap = s.encode();
    let mut back = MembershipState::decode(&snap).unwrap();
    assert_eq!(back.encode(), snap);
    end_epoch(&c, &mut s, 30);
    end_epoch(&c, &mut back, 30);
    assert_eq!(s.encode(), back.encode());
    // Through the PBFT application interface.
    let mut app = MembershipApp::new(c.state());
    app.restore(&s.encode()).unwrap();
    assert_eq!(app.snapshot(), s.encode());
}

#[test]
fn a_corrupt_or_non_canonical_snapshot_is_refused() {
    let mut c = cluster(8);
    let mut s = c.state();
    scripted_run(&mut c, &mut s);
    let snap = s.encode();
    for cut in [0, 10, snap.len() / 2, snap.len() - 1] {
        assert!(
            MembershipState::decode(&snap[..cut]).is_err(),
            "cut at {cut}"
        );
    }
    let mut long = snap.clone();
    long.push(0);
    assert!(MembershipState::decode(&long).is_err());
    // Flip bits everywhere after the tag: decoding fails or yields a different state.
    for i in (16..snap.len()).step_by(97) {
        let mut f = snap.clone();
        f[i] ^= 0x01;
        if let Ok(d) = MembershipState::decode(&f) {
            assert_ne!(d.encode(), snap, "flip at {i} decoded to the same state");
        }
    }
    let mut app = MembershipApp::new(c.state());
    assert!(app.restore(&snap[..snap.len() - 3]).is_err());
    assert_eq!(
        app.snapshot(),
        c.state().encode(),
        "a refused restore changes nothing"
    );
}

fn request(k: &KeyPair, num: u64, op: Op) -> Request {
    Request::sign(&SigningKey::from_bytes(&k.seed()), num, false, op.encode())
}

#[test]
fn the_pbft_application_takes_the_proposer_from_the_request_client_key() {
    let c = cluster(8);
    let mut app = MembershipApp::new(c.state());
    let outsider = c
        .nodes
        .iter()
        .find(|k| k.node_id() == c.non_ms_member(0))
        .unwrap()
        .clone();
    let batch = vec![
        request(&outsider, 1, Op::new(1, OpKind::EndEpoch { now_ms: 5 })),
        request(&c.ms[0], 1, Op::new(1, OpKind::EndEpoch { now_ms: 5 })),
        request(&c.ms[1], 1, Op::new(1, OpKind::EndEpoch { now_ms: 5 })),
        Request {
            op: b"garbage".to_vec(),
            ..request(&c.ms[2], 1, Op::new(1, OpKind::EndEpoch { now_ms: 5 }))
        },
    ];
    let replies: Vec<Reply> = app
        .execute(&batch)
        .iter()
        .map(|b| Reply::decode(b).unwrap())
        .collect();
    assert!(is_rejected(
        &replies[0],
        OpError::NotMsMember(outsider.node_id()).code()
    ));
    assert!(matches!(
        replies[1].outcome,
        Outcome::Recorded {
            votes: 1,
            needed: 2
        }
    ));
    assert_eq!(replies[2].outcome, Outcome::EpochEnded);
    assert_eq!(replies[2].epoch, 2);
    assert!(matches!(
        replies[3].outcome,
        Outcome::Rejected { code: 3, .. }
    ));
    let outs: Vec<&Output> = app.outputs_since(0).map(|(_, o)| o).collect();
    assert!(matches!(outs.last(), Some(Output::SignConfig(r)) if r.epoch == 2));
    assert_eq!(app.first_output_id(), 0);
    assert_eq!(app.outputs_since(app.next_output_id()).count(), 0);
}

#[test]
fn genesis_requires_an_authority_signed_add_cert_for_every_member() {
    let c = cluster(8);
    let missing = &c.add_certs[1..];
    assert!(MembershipState::genesis(&c.genesis, &c.ms_key, missing).is_err());
    let other = Cluster::new(8, Params::default(), FAR_MS);
    assert!(MembershipState::genesis(&c.genesis, &other.ms_key, &c.add_certs).is_err());
    let s = c.state();
    assert_eq!(s.epoch(), 1);
    assert!(s.signing_request().is_none());
    assert_eq!(
        s.config_cert().unwrap().verify(&c.ms_key).unwrap(),
        Configuration::decode(&c.genesis.configuration).unwrap()
    );
}
