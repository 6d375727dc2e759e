//! Malformed requests get precise errors and change nothing.

use std::time::Duration;

use dbqs_client::quorum::{CallError, EPOCH_METADATA};
use dbqs_common::object::MAX_VALUE_BYTES;
use dbqs_common::tls::ClusterCa;
use dbqs_common::{KeyPair, NodeId, ObjectId, OwnedValue, Timestamp};
use dbqs_proto::v1 as pb;
use dbqs_tests::Cluster;
use tonic::Code;

fn owned_req(epoch: u64, v: &OwnedValue) -> pb::WriteRequest {
    pb::WriteRequest {
        epoch,
        object: Some(pb::write_request::Object::Owned(v.to_proto())),
    }
}

fn ts(c: u64) -> Timestamp {
    Timestamp {
        counter: c,
        writer: [1; 32],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_rejected_precisely_and_change_nothing() {
    // Five nodes, so every object has a replica outside its group of four.
    let cluster = Cluster::start(5, 1).await;
    let c = cluster.client(Duration::from_secs(3));
    let owner = cluster.genesis.client.owner.clone();
    let cfg = c.config();
    let good = OwnedValue::sign(&owner, b"name", ts(1), b"v".to_vec());
    let id = good.header.id;
    let node = cfg.group(&id)[0];
    let mut s = c.storage(node).unwrap();

    // Bad object id length.
    let e = s
        .read(pb::ReadRequest {
            epoch: 1,
            object_id: vec![1, 2, 3],
            kind: pb::ObjectKind::Owned as i32,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("32 bytes"), "{}", e.message());

    // Read without a kind.
    let e = s
        .read(pb::ReadRequest {
            epoch: 1,
            object_id: id.0.to_vec(),
            kind: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // Forged signature.
    let mut forged = good.clone();
    forged.header.signature[5] ^= 1;
    let e = s.write(owned_req(1, &forged)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("signature"), "{}", e.message());

    // Value that does not match its signed hash.
    let mut swapped = good.clone();
    swapped.value = b"other".to_vec();
    let e = s.write(owned_req(1, &swapped)).await.unwrap_err();
    assert!(e.message().contains("hash"), "{}", e.message());

    // Someone else's key claiming our object id.
    let thief = KeyPair::generate();
    let mut stolen = OwnedValue::sign(&thief, b"name", ts(9), b"mine".to_vec());
    stolen.header.id = id;
    let e = s.write(owned_req(1, &stolen)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // Oversized value.
    let big = OwnedValue::sign(&owner, b"big", ts(1), vec![0; MAX_VALUE_BYTES + 1]);
    let big_node = cfg.group(&big.header.id)[0];
    let e = c
        .storage(big_node)
        .unwrap()
        .write(owned_req(1, &big))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("limit"), "{}", e.message());

    // Epoch 0, a stale epoch does not exist yet, a future epoch.
    let e = s.write(owned_req(0, &good)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = s.write(owned_req(7, &good)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert_eq!(e.metadata().get(EPOCH_METADATA).unwrap(), "1");
    assert!(matches!(
        CallError::from(e),
        CallError::Epoch { theirs: 1, .. }
    ));

    // A replica outside the object's group.
    let outsider: NodeId = cfg
        .config
        .members
        .iter()
        .map(|m| m.node_id())
        .find(|n| !cfg.in_group(&id, n))
        .unwrap();
    let e = c
        .storage(outsider)
        .unwrap()
        .write(owned_req(1, &good))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("not in group"), "{}", e.message());

    // Empty write.
    let e = s
        .write(pb::WriteRequest {
            epoch: 1,
            object: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // Nothing above changed anything.
    for n in cfg.group(&id) {
        let r = c
            .storage(n)
            .unwrap()
            .read(pb::ReadRequest {
                epoch: 1,
                object_id: id.0.to_vec(),
                kind: pb::ObjectKind::Owned as i32,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.object.is_none(), "a rejected write changed {n}");
    }
    // And the valid write still works.
    s.write(owned_req(1, &good)).await.unwrap();
    let content = b"abc".to_vec();
    let cid = ObjectId::content(&content);
    let e = c
        .storage(outsider)
        .unwrap()
        .read(pb::ReadRequest {
            epoch: 1,
            object_id: cid.0.to_vec(),
            kind: pb::ObjectKind::Content as i32,
        })
        .await;
    if let Err(e) = e {
        assert_eq!(e.code(), Code::FailedPrecondition);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_cluster_certificate_is_refused() {
    let cluster = Cluster::start(4, 1).await;
    let stranger_ca = ClusterCa::generate().unwrap();
    let tls = stranger_ca.issue_client("stranger").unwrap();
    let c = dbqs_client::Client::with_identity(
        cluster.genesis.ms_public_key,
        cluster.config.clone(),
        dbqs_client::ClientIdentity {
            ca_pem: cluster.genesis.ca.cert_pem.clone(),
            tls_cert_pem: tls.cert_pem,
            tls_key_pem: tls.key_pem,
        },
        Some(KeyPair::generate()),
        Duration::from_secs(2),
    );
    let err = c.put(b"x", b"y".to_vec()).await.unwrap_err();
    let msg = err.to_string();
    // Refused at the TLS handshake by every node: the client gets no lease from the
    // MS members, nor (had it one) a single storage reply.
    assert!(
        (msg.contains("quorum not reached") && msg.contains("0 of 3"))
            || (msg.contains("no freshness lease") && msg.contains("0 matching")),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_overwrite_another_owners_object() {
    let cluster = Cluster::start(4, 1).await;
    let c = cluster.client(Duration::from_secs(3));
    let owner = c.owner_key().unwrap();
    c.put(b"doc", b"owner's".to_vec()).await.unwrap();
    // A second client with its own owner key writes the same name: a different
    // object, by construction of owned ids.
    let other = dbqs_client::Client::with_identity(
        cluster.genesis.ms_public_key,
        cluster.config.clone(),
        dbqs_client::ClientIdentity {
            ca_pem: cluster.genesis.ca.cert_pem.clone(),
            tls_cert_pem: cluster.genesis.client.tls.cert_pem.clone(),
            tls_key_pem: cluster.genesis.client.tls.key_pem.clone(),
        },
        Some(KeyPair::generate()),
        Duration::from_secs(3),
    );
    other.put(b"doc", b"intruder's".to_vec()).await.unwrap();
    assert_eq!(
        c.get(&owner, b"doc").await.unwrap().unwrap().value,
        b"owner's"
    );
}

/// One client certificate holds at most `MAX_CONNECTIONS_PER_CLIENT` connections to a
/// node (dbqs-server/src/conn_limit.rs); one more is closed after its handshake, other
/// identities are not affected, and closing a connection frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_holds_at_most_its_connection_limit_on_a_node() {
    use dbqs_client::{Client, ClientIdentity};
    use dbqs_server::conn_limit::MAX_CONNECTIONS_PER_CLIENT;
    let cluster = Cluster::start(4, 1).await;
    let g = &cluster.genesis;
    let tls = g.ca.issue_client("many-connections").unwrap();
    let node = cluster.config.config.members[0].node_id();
    // Each Client opens its own connection to the node.
    let connect = || {
        Client::with_identity(
            g.ms_public_key,
            cluster.config.clone(),
            ClientIdentity {
                ca_pem: g.ca.cert_pem.clone(),
                tls_cert_pem: tls.cert_pem.clone(),
                tls_key_pem: tls.key_pem.clone(),
            },
            None,
            Duration::from_secs(3),
        )
    };
    async fn ask(c: &Client, node: NodeId) -> Result<u64, tonic::Status> {
        let r = c
            .membership(node)
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?
            .get_config(pb::GetConfigRequest { epoch: 0 })
            .await?;
        Ok(r.into_inner().cert.map(|_| 1).unwrap_or(0))
    }
    let mut held = Vec::new();
    for i in 0..MAX_CONNECTIONS_PER_CLIENT {
        let c = connect();
        ask(&c, node)
            .await
            .unwrap_or_else(|e| panic!("connection {i} within the limit: {e}"));
        held.push(c);
    }
    let extra = connect();
    let e = ask(&extra, node)
        .await
        .expect_err("one connection past the limit is closed");
    eprintln!(
        "connection {} past the limit: {e}",
        MAX_CONNECTIONS_PER_CLIENT + 1
    );
    // The held connections still work, and another identity is not affected.
    ask(&held[0], node).await.unwrap();
    let other = cluster.client(Duration::from_secs(3));
    ask(&other, node).await.unwrap();
    // Closing connections frees their places (the server sees the close shortly).
    held.truncate(MAX_CONNECTIONS_PER_CLIENT - 4);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let c = connect();
        match ask(&c, node).await {
            Ok(_) => break,
            Err(e) => assert!(
                std::time::Instant::now() < deadline,
                "no connection admitted 10 s after 4 were closed: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
