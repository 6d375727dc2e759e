//! A client floods `Membership.Freshness` on every MS member (docs/threat-model.md,
//! "Byzantine clients"). The flooder is turned away per client (fair.rs), member nodes'
//! lease renewals have their own queue and go ahead of client nonces (ms_host.rs), so
//! nodes keep their leases and an honest client keeps reading and writing. Real TLS,
//! redb and PBFT on loopback.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dbqs_client::{Client, ClientIdentity};
use dbqs_common::config::Params;
use dbqs_proto::v1 as pb;
use dbqs_tests::Cluster;

/// Connections the flooder opens to each MS member, and calls it keeps in flight on each:
/// 1,200 per member, past the 1,024 client slots plus 64 queued that one member admits.
const FLOOD_CONNECTIONS: usize = 6;
const FLOOD_STREAMS: usize = 200;
const FLOOD_FOR: Duration = Duration::from_secs(12);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_freshness_flood_neither_costs_nodes_their_leases_nor_stops_an_honest_client() {
    let params = Params {
        f: 1,
        epoch_length_ms: 2_000,
        lease_ms: 3_000,
        evict_after_ms: 3_000,
        ..Params::default()
    };
    let mut c = Cluster::start_honest(4, params).await;
    c.wait_serving(Duration::from_secs(20)).await;
    let honest = c.client(Duration::from_secs(6));
    let owner = honest.owner_key().unwrap();
    honest
        .put(b"before-the-flood", b"v".to_vec())
        .await
        .unwrap();

    // One flooding identity with many connections to every MS member.
    let g = &c.genesis;
    let tls = g.ca.issue_client("flooder").unwrap();
    let ms = c.config.config.ms_members.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let other = Arc::new(AtomicU64::new(0));
    let mut flood = tokio::task::JoinSet::new();
    let deadline = Instant::now() + FLOOD_FOR + Duration::from_secs(10);
    for _ in 0..FLOOD_CONNECTIONS {
        let flooder = Client::with_identity(
            g.ms_public_key,
            c.config.clone(),
            ClientIdentity {
                ca_pem: g.ca.cert_pem.clone(),
                tls_cert_pem: tls.cert_pem.clone(),
                tls_key_pem: tls.key_pem.clone(),
            },
            None,
            Duration::from_secs(20),
        );
        for m in &ms {
            let mc = flooder.membership(*m).unwrap();
            for _ in 0..FLOOD_STREAMS {
                let mut mc = mc.clone();
                let (stop, answered, refused, other) = (
                    stop.clone(),
                    answered.clone(),
                    refused.clone(),
                    other.clone(),
                );
                flood.spawn(async move {
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        let nonce: [u8; 32] = rand::random();
                        let r = mc
                            .freshness(pb::FreshnessRequest {
                                nonce: nonce.to_vec(),
                            })
                            .await;
                        match r {
                            Ok(_) => answered.fetch_add(1, Ordering::Relaxed),
                            Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                                refused.fetch_add(1, Ordering::Relaxed)
                            }
                            Err(_) => other.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                });
            }
        }
    }

    // While it floods: the honest client writes and reads back, and every node's lease
    // is sampled; a node "without a lease" is one whose lease does not cover its epoch.
    let started = Instant::now();
    let mut gap_since: Vec<Option<Instant>> = vec![None; c.len()];
    let mut longest_gap = vec![Duration::ZERO; c.len()];
    let mut ops = 0u32;
    let mut op_time = Duration::ZERO;
    let mut failures = Vec::new();
    let mut i = 0u32;
    let mut next_op = Instant::now();
    while started.elapsed() < FLOOD_FOR {
        for (n, since) in gap_since.iter_mut().enumerate() {
            let node = c.node(n).unwrap();
            let held = node.core.lease.check(node.core.configs.epoch()).is_ok();
            match (held, *since) {
                (false, None) => *since = Some(Instant::now()),
                (true, Some(t)) => {
                    longest_gap[n] = longest_gap[n].max(t.elapsed());
                    *since = None;
                }
                _ => {}
            }
        }
        if Instant::now() >= next_op {
            let key = format!("during-the-flood-{i}");
            i += 1;
            let value = key.clone().into_bytes();
            let t = Instant::now();
            let r = async {
                honest
                    .put(key.as_bytes(), value.clone())
                    .await
                    .map_err(|e| e.to_string())?;
                let got = honest
                    .get(&owner, key.as_bytes())
                    .await
                    .map_err(|e| e.to_string())?;
                if got.map(|g| g.value) != Some(value) {
                    return Err(format!("{key} did not read back"));
                }
                Ok::<_, String>(())
            }
            .await;
            match r {
                Ok(()) => {
                    ops += 1;
                    op_time += t.elapsed();
                }
                Err(e) => failures.push(e),
            }
            next_op = Instant::now() + Duration::from_millis(200);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (n, since) in gap_since.iter().enumerate() {
        if let Some(t) = since {
            longest_gap[n] = longest_gap[n].max(t.elapsed());
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (answered, refused, other) = (
        answered.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
        other.load(Ordering::Relaxed),
    );
    eprintln!(
        "freshness flood of {} calls in flight for {FLOOD_FOR:?}: {answered} answered, {refused} refused (RESOURCE_EXHAUSTED), {other} other errors; honest client: {ops} put+get (avg {:?}), {} failed; longest time a node held no lease for its epoch: {longest_gap:?}",
        FLOOD_CONNECTIONS * FLOOD_STREAMS * ms.len(),
        op_time / ops.max(1),
        failures.len()
    );
    assert!(
        refused > 0,
        "the flooder was never refused: the per-client limit did not apply"
    );
    assert!(answered > 0, "the flood reached the MS");
    // Liveness, not throughput: the honest client's calls wait for about two batches of
    // the flooder's nonces (the figures are printed above).
    assert!(
        failures.is_empty() && ops >= 3,
        "the honest client: {ops} operations, failures: {failures:?}"
    );
    // An epoch change leaves a node without a lease for its new epoch until its first
    // renewal there is answered; under the flood that must stay well inside one lease.
    for (n, gap) in longest_gap.iter().enumerate() {
        assert!(
            *gap < Duration::from_millis(2_000),
            "node {n} held no lease for {gap:?} during the flood"
        );
    }
    // Let the flood tasks see the stop flag; each call ends within the client timeout.
    let drain = tokio::time::timeout(Duration::from_secs(25), async {
        while flood.join_next().await.is_some() {}
    })
    .await;
    if drain.is_err() {
        flood.abort_all();
    }
    c.stop_all().await;
}
