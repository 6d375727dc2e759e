//! Per-node request counters and latency totals (exported as Prometheus metrics
//! once the metrics endpoint lands; `dbqs status` reads them today).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

#[derive(Default, Debug)]
pub struct OpStats {
    pub count: AtomicU64,
    pub total_us: AtomicU64,
}

#[derive(Default, Debug)]
pub struct Stats {
    pub read_timestamp: OpStats,
    pub write: OpStats,
    pub read: OpStats,
}

/// Records one request's latency when dropped.
pub struct Timer<'a> {
    op: &'a OpStats,
    start: Instant,
}

impl Drop for Timer<'_> {
    fn drop(&mut self) {
        self.op.count.fetch_add(1, Ordering::Relaxed);
        self.op
            .total_us
            .fetch_add(self.start.elapsed().as_micros() as u64, Ordering::Relaxed);
    }
}

impl Stats {
    pub fn time(&self, op: &'static str) -> Timer<'_> {
        let op = match op {
            "read_timestamp" => &self.read_timestamp,
            "write" => &self.write,
            _ => &self.read,
        };
        Timer {
            op,
            start: Instant::now(),
        }
    }
}
