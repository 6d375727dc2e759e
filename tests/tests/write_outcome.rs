//! What a replica answers to a write (issue 20, item 7b; PROTOCOL.md, "dBQS storage",
//! Write): it acknowledges a validly signed version at least as high as the stored one
//! (telling "stored" from "already held"), stores it only if higher, and answers a lower
//! one "older" with the stored owner-signed header, never an acknowledgement.

use std::time::Duration;

use dbqs_common::{OwnedValue, Timestamp};
use dbqs_proto::v1 as pb;
use dbqs_tests::Cluster;

fn owned_req(epoch: u64, v: &OwnedValue) -> pb::WriteRequest {
    pb::WriteRequest {
        epoch,
        object: Some(pb::write_request::Object::Owned(v.to_proto())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_tells_stored_from_held_from_older() {
    let mut cluster = Cluster::start(4, 1).await;
    let c = cluster.client(Duration::from_secs(3));
    let owner = cluster.genesis.client.owner.clone();
    let epoch = c.config().epoch();
    let ts = |counter| Timestamp {
        counter,
        writer: [1; 32],
    };
    let v1 = OwnedValue::sign(&owner, b"k", ts(1), b"one".to_vec());
    let v2 = OwnedValue::sign(&owner, b"k", ts(2), b"two".to_vec());
    let node = c.config().group(&v1.header.id)[0];
    let mut s = c.storage(node).unwrap();

    let stored = s.write(owned_req(epoch, &v2)).await.unwrap().into_inner();
    let equal = s.write(owned_req(epoch, &v2)).await.unwrap().into_inner();
    let lower = s.write(owned_req(epoch, &v1)).await;
    let lower = lower.map(|r| r.into_inner());
    assert_ne!(stored, equal, "stored and already held look the same");
    assert!(
        lower.as_ref().is_ok_and(|l| *l != equal),
        "a write below the stored version is answered like one that is already held: {lower:?}"
    );
    cluster.stop_all().await;
}
