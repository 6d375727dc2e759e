//! A full disk under one replica (issue [H], point 5): its writes fail cleanly, the
//! group goes on without it, and once space returns the replica stores writes again;
//! nothing acknowledged is lost.
//!
//! Needs a small file system of its own to fill, so it is `#[ignore]`d in
//! `cargo test`: `deploy/disk-full-test.sh` mounts a tmpfs and runs it (CI does),
//! with `DBQS_FULL_DISK_DIR` naming the mount.

mod support;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dbqs_client::Client;
use dbqs_common::ObjectId;
use dbqs_server::store::ObjectStore;
use support::{Cluster, wait_up};

/// The replica whose store lives on the small file system.
const VICTIM: usize = 3;

/// Fills the file system holding `dir` with a ballast file, up to 64 MiB in 256 KiB
/// writes (the file system given is smaller); returns the file's path.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("ballast");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0xA5u8; 256 << 10];
    for _ in 0..256 {
        if f.write_all(&chunk).and_then(|()| f.sync_data()).is_err() {
            return path;
        }
    }
    panic!(
        "{} did not fill up with 64 MiB: DBQS_FULL_DISK_DIR must be a small file system",
        dir.display()
    );
}

/// Puts `n` values named `{tag}-{i}`; all must be acknowledged (3 of the 4 replicas
/// suffice). Returns the names and values.
async fn put_all(c: &Client, tag: &str, n: usize) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for i in 0..n {
        let name = format!("{tag}-{i}");
        let value = vec![i as u8; 16 << 10];
        c.put(name.as_bytes(), value.clone())
            .await
            .unwrap_or_else(|e| panic!("put {name}: {e}"));
        out.push((name, value));
    }
    out
}

/// The last lines of a node's log, for failure messages.
fn log_tail(path: &Path) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

fn log_has(path: &Path, needle: &str) -> bool {
    std::fs::read_to_string(path).is_ok_and(|s| s.contains(needle))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a small file system to fill: run deploy/disk-full-test.sh"]
async fn a_full_disk_fails_a_replicas_writes_cleanly_and_it_recovers_when_space_returns() {
    dbqs_server::install_crypto();
    let small = PathBuf::from(
        std::env::var("DBQS_FULL_DISK_DIR").expect("DBQS_FULL_DISK_DIR names a small mount"),
    );
    let dir = tempfile::tempdir().unwrap();
    // The victim's store file is a link into the small file system; its PBFT log and
    // everything else stay on the test's disk.
    let store_target = small.join("store.redb");
    let _ = std::fs::remove_file(&store_target);
    let mut cluster = Cluster::create(dir.path(), 4, |i, data| {
        if i == VICTIM {
            std::os::unix::fs::symlink(&store_target, data.join("store.redb")).unwrap();
        }
    });
    cluster.start_all();
    let c = cluster.client();
    let owner = c.owner_key().unwrap();
    wait_up(&c).await;

    let before = put_all(&c, "before", 20).await;

    // The disk fills up: the group still acknowledges writes (3 replicas of 4), and the
    // victim refuses them cleanly, saying why, instead of crashing or acknowledging.
    let ballast = fill(&small);
    let during = put_all(&c, "during", 30).await;
    let victim_log = cluster.logs[VICTIM].clone();
    assert!(
        log_has(&victim_log, "disk is full"),
        "the victim's log does not say its disk is full: {}",
        log_tail(&victim_log)
    );
    assert!(
        cluster.procs[VICTIM]
            .as_mut()
            .unwrap()
            .try_wait()
            .unwrap()
            .is_none(),
        "the victim process exited"
    );

    // Space returns: the store reopens and stores writes again.
    std::fs::remove_file(&ballast).unwrap();
    let started = Instant::now();
    while !log_has(&victim_log, "store reopened after an I/O error") {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the victim's store did not reopen within 20 s of space returning"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = put_all(&c, "after", 20).await;

    // The victim stored every write after space returned, and kept every one before.
    cluster.kill_all();
    {
        let store = ObjectStore::open(&cluster.data_dir(VICTIM).join("store.redb")).unwrap();
        for (name, _) in before.iter().chain(&after) {
            let id = ObjectId::owned(&owner, name.as_bytes());
            assert!(
                store.get(&id).unwrap().is_some(),
                "the victim does not hold {name}"
            );
        }
        store.close();
    }

    // Nothing acknowledged is lost, whichever replicas answer.
    cluster.start_all();
    wait_up(&c).await;
    for (name, value) in before.iter().chain(&during).chain(&after) {
        let got = c
            .get(&owner, name.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("get {name}: {e}"))
            .unwrap_or_else(|| panic!("acknowledged write {name} lost"));
        assert_eq!(&got.value, value, "{name}");
    }
}
