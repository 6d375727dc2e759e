//! The replicated state besides the application: the per-client reply cache (§4.1: a replica
//! remembers the last reply to each client so retransmissions are answered, not re-executed).
//! It is part of every checkpoint, so a replica restored by state transfer keeps exactly-once.

use std::collections::BTreeMap;

use super::codec::{DecodeError, Limits, Reader, Writer};
use super::messages::{ClientId, Digest, sha256_tagged};

const STATE_TAG: &[u8] = b"dbqs.v1.pbft.state\0";

/// The last executed request of one client and the reply it got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientRecord {
    pub request_num: u64,
    pub reply: Vec<u8>,
    /// Sequence number that executed it; the eviction order when the table is full.
    pub executed_seq: u64,
}

/// Bounded map client → last reply. Eviction is deterministic (oldest `executed_seq`, then
/// lowest client id), so every correct replica evicts the same client at the same point.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientTable {
    records: BTreeMap<ClientId, ClientRecord>,
}

impl ClientTable {
    pub fn get(&self, client: &ClientId) -> Option<&ClientRecord> {
        self.records.get(client)
    }
    pub fn record(&mut self, client: ClientId, rec: ClientRecord, max_clients: usize) {
        if !self.records.contains_key(&client) && self.records.len() >= max_clients {
            // O(n) scan, bounded by max_clients, and only on eviction.
            if let Some(victim) = self
                .records
                .iter()
                .min_by_key(|(id, r)| (r.executed_seq, **id))
                .map(|(id, _)| *id)
            {
                self.records.remove(&victim);
            }
        }
        self.records.insert(client, rec);
    }

    fn encode_to(&self, w: &mut Writer) {
        w.len(self.records.len());
        for (client, rec) in &self.records {
            w.fixed(&client.0);
            w.u64(rec.request_num);
            w.u64(rec.executed_seq);
            w.var_bytes(&rec.reply);
        }
    }

    fn decode_from(
        r: &mut Reader<'_>,
        limits: &Limits,
        max_clients: usize,
    ) -> Result<Self, DecodeError> {
        let n = r.len("clients", max_clients, 32 + 8 + 8 + 4)?;
        let mut records = BTreeMap::new();
        let mut last: Option<ClientId> = None;
        for _ in 0..n {
            let client = ClientId(r.array()?);
            // Canonical: strictly increasing client ids, so equal tables have equal bytes.
            if last.is_some_and(|l| l >= client) {
                return Err(DecodeError::TooMany {
                    what: "unsorted client table",
                    count: n,
                    max: 0,
                });
            }
            last = Some(client);
            let request_num = r.u64()?;
            let executed_seq = r.u64()?;
            let reply = r.var_bytes("reply bytes", limits.max_reply_bytes)?;
            records.insert(
                client,
                ClientRecord {
                    request_num,
                    reply,
                    executed_seq,
                },
            );
        }
        Ok(ClientTable { records })
    }
}

/// Checkpoint state bytes: the client table, then the application snapshot.
pub fn encode_state(table: &ClientTable, app_snapshot: &[u8]) -> Vec<u8> {
    let mut w = Writer::new();
    let mut t = Writer::new();
    table.encode_to(&mut t);
    w.var_bytes(&t.bytes);
    w.fixed(app_snapshot);
    w.bytes
}

/// Splits checkpoint state bytes into the client table and the application snapshot.
pub fn decode_state<'a>(
    state: &'a [u8],
    limits: &Limits,
    max_clients: usize,
) -> Result<(ClientTable, &'a [u8]), DecodeError> {
    let mut r = Reader::new(state);
    let table_bytes = r.var_bytes("client table bytes", limits.max_state_bytes)?;
    let consumed = state.len() - r.remaining();
    let mut tr = Reader::new(&table_bytes);
    let table = ClientTable::decode_from(&mut tr, limits, max_clients)?;
    tr.finish()?;
    Ok((table, &state[consumed..]))
}

/// The digest a checkpoint message signs (§4.3).
pub fn state_digest(state: &[u8]) -> Digest {
    sha256_tagged(STATE_TAG, &[state])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_client_table_evicts_least_recently_executed_client() {
        let mut t = ClientTable::default();
        for i in 0..3u8 {
            let rec = ClientRecord {
                request_num: 1,
                reply: vec![i],
                executed_seq: 10 - u64::from(i),
            };
            t.record(ClientId([i; 32]), rec, 2);
        }
        assert_eq!(t.records.len(), 2);
        assert!(t.get(&ClientId([0; 32])).is_some());
        assert!(t.get(&ClientId([2; 32])).is_some());
        assert!(t.get(&ClientId([1; 32])).is_none());
    }

    #[test]
    fn state_round_trips_through_encoding() {
        let mut t = ClientTable::default();
        t.record(
            ClientId([7; 32]),
            ClientRecord {
                request_num: 3,
                reply: b"ok".to_vec(),
                executed_seq: 5,
            },
            10,
        );
        let bytes = encode_state(&t, b"app");
        let (t2, app) = decode_state(&bytes, &Limits::default(), 10).expect("decodes");
        assert_eq!(t2, t);
        assert_eq!(app, b"app");
    }
}
