//! The node's object store: one redb file, fsync on every commit.
//!
//! Writes go through one writer thread that group-commits: it takes every write
//! queued while the previous commit was running (bounded by count and bytes) and
//! commits them in one transaction, so concurrent writes share one fsync. A write
//! is acknowledged only after its transaction committed, so an acknowledged write
//! survives kill -9.
//!
//! Every write names the epoch it was accepted in, and the transaction applies it
//! only if the store's epoch is still that epoch (PROTOCOL.md: epoch and group are
//! checked in the same transaction that applies a write).
//!
//! Disk faults: after an I/O error (a full disk, a failed fsync) redb refuses every
//! later operation until the database is reopened. The store then answers
//! [`StoreError::DiskFull`] or [`StoreError::Io`] (nothing is acknowledged that did not
//! commit), and its writer thread reopens the file every [`REOPEN_EVERY`] until it
//! succeeds, so writes work again once space returns. What was committed before the
//! error is what the reopened file holds.

use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, RwLock};

use dbqs_common::object::{ObjectError, StoredObject, version_cmp};
use dbqs_common::{ConfigCert, Epoch, ObjectId, OwnedHeader, OwnedValue};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use thiserror::Error;
use tokio::sync::oneshot;

const OBJECTS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("objects");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Every configuration certificate the node verified, by epoch (the chain peers pull).
const CONFIGS: TableDefinition<u64, &[u8]> = TableDefinition::new("configs");
const META_EPOCH: &str = "epoch";
const META_CONFIG: &str = "config_cert";
/// The ranges still to take over (`transfer::plan::Pending`), written with the epoch.
const META_PENDING: &str = "transfer_pending";
/// Most entries one range listing returns.
pub const MAX_LIST: usize = 1024;
/// Body bytes after which a listing page stops early (it still holds at least one
/// entry): listing reads whole records, and 1,024 objects of 4 MiB would be 4 GiB.
pub const LIST_MAX_BYTES: usize = 8 << 20;

/// Most writes committed in one transaction.
pub const GROUP_COMMIT_MAX_WRITES: usize = 256;
/// Most value bytes committed in one transaction (a single larger write still
/// commits alone).
pub const GROUP_COMMIT_MAX_BYTES: usize = 16 << 20;
/// Writes that may wait for the writer thread before callers are pushed back.
pub const WRITE_QUEUE_LEN: usize = 1024;

/// How often the writer thread tries to reopen a store that failed an I/O operation.
pub const REOPEN_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("storage engine: {0}")]
    Engine(String),
    /// The disk (or the file system's quota) has no room: nothing was written.
    #[error("the node's disk is full ({0}); the write was not stored")]
    DiskFull(String),
    /// An I/O error other than a full disk; the store reopens its file and goes on.
    #[error("storage I/O error ({0}); the store is being reopened")]
    Io(String),
    #[error("corrupted record for {id:?}: {source}")]
    Corrupt { id: ObjectId, source: ObjectError },
    #[error("store epoch is {store}, write was accepted in epoch {write}")]
    EpochChanged { store: Epoch, write: Epoch },
    #[error("store is closed")]
    Closed,
    #[error("an object with this id and a different kind is stored")]
    KindMismatch,
}

/// Classifies an error of the storage engine: I/O errors (which make redb refuse every
/// later operation until the file is reopened) apart from the rest.
fn engine<E: Into<redb::Error>>(e: E) -> StoreError {
    match e.into() {
        redb::Error::Io(io) if is_disk_full(&io) => StoreError::DiskFull(io.to_string()),
        redb::Error::Io(io) => StoreError::Io(io.to_string()),
        redb::Error::PreviousIo => StoreError::Io("an earlier I/O error".into()),
        other => StoreError::Engine(other.to_string()),
    }
}

/// ENOSPC, or EDQUOT (a quota counts as a full disk for the node).
fn is_disk_full(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull
        || e.kind() == std::io::ErrorKind::QuotaExceeded
        || matches!(e.raw_os_error(), Some(28) | Some(122))
}

impl StoreError {
    /// Whether the error leaves the database unusable until it is reopened.
    fn needs_reopen(&self) -> bool {
        matches!(self, StoreError::DiskFull(_) | StoreError::Io(_))
    }
}

/// A write to apply.
#[derive(Debug, Clone)]
pub enum WriteOp {
    Content { id: ObjectId, bytes: Vec<u8> },
    Owned(OwnedValue),
}

impl WriteOp {
    pub fn id(&self) -> ObjectId {
        match self {
            WriteOp::Content { id, .. } => *id,
            WriteOp::Owned(v) => v.header.id,
        }
    }

    fn size(&self) -> usize {
        match self {
            WriteOp::Content { bytes, .. } => bytes.len(),
            WriteOp::Owned(v) => v.value.len(),
        }
    }
}

/// A store file found damaged at start and set aside (see [`ObjectStore::open_checked`]).
#[derive(Debug, Clone)]
pub struct Damage {
    /// Where the damaged file now is.
    pub moved_to: PathBuf,
    /// What the check found.
    pub reason: String,
}

/// Records checked between two progress lines of the start-up check.
const CHECK_PROGRESS_EVERY: u64 = 10_000;

/// What a write did (PROTOCOL.md, "dBQS storage", Write: a replica acknowledges a
/// version at least as high as the stored one, and answers "older" to a lower one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The write raised the stored version (or created the object).
    Stored,
    /// The store already held exactly this version (or this content object).
    AlreadyHeld,
    /// The store holds a higher version of the owned object, whose header this is;
    /// the write changed nothing.
    Older(Box<OwnedHeader>),
}

struct Pending {
    epoch: Epoch,
    op: WriteOp,
    done: oneshot::Sender<Result<WriteOutcome, StoreError>>,
}

/// Opens the database file (a closure, so tests can wrap the file to inject faults).
type Opener = Box<dyn Fn() -> Result<Database, redb::DatabaseError> + Send + Sync>;

enum DbState {
    Open(Arc<Database>),
    /// An I/O error made the engine refuse further work (the error it was, kept to
    /// answer with); the writer thread reopens.
    Failed(FailedWith),
    Closed,
}

/// The I/O error a failed store answers with until it is reopened.
#[derive(Clone)]
struct FailedWith {
    disk_full: bool,
    message: String,
}

impl FailedWith {
    fn of(e: &StoreError) -> FailedWith {
        match e {
            StoreError::DiskFull(m) => FailedWith {
                disk_full: true,
                message: m.clone(),
            },
            StoreError::Io(m) => FailedWith {
                disk_full: false,
                message: m.clone(),
            },
            other => FailedWith {
                disk_full: false,
                message: other.to_string(),
            },
        }
    }

    fn error(&self) -> StoreError {
        if self.disk_full {
            StoreError::DiskFull(self.message.clone())
        } else {
            StoreError::Io(self.message.clone())
        }
    }
}

/// The database and how to reopen it; shared by the handles and the writer thread.
struct DbSlot {
    state: RwLock<DbState>,
    open: Opener,
}

impl DbSlot {
    fn get(&self) -> Result<Arc<Database>, StoreError> {
        match &*self.state.read().unwrap_or_else(|e| e.into_inner()) {
            DbState::Open(db) => Ok(db.clone()),
            DbState::Failed(f) => Err(f.error()),
            DbState::Closed => Err(StoreError::Closed),
        }
    }

    /// Records that `db` failed with `e`, if `e` is an I/O error and `db` is still the
    /// open instance. Returns `e`.
    fn note(&self, db: &Arc<Database>, e: StoreError) -> StoreError {
        if e.needs_reopen() {
            let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
            if matches!(&*state, DbState::Open(cur) if Arc::ptr_eq(cur, db)) {
                tracing::error!(error = %e, "store I/O failed; it will be reopened");
                *state = DbState::Failed(FailedWith::of(&e));
            }
        }
        e
    }

    /// Reopens a failed store. The failed instance must be released first: callers
    /// drop their handles, and reads in flight end; `open_db` waits for them.
    fn reopen(&self) {
        if !matches!(
            &*self.state.read().unwrap_or_else(|e| e.into_inner()),
            DbState::Failed(_)
        ) {
            return;
        }
        match open_db(&self.open) {
            Ok(db) => {
                let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
                if matches!(&*state, DbState::Failed(_)) {
                    tracing::info!("store reopened after an I/O error");
                    *state = DbState::Open(Arc::new(db));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "store still cannot be reopened");
                let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
                // Keep answering with the I/O error; a newer I/O error replaces it.
                if let DbState::Failed(f) = &mut *state
                    && e.needs_reopen()
                {
                    *f = FailedWith::of(&e);
                }
            }
        }
    }

    /// Runs `f` on the open database; an I/O error marks it failed.
    fn with<T>(&self, f: impl FnOnce(&Database) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let db = self.get()?;
        f(&db).map_err(|e| self.note(&db, e))
    }
}

struct StoreInner {
    db: Arc<DbSlot>,
    writes: Mutex<Option<std_mpsc::SyncSender<Pending>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Handle to the store; cheap to clone. [`ObjectStore::close`] releases the file
/// even while clones are alive (they then fail with [`StoreError::Closed`]).
#[derive(Clone)]
pub struct ObjectStore {
    inner: Arc<StoreInner>,
}

impl ObjectStore {
    /// Opens (or creates) the store at `path` and starts its writer thread.
    pub fn open(path: &Path) -> Result<ObjectStore, StoreError> {
        let path = path.to_path_buf();
        ObjectStore::open_with(Box::new(move || Database::create(&path)))
    }

    fn open_with(open: Opener) -> Result<ObjectStore, StoreError> {
        let db = Arc::new(open_db(&open)?);
        {
            let tx = db.begin_write().map_err(engine)?;
            tx.open_table(OBJECTS).map_err(engine)?;
            tx.open_table(META).map_err(engine)?;
            tx.open_table(CONFIGS).map_err(engine)?;
            tx.commit().map_err(engine)?;
        }
        let slot = Arc::new(DbSlot {
            state: RwLock::new(DbState::Open(db)),
            open,
        });
        let (tx, rx) = std_mpsc::sync_channel(WRITE_QUEUE_LEN);
        let wslot = slot.clone();
        let writer = std::thread::Builder::new()
            .name("dbqs-store-writer".into())
            .spawn(move || writer_loop(&wslot, rx))
            .map_err(|e| StoreError::Engine(format!("cannot start the writer thread: {e}")))?;
        Ok(ObjectStore {
            inner: Arc::new(StoreInner {
                db: slot,
                writes: Mutex::new(Some(tx)),
                writer: Mutex::new(Some(writer)),
            }),
        })
    }

    /// Opens the store after checking it: redb's integrity check (the checksum of every
    /// page of the committed trees), then every record (objects re-verified by hash or
    /// owner signature, the epoch, the configuration chain, the transfer state). A file
    /// that fails is renamed `<name>.damaged-<unix ms>` and an empty store takes its place;
    /// the caller must then rebuild from the node's group rather than serve anything
    /// (node.rs). Errors that say nothing about the file's content (permissions, another
    /// process holding it) are returned as errors, and the file is left alone.
    pub fn open_checked(path: &Path) -> Result<(ObjectStore, Option<Damage>), StoreError> {
        let damage = if path.exists() {
            match check_file(path)? {
                Ok(()) => None,
                Err(reason) => {
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
                        "the store is damaged: it is set aside and will not be served"
                    );
                    Some(Damage { moved_to, reason })
                }
            }
        } else {
            None
        };
        Ok((ObjectStore::open(path)?, damage))
    }

    /// Runs `f` on the open database (see [`DbSlot::with`]).
    fn with<T>(&self, f: impl FnOnce(&Database) -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.inner.db.with(f)
    }

    /// Stops the writer (after the writes already queued) and releases the
    /// database file once in-flight reads finish.
    pub fn close(&self) {
        self.inner
            .writes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let writer = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(w) = writer {
            let _ = w.join();
        }
        *self
            .inner
            .db
            .state
            .write()
            .unwrap_or_else(|e| e.into_inner()) = DbState::Closed;
    }

    /// The epoch recorded in the store (0 if none yet).
    pub fn epoch(&self) -> Result<Epoch, StoreError> {
        self.with(|db| {
            let tx = db.begin_read().map_err(engine)?;
            let t = tx.open_table(META).map_err(engine)?;
            read_epoch(&t)
        })
    }

    /// Records `epoch` and its certificate durably; never moves backwards. The
    /// certificate is also kept in the chain of certificates by epoch.
    pub fn set_epoch(&self, epoch: Epoch, cert: &[u8]) -> Result<(), StoreError> {
        self.with(|db| {
            let tx = db.begin_write().map_err(engine)?;
            {
                let mut t = tx.open_table(META).map_err(engine)?;
                if read_epoch(&t)? < epoch {
                    t.insert(META_EPOCH, epoch.to_be_bytes().as_slice())
                        .map_err(engine)?;
                    t.insert(META_CONFIG, cert).map_err(engine)?;
                }
                let mut c = tx.open_table(CONFIGS).map_err(engine)?;
                c.insert(epoch, cert).map_err(engine)?;
            }
            tx.commit().map_err(engine)
        })
    }

    /// Moves to `epoch` and records, in the same transaction, the ranges the node must
    /// take over before it serves them (so a crash mid-transfer cannot forget them).
    /// Refuses to move backwards (returns false).
    pub fn set_epoch_with_pending(
        &self,
        epoch: Epoch,
        cert: &[u8],
        pending: &[u8],
    ) -> Result<bool, StoreError> {
        self.with(|db| {
            let tx = db.begin_write().map_err(engine)?;
            let moved = {
                let mut t = tx.open_table(META).map_err(engine)?;
                if read_epoch(&t)? < epoch {
                    t.insert(META_EPOCH, epoch.to_be_bytes().as_slice())
                        .map_err(engine)?;
                    t.insert(META_CONFIG, cert).map_err(engine)?;
                    t.insert(META_PENDING, pending).map_err(engine)?;
                    let mut c = tx.open_table(CONFIGS).map_err(engine)?;
                    c.insert(epoch, cert).map_err(engine)?;
                    true
                } else {
                    false
                }
            };
            tx.commit().map_err(engine)?;
            Ok(moved)
        })
    }

    /// Replaces the recorded pending ranges (a range was taken over).
    pub fn set_pending(&self, pending: &[u8]) -> Result<(), StoreError> {
        self.with(|db| {
            let tx = db.begin_write().map_err(engine)?;
            {
                let mut t = tx.open_table(META).map_err(engine)?;
                t.insert(META_PENDING, pending).map_err(engine)?;
            }
            tx.commit().map_err(engine)
        })
    }

    /// The recorded pending ranges, if any were ever recorded.
    pub fn pending(&self) -> Result<Option<Vec<u8>>, StoreError> {
        self.with(|db| {
            let tx = db.begin_read().map_err(engine)?;
            let t = tx.open_table(META).map_err(engine)?;
            Ok(t.get(META_PENDING)
                .map_err(engine)?
                .map(|v| v.value().to_vec()))
        })
    }

    /// Up to `limit` (≤ [`MAX_LIST`]) stored objects with ids in the range
    /// (`start`, `end`] in ring order (wrapping past the top when `start >= end`),
    /// after `after` in that order, stopping early once their records reach
    /// [`LIST_MAX_BYTES`]. Returns them and whether the range is exhausted.
    /// Records are re-verified; a corrupt one is an error.
    #[allow(clippy::type_complexity)]
    pub fn list_range(
        &self,
        start: &[u8; 32],
        end: &[u8; 32],
        after: Option<&[u8; 32]>,
        limit: usize,
    ) -> Result<(Vec<(ObjectId, StoredObject)>, bool), StoreError> {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        let limit = limit.clamp(1, MAX_LIST);
        self.with(|db| {
            let tx = db.begin_read().map_err(engine)?;
            let t = tx.open_table(OBJECTS).map_err(engine)?;
            let wraps = start >= end;
            // The range as one or two plain intervals, in ring order.
            let mut parts: Vec<(std::ops::Bound<&[u8; 32]>, std::ops::Bound<&[u8; 32]>)> = if wraps
            {
                vec![(Excluded(start), Unbounded), (Unbounded, Included(end))]
            } else {
                vec![(Excluded(start), Included(end))]
            };
            if let Some(a) = after {
                // Which part `a` is in: skip the parts before it, start after it in its own.
                let in_first = !wraps || a > start;
                if in_first {
                    parts[0].0 = Excluded(a);
                } else {
                    parts.remove(0);
                    parts[0].0 = Excluded(a);
                }
            }
            let mut out = Vec::new();
            let mut bytes = 0usize;
            for (lo, hi) in parts {
                for entry in t.range::<&[u8; 32]>((lo, hi)).map_err(engine)? {
                    let (k, v) = entry.map_err(engine)?;
                    if out.len() == limit || bytes >= LIST_MAX_BYTES {
                        return Ok((out, false));
                    }
                    bytes += v.value().len();
                    let id = ObjectId(*k.value());
                    let obj = StoredObject::decode(&id, v.value())
                        .map_err(|source| StoreError::Corrupt { id, source })?;
                    out.push((id, obj));
                }
            }
            Ok((out, true))
        })
    }

    /// Deletes every object in the range (`start`, `end`] (wrapping as in
    /// [`list_range`](Self::list_range)), only if the store is still in `epoch`: a range
    /// the node regained in a newer epoch is never deleted by an older decision. Returns
    /// how many objects were deleted.
    pub fn delete_range(
        &self,
        epoch: Epoch,
        start: &[u8; 32],
        end: &[u8; 32],
    ) -> Result<u64, StoreError> {
        self.with(|db| {
            let tx = db.begin_write().map_err(engine)?;
            let deleted = {
                let meta = tx.open_table(META).map_err(engine)?;
                let store = read_epoch(&meta)?;
                if store != epoch {
                    return Err(StoreError::EpochChanged {
                        store,
                        write: epoch,
                    });
                }
                let mut t = tx.open_table(OBJECTS).map_err(engine)?;
                let parts = range_parts(start, end);
                let mut n = 0u64;
                for part in parts {
                    let removed = t
                        .extract_from_if::<&[u8; 32], _>(part, |_, _| true)
                        .map_err(engine)?;
                    for r in removed {
                        r.map_err(engine)?;
                        n += 1;
                    }
                }
                n
            };
            tx.commit().map_err(engine)?;
            Ok(deleted)
        })
    }

    /// Whether any object lies in the range (`start`, `end`].
    pub fn any_in_range(&self, start: &[u8; 32], end: &[u8; 32]) -> Result<bool, StoreError> {
        Ok(!self.list_range(start, end, None, 1)?.0.is_empty())
    }

    /// Keeps a verified certificate of an epoch the node did not adopt (an older one
    /// learned while catching up), so peers can pull the whole chain.
    pub fn put_config(&self, epoch: Epoch, cert: &[u8]) -> Result<(), StoreError> {
        self.with(|db| {
            let tx = db.begin_write().map_err(engine)?;
            {
                let mut c = tx.open_table(CONFIGS).map_err(engine)?;
                if c.get(epoch).map_err(engine)?.is_none() {
                    c.insert(epoch, cert).map_err(engine)?;
                }
            }
            tx.commit().map_err(engine)
        })
    }

    /// The stored certificate bytes of `epoch`, if the node holds them.
    pub fn config_at(&self, epoch: Epoch) -> Result<Option<Vec<u8>>, StoreError> {
        self.with(|db| {
            let tx = db.begin_read().map_err(engine)?;
            let t = tx.open_table(CONFIGS).map_err(engine)?;
            Ok(t.get(epoch).map_err(engine)?.map(|v| v.value().to_vec()))
        })
    }

    /// The stored configuration certificate bytes, if any.
    pub fn config_cert(&self) -> Result<Option<Vec<u8>>, StoreError> {
        self.with(|db| {
            let tx = db.begin_read().map_err(engine)?;
            let t = tx.open_table(META).map_err(engine)?;
            Ok(t.get(META_CONFIG)
                .map_err(engine)?
                .map(|v| v.value().to_vec()))
        })
    }

    /// Reads an object, re-verifying it: a corrupted record is an error.
    pub fn get(&self, id: &ObjectId) -> Result<Option<StoredObject>, StoreError> {
        self.with(|db| {
            let tx = db.begin_read().map_err(engine)?;
            let t = tx.open_table(OBJECTS).map_err(engine)?;
            match t.get(&id.0).map_err(engine)? {
                None => Ok(None),
                Some(v) => StoredObject::decode(id, v.value())
                    .map(Some)
                    .map_err(|source| StoreError::Corrupt { id: *id, source }),
            }
        })
    }

    /// Applies a validated write accepted in `epoch`; resolves once committed.
    pub async fn write(&self, epoch: Epoch, op: WriteOp) -> Result<WriteOutcome, StoreError> {
        let (done, rx) = oneshot::channel();
        let p = Pending { epoch, op, done };
        let sender = self
            .inner
            .writes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(StoreError::Closed)?;
        // The queue is bounded: when it is full, wait for room off the async
        // worker threads (back-pressure on writers).
        match sender.try_send(p) {
            Ok(()) => {}
            Err(std_mpsc::TrySendError::Full(p)) => {
                tokio::task::spawn_blocking(move || sender.send(p).map_err(|_| ()))
                    .await
                    .map_err(|e| StoreError::Engine(e.to_string()))?
                    .map_err(|()| StoreError::Closed)?
            }
            Err(std_mpsc::TrySendError::Disconnected(_)) => return Err(StoreError::Closed),
        }
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Number of stored objects.
    pub fn len(&self) -> Result<u64, StoreError> {
        self.with(|db| {
            let tx = db.begin_read().map_err(engine)?;
            let t = tx.open_table(OBJECTS).map_err(engine)?;
            t.len().map_err(engine)
        })
    }

    pub fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len()? == 0)
    }
}

/// Bounds of one plain interval of ids.
type IdBounds<'a> = (std::ops::Bound<&'a [u8; 32]>, std::ops::Bound<&'a [u8; 32]>);

/// The range (`start`, `end`] of the ring as one or two plain intervals, in ring order
/// (two when it wraps past the top, `start >= end`).
fn range_parts<'a>(start: &'a [u8; 32], end: &'a [u8; 32]) -> Vec<IdBounds<'a>> {
    use std::ops::Bound::{Excluded, Included, Unbounded};
    if start >= end {
        vec![(Excluded(start), Unbounded), (Unbounded, Included(end))]
    } else {
        vec![(Excluded(start), Included(end))]
    }
}

/// Checks the store file at `path`: `Ok(Err(reason))` if its content is damaged, `Err` if
/// it cannot be checked for another reason.
fn check_file(path: &Path) -> Result<Result<(), String>, StoreError> {
    let started = std::time::Instant::now();
    let db = loop_open(|| {
        // A plain open of an altered file may panic inside redb; with the check on, it
        // reports Corrupted. Catch a panic anyway: it too means the file is bad.
        std::panic::catch_unwind(|| {
            redb::Builder::new()
                .set_check_integrity_on_open(true)
                .create(path)
        })
    });
    let db = match db {
        Ok(Ok(db)) => db,
        Ok(Err(e)) => {
            return match e {
                redb::DatabaseError::Storage(redb::StorageError::Io(io))
                    if !matches!(
                        io.kind(),
                        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData
                    ) =>
                {
                    Err(StoreError::Engine(format!("{}: {io}", path.display())))
                }
                redb::DatabaseError::DatabaseAlreadyOpen => Err(StoreError::Engine(format!(
                    "{} is held open by another instance",
                    path.display()
                ))),
                // Not the content's fault: an older redb format, another process's lock
                // protocol, a repair that could not run. Setting the file aside would
                // throw away a good store (on every node at once after an upgrade).
                e @ (redb::DatabaseError::UpgradeRequired(_)
                | redb::DatabaseError::LockProtocolMismatch
                | redb::DatabaseError::RepairAborted) => {
                    Err(StoreError::Engine(format!("{}: {e}", path.display())))
                }
                other => Ok(Err(format!("the storage engine refused it: {other}"))),
            };
        }
        Err(_) => return Ok(Err("the storage engine panicked while opening it".into())),
    };
    let found = check_records(&db);
    drop(db);
    if let Ok(n) = &found {
        tracing::info!(
            file = %path.display(),
            records = n,
            took_ms = started.elapsed().as_millis() as u64,
            "store checked"
        );
    }
    Ok(found.map(|_| ()))
}

/// Opens with `open`, waiting up to 5 s while a previous instance in this process (a
/// node restarted in place) still holds the file.
fn loop_open<T>(
    open: impl Fn() -> std::thread::Result<Result<T, redb::DatabaseError>>,
) -> std::thread::Result<Result<T, redb::DatabaseError>> {
    for _ in 0..250 {
        match open() {
            Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            r => return r,
        }
    }
    open()
}

/// Reads every record of an opened store and checks it; returns how many objects it
/// holds, or what is wrong.
fn check_records(db: &Database) -> Result<u64, String> {
    let tx = db.begin_read().map_err(|e| e.to_string())?;
    // A table that does not exist yet is fine (a store created and left before its
    // first commit); anything else the engine reports is damage.
    match tx.open_table(OBJECTS) {
        Ok(t) => {
            let mut n = 0u64;
            for entry in t.iter().map_err(|e| e.to_string())? {
                let (k, v) = entry.map_err(|e| e.to_string())?;
                let id = ObjectId(*k.value());
                StoredObject::decode(&id, v.value())
                    .map_err(|e| format!("the record of {} does not verify: {e}", id.to_hex()))?;
                n += 1;
                if n.is_multiple_of(CHECK_PROGRESS_EVERY) {
                    tracing::info!(records = n, "checking the store");
                }
            }
            check_meta(&tx)?;
            Ok(n)
        }
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
        Err(e) => Err(e.to_string()),
    }
}

fn check_meta(tx: &redb::ReadTransaction) -> Result<(), String> {
    match tx.open_table(META) {
        Ok(t) => {
            let epoch = read_epoch(&t).map_err(|e| e.to_string())?;
            if let Some(v) = t.get(META_CONFIG).map_err(|e| e.to_string())? {
                let cert = ConfigCert::decode(v.value())
                    .map_err(|e| format!("the current configuration does not decode: {e}"))?;
                if cert.epoch != epoch {
                    return Err(format!(
                        "the store's epoch is {epoch} but its configuration is of epoch {}",
                        cert.epoch
                    ));
                }
            }
            if let Some(v) = t.get(META_PENDING).map_err(|e| e.to_string())? {
                crate::transfer::plan::Pending::decode(v.value())
                    .map_err(|e| format!("the transfer state does not decode: {e}"))?;
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(e.to_string()),
    }
    match tx.open_table(CONFIGS) {
        Ok(t) => {
            for entry in t.iter().map_err(|e| e.to_string())? {
                let (k, v) = entry.map_err(|e| e.to_string())?;
                let cert = ConfigCert::decode(v.value()).map_err(|e| {
                    format!(
                        "the configuration of epoch {} does not decode: {e}",
                        k.value()
                    )
                })?;
                if cert.epoch != k.value() {
                    return Err(format!(
                        "the configuration filed under epoch {} is of epoch {}",
                        k.value(),
                        cert.epoch
                    ));
                }
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(e.to_string()),
    }
    Ok(())
}

/// Opens the database, waiting up to 5 s for a previous instance in this
/// process (a node being restarted in place, or a failed instance still held by a
/// read in flight) to release it.
fn open_db(open: &Opener) -> Result<Database, StoreError> {
    for _ in 0..250 {
        match open() {
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            r => return r.map_err(engine),
        }
    }
    Err(StoreError::Engine(
        "the store file is held open by another instance".into(),
    ))
}

fn read_epoch<T: ReadableTable<&'static str, &'static [u8]>>(t: &T) -> Result<Epoch, StoreError> {
    match t.get(META_EPOCH).map_err(engine)? {
        None => Ok(0),
        Some(v) => {
            let b: [u8; 8] = v
                .value()
                .try_into()
                .map_err(|_| StoreError::Engine("stored epoch is not 8 bytes".into()))?;
            Ok(u64::from_be_bytes(b))
        }
    }
}

fn writer_loop(slot: &DbSlot, rx: std_mpsc::Receiver<Pending>) {
    loop {
        let first = match rx.recv_timeout(REOPEN_EVERY) {
            Ok(p) => p,
            Err(std_mpsc::RecvTimeoutError::Timeout) => {
                // Idle: a store that failed is reopened without waiting for a write.
                slot.reopen();
                continue;
            }
            Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let mut batch = vec![first];
        let mut bytes = batch[0].op.size();
        while batch.len() < GROUP_COMMIT_MAX_WRITES && bytes < GROUP_COMMIT_MAX_BYTES {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += p.op.size();
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        slot.reopen();
        match slot.with(|db| commit_batch(db, &batch)) {
            Ok(outcomes) => {
                for (p, o) in batch.into_iter().zip(outcomes) {
                    let _ = p.done.send(o);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, writes = batch.len(), "store commit failed");
                for p in batch {
                    let _ = p.done.send(Err(match &e {
                        StoreError::DiskFull(m) => StoreError::DiskFull(m.clone()),
                        StoreError::Io(m) => StoreError::Io(m.clone()),
                        StoreError::Closed => StoreError::Closed,
                        other => StoreError::Engine(other.to_string()),
                    }));
                }
            }
        }
    }
}

/// Applies a batch in one transaction. Per-write rejections (epoch changed, kind
/// mismatch) are per-write results; an engine error fails the whole batch.
fn commit_batch(
    db: &Database,
    batch: &[Pending],
) -> Result<Vec<Result<WriteOutcome, StoreError>>, StoreError> {
    let tx = db.begin_write().map_err(engine)?;
    let mut out = Vec::with_capacity(batch.len());
    {
        let meta = tx.open_table(META).map_err(engine)?;
        let store_epoch = read_epoch(&meta)?;
        let mut t = tx.open_table(OBJECTS).map_err(engine)?;
        for p in batch {
            if p.epoch != store_epoch {
                out.push(Err(StoreError::EpochChanged {
                    store: store_epoch,
                    write: p.epoch,
                }));
                continue;
            }
            let id = p.op.id();
            let existing = match t.get(&id.0).map_err(engine)? {
                None => None,
                // A corrupt record is replaced by a valid write rather than served.
                Some(v) => StoredObject::decode(&id, v.value()).ok(),
            };
            let outcome = match (&p.op, existing) {
                (WriteOp::Content { .. }, Some(StoredObject::Content(_))) => {
                    Ok(WriteOutcome::AlreadyHeld)
                }
                (WriteOp::Owned(new), Some(StoredObject::Owned(old))) => {
                    match version_cmp(&new.header, &old.header) {
                        std::cmp::Ordering::Greater => Ok(WriteOutcome::Stored),
                        std::cmp::Ordering::Equal => Ok(WriteOutcome::AlreadyHeld),
                        std::cmp::Ordering::Less => Ok(WriteOutcome::Older(Box::new(old.header))),
                    }
                }
                (_, Some(_)) => Err(StoreError::KindMismatch),
                (_, None) => Ok(WriteOutcome::Stored),
            };
            if let Ok(WriteOutcome::Stored) = outcome {
                let rec = match &p.op {
                    WriteOp::Content { bytes, .. } => StoredObject::Content(bytes.clone()).encode(),
                    WriteOp::Owned(v) => StoredObject::Owned(v.clone()).encode(),
                };
                t.insert(&id.0, rec.as_slice()).map_err(engine)?;
            }
            out.push(outcome);
        }
    }
    tx.commit().map_err(engine)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dbqs_common::{KeyPair, Timestamp};
    use dbqs_ms::service::faulty_disk::{Fault, FaultyDisk};

    fn owned(k: &KeyPair, c: u64, v: &[u8]) -> OwnedValue {
        OwnedValue::sign(
            k,
            b"x",
            Timestamp {
                counter: c,
                writer: [0; 32],
            },
            v.to_vec(),
        )
    }

    #[tokio::test]
    async fn higher_versions_replace_equal_are_held_and_lower_are_answered_older() {
        let dir = tempfile::tempdir().unwrap();
        let s = ObjectStore::open(&dir.path().join("s.redb")).unwrap();
        s.set_epoch(1, b"cert").unwrap();
        let k = KeyPair::from_seed([1; 32]);
        let v2 = owned(&k, 2, b"two");
        assert_eq!(
            s.write(1, WriteOp::Owned(v2.clone())).await.unwrap(),
            WriteOutcome::Stored
        );
        assert_eq!(
            s.write(1, WriteOp::Owned(owned(&k, 1, b"one")))
                .await
                .unwrap(),
            WriteOutcome::Older(Box::new(v2.header.clone()))
        );
        assert_eq!(
            s.write(1, WriteOp::Owned(v2.clone())).await.unwrap(),
            WriteOutcome::AlreadyHeld
        );
        assert_eq!(s.get(&v2.header.id).unwrap(), Some(StoredObject::Owned(v2)));
    }

    #[tokio::test]
    async fn writes_for_another_epoch_are_refused_in_the_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let s = ObjectStore::open(&dir.path().join("s.redb")).unwrap();
        s.set_epoch(2, b"cert").unwrap();
        let bytes = b"blob".to_vec();
        let id = ObjectId::content(&bytes);
        let r = s.write(1, WriteOp::Content { id, bytes }).await;
        assert!(matches!(
            r,
            Err(StoreError::EpochChanged { store: 2, write: 1 })
        ));
        assert_eq!(s.get(&id).unwrap(), None);
        s.set_epoch(1, b"older").unwrap();
        assert_eq!(s.epoch().unwrap(), 2, "epoch never moves backwards");
    }

    /// A store at `path` with 50 content objects written in epoch 0; returns their ids.
    async fn filled(path: &Path) -> Vec<ObjectId> {
        let s = ObjectStore::open(path).unwrap();
        let mut ids = Vec::new();
        for i in 0..50u32 {
            let bytes = format!("damage-check-value-{i:04}-damage-check-value").into_bytes();
            let id = ObjectId::content(&bytes);
            s.write(0, WriteOp::Content { id, bytes }).await.unwrap();
            ids.push(id);
        }
        s.close();
        ids
    }

    fn set_aside(dir: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().contains(".damaged-"))
            .collect()
    }

    #[tokio::test]
    async fn an_intact_store_passes_the_start_check_with_everything_in_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let ids = filled(&path).await;
        let (s, damage) = ObjectStore::open_checked(&path).unwrap();
        assert!(damage.is_none(), "{damage:?}");
        assert_eq!(s.len().unwrap(), ids.len() as u64);
        assert!(set_aside(dir.path()).is_empty());
        // A missing file is a new, empty store.
        let (s, damage) = ObjectStore::open_checked(&dir.path().join("new.redb")).unwrap();
        assert!(damage.is_none() && s.is_empty().unwrap());
    }

    #[tokio::test]
    async fn a_truncated_altered_or_foreign_store_file_is_set_aside_not_served() {
        type Hurt = fn(&mut Vec<u8>);
        let cases: [(&str, Hurt); 4] = [
            ("truncated", |b| b.truncate(b.len() / 2)),
            ("cut to its header", |b| b.truncate(100)),
            ("a value altered", |b| {
                let marker = b"damage-check-value-0007";
                let mut i = 0;
                while i + marker.len() <= b.len() {
                    if &b[i..i + marker.len()] == marker {
                        b[i + 5] ^= 1;
                    }
                    i += 1;
                }
            }),
            ("not a store", |b| {
                b.iter_mut()
                    .enumerate()
                    .for_each(|(i, x)| *x = (i * 7) as u8)
            }),
        ];
        for (what, hurt) in cases {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("s.redb");
            filled(&path).await;
            let mut bytes = std::fs::read(&path).unwrap();
            let before = bytes.clone();
            hurt(&mut bytes);
            assert_ne!(bytes, before, "{what}: the file changed");
            std::fs::write(&path, &bytes).unwrap();
            let (s, damage) = ObjectStore::open_checked(&path).unwrap();
            let damage = damage.unwrap_or_else(|| panic!("{what}: damage detected"));
            assert!(s.is_empty().unwrap(), "{what}: a fresh store replaces it");
            assert_eq!(
                set_aside(dir.path()),
                vec![damage.moved_to.clone()],
                "{what}"
            );
            assert_eq!(
                std::fs::read(&damage.moved_to).unwrap(),
                bytes,
                "{what}: kept as found"
            );
        }
    }

    #[tokio::test]
    async fn a_store_whose_configuration_does_not_decode_is_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            let s = ObjectStore::open(&path).unwrap();
            s.set_epoch(3, b"not a configuration certificate").unwrap();
            s.close();
        }
        let (_, damage) = ObjectStore::open_checked(&path).unwrap();
        let reason = damage.unwrap().reason;
        assert!(reason.contains("configuration"), "{reason}");
    }

    #[tokio::test]
    async fn concurrent_writes_all_commit_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let ids = {
            let s = ObjectStore::open(&path).unwrap();
            s.set_epoch(1, b"cert").unwrap();
            let mut tasks = Vec::new();
            for i in 0..200u32 {
                let s = s.clone();
                tasks.push(tokio::spawn(async move {
                    let bytes = i.to_be_bytes().to_vec();
                    let id = ObjectId::content(&bytes);
                    s.write(1, WriteOp::Content { id, bytes }).await.unwrap();
                    id
                }));
            }
            let mut ids = Vec::new();
            for t in tasks {
                ids.push(t.await.unwrap());
            }
            ids
        };
        let s = ObjectStore::open(&path).unwrap();
        assert_eq!(s.len().unwrap(), 200);
        for id in ids {
            assert!(matches!(
                s.get(&id).unwrap(),
                Some(StoredObject::Content(_))
            ));
        }
    }

    fn content(i: u32) -> (ObjectId, WriteOp) {
        let bytes = vec![i as u8; 4096 + i as usize];
        let id = ObjectId::content(&bytes);
        (id, WriteOp::Content { id, bytes })
    }

    #[tokio::test]
    async fn a_full_disk_fails_writes_cleanly_and_writes_work_again_when_space_returns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let full = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let opener: Opener = {
            let (path, full) = (path.clone(), full.clone());
            // A file whose writes fail with ENOSPC while `full` is set (as a full disk does).
            Box::new(move || FaultyDisk::open_db(&path, Fault::Full, full.clone()))
        };
        let s = ObjectStore::open_with(opener).unwrap();
        s.set_epoch(1, b"cert").unwrap();
        let mut acked = Vec::new();
        for i in 0..20 {
            let (id, op) = content(i);
            s.write(1, op).await.unwrap();
            acked.push(id);
        }

        full.store(true, std::sync::atomic::Ordering::SeqCst);
        let (lost, op) = content(100);
        let e = s.write(1, op).await.unwrap_err();
        assert!(matches!(e, StoreError::DiskFull(_)), "{e}");
        assert!(e.to_string().contains("disk is full"), "{e}");
        // Still full: the store cannot reopen, and every operation says why.
        std::thread::sleep(REOPEN_EVERY * 2);
        let (_, op) = content(101);
        assert!(matches!(s.write(1, op).await, Err(StoreError::DiskFull(_))));
        assert!(matches!(s.get(&acked[0]), Err(StoreError::DiskFull(_))));
        assert!(matches!(s.set_pending(b"p"), Err(StoreError::DiskFull(_))));

        // Space returns: within a few reopen periods writes are stored again.
        full.store(false, std::sync::atomic::Ordering::SeqCst);
        let mut back = None;
        for attempt in 0..50u32 {
            let (id, op) = content(200 + attempt);
            match s.write(1, op).await {
                Ok(_) => {
                    back = Some(id);
                    break;
                }
                Err(StoreError::DiskFull(_) | StoreError::Io(_)) => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await
                }
                Err(e) => panic!("unexpected error after space returned: {e}"),
            }
        }
        acked.push(back.expect("writes did not work again within 5 s of space returning"));
        for id in &acked {
            assert!(s.get(id).unwrap().is_some());
        }
        assert_eq!(s.epoch().unwrap(), 1);
        s.close();

        // What was acknowledged is on disk; the refused write is not.
        let s = ObjectStore::open(&path).unwrap();
        for id in &acked {
            assert!(s.get(id).unwrap().is_some(), "acknowledged {id:?} lost");
        }
        assert!(s.get(&lost).unwrap().is_none());
        assert_eq!(s.len().unwrap(), acked.len() as u64);
    }
}
