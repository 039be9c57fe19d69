//! The guest-thread scaling table (`bench-guest-scaling` lines): the guest
//! `tests/guests/c/vmbench_threads.c` runs `commit_touch_decommit_64k` and `reserve_release_64k`
//! on disjoint regions from 1, 2 and 4 HOST_SERVICES v2 threads, each row for a fixed time, and
//! brackets each row with two marker lines (`@threads-begin NAME threads=N`, `@threads-end NAME
//! threads=N ops=.. calls=.. cycles=..`). The image's write hook passes them here: at the begin
//! marker this reads the kernel's shootdown counters ([`memory::shootdown_stats`]), the kernel
//! entries and resets the scheduler's peak of CPUs running guest threads at once; at the end
//! marker it reads them again and prints the row: ops/s of all threads together (the guest's rdtsc
//! cycles from the start to the last thread's end, at the PIT-calibrated TSC rate), speed-up over
//! the 1-thread row, the CPUs guest threads run on and the peak during the row, IPIs and shootdown
//! rounds per memory call (two calls per op), cycles per round, kernel entries per op. A guest
//! cannot read these counters; the hook runs in its `write` system call. Figures only: nothing
//! here judges a speed.

use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use kernel::guest::sched;
use kernel::kprintln;
use kernel::memory::{self, tlb::ShootdownStats};

/// `tests/guests/c/vmbench_threads.c`, built by `kernel/build.rs`.
const VMBENCH_THREADS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/vmbench-threads.elf"));

/// The rows the guest reports (2 workloads × 1, 2, 4 threads).
const ROWS: u64 = 6;

/// The counters read at the last `@threads-begin`.
struct RowStart {
    name: String,
    threads: u64,
    shootdowns: ShootdownStats,
    entries: u64,
}

static TSC_HZ: AtomicU64 = AtomicU64::new(0);
static START: spin::Mutex<Option<RowStart>> = spin::Mutex::new(None);
/// The ops/s of the current workload's 1-thread row (the speed-up's base), as f64 bits.
static SINGLE: AtomicU64 = AtomicU64::new(0);
static REPORTED: AtomicU64 = AtomicU64::new(0);
static BAD_MARKER: AtomicBool = AtomicBool::new(false);

/// Called by the image's write hook with every piece of guest output; returns whether it was
/// one of this table's markers (then it is handled here).
pub fn marker(bytes: &[u8]) -> bool {
    let is_begin = bytes.starts_with(b"@threads-begin ");
    if !is_begin && !bytes.starts_with(b"@threads-end ") {
        return false;
    }
    // Counters first: the parsing and printing below are not the row's work.
    let shootdowns = memory::shootdown_stats();
    let entries = kernel::guest::kernel_entries();
    let peak = sched::take_peak_parallel();
    let text = String::from_utf8_lossy(bytes);
    let mut words = text.split_whitespace().skip(1);
    let name = String::from(words.next().unwrap_or(""));
    let kv: Vec<(&str, u64)> = words
        .filter_map(|w| w.split_once('='))
        .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
        .collect();
    let num = |k: &str| kv.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
    let bad = |why: &str| {
        kprintln!("bench-error guest-threads marker {:?}: {why}", text.trim_end());
        BAD_MARKER.store(true, Ordering::SeqCst);
    };
    let Some(threads) = num("threads") else {
        bad("no threads=");
        return true;
    };
    if is_begin {
        *START.lock() = Some(RowStart { name, threads, shootdowns, entries });
        return true;
    }
    let Some(start) = START.lock().take().filter(|s| s.name == name && s.threads == threads) else {
        bad("no matching @threads-begin");
        return true;
    };
    let (Some(ops), Some(calls), Some(cycles)) = (num("ops"), num("calls"), num("cycles")) else {
        bad("no ops=, calls= or cycles=");
        return true;
    };
    let ops_per_s = ops as f64 * TSC_HZ.load(Ordering::SeqCst) as f64 / cycles.max(1) as f64;
    if threads == 1 {
        SINGLE.store(ops_per_s.to_bits(), Ordering::SeqCst);
    }
    let single = f64::from_bits(SINGLE.load(Ordering::SeqCst));
    let ipis = shootdowns.ipis - start.shootdowns.ipis;
    let rounds = shootdowns.rounds - start.shootdowns.rounds;
    let round_cycles = (shootdowns.cycles - start.shootdowns.cycles) / rounds.max(1);
    // The end marker's own `write` is one of the entries counted.
    let entries = entries - start.entries - 1;
    kprintln!(
        "bench-guest-scaling {name:<26} {threads:>7} {:>4} {peak:>4} {ops:>7} {ops_per_s:>10.0} {:>7.2}x {:>9.2} {:>11.2} {round_cycles:>12} {:>10.1}",
        sched::cpu_count(),
        ops_per_s / single,
        ipis as f64 / calls.max(1) as f64,
        rounds as f64 / calls.max(1) as f64,
        entries as f64 / ops.max(1) as f64,
    );
    REPORTED.fetch_add(1, Ordering::SeqCst);
    true
}

/// Runs the guest (the image's write hook must be installed and pass markers to [`marker`]).
/// Returns whether it exited 0 and reported every row.
pub fn run(tsc_hz: u64, place: &str) -> bool {
    TSC_HZ.store(tsc_hz, Ordering::SeqCst);
    kprintln!(
        "bench-guest-scaling-title ring-3 guest threads ({place}; tests/guests/c/vmbench_threads.c, HOST_SERVICES v2 create_thread, \
one space, disjoint regions, 2 memory calls per op; cpus = CPUs the kernel runs guest threads on, peak = most of them running \
the guest's threads at once during the row (its main thread included while it starts the row); shootdown figures from the \
kernel's counters around the row; no frames zeroed ahead by idle CPUs meanwhile; under QEMU the vCPUs share the host's cores with everything else)"
    );
    kprintln!(
        "bench-guest-scaling {:<26} {:>7} {:>4} {:>4} {:>7} {:>10} {:>8} {:>9} {:>11} {:>12} {:>10}",
        "workload", "threads", "cpus", "peak", "ops", "ops/s", "speed-up", "ipis/call", "rounds/call", "cycles/round", "entries/op"
    );
    let outcome = kernel::guest::run_guest("vmbench-threads", VMBENCH_THREADS);
    let reported = REPORTED.load(Ordering::SeqCst);
    if reported != ROWS {
        kprintln!("bench-error the guest-thread benchmark reported {reported} of {ROWS} rows");
    }
    outcome == kernel::guest::GuestOutcome::Exited(0) && reported == ROWS && !BAD_MARKER.load(Ordering::SeqCst)
}
