//! [`ActiveDevices`]: a shard's live device actors, by device id.

use std::sync::Arc;

use xxhash_rust::xxh3::xxh3_64;

use crate::operators::device_slots::DeviceSlots;
use crate::runtime::device::DeviceActor;

/// One live device.
pub struct ActiveDevice {
    pub id: Arc<str>,
    /// The xxh3 hash of `id` (the one its key group comes from).
    pub hash: u64,
    pub actor: DeviceActor,
}

/// A shard's live devices: a dense list, indexed by the xxh3 hash of their ids (the hash the
/// feeder already computed to route a line, so a line's device is found without hashing its
/// id again). A reading a few readings ahead asks the CPU for its device's slot, entry and
/// state ([`ActiveDevices::prefetch_slot`], [`ActiveDevices::candidate`]), as the plain loop
/// does. Removing a device moves the last one into its place.
#[derive(Default)]
pub struct ActiveDevices {
    devices: Vec<ActiveDevice>,
    slots: DeviceSlots,
}

impl ActiveDevices {
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn capacity(&self) -> usize {
        self.devices.capacity()
    }

    pub fn shrink_to_fit(&mut self) {
        self.devices.shrink_to_fit();
    }

    /// The number of device `id`, whose xxh3 hash is `hash`.
    #[inline]
    pub fn find(&self, hash: u64, id: &str) -> Option<usize> {
        let devices = &self.devices;
        self.slots.find(hash, |i| {
            crate::decode::same_bytes(devices[i].id.as_bytes(), id.as_bytes())
        })
    }

    fn position(&self, id: &str) -> Option<usize> {
        self.find(xxh3_64(id.as_bytes()), id)
    }

    pub fn contains_key(&self, id: &str) -> bool {
        self.position(id).is_some()
    }

    pub fn get(&self, id: &str) -> Option<&DeviceActor> {
        self.position(id).map(|i| &self.devices[i].actor)
    }

    #[inline]
    pub fn at(&self, i: usize) -> &ActiveDevice {
        &self.devices[i]
    }

    #[inline]
    pub fn at_mut(&mut self, i: usize) -> &mut ActiveDevice {
        &mut self.devices[i]
    }

    /// Adds a device that is not here; returns its number.
    pub fn insert(&mut self, id: Arc<str>, hash: u64, actor: DeviceActor) -> usize {
        debug_assert!(self.find(hash, &id).is_none());
        let index = self.devices.len();
        self.devices.push(ActiveDevice { id, hash, actor });
        let devices = &self.devices;
        self.slots.insert(hash, index, |i| devices[i].hash);
        index
    }

    pub fn remove(&mut self, id: &str) -> Option<DeviceActor> {
        let i = self.position(id)?;
        let hash = self.devices[i].hash;
        let devices = &self.devices;
        self.slots.remove(hash, i, |j| devices[j].hash);
        let last = self.devices.len() - 1;
        if i != last {
            self.slots.renumber(self.devices[last].hash, last, i);
        }
        Some(self.devices.swap_remove(i).actor)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &DeviceActor)> {
        self.devices.iter().map(|d| (&d.id, &d.actor))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&Arc<str>, &mut DeviceActor)> {
        self.devices.iter_mut().map(|d| (&d.id, &mut d.actor))
    }

    /// Asks the CPU for the slot where the search for `hash` starts.
    #[inline]
    pub fn prefetch_slot(&self, hash: u64) {
        self.slots.prefetch(hash);
    }

    /// The device most likely to be the one hashed `hash` (its id is not compared), and asks
    /// the CPU for its entry.
    #[inline]
    pub fn candidate(&self, hash: u64) -> Option<usize> {
        let i = self.slots.candidate(hash)?;
        crate::operators::prefetch(&self.devices[i], std::mem::size_of::<ActiveDevice>());
        Some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operators::DeviceChain;

    fn actor() -> DeviceActor {
        DeviceActor::new(DeviceChain::new(&[], "d"), false, 0)
    }

    #[test]
    fn devices_are_found_by_id_after_others_are_removed() {
        let mut active = ActiveDevices::default();
        let ids: Vec<String> = (0..300).map(|i| format!("dev-{i:04}")).collect();
        for id in &ids {
            active.insert(Arc::from(id.as_str()), xxh3_64(id.as_bytes()), actor());
        }
        for id in ids.iter().step_by(3) {
            assert!(active.remove(id).is_some());
            assert!(active.remove(id).is_none());
        }
        assert_eq!(active.len(), 200);
        for (n, id) in ids.iter().enumerate() {
            assert_eq!(active.contains_key(id), n % 3 != 0, "{id}");
            if let Some(i) = active.find(xxh3_64(id.as_bytes()), id) {
                assert_eq!(&*active.at(i).id, id.as_str());
            }
        }
        let mut listed: Vec<&str> = active.iter().map(|(id, _)| &**id).collect();
        listed.sort();
        let mut kept: Vec<&str> = ids
            .iter()
            .enumerate()
            .filter(|(n, _)| n % 3 != 0)
            .map(|(_, id)| id.as_str())
            .collect();
        kept.sort();
        assert_eq!(listed, kept);
    }
}
