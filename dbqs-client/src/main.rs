//! `dbqs`: the dBQS command line (client operations, genesis, keys, status, admin).

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use dbqs_client::Client;
use dbqs_client::admin::{self, AdminError, DEFAULT_NOT_AFTER_DAYS, SubmitOutcome};
use dbqs_client::files::{self, ClientSettings};
use dbqs_client::{bench, chunked};
use dbqs_common::config::Params;
use dbqs_common::genesis::{self, NodeSpec};
use dbqs_common::{KeyPair, ObjectId, PublicKey};
use dbqs_proto::v1 as pb;
use serde_json::json;

/// `println!` that exits quietly (status 0) when the reader has gone away, as in
/// `dbqs status | head`, instead of panicking on the broken pipe.
macro_rules! outln {
    ($($arg:tt)+) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)+) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            eprintln!("dbqs: writing to standard output: {e}");
            std::process::exit(1);
        }
    }};
}

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
    /// Create an ed25519 key file (mode 0600) and print its public key; with
    /// --x25519, an x25519 key file (a node's key for receiving MS key shares).
    Keygen {
        #[arg(long, short)]
        out: PathBuf,
        /// Write an x25519 secret instead of an ed25519 seed.
        #[arg(long)]
        x25519: bool,
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
    /// Show the configuration, groups and which nodes answer; each node's freshness
    /// lease; and, from an MS member, the queued changes, EndEpoch votes and probes.
    Status,
    /// Get a freshness lease from the MS (f_ms+1 matching replies) and show its epoch,
    /// the time it took and the time left; exits 1 if none was granted within the
    /// client's timeout.
    Lease,
    /// Authority operations: admit, remove and renew nodes, rotate the authority key,
    /// issue, renew and revoke client credentials. Every certificate is signed with the
    /// authority key and gets serial = the current Unix time in microseconds. Membership
    /// changes are submitted to the MS of the newest configuration and take effect at the
    /// next epoch. Exit status: 0 accepted, 3 refused by the MS, 1 any other failure.
    Admin {
        /// The authority's ed25519 key file (mode 0600) [default: authority.key in the
        /// directory of --config, i.e. the cluster directory]
        #[arg(long, global = true)]
        authority: Option<PathBuf>,
        #[command(subcommand)]
        cmd: AdminCmd,
    },
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
        /// Object names are PREFIX-CLIENT-KEY.
        #[arg(long, default_value = "bench")]
        prefix: String,
        /// Reads only: do not write the keys first; a missing object counts as an
        /// error (to check that objects written earlier are all still readable).
        #[arg(long)]
        no_prefill: bool,
    },
}

#[derive(Subcommand)]
enum AdminCmd {
    /// Admit a node at the next epoch. Issues its TLS certificate with the cluster CA
    /// (ca.key and ca.pem in the directory of --config) into --tls-out, signs an AddCert
    /// binding the node key, that certificate's SHA-256, the x25519 key and --addr, writes
    /// it to --tls-out/add.cert and submits it to the MS. Needs the authority and CA keys.
    Add {
        /// The node's ed25519 public key: 64 hex digits, a *.pub file holding them, or
        /// the node's key file (node.key, as `dbqs keygen` writes it; only its public
        /// key is used).
        #[arg(long)]
        node_key: String,
        /// The node's x25519 public key: 64 hex digits, a *.pub file holding them, or the
        /// node's x25519.key (the hex secret, as `dbqs keygen --x25519` and genesis write
        /// it; its public key is derived).
        #[arg(long)]
        x25519_key: String,
        /// host:port clients and peers reach the node at; the host goes into the TLS
        /// certificate.
        #[arg(long)]
        addr: String,
        /// Directory for the node's tls.pem (0644), tls.key (0600) and add.cert; created
        /// if missing. An existing tls.key or add.cert there is never overwritten.
        #[arg(long)]
        tls_out: PathBuf,
        /// Another IP address to name in the TLS certificate (repeatable).
        #[arg(long = "ip")]
        ips: Vec<IpAddr>,
        /// The node leaves at the first epoch end after this many days unless renewed.
        #[arg(long, default_value_t = DEFAULT_NOT_AFTER_DAYS)]
        not_after_days: u64,
    },
    /// Remove a member at the next epoch (RemoveCert). Needs the authority key.
    Remove {
        /// The member's NodeId (64 hex digits, as `dbqs status` shows it).
        node_id: String,
    },
    /// Extend a member node's certificate (RenewCert). RenewCert renews nodes only; to
    /// renew a client, use `admin client renew`. Needs the authority key.
    Renew {
        /// The member's NodeId (64 hex digits).
        node_id: String,
        /// New expiry: this many days from now.
        #[arg(long, default_value_t = DEFAULT_NOT_AFTER_DAYS)]
        not_after_days: u64,
    },
    /// Replace the authority key from the next epoch on (RotateAuthorityCert, signed by
    /// the current key and by the new one). Needs the current authority key; generates
    /// the new key into --new-key (mode 0600) if that file does not exist. Once the next
    /// epoch starts, sign with the new key (pass --authority or replace authority.key).
    RotateAuthority {
        #[arg(long)]
        new_key: PathBuf,
    },
    /// Client credentials: issue, renew (no MS involved) and revoke (submitted to the MS).
    Client {
        #[command(subcommand)]
        cmd: ClientAdminCmd,
    },
}

#[derive(Subcommand)]
enum ClientAdminCmd {
    /// Write a new client's credentials into --out: owner.key and tls.key (0600),
    /// tls.pem, client.cert (its ClientCert), ca.pem, config.cert and a client.toml that
    /// uses them with the MS key, bootstrap list and timeout of --config. Involves no MS.
    /// Needs the authority key and the CA key (ca.key in the directory of --config).
    Issue {
        #[arg(long)]
        out: PathBuf,
        /// Name in the client's TLS certificate (<label>.client.dbqs; a-z, 0-9, '-')
        /// [default: derived from the new owner key]
        #[arg(long)]
        label: Option<String>,
        #[arg(long, default_value_t = DEFAULT_NOT_AFTER_DAYS)]
        not_after_days: u64,
    },
    /// Renew a client by issuing a new ClientCert for the same owner key and TLS
    /// certificate (DIR/tls.pem, and DIR/client.cert or DIR/owner.key) into
    /// DIR/client.cert; the old one is kept as client.cert.old. Clients are not tracked
    /// by the MS, so nothing is submitted. Needs the authority key.
    Renew {
        /// The client's directory (as `admin client issue` writes it).
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = DEFAULT_NOT_AFTER_DAYS)]
        not_after_days: u64,
    },
    /// Revoke a client's TLS certificate from the next epoch on (RevokeClientCert); nodes
    /// then refuse it. Needs the authority key.
    Revoke {
        /// The client's TLS certificate (PEM).
        #[arg(long)]
        tls_cert: PathBuf,
        /// The client's public key (hex, a *.pub file, or its owner.key) [default: from
        /// the client.cert beside --tls-cert]
        #[arg(long)]
        client_key: Option<String>,
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
                outln!(
                    "{}",
                    json!({"dir": dir, "ms_public_key": hex::encode(g.ms_public_key.to_bytes()),
                           "nodes": tomls, "client": dir.join("client.toml")})
                );
            } else {
                outln!(
                    "cluster of {} nodes written to {}",
                    tomls.len(),
                    dir.display()
                );
                outln!("MS public key: {}", hex::encode(g.ms_public_key.to_bytes()));
                outln!(
                    "start each node with: dbqs-server run --config {}/nodes/nXX/node.toml",
                    dir.display()
                );
                outln!(
                    "client configuration: {}",
                    dir.join("client.toml").display()
                );
            }
        }
        Cmd::Keygen { out, x25519 } => {
            if out.exists() {
                bail!("{} exists; not overwriting a key", out.display());
            }
            if x25519 {
                let mut secret = [0u8; 32];
                rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut secret);
                files::write_secret(&out, format!("{}\n", hex::encode(secret)).as_bytes())?;
                let public = hex::encode(admin::x25519_public(secret));
                if cli.json {
                    outln!("{}", json!({"file": out, "public_key": public}));
                } else {
                    outln!("{public}");
                }
                return Ok(ExitCode::SUCCESS);
            }
            let k = KeyPair::generate();
            files::write_keypair(&out, &k)?;
            if cli.json {
                outln!(
                    "{}",
                    json!({"file": out, "public_key": k.public().to_hex()})
                );
            } else {
                outln!("{}", k.public().to_hex());
            }
        }
        Cmd::Put { name, file } => {
            let c = client(&cli.config)?;
            let t = Instant::now();
            let r = chunked::put_file(&c, name.as_bytes(), &file).await?;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            let superseded = r.superseded_by.map(|t| t.counter);
            if cli.json {
                outln!(
                    "{}",
                    json!({"id": r.id.to_hex(), "counter": r.timestamp.counter, "epoch": r.epoch, "superseded_by": superseded, "ms": ms})
                );
            } else if let Some(newer) = superseded {
                // Another writer of this owner key stored a newer version meanwhile; this
                // put is ordered just before it, and readers see the newer one.
                outln!(
                    "wrote {name} (id {}, version {}, epoch {}) in {ms:.1} ms, already superseded by version {newer} from another writer of this key",
                    r.id.to_hex(),
                    r.timestamp.counter,
                    r.epoch
                );
            } else {
                outln!(
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
                        outln!("{}", json!({"found": false}));
                    } else {
                        eprintln!("dbqs: {name}: not found");
                    }
                    return Ok(ExitCode::from(2));
                }
                Some(n) if cli.json => outln!("{}", json!({"found": true, "bytes": n, "ms": ms})),
                Some(n) => outln!("wrote {n} bytes to {} in {ms:.1} ms", out.display()),
            }
        }
        Cmd::PutBlob { file } => {
            let c = client(&cli.config)?;
            let t = Instant::now();
            let id = chunked::put_blob_file(&c, &file).await?;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            if cli.json {
                outln!("{}", json!({"id": id.to_hex(), "ms": ms}));
            } else {
                outln!("{}", id.to_hex());
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
                Some(n) if cli.json => outln!("{}", json!({"found": true, "bytes": n})),
                Some(n) => outln!("wrote {n} bytes to {}", out.display()),
            }
        }
        Cmd::Status => {
            let c = client(&cli.config)?;
            status(&c, cli.json).await?;
        }
        Cmd::Lease => {
            let c = client(&cli.config)?;
            let started = std::time::Instant::now();
            let l = c.ensure_lease().await?;
            let took = started.elapsed().as_secs_f64() * 1e3;
            let left = l.remaining(std::time::Instant::now()).as_millis() as u64;
            if cli.json {
                outln!(
                    "{}",
                    json!({"epoch": l.epoch, "took_ms": took, "remaining_ms": left})
                );
            } else {
                outln!(
                    "lease for epoch {} in {took:.1} ms, {left} ms left",
                    l.epoch
                );
            }
        }
        Cmd::Admin { authority, cmd } => {
            return run_admin(&cli.config, authority, cmd, cli.json).await;
        }
        Cmd::Bench {
            clients,
            ops,
            warmup,
            op,
            value_size,
            duration,
            keys,
            prefix,
            no_prefill,
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
                prefix,
                prefill: !no_prefill,
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
                outln!(
                    "{}",
                    serde_json::to_string(
                        &json!({"op": op, "clients": spec.clients, "value_size": value_size,
                    "epoch": c.config().epoch(), "f": c.config().f(), "result": s})
                    )?
                );
            } else {
                outln!(
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
                for e in &s.first_errors {
                    outln!("  error: {e}");
                }
            }
            if s.errors > 0 && s.ops == 0 {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The directory of the client configuration: the cluster directory.
fn cluster_dir(config: &Path) -> PathBuf {
    match config.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

async fn run_admin(
    config: &Path,
    authority: Option<PathBuf>,
    cmd: AdminCmd,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let authority_path = authority.unwrap_or_else(|| admin::default_authority_path(config));
    let load_authority = || files::read_keypair(&authority_path).context("authority key");
    let dir = cluster_dir(config);
    let settings =
        || ClientSettings::load(config).with_context(|| format!("loading {}", config.display()));
    match cmd {
        AdminCmd::Add {
            node_key,
            x25519_key,
            addr,
            tls_out,
            ips,
            not_after_days,
        } => {
            let node_pub = admin::node_public_key(&node_key)?;
            let x25519_pub = admin::x25519_public_key(&x25519_key)?;
            let not_after = admin::not_after_in_days(not_after_days)?;
            let s = settings()?;
            let ca =
                admin::load_ca(&dir).with_context(|| format!("cluster CA in {}", dir.display()))?;
            let add = admin::issue_add_with(
                &load_authority()?,
                &ca,
                node_pub,
                x25519_pub,
                &addr,
                &ips,
                &tls_out,
                not_after,
            )?;
            let facts = json!({"command": "add", "node": add.node_id().to_hex(),
                "serial": add.serial, "not_after_ms": add.not_after_ms,
                "tls_out": tls_out, "add_cert": hex::encode(add.encode())});
            if !as_json {
                outln!(
                    "node {} at {addr}: TLS certificate and AddCert (serial {}) written to {}",
                    add.node_id().to_hex(),
                    add.serial,
                    tls_out.display()
                );
            }
            report(
                admin::submit(&s, admin::add_request(&add)).await,
                facts,
                as_json,
            )
        }
        AdminCmd::Remove { node_id } => {
            let node = admin::parse_node_id(&node_id)?;
            let s = settings()?;
            let c = admin::issue_remove(&load_authority()?, node);
            let facts = json!({"command": "remove", "node": node.to_hex(), "serial": c.serial});
            report(
                admin::submit(&s, admin::remove_request(&c)).await,
                facts,
                as_json,
            )
        }
        AdminCmd::Renew {
            node_id,
            not_after_days,
        } => {
            let node = admin::parse_node_id(&node_id)?;
            let not_after = admin::not_after_in_days(not_after_days)?;
            let s = settings()?;
            let c = admin::issue_renew(&load_authority()?, node, not_after);
            let facts = json!({"command": "renew", "node": node.to_hex(), "serial": c.serial,
                "not_after_ms": c.not_after_ms});
            report(
                admin::submit(&s, admin::renew_request(&c)).await,
                facts,
                as_json,
            )
        }
        AdminCmd::RotateAuthority { new_key } => {
            let s = settings()?;
            let (c, generated) = admin::issue_rotate(&load_authority()?, &new_key)?;
            if !as_json && generated {
                outln!("generated the new authority key in {}", new_key.display());
            }
            let facts = json!({"command": "rotate-authority",
                "new_authority": c.new_authority.to_hex(), "new_key_file": new_key,
                "generated": generated, "serial": c.serial});
            let code = report(
                admin::submit(&s, admin::rotate_authority_request(&c)).await,
                facts,
                as_json,
            )?;
            if !as_json && code == ExitCode::SUCCESS {
                outln!(
                    "from the next epoch on, sign with {} (--authority, or replace {})",
                    new_key.display(),
                    authority_path.display()
                );
            }
            Ok(code)
        }
        AdminCmd::Client { cmd } => match cmd {
            ClientAdminCmd::Issue {
                out,
                label,
                not_after_days,
            } => {
                let not_after = admin::not_after_in_days(not_after_days)?;
                let ca = admin::load_ca(&dir)
                    .with_context(|| format!("cluster CA in {}", dir.display()))?;
                let (cert, issued) = admin::issue_client(
                    &load_authority()?,
                    &ca,
                    config,
                    &out,
                    label.as_deref(),
                    not_after,
                )?;
                if as_json {
                    outln!(
                        "{}",
                        json!({"command": "client issue", "client": issued,
                               "client_cert": hex::encode(cert.encode())})
                    );
                } else {
                    outln!(
                        "client {} (owner key {}) written to {}; use it with --config {}",
                        issued.label,
                        issued.owner_key,
                        issued.dir.display(),
                        issued.client_toml.display()
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
            ClientAdminCmd::Renew {
                dir: client_dir,
                not_after_days,
            } => {
                let not_after = admin::not_after_in_days(not_after_days)?;
                let cert = admin::renew_client(&load_authority()?, &client_dir, not_after)?;
                if as_json {
                    outln!(
                        "{}",
                        json!({"command": "client renew", "owner_key": cert.client_key.to_hex(),
                               "not_after_ms": cert.not_after_ms,
                               "client_cert": client_dir.join("client.cert")})
                    );
                } else {
                    outln!(
                        "new ClientCert for {} valid until {} ms since 1970, written to {}",
                        cert.client_key.to_hex(),
                        cert.not_after_ms,
                        client_dir.join("client.cert").display()
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
            ClientAdminCmd::Revoke {
                tls_cert,
                client_key,
            } => {
                let key = client_key
                    .as_deref()
                    .map(admin::node_public_key)
                    .transpose()?;
                let s = settings()?;
                let c = admin::issue_revoke(&load_authority()?, &tls_cert, key)?;
                let facts = json!({"command": "client revoke",
                    "client_key": c.client_key.to_hex(),
                    "tls_cert_sha256": hex::encode(c.tls_cert_hash), "serial": c.serial});
                report(
                    admin::submit(&s, admin::revoke_client_request(&c)).await,
                    facts,
                    as_json,
                )
            }
        },
    }
}

/// Prints a submission's outcome. A refusal by the MS exits 3 with its reason; other
/// failures are errors (exit 1).
fn report(
    r: Result<SubmitOutcome, AdminError>,
    mut facts: serde_json::Value,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    match r {
        Ok(o) => {
            if as_json {
                facts["outcome"] = serde_json::to_value(&o)?;
                outln!("{facts}");
            } else {
                outln!(
                    "{}: {}",
                    facts["command"].as_str().unwrap_or(""),
                    o.describe()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(AdminError::Refused { node, code, reason }) => {
            if as_json {
                facts["refused"] =
                    json!({"by": node.to_hex(), "code": format!("{code:?}"), "reason": reason});
                outln!("{facts}");
            } else {
                eprintln!("dbqs: the MS refused it ({code:?} from {node}): {reason}");
            }
            Ok(ExitCode::from(3))
        }
        Err(e) => Err(e.into()),
    }
}

/// Most rows of the MS's queue and probe table shown (a node's reply is not trusted to be
/// small).
const MAX_STATUS_ROWS: usize = 10_000;

fn short_hex(b: &[u8]) -> String {
    hex::encode(&b[..b.len().min(4)])
}

fn full_hex(b: &[u8]) -> String {
    hex::encode(&b[..b.len().min(32)])
}

/// The MS part of a `Membership.Status` reply, as JSON.
fn ms_status_json(from: &dbqs_common::NodeId, ms: &pb::MsStatus) -> serde_json::Value {
    let pending: Vec<_> = ms
        .pending
        .iter()
        .take(MAX_STATUS_ROWS)
        .map(|p| {
            json!({"kind": p.kind.chars().take(32).collect::<String>(),
                   "node": if p.node_id.is_empty() { serde_json::Value::Null } else { json!(full_hex(&p.node_id)) }})
        })
        .collect();
    let probes: Vec<_> = ms
        .probes
        .iter()
        .take(MAX_STATUS_ROWS)
        .map(|p| {
            json!({"node": full_hex(&p.node_id), "short": short_hex(&p.node_id),
                   "answering": p.answering, "misses": p.misses, "last_rtt_us": p.last_rtt_us})
        })
        .collect();
    json!({"from": from.to_hex(), "epoch": ms.epoch, "certified": ms.certified,
           "pending": pending, "end_votes": ms.end_votes, "end_votes_needed": ms.end_votes_needed,
           "probes": probes, "view": ms.view, "last_executed": ms.last_executed,
           "epoch_timer_remaining_ms": ms.epoch_timer_remaining_ms})
}

async fn status(c: &Client, as_json: bool) -> anyhow::Result<()> {
    // Catch up first, from whichever member shows a newer epoch.
    let first = c.config().epoch();
    let mut probes = c.probe_members().await;
    for (n, r) in &probes {
        if let Ok((e, _)) = r
            && *e > c.config().epoch()
        {
            let _ = c.fetch_config_from(*n).await;
        }
    }
    // The members are those of the newest configuration: probe again if it changed.
    if c.config().epoch() != first {
        probes = c.probe_members().await;
    }
    let cfg = c.config();
    let (statuses, own_lease) = tokio::join!(c.status_members(), c.ensure_lease());
    let node_status: std::collections::HashMap<_, _> = statuses.into_iter().collect();
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
            let status = match node_status.get(id) {
                Some(Ok(s)) => json!({"ok": true, "epoch": s.epoch,
                    "lease_remaining_ms": s.lease_remaining_ms, "lease_epoch": s.lease_epoch,
                    "ms_member": s.ms.is_some(), "objects": s.objects,
                    "transfer_pending_ranges": s.transfer_pending_ranges,
                    "transferred_objects": s.transfer_objects_stored,
                    "deleted_objects": s.transfer_objects_deleted}),
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
                   "ms": cfg.config.ms_members.contains(id),
                   "ms_next": cfg.config.ms_next.contains(id), "answer": answer,
                   "status": status, "group_of_range_ending_here": group})
        })
        .collect();
    // The MS view from the first MS member (in MS-list order) that reports one.
    let ms_status = cfg
        .config
        .ms_members
        .iter()
        .find_map(|n| match node_status.get(n) {
            Some(Ok(pb::StatusReply { ms: Some(ms), .. })) => Some(ms_status_json(n, ms)),
            _ => None,
        });
    let client_lease = match &own_lease {
        Ok(l) => {
            json!({"ok": true, "epoch": l.epoch,
                   "remaining_ms": l.remaining(std::time::Instant::now()).as_millis() as u64})
        }
        Err(e) => json!({"ok": false, "error": e.to_string()}),
    };
    // The group key of this configuration's MS key set: the same after every rotation
    // (docs/resharing.md), and the key this client verifies configurations with.
    let ms_key = hex::encode(c.ms_public_key().to_bytes());
    let key_set_key = blsttc::PublicKeySet::from_bytes(cfg.config.ms_key_set.clone())
        .map(|k| hex::encode(k.public_key().to_bytes()))
        .unwrap_or_else(|_| "malformed".into());
    if as_json {
        outln!(
            "{}",
            json!({"epoch": cfg.epoch(), "f": cfg.f(), "group_size": cfg.group_size(), "quorum": cfg.quorum(),
                   "ms_public_key": ms_key, "ms_key_set_public_key": key_set_key,
                   "ms_members": cfg.config.ms_members.iter().map(|n| n.to_hex()).collect::<Vec<_>>(),
                   "ms_next": cfg.config.ms_next.iter().map(|n| n.to_hex()).collect::<Vec<_>>(),
                   "members": members, "client_lease": client_lease,
                   "ms_status": ms_status.clone().unwrap_or(serde_json::Value::Null)})
        );
        return Ok(());
    }
    outln!(
        "epoch {}: {} members, f={} (groups of {}, quorums of {}), MS of {}{}",
        cfg.epoch(),
        cfg.config.members.len(),
        cfg.f(),
        cfg.group_size(),
        cfg.quorum(),
        cfg.config.ms_members.len(),
        if cfg.config.ms_next.is_empty() {
            String::new()
        } else {
            format!(
                ", moving to a new MS of {} (marked \"new\"; docs/resharing.md)",
                cfg.config.ms_next.len()
            )
        }
    );
    outln!(
        "MS public key {}… ({}; every configuration verifies with it)",
        &key_set_key[..key_set_key.len().min(16)],
        if key_set_key == ms_key {
            "this configuration's MS key set has the same group key as the client's"
        } else {
            "DIFFERS from the client's MS key"
        }
    );
    match &own_lease {
        Ok(l) => outln!(
            "this client's freshness lease: epoch {}, {} ms left",
            l.epoch,
            l.remaining(std::time::Instant::now()).as_millis()
        ),
        Err(e) => outln!("this client's freshness lease: none ({e})"),
    }
    outln!(
        "{:>4}  {:<8}  {:<21}  {:<3}  {:<22}  {:<16}  {:<18}  group of the range ending here",
        "ring",
        "node",
        "address",
        "MS",
        "answers",
        "lease (epoch)",
        "objects"
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
        let lease = if m["status"]["ok"].as_bool() == Some(true) {
            match m["status"]["lease_remaining_ms"].as_u64() {
                Some(0) | None => "none".to_string(),
                Some(ms) => format!(
                    "{:.1} s ({})",
                    ms as f64 / 1e3,
                    m["status"]["lease_epoch"].as_u64().unwrap_or(0)
                ),
            }
        } else {
            "?".to_string()
        };
        let objects = if m["status"]["ok"].as_bool() == Some(true) {
            let n = m["status"]["objects"].as_u64().unwrap_or(0);
            match m["status"]["transfer_pending_ranges"].as_u64() {
                Some(p) if p > 0 => format!("{n} ({p} ranges to take over)"),
                _ => n.to_string(),
            }
        } else {
            "?".to_string()
        };
        outln!(
            "{:>4}  {:<8}  {:<21}  {:<3}  {:<22}  {:<16}  {:<18}  {}",
            m["ring"],
            m["short"].as_str().unwrap_or(""),
            m["address"].as_str().unwrap_or(""),
            match (
                m["ms"].as_bool() == Some(true),
                m["ms_next"].as_bool() == Some(true),
            ) {
                (true, _) => "yes",
                (false, true) => "new",
                _ => "",
            },
            ans,
            lease,
            objects,
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
    match &ms_status {
        None => outln!("MS: no MS member reported its state"),
        Some(ms) => print_ms_status(ms),
    }
    Ok(())
}

fn print_ms_status(ms: &serde_json::Value) {
    let short = |v: &serde_json::Value| v.as_str().map(|s| s.chars().take(8).collect::<String>());
    outln!(
        "MS (as {} sees it): epoch {} ({}), view {}, last executed {}, EndEpoch votes {}/{}, own epoch timer {} ms",
        short(&ms["from"]).unwrap_or_default(),
        ms["epoch"],
        if ms["certified"].as_bool() == Some(true) {
            "certified"
        } else {
            "not yet certified"
        },
        ms["view"],
        ms["last_executed"],
        ms["end_votes"],
        ms["end_votes_needed"],
        ms["epoch_timer_remaining_ms"]
    );
    let pending = ms["pending"].as_array().cloned().unwrap_or_default();
    if pending.is_empty() {
        outln!("  no changes queued for the next epoch");
    } else {
        outln!("  queued for the next epoch:");
        for p in &pending {
            outln!(
                "    {:<16} {}",
                p["kind"].as_str().unwrap_or(""),
                short(&p["node"]).unwrap_or_default()
            );
        }
    }
    let probes = ms["probes"].as_array().cloned().unwrap_or_default();
    if !probes.is_empty() {
        outln!(
            "  probes: {:<8}  {:<9}  {:>6}  {:>10}",
            "node",
            "answering",
            "misses",
            "rtt"
        );
        for p in &probes {
            outln!(
                "          {:<8}  {:<9}  {:>6}  {:>7.1} ms",
                p["short"].as_str().unwrap_or(""),
                if p["answering"].as_bool() == Some(true) {
                    "yes"
                } else {
                    "NO"
                },
                p["misses"],
                p["last_rtt_us"].as_u64().unwrap_or(0) as f64 / 1e3
            );
        }
    }
}
