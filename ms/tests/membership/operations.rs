//! Every operation of the state machine and the rules that guard it.

use dbqs_common::codec::sha256;
use dbqs_common::config::Params;
use dbqs_common::identity::{KeyPair, NodeId};
use dbqs_common::quorum::ms_f_for;
use dbqs_ms::membership::{
    Change, LeaveReason, MAX_PENDING, MsChangeReason, Op, OpError, OpKind, Outcome, Output,
    RenewCert, RevokeClientCert, RotateAuthorityCert,
};

use crate::support::*;

#[test]
fn add_is_queued_then_admitted_without_ring_position_in_the_next_epoch() {
    let mut c = cluster(8);
    let mut s = c.state();
    let (k, add) = c.add_cert(100, FAR_MS);
    let r = apply(&mut s, anyone(), OpKind::Add(add)).0;
    assert_eq!(r.outcome, Outcome::Queued { changes: 1 });
    assert!(
        member(&s, &k.node_id()).is_none(),
        "not before the epoch ends"
    );
    let genesis_hash = s.config_hash();
    end_epoch(&c, &mut s, 1);
    let m = member(&s, &k.node_id()).expect("member in epoch 2");
    assert_eq!(
        m.ring_position, None,
        "admitted in epoch 2, positioned from 3"
    );
    assert_eq!(s.configuration().prev_hash, genesis_hash);
    assert_eq!(s.configuration().members.len(), 9);
    assert!(s.pending().is_empty());
}

#[test]
fn ring_positions_of_admitted_members_are_salted_with_the_admitting_epochs_signature() {
    let mut c = cluster(8);
    let mut s = c.state();
    let (k, add) = c.add_cert(100, FAR_MS);
    apply(&mut s, anyone(), OpKind::Add(add));
    end_epoch(&c, &mut s, 1);
    // ConfigCert 2 is signed after epoch 2 began; its signature salts the position.
    let sig2 = c.sign_config(2, &s.config_hash());
    apply(&mut s, anyone(), OpKind::CertifiedEpoch { signature: sig2 });
    end_epoch(&c, &mut s, 2);
    let r_2 = sha256(&[&sig2]);
    let m = member(&s, &k.node_id()).unwrap();
    assert_eq!(m.ring_position, Some(sha256(&[&k.public().0, &r_2])));
    assert_eq!(s.configuration().ring_salt, r_2);
    // Genesis members keep their positions.
    let g = member(&s, &c.nodes[0].node_id()).unwrap();
    assert_eq!(
        g.ring_position,
        Some(sha256(&[&c.nodes[0].public().0, &[7u8; 32]]))
    );
}

#[test]
fn an_epoch_does_not_end_before_its_config_cert_signature_is_known() {
    let c = cluster(8);
    let mut s = c.state();
    end_epoch(&c, &mut s, 1);
    assert!(
        s.signing_request().is_some(),
        "epoch 2 is not certified yet"
    );
    for k in c.ms.iter().take(c.f_ms() + 1) {
        let r = apply(&mut s, k.node_id(), OpKind::EndEpoch { now_ms: 2 }).0;
        assert!(matches!(r.outcome, Outcome::Recorded { .. }), "{r:?}");
    }
    assert_eq!(s.epoch(), 2);
    let r = certify(&c, &mut s);
    assert_eq!(r.outcome, Outcome::EpochEnded);
    assert_eq!(r.epoch, 3);
}

#[test]
fn a_config_signature_that_does_not_verify_is_refused() {
    let c = cluster(8);
    let mut s = c.state();
    end_epoch(&c, &mut s, 1);
    let wrong = c.sign_config(2, &[0; 32]);
    let e = try_op(
        &mut s,
        anyone(),
        OpKind::CertifiedEpoch { signature: wrong },
    );
    assert_eq!(e, Err(OpError::BadConfigSignature(2)));
    assert!(s.signing_request().is_some());
    certify(&c, &mut s);
    let again = c.sign_config(2, &s.config_hash());
    let e = try_op(
        &mut s,
        anyone(),
        OpKind::CertifiedEpoch { signature: again },
    );
    assert_eq!(e, Err(OpError::AlreadyCertified(2)));
}

#[test]
fn remove_takes_the_member_out_at_the_next_epoch() {
    let mut c = cluster(8);
    let mut s = c.state();
    let victim = c.non_ms_member(0);
    let rc = c.remove_cert(victim);
    let r = apply(&mut s, anyone(), OpKind::Remove(rc)).0;
    assert_eq!(r.outcome, Outcome::Queued { changes: 1 });
    assert!(member(&s, &victim).is_some());
    end_epoch(&c, &mut s, 1);
    assert!(member(&s, &victim).is_none());
    assert_eq!(s.not_after_ms(&victim), None);
}

#[test]
fn removal_of_an_unknown_node_is_rejected() {
    let mut c = cluster(8);
    let mut s = c.state();
    let rc = c.remove_cert(NodeId([3; 32]));
    let e = try_op(&mut s, anyone(), OpKind::Remove(rc));
    assert_eq!(e, Err(OpError::NotAMember(NodeId([3; 32]))));
}

#[test]
fn a_replayed_serial_is_rejected_whatever_the_certificate_kind() {
    let mut c = cluster(8);
    let mut s = c.state();
    let (_, add) = c.add_cert(100, FAR_MS);
    apply(&mut s, anyone(), OpKind::Add(add.clone()));
    end_epoch(&c, &mut s, 1);
    // The same certificate again (now for epoch 2): its serial is spent.
    assert_eq!(
        try_op(&mut s, anyone(), OpKind::Add(add.clone())),
        Err(OpError::Replay(add.serial))
    );
    // A different kind of certificate reusing the serial.
    let rc = dbqs_common::certs::RemoveCert::issue(&c.authority, c.non_ms_member(0), add.serial);
    assert_eq!(
        try_op(&mut s, anyone(), OpKind::Remove(rc)),
        Err(OpError::Replay(add.serial))
    );
    // Genesis AddCert serials are spent too.
    let rc = dbqs_common::certs::RemoveCert::issue(&c.authority, c.non_ms_member(0), 1);
    assert_eq!(
        try_op(&mut s, anyone(), OpKind::Remove(rc)),
        Err(OpError::Replay(1))
    );
}

#[test]
fn a_certificate_not_signed_by_the_current_authority_is_rejected() {
    let mut c = cluster(8);
    let mut s = c.state();
    let rogue = KeyPair::from_seed([0x66; 32]);
    let target = c.non_ms_member(0);
    let k = node_key(100);
    let kinds = vec![
        OpKind::Add(dbqs_common::certs::AddCert::issue(
            &rogue,
            k.public(),
            [9; 32],
            [9; 32],
            "10.9.9.9:1".into(),
            c.serial(),
            FAR_MS,
        )),
        OpKind::Remove(dbqs_common::certs::RemoveCert::issue(
            &rogue,
            target,
            c.serial(),
        )),
        OpKind::Renew(RenewCert::issue(&rogue, target, FAR_MS, c.serial())),
        OpKind::RevokeClient(RevokeClientCert::issue(
            &rogue,
            k.public(),
            [1; 32],
            c.serial(),
        )),
        OpKind::RotateAuthority(RotateAuthorityCert::issue(&rogue, &k, c.serial())),
    ];
    for kind in kinds {
        let e = try_op(&mut s, anyone(), kind.clone());
        assert!(matches!(e, Err(OpError::Certificate(_))), "{kind:?}: {e:?}");
    }
    assert!(s.pending().is_empty());
    let code = OpError::Certificate(dbqs_common::certs::CertError::Signature(
        dbqs_common::identity::SignatureError::Invalid,
    ))
    .code();
    let r = apply(
        &mut s,
        anyone(),
        OpKind::Remove(dbqs_common::certs::RemoveCert::issue(&rogue, target, 999)),
    )
    .0;
    assert!(is_rejected(&r, code));
    assert_eq!(
        s.rejections(code),
        1,
        "apply counts refusals; try_apply does not"
    );
}

#[test]
fn an_operation_for_an_older_epoch_is_ignored_and_counted() {
    let mut c = cluster(8);
    let mut s = c.state();
    end_epoch(&c, &mut s, 1);
    let rc = c.remove_cert(c.non_ms_member(0));
    let (r, out) = s.apply(anyone(), &Op::new(1, OpKind::Remove(rc.clone())));
    let code = OpError::StaleEpoch {
        op_epoch: 1,
        current: 2,
    }
    .code();
    assert!(is_rejected(&r, code), "{r:?}");
    assert!(out.is_empty() && s.pending().is_empty());
    assert_eq!(s.rejections(code), 1);
    let e = s.try_apply(anyone(), &Op::new(3, OpKind::Remove(rc)), &mut Vec::new());
    assert_eq!(
        e,
        Err(OpError::FutureEpoch {
            op_epoch: 3,
            current: 2
        })
    );
}

#[test]
fn an_expired_member_leaves_at_the_next_epoch_unless_renewed_first() {
    let mut c = Cluster::new(8, Params::default(), FAR_MS);
    let mut s = c.state();
    let (k1, a1) = c.add_cert(100, 5_000);
    let (k2, a2) = c.add_cert(101, 5_000);
    apply(&mut s, anyone(), OpKind::Add(a1));
    apply(&mut s, anyone(), OpKind::Add(a2));
    end_epoch(&c, &mut s, 1_000);
    assert!(member(&s, &k1.node_id()).is_some() && member(&s, &k2.node_id()).is_some());
    // k2 is renewed before anyone's clock passes 5 000 ms.
    let serial = c.serial();
    let renew = RenewCert::issue(&c.authority, k2.node_id(), 50_000, serial);
    apply(&mut s, anyone(), OpKind::Renew(renew));
    end_epoch(&c, &mut s, 6_000);
    assert_eq!(s.agreed_time_ms(), 6_000);
    assert!(member(&s, &k1.node_id()).is_none(), "expired, not renewed");
    assert!(member(&s, &k2.node_id()).is_some(), "renewed in time");
    assert_eq!(s.not_after_ms(&k2.node_id()), Some(50_000));
    // A certificate that has already expired cannot admit or renew anyone.
    let (_, late) = c.add_cert(102, 5_999);
    assert!(matches!(
        try_op(&mut s, anyone(), OpKind::Add(late)),
        Err(OpError::Certificate(
            dbqs_common::certs::CertError::Expired { .. }
        ))
    ));
}

#[test]
fn faulty_replicas_cannot_push_the_agreed_time_into_the_future() {
    let c = cluster(8); // 4 MS replicas, f_ms = 1
    let mut s = c.state();
    // The faulty replica claims year 3000; one correct replica reports 1 000 ms.
    apply(
        &mut s,
        c.ms[0].node_id(),
        OpKind::EndEpoch {
            now_ms: u64::MAX / 2,
        },
    );
    assert_eq!(s.agreed_time_ms(), 0, "one report says nothing");
    certify(&c, &mut s);
    apply(
        &mut s,
        c.ms[1].node_id(),
        OpKind::EndEpoch { now_ms: 1_000 },
    );
    assert_eq!(s.agreed_time_ms(), 1_000);
    // Every genesis member (valid until FAR_MS) is still there.
    assert_eq!(s.configuration().members.len(), 8);
}

#[test]
fn eviction_needs_2f_ms_plus_1_distinct_ms_proposers() {
    for n in [8usize, 64] {
        let c = cluster(n);
        let mut s = c.state();
        let f = c.f_ms();
        assert_eq!(c.ms.len(), 3 * f + 1, "n = {n}");
        let target = c.non_ms_member(0);
        // f_ms faulty proposers plus one correct one: not enough.
        for k in c.ms.iter().take(f + 1) {
            let r = apply(&mut s, k.node_id(), OpKind::Evict(target)).0;
            assert!(
                matches!(r.outcome, Outcome::Recorded { .. }),
                "n={n}: {r:?}"
            );
        }
        // A repeated proposal and a non-MS proposer add nothing.
        assert_eq!(
            try_op(&mut s, c.ms[0].node_id(), OpKind::Evict(target)),
            Err(OpError::DuplicateProposal(c.ms[0].node_id()))
        );
        let outsider = c.non_ms_member(1);
        assert_eq!(
            try_op(&mut s, outsider, OpKind::Evict(target)),
            Err(OpError::NotMsMember(outsider))
        );
        assert_eq!(s.evict_votes(&target), f + 1);
        assert!(
            s.pending().is_empty(),
            "n={n}: evicted with only f_ms+1 votes"
        );
        end_epoch(&c, &mut s, 1);
        assert!(member(&s, &target).is_some(), "n={n}: healthy node evicted");
        assert_eq!(s.evict_votes(&target), 0, "votes reset each epoch");
        // 2f_ms+1 distinct proposers in one epoch evict.
        for k in c.ms.iter().take(2 * f + 1) {
            apply(&mut s, k.node_id(), OpKind::Evict(target));
        }
        assert_eq!(s.pending(), &[Change::Evict(target)]);
        end_epoch(&c, &mut s, 2);
        assert!(member(&s, &target).is_none(), "n={n}: not evicted");
    }
}

#[test]
fn end_epoch_needs_f_ms_plus_1_distinct_ms_proposers() {
    let c = cluster(64); // 7 MS replicas, f_ms = 2
    let mut s = c.state();
    assert_eq!(c.f_ms(), 2);
    for k in c.ms.iter().take(2) {
        apply(&mut s, k.node_id(), OpKind::EndEpoch { now_ms: 1 });
    }
    assert_eq!(
        try_op(&mut s, c.ms[1].node_id(), OpKind::EndEpoch { now_ms: 1 }),
        Err(OpError::DuplicateProposal(c.ms[1].node_id()))
    );
    let outsider = c.non_ms_member(0);
    assert_eq!(
        try_op(&mut s, outsider, OpKind::EndEpoch { now_ms: 1 }),
        Err(OpError::NotMsMember(outsider))
    );
    assert_eq!(s.epoch(), 1, "f_ms proposals cannot end an epoch");
    let r = apply(&mut s, c.ms[2].node_id(), OpKind::EndEpoch { now_ms: 1 }).0;
    assert_eq!(r.outcome, Outcome::EpochEnded);
    assert_eq!(s.epoch(), 2);
}

#[test]
fn the_epoch_ends_deterministically_when_max_changes_are_queued() {
    let params = Params {
        max_changes_per_epoch: 3,
        ..Params::default()
    };
    let mut c = Cluster::new(8, params, FAR_MS);
    let mut s = c.state();
    for i in 0..2 {
        let (_, a) = c.add_cert(100 + i, FAR_MS);
        let r = apply(&mut s, anyone(), OpKind::Add(a)).0;
        assert_eq!(
            r.outcome,
            Outcome::Queued {
                changes: i as u32 + 1
            }
        );
    }
    // A renewal changes no configuration field and does not count.
    let serial = c.serial();
    let renew = RenewCert::issue(&c.authority, c.nodes[0].node_id(), FAR_MS, serial);
    assert_eq!(
        apply(&mut s, anyone(), OpKind::Renew(renew)).0.outcome,
        Outcome::Queued { changes: 2 }
    );
    let (_, a) = c.add_cert(102, FAR_MS);
    let (r, out) = apply(&mut s, anyone(), OpKind::Add(a));
    assert_eq!(r.outcome, Outcome::EpochEnded);
    assert_eq!(r.epoch, 2);
    assert_eq!(s.configuration().members.len(), 11);
    assert!(matches!(out[0], Output::EpochEnded { epoch: 2, .. }));
    assert!(matches!(&out[1], Output::SignConfig(req) if req.epoch == 2));
    // While epoch 2 waits for its certificate, a full queue refuses further changes.
    for i in 0..3 {
        let (_, a) = c.add_cert(200 + i, FAR_MS);
        apply(&mut s, anyone(), OpKind::Add(a));
    }
    assert_eq!(s.epoch(), 2, "uncertified epoch 2 cannot end yet");
    let (_, a) = c.add_cert(210, FAR_MS);
    assert_eq!(
        try_op(&mut s, anyone(), OpKind::Add(a)),
        Err(OpError::ChangeLimit { max: 3 })
    );
    assert_eq!(certify(&c, &mut s).outcome, Outcome::EpochEnded);
    assert_eq!(s.epoch(), 3);
}

#[test]
fn authority_rotation_takes_effect_in_the_next_configuration() {
    let mut c = cluster(8);
    let mut s = c.state();
    let old = c.authority.clone();
    let new = KeyPair::from_seed([0x77; 32]);
    let serial = c.serial();
    let rot = RotateAuthorityCert::issue(&old, &new, serial);
    apply(&mut s, anyone(), OpKind::RotateAuthority(rot));
    let serial = c.serial();
    let second = RotateAuthorityCert::issue(&old, &KeyPair::from_seed([0x78; 32]), serial);
    assert_eq!(
        try_op(&mut s, anyone(), OpKind::RotateAuthority(second)),
        Err(OpError::RotationQueued)
    );
    // Until the epoch ends the old key is the authority.
    let target = c.non_ms_member(0);
    let by_new = dbqs_common::certs::RemoveCert::issue(&new, target, c.serial());
    assert!(matches!(
        try_op(&mut s, anyone(), OpKind::Remove(by_new.clone())),
        Err(OpError::Certificate(_))
    ));
    end_epoch(&c, &mut s, 1);
    assert_eq!(s.configuration().authority, new.public());
    let by_old = dbqs_common::certs::RemoveCert::issue(&old, target, c.serial());
    assert!(matches!(
        try_op(&mut s, anyone(), OpKind::Remove(by_old)),
        Err(OpError::Certificate(_))
    ));
    assert!(try_op(&mut s, anyone(), OpKind::Remove(by_new)).is_ok());
}

#[test]
fn a_revoked_client_certificate_is_listed_from_the_next_configuration() {
    let mut c = cluster(8);
    let mut s = c.state();
    let client = KeyPair::from_seed([0x55; 32]);
    for h in [[9u8; 32], [2u8; 32]] {
        let serial = c.serial();
        let rv = RevokeClientCert::issue(&c.authority, client.public(), h, serial);
        apply(&mut s, anyone(), OpKind::RevokeClient(rv));
    }
    let serial = c.serial();
    let dup = RevokeClientCert::issue(&c.authority, client.public(), [9; 32], serial);
    assert_eq!(
        try_op(&mut s, anyone(), OpKind::RevokeClient(dup.clone())),
        Err(OpError::AlreadyRevoked)
    );
    assert!(s.configuration().revoked_clients.is_empty());
    end_epoch(&c, &mut s, 1);
    assert_eq!(s.configuration().revoked_clients, vec![[2; 32], [9; 32]]);
    let mut dup2 = dup;
    dup2.serial = c.serial();
    let dup2 = RevokeClientCert::issue(&c.authority, client.public(), [9; 32], dup2.serial);
    assert_eq!(
        try_op(&mut s, anyone(), OpKind::RevokeClient(dup2)),
        Err(OpError::AlreadyRevoked)
    );
}

#[test]
fn a_removed_ms_member_stays_until_rotation_and_flags_it() {
    let mut c = cluster(8);
    let mut s = c.state();
    let ms_node = c.ms[2].node_id();
    let rc = c.remove_cert(ms_node);
    apply(&mut s, anyone(), OpKind::Remove(rc));
    let out = end_epoch(&c, &mut s, 1);
    let expected = MsChangeReason::MemberLeaving {
        node: ms_node,
        reason: LeaveReason::Removed,
    };
    assert!(
        member(&s, &ms_node).is_some(),
        "share positions must not shift"
    );
    assert_eq!(s.configuration().ms_members.len(), 4);
    assert_eq!(s.ms_change(), std::slice::from_ref(&expected));
    assert!(out.iter().any(
        |o| matches!(o, Output::EpochEnded { ms_change, .. } if ms_change.contains(&expected))
    ));
    let rc = c.remove_cert(ms_node);
    assert_eq!(
        try_op(&mut s, anyone(), OpKind::Remove(rc)),
        Err(OpError::AlreadyLeaving(ms_node))
    );
    end_epoch(&c, &mut s, 2);
    assert_eq!(
        s.ms_change(),
        &[expected],
        "flagged every epoch until [E] rotates"
    );
}

#[test]
fn the_ms_size_rule_flags_a_rotation_when_the_system_grows() {
    let params = Params {
        f: 0,
        ..Params::default()
    };
    let mut c = Cluster::new(1, params.clone(), FAR_MS);
    assert_eq!(c.ms.len(), 1, "a one-node f=0 baseline has a one-member MS");
    let mut s = c.state();
    for i in 0..3 {
        let (_, a) = c.add_cert(100 + i, FAR_MS);
        apply(&mut s, anyone(), OpKind::Add(a));
    }
    end_epoch(&c, &mut s, 1);
    assert_eq!(s.configuration().members.len(), 4);
    assert_eq!(ms_f_for(4, params.ms_f_max), 1);
    assert_eq!(
        s.ms_change(),
        &[MsChangeReason::SizeRule {
            current_f_ms: 0,
            wanted_f_ms: 1
        }]
    );
    assert_eq!(
        s.configuration().ms_members.len(),
        1,
        "resharing is issue [E]"
    );
}

#[test]
fn removals_never_shrink_the_system_below_one_storage_group() {
    let params = Params {
        f: 2,
        ..Params::default()
    };
    let mut c = Cluster::new(8, params, FAR_MS); // groups of 7
    let mut s = c.state();
    let rc = c.remove_cert(c.non_ms_member(0));
    assert!(try_op(&mut s, anyone(), OpKind::Remove(rc)).is_ok());
    let rc = c.remove_cert(c.non_ms_member(1));
    assert_eq!(
        try_op(&mut s, anyone(), OpKind::Remove(rc)),
        Err(OpError::BelowMinimumSize { min: 7 })
    );
    // Eviction obeys the same floor.
    let target = c.non_ms_member(2);
    for k in c.ms.iter().take(2) {
        apply(&mut s, k.node_id(), OpKind::Evict(target));
    }
    assert_eq!(
        try_op(&mut s, c.ms[2].node_id(), OpKind::Evict(target)),
        Err(OpError::BelowMinimumSize { min: 7 })
    );
    end_epoch(&c, &mut s, 1);
    assert_eq!(s.configuration().members.len(), 7);
}

/// Issue [I] 7: a member admitted in epoch e+1 gets its ring position only in e+2, so
/// it does not count towards the 3f+1 positioned members epoch e+1 needs. With f = 2 and
/// 7 members, an add queued first must not let a removal through: epoch e+1 would place
/// 6 members on the ring, fewer than one group.
#[test]
fn a_pending_add_does_not_count_towards_the_minimum_size_of_the_next_ring() {
    let params = Params {
        f: 2,
        ..Params::default()
    };
    let mut c = Cluster::new(7, params, FAR_MS); // groups of 7
    let mut s = c.state();
    let (_, add) = c.add_cert(100, FAR_MS);
    assert!(try_op(&mut s, anyone(), OpKind::Add(add)).is_ok());
    let rc = c.remove_cert(c.non_ms_member(0));
    assert_eq!(
        try_op(&mut s, anyone(), OpKind::Remove(rc)),
        Err(OpError::BelowMinimumSize { min: 7 })
    );
    end_epoch(&c, &mut s, 1);
    let positioned = s
        .configuration()
        .members
        .iter()
        .filter(|m| m.ring_position.is_some())
        .count();
    assert!(positioned >= 7, "only {positioned} members on the ring");
}

#[test]
fn pending_certificates_are_capped_by_max_pending_with_a_clear_rejection() {
    let mut c = cluster(8);
    let mut s = c.state();
    let node = c.nodes[0].node_id();
    for _ in 0..MAX_PENDING {
        let serial = c.serial();
        let renew = RenewCert::issue(&c.authority, node, FAR_MS, serial);
        assert!(try_op(&mut s, anyone(), OpKind::Renew(renew)).is_ok());
    }
    let serial = c.serial();
    let renew = RenewCert::issue(&c.authority, node, FAR_MS, serial);
    let r = apply(&mut s, anyone(), OpKind::Renew(renew)).0;
    let e = OpError::PendingFull { max: MAX_PENDING };
    assert_eq!(
        r.outcome,
        Outcome::Rejected {
            code: e.code(),
            reason: e.to_string()
        }
    );
    assert_eq!(s.pending().len(), MAX_PENDING);
}

#[test]
fn an_expired_ms_member_is_kept_and_flagged_until_renewed() {
    let mut c = Cluster::new(8, Params::default(), 5_000);
    let mut s = c.state();
    let ms0 = c.ms[0].node_id();
    // Every genesis certificate passes 5 000 ms; MS members 1..3 are renewed in time, MS
    // member 0 and the four non-MS members are not.
    let renewed: Vec<NodeId> = c.ms.iter().skip(1).map(KeyPair::node_id).collect();
    for id in renewed {
        let serial = c.serial();
        let renew = RenewCert::issue(&c.authority, id, FAR_MS, serial);
        apply(&mut s, anyone(), OpKind::Renew(renew));
    }
    end_epoch(&c, &mut s, 6_000);
    assert!(
        member(&s, &ms0).is_some(),
        "an MS member never leaves before rotation"
    );
    assert_eq!(
        s.ms_change()[0],
        MsChangeReason::MemberLeaving {
            node: ms0,
            reason: LeaveReason::Expired
        }
    );
    let non_ms_left = (0..4)
        .filter(|i| member(&s, &c.non_ms_member(*i)).is_some())
        .count();
    assert_eq!(non_ms_left, 0, "expired non-MS members left");
    assert_eq!(s.configuration().members.len(), 4);
    let serial = c.serial();
    let renew = RenewCert::issue(&c.authority, ms0, FAR_MS, serial);
    apply(&mut s, anyone(), OpKind::Renew(renew));
    end_epoch(&c, &mut s, 7_000);
    assert!(
        s.deferred_leaves().is_empty(),
        "renewal cancels the deferred expiry"
    );
    assert!(
        !s.ms_change()
            .iter()
            .any(|r| matches!(r, MsChangeReason::MemberLeaving { .. }))
    );
}
