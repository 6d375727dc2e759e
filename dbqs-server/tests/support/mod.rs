//! A cluster of real `dbqs-server` processes for the process-level tests (kill9.rs,
//! disk_full.rs): genesis, one process per node, restarts, and a wait for leases.

#![allow(dead_code)] // each test file uses its own subset

use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use dbqs_client::Client;
use dbqs_client::files::{self, ClientSettings};
use dbqs_common::config::Params;
use dbqs_common::genesis::{self, NodeSpec};

/// Ports the nodes listen on: below Linux's ephemeral range, so a killed node's port is
/// not handed to an outgoing connection or another test's `bind(0)` before it restarts.
const NODE_PORTS: std::ops::Range<u16> = 20_000..32_000;

fn free_port() -> u16 {
    use std::hash::{BuildHasher, RandomState};
    let seed = RandomState::new();
    for i in 0..500u32 {
        let r = seed.hash_one(i);
        let port = NODE_PORTS.start + (r % u64::from(NODE_PORTS.end - NODE_PORTS.start)) as u16;
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind")
}

/// The node processes; every child is killed when this is dropped, so a failing test
/// leaves no process behind.
pub struct Cluster {
    pub procs: Vec<Option<Child>>,
    pub tomls: Vec<PathBuf>,
    pub settings: ClientSettings,
    /// Where node `i` writes its log (stderr; stdout too).
    pub logs: Vec<PathBuf>,
}

impl Cluster {
    /// Writes a genesis of `n` nodes on loopback under `dir` and the nodes' files, and
    /// runs `prepare(i, data_dir)` for each node before anything starts.
    pub fn create(dir: &Path, n: usize, mut prepare: impl FnMut(usize, &Path)) -> Cluster {
        let specs: Vec<NodeSpec> = (0..n)
            .map(|_| NodeSpec {
                address: format!("127.0.0.1:{}", free_port()),
                ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            })
            .collect();
        let g = genesis::create(&specs, Params::default()).unwrap();
        let listen: Vec<String> = specs.iter().map(|s| s.address.clone()).collect();
        let tomls = files::write_cluster_dir(dir, &g, &listen).unwrap();
        for (i, t) in tomls.iter().enumerate() {
            prepare(i, &t.parent().unwrap().join("data"));
        }
        let logs = (0..n).map(|i| dir.join(format!("node{i}.log"))).collect();
        let settings = ClientSettings::load(&dir.join("client.toml")).unwrap();
        Cluster {
            procs: (0..n).map(|_| None).collect(),
            tomls,
            settings,
            logs,
        }
    }

    /// Starts node `i` (its log is appended to `logs[i]`).
    pub fn start(&mut self, i: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.logs[i])
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_dbqs-server"))
            .arg("run")
            .arg("--config")
            .arg(&self.tomls[i])
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn dbqs-server");
        self.procs[i] = Some(child);
    }

    pub fn start_all(&mut self) {
        for i in 0..self.procs.len() {
            self.start(i);
        }
    }

    /// SIGKILL to node `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.procs[i].take() {
            p.kill().unwrap();
            p.wait().unwrap();
        }
    }

    pub fn kill_all(&mut self) {
        for i in 0..self.procs.len() {
            self.kill(i);
        }
    }

    /// A client with a 3 s timeout.
    pub fn client(&self) -> Client {
        let mut s = self.settings.clone();
        s.timeout_ms = 3_000;
        Client::new(&s)
    }

    /// Node `i`'s data directory.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.tomls[i].parent().unwrap().join("data")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// Waits until every node serves: it answers and holds a freshness lease (after a
/// restart of the whole cluster the MS must first elect a primary again).
pub async fn wait_up(c: &Client) {
    let start = Instant::now();
    let members: Vec<_> = c
        .config()
        .config
        .members
        .iter()
        .map(|m| m.node_id())
        .collect();
    while start.elapsed() < Duration::from_secs(40) {
        let mut serving = 0;
        for n in &members {
            if let Ok(mut m) = c.membership(*n)
                && let Ok(r) = m.status(dbqs_proto::v1::StatusRequest {}).await
                && r.get_ref().lease_remaining_ms > 0
            {
                serving += 1;
            }
        }
        if serving == members.len() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("nodes did not come up with leases");
}
