//! Cross-crate test support: an in-process cluster with fault injection (crash,
//! restart, Byzantine behaviours) on loopback with real TLS and redb, and the
//! linearizability checker ([`linearizability`]; also the `lincheck` binary for
//! recorded history files).

pub mod linearizability;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::time::Duration;

use dbqs_client::{Client, ClientIdentity};
use dbqs_common::config::Params;
use dbqs_common::genesis::{self, Genesis, NodeSpec};
use dbqs_common::{ActiveConfig, NodeId};
use dbqs_server::byzantine::Behaviour;
use dbqs_server::node::{self, NodeParams, RunningNode};

pub use dbqs_server::devnet::pick_spread;

/// Logs for tests: `RUST_LOG=debug cargo test` shows them.
pub fn init() {
    dbqs_server::install_crypto();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

pub struct Cluster {
    pub genesis: Genesis,
    pub config: ActiveConfig,
    pub dir: tempfile::TempDir,
    addrs: Vec<std::net::SocketAddr>,
    nodes: Vec<Option<RunningNode>>,
    behaviours: Vec<Behaviour>,
}

impl Cluster {
    /// `n` honest nodes with fault threshold `f`.
    pub async fn start(n: usize, f: u32) -> Cluster {
        Self::start_with(n, f, |_| HashMap::new()).await
    }

    /// Starts a cluster; `byz` picks Byzantine nodes once the configuration (and
    /// so the ring) is known.
    pub async fn start_with(
        n: usize,
        f: u32,
        byz: impl FnOnce(&ActiveConfig) -> HashMap<NodeId, Behaviour>,
    ) -> Cluster {
        init();
        let listeners: Vec<TcpListener> = (0..n)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
            .collect();
        let addrs: Vec<_> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
        let specs: Vec<NodeSpec> = addrs
            .iter()
            .map(|a| NodeSpec {
                address: a.to_string(),
                ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            })
            .collect();
        let genesis = genesis::create(
            &specs,
            Params {
                f,
                ..Params::default()
            },
        )
        .expect("genesis");
        let config =
            ActiveConfig::verify(genesis.cert.clone(), &genesis.ms_public_key).expect("verify");
        let byz = byz(&config);
        let behaviours: Vec<Behaviour> = genesis
            .nodes
            .iter()
            .map(|m| byz.get(&m.node_id()).copied().unwrap_or_default())
            .collect();
        let mut c = Cluster {
            genesis,
            config,
            dir: tempfile::tempdir().expect("tempdir"),
            addrs,
            nodes: Vec::new(),
            behaviours,
        };
        for (i, l) in listeners.into_iter().enumerate() {
            let p = c.params(i, l);
            c.nodes
                .push(Some(node::start(p).await.expect("start node")));
        }
        c
    }

    fn params(&self, i: usize, listener: TcpListener) -> NodeParams {
        let m = &self.genesis.nodes[i];
        NodeParams {
            key: m.key.clone(),
            tls_cert_pem: m.tls.cert_pem.clone(),
            tls_key_pem: m.tls.key_pem.clone(),
            ca_pem: self.genesis.ca.cert_pem.clone(),
            ms_key: self.genesis.ms_public_key,
            config_cert: self.genesis.cert.clone(),
            data_dir: self.data_dir(i),
            listener,
            status_listener: None,
            behaviour: self.behaviours[i],
        }
    }

    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("n{i:02}"))
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Index of a node in genesis order.
    pub fn index_of(&self, id: &NodeId) -> usize {
        self.genesis
            .nodes
            .iter()
            .position(|m| m.node_id() == *id)
            .expect("member")
    }

    pub fn behaviour(&self, id: &NodeId) -> Behaviour {
        self.behaviours[self.index_of(id)]
    }

    /// A client with the genesis client credentials and `timeout`.
    pub fn client(&self, timeout: Duration) -> Client {
        let g = &self.genesis;
        Client::with_identity(
            g.ms_public_key,
            self.config.clone(),
            ClientIdentity {
                ca_pem: g.ca.cert_pem.clone(),
                tls_cert_pem: g.client.tls.cert_pem.clone(),
                tls_key_pem: g.client.tls.key_pem.clone(),
            },
            Some(g.client.owner.clone()),
            timeout,
        )
    }

    /// A client with its own TLS certificate from the cluster CA, sharing the
    /// genesis owner key (so it writes the same objects). `parity` picks the low
    /// bit of its certificate hash's first byte, which is what equivocating
    /// replicas split clients by.
    pub fn client_with_parity(&self, parity: u8, timeout: Duration) -> Client {
        let g = &self.genesis;
        for i in 0..64 {
            let tls = g.ca.issue_client(&format!("extra{i}")).expect("issue");
            if tls.hash()[0] & 1 == parity {
                return Client::with_identity(
                    g.ms_public_key,
                    self.config.clone(),
                    ClientIdentity {
                        ca_pem: g.ca.cert_pem.clone(),
                        tls_cert_pem: tls.cert_pem,
                        tls_key_pem: tls.key_pem,
                    },
                    Some(g.client.owner.clone()),
                    timeout,
                );
            }
        }
        panic!("no certificate of parity {parity} in 64 tries");
    }

    /// Crashes node `i` (by genesis index): it stops at once.
    pub fn crash(&mut self, i: usize) {
        if let Some(n) = self.nodes[i].take() {
            n.crash();
        }
    }

    /// Crashes the node with this id.
    pub fn crash_id(&mut self, id: &NodeId) {
        let i = self.index_of(id);
        self.crash(i);
    }

    /// Restarts a crashed node on its address with its data directory.
    pub async fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].is_none(), "node {i} is running");
        let mut last = None;
        for _ in 0..100 {
            match TcpListener::bind(self.addrs[i]) {
                Ok(l) => {
                    let p = self.params(i, l);
                    self.nodes[i] = Some(node::start(p).await.expect("restart node"));
                    return;
                }
                Err(e) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        panic!("cannot rebind {}: {last:?}", self.addrs[i]);
    }

    pub async fn stop_all(&mut self) {
        for n in self.nodes.iter_mut() {
            if let Some(n) = n.take() {
                n.stop().await;
            }
        }
    }
}
