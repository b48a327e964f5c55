//! The state store: RocksDB under the pipeline's data directory, and its retained checkpoints.
//!
//! # Layout
//! - this file: [`StateStore`] (open with recovery, device reads, one atomic write per
//!   checkpoint), the [`CheckpointRecord`], keys and the value envelope.
//! - `retained`: retained checkpoints (RocksDB checkpoints, hard-linked, with a manifest):
//!   create, list, verify, prune, and make one the live state again.
//! - `export`: one portable file per checkpoint (export / import).
//!
//! On disk, under the data directory (default `checkpoints/<pipeline>/`):
//! ```text
//! live/                  RocksDB: column families devices, positions, outbox, meta
//! retained/<id>/         a RocksDB checkpoint of live/ right after checkpoint <id>, and
//! retained/<id>/plume-manifest.json
//! ingest/<hash>/         a durable MQTT source's ingest log (`sources::ingest`), outside
//!                        the checkpoints, which record positions in it
//! ```
//! Device state, positions and the checkpoint record in `live/` only ever change by one synced
//! write batch per checkpoint, so they always hold exactly the last complete checkpoint. The
//! `outbox` column family (the notifiers' outboxes and push subscriptions) is written through,
//! one synced write per change, between checkpoints: see `notify::outbox`. Values are enveloped: a magic byte, the format
//! version and an xxh3 checksum of the payload. Device keys are the key group (2 bytes, big
//! endian) followed by the device id, so all devices of a key group (and of a shard's
//! contiguous range of key groups) are one range scan: they can be read, moved or dropped
//! together.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBatch, WriteOptions};
use serde::{Deserialize, Serialize};
use tracing::{info, instrument, warn};

pub mod durable;
pub mod export;
pub mod partitions;
pub mod retained;
pub mod tables;

/// The stored format version (envelopes, keys, records). Bump it and add a migration when any
/// of them changes; the fixture test in `tests/checkpoints.rs` catches accidental changes.
pub const FORMAT_VERSION: u16 = 1;

pub const CF_DEVICES: &str = "devices";
pub const CF_POSITIONS: &str = "positions";
/// The notifiers' outboxes and push subscriptions (written through, see `notify::outbox`).
pub const CF_OUTBOX: &str = "outbox";
pub const CF_META: &str = "meta";
pub const COLUMN_FAMILIES: [&str; 4] = [CF_DEVICES, CF_POSITIONS, CF_OUTBOX, CF_META];
const CHECKPOINT_KEY: &[u8] = b"checkpoint";
/// In `meta`: present when every stored device's deadline is in the deadline index (a store
/// created by a plume that keeps the index; not one from before it, nor one a partition was
/// imported into since).
const DEADLINE_INDEX_KEY: &[u8] = b"deadline-index";
/// In `meta`: `deadline/ ++ device key` → when the device's operators next act on time (i64
/// little endian, sealed). Written in the checkpoint's batch with the device's state.
const DEADLINE_PREFIX: &[u8] = b"deadline/";

pub(crate) fn deadline_key(device_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(DEADLINE_PREFIX.len() + device_key.len());
    k.extend_from_slice(DEADLINE_PREFIX);
    k.extend_from_slice(device_key);
    k
}
const MAGIC: u8 = b'P';
const HEADER: usize = 1 + 2 + 8;

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store {path}: {error}")]
    Rocks { path: String, error: rocksdb::Error },
    #[error("state store {path}: {operation}: {error}")]
    Io {
        path: String,
        operation: String,
        error: std::io::Error,
    },
    #[error("{what}: {problem}")]
    Corrupt { what: String, problem: String },
    #[error(
        "{dir} holds the state of pipeline `{stored_name}` (hash {stored}), but this is `{name}` (hash {current}): its operators or decode settings changed. Run with --allow-pipeline-change to keep the state of the operators that still exist, or use another --data-dir"
    )]
    PipelineChanged {
        dir: String,
        stored_name: String,
        stored: String,
        name: String,
        current: String,
    },
    #[error("{0}")]
    Refused(String),
}

impl StoreError {
    fn rocks(path: &Path, error: rocksdb::Error) -> Self {
        StoreError::Rocks {
            path: path.display().to_string(),
            error,
        }
    }

    /// The database is locked by another process (a running plume).
    pub fn is_lock(&self) -> bool {
        matches!(self, StoreError::Rocks { error, .. } if error.to_string().to_lowercase().contains("lock"))
    }

    pub fn io(path: &Path, operation: impl Into<String>, error: std::io::Error) -> Self {
        StoreError::Io {
            path: path.display().to_string(),
            operation: operation.into(),
            error,
        }
    }
}

/// Wraps a payload: magic, format version, xxh3 of the payload, payload.
pub fn seal(payload: &[u8]) -> Vec<u8> {
    seal_written(payload.len(), |v| v.extend_from_slice(payload))
}

/// [`seal`] of the payload that `write` appends, written straight into the envelope (one
/// allocation, for a value made per message: the MQTT ingest log's entries). `capacity`: the
/// payload's expected length.
pub fn seal_written(capacity: usize, write: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER + capacity);
    v.push(MAGIC);
    v.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    v.extend_from_slice(&[0; 8]);
    write(&mut v);
    let hash = xxhash_rust::xxh3::xxh3_64(&v[HEADER..]);
    v[HEADER - 8..HEADER].copy_from_slice(&hash.to_le_bytes());
    v
}

/// Checks an envelope and returns its payload.
pub fn unseal(bytes: &[u8]) -> Result<&[u8], String> {
    if bytes.len() < HEADER {
        return Err(format!(
            "{} bytes is shorter than the {HEADER}-byte envelope",
            bytes.len()
        ));
    }
    if bytes[0] != MAGIC {
        return Err(format!("not a plume value (first byte {:#04x})", bytes[0]));
    }
    let version = u16::from_le_bytes([bytes[1], bytes[2]]);
    if version != FORMAT_VERSION {
        return Err(format!(
            "stored format version {version}, this plume reads version {FORMAT_VERSION}"
        ));
    }
    let sum = u64::from_le_bytes(bytes[3..11].try_into().expect("8 bytes"));
    let payload = &bytes[HEADER..];
    let actual = xxhash_rust::xxh3::xxh3_64(payload);
    if sum != actual {
        return Err(format!("checksum mismatch (stored {sum:016x}, computed {actual:016x})"));
    }
    Ok(payload)
}

/// `key group (u16 big endian) ++ device id`.
pub fn device_key(key_group: u32, device: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + device.len());
    k.extend_from_slice(&(key_group as u16).to_be_bytes());
    k.extend_from_slice(device.as_bytes());
    k
}

/// The key group and device id of a device key.
pub fn parse_device_key(key: &[u8]) -> Option<(u32, String)> {
    if key.len() < 2 {
        return None;
    }
    let kg = u16::from_be_bytes([key[0], key[1]]) as u32;
    Some((kg, String::from_utf8_lossy(&key[2..]).into_owned()))
}

pub fn bincode_encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, bincode::config::standard()).expect("encoding to a Vec cannot fail")
}

pub fn bincode_decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    crate::model::codec::bincode_decode(bytes)
        .map(|(v, _)| v)
        .map_err(|e| e.to_string())
}

/// How far a source had read when a checkpoint was taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredPosition {
    pub source: usize,
    /// `file:PATH`, `stdin`, `simulator`, …
    pub name: String,
    /// Source-specific (files: byte offset of the next line).
    pub offset: u64,
    /// Files: the 1-based number of the next line.
    pub line: u64,
    /// Files: xxh3 of the first 64 KiB, so a different file under the same name is noticed.
    pub fingerprint: u64,
}

/// A sink's length at a checkpoint (files: bytes; the file is cut back to it on recovery).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSink {
    pub name: String,
    pub length: u64,
}

/// What a checkpoint is: written in the same batch as the device states it describes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    pub id: u64,
    pub pipeline: String,
    pub pipeline_hash: String,
    pub created_ms: i64,
    pub sources: Vec<StoredPosition>,
    pub sinks: Vec<StoredSink>,
    /// Dead letters reported up to this checkpoint.
    pub dead_letters: u64,
    /// Devices in the store after this checkpoint.
    pub devices: u64,
    pub key_groups: u32,
    /// The devices written by this checkpoint (the dirty ones).
    pub devices_written: u64,
}

impl CheckpointRecord {
    pub fn encode(&self) -> Vec<u8> {
        seal(&bincode_encode(self))
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let record: CheckpointRecord = bincode_decode(unseal(bytes)?)?;
        record.check()?;
        Ok(record)
    }

    /// What a record read from disk (or an export file) must hold for plume to use it.
    pub fn check(&self) -> Result<(), String> {
        if self.key_groups == 0 {
            return Err("the record says 0 key groups (at least 1): it is damaged or forged".into());
        }
        Ok(())
    }
}

/// Which pipeline a store belongs to: the name, and a hash of what shapes the state (decode
/// settings, operators, key groups), so formatting, sources and sinks may change freely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineIdentity {
    pub name: String,
    pub hash: String,
    pub key_groups: u32,
}

impl PipelineIdentity {
    pub fn of(spec: &crate::spec::PipelineSpec) -> Self {
        let json = serde_json::to_vec(&(&spec.decode, &spec.operators, spec.runtime.key_groups))
            .expect("specs serialize to JSON");
        PipelineIdentity {
            name: spec.pipeline.clone(),
            hash: format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&json)),
            key_groups: spec.runtime.key_groups,
        }
    }
}

/// An encoded device snapshot, shared between a shard's passive copy and the checkpoint that
/// writes it (a million passive devices' states are not copied for the final checkpoint).
pub type SnapshotBytes = Arc<Vec<u8>>;

/// One device a checkpoint writes.
pub struct DeviceWrite {
    pub key: Vec<u8>,
    /// Its encoded `DeviceSnapshot` (shared with the shard's passive copy, not copied).
    pub snapshot: SnapshotBytes,
    /// When its operators next act on time: its entry in the deadline index (none: removed).
    pub deadline: Option<i64>,
}

/// What one checkpoint writes.
pub struct CheckpointWrite {
    pub record: CheckpointRecord,
    /// Every device changed since the last one.
    pub devices: Vec<DeviceWrite>,
}

/// The live state of one data directory.
pub struct StateStore {
    dir: PathBuf,
    db: DB,
    /// Per SST file name: (size, xxh3), so retained manifests hash each immutable file once.
    file_sums: std::sync::Mutex<std::collections::HashMap<String, (u64, u64)>>,
    /// Every stored device's deadline is in the index ([`DEADLINE_INDEX_KEY`]).
    deadline_index: std::sync::atomic::AtomicBool,
    /// A device's deadline may be stored: false while none is (a fresh store, or one whose
    /// pipeline has no deadlines, like aq1's), when a commit need not delete the deadline of
    /// each device that has none (10,000 deletes in a 10,000-device checkpoint).
    deadlines_stored: std::sync::atomic::AtomicBool,
    /// The device keys each commit wrote, gathered for a Kafka source's changelog (none until
    /// [`StateStore::track_changes`]): what changed since the changelog last took them.
    changed: std::sync::Mutex<Option<rustc_hash::FxHashSet<Vec<u8>>>>,
}

/// How a store was opened.
pub struct Opened {
    pub store: Arc<StateStore>,
    /// The checkpoint to resume from (none: a fresh directory).
    pub resume: Option<CheckpointRecord>,
    /// What recovery had to do (a corrupt live state replaced by a retained checkpoint, …).
    pub notes: Vec<String>,
}

pub fn db_options() -> Options {
    let mut o = Options::default();
    o.create_if_missing(true);
    o.create_missing_column_families(true);
    o.set_compression_type(rocksdb::DBCompressionType::None);
    o.set_paranoid_checks(true);
    o.set_max_open_files(256);
    o.set_keep_log_file_num(2);
    // most device lookups on activation are for devices the store has never seen
    let mut table = rocksdb::BlockBasedOptions::default();
    table.set_bloom_filter(10.0, false);
    o.set_block_based_table_factory(&table);
    o
}

fn cf_descriptors() -> Vec<ColumnFamilyDescriptor> {
    COLUMN_FAMILIES
        .iter()
        .map(|n| ColumnFamilyDescriptor::new(*n, db_options()))
        .collect()
}

/// Opens (creating it if needed) the RocksDB at `path` with plume's column families.
pub fn open_db(path: &Path) -> Result<DB, StoreError> {
    DB::open_cf_descriptors(&db_options(), path, cf_descriptors()).map_err(|e| StoreError::rocks(path, e))
}

/// Opens a RocksDB read-only (a retained checkpoint, or live/ for the CLI). A run that holds
/// the database may delete a file (an old write-ahead log) between the moment the read-only
/// open lists the directory and the moment it reads the file: RocksDB then reports the file
/// missing ("No such file or directory"), and the open is tried again (up to 10 times, 20 ms
/// apart); any other error is returned at once. Seen in
/// `tests/cluster.rs`: `plume subscribers list` on a running member's directory failed with
/// "No such file or directory: while stat a file for size: …/000022.log".
pub fn open_db_read_only(path: &Path) -> Result<DB, StoreError> {
    const ATTEMPTS: u32 = 10;
    let mut attempt = 1;
    loop {
        match DB::open_cf_for_read_only(&db_options(), path, COLUMN_FAMILIES, false) {
            Ok(db) => return Ok(db),
            Err(e) if attempt < ATTEMPTS && a_file_went_away(&e) => {
                attempt += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return Err(StoreError::rocks(path, e)),
        }
    }
}

/// Whether RocksDB's error is a file it had listed that is gone (its writer deleted it).
fn a_file_went_away(e: &rocksdb::Error) -> bool {
    e.as_ref().contains("No such file or directory")
}

/// The checkpoint record of a database, if it has one.
/// Whether the store holds any device's deadline.
fn any_deadline_stored(db: &DB) -> bool {
    let meta = db.cf_handle(CF_META).expect("opened with every column family");
    match db
        .iterator_cf(meta, IteratorMode::From(DEADLINE_PREFIX, Direction::Forward))
        .next()
    {
        Some(Ok((key, _))) => key.starts_with(DEADLINE_PREFIX),
        Some(Err(_)) => true,
        None => false,
    }
}

fn has_deadline_index(db: &DB) -> bool {
    let meta = db.cf_handle(CF_META).expect("opened with every column family");
    matches!(db.get_cf(meta, DEADLINE_INDEX_KEY), Ok(Some(_)))
}

pub fn read_record(db: &DB, path: &Path) -> Result<Option<CheckpointRecord>, StoreError> {
    let meta = db.cf_handle(CF_META).expect("opened with every column family");
    match db
        .get_cf(meta, CHECKPOINT_KEY)
        .map_err(|e| StoreError::rocks(path, e))?
    {
        None => Ok(None),
        Some(bytes) => CheckpointRecord::decode(&bytes)
            .map(Some)
            .map_err(|problem| StoreError::Corrupt {
                what: format!("checkpoint record in {}", path.display()),
                problem,
            }),
    }
}

impl StateStore {
    pub fn live_dir(dir: &Path) -> PathBuf {
        dir.join("live")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The raw database, for this module's own parts (retained checkpoints, export): everyone
    /// else changes the store through the checkpoint batch or a table of [`tables`].
    fn db(&self) -> &DB {
        &self.db
    }

    /// The record of the checkpoint the live state is at (`None`: none committed yet).
    pub fn checkpoint_record(&self) -> Result<Option<CheckpointRecord>, StoreError> {
        read_record(&self.db, &Self::live_dir(&self.dir))
    }

    /// The `outbox` column family (notifier outboxes and push subscriptions).
    pub fn outbox_table(&self) -> tables::OutboxTable<'_> {
        tables::OutboxTable::new(&self.db)
    }

    /// Opens the data directory `dir` for a run of `pipeline`: the live state if it is sound,
    /// otherwise the newest retained checkpoint that verifies (reported in `notes`).
    #[instrument(skip_all, fields(dir = %dir.display(), pipeline = %pipeline.name))]
    pub fn open(dir: &Path, pipeline: &PipelineIdentity, allow_pipeline_change: bool) -> Result<Opened, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, "creating the data directory", e))?;
        retained::clean_partial(dir);
        let live = Self::live_dir(dir);
        let mut notes = Vec::new();
        let mut opened = None;
        if live.exists() {
            match open_db(&live) {
                Ok(db) => match read_record(&db, &live) {
                    Ok(record) => opened = Some((db, record)),
                    Err(e) => {
                        notes.push(format!("the live state is damaged ({e})"));
                        drop(db);
                    }
                },
                Err(e @ StoreError::Rocks { .. }) if e.to_string().contains("lock") => {
                    return Err(StoreError::Refused(format!(
                        "{} is in use by another plume process ({e})",
                        dir.display()
                    )));
                }
                Err(e) => notes.push(format!("the live state does not open ({e})")),
            }
        }
        if opened.is_none() && (live.exists() || !retained::list(dir)?.is_empty()) {
            // fall back to the newest retained checkpoint that verifies
            let mut restored = false;
            for manifest in retained::list(dir)?.into_iter().rev() {
                let id = manifest.record.id;
                match retained::verify(dir, id) {
                    Ok(_) => {
                        notes.push(format!("resuming from retained checkpoint {id} instead"));
                        retained::make_live(dir, id)?;
                        restored = true;
                        break;
                    }
                    Err(e) => notes.push(format!("retained checkpoint {id} is not usable: {e}")),
                }
            }
            if !restored && live.exists() {
                return Err(StoreError::Corrupt {
                    what: dir.display().to_string(),
                    problem: format!("no usable state: {}", notes.join("; ")),
                });
            }
            let db = open_db(&live)?;
            let record = read_record(&db, &live)?;
            opened = Some((db, record));
        }
        let (db, record) = match opened {
            Some(x) => x,
            None => (open_db(&live)?, None),
        };
        for n in &notes {
            warn!(dir = %dir.display(), "{n}");
        }
        if let Some(r) = &record {
            if r.pipeline_hash != pipeline.hash || r.pipeline != pipeline.name {
                if !allow_pipeline_change {
                    return Err(StoreError::PipelineChanged {
                        dir: dir.display().to_string(),
                        stored_name: r.pipeline.clone(),
                        stored: r.pipeline_hash.clone(),
                        name: pipeline.name.clone(),
                        current: pipeline.hash.clone(),
                    });
                }
                notes.push(format!(
                    "the pipeline changed (hash {} -> {}): keeping the state of operators that still exist",
                    r.pipeline_hash, pipeline.hash
                ));
            }
            if r.key_groups != pipeline.key_groups {
                return Err(StoreError::Refused(format!(
                    "{} was written with {} key groups, the pipeline now has {}: key groups cannot change",
                    dir.display(),
                    r.key_groups,
                    pipeline.key_groups
                )));
            }
            info!(checkpoint = r.id, devices = r.devices, "resuming from checkpoint");
        }
        // a store without a checkpoint holds no device: its index is complete from the start
        let deadline_index = record.is_none() || has_deadline_index(&db);
        let deadlines_stored = any_deadline_stored(&db);
        Ok(Opened {
            store: Arc::new(StateStore {
                dir: dir.to_path_buf(),
                db,
                file_sums: Default::default(),
                deadline_index: deadline_index.into(),
                deadlines_stored: deadlines_stored.into(),
                changed: Default::default(),
            }),
            resume: record,
            notes,
        })
    }

    /// Opens (creating it if needed) the live state of `dir` without a pipeline, for tools such
    /// as `plume subscribers`: [`StoreError::Refused`] while a run holds the directory.
    pub fn open_tool(dir: &Path) -> Result<Arc<StateStore>, StoreError> {
        let live = Self::live_dir(dir);
        std::fs::create_dir_all(&live).map_err(|e| StoreError::io(dir, "creating the data directory", e))?;
        match open_db(&live) {
            Ok(db) => Ok(Arc::new(StateStore {
                dir: dir.to_path_buf(),
                deadline_index: has_deadline_index(&db).into(),
                deadlines_stored: any_deadline_stored(&db).into(),
                changed: Default::default(),
                db,
                file_sums: Default::default(),
            })),
            Err(e) if e.is_lock() => Err(StoreError::Refused(format!(
                "{} is in use by a running plume ({e})",
                dir.display()
            ))),
            Err(e) => Err(e),
        }
    }

    /// Opens the live state of `dir` read-only: works while a run holds the directory, and
    /// sees what was durable when it opened.
    pub fn open_read_only(dir: &Path) -> Result<Arc<StateStore>, StoreError> {
        let live = Self::live_dir(dir);
        let db = open_db_read_only(&live)?;
        Ok(Arc::new(StateStore {
            dir: dir.to_path_buf(),
            deadline_index: has_deadline_index(&db).into(),
            deadlines_stored: any_deadline_stored(&db).into(),
            changed: Default::default(),
            db,
            file_sums: Default::default(),
        }))
    }

    /// Closes the database once every other holder has let go (RocksDB must be closed before
    /// the process exits, or its background threads may touch freed locks).
    pub fn close(store: Arc<StateStore>) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut store = store;
        loop {
            match Arc::try_unwrap(store) {
                Ok(s) => {
                    s.db.cancel_all_background_work(true);
                    drop(s);
                    return;
                }
                Err(shared) if std::time::Instant::now() < deadline => {
                    store = shared;
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(shared) => {
                    warn!("the state store is still in use at exit: stopping its background work");
                    shared.db.cancel_all_background_work(true);
                    std::mem::forget(shared);
                    return;
                }
            }
        }
    }

    /// The stored snapshot of one device (envelope checked), if any.
    pub fn load_device(&self, key_group: u32, device: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let cf = self.db.cf_handle(CF_DEVICES).expect("column family");
        let key = device_key(key_group, device);
        match self
            .db
            .get_pinned_cf(cf, &key)
            .map_err(|e| StoreError::rocks(&self.dir, e))?
        {
            None => Ok(None),
            Some(v) => unseal(&v)
                .map(|p| Some(p.to_vec()))
                .map_err(|problem| StoreError::Corrupt {
                    what: format!("stored state of device {device}"),
                    problem,
                }),
        }
    }

    /// A device's state from the newest retained checkpoint that holds a sound copy of it
    /// (for a device whose live value is damaged): `(checkpoint id, state)`. Each checkpoint is
    /// opened read-only for the lookup; a damaged one is skipped.
    pub fn load_device_from_retained(&self, key_group: u32, device: &str) -> Option<(u64, Vec<u8>)> {
        let key = device_key(key_group, device);
        let ids = retained::ids(&self.dir).ok()?;
        for id in ids.into_iter().rev() {
            let path = retained::checkpoint_dir(&self.dir, id);
            let Ok(db) = open_db_read_only(&path) else {
                continue;
            };
            let cf = db.cf_handle(CF_DEVICES).expect("column family");
            if let Ok(Some(v)) = db.get_pinned_cf(cf, &key)
                && let Ok(state) = unseal(&v)
            {
                return Some((id, state.to_vec()));
            }
        }
        None
    }

    /// Every stored device of the key groups `from..to`, in key order.
    /// (An outer error: the store could not be read on; an inner one: this device's value is
    /// damaged.)
    #[allow(clippy::type_complexity)]
    pub fn devices_in(
        &self,
        from: u32,
        to: u32,
    ) -> impl Iterator<Item = Result<(String, Result<Vec<u8>, StoreError>), StoreError>> + '_ {
        let cf = self.db.cf_handle(CF_DEVICES).expect("column family");
        let start = (from as u16).to_be_bytes();
        self.db
            .iterator_cf(cf, IteratorMode::From(&start, Direction::Forward))
            .map(|item| item.map_err(|e| StoreError::rocks(&self.dir, e)))
            .take_while(move |item| match item {
                Ok((k, _)) => parse_device_key(k).is_some_and(|(kg, _)| kg < to),
                Err(_) => true,
            })
            .map(|item| {
                let (k, v) = item?;
                let (_, device) = parse_device_key(&k).expect("checked above");
                let payload = unseal(&v).map(<[u8]>::to_vec).map_err(|problem| StoreError::Corrupt {
                    what: format!("stored state of device {device}"),
                    problem,
                });
                Ok((device, payload))
            })
    }

    /// Whether every stored device's deadline is in the deadline index ([`Self::deadlines_in`]);
    /// otherwise the devices' deadlines are found by decoding every stored state.
    pub fn has_deadline_index(&self) -> bool {
        self.deadline_index.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The index is incomplete from now on (devices were imported without their deadlines): a
    /// later start decodes every stored state again.
    pub fn lose_deadline_index(&self) -> Result<(), StoreError> {
        self.deadline_index.store(false, std::sync::atomic::Ordering::Relaxed);
        let meta = self.db.cf_handle(CF_META).expect("column family");
        self.db
            .delete_cf(meta, DEADLINE_INDEX_KEY)
            .map_err(|e| StoreError::rocks(&self.dir, e))
    }

    /// The deadline index of the devices of key groups `from..to`: `(device, deadline)`.
    pub fn deadlines_in(&self, from: u32, to: u32) -> impl Iterator<Item = Result<(String, i64), StoreError>> + '_ {
        let meta = self.db.cf_handle(CF_META).expect("column family");
        let start = deadline_key(&(from as u16).to_be_bytes());
        self.db
            .iterator_cf(meta, IteratorMode::From(&start, Direction::Forward))
            .map(|item| item.map_err(|e| StoreError::rocks(&self.dir, e)))
            .take_while(move |item| match item {
                Ok((k, _)) => {
                    k.starts_with(DEADLINE_PREFIX)
                        && parse_device_key(&k[DEADLINE_PREFIX.len()..]).is_some_and(|(kg, _)| kg < to)
                }
                Err(_) => true,
            })
            .map(|item| {
                let (k, v) = item?;
                let (_, device) = parse_device_key(&k[DEADLINE_PREFIX.len()..]).expect("checked above");
                let at = unseal(&v)
                    .ok()
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(i64::from_le_bytes)
                    .ok_or_else(|| StoreError::Corrupt {
                        what: format!("deadline of device {device}"),
                        problem: "not 8 sealed bytes".into(),
                    })?;
                Ok((device, at))
            })
    }

    /// Writes one checkpoint: every changed device, the source positions and the record, in
    /// one synced batch. Blocking: call it from the checkpoint writer thread only.
    #[instrument(skip_all, fields(checkpoint = write.record.id, devices = write.devices.len()))]
    pub fn commit(&self, write: CheckpointWrite) -> Result<(), StoreError> {
        let devices = self.db.cf_handle(CF_DEVICES).expect("column family");
        let positions = self.db.cf_handle(CF_POSITIONS).expect("column family");
        let meta = self.db.cf_handle(CF_META).expect("column family");
        let mut batch = WriteBatch::default();
        // each state is dropped as soon as the batch has its copy: the batch, not both, at the peak
        if let Some(changed) = self.changed.lock().expect("changed devices lock").as_mut() {
            changed.extend(write.devices.iter().map(|d| d.key.clone()));
        }
        // (set before the write: a deadline written, or maybe written, must be deleted later)
        let mut deadlines_stored = self.deadlines_stored.load(std::sync::atomic::Ordering::Relaxed);
        // in key order: RocksDB's memtable inserts a key after the one before it without a search
        // from the top (the final checkpoint of 10,000 devices: its commit 17.2–22.5 ms in shards'
        // order, 12.8–18.6 ms sorted; BENCHMARKS.md, issue 18). (Stable: of two writes of one
        // key, the later still wins.)
        let mut written = write.devices;
        written.sort_by(|a, b| a.key.cmp(&b.key));
        for device in written {
            match device.deadline {
                Some(at) => {
                    if !deadlines_stored {
                        deadlines_stored = true;
                        self.deadlines_stored.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    batch.put_cf(meta, deadline_key(&device.key), seal(&at.to_le_bytes()))
                }
                None if deadlines_stored => batch.delete_cf(meta, deadline_key(&device.key)),
                // no deadline stored anywhere (not even earlier in this batch): none to delete
                None => {}
            }
            batch.put_cf(devices, device.key, seal(&device.snapshot));
        }
        for p in &write.record.sources {
            batch.put_cf(positions, p.name.as_bytes(), seal(&bincode_encode(p)));
        }
        if self.has_deadline_index() {
            batch.put_cf(meta, DEADLINE_INDEX_KEY, seal(&[]));
        }
        batch.put_cf(meta, CHECKPOINT_KEY, write.record.encode());
        let mut options = WriteOptions::default();
        options.set_sync(true);
        self.db
            .write_opt(batch, &options)
            .map_err(|e| StoreError::rocks(&self.dir, e))
    }

    /// From now on, gathers the device keys every commit writes (for [`StateStore::take_changed`]).
    pub fn track_changes(&self) {
        let mut changed = self.changed.lock().expect("changed devices lock");
        if changed.is_none() {
            *changed = Some(Default::default());
        }
    }

    /// The devices (key group, id) committed since the last call (or since
    /// [`StateStore::track_changes`]).
    pub fn take_changed(&self) -> Vec<(u32, String)> {
        let mut changed = self.changed.lock().expect("changed devices lock");
        match changed.as_mut() {
            Some(set) => set.drain().filter_map(|k| parse_device_key(&k)).collect(),
            None => Vec::new(),
        }
    }

    /// Keeps the state right after checkpoint `record` as a retained checkpoint, and drops all
    /// but the newest `keep`.
    pub fn retain(&self, record: &CheckpointRecord, keep: u32) -> Result<(), StoreError> {
        retained::create(self, record, &self.file_sums)?;
        retained::prune(&self.dir, keep.max(1) as usize)?;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Commits checkpoint `id` of pipeline `p` (one key group) with `devices`: (id, deadline),
    /// each with a state of a few bytes.
    pub(crate) fn commit(store: &StateStore, id: u64, devices: &[(&str, Option<i64>)]) {
        let writes = devices
            .iter()
            .map(|(id, deadline)| DeviceWrite {
                key: device_key(0, id),
                snapshot: Arc::new(b"state".to_vec()),
                deadline: *deadline,
            })
            .collect();
        commit_writes(store, id, devices.len() as u64, writes);
    }

    /// Commits checkpoint `id` of pipeline `p` (one key group, `devices` in all) with `writes`.
    fn commit_writes(store: &StateStore, id: u64, devices: u64, writes: Vec<DeviceWrite>) {
        store
            .commit(CheckpointWrite {
                record: CheckpointRecord {
                    id,
                    pipeline: "p".into(),
                    pipeline_hash: "h".into(),
                    created_ms: 0,
                    sources: vec![],
                    sinks: vec![],
                    dead_letters: 0,
                    devices,
                    key_groups: 1,
                    devices_written: devices,
                },
                devices: writes,
            })
            .unwrap();
    }

    fn deadlines(store: &StateStore) -> Vec<(String, i64)> {
        store.deadlines_in(0, 1).map(Result::unwrap).collect()
    }

    /// Deletes in the memtable: what a commit wrote as deletes since the store was opened.
    fn deletes(store: &StateStore) -> u64 {
        let meta = store.db.cf_handle(CF_META).expect("column family");
        store
            .db
            .property_int_value_cf(meta, "rocksdb.num-deletes-active-mem-table")
            .unwrap()
            .unwrap()
    }

    /// A commit writes its devices in key order, whatever order the shards gave them in, and of
    /// two writes of one device the later one is what is stored.
    #[test]
    fn a_commit_stores_every_device_and_the_later_of_two_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open_tool(dir.path()).unwrap();
        let write = |id: &str, state: &str| DeviceWrite {
            key: device_key(0, id),
            snapshot: Arc::new(state.as_bytes().to_vec()),
            deadline: None,
        };
        let mut devices: Vec<DeviceWrite> = (0..500).rev().map(|i| write(&format!("dev-{i:03}"), "first")).collect();
        devices.push(write("dev-250", "second"));
        devices.insert(0, write("dev-400", "earlier"));
        // (500 devices, two of them written twice)
        commit_writes(&store, 1, 500, devices);
        let stored: Vec<(String, String)> = store
            .devices_in(0, 1)
            .map(|item| {
                let (device, state) = item.unwrap();
                (device, String::from_utf8(state.unwrap()).unwrap())
            })
            .collect();
        assert_eq!(stored.len(), 500);
        for (i, (device, state)) in stored.iter().enumerate() {
            assert_eq!(device, &format!("dev-{i:03}"));
            // `dev-400`'s first write ("earlier") is overwritten by its later one
            let expected = if i == 250 { "second" } else { "first" };
            assert_eq!(state, expected, "{device}");
        }
        StateStore::close(store);
    }

    /// A commit deletes the deadline of a device without one only once a deadline may be stored:
    /// never in a store that holds none (no delete written at all), always after one was
    /// written, in the same commit or an earlier one, or found when the store was opened.
    #[test]
    fn deadlines_are_deleted_once_one_may_be_stored() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = StateStore::open_tool(dir.path()).unwrap();
            commit(&store, 1, &[("a", None), ("b", None)]);
            assert_eq!(deletes(&store), 0, "no deadline stored: nothing to delete");
            // in one commit (written in key order): `c`'s deadline comes after `a`'s none
            // (nothing to delete yet), and `d`'s none after it
            commit(&store, 2, &[("d", None), ("c", Some(5)), ("a", None)]);
            assert_eq!(deletes(&store), 1);
            assert_eq!(deadlines(&store), [("c".to_string(), 5)]);
            commit(&store, 3, &[("c", None)]);
            assert_eq!(deletes(&store), 2);
            assert!(deadlines(&store).is_empty());
            commit(&store, 4, &[("a", Some(9))]);
            assert_eq!(deadlines(&store), [("a".to_string(), 9)]);
            StateStore::close(store);
        }
        // opened again: a stored deadline is found, and is deleted when its device has none
        let store = StateStore::open_tool(dir.path()).unwrap();
        let before = deletes(&store);
        commit(&store, 5, &[("a", None)]);
        assert_eq!(deletes(&store), before + 1);
        assert!(deadlines(&store).is_empty());
        StateStore::close(store);
    }
}
