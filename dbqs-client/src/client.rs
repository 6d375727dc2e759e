//! The async client: Byzantine quorum reads and writes (PROTOCOL.md, "dBQS
//! storage"), with write-back on disagreeing reads, epoch catch-up and freshness
//! leases (PROTOCOL.md, "Leases"; see [`crate::lease`]).
//!
//! Every operation first holds a lease on the epoch of the client's configuration
//! (obtained lazily, renewed once less than half of it remains), and each of its quorum
//! phases completes only if that lease still runs when the phase's last counted reply
//! has arrived. If it has lapsed, the client renews it and redoes that phase with the
//! same request (a write resends the same signed version, so nothing new is written);
//! after [`MAX_LEASE_REDOS`] lapses in a row it gives up with a clear error.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use dbqs_common::codec::sha256;
use dbqs_common::object::{MAX_NAME_BYTES, MAX_VALUE_BYTES, verify_content, version_cmp};
use dbqs_common::threshold::MsPublicKey;
use dbqs_common::{
    ActiveConfig, ConfigCert, KeyPair, NodeId, ObjectId, OwnedHeader, OwnedValue, PublicKey,
    Timestamp,
};
use dbqs_proto::v1 as pb;
use dbqs_proto::v1::membership_client::MembershipClient;
use dbqs_proto::v1::storage_client::StorageClient;
use thiserror::Error;
use tonic::transport::Channel;

use crate::files::ClientSettings;
use crate::lease::{self, Lease, LeaseError};
use crate::quorum::{CallError, Fanout, QuorumError, Stragglers, fan_out, quorum};

/// Largest gRPC message a client sends or accepts: one value plus headers.
pub const MAX_MESSAGE_BYTES: usize = MAX_VALUE_BYTES + (64 << 10);
/// How many times an operation restarts because the epoch changed under it.
const MAX_EPOCH_RESTARTS: usize = 3;
/// How many times one phase is redone because the lease lapsed before its last reply.
pub const MAX_LEASE_REDOS: usize = 2;
/// Rounds of freshness requests one lease renewal makes (each after catching up with a
/// newer configuration, if some node proved one).
const MAX_LEASE_ATTEMPTS: usize = 3;
/// Pause before asking again when the MS vouched for an epoch no member could prove yet.
const LEASE_RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Most members [`Client::refresh_config`] asks besides the MS members.
const MAX_REFRESH_PROBES: usize = 16;
/// Rounds of one owned read whose write-back kept meeting a newer version.
const MAX_READ_ROUNDS: usize = 3;

#[derive(Debug, Error)]
pub enum ClientError {
    // The quorum error is part of the message, not a `source`, so that error
    // chains print it once.
    #[error("{op} {id}: {cause}")]
    Quorum {
        op: &'static str,
        id: String,
        cause: QuorumError,
    },
    #[error("invalid input: {0}")]
    Invalid(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error("{op} {id}: the epoch changed {MAX_EPOCH_RESTARTS} times during the operation")]
    EpochChurn { op: &'static str, id: String },
    /// The operation could not hold a freshness lease on its epoch (PROTOCOL.md,
    /// "Leases"): too few MS members vouched for an epoch, or the lease kept lapsing.
    #[error("{op} {id}: {cause}")]
    Lease {
        op: &'static str,
        id: String,
        cause: LeaseError,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("file format: {0}")]
    Format(String),
}

/// Whether some replica of a failed write phase answered that it holds a newer version.
fn answered_older(e: &QuorumError) -> bool {
    e.failed
        .iter()
        .any(|(_, e)| matches!(e, CallError::Older(_)))
}

/// Checks one replica's answer to a write of `id` (`written`: the header of the owned
/// version sent, None for a content object). Ok is an acknowledgement ("stored" or
/// "already held"); "older" with a validly signed higher header of the same object is
/// [`CallError::Older`], never an acknowledgement (PROTOCOL.md, "dBQS storage", Write);
/// anything else fails validation.
fn check_write_reply(
    id: ObjectId,
    written: Option<&OwnedHeader>,
    r: &pb::WriteReply,
) -> Result<(), CallError> {
    if r.object_id != id.0 {
        return Err(CallError::Invalid("answered for another object".into()));
    }
    match pb::WriteOutcome::try_from(r.outcome) {
        Ok(pb::WriteOutcome::Stored | pb::WriteOutcome::AlreadyHeld) => Ok(()),
        Ok(pb::WriteOutcome::Older) => {
            let (Some(written), Some(h)) = (written, r.stored_header.as_ref()) else {
                return Err(CallError::Invalid(
                    "\"older\" without a stored header, or for a content object".into(),
                ));
            };
            let h = OwnedHeader::from_proto(h).map_err(|e| CallError::Invalid(e.to_string()))?;
            if h.id != id {
                return Err(CallError::Invalid(
                    "\"older\" with another object's header".into(),
                ));
            }
            if !version_cmp(&h, written).is_gt() {
                return Err(CallError::Invalid(format!(
                    "\"older\" with version {} that is not newer than {}",
                    h.timestamp.counter, written.timestamp.counter
                )));
            }
            Err(CallError::Older(format!(
                "holds version {} of the object",
                h.timestamp.counter
            )))
        }
        Ok(pb::WriteOutcome::Unspecified) | Err(_) => Err(CallError::Invalid(format!(
            "write answered with no known outcome ({})",
            r.outcome
        ))),
    }
}

/// Identity a client (or a node acting as one) presents.
#[derive(Clone)]
pub struct ClientIdentity {
    pub ca_pem: String,
    pub tls_cert_pem: String,
    pub tls_key_pem: String,
}

/// A test hook run by [`Client::put`] between its two phases, with the signed version
/// and the configuration phase 1 ran in (feature `testkit`; see
/// [`Client::set_between_phases`]).
#[cfg(feature = "testkit")]
pub type BetweenPhases = Arc<
    dyn Fn(OwnedValue, ActiveConfig) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>>
        + Send
        + Sync,
>;

/// Outcome of a successful write.
#[derive(Debug, Clone)]
pub struct PutReceipt {
    pub id: ObjectId,
    /// The timestamp the put signed its version with (once, whatever the retries).
    pub timestamp: Timestamp,
    /// The epoch whose group completed the write.
    pub epoch: u64,
    /// Set when replicas answered that they hold a newer version and the client made
    /// sure q of them hold it: the put is ordered just before that version, which
    /// readers see instead (PROTOCOL.md, "dBQS storage", Write).
    pub superseded_by: Option<Timestamp>,
}

struct Inner {
    ms_key: MsPublicKey,
    config: RwLock<ActiveConfig>,
    channels: Mutex<HashMap<NodeId, Channel>>,
    /// TLS 1.3 client configuration, or why the identity's PEM files are unusable
    /// (reported by every call, since constructing a client cannot fail).
    tls: Result<Arc<rustls::ClientConfig>, String>,
    owner: Option<KeyPair>,
    writer: [u8; 32],
    timeout: Duration,
    invalid_replies: AtomicU64,
    write_backs: AtomicU64,
    /// The freshness lease held, if any.
    lease: Mutex<Option<Lease>>,
    /// Held while a lease is being fetched: at most one fetch in flight.
    lease_fetch: tokio::sync::Mutex<()>,
    #[cfg(feature = "testkit")]
    between_phases: Mutex<Option<BetweenPhases>>,
}

/// Why one phase of an operation did not complete.
#[derive(Debug)]
enum PhaseError {
    Quorum(QuorumError),
    Lease(LeaseError),
    /// The renewed lease is for a newer epoch: restart the operation there.
    Restart,
}

impl From<QuorumError> for PhaseError {
    fn from(e: QuorumError) -> Self {
        PhaseError::Quorum(e)
    }
}

/// A dBQS client. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// A client from a loaded `client.toml`.
    pub fn new(s: &ClientSettings) -> Client {
        Self::with_identity(
            s.ms_public_key,
            s.config.clone(),
            ClientIdentity {
                ca_pem: s.ca_pem.clone(),
                tls_cert_pem: s.tls_cert_pem.clone(),
                tls_key_pem: s.tls_key_pem.clone(),
            },
            Some(s.owner.clone()),
            Duration::from_millis(s.timeout_ms),
        )
    }

    pub fn with_identity(
        ms_key: MsPublicKey,
        config: ActiveConfig,
        id: ClientIdentity,
        owner: Option<KeyPair>,
        timeout: Duration,
    ) -> Client {
        let writer = sha256(&[b"writer", id.tls_cert_pem.as_bytes()]);
        Client {
            inner: Arc::new(Inner {
                ms_key,
                config: RwLock::new(config),
                channels: Mutex::new(HashMap::new()),
                tls: dbqs_common::tls::grpc_client_config_tls13(
                    &id.ca_pem,
                    &id.tls_cert_pem,
                    &id.tls_key_pem,
                )
                .map(Arc::new)
                .map_err(|e| e.to_string()),
                owner,
                writer,
                timeout,
                invalid_replies: AtomicU64::new(0),
                write_backs: AtomicU64::new(0),
                lease: Mutex::new(None),
                lease_fetch: tokio::sync::Mutex::new(()),
                #[cfg(feature = "testkit")]
                between_phases: Mutex::new(None),
            }),
        }
    }

    /// Tests only: `hook` runs in every `put` after phase 1 signed the version and
    /// before phase 2 sends it (to force an epoch change or a concurrent write there).
    #[cfg(feature = "testkit")]
    pub fn set_between_phases(&self, hook: Option<BetweenPhases>) {
        *self
            .inner
            .between_phases
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = hook;
    }

    /// Runs the test hook, if one is set (never in production: feature `testkit`).
    async fn between_phases(&self, _v: &OwnedValue, _cfg: &ActiveConfig) {
        #[cfg(feature = "testkit")]
        {
            let hook = self
                .inner
                .between_phases
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if let Some(hook) = hook {
                hook(_v.clone(), _cfg.clone()).await;
            }
        }
    }

    /// The MS public key this client verifies every configuration with.
    pub fn ms_public_key(&self) -> MsPublicKey {
        self.inner.ms_key
    }

    pub fn config(&self) -> ActiveConfig {
        self.inner
            .config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn owner_key(&self) -> Option<PublicKey> {
        self.inner.owner.as_ref().map(KeyPair::public)
    }

    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// Replies that failed validation so far (Byzantine evidence).
    pub fn invalid_replies(&self) -> u64 {
        self.inner.invalid_replies.load(Ordering::Relaxed)
    }

    /// Reads that had to write the newest version back to reach a quorum.
    pub fn write_backs(&self) -> u64 {
        self.inner.write_backs.load(Ordering::Relaxed)
    }

    /// The freshness lease held now, if it still runs: its epoch and the time left.
    pub fn lease(&self) -> Option<(u64, Duration)> {
        let now = Instant::now();
        self.held_lease()
            .filter(|l| l.runs_at(now))
            .map(|l| (l.epoch, l.remaining(now)))
    }

    fn held_lease(&self) -> Option<Lease> {
        *self.inner.lease.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True if the lease held is for `epoch` and runs now.
    fn lease_runs(&self, epoch: u64) -> bool {
        self.held_lease()
            .is_some_and(|l| l.epoch == epoch && l.runs_at(Instant::now()))
    }

    /// A lease on the epoch of the client's configuration, fetched if none is held, if
    /// the one held is for another epoch, or if less than half of it remains. Adopts a
    /// newer configuration first when the MS vouches for a newer epoch.
    pub async fn ensure_lease(&self) -> Result<Lease, LeaseError> {
        let fresh = |l: &Lease, epoch: u64, now: Instant| l.epoch == epoch && !l.needs_renewal(now);
        if let Some(l) = self.held_lease()
            && fresh(&l, self.config().epoch(), Instant::now())
        {
            return Ok(l);
        }
        let _one_fetch = self.inner.lease_fetch.lock().await;
        // Another task may have renewed it while this one waited.
        if let Some(l) = self.held_lease()
            && fresh(&l, self.config().epoch(), Instant::now())
        {
            return Ok(l);
        }
        let mut last = None;
        let mut attempts = 0;
        // While the MS hands over to a new one, its old members refuse and the new MS's
        // first configuration is a moment away: keep asking until the call timeout.
        let handover_deadline = Instant::now() + self.timeout();
        while attempts < MAX_LEASE_ATTEMPTS {
            attempts += 1;
            let cfg = self.config();
            let attempt = lease::request(self, &cfg).await?;
            self.note_invalid(
                attempt
                    .failed
                    .iter()
                    .filter(|(_, e)| matches!(e, CallError::Invalid(_)))
                    .count(),
            );
            let Some(l) = attempt.lease else {
                last = Some(attempt.error());
                if self.catch_up(&attempt.failed).await || self.refresh_config().await {
                    continue;
                }
                if lease::met_handed_over(&attempt.failed) && Instant::now() < handover_deadline {
                    attempts -= 1;
                    tokio::time::sleep(LEASE_RETRY_PAUSE).await;
                    continue;
                }
                break;
            };
            if l.epoch > cfg.epoch() {
                // The MS is ahead of us: fetch and verify the certificate of its epoch
                // from the members that vouched for it.
                for v in &attempt.voters {
                    if self.fetch_config_from(*v).await.is_ok_and(|e| e >= l.epoch) {
                        break;
                    }
                }
            }
            let ours = self.config().epoch();
            if l.epoch == ours {
                *self.inner.lease.lock().unwrap_or_else(|e| e.into_inner()) = Some(l);
                return Ok(l);
            }
            // Either no member could prove the MS's epoch (it has just ended an epoch and
            // is combining the new configuration's signature, a few ms), or our
            // configuration moved on after the nonce was sent: ask again shortly.
            tokio::time::sleep(LEASE_RETRY_PAUSE).await;
            last = Some(if l.epoch > ours {
                LeaseError::Unproven {
                    lease: l.epoch,
                    ours,
                }
            } else {
                LeaseError::NotEnough {
                    need: attempt.need,
                    have: 0,
                    ms_members: attempt.ms_members,
                    details: format!(
                        "; the MS vouched for epoch {} but we are in epoch {ours}",
                        l.epoch
                    ),
                }
            });
        }
        Err(last.unwrap_or(LeaseError::NotEnough {
            need: 1,
            have: 0,
            ms_members: self.config().config.ms_members.len(),
            details: String::new(),
        }))
    }

    /// Called when a phase in `epoch` finished after the lease had lapsed: renews it.
    /// Ok if the new lease is for `epoch` (redo the phase); `Restart` if it is for
    /// another epoch (the client has adopted that configuration).
    async fn renew_after_lapse(&self, epoch: u64) -> Result<(), PhaseError> {
        let l = self.ensure_lease().await.map_err(PhaseError::Lease)?;
        if l.epoch == epoch {
            Ok(())
        } else {
            Err(PhaseError::Restart)
        }
    }

    /// Asks the MS members and up to [`MAX_REFRESH_PROBES`] other members for their
    /// newest configuration and adopts the newest one that verifies. Returns true if the
    /// client's epoch advanced.
    pub async fn refresh_config(&self) -> bool {
        let cfg = self.config();
        let before = cfg.epoch();
        let mut ask: Vec<NodeId> = cfg.config.ms_members.clone();
        ask.extend(
            cfg.config
                .members
                .iter()
                .map(|m| m.node_id())
                .filter(|n| !cfg.config.ms_members.contains(n))
                .take(MAX_REFRESH_PROBES),
        );
        let probes = self.probe(&ask).await;
        let mut claims: Vec<(u64, NodeId)> = probes
            .iter()
            .filter_map(|(n, r)| r.as_ref().ok().map(|(e, _)| (*e, *n)))
            .filter(|(e, _)| *e > before)
            .collect();
        claims.sort_by_key(|c| std::cmp::Reverse(c.0));
        for (_, n) in claims {
            if self.fetch_config_from(n).await.is_ok_and(|e| e > before) {
                break;
            }
        }
        self.config().epoch() > before
    }

    fn channel(&self, node: NodeId) -> Result<Channel, CallError> {
        let mut map = self
            .inner
            .channels
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(c) = map.get(&node) {
            return Ok(c.clone());
        }
        let cfg = self.config();
        let m = cfg
            .member(&node)
            .ok_or_else(|| CallError::Unavailable(format!("{node} is not a member")))?;
        let tls = self.inner.tls.clone().map_err(CallError::Unavailable)?;
        let timeout = self.inner.timeout;
        let ch = crate::tls::channel(&m.address, &node.tls_name(), tls, |e| {
            e.connect_timeout(Duration::from_secs(2).min(timeout))
                .timeout(timeout)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(10))
        })
        .map_err(CallError::Unavailable)?;
        map.insert(node, ch.clone());
        Ok(ch)
    }

    /// A Storage stub for `node`.
    pub fn storage(&self, node: NodeId) -> Result<StorageClient<Channel>, CallError> {
        Ok(StorageClient::new(self.channel(node)?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    pub fn membership(&self, node: NodeId) -> Result<MembershipClient<Channel>, CallError> {
        Ok(MembershipClient::new(self.channel(node)?).max_decoding_message_size(64 << 20))
    }

    fn note_invalid(&self, n: usize) {
        if n > 0 {
            self.inner
                .invalid_replies
                .fetch_add(n as u64, Ordering::Relaxed);
            tracing::warn!(invalid = n, "replicas sent replies that failed validation");
        }
    }

    /// Adopts a newer configuration if some failure showed one: fetches the
    /// certificate from the replica that claimed it and verifies it with the MS
    /// key. A claim that cannot be proven is ignored.
    async fn catch_up(&self, failed: &[(NodeId, CallError)]) -> bool {
        let ours = self.config().epoch();
        for (n, e) in failed {
            if let CallError::Epoch { theirs, .. } = e
                && *theirs > ours
                && self.fetch_config_from(*n).await.is_ok_and(|e| e > ours)
            {
                return true;
            }
        }
        false
    }

    /// Fetches the newest certificate from `node`, adopting it if it verifies and
    /// is newer. Returns the epoch the client is in afterwards.
    pub async fn fetch_config_from(&self, node: NodeId) -> Result<u64, CallError> {
        let mut m = self.membership(node)?;
        let r = m
            .get_config(pb::GetConfigRequest { epoch: 0 })
            .await
            .map_err(CallError::from)?
            .into_inner();
        let cert = ConfigCert::from_proto(
            r.cert
                .ok_or_else(|| CallError::Invalid("no certificate".into()))?,
        );
        let active = ActiveConfig::verify(cert, &self.inner.ms_key)
            .map_err(|e| CallError::Invalid(e.to_string()))?;
        let mut cur = self.inner.config.write().unwrap_or_else(|e| e.into_inner());
        if active.epoch() > cur.epoch() {
            tracing::info!(
                from = cur.epoch(),
                to = active.epoch(),
                "adopting newer configuration"
            );
            *cur = active;
            self.inner
                .channels
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
        }
        Ok(cur.epoch())
    }

    /// Runs `phase` in the current epoch's group under a lease on that epoch,
    /// restarting it in a newer epoch's group when a replica or the MS proves one
    /// (PROTOCOL.md: one phase, one epoch, one group; "Leases").
    async fn in_epoch<T, F, Fut>(
        &self,
        op: &'static str,
        id: &ObjectId,
        phase: F,
    ) -> Result<T, ClientError>
    where
        F: Fn(ActiveConfig) -> Fut,
        Fut: Future<Output = Result<T, PhaseError>>,
    {
        for _ in 0..MAX_EPOCH_RESTARTS {
            if let Err(cause) = self.ensure_lease().await {
                return Err(ClientError::Lease {
                    op,
                    id: id.to_hex(),
                    cause,
                });
            }
            let cfg = self.config();
            let phase_epoch = cfg.epoch();
            match phase(cfg).await {
                Ok(t) => return Ok(t),
                Err(PhaseError::Restart) => {}
                Err(PhaseError::Lease(cause)) => {
                    return Err(ClientError::Lease {
                        op,
                        id: id.to_hex(),
                        cause,
                    });
                }
                Err(PhaseError::Quorum(e)) => {
                    self.note_invalid(
                        e.failed
                            .iter()
                            .filter(|(_, e)| matches!(e, CallError::Invalid(_)))
                            .count(),
                    );
                    // Another task of this client may have adopted the newer epoch
                    // while this phase ran: then restart at once.
                    let moved_on = self.config().epoch() > phase_epoch;
                    if !moved_on && !self.catch_up(&e.failed).await {
                        return Err(ClientError::Quorum {
                            op,
                            id: id.to_hex(),
                            cause: e,
                        });
                    }
                }
            }
        }
        Err(ClientError::EpochChurn {
            op,
            id: id.to_hex(),
        })
    }

    /// A quorum fan-out to the group of `id` in `cfg`: q valid replies from
    /// distinct members within the client timeout. `call` gets a clone of this
    /// client per replica. Invalid replies are counted as Byzantine evidence.
    ///
    /// The phase completes only if the lease on `cfg`'s epoch still runs once the
    /// quorum's last reply is in; otherwise the lease is renewed and the same calls are
    /// made again, at most [`MAX_LEASE_REDOS`] times.
    async fn group_quorum<R, F, Fut>(
        &self,
        cfg: &ActiveConfig,
        id: ObjectId,
        stragglers: Stragglers,
        call: F,
    ) -> Result<Fanout<R>, PhaseError>
    where
        R: Send + 'static,
        F: Fn(Client, NodeId) -> Fut,
        Fut: Future<Output = Result<R, CallError>> + Send + 'static,
    {
        let group = cfg.group(&id);
        for redo in 0..=MAX_LEASE_REDOS {
            let this = self.clone();
            let out = quorum(&group, cfg.quorum(), self.inner.timeout, stragglers, |n| {
                call(this.clone(), n)
            })
            .await?;
            self.note_invalid(out.invalid_count());
            if self.lease_runs(cfg.epoch()) {
                return Ok(out);
            }
            if redo < MAX_LEASE_REDOS {
                tracing::debug!(
                    epoch = cfg.epoch(),
                    "lease lapsed during a phase; renewing and redoing it"
                );
                self.renew_after_lapse(cfg.epoch()).await?;
            }
        }
        Err(PhaseError::Lease(LeaseError::Lapsed {
            epoch: cfg.epoch(),
            attempts: MAX_LEASE_REDOS + 1,
        }))
    }

    /// One replica's `Read` of `id`, with the epoch of its reply checked.
    async fn read_one(
        &self,
        node: NodeId,
        epoch: u64,
        id: ObjectId,
        kind: pb::ObjectKind,
    ) -> Result<Option<pb::read_reply::Object>, CallError> {
        let r = self
            .storage(node)?
            .read(pb::ReadRequest {
                epoch,
                object_id: id.0.to_vec(),
                kind: kind as i32,
            })
            .await?
            .into_inner();
        Self::check_epoch(epoch, r.epoch)?;
        Ok(r.object)
    }

    fn check_epoch(ours: u64, theirs: u64) -> Result<(), CallError> {
        if ours == theirs {
            Ok(())
        } else {
            Err(CallError::Epoch { ours, theirs })
        }
    }

    /// Writes `value` under `name`, owned by this client's owner key.
    pub async fn put(&self, name: &[u8], value: Vec<u8>) -> Result<PutReceipt, ClientError> {
        let owner = self
            .inner
            .owner
            .clone()
            .ok_or_else(|| ClientError::Invalid("this client has no owner key".into()))?;
        if name.is_empty() || name.len() > MAX_NAME_BYTES {
            return Err(ClientError::Invalid(format!(
                "name must be 1..={MAX_NAME_BYTES} bytes"
            )));
        }
        if value.len() > MAX_VALUE_BYTES {
            return Err(ClientError::Invalid(format!(
                "value is {} bytes, more than the limit of {MAX_VALUE_BYTES} (use put-file for large files)",
                value.len()
            )));
        }
        let id = ObjectId::owned(&owner.public(), name);
        let value = Arc::new(value);
        // Phase 1, restarted in a newer epoch's group if the epoch moves under it:
        // nothing is signed until it completes.
        let (v, phase1) = self
            .in_epoch("put", &id, |cfg| {
                let owner = owner.clone();
                let value = value.clone();
                async move {
                    // The highest validly signed timestamp of a quorum.
                    let max = self.read_timestamps(&cfg, id).await?;
                    // An owner that signed counter u64::MAX has exhausted the
                    // object's versions; refuse rather than wrap around.
                    let Some(counter) = max.map_or(Some(1), |t| t.counter.checked_add(1)) else {
                        return Ok(Err(ClientError::Invalid(format!(
                            "object {} has reached the largest version counter",
                            id.to_hex()
                        ))));
                    };
                    let ts = Timestamp {
                        counter,
                        writer: self.inner.writer,
                    };
                    let v = OwnedValue::sign(&owner, name, ts, (*value).clone());
                    Ok(Ok((v, cfg)))
                }
            })
            .await??;
        self.between_phases(&v, &phase1).await;
        // Phase 2, with the version signed once above: an epoch change restarts it in
        // the new epoch's group with that same version, never phase 1 again
        // (PROTOCOL.md, "dBQS storage", Retries keep the version). Signing the value
        // again under a new timestamp once a replica may hold the first one would let
        // readers see it, then a concurrent write, then it again.
        let v = Arc::new(v);
        self.in_epoch("put", &id, |cfg| {
            let v = v.clone();
            async move { self.write_phase(&cfg, &v).await }
        })
        .await
    }

    /// Phase 2 of a put in `cfg`'s group: q acknowledgements of `v`, or `v` superseded.
    ///
    /// Replicas that hold a higher version answer "older", which is no acknowledgement.
    /// When they keep the quorum from forming, the put counts as superseded only once a
    /// higher version is held by q replicas: a quorum read writes the newest version
    /// back first (PROTOCOL.md, "dBQS storage", Write). One replica's header is not
    /// enough: it may be an unfinished write that no reader will ever return.
    async fn write_phase(
        &self,
        cfg: &ActiveConfig,
        v: &OwnedValue,
    ) -> Result<PutReceipt, PhaseError> {
        let receipt = |superseded_by| PutReceipt {
            id: v.header.id,
            timestamp: v.header.timestamp,
            epoch: cfg.epoch(),
            superseded_by,
        };
        let e = match self.write_owned(cfg, v.clone(), false).await {
            Ok(()) => return Ok(receipt(None)),
            Err(PhaseError::Quorum(e)) if answered_older(&e) => e,
            Err(e) => return Err(e),
        };
        // Some replica holds a newer version. Read the object in the same epoch: the
        // read returns only once q replicas hold what it returns (or, for a version
        // above this put's, a version at least as new).
        let newest = self.read_owned(cfg, v.header.id, Some(&v.header)).await?;
        match newest.map(|n| (version_cmp(&n.header, &v.header), n.header.timestamp)) {
            Some((std::cmp::Ordering::Greater, ts)) => {
                tracing::debug!(object = ?v.header.id, "put superseded by a newer version held by a quorum");
                Ok(receipt(Some(ts)))
            }
            // The read found this very version newest and wrote it back to q replicas.
            Some((std::cmp::Ordering::Equal, _)) => Ok(receipt(None)),
            // The "older" answers came from replicas the read did not count, and too few
            // acknowledged: the phase failed like any other quorum failure.
            _ => Err(PhaseError::Quorum(e)),
        }
    }

    async fn read_timestamps(
        &self,
        cfg: &ActiveConfig,
        id: ObjectId,
    ) -> Result<Option<Timestamp>, PhaseError> {
        let epoch = cfg.epoch();
        let out = self
            .group_quorum(cfg, id, Stragglers::Cancel, move |this, n| async move {
                let r = this
                    .storage(n)?
                    .read_timestamp(pb::ReadTimestampRequest {
                        epoch,
                        object_id: id.0.to_vec(),
                    })
                    .await?
                    .into_inner();
                Self::check_epoch(epoch, r.epoch)?;
                match r.header {
                    None => Ok(None),
                    Some(h) => {
                        let h = OwnedHeader::from_proto(&h)
                            .map_err(|e| CallError::Invalid(e.to_string()))?;
                        if h.id != id {
                            return Err(CallError::Invalid("header for another object".into()));
                        }
                        Ok(Some(h.timestamp))
                    }
                }
            })
            .await?;
        Ok(out.ok.into_iter().filter_map(|(_, t)| t).max())
    }

    /// Sends a signed version to the group until q replicas acknowledged it (stored it
    /// or already held it). "Older" answers are no acknowledgement: unless
    /// `older_holds`, they do not count and are in the quorum error's failures as
    /// [`CallError::Older`]. With `older_holds` (a read's write-back) a verified "older"
    /// answer counts as a replica that holds a version at least as new as `v`.
    async fn write_owned(
        &self,
        cfg: &ActiveConfig,
        v: OwnedValue,
        older_holds: bool,
    ) -> Result<(), PhaseError> {
        let id = v.header.id;
        let header = v.header.clone();
        let req = pb::WriteRequest {
            epoch: cfg.epoch(),
            object: Some(pb::write_request::Object::Owned(v.to_proto())),
        };
        self.write_request(cfg, id, req, Some(header), older_holds)
            .await
    }

    /// Sends a write to the group until q replicas acknowledged it. `written` is the
    /// header of an owned version (None for a content object), against which an
    /// "older" answer is checked; `older_holds` as in [`Client::write_owned`].
    async fn write_request(
        &self,
        cfg: &ActiveConfig,
        id: ObjectId,
        req: pb::WriteRequest,
        written: Option<OwnedHeader>,
        older_holds: bool,
    ) -> Result<(), PhaseError> {
        let epoch = cfg.epoch();
        let req = Arc::new(req);
        let written = Arc::new(written);
        self.group_quorum(cfg, id, Stragglers::Finish, move |this, n| {
            let req = req.clone();
            let written = written.clone();
            async move {
                let r = this.storage(n)?.write((*req).clone()).await?.into_inner();
                Self::check_epoch(epoch, r.epoch)?;
                match check_write_reply(id, written.as_ref().as_ref(), &r) {
                    Err(CallError::Older(_)) if older_holds => Ok(()),
                    r => r,
                }
            }
        })
        .await?;
        Ok(())
    }

    /// Reads the newest version of `owner`'s object `name`; writes it back first
    /// if fewer than q replicas held it.
    pub async fn get(
        &self,
        owner: &PublicKey,
        name: &[u8],
    ) -> Result<Option<OwnedValue>, ClientError> {
        if name.is_empty() || name.len() > MAX_NAME_BYTES {
            return Err(ClientError::Invalid(format!(
                "name must be 1..={MAX_NAME_BYTES} bytes"
            )));
        }
        let id = ObjectId::owned(owner, name);
        self.get_owned_id(id).await
    }

    pub async fn get_owned_id(&self, id: ObjectId) -> Result<Option<OwnedValue>, ClientError> {
        self.in_epoch("get", &id, |cfg| async move {
            self.read_owned(&cfg, id, None).await
        })
        .await
    }

    /// A quorum read of an owned object in `cfg`'s group (PROTOCOL.md, "dBQS storage",
    /// Read): q valid replies, the highest valid version N, written back until q
    /// replicas hold it.
    ///
    /// A replica that answers the write-back "older" holds a version above N (a
    /// concurrent write) and can no longer hold N itself; it counts towards q as
    /// holding a version at least as new as N, which is what a later read needs to
    /// return N or newer. When the read decides whether a put of version `above` was
    /// superseded, that counts only if N is above `above` (so each of the q replicas
    /// holds a version newer than the put's); otherwise "older" answers make it read
    /// again, at most [`MAX_READ_ROUNDS`] times in all.
    async fn read_owned(
        &self,
        cfg: &ActiveConfig,
        id: ObjectId,
        above: Option<&OwnedHeader>,
    ) -> Result<Option<OwnedValue>, PhaseError> {
        let epoch = cfg.epoch();
        let mut round = 0;
        loop {
            round += 1;
            let out = self
                .group_quorum(cfg, id, Stragglers::Cancel, move |this, n| async move {
                    match this.read_one(n, epoch, id, pb::ObjectKind::Owned).await? {
                        None => Ok(None),
                        Some(pb::read_reply::Object::Owned(v)) => {
                            let v = OwnedValue::from_proto(&v)
                                .map_err(|e| CallError::Invalid(e.to_string()))?;
                            if v.header.id != id {
                                return Err(CallError::Invalid("value of another object".into()));
                            }
                            Ok(Some(v))
                        }
                        Some(pb::read_reply::Object::Content(_)) => {
                            Err(CallError::Invalid("content for an owned read".into()))
                        }
                    }
                })
                .await?;
            let newest = out
                .ok
                .iter()
                .filter_map(|(_, v)| v.as_ref())
                .max_by(|a, b| version_cmp(&a.header, &b.header))
                .cloned();
            let Some(newest) = newest else {
                return Ok(None);
            };
            let holding = out
                .ok
                .iter()
                .filter(|(_, v)| {
                    v.as_ref()
                        .is_some_and(|v| version_cmp(&v.header, &newest.header).is_eq())
                })
                .count();
            if holding >= cfg.quorum() {
                return Ok(Some(newest));
            }
            self.inner.write_backs.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(object = ?id, holding, "writing back newest version");
            let older_holds = above.is_none_or(|a| version_cmp(&newest.header, a).is_gt());
            match self.write_owned(cfg, newest.clone(), older_holds).await {
                Ok(()) => return Ok(Some(newest)),
                // A newer version kept the write-back from q acknowledgements: read
                // again, and return (after writing it back) what is newest then.
                Err(PhaseError::Quorum(e)) if answered_older(&e) && round < MAX_READ_ROUNDS => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Stores a content object; returns its id.
    pub async fn put_blob(&self, bytes: Vec<u8>) -> Result<ObjectId, ClientError> {
        if bytes.len() > MAX_VALUE_BYTES {
            return Err(ClientError::Invalid(format!(
                "blob is {} bytes, more than the limit of {MAX_VALUE_BYTES} (use put-blob on a file to chunk it)",
                bytes.len()
            )));
        }
        let id = ObjectId::content(&bytes);
        let bytes = Arc::new(bytes);
        self.in_epoch("put-blob", &id, |cfg| {
            let bytes = bytes.clone();
            async move {
                let req = pb::WriteRequest {
                    epoch: cfg.epoch(),
                    object: Some(pb::write_request::Object::Content((*bytes).clone())),
                };
                self.write_request(&cfg, id, req, None, false).await
            }
        })
        .await?;
        Ok(id)
    }

    /// Reads a content object (PROTOCOL.md, "dBQS storage", Content objects): the
    /// bytes from any replica whose reply hashes to the id, returned only once q
    /// replicas hold them; "not found" only once q replicas said they lack it.
    pub async fn get_blob(&self, id: ObjectId) -> Result<Option<Vec<u8>>, ClientError> {
        self.in_epoch("get-blob", &id, |cfg| async move {
            let epoch = cfg.epoch();
            let q = cfg.quorum();
            let group = cfg.group(&id);
            let out = self.read_content(&cfg, &group, id).await?;
            let found = out.ok.iter().find_map(|(_, b)| b.clone());
            match found {
                Some(bytes) => {
                    let holding = out.ok.iter().filter(|(_, b)| b.is_some()).count();
                    if holding < q {
                        // Fewer than q replicas are known to hold the bytes: write them
                        // back to the group and return them only once q acknowledged
                        // (replicas that had them answer "already held"). Otherwise a
                        // later read could meet q replicas without them and answer "not
                        // found" after this one returned them. A failed write-back fails
                        // the read (or restarts it in a newer epoch).
                        self.inner.write_backs.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(object = ?id, holding, "writing back content object");
                        let req = pb::WriteRequest {
                            epoch,
                            object: Some(pb::write_request::Object::Content(bytes.clone())),
                        };
                        self.write_request(&cfg, id, req, None, false).await?;
                    }
                    Ok(Some(bytes))
                }
                None if out.ok.len() >= q => Ok(None),
                None => Err(QuorumError {
                    need: q,
                    got: out.ok.len(),
                    group: group.len(),
                    failed: out.failed,
                    not_awaited: out.not_awaited,
                }
                .into()),
            }
        })
        .await
    }

    /// The read fan-out of `get_blob`, redone (at most [`MAX_LEASE_REDOS`] times) if the
    /// lease lapsed before its last reply arrived.
    async fn read_content(
        &self,
        cfg: &ActiveConfig,
        group: &[NodeId],
        id: ObjectId,
    ) -> Result<Fanout<Option<Vec<u8>>>, PhaseError> {
        let epoch = cfg.epoch();
        let q = cfg.quorum();
        for redo in 0..=MAX_LEASE_REDOS {
            let this = self.clone();
            let out = fan_out(
                group,
                self.inner.timeout,
                Stragglers::Cancel,
                move |n| {
                    let this = this.clone();
                    async move {
                        match this.read_one(n, epoch, id, pb::ObjectKind::Content).await? {
                            None => Ok(None),
                            Some(pb::read_reply::Object::Content(b)) => {
                                verify_content(&id, &b)
                                    .map_err(|e| CallError::Invalid(e.to_string()))?;
                                Ok(Some(b))
                            }
                            Some(pb::read_reply::Object::Owned(_)) => {
                                Err(CallError::Invalid("owned value for a content read".into()))
                            }
                        }
                    }
                },
                // Enough once a quorum answered (so we know whether to write back),
                // or early with the bytes if no quorum can answer anymore: the
                // write-back then decides whether they are returned.
                |ok, pending| {
                    ok.len() >= q
                        || (pending == 0)
                        || (ok.iter().any(|(_, b)| b.is_some()) && ok.len() + pending < q)
                },
            )
            .await;
            self.note_invalid(out.invalid_count());
            if self.lease_runs(epoch) {
                return Ok(out);
            }
            if redo < MAX_LEASE_REDOS {
                self.renew_after_lapse(epoch).await?;
            }
        }
        Err(PhaseError::Lease(LeaseError::Lapsed {
            epoch,
            attempts: MAX_LEASE_REDOS + 1,
        }))
    }

    /// Asks every member for its configuration, timing each answer.
    pub async fn probe_members(&self) -> Vec<(NodeId, Result<(u64, Duration), CallError>)> {
        let cfg = self.config();
        let ids: Vec<NodeId> = cfg.config.members.iter().map(|m| m.node_id()).collect();
        self.probe(&ids).await
    }

    /// Asks each of `ids` for its newest configuration's epoch, timing each answer.
    async fn probe(&self, ids: &[NodeId]) -> Vec<(NodeId, Result<(u64, Duration), CallError>)> {
        let this = self.clone();
        let out = fan_out(
            ids,
            self.inner.timeout,
            Stragglers::Cancel,
            move |n| {
                let this = this.clone();
                async move {
                    let start = Instant::now();
                    let r = this
                        .membership(n)?
                        .get_config(pb::GetConfigRequest { epoch: 0 })
                        .await?
                        .into_inner();
                    Ok((r.cert.map_or(0, |c| c.epoch), start.elapsed()))
                }
            },
            |_, _| false,
        )
        .await;
        let mut res: Vec<_> = out.ok.into_iter().map(|(n, r)| (n, Ok(r))).collect();
        res.extend(out.failed.into_iter().map(|(n, e)| (n, Err(e))));
        res.sort_by_key(|(n, _)| *n);
        res
    }

    /// Asks every member for its `Membership.Status` (epoch, lease, and on MS members
    /// the MS's queue, votes and probe table).
    pub async fn status_members(&self) -> Vec<(NodeId, Result<pb::StatusReply, CallError>)> {
        let cfg = self.config();
        let ids: Vec<NodeId> = cfg.config.members.iter().map(|m| m.node_id()).collect();
        let this = self.clone();
        let out = fan_out(
            &ids,
            self.inner.timeout,
            Stragglers::Cancel,
            move |n| {
                let this = this.clone();
                async move {
                    Ok(this
                        .membership(n)?
                        .status(pb::StatusRequest {})
                        .await?
                        .into_inner())
                }
            },
            |_, _| false,
        )
        .await;
        let mut res: Vec<_> = out.ok.into_iter().map(|(n, r)| (n, Ok(r))).collect();
        res.extend(out.failed.into_iter().map(|(n, e)| (n, Err(e))));
        res.sort_by_key(|(n, _)| *n);
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dbqs_common::KeyPair;

    fn version(k: &KeyPair, counter: u64) -> OwnedValue {
        let ts = Timestamp {
            counter,
            writer: [3; 32],
        };
        OwnedValue::sign(k, b"name", ts, counter.to_be_bytes().to_vec())
    }

    fn reply(id: ObjectId, outcome: pb::WriteOutcome, h: Option<&OwnedHeader>) -> pb::WriteReply {
        pb::WriteReply {
            epoch: 1,
            object_id: id.0.to_vec(),
            outcome: outcome as i32,
            stored_header: h.map(OwnedHeader::to_proto),
        }
    }

    /// PROTOCOL.md, "dBQS storage", Write: "stored" and "already held" acknowledge;
    /// "older" never does, and only a validly signed higher header of the same object
    /// makes it a valid answer.
    #[test]
    fn only_stored_and_already_held_acknowledge_a_write() {
        let k = KeyPair::from_seed([7; 32]);
        let (v1, v2) = (version(&k, 1), version(&k, 2));
        let id = v1.header.id;
        let check = |r: &pb::WriteReply| check_write_reply(id, Some(&v1.header), r);
        assert_eq!(check(&reply(id, pb::WriteOutcome::Stored, None)), Ok(()));
        assert_eq!(
            check(&reply(id, pb::WriteOutcome::AlreadyHeld, None)),
            Ok(())
        );
        let older = check(&reply(id, pb::WriteOutcome::Older, Some(&v2.header)));
        assert!(matches!(older, Err(CallError::Older(_))), "{older:?}");
        let e = QuorumError {
            need: 3,
            got: 2,
            group: 4,
            failed: vec![(NodeId([1; 32]), older.unwrap_err())],
            not_awaited: vec![],
        };
        assert!(answered_older(&e));

        let invalid = |r: pb::WriteReply, written: Option<&OwnedHeader>| {
            matches!(
                check_write_reply(id, written, &r),
                Err(CallError::Invalid(_))
            )
        };
        // "Older" with the written version itself, a lower one, none, a forged one,
        // another object's, or for a content write.
        let w = Some(&v2.header);
        assert!(invalid(
            reply(id, pb::WriteOutcome::Older, Some(&v2.header)),
            w
        ));
        assert!(invalid(
            reply(id, pb::WriteOutcome::Older, Some(&v1.header)),
            w
        ));
        assert!(invalid(reply(id, pb::WriteOutcome::Older, None), w));
        let mut forged = version(&k, 9).header;
        forged.signature[0] ^= 1;
        assert!(invalid(
            reply(id, pb::WriteOutcome::Older, Some(&forged)),
            w
        ));
        let other = OwnedValue::sign(&k, b"other", v2.header.timestamp, vec![]).header;
        assert!(invalid(reply(id, pb::WriteOutcome::Older, Some(&other)), w));
        assert!(invalid(
            reply(id, pb::WriteOutcome::Older, Some(&v2.header)),
            None
        ));
        // No outcome, an unknown one, another object.
        assert!(invalid(reply(id, pb::WriteOutcome::Unspecified, None), w));
        let mut unknown = reply(id, pb::WriteOutcome::Stored, None);
        unknown.outcome = 77;
        assert!(invalid(unknown, w));
        assert!(invalid(
            reply(ObjectId([0; 32]), pb::WriteOutcome::Stored, None),
            w
        ));
    }
}
