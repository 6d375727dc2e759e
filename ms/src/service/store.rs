//! The replica's durable state in one redb file: the engine's `PersistentState`, kept as
//! the latest value of each persist op rather than as a log, so the file stays bounded by
//! the log window (docs/pbft.md, "Runtime: persistence layout").
//!
//! Tables:
//! - `pbft_meta` (`&str` → bytes): `format` (one byte, 1), `genesis_digest` (32 bytes),
//!   `view` (the `PersistOp::View` encoding), `stable` (the `PersistOp::Stable` encoding:
//!   checkpoint proof and state bytes).
//! - `pbft_entries` (`u64` seq → bytes): the `PersistOp::Entry` encoding of each sequence
//!   number above the stable checkpoint.
//!
//! A batch of ops is applied in one write transaction; redb's commit fsyncs
//! (`Durability::Immediate`), so when [`PbftStore::apply`] returns the ops are durable.

use std::collections::BTreeMap;
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use thiserror::Error;

use crate::pbft::{DecodeError, Digest, Limits, PersistOp, PersistentState};

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("pbft_meta");
const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("pbft_entries");

const KEY_FORMAT: &str = "format";
const KEY_GENESIS: &str = "genesis_digest";
const KEY_VIEW: &str = "view";
const KEY_STABLE: &str = "stable";
const FORMAT_VERSION: u8 = 1;

/// How long [`PbftStore::open`] waits for a previous instance in this process (a replica
/// being restarted in place) to release the file.
const OPEN_RETRY_MS: u64 = 20;
const OPEN_RETRIES: u32 = 250;

/// A storage failure. The runtime stops the replica on any of them: a replica that cannot
/// make its promises durable must not send the messages that depend on them.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("redb: {0}")]
    Engine(String),
    #[error("stored {what} does not decode: {source}")]
    Corrupt {
        what: &'static str,
        source: DecodeError,
    },
    #[error("stored {0} is inconsistent")]
    Inconsistent(&'static str),
    #[error("stored format version {0} is not supported")]
    Format(u8),
}

fn engine<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Engine(e.to_string())
}

/// The PBFT state of one replica in redb.
pub struct PbftStore {
    db: Database,
    limits: Limits,
    /// Seq of the stored stable checkpoint; entries at or below it are dropped.
    stable_seq: u64,
}

impl PbftStore {
    /// Opens (or creates) the file at `path`; `limits` bound what is decoded from it.
    pub fn open(path: &Path, limits: Limits) -> Result<PbftStore, StoreError> {
        PbftStore::on(open_db(path)?, limits)
    }

    /// A store on an already open database, e.g. one over a storage backend other than a
    /// plain file (`RuntimeConfig::database`; tests put a failing disk under a replica).
    pub fn on(db: Database, limits: Limits) -> Result<PbftStore, StoreError> {
        {
            let tx = db.begin_write().map_err(engine)?;
            tx.open_table(META).map_err(engine)?;
            tx.open_table(ENTRIES).map_err(engine)?;
            tx.commit().map_err(engine)?;
        }
        let mut store = PbftStore {
            db,
            limits,
            stable_seq: 0,
        };
        if let Some(state) = store.load()? {
            store.stable_seq = state.stable.proof.seq;
        }
        Ok(store)
    }

    /// Opens the file at `path` after checking it: redb's integrity check (every page's
    /// checksum), then the whole stored state decoded as [`load`](Self::load) does. A
    /// file that fails either is renamed `<name>.damaged-<unix ms>` and an empty store
    /// takes its place; the reason is returned with it. The replica then starts from its
    /// group's genesis state and catches up from the others by state transfer, having
    /// forgotten what it promised before: until it caught up it counts as one of the
    /// f_ms faulty replicas (docs/pbft.md). A file of another format version, or one that
    /// cannot be read at all (permissions, held by another process), is an error.
    pub fn open_checked(
        path: &Path,
        limits: Limits,
    ) -> Result<(PbftStore, Option<String>), StoreError> {
        if !path.exists() {
            return Ok((PbftStore::open(path, limits)?, None));
        }
        let check = || {
            std::panic::catch_unwind(|| {
                redb::Builder::new()
                    .set_check_integrity_on_open(true)
                    .create(path)
            })
        };
        let mut checked = check();
        for _ in 0..OPEN_RETRIES {
            if !matches!(checked, Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen))) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(OPEN_RETRY_MS));
            checked = check();
        }
        let reason = match checked {
            Err(_) => Some("the storage engine panicked while opening it".to_string()),
            Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => {
                return Err(StoreError::Engine(format!(
                    "{} is held open by another instance",
                    path.display()
                )));
            }
            Ok(Err(redb::DatabaseError::Storage(redb::StorageError::Io(e))))
                if !matches!(
                    e.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData
                ) =>
            {
                return Err(StoreError::Engine(format!("{}: {e}", path.display())));
            }
            // Not the content's fault (an older redb format, another process's lock
            // protocol, a repair that could not run): setting the file aside would throw
            // away a good log, on every replica at once after an upgrade.
            Ok(Err(
                e @ (redb::DatabaseError::UpgradeRequired(_)
                | redb::DatabaseError::LockProtocolMismatch
                | redb::DatabaseError::RepairAborted),
            )) => {
                return Err(StoreError::Engine(format!("{}: {e}", path.display())));
            }
            Ok(Err(e)) => Some(format!("the storage engine refused it: {e}")),
            Ok(Ok(db)) => {
                drop(db);
                None
            }
        };
        let reason = match reason {
            Some(r) => Some(r),
            // `open` loads the state too; so does the check after it.
            None => match PbftStore::open(path, limits.clone()).and_then(|store| {
                store.load()?;
                Ok(store)
            }) {
                Ok(store) => return Ok((store, None)),
                Err(e @ (StoreError::Format(_) | StoreError::Engine(_))) => return Err(e),
                Err(e) => Some(e.to_string()),
            },
        };
        let reason = reason.unwrap_or_default();
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".damaged-{ms}"));
        let moved_to = path.with_file_name(name);
        std::fs::rename(path, &moved_to).map_err(|e| {
            StoreError::Engine(format!(
                "{} is damaged ({reason}) and could not be set aside: {e}",
                path.display()
            ))
        })?;
        tracing::error!(
            file = %path.display(),
            moved_to = %moved_to.display(),
            %reason,
            "the PBFT log is damaged: set aside; this replica starts empty and catches up from the others"
        );
        Ok((PbftStore::open(path, limits)?, Some(reason)))
    }

    /// The stored state, or `None` for a file that was never initialised.
    pub fn load(&self) -> Result<Option<PersistentState>, StoreError> {
        let tx = self.db.begin_read().map_err(engine)?;
        let meta = tx.open_table(META).map_err(engine)?;
        let get = |k: &str| -> Result<Option<Vec<u8>>, StoreError> {
            Ok(meta.get(k).map_err(engine)?.map(|v| v.value().to_vec()))
        };
        let Some(format) = get(KEY_FORMAT)? else {
            return Ok(None);
        };
        if format.as_slice() != [FORMAT_VERSION] {
            return Err(StoreError::Format(format.first().copied().unwrap_or(0)));
        }
        let genesis: [u8; 32] = get(KEY_GENESIS)?
            .ok_or(StoreError::Inconsistent("genesis digest (missing)"))?
            .try_into()
            .map_err(|_| StoreError::Inconsistent("genesis digest (length)"))?;
        let view_bytes = get(KEY_VIEW)?.ok_or(StoreError::Inconsistent("view (missing)"))?;
        let PersistOp::View {
            view,
            view_changing,
        } = self.decode_op("view", &view_bytes)?
        else {
            return Err(StoreError::Inconsistent("view (wrong op)"));
        };
        let stable_bytes =
            get(KEY_STABLE)?.ok_or(StoreError::Inconsistent("stable checkpoint (missing)"))?;
        let PersistOp::Stable(stable) = self.decode_op("stable checkpoint", &stable_bytes)? else {
            return Err(StoreError::Inconsistent("stable checkpoint (wrong op)"));
        };
        let entries_table = tx.open_table(ENTRIES).map_err(engine)?;
        let mut entries = BTreeMap::new();
        for row in entries_table.iter().map_err(engine)? {
            let (k, v) = row.map_err(engine)?;
            let seq = k.value();
            let PersistOp::Entry(e) = self.decode_op("log entry", v.value())? else {
                return Err(StoreError::Inconsistent("log entry (wrong op)"));
            };
            if e.seq != seq {
                return Err(StoreError::Inconsistent("log entry (key is not its seq)"));
            }
            if seq > stable.proof.seq {
                entries.insert(seq, *e);
            }
        }
        Ok(Some(PersistentState {
            view,
            view_changing,
            genesis_digest: Digest(genesis),
            stable: *stable,
            entries,
        }))
    }

    fn decode_op(&self, what: &'static str, bytes: &[u8]) -> Result<PersistOp, StoreError> {
        PersistOp::decode(bytes, &self.limits)
            .map_err(|source| StoreError::Corrupt { what, source })
    }

    /// Writes a whole state (a brand-new replica's genesis state) in one transaction.
    pub fn init(&mut self, state: &PersistentState) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(engine)?;
        {
            let mut meta = tx.open_table(META).map_err(engine)?;
            meta.insert(KEY_FORMAT, [FORMAT_VERSION].as_slice())
                .map_err(engine)?;
            meta.insert(KEY_GENESIS, state.genesis_digest.0.as_slice())
                .map_err(engine)?;
            let view = PersistOp::View {
                view: state.view,
                view_changing: state.view_changing,
            };
            meta.insert(KEY_VIEW, view.encode().as_slice())
                .map_err(engine)?;
            let stable = PersistOp::Stable(Box::new(state.stable.clone()));
            meta.insert(KEY_STABLE, stable.encode().as_slice())
                .map_err(engine)?;
            let mut entries = tx.open_table(ENTRIES).map_err(engine)?;
            entries.retain(|_, _| false).map_err(engine)?;
            for e in state.entries.values() {
                let op = PersistOp::Entry(Box::new(e.clone()));
                entries
                    .insert(e.seq, op.encode().as_slice())
                    .map_err(engine)?;
            }
        }
        tx.commit().map_err(engine)?;
        self.stable_seq = state.stable.proof.seq;
        Ok(())
    }

    /// Applies `ops` in order, with [`PersistentState::apply`]'s semantics, in one write
    /// transaction; returns once the commit (and its fsync) is done.
    pub fn apply<'a>(
        &mut self,
        ops: impl IntoIterator<Item = &'a PersistOp>,
    ) -> Result<(), StoreError> {
        let mut stable_seq = self.stable_seq;
        let tx = self.db.begin_write().map_err(engine)?;
        {
            let mut meta = tx.open_table(META).map_err(engine)?;
            let mut entries = tx.open_table(ENTRIES).map_err(engine)?;
            for op in ops {
                match op {
                    PersistOp::View { .. } => {
                        meta.insert(KEY_VIEW, op.encode().as_slice())
                            .map_err(engine)?;
                    }
                    PersistOp::Entry(e) => {
                        if e.seq > stable_seq {
                            entries
                                .insert(e.seq, op.encode().as_slice())
                                .map_err(engine)?;
                        }
                    }
                    PersistOp::Stable(s) => {
                        if s.proof.seq > stable_seq {
                            stable_seq = s.proof.seq;
                            meta.insert(KEY_STABLE, op.encode().as_slice())
                                .map_err(engine)?;
                            entries
                                .retain_in(..=stable_seq, |_, _| false)
                                .map_err(engine)?;
                        }
                    }
                }
            }
        }
        tx.commit().map_err(engine)?;
        self.stable_seq = stable_seq;
        Ok(())
    }

    /// Entries currently stored (bounded by the log window).
    pub fn entry_count(&self) -> Result<u64, StoreError> {
        use redb::ReadableTableMetadata;
        let tx = self.db.begin_read().map_err(engine)?;
        let t = tx.open_table(ENTRIES).map_err(engine)?;
        t.len().map_err(engine)
    }
}

/// Opens the database, waiting a bounded time for another instance in this process to
/// release it (redb refuses to open a file twice).
fn open_db(path: &Path) -> Result<Database, StoreError> {
    for _ in 0..OPEN_RETRIES {
        match Database::create(path) {
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                std::thread::sleep(std::time::Duration::from_millis(OPEN_RETRY_MS))
            }
            r => return r.map_err(engine),
        }
    }
    Err(StoreError::Engine(format!(
        "{} is held open by another instance",
        path.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pbft::sim::{CounterApp, add_op};
    use crate::pbft::{
        Action, Config, Message, PersistOp, Replica, ReplicaId, Request, genesis_state,
    };
    use ed25519_dalek::SigningKey;

    /// Drives a 4-replica group in memory and returns every persist op of replica `who`.
    fn persist_ops_of_a_running_group(
        who: usize,
        requests: u64,
    ) -> (PersistentState, Vec<PersistOp>) {
        let keys: Vec<SigningKey> = (0..4u8)
            .map(|i| SigningKey::from_bytes(&[i + 1; 32]))
            .collect();
        let vks: Vec<_> = keys.iter().map(|k| k.verifying_key()).collect();
        let mut replicas: Vec<Replica<CounterApp>> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let mut c = Config::new(vks.clone(), i as ReplicaId, k.clone());
                c.checkpoint_interval_seqs = 4;
                c.log_window_seqs = 8;
                Replica::new(c, CounterApp::default()).expect("valid config")
            })
            .collect();
        let genesis = genesis_state(&CounterApp::default());
        let client = SigningKey::from_bytes(&[77; 32]);
        let mut ops = Vec::new();
        let mut queue: std::collections::VecDeque<(ReplicaId, ReplicaId, Message)> =
            Default::default();
        for num in 1..=requests {
            let req = Request::sign(&client, num, false, add_op(num));
            let mut pending: Vec<(ReplicaId, Action)> = replicas[0]
                .propose(req)
                .into_iter()
                .map(|a| (0, a))
                .collect();
            loop {
                for (from, a) in pending.drain(..) {
                    match a {
                        Action::Persist(op) if from as usize == who => ops.push(op),
                        Action::Send { to, msg } => queue.push_back((from, to, msg)),
                        Action::Broadcast { msg } => {
                            for to in 0..4 {
                                if to != from {
                                    queue.push_back((from, to, msg.clone()));
                                }
                            }
                        }
                        _ => {}
                    }
                }
                let Some((from, to, msg)) = queue.pop_front() else {
                    break;
                };
                pending = replicas[to as usize]
                    .step(from, msg)
                    .into_iter()
                    .map(|a| (to, a))
                    .collect();
            }
        }
        (genesis, ops)
    }

    #[test]
    fn store_matches_reference_semantics_and_stays_bounded() {
        let (genesis, ops) = persist_ops_of_a_running_group(1, 20);
        assert!(ops.iter().any(|o| matches!(o, PersistOp::Stable(_))));
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pbft.redb");
        let limits = Limits::default();
        let mut reference = genesis.clone();
        {
            let mut store = PbftStore::open(&path, limits.clone()).expect("open");
            assert_eq!(store.load().expect("load"), None);
            store.init(&genesis).expect("init");
            // Uneven transaction sizes: group commit must not change the result.
            for (i, chunk) in ops.chunks(3).enumerate() {
                let chunk = if i % 2 == 0 { chunk } else { &chunk[..1] };
                store.apply(chunk.iter()).expect("apply");
                for op in chunk {
                    reference.apply(op);
                }
                assert_eq!(store.load().expect("load").as_ref(), Some(&reference));
            }
            assert!(store.entry_count().expect("count") <= 8);
        }
        let reopened = PbftStore::open(&path, limits).expect("reopen");
        assert_eq!(reopened.load().expect("load"), Some(reference));
    }

    #[test]
    fn corrupt_entry_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pbft.redb");
        let genesis = genesis_state(&CounterApp::default());
        let mut store = PbftStore::open(&path, Limits::default()).expect("open");
        store.init(&genesis).expect("init");
        {
            let tx = store.db.begin_write().expect("tx");
            {
                let mut t = tx.open_table(ENTRIES).expect("table");
                t.insert(5, [2u8, 0, 1].as_slice()).expect("insert");
            }
            tx.commit().expect("commit");
        }
        assert!(matches!(
            store.load(),
            Err(StoreError::Corrupt {
                what: "log entry",
                ..
            })
        ));
        // At the next start the damaged file is set aside and the replica starts empty.
        drop(store);
        let (fresh, damage) = PbftStore::open_checked(&path, Limits::default()).expect("open");
        assert!(damage.expect("damage found").contains("log entry"));
        assert_eq!(fresh.load().expect("load"), None);
        assert_eq!(set_aside(dir.path()).len(), 1);
    }

    fn set_aside(dir: &Path) -> Vec<std::path::PathBuf> {
        std::fs::read_dir(dir)
            .expect("dir")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().contains(".damaged-"))
            .collect()
    }

    #[test]
    fn a_truncated_or_altered_log_file_is_set_aside_and_an_intact_one_is_kept() {
        let (genesis, ops) = persist_ops_of_a_running_group(1, 20);
        let write = |path: &Path| {
            let mut store = PbftStore::open(path, Limits::default()).expect("open");
            store.init(&genesis).expect("init");
            store.apply(ops.iter()).expect("apply");
            store.load().expect("load")
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pbft.redb");
        let stored = write(&path);
        let (intact, damage) = PbftStore::open_checked(&path, Limits::default()).expect("open");
        assert!(damage.is_none(), "{damage:?}");
        assert_eq!(intact.load().expect("load"), stored);
        drop(intact);
        type Hurt = fn(&mut Vec<u8>);
        let cases: [(&str, Hurt); 3] = [
            ("truncated", |b| b.truncate(b.len() / 2)),
            ("cut to its header", |b| b.truncate(64)),
            ("bytes altered", |b| {
                let mid = b.len() / 2;
                for x in &mut b[mid..mid + 4096] {
                    *x ^= 0x5a;
                }
            }),
        ];
        for (what, hurt) in cases {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("pbft.redb");
            write(&path);
            let mut bytes = std::fs::read(&path).expect("read");
            hurt(&mut bytes);
            std::fs::write(&path, &bytes).expect("write");
            let (fresh, damage) = PbftStore::open_checked(&path, Limits::default()).expect("open");
            assert!(damage.is_some(), "{what}: damage found");
            assert_eq!(fresh.load().expect("load"), None, "{what}: starts empty");
            assert_eq!(set_aside(dir.path()).len(), 1, "{what}");
        }
    }
}
