//! Address-space figures on the host: ns per operation at 1, 1,000 and 100,000 live
//! allocations, frame alloc+free, commit of 1 and 512 pages, demand-zero faults. Prints one line
//! per figure (median of 5 runs) with the work counted per operation; asserts nothing. Loops
//! time independent operations, whose cache misses the CPU overlaps, unless a line says that
//! each waits for the previous one.
//!
//! Run with `cargo bench --bench host` (release profile). Timings are of this crate's code on
//! the host CPU against simulated RAM (`SimPhysMemory`): no TLB or real page-walk costs.

use std::hint::black_box;
use std::time::Instant;

use address_space::frame::FrameAllocator;
use address_space::paging::tlb::NoTlb;
use address_space::sim::SimPhysMemory;
use address_space::win32::*;
use address_space::{Access, AddressSpace, CommitCharge, CriticalLevel, SpaceConfig, VmContext, WorkCounters};

const RUNS: usize = 5;

struct World {
    frames: FrameAllocator,
    mem: SimPhysMemory,
    tlb: NoTlb,
    charge: CommitCharge,
    counters: WorkCounters,
    space: AddressSpace,
}

impl World {
    fn new(ram: usize) -> Self {
        let mut mem = SimPhysMemory::new(0x20_0000, ram);
        let mut frames = FrameAllocator::new(&[mem.range()]);
        let mut counters = WorkCounters::default();
        let space = AddressSpace::new(SpaceConfig::default(), &mut frames, &mut mem, &mut counters).unwrap();
        World { frames, mem, tlb: NoTlb, charge: CommitCharge::new(1 << 40, 0), counters, space }
    }

    fn with<R>(&mut self, f: impl FnOnce(&mut AddressSpace, &mut VmContext<'_, SimPhysMemory, NoTlb>) -> R) -> R {
        let mut cx = VmContext {
            frames: &mut self.frames,
            mem: &mut self.mem,
            tlb: &mut self.tlb,
            charge: &mut self.charge,
            counters: &mut self.counters,
        };
        f(&mut self.space, &mut cx)
    }

    /// Reserves `n` 64 KiB allocations (every 4th with a committed page, so the tables are not
    /// empty) and returns their bases.
    fn populate(&mut self, n: usize) -> Vec<u64> {
        (0..n)
            .map(|i| {
                let ty = if i % 4 == 0 { MEM_RESERVE | MEM_COMMIT } else { MEM_RESERVE };
                let size = if i % 4 == 0 { 0x1000 } else { 0x10000 };
                self.with(|s, cx| s.virtual_alloc(cx, 0, size, ty, PAGE_READWRITE, CriticalLevel::Task)).unwrap()
            })
            .collect()
    }
}

/// Median ns per iteration over `RUNS` runs of `iters` iterations.
fn time(iters: u64, mut body: impl FnMut(u64)) -> f64 {
    let mut samples: Vec<f64> = (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            for i in 0..iters {
                body(i);
            }
            t.elapsed().as_nanos() as f64 / iters as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[RUNS / 2]
}

fn line(what: &str, live: usize, ns: f64, note: &str) {
    println!("{what:<44} live={live:<7} {ns:>9.1} ns/op  {note}");
}

fn per_live(live: usize) {
    let mut w = World::new(256 << 20);
    let bases = w.populate(live);
    let iters = 200_000;

    let ns = time(iters, |_| {
        let a = w.with(|s, cx| s.virtual_alloc(cx, 0, 0x10000, MEM_RESERVE, PAGE_READWRITE, CriticalLevel::Task)).unwrap();
        w.with(|s, cx| s.virtual_free(cx, black_box(a), 0, MEM_RELEASE)).unwrap();
    });
    line("reserve+release 64 KiB (lowest fit)", live, ns, "");

    let ns = time(iters, |_| {
        let a = w
            .with(|s, cx| s.virtual_alloc(cx, 0, 0x10000, MEM_RESERVE | MEM_TOP_DOWN, PAGE_READWRITE, CriticalLevel::Task))
            .unwrap();
        w.with(|s, cx| s.virtual_free(cx, black_box(a), 0, MEM_RELEASE)).unwrap();
    });
    line("reserve+release 64 KiB (MEM_TOP_DOWN)", live, ns, "");

    let fixed = 0x7000_0000_0000;
    let ns = time(iters, |_| {
        let a = w.with(|s, cx| s.virtual_alloc(cx, fixed, 0x10000, MEM_RESERVE, PAGE_READWRITE, CriticalLevel::Task)).unwrap();
        w.with(|s, cx| s.virtual_free(cx, black_box(a), 0, MEM_RELEASE)).unwrap();
    });
    line("reserve+release 64 KiB (at an address)", live, ns, "");

    let n = bases.len() as u64;
    let ns = time(1_000_000, |i| {
        black_box(w.space.virtual_query(&w.mem, bases[(i % n) as usize] + 0x1000).unwrap());
    });
    line("query, allocations in address order", live, ns, "");
    let ns = time(1_000_000, |i| {
        black_box(w.space.virtual_query(&w.mem, bases[(i * 7919 % n) as usize] + 0x1000).unwrap());
    });
    line("query, allocations in random order", live, ns, "3/4 wholly reserved, 1/4 with a committed page");
    // The same addresses, each query waiting for the previous answer (its region size, a
    // multiple of 4 KiB, so the index is unchanged): the latency of one lookup, as a guest sees
    // it between two system calls, where the loop above overlaps consecutive lookups' misses.
    let mut answer = 0u64;
    let ns = time(1_000_000, |i| {
        let at = bases[((i ^ (answer & 1)) * 7919 % n) as usize] + 0x1000;
        answer = w.space.virtual_query(&w.mem, at).unwrap().region_size;
    });
    line("query, random order, one after another", live, ns, "each address waits for the previous answer: latency");
    let committed: Vec<u64> = bases.iter().step_by(4).copied().collect();
    let c = committed.len() as u64;
    let ns = time(1_000_000, |i| {
        black_box(w.space.virtual_query(&w.mem, committed[(i * 7919 % c) as usize]).unwrap());
    });
    line("query, committed page, random order", live, ns, "wholly committed, one protection: the record answers, no walk");

    let ns = time(1_000_000, |i| {
        black_box(w.space.allocation_at(bases[(i * 7919 % n) as usize] + 0x1000));
    });
    line("allocation lookup alone, random order", live, ns, "");
    let ns = time(1_000_000, |i| {
        black_box(w.space.virtual_query(&w.mem, 0x6000_0000_0000 + (i & 0xFF) * 0x1000).unwrap());
    });
    line("query (free memory)", live, ns, "");

    // Allocations i % 4 == 0 have one committed page at their base.
    let ns = time(iters, |i| {
        let a = committed[(i % c) as usize];
        let p = if i & 1 == 0 { PAGE_READONLY } else { PAGE_READWRITE };
        black_box(w.with(|s, cx| s.virtual_protect(cx, a, 0x1000, p)).unwrap());
    });
    line("protect 1 committed page", live, ns, "");

    let reserved: Vec<u64> = bases.iter().skip(1).step_by(4).copied().collect();
    let r = reserved.len().max(1) as u64;
    if !reserved.is_empty() {
        let ns = time(iters, |i| {
            let a = reserved[(i % r) as usize];
            w.with(|s, cx| s.virtual_alloc(cx, a, 0x1000, MEM_COMMIT, PAGE_READWRITE, CriticalLevel::Task)).unwrap();
            w.with(|s, cx| s.virtual_free(cx, a, 0x1000, MEM_DECOMMIT)).unwrap();
        });
        line("commit+decommit 1 page", live, ns, "");
    }
}

fn frames() {
    let mut w = World::new(256 << 20);
    let ns = time(5_000_000, |_| {
        let f = w.frames.alloc().unwrap();
        w.frames.free(black_box(f)).unwrap();
    });
    line("frame alloc+free", 0, ns, "");
}

fn commits() {
    let mut w = World::new(256 << 20);
    const SPAN: u64 = 64 << 20;
    let base = w.with(|s, cx| s.virtual_alloc(cx, 0, SPAN, MEM_RESERVE, PAGE_READWRITE, CriticalLevel::Task)).unwrap();
    // Tables are created by the first commit in a 2 MiB range and freed with its last page, so
    // these loops include that work once per 2 MiB (shown in the entry-write count).
    for pages in [1u64, 512] {
        let k = SPAN / (pages * 0x1000);
        let mut total_c = 0.0;
        let mut total_d = 0.0;
        let before = w.counters;
        for _ in 0..RUNS {
            let t = Instant::now();
            for i in 0..k {
                w.with(|s, cx| s.virtual_alloc(cx, base + i * pages * 0x1000, pages * 0x1000, MEM_COMMIT, PAGE_READWRITE, CriticalLevel::Task))
                    .unwrap();
            }
            total_c += t.elapsed().as_nanos() as f64 / k as f64;
            let t = Instant::now();
            for i in 0..k {
                w.with(|s, cx| s.virtual_free(cx, base + i * pages * 0x1000, pages * 0x1000, MEM_DECOMMIT)).unwrap();
            }
            total_d += t.elapsed().as_nanos() as f64 / k as f64;
        }
        let writes = (w.counters.pte_writes - before.pte_writes) as f64 / (2 * RUNS as u64 * k) as f64;
        line(&format!("commit {pages} page(s)"), 1, total_c / RUNS as f64, &format!("{writes:.1} entry writes per commit or decommit (incl. table create/free)"));
        line(&format!("decommit {pages} untouched page(s)"), 1, total_d / RUNS as f64, "");
    }
    // First commit of 512 pages with table creation (fresh 2 MiB ranges).
    let base2 = w.with(|s, cx| s.virtual_alloc(cx, 0, SPAN, MEM_RESERVE, PAGE_READWRITE, CriticalLevel::Task)).unwrap();
    let t = Instant::now();
    for i in 0..32u64 {
        w.with(|s, cx| s.virtual_alloc(cx, base2 + i * 0x20_0000, 0x20_0000, MEM_COMMIT, PAGE_READWRITE, CriticalLevel::Task)).unwrap();
    }
    line("commit 512 pages, new page table", 2, t.elapsed().as_nanos() as f64 / 32.0, "incl. zeroing the table page");
    // Demand-zero faults.
    let n = 16_384u64;
    let before = w.counters;
    let t = Instant::now();
    for i in 0..n {
        black_box(w.with(|s, cx| s.handle_fault(cx, base2 + i * 0x1000, Access::Write)));
    }
    let ns = t.elapsed().as_nanos() as f64 / n as f64;
    line("demand-zero fault (frame + 4 KiB zeroing)", 2, ns, &format!("{} frames zeroed", w.counters.frames_zeroed - before.frames_zeroed));
    let t = Instant::now();
    w.with(|s, cx| s.virtual_free(cx, base2, 0, MEM_RELEASE)).unwrap();
    line("release 64 MiB, 16,384 touched pages", 2, t.elapsed().as_nanos() as f64, "one call");
}

/// Queries in partly committed reservations (a GC heap's shape: the first 64 KiB committed and
/// touched), by reservation size: none may depend on it.
fn partly_committed() {
    for (label, size) in [("64 MiB", 64u64 << 20), ("16 GiB", 16 << 30)] {
        let mut w = World::new(64 << 20);
        let b = w.with(|s, cx| s.virtual_alloc(cx, 0, size, MEM_RESERVE, PAGE_READWRITE, CriticalLevel::Task)).unwrap();
        w.with(|s, cx| s.virtual_alloc(cx, b, 0x10000, MEM_COMMIT, PAGE_READWRITE, CriticalLevel::Task)).unwrap();
        for i in 0..16 {
            w.with(|s, cx| s.handle_fault(cx, b + i * 0x1000, Access::Write));
        }
        // 240 pages with entries (committed with another protection: no lazy run).
        let c = b + (size >> 1);
        w.with(|s, cx| s.virtual_alloc(cx, c, 0xF0000, MEM_COMMIT, PAGE_READONLY, CriticalLevel::Task)).unwrap();
        for (what, addr) in [
            ("query, committed head (the lazy run)", b + 0x3000),
            ("query, reserved between head and 240 pages", b + 0x10000),
            ("query, 240 committed pages with entries", c),
            ("query, reserved tail after them", c + 0xF0000),
        ] {
            let ns = time(1_000_000, |_| {
                black_box(w.space.virtual_query(&w.mem, black_box(addr)).unwrap());
            });
            line(what, 1, ns, &format!("in a {label} reservation"));
        }
    }
}

fn main() {
    println!("address-space host benchmark (release build, simulated RAM, no TLB); median of {RUNS} runs");
    frames();
    for live in [1usize, 1_000, 100_000] {
        per_live(live);
    }
    commits();
    partly_committed();
}
