//! The durable outbox of a notifier: every delivery is written here before its first attempt and
//! removed only when the receiver acknowledges it (or it is given up: dead letter, unregistered
//! token). After a restart the notifier resumes every pending delivery, and an event replayed by
//! the pipeline (same deterministic id) is recognised as already acknowledged and not sent again.
//!
//! [`Outbox`] is the contract; [`StoreOutbox`] keeps it in the RocksDB state store (column
//! family `outbox`, written through: `put` and `dead_letter` synced, acknowledgements to the
//! log without an fsync), [`MemoryOutbox`] in
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
//! Subscriptions (`s…`, `c…` keys) live in the same column family: see `subscribers`.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions};
use serde::{Deserialize, Serialize};

use crate::store::{CF_OUTBOX, StateStore, seal, unseal};

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

#[derive(Default)]
struct MemoryState {
    next: u64,
    /// By insertion number, so `pending` is in put order.
    pending: BTreeMap<u64, OutboxEntry>,
    index: std::collections::HashMap<String, u64>,
    done: HashSet<String>,
    dead: Vec<DeadLetter>,
    delivered: u64,
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
            s.delivered += 1;
        }
        s.done.insert(id.to_string());
        Ok(())
    }

    fn discard(&self, id: &str) -> Result<(), OutboxError> {
        let mut s = self.state.lock().unwrap();
        if let Some(n) = s.index.remove(id) {
            s.pending.remove(&n);
        }
        s.done.insert(id.to_string());
        Ok(())
    }

    fn delivered(&self) -> Result<u64, OutboxError> {
        Ok(self.state.lock().unwrap().delivered)
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

// ---------------------------------------------------------------------------------------------
// the outbox in the state store

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
        Some((&RECORD_VERSION, rest)) => bincode::serde::decode_from_slice(rest, bincode::config::standard())
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

    fn cf(&self) -> &rocksdb::ColumnFamily {
        self.store
            .db()
            .cf_handle(CF_OUTBOX)
            .expect("opened with every column family")
    }

    fn key(&self, tag: u8, rest: &[u8]) -> Vec<u8> {
        outbox_key(tag, &self.ns, rest)
    }

    fn index(&self, id: &str) -> Result<Option<IndexState>, OutboxError> {
        match self
            .store
            .db()
            .get_pinned_cf(self.cf(), self.key(TAG_INDEX, id.as_bytes()))
            .map_err(rocks)?
        {
            None => Ok(None),
            Some(v) => decode_record(&v, "outbox index").map(Some),
        }
    }

    fn write(&self, batch: WriteBatch) -> Result<(), OutboxError> {
        let mut options = WriteOptions::default();
        options.set_sync(true);
        self.store.db().write_opt(batch, &options).map_err(rocks)
    }

    /// Written to RocksDB's log without waiting for the disk: a crash of plume keeps it (the
    /// operating system has it); a power cut may forget the newest ones, and the next synced
    /// write makes them durable too (the log is written in order). Used for acknowledgements:
    /// one forgotten means one delivery repeated with the same id, which receivers deduplicate.
    fn write_unsynced(&self, batch: WriteBatch) -> Result<(), OutboxError> {
        self.store.db().write(batch).map_err(rocks)
    }

    /// Every value under `tag` of this namespace, in key order.
    fn scan(&self, tag: u8) -> impl Iterator<Item = Result<(Box<[u8]>, Box<[u8]>), OutboxError>> + '_ {
        let prefix = self.key(tag, &[]);
        let db = self.store.db();
        db.iterator_cf(self.cf(), IteratorMode::From(&prefix, Direction::Forward))
            .map(|item| item.map_err(rocks))
            .take_while(move |item| match item {
                Ok((k, _)) => k.starts_with(&prefix),
                Err(_) => true,
            })
    }

    /// Finishes pending `id` (acknowledged or discarded).
    fn finish(&self, id: &str, delivered: bool) -> Result<(), OutboxError> {
        let mut meta = self.meta.lock().unwrap();
        let state = self.index(id)?;
        if matches!(state, Some(IndexState::Acknowledged { .. } | IndexState::Dead { .. })) {
            return Ok(());
        }
        let mut next = meta.clone();
        let mut batch = WriteBatch::default();
        if let Some(IndexState::Pending { seq }) = state {
            batch.delete_cf(self.cf(), self.key(TAG_PENDING, &seq.to_be_bytes()));
            if delivered {
                next.delivered += 1;
            }
        }
        let ack_seq = next.next_ack;
        next.next_ack += 1;
        next.acknowledged += 1;
        let now_ms = jiff::Timestamp::now().as_millisecond();
        batch.put_cf(
            self.cf(),
            self.key(TAG_INDEX, id.as_bytes()),
            encode_record(&IndexState::Acknowledged { ack_seq }),
        );
        batch.put_cf(
            self.cf(),
            self.key(TAG_ACKED, &ack_seq.to_be_bytes()),
            encode_record(&AckedId {
                id: id.to_string(),
                at_ms: now_ms,
            }),
        );
        self.forget_old_acks(&mut batch, &mut next, now_ms)?;
        batch.put_cf(self.cf(), outbox_key(TAG_META, &self.ns, &[]), encode_record(&next));
        self.write_unsynced(batch)?;
        *meta = next;
        Ok(())
    }

    /// Drops (a few of) the acknowledged ids beyond the retention into `batch`.
    fn forget_old_acks(&self, batch: &mut WriteBatch, meta: &mut OutboxMeta, now_ms: i64) -> Result<(), OutboxError> {
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
            batch.delete_cf(self.cf(), &k);
            let ack_seq = u64::from_be_bytes(k[k.len() - 8..].try_into().expect("8 bytes"));
            if self.index(&acked.id)? == Some(IndexState::Acknowledged { ack_seq }) {
                batch.delete_cf(self.cf(), self.key(TAG_INDEX, acked.id.as_bytes()));
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
        let mut batch = WriteBatch::default();
        let mut taken = Vec::new();
        for item in self.scan(TAG_DEAD) {
            let (key, value) = item?;
            let mut letter: DeadLetter = decode_record(&value, "outbox dead letter")?;
            if ids.is_some_and(|ids| !ids.contains(&letter.entry.id)) {
                continue;
            }
            batch.delete_cf(self.cf(), &key);
            next.dead_letters = next.dead_letters.saturating_sub(1);
            let index = match retry_at {
                Some(now_ms) => {
                    let seq = next.next_seq;
                    next.next_seq += 1;
                    letter.entry.created_ms = now_ms;
                    batch.put_cf(
                        self.cf(),
                        self.key(TAG_PENDING, &seq.to_be_bytes()),
                        encode_record(&letter.entry),
                    );
                    IndexState::Pending { seq }
                }
                None => IndexState::Dead { seq: u64::MAX },
            };
            batch.put_cf(
                self.cf(),
                self.key(TAG_INDEX, letter.entry.id.as_bytes()),
                encode_record(&index),
            );
            taken.push(letter.entry.id);
        }
        if taken.is_empty() {
            return Ok(taken);
        }
        batch.put_cf(self.cf(), outbox_key(TAG_META, &self.ns, &[]), encode_record(&next));
        self.write(batch)?;
        *meta = next;
        Ok(taken)
    }
}

fn read_meta(store: &StateStore, ns: &str) -> Result<Option<OutboxMeta>, OutboxError> {
    let cf = store
        .db()
        .cf_handle(CF_OUTBOX)
        .expect("opened with every column family");
    match store.db().get_cf(cf, outbox_key(TAG_META, ns, &[])).map_err(rocks)? {
        None => Ok(None),
        Some(v) => decode_record(&v, "outbox counters").map(Some),
    }
}

impl Outbox for StoreOutbox {
    fn put(&self, entries: Vec<OutboxEntry>) -> Result<Vec<OutboxEntry>, OutboxError> {
        let mut meta = self.meta.lock().unwrap();
        let mut next = meta.clone();
        let mut batch = WriteBatch::default();
        let mut added = Vec::with_capacity(entries.len());
        let mut in_batch = HashSet::new();
        for e in entries {
            if in_batch.contains(&e.id) || self.index(&e.id)?.is_some() {
                continue;
            }
            let seq = next.next_seq;
            next.next_seq += 1;
            batch.put_cf(self.cf(), self.key(TAG_PENDING, &seq.to_be_bytes()), encode_record(&e));
            batch.put_cf(
                self.cf(),
                self.key(TAG_INDEX, e.id.as_bytes()),
                encode_record(&IndexState::Pending { seq }),
            );
            in_batch.insert(e.id.clone());
            added.push(e);
        }
        if added.is_empty() {
            return Ok(added);
        }
        batch.put_cf(self.cf(), outbox_key(TAG_META, &self.ns, &[]), encode_record(&next));
        self.write(batch)?;
        *meta = next;
        Ok(added)
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
        let mut batch = WriteBatch::default();
        let mut dead_seq = u64::MAX;
        if let Some(IndexState::Pending { seq }) = state {
            let key = self.key(TAG_PENDING, &seq.to_be_bytes());
            if let Some(v) = self.store.db().get_pinned_cf(self.cf(), &key).map_err(rocks)? {
                let entry: OutboxEntry = decode_record(&v, "pending outbox entry")?;
                batch.delete_cf(self.cf(), &key);
                batch.put_cf(
                    self.cf(),
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
        batch.put_cf(
            self.cf(),
            self.key(TAG_INDEX, id.as_bytes()),
            encode_record(&IndexState::Dead { seq: dead_seq }),
        );
        batch.put_cf(self.cf(), outbox_key(TAG_META, &self.ns, &[]), encode_record(&next));
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
    let db = store.db();
    let cf = db.cf_handle(CF_OUTBOX).expect("opened with every column family");
    let mut namespaces = Vec::new();
    for item in db.iterator_cf(cf, IteratorMode::From(&[TAG_META], Direction::Forward)) {
        let (k, _) = item.map_err(rocks)?;
        if k.first() != Some(&TAG_META) {
            break;
        }
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

#[cfg(test)]
mod store_tests {
    use super::*;

    fn entry(id: &str, device: &str) -> OutboxEntry {
        OutboxEntry {
            id: id.into(),
            event_id: id.into(),
            device: device.into(),
            target: String::new(),
            kind: "event_start".into(),
            severity: Some("high".into()),
            title: format!("title {id}"),
            body: "body".into(),
            payload: format!("{{\"id\":\"{id}\"}}"),
            created_ms: 1_700_000_000_000,
            held: false,
        }
    }

    fn ids(entries: &[OutboxEntry]) -> Vec<String> {
        entries.iter().map(|e| e.id.clone()).collect()
    }

    #[test]
    fn pending_entries_survive_a_reopen_in_put_order() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = StateStore::open_tool(dir.path()).unwrap();
            let o = StoreOutbox::open(store.clone(), "webhook:0").unwrap();
            // ids that sort differently from their put order
            let added = o
                .put(vec![
                    entry("z", "d1"),
                    entry("a", "d2"),
                    entry("m", "d1"),
                    entry("a", "d2"),
                ])
                .unwrap();
            assert_eq!(ids(&added), ["z", "a", "m"], "a duplicate within one put is skipped");
            o.put(vec![entry("b", "d3")]).unwrap();
            o.acknowledge("a").unwrap();
            // another sink's outbox in the same store does not mix in
            let other = StoreOutbox::open(store.clone(), "webhook:1").unwrap();
            other.put(vec![entry("z", "d1"), entry("y", "d1")]).unwrap();
            drop((o, other));
            StateStore::close(store);
        }
        let store = StateStore::open_tool(dir.path()).unwrap();
        let o = StoreOutbox::open(store.clone(), "webhook:0").unwrap();
        let pending = o.pending().unwrap();
        assert_eq!(ids(&pending), ["z", "m", "b"]);
        assert_eq!(pending[0], entry("z", "d1"), "entries come back whole");
        assert!(o.is_acknowledged("a").unwrap());
        assert!(!o.is_acknowledged("z").unwrap());
        assert_eq!(o.delivered().unwrap(), 1);
        // sequences continue after the reopen: new entries go after the old ones
        o.put(vec![entry("c", "d1")]).unwrap();
        assert_eq!(ids(&o.pending().unwrap()), ["z", "m", "b", "c"]);
        let other = StoreOutbox::open(store.clone(), "webhook:1").unwrap();
        assert_eq!(ids(&other.pending().unwrap()), ["z", "y"]);
        // every stored value is in the store's envelope (retained::verify relies on it)
        let cf = store.db().cf_handle(CF_OUTBOX).unwrap();
        for item in store.db().iterator_cf(cf, IteratorMode::Start) {
            let (_, v) = item.unwrap();
            let payload = unseal(&v).unwrap();
            assert_eq!(payload[0], RECORD_VERSION);
        }
    }

    #[test]
    fn acknowledged_ids_are_not_put_again_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open_tool(dir.path()).unwrap();
        let o = StoreOutbox::open(store.clone(), "fcm:0").unwrap();
        o.put(vec![entry("e1", "d"), entry("e2", "d"), entry("e3", "d")])
            .unwrap();
        o.acknowledge("e1").unwrap();
        o.discard("e2").unwrap();
        // acknowledging twice, or an id never put, changes nothing
        o.acknowledge("e1").unwrap();
        assert_eq!(o.delivered().unwrap(), 1, "a discarded entry is not delivered");
        drop(o);
        let o = StoreOutbox::open(store.clone(), "fcm:0").unwrap();
        // the replay of the same events
        let added = o
            .put(vec![
                entry("e1", "d"),
                entry("e2", "d"),
                entry("e3", "d"),
                entry("e4", "d"),
            ])
            .unwrap();
        assert_eq!(ids(&added), ["e4"], "acknowledged and pending ids are not put again");
        assert_eq!(ids(&o.pending().unwrap()), ["e3", "e4"]);
    }

    #[test]
    fn dead_letters_are_kept_with_the_last_error_and_not_sent_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open_tool(dir.path()).unwrap();
        let o = StoreOutbox::open(store.clone(), "apns:0").unwrap();
        o.put(vec![entry("x", "d"), entry("y", "d")]).unwrap();
        o.dead_letter("x", "max_age reached; last error: HTTP 503", 7).unwrap();
        drop(o);
        let o = StoreOutbox::open(store.clone(), "apns:0").unwrap();
        let dead = o.dead_letters().unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].entry, entry("x", "d"));
        assert_eq!(dead[0].error, "max_age reached; last error: HTTP 503");
        assert_eq!(dead[0].attempts, 7);
        assert!(o.is_acknowledged("x").unwrap());
        assert!(o.put(vec![entry("x", "d")]).unwrap().is_empty());
        assert_eq!(ids(&o.pending().unwrap()), ["y"]);
        let s = summaries(&store).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].sink.as_str(), s[0].pending, s[0].dead_letters), ("apns:0", 1, 1));
    }

    #[test]
    fn dead_letters_retried_are_pending_again_and_dropped_ones_stay_given_up() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open_tool(dir.path()).unwrap();
        let outbox = StoreOutbox::open(store.clone(), "webhook:0").unwrap();
        outbox
            .put(vec![
                entry("e1", "d1"),
                entry("e2", "d1"),
                entry("e3", "d2"),
                entry("e4", "d2"),
            ])
            .unwrap();
        for id in ["e1", "e2", "e3"] {
            outbox.dead_letter(id, "HTTP 400: bad payload", 1).unwrap();
        }
        assert_eq!(ids(&outbox.pending().unwrap()), ["e4"]);
        assert_eq!(outbox.meta().dead_letters, 3);

        // one by id, then the rest
        assert_eq!(
            outbox.retry_dead_letters(Some(&["e2".to_string()]), 5_000).unwrap(),
            ["e2"]
        );
        assert_eq!(ids(&outbox.pending().unwrap()), ["e4", "e2"], "after the pending ones");
        assert_eq!(
            outbox.pending().unwrap()[1].created_ms,
            5_000,
            "max_age counts from the retry"
        );
        assert!(!outbox.is_acknowledged("e2").unwrap(), "deliverable again");
        assert_eq!(outbox.drop_dead_letters(None).unwrap(), ["e1", "e3"]);
        assert!(outbox.dead_letters().unwrap().is_empty());
        assert_eq!(outbox.meta().dead_letters, 0);
        // a dropped id is not put again by a replay; a retried one is delivered once
        assert!(outbox.put(vec![entry("e1", "d1")]).unwrap().is_empty());
        assert!(outbox.is_acknowledged("e3").unwrap());
        outbox.acknowledge("e2").unwrap();
        drop(outbox);
        let reopened = StoreOutbox::open(store, "webhook:0").unwrap();
        assert_eq!(ids(&reopened.pending().unwrap()), ["e4"]);
        assert_eq!(reopened.meta().delivered, 1);
        assert!(reopened.retry_dead_letters(None, 6_000).unwrap().is_empty());
    }

    #[test]
    fn acknowledged_ids_beyond_the_retention_are_forgotten_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open_tool(dir.path()).unwrap();
        let keep_all = AckRetention {
            max_ids: 3,
            max_age_ms: 3_600_000,
        };
        let o = StoreOutbox::with_retention(store.clone(), "webhook:0", keep_all).unwrap();
        for i in 0..6 {
            let id = format!("k{i}");
            o.put(vec![entry(&id, "d")]).unwrap();
            o.acknowledge(&id).unwrap();
        }
        // over the count but within the time window: all remembered
        assert_eq!(o.meta().acknowledged, 6);
        drop(o);
        let forget = AckRetention {
            max_ids: 3,
            max_age_ms: 0,
        };
        let o = StoreOutbox::with_retention(store.clone(), "webhook:0", forget).unwrap();
        o.put(vec![entry("k6", "d")]).unwrap();
        o.acknowledge("k6").unwrap();
        assert_eq!(o.meta().acknowledged, 3);
        for i in 0..4 {
            assert!(!o.is_acknowledged(&format!("k{i}")).unwrap(), "k{i} forgotten");
        }
        for i in 4..7 {
            assert!(o.is_acknowledged(&format!("k{i}")).unwrap(), "k{i} remembered");
        }
        assert_eq!(o.delivered().unwrap(), 7, "the delivered count is not pruned");
    }
}
