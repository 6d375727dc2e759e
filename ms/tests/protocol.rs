//! Protocol paths walked step by step on a hand-driven group (paper sections in each test).

mod common;

use common::Group;
use dbqs_ms::pbft::sim::CounterApp;
use dbqs_ms::pbft::{Action, Message, PersistOp, Replica, ReplyCollector, Request};

/// §4.2: a request proposed to the primary executes at every replica at seq 1.
#[test]
fn normal_case_executes_the_same_batch_everywhere() {
    let mut g = Group::new(4, 4, 8);
    let req = g.request();
    g.propose(0, req);
    g.deliver_all();
    for i in 0..4 {
        assert_eq!(g.executed[i].len(), 1, "replica {i}");
        assert_eq!(g.executed[i][0], g.executed[0][0]);
    }
    assert_eq!(g.replies.len(), 4);
}

/// §4.4: a batch prepared (but committed nowhere) in view 0 is re-proposed by the new
/// primary from the prepared certificates and executes at the same seq in view 1.
#[test]
fn committed_batches_survive_view_change() {
    let mut g = Group::new(4, 4, 8);
    let r1 = g.request();
    g.propose(0, r1);
    g.deliver_all();
    // View-0 commits are lost: r2 gets prepared everywhere but commits nowhere, so only
    // the prepared certificates in the view-change messages can carry it into view 1.
    g.filter = Box::new(|_, _, m| !matches!(m, Message::Commit(c) if c.body.view == 0));
    let r2 = g.request();
    for i in 0..4 {
        g.propose(i, r2.clone());
    }
    g.deliver_all();
    assert!(g.executed.iter().all(|e| e.len() == 1));
    let prepared_digest = g.persisted[1].entries[&2]
        .prepared
        .as_ref()
        .expect("prepared certificate persisted")
        .0
        .pre_prepare
        .body
        .digest;
    g.crash(0);
    g.run_for(3_000, 100);
    for i in 1..4 {
        assert_eq!(g.r(i).view(), 1, "replica {i} moved to view 1");
        assert_eq!(g.executed[i].len(), 2, "replica {i}");
        assert_eq!(g.executed[i][1], (2, prepared_digest), "replica {i}");
    }
}

/// §4.5.2: a backup that receives the request directly forwards it to the primary, and
/// when the primary ignores it the backups change view and the new primary orders it.
#[test]
fn ignored_request_forces_a_view_change_and_then_executes() {
    let mut g = Group::new(4, 4, 8);
    // Replica 0, the primary of view 0, never hears of the request.
    g.filter = Box::new(|_, to, m| !(to == 0 && matches!(m, Message::Request(_))));
    let req = g.request();
    let forwarded = {
        let r = g.replicas[1].as_mut().expect("up");
        let actions = r.propose(req.clone());
        let fwd = actions.iter().any(|a| {
            matches!(
                a,
                Action::Send {
                    to: 0,
                    msg: Message::Request(_)
                }
            )
        });
        g.handle(1, actions);
        fwd
    };
    assert!(
        forwarded,
        "a backup relays a client's request to the primary"
    );
    for i in 2..4 {
        g.propose(i, req.clone());
    }
    g.run_for(4_000, 100);
    for i in 0..4 {
        assert!(g.r(i).view() >= 1, "replica {i}");
        assert_eq!(
            g.executed[i].len(),
            1,
            "replica {i} executed the censored request"
        );
    }
}

/// §4.3: checkpoints become stable and the log is truncated: memory stays within the
/// window however many requests run, and so does the persisted state.
#[test]
fn stable_checkpoints_truncate_log_and_persisted_state() {
    let mut g = Group::new(4, 4, 8);
    for _ in 0..40 {
        let req = g.request();
        g.propose(0, req);
        g.deliver_all();
    }
    for i in 0..4 {
        let r = g.r(i);
        assert_eq!(r.last_executed(), 40, "replica {i}");
        assert_eq!(r.stable_seq(), 40, "replica {i}");
        assert!(r.log_len() <= 8, "replica {i} log {}", r.log_len());
        assert!(g.persisted[i].entries.len() <= 8);
        assert_eq!(g.persisted[i].stable.proof.votes.len(), 3);
    }
}

/// §4.3 state transfer: a replica cut off for many checkpoints fetches the stable
/// checkpoint state (verified against 2f+1 signatures) and later committed batches.
#[test]
fn lagging_replica_catches_up_by_state_transfer() {
    let mut g = Group::new(4, 4, 8);
    g.filter = Box::new(|from, to, _| from != 3 && to != 3);
    for _ in 0..21 {
        let req = g.request();
        g.propose(0, req);
        g.deliver_all();
    }
    assert_eq!(g.r(3).last_executed(), 0);
    g.filter = Box::new(|_, _, _| true);
    g.run_for(1_000, 50);
    assert_eq!(
        g.restored[3],
        vec![20],
        "restored from the stable checkpoint at 20"
    );
    assert_eq!(g.r(3).last_executed(), 21);
    assert_eq!(g.r(3).state_digest(), g.r(0).state_digest());
}

/// Restart from persisted state: the replica resumes from its stable checkpoint and
/// re-learns later batches from its peers.
#[test]
fn restarted_replica_recovers_from_persisted_state_and_catches_up() {
    let mut g = Group::new(4, 4, 8);
    for _ in 0..6 {
        let req = g.request();
        g.propose(0, req);
        g.deliver_all();
    }
    g.crash(2);
    for _ in 0..3 {
        let req = g.request();
        g.propose(0, req);
        g.deliver_all();
    }
    g.restart(2);
    assert_eq!(
        g.r(2).last_executed(),
        4,
        "resumes at its stable checkpoint"
    );
    g.run_for(500, 50);
    assert_eq!(g.r(2).last_executed(), 9);
    assert_eq!(g.r(2).state_digest(), g.r(0).state_digest());
}

/// Exactly-once (§4.1): a retransmitted request is answered from the reply cache and not
/// executed again.
#[test]
fn retransmitted_request_gets_cached_reply_without_reexecution() {
    let mut g = Group::new(4, 4, 8);
    let req = g.request();
    g.propose(0, req.clone());
    g.deliver_all();
    let replies_before = g.replies.len();
    g.propose(1, req.clone());
    g.propose(0, req);
    g.deliver_all();
    assert_eq!(g.r(0).app().executed_ops, 1);
    assert_eq!(
        g.replies.len(),
        replies_before + 2,
        "each retransmission is answered"
    );
}

/// §5.1.3: a read-only result needs 2f+1 matching replies, a read-write one f+1.
#[test]
fn read_only_result_needs_two_f_plus_one_matching_replies() {
    let mut g = Group::new(4, 4, 8);
    let key = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
    let ro = Request::sign(&key, 1, true, vec![1]);
    let mut c = ReplyCollector::new(g.configs[0].replica_keys.clone(), &ro);
    let mut decided = Vec::new();
    for i in 0..4 {
        let r = g.replicas[i].as_mut().expect("up");
        for a in r.propose(ro.clone()) {
            if let Action::Reply { reply, .. } = a {
                decided.push(c.add(i as u32, &reply).expect("valid reply"));
            }
        }
    }
    assert_eq!(decided[0], None);
    assert_eq!(decided[1], None, "f+1 is not enough for read-only");
    assert!(decided[2].is_some(), "2f+1 matching replies decide");
    assert_eq!(
        g.r(0).last_executed(),
        0,
        "read-only requests are not ordered"
    );
    // A reply relabelled as from another replica is refused.
    let r = g.replicas[0].as_mut().expect("up");
    if let Some(Action::Reply { reply, .. }) = r.propose(ro.clone()).pop() {
        assert!(c.add(1, &reply).is_err());
        let mut forged = reply.clone();
        forged.body.result = vec![9];
        assert!(c.add(0, &forged).is_err());
    }
}

/// A fresh replica's genesis state recovers to the same state digest.
#[test]
fn genesis_state_recovers_to_the_same_digest() {
    let g = Group::new(4, 4, 8);
    let r = Replica::recover(
        g.configs[1].clone(),
        g.persisted[1].clone(),
        CounterApp::default(),
    )
    .expect("recovers");
    assert_eq!(r.state_digest(), g.r(1).state_digest());
    assert!(matches!(
        PersistOp::decode(
            &PersistOp::View {
                view: 3,
                view_changing: true
            }
            .encode(),
            &Default::default()
        ),
        Ok(PersistOp::View {
            view: 3,
            view_changing: true
        })
    ));
}
