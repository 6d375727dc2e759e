//! The node's epoch manager: the newest configuration certificate it verified, published
//! on a `watch` channel that the storage service, the lease keeper and the MS host read
//! (ARCHITECTURE.md, "Runtime shape of a node").
//!
//! A certificate is adopted only if it verifies with the MS public key from genesis and is
//! newer than the current one; it is made durable (store meta + chain of certificates)
//! before the channel moves, so a restarted node never goes back to an older epoch.
//!
//! Epochs are adopted one at a time (PROTOCOL.md: "nobody skips an epoch"): each step
//! e → e+1 computes, in the same store transaction that records e+1, the ranges this
//! node must take over from e's groups (`transfer::plan::next_pending`). A certificate
//! beyond a gap is kept in the chain and reported (`Offered::gap_to`); the caller
//! fetches the missing ones.

use std::collections::BTreeMap;
use std::sync::Mutex;

use dbqs_common::threshold::MsPublicKey;
use dbqs_common::{ActiveConfig, ConfigCert, Epoch};
use thiserror::Error;
use tokio::sync::watch;

use crate::store::{ObjectStore, StoreError};
use crate::transfer::plan::{Pending, Range, next_pending};
use dbqs_common::NodeId;

/// Most certificates one push may carry.
pub const MAX_CERTS_PER_PUSH: usize = 64;

#[derive(Debug, Error)]
pub enum ConfigOfferError {
    #[error("{got} certificates in one push; at most {MAX_CERTS_PER_PUSH}")]
    TooMany { got: usize },
    #[error("certificate of epoch {epoch} does not verify with the MS public key: {reason}")]
    Invalid { epoch: Epoch, reason: String },
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// What an offer of certificates changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offered {
    /// The node's epoch before and after.
    pub from: Epoch,
    pub to: Epoch,
    /// A verified certificate newer than `to + 1` whose predecessors are missing.
    pub gap_to: Option<Epoch>,
}

impl Offered {
    pub fn adopted(&self) -> bool {
        self.to > self.from
    }
}

pub struct ConfigManager {
    ms_key: MsPublicKey,
    store: ObjectStore,
    me: NodeId,
    tx: watch::Sender<ActiveConfig>,
    pending: watch::Sender<Pending>,
    /// Serialises adoptions and pending updates (verification happens before).
    adopt: Mutex<()>,
    /// Older configurations verified for [`ConfigManager::verified`].
    verified: Mutex<std::collections::BTreeMap<Epoch, ActiveConfig>>,
    /// Where the node records the newest epoch it adopted, outside the store
    /// ([`EPOCH_FLOOR_FILE`]).
    floor_file: Option<std::path::PathBuf>,
    /// TLS certificate hashes of the members of every configuration this node adopted
    /// or holds (at most [`KNOWN_NODES_MAX`]): who may ask for transfer data by an older
    /// configuration, checked before any older configuration is verified for them.
    known_nodes: Mutex<std::collections::HashSet<[u8; 32]>>,
}

/// Most TLS hashes [`ConfigManager::known_node`] remembers.
pub const KNOWN_NODES_MAX: usize = 1 << 20;
/// Stored configurations, newest first, whose members are remembered at start.
const KNOWN_NODES_SCAN_EPOCHS: u64 = 256;

/// The file, beside the store, in which a node records the newest epoch it adopted. A
/// store found at an older epoch at start (emptied, replaced, restored from an older
/// copy) is rebuilt, and a rebuild never starts below it (PROTOCOL.md, "State transfer"
/// 7). Written after the store records the epoch, so it never runs ahead of what the
/// node served. It names the cluster (a hash of the MS public key): a file left by
/// another cluster (genesis run again over old data directories) is ignored. It belongs
/// to the data directory: back it up and restore it with `store.redb`.
pub const EPOCH_FLOOR_FILE: &str = "last-epoch";
const EPOCH_FLOOR_TAG: &str = "dbqs-last-epoch-v1";

fn cluster_tag(ms_key: &MsPublicKey) -> String {
    hex::encode(&dbqs_common::codec::sha256(&[b"dbqs-cluster", &ms_key.to_bytes()])[..16])
}

/// The epoch recorded in `path` for the cluster of `ms_key` (0 if the file is absent,
/// unreadable, or another cluster's).
pub fn read_epoch_floor(path: &std::path::Path, ms_key: &MsPublicKey) -> Epoch {
    let Ok(text) = std::fs::read_to_string(path) else {
        return 0;
    };
    let mut words = text.split_whitespace();
    match (words.next(), words.next(), words.next(), words.next()) {
        (Some(EPOCH_FLOOR_TAG), Some(cluster), Some(e), None) => match e.parse::<Epoch>() {
            Ok(e) if cluster == cluster_tag(ms_key) => e,
            Ok(_) => {
                tracing::warn!(file = %path.display(), "the last-epoch file is another cluster's; ignoring it");
                0
            }
            Err(_) => {
                tracing::warn!(file = %path.display(), "the last-epoch file is unreadable; ignoring it");
                0
            }
        },
        _ => {
            tracing::warn!(file = %path.display(), "the last-epoch file is unreadable; ignoring it");
            0
        }
    }
}

/// Records `epoch` for the cluster of `ms_key` in `path` durably (a new file, synced,
/// renamed over the old one).
pub fn write_epoch_floor(
    path: &std::path::Path,
    ms_key: &MsPublicKey,
    epoch: Epoch,
) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        let line = format!("{EPOCH_FLOOR_TAG} {} {epoch}\n", cluster_tag(ms_key));
        f.write_all(line.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Older configurations [`ConfigManager::verified`] keeps verified.
pub const VERIFIED_CACHE: usize = 16;

impl ConfigManager {
    /// Starts from `current`, which the caller verified and made durable, with the
    /// pending ranges the store recorded for it.
    pub fn new(
        ms_key: MsPublicKey,
        store: ObjectStore,
        me: NodeId,
        current: ActiveConfig,
    ) -> Result<ConfigManager, StoreError> {
        let pending = match store.pending()? {
            None => Pending::default(),
            Some(b) => Pending::decode(&b)
                .map_err(|e| StoreError::Engine(format!("stored transfer state: {e}")))?,
        };
        let (tx, _) = watch::channel(current);
        let (pending, _) = watch::channel(pending);
        Ok(ConfigManager {
            ms_key,
            store,
            me,
            tx,
            pending,
            adopt: Mutex::new(()),
            verified: Mutex::new(std::collections::BTreeMap::new()),
            floor_file: None,
            known_nodes: Mutex::new(std::collections::HashSet::new()),
        }
        .remembering_stored_members())
    }

    /// Remembers the members of the configurations the store holds (the newest
    /// [`KNOWN_NODES_SCAN_EPOCHS`]); they were verified when they were adopted.
    fn remembering_stored_members(self) -> Self {
        let cur = self.current();
        self.remember(&cur);
        let from = cur.epoch().saturating_sub(KNOWN_NODES_SCAN_EPOCHS).max(1);
        for e in from..cur.epoch() {
            if let Ok(Some(b)) = self.store.config_at(e)
                && let Ok(cert) = ConfigCert::decode(&b)
                && let Ok(cfg) = dbqs_common::Configuration::decode(&cert.configuration)
            {
                let mut known = self.known_nodes.lock().unwrap_or_else(|e| e.into_inner());
                for m in &cfg.members {
                    if known.len() < KNOWN_NODES_MAX {
                        known.insert(m.tls_cert_hash);
                    }
                }
            }
        }
        self
    }

    fn remember(&self, cfg: &ActiveConfig) {
        let mut known = self.known_nodes.lock().unwrap_or_else(|e| e.into_inner());
        for m in &cfg.config.members {
            if known.len() < KNOWN_NODES_MAX {
                known.insert(m.tls_cert_hash);
            }
        }
    }

    /// Whether a TLS certificate with this hash was a member's in a configuration this
    /// node adopted or holds.
    pub fn known_node(&self, tls_cert_hash: &[u8; 32]) -> bool {
        self.known_nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(tls_cert_hash)
    }

    /// Records each adopted epoch in `path` too ([`EPOCH_FLOOR_FILE`]).
    pub fn with_epoch_floor_file(mut self, path: std::path::PathBuf) -> Self {
        self.floor_file = Some(path);
        self
    }

    /// The node this manager belongs to.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// The ranges still to take over in the current epoch.
    pub fn pending(&self) -> Pending {
        self.pending.borrow().clone()
    }

    pub fn subscribe_pending(&self) -> watch::Receiver<Pending> {
        self.pending.subscribe()
    }

    /// Records that the node deletes `r` (a range it no longer serves) in `epoch`;
    /// refused if the node moved on meanwhile or is taking `r` over.
    pub fn record_deleted(&self, epoch: Epoch, r: &Range) -> Result<(), StoreError> {
        let _guard = self.adopt.lock().unwrap_or_else(|e| e.into_inner());
        let mut p = self.pending();
        if self.epoch() != epoch || p.overlaps(r) {
            return Err(StoreError::EpochChanged {
                store: self.epoch(),
                write: epoch,
            });
        }
        if p.deleted.len() >= crate::transfer::plan::MAX_RANGES {
            return Err(StoreError::Engine(
                "too many deleted ranges recorded".into(),
            ));
        }
        p.deleted.insert(*r);
        self.store.set_pending(&p.encode())?;
        self.pending.send_replace(p);
        Ok(())
    }

    /// Gives up taking over `r`, a pending range the node no longer serves in `epoch`
    /// and whose newest group holds it: it is recorded as deleted (never listed as a
    /// source again) in the same write. Refused if the node moved on meanwhile.
    pub fn drop_pending(&self, epoch: Epoch, r: &Range) -> Result<(), StoreError> {
        let _guard = self.adopt.lock().unwrap_or_else(|e| e.into_inner());
        let mut p = self.pending();
        if self.epoch() != epoch || !p.ranges.contains_key(r) {
            return Err(StoreError::EpochChanged {
                store: self.epoch(),
                write: epoch,
            });
        }
        if p.deleted.len() >= crate::transfer::plan::MAX_RANGES {
            return Err(StoreError::Engine(
                "too many deleted ranges recorded".into(),
            ));
        }
        p.ranges.remove(r);
        p.deleted.insert(*r);
        self.store.set_pending(&p.encode())?;
        self.pending.send_replace(p);
        Ok(())
    }

    /// Records that `r` was taken over from the group of epoch `from` (its next stage,
    /// or done: `Pending::complete`). A range keeps its source across epochs, so this
    /// counts whatever the node's epoch is now.
    pub fn complete(&self, r: &Range, from: Epoch) -> Result<(), StoreError> {
        let _guard = self.adopt.lock().unwrap_or_else(|e| e.into_inner());
        let mut p = self.pending();
        p.complete(r, from);
        self.store.set_pending(&p.encode())?;
        self.pending.send_replace(p);
        Ok(())
    }

    pub fn ms_key(&self) -> &MsPublicKey {
        &self.ms_key
    }

    pub fn current(&self) -> ActiveConfig {
        self.tx.borrow().clone()
    }

    pub fn epoch(&self) -> Epoch {
        self.tx.borrow().epoch()
    }

    pub fn subscribe(&self) -> watch::Receiver<ActiveConfig> {
        self.tx.subscribe()
    }

    /// Verifies `certs`, keeps them in the chain, and adopts epochs one at a time from
    /// the current one as far as the chain reaches. Fails on the first certificate that
    /// does not verify (a peer that claims an epoch it cannot prove is ignored).
    pub fn offer(&self, certs: &[ConfigCert]) -> Result<Offered, ConfigOfferError> {
        if certs.len() > MAX_CERTS_PER_PUSH {
            return Err(ConfigOfferError::TooMany { got: certs.len() });
        }
        let from = self.epoch();
        let mut newest = from;
        // Verified here, adopted below without a second BLS verification (issue [G]: a
        // pushed certificate was verified twice, once on offer and once on adoption).
        let mut verified: BTreeMap<Epoch, ActiveConfig> = BTreeMap::new();
        for c in certs {
            if self.store.config_at(c.epoch)?.is_some() {
                newest = newest.max(c.epoch);
                continue;
            }
            let active = ActiveConfig::verify(c.clone(), &self.ms_key).map_err(|e| {
                ConfigOfferError::Invalid {
                    epoch: c.epoch,
                    reason: e.to_string(),
                }
            })?;
            self.store
                .put_config(active.epoch(), &active.cert.encode())?;
            newest = newest.max(active.epoch());
            verified.insert(active.epoch(), active);
        }
        let _guard = self.adopt.lock().unwrap_or_else(|e| e.into_inner());
        let start = self.epoch();
        loop {
            let cur = self.current();
            let next_epoch = cur.epoch() + 1;
            let Some(bytes) = self.store.config_at(next_epoch)? else {
                break;
            };
            // A certificate stored by an earlier offer is verified again: the store is
            // a file, and what comes back from it is checked like anything else.
            let next = match verified.remove(&next_epoch) {
                Some(v) => v,
                None => {
                    let cert = ConfigCert::decode(&bytes).map_err(|e| {
                        StoreError::Engine(format!("stored certificate {next_epoch}: {e}"))
                    })?;
                    ActiveConfig::verify(cert, &self.ms_key).map_err(|e| {
                        ConfigOfferError::Invalid {
                            epoch: next_epoch,
                            reason: e.to_string(),
                        }
                    })?
                }
            };
            let pending = next_pending(&cur, &next, &self.me, &self.pending());
            if !self
                .store
                .set_epoch_with_pending(next_epoch, &bytes, &pending.encode())?
            {
                break;
            }
            tracing::info!(
                from = cur.epoch(),
                to = next_epoch,
                members = next.config.members.len(),
                ranges_to_take_over = pending.ranges.len(),
                "adopted configuration"
            );
            if cur.member(&self.me).is_some() && next.member(&self.me).is_none() {
                tracing::warn!(
                    epoch = next_epoch,
                    node = %self.me,
                    "this node is not a member of the new configuration (removed, or evicted \
                     after failing the MS's probes): it serves no client until it is a member \
                     again (an evicted node submits its own AddCert to rejoin; a removed one \
                     needs an admin), and only finishes the take-overs other members may need \
                     it for as a source of earlier epochs"
                );
            }
            self.pending.send_replace(pending);
            self.remember(&next);
            self.tx.send_replace(next);
            if let Some(path) = &self.floor_file
                && let Err(e) = write_epoch_floor(path, &self.ms_key, next_epoch)
            {
                // A lower bound only: the store holds the epoch itself.
                tracing::warn!(file = %path.display(), error = %e, "cannot record the last epoch");
            }
        }
        let to = self.epoch();
        Ok(Offered {
            from: from.min(start),
            to,
            gap_to: (newest > to).then_some(newest),
        })
    }

    /// The configuration of `epoch` (0: the current one), verified, if the node holds
    /// it. Older ones are verified once and kept in a small cache
    /// ([`VERIFIED_CACHE`] epochs), so transfer requests naming them cost a lookup.
    pub fn verified(&self, epoch: Epoch) -> Result<Option<ActiveConfig>, StoreError> {
        let cur = self.current();
        if epoch == 0 || epoch == cur.epoch() {
            return Ok(Some(cur));
        }
        if let Some(a) = self
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&epoch)
        {
            return Ok(Some(a.clone()));
        }
        let Some(cert) = self.get(epoch)? else {
            return Ok(None);
        };
        let Ok(a) = ActiveConfig::verify(cert, &self.ms_key) else {
            return Ok(None);
        };
        let mut cache = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= VERIFIED_CACHE {
            // The oldest epoch goes first: take-overs name recent ones.
            let oldest = cache.keys().next().copied();
            if let Some(k) = oldest {
                cache.remove(&k);
            }
        }
        drop(cache);
        self.remember(&a);
        self.verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(epoch, a.clone());
        Ok(Some(a))
    }

    /// The certificate of `epoch` (0: the current one), if the node holds it.
    pub fn get(&self, epoch: Epoch) -> Result<Option<ConfigCert>, StoreError> {
        let cur = self.current();
        if epoch == 0 || epoch == cur.epoch() {
            return Ok(Some((*cur.cert).clone()));
        }
        match self.store.config_at(epoch)? {
            None => Ok(None),
            Some(b) => ConfigCert::decode(&b)
                .map(Some)
                .map_err(|e| StoreError::Engine(format!("stored certificate {epoch}: {e}"))),
        }
    }
}
