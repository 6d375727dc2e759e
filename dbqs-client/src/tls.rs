//! TLS 1.3-only gRPC channels.
//!
//! tonic's own client TLS offers TLS 1.2 as well, and cannot be told otherwise. Every
//! channel dBQS opens to a node (clients, and nodes to other nodes) therefore does its
//! own handshake with a rustls configuration restricted to TLS 1.3
//! ([`dbqs_common::tls::grpc_client_config_tls13`]) and hands tonic the finished stream;
//! tonic sees a plain-text `http://` endpoint and speaks HTTP/2 over it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::codegen::Service;
use tonic::codegen::http::Uri;
use tonic::transport::{Channel, Endpoint};

/// Connects TCP to the endpoint's host and port, then completes a TLS 1.3 handshake that
/// checks the server's certificate names `name`.
#[derive(Clone)]
pub struct Tls13Connector {
    tls: TlsConnector,
    name: ServerName<'static>,
}

impl Tls13Connector {
    /// `name` is the name the server's certificate must carry (a node's
    /// [`dbqs_common::identity::NodeId::tls_name`]).
    pub fn new(cfg: Arc<rustls::ClientConfig>, name: &str) -> Result<Tls13Connector, String> {
        let name = ServerName::try_from(name.to_string())
            .map_err(|e| format!("TLS server name {name:?}: {e}"))?;
        Ok(Tls13Connector {
            tls: TlsConnector::from(cfg),
            name,
        })
    }
}

type Connecting =
    Pin<Box<dyn Future<Output = std::io::Result<TokioIo<TlsStream<TcpStream>>>> + Send>>;

impl Service<Uri> for Tls13Connector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = self.tls.clone();
        let name = self.name.clone();
        Box::pin(async move {
            let bad = || {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("no host and port in {uri}"),
                )
            };
            let host = uri.host().ok_or_else(bad)?;
            let port = uri.port_u16().ok_or_else(bad)?;
            // An IPv6 literal comes bracketed in a URI.
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let tcp = TcpStream::connect((host, port)).await?;
            tcp.set_nodelay(true)?;
            let stream = tls.connect(name, tcp).await?;
            Ok(TokioIo::new(stream))
        })
    }
}

/// A lazily connected TLS 1.3 channel to `address` (`host:port`) whose server must hold a
/// certificate for `tls_name`. `configure` sets the endpoint's timeouts and keep-alive;
/// its `connect_timeout` bounds the TCP connect and the handshake together.
pub fn channel(
    address: &str,
    tls_name: &str,
    cfg: Arc<rustls::ClientConfig>,
    configure: impl FnOnce(Endpoint) -> Endpoint,
) -> Result<Channel, String> {
    let connector = Tls13Connector::new(cfg, tls_name)?;
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| format!("bad address {address}: {e}"))?;
    Ok(configure(endpoint).connect_with_connector_lazy(connector))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dbqs_common::KeyPair;
    use dbqs_common::tls::ClusterCa;
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    /// A server on loopback that speaks only `version`, with a node certificate of `ca`;
    /// returns its address and the name its certificate carries. It accepts one connection.
    async fn server(
        ca: &ClusterCa,
        version: &'static rustls::SupportedProtocolVersion,
    ) -> (String, String) {
        let node = KeyPair::generate().node_id();
        let leaf = ca.issue_node(&node, &[], &[]).unwrap();
        let certs = CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            if let Ok((tcp, _)) = listener.accept().await {
                // The handshake's outcome is what the client sees; keep the stream open
                // until the client is done with it.
                if let Ok(s) = acceptor.accept(tcp).await {
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    drop(s);
                }
            }
        });
        (addr, node.tls_name())
    }

    async fn connect(ca: &ClusterCa, addr: &str, name: &str) -> std::io::Result<()> {
        let client = ca.issue_client("tls-test").unwrap();
        let cfg = dbqs_common::tls::grpc_client_config_tls13(
            &ca.cert_pem,
            &client.cert_pem,
            &client.key_pem,
        )
        .unwrap();
        let mut c = Tls13Connector::new(Arc::new(cfg), name).unwrap();
        let uri: Uri = format!("http://{addr}").parse().unwrap();
        let io = c.call(uri).await?;
        let (_, session) = io.inner().get_ref();
        assert_eq!(
            session.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        Ok(())
    }

    #[tokio::test]
    async fn the_client_completes_tls_1_3_and_refuses_a_server_that_offers_only_tls_1_2() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = ClusterCa::generate().unwrap();
        let (addr, name) = server(&ca, &rustls::version::TLS13).await;
        connect(&ca, &addr, &name).await.unwrap();

        let (addr, name) = server(&ca, &rustls::version::TLS12).await;
        let err = connect(&ca, &addr, &name).await.unwrap_err();
        assert!(
            err.to_string().to_lowercase().contains("protocol")
                || err.to_string().to_lowercase().contains("version"),
            "unexpected error: {err}"
        );
    }

    #[tokio::test]
    async fn a_server_certificate_for_another_name_is_refused() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = ClusterCa::generate().unwrap();
        let (addr, _) = server(&ca, &rustls::version::TLS13).await;
        let other = KeyPair::generate().node_id().tls_name();
        let err = connect(&ca, &addr, &other).await.unwrap_err();
        assert!(
            err.to_string().contains("certificate"),
            "unexpected error: {err}"
        );
    }

    #[test]
    fn unusable_pem_files_are_named_in_the_error() {
        let ca = ClusterCa::generate().unwrap();
        let client = ca.issue_client("tls-test").unwrap();
        let e = dbqs_common::tls::grpc_client_config_tls13(
            "not pem",
            &client.cert_pem,
            &client.key_pem,
        )
        .unwrap_err();
        assert!(e.to_string().contains("CA"), "{e}");
        let e = dbqs_common::tls::grpc_client_config_tls13(&ca.cert_pem, &client.cert_pem, "junk")
            .unwrap_err();
        assert!(e.to_string().contains("TLS key"), "{e}");
    }
}
