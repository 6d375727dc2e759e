//! A put whose phase 2 is cut short by an epoch change (issue 20, defect 8; PROTOCOL.md,
//! "dBQS storage", "Retries keep the version"). The real client runs against an
//! in-process cluster whose epochs end every 3 s; a test hook (`dbqs-client` feature
//! `testkit`) runs between phase 1 and phase 2 and there plays what a cut-short phase 2
//! leaves behind: the signed version reached two replicas (fewer than q = 3), the epoch
//! moved on, and in one test another writer of the same owner key wrote after a reader
//! had seen the first value.
//!
//! Re-signing the value in the new epoch (counter = max + 1) lets readers see X, Y, X for
//! one put(X); the put must resend the one version it signed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dbqs_client::Client;
use dbqs_client::client::BetweenPhases;
use dbqs_client::quorum::CallError;
use dbqs_common::{ActiveConfig, NodeId, OwnedValue, Timestamp};
use dbqs_proto::v1 as pb;
use dbqs_tests::{Cluster, test_params};

/// Writes `v` straight to replica `node`, as a phase 2 cut short would have: in the
/// epoch the client wrote in, or in the replica's if that has already moved on.
async fn write_direct(c: &Client, node: NodeId, mut epoch: u64, v: &OwnedValue) {
    for _ in 0..5 {
        let r = c
            .storage(node)
            .unwrap()
            .write(pb::WriteRequest {
                epoch,
                object: Some(pb::write_request::Object::Owned(v.to_proto())),
            })
            .await;
        match r.map_err(CallError::from) {
            Ok(_) => return,
            Err(CallError::Epoch { theirs, .. }) => epoch = theirs,
            Err(e) => panic!("direct write to {node} failed: {e}"),
        }
    }
    panic!("direct write to {node} kept meeting another epoch");
}

/// Waits until every member reports an epoch past `epoch` (so a phase 2 sent in
/// `epoch` is refused by all of them).
async fn wait_all_past(c: &Client, epoch: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let probes = c.probe_members().await;
        if probes
            .iter()
            .all(|(_, r)| r.as_ref().is_ok_and(|(e, _)| *e > epoch))
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "members still at epoch {epoch} after 30 s: {probes:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the hook saw: the version the put signed, and the epoch of its phase 1.
type Seen = Arc<Mutex<Vec<(OwnedValue, u64)>>>;

/// A hook that, on the first put only, leaves the signed version on two replicas of its
/// group, waits for the epoch to move, then runs `after` (a reader, a concurrent writer).
fn cut_short<F, Fut>(helper: Client, seen: Seen, after: F) -> BetweenPhases
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let after = Arc::new(after);
    Arc::new(move |v: OwnedValue, cfg: ActiveConfig| {
        let helper = helper.clone();
        let seen = seen.clone();
        let after = after.clone();
        Box::pin(async move {
            let first = {
                let mut s = seen.lock().unwrap();
                s.push((v.clone(), cfg.epoch()));
                s.len() == 1
            };
            if !first {
                return;
            }
            let group = cfg.group(&v.header.id);
            for n in &group[..2] {
                write_direct(&helper, *n, cfg.epoch(), &v).await;
            }
            wait_all_past(&helper, cfg.epoch()).await;
            after().await;
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_cut_short_by_an_epoch_change_resends_the_version_it_signed() {
    let mut c = Cluster::start_full(
        4,
        test_params(1),
        |_| Default::default(),
        |_| Default::default(),
    )
    .await;
    let writer = c.client(Duration::from_secs(5));
    let owner = writer.owner_key().unwrap();
    writer.put(b"k", b"x0".to_vec()).await.unwrap();

    let seen: Seen = Arc::default();
    writer.set_between_phases(Some(cut_short(
        c.client(Duration::from_secs(5)),
        seen.clone(),
        || async {},
    )));
    let receipt = writer.put(b"k", b"x1".to_vec()).await.unwrap();
    writer.set_between_phases(None);

    let seen = seen.lock().unwrap().clone();
    let (signed, first_epoch) = seen[0].clone();
    assert_eq!(
        seen.len(),
        1,
        "the put signed {} versions: {:?}",
        seen.len(),
        seen.iter()
            .map(|(v, e)| (v.header.timestamp.counter, *e))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        receipt.timestamp, signed.header.timestamp,
        "the put finished with another timestamp than the one it signed first"
    );
    assert!(receipt.epoch > first_epoch, "phase 2 was not redone");
    assert_eq!(receipt.superseded_by, None);
    let got = c
        .client(Duration::from_secs(5))
        .get(&owner, b"k")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.header.timestamp, signed.header.timestamp);
    assert_eq!(got.value, b"x1");
    c.stop_all().await;
}

/// The scenario of issue 20: after the cut-short phase 2, a reader sees X (and writes
/// it back), another writer of the owner key writes Y over it. The retried put must not
/// store X again above Y: readers would see X, Y, X. It resends X's version, the
/// replicas answer "older" with Y, and it counts as superseded once Y is held by q.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_never_see_the_old_new_old_pattern_for_one_put() {
    let mut c = Cluster::start_full(
        4,
        test_params(1),
        |_| Default::default(),
        |_| Default::default(),
    )
    .await;
    let writer = c.client(Duration::from_secs(5));
    let owner = writer.owner_key().unwrap();
    writer.put(b"k", b"x0".to_vec()).await.unwrap();

    // What readers returned, in order.
    let history: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let reader = c.client(Duration::from_secs(5));
    // Another writer (its own TLS identity, so its own writer id) of the same owner key.
    let other = c.client_with_parity(0, Duration::from_secs(5));
    let read = {
        let (reader, history) = (reader.clone(), history.clone());
        move || {
            let (reader, history) = (reader.clone(), history.clone());
            async move {
                let v = reader.get(&owner, b"k").await.unwrap().unwrap();
                history.lock().unwrap().push(v.value);
            }
        }
    };
    let seen: Seen = Arc::default();
    writer.set_between_phases(Some(cut_short(
        c.client(Duration::from_secs(5)),
        seen.clone(),
        {
            let read = read.clone();
            move || {
                let (read, other) = (read.clone(), other.clone());
                async move {
                    read().await;
                    other.put(b"k", b"y".to_vec()).await.unwrap();
                    read().await;
                }
            }
        },
    )));
    let receipt = writer.put(b"k", b"x".to_vec()).await.unwrap();
    writer.set_between_phases(None);
    read().await;

    let history = history.lock().unwrap().clone();
    let shown: Vec<String> = history
        .iter()
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    assert_eq!(
        shown,
        ["x", "y", "y"],
        "readers saw {shown:?} around one put(x) and one put(y)"
    );
    let signed = seen.lock().unwrap()[0].0.clone();
    assert_eq!(receipt.timestamp, signed.header.timestamp);
    let y_ts = Timestamp {
        counter: signed.header.timestamp.counter + 1,
        writer: receipt.superseded_by.map_or([0; 32], |t| t.writer),
    };
    assert_eq!(
        receipt.superseded_by,
        Some(y_ts),
        "the put should count as superseded by y"
    );
    c.stop_all().await;
}
