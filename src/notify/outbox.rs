//! The durable outbox of a notifier: every delivery is written here before its first attempt and
//! removed only when the receiver acknowledges it (or it is given up: dead letter, unregistered
//! token). After a restart the notifier resumes every pending delivery, and an event replayed by
//! the pipeline (same deterministic id) is recognised as already acknowledged and not sent again.
//!
//! [`Outbox`] is the contract the store implements (RocksDB, within the checkpoint discipline);
//! [`MemoryOutbox`] is the in-memory implementation used until then and in tests.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// One delivery: one event (or digest) to one target (an endpoint, or one device token).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// Unique per delivery: the event id for webhooks and ntfy, `<event id>:<token hash>` for
    /// FCM and APNs (one delivery per subscribed token). Deterministic: a replayed event gets
    /// the same delivery id.
    pub id: String,
    /// The output record's deterministic id (32 hex digits), sent as `webhook-id`.
    pub event_id: String,
    /// The device the event is about (deliveries of one device and target go in order).
    pub device: String,
    /// Where it goes: empty for webhooks and ntfy, the device token for FCM and APNs.
    pub target: String,
    /// Record type (`event_start`, `event_end`, `health`, …, or `digest`).
    pub kind: String,
    pub severity: Option<String>,
    pub title: String,
    pub body: String,
    /// The exact request body for webhooks (the same bytes on every attempt).
    pub payload: String,
    /// Wall-clock ms when the entry was first put: `max_age` counts from here.
    pub created_ms: i64,
    /// Held by quiet hours: not delivered on its own, folded into a digest later.
    pub held: bool,
}

/// Failure of the outbox's store. Retrying can help only where the store says so.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox store: {message}")]
    Store { message: String, retryable: bool },
}

impl OutboxError {
    pub fn retryable(&self) -> bool {
        match self {
            OutboxError::Store { retryable, .. } => *retryable,
        }
    }
}

/// Why an entry left the outbox without an acknowledgement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub entry: OutboxEntry,
    /// The last error (never contains a secret).
    pub error: String,
    pub attempts: u32,
}

/// The durable outbox of one notifier sink (the implementation keys it by the sink's name).
///
/// Every method must be durable when it returns (the store writes through, or within the same
/// atomic write as the checkpoint that covers the records the entries came from).
pub trait Outbox: Send + Sync + 'static {
    /// Records `entries` as pending, in order, before any delivery attempt. An entry whose id is
    /// already pending or already acknowledged is skipped; returns the entries that were added
    /// (only those are delivered).
    fn put(&self, entries: Vec<OutboxEntry>) -> Result<Vec<OutboxEntry>, OutboxError>;
    /// The receiver acknowledged delivery `id`: remove it from the pending entries and remember
    /// the id as acknowledged (for [`Outbox::is_acknowledged`]).
    fn acknowledge(&self, id: &str) -> Result<(), OutboxError>;
    /// Whether delivery `id` was acknowledged (or otherwise finished: dead letter, dropped token).
    fn is_acknowledged(&self, id: &str) -> Result<bool, OutboxError>;
    /// Every pending entry, in the order it was put (a restart resumes them).
    fn pending(&self) -> Result<Vec<OutboxEntry>, OutboxError>;
    /// Gives up on pending entry `id`: moves it to the dead letters with the last error. It is
    /// not delivered again, even if the event is replayed.
    fn dead_letter(&self, id: &str, error: &str, attempts: u32) -> Result<(), OutboxError>;
    /// The dead letters, oldest first.
    fn dead_letters(&self) -> Result<Vec<DeadLetter>, OutboxError>;
}

#[derive(Default)]
struct MemoryState {
    next: u64,
    /// By insertion number, so `pending` is in put order.
    pending: BTreeMap<u64, OutboxEntry>,
    index: std::collections::HashMap<String, u64>,
    done: HashSet<String>,
    dead: Vec<DeadLetter>,
}

/// An outbox in memory: survives nothing, but has the same semantics as the durable one.
#[derive(Default)]
pub struct MemoryOutbox {
    state: Mutex<MemoryState>,
}

impl MemoryOutbox {
    pub fn new() -> Self {
        Self::default()
    }

    /// Pending entries.
    pub fn len(&self) -> usize {
        self.state.lock().unwrap().pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Outbox for MemoryOutbox {
    fn put(&self, entries: Vec<OutboxEntry>) -> Result<Vec<OutboxEntry>, OutboxError> {
        let mut s = self.state.lock().unwrap();
        let mut added = Vec::with_capacity(entries.len());
        for e in entries {
            if s.done.contains(&e.id) || s.index.contains_key(&e.id) {
                continue;
            }
            let n = s.next;
            s.next += 1;
            s.index.insert(e.id.clone(), n);
            s.pending.insert(n, e.clone());
            added.push(e);
        }
        Ok(added)
    }

    fn acknowledge(&self, id: &str) -> Result<(), OutboxError> {
        let mut s = self.state.lock().unwrap();
        if let Some(n) = s.index.remove(id) {
            s.pending.remove(&n);
        }
        s.done.insert(id.to_string());
        Ok(())
    }

    fn is_acknowledged(&self, id: &str) -> Result<bool, OutboxError> {
        Ok(self.state.lock().unwrap().done.contains(id))
    }

    fn pending(&self) -> Result<Vec<OutboxEntry>, OutboxError> {
        Ok(self.state.lock().unwrap().pending.values().cloned().collect())
    }

    fn dead_letter(&self, id: &str, error: &str, attempts: u32) -> Result<(), OutboxError> {
        let mut s = self.state.lock().unwrap();
        if let Some(n) = s.index.remove(id)
            && let Some(entry) = s.pending.remove(&n)
        {
            s.dead.push(DeadLetter {
                entry,
                error: error.to_string(),
                attempts,
            });
        }
        s.done.insert(id.to_string());
        Ok(())
    }

    fn dead_letters(&self) -> Result<Vec<DeadLetter>, OutboxError> {
        Ok(self.state.lock().unwrap().dead.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str) -> OutboxEntry {
        OutboxEntry {
            id: id.into(),
            event_id: id.into(),
            device: "d".into(),
            target: String::new(),
            kind: "event_start".into(),
            severity: None,
            title: String::new(),
            body: String::new(),
            payload: "{}".into(),
            created_ms: 0,
            held: false,
        }
    }

    #[test]
    fn acknowledged_ids_are_not_put_again_and_pending_keeps_order() {
        let o = MemoryOutbox::new();
        assert_eq!(o.put(vec![entry("a"), entry("b"), entry("a")]).unwrap().len(), 2);
        o.acknowledge("a").unwrap();
        assert!(o.is_acknowledged("a").unwrap());
        assert!(
            o.put(vec![entry("a")]).unwrap().is_empty(),
            "a replayed, acknowledged event"
        );
        o.put(vec![entry("c")]).unwrap();
        let ids: Vec<_> = o.pending().unwrap().into_iter().map(|e| e.id).collect();
        assert_eq!(ids, ["b", "c"]);
        o.dead_letter("b", "HTTP 400", 1).unwrap();
        assert_eq!(o.dead_letters().unwrap()[0].error, "HTTP 400");
        assert!(o.put(vec![entry("b")]).unwrap().is_empty());
        assert_eq!(o.len(), 1);
    }
}
