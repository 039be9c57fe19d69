//! gc-runtime: a small garbage-collected runtime hosted through `IHostMemoryManager`, the way the
//! CLR runs under a hosting host (the kernel's bundled demo runtime and the model for runtime
//! authors; see the README's "Hosting your own runtime").
//!
//! * `gc.rs`: the heap (64 GiB reservation with write watch, nursery + old-generation segments,
//!   minor copying and major mark-sweep collections, notifications, out-of-memory handling);
//! * `stack.rs`: the managed thread's stack with guard pages, stack overflow as a managed
//!   exception;
//! * `stubs.rs`: machine code written into a `MALLOC_EXECUTABLE` `IHostMalloc` heap;
//! * `sys.rs`: the host, console, and the runtime's own data in an `IHostMalloc` heap;
//! * `vmmap.rs`: the address-space picture printed at the end.
//!
//! Arguments (`run-qemu.sh --runtime-args "..."`): `workload=all|trees|mixed|stackoverflow|stubs|oom`
//! (default all: every one but `oom`, which fills the commit limit), `depth=N` (binary trees), `size=MiB` (mixed: live data), `iters=N` (mixed),
//! `nursery=KiB`, `stack=KiB` (managed stack), `vmmap=0` (no address-space picture).
#![no_std]
#![no_main]

extern crate alloc;

mod gc;
mod stack;
mod stubs;
mod sys;
mod vmmap;

use alloc::vec::Vec;
use core::hint::black_box;
use core::sync::atomic::Ordering;

use gc::{Heap, ManagedError, Reason, get_data, get_ref, set_data, set_ref};
use guest_abi::Host;
use stack::ManagedStack;
use stubs::Stubs;
use sys::{Size, host, ticks};

guest_abi::guest_entry!(main);

/// The checks of a run: every result is compared, not only printed.
struct Checks {
    passed: u32,
    failed: u32,
}

impl Checks {
    fn check(&mut self, what: &str, ok: bool, detail: core::fmt::Arguments) {
        if ok {
            self.passed += 1;
            out!("ok {what}: {detail}\n");
        } else {
            self.failed += 1;
            out!("FAILED {what}: {detail}\n");
        }
    }
    fn eq(&mut self, what: &str, got: u64, expected: u64) {
        self.check(what, got == expected, format_args!("{got} (expected {expected})"));
    }
}

struct Args<'a> {
    workload: &'a str,
    depth: u32,
    size_mb: usize,
    iters: usize,
    nursery_kb: usize,
    stack_kb: usize,
    vmmap: bool,
}

fn parse_args(s: &str) -> Args<'_> {
    let mut a = Args { workload: "all", depth: 16, size_mb: 16, iters: 20000, nursery_kb: 2048, stack_kb: 256, vmmap: true };
    for tok in s.split(|c: char| c.is_whitespace() || c == ',').filter(|t| !t.is_empty()) {
        let (k, v) = tok.split_once('=').unwrap_or((tok, ""));
        let n = v.parse::<usize>().ok();
        match (k, n) {
            ("workload", _) => a.workload = v,
            ("depth", Some(n)) => a.depth = (n as u32).clamp(4, 24),
            ("size", Some(n)) => a.size_mb = n.clamp(1, 4096),
            ("iters", Some(n)) => a.iters = n,
            ("nursery", Some(n)) => a.nursery_kb = n,
            ("stack", Some(n)) => a.stack_kb = n.clamp(64, 65536),
            ("vmmap", Some(n)) => a.vmmap = n != 0,
            ("trace", Some(n)) => gc::TRACE.store(n != 0, Ordering::Relaxed),
            _ => out!("gc-runtime: unknown argument {tok:?} ignored\n"),
        }
    }
    a
}

struct Runtime {
    heap: Heap,
    stubs: Stubs,
    stack: ManagedStack,
}

// ---- binary trees ------------------------------------------------------------------------

/// A tree node: two reference fields (left, right), no data.
fn bottom_up(heap: &mut Heap, depth: u32) -> Result<usize, ManagedError> {
    if depth == 0 {
        return heap.alloc(2, 0);
    }
    let mark = heap.depth();
    let left = bottom_up(heap, depth - 1)?;
    let li = heap.root(left);
    let right = match bottom_up(heap, depth - 1) {
        Ok(r) => r,
        Err(e) => {
            heap.truncate(mark);
            return Err(e);
        }
    };
    let ri = heap.root(right);
    let node = heap.alloc(2, 0);
    if let Ok(node) = node {
        set_ref(node, 0, heap.get(li));
        set_ref(node, 1, heap.get(ri));
    }
    heap.truncate(mark);
    node
}

fn item_check(node: usize) -> u64 {
    let left = get_ref(node, 0);
    if left == 0 { 1 } else { 1 + item_check(left) + item_check(get_ref(node, 1)) }
}

fn nodes(depth: u32) -> u64 {
    (1u64 << (depth + 1)) - 1
}

/// The benchmarks-game binary-trees program, with every check compared to its closed form.
fn trees(rt: &mut Runtime, c: &mut Checks, n: u32) -> Result<(), ManagedError> {
    let min_depth = 4;
    let max_depth = n.max(min_depth + 2);
    let t0 = ticks();
    let heap = &mut rt.heap;
    let stretch = max_depth + 1;
    let t = bottom_up(heap, stretch)?;
    let check = item_check(t);
    out!("stretch tree of depth {stretch}\t check: {check}\n");
    c.eq("stretch tree check", check, nodes(stretch));
    let long = bottom_up(heap, max_depth)?;
    let long_root = heap.root(long);
    let mut d = min_depth;
    while d <= max_depth {
        let iterations = 1u64 << (max_depth - d + min_depth);
        let mut check = 0u64;
        for _ in 0..iterations {
            let t = bottom_up(heap, d)?;
            check += item_check(t);
        }
        out!("{iterations}\t trees of depth {d}\t check: {check}\n");
        c.eq("trees check", check, iterations * nodes(d));
        d += 2;
    }
    let long = heap.get(long_root);
    let check = item_check(long);
    let by_stub = (rt.stubs.count_nodes)(long);
    out!("long lived tree of depth {max_depth}\t check: {check}\n");
    c.eq("long lived tree check", check, nodes(max_depth));
    c.eq("long lived tree counted by the executable stub", by_stub, nodes(max_depth));
    heap.truncate(long_root);
    let dt = ticks() - t0;
    out!("gc-runtime: binary trees depth {max_depth} done in {} ms ({} minor, {} major collections so far)\n", dt / 1_000_000, heap.stats.minor, heap.stats.major);
    Ok(())
}

// ---- mixed long-lived / short-lived --------------------------------------------------------

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

const CHUNK: usize = 512;
const PATTERN: u64 = 0x9E37_79B9_7F4A_7C15;

fn buffer_words(seed: u64) -> usize {
    1 + (seed % 48) as usize
}

/// A record: one reference (its buffer) and two data words (seed, buffer length); the buffer's
/// words are seed ^ (j × PATTERN).
fn new_record(heap: &mut Heap, seed: u64) -> Result<usize, ManagedError> {
    let len = buffer_words(seed);
    let buf = heap.alloc(0, len)?;
    for j in 0..len {
        set_data(buf, 0, j, (seed ^ (j as u64).wrapping_mul(PATTERN)) as usize);
    }
    let bi = heap.root(buf);
    let rec = heap.alloc(1, 2);
    if let Ok(rec) = rec {
        set_ref(rec, 0, heap.get(bi));
        set_data(rec, 1, 0, seed as usize);
        set_data(rec, 1, 1, len);
    }
    heap.truncate(bi);
    rec
}

/// Checks every record against `expected`; returns (mismatches, checksum of the seeds).
fn verify_records(top: usize, expected: &[u64], stubs: &Stubs) -> (usize, u64) {
    let mut bad = 0;
    let mut seeds = Vec::with_capacity(expected.len());
    for (slot, &want) in expected.iter().enumerate() {
        let chunk = get_ref(top, slot / CHUNK);
        let rec = get_ref(chunk, slot % CHUNK);
        let seed = get_data(rec, 1, 0) as u64;
        let buf = get_ref(rec, 0);
        let len = get_data(rec, 1, 1);
        let mut ok = seed == want && len == buffer_words(want) && gc::data_len(buf) == len;
        if ok {
            for j in 0..len {
                ok &= get_data(buf, 0, j) as u64 == seed ^ (j as u64).wrapping_mul(PATTERN);
            }
        }
        bad += !ok as usize;
        seeds.push(seed);
    }
    (bad, (stubs.checksum)(seeds.as_ptr(), seeds.len() as u64))
}

fn mixed(rt: &mut Runtime, c: &mut Checks, size_mb: usize, iters: usize) -> Result<(), ManagedError> {
    let t0 = ticks();
    let heap = &mut rt.heap;
    let slots = ((size_mb << 20) / 240).max(CHUNK);
    let chunks = slots.div_ceil(CHUNK);
    let slots = chunks * CHUNK;
    let mark = heap.depth();
    out!("gc-runtime: mixed: {slots} long-lived records (~{} MiB live) in {chunks} chunks, {iters} iterations\n", size_mb);
    let mut rng = Rng(0x1234_5678_9ABC_DEF1);
    let mut expected: Vec<u64> = Vec::with_capacity(slots);
    let top = heap.alloc(chunks, 0)?;
    let top_i = heap.root(top);
    let run = |heap: &mut Heap, rng: &mut Rng, expected: &mut Vec<u64>| -> Result<(u64, u64), ManagedError> {
        for ch in 0..chunks {
            let chunk = heap.alloc(CHUNK, 0)?;
            set_ref(heap.get(top_i), ch, chunk);
            for k in 0..CHUNK {
                let seed = rng.next();
                let rec = new_record(heap, seed)?;
                set_ref(get_ref(heap.get(top_i), ch), k, rec);
                expected.push(seed);
            }
        }
        out!("gc-runtime: mixed: long-lived set built ({} minor, {} major collections)\n", heap.stats.minor, heap.stats.major);
        let ring = heap.alloc(128, 0)?;
        let ring_i = heap.root(ring);
        let (mut short_sum, mut short_expected) = (0u64, 0u64);
        for i in 0..iters {
            // Replace some long-lived records: the new (young) record is stored into an old chunk;
            // only the write watch tells the next minor collection about that reference.
            for _ in 0..16 {
                let slot = (rng.next() % slots as u64) as usize;
                let seed = rng.next();
                let rec = new_record(heap, seed)?;
                let chunk = get_ref(heap.get(top_i), slot / CHUNK);
                set_ref(chunk, slot % CHUNK, rec);
                expected[slot] = seed;
            }
            // Short-lived: a list of 32 nodes [next | value], summed, then dropped.
            let head_i = heap.root(0);
            for k in 0..32u64 {
                let node = heap.alloc(1, 1)?;
                set_ref(node, 0, heap.get(head_i));
                set_data(node, 1, 0, (i as u64 * 32 + k) as usize);
                heap.set(head_i, node);
                short_expected += i as u64 * 32 + k;
            }
            let mut n = heap.get(head_i);
            while n != 0 {
                short_sum += get_data(n, 1, 0) as u64;
                n = get_ref(n, 0);
            }
            heap.truncate(head_i);
            // Medium-lived: a ring of 128 arrays, each living 128 iterations (they get promoted
            // and die old).
            let arr = heap.alloc(0, 24)?;
            set_data(arr, 0, 0, i);
            set_ref(heap.get(ring_i), i % 128, arr);
            if (i + 1) % (iters / 4).max(1) == 0 {
                let info = host().commit_info();
                out!(
                    "gc-runtime: mixed: {}/{iters} iterations, {} minor / {} major collections, heap {} committed, guest {} of {} committed\n",
                    i + 1,
                    heap.stats.minor,
                    heap.stats.major,
                    Size(heap.stats.heap_committed),
                    Size(info.committed),
                    Size(info.commit_limit)
                );
            }
        }
        heap.truncate(ring_i);
        Ok((short_sum, short_expected))
    };
    let result = run(heap, &mut rng, &mut expected);
    let (short_sum, short_expected) = match result {
        Ok(v) => v,
        Err(e) => {
            heap.truncate(mark);
            return Err(e);
        }
    };
    c.eq("mixed: short-lived list sums", short_sum, short_expected);
    let (bad, sum) = verify_records(heap.get(top_i), &expected, &rt.stubs);
    let want = stubs::checksum_rust(&expected);
    out!("gc-runtime: mixed: checksum of {} long-lived records {sum:#018x}\n", expected.len());
    c.eq("mixed: long-lived records intact", bad as u64, 0);
    c.eq("mixed: record checksum (executable stub vs expected)", sum, want);
    // The table stays referenced (root `mark`) until the end of the run, so the final
    // collection and the address-space picture show a populated heap.
    heap.truncate(mark + 1);
    out!("gc-runtime: mixed done in {} ms\n", (ticks() - t0) / 1_000_000);
    Ok(())
}

// ---- out of memory -------------------------------------------------------------------------

/// Keeps 64 KiB arrays alive (large objects, committed straight into the old generation) until
/// an allocation fails; the failure must be a managed `OutOfMemory` (after a full collection and
/// a retry), and once the program drops them the runtime must allocate again.
fn out_of_memory(rt: &mut Runtime, c: &mut Checks) {
    const WORDS: usize = 8191;
    let heap = &mut rt.heap;
    let mark = heap.depth();
    let head = heap.root(0);
    let mut n = 0usize;
    let err = loop {
        match heap.alloc(1, WORDS) {
            Ok(p) => {
                set_ref(p, 0, heap.get(head));
                set_data(p, 1, 0, n);
                set_data(p, 1, WORDS - 1, !n);
                heap.set(head, p);
                n += 1;
            }
            Err(e) => break Some(e),
        }
        if n >= 1 << 16 {
            break None;
        }
    };
    out!("gc-runtime: oom: {n} arrays of 64 KiB ({}) live when the allocation failed with {err:?}\n", Size((n * (WORDS + 2) * 8) as u64));
    c.check("out of memory is a managed error", err == Some(ManagedError::OutOfMemory), format_args!("{err:?} after {n} arrays"));
    let (mut p, mut k, mut intact) = (heap.get(head), n, true);
    while p != 0 {
        k -= 1;
        intact &= get_data(p, 1, 0) == k && get_data(p, 1, WORDS - 1) == !k;
        p = get_ref(p, 0);
    }
    c.check("the live arrays survived the failed collection intact", intact && k == 0, format_args!("{n} arrays"));
    heap.truncate(mark);
    let _ = heap.collect(Reason::Requested);
    let again = heap.alloc(1, WORDS).map(|_| ());
    c.check("allocation works again once the program dropped its data", again.is_ok(), format_args!("{again:?}"));
}

// ---- stack overflow ------------------------------------------------------------------------

static DEEPEST: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Recurses until the managed stack runs out; every 32 levels it allocates and roots a node.
#[inline(never)]
fn deep(heap: &mut Heap, d: u64) -> u64 {
    let mut frame = [0u64; 8];
    frame[(d % 8) as usize] = d;
    black_box(&mut frame);
    DEEPEST.fetch_max(d, Ordering::Relaxed);
    if d % 32 == 0 && let Ok(p) = heap.alloc(2, 1) {
        set_data(p, 2, 0, d as usize);
        heap.root(p);
    }
    if d > 1 << 40 {
        return d;
    }
    black_box(deep(heap, d + 1)) + frame[0]
}

fn stack_overflow(rt: &mut Runtime, c: &mut Checks) {
    for round in 1..=2 {
        let mark = rt.heap.depth();
        let growths_before = stack::GROWTHS.load(Ordering::SeqCst);
        DEEPEST.store(0, Ordering::SeqCst);
        let heap = &mut rt.heap;
        let r = rt.stack.run(&mut || deep(heap, 0));
        let depth = DEEPEST.load(Ordering::SeqCst);
        rt.heap.truncate(mark);
        out!(
            "gc-runtime: stack overflow round {round}: recursion reached depth {depth}, {} guard-page growths so far\n",
            stack::GROWTHS.load(Ordering::SeqCst)
        );
        c.check(
            "stack overflow is a managed exception",
            r == Err(ManagedError::StackOverflow),
            format_args!("round {round}: {:?} at depth {depth}", r.map(|_| ())),
        );
        let growths = stack::GROWTHS.load(Ordering::SeqCst) - growths_before;
        c.check("the managed stack grew through its guard pages first", growths > 0 && depth > 100, format_args!("{growths} growths, depth {depth}"));
        let rearmed = rt.stack.rearm();
        c.check("guard page re-armed", rearmed.is_ok(), format_args!("{rearmed:?}"));
    }
    // The runtime goes on: a collection and a small tree on the same managed stack.
    let _ = rt.heap.collect(Reason::Requested);
    let mut ok = false;
    let heap = &mut rt.heap;
    let r = rt.stack.run(&mut || match bottom_up(heap, 10) {
        Ok(t) => {
            ok = item_check(t) == nodes(10);
            1
        }
        Err(_) => 0,
    });
    c.check("the runtime still works after surviving the overflows", r == Ok(1) && ok, format_args!("tree of depth 10 checked: {ok}"));
}

/// What a workload's `run` on the managed stack returned.
fn outcome(r: Result<u64, ManagedError>) -> &'static str {
    match r {
        Ok(0) => "completed",
        Ok(1) => "managed OutOfMemory",
        Ok(_) => "managed StackOverflow",
        Err(_) => "managed StackOverflow (unwound)",
    }
}

// ---- the run --------------------------------------------------------------------------------

fn print_stats(heap: &Heap) {
    let s = &heap.stats;
    let us = |ns: u64| ns / 1000;
    let mean = |t: u64, n: u64| t.checked_div(n).unwrap_or(0);
    out!("gc statistics:\n");
    out!(
        "  collections     {} minor, {} major (by budget {}, by notification {}, by out of memory {})\n",
        s.minor,
        s.major,
        s.by_budget,
        s.by_notification,
        s.by_oom
    );
    out!(
        "  pauses          minor: total {} us, max {} us, mean {} us; major: total {} us, max {} us, mean {} us (ticks = ns)\n",
        us(s.minor_pause_total),
        us(s.minor_pause_max),
        us(mean(s.minor_pause_total, s.minor)),
        us(s.major_pause_total),
        us(s.major_pause_max),
        us(mean(s.major_pause_total, s.major))
    );
    out!("  allocated       {} objects, {} ({} large objects in the old generation)\n", s.allocated_objects, Size(s.allocated_bytes), s.large_objects);
    out!("  promoted        {} objects, {}; swept {}; live after the last major collection {}\n", s.promoted_objects, Size(s.promoted_bytes), Size(s.swept_bytes), Size(s.live_after_major));
    out!("  compaction      {} major collections compacted the old generation, {} moved\n", s.compactions, Size(s.compacted_bytes));
    out!("  write watch     {} dirty old pages scanned, {} objects on them\n", s.dirty_pages, s.dirty_objects_scanned);
    out!(
        "  memory          committed {}, decommitted {}, reset {}; heap committed now {} (peak {}); guest commit peak {}\n",
        Size(s.committed_bytes),
        Size(s.decommitted_bytes),
        Size(s.reset_bytes),
        Size(s.heap_committed),
        Size(s.heap_committed_peak),
        Size(s.guest_committed_peak)
    );
    out!(
        "  notifications   low {}, neutral {}, high {}; collections caused by notifications: {}\n",
        gc::NOTIFICATIONS[1].load(Ordering::SeqCst),
        gc::NOTIFICATIONS[2].load(Ordering::SeqCst),
        gc::NOTIFICATIONS[3].load(Ordering::SeqCst),
        s.by_notification
    );
    out!(
        "  out of memory   failed commits {}, eProcessCritical commits during collections {}, managed OutOfMemory {}\n",
        s.failed_commits,
        s.critical_commits,
        s.managed_oom
    );
    out!(
        "  runtime data    {} IHostMalloc allocations, {}\n",
        sys::MALLOC_CALLS.load(Ordering::Relaxed),
        Size(sys::MALLOC_BYTES.load(Ordering::Relaxed) as u64)
    );
    out!(
        "  managed stack   {} guard-page growths, {} stack overflows survived\n",
        stack::GROWTHS.load(Ordering::SeqCst),
        stack::OVERFLOWS.load(Ordering::SeqCst)
    );
}

/// One line of key=value figures for tools and tests (after the shutdown collection).
fn print_summary(heap: &Heap) {
    let s = &heap.stats;
    out!(
        "gc-summary: minor={} major={} compactions={} by_notification={} by_oom={} guest_commit_peak={} heap_commit_peak={} decommitted={} reset={} dirty_pages={} managed_oom={}\n",
        s.minor,
        s.major,
        s.compactions,
        s.by_notification,
        s.by_oom,
        s.guest_committed_peak,
        s.heap_committed_peak,
        s.decommitted_bytes,
        s.reset_bytes,
        s.dirty_pages,
        s.managed_oom
    );
}

fn main(h: &Host) -> i32 {
    sys::set_host(h);
    h.print("gc-runtime: hello from ring 3\n");
    if sys::init_runtime_heap(h).is_err() {
        h.print("gc-runtime: CreateMalloc failed\n");
        return 1;
    }
    let args = parse_args(h.args());
    let t_start = ticks();
    let info = h.commit_info();
    out!(
        "gc-runtime: args {:?}: workload={} depth={} size={} MiB iters={} nursery={} KiB stack={} KiB\n",
        h.args(),
        args.workload,
        args.depth,
        args.size_mb,
        args.iters,
        args.nursery_kb,
        args.stack_kb
    );
    out!(
        "gc-runtime: host commit limit {}, committed {}, critical reserve {}, notifications below {} / above {} free\n",
        Size(info.commit_limit),
        Size(info.committed),
        Size(info.critical_reserve),
        Size(info.low_threshold),
        Size(info.high_threshold)
    );
    let mut c = Checks { passed: 0, failed: 0 };

    // Phase 1: executable stubs.
    let stubs = match Stubs::new() {
        Ok(s) => s,
        Err(e) => {
            out!("gc-runtime: executable heap: {e:?}\n");
            return 1;
        }
    };
    out!("gc-runtime: phase stubs: 3 machine-code stubs written to a MALLOC_EXECUTABLE IHostMalloc block at {:#x}\n", stubs.block);
    for (what, got, expected) in stubs::self_test(&stubs) {
        c.check(what, got == expected, format_args!("{got:#x} (expected {expected:#x})"));
    }

    // Phase 2: the heap, the notification callback, the managed stack.
    let mut heap = match Heap::new(args.nursery_kb << 10) {
        Ok(heap) => heap,
        Err(e) => {
            out!("gc-runtime: reserving the heap failed: {e:?}\n");
            return 1;
        }
    };
    heap.set_bump_helper(stubs.bump);
    out!(
        "gc-runtime: phase heap: reserved {} at {:#x} (MEM_RESERVE | MEM_WRITE_WATCH); nursery {} committed; old generation in {} segments from {:#x}\n",
        Size(gc::RESERVE as u64),
        heap.base,
        Size(heap.nursery_size as u64),
        Size(gc::SEG as u64),
        heap.old_base
    );
    let registered = h.register_memory_notification_callback(Some(&gc::CALLBACK));
    c.check("memory-notification callback registered", registered.is_ok(), format_args!("{registered:?}"));
    let stack = match ManagedStack::new(args.stack_kb << 10) {
        Ok(s) => s,
        Err(e) => {
            out!("gc-runtime: managed stack: {e:?}\n");
            return 1;
        }
    };
    out!(
        "gc-runtime: phase stack: managed stack of {} at {:#x}, guard page armed, vectored handler installed\n",
        Size((stack.hi - stack.lo) as u64),
        stack.lo
    );
    let mut rt = Runtime { heap, stubs, stack };

    let all = args.workload == "all";
    let mut ran = false;
    if all || args.workload == "trees" {
        ran = true;
        out!("gc-runtime: phase trees: binary trees, depth {}\n", args.depth);
        let (rt2, c2) = (&mut rt as *mut Runtime, &mut c as *mut Checks);
        // SAFETY: the closure is the only user of rt and c while the managed stack runs it.
        let r = rt.stack.run(&mut || match trees(unsafe { &mut *rt2 }, unsafe { &mut *c2 }, args.depth) {
            Ok(()) => 0,
            Err(ManagedError::OutOfMemory) => 1,
            Err(ManagedError::StackOverflow) => 2,
        });
        c.check("binary trees ran to the end", r == Ok(0), format_args!("{}", outcome(r)));
    }
    if all || args.workload == "stackoverflow" {
        ran = true;
        out!("gc-runtime: phase stackoverflow: unbounded recursion on the managed stack\n");
        stack_overflow(&mut rt, &mut c);
    }
    if all || args.workload == "mixed" {
        ran = true;
        out!("gc-runtime: phase mixed: long-lived and short-lived objects, {} MiB live, {} iterations\n", args.size_mb, args.iters);
        let (rt2, c2) = (&mut rt as *mut Runtime, &mut c as *mut Checks);
        // SAFETY: as above.
        let r = rt.stack.run(&mut || match mixed(unsafe { &mut *rt2 }, unsafe { &mut *c2 }, args.size_mb, args.iters) {
            Ok(()) => 0,
            Err(ManagedError::OutOfMemory) => 1,
            Err(ManagedError::StackOverflow) => 2,
        });
        c.check("mixed workload ran to the end without running out of memory", r == Ok(0), format_args!("{}", outcome(r)));
    }
    if args.workload == "oom" {
        ran = true;
        out!("gc-runtime: phase oom: large objects kept alive until the commit limit\n");
        out_of_memory(&mut rt, &mut c);
    }
    if args.workload == "stubs" {
        ran = true;
    }
    if !ran {
        c.check("workload known", false, format_args!("{:?}", args.workload));
    }

    // Phase: a final full collection (the mixed workload's long-lived records are still
    // referenced), then the heap's structure is checked.
    out!("gc-runtime: phase collect: final full collection, {} roots still referenced\n", rt.heap.depth());
    let _ = rt.heap.collect(Reason::Requested);
    let v = rt.heap.verify();
    c.check("heap verified after the final collection", v.is_ok(), format_args!("{v:?} old objects"));
    c.check(
        "heap commit accounted",
        rt.heap.stats.heap_committed as usize == rt.heap.nursery_size + rt.heap.committed_segments() * gc::SEG,
        format_args!("nursery + {} segments = {}", rt.heap.committed_segments(), Size(rt.heap.stats.heap_committed)),
    );
    print_stats(&rt.heap);
    if args.vmmap {
        let labels: [vmmap::Label; 8] = [
            (rt.heap.base, "GC heap: nursery + old generation (64 GiB reserved)"),
            (rt.stack.lo, "managed thread stack (guard page)"),
            (rt.stubs.block, "IHostMalloc MALLOC_EXECUTABLE heap (stubs)"),
            (sys::MALLOC_SAMPLE.load(Ordering::Relaxed), "IHostMalloc heap (runtime data)"),
            (sys::MALLOC_FIRST.load(Ordering::Relaxed), "IHostMalloc heap (runtime data)"),
            (&c as *const Checks as usize, "main stack (kernel-grown)"),
            (main as *const () as usize, "gc-runtime image"),
            (0x7FFF_FFFE_0000, "host pages (IHostMemoryManager, HOST_SERVICES)"),
        ];
        vmmap::print(&labels);
    }
    // Phase: the program drops its last references; a collection gives every segment back.
    rt.heap.truncate(0);
    let _ = rt.heap.collect(Reason::Requested);
    out!(
        "gc-runtime: phase shutdown: last references dropped, full collection: heap committed {} ({} segments)\n",
        Size(rt.heap.stats.heap_committed),
        rt.heap.committed_segments()
    );
    c.eq("every old-generation segment decommitted", rt.heap.committed_segments() as u64, 0);
    print_summary(&rt.heap);
    let info = h.commit_info();
    let load = h.memory_load().unwrap_or((0, 0));
    out!(
        "gc-runtime: guest commit now {} of {} (memory load {}%, {} available at eTaskCritical)\n",
        Size(info.committed),
        Size(info.commit_limit),
        load.0,
        Size(load.1)
    );
    out!("gc-runtime: finished in {} ms\n", (ticks() - t_start) / 1_000_000);
    let _ = h.register_memory_notification_callback(None);
    out!("{} passed, {} failed\n", c.passed, c.failed);
    if c.failed == 0 { 0 } else { 1 }
}
