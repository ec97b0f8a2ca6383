//! A fast hasher for the writer's maps, whose keys are inode numbers, chunk indexes and pids
//! of our own filesystem (not chosen by an attacker), so SipHash's DoS resistance buys nothing
//! and costs a third of the writer's hashing time.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use super::sink::mix;

/// Folds integers with a 64-bit finaliser; bytes are folded eight at a time.
#[derive(Default, Clone, Copy)]
pub(crate) struct IntHasher(u64);

impl Hasher for IntHasher {
    fn finish(&self) -> u64 {
        mix(self.0)
    }

    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            self.write_u64(u64::from_le_bytes(w));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }

    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
}

/// A map keyed by integers, hashed with [`IntHasher`].
pub(crate) type IntMap<K, V> = HashMap<K, V, BuildHasherDefault<IntHasher>>;
/// A set of integers, hashed with [`IntHasher`].
pub(crate) type IntSet<K> = HashSet<K, BuildHasherDefault<IntHasher>>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::{BuildHasher, Hash};

    fn h<T: Hash>(v: T) -> u64 {
        BuildHasherDefault::<IntHasher>::default().hash_one(v)
    }

    #[test]
    fn distinct_keys_hash_apart() {
        assert_ne!(h((1u32, 2u64)), h((2u32, 1u64)));
        assert_ne!(h((0u32, 0u64, 1u64)), h((0u32, 1u64, 0u64)));
        assert_ne!(h(&b"abcdefgh1"[..]), h(&b"abcdefgh2"[..]));
        // Keys differing in high bits only still spread over the low bits a table uses.
        let low: std::collections::HashSet<u64> =
            (0..64u64).map(|i| h((0u32, i << 40)) & 1023).collect();
        assert!(low.len() > 40, "{} of 64 buckets", low.len());
    }

    #[test]
    fn maps_work() {
        let mut m: IntMap<(u32, u64), u32> = IntMap::default();
        for i in 0..1000u64 {
            m.insert((7, i), i as u32);
        }
        assert_eq!(m.len(), 1000);
        assert_eq!(m[&(7, 999)], 999);
    }
}
