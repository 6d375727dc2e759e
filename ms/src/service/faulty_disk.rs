//! A redb storage backend over a real file whose writes can be made to fail on demand,
//! for tests of disk faults under a replica's database (feature `testkit`): this crate's
//! PBFT runtime tests and dbqs-server's store tests.

use std::io;
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use redb::backends::FileBackend;
use redb::{BackendError, Database, DatabaseError, StorageBackend};

/// How the disk fails while its fault is switched on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// A full disk: writes and growing the file fail with ENOSPC; syncs and shrinking work.
    Full,
    /// A dying disk: every write, resize and sync fails with EIO.
    Dead,
}

/// A file whose writes fail as `fault` says while `on` is set.
#[derive(Debug)]
pub struct FaultyDisk {
    file: FileBackend,
    fault: Fault,
    on: Arc<AtomicBool>,
}

impl FaultyDisk {
    /// Opens (or creates) a redb database at `path` on a faulty disk switched by `on`.
    pub fn open_db(
        path: &Path,
        fault: Fault,
        on: Arc<AtomicBool>,
    ) -> Result<Database, DatabaseError> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| DatabaseError::Storage(redb::StorageError::Io(e)))?;
        redb::Builder::new().create_with_backend(FaultyDisk {
            file: FileBackend::new(f)?,
            fault,
            on,
        })
    }

    fn check(&self) -> io::Result<()> {
        if !self.on.load(Ordering::SeqCst) {
            return Ok(());
        }
        Err(io::Error::from_raw_os_error(match self.fault {
            Fault::Full => 28, // ENOSPC
            Fault::Dead => 5,  // EIO
        }))
    }
}

impl StorageBackend for FaultyDisk {
    fn len(&self) -> io::Result<u64> {
        self.file.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.file.read(offset, out)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        if self.fault == Fault::Dead || len > self.file.len()? {
            self.check()?;
        }
        self.file.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        if self.fault == Fault::Dead {
            self.check()?;
        }
        self.file.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.check()?;
        self.file.write(offset, data)
    }
    fn close(&self) -> io::Result<()> {
        self.file.close()
    }
    fn try_lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
        self.file.try_lock_range(s, e)
    }
    fn try_lock_shared_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
        self.file.try_lock_shared_range(s, e)
    }
    fn lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_range(s, e)
    }
    fn lock_shared_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_shared_range(s, e)
    }
    fn unlock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
        self.file.unlock_range(s, e)
    }
    fn query_lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
        self.file.query_lock_range(s, e)
    }
}
