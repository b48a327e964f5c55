//! Kafka partitions in the store: which devices came from which partition, and the hand-off
//! of a partition's devices and offset to the next member of the consumer group.
//!
//! # Layout
//! - the partition index: keys `PARTITION_PREFIX topic 0x00 partition(4, BE) device` in the
//!   `positions` column family, empty sealed values. Written by the Kafka source when a device
//!   first arrives on a partition (a fact that never becomes false, so writing it ahead of the
//!   checkpoint is safe: the checkpoint's synced batch makes it durable with the device states).
//! - [`PartitionHandoff`]: one file per partition in the group's hand-off directory
//!   (`<topic>-<partition>.handoff`), sealed bincode: the partition's next offset and the
//!   encoded state of each of its devices, written (temp file, fsync, rename) by the member
//!   that gives the partition up, after a checkpoint that covers everything it read from it.

use std::path::{Path, PathBuf};

use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions};
use serde::{Deserialize, Serialize};

use super::{
    CF_DEVICES, CF_POSITIONS, StateStore, StoreError, bincode_decode, bincode_encode, device_key, seal, unseal,
};

const PARTITION_PREFIX: &[u8] = b"\x00kafka-partition\x00";

/// The stored-position name of a Kafka partition (one `StoredPosition` per partition).
pub fn position_name(topic: &str, partition: i32) -> String {
    format!("kafka:{topic}:{partition}")
}

/// The `(topic, partition)` of a stored-position name written by [`position_name`].
pub fn parse_position_name(name: &str) -> Option<(String, i32)> {
    let rest = name.strip_prefix("kafka:")?;
    let (topic, partition) = rest.rsplit_once(':')?;
    Some((topic.to_string(), partition.parse().ok()?))
}

fn index_prefix(topic: &str, partition: i32) -> Vec<u8> {
    let mut k = PARTITION_PREFIX.to_vec();
    k.extend_from_slice(topic.as_bytes());
    k.push(0);
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

/// A partition's devices and where its reading stopped, for the next owner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartitionHandoff {
    pub topic: String,
    pub partition: i32,
    /// The next offset to read.
    pub next_offset: i64,
    pub pipeline_hash: String,
    pub key_groups: u32,
    /// The checkpoint of the giving member that covers `next_offset`.
    pub checkpoint: u64,
    pub written_ms: i64,
    /// `(device, encoded DeviceSnapshot)`.
    pub devices: Vec<(String, Vec<u8>)>,
}

impl PartitionHandoff {
    pub fn file_in(dir: &Path, topic: &str, partition: i32) -> PathBuf {
        dir.join(format!("{topic}-{partition}.handoff"))
    }

    /// Writes atomically: a reader sees the old file or the whole new one.
    pub fn write(&self, dir: &Path) -> Result<PathBuf, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, "creating the hand-off directory", e))?;
        let path = Self::file_in(dir, &self.topic, self.partition);
        super::durable::write_file(&path, &seal(&bincode_encode(self)), false)
            .map_err(|e| StoreError::io(&path, "writing", e))?;
        Ok(path)
    }

    /// The hand-off of `topic`/`partition` in `dir`, if there is one.
    pub fn read(dir: &Path, topic: &str, partition: i32) -> Result<Option<Self>, StoreError> {
        let path = Self::file_in(dir, topic, partition);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io(&path, "reading", e)),
        };
        let corrupt = |problem: String| StoreError::Corrupt {
            what: path.display().to_string(),
            problem,
        };
        let payload = unseal(&bytes).map_err(corrupt)?;
        bincode_decode(payload).map(Some).map_err(corrupt)
    }
}

impl StateStore {
    /// Records that `devices` arrived on `topic`/`partition` (not synced: the next
    /// checkpoint's synced batch makes it durable together with their state).
    pub fn index_partition_devices<'a>(
        &self,
        topic: &str,
        partition: i32,
        devices: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), StoreError> {
        let cf = self.db.cf_handle(CF_POSITIONS).expect("column family");
        let prefix = index_prefix(topic, partition);
        let mut batch = WriteBatch::default();
        for d in devices {
            let mut k = prefix.clone();
            k.extend_from_slice(d.as_bytes());
            batch.put_cf(cf, k, seal(&[]));
        }
        self.db.write(batch).map_err(|e| StoreError::rocks(&self.dir, e))
    }

    /// The devices indexed for `topic`/`partition`.
    pub fn partition_devices(&self, topic: &str, partition: i32) -> Result<Vec<String>, StoreError> {
        let cf = self.db.cf_handle(CF_POSITIONS).expect("column family");
        let prefix = index_prefix(topic, partition);
        let mut out = Vec::new();
        for item in self.db.iterator_cf(cf, IteratorMode::From(&prefix, Direction::Forward)) {
            let (k, _) = item.map_err(|e| StoreError::rocks(&self.dir, e))?;
            if !k.starts_with(&prefix) {
                break;
            }
            out.push(String::from_utf8_lossy(&k[prefix.len()..]).into_owned());
        }
        Ok(out)
    }

    /// The stored states of a partition's devices (those the store has).
    pub fn partition_states(
        &self,
        topic: &str,
        partition: i32,
        key_group_of: impl Fn(&str) -> u32,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        for device in self.partition_devices(topic, partition)? {
            if let Some(state) = self.load_device(key_group_of(&device), &device)? {
                out.push((device, state));
            }
        }
        Ok(out)
    }

    /// Drops a partition's devices and their index entries (the partition was handed off).
    /// Synced. Returns how many of them had a stored state.
    pub fn drop_partition(
        &self,
        topic: &str,
        partition: i32,
        key_group_of: impl Fn(&str) -> u32,
    ) -> Result<usize, StoreError> {
        let devices = self.partition_devices(topic, partition)?;
        let (dcf, pcf) = (
            self.db.cf_handle(CF_DEVICES).expect("column family"),
            self.db.cf_handle(CF_POSITIONS).expect("column family"),
        );
        let prefix = index_prefix(topic, partition);
        let meta = self.db.cf_handle(super::CF_META).expect("column family");
        let mut batch = WriteBatch::default();
        let mut stored = 0;
        for d in &devices {
            let key = device_key(key_group_of(d), d);
            if self.has_key(dcf, &key)? {
                stored += 1;
            }
            batch.delete_cf(meta, super::deadline_key(&key));
            batch.delete_cf(dcf, key);
            let mut k = prefix.clone();
            k.extend_from_slice(d.as_bytes());
            batch.delete_cf(pcf, k);
        }
        let mut options = WriteOptions::default();
        options.set_sync(true);
        self.db
            .write_opt(batch, &options)
            .map_err(|e| StoreError::rocks(&self.dir, e))?;
        Ok(stored)
    }

    fn has_key(&self, cf: &impl rocksdb::AsColumnFamilyRef, key: &[u8]) -> Result<bool, StoreError> {
        self.db
            .get_pinned_cf(cf, key)
            .map(|v| v.is_some())
            .map_err(|e| StoreError::rocks(&self.dir, e))
    }

    /// Takes over the devices of a hand-off (their states replace any stored ones). Synced.
    /// Returns how many of them the store did not hold before.
    pub fn import_partition(
        &self,
        handoff: &PartitionHandoff,
        key_group_of: impl Fn(&str) -> u32,
    ) -> Result<usize, StoreError> {
        let (dcf, pcf) = (
            self.db.cf_handle(CF_DEVICES).expect("column family"),
            self.db.cf_handle(CF_POSITIONS).expect("column family"),
        );
        let prefix = index_prefix(&handoff.topic, handoff.partition);
        let mut batch = WriteBatch::default();
        let mut new = 0;
        for (device, state) in &handoff.devices {
            let key = device_key(key_group_of(device), device);
            if !self.has_key(dcf, &key)? {
                new += 1;
            }
            batch.put_cf(dcf, key, seal(state));
            let mut k = prefix.clone();
            k.extend_from_slice(device.as_bytes());
            batch.put_cf(pcf, k, seal(&[]));
        }
        let mut options = WriteOptions::default();
        options.set_sync(true);
        self.db
            .write_opt(batch, &options)
            .map_err(|e| StoreError::rocks(&self.dir, e))?;
        // (the hand-off has states, not deadlines: a later start finds them by decoding)
        self.lose_deadline_index()?;
        Ok(new)
    }

    /// The checkpoint record `live/` holds now (the newest durable one).
    pub fn latest_record(&self) -> Result<Option<super::CheckpointRecord>, StoreError> {
        super::read_record(&self.db, &self.dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_names_round_trip() {
        let n = position_name("aq1.readings", 3);
        assert_eq!(n, "kafka:aq1.readings:3");
        assert_eq!(parse_position_name(&n), Some(("aq1.readings".to_string(), 3)));
        assert_eq!(parse_position_name("file:x"), None);
    }

    #[test]
    fn imports_count_the_devices_new_to_the_store_and_drops_those_it_had() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::StateStore::open_tool(dir.path()).unwrap();
        let handoff = |devices: &[&str]| PartitionHandoff {
            topic: "t".into(),
            partition: 1,
            next_offset: 10,
            pipeline_hash: "abc".into(),
            key_groups: 256,
            checkpoint: 1,
            written_ms: 1,
            devices: devices.iter().map(|d| (d.to_string(), vec![1, 2])).collect(),
        };
        let kg = |_: &str| 3;
        assert_eq!(store.import_partition(&handoff(&["a", "b"]), kg).unwrap(), 2);
        // a newer hand-off of the same partition: only "c" is new
        assert_eq!(store.import_partition(&handoff(&["a", "b", "c"]), kg).unwrap(), 1);
        // indexed but never stored (its state would come with the next checkpoint)
        store.index_partition_devices("t", 1, ["d"]).unwrap();
        assert_eq!(store.partition_devices("t", 1).unwrap().len(), 4);
        assert_eq!(store.drop_partition("t", 1, kg).unwrap(), 3);
        assert!(store.partition_devices("t", 1).unwrap().is_empty());
        assert_eq!(store.import_partition(&handoff(&["a"]), kg).unwrap(), 1);
    }

    #[test]
    fn handoffs_round_trip_and_damage_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let h = PartitionHandoff {
            topic: "t".into(),
            partition: 2,
            next_offset: 41,
            pipeline_hash: "abc".into(),
            key_groups: 256,
            checkpoint: 7,
            written_ms: 1,
            devices: vec![("dev-1".into(), vec![1, 2, 3])],
        };
        let path = h.write(dir.path()).unwrap();
        assert_eq!(PartitionHandoff::read(dir.path(), "t", 2).unwrap(), Some(h));
        assert_eq!(PartitionHandoff::read(dir.path(), "t", 3).unwrap(), None);
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 1] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let e = PartitionHandoff::read(dir.path(), "t", 2).unwrap_err().to_string();
        assert!(e.contains("t-2.handoff"), "{e}");
    }
}
