//! MS rotation on running nodes (issue [E]; PROTOCOL.md, "MS rotation and resharing"):
//! every `ms_rotation_epochs` epochs the MS moves to members drawn at random, reshares the
//! key, hands over, and the old members stop and forget their shares, while clients keep
//! reading and writing and every configuration verifies with the genesis MS key. Real TLS,
//! redb and PBFT on loopback.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use dbqs_common::config::Params;
use dbqs_common::{ActiveConfig, NodeId};
use dbqs_tests::Cluster;

fn rotation_params() -> Params {
    Params {
        f: 1,
        epoch_length_ms: 1_500,
        lease_ms: 4_000,
        evict_after_ms: 3_000,
        ms_rotation_epochs: 2,
        ..Params::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ms_moves_between_nodes_and_keeps_its_public_key_while_clients_write() {
    let mut c = Cluster::start_honest(8, rotation_params()).await;
    let client = c.client(Duration::from_secs(8));
    let owner = client.owner_key().unwrap();
    let mut terms: Vec<(u64, Vec<NodeId>)> = vec![(1, c.config.config.ms_members.clone())];
    let started = Instant::now();
    let mut written = Vec::new();
    let mut failures = Vec::new();
    let mut i = 0u32;
    let mut rotation_started: Option<Instant> = None;
    let mut took = Vec::new();
    while terms.len() < 4 && started.elapsed() < Duration::from_secs(150) {
        let key = format!("during-rotation-{i}");
        let value = format!("value {i}").into_bytes();
        match client.put(key.as_bytes(), value.clone()).await {
            Ok(_) => written.push((key, value)),
            Err(e) => failures.push(e.to_string()),
        }
        i += 1;
        let cfg = c.node(0).unwrap().core.configs.current();
        if !cfg.config.ms_next.is_empty() && rotation_started.is_none() {
            rotation_started = Some(Instant::now());
        }
        if cfg.config.ms_members != terms.last().unwrap().1 {
            if let Some(t) = rotation_started.take() {
                took.push(t.elapsed());
            }
            terms.push((cfg.epoch(), cfg.config.ms_members.clone()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        terms.len() >= 4,
        "three rotations within 150 s; saw {terms:?} (write failures: {failures:?})"
    );
    let short: Vec<String> = terms
        .iter()
        .map(|(e, t)| {
            format!(
                "epoch {e}: {}",
                t.iter().map(|n| n.short()).collect::<Vec<_>>().join(",")
            )
        })
        .collect();
    eprintln!(
        "MS terms: {short:?}; rotations took {took:?} (first configuration naming the new MS to the new MS's first certified one, 4 → 4 members); {} writes, {} failed: {:?}",
        written.len(),
        failures.len(),
        &failures[..failures.len().min(4)]
    );
    // The MS really moved: not every term has the genesis members.
    let genesis_ms: std::collections::BTreeSet<_> = terms[0].1.iter().collect();
    assert!(
        terms
            .iter()
            .any(|(_, t)| t.iter().collect::<std::collections::BTreeSet<_>>() != genesis_ms),
        "{terms:?}"
    );
    // Every configuration up to now verifies with the genesis MS public key.
    let last = c.node(0).unwrap().core.configs.epoch();
    for e in 1..=last {
        let cert = c
            .node(0)
            .unwrap()
            .core
            .configs
            .get(e)
            .unwrap()
            .unwrap_or_else(|| panic!("node 0 lacks configuration {e}"));
        ActiveConfig::verify(cert, &c.genesis.ms_public_key)
            .unwrap_or_else(|e| panic!("configuration does not verify: {e}"));
    }
    // Clients kept working: most writes succeeded and each one reads back.
    assert!(
        written.len() >= 10 && failures.len() * 10 <= written.len(),
        "{} writes, failures: {failures:?}",
        written.len()
    );
    for (k, v) in &written {
        let got = client.get(&owner, k.as_bytes()).await.unwrap();
        assert_eq!(got.map(|g| g.value).as_deref(), Some(v.as_slice()), "{k}");
    }
    // Only members of the current MS host an active MS role; the others stopped theirs
    // (after the grace period) and forgot the share.
    tokio::time::sleep(Duration::from_millis(
        dbqs_server::ms_rotation::RETIRED_GRACE_MS + 2_000,
    ))
    .await;
    let cfg = c.node(0).unwrap().core.configs.current();
    for i in 0..c.len() {
        let n = c.node(i).unwrap();
        let hosts = n.core.ms.active().is_some();
        let named = cfg.config.ms_members.contains(&n.id);
        assert!(
            !hosts || named || !cfg.config.ms_next.is_empty(),
            "node {} hosts an MS role but the MS of epoch {} is {:?}",
            n.id,
            cfg.epoch(),
            cfg.config.ms_members
        );
    }
    c.stop_all().await;
}

/// Waits for `cond` on the running node `i`'s newest configuration.
async fn wait_config(
    c: &Cluster,
    i: usize,
    within: Duration,
    what: &str,
    cond: impl Fn(&ActiveConfig) -> bool,
) -> ActiveConfig {
    let deadline = Instant::now() + within;
    loop {
        let cfg = c.node(i).unwrap().core.configs.current();
        if cond(&cfg) {
            return cfg;
        }
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until running node `i` serves an MS term whose MS is `ms` and whose handle
/// passes `also`.
async fn wait_hosting(
    c: &Cluster,
    i: usize,
    ms: &[NodeId],
    within: Duration,
    also: impl Fn(&dbqs_server::ms_host::MsHandle) -> bool,
    what: &str,
) {
    let deadline = Instant::now() + within;
    loop {
        let ok = c
            .node(i)
            .unwrap()
            .core
            .ms
            .active()
            .is_some_and(|h| h.view.borrow().config.ms_members == ms && also(&h));
        if ok {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} (node {i}) within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_completes_with_an_old_and_a_new_member_crashed_and_the_new_one_rejoins() {
    let mut c = Cluster::start_honest(8, rotation_params()).await;
    let cfg = wait_config(&c, 0, Duration::from_secs(60), "a rotation starts", |cfg| {
        !cfg.config.ms_next.is_empty()
    })
    .await;
    let old = cfg.config.ms_members.clone();
    let new = cfg.config.ms_next.clone();
    // One member of each MS (not of both, and not the observer) crashes as soon as the
    // rotation starts: the old MS still has t dealers and 2f+1 replicas, the new one the
    // 2f'+1 handover shares.
    let old_only = old
        .iter()
        .copied()
        .find(|n| !new.contains(n) && c.index_of(n) != 0);
    let new_only = new
        .iter()
        .copied()
        .find(|n| !old.contains(n) && c.index_of(n) != 0);
    let observer = (0..c.len())
        .find(|i| {
            let id = c.node(*i).unwrap().id;
            Some(id) != old_only && Some(id) != new_only
        })
        .unwrap();
    for id in old_only.iter().chain(new_only.iter()) {
        c.crash_id(id).await;
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    if let Some(id) = new_only {
        let i = c.index_of(&id);
        c.restart(i).await;
    }
    let after = wait_config(
        &c,
        observer,
        Duration::from_secs(60),
        "the new MS takes over",
        |cfg| cfg.config.ms_members == new,
    )
    .await;
    assert!(after.epoch() > cfg.epoch());
    // The restarted new member took part (or took over late) and hosts the new term.
    if let Some(id) = new_only {
        let i = c.index_of(&id);
        wait_hosting(
            &c,
            i,
            &new,
            Duration::from_secs(30),
            |_| true,
            "the restarted new member hosts the new MS term",
        )
        .await;
    }
    // Clients work with the new MS.
    let client = c.client(Duration::from_secs(8));
    let owner = client.owner_key().unwrap();
    client.put(b"after-rotation", b"v".to_vec()).await.unwrap();
    let got = client.get(&owner, b"after-rotation").await.unwrap();
    assert_eq!(got.map(|g| g.value), Some(b"v".to_vec()));
    if let Some(id) = old_only {
        let i = c.index_of(&id);
        c.restart(i).await;
    }
    c.stop_all().await;
}

/// The linearizability check of [D] with the MS rotating every 2 epochs: four clients read
/// and write three shared names while the MS moves at least twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_stay_linearizable_while_the_ms_rotates() {
    use dbqs_tests::linearizability::{CheckConfig, HistoryRecorder, RecordError, check};
    use rand::{Rng, SeedableRng};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    const CLIENTS: u64 = 4;
    const MAX_OPS_PER_CLIENT: usize = 150;
    let seed: u64 = std::env::var("LINCHECK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("linearizability under rotation: seed {seed}");
    let mut c = Cluster::start_honest(8, rotation_params()).await;
    let recorder = Arc::new(HistoryRecorder::new(CLIENTS as usize * MAX_OPS_PER_CLIENT));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let client = c.client(Duration::from_secs(8));
            let recorder = recorder.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let owner = client.owner_key().unwrap();
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ id);
                for i in 0..MAX_OPS_PER_CLIENT {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let name = format!("rot-{}", rng.gen_range(0..3));
                    let r = if rng.gen_bool(0.5) {
                        let v = format!("c{id}-{i}").into_bytes();
                        recorder.put(id, &client, &name, v).await.map(|_| ())
                    } else {
                        recorder.get(id, &client, &owner, &name).await.map(|_| ())
                    };
                    if let Err(e @ RecordError::Full { .. }) = r {
                        panic!("{e}");
                    }
                    tokio::time::sleep(Duration::from_millis(rng.gen_range(20..120))).await;
                }
            })
        })
        .collect();
    // Two rotations (the MS list changes twice), then stop the clients.
    let first = c.config.config.ms_members.clone();
    let mut seen = vec![first];
    let started = Instant::now();
    while seen.len() < 3 && started.elapsed() < Duration::from_secs(120) {
        let ms = c
            .node(0)
            .unwrap()
            .core
            .configs
            .current()
            .config
            .ms_members
            .clone();
        if ms != *seen.last().unwrap() {
            seen.push(ms);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    assert!(seen.len() >= 3, "two rotations within 120 s: {seen:?}");
    let history = recorder.history();
    let report = check(&history, &CheckConfig::default());
    assert!(
        report.is_linearizable(),
        "seed {seed}: not linearizable:\n{report}"
    );
    let failed = history.iter().filter(|o| o.is_indeterminate()).count();
    eprintln!(
        "linearizability under rotation: {} operations across {} MS terms, {failed} indeterminate, linearizable",
        history.len(),
        seen.len()
    );
    assert!(history.len() >= 100, "{} operations", history.len());
    assert!(
        failed * 10 <= history.len(),
        "{failed} of {} failed",
        history.len()
    );
    c.stop_all().await;
}

/// f_ms = 1 old member deals garbage to one new member: that member's accusation is upheld,
/// the dealing never counts, and every new member ends up with a working share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_byzantine_dealer_is_accused_and_the_rotation_completes() {
    use dbqs_server::ms_host::MsBehaviour;
    let mut c = Cluster::start_full(
        8,
        rotation_params(),
        |_| HashMap::new(),
        |cfg| HashMap::from([(cfg.config.ms_members[0], MsBehaviour::BadDealing)]),
    )
    .await;
    let cfg = wait_config(&c, 0, Duration::from_secs(60), "a rotation starts", |cfg| {
        !cfg.config.ms_next.is_empty()
    })
    .await;
    let new = cfg.config.ms_next.clone();
    wait_config(
        &c,
        0,
        Duration::from_secs(60),
        "the new MS takes over",
        |cfg| cfg.config.ms_members == new,
    )
    .await;
    // Every new member (the one the garbage was sealed to included) hosts the new term
    // and can sign: a freshness share for a batch it executed verifies.
    let client = c.client(Duration::from_secs(8));
    let owner = client.owner_key().unwrap();
    client
        .put(b"after-bad-dealing", b"v".to_vec())
        .await
        .unwrap();
    let got = client.get(&owner, b"after-bad-dealing").await.unwrap();
    assert_eq!(got.map(|g| g.value), Some(b"v".to_vec()));
    for id in &new {
        let i = c.index_of(id);
        wait_hosting(
            &c,
            i,
            &new,
            Duration::from_secs(20),
            |h| h.has_share(),
            "a new member hosts the new term with a share",
        )
        .await;
    }
    c.stop_all().await;
}

/// Runs 8 nodes where `byzantine` (picked from the genesis configuration) behaves as
/// `behaviour`, until a rotation for which `this_one(old MS, new MS, byzantine)` holds
/// completes. Returns (the Byzantine node, the old and new MS, the last rotation state an
/// honest old member saw before Handover). Checks on the way that the new MS takes over
/// with a share on every honest new member and that a client writes and reads after it.
async fn rotation_with(
    behaviour: dbqs_server::ms_host::MsBehaviour,
    byzantine: impl Fn(&ActiveConfig) -> NodeId,
    this_one: impl Fn(&[NodeId], &[NodeId], &NodeId) -> bool,
) -> (
    NodeId,
    Vec<NodeId>,
    Vec<NodeId>,
    std::sync::Arc<dbqs_ms::membership::RotationState>,
) {
    let bad = std::sync::Mutex::new(None);
    let mut c = Cluster::start_full(
        8,
        rotation_params(),
        |_| HashMap::new(),
        |cfg| {
            let b = byzantine(cfg);
            *bad.lock().unwrap() = Some(b);
            HashMap::from([(b, behaviour)])
        },
    )
    .await;
    let bad = bad.lock().unwrap().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let (old, new) = loop {
        let cfg = wait_config(&c, 0, Duration::from_secs(60), "a rotation starts", |cfg| {
            !cfg.config.ms_next.is_empty()
        })
        .await;
        let (old, new) = (cfg.config.ms_members.clone(), cfg.config.ms_next.clone());
        if this_one(&old, &new, &bad) {
            break (old, new);
        }
        assert!(
            Instant::now() < deadline,
            "no rotation of the kind wanted within 120 s"
        );
        wait_config(
            &c,
            0,
            Duration::from_secs(60),
            "that rotation ends",
            |cfg| cfg.config.ms_members == new,
        )
        .await;
    };
    // Watch the rotation on an honest old member until the new MS is in charge.
    let watcher = c.index_of(old.iter().find(|id| **id != bad).unwrap());
    let mut last = None;
    let within = Duration::from_secs(60);
    let until = Instant::now() + within;
    loop {
        if let Some(h) = c.node(watcher).unwrap().core.ms.active() {
            let v = h.view.borrow().clone();
            if v.config.ms_members == old
                && let Some(rs) = v.rotation
                && rs
                    .rotation()
                    .new_members()
                    .iter()
                    .map(|m| m.id)
                    .eq(new.iter().copied())
            {
                last = Some(rs);
            }
        }
        if c.node(0).unwrap().core.configs.current().config.ms_members == new {
            break;
        }
        assert!(
            Instant::now() < until,
            "the new MS takes over within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = c.client(Duration::from_secs(8));
    let owner = client.owner_key().unwrap();
    client
        .put(b"after-the-rotation", b"v".to_vec())
        .await
        .unwrap();
    let got = client.get(&owner, b"after-the-rotation").await.unwrap();
    assert_eq!(got.map(|g| g.value), Some(b"v".to_vec()));
    for id in new.iter().filter(|id| **id != bad) {
        wait_hosting(
            &c,
            c.index_of(id),
            &new,
            Duration::from_secs(20),
            |h| h.has_share(),
            "an honest new member hosts the new term with a share",
        )
        .await;
    }
    c.stop_all().await;
    (bad, old, new, last.expect("the rotation was seen"))
}

/// f_ms = 1 old member deals a polynomial whose commitment does not match its share: every
/// replica refuses the dealing, and the others' dealings complete the rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dealing_with_a_wrong_commitment_is_refused_and_the_rotation_completes() {
    use dbqs_server::ms_host::MsBehaviour;
    let (bad, old, _, rs) = rotation_with(
        MsBehaviour::WrongCommitment,
        |cfg| cfg.config.ms_members[0],
        |old, _, bad| old.contains(bad),
    )
    .await;
    let i = old.iter().position(|id| *id == bad).unwrap() as u32;
    assert!(
        rs.dealing_of(i).is_none(),
        "the bad dealing was never ordered"
    );
    assert!(rs.chosen().is_some_and(|(s, _)| !s.contains(&i)));
}

/// f_ms = 1 old member is silent (its replica runs, its driver does nothing): it deals
/// nothing, and t of the other old members' dealings make S.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_old_member_does_not_stop_the_rotation() {
    use dbqs_server::ms_host::MsBehaviour;
    let (bad, old, _, rs) = rotation_with(
        MsBehaviour::Silent,
        |cfg| cfg.config.ms_members[1],
        |old, _, bad| old.contains(bad),
    )
    .await;
    let i = old.iter().position(|id| *id == bad).unwrap() as u32;
    assert!(rs.dealing_of(i).is_none());
    assert!(rs.chosen().is_some());
}

/// f'_ms = 1 new member lies throughout: it acknowledges nothing, accuses every dealing
/// with a proof about a sub-share it altered itself, and gives a handover share made with
/// a random key. The false accusations are refused (no dealing is disqualified), the bad
/// handover share does not count, and the other three new members hand over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_new_member_cannot_disqualify_dealings_or_stop_the_handover() {
    use dbqs_server::ms_host::MsBehaviour;
    let (bad, _, new, rs) = rotation_with(
        MsBehaviour::RotationLiar,
        |cfg| {
            cfg.config
                .members
                .iter()
                .map(|m| m.node_id())
                .find(|id| !cfg.config.ms_members.contains(id))
                .unwrap()
        },
        |_, new, bad| new.contains(bad),
    )
    .await;
    let k = new.iter().position(|id| *id == bad).unwrap() as u32;
    assert!(!rs.dealings().is_empty());
    for d in rs.dealings() {
        assert!(
            !rs.acked(k, d.dealer_index),
            "the liar acknowledged nothing"
        );
        assert!(
            !rs.is_upheld(d.dealer_index),
            "no false accusation was upheld"
        );
    }
    assert!(
        !rs.handover_given(k),
        "the liar's handover share was refused"
    );
}

/// An MS of one member (f = 0) keeps its member list and its degree-0 key set's bytes
/// across a rotation, so the old and the new term share a PBFT domain. Calls must go to
/// the newest term, and retiring the old one must not stop the new one: the epochs keep
/// advancing and writes keep working well past the retired term's grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_member_ms_keeps_ordering_after_it_rotates_into_the_same_domain() {
    let params = Params {
        f: 0,
        epoch_length_ms: 800,
        lease_ms: 3_000,
        evict_after_ms: 3_000,
        ms_rotation_epochs: 2,
        ..Params::default()
    };
    let mut c = Cluster::start_honest(1, params).await;
    c.wait_serving(Duration::from_secs(20)).await;
    let client = c.client(Duration::from_secs(4));
    let owner = client.owner_key().unwrap();
    let started = Instant::now();
    // Past the first rotation plus the grace before a retired term stops, with margin.
    let run_for = Duration::from_millis(dbqs_server::ms_rotation::RETIRED_GRACE_MS + 12_000);
    let mut written = Vec::new();
    let mut late_failures = Vec::new();
    let mut i = 0u32;
    while started.elapsed() < run_for {
        let key = format!("one-member-{i}");
        let value = format!("value {i}").into_bytes();
        match client.put(key.as_bytes(), value.clone()).await {
            Ok(_) => written.push((key, value)),
            // Failures early on may be a lease renewal racing a handover; the last
            // stretch must be clean.
            Err(e) if started.elapsed() > run_for - Duration::from_secs(5) => {
                late_failures.push(e.to_string())
            }
            Err(_) => {}
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let epoch_then = c.node(0).unwrap().core.configs.epoch();
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let epoch_now = c.node(0).unwrap().core.configs.epoch();
    // A rotation completed where a configuration naming a next MS is followed by one
    // naming none (the new term's first).
    let configs = &c.node(0).unwrap().core.configs;
    let names_next: Vec<bool> = (1..=epoch_now)
        .map(|e| {
            let cert = configs.get(e).unwrap().expect("configuration kept");
            let cfg = ActiveConfig::verify(cert, &c.genesis.ms_public_key).expect("verifies");
            !cfg.config.ms_next.is_empty()
        })
        .collect();
    let rotations = names_next.windows(2).filter(|w| w[0] && !w[1]).count();
    eprintln!(
        "one-member MS: {rotations} rotations, epoch {epoch_then} → {epoch_now} in the last 3 s, {} writes",
        written.len()
    );
    assert!(
        rotations >= 2,
        "at least two rotations completed, saw {rotations}"
    );
    assert!(
        epoch_now >= epoch_then + 2,
        "epochs still advance after the retired term stopped: {epoch_then} → {epoch_now}"
    );
    assert!(
        late_failures.is_empty(),
        "writes in the last 5 s failed: {late_failures:?}"
    );
    for (k, v) in &written {
        let got = client.get(&owner, k.as_bytes()).await.unwrap();
        assert_eq!(got.map(|g| g.value).as_deref(), Some(v.as_slice()), "{k}");
    }
    c.stop_all().await;
}
