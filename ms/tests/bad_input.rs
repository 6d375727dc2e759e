//! Hostile bytes and forged messages (issue [B] point 6): rejected, counted, never a panic,
//! never unbounded memory.

mod common;

use common::Group;
use dbqs_ms::pbft::{Batch, Commit, Digest, Message, PrePrepare, Prepare, Request, Signed, Status};
use ed25519_dalek::SigningKey;

#[test]
fn malformed_and_oversized_bytes_are_counted_not_fatal() {
    let mut g = Group::new(4, 4, 8);
    let r = g.replicas[1].as_mut().expect("up");
    assert!(r.step_encoded(0, &[]).is_empty());
    assert!(r.step_encoded(0, &[200, 1, 2]).is_empty());
    let status = Message::Status(Signed::sign(
        Status {
            view: 0,
            view_changing: false,
            last_executed: 0,
            stable_seq: 0,
        },
        0,
        &SigningKey::from_bytes(&[1; 32]),
        &[0; 32],
    ))
    .encode();
    assert!(
        r.step_encoded(0, &status[..status.len() - 1]).is_empty(),
        "truncated"
    );
    let mut trailing = status.clone();
    trailing.push(0);
    assert!(r.step_encoded(0, &trailing).is_empty(), "trailing bytes");
    assert_eq!(r.errors().malformed, 4);
    let huge = vec![2u8; r.config().limits.max_message_bytes + 1];
    assert!(r.step_encoded(0, &huge).is_empty());
    // A length prefix claiming 2^32-1 batch requests.
    let mut many = vec![2u8];
    many.extend_from_slice(&[0u8; 48 + 4 + 64]);
    many.extend_from_slice(&u32::MAX.to_be_bytes());
    assert!(r.step_encoded(0, &many).is_empty());
    assert_eq!(r.errors().oversized, 2);
    assert_eq!(r.log_len(), 0);
}

#[test]
fn unsigned_or_wrongly_signed_messages_are_rejected() {
    let mut g = Group::new(4, 4, 8);
    let stranger = SigningKey::from_bytes(&[77; 32]);
    let batch = Batch::default();
    let body = PrePrepare {
        view: 0,
        seq: 1,
        digest: batch.digest(),
    };
    let r = g.replicas[1].as_mut().expect("up");
    // Unsigned (all-zero signature) pre-prepare from the primary.
    let unsigned = Signed {
        body,
        signer: 0,
        sig: [0; 64],
    };
    r.step(
        0,
        Message::PrePrepare {
            pre_prepare: unsigned,
            batch: batch.clone(),
        },
    );
    // Signed by a key that is not the primary's.
    let forged = Signed::sign(body, 0, &stranger, &[0; 32]);
    r.step(
        0,
        Message::PrePrepare {
            pre_prepare: forged,
            batch: batch.clone(),
        },
    );
    assert_eq!(r.errors().bad_signature, 2);
    // Signed by the primary's own key, but for another replica group (an earlier MS term
    // with the same members: `Config::domain`).
    let other_group = Signed::sign(body, 0, &SigningKey::from_bytes(&[1; 32]), &[1; 32]);
    r.step(
        0,
        Message::PrePrepare {
            pre_prepare: other_group,
            batch: batch.clone(),
        },
    );
    assert_eq!(r.errors().bad_signature, 3);
    // Correctly signed by replica 2, but claiming to be replica 0 (not the sender).
    let k2 = SigningKey::from_bytes(&[3; 32]);
    let p = Signed::sign(
        Prepare {
            view: 0,
            seq: 1,
            digest: Digest([1; 32]),
        },
        2,
        &k2,
        &[0; 32],
    );
    r.step(3, Message::Prepare(p));
    // A pre-prepare from a backup.
    let from_backup = Signed::sign(body, 2, &k2, &[0; 32]);
    r.step(
        2,
        Message::PrePrepare {
            pre_prepare: from_backup,
            batch,
        },
    );
    assert_eq!(r.errors().wrong_sender, 2);
    // A client request whose signature does not cover its content.
    let client = SigningKey::from_bytes(&[9; 32]);
    let mut req = Request::sign(&client, 1, false, vec![0; 9]);
    req.op[0] = 1;
    r.propose(req);
    assert_eq!(r.errors().bad_signature, 4);
    assert_eq!(r.pending_len(), 0);
    // Nothing was logged by any of it.
    assert_eq!(r.log_len(), 0);
}

#[test]
fn flood_of_out_of_window_and_future_messages_does_not_grow_memory() {
    let mut g = Group::new(4, 4, 8);
    let k2 = SigningKey::from_bytes(&[3; 32]);
    let r = g.replicas[1].as_mut().expect("up");
    for seq in 0..2_000u64 {
        let c = Signed::sign(
            Commit {
                view: seq % 3,
                seq,
                digest: Digest([7; 32]),
            },
            2,
            &k2,
            &[0; 32],
        );
        r.step(2, Message::Commit(c));
    }
    assert!(
        r.log_len() <= 8,
        "log holds at most the window: {}",
        r.log_len()
    );
    assert!(r.errors().out_of_window + r.errors().out_of_view > 1_900);
}

#[test]
fn pending_request_queue_is_bounded() {
    let mut g = Group::new(4, 4, 8);
    let mut cfg = g.configs[1].clone();
    cfg.max_pending_requests = 16;
    let mut r =
        dbqs_ms::pbft::Replica::new(cfg, dbqs_ms::pbft::sim::CounterApp::default()).expect("valid");
    for i in 0..100u8 {
        let client = SigningKey::from_bytes(&[i.wrapping_add(100); 32]);
        r.propose(Request::sign(&client, 1, false, vec![0; 9]));
    }
    assert_eq!(r.pending_len(), 16);
    assert_eq!(r.errors().queue_full, 84);
    // One client's newer request replaces its older one instead of queueing beside it.
    let client = SigningKey::from_bytes(&[100; 32]);
    r.propose(Request::sign(&client, 2, false, vec![0; 9]));
    assert_eq!(r.pending_len(), 16);
    g.configs.clear();
}
