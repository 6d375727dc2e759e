//! The cluster's TLS certificate authority (held by the authority) and the
//! certificates it issues. Leaf keys are ECDSA P-256 (see STACK-NOTES.md: other
//! languages' gRPC stacks reject Ed25519 TLS leaves).
//!
//! A node's certificate names its NodeId ([`NodeId::tls_name`]); its SHA-256 is
//! recorded in the configuration, which is how a server maps a TLS peer to a
//! NodeId. A client certificate names `<hex of its SHA-256 prefix>.client.dbqs`.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair as TlsKeyPair, KeyUsagePurpose, SanType,
};
use thiserror::Error;

use crate::codec::sha256;
use crate::identity::NodeId;

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("TLS setup: {0}")]
    Setup(String),
}

/// The client side of every gRPC connection dBQS makes (clients to nodes, nodes to
/// nodes): TLS 1.3 only, the cluster CA (`ca_pem`) as the only root, this party's
/// certificate and key for mutual TLS, and ALPN `h2`. A server offering only TLS 1.2 is
/// refused during the handshake.
pub fn grpc_client_config_tls13(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<rustls::ClientConfig, TlsError> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &str, e: &dyn std::fmt::Display| TlsError::Setup(format!("{what}: {e}"));
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let ca = ca.map_err(|e| bad("the CA certificate is not PEM", &e))?;
        roots
            .add(ca)
            .map_err(|e| bad("the CA certificate is not usable", &e))?;
    }
    if roots.is_empty() {
        return Err(TlsError::Setup("no CA certificate in the CA file".into()));
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| bad("the TLS certificate is not PEM", &e))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| bad("the TLS key is not PEM", &e))?;
    // The process's crypto provider (ring: the only one compiled in; STACK-NOTES.md).
    let mut cfg = rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| bad("the TLS certificate and key do not match", &e))?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

/// A certificate and its private key, both PEM.
#[derive(Clone, Debug)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: Vec<u8>,
}

impl IssuedCert {
    /// SHA-256 of the DER certificate: the value configurations record.
    pub fn hash(&self) -> [u8; 32] {
        sha256(&[&self.cert_der])
    }
}

fn ca_params() -> Result<CertificateParams, TlsError> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "dbqs cluster CA");
    p.distinguished_name = dn;
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2100, 1, 1);
    Ok(p)
}

/// The cluster CA: creates it, or loads its key to issue more certificates.
pub struct ClusterCa {
    key: TlsKeyPair,
    pub cert_pem: String,
}

impl ClusterCa {
    pub fn generate() -> Result<ClusterCa, TlsError> {
        let key = TlsKeyPair::generate()?;
        let cert = ca_params()?.self_signed(&key)?;
        Ok(ClusterCa {
            key,
            cert_pem: cert.pem(),
        })
    }

    /// Loads the CA from its key and certificate PEM (the issuer name and key
    /// identifier are recomputed from the same parameters, so they match).
    pub fn load(key_pem: &str, cert_pem: &str) -> Result<ClusterCa, TlsError> {
        Ok(ClusterCa {
            key: TlsKeyPair::from_pem(key_pem)?,
            cert_pem: cert_pem.to_string(),
        })
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    fn issue(
        &self,
        names: Vec<String>,
        ips: &[std::net::IpAddr],
        client: bool,
    ) -> Result<IssuedCert, TlsError> {
        let key = TlsKeyPair::generate()?;
        let mut p = CertificateParams::new(names.clone())?;
        for ip in ips {
            p.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        p.distinguished_name = dn;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = if client {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        } else {
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ]
        };
        p.not_before = rcgen::date_time_ymd(2024, 1, 1);
        p.not_after = rcgen::date_time_ymd(2100, 1, 1);
        let issuer = Issuer::new(ca_params()?, &self.key);
        let cert = p.signed_by(&key, &issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
        })
    }

    /// A node certificate (server and client auth) naming the node, plus
    /// `localhost`, the host names and IP addresses it is reached at (so clients
    /// in other languages can bootstrap with ordinary host name checks).
    pub fn issue_node(
        &self,
        node: &NodeId,
        hosts: &[String],
        ips: &[std::net::IpAddr],
    ) -> Result<IssuedCert, TlsError> {
        let mut names = vec![node.tls_name(), "localhost".to_string()];
        names.extend(hosts.iter().filter(|h| *h != "localhost").cloned());
        self.issue(names, ips, false)
    }

    /// A client certificate.
    pub fn issue_client(&self, label: &str) -> Result<IssuedCert, TlsError> {
        self.issue(vec![format!("{label}.client.dbqs")], &[], true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_differ_and_reload_keeps_issuing() {
        let ca = ClusterCa::generate().unwrap();
        let a = ca.issue_node(&NodeId([1; 32]), &[], &[]).unwrap();
        let b = ca.issue_client("c1").unwrap();
        assert_ne!(a.hash(), b.hash());
        let again = ClusterCa::load(&ca.key_pem(), &ca.cert_pem).unwrap();
        let c = again.issue_client("c2").unwrap();
        assert!(c.cert_pem.contains("BEGIN CERTIFICATE"));
    }
}
