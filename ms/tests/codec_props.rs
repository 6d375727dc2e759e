//! Property tests over the decoders: arbitrary or mutated bytes never panic, and everything
//! that decodes re-encodes to exactly the same bytes (the encoding is canonical, which the
//! signatures depend on).

use dbqs_ms::pbft::{
    Batch, Checkpoint, CheckpointProof, Commit, Digest, Limits, Message, PersistOp,
    PersistentState, PrePrepare, Prepare, PreparedCert, Request, Signed, Status, ViewChange,
    decode_reply,
};
use ed25519_dalek::SigningKey;
use proptest::prelude::*;

fn key(i: u8) -> SigningKey {
    SigningKey::from_bytes(&[i; 32])
}

fn sample_messages(view: u64, seq: u64, op: Vec<u8>) -> Vec<Message> {
    let client = key(50);
    let req = Request::sign(&client, seq, false, op);
    let batch = Batch {
        requests: vec![req.clone()],
    };
    let d = batch.digest();
    let pp = Signed::sign(
        PrePrepare {
            view,
            seq,
            digest: d,
        },
        0,
        &key(1),
        &[0; 32],
    );
    let prep = Signed::sign(
        Prepare {
            view,
            seq,
            digest: d,
        },
        1,
        &key(2),
        &[0; 32],
    );
    let cert = PreparedCert {
        pre_prepare: pp.clone(),
        prepares: vec![prep.clone(), prep.clone()],
    };
    let ck = Signed::sign(
        Checkpoint {
            seq,
            state_digest: Digest([3; 32]),
        },
        2,
        &key(3),
        &[0; 32],
    );
    let vc = Signed::sign(
        ViewChange {
            new_view: view + 1,
            stable: CheckpointProof {
                seq,
                state_digest: Digest([3; 32]),
                votes: vec![ck.clone()],
            },
            prepared: vec![cert],
        },
        2,
        &key(3),
        &[0; 32],
    );
    vec![
        Message::Request(req),
        Message::PrePrepare {
            pre_prepare: pp,
            batch: batch.clone(),
        },
        Message::Prepare(prep),
        Message::Commit(Signed::sign(
            Commit {
                view,
                seq,
                digest: d,
            },
            3,
            &key(4),
            &[0; 32],
        )),
        Message::Checkpoint(ck),
        Message::ViewChange {
            view_change: vc,
            batches: vec![batch],
        },
        Message::Status(Signed::sign(
            Status {
                view,
                view_changing: true,
                last_executed: seq,
                stable_seq: 0,
            },
            1,
            &key(2),
            &[0; 32],
        )),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_the_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let limits = Limits::default();
        let _ = Message::decode(&bytes, &limits);
        let _ = PersistOp::decode(&bytes, &limits);
        let _ = PersistentState::decode(&bytes, &limits);
        let _ = decode_reply(&bytes, &limits);
        if let Ok(m) = Message::decode(&bytes, &limits) {
            prop_assert_eq!(m.encode(), bytes);
        }
    }

    #[test]
    fn valid_messages_round_trip_exactly(view in 0u64..1_000, seq in 1u64..1_000, op in proptest::collection::vec(any::<u8>(), 0..64)) {
        let limits = Limits::default();
        for m in sample_messages(view, seq, op.clone()) {
            let bytes = m.encode();
            let back = Message::decode(&bytes, &limits);
            prop_assert_eq!(back.as_ref(), Ok(&m));
        }
    }

    #[test]
    fn mutated_valid_messages_never_panic_and_stay_canonical(
        view in 0u64..10, seq in 1u64..10, which in 0usize..7, pos in any::<usize>(), flip in 1u8..=255, cut in any::<bool>()
    ) {
        let limits = Limits::default();
        let m = &sample_messages(view, seq, vec![1, 2, 3])[which];
        let mut bytes = m.encode();
        let i = pos % bytes.len();
        if cut { bytes.truncate(i) } else { bytes[i] ^= flip }
        if let Ok(decoded) = Message::decode(&bytes, &limits) {
            prop_assert_eq!(decoded.encode(), bytes);
        }
    }

    #[test]
    fn tight_limits_reject_instead_of_allocating(n in 0u32..u32::MAX) {
        let limits = Limits { max_batch_requests: 4, ..Limits::default() };
        let mut bytes = vec![2u8];
        bytes.extend_from_slice(&[0u8; 8 + 8 + 32 + 4 + 64]);
        bytes.extend_from_slice(&n.to_be_bytes());
        prop_assert!(Message::decode(&bytes, &limits).is_err());
    }
}
