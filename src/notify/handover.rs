//! Notifications that move with their devices' partitions: the run's notifiers as a Kafka source
//! with a changelog sees them ([`NotificationHandover`]). At each publish the source writes the
//! entries pending in the outboxes for a partition's devices into that partition's changelog
//! (and a tombstone for each one since delivered); a member that takes the partition over puts
//! them into its own outboxes and delivers them. So a member lost for good leaves no
//! notification behind: what it had not delivered at its last publish, the next owner sends
//! (with the same delivery id: a receiver that saw it already deduplicates, as after any
//! restart).
//!
//! The policies' entries (cooldowns, suppressed starts) of a partition's devices travel the same
//! way, as of the checkpoint each publish stands for (the state the notifier saved with it): the
//! next owner merges them into its policies ([`PolicyInbox`], drained by the notifier before it
//! decides on its next records), so a move neither repeats a page the cooldown would have held
//! back nor lets an end through whose start was suppressed.

use std::sync::{Arc, Mutex};

use tracing::warn;

use serde::{Deserialize, Serialize};

use super::delivery::Submitter;
use super::outbox::{Outbox, OutboxEntry, decode_record, encode_record};
use super::policy_store::PolicyStateStore;
use crate::runtime::ports::{DevicePolicy, NotificationHandover, PendingNotification};

/// One device's policy entries (the same tuples as [`super::PolicyState`]'s).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DevicePolicyEntries {
    pub last: Vec<(String, String, i64)>,
    pub suppressed: Vec<(String, String, i64)>,
}

/// Entries taken over from another member, waiting for the notifier to merge them.
pub type PolicyInbox = Arc<Mutex<Vec<DevicePolicyEntries>>>;

struct Handle {
    notifier: String,
    outbox: Arc<dyn Outbox>,
    submitter: Submitter,
    policy_store: Option<PolicyStateStore>,
    policy_inbox: PolicyInbox,
    /// The per-device records of the newest saved policy state read, and its checkpoint id: a
    /// publish whose state is the same (most are: a value is saved only when it changed)
    /// decodes nothing.
    policy_cache: Mutex<Option<(u64, Vec<DevicePolicy>)>>,
}

/// The notifiers of a run that keep their outboxes in the store, registered as they are built.
#[derive(Clone, Default)]
pub struct NotifierHandles(Arc<Mutex<Vec<Handle>>>);

impl NotifierHandles {
    /// Adds the notifier `notifier` (its outbox namespace), its outbox, its delivery engine, where
    /// its policy state is saved and where it takes merged entries from.
    pub fn register(
        &self,
        notifier: &str,
        outbox: Arc<dyn Outbox>,
        submitter: Submitter,
        policy_store: Option<PolicyStateStore>,
        policy_inbox: PolicyInbox,
    ) {
        self.0.lock().expect("lock").push(Handle {
            notifier: notifier.to_string(),
            outbox,
            submitter,
            policy_store,
            policy_inbox,
            policy_cache: Mutex::new(None),
        });
    }

    /// How many notifiers are registered.
    pub fn len(&self) -> usize {
        self.0.lock().expect("lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A policy state as one record per device.
fn by_device(notifier: &str, state: super::PolicyState) -> Vec<DevicePolicy> {
    let mut devices: std::collections::BTreeMap<String, DevicePolicyEntries> = Default::default();
    for entry in state.last {
        devices.entry(entry.0.clone()).or_default().last.push(entry);
    }
    for entry in state.suppressed {
        devices.entry(entry.0.clone()).or_default().suppressed.push(entry);
    }
    devices
        .into_iter()
        .map(|(device, entries)| DevicePolicy {
            notifier: notifier.to_string(),
            device,
            record: encode_record(&entries),
        })
        .collect()
}

impl NotificationHandover for NotifierHandles {
    fn pending(&self) -> Vec<PendingNotification> {
        let handles = self.0.lock().expect("lock");
        let mut out = Vec::new();
        for h in handles.iter() {
            match h.outbox.pending() {
                Ok(entries) => out.extend(entries.into_iter().map(|e| PendingNotification {
                    notifier: h.notifier.clone(),
                    id: e.id.clone(),
                    device: e.device.clone(),
                    record: encode_record(&e),
                })),
                Err(e) => {
                    warn!(notifier = %h.notifier, error = %e, "the outbox's pending deliveries could not be read for the changelog")
                }
            }
        }
        out
    }

    fn take_over(&self, notifications: Vec<PendingNotification>) -> usize {
        let handles = self.0.lock().expect("lock");
        let mut taken = 0;
        for h in handles.iter() {
            let mut entries = Vec::new();
            for n in notifications.iter().filter(|n| n.notifier == h.notifier) {
                match decode_record::<OutboxEntry>(&n.record, "a notification from the changelog") {
                    // a held one (quiet hours) goes out now: this member's policy never held it
                    Ok(entry) => entries.push(OutboxEntry { held: false, ..entry }),
                    Err(e) => warn!(notifier = %h.notifier, id = %n.id, error = %e, "a notification from the changelog is skipped"),
                }
            }
            if entries.is_empty() {
                continue;
            }
            match h.outbox.put(entries) {
                Ok(added) => {
                    taken += added.len();
                    h.submitter.submit(added);
                }
                Err(e) => {
                    warn!(notifier = %h.notifier, error = %e, "notifications from the changelog could not be put in the outbox")
                }
            }
        }
        let unknown: std::collections::BTreeSet<&str> = notifications
            .iter()
            .map(|n| n.notifier.as_str())
            .filter(|name| !handles.iter().any(|h| h.notifier == *name))
            .collect();
        for notifier in unknown {
            warn!(notifier, "notifications from the changelog name a notifier this pipeline does not have: skipped");
        }
        taken
    }

    fn device_policies(&self, checkpoint: u64) -> Vec<DevicePolicy> {
        let handles = self.0.lock().expect("lock");
        let mut out = Vec::new();
        for h in handles.iter() {
            let Some(store) = &h.policy_store else { continue };
            let read = store.saved_at(checkpoint).and_then(|id| {
                let mut cache = h.policy_cache.lock().expect("lock");
                match (id, cache.as_ref()) {
                    (None, _) => return Ok(None),
                    (Some(id), Some((cached, _))) if *cached == id => {}
                    (Some(id), _) => {
                        let records = store.state_of(id)?.map(|state| by_device(&h.notifier, state));
                        *cache = records.map(|r| (id, r));
                    }
                }
                Ok(cache.as_ref().map(|(_, records)| records.clone()))
            });
            match read {
                Ok(records) => out.extend(records.unwrap_or_default()),
                Err(e) => {
                    warn!(notifier = %h.notifier, error = %e, "the policy state could not be read for the changelog")
                }
            }
        }
        out
    }

    fn take_over_policies(&self, policies: Vec<DevicePolicy>) {
        let handles = self.0.lock().expect("lock");
        for h in handles.iter() {
            let mut taken = Vec::new();
            for p in policies.iter().filter(|p| p.notifier == h.notifier) {
                match decode_record::<DevicePolicyEntries>(&p.record, "policy entries from the changelog") {
                    Ok(entries) => taken.push(entries),
                    Err(e) => {
                        warn!(notifier = %h.notifier, device = %p.device, error = %e, "policy entries from the changelog are skipped")
                    }
                }
            }
            if !taken.is_empty() {
                h.policy_inbox.lock().expect("lock").extend(taken);
            }
        }
    }
}
