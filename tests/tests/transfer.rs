//! State transfer (issue [D]): when membership changes move ranges between groups, the
//! new members take the objects over from the previous epoch's groups, and every
//! acknowledged write stays readable, with a writer running throughout.

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dbqs_common::certs::{AddCert, RemoveCert};
use dbqs_common::{ConfigCert, KeyPair, ObjectId};
use dbqs_proto::v1 as pb;
use dbqs_tests::{Cluster, test_params};

const FAR_FUTURE_MS: u64 = 4_102_444_800_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_move_to_a_joined_node_and_survive_a_removal_with_a_writer_running() {
    let mut c = Cluster::start_honest(5, test_params(1)).await;
    let client = c.client(Duration::from_secs(5));
    let owner = client.owner_key().unwrap();
    let mut acked: HashMap<String, Vec<u8>> = HashMap::new();
    for k in 0..120 {
        let name = format!("before-{k}");
        let v = format!("value {k}").into_bytes();
        client.put(name.as_bytes(), v.clone()).await.unwrap();
        acked.insert(name, v);
    }

    // A writer runs through both membership changes; it records what was acknowledged.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let client = client.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut ok = Vec::new();
            let mut failed = 0usize;
            let mut k = 0usize;
            while !stop.load(Ordering::Relaxed) && k < 20_000 {
                let name = format!("during-{k}");
                let v = format!("during {k}").into_bytes();
                match client.put(name.as_bytes(), v.clone()).await {
                    Ok(_) => ok.push((name, v)),
                    Err(_) => failed += 1,
                }
                k += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (ok, failed)
        })
    };

    // Admit a sixth node; it gets a ring position one epoch later and takes ranges over.
    let mut stub = client.membership(c.config.config.ms_members[0]).unwrap();
    let key = KeyPair::generate();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let tls = c.issue_node_tls(&key);
    let add = AddCert::issue(
        &c.genesis.authority,
        key.public(),
        tls.hash(),
        [3; 32],
        listener.local_addr().unwrap().to_string(),
        5_000,
        FAR_FUTURE_MS,
    );
    let r = stub
        .submit(pb::SubmitRequest {
            cert: Some(pb::submit_request::Cert::Add(add.encode())),
        })
        .await
        .unwrap()
        .into_inner();
    let admitted = r.epoch + 1;
    c.wait_epoch(admitted, Duration::from_secs(30)).await;
    let cert = ConfigCert::from_proto(
        stub.get_config(pb::GetConfigRequest { epoch: admitted })
            .await
            .unwrap()
            .into_inner()
            .cert
            .unwrap(),
    );
    let joined = c
        .start_joined(key.clone(), &tls, listener, cert, "joined")
        .await;
    // Positioned in the next epoch; then it must take its ranges over.
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60);
    loop {
        let e = joined.core.configs.epoch();
        let placed = joined
            .core
            .configs
            .current()
            .ring()
            .members()
            .any(|(_, n)| *n == key.node_id());
        if e > admitted && placed && joined.core.configs.pending().is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the joined node did not finish taking over its ranges"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "joined node took over {} objects in {:.1} s",
        joined.core.transfer.objects_stored.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    // It holds every object of the ranges it serves (the ones written before it came).
    let cfg = joined.core.configs.current();
    let mut served = 0;
    for name in acked.keys() {
        let id = ObjectId::owned(&owner, name.as_bytes());
        if cfg.in_group(&id, &key.node_id()) {
            served += 1;
            assert!(
                joined.core.store.get(&id).unwrap().is_some(),
                "the joined node lacks {name}, which it serves"
            );
        }
    }
    assert!(served > 0, "the joined node serves none of the objects");

    // Remove a genesis member that is not in the MS: its ranges move to others.
    let victim = c
        .genesis
        .nodes
        .iter()
        .map(|n| n.node_id())
        .find(|id| !c.config.config.ms_members.contains(id))
        .unwrap();
    let r = stub
        .submit(pb::SubmitRequest {
            cert: Some(pb::submit_request::Cert::Remove(
                RemoveCert::issue(&c.genesis.authority, victim, 5_001).encode(),
            )),
        })
        .await
        .unwrap()
        .into_inner();
    c.wait_epoch(r.epoch + 1, Duration::from_secs(30)).await;
    // Let the new owners take over, then stop the victim for good.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = (0..c.len())
            .filter_map(|i| c.node(i))
            .all(|n| n.core.configs.pending().is_empty())
            && joined.core.configs.pending().is_empty();
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "transfers after the removal did not finish"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let vi = c.index_of(&victim);
    c.crash(vi).await;

    stop.store(true, Ordering::Relaxed);
    let (during, failed) = writer.await.unwrap();
    eprintln!(
        "writer: {} acknowledged, {failed} failed during the changes",
        during.len()
    );
    assert!(!during.is_empty());
    acked.extend(during);

    // Lost ranges are deleted once their newest group holds them: every node ends up
    // holding only objects of ranges it serves.
    let deadline = Instant::now() + Duration::from_secs(30);
    let nodes: Vec<_> = (0..c.len())
        .filter_map(|i| c.node(i))
        .chain([&joined])
        .collect();
    loop {
        let mut stray = 0usize;
        for n in &nodes {
            let cfg = n.core.configs.current();
            for name in acked.keys() {
                let id = ObjectId::owned(&owner, name.as_bytes());
                if !cfg.in_group(&id, &n.id) && n.core.store.get(&id).unwrap().is_some() {
                    stray += 1;
                }
            }
        }
        if stray == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{stray} objects still held outside their groups"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let deleted: u64 = nodes
        .iter()
        .map(|n| n.core.transfer.objects_deleted.load(Ordering::Relaxed))
        .sum();
    eprintln!("{deleted} objects of lost ranges deleted");
    assert!(deleted > 0);

    // Every acknowledged write reads back from its current group.
    let reader = c.client(Duration::from_secs(5));
    for (name, v) in &acked {
        let got = reader
            .get(&owner, name.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("get {name}: {e}"))
            .unwrap_or_else(|| panic!("acknowledged write {name} lost"));
        assert_eq!(&got.value, v, "{name}");
    }
    joined.stop().await;
}

/// Issue [D] 6: a node that was down while several epochs passed (and the ring changed)
/// catches up on restart through the chain of configuration certificates, one epoch at a
/// time, takes over what it gained meanwhile, and serves every object of its ranges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_back_after_many_epochs_catches_up_through_the_certificate_chain() {
    let mut params = test_params(1);
    // The absent node must not be evicted meanwhile: this test is about catching up.
    params.evict_after_ms = u64::MAX;
    let mut c = Cluster::start_honest(6, params).await;
    let client = c.client(Duration::from_secs(5));
    let owner = client.owner_key().unwrap();
    let mut acked: HashMap<String, Vec<u8>> = HashMap::new();
    for k in 0..80 {
        let name = format!("absent-{k}");
        let v = format!("value {k}").into_bytes();
        client.put(name.as_bytes(), v.clone()).await.unwrap();
        acked.insert(name, v);
    }
    let outside: Vec<_> = c
        .genesis
        .nodes
        .iter()
        .map(|n| n.node_id())
        .filter(|id| !c.config.config.ms_members.contains(id))
        .collect();
    let (absent, removed) = (outside[0], outside[1]);
    let ai = c.index_of(&absent);
    let left_at = c.node(ai).unwrap().core.configs.epoch();
    c.crash(ai).await;

    // While it is away: a removal moves ranges (some to it), and epochs keep ending.
    let mut stub = client.membership(c.config.config.ms_members[0]).unwrap();
    let r = stub
        .submit(pb::SubmitRequest {
            cert: Some(pb::submit_request::Cert::Remove(
                RemoveCert::issue(&c.genesis.authority, removed, 7_001).encode(),
            )),
        })
        .await
        .unwrap()
        .into_inner();
    let target = (r.epoch + 1).max(left_at + 5);
    c.wait_epoch(target, Duration::from_secs(60)).await;
    for k in 0..40 {
        let name = format!("while-away-{k}");
        let v = format!("away {k}").into_bytes();
        client.put(name.as_bytes(), v.clone()).await.unwrap();
        acked.insert(name, v);
    }
    let ri = c.index_of(&removed);
    c.crash(ri).await;

    c.restart(ai).await;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60);
    loop {
        let n = c.node(ai).unwrap();
        let newest = (0..c.len())
            .filter(|&i| i != ai)
            .filter_map(|i| c.node(i))
            .map(|m| m.core.configs.epoch())
            .max()
            .unwrap();
        if n.core.configs.epoch() >= newest
            && n.core.configs.pending().is_empty()
            && n.core.lease.check(n.core.configs.epoch()).is_ok()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the node back from epoch {left_at} did not catch up (at {}, newest {newest})",
            n.core.configs.epoch()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let n = c.node(ai).unwrap();
    let now = n.core.configs.epoch();
    eprintln!(
        "back from epoch {left_at}, caught up to epoch {now} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        now >= left_at + 5,
        "too few epochs passed ({left_at} → {now})"
    );
    // It adopted every epoch in between (one at a time), each verified and kept.
    for e in left_at..=now {
        assert!(
            n.core.configs.get(e).unwrap().is_some(),
            "epoch {e}'s certificate is missing from the chain it holds"
        );
    }
    // Of the ranges it serves now: those it gained while away it took over completely
    // (writes made meanwhile included); those it served all along it holds as it left
    // them (writes it missed while down are on a quorum of the others, as for any
    // replica that was down).
    let cfg = n.core.configs.current();
    let before = dbqs_common::ActiveConfig::verify(
        n.core.configs.get(left_at).unwrap().unwrap(),
        &c.genesis.ms_public_key,
    )
    .unwrap();
    let (mut gained, mut kept) = (0, 0);
    for name in acked.keys() {
        let id = ObjectId::owned(&owner, name.as_bytes());
        if !cfg.in_group(&id, &absent) {
            continue;
        }
        let new_range = !before.in_group(&id, &absent);
        let written_before = name.starts_with("absent-");
        if new_range || written_before {
            if new_range {
                gained += 1;
            } else {
                kept += 1;
            }
            assert!(
                n.core.store.get(&id).unwrap().is_some(),
                "the node back lacks {name}, which it serves (gained while away: {new_range})"
            );
        }
    }
    eprintln!("it holds {gained} objects of ranges gained while away and {kept} it kept");
    assert!(kept > 0);
    // And every acknowledged write reads back.
    for (name, v) in &acked {
        let got = client
            .get(&owner, name.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("get {name}: {e}"))
            .unwrap_or_else(|| panic!("acknowledged write {name} lost"));
        assert_eq!(&got.value, v, "{name}");
    }
}
