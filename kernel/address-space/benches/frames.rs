//! Frame allocator figures: ns per operation pair and metadata overhead. Prints, asserts nothing.
//!
//! Run with `cargo bench --bench frames` (release profile). Each timing is the median of 7 runs
//! of a loop of `ITERS` pairs; `black_box` keeps the results alive.

use std::hint::black_box;
use std::time::Instant;

use std::sync::Mutex;

use address_space::frame::{FrameAllocator, FrameCache, PhysRange, SharedFrames, CACHE_BATCH};
use x86_64::PhysAddr;
use x86_64::structures::paging::{PhysFrame, Size4KiB};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const ITERS: u64 = 2_000_000;
const RUNS: usize = 7;

fn range(start: u64, end: u64) -> PhysRange {
    PhysRange::new(PhysAddr::new(start), PhysAddr::new(end))
}

/// Median ns per iteration of `body` run `iters` times, over `RUNS` runs.
fn time(iters: u64, mut body: impl FnMut()) -> f64 {
    let mut samples: Vec<f64> = (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..iters {
                body();
            }
            t.elapsed().as_nanos() as f64 / iters as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[RUNS / 2]
}

/// The fill states measured.
#[derive(Clone, Copy)]
enum Fill {
    /// 16 frames in use.
    NearlyEmpty,
    /// Every second frame in use: every chunk is partial.
    HalfInterleaved,
    /// The lower half in use (allocated in order): whole chunks above, full chunks below.
    HalfPacked,
}

impl Fill {
    fn name(self) -> &'static str {
        match self {
            Fill::NearlyEmpty => "nearly empty",
            Fill::HalfInterleaved => "half full, every 2nd frame",
            Fill::HalfPacked => "half full, lower half",
        }
    }
}

fn allocator(gib: u64, fill: Fill) -> FrameAllocator {
    let mut fa = FrameAllocator::new(&[range(0, gib * GIB)]);
    match fill {
        Fill::NearlyEmpty => {
            for _ in 0..16 {
                fa.alloc().unwrap();
            }
        }
        Fill::HalfInterleaved => {
            for f in (0..fa.total_frames()).step_by(2) {
                fa.mark_allocated(PhysFrame::containing_address(PhysAddr::new(f * 4096)))
                    .unwrap();
            }
        }
        Fill::HalfPacked => {
            for _ in 0..fa.total_frames() / 2 {
                fa.alloc().unwrap();
            }
        }
    }
    fa
}

/// The global allocator behind a lock, as the kernel keeps it.
struct Locked(Mutex<FrameAllocator>);

impl SharedFrames for Locked {
    fn with<R>(&self, f: impl FnOnce(&mut FrameAllocator) -> R) -> R {
        f(&mut self.0.lock().unwrap())
    }
}

/// Per-CPU cache against the locked global allocator, from `threads` threads at once.
fn cache_figures() {
    println!();
    println!("per-CPU cache vs the global allocator behind a lock (std Mutex), 1 GiB, ns per alloc + free pair:");
    let g = Locked(Mutex::new(allocator(1, Fill::NearlyEmpty)));
    let ns = time(ITERS, || {
        let mut fa = g.0.lock().unwrap();
        let f = fa.alloc().unwrap();
        fa.free(black_box(f)).unwrap();
    });
    println!("  global, one lock per pair, 1 thread         {ns:6.1} ns");
    let mut c = FrameCache::new();
    let ns = time(ITERS, || {
        let f = c.alloc(&g).unwrap();
        c.free(black_box(f), &g).unwrap();
    });
    println!("  cache, same frame back and forth, 1 thread  {ns:6.1} ns (lock taken {} times)", c.lock_trips);
    let mut held = Vec::with_capacity(1024);
    let ns = time(ITERS / 1024, || {
        for _ in 0..1024 {
            held.push(c.alloc(&g).unwrap());
        }
        while let Some(f) = held.pop() {
            c.free(black_box(f), &g).unwrap();
        }
    }) / 1024.0;
    println!("  cache, batches of 1024, 1 thread            {ns:6.1} ns (refill/drain every {CACHE_BATCH})");
    c.drain(&g);
    for threads in [2usize, 4] {
        let per = ITERS / threads as u64;
        // Wall time of all threads over all pairs, best of 3 (the host is shared).
        let run = |body: &(dyn Fn() + Sync)| {
            (0..3)
                .map(|_| {
                    let t = Instant::now();
                    std::thread::scope(|s| {
                        for _ in 0..threads {
                            s.spawn(body);
                        }
                    });
                    t.elapsed().as_nanos() as f64 / ITERS as f64
                })
                .fold(f64::INFINITY, f64::min)
        };
        let global = run(&|| {
            for _ in 0..per {
                let mut fa = g.0.lock().unwrap();
                let f = fa.alloc().unwrap();
                fa.free(black_box(f)).unwrap();
            }
        });
        let cached = run(&|| {
            let mut c = FrameCache::new();
            for _ in 0..per {
                let f = c.alloc(&g).unwrap();
                c.free(black_box(f), &g).unwrap();
            }
            c.drain(&g);
        });
        println!("  {threads} threads: global {global:6.1} ns, cache {cached:6.1} ns per pair (wall time / all pairs, best of 3)");
    }
}

fn main() {
    println!("frame allocator benchmark (median of {RUNS} runs)");
    println!();
    println!("single 4 KiB frame, alloc + free of the same frame, ns per pair:");
    for gib in [1, 16] {
        for fill in [Fill::NearlyEmpty, Fill::HalfInterleaved, Fill::HalfPacked] {
            let mut fa = allocator(gib, fill);
            let ns = time(ITERS, || {
                let f = fa.alloc().unwrap();
                fa.free(black_box(f)).unwrap();
            });
            println!("  {gib:>2} GiB managed, {:<28} {ns:6.1} ns", fill.name());
        }
    }

    println!();
    println!(
        "single 4 KiB frames in batches of 1024 (1024 allocs, then 1024 frees, in reverse), ns per pair:"
    );
    let mut batch: Vec<PhysFrame<Size4KiB>> = Vec::with_capacity(1024);
    for gib in [1, 16] {
        for fill in [Fill::NearlyEmpty, Fill::HalfInterleaved, Fill::HalfPacked] {
            let mut fa = allocator(gib, fill);
            let ns = time(ITERS / 1024, || {
                for _ in 0..1024 {
                    batch.push(fa.alloc().unwrap());
                }
                while let Some(f) = batch.pop() {
                    fa.free(black_box(f)).unwrap();
                }
            }) / 1024.0;
            println!("  {gib:>2} GiB managed, {:<28} {ns:6.1} ns", fill.name());
        }
    }

    println!();
    println!("reserve(1) + alloc_reserved + free, ns per triple:");
    for gib in [1, 16] {
        let mut fa = allocator(gib, Fill::NearlyEmpty);
        let ns = time(ITERS, || {
            let mut promised = fa.reserve(1).unwrap();
            let f = fa.alloc_reserved(&mut promised);
            fa.free(black_box(f)).unwrap();
        });
        println!(
            "  {gib:>2} GiB managed, {:<28} {ns:6.1} ns",
            Fill::NearlyEmpty.name()
        );
    }

    println!();
    println!("2 MiB run, alloc_2mib + free_2mib, ns per pair:");
    for gib in [1, 16] {
        for fill in [Fill::NearlyEmpty, Fill::HalfPacked] {
            let mut fa = allocator(gib, fill);
            let ns = time(ITERS, || {
                let r = fa.alloc_2mib().unwrap();
                fa.free_2mib(black_box(r)).unwrap();
            });
            println!("  {gib:>2} GiB managed, {:<28} {ns:6.1} ns", fill.name());
        }
    }

    cache_figures();

    println!();
    println!("metadata (heap bytes, allocated once in new):");
    let maps: [(&str, Vec<PhysRange>); 4] = [
        ("1 GiB", vec![range(0, GIB)]),
        ("16 GiB", vec![range(0, 16 * GIB)]),
        ("64 GiB", vec![range(0, 64 * GIB)]),
        (
            "PC map 1 MiB..3 GiB + 4..24 GiB",
            vec![range(MIB, 3 * GIB), range(4 * GIB, 24 * GIB)],
        ),
    ];
    for (name, ranges) in maps {
        let t = Instant::now();
        let fa = FrameAllocator::new(&ranges);
        let build = t.elapsed();
        let managed = fa.total_frames() * 4096;
        let bytes = fa.metadata_bytes();
        println!(
            "  {name:<32} {bytes:>9} B = {:8.1} B/GiB = {:.5} % of managed RAM (new: {:.2} ms)",
            bytes as f64 / (managed as f64 / GIB as f64),
            100.0 * bytes as f64 / managed as f64,
            build.as_secs_f64() * 1e3,
        );
    }
}
