//! The benchmark kernel image (`./run-qemu.sh --bench`): the workloads of the peer program
//! (`shared/peers/vmbench.c`) run in the kernel on a guest address space ([`Space`]), plus
//! `VirtualQuery`, large-page commit and guard-page fault round trips, the same workloads at
//! 1 / 1,000 / 100,000 live allocations and at 64 MiB / 1 GiB / 16 GiB reservations, and the
//! evidence for the TLB full-flush threshold; then, on several CPUs (in ring 0 on each, through
//! `kernel::arch::apic::run_on`), the scaling of disjoint work in one space from 1, 2 and 4 CPUs
//! (`bench-scaling` lines; the same with a space per CPU) and the cost of a TLB shootdown round
//! (`bench-shootdown` lines). `--guest-args scaling` runs only those, with the lock waiters'
//! policies compared ([`lock_policy`]) and the charge lock-free vs. locked ([`charge_contention`]).
//! `./run-qemu.sh --bench` starts it with 4 CPUs unless `--smp` says otherwise.
//!
//! For every workload it prints one line (grammar below, parsed by `tests/bench/report.py`):
//!
//! ```text
//! bench <where> <name> unit=<unit> n=<units> cycles=<rdtsc cycles per unit> ns=<≈ns per unit> \
//!       <counter>=<measured per unit>/<minimum per unit> ... entries=n/a verdict: = min | > min: ...
//! ```
//!
//! `<where>` is `kernel-TCG` or `kernel-KVM`, read from the CPUID hypervisor leaf 0x4000_0000
//! (QEMU's "TCGTCGTCGTCG" or KVM's "KVMKVMKVM"). Under TCG every cycle figure is emulation: the
//! TSC follows the host clock while the guest's instructions are translated, so the figures rank
//! operations against each other, not against hardware. `ns` converts cycles with the TSC rate
//! measured against the PIT (channel 2, 50 ms) at start-up.
//!
//! The counters come from the memory manager's [`WorkCounters`] (snapshots around the timed
//! loop, divided by the number of units). The minimum of each workload is the work the operation
//! cannot avoid, derived in [`Work`]'s constructors below the workload; a verdict other than
//! `= min` names every counter above its minimum. Kernel entries (host calls from ring 3) are
//! `entries=n/a`: this benchmark calls the memory manager from ring 0, so it makes none. Guest
//! pages are touched from ring 0 through `kernel::arch::probe` (SMAP window); a first touch takes
//! a real page fault resolved by demand-zero.
//!
//! After the in-kernel part it runs the in-guest benchmark, `tests/guests/c/vmbench_guest.c`
//! (built by `kernel/build.rs`, embedded here): the same workloads from ring 3 through
//! `IHostMemoryManager`, plus no-op host calls (`AddRef`/`Release`, `HOST_SERVICES.ticks_ns`). The
//! guest times each loop with `rdtsc` and brackets it with two marker lines, each one `write`:
//! `@begin NAME` and `@end NAME unit=U n=N cycles=C [base=0x.. size=0x..]`. This image installs
//! [`WRITE_HOOK`] (`kernel::guest::calls`), which reads the work counters and
//! `kernel::guest::kernel_entries()` (system calls and exceptions from ring 3) at every marker;
//! at each `@end` it prints a `bench guest-<accel> ...` line for the workload in the format
//! above, with `entries=<measured>/<minimum>` per unit (the @end marker's own entry subtracted).
//! The minimum of a guest workload is the in-kernel one plus one entry per host call and per page
//! fault (and for the guard page the handler's return: see [`guest_minimum`]).
//! Last, the guest-thread scaling table (module [`guest_threads`]; `--guest-args guest-threads`
//! runs only that).
//!
//! The host-call path is broken down twice. After the in-kernel workloads, `bench-path` lines
//! time its pieces alone in the kernel: the memory manager's lock, a software-checked write
//! (`check_user_write`: allocation lookup and page walk; with the writes through the physical
//! window), and the hardware-checked copy host calls use where the stub cannot store their
//! results in ring 3 (`kernel::arch::probe::copy_to_user`, one `stac`/`clac` window), and an
//! exception frame's register image saved and copied out, copied back and loaded, and the clean
//! state loaded for the handlers. After the guest's workloads, its breakdown passes (`@stages-begin`
//! / `@stages-end`, see [`stages_hook`]) print `bench-stages` lines: per call kind (the manager's
//! methods, a guest exception, the exception dispatcher's `continue`), the cycles of each stage
//! of a host call (dispatch, pointer check, lock, the manager's operation, result copies, band
//! check, exception frame, FPU state, return) measured by the kernel's host-call clock
//! (`kernel::guest::call_clock`), and what lies outside the kernel's view (`syscall`/`sysretq`,
//! the CPU's exception entry, the ring-3 dispatcher and handler).
//!
//! Nothing here asserts a timing; the image fails only if an operation returns an error, an
//! access faults unexpectedly (a kernel bug) or the in-guest benchmark does not complete.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::arch::x86_64::{__cpuid_count, _rdtsc};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use address_space::win32::*;
use address_space::{FAULT_AROUND_MAX, SpaceConfig, WorkCounters};
use kernel::arch::probe::{self, MemoryFault};
use kernel::arch::user;
use kernel::guest::call_clock::{self, Snapshot};
use kernel::guest::calls::WRITE_HOOK;
use kernel::memory::{self, Space};
use kernel::{kprintln, qemu};
use x86_64::instructions::port::Port;

// In a directory of its own: a file beside this one would be another binary to cargo.
#[path = "bench/guest_threads.rs"]
mod guest_threads;

bootloader_api::entry_point!(bench_main, config = &kernel::BOOTLOADER_CONFIG);

const PAGE: u64 = 4096;
const KB64: u64 = 64 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const SPAN_2M: u64 = 2 << 20;

// ---------------------------------------------------------------------------------------------
// Environment: accelerator and TSC rate.

/// The hypervisor QEMU runs the image under, from CPUID leaf 0x4000_0000.
fn accelerator() -> (&'static str, String) {
    let hypervisor_bit = __cpuid_count(1, 0).ecx & (1 << 31) != 0;
    if !hypervisor_bit {
        return ("bare", String::from("no hypervisor bit"));
    }
    let r = __cpuid_count(0x4000_0000, 0);
    let mut sig = [0u8; 12];
    sig[0..4].copy_from_slice(&r.ebx.to_le_bytes());
    sig[4..8].copy_from_slice(&r.ecx.to_le_bytes());
    sig[8..12].copy_from_slice(&r.edx.to_le_bytes());
    let text: String = sig
        .iter()
        .map(|&b| if b.is_ascii_graphic() { b as char } else { '.' })
        .collect();
    let name = match &sig {
        b"TCGTCGTCGTCG" => "TCG",
        b"KVMKVMKVM\0\0\0" => "KVM",
        _ => "unknown-hypervisor",
    };
    (name, text)
}

fn rdtsc() -> u64 {
    // SAFETY: RDTSC reads the time-stamp counter and has no other effect; every x86_64 CPU
    // has it, and the kernel leaves CR4.TSD clear (ring 0 may execute it anyway).
    unsafe { _rdtsc() }
}

/// Measures the TSC rate against PIT channel 2 counting down 50 ms (the method of Linux's
/// `pit_calibrate_tsc`): gate on, speaker off, mode 0, then wait for OUT2 (port 0x61 bit 5).
fn tsc_hz() -> u64 {
    const PIT_HZ: u64 = 1_193_182;
    const MS: u64 = 50;
    let latch = (PIT_HZ * MS / 1000) as u16;
    let mut control = Port::<u8>::new(0x61);
    let mut mode = Port::<u8>::new(0x43);
    let mut ch2 = Port::<u8>::new(0x42);
    // SAFETY: ports 0x61 (system control port B), 0x43 (PIT mode) and 0x42 (PIT channel 2) only
    // drive the PC speaker timer, which nothing else in this kernel uses; the speaker output
    // (bit 1) is kept off.
    let (t0, t1) = unsafe {
        let v = control.read();
        control.write((v & !0x02) | 0x01);
        mode.write(0xB0);
        ch2.write((latch & 0xFF) as u8);
        ch2.write((latch >> 8) as u8);
        let t0 = rdtsc();
        while control.read() & 0x20 == 0 {}
        (t0, rdtsc())
    };
    (t1 - t0) * 1000 / MS
}

// ---------------------------------------------------------------------------------------------
// Work counters and minima.

/// Work done (or needed) by a measured loop, in totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Work {
    pte_writes: u64,
    invlpg: u64,
    full_flushes: u64,
    frames_zeroed: u64,
    table_pages_allocated: u64,
    table_pages_freed: u64,
    faults_resolved: u64,
}

impl Work {
    fn between(a: &WorkCounters, b: &WorkCounters) -> Work {
        Work {
            pte_writes: b.pte_writes - a.pte_writes,
            invlpg: b.invlpg - a.invlpg,
            full_flushes: b.full_flushes - a.full_flushes,
            frames_zeroed: b.frames_zeroed - a.frames_zeroed,
            table_pages_allocated: b.table_pages_allocated - a.table_pages_allocated,
            table_pages_freed: b.table_pages_freed - a.table_pages_freed,
            faults_resolved: b.faults_resolved - a.faults_resolved,
        }
    }

    fn fields(&self) -> [(&'static str, u64); 7] {
        [
            ("pte_writes", self.pte_writes),
            ("invlpg", self.invlpg),
            ("full_flushes", self.full_flushes),
            ("frames_zeroed", self.frames_zeroed),
            ("table_pages_allocated", self.table_pages_allocated),
            ("table_pages_freed", self.table_pages_freed),
            ("faults_resolved", self.faults_resolved),
        ]
    }

    fn times(self, k: u64) -> Work {
        Work {
            pte_writes: self.pte_writes * k,
            invlpg: self.invlpg * k,
            full_flushes: self.full_flushes * k,
            frames_zeroed: self.frames_zeroed * k,
            table_pages_allocated: self.table_pages_allocated * k,
            table_pages_freed: self.table_pages_freed * k,
            faults_resolved: self.faults_resolved * k,
        }
    }

    fn plus(self, o: Work) -> Work {
        Work {
            pte_writes: self.pte_writes + o.pte_writes,
            invlpg: self.invlpg + o.invlpg,
            full_flushes: self.full_flushes + o.full_flushes,
            frames_zeroed: self.frames_zeroed + o.frames_zeroed,
            table_pages_allocated: self.table_pages_allocated + o.table_pages_allocated,
            table_pages_freed: self.table_pages_freed + o.table_pages_freed,
            faults_resolved: self.faults_resolved + o.faults_resolved,
        }
    }

    /// Nothing: a pure reservation, release of never-committed memory, a query.
    const NONE: Work = Work {
        pte_writes: 0,
        invlpg: 0,
        full_flushes: 0,
        frames_zeroed: 0,
        table_pages_allocated: 0,
        table_pages_freed: 0,
        faults_resolved: 0,
    };

    /// Invalidating `n` present pages changed by one operation: `n` `invlpg`, or one full flush
    /// above the threshold.
    fn invalidate(n: u64, threshold: u64) -> Work {
        if n == 0 {
            Work::NONE
        } else if n > threshold {
            Work {
                full_flushes: 1,
                ..Work::NONE
            }
        } else {
            Work {
                invlpg: n,
                ..Work::NONE
            }
        }
    }

    /// First touch of the `n` committed pages from `start` on, in address order: a zeroed
    /// frame and one entry write each, no flush (the entries were not present, so nothing can be
    /// cached), and the faults fault-around leaves ([`sequential_touch_faults`]).
    fn touch_in_order(start: u64, n: u64) -> Work {
        Work {
            pte_writes: n,
            frames_zeroed: n,
            faults_resolved: sequential_touch_faults(start, n),
            ..Work::NONE
        }
    }

    /// Creating `t` table pages: each zeroed and linked by one entry write in its parent.
    fn tables(t: u64) -> Work {
        Work {
            pte_writes: t,
            frames_zeroed: t,
            table_pages_allocated: t,
            ..Work::NONE
        }
    }

    /// Changing the protection of `n` present pages: one entry write each and their
    /// invalidation.
    fn protect(n: u64, threshold: u64) -> Work {
        Work {
            pte_writes: n,
            ..Work::NONE
        }
        .plus(Work::invalidate(n, threshold))
    }

    /// Decommitting `n` touched (present) pages: one entry write each and their invalidation;
    /// their frames go back to the allocator (no counter).
    fn decommit_present(n: u64, threshold: u64) -> Work {
        Work::protect(n, threshold)
    }
}

/// The page faults of a first touch of the `n` pages from `start` on, in address order, with
/// nothing present before `start` (`AddressSpace::fault_around`): each fault maps as many pages
/// ahead as are present behind it in its page table, at most `FAULT_AROUND_MAX` — faults at
/// pages 0, 1, 3, 7, then every 16th of each 2 MiB table.
fn sequential_touch_faults(start: u64, n: u64) -> u64 {
    let (mut faults, mut p) = (0, 0);
    while p < n {
        faults += 1;
        let index = (start / PAGE + p) % 512;
        let behind = index.min(p).min(FAULT_AROUND_MAX);
        p += 1 + behind.min(511 - index).min(n - p - 1);
    }
    faults
}

/// Table pages a fresh space needs to map `[start, end)` with 4 KiB pages: one page table per
/// 2 MiB, one directory per 1 GiB, one PDPT per 512 GiB touched (the PML4 exists).
fn tables_needed(start: u64, end: u64) -> u64 {
    [21u32, 30, 39]
        .iter()
        .map(|&s| ((end - 1) >> s) - (start >> s) + 1)
        .sum()
}

// ---------------------------------------------------------------------------------------------
// Measuring and printing.

struct Env {
    place: String,
    tsc_hz: u64,
    threshold: u64,
}

/// A measured loop.
struct Figure {
    name: String,
    unit: &'static str,
    units: u64,
    cycles: u64,
    work: Work,
    min: Work,
    /// Why the work exceeds the minimum, printed only when it does.
    why: &'static str,
    /// Kernel entries from ring 3 (measured, minimum) for the in-guest workloads; `None` (printed
    /// `entries=n/a`) for the in-kernel ones, which make none.
    entries: Option<(u64, u64)>,
}

fn counters() -> WorkCounters {
    memory::work_counters()
}

/// Runs `f` once, returning the TSC cycles and the work it did.
fn measure(f: impl FnOnce()) -> (u64, Work) {
    let before = counters();
    let t0 = rdtsc();
    f();
    let t1 = rdtsc();
    let after = counters();
    (t1 - t0, Work::between(&before, &after))
}

fn per_unit(total: u64, units: u64) -> String {
    if total.is_multiple_of(units) {
        return format!("{}", total / units);
    }
    let v = total as f64 / units as f64;
    let s = if v >= 0.01 {
        format!("{v:.3}")
    } else {
        format!("{v:.6}")
    };
    String::from(s.trim_end_matches('0').trim_end_matches('.'))
}

fn report(env: &Env, f: Figure) {
    let cyc = f.cycles as f64 / f.units as f64;
    let ns = cyc * 1e9 / env.tsc_hz as f64;
    let mut line = format!(
        "bench {} {} unit={} n={} cycles={cyc:.1} ns={ns:.1}",
        env.place, f.name, f.unit, f.units
    );
    let mut over = Vec::new();
    let mut under = Vec::new();
    let mut fields: Vec<(&str, u64, u64)> = f
        .work
        .fields()
        .iter()
        .zip(f.min.fields().iter())
        .map(|(&(name, got), &(_, min))| (name, got, min))
        .collect();
    if let Some((got, min)) = f.entries {
        fields.push(("entries", got, min));
    }
    for (name, got, min) in fields {
        line += &format!(
            " {name}={}/{}",
            per_unit(got, f.units),
            per_unit(min, f.units)
        );
        if got > min {
            over.push(format!("{name} +{}", per_unit(got - min, f.units)));
        } else if got < min {
            under.push(format!("{name} -{}", per_unit(min - got, f.units)));
        }
    }
    line += if f.entries.is_none() {
        " entries=n/a verdict: "
    } else {
        " verdict: "
    };
    if over.is_empty() && under.is_empty() {
        line += "= min";
    } else {
        if !over.is_empty() {
            line += &format!("> min: {} per {}", over.join(", "), f.unit);
            if !f.why.is_empty() {
                line += &format!(" ({})", f.why);
            }
        }
        if !under.is_empty() {
            line += &format!(
                "{}< min?: {} per {} (the minimum is wrong)",
                if over.is_empty() { "" } else { "; " },
                under.join(", "),
                f.unit
            );
        }
    }
    kprintln!("{line}");
}

// ---------------------------------------------------------------------------------------------
// Guest memory helpers.

fn space() -> Space {
    let s = Space::new().expect("Space::new");
    s.activate();
    s
}

fn space_with_threshold(threshold: usize) -> Space {
    let s = Space::with_config(SpaceConfig {
        tlb_flush_threshold: threshold,
        ..SpaceConfig::default()
    })
    .expect("Space::with_config");
    s.activate();
    s
}

fn alloc(s: &Space, addr: u64, size: u64, ty: u32, prot: u32) -> u64 {
    s.virtual_alloc(addr, size, ty, prot)
        .unwrap_or_else(|e| panic!("VirtualAlloc({addr:#x}, {size:#x}, {ty:#x}, {prot:#x}): {e:?}"))
}

fn free(s: &Space, addr: u64, size: u64, ty: u32) {
    s.virtual_free(addr, size, ty)
        .unwrap_or_else(|e| panic!("VirtualFree({addr:#x}, {size:#x}, {ty:#x}): {e:?}"))
}

fn protect(s: &Space, addr: u64, size: u64, prot: u32) {
    s.virtual_protect(addr, size, prot)
        .unwrap_or_else(|e| panic!("VirtualProtect({addr:#x}, {size:#x}, {prot:#x}): {e:?}"));
}

/// Writes one byte to a guest page (the first touch faults in a zeroed frame).
fn touch(addr: u64) {
    // SAFETY: `addr` lies in a committed read-write page of the benchmark's own space, which
    // nothing else uses.
    unsafe { probe::write_u8(addr, 1) }
        .unwrap_or_else(|f| panic!("touching {addr:#x} faulted: {f:?}"));
}

fn touch_range(base: u64, size: u64) {
    for off in (0..size).step_by(PAGE as usize) {
        touch(base + off);
    }
}

/// Reads one byte of a guest page (to load its translation into the TLB).
fn read(addr: u64) {
    // SAFETY: `addr` lies in a committed readable page of the benchmark's own space.
    unsafe { probe::read_u8(addr) }.unwrap_or_else(|f| panic!("reading {addr:#x} faulted: {f:?}"));
}

// ---------------------------------------------------------------------------------------------
// The peer program's workloads (same names, sizes and units as vmbench.c).

/// B1: reserve + release of one 64 KiB region. Never committed: no table is touched.
fn reserve_release_64k(env: &Env, s: &Space, name: &str, n: u64) {
    let (cycles, work) = measure(|| {
        for _ in 0..n {
            let b = alloc(s, 0, KB64, MEM_RESERVE, PAGE_NOACCESS);
            free(s, b, 0, MEM_RELEASE);
        }
    });
    report(
        env,
        Figure {
            name: name.into(),
            unit: "op",
            units: n,
            cycles,
            work,
            min: Work::NONE,
            why: "",
            entries: None,
        },
    );
}

const WHY_COMMIT: &str = "the commit writes no page entry (a lazy run: the touch writes the only one), but it counts \
its pages in the page table's child count, kept in the directory entry, and the decommit uncounts them: one \
directory-entry write each per round, what freeing a table without scanning it costs";

const WHY_COMMIT_256M: &str = "the commit writes no page entry (a lazy run), each new table is linked once with its \
final count";

const WHY_LARGE: &str = "the directory and PDPT emptied by the release are freed (each parent entry cleared once), \
then re-created (zeroed, linked once) by the next commit: tables are not kept past a release";

const WHY_GUARD: &str = "the first guard on one page of the committed 64 KiB writes the entries of its 15 untouched \
pages, once (they leave the lazy run)";

/// B2: commit + first touch + decommit, per 4 KiB page, in 1 MiB batches. One warm-up round
/// first, so the minimum is the steady state: 2 entry writes per page (map at the touch, clear
/// at the decommit), one zeroed frame, and one invalidation batch per round.
fn commit_touch_decommit(env: &Env, s: &Space, name: &str, base: u64, rounds: u64) {
    let size = MIB;
    let pages = size / PAGE;
    let round = || {
        alloc(s, base, size, MEM_COMMIT, PAGE_READWRITE);
        touch_range(base, size);
        free(s, base, size, MEM_DECOMMIT);
    };
    round();
    let (cycles, work) = measure(|| (0..rounds).for_each(|_| round()));
    let min = Work::touch_in_order(base, pages)
        .plus(Work::decommit_present(pages, env.threshold))
        .times(rounds);
    report(
        env,
        Figure {
            name: name.into(),
            unit: "page",
            units: rounds * pages,
            cycles,
            work,
            min,
            why: WHY_COMMIT,
            entries: None,
        },
    );
}

/// B3: protect 256 committed, touched pages read-only and back, per call.
fn protect_256_pages(env: &Env, s: &Space, name: &str, base: u64, rounds: u64) {
    let size = 256 * PAGE;
    alloc(s, base, size, MEM_COMMIT, PAGE_READWRITE);
    touch_range(base, size);
    let (cycles, work) = measure(|| {
        for _ in 0..rounds {
            protect(s, base, size, PAGE_READONLY);
            protect(s, base, size, PAGE_READWRITE);
        }
    });
    let min = Work::protect(256, env.threshold).times(2 * rounds);
    report(
        env,
        Figure {
            name: name.into(),
            unit: "call",
            units: 2 * rounds,
            cycles,
            work,
            min,
            why: "",
            entries: None,
        },
    );
    free(s, base, size, MEM_DECOMMIT);
}

/// B4: `n` live 64 KiB reservations, then release them all; per operation.
fn reserve_release_live(env: &Env, s: &Space, name: &str, n: u64) {
    let mut v = Vec::with_capacity(n as usize);
    let (cycles, work) = measure(|| {
        for _ in 0..n {
            v.push(alloc(s, 0, KB64, MEM_RESERVE, PAGE_NOACCESS));
        }
        for &b in &v {
            free(s, b, 0, MEM_RELEASE);
        }
    });
    report(
        env,
        Figure {
            name: name.into(),
            unit: "op",
            units: 2 * n,
            cycles,
            work,
            min: Work::NONE,
            why: "",
            entries: None,
        },
    );
}

/// B5: commit and touch 256 MiB in a fresh reservation, per page: a zeroed frame and one entry
/// per page, plus the page tables the range needs (zeroed, one parent entry each).
fn commit_touch_256m(env: &Env, s: &Space, name: &str, size: u64) {
    let base = alloc(s, 0, size, MEM_RESERVE, PAGE_READWRITE);
    let (cycles, work) = measure(|| {
        alloc(s, base, size, MEM_COMMIT, PAGE_READWRITE);
        touch_range(base, size);
    });
    let pages = size / PAGE;
    let min = Work::touch_in_order(base, pages).plus(Work::tables(tables_needed(base, base + size)));
    report(
        env,
        Figure {
            name: name.into(),
            unit: "page",
            units: pages,
            cycles,
            work,
            min,
            why: WHY_COMMIT_256M,
            entries: None,
        },
    );
    free(s, base, 0, MEM_RELEASE);
}

// ---------------------------------------------------------------------------------------------
// The other round trips the issue asks for.

/// `VirtualQuery` of an address; the answer's region spans `run_pages` pages.
fn query(env: &Env, s: &Space, name: &str, addr: u64, n: u64) {
    let mut sum = 0u64;
    let (cycles, work) = measure(|| {
        for _ in 0..n {
            sum = sum.wrapping_add(s.virtual_query(addr).expect("VirtualQuery").region_size);
        }
    });
    core::hint::black_box(sum);
    report(
        env,
        Figure {
            name: name.into(),
            unit: "call",
            units: n,
            cycles,
            work,
            min: Work::NONE,
            why: "",
            entries: None,
        },
    );
}

/// Large-page commit: reserve + commit one 2 MiB large page, touch it, release it. Minimum: the
/// 2 MiB frame zeroed (512 frames), its directory entry written and cleared, one `invlpg`.
fn large_page_commit(env: &Env, s: &Space, name: &str, n: u64) {
    let once = || {
        let b = alloc(
            s,
            0,
            SPAN_2M,
            MEM_RESERVE | MEM_COMMIT | MEM_LARGE_PAGES,
            PAGE_READWRITE,
        );
        touch(b + 12345);
        free(s, b, 0, MEM_RELEASE);
    };
    once();
    let (cycles, work) = measure(|| (0..n).for_each(|_| once()));
    let min = Work {
        pte_writes: 2,
        frames_zeroed: 512,
        invlpg: 1,
        ..Work::NONE
    }
    .times(n);
    report(
        env,
        Figure {
            name: name.into(),
            unit: "2MiB-page",
            units: n,
            cycles,
            work,
            min,
            why: WHY_LARGE,
            entries: None,
        },
    );
}

/// Guard-page round trip: arm `PAGE_GUARD` on a touched page (`VirtualProtect`), access it
/// (STATUS_GUARD_PAGE_VIOLATION, guard cleared), retry (succeeds). Minimum: arming writes the
/// entry and invalidates the present page; the fault rewrites the entry present again (no
/// invalidation: the entry was not present).
fn guard_page_fault(env: &Env, s: &Space, name: &str, n: u64) {
    let base = alloc(s, 0, KB64, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE);
    touch(base);
    let (cycles, work) = measure(|| {
        for _ in 0..n {
            protect(s, base, PAGE, PAGE_READWRITE | PAGE_GUARD);
            // SAFETY: a committed page of the benchmark's own space.
            let f = unsafe { probe::write_u8(base, 2) }.expect_err("a guard page must fault");
            assert_eq!(
                f.memory.map(|m| m.code),
                Some(MemoryFault::GUARD_PAGE),
                "guard fault: {f:?}"
            );
            touch(base);
        }
    });
    let min = Work {
        pte_writes: 2,
        invlpg: 1,
        ..Work::NONE
    }
    .times(n);
    report(
        env,
        Figure {
            name: name.into(),
            unit: "round-trip",
            units: n,
            cycles,
            work,
            min,
            why: WHY_GUARD,
            entries: None,
        },
    );
    free(s, base, 0, MEM_RELEASE);
}

// ---------------------------------------------------------------------------------------------
// TLB full-flush threshold evidence.

/// For N pages: (a) the TLB primitives alone: N `invlpg` vs one CR3 reload, each followed by
/// re-touching the N pages and a 64-page working set (the refill a full flush costs); (b) the
/// real operation: `VirtualProtect` of N touched pages read-only and back, in a space whose
/// threshold is 64 (per-page `invlpg` up to 64) and in one whose threshold is 1 (always a full
/// flush).
/// The median of `v` (the TLB figures are medians: a host preemption of QEMU inflates a mean).
fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

fn tlb_threshold(env: &Env) {
    kprintln!(
        "tlb-threshold {}: median cycles per iteration; invlpg = N x invlpg + refill, full = one CR3 reload + refill, refill = re-touch N pages + a 64-page working set",
        env.place
    );
    let (reps, pages_max, ws) = (200u64, 128u64, 64u64);
    let s = space();
    let base = alloc(
        &s,
        0,
        (pages_max + ws) * PAGE,
        MEM_RESERVE | MEM_COMMIT,
        PAGE_READWRITE,
    );
    touch_range(base, (pages_max + ws) * PAGE);
    let other = base + pages_max * PAGE;
    let warm = |n: u64| {
        for i in 0..n {
            read(base + i * PAGE);
        }
        for i in 0..ws {
            read(other + i * PAGE);
        }
    };
    for n in [1u64, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128] {
        let mut by_page = Vec::with_capacity(reps as usize);
        let mut full = Vec::with_capacity(reps as usize);
        for _ in 0..reps {
            warm(n);
            let t0 = rdtsc();
            for i in 0..n {
                x86_64::instructions::tlb::flush(x86_64::VirtAddr::new(base + i * PAGE));
            }
            warm(n);
            by_page.push(rdtsc() - t0);
            warm(n);
            let t0 = rdtsc();
            x86_64::instructions::tlb::flush_all();
            warm(n);
            full.push(rdtsc() - t0);
        }
        let (by_page, full) = (median(by_page), median(full));
        kprintln!(
            "tlb-primitive {} N={n} invlpg={by_page} full={full} cheaper={}",
            env.place,
            if by_page <= full { "invlpg" } else { "full" }
        );
    }
    drop(s);
    let per_page = space_with_threshold(64);
    let flush = space_with_threshold(1);
    let mk = |sp: &Space| {
        sp.activate();
        let b = alloc(
            sp,
            0,
            (64 + ws) * PAGE,
            MEM_RESERVE | MEM_COMMIT,
            PAGE_READWRITE,
        );
        touch_range(b, (64 + ws) * PAGE);
        b
    };
    let (b1, b2) = (mk(&per_page), mk(&flush));
    for n in [1u64, 2, 4, 8, 16, 24, 32, 48, 64] {
        let mut cost = [0u64; 2];
        let mut work = [Work::NONE; 2];
        for (k, (sp, b)) in [(&per_page, b1), (&flush, b2)].into_iter().enumerate() {
            sp.activate();
            let mut samples = Vec::with_capacity(reps as usize / 2);
            let (_, w) = measure(|| {
                for _ in 0..reps / 2 {
                    let t0 = rdtsc();
                    protect(sp, b, n * PAGE, PAGE_READONLY);
                    for i in 0..n {
                        read(b + i * PAGE);
                    }
                    for i in 0..ws {
                        read(b + (64 + i) * PAGE);
                    }
                    protect(sp, b, n * PAGE, PAGE_READWRITE);
                    for i in 0..n {
                        read(b + i * PAGE);
                    }
                    for i in 0..ws {
                        read(b + (64 + i) * PAGE);
                    }
                    samples.push(rdtsc() - t0);
                }
            });
            cost[k] = median(samples) / 2;
            work[k] = w;
        }
        let calls = reps;
        kprintln!(
            "tlb-protect {} N={n} invlpg={} full={} cheaper={} (per VirtualProtect + re-touch; invlpg/call {} vs full flushes/call {})",
            env.place,
            cost[0],
            cost[1],
            if cost[0] <= cost[1] { "invlpg" } else { "full" },
            per_unit(work[0].invlpg, calls),
            per_unit(work[1].full_flushes, calls),
        );
    }
}

/// The pieces a host call's result write is made of, each timed alone in the kernel (no clock
/// laps): the memory manager's lock with the space found, a checked write's check, and the check
/// plus the write of a `MEMORY_BASIC_INFORMATION` and of an 8-byte result to the same page. One
/// `bench-path` line each: the least of 5 rounds of 2,000 calls, cycles per call, lock included.
fn host_call_pieces(env: &Env, s: &Space, page: u64) {
    let least = |f: &dyn Fn()| {
        (0..5)
            .map(|_| {
                let t0 = rdtsc();
                for _ in 0..2000 {
                    f();
                }
                (rdtsc() - t0) / 2000
            })
            .min()
            .unwrap_or(0)
    };
    let lock = least(&|| s.with(|_, _| ()));
    let check = least(&|| {
        core::hint::black_box(s.with(|s, cx| s.check_user_write(cx.mem, page + 64, 8).is_some()));
    });
    let write = least(&|| {
        s.with(|s, cx| {
            let out = s.check_user_write(cx.mem, page + 64, 8).expect("a committed, touched page");
            let mbi = out.in_same_page(page + 128, 48).expect("the same page");
            s.complete_user_write(cx, mbi, &[7u8; 48]);
            s.complete_user_write(cx, out, &48u64.to_le_bytes());
        })
    });
    let lookup = least(&|| {
        core::hint::black_box(s.with(|s, _| s.allocation_at(page + 64).is_some()));
    });
    let one = least(&|| {
        probe::copy_to_user(&[probe::UserCopy { to: page + 64, data: &[1u8; 8] }]).expect("a committed, touched page");
    });
    let three = least(&|| {
        let pieces = [
            probe::UserCopy { to: page + 64, data: &[0u8; 8] },
            probe::UserCopy { to: page + 128, data: &[7u8; 48] },
            probe::UserCopy { to: page + 64, data: &[48u8; 8] },
        ];
        probe::copy_to_user(&pieces).expect("a committed, touched page");
    });
    let byte = least(&|| {
        // SAFETY: a committed, touched page of the space in CR3, set up for this benchmark.
        unsafe { probe::write_u8(page + 64, 1) }.expect("a committed, touched page");
    });
    // The register image of an exception frame, written and read back as exception delivery
    // does (the registers are the kernel's own here, which it never uses: saving and loading
    // them back changes nothing), and the clean state loaded for the handlers.
    let image = page + 1024;
    let size = user::fpu_image_size();
    let save = least(&|| {
        user::with_saved_fpu(|fpu| probe::copy_to_user(&[probe::UserCopy { to: image, data: &fpu.bytes[..size] }]).expect("a touched page"));
    });
    let load = least(&|| {
        user::with_fpu_scratch(|fpu| {
            probe::copy_from_user(&mut [probe::UserRead { from: image, buf: &mut fpu.bytes[..size] }]).expect("a touched page");
            fpu.load_sanitised();
        });
    });
    // The same image saved and loaded by the CPU straight in guest memory, as exception
    // delivery and `continue` do for an image within one page.
    let save_direct = least(&|| user::save_fpu_to_user(image).expect("a touched page"));
    let load_direct = least(&|| assert!(user::load_fpu_from_user(image).expect("a touched page"), "the image just saved loads as it stands"));
    let initial = least(&user::FpuImage::load_initial);
    // Zeroing a 4 KiB page as `memset` does it (`rep stosq`) and as 64-bit stores, 8 a loop.
    #[repr(C, align(4096))]
    struct Page([u64; 512]);
    let mut zero_page = Box::new(Page([1; 512]));
    let zero_page = core::ptr::from_mut(&mut *zero_page) as u64;
    let stosq = least(&|| {
        // SAFETY: the 4 KiB of `zero_page`, owned here and not otherwise used while timed.
        unsafe { core::ptr::write_bytes(core::hint::black_box(zero_page) as *mut u8, 0, 4096) }
    });
    let movq = least(&|| {
        let p = core::hint::black_box(zero_page) as *mut u64;
        for i in (0..512).step_by(8) {
            for j in 0..8 {
                // SAFETY: as above.
                unsafe { p.add(i + j).write_volatile(0) }
            }
        }
    });
    // What a VirtualProtect of 256 present pages is made of: their entries replaced by
    // compare-and-exchange (as the walk does: the MMU may set A/D meanwhile) or by plain stores,
    // and the full flush past the threshold.
    let entries = zero_page as *mut u64;
    let cas256 = least(&|| {
        for i in 0..256 {
            // SAFETY: word `i` of `zero_page`, owned here; aligned.
            let word = unsafe { core::sync::atomic::AtomicU64::from_ptr(core::hint::black_box(entries).add(i)) };
            let old = word.load(Ordering::Relaxed);
            let _ = word.compare_exchange(old, old ^ 2, Ordering::SeqCst, Ordering::SeqCst);
        }
    });
    let store256 = least(&|| {
        for i in 0..256 {
            let p = core::hint::black_box(entries);
            // SAFETY: as above.
            unsafe { p.add(i).write_volatile(p.add(i).read_volatile() ^ 2) }
        }
    });
    let flush = least(&x86_64::instructions::tlb::flush_all);
    for (piece, cycles) in [
        ("entries_256:cmpxchg", cas256),
        ("entries_256:load+store", store256),
        ("tlb:full_flush", flush),
        ("zero_4k:rep_stosq", stosq),
        ("zero_4k:movq_x8", movq),
        ("lock", lock),
        ("lock+allocation_at", lookup),
        ("lock+check_user_write", check),
        ("lock+check+write_48+write_8", write),
        ("copy_to_user_8", one),
        ("copy_to_user_8+48+8", three),
        ("probe_write_u8", byte),
        ("fpu_image:xsave+copy_to_user", save),
        ("fpu_image:copy_from_user+xrstor", load),
        ("fpu_image:xsave_to_user", save_direct),
        ("fpu_image:xrstor_from_user", load_direct),
        ("fpu_image:xrstor_initial", initial),
    ] {
        kprintln!("bench-path {} {piece} cycles={cycles}", env.place);
    }
}

// ---------------------------------------------------------------------------------------------
// The in-guest benchmark: the same workloads from ring 3 through IHostMemoryManager.

/// `tests/guests/c/vmbench_guest.c`, built by `kernel/build.rs`.
const VMBENCH_GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/vmbench-guest.elf"));

/// The counters and the kernel-entry count read at the guest's last `@begin` marker.
struct Begin {
    name: String,
    counters: WorkCounters,
    entries: u64,
    zeroed: kernel::memory::ZeroedStats,
}

/// Set before the guest runs: where the lines say they ran, the TSC rate, the threshold.
static GUEST_ENV: spin::Once<Env> = spin::Once::new();
static BEGIN: spin::Mutex<Option<Begin>> = spin::Mutex::new(None);
/// Workloads reported, and whether a marker was not understood.
static GUEST_REPORTED: AtomicU64 = AtomicU64::new(0);
static GUEST_BAD_MARKER: AtomicBool = AtomicBool::new(false);

/// [`WRITE_HOOK`]: runs inside the guest's `write` system call for every piece of its output.
/// At `@begin NAME` it reads the work counters and the kernel-entry count; at `@end NAME ...` it
/// reads them again and prints the workload's `bench guest-<accel>` line at once (so a run that
/// stops later keeps the lines of the workloads it finished). The guest writes each marker with
/// one `write` call, so a marker is never split; the counters are read before anything else (the
/// printing and the kernel-heap allocations here are not counted work).
fn marker_hook(bytes: &[u8]) {
    if guest_threads::marker(bytes) {
        return;
    }
    if bytes.starts_with(b"@stages-") {
        return stages_hook(bytes);
    }
    let is_begin = bytes.starts_with(b"@begin ");
    if !is_begin && !bytes.starts_with(b"@end ") {
        return;
    }
    let counters = counters();
    let entries = kernel::guest::kernel_entries();
    let zeroed = kernel::memory::zeroed_stats();
    let text = String::from_utf8_lossy(bytes);
    let mut words = text.split_whitespace().skip(1);
    let name = String::from(words.next().unwrap_or(""));
    if is_begin {
        *BEGIN.lock() = Some(Begin {
            name,
            counters,
            entries,
            zeroed,
        });
        return;
    }
    let bad = |why: &str| {
        kprintln!("bench-error guest marker {:?}: {why}", text.trim_end());
        GUEST_BAD_MARKER.store(true, Ordering::SeqCst);
    };
    let Some(b) = BEGIN.lock().take().filter(|b| b.name == name) else {
        return bad("no matching @begin");
    };
    let Some(env) = GUEST_ENV.get() else {
        return bad("no environment");
    };
    let kv: Vec<(&str, &str)> = words.filter_map(|w| w.split_once('=')).collect();
    let get = |k: &str| kv.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
    let num = |k: &str| {
        get(k).and_then(|v| match v.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16).ok(),
            None => v.parse().ok(),
        })
    };
    let (Some(unit), Some(units), Some(cycles)) = (get("unit"), num("n"), num("cycles")) else {
        return bad("no unit=, n= or cycles=");
    };
    let range = num("base").zip(num("size"));
    let Some((min, entries_min, why)) = guest_minimum(&name, units, range, env.threshold) else {
        return bad("no known minimum for this workload");
    };
    let unit: &'static str = match unit {
        "op" => "op",
        "page" => "page",
        "call" => "call",
        "2MiB-page" => "2MiB-page",
        "round-trip" => "round-trip",
        _ => return bad("unknown unit"),
    };
    // The entries counted between the markers include the @end marker's own `write`.
    let entries = entries - b.entries - 1;
    report(
        env,
        Figure {
            name: name.clone(),
            unit,
            units,
            cycles,
            work: Work::between(&b.counters, &counters),
            min,
            why,
            entries: Some((entries, entries_min)),
        },
    );
    // Frames zeroed ahead by idle CPUs (`--config zero_idle`): how many of the workload's
    // demand-zero frames came from them, and how many idle CPUs zeroed meanwhile.
    if zeroed.taken != b.zeroed.taken || zeroed.zeroed != b.zeroed.zeroed {
        kprintln!(
            "bench-zeroed-ahead {} {name} taken={} zeroed_ahead={} returned={} listed={}->{}",
            env.place,
            zeroed.taken - b.zeroed.taken,
            zeroed.zeroed - b.zeroed.zeroed,
            zeroed.returned - b.zeroed.returned,
            b.zeroed.listed,
            zeroed.listed
        );
    }
    GUEST_REPORTED.fetch_add(1, Ordering::SeqCst);
}

/// The minimum work of an in-guest workload (the in-kernel minimum of the same operation) and
/// the kernel entries it needs: one per host call, one per page fault, and for the guard page the
/// fault plus the handler's return (its `EXCEPTION_CONTINUE_EXECUTION` goes back through the
/// kernel, which resumes the faulting context: Windows' `NtContinue`). Totals over `units`.
fn guest_minimum(
    name: &str,
    units: u64,
    range: Option<(u64, u64)>,
    threshold: u64,
) -> Option<(Work, u64, &'static str)> {
    const PAGES_PER_MIB: u64 = MIB / PAGE;
    Some(match name {
        "reserve_release_64k" => (Work::NONE, 2 * units, ""),
        "reserve_release_10k_live" => (Work::NONE, units, ""),
        "commit_touch_decommit" => {
            let rounds = units / PAGES_PER_MIB;
            // The guest's MiB is at SLOT_CTD, 2 MiB aligned.
            let touch = Work::touch_in_order(0, PAGES_PER_MIB);
            let min = touch.plus(Work::decommit_present(PAGES_PER_MIB, threshold)).times(rounds);
            (min, rounds * (2 + touch.faults_resolved), WHY_COMMIT)
        }
        "protect_256_pages" => (Work::protect(256, threshold).times(units), units, ""),
        "commit_touch_256m" | "commit_touch_256m_again" => {
            let (base, size) = range?;
            let touch = Work::touch_in_order(base, units);
            let min = touch.plus(Work::tables(tables_needed(base, base + size)));
            (min, 1 + touch.faults_resolved, WHY_COMMIT_256M)
        }
        "query_committed_64k" | "query_reserved_64m" | "query_free" => (Work::NONE, units, ""),
        "large_page_commit_2m" => (
            Work {
                pte_writes: 2,
                frames_zeroed: 512,
                invlpg: 1,
                ..Work::NONE
            }
            .times(units),
            2 * units,
            WHY_LARGE,
        ),
        "guard_page_fault" => (
            Work {
                pte_writes: 2,
                invlpg: 1,
                ..Work::NONE
            }
            .times(units),
            3 * units,
            WHY_GUARD,
        ),
        "host_call_addref_release" | "host_call_ticks_ns" => (Work::NONE, units, ""),
        _ => return None,
    })
}

/// The host-call clock at the last `@stages-begin` marker.
static STAGES_BEGIN: spin::Mutex<Option<(String, Snapshot)>> = spin::Mutex::new(None);
/// The rounds of the current breakdown pass so far: per call kind, the least cycles per call of
/// each stage and the calls of a round; the least guest cycles and "outside" per unit.
static STAGES_ROUNDS: spin::Mutex<Option<StageRounds>> = spin::Mutex::new(None);
/// Stage passes reported.
static STAGES_REPORTED: AtomicU64 = AtomicU64::new(0);
/// TSC cycles one lap of the host-call clock adds to the stage it closes, measured at start-up
/// ([`call_clock::lap_cost`]); subtracted from each stage.
static LAP_COST: AtomicU64 = AtomicU64::new(0);

/// See [`STAGES_ROUNDS`].
struct StageRounds {
    name: String,
    rounds: u64,
    stage_min: [[u64; call_clock::STAGES]; call_clock::KINDS],
    calls: [u64; call_clock::KINDS],
    unit_min: u64,
    outside_min: u64,
}

/// The host-call breakdown passes of the guest. Each pass is `of` rounds of the same loop; each
/// round is bracketed by `@stages-begin NAME`, which arms the host-call clock
/// (`kernel::guest::call_clock`), and `@stages-end NAME unit=U n=N cycles=C round=R of=M`, which
/// disarms it. After the last round it prints, per call kind the loop made, the cycles per call
/// of each stage (one lap's cost subtracted), the least of the rounds (a round the machine's
/// load disturbed does not count), and one `total` line: the least guest cycles per unit, the sum
/// of the kernel's stages, and the least "outside": what the kernel cannot see (`syscall` and
/// `sysretq`, the entry code, the stub and the guest's loop). The passes are separate from the
/// workloads because the clock's laps cost cycles.
fn stages_hook(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let mut words = text.split_whitespace();
    let marker = words.next().unwrap_or("");
    let name = String::from(words.next().unwrap_or(""));
    if marker == "@stages-begin" {
        *STAGES_BEGIN.lock() = Some((name, call_clock::snapshot()));
        call_clock::arm(true);
        return;
    }
    call_clock::arm(false);
    let after = call_clock::snapshot();
    let bad = |why: &str| {
        kprintln!("bench-error guest marker {:?}: {why}", text.trim_end());
        GUEST_BAD_MARKER.store(true, Ordering::SeqCst);
    };
    let Some((_, before)) = STAGES_BEGIN.lock().take().filter(|(n, _)| *n == name) else {
        return bad("no matching @stages-begin");
    };
    let Some(env) = GUEST_ENV.get() else {
        return bad("no environment");
    };
    let kv: Vec<(&str, &str)> = words.filter_map(|w| w.split_once('=')).collect();
    let num = |k: &str| kv.iter().find(|(key, _)| *key == k).and_then(|(_, v)| v.parse::<u64>().ok());
    let (Some(units), Some(cycles), Some(round), Some(of)) = (num("n"), num("cycles"), num("round"), num("of")) else {
        return bad("no n=, cycles=, round= or of=");
    };
    let lap = LAP_COST.load(Ordering::Relaxed);
    let mut rounds = STAGES_ROUNDS.lock();
    if round == 1 {
        *rounds = Some(StageRounds {
            name: name.clone(),
            rounds: 0,
            stage_min: [[u64::MAX; call_clock::STAGES]; call_clock::KINDS],
            calls: [0; call_clock::KINDS],
            unit_min: u64::MAX,
            outside_min: u64::MAX,
        });
    }
    let Some(r) = rounds.as_mut().filter(|r| r.name == name && r.rounds + 1 == round) else {
        return bad("rounds out of order");
    };
    r.rounds = round;
    let mut kernel_raw = 0;
    for kind in (0..call_clock::KINDS).filter(|&k| k != call_clock::OTHER) {
        let calls = after.calls[kind] - before.calls[kind];
        r.calls[kind] = calls;
        for s in 0..call_clock::STAGES {
            let raw = after.cycles[kind][s] - before.cycles[kind][s];
            let laps = after.laps[kind][s] - before.laps[kind][s];
            kernel_raw += raw;
            if let Some(net) = raw.saturating_sub(laps * lap).checked_div(calls) {
                r.stage_min[kind][s] = r.stage_min[kind][s].min(net);
            }
        }
    }
    r.unit_min = r.unit_min.min(cycles / units);
    r.outside_min = r.outside_min.min(cycles.saturating_sub(kernel_raw) / units);
    if round < of {
        return;
    }
    let mut per_unit = 0;
    for kind in (0..call_clock::KINDS).filter(|&k| k != call_clock::OTHER && r.calls[k] > 0) {
        let mut line = format!("bench-stages {} {name} {:<14} calls={}", env.place, call_clock::KIND_NAMES[kind], r.calls[kind]);
        let sum: u64 = r.stage_min[kind].iter().sum();
        for (s, stage) in call_clock::STAGE_NAMES.iter().enumerate() {
            line += &format!(" {stage}={}", r.stage_min[kind][s]);
        }
        line += &format!(" kernel={sum}");
        kprintln!("{line}");
        per_unit += sum * r.calls[kind] / units;
    }
    kprintln!(
        "bench-stages {} {name} total unit-cycles={} kernel={per_unit} outside={} lap-cost={lap} rounds={of} (least of the rounds; guest cycles include the laps, the stages are net of them; outside = guest - kernel with laps)",
        env.place,
        r.unit_min,
        r.outside_min,
    );
    *rounds = None;
    STAGES_REPORTED.fetch_add(1, Ordering::SeqCst);
}

/// How many workloads the guest reports (its `@end` markers).
const GUEST_WORKLOADS: u64 = 13;
/// How many host-call breakdown passes the guest makes (its `@stages-end` markers).
const GUEST_STAGE_PASSES: u64 = 7;

/// Runs the in-guest benchmark (its lines are printed as it goes, by [`marker_hook`]). Returns
/// whether the guest exited 0 and every one of its workloads was reported.
fn guest_benchmarks(env: Env) -> bool {
    GUEST_ENV.call_once(|| env);
    WRITE_HOOK.call_once(|| marker_hook);
    let outcome = kernel::guest::run_guest("vmbench-guest", VMBENCH_GUEST);
    let reported = GUEST_REPORTED.load(Ordering::SeqCst);
    if reported != GUEST_WORKLOADS {
        kprintln!("bench-error the guest reported {reported} of {GUEST_WORKLOADS} workloads");
    }
    let passes = STAGES_REPORTED.load(Ordering::SeqCst);
    if passes != GUEST_STAGE_PASSES {
        kprintln!("bench-error the guest made {passes} of {GUEST_STAGE_PASSES} host-call breakdown passes");
    }
    outcome == kernel::guest::GuestOutcome::Exited(0)
        && reported == GUEST_WORKLOADS
        && passes == GUEST_STAGE_PASSES
        && !GUEST_BAD_MARKER.load(Ordering::SeqCst)
}

// ---------------------------------------------------------------------------------------------
// Several CPUs: scaling of disjoint work in one space or a space each, lock waiting, the
// charge, and the cost of a TLB shootdown.

/// The application processors online.
fn aps() -> Vec<usize> {
    kernel::arch::percpu::cpus().skip(1).filter(|c| c.online).map(|c| c.index).collect()
}

/// Waits for `done`, serving TLB flush requests (this CPU may run the space too).
fn wait_for(done: impl Fn() -> bool) {
    let start = rdtsc();
    while !done() {
        assert!(rdtsc() - start < 60 * tsc_hz(), "bench: a CPU did not finish its share within a minute");
        memory::serve_flush_requests();
        core::hint::spin_loop();
    }
}

/// Runs `work` on as many CPUs at once as `spaces` has entries (the boot CPU and APs), worker
/// `i` with `spaces[i]` activated (one space shared, or one each) and interrupts on (as a guest
/// thread), started together, each doing ops until the TSC passes `start + duration` (at least
/// one op); returns (ops by all, wall cycles from the start to the last one's end).
fn on_cpus(spaces: &[alloc::sync::Arc<Space>], duration: u64, work: Workload) -> (u64, u64) {
    use alloc::sync::Arc;
    use core::sync::atomic::AtomicUsize;
    let cpus = spaces.len();
    let aps = aps();
    let ready = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let ops = Arc::new(AtomicU64::new(0));
    for (i, &cpu) in aps.iter().take(cpus - 1).enumerate() {
        let (space, ready, start, finished, ops) = (Arc::clone(&spaces[i + 1]), Arc::clone(&ready), Arc::clone(&start), Arc::clone(&finished), Arc::clone(&ops));
        let posted = kernel::arch::apic::run_on(cpu, move || {
            space.activate();
            x86_64::instructions::interrupts::enable();
            ready.fetch_add(1, Ordering::SeqCst);
            while start.load(Ordering::SeqCst) == 0 {
                core::hint::spin_loop();
            }
            ops.fetch_add(work(&space, i + 1, start.load(Ordering::SeqCst) + duration), Ordering::SeqCst);
            x86_64::instructions::interrupts::disable();
            Space::deactivate();
            finished.fetch_add(1, Ordering::SeqCst);
        });
        assert!(posted, "bench: CPU {cpu} took no work");
    }
    let space = &spaces[0];
    space.activate();
    wait_for(|| ready.load(Ordering::SeqCst) == cpus - 1);
    x86_64::instructions::interrupts::enable();
    let t0 = rdtsc();
    start.store(t0, Ordering::SeqCst);
    ops.fetch_add(work(space, 0, t0 + duration), Ordering::SeqCst);
    x86_64::instructions::interrupts::disable();
    wait_for(|| finished.load(Ordering::SeqCst) == cpus - 1);
    let t1 = rdtsc();
    Space::deactivate();
    (ops.load(Ordering::SeqCst), t1 - t0)
}

/// A scaling workload: ops by worker `i` (its own region) until the TSC passes the deadline;
/// returns how many.
type Workload = fn(&Space, usize, u64) -> u64;

/// The region of worker `i` (disjoint per worker, far from NULL-placed allocations).
fn region(i: usize) -> u64 {
    0x20_0000_0000 + i as u64 * 0x1_0000_0000
}

/// One op: commit 16 pages (64 KiB) of the worker's reservation, touch each, decommit them.
/// Ops until the TSC passes `until`; returns how many.
fn scaling_commit_touch_decommit(s: &Space, i: usize, until: u64) -> u64 {
    let base = region(i);
    let mut n = 0;
    let mut phase = [0u64; 3];
    while n == 0 || rdtsc() < until {
        let t0 = rdtsc();
        alloc(s, base, KB64, MEM_COMMIT, PAGE_READWRITE);
        let t1 = rdtsc();
        touch_range(base, KB64);
        let t2 = rdtsc();
        free(s, base, KB64, MEM_DECOMMIT);
        let t3 = rdtsc();
        phase[0] += t1 - t0;
        phase[1] += t2 - t1;
        phase[2] += t3 - t2;
        n += 1;
    }
    add_phases(phase);
    n
}

/// Cycles of each phase of the scaling ops, all CPUs together (commit / touch / decommit, or
/// reserve / release / -).
static PHASE_CYCLES: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];

fn add_phases(phase: [u64; 3]) {
    for (sum, p) in PHASE_CYCLES.iter().zip(phase) {
        sum.fetch_add(p, Ordering::Relaxed);
    }
}

/// One op: reserve 64 KiB at the worker's address and release it. Ops until the TSC passes
/// `until`; returns how many.
fn scaling_reserve_release(s: &Space, i: usize, until: u64) -> u64 {
    let base = region(i) + 0x1000_0000;
    let mut n = 0;
    let mut phase = [0u64; 3];
    while n == 0 || rdtsc() < until {
        let t0 = rdtsc();
        alloc(s, base, KB64, MEM_RESERVE, PAGE_NOACCESS);
        let t1 = rdtsc();
        free(s, base, 0, MEM_RELEASE);
        phase[0] += t1 - t0;
        phase[1] += rdtsc() - t1;
        n += 1;
    }
    add_phases(phase);
    n
}

/// The scaling workloads: name and op.
const SCALING_WORKLOADS: [(&str, Workload); 2] =
    [("commit_touch_decommit_64k", scaling_commit_touch_decommit), ("reserve_release_64k", scaling_reserve_release)];

/// The spaces of `cpus` workers: one shared by all, or one each (`per_cpu`); worker `i`'s
/// region reserved in its space.
fn scaling_spaces(cpus: usize, per_cpu: bool) -> Vec<alloc::sync::Arc<Space>> {
    use alloc::sync::Arc;
    let shared = Arc::new(Space::new().expect("Space::new"));
    let spaces: Vec<Arc<Space>> =
        (0..cpus).map(|_| if per_cpu { Arc::new(Space::new().expect("Space::new")) } else { Arc::clone(&shared) }).collect();
    for (i, s) in spaces.iter().enumerate() {
        alloc(s, region(i), KB64, MEM_RESERVE, PAGE_NOACCESS);
    }
    spaces
}

/// One timed run of `work` on `spaces` (after a warm-up of a tenth: tables created, caches
/// filled): ops, ops/s of all CPUs together, and per op the shootdown IPIs, the lock waits, the
/// waits that halted and the wake-up IPIs.
struct Run {
    ops: u64,
    per_s: f64,
    ipis: f64,
    /// TSC cycles per shootdown round (first IPI to last acknowledgement).
    round_cycles: f64,
    /// TSC cycles a target spent in the shootdown IPI's handler, per IPI it took.
    handler_cycles: f64,
    waits: f64,
    halts: f64,
    wakes: f64,
    /// TSC cycles per op waiting for locks (all CPUs' waits over all CPUs' ops).
    wait_cycles: f64,
    /// TSC cycles per op of each phase (commit / touch / decommit, or reserve / release / -).
    phases: [f64; 3],
}

fn timed_run(env: &Env, spaces: &[alloc::sync::Arc<Space>], duration: u64, work: Workload) -> Run {
    on_cpus(spaces, duration / 10, work);
    for p in &PHASE_CYCLES {
        p.store(0, Ordering::Relaxed);
    }
    let (rounds0, locks0) = (memory::shootdown_stats(), memory::lock::lock_stats());
    let (ops, cycles) = on_cpus(spaces, duration, work);
    let (rounds1, locks1) = (memory::shootdown_stats(), memory::lock::lock_stats());
    let per_op = |a: u64, b: u64| (b - a) as f64 / ops as f64;
    let phases = PHASE_CYCLES.each_ref().map(|p| p.load(Ordering::Relaxed) as f64 / ops as f64);
    Run {
        ops,
        per_s: ops as f64 * env.tsc_hz as f64 / cycles as f64,
        ipis: per_op(rounds0.ipis, rounds1.ipis),
        round_cycles: (rounds1.cycles - rounds0.cycles) as f64 / (rounds1.rounds - rounds0.rounds).max(1) as f64,
        handler_cycles: (rounds1.handler_cycles - rounds0.handler_cycles) as f64 / (rounds1.ipis_taken - rounds0.ipis_taken).max(1) as f64,
        waits: per_op(locks0.waits, locks1.waits),
        halts: per_op(locks0.halts, locks1.halts),
        wakes: per_op(locks0.wake_ipis, locks1.wake_ipis),
        wait_cycles: per_op(locks0.wait_cycles, locks1.wait_cycles),
        phases,
    }
}

/// The scaling table: each workload from 1, 2 and 4 CPUs at once (as many as are online), first
/// on disjoint regions of one space that every participating CPU runs (rows named after the
/// workload), then with a space per CPU (rows `<workload>/space-per-cpu`: the CPUs share only
/// the global structures — frames, charge, registry — and no space lock); ops/s of all CPUs
/// together and the speed-up over one CPU. Also per op the IPIs of TLB shootdowns (a decommit of
/// touched pages makes one round to every other CPU running the space) and the cycles of a round
/// (from its first IPI to its last acknowledgement), the waits for a lock (any of
/// `kernel::memory::lock`'s), those that halted, and the wake-up IPIs unlocks sent.
/// The in-kernel scaling table, with zeroing ahead paused (see [`scaling_rows`]).
fn scaling(env: &Env) {
    memory::with_zero_ahead_paused(|| scaling_rows(env));
}

/// The in-kernel scaling table. Frames are not zeroed ahead meanwhile: the table measures how the
/// memory manager lets disjoint work from 1, 2 and 4 CPUs proceed, and a CPU left idle in the
/// 1-CPU row would zero that row's frames while none would in the 4-CPU row (Linux, the peer
/// column, zeroes none ahead either).
fn scaling_rows(env: &Env) {
    let online = 1 + aps().len();
    kprintln!(
        "bench-scaling-title in-kernel on {online} CPUs (ring 0 on each CPU through the Space API, each CPU's space in CR3, interrupts on; \
disjoint regions of one space, or with /space-per-cpu one space per CPU; no frames zeroed ahead by idle CPUs meanwhile; {} under QEMU, the vCPUs share the host's cores with everything else)",
        env.place
    );
    kprintln!(
        "bench-scaling {:<40} {:>4} {:>7} {:>12} {:>8} {:>8} {:>9} {:>10} {:>8} {:>8} {:>8} {:>9} {:>17}",
        "workload", "cpus", "ops", "ops/s", "speed-up", "ipis/op", "cyc/round", "cyc/ipi-in", "waits/op", "halts/op", "wakes/op", "wait-cyc", "phase-cyc/op"
    );
    // Each row runs for a fixed time and counts the ops all CPUs completed.
    let duration = env.tsc_hz * 2;
    for (name, work) in SCALING_WORKLOADS {
        for per_cpu in [false, true] {
            let name = if per_cpu { format!("{name}/space-per-cpu") } else { String::from(name) };
            let mut single = 0.0;
            for cpus in [1usize, 2, 4] {
                if cpus > online {
                    kprintln!("bench-scaling {name:<40} {cpus:>4}     n/a (only {online} CPUs online)");
                    continue;
                }
                let r = timed_run(env, &scaling_spaces(cpus, per_cpu), duration, work);
                if cpus == 1 {
                    single = r.per_s;
                }
                kprintln!(
                    "bench-scaling {name:<40} {cpus:>4} {:>7} {:>12.0} {:>7.2}x {:>8.2} {:>9.0} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>9.0} {:>7.0}/{:.0}/{:.0}",
                    r.ops,
                    r.per_s,
                    r.per_s / single,
                    r.ipis,
                    r.round_cycles,
                    r.handler_cycles,
                    r.waits,
                    r.halts,
                    r.wakes,
                    r.wait_cycles,
                    r.phases[0],
                    r.phases[1],
                    r.phases[2]
                );
            }
        }
    }
}

/// The lock waiters' policy compared (`--guest-args scaling` only): each workload on one space
/// from 2 CPUs with waiters that halt at once, after spinning 5 µs, 20 µs (the default) or
/// 200 µs, and from 1 CPU for reference, in short slices (0.2 s) taken in turn, round after
/// round, so that a change of the host's load falls on every policy alike; per policy the min /
/// median / max ops/s over the slices, the median's speed-up over the 1-CPU median, and lock
/// waits, halts and wake-up IPIs per op over all its slices.
fn lock_policy(env: &Env) {
    const SLICES: usize = 10;
    const POLICIES: [(&str, u64); 5] =
        [("1-cpu", SPIN_DEFAULT), ("halt-at-once", 0), ("halt-after-5us", 5), ("halt-after-20us", 20), ("halt-after-200us", 200)];
    const SPIN_DEFAULT: u64 = memory::lock::SPIN_BEFORE_HALT_US;
    if aps().is_empty() {
        kprintln!("bench-lock-policy n/a (one CPU online)");
        return;
    }
    let duration = env.tsc_hz / 5;
    kprintln!(
        "bench-lock-policy {:<26} {:<17} {:>10} {:>10} {:>10} {:>8} {:>8} {:>8} {:>8}",
        "workload", "policy", "min ops/s", "median", "max", "speed-up", "waits/op", "halts/op", "wakes/op"
    );
    for (name, work) in SCALING_WORKLOADS {
        let mut runs: Vec<Vec<Run>> = POLICIES.iter().map(|_| Vec::new()).collect();
        for _ in 0..SLICES {
            for (p, &(policy, us)) in POLICIES.iter().enumerate() {
                let cpus = if policy == "1-cpu" { 1 } else { 2 };
                let previous = memory::lock::set_spin_before_halt_us(us);
                runs[p].push(timed_run(env, &scaling_spaces(cpus, false), duration, work));
                memory::lock::set_spin_before_halt_us(previous);
            }
        }
        let median = |v: &[Run]| {
            let mut r: Vec<f64> = v.iter().map(|r| r.per_s).collect();
            r.sort_by(f64::total_cmp);
            (r[0], r[r.len() / 2], r[r.len() - 1])
        };
        let single = median(&runs[0]).1;
        for (p, &(policy, _)) in POLICIES.iter().enumerate() {
            let (min, med, max) = median(&runs[p]);
            let ops: u64 = runs[p].iter().map(|r| r.ops).sum();
            let per_op = |f: fn(&Run) -> f64| runs[p].iter().map(|r| f(r) * r.ops as f64).sum::<f64>() / ops as f64;
            kprintln!(
                "bench-lock-policy {name:<26} {policy:<17} {min:>10.0} {med:>10.0} {max:>10.0} {:>7.2}x {:>8.2} {:>8.2} {:>8.2}",
                med / single,
                per_op(|r| r.waits),
                per_op(|r| r.halts),
                per_op(|r| r.wakes)
            );
        }
    }
}

/// The commit charge's check-and-charge, as it is (lock-free: one compare-exchange) and as it
/// was (the same check under a [`SpinLock`](memory::SpinLock)), from 1 CPU and from 2 at once
/// (`--guest-args scaling` only): a charge of 16 pages and its uncharge per op on a charge of
/// its own (the system's is left alone), ops/s of all CPUs together.
fn charge_contention(env: &Env) {
    use address_space::{CommitCharge, CriticalLevel};
    use alloc::sync::Arc;
    struct Charges {
        free: CommitCharge,
        locked: memory::SpinLock<(u64, u64)>,
    }
    static CHARGES: spin::Once<Charges> = spin::Once::new();
    const LIMIT: u64 = 1 << 20;
    let charges = CHARGES.call_once(|| Charges { free: CommitCharge::new(LIMIT, LIMIT / 10), locked: memory::SpinLock::new((0, 0)) });
    fn lock_free(_: &Space, _: usize, until: u64) -> u64 {
        let c = &CHARGES.get().expect("set").free;
        let mut n = 0;
        while n == 0 || rdtsc() < until {
            for _ in 0..64 {
                c.try_charge(16, 0, CriticalLevel::Task).expect("fits");
                c.uncharge(16, 0);
            }
            n += 64;
        }
        n
    }
    fn locked(_: &Space, _: usize, until: u64) -> u64 {
        let c = &CHARGES.get().expect("set").locked;
        let mut n = 0;
        while n == 0 || rdtsc() < until {
            for _ in 0..64 {
                x86_64::instructions::interrupts::without_interrupts(|| {
                    let mut g = c.lock();
                    assert!(g.0 + 16 + g.1 <= LIMIT - LIMIT / 10, "fits");
                    g.0 += 16;
                });
                x86_64::instructions::interrupts::without_interrupts(|| c.lock().0 -= 16);
            }
            n += 64;
        }
        n
    }
    let online = 1 + aps().len();
    let space = Arc::new(Space::new().expect("Space::new"));
    for (name, work) in [("charge_uncharge/lock-free", lock_free as Workload), ("charge_uncharge/spin-lock", locked)] {
        let mut single = 0.0;
        for cpus in [1usize, 2] {
            if cpus > online {
                continue;
            }
            let spaces: Vec<Arc<Space>> = (0..cpus).map(|_| Arc::clone(&space)).collect();
            let r = timed_run(env, &spaces, env.tsc_hz / 2, work);
            if cpus == 1 {
                single = r.per_s;
            }
            kprintln!("bench-charge {name:<26} cpus={cpus} ops={} ops/s={:.0} speed-up={:.2}x waits/op={:.3}", r.ops, r.per_s, r.per_s / single, r.waits);
        }
    }
    assert_eq!((charges.free.committed_pages(), charges.locked.lock().0), (0, 0));
}

/// The cost of a shootdown round: `VirtualProtect` of one touched page read-only and back, with
/// 0, 1 and 3 other CPUs running the space: `busy` ones spin in ring 0 with its root loaded and
/// interrupts on (as a guest thread runs: they take the IPI where they are), `lazy` ones idle
/// halted with its root loaded (rounds that free no table leave them out: no IPI). IPIs per
/// call, and TSC cycles per round from the first IPI to the last acknowledgement (the caller's
/// own `invlpg` not included).
fn shootdown_cost(env: &Env) {
    use alloc::sync::Arc;
    const CALLS: u64 = 400;
    let aps = aps();
    for (others, busy) in [(0usize, false), (1, true), (1, false), (3, true), (3, false)] {
        let how = if others == 0 { "" } else if busy { " busy" } else { " lazy" };
        if others > aps.len() {
            kprintln!("bench-shootdown others={others}{how} n/a (only {} APs online)", aps.len());
            continue;
        }
        let s = Arc::new(Space::new().expect("Space::new"));
        let page = alloc(&s, 0, KB64, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE);
        s.with(|sp, cx| sp.write_user(cx, page, &[1])).expect("write");
        let stop = Arc::new(AtomicBool::new(false));
        let finished: Vec<Arc<AtomicBool>> = aps[..others]
            .iter()
            .map(|&cpu| {
                let (sp, stop) = (Arc::clone(&s), Arc::clone(&stop));
                let (running, finished) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
                let (r, f) = (Arc::clone(&running), Arc::clone(&finished));
                assert!(kernel::arch::apic::run_on(cpu, move || {
                    sp.activate();
                    r.store(true, Ordering::SeqCst);
                    if busy {
                        x86_64::instructions::interrupts::enable();
                        while !stop.load(Ordering::SeqCst) {
                            core::hint::spin_loop();
                        }
                        x86_64::instructions::interrupts::disable();
                        Space::deactivate();
                    }
                    f.store(true, Ordering::SeqCst);
                }));
                wait_for(|| running.load(Ordering::SeqCst));
                finished
            })
            .collect();
        // Warm-up, untimed: in a run of the scaling part alone these are the first
        // `VirtualProtect` calls, and QEMU translates their code at the first one.
        for i in 0..16 {
            protect(&s, page, PAGE, if i % 2 == 0 { PAGE_READONLY } else { PAGE_READWRITE });
        }
        let before = memory::shootdown_stats();
        let t0 = rdtsc();
        for i in 0..CALLS {
            protect(&s, page, PAGE, if i % 2 == 0 { PAGE_READONLY } else { PAGE_READWRITE });
        }
        let cycles = rdtsc() - t0;
        let after = memory::shootdown_stats();
        let rounds = after.rounds - before.rounds;
        let round_cycles = (after.cycles - before.cycles) / rounds.max(1);
        kprintln!(
            "bench-shootdown others={others}{how} calls={CALLS} ipis_per_call={:.2} rounds={rounds} cycles_per_round={round_cycles} ns_per_round={:.0} cycles_per_call={} ns_per_call={:.0} lazy_skips_per_call={:.2}",
            (after.ipis - before.ipis) as f64 / CALLS as f64,
            round_cycles as f64 * 1e9 / env.tsc_hz as f64,
            cycles / CALLS,
            (cycles / CALLS) as f64 * 1e9 / env.tsc_hz as f64,
            (after.lazy_skips - before.lazy_skips) as f64 / CALLS as f64
        );
        stop.store(true, Ordering::SeqCst);
        for (&cpu, finished) in aps[..others].iter().zip(&finished) {
            wait_for(|| finished.load(Ordering::SeqCst));
            if !busy {
                let done = Arc::new(AtomicBool::new(false));
                let d = Arc::clone(&done);
                assert!(kernel::arch::apic::run_on(cpu, move || {
                    Space::deactivate();
                    d.store(true, Ordering::SeqCst);
                }));
                wait_for(|| done.load(Ordering::SeqCst));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------

fn bench_main(boot_info: &'static mut bootloader_api::BootInfo) -> ! {
    kernel::init(boot_info);
    let (accel, signature) = accelerator();
    let tsc_hz = tsc_hz();
    LAP_COST.store(call_clock::lap_cost(), Ordering::Relaxed);
    let threshold = SpaceConfig::default().tlb_flush_threshold as u64;
    let env = Env {
        place: format!("kernel-{accel}"),
        tsc_hz,
        threshold,
    };
    let a = memory::accounting();
    kprintln!(
        "bench-env accel={accel} signature=\"{signature}\" tsc_hz={tsc_hz} (PIT-calibrated) flush_threshold={threshold} ram={}MiB commit_limit={}MiB",
        a.ram_bytes >> 20,
        a.commit_limit_bytes >> 20
    );
    if accel == "TCG" {
        kprintln!(
            "bench-note cycles under TCG are emulation (translated code, softmmu TLB): compare operations, not hardware"
        );
    }
    // `--guest-args scaling`: only the in-kernel scaling table, the lock waiters' policies
    // compared and the shootdown cost.
    if kernel::guest::guest_args() == b"scaling" {
        scaling(&env);
        lock_policy(&env);
        charge_contention(&env);
        shootdown_cost(&env);
        kprintln!("bench complete");
        qemu::exit(qemu::ExitCode::Success)
    }
    // `--guest-args guest-threads`: only the guest-thread scaling table.
    if kernel::guest::guest_args() == b"guest-threads" {
        WRITE_HOOK.call_once(|| marker_hook);
        let ok = memory::with_zero_ahead_paused(|| guest_threads::run(tsc_hz, &format!("guest-{accel}")));
        kprintln!("bench {}", if ok { "complete" } else { "failed: the guest-thread benchmark did not complete (see above)" });
        qemu::exit(if ok { qemu::ExitCode::Success } else { qemu::ExitCode::Failure })
    }

    // `--guest-args guest`: only the in-guest workloads and their breakdown passes (an A/B of
    // the host-call path without the in-kernel part's minutes).
    if kernel::guest::guest_args() == b"guest" {
        let ok = guest_benchmarks(Env {
            place: format!("guest-{accel}"),
            tsc_hz,
            threshold,
        });
        kprintln!("bench {}", if ok { "complete" } else { "failed: the in-guest benchmark did not complete (see above)" });
        qemu::exit(if ok { qemu::ExitCode::Success } else { qemu::ExitCode::Failure })
    }

    // The peer program's workloads, each in a fresh space loaded in CR3.
    {
        let s = space();
        reserve_release_64k(&env, &s, "reserve_release_64k", 20_000);
    }
    {
        let s = space();
        let base = alloc(&s, 0, MIB, MEM_RESERVE, PAGE_NOACCESS);
        commit_touch_decommit(&env, &s, "commit_touch_decommit", base, 200);
    }
    {
        let s = space();
        let base = alloc(&s, 0, 256 * PAGE, MEM_RESERVE, PAGE_NOACCESS);
        protect_256_pages(&env, &s, "protect_256_pages", base, 5_000);
    }
    {
        let s = space();
        reserve_release_live(&env, &s, "reserve_release_10k_live", 10_000);
    }
    {
        let s = space();
        commit_touch_256m(&env, &s, "commit_touch_256m", 256 * MIB);
        // Again, on frames the first pass used: QEMU backs guest RAM lazily, so the first pass
        // also pays the host's first touch of those 256 MiB (a host page fault per page).
        commit_touch_256m(&env, &s, "commit_touch_256m_again", 256 * MIB);
    }

    // Query, large pages, guard pages.
    {
        let s = space();
        let b = alloc(&s, 0, KB64, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE);
        touch_range(b, KB64);
        query(&env, &s, "query_committed_64k", b, 20_000);
        let r = alloc(&s, 0, 64 * MIB, MEM_RESERVE, PAGE_READWRITE);
        query(&env, &s, "query_reserved_64m", r, 20_000);
        query(&env, &s, "query_free", 0x4000_0000_0000, 20_000);
        host_call_pieces(&env, &s, b);
    }
    {
        let s = space();
        large_page_commit(&env, &s, "large_page_commit_2m", 200);
    }
    {
        let s = space();
        guard_page_fault(&env, &s, "guard_page_fault", 5_000);
    }

    // Scale: live allocations.
    for live in [1u64, 1_000, 100_000] {
        let s = space();
        let mut bases = Vec::with_capacity(live as usize);
        for _ in 0..live {
            bases.push(alloc(&s, 0, KB64, MEM_RESERVE, PAGE_NOACCESS));
        }
        reserve_release_64k(&env, &s, &format!("reserve_release_64k@live={live}"), 5_000);
        query(
            &env,
            &s,
            &format!("query@live={live}"),
            bases[bases.len() / 2],
            5_000,
        );
        let w = alloc(&s, 0, MIB, MEM_RESERVE, PAGE_NOACCESS);
        commit_touch_decommit(
            &env,
            &s,
            &format!("commit_touch_decommit@live={live}"),
            w,
            20,
        );
        let p = alloc(&s, 0, 256 * PAGE, MEM_RESERVE, PAGE_NOACCESS);
        protect_256_pages(&env, &s, &format!("protect_256_pages@live={live}"), p, 100);
        // Dropping the space releases everything; B4 at this scale:
        drop(s);
        let s = space();
        reserve_release_live(&env, &s, &format!("reserve_release_live@live={live}"), live);
    }

    // Scale: reservation size.
    for (label, size) in [("64m", 64 * MIB), ("1g", GIB), ("16g", 16 * GIB)] {
        let s = space();
        let (cycles, work) = measure(|| {
            for _ in 0..5_000 {
                let b = alloc(&s, 0, size, MEM_RESERVE, PAGE_NOACCESS);
                free(&s, b, 0, MEM_RELEASE);
            }
        });
        report(
            &env,
            Figure {
                name: format!("reserve_release@size={label}"),
                unit: "op",
                units: 5_000,
                cycles,
                work,
                min: Work::NONE,
                why: "",
                entries: None,
            },
        );
        let b = alloc(&s, 0, size, MEM_RESERVE, PAGE_NOACCESS);
        query(
            &env,
            &s,
            &format!("query_reserved@size={label}"),
            b + size / 2,
            5_000,
        );
        // The same reservation with its first 64 KiB committed and touched (a GC heap's shape):
        // the reserved rest lies past the allocation's committed extent, so its query reads no
        // table, whatever the size.
        alloc(&s, b, KB64, MEM_COMMIT, PAGE_READWRITE);
        touch_range(b, KB64);
        query(
            &env,
            &s,
            &format!("query_reserved_tail@size={label}"),
            b + KB64,
            500,
        );
        free(&s, b, KB64, MEM_DECOMMIT);
        // A 1 MiB window at the far end of the reservation: cost must not depend on the size.
        commit_touch_decommit(
            &env,
            &s,
            &format!("commit_touch_decommit@size={label}"),
            b + size - MIB,
            20,
        );
        // Release of the whole reservation after that window was used (its tables are gone again).
        alloc(&s, b + size - MIB, MIB, MEM_COMMIT, PAGE_READWRITE);
        touch_range(b + size - MIB, MIB);
        // Release must also free the page tables only this reservation used (one parent entry
        // cleared each): in a space holding nothing else, all of them, those of the window and
        // those the decommit of its first 64 KiB kept.
        let t = s.with(|s, _| s.table_pages());
        let (cycles, work) = measure(|| free(&s, b, 0, MEM_RELEASE));
        let min = Work::decommit_present(MIB / PAGE, env.threshold).plus(Work {
            pte_writes: t,
            table_pages_freed: t,
            ..Work::NONE
        });
        report(
            &env,
            Figure {
                name: format!("release_touched_1m@size={label}"),
                unit: "op",
                units: 1,
                cycles,
                work,
                min,
                why: "freeing a page table whose directory keeps other tables rewrites the child count in the directory's entry",
                entries: None,
            },
        );
    }

    tlb_threshold(&env);
    scaling(&env);
    shootdown_cost(&env);

    // The same workloads from ring 3. (Running the guest first under KVM gains nothing on the
    // machine this was written on: there KVM stops the VM with an emulation failure at the `clac`
    // of the kernel's exception entry from ring 3, right after the guest's first system call, as
    // it does at the probe's `stac` in the in-kernel part after its first workload.)
    let guest_ok = guest_benchmarks(Env {
        place: format!("guest-{accel}"),
        tsc_hz,
        threshold,
    }) & memory::with_zero_ahead_paused(|| guest_threads::run(tsc_hz, &format!("guest-{accel}"))); // `&`: the second runs whatever the first did

    memory::print_accounting();
    if !guest_ok {
        kprintln!("bench failed: the in-guest benchmark did not complete (see above)");
        qemu::exit(qemu::ExitCode::Failure)
    }
    kprintln!("bench complete");
    qemu::exit(qemu::ExitCode::Success)
}
