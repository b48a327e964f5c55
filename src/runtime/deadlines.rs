//! The shard's deadline index: the devices that are not active (passivated, or only in the
//! store) by the time their operators next act on time (`Operator::next_deadline`), so a tick
//! wakes exactly the devices whose time has come.
//!
//! It is built for a fleet where nearly every device is quiet, so it is compact: the heap holds
//! `(deadline, offset)` pairs (16 bytes) into one arena of device ids (two bytes of length, then
//! the id), and the devices only in the store are a set of 64-bit id hashes (a collision only
//! wakes a device early: it finds nothing due and goes back). An entry whose device was woken,
//! re-activated or given another deadline since stays until it comes up and is skipped then
//! (the caller says which entries are current); [`DeadlineIndex::compact`] rebuilds heap and
//! arena from the current ones.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rustc_hash::FxHashSet;

#[derive(Default)]
pub struct DeadlineIndex {
    heap: BinaryHeap<Reverse<(i64, u32)>>,
    ids: Vec<u8>,
    stored: FxHashSet<u64>,
}

fn id_hash(device: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(device.as_bytes())
}

impl DeadlineIndex {
    /// `device` is due at `at`.
    pub fn push(&mut self, at: i64, device: &str) {
        // (ids are at most `decode.max_device_id_bytes`, far below 64 KiB)
        let len = device.len().min(u16::MAX as usize);
        let offset = self.ids.len() as u32;
        self.ids.extend_from_slice(&(len as u16).to_le_bytes());
        self.ids.extend_from_slice(&device.as_bytes()[..len]);
        self.heap.push(Reverse((at, offset)));
    }

    fn id_at(&self, offset: u32) -> &str {
        let at = offset as usize;
        let len = u16::from_le_bytes([self.ids[at], self.ids[at + 1]]) as usize;
        std::str::from_utf8(&self.ids[at + 2..at + 2 + len]).unwrap_or_default()
    }

    /// The earliest deadline in the index.
    pub fn next_time(&self) -> Option<i64> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Takes the earliest entry.
    pub fn pop(&mut self) -> Option<(i64, std::sync::Arc<str>)> {
        let Reverse((at, offset)) = self.heap.pop()?;
        let device = std::sync::Arc::from(self.id_at(offset));
        if self.heap.is_empty() {
            self.ids = Vec::new();
        }
        Some((at, device))
    }

    /// The device is only in the store now (its entry is what wakes it).
    pub fn mark_stored(&mut self, device: &str) {
        self.stored.insert(id_hash(device));
    }

    /// The device is in memory again (or gone): whether it was marked as only in the store.
    pub fn unmark_stored(&mut self, device: &str) -> bool {
        !self.stored.is_empty() && self.stored.remove(&id_hash(device))
    }

    pub fn is_stored(&self, device: &str) -> bool {
        !self.stored.is_empty() && self.stored.contains(&id_hash(device))
    }

    /// Entries (current or stale).
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Devices marked as only in the store.
    pub fn stored_len(&self) -> usize {
        self.stored.len()
    }

    /// Memory held: heap, id arena and stored set, by capacity.
    pub fn bytes(&self) -> usize {
        self.heap.capacity() * std::mem::size_of::<Reverse<(i64, u32)>>()
            + self.ids.capacity()
            + self.stored.capacity() * (std::mem::size_of::<u64>() + 1)
    }

    /// Keeps only the entries `current(deadline, device, only in the store)` says are current,
    /// in a heap and an arena of their own size.
    pub fn compact(&mut self, mut current: impl FnMut(i64, &str, bool) -> bool) {
        let mut kept = DeadlineIndex {
            stored: std::mem::take(&mut self.stored),
            ..Default::default()
        };
        let mut entries: Vec<(i64, u32)> = Vec::with_capacity(self.heap.len());
        let mut ids = Vec::new();
        for Reverse((at, offset)) in std::mem::take(&mut self.heap).into_vec() {
            let device = self.id_at(offset);
            if current(at, device, kept.stored.contains(&id_hash(device))) {
                let len = device.len();
                entries.push((at, ids.len() as u32));
                ids.extend_from_slice(&(len as u16).to_le_bytes());
                ids.extend_from_slice(device.as_bytes());
            }
        }
        ids.shrink_to_fit();
        kept.ids = ids;
        kept.heap = entries.into_iter().map(Reverse).collect();
        kept.stored.shrink_to_fit();
        *self = kept;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_come_out_by_time_and_compaction_keeps_the_current_ones() {
        let mut index = DeadlineIndex::default();
        index.push(30, "c");
        index.push(10, "a");
        index.push(20, "b-with-a-longer-id");
        index.push(15, "a"); // a newer deadline for `a`: the one at 10 is stale
        index.mark_stored("b-with-a-longer-id");
        assert!(index.is_stored("b-with-a-longer-id") && !index.is_stored("a"));
        index.compact(|at, device, stored| {
            assert_eq!(stored, device == "b-with-a-longer-id");
            !(device == "a" && at == 10)
        });
        assert_eq!(index.len(), 3);
        let order: Vec<(i64, String)> = std::iter::from_fn(|| index.pop().map(|(at, d)| (at, d.to_string()))).collect();
        assert_eq!(
            order,
            vec![(15, "a".into()), (20, "b-with-a-longer-id".into()), (30, "c".into())]
        );
        assert!(index.unmark_stored("b-with-a-longer-id"));
        assert!(!index.unmark_stored("b-with-a-longer-id"));
    }

    #[test]
    fn an_entry_takes_about_thirty_bytes_for_a_ten_byte_id() {
        let mut index = DeadlineIndex::default();
        for i in 0..100_000 {
            let device = format!("dev-{i:06}");
            index.push(i, &device);
            index.mark_stored(&device);
        }
        let per_entry = index.bytes() as f64 / 100_000.0;
        // 16 (heap) + 12 (id) + 9 (stored set) before the spare capacity of growing tables
        assert!((37.0..64.0).contains(&per_entry), "{per_entry}");
    }
}
