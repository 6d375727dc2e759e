//! Crashes at the worst moments, restarts from persisted state only.

mod common;

use common::Group;
use dbqs_ms::pbft::sim::{Scenario, Sim};
use dbqs_ms::pbft::{Action, Message, PersistOp};

/// §4.4 + persistence: the primary is down, the backups start a view change, and one of
/// them (seed-chosen: the new primary or another backup) crashes right after sending its
/// view-change. Restarted from its persisted state it is still changing view to the same
/// view, rejoins, and the group completes every request.
#[test]
fn replica_crashed_mid_view_change_restarts_from_persisted_state() {
    for seed in 0..24u64 {
        let victim = 1 + (seed % 3) as u32;
        let mut s = Sim::new(Scenario::calm(4), seed);
        s.crash(0);
        let started = s.run_until(10_000, |s| {
            s.replica(victim).is_some_and(|r| r.is_view_changing())
        });
        assert!(started, "seed {seed}: backups must start a view change");
        let target_view = s.replica(victim).map(|r| r.view()).unwrap_or(0);
        s.crash(victim);
        let p = s.persisted(victim);
        assert!(
            p.view_changing && p.view == target_view,
            "seed {seed}: view change persisted"
        );
        s.run_for(300 + seed * 37);
        s.restart(victim);
        let r = s.replica(victim).expect("restarted");
        assert!(
            r.is_view_changing() && r.view() >= target_view,
            "seed {seed}: restarted replica resumes its view change"
        );
        let report = s.finish().unwrap_or_else(|e| {
            panic!("{e}\nreplay: cargo test -p dbqs-ms --test crash_recovery (seed {seed})")
        });
        assert_eq!(report.requests_completed, 8, "seed {seed}");
        assert!(report.max_view >= 1, "seed {seed}");
    }
}

/// openraft's rule: in every action list, a Persist for a promise comes before any send
/// that carries it. Walks the first-time path of each promise on a hand-driven group.
#[test]
fn persist_precedes_every_send_that_carries_a_promise() {
    fn persist_index(actions: &[Action], pred: impl Fn(&PersistOp) -> bool) -> Option<usize> {
        actions
            .iter()
            .position(|a| matches!(a, Action::Persist(op) if pred(op)))
    }
    fn send_index(actions: &[Action], pred: impl Fn(&Message) -> bool) -> Option<usize> {
        actions.iter().position(|a| match a {
            Action::Send { msg, .. } | Action::Broadcast { msg } => pred(msg),
            _ => false,
        })
    }
    let mut g = Group::new(4, 4, 8);
    let req = g.request();

    // Primary: pre-prepare (seq 1) persisted before it is broadcast.
    let acts = g.replicas[0].as_mut().expect("up").propose(req);
    let p = persist_index(
        &acts,
        |op| matches!(op, PersistOp::Entry(e) if e.seq == 1 && e.accepted.is_some()),
    );
    let s = send_index(&acts, |m| matches!(m, Message::PrePrepare { .. }));
    assert!(p.is_some() && s.is_some() && p < s, "pre-prepare: {acts:?}");
    let pre_prepare = acts.iter().find_map(|a| match a {
        Action::Broadcast {
            msg: m @ Message::PrePrepare { .. },
        } => Some(m.clone()),
        _ => None,
    });
    g.handle(0, acts);

    // Backup: accepted pre-prepare persisted before its prepare leaves.
    let acts = g.replicas[1]
        .as_mut()
        .expect("up")
        .step(0, pre_prepare.expect("sent"));
    let p = persist_index(
        &acts,
        |op| matches!(op, PersistOp::Entry(e) if e.accepted.is_some()),
    );
    let s = send_index(&acts, |m| matches!(m, Message::Prepare(_)));
    assert!(p.is_some() && s.is_some() && p < s, "prepare: {acts:?}");
    g.handle(1, acts);

    // Deliver prepares one by one to replica 1 until it commits: the prepared certificate
    // is persisted before the commit leaves.
    let mut saw_commit = false;
    for _ in 0..10_000 {
        let Some((from, to, msg)) = g.queue.pop_front() else {
            break;
        };
        let Some(r) = g.replicas[to as usize].as_mut() else {
            continue;
        };
        let acts = r.step(from, msg);
        if let Some(s) = send_index(&acts, |m| matches!(m, Message::Commit(c) if c.signer == to)) {
            let p = persist_index(
                &acts,
                |op| matches!(op, PersistOp::Entry(e) if e.prepared.is_some()),
            );
            assert!(p.is_some_and(|p| p < s), "commit: {acts:?}");
            saw_commit = true;
        }
        g.handle(to as usize, acts);
    }
    assert!(saw_commit);

    // View change: the new view is persisted before the view-change message leaves.
    let pending = g.request();
    g.propose(2, pending);
    g.queue.clear();
    let acts = g.replicas[2].as_mut().expect("up").tick(60_000);
    let p = persist_index(&acts, |op| {
        matches!(
            op,
            PersistOp::View {
                view: 1,
                view_changing: true
            }
        )
    });
    let s = send_index(&acts, |m| matches!(m, Message::ViewChange { .. }));
    assert!(p.is_some() && s.is_some() && p < s, "view-change: {acts:?}");
}
