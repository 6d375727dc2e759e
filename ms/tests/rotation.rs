//! MS rotation in the membership state machine (PROTOCOL.md, "MS rotation and resharing";
//! docs/resharing.md), driven by `dbqs_ms::membership::testkit::World`: one
//! `MembershipState` stands for the replicated state, and old and new members act on it
//! with their real shares and x25519 keys, some of them Byzantine. Every run is seeded.

use blsttc::SecretKeyShare;
use dbqs_common::identity::NodeId;
use dbqs_common::threshold::combine;
use dbqs_ms::membership::resharing::{accuse, combine_share, deal, open_sub_share};
use dbqs_ms::membership::testkit::{Fault, World};
use dbqs_ms::membership::{
    MembershipState, Op, OpError, OpKind, Outcome, Output, handover_signing_bytes,
};

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

/// New member `k` computes its share from the current S and submits its handover share.
fn give_handover_share(w: &mut World, k: usize) -> Outcome {
    let rot = w.rotation().unwrap();
    let rs = w.state.rotation().unwrap();
    let (set, key_set) = rs.chosen().expect("S is chosen");
    let m = rot.new_members()[k].id;
    let x = w.node(&m).x_secret;
    let subs: Vec<_> = set
        .iter()
        .map(|i| {
            let d = rs.dealing_of(*i).unwrap();
            (*i, open_sub_share(&rot, d, k, &x).unwrap())
        })
        .collect();
    let share = combine_share(&rot, &subs).unwrap();
    let sig = share.sign(handover_signing_bytes(rot.epoch(), key_set));
    w.outcome(
        m,
        OpKind::HandoverShare {
            share: sig.to_bytes(),
        },
    )
}

#[test]
fn a_handover_that_does_not_come_makes_the_old_ms_choose_s_again() {
    let mut w = World::new(8, 12, 2);
    while w.state.rotation().is_none() {
        w.end_epoch();
    }
    w.certify();
    let rot = w.rotation().unwrap();
    let old = rot.old_members().to_vec();
    let new: Vec<NodeId> = rot.new_members().iter().map(|m| m.id).collect();
    // Old member 0 seals garbage to new member 2, whose accusation is held up (a slow
    // link); new member 3 is Byzantine: it acknowledges every dealing, so dealing 0
    // qualifies with 2f'+1 = 3 acks, then withholds its handover share. S = {0, 1} gives
    // only members 0 and 1 a share: 2 handover shares of the 3 needed, and no accusation
    // is ordered that would drop S.
    w.faults.insert(old[0], Fault::BadSubShareFor(2));
    w.deal_all();
    let dealings = w.state.rotation().unwrap().dealings().to_vec();
    for d in &dealings {
        for (k, m) in new.iter().enumerate() {
            if k == 2 && d.dealer_index == 0 {
                assert!(open_sub_share(&rot, d, k, &w.node(m).x_secret).is_err());
                continue;
            }
            let out = w.outcome(
                *m,
                OpKind::AckDealing {
                    dealer_index: d.dealer_index,
                    digest: d.digest(),
                },
            );
            assert!(!matches!(out, Outcome::Rejected { .. }), "{out:?}");
        }
    }
    assert_eq!(w.state.rotation().unwrap().chosen().unwrap().0, &[0, 1]);
    for k in 0..2 {
        let out = give_handover_share(&mut w, k);
        assert!(matches!(out, Outcome::Recorded { votes, needed: 3 } if votes == k as u32 + 1));
    }
    assert!(w.state.retired().is_none(), "stuck: 2 handover shares of 3");

    let code = |o: &Outcome| match o {
        Outcome::Rejected { code, .. } => Some(*code),
        _ => None,
    };
    // Refused: a new member or an outsider, a stale or future attempt, a repeat.
    let re = rot.epoch();
    let retry = |attempt| OpKind::RetryHandover {
        rotation: re,
        attempt,
    };
    let out = w.outcome(new[3], retry(0));
    if !old.contains(&new[3]) {
        assert_eq!(code(&out), Some(OpError::NotRotationParty(new[3]).code()));
    }
    let out = w.outcome(NodeId([0xEE; 32]), retry(0));
    assert_eq!(code(&out), Some(OpError::NotRotationParty(new[3]).code()));
    let out = w.outcome(old[0], retry(7));
    let stale = OpError::StaleRetry {
        rotation: re,
        attempt: 7,
        current_rotation: re,
        current: 0,
    };
    assert_eq!(code(&out), Some(stale.code()), "{out:?}");
    // Attempt 0 of another rotation (an abandoned one counts from 0 too) is refused.
    let other = OpKind::RetryHandover {
        rotation: re - 1,
        attempt: 0,
    };
    let out = w.outcome(old[0], other);
    assert_eq!(code(&out), Some(stale.code()), "{out:?}");
    // f_ms = 1 old member (here the Byzantine dealer) cannot drop S alone.
    let out = w.outcome(old[0], retry(0));
    assert_eq!(
        out,
        Outcome::Recorded {
            votes: 1,
            needed: 2
        }
    );
    let out = w.outcome(old[0], retry(0));
    assert_eq!(code(&out), Some(OpError::DuplicateProposal(old[0]).code()));
    let rs = w.state.rotation().unwrap();
    assert_eq!((rs.chosen().unwrap().0, rs.attempt()), (&[0, 1][..], 0));
    assert_eq!(rs.handover_count(), 2);
    // The vote survives a restart from the snapshot.
    let snap = w.state.encode();
    let restored = MembershipState::decode(&snap).unwrap();
    assert_eq!(restored.encode(), snap);
    w.state = restored;

    // A correct old member's timer runs out too: f_ms+1 proposals, S is chosen again from
    // the dealings that were not in the dropped set.
    let out = w.outcome(old[1], retry(0));
    assert_eq!(
        out,
        Outcome::Recorded {
            votes: 2,
            needed: 2
        }
    );
    let rs = w.state.rotation().unwrap();
    assert_eq!(rs.chosen().unwrap().0, &[2, 3], "a new S");
    assert_eq!((rs.attempt(), rs.handover_count()), (1, 0));
    // A proposal about the dropped S no longer counts.
    let out = w.outcome(old[2], retry(0));
    assert!(code(&out).is_some(), "{out:?}");

    // Members 0, 1 and 2 can all compute shares from S = {2, 3}: Handover executes.
    w.faults.insert(new[3], Fault::Silent);
    let shares = w.hand_over();
    assert_eq!(shares.len(), 3);
    assert!(w.state.retired().is_some(), "Handover executed");
    w.take_over(shares);
    w.faults.clear();
    w.certify();
    w.check_freshness();
    for c in &w.certs {
        c.verify(&w.ms_key).unwrap();
    }
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
