//! Issue 20, defect 9: "A restart evicts the node". PROTOCOL.md, "Membership service",
//! Evict: "Eviction is for nodes that are gone, not for restarts: the threshold is a time
//! (`evict_after_ms`, minutes by default, shorter on devnet), and an evicted node whose
//! AddCert is still unexpired and was never answered by a RemoveCert may submit it again to
//! rejoin (it gets a new ring position like any admitted node, and takes its ranges over
//! as new)."
//!
//! The tests run a real in-process cluster (TLS, redb, PBFT, the MS's prober) of five
//! nodes, four of them the MS, and take down the fifth, V:
//! - with the default threshold, V down 30 s is never evicted and serves its objects again;
//! - with a threshold of 3 s, V is evicted while down, rejoins by itself once restarted
//!   (submitting its own AddCert), gets a new ring position, takes its ranges over from its
//!   groups, and then answers with the current values, including those written while it
//!   was away, and never with the stale ones its store still held;
//! - with a threshold of 3 s, V restarted after it had adopted the configuration that
//!   evicted it (a restart during its rejoin) starts outside it and still rejoins by
//!   itself.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use dbqs_common::config::Params;
use dbqs_common::{ActiveConfig, ConfigCert, NodeId, ObjectId, PublicKey};
use dbqs_proto::v1 as pb;
use dbqs_tests::{Cluster, test_params};

/// The eviction threshold of a test cluster (PROTOCOL.md, Evict: a time).
fn set_evict_after(params: &mut Params, ms: u64) {
    params.evict_after_ms = ms;
}

/// The one node outside the MS of a five-node cluster.
fn outside_ms(c: &Cluster) -> NodeId {
    c.genesis
        .nodes
        .iter()
        .map(|n| n.node_id())
        .find(|id| !c.config.config.ms_members.contains(id))
        .expect("a node outside the MS")
}

/// The verified certificate of `epoch`, from the first MS member.
async fn cert_of(c: &Cluster, client: &dbqs_client::Client, epoch: u64) -> ActiveConfig {
    let r = client
        .membership(c.config.config.ms_members[0])
        .unwrap()
        .get_config(pb::GetConfigRequest { epoch })
        .await
        .unwrap()
        .into_inner();
    let cert = ConfigCert::from_proto(r.cert.expect("a certificate"));
    assert_eq!(cert.epoch, epoch);
    ActiveConfig::verify(cert, &c.genesis.ms_public_key)
        .unwrap_or_else(|e| panic!("configuration {epoch} does not verify: {e}"))
}

/// The newest configuration the first MS member holds, verified.
async fn newest(c: &Cluster, client: &dbqs_client::Client) -> ActiveConfig {
    let e = client
        .fetch_config_from(c.config.config.ms_members[0])
        .await
        .expect("the first MS member answers");
    cert_of(c, client, e).await
}

/// Reads the owned object `name` from `node` alone, naming `epoch`: the value it holds
/// (`None`: it answered that it has none), or its refusal.
async fn read_from(
    client: &dbqs_client::Client,
    node: NodeId,
    epoch: u64,
    owner: &PublicKey,
    name: &str,
) -> Result<Option<Vec<u8>>, tonic::Status> {
    let id = ObjectId::owned(owner, name.as_bytes());
    let r = client
        .storage(node)
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?
        .read(pb::ReadRequest {
            epoch,
            object_id: id.0.to_vec(),
            kind: pb::ObjectKind::Owned as i32,
        })
        .await?
        .into_inner();
    match r.object {
        Some(pb::read_reply::Object::Owned(v)) => Ok(Some(v.value)),
        None => Ok(None),
        Some(other) => panic!("{name}: a content object in reply to an owned read: {other:?}"),
    }
}

/// Like [`read_from`], naming the epoch `node` (running as `c.node(i)`) is in at the time
/// of the read: with 3 s epochs an epoch may end between two reads of a loop, and V then
/// refuses the older epoch ("stale epoch"), which says nothing about what it holds.
async fn read_current(
    c: &Cluster,
    i: usize,
    client: &dbqs_client::Client,
    owner: &PublicKey,
    name: &str,
) -> Result<Option<Vec<u8>>, tonic::Status> {
    let node = c.genesis.nodes[i].node_id();
    let mut last = None;
    for _ in 0..3 {
        let epoch = c.node(i).expect("running").core.configs.epoch();
        match read_from(client, node, epoch, owner, name).await {
            Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                last = Some(s);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            r => return r,
        }
    }
    Err(last.expect("three stale-epoch refusals"))
}

/// Writes `n` objects and returns name → value.
async fn write(client: &dbqs_client::Client, prefix: &str, n: usize) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for k in 0..n {
        let name = format!("{prefix}-{k}");
        let value = format!("{prefix} value {k}").into_bytes();
        client.put(name.as_bytes(), value.clone()).await.unwrap();
        out.insert(name, value);
    }
    out
}

/// Waits (at most `within`) until node `i` has adopted the newest epoch any other running
/// node holds, is a member of it with a ring position, has taken over every range it
/// serves, and holds a lease. Calls `meanwhile` every round. Returns its configuration.
async fn wait_serving_as_member(
    c: &Cluster,
    i: usize,
    within: Duration,
    what: &str,
    mut meanwhile: impl AsyncFnMut(),
) -> ActiveConfig {
    let id = c.genesis.nodes[i].node_id();
    let deadline = Instant::now() + within;
    loop {
        meanwhile().await;
        let n = c.node(i).unwrap();
        let cfg = n.core.configs.current();
        let newest = (0..c.len())
            .filter(|&j| j != i)
            .filter_map(|j| c.node(j))
            .map(|m| m.core.configs.epoch())
            .max()
            .unwrap();
        if cfg.epoch() >= newest
            && cfg.member(&id).is_some_and(|m| m.ring_position.is_some())
            && n.core.configs.pending().is_empty()
            && n.core.lease.check(cfg.epoch()).is_ok()
        {
            return cfg;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: node {} is not serving as a member after {within:?} (it is in epoch {}, \
             newest {newest}; member: {}, positioned: {}, ranges pending: {})",
            id.short(),
            cfg.epoch(),
            cfg.member(&id).is_some(),
            cfg.member(&id).is_some_and(|m| m.ring_position.is_some()),
            n.core.configs.pending().ranges.len(),
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_down_30_s_stays_a_member_under_the_default_eviction_threshold() {
    // The default threshold; short epochs so that many epochs end while V is down.
    let params = Params {
        f: 1,
        epoch_length_ms: 3_000,
        lease_ms: 4_000,
        ..Params::default()
    };
    let mut c = Cluster::start_honest(5, params).await;
    let v = outside_ms(&c);
    let vi = c.index_of(&v);
    let client = c.client(Duration::from_secs(5));
    let owner = client.owner_key().unwrap();
    let objects = write(&client, "restart", 16).await;
    let position = c
        .node(vi)
        .unwrap()
        .core
        .configs
        .current()
        .member(&v)
        .unwrap()
        .ring_position;
    let left_at = c.node(vi).unwrap().core.configs.epoch();

    c.crash(vi).await;
    let down = Instant::now();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let during = newest(&c, &client).await;
    assert!(
        during.epoch() >= left_at + 5,
        "too few epochs ended while V was down ({left_at} → {})",
        during.epoch()
    );
    for e in left_at..=during.epoch() {
        assert!(
            cert_of(&c, &client, e).await.member(&v).is_some(),
            "V was evicted in epoch {e} while down for a 30 s restart (PROTOCOL.md: eviction \
             is for nodes that are gone, not for restarts)"
        );
    }
    c.restart(vi).await;
    eprintln!(
        "V back after {:.1} s down; epochs {left_at} → {} passed meanwhile",
        down.elapsed().as_secs_f64(),
        during.epoch()
    );
    let cfg = wait_serving_as_member(
        &c,
        vi,
        Duration::from_secs(60),
        "after a restart",
        async || {},
    )
    .await;
    assert_eq!(
        cfg.member(&v).unwrap().ring_position,
        position,
        "V never left, so it keeps its ring position"
    );
    // Its data: V itself answers with every object of its groups, and so do quorums.
    let mut held = 0;
    for (name, value) in &objects {
        let id = ObjectId::owned(&owner, name.as_bytes());
        if cfg.group(&id).contains(&v) {
            let got = read_current(&c, vi, &client, &owner, name).await;
            assert_eq!(got.unwrap(), Some(value.clone()), "{name} read from V");
            held += 1;
        }
        assert_eq!(
            &client
                .get(&owner, name.as_bytes())
                .await
                .unwrap()
                .unwrap()
                .value,
            value
        );
    }
    assert!(held > 0, "no object has V in its group");
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_node_rejoins_by_itself_and_serves_its_objects_again() {
    let mut params = test_params(1);
    set_evict_after(&mut params, 3_000);
    let mut c = Cluster::start_honest(5, params).await;
    let v = outside_ms(&c);
    let vi = c.index_of(&v);
    let client = c.client(Duration::from_secs(5));
    let owner = client.owner_key().unwrap();
    let mut objects = write(&client, "evicted", 16).await;
    let old_position = c
        .node(vi)
        .unwrap()
        .core
        .configs
        .current()
        .member(&v)
        .unwrap()
        .ring_position;

    c.crash(vi).await;
    let down = Instant::now();
    // The MS evicts V: a configuration without it.
    let evicted_in = loop {
        let cfg = newest(&c, &client).await;
        if cfg.member(&v).is_none() {
            break cfg.epoch();
        }
        assert!(
            down.elapsed() < Duration::from_secs(40),
            "V was not evicted (threshold 3 s)"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!(
        "V evicted in epoch {evicted_in}, {:.1} s after it went down",
        down.elapsed().as_secs_f64()
    );
    // While V is away: half of its objects get new values, and new objects are written.
    // V's store keeps the old values; it must never answer with them once it is back.
    let stale: BTreeMap<String, Vec<u8>> = objects
        .iter()
        .step_by(2)
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    for name in stale.keys() {
        let value = format!("{name} rewritten while V was out").into_bytes();
        client.put(name.as_bytes(), value.clone()).await.unwrap();
        objects.insert(name.clone(), value);
    }
    objects.extend(write(&client, "while-out", 8).await);

    c.restart(vi).await;
    let back = Instant::now();
    // Until V serves again, whatever it answers for the current epoch is current.
    let checker = c.client(Duration::from_secs(2));
    let cfg = wait_serving_as_member(
        &c,
        vi,
        Duration::from_secs(90),
        "rejoin after an eviction",
        async || {
            let Some(n) = c.node(vi) else { return };
            let e = n.core.configs.epoch();
            for name in stale.keys().take(4) {
                if let Ok(Some(got)) = read_from(&checker, v, e, &owner, name).await {
                    assert_eq!(
                        Some(&got),
                        objects.get(name),
                        "V answered {name} with the value its store held before the eviction"
                    );
                }
            }
        },
    )
    .await;
    eprintln!(
        "V rejoined and took its ranges over {:.1} s after its restart (epoch {})",
        back.elapsed().as_secs_f64(),
        cfg.epoch()
    );
    // Readmitted after the eviction, with a new ring position.
    assert!(cfg.epoch() > evicted_in + 1);
    let position = cfg.member(&v).unwrap().ring_position;
    assert_ne!(
        position, old_position,
        "a rejoining node gets a new ring position"
    );
    // V answers with the current value of every object of its groups, including those
    // written or rewritten while it was away; quorum reads agree. (The client last saw a
    // configuration without V.)
    client.refresh_config().await;
    assert!(client.config().member(&v).is_some());
    let mut held = 0;
    for (name, value) in &objects {
        let id = ObjectId::owned(&owner, name.as_bytes());
        if cfg.group(&id).contains(&v) {
            let got = read_current(&c, vi, &client, &owner, name).await;
            assert_eq!(got.unwrap(), Some(value.clone()), "{name} read from V");
            held += 1;
        }
        assert_eq!(
            &client
                .get(&owner, name.as_bytes())
                .await
                .unwrap()
                .unwrap()
                .value,
            value
        );
    }
    assert!(held > 0, "no object has V in its group");
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_after_it_adopted_its_eviction_still_rejoins_by_itself() {
    // A restart during the rejoin (a crash loop, a container restart, an upgrade right
    // after the node came back) must not cost an admin action: the node finds at start-up
    // that its newest configuration does not list it, but an older one it stored did.
    let mut params = test_params(1);
    set_evict_after(&mut params, 3_000);
    let mut c = Cluster::start_honest(5, params).await;
    let v = outside_ms(&c);
    let vi = c.index_of(&v);
    let client = c.client(Duration::from_secs(5));
    let owner = client.owner_key().unwrap();
    let mut objects = write(&client, "restarted", 12).await;

    c.crash(vi).await;
    let down = Instant::now();
    let evicted_in = loop {
        let cfg = newest(&c, &client).await;
        if cfg.member(&v).is_none() {
            break cfg.epoch();
        }
        assert!(
            down.elapsed() < Duration::from_secs(40),
            "V was not evicted (threshold 3 s)"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!(
        "V evicted in epoch {evicted_in}, {:.1} s after it went down",
        down.elapsed().as_secs_f64()
    );
    for name in objects.keys().step_by(2).cloned().collect::<Vec<_>>() {
        let value = format!("{name} rewritten while V was out").into_bytes();
        client.put(name.as_bytes(), value.clone()).await.unwrap();
        objects.insert(name, value);
    }

    // V comes back first without its AddCert at hand, so it cannot rejoin: it adopts the
    // configuration that evicted it and stays outside (what a node that crashes again
    // before its rejoin completes has on disk).
    let mut p = c.restart_params(vi).await;
    p.add_cert = None;
    p.genesis_adds.retain(|a| a.node_id() != v);
    let n = dbqs_server::node::start(p)
        .await
        .expect("V restarts as a member");
    c.put_back(vi, n);
    let outside = Instant::now();
    loop {
        let cfg = c.node(vi).unwrap().core.configs.current();
        if cfg.epoch() >= evicted_in && cfg.member(&v).is_none() {
            break;
        }
        assert!(
            outside.elapsed() < Duration::from_secs(40),
            "V did not adopt the configuration that evicted it (it is in epoch {})",
            cfg.epoch()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stored = c.node(vi).unwrap().core.configs.epoch();
    assert!(
        c.node(vi)
            .unwrap()
            .core
            .configs
            .current()
            .member(&v)
            .is_none()
    );

    // Now it restarts with its AddCert: it must start, and rejoin by itself.
    c.crash(vi).await;
    // The crashed node's accept loop (status_tls::accept) lets its listener go only when
    // the next connection arrives, and nobody probes a non-member: knock once so that
    // the port can be bound again.
    let addr = c.config.member(&v).unwrap().address.clone();
    let _ = tokio::net::TcpStream::connect(&addr).await;
    let back = Instant::now();
    c.restart(vi).await;
    eprintln!("V restarted outside the configuration (stored epoch {stored})");
    let checker = c.client(Duration::from_secs(2));
    let cfg = wait_serving_as_member(
        &c,
        vi,
        Duration::from_secs(90),
        "rejoin after a restart outside the configuration",
        async || {
            let Some(n) = c.node(vi) else { return };
            let e = n.core.configs.epoch();
            for (name, value) in objects.iter().take(4) {
                if let Ok(Some(got)) = read_from(&checker, v, e, &owner, name).await {
                    assert_eq!(&got, value, "V answered {name} with a stale value");
                }
            }
        },
    )
    .await;
    eprintln!(
        "V rejoined and took its ranges over {:.1} s after the second restart (epoch {})",
        back.elapsed().as_secs_f64(),
        cfg.epoch()
    );
    assert!(cfg.epoch() > stored);
    client.refresh_config().await;
    let mut held = 0;
    for (name, value) in &objects {
        let id = ObjectId::owned(&owner, name.as_bytes());
        if cfg.group(&id).contains(&v) {
            let got = read_current(&c, vi, &client, &owner, name).await;
            assert_eq!(got.unwrap(), Some(value.clone()), "{name} read from V");
            held += 1;
        }
    }
    assert!(held > 0, "no object has V in its group");
    c.stop_all().await;
}
