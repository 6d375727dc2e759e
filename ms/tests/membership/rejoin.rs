//! Rejoin after an eviction (PROTOCOL.md, "Membership service", Evict: "an evicted node whose
//! AddCert is still unexpired and was never answered by a RemoveCert may submit it again to
//! rejoin (it gets a new ring position like any admitted node, and takes its ranges over as
//! new)"). The node submits it itself (the PBFT request's client key is its identity key).
//! Every other replayed certificate stays refused (serial numbers).

use dbqs_common::certs::AddCert;
use dbqs_common::codec::sha256;
use dbqs_common::config::Params;
use dbqs_common::identity::NodeId;
use dbqs_ms::membership::{MembershipState, OpError, OpKind, Outcome};

use crate::support::*;

/// 2f_ms+1 MS replicas propose evicting `target`, then the epoch ends at `now_ms`.
fn evict(c: &Cluster, s: &mut MembershipState, target: NodeId, now_ms: u64) {
    for k in c.ms.iter().take(2 * c.f_ms() + 1) {
        let r = apply(s, k.node_id(), OpKind::Evict(target)).0;
        assert!(matches!(r.outcome, Outcome::Recorded { .. }), "{r:?}");
    }
    end_epoch(c, s, now_ms);
    assert!(member(s, &target).is_none(), "{target} was not evicted");
}

fn genesis_add(c: &Cluster, id: NodeId) -> AddCert {
    c.add_certs
        .iter()
        .find(|a| a.node_id() == id)
        .expect("a genesis member")
        .clone()
}

#[test]
fn an_evicted_node_rejoins_with_its_own_add_cert_and_gets_a_new_ring_position() {
    let c = cluster(8);
    let mut s = c.state();
    let target = c.non_ms_member(0);
    let old_position = member(&s, &target).unwrap().ring_position;
    evict(&c, &mut s, target, 1);

    let add = genesis_add(&c, target);
    assert_eq!(
        try_op(&mut s, target, OpKind::Add(add.clone())),
        Ok(Outcome::Queued { changes: 1 }),
        "the evicted node's own AddCert, unexpired and never answered by a RemoveCert"
    );
    // Admitted like any new node: no ring position in the epoch that admits it ...
    end_epoch(&c, &mut s, 2);
    let m = member(&s, &target).expect("a member again");
    assert_eq!(m.ring_position, None);
    // ... and a fresh one, salted with that epoch's ConfigCert signature, from the next.
    let sig = c.sign_config(s.epoch(), &s.config_hash());
    apply(&mut s, anyone(), OpKind::CertifiedEpoch { signature: sig });
    end_epoch(&c, &mut s, 3);
    let position = member(&s, &target).unwrap().ring_position;
    assert_eq!(position, Some(sha256(&[&add.node_key.0, &sha256(&[&sig])])));
    assert_ne!(position, old_position);

    // The right is spent: the same certificate again is a replay.
    assert_eq!(
        try_op(&mut s, target, OpKind::Add(add.clone())),
        Err(OpError::Replay(add.serial))
    );
}

#[test]
fn only_the_evicted_node_itself_can_use_its_rejoin_right() {
    // AddCerts are public (every node holds genesis.adds): a third party resubmitting an
    // evicted node's AddCert would bring a dead node back into its groups, again and again.
    let c = cluster(8);
    let mut s = c.state();
    let target = c.non_ms_member(0);
    evict(&c, &mut s, target, 1);
    let add = genesis_add(&c, target);
    for other in [anyone(), c.ms[0].node_id(), c.non_ms_member(1)] {
        assert_eq!(
            try_op(&mut s, other, OpKind::Add(add.clone())),
            Err(OpError::Replay(add.serial)),
            "submitted by {other}"
        );
    }
    assert_eq!(
        try_op(&mut s, target, OpKind::Add(add)),
        Ok(Outcome::Queued { changes: 1 })
    );
}

#[test]
fn the_rejoin_right_survives_a_snapshot_round_trip() {
    let c = cluster(8);
    let mut s = c.state();
    let target = c.non_ms_member(1);
    evict(&c, &mut s, target, 1);
    let bytes = s.encode();
    let mut restored = MembershipState::decode(&bytes).expect("snapshot decodes");
    assert_eq!(restored.encode(), bytes);
    assert_eq!(
        try_op(&mut restored, target, OpKind::Add(genesis_add(&c, target))),
        Ok(Outcome::Queued { changes: 1 })
    );
}

#[test]
fn a_removed_node_cannot_rejoin_with_its_add_cert() {
    let mut c = cluster(8);
    let mut s = c.state();
    let target = c.non_ms_member(0);
    let rc = c.remove_cert(target);
    apply(&mut s, anyone(), OpKind::Remove(rc));
    end_epoch(&c, &mut s, 1);
    assert!(member(&s, &target).is_none());
    let add = genesis_add(&c, target);
    assert_eq!(
        try_op(&mut s, target, OpKind::Add(add.clone())),
        Err(OpError::Replay(add.serial))
    );
}

#[test]
fn a_removal_after_the_eviction_withdraws_the_rejoin_right() {
    let mut c = cluster(8);
    let mut s = c.state();
    let target = c.non_ms_member(0);
    evict(&c, &mut s, target, 1);
    // The admin answers the eviction with a RemoveCert: accepted although the node is no
    // longer a member, and its serial is spent like any other.
    let rc = c.remove_cert(target);
    assert!(
        try_op(&mut s, anyone(), OpKind::Remove(rc.clone())).is_ok(),
        "a RemoveCert for an evicted node is what withdraws its rejoin right"
    );
    assert_eq!(
        try_op(&mut s, anyone(), OpKind::Remove(rc.clone())),
        Err(OpError::Replay(rc.serial))
    );
    let add = genesis_add(&c, target);
    assert_eq!(
        try_op(&mut s, target, OpKind::Add(add.clone())),
        Err(OpError::Replay(add.serial))
    );
    // Still refused after the epoch ends.
    end_epoch(&c, &mut s, 2);
    assert_eq!(
        try_op(&mut s, target, OpKind::Add(add.clone())),
        Err(OpError::Replay(add.serial))
    );
    assert!(member(&s, &target).is_none());
}

#[test]
fn an_expired_add_cert_cannot_rejoin() {
    let mut c = Cluster::new(8, Params::default(), FAR_MS);
    let mut s = c.state();
    let (k, add) = c.add_cert(100, 10_000);
    apply(&mut s, anyone(), OpKind::Add(add.clone()));
    end_epoch(&c, &mut s, 1);
    end_epoch(&c, &mut s, 2);
    assert!(member(&s, &k.node_id()).unwrap().ring_position.is_some());
    evict(&c, &mut s, k.node_id(), 3);
    // The MS's agreed time passes the certificate's not-after.
    end_epoch(&c, &mut s, 20_000);
    assert_eq!(s.agreed_time_ms(), 20_000);
    assert!(matches!(
        try_op(&mut s, k.node_id(), OpKind::Add(add)),
        Err(OpError::Certificate(
            dbqs_common::certs::CertError::Expired { .. }
        ))
    ));
}

#[test]
fn replays_of_every_other_add_cert_stay_refused() {
    let mut c = cluster(8);
    let mut s = c.state();
    // A live member's own AddCert.
    let live = c.non_ms_member(2);
    let add = genesis_add(&c, live);
    assert_eq!(
        try_op(&mut s, live, OpKind::Add(add.clone())),
        Err(OpError::Replay(add.serial))
    );
    // A node admitted, removed, admitted again with a new AddCert, then evicted: only the
    // AddCert of its last admission may come back, not the older one.
    let (k, first) = c.add_cert(100, FAR_MS);
    apply(&mut s, anyone(), OpKind::Add(first.clone()));
    end_epoch(&c, &mut s, 1);
    let rc = c.remove_cert(k.node_id());
    apply(&mut s, anyone(), OpKind::Remove(rc));
    end_epoch(&c, &mut s, 2);
    let (_, second) = c.add_cert(100, FAR_MS);
    assert_ne!(first.serial, second.serial);
    apply(&mut s, anyone(), OpKind::Add(second.clone()));
    end_epoch(&c, &mut s, 3);
    end_epoch(&c, &mut s, 4);
    evict(&c, &mut s, k.node_id(), 5);
    assert_eq!(
        try_op(&mut s, k.node_id(), OpKind::Add(first.clone())),
        Err(OpError::Replay(first.serial))
    );
    assert_eq!(
        try_op(&mut s, k.node_id(), OpKind::Add(second.clone())),
        Ok(Outcome::Queued { changes: 1 })
    );
    // Another node's AddCert cannot ride on the evicted node's right either: its serial is
    // the live member's, already used.
    assert_eq!(
        try_op(&mut s, live, OpKind::Add(add.clone())),
        Err(OpError::Replay(add.serial))
    );
}
