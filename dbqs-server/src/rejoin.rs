//! Rejoining after an eviction (PROTOCOL.md, "Membership service", Evict: "an evicted node
//! whose AddCert is still unexpired and was never answered by a RemoveCert may submit it
//! again to rejoin (it gets a new ring position like any admitted node, and takes its ranges
//! over as new)").
//!
//! A node cannot tell an eviction from a removal: a configuration lists its members, not why
//! others left. So whenever the node adopts a configuration newer than one it was a member
//! of and finds itself outside it, it submits its own AddCert to the MS, and the MS decides
//! (docs/membership.md, "Rejoin after an eviction"): a removed node's AddCert is a replayed
//! serial, and that refusal ends the attempts. A node restarted after it had adopted such
//! a configuration learns from its store that it was a member before
//! ([`last_member_epoch`]) and starts outside the configuration with the watcher seeded. The node orders the Add itself, as a PBFT
//! client keyed by its identity key (as `ms_rotation` does for a new MS member): the state
//! machine honours a rejoin right only for a request signed by the node it names, so nobody
//! else can bring a dead node back with its public AddCert. While the MS's answers mean
//! "not now" (no quorum reached, a retired MS, a full queue or system), the node keeps
//! submitting with a back-off capped at [`REJOIN_MAX_DELAY`], so no outage of the MS
//! costs an admin action; only a final refusal (a replayed serial: removed; an expired
//! or badly signed certificate) stops it. Every step is logged.
//!
//! What the rejoin relies on (nothing here touches the store): the epoch manager
//! (configs.rs) adopts epochs one at a time, so the node passes through the configuration
//! that admits it again (a member without a ring position, in no group) before the one
//! that positions it; `transfer::plan::next_pending` then plans every range it serves there
//! as gained, to be taken over from the previous epoch's groups, and until a range is taken
//! over the node answers nothing about its objects from its store. So what the store still
//! holds from before the eviction is never served as if a quorum held it.

use std::path::Path;
use std::time::Duration;

use dbqs_common::certs::AddCert;
use dbqs_common::config::Configuration;
use dbqs_common::threshold::MsPublicKey;
use dbqs_common::{ActiveConfig, ConfigCert, Epoch, KeyPair, NodeId};
use dbqs_ms::membership::{Op, OpError, OpKind, Outcome, Reply, pbft_domain};
use dbqs_ms::service::{PbftClient, PbftClientConfig, TlsMaterial};
use ed25519_dalek::SigningKey;
use tokio::sync::watch;

use crate::ms_host::{ms_group, unix_micros};
use crate::store::ObjectStore;

/// Wait after the first submission that found no MS able to take it; doubled after each
/// further one, up to [`REJOIN_MAX_DELAY`] (each submission is one PBFT request to the MS
/// of the node's configuration, with up to [`REJOIN_PBFT_ATTEMPTS`] attempts). There is
/// no limit on the number of submissions: at one a minute at most, they cost the MS
/// nothing, and giving up would leave an admin to notice.
pub const REJOIN_FIRST_DELAY: Duration = Duration::from_secs(1);
pub const REJOIN_MAX_DELAY: Duration = Duration::from_secs(60);
/// How long one PBFT attempt of a submission waits for f_ms+1 matching replies, and how
/// many attempts a submission makes.
pub const REJOIN_ATTEMPT_TIMEOUT_MS: u64 = 2_000;
pub const REJOIN_PBFT_ATTEMPTS: u32 = 3;
/// Epochs the node waits, after the MS queued its AddCert, for the configuration that
/// lists it again before it submits once more (the add applies when the queuing epoch ends).
pub const REJOIN_WAIT_EPOCHS: u64 = 3;
/// Most stored configurations a node looks back through at start-up for the newest one
/// that lists it ([`last_member_epoch`]): epochs it adopted as a non-member after its
/// eviction. Beyond it the node starts as one that was never a member.
pub const MAX_REJOIN_LOOKBACK_EPOCHS: u64 = 65_536;
/// The file holding a node's AddCert, next to its TLS certificate: `dbqs genesis`,
/// `dbqs admin add --tls-out` and `devnet add-node` all write it there.
pub const ADD_CERT_FILE: &str = "add.cert";

/// Reads the node's own AddCert from `add.cert` next to `tls_cert`, if that file exists.
/// A file that cannot be read or decoded is reported and ignored: the node runs without
/// it, and an admin must add it again if it is ever evicted.
pub fn read_own_add_cert(tls_cert: &Path) -> Option<AddCert> {
    let path = tls_cert.with_file_name(ADD_CERT_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read this node's AddCert; it cannot rejoin by itself after an eviction");
            return None;
        }
    };
    match AddCert::decode(&bytes) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "this node's AddCert does not decode; it cannot rejoin by itself after an eviction");
            None
        }
    }
}

/// The AddCert the node rejoins with: `own` if it names this node, else this node's
/// genesis AddCert (a genesis member's `add.cert` may be missing from its directory).
pub fn own_add_cert(me: &NodeId, own: Option<&AddCert>, genesis: &[AddCert]) -> Option<AddCert> {
    own.into_iter()
        .chain(genesis)
        .find(|c| c.node_id() == *me)
        .cloned()
}

/// At start-up, when the newest configuration the store holds (`newest`) does not list
/// `me`: the newest older epoch whose stored configuration does, if any (at most
/// [`MAX_REJOIN_LOOKBACK_EPOCHS`] back). Such a node was evicted (or removed) after it
/// had adopted that configuration, and a restart must not cost it the way back
/// (PROTOCOL.md, Evict: an evicted node "may submit it again"): it starts as a
/// non-member and the rejoin task, seeded with this epoch, submits its AddCert. The
/// configuration found is verified with the MS key; a stored certificate that does not
/// decode or verify is skipped (the store only holds verified ones).
pub fn last_member_epoch(
    store: &ObjectStore,
    me: &NodeId,
    newest: Epoch,
    ms_key: &MsPublicKey,
) -> anyhow::Result<Option<Epoch>> {
    let floor = newest.saturating_sub(MAX_REJOIN_LOOKBACK_EPOCHS).max(1);
    for epoch in (floor..newest).rev() {
        let Some(bytes) = store.config_at(epoch)? else {
            continue;
        };
        // Membership first (a decode), the signature only for the one found.
        let Ok(cert) = ConfigCert::decode(&bytes) else {
            continue;
        };
        let listed = Configuration::decode(&cert.configuration).is_ok_and(|c| {
            c.members
                .binary_search_by_key(me, dbqs_common::config::Member::node_id)
                .is_ok()
        });
        if listed
            && cert.epoch == epoch
            && ActiveConfig::verify(cert, ms_key).is_ok_and(|a| a.member(me).is_some())
        {
            return Ok(Some(epoch));
        }
    }
    Ok(None)
}

/// What the MS said to one submission.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// Queued in this MS epoch: the node is a member again from the next.
    Queued(Epoch),
    /// Queued already (an earlier submission whose answer was lost).
    AlreadyQueued,
    /// No definite answer, or "resubmit in the next epoch": try again later.
    Later(String),
    /// A definite no (the node was removed, its AddCert expired, ...): stop.
    Refused(String),
}

/// Whether a refusal with this code is final for this AddCert: nothing the MS or time
/// can change makes it acceptable. A replayed serial (the node was removed, its right was
/// withdrawn or spent), a certificate that expired, does not verify under the current
/// authority or does not decode, an operation that does not decode, an address over the
/// limit. Every other refusal (a full queue or system, a retired MS, a request that
/// reached no MS, an epoch the MS has left, or a code this node does not know) may go
/// away by itself, and the node tries again later.
fn final_refusal(code: u8) -> bool {
    [
        OpError::Replay(0),
        OpError::Certificate(dbqs_common::certs::CertError::Expired {
            not_after_ms: 0,
            now_ms: 0,
        }),
        OpError::Malformed(dbqs_common::codec::DecodeError::Trailing(0)),
        OpError::AddressTooLong { max: 0 },
    ]
    .iter()
    .any(|e| e.code() == code)
}

/// What the rejoin loop does next.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Submit again after this wait.
    RetryIn(Duration),
    /// Wait for newer configurations (the MS queued the AddCert: the add applies when
    /// its epoch ends).
    AwaitConfig,
    /// Stop submitting: only an admin can add the node again.
    Stop,
}

/// The submissions and back-off of one way back (from an eviction until the node is a
/// member again).
#[derive(Debug)]
struct Retry {
    attempts: u32,
    delay: Duration,
}

impl Retry {
    fn new() -> Retry {
        Retry {
            attempts: 0,
            delay: REJOIN_FIRST_DELAY,
        }
    }

    /// Counts a submission about to be made; returns its number.
    fn start(&mut self) -> u32 {
        self.attempts = self.attempts.saturating_add(1);
        self.attempts
    }

    /// What to do after the MS's answer to a submission.
    fn after(&mut self, answer: &Answer) -> Step {
        match answer {
            Answer::Queued(_) => {
                self.delay = REJOIN_FIRST_DELAY;
                Step::AwaitConfig
            }
            Answer::AlreadyQueued => Step::AwaitConfig,
            Answer::Refused(_) => Step::Stop,
            Answer::Later(_) => {
                let wait = self.delay;
                self.delay = (self.delay * 2).min(REJOIN_MAX_DELAY);
                Step::RetryIn(wait)
            }
        }
    }
}

fn classify(r: anyhow::Result<Reply>) -> Answer {
    let already = OpError::AlreadyMember(NodeId([0; 32])).code();
    match r {
        Ok(Reply {
            epoch,
            outcome: Outcome::Queued { .. },
        }) => Answer::Queued(epoch),
        // The add filled the epoch's queue and ended it: a member from `epoch` on.
        Ok(Reply {
            epoch,
            outcome: Outcome::EpochEnded,
        }) => Answer::Queued(epoch.saturating_sub(1)),
        Ok(Reply {
            outcome: Outcome::Rejected { code, .. },
            ..
        }) if code == already => Answer::AlreadyQueued,
        Ok(Reply {
            outcome: Outcome::Rejected { code, reason },
            ..
        }) => {
            if final_refusal(code) {
                Answer::Refused(reason)
            } else {
                Answer::Later(reason)
            }
        }
        Ok(other) => Answer::Later(format!("unexpected answer {other:?}")),
        Err(e) => Answer::Later(format!("{e:#}")),
    }
}

/// Orders `Add(add)` at the MS of `config` as a PBFT client keyed by `key` (the state
/// machine takes the proposer from that key). An operation tagged with an epoch the MS has
/// left (or not reached) is refused with the MS's epoch; it is retried with that one, as
/// `ms_host::invoke` does.
async fn submit_own(
    key: &KeyPair,
    tls: &TlsMaterial,
    config: &Configuration,
    add: &AddCert,
) -> anyhow::Result<Reply> {
    let (infos, keys) = ms_group(config)?;
    let mut client = PbftClient::new(
        &infos,
        keys,
        tls,
        SigningKey::from_bytes(&key.seed()),
        // Request numbers of this key keep growing across submissions and restarts.
        unix_micros(),
        PbftClientConfig {
            domain: pbft_domain(config),
            attempt_timeout_ms: REJOIN_ATTEMPT_TIMEOUT_MS,
            max_attempts: REJOIN_PBFT_ATTEMPTS,
            ..PbftClientConfig::default()
        },
    )?;
    let mut epoch = config.epoch;
    let mut last = None;
    for _ in 0..4 {
        let op = Op::new(epoch, OpKind::Add(add.clone())).encode();
        let reply = Reply::decode(&client.invoke(op).await?.result)?;
        match &reply.outcome {
            // StaleEpoch, FutureEpoch (codes 1, 2), naming the MS's epoch.
            Outcome::Rejected { code: 1 | 2, .. } if reply.epoch != epoch => {
                epoch = reply.epoch;
                last = Some(reply);
            }
            _ => return Ok(reply),
        }
    }
    last.ok_or_else(|| anyhow::anyhow!("no reply"))
}

/// Starts the rejoin watcher of a node; it ends when `stop` is set or dropped (the node
/// stopped or crashed) or when `configs` closes. `member_until`: the last epoch the node
/// was a member in, when it starts outside its newest configuration
/// ([`last_member_epoch`]); the watcher then submits at once.
pub fn spawn(
    key: KeyPair,
    add: Option<AddCert>,
    tls: TlsMaterial,
    configs: watch::Receiver<ActiveConfig>,
    stop: watch::Receiver<bool>,
    member_until: Option<Epoch>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(key, add, tls, configs, stop, member_until))
}

async fn run(
    key: KeyPair,
    add: Option<AddCert>,
    tls: TlsMaterial,
    mut configs: watch::Receiver<ActiveConfig>,
    mut stop: watch::Receiver<bool>,
    member_until: Option<Epoch>,
) {
    let me = key.node_id();
    let Some(add) = add.filter(|a| a.node_id() == me) else {
        tracing::debug!(node = %me, "no AddCert of this node at hand: after an eviction only an admin can add it again");
        return;
    };
    // The newest epoch the node was seen a member in: by this process, or, if it started
    // outside its newest configuration, in the store.
    let mut member_in: Option<Epoch> = member_until;
    let mut retry = Retry::new();
    // The MS epoch in which a submission was queued.
    let mut queued_in: Option<Epoch> = None;
    let mut gave_up = false;
    loop {
        if *stop.borrow() {
            return;
        }
        let cfg = configs.borrow_and_update().clone();
        let epoch = cfg.epoch();
        if cfg.member(&me).is_some() {
            if retry.attempts > 0 {
                tracing::info!(node = %me, epoch, "rejoined: this node is a member again (it takes over its ranges as a new member)");
            }
            member_in = Some(epoch);
            retry = Retry::new();
            queued_in = None;
            gave_up = false;
        } else if let Some(was) = member_in.filter(|was| epoch > *was)
            && !gave_up
            && queued_in.is_none_or(|q| epoch > q.saturating_add(REJOIN_WAIT_EPOCHS))
        {
            let attempt = retry.start();
            tracing::warn!(
                node = %me,
                epoch,
                member_until = was,
                serial = add.serial,
                attempt,
                "this node is not a member of configuration {epoch}: submitting its own AddCert to rejoin \
                 (PROTOCOL.md, Evict: an evicted node may; a removed one is refused)"
            );
            let answer = tokio::select! {
                r = submit_own(&key, &tls, &cfg.config, &add) => classify(r),
                _ = stop.changed() => return,
            };
            let step = retry.after(&answer);
            match answer {
                Answer::Queued(e) => {
                    tracing::info!(node = %me, queued_in = e, "the MS queued this node's AddCert: it rejoins in epoch {}, without a ring position until the epoch after", e.saturating_add(1));
                    queued_in = Some(e);
                }
                Answer::AlreadyQueued => {
                    tracing::info!(node = %me, epoch, "this node's AddCert is already queued at the MS");
                    queued_in = Some(epoch);
                }
                Answer::Refused(reason) => {
                    tracing::warn!(
                        node = %me,
                        %reason,
                        "the MS refused this node's AddCert: it was removed by an admin (or its rejoin right was withdrawn), or the AddCert expired or is no longer valid. \
                         It serves no client until an admin adds it again"
                    );
                    gave_up = true;
                }
                Answer::Later(why) => {
                    if let Step::RetryIn(delay) = step {
                        tracing::warn!(node = %me, attempt = retry.attempts, retry_in_ms = delay.as_millis() as u64, %why, "rejoin not taken yet; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = stop.changed() => return,
                        }
                        continue;
                    }
                }
            }
        }
        tokio::select! {
            r = configs.changed() => if r.is_err() { return },
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(e: OpError) -> anyhow::Result<Reply> {
        Ok(Reply {
            epoch: 7,
            outcome: Outcome::Rejected {
                code: e.code(),
                reason: e.to_string(),
            },
        })
    }

    #[test]
    fn the_ms_answers_decide_whether_to_retry() {
        let id = NodeId([2; 32]);
        assert_eq!(
            classify(Ok(Reply {
                epoch: 7,
                outcome: Outcome::Queued { changes: 1 }
            })),
            Answer::Queued(7)
        );
        assert_eq!(
            classify(Ok(Reply {
                epoch: 8,
                outcome: Outcome::EpochEnded
            })),
            Answer::Queued(7)
        );
        // A removed node's AddCert is a replayed serial: a definite no.
        assert_eq!(
            classify(rejected(OpError::Replay(5))),
            Answer::Refused(OpError::Replay(5).to_string())
        );
        assert_eq!(
            classify(rejected(OpError::AlreadyMember(id))),
            Answer::AlreadyQueued
        );
        for e in [
            OpError::PendingFull { max: 1 },
            OpError::ChangeLimit { max: 1 },
            OpError::Retired(9),
            OpError::StaleEpoch {
                op_epoch: 6,
                current: 7,
            },
        ] {
            assert!(matches!(classify(rejected(e)), Answer::Later(_)));
        }
        assert!(matches!(
            classify(Err(anyhow::anyhow!("no result after 3 attempts"))),
            Answer::Later(_)
        ));
    }

    #[test]
    fn a_node_keeps_trying_while_the_answers_mean_later() {
        // An MS that is handing over, a rejoin sent to replicas that are no MS, no quorum
        // reachable, a full system: none of these says the node may not come back, so it
        // must not give up after a fixed number of submissions and cost an admin action.
        let id = NodeId([2; 32]);
        let later = [
            rejected(OpError::Retired(9)),
            rejected(OpError::NotMsMember(id)),
            rejected(OpError::TooManyMembers { max: 1 }),
            rejected(OpError::PendingFull { max: 1 }),
            Err(anyhow::anyhow!("no result after 3 attempts")),
        ];
        let mut retry = Retry::new();
        let mut waited = Duration::ZERO;
        for k in 0..200 {
            assert_eq!(retry.start(), k as u32 + 1);
            let answer = classify(match &later[k % later.len()] {
                Ok(r) => Ok(r.clone()),
                Err(e) => Err(anyhow::anyhow!("{e}")),
            });
            match retry.after(&answer) {
                Step::RetryIn(d) => {
                    assert!(d <= REJOIN_MAX_DELAY, "{d:?}");
                    waited += d;
                }
                other => panic!("{answer:?} must mean retry later, not {other:?}"),
            }
        }
        assert!(
            waited >= Duration::from_secs(60 * 190),
            "capped at 60 s, not below"
        );
        // Only a final refusal stops it: a replayed serial (removed), an expired or badly
        // signed certificate.
        let expired = dbqs_common::certs::CertError::Expired {
            not_after_ms: 1,
            now_ms: 2,
        };
        for e in [
            OpError::Replay(5),
            OpError::Certificate(expired),
            OpError::Certificate(dbqs_common::certs::CertError::Signature(
                dbqs_common::identity::SignatureError::Invalid,
            )),
        ] {
            let mut retry = Retry::new();
            retry.start();
            assert_eq!(
                retry.after(&classify(rejected(e.clone()))),
                Step::Stop,
                "{e}"
            );
        }
    }

    /// Signed configurations of epochs 1..=`n`, listing `me` in the epochs `listed` says,
    /// with an MS of one other node; and the MS key.
    fn chain(me: &KeyPair, n: u64, listed: impl Fn(u64) -> bool) -> (Vec<ConfigCert>, MsPublicKey) {
        use dbqs_common::codec::sha256;
        use dbqs_common::config::{Member, Params};
        let (pks, shares) = dbqs_common::threshold::deal(1, 0);
        let ms_key = MsPublicKey(pks.public_key());
        let member = |k: &KeyPair, i: u8| Member {
            key: k.public(),
            tls_cert_hash: [i; 32],
            x25519_key: [i; 32],
            address: format!("h{i}:1"),
            ring_position: Some([i; 32]),
        };
        let others: Vec<KeyPair> = (10..14).map(|i| KeyPair::from_seed([i; 32])).collect();
        let certs = (1..=n)
            .map(|epoch| {
                let mut members: Vec<Member> = others
                    .iter()
                    .enumerate()
                    .map(|(i, k)| member(k, i as u8 + 1))
                    .collect();
                if listed(epoch) {
                    members.push(member(me, 99));
                }
                let mut config = Configuration {
                    epoch,
                    prev_hash: [0; 32],
                    ring_salt: [7; 32],
                    authority: KeyPair::from_seed([0xAA; 32]).public(),
                    ms_key_set: pks.to_bytes(),
                    params: Params::default(),
                    members,
                    ms_members: vec![others[0].node_id()],
                    ms_next: Vec::new(),
                    revoked_clients: vec![],
                };
                config.normalize();
                let bytes = config.encode();
                let msg = Configuration::signing_bytes(epoch, &sha256(&[&bytes]));
                let sig = dbqs_common::threshold::combine(&pks, &msg, &[(0, shares[0].sign(&msg))])
                    .unwrap();
                ConfigCert {
                    epoch,
                    configuration: bytes,
                    signature: sig.to_bytes().to_vec(),
                }
            })
            .collect();
        (certs, ms_key)
    }

    #[test]
    fn start_up_finds_the_last_stored_configuration_that_listed_the_node() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = ObjectStore::open_checked(&dir.path().join("store.redb")).unwrap();
        let me = KeyPair::from_seed([1; 32]);
        // A member in epochs 1-3, evicted in 4; the node adopted 4 and 5 as a non-member.
        let (certs, ms_key) = chain(&me, 5, |e| e <= 3);
        for c in &certs {
            store.set_epoch(c.epoch, &c.encode()).unwrap();
        }
        assert_eq!(
            last_member_epoch(&store, &me.node_id(), 5, &ms_key).unwrap(),
            Some(3)
        );
        // A node that was never a member finds none: it keeps being refused at start.
        let stranger = KeyPair::from_seed([2; 32]);
        assert_eq!(
            last_member_epoch(&store, &stranger.node_id(), 5, &ms_key).unwrap(),
            None
        );
        // Certificates that do not verify with the MS key do not count.
        let (_, other_key) = chain(&me, 1, |_| true);
        assert_eq!(
            last_member_epoch(&store, &me.node_id(), 5, &other_key).unwrap(),
            None
        );
    }

    #[test]
    fn the_add_cert_is_read_next_to_the_tls_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls.pem");
        assert_eq!(read_own_add_cert(&tls), None);
        let auth = KeyPair::from_seed([1; 32]);
        let node = KeyPair::from_seed([2; 32]);
        let add = AddCert::issue(&auth, node.public(), [3; 32], [4; 32], "h:1".into(), 9, 10);
        std::fs::write(dir.path().join(ADD_CERT_FILE), add.encode()).unwrap();
        assert_eq!(read_own_add_cert(&tls), Some(add.clone()));
        std::fs::write(dir.path().join(ADD_CERT_FILE), b"garbage").unwrap();
        assert_eq!(read_own_add_cert(&tls), None);
        // Only the node's own certificate, from its file or from genesis.
        let other = KeyPair::from_seed([5; 32]);
        assert_eq!(own_add_cert(&other.node_id(), Some(&add), &[]), None);
        assert_eq!(
            own_add_cert(&node.node_id(), None, std::slice::from_ref(&add)),
            Some(add.clone())
        );
    }
}
