//! A PBFT client over gRPC (§4.1): signs a request, sends it to every replica (`propose`
//! to the primary it believes in, wait-only to the others), and accepts a result once f+1
//! replicas (2f+1 for read-only) sent matching signed replies, counted by replica identity
//! with [`ReplyCollector`]. With no decision in time it retries with `propose` to everyone,
//! which makes backups relay the request and start their view-change timers (§4.5.2).

use std::collections::BTreeMap;
use std::time::Duration;

use dbqs_proto::v1::pbft_client::PbftClient as PbftGrpcClient;
use ed25519_dalek::{SigningKey, VerifyingKey};
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use thiserror::Error;
use tonic::transport::Channel;

use super::transport::{reply_from_proto, request_to_proto, tls_channel, with_domain};
use super::{PeerInfo, RuntimeError, TlsMaterial};
use crate::pbft::{Limits, ReplicaId, ReplyCollector, Request};

/// Bounds of a client.
#[derive(Clone, Debug)]
pub struct PbftClientConfig {
    /// How long one attempt waits for a decision before retrying with `propose` to all.
    pub attempt_timeout_ms: u64,
    /// Attempts per operation.
    pub max_attempts: u32,
    pub connect_timeout_ms: u64,
    pub limits: Limits,
    /// The group's signature domain (`pbft::Config::domain`).
    pub domain: [u8; 32],
}

impl Default for PbftClientConfig {
    fn default() -> Self {
        PbftClientConfig {
            attempt_timeout_ms: 1_000,
            max_attempts: 8,
            connect_timeout_ms: 2_000,
            limits: Limits::default(),
            domain: [0; 32],
        }
    }
}

/// Why an operation did not complete.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error("no result after {attempts} attempts ({replies} valid replies, {invalid} invalid)")]
    NoQuorum {
        attempts: u32,
        replies: usize,
        invalid: usize,
    },
    #[error("transport: {0}")]
    Transport(#[from] RuntimeError),
}

/// A decided operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invocation {
    pub result: Vec<u8>,
    pub request_num: u64,
    /// Replicas whose verified reply carried `result`.
    pub agreeing: Vec<ReplicaId>,
    /// Attempts it took (1 = no retry).
    pub attempts: u32,
}

/// One client identity (an ed25519 key) talking to one PBFT group.
pub struct PbftClient {
    replicas: Vec<PbftGrpcClient<Channel>>,
    replica_keys: Vec<VerifyingKey>,
    key: SigningKey,
    next_num: u64,
    /// The highest view seen in a verified reply: its primary gets `propose` first.
    view_hint: u64,
    cfg: PbftClientConfig,
}

impl PbftClient {
    /// A client of the group `peers` (indexed by replica id, with `replica_keys` the
    /// group's ed25519 keys), signing with `key` and numbering requests from `first_num`
    /// (request numbers must grow across restarts of the same client key).
    pub fn new(
        peers: &[PeerInfo],
        replica_keys: Vec<VerifyingKey>,
        tls: &TlsMaterial,
        key: SigningKey,
        first_num: u64,
        cfg: PbftClientConfig,
    ) -> Result<PbftClient, ClientError> {
        let max_bytes = cfg.limits.max_message_bytes;
        let timeout_ms = cfg.attempt_timeout_ms * u64::from(cfg.max_attempts.max(1));
        let replicas = peers
            .iter()
            .map(|p| {
                let ch = tls_channel(
                    &p.address,
                    &p.tls_name,
                    tls,
                    cfg.connect_timeout_ms,
                    Some(timeout_ms),
                )?;
                Ok(PbftGrpcClient::new(ch)
                    .max_decoding_message_size(max_bytes)
                    .max_encoding_message_size(max_bytes))
            })
            .collect::<Result<Vec<_>, RuntimeError>>()?;
        Ok(PbftClient {
            replicas,
            replica_keys,
            key,
            next_num: first_num.max(1),
            view_hint: 0,
            cfg,
        })
    }

    fn f(&self) -> usize {
        self.replica_keys.len().saturating_sub(1) / 3
    }

    /// Runs a read-write operation; returns once f+1 replicas agree.
    pub async fn invoke(&mut self, op: Vec<u8>) -> Result<Invocation, ClientError> {
        let want = self.f() + 1;
        self.invoke_with(op, false, want).await
    }

    /// Runs an operation and, after the result is decided, keeps the attempt open until
    /// `min_agreeing` replicas sent it (tests use this to see a lagging replica agree).
    /// Returns the decided result even when fewer agree by the end of the attempts.
    pub async fn invoke_with(
        &mut self,
        op: Vec<u8>,
        read_only: bool,
        min_agreeing: usize,
    ) -> Result<Invocation, ClientError> {
        let num = self.next_num;
        self.next_num += 1;
        let request = Request::sign(&self.key, num, read_only, op);
        let n = self.replicas.len();
        let mut collector =
            ReplyCollector::new(self.replica_keys.clone(), &request).with_domain(self.cfg.domain);
        let mut agreeing: BTreeMap<ReplicaId, Vec<u8>> = BTreeMap::new();
        let mut invalid = 0usize;
        let mut decided: Option<(Vec<u8>, u32)> = None;
        let max_attempts = self.cfg.max_attempts.max(1);
        for attempt in 1..=max_attempts {
            let primary = (self.view_hint % n as u64) as usize;
            let mut calls = FuturesUnordered::new();
            for (i, stub) in self.replicas.iter().enumerate() {
                if agreeing.contains_key(&(i as ReplicaId)) {
                    continue;
                }
                let propose = attempt > 1 || i == primary;
                let mut stub = stub.clone();
                let msg = with_domain(request_to_proto(&request, propose), &self.cfg.domain);
                calls.push(async move { (i as ReplicaId, stub.submit(msg).await) });
            }
            let deadline = tokio::time::sleep(Duration::from_millis(self.cfg.attempt_timeout_ms));
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    _ = &mut deadline => break,
                    next = calls.next() => {
                        let Some((from, res)) = next else { break };
                        let Ok(resp) = res else { continue };
                        let Some(reply) = reply_from_proto(resp.get_ref(), &self.cfg.limits) else {
                            invalid += 1;
                            continue;
                        };
                        let view = reply.body.view;
                        match collector.add(from, &reply) {
                            Err(_) => invalid += 1,
                            Ok(result) => {
                                self.view_hint = self.view_hint.max(view);
                                agreeing.insert(from, reply.body.result.clone());
                                if decided.is_none() {
                                    decided = result.map(|r| (r, attempt));
                                }
                            }
                        }
                        if let Some((result, _)) = &decided {
                            let count = agreeing.values().filter(|r| *r == result).count();
                            if count >= min_agreeing {
                                break;
                            }
                        }
                    }
                }
            }
            if let Some((result, attempts)) = &decided {
                let ids: Vec<ReplicaId> = agreeing
                    .iter()
                    .filter(|(_, r)| *r == result)
                    .map(|(i, _)| *i)
                    .collect();
                if ids.len() >= min_agreeing || attempt == max_attempts {
                    return Ok(Invocation {
                        result: result.clone(),
                        request_num: num,
                        agreeing: ids,
                        attempts: *attempts,
                    });
                }
            }
            if read_only && collector.cannot_decide() {
                // §5.1.3: replicas disagree on a read-only answer; order it instead.
                let op = request.op.clone();
                return Box::pin(self.invoke_with(op, false, min_agreeing)).await;
            }
        }
        Err(ClientError::NoQuorum {
            attempts: max_attempts,
            replies: agreeing.len(),
            invalid,
        })
    }
}
