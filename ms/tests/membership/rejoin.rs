//! Rejoin after an eviction (PROTOCOL.md, "Membership service", Evict: "an evicted node whose
//! AddCert is still unexpired and was never answered by a RemoveCert may submit it again to
//! rejoin (it gets a new ring position like any admitted node, and takes its ranges over as
//! new)"). The node submits it itself (the PBFT request's client key is its identity key).
//! Every other replayed certificate stays refused (serial numbers).

use dbqs_common::certs::{AddCert, RemoveCert};
use dbqs_common::codec::sha256;
use dbqs_common::config::Params;
use dbqs_common::identity::NodeId;
use dbqs_ms::membership::testkit::World;
use dbqs_ms::membership::{LeaveReason, MembershipState, MsChangeReason, OpError, OpKind, Outcome};

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

// --- An admin's RemoveCert wins over an eviction (review of defect 9) ---
//
// PROTOCOL.md, Evict: only a node "never answered by a RemoveCert" may rejoin. A RemoveCert
// that arrives while the eviction is still queued (or deferred until a rotation lets an MS
// member go), or while the node's rejoin is queued, must still end the node's way back.

#[test]
fn a_removal_while_the_eviction_is_queued_turns_the_leave_into_a_removal() {
    let mut c = cluster(8);
    let mut s = c.state();
    let target = c.non_ms_member(0);
    for k in c.ms.iter().take(2 * c.f_ms() + 1) {
        apply(&mut s, k.node_id(), OpKind::Evict(target));
    }
    assert_eq!(s.queued_changes(), 1, "the eviction is queued");
    let rc = c.remove_cert(target);
    assert_eq!(
        try_op(&mut s, anyone(), OpKind::Remove(rc.clone())),
        Ok(Outcome::Queued { changes: 1 }),
        "the RemoveCert replaces the queued eviction (one change still)"
    );
    assert_eq!(
        try_op(&mut s, anyone(), OpKind::Remove(rc.clone())),
        Err(OpError::Replay(rc.serial)),
        "its serial is spent"
    );
    // Deterministic: the state (queue included) survives a snapshot.
    let bytes = s.encode();
    assert_eq!(MembershipState::decode(&bytes).unwrap().encode(), bytes);
    end_epoch(&c, &mut s, 1);
    assert!(member(&s, &target).is_none());
    assert_eq!(s.rejoin_right(&target), None, "removed, not evicted");
    let add = genesis_add(&c, target);
    assert_eq!(
        try_op(&mut s, target, OpKind::Add(add.clone())),
        Err(OpError::Replay(add.serial))
    );
}

#[test]
fn a_removal_cancels_a_queued_rejoin() {
    let mut c = cluster(8);
    let mut s = c.state();
    let target = c.non_ms_member(0);
    evict(&c, &mut s, target, 1);
    let add = genesis_add(&c, target);
    assert_eq!(
        try_op(&mut s, target, OpKind::Add(add.clone())),
        Ok(Outcome::Queued { changes: 1 })
    );
    let rc = c.remove_cert(target);
    assert_eq!(
        try_op(&mut s, anyone(), OpKind::Remove(rc.clone())),
        Ok(Outcome::Queued { changes: 0 }),
        "the RemoveCert withdraws the queued rejoin"
    );
    assert_eq!(s.queued_changes(), 0);
    let bytes = s.encode();
    assert_eq!(MembershipState::decode(&bytes).unwrap().encode(), bytes);
    end_epoch(&c, &mut s, 2);
    assert!(
        member(&s, &target).is_none(),
        "a removed node does not come back"
    );
    assert_eq!(
        try_op(&mut s, target, OpKind::Add(add.clone())),
        Err(OpError::Replay(add.serial))
    );
}

/// Drives a rotation of `w` until the configuration no longer lists `node` (an MS member
/// leaves when a rotation lets it go). Returns the number of epochs it took.
fn until_gone(w: &mut World, node: NodeId) {
    for _ in 0..16 {
        if !w
            .state
            .configuration()
            .members
            .iter()
            .any(|m| m.node_id() == node)
        {
            return;
        }
        if w.state.rotation().is_some() {
            w.rotate();
        } else {
            w.end_epoch();
        }
    }
    panic!("{node} is still a member after 16 epochs");
}

/// 2f_ms+1 other MS members propose evicting the MS member `node`; the epoch ends, and
/// the MS member's leave waits for the rotation.
fn evict_ms_member(w: &mut World, node: NodeId) {
    let proposers: Vec<NodeId> = w
        .state
        .configuration()
        .ms_members
        .iter()
        .copied()
        .filter(|id| *id != node)
        .take(3)
        .collect();
    for p in proposers {
        w.apply(p, OpKind::Evict(node));
    }
    w.end_epoch();
    assert_eq!(
        w.state.deferred_leaves().get(&node),
        Some(&LeaveReason::Evicted)
    );
}

#[test]
fn an_evicted_ms_member_gets_its_rejoin_right_when_the_rotation_lets_it_go() {
    let mut w = World::new(7, 8, 0);
    let node = w.state.configuration().ms_members[1];
    evict_ms_member(&mut w, node);
    until_gone(&mut w, node);
    assert!(w.state.rejoin_right(&node).is_some());
}

#[test]
fn a_removal_while_an_ms_members_eviction_is_deferred_turns_it_into_a_removal() {
    let mut w = World::new(7, 8, 0);
    let node = w.state.configuration().ms_members[1];
    evict_ms_member(&mut w, node);
    w.serial += 1;
    let rc = RemoveCert::issue(&w.authority, node, w.serial);
    let out = w.outcome(anyone(), OpKind::Remove(rc.clone()));
    assert!(
        matches!(out, Outcome::Queued { .. }),
        "a RemoveCert for an MS member whose eviction waits for the rotation: {out:?}"
    );
    assert_eq!(
        w.state.deferred_leaves().get(&node),
        Some(&LeaveReason::Removed)
    );
    assert!(
        w.state
            .ms_change()
            .contains(&MsChangeReason::MemberLeaving {
                node,
                reason: LeaveReason::Removed
            })
    );
    let again = w.outcome(anyone(), OpKind::Remove(rc.clone()));
    assert!(
        matches!(&again, Outcome::Rejected { code, .. } if *code == OpError::Replay(0).code()),
        "{again:?}"
    );
    let bytes = w.state.encode();
    assert_eq!(MembershipState::decode(&bytes).unwrap().encode(), bytes);
    until_gone(&mut w, node);
    assert_eq!(w.state.rejoin_right(&node), None, "removed, not evicted");
}

// --- One rejoin per AddCert (review of defect 9) ---
//
// PROTOCOL.md, "Ring positions resist grinding": a node must not choose its ring position.
// A rejoin draws a fresh position; if every eviction granted a fresh right for the same
// AddCert, a Byzantine node could get itself evicted on purpose and redraw again and again.

/// Rejoins `target` with `add` and ends two epochs, so it holds a ring position again.
fn rejoin(c: &Cluster, s: &mut MembershipState, target: NodeId, add: &AddCert, now_ms: u64) {
    assert_eq!(
        try_op(s, target, OpKind::Add(add.clone())),
        Ok(Outcome::Queued { changes: 1 })
    );
    end_epoch(c, s, now_ms);
    end_epoch(c, s, now_ms + 1);
    assert!(member(s, &target).unwrap().ring_position.is_some());
}

#[test]
fn an_add_cert_serves_for_one_rejoin_only() {
    let mut c = cluster(8);
    let mut s = c.state();
    let target = c.non_ms_member(0);
    let add = genesis_add(&c, target);
    evict(&c, &mut s, target, 1);
    rejoin(&c, &mut s, target, &add, 2);
    // The used AddCert is remembered across a snapshot.
    let bytes = s.encode();
    let mut s = MembershipState::decode(&bytes).expect("snapshot decodes");
    assert_eq!(s.encode(), bytes);

    // Evicted again: no second redraw with the same certificate.
    evict(&c, &mut s, target, 10);
    assert_eq!(s.rejoin_right(&target), None);
    assert_eq!(
        try_op(&mut s, target, OpKind::Add(add.clone())),
        Err(OpError::Replay(add.serial)),
        "the AddCert already served for one rejoin"
    );

    // An admin's new AddCert admits it again, and that one may serve for one rejoin.
    let serial = c.serial();
    let fresh = AddCert::issue(
        &c.authority,
        add.node_key,
        add.tls_cert_hash,
        add.x25519_key,
        add.address.clone(),
        serial,
        FAR_MS,
    );
    assert_eq!(
        try_op(&mut s, anyone(), OpKind::Add(fresh.clone())),
        Ok(Outcome::Queued { changes: 1 })
    );
    end_epoch(&c, &mut s, 11);
    end_epoch(&c, &mut s, 12);
    evict(&c, &mut s, target, 13);
    assert!(s.rejoin_right(&target).is_some());
    rejoin(&c, &mut s, target, &fresh, 14);
    evict(&c, &mut s, target, 20);
    assert_eq!(
        try_op(&mut s, target, OpKind::Add(fresh.clone())),
        Err(OpError::Replay(fresh.serial))
    );
}

#[test]
fn the_rejoin_mark_in_a_snapshot_is_bounded_and_checked() {
    let c = cluster(8);
    let mut s = c.state();
    let target = c.non_ms_member(0);
    evict(&c, &mut s, target, 1);
    rejoin(&c, &mut s, target, &genesis_add(&c, target), 2);
    assert!(s.rejoined(&target));
    let bytes = s.encode();
    // No right is left, so the section reads: u32 0 rights, u32 1 rejoined member, its id.
    let mut section = vec![0, 0, 0, 0, 0, 0, 0, 1];
    section.extend_from_slice(&target.0);
    let at = bytes
        .windows(section.len())
        .position(|w| w == section.as_slice())
        .expect("the rejoined section");
    // A node that is no member.
    let mut f = bytes.clone();
    f[at + 8..at + 40].copy_from_slice(&[0xEE; 32]);
    assert_eq!(
        MembershipState::decode(&f).err(),
        Some(dbqs_ms::membership::SnapshotError::Invalid(
            "a node admitted by a rejoin is not a member"
        ))
    );
    // A count beyond the bound is an error, not an allocation.
    let mut f = bytes.clone();
    f[at + 4..at + 8].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(MembershipState::decode(&f).is_err());
}
