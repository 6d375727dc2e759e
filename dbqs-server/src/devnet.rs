//! `dbqs-server devnet`: a whole cluster on loopback, for trying dBQS and for
//! replaying the fault cases of the seed audit by hand.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use dbqs_client::Client;
use dbqs_client::files::{self, ClientSettings};
use dbqs_common::config::Params;
use dbqs_common::genesis::{self, NodeSpec};
use dbqs_common::{ActiveConfig, NodeId};

use crate::byzantine::Behaviour;
use crate::node::{self, NodeParams, RunningNode};

/// `dbqs-server devnet [OPTIONS]` runs a cluster; `dbqs-server devnet add-node` adds a
/// node to one that is running.
#[derive(clap::Args, Debug, Clone)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DevnetCli {
    #[command(subcommand)]
    pub cmd: Option<DevnetCmd>,
    #[command(flatten)]
    pub args: DevnetArgs,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum DevnetCmd {
    /// Add a freshly keyed node to a running devnet: keys, TLS certificate and
    /// AddCert from the devnet's authority, `admin add` to the MS, node.toml, and a
    /// `dbqs-server join` process (DIR/joined/jNN, log in node.log) that serves once
    /// a configuration admits it. Devnet stops it on Ctrl-C.
    AddNode(AddNodeArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct AddNodeArgs {
    /// The running devnet's directory.
    #[arg(long, default_value = "devnet")]
    pub dir: PathBuf,
    /// Port of the new node (default: one above the highest port in use).
    #[arg(long)]
    pub port: Option<u16>,
    /// How long to wait until the new node serves with a lease.
    #[arg(long, default_value_t = 60)]
    pub wait_s: u64,
}

#[derive(clap::Args, Debug, Clone)]
pub struct DevnetArgs {
    /// Directory for keys, configuration, data and logs; reused (with its data)
    /// if it already holds a cluster.
    #[arg(long, default_value = "devnet")]
    pub dir: PathBuf,
    /// Number of storage nodes.
    #[arg(long, default_value_t = 8)]
    pub nodes: usize,
    /// Byzantine members tolerated per group (groups of 3f+1, quorums of 2f+1).
    #[arg(long, default_value_t = 1)]
    pub f: u32,
    /// Node i (counting from 1) listens on 127.0.0.1:(base-port + i).
    #[arg(long, default_value_t = 7100)]
    pub base_port: u16,
    /// Run the put/get self-check, then stop and exit 0 (passed) or 1 (failed).
    #[arg(long)]
    pub check: bool,
    /// Run each honest node as its own `dbqs-server run` process (so one can be
    /// killed); their logs go to DIR/nodes/*/node.log.
    #[arg(long)]
    pub processes: bool,
    /// Make K nodes, no two in one group, misbehave: K:MODE with MODE one of
    /// silent, wrong-value, stale, bad-signature, equivocate, skip-range, still-here
    /// (honest until removed, then answers as a member of the old epoch).
    #[arg(long, value_name = "K:MODE")]
    pub byzantine: Option<String>,
    /// Delete DIR first and start a new cluster.
    #[arg(long)]
    pub fresh: bool,
    /// Epoch length of a new devnet: the MS ends an epoch (and applies queued adds,
    /// removals and evictions) this often.
    #[arg(long, default_value_t = 5_000)]
    pub epoch_ms: u64,
    /// Freshness lease of a new devnet: a node or client cut off from the MS stops
    /// within this long.
    #[arg(long, default_value_t = 5_000)]
    pub lease_ms: u64,
    /// MS rotation period of a new devnet: every this many epochs the MS moves to members
    /// drawn at random and reshares its key (0: only when an MS member leaves or the
    /// system outgrows the MS).
    #[arg(long, default_value_t = 10)]
    pub ms_rotation_epochs: u64,
    /// Eviction threshold of a new devnet: the MS evicts a node none of its probes reached
    /// for this long (PROTOCOL.md, Evict). The default outlasts a 30 s restart; an evicted
    /// node that comes back rejoins by itself.
    #[arg(long, default_value_t = DEVNET_EVICT_AFTER_MS)]
    pub evict_after_ms: u64,
}

/// Default `--evict-after-ms`: a minute, twice a slow restart (the genesis default,
/// `Params::default()`, is five minutes).
pub const DEVNET_EVICT_AFTER_MS: u64 = 60_000;

fn parse_byzantine(s: &str) -> anyhow::Result<(usize, Behaviour)> {
    let (k, mode) = s
        .split_once(':')
        .with_context(|| format!("--byzantine {s:?}: expected K:MODE, e.g. 1:wrong-value"))?;
    let k: usize = k
        .parse()
        .with_context(|| format!("--byzantine: {k:?} is not a count"))?;
    let mode: Behaviour = mode.parse().map_err(anyhow::Error::msg)?;
    if mode == Behaviour::Honest {
        bail!("--byzantine: choose a faulty behaviour");
    }
    Ok((k, mode))
}

/// Picks `k` members, no two within one group (ring distance of at least 3f+1
/// either way).
pub fn pick_spread(cfg: &ActiveConfig, k: usize) -> anyhow::Result<Vec<NodeId>> {
    let ring: Vec<NodeId> = cfg.ring().members().map(|(_, n)| *n).collect();
    let n = ring.len();
    let gap = cfg.group_size();
    let mut picked: Vec<usize> = Vec::new();
    for i in 0..n {
        if picked.len() == k {
            break;
        }
        let far = picked.iter().all(|&j| {
            let d = i.abs_diff(j);
            d.min(n - d) >= gap
        });
        if far {
            picked.push(i);
        }
    }
    if picked.len() < k {
        bail!(
            "cannot place {k} Byzantine nodes with no two in one group: {n} nodes in groups of {gap} allow {}",
            picked.len()
        );
    }
    Ok(picked.into_iter().map(|i| ring[i]).collect())
}

fn node_tomls(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("nodes"))
        .with_context(|| format!("{}/nodes", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("node.toml"))
        .filter(|p| p.exists())
        .collect();
    v.sort();
    Ok(v)
}

/// Creates the cluster directory unless one exists; returns the node TOMLs.
fn prepare(args: &DevnetArgs) -> anyhow::Result<Vec<PathBuf>> {
    if args.fresh && args.dir.exists() {
        std::fs::remove_dir_all(&args.dir)
            .with_context(|| format!("removing {}", args.dir.display()))?;
    }
    if args.dir.join("genesis.cert").exists() {
        let tomls = node_tomls(&args.dir)?;
        if tomls.len() != args.nodes {
            bail!(
                "{} holds a cluster of {} nodes, not {}: pass --fresh to replace it, or another --dir",
                args.dir.display(),
                tomls.len(),
                args.nodes
            );
        }
        println!(
            "reusing the cluster in {} (pass --fresh for a new one)",
            args.dir.display()
        );
        return Ok(tomls);
    }
    let specs: Vec<NodeSpec> = (0..args.nodes)
        .map(|i| NodeSpec {
            address: format!("127.0.0.1:{}", args.base_port as usize + 1 + i),
            ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
        })
        .collect();
    let g = genesis::create(
        &specs,
        Params {
            f: args.f,
            epoch_length_ms: args.epoch_ms,
            lease_ms: args.lease_ms,
            evict_after_ms: args.evict_after_ms,
            ms_rotation_epochs: args.ms_rotation_epochs,
            ..Params::default()
        },
    )?;
    let listen: Vec<String> = specs.iter().map(|s| s.address.clone()).collect();
    Ok(files::write_cluster_dir(&args.dir, &g, &listen)?)
}

enum Handle {
    InProcess(Box<RunningNode>),
    Process(tokio::task::JoinHandle<()>, u32),
}

pub async fn run(args: DevnetArgs) -> anyhow::Result<bool> {
    let tomls = prepare(&args)?;
    let client_toml = args.dir.join("client.toml");
    let settings = ClientSettings::load(&client_toml)?;
    let cfg = settings.config.clone();
    let byz: HashMap<NodeId, Behaviour> = match &args.byzantine {
        None => HashMap::new(),
        Some(s) => {
            let (k, mode) = parse_byzantine(s)?;
            pick_spread(&cfg, k)?
                .into_iter()
                .map(|n| (n, mode))
                .collect()
        }
    };

    let exe = std::env::current_exe().context("locating dbqs-server")?;
    let mut handles: Vec<(NodeId, String, Behaviour, Handle)> = Vec::new();
    for path in &tomls {
        let mut p = NodeParams::from_file(path)?;
        let id = p.key.node_id();
        let addr = p.listener.local_addr()?.to_string();
        let behaviour = byz.get(&id).copied().unwrap_or_default();
        if args.processes && behaviour == Behaviour::Honest {
            drop(p); // release the port for the child
            let log = std::fs::File::create(path.with_file_name("node.log"))?;
            let mut child = tokio::process::Command::new(&exe)
                .arg("run")
                .arg("--config")
                .arg(path)
                .stdout(log.try_clone()?)
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .context("starting a node process")?;
            let pid = child.id().unwrap_or(0);
            let short = id.short();
            let task = tokio::spawn(async move {
                if let Ok(status) = child.wait().await {
                    eprintln!("devnet: node {short} (pid {pid}) exited: {status}");
                }
            });
            handles.push((id, addr, behaviour, Handle::Process(task, pid)));
        } else {
            p.behaviour = behaviour;
            let n = node::start(p).await?;
            handles.push((id, addr, behaviour, Handle::InProcess(Box::new(n))));
        }
    }

    let client = Client::new(&settings);
    wait_ready(&client, &byz, Duration::from_secs(30)).await;
    print_summary(&args, &cfg, &handles, &tomls);

    let passed = match self_check(&client).await {
        Ok(msg) => {
            println!("self-check passed: {msg}");
            true
        }
        Err(e) => {
            println!("self-check FAILED: {e:#}");
            false
        }
    };
    if !args.check {
        println!("serving; Ctrl-C stops the cluster");
        crate::shutdown_signal().await;
        println!("stopping");
    }
    for (_, _, _, h) in handles {
        match h {
            Handle::InProcess(n) => n.stop().await,
            // Dropping the waiting task drops the child, which kills it.
            Handle::Process(t, _) => t.abort(),
        }
    }
    stop_joined(&args.dir);
    Ok(passed)
}

/// Stops the nodes `devnet add-node` started (their pids are in DIR/joined/*/node.pid).
fn stop_joined(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir.join("joined")) else {
        return;
    };
    for e in entries.flatten() {
        let pid_file = e.path().join("node.pid");
        let Ok(pid) = std::fs::read_to_string(&pid_file) else {
            continue;
        };
        let pid = pid.trim();
        if pid.parse::<u32>().is_ok() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", pid])
                .status();
        }
        let _ = std::fs::remove_file(pid_file);
    }
}

/// Every node.toml of the devnet: genesis nodes and joined ones.
fn all_node_tomls(dir: &Path) -> Vec<PathBuf> {
    let mut v = node_tomls(dir).unwrap_or_default();
    if let Ok(entries) = std::fs::read_dir(dir.join("joined")) {
        v.extend(
            entries
                .flatten()
                .map(|e| e.path().join("node.toml"))
                .filter(|p| p.exists()),
        );
    }
    v
}

/// `dbqs-server devnet add-node`: see [`DevnetCmd::AddNode`].
pub async fn add_node(a: AddNodeArgs) -> anyhow::Result<bool> {
    use dbqs_client::admin;
    let client_toml = a.dir.join("client.toml");
    let settings = ClientSettings::load(&client_toml).with_context(|| {
        format!(
            "{} holds no devnet (run `dbqs-server devnet` first)",
            a.dir.display()
        )
    })?;
    let tomls = all_node_tomls(&a.dir);
    let port = match a.port {
        Some(p) => p,
        None => {
            let highest = tomls
                .iter()
                .filter_map(|t| files::NodeFile::load(t).ok())
                .filter_map(|nf| nf.listen.rsplit_once(':')?.1.parse::<u16>().ok())
                .max()
                .context("no node.toml with a port in the devnet")?;
            highest.checked_add(1).context("no port left")?
        }
    };
    let joined = a.dir.join("joined");
    let n = std::fs::read_dir(&joined).map(|d| d.count()).unwrap_or(0) + 1;
    let ndir = joined.join(format!("j{n:02}"));
    std::fs::create_dir_all(ndir.join("data"))
        .with_context(|| format!("creating {}", ndir.display()))?;
    let addr = format!("127.0.0.1:{port}");

    // Keys, TLS certificate and AddCert.
    let key = dbqs_common::KeyPair::generate();
    files::write_keypair(&ndir.join("node.key"), &key)?;
    let mut x_secret = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut x_secret);
    files::write_secret(
        &ndir.join("x25519.key"),
        format!("{}\n", hex::encode(x_secret)).as_bytes(),
    )?;
    let add = admin::issue_add(
        &a.dir,
        key.public(),
        admin::x25519_public(x_secret),
        &addr,
        &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
        &ndir,
        admin::not_after_in_days(365)?,
    )?;
    let nf = files::NodeFile {
        listen: addr.clone(),
        data_dir: "data".into(),
        node_key: "node.key".into(),
        x25519_key: "x25519.key".into(),
        tls_cert: "tls.pem".into(),
        tls_key: "tls.key".into(),
        ca_cert: "../../ca.pem".into(),
        config_cert: "../../genesis.cert".into(),
        ms_public_key: hex::encode(settings.ms_public_key.to_bytes()),
        status_listen: port.checked_add(1000).map(|p| format!("127.0.0.1:{p}")),
        status_tls: false,
        ms_share: None,
    };
    let toml_path = ndir.join("node.toml");
    files::write_public(&toml_path, toml::to_string(&nf)?.as_bytes())?;

    // The node waits for its admission in its own process group, so it outlives this
    // command and a Ctrl-C in its terminal; devnet stops it by its pid file.
    let exe = std::env::current_exe().context("locating dbqs-server")?;
    let log = std::fs::File::create(ndir.join("node.log"))?;
    let child = std::process::Command::new(&exe)
        .arg("join")
        .arg("--config")
        .arg(&toml_path)
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting the node process")?;
    files::write_public(
        &ndir.join("node.pid"),
        format!("{}\n", child.id()).as_bytes(),
    )?;
    let id = key.node_id();
    println!(
        "node {} ({addr}, pid {}) started in {}; waiting for admission",
        id.short(),
        child.id(),
        ndir.display()
    );

    let started = Instant::now();
    let outcome = admin::submit(&settings, admin::add_request(&add)).await?;
    println!("admin add: {}", outcome.describe());
    let client = Client::new(&settings);
    let limit = Duration::from_secs(a.wait_s);
    // The epoch whose configuration first listed the node.
    let mut admitted = None;
    loop {
        client.refresh_config().await;
        let cfg = client.config();
        if cfg.member(&id).is_some() {
            admitted.get_or_insert(cfg.epoch());
        } else if let Some(e) = admitted {
            println!(
                "node {} was admitted in epoch {e} but is no member of epoch {}: evicted \
                 (it failed the MS's probes) or removed; see {}",
                id.short(),
                cfg.epoch(),
                ndir.join("node.log").display()
            );
            return Ok(false);
        }
        if cfg.member(&id).is_some()
            && let Ok(mut m) = client.membership(id)
            && let Ok(r) = m.status(dbqs_proto::v1::StatusRequest {}).await
            && r.get_ref().lease_remaining_ms > 0
        {
            println!(
                "node {} serves in epoch {} ({:.1} s after the submission); status page http://127.0.0.1:{}/",
                id.short(),
                r.get_ref().epoch,
                started.elapsed().as_secs_f64(),
                port as u32 + 1000
            );
            return Ok(true);
        }
        if started.elapsed() >= limit {
            println!(
                "node {} does not serve after {limit:?}; see {}",
                id.short(),
                ndir.join("node.log").display()
            );
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits until every node that should answer serves with a freshness lease (the MS
/// is up and vouched for it).
async fn wait_ready(client: &Client, byz: &HashMap<NodeId, Behaviour>, limit: Duration) {
    let start = Instant::now();
    let members: Vec<NodeId> = client
        .config()
        .config
        .members
        .iter()
        .map(|m| m.node_id())
        .filter(|n| byz.get(n) != Some(&Behaviour::Silent))
        .collect();
    while start.elapsed() < limit {
        let mut waiting = 0;
        for n in &members {
            let serving = match client.membership(*n) {
                Ok(mut m) => m
                    .status(dbqs_proto::v1::StatusRequest {})
                    .await
                    .is_ok_and(|r| r.get_ref().lease_remaining_ms > 0),
                Err(_) => false,
            };
            if !serving {
                waiting += 1;
            }
        }
        if waiting == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("devnet: some nodes hold no lease after {limit:?}");
}

fn print_summary(
    args: &DevnetArgs,
    cfg: &ActiveConfig,
    handles: &[(NodeId, String, Behaviour, Handle)],
    tomls: &[PathBuf],
) {
    println!(
        "dBQS devnet: {} nodes, f={} (groups of {}, quorums of {}), MS of {}, epoch {}",
        handles.len(),
        cfg.f(),
        cfg.group_size(),
        cfg.quorum(),
        cfg.config.ms_members.len(),
        cfg.epoch()
    );
    let ring_index: HashMap<NodeId, usize> = cfg
        .ring()
        .members()
        .enumerate()
        .map(|(i, (_, n))| (*n, i))
        .collect();
    let mut rows: Vec<_> = handles.iter().zip(tomls).collect();
    rows.sort_by_key(|((id, ..), _)| ring_index.get(id).copied());
    println!("  ring  node      address          MS   behaviour       process / config");
    for ((id, addr, b, h), toml) in rows {
        let ms = if cfg.config.ms_members.contains(id) {
            "yes"
        } else {
            ""
        };
        let proc_ = match h {
            Handle::InProcess(_) => "in devnet".to_string(),
            Handle::Process(_, pid) => format!("pid {pid}"),
        };
        println!(
            "  {:>4}  {:<8}  {:<15}  {:<3}  {:<14}  {proc_}  {}",
            ring_index.get(id).map_or("-".into(), |i| i.to_string()),
            id.short(),
            addr,
            ms,
            b.to_string(),
            toml.display()
        );
    }
    let c = args.dir.join("client.toml");
    println!("client configuration: {}", c.display());
    let status: Vec<String> = tomls
        .iter()
        .filter_map(|t| dbqs_client::files::NodeFile::load(t).ok()?.status_listen)
        .collect();
    if let Some(first) = status.first() {
        println!(
            "status pages: http://{first}/ (and the same path on {} more nodes; /metrics for Prometheus)",
            status.len() - 1
        );
    }
    println!("try, from another shell:");
    println!(
        "  cargo run --release -p dbqs-client -- --config {} put hello README.md",
        c.display()
    );
    println!(
        "  cargo run --release -p dbqs-client -- --config {} get hello -o /tmp/hello",
        c.display()
    );
    println!(
        "  cargo run --release -p dbqs-client -- --config {} status",
        c.display()
    );
    if args.processes {
        println!(
            "kill a node with `kill -9 PID`; restart it with `dbqs-server run --config <its node.toml>`"
        );
    }
}

/// Writes and reads back an owned object and a content object.
pub async fn self_check(client: &Client) -> anyhow::Result<String> {
    let owner = client.owner_key().context("client has no owner key")?;
    let mut value = vec![0u8; 100];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut value);
    let t = Instant::now();
    client.put(b"devnet-self-check", value.clone()).await?;
    let put_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let got = client.get(&owner, b"devnet-self-check").await?;
    let get_ms = t.elapsed().as_secs_f64() * 1e3;
    match got {
        Some(v) if v.value == value => {}
        Some(_) => bail!("read returned a different value than was written"),
        None => bail!("read found nothing after a successful write"),
    }
    let mut blob = vec![0u8; 64 << 10];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut blob);
    let id = client.put_blob(blob.clone()).await?;
    match client.get_blob(id).await? {
        Some(b) if b == blob => {}
        _ => bail!("content object did not read back"),
    }
    Ok(format!(
        "100-byte put {put_ms:.2} ms, get {get_ms:.2} ms; 64 KiB blob round trip ok"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(n: usize, f: u32) -> ActiveConfig {
        let specs: Vec<NodeSpec> = (0..n)
            .map(|i| NodeSpec {
                address: format!("127.0.0.1:{}", 9000 + i),
                ips: vec![],
            })
            .collect();
        let g = genesis::create(
            &specs,
            Params {
                f,
                ..Params::default()
            },
        )
        .unwrap();
        ActiveConfig::verify(g.cert, &g.ms_public_key).unwrap()
    }

    #[test]
    fn byzantine_picks_never_share_a_group() {
        let cfg = config(8, 1);
        let picked = pick_spread(&cfg, 2).unwrap();
        assert_eq!(picked.len(), 2);
        // Every object's group holds at most one picked node.
        for (pos, _) in cfg.ring().members() {
            let g = cfg.group(&dbqs_common::ObjectId(*pos));
            assert!(g.iter().filter(|n| picked.contains(n)).count() <= 1);
        }
        let err = pick_spread(&cfg, 3).unwrap_err().to_string();
        assert!(err.contains("allow 2"), "{err}");
    }

    #[test]
    fn byzantine_spec_parses_and_rejects_nonsense() {
        assert_eq!(parse_byzantine("2:stale").unwrap(), (2, Behaviour::Stale));
        assert!(parse_byzantine("2").is_err());
        assert!(parse_byzantine("x:stale").is_err());
        assert!(parse_byzantine("1:honest").is_err());
        assert!(
            parse_byzantine("1:lying")
                .unwrap_err()
                .to_string()
                .contains("unknown behaviour")
        );
    }
}
