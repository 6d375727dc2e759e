//! PBFT messages, their canonical encoding, and ed25519 signing.
//!
//! All replica-to-replica messages are signed (Castro–Liskov OSDI'99 uses signatures; this
//! makes view-change proofs transferable, §4.4). Each signed body has its own domain tag, so a
//! signature over one kind of message can never be replayed as another (PROTOCOL.md,
//! "Identities, keys and certificates"). Large payloads (batches) are signed through their
//! digest, so certificates stay small.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};

use super::codec::{DecodeError, Limits, Reader, Writer};

/// Index of a replica in the group's key list (0-based).
pub type ReplicaId = u32;

/// A SHA-256 digest (of a batch or of a checkpoint state).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Digest(pub [u8; 32]);

/// A client is named by its ed25519 public key; its requests are signed with it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct ClientId(pub [u8; 32]);

pub(crate) fn sha256_tagged(tag: &[u8], parts: &[&[u8]]) -> Digest {
    let mut h = Sha256::new();
    h.update(tag);
    for p in parts {
        h.update(p);
    }
    Digest(h.finalize().into())
}

/// Canonical binary form of a value.
pub trait Wire: Sized {
    fn encode_to(&self, w: &mut Writer);
    fn decode_from(r: &mut Reader<'_>, limits: &Limits) -> Result<Self, DecodeError>;
    /// Smallest possible encoding, used to bound collection lengths before allocating.
    const MIN_BYTES: usize;

    fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new();
        self.encode_to(&mut w);
        w.bytes
    }
}

fn encode_vec<T: Wire>(w: &mut Writer, items: &[T]) {
    w.len(items.len());
    for item in items {
        item.encode_to(w);
    }
}

fn decode_vec<T: Wire>(
    r: &mut Reader<'_>,
    limits: &Limits,
    what: &'static str,
    max: usize,
) -> Result<Vec<T>, DecodeError> {
    let n = r.len(what, max, T::MIN_BYTES)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(T::decode_from(r, limits)?);
    }
    Ok(out)
}

impl Wire for Digest {
    const MIN_BYTES: usize = 32;
    fn encode_to(&self, w: &mut Writer) {
        w.fixed(&self.0);
    }
    fn decode_from(r: &mut Reader<'_>, _: &Limits) -> Result<Self, DecodeError> {
        Ok(Digest(r.array()?))
    }
}

/// A client request (PBFT §4.1 `<REQUEST, o, t, c>`), signed by the client.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Request {
    pub client: ClientId,
    /// The client's timestamp `t`: strictly increasing per client; used for exactly-once.
    pub request_num: u64,
    /// Read-only requests take the one-round path (§5.1.3) and are never ordered.
    pub read_only: bool,
    pub op: Vec<u8>,
    pub sig: [u8; 64],
}

const REQUEST_TAG: &[u8] = b"dbqs.v1.pbft.request\0";

impl Request {
    fn signing_bytes(client: &ClientId, request_num: u64, read_only: bool, op: &[u8]) -> Vec<u8> {
        let mut w = Writer::new();
        w.fixed(REQUEST_TAG);
        w.fixed(&client.0);
        w.u64(request_num);
        w.bool(read_only);
        w.var_bytes(op);
        w.bytes
    }

    /// Builds and signs a request with the client's key.
    pub fn sign(key: &SigningKey, request_num: u64, read_only: bool, op: Vec<u8>) -> Request {
        let client = ClientId(key.verifying_key().to_bytes());
        let sig = key
            .sign(&Self::signing_bytes(&client, request_num, read_only, &op))
            .to_bytes();
        Request {
            client,
            request_num,
            read_only,
            op,
            sig,
        }
    }

    /// Checks the client's signature (strict: no malleable signatures, no weak keys).
    pub fn verify(&self) -> bool {
        let Ok(key) = VerifyingKey::from_bytes(&self.client.0) else {
            return false;
        };
        let msg = Self::signing_bytes(&self.client, self.request_num, self.read_only, &self.op);
        key.verify_strict(&msg, &Signature::from_bytes(&self.sig))
            .is_ok()
    }
}

impl Wire for Request {
    const MIN_BYTES: usize = 32 + 8 + 1 + 4 + 64;
    fn encode_to(&self, w: &mut Writer) {
        w.fixed(&self.client.0);
        w.u64(self.request_num);
        w.bool(self.read_only);
        w.var_bytes(&self.op);
        w.fixed(&self.sig);
    }
    fn decode_from(r: &mut Reader<'_>, limits: &Limits) -> Result<Self, DecodeError> {
        Ok(Request {
            client: ClientId(r.array()?),
            request_num: r.u64()?,
            read_only: r.bool()?,
            op: r.var_bytes("request op bytes", limits.max_op_bytes)?,
            sig: r.array()?,
        })
    }
}

/// The unit of agreement: one sequence number orders one batch (§5.1.4). An empty batch is
/// the null request the new primary uses to fill gaps (§4.4).
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Batch {
    pub requests: Vec<Request>,
}

const BATCH_TAG: &[u8] = b"dbqs.v1.pbft.batch\0";

impl Batch {
    pub fn digest(&self) -> Digest {
        sha256_tagged(BATCH_TAG, &[&self.to_bytes()])
    }
    /// Sum of operation bytes, the quantity `Limits::max_batch_bytes` bounds.
    pub fn op_bytes(&self) -> usize {
        self.requests.iter().map(|r| r.op.len()).sum()
    }
}

impl Wire for Batch {
    const MIN_BYTES: usize = 4;
    fn encode_to(&self, w: &mut Writer) {
        encode_vec(w, &self.requests);
    }
    fn decode_from(r: &mut Reader<'_>, limits: &Limits) -> Result<Self, DecodeError> {
        let requests: Vec<Request> =
            decode_vec(r, limits, "batch requests", limits.max_batch_requests)?;
        let batch = Batch { requests };
        let op_bytes = batch.op_bytes();
        if op_bytes > limits.max_batch_bytes {
            return Err(DecodeError::TooMany {
                what: "batch op bytes",
                count: op_bytes,
                max: limits.max_batch_bytes,
            });
        }
        Ok(batch)
    }
}

/// A message body that replicas sign. `TAG` separates the signature domains.
pub trait SignedBody: Wire + Clone {
    const TAG: &'static [u8];
}

/// A body plus the signer's id and its ed25519 signature over `TAG ‖ domain ‖ signer ‖
/// body`. The domain names the replica group (`Config::domain`), so a message signed for
/// one group (an earlier MS term with the same members) never counts in another.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Signed<T> {
    pub body: T,
    pub signer: ReplicaId,
    pub sig: [u8; 64],
}

impl<T: SignedBody> Signed<T> {
    fn signing_bytes(body: &T, signer: ReplicaId, domain: &[u8; 32]) -> Vec<u8> {
        let mut w = Writer::new();
        w.fixed(T::TAG);
        w.fixed(domain);
        w.u32(signer);
        body.encode_to(&mut w);
        w.bytes
    }

    pub fn sign(body: T, signer: ReplicaId, key: &SigningKey, domain: &[u8; 32]) -> Self {
        let sig = key
            .sign(&Self::signing_bytes(&body, signer, domain))
            .to_bytes();
        Signed { body, signer, sig }
    }

    /// Strict ed25519 verification against the signer's key in the group's key list.
    pub fn verify(&self, keys: &[VerifyingKey], domain: &[u8; 32]) -> bool {
        let Some(key) = keys.get(self.signer as usize) else {
            return false;
        };
        key.verify_strict(
            &Self::signing_bytes(&self.body, self.signer, domain),
            &Signature::from_bytes(&self.sig),
        )
        .is_ok()
    }
}

impl<T: SignedBody> Wire for Signed<T> {
    const MIN_BYTES: usize = T::MIN_BYTES + 4 + 64;
    fn encode_to(&self, w: &mut Writer) {
        self.body.encode_to(w);
        w.u32(self.signer);
        w.fixed(&self.sig);
    }
    fn decode_from(r: &mut Reader<'_>, limits: &Limits) -> Result<Self, DecodeError> {
        Ok(Signed {
            body: T::decode_from(r, limits)?,
            signer: r.u32()?,
            sig: r.array()?,
        })
    }
}

macro_rules! vote_body {
    ($(#[$doc:meta])* $name:ident, $tag:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Debug)]
        pub struct $name {
            pub view: u64,
            pub seq: u64,
            pub digest: Digest,
        }
        impl Wire for $name {
            const MIN_BYTES: usize = 8 + 8 + 32;
            fn encode_to(&self, w: &mut Writer) {
                w.u64(self.view);
                w.u64(self.seq);
                self.digest.encode_to(w);
            }
            fn decode_from(r: &mut Reader<'_>, limits: &Limits) -> Result<Self, DecodeError> {
                Ok($name {
                    view: r.u64()?,
                    seq: r.u64()?,
                    digest: Digest::decode_from(r, limits)?,
                })
            }
        }
        impl SignedBody for $name {
            const TAG: &'static [u8] = $tag;
        }
    };
}

vote_body!(
    /// The primary's ordering proposal (§4.2); the batch travels beside it, bound by digest.
    PrePrepare,
    b"dbqs.v1.pbft.pre-prepare\0"
);
vote_body!(
    /// A backup's agreement with a pre-prepare (§4.2).
    Prepare,
    b"dbqs.v1.pbft.prepare\0"
);
vote_body!(
    /// A replica's statement that it holds a prepared certificate (§4.2).
    Commit,
    b"dbqs.v1.pbft.commit\0"
);

/// `<CHECKPOINT, n, d, i>` (§4.3): the digest of the state after executing `seq`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Checkpoint {
    pub seq: u64,
    pub state_digest: Digest,
}

impl Wire for Checkpoint {
    const MIN_BYTES: usize = 8 + 32;
    fn encode_to(&self, w: &mut Writer) {
        w.u64(self.seq);
        self.state_digest.encode_to(w);
    }
    fn decode_from(r: &mut Reader<'_>, limits: &Limits) -> Result<Self, DecodeError> {
        Ok(Checkpoint {
            seq: r.u64()?,
            state_digest: Digest::decode_from(r, limits)?,
        })
    }
}
impl SignedBody for Checkpoint {
    const TAG: &'static [u8] = b"dbqs.v1.pbft.checkpoint\0";
}

/// Proof that a checkpoint is stable: 2f+1 matching signed checkpoint messages (§4.3).
/// The genesis checkpoint (seq 0) needs no votes.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CheckpointProof {
    pub seq: u64,
    pub state_digest: Digest,
    pub votes: Vec<Signed<Checkpoint>>,
}

impl Wire for CheckpointProof {
    const MIN_BYTES: usize = 8 + 32 + 4;
    fn encode_to(&self, w: &mut Writer) {
        w.u64(self.seq);
        self.state_digest.encode_to(w);
        encode_vec(w, &self.votes);
    }
    fn decode_from(r: &mut Reader<'_>, limits: &Limits) -> Result<Self, DecodeError> {
        Ok(CheckpointProof {
            seq: r.u64()?,
            state_digest: Digest::decode_from(r, limits)?,
            votes: decode_vec(r, limits, "checkpoint votes", limits.max_signatures)?,
        })
    }
}

/// A prepared certificate (§4.2): the pre-prepare plus 2f matching prepares from distinct
/// backups. Signed parts make it transferable inside view-change messages (§4.4).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PreparedCert {
    pub pre_prepare: Signed<PrePrepare>,
    pub prepares: Vec<Signed<Prepare>>,
}

impl Wire for PreparedCert {
    const MIN_BYTES: usize = Signed::<PrePrepare>::MIN_BYTES + 4;
    fn encode_to(&self, w: &mut Writer) {
        self.pre_prepare.encode_to(w);
        encode_vec(w, &self.prepares);
    }
    fn decode_from(r: &mut Reader<'_>, limits: &Limits) -> Result<Self, DecodeError> {
        Ok(PreparedCert {
            pre_prepare: Signed::decode_from(r, limits)?,
            prepares: decode_vec(r, limits, "prepares", limits.max_signatures)?,
        })
    }
}

/// `<VIEW-CHANGE, v+1, n, C, P, i>` (§4.4).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ViewChange {
    pub new_view: u64,
    pub stable: CheckpointProof,
    /// For each seq above the stable checkpoint, the highest-view prepared certificate.
    pub prepared: Vec<PreparedCert>,
}

impl Wire for ViewChange {
    const MIN_BYTES: usize = 8 + CheckpointProof::MIN_BYTES + 4;
    fn encode_to(&self, w: &mut Writer) {
        w.u64(self.new_view);
        self.stable.encode_to(w);
        encode_vec(w, &self.prepared);
    }
    fn decode_from(r: &mut Reader<'_>, limits: &Limits) -> Result<Self, DecodeError> {
        Ok(ViewChange {
            new_view: r.u64()?,
            stable: CheckpointProof::decode_from(r, limits)?,
            prepared: decode_vec(r, limits, "prepared certificates", limits.max_proofs)?,
        })
    }
}
impl SignedBody for ViewChange {
    const TAG: &'static [u8] = b"dbqs.v1.pbft.view-change\0";
}

/// `<NEW-VIEW, v+1, V, O>` (§4.4).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct NewView {
    pub view: u64,
    pub view_changes: Vec<Signed<ViewChange>>,
    pub pre_prepares: Vec<Signed<PrePrepare>>,
}

impl Wire for NewView {
    const MIN_BYTES: usize = 8 + 4 + 4;
    fn encode_to(&self, w: &mut Writer) {
        w.u64(self.view);
        encode_vec(w, &self.view_changes);
        encode_vec(w, &self.pre_prepares);
    }
    fn decode_from(r: &mut Reader<'_>, limits: &Limits) -> Result<Self, DecodeError> {
        Ok(NewView {
            view: r.u64()?,
            view_changes: decode_vec(r, limits, "view changes", limits.max_signatures)?,
            pre_prepares: decode_vec(r, limits, "new-view pre-prepares", limits.max_proofs)?,
        })
    }
}
impl SignedBody for NewView {
    const TAG: &'static [u8] = b"dbqs.v1.pbft.new-view\0";
}

/// Periodic status (PBFT's retransmission scheme, Castro's thesis §5.2): lets peers resend
/// what this replica misses, or offer state transfer when it fell behind.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Status {
    pub view: u64,
    pub view_changing: bool,
    pub last_executed: u64,
    pub stable_seq: u64,
}

impl Wire for Status {
    const MIN_BYTES: usize = 8 + 1 + 8 + 8;
    fn encode_to(&self, w: &mut Writer) {
        w.u64(self.view);
        w.bool(self.view_changing);
        w.u64(self.last_executed);
        w.u64(self.stable_seq);
    }
    fn decode_from(r: &mut Reader<'_>, _: &Limits) -> Result<Self, DecodeError> {
        Ok(Status {
            view: r.u64()?,
            view_changing: r.bool()?,
            last_executed: r.u64()?,
            stable_seq: r.u64()?,
        })
    }
}
impl SignedBody for Status {
    const TAG: &'static [u8] = b"dbqs.v1.pbft.status\0";
}

/// A committed batch with its commit certificate (2f+1 matching commits), sent to a lagging
/// replica. Self-verifying: the receiver needs no trust in the sender.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CommittedBatch {
    pub batch: Batch,
    pub commits: Vec<Signed<Commit>>,
}

impl Wire for CommittedBatch {
    const MIN_BYTES: usize = Batch::MIN_BYTES + 4;
    fn encode_to(&self, w: &mut Writer) {
        self.batch.encode_to(w);
        encode_vec(w, &self.commits);
    }
    fn decode_from(r: &mut Reader<'_>, limits: &Limits) -> Result<Self, DecodeError> {
        Ok(CommittedBatch {
            batch: Batch::decode_from(r, limits)?,
            commits: decode_vec(r, limits, "commits", limits.max_signatures)?,
        })
    }
}
impl SignedBody for CommittedBatch {
    const TAG: &'static [u8] = b"dbqs.v1.pbft.committed-batch\0";
}

/// A stable checkpoint's state for a replica that fell behind the low watermark (§4.3 state
/// transfer). The receiver checks `state` against the proof's digest.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct StateTransfer {
    pub proof: CheckpointProof,
    pub state: Vec<u8>,
}

impl Wire for StateTransfer {
    const MIN_BYTES: usize = CheckpointProof::MIN_BYTES + 4;
    fn encode_to(&self, w: &mut Writer) {
        self.proof.encode_to(w);
        w.var_bytes(&self.state);
    }
    fn decode_from(r: &mut Reader<'_>, limits: &Limits) -> Result<Self, DecodeError> {
        Ok(StateTransfer {
            proof: CheckpointProof::decode_from(r, limits)?,
            state: r.var_bytes("state bytes", limits.max_state_bytes)?,
        })
    }
}
impl SignedBody for StateTransfer {
    const TAG: &'static [u8] = b"dbqs.v1.pbft.state-transfer\0";
}

/// `<REPLY, v, t, c, i, r>` (§4.1), signed so a client can count distinct replicas.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Reply {
    pub view: u64,
    pub client: ClientId,
    pub request_num: u64,
    pub read_only: bool,
    pub result: Vec<u8>,
}

impl Wire for Reply {
    const MIN_BYTES: usize = 8 + 32 + 8 + 1 + 4;
    fn encode_to(&self, w: &mut Writer) {
        w.u64(self.view);
        w.fixed(&self.client.0);
        w.u64(self.request_num);
        w.bool(self.read_only);
        w.var_bytes(&self.result);
    }
    fn decode_from(r: &mut Reader<'_>, limits: &Limits) -> Result<Self, DecodeError> {
        Ok(Reply {
            view: r.u64()?,
            client: ClientId(r.array()?),
            request_num: r.u64()?,
            read_only: r.bool()?,
            result: r.var_bytes("reply bytes", limits.max_reply_bytes)?,
        })
    }
}
impl SignedBody for Reply {
    const TAG: &'static [u8] = b"dbqs.v1.pbft.reply\0";
}

/// Everything a replica sends to another replica.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Message {
    /// A client request forwarded by a backup to the primary (§4.1, anti-censorship).
    Request(Request),
    PrePrepare {
        pre_prepare: Signed<PrePrepare>,
        batch: Batch,
    },
    Prepare(Signed<Prepare>),
    Commit(Signed<Commit>),
    Checkpoint(Signed<Checkpoint>),
    /// The batches of the prepared certificates travel beside the signed message.
    ViewChange {
        view_change: Signed<ViewChange>,
        batches: Vec<Batch>,
    },
    /// The batches of the new pre-prepares travel beside the signed message.
    NewView {
        new_view: Signed<NewView>,
        batches: Vec<Batch>,
    },
    Status(Signed<Status>),
    CommittedBatch(Signed<CommittedBatch>),
    StateTransfer(Signed<StateTransfer>),
}

impl Message {
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Request(_) => "request",
            Message::PrePrepare { .. } => "pre-prepare",
            Message::Prepare(_) => "prepare",
            Message::Commit(_) => "commit",
            Message::Checkpoint(_) => "checkpoint",
            Message::ViewChange { .. } => "view-change",
            Message::NewView { .. } => "new-view",
            Message::Status(_) => "status",
            Message::CommittedBatch(_) => "committed-batch",
            Message::StateTransfer(_) => "state-transfer",
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        match self {
            Message::Request(r) => {
                w.u8(1);
                r.encode_to(&mut w);
            }
            Message::PrePrepare { pre_prepare, batch } => {
                w.u8(2);
                pre_prepare.encode_to(&mut w);
                batch.encode_to(&mut w);
            }
            Message::Prepare(m) => {
                w.u8(3);
                m.encode_to(&mut w);
            }
            Message::Commit(m) => {
                w.u8(4);
                m.encode_to(&mut w);
            }
            Message::Checkpoint(m) => {
                w.u8(5);
                m.encode_to(&mut w);
            }
            Message::ViewChange {
                view_change,
                batches,
            } => {
                w.u8(6);
                view_change.encode_to(&mut w);
                encode_vec(&mut w, batches);
            }
            Message::NewView { new_view, batches } => {
                w.u8(7);
                new_view.encode_to(&mut w);
                encode_vec(&mut w, batches);
            }
            Message::Status(m) => {
                w.u8(8);
                m.encode_to(&mut w);
            }
            Message::CommittedBatch(m) => {
                w.u8(9);
                m.encode_to(&mut w);
            }
            Message::StateTransfer(m) => {
                w.u8(10);
                m.encode_to(&mut w);
            }
        }
        w.bytes
    }

    /// Decodes one message. The size limit is checked before anything else is read.
    pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Message, DecodeError> {
        if bytes.len() > limits.max_message_bytes {
            return Err(DecodeError::Oversized {
                len_bytes: bytes.len(),
                max_bytes: limits.max_message_bytes,
            });
        }
        let mut r = Reader::new(bytes);
        let l = limits;
        let msg = match r.u8()? {
            1 => Message::Request(Request::decode_from(&mut r, l)?),
            2 => Message::PrePrepare {
                pre_prepare: Signed::decode_from(&mut r, l)?,
                batch: Batch::decode_from(&mut r, l)?,
            },
            3 => Message::Prepare(Signed::decode_from(&mut r, l)?),
            4 => Message::Commit(Signed::decode_from(&mut r, l)?),
            5 => Message::Checkpoint(Signed::decode_from(&mut r, l)?),
            6 => Message::ViewChange {
                view_change: Signed::decode_from(&mut r, l)?,
                batches: decode_vec(&mut r, l, "view-change batches", l.max_proofs)?,
            },
            7 => Message::NewView {
                new_view: Signed::decode_from(&mut r, l)?,
                batches: decode_vec(&mut r, l, "new-view batches", l.max_proofs)?,
            },
            8 => Message::Status(Signed::decode_from(&mut r, l)?),
            9 => Message::CommittedBatch(Signed::decode_from(&mut r, l)?),
            10 => Message::StateTransfer(Signed::decode_from(&mut r, l)?),
            tag => return Err(DecodeError::UnknownTag(tag)),
        };
        r.finish()?;
        Ok(msg)
    }
}

/// Encodes a signed reply for the client transport.
pub fn encode_reply(reply: &Signed<Reply>) -> Vec<u8> {
    reply.to_bytes()
}

/// Decodes a signed reply received by a client.
pub fn decode_reply(bytes: &[u8], limits: &Limits) -> Result<Signed<Reply>, DecodeError> {
    if bytes.len() > limits.max_message_bytes {
        return Err(DecodeError::Oversized {
            len_bytes: bytes.len(),
            max_bytes: limits.max_message_bytes,
        });
    }
    let mut r = Reader::new(bytes);
    let reply = Signed::<Reply>::decode_from(&mut r, limits)?;
    r.finish()?;
    Ok(reply)
}
