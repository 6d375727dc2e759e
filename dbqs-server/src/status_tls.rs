//! TLS accepting for the node's ports, TLS 1.3 only: the gRPC port (mutual TLS: the
//! client must present a certificate of the cluster CA; the services then map it to a
//! member or a client) and the read-only status port (`status_tls = true` in
//! `node.toml`; no client certificate asked). tonic's own TLS setting cannot restrict
//! the protocol version, so the node accepts TLS itself and hands tonic the finished
//! streams (tonic still reads the peer certificates from them). Handshakes run in their
//! own tasks, bounded in number and time, so a slow or silent client cannot hold up
//! the others.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// Most handshakes in progress at once; further connections wait in the kernel backlog.
pub const MAX_HANDSHAKES: usize = 64;
/// A handshake that takes longer is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

fn certs_and_key(
    cert_pem: &str,
    key_pem: &str,
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .context("TLS: the node's certificate is not PEM")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .context("TLS: the node's TLS key is not PEM")?;
    Ok((certs, key))
}

/// The status port's TLS server configuration from the node's certificate and key (PEM).
pub fn server_config(cert_pem: &str, key_pem: &str) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let (certs, key) = certs_and_key(cert_pem, key_pem)?;
    let mut cfg = rustls::ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("status TLS: certificate and key do not match")?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The gRPC port's TLS server configuration: TLS 1.3, HTTP/2, and a client certificate
/// issued by the cluster CA (`ca_pem`) required.
pub fn grpc_server_config(
    cert_pem: &str,
    key_pem: &str,
    ca_pem: &str,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let (certs, key) = certs_and_key(cert_pem, key_pem)?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(ca.context("TLS: the CA certificate is not PEM")?)
            .context("TLS: the CA certificate is not usable")?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .context("TLS: client verifier")?;
    let mut cfg = rustls::ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .context("TLS: certificate and key do not match")?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// Accepts TCP connections on `tcp` and completes their TLS handshakes with `cfg`;
/// the finished streams come out of the returned channel. Stops when the receiver is
/// dropped.
pub fn accept(
    tcp: TcpListener,
    cfg: Arc<rustls::ServerConfig>,
    nodelay: bool,
) -> mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)> {
    let (tx, ready) = mpsc::channel(MAX_HANDSHAKES);
    let acceptor = TlsAcceptor::from(cfg);
    let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let (stream, peer) = match tcp.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if tx.is_closed() {
                return;
            }
            if nodelay {
                let _ = stream.set_nodelay(true);
            }
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send((tls, peer)).await;
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed")
                    }
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ready
}

/// An `axum::serve` listener that yields TLS streams whose handshake completed.
pub struct TlsListener {
    local: io::Result<SocketAddr>,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, cfg: Arc<rustls::ServerConfig>) -> TlsListener {
        let local = tcp.local_addr();
        TlsListener {
            local,
            ready: accept(tcp, cfg, false),
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accept task only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        match &self.local {
            Ok(a) => Ok(*a),
            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dbqs_common::tls::ClusterCa;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn client_config(
        ca_pem: &str,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        Arc::new(
            rustls::ClientConfig::builder_with_protocol_versions(versions)
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }

    async fn get(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> io::Result<String> {
        let tcp = TcpStream::connect(addr).await?;
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(name, tcp)
            .await?;
        tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await?;
        let mut out = String::new();
        tls.read_to_string(&mut out).await?;
        Ok(out)
    }

    #[tokio::test]
    async fn the_status_port_speaks_tls13_with_the_node_certificate_only() {
        crate::install_crypto();
        let ca = ClusterCa::generate().unwrap();
        let node = dbqs_common::KeyPair::generate().node_id();
        let cert = ca.issue_node(&node, &[], &[]).unwrap();
        let cfg = server_config(&cert.cert_pem, &cert.key_pem).unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let l = TlsListener::new(tcp, cfg);
        let addr = axum::serve::Listener::local_addr(&l).unwrap();
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "status ok" }));
        tokio::spawn(async move { axum::serve(l, app).await });

        // A silent connection holds no one up: the handshake runs in its own task.
        let _silent = TcpStream::connect(addr).await.unwrap();
        let reply = get(
            addr,
            client_config(&ca.cert_pem, &[&rustls::version::TLS13]),
        )
        .await
        .unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(reply.ends_with("status ok"), "{reply}");

        // TLS 1.2 is refused.
        assert!(
            get(
                addr,
                client_config(&ca.cert_pem, &[&rustls::version::TLS12])
            )
            .await
            .is_err()
        );
        // A client that does not trust the cluster CA refuses the certificate.
        let other = ClusterCa::generate().unwrap();
        assert!(
            get(
                addr,
                client_config(&other.cert_pem, &[&rustls::version::TLS13])
            )
            .await
            .is_err()
        );
        // Garbage for a certificate is a clear error, not a panic.
        assert!(server_config("not pem", &cert.key_pem).is_err());
    }

    fn mutual_client(
        ca_pem: &str,
        client: Option<&dbqs_common::tls::IssuedCert>,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let b = rustls::ClientConfig::builder_with_protocol_versions(versions)
            .with_root_certificates(roots);
        let mut cfg = match client {
            None => b.with_no_client_auth(),
            Some(c) => {
                let (certs, key) = certs_and_key(&c.cert_pem, &c.key_pem).unwrap();
                b.with_client_auth_cert(certs, key).unwrap()
            }
        };
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(cfg)
    }

    /// Completes a handshake and waits for the server's first bytes (its HTTP/2
    /// settings): a server that refuses the client certificate closes instead.
    async fn handshake(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> io::Result<()> {
        let tcp = TcpStream::connect(addr).await?;
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(name, tcp)
            .await?;
        tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
        let mut b = [0u8; 9];
        tls.read_exact(&mut b).await?;
        Ok(())
    }

    #[tokio::test]
    async fn the_grpc_port_takes_tls13_with_a_cluster_client_certificate_only() {
        crate::install_crypto();
        let ca = ClusterCa::generate().unwrap();
        let node = dbqs_common::KeyPair::generate().node_id();
        let cert = ca.issue_node(&node, &[], &[]).unwrap();
        let client = ca.issue_client("tester").unwrap();
        let cfg = grpc_server_config(&cert.cert_pem, &cert.key_pem, &ca.cert_pem).unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let mut ready = accept(tcp, cfg, true);
        // Accepted streams are answered with a few bytes, as an HTTP/2 server would.
        tokio::spawn(async move {
            while let Some((mut s, _)) = ready.recv().await {
                tokio::spawn(async move {
                    let mut b = [0u8; 24];
                    if s.read_exact(&mut b).await.is_ok() {
                        let _ = s.write_all(&[0u8; 9]).await;
                    }
                });
            }
        });
        let v13: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
        let v12: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
        handshake(addr, mutual_client(&ca.cert_pem, Some(&client), v13))
            .await
            .expect("TLS 1.3 with a cluster client certificate");
        assert!(
            handshake(addr, mutual_client(&ca.cert_pem, Some(&client), v12))
                .await
                .is_err(),
            "TLS 1.2 must be refused"
        );
        assert!(
            handshake(addr, mutual_client(&ca.cert_pem, None, v13))
                .await
                .is_err(),
            "a client without a certificate must be refused"
        );
        let other = ClusterCa::generate().unwrap();
        let stranger = other.issue_client("stranger").unwrap();
        assert!(
            handshake(addr, mutual_client(&ca.cert_pem, Some(&stranger), v13))
                .await
                .is_err(),
            "a certificate from another CA must be refused"
        );
    }
}
