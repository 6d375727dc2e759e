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
use dbqs_common::KeyPair;
use dbqs_common::certs::{AddCert, RemoveCert, RevokeClientCert};
use dbqs_common::config::Params;
use dbqs_common::genesis::{self, Genesis, NodeSpec};
use dbqs_common::{ActiveConfig, NodeId};
use dbqs_proto::v1 as pb;
use dbqs_server::byzantine::Behaviour;
use dbqs_server::ms_host::MsBehaviour;
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
    ms_behaviours: Vec<MsBehaviour>,
}

/// Parameters of test clusters: short epochs and leases so membership changes show
/// within seconds (an epoch still ends only when the MS says so).
pub fn test_params(f: u32) -> Params {
    Params {
        f,
        epoch_length_ms: 3_000,
        lease_ms: 4_000,
        evict_after_ms: 3_000,
        ..Params::default()
    }
}

/// Ports test nodes listen on: below Linux's ephemeral range (32768–60999 by default),
/// so that a port a crashed node frees is not handed out as the local port of some
/// outgoing connection, or to another test's `bind(0)`, before the node restarts on it
/// (both were seen: "cannot rebind" while parallel tests ran).
const NODE_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A listener on a free port from [`NODE_PORTS`] (at most 500 tries, then any port).
fn node_listener() -> TcpListener {
    use rand::Rng as _;
    let mut rng = rand::thread_rng();
    for _ in 0..500 {
        let port = rng.gen_range(NODE_PORTS);
        if let Ok(l) = TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
            return l;
        }
    }
    TcpListener::bind("127.0.0.1:0").expect("bind")
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
        let params = Params {
            f,
            lease_ms: 4_000,
            ..Params::default()
        };
        Self::start_full(n, params, byz, |_| HashMap::new()).await
    }

    /// `n` honest nodes and an honest MS with `params`.
    pub async fn start_honest(n: usize, params: Params) -> Cluster {
        Self::start_full(n, params, |_| HashMap::new(), |_| HashMap::new()).await
    }

    /// A TLS certificate the cluster CA issues to a node that is not in genesis (one
    /// the authority is about to admit), for the loopback address.
    pub fn issue_node_tls(&self, key: &KeyPair) -> dbqs_common::tls::IssuedCert {
        self.genesis
            .ca
            .issue_node(&key.node_id(), &[], &[IpAddr::V4(Ipv4Addr::LOCALHOST)])
            .expect("issue a node certificate")
    }

    /// Starts a cluster with `params`; `byz` picks Byzantine storage nodes and
    /// `ms_byz` Byzantine MS members once the configuration is known.
    pub async fn start_full(
        n: usize,
        params: Params,
        byz: impl FnOnce(&ActiveConfig) -> HashMap<NodeId, Behaviour>,
        ms_byz: impl FnOnce(&ActiveConfig) -> HashMap<NodeId, MsBehaviour>,
    ) -> Cluster {
        init();
        let listeners: Vec<TcpListener> = (0..n).map(|_| node_listener()).collect();
        let addrs: Vec<_> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
        let specs: Vec<NodeSpec> = addrs
            .iter()
            .map(|a| NodeSpec {
                address: a.to_string(),
                ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            })
            .collect();
        let genesis = genesis::create(&specs, params).expect("genesis");
        let config =
            ActiveConfig::verify(genesis.cert.clone(), &genesis.ms_public_key).expect("verify");
        let byz = byz(&config);
        let behaviours: Vec<Behaviour> = genesis
            .nodes
            .iter()
            .map(|m| byz.get(&m.node_id()).copied().unwrap_or_default())
            .collect();
        let ms_byz = ms_byz(&config);
        let ms_behaviours: Vec<MsBehaviour> = genesis
            .nodes
            .iter()
            .map(|m| ms_byz.get(&m.node_id()).copied().unwrap_or_default())
            .collect();
        let mut c = Cluster {
            genesis,
            config,
            dir: tempfile::tempdir().expect("tempdir"),
            addrs,
            nodes: Vec::new(),
            behaviours,
            ms_behaviours,
        };
        for (i, l) in listeners.into_iter().enumerate() {
            let p = c.params(i, l);
            c.nodes
                .push(Some(node::start(p).await.expect("start node")));
        }
        c.wait_serving(Duration::from_secs(20)).await;
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
            status_tls: false,
            behaviour: self.behaviours[i],
            ms_share: m.ms_share.clone(),
            ms_share_path: None,
            x25519_secret: m.x25519_secret,
            genesis_adds: self
                .genesis
                .nodes
                .iter()
                .map(|n| n.add_cert.clone())
                .collect(),
            ms_behaviour: self.ms_behaviours[i],
            join: false,
            add_cert: Some(m.add_cert.clone()),
        }
    }

    /// The running node `i`, if it is up.
    pub fn node(&self, i: usize) -> Option<&RunningNode> {
        self.nodes[i].as_ref()
    }

    /// Waits until every running node serves with a lease (the MS answered them all),
    /// at most `within`. Panics with the nodes still waiting.
    pub async fn wait_serving(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let waiting: Vec<usize> = self
                .nodes
                .iter()
                .enumerate()
                .filter_map(|(i, n)| n.as_ref().map(|n| (i, n)))
                .filter(|(_, n)| n.core.lease.check(n.core.configs.epoch()).is_err())
                .map(|(i, _)| i)
                .collect();
            if waiting.is_empty() {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("nodes {waiting:?} hold no lease after {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
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
    pub async fn crash(&mut self, i: usize) {
        if let Some(n) = self.nodes[i].take() {
            n.crash().await;
        }
    }

    /// Crashes the node with this id.
    pub async fn crash_id(&mut self, id: &NodeId) {
        let i = self.index_of(id);
        self.crash(i).await;
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

    /// What node `i` restarts with, listening on its address again; the caller starts it
    /// (`node::start`, for instance in a task while other nodes come back) and hands the
    /// running node back with [`Cluster::put_back`].
    pub async fn restart_params(&self, i: usize) -> NodeParams {
        assert!(self.nodes[i].is_none(), "node {i} is running");
        for _ in 0..100 {
            if let Ok(l) = TcpListener::bind(self.addrs[i]) {
                return self.params(i, l);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("cannot rebind {}", self.addrs[i]);
    }

    /// Takes back node `i`, started from [`Cluster::restart_params`].
    pub fn put_back(&mut self, i: usize, n: RunningNode) {
        assert!(self.nodes[i].is_none(), "node {i} is running");
        self.nodes[i] = Some(n);
    }

    /// Starts a node that is not in genesis (its AddCert went through the MS) from
    /// `cert`, a configuration that includes it. Returns its running handle.
    pub async fn start_joined(
        &self,
        key: dbqs_common::KeyPair,
        tls: &dbqs_common::tls::IssuedCert,
        listener: TcpListener,
        cert: dbqs_common::ConfigCert,
        name: &str,
    ) -> RunningNode {
        let p = NodeParams {
            key,
            tls_cert_pem: tls.cert_pem.clone(),
            tls_key_pem: tls.key_pem.clone(),
            ca_pem: self.genesis.ca.cert_pem.clone(),
            ms_key: self.genesis.ms_public_key,
            config_cert: cert,
            data_dir: self.dir.path().join(name),
            listener,
            status_listener: None,
            status_tls: false,
            behaviour: Behaviour::Honest,
            ms_share: None,
            ms_share_path: None,
            // Joined test nodes register placeholder x25519 keys: if drawn into a new MS
            // they count against its f'_ms, like a faulty member.
            x25519_secret: [0; 32],
            genesis_adds: Vec::new(),
            ms_behaviour: MsBehaviour::Honest,
            join: true,
            add_cert: None,
        };
        node::start(p).await.expect("start joined node")
    }

    /// The newest epoch every running node has adopted.
    pub fn min_epoch(&self) -> u64 {
        self.nodes
            .iter()
            .flatten()
            .map(|n| n.core.configs.epoch())
            .min()
            .unwrap_or(0)
    }

    /// Waits until every running node reached `epoch`, at most `within`.
    pub async fn wait_epoch(&self, epoch: u64, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.min_epoch() < epoch {
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "nodes did not reach epoch {epoch} within {within:?} (slowest at {})",
                    self.min_epoch()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn stop_all(&mut self) {
        for n in self.nodes.iter_mut() {
            if let Some(n) = n.take() {
                n.stop().await;
            }
        }
    }
}

/// A not-after far beyond any test run (2100-01-01).
const FAR_FUTURE_MS: u64 = 4_102_444_800_000;

/// Parameters for tests that end every epoch themselves: long epochs, one change ends
/// one ([`Admin::end_epoch`]), nodes never evicted; the test knows which epoch every
/// write lands in.
pub fn one_change_per_epoch(f: u32) -> Params {
    Params {
        f,
        epoch_length_ms: 600_000,
        lease_ms: 4_000,
        max_changes_per_epoch: 1,
        evict_after_ms: u64::MAX,
        ..Params::default()
    }
}

/// The authority, submitting certificates to whichever MS member answers.
pub struct Admin {
    pub client: Client,
    authority: KeyPair,
    serial: u64,
}

impl Admin {
    pub fn new(c: &Cluster) -> Admin {
        Admin {
            client: c.client(Duration::from_secs(10)),
            authority: c.genesis.authority.clone(),
            serial: 9_000,
        }
    }

    /// Submits a certificate to the MS (any member that answers); returns the epoch it
    /// was ordered in (it takes effect in the next).
    pub async fn submit(&mut self, cert: pb::submit_request::Cert) -> u64 {
        let cfg = self.client.config();
        let mut last = None;
        for _ in 0..50 {
            for m in &cfg.config.ms_members {
                let Ok(mut stub) = self.client.membership(*m) else {
                    continue;
                };
                match stub
                    .submit(pb::SubmitRequest {
                        cert: Some(cert.clone()),
                    })
                    .await
                {
                    Ok(r) => return r.into_inner().epoch,
                    Err(e) => last = Some(e),
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("no MS member took the certificate: {last:?}");
    }

    pub fn next_serial(&mut self) -> u64 {
        self.serial += 1;
        self.serial
    }

    /// Admits a node (AddCert with a placeholder x25519 key); returns the epoch that
    /// lists it.
    pub async fn add(&mut self, key: &KeyPair, tls_cert_hash: [u8; 32], address: String) -> u64 {
        let serial = self.next_serial();
        let add = AddCert::issue(
            &self.authority,
            key.public(),
            tls_cert_hash,
            [3; 32],
            address,
            serial,
            FAR_FUTURE_MS,
        );
        self.submit(pb::submit_request::Cert::Add(add.encode()))
            .await
            + 1
    }

    pub async fn remove(&mut self, id: NodeId) -> u64 {
        let serial = self.next_serial();
        let rm = RemoveCert::issue(&self.authority, id, serial);
        self.submit(pb::submit_request::Cert::Remove(rm.encode()))
            .await
            + 1
    }

    /// Ends the epoch with a change nobody notices: revoking a client certificate that
    /// was never issued.
    pub async fn end_epoch(&mut self) -> u64 {
        let serial = self.next_serial();
        let rv = RevokeClientCert::issue(
            &self.authority,
            KeyPair::generate().public(),
            rand::random(),
            serial,
        );
        self.submit(pb::submit_request::Cert::RevokeClient(rv.encode()))
            .await
            + 1
    }
}
