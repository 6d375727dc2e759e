//! The MS role moving between nodes (PROTOCOL.md, "MS rotation and resharing";
//! docs/resharing.md, "On the nodes"):
//!
//! - [`MsSlots`] holds the MS terms this node hosts: usually one; two while a term it
//!   served has retired and the next one, which it also joined, has started. Each term is
//!   a separate PBFT group with its own signature domain, and [`PbftRouter`] sends every
//!   PBFT call to the term its `dbqs-pbft-domain` header names.
//! - [`run`], on every node: when the newest configuration names this node in `ms_next`,
//!   it opens its sub-shares of the ordered dealings, acknowledges or accuses them, computes
//!   its new share once S is chosen (kept on disk, mode 0600, before it is used), signs the
//!   handover statement, and, once the old MS retired, fetches the state it retired with
//!   (2f+1 matching read-only answers) and starts the new term from it. When a term this
//!   node served retires and the new MS has certified its first configuration, it stops
//!   that term after a grace period and erases its share from memory and disk.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use blsttc::{Fr, SecretKeyShare};
use dbqs_common::codec::{Reader, Writer, sha256};
use dbqs_common::config::Configuration;
use dbqs_common::threshold::MsPublicKey;
use dbqs_common::{Epoch, KeyPair};
use dbqs_ms::membership::resharing::{accuse, combine_share, open_sub_share};
use dbqs_ms::membership::{
    OpError, OpKind, Outcome, QUERY_RETIRED_STATE, QUERY_ROTATION, Reply, RotationStatus,
    handover_signing_bytes, pbft_domain,
};
use dbqs_ms::service::{
    DOMAIN_HEADER, HostedPbftService, PbftClient, PbftClientConfig, TlsMaterial,
};
use ed25519_dalek::SigningKey;
use rand::RngCore as _;
use tokio::sync::watch;
use tonic::Status;
use tonic::codegen::{BoxFuture, Service, http};

use crate::configs::ConfigManager;
use crate::ms_host::{MsBehaviour, MsHandle, MsHost, MsHostParams, MsStart, ms_group, unix_micros};
use crate::peers::PeerChannels;

/// How often the agent looks at the rotation.
pub const AGENT_TICK_MS: u64 = 300;
/// How many configurations back a new member that missed its handover looks for it.
pub const LOOK_BACK_EPOCHS: u64 = 4;
/// How long a retired term keeps running after the new MS certified its first
/// configuration, so that slow new members can still fetch the state it retired with.
pub const RETIRED_GRACE_MS: u64 = 10_000;

/// The MS terms this node hosts.
#[derive(Default)]
pub struct MsSlots {
    /// The term that serves (not retired): its domain and handle.
    active: RwLock<Option<([u8; 32], MsHandle)>>,
    /// PBFT services by domain, with the epoch their term starts at. Two terms share a
    /// domain only when a rotation keeps the MS list and the key set's bytes (an MS of
    /// one member, whose key set is its group key alone): calls then go to the newest.
    routes: RwLock<Vec<([u8; 32], Epoch, HostedPbftService)>>,
    hosts: tokio::sync::Mutex<Vec<MsHost>>,
}

impl MsSlots {
    /// The MS role that serves on this node, if any.
    pub fn active(&self) -> Option<MsHandle> {
        self.active
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(_, h)| h.clone())
    }

    fn route(&self, domain: &[u8; 32]) -> Option<HostedPbftService> {
        self.routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(d, _, _)| d == domain)
            .max_by_key(|(_, term, _)| *term)
            .map(|(_, _, s)| s.clone())
    }

    /// Whether a term newer than `term` shares `domain` (see `routes`) and has started
    /// by epoch `now` (its first configuration is certified).
    fn superseded(&self, domain: &[u8; 32], term: Epoch, now: Epoch) -> bool {
        self.routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|(d, t, _)| d == domain && *t > term && *t <= now)
    }

    /// Starts serving `host` (it becomes the active term).
    pub async fn install(&self, host: MsHost, service: HostedPbftService) {
        let domain = host.domain;
        self.routes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push((domain, host.term, service));
        *self.active.write().unwrap_or_else(|e| e.into_inner()) =
            Some((domain, host.handle.clone()));
        self.hosts.lock().await.push(host);
    }

    /// Stops the term with `domain` that starts at `term`.
    async fn remove(&self, domain: &[u8; 32], term: Epoch) {
        self.routes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(d, t, _)| !(d == domain && *t == term));
        let host = {
            let mut hosts = self.hosts.lock().await;
            hosts
                .iter()
                .position(|h| h.domain == *domain && h.term == term)
                .map(|i| hosts.remove(i))
        };
        if let Some(h) = &host {
            let mut a = self.active.write().unwrap_or_else(|e| e.into_inner());
            if a.as_ref()
                .is_some_and(|(d, handle)| d == domain && handle.same_as(&h.handle))
            {
                *a = None;
            }
        }
        if let Some(h) = host {
            h.stop().await;
        }
    }

    /// (domain, term, retired epoch, handle) of every hosted term.
    async fn terms(&self) -> Vec<([u8; 32], Epoch, Option<Epoch>, MsHandle)> {
        self.hosts
            .lock()
            .await
            .iter()
            .map(|h| {
                let retired = h.handle.view.borrow().retired;
                (h.domain, h.term, retired, h.handle.clone())
            })
            .collect()
    }

    pub async fn stop_all(&self) {
        let hosts: Vec<MsHost> = self.hosts.lock().await.drain(..).collect();
        for h in hosts {
            h.stop().await;
        }
    }

    pub async fn kill_all(&self) {
        let hosts: Vec<MsHost> = self.hosts.lock().await.drain(..).collect();
        for h in hosts {
            h.kill().await;
        }
    }
}

/// The node's `dbqs.v1.Pbft` service: forwards each call to the hosted MS term its
/// [`DOMAIN_HEADER`] names, and answers UNAVAILABLE when this node hosts no such term.
#[derive(Clone)]
pub struct PbftRouter {
    pub slots: Arc<MsSlots>,
}

impl tonic::server::NamedService for PbftRouter {
    const NAME: &'static str = "dbqs.v1.Pbft";
}

fn domain_of(req: &http::Request<tonic::body::Body>) -> Option<[u8; 32]> {
    let v = req.headers().get(DOMAIN_HEADER)?.to_str().ok()?;
    hex::decode(v).ok()?.try_into().ok()
}

impl Service<http::Request<tonic::body::Body>> for PbftRouter {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let target = domain_of(&req).and_then(|d| self.slots.route(&d));
        Box::pin(async move {
            match target {
                Some(mut svc) => svc.call(req).await,
                None => Ok(Status::unavailable(
                    "this node hosts no MS replica of the term that call names",
                )
                .into_http()),
            }
        })
    }
}

/// A node's share of one MS term, and the state the term started from, as kept on disk
/// (`ms-term-<epoch>.bin`, mode 0600): what a restart needs to host the term again.
pub struct TermFile {
    pub epoch: Epoch,
    pub index: u32,
    /// None for a member that could not open its sub-share (it signs nothing).
    pub share: Option<SecretKeyShare>,
    pub state: Vec<u8>,
}

/// Largest term file (the state includes the configuration).
const MAX_TERM_STATE_BYTES: usize = 64 << 20;

impl TermFile {
    pub fn path(data_dir: &Path, epoch: Epoch) -> PathBuf {
        data_dir.join(format!("ms-term-{epoch}.bin"))
    }

    /// The file's bytes (public for the `node_decoders` fuzz target, fuzz/README.md).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::tagged("ms-term");
        w.u64(self.epoch).u32(self.index);
        match &self.share {
            Some(s) => w.u8(1).fixed(&s.to_bytes()),
            None => w.u8(0),
        };
        w.bytes(&self.state);
        w.finish()
    }

    /// Reads what [`encode`](Self::encode) wrote (public for the `node_decoders` fuzz
    /// target).
    pub fn decode(b: &[u8]) -> anyhow::Result<TermFile> {
        let mut r = Reader::new(b);
        r.expect_tag("ms-term")?;
        let epoch = r.u64("epoch")?;
        let index = r.u32("index")?;
        let share = match r.u8("has share")? {
            0 => None,
            1 => Some(
                SecretKeyShare::from_bytes(r.array("share")?)
                    .map_err(|e| anyhow::anyhow!("bad share: {e}"))?,
            ),
            _ => anyhow::bail!("has share must be 0 or 1"),
        };
        let state = r.bytes("state", MAX_TERM_STATE_BYTES)?.to_vec();
        r.finish()?;
        Ok(TermFile {
            epoch,
            index,
            share,
            state,
        })
    }

    /// Writes the file atomically (temporary file, fsync, rename).
    pub fn save(&self, data_dir: &Path) -> anyhow::Result<()> {
        let path = Self::path(data_dir, self.epoch);
        let tmp = path.with_extension("tmp");
        dbqs_client::files::write_secret(&tmp, &self.encode())?;
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
        if let Ok(d) = std::fs::File::open(data_dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Every term file in `data_dir`, oldest first.
    pub fn load_all(data_dir: &Path) -> anyhow::Result<Vec<TermFile>> {
        let mut out = Vec::new();
        let Ok(dir) = std::fs::read_dir(data_dir) else {
            return Ok(out);
        };
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("ms-term-") && name.ends_with(".bin") {
                let bytes = dbqs_client::files::read_secret(&e.path())?;
                out.push(
                    TermFile::decode(&bytes).with_context(|| format!("{}", e.path().display()))?,
                );
            }
        }
        out.sort_by_key(|t| t.epoch);
        Ok(out)
    }
}

/// Overwrites a secret file with zeros, syncs, and removes it (PROTOCOL.md: old members
/// erase their shares, on disk too).
pub fn erase_file(path: &Path) {
    if let Ok(meta) = std::fs::metadata(path) {
        if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(path) {
            use std::io::Write as _;
            let _ = f.write_all(&vec![0u8; meta.len() as usize]);
            let _ = f.sync_all();
        }
        match std::fs::remove_file(path) {
            Ok(()) => tracing::info!(path = %path.display(), "erased an old MS share"),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "could not remove an old MS share")
            }
        }
    }
}

/// What the agent needs.
pub struct Agent {
    pub key: KeyPair,
    pub x25519_secret: [u8; 32],
    pub ms_key: MsPublicKey,
    pub tls: TlsMaterial,
    pub data_dir: PathBuf,
    pub configs: Arc<ConfigManager>,
    pub peers: Arc<PeerChannels>,
    pub slots: Arc<MsSlots>,
    /// The genesis share file, erased when the genesis term retires.
    pub genesis_share_path: Option<PathBuf>,
    pub behaviour: MsBehaviour,
}

/// One rotation this node takes part in as a new member.
struct Joining {
    domain: [u8; 32],
    client: PbftClient,
    query: PbftClient,
    /// Dealings this node acknowledged or accused (by digest).
    reported: BTreeSet<[u8; 32]>,
    share: Option<(Epoch, [u8; 32], u32, Option<SecretKeyShare>)>,
    handover_sent: Option<[u8; 32]>,
}

/// Whether a refusal code is `StaleEpoch` or `FutureEpoch` (the reply names the epoch).
fn names_another_epoch(code: u8) -> bool {
    let e = |op_epoch, current| OpError::StaleEpoch { op_epoch, current };
    let f = |op_epoch, current| OpError::FutureEpoch { op_epoch, current };
    code == e(0, 0).code() || code == f(0, 0).code()
}

impl Agent {
    fn client(&self, config: &Configuration, key: SigningKey) -> anyhow::Result<PbftClient> {
        let (infos, keys) = ms_group(config)?;
        let cfg = PbftClientConfig {
            domain: pbft_domain(config),
            attempt_timeout_ms: 1_000,
            max_attempts: 3,
            ..PbftClientConfig::default()
        };
        Ok(PbftClient::new(
            &infos,
            keys,
            &self.tls,
            key,
            unix_micros(),
            cfg,
        )?)
    }

    fn joining(&self, config: &Configuration) -> anyhow::Result<Joining> {
        let mut seed = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut seed);
        Ok(Joining {
            domain: pbft_domain(config),
            client: self.client(config, SigningKey::from_bytes(&self.key.seed()))?,
            query: self.client(config, SigningKey::from_bytes(&seed))?,
            reported: BTreeSet::new(),
            share: None,
            handover_sent: None,
        })
    }

    /// Orders a rotation operation as this node, through the old term's own control
    /// client if this node hosts it (one request numbering per client key and group).
    async fn submit(&self, j: &mut Joining, epoch: Epoch, kind: OpKind) -> anyhow::Result<Reply> {
        let hosted = self
            .slots
            .terms()
            .await
            .into_iter()
            .find(|(d, ..)| *d == j.domain)
            .map(|(.., h)| h);
        match hosted {
            Some(h) => Ok(h.submit_as_member(kind).await?),
            None => {
                // As `ms_host::invoke`: an operation tagged with an epoch that ended meanwhile
                // is refused with the current one; retry with it.
                let mut epoch = epoch;
                let mut reply = None;
                for _ in 0..4 {
                    let op = dbqs_ms::membership::Op::new(epoch, kind.clone()).encode();
                    let inv = j.client.invoke(op).await?;
                    let r = Reply::decode(&inv.result)?;
                    match &r.outcome {
                        Outcome::Rejected { code, .. }
                            if r.epoch != epoch && names_another_epoch(*code) =>
                        {
                            epoch = r.epoch;
                            reply = Some(r);
                        }
                        _ => return Ok(r),
                    }
                }
                reply.context("no reply")
            }
        }
    }

    async fn query(j: &mut Joining, q: u8) -> anyhow::Result<Vec<u8>> {
        let inv = j.query.invoke_with(vec![q], true, 0).await?;
        Ok(inv.result)
    }

    /// One step as a new member of the rotation that `config` started. True if it
    /// submitted something or took over (the next step then follows at once).
    async fn join_step(&self, j: &mut Joining) -> anyhow::Result<bool> {
        let mut progressed = false;
        let me = self.key.node_id();
        let status = RotationStatus::decode(&Self::query(j, QUERY_ROTATION).await?)?;
        let Some(rs) = status.rotation.as_ref() else {
            return Ok(false);
        };
        let rot = rs.rotation();
        let Some(k) = rot.new_members().iter().position(|m| m.id == me) else {
            return Ok(false);
        };
        if status.retired.is_none() && !rs.handed_over() {
            for d in rs.dealings() {
                let digest = d.digest();
                if j.reported.contains(&digest)
                    || rs.acked(k as u32, d.dealer_index)
                    || rs.is_upheld(d.dealer_index)
                {
                    continue;
                }
                let opened = open_sub_share(rot, d, k, &self.x25519_secret);
                let kind = match opened {
                    Ok(_) if self.behaviour == MsBehaviour::RotationLiar => {
                        // A false accusation: a proof for a sub-share this node altered,
                        // presented as one about the ordered dealing.
                        let mut altered = d.clone();
                        if let Some(c) = altered.ciphertexts.get_mut(k) {
                            c[0] ^= 1;
                        }
                        let mut a = accuse(
                            rot,
                            &altered,
                            k,
                            &self.x25519_secret,
                            &mut rand::rngs::OsRng,
                        )?;
                        a.dealing_digest = digest;
                        OpKind::Accuse(Box::new(a))
                    }
                    Ok(_) => OpKind::AckDealing {
                        dealer_index: d.dealer_index,
                        digest,
                    },
                    Err(fault) => {
                        tracing::warn!(dealer = d.dealer_index, %fault, "bad sub-share; accusing");
                        let a = accuse(rot, d, k, &self.x25519_secret, &mut rand::rngs::OsRng)?;
                        OpKind::Accuse(Box::new(a))
                    }
                };
                let r = self.submit(j, status.epoch, kind).await?;
                tracing::info!(dealer = d.dealer_index, outcome = ?r.outcome, "reported a dealing");
                // Counted, or counted before: done. Any other refusal is retried next step
                // (the liar's are refused every time; it does not repeat them).
                match &r.outcome {
                    _ if self.behaviour == MsBehaviour::RotationLiar => {
                        j.reported.insert(digest);
                    }
                    Outcome::Rejected { code, .. }
                        if *code != OpError::DuplicateProposal(me).code() => {}
                    _ => {
                        j.reported.insert(digest);
                        progressed = true;
                    }
                }
            }
        }
        let Some((set, key_set)) = rs.chosen() else {
            return Ok(progressed);
        };
        let ks_hash = sha256(&[key_set]);
        if j.share
            .as_ref()
            .is_none_or(|(e, h, ..)| *e != rot.epoch() || *h != ks_hash)
        {
            let mut subs: Vec<(u32, Fr)> = Vec::with_capacity(set.len());
            let mut bad = None;
            for i in set {
                let d = rs
                    .dealing_of(*i)
                    .context("S names a dealing the MS does not hold")?;
                match open_sub_share(rot, d, k, &self.x25519_secret) {
                    Ok(v) => subs.push((*i, v)),
                    Err(e) => bad = Some((*i, e)),
                }
            }
            // Kept in memory only: after a restart it is computed again from the ordered
            // dealings, and a share that never starts a term is never on disk. A sub-share
            // of S that does not open (its accusation came too late: Handover needs only
            // 2f'+1 members) leaves this member without a share; it still runs the new
            // term's PBFT replica (docs/resharing.md).
            let share = match bad {
                None => Some(combine_share(rot, &subs)?),
                Some((i, e)) => {
                    tracing::warn!(dealer = i, error = %e, "a dealing of S is bad for this node; it joins the MS without a share");
                    None
                }
            };
            j.share = Some((rot.epoch(), ks_hash, k as u32, share));
        }
        let Some((_, _, _, share)) = j.share.clone() else {
            return Ok(progressed);
        };
        if let Some(share) = &share
            && status.retired.is_none()
            && !rs.handover_given(k as u32)
            && j.handover_sent != Some(ks_hash)
        {
            let mut sig = share.sign(handover_signing_bytes(rot.epoch(), key_set));
            if self.behaviour == MsBehaviour::RotationLiar {
                sig = blsttc::SecretKeySet::random(0, &mut blsttc::rand::rngs::OsRng)
                    .secret_key_share(0usize)
                    .sign(handover_signing_bytes(rot.epoch(), key_set));
            }
            let r = self
                .submit(
                    j,
                    status.epoch,
                    OpKind::HandoverShare {
                        share: sig.to_bytes(),
                    },
                )
                .await?;
            tracing::info!(outcome = ?r.outcome, "gave the handover share");
            if !matches!(r.outcome, Outcome::Rejected { .. })
                || self.behaviour == MsBehaviour::RotationLiar
            {
                j.handover_sent = Some(ks_hash);
                progressed = true;
            }
        }
        if let Some(successor) = status.retired
            && !runs_term_from(&self.slots, successor).await
        {
            self.take_over(j, successor, k as u32, share).await?;
            progressed = true;
        }
        Ok(progressed)
    }

    /// Fetches the state the old MS retired with and starts the new term from it.
    async fn take_over(
        &self,
        j: &mut Joining,
        successor: Epoch,
        k: u32,
        share: Option<SecretKeyShare>,
    ) -> anyhow::Result<()> {
        let me = self.key.node_id();
        // Read-only: answered only with 2f+1 matching replies of the old MS, so the state
        // is certified by 2f_ms+1 old replicas (PROTOCOL.md, step 5).
        let state = Self::query(j, QUERY_RETIRED_STATE).await?;
        let mut s = dbqs_ms::membership::MembershipState::decode(&state)?;
        anyhow::ensure!(
            s.retired() == Some(successor),
            "the retired state is not the handover of epoch {successor}"
        );
        s.take_over();
        let cfg = s.configuration();
        anyhow::ensure!(
            cfg.ms_members.get(k as usize) == Some(&me),
            "the new MS does not name this node at position {k}"
        );
        let keys = blsttc::PublicKeySet::from_bytes(cfg.ms_key_set.clone())
            .map_err(|e| anyhow::anyhow!("new key set: {e}"))?;
        anyhow::ensure!(
            share
                .as_ref()
                .is_none_or(|s| keys.public_key_share(k as usize) == s.public_key_share()),
            "this node's new share does not match the new key set"
        );
        let term = TermFile {
            epoch: successor,
            index: k,
            share: share.clone(),
            state,
        };
        term.save(&self.data_dir)?;
        self.start_term(term).await?;
        tracing::info!(epoch = successor, position = k, "this node joined the MS");
        Ok(())
    }

    /// Starts hosting the term of `t`.
    pub async fn start_term(&self, t: TermFile) -> anyhow::Result<()> {
        let (host, svc) = MsHost::start(
            MsHostParams {
                key: self.key.clone(),
                share: (t.index as usize, t.share),
                ms_key: self.ms_key,
                start: MsStart::Successor { state: t.state },
                tls: self.tls.clone(),
                data_path: self.data_dir.join(format!("ms-{}.redb", t.epoch)),
                behaviour: self.behaviour,
            },
            self.configs.clone(),
            self.peers.clone(),
        )
        .await?;
        self.slots.install(host, svc).await;
        Ok(())
    }

    /// The configuration whose old MS this node must deal with as a new member: the newest
    /// one if it names this node in `ms_next`; or, when the newest names it in the MS but
    /// this node hosts no such term (it was down at the handover), the configuration of
    /// the last few epochs that started that rotation, whose retired MS still answers for
    /// `RETIRED_GRACE_MS`. Later, only the next rotation gives this node a share again.
    async fn rotation_to_join(&self) -> Option<Configuration> {
        let me = self.key.node_id();
        let current = self.configs.current();
        if current.config.ms_next.contains(&me) {
            return Some((*current.config).clone());
        }
        if !current.config.ms_members.contains(&me) {
            return None;
        }
        let wanted = pbft_domain(&current.config);
        if self.slots.terms().await.iter().any(|(d, ..)| *d == wanted) {
            return None;
        }
        for e in (current.epoch().saturating_sub(LOOK_BACK_EPOCHS)..current.epoch()).rev() {
            let Ok(Some(cert)) = self.configs.get(e) else {
                continue;
            };
            let Ok(c) = Configuration::decode(&cert.configuration) else {
                continue;
            };
            if c.ms_next.contains(&me) && c.ms_next == current.config.ms_members {
                return Some(c);
            }
        }
        None
    }

    /// Stops and erases a term this node served once a later certified configuration
    /// names another MS (the new MS certified its first configuration, so this term
    /// retired), after the grace period. Deciding from certified configurations also ends
    /// a term this node restarted with after its peers had stopped it.
    async fn retire_step(&self, retired_seen: &mut Vec<([u8; 32], Instant)>) {
        let current = self.configs.current();
        let current_domain = pbft_domain(&current.config);
        for (domain, term, _, _) in self.slots.terms().await {
            if (domain == current_domain && !self.slots.superseded(&domain, term, current.epoch()))
                || current.epoch() < term
            {
                continue;
            }
            let successor = current.epoch();
            let since = match retired_seen.iter().find(|(d, _)| *d == domain) {
                Some((_, t)) => *t,
                None => {
                    retired_seen.push((domain, Instant::now()));
                    continue;
                }
            };
            if since.elapsed() < Duration::from_millis(RETIRED_GRACE_MS) {
                continue;
            }
            self.slots.remove(&domain, term).await;
            if term == 1 {
                if let Some(p) = &self.genesis_share_path {
                    erase_file(p);
                }
                let _ = std::fs::remove_file(self.data_dir.join("ms.redb"));
            } else {
                erase_file(&TermFile::path(&self.data_dir, term));
                let _ = std::fs::remove_file(self.data_dir.join(format!("ms-{term}.redb")));
            }
            retired_seen.retain(|(d, _)| *d != domain);
            tracing::info!(
                term,
                successor,
                "stopped a retired MS term and erased its share"
            );
        }
    }
}

/// The agent loop (module comment).
pub async fn run(agent: Agent, mut stop: watch::Receiver<bool>) {
    let mut joining: Option<Joining> = None;
    let mut retired_seen = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(AGENT_TICK_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        agent.retire_step(&mut retired_seen).await;
        let Some(config) = agent.rotation_to_join().await else {
            joining = None;
            continue;
        };
        let config = &config;
        let domain = pbft_domain(config);
        if joining.as_ref().is_none_or(|j| j.domain != domain) {
            match agent.joining(config) {
                Ok(j) => joining = Some(j),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reach the old MS");
                    continue;
                }
            }
        }
        let Some(j) = joining.as_mut() else { continue };
        match agent.join_step(j).await {
            Ok(true) => tick.reset_immediately(),
            Ok(false) => {}
            Err(e) => tracing::debug!(error = %e, "rotation step"),
        }
    }
}

/// Whether a term already runs that started at or after `epoch`.
async fn runs_term_from(slots: &MsSlots, epoch: Epoch) -> bool {
    slots.terms().await.iter().any(|(_, t, _, _)| *t >= epoch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share() -> SecretKeyShare {
        blsttc::SecretKeySet::random(1, &mut blsttc::rand::rngs::OsRng).secret_key_share(2)
    }

    #[test]
    fn a_term_file_round_trips_with_and_without_a_share_and_refuses_damage() {
        let dir = tempfile::tempdir().unwrap();
        for s in [Some(share()), None] {
            let t = TermFile {
                epoch: 9,
                index: 2,
                share: s.clone(),
                state: vec![1, 2, 3],
            };
            let b = t.encode();
            let back = TermFile::decode(&b).unwrap();
            assert_eq!((back.epoch, back.index, back.state), (9, 2, vec![1, 2, 3]));
            assert_eq!(
                back.share.map(|s| s.public_key_share()),
                s.map(|s| s.public_key_share())
            );
            for n in 0..b.len() {
                assert!(TermFile::decode(&b[..n]).is_err(), "truncated at {n}");
            }
            t.save(dir.path()).unwrap();
        }
        let all = TermFile::load_all(dir.path()).unwrap();
        assert_eq!(all.len(), 1, "one file per term epoch");
        let path = TermFile::path(dir.path(), 9);
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        erase_file(&path);
        assert!(!path.exists());
        assert!(TermFile::load_all(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn the_term_file_decoder_never_panics_on_garbage() {
        use rand::RngCore as _;
        let mut rng = rand::thread_rng();
        for len in 0..512 {
            let mut b = vec![0u8; len];
            rng.fill_bytes(&mut b);
            let _ = TermFile::decode(&b);
            let mut tagged = Writer::tagged("ms-term").finish();
            tagged.extend_from_slice(&b);
            let _ = TermFile::decode(&tagged);
        }
    }
}
