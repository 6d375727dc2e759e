//! The node's freshness lease (PROTOCOL.md, "Leases"): a node answers Storage requests only
//! while it holds a lease for an epoch at or below its own, obtained from the MS no longer
//! than `lease_ms / (1 + rho)` ago, measured from when it sent the nonce.
//!
//! The keeper renews it every quarter lease: a random nonce goes to every MS member of the
//! current configuration (`Membership.Freshness`), and the lease is taken once f_ms+1
//! distinct members answer with the same epoch and a Merkle path placing the nonce under
//! their root (`dbqs_ms::membership::verify_matching_answers`). A newer epoch in the answers
//! makes the node fetch and verify that configuration first.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dbqs_common::config::Member;
use dbqs_common::{ConfigCert, Epoch, NodeId};
use dbqs_ms::membership::{
    FreshnessAnswer, FreshnessCombiner, FreshnessProof, share_from_bytes, verify_matching_answers,
};
use dbqs_proto::v1 as pb;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use rand::RngCore as _;
use tokio::sync::watch;
use tonic::Status;

use crate::configs::ConfigManager;
use crate::peers::PeerChannels;

/// Assumed bound on clock drift (PROTOCOL.md, "Clocks": at most 1%).
pub const RHO: f64 = 0.01;
/// Pause after a failed renewal before the next attempt.
pub const RETRY_MS: u64 = 200;
/// Longest wait for one MS member's freshness answer.
pub const ANSWER_TIMEOUT_MS: u64 = 2_000;

/// Rounds of `FreshnessShare` calls when building a transferable proof (members that have
/// not executed the batch yet answer NOT_FOUND), and the pause between them.
pub const PROOF_ROUNDS: usize = 3;
pub const PROOF_RETRY_MS: u64 = 20;

/// How long a lease obtained from a nonce sent at T lasts: `lease_ms / (1 + rho)`.
pub fn lease_duration(lease_ms: u64) -> Duration {
    Duration::from_secs_f64(lease_ms as f64 / 1000.0 / (1.0 + RHO))
}

#[derive(Clone, Copy, Debug)]
struct Held {
    epoch: Epoch,
    until: Instant,
}

/// Leases kept at once: the newest per epoch, for the last few epochs (a lease for a
/// newer epoch the node has not adopted yet must not end the one it serves with).
const MAX_HELD: usize = 4;

/// The lease a node holds, shared by the keeper and the Storage service.
#[derive(Default)]
pub struct NodeLease {
    held: Mutex<Vec<Held>>,
    /// The newest transferable proof (f_ms+1 shares over one batch, combined).
    proof: Mutex<Option<FreshnessProof>>,
    wake: tokio::sync::Notify,
    /// Renewals that succeeded and failed (metrics).
    pub renewed: std::sync::atomic::AtomicU64,
    pub failed: std::sync::atomic::AtomicU64,
}

impl NodeLease {
    /// Ok while the node holds a running lease for an epoch at or below `node_epoch`.
    pub fn check(&self, node_epoch: Epoch) -> Result<(), Status> {
        self.check_at(node_epoch, Instant::now())
    }

    /// [`NodeLease::check`] at local time `now` (the clock-skew tests drive it).
    fn check_at(&self, node_epoch: Epoch, now: Instant) -> Result<(), Status> {
        let g = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if g.iter().any(|h| h.epoch <= node_epoch && now < h.until) {
            return Ok(());
        }
        match g.iter().map(|h| h.epoch).max() {
            Some(e) if e > node_epoch => Err(Status::unavailable(format!(
                "node is catching up: the MS is in epoch {e} but this node in epoch {node_epoch}"
            ))),
            _ => Err(Status::unavailable(
                "no freshness lease: this node cannot reach the membership service; try other replicas",
            )),
        }
    }

    /// Time left on the lease that lets the node serve in `node_epoch`, and its epoch
    /// (zero and 0 if none is running).
    pub fn remaining(&self, node_epoch: Epoch) -> (Duration, Epoch) {
        self.remaining_at(node_epoch, Instant::now())
    }

    /// [`NodeLease::remaining`] at local time `now`.
    fn remaining_at(&self, node_epoch: Epoch, now: Instant) -> (Duration, Epoch) {
        let g = self.held.lock().unwrap_or_else(|e| e.into_inner());
        g.iter()
            .filter(|h| h.epoch <= node_epoch && now < h.until)
            .max_by_key(|h| h.until)
            .map_or((Duration::ZERO, 0), |h| {
                (h.until.saturating_duration_since(now), h.epoch)
            })
    }

    /// The newest transferable freshness proof the node holds: anyone with the MS public
    /// key can check that the MS executed the node's nonce at `proof.epoch`.
    pub fn proof(&self) -> Option<FreshnessProof> {
        self.proof.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Asks the keeper to renew now (a request showed a newer epoch).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Takes the lease that a Freshness answer for `epoch` gives to a nonce sent at
    /// local time `sent`: it runs until `sent + lease_duration(lease_ms)`.
    fn take(&self, epoch: Epoch, sent: Instant, lease_ms: u64) {
        self.take_at(epoch, sent, lease_ms, Instant::now())
    }

    /// [`NodeLease::take`] with the answer arriving at local time `now`.
    fn take_at(&self, epoch: Epoch, sent: Instant, lease_ms: u64, now: Instant) {
        let until = sent + lease_duration(lease_ms);
        let mut g = self.held.lock().unwrap_or_else(|e| e.into_inner());
        g.retain(|h| h.until > now && h.epoch != epoch || h.epoch == epoch && h.until > until);
        if !g.iter().any(|h| h.epoch == epoch) {
            g.push(Held { epoch, until });
        }
        g.sort_by_key(|h| h.epoch);
        while g.len() > MAX_HELD {
            g.remove(0);
        }
    }
}

/// One freshness round: the epoch f_ms+1 MS members vouch for, and the members that
/// answered with it (with their replies).
async fn round(
    peers: &PeerChannels,
    ms: &[Member],
    ms_ids: &[NodeId],
    nonce: [u8; 32],
) -> Result<(Epoch, Vec<(Member, pb::FreshnessReply)>), String> {
    let mut calls = FuturesUnordered::new();
    for m in ms {
        let Ok(mut c) = peers.membership(m) else {
            continue;
        };
        let m = m.clone();
        calls.push(async move {
            let r = tokio::time::timeout(
                Duration::from_millis(ANSWER_TIMEOUT_MS),
                c.freshness(pb::FreshnessRequest {
                    nonce: nonce.to_vec(),
                }),
            )
            .await;
            (m, r)
        });
    }
    let mut answers: Vec<(NodeId, FreshnessAnswer)> = Vec::new();
    let mut members: Vec<(Epoch, Member, pb::FreshnessReply)> = Vec::new();
    let mut errors = Vec::new();
    while let Some((m, r)) = calls.next().await {
        let id = m.node_id();
        let reply = match r {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(s)) => {
                errors.push(format!("{}: {}", id.short(), s.message()));
                continue;
            }
            Err(_) => {
                errors.push(format!("{}: timed out", id.short()));
                continue;
            }
        };
        if NodeId::from_slice(&reply.node_id) != Some(id) {
            errors.push(format!("{}: answered for another node", id.short()));
            continue;
        }
        let Some(a) = answer_from_proto(&reply) else {
            errors.push(format!("{}: malformed answer", id.short()));
            continue;
        };
        members.push((a.epoch, m, reply));
        answers.push((id, a));
        if let Ok(e) = verify_matching_answers(&nonce, ms_ids, &answers) {
            let with = members
                .into_iter()
                .filter(|(ep, _, _)| *ep == e)
                .map(|(_, m, r)| (m, r))
                .collect();
            return Ok((e, with));
        }
    }
    Err(format!(
        "fewer than f_ms+1 MS members vouched for one epoch ({})",
        errors.join("; ")
    ))
}

/// Decodes an answer's fixed-size fields; None if any has the wrong length.
pub fn answer_from_proto(r: &pb::FreshnessReply) -> Option<FreshnessAnswer> {
    let root: [u8; 32] = r.root.as_slice().try_into().ok()?;
    if r.path.len() > dbqs_ms::membership::freshness::MAX_PATH_LEN {
        return None;
    }
    let path = r
        .path
        .iter()
        .map(|p| p.as_slice().try_into().ok())
        .collect::<Option<Vec<[u8; 32]>>>()?;
    Some(FreshnessAnswer {
        epoch: r.epoch,
        root,
        leaf_count: r.leaf_count,
        index: r.index,
        path,
    })
}

/// The transferable form (PROTOCOL.md, "Freshness"): takes one member's answer and collects
/// f_ms more shares over the same batch root with `FreshnessShare`; f_ms+1 of them combine
/// into a proof checked with the MS public key. Bad shares are identified and ignored.
async fn transferable(
    peers: &PeerChannels,
    configs: &ConfigManager,
    ms: &[Member],
    nonce: [u8; 32],
    first: &(Member, pb::FreshnessReply),
) -> Option<FreshnessProof> {
    let (m0, r0) = first;
    let a = answer_from_proto(r0)?;
    let cfg = configs.current();
    let mut comb = FreshnessCombiner::new(&cfg.config, a.epoch, a.root, a.leaf_count).ok()?;
    if let Ok(s) = share_from_bytes(&r0.share) {
        let _ = comb.add(m0.node_id(), s);
    }
    let mut asked: Vec<NodeId> = vec![m0.node_id()];
    for _ in 0..PROOF_ROUNDS {
        if let Some(p) = comb.proof(nonce, a.index, a.path.clone()) {
            return p.verify(configs.ms_key()).is_ok().then_some(p);
        }
        let mut calls = FuturesUnordered::new();
        for m in ms.iter().filter(|m| !asked.contains(&m.node_id())) {
            let Ok(mut c) = peers.membership(m) else {
                continue;
            };
            let m = m.clone();
            let req = pb::FreshnessShareRequest {
                root: a.root.to_vec(),
                epoch: a.epoch,
            };
            calls.push(async move { (m, c.freshness_share(req).await) });
        }
        while let Some((m, r)) = calls.next().await {
            let Ok(r) = r else { continue };
            let r = r.into_inner();
            if NodeId::from_slice(&r.node_id) != Some(m.node_id()) {
                continue;
            }
            if let Ok(s) = share_from_bytes(&r.share)
                && comb.add(m.node_id(), s).is_ok()
            {
                asked.push(m.node_id());
            }
        }
        if comb.proof(nonce, a.index, a.path.clone()).is_none() {
            tokio::time::sleep(Duration::from_millis(PROOF_RETRY_MS)).await;
        }
    }
    let p = comb.proof(nonce, a.index, a.path.clone())?;
    p.verify(configs.ms_key()).is_ok().then_some(p)
}

/// Most certificates fetched in one catch-up (a node further behind catches up over
/// several rounds).
pub const MAX_CATCH_UP_EPOCHS: u64 = 256;

/// Fetches and offers the configurations after the node's epoch up to `epoch`, one
/// epoch at a time (nobody skips an epoch), each from one of `from`.
pub async fn fetch_config(
    peers: &PeerChannels,
    configs: &ConfigManager,
    from: &[Member],
    epoch: Epoch,
) -> bool {
    let first = configs.epoch() + 1;
    for e in first..=epoch.min(first + MAX_CATCH_UP_EPOCHS) {
        if configs.epoch() >= e {
            continue;
        }
        let mut got = false;
        for m in from {
            let Ok(mut c) = peers.membership(m) else {
                continue;
            };
            let Ok(r) = c.get_config(pb::GetConfigRequest { epoch: e }).await else {
                continue;
            };
            let Some(cert) = r.into_inner().cert else {
                continue;
            };
            match configs.offer(&[ConfigCert::from_proto(cert)]) {
                Ok(_) => {
                    got = true;
                    break;
                }
                Err(err) => {
                    tracing::warn!(from = %m.node_id(), error = %err, "configuration refused")
                }
            }
        }
        if !got {
            return false;
        }
    }
    configs.epoch() >= epoch
}

/// Keeps `lease` renewed until `stop` changes.
pub async fn keep(
    lease: Arc<NodeLease>,
    configs: Arc<ConfigManager>,
    peers: Arc<PeerChannels>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let cfg = configs.current();
        let lease_ms = cfg.config.params.lease_ms.max(100);
        let ms: Vec<Member> = cfg
            .config
            .ms_members
            .iter()
            .filter_map(|id| cfg.member(id).cloned())
            .collect();
        let ms_ids = cfg.config.ms_members.clone();
        let mut nonce = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut nonce);
        let sent = Instant::now();
        let pause = match round(&peers, &ms, &ms_ids, nonce).await {
            Ok((epoch, with)) => {
                let vouched: Vec<Member> = with.iter().map(|(m, _)| m.clone()).collect();
                if epoch > configs.epoch() {
                    fetch_config(&peers, &configs, &vouched, epoch).await;
                }
                lease.take(epoch, sent, lease_ms);
                if let Some(first) = with.first()
                    && let Some(p) = transferable(&peers, &configs, &ms, nonce, first).await
                {
                    *lease.proof.lock().unwrap_or_else(|e| e.into_inner()) = Some(p);
                }
                lease
                    .renewed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Duration::from_millis(lease_ms / 4)
            }
            Err(e) => {
                lease
                    .failed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (left, _) = lease.remaining(configs.epoch());
                // Before the first lease the MS may still be starting: not worth a warning.
                if e.to_string().contains(dbqs_client::lease::MS_HANDED_OVER) {
                    // The MS handed over. The new MS pushes its first configuration, but a
                    // node that missed the push would keep asking the retired one: pull it
                    // from the old members (they are nodes and adopt it) before retrying.
                    tracing::info!(
                        lease_left_ms = left.as_millis() as u64,
                        "lease renewal waits for the new MS"
                    );
                    fetch_config(&peers, &configs, &ms, configs.epoch() + 1).await;
                } else if lease.renewed.load(std::sync::atomic::Ordering::Relaxed) > 0 {
                    tracing::warn!(error = %e, lease_left_ms = left.as_millis() as u64, "lease renewal failed");
                } else {
                    tracing::debug!(error = %e, "no lease yet");
                }
                Duration::from_millis(RETRY_MS)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = lease.wake.notified() => {}
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    //! Clock skew (PROTOCOL.md, "Fault model": clocks; docs/threat-model.md, "Leases and
    //! clocks"). The MS leaves epoch e at real time `t_leave`, having answered a nonce the
    //! node sent at real time T <= t_leave; PROTOCOL.md keeps the members of epoch e
    //! counted against f until `t_leave + lease_ms` of real time. A host clock that runs at
    //! rate r (local seconds per real second) with r >= 1/(1+ρ) must stop the node serving
    //! epoch e by then; a slower one overruns by the amount the arithmetic predicts.
    use super::*;

    /// A host's monotonic clock that runs at `num/den` local seconds per real second and
    /// reads whole nanoseconds; real time 0 is local time `base`. Real times are
    /// nanoseconds as u128.
    struct HostClock {
        base: Instant,
        num: u128,
        den: u128,
    }

    impl HostClock {
        fn new((num, den): (u128, u128)) -> HostClock {
            HostClock {
                base: Instant::now(),
                num,
                den,
            }
        }

        /// What the clock reads at real time `real_ns`.
        fn at(&self, real_ns: u128) -> Instant {
            let local = real_ns * self.num / self.den;
            self.base + Duration::from_nanos(u64::try_from(local).expect("fits"))
        }

        fn rate(&self) -> f64 {
            self.num as f64 / self.den as f64
        }
    }

    /// The first real time in `[from, to]` at which `running` is false, by bisection;
    /// `running` must be true at `from`, false at `to` and change once.
    fn first_stop(from: u128, to: u128, running: impl Fn(u128) -> bool) -> u128 {
        assert!(running(from), "not running at the start");
        assert!(!running(to), "still running at {to} ns");
        let (mut lo, mut hi) = (from, to);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if running(mid) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        hi
    }

    const MS: u128 = 1_000_000;
    /// The MS leaves epoch e an hour (and an odd few nanoseconds) into the run.
    const T_LEAVE_NS: u128 = 3_600_000 * MS + 123_457;
    const EPOCH: Epoch = 7;
    /// Lease lengths: the tests', the devnet's and the default, and odd ones for rounding
    /// (`lease_duration` rounds 51 ms / 1.01 up to the next nanosecond).
    const LEASES_MS: [u64; 8] = [1, 51, 100, 4_000, 5_000, 10_000, 12_345, 600_000];

    /// Nonce send times T across [t_leave - lease_ms, t_leave], both ends included.
    fn send_times(lease_ns: u128) -> impl Iterator<Item = u128> {
        (0..=40u128)
            .map(move |i| T_LEAVE_NS - lease_ns + lease_ns * i / 40)
            .chain([T_LEAVE_NS - 1, T_LEAVE_NS - lease_ns + 1])
    }

    /// The real time at which the node stops serving epoch `EPOCH`, if it sent its
    /// nonce at real `sent_ns` (the answer arriving a little later) and its clock is
    /// `clock`. Runs the node's own code: `take_at` and `check_at`.
    fn node_stops_serving(clock: &HostClock, lease_ms: u64, sent_ns: u128) -> u128 {
        let lease = NodeLease::default();
        let answered_ns = sent_ns + 1 + u128::from(lease_ms) * MS / 1_000;
        lease.take_at(EPOCH, clock.at(sent_ns), lease_ms, clock.at(answered_ns));
        let running = |t| lease.check_at(EPOCH, clock.at(t)).is_ok();
        let end = first_stop(sent_ns, sent_ns + 3 * u128::from(lease_ms) * MS, running);
        // Past the end the node says why, and reports no time left.
        let e = lease.check_at(EPOCH, clock.at(end)).unwrap_err();
        assert!(
            e.message().contains("no freshness lease"),
            "{}",
            e.message()
        );
        assert_eq!(
            lease.remaining_at(EPOCH, clock.at(end)),
            (Duration::ZERO, 0)
        );
        assert!(lease.remaining_at(EPOCH, clock.at(end - 1)).0 > Duration::ZERO);
        end
    }

    #[test]
    fn node_leases_end_by_t_leave_plus_lease_ms_on_clocks_of_rate_at_least_1_over_1_plus_rho() {
        // Exactly 1/(1+ρ), just above it, exact, ρ fast, twice and a thousand times fast.
        let rates: [(u128, u128); 6] = [
            (100, 101),
            (991, 1_000),
            (1, 1),
            (101, 100),
            (2, 1),
            (1_000, 1),
        ];
        assert_eq!(RHO, 0.01, "the rates above are written for ρ = 1%");
        for rate in rates {
            let clock = HostClock::new(rate);
            for lease_ms in LEASES_MS {
                let lease_ns = u128::from(lease_ms) * MS;
                let bound = T_LEAVE_NS + lease_ns;
                for sent in send_times(lease_ns) {
                    let end = node_stops_serving(&clock, lease_ms, sent);
                    // Not running at `end`, so at no real time after the bound.
                    assert!(
                        end <= bound + 1,
                        "rate {:.6}, lease {lease_ms} ms, nonce sent {} ns before t_leave: \
                         the node still serves {} ns past t_leave + lease_ms",
                        clock.rate(),
                        T_LEAVE_NS - sent,
                        end - 1 - bound
                    );
                }
                // At exactly 1/(1+ρ) the bound is tight: a nonce sent at t_leave gives
                // a lease that ends within a microsecond of it.
                if rate == (100, 101) {
                    let end = node_stops_serving(&clock, lease_ms, T_LEAVE_NS);
                    assert!(
                        end.abs_diff(bound) < 1_000,
                        "lease {lease_ms} ms ends at {end} ns, the bound is {bound} ns"
                    );
                }
            }
        }
    }

    #[test]
    fn node_leases_overrun_the_bound_by_the_predicted_amount_on_slower_clocks() {
        // 0.99 is 0.01% below 1/1.01; 0.985 about half a percent below.
        for rate in [(99u128, 100u128), (197, 200)] {
            let clock = HostClock::new(rate);
            for lease_ms in LEASES_MS {
                let lease_ns = u128::from(lease_ms) * MS;
                let bound = T_LEAVE_NS + lease_ns;
                // docs/threat-model.md: a lease of lease_ms/(1+ρ) local seconds lasts
                // lease_ms/((1+ρ) r) real seconds, which for r < 1/(1+ρ) exceeds
                // lease_ms by lease_ms (1/((1+ρ) r) - 1).
                let overrun_ns = lease_ns as f64 * (1.0 / ((1.0 + RHO) * clock.rate()) - 1.0);
                assert!(overrun_ns > 0.0);
                for sent in send_times(lease_ns) {
                    let end = node_stops_serving(&clock, lease_ms, sent);
                    let lasted = (end - sent) as f64;
                    assert!(
                        (lasted - (lease_ns as f64 + overrun_ns)).abs() < 1_000.0,
                        "rate {:.4}, lease {lease_ms} ms: lasted {lasted} ns, predicted {} ns",
                        clock.rate(),
                        lease_ns as f64 + overrun_ns
                    );
                }
                // The documented failure: a nonce sent at t_leave keeps the node serving
                // epoch e past the bound, by the predicted overrun.
                let end = node_stops_serving(&clock, lease_ms, T_LEAVE_NS);
                assert!(end > bound + 1, "rate {:.4}: no overrun", clock.rate());
                let past = (end - 1 - bound) as f64;
                assert!(
                    (past - overrun_ns).abs() < 1_000.0,
                    "rate {:.4}, lease {lease_ms} ms: served {past} ns past the bound, predicted {overrun_ns} ns",
                    clock.rate()
                );
            }
        }
        // For the tests' 4 s lease at r = 0.985 that is about 20.7 ms (the number
        // docs/threat-model.md quotes).
        let clock = HostClock::new((197, 200));
        let past = node_stops_serving(&clock, 4_000, T_LEAVE_NS) - 1 - (T_LEAVE_NS + 4_000 * MS);
        assert_eq!(past / 100_000, 207, "{past} ns");
    }
}
