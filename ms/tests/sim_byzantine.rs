//! Byzantine replicas in the simulator (issue [B] point 5). Safety must hold in every run;
//! liveness whenever at most f replicas misbehave. Each test names the behaviour it injects.

use dbqs_ms::pbft::sim::{Behavior, Scenario, SimReport, run_seeds};

fn scaled(count: u64) -> u64 {
    let scale: u64 = std::env::var("PBFT_SEED_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    count * scale
}

/// A lossy network plus one faulty replica at a seed-chosen position (primary or backup).
fn with_one(n: usize, behavior: Behavior) -> impl Fn(u64) -> Scenario {
    move |seed| {
        let mut s = Scenario::faulty(n);
        s.crashes = false;
        s.with_byzantine((seed % n as u64) as u32, behavior)
    }
}

fn total(reports: &[SimReport], f: impl Fn(&SimReport) -> u64) -> u64 {
    reports.iter().map(f).sum()
}

#[test]
fn equivocating_primary_cannot_split_the_order() {
    let reports = run_seeds(
        "--test sim_byzantine equivocating_primary_cannot_split_the_order",
        10_000,
        scaled(150),
        |_| Scenario::calm(4).with_byzantine(0, Behavior::EquivocatingPrimary),
    );
    assert!(reports.iter().all(|r| r.requests_completed == 8));
    run_seeds(
        "--test sim_byzantine equivocating_primary_cannot_split_the_order",
        11_000,
        scaled(100),
        with_one(4, Behavior::EquivocatingPrimary),
    );
}

#[test]
fn silent_primary_is_replaced_by_view_change() {
    let reports = run_seeds(
        "--test sim_byzantine silent_primary_is_replaced_by_view_change",
        20_000,
        scaled(100),
        |_| Scenario::calm(4).with_byzantine(0, Behavior::SilentPrimary),
    );
    assert!(
        reports.iter().all(|r| r.max_view >= 1),
        "a silent primary of view 0 must be voted out"
    );
    run_seeds(
        "--test sim_byzantine silent_primary_is_replaced_by_view_change",
        21_000,
        scaled(100),
        with_one(4, Behavior::SilentPrimary),
    );
}

#[test]
fn primary_censoring_a_client_is_replaced() {
    let reports = run_seeds(
        "--test sim_byzantine primary_censoring_a_client_is_replaced",
        30_000,
        scaled(100),
        |_| Scenario::calm(4).with_byzantine(0, Behavior::CensorClient(0)),
    );
    assert!(
        reports
            .iter()
            .all(|r| r.max_view >= 1 && r.requests_completed == 8),
        "the censored client must be served after a view change"
    );
    run_seeds(
        "--test sim_byzantine primary_censoring_a_client_is_replaced",
        31_000,
        scaled(100),
        with_one(4, Behavior::CensorClient(1)),
    );
}

#[test]
fn replica_sending_corrupt_messages_is_ignored() {
    let reports = run_seeds(
        "--test sim_byzantine replica_sending_corrupt_messages_is_ignored",
        40_000,
        scaled(150),
        with_one(4, Behavior::CorruptMessages),
    );
    assert!(total(&reports, |r| r.rejected_msgs) > 0);
}

#[test]
fn replayed_and_out_of_view_messages_are_harmless() {
    let reports = run_seeds(
        "--test sim_byzantine replayed_and_out_of_view_messages_are_harmless",
        50_000,
        scaled(150),
        with_one(4, Behavior::Replay),
    );
    assert!(total(&reports, |r| r.rejected_msgs) > 0);
}

#[test]
fn false_checkpoint_claims_are_rejected() {
    let reports = run_seeds(
        "--test sim_byzantine false_checkpoint_claims_are_rejected",
        60_000,
        scaled(150),
        with_one(4, Behavior::FalseCheckpoint),
    );
    assert!(total(&reports, |r| r.rejected_msgs) > 0);
}

#[test]
fn two_byzantine_replicas_of_seven_mixed_behaviours() {
    let behaviors = [
        Behavior::EquivocatingPrimary,
        Behavior::SilentPrimary,
        Behavior::CensorClient(0),
        Behavior::CorruptMessages,
        Behavior::Replay,
        Behavior::FalseCheckpoint,
        Behavior::PrePrepareAtOrBelowMinS,
    ];
    let k = behaviors.len() as u64;
    run_seeds(
        "--test sim_byzantine two_byzantine_replicas_of_seven_mixed_behaviours",
        70_000,
        scaled(60),
        move |seed| {
            let a = behaviors[(seed % k) as usize];
            let b = behaviors[((seed / k) % k) as usize];
            let mut s = Scenario::faulty(7);
            s.crashes = false;
            let first = (seed % 7) as u32;
            let second = (first + 1 + (seed / 7 % 6) as u32) % 7;
            s.with_byzantine(first, a).with_byzantine(second, b)
        },
    );
}

#[test]
fn more_than_f_faulty_replicas_never_break_safety() {
    // Liveness is not required beyond f faults, but nothing correct replicas execute may
    // diverge. Two silent/equivocating replicas of four.
    run_seeds(
        "--test sim_byzantine more_than_f_faulty_replicas_never_break_safety",
        80_000,
        scaled(60),
        |seed| {
            let mut s = Scenario::faulty(4);
            s.max_time_ms = 6_000;
            s.with_byzantine((seed % 4) as u32, Behavior::EquivocatingPrimary)
                .with_byzantine(((seed + 1) % 4) as u32, Behavior::Replay)
        },
    );
}

/// Issue 20 defect 2 (§4.4, PROTOCOL.md "Membership service"): a new primary pre-prepares
/// (and commits) the null batch at seqs at or below its NEW-VIEW's min-s, while correct
/// replicas restart between signing and stabilising a checkpoint (and the faulty replica
/// withholds its checkpoint votes and all catch-up help). A replica whose low watermark stayed
/// below min-s would accept such a pre-prepare; every correct replica must refuse it.
#[test]
fn new_primary_pre_preparing_at_or_below_min_s_is_refused() {
    let reports = run_seeds(
        "--test sim_byzantine new_primary_pre_preparing_at_or_below_min_s_is_refused",
        90_000,
        scaled(200),
        |seed| {
            let mut s = Scenario::faulty(4);
            s.crashes = false;
            s.crash_after_checkpoint_per_mille = 400;
            s.with_byzantine((seed % 4) as u32, Behavior::PrePrepareAtOrBelowMinS)
        },
    );
    assert!(total(&reports, |r| r.crashes) > 0);
}
