//! MS key resharing, the cryptographic core (PROTOCOL.md, "MS rotation and resharing",
//! steps 1–4; docs/resharing.md). Every test is seeded, so a failure replays exactly.

use std::time::Instant;

use blsttc::rand::rngs::StdRng;
use blsttc::rand::{RngCore, SeedableRng};
use blsttc::{Fr, PublicKeySet, SecretKeySet, SecretKeyShare, SignatureShare};
use dbqs_common::identity::NodeId;
use dbqs_common::threshold::{MsPublicKey, combine};
use dbqs_ms::membership::resharing::{
    ACCUSATION_BYTES, Accusation, AccusationRejected, Dealing, NewMember, ReshareError, Rotation,
    SubShareFault, accuse, check_accusation, combine_key_set, combine_share, deal, ms_size_for,
    next_ms, open_sub_share, r_e_of, threshold_for, verify_dealing,
};

/// A node that can be drawn into the MS: its id and x25519 key pair.
#[derive(Clone)]
struct Node {
    id: NodeId,
    x_secret: [u8; 32],
    x_public: [u8; 32],
}

fn node(rng: &mut StdRng) -> Node {
    let mut id = [0u8; 32];
    let mut x_secret = [0u8; 32];
    rng.fill_bytes(&mut id);
    rng.fill_bytes(&mut x_secret);
    let x_public =
        x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(x_secret)).to_bytes();
    Node {
        id: NodeId(id),
        x_secret,
        x_public,
    }
}

/// One MS term: its key set and, by list position, its members and their shares.
struct Ms {
    pks: PublicKeySet,
    members: Vec<Node>,
    shares: Vec<SecretKeyShare>,
}

fn genesis(rng: &mut StdRng, members: Vec<Node>) -> Ms {
    let sks = SecretKeySet::random(threshold_for(members.len()) - 1, rng);
    let shares = (0..members.len())
        .map(|i| sks.secret_key_share(i))
        .collect();
    Ms {
        pks: sks.public_keys(),
        members,
        shares,
    }
}

fn rotation(old: &Ms, epoch: u64, new: &[Node]) -> Rotation {
    Rotation::new(
        epoch,
        old.pks.clone(),
        old.members.iter().map(|n| n.id).collect(),
        new.iter()
            .map(|n| NewMember {
                id: n.id,
                x25519_key: n.x_public,
            })
            .collect(),
    )
    .unwrap()
}

/// A full honest reshare: every old member deals, everyone verifies every dealing, S = the
/// first t dealings, each new member opens its sub-shares from S and combines, and the new
/// key set follows from the commitments. Checks each new share against the new key set.
fn reshare(rng: &mut StdRng, old: &Ms, epoch: u64, new: Vec<Node>) -> Ms {
    let rot = rotation(old, epoch, &new);
    let dealings: Vec<Dealing> = (0..old.members.len())
        .map(|i| deal(&rot, i, &old.shares[i], rng).unwrap())
        .collect();
    for d in &dealings {
        verify_dealing(&rot, d).unwrap_or_else(|e| panic!("epoch {epoch}: dealing rejected: {e}"));
    }
    let set: Vec<&Dealing> = dealings.iter().take(rot.old_threshold()).collect();
    let pks = combine_key_set(&rot, &set).unwrap();
    assert_eq!(pks.public_key(), old.pks.public_key(), "epoch {epoch}");
    assert_eq!(pks.threshold() + 1, rot.new_threshold(), "epoch {epoch}");
    let mut shares = Vec::new();
    for (j, n) in new.iter().enumerate() {
        let subs: Vec<(u32, Fr)> = set
            .iter()
            .map(|d| {
                (
                    d.dealer_index,
                    open_sub_share(&rot, d, j, &n.x_secret).unwrap(),
                )
            })
            .collect();
        let share = combine_share(&rot, &subs).unwrap();
        assert_eq!(
            share.public_key_share(),
            pks.public_key_share(j),
            "epoch {epoch}, new member {j}"
        );
        shares.push(share);
    }
    Ms {
        pks,
        members: new,
        shares,
    }
}

fn sign(ms: &Ms, positions: &[usize], msg: &[u8]) -> Vec<(usize, SignatureShare)> {
    positions
        .iter()
        .map(|&i| (i, ms.shares[i].sign(msg)))
        .collect()
}

fn nodes(rng: &mut StdRng, n: usize) -> Vec<Node> {
    (0..n).map(|_| node(rng)).collect()
}

fn timed_reshare(seed: u64, from: usize, to: usize, label: &str) {
    let mut rng = StdRng::seed_from_u64(seed);
    let old_nodes = nodes(&mut rng, from);
    let old = genesis(&mut rng, old_nodes);
    let genesis_key = MsPublicKey(old.pks.public_key());
    let new_nodes = nodes(&mut rng, to);
    let start = Instant::now();
    let new = reshare(&mut rng, &old, 2, new_nodes);
    eprintln!(
        "resharing timing: full {label} reshare (deal, verify all, open, combine) took {:.2} ms",
        start.elapsed().as_secs_f64() * 1e3
    );
    let msg = b"dbqs.v1.test\0after-reshare";
    let t = threshold_for(to);
    let positions: Vec<usize> = (to - t..to).collect();
    let sig = combine(&new.pks, msg, &sign(&new, &positions, msg)).unwrap();
    genesis_key.verify(msg, &sig.to_bytes()).unwrap();
}

#[test]
fn four_to_four_disjoint_keeps_group_key() {
    timed_reshare(1, 4, 4, "4->4");
}

#[test]
fn four_to_seven_growth_keeps_group_key() {
    timed_reshare(2, 4, 7, "4->7");
}

#[test]
fn seven_to_four_shrink_keeps_group_key() {
    timed_reshare(3, 7, 4, "7->4");
}

/// Two members stay (at new positions, so with new evaluation points) and two are new.
#[test]
fn overlapping_members_get_fresh_shares_at_new_positions() {
    let mut rng = StdRng::seed_from_u64(4);
    let old_nodes = nodes(&mut rng, 4);
    let old = genesis(&mut rng, old_nodes.clone());
    let mut new_nodes = nodes(&mut rng, 2);
    new_nodes.insert(0, old_nodes[3].clone());
    new_nodes.push(old_nodes[0].clone());
    let new = reshare(&mut rng, &old, 5, new_nodes);
    // Old member 3 is new member 0: its share changed with the polynomial.
    assert_ne!(new.shares[0].to_bytes(), old.shares[3].to_bytes());
    let msg = b"dbqs.v1.test\0overlap";
    let sig = combine(&new.pks, msg, &sign(&new, &[0, 3], msg)).unwrap();
    MsPublicKey(old.pks.public_key())
        .verify(msg, &sig.to_bytes())
        .unwrap();
}

/// Twenty rotations through MS sizes 1, 4, 7 and 10, with partly overlapping members; t'
/// shares of the last MS sign for the genesis key.
#[test]
fn twenty_rotations_still_sign_for_the_genesis_key() {
    let mut rng = StdRng::seed_from_u64(20);
    let pool = nodes(&mut rng, 16);
    let mut ms = genesis(&mut rng, pool[..4].to_vec());
    let genesis_key = MsPublicKey(ms.pks.public_key());
    let sizes = [
        7, 4, 1, 4, 10, 7, 4, 4, 1, 1, 7, 10, 4, 7, 4, 1, 7, 4, 10, 4,
    ];
    for (round, &size) in sizes.iter().enumerate() {
        let mut r_e = [0u8; 32];
        rng.fill_bytes(&mut r_e);
        let ids: Vec<NodeId> = pool.iter().map(|n| n.id).collect();
        let drawn = next_ms(&ids, &r_e, size);
        let new_nodes: Vec<Node> = drawn
            .iter()
            .map(|id| pool.iter().find(|n| n.id == *id).unwrap().clone())
            .collect();
        ms = reshare(&mut rng, &ms, round as u64 + 2, new_nodes);
        assert_eq!(ms.pks.public_key(), genesis_key.0, "round {round}");
    }
    let msg = b"dbqs.v1.test\0after-twenty";
    let t = threshold_for(ms.members.len());
    let positions: Vec<usize> = (0..t).collect();
    let sig = combine(&ms.pks, msg, &sign(&ms, &positions, msg)).unwrap();
    genesis_key.verify(msg, &sig.to_bytes()).unwrap();
}

/// PROTOCOL.md step 6: shares from before a rotation do not combine with fewer than t'
/// current ones, whichever key set interpolates them.
#[test]
fn old_shares_do_not_complete_new_shares() {
    let mut rng = StdRng::seed_from_u64(6);
    let old_nodes = nodes(&mut rng, 7);
    let old = genesis(&mut rng, old_nodes);
    let key = MsPublicKey(old.pks.public_key());
    let new_nodes = nodes(&mut rng, 7);
    let new = reshare(&mut rng, &old, 3, new_nodes);
    let msg = b"dbqs.v1.test\0mixed";
    // t' = 3: two current shares at positions 0 and 1, plus one old share presented at
    // a position no current share uses, then at each old position.
    let mut tried = 0;
    for old_pos in 0..7 {
        for claimed in [2usize, old_pos] {
            if claimed < 2 {
                continue;
            }
            let mut mixed = sign(&new, &[0, 1], msg);
            mixed.push((claimed, old.shares[old_pos].sign(msg)));
            for pks in [&new.pks, &old.pks] {
                let combined = combine(pks, msg, &mixed);
                assert!(
                    combined.is_err(),
                    "old share {old_pos} as {claimed} combined"
                );
                if let Ok(sig) = pks.combine_signatures(mixed.iter().map(|(i, s)| (*i, s))) {
                    assert!(key.verify(msg, &sig.to_bytes()).is_err());
                }
                tried += 1;
            }
        }
    }
    assert!(tried >= 14);
    // Sanity: the three current shares do combine.
    let sig = combine(&new.pks, msg, &sign(&new, &[0, 1, 2], msg)).unwrap();
    key.verify(msg, &sig.to_bytes()).unwrap();
}

#[test]
fn byzantine_dealer_with_wrong_commitment_is_rejected() {
    let mut rng = StdRng::seed_from_u64(7);
    let old_nodes = nodes(&mut rng, 4);
    let old = genesis(&mut rng, old_nodes);
    let new_nodes = nodes(&mut rng, 4);
    let rot = rotation(&old, 8, &new_nodes);
    // Deals a share it does not hold: the commitment at 0 is not its old key share.
    let fake: SecretKeyShare = SecretKeySet::random(1, &mut rng).secret_key_share(1);
    let d = deal(&rot, 1, &fake, &mut rng).unwrap();
    assert_eq!(
        verify_dealing(&rot, &d),
        Err(ReshareError::CommitmentMismatch)
    );
    // Deals its own share but at another dealer's position.
    let d = deal(&rot, 2, &old.shares[1], &mut rng).unwrap();
    assert_eq!(
        verify_dealing(&rot, &d),
        Err(ReshareError::CommitmentMismatch)
    );
    // A polynomial of the wrong degree (dealt for a 7-member MS).
    let wider = rotation(&old, 8, &nodes(&mut rng, 7));
    let mut d = deal(&wider, 1, &old.shares[1], &mut rng).unwrap();
    d.ciphertexts.truncate(4);
    assert!(matches!(
        verify_dealing(&rot, &d),
        Err(ReshareError::WrongDegree { have: 3, want: 2 })
    ));
    // Copies an honest dealer's ephemeral key and proof: the proof is bound to the dealer.
    let honest = deal(&rot, 0, &old.shares[0], &mut rng).unwrap();
    let mut copy = deal(&rot, 1, &old.shares[1], &mut rng).unwrap();
    copy.ephemeral = honest.ephemeral;
    copy.ephemeral_proof = honest.ephemeral_proof;
    assert_eq!(
        verify_dealing(&rot, &copy),
        Err(ReshareError::BadEphemeralProof)
    );
    // Wrong epoch, and a dealer id that does not match its position.
    let mut d = deal(&rot, 3, &old.shares[3], &mut rng).unwrap();
    verify_dealing(&rot, &d).unwrap();
    d.epoch = 9;
    assert!(matches!(
        verify_dealing(&rot, &d),
        Err(ReshareError::WrongEpoch { .. })
    ));
    d.epoch = 8;
    d.dealer = old.members[0].id;
    assert_eq!(
        verify_dealing(&rot, &d),
        Err(ReshareError::UnknownDealer(3))
    );
    // S must be exactly t distinct dealers.
    assert!(combine_key_set(&rot, &[&honest, &honest]).is_err());
    assert!(combine_key_set(&rot, &[&honest]).is_err());
}

/// A dealer seals garbage to one recipient; the recipient's accusation is upheld by
/// everyone, and the reshare goes on with S drawn from the other dealings.
#[test]
fn bad_sub_share_leads_to_upheld_accusation() {
    let mut rng = StdRng::seed_from_u64(8);
    let old_nodes = nodes(&mut rng, 4);
    let old = genesis(&mut rng, old_nodes);
    let new_nodes = nodes(&mut rng, 4);
    let rot = rotation(&old, 4, &new_nodes);
    let mut bad = deal(&rot, 0, &old.shares[0], &mut rng).unwrap();
    bad.ciphertexts[2][5] ^= 0x40;
    verify_dealing(&rot, &bad).unwrap(); // the public checks cannot see it
    assert_eq!(
        open_sub_share(&rot, &bad, 2, &new_nodes[2].x_secret),
        Err(SubShareFault::Undecryptable)
    );
    let accusation = accuse(&rot, &bad, 2, &new_nodes[2].x_secret, &mut rng).unwrap();
    let wire = accusation.encode();
    assert_eq!(wire.len(), ACCUSATION_BYTES);
    let received = Accusation::decode(&wire).unwrap();
    assert_eq!(
        check_accusation(&rot, &bad, &received),
        Ok(SubShareFault::Undecryptable)
    );

    // S skips the accused dealing: dealers 1 and 2.
    let good: Vec<Dealing> = (1..3)
        .map(|i| deal(&rot, i, &old.shares[i], &mut rng).unwrap())
        .collect();
    let set: Vec<&Dealing> = good.iter().collect();
    let pks = combine_key_set(&rot, &set).unwrap();
    for (j, n) in new_nodes.iter().enumerate() {
        let subs: Vec<(u32, Fr)> = set
            .iter()
            .map(|d| {
                (
                    d.dealer_index,
                    open_sub_share(&rot, d, j, &n.x_secret).unwrap(),
                )
            })
            .collect();
        let share = combine_share(&rot, &subs).unwrap();
        assert_eq!(share.public_key_share(), pks.public_key_share(j));
    }
}

/// Accusations whose proof does not hold are rejected: tampered shared point or proof,
/// moved to another dealing, or claimed by another member.
#[test]
fn false_accusations_are_rejected() {
    let mut rng = StdRng::seed_from_u64(9);
    let old_nodes = nodes(&mut rng, 4);
    let old = genesis(&mut rng, old_nodes);
    let new_nodes = nodes(&mut rng, 4);
    let rot = rotation(&old, 4, &new_nodes);
    let mut bad = deal(&rot, 0, &old.shares[0], &mut rng).unwrap();
    bad.ciphertexts[1][0] ^= 1;
    let honest = deal(&rot, 1, &old.shares[1], &mut rng).unwrap();
    let a = accuse(&rot, &bad, 1, &new_nodes[1].x_secret, &mut rng).unwrap();
    assert!(check_accusation(&rot, &bad, &a).is_ok());

    // An honest recipient has nothing to accuse in an honest dealing.
    assert_eq!(
        accuse(&rot, &honest, 1, &new_nodes[1].x_secret, &mut rng),
        Err(ReshareError::NothingToAccuse)
    );
    // Someone without the recipient's secret cannot build an accusation.
    assert_eq!(
        accuse(&rot, &bad, 1, &new_nodes[2].x_secret, &mut rng),
        Err(ReshareError::UnprovableRecipientKey)
    );

    let mut moved = a.clone();
    moved.dealer_index = 1;
    moved.dealing_digest = honest.digest();
    assert_eq!(
        check_accusation(&rot, &honest, &moved),
        Err(AccusationRejected::BadProof)
    );
    assert_eq!(
        check_accusation(&rot, &honest, &a),
        Err(AccusationRejected::WrongDealing)
    );

    let mut other = a.clone();
    other.accuser_index = 2;
    other.accuser = new_nodes[2].id;
    assert_eq!(
        check_accusation(&rot, &bad, &other),
        Err(AccusationRejected::BadProof)
    );
    let mut liar = a.clone();
    liar.accuser_index = 2;
    assert_eq!(
        check_accusation(&rot, &bad, &liar),
        Err(AccusationRejected::UnknownAccuser)
    );

    for field in 0..3 {
        for bit in [0usize, 9, 130, 255] {
            let mut t = a.clone();
            let target = match field {
                0 => &mut t.shared_point,
                1 => &mut t.proof_c,
                _ => &mut t.proof_s,
            };
            target[bit / 8] ^= 1 << (bit % 8);
            assert!(
                check_accusation(&rot, &bad, &t).is_err(),
                "tampered field {field} bit {bit} was upheld"
            );
        }
    }
}

#[test]
fn decoders_reject_truncated_and_garbage_input() {
    let mut rng = StdRng::seed_from_u64(10);
    let old_nodes = nodes(&mut rng, 7);
    let old = genesis(&mut rng, old_nodes);
    let new_nodes = nodes(&mut rng, 7);
    let rot = rotation(&old, 4, &new_nodes);
    let d = deal(&rot, 5, &old.shares[5], &mut rng).unwrap();
    let wire = d.encode();
    assert_eq!(Dealing::decode(&wire).unwrap(), d);
    for len in 0..wire.len() {
        assert!(
            Dealing::decode(&wire[..len]).is_err(),
            "prefix of {len} bytes"
        );
    }
    let mut long = wire.clone();
    long.push(0);
    assert!(Dealing::decode(&long).is_err());
    for _ in 0..2000 {
        let len = (rng.next_u32() % 700) as usize;
        let mut junk = vec![0u8; len];
        rng.fill_bytes(&mut junk);
        assert!(Dealing::decode(&junk).is_err());
        assert!(Accusation::decode(&junk).is_err());
        // Garbage after a valid tag too.
        let mut tagged = b"dbqs.v1.ms-dealing\0".to_vec();
        tagged.extend_from_slice(&junk);
        assert!(Dealing::decode(&tagged).is_err());
    }
    // A forged coefficient count is refused before anything is allocated for it.
    let count_at = b"dbqs.v1.ms-dealing\0".len() + 8 + 32 + 4;
    let mut forged = wire.clone();
    forged[count_at..count_at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(Dealing::decode(&forged).is_err());
    forged[count_at..count_at + 4].copy_from_slice(&0u32.to_be_bytes());
    assert!(Dealing::decode(&forged).is_err());
    // A commitment coefficient that is not a G1 point.
    let mut not_point = wire.clone();
    not_point[count_at + 4..count_at + 4 + 48].fill(0xff);
    assert!(Dealing::decode(&not_point).is_err());

    let mut bad = d.clone();
    bad.ciphertexts[0][0] ^= 1;
    let a = accuse(&rot, &bad, 0, &new_nodes[0].x_secret, &mut rng).unwrap();
    let wire = a.encode();
    assert_eq!(Accusation::decode(&wire).unwrap(), a);
    for len in 0..wire.len() {
        assert!(Accusation::decode(&wire[..len]).is_err());
    }
    let mut long = wire.clone();
    long.push(0);
    assert!(Accusation::decode(&long).is_err());
    // A dealing's bytes are no accusation, and the other way round.
    assert!(Accusation::decode(&d.encode()).is_err());
    assert!(Dealing::decode(&wire).is_err());
}

#[test]
fn next_ms_is_a_deterministic_draw_following_the_size_rule() {
    assert_eq!(ms_size_for(1, 3), 1);
    assert_eq!(ms_size_for(3, 3), 1);
    assert_eq!(ms_size_for(8, 3), 4);
    assert_eq!(ms_size_for(64, 3), 7);
    assert_eq!(ms_size_for(100_000, 3), 10);
    assert_eq!(
        (
            threshold_for(1),
            threshold_for(4),
            threshold_for(7),
            threshold_for(10)
        ),
        (1, 2, 3, 4)
    );

    let mut rng = StdRng::seed_from_u64(11);
    let members: Vec<NodeId> = nodes(&mut rng, 40).iter().map(|n| n.id).collect();
    let r_e = r_e_of(&[7u8; 96]);
    let size = ms_size_for(members.len(), 3);
    let a = next_ms(&members, &r_e, size);
    assert_eq!(a.len(), 4);
    assert_eq!(a, next_ms(&members, &r_e, size), "same inputs, same MS");
    let mut shuffled = members.clone();
    shuffled.reverse();
    assert_eq!(
        a,
        next_ms(&shuffled, &r_e, size),
        "input order does not matter"
    );
    let mut distinct = a.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), a.len());
    assert!(a.iter().all(|id| members.contains(id)));
    let b = next_ms(&members, &r_e_of(&[8u8; 96]), size);
    assert_ne!(a, b, "another r_e draws another MS");
    assert_eq!(next_ms(&members[..2], &r_e, 4).len(), 2);
}
