//! Histories of concurrent clients reading and writing a few shared objects are
//! linearizable: with honest nodes, with f Byzantine replicas per group, and
//! across a crash and restart. Each run prints its seed; `LINCHECK_SEED=<seed>`
//! replays a run's choice of operations, and a failing run saves its history
//! for `lincheck`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dbqs_client::Client;
use dbqs_server::byzantine::Behaviour;
use dbqs_tests::linearizability::{
    CheckConfig, HistoryRecorder, OpKind, Operation, RecordError, check, write_history,
};
use dbqs_tests::{Cluster, pick_spread};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const TIMEOUT: Duration = Duration::from_secs(3);
const CLIENTS: u64 = 4;
const OPS_PER_CLIENT: usize = 40;
const KEYS: usize = 3;

fn seed() -> u64 {
    match std::env::var("LINCHECK_SEED") {
        Ok(s) => s.parse().expect("LINCHECK_SEED must be an integer"),
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos() as u64,
    }
}

/// Two clients of each equivocation parity, all writing as the genesis owner.
fn clients(cluster: &Cluster) -> Vec<Client> {
    (0..CLIENTS)
        .map(|c| cluster.client_with_parity((c % 2) as u8, TIMEOUT))
        .collect()
}

/// Starts every client on its own task: `OPS_PER_CLIENT` operations each, a
/// random mix of reads and writes of unique values over `KEYS` names.
fn spawn_workload(
    clients: Vec<Client>,
    recorder: &Arc<HistoryRecorder>,
    seed: u64,
) -> Vec<tokio::task::JoinHandle<()>> {
    clients
        .into_iter()
        .zip(0..)
        .map(|(client, id): (Client, u64)| {
            let recorder = recorder.clone();
            tokio::spawn(async move {
                let owner = client.owner_key().expect("owner key");
                let mut rng = StdRng::seed_from_u64(seed ^ id.wrapping_mul(0x9e37_79b9_7f4a_7c15));
                for i in 0..OPS_PER_CLIENT {
                    let name = format!("lin-{}", rng.gen_range(0..KEYS));
                    let done = if rng.gen_bool(0.5) {
                        let value = format!("c{id}-{i}").into_bytes();
                        recorder.put(id, &client, &name, value).await.map(|_| ())
                    } else {
                        recorder.get(id, &client, &owner, &name).await.map(|_| ())
                    };
                    match done {
                        Ok(()) | Err(RecordError::Client(_)) => {}
                        Err(e @ RecordError::Full { .. }) => panic!("{e}"),
                    }
                }
            })
        })
        .collect()
}

async fn join(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for t in tasks {
        t.await.expect("client task");
    }
}

struct Summary {
    completed: usize,
    indeterminate: usize,
    reads_of_values: usize,
}

/// Checks the history; on failure saves it where `lincheck` can re-read it.
fn assert_linearizable(what: &str, seed: u64, history: &[Operation]) -> Summary {
    assert_eq!(history.len(), CLIENTS as usize * OPS_PER_CLIENT, "{what}");
    let report = check(history, &CheckConfig::default());
    if !report.is_linearizable() {
        let path = std::env::temp_dir().join(format!("dbqs-lincheck-{what}-{seed}.jsonl"));
        let saved = match std::fs::File::create(&path)
            .and_then(|f| write_history(std::io::BufWriter::new(f), history))
        {
            Ok(()) => format!("history saved; `lincheck {}` re-checks it", path.display()),
            Err(e) => format!("could not save the history to {}: {e}", path.display()),
        };
        panic!("{what} (seed {seed}; {saved}):\n{report}");
    }
    let indeterminate = history.iter().filter(|o| o.is_indeterminate()).count();
    Summary {
        completed: history.len() - indeterminate,
        indeterminate,
        reads_of_values: history
            .iter()
            .filter(|o| matches!(&o.kind, OpKind::Read { result: Some(r) } if r.value.is_some()))
            .count(),
    }
}

/// Every operation succeeds and reads see written values, so the check had
/// something to bite on.
fn assert_all_completed(what: &str, seed: u64, s: &Summary) {
    assert_eq!(
        s.indeterminate, 0,
        "{what} (seed {seed}): operations failed"
    );
    assert!(
        s.reads_of_values >= 10,
        "{what} (seed {seed}): only {} reads returned a value",
        s.reads_of_values
    );
}

async fn run_byzantine(mode: Behaviour, what: &str) {
    let seed = seed();
    eprintln!("{what}: seed {seed}");
    let mut cluster = Cluster::start_with(8, 1, |cfg| {
        pick_spread(cfg, 2)
            .unwrap()
            .into_iter()
            .map(|n| (n, mode))
            .collect::<HashMap<_, _>>()
    })
    .await;
    let clients = clients(&cluster);
    let probes = clients.clone();
    let recorder = Arc::new(HistoryRecorder::new(CLIENTS as usize * OPS_PER_CLIENT));
    join(spawn_workload(clients, &recorder, seed)).await;
    let s = assert_linearizable(what, seed, &recorder.history());
    assert_all_completed(what, seed, &s);
    if mode == Behaviour::WrongValue {
        let invalid: u64 = probes.iter().map(Client::invalid_replies).sum();
        assert!(
            invalid > 0,
            "{what} (seed {seed}): no forged reply was seen"
        );
    }
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_on_honest_nodes_are_linearizable() {
    let what = "honest";
    let seed = seed();
    eprintln!("{what}: seed {seed}");
    let mut cluster = Cluster::start(4, 1).await;
    let recorder = Arc::new(HistoryRecorder::new(CLIENTS as usize * OPS_PER_CLIENT));
    join(spawn_workload(clients(&cluster), &recorder, seed)).await;
    let s = assert_linearizable(what, seed, &recorder.history());
    assert_all_completed(what, seed, &s);
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_with_f_stale_replicas_per_group_are_linearizable() {
    run_byzantine(Behaviour::Stale, "stale").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_with_f_equivocating_replicas_per_group_are_linearizable() {
    run_byzantine(Behaviour::Equivocate, "equivocate").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_with_f_wrong_value_replicas_per_group_are_linearizable() {
    run_byzantine(Behaviour::WrongValue, "wrong-value").await;
}

/// Waits until the recorder holds `n` operations (or the workload ended).
async fn wait_for_ops(recorder: &HistoryRecorder, tasks: &[tokio::task::JoinHandle<()>], n: usize) {
    for _ in 0..2_000 {
        if recorder.len() >= n || tasks.iter().all(|t| t.is_finished()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("workload stalled at {} operations", recorder.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_across_a_crash_and_restart_are_linearizable() {
    let what = "crash-restart";
    let seed = seed();
    eprintln!("{what}: seed {seed}");
    let total = CLIENTS as usize * OPS_PER_CLIENT;
    let mut cluster = Cluster::start(4, 1).await;
    let recorder = Arc::new(HistoryRecorder::new(total));
    let tasks = spawn_workload(clients(&cluster), &recorder, seed);
    let victim = (seed % 4) as usize;
    wait_for_ops(&recorder, &tasks, total / 4).await;
    let crashed_at = recorder.len();
    cluster.crash(victim).await;
    wait_for_ops(&recorder, &tasks, total / 2).await;
    cluster.restart(victim).await;
    let restarted_at = recorder.len();
    join(tasks).await;
    let s = assert_linearizable(what, seed, &recorder.history());
    eprintln!(
        "{what}: node {victim} crashed after {crashed_at} and restarted after {restarted_at} operations; {} completed, {} indeterminate",
        s.completed, s.indeterminate
    );
    assert!(
        restarted_at < total,
        "{what} (seed {seed}): the workload ended before the restart"
    );
    // One crash of 3f+1 leaves a quorum: operations keep completing.
    assert!(
        s.completed >= total * 3 / 4,
        "{what} (seed {seed}): only {} of {total} operations completed",
        s.completed
    );
    cluster.stop_all().await;
}
