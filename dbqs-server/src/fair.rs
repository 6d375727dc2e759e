//! Fair admission of client Storage requests (docs/threat-model.md, "Byzantine
//! clients"): at most `slots` client requests run at once on a node; when all are busy,
//! waiting requests are queued per client (TLS certificate) and served round-robin, one
//! request per client per turn. A client that floods the node therefore waits behind its
//! own requests, not in front of everyone else's: an honest client with one request
//! outstanding gets the next free slot after at most one request of each other busy
//! client. Each client may queue at most `queue_per_client` requests; beyond that it is
//! refused at once (RESOURCE_EXHAUSTED), so memory stays bounded by
//! `slots + clients × queue_per_client` waiting entries, and the number of clients is
//! bounded by the connection limits.
//!
//! The same scheduler admits `Membership.Freshness` calls to a node's MS role, one
//! instance for clients and one for member nodes' lease renewals
//! (`service::FreshFair`); there a client also holds at most a few slots at once
//! ([`Fair::with_cap`]), since the work a slot stands for (a nonce in the MS's next
//! batch) is shared by everyone.
//!
//! Storage requests from members of the configuration (peer nodes) do not come through
//! here: transfers and probes keep their own bounds.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// Client requests that run at once on one node.
pub const CLIENT_SLOTS: usize = 32;
/// Requests one client may have waiting for a slot.
pub const QUEUE_PER_CLIENT: usize = 64;
/// Client `Membership.Freshness` calls a node's MS role orders at once. With
/// [`FRESH_NODE_SLOTS`] this stays below the MS's driver queue (`ms_host::QUEUE_LEN`), so a
/// flood meets this scheduler, not a full queue.
pub const FRESH_CLIENT_SLOTS: usize = 1_024;
/// Client nonces of one client that a node's MS role holds at once (queued or being
/// ordered): an honest client's nonce is then behind at most this many of each other
/// client's, so it goes into one of the next batches however hard another floods.
pub const FRESH_RUNNING_PER_CLIENT: usize = 64;
/// Freshness calls one client may have waiting for a slot. Waiting is cheap (no nonce is
/// queued at the MS yet) and slows a flooder down; refusing is not, since a refused
/// flooder retries at once.
pub const FRESH_QUEUE_PER_CLIENT: usize = 1_024;
/// How long a refused Freshness call waits before its RESOURCE_EXHAUSTED answer, so that a
/// flooder's retries cost it time, not the node CPU.
pub const FRESH_REFUSAL_DELAY_MS: u64 = 500;
/// Member nodes' lease renewals a node's MS role orders at once.
pub const FRESH_NODE_SLOTS: usize = 2_048;
/// Renewals of one member node held at once (an honest node has one at a time).
pub const FRESH_RUNNING_PER_NODE: usize = 4;
/// Renewals one member node may have waiting (an honest node has one at a time).
pub const FRESH_QUEUE_PER_NODE: usize = 4;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "this client already has {queued} requests waiting on this node (limit {limit}); slow down"
)]
pub struct Overloaded {
    pub queued: usize,
    pub limit: usize,
}

#[derive(Default)]
struct State {
    running: usize,
    /// Running requests per client (clients with none are absent).
    running_by: HashMap<[u8; 32], usize>,
    /// Waiting requests per client, oldest first.
    queues: HashMap<[u8; 32], VecDeque<oneshot::Sender<Permit>>>,
    /// Clients with waiting requests, in the order they are served next.
    turn: VecDeque<[u8; 32]>,
}

/// The scheduler of one node; cheap to clone.
#[derive(Clone)]
pub struct Fair {
    inner: Arc<Inner>,
}

struct Inner {
    slots: usize,
    /// Slots one client may hold at once; beyond that its requests wait their turn even
    /// when slots are free.
    running_per_client: usize,
    queue_per_client: usize,
    state: Mutex<State>,
}

/// A running request's slot; freeing it hands the slot to the next waiting request.
pub struct Permit {
    inner: Option<Arc<Inner>>,
    client: [u8; 32],
}

impl Fair {
    pub fn new(slots: usize, queue_per_client: usize) -> Fair {
        Fair::with_cap(slots, slots, queue_per_client)
    }

    /// Like [`Fair::new`], and one client holds at most `running_per_client` slots at
    /// once: work already admitted for one client (nonces queued for the next batch, say)
    /// then stays small next to anyone else's.
    pub fn with_cap(slots: usize, running_per_client: usize, queue_per_client: usize) -> Fair {
        Fair {
            inner: Arc::new(Inner {
                slots: slots.max(1),
                running_per_client: running_per_client.max(1),
                queue_per_client,
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// Waits for a slot for `client`'s request, or refuses it if the client already has
    /// `queue_per_client` requests waiting. Dropping the future gives up its place.
    pub async fn admit(&self, client: [u8; 32]) -> Result<Permit, Overloaded> {
        let rx = {
            let mut s = self.inner.lock();
            // A free slot means no waiting client may take one (`hand_over` gives every
            // freed slot to the next client below its cap), so a client below its cap
            // runs at once.
            let mine = s.running_by.get(&client).copied().unwrap_or(0);
            if s.running < self.inner.slots && mine < self.inner.running_per_client {
                s.running += 1;
                *s.running_by.entry(client).or_default() += 1;
                return Ok(Permit {
                    inner: Some(self.inner.clone()),
                    client,
                });
            }
            let limit = self.inner.queue_per_client;
            let q = s.queues.entry(client).or_default();
            // Places given up by dropped futures do not count.
            q.retain(|tx| !tx.is_closed());
            if q.len() >= limit {
                let queued = q.len();
                if queued == 0 {
                    s.queues.remove(&client);
                }
                return Err(Overloaded { queued, limit });
            }
            let (tx, rx) = oneshot::channel();
            q.push_back(tx);
            if q.len() == 1 && !s.turn.contains(&client) {
                s.turn.push_back(client);
            }
            rx
        };
        // The sender is dropped only by `hand_over` after it gave the slot to someone
        // else, or never; a closed channel would mean the scheduler is gone.
        match rx.await {
            Ok(p) => Ok(p),
            Err(_) => Err(Overloaded {
                queued: 0,
                limit: self.inner.queue_per_client,
            }),
        }
    }

    /// (running, waiting) requests, for metrics and tests.
    pub fn load(&self) -> (usize, usize) {
        let s = self.inner.lock();
        (s.running, s.queues.values().map(VecDeque::len).sum())
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `from`'s slot was freed: give it to the next waiting request, in client order,
    /// of a client below its cap, or count it free.
    fn hand_over(self: &Arc<Self>, from: [u8; 32]) {
        let mut s = self.lock();
        if let Some(n) = s.running_by.get_mut(&from) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                s.running_by.remove(&from);
            }
        }
        // Each waiting client is looked at once; those at their cap keep their place.
        for _ in 0..s.turn.len() {
            let Some(client) = s.turn.pop_front() else {
                break;
            };
            if s.running_by.get(&client).copied().unwrap_or(0) >= self.running_per_client {
                s.turn.push_back(client);
                continue;
            }
            let Some(q) = s.queues.get_mut(&client) else {
                continue;
            };
            let mut given = false;
            while let Some(tx) = q.pop_front() {
                let permit = Permit {
                    inner: Some(self.clone()),
                    client,
                };
                match tx.send(permit) {
                    Ok(()) => {
                        given = true;
                        break;
                    }
                    // Its future was dropped: the permit comes back unused; forget it
                    // without freeing the slot again.
                    Err(mut p) => p.inner = None,
                }
            }
            if q.is_empty() {
                s.queues.remove(&client);
            } else {
                s.turn.push_back(client);
            }
            if given {
                *s.running_by.entry(client).or_default() += 1;
                return;
            }
        }
        s.running = s.running.saturating_sub(1);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            inner.hand_over(self.client);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn id(x: u8) -> [u8; 32] {
        [x; 32]
    }

    #[tokio::test]
    async fn free_slots_admit_at_once_and_are_counted() {
        let f = Fair::new(2, 4);
        let a = f.admit(id(1)).await.unwrap();
        let b = f.admit(id(1)).await.unwrap();
        assert_eq!(f.load(), (2, 0));
        drop(a);
        assert_eq!(f.load(), (1, 0));
        drop(b);
        assert_eq!(f.load(), (0, 0));
    }

    #[tokio::test]
    async fn a_flooding_client_is_refused_past_its_queue_and_others_are_served_in_turn() {
        let f = Fair::new(1, 3);
        let running = f.admit(id(9)).await.unwrap();
        // The flooder queues 3 and is refused the 4th at once.
        let mut flood = Vec::new();
        for _ in 0..3 {
            let f = f.clone();
            flood.push(tokio::spawn(async move { f.admit(id(9)).await }));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            f.admit(id(9)).await.err(),
            Some(Overloaded {
                queued: 3,
                limit: 3
            })
        );
        // An honest client arrives after the whole flood: it is served second, right
        // after the flooder's first waiting request, not after all three.
        let order = Arc::new(Mutex::new(Vec::new()));
        let honest = {
            let (f, order) = (f.clone(), order.clone());
            tokio::spawn(async move {
                let p = f.admit(id(1)).await.unwrap();
                order.lock().unwrap().push(1u8);
                tokio::time::sleep(Duration::from_millis(5)).await;
                drop(p);
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(f.load(), (1, 4));
        drop(running);
        let mut served = 0;
        for t in flood {
            let p = t.await.unwrap().unwrap();
            order.lock().unwrap().push(9);
            served += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
            drop(p);
        }
        honest.await.unwrap();
        assert_eq!(served, 3);
        assert_eq!(*order.lock().unwrap(), vec![9, 1, 9, 9]);
        assert_eq!(f.load(), (0, 0));
    }

    #[tokio::test]
    async fn a_client_at_its_cap_waits_while_others_run_in_the_free_slots() {
        let f = Fair::with_cap(8, 2, 4);
        let a1 = f.admit(id(9)).await.unwrap();
        let _a2 = f.admit(id(9)).await.unwrap();
        // The flooder is at its cap: its third request waits although 6 slots are free.
        let third = {
            let f = f.clone();
            tokio::spawn(async move { f.admit(id(9)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(f.load(), (2, 1));
        // Another client runs at once in a free slot.
        let honest = tokio::time::timeout(Duration::from_millis(100), f.admit(id(1)))
            .await
            .expect("a client below its cap is not held up by one at its cap")
            .unwrap();
        assert_eq!(f.load(), (3, 1));
        // The honest client's slot freeing does not go to the capped flooder...
        drop(honest);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!third.is_finished());
        assert_eq!(f.load(), (2, 1));
        // ...the flooder's own freed slot does.
        drop(a1);
        let p = tokio::time::timeout(Duration::from_millis(500), third)
            .await
            .expect("the waiting request runs once the client is below its cap")
            .unwrap()
            .unwrap();
        assert_eq!(f.load(), (2, 0));
        drop(p);
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_does_not_leak_its_slot() {
        let f = Fair::new(1, 4);
        let running = f.admit(id(1)).await.unwrap();
        let waiting = {
            let f = f.clone();
            tokio::spawn(async move { f.admit(id(2)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        waiting.abort();
        let _ = waiting.await;
        drop(running);
        assert_eq!(f.load(), (0, 0), "the slot is free again");
        let again = f.admit(id(3)).await.unwrap();
        assert_eq!(f.load(), (1, 0));
        drop(again);
    }

    #[tokio::test]
    async fn under_contention_every_client_gets_its_turn() {
        let f = Fair::new(2, 64);
        let served = Arc::new(Mutex::new(HashMap::<u8, usize>::new()));
        let mut tasks = Vec::new();
        // Client 0 runs 40 request loops at once, clients 1..=3 one loop each.
        for (client, loops) in [(0u8, 40usize), (1, 1), (2, 1), (3, 1)] {
            for _ in 0..loops {
                let (f, served) = (f.clone(), served.clone());
                tasks.push(tokio::spawn(async move {
                    for _ in 0..20 {
                        let p = f.admit(id(client)).await.unwrap();
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        *served.lock().unwrap().entry(client).or_default() += 1;
                        drop(p);
                    }
                }));
            }
        }
        for t in tasks {
            t.await.unwrap();
        }
        let served = served.lock().unwrap();
        assert_eq!(served[&0], 800);
        for c in 1..=3 {
            assert_eq!(served[&c], 20);
        }
        assert_eq!(f.load(), (0, 0));
    }
}
