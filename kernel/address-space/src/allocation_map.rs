//! [`WideMap`]: the allocations of a space by base address — an ordered map built for lookups
//! with few cache misses (a B+ tree of wide nodes, in the spirit of Linux's maple tree).
//!
//! `VirtualQuery`, and every other call, starts by finding the allocation that contains an
//! address: the greatest base ≤ the address. With 100,000 live allocations looked up in random
//! order, a binary tree or a narrow B-tree (std's `BTreeMap`: 11 keys per node, keys next to
//! 11 values, edges after them) costs a cache miss or two per level over five or six levels. Here:
//!
//! * inner nodes hold only keys and child numbers: up to [`INNER`] children, the separator keys in
//!   one 256-byte array. At 100,000 entries the tree has three inner levels, whose few hundred
//!   nodes (about 400 bytes each) stay in the CPU's caches;
//! * leaves hold up to [`LEAF`] keys (two cache lines) and the numbers of their values' slots;
//! * key arrays are full-size and padded with `u64::MAX` past their length, so a node is searched
//!   by counting the keys ≤ the address over the whole array: a fixed number of independent
//!   comparisons, no branch to mispredict ([`count_le`]);
//! * the values (the `Allocation` records) live in a slab of their own, so a lookup touches the
//!   inner levels, one leaf's keys and then one value.
//!
//! Leaves are linked both ways, so the floor lookup that falls before a leaf's first key and the
//! ceiling lookup past its last key (the next allocation after free memory) step to a
//! neighbour instead of climbing back up.
//!
//! Separators: child `i` of an inner node (`i` ≥ 1) holds keys ≥ `sep[i]` and child `i - 1`
//! keys < `sep[i]`. A separator is the first key of the right half when a node splits and is
//! never updated on removal, so it may lie below its child's smallest key; every search above
//! relies only on the two inequalities, which removals keep.
//!
//! Removal frees a leaf or an inner node when it becomes empty and shortens the tree when the
//! root is left with one child; it does not merge half-empty siblings. The nodes therefore
//! follow the peak number of entries, as [`crate::placement::GapTree`]'s arena does, and the
//! height stays that of the peak: reaching height h takes a root split, which takes a full
//! root, so at least `(INNER/2)^(h-1)` leaves at one time.
//!
//! Nodes, leaves and value slots are `Vec` arenas with free lists: no allocation per operation
//! once the arenas have grown. No recursion; searches are bounded by the height (at most
//! [`MAX_HEIGHT`]).

use alloc::vec::Vec;
use core::ops::Index;

/// Keys per leaf (16 × 8 bytes: two cache lines).
pub(crate) const LEAF: usize = 16;
/// Children per inner node (separator keys: 32 × 8 bytes).
pub(crate) const INNER: usize = 32;
/// The height no tree reaches: it would need at least 16^15 leaves at one time.
const MAX_HEIGHT: usize = 16;

const NIL: u32 = u32::MAX;

#[derive(Debug, Clone)]
struct Leaf {
    len: usize,
    prev: u32,
    next: u32,
    /// Sorted; `u64::MAX` past `len`.
    keys: [u64; LEAF],
    slots: [u32; LEAF],
}

impl Leaf {
    const EMPTY: Leaf = Leaf { len: 0, prev: NIL, next: NIL, keys: [PAD; LEAF], slots: [0; LEAF] };

    /// The number of keys ≤ `key`.
    #[inline]
    fn count_le(&self, key: u64) -> usize {
        count_le(&self.keys, key).min(self.len)
    }

    /// The number of keys < `key`.
    #[inline]
    fn count_lt(&self, key: u64) -> usize {
        if key == 0 { 0 } else { self.count_le(key - 1) }
    }
}

/// The key value of unused slots (never a key: see [`WideMap::insert`]).
const PAD: u64 = u64::MAX;

/// The number of elements ≤ `key` of the sorted array `a` (`N` a multiple of 8): the last
/// elements of the 8-element chunks pick the chunk, then its 8 elements are counted. Two rounds
/// of independent comparisons and no branch: a bisection's steps each wait for the previous load,
/// which costs more at these widths (measured).
#[inline]
fn count_le<const N: usize>(a: &[u64; N], key: u64) -> usize {
    let mut chunk = 0;
    for j in 1..N / 8 {
        chunk += usize::from(a[8 * j - 1] <= key);
    }
    let c = &a[8 * chunk..8 * chunk + 8];
    let mut n = 8 * chunk;
    for &x in c {
        n += usize::from(x <= key);
    }
    n
}

#[derive(Debug, Clone)]
struct Inner {
    /// Number of children.
    len: usize,
    /// `seps[i]` for child `i` ≥ 1; `seps[0]` is 0 (below every key); `u64::MAX` past `len`.
    seps: [u64; INNER],
    kids: [u32; INNER],
}

impl Inner {
    const EMPTY: Inner = {
        let mut seps = [PAD; INNER];
        seps[0] = 0;
        Inner { len: 0, seps, kids: [NIL; INNER] }
    };

    /// The child whose key range holds `key`.
    #[inline]
    fn child_for(&self, key: u64) -> usize {
        // seps[0] = 0 ≤ key, so the count is at least 1.
        (count_le(&self.seps, key) - 1).min(self.len - 1)
    }

    /// Inserts child `kid` with separator `sep` at position `at` (≥ 1); the node must have room.
    fn insert_at(&mut self, at: usize, sep: u64, kid: u32) {
        debug_assert!(at >= 1 && self.len < INNER);
        self.seps.copy_within(at..self.len, at + 1);
        self.kids.copy_within(at..self.len, at + 1);
        self.seps[at] = sep;
        self.kids[at] = kid;
        self.len += 1;
    }
}

/// An ordered map from `u64` keys to `V`, read mostly by "greatest key ≤ x" lookups.
#[derive(Debug, Clone)]
pub struct WideMap<V> {
    leaves: Vec<Leaf>,
    inners: Vec<Inner>,
    values: Vec<V>,
    free_leaves: Vec<u32>,
    free_inners: Vec<u32>,
    free_values: Vec<u32>,
    /// The root: a leaf if `height` is 0, else an inner node.
    root: u32,
    /// Inner levels above the leaves.
    height: usize,
    first_leaf: u32,
    len: usize,
}

impl<V: Copy> Default for WideMap<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V: Copy> WideMap<V> {
    /// Creates an empty map (one empty leaf).
    pub fn new() -> Self {
        WideMap {
            leaves: alloc::vec![Leaf::EMPTY],
            inners: Vec::new(),
            values: Vec::new(),
            free_leaves: Vec::new(),
            free_inners: Vec::new(),
            free_values: Vec::new(),
            root: 0,
            height: 0,
            first_leaf: 0,
            len: 0,
        }
    }

    /// Returns the number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The leaf whose key range holds `key`.
    #[inline]
    fn leaf_for(&self, key: u64) -> u32 {
        let mut node = self.root;
        for _ in 0..self.height {
            let n = &self.inners[node as usize];
            node = n.kids[n.child_for(key)];
        }
        node
    }

    fn entry(&self, leaf: u32, i: usize) -> (u64, &V) {
        let l = &self.leaves[leaf as usize];
        (l.keys[i], &self.values[l.slots[i] as usize])
    }

    /// Returns the value of `key`, if present.
    pub fn get(&self, key: &u64) -> Option<&V> {
        let l = &self.leaves[self.leaf_for(*key) as usize];
        let i = l.count_lt(*key);
        (i < l.len && l.keys[i] == *key).then(|| &self.values[l.slots[i] as usize])
    }

    /// Returns the value of `key` mutably, if present.
    pub fn get_mut(&mut self, key: &u64) -> Option<&mut V> {
        let l = &self.leaves[self.leaf_for(*key) as usize];
        let i = l.count_lt(*key);
        if i < l.len && l.keys[i] == *key { Some(&mut self.values[l.slots[i] as usize]) } else { None }
    }

    /// Returns the entry with the greatest key ≤ `key`.
    pub fn floor(&self, key: u64) -> Option<(u64, &V)> {
        let leaf = self.leaf_for(key);
        let l = &self.leaves[leaf as usize];
        let i = l.count_le(key);
        if i > 0 {
            return Some(self.entry(leaf, i - 1));
        }
        // Every key of this leaf is above `key`; the previous leaf's are below (never empty).
        let prev = l.prev;
        (prev != NIL).then(|| self.entry(prev, self.leaves[prev as usize].len - 1))
    }

    /// Returns the entry with the smallest key ≥ `key`.
    pub fn ceil(&self, key: u64) -> Option<(u64, &V)> {
        let leaf = self.leaf_for(key);
        let l = &self.leaves[leaf as usize];
        let i = l.count_lt(key);
        if i < l.len {
            return Some(self.entry(leaf, i));
        }
        let next = l.next;
        (next != NIL).then(|| self.entry(next, 0))
    }

    /// Descends to `key`'s leaf, recording (inner node, child index) per level.
    fn path_to(&self, key: u64, path: &mut [(u32, usize); MAX_HEIGHT]) -> u32 {
        let mut node = self.root;
        for p in path.iter_mut().take(self.height) {
            let n = &self.inners[node as usize];
            let c = n.child_for(key);
            *p = (node, c);
            node = n.kids[c];
        }
        node
    }

    fn new_leaf(&mut self) -> u32 {
        arena_put(&mut self.leaves, &mut self.free_leaves, Leaf::EMPTY)
    }

    fn new_inner(&mut self) -> u32 {
        arena_put(&mut self.inners, &mut self.free_inners, Inner::EMPTY)
    }

    fn new_value(&mut self, v: V) -> u32 {
        arena_put(&mut self.values, &mut self.free_values, v)
    }

    /// Inserts `key` → `value`; returns the previous value of `key`, if any.
    ///
    /// # Panics
    ///
    /// If `key` is `u64::MAX`, the padding of the key arrays (no allocation starts there).
    pub fn insert(&mut self, key: u64, value: V) -> Option<V> {
        assert!(key != PAD, "allocation map: key u64::MAX");
        let mut path = [(NIL, 0usize); MAX_HEIGHT];
        let leaf = self.path_to(key, &mut path);
        let l = &self.leaves[leaf as usize];
        let i = l.count_lt(key);
        if i < l.len && l.keys[i] == key {
            let slot = l.slots[i] as usize;
            return Some(core::mem::replace(&mut self.values[slot], value));
        }
        let slot = self.new_value(value);
        self.len += 1;
        if self.leaves[leaf as usize].len < LEAF {
            Self::leaf_insert(&mut self.leaves[leaf as usize], i, key, slot);
            return None;
        }
        // Split the full leaf: the upper half moves to a new right neighbour. A key appended
        // past the last leaf (allocations placed upwards) takes only the last two keys along,
        // so ascending inserts leave leaves 7/8 full behind, not half full (fewer leaves, lower
        // tree), and an insert and removal at the end cannot split and free a leaf each time;
        // only the last leaf does so, so keys arriving in descending order cannot leave a trail
        // of near-empty leaves.
        let right = self.new_leaf();
        let half = if i == LEAF && self.leaves[leaf as usize].next == NIL { LEAF - 2 } else { LEAF / 2 };
        let (lo, hi) = split_two(&mut self.leaves, leaf, right);
        hi.keys[..LEAF - half].copy_from_slice(&lo.keys[half..]);
        hi.slots[..LEAF - half].copy_from_slice(&lo.slots[half..]);
        hi.len = LEAF - half;
        lo.len = half;
        lo.keys[half..].fill(PAD);
        hi.prev = leaf;
        hi.next = lo.next;
        lo.next = right;
        if i <= half {
            Self::leaf_insert(lo, i, key, slot);
        } else {
            Self::leaf_insert(hi, i - half, key, slot);
        }
        let sep = hi.keys[0];
        let after = hi.next;
        if after != NIL {
            self.leaves[after as usize].prev = right;
        }
        self.insert_child(&path, sep, right);
        None
    }

    fn leaf_insert(l: &mut Leaf, i: usize, key: u64, slot: u32) {
        l.keys.copy_within(i..l.len, i + 1);
        l.slots.copy_within(i..l.len, i + 1);
        l.keys[i] = key;
        l.slots[i] = slot;
        l.len += 1;
    }

    /// Links the new node `kid` (keys ≥ `sep`) right after the node reached through the last
    /// entry of `path`, splitting full inner nodes upwards and growing a new root if needed.
    fn insert_child(&mut self, path: &[(u32, usize); MAX_HEIGHT], mut sep: u64, mut kid: u32) {
        for level in (0..self.height).rev() {
            let (node, c) = path[level];
            if self.inners[node as usize].len < INNER {
                self.inners[node as usize].insert_at(c + 1, sep, kid);
                return;
            }
            // Split the full inner node; the separator of its right half moves up. A child
            // appended to the last node of its level takes only two along (as for leaves).
            let right = self.new_inner();
            let last = path[..=level].iter().all(|&(n, c)| c + 1 == self.inners[n as usize].len);
            let half = if last { INNER - 2 } else { INNER / 2 };
            let (lo, hi) = split_two(&mut self.inners, node, right);
            hi.seps[..INNER - half].copy_from_slice(&lo.seps[half..]);
            hi.kids[..INNER - half].copy_from_slice(&lo.kids[half..]);
            hi.len = INNER - half;
            lo.len = half;
            lo.seps[half..].fill(PAD);
            let up = hi.seps[0];
            hi.seps[0] = 0;
            if c < half {
                lo.insert_at(c + 1, sep, kid);
            } else {
                hi.insert_at(c + 1 - half, sep, kid);
            }
            sep = up;
            kid = right;
        }
        // The root split: a new root above the old one and `kid`.
        assert!(self.height + 1 < MAX_HEIGHT, "allocation map: height {} (kernel bug)", self.height + 1);
        let root = self.new_inner();
        let r = &mut self.inners[root as usize];
        r.len = 2;
        r.kids[0] = self.root;
        r.kids[1] = kid;
        r.seps[1] = sep;
        self.root = root;
        self.height += 1;
    }

    /// Removes `key`; returns its value, if it was present.
    pub fn remove(&mut self, key: &u64) -> Option<V> {
        let mut path = [(NIL, 0usize); MAX_HEIGHT];
        let leaf = self.path_to(*key, &mut path);
        let l = &mut self.leaves[leaf as usize];
        let i = l.count_lt(*key);
        if i >= l.len || l.keys[i] != *key {
            return None;
        }
        let slot = l.slots[i];
        l.keys.copy_within(i + 1..l.len, i);
        l.slots.copy_within(i + 1..l.len, i);
        l.len -= 1;
        l.keys[l.len] = PAD;
        let emptied = l.len == 0;
        self.free_values.push(slot);
        self.len -= 1;
        if emptied && self.height > 0 {
            self.unlink_leaf(leaf);
            self.remove_child(&path);
        }
        Some(self.values[slot as usize])
    }

    fn unlink_leaf(&mut self, leaf: u32) {
        let (prev, next) = (self.leaves[leaf as usize].prev, self.leaves[leaf as usize].next);
        if prev != NIL {
            self.leaves[prev as usize].next = next;
        } else {
            self.first_leaf = next;
        }
        if next != NIL {
            self.leaves[next as usize].prev = prev;
        }
        self.free_leaves.push(leaf);
    }

    /// Removes the (emptied, already freed) child reached through the last entry of `path`,
    /// freeing inner nodes that become empty and shortening the tree while its root has one
    /// child.
    fn remove_child(&mut self, path: &[(u32, usize); MAX_HEIGHT]) {
        for level in (0..self.height).rev() {
            let (node, c) = path[level];
            let n = &mut self.inners[node as usize];
            // Dropping child c with its separator keeps the key ranges of the others (for c = 0,
            // child 1 becomes child 0 and loses a separator the parent's already bounds).
            let from = c.max(1);
            n.kids.copy_within(c + 1..n.len, c);
            if from + 1 < n.len {
                n.seps.copy_within(from + 1..n.len, from);
            }
            n.len -= 1;
            n.seps[n.len.max(1)] = PAD;
            if n.len > 0 {
                break;
            }
            self.free_inners.push(node);
        }
        while self.height > 0 && self.inners[self.root as usize].len == 1 {
            let old = self.root;
            self.root = self.inners[old as usize].kids[0];
            self.free_inners.push(old);
            self.height -= 1;
        }
    }

    /// Iterates over the entries in key order.
    pub fn iter(&self) -> Iter<'_, V> {
        Iter { map: self, leaf: self.first_leaf, i: 0 }
    }

    /// Iterates over the keys in order.
    pub fn keys(&self) -> impl Iterator<Item = &u64> + '_ {
        self.iter().map(|(k, _)| k)
    }

    /// Iterates over the values in key order.
    pub fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.iter().map(|(_, v)| v)
    }

    /// Checks every structural invariant (tests).
    #[cfg(test)]
    pub(crate) fn check(&self) {
        // Key ranges: each node's keys lie in [lo, hi).
        let mut stack = alloc::vec![(self.root, self.height, 0u64, u64::MAX, true)];
        let mut leaves_in_order = Vec::new();
        let mut count = 0;
        while let Some((node, h, lo, hi, open_hi)) = stack.pop() {
            if h == 0 {
                let l = &self.leaves[node as usize];
                assert!(l.len > 0 || (self.height == 0 && self.len == 0), "empty leaf in a tree");
                for w in l.keys[..l.len].windows(2) {
                    assert!(w[0] < w[1]);
                }
                assert!(l.keys[l.len..].iter().all(|&k| k == PAD), "leaf padding");
                for &k in &l.keys[..l.len] {
                    assert!(k >= lo && (open_hi || k < hi), "key {k} outside [{lo}, {hi})");
                }
                count += l.len;
                leaves_in_order.push(node);
                continue;
            }
            let n = &self.inners[node as usize];
            assert!(n.len >= 1 && (node != self.root || n.len >= 2));
            for w in n.seps[1..n.len].windows(2) {
                assert!(w[0] < w[1]);
            }
            assert!(n.seps[0] == 0 && n.seps[n.len..].iter().all(|&k| k == PAD), "inner padding");
            // Push right to left, so leaves pop in order.
            for c in (0..n.len).rev() {
                let clo = if c == 0 { lo } else { n.seps[c] };
                let (chi, copen) = if c + 1 < n.len { (n.seps[c + 1], false) } else { (hi, open_hi) };
                assert!(clo >= lo);
                stack.push((n.kids[c], h - 1, clo, chi, copen));
            }
        }
        assert_eq!(count, self.len);
        // The links follow the tree order.
        assert_eq!(self.first_leaf, leaves_in_order[0]);
        for (i, &leaf) in leaves_in_order.iter().enumerate() {
            let l = &self.leaves[leaf as usize];
            assert_eq!(l.prev, if i == 0 { NIL } else { leaves_in_order[i - 1] });
            assert_eq!(l.next, leaves_in_order.get(i + 1).copied().unwrap_or(NIL));
        }
        assert_eq!(self.values.len() - self.free_values.len(), self.len);
    }
}

/// Stores `v` in a free slot of `arena` (or a new one) and returns the slot's number.
fn arena_put<T>(arena: &mut Vec<T>, free: &mut Vec<u32>, v: T) -> u32 {
    match free.pop() {
        Some(i) => {
            arena[i as usize] = v;
            i
        }
        None => {
            arena.push(v);
            (arena.len() - 1) as u32
        }
    }
}

/// Two distinct elements of a slice, mutably.
fn split_two<T>(v: &mut [T], a: u32, b: u32) -> (&mut T, &mut T) {
    let (a, b) = (a as usize, b as usize);
    debug_assert_ne!(a, b);
    if a < b {
        let (x, y) = v.split_at_mut(b);
        (&mut x[a], &mut y[0])
    } else {
        let (x, y) = v.split_at_mut(a);
        (&mut y[0], &mut x[b])
    }
}

/// The entries of a [`WideMap`] in key order.
pub struct Iter<'a, V> {
    map: &'a WideMap<V>,
    leaf: u32,
    i: usize,
}

impl<'a, V> Iterator for Iter<'a, V> {
    type Item = (&'a u64, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        while self.leaf != NIL {
            let l = &self.map.leaves[self.leaf as usize];
            if self.i < l.len {
                self.i += 1;
                return Some((&l.keys[self.i - 1], &self.map.values[l.slots[self.i - 1] as usize]));
            }
            self.leaf = l.next;
            self.i = 0;
        }
        None
    }
}

impl<V: Copy> Index<&u64> for WideMap<V> {
    type Output = V;

    /// # Panics
    ///
    /// If `key` is absent.
    fn index(&self, key: &u64) -> &V {
        self.get(key).expect("allocation map: no entry for the key")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeMap;
    use proptest::prelude::*;

    /// Applies `ops` to a `WideMap` and a `BTreeMap`, comparing every answer and the invariants.
    fn against_btreemap(ops: &[(u8, u64)]) {
        let mut m: WideMap<u64> = WideMap::new();
        let mut r: BTreeMap<u64, u64> = BTreeMap::new();
        for (step, &(op, key)) in ops.iter().enumerate() {
            match op % 4 {
                0 | 1 => assert_eq!(m.insert(key, key ^ step as u64), r.insert(key, key ^ step as u64)),
                2 => assert_eq!(m.remove(&key), r.remove(&key)),
                _ => {
                    if let Some(v) = m.get_mut(&key) {
                        *v += 1;
                    }
                    if let Some(v) = r.get_mut(&key) {
                        *v += 1;
                    }
                }
            }
            assert_eq!(m.len(), r.len());
            let probe = key.wrapping_add(step as u64 % 3).wrapping_sub(1);
            for p in [key, probe] {
                assert_eq!(m.floor(p).map(|(k, v)| (k, *v)), r.range(..=p).next_back().map(|(k, v)| (*k, *v)));
                assert_eq!(m.ceil(p).map(|(k, v)| (k, *v)), r.range(p..).next().map(|(k, v)| (*k, *v)));
                assert_eq!(m.get(&p), r.get(&p));
            }
        }
        m.check();
        assert!(m.iter().map(|(k, v)| (*k, *v)).eq(r.iter().map(|(k, v)| (*k, *v))));
    }

    /// Grows to a few thousand keys (several inner levels: splits of leaves, inner nodes and
    /// the root), then empties in a scattered order (emptied leaves, inner nodes, root collapse).
    #[test]
    fn grows_and_shrinks_like_a_btreemap() {
        let n = 6000u64;
        let mut m: WideMap<u64> = WideMap::new();
        let mut r = BTreeMap::new();
        for i in 0..n {
            let k = (i * 7919) % n * 0x10000;
            m.insert(k, i);
            r.insert(k, i);
        }
        m.check();
        assert!(m.height >= 2, "height {}", m.height);
        for i in 0..n {
            let k = (i * 104_729) % n * 0x10000;
            assert_eq!(m.remove(&k), r.remove(&k));
            if i % 500 == 0 {
                m.check();
                assert!(m.values().eq(r.values()));
            }
            assert_eq!(m.floor(k + 5).map(|(k, _)| k), r.range(..=k + 5).next_back().map(|(k, _)| *k));
        }
        m.check();
        assert_eq!((m.len(), m.height), (0, 0));
        assert_eq!(m.floor(u64::MAX), None);
        assert_eq!(m.ceil(0), None);
    }

    /// Keys inserted in ascending order fill their leaves and inner nodes (the last one of
    /// each level excepted); descending ones leave them at least half full.
    #[test]
    fn ascending_inserts_fill_the_nodes() {
        let n = 20_000u64;
        let mut m: WideMap<u64> = WideMap::new();
        for k in 0..n {
            m.insert(k * 0x10000, k);
        }
        m.check();
        let live_leaves = m.leaves.len() - m.free_leaves.len();
        assert_eq!(live_leaves, (n as usize - 2).div_ceil(LEAF - 2));
        let mut d: WideMap<u64> = WideMap::new();
        for k in (0..n).rev() {
            d.insert(k * 0x10000, k);
        }
        d.check();
        assert!(d.leaves.len() <= 2 * (n as usize).div_ceil(LEAF) + 1, "{} leaves", d.leaves.len());
        assert!(m.height <= d.height);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Random operations on few distinct keys (many hits, removals down to empty) and on
        /// many (deep trees).
        #[test]
        fn behaves_like_a_btreemap(narrow in prop::collection::vec((0u8..4, 0u64..40), 0..400),
                                   wide in prop::collection::vec((0u8..3, 0u64..5000), 0..3000)) {
            against_btreemap(&narrow);
            against_btreemap(&wide);
        }
    }
}
