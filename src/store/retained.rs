//! Retained checkpoints: after each checkpoint, a RocksDB checkpoint of `live/` (SST files
//! hard-linked, so cheap) in `retained/<id>/`, with `plume-manifest.json` describing it: id,
//! pipeline name and hash, time, source positions, sink lengths, device count, every file with
//! its size and xxh3, and a checksum of the manifest itself. A checkpoint directory only gets
//! its final name once complete, so a crash mid-way leaves a `.partial` directory that the next
//! start removes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use super::{
    CF_DEVICES, COLUMN_FAMILIES, CheckpointRecord, FORMAT_VERSION, StateStore, StoreError, open_db_read_only,
    read_record, unseal,
};

pub const MANIFEST: &str = "plume-manifest.json";

/// One file of a retained checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    pub name: String,
    pub size: u64,
    pub xxh3: String,
}

/// The description of a retained checkpoint (`plume-manifest.json`): its checkpoint record,
/// readable, and its files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u16,
    #[serde(flatten)]
    pub record: CheckpointRecord,
    /// `created_ms` as a readable time.
    pub created: String,
    pub files: Vec<ManifestFile>,
    /// xxh3 of this manifest written with an empty checksum.
    pub checksum: String,
}

impl Manifest {
    fn compute_checksum(&self) -> String {
        let mut copy = self.clone();
        copy.checksum = String::new();
        let json = serde_json::to_vec(&copy).expect("manifests serialize");
        format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&json))
    }

    /// Reads and checks the manifest of checkpoint `id`.
    pub fn read(dir: &Path, id: u64) -> Result<Manifest, String> {
        let path = checkpoint_dir(dir, id).join(MANIFEST);
        let text = std::fs::read(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        let manifest: Manifest =
            serde_json::from_slice(&text).map_err(|e| format!("{} is not a manifest: {e}", path.display()))?;
        if manifest.format_version > FORMAT_VERSION {
            return Err(format!(
                "written by a newer plume (format version {}, this one reads {FORMAT_VERSION})",
                manifest.format_version
            ));
        }
        let sum = manifest.compute_checksum();
        if sum != manifest.checksum {
            return Err(format!(
                "the manifest's checksum does not match (stored {}, computed {sum})",
                manifest.checksum
            ));
        }
        Ok(manifest)
    }
}

pub fn retained_root(dir: &Path) -> PathBuf {
    dir.join("retained")
}

pub fn checkpoint_dir(dir: &Path, id: u64) -> PathBuf {
    retained_root(dir).join(format!("{id:020}"))
}

/// Size and xxh3 of a file, read in pieces (SST files can be large).
fn hash_file(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok((size, hasher.digest()));
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
}

/// Up to this many bytes of write-ahead log, a retained checkpoint copies the log instead of
/// flushing the memtable into a new table file first (RocksDB's `log_size_for_flush`); above,
/// it flushes. Every write plume makes goes through the log (synced), so the copy holds the
/// same state. Flushing on every checkpoint wrote, synced and hashed a table file each time:
/// 0.03–0.1 s of a run's final checkpoint, and a small table file every 10 s in a long run.
pub const WAL_COPIED_UP_TO: u64 = 4 << 20;

/// Creates `retained/<id>/` from the live state, which must be exactly checkpoint `record`.
pub fn create(
    store: &StateStore,
    record: &CheckpointRecord,
    sums: &Mutex<HashMap<String, (u64, u64)>>,
) -> Result<(), StoreError> {
    let dir = store.dir();
    let root = retained_root(dir);
    std::fs::create_dir_all(&root).map_err(|e| StoreError::io(&root, "creating", e))?;
    let partial = root.join(format!("{:020}.partial", record.id));
    if partial.exists() {
        let _ = std::fs::remove_dir_all(&partial);
    }
    rocksdb::checkpoint::Checkpoint::new(store.db())
        .and_then(|c| c.create_checkpoint_with_log_size(&partial, WAL_COPIED_UP_TO))
        .map_err(|e| StoreError::Rocks {
            path: partial.display().to_string(),
            error: e,
        })?;
    let mut files = Vec::new();
    let mut cache = sums.lock().expect("file sums lock");
    let mut entries: Vec<_> = std::fs::read_dir(&partial)
        .map_err(|e| StoreError::io(&partial, "listing", e))?
        .filter_map(Result::ok)
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        // SST files never change once written: hash each once
        let (size, sum) = match cache.get(&name) {
            Some(&v) if name.ends_with(".sst") => v,
            _ => {
                let v = hash_file(&path).map_err(|e| StoreError::io(&path, "reading", e))?;
                if name.ends_with(".sst") {
                    cache.insert(name.clone(), v);
                }
                v
            }
        };
        files.push(ManifestFile {
            name,
            size,
            xxh3: format!("{sum:016x}"),
        });
    }
    drop(cache);
    let mut manifest = Manifest {
        format_version: FORMAT_VERSION,
        record: record.clone(),
        created: jiff::Timestamp::from_millisecond(record.created_ms)
            .map(|t| t.to_string())
            .unwrap_or_default(),
        files,
        checksum: String::new(),
    };
    manifest.checksum = manifest.compute_checksum();
    let path = partial.join(MANIFEST);
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&manifest).expect("manifests serialize"),
    )
    .map_err(|e| StoreError::io(&path, "writing", e))?;
    let final_dir = checkpoint_dir(dir, record.id);
    if final_dir.exists() {
        let _ = std::fs::remove_dir_all(&final_dir);
    }
    super::durable::sync_tree(&partial).map_err(|e| StoreError::io(&partial, "syncing", e))?;
    super::durable::rename_durably(&partial, &final_dir)
        .map_err(|e| StoreError::io(&final_dir, "renaming into place", e))?;
    debug!(checkpoint = record.id, "retained checkpoint written");
    Ok(())
}

/// The ids of the retained checkpoints, oldest first (directories with a final name).
pub fn ids(dir: &Path) -> Result<Vec<u64>, StoreError> {
    let root = retained_root(dir);
    if !root.exists() {
        return Ok(Vec::new());
    }
    let mut ids: Vec<u64> = std::fs::read_dir(&root)
        .map_err(|e| StoreError::io(&root, "listing", e))?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()))
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

/// The manifests that read and check, oldest first (the others are reported).
pub fn list(dir: &Path) -> Result<Vec<Manifest>, StoreError> {
    let mut out = Vec::new();
    for id in ids(dir)? {
        match Manifest::read(dir, id) {
            Ok(m) => out.push(m),
            Err(e) => warn!(checkpoint = id, error = %e, "retained checkpoint has no usable manifest"),
        }
    }
    Ok(out)
}

/// What `verify` checked.
#[derive(Debug, Clone, Serialize)]
pub struct Verified {
    pub id: u64,
    pub files: usize,
    pub bytes: u64,
    pub values: u64,
    pub devices: u64,
}

/// Checks every checksum of checkpoint `id`: the manifest, each file's size and xxh3, and every
/// stored value's envelope.
pub fn verify(dir: &Path, id: u64) -> Result<Verified, String> {
    let manifest = Manifest::read(dir, id)?;
    let cdir = checkpoint_dir(dir, id);
    let mut bytes = 0;
    for f in &manifest.files {
        let path = cdir.join(&f.name);
        let (size, sum) = hash_file(&path).map_err(|e| format!("file {}: {e}", f.name))?;
        if size != f.size {
            return Err(format!("file {} is {size} bytes, the manifest says {}", f.name, f.size));
        }
        if format!("{sum:016x}") != f.xxh3 {
            return Err(format!("file {} does not match its checksum", f.name));
        }
        bytes += size;
    }
    let db = open_db_read_only(&cdir).map_err(|e| e.to_string())?;
    let record = read_record(&db, &cdir)
        .map_err(|e| e.to_string())?
        .ok_or("no checkpoint record inside")?;
    if record.id != id {
        return Err(format!("holds checkpoint {} instead of {id}", record.id));
    }
    let mut values = 0;
    let mut devices = 0;
    for cf_name in COLUMN_FAMILIES {
        let cf = db.cf_handle(cf_name).expect("column family");
        for item in db.iterator_cf(cf, rocksdb::IteratorMode::Start) {
            let (k, v) = item.map_err(|e| format!("reading {cf_name}: {e}"))?;
            unseal(&v).map_err(|e| format!("{cf_name} value {}: {e}", String::from_utf8_lossy(&k)))?;
            values += 1;
            if cf_name == CF_DEVICES {
                devices += 1;
            }
        }
    }
    if devices != record.devices {
        return Err(format!(
            "holds {devices} devices, the checkpoint record says {}",
            record.devices
        ));
    }
    Ok(Verified {
        id,
        files: manifest.files.len(),
        bytes,
        values,
        devices,
    })
}

/// Drops all but the newest `keep` retained checkpoints.
pub fn prune(dir: &Path, keep: usize) -> Result<Vec<u64>, StoreError> {
    let ids = ids(dir)?;
    let mut removed = Vec::new();
    if ids.len() > keep {
        for &id in &ids[..ids.len() - keep] {
            let path = checkpoint_dir(dir, id);
            std::fs::remove_dir_all(&path).map_err(|e| StoreError::io(&path, "removing", e))?;
            removed.push(id);
        }
    }
    Ok(removed)
}

/// Removes what a crash left half-written.
pub fn clean_partial(dir: &Path) {
    let root = retained_root(dir);
    if let Ok(entries) = std::fs::read_dir(&root) {
        for e in entries.filter_map(Result::ok) {
            if e.file_name().to_string_lossy().ends_with(".partial") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    // a live state half copied by a restore that did not finish
    let _ = std::fs::remove_dir_all(dir.join("live.partial"));
    // live states moved aside by restores: the newest two are kept for inspection
    let mut aside: Vec<(u64, std::path::PathBuf)> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let ms = name.strip_prefix("replaced-")?.parse().ok()?;
                    Some((ms, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    aside.sort();
    let keep = aside.len().saturating_sub(KEEP_REPLACED);
    for (_, path) in aside.into_iter().take(keep) {
        match std::fs::remove_dir_all(&path) {
            Ok(()) => info!(path = %path.display(), "removed an old live state that a restore had moved aside"),
            Err(error) => warn!(path = %path.display(), %error, "could not remove an old moved-aside live state"),
        }
    }
}

/// How many live states moved aside by restores (`replaced-<time>/`) are kept.
pub const KEEP_REPLACED: usize = 2;

/// Makes retained checkpoint `id` the live state (a copy: the retained one stays). The old
/// live state is kept aside as `replaced-<time>/` for inspection.
pub fn make_live(dir: &Path, id: u64) -> Result<(), StoreError> {
    let cdir = checkpoint_dir(dir, id);
    let live = StateStore::live_dir(dir);
    if live.exists() {
        let aside = dir.join(format!("replaced-{}", crate::clock::now_ms()));
        super::durable::rename_durably(&live, &aside).map_err(|e| StoreError::io(&live, "moving aside", e))?;
        warn!(from = %live.display(), to = %aside.display(), "previous live state moved aside");
    }
    let tmp = dir.join("live.partial");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| StoreError::io(&tmp, "creating", e))?;
    for entry in std::fs::read_dir(&cdir).map_err(|e| StoreError::io(&cdir, "listing", e))? {
        let entry = entry.map_err(|e| StoreError::io(&cdir, "listing", e))?;
        if entry.file_name() == MANIFEST {
            continue;
        }
        let to = tmp.join(entry.file_name());
        std::fs::copy(entry.path(), &to).map_err(|e| StoreError::io(&to, "copying", e))?;
    }
    super::durable::sync_tree(&tmp).map_err(|e| StoreError::io(&tmp, "syncing", e))?;
    super::durable::rename_durably(&tmp, &live).map_err(|e| StoreError::io(&live, "renaming into place", e))?;
    Ok(())
}

#[cfg(test)]
mod leftover_tests {
    use super::*;

    #[test]
    fn leftovers_of_interrupted_work_go_and_two_moved_aside_states_stay() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "replaced-100",
            "replaced-300",
            "replaced-200",
            "live.partial",
            "replaced-x",
        ] {
            std::fs::create_dir_all(dir.path().join(name)).unwrap();
        }
        std::fs::create_dir_all(retained_root(dir.path()).join("00000000000000000007.partial")).unwrap();
        clean_partial(dir.path());
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let retained = retained_root(dir.path());
        let retained_name = retained.file_name().unwrap().to_string_lossy().into_owned();
        let mut want = vec!["replaced-200", "replaced-300", "replaced-x", retained_name.as_str()];
        want.sort();
        assert_eq!(
            left, want,
            "the oldest moved-aside state and the half-copied live state are gone"
        );
        assert_eq!(
            std::fs::read_dir(&retained).unwrap().count(),
            0,
            "and the partial checkpoint"
        );
    }
}
