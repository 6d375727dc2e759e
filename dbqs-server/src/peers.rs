//! Outgoing connections of a node to other members (probes, configuration pushes,
//! freshness requests, signature shares): one lazily connected TLS channel per member,
//! presenting the node's own certificate, TLS 1.3 only, reused across calls.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dbqs_common::NodeId;
use dbqs_common::config::Member;
use dbqs_proto::v1::membership_client::MembershipClient;
use dbqs_proto::v1::storage_client::StorageClient;
use tonic::transport::Channel;

use crate::byzantine::Partition;

/// Most cached channels; beyond it the cache is cleared (members come back lazily).
pub const MAX_CHANNELS: usize = 4096;
/// Largest reply accepted on these channels (a configuration push or GetConfig reply).
pub const MAX_PEER_MESSAGE_BYTES: usize = 64 << 20;

pub struct PeerChannels {
    /// TLS 1.3 client configuration, or why the node's PEM files are unusable.
    tls: Result<Arc<rustls::ClientConfig>, String>,
    timeout: Duration,
    channels: Mutex<HashMap<NodeId, (String, Channel)>>,
    /// Members this node cannot reach (tests only; empty otherwise).
    partition: Partition,
}

impl PeerChannels {
    pub fn new(ca_pem: &str, cert_pem: &str, key_pem: &str, timeout: Duration) -> PeerChannels {
        PeerChannels {
            tls: dbqs_common::tls::grpc_client_config_tls13(ca_pem, cert_pem, key_pem)
                .map(Arc::new)
                .map_err(|e| e.to_string()),
            timeout,
            channels: Mutex::new(HashMap::new()),
            partition: Partition::default(),
        }
    }

    /// The test-only partition: calls to the members it cuts fail at once.
    pub fn partition(&self) -> &Partition {
        &self.partition
    }

    fn channel(&self, m: &Member) -> Result<Channel, tonic::Status> {
        let id = m.node_id();
        if self.partition.blocks(&id) {
            return Err(Partition::refusal(&id));
        }
        let mut map = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((addr, ch)) = map.get(&id)
            && *addr == m.address
        {
            return Ok(ch.clone());
        }
        if map.len() >= MAX_CHANNELS {
            map.clear();
        }
        let tls = self.tls.clone().map_err(tonic::Status::internal)?;
        let timeout = self.timeout;
        let ch = dbqs_client::tls::channel(&m.address, &id.tls_name(), tls, |e| {
            e.connect_timeout(timeout)
                .timeout(timeout)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(10))
        })
        .map_err(tonic::Status::invalid_argument)?;
        map.insert(id, (m.address.clone(), ch.clone()));
        Ok(ch)
    }

    pub fn storage(&self, m: &Member) -> Result<StorageClient<Channel>, tonic::Status> {
        Ok(StorageClient::new(self.channel(m)?)
            .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES))
    }

    pub fn membership(&self, m: &Member) -> Result<MembershipClient<Channel>, tonic::Status> {
        Ok(MembershipClient::new(self.channel(m)?)
            .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES))
    }
}
