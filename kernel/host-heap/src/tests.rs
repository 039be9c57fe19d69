//! The arena against a simulated address range: random allocations and frees (with the host
//! refusing commits now and then), every block's contents checked, and after every step the
//! exact commit state (a page is committed if and only if no span says it is decommitted), the
//! tiling of the arena by blocks and spans, and the decommit bound.

extern crate std;

use std::vec;
use std::vec::Vec;

use proptest::prelude::*;

use super::*;

/// Simulated memory: words, and a committed bit per page. Touching an uncommitted page panics;
/// decommitting zeroes the page (as a later commit would show it).
struct Sim {
    base: usize,
    words: Vec<usize>,
    committed: Vec<bool>,
    refuse_commits: bool,
    commit_calls: usize,
    decommit_calls: usize,
}

impl Sim {
    fn new(base: usize, pages: usize) -> Sim {
        Sim {
            base,
            words: vec![0; pages * PAGE / 8],
            committed: vec![false; pages],
            refuse_commits: false,
            commit_calls: 0,
            decommit_calls: 0,
        }
    }
    fn page(&self, addr: usize) -> usize {
        (addr - self.base) / PAGE
    }
    fn pages(&self, addr: usize, len: usize) -> core::ops::Range<usize> {
        assert!(addr.is_multiple_of(PAGE) && len.is_multiple_of(PAGE) && len > 0, "unaligned range {addr:#x}+{len:#x}");
        self.page(addr)..self.page(addr + len)
    }
    fn committed_pages(&self) -> usize {
        self.committed.iter().filter(|&&c| c).count()
    }
}

impl Memory for Sim {
    fn read(&self, addr: usize) -> usize {
        assert!(self.committed[self.page(addr)], "read of an uncommitted page at {addr:#x}");
        self.words[(addr - self.base) / 8]
    }
    fn write(&mut self, addr: usize, value: usize) {
        let page = self.page(addr);
        assert!(self.committed[page], "write to an uncommitted page at {addr:#x}");
        self.words[(addr - self.base) / 8] = value;
    }
    fn commit(&mut self, addr: usize, len: usize) -> bool {
        if self.refuse_commits {
            return false;
        }
        self.commit_calls += 1;
        for p in self.pages(addr, len) {
            self.committed[p] = true;
        }
        true
    }
    fn decommit(&mut self, addr: usize, len: usize) {
        self.decommit_calls += 1;
        for p in self.pages(addr, len) {
            self.committed[p] = false;
            let w = p * PAGE / 8;
            self.words[w..w + PAGE / 8].fill(0);
        }
    }
}

const BASE: usize = 0x10_0000;

/// An arena over a fresh reservation of `pages` pages whose first page is committed.
fn fresh(pages: usize) -> (Sim, Arena) {
    let mut sim = Sim::new(BASE, pages);
    sim.committed[0] = true;
    // The arena starts after a small region header, as the host library's does.
    let arena = Arena::new(&mut sim, BASE + 64, BASE + pages * PAGE, BASE + PAGE);
    (sim, arena)
}

fn spans(arena: &Arena, sim: &Sim) -> Vec<Span> {
    let mut v = Vec::new();
    arena.for_each_span(sim, |s| v.push(*s));
    v
}

/// Every invariant of the module documentation, exactly.
fn check(arena: &Arena, sim: &Sim, blocks: &[(usize, usize, usize)]) {
    let spans = spans(arena, sim);
    let mut pieces: Vec<(usize, usize, bool)> = blocks.iter().map(|&(a, n, _)| (a, n, false)).collect();
    pieces.extend(spans.iter().map(|s| (s.start, s.size, true)));
    pieces.sort();
    let mut at = arena.start;
    for &(a, n, _) in &pieces {
        assert_eq!(a, at, "arena not tiled at {at:#x}: {pieces:x?}");
        assert!(n >= SPAN_HEADER && n.is_multiple_of(GRAIN), "piece {a:#x}+{n:#x}");
        at += n;
    }
    assert_eq!(at, arena.end, "arena not tiled to its end");
    for pair in spans.windows(2) {
        assert!(pair[0].start + pair[0].size < pair[1].start, "spans not in order or not coalesced: {pair:x?}");
    }
    let mut decommitted = vec![false; sim.committed.len()];
    for s in &spans {
        let (lo, hi) = s.decommitted;
        assert!(lo <= hi && (lo == hi) == (lo == 0), "range of {s:x?}");
        if lo < hi {
            let (ilo, ihi) = interior(s.start, s.start + s.size);
            assert!(ilo <= lo && hi <= ihi && lo.is_multiple_of(PAGE) && hi.is_multiple_of(PAGE), "range outside the interior: {s:x?}");
            decommitted[sim.page(lo)..sim.page(hi)].fill(true);
        }
        let (ilo, ihi) = interior(s.start, s.start + s.size);
        let committed_interior = (ihi - ilo) - (hi - lo);
        if s.size >= DECOMMIT_SPAN {
            assert!(committed_interior < DECOMMIT_MIN_COMMITTED + COMMIT_AHEAD, "{s:x?} keeps {committed_interior:#x} committed");
        }
    }
    for (p, &d) in decommitted.iter().enumerate() {
        assert_eq!(sim.committed[p], !d, "page {p}: committed {} but the spans say decommitted {d}", sim.committed[p]);
    }
}

#[derive(Debug, Clone)]
enum Op {
    Alloc(usize),
    Free(usize),
    RefuseCommits(bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1usize..512).prop_map(|n| Op::Alloc(n * GRAIN)),
        2 => (32usize..12_000).prop_map(|n| Op::Alloc(n * GRAIN)),
        6 => any::<usize>().prop_map(Op::Free),
        1 => any::<bool>().prop_map(Op::RefuseCommits),
    ]
}

fn fill(sim: &mut Sim, a: usize, n: usize, tag: usize) {
    for w in [a, a + n / 2 / 8 * 8, a + n - 8] {
        sim.write(w, tag ^ w);
    }
}

fn intact(sim: &Sim, a: usize, n: usize, tag: usize) -> bool {
    [a, a + n / 2 / 8 * 8, a + n - 8].iter().all(|&w| sim.read(w) == tag ^ w)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn random_allocations_and_frees_keep_the_commit_exact(ops in proptest::collection::vec(op(), 1..400)) {
        let (mut sim, mut arena) = fresh(256);
        let mut blocks: Vec<(usize, usize, usize)> = Vec::new();
        for (tag, op) in ops.into_iter().enumerate() {
            match op {
                Op::Alloc(need) => {
                    let before = (spans(&arena, &sim), sim.committed.clone(), arena);
                    let need = need.max(SPAN_HEADER);
                    match arena.alloc(&mut sim, need) {
                        Ok((a, n)) => {
                            prop_assert!(n >= need && n - need < SPAN_HEADER);
                            fill(&mut sim, a, n, tag);
                            blocks.push((a, n, tag));
                        }
                        Err(e) => {
                            prop_assert_eq!((spans(&arena, &sim), sim.committed.clone(), arena), before);
                            prop_assert!(e == AllocError::CommitFailed || !sim.refuse_commits || spans(&arena, &sim).iter().all(|s| s.size < need));
                        }
                    }
                }
                Op::Free(i) if !blocks.is_empty() => {
                    let (a, n, tag) = blocks.swap_remove(i % blocks.len());
                    prop_assert!(intact(&sim, a, n, tag), "block {:#x}+{:#x} damaged", a, n);
                    arena.free(&mut sim, a, n);
                }
                Op::Free(_) => {}
                Op::RefuseCommits(on) => sim.refuse_commits = on,
            }
            check(&arena, &sim, &blocks);
        }
        while let Some((a, n, tag)) = blocks.pop() {
            prop_assert!(intact(&sim, a, n, tag));
            arena.free(&mut sim, a, n);
            check(&arena, &sim, &blocks);
        }
        // Every block freed: one span, with no more than the decommit bound committed.
        prop_assert!(arena.is_empty(&sim));
        prop_assert!(sim.committed_pages() * PAGE < PAGE + DECOMMIT_MIN_COMMITTED + COMMIT_AHEAD);
        prop_assert_eq!(arena.committed_free_bytes(&sim), sim.committed_pages() * PAGE - 64);
    }
}

#[test]
fn a_heap_that_shrinks_gives_its_commit_back() {
    let (mut sim, mut arena) = fresh(1024);
    let blocks: Vec<(usize, usize)> = (0..500).map(|_| arena.alloc(&mut sim, 1024).expect("room")).collect();
    let peak = sim.committed_pages();
    assert!(peak >= 500 * 1024 / PAGE, "{peak} pages committed for 500 KiB of blocks");
    // Free every other block: holes of 1 KiB stay committed (too small to give back).
    for b in blocks.iter().step_by(2) {
        arena.free(&mut sim, b.0, b.1);
    }
    assert!(sim.committed_pages() >= peak - 4 * (COMMIT_AHEAD / PAGE), "small holes gave pages back");
    for b in blocks.iter().skip(1).step_by(2) {
        arena.free(&mut sim, b.0, b.1);
    }
    assert_eq!(sim.committed_pages(), 1);
    assert!(arena.is_empty(&sim));
    check(&arena, &sim, &[]);
}

#[test]
fn an_alloc_free_pair_at_the_edge_does_not_thrash() {
    let (mut sim, mut arena) = fresh(256);
    let keep = arena.alloc(&mut sim, 40_000).expect("room");
    let (commits, decommits) = (sim.commit_calls, sim.decommit_calls);
    for _ in 0..100 {
        let b = arena.alloc(&mut sim, 256).expect("room");
        arena.free(&mut sim, b.0, b.1);
    }
    assert!(sim.commit_calls - commits <= 1 && sim.decommit_calls == decommits, "{} commits, {} decommits", sim.commit_calls - commits, sim.decommit_calls - decommits);
    arena.free(&mut sim, keep.0, keep.1);
    assert_eq!(sim.committed_pages(), 1);
}

#[test]
fn a_refused_commit_changes_nothing_and_is_reported() {
    let (mut sim, mut arena) = fresh(64);
    sim.refuse_commits = true;
    // The first page has room for a small block: no commit needed.
    let small = arena.alloc(&mut sim, 256).expect("fits in the committed page");
    let before = (spans(&arena, &sim), sim.committed.clone(), arena);
    assert_eq!(arena.alloc(&mut sim, 64 << 10), Err(AllocError::CommitFailed));
    assert_eq!((spans(&arena, &sim), sim.committed.clone(), arena), before);
    assert_eq!(arena.alloc(&mut sim, 1 << 20), Err(AllocError::NoFit));
    sim.refuse_commits = false;
    let big = arena.alloc(&mut sim, 64 << 10).expect("commit allowed again");
    arena.free(&mut sim, big.0, big.1);
    arena.free(&mut sim, small.0, small.1);
    assert_eq!(sim.committed_pages(), 1);
}

#[test]
fn a_block_that_takes_a_whole_span_gets_its_remainder() {
    let (mut sim, mut arena) = fresh(4);
    let total = arena.end - arena.start;
    let (a, n) = arena.alloc(&mut sim, total - GRAIN).expect("room");
    assert_eq!((a, n), (arena.start, total));
    assert_eq!(arena.head, 0);
    assert_eq!(arena.alloc(&mut sim, SPAN_HEADER), Err(AllocError::NoFit));
    arena.free(&mut sim, a, n);
    assert!(arena.is_empty(&sim));
    check(&arena, &sim, &[]);
}
