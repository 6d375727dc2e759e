//! The membership service hosted on the nodes (issue [C]): epochs end on the MS's timers
//! and are threshold-signed, admins add and remove nodes with authority certificates, dead
//! nodes are evicted, f_ms Byzantine MS members change nothing, and a node cut off from the
//! MS stops serving within one lease. Every test uses real TLS, redb and PBFT on loopback.

use std::collections::{BTreeSet, HashMap};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use dbqs_common::certs::{AddCert, RemoveCert, RevokeClientCert};
use dbqs_common::config::Configuration;
use dbqs_common::{ActiveConfig, ConfigCert, KeyPair, NodeId};
use dbqs_proto::v1 as pb;
use dbqs_server::ms_host::MsBehaviour;
use dbqs_tests::{Cluster, test_params};
use tonic::Code;

const FAR_FUTURE_MS: u64 = 4_102_444_800_000;

/// A client-side stub of `Membership` on the first MS member.
fn ms_stub(
    c: &Cluster,
    client: &dbqs_client::Client,
) -> pb::membership_client::MembershipClient<tonic::transport::Channel> {
    client.membership(c.config.config.ms_members[0]).unwrap()
}

fn members(cert: &ConfigCert) -> BTreeSet<NodeId> {
    Configuration::decode(&cert.configuration)
        .unwrap()
        .members
        .iter()
        .map(|m| m.node_id())
        .collect()
}

/// Fetches certificate `epoch` from node `from` and checks it with the genesis MS key.
async fn verified_cert(c: &Cluster, client: &dbqs_client::Client, epoch: u64) -> ConfigCert {
    let node = c.config.config.ms_members[0];
    let r = client
        .membership(node)
        .unwrap()
        .get_config(pb::GetConfigRequest { epoch })
        .await
        .unwrap()
        .into_inner();
    let cert = ConfigCert::from_proto(r.cert.unwrap());
    assert_eq!(cert.epoch, epoch);
    ActiveConfig::verify(cert.clone(), &c.genesis.ms_public_key)
        .unwrap_or_else(|e| panic!("configuration {epoch} does not verify: {e}"));
    cert
}

async fn submit(
    stub: &mut pb::membership_client::MembershipClient<tonic::transport::Channel>,
    cert: pb::submit_request::Cert,
) -> Result<pb::SubmitReply, tonic::Status> {
    stub.submit(pb::SubmitRequest { cert: Some(cert) })
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn epochs_end_on_the_ms_timers_and_every_configuration_verifies_with_the_genesis_key() {
    let c = Cluster::start_honest(5, test_params(1)).await;
    c.wait_epoch(4, Duration::from_secs(60)).await;
    let client = c.client(Duration::from_secs(3));
    let genesis_members = members(&c.genesis.cert);
    for e in 1..=4 {
        let cert = verified_cert(&c, &client, e).await;
        assert_eq!(members(&cert), genesis_members, "epoch {e} changed members");
    }
    // Every node holds a transferable freshness proof that verifies with the MS key.
    for i in 0..c.len() {
        let n = c.node(i).unwrap();
        let proof = n
            .core
            .lease
            .proof()
            .expect("a transferable freshness proof");
        assert!(proof.verify(&c.genesis.ms_public_key).is_ok());
    }
    // Clients keep working across the epoch changes (leases follow the MS epoch).
    let owner = client.owner_key().unwrap();
    client.put(b"after-epochs", b"v".to_vec()).await.unwrap();
    assert_eq!(
        client
            .get(&owner, b"after-epochs")
            .await
            .unwrap()
            .unwrap()
            .value,
        b"v"
    );
}

/// Every epoch lasts about its length: an MS member whose EndEpoch proposal arrives after
/// the epoch ended must not resubmit it for the next epoch, where, joined by the other
/// members' equally late proposals, it would end that epoch at once (seen before the fix:
/// every other epoch lasted 20–80 ms instead of the configured length).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_epoch_is_cut_short_by_late_end_epoch_proposals() {
    let mut params = test_params(1);
    params.epoch_length_ms = 1_000;
    let length = Duration::from_millis(params.epoch_length_ms);
    let c = Cluster::start_honest(5, params).await;
    c.wait_epoch(1, Duration::from_secs(60)).await;
    let mut view = (0..c.len())
        .find_map(|i| c.node(i).and_then(|n| n.ms()))
        .expect("an MS member among the nodes")
        .view;
    // When this member's state machine entered each epoch (ordered, so no push delay).
    let mut entered: Vec<(u64, Instant)> = vec![(view.borrow().epoch, Instant::now())];
    let deadline = Instant::now() + Duration::from_secs(60);
    while entered.len() < 7 && Instant::now() < deadline {
        tokio::time::timeout(Duration::from_secs(10), view.changed())
            .await
            .expect("the MS moves on within 10 epoch lengths")
            .expect("the MS view stays open");
        let e = view.borrow().epoch;
        if e != entered.last().unwrap().0 {
            entered.push((e, Instant::now()));
        }
    }
    assert!(entered.len() >= 7, "only saw epochs {entered:?}");
    // The first observation is not an epoch start; each later one is. Half the length
    // leaves room for timers that start late on a loaded machine.
    for w in entered[1..].windows(2) {
        let ((e0, t0), (e1, t1)) = (w[0], w[1]);
        assert_eq!(e1, e0 + 1, "epochs advance one at a time");
        let lasted = t1 - t0;
        assert!(
            lasted >= length / 2,
            "epoch {e0} lasted only {lasted:?} (epoch length {length:?}); all: {entered:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_added_and_a_node_removed_through_the_ms_show_in_the_next_configurations() {
    let c = Cluster::start_honest(5, test_params(1)).await;
    let client = c.client(Duration::from_secs(5));
    let mut stub = ms_stub(&c, &client);
    let authority = &c.genesis.authority;

    // A freshly keyed node: the authority (also the TLS CA) issues its certificate.
    let key = KeyPair::generate();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let tls = c.issue_node_tls(&key);
    let add = AddCert::issue(
        authority,
        key.public(),
        tls.hash(),
        [9; 32],
        addr,
        1_000,
        FAR_FUTURE_MS,
    );
    let r = submit(&mut stub, pb::submit_request::Cert::Add(add.encode()))
        .await
        .unwrap();
    assert_eq!(r.queued_changes, 1);
    let added_in = r.epoch + 1;
    c.wait_epoch(added_in, Duration::from_secs(30)).await;
    let cert = verified_cert(&c, &client, added_in).await;
    assert!(members(&cert).contains(&key.node_id()));

    // It starts from that configuration and holds a lease like every member.
    let joined = c
        .start_joined(key.clone(), &tls, listener, cert, "joined")
        .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while joined
        .core
        .lease
        .check(joined.core.configs.epoch())
        .is_err()
    {
        assert!(Instant::now() < deadline, "the joined node got no lease");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Remove a genesis member that is not in the MS.
    let victim = c
        .genesis
        .nodes
        .iter()
        .map(|n| n.node_id())
        .find(|id| !c.config.config.ms_members.contains(id))
        .unwrap();
    let r = submit(
        &mut stub,
        pb::submit_request::Cert::Remove(RemoveCert::issue(authority, victim, 1_001).encode()),
    )
    .await
    .unwrap();
    let removed_in = r.epoch + 1;
    c.wait_epoch(removed_in, Duration::from_secs(30)).await;
    let cert = verified_cert(&c, &client, removed_in).await;
    let m = members(&cert);
    assert!(!m.contains(&victim), "the removed node is still a member");
    assert!(m.contains(&key.node_id()));
    // The joined node got a ring position once its admitting epoch was signed.
    let cfg = Configuration::decode(&cert.configuration).unwrap();
    let me = cfg
        .members
        .iter()
        .find(|x| x.node_id() == key.node_id())
        .unwrap();
    assert!(removed_in > added_in && me.ring_position.is_some() || removed_in == added_in);
    joined.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_with_a_bad_signature_a_replayed_serial_or_an_unknown_node_are_refused() {
    let c = Cluster::start_honest(5, test_params(1)).await;
    let client = c.client(Duration::from_secs(5));
    let mut stub = ms_stub(&c, &client);
    let impostor = KeyPair::generate();
    let some_node = c.genesis.nodes[4].node_id();

    let forged = RemoveCert::issue(&impostor, some_node, 2_000);
    let e = submit(&mut stub, pb::submit_request::Cert::Remove(forged.encode()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains("not signed by the authority"),
        "{}",
        e.message()
    );

    let unknown = RemoveCert::issue(&c.genesis.authority, KeyPair::generate().node_id(), 2_001);
    let e = submit(
        &mut stub,
        pb::submit_request::Cert::Remove(unknown.encode()),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("not a member"), "{}", e.message());

    // A genesis serial used again.
    let genesis_serial = c.genesis.nodes[0].add_cert.serial;
    let replay = RemoveCert::issue(&c.genesis.authority, some_node, genesis_serial);
    let e = submit(&mut stub, pb::submit_request::Cert::Remove(replay.encode()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("serial"), "{}", e.message());

    let e = submit(&mut stub, pb::submit_request::Cert::Add(vec![1, 2, 3]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // Nothing of it reached the next configuration.
    c.wait_epoch(2, Duration::from_secs(30)).await;
    let cert = verified_cert(&c, &client, 2).await;
    assert_eq!(members(&cert), members(&c.genesis.cert));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_evicted_and_its_eviction_is_in_the_next_configuration() {
    let mut c = Cluster::start_honest(5, test_params(1)).await;
    let victim = c
        .genesis
        .nodes
        .iter()
        .position(|n| !c.config.config.ms_members.contains(&n.node_id()))
        .unwrap();
    let victim_id = c.genesis.nodes[victim].node_id();
    let killed_at = Instant::now();
    c.crash(victim).await;
    let client = c.client(Duration::from_secs(5));
    // Documented bound (docs/membership.md, "Eviction"): misses × probe interval + probe
    // timeout + one epoch + signing; 3 × 1 s + 0.8 s + 3 s here. Allow slack for CI.
    let deadline = killed_at + Duration::from_secs(40);
    loop {
        let cfg = client
            .fetch_config_from(c.config.config.ms_members[0])
            .await;
        if let Ok(epoch) = cfg {
            let cert = verified_cert(&c, &client, epoch).await;
            if !members(&cert).contains(&victim_id) {
                eprintln!(
                    "evicted in epoch {epoch}, {:.1} s after the kill",
                    killed_at.elapsed().as_secs_f64()
                );
                // The MS members' status shows the eviction (the status page's "recent
                // evictions"), as taking effect in the first epoch without the node.
                let ms0 = c
                    .genesis
                    .nodes
                    .iter()
                    .position(|n| n.node_id() == c.config.config.ms_members[0])
                    .unwrap();
                let snap = dbqs_server::metrics::NodeSnapshot::of(&c.node(ms0).unwrap().core);
                let seen = snap.ms.expect("an MS member").evictions;
                assert!(
                    seen.iter().any(|(e, n)| *n == victim_id && *e <= epoch),
                    "the MS member's recent evictions {seen:?} lack the evicted node"
                );
                break;
            }
        }
        assert!(Instant::now() < deadline, "the killed node was not evicted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs a 5-node cluster (an MS of 4, f_ms = 1) with one MS member behaving as `b` and
/// checks that epochs still end, every configuration verifies with the genesis key, and
/// no healthy node is evicted.
async fn byzantine_ms_member_changes_nothing(b: MsBehaviour) {
    let c = Cluster::start_full(
        5,
        test_params(1),
        |_| HashMap::new(),
        |cfg| HashMap::from([(cfg.config.ms_members[1], b)]),
    )
    .await;
    c.wait_epoch(4, Duration::from_secs(90)).await;
    let client = c.client(Duration::from_secs(5));
    let genesis_members = members(&c.genesis.cert);
    for e in 1..=4 {
        let cert = verified_cert(&c, &client, e).await;
        assert_eq!(
            members(&cert),
            genesis_members,
            "{b:?}: epoch {e} changed members"
        );
    }
    client.put(b"byz-ms", b"ok".to_vec()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ms_member_forging_shares_cannot_stop_or_forge_configurations() {
    byzantine_ms_member_changes_nothing(MsBehaviour::ForgeShares).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ms_member_signing_a_wrong_configuration_cannot_get_it_certified() {
    byzantine_ms_member_changes_nothing(MsBehaviour::WrongConfig).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ms_member_withholding_its_shares_cannot_stop_certification() {
    byzantine_ms_member_changes_nothing(MsBehaviour::WithholdShares).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ms_member_proposing_to_evict_healthy_nodes_alone_evicts_nobody() {
    byzantine_ms_member_changes_nothing(MsBehaviour::EvictHealthy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_ms_member_cannot_stop_epochs() {
    byzantine_ms_member_changes_nothing(MsBehaviour::Silent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_the_ms_stops_serving_within_one_lease() {
    let mut params = test_params(1);
    params.epoch_length_ms = 600_000;
    let lease_ms = params.lease_ms;
    let mut c = Cluster::start_honest(5, params).await;
    let outsider = c
        .genesis
        .nodes
        .iter()
        .position(|n| !c.config.config.ms_members.contains(&n.node_id()))
        .unwrap();
    // Two of the four MS members crash: the MS can order nothing, so no lease is renewed.
    let ms: Vec<usize> = c
        .config
        .config
        .ms_members
        .iter()
        .take(2)
        .map(|id| c.index_of(id))
        .collect();
    let cut = Instant::now();
    for i in ms {
        c.crash(i).await;
    }
    let node = c.node(outsider).unwrap();
    loop {
        if node.core.lease.check(node.core.configs.epoch()).is_err() {
            break;
        }
        assert!(
            cut.elapsed() < Duration::from_millis(lease_ms + 500),
            "still serving {:?} after the cut",
            cut.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "stopped serving {} ms after the cut (lease {lease_ms} ms)",
        cut.elapsed().as_millis()
    );
    // And it says why.
    let client = c.client(Duration::from_secs(2));
    let e = client
        .storage(c.genesis.nodes[outsider].node_id())
        .unwrap()
        .read(pb::ReadRequest {
            epoch: 1,
            object_id: vec![0; 32],
            kind: pb::ObjectKind::Content as i32,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(
        e.message().contains("no freshness lease"),
        "{}",
        e.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_across_epoch_changes_all_succeed() {
    let mut params = test_params(1);
    params.epoch_length_ms = 1_000;
    let c = Cluster::start_honest(5, params).await;
    let first = c.min_epoch();
    let mut tasks = Vec::new();
    for w in 0..4 {
        let client = c.client(Duration::from_secs(5));
        tasks.push(tokio::spawn(async move {
            let mut errors = Vec::new();
            let started = std::time::Instant::now();
            let mut k = 0;
            while started.elapsed() < Duration::from_secs(5) && k < 5_000 {
                k += 1;
                let name = format!("e-{w}-{k}");
                if let Err(e) = client.put(name.as_bytes(), vec![w as u8; 100]).await {
                    errors.push(e.to_string());
                }
            }
            errors
        }));
    }
    let mut errors = Vec::new();
    for t in tasks {
        errors.extend(t.await.unwrap());
    }
    let epoch = c.min_epoch();
    assert!(epoch >= first + 3, "epochs {first}..{epoch} only");
    assert!(
        errors.is_empty(),
        "{} writes failed across epochs {first}..{epoch}: {:#?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
}

/// PROTOCOL.md: a client certificate revoked by the authority is refused by every node
/// once the configuration that lists it is current; other clients go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_client_is_refused_with_a_clear_error_and_others_go_on() {
    let c = Cluster::start_honest(5, test_params(1)).await;
    let g = &c.genesis;
    let tls = g.ca.issue_client("soon-revoked").unwrap();
    let revoked_hash = tls.hash();
    let doomed = dbqs_client::Client::with_identity(
        g.ms_public_key,
        c.config.clone(),
        dbqs_client::ClientIdentity {
            ca_pem: g.ca.cert_pem.clone(),
            tls_cert_pem: tls.cert_pem,
            tls_key_pem: tls.key_pem,
        },
        Some(g.client.owner.clone()),
        Duration::from_secs(5),
    );
    let owner = doomed.owner_key().unwrap();
    doomed
        .put(b"before-revocation", b"v1".to_vec())
        .await
        .unwrap();

    let honest = c.client(Duration::from_secs(5));
    let mut stub = ms_stub(&c, &honest);
    let cert = RevokeClientCert::issue(&g.authority, owner, revoked_hash, 3_001);
    let r = submit(
        &mut stub,
        pb::submit_request::Cert::RevokeClient(cert.encode()),
    )
    .await
    .unwrap();
    let listed_in = r.epoch + 1;
    c.wait_epoch(listed_in, Duration::from_secs(30)).await;
    let listed = verified_cert(&c, &honest, listed_in).await;
    let cfg = Configuration::decode(&listed.configuration).unwrap();
    assert!(cfg.revoked_clients.contains(&revoked_hash));

    // Every node refuses the revoked certificate, with a message that says why.
    let e = doomed
        .put(b"after-revocation", b"v2".to_vec())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("revoked"), "{e}");
    let e = doomed
        .get(&owner, b"before-revocation")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("revoked"), "{e}");
    // The same owner key through a certificate that is not revoked still works, and the
    // revoked client's write before the revocation is there.
    let got = honest.get(&owner, b"before-revocation").await.unwrap();
    assert_eq!(got.map(|g| g.value), Some(b"v1".to_vec()));
    honest
        .put(b"after-revocation", b"v3".to_vec())
        .await
        .unwrap();
}

/// An MS member's PBFT log (`ms.redb`) damaged while it was down is set aside at start;
/// the replica starts empty, the MS goes on ending and certifying epochs, and the member
/// catches up from the others (state transfer) to execute with them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_pbft_log_is_set_aside_and_the_replica_catches_up() {
    let mut c = Cluster::start_honest(5, test_params(1)).await;
    c.wait_epoch(3, Duration::from_secs(60)).await;
    let victim = c.index_of(&c.config.config.ms_members[1]);
    c.crash(victim).await;
    let path = c.data_dir(victim).join("ms.redb");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&path, bytes).unwrap();
    c.restart(victim).await;
    let set_aside = std::fs::read_dir(c.data_dir(victim))
        .unwrap()
        .flatten()
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("ms.redb.damaged-")
        });
    assert!(set_aside, "the damaged log was set aside");
    // The MS keeps certifying epochs, and the restarted replica executes them too.
    let target = c.min_epoch() + 2;
    c.wait_epoch(target, Duration::from_secs(60)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let executed = c
            .node(victim)
            .unwrap()
            .core
            .ms
            .active()
            .map(|h| h.view.borrow().epoch);
        if executed.is_some_and(|e| e >= target) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted MS replica caught up to epoch {target} (it is at {executed:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let client = c.client(Duration::from_secs(8));
    client
        .put(b"after-pbft-log-damage", b"v".to_vec())
        .await
        .unwrap();
}
