//! Connections per client identity on a node's gRPC port (docs/threat-model.md,
//! "Byzantine clients"). Each connection already carries at most
//! `node::MAX_STREAMS_PER_CONNECTION` streams; this bounds how many connections one
//! client certificate holds open at once, so one identity cannot multiply its share of
//! the node by opening more connections. A connection past the limit is closed right
//! after its TLS handshake, before any request is read. Members of the node's current
//! configuration are not limited here: their connections (PBFT, transfers, probes,
//! leases) are bounded by their own code.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

/// Connections one client certificate may hold open on one node at once.
pub const MAX_CONNECTIONS_PER_CLIENT: usize = 32;

/// Open connections per client identity (SHA-256 of its certificate).
pub struct ConnLimits {
    per_client: usize,
    open: Mutex<HashMap<[u8; 32], usize>>,
}

/// One open connection's place; dropping it (when the connection closes) frees it.
pub struct ConnSlot {
    limits: Arc<ConnLimits>,
    identity: [u8; 32],
}

impl ConnLimits {
    pub fn new(per_client: usize) -> Arc<ConnLimits> {
        Arc::new(ConnLimits {
            per_client: per_client.max(1),
            open: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], usize>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for one more connection of `identity`, or None if it already holds
    /// `per_client` connections.
    pub fn take(self: &Arc<Self>, identity: [u8; 32]) -> Option<ConnSlot> {
        let mut open = self.lock();
        let n = open.entry(identity).or_insert(0);
        if *n >= self.per_client {
            return None;
        }
        *n += 1;
        Some(ConnSlot {
            limits: self.clone(),
            identity,
        })
    }

    /// Connections `identity` holds open now.
    pub fn open(&self, identity: &[u8; 32]) -> usize {
        self.lock().get(identity).copied().unwrap_or(0)
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut open = self.limits.lock();
        if let Some(n) = open.get_mut(&self.identity) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.identity);
            }
        }
    }
}

/// The SHA-256 of the client's leaf certificate (the identity `NodeCore::peer` uses).
pub fn identity(tls: &TlsStream<TcpStream>) -> Option<[u8; 32]> {
    let leaf = tls.get_ref().1.peer_certificates()?.first()?;
    Some(dbqs_common::codec::sha256(&[leaf.as_ref()]))
}

/// A connection holding its slot (none for members) until it is dropped.
pub struct Limited<S> {
    inner: S,
    _slot: Option<ConnSlot>,
}

impl<S> Limited<S> {
    pub fn new(inner: S, slot: Option<ConnSlot>) -> Limited<S> {
        Limited { inner, _slot: slot }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Limited<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Limited<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Requests see the wrapped connection's TLS information (`Request::peer_certs`).
impl<S: Connected> Connected for Limited<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_holds_at_most_its_limit_and_a_closed_connection_frees_its_slot() {
        let limits = ConnLimits::new(2);
        let (a, b) = ([1; 32], [2; 32]);
        let a1 = limits.take(a).unwrap();
        let _a2 = limits.take(a).unwrap();
        assert!(
            limits.take(a).is_none(),
            "a third connection of a is refused"
        );
        // Another identity is not affected.
        let _b1 = limits.take(b).unwrap();
        assert_eq!((limits.open(&a), limits.open(&b)), (2, 1));
        drop(a1);
        assert_eq!(limits.open(&a), 1);
        let _a3 = limits.take(a).expect("a closed connection frees its slot");
        assert!(limits.take(a).is_none());
    }

    #[test]
    fn identities_without_connections_are_forgotten() {
        let limits = ConnLimits::new(4);
        for i in 0..1_000u32 {
            let mut id = [0; 32];
            id[..4].copy_from_slice(&i.to_be_bytes());
            drop(limits.take(id).unwrap());
        }
        assert!(
            limits.lock().is_empty(),
            "the map holds only open connections"
        );
    }
}
