//! [`DeviceSlots`]: an index of devices by their id's hash, for the loops that look a device's
//! chain up once per reading (the plain loop and the shards).

/// An index of devices (numbered `0..n` by their owner) by their id's hash: open addressing
/// with linear probing over 8-byte slots (the upper half of the hash, and the device's number
/// plus one, 0 being an empty slot), at most half full. Its own, not a `hashbrown` table, so
/// that a reading can ask the CPU for its slot a few readings before it looks in it: the load
/// of a slot that had left the cache was 5 % of a plain-loop run.
///
/// It stores no ids: [`DeviceSlots::find`] asks its caller whether a numbered device is the
/// one looked for, and [`DeviceSlots::candidate`] does not ask (most likely right: a look-ahead
/// uses it to start loading the device's state).
pub struct DeviceSlots {
    slots: Vec<(u32, u32)>,
    len: usize,
}

impl Default for DeviceSlots {
    fn default() -> Self {
        DeviceSlots::new()
    }
}

impl DeviceSlots {
    pub fn new() -> Self {
        DeviceSlots {
            slots: vec![(0, 0); 64],
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of the table.
    pub fn bytes(&self) -> usize {
        self.slots.len() * std::mem::size_of::<(u32, u32)>()
    }

    #[inline]
    fn home(&self, hash: u64) -> usize {
        hash as usize & (self.slots.len() - 1)
    }

    /// Asks the CPU for the slot where a search for `hash` starts.
    #[inline]
    pub fn prefetch(&self, hash: u64) {
        super::prefetch(&self.slots[self.home(hash)], 8);
    }

    /// The first device whose slot holds `hash`'s upper half, if any: most likely the device
    /// with that hash, but its id is not compared.
    #[inline]
    pub fn candidate(&self, hash: u64) -> Option<usize> {
        self.find(hash, |_| true)
    }

    /// The device whose slot holds `hash`'s upper half and for which `is` says yes.
    #[inline]
    pub fn find(&self, hash: u64, is: impl Fn(usize) -> bool) -> Option<usize> {
        self.find_slot(hash, is).map(|at| self.slots[at].1 as usize - 1)
    }

    #[inline]
    fn find_slot(&self, hash: u64, is: impl Fn(usize) -> bool) -> Option<usize> {
        let tag = (hash >> 32) as u32;
        let mask = self.slots.len() - 1;
        let mut at = self.home(hash);
        loop {
            let (t, index) = self.slots[at];
            if index == 0 {
                return None;
            }
            if t == tag && is(index as usize - 1) {
                return Some(at);
            }
            at = (at + 1) & mask;
        }
    }

    /// Adds device `index` (not in the table) under `hash`; `hash_of` gives the hash of any
    /// device already in it, for when the table grows.
    pub fn insert(&mut self, hash: u64, index: usize, hash_of: impl Fn(usize) -> u64) {
        if (self.len + 1) * 2 > self.slots.len() {
            let grown = vec![(0, 0); self.slots.len() * 2];
            let old = std::mem::replace(&mut self.slots, grown);
            for (_, i) in old.into_iter().filter(|&(_, i)| i != 0) {
                self.place(hash_of(i as usize - 1), i as usize - 1);
            }
        }
        self.place(hash, index);
        self.len += 1;
    }

    fn place(&mut self, hash: u64, index: usize) {
        let mask = self.slots.len() - 1;
        let mut at = self.home(hash);
        while self.slots[at].1 != 0 {
            at = (at + 1) & mask;
        }
        self.slots[at] = (
            (hash >> 32) as u32,
            u32::try_from(index + 1).expect("fewer than 2^32 devices"),
        );
    }

    /// Removes device `index`, filed under `hash`; `hash_of` gives the hash of any device in
    /// the table (the entries after it that probed past it move back: no tombstones).
    pub fn remove(&mut self, hash: u64, index: usize, hash_of: impl Fn(usize) -> u64) {
        let Some(mut hole) = self.find_slot(hash, |i| i == index) else {
            return;
        };
        self.len -= 1;
        let mask = self.slots.len() - 1;
        let mut at = hole;
        loop {
            at = (at + 1) & mask;
            let (_, i) = self.slots[at];
            if i == 0 {
                break;
            }
            // an entry may fill the hole if its home is not between the hole and it (cyclically)
            let home = self.home(hash_of(i as usize - 1));
            let stays = if hole <= at {
                hole < home && home <= at
            } else {
                hole < home || home <= at
            };
            if !stays {
                self.slots[hole] = self.slots[at];
                hole = at;
            }
        }
        self.slots[hole] = (0, 0);
    }

    /// Device `from`, filed under `hash`, is numbered `to` from now on (its owner moved it).
    pub fn renumber(&mut self, hash: u64, from: usize, to: usize) {
        if let Some(at) = self.find_slot(hash, |i| i == from) {
            self.slots[at].1 = u32::try_from(to + 1).expect("fewer than 2^32 devices");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The device table finds every device it holds and no other, through growth, with
    /// hashes that share their upper half (the slot's tag) or their home slot, or both.
    #[test]
    fn the_device_table_finds_exactly_the_devices_it_holds() {
        // device i's hash: a few distinct tags and homes, so that both collide often
        let hash_of = |i: usize| ((i as u64 % 3) << 32) | (i as u64 % 5) | (((i / 15) as u64) << 7);
        let mut table = DeviceSlots::new();
        for n in 0..2_000usize {
            // every device after each of the first additions and after each growth; after the
            // others, the newest (the whole check each time is quadratic)
            let all = n <= 200 || n.is_power_of_two() || (n - 1).is_power_of_two();
            for i in if all { 0 } else { n.saturating_sub(20) }..n {
                assert_eq!(table.find(hash_of(i), |j| j == i), Some(i), "device {i} of {n}");
            }
            assert_eq!(
                table.find(hash_of(n), |j| j == n),
                None,
                "device {n} before it was added"
            );
            if let Some(c) = table.candidate(hash_of(n)) {
                assert_eq!(hash_of(c) >> 32, hash_of(n) >> 32, "a candidate has the same tag");
            }
            table.insert(hash_of(n), n, hash_of);
            assert!(table.len() * 2 * 8 <= table.bytes(), "at most half full");
        }
    }

    proptest! {
        /// Any sequence of inserts and removes (hashes drawn from a few values, so that probe
        /// runs, collisions of the upper half and wrap-around all happen) leaves the table
        /// finding exactly the devices a map holds.
        #[test]
        fn the_slots_find_what_a_map_holds(ops in proptest::collection::vec((any::<bool>(), 0u64..40, 0u64..6), 1..400)) {
            // devices are numbered densely as their owner keeps them: removing one moves the
            // last into its place (as `ActiveDevices` does)
            let mut slots = DeviceSlots::new();
            let mut devices: Vec<(u64, u64)> = Vec::new(); // (id, hash)
            let hash = |id: u64, spread: u64| (spread << 32) | (id % 7) | ((id % 3) << 62);
            for (add, id, spread) in ops {
                let h = hash(id, spread % 2);
                let present = devices.iter().position(|&(d, _)| d == id);
                match (add, present) {
                    (true, None) => {
                        devices.push((id, h));
                        let snapshot = devices.clone();
                        slots.insert(h, devices.len() - 1, |i| snapshot[i].1);
                    }
                    (false, Some(i)) => {
                        let (_, h) = devices[i];
                        let snapshot = devices.clone();
                        slots.remove(h, i, |j| snapshot[j].1);
                        let last = devices.len() - 1;
                        if i != last {
                            slots.renumber(devices[last].1, last, i);
                        }
                        devices.swap_remove(i);
                    }
                    _ => {}
                }
                prop_assert_eq!(slots.len(), devices.len());
                for (i, &(id, h)) in devices.iter().enumerate() {
                    prop_assert_eq!(slots.find(h, |j| devices[j].0 == id), Some(i));
                }
                for id in 0..40u64 {
                    if !devices.iter().any(|&(d, _)| d == id) {
                        for spread in 0..2 {
                            prop_assert_eq!(slots.find(hash(id, spread), |j| devices[j].0 == id), None);
                        }
                    }
                }
            }
        }
    }
}
