//! Computing configuration e+1 when epoch e ends (PROTOCOL.md, "Membership service":
//! "It then computes the next configuration from the current one and the queue").
//!
//! Order of application, so every replica builds the same bytes: renewals, revocations and
//! an authority rotation; then leaves (removals and evictions from the queue, then expiries
//! under the agreed time); then ring positions for the members admitted in epoch e, salted
//! with r_e; then the members admitted now, without a position; then epoch, prev_hash and
//! ring_salt = r_e, and canonical order.

use std::collections::BTreeMap;

use dbqs_common::codec::sha256;
use dbqs_common::config::{Configuration, Member};
use dbqs_common::identity::NodeId;
use dbqs_common::quorum::{group_size, ms_f_for};

use super::signing::SignRequest;
use super::state::{Change, LeaveReason, MembershipState, MsChangeReason, Output};

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
            self.config.members.len() - leaving.keys().filter(|n| !self.is_ms_member(n)).count();
        for (id, t) in &self.not_after {
            let expired = self.agreed_time_ms > *t;
            if !expired || leaving.contains_key(id) || self.deferred_leaves.contains_key(id) {
                continue;
            }
            if self.is_ms_member(id) {
                leaving.insert(*id, LeaveReason::Expired);
            } else if remaining > min {
                // Expiry never shrinks the system below one storage group; the member
                // stays and is checked again at the next epoch end.
                leaving.insert(*id, LeaveReason::Expired);
                remaining -= 1;
            }
        }

        for (id, reason) in &leaving {
            if self.is_ms_member(id) {
                self.deferred_leaves.insert(*id, *reason);
            }
        }
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

        self.not_after
            .retain(|id, _| !leaving.contains_key(id) || deferred.contains_key(id));
        for change in &pending {
            match change {
                Change::Add(c) => {
                    self.not_after.insert(c.node_id(), c.not_after_ms);
                }
                Change::Renew(c) => {
                    if let Some(t) = self.not_after.get_mut(&c.node) {
                        *t = c.not_after_ms;
                    }
                }
                _ => {}
            }
        }

        let mut ms_change: Vec<MsChangeReason> = self
            .deferred_leaves
            .iter()
            .map(|(node, reason)| MsChangeReason::MemberLeaving {
                node: *node,
                reason: *reason,
            })
            .collect();
        let wanted = ms_f_for(next.members.len(), next.params.ms_f_max);
        if wanted != self.f_ms() {
            ms_change.push(MsChangeReason::SizeRule {
                current_f_ms: self.f_ms(),
                wanted_f_ms: wanted,
            });
        }
        let period = next.params.ms_rotation_epochs;
        if period > 0 && next.epoch - self.ms_term_start >= period {
            ms_change.push(MsChangeReason::Periodic {
                term_start: self.ms_term_start,
            });
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
        outputs.push(Output::SignConfig(SignRequest {
            epoch: self.config.epoch,
            config_hash: self.config_hash,
        }));
    }
}
