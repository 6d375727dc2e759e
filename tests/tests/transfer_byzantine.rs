//! State transfer with Byzantine replicas (issue [D], point 3): a faulty old replica
//! cannot make a new replica store a forged or rolled-back object or skip a range, and a
//! faulty new replica cannot make old replicas delete a range early.
//!
//! Each test runs a real faulty node (`dbqs_server::byzantine::Behaviour`, lying on
//! `ListRange`, `FetchObjects` and `RangeStatus`), checks over RPC that it really lies,
//! then checks the stores of the nodes involved directly.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use dbqs_common::certs::AddCert;
use dbqs_common::config::Params;
use dbqs_common::object::{StoredObject, verify_content};
use dbqs_common::tls::IssuedCert;
use dbqs_common::{ActiveConfig, ConfigCert, KeyPair, NodeId, ObjectId, OwnedValue};
use dbqs_proto::v1 as pb;
use dbqs_server::byzantine::Behaviour;
use dbqs_server::ms_host::MsBehaviour;
use dbqs_server::node::{self, NodeParams, RunningNode};
use dbqs_server::peers::PeerChannels;
use dbqs_server::transfer::plan::{self, Range};
use dbqs_tests::{Cluster, test_params};

const FAR_FUTURE_MS: u64 = 4_102_444_800_000;
const TIMEOUT: Duration = Duration::from_secs(5);

/// Short epochs, so admissions and ring placements take about a second each.
fn params() -> Params {
    Params {
        epoch_length_ms: 1_000,
        ..test_params(1)
    }
}

/// The latest acknowledged version of each object written.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Latest {
    Owned(Vec<u8>),
    Content(Vec<u8>),
}

/// Writes `names` owned objects in `versions` versions each (every put acknowledged)
/// and a few content objects; returns the latest version of each.
async fn write_objects(c: &Cluster, names: usize, versions: usize) -> BTreeMap<ObjectId, Latest> {
    let client = c.client(TIMEOUT);
    let owner = client.owner_key().unwrap();
    let mut latest = BTreeMap::new();
    for v in 0..versions {
        for k in 0..names {
            let name = format!("obj-{k}");
            let value = format!("{name} version {v}").into_bytes();
            client
                .put(name.as_bytes(), value.clone())
                .await
                .unwrap_or_else(|e| panic!("put {name} version {v}: {e}"));
            latest.insert(
                ObjectId::owned(&owner, name.as_bytes()),
                Latest::Owned(value),
            );
        }
    }
    for k in 0..6u8 {
        let blob = vec![k; 300 + k as usize];
        let id = client.put_blob(blob.clone()).await.expect("put blob");
        latest.insert(id, Latest::Content(blob));
    }
    latest
}

/// A node to be added: its key, certificate, address and listener (None while it is
/// down: connections to it are refused).
struct NewNode {
    key: KeyPair,
    tls: IssuedCert,
    addr: SocketAddr,
    listener: Option<TcpListener>,
}

fn new_node(c: &Cluster) -> NewNode {
    let key = KeyPair::generate();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let tls = c.issue_node_tls(&key);
    NewNode {
        key,
        tls,
        addr: listener.local_addr().unwrap(),
        listener: Some(listener),
    }
}

/// Submits the node's AddCert to the MS; returns the epoch that admits it.
async fn submit_add(c: &Cluster, n: &NewNode, serial: u64) -> u64 {
    let client = c.client(TIMEOUT);
    let mut stub = client.membership(c.config.config.ms_members[0]).unwrap();
    let add = AddCert::issue(
        &c.genesis.authority,
        n.key.public(),
        n.tls.hash(),
        [serial as u8; 32],
        n.addr.to_string(),
        serial,
        FAR_FUTURE_MS,
    );
    let r = stub
        .submit(pb::SubmitRequest {
            cert: Some(pb::submit_request::Cert::Add(add.encode())),
        })
        .await
        .unwrap()
        .into_inner();
    r.epoch + 1
}

/// The verified configuration of `epoch`, as `from` holds it.
fn config_at(c: &Cluster, from: &RunningNode, epoch: u64) -> ActiveConfig {
    let cert = from
        .core
        .configs
        .get(epoch)
        .unwrap()
        .unwrap_or_else(|| panic!("no configuration of epoch {epoch}"));
    ActiveConfig::verify(cert, &c.genesis.ms_public_key).unwrap()
}

/// Starts an added node from `cert` (a configuration that includes it) with `behaviour`
/// (like `Cluster::start_joined`, which starts honest nodes only).
async fn start_added(
    c: &Cluster,
    n: NewNode,
    cert: ConfigCert,
    behaviour: Behaviour,
    name: &str,
) -> RunningNode {
    let listener = match n.listener {
        Some(l) => l,
        None => rebind(n.addr).await,
    };
    node::start(NodeParams {
        key: n.key,
        tls_cert_pem: n.tls.cert_pem.clone(),
        tls_key_pem: n.tls.key_pem.clone(),
        ca_pem: c.genesis.ca.cert_pem.clone(),
        ms_key: c.genesis.ms_public_key,
        config_cert: cert,
        data_dir: c.dir.path().join(name),
        listener,
        status_listener: None,
        status_tls: false,
        behaviour,
        ms_share: None,
        ms_share_path: None,
        x25519_secret: [0; 32],
        genesis_adds: Vec::new(),
        ms_behaviour: MsBehaviour::Honest,
        join: true,
        add_cert: None,
    })
    .await
    .expect("start added node")
}

async fn rebind(addr: SocketAddr) -> TcpListener {
    for _ in 0..100 {
        if let Ok(l) = TcpListener::bind(addr) {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("cannot rebind {addr}");
}

/// Whether `n` has a ring position, is past `admitted` and has taken over every range
/// it gained.
fn taken_over(n: &RunningNode, admitted: u64) -> bool {
    let cfg = n.core.configs.current();
    cfg.epoch() > admitted
        && cfg.ring().members().any(|(_, m)| *m == n.id)
        && n.core.configs.pending().is_empty()
}

async fn wait_taken_over(n: &RunningNode, admitted: u64, within: Duration) {
    let deadline = Instant::now() + within;
    while !taken_over(n, admitted) {
        assert!(
            Instant::now() < deadline,
            "node {} did not take its ranges over within {within:?} (epoch {}, {} ranges pending)",
            n.id,
            n.core.configs.epoch(),
            n.core.configs.pending().ranges.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every object in `n`'s store.
fn all_objects(n: &RunningNode) -> BTreeMap<ObjectId, StoredObject> {
    let mut out = BTreeMap::new();
    let mut after: Option<[u8; 32]> = None;
    loop {
        let (page, done) = n
            .core
            .store
            .list_range(&[0; 32], &[0; 32], after.as_ref(), 1024)
            .unwrap();
        for (id, o) in page {
            after = Some(id.0);
            out.insert(id, o);
        }
        if done {
            return out;
        }
    }
}

/// Whether `o` is exactly the latest acknowledged version `want` of `id`, validly signed.
fn is_latest(id: &ObjectId, o: &StoredObject, want: &Latest) -> bool {
    match (o, want) {
        (StoredObject::Owned(v), Latest::Owned(w)) => {
            v.header.id == *id
                && v.value == *w
                && OwnedValue::from_proto(&v.to_proto()).is_ok_and(|c| c == *v)
        }
        (StoredObject::Content(b), Latest::Content(w)) => b == w && verify_content(id, b).is_ok(),
        _ => false,
    }
}

/// `n`'s store holds exactly the latest version of every object of `latest` whose group
/// in `n`'s current configuration includes `n`, and nothing else: nothing forged,
/// nothing rolled back, nothing missing.
fn assert_holds_exactly(n: &RunningNode, latest: &BTreeMap<ObjectId, Latest>) -> usize {
    let cfg = n.core.configs.current();
    let held = all_objects(n);
    for (id, o) in &held {
        let want = latest
            .get(id)
            .unwrap_or_else(|| panic!("node holds {}, which nobody wrote", id.to_hex()));
        assert!(
            is_latest(id, o, want),
            "node holds {} in a version other than the latest acknowledged one: {o:?}",
            id.to_hex()
        );
    }
    let mut served = 0;
    for id in latest.keys() {
        if cfg.in_group(id, &n.id) {
            served += 1;
            assert!(
                held.contains_key(id),
                "node lacks {}, which it serves",
                id.to_hex()
            );
        } else {
            assert!(
                !held.contains_key(id),
                "node holds {}, which it does not serve",
                id.to_hex()
            );
        }
    }
    served
}

/// A listed version: (timestamp counter, writer, value hash); None for content.
type Version = Option<(u64, Vec<u8>, Vec<u8>)>;

fn listed_versions(r: &pb::ListRangeReply) -> BTreeMap<Vec<u8>, Version> {
    r.objects
        .iter()
        .map(|o| {
            let v = o
                .timestamp
                .as_ref()
                .map(|t| (t.counter, t.writer.clone(), o.value_hash.clone()));
            (o.object_id.clone(), v)
        })
        .collect()
}

/// A gained range as `ListRange` takes it.
fn list_request(joined: &RunningNode, r: &Range, source_epoch: u64) -> pb::ListRangeRequest {
    let cfg = joined.core.configs.current();
    pb::ListRangeRequest {
        epoch: cfg.epoch(),
        cert: Some(cfg.cert.to_proto()),
        start: r.start.to_vec(),
        end: r.end.to_vec(),
        after: Vec::new(),
        limit: 1024,
        source_epoch,
    }
}

/// Asks the faulty node directly, as the joined node, for range `r` of `source`'s group,
/// next to an honest source, and checks that it lies the way `mode` says.
async fn assert_source_lies(
    mode: Behaviour,
    as_joined: &PeerChannels,
    joined: &RunningNode,
    faulty: &dbqs_common::config::Member,
    honest: &dbqs_common::config::Member,
    r: &Range,
    source_epoch: u64,
) {
    let list = |m: &dbqs_common::config::Member| {
        let mut s = as_joined.storage(m).unwrap();
        let req = list_request(joined, r, source_epoch);
        async move { s.list_range(req).await.unwrap().into_inner() }
    };
    let fetch = |m: &dbqs_common::config::Member, ids: Vec<Vec<u8>>| {
        let mut s = as_joined.storage(m).unwrap();
        let epoch = joined.core.configs.epoch();
        async move {
            s.fetch_objects(pb::FetchObjectsRequest {
                epoch,
                ids,
                source_epoch,
            })
            .await
            .unwrap()
            .into_inner()
            .objects
        }
    };
    let h = list(honest).await;
    assert!(h.done && !h.objects.is_empty(), "{mode}: honest listing");
    let hv = listed_versions(&h);
    let f = list(faulty).await;
    let fv = listed_versions(&f);
    let ids: Vec<Vec<u8>> = hv.keys().cloned().collect();
    let bodies = fetch(faulty, ids.clone()).await;
    let owned = |o: &pb::FetchedObject| match &o.object {
        Some(pb::fetched_object::Object::Owned(v)) => Some(v.clone()),
        _ => None,
    };
    // Replicas may each have missed a version (a write refused at an epoch change), so
    // the listings are compared id by id, on the ids both list.
    let common: Vec<&Vec<u8>> = fv.keys().filter(|id| hv.contains_key(*id)).collect();
    let counter = |v: &Version| v.as_ref().map_or(0, |(c, _, _)| *c);
    match mode {
        Behaviour::WrongValue => {
            // What it saw, listed above every real version; bodies to match that fail
            // the owner's signature.
            assert!(!common.is_empty(), "{mode}: listing {fv:?}");
            for id in &common {
                assert!(counter(&fv[*id]) > counter(&hv[*id]), "{mode}: not raised");
            }
            assert!(!bodies.is_empty());
            for b in &bodies {
                let v = owned(b).expect("owned body");
                assert!(OwnedValue::from_proto(&v).is_err(), "{mode}: valid body");
            }
        }
        Behaviour::Stale => {
            // Older versions listed and served (validly signed).
            assert!(!common.is_empty(), "{mode}: listing {fv:?}");
            assert!(common.iter().all(|id| fv[*id] <= hv[*id]));
            assert!(
                common.iter().any(|id| fv[*id] < hv[*id]),
                "{mode}: no rollback"
            );
            let mut older = 0;
            for b in &bodies {
                if let Some(v) = owned(b) {
                    let v = OwnedValue::from_proto(&v).expect("stale bodies are signed");
                    older += usize::from(v.header.timestamp.counter < counter(&hv[&b.object_id]));
                }
            }
            assert!(older > 0, "{mode}: no older body served");
        }
        Behaviour::BadSignature => {
            // Every body it serves is forged.
            assert!(!bodies.is_empty());
            for b in &bodies {
                match &b.object {
                    Some(pb::fetched_object::Object::Owned(v)) => {
                        assert!(OwnedValue::from_proto(v).is_err(), "{mode}: valid body")
                    }
                    Some(pb::fetched_object::Object::Content(c)) => {
                        let id = ObjectId(b.object_id.as_slice().try_into().unwrap());
                        assert!(verify_content(&id, c).is_err(), "{mode}: valid content")
                    }
                    None => panic!("{mode}: empty body"),
                }
            }
        }
        Behaviour::Equivocate => {
            // Listed as stored, served as first seen: valid bodies, not the listed
            // version.
            let mut swapped = 0;
            for b in &bodies {
                if let (Some(v), Some(listed)) = (owned(b), fv.get(&b.object_id)) {
                    let v = OwnedValue::from_proto(&v).expect("signed");
                    swapped += usize::from(v.header.timestamp.counter < counter(listed));
                }
            }
            assert!(swapped > 0, "{mode}: no body swapped");
        }
        Behaviour::SkipRange => {
            assert!(f.objects.is_empty() && f.done, "{mode}: {f:?}");
            assert!(bodies.is_empty(), "{mode}: served bodies");
        }
        _ => unreachable!(),
    }
}

/// One old replica of every group is faulty (`mode`); a node joins and takes its ranges
/// over from the old groups. It must end up with exactly the latest acknowledged version
/// of every object it serves: nothing forged, nothing rolled back, nothing skipped.
async fn faulty_old_source(mode: Behaviour) {
    let mut c = Cluster::start_full(
        4,
        params(),
        |cfg| {
            let faulty = cfg.ring().members().next().unwrap().1;
            HashMap::from([(faulty, mode)])
        },
        |_| HashMap::new(),
    )
    .await;
    let faulty = c
        .genesis
        .nodes
        .iter()
        .map(|m| m.node_id())
        .find(|n| c.behaviour(n) == mode)
        .unwrap();
    let latest = write_objects(&c, 40, 3).await;

    let n = new_node(&c);
    let tls = n.tls.clone();
    let admitted = submit_add(&c, &n, 5_000).await;
    c.wait_epoch(admitted, Duration::from_secs(20)).await;
    let cert = c
        .node(0)
        .unwrap()
        .core
        .configs
        .get(admitted)
        .unwrap()
        .unwrap();
    let started = Instant::now();
    let joined = start_added(&c, n, cert, Behaviour::Honest, "joined").await;
    wait_taken_over(&joined, admitted, Duration::from_secs(30)).await;
    let took = started.elapsed();

    // The ranges it gained, and whether the faulty node was among the q sources of
    // some of them (the first q of the source group, in group order, all answering).
    let source = config_at(&c, &joined, admitted);
    let placed = config_at(&c, &joined, admitted + 1);
    let gained = plan::next_pending(&source, &placed, &joined.id, &plan::Pending::default());
    assert!(!gained.is_empty());
    let q = source.quorum();
    let (mut consulted, mut consulted_owned, mut asked_first) = (0, 0, 0);
    for r in gained.ranges.keys() {
        let order: Vec<NodeId> = source.group(&ObjectId(r.end));
        let objects = latest.keys().filter(|id| r.contains(&id.0)).count();
        if order[..q].contains(&faulty) {
            consulted += objects;
            consulted_owned += latest
                .iter()
                .filter(|(id, l)| r.contains(&id.0) && matches!(l, Latest::Owned(_)))
                .count();
        }
        if order[0] == faulty {
            asked_first += objects;
        }
    }
    assert!(
        consulted > 0,
        "{mode}: the faulty node was not a source of any object"
    );

    let served = assert_holds_exactly(&joined, &latest);
    assert!(served > 0);
    let bad = joined.core.transfer.bad_bodies.load(Ordering::Relaxed);
    match mode {
        // Its forged versions are listed highest, so they are fetched first.
        Behaviour::WrongValue if consulted_owned > 0 => {
            assert!(bad > 0, "{mode}: no forged body was rejected")
        }
        Behaviour::BadSignature if asked_first > 0 => {
            assert!(bad > 0, "{mode}: no forged body was rejected")
        }
        _ => {}
    }

    // The faulty node really lies on a gained range it still serves (so it has not
    // deleted it), next to an honest source that also still serves it.
    let cfg = joined.core.configs.current();
    let (r, _) = gained
        .ranges
        .keys()
        .filter(|r| cfg.in_group(&ObjectId(r.end), &faulty))
        .map(|r| (r, latest.keys().filter(|id| r.contains(&id.0)).count()))
        .max_by_key(|(_, k)| *k)
        .expect("a gained range the faulty node still serves");
    let honest = cfg
        .group(&ObjectId(r.end))
        .into_iter()
        .find(|n| *n != faulty && *n != joined.id)
        .unwrap();
    let as_joined = PeerChannels::new(&c.genesis.ca.cert_pem, &tls.cert_pem, &tls.key_pem, TIMEOUT);
    assert_source_lies(
        mode,
        &as_joined,
        &joined,
        cfg.member(&faulty).unwrap(),
        cfg.member(&honest).unwrap(),
        r,
        admitted,
    )
    .await;
    eprintln!(
        "{mode}: joined node took over {served} objects ({} stored, {bad} forged bodies rejected, faulty source of {consulted}, asked first for {asked_first}) in {:.1} s",
        joined.core.transfer.objects_stored.load(Ordering::Relaxed),
        took.as_secs_f64()
    );
    joined.stop().await;
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_value_source_cannot_inject_forged_versions() {
    faulty_old_source(Behaviour::WrongValue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_source_cannot_roll_objects_back() {
    faulty_old_source(Behaviour::Stale).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signature_source_cannot_inject_forged_bodies() {
    faulty_old_source(Behaviour::BadSignature).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equivocating_source_cannot_swap_in_older_bodies() {
    faulty_old_source(Behaviour::Equivocate).await;
}

/// A source that answers every listing with an empty page marked done (it claims to hold
/// nothing): the other sources' listings still bring every object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_claiming_done_early_does_not_make_the_new_node_skip_objects() {
    faulty_old_source(Behaviour::SkipRange).await;
}

/// Two nodes are added: B, faulty (`skip-range`: it reports every range completely
/// held), and N, correct but down (connections refused) until B's lie has had several
/// clean-up rounds to work, so N cannot finish. The old
/// replicas that lost ranges of N's groups keep them while N has not taken them over,
/// even where B and the old replicas still in the group make 2f+1 reports of "complete";
/// they delete them only after N has taken them over, and N gets every object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lying_new_replica_cannot_make_old_replicas_delete_early() {
    let gc = Duration::from_millis(dbqs_server::transfer::GC_INTERVAL_MS);
    let mut c = Cluster::start_full(
        4,
        Params {
            // N stays down for a while: it must not be evicted meanwhile.
            evict_after_ms: u64::MAX,
            ..params()
        },
        |_| HashMap::new(),
        |_| HashMap::new(),
    )
    .await;
    let latest = write_objects(&c, 60, 2).await;
    // Whether old replica `i` holds a copy of `id` (it may have missed a version at an
    // epoch change: the latest is checked on N).
    let holds = |i: usize, id: &ObjectId| c.node(i).unwrap().core.store.get(id).unwrap().is_some();
    // The copies before any ring change (a replica that missed every version of an
    // object has none).
    let mut present = BTreeSet::new();
    for i in 0..c.len() {
        present.extend(latest.keys().filter(|id| holds(i, id)).map(|id| (i, *id)));
    }

    let b = new_node(&c);
    let mut n = new_node(&c);
    // N is down until it is started below: connections to it are refused.
    n.listener = None;
    let (b_id, n_id) = (b.key.node_id(), n.key.node_id());
    let b_admitted = submit_add(&c, &b, 6_000).await;
    let n_admitted = submit_add(&c, &n, 6_001).await;
    c.wait_epoch(b_admitted.max(n_admitted), Duration::from_secs(20))
        .await;
    let old = c.node(0).unwrap();
    let b_cert = old.core.configs.get(b_admitted).unwrap().unwrap();
    let n_cert = old.core.configs.get(n_admitted).unwrap().unwrap();
    let b_node = start_added(&c, b, b_cert, Behaviour::SkipRange, "b").await;

    // N is placed on the ring in `placed`; it takes its ranges from `placed - 1`.
    let placed = n_admitted + 1;
    c.wait_epoch(placed, Duration::from_secs(20)).await;
    let old = c.node(0).unwrap();
    let before = config_at(&c, old, placed - 1);
    let after = config_at(&c, old, placed);
    assert!(after.ring().members().any(|(_, m)| *m == n_id));
    let olds: Vec<NodeId> = (0..c.len()).map(|i| c.genesis.nodes[i].node_id()).collect();
    // For each object of N's groups, the old replicas that lost it (they must keep it
    // until N has taken it over); and objects lost elsewhere (their deletion shows the
    // clean-up ran).
    let mut keep: BTreeMap<ObjectId, Vec<usize>> = BTreeMap::new();
    let mut with_b = BTreeSet::new();
    let mut elsewhere: Vec<(ObjectId, usize)> = Vec::new();
    for id in latest.keys() {
        let now = after.group(id);
        let losers: Vec<usize> = before
            .group(id)
            .into_iter()
            .filter(|m| !now.contains(m))
            .filter_map(|m| olds.iter().position(|o| *o == m))
            .filter(|l| present.contains(&(*l, *id)))
            .collect();
        if now.contains(&n_id) {
            if now.contains(&b_id) && !losers.is_empty() {
                with_b.insert(*id);
            }
            keep.insert(*id, losers);
        } else {
            elsewhere.extend(losers.into_iter().map(|l| (*id, l)));
        }
    }
    let lost: usize = keep.values().map(Vec::len).sum();
    assert!(
        !with_b.is_empty(),
        "no object whose new group holds both B and N was lost by an old replica"
    );

    // B lies: any range, any epoch, "complete".
    let g = &c.genesis.nodes[0];
    let as_old = PeerChannels::new(
        &c.genesis.ca.cert_pem,
        &g.tls.cert_pem,
        &g.tls.key_pem,
        TIMEOUT,
    );
    let reply = as_old
        .storage(after.member(&b_id).unwrap())
        .unwrap()
        .range_status(pb::RangeStatusRequest {
            epoch: 999_999,
            start: vec![7; 32],
            end: vec![9; 32],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        reply.complete && reply.epoch == 999_999,
        "B does not lie: {reply:?}"
    );

    // While N is down: several clean-up rounds, and the deletion of a range lost
    // elsewhere if there is one (then the clean-up certainly ran with B's answers).
    let window = Instant::now();
    let deadline = window + Duration::from_secs(30);
    loop {
        for (id, losers) in &keep {
            for &l in losers {
                assert!(
                    holds(l, id),
                    "old replica {l} deleted {} before N took it over (after {:.1} s)",
                    id.to_hex(),
                    window.elapsed().as_secs_f64()
                );
            }
        }
        let gc_ran = elsewhere.iter().any(|(id, l)| !holds(*l, id));
        if window.elapsed() >= 3 * gc && (gc_ran || elsewhere.is_empty()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "old replicas did not delete any range lost outside N's groups"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "{lost} lost copies of {} objects in N's groups ({} also in B's) kept for {:.1} s while N was down",
        keep.len(),
        with_b.len(),
        window.elapsed().as_secs_f64()
    );

    // N starts; a lost copy may disappear only once N has taken its range over.
    let n_node = start_added(&c, n, n_cert, Behaviour::Honest, "n").await;
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let mut left = 0;
        for (id, losers) in &keep {
            for &l in losers {
                if holds(l, id) {
                    left += 1;
                } else {
                    // Read after the store: N recorded the range done before it could
                    // report it, and nothing re-adds pending ranges here.
                    let cfg = n_node.core.configs.current();
                    assert!(
                        cfg.epoch() > n_admitted
                            && cfg.ring().members().any(|(_, m)| *m == n_id)
                            && n_node.core.configs.pending().holding(id).is_none(),
                        "old replica {l} deleted {} before N took it over",
                        id.to_hex()
                    );
                }
            }
        }
        if left == 0 && taken_over(&n_node, n_admitted) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} lost copies not deleted, or N not done, within 40 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let served = assert_holds_exactly(&n_node, &latest);
    assert_eq!(served, keep.len());
    eprintln!(
        "N took over {served} objects; the old replicas then deleted their {lost} lost copies"
    );
    n_node.stop().await;
    b_node.stop().await;
    c.stop_all().await;
}
