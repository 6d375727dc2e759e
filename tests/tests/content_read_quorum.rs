//! Content reads return bytes only once q replicas hold them (issue 20, defect 5;
//! PROTOCOL.md, "dBQS storage", Content objects): "a read takes bytes from any reply that
//! hashes right, and returns them only once q replicas hold them (those that had them,
//! plus a write-back that reached the rest); it answers 'not found' only after q replicas
//! said they do not have it."
//!
//! The set-up is the one of the issue: a `put_blob` that failed after reaching one replica
//! A of the group {A, B, C, D} (f = 1, q = 3). D is the group's one Byzantine replica: it
//! acknowledges writes without storing them. B and C are unreachable during the first read
//! (crashed, their stores intact) and back for the later ones, during which A is down. A
//! read that returned the bytes while fewer than q replicas held them would be followed by
//! a "not found" from B, C and D. Then, with D down, a read meets A, B and C: it returns
//! the bytes once its write-back made B and C hold them, and every later read finds them.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use dbqs_client::Client;
use dbqs_common::object::StoredObject;
use dbqs_common::{ActiveConfig, NodeId, ObjectId};
use dbqs_proto::v1 as pb;
use dbqs_server::byzantine::Behaviour;
use dbqs_tests::Cluster;

/// The correct replicas of the group whose store holds `id`: running ones as their store
/// says now, crashed ones as it said when they crashed (`down`; their disk is intact).
fn holders(
    c: &Cluster,
    group: &[NodeId],
    id: &ObjectId,
    down: &HashMap<NodeId, bool>,
) -> Vec<NodeId> {
    group
        .iter()
        .filter(|n| c.behaviour(n) == Behaviour::Honest)
        .filter(|n| match c.node(c.index_of(n)) {
            Some(r) => holds(r, id),
            None => down.get(n).copied().unwrap_or(false),
        })
        .copied()
        .collect()
}

fn holds(r: &dbqs_server::node::RunningNode, id: &ObjectId) -> bool {
    matches!(r.core.store.get(id), Ok(Some(StoredObject::Content(_))))
}

/// Crashes `n`, remembering whether its store held `id`.
async fn crash(c: &mut Cluster, n: NodeId, id: &ObjectId, down: &mut HashMap<NodeId, bool>) {
    let held = c.node(c.index_of(&n)).is_some_and(|r| holds(r, id));
    down.insert(n, held);
    c.crash_id(&n).await;
}

/// Restarts `n` and waits until every running node serves.
async fn restart(c: &mut Cluster, n: NodeId, down: &mut HashMap<NodeId, bool>) {
    down.remove(&n);
    c.restart(c.index_of(&n)).await;
    c.wait_serving(Duration::from_secs(20)).await;
}

/// The reads so far, the rule's violations among them, and the crashed replicas.
#[derive(Default)]
struct History {
    returned: bool,
    violations: Vec<String>,
    down: HashMap<NodeId, bool>,
}

/// One read, checked against the rule: bytes only if q replicas hold them once the
/// read returns, and never "not found" after the bytes were returned once.
async fn read_checked(
    c: &Cluster,
    reader: &Client,
    (group, id, bytes): (&[NodeId], ObjectId, &[u8]),
    h: &mut History,
    label: &str,
) {
    let q = reader.config().quorum();
    match reader.get_blob(id).await {
        Ok(Some(b)) => {
            assert_eq!(b, bytes, "{label}: wrong bytes");
            let held = holders(c, group, &id, &h.down);
            if held.len() < q {
                h.violations.push(format!(
                    "{label}: get_blob returned the bytes while only {} correct replicas of \
                     the group hold them (q = {q}): {held:?}",
                    held.len()
                ));
            }
            eprintln!("{label}: returned the bytes; held by {held:?}");
            h.returned = true;
        }
        Ok(None) if h.returned => h.violations.push(format!(
            "{label}: \"not found\" after an earlier read returned the bytes"
        )),
        Ok(None) => eprintln!("{label}: not found (no read returned the bytes yet)"),
        Err(e) => eprintln!("{label}: read failed (allowed): {e}"),
    }
}

struct Picked {
    bytes: Vec<u8>,
    id: ObjectId,
    group: Vec<NodeId>,
    a: NodeId,
    b: NodeId,
    c: NodeId,
    d: NodeId,
}

/// Content whose group {A, B, C, D} has two non-MS members, B and C.
fn pick(cfg: &ActiveConfig) -> Picked {
    let ms: BTreeSet<NodeId> = cfg.config.ms_members.iter().copied().collect();
    let (bytes, id, group) = (0u32..10_000)
        .map(|i| format!("blob {i}").into_bytes())
        .map(|b| {
            let id = ObjectId::content(&b);
            (b, id, cfg.group(&id))
        })
        .find(|(_, _, g)| g.iter().filter(|n| !ms.contains(n)).count() >= 2)
        .expect("no content id with two non-MS members in its group");
    let outside: Vec<NodeId> = group
        .iter()
        .filter(|n| !ms.contains(n))
        .copied()
        .take(2)
        .collect();
    let rest: Vec<NodeId> = group
        .iter()
        .filter(|n| !outside.contains(n))
        .copied()
        .collect();
    Picked {
        bytes,
        id,
        a: rest[0],
        b: outside[0],
        c: outside[1],
        d: rest[1],
        group,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_content_object_held_by_fewer_than_q_is_never_returned_then_not_found() {
    // Seven nodes: four MS members (f_ms = 1), so a group can have two non-MS members,
    // and crashing those two leaves the MS (and so every lease) running. D, Byzantine,
    // is chosen once the ring is known.
    let mut picked = None;
    let mut c = Cluster::start_with(7, 1, |cfg| {
        let p = pick(cfg);
        let d = p.d;
        picked = Some(p);
        HashMap::from([(d, Behaviour::WrongValue)])
    })
    .await;
    let Picked {
        bytes,
        id,
        group,
        a,
        b,
        c: cc,
        d,
    } = picked.expect("picked");
    assert_eq!(c.behaviour(&d), Behaviour::WrongValue);

    let reader = c.client(Duration::from_secs(3));
    // A failed put_blob that reached A only.
    reader
        .storage(a)
        .unwrap()
        .write(pb::WriteRequest {
            epoch: c.config.epoch(),
            object: Some(pb::write_request::Object::Content(bytes.clone())),
        })
        .await
        .unwrap();
    assert_eq!(holders(&c, &group, &id, &HashMap::new()), vec![a]);
    // The reader holds a lease before B and C go away.
    assert!(reader.get_blob(ObjectId::content(b"warm-up")).await.is_ok());

    let mut h = History::default();
    let obj = (&group[..], id, &bytes[..]);
    // Read 1: B and C unreachable; A has the bytes, D says it has none.
    crash(&mut c, b, &id, &mut h.down).await;
    crash(&mut c, cc, &id, &mut h.down).await;
    read_checked(&c, &reader, obj, &mut h, "read 1").await;
    // Read 2: B and C back, A down. B, C and D form the quorum.
    restart(&mut c, b, &mut h.down).await;
    restart(&mut c, cc, &mut h.down).await;
    crash(&mut c, a, &id, &mut h.down).await;
    read_checked(&c, &reader, obj, &mut h, "read 2").await;
    // Read 3: A back; whichever three answer first decide.
    restart(&mut c, a, &mut h.down).await;
    read_checked(&c, &reader, obj, &mut h, "read 3").await;
    // Read 4: D down, so A answers; its write-back reaches B and C, which makes q.
    crash(&mut c, d, &id, &mut h.down).await;
    read_checked(&c, &reader, obj, &mut h, "read 4").await;
    let read4 = h.returned;
    // Read 5: A down again, D back: B and C now hold the bytes.
    restart(&mut c, d, &mut h.down).await;
    crash(&mut c, a, &id, &mut h.down).await;
    read_checked(&c, &reader, obj, &mut h, "read 5").await;
    c.stop_all().await;
    assert!(h.violations.is_empty(), "{:#?}", h.violations);
    assert!(
        read4,
        "read 4 did not return the bytes although A had them and B, C were up"
    );
}
