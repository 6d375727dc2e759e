//! MS rotation and key resharing, the cryptographic core (PROTOCOL.md, "MS rotation and
//! resharing", steps 1–4). Sans-IO and deterministic given its inputs: the only randomness
//! is the RNG a dealer passes to [`deal`] and an accuser to [`accuse`]; everything a replica
//! checks ([`verify_dealing`], [`check_accusation`], [`combine_key_set`]) is a pure function
//! of ordered data.
//!
//! Not here (docs/resharing.md): ordering dealings, acknowledgements and accusations through
//! PBFT, choosing S from that order, Handover, share erasure, and hosting the new MS.
//!
//! Evaluation points follow PROTOCOL.md: the member at 0-based list position `k` holds the
//! share at x = k+1 (blsttc's share index k), in the old list for old shares and in the new
//! list for new ones.

use std::collections::BTreeSet;

use blsttc::group::ff::Field;
use blsttc::group::{Curve, Group};
use blsttc::poly::{Commitment, Poly};
use blsttc::rand::{CryptoRng, RngCore};
use blsttc::{Fr, G1Affine, G1Projective, PublicKeySet, SecretKeyShare};
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{ChaCha20Poly1305, KeyInit, Nonce};
use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::montgomery::MontgomeryPoint;
use curve25519_dalek::scalar::{Scalar, clamp_integer};
use curve25519_dalek::traits::IsIdentity;
use dbqs_common::Epoch;
use dbqs_common::codec::{DecodeError, Reader, Writer, sha256};
use dbqs_common::config::{Configuration, MAX_MS_MEMBERS};
use dbqs_common::identity::NodeId;
use dbqs_common::quorum::{group_size, ms_f_for};
use sha2::{Digest, Sha256, Sha512};
use thiserror::Error;
use x25519_dalek::{PublicKey as XPublic, StaticSecret};

/// Bytes of one compressed BLS12-381 G1 point (a commitment coefficient).
const G1_BYTES: usize = 48;
/// Bytes of one sealed sub-share: a 32-byte big-endian scalar and a 16-byte Poly1305 tag.
pub const SEALED_SUB_SHARE_BYTES: usize = 32 + 16;
/// Most coefficients a dealing's commitment may have (t' ≤ the new MS size).
pub const MAX_COMMITMENT_COEFFS: usize = MAX_MS_MEMBERS;
/// Most recipients (new MS members) a dealing may address.
pub const MAX_RECIPIENTS: usize = MAX_MS_MEMBERS;
/// Encoded size of an [`Accusation`].
pub const ACCUSATION_BYTES: usize = TAG_ACCUSATION.len() + 9 + 8 + 4 + 32 + 4 + 32 + 32 * 3;

const TAG_DEALING: &str = "ms-dealing";
const TAG_ACCUSATION: &str = "ms-accusation";
const TAG_DRAW: &str = "ms-draw";
const TAG_KDF: &str = "ms-reshare-kdf";
const TAG_AAD: &str = "ms-subshare";
const TAG_POK: &str = "ms-ephemeral-pok";
const TAG_DLEQ: &str = "ms-accusation-dleq";

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReshareError {
    #[error("malformed: {0}")]
    Decode(#[from] DecodeError),
    #[error("invalid rotation: {0}")]
    InvalidRotation(&'static str),
    #[error("dealing is for epoch {have}, the rotation for {want}")]
    WrongEpoch { have: Epoch, want: Epoch },
    #[error("dealer index {0} is not the dealer's position in the old MS list")]
    UnknownDealer(u32),
    #[error("commitment has {have} coefficients, need t' = {want}")]
    WrongDegree { have: usize, want: usize },
    #[error("commitment at 0 is not the dealer's old public key share")]
    CommitmentMismatch,
    #[error("dealing has {have} sub-shares for {want} new members")]
    WrongRecipientCount { have: usize, want: usize },
    #[error("ephemeral key is not a prime-order curve point")]
    BadEphemeralKey,
    #[error("proof of knowledge of the ephemeral key does not verify")]
    BadEphemeralProof,
    #[error("recipient index {0} is not in the new MS list")]
    UnknownRecipient(usize),
    #[error("need exactly t = {want} dealings from distinct dealers, have {have}")]
    WrongDealingSet { have: usize, want: usize },
    #[error("the combined key set does not keep the group public key")]
    GroupKeyChanged,
    #[error("malformed secret key share")]
    BadShare,
    #[error("the sub-share is good; there is nothing to accuse")]
    NothingToAccuse,
    #[error("this recipient's x25519 key is not a prime-order point; it cannot accuse")]
    UnprovableRecipientKey,
}

/// Why a sub-share is bad (for the recipient, and when an accusation is upheld).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum SubShareFault {
    #[error("the sealed sub-share does not decrypt")]
    Undecryptable,
    #[error("the plaintext is not a canonical scalar")]
    NotAScalar,
    #[error("the sub-share does not match the commitment")]
    Mismatch,
}

/// Why an accusation is rejected (the accuser is wrong or could not prove its claim).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum AccusationRejected {
    #[error("the accusation names another dealing, dealer or epoch")]
    WrongDealing,
    #[error("the accuser is not the named new MS member")]
    UnknownAccuser,
    #[error("the accuser's x25519 key is not a prime-order point")]
    BadAccuserKey,
    #[error("the revealed shared point or its DLEQ proof is invalid")]
    BadProof,
    #[error("the sub-share decrypts and matches the commitment")]
    SubShareValid,
}

/// MS fault threshold's size rule (PROTOCOL.md, fault model): 3·f_ms+1 members for a system
/// of `n_members` nodes, with `f_ms` from [`ms_f_for`].
pub fn ms_size_for(n_members: usize, ms_f_max: u32) -> usize {
    group_size(ms_f_for(n_members, ms_f_max))
}

/// Signature threshold of an MS of `ms_size` members: t = f_ms+1 with f_ms = ⌊(size−1)/3⌋.
pub fn threshold_for(ms_size: usize) -> usize {
    ms_size.saturating_sub(1) / 3 + 1
}

/// r_e for a ConfigCert's combined signature, as for ring positions (PROTOCOL.md).
pub fn r_e_of(signature: &[u8]) -> [u8; 32] {
    sha256(&[signature])
}

/// Step 1: draws the new MS from the members of configuration e. Members are ordered by
/// SHA-256(tag "ms-draw" ‖ r_e ‖ NodeId) and the first `size` (all, if fewer) are taken, in
/// that order, which becomes the new MS list (and so the new evaluation points). Nobody
/// can steer the draw: r_e is fixed only when the old MS signs ConfigCert e.
/// The caller passes only the members eligible to serve (not leaving).
pub fn next_ms(members: &[NodeId], r_e: &[u8; 32], size: usize) -> Vec<NodeId> {
    let unique: BTreeSet<NodeId> = members.iter().copied().collect();
    let mut keyed: Vec<([u8; 32], NodeId)> = unique
        .into_iter()
        .map(|id| {
            let mut w = Writer::tagged(TAG_DRAW);
            w.fixed(r_e).fixed(&id.0);
            (sha256(&[&w.finish()]), id)
        })
        .collect();
    keyed.sort_unstable();
    keyed.into_iter().take(size).map(|(_, id)| id).collect()
}

/// A member of the new MS: its id and the x25519 key its sub-shares are sealed to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewMember {
    pub id: NodeId,
    pub x25519_key: [u8; 32],
}

/// What every party of one rotation agrees on before dealing: the epoch whose configuration
/// names the new MS, the old key set and MS list, and the new MS list.
#[derive(Clone, Debug)]
pub struct Rotation {
    epoch: Epoch,
    old_key_set: PublicKeySet,
    old_members: Vec<NodeId>,
    new_members: Vec<NewMember>,
}

impl Rotation {
    pub fn new(
        epoch: Epoch,
        old_key_set: PublicKeySet,
        old_members: Vec<NodeId>,
        new_members: Vec<NewMember>,
    ) -> Result<Rotation, ReshareError> {
        if old_members.is_empty() || old_members.len() > MAX_MS_MEMBERS {
            return Err(ReshareError::InvalidRotation("old MS size out of range"));
        }
        if new_members.is_empty() || new_members.len() > MAX_RECIPIENTS {
            return Err(ReshareError::InvalidRotation("new MS size out of range"));
        }
        if old_key_set.threshold() + 1 > old_members.len() {
            return Err(ReshareError::InvalidRotation(
                "old threshold exceeds the old MS",
            ));
        }
        let distinct_old: BTreeSet<_> = old_members.iter().collect();
        let distinct_new: BTreeSet<_> = new_members.iter().map(|m| m.id).collect();
        if distinct_old.len() != old_members.len() || distinct_new.len() != new_members.len() {
            return Err(ReshareError::InvalidRotation("duplicate MS member"));
        }
        Ok(Rotation {
            epoch,
            old_key_set,
            old_members,
            new_members,
        })
    }

    /// The rotation from the MS of `old` to the MS named by `next` (x25519 keys from
    /// `next`'s member list, else `old`'s).
    pub fn from_configs(
        old: &Configuration,
        next: &Configuration,
    ) -> Result<Rotation, ReshareError> {
        if old.ms_key_set.is_empty() || !old.ms_key_set.len().is_multiple_of(G1_BYTES) {
            return Err(ReshareError::InvalidRotation("malformed old key set"));
        }
        let pks = PublicKeySet::from_bytes(old.ms_key_set.clone())
            .map_err(|_| ReshareError::InvalidRotation("malformed old key set"))?;
        let mut new_members = Vec::with_capacity(next.ms_members.len());
        for id in &next.ms_members {
            let m = next
                .members
                .iter()
                .chain(old.members.iter())
                .find(|m| m.node_id() == *id)
                .ok_or(ReshareError::InvalidRotation(
                    "new MS member not in either configuration",
                ))?;
            new_members.push(NewMember {
                id: *id,
                x25519_key: m.x25519_key,
            });
        }
        Rotation::new(next.epoch, pks, old.ms_members.clone(), new_members)
    }

    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    pub fn old_key_set(&self) -> &PublicKeySet {
        &self.old_key_set
    }

    pub fn old_members(&self) -> &[NodeId] {
        &self.old_members
    }

    pub fn new_members(&self) -> &[NewMember] {
        &self.new_members
    }

    /// t: how many dealings S holds (old threshold).
    pub fn old_threshold(&self) -> usize {
        self.old_key_set.threshold() + 1
    }

    /// t' = f'_ms+1: the new polynomials have degree t'−1.
    pub fn new_threshold(&self) -> usize {
        threshold_for(self.new_members.len())
    }
}

/// Step 2: one old member's dealing. `commitment` is the Feldman commitment to g_i (t'
/// coefficients); `ciphertexts[k]` seals g_i(k+1) to new member k under a key derived from
/// the ECDH of `ephemeral` with that member's x25519 key; `ephemeral_proof` proves the
/// dealer knows the ephemeral secret, bound to this dealing (see [`verify_dealing`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dealing {
    pub epoch: Epoch,
    pub dealer: NodeId,
    /// 0-based position in the old MS list (evaluation point `dealer_index + 1`).
    pub dealer_index: u32,
    pub commitment: Commitment,
    pub ephemeral: [u8; 32],
    pub ephemeral_proof: [u8; 64],
    pub ciphertexts: Vec<[u8; SEALED_SUB_SHARE_BYTES]>,
}

impl Dealing {
    /// `"dbqs.v1.ms-dealing\0" ‖ epoch u64 ‖ dealer 32 ‖ dealer_index u32 ‖ n u32 ‖ n × 48
    /// (compressed G1) ‖ ephemeral 32 ‖ proof 64 ‖ m u32 ‖ m × 48`.
    pub fn encode(&self) -> Vec<u8> {
        let coeffs = self.commitment.to_bytes();
        let mut w = Writer::tagged(TAG_DEALING);
        w.u64(self.epoch)
            .fixed(&self.dealer.0)
            .u32(self.dealer_index)
            .u32((coeffs.len() / G1_BYTES) as u32)
            .fixed(&coeffs)
            .fixed(&self.ephemeral)
            .fixed(&self.ephemeral_proof)
            .u32(self.ciphertexts.len() as u32);
        for c in &self.ciphertexts {
            w.fixed(c);
        }
        w.finish()
    }

    /// Decodes canonical bytes; never panics, allocates only within the stated bounds.
    pub fn decode(bytes: &[u8]) -> Result<Dealing, DecodeError> {
        let mut r = Reader::new(bytes);
        r.expect_tag(TAG_DEALING)?;
        let epoch = r.u64("epoch")?;
        let dealer = NodeId(r.array("dealer")?);
        let dealer_index = r.u32("dealer_index")?;
        let n = r.count("commitment", MAX_COMMITMENT_COEFFS, G1_BYTES)?;
        if n == 0 {
            return Err(DecodeError::Invalid {
                field: "commitment",
                reason: "no coefficients",
            });
        }
        let mut coeffs = Vec::with_capacity(n);
        for _ in 0..n {
            let b: [u8; G1_BYTES] = r.array("commitment")?;
            let p: Option<G1Affine> = G1Affine::from_compressed(&b).into();
            coeffs.push(p.ok_or(DecodeError::Invalid {
                field: "commitment",
                reason: "not a G1 point",
            })?);
        }
        let ephemeral = r.array("ephemeral")?;
        let ephemeral_proof = r.array("ephemeral_proof")?;
        let m = r.count("ciphertexts", MAX_RECIPIENTS, SEALED_SUB_SHARE_BYTES)?;
        let mut ciphertexts = Vec::with_capacity(m);
        for _ in 0..m {
            ciphertexts.push(r.array("ciphertexts")?);
        }
        r.finish()?;
        let d = Dealing {
            epoch,
            dealer,
            dealer_index,
            commitment: Commitment::from(coeffs),
            ephemeral,
            ephemeral_proof,
            ciphertexts,
        };
        if d.encode() != bytes {
            return Err(DecodeError::Invalid {
                field: "dealing",
                reason: "not canonical",
            });
        }
        Ok(d)
    }

    /// SHA-256 of the encoding; accusations name the dealing by it.
    pub fn digest(&self) -> [u8; 32] {
        sha256(&[&self.encode()])
    }
}

/// Step 2: old member `dealer_index` deals its share `share` to the new MS.
pub fn deal<R: RngCore + CryptoRng>(
    rot: &Rotation,
    dealer_index: usize,
    share: &SecretKeyShare,
    rng: &mut R,
) -> Result<Dealing, ReshareError> {
    let dealer = *rot
        .old_members
        .get(dealer_index)
        .ok_or(ReshareError::UnknownDealer(dealer_index as u32))?;
    let s = fr_of_share(share)?;
    let mut coeffs = Vec::with_capacity(rot.new_threshold());
    coeffs.push(s);
    coeffs.extend((1..rot.new_threshold()).map(|_| Fr::random(&mut *rng)));
    let poly = Poly::from(coeffs);
    let commitment = poly.commitment();
    let values: Vec<Fr> = (0..rot.new_members.len())
        .map(|k| poly.evaluate(k as u64 + 1))
        .collect();
    seal_dealing(rot, dealer_index, dealer, commitment, &values, rng)
}

/// Seals `values[k]` to new member k and proves knowledge of the ephemeral key. Split out so
/// tests can build a dealer whose sub-shares disagree with its commitment.
fn seal_dealing<R: RngCore + CryptoRng>(
    rot: &Rotation,
    dealer_index: usize,
    dealer: NodeId,
    commitment: Commitment,
    values: &[Fr],
    rng: &mut R,
) -> Result<Dealing, ReshareError> {
    let mut e = [0u8; 32];
    rng.fill_bytes(&mut e);
    let esk = StaticSecret::from(e);
    let ephemeral = XPublic::from(&esk).to_bytes();
    let ephemeral_proof =
        prove_ephemeral(rot.epoch, dealer_index as u32, &dealer, &e, &ephemeral, rng)?;
    let commitment_hash = sha256(&[&commitment.to_bytes()]);
    let mut ciphertexts = Vec::with_capacity(values.len());
    for (k, (m, v)) in rot.new_members.iter().zip(values).enumerate() {
        let ss = esk.diffie_hellman(&XPublic::from(m.x25519_key));
        let key = sub_share_key(ss.as_bytes(), rot.epoch, &dealer, m, &ephemeral);
        let aad = sub_share_aad(
            rot.epoch,
            &dealer,
            dealer_index as u32,
            k as u32,
            &commitment_hash,
        );
        let ct = ChaCha20Poly1305::new_from_slice(&key)
            .map_err(|_| ReshareError::BadShare)?
            .encrypt(
                &Nonce::default(),
                Payload {
                    msg: &v.to_bytes_be(),
                    aad: &aad,
                },
            )
            .map_err(|_| ReshareError::BadShare)?;
        let ct: [u8; SEALED_SUB_SHARE_BYTES] = ct.try_into().map_err(|_| ReshareError::BadShare)?;
        ciphertexts.push(ct);
    }
    Ok(Dealing {
        epoch: rot.epoch,
        dealer,
        dealer_index: dealer_index as u32,
        commitment,
        ephemeral,
        ephemeral_proof,
        ciphertexts,
    })
}

/// Step 2/3, checked by every replica before a dealing counts: epoch, dealer position, t'
/// coefficients, one sealed sub-share per new member, commitment(0) equal to the dealer's
/// old public key share, and a prime-order ephemeral key whose secret the dealer proved to
/// know under this (epoch, dealer). The last check stops a dealer from copying another
/// dealing's ephemeral key, which would make honest accusations reveal the keys that open
/// an honest dealer's sub-shares.
pub fn verify_dealing(rot: &Rotation, d: &Dealing) -> Result<(), ReshareError> {
    if d.epoch != rot.epoch {
        return Err(ReshareError::WrongEpoch {
            have: d.epoch,
            want: rot.epoch,
        });
    }
    let idx = d.dealer_index as usize;
    if rot.old_members.get(idx) != Some(&d.dealer) {
        return Err(ReshareError::UnknownDealer(d.dealer_index));
    }
    let coeffs = d.commitment.degree() + 1;
    if coeffs != rot.new_threshold() {
        return Err(ReshareError::WrongDegree {
            have: coeffs,
            want: rot.new_threshold(),
        });
    }
    if d.ciphertexts.len() != rot.new_members.len() {
        return Err(ReshareError::WrongRecipientCount {
            have: d.ciphertexts.len(),
            want: rot.new_members.len(),
        });
    }
    let expected = rot.old_key_set.public_key_share(idx).to_bytes();
    if d.commitment.evaluate(0u64).to_compressed() != expected {
        return Err(ReshareError::CommitmentMismatch);
    }
    let p = prime_order_from_x25519(&d.ephemeral).ok_or(ReshareError::BadEphemeralKey)?;
    verify_ephemeral_proof(
        rot.epoch,
        d.dealer_index,
        &d.dealer,
        &d.ephemeral,
        &p,
        &d.ephemeral_proof,
    )
}

/// Step 3, at new member `recipient_index`: decrypts and checks its sub-share g_i(k+1).
/// Call only on a dealing that passed [`verify_dealing`].
pub fn open_sub_share(
    rot: &Rotation,
    d: &Dealing,
    recipient_index: usize,
    x25519_secret: &[u8; 32],
) -> Result<Fr, SubShareFault> {
    let (Some(m), Some(ct)) = (
        rot.new_members.get(recipient_index),
        d.ciphertexts.get(recipient_index),
    ) else {
        return Err(SubShareFault::Undecryptable);
    };
    let ss = StaticSecret::from(*x25519_secret).diffie_hellman(&XPublic::from(d.ephemeral));
    check_sealed(rot, d, recipient_index, m, ct, ss.as_bytes())
}

/// Decrypts with the ECDH output `ss` and checks the value against the commitment.
fn check_sealed(
    rot: &Rotation,
    d: &Dealing,
    k: usize,
    m: &NewMember,
    ct: &[u8; SEALED_SUB_SHARE_BYTES],
    ss: &[u8; 32],
) -> Result<Fr, SubShareFault> {
    let key = sub_share_key(ss, rot.epoch, &d.dealer, m, &d.ephemeral);
    let aad = sub_share_aad(
        rot.epoch,
        &d.dealer,
        d.dealer_index,
        k as u32,
        &sha256(&[&d.commitment.to_bytes()]),
    );
    let plain = ChaCha20Poly1305::new_from_slice(&key)
        .map_err(|_| SubShareFault::Undecryptable)?
        .decrypt(&Nonce::default(), Payload { msg: ct, aad: &aad })
        .map_err(|_| SubShareFault::Undecryptable)?;
    let b: [u8; 32] = plain.try_into().map_err(|_| SubShareFault::NotAScalar)?;
    let v: Option<Fr> = Fr::from_bytes_be(&b).into();
    let v = v.ok_or(SubShareFault::NotAScalar)?;
    let lhs = (G1Projective::generator() * v).to_affine();
    if lhs == d.commitment.evaluate(k as u64 + 1) {
        Ok(v)
    } else {
        Err(SubShareFault::Mismatch)
    }
}

/// Step 3: a new member's claim that its sub-share in one dealing is bad. It reveals the
/// ECDH shared point Z = x·P (P the dealing's ephemeral key, x the accuser's x25519 secret,
/// both as Edwards points / scalars mod ℓ) with a Chaum–Pedersen proof (c, s) that
/// log_B(A) = log_P(Z) for the accuser's public key A, so anyone can redo the decryption.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accusation {
    pub epoch: Epoch,
    pub dealer_index: u32,
    pub dealing_digest: [u8; 32],
    pub accuser_index: u32,
    pub accuser: NodeId,
    /// Compressed Edwards point Z; its Montgomery u-coordinate is the x25519 shared secret.
    pub shared_point: [u8; 32],
    pub proof_c: [u8; 32],
    pub proof_s: [u8; 32],
}

impl Accusation {
    /// `"dbqs.v1.ms-accusation\0" ‖ epoch u64 ‖ dealer_index u32 ‖ dealing digest 32 ‖
    /// accuser_index u32 ‖ accuser 32 ‖ Z 32 ‖ c 32 ‖ s 32` (fixed size).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::tagged(TAG_ACCUSATION);
        w.u64(self.epoch)
            .u32(self.dealer_index)
            .fixed(&self.dealing_digest)
            .u32(self.accuser_index)
            .fixed(&self.accuser.0)
            .fixed(&self.shared_point)
            .fixed(&self.proof_c)
            .fixed(&self.proof_s);
        w.finish()
    }

    pub fn decode(bytes: &[u8]) -> Result<Accusation, DecodeError> {
        let mut r = Reader::new(bytes);
        r.expect_tag(TAG_ACCUSATION)?;
        let a = Accusation {
            epoch: r.u64("epoch")?,
            dealer_index: r.u32("dealer_index")?,
            dealing_digest: r.array("dealing_digest")?,
            accuser_index: r.u32("accuser_index")?,
            accuser: NodeId(r.array("accuser")?),
            shared_point: r.array("shared_point")?,
            proof_c: r.array("proof_c")?,
            proof_s: r.array("proof_s")?,
        };
        r.finish()?;
        Ok(a)
    }
}

/// Step 3, at new member `recipient_index` whose sub-share in `d` failed [`open_sub_share`]:
/// builds the accusation. Refuses when the sub-share is actually fine, and when the dealing
/// fails the public checks (then it needs no accusation: it never counts).
pub fn accuse<R: RngCore + CryptoRng>(
    rot: &Rotation,
    d: &Dealing,
    recipient_index: usize,
    x25519_secret: &[u8; 32],
    rng: &mut R,
) -> Result<Accusation, ReshareError> {
    verify_dealing(rot, d)?;
    let m = rot
        .new_members
        .get(recipient_index)
        .ok_or(ReshareError::UnknownRecipient(recipient_index))?;
    if open_sub_share(rot, d, recipient_index, x25519_secret).is_ok() {
        return Err(ReshareError::NothingToAccuse);
    }
    prove_accusation(rot, d, recipient_index, m, x25519_secret, rng)
}

/// The accusation's proof, with no check that the sub-share is bad (tests build false
/// accusations with it).
fn prove_accusation<R: RngCore + CryptoRng>(
    rot: &Rotation,
    d: &Dealing,
    recipient_index: usize,
    m: &NewMember,
    x25519_secret: &[u8; 32],
    rng: &mut R,
) -> Result<Accusation, ReshareError> {
    let a_pt =
        prime_order_from_x25519(&m.x25519_key).ok_or(ReshareError::UnprovableRecipientKey)?;
    let x = signed_witness(x25519_secret, &a_pt).ok_or(ReshareError::UnprovableRecipientKey)?;
    let p = prime_order_from_x25519(&d.ephemeral).ok_or(ReshareError::BadEphemeralKey)?;
    let z = p * x;
    let k = random_scalar(rng);
    let (r1, r2) = (EdwardsPoint::mul_base(&k), p * k);
    let digest = d.digest();
    let mut a = Accusation {
        epoch: rot.epoch,
        dealer_index: d.dealer_index,
        dealing_digest: digest,
        accuser_index: recipient_index as u32,
        accuser: m.id,
        shared_point: z.compress().to_bytes(),
        proof_c: [0; 32],
        proof_s: [0; 32],
    };
    let c = dleq_challenge(&a, &a_pt, &p, &z, &r1, &r2);
    a.proof_c = c.to_bytes();
    a.proof_s = (k + c * x).to_bytes();
    Ok(a)
}

/// Step 3, at every replica: `Ok(fault)` upholds the accusation (the dealing never counts);
/// `Err` rejects it. Trusts nothing the accuser says beyond what the proof shows. `d` is
/// the dealing the accusation names, which passed [`verify_dealing`].
pub fn check_accusation(
    rot: &Rotation,
    d: &Dealing,
    a: &Accusation,
) -> Result<SubShareFault, AccusationRejected> {
    if a.epoch != rot.epoch
        || d.epoch != rot.epoch
        || a.dealer_index != d.dealer_index
        || a.dealing_digest != d.digest()
    {
        return Err(AccusationRejected::WrongDealing);
    }
    let k = a.accuser_index as usize;
    let (Some(m), Some(ct)) = (rot.new_members.get(k), d.ciphertexts.get(k)) else {
        return Err(AccusationRejected::UnknownAccuser);
    };
    if m.id != a.accuser {
        return Err(AccusationRejected::UnknownAccuser);
    }
    let a_pt = prime_order_from_x25519(&m.x25519_key).ok_or(AccusationRejected::BadAccuserKey)?;
    let p = prime_order_from_x25519(&d.ephemeral).ok_or(AccusationRejected::WrongDealing)?;
    let z = decompress_canonical(&a.shared_point)
        .filter(|z| z.is_torsion_free() && !z.is_identity())
        .ok_or(AccusationRejected::BadProof)?;
    let c = canonical_scalar(&a.proof_c).ok_or(AccusationRejected::BadProof)?;
    let s = canonical_scalar(&a.proof_s).ok_or(AccusationRejected::BadProof)?;
    let r1 = EdwardsPoint::vartime_double_scalar_mul_basepoint(&(-c), &a_pt, &s);
    let r2 = p * s - z * c;
    if dleq_challenge(a, &a_pt, &p, &z, &r1, &r2) != c {
        return Err(AccusationRejected::BadProof);
    }
    let ss = z.to_montgomery().to_bytes();
    match check_sealed(rot, d, k, m, ct, &ss) {
        Ok(_) => Err(AccusationRejected::SubShareValid),
        Err(fault) => Ok(fault),
    }
}

/// Lagrange weights at 0 for the evaluation points `xs` (distinct, non-zero).
pub fn lagrange_at_zero(xs: &[u64]) -> Result<Vec<Fr>, ReshareError> {
    let distinct: BTreeSet<_> = xs.iter().collect();
    if distinct.len() != xs.len() || xs.contains(&0) {
        return Err(ReshareError::InvalidRotation(
            "evaluation points not distinct and non-zero",
        ));
    }
    let mut out = Vec::with_capacity(xs.len());
    for (i, &xi) in xs.iter().enumerate() {
        let (mut num, mut den) = (Fr::one(), Fr::one());
        for (k, &xk) in xs.iter().enumerate() {
            if k != i {
                num *= Fr::from(xk);
                den *= Fr::from(xk) - Fr::from(xi);
            }
        }
        let inv: Option<Fr> = den.invert().into();
        out.push(num * inv.ok_or(ReshareError::InvalidRotation("zero denominator"))?);
    }
    Ok(out)
}

/// Checks that `dealer_indices` is a valid S: exactly t distinct old positions.
fn weights_for(rot: &Rotation, dealer_indices: &[u32]) -> Result<Vec<Fr>, ReshareError> {
    let distinct: BTreeSet<_> = dealer_indices.iter().collect();
    if dealer_indices.len() != rot.old_threshold() || distinct.len() != dealer_indices.len() {
        return Err(ReshareError::WrongDealingSet {
            have: distinct.len(),
            want: rot.old_threshold(),
        });
    }
    if let Some(&bad) = dealer_indices
        .iter()
        .find(|&&i| i as usize >= rot.old_members.len())
    {
        return Err(ReshareError::UnknownDealer(bad));
    }
    let xs: Vec<u64> = dealer_indices.iter().map(|&i| u64::from(i) + 1).collect();
    lagrange_at_zero(&xs)
}

/// Step 4, at a new member: s'_j = Σ_{i∈S} λ_i · g_i(j) from its checked sub-shares
/// `(dealer_index, g_i(j))`, one per dealing of S.
pub fn combine_share(
    rot: &Rotation,
    sub_shares: &[(u32, Fr)],
) -> Result<SecretKeyShare, ReshareError> {
    let indices: Vec<u32> = sub_shares.iter().map(|(i, _)| *i).collect();
    let weights = weights_for(rot, &indices)?;
    let mut acc = Fr::zero();
    for ((_, v), l) in sub_shares.iter().zip(&weights) {
        acc += *v * l;
    }
    Ok(SecretKeyShare::from_mut(&mut acc))
}

/// Step 4, at everyone: the new key set Σ_{i∈S} λ_i · C_i from the dealings of S (each
/// already verified). Fails unless its group key equals the old one.
pub fn combine_key_set(rot: &Rotation, set: &[&Dealing]) -> Result<PublicKeySet, ReshareError> {
    let indices: Vec<u32> = set.iter().map(|d| d.dealer_index).collect();
    let weights = weights_for(rot, &indices)?;
    let n = rot.new_threshold();
    let mut sum = vec![G1Projective::identity(); n];
    for (d, l) in set.iter().zip(&weights) {
        let bytes = d.commitment.to_bytes();
        if bytes.len() != n * G1_BYTES {
            return Err(ReshareError::WrongDegree {
                have: bytes.len() / G1_BYTES,
                want: n,
            });
        }
        for (acc, chunk) in sum.iter_mut().zip(bytes.chunks_exact(G1_BYTES)) {
            let b: [u8; G1_BYTES] = chunk.try_into().map_err(|_| ReshareError::BadShare)?;
            let p: Option<G1Affine> = G1Affine::from_compressed(&b).into();
            *acc += G1Projective::from(p.ok_or(ReshareError::BadShare)?) * l;
        }
    }
    let coeffs: Vec<G1Affine> = sum.iter().map(|p| p.to_affine()).collect();
    let pks = PublicKeySet::from(Commitment::from(coeffs));
    if pks.public_key() != rot.old_key_set.public_key() {
        return Err(ReshareError::GroupKeyChanged);
    }
    Ok(pks)
}

fn fr_of_share(share: &SecretKeyShare) -> Result<Fr, ReshareError> {
    let v: Option<Fr> = Fr::from_bytes_be(&share.to_bytes()).into();
    v.ok_or(ReshareError::BadShare)
}

/// HKDF-SHA256(salt = tag, ikm = ECDH output, info = epoch ‖ dealer ‖ recipient ‖ ephemeral
/// key ‖ recipient key), 32 bytes for ChaCha20-Poly1305. Each key seals one message (a
/// fresh ephemeral key per dealing), so the nonce is zero.
fn sub_share_key(
    ss: &[u8; 32],
    epoch: Epoch,
    dealer: &NodeId,
    m: &NewMember,
    epk: &[u8; 32],
) -> [u8; 32] {
    let mut info = Writer::tagged(TAG_KDF);
    info.u64(epoch)
        .fixed(&dealer.0)
        .fixed(&m.id.0)
        .fixed(epk)
        .fixed(&m.x25519_key);
    let salt = Writer::tagged(TAG_KDF).finish();
    let mut okm = [0u8; 32];
    hkdf::Hkdf::<Sha256>::new(Some(&salt), ss)
        .expand(&info.finish(), &mut okm)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    okm
}

/// Associated data: binds the ciphertext to its dealing's commitment and positions.
fn sub_share_aad(
    epoch: Epoch,
    dealer: &NodeId,
    dealer_index: u32,
    k: u32,
    commitment_hash: &[u8; 32],
) -> Vec<u8> {
    let mut w = Writer::tagged(TAG_AAD);
    w.u64(epoch)
        .fixed(&dealer.0)
        .u32(dealer_index)
        .u32(k)
        .fixed(commitment_hash);
    w.finish()
}

/// The Edwards point with Montgomery u-coordinate `u`, if `u` is canonical, on the curve
/// (not the twist), of prime order ℓ and not the identity. The sign is fixed to 0; u
/// determines the point only up to sign, which [`signed_witness`] accounts for.
fn prime_order_from_x25519(u: &[u8; 32]) -> Option<EdwardsPoint> {
    let p = MontgomeryPoint(*u).to_edwards(0)?;
    (p.to_montgomery().to_bytes() == *u && p.is_torsion_free() && !p.is_identity()).then_some(p)
}

/// The scalar x mod ℓ with x·B = `target`, from an x25519 secret: ±clamp(secret), the sign
/// chosen to match the Edwards point that represents the public u-coordinate. x25519 of a
/// prime-order point with the clamped secret equals u(x·P), since clamping only adds a
/// multiple of 8 that the prime-order subgroup ignores and u(−Q) = u(Q).
fn signed_witness(secret: &[u8; 32], target: &EdwardsPoint) -> Option<Scalar> {
    let x = Scalar::from_bytes_mod_order(clamp_integer(*secret));
    let pt = EdwardsPoint::mul_base(&x);
    if pt == *target {
        Some(x)
    } else if -pt == *target {
        Some(-x)
    } else {
        None
    }
}

fn random_scalar<R: RngCore + CryptoRng>(rng: &mut R) -> Scalar {
    let mut wide = [0u8; 64];
    rng.fill_bytes(&mut wide);
    Scalar::from_bytes_mod_order_wide(&wide)
}

fn hash_to_scalar(msg: &[u8]) -> Scalar {
    let wide: [u8; 64] = Sha512::digest(msg).into();
    Scalar::from_bytes_mod_order_wide(&wide)
}

fn canonical_scalar(b: &[u8; 32]) -> Option<Scalar> {
    Scalar::from_canonical_bytes(*b).into()
}

fn decompress_canonical(b: &[u8; 32]) -> Option<EdwardsPoint> {
    let p = CompressedEdwardsY(*b).decompress()?;
    (p.compress().to_bytes() == *b).then_some(p)
}

/// Schnorr proof (R, s) of knowledge of log_B(P) for the ephemeral key, with the epoch and
/// the dealer in the challenge.
fn prove_ephemeral<R: RngCore + CryptoRng>(
    epoch: Epoch,
    dealer_index: u32,
    dealer: &NodeId,
    e: &[u8; 32],
    epk: &[u8; 32],
    rng: &mut R,
) -> Result<[u8; 64], ReshareError> {
    let p = prime_order_from_x25519(epk).ok_or(ReshareError::BadEphemeralKey)?;
    let x = signed_witness(e, &p).ok_or(ReshareError::BadEphemeralKey)?;
    let k = random_scalar(rng);
    let r = EdwardsPoint::mul_base(&k).compress().to_bytes();
    let c = pok_challenge(epoch, dealer_index, dealer, epk, &r);
    let mut out = [0u8; 64];
    out[..32].copy_from_slice(&r);
    out[32..].copy_from_slice(&(k + c * x).to_bytes());
    Ok(out)
}

fn verify_ephemeral_proof(
    epoch: Epoch,
    dealer_index: u32,
    dealer: &NodeId,
    epk: &[u8; 32],
    p: &EdwardsPoint,
    proof: &[u8; 64],
) -> Result<(), ReshareError> {
    let mut r_bytes = [0u8; 32];
    r_bytes.copy_from_slice(&proof[..32]);
    let mut s_bytes = [0u8; 32];
    s_bytes.copy_from_slice(&proof[32..]);
    let r = decompress_canonical(&r_bytes).ok_or(ReshareError::BadEphemeralProof)?;
    let s = canonical_scalar(&s_bytes).ok_or(ReshareError::BadEphemeralProof)?;
    let c = pok_challenge(epoch, dealer_index, dealer, epk, &r_bytes);
    // s·B − c·P must equal R; both sides prime-order when it holds, as P is.
    let lhs = EdwardsPoint::vartime_double_scalar_mul_basepoint(&(-c), p, &s);
    if lhs == r {
        Ok(())
    } else {
        Err(ReshareError::BadEphemeralProof)
    }
}

fn pok_challenge(
    epoch: Epoch,
    dealer_index: u32,
    dealer: &NodeId,
    epk: &[u8; 32],
    r: &[u8; 32],
) -> Scalar {
    let mut w = Writer::tagged(TAG_POK);
    w.u64(epoch)
        .u32(dealer_index)
        .fixed(&dealer.0)
        .fixed(&ED25519_BASEPOINT_POINT.compress().to_bytes())
        .fixed(epk)
        .fixed(r);
    hash_to_scalar(&w.finish())
}

fn dleq_challenge(
    a: &Accusation,
    a_pt: &EdwardsPoint,
    p: &EdwardsPoint,
    z: &EdwardsPoint,
    r1: &EdwardsPoint,
    r2: &EdwardsPoint,
) -> Scalar {
    let mut w = Writer::tagged(TAG_DLEQ);
    w.u64(a.epoch)
        .u32(a.dealer_index)
        .fixed(&a.dealing_digest)
        .u32(a.accuser_index)
        .fixed(&a.accuser.0);
    for pt in [a_pt, p, z, r1, r2] {
        w.fixed(&pt.compress().to_bytes());
    }
    hash_to_scalar(&w.finish())
}

#[cfg(test)]
mod tests {
    use blsttc::SecretKeySet;
    use blsttc::rand::SeedableRng;
    use blsttc::rand::rngs::StdRng;

    use super::*;

    fn setup(seed: u64) -> (StdRng, Rotation, Vec<SecretKeyShare>, Vec<[u8; 32]>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let sks = SecretKeySet::random(1, &mut rng);
        let old: Vec<NodeId> = (0..4u8).map(|i| NodeId([i; 32])).collect();
        let mut secrets = Vec::new();
        let mut new = Vec::new();
        for i in 0..4u8 {
            let mut x = [0u8; 32];
            rng.fill_bytes(&mut x);
            new.push(NewMember {
                id: NodeId([100 + i; 32]),
                x25519_key: XPublic::from(&StaticSecret::from(x)).to_bytes(),
            });
            secrets.push(x);
        }
        let rot = Rotation::new(9, sks.public_keys(), old, new).unwrap();
        let shares = (0..4).map(|i| sks.secret_key_share(i)).collect();
        (rng, rot, shares, secrets)
    }

    /// A dealer whose commitment is right but whose sealed value for recipient 2 is not
    /// g_i(3): the AEAD opens, the commitment check fails, and the accusation is upheld.
    #[test]
    fn resharing_sealed_wrong_value_is_upheld_mismatch() {
        let (mut rng, rot, shares, secrets) = setup(11);
        let s = fr_of_share(&shares[1]).unwrap();
        let mut coeffs = vec![s];
        coeffs.extend((1..rot.new_threshold()).map(|_| Fr::random(&mut rng)));
        let poly = Poly::from(coeffs);
        let mut values: Vec<Fr> = (0..4u64).map(|k| poly.evaluate(k + 1)).collect();
        values[2] += Fr::one();
        let d = seal_dealing(
            &rot,
            1,
            rot.old_members()[1],
            poly.commitment(),
            &values,
            &mut rng,
        )
        .unwrap();
        verify_dealing(&rot, &d).unwrap();
        assert!(open_sub_share(&rot, &d, 0, &secrets[0]).is_ok());
        assert_eq!(
            open_sub_share(&rot, &d, 2, &secrets[2]),
            Err(SubShareFault::Mismatch)
        );
        let a = accuse(&rot, &d, 2, &secrets[2], &mut rng).unwrap();
        assert_eq!(check_accusation(&rot, &d, &a), Ok(SubShareFault::Mismatch));
    }

    /// A well-formed accusation (valid DLEQ proof) against a good sub-share is rejected, and
    /// the revealed point opens the same key the recipient's own x25519 computation did.
    #[test]
    fn resharing_false_accusation_with_valid_proof_is_rejected() {
        let (mut rng, rot, shares, secrets) = setup(12);
        let d = deal(&rot, 0, &shares[0], &mut rng).unwrap();
        verify_dealing(&rot, &d).unwrap();
        assert!(open_sub_share(&rot, &d, 3, &secrets[3]).is_ok());
        assert_eq!(
            accuse(&rot, &d, 3, &secrets[3], &mut rng),
            Err(ReshareError::NothingToAccuse)
        );
        let m = rot.new_members()[3].clone();
        let a = prove_accusation(&rot, &d, 3, &m, &secrets[3], &mut rng).unwrap();
        assert_eq!(
            check_accusation(&rot, &d, &a),
            Err(AccusationRejected::SubShareValid)
        );
    }

    #[test]
    fn resharing_lagrange_weights_interpolate_constant_term() {
        let mut rng = StdRng::seed_from_u64(3);
        let poly = Poly::random(2, &mut rng);
        let xs = [2u64, 5, 7];
        let w = lagrange_at_zero(&xs).unwrap();
        let mut acc = Fr::zero();
        for (x, l) in xs.iter().zip(&w) {
            acc += poly.evaluate(*x) * l;
        }
        assert_eq!(acc, poly.evaluate(0u64));
        assert!(lagrange_at_zero(&[1, 1]).is_err());
        assert!(lagrange_at_zero(&[0, 1]).is_err());
    }

    #[test]
    fn resharing_witness_sign_matches_x25519() {
        let mut rng = StdRng::seed_from_u64(5);
        for _ in 0..16 {
            let mut a = [0u8; 32];
            let mut e = [0u8; 32];
            rng.fill_bytes(&mut a);
            rng.fill_bytes(&mut e);
            let apk = XPublic::from(&StaticSecret::from(a)).to_bytes();
            let epk = XPublic::from(&StaticSecret::from(e)).to_bytes();
            let a_pt = prime_order_from_x25519(&apk).unwrap();
            let p = prime_order_from_x25519(&epk).unwrap();
            let x = signed_witness(&a, &a_pt).unwrap();
            let ss = StaticSecret::from(a).diffie_hellman(&XPublic::from(epk));
            assert_eq!((p * x).to_montgomery().to_bytes(), *ss.as_bytes());
        }
    }
}
