//! `etcd-bench`: the closed-loop load of `dbqs bench`, against etcd.
//!
//! N clients, each with its own `etcd_client::Client` (its own connections, over mutual
//! TLS), issue one operation, wait for it and issue the next: `put` for writes and a
//! linearizable `get` (etcd's default, `serializable = false`) for reads. As in `dbqs
//! bench`: keys are PREFIX-CLIENT-KEY with `--keys` keys per client that a client cycles
//! over; reads run over keys written beforehand (not measured); each client first runs
//! `--warmup` unmeasured operations; the measured phase stops after `--ops` operations
//! or `--duration` seconds, whichever comes first; and `--json` prints
//! `{"op", "clients", "value_size", "system", "endpoints", "result": {...}}` with the
//! same `result` fields. Every operation has a timeout (`--timeout-ms`), so every loop
//! is bounded in count and time.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use dbqs_bench_harness::{summarize, Summary, KEPT_ERRORS};
use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Op {
    Read,
    Write,
    /// Alternating writes and reads, as `dbqs bench --op mixed`.
    Mixed,
}

#[derive(Parser, Debug)]
#[command(about = "Closed-loop etcd load generator with the shape of `dbqs bench`")]
struct Args {
    /// Comma-separated client URLs, e.g. https://127.0.0.1:23791,https://127.0.0.1:23792
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// CA certificate (PEM) that signed the members' certificates.
    #[arg(long)]
    cacert: Option<String>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long, requires = "key")]
    cert: Option<String>,
    /// Client private key (PEM) for mutual TLS.
    #[arg(long, requires = "cert")]
    key: Option<String>,
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Measured operations per client.
    #[arg(long, default_value_t = 1000)]
    ops: usize,
    /// Unmeasured operations per client before the measured phase.
    #[arg(long, default_value_t = 50)]
    warmup: usize,
    #[arg(long, value_enum, default_value_t = Op::Write)]
    op: Op,
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Stop measuring after this many seconds even if operations remain.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Keys per client that its operations cycle over.
    #[arg(long, default_value_t = 16)]
    keys: usize,
    /// Keys are PREFIX-CLIENT-KEY.
    #[arg(long, default_value = "bench")]
    prefix: String,
    /// Timeout of each request and of connecting.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    /// Print the result as one line of JSON.
    #[arg(long)]
    json: bool,
}

/// What one client task hands back.
struct ClientResult {
    lat_us: Vec<u64>,
    errors: usize,
    measured: Duration,
    kept: Vec<String>,
}

/// Connect options shared by every client: TLS (when a CA is given) and timeouts.
fn connect_options(a: &Args) -> Result<ConnectOptions> {
    let timeout = Duration::from_millis(a.timeout_ms);
    let mut opts = ConnectOptions::new()
        .with_timeout(timeout)
        .with_connect_timeout(timeout);
    if let Some(ca) = &a.cacert {
        let ca = std::fs::read(ca).with_context(|| format!("reading {ca}"))?;
        let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(ca));
        if let (Some(cert), Some(key)) = (&a.cert, &a.key) {
            let cert = std::fs::read(cert).with_context(|| format!("reading {cert}"))?;
            let key = std::fs::read(key).with_context(|| format!("reading {key}"))?;
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        opts = opts.with_tls(tls);
    }
    Ok(opts)
}

/// One operation: `put`, or a linearizable `get` that must find the key.
async fn one(c: &mut Client, op: Op, i: usize, key: &[u8], value: &[u8]) -> Result<(), String> {
    let write = match op {
        Op::Write => true,
        Op::Read => false,
        Op::Mixed => i.is_multiple_of(2),
    };
    if write {
        c.put(key, value, None)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    } else {
        // `None` options: serializable = false, i.e. a linearizable read through the
        // leader's read index.
        let r = c.get(key, None).await.map_err(|e| e.to_string())?;
        match r.kvs().first() {
            Some(kv) if kv.value().len() == value.len() => Ok(()),
            Some(kv) => Err(format!(
                "{}: {} bytes, expected {}",
                String::from_utf8_lossy(key),
                kv.value().len(),
                value.len()
            )),
            None => Err(format!("{} not found", String::from_utf8_lossy(key))),
        }
    }
}

/// One closed-loop client: prefill (reads), warm-up, then the measured phase.
async fn client_loop(mut c: Client, a: &Args, keys: Vec<Vec<u8>>, value: &[u8]) -> ClientResult {
    let total = Duration::from_secs(a.duration);
    // Reads need something to read: write this client's keys first (not measured).
    if a.op != Op::Write {
        for k in &keys {
            let _ = c.put(k.clone(), value, None).await;
        }
    }
    for i in 0..a.warmup {
        let _ = one(&mut c, a.op, i, &keys[i % keys.len()], value).await;
    }
    let mut lat_us = Vec::with_capacity(a.ops.min(1 << 20));
    let mut errors = 0;
    let mut kept = Vec::new();
    let begin = Instant::now();
    for i in 0..a.ops {
        if begin.elapsed() >= total {
            break;
        }
        let t = Instant::now();
        match one(&mut c, a.op, i, &keys[i % keys.len()], value).await {
            Ok(()) => lat_us.push(t.elapsed().as_micros() as u64),
            Err(e) => {
                errors += 1;
                if kept.len() < KEPT_ERRORS {
                    kept.push(e);
                }
            }
        }
    }
    ClientResult {
        lat_us,
        errors,
        measured: begin.elapsed(),
        kept,
    }
}

#[derive(Serialize)]
struct Output<'a> {
    system: &'static str,
    op: Op,
    clients: usize,
    value_size: usize,
    endpoints: &'a [String],
    result: Summary,
}

async fn run(a: Args) -> Result<Summary> {
    let opts = connect_options(&a)?;
    let clients = a.clients.clamp(1, 4096);
    // Each closed-loop client gets its own Client: its own channel and connections.
    let mut conns = Vec::with_capacity(clients);
    for k in 0..clients {
        let c = Client::connect(&a.endpoints, Some(opts.clone()))
            .await
            .with_context(|| format!("client {k}: connecting to {:?}", a.endpoints))?;
        conns.push(c);
    }
    // Check the cluster answers before starting the clock (bounded by the timeout).
    conns[0]
        .status()
        .await
        .context("etcd status (is the cluster up, are the TLS files right?)")?;

    let value: Vec<u8> = (0..a.value_size).map(|i| i as u8).collect();
    let a = std::sync::Arc::new(a);
    let value = std::sync::Arc::new(value);
    let mut tasks = Vec::with_capacity(clients);
    for (k, c) in conns.into_iter().enumerate() {
        let keys: Vec<Vec<u8>> = (0..a.keys.max(1))
            .map(|j| format!("{}-{k}-{j}", a.prefix).into_bytes())
            .collect();
        let a = a.clone();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            client_loop(c, &a, keys, &value).await
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    let mut longest = Duration::ZERO;
    let mut first_errors = Vec::new();
    for t in tasks {
        let r = t.await.context("client task panicked")?;
        all.extend(r.lat_us);
        errors += r.errors;
        longest = longest.max(r.measured);
        first_errors.extend(r.kept);
    }
    first_errors.truncate(KEPT_ERRORS);
    let mut s = summarize(all, errors, longest.as_secs_f64());
    s.first_errors = first_errors;

    if a.json {
        let out = Output {
            system: "etcd",
            op: a.op,
            clients,
            value_size: a.value_size,
            endpoints: &a.endpoints,
            result: s.clone(),
        };
        println!("{}", serde_json::to_string(&out)?);
    } else {
        println!(
            "etcd {:?} x{clients} clients, {} B: {} ops in {:.2} s = {:.0} ops/s; latency avg {:.3} p50 {:.3} p90 {:.3} p99 {:.3} max {:.3} ms; {} errors",
            a.op, a.value_size, s.ops, s.seconds, s.ops_per_s, s.avg_ms, s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms, s.errors
        );
        for e in &s.first_errors {
            println!("  error: {e}");
        }
    }
    Ok(s)
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = Args::parse();
    if a.endpoints.is_empty() {
        bail!("no endpoints");
    }
    let s = run(a).await?;
    if s.errors > 0 && s.ops == 0 {
        bail!("every measured operation failed");
    }
    Ok(())
}
