//! The durable outbox of a notifier: every delivery is written here before its first attempt and
//! removed only when the receiver acknowledges it (or it is given up: dead letter, unregistered
//! token). After a restart the notifier resumes every pending delivery, and an event replayed by
//! the pipeline (same deterministic id) is recognised as already acknowledged and not sent again.
//!
//! [`Outbox`] is the contract; [`StoreOutbox`] keeps it in the RocksDB state store (column
//! family `outbox`, written through: `put` and `dead_letter` synced (the notifier's puts are
//! written, handed to the delivery engine, then synced: [`Outbox::put_unsynced`]),
//! acknowledgements to the log without an fsync), [`MemoryOutbox`] in
//! memory (runs without a store, and tests).
//!
//! # Layout of the `outbox` column family
//! Keys are a tag byte, the namespace (the notifier sink's name, `webhook:0`, `fcm:0`, …), a 0
//! byte, and the rest; every value is a store envelope ([`crate::store::seal`]) around
//! [`RECORD_VERSION`] and a bincode payload.
//!
//! | key | value |
//! | --- | --- |
//! | `p` ns 0 seq (u64 BE) | a pending [`OutboxEntry`]: by insertion sequence, so `pending` is in put order |
//! | `i` ns 0 delivery id | where the id is: pending (its seq), acknowledged, dead letter |
//! | `a` ns 0 ack seq (u64 BE) | an acknowledged id and when: oldest first, for the retention |
//! | `d` ns 0 seq (u64 BE) | a [`DeadLetter`] |
//! | `m` ns | the namespace's counters (next sequences, delivered, dead letters) |
//!
//! Acknowledged ids are remembered for [`AckRetention`] (by default 7 days and at most 1,000,000
//! per sink; the oldest go first), which is far longer than any replay after a crash (a replay
//! goes back to the last checkpoint). Dead letters are kept until removed by hand.
//! Subscriptions (`s…`, `c…` keys) live in the same column family: see `subscribers`; so do the
//! notifiers' policy states saved with each checkpoint (`q…` keys): see `policy_store`.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::store::tables::{OutboxBatch, OutboxTable};
use crate::store::{StateStore, seal, unseal};

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
/// `put` and `dead_letter` must be durable when they return (the store writes through, or within
/// the same atomic write as the checkpoint that covers the records the entries came from);
/// `acknowledge` must survive a crash of the process (losing one to a power cut repeats one
/// delivery, with the same id).
pub trait Outbox: Send + Sync + 'static {
    /// Records `entries` as pending, in order, before any delivery attempt. An entry whose id is
    /// already pending or already acknowledged is skipped; returns the entries that were added
    /// (only those are delivered).
    fn put(&self, entries: Vec<OutboxEntry>) -> Result<Vec<OutboxEntry>, OutboxError>;
    /// [`Outbox::put`], written so that a crash of the process keeps it but not yet on disk:
    /// [`Outbox::sync`] makes it durable. The notifier hands the entries to its delivery engine
    /// between the two, so a first attempt does not wait for the disk, and its sink write
    /// returns only after `sync` (what `put` guarantees on return holds when `write` returns).
    fn put_unsynced(&self, entries: Vec<OutboxEntry>) -> Result<Vec<OutboxEntry>, OutboxError> {
        self.put(entries)
    }
    /// Makes every earlier [`Outbox::put_unsynced`] durable.
    fn sync(&self) -> Result<(), OutboxError> {
        Ok(())
    }
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
    /// Like [`Outbox::acknowledge`] for an entry finished without a delivery (its token was
    /// dropped, it was folded into a digest): not counted as delivered.
    fn discard(&self, id: &str) -> Result<(), OutboxError>;
    /// Deliveries the receivers acknowledged over the outbox's life (a durable outbox counts
    /// across restarts).
    fn delivered(&self) -> Result<u64, OutboxError>;
}

/// The version of the outbox's (and the subscriptions') stored records, inside the store's
/// envelope: bump it, and read the old one, when a record's layout changes.
pub const RECORD_VERSION: u8 = 1;

const TAG_PENDING: u8 = b'p';
const TAG_INDEX: u8 = b'i';
const TAG_ACKED: u8 = b'a';
const TAG_DEAD: u8 = b'd';
const TAG_META: u8 = b'm';

/// `tag ++ namespace ++ 0 ++ rest`.
pub(crate) fn outbox_key(tag: u8, ns: &str, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + ns.len() + rest.len());
    k.push(tag);
    k.extend_from_slice(ns.as_bytes());
    k.push(0);
    k.extend_from_slice(rest);
    k
}

/// A stored record: envelope around the record version and bincode.
pub(crate) fn encode_record<T: Serialize>(value: &T) -> Vec<u8> {
    let mut payload = vec![RECORD_VERSION];
    payload.extend(
        bincode::serde::encode_to_vec(value, bincode::config::standard()).expect("encoding to a Vec cannot fail"),
    );
    seal(&payload)
}

pub(crate) fn decode_record<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, OutboxError> {
    let corrupt = |problem: String| OutboxError::Store {
        message: format!("{what}: {problem}"),
        retryable: false,
    };
    let payload = unseal(bytes).map_err(corrupt)?;
    match payload.split_first() {
        Some((&RECORD_VERSION, rest)) => crate::model::codec::bincode_decode(rest)
            .map(|(v, _)| v)
            .map_err(|e| corrupt(e.to_string())),
        Some((v, _)) => Err(corrupt(format!(
            "record version {v}, this plume reads version {RECORD_VERSION}"
        ))),
        None => Err(corrupt("empty record".into())),
    }
}

fn rocks(e: rocksdb::Error) -> OutboxError {
    OutboxError::Store {
        message: e.to_string(),
        retryable: matches!(
            e.kind(),
            rocksdb::ErrorKind::Busy | rocksdb::ErrorKind::TryAgain | rocksdb::ErrorKind::TimedOut
        ),
    }
}

/// Where a delivery id is.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
enum IndexState {
    Pending {
        seq: u64,
    },
    Acknowledged {
        ack_seq: u64,
    },
    /// `seq` of its dead letter (`u64::MAX`: given up before it was put).
    Dead {
        seq: u64,
    },
}

/// The counters of one namespace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OutboxMeta {
    pub next_seq: u64,
    pub next_ack: u64,
    /// Acknowledged ids remembered now.
    pub acknowledged: u64,
    /// Deliveries acknowledged by the receivers, ever.
    pub delivered: u64,
    pub dead_letters: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct AckedId {
    id: String,
    at_ms: i64,
}

/// How long acknowledged ids are remembered (a replayed event with such an id is not sent
/// again): at least while they are younger than `max_age` or among the newest `max_ids`; an id
/// that is both older and beyond the count is forgotten.
#[derive(Debug, Clone, Copy)]
pub struct AckRetention {
    pub max_ids: u64,
    pub max_age_ms: i64,
}

impl Default for AckRetention {
    fn default() -> Self {
        AckRetention {
            max_ids: 1_000_000,
            max_age_ms: 7 * 24 * 3600 * 1000,
        }
    }
}

/// The outbox of one notifier sink in the state store. Every method is one RocksDB write batch,
/// synced except acknowledgements (see `write_unsynced`) (blocking: call it from the sink thread
/// or a blocking task, never on an async worker).
pub struct StoreOutbox {
    store: Arc<StateStore>,
    ns: String,
    retention: AckRetention,
    meta: Mutex<OutboxMeta>,
}

impl StoreOutbox {
    /// The outbox of namespace `ns` (the notifier sink's name) in `store`.
    pub fn open(store: Arc<StateStore>, ns: &str) -> Result<Self, OutboxError> {
        Self::with_retention(store, ns, AckRetention::default())
    }

    pub fn with_retention(store: Arc<StateStore>, ns: &str, retention: AckRetention) -> Result<Self, OutboxError> {
        let meta = read_meta(&store, ns)?.unwrap_or_default();
        Ok(StoreOutbox {
            store,
            ns: ns.to_string(),
            retention,
            meta: Mutex::new(meta),
        })
    }

    /// The namespace's counters.
    pub fn meta(&self) -> OutboxMeta {
        self.meta.lock().unwrap().clone()
    }

    fn table(&self) -> OutboxTable<'_> {
        self.store.outbox_table()
    }

    fn key(&self, tag: u8, rest: &[u8]) -> Vec<u8> {
        outbox_key(tag, &self.ns, rest)
    }

    fn index(&self, id: &str) -> Result<Option<IndexState>, OutboxError> {
        match self.table().get(self.key(TAG_INDEX, id.as_bytes())).map_err(rocks)? {
            None => Ok(None),
            Some(v) => decode_record(&v, "outbox index").map(Some),
        }
    }

    fn write(&self, batch: OutboxBatch<'_>) -> Result<(), OutboxError> {
        self.table().write(batch, true).map_err(rocks)
    }

    /// Written to RocksDB's log without waiting for the disk: a crash of plume keeps it (the
    /// operating system has it); a power cut may forget the newest ones, and the next synced
    /// write makes them durable too (the log is written in order). Used for acknowledgements:
    /// one forgotten means one delivery repeated with the same id, which receivers deduplicate.
    fn write_unsynced(&self, batch: OutboxBatch<'_>) -> Result<(), OutboxError> {
        self.table().write(batch, false).map_err(rocks)
    }

    /// Every value under `tag` of this namespace, in key order.
    fn scan(&self, tag: u8) -> impl Iterator<Item = Result<(Box<[u8]>, Box<[u8]>), OutboxError>> + '_ {
        let prefix = self.key(tag, &[]);
        self.store
            .outbox_table()
            .scan_prefix(&prefix)
            .map(|item| item.map_err(rocks))
    }

    /// Finishes pending `id` (acknowledged or discarded).
    fn finish(&self, id: &str, delivered: bool) -> Result<(), OutboxError> {
        let mut meta = self.meta.lock().unwrap();
        let state = self.index(id)?;
        if matches!(state, Some(IndexState::Acknowledged { .. } | IndexState::Dead { .. })) {
            return Ok(());
        }
        let mut next = meta.clone();
        let mut batch = self.table().batch();
        if let Some(IndexState::Pending { seq }) = state {
            batch.delete(self.key(TAG_PENDING, &seq.to_be_bytes()));
            if delivered {
                next.delivered += 1;
            }
        }
        let ack_seq = next.next_ack;
        next.next_ack += 1;
        next.acknowledged += 1;
        let now_ms = jiff::Timestamp::now().as_millisecond();
        batch.put(
            self.key(TAG_INDEX, id.as_bytes()),
            encode_record(&IndexState::Acknowledged { ack_seq }),
        );
        batch.put(
            self.key(TAG_ACKED, &ack_seq.to_be_bytes()),
            encode_record(&AckedId {
                id: id.to_string(),
                at_ms: now_ms,
            }),
        );
        self.forget_old_acks(&mut batch, &mut next, now_ms)?;
        batch.put(outbox_key(TAG_META, &self.ns, &[]), encode_record(&next));
        self.write_unsynced(batch)?;
        *meta = next;
        Ok(())
    }

    /// Drops (a few of) the acknowledged ids beyond the retention into `batch`.
    fn forget_old_acks(
        &self,
        batch: &mut OutboxBatch<'_>,
        meta: &mut OutboxMeta,
        now_ms: i64,
    ) -> Result<(), OutboxError> {
        if meta.acknowledged <= self.retention.max_ids {
            return Ok(());
        }
        // a few per acknowledgement: the work stays small and the count converges
        for item in self.scan(TAG_ACKED).take(8) {
            if meta.acknowledged <= self.retention.max_ids {
                break;
            }
            let (k, v) = item?;
            let acked: AckedId = decode_record(&v, "acknowledged outbox id")?;
            if now_ms - acked.at_ms < self.retention.max_age_ms {
                break; // the oldest is still within the time window: keep them all
            }
            batch.delete(&k);
            let ack_seq = u64::from_be_bytes(k[k.len() - 8..].try_into().expect("8 bytes"));
            if self.index(&acked.id)? == Some(IndexState::Acknowledged { ack_seq }) {
                batch.delete(self.key(TAG_INDEX, acked.id.as_bytes()));
            }
            meta.acknowledged -= 1;
        }
        Ok(())
    }
}

impl StoreOutbox {
    /// Puts dead letters back among the pending deliveries (after their cause is fixed: the next
    /// run delivers them; `max_age` counts again from `now_ms`). `ids`: only these (`None`:
    /// every one). Returns the ids moved, in their original order.
    pub fn retry_dead_letters(&self, ids: Option<&[String]>, now_ms: i64) -> Result<Vec<String>, OutboxError> {
        self.take_dead_letters(ids, Some(now_ms))
    }

    /// Removes dead letters for good. Their ids stay known as given up, so an event replayed
    /// with the same id is not sent again. `ids`: only these (`None`: every one).
    pub fn drop_dead_letters(&self, ids: Option<&[String]>) -> Result<Vec<String>, OutboxError> {
        self.take_dead_letters(ids, None)
    }

    /// Both of the above: `retry_at` = `Some(now)` puts them back as pending.
    fn take_dead_letters(&self, ids: Option<&[String]>, retry_at: Option<i64>) -> Result<Vec<String>, OutboxError> {
        let mut meta = self.meta.lock().unwrap();
        let mut next = meta.clone();
        let mut batch = self.table().batch();
        let mut taken = Vec::new();
        for item in self.scan(TAG_DEAD) {
            let (key, value) = item?;
            let mut letter: DeadLetter = decode_record(&value, "outbox dead letter")?;
            if ids.is_some_and(|ids| !ids.contains(&letter.entry.id)) {
                continue;
            }
            batch.delete(&key);
            next.dead_letters = next.dead_letters.saturating_sub(1);
            let index = match retry_at {
                Some(now_ms) => {
                    let seq = next.next_seq;
                    next.next_seq += 1;
                    letter.entry.created_ms = now_ms;
                    batch.put(self.key(TAG_PENDING, &seq.to_be_bytes()), encode_record(&letter.entry));
                    IndexState::Pending { seq }
                }
                None => IndexState::Dead { seq: u64::MAX },
            };
            batch.put(self.key(TAG_INDEX, letter.entry.id.as_bytes()), encode_record(&index));
            taken.push(letter.entry.id);
        }
        if taken.is_empty() {
            return Ok(taken);
        }
        batch.put(outbox_key(TAG_META, &self.ns, &[]), encode_record(&next));
        self.write(batch)?;
        *meta = next;
        Ok(taken)
    }
}

fn read_meta(store: &StateStore, ns: &str) -> Result<Option<OutboxMeta>, OutboxError> {
    match store.outbox_table().get(outbox_key(TAG_META, ns, &[])).map_err(rocks)? {
        None => Ok(None),
        Some(v) => decode_record(&v, "outbox counters").map(Some),
    }
}

impl StoreOutbox {
    /// `put` (`synced`) or `put_unsynced`.
    fn put_entries(&self, entries: Vec<OutboxEntry>, synced: bool) -> Result<Vec<OutboxEntry>, OutboxError> {
        let mut meta = self.meta.lock().unwrap();
        let mut next = meta.clone();
        let mut batch = self.table().batch();
        let mut added = Vec::with_capacity(entries.len());
        let mut in_batch = HashSet::new();
        for e in entries {
            if in_batch.contains(&e.id) || self.index(&e.id)?.is_some() {
                continue;
            }
            let seq = next.next_seq;
            next.next_seq += 1;
            batch.put(self.key(TAG_PENDING, &seq.to_be_bytes()), encode_record(&e));
            batch.put(
                self.key(TAG_INDEX, e.id.as_bytes()),
                encode_record(&IndexState::Pending { seq }),
            );
            in_batch.insert(e.id.clone());
            added.push(e);
        }
        if added.is_empty() {
            return Ok(added);
        }
        batch.put(outbox_key(TAG_META, &self.ns, &[]), encode_record(&next));
        if synced {
            self.write(batch)?;
        } else {
            self.write_unsynced(batch)?;
        }
        *meta = next;
        Ok(added)
    }
}

impl Outbox for StoreOutbox {
    fn put(&self, entries: Vec<OutboxEntry>) -> Result<Vec<OutboxEntry>, OutboxError> {
        self.put_entries(entries, true)
    }

    /// In RocksDB's log (ordered, so every later write, the engine's acknowledgements included,
    /// comes after it), not yet on disk.
    fn put_unsynced(&self, entries: Vec<OutboxEntry>) -> Result<Vec<OutboxEntry>, OutboxError> {
        self.put_entries(entries, false)
    }

    fn sync(&self) -> Result<(), OutboxError> {
        self.table().sync().map_err(rocks)
    }

    fn acknowledge(&self, id: &str) -> Result<(), OutboxError> {
        self.finish(id, true)
    }

    fn discard(&self, id: &str) -> Result<(), OutboxError> {
        self.finish(id, false)
    }

    fn is_acknowledged(&self, id: &str) -> Result<bool, OutboxError> {
        Ok(matches!(
            self.index(id)?,
            Some(IndexState::Acknowledged { .. } | IndexState::Dead { .. })
        ))
    }

    fn pending(&self) -> Result<Vec<OutboxEntry>, OutboxError> {
        self.scan(TAG_PENDING)
            .map(|item| decode_record(&item?.1, "pending outbox entry"))
            .collect()
    }

    fn dead_letter(&self, id: &str, error: &str, attempts: u32) -> Result<(), OutboxError> {
        let mut meta = self.meta.lock().unwrap();
        let state = self.index(id)?;
        if matches!(state, Some(IndexState::Acknowledged { .. } | IndexState::Dead { .. })) {
            return Ok(());
        }
        let mut next = meta.clone();
        let mut batch = self.table().batch();
        let mut dead_seq = u64::MAX;
        if let Some(IndexState::Pending { seq }) = state {
            let key = self.key(TAG_PENDING, &seq.to_be_bytes());
            if let Some(v) = self.table().get(&key).map_err(rocks)? {
                let entry: OutboxEntry = decode_record(&v, "pending outbox entry")?;
                batch.delete(&key);
                batch.put(
                    self.key(TAG_DEAD, &seq.to_be_bytes()),
                    encode_record(&DeadLetter {
                        entry,
                        error: error.to_string(),
                        attempts,
                    }),
                );
                next.dead_letters += 1;
                dead_seq = seq;
            }
        }
        batch.put(
            self.key(TAG_INDEX, id.as_bytes()),
            encode_record(&IndexState::Dead { seq: dead_seq }),
        );
        batch.put(outbox_key(TAG_META, &self.ns, &[]), encode_record(&next));
        self.write(batch)?;
        *meta = next;
        Ok(())
    }

    fn dead_letters(&self) -> Result<Vec<DeadLetter>, OutboxError> {
        self.scan(TAG_DEAD)
            .map(|item| decode_record(&item?.1, "outbox dead letter"))
            .collect()
    }

    fn delivered(&self) -> Result<u64, OutboxError> {
        Ok(self.meta.lock().unwrap().delivered)
    }
}

/// What `plume outbox` shows of one notifier sink's outbox.
#[derive(Debug, Clone, Serialize)]
pub struct OutboxSummary {
    pub sink: String,
    pub pending: u64,
    pub held: u64,
    pub acknowledged_remembered: u64,
    pub delivered: u64,
    pub dead_letters: u64,
    /// The oldest pending entry's age.
    pub oldest_pending_ms: Option<i64>,
}

/// The outbox of every notifier sink in `store` (which may be opened read-only).
pub fn summaries(store: &Arc<StateStore>) -> Result<Vec<OutboxSummary>, OutboxError> {
    let mut namespaces = Vec::new();
    for item in store.outbox_table().scan_prefix(&[TAG_META]) {
        let (k, _) = item.map_err(rocks)?;
        if let Some(ns) = k[1..].strip_suffix(&[0]) {
            namespaces.push(String::from_utf8_lossy(ns).into_owned());
        }
    }
    let now = jiff::Timestamp::now().as_millisecond();
    let mut out = Vec::new();
    for ns in namespaces {
        let outbox = StoreOutbox::open(store.clone(), &ns)?;
        let pending = outbox.pending()?;
        let meta = outbox.meta();
        out.push(OutboxSummary {
            sink: ns,
            pending: pending.len() as u64,
            held: pending.iter().filter(|e| e.held).count() as u64,
            acknowledged_remembered: meta.acknowledged,
            delivered: meta.delivered,
            dead_letters: meta.dead_letters,
            oldest_pending_ms: pending.iter().map(|e| now - e.created_ms).max(),
        });
    }
    Ok(out)
}

mod memory;
pub use memory::MemoryOutbox;

#[cfg(test)]
mod tests;
