//! The one fan-out helper: every client and server fan-out goes through
//! [`fan_out`] (or [`quorum`] on top of it); nothing else counts replies.
//!
//! It calls each distinct NodeId once, in parallel, and keeps valid replies and
//! failures apart; callers decide when they have enough. Replies are counted by
//! NodeId, never by connection or address (PROTOCOL.md: quorums of distinct
//! NodeIds).

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::time::Duration;

use dbqs_common::NodeId;
use futures::StreamExt;
use futures::stream::FuturesUnordered;

/// Why one replica's call did not produce a valid reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// No connection or the transport failed.
    Unavailable(String),
    /// The replica answered with an error status.
    Status(tonic::Code, String),
    /// The replica answered something that fails validation (bad signature,
    /// wrong hash, wrong id): counted as a Byzantine reply.
    Invalid(String),
    /// The replica is in another epoch.
    Epoch { ours: u64, theirs: u64 },
    /// The replica answered a write "older": it holds a higher, validly signed version
    /// (checked by the caller). Not an acknowledgement (PROTOCOL.md, "dBQS storage").
    Older(String),
    /// No reply before the deadline.
    Timeout,
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Unavailable(m) => write!(f, "unavailable ({m})"),
            CallError::Status(c, m) => write!(f, "{c:?}: {m}"),
            CallError::Invalid(m) => write!(f, "invalid reply ({m})"),
            CallError::Epoch { ours: 0, theirs } => write!(f, "replica is in epoch {theirs}"),
            CallError::Epoch { ours, theirs } => {
                write!(f, "replica is in epoch {theirs}, we are in {ours}")
            }
            CallError::Timeout => write!(f, "no reply in time"),
            CallError::Older(m) => write!(f, "older: the replica {m}"),
        }
    }
}

/// Metadata key in which a replica reports its epoch when it rejects a request
/// for being in another epoch.
pub const EPOCH_METADATA: &str = "dbqs-epoch";

impl From<tonic::Status> for CallError {
    fn from(s: tonic::Status) -> Self {
        if let Some(theirs) = s
            .metadata()
            .get(EPOCH_METADATA)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
        {
            return CallError::Epoch { ours: 0, theirs };
        }
        match s.code() {
            tonic::Code::Unavailable | tonic::Code::Unknown
                if s.message().contains("transport") || s.message().contains("connect") =>
            {
                CallError::Unavailable(s.message().to_string())
            }
            tonic::Code::Unavailable => CallError::Unavailable(s.message().to_string()),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => CallError::Timeout,
            c => CallError::Status(c, s.message().to_string()),
        }
    }
}

/// Everything a fan-out collected.
#[derive(Debug)]
pub struct Fanout<R> {
    pub ok: Vec<(NodeId, R)>,
    pub failed: Vec<(NodeId, CallError)>,
    /// Nodes whose reply was not awaited because the caller had decided.
    pub not_awaited: Vec<NodeId>,
}

impl<R> Fanout<R> {
    /// Number of replies that were invalid (Byzantine evidence).
    pub fn invalid_count(&self) -> usize {
        self.failed
            .iter()
            .filter(|(_, e)| matches!(e, CallError::Invalid(_)))
            .count()
    }
}

/// A quorum was not reached.
#[derive(Debug, Clone)]
pub struct QuorumError {
    pub need: usize,
    pub got: usize,
    pub group: usize,
    pub failed: Vec<(NodeId, CallError)>,
    /// Replies no longer awaited once the quorum had become impossible.
    pub not_awaited: Vec<NodeId>,
}

impl fmt::Display for QuorumError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "quorum not reached: {} of {} needed valid replies from a group of {}",
            self.got, self.need, self.group
        )?;
        if !self.failed.is_empty() {
            f.write_str("; ")?;
            for (i, (n, e)) in self.failed.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{n}: {e}")?;
            }
        }
        if !self.not_awaited.is_empty() {
            let names: Vec<String> = self.not_awaited.iter().map(|n| n.to_string()).collect();
            write!(f, "; not awaited: {}", names.join(", "))?;
        }
        Ok(())
    }
}

impl std::error::Error for QuorumError {}

/// What to do with calls still running once the caller has enough.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stragglers {
    /// Cancel them (reads: the answer is decided).
    Cancel,
    /// Let them finish in the background (writes: the remaining replicas should
    /// still receive the value).
    Finish,
}

/// Calls `call(node)` for each distinct node in `targets` concurrently, until
/// `enough(valid replies so far, calls still pending)` says stop, every call
/// ended, or `timeout` passed (pending nodes are then recorded as
/// [`CallError::Timeout`]).
pub async fn fan_out<R, F, Fut, S>(
    targets: &[NodeId],
    timeout: Duration,
    stragglers: Stragglers,
    call: F,
    mut enough: S,
) -> Fanout<R>
where
    R: Send + 'static,
    F: Fn(NodeId) -> Fut,
    Fut: Future<Output = Result<R, CallError>> + Send + 'static,
    S: FnMut(&[(NodeId, R)], usize) -> bool,
{
    let mut seen = HashSet::new();
    let mut handles = Vec::new();
    let mut running = FuturesUnordered::new();
    for &n in targets {
        if !seen.insert(n) {
            continue;
        }
        let h = tokio::spawn(call(n));
        let abort = h.abort_handle();
        handles.push(abort);
        running.push(async move { (n, h.await) });
    }
    let mut out = Fanout {
        ok: Vec::new(),
        failed: Vec::new(),
        not_awaited: Vec::new(),
    };
    let mut pending: HashSet<NodeId> = seen;
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    while !enough(&out.ok, pending.len()) && !pending.is_empty() {
        tokio::select! {
            next = running.next() => match next {
                None => break,
                Some((n, joined)) => {
                    pending.remove(&n);
                    match joined {
                        Ok(Ok(r)) => out.ok.push((n, r)),
                        Ok(Err(e)) => out.failed.push((n, e)),
                        Err(e) => out.failed.push((n, CallError::Unavailable(format!("task failed: {e}")))),
                    }
                }
            },
            _ = &mut deadline => {
                for n in pending.drain() {
                    out.failed.push((n, CallError::Timeout));
                }
                break;
            }
        }
    }
    if stragglers == Stragglers::Cancel {
        for h in handles {
            h.abort();
        }
    }
    out.not_awaited = pending.into_iter().collect();
    out.not_awaited.sort();
    out
}

/// Fans out until `need` valid replies from distinct nodes arrived; fails as
/// soon as that has become impossible, or at the timeout.
pub async fn quorum<R, F, Fut>(
    targets: &[NodeId],
    need: usize,
    timeout: Duration,
    stragglers: Stragglers,
    call: F,
) -> Result<Fanout<R>, QuorumError>
where
    R: Send + 'static,
    F: Fn(NodeId) -> Fut,
    Fut: Future<Output = Result<R, CallError>> + Send + 'static,
{
    let out = fan_out(targets, timeout, stragglers, call, |ok, pending| {
        ok.len() >= need || ok.len() + pending < need
    })
    .await;
    if out.ok.len() >= need {
        Ok(out)
    } else {
        Err(QuorumError {
            need,
            got: out.ok.len(),
            group: targets.len(),
            failed: out.failed,
            not_awaited: out.not_awaited,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: u8) -> Vec<NodeId> {
        (0..n).map(|i| NodeId([i; 32])).collect()
    }

    #[tokio::test]
    async fn quorum_counts_distinct_nodes_only() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let mut t = nodes(2);
        t.push(NodeId([0; 32]));
        t.push(NodeId([0; 32]));
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let r = quorum(
            &t,
            2,
            Duration::from_secs(1),
            Stragglers::Cancel,
            move |n| {
                c.fetch_add(1, Ordering::SeqCst);
                async move { Ok::<_, CallError>(n) }
            },
        )
        .await
        .unwrap();
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "one call per distinct node"
        );
        let mut got: Vec<_> = r.ok.iter().map(|(n, _)| *n).collect();
        got.sort();
        got.dedup();
        assert_eq!(got.len(), 2);
        // Three replies are needed but only two distinct nodes exist.
        let e = quorum(
            &t,
            3,
            Duration::from_secs(1),
            Stragglers::Cancel,
            |_| async { Ok::<_, CallError>(()) },
        )
        .await
        .unwrap_err();
        assert_eq!(e.need, 3);
        assert!(e.got < 3);
    }

    #[tokio::test]
    async fn invalid_replies_do_not_count_and_failure_is_early() {
        let t = nodes(4);
        let start = std::time::Instant::now();
        let r = quorum(
            &t,
            3,
            Duration::from_secs(10),
            Stragglers::Cancel,
            |n| async move {
                if n.0[0] < 2 {
                    Err(CallError::Invalid("bad signature".into()))
                } else {
                    Ok(n)
                }
            },
        )
        .await;
        let e = r.unwrap_err();
        assert!(e.got <= 2);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "impossible quorum fails early"
        );
        assert_eq!(
            e.failed
                .iter()
                .filter(|(_, e)| matches!(e, CallError::Invalid(_)))
                .count(),
            2
        );
        assert!(e.to_string().contains("invalid reply"));
    }

    #[tokio::test(start_paused = true)]
    async fn silent_nodes_time_out_and_are_named() {
        let t = nodes(4);
        let r = quorum(
            &t,
            3,
            Duration::from_millis(500),
            Stragglers::Cancel,
            |n| async move {
                if n.0[0] < 2 {
                    std::future::pending::<()>().await;
                }
                Ok(n)
            },
        )
        .await;
        let e = r.unwrap_err();
        assert_eq!(
            e.failed
                .iter()
                .filter(|(_, e)| *e == CallError::Timeout)
                .count(),
            2
        );
    }

    #[tokio::test(start_paused = true)]
    async fn quorum_completes_without_waiting_for_silent_minority() {
        let t = nodes(4);
        let r = quorum(
            &t,
            3,
            Duration::from_secs(60),
            Stragglers::Cancel,
            |n| async move {
                if n.0[0] == 0 {
                    std::future::pending::<()>().await;
                }
                Ok(n)
            },
        )
        .await
        .unwrap();
        assert_eq!(r.ok.len(), 3);
    }
}
