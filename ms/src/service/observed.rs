//! An [`Application`] wrapper that lets the host watch the replicated state.
//!
//! The replica owns its application inside the actor task; a host that must react to the
//! state (sign a new configuration, show status) gets a callback after every batch the
//! replica executes and after every snapshot it restores. The callback runs on the actor
//! task, so it must be quick (publish to a `watch` channel, not await anything).

use crate::pbft::{Application, Request, RestoreError};

/// `inner`, with `observe(&inner)` called after each `execute` and `restore`.
pub struct Observed<A, F> {
    inner: A,
    observe: F,
}

impl<A, F: FnMut(&A)> Observed<A, F> {
    /// Wraps `inner`; `observe` is called once now, so the host sees the starting state.
    pub fn new(inner: A, mut observe: F) -> Self {
        observe(&inner);
        Observed { inner, observe }
    }

    pub fn inner(&self) -> &A {
        &self.inner
    }
}

impl<A: Application, F: FnMut(&A)> Application for Observed<A, F> {
    fn execute(&mut self, batch: &[Request]) -> Vec<Vec<u8>> {
        let replies = self.inner.execute(batch);
        (self.observe)(&self.inner);
        replies
    }

    fn query(&self, op: &[u8]) -> Vec<u8> {
        self.inner.query(op)
    }

    fn snapshot(&self) -> Vec<u8> {
        self.inner.snapshot()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError> {
        let r = self.inner.restore(snapshot);
        (self.observe)(&self.inner);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct Counter(u64);

    impl Application for Counter {
        fn execute(&mut self, batch: &[Request]) -> Vec<Vec<u8>> {
            self.0 += batch.len() as u64;
            batch
                .iter()
                .map(|_| self.0.to_be_bytes().to_vec())
                .collect()
        }
        fn query(&self, _op: &[u8]) -> Vec<u8> {
            self.0.to_be_bytes().to_vec()
        }
        fn snapshot(&self) -> Vec<u8> {
            self.0.to_be_bytes().to_vec()
        }
        fn restore(&mut self, s: &[u8]) -> Result<(), RestoreError> {
            let b: [u8; 8] = s.try_into().map_err(|_| RestoreError {
                reason: "length".into(),
            })?;
            self.0 = u64::from_be_bytes(b);
            Ok(())
        }
    }

    #[test]
    fn the_host_sees_every_executed_batch_and_restored_snapshot() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let mut app = Observed::new(Counter::default(), move |c: &Counter| {
            s.lock().unwrap().push(c.0)
        });
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let req = Request::sign(&key, 1, false, vec![1]);
        app.execute(&[req.clone(), req]);
        app.restore(&9u64.to_be_bytes()).unwrap();
        assert!(app.restore(&[1, 2]).is_err());
        assert_eq!(*seen.lock().unwrap(), vec![0, 2, 9, 9]);
        assert_eq!(app.query(&[]), 9u64.to_be_bytes().to_vec());
    }
}
