//! Seeded whole-group simulations with benign faults: drops, duplicates, reordering,
//! partitions, crashes and restarts from persisted state. Safety is checked on every action;
//! liveness once the network heals. Replay a failure with the printed `PBFT_SEED=...` line.

use dbqs_ms::pbft::sim::{Scenario, run_seeds};

/// Seeds per test are multiplied by `PBFT_SEED_SCALE` (default 1) for longer soak runs.
fn scaled(count: u64) -> u64 {
    let scale: u64 = std::env::var("PBFT_SEED_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    count * scale
}

#[test]
fn reliable_network_completes_every_request_n4() {
    let reports = run_seeds(
        "--test sim_faults reliable_network_completes_every_request_n4",
        0,
        scaled(50),
        |_| Scenario::calm(4),
    );
    for r in &reports {
        assert_eq!(r.requests_completed, 8, "seed {}", r.seed);
        assert_eq!(
            r.max_view, 0,
            "seed {}: no view change without faults",
            r.seed
        );
    }
}

#[test]
fn lossy_network_with_crashes_and_partitions_stays_safe_and_live_n4() {
    let reports = run_seeds(
        "--test sim_faults lossy_network_with_crashes_and_partitions_stays_safe_and_live_n4",
        1_000,
        scaled(600),
        |_| Scenario::faulty(4),
    );
    let view_changes = reports.iter().filter(|r| r.max_view > 0).count();
    let crashes: u64 = reports.iter().map(|r| r.crashes).sum();
    let transfers: u64 = reports.iter().map(|r| r.state_transfers).sum();
    eprintln!(
        "n4: {} seeds, {view_changes} with view changes, {crashes} crashes, {transfers} state transfers",
        reports.len()
    );
    if reports.len() > 1 {
        assert!(
            view_changes > 0,
            "the fault mix must force some view changes"
        );
        assert!(crashes > 0, "the fault mix must crash replicas");
    }
}

#[test]
fn lossy_network_with_crashes_and_partitions_stays_safe_and_live_n7() {
    let reports = run_seeds(
        "--test sim_faults lossy_network_with_crashes_and_partitions_stays_safe_and_live_n7",
        5_000,
        scaled(200),
        |_| Scenario::faulty(7),
    );
    assert!(reports.iter().any(|r| r.max_view > 0) || reports.len() == 1);
}

#[test]
fn read_only_requests_complete_in_one_round_or_fall_back() {
    let reports = run_seeds(
        "--test sim_faults read_only_requests_complete_in_one_round_or_fall_back",
        6_000,
        scaled(100),
        |seed| {
            let mut s = if seed % 2 == 0 {
                Scenario::calm(4)
            } else {
                Scenario::faulty(4)
            };
            s.read_only_every = 2;
            s
        },
    );
    let ro: usize = reports.iter().map(|r| r.read_only_completed).sum();
    assert!(ro > 0, "some reads must complete on the read-only path");
}

#[test]
fn long_heavy_loss_phase_then_heal_completes_every_request_n4() {
    let reports = run_seeds(
        "--test sim_faults long_heavy_loss_phase_then_heal_completes_every_request_n4",
        8_000,
        scaled(200),
        |_| {
            let mut s = Scenario::faulty(4);
            s.drop_per_mille = 250;
            s.duplicate_per_mille = 100;
            s.max_delay_ms = 80;
            s.fault_phase_ms = 2_500;
            s.clients = 3;
            s.requests_per_client = 3;
            s
        },
    );
    assert!(reports.iter().any(|r| r.state_transfers > 0) || reports.len() == 1);
}
