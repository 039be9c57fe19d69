//! A hierarchical bitset over chunk indices: the frame allocator's "which chunks have room" index.
//!
//! Level 0 holds one bit per chunk; each word of level `k + 1` holds one bit per word of level `k`,
//! set iff that word is non-zero; the top level is a single word. With 64-bit words the depth is
//! `ceil(log64(chunks))` (3 levels up to 128 GiB of 2 MiB chunks, 4 up to 8 TiB), so `insert`,
//! `remove` and `first` touch at most one word per level: O(log64 n).
//!
//! Cost: `n / 64` words at level 0 plus about 1/63 of that above, i.e. ~1.02 bits per chunk.

#![forbid(unsafe_code)]

use alloc::vec;
use alloc::vec::Vec;

/// A set of indices in `0..len`, with O(log64 n) insert, remove and find-lowest.
#[derive(Debug, Clone)]
pub(super) struct Summary {
    /// `levels[0]` has one bit per index; `levels[k + 1]` one bit per non-zero word of `levels[k]`;
    /// the last level has exactly one word.
    levels: Vec<Vec<u64>>,
}

impl Summary {
    /// Returns an empty set able to hold the indices `0..len`.
    pub(super) fn new(len: usize) -> Self {
        let mut levels = Vec::new();
        let mut bits = len.max(1);
        loop {
            let words = bits.div_ceil(64);
            levels.push(vec![0u64; words]);
            if words == 1 {
                break;
            }
            bits = words;
        }
        levels.shrink_to_fit();
        Self { levels }
    }

    /// Adds `index` (no-op if present). Propagates upwards only when a word turns non-zero.
    #[inline]
    pub(super) fn insert(&mut self, index: usize) {
        let mut i = index;
        for level in &mut self.levels {
            let word = &mut level[i / 64];
            let was_empty = *word == 0;
            *word |= 1 << (i % 64);
            if !was_empty {
                return;
            }
            i /= 64;
        }
    }

    /// Removes `index` (no-op if absent). Propagates upwards only when a word turns zero.
    #[inline]
    pub(super) fn remove(&mut self, index: usize) {
        let mut i = index;
        for level in &mut self.levels {
            let word = &mut level[i / 64];
            *word &= !(1 << (i % 64));
            if *word != 0 {
                return;
            }
            i /= 64;
        }
    }

    /// Returns the lowest index in the set, if any.
    #[inline]
    pub(super) fn first(&self) -> Option<usize> {
        let top = self.levels.last()?;
        if top[0] == 0 {
            return None;
        }
        let mut i = 0usize;
        for level in self.levels.iter().rev() {
            // Invariant: a set bit at level k+1 means word i of level k is non-zero.
            i = i * 64 + level[i].trailing_zeros() as usize;
        }
        Some(i)
    }

    /// Returns whether `index` is in the set.
    #[cfg(test)]
    pub(super) fn contains(&self, index: usize) -> bool {
        self.levels[0][index / 64] & (1 << (index % 64)) != 0
    }

    /// Returns the heap bytes used by this set.
    pub(super) fn heap_bytes(&self) -> usize {
        self.levels.capacity() * core::mem::size_of::<Vec<u64>>()
            + self
                .levels
                .iter()
                .map(|l| l.capacity() * core::mem::size_of::<u64>())
                .sum::<usize>()
    }

    /// Checks that every upper-level bit mirrors the non-zero-ness of the word below.
    #[cfg(test)]
    pub(super) fn check_invariants(&self) {
        for k in 1..self.levels.len() {
            for (w, word) in self.levels[k - 1].iter().enumerate() {
                let bit = self.levels[k][w / 64] & (1 << (w % 64)) != 0;
                assert_eq!(bit, *word != 0, "summary level {k} bit {w} out of sync");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Summary;
    use std::collections::BTreeSet;

    #[test]
    fn matches_btreeset_across_levels() {
        for len in [1usize, 63, 64, 65, 4096, 4097, 300_000] {
            let mut s = Summary::new(len);
            let mut model = BTreeSet::new();
            assert_eq!(s.first(), None);
            // A deterministic walk of inserts and removes touching every level boundary.
            let mut x = 12345usize;
            for step in 0..2000 {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let i = match step % 5 {
                    0 => 0,
                    1 => len - 1,
                    _ => (x >> 33) % len,
                };
                if x & 1 == 0 {
                    s.insert(i);
                    model.insert(i);
                } else {
                    s.remove(i);
                    model.remove(&i);
                }
                assert_eq!(s.first(), model.first().copied());
                assert_eq!(s.contains(i), model.contains(&i));
            }
            s.check_invariants();
        }
    }
}
