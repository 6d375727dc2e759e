//! Prometheus metrics of one node, served on its status port (`/metrics`).

//!
//! [`Stats`] holds what the services record as they go; [`NodeSnapshot`] is read from the
//! node (lease, epoch manager, state transfer, MS role) at each scrape and rendered next
//! to it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dbqs_common::{Epoch, NodeId};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::service::NodeCore;
use crate::transfer::plan::Range;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    pub op: String,
}

/// A probed node, by its 8-hex short id.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabel {
    pub node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    pub op: String,
    pub code: String,
}

type HistogramCtor = fn() -> Histogram;

/// The node's metrics; cheap to share behind an `Arc`.
pub struct Stats {
    registry: Registry,
    requests: Family<OpLabel, Counter>,
    errors: Family<ErrorLabel, Counter>,
    latency: Family<OpLabel, Histogram, HistogramCtor>,
    pub epoch: Gauge,
    pub objects: Gauge,
    pub store_errors: Counter,
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~1.6 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

impl Default for Stats {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("dbqs");
        let requests = Family::<OpLabel, Counter>::default();
        let errors = Family::<ErrorLabel, Counter>::default();
        let latency = Family::<OpLabel, Histogram, HistogramCtor>::new_with_constructor(
            latency_histogram as HistogramCtor,
        );
        let epoch = Gauge::default();
        let objects = Gauge::default();
        let store_errors = Counter::default();
        registry.register(
            "requests",
            "Storage requests answered successfully, by operation",
            requests.clone(),
        );
        registry.register(
            "request_errors",
            "Storage requests rejected or failed, by operation and gRPC status code (Byzantine or malformed input shows up here as invalid_argument)",
            errors.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time to answer a storage request",
            latency.clone(),
        );
        registry.register(
            "epoch",
            "Epoch of the configuration the node serves",
            epoch.clone(),
        );
        registry.register(
            "objects",
            "Objects in the node's store (at the last scrape)",
            objects.clone(),
        );
        registry.register(
            "store_errors",
            "Storage engine errors",
            store_errors.clone(),
        );
        Stats {
            registry,
            requests,
            errors,
            latency,
            epoch,
            objects,
            store_errors,
        }
    }
}

impl Stats {
    /// Records one request's outcome and latency.
    pub fn record<T>(&self, op: &str, start: Instant, r: &Result<T, tonic::Status>) {
        let op_label = OpLabel { op: op.to_string() };
        match r {
            Ok(_) => {
                self.requests.get_or_create(&op_label).inc();
                self.latency
                    .get_or_create(&op_label)
                    .observe(start.elapsed().as_secs_f64());
            }
            Err(s) => {
                self.errors
                    .get_or_create(&ErrorLabel {
                        op: op.to_string(),
                        code: format!("{:?}", s.code()).to_lowercase(),
                    })
                    .inc();
            }
        }
    }

    /// Successful requests of `op` so far.
    pub fn count(&self, op: &str) -> u64 {
        self.requests
            .get_or_create(&OpLabel { op: op.to_string() })
            .get()
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// The Prometheus text exposition of these metrics and `snap`'s, as one document.
    pub fn encode_with(&self, snap: &NodeSnapshot) -> String {
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        let mut out = String::new();
        let extra = snap.registry();
        if encode_registry(&mut out, &self.registry)
            .and_then(|()| encode_registry(&mut out, &extra))
            .and_then(|()| encode_eof(&mut out))
            .is_err()
        {
            out.clear();
        }
        out
    }
}

/// Most probe records and pending changes one snapshot carries (the page, `/status.json`
/// and `/metrics` all stay bounded, whatever the membership size).
pub const MAX_SNAPSHOT_ROWS: usize = 1_000;

/// Most pending ranges one snapshot lists (the page and `/status.json`; `/metrics` only
/// counts them).
pub const MAX_TRANSFER_ROWS: usize = 64;

/// The node's state transfer at one instant: what is left to take over, and the
/// progress counters of `transfer::TransferStats`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TransferSnapshot {
    /// All ranges still to take over...
    pub pending_ranges: usize,
    /// ...and the first `MAX_TRANSFER_ROWS` of them, in ring order: (range, source epoch).
    pub pending: Vec<(Range, Epoch)>,
    /// Ranges the node deleted once their newest group held them (remembered so that it
    /// never lists them as a source again).
    pub deleted_ranges: usize,
    pub ranges_done: u64,
    pub objects_stored: u64,
    pub objects_listed: u64,
    pub bad_bodies: u64,
    pub failures: u64,
    pub objects_deleted: u64,
    pub on_demand: u64,
}

impl TransferSnapshot {
    /// Reads the pending ranges (without copying all of them) and the counters.
    pub fn of(core: &NodeCore) -> TransferSnapshot {
        let (pending_ranges, pending, deleted_ranges) = {
            let rx = core.configs.subscribe_pending();
            let p = rx.borrow();
            (
                p.ranges.len(),
                p.ranges
                    .iter()
                    .take(MAX_TRANSFER_ROWS)
                    .map(|(r, e)| (*r, e.from))
                    .collect(),
                p.deleted.len(),
            )
        };
        let t = &core.transfer;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TransferSnapshot {
            pending_ranges,
            pending,
            deleted_ranges,
            ranges_done: get(&t.ranges_done),
            objects_stored: get(&t.objects_stored),
            objects_listed: get(&t.objects_listed),
            bad_bodies: get(&t.bad_bodies),
            failures: get(&t.failures),
            objects_deleted: get(&t.objects_deleted),
            on_demand: get(&t.on_demand),
        }
    }

    /// The `dbqs_transfer_*` families (every node has them, zero until an epoch change
    /// gives it ranges to take over).
    fn register(&self, r: &mut Registry) {
        r.register(
            "transfer_pending_ranges",
            "Ranges this node still has to take over from an older epoch's group (it answers a request about an object of one only after taking that object over on demand)",
            ConstGauge::new(self.pending_ranges as u64),
        );
        r.register(
            "transfer_deleted_ranges",
            "Ranges this node deleted once their newest group held them, remembered so it never lists them as a source again (bounded by 2 x the member limit; at the bound clean-up stops deleting)",
            ConstGauge::new(self.deleted_ranges as u64),
        );
        for (name, help, v) in [
            (
                "transfer_ranges_done",
                "Ranges taken over completely (q listings merged, every listed version stored)",
                self.ranges_done,
            ),
            (
                "transfer_objects_stored",
                "Objects whose checked body state transfer fetched and stored (ranges and on-demand take-overs; objects already held are not counted)",
                self.objects_stored,
            ),
            (
                "transfer_objects_listed",
                "Listing entries received from source replicas (each object is listed by up to q sources)",
                self.objects_listed,
            ),
            (
                "transfer_bad_bodies",
                "Bodies a source sent that failed the check (bad signature or hash, or not asked for): Byzantine or corrupt sources show up here",
                self.bad_bodies,
            ),
            (
                "transfer_failures",
                "Passes over a range that failed (too few sources answered, or a fetch failed); the range is retried",
                self.failures,
            ),
            (
                "transfer_objects_deleted",
                "Objects of ranges this node no longer serves, deleted once every member of the newest group held them",
                self.objects_deleted,
            ),
            (
                "transfer_on_demand",
                "Objects taken over on demand (a request came before their range was taken over)",
                self.on_demand,
            ),
        ] {
            r.register(name, help, ConstCounter::new(v));
        }
    }
}

/// The node's freshness lease at one instant.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LeaseSnapshot {
    /// Time left on the lease that lets the node serve its epoch (zero: none running).
    pub remaining: Duration,
    /// Epoch of that lease (0: none).
    pub epoch: Epoch,
    pub renewals: u64,
    pub renewal_failures: u64,
}

/// One node the MS member probes.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeSnapshot {
    pub node: NodeId,
    pub answering: bool,
    /// Probes missed in a row.
    pub misses: u32,
    /// Round trip of the last answered probe (zero if it never answered).
    pub last_rtt: Duration,
}

/// The MS role of a member node (MS state machine and its PBFT replica) at one instant.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MsSnapshot {
    pub epoch: Epoch,
    pub certified: bool,
    /// All queued changes...
    pub pending_changes: usize,
    /// ...and the first `MAX_SNAPSHOT_ROWS` of them: (kind, node).
    pub pending: Vec<(&'static str, Option<NodeId>)>,
    pub end_votes: u32,
    pub end_votes_needed: u32,
    pub view: u64,
    pub view_changing: bool,
    pub is_primary: bool,
    pub last_executed: u64,
    pub stable_checkpoint: u64,
    pub engine_errors: u64,
    pub engine_routine_rejects: u64,
    pub stopped: bool,
    /// Evictions this member saw take effect, newest first: (epoch, node).
    pub evictions: Vec<(Epoch, NodeId)>,
    /// In node-id order, at most `MAX_SNAPSHOT_ROWS`.
    pub probes: Vec<ProbeSnapshot>,
}

/// What `/metrics` and the status page compute at request time, beyond [`Stats`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeSnapshot {
    pub config_epoch: Epoch,
    pub lease: LeaseSnapshot,
    pub transfer: TransferSnapshot,
    /// `None` unless the node is an MS member.
    pub ms: Option<MsSnapshot>,
}

impl NodeSnapshot {
    /// Reads the node's lease, epoch manager, state transfer and (if any) MS role; holds
    /// no lock for long.
    pub fn of(core: &NodeCore) -> NodeSnapshot {
        let config_epoch = core.configs.epoch();
        let (remaining, epoch) = core.lease.remaining(core.config.borrow().epoch());
        let lease = LeaseSnapshot {
            remaining,
            epoch,
            renewals: core.lease.renewed.load(Ordering::Relaxed),
            renewal_failures: core.lease.failed.load(Ordering::Relaxed),
        };
        let ms = core.ms.active().map(|m| {
            let (
                epoch,
                certified,
                pending_changes,
                pending,
                end_votes,
                end_votes_needed,
                evictions,
            ) = {
                let v = m.view.borrow();
                (
                    v.epoch,
                    v.certified.is_some(),
                    v.pending.len(),
                    v.pending.iter().take(MAX_SNAPSHOT_ROWS).copied().collect(),
                    v.end_votes,
                    v.end_needed,
                    v.evictions.iter().rev().copied().collect(),
                )
            };
            let r = m.replica.borrow().clone();
            let probes = m
                .probes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .take(MAX_SNAPSHOT_ROWS)
                .map(|(id, p)| ProbeSnapshot {
                    node: *id,
                    answering: p.answering,
                    misses: p.misses,
                    last_rtt: Duration::from_micros(p.last_rtt_us),
                })
                .collect();
            MsSnapshot {
                epoch,
                certified,
                pending_changes,
                pending,
                end_votes,
                end_votes_needed,
                view: r.view,
                view_changing: r.view_changing,
                is_primary: r.is_primary,
                last_executed: r.last_executed,
                stable_checkpoint: r.stable_seq,
                engine_errors: r.engine_errors,
                engine_routine_rejects: r.engine_routine_rejects,
                stopped: r.stopped,
                evictions,
                probes,
            }
        });
        NodeSnapshot {
            config_epoch,
            lease,
            transfer: TransferSnapshot::of(core),
            ms,
        }
    }

    /// The snapshot's metrics, in a registry of their own (built per scrape).
    fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix("dbqs");
        let l = &self.lease;
        r.register(
            "lease_remaining_seconds",
            "Time left on the freshness lease that lets the node serve its current epoch (0: none running; the node then refuses Storage requests)",
            ConstGauge::new(l.remaining.as_secs_f64()),
        );
        r.register(
            "lease_epoch",
            "Epoch the MS vouched for in the node's running freshness lease (0: none running)",
            ConstGauge::new(l.epoch),
        );
        r.register(
            "lease_renewals",
            "Freshness lease renewals that succeeded (f_ms+1 matching MS answers)",
            ConstCounter::new(l.renewals),
        );
        r.register(
            "lease_renewal_failures",
            "Freshness lease renewal attempts that failed (too few MS members answered alike)",
            ConstCounter::new(l.renewal_failures),
        );
        r.register(
            "config_epoch",
            "Epoch of the newest verified configuration certificate the node adopted",
            ConstGauge::new(self.config_epoch),
        );
        self.transfer.register(&mut r);
        let Some(ms) = &self.ms else {
            return r;
        };
        let flag = |b: bool| ConstGauge::new(u64::from(b));
        r.register(
            "ms_epoch",
            "Epoch of this MS member's membership state machine",
            ConstGauge::new(ms.epoch),
        );
        r.register(
            "ms_certified",
            "1 once this member holds the combined MS signature of the current configuration, else 0",
            flag(ms.certified),
        );
        r.register(
            "ms_pending_changes",
            "Membership changes queued on this MS member for the next epoch",
            ConstGauge::new(ms.pending_changes as u64),
        );
        r.register(
            "ms_end_votes",
            "EndEpoch votes this MS member has ordered for the current epoch",
            ConstGauge::new(ms.end_votes),
        );
        r.register(
            "ms_end_votes_needed",
            "EndEpoch votes needed to end the current epoch",
            ConstGauge::new(ms.end_votes_needed),
        );
        r.register(
            "pbft_view",
            "Current PBFT view of this MS member's replica",
            ConstGauge::new(ms.view),
        );
        r.register(
            "pbft_view_changing",
            "1 while this MS member's PBFT replica is changing views, else 0",
            flag(ms.view_changing),
        );
        r.register(
            "pbft_is_primary",
            "1 if this MS member's PBFT replica is the primary of its view, else 0",
            flag(ms.is_primary),
        );
        r.register(
            "pbft_last_executed",
            "Sequence number of the last request this MS member's PBFT replica executed",
            ConstGauge::new(ms.last_executed),
        );
        r.register(
            "pbft_stable_checkpoint",
            "Sequence number of this MS member's last stable PBFT checkpoint",
            ConstGauge::new(ms.stable_checkpoint),
        );
        r.register(
            "pbft_engine_errors",
            "PBFT messages this MS member's engine rejected as faulty (malformed, oversized, bad signature, wrong sender, invalid proof, bad digest, conflicting, invalid request, state mismatch); zero in a healthy group",
            ConstCounter::new(ms.engine_errors),
        );
        r.register(
            "pbft_engine_routine_rejects",
            "PBFT messages this MS member's engine ignored as routine (duplicates, already executed, another view or outside the window, full queue); a healthy group produces some",
            ConstCounter::new(ms.engine_routine_rejects),
        );
        let answering = Family::<NodeLabel, Gauge>::default();
        let misses = Family::<NodeLabel, Gauge>::default();
        let rtt = Family::<NodeLabel, Gauge<f64, AtomicU64>>::default();
        for p in &ms.probes {
            let label = NodeLabel {
                node: p.node.short(),
            };
            answering.get_or_create(&label).set(i64::from(p.answering));
            misses.get_or_create(&label).set(i64::from(p.misses));
            rtt.get_or_create(&label).set(p.last_rtt.as_secs_f64());
        }
        r.register(
            "probe_answering",
            "1 if the node answered this MS member's last liveness probe, else 0, by node (8-hex short id)",
            answering,
        );
        r.register(
            "probe_misses",
            "Liveness probes the node missed in a row (it is proposed for eviction once no probe succeeded for evict_after_ms), by node",
            misses,
        );
        r.register(
            "probe_rtt_seconds",
            "Round-trip time of the node's last answered liveness probe (0 if it never answered), by node",
            rtt,
        );
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_counted_by_operation_and_code() {
        let s = Stats::default();
        s.record("read", Instant::now(), &Ok::<(), tonic::Status>(()));
        s.record(
            "read",
            Instant::now(),
            &Err::<(), _>(tonic::Status::invalid_argument("x")),
        );
        s.epoch.set(3);
        let text = s.encode();
        assert!(
            text.contains("dbqs_requests_total{op=\"read\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("dbqs_request_errors_total{op=\"read\",code=\"invalidargument\"} 1"),
            "{text}"
        );
        assert!(text.contains("dbqs_epoch 3"), "{text}");
        assert!(
            text.contains("dbqs_request_duration_seconds_bucket"),
            "{text}"
        );
        assert_eq!(s.count("read"), 1);
    }

    fn ms_snapshot() -> MsSnapshot {
        MsSnapshot {
            epoch: 4,
            certified: true,
            pending_changes: 2,
            pending: vec![("add", Some(NodeId([0xab; 32]))), ("end_epoch", None)],
            end_votes: 1,
            end_votes_needed: 3,
            view: 2,
            view_changing: false,
            is_primary: true,
            last_executed: 57,
            stable_checkpoint: 50,
            engine_errors: 6,
            engine_routine_rejects: 9,
            stopped: false,
            evictions: Vec::new(),
            probes: vec![
                ProbeSnapshot {
                    node: NodeId([0x12; 32]),
                    answering: true,
                    misses: 0,
                    last_rtt: Duration::from_micros(1_500),
                },
                ProbeSnapshot {
                    node: NodeId([0xfe; 32]),
                    answering: false,
                    misses: 3,
                    last_rtt: Duration::ZERO,
                },
            ],
        }
    }

    /// The sample line of `series` (name plus labels), parsed.
    fn value(text: &str, series: &str) -> f64 {
        let line = text
            .lines()
            .find(|l| l.strip_prefix(series).is_some_and(|r| r.starts_with(' ')))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"));
        line[series.len()..].trim().parse().unwrap()
    }

    #[test]
    fn snapshot_of_an_ms_member_renders_lease_pbft_and_probe_series() {
        let s = Stats::default();
        s.epoch.set(4);
        let snap = NodeSnapshot {
            config_epoch: 4,
            lease: LeaseSnapshot {
                remaining: Duration::from_millis(2_500),
                epoch: 4,
                renewals: 10,
                renewal_failures: 2,
            },
            transfer: TransferSnapshot {
                pending_ranges: 3,
                pending: Vec::new(),
                deleted_ranges: 1,
                ranges_done: 9,
                objects_stored: 120,
                objects_listed: 370,
                bad_bodies: 2,
                failures: 4,
                objects_deleted: 15,
                on_demand: 6,
            },
            ms: Some(ms_snapshot()),
        };
        let text = s.encode_with(&snap);
        // One document: the Stats series, then the snapshot's, then a single EOF.
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(text.matches("# EOF").count(), 1, "{text}");
        assert_eq!(value(&text, "dbqs_epoch"), 4.0);
        assert!((value(&text, "dbqs_lease_remaining_seconds") - 2.5).abs() < 1e-9);
        for (series, want) in [
            ("dbqs_lease_epoch", 4.0),
            ("dbqs_lease_renewals_total", 10.0),
            ("dbqs_lease_renewal_failures_total", 2.0),
            ("dbqs_config_epoch", 4.0),
            ("dbqs_transfer_pending_ranges", 3.0),
            ("dbqs_transfer_deleted_ranges", 1.0),
            ("dbqs_transfer_ranges_done_total", 9.0),
            ("dbqs_transfer_objects_stored_total", 120.0),
            ("dbqs_transfer_objects_listed_total", 370.0),
            ("dbqs_transfer_bad_bodies_total", 2.0),
            ("dbqs_transfer_failures_total", 4.0),
            ("dbqs_transfer_objects_deleted_total", 15.0),
            ("dbqs_transfer_on_demand_total", 6.0),
            ("dbqs_ms_epoch", 4.0),
            ("dbqs_ms_certified", 1.0),
            ("dbqs_ms_pending_changes", 2.0),
            ("dbqs_ms_end_votes", 1.0),
            ("dbqs_ms_end_votes_needed", 3.0),
            ("dbqs_pbft_view", 2.0),
            ("dbqs_pbft_view_changing", 0.0),
            ("dbqs_pbft_is_primary", 1.0),
            ("dbqs_pbft_last_executed", 57.0),
            ("dbqs_pbft_stable_checkpoint", 50.0),
            ("dbqs_pbft_engine_errors_total", 6.0),
            ("dbqs_pbft_engine_routine_rejects_total", 9.0),
            ("dbqs_probe_answering{node=\"12121212\"}", 1.0),
            ("dbqs_probe_answering{node=\"fefefefe\"}", 0.0),
            ("dbqs_probe_misses{node=\"12121212\"}", 0.0),
            ("dbqs_probe_misses{node=\"fefefefe\"}", 3.0),
            ("dbqs_probe_rtt_seconds{node=\"fefefefe\"}", 0.0),
        ] {
            assert_eq!(value(&text, series), want, "{series}");
        }
        assert!((value(&text, "dbqs_probe_rtt_seconds{node=\"12121212\"}") - 0.0015).abs() < 1e-9);
        // Every family says what it measures, and has the right type.
        for name in [
            "lease_remaining_seconds",
            "lease_epoch",
            "lease_renewals",
            "lease_renewal_failures",
            "config_epoch",
            "transfer_pending_ranges",
            "transfer_deleted_ranges",
            "transfer_ranges_done",
            "transfer_objects_stored",
            "transfer_objects_listed",
            "transfer_bad_bodies",
            "transfer_failures",
            "transfer_objects_deleted",
            "transfer_on_demand",
            "ms_epoch",
            "ms_certified",
            "ms_pending_changes",
            "ms_end_votes",
            "pbft_view",
            "pbft_view_changing",
            "pbft_is_primary",
            "pbft_last_executed",
            "pbft_stable_checkpoint",
            "pbft_engine_errors",
            "pbft_engine_routine_rejects",
            "probe_answering",
            "probe_misses",
            "probe_rtt_seconds",
        ] {
            let help = format!("# HELP dbqs_{name} ");
            let line = text.lines().find(|l| l.starts_with(&help));
            assert!(
                line.is_some_and(|l| l.len() > help.len() + 10),
                "no HELP for {name}:\n{text}"
            );
        }
        assert!(
            text.contains("# TYPE dbqs_lease_renewals counter"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE dbqs_pbft_engine_errors counter"),
            "{text}"
        );
        assert!(text.contains("# TYPE dbqs_pbft_view gauge"), "{text}");
        assert!(
            text.contains("# TYPE dbqs_transfer_pending_ranges gauge"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE dbqs_transfer_bad_bodies counter"),
            "{text}"
        );
    }

    #[test]
    fn snapshot_of_a_non_member_has_no_ms_series() {
        let snap = NodeSnapshot {
            config_epoch: 1,
            ..NodeSnapshot::default()
        };
        let text = Stats::default().encode_with(&snap);
        assert_eq!(value(&text, "dbqs_lease_remaining_seconds"), 0.0);
        assert_eq!(value(&text, "dbqs_lease_epoch"), 0.0);
        assert_eq!(value(&text, "dbqs_config_epoch"), 1.0);
        // Every node has the transfer series, zero until an epoch change moves ranges.
        assert_eq!(value(&text, "dbqs_transfer_pending_ranges"), 0.0);
        assert_eq!(value(&text, "dbqs_transfer_ranges_done_total"), 0.0);
        for absent in ["dbqs_ms_", "dbqs_pbft_", "dbqs_probe_"] {
            assert!(!text.contains(absent), "{absent} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
