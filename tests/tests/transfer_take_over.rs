//! Take-overs that used to fail (issue [I]): ranges holding large objects, a node
//! removed while its take-over is pending, and a node that starts epochs after the
//! one that admitted it. Each runs the real node code (TLS, redb, the transfer task
//! and the Storage service) on loopback.
//!
//! The clusters run with `max_changes_per_epoch = 1` and long epochs, so each
//! membership change (or a client revocation, which changes nothing a test looks at)
//! ends the epoch at once and nothing else does: the tests know which epoch every write
//! lands in, and where the joining node's ring position will be before it gets it.

use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use dbqs_common::codec::sha256;
use dbqs_common::ring::Ring;
use dbqs_common::tls::IssuedCert;
use dbqs_common::{ActiveConfig, ConfigCert, KeyPair, NodeId, ObjectId};
use dbqs_proto::v1 as pb;
use dbqs_server::node::RunningNode;
use dbqs_tests::{Admin, Cluster};

const MIB: usize = 1 << 20;

/// A node the authority admits: its key, its TLS certificate, the listener it will use.
struct Newcomer {
    key: KeyPair,
    tls: IssuedCert,
    listener: TcpListener,
}

impl Newcomer {
    fn new(c: &Cluster) -> Newcomer {
        let key = KeyPair::generate();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let tls = c.issue_node_tls(&key);
        Newcomer { key, tls, listener }
    }

    fn id(&self) -> NodeId {
        self.key.node_id()
    }
}

async fn config_of(c: &Cluster, admin: &Admin, epoch: u64) -> ConfigCert {
    c.wait_epoch(epoch, Duration::from_secs(60)).await;
    let cfg = admin.client.config();
    let mut stub = admin.client.membership(cfg.config.ms_members[0]).unwrap();
    ConfigCert::from_proto(
        stub.get_config(pb::GetConfigRequest { epoch })
            .await
            .unwrap()
            .into_inner()
            .cert
            .unwrap(),
    )
}

/// The ring of the epoch after `cert`'s, if nothing but the placement of the members
/// `cert` admits changes: each takes `SHA-256(key ‖ r_e)` with `r_e` the hash of the
/// certificate's signature (PROTOCOL.md, "Ring positions resist grinding").
fn next_ring(c: &Cluster, cert: &ConfigCert) -> Ring {
    let cfg = ActiveConfig::verify(cert.clone(), &c.genesis.ms_public_key).unwrap();
    let r_e = sha256(&[&cert.signature]);
    let points = cfg
        .config
        .members
        .iter()
        .map(|m| {
            let p = m.ring_position.unwrap_or_else(|| sha256(&[&m.key.0, &r_e]));
            (p, m.node_id())
        })
        .collect();
    Ring::new(points)
}

/// Content blobs of `size` bytes whose ids `ring` puts in `node`'s group, until they
/// add up to at least `total` bytes.
fn blobs_for(ring: &Ring, group: usize, node: &NodeId, size: usize, total: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut held = 0;
    let mut k = 0u64;
    while held < total {
        k += 1;
        assert!(k < 100_000, "no content id lands in the node's group");
        let mut b = vec![(k % 251) as u8; size];
        b[..8].copy_from_slice(&k.to_le_bytes());
        b[8..16].copy_from_slice(&rand::random::<u64>().to_le_bytes());
        if ring.in_group(&ObjectId::content(&b), group, node) {
            held += b.len();
            out.push(b);
        }
    }
    out
}

/// Waits until `node` holds a ring position and has no pending range, at most `within`.
async fn wait_taken_over(node: &RunningNode, within: Duration) -> f64 {
    let started = Instant::now();
    loop {
        let cfg = node.core.configs.current();
        let placed = cfg.ring().members().any(|(_, n)| *n == node.id);
        if placed && node.core.configs.pending().is_empty() {
            return started.elapsed().as_secs_f64();
        }
        assert!(
            started.elapsed() < within,
            "node {} did not take its ranges over within {within:?} (epoch {}, {} ranges pending, {} failed passes)",
            node.id,
            cfg.epoch(),
            node.core.configs.pending().ranges.len(),
            node.core.transfer.failures.load(Ordering::Relaxed),
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Issue [I] 1: a joining node takes over a range holding `total` bytes of
/// `size`-byte objects, and then holds every one of them.
async fn large_objects_are_taken_over(size: usize, total: usize) {
    let mut c = Cluster::start_honest(4, dbqs_tests::one_change_per_epoch(1)).await;
    let mut admin = Admin::new(&c);
    let n = Newcomer::new(&c);
    let admitted = admin
        .add(
            &n.key,
            n.tls.hash(),
            n.listener.local_addr().unwrap().to_string(),
        )
        .await;
    let cert = config_of(&c, &admin, admitted).await;
    let ring = next_ring(&c, &cert);
    let newcomer = n.id();
    let joined = c
        .start_joined(n.key.clone(), &n.tls, n.listener, cert, "joined")
        .await;

    // Written in the admission epoch, when the newcomer has no position yet: they are
    // in the old groups only, and in the newcomer's group once it is placed.
    let writer = c.client(Duration::from_secs(30));
    let blobs = blobs_for(&ring, 4, &newcomer, size, total);
    let mut ids = Vec::new();
    for b in &blobs {
        ids.push(writer.put_blob(b.clone()).await.expect("put_blob"));
    }
    assert_eq!(
        joined.core.configs.epoch(),
        admitted,
        "the epoch moved early"
    );

    let placed = admin.end_epoch().await;
    c.wait_epoch(placed, Duration::from_secs(30)).await;
    let secs = wait_taken_over(&joined, Duration::from_secs(90)).await;
    let stored = joined.core.transfer.objects_stored.load(Ordering::Relaxed);
    eprintln!(
        "took over {} objects of {} MiB ({} MiB) in {secs:.1} s; {} failed passes",
        stored,
        size / MIB,
        blobs.len() * size / MIB,
        joined.core.transfer.failures.load(Ordering::Relaxed)
    );
    for (id, b) in ids.iter().zip(&blobs) {
        match joined.core.store.get(id).unwrap() {
            Some(dbqs_common::object::StoredObject::Content(got)) => {
                assert!(got == *b, "object {} differs", id.to_hex())
            }
            other => panic!(
                "the newcomer lacks {} after its take-over: {other:?}",
                id.to_hex()
            ),
        }
    }
    joined.stop().await;
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_of_40_mib_in_1_mib_objects_is_taken_over() {
    large_objects_are_taken_over(MIB, 40 * MIB).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_of_40_mib_in_4_mib_objects_is_taken_over() {
    large_objects_are_taken_over(4 * MIB, 40 * MIB).await;
}

/// Issue [I] 3 (PROTOCOL.md, "State transfer" 6): a node removed while its take-over
/// is pending must still be able to finish it, or the next group stalls.
///
/// Four genesis nodes A, B, C, D hold everything (f = 1). J is admitted and crashes
/// before it is placed, so the epoch that places J finds it down and its ranges
/// pending. C crashes too, then J is removed: D regains the ranges J had displaced it
/// from and must take them from that epoch's group {J, A, B, C}, of which only A and B
/// answer, so D needs J. J restarts, removed, and must take its ranges over from the
/// genesis group: the sources must serve it by the configuration in which it gained
/// them, not the newest one (where it is nobody's member).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_removed_while_its_take_over_is_pending_still_finishes_it() {
    let params = dbqs_tests::one_change_per_epoch(1);
    // Crashed nodes stay members: nothing but the test's own changes ends an epoch.
    let mut c = Cluster::start_honest(4, params).await;
    let mut admin = Admin::new(&c);
    let writer = c.client(Duration::from_secs(30));
    let mut ids = Vec::new();
    for k in 0..60u32 {
        let b = format!("object {k} of the genesis group").into_bytes();
        ids.push((writer.put_blob(b.clone()).await.expect("put_blob"), b));
    }

    let n = Newcomer::new(&c);
    let j = n.id();
    let addr = n.listener.local_addr().unwrap();
    let admitted = admin
        .add(
            &n.key,
            n.tls.hash(),
            n.listener.local_addr().unwrap().to_string(),
        )
        .await;
    let cert = config_of(&c, &admin, admitted).await;
    let joined = c
        .start_joined(n.key.clone(), &n.tls, n.listener, cert.clone(), "joined")
        .await;
    joined.crash().await;

    // J is placed while it is down; its ranges stay pending.
    let placed = admin.end_epoch().await;
    c.wait_epoch(placed, Duration::from_secs(30)).await;
    let with_j = c.node(0).unwrap().core.configs.current();
    assert!(with_j.ring().members().any(|(_, n)| *n == j));

    // C: a genesis node other than the one the test submits through, and not the
    // node D that gets J's ranges back; every genesis node is in every group but for J.
    let genesis: Vec<NodeId> = c.genesis.nodes.iter().map(|m| m.node_id()).collect();
    let c_id = genesis[2];
    c.crash_id(&c_id).await;

    let removed = admin.remove(j).await;
    c.wait_epoch(removed, Duration::from_secs(30)).await;
    let without_j = c.node(0).unwrap().core.configs.current();
    assert!(without_j.member(&j).is_none());
    // The genesis nodes that lost ranges to J regain them now, from the group that
    // placed J; with C down they need J's listing.
    let regaining: Vec<usize> = (0..c.len())
        .filter(|i| {
            c.node(*i)
                .is_some_and(|n| !n.core.configs.pending().is_empty())
        })
        .collect();
    assert!(
        !regaining.is_empty(),
        "no member regained a range from the group that placed J"
    );

    // J comes back, removed, and finishes its take-over as a source for them.
    let listener = TcpListener::bind(addr).unwrap();
    let joined = c
        .start_joined(n.key.clone(), &n.tls, listener, cert, "joined")
        .await;
    let started = Instant::now();
    loop {
        let j_done =
            joined.core.configs.epoch() >= removed && joined.core.configs.pending().is_empty();
        let others_done = regaining.iter().all(|i| {
            c.node(*i)
                .is_none_or(|n| n.core.configs.pending().is_empty())
        });
        if j_done && others_done {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "after 60 s: J (epoch {}) has {} ranges pending ({} failed passes), the regaining members {:?}",
            joined.core.configs.epoch(),
            joined.core.configs.pending().ranges.len(),
            joined.core.transfer.failures.load(Ordering::Relaxed),
            regaining
                .iter()
                .filter_map(|i| c.node(*i))
                .map(|n| n.core.configs.pending().ranges.len())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "J and the regaining members finished in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // Every object still reads back (C is down: three of four answer).
    let reader = c.client(Duration::from_secs(20));
    for (id, b) in &ids {
        let got = reader.get_blob(*id).await.expect("get_blob");
        assert_eq!(got.as_deref(), Some(b.as_slice()), "{}", id.to_hex());
    }
    joined.stop().await;
    c.stop_all().await;
}

/// Issue [I] 4 (PROTOCOL.md, "State transfer" 7): a node whose process starts two
/// epochs after the one that admitted it (it was placed meanwhile, while down) holds
/// nothing of what it serves. It must take everything it serves over before it answers
/// about it, and never answer "not found" for an object its group holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_two_epochs_after_its_admission_answers_nothing_it_has_not_taken_over() {
    let params = dbqs_tests::one_change_per_epoch(1);
    // The newcomer is down while it is placed: it must not be evicted meanwhile.
    let mut c = Cluster::start_honest(4, params).await;
    let mut admin = Admin::new(&c);
    let writer = c.client(Duration::from_secs(30));
    let mut objects = Vec::new();
    for k in 0..80u32 {
        let b = format!("object {k}, written before the newcomer was admitted").into_bytes();
        objects.push((writer.put_blob(b.clone()).await.expect("put_blob"), b));
    }

    let n = Newcomer::new(&c);
    let newcomer = n.id();
    let admitted = admin
        .add(
            &n.key,
            n.tls.hash(),
            n.listener.local_addr().unwrap().to_string(),
        )
        .await;
    c.wait_epoch(admitted, Duration::from_secs(30)).await;
    let placed = admin.end_epoch().await;
    c.wait_epoch(placed, Duration::from_secs(30)).await;
    let later = admin.end_epoch().await;
    c.wait_epoch(later, Duration::from_secs(30)).await;
    assert_eq!(later, admitted + 2);

    // Started as `dbqs-server join` starts a node: from a configuration that does not
    // include it yet (here genesis), waiting for the one that admits it.
    let joined = c
        .start_joined(
            n.key.clone(),
            &n.tls,
            n.listener,
            c.genesis.cert.clone(),
            "late",
        )
        .await;
    let cfg = joined.core.configs.current();
    assert!(cfg.epoch() >= later);
    let served: Vec<&(ObjectId, Vec<u8>)> = objects
        .iter()
        .filter(|(id, _)| cfg.in_group(id, &newcomer))
        .collect();
    assert!(
        !served.is_empty(),
        "the newcomer serves none of the objects"
    );

    // Ask the newcomer alone about each object it serves: it may refuse (no lease yet,
    // still transferring) but must never say it has no such object.
    let reader = c.client(Duration::from_secs(10));
    assert!(reader.refresh_config().await || reader.config().epoch() >= later);
    let mut absent = Vec::new();
    let mut answered = 0usize;
    let deadline = Instant::now() + Duration::from_secs(30);
    for (id, b) in &served {
        loop {
            let mut s = reader.storage(newcomer).unwrap();
            let r = s
                .read(pb::ReadRequest {
                    epoch: reader.config().epoch(),
                    object_id: id.0.to_vec(),
                    kind: pb::ObjectKind::Content as i32,
                })
                .await;
            match r.map(|r| r.into_inner().object) {
                Ok(Some(pb::read_reply::Object::Content(got))) => {
                    assert!(got == *b, "the newcomer answered other bytes");
                    answered += 1;
                    break;
                }
                Ok(other) => {
                    absent.push((id.to_hex(), format!("{other:?}")));
                    break;
                }
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => panic!("the newcomer never answered about {}: {e}", id.to_hex()),
            }
        }
    }
    assert!(
        absent.is_empty(),
        "the newcomer, started two epochs after its admission, said it does not have {} of the {} objects it serves (answered {answered}): {:?}",
        absent.len(),
        served.len(),
        &absent[..absent.len().min(3)]
    );
    let secs = wait_taken_over(&joined, Duration::from_secs(60)).await;
    for (id, b) in &served {
        match joined.core.store.get(id).unwrap() {
            Some(dbqs_common::object::StoredObject::Content(got)) => assert!(got == *b),
            other => panic!(
                "the newcomer lacks {} after its take-over: {other:?}",
                id.to_hex()
            ),
        }
    }
    eprintln!(
        "late newcomer: {} objects served, {answered} answered directly, all held {secs:.1} s later",
        served.len()
    );
    joined.stop().await;
    c.stop_all().await;
}
