//! Real processes killed with SIGKILL mid-write lose nothing acknowledged: 20 rounds
//! in the suite (a different node each time, 16 writes in flight), then the whole
//! cluster at once; `KILL9_ROUNDS=N` runs more.

use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dbqs_client::Client;
use dbqs_client::files::{self, ClientSettings};
use dbqs_common::config::Params;
use dbqs_common::genesis::{self, NodeSpec};

fn spawn(toml: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_dbqs-server"))
        .arg("run")
        .arg("--config")
        .arg(toml)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn dbqs-server")
}

/// Kills every child when dropped, so a failing test leaves no process behind.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for p in self.0.iter_mut() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

/// Waits until every node serves: it answers and holds a freshness lease (after a
/// restart of the whole cluster the MS must first elect a primary again).
async fn wait_up(c: &Client) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_writes_loses_no_acknowledged_write() {
    dbqs_server::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = (0..4)
        .map(|_| {
            TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        })
        .collect();
    let specs: Vec<NodeSpec> = ports
        .iter()
        .map(|p| NodeSpec {
            address: format!("127.0.0.1:{p}"),
            ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
        })
        .collect();
    let g = genesis::create(&specs, Params::default()).unwrap();
    let listen: Vec<String> = specs.iter().map(|s| s.address.clone()).collect();
    let tomls: Vec<PathBuf> = files::write_cluster_dir(dir.path(), &g, &listen).unwrap();
    let mut procs = Procs(tomls.iter().map(|t| spawn(t)).collect());

    let settings = ClientSettings::load(&dir.path().join("client.toml")).unwrap();
    let mut s2 = settings.clone();
    s2.timeout_ms = 3_000;
    let c = Client::new(&s2);
    let owner = c.owner_key().unwrap();
    wait_up(&c).await;

    let mut acked: Vec<(String, Vec<u8>)> = Vec::new();
    // 20 rounds in the suite; `KILL9_ROUNDS=300` for the long run (docs/threat-model.md).
    let rounds: usize = std::env::var("KILL9_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let started = Instant::now();
    for round in 0..rounds {
        let victim = round % 4;
        let mut tasks = Vec::new();
        for k in 0..16 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                let name = format!("r{round}-k{k}");
                let value = format!("{name} value").into_bytes();
                c.put(name.as_bytes(), value.clone())
                    .await
                    .ok()
                    .map(|_| (name, value))
            }));
        }
        // Kill one node while those writes are in flight.
        tokio::time::sleep(Duration::from_millis(3)).await;
        procs.0[victim].kill().unwrap();
        procs.0[victim].wait().unwrap();
        for t in tasks {
            if let Some(w) = t.await.unwrap() {
                acked.push(w);
            }
        }
        procs.0[victim] = spawn(&tomls[victim]);
        wait_up(&c).await;
    }
    eprintln!(
        "{rounds} rounds of SIGKILL during writes in {:.1} s: {} of {} writes acknowledged",
        started.elapsed().as_secs_f64(),
        acked.len(),
        rounds * 16
    );
    assert!(
        acked.len() >= rounds * 16 / 2,
        "most writes should succeed with one node down: {}",
        acked.len()
    );

    // Kill everything at once, restart, read everything back.
    for p in procs.0.iter_mut() {
        p.kill().unwrap();
        p.wait().unwrap();
    }
    procs.0 = tomls.iter().map(|t| spawn(t)).collect();
    wait_up(&c).await;
    for (name, value) in &acked {
        let got = c
            .get(&owner, name.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("get {name}: {e}"))
            .unwrap_or_else(|| panic!("acknowledged write {name} lost"));
        assert_eq!(&got.value, value);
    }
    // A SIGKILL is a crash, not damage: redb recovers, and the start-up check
    // (`ObjectStore::open_checked`) must not take the recovered file for a damaged one.
    for toml in &tomls {
        let data = toml.parent().unwrap().join("data");
        let set_aside: Vec<_> = std::fs::read_dir(&data)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".damaged-"))
            .map(|e| e.file_name())
            .collect();
        assert!(set_aside.is_empty(), "{}: {set_aside:?}", data.display());
    }
}
