//! Devices to key groups to shards: the stable mapping that lays out stored state.

/// The key group of a device: a stable hash of its id, modulo the fixed number of key groups.
/// (xxh3 is a specified algorithm: the mapping does not change between versions or machines.)
pub fn key_group_of(device: &str, key_groups: u32) -> u32 {
    key_group_of_hash(xxhash_rust::xxh3::xxh3_64(device.as_bytes()), key_groups)
}

/// [`key_group_of`] for a device whose id's xxh3 hash is known (the routers keep it).
#[inline]
pub fn key_group_of_hash(hash: u64, key_groups: u32) -> u32 {
    let groups = key_groups as u64;
    // (the same as `hash % groups`, without a division for the default 256)
    (if groups.is_power_of_two() {
        hash & (groups - 1)
    } else {
        hash % groups
    }) as u32
}

/// The shard that owns a key group: contiguous ranges of key groups per shard.
pub fn shard_of(key_group: u32, key_groups: u32, shards: usize) -> usize {
    (key_group as u64 * shards as u64 / key_groups as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_groups_are_stable_and_spread() {
        // fixed values: the mapping must never change (stored state is laid out by it)
        assert_eq!(key_group_of("dev-000001", 256), key_group_of("dev-000001", 256));
        let mut counts = vec![0u32; 256];
        for i in 0..25_600 {
            counts[key_group_of(&format!("dev-{i:06}"), 256) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 50 && c < 150), "{counts:?}");
        for groups in [256, 100, 1] {
            for i in 0..1000u64 {
                let hash = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
                assert_eq!(key_group_of_hash(hash, groups), (hash % groups as u64) as u32);
            }
        }
        let shards: Vec<usize> = (0..256).map(|kg| shard_of(kg, 256, 3)).collect();
        assert_eq!(shards[0], 0);
        assert_eq!(shards[255], 2);
        assert!(shards.windows(2).all(|w| w[0] <= w[1]));
    }
}
