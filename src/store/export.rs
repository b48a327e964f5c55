//! One portable file per checkpoint: to move state to another machine, or keep a savepoint.
//!
//! Format: `PLUMEXP\0`, the format version (u16 LE), the xxh3 of the body (u64 LE), then the
//! body: bincode of [`ExportBody`]. Stored values are copied as they are (envelopes included),
//! so an import gives byte-identical state.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{
    COLUMN_FAMILIES, CheckpointRecord, FORMAT_VERSION, StateStore, StoreError, open_db, open_db_read_only, read_record,
    retained,
};

const MAGIC: &[u8; 8] = b"PLUMEXP\0";

#[derive(Debug, Serialize, Deserialize)]
pub struct ExportBody {
    pub record: CheckpointRecord,
    /// `(column family, key, stored value)`.
    pub entries: Vec<(String, Vec<u8>, Vec<u8>)>,
}

/// Writes retained checkpoint `id` of `dir` to `file`. Returns the number of entries.
pub fn export(dir: &Path, id: u64, file: &Path) -> Result<usize, StoreError> {
    retained::verify(dir, id).map_err(|problem| StoreError::Corrupt {
        what: format!("checkpoint {id}"),
        problem,
    })?;
    let cdir = retained::checkpoint_dir(dir, id);
    let db = open_db_read_only(&cdir)?;
    let record = read_record(&db, &cdir)?.ok_or_else(|| StoreError::Corrupt {
        what: format!("checkpoint {id}"),
        problem: "no checkpoint record".into(),
    })?;
    let mut entries = Vec::new();
    for cf_name in COLUMN_FAMILIES {
        let cf = db.cf_handle(cf_name).expect("column family");
        for item in db.iterator_cf(cf, rocksdb::IteratorMode::Start) {
            let (k, v) = item.map_err(|e| StoreError::Rocks {
                path: cdir.display().to_string(),
                error: e,
            })?;
            entries.push((cf_name.to_string(), k.to_vec(), v.to_vec()));
        }
    }
    let n = entries.len();
    let body = bincode::serde::encode_to_vec(ExportBody { record, entries }, bincode::config::standard())
        .expect("encoding to a Vec cannot fail");
    let mut out = Vec::with_capacity(body.len() + 18);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(&body).to_le_bytes());
    out.extend_from_slice(&body);
    super::durable::write_file(file, &out, false).map_err(|e| StoreError::io(file, "writing", e))?;
    Ok(n)
}

/// Reads and checks an export file.
pub fn read(file: &Path) -> Result<ExportBody, StoreError> {
    let bytes = std::fs::read(file).map_err(|e| StoreError::io(file, "reading", e))?;
    let bad = |problem: String| StoreError::Corrupt {
        what: file.display().to_string(),
        problem,
    };
    if bytes.len() < 18 || &bytes[..8] != MAGIC {
        return Err(bad("not a plume checkpoint export".into()));
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    if version != FORMAT_VERSION {
        return Err(bad(format!(
            "written in format version {version}; this plume reads format version {FORMAT_VERSION}{}",
            if version > FORMAT_VERSION {
                " (it is newer: upgrade plume)"
            } else {
                ""
            }
        )));
    }
    let sum = u64::from_le_bytes(bytes[10..18].try_into().expect("8 bytes"));
    let body = &bytes[18..];
    if xxhash_rust::xxh3::xxh3_64(body) != sum {
        return Err(bad(
            "the checksum does not match: the file is damaged or truncated".into()
        ));
    }
    let body: ExportBody = crate::model::codec::bincode_decode(body)
        .map(|(b, _)| b)
        .map_err(|e| bad(format!("cannot be decoded: {e}")))?;
    body.record.check().map_err(bad)?;
    Ok(body)
}

/// Makes the export in `file` the state of `dir` (which must not hold state yet), and keeps it
/// as a retained checkpoint. Returns the checkpoint record.
pub fn import(dir: &Path, file: &Path) -> Result<CheckpointRecord, StoreError> {
    let body = read(file)?;
    let live = StateStore::live_dir(dir);
    if live.exists() {
        let db = open_db(&live)?;
        if read_record(&db, &live)?.is_some() {
            return Err(StoreError::Refused(format!(
                "{} already holds state; import into an empty data directory",
                dir.display()
            )));
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, "creating", e))?;
    {
        let db = open_db(&live)?;
        let mut batch = rocksdb::WriteBatch::default();
        for (cf_name, k, v) in &body.entries {
            let cf = db.cf_handle(cf_name).ok_or_else(|| StoreError::Corrupt {
                what: file.display().to_string(),
                problem: format!("unknown column family {cf_name}"),
            })?;
            batch.put_cf(cf, k, v);
        }
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(true);
        db.write_opt(batch, &wo).map_err(|e| StoreError::Rocks {
            path: live.display().to_string(),
            error: e,
        })?;
    }
    let identity = super::PipelineIdentity {
        name: body.record.pipeline.clone(),
        hash: body.record.pipeline_hash.clone(),
        key_groups: body.record.key_groups,
    };
    let opened = StateStore::open(dir, &identity, false)?;
    opened.store.retain(&body.record, u32::MAX)?;
    Ok(body.record)
}
