//! The ingest log: where a push source (MQTT) keeps what it received before acknowledging it.
//!
//! # Layout
//! A directory of its own per source, `<data dir>/ingest/<xxh3 of the source name>/`, separate
//! from the checkpointed `live/` state: `live/` changes only by one batch per checkpoint and falls
//! back to a retained copy when damaged, which would forget acknowledged messages. The log is
//! like one Kafka partition: entries numbered from 0 by one per entry, never reused; the position
//! a checkpoint records for the source is the number of the next entry to process, like a file
//! offset.
//!
//! On disk (format [`VERSION`] 2, since 2026-12-06; version 1 was a RocksDB, migrated on open):
//! ```text
//! <first number, 20 digits>.seg   segments, oldest first; the newest is written
//! ```
//! - A segment is a file of [`SEGMENT_BYTES`] (more if one write needs it) **filled with zeros
//!   when it is made** (written out and synced, then renamed into place), so an append writes
//!   over blocks the file already has: its sync writes the data and no file-system metadata (an
//!   append that grows a file also commits the file system's journal, a second write to the
//!   disk per sync). The next segment is made on a thread of its own once the newest is half
//!   full.
//! - A segment is a sequence of records, each `[body length u32][xxh3 of the body u64][body]`
//!   (little endian), the body's first byte its kind; a zero length is the end of what was
//!   written. Kinds: the header (always first: the format version, the segment's first number,
//!   the source's name), entries (the number of the first, how many, then each entry's length
//!   and its value: arrival time, topic and payload in the store's envelope, [`encode_entry`]),
//!   packet ids (per MQTT packet id, the hash of the topic and payload of the last message
//!   written with it, so a redelivery (`dup`) of a message whose ack the broker never got is
//!   recognised after a restart; the whole table is written again at the start of each
//!   segment, so dropping old segments keeps it), and trims (entries below a number are gone).
//! - Every append is one write of its records and one `fdatasync`: once [`IngestLog::append`]
//!   returns, the entries survive a crash of plume or of the machine. Blocking: call it from a
//!   blocking thread, never from an async task.
//! - Opening reads every segment (the log holds what the retained checkpoints may replay, then
//!   it is trimmed). A record that does not check in the newest segment is the torn end of a
//!   write the crash interrupted (never acknowledged): it and what follows are zeroed and the
//!   log goes on from there, with a warning. One in an older segment is damage: an error that
//!   names the file and the offset.
//! - Trimming drops whole segments whose entries are all below the trim point (never the newest)
//!   and records the point itself, so the numbering and the oldest entry kept survive a restart.
//!
//! Version 1 (2026-12-01 to 2026-12-06) kept each entry under its own key in a RocksDB (column
//! families `log`, `acks`, `meta`). Each synced RocksDB write cost about twice the CPU of a
//! synced write to a zero-filled file (BENCHMARKS.md, MQTT), on the path every message takes. A
//! version-1 directory is migrated when the log opens: its entries, packet ids and numbering are
//! written as one segment, synced, and then the RocksDB's files are removed (`CURRENT` first: a
//! crash in between migrates again from the start).

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rustc_hash::FxHashMap;

use crate::connectors::SourceError;
use crate::store::{seal, unseal};

/// The format of the log's segments (1: a RocksDB, migrated on open).
pub const VERSION: u16 = 2;
/// The size of a new segment (a write larger than a segment gets one of its own size).
pub const SEGMENT_BYTES: u64 = 16 << 20;
const MAGIC: &[u8; 8] = b"plumelog";
const RECORD_HEADER: usize = 4 + 8;
const KIND_HEADER: u8 = 1;
const KIND_ENTRIES: u8 = 2;
const KIND_ACKS: u8 = 3;
const KIND_TRIM: u8 = 4;
/// Zeros written at a time when a segment is made or a torn end is cleared.
const ZERO_BLOCK: usize = 1 << 20;

/// One received message as the log keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub topic: String,
    pub payload: Vec<u8>,
    /// Processing time of its arrival (ms since the epoch).
    pub arrival_ms: i64,
}

/// The encoded value of an entry (done by the caller, off the blocking thread's critical path).
pub fn encode_entry(topic: &str, payload: &[u8], arrival_ms: i64) -> Vec<u8> {
    let mut v = Vec::with_capacity(12 + topic.len() + payload.len());
    v.extend_from_slice(&arrival_ms.to_le_bytes());
    v.extend_from_slice(&(topic.len() as u32).to_le_bytes());
    v.extend_from_slice(topic.as_bytes());
    v.extend_from_slice(payload);
    seal(&v)
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

/// Appends one record (`kind` and what `body` writes) to `out`.
fn push_record(out: &mut Vec<u8>, kind: u8, body: impl FnOnce(&mut Vec<u8>)) {
    let at = out.len();
    out.extend_from_slice(&[0; RECORD_HEADER]);
    out.push(kind);
    body(out);
    let len = (out.len() - at - RECORD_HEADER) as u32;
    let hash = xxhash_rust::xxh3::xxh3_64(&out[at + RECORD_HEADER..]);
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
    out[at + 4..at + RECORD_HEADER].copy_from_slice(&hash.to_le_bytes());
}

fn push_header(out: &mut Vec<u8>, base: u64, source_name: &str) {
    push_record(out, KIND_HEADER, |b| {
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&base.to_le_bytes());
        b.extend_from_slice(&(source_name.len() as u32).to_le_bytes());
        b.extend_from_slice(source_name.as_bytes());
    });
}

fn push_entries<'a>(out: &mut Vec<u8>, first: u64, entries: impl ExactSizeIterator<Item = &'a [u8]>) {
    push_record(out, KIND_ENTRIES, |b| {
        b.extend_from_slice(&first.to_le_bytes());
        b.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        for e in entries {
            b.extend_from_slice(&(e.len() as u32).to_le_bytes());
            b.extend_from_slice(e);
        }
    });
}

fn push_acks<'a>(out: &mut Vec<u8>, acks: impl ExactSizeIterator<Item = (&'a u16, &'a u64)>) {
    push_record(out, KIND_ACKS, |b| {
        b.extend_from_slice(&(acks.len() as u32).to_le_bytes());
        for (pkid, hash) in acks {
            b.extend_from_slice(&pkid.to_le_bytes());
            b.extend_from_slice(&hash.to_le_bytes());
        }
    });
}

fn push_trim(out: &mut Vec<u8>, below: u64) {
    push_record(out, KIND_TRIM, |b| b.extend_from_slice(&below.to_le_bytes()));
}

/// One record of a segment, as read.
enum Record<'a> {
    Header {
        base: u64,
    },
    /// The first entry's number and the entries' values.
    Entries {
        first: u64,
        values: Vec<&'a [u8]>,
    },
    Acks(Vec<(u16, u64)>),
    Trim(u64),
}

/// A little-endian reader over a record's body.
struct Body<'a>(&'a [u8]);

impl<'a> Body<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

/// What is at `at` in a segment: `Ok(None)` at the end of what was written (zeros, or the end of
/// the file), `Ok(Some((record, next offset)))`, or `Err(reason)` when the bytes there are not a
/// whole record that checks.
fn record_at<'a>(bytes: &'a [u8], at: usize) -> Result<Option<(Record<'a>, usize)>, String> {
    let Some(header) = bytes.get(at..at + RECORD_HEADER) else {
        return match bytes.get(at..) {
            Some(rest) if rest.iter().any(|&b| b != 0) => Err("a record header cut short".into()),
            _ => Ok(None),
        };
    };
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    if len == 0 {
        return if header[4..].iter().all(|&b| b == 0) {
            Ok(None)
        } else {
            Err("a record of length 0".into())
        };
    }
    let end = at + RECORD_HEADER + len;
    let Some(body) = bytes.get(at + RECORD_HEADER..end) else {
        return Err(format!("a record of {len} bytes runs past the end of the file"));
    };
    let hash = u64::from_le_bytes(header[4..].try_into().expect("8 bytes"));
    if xxhash_rust::xxh3::xxh3_64(body) != hash {
        return Err("a record's checksum does not match".into());
    }
    let damaged = |what: &str| format!("a {what} record that does not parse");
    let mut b = Body(&body[1..]);
    let record = match body[0] {
        KIND_HEADER => {
            let magic = b.take(MAGIC.len()).ok_or_else(|| damaged("header"))?;
            let version = b.u16().ok_or_else(|| damaged("header"))?;
            if magic != MAGIC {
                return Err("not a plume ingest log segment".into());
            }
            if version != VERSION {
                return Err(format!(
                    "segment format version {version}, this plume reads version {VERSION}"
                ));
            }
            Record::Header {
                base: b.u64().ok_or_else(|| damaged("header"))?,
            }
        }
        KIND_ENTRIES => {
            let parse = |b: &mut Body<'a>| -> Option<Record<'a>> {
                let first = b.u64()?;
                let count = b.u32()? as usize;
                let mut values = Vec::with_capacity(count.min(b.0.len() / 4));
                for _ in 0..count {
                    let n = b.u32()? as usize;
                    values.push(b.take(n)?);
                }
                b.0.is_empty().then_some(Record::Entries { first, values })
            };
            parse(&mut b).ok_or_else(|| damaged("entries"))?
        }
        KIND_ACKS => {
            let parse = |b: &mut Body| -> Option<Vec<(u16, u64)>> {
                let count = b.u32()? as usize;
                let mut acks = Vec::with_capacity(count.min(b.0.len() / 10));
                for _ in 0..count {
                    acks.push((b.u16()?, b.u64()?));
                }
                b.0.is_empty().then_some(acks)
            };
            Record::Acks(parse(&mut b).ok_or_else(|| damaged("packet id"))?)
        }
        KIND_TRIM => Record::Trim(b.u64().filter(|_| b.0.is_empty()).ok_or_else(|| damaged("trim"))?),
        other => return Err(format!("a record of unknown kind {other}")),
    };
    Ok(Some((record, end)))
}

/// A segment file.
#[derive(Debug)]
struct Segment {
    /// The number of its first entry (its header's, and its name's).
    base: u64,
    path: PathBuf,
}

fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.seg"))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `len` zero bytes at `offset` of `file`.
fn write_zeros(file: &File, mut offset: u64, len: u64) -> std::io::Result<()> {
    let zeros = vec![0u8; ZERO_BLOCK.min(len as usize)];
    let end = offset + len;
    while offset < end {
        let n = ((end - offset) as usize).min(zeros.len());
        file.write_all_at(&zeros[..n], offset)?;
        offset += n as u64;
    }
    Ok(())
}

/// A zero-filled file of `bytes` made and synced under a temporary name in `dir`, to become a
/// segment ([`Writer::roll`]).
struct SpareFile {
    path: PathBuf,
    file: File,
    bytes: u64,
}

fn make_spare(dir: &Path, bytes: u64) -> std::io::Result<SpareFile> {
    static NUMBER: AtomicU64 = AtomicU64::new(0);
    let path = dir.join(format!(
        "spare-{}-{}.tmp",
        std::process::id(),
        NUMBER.fetch_add(1, Ordering::Relaxed)
    ));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    write_zeros(&file, 0, bytes)?;
    file.sync_all()?;
    Ok(SpareFile { path, file, bytes })
}

/// What the one writer keeps between appends.
struct Writer {
    /// Oldest first; the last is being written.
    segments: VecDeque<Segment>,
    file: File,
    /// Where the next record goes in the newest segment, and that file's size.
    offset: u64,
    capacity: u64,
    /// Packet id -> hash of the last message written with it (written again at each new
    /// segment's start).
    acks: FxHashMap<u16, u64>,
    /// The next segment's file, being made (once the newest is half full) or made.
    spare: Option<std::thread::JoinHandle<std::io::Result<SpareFile>>>,
    buffer: Vec<u8>,
}

/// The ingest log of one source. One writer (the source's feeder); reads only at start-up.
pub struct IngestLog {
    path: PathBuf,
    name: String,
    /// The size of a new segment ([`SEGMENT_BYTES`]; smaller in tests).
    segment_bytes: u64,
    first: AtomicU64,
    next: AtomicU64,
    writer: Mutex<Writer>,
}

impl IngestLog {
    fn err(&self, operation: &'static str, error: impl ToString) -> SourceError {
        ingest_error(&self.path, operation, error)
    }

    /// Opens (creating it if needed, migrating a version-1 log) the log at `path` for the source
    /// `source_name`.
    pub fn open(path: &Path, source_name: &str) -> Result<Self, SourceError> {
        Self::open_with_segments_of(path, source_name, SEGMENT_BYTES)
    }

    /// [`IngestLog::open`], new segments of `segment_bytes`.
    pub fn open_with_segments_of(path: &Path, source_name: &str, segment_bytes: u64) -> Result<Self, SourceError> {
        let fail = |operation, error: String| ingest_error(path, operation, error);
        std::fs::create_dir_all(path).map_err(|e| fail("creating the directory", e.to_string()))?;
        if path.join("CURRENT").exists() {
            migrate_v1(path, source_name, segment_bytes)?;
        }
        let mut segments = Vec::new();
        for item in std::fs::read_dir(path).map_err(|e| fail("listing the directory", e.to_string()))? {
            let item = item.map_err(|e| fail("listing the directory", e.to_string()))?;
            let file_name = item.file_name();
            let file_name = file_name.to_string_lossy();
            if file_name.ends_with(".tmp") {
                // a segment being made when the process ended
                let _ = std::fs::remove_file(item.path());
            } else if let Some(base) = file_name.strip_suffix(".seg").and_then(|b| b.parse::<u64>().ok()) {
                segments.push(Segment {
                    base,
                    path: item.path(),
                });
            }
        }
        segments.sort_by_key(|s| s.base);
        if segments.is_empty() {
            let spare = make_spare(path, segment_bytes).map_err(|e| fail("making a segment", e.to_string()))?;
            segments.push(install_segment(
                path,
                spare,
                0,
                source_name,
                &FxHashMap::default(),
                &mut Vec::new(),
            )?);
        }
        // every segment read through: the numbering, the packet ids, the trim point, the end
        let mut next: Option<u64> = None;
        let mut trimmed_below = 0;
        let mut acks = FxHashMap::default();
        let mut end = 0;
        let newest = segments.len() - 1;
        for (i, segment) in segments.iter().enumerate() {
            let bytes = std::fs::read(&segment.path).map_err(|e| fail("reading a segment", e.to_string()))?;
            let at_offset = |offset: usize, reason: String| {
                fail(
                    "reading",
                    format!("{} at byte {offset}: {reason}", segment.path.display()),
                )
            };
            match record_at(&bytes, 0) {
                Ok(Some((Record::Header { base }, _))) if base == segment.base => {}
                Ok(_) => return Err(at_offset(0, "the segment does not start with its header".into())),
                Err(reason) => return Err(at_offset(0, reason)),
            }
            if next.is_some_and(|n| n != segment.base) {
                return Err(at_offset(
                    0,
                    format!(
                        "the segment starts at entry {}, the one before it ends before entry {}",
                        segment.base,
                        next.unwrap_or(0)
                    ),
                ));
            }
            let mut expected = segment.base;
            let mut at = 0;
            loop {
                match record_at(&bytes, at) {
                    Ok(None) => break,
                    Ok(Some((record, after))) => {
                        match record {
                            Record::Header { .. } if at == 0 => {}
                            Record::Entries { first, values } if first == expected => {
                                expected += values.len() as u64;
                            }
                            Record::Acks(list) => acks.extend(list),
                            Record::Trim(below) => trimmed_below = trimmed_below.max(below),
                            _ if i == newest => {
                                // (entries of another numbering: an old write torn apart)
                                torn_end(path, &segment.path, at, bytes.len());
                                break;
                            }
                            _ => return Err(at_offset(at, "a record out of order".into())),
                        }
                        at = after;
                    }
                    Err(reason) if i == newest => {
                        torn_end(path, &segment.path, at, bytes.len());
                        let _ = reason;
                        break;
                    }
                    Err(reason) => return Err(at_offset(at, reason)),
                }
            }
            next = Some(expected);
            if i == newest {
                end = at;
                if bytes[at..].iter().any(|&b| b != 0) {
                    // what a torn write left after the end: zeroed before anything is appended
                    let file = std::fs::OpenOptions::new()
                        .write(true)
                        .open(&segment.path)
                        .map_err(|e| fail("clearing a torn write", e.to_string()))?;
                    write_zeros(&file, at as u64, (bytes.len() - at) as u64)
                        .and_then(|_| file.sync_data())
                        .map_err(|e| fail("clearing a torn write", e.to_string()))?;
                }
            }
        }
        let next = next.expect("at least one segment");
        let first = segments[0].base.max(trimmed_below).min(next);
        let active = segments.last().expect("at least one segment");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&active.path)
            .map_err(|e| fail("opening a segment", e.to_string()))?;
        let capacity = file
            .metadata()
            .map_err(|e| fail("opening a segment", e.to_string()))?
            .len();
        Ok(IngestLog {
            path: path.to_path_buf(),
            name: source_name.to_string(),
            segment_bytes,
            first: AtomicU64::new(first),
            next: AtomicU64::new(next),
            writer: Mutex::new(Writer {
                segments: segments.into(),
                file,
                offset: end as u64,
                capacity,
                acks,
                spare: None,
                buffer: Vec::new(),
            }),
        })
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

    fn writer(&self) -> std::sync::MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Packet id -> hash of topic and payload of the last message written with that id.
    pub fn handed(&self) -> Result<FxHashMap<u16, u64>, SourceError> {
        Ok(self.writer().acks.clone())
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
        let mut guard = self.writer();
        let w = &mut *guard;
        let start = self.next();
        let next = start + entries.len() as u64;
        let trim = trim_below.filter(|&t| t > self.first()).map(|t| t.min(next));
        let mut buffer = std::mem::take(&mut w.buffer);
        buffer.clear();
        if !entries.is_empty() {
            push_entries(&mut buffer, start, entries.iter().map(Vec::as_slice));
        }
        if !handed.is_empty() {
            push_acks(&mut buffer, handed.iter().map(|(p, h)| (p, h)));
        }
        if let Some(t) = trim {
            push_trim(&mut buffer, t);
        }
        let result = self.write(w, start, &buffer);
        w.buffer = buffer;
        result?;
        w.acks.extend(handed.iter().copied());
        self.next.store(next, Ordering::Relaxed);
        if let Some(t) = trim {
            self.first.store(t, Ordering::Relaxed);
            // whole segments below the trim point go (never the newest)
            while w.segments.len() > 1 && w.segments[1].base <= t {
                let old = w.segments.pop_front().expect("two segments");
                if let Err(e) = std::fs::remove_file(&old.path) {
                    tracing::warn!(path = %old.path.display(), error = %e, "could not remove a trimmed ingest log segment");
                }
            }
        }
        Ok(start)
    }

    /// Writes `records` (the next entry's number `start`) at the end of the newest segment, or
    /// of a new one when they do not fit, and syncs them.
    fn write(&self, w: &mut Writer, start: u64, records: &[u8]) -> Result<(), SourceError> {
        if records.is_empty() {
            return Ok(());
        }
        if w.offset + records.len() as u64 > w.capacity {
            self.roll(w, start, records.len() as u64)?;
        }
        w.file
            .write_all_at(records, w.offset)
            .and_then(|_| w.file.sync_data())
            .map_err(|e| self.err("appending", e))?;
        w.offset += records.len() as u64;
        if w.spare.is_none() && w.offset > w.capacity / 2 {
            // the next segment made while this one fills
            let (dir, bytes) = (self.path.clone(), self.segment_bytes);
            w.spare = Some(std::thread::spawn(move || make_spare(&dir, bytes)));
        }
        Ok(())
    }

    /// Starts a new segment at entry `base`, with room for `room` more bytes.
    fn roll(&self, w: &mut Writer, base: u64, room: u64) -> Result<(), SourceError> {
        let mut header = Vec::new();
        push_header(&mut header, base, &self.name);
        push_acks(&mut header, w.acks.iter());
        let needed = header.len() as u64 + room;
        let spare = match w.spare.take().map(|made| made.join()) {
            Some(Ok(Ok(spare))) if spare.bytes >= needed => spare,
            other => {
                if let Some(Ok(Ok(small))) = other {
                    let _ = std::fs::remove_file(&small.path);
                }
                make_spare(&self.path, needed.max(self.segment_bytes)).map_err(|e| self.err("making a segment", e))?
            }
        };
        let segment = install_segment(&self.path, spare, base, &self.name, &w.acks, &mut header)?;
        w.file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&segment.path)
            .map_err(|e| self.err("opening a segment", e))?;
        w.capacity = w.file.metadata().map_err(|e| self.err("opening a segment", e))?.len();
        w.offset = header.len() as u64;
        w.segments.push_back(segment);
        Ok(())
    }

    /// Up to `max` entries from number `from` on, in order. Blocking.
    pub fn read(&self, from: u64, max: usize) -> Result<Vec<(u64, Entry)>, SourceError> {
        let from = from.max(self.first());
        let paths: Vec<(u64, PathBuf)> = {
            let w = self.writer();
            let start = w.segments.iter().rposition(|s| s.base <= from).unwrap_or(0);
            w.segments
                .iter()
                .skip(start)
                .map(|s| (s.base, s.path.clone()))
                .collect()
        };
        let mut out = Vec::new();
        for (_, path) in paths {
            let bytes = std::fs::read(&path).map_err(|e| self.err("reading a segment", e))?;
            let mut at = 0;
            while let Ok(Some((record, after))) = record_at(&bytes, at) {
                if let Record::Entries { first, values } = record
                    && first + values.len() as u64 > from
                {
                    for (i, value) in values.into_iter().enumerate() {
                        let seq = first + i as u64;
                        if seq < from {
                            continue;
                        }
                        if out.len() == max {
                            return Ok(out);
                        }
                        let entry = decode_entry(value)
                            .map_err(|e| self.err("reading an entry", format!("entry {seq}: {e}")))?;
                        out.push((seq, entry));
                    }
                }
                at = after;
            }
        }
        Ok(out)
    }
}

fn ingest_error(path: &Path, operation: &'static str, error: impl ToString) -> SourceError {
    SourceError::Ingest {
        path: path.display().to_string(),
        operation,
        error: error.to_string(),
    }
}

fn torn_end(dir: &Path, segment: &Path, at: usize, len: usize) {
    tracing::warn!(
        log = %dir.display(),
        segment = %segment.display(),
        offset = at,
        "the ingest log's last write was cut short by the end of the process (never acknowledged): the log goes on from its last whole record"
    );
    let _ = len;
}

/// Writes the header (and `acks`, and whatever else `records` already holds after them: the
/// caller's header and packet ids) at the start of the zero-filled `spare`, syncs it and renames
/// it to the segment of `base`. `records` is filled with the header and packet ids if empty.
fn install_segment(
    dir: &Path,
    spare: SpareFile,
    base: u64,
    source_name: &str,
    acks: &FxHashMap<u16, u64>,
    records: &mut Vec<u8>,
) -> Result<Segment, SourceError> {
    let fail = |operation, error: std::io::Error| ingest_error(dir, operation, error);
    if records.is_empty() {
        push_header(records, base, source_name);
        if !acks.is_empty() {
            push_acks(records, acks.iter());
        }
    }
    spare
        .file
        .write_all_at(records, 0)
        .and_then(|_| spare.file.sync_data())
        .map_err(|e| fail("making a segment", e))?;
    let path = segment_path(dir, base);
    std::fs::rename(&spare.path, &path)
        .and_then(|_| sync_dir(dir))
        .map_err(|e| fail("making a segment", e))?;
    Ok(Segment { base, path })
}

/// Rewrites a version-1 log (a RocksDB in `path`) as one segment, then removes the RocksDB.
fn migrate_v1(path: &Path, source_name: &str, segment_bytes: u64) -> Result<(), SourceError> {
    let fail = |operation, error: String| ingest_error(path, operation, error);
    let old = v1::read_all(path).map_err(|e| fail("migrating from format 1", e))?;
    // (a migration cut short before: its segments go, it starts again)
    for item in std::fs::read_dir(path).map_err(|e| fail("listing the directory", e.to_string()))? {
        let item = item.map_err(|e| fail("listing the directory", e.to_string()))?;
        let name = item.file_name().to_string_lossy().into_owned();
        if name.ends_with(".seg") || name.ends_with(".tmp") {
            std::fs::remove_file(item.path()).map_err(|e| fail("migrating from format 1", e.to_string()))?;
        }
    }
    let base = old.first;
    let mut records = Vec::new();
    push_header(&mut records, base, source_name);
    if !old.acks.is_empty() {
        push_acks(&mut records, old.acks.iter());
    }
    for (i, batch) in old.entries.chunks(4096).enumerate() {
        push_entries(&mut records, base + (i * 4096) as u64, batch.iter().map(Vec::as_slice));
    }
    let spare = make_spare(path, records.len() as u64 + segment_bytes)
        .map_err(|e| fail("migrating from format 1", e.to_string()))?;
    install_segment(path, spare, base, source_name, &old.acks, &mut records)?;
    // the RocksDB goes, `CURRENT` first: without it the directory is no longer version 1
    std::fs::remove_file(path.join("CURRENT"))
        .and_then(|_| sync_dir(path))
        .map_err(|e| fail("migrating from format 1", e.to_string()))?;
    for item in std::fs::read_dir(path).map_err(|e| fail("listing the directory", e.to_string()))? {
        let item = item.map_err(|e| fail("listing the directory", e.to_string()))?;
        if !item.file_name().to_string_lossy().ends_with(".seg") {
            let _ = std::fs::remove_file(item.path());
        }
    }
    tracing::info!(
        log = %path.display(),
        entries = old.entries.len(),
        first = old.first,
        next = old.first + old.entries.len() as u64,
        "ingest log migrated from format 1 (RocksDB) to format {VERSION} (segments)"
    );
    Ok(())
}

/// Version 1 of the log, a RocksDB: read once to migrate it (and, in tests, written).
mod v1 {
    use std::path::Path;

    use rocksdb::{ColumnFamilyDescriptor, DB, IteratorMode, Options};
    use rustc_hash::FxHashMap;

    use crate::store::unseal;

    pub const CF_LOG: &str = "log";
    pub const CF_ACKS: &str = "acks";
    pub const CF_META: &str = "meta";
    pub const NEXT_KEY: &[u8] = b"next";

    pub struct Contents {
        /// The number of the first entry; the entries (sealed values) follow it without gaps.
        pub first: u64,
        pub entries: Vec<Vec<u8>>,
        pub acks: FxHashMap<u16, u64>,
    }

    pub fn open(path: &Path) -> Result<DB, String> {
        let mut o = Options::default();
        o.create_if_missing(true);
        o.create_missing_column_families(true);
        o.set_paranoid_checks(true);
        let cfs = [CF_LOG, CF_ACKS, CF_META].map(|n| ColumnFamilyDescriptor::new(n, o.clone()));
        DB::open_cf_descriptors(&o, path, cfs).map_err(|e| e.to_string())
    }

    pub fn read_all(path: &Path) -> Result<Contents, String> {
        let db = open(path)?;
        let cf = |name| db.cf_handle(name).expect("opened with every column family");
        let stored_next = match db.get_cf(cf(CF_META), NEXT_KEY).map_err(|e| e.to_string())? {
            Some(v) => u64::from_le_bytes(unseal(&v)?.try_into().map_err(|_| "the next number is not 8 bytes")?),
            None => 0,
        };
        let mut entries = Vec::new();
        let mut first = None;
        for item in db.iterator_cf(cf(CF_LOG), IteratorMode::Start) {
            let (k, v) = item.map_err(|e| e.to_string())?;
            let seq = u64::from_be_bytes((*k).try_into().map_err(|_| "a key is not 8 bytes")?);
            let expected = *first.get_or_insert(seq) + entries.len() as u64;
            if seq != expected {
                return Err(format!("entry {expected} is missing (the next is {seq})"));
            }
            entries.push(v.to_vec());
        }
        let end = first.unwrap_or(stored_next) + entries.len() as u64;
        let next = stored_next.max(end);
        // (entries numbered below a stored next that has none: all trimmed)
        let first = if entries.is_empty() {
            next
        } else {
            first.unwrap_or(next)
        };
        let mut acks = FxHashMap::default();
        for item in db.iterator_cf(cf(CF_ACKS), IteratorMode::Start) {
            let (k, v) = item.map_err(|e| e.to_string())?;
            let (Ok(k), Ok(v)) = (<[u8; 2]>::try_from(&*k), unseal(&v)) else {
                return Err("a damaged packet id".into());
            };
            let v: [u8; 8] = v.try_into().map_err(|_| "a damaged packet id")?;
            acks.insert(u16::from_be_bytes(k), u64::from_le_bytes(v));
        }
        db.cancel_all_background_work(true);
        Ok(Contents { first, entries, acks })
    }
}

impl Drop for IngestLog {
    fn drop(&mut self) {
        // a next segment still being made is waited for and removed
        if let Some(made) = self.writer().spare.take()
            && let Ok(Ok(spare)) = made.join()
        {
            let _ = std::fs::remove_file(&spare.path);
        }
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

    /// An entry of about 250 bytes.
    fn large_entry(i: u64) -> Vec<u8> {
        encode_entry(
            &format!("aq1/dev-{i}"),
            format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(200)).as_bytes(),
            i as i64,
        )
    }

    fn numbers(log: &IngestLog, from: u64) -> Vec<u64> {
        log.read(from, usize::MAX).unwrap().iter().map(|(s, _)| *s).collect()
    }

    fn segments(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn segments_roll_over_and_trimming_drops_whole_old_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        // 4 KiB segments: about 15 entries each
        let log = IngestLog::open_with_segments_of(&path, "s", 4096).unwrap();
        for i in 0..20 {
            let batch: Vec<Vec<u8>> = (0..5).map(|k| large_entry(i * 5 + k)).collect();
            assert_eq!(log.append(&batch, &[((i % 3) as u16, i)], None).unwrap(), i * 5);
        }
        let made = segments(&path);
        assert!(made.len() >= 4, "{made:?}");
        assert!(
            made.iter().all(|n| n.ends_with(".seg")),
            "no spare left behind: {made:?}"
        );
        assert_eq!(numbers(&log, 0), (0..100).collect::<Vec<_>>());
        assert_eq!(numbers(&log, 57)[0], 57);
        // a write larger than a segment gets a segment of its own size
        let big: Vec<Vec<u8>> = (100..160).map(large_entry).collect();
        assert_eq!(log.append(&big, &[], None).unwrap(), 100);
        // trimming below 90 drops the segments whose entries are all below it
        log.append(&[], &[], Some(90)).unwrap();
        assert_eq!(log.first(), 90);
        let kept: Vec<u64> = segments(&path)
            .iter()
            .map(|n| n.trim_end_matches(".seg").parse().unwrap())
            .collect();
        // the oldest kept holds entry 90; every segment before it went
        assert!(kept[0] > 0 && kept[0] <= 90 && kept[1] > 90, "{kept:?}");
        assert_eq!(numbers(&log, 0), (90..160).collect::<Vec<_>>());
        drop(log);
        let log = IngestLog::open_with_segments_of(&path, "s", 4096).unwrap();
        assert_eq!((log.first(), log.next()), (90, 160));
        assert_eq!(numbers(&log, 0), (90..160).collect::<Vec<_>>());
        // the packet ids survive the segments that held them
        let handed = log.handed().unwrap();
        assert_eq!((handed[&0], handed[&1], handed[&2]), (18, 19, 17));
    }

    #[test]
    fn a_write_cut_short_at_the_end_is_dropped_and_the_log_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let end = {
            let log = IngestLog::open(&path, "s").unwrap();
            log.append(&[entry(0), entry(1)], &[], None).unwrap();
            log.append(&[entry(2)], &[], None).unwrap();
            log.writer().offset
        };
        let segment = path.join(&segments(&path)[0]);
        // a third write of which only part reached the disk: a record header and some bytes
        let mut torn = Vec::new();
        push_entries(&mut torn, 3, [entry(3).as_slice(), entry(4).as_slice()].into_iter());
        let file = std::fs::OpenOptions::new().write(true).open(&segment).unwrap();
        file.write_all_at(&torn[..torn.len() / 2], end).unwrap();
        // and an old record of another numbering further on, from before the crash
        let mut stale = Vec::new();
        push_entries(&mut stale, 40, [entry(40).as_slice()].into_iter());
        file.write_all_at(&stale, end + 4000).unwrap();
        drop(file);
        let log = IngestLog::open(&path, "s").unwrap();
        assert_eq!((log.first(), log.next()), (0, 3));
        assert_eq!(numbers(&log, 0), vec![0, 1, 2]);
        // what the torn write left is zeroed, so nothing of it reappears after the next write
        assert_eq!(log.append(&[entry(3)], &[], None).unwrap(), 3);
        drop(log);
        let log = IngestLog::open(&path, "s").unwrap();
        assert_eq!(numbers(&log, 0), vec![0, 1, 2, 3]);
        assert_eq!(log.read(3, 1).unwrap()[0].1.payload, b"{\"n\":3}".to_vec());
    }

    #[test]
    fn damage_in_an_older_segment_is_an_error_that_names_the_file_and_the_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        {
            let log = IngestLog::open_with_segments_of(&path, "s", 4096).unwrap();
            for i in 0..60 {
                log.append(&[entry(i)], &[], None).unwrap();
            }
        }
        let names = segments(&path);
        assert!(names.len() >= 2);
        let older = path.join(&names[0]);
        let mut bytes = std::fs::read(&older).unwrap();
        bytes[200] ^= 0x40;
        std::fs::write(&older, &bytes).unwrap();
        let e = IngestLog::open_with_segments_of(&path, "s", 4096)
            .err()
            .expect("an error")
            .to_string();
        assert!(e.contains(&names[0]) && e.contains("at byte"), "{e}");
    }

    /// A version-1 log (a RocksDB) as plume wrote it until 2026-12-06.
    fn write_v1(path: &Path, first: u64, entries: &[Vec<u8>], acks: &[(u16, u64)]) {
        let db = v1::open(path).unwrap();
        let cf = |name| db.cf_handle(name).unwrap();
        let mut batch = rocksdb::WriteBatch::default();
        for (i, value) in entries.iter().enumerate() {
            batch.put_cf(cf(v1::CF_LOG), (first + i as u64).to_be_bytes(), value);
        }
        for (pkid, hash) in acks {
            batch.put_cf(cf(v1::CF_ACKS), pkid.to_be_bytes(), seal(&hash.to_le_bytes()));
        }
        let next = first + entries.len() as u64;
        batch.put_cf(cf(v1::CF_META), v1::NEXT_KEY, seal(&next.to_le_bytes()));
        db.write(batch).unwrap();
        db.cancel_all_background_work(true);
    }

    #[test]
    fn a_version_1_log_is_migrated_with_its_numbering_and_packet_ids() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let entries: Vec<Vec<u8>> = (5..12).map(entry).collect();
        write_v1(&path, 5, &entries, &[(7, 70), (9, 90)]);
        assert!(path.join("CURRENT").exists());
        let log = IngestLog::open(&path, "s").unwrap();
        assert_eq!((log.first(), log.next()), (5, 12));
        assert_eq!(numbers(&log, 0), (5..12).collect::<Vec<_>>());
        assert_eq!(log.read(6, 1).unwrap()[0].1, decode_entry(&entry(6)).unwrap());
        let handed = log.handed().unwrap();
        assert_eq!((handed.len(), handed[&7], handed[&9]), (2, 70, 90));
        assert_eq!(segments(&path), vec![format!("{:020}.seg", 5)], "the RocksDB is gone");
        assert_eq!(log.append(&[entry(12)], &[], None).unwrap(), 12);
        drop(log);
        let log = IngestLog::open(&path, "s").unwrap();
        assert_eq!(numbers(&log, 0), (5..13).collect::<Vec<_>>());
        // an empty version-1 log keeps its numbering
        let empty = dir.path().join("empty");
        write_v1(&empty, 30, &[], &[]);
        let log = IngestLog::open(&empty, "s").unwrap();
        assert_eq!((log.first(), log.next()), (30, 30));
    }

    /// The stored format cannot change by accident: a segment written by this format is kept in
    /// `tests/fixtures/ingest-log/` (written again with `PLUME_UPDATE_FIXTURES=1`) and must
    /// still read as the entries, packet ids and trim point it was written with.
    #[test]
    fn the_stored_format_fixture_still_reads() {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ingest-log");
        if std::env::var_os("PLUME_UPDATE_FIXTURES").is_some() {
            let _ = std::fs::remove_dir_all(&fixture);
            let log = IngestLog::open_with_segments_of(&fixture, "mqtt:aq1/{device}", 1024).unwrap();
            log.append(&[entry(0), entry(1)], &[(7, 70)], None).unwrap();
            log.append(&[entry(2)], &[(8, 80)], Some(1)).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        for name in segments(&fixture) {
            std::fs::copy(fixture.join(&name), dir.path().join(&name)).unwrap();
        }
        let log = IngestLog::open(dir.path(), "mqtt:aq1/{device}").unwrap();
        assert_eq!((log.first(), log.next()), (1, 3));
        let read = log.read(0, 10).unwrap();
        assert_eq!(read.len(), 2);
        assert_eq!((read[0].0, &read[0].1), (1, &decode_entry(&entry(1)).unwrap()));
        assert_eq!((read[1].0, &read[1].1), (2, &decode_entry(&entry(2)).unwrap()));
        let handed = log.handed().unwrap();
        assert_eq!((handed.len(), handed[&7], handed[&8]), (2, 70, 80));
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
