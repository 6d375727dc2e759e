//! `dbqs`: the dBQS command line (client operations, genesis, keys, status).

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use dbqs_client::Client;
use dbqs_client::files::{self, ClientSettings};
use dbqs_client::{bench, chunked};
use dbqs_common::config::Params;
use dbqs_common::genesis::{self, NodeSpec};
use dbqs_common::{KeyPair, ObjectId, PublicKey};
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "dbqs",
    version,
    about = "dBQS client: Byzantine fault-tolerant object store"
)]
struct Cli {
    /// Client configuration written by `dbqs genesis` or `dbqs-server devnet`.
    #[arg(
        long,
        global = true,
        env = "DBQS_CONFIG",
        default_value = "client.toml"
    )]
    config: PathBuf,
    /// Print results as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a cluster directory: authority and CA keys, MS key shares, node keys
    /// and certificates, node.toml per node, client.toml.
    Genesis {
        #[arg(long)]
        dir: PathBuf,
        /// Node addresses (host:port), comma-separated; or use --nodes.
        #[arg(long, value_delimiter = ',')]
        addresses: Vec<String>,
        /// With --host/--base-port: node i gets HOST:(BASE-PORT + i).
        #[arg(long, default_value_t = 4)]
        nodes: usize,
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        #[arg(long, default_value_t = 7100)]
        base_port: u16,
        /// Host each node binds (default: the host of its address).
        #[arg(long)]
        listen_host: Option<String>,
        /// Byzantine members tolerated per group.
        #[arg(long, default_value_t = 1)]
        f: u32,
    },
    /// Create an ed25519 key file (mode 0600) and print its public key.
    Keygen {
        #[arg(long, short)]
        out: PathBuf,
    },
    /// Store FILE under NAME, owned by your key (large files are chunked).
    Put { name: String, file: PathBuf },
    /// Read NAME (yours, or --owner's) into a file.
    Get {
        name: String,
        /// Owner public key (hex); default: your own.
        #[arg(long)]
        owner: Option<String>,
        #[arg(short, long)]
        out: PathBuf,
    },
    /// Store FILE as immutable content; prints the id to fetch it by.
    PutBlob { file: PathBuf },
    /// Fetch content object ID into a file.
    GetBlob {
        id: String,
        #[arg(short, long)]
        out: PathBuf,
    },
    /// Show the configuration, groups and which nodes answer.
    Status,
    /// Closed-loop load: N clients each run M operations (after warm-up) and
    /// report throughput and latency.
    Bench {
        #[arg(long, default_value_t = 1)]
        clients: usize,
        /// Measured operations per client.
        #[arg(long, default_value_t = 1000)]
        ops: usize,
        #[arg(long, default_value_t = 50)]
        warmup: usize,
        #[arg(long, value_enum, default_value_t = bench::BenchOp::Write)]
        op: bench::BenchOp,
        #[arg(long, default_value_t = 100)]
        value_size: usize,
        /// Stop measuring after this many seconds even if ops remain.
        #[arg(long, default_value_t = 60)]
        duration: u64,
        #[arg(long, default_value_t = 16)]
        keys: usize,
    },
}

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dbqs: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dbqs: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn client(config: &Path) -> anyhow::Result<Client> {
    let s =
        ClientSettings::load(config).with_context(|| format!("loading {}", config.display()))?;
    Ok(Client::new(&s))
}

fn out_file(p: &Path) -> anyhow::Result<std::io::BufWriter<std::fs::File>> {
    Ok(std::io::BufWriter::new(
        std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
    ))
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.cmd {
        Cmd::Genesis {
            dir,
            addresses,
            nodes,
            host,
            base_port,
            listen_host,
            f,
        } => {
            let addresses = if addresses.is_empty() {
                (0..nodes)
                    .map(|i| format!("{host}:{}", base_port as usize + 1 + i))
                    .collect()
            } else {
                addresses
            };
            let mut specs = Vec::new();
            let mut listen = Vec::new();
            for a in &addresses {
                let (h, port) = a
                    .rsplit_once(':')
                    .with_context(|| format!("address {a:?} needs host:port"))?;
                let port: u16 = port
                    .parse()
                    .with_context(|| format!("address {a:?}: bad port"))?;
                let ips: Vec<IpAddr> = h.parse().into_iter().collect();
                specs.push(NodeSpec {
                    address: a.clone(),
                    ips,
                });
                listen.push(format!("{}:{port}", listen_host.as_deref().unwrap_or(h)));
            }
            if dir.join("genesis.cert").exists() {
                bail!(
                    "{} already holds a cluster; choose another --dir",
                    dir.display()
                );
            }
            let g = genesis::create(
                &specs,
                Params {
                    f,
                    ..Params::default()
                },
            )?;
            let tomls = files::write_cluster_dir(&dir, &g, &listen)?;
            if cli.json {
                println!(
                    "{}",
                    json!({"dir": dir, "ms_public_key": hex::encode(g.ms_public_key.to_bytes()),
                           "nodes": tomls, "client": dir.join("client.toml")})
                );
            } else {
                println!(
                    "cluster of {} nodes written to {}",
                    tomls.len(),
                    dir.display()
                );
                println!("MS public key: {}", hex::encode(g.ms_public_key.to_bytes()));
                println!(
                    "start each node with: dbqs-server run --config {}/nodes/nXX/node.toml",
                    dir.display()
                );
                println!(
                    "client configuration: {}",
                    dir.join("client.toml").display()
                );
            }
        }
        Cmd::Keygen { out } => {
            if out.exists() {
                bail!("{} exists; not overwriting a key", out.display());
            }
            let k = KeyPair::generate();
            files::write_keypair(&out, &k)?;
            if cli.json {
                println!(
                    "{}",
                    json!({"file": out, "public_key": k.public().to_hex()})
                );
            } else {
                println!("{}", k.public().to_hex());
            }
        }
        Cmd::Put { name, file } => {
            let c = client(&cli.config)?;
            let t = Instant::now();
            let r = chunked::put_file(&c, name.as_bytes(), &file).await?;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            if cli.json {
                println!(
                    "{}",
                    json!({"id": r.id.to_hex(), "counter": r.timestamp.counter, "epoch": r.epoch, "ms": ms})
                );
            } else {
                println!(
                    "stored {name} (id {}, version {}, epoch {}) in {ms:.1} ms",
                    r.id.to_hex(),
                    r.timestamp.counter,
                    r.epoch
                );
            }
        }
        Cmd::Get { name, owner, out } => {
            let c = client(&cli.config)?;
            let owner = match owner {
                Some(h) => {
                    let b = hex::decode(h.trim()).context("--owner must be hex")?;
                    PublicKey::from_slice(&b)
                        .map_err(|_| anyhow::anyhow!("--owner must be a 32-byte ed25519 key"))?
                }
                None => c.owner_key().context("no owner key configured")?,
            };
            let t = Instant::now();
            let mut w = out_file(&out)?;
            let n = chunked::get_file(&c, &owner, name.as_bytes(), &mut w).await?;
            w.flush()?;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            match n {
                None => {
                    let _ = std::fs::remove_file(&out);
                    if cli.json {
                        println!("{}", json!({"found": false}));
                    } else {
                        eprintln!("dbqs: {name}: not found");
                    }
                    return Ok(ExitCode::from(2));
                }
                Some(n) if cli.json => println!("{}", json!({"found": true, "bytes": n, "ms": ms})),
                Some(n) => println!("wrote {n} bytes to {} in {ms:.1} ms", out.display()),
            }
        }
        Cmd::PutBlob { file } => {
            let c = client(&cli.config)?;
            let t = Instant::now();
            let id = chunked::put_blob_file(&c, &file).await?;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            if cli.json {
                println!("{}", json!({"id": id.to_hex(), "ms": ms}));
            } else {
                println!("{}", id.to_hex());
            }
        }
        Cmd::GetBlob { id, out } => {
            let c = client(&cli.config)?;
            let id = ObjectId::from_hex(&id).map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut w = out_file(&out)?;
            let n = chunked::get_blob_file(&c, id, &mut w).await?;
            w.flush()?;
            match n {
                None => {
                    let _ = std::fs::remove_file(&out);
                    eprintln!("dbqs: {}: not found", id.to_hex());
                    return Ok(ExitCode::from(2));
                }
                Some(n) if cli.json => println!("{}", json!({"found": true, "bytes": n})),
                Some(n) => println!("wrote {n} bytes to {}", out.display()),
            }
        }
        Cmd::Status => {
            let c = client(&cli.config)?;
            status(&c, cli.json).await?;
        }
        Cmd::Bench {
            clients,
            ops,
            warmup,
            op,
            value_size,
            duration,
            keys,
        } => {
            let c = client(&cli.config)?;
            let spec = bench::BenchSpec {
                clients: clients.clamp(1, 4096),
                ops,
                warmup_ops: warmup,
                op,
                value_bytes: value_size,
                duration: std::time::Duration::from_secs(duration),
                keys_per_client: keys,
            };
            let total = (spec.clients * spec.ops) as u64;
            let pb = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                indicatif::ProgressBar::new(total)
            } else {
                indicatif::ProgressBar::hidden()
            };
            let pb2 = pb.clone();
            let s = bench::run(&c, &spec, move |n| pb2.set_position(n)).await;
            pb.finish_and_clear();
            if cli.json {
                println!(
                    "{}",
                    serde_json::to_string(
                        &json!({"op": op, "clients": spec.clients, "value_size": value_size,
                    "epoch": c.config().epoch(), "f": c.config().f(), "result": s})
                    )?
                );
            } else {
                println!(
                    "{op:?} x{} clients, {value_size} B, f={}: {} ops in {:.2} s = {:.0} ops/s; latency avg {:.3} p50 {:.3} p90 {:.3} p99 {:.3} max {:.3} ms; {} errors",
                    spec.clients,
                    c.config().f(),
                    s.ops,
                    s.seconds,
                    s.ops_per_s,
                    s.avg_ms,
                    s.p50_ms,
                    s.p90_ms,
                    s.p99_ms,
                    s.max_ms,
                    s.errors
                );
            }
            if s.errors > 0 && s.ops == 0 {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn status(c: &Client, as_json: bool) -> anyhow::Result<()> {
    // Catch up first, from whichever member shows a newer epoch.
    let probes = c.probe_members().await;
    for (n, r) in &probes {
        if let Ok((e, _)) = r
            && *e > c.config().epoch()
        {
            let _ = c.fetch_config_from(*n).await;
        }
    }
    let cfg = c.config();
    let ring: Vec<_> = cfg.ring().members().map(|(p, n)| (*p, *n)).collect();
    let probe: std::collections::HashMap<_, _> = probes.into_iter().collect();
    let members: Vec<_> = ring
        .iter()
        .enumerate()
        .map(|(i, (pos, id))| {
            let m = cfg.member(id);
            let answer = match probe.get(id) {
                Some(Ok((e, d))) => {
                    json!({"ok": true, "epoch": e, "rtt_ms": d.as_secs_f64() * 1e3})
                }
                Some(Err(e)) => json!({"ok": false, "error": e.to_string()}),
                None => json!({"ok": false}),
            };
            let group: Vec<String> = cfg
                .ring()
                .group(&ObjectId(*pos), cfg.group_size())
                .iter()
                .map(|n| n.short())
                .collect();
            json!({"ring": i, "node": id.to_hex(), "short": id.short(),
                   "address": m.map(|m| m.address.clone()), "ring_position": hex::encode(pos),
                   "ms": cfg.config.ms_members.contains(id), "answer": answer,
                   "group_of_range_ending_here": group})
        })
        .collect();
    if as_json {
        println!(
            "{}",
            json!({"epoch": cfg.epoch(), "f": cfg.f(), "group_size": cfg.group_size(), "quorum": cfg.quorum(),
                   "ms_members": cfg.config.ms_members.iter().map(|n| n.to_hex()).collect::<Vec<_>>(),
                   "members": members})
        );
        return Ok(());
    }
    println!(
        "epoch {}: {} members, f={} (groups of {}, quorums of {}), MS of {}",
        cfg.epoch(),
        cfg.config.members.len(),
        cfg.f(),
        cfg.group_size(),
        cfg.quorum(),
        cfg.config.ms_members.len()
    );
    println!(
        "{:>4}  {:<8}  {:<21}  {:<3}  {:<22}  group of the range ending here",
        "ring", "node", "address", "MS", "answers"
    );
    for m in &members {
        let ans = if m["answer"]["ok"].as_bool() == Some(true) {
            format!(
                "yes ({:.1} ms)",
                m["answer"]["rtt_ms"].as_f64().unwrap_or(0.0)
            )
        } else {
            "NO".to_string()
        };
        println!(
            "{:>4}  {:<8}  {:<21}  {:<3}  {:<22}  {}",
            m["ring"],
            m["short"].as_str().unwrap_or(""),
            m["address"].as_str().unwrap_or(""),
            if m["ms"].as_bool() == Some(true) {
                "yes"
            } else {
                ""
            },
            ans,
            m["group_of_range_ending_here"]
                .as_array()
                .map(|a| a
                    .iter()
                    .filter_map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join(" "))
                .unwrap_or_default()
        );
    }
    Ok(())
}
