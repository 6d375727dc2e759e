//! A PBFT group on loopback, for integration tests and the benchmark: a fresh cluster CA,
//! ed25519 replica keys, node certificates naming each replica's `NodeId`, and listeners
//! bound to `127.0.0.1:0` before any replica starts (so every address is known up front).
//! Replicas run in this process with real gRPC, mutual TLS and redb files in `dir`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use dbqs_common::KeyPair;
use dbqs_common::tls::ClusterCa;
use ed25519_dalek::{SigningKey, VerifyingKey};

use super::{
    PbftClient, PbftClientConfig, PeerInfo, RunningReplica, RuntimeBounds, RuntimeConfig,
    RuntimeError, TlsMaterial,
};
use crate::pbft::{Application, Config, ReplicaId};

/// The material of a loopback group; replicas are started (and restarted) from it.
pub struct LocalGroup {
    dir: PathBuf,
    ca: ClusterCa,
    pub peers: Vec<PeerInfo>,
    pub signing_keys: Vec<SigningKey>,
    pub tls: Vec<TlsMaterial>,
    /// Listeners bound in `new`, handed to each replica's first start.
    listeners: Vec<Option<std::net::TcpListener>>,
}

impl LocalGroup {
    /// Creates the CA, keys and certificates of an `n`-replica group whose redb files live
    /// in `dir`, and binds one loopback listener per replica.
    pub fn new(n: usize, dir: &Path) -> Result<LocalGroup, RuntimeError> {
        let tls_err = |e: dbqs_common::tls::TlsError| RuntimeError::Config(e.to_string());
        let ca = ClusterCa::generate().map_err(tls_err)?;
        let loopback: std::net::IpAddr = [127, 0, 0, 1].into();
        let mut peers = Vec::with_capacity(n);
        let mut signing_keys = Vec::with_capacity(n);
        let mut tls = Vec::with_capacity(n);
        let mut listeners = Vec::with_capacity(n);
        for _ in 0..n {
            let kp = KeyPair::generate();
            let node = kp.node_id();
            let cert = ca.issue_node(&node, &[], &[loopback]).map_err(tls_err)?;
            let listener = std::net::TcpListener::bind((loopback, 0))?;
            peers.push(PeerInfo {
                address: listener.local_addr()?.to_string(),
                tls_name: node.tls_name(),
                cert_sha256: cert.hash(),
            });
            tls.push(TlsMaterial {
                ca_pem: ca.cert_pem.clone(),
                cert_pem: cert.cert_pem,
                key_pem: cert.key_pem,
            });
            signing_keys.push(SigningKey::from_bytes(&kp.seed()));
            listeners.push(Some(listener));
        }
        Ok(LocalGroup {
            dir: dir.to_path_buf(),
            ca,
            peers,
            signing_keys,
            tls,
            listeners,
        })
    }

    pub fn n(&self) -> usize {
        self.peers.len()
    }

    pub fn replica_keys(&self) -> Vec<VerifyingKey> {
        self.signing_keys
            .iter()
            .map(|k| k.verifying_key())
            .collect()
    }

    /// The redb file of replica `i`.
    pub fn data_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("pbft-replica-{i}.redb"))
    }

    /// Replica `i`'s runtime configuration with default engine settings and bounds.
    pub fn config(&self, i: usize) -> RuntimeConfig {
        RuntimeConfig {
            pbft: Config::new(
                self.replica_keys(),
                i as ReplicaId,
                self.signing_keys[i].clone(),
            ),
            peers: self.peers.clone(),
            tls: self.tls[i].clone(),
            data_path: self.data_path(i),
            bounds: RuntimeBounds::default(),
            database: None,
        }
    }

    /// Starts replica `cfg.pbft.me` on its address: on the listener bound in `new` the
    /// first time, on a fresh bind of the same address after a restart.
    pub async fn start<A: Application + Send + 'static>(
        &mut self,
        cfg: RuntimeConfig,
        app: A,
    ) -> Result<RunningReplica, RuntimeError> {
        let i = cfg.pbft.me as usize;
        let listener = match self.listeners.get_mut(i).and_then(Option::take) {
            Some(l) => {
                l.set_nonblocking(true)?;
                tokio::net::TcpListener::from_std(l)?
            }
            None => {
                let addr: SocketAddr = self.peers[i]
                    .address
                    .parse()
                    .map_err(|e| RuntimeError::Config(format!("address: {e}")))?;
                tokio::net::TcpListener::bind(addr).await?
            }
        };
        RunningReplica::start(cfg, app, listener).await
    }

    /// A client with a fresh certificate from the group's CA, signing with `key`.
    pub fn client(
        &self,
        label: &str,
        key: SigningKey,
        cfg: PbftClientConfig,
    ) -> Result<PbftClient, RuntimeError> {
        let tls = self.client_tls(label)?;
        PbftClient::new(&self.peers, self.replica_keys(), &tls, key, 1, cfg)
            .map_err(|e| RuntimeError::Transport(e.to_string()))
    }

    /// TLS material of a client certificate (not a replica's) from the group's CA.
    pub fn client_tls(&self, label: &str) -> Result<TlsMaterial, RuntimeError> {
        let cert = self
            .ca
            .issue_client(label)
            .map_err(|e| RuntimeError::Config(e.to_string()))?;
        Ok(TlsMaterial {
            ca_pem: self.ca.cert_pem.clone(),
            cert_pem: cert.cert_pem,
            key_pem: cert.key_pem,
        })
    }
}
