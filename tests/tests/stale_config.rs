//! Stale-configuration attacks (issue [H], point 6): the "I still work here" attack of
//! Kuznetsov and Tonkikh (DISC 2020). Nodes removed from the configuration keep running,
//! and their keys fall to an attacker after the removal: they answer reads as members of
//! the old epoch with the old value, and acknowledge writes they do not store
//! (`Behaviour::StillHere`). Here they are three of the four members of an object's old
//! group: more than f, which is allowed once they are out, because PROTOCOL.md counts
//! removed nodes against f only until the leases on their last epoch have run out.
//! A client holding the old configuration must not read the old value: it needs a lease
//! before it uses a configuration, and the lease names the newer epoch.
//!
//! The slow-reader attack (replies that arrive after the reader's lease lapsed) is the
//! last test here.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use dbqs_client::ClientError;
use dbqs_client::client::MAX_LEASE_REDOS;
use dbqs_client::lease::LeaseError;
use dbqs_common::certs::RemoveCert;
use dbqs_common::{NodeId, ObjectId};
use dbqs_proto::v1 as pb;
use dbqs_server::byzantine::Behaviour;
use dbqs_tests::{Cluster, test_params};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_nodes_claiming_the_old_epoch_cannot_give_a_stale_client_an_old_value() {
    let params = test_params(1);
    let lease_ms = params.lease_ms;
    // Ten nodes, four of them in the MS: some group of four consecutive ring positions
    // holds at least three non-MS nodes (six of ten, by pigeonhole). Every non-MS node
    // plays StillHere, which is honest until it is removed.
    let c = Cluster::start_full(
        10,
        params,
        |cfg| {
            cfg.config
                .members
                .iter()
                .map(|m| m.node_id())
                .filter(|id| !cfg.config.ms_members.contains(id))
                .map(|id| (id, Behaviour::StillHere))
                .collect()
        },
        |_| HashMap::new(),
    )
    .await;
    let ms: BTreeSet<NodeId> = c.config.config.ms_members.iter().copied().collect();
    let writer = c.client(Duration::from_secs(5));
    let owner = writer.owner_key().unwrap();
    // A name whose group has at least three non-MS nodes: those three are removed.
    let (name, doomed) = (0..2_000)
        .map(|i| format!("k{i}"))
        .find_map(|n| {
            let group = writer
                .config()
                .group(&ObjectId::owned(&owner, n.as_bytes()));
            let out: Vec<NodeId> = group.into_iter().filter(|id| !ms.contains(id)).collect();
            (out.len() >= 3).then(|| (n, out[..3].to_vec()))
        })
        .expect("no name has three non-MS nodes in its group");
    let k = name.as_bytes();
    writer.put(k, b"v1".to_vec()).await.unwrap();
    let genesis_epoch = writer.config().epoch();

    // A client that holds the genesis configuration and, from this read, a lease on it.
    let old = c.client(Duration::from_secs(5));
    assert_eq!(old.get(&owner, k).await.unwrap().unwrap().value, b"v1");

    // The authority removes the three; one configuration leaves them all out.
    let mut stub = writer.membership(c.config.config.ms_members[0]).unwrap();
    let mut removed_in = 0;
    for (i, id) in doomed.iter().enumerate() {
        let r = stub
            .submit(pb::SubmitRequest {
                cert: Some(pb::submit_request::Cert::Remove(
                    RemoveCert::issue(&c.genesis.authority, *id, 5_001 + i as u64).encode(),
                )),
            })
            .await
            .unwrap()
            .into_inner();
        removed_in = removed_in.max(r.epoch + 1);
    }
    c.wait_epoch(removed_in, Duration::from_secs(30)).await;
    let changed_at = std::time::Instant::now();
    writer.put(k, b"v2".to_vec()).await.unwrap();
    let now = writer.config();
    assert!(
        doomed
            .iter()
            .all(|id| now.config.members.iter().all(|m| m.node_id() != *id)),
        "the three are still members in epoch {}",
        now.epoch()
    );

    // The removed nodes really attack: asked directly in the genesis epoch, one of them
    // answers as a member, with v1.
    let reply = c
        .client(Duration::from_secs(5))
        .storage(doomed[0])
        .unwrap()
        .read(pb::ReadRequest {
            epoch: genesis_epoch,
            object_id: ObjectId::owned(&owner, k).0.to_vec(),
            kind: pb::ObjectKind::Owned as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.epoch, genesis_epoch);
    match reply.object {
        Some(pb::read_reply::Object::Owned(v)) => assert_eq!(v.value, b"v1"),
        other => panic!("the removed node did not offer v1: {other:?}"),
    }

    // New clients with the genesis configuration: three old-group members would give
    // them a quorum of v1 in that epoch, but their lease names the newer epoch, so they
    // catch up and read v2. Likewise a stale client's write lands in the new epoch.
    for i in 0..5 {
        let stale = c.client(Duration::from_secs(5));
        assert_eq!(stale.config().epoch(), genesis_epoch);
        let got = stale.get(&owner, k).await.unwrap().unwrap();
        assert_eq!(
            got.value, b"v2",
            "stale client {i} read the removed nodes' value"
        );
        assert!(stale.config().epoch() >= removed_in);
    }
    let stale_writer = c.client(Duration::from_secs(5));
    stale_writer.put(k, b"v3".to_vec()).await.unwrap();
    assert_eq!(
        writer.get(&owner, k).await.unwrap().unwrap().value,
        b"v3",
        "a stale client's write was swallowed by the removed nodes"
    );

    // The client that held a lease on the genesis epoch: once the lease bound has passed
    // since the change, it reads the newest value too.
    let bound = Duration::from_millis(lease_ms + 500);
    if let Some(left) = bound.checked_sub(changed_at.elapsed()) {
        tokio::time::sleep(left).await;
    }
    assert_eq!(old.get(&owner, k).await.unwrap().unwrap().value, b"v3");
}

/// The slow-reader attack of Kuznetsov and Tonkikh: replies that arrive after the
/// reader's lease on their epoch ran out might come from replicas that no longer count
/// against f. A read phase whose last counted reply arrives after the client's lease
/// lapsed must not be returned as successful: the client re-checks its lease when the
/// last reply is in, renews, and redoes the phase (dbqs-client `group_quorum`), and
/// gives up with a clear error once that has happened `MAX_LEASE_REDOS + 1` times.
///
/// Two replicas delay every `Read` reply by more than a whole lease
/// (`Behaviour::SlowReads`): a read (owned, then content) whose group holds both needs one of their replies
/// for its quorum of three, so every attempt lapses. A read whose group holds one of
/// them has a quorum of timely replies and succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_whose_last_reply_arrives_after_the_lease_lapsed_is_not_returned() {
    let mut params = test_params(1);
    // One epoch throughout, so every lapse renews a lease on the same epoch.
    params.epoch_length_ms = 600_000;
    let lease_ms = params.lease_ms;
    let delay_ms = lease_ms + 500;
    let slow = Behaviour::SlowReads {
        delay_ms: u32::try_from(delay_ms).unwrap(),
    };
    let c = Cluster::start_full(
        5,
        params,
        |cfg| {
            cfg.config
                .members
                .iter()
                .take(2)
                .map(|m| (m.node_id(), slow))
                .collect()
        },
        |_| HashMap::new(),
    )
    .await;
    let slow_ids: BTreeSet<NodeId> = c
        .genesis
        .nodes
        .iter()
        .map(|n| n.node_id())
        .filter(|id| c.behaviour(id) == slow)
        .collect();
    assert_eq!(slow_ids.len(), 2);
    // The client waits longer than the delay, so the slow replies do arrive.
    let client = c.client(Duration::from_millis(delay_ms + 3_000));
    let owner = client.owner_key().unwrap();
    let slow_in = |id: &ObjectId| {
        client
            .config()
            .group(id)
            .iter()
            .filter(|n| slow_ids.contains(n))
            .count()
    };
    let slow_in_group = |n: &str| slow_in(&ObjectId::owned(&owner, n.as_bytes()));
    let names: Vec<String> = (0..1_000).map(|i| format!("slow{i}")).collect();
    let both = names.iter().find(|n| slow_in_group(n) == 2).unwrap();
    let one = names.iter().find(|n| slow_in_group(n) == 1).unwrap();
    // Writes are not delayed.
    client.put(both.as_bytes(), b"late".to_vec()).await.unwrap();
    client
        .put(one.as_bytes(), b"timely".to_vec())
        .await
        .unwrap();

    let started = std::time::Instant::now();
    let got = client.get(&owner, one.as_bytes()).await.unwrap().unwrap();
    assert_eq!(got.value, b"timely");
    assert!(started.elapsed() < Duration::from_millis(delay_ms));

    let epoch = client.config().epoch();
    let started = std::time::Instant::now();
    let r = client.get(&owner, both.as_bytes()).await;
    let took = started.elapsed();
    let msg = assert_lapsed(
        &format!("a read whose last reply came {delay_ms} ms late (lease {lease_ms} ms)"),
        r,
        epoch,
        took,
        delay_ms,
    );
    eprintln!("lapsed {} times in {took:?}: {msg}", MAX_LEASE_REDOS + 1);

    // The same for a content read: it waits for a quorum (to know whether to write the
    // bytes back), so with both slow replicas in the group its last needed reply comes
    // after the lease, and it is redone and then refused the same way.
    let blob = (0..1_000u32)
        .map(|i| format!("slow content {i}").into_bytes())
        .find(|b| slow_in(&ObjectId::content(b)) == 2)
        .unwrap();
    let id = client.put_blob(blob.clone()).await.unwrap();
    let started = std::time::Instant::now();
    let r = client.get_blob(id).await;
    let took = started.elapsed();
    assert_lapsed(
        &format!("a content read whose quorum's last reply came {delay_ms} ms late"),
        r,
        epoch,
        took,
        delay_ms,
    );
    eprintln!(
        "content read lapsed {} times in {took:?}",
        MAX_LEASE_REDOS + 1
    );
}

/// Checks that `r` (from `what`) failed because the lease of `epoch` lapsed on every
/// attempt, and that the attempts together (`took`) waited for each late reply (the
/// client did not give up early). Returns the error's text.
fn assert_lapsed<T>(
    what: &str,
    r: Result<T, ClientError>,
    epoch: u64,
    took: Duration,
    delay_ms: u64,
) -> String {
    let e = match r {
        Ok(_) => panic!("{what} returned a value"),
        Err(e) => e,
    };
    match &e {
        ClientError::Lease {
            cause:
                LeaseError::Lapsed {
                    epoch: got,
                    attempts,
                },
            ..
        } => {
            assert_eq!(*got, epoch);
            assert_eq!(*attempts, MAX_LEASE_REDOS + 1);
        }
        other => panic!("{what} gave {other:?}"),
    }
    let msg = e.to_string();
    assert!(
        msg.contains("ran out before the operation's last reply arrived"),
        "{msg}"
    );
    assert!(
        took >= Duration::from_millis(delay_ms) * (MAX_LEASE_REDOS as u32 + 1),
        "{took:?}"
    );
    msg
}
