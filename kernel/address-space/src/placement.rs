//! [`GapTree`]: the free address ranges of a space, for O(log n) placement.
//!
//! Reservations occupy whole 64 KiB *blocks* (an allocation's unusable tail up to the next 64 KiB
//! boundary belongs to nobody, but nothing can be placed there: win32-semantics §1.2), so the
//! free space is a set of *gaps*, runs of free blocks, kept in a treap (a randomised balanced
//! binary search tree) keyed by start block. Each node also stores the largest gap length in its
//! subtree, which gives:
//!
//! * lowest fit: descend left whenever the left subtree has a large enough gap — O(log n);
//! * highest fit (`MEM_TOP_DOWN`): the mirror image — O(log n);
//! * the gap containing a block (placement at a requested address): O(log n).
//!
//! Taking space from a gap or giving it back changes at most one key in place (which keeps the
//! key order, since gaps never overlap) plus at most one insertion or removal, each O(log n)
//! expected. Nodes live in a `Vec` arena with a free list: no allocation per operation once the
//! arena has grown.

use alloc::vec::Vec;

const NIL: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct Node {
    start: u64,
    len: u64,
    max: u64,
    prio: u32,
    left: u32,
    right: u32,
}

/// The free gaps of an address space, in 64 KiB blocks.
#[derive(Debug, Clone)]
pub struct GapTree {
    nodes: Vec<Node>,
    free: Vec<u32>,
    root: u32,
    seed: u64,
    count: usize,
}

impl GapTree {
    /// Creates a tree with one gap `[start, end)` (blocks); empty if `start >= end`.
    pub fn new(start: u64, end: u64) -> Self {
        let mut t = GapTree { nodes: Vec::new(), free: Vec::new(), root: NIL, seed: 0x9E37_79B9_7F4A_7C15, count: 0 };
        if start < end {
            t.insert(start, end - start);
        }
        t
    }

    /// Returns the number of gaps.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Returns `true` if there is no free block.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn rand(&mut self) -> u32 {
        // xorshift64*: priorities only need to be independent of the keys.
        self.seed ^= self.seed >> 12;
        self.seed ^= self.seed << 25;
        self.seed ^= self.seed >> 27;
        (self.seed.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32
    }

    #[inline]
    fn max_of(&self, n: u32) -> u64 {
        if n == NIL { 0 } else { self.nodes[n as usize].max }
    }

    #[inline]
    fn fix(&mut self, n: u32) {
        let node = self.nodes[n as usize];
        let m = node.len.max(self.max_of(node.left)).max(self.max_of(node.right));
        self.nodes[n as usize].max = m;
    }

    /// Splits `t` into (keys < key, keys >= key).
    fn split(&mut self, t: u32, key: u64) -> (u32, u32) {
        if t == NIL {
            return (NIL, NIL);
        }
        if self.nodes[t as usize].start < key {
            let (l, r) = self.split(self.nodes[t as usize].right, key);
            self.nodes[t as usize].right = l;
            self.fix(t);
            (t, r)
        } else {
            let (l, r) = self.split(self.nodes[t as usize].left, key);
            self.nodes[t as usize].left = r;
            self.fix(t);
            (l, t)
        }
    }

    /// Merges `a` and `b` where every key of `a` is below every key of `b`.
    fn merge(&mut self, a: u32, b: u32) -> u32 {
        if a == NIL {
            return b;
        }
        if b == NIL {
            return a;
        }
        if self.nodes[a as usize].prio > self.nodes[b as usize].prio {
            let r = self.merge(self.nodes[a as usize].right, b);
            self.nodes[a as usize].right = r;
            self.fix(a);
            a
        } else {
            let l = self.merge(a, self.nodes[b as usize].left);
            self.nodes[b as usize].left = l;
            self.fix(b);
            b
        }
    }

    /// Inserts the gap `[start, start + len)`; it must not overlap or touch another gap's key.
    pub fn insert(&mut self, start: u64, len: u64) {
        debug_assert!(len > 0);
        let node = Node { start, len, max: len, prio: self.rand(), left: NIL, right: NIL };
        let n = match self.free.pop() {
            Some(i) => {
                self.nodes[i as usize] = node;
                i
            }
            None => {
                self.nodes.push(node);
                (self.nodes.len() - 1) as u32
            }
        };
        let (l, r) = self.split(self.root, start);
        let l = self.merge(l, n);
        self.root = self.merge(l, r);
        self.count += 1;
    }

    /// Removes the gap starting at `start` (which must exist).
    pub fn remove(&mut self, start: u64) {
        let (l, r) = self.split(self.root, start);
        let (m, r) = self.split(r, start + 1);
        debug_assert!(m != NIL && self.nodes[m as usize].start == start, "gap tree: no gap at {start}");
        self.free.push(m);
        self.root = self.merge(l, r);
        self.count -= 1;
    }

    /// Changes the gap starting at `old_start` to `[new_start, new_start + new_len)`, which must
    /// keep it between its neighbours (so the tree order holds).
    pub fn modify(&mut self, old_start: u64, new_start: u64, new_len: u64) {
        fn rec(t: &mut GapTree, n: u32, old: u64, new_start: u64, new_len: u64) {
            assert!(n != NIL, "gap tree: no gap at {old}");
            let s = t.nodes[n as usize].start;
            if s == old {
                t.nodes[n as usize].start = new_start;
                t.nodes[n as usize].len = new_len;
            } else if old < s {
                rec(t, t.nodes[n as usize].left, old, new_start, new_len);
            } else {
                rec(t, t.nodes[n as usize].right, old, new_start, new_len);
            }
            t.fix(n);
        }
        rec(self, self.root, old_start, new_start, new_len);
    }

    /// Returns the gap `(start, len)` with the greatest start `<= block`, if any.
    pub fn floor(&self, block: u64) -> Option<(u64, u64)> {
        let mut n = self.root;
        let mut best = None;
        while n != NIL {
            let node = &self.nodes[n as usize];
            if node.start <= block {
                best = Some((node.start, node.len));
                n = node.right;
            } else {
                n = node.left;
            }
        }
        best
    }

    /// Returns the gap with the smallest start `>= block`, if any.
    pub fn ceil(&self, block: u64) -> Option<(u64, u64)> {
        let mut n = self.root;
        let mut best = None;
        while n != NIL {
            let node = &self.nodes[n as usize];
            if node.start >= block {
                best = Some((node.start, node.len));
                n = node.left;
            } else {
                n = node.right;
            }
        }
        best
    }

    /// Returns the lowest gap `(start, len)` with `len >= need`.
    pub fn lowest_fit(&self, need: u64) -> Option<(u64, u64)> {
        let mut n = self.root;
        if self.max_of(n) < need {
            return None;
        }
        loop {
            let node = &self.nodes[n as usize];
            if self.max_of(node.left) >= need {
                n = node.left;
            } else if node.len >= need {
                return Some((node.start, node.len));
            } else {
                n = node.right;
            }
        }
    }

    /// Returns the highest gap `(start, len)` with `len >= need`.
    pub fn highest_fit(&self, need: u64) -> Option<(u64, u64)> {
        let mut n = self.root;
        if self.max_of(n) < need {
            return None;
        }
        loop {
            let node = &self.nodes[n as usize];
            if self.max_of(node.right) >= need {
                n = node.right;
            } else if node.len >= need {
                return Some((node.start, node.len));
            } else {
                n = node.left;
            }
        }
    }

    /// Marks `[start, start + len)` used; it must lie inside one gap.
    pub fn take(&mut self, start: u64, len: u64) {
        let (gs, gl) = self.floor(start).expect("gap tree: taking outside every gap");
        let ge = gs + gl;
        let end = start + len;
        debug_assert!(end <= ge, "gap tree: taking past a gap");
        match (gs == start, ge == end) {
            (true, true) => self.remove(gs),
            (true, false) => self.modify(gs, end, ge - end),
            (false, true) => self.modify(gs, gs, start - gs),
            (false, false) => {
                self.modify(gs, gs, start - gs);
                self.insert(end, ge - end);
            }
        }
    }

    /// Gives `[start, start + len)` back, merging it with the gaps around it.
    pub fn give(&mut self, start: u64, len: u64) {
        let end = start + len;
        let before = self.floor(start).filter(|&(s, l)| s + l == start);
        let after = self.ceil(end).filter(|&(s, _)| s == end);
        match (before, after) {
            (Some((bs, bl)), Some((as_, al))) => {
                self.remove(as_);
                self.modify(bs, bs, bl + len + al);
            }
            (Some((bs, bl)), None) => self.modify(bs, bs, bl + len),
            (None, Some((as_, al))) => self.modify(as_, start, len + al),
            (None, None) => self.insert(start, len),
        }
    }

    /// Returns every gap in order (for tests).
    pub fn gaps(&self) -> Vec<(u64, u64)> {
        fn rec(t: &GapTree, n: u32, out: &mut Vec<(u64, u64)>) {
            if n == NIL {
                return;
            }
            let node = t.nodes[n as usize];
            rec(t, node.left, out);
            out.push((node.start, node.len));
            rec(t, node.right, out);
        }
        let mut out = Vec::with_capacity(self.count);
        rec(self, self.root, &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    /// Reference: a sorted vector of free flags.
    fn model_fit(free: &[bool], need: u64, top: bool) -> Option<u64> {
        let n = free.len();
        let mut runs = vec![];
        let mut i = 0;
        while i < n {
            if free[i] {
                let s = i;
                while i < n && free[i] {
                    i += 1;
                }
                runs.push((s as u64, (i - s) as u64));
            } else {
                i += 1;
            }
        }
        let mut fit = runs.iter().filter(|r| r.1 >= need);
        if top { fit.next_back().map(|r| r.0 + r.1 - need) } else { fit.clone().next().map(|r| r.0) }
    }

    #[test]
    fn matches_a_flat_model() {
        let n = 300u64;
        let mut free = vec![true; n as usize];
        let mut t = GapTree::new(0, n);
        let mut seed = 12345u64;
        let mut rnd = |m: u64| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) % m
        };
        let mut live: Vec<(u64, u64)> = vec![];
        for _ in 0..20_000 {
            if rnd(3) != 0 || live.is_empty() {
                let need = 1 + rnd(8);
                let top = rnd(2) == 0;
                let expect = model_fit(&free, need, top);
                let got = if top {
                    t.highest_fit(need).map(|(s, l)| s + l - need)
                } else {
                    t.lowest_fit(need).map(|(s, _)| s)
                };
                assert_eq!(got, expect);
                if let Some(s) = got {
                    t.take(s, need);
                    for b in s..s + need {
                        free[b as usize] = false;
                    }
                    live.push((s, need));
                }
            } else {
                let (s, l) = live.swap_remove(rnd(live.len() as u64) as usize);
                t.give(s, l);
                for b in s..s + l {
                    free[b as usize] = true;
                }
            }
            // Gaps are maximal runs.
            let g = t.gaps();
            assert_eq!(g.len(), t.len());
            for w in g.windows(2) {
                assert!(w[0].0 + w[0].1 < w[1].0);
            }
        }
    }
}
