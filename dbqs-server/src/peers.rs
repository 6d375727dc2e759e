//! Outgoing connections of a node to other members (probes, configuration pushes,
//! freshness requests, signature shares): one lazily connected TLS channel per member,
//! presenting the node's own certificate, reused across calls.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use dbqs_common::NodeId;
use dbqs_common::config::Member;
use dbqs_proto::v1::membership_client::MembershipClient;
use dbqs_proto::v1::storage_client::StorageClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Most cached channels; beyond it the cache is cleared (members come back lazily).
pub const MAX_CHANNELS: usize = 4096;
/// Largest reply accepted on these channels (a configuration push or GetConfig reply).
pub const MAX_PEER_MESSAGE_BYTES: usize = 64 << 20;

pub struct PeerChannels {
    ca: Certificate,
    identity: Identity,
    timeout: Duration,
    channels: Mutex<HashMap<NodeId, (String, Channel)>>,
}

impl PeerChannels {
    pub fn new(ca_pem: &str, cert_pem: &str, key_pem: &str, timeout: Duration) -> PeerChannels {
        PeerChannels {
            ca: Certificate::from_pem(ca_pem),
            identity: Identity::from_pem(cert_pem, key_pem),
            timeout,
            channels: Mutex::new(HashMap::new()),
        }
    }

    fn channel(&self, m: &Member) -> Result<Channel, tonic::Status> {
        let id = m.node_id();
        let mut map = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((addr, ch)) = map.get(&id)
            && *addr == m.address
        {
            return Ok(ch.clone());
        }
        if map.len() >= MAX_CHANNELS {
            map.clear();
        }
        let tls = ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone())
            .domain_name(id.tls_name());
        let ch = Endpoint::from_shared(format!("https://{}", m.address))
            .map_err(|e| tonic::Status::invalid_argument(format!("address {}: {e}", m.address)))?
            .tls_config(tls)
            .map_err(|e| tonic::Status::internal(format!("tls: {e}")))?
            .connect_timeout(self.timeout)
            .timeout(self.timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(10))
            .connect_lazy();
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
