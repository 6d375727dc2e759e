//! The PBFT runtime over real gRPC with mutual TLS and redb, on loopback: 4 replicas, a
//! client counting f+1 matching signed replies, a killed primary, and its restart from
//! its redb file.

use std::time::Duration;

use dbqs_ms::pbft::sim::{CounterApp, add_op};
use dbqs_ms::service::faulty_disk::{Fault, FaultyDisk};
use dbqs_ms::service::{
    LocalGroup, PbftClientConfig, ReplicaStatus, RunningReplica, RuntimeConfig, RuntimeCounters,
};
use dbqs_proto::v1::PbftBatch;
use dbqs_proto::v1::pbft_client::PbftClient as PbftGrpcClient;
use ed25519_dalek::SigningKey;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Short timers so a view change and catch-up fit in a few seconds.
fn tuned(mut cfg: RuntimeConfig) -> RuntimeConfig {
    cfg.pbft.checkpoint_interval_seqs = 8;
    cfg.pbft.log_window_seqs = 16;
    cfg.pbft.view_change_timeout_ms = 500;
    cfg.pbft.max_view_change_timeout_ms = 4_000;
    cfg.pbft.status_interval_ms = 50;
    cfg.pbft.state_transfer_interval_ms = 100;
    cfg
}

fn client_cfg() -> PbftClientConfig {
    PbftClientConfig {
        attempt_timeout_ms: 400,
        max_attempts: 25,
        ..PbftClientConfig::default()
    }
}

async fn start_all(g: &mut LocalGroup, cfgs: &[RuntimeConfig]) -> Vec<Option<RunningReplica>> {
    let mut running = Vec::new();
    for cfg in cfgs {
        let r = g
            .start(cfg.clone(), CounterApp::default())
            .await
            .expect("replica starts");
        running.push(Some(r));
    }
    running
}

fn status(r: &Option<RunningReplica>) -> ReplicaStatus {
    r.as_ref().expect("replica is running").status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_survives_a_killed_primary_and_the_restarted_replica_catches_up_from_redb() {
    install_crypto();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut g = LocalGroup::new(4, dir.path()).expect("group material");
    let cfgs: Vec<RuntimeConfig> = (0..4).map(|i| tuned(g.config(i))).collect();
    let mut running = start_all(&mut g, &cfgs).await;
    let mut client = g
        .client(
            "runtime-test",
            SigningKey::from_bytes(&[42; 32]),
            client_cfg(),
        )
        .expect("client");

    let deadline = Duration::from_secs(60);
    tokio::time::timeout(deadline, async {
        // Phase 1: all four up. CounterApp replies with the running sum.
        let mut sum = 0u64;
        for k in 1..=12u64 {
            sum += k;
            let inv = client.invoke(add_op(k)).await.expect("request completes");
            assert_eq!(inv.result, sum.to_be_bytes().to_vec(), "request {k}");
            assert!(
                inv.agreeing.len() >= 2,
                "f+1 = 2 matching replies, got {inv:?}"
            );
        }
        let before = status(&running[0]);
        assert!(
            before.is_primary,
            "replica 0 is the primary of view 0: {before:?}"
        );
        assert!(
            before.stable_seq >= 8,
            "a checkpoint became stable: {before:?}"
        );

        // Phase 2: kill the primary; the others change view and keep going.
        running[0].take().expect("replica 0").kill().await;
        for k in 13..=24u64 {
            sum += k;
            let inv = client
                .invoke(add_op(k))
                .await
                .expect("request completes without replica 0");
            assert_eq!(inv.result, sum.to_be_bytes().to_vec(), "request {k}");
            assert!(!inv.agreeing.contains(&0), "replica 0 is dead: {inv:?}");
        }
        for r in &running[1..] {
            let s = status(r);
            assert!(
                s.view >= 1 && !s.view_changing,
                "a new view was installed: {s:?}"
            );
        }

        // Phase 3: restart replica 0 on its redb file: it resumes from its stable
        // checkpoint (not genesis), then catches up from its peers.
        let restarted = g
            .start(cfgs[0].clone(), CounterApp::default())
            .await
            .expect("replica 0 restarts from its redb file");
        let resumed = restarted.status();
        assert!(
            resumed.last_executed >= before.stable_seq && resumed.stable_seq >= 8,
            "resumed from the persisted checkpoint: {resumed:?}"
        );
        running[0] = Some(restarted);
        for k in 25..=44u64 {
            sum += k;
            let inv = client.invoke(add_op(k)).await.expect("request completes");
            assert_eq!(inv.result, sum.to_be_bytes().to_vec(), "request {k}");
        }
        let target = running[1..]
            .iter()
            .map(|r| status(r).last_executed)
            .max()
            .expect("three replicas");
        let mut watch = running[0].as_ref().expect("replica 0").watch_status();
        tokio::time::timeout(
            Duration::from_secs(10),
            watch.wait_for(|s| s.last_executed >= target),
        )
        .await
        .expect("replica 0 caught up in time")
        .expect("replica 0 is running");

        // Every replica, the restarted one included, now returns the same result.
        sum += 1_000;
        let inv = client
            .invoke_with(add_op(1_000), false, 4)
            .await
            .expect("request completes");
        assert_eq!(inv.result, sum.to_be_bytes().to_vec());
        assert_eq!(inv.agreeing, vec![0, 1, 2, 3], "all four agree: {inv:?}");
    })
    .await
    .expect("scenario finishes within the deadline");

    for r in running.iter().flatten() {
        assert!(RuntimeCounters::get(&r.counters.persist_commits) > 0);
        assert_eq!(RuntimeCounters::get(&r.counters.unauthenticated), 0);
    }
    for r in running.into_iter().flatten() {
        r.shutdown().await.expect("clean shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliver_is_refused_to_a_certificate_that_is_not_a_replica() {
    install_crypto();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut g = LocalGroup::new(4, dir.path()).expect("group material");
    let cfg = g.config(0);
    let replica = g.start(cfg, CounterApp::default()).await.expect("starts");

    let call = |tls: dbqs_ms::service::TlsMaterial| {
        let peer = g.peers[0].clone();
        async move {
            let channel = Endpoint::from_shared(format!("https://{}", peer.address))
                .expect("address")
                .tls_config(
                    ClientTlsConfig::new()
                        .ca_certificate(Certificate::from_pem(&tls.ca_pem))
                        .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem))
                        .domain_name(peer.tls_name.clone()),
                )
                .expect("tls")
                .connect()
                .await
                .expect("connects");
            // One batch, then the stream ends and the replica answers with its ack.
            let batches = tokio_stream::iter(vec![PbftBatch {
                messages: vec![vec![0xff; 8]],
            }]);
            PbftGrpcClient::new(channel).deliver(batches).await
        }
    };

    // A client certificate from the same CA passes TLS but is no replica.
    let err = call(g.client_tls("intruder").expect("client tls"))
        .await
        .expect_err("a client may not speak as a replica");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert_eq!(RuntimeCounters::get(&replica.counters.unauthenticated), 1);

    // Replica 1's certificate is accepted; its garbage is counted by the engine.
    let ack = call(g.tls[1].clone()).await.expect("replica 1 may deliver");
    assert_eq!(ack.get_ref().accepted, 1);
    let mut watch = replica.watch_status();
    tokio::time::timeout(
        Duration::from_secs(5),
        watch.wait_for(|s| s.engine_errors >= 1),
    )
    .await
    .expect("engine counted the malformed message")
    .expect("running");
    replica.shutdown().await.expect("clean shutdown");
}

/// A replica whose redb file starts failing stops (fail-stop: it must not send what it
/// could not make durable), says so in its status, and the other three keep ordering.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_whose_disk_fails_stops_and_the_group_goes_on() {
    install_crypto();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut g = LocalGroup::new(4, dir.path()).expect("group material");
    let mut cfgs: Vec<RuntimeConfig> = (0..4).map(|i| tuned(g.config(i))).collect();
    let failing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Replica 2 (not the primary of view 0) keeps its log on the failing disk.
    let path = g.data_path(2);
    let flag = failing.clone();
    // Its writes, resizes and syncs fail with EIO once `failing` is set (a dying disk).
    cfgs[2].database = Some(std::sync::Arc::new(move || {
        FaultyDisk::open_db(&path, Fault::Dead, flag.clone())
    }));
    let running = start_all(&mut g, &cfgs).await;
    let mut client = g
        .client(
            "disk-fault-test",
            SigningKey::from_bytes(&[43; 32]),
            client_cfg(),
        )
        .expect("client");
    tokio::time::timeout(Duration::from_secs(60), async {
        let mut sum = 0u64;
        for k in 1..=5u64 {
            sum += k;
            let inv = client.invoke(add_op(k)).await.expect("request completes");
            assert_eq!(inv.result, sum.to_be_bytes().to_vec());
        }
        let mut watch = running[2].as_ref().unwrap().watch_status();
        watch
            .wait_for(|s| s.last_executed >= 5)
            .await
            .expect("replica 2 executed the first requests");
        assert!(!status(&running[2]).stopped);

        failing.store(true, std::sync::atomic::Ordering::SeqCst);
        for k in 6..=20u64 {
            sum += k;
            let inv = client
                .invoke(add_op(k))
                .await
                .expect("request completes with replica 2's disk failing");
            assert_eq!(inv.result, sum.to_be_bytes().to_vec(), "request {k}");
        }
        let stopped = watch
            .wait_for(|s| s.stopped)
            .await
            .expect("status published")
            .clone();
        let others: Vec<u64> = [0, 1, 3]
            .iter()
            .map(|&i| status(&running[i]).last_executed)
            .collect();
        eprintln!("replica 2 stopped at {stopped:?}; the others executed {others:?}");
        assert!(
            stopped.last_executed < 20,
            "the failing replica executed nothing it could not persist: {stopped:?}"
        );
        assert!(others.iter().all(|&e| e >= 20), "{others:?}");
        // Later requests do not count on replica 2: it sends nothing any more.
        let inv = client.invoke(add_op(21)).await.expect("request completes");
        assert!(!inv.agreeing.contains(&2), "{inv:?}");
    })
    .await
    .expect("within 60 s");
    for r in running.into_iter().flatten() {
        let _ = r.shutdown().await;
    }
}
