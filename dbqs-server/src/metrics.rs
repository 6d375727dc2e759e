//! Prometheus metrics of one node, served on its status port (`/metrics`).

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    pub op: String,
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
}
