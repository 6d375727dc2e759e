//! Records the history of concurrent clients for the checker.

use std::fmt;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use dbqs_client::{Client, ClientError, PutReceipt};
use dbqs_common::{OwnedValue, PublicKey};

use super::history::{OpKind, Operation, ReadResult, value_label};

/// A thread-safe history of at most `capacity` operations on one monotonic
/// clock. An operation is recorded as indeterminate when it is invoked and
/// completed when its reply arrives, so one that fails, times out, or whose
/// task is dropped midway stays indeterminate, as it must: it may or may not
/// have taken effect.
///
/// Keys are object names; tests using several owner keys must use distinct
/// names.
pub struct HistoryRecorder {
    origin: Instant,
    capacity: usize,
    ops: Mutex<Vec<Operation>>,
}

#[derive(Debug)]
pub enum RecordError {
    /// The history is full; the operation was not performed, so the recorded
    /// history stays complete.
    Full { capacity: usize },
    /// The client failed; the operation is recorded as indeterminate.
    Client(ClientError),
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::Full { capacity } => {
                write!(f, "history recorder full ({capacity} operations)")
            }
            RecordError::Client(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for RecordError {}

/// An invoked operation awaiting its completion. Dropping it leaves the
/// operation indeterminate.
#[must_use = "an operation never completed stays indeterminate"]
pub struct Pending<'a> {
    recorder: &'a HistoryRecorder,
    index: usize,
}

impl Pending<'_> {
    /// The write was acknowledged.
    pub fn written(self) {
        let now = self.recorder.now_ns();
        let mut ops = self.recorder.lock();
        match &mut ops[self.index].kind {
            OpKind::Write { complete_ns, .. } => *complete_ns = Some(now),
            OpKind::Read { .. } => panic!("completing a read as a write"),
        }
    }

    /// The read returned `value` (`None`: not found).
    pub fn returned(self, value: Option<String>) {
        let now = self.recorder.now_ns();
        let mut ops = self.recorder.lock();
        match &mut ops[self.index].kind {
            OpKind::Read { result } => {
                *result = Some(ReadResult {
                    complete_ns: now,
                    value,
                })
            }
            OpKind::Write { .. } => panic!("completing a write as a read"),
        }
    }

    /// The operation failed; it stays indeterminate, with `error` noted.
    pub fn failed(self, error: impl fmt::Display) {
        self.recorder.lock()[self.index].error = Some(error.to_string());
    }
}

impl HistoryRecorder {
    pub fn new(capacity: usize) -> Self {
        HistoryRecorder {
            origin: Instant::now(),
            capacity,
            ops: Mutex::new(Vec::with_capacity(capacity)),
        }
    }

    /// Nanoseconds since the recorder was made, on a monotonic clock.
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Operation>> {
        // A panicking client task must not hide the rest of the history.
        self.ops.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn invoke(&self, make: impl FnOnce(u64) -> Operation) -> Result<Pending<'_>, RecordError> {
        let mut ops = self.lock();
        if ops.len() >= self.capacity {
            return Err(RecordError::Full {
                capacity: self.capacity,
            });
        }
        // Taken under the lock so that the history is in invocation order.
        ops.push(make(self.now_ns()));
        Ok(Pending {
            recorder: self,
            index: ops.len() - 1,
        })
    }

    pub fn invoke_write(
        &self,
        client: u64,
        key: &str,
        value: &str,
    ) -> Result<Pending<'_>, RecordError> {
        self.invoke(|t| Operation::write_indeterminate(client, key, value, t))
    }

    pub fn invoke_read(&self, client: u64, key: &str) -> Result<Pending<'_>, RecordError> {
        self.invoke(|t| Operation::read_indeterminate(client, key, t))
    }

    /// `client.put(name, value)`, recorded as client `client_id`'s.
    pub async fn put(
        &self,
        client_id: u64,
        client: &Client,
        name: &str,
        value: Vec<u8>,
    ) -> Result<PutReceipt, RecordError> {
        let pending = self.invoke_write(client_id, name, &value_label(&value))?;
        match client.put(name.as_bytes(), value).await {
            Ok(receipt) => {
                pending.written();
                Ok(receipt)
            }
            Err(e) => {
                pending.failed(&e);
                Err(RecordError::Client(e))
            }
        }
    }

    /// `client.get(owner, name)`, recorded as client `client_id`'s.
    pub async fn get(
        &self,
        client_id: u64,
        client: &Client,
        owner: &PublicKey,
        name: &str,
    ) -> Result<Option<OwnedValue>, RecordError> {
        let pending = self.invoke_read(client_id, name)?;
        match client.get(owner, name.as_bytes()).await {
            Ok(v) => {
                pending.returned(v.as_ref().map(|v| value_label(&v.value)));
                Ok(v)
            }
            Err(e) => {
                pending.failed(&e);
                Err(RecordError::Client(e))
            }
        }
    }

    /// The operations so far, in invocation order.
    pub fn history(&self) -> Vec<Operation> {
        self.lock().clone()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn completions_fill_in_invocations_and_unfinished_ones_stay_indeterminate() {
        let rec = HistoryRecorder::new(10);
        let w = rec.invoke_write(1, "k", "v").unwrap();
        let r = rec.invoke_read(2, "k").unwrap();
        let lost = rec.invoke_write(3, "k", "u").unwrap();
        let failed = rec.invoke_read(4, "k").unwrap();
        w.written();
        r.returned(Some("v".into()));
        failed.failed("timed out");
        drop(lost);
        let h = rec.history();
        assert_eq!(h.len(), 4);
        assert!(h.iter().all(|o| o.validate().is_ok()));
        assert!(h[0].invoke_ns <= h[1].invoke_ns && h[1].invoke_ns <= h[2].invoke_ns);
        assert!(!h[0].is_indeterminate() && !h[1].is_indeterminate());
        assert!(h[2].is_indeterminate() && h[2].error.is_none());
        assert!(h[3].is_indeterminate());
        assert_eq!(h[3].error.as_deref(), Some("timed out"));
        let OpKind::Read { result: Some(res) } = &h[1].kind else {
            panic!("{:?}", h[1]);
        };
        assert_eq!(res.value.as_deref(), Some("v"));
        assert!(res.complete_ns >= h[1].invoke_ns);
    }

    #[test]
    fn a_full_recorder_refuses_new_operations() {
        let rec = HistoryRecorder::new(2);
        rec.invoke_read(1, "k").unwrap().returned(None);
        rec.invoke_read(1, "k").unwrap().returned(None);
        assert!(matches!(
            rec.invoke_write(1, "k", "v"),
            Err(RecordError::Full { capacity: 2 })
        ));
        assert_eq!(rec.len(), 2);
    }

    #[test]
    fn concurrent_threads_record_every_operation_once() {
        let rec = Arc::new(HistoryRecorder::new(4 * 250));
        let threads: Vec<_> = (0..4u64)
            .map(|c| {
                let rec = rec.clone();
                std::thread::spawn(move || {
                    for i in 0..250 {
                        rec.invoke_write(c, "k", &format!("c{c}-{i}"))
                            .unwrap()
                            .written();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let h = rec.history();
        assert_eq!(h.len(), 1_000);
        assert!(h.iter().all(|o| !o.is_indeterminate()));
        assert!(h.windows(2).all(|p| p[0].invoke_ns <= p[1].invoke_ns));
        let mut values: Vec<_> = h
            .iter()
            .map(|o| match &o.kind {
                OpKind::Write { value, .. } => value.clone(),
                OpKind::Read { .. } => unreachable!(),
            })
            .collect();
        values.sort();
        values.dedup();
        assert_eq!(values.len(), 1_000);
    }
}
