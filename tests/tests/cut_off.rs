//! A node cut off from the MS alone (issue [H], point 6; PROTOCOL.md, "Leases"). The
//! rest of the system is fine: the MS keeps ending epochs, and it evicts the node for
//! missing its probes. The node cannot learn any of that, so it still holds the old
//! configuration, and only its lease stops it from answering old-epoch reads with a
//! value that is no longer current. PROTOCOL.md counts it against f until `lease_ms`
//! after the MS left its epoch; after that it must refuse.

use std::time::{Duration, Instant};

use dbqs_common::{NodeId, ObjectId};
use dbqs_proto::v1 as pb;
use dbqs_tests::{Cluster, test_params};
use tonic::Code;

/// How often the stale reader asks the cut-off node.
const POLL: Duration = Duration::from_millis(50);
/// How long past the bound the stale reader keeps asking.
const AFTER_BOUND: Duration = Duration::from_millis(1_500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_the_ms_alone_refuses_old_epoch_reads_once_its_lease_is_over() {
    let params = test_params(1);
    let lease_ms = params.lease_ms;
    // Five nodes, four of them the MS: one node, X, is not an MS member.
    let c = Cluster::start_honest(5, params).await;
    let ms: Vec<NodeId> = c.config.config.ms_members.clone();
    let x = c
        .genesis
        .nodes
        .iter()
        .map(|n| n.node_id())
        .find(|id| !ms.contains(id))
        .expect("a node outside the MS");
    let x_node = c.node(c.index_of(&x)).unwrap();
    let writer = c.client(Duration::from_secs(5));
    let owner = writer.owner_key().unwrap();
    let name = (0..1_000)
        .map(|i| format!("cut{i}"))
        .find(|n| {
            writer
                .config()
                .group(&ObjectId::owned(&owner, n.as_bytes()))
                .contains(&x)
        })
        .expect("no name has X in its group");
    let k = name.as_bytes();
    let id = ObjectId::owned(&owner, k);
    writer.put(k, b"v1".to_vec()).await.unwrap();

    // Cut X off just after it adopted a new epoch e: the MS is then in e, and stays there
    // for about an epoch (3 s), so it leaves e after the cut (t_leave > cut). Every lease
    // X holds comes from a nonce sent before the cut, so it ends by cut + lease_ms
    // (<= t_leave + lease_ms).
    let before = x_node.core.configs.epoch();
    let deadline = Instant::now() + Duration::from_secs(15);
    while x_node.core.configs.epoch() == before {
        assert!(Instant::now() < deadline, "X stayed in epoch {before}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let cut = Instant::now();
    x_node
        .core
        .partition()
        .expect("X has peer channels")
        .cut_off(ms.iter().copied());
    let e = x_node.core.configs.epoch();
    eprintln!("X = {} cut off from the MS in epoch {e}", x.short());

    // A reader that names epoch e, as a client with the old configuration does.
    let stale = c.client(Duration::from_secs(2));
    let read_x = || {
        let mut s = stale.storage(x).unwrap();
        async move {
            s.read(pb::ReadRequest {
                epoch: e,
                object_id: id.0.to_vec(),
                kind: pb::ObjectKind::Owned as i32,
            })
            .await
        }
    };
    // Inside the window X still serves e (the read is not vacuous).
    let first = read_x().await.expect("X serves right after the cut");
    assert_eq!(first.get_ref().epoch, e);

    // The rest moves on: every MS member leaves e, and v2 is written in the new epoch.
    let ms_nodes: Vec<_> = ms.iter().map(|m| c.node(c.index_of(m)).unwrap()).collect();
    while ms_nodes.iter().any(|n| n.core.configs.epoch() <= e) {
        assert!(
            cut.elapsed() < Duration::from_secs(15),
            "the MS did not leave epoch {e}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let left = cut.elapsed();
    writer.put(k, b"v2".to_vec()).await.unwrap();
    assert!(writer.config().epoch() > e);

    // The stale reader asks X again and again, past the bound.
    let bound = Duration::from_millis(lease_ms);
    let mut served = Vec::new();
    let mut refused = Vec::new();
    while cut.elapsed() < bound + AFTER_BOUND {
        let sent = cut.elapsed();
        match read_x().await {
            Ok(r) => {
                let value = match r.into_inner().object {
                    Some(pb::read_reply::Object::Owned(v)) => v.value,
                    other => panic!("X answered {other:?}"),
                };
                // Out of date once v2 is written: allowed only inside the window.
                assert_eq!(value, b"v1", "X cannot have v2: it never left epoch {e}");
                assert!(
                    sent < bound,
                    "X (epoch {e}) served an old-epoch read sent {sent:?} after the cut, \
                     past lease_ms = {bound:?} (the MS left {e} {left:?} after the cut)"
                );
                served.push(sent);
            }
            Err(s) => {
                assert_eq!(s.code(), Code::Unavailable, "{s:?}");
                assert!(
                    s.message().contains("no freshness lease"),
                    "X refused with {:?}",
                    s.message()
                );
                refused.push(sent);
            }
        }
        tokio::time::sleep(POLL).await;
    }
    let first_refusal = *refused.first().expect("X never refused");
    assert!(
        served.iter().all(|s| *s < first_refusal),
        "X served again after refusing"
    );
    eprintln!(
        "MS left epoch {e} {} ms after the cut; X answered {} reads, then refused from {} ms \
         after the cut (lease {lease_ms} ms, {} ms after the MS left)",
        left.as_millis(),
        served.len(),
        first_refusal.as_millis(),
        first_refusal.saturating_sub(left).as_millis()
    );
    // Only the lease stopped it: X never learned of a newer epoch, and it says it holds
    // no lease (its gRPC health follows this).
    assert_eq!(x_node.core.configs.epoch(), e);
    assert!(x_node.core.lease.check(e).is_err());

    // Reads through the up-to-date configuration keep working, and so does a client that
    // starts from the genesis configuration: its lease names the newer epoch.
    assert_eq!(writer.get(&owner, k).await.unwrap().unwrap().value, b"v2");
    let old = c.client(Duration::from_secs(5));
    assert!(old.config().epoch() < e);
    assert_eq!(old.get(&owner, k).await.unwrap().unwrap().value, b"v2");
    writer.put(k, b"v3".to_vec()).await.unwrap();
    assert_eq!(old.get(&owner, k).await.unwrap().unwrap().value, b"v3");
}
