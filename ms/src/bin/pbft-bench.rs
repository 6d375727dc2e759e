//! Benchmark (not a test): a null operation through a PBFT group over loopback gRPC with
//! mutual TLS and redb persistence, against the same client loop on a 1-replica group
//! (f = 0: no agreement traffic, same TLS, gRPC, signatures and fsync) as the
//! unreplicated baseline.
//!
//! Closed loop: each of C clients (its own ed25519 key) sends one request, waits for f+1
//! matching signed replies, and sends the next. Each measurement stops after `--ops`
//! operations or `--duration-s` seconds, whichever comes first.
//!
//! `cargo run --release -p dbqs-ms --bin pbft-bench -- --ops 2000 --duration-s 20 [--json]`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dbqs_ms::pbft::{Application, Request, RestoreError};
use dbqs_ms::service::{LocalGroup, PbftClientConfig, RunningReplica, RuntimeCounters};
use ed25519_dalek::SigningKey;

/// The null operation: no state, empty replies.
struct NullApp;

impl Application for NullApp {
    fn execute(&mut self, batch: &[Request]) -> Vec<Vec<u8>> {
        vec![Vec::new(); batch.len()]
    }
    fn query(&self, _op: &[u8]) -> Vec<u8> {
        Vec::new()
    }
    fn snapshot(&self) -> Vec<u8> {
        Vec::new()
    }
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError> {
        if snapshot.is_empty() {
            Ok(())
        } else {
            Err(RestoreError {
                reason: "the null application has no state".into(),
            })
        }
    }
}

struct Args {
    ops: u64,
    duration_s: u64,
    warmup_ops: u64,
    clients: Vec<usize>,
    replicas: Vec<usize>,
    json: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        ops: 2_000,
        duration_s: 20,
        warmup_ops: 200,
        clients: vec![1, 32],
        replicas: vec![4, 1],
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match flag.as_str() {
            "--ops" => a.ops = value("--ops")?.parse().map_err(|e| format!("--ops: {e}"))?,
            "--duration-s" => {
                a.duration_s = value("--duration-s")?
                    .parse()
                    .map_err(|e| format!("--duration-s: {e}"))?
            }
            "--warmup-ops" => {
                a.warmup_ops = value("--warmup-ops")?
                    .parse()
                    .map_err(|e| format!("--warmup-ops: {e}"))?
            }
            "--clients" => {
                a.clients = value("--clients")?
                    .split(',')
                    .map(|c| c.parse().map_err(|e| format!("--clients: {e}")))
                    .collect::<Result<_, _>>()?
            }
            "--replicas" => {
                a.replicas = value("--replicas")?
                    .split(',')
                    .map(|c| c.parse().map_err(|e| format!("--replicas: {e}")))
                    .collect::<Result<_, _>>()?
            }
            "--json" => a.json = true,
            "-h" | "--help" => {
                println!(
                    "pbft-bench [--ops N] [--duration-s S] [--warmup-ops N] [--clients 1,32] [--replicas 4,1] [--json]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.ops == 0 || a.duration_s == 0 || a.clients.is_empty() || a.clients.contains(&0) {
        return Err("--ops, --duration-s and every --clients value must be positive".into());
    }
    if a.replicas.is_empty() || a.replicas.iter().any(|&n| n == 0 || (n - 1) % 3 != 0) {
        return Err("every --replicas value must be 3f+1 (1, 4, 7, ...)".into());
    }
    Ok(a)
}

/// One measurement.
struct Row {
    replicas: usize,
    clients: usize,
    ops: u64,
    elapsed_s: f64,
    p50_us: u64,
    p99_us: u64,
    mean_us: f64,
    outbound_dropped: u64,
    persist_commits: u64,
}

impl Row {
    fn ops_per_s(&self) -> f64 {
        self.ops as f64 / self.elapsed_s
    }
}

fn percentile_us(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let idx = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx]
}

async fn measure(replicas: usize, clients: usize, args: &Args) -> anyhow_free::Result<Row> {
    let dir = tempdir()?;
    let mut g = LocalGroup::new(replicas, &dir)?;
    let mut running: Vec<RunningReplica> = Vec::new();
    for i in 0..replicas {
        running.push(g.start(g.config(i), NullApp).await?);
    }
    let ccfg = PbftClientConfig {
        attempt_timeout_ms: 2_000,
        max_attempts: 5,
        ..PbftClientConfig::default()
    };
    let mut pbft_clients = Vec::with_capacity(clients);
    for c in 0..clients {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&(c as u64 + 1).to_be_bytes());
        seed[8] = replicas as u8;
        pbft_clients.push(g.client(
            &format!("bench-{c}"),
            SigningKey::from_bytes(&seed),
            ccfg.clone(),
        )?);
    }

    // Warm-up: connections, TLS handshakes, first batches (not measured).
    let warmup_each = args.warmup_ops.div_ceil(clients as u64).max(1);
    let mut tasks = Vec::new();
    for mut c in pbft_clients {
        tasks.push(tokio::spawn(async move {
            for _ in 0..warmup_each {
                c.invoke(Vec::new()).await?;
            }
            Ok::<_, dbqs_ms::service::ClientError>(c)
        }));
    }
    let mut pbft_clients = Vec::new();
    for t in tasks {
        pbft_clients.push(t.await??);
    }

    let issued = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.duration_s);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for mut c in pbft_clients {
        let issued = issued.clone();
        let max_ops = args.ops;
        tasks.push(tokio::spawn(async move {
            let mut lat_us = Vec::new();
            while Instant::now() < deadline && issued.fetch_add(1, Ordering::Relaxed) < max_ops {
                let t0 = Instant::now();
                c.invoke(Vec::new()).await?;
                lat_us.push(t0.elapsed().as_micros() as u64);
            }
            Ok::<_, dbqs_ms::service::ClientError>(lat_us)
        }));
    }
    let mut lat_us = Vec::new();
    for t in tasks {
        lat_us.extend(t.await??);
    }
    let elapsed_s = start.elapsed().as_secs_f64();
    lat_us.sort_unstable();
    let mean_us = lat_us.iter().sum::<u64>() as f64 / lat_us.len().max(1) as f64;
    let mut row = Row {
        replicas,
        clients,
        ops: lat_us.len() as u64,
        elapsed_s,
        p50_us: percentile_us(&lat_us, 0.50),
        p99_us: percentile_us(&lat_us, 0.99),
        mean_us,
        outbound_dropped: 0,
        persist_commits: 0,
    };
    for r in &running {
        row.outbound_dropped += RuntimeCounters::get(&r.counters.outbound_dropped);
        row.persist_commits += RuntimeCounters::get(&r.counters.persist_commits);
    }
    for r in running {
        r.shutdown().await?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(row)
}

/// A fresh directory under the system temp dir for one measurement's redb files.
fn tempdir() -> std::io::Result<std::path::PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("pbft-bench-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Boxed errors without an extra dependency (`anyhow` is for binaries that have it).
mod anyhow_free {
    pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;
}

fn machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cores} cores, {model}")
}

fn main() -> anyhow_free::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = parse_args()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    for &clients in &args.clients {
        for &replicas in &args.replicas {
            if !args.json {
                eprintln!("measuring {replicas} replica(s), {clients} client(s) ...");
            }
            rows.push(rt.block_on(measure(replicas, clients, &args))?);
        }
    }
    let find = |n: usize, c: usize| rows.iter().find(|r| r.replicas == n && r.clients == c);
    if args.json {
        let mut out = String::from("{\n");
        out += &format!("  \"machine\": \"{}\",\n", machine().replace('"', "'"));
        out += "  \"rows\": [\n";
        let body: Vec<String> = rows
            .iter()
            .map(|r| {
                format!(
                    "    {{\"replicas\": {}, \"clients\": {}, \"ops\": {}, \"elapsed_s\": {:.3}, \"p50_us\": {}, \"p99_us\": {}, \"mean_us\": {:.1}, \"ops_per_s\": {:.1}, \"outbound_dropped\": {}, \"persist_commits\": {}}}",
                    r.replicas, r.clients, r.ops, r.elapsed_s, r.p50_us, r.p99_us, r.mean_us,
                    r.ops_per_s(), r.outbound_dropped, r.persist_commits
                )
            })
            .collect();
        out += &body.join(",\n");
        out += "\n  ],\n  \"ratios_4_over_1\": [\n";
        let ratios: Vec<String> = args
            .clients
            .iter()
            .filter_map(|&c| Some((c, find(4, c)?, find(1, c)?)))
            .map(|(c, a, b)| {
                format!(
                    "    {{\"clients\": {c}, \"p50\": {:.2}, \"p99\": {:.2}, \"throughput\": {:.2}}}",
                    a.p50_us as f64 / b.p50_us.max(1) as f64,
                    a.p99_us as f64 / b.p99_us.max(1) as f64,
                    a.ops_per_s() / b.ops_per_s()
                )
            })
            .collect();
        out += &ratios.join(",\n");
        out += "\n  ]\n}";
        println!("{out}");
        return Ok(());
    }
    println!("machine: {}", machine());
    println!(
        "null op, loopback gRPC + mutual TLS, redb fsync; ops <= {} per row, <= {} s per row",
        args.ops, args.duration_s
    );
    println!(
        "{:>8} {:>7} {:>7} {:>10} {:>10} {:>10} {:>10} {:>8} {:>8}",
        "replicas", "clients", "ops", "p50 ms", "p99 ms", "mean ms", "ops/s", "drops", "commits"
    );
    for r in &rows {
        println!(
            "{:>8} {:>7} {:>7} {:>10.3} {:>10.3} {:>10.3} {:>10.0} {:>8} {:>8}",
            r.replicas,
            r.clients,
            r.ops,
            r.p50_us as f64 / 1e3,
            r.p99_us as f64 / 1e3,
            r.mean_us / 1e3,
            r.ops_per_s(),
            r.outbound_dropped,
            r.persist_commits
        );
    }
    println!("4 replicas vs 1 (unreplicated baseline):");
    for &c in &args.clients {
        if let (Some(a), Some(b)) = (find(4, c), find(1, c)) {
            println!(
                "  {c:>3} client(s): p50 x{:.2} (+{:.3} ms), p99 x{:.2}, throughput x{:.2}",
                a.p50_us as f64 / b.p50_us.max(1) as f64,
                (a.p50_us as f64 - b.p50_us as f64) / 1e3,
                a.p99_us as f64 / b.p99_us.max(1) as f64,
                a.ops_per_s() / b.ops_per_s()
            );
        }
    }
    Ok(())
}
