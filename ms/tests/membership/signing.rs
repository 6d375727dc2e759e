//! Threshold signing of configurations and freshness proofs (PROTOCOL.md, EndEpoch and
//! Freshness).

use dbqs_common::codec::sha256;
use dbqs_common::config::{Configuration, Params};
use dbqs_common::identity::{KeyPair, NodeId};
use dbqs_ms::membership::{
    FreshnessAnswer, FreshnessCombiner, FreshnessError, FreshnessProof, MembershipState, Op,
    OpError, OpKind, Outcome, Output, Progress, ShareCollector, ShareError, merkle_path,
    merkle_root, sign_freshness, verify_matching_answers,
};

use crate::support::*;

#[test]
fn config_shares_combine_past_a_bad_share_which_is_reported() {
    let c = cluster(8);
    let mut s = c.state();
    let outs = end_epoch(&c, &mut s, 1);
    let req = outs
        .iter()
        .find_map(|o| match o {
            Output::SignConfig(r) => Some(r.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(Some(req.clone()), s.signing_request());
    let signing = Configuration::decode(&c.genesis.configuration).unwrap();
    let bytes = s.configuration().encode();
    let mut col = ShareCollector::new(&signing, 2, bytes).unwrap();
    // MS replica 0 is faulty: its share is over another message.
    let forged = c.shares[0].sign(b"dbqs.v1.config-cert\0forged");
    assert_eq!(
        col.add(c.ms[0].node_id(), forged),
        Ok(Progress::Collecting {
            valid_or_unchecked: 1,
            need: 2
        })
    );
    // A share from a non-member and a second share from replica 0 are refused.
    assert_eq!(
        col.add(c.non_ms_member(0), req.sign(&c.shares[1])),
        Err(ShareError::UnknownSigner(c.non_ms_member(0)))
    );
    assert_eq!(
        col.add(c.ms[0].node_id(), req.sign(&c.shares[0])),
        Err(ShareError::Duplicate(c.ms[0].node_id()))
    );
    // The next share makes f_ms+1 = 2, the combination fails, the bad one is found.
    let p = col.add(c.ms[1].node_id(), req.sign(&c.shares[1])).unwrap();
    assert!(
        matches!(
            p,
            Progress::Collecting {
                valid_or_unchecked: 1,
                ..
            }
        ),
        "{p:?}"
    );
    assert!(col.bad_shares().contains(&c.ms[0].node_id()));
    assert!(col.cert().is_none());
    assert_eq!(
        col.add(c.ms[3].node_id(), req.sign(&c.shares[3])),
        Ok(Progress::Complete)
    );
    let cert = col.cert().unwrap();
    assert_eq!(&cert.verify(&c.ms_key).unwrap(), s.configuration());
    let sig: [u8; 96] = cert.signature.as_slice().try_into().unwrap();
    let r = apply(&mut s, anyone(), OpKind::CertifiedEpoch { signature: sig }).0;
    assert_eq!(r.outcome, Outcome::Certified);
}

fn nonces(n: usize) -> Vec<[u8; 32]> {
    (0..n).map(|i| sha256(&[b"nonce", &[i as u8]])).collect()
}

/// Runs a freshness batch through the state machine and combines f_ms+1 shares.
fn freshness_proof(
    c: &Cluster,
    s: &mut MembershipState,
    batch: &[[u8; 32]],
    i: usize,
) -> FreshnessProof {
    let (r, out) = apply(
        s,
        anyone(),
        OpKind::Freshness {
            nonces: batch.to_vec(),
        },
    );
    let Outcome::Freshness { root, leaf_count } = r.outcome else {
        panic!("freshness refused: {r:?}");
    };
    assert_eq!(root, merkle_root(batch));
    assert_eq!(
        out,
        vec![Output::SignFreshness {
            epoch: s.epoch(),
            root,
            leaf_count
        }]
    );
    let mut comb = FreshnessCombiner::new(s.configuration(), r.epoch, root, leaf_count).unwrap();
    for k in 0..=c.f_ms() {
        comb.add(
            c.ms[k].node_id(),
            sign_freshness(&c.shares[k], &root, r.epoch),
        )
        .unwrap();
    }
    comb.proof(batch[i], i as u32, merkle_path(batch, i).unwrap())
        .unwrap()
}

#[test]
fn a_freshness_proof_verifies_and_any_tampering_is_detected() {
    let c = cluster(8);
    let mut s = c.state();
    end_epoch(&c, &mut s, 1);
    certify(&c, &mut s);
    let batch = nonces(5);
    let proof = freshness_proof(&c, &mut s, &batch, 3);
    assert_eq!(proof.verify(&c.ms_key), Ok(2));
    let back = FreshnessProof::decode(&proof.encode()).unwrap();
    assert_eq!(back, proof);

    let mut tampered_root = proof.clone();
    tampered_root.root[0] ^= 1;
    assert!(tampered_root.verify(&c.ms_key).is_err());

    let mut wrong_epoch = proof.clone();
    wrong_epoch.epoch = 3;
    assert!(matches!(
        wrong_epoch.verify(&c.ms_key),
        Err(FreshnessError::Signature(_))
    ));

    let mut wrong_path = proof.clone();
    wrong_path.path[0][5] ^= 1;
    assert_eq!(wrong_path.verify(&c.ms_key), Err(FreshnessError::BadPath));

    let mut other_nonce = proof.clone();
    other_nonce.nonce = batch[2];
    assert_eq!(other_nonce.verify(&c.ms_key), Err(FreshnessError::BadPath));

    let other_ms = Cluster::new(8, Params::default(), FAR_MS);
    assert!(proof.verify(&other_ms.ms_key).is_err());
}

#[test]
fn a_freshness_share_cannot_certify_a_configuration() {
    let c = cluster(8);
    let mut s = c.state();
    end_epoch(&c, &mut s, 1);
    let hash = s.config_hash();
    // Shares over a freshness root equal to the configuration hash, for the same epoch.
    let mut comb = FreshnessCombiner::new(s.configuration(), 2, hash, 1).unwrap();
    for k in 0..=c.f_ms() {
        comb.add(c.ms[k].node_id(), sign_freshness(&c.shares[k], &hash, 2))
            .unwrap();
    }
    let sig = comb.proof([0; 32], 0, vec![]);
    assert!(sig.is_none(), "the path of a made-up nonce does not check");
    let signing = Configuration::decode(&c.genesis.configuration).unwrap();
    let mut col = ShareCollector::new(&signing, 2, s.configuration().encode()).unwrap();
    for k in 0..=c.f_ms() {
        col.add(c.ms[k].node_id(), sign_freshness(&c.shares[k], &hash, 2))
            .unwrap();
    }
    assert!(col.cert().is_none());
    assert_eq!(col.bad_shares().len(), c.f_ms() + 1);
}

#[test]
fn requester_only_freshness_needs_f_ms_plus_1_matching_answers_from_distinct_ms_replicas() {
    let c = cluster(8);
    let ms: Vec<NodeId> = c.ms.iter().map(KeyPair::node_id).collect();
    let batch = nonces(3);
    let root = merkle_root(&batch);
    let answer = |epoch| FreshnessAnswer {
        epoch,
        root,
        leaf_count: 3,
        index: 1,
        path: merkle_path(&batch, 1).unwrap(),
    };
    // One replica, repeated, and a non-member: not enough.
    let weak = vec![
        (ms[0], answer(4)),
        (ms[0], answer(4)),
        (c.non_ms_member(0), answer(4)),
    ];
    assert_eq!(
        verify_matching_answers(&batch[1], &ms, &weak),
        Err(FreshnessError::NotEnoughAnswers { need: 2, have: 1 })
    );
    // Two distinct replicas that disagree on the epoch: not enough.
    let split = vec![(ms[0], answer(4)), (ms[1], answer(5))];
    assert!(verify_matching_answers(&batch[1], &ms, &split).is_err());
    // A matching answer with a path for another nonce does not count.
    let mut bad_path = answer(4);
    bad_path.index = 2;
    let wrong = vec![(ms[0], answer(4)), (ms[1], bad_path)];
    assert!(verify_matching_answers(&batch[1], &ms, &wrong).is_err());
    // f_ms+1 distinct matching answers.
    let good = vec![(ms[0], answer(4)), (ms[2], answer(4))];
    assert_eq!(verify_matching_answers(&batch[1], &ms, &good), Ok(4));
    // Members that batched the nonce with different neighbours still match on the epoch.
    let other = vec![nonces(5)[4], batch[1]];
    let theirs = FreshnessAnswer {
        epoch: 4,
        root: merkle_root(&other),
        leaf_count: 2,
        index: 1,
        path: merkle_path(&other, 1).unwrap(),
    };
    let mixed = vec![(ms[0], answer(4)), (ms[3], theirs)];
    assert_eq!(verify_matching_answers(&batch[1], &ms, &mixed), Ok(4));
}

#[test]
fn freshness_is_refused_for_an_older_epoch_and_for_empty_batches() {
    let c = cluster(8);
    let mut s = c.state();
    end_epoch(&c, &mut s, 1);
    let stale = Op::new(1, OpKind::Freshness { nonces: nonces(1) });
    assert!(matches!(
        s.try_apply(anyone(), &stale, &mut Vec::new()),
        Err(OpError::StaleEpoch { .. })
    ));
    assert!(matches!(
        try_op(&mut s, anyone(), OpKind::Freshness { nonces: vec![] }),
        Err(OpError::FreshnessBatchSize { len: 0, .. })
    ));
}
