//! gc-runtime: a small garbage-collected runtime hosted through `IHostMemoryManager`, the way the
//! CLR runs under a hosting host (the kernel's bundled demo runtime and the model for runtime
//! authors; see the README's "Hosting your own runtime").
//!
//! * `gc.rs`: the heap (64 GiB reservation with write watch, nursery + old-generation segments,
//!   minor copying and major mark-sweep collections, notifications, out-of-memory handling);
//! * `mutator.rs`: mutator threads, their allocation contexts and root stacks, and
//!   stop-the-world collections at safepoints;
//! * `mark.rs`: the parallel mark phase (one GC thread per CPU, work stealing);
//! * `pool.rs`: the mutator threads a phase of the program runs on;
//! * `stack.rs`: each mutator thread's managed stack with guard pages, stack overflow as a
//!   managed exception;
//! * `stubs.rs`: machine code written into a `MALLOC_EXECUTABLE` `IHostMalloc` heap;
//! * `sys.rs`: the host, console, per-thread state, and the runtime's own data in a
//!   `MALLOC_THREADSAFE` `IHostMalloc` heap;
//! * `vmmap.rs`: the address-space picture printed at the end.
//!
//! Arguments (`run-qemu.sh --runtime-args "..."`): `workload=all|trees|mixed|stackoverflow|stubs|oom|bench`
//! (default all: every one but `oom`, which fills the commit limit, and `bench`, binary trees
//! timed on 1, 2, 4... threads), `depth=N` (binary trees),
//! `size=MiB` (mixed: live data), `iters=N` (mixed), `nursery=KiB`, `stack=KiB` (managed stack),
//! `threads=N` (mutator threads; default: the host's `cpu_count`, 1 on a version-1 host),
//! `gcthreads=N` (threads that mark; default `cpu_count`), `vmmap=0` (no address-space picture).
#![no_std]
#![no_main]

extern crate alloc;

mod gc;
mod mark;
mod mutator;
mod pool;
mod stack;
mod stubs;
mod sys;
mod vmmap;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::hint::black_box;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering, fence};

use gc::{HANDLES, Heap, ManagedError, Reason, get_data, get_ref, set_data, set_ref};
use guest_abi::{Host, Mutex};
use mutator::{Mutator, heap};
use pool::Pool;
use stack::ManagedStack;
use stubs::{StubFns, Stubs};
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

/// The checks, shared by the mutator threads.
type SharedChecks = Mutex<Checks>;

struct Args<'a> {
    workload: &'a str,
    depth: u32,
    size_mb: usize,
    iters: usize,
    nursery_kb: usize,
    stack_kb: usize,
    threads: usize,
    gc_threads: usize,
    vmmap: bool,
}

fn parse_args(s: &str, cpus: usize) -> Args<'_> {
    let mut a = Args {
        workload: "all",
        depth: 16,
        size_mb: 16,
        iters: 20000,
        nursery_kb: 2048,
        stack_kb: 256,
        threads: cpus,
        gc_threads: cpus,
        vmmap: true,
    };
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
            ("threads", Some(n)) => a.threads = n.clamp(1, 64),
            ("gcthreads", Some(n)) => a.gc_threads = n.clamp(1, 64),
            ("vmmap", Some(n)) => a.vmmap = n != 0,
            ("trace", Some(n)) => gc::TRACE.store(n != 0, Ordering::Relaxed),
            _ => out!("gc-runtime: unknown argument {tok:?} ignored\n"),
        }
    }
    a
}

/// What every phase's task sees: the arguments, the stubs, the checks, the thread count.
#[derive(Clone, Copy)]
struct Phase<'a> {
    args: &'a Args<'a>,
    stubs: StubFns,
    checks: &'a SharedChecks,
    threads: usize,
}

// ---- binary trees ------------------------------------------------------------------------

/// A tree node: two reference fields (left, right), no data.
fn bottom_up(m: &mut Mutator, depth: u32) -> Result<usize, ManagedError> {
    if depth == 0 {
        return m.alloc(2, 0);
    }
    let mark = m.depth();
    let left = bottom_up(m, depth - 1)?;
    let li = m.root(left);
    let right = match bottom_up(m, depth - 1) {
        Ok(r) => r,
        Err(e) => {
            m.truncate(mark);
            return Err(e);
        }
    };
    let ri = m.root(right);
    let node = m.alloc(2, 0);
    if let Ok(node) = node {
        set_ref(node, 0, m.get(li));
        set_ref(node, 1, m.get(ri));
    }
    m.truncate(mark);
    node
}

fn item_check(node: usize) -> u64 {
    let left = get_ref(node, 0);
    if left == 0 { 1 } else { 1 + item_check(left) + item_check(get_ref(node, 1)) }
}

fn nodes(depth: u32) -> u64 {
    (1u64 << (depth + 1)) - 1
}

const MIN_DEPTH: u32 = 4;

/// What the binary-trees threads found: per depth the sum of checks, and the long-lived tree.
struct TreeResults {
    sums: [AtomicU64; 32],
    long_check: AtomicU64,
    long_by_stub: AtomicU64,
}

/// The benchmarks-game binary-trees program: thread 0 builds the stretch tree and the long-lived
/// one; the trees of each depth are shared out, iteration `i` to thread `i % threads` (one
/// tree-building task per thread); every check is compared to its closed form.
fn trees_task(m: &mut Mutator, p: &Phase, r: &TreeResults) -> Result<(), ManagedError> {
    let max_depth = p.args.depth.max(MIN_DEPTH + 2);
    let mark = m.depth();
    if m.id == 0 {
        let stretch = max_depth + 1;
        let t = bottom_up(m, stretch)?;
        let check = item_check(t);
        out!("stretch tree of depth {stretch}\t check: {check}\n");
        p.checks.lock().eq("stretch tree check", check, nodes(stretch));
        let long = bottom_up(m, max_depth)?;
        m.root(long);
    }
    let mut d = MIN_DEPTH;
    while d <= max_depth {
        let iterations = 1u64 << (max_depth - d + MIN_DEPTH);
        let mut check = 0u64;
        let mut i = m.id as u64;
        while i < iterations {
            let t = bottom_up(m, d)?;
            check += item_check(t);
            i += p.threads as u64;
            m.poll();
        }
        r.sums[d as usize].fetch_add(check, Ordering::SeqCst);
        d += 2;
    }
    if m.id == 0 {
        let long = m.get(mark);
        r.long_check.store(item_check(long), Ordering::SeqCst);
        r.long_by_stub.store((p.stubs.count_nodes)(long), Ordering::SeqCst);
    }
    m.truncate(mark);
    Ok(())
}

/// Binary trees on the first `p.threads` mutator threads (the others sit this phase out);
/// returns the time it took.
fn trees(pool: &Pool, m: &mut Mutator, stack: &ManagedStack, p: &Phase) -> u64 {
    let max_depth = p.args.depth.max(MIN_DEPTH + 2);
    let t0 = ticks();
    let r = TreeResults { sums: [const { AtomicU64::new(0) }; 32], long_check: AtomicU64::new(0), long_by_stub: AtomicU64::new(0) };
    pool.run(m, stack, &|m, stack| {
        if m.id >= p.threads {
            return;
        }
        let outcome = stack.run(&mut || code_of(trees_task(m, p, &r)));
        p.checks.lock().check("binary trees ran to the end", outcome == Ok(0), format_args!("{} (thread {})", outcome_text(outcome), m.id));
    });
    let mut d = MIN_DEPTH;
    while d <= max_depth {
        let iterations = 1u64 << (max_depth - d + MIN_DEPTH);
        let check = r.sums[d as usize].load(Ordering::SeqCst);
        out!("{iterations}\t trees of depth {d}\t check: {check}\n");
        p.checks.lock().eq("trees check", check, iterations * nodes(d));
        d += 2;
    }
    let (check, by_stub) = (r.long_check.load(Ordering::SeqCst), r.long_by_stub.load(Ordering::SeqCst));
    out!("long lived tree of depth {max_depth}\t check: {check}\n");
    let mut c = p.checks.lock();
    c.eq("long lived tree check", check, nodes(max_depth));
    c.eq("long lived tree counted by the executable stub", by_stub, nodes(max_depth));
    drop(c);
    let dt = ticks() - t0;
    let s = heap().stats.clone();
    out!(
        "gc-runtime: binary trees depth {max_depth} done in {} ms on {} thread(s) ({} minor, {} major collections so far)\n",
        dt / 1_000_000,
        p.threads,
        s.minor,
        s.major
    );
    dt
}

/// The benchmark (`workload=bench`): binary trees on 1, 2, 4... of the mutator threads, each
/// run timed with the stop-the-world pauses and the marking it caused (figures only).
fn bench(pool: &Pool, m: &mut Mutator, stack: &ManagedStack, p: &Phase) {
    let mut times: Vec<(usize, u64)> = Vec::new();
    let mut k = 1;
    while k <= p.threads {
        // This run's longest pause: the maximum starts again from 0 (and is restored after).
        let before = core::mem::replace(&mut heap().stats.stw_pause_max, 0);
        let before = gc::Stats { stw_pause_max: before, ..heap().stats.clone() };
        let dt = trees(pool, m, stack, &Phase { threads: k, ..*p });
        let after = heap().stats.clone();
        heap().stats.stw_pause_max = after.stw_pause_max.max(before.stw_pause_max);
        let pauses = after.stw_pauses - before.stw_pauses;
        let (wall, work) = (after.mark_wall_ns - before.mark_wall_ns, after.mark_busy_ns - before.mark_busy_ns);
        let marking = match (work * 100).checked_div(wall) {
            Some(x) => format!("marking {} us wall, {}.{:02}x parallel-mark speed-up on {} GC thread(s)", wall / 1000, x / 100, x % 100, after.mark_workers),
            None => String::from("no major collection"),
        };
        out!(
            "bench: binary-trees depth {} on {k} thread(s): {} ms; {} stop-the-world pauses, mean {} us, max {} us; {marking}\n",
            p.args.depth,
            dt / 1_000_000,
            pauses,
            ((after.stw_pause_total - before.stw_pause_total) / 1000).checked_div(pauses).unwrap_or(0),
            after.stw_pause_max / 1000
        );
        times.push((k, dt));
        k *= 2;
    }
    let base = times[0].1.max(1);
    for &(k, dt) in &times[1..] {
        let x = base * 100 / dt.max(1);
        out!("bench: binary-trees speed-up at {k} threads: {}.{:02}x\n", x / 100, x % 100);
    }
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
fn new_record(m: &mut Mutator, seed: u64) -> Result<usize, ManagedError> {
    let len = buffer_words(seed);
    let buf = m.alloc(0, len)?;
    for j in 0..len {
        set_data(buf, 0, j, (seed ^ (j as u64).wrapping_mul(PATTERN)) as usize);
    }
    let bi = m.root(buf);
    let rec = m.alloc(1, 2);
    if let Ok(rec) = rec {
        set_ref(rec, 0, m.get(bi));
        set_data(rec, 1, 0, seed as usize);
        set_data(rec, 1, 1, len);
    }
    m.truncate(bi);
    rec
}

/// Whether a record is whole: its buffer matches its own seed.
fn record_ok(rec: usize) -> bool {
    let seed = get_data(rec, 1, 0) as u64;
    let buf = get_ref(rec, 0);
    let len = get_data(rec, 1, 1);
    let mut ok = len == buffer_words(seed) && gc::data_len(buf) == len;
    if ok {
        for j in 0..len {
            ok &= get_data(buf, 0, j) as u64 == seed ^ (j as u64).wrapping_mul(PATTERN);
        }
    }
    ok
}

/// Checks every record against `expected`; returns (mismatches, checksum of the seeds).
fn verify_records(top: usize, expected: &[u64], stubs: &StubFns) -> (usize, u64) {
    let mut bad = 0;
    let mut seeds = Vec::with_capacity(expected.len());
    for (slot, &want) in expected.iter().enumerate() {
        let chunk = get_ref(top, slot / CHUNK);
        let rec = get_ref(chunk, slot % CHUNK);
        let seed = get_data(rec, 1, 0) as u64;
        bad += !(seed == want && record_ok(rec)) as usize;
        seeds.push(seed);
    }
    (bad, (stubs.checksum)(seeds.as_ptr(), seeds.len() as u64))
}

/// The long-lived table of the mixed workload, shared by every thread (global handle 0): the
/// slots of thread `t` are those with `slot % threads == t`.
struct Table {
    chunks: usize,
    slots: usize,
    expected: Vec<AtomicU64>,
    short_sum: AtomicU64,
    short_expected: AtomicU64,
    foreign_checked: AtomicU64,
    foreign_bad: AtomicU64,
}

fn table() -> usize {
    HANDLES[0].load(Ordering::SeqCst)
}

/// Builds this thread's chunks (`ch % threads == id`), its records in them.
fn build_task(m: &mut Mutator, p: &Phase, t: &Table) -> Result<(), ManagedError> {
    let mut rng = Rng(0x1234_5678_9ABC_DEF1 ^ (m.id as u64) << 40);
    let mut ch = m.id;
    while ch < t.chunks {
        let chunk = m.alloc(CHUNK, 0)?;
        let ci = m.root(chunk);
        for k in 0..CHUNK {
            let seed = rng.next();
            let rec = new_record(m, seed)?;
            set_ref(m.get(ci), k, rec);
            t.expected[ch * CHUNK + k].store(seed, Ordering::Relaxed);
        }
        // Publish the chunk, whole, to the other threads.
        fence(Ordering::Release);
        set_ref(table(), ch, m.get(ci));
        m.truncate(ci);
        ch += p.threads;
    }
    Ok(())
}

/// This thread's share of the iterations: replaces records in its own slots (young records in
/// old chunks: only the write watch tells the next minor collection), reads other threads'
/// records, and keeps short- and medium-lived objects of its own.
fn churn_task(m: &mut Mutator, p: &Phase, t: &Table) -> Result<(), ManagedError> {
    let n = p.threads;
    let iters = p.args.iters / n + if m.id == 0 { p.args.iters % n } else { 0 };
    let mut rng = Rng(0x0F1E_2D3C_4B5A_6978 ^ (m.id as u64 + 1) << 32);
    let mark = m.depth();
    let ring = m.alloc(128, 0)?;
    let ring_i = m.root(ring);
    let own_slots = t.slots.div_ceil(n);
    let (mut short_sum, mut short_expected) = (0u64, 0u64);
    for i in 0..iters {
        for _ in 0..16 {
            let slot = (rng.next() as usize % own_slots) * n + m.id;
            if slot >= t.slots {
                continue;
            }
            let seed = rng.next();
            let rec = new_record(m, seed)?;
            fence(Ordering::Release);
            set_ref(get_ref(table(), slot / CHUNK), slot % CHUNK, rec);
            t.expected[slot].store(seed, Ordering::Relaxed);
        }
        // A record of another thread's (a cross-thread reference): read it whole.
        if n > 1 {
            let slot = rng.next() as usize % t.slots;
            let rec = get_ref(get_ref(table(), slot / CHUNK), slot % CHUNK);
            fence(Ordering::Acquire);
            t.foreign_checked.fetch_add(1, Ordering::Relaxed);
            if !record_ok(rec) {
                t.foreign_bad.fetch_add(1, Ordering::Relaxed);
            }
        }
        // Short-lived: a list of 32 nodes [next | value], summed, then dropped.
        let head_i = m.root(0);
        for k in 0..32u64 {
            let node = m.alloc(1, 1)?;
            set_ref(node, 0, m.get(head_i));
            set_data(node, 1, 0, (i as u64 * 32 + k) as usize);
            m.set(head_i, node);
            short_expected += i as u64 * 32 + k;
        }
        let mut node = m.get(head_i);
        while node != 0 {
            short_sum += get_data(node, 1, 0) as u64;
            node = get_ref(node, 0);
        }
        m.truncate(head_i);
        // Medium-lived: a ring of 128 arrays, each living 128 iterations (they get promoted
        // and die old).
        let arr = m.alloc(0, 24)?;
        set_data(arr, 0, 0, i);
        set_ref(m.get(ring_i), i % 128, arr);
        if m.id == 0 && (i + 1) % (iters / 4).max(1) == 0 {
            let info = host().commit_info();
            let s = heap().stats.clone();
            out!(
                "gc-runtime: mixed: {}/{iters} iterations (thread 0), {} minor / {} major collections, heap {} committed, guest {} of {} committed\n",
                i + 1,
                s.minor,
                s.major,
                Size(s.heap_committed),
                Size(info.committed),
                Size(info.commit_limit)
            );
        }
        m.poll();
    }
    m.truncate(mark);
    t.short_sum.fetch_add(short_sum, Ordering::SeqCst);
    t.short_expected.fetch_add(short_expected, Ordering::SeqCst);
    Ok(())
}

fn mixed(pool: &Pool, m: &mut Mutator, stack: &ManagedStack, p: &Phase) {
    let t0 = ticks();
    let slots = ((p.args.size_mb << 20) / 240).max(CHUNK);
    let chunks = slots.div_ceil(CHUNK);
    let slots = chunks * CHUNK;
    out!(
        "gc-runtime: mixed: {slots} long-lived records (~{} MiB live) in {chunks} chunks, {} iterations, {} thread(s)\n",
        p.args.size_mb,
        p.args.iters,
        p.threads
    );
    let top = match m.alloc(chunks, 0) {
        Ok(top) => top,
        Err(e) => {
            p.checks.lock().check("mixed workload ran to the end without running out of memory", false, format_args!("{e:?}"));
            return;
        }
    };
    HANDLES[0].store(top, Ordering::SeqCst);
    let t = Table {
        chunks,
        slots,
        expected: (0..slots).map(|_| AtomicU64::new(0)).collect(),
        short_sum: AtomicU64::new(0),
        short_expected: AtomicU64::new(0),
        foreign_checked: AtomicU64::new(0),
        foreign_bad: AtomicU64::new(0),
    };
    let failed = AtomicUsize::new(0);
    let run = |m: &mut Mutator, task: fn(&mut Mutator, &Phase, &Table) -> Result<(), ManagedError>| {
        pool.run(m, stack, &|m, stack| {
            let outcome = stack.run(&mut || code_of(task(m, p, &t)));
            if outcome != Ok(0) {
                failed.fetch_add(1, Ordering::SeqCst);
                out!("gc-runtime: mixed: thread {}: {}\n", m.id, outcome_text(outcome));
            }
        })
    };
    run(m, build_task);
    let s = heap().stats.clone();
    out!("gc-runtime: mixed: long-lived set built ({} minor, {} major collections)\n", s.minor, s.major);
    if failed.load(Ordering::SeqCst) == 0 {
        run(m, churn_task);
    }
    let failed = failed.load(Ordering::SeqCst);
    let mut c = p.checks.lock();
    c.check("mixed workload ran to the end without running out of memory", failed == 0, format_args!("{failed} thread(s) failed"));
    if failed != 0 {
        HANDLES[0].store(0, Ordering::SeqCst);
        return;
    }
    c.eq("mixed: short-lived list sums", t.short_sum.load(Ordering::SeqCst), t.short_expected.load(Ordering::SeqCst));
    let expected: Vec<u64> = t.expected.iter().map(|e| e.load(Ordering::SeqCst)).collect();
    let (bad, sum) = verify_records(table(), &expected, &p.stubs);
    let want = stubs::checksum_rust(&expected);
    out!("gc-runtime: mixed: checksum of {} long-lived records {sum:#018x}\n", expected.len());
    c.eq("mixed: long-lived records intact", bad as u64, 0);
    c.eq("mixed: record checksum (executable stub vs expected)", sum, want);
    if p.threads > 1 {
        let checked = t.foreign_checked.load(Ordering::SeqCst);
        c.check(
            "mixed: records read across threads intact",
            checked > 0 && t.foreign_bad.load(Ordering::SeqCst) == 0,
            format_args!("{checked} read, {} damaged", t.foreign_bad.load(Ordering::SeqCst)),
        );
    }
    drop(c);
    // The table stays referenced (global handle 0) until the end of the run, so the final
    // collection and the address-space picture show a populated heap.
    out!("gc-runtime: mixed done in {} ms\n", (ticks() - t0) / 1_000_000);
}

// ---- out of memory -------------------------------------------------------------------------

/// Keeps 64 KiB arrays alive (large objects, committed straight into the old generation) until
/// an allocation fails; the failure must be a managed `OutOfMemory` (after a full collection and
/// a retry), and once the program drops them the runtime must allocate again. Every thread does
/// this at once.
fn out_of_memory(m: &mut Mutator, c: &SharedChecks) {
    const WORDS: usize = 8191;
    let mark = m.depth();
    let head = m.root(0);
    let mut n = 0usize;
    let err = loop {
        match m.alloc(1, WORDS) {
            Ok(p) => {
                set_ref(p, 0, m.get(head));
                set_data(p, 1, 0, n);
                set_data(p, 1, WORDS - 1, !n);
                m.set(head, p);
                n += 1;
            }
            Err(e) => break Some(e),
        }
        if n >= 1 << 16 {
            break None;
        }
    };
    out!(
        "gc-runtime: oom: thread {}: {n} arrays of 64 KiB ({}) live when the allocation failed with {err:?}\n",
        m.id,
        Size((n * (WORDS + 2) * 8) as u64)
    );
    let (mut p, mut k, mut intact) = (m.get(head), n, true);
    while p != 0 {
        k -= 1;
        intact &= get_data(p, 1, 0) == k && get_data(p, 1, WORDS - 1) == !k;
        p = get_ref(p, 0);
    }
    c.lock().check("out of memory is a managed error", err == Some(ManagedError::OutOfMemory), format_args!("{err:?} after {n} arrays"));
    c.lock().check("the live arrays survived the failed collection intact", intact && k == 0, format_args!("{n} arrays"));
    m.truncate(mark);
    let _ = m.collect(Reason::Requested);
    let again = m.alloc(1, WORDS).map(|_| ());
    c.lock().check("allocation works again once the program dropped its data", again.is_ok(), format_args!("{again:?}"));
}

// ---- stack overflow ------------------------------------------------------------------------

/// Recurses until the managed stack runs out; every 32 levels it allocates and roots a node.
#[inline(never)]
fn deep(m: &mut Mutator, deepest: &AtomicU64, d: u64) -> u64 {
    let mut frame = [0u64; 8];
    frame[(d % 8) as usize] = d;
    black_box(&mut frame);
    deepest.fetch_max(d, Ordering::Relaxed);
    if d % 32 == 0 && let Ok(p) = m.alloc(2, 1) {
        set_data(p, 2, 0, d as usize);
        m.root(p);
    }
    if d > 1 << 40 {
        return d;
    }
    black_box(deep(m, deepest, d + 1)) + frame[0]
}

/// Two overflows of this thread's managed stack, each survived, then more managed code on it.
fn stack_overflow(m: &mut Mutator, stack: &ManagedStack, c: &SharedChecks) {
    for round in 1..=2 {
        let mark = m.depth();
        let growths_before = stack::GROWTHS.load(Ordering::SeqCst);
        let deepest = AtomicU64::new(0);
        let r = stack.run(&mut || deep(m, &deepest, 0));
        let depth = deepest.load(Ordering::SeqCst);
        m.truncate(mark);
        out!(
            "gc-runtime: stack overflow round {round} (thread {}): recursion reached depth {depth}, {} guard-page growths so far\n",
            m.id,
            stack::GROWTHS.load(Ordering::SeqCst)
        );
        let mut c = c.lock();
        c.check(
            "stack overflow is a managed exception",
            r == Err(ManagedError::StackOverflow),
            format_args!("round {round}: {:?} at depth {depth} (thread {})", r.map(|_| ()), m.id),
        );
        let growths = stack::GROWTHS.load(Ordering::SeqCst) - growths_before;
        c.check("the managed stack grew through its guard pages first", growths > 0 && depth > 100, format_args!("{growths} growths, depth {depth}"));
        // SAFETY: `run` returned, on this thread, the stack's owner: no frame is on it; the
        // abandoned frames of `deep` held only references to `m` and `deepest` (which live
        // here), and the roots they registered were truncated above.
        let rearmed = unsafe { stack.rearm() };
        c.check("guard page re-armed", rearmed.is_ok(), format_args!("{rearmed:?}"));
    }
    // The runtime goes on: a collection and a small tree on the same managed stack.
    let _ = m.collect(Reason::Requested);
    let mut ok = false;
    let r = stack.run(&mut || match bottom_up(m, 10) {
        Ok(t) => {
            ok = item_check(t) == nodes(10);
            1
        }
        Err(_) => 0,
    });
    c.lock().check("the runtime still works after surviving the overflows", r == Ok(1) && ok, format_args!("tree of depth 10 checked: {ok}"));
}

/// A workload's result as the code `ManagedStack::run` passes back.
fn code_of(r: Result<(), ManagedError>) -> u64 {
    match r {
        Ok(()) => 0,
        Err(ManagedError::OutOfMemory) => 1,
        Err(ManagedError::StackOverflow) => 2,
    }
}

/// What a workload's `run` on the managed stack returned.
fn outcome_text(r: Result<u64, ManagedError>) -> &'static str {
    match r {
        Ok(0) => "completed",
        Ok(1) => "managed OutOfMemory",
        Ok(_) => "managed StackOverflow",
        Err(_) => "managed StackOverflow (unwound)",
    }
}

// ---- the run --------------------------------------------------------------------------------

/// Every mutator's statistics (by thread id), and their sum.
fn thread_stats() -> (Vec<pool::ThreadInfo>, mutator::MutatorStats) {
    let all = pool::INFO.lock().clone();
    let mut total = mutator::MutatorStats::default();
    for i in &all {
        let s = &i.stats;
        total.allocated_objects += s.allocated_objects;
        total.allocated_bytes += s.allocated_bytes;
        total.large_objects += s.large_objects;
        total.contexts += s.contexts;
        total.collections += s.collections;
        total.parked += s.parked;
        total.parked_ns += s.parked_ns;
        total.managed_oom += s.managed_oom;
    }
    (all, total)
}

fn print_stats(s: &gc::Stats) {
    let us = |ns: u64| ns / 1000;
    let mean = |t: u64, n: u64| t.checked_div(n).unwrap_or(0);
    let (threads, total) = thread_stats();
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
    out!(
        "  stop the world  {} pauses: max {} us, mean {} us; longest wait for every thread to reach a safepoint {} us\n",
        s.stw_pauses,
        us(s.stw_pause_max),
        us(mean(s.stw_pause_total, s.stw_pauses)),
        us(s.safepoint_wait_max)
    );
    out!(
        "  parallel mark   {} GC thread(s): {} us wall, {} us of marking work ({}.{:02}x), {} steals\n",
        s.mark_workers,
        us(s.mark_wall_ns),
        us(s.mark_busy_ns),
        (s.mark_busy_ns * 100).checked_div(s.mark_wall_ns).unwrap_or(0) / 100,
        (s.mark_busy_ns * 100).checked_div(s.mark_wall_ns).unwrap_or(0) % 100,
        s.mark_steals
    );
    out!("  allocated       {} objects, {} ({} large objects in the old generation)\n", total.allocated_objects, Size(total.allocated_bytes), total.large_objects);
    for t in &threads {
        let m = &t.stats;
        out!(
            "    thread {:<2}     {} objects, {}; {} allocation contexts; ran {} collections; parked {} times ({} us)\n",
            t.id,
            m.allocated_objects,
            Size(m.allocated_bytes),
            m.contexts,
            m.collections,
            m.parked,
            us(m.parked_ns)
        );
    }
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
        "  managed stacks  {} guard-page growths, {} stack overflows survived\n",
        stack::GROWTHS.load(Ordering::SeqCst),
        stack::OVERFLOWS.load(Ordering::SeqCst)
    );
}

/// One line of key=value figures for tools and tests (after the shutdown collection).
fn print_summary(s: &gc::Stats, threads: usize) {
    out!(
        "gc-summary: minor={} major={} compactions={} by_notification={} by_oom={} guest_commit_peak={} heap_commit_peak={} decommitted={} reset={} dirty_pages={} managed_oom={} threads={threads} gc_threads={} stw_pauses={} stw_pause_max_us={} mark_wall_us={} mark_work_us={}\n",
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
        s.managed_oom,
        s.mark_workers.max(1),
        s.stw_pauses,
        s.stw_pause_max / 1000,
        s.mark_wall_ns / 1000,
        s.mark_busy_ns / 1000
    );
}

/// The address-space picture, with every mutator thread's stacks and allocation context.
fn print_vmmap(stubs: &Stubs, on_main_stack: usize) {
    let threads = pool::INFO.lock().clone();
    let mut names: Vec<(usize, String)> = Vec::new();
    names.push((heap().base, String::from("GC heap: nursery + old generation (64 GiB reserved)")));
    for t in &threads {
        names.push((t.stack.0, format!("managed thread stack (guard page), thread {}", t.id)));
        if t.kernel_stack != 0 {
            names.push((t.kernel_stack, format!("mutator thread {} stack (create_thread)", t.id)));
        }
    }
    for (i, t) in mark::GC_THREAD_STATES.lock().iter().enumerate() {
        names.push((t.thread_stack_top.load(Ordering::SeqCst).saturating_sub(4096), format!("GC thread {} stack (create_thread)", i + 1)));
    }
    names.push((stubs.block, String::from("IHostMalloc MALLOC_EXECUTABLE heap (stubs)")));
    names.push((sys::MALLOC_SAMPLE.load(Ordering::Relaxed), String::from("IHostMalloc heap (runtime data)")));
    names.push((sys::MALLOC_FIRST.load(Ordering::Relaxed), String::from("IHostMalloc heap (runtime data)")));
    names.push((on_main_stack, String::from("main stack (kernel-grown)")));
    names.push((main as *const () as usize, String::from("gc-runtime image")));
    names.push((0x7FFF_FFFE_0000, String::from("host pages (IHostMemoryManager, HOST_SERVICES)")));
    let labels: Vec<vmmap::Label> = names.iter().map(|(a, s)| (*a, s.as_str())).collect();
    vmmap::print(&labels);
    let h = heap();
    out!("  allocation contexts in the nursery [{:#x}, {:#x}) (handed out up to {:#x}):\n", h.nursery, h.nursery + h.nursery_size, h.nursery_top);
    drop(h);
    for t in &threads {
        if t.ctx.limit == 0 {
            out!("    thread {:<2} none (retired at the last collection)\n", t.id);
        } else {
            out!("    thread {:<2} bump cursor {:#x}, limit {:#x} ({} left)\n", t.id, t.ctx.cursor, t.ctx.limit, Size((t.ctx.limit - t.ctx.cursor) as u64));
        }
    }
}

fn main(h: &Host) -> i32 {
    sys::set_host(h);
    h.print("gc-runtime: hello from ring 3\n");
    if sys::init_runtime_heap(h).is_err() {
        h.print("gc-runtime: CreateMalloc failed\n");
        return 1;
    }
    sys::enter_main_thread();
    let cpus = h.cpu_count().unwrap_or(1) as usize;
    let args = parse_args(h.args(), cpus);
    let t_start = ticks();
    let info = h.commit_info();
    out!(
        "gc-runtime: args {:?}: workload={} depth={} size={} MiB iters={} nursery={} KiB stack={} KiB threads={} gcthreads={} ({} CPUs)\n",
        h.args(),
        args.workload,
        args.depth,
        args.size_mb,
        args.iters,
        args.nursery_kb,
        args.stack_kb,
        args.threads,
        args.gc_threads,
        cpus
    );
    out!(
        "gc-runtime: host commit limit {}, committed {}, critical reserve {}, notifications below {} / above {} free\n",
        Size(info.commit_limit),
        Size(info.committed),
        Size(info.critical_reserve),
        Size(info.low_threshold),
        Size(info.high_threshold)
    );
    let checks = Mutex::new(Checks { passed: 0, failed: 0 });

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
        checks.lock().check(what, got == expected, format_args!("{got:#x} (expected {expected:#x})"));
    }

    // Phase 2: the heap, the notification callback, the threads and their managed stacks.
    let heap_ = match Heap::new(args.nursery_kb << 10, args.threads) {
        Ok(heap) => heap,
        Err(e) => {
            out!("gc-runtime: reserving the heap failed: {e:?}\n");
            return 1;
        }
    };
    out!(
        "gc-runtime: phase heap: reserved {} at {:#x} (MEM_RESERVE | MEM_WRITE_WATCH); nursery {} committed; old generation in {} segments from {:#x}\n",
        Size(gc::RESERVE as u64),
        heap_.base,
        Size(heap_.nursery_size as u64),
        Size(gc::SEG as u64),
        heap_.old_base
    );
    mutator::install_heap(heap_);
    mutator::set_bump_helper(stubs.bump);
    let registered = h.register_memory_notification_callback(Some(&gc::CALLBACK));
    checks.lock().check("memory-notification callback registered", registered.is_ok(), format_args!("{registered:?}"));
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
    let gc_threads = mark::start_gc_threads(args.gc_threads);
    let mut m = Mutator::register(0);
    pool::note(&m, &stack, 0);
    let pool = Pool::start(args.threads - 1, args.stack_kb << 10);
    out!(
        "gc-runtime: phase threads: {} mutator thread(s), each with its own allocation context, managed stack and root stack; {} GC thread(s) mark\n",
        pool.threads(),
        gc_threads
    );
    let phase = Phase { args: &args, stubs: stubs.fns(), checks: &checks, threads: pool.threads() };

    let all = args.workload == "all";
    let mut ran = false;
    if all || args.workload == "trees" {
        ran = true;
        out!("gc-runtime: phase trees: binary trees, depth {}\n", args.depth);
        trees(&pool, &mut m, &stack, &phase);
    }
    if all || args.workload == "stackoverflow" {
        ran = true;
        out!("gc-runtime: phase stackoverflow: unbounded recursion on each thread's managed stack\n");
        pool.run(&mut m, &stack, &|m, stack| stack_overflow(m, stack, &checks));
    }
    if all || args.workload == "mixed" {
        ran = true;
        out!("gc-runtime: phase mixed: long-lived and short-lived objects, {} MiB live, {} iterations\n", args.size_mb, args.iters);
        mixed(&pool, &mut m, &stack, &phase);
    }
    if args.workload == "oom" {
        ran = true;
        out!("gc-runtime: phase oom: large objects kept alive until the commit limit\n");
        pool.run(&mut m, &stack, &|m, _| out_of_memory(m, &checks));
    }
    if args.workload == "stubs" {
        ran = true;
    }
    if args.workload == "bench" {
        ran = true;
        out!("gc-runtime: phase bench: binary trees, depth {}, on 1 to {} thread(s)\n", args.depth, phase.threads);
        bench(&pool, &mut m, &stack, &phase);
    }
    if !ran {
        checks.lock().check("workload known", false, format_args!("{:?}", args.workload));
    }
    pool::note(&m, &stack, 0);
    // The address space while every thread is alive, with the allocation contexts they hold.
    if args.vmmap {
        let on_main_stack = 0u8;
        print_vmmap(&stubs, &on_main_stack as *const u8 as usize);
    }

    // Phase: a final full collection (the mixed workload's long-lived records are still
    // referenced), then the heap's structure is checked.
    out!("gc-runtime: phase collect: final full collection, {} roots still referenced\n", m.depth() + (table() != 0) as usize);
    let _ = m.collect(Reason::Requested);
    {
        let heap = heap();
        let v = heap.verify();
        let mut c = checks.lock();
        c.check("heap verified after the final collection", v.is_ok(), format_args!("{v:?} old objects"));
        c.check(
            "heap commit accounted",
            heap.stats.heap_committed as usize == heap.nursery_size + heap.committed_segments() * gc::SEG,
            format_args!("nursery + {} segments = {}", heap.committed_segments(), Size(heap.stats.heap_committed)),
        );
    }
    let stats = heap().stats.clone();
    print_stats(&stats);
    pool.stop(&mut m);
    // Phase: the program drops its last references; a collection gives every segment back.
    HANDLES[0].store(0, Ordering::SeqCst);
    m.truncate(0);
    let _ = m.collect(Reason::Requested);
    let (heap_committed, segments) = {
        let heap = heap();
        (heap.stats.heap_committed, heap.committed_segments())
    };
    out!("gc-runtime: phase shutdown: last references dropped, full collection: heap committed {} ({} segments)\n", Size(heap_committed), segments);
    checks.lock().eq("every old-generation segment decommitted", segments as u64, 0);
    print_summary(&heap().stats.clone(), phase.threads);
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
    m.unregister();
    let c = checks.lock();
    out!("{} passed, {} failed\n", c.passed, c.failed);
    if c.failed == 0 { 0 } else { 1 }
}
