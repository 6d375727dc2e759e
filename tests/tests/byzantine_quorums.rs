//! Reads and writes stay correct with f Byzantine replicas per group, in each of
//! the tested behaviours, and fail cleanly (never wrongly) beyond f faults.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use dbqs_client::{Client, ClientError};
use dbqs_server::byzantine::{ALL_FAULTY, Behaviour};
use dbqs_tests::{Cluster, pick_spread};

const TIMEOUT: Duration = Duration::from_secs(3);

/// Several rounds of overwrites by two clients (of both equivocation classes),
/// each followed by reads from both: every read returns the last acknowledged
/// value.
async fn overwrite_and_read_rounds(a: &Client, b: &Client, names: usize, rounds: usize) {
    let owner = a.owner_key().unwrap();
    for round in 0..rounds {
        for k in 0..names {
            let name = format!("obj-{k}");
            let value = format!("round {round} value of {name}").into_bytes();
            let writer = if (round + k) % 2 == 0 { a } else { b };
            writer
                .put(name.as_bytes(), value.clone())
                .await
                .unwrap_or_else(|e| panic!("put {name} round {round}: {e}"));
            for (who, c) in [("a", a), ("b", b)] {
                let got = c
                    .get(&owner, name.as_bytes())
                    .await
                    .unwrap_or_else(|e| panic!("get {name} by {who} round {round}: {e}"))
                    .unwrap_or_else(|| panic!("{name} missing for {who} in round {round}"));
                assert_eq!(
                    got.value, value,
                    "{who} read a stale or wrong value of {name} in round {round}"
                );
            }
        }
    }
    let blob = vec![7u8; 10_000];
    let id = a.put_blob(blob.clone()).await.expect("put blob");
    assert_eq!(b.get_blob(id).await.expect("get blob"), Some(blob));
}

async fn run_with(mode: Behaviour) {
    let cluster = Cluster::start_with(8, 1, |cfg| {
        pick_spread(cfg, 2)
            .unwrap()
            .into_iter()
            .map(|n| (n, mode))
            .collect::<HashMap<_, _>>()
    })
    .await;
    let a = cluster.client_with_parity(0, TIMEOUT);
    let b = cluster.client_with_parity(1, TIMEOUT);
    overwrite_and_read_rounds(&a, &b, 6, 4).await;
    if matches!(mode, Behaviour::WrongValue | Behaviour::BadSignature) {
        assert!(
            a.invalid_replies() + b.invalid_replies() > 0,
            "{mode}: forged replies should have been seen and rejected"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_honest_reads_return_last_write() {
    let cluster = Cluster::start(4, 1).await;
    let a = cluster.client_with_parity(0, TIMEOUT);
    let b = cluster.client_with_parity(1, TIMEOUT);
    overwrite_and_read_rounds(&a, &b, 4, 3).await;
    assert_eq!(a.invalid_replies() + b.invalid_replies(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_silent_replicas_per_group_are_tolerated() {
    run_with(Behaviour::Silent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_wrong_value_replicas_per_group_are_tolerated() {
    run_with(Behaviour::WrongValue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_stale_replaying_replicas_per_group_are_tolerated() {
    run_with(Behaviour::Stale).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_bad_signature_replicas_per_group_are_tolerated() {
    run_with(Behaviour::BadSignature).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_equivocating_replicas_per_group_are_tolerated() {
    run_with(Behaviour::Equivocate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_plus_one_crashed_fail_with_clear_error_within_timeout() {
    let mut cluster = Cluster::start(4, 1).await;
    let c = cluster.client(TIMEOUT);
    let owner = c.owner_key().unwrap();
    c.put(b"before", b"v1".to_vec()).await.unwrap();
    cluster.crash(0).await;
    cluster.crash(1).await;
    let start = Instant::now();
    let err = c
        .put(b"after", b"v".to_vec())
        .await
        .expect_err("write with 2 of 4 down must fail");
    assert!(
        start.elapsed() <= TIMEOUT + Duration::from_secs(1),
        "failed after {:?}",
        start.elapsed()
    );
    let msg = err.to_string();
    assert!(matches!(err, ClientError::Quorum { .. }), "{msg}");
    assert!(
        msg.contains("quorum not reached") && msg.contains("of 3 needed"),
        "{msg}"
    );
    // A crashed node is named either as refusing the connection or, when the client's
    // connection to it was open at the crash and its socket lingers, as not replying.
    for i in [0, 1] {
        let id = cluster.genesis.nodes[i].node_id();
        assert!(
            msg.contains(&format!("{id}: unavailable"))
                || msg.contains(&format!("{id}: no reply in time")),
            "crashed {id} not named: {msg}"
        );
    }
    let start = Instant::now();
    let err = c
        .get(&owner, b"before")
        .await
        .expect_err("read with 2 of 4 down must fail");
    assert!(start.elapsed() <= TIMEOUT + Duration::from_secs(1));
    assert!(err.to_string().contains("quorum not reached"), "{err}");
}

/// With one Byzantine and one crashed replica in the group (beyond f), operations
/// may fail, but a read never returns a value that was not the last written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_f_faults_never_return_a_wrong_value() {
    // With 4 nodes the MS is all of them: a faulty node plus a crashed one is beyond
    // f_ms too, so once the client's lease runs out it gets none (a clear refusal).
    let clean_failure = |e: &str| e.contains("quorum") || e.contains("no freshness lease");
    for mode in ALL_FAULTY {
        let mut cluster = Cluster::start_with(4, 1, |cfg| {
            pick_spread(cfg, 1)
                .unwrap()
                .into_iter()
                .map(|n| (n, mode))
                .collect::<HashMap<_, _>>()
        })
        .await;
        let c = cluster.client_with_parity(1, Duration::from_secs(2));
        let owner = c.owner_key().unwrap();
        c.put(b"k", b"first".to_vec()).await.unwrap();
        c.put(b"k", b"second".to_vec()).await.unwrap();
        // Crash one honest replica.
        let honest = (0..4)
            .find(|&i| cluster.behaviour(&cluster.genesis.nodes[i].node_id()) == Behaviour::Honest)
            .unwrap();
        cluster.crash(honest).await;
        for _ in 0..5 {
            match c.get(&owner, b"k").await {
                Ok(Some(v)) => assert_eq!(v.value, b"second", "{mode}: wrong value returned"),
                Ok(None) => panic!("{mode}: acknowledged object reported missing"),
                Err(e) => assert!(clean_failure(&e.to_string()), "{mode}: unclear error {e}"),
            }
        }
        match c.put(b"k", b"third".to_vec()).await {
            Ok(_) => {
                if let Ok(Some(v)) = c.get(&owner, b"k").await {
                    assert_eq!(v.value, b"third", "{mode}");
                }
            }
            Err(e) => assert!(clean_failure(&e.to_string()), "{mode}: unclear error {e}"),
        }
        cluster.stop_all().await;
    }
}
