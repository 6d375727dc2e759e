//! Shared pieces of the side-by-side benchmark harness (`benches/compare.sh`).
//!
//! * [`Summary`] and [`summarize`]: the latency summary that `dbqs bench --json` prints
//!   under `"result"`, computed the same way (nearest-rank percentiles over the measured
//!   operations, throughput over the longest client's measured time), so `etcd-bench`
//!   reports figures that compare one to one.
//! * [`Combined`] and [`Run`]: the combined results file that `compare.sh` writes and
//!   `bench-plot` reads.

use serde::{Deserialize, Serialize};

/// The latency summary of `dbqs bench`, used as is so both load generators report
/// figures computed the same way.
pub use dbqs_client::bench::{summarize, Summary, KEPT_ERRORS};

/// What one load-generator run printed with `--json` (`dbqs bench` or `etcd-bench`).
/// Fields other than these (`epoch`, `f`, ...) are ignored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchOutput {
    /// `read`, `write` or `mixed`.
    pub op: String,
    pub clients: usize,
    pub value_size: usize,
    pub result: Summary,
}

/// One run in the combined results file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    /// Short system id: `dbqs-f1`, `dbqs-f0` or `etcd`.
    pub system: String,
    /// Display name, e.g. `dBQS f=1`.
    pub label: String,
    /// The run's output; `None` when the run failed (see `failure`).
    pub output: Option<BenchOutput>,
    /// Why the run produced no output, if it did not.
    #[serde(default)]
    pub failure: Option<String>,
}

/// The combined results file written by `benches/compare.sh`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Combined {
    /// `quick` or `full`.
    pub mode: String,
    /// When the script started (UTC, RFC 3339).
    pub date: String,
    /// One line describing the host (CPU model, cores, kernel).
    pub host: String,
    pub runs: Vec<Run>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank_like_dbqs_bench() {
        let s = summarize((1..=100).map(|x| x * 1000).collect(), 2, 1.0);
        assert_eq!(s.p50_ms, 50.0);
        assert_eq!(s.p90_ms, 90.0);
        assert_eq!(s.p99_ms, 99.0);
        assert_eq!(s.max_ms, 100.0);
        assert_eq!(s.avg_ms, 50.5);
        assert_eq!(s.ops_per_s, 100.0);
        assert_eq!(summarize(vec![], 0, 0.0).p50_ms, 0.0);
    }

    #[test]
    fn reads_dbqs_bench_json() {
        let line = r#"{"op":"write","clients":3,"value_size":100,"epoch":4,"f":1,
            "result":{"ops":10,"errors":0,"seconds":1.0,"ops_per_s":10.0,"avg_ms":1.0,
            "p50_ms":1.0,"p90_ms":1.0,"p99_ms":1.0,"max_ms":1.0,"first_errors":[]}}"#;
        let o: BenchOutput = serde_json::from_str(line).unwrap();
        assert_eq!(o.clients, 3);
        assert_eq!(o.result.ops, 10);
    }
}
