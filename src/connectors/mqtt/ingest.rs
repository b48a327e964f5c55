//! The ingest log: where a push source (MQTT) keeps what it received before acknowledging it.
//!
//! A RocksDB of its own per source, `<data dir>/ingest/<xxh3 of the source name>/`, separate
//! from the checkpointed `live/` state: `live/` changes only by one batch per checkpoint and falls
//! back to a retained copy when damaged, which would forget acknowledged messages. The log is
//! like one Kafka partition:
//!
//! - column family `log`: key the sequence number (u64 big endian), value the entry (arrival
//!   time, topic, payload) in the store's envelope (format version, xxh3). Numbers grow by one
//!   per entry and are never reused; the position a checkpoint records for the source is the
//!   number of the next entry to process, like a file offset.
//! - column family `acks`: per MQTT packet id, the hash of the topic and payload of the last
//!   message with that id written here, so a redelivery (`dup`) of a message whose ack the
//!   broker never got (plume was killed right after the write) is recognised after a restart.
//!   At most 65 535 keys; trimming the log does not touch them.
//! - column family `meta`: the next sequence number (so numbering goes on after the whole log
//!   was trimmed) and the source's name.
//!
//! Every append is one synced write batch (the entries of one network read, their packet ids,
//! the next number and any trim): once [`IngestLog::append`] returns, the entries survive a
//! crash of plume or of the machine. Blocking: call it from a blocking thread, never from an
//! async task.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rocksdb::{ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBatch, WriteOptions};
use rustc_hash::FxHashMap;

use crate::connectors::SourceError;
use crate::store::{seal, seal_written, unseal};

const CF_LOG: &str = "log";
const CF_ACKS: &str = "acks";
const CF_META: &str = "meta";
const NEXT_KEY: &[u8] = b"next";
const NAME_KEY: &[u8] = b"source";

/// One received message as the log keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub topic: String,
    pub payload: Vec<u8>,
    /// Processing time of its arrival (ms since the epoch).
    pub arrival_ms: i64,
}

/// The encoded value of an entry (done by the caller, off the blocking thread's critical path),
/// written straight into its envelope: one allocation per message.
pub fn encode_entry(topic: &str, payload: &[u8], arrival_ms: i64) -> Vec<u8> {
    seal_written(12 + topic.len() + payload.len(), |v| {
        v.extend_from_slice(&arrival_ms.to_le_bytes());
        v.extend_from_slice(&(topic.len() as u32).to_le_bytes());
        v.extend_from_slice(topic.as_bytes());
        v.extend_from_slice(payload);
    })
}

fn decode_entry(value: &[u8]) -> Result<Entry, String> {
    parse_entry(unseal(value)?)
}

/// An entry from its unsealed bytes (public for the fuzz harness, `tests/fuzz.rs`).
pub fn parse_entry(v: &[u8]) -> Result<Entry, String> {
    if v.len() < 12 {
        return Err(format!("an entry of {} bytes is too short", v.len()));
    }
    let arrival_ms = i64::from_le_bytes(v[..8].try_into().expect("8 bytes"));
    let len = u32::from_le_bytes(v[8..12].try_into().expect("4 bytes")) as usize;
    if v.len() < 12 + len {
        return Err("the topic runs past the end of the entry".into());
    }
    let topic = String::from_utf8(v[12..12 + len].to_vec()).map_err(|_| "the topic is not UTF-8".to_string())?;
    Ok(Entry {
        topic,
        payload: v[12 + len..].to_vec(),
        arrival_ms,
    })
}

/// The directory of a source's log under a data directory.
pub fn dir_for(data_dir: &Path, source_name: &str) -> PathBuf {
    data_dir
        .join("ingest")
        .join(format!("{:016x}", xxhash_rust::xxh3::xxh3_64(source_name.as_bytes())))
}

/// The ingest log of one source. One writer (the source's feeder); reads only at start-up.
pub struct IngestLog {
    path: PathBuf,
    db: DB,
    first: AtomicU64,
    next: AtomicU64,
}

impl IngestLog {
    fn err(&self, operation: &'static str, error: impl ToString) -> SourceError {
        SourceError::Ingest {
            path: self.path.display().to_string(),
            operation,
            error: error.to_string(),
        }
    }

    /// Opens (creating it if needed) the log at `path` for the source `source_name`.
    pub fn open(path: &Path, source_name: &str) -> Result<Self, SourceError> {
        let fail = |operation, error: String| SourceError::Ingest {
            path: path.display().to_string(),
            operation,
            error,
        };
        std::fs::create_dir_all(path).map_err(|e| fail("creating the directory", e.to_string()))?;
        let mut o = Options::default();
        o.create_if_missing(true);
        o.create_missing_column_families(true);
        o.set_compression_type(rocksdb::DBCompressionType::None);
        o.set_paranoid_checks(true);
        o.set_keep_log_file_num(2);
        o.set_max_open_files(64);
        let cfs = [CF_LOG, CF_ACKS, CF_META].map(|n| ColumnFamilyDescriptor::new(n, o.clone()));
        let db = DB::open_cf_descriptors(&o, path, cfs).map_err(|e| fail("opening", e.to_string()))?;
        let log = IngestLog {
            path: path.to_path_buf(),
            db,
            first: AtomicU64::new(0),
            next: AtomicU64::new(0),
        };
        let (log_cf, meta) = (log.cf(CF_LOG), log.cf(CF_META));
        let stored_next = match log.db.get_cf(meta, NEXT_KEY).map_err(|e| log.err("reading", e))? {
            Some(v) => u64::from_le_bytes(
                unseal(&v)
                    .map_err(|e| log.err("reading the next number", e))?
                    .try_into()
                    .map_err(|_| log.err("reading the next number", "not 8 bytes"))?,
            ),
            None => 0,
        };
        let key_of = |item: Result<(Box<[u8]>, Box<[u8]>), rocksdb::Error>| -> Result<Option<u64>, SourceError> {
            match item {
                Ok((k, _)) => Ok(Some(u64::from_be_bytes(
                    (*k).try_into()
                        .map_err(|_| log.err("reading", "a key is not 8 bytes"))?,
                ))),
                Err(e) => Err(log.err("reading", e)),
            }
        };
        let last = match log.db.iterator_cf(log_cf, IteratorMode::End).next() {
            Some(item) => key_of(item)?,
            None => None,
        };
        let next = stored_next.max(last.map_or(0, |l| l + 1));
        let first = match log.db.iterator_cf(log_cf, IteratorMode::Start).next() {
            Some(item) => key_of(item)?.unwrap_or(next),
            None => next,
        };
        log.first.store(first, Ordering::Relaxed);
        log.next.store(next, Ordering::Relaxed);
        log.db
            .put_cf(meta, NAME_KEY, seal(source_name.as_bytes()))
            .map_err(|e| log.err("writing", e))?;
        Ok(log)
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(name).expect("opened with every column family")
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The number of the oldest entry kept (`next()` when the log is empty).
    pub fn first(&self) -> u64 {
        self.first.load(Ordering::Relaxed)
    }

    /// The number the next entry will get (the end of the log).
    pub fn next(&self) -> u64 {
        self.next.load(Ordering::Relaxed)
    }

    /// Packet id -> hash of topic and payload of the last message written with that id.
    pub fn handed(&self) -> Result<FxHashMap<u16, u64>, SourceError> {
        let mut out = FxHashMap::default();
        for item in self.db.iterator_cf(self.cf(CF_ACKS), IteratorMode::Start) {
            let (k, v) = item.map_err(|e| self.err("reading the packet ids", e))?;
            let (Ok(k), Ok(v)) = (<[u8; 2]>::try_from(&*k), unseal(&v)) else {
                return Err(self.err("reading the packet ids", "a damaged entry"));
            };
            let v: [u8; 8] = v
                .try_into()
                .map_err(|_| self.err("reading the packet ids", "a damaged entry"))?;
            out.insert(u16::from_be_bytes(k), u64::from_le_bytes(v));
        }
        Ok(out)
    }

    /// Appends `entries` (encoded with [`encode_entry`]) with the next numbers, records the
    /// packet ids `handed`, drops the entries below `trim_below`; one synced write. Returns the
    /// number of the first appended entry. Blocking.
    pub fn append(
        &self,
        entries: &[Vec<u8>],
        handed: &[(u16, u64)],
        trim_below: Option<u64>,
    ) -> Result<u64, SourceError> {
        let start = self.next();
        let next = start + entries.len() as u64;
        let mut batch = WriteBatch::default();
        let log = self.cf(CF_LOG);
        for (i, value) in entries.iter().enumerate() {
            batch.put_cf(log, (start + i as u64).to_be_bytes(), value);
        }
        let acks = self.cf(CF_ACKS);
        for (pkid, hash) in handed {
            batch.put_cf(acks, pkid.to_be_bytes(), seal(&hash.to_le_bytes()));
        }
        batch.put_cf(self.cf(CF_META), NEXT_KEY, seal(&next.to_le_bytes()));
        let trim = trim_below.filter(|&t| t > self.first()).map(|t| t.min(next));
        if let Some(t) = trim {
            batch.delete_range_cf(log, 0u64.to_be_bytes(), t.to_be_bytes());
        }
        let mut options = WriteOptions::default();
        options.set_sync(true);
        self.db
            .write_opt(batch, &options)
            .map_err(|e| self.err("appending", e))?;
        self.next.store(next, Ordering::Relaxed);
        if let Some(t) = trim {
            self.first.store(t, Ordering::Relaxed);
        }
        Ok(start)
    }

    /// Up to `max` entries from number `from` on, in order. Blocking.
    pub fn read(&self, from: u64, max: usize) -> Result<Vec<(u64, Entry)>, SourceError> {
        let mut out = Vec::new();
        let start = from.to_be_bytes();
        for item in self
            .db
            .iterator_cf(self.cf(CF_LOG), IteratorMode::From(&start, Direction::Forward))
            .take(max)
        {
            let (k, v) = item.map_err(|e| self.err("reading", e))?;
            let seq = u64::from_be_bytes(
                (*k).try_into()
                    .map_err(|_| self.err("reading", "a key is not 8 bytes"))?,
            );
            let entry = decode_entry(&v).map_err(|e| self.err("reading an entry", format!("entry {seq}: {e}")))?;
            out.push((seq, entry));
        }
        Ok(out)
    }
}

impl Drop for IngestLog {
    fn drop(&mut self) {
        // RocksDB's background threads must be done before the process exits
        self.db.cancel_all_background_work(true);
    }
}

/// Which log entries may go: those below the position of the oldest checkpoint that recovery
/// could still fall back to (the newest `keep` durable ones: `live/` and the retained copies).
#[derive(Debug)]
pub struct Trimmer {
    keep: usize,
    /// `(checkpoint id, position)` of barriers sent and not yet durable.
    barriers: std::collections::VecDeque<(u64, u64)>,
    /// Positions of the newest durable checkpoints taken by this process, oldest first.
    durable: std::collections::VecDeque<u64>,
    last_durable: u64,
}

impl Trimmer {
    pub fn new(keep: u32) -> Self {
        Trimmer {
            keep: keep.max(1) as usize,
            barriers: Default::default(),
            durable: Default::default(),
            last_durable: 0,
        }
    }

    /// The source sent the barrier of checkpoint `id` at log position `position`.
    pub fn barrier(&mut self, id: u64, position: u64) {
        self.barriers.push_back((id, position));
    }

    /// Checkpoint `durable` (and none newer) is durable: the position below which entries may
    /// be dropped, once this process has seen `keep` durable checkpoints.
    pub fn durable(&mut self, durable: u64) -> Option<u64> {
        if durable > self.last_durable {
            self.last_durable = durable;
            while let Some(&(id, position)) = self.barriers.front() {
                if id > durable {
                    break;
                }
                self.barriers.pop_front();
                if id == durable {
                    self.durable.push_back(position);
                }
            }
            while self.durable.len() > self.keep {
                self.durable.pop_front();
            }
        }
        (self.durable.len() == self.keep).then(|| self.durable[0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stored form of one entry (envelope version 1: `P`, the version, the xxh3 of what
    /// follows; then the arrival time, the topic's length, the topic and the payload), so it
    /// cannot change by accident: a log written by one plume is replayed by the next.
    const ENTRY_FIXTURE: &str =
        "500100031b8e709d083b0100a8da769b010000090000006171312f6465762d377b22706d3235223a31322e357d";

    #[test]
    fn an_entry_is_stored_in_the_format_of_version_1() {
        let encoded = encode_entry("aq1/dev-7", br#"{"pm25":12.5}"#, 1_767_225_600_000);
        let hex: String = encoded.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, ENTRY_FIXTURE);
        assert_eq!(
            decode_entry(&encoded).unwrap(),
            Entry {
                topic: "aq1/dev-7".into(),
                payload: br#"{"pm25":12.5}"#.to_vec(),
                arrival_ms: 1_767_225_600_000,
            }
        );
    }

    fn entry(i: u64) -> Vec<u8> {
        encode_entry(&format!("aq1/dev-{i}"), format!("{{\"n\":{i}}}").as_bytes(), i as i64)
    }

    #[test]
    fn entries_survive_a_reopen_in_order_and_trimming_keeps_the_numbering() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        {
            let log = IngestLog::open(&path, "mqtt:aq1/{device}").unwrap();
            assert_eq!((log.first(), log.next()), (0, 0));
            assert_eq!(log.append(&[entry(0), entry(1)], &[(7, 70)], None).unwrap(), 0);
            assert_eq!(log.append(&[entry(2)], &[(7, 71), (8, 80)], None).unwrap(), 2);
        }
        let log = IngestLog::open(&path, "mqtt:aq1/{device}").unwrap();
        assert_eq!((log.first(), log.next()), (0, 3));
        let read = log.read(1, 10).unwrap();
        assert_eq!(read.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(
            read[0].1,
            Entry {
                topic: "aq1/dev-1".into(),
                payload: b"{\"n\":1}".to_vec(),
                arrival_ms: 1
            }
        );
        let handed = log.handed().unwrap();
        assert_eq!((handed[&7], handed[&8]), (71, 80));
        // trim everything: the next number goes on
        log.append(&[], &[], Some(3)).unwrap();
        assert!(log.read(0, 10).unwrap().is_empty());
        drop(log);
        let log = IngestLog::open(&path, "mqtt:aq1/{device}").unwrap();
        assert_eq!((log.first(), log.next()), (3, 3));
        assert_eq!(log.append(&[entry(3)], &[], None).unwrap(), 3);
        assert_eq!(log.handed().unwrap().len(), 2, "trimming keeps the packet ids");
    }

    #[test]
    fn a_damaged_entry_is_an_error_not_a_wrong_reading() {
        let dir = tempfile::tempdir().unwrap();
        let log = IngestLog::open(dir.path(), "s").unwrap();
        let mut bad = entry(0);
        let last = bad.len() - 1;
        bad[last] ^= 1;
        log.append(&[bad], &[], None).unwrap();
        let e = log.read(0, 1).unwrap_err().to_string();
        assert!(e.contains("checksum"), "{e}");
    }

    #[test]
    fn trimming_waits_for_keep_durable_checkpoints_and_follows_the_oldest() {
        let mut t = Trimmer::new(2);
        t.barrier(5, 100);
        assert_eq!(t.durable(4), None);
        assert_eq!(t.durable(5), None, "one durable checkpoint of two kept");
        t.barrier(6, 200);
        t.barrier(7, 300);
        // 6 failed, 7 became durable: the positions of 5 and 7 are kept
        assert_eq!(t.durable(7), Some(100));
        t.barrier(8, 400);
        assert_eq!(t.durable(8), Some(300));
        assert_eq!(t.durable(8), Some(300));
    }
}
