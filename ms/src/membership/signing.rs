//! Threshold signing helpers, sans-IO (PROTOCOL.md, "Membership service", EndEpoch and
//! Freshness): each MS replica signs with its blsttc key share; a collector gathers shares
//! from distinct replicas and combines any f_ms+1 valid ones with
//! `dbqs_common::threshold::combine`. Single shares are checked only when a combination
//! fails, to find and report the bad ones (PROTOCOL.md: "check the combined signature; check
//! single shares only to find a bad one").
//!
//! The signer of share index i (0-based) is the MS member at list position i of the
//! configuration whose key set signs (PROTOCOL.md: evaluation point = 1-based position).

use std::collections::BTreeSet;

use blsttc::{PublicKeySet, SecretKeyShare, SignatureShare};
use dbqs_common::codec::sha256;
use dbqs_common::config::{ConfigCert, Configuration};
use dbqs_common::identity::NodeId;
use dbqs_common::threshold::{ThresholdError, combine};
use dbqs_common::{Epoch, threshold};
use thiserror::Error;

use super::freshness::{self, FreshnessProof};

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ShareError {
    #[error("{0} is not an MS member of the signing configuration")]
    UnknownSigner(NodeId),
    #[error("{0} already gave a share")]
    Duplicate(NodeId),
    #[error("malformed signature share")]
    Malformed,
    #[error("the signing configuration's MS key set is malformed")]
    BadKeySet,
}

/// Asks this replica to sign the configuration of `epoch` whose hash is `config_hash`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignRequest {
    pub epoch: Epoch,
    pub config_hash: [u8; 32],
}

impl SignRequest {
    pub fn signing_bytes(&self) -> Vec<u8> {
        Configuration::signing_bytes(self.epoch, &self.config_hash)
    }

    pub fn sign(&self, share: &SecretKeyShare) -> SignatureShare {
        share.sign(self.signing_bytes())
    }
}

/// This replica's share over a freshness batch (`freshness::signing_bytes`).
pub fn sign_freshness(share: &SecretKeyShare, root: &[u8; 32], epoch: Epoch) -> SignatureShare {
    share.sign(freshness::signing_bytes(root, epoch))
}

/// A 96-byte signature share from the wire.
pub fn share_from_bytes(b: &[u8]) -> Result<SignatureShare, ShareError> {
    let a: [u8; 96] = b.try_into().map_err(|_| ShareError::Malformed)?;
    SignatureShare::from_bytes(a).map_err(|_| ShareError::Malformed)
}

/// Where a collector stands after a share arrived.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    Collecting {
        valid_or_unchecked: usize,
        need: usize,
    },
    Complete,
}

/// Collects shares over one message from the signers of one MS list.
#[derive(Clone, Debug)]
struct Collector {
    pks: PublicKeySet,
    signers: Vec<NodeId>,
    msg: Vec<u8>,
    /// (0-based share index, share), in arrival order; at most one per signer.
    shares: Vec<(usize, SignatureShare)>,
    bad: BTreeSet<NodeId>,
    signature: Option<[u8; 96]>,
}

impl Collector {
    fn new(signing: &Configuration, msg: Vec<u8>) -> Result<Collector, ShareError> {
        let pks = PublicKeySet::from_bytes(signing.ms_key_set.clone())
            .map_err(|_| ShareError::BadKeySet)?;
        Ok(Collector {
            pks,
            signers: signing.ms_members.clone(),
            msg,
            shares: Vec::new(),
            bad: BTreeSet::new(),
            signature: None,
        })
    }

    fn need(&self) -> usize {
        self.pks.threshold() + 1
    }

    fn add(&mut self, from: NodeId, share: SignatureShare) -> Result<Progress, ShareError> {
        if self.signature.is_some() {
            return Ok(Progress::Complete);
        }
        let index = self
            .signers
            .iter()
            .position(|s| *s == from)
            .ok_or(ShareError::UnknownSigner(from))?;
        if self.bad.contains(&from) || self.shares.iter().any(|(i, _)| *i == index) {
            return Err(ShareError::Duplicate(from));
        }
        self.shares.push((index, share));
        let need = self.need();
        if self.shares.len() >= need {
            match combine(&self.pks, &self.msg, &self.shares[..need]) {
                Ok(sig) => self.signature = Some(sig.to_bytes()),
                Err(ThresholdError::NotEnoughShares { .. } | ThresholdError::Invalid) => {
                    self.drop_bad_shares();
                    if self.shares.len() >= need
                        && let Ok(sig) = combine(&self.pks, &self.msg, &self.shares)
                    {
                        self.signature = Some(sig.to_bytes());
                    }
                }
                Err(ThresholdError::Malformed(_)) => {}
            }
        }
        Ok(match self.signature {
            Some(_) => Progress::Complete,
            None => Progress::Collecting {
                valid_or_unchecked: self.shares.len(),
                need,
            },
        })
    }

    /// The combination failed, so at least one share is bad: check each one.
    fn drop_bad_shares(&mut self) {
        let (pks, msg) = (&self.pks, &self.msg);
        let mut bad = Vec::new();
        self.shares.retain(|(i, s)| {
            let ok = pks.public_key_share(*i).verify(s, msg);
            if !ok {
                bad.push(*i);
            }
            ok
        });
        for i in bad {
            self.bad.insert(self.signers[i]);
        }
    }
}

/// Turns signature shares over the next configuration into its `ConfigCert`.
#[derive(Clone, Debug)]
pub struct ShareCollector {
    inner: Collector,
    epoch: Epoch,
    configuration: Vec<u8>,
}

impl ShareCollector {
    /// `signing` is the configuration whose MS signs (for epoch e+1: configuration e);
    /// `configuration` the canonical bytes of the configuration being certified.
    pub fn new(
        signing: &Configuration,
        epoch: Epoch,
        configuration: Vec<u8>,
    ) -> Result<ShareCollector, ShareError> {
        let msg = Configuration::signing_bytes(epoch, &sha256(&[&configuration]));
        Ok(ShareCollector {
            inner: Collector::new(signing, msg)?,
            epoch,
            configuration,
        })
    }

    /// Adds the share `from` sent (`from` as the authenticated channel names it).
    pub fn add(&mut self, from: NodeId, share: SignatureShare) -> Result<Progress, ShareError> {
        self.inner.add(from, share)
    }

    /// Signers whose shares failed verification; evidence for operators, never counted.
    pub fn bad_shares(&self) -> &BTreeSet<NodeId> {
        &self.inner.bad
    }

    /// The certificate, once f_ms+1 valid shares combined.
    pub fn cert(&self) -> Option<ConfigCert> {
        self.inner.signature.map(|s| ConfigCert {
            epoch: self.epoch,
            configuration: self.configuration.clone(),
            signature: s.to_vec(),
        })
    }
}

/// Turns signature shares over one executed freshness batch into transferable proofs.
#[derive(Clone, Debug)]
pub struct FreshnessCombiner {
    inner: Collector,
    epoch: Epoch,
    root: [u8; 32],
    leaf_count: u32,
}

impl FreshnessCombiner {
    /// `signing` is the configuration of `epoch` (its MS executed the batch).
    pub fn new(
        signing: &Configuration,
        epoch: Epoch,
        root: [u8; 32],
        leaf_count: u32,
    ) -> Result<FreshnessCombiner, ShareError> {
        Ok(FreshnessCombiner {
            inner: Collector::new(signing, freshness::signing_bytes(&root, epoch))?,
            epoch,
            root,
            leaf_count,
        })
    }

    pub fn add(&mut self, from: NodeId, share: SignatureShare) -> Result<Progress, ShareError> {
        self.inner.add(from, share)
    }

    pub fn bad_shares(&self) -> &BTreeSet<NodeId> {
        &self.inner.bad
    }

    /// The proof for `nonce` at `index` with its Merkle `path`, once the signature combined.
    /// The proof is checked before it is handed out, so a wrong path is caught here.
    pub fn proof(
        &self,
        nonce: [u8; 32],
        index: u32,
        path: Vec<[u8; 32]>,
    ) -> Option<FreshnessProof> {
        let signature = self.inner.signature?;
        freshness::verify_path(&nonce, index, self.leaf_count, &path, &self.root).ok()?;
        Some(FreshnessProof {
            nonce,
            epoch: self.epoch,
            root: self.root,
            leaf_count: self.leaf_count,
            index,
            path,
            signature,
        })
    }
}

/// The MS public key of a configuration (its key set's group key).
pub fn ms_public_key(config: &Configuration) -> Result<threshold::MsPublicKey, ShareError> {
    PublicKeySet::from_bytes(config.ms_key_set.clone())
        .map(|p| threshold::MsPublicKey(p.public_key()))
        .map_err(|_| ShareError::BadKeySet)
}
