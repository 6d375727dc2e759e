//! gRPC over mutual TLS: the `Pbft` service (server side) and the per-peer senders.
//!
//! Server side: a `Deliver` caller is recognised by the SHA-256 of its TLS leaf certificate,
//! which must be one of the group's replicas other than this one; its messages go to that
//! replica's inbound queue, so the engine's `from` is the authenticated identity, never a
//! connection. A `Submit` caller needs any certificate of the cluster CA (TLS checks it).
//!
//! Client side: one reused tonic `Channel` per peer and one task per peer that keeps a
//! `Deliver` stream open and drains a bounded queue into it as batches, in order. When the
//! stream breaks, what was in flight is lost (PBFT retransmits) and the task reopens it
//! after a backoff bounded by `peer_backoff_max_ms`.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use dbqs_proto::v1::pbft_client::PbftClient as PbftGrpcClient;
use dbqs_proto::v1::pbft_server::{Pbft, PbftServer};
use dbqs_proto::v1::{PbftAck, PbftBatch, PbftClientReply, PbftClientRequest};
use sha2::{Digest as _, Sha256};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig,
};
use tonic::{Request, Response, Status, Streaming};

use super::actor::{ClientInput, SubmitError};
use super::{PeerInfo, RuntimeBounds, RuntimeCounters, RuntimeError, TlsMaterial};
use crate::pbft::{ClientId, Limits, ReplicaId, Reply, Request as PbftRequest, Signed};

/// The server half of the `Pbft` service.
pub struct PbftService {
    /// SHA-256 of a replica's TLS certificate → its id (this replica excluded).
    replicas_by_cert: HashMap<[u8; 32], ReplicaId>,
    inbound: Vec<mpsc::Sender<Vec<u8>>>,
    clients: mpsc::Sender<ClientInput>,
    counters: Arc<RuntimeCounters>,
    limits: Limits,
    submit_timeout_ms: u64,
}

impl PbftService {
    pub(crate) fn new(
        peers: &[PeerInfo],
        me: ReplicaId,
        inbound: Vec<mpsc::Sender<Vec<u8>>>,
        clients: mpsc::Sender<ClientInput>,
        counters: Arc<RuntimeCounters>,
        limits: Limits,
        submit_timeout_ms: u64,
    ) -> Self {
        let replicas_by_cert = peers
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != me as usize)
            .map(|(i, p)| (p.cert_sha256, i as ReplicaId))
            .collect();
        PbftService {
            replicas_by_cert,
            inbound,
            clients,
            counters,
            limits,
            submit_timeout_ms,
        }
    }

    /// The replica behind the TLS connection of `req`, by its certificate's hash.
    fn authenticate<T>(&self, req: &Request<T>) -> Result<ReplicaId, Status> {
        let leaf = req
            .peer_certs()
            .and_then(|certs| certs.first().map(|c| sha256(c.as_ref())));
        match leaf.and_then(|h| self.replicas_by_cert.get(&h)) {
            Some(id) => Ok(*id),
            None => {
                RuntimeCounters::add(&self.counters.unauthenticated, 1);
                Err(Status::unauthenticated(
                    "Deliver needs the TLS certificate of another replica of this group",
                ))
            }
        }
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

#[tonic::async_trait]
impl Pbft for PbftService {
    async fn deliver(
        &self,
        req: Request<Streaming<PbftBatch>>,
    ) -> Result<Response<PbftAck>, Status> {
        // Authenticated once per stream: the TLS connection cannot change identity.
        let from = self.authenticate(&req)?;
        let queue = &self.inbound[from as usize];
        let mut stream = req.into_inner();
        let (mut accepted, mut dropped) = (0u64, 0u64);
        loop {
            let batch = tokio::select! {
                m = stream.message() => m?,
                // The actor stopped: end the stream so the connection can close.
                _ = queue.closed() => return Err(Status::unavailable("replica stopped")),
            };
            let Some(batch) = batch else { break };
            let mut dropped_now = 0u64;
            for m in batch.messages {
                // Never wait here: a slow actor must not stall peers' streams. Loss is
                // tolerated and counted; the sender retransmits what matters.
                match queue.try_send(m) {
                    Ok(()) => accepted += 1,
                    Err(mpsc::error::TrySendError::Full(_)) => dropped_now += 1,
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        return Err(Status::unavailable("replica stopped"));
                    }
                }
            }
            if dropped_now > 0 {
                dropped += dropped_now;
                RuntimeCounters::add(&self.counters.inbound_dropped, dropped_now);
            }
        }
        Ok(Response::new(PbftAck { accepted, dropped }))
    }

    async fn submit(
        &self,
        req: Request<PbftClientRequest>,
    ) -> Result<Response<PbftClientReply>, Status> {
        let r = req.into_inner();
        let request = match request_from_proto(&r, &self.limits) {
            Ok(request) => request,
            Err(e) => {
                RuntimeCounters::add(&self.counters.client_rejected, 1);
                return Err(Status::invalid_argument(e));
            }
        };
        let (tx, rx) = oneshot::channel();
        let input = ClientInput {
            request,
            propose: r.propose,
            reply: tx,
        };
        match self.clients.try_send(input) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                RuntimeCounters::add(&self.counters.client_rejected, 1);
                return Err(Status::resource_exhausted("client queue full"));
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err(Status::unavailable("replica stopped"));
            }
        }
        let timeout = Duration::from_millis(self.submit_timeout_ms);
        match tokio::time::timeout(timeout, rx).await {
            Err(_) => Err(Status::deadline_exceeded("no reply in time")),
            Ok(Err(_)) => Err(Status::unavailable("replica stopped")),
            Ok(Ok(Err(SubmitError::TooManyWaiters))) => {
                Err(Status::resource_exhausted("too many requests waiting"))
            }
            Ok(Ok(Err(SubmitError::Superseded))) => Err(Status::aborted(
                "a newer Submit of the same request replaced this one",
            )),
            Ok(Ok(Ok(reply))) => Ok(Response::new(reply_to_proto(&reply))),
        }
    }
}

/// Checks the shape of a client request (sizes); the engine checks the signature.
pub(crate) fn request_from_proto(
    r: &PbftClientRequest,
    limits: &Limits,
) -> Result<PbftRequest, String> {
    let client: [u8; 32] = r
        .client
        .as_slice()
        .try_into()
        .map_err(|_| "client must be a 32-byte ed25519 public key".to_string())?;
    let sig: [u8; 64] = r
        .signature
        .as_slice()
        .try_into()
        .map_err(|_| "signature must be 64 bytes".to_string())?;
    if r.op.len() > limits.max_op_bytes {
        return Err(format!(
            "op is {} bytes, above the limit of {}",
            r.op.len(),
            limits.max_op_bytes
        ));
    }
    Ok(PbftRequest {
        client: ClientId(client),
        request_num: r.request_num,
        read_only: r.read_only,
        op: r.op.clone(),
        sig,
    })
}

pub(crate) fn request_to_proto(r: &PbftRequest, propose: bool) -> PbftClientRequest {
    PbftClientRequest {
        client: r.client.0.to_vec(),
        request_num: r.request_num,
        read_only: r.read_only,
        op: r.op.clone(),
        signature: r.sig.to_vec(),
        propose,
    }
}

pub(crate) fn reply_to_proto(r: &Signed<Reply>) -> PbftClientReply {
    PbftClientReply {
        view: r.body.view,
        client: r.body.client.0.to_vec(),
        request_num: r.body.request_num,
        read_only: r.body.read_only,
        result: r.body.result.clone(),
        replica: r.signer,
        signature: r.sig.to_vec(),
    }
}

/// Decodes a reply's fields; the caller verifies the signature (`ReplyCollector`).
pub(crate) fn reply_from_proto(r: &PbftClientReply, limits: &Limits) -> Option<Signed<Reply>> {
    if r.result.len() > limits.max_reply_bytes {
        return None;
    }
    Some(Signed {
        body: Reply {
            view: r.view,
            client: ClientId(r.client.as_slice().try_into().ok()?),
            request_num: r.request_num,
            read_only: r.read_only,
            result: r.result.clone(),
        },
        signer: r.replica,
        sig: r.signature.as_slice().try_into().ok()?,
    })
}

/// The server future: serves `service` on `listener` with mutual TLS until `stop` fires
/// (or is dropped).
pub(crate) fn serve(
    service: PbftService,
    tls: &TlsMaterial,
    bounds: &RuntimeBounds,
    max_message_bytes: usize,
    listener: tokio::net::TcpListener,
    stop: oneshot::Receiver<()>,
) -> Result<impl Future<Output = ()> + Send + 'static, RuntimeError> {
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem))
        .client_ca_root(Certificate::from_pem(&tls.ca_pem));
    let router = Server::builder()
        .tls_config(tls)
        .map_err(|e| RuntimeError::Transport(format!("server tls: {e}")))?
        .tcp_nodelay(true)
        .concurrency_limit_per_connection(bounds.max_requests_per_connection)
        .add_service(
            PbftServer::new(service)
                .max_decoding_message_size(max_message_bytes)
                .max_encoding_message_size(max_message_bytes),
        );
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    Ok(async move {
        if let Err(e) = router
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stop.await;
            })
            .await
        {
            tracing::error!(error = %e, "pbft server stopped with an error");
        }
    })
}

const KEEPALIVE_INTERVAL_MS: u64 = 2_000;
const KEEPALIVE_TIMEOUT_MS: u64 = 4_000;

/// A lazily connected client of `peer`, presenting this replica's certificate.
pub(crate) fn peer_client(
    peer: &PeerInfo,
    tls: &TlsMaterial,
    bounds: &RuntimeBounds,
    max_message_bytes: usize,
) -> Result<PbftGrpcClient<Channel>, RuntimeError> {
    let channel = tls_channel(
        &peer.address,
        &peer.tls_name,
        tls,
        bounds.connect_timeout_ms,
        None,
    )?;
    Ok(PbftGrpcClient::new(channel)
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes))
}

/// A lazily connected mutual-TLS channel to `address`, checking that the server's
/// certificate names `tls_name`.
pub(crate) fn tls_channel(
    address: &str,
    tls_name: &str,
    tls: &TlsMaterial,
    connect_timeout_ms: u64,
    call_timeout_ms: Option<u64>,
) -> Result<Channel, RuntimeError> {
    let cfg = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&tls.ca_pem))
        .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem))
        .domain_name(tls_name.to_string());
    let mut endpoint = Endpoint::from_shared(format!("https://{address}"))
        .map_err(|e| RuntimeError::Transport(format!("bad address {address}: {e}")))?
        .tls_config(cfg)
        .map_err(|e| RuntimeError::Transport(format!("client tls: {e}")))?
        .connect_timeout(Duration::from_millis(connect_timeout_ms))
        .tcp_nodelay(true)
        // Keep-alive pings notice a peer that vanished without closing the connection.
        .http2_keep_alive_interval(Duration::from_millis(KEEPALIVE_INTERVAL_MS))
        .keep_alive_timeout(Duration::from_millis(KEEPALIVE_TIMEOUT_MS))
        .keep_alive_while_idle(true);
    if let Some(t) = call_timeout_ms {
        endpoint = endpoint.timeout(Duration::from_millis(t));
    }
    Ok(endpoint.connect_lazy())
}

/// gRPC metadata naming the replica group a PBFT call is for (`pbft::Config::domain`, in
/// hex). A node that hosts two MS terms at once (the retired one and its successor) routes
/// each call by it; a group with the zero domain sends none.
pub const DOMAIN_HEADER: &str = "dbqs-pbft-domain";

/// `msg` as a request that carries `domain` in [`DOMAIN_HEADER`] (unless it is zero).
pub fn with_domain<T>(msg: T, domain: &[u8; 32]) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if *domain != [0; 32] {
        let hex: String = domain.iter().map(|b| format!("{b:02x}")).collect();
        if let Ok(v) = hex.parse() {
            r.metadata_mut().insert(DOMAIN_HEADER, v);
        }
    }
    r
}

/// Batches a `Deliver` stream buffers before the sender waits for HTTP/2 flow control.
const STREAM_BUFFER_BATCHES: usize = 8;

/// Keeps one `Deliver` stream open to peer `to` and drains its outbound queue into it, in
/// order. Batches grow while the stream is busy, bounded by count and bytes. A broken
/// stream is reopened after a pause that doubles up to `peer_backoff_max_ms`; messages
/// queued meanwhile wait in the bounded queue (the actor drops and counts when it is full).
pub(crate) async fn peer_sender(
    to: ReplicaId,
    mut queue: mpsc::Receiver<Arc<Vec<u8>>>,
    mut client: PbftGrpcClient<Channel>,
    bounds: RuntimeBounds,
    counters: Arc<RuntimeCounters>,
    domain: [u8; 32],
) {
    const BACKOFF_MIN_MS: u64 = 10;
    let mut backoff_ms = 0u64;
    let max_messages = bounds.outbound_batch_max_messages.max(1);
    loop {
        let (tx, rx) = mpsc::channel::<PbftBatch>(STREAM_BUFFER_BATCHES);
        let call = client.deliver(with_domain(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            &domain,
        ));
        tokio::pin!(call);
        let mut sent_on_stream = 0u64;
        let ended = loop {
            let first = tokio::select! {
                biased;
                res = &mut call => break res.map(|_| ()),
                m = queue.recv() => match m {
                    Some(m) => m,
                    None => return,
                },
            };
            let mut bytes = first.len();
            let mut messages = vec![first.as_ref().clone()];
            while messages.len() < max_messages && bytes < bounds.outbound_batch_max_bytes {
                match queue.try_recv() {
                    Ok(m) => {
                        bytes += m.len();
                        messages.push(m.as_ref().clone());
                    }
                    Err(_) => break,
                }
            }
            let count = messages.len() as u64;
            tokio::select! {
                biased;
                res = &mut call => {
                    RuntimeCounters::add(&counters.outbound_failed, count);
                    break res.map(|_| ());
                }
                sent = tx.send(PbftBatch { messages }) => {
                    if sent.is_err() {
                        RuntimeCounters::add(&counters.outbound_failed, count);
                        break Ok(());
                    }
                    RuntimeCounters::add(&counters.outbound_sent, count);
                    sent_on_stream += count;
                }
            }
        };
        if sent_on_stream > 0 {
            backoff_ms = 0;
        }
        backoff_ms = (backoff_ms * 2).clamp(BACKOFF_MIN_MS, bounds.peer_backoff_max_ms);
        if let Err(status) = ended {
            tracing::debug!(peer = to, error = %status, backoff_ms, "deliver stream ended");
        }
        tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
    }
}
