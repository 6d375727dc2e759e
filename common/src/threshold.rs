//! The MS threshold key (BLS12-381 via blsttc): t = f_ms+1 of 3f_ms+1 shares.
//!
//! The MS member at 1-based position p of the configuration's MS list holds the
//! share evaluated at x = p (blsttc's share index p-1).

use blsttc::{
    PublicKey as BlsPublicKey, PublicKeySet, SecretKeySet, SecretKeyShare, Signature,
    SignatureShare,
};
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ThresholdError {
    #[error("malformed BLS {0}")]
    Malformed(&'static str),
    #[error("need {need} valid signature shares, have {have}")]
    NotEnoughShares { need: usize, have: usize },
    #[error("combined signature does not verify")]
    Invalid,
}

/// The MS public key: one BLS public key (48 bytes) that never changes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct MsPublicKey(pub BlsPublicKey);

impl MsPublicKey {
    pub fn to_bytes(&self) -> [u8; 48] {
        self.0.to_bytes()
    }

    pub fn from_bytes(b: &[u8]) -> Result<Self, ThresholdError> {
        let a: [u8; 48] = b
            .try_into()
            .map_err(|_| ThresholdError::Malformed("public key"))?;
        BlsPublicKey::from_bytes(a)
            .map(MsPublicKey)
            .map_err(|_| ThresholdError::Malformed("public key"))
    }

    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> Result<(), ThresholdError> {
        let sig = signature_from_bytes(sig)?;
        if self.0.verify(&sig, msg) {
            Ok(())
        } else {
            Err(ThresholdError::Invalid)
        }
    }
}

pub fn signature_from_bytes(b: &[u8]) -> Result<Signature, ThresholdError> {
    let a: [u8; 96] = b
        .try_into()
        .map_err(|_| ThresholdError::Malformed("signature"))?;
    Signature::from_bytes(a).map_err(|_| ThresholdError::Malformed("signature"))
}

/// The trusted genesis dealer: a fresh key split into `n` shares of threshold
/// `f_ms+1`. Returns the public key set and the shares in MS-list order; the
/// master secret is dropped here.
pub fn deal(n: usize, f_ms: u32) -> (PublicKeySet, Vec<SecretKeyShare>) {
    let sks = SecretKeySet::random(f_ms as usize, &mut rand::rngs::OsRng);
    let shares = (0..n).map(|i| sks.secret_key_share(i)).collect();
    (sks.public_keys(), shares)
}

/// Combines signature shares (0-based share index, share) over `msg`.
///
/// Tries the combination of the first t shares and checks the result once; only
/// when that fails does it check shares one by one to drop the bad ones (a single
/// share check costs about as much as a combined one).
pub fn combine(
    pks: &PublicKeySet,
    msg: &[u8],
    shares: &[(usize, SignatureShare)],
) -> Result<Signature, ThresholdError> {
    let t = pks.threshold() + 1;
    if shares.len() >= t {
        let first: Vec<_> = shares[..t].iter().map(|(i, s)| (*i, s)).collect();
        if let Ok(sig) = pks.combine_signatures(first)
            && pks.public_key().verify(&sig, msg)
        {
            return Ok(sig);
        }
    }
    let valid: Vec<_> = shares
        .iter()
        .filter(|(i, s)| pks.public_key_share(*i).verify(s, msg))
        .take(t)
        .map(|(i, s)| (*i, s))
        .collect();
    if valid.len() < t {
        return Err(ThresholdError::NotEnoughShares {
            need: t,
            have: valid.len(),
        });
    }
    let sig = pks
        .combine_signatures(valid)
        .map_err(|_| ThresholdError::Invalid)?;
    if pks.public_key().verify(&sig, msg) {
        Ok(sig)
    } else {
        Err(ThresholdError::Invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_t_valid_shares_combine_and_bad_shares_are_skipped() {
        let (pks, shares) = deal(4, 1);
        let msg = b"dbqs.v1.test\0m";
        let sig_shares: Vec<_> = shares
            .iter()
            .enumerate()
            .map(|(i, s)| (i, s.sign(msg)))
            .collect();
        let pk = MsPublicKey(pks.public_key());
        let sig = combine(&pks, msg, &sig_shares[2..]).unwrap();
        pk.verify(msg, &sig.to_bytes()).unwrap();

        // A faulty member's share over another message comes first.
        let bad = (0, shares[0].sign(b"other"));
        let mixed = vec![bad, sig_shares[1].clone(), sig_shares[3].clone()];
        let sig = combine(&pks, msg, &mixed).unwrap();
        pk.verify(msg, &sig.to_bytes()).unwrap();

        let too_few = vec![sig_shares[1].clone()];
        assert!(matches!(
            combine(&pks, msg, &too_few),
            Err(ThresholdError::NotEnoughShares { need: 2, have: 1 })
        ));
        assert!(pk.verify(b"other", &sig.to_bytes()).is_err());
    }
}
