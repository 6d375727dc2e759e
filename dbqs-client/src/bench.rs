//! `dbqs bench`: a closed-loop load generator. Each client issues one operation,
//! waits for it, and issues the next; warm-up operations are not measured. Every
//! loop is bounded by an operation count and a duration.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::client::Client;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BenchOp {
    Read,
    Write,
    Mixed,
}

#[derive(Clone, Debug)]
pub struct BenchSpec {
    pub clients: usize,
    /// Measured operations per client (after warm-up).
    pub ops: usize,
    pub warmup_ops: usize,
    pub op: BenchOp,
    pub value_bytes: usize,
    /// Upper bound on the measured phase.
    pub duration: Duration,
    /// Objects per client that reads and writes cycle over.
    pub keys_per_client: usize,
    /// Object names are PREFIX-CLIENT-KEY.
    pub prefix: String,
    /// Reads: write every key first (unmeasured). Without it a read of a missing object
    /// counts as an error, which is how scripts check that objects are still there.
    pub prefill: bool,
}

/// Latency summary in milliseconds (also read back by the comparison harness in
/// `benches/harness`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub ops: usize,
    pub errors: usize,
    pub seconds: f64,
    pub ops_per_s: f64,
    pub avg_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// The first few errors, to say why operations failed.
    #[serde(default)]
    pub first_errors: Vec<String>,
}

/// Errors kept verbatim in a summary.
pub const KEPT_ERRORS: usize = 5;

pub fn summarize(mut lat_us: Vec<u64>, errors: usize, seconds: f64) -> Summary {
    lat_us.sort_unstable();
    let n = lat_us.len();
    let pct = |p: f64| -> f64 {
        if n == 0 {
            return 0.0;
        }
        let i = ((p * n as f64).ceil() as usize).clamp(1, n) - 1;
        lat_us[i] as f64 / 1e3
    };
    Summary {
        ops: n,
        errors,
        seconds,
        ops_per_s: if seconds > 0.0 {
            n as f64 / seconds
        } else {
            0.0
        },
        avg_ms: if n == 0 {
            0.0
        } else {
            lat_us.iter().sum::<u64>() as f64 / n as f64 / 1e3
        },
        p50_ms: pct(0.50),
        p90_ms: pct(0.90),
        p99_ms: pct(0.99),
        max_ms: lat_us.last().map_or(0.0, |&m| m as f64 / 1e3),
        first_errors: Vec::new(),
    }
}

async fn one(c: &Client, op: BenchOp, i: usize, name: &[u8], value: &[u8]) -> Result<(), String> {
    let write = match op {
        BenchOp::Write => true,
        BenchOp::Read => false,
        BenchOp::Mixed => i.is_multiple_of(2),
    };
    if write {
        c.put(name, value.to_vec())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    } else {
        let owner = c.owner_key().ok_or("the client has no owner key")?;
        match c.get(&owner, name).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(format!("{} not found", String::from_utf8_lossy(name))),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Runs the benchmark. `progress` is called with the number of measured
/// operations done so far, about every 100 ms.
pub async fn run(
    c: &Client,
    spec: &BenchSpec,
    progress: impl Fn(u64) + Send + Sync + 'static,
) -> Summary {
    let value: Arc<Vec<u8>> = Arc::new((0..spec.value_bytes).map(|i| i as u8).collect());
    let names: Vec<Vec<Vec<u8>>> = (0..spec.clients)
        .map(|k| {
            (0..spec.keys_per_client.max(1))
                .map(|j| format!("{}-{k}-{j}", spec.prefix).into_bytes())
                .collect()
        })
        .collect();
    // Reads need something to read: write every key once (not measured).
    if spec.op != BenchOp::Write && spec.prefill {
        for ns in &names {
            for n in ns {
                let _ = c.put(n, value.to_vec()).await;
            }
        }
    }
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for ns in names {
        let c = c.clone();
        let value = value.clone();
        let spec = spec.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..spec.warmup_ops {
                let _ = one(&c, spec.op, i, &ns[i % ns.len()], &value).await;
            }
            let mut lat = Vec::with_capacity(spec.ops);
            let mut errors = 0;
            let mut kept = Vec::new();
            let begin = Instant::now();
            for i in 0..spec.ops {
                if begin.elapsed() >= spec.duration {
                    break;
                }
                let t = Instant::now();
                match one(&c, spec.op, i, &ns[i % ns.len()], &value).await {
                    Ok(()) => lat.push(t.elapsed().as_micros() as u64),
                    Err(e) => {
                        errors += 1;
                        if kept.len() < KEPT_ERRORS {
                            kept.push(e);
                        }
                    }
                }
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            (lat, errors, begin.elapsed(), kept)
        }));
    }
    let ticker_done = done.clone();
    let ticker = tokio::spawn(async move {
        loop {
            progress(ticker_done.load(std::sync::atomic::Ordering::Relaxed));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut all = Vec::new();
    let mut errors = 0;
    let mut longest = Duration::ZERO;
    let mut first_errors = Vec::new();
    for t in tasks {
        if let Ok((lat, e, d, kept)) = t.await {
            all.extend(lat);
            errors += e;
            longest = longest.max(d);
            first_errors.extend(kept);
        }
    }
    ticker.abort();
    first_errors.truncate(KEPT_ERRORS);
    let mut s = summarize(all, errors, longest.as_secs_f64());
    s.first_errors = first_errors;
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let s = summarize((1..=100).map(|x| x * 1000).collect(), 2, 1.0);
        assert_eq!(s.p50_ms, 50.0);
        assert_eq!(s.p99_ms, 99.0);
        assert_eq!(s.max_ms, 100.0);
        assert_eq!(s.errors, 2);
        assert_eq!(s.ops_per_s, 100.0);
        let e = summarize(vec![], 0, 0.0);
        assert_eq!(e.p50_ms, 0.0);
    }
}
