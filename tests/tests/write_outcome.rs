//! What a replica answers to a write (issue 20, item 7b; PROTOCOL.md, "dBQS storage",
//! Write): it acknowledges a validly signed version at least as high as the stored one
//! (telling "stored" from "already held"), stores it only if higher, and answers a lower
//! one "older" with the stored owner-signed header, never an acknowledgement.

use std::time::Duration;

use dbqs_common::{ObjectId, OwnedHeader, OwnedValue, Timestamp};
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
    let lower = lower.unwrap();
    assert_eq!(stored.outcome(), pb::WriteOutcome::Stored);
    assert_eq!(equal.outcome(), pb::WriteOutcome::AlreadyHeld);
    assert_eq!(lower.outcome(), pb::WriteOutcome::Older);
    assert_eq!((stored.stored_header, equal.stored_header), (None, None));
    // "Older" carries the stored owner-signed header, and the replica kept v2.
    let shown = OwnedHeader::from_proto(&lower.stored_header.unwrap()).unwrap();
    assert_eq!(shown, v2.header);
    let r = s
        .read(pb::ReadRequest {
            epoch,
            object_id: v1.header.id.0.to_vec(),
            kind: pb::ObjectKind::Owned as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.object, Some(pb::read_reply::Object::Owned(v2.to_proto())));

    // Content objects: stored once, then already held.
    let blob = b"content".to_vec();
    let bid = ObjectId::content(&blob);
    let mut s = c.storage(c.config().group(&bid)[0]).unwrap();
    let req = pb::WriteRequest {
        epoch,
        object: Some(pb::write_request::Object::Content(blob)),
    };
    let first = s.write(req.clone()).await.unwrap().into_inner();
    let again = s.write(req).await.unwrap().into_inner();
    assert_eq!(first.outcome(), pb::WriteOutcome::Stored);
    assert_eq!(again.outcome(), pb::WriteOutcome::AlreadyHeld);

    // The client never counts "older" as an acknowledgement: with v2 on every replica,
    // a put still goes through (phase 1 reads v2), and the stored version only rises.
    for n in c.config().group(&v1.header.id) {
        c.storage(n)
            .unwrap()
            .write(owned_req(epoch, &v2))
            .await
            .unwrap();
    }
    let receipt = c.put(b"k", b"three".to_vec()).await.unwrap();
    assert_eq!(receipt.timestamp.counter, 3);
    assert_eq!(receipt.superseded_by, None);
    cluster.stop_all().await;
}
