//! The simulator's replicated application: a counter with a hash chain over every executed
//! operation, so any difference in order or content shows in the state digest, and a
//! per-client record that counts duplicate executions (exactly-once violations).

use std::collections::BTreeMap;

use sha2::{Digest as _, Sha256};

use crate::pbft::codec::{Reader, Writer};
use crate::pbft::{Application, ClientId, Request, RestoreError};

/// Operation bytes: `[0] ++ amount(u64 BE)` adds, `[1]` reads.
pub fn add_op(amount: u64) -> Vec<u8> {
    let mut v = vec![0u8];
    v.extend_from_slice(&amount.to_be_bytes());
    v
}
pub fn get_op() -> Vec<u8> {
    vec![1u8]
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CounterApp {
    pub value: u64,
    pub executed_ops: u64,
    pub chain: [u8; 32],
    pub last_num: BTreeMap<ClientId, u64>,
    /// Requests executed twice: must stay 0 on correct replicas.
    pub duplicates: u64,
}

impl Application for CounterApp {
    fn execute(&mut self, batch: &[Request]) -> Vec<Vec<u8>> {
        batch
            .iter()
            .map(|req| {
                let last = self.last_num.entry(req.client).or_insert(0);
                if req.request_num <= *last {
                    self.duplicates += 1;
                }
                *last = (*last).max(req.request_num);
                if req.op.len() == 9 && req.op[0] == 0 {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(&req.op[1..]);
                    self.value = self.value.wrapping_add(u64::from_be_bytes(a));
                }
                self.executed_ops += 1;
                let mut h = Sha256::new();
                h.update(self.chain);
                h.update(req.client.0);
                h.update(req.request_num.to_be_bytes());
                h.update(&req.op);
                self.chain = h.finalize().into();
                self.value.to_be_bytes().to_vec()
            })
            .collect()
    }

    fn query(&self, _op: &[u8]) -> Vec<u8> {
        self.value.to_be_bytes().to_vec()
    }

    fn snapshot(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u64(self.value);
        w.u64(self.executed_ops);
        w.fixed(&self.chain);
        w.u64(self.duplicates);
        w.len(self.last_num.len());
        for (c, n) in &self.last_num {
            w.fixed(&c.0);
            w.u64(*n);
        }
        w.bytes
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError> {
        let err = |e: crate::pbft::DecodeError| RestoreError {
            reason: e.to_string(),
        };
        let mut r = Reader::new(snapshot);
        let value = r.u64().map_err(err)?;
        let executed_ops = r.u64().map_err(err)?;
        let chain = r.array().map_err(err)?;
        let duplicates = r.u64().map_err(err)?;
        let n = r.len("clients", 1 << 20, 40).map_err(err)?;
        let mut last_num = BTreeMap::new();
        for _ in 0..n {
            let c = ClientId(r.array().map_err(err)?);
            last_num.insert(c, r.u64().map_err(err)?);
        }
        r.finish().map_err(err)?;
        *self = CounterApp {
            value,
            executed_ops,
            chain,
            last_num,
            duplicates,
        };
        Ok(())
    }
}
