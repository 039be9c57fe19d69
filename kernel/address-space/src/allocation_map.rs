//! [`WideMap`]: the allocations of a space by base address — an ordered map built for lookups
//! with few cache misses (a B+ tree of wide nodes, in the spirit of Linux's maple tree).
//!
//! `VirtualQuery`, and every other call, starts by finding the allocation that contains an
//! address: the greatest base ≤ the address. With 100,000 live allocations looked up in random
//! order, a binary tree or a narrow B-tree (std's `BTreeMap`: 11 keys per node, keys next to
//! 11 values, edges after them) costs a cache miss or two per level over five or six levels. Here:
//!
//! * keys are allocation bases, multiples of 64 KiB below 2^47 − 64 KiB (the user range), stored
//!   as 32-bit numbers of 64 KiB blocks ([`Unit`]): sixteen to a cache line, compared as signed
//!   numbers (SSE2 has no unsigned 32-bit comparison);
//! * nodes are cache-line aligned and their key array comes first. Inner nodes hold only keys
//!   and child numbers: up to [`INNER`] children, the separators in two cache lines, the child
//!   numbers in the next two. At 100,000 entries the tree has three inner levels, whose few
//!   hundred nodes (320 bytes each) stay in the CPU's caches;
//! * a leaf is 128 bytes (an aligned pair of cache lines, which the CPU's adjacent-line
//!   prefetcher fetches together): up to [`LEAF`] keys in the first line, the numbers of their
//!   values' slots in the second. Its length is the count of its keys below the padding; its
//!   links to its neighbours live in an array of their own, read only when a lookup steps to a
//!   neighbour;
//! * key arrays are full-size and padded with `i32::MAX` past their length, so a node is searched
//!   by counting the keys ≤ the address over the whole array: a fixed number of independent
//!   comparisons (a bisection where there is no SSE, as in the kernel), no branch to
//!   mispredict, and no read of the node's length ([`count_le`]);
//! * the values (the `Allocation` records) live in a slab of their own, so a lookup touches the
//!   inner levels, one line of a leaf's keys, the line of its slot numbers next to it and then
//!   one value.
//!
//! Leaves are linked both ways, so a floor lookup that falls before a leaf's first key, or whose
//! next key (the next allocation after free memory: [`WideMap::floor_and_next`]) lies past the
//! leaf's last, steps to a neighbour instead of climbing back up or descending again.
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

/// Keys per leaf (16 × 4 bytes: one cache line).
pub(crate) const LEAF: usize = 16;
/// Children per inner node (separators: 32 × 4 bytes, two cache lines).
pub(crate) const INNER: usize = 32;
/// Keys are multiples of 2^`UNIT_SHIFT` (the 64 KiB allocation granularity).
const UNIT_SHIFT: u32 = 16;

/// A key as the nodes store it: the key divided by 64 KiB.
type Unit = i32;
/// The height no tree reaches: it would need at least 16^15 leaves at one time.
const MAX_HEIGHT: usize = 16;

const NIL: u32 = u32::MAX;

/// A leaf: its keys, then its slot numbers, a cache line each.
#[derive(Debug, Clone)]
#[repr(C, align(128))]
struct Leaf {
    /// Sorted; [`PAD`] past the length.
    keys: [Unit; LEAF],
    slots: [u32; LEAF],
}

/// A leaf's neighbours in key order ([`NIL`] at the ends).
#[derive(Debug, Clone, Copy)]
struct Links {
    prev: u32,
    next: u32,
}

impl Leaf {
    const EMPTY: Leaf = Leaf { keys: [PAD; LEAF], slots: [0; LEAF] };

    /// The number of keys.
    #[inline]
    fn len(&self) -> usize {
        count_le(&self.keys, PAD - 1)
    }

    /// The number of keys ≤ `key` (< [`PAD`], so the padding is never counted).
    #[inline]
    fn count_le(&self, key: Unit) -> usize {
        debug_assert!(key < PAD);
        count_le(&self.keys, key)
    }

    /// The number of keys < `key`.
    #[inline]
    fn count_lt(&self, key: Unit) -> usize {
        if key == 0 { 0 } else { self.count_le(key - 1) }
    }
}

/// The key value of unused slots (never a key: see [`WideMap::insert`]).
const PAD: Unit = Unit::MAX;

/// The node key of `key` if `key` can be a key (a multiple of 64 KiB below `PAD`'s; never
/// negative).
#[inline]
fn unit_of(key: u64) -> Option<Unit> {
    if !key.is_multiple_of(1 << UNIT_SHIFT) {
        return None;
    }
    Unit::try_from(key >> UNIT_SHIFT).ok().filter(|&u| u != PAD)
}

/// The greatest node key whose key is ≤ `key` (keys are multiples of 64 KiB, so the floor of
/// `key` is the floor of this), capped below `PAD`.
#[inline]
fn unit_floor(key: u64) -> Unit {
    Unit::try_from(key >> UNIT_SHIFT).map_or(PAD - 1, |u| u.min(PAD - 1))
}

/// The key of node key `u`.
#[inline]
const fn key_of(u: Unit) -> u64 {
    (u as u32 as u64) << UNIT_SHIFT
}

/// The number of elements ≤ `key` of the sorted array `a` (`N` a power of two, at least 16).
///
/// With SSE2 (the host): every element is compared — one round of independent vector
/// comparisons and no branch: a bisection's steps each wait for the previous load, which costs
/// more at these widths (measured on the host). Per 16-element chunk (one cache line) the
/// comparisons make a mask whose set bits are a prefix (the array is sorted), so the chunk's
/// count is its trailing ones. The chunks are compared at once rather than picked by their last
/// elements first, so that an inner node's two key lines load in parallel: picking first made
/// the second line's load wait for the first's, one more dependent load per level (measured in
/// the crate README).
///
/// Without (the kernel is built for `x86_64-unknown-none`, which has no SSE): the same code
/// becomes about 155 scalar instructions for 16 keys, against about 20 for a branch-free
/// bisection ([`count_le_bisect`]); under emulation instructions, not load latency, are the cost.
#[inline]
fn count_le<const N: usize>(a: &[Unit; N], key: Unit) -> usize {
    if cfg!(target_feature = "sse2") { count_le_mask(a, key) } else { count_le_bisect(a, key) }
}

/// [`count_le`] by vector comparisons (see there).
#[inline]
fn count_le_mask<const N: usize>(a: &[Unit; N], key: Unit) -> usize {
    let mut n = 0;
    for c in a.as_chunks::<16>().0 {
        let mut le = 0u32;
        for (j, &x) in c.iter().enumerate() {
            le |= u32::from(x <= key) << j;
        }
        n += le.trailing_ones() as usize;
    }
    n
}

/// [`count_le`] by bisection: log2(N) + 1 comparisons, each a conditional move.
#[inline]
fn count_le_bisect<const N: usize>(a: &[Unit; N], key: Unit) -> usize {
    debug_assert!(N.is_power_of_two());
    // Invariant: a[..n] ≤ key, and a[n + 2 × step - 1] > key if that element exists.
    let mut n = 0;
    let mut step = N / 2;
    while step > 0 {
        if a[n + step - 1] <= key {
            n += step;
        }
        step /= 2;
    }
    // a[n] is known to be above `key` unless n = N - 1 (never compared).
    n + usize::from(a[n] <= key)
}

/// An inner node: its separators, then its child numbers, then its length.
#[derive(Debug, Clone)]
#[repr(C, align(64))]
struct Inner {
    /// `seps[i]` for child `i` ≥ 1; `seps[0]` is 0 (below every key); [`PAD`] past `len`.
    seps: [Unit; INNER],
    kids: [u32; INNER],
    /// Number of children.
    len: usize,
}

impl Inner {
    const EMPTY: Inner = {
        let mut seps = [PAD; INNER];
        seps[0] = 0;
        Inner { seps, kids: [NIL; INNER], len: 0 }
    };

    /// The child whose key range holds `key` (< [`PAD`]).
    #[inline]
    fn child_for(&self, key: Unit) -> usize {
        // seps[0] = 0 ≤ key < PAD, so the count is at least 1 and at most `len`.
        count_le(&self.seps, key) - 1
    }

    /// Inserts child `kid` with separator `sep` at position `at` (≥ 1); the node must have room.
    fn insert_at(&mut self, at: usize, sep: Unit, kid: u32) {
        debug_assert!(at >= 1 && self.len < INNER);
        self.seps.copy_within(at..self.len, at + 1);
        self.kids.copy_within(at..self.len, at + 1);
        self.seps[at] = sep;
        self.kids[at] = kid;
        self.len += 1;
    }
}

/// Where the value of a key of a [`WideMap`] is kept: values do not move while their key stays
/// in the map, so a caller that looked a key up can change its value later without a second
/// descent ([`WideMap::slot_mut`]). Valid until the key is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot(u32);

/// An ordered map from `u64` keys (multiples of 64 KiB below 2^47 − 64 KiB: allocation bases) to `V`, read
/// mostly by "greatest key ≤ x" lookups.
#[derive(Debug, Clone)]
pub struct WideMap<V> {
    leaves: Vec<Leaf>,
    /// The links of `leaves[i]` at index `i`.
    links: Vec<Links>,
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
            links: alloc::vec![Links { prev: NIL, next: NIL }],
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
    fn leaf_for(&self, key: Unit) -> u32 {
        let mut node = self.root;
        for _ in 0..self.height {
            let n = &self.inners[node as usize];
            node = n.kids[n.child_for(key)];
        }
        node
    }

    fn entry(&self, leaf: u32, i: usize) -> (u64, &V) {
        let l = &self.leaves[leaf as usize];
        (key_of(l.keys[i]), &self.values[l.slots[i] as usize])
    }

    /// The leaf and position of `key`, if present.
    fn find(&self, key: u64) -> Option<(u32, usize)> {
        let u = unit_of(key)?;
        let leaf = self.leaf_for(u);
        let l = &self.leaves[leaf as usize];
        let i = l.count_lt(u);
        // Past the length the key is `PAD`, which `u` is not.
        (i < LEAF && l.keys[i] == u).then_some((leaf, i))
    }

    /// Returns the value of `key`, if present.
    pub fn get(&self, key: &u64) -> Option<&V> {
        self.find(*key).map(|(leaf, i)| self.entry(leaf, i).1)
    }

    /// Returns the value of `key` mutably, if present.
    pub fn get_mut(&mut self, key: &u64) -> Option<&mut V> {
        let (leaf, i) = self.find(*key)?;
        Some(&mut self.values[self.leaves[leaf as usize].slots[i] as usize])
    }

    /// Returns the entry with the greatest key ≤ `key`.
    pub fn floor(&self, key: u64) -> Option<(u64, &V)> {
        self.floor_slot(key).map(|(k, s)| (k, self.slot(s)))
    }

    /// Returns the key and the [`Slot`] of the entry with the greatest key ≤ `key`:
    /// [`floor_and_next`](Self::floor_and_next) without the next key (every call starts with
    /// this lookup), and a handle to the value that needs no second lookup to change it.
    pub(crate) fn floor_slot(&self, key: u64) -> Option<(u64, Slot)> {
        let u = unit_floor(key);
        let leaf = self.leaf_for(u);
        let l = &self.leaves[leaf as usize];
        let i = l.count_le(u);
        if i > 0 {
            return Some((key_of(l.keys[i - 1]), Slot(l.slots[i - 1])));
        }
        let prev = self.links[leaf as usize].prev;
        (prev != NIL).then(|| {
            let p = &self.leaves[prev as usize];
            let i = p.len() - 1;
            (key_of(p.keys[i]), Slot(p.slots[i]))
        })
    }

    /// Returns the value at `slot` (of a key still in the map).
    pub(crate) fn slot(&self, slot: Slot) -> &V {
        &self.values[slot.0 as usize]
    }

    /// Returns the value at `slot` (of a key still in the map) mutably.
    pub(crate) fn slot_mut(&mut self, slot: Slot) -> &mut V {
        &mut self.values[slot.0 as usize]
    }

    /// Returns the entry with the greatest key ≤ `key` and the smallest key above that entry's
    /// (the smallest key of all if there is no such entry), in one descent. If the floor's key
    /// is not `key` itself, the next key is also the smallest ≥ `key`.
    #[inline]
    pub fn floor_and_next(&self, key: u64) -> (Option<(u64, &V)>, Option<u64>) {
        let u = unit_floor(key);
        let leaf = self.leaf_for(u);
        let l = &self.leaves[leaf as usize];
        let i = l.count_le(u);
        // Key i is the next one unless it is the padding: then the next leaf's first is.
        let next = if i < LEAF && l.keys[i] != PAD {
            Some(key_of(l.keys[i]))
        } else {
            let after = self.links[leaf as usize].next;
            (after != NIL).then(|| key_of(self.leaves[after as usize].keys[0]))
        };
        if i > 0 {
            return (Some(self.entry(leaf, i - 1)), next);
        }
        // Every key of this leaf is above `key`; the previous leaf's are below (never empty).
        let prev = self.links[leaf as usize].prev;
        ((prev != NIL).then(|| self.entry(prev, self.leaves[prev as usize].len() - 1)), next)
    }

    /// Descends to `key`'s leaf, recording (inner node, child index) per level.
    fn path_to(&self, key: Unit, path: &mut [(u32, usize); MAX_HEIGHT]) -> u32 {
        let mut node = self.root;
        for p in path.iter_mut().take(self.height) {
            let n = &self.inners[node as usize];
            let c = n.child_for(key);
            *p = (node, c);
            node = n.kids[c];
        }
        node
    }

    /// A new empty leaf, linked to nothing.
    fn new_leaf(&mut self) -> u32 {
        let leaf = arena_put(&mut self.leaves, &mut self.free_leaves, Leaf::EMPTY);
        let unlinked = Links { prev: NIL, next: NIL };
        match self.links.get_mut(leaf as usize) {
            Some(l) => *l = unlinked,
            None => self.links.push(unlinked),
        }
        leaf
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
    /// If `key` is not a multiple of 64 KiB below 2^47 − 64 KiB (every allocation base is).
    pub fn insert(&mut self, key: u64, value: V) -> Option<V> {
        let key = unit_of(key).unwrap_or_else(|| panic!("allocation map: key {key:#x} (kernel bug)"));
        // The path down is needed only to split: found again then (splits are rare).
        let leaf = self.leaf_for(key);
        let l = &self.leaves[leaf as usize];
        let i = l.count_lt(key);
        if i < LEAF && l.keys[i] == key {
            let slot = l.slots[i] as usize;
            return Some(core::mem::replace(&mut self.values[slot], value));
        }
        let len = l.len();
        let slot = self.new_value(value);
        self.len += 1;
        if len < LEAF {
            Self::leaf_insert(&mut self.leaves[leaf as usize], len, i, key, slot);
            return None;
        }
        // Split the full leaf: the upper half moves to a new right neighbour. A key appended
        // past the last leaf (allocations placed upwards) takes only the last two keys along,
        // so ascending inserts leave leaves 7/8 full behind, not half full (fewer leaves, lower
        // tree), and an insert and removal at the end cannot split and free a leaf each time;
        // only the last leaf does so, so keys arriving in descending order cannot leave a trail
        // of near-empty leaves.
        let mut path = [(NIL, 0usize); MAX_HEIGHT];
        let found = self.path_to(key, &mut path);
        debug_assert_eq!(found, leaf);
        let right = self.new_leaf();
        let after = self.links[leaf as usize].next;
        let half = if i == LEAF && after == NIL { LEAF - 2 } else { LEAF / 2 };
        let (lo, hi) = split_two(&mut self.leaves, leaf, right);
        hi.keys[..LEAF - half].copy_from_slice(&lo.keys[half..]);
        hi.slots[..LEAF - half].copy_from_slice(&lo.slots[half..]);
        lo.keys[half..].fill(PAD);
        if i <= half {
            Self::leaf_insert(lo, half, i, key, slot);
        } else {
            Self::leaf_insert(hi, LEAF - half, i - half, key, slot);
        }
        let sep = hi.keys[0];
        self.links[right as usize] = Links { prev: leaf, next: after };
        self.links[leaf as usize].next = right;
        if after != NIL {
            self.links[after as usize].prev = right;
        }
        self.insert_child(&path, sep, right);
        None
    }

    /// Inserts `key` with `slot` at position `i` of leaf `l` of `len` (< [`LEAF`]) keys.
    fn leaf_insert(l: &mut Leaf, len: usize, i: usize, key: Unit, slot: u32) {
        // By hand, not `copy_within`: a few elements at most, and usually none (bases placed
        // upwards append), where a call to `memmove` would cost more than the moves.
        for j in (i..len).rev() {
            l.keys[j + 1] = l.keys[j];
            l.slots[j + 1] = l.slots[j];
        }
        l.keys[i] = key;
        l.slots[i] = slot;
    }

    /// Links the new node `kid` (keys ≥ `sep`) right after the node reached through the last
    /// entry of `path`, splitting full inner nodes upwards and growing a new root if needed.
    fn insert_child(&mut self, path: &[(u32, usize); MAX_HEIGHT], mut sep: Unit, mut kid: u32) {
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
        let key = unit_of(*key)?;
        let leaf = self.leaf_for(key);
        let l = &mut self.leaves[leaf as usize];
        let i = l.count_lt(key);
        if i >= LEAF || l.keys[i] != key {
            return None;
        }
        let len = l.len();
        let slot = l.slots[i];
        for j in i + 1..len {
            l.keys[j - 1] = l.keys[j];
            l.slots[j - 1] = l.slots[j];
        }
        l.keys[len - 1] = PAD;
        let emptied = len == 1;
        self.free_values.push(slot);
        self.len -= 1;
        if emptied && self.height > 0 {
            // The path down, found again (the leaf is still linked in its parent).
            let mut path = [(NIL, 0usize); MAX_HEIGHT];
            let found = self.path_to(key, &mut path);
            debug_assert_eq!(found, leaf);
            self.unlink_leaf(leaf);
            self.remove_child(&path);
        }
        Some(self.values[slot as usize])
    }

    fn unlink_leaf(&mut self, leaf: u32) {
        let Links { prev, next } = self.links[leaf as usize];
        if prev != NIL {
            self.links[prev as usize].next = next;
        } else {
            self.first_leaf = next;
        }
        if next != NIL {
            self.links[next as usize].prev = prev;
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
    pub fn keys(&self) -> impl Iterator<Item = u64> + '_ {
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
        let mut stack = alloc::vec![(self.root, self.height, 0, PAD, true)];
        let mut leaves_in_order = Vec::new();
        let mut count = 0;
        while let Some((node, h, lo, hi, open_hi)) = stack.pop() {
            if h == 0 {
                let l = &self.leaves[node as usize];
                let len = l.len();
                assert!(len > 0 || (self.height == 0 && self.len == 0), "empty leaf in a tree");
                for w in l.keys[..len].windows(2) {
                    assert!(w[0] < w[1]);
                }
                assert!(l.keys[len..].iter().all(|&k| k == PAD), "leaf padding");
                for &k in &l.keys[..len] {
                    assert!(k >= lo && (open_hi || k < hi), "key {k} outside [{lo}, {hi})");
                }
                count += len;
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
            let l = self.links[leaf as usize];
            assert_eq!(l.prev, if i == 0 { NIL } else { leaves_in_order[i - 1] });
            assert_eq!(l.next, leaves_in_order.get(i + 1).copied().unwrap_or(NIL));
        }
        assert_eq!(self.values.len() - self.free_values.len(), self.len);
        assert_eq!(self.links.len(), self.leaves.len());
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
    type Item = (u64, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        while self.leaf != NIL {
            let l = &self.map.leaves[self.leaf as usize];
            if self.i < LEAF && l.keys[self.i] != PAD {
                self.i += 1;
                return Some((key_of(l.keys[self.i - 1]), &self.map.values[l.slots[self.i - 1] as usize]));
            }
            self.leaf = self.map.links[self.leaf as usize].next;
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

    /// Applies `ops` to a `WideMap` and a `BTreeMap`, comparing every answer and the invariants
    /// (keys: the operations' numbers of 64 KiB blocks; probes also between keys).
    fn against_btreemap(ops: &[(u8, u64)]) {
        let mut m: WideMap<u64> = WideMap::new();
        let mut r: BTreeMap<u64, u64> = BTreeMap::new();
        for (step, &(op, block)) in ops.iter().enumerate() {
            let key = block << UNIT_SHIFT;
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
            let between = key + ((step as u64 * 0x1234) & 0xFFFF);
            for p in [key, probe, between] {
                let floor = r.range(..=p).next_back().map(|(k, v)| (*k, *v));
                assert_eq!(m.floor(p).map(|(k, v)| (k, *v)), floor);
                assert_eq!(m.get(&p), r.get(&p));
                // The one-descent pair: the floor and the key after it.
                let next = match floor {
                    Some((k, _)) => r.range(k + 1..).next().map(|(k, _)| *k),
                    None => r.keys().next().copied(),
                };
                let (f, n) = m.floor_and_next(p);
                assert_eq!((f.map(|(k, v)| (k, *v)), n), (floor, next));
            }
        }
        m.check();
        assert!(m.iter().map(|(k, v)| (k, *v)).eq(r.iter().map(|(k, v)| (*k, *v))));
    }

    /// A slot stays its key's while other keys come and go (splits, emptied leaves).
    #[test]
    fn a_slot_follows_its_value() {
        let mut m: WideMap<u64> = WideMap::new();
        for i in 0..200u64 {
            m.insert((i * 2) << UNIT_SHIFT, i);
        }
        let key = 100 << UNIT_SHIFT;
        let (k, slot) = m.floor_slot(key + 0x1234).unwrap();
        assert_eq!((k, *m.slot(slot)), (key, 50));
        for i in 0..200u64 {
            m.insert((i * 2 + 1) << UNIT_SHIFT, 1000 + i);
            if i != 50 {
                m.remove(&((i * 2) << UNIT_SHIFT));
            }
        }
        *m.slot_mut(slot) += 1;
        assert_eq!(m.get(&key), Some(&51));
        assert_eq!(m.floor_slot(key), Some((key, slot)));
        m.check();
    }

    /// The two ways of counting agree (the host runs the vector one, the kernel the bisection):
    /// every count from 0 to N, padded arrays, keys at the ends of the range.
    #[test]
    fn count_le_by_bisection_and_by_mask_agree() {
        fn both<const N: usize>(a: &[Unit; N], key: Unit) -> usize {
            let (m, b) = (count_le_mask(a, key), count_le_bisect(a, key));
            assert_eq!(m, b, "{a:?} key {key}");
            assert_eq!(m, a.iter().filter(|&&x| x <= key).count());
            m
        }
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        for len in 0..=32usize {
            for _ in 0..50 {
                let mut a = [PAD; 32];
                let mut k = 0;
                for x in a.iter_mut().take(len) {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    k += 1 + (rng % 3) as Unit;
                    *x = k;
                }
                for key in [0, 1, k / 2, k - 1, k, k + 1, PAD - 1] {
                    both(&a, key);
                    let mut h = [PAD; 16];
                    let n = len.min(16);
                    h[..n].copy_from_slice(&a[..n]);
                    both(&h, key);
                }
                assert_eq!(both(&a, PAD - 1), len);
            }
        }
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
        assert_eq!(m.floor_and_next(0).1, None);
    }

    /// Keys at both ends of the user range (the top one just below the padding's block number),
    /// and probes past the last key and between blocks.
    #[test]
    fn keys_at_the_ends_of_the_user_range() {
        let top = 0x7FFF_FFFE_0000u64;
        let mut m: WideMap<u64> = WideMap::new();
        for k in [0x1_0000, top, top - 0x1_0000] {
            assert_eq!(m.insert(k, k), None);
        }
        m.check();
        assert_eq!(m.floor(u64::MAX).map(|(k, _)| k), Some(top));
        assert_eq!(m.floor(top + 0xFFFF).map(|(k, _)| k), Some(top));
        assert_eq!(m.floor_and_next(top - 1), (Some((top - 0x1_0000, &(top - 0x1_0000))), Some(top)));
        assert_eq!(m.floor_and_next(0xFFFF), (None, Some(0x1_0000)));
        assert_eq!(m.floor_and_next(top).1, None);
        assert_eq!(m.get(&(top + 0x1000)), None);
        assert_eq!(m.remove(&u64::MAX), None);
        assert_eq!(m.remove(&top), Some(top));
        assert_eq!(m.floor(u64::MAX).map(|(k, _)| k), Some(top - 0x1_0000));
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

        /// The vector count (all chunks at once) and the bisection agree with a plain count on
        /// any sorted, padded node of either width, for keys anywhere (between, on, around and
        /// past its elements).
        #[test]
        fn node_searches_agree(keys in prop::collection::btree_set(0..PAD - 1, 0..=32),
                               probes in prop::collection::vec(0..PAD, 1..40)) {
            let keys: Vec<Unit> = keys.into_iter().collect();
            let mut inner = [PAD; INNER];
            inner[..keys.len()].copy_from_slice(&keys);
            let mut leaf = [PAD; LEAF];
            let n = keys.len().min(LEAF);
            leaf[..n].copy_from_slice(&keys[..n]);
            let near = keys.iter().flat_map(|&k| [k.saturating_sub(1), k, k + 1]);
            for key in probes.into_iter().map(|p| p.min(PAD - 1)).chain(near) {
                let plain = |a: &[Unit]| a.iter().filter(|&&x| x <= key).count();
                prop_assert_eq!(count_le_mask(&inner, key), plain(&inner));
                prop_assert_eq!(count_le_bisect(&inner, key), plain(&inner));
                prop_assert_eq!(count_le_mask(&leaf, key), plain(&leaf));
                prop_assert_eq!(count_le_bisect(&leaf, key), plain(&leaf));
            }
        }
    }
}
