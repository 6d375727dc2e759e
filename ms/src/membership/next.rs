//! Computing configuration e+1 when epoch e ends (PROTOCOL.md, "Membership service":
//! "It then computes the next configuration from the current one and the queue").
//!
//! Order of application, so every replica builds the same bytes: renewals, revocations and
//! an authority rotation; then leaves (removals and evictions from the queue, then expiries
//! under the agreed time; an evicted node's rejoin right is recorded, unless its AddCert
//! already served for a rejoin); then ring positions for the members admitted in epoch e, salted
//! with r_e; then the members admitted now, without a position; then epoch, prev_hash and
//! ring_salt = r_e, and canonical order.

use std::collections::{BTreeMap, BTreeSet};

use dbqs_common::codec::sha256;
use dbqs_common::config::{Configuration, Member};
use dbqs_common::identity::NodeId;
use dbqs_common::quorum::{group_size, ms_f_for};

use super::resharing::next_ms;
use super::rotation::RotationState;
use super::signing::SignRequest;
use super::state::{
    Change, LeaveReason, MAX_REJOINABLE, MembershipState, MsChangeReason, Output, Rejoin,
    add_cert_digest,
};

impl MembershipState {
    /// Computes configuration e+1 from configuration e and the queue, and starts epoch e+1.
    pub(super) fn end_epoch(&mut self, outputs: &mut Vec<Output>) {
        let Some(signature) = self.certified else {
            debug_assert!(false, "end_epoch needs ConfigCert e's signature");
            return;
        };
        // PROTOCOL.md, "ring positions resist grinding": r_e = SHA-256(signature of ConfigCert e).
        let r_e = sha256(&[&signature]);
        let pending = std::mem::take(&mut self.pending);
        let mut next = self.config.clone();

        for change in &pending {
            match change {
                Change::Renew(c) => {
                    if let Some(t) = self.not_after.get_mut(&c.node) {
                        *t = c.not_after_ms;
                    }
                    if self.deferred_leaves.get(&c.node) == Some(&LeaveReason::Expired) {
                        self.deferred_leaves.remove(&c.node);
                    }
                }
                Change::RevokeClient(c) => next.revoked_clients.push(c.tls_cert_hash),
                Change::RotateAuthority(c) => next.authority = c.new_authority,
                Change::Add(_) | Change::Remove(_) | Change::Evict(_) => {}
            }
        }

        // Members whose leave waits for a rotation (PROTOCOL.md: an MS member's share point
        // is its list position): the MS and the incoming MS.
        let guarded = |id: &NodeId| self.is_ms_member(id) || self.config.ms_next.contains(id);
        let mut leaving: BTreeMap<NodeId, LeaveReason> = BTreeMap::new();
        for change in &pending {
            match change {
                Change::Remove(c) => leaving.insert(c.node, LeaveReason::Removed),
                Change::Evict(n) => leaving.insert(*n, LeaveReason::Evicted),
                _ => None,
            };
        }
        let min = group_size(self.config.params.f);
        let mut remaining =
            self.config.members.len() - leaving.keys().filter(|n| !guarded(n)).count();
        for (id, t) in &self.not_after {
            let expired = self.agreed_time_ms > *t;
            if !expired || leaving.contains_key(id) || self.deferred_leaves.contains_key(id) {
                continue;
            }
            if guarded(id) {
                leaving.insert(*id, LeaveReason::Expired);
            } else if remaining > min {
                // Expiry never shrinks the system below one storage group; the member
                // stays and is checked again at the next epoch end.
                leaving.insert(*id, LeaveReason::Expired);
                remaining -= 1;
            }
        }
        for (id, reason) in &self.deferred_leaves {
            leaving.entry(*id).or_insert(*reason);
        }

        // The MS of e+1: the new one if Handover executed; a rotation whose incoming MS
        // loses a member is abandoned (a new draw follows below).
        let mut handed_over = false;
        if let Some(rs) = self.rotation.take_if(|r| r.handed_over) {
            if let Some((_, keys)) = &rs.chosen {
                next.ms_members = rs.rot.new_members().iter().map(|m| m.id).collect();
                next.ms_key_set = keys.clone();
                handed_over = true;
                self.handed_over_rotation = Some(rs);
            }
            next.ms_next.clear();
        } else if self.rotation.is_some() && next.ms_next.iter().any(|id| leaving.contains_key(id))
        {
            self.rotation = None;
            next.ms_next.clear();
        }
        if handed_over {
            self.ms_term_start = self.config.epoch + 1;
            self.retired = Some(self.config.epoch + 1);
        }
        self.deferred_leaves = leaving
            .iter()
            .filter(|(id, _)| next.ms_members.contains(id) || next.ms_next.contains(id))
            .map(|(id, r)| (*id, *r))
            .collect();
        let deferred = &self.deferred_leaves;
        next.members
            .retain(|m| !leaving.contains_key(&m.node_id()) || deferred.contains_key(&m.node_id()));
        for m in &mut next.members {
            if m.ring_position.is_none() {
                m.ring_position = Some(sha256(&[&m.key.0, &r_e]));
            }
        }
        for change in &pending {
            if let Change::Add(c) = change {
                next.members.push(Member {
                    key: c.node_key,
                    tls_cert_hash: c.tls_cert_hash,
                    x25519_key: c.x25519_key,
                    address: c.address.clone(),
                    ring_position: None,
                });
            }
        }
        next.epoch = self.config.epoch + 1;
        next.prev_hash = self.config_hash;
        next.ring_salt = r_e;
        next.normalize();

        // PROTOCOL.md, Evict: a node evicted now (not removed, not expired) keeps the right
        // to come back with the AddCert that admitted it, until that is answered by a
        // RemoveCert or the node's certificate expires.
        // A member readmitted by a rejoin gets no new right: its AddCert served for its one
        // rejoin (PROTOCOL.md, "Ring positions resist grinding").
        for (id, reason) in &leaving {
            if *reason != LeaveReason::Evicted
                || deferred.contains_key(id)
                || self.rejoined.contains(id)
            {
                continue;
            }
            if let (Some(add_cert), Some(not_after_ms)) =
                (self.admission.get(id), self.not_after.get(id))
            {
                self.rejoinable.insert(
                    *id,
                    Rejoin {
                        add_cert: *add_cert,
                        not_after_ms: *not_after_ms,
                    },
                );
            }
        }
        self.not_after
            .retain(|id, _| !leaving.contains_key(id) || deferred.contains_key(id));
        self.admission
            .retain(|id, _| !leaving.contains_key(id) || deferred.contains_key(id));
        self.rejoined
            .retain(|id| !leaving.contains_key(id) || deferred.contains_key(id));
        for change in &pending {
            match change {
                Change::Add(c) => {
                    let id = c.node_id();
                    let digest = add_cert_digest(c);
                    // The queued Add is the node's rejoin exactly when it carries the
                    // AddCert its right names: that certificate's serial was spent when it
                    // first admitted the node, so it can have been queued no other way.
                    let by_rejoin = self
                        .rejoinable
                        .remove(&id)
                        .is_some_and(|r| r.add_cert == digest);
                    self.not_after.insert(id, c.not_after_ms);
                    self.admission.insert(id, digest);
                    if by_rejoin {
                        self.rejoined.insert(id);
                    } else {
                        self.rejoined.remove(&id);
                    }
                }
                Change::Renew(c) => {
                    if let Some(t) = self.not_after.get_mut(&c.node) {
                        *t = c.not_after_ms;
                    }
                }
                _ => {}
            }
        }

        self.time_reports
            .retain(|id, _| next.ms_members.contains(id));

        // Rejoin rights are bounded: those past their not-after are worthless (the AddCert
        // would be refused as expired), and beyond `MAX_REJOINABLE` the ones that expire
        // first go (deterministically: by not-after, then NodeId).
        let now = self.agreed_time_ms;
        self.rejoinable.retain(|_, r| r.not_after_ms >= now);
        if self.rejoinable.len() > MAX_REJOINABLE {
            let mut by_expiry: Vec<(u64, NodeId)> = self
                .rejoinable
                .iter()
                .map(|(id, r)| (r.not_after_ms, *id))
                .collect();
            by_expiry.sort_unstable();
            let excess = self.rejoinable.len() - MAX_REJOINABLE;
            for (_, id) in by_expiry.into_iter().take(excess) {
                self.rejoinable.remove(&id);
            }
        }

        let mut ms_change: Vec<MsChangeReason> = self
            .deferred_leaves
            .iter()
            .filter(|(node, _)| next.ms_members.contains(node))
            .map(|(node, reason)| MsChangeReason::MemberLeaving {
                node: *node,
                reason: *reason,
            })
            .collect();
        let f_next = (next.ms_members.len().saturating_sub(1) / 3) as u32;
        let wanted = ms_f_for(next.members.len(), next.params.ms_f_max);
        if wanted != f_next {
            ms_change.push(MsChangeReason::SizeRule {
                current_f_ms: f_next,
                wanted_f_ms: wanted,
            });
        }
        let period = next.params.ms_rotation_epochs;
        if period > 0 && next.epoch - self.ms_term_start >= period {
            ms_change.push(MsChangeReason::Periodic {
                term_start: self.ms_term_start,
            });
        }

        // PROTOCOL.md, "MS rotation and resharing", step 1: the new MS is drawn with r_e from
        // the members of configuration e that stay and are not leaving, and named in e+1.
        let mut started = false;
        // Not in the Handover step itself: the retired MS must answer about the rotation
        // that handed over until the new MS runs; the new MS starts the next one at its
        // first epoch end.
        if !ms_change.is_empty() && self.rotation.is_none() && !handed_over {
            let stays: BTreeSet<NodeId> = next.members.iter().map(Member::node_id).collect();
            let eligible: Vec<NodeId> = self
                .config
                .members
                .iter()
                .map(Member::node_id)
                .filter(|id| stays.contains(id) && !self.deferred_leaves.contains_key(id))
                .collect();
            let wanted_size = group_size(wanted);
            let size = if eligible.len() >= wanted_size {
                wanted_size
            } else {
                group_size((eligible.len().saturating_sub(1) / 3) as u32)
            };
            if !eligible.is_empty() {
                next.ms_next = next_ms(&eligible, &r_e, size);
                match RotationState::start(&next) {
                    Ok(rs) => {
                        self.rotation = Some(rs);
                        started = true;
                    }
                    Err(_) => next.ms_next.clear(),
                }
            }
        }

        let bytes = next.encode();
        debug_assert!(
            Configuration::decode(&bytes).is_ok(),
            "the next configuration must pass the structural checks every node applies"
        );
        self.config_hash = sha256(&[&bytes]);
        self.config = next;
        self.certified = None;
        self.end_requested = false;
        self.evict_votes.clear();
        self.end_votes.clear();
        self.ms_change = ms_change.clone();
        outputs.push(Output::EpochEnded {
            epoch: self.config.epoch,
            config_hash: self.config_hash,
            ms_change,
        });
        if handed_over {
            outputs.push(Output::HandedOver {
                epoch: self.config.epoch,
            });
        }
        if started {
            outputs.push(Output::RotationStarted {
                epoch: self.config.epoch,
            });
        }
        outputs.push(Output::SignConfig(SignRequest {
            epoch: self.config.epoch,
            config_hash: self.config_hash,
        }));
    }
}
