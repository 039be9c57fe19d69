//! TLB shootdown and the memory manager under concurrency (issue 13), in ring 0 on every CPU,
//! before guests have threads: application processors run closures handed to them with
//! `apic::run_on` (test hooks), load a space's root with `Space::activate` and touch its pages
//! through the fault probes (a `stac` window), as a guest thread would.
//!
//! - IPIs go to exactly the CPUs that run a space: none while no other CPU does, one per call
//!   that narrows access per CPU that does, none to a CPU idling lazily with the root loaded
//!   unless the call freed a page table (that CPU flushes when it wakes).
//! - The torture: APs read (and write) a page in a loop while the boot CPU decommits and
//!   recommits, protects and unprotects, releases and reallocates it up to thousands of times
//!   (each mode time-boxed, at least 30 rounds: the counts are printed). A read
//!   made wholly after a call returned (and before the next began) must see exactly what the
//!   call left: a fault after a decommit, release or `PAGE_NOACCESS`, a refused write after
//!   `PAGE_READONLY`, the new page's contents after a recommit (never the old frame's).
//! - Every CPU reserves, commits, touches, protects, queries, decommits and releases its own
//!   regions of one shared space at once, checking data and results; frames, commit and page
//!   tables are exactly as before at the end.
//!
//! The suite runs this image at 2 and 4 CPUs; with one CPU the cases that need another say so
//! and pass.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use address_space::win32::*;
use kernel::arch::probe::{self, FaultRecord};
use kernel::arch::{apic, percpu, time};
use kernel::memory::{self, RwSpinLock, Space, SpinLock};
use qemu_tests::{ensure, ensure_eq, frame_counts};

const PAGE: u64 = 4096;

fn read(addr: u64) -> Result<u8, FaultRecord> {
    // SAFETY: guest pages of a test space; reading them has no side effect.
    unsafe { probe::read_u8(addr) }
}

fn write(addr: u64, value: u8) -> Result<(), FaultRecord> {
    // SAFETY: guest pages of a test space, owned by this test.
    unsafe { probe::write_u8(addr, value) }
}

fn aps() -> Vec<usize> {
    percpu::cpus().skip(1).filter(|c| c.online).map(|c| c.index).collect()
}

/// Waits (boundedly, 20 s) until `done`, serving flush requests meanwhile.
fn wait_until(what: &str, done: impl Fn() -> bool) -> Result<(), String> {
    let start = time::ticks_ns();
    while !done() {
        ensure!(time::ticks_ns() - start < 20_000_000_000, "timed out waiting for {what}");
        memory::serve_flush_requests();
        core::hint::spin_loop();
    }
    Ok(())
}

/// Runs `work` on CPU `cpu` and returns a flag that turns true when it has finished.
fn spawn(cpu: usize, work: impl FnOnce() + Send + 'static) -> Result<Arc<AtomicBool>, String> {
    let done = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&done);
    ensure!(
        apic::run_on(cpu, move || {
            work();
            flag.store(true, Ordering::SeqCst);
        }),
        "CPU {cpu} took no work"
    );
    Ok(done)
}

fn on(cpu: usize, work: impl FnOnce() + Send + 'static) -> Result<(), String> {
    let done = spawn(cpu, work)?;
    wait_until("the AP's work", || done.load(Ordering::SeqCst))
}

fn vm<T>(r: Result<T, address_space::VmError>, what: &str) -> Result<T, String> {
    r.map_err(|e| alloc::format!("{what}: {e:?}"))
}

/// Calls that narrow access make one round with one IPI per other CPU running the space, none
/// at all while no other CPU runs it, and none to a CPU idling lazily with its root loaded unless
/// the round freed a page table; a lazy CPU that a round left out flushes when it wakes.
fn ipis_go_exactly_to_the_cpus_running_the_space() -> Result<(), String> {
    let aps = aps();
    if aps.is_empty() {
        kernel::kprintln!("    (one CPU: nothing to check)");
        return Ok(());
    }
    let space = Arc::new(vm(Space::new(), "Space::new")?);
    let a = vm(space.virtual_alloc(0, 16 * PAGE, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE), "alloc")?;
    vm(space.with(|s, cx| s.write_user(cx, a, &[1; 16 * PAGE as usize])), "touch")?;
    let counted = || memory::with_mm(|mm| mm.counters.shootdown_ipis);
    let delta = |before: memory::tlb::ShootdownStats, after: memory::tlb::ShootdownStats| memory::tlb::ShootdownStats {
        rounds: after.rounds - before.rounds,
        ipis: after.ipis - before.ipis,
        served: after.served - before.served,
        lazy_skips: after.lazy_skips - before.lazy_skips,
        lazy_flushes: after.lazy_flushes - before.lazy_flushes,
        ..Default::default()
    };
    let toggle = |n: u64| -> Result<(memory::tlb::ShootdownStats, u64), String> {
        let (before, c0) = (memory::shootdown_stats(), counted());
        for _ in 0..n {
            vm(space.virtual_protect(a, 16 * PAGE, PAGE_READONLY), "protect")?;
            vm(space.virtual_protect(a, 16 * PAGE, PAGE_READWRITE), "protect")?;
        }
        Ok((delta(before, memory::shootdown_stats()), counted() - c0))
    };
    // Nobody runs it (the boot CPU is on the kernel's table): no IPI.
    ensure_eq!(space.active_cpus().0, 0);
    let (d, c) = toggle(50)?;
    ensure_eq!((d.rounds, d.ipis, c), (0, 0, 0));
    // Each AP runs it, busy in ring 0 with interrupts on (as a guest thread runs): every narrowing
    // call (RW → RO, 100 of them; RO → RW only widens, but the crate still flushes a present
    // entry that changed) makes one round with one IPI per AP.
    let stop = Arc::new(AtomicBool::new(false));
    let busy: Vec<Arc<AtomicBool>> = aps
        .iter()
        .map(|&cpu| {
            let (s, stop) = (Arc::clone(&space), Arc::clone(&stop));
            spawn(cpu, move || {
                s.activate();
                x86_64::instructions::interrupts::enable();
                while !stop.load(Ordering::SeqCst) {
                    core::hint::spin_loop();
                }
                x86_64::instructions::interrupts::disable();
            })
        })
        .collect::<Result<_, _>>()?;
    let expected: u64 = aps.iter().map(|&c| 1 << c).sum();
    wait_until("the APs to run the space", || space.active_cpus().0 == expected)?;
    // The boot CPU runs it too: still one IPI per AP, none to itself.
    space.activate();
    let (d, c) = toggle(50)?;
    Space::deactivate();
    stop.store(true, Ordering::SeqCst);
    for done in &busy {
        wait_until("the busy APs to stop", || done.load(Ordering::SeqCst))?;
    }
    ensure_eq!((d.rounds, d.ipis, d.lazy_skips), (100, 100 * aps.len() as u64, 0));
    ensure_eq!(c, d.ipis);
    wait_until("the last acknowledgements", || memory::shootdown_stats().served >= d.served)?;
    kernel::kprintln!("    {} APs running the space: {} IPIs for 100 calls", aps.len(), d.ipis);
    // Back in their idle loops with the root still loaded, the APs are lazy (still in the space's
    // set): each round leaves each halted AP out and asks it to flush when it wakes. A timer tick
    // wakes an AP for a moment (it may then take an IPI), so: in every try each AP is either sent
    // an IPI or left out, and some try of at most 20 sends none.
    ensure_eq!(space.active_cpus().0, expected);
    let mut tries = 0;
    let (all_left_out, start) = loop {
        tries += 1;
        wait_until("the APs to halt", || aps.iter().all(|&c| memory::tlb::is_lazy(c)))?;
        let start = memory::shootdown_stats();
        let (d, c) = toggle(50)?;
        ensure_eq!(d.ipis + d.lazy_skips, 100 * aps.len() as u64);
        ensure_eq!(c, d.ipis);
        if d.ipis == 0 {
            break (d, start);
        }
        ensure!(tries < 20, "20 tries of 100 calls each sent an IPI to an idle AP (last: {} IPIs)", d.ipis);
    };
    kernel::kprintln!("    {} APs idle in the space: no IPI for 100 calls ({tries} tries), {} left out", aps.len(), all_left_out.lazy_skips);
    // Each AP reloads CR3 when it wakes after a round left it out (a tick may have woken it
    // already), before it runs anything.
    for &cpu in &aps {
        on(cpu, || {})?;
    }
    let after = memory::shootdown_stats();
    ensure!(after.lazy_flushes - start.lazy_flushes >= aps.len() as u64, "a lazy AP that was left out did not flush when it woke");
    // A round that frees a page table still reaches the lazy APs: releasing the only allocation
    // under its page table frees that table.
    wait_until("the APs to halt", || aps.iter().all(|&c| memory::tlb::is_lazy(c)))?;
    let before = memory::shootdown_stats();
    vm(space.virtual_free(a, 0, MEM_RELEASE), "release")?;
    let d = delta(before, memory::shootdown_stats());
    ensure_eq!((d.rounds, d.ipis, d.lazy_skips), (1, aps.len() as u64, 0));
    let a = vm(space.virtual_alloc(0, 16 * PAGE, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE), "alloc")?;
    vm(space.with(|s, cx| s.write_user(cx, a, &[1; 16 * PAGE as usize])), "touch")?;
    // The APs switch to the kernel's table: no IPI, nothing left out.
    for &cpu in &aps {
        on(cpu, Space::deactivate)?;
    }
    ensure_eq!(space.active_cpus().0, 0);
    let (d, c) = toggle(50)?;
    ensure_eq!((d.rounds, d.ipis, c, d.lazy_skips), (0, 0, 0, 0));
    Ok(())
}

/// A call's TLB round runs with the space lock released: while it is in flight a call on other
/// pages of the space goes through without waiting for it, and a call on its pages waits until
/// the round, the frees and the uncharge are done (`SpaceShared::with_range`). An AP holds the
/// boot CPU's decommit round open by not serving it (interrupts off, no lock waits) and makes
/// both calls meanwhile.
fn a_round_in_flight_holds_up_only_calls_on_its_pages() -> Result<(), String> {
    let Some(&cpu) = aps().first() else {
        kernel::kprintln!("    (one CPU: nothing to check)");
        return Ok(());
    };
    const SIZE: u64 = 16 * PAGE;
    let space = Arc::new(vm(Space::new(), "Space::new")?);
    let a = vm(space.virtual_alloc(0x10_0000_0000, SIZE, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE), "alloc a")?;
    let b = vm(space.virtual_alloc(0x20_0000_0000, SIZE, MEM_RESERVE, PAGE_NOACCESS), "reserve b")?;
    vm(space.with(|s, cx| s.write_user(cx, a, &[1; SIZE as usize])), "touch")?;
    // What the AP saw: [round open before its calls, after the call on b, after the call on a],
    // the committed bytes after each call, and an error if any.
    let seen = Arc::new(SpinLock::new((Vec::new(), Vec::new(), None::<String>)));
    let ready = Arc::new(AtomicBool::new(false));
    let (s, seen_ap, ready_ap) = (Arc::clone(&space), Arc::clone(&seen), Arc::clone(&ready));
    let done = spawn(cpu, move || {
        s.activate();
        x86_64::instructions::interrupts::without_interrupts(|| {
            ready_ap.store(true, Ordering::SeqCst);
            // Not serving: the boot CPU's round stays open until a wait of this CPU serves it.
            let start = time::ticks_ns();
            while !memory::tlb::flush_requests_pending() {
                if time::ticks_ns() - start > 20_000_000_000 {
                    seen_ap.lock().2 = Some(String::from("no round came"));
                    return;
                }
                core::hint::spin_loop();
            }
            let committed = || memory::commit_state().committed_bytes;
            let mut open = alloc::vec![true];
            let mut charge = Vec::new();
            let other = s.virtual_alloc(b, SIZE, MEM_COMMIT, PAGE_READWRITE);
            open.push(memory::tlb::flush_requests_pending());
            charge.push(committed());
            let same = s.virtual_alloc(a, SIZE, MEM_COMMIT, PAGE_READWRITE);
            open.push(memory::tlb::flush_requests_pending());
            charge.push(committed());
            let mut seen = seen_ap.lock();
            (seen.0, seen.1) = (open, charge);
            if let Err(e) = other.and(same) {
                seen.2 = Some(alloc::format!("an AP call failed: {e:?}"));
            }
        });
        Space::deactivate();
    })?;
    wait_until("the AP", || ready.load(Ordering::SeqCst))?;
    vm(space.virtual_free(a, SIZE, MEM_DECOMMIT), "decommit a")?;
    wait_until("the AP's calls", || done.load(Ordering::SeqCst))?;
    let (open, charge, error) = core::mem::take(&mut *seen.lock());
    if let Some(e) = error {
        return Err(e);
    }
    // The call on b returned with the round still open; the one on a only after it was done,
    // and after the decommit gave its 16 pages of charge back (then took them again itself).
    ensure_eq!(open, alloc::vec![true, true, false]);
    ensure_eq!(charge[1], charge[0]);
    kernel::kprintln!("    a call on other pages went through a round in flight; one on its pages waited for it");
    Ok(())
}

/// A space dropped while APs idle with its root loaded: they are made to leave it first.
fn a_space_dropped_while_aps_idle_in_it_is_left_first() -> Result<(), String> {
    let aps = aps();
    let before = frame_counts();
    {
        let space = Arc::new(vm(Space::new(), "Space::new")?);
        let a = vm(space.virtual_alloc(0, 64 * PAGE, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE), "alloc")?;
        vm(space.with(|s, cx| s.write_user(cx, a, &[7; 64 * PAGE as usize])), "touch")?;
        for &cpu in &aps {
            let s = Arc::clone(&space);
            on(cpu, move || s.activate())?;
        }
        let root = space.root();
        let space = Arc::into_inner(space).ok_or("the APs still hold the space")?;
        drop(space);
        for &cpu in &aps {
            let left = Arc::new(AtomicU64::new(0));
            let l = Arc::clone(&left);
            on(cpu, move || l.store(x86_64::registers::control::Cr3::read().0.start_address().as_u64(), Ordering::SeqCst))?;
            ensure!(left.load(Ordering::SeqCst) != root, "CPU {cpu} still has the dropped root in CR3");
        }
    }
    ensure_eq!(frame_counts(), before);
    Ok(())
}

/// Checked accesses a reader makes in each settled phase before it halts.
const CHECKS_PER_PHASE: u32 = 6;

/// Wakes the readers (halted once they checked the current phase) after a new phase is published.
fn wake(readers: &[usize]) {
    for &cpu in readers {
        apic::send_fixed(percpu::apic_id_of(cpu), apic::WAKE_VECTOR);
    }
}

// The torture's shared state: a phase word the boot CPU publishes around each call, which the
// readers sample before and after each access.
const CHANGING: u64 = 0;
/// Readable and writable, the page holds the tag in bits 8.. of the state.
const READ_WRITE: u64 = 1;
/// Readable (holding the tag), writes refused.
const READ_ONLY: u64 = 2;
/// Every access refused.
const NO_ACCESS: u64 = 3;

fn state(phase: u64, tag: u8) -> u64 {
    (u64::from(tag) << 8) | phase
}

#[derive(Default)]
struct Torture {
    state: AtomicU64,
    stop: AtomicBool,
    /// Accesses made while the state was settled (and so checked).
    checked: AtomicU64,
    /// A read or write that succeeded though the call that returned before it forbade it, or a
    /// read of a value the page no longer holds: a stale translation.
    stale: AtomicU64,
    /// An access refused though the page allowed it.
    refused: AtomicU64,
    first_error: SpinLock<Option<String>>,
}

impl Torture {
    fn error(&self, counter: &AtomicU64, what: String) {
        counter.fetch_add(1, Ordering::SeqCst);
        self.first_error.lock().get_or_insert(what);
    }

    /// A reader's loop on an AP (interrupts on, like a guest thread: the IPIs arrive in it).
    ///
    /// A reader spins while a call is in flight, makes [`CHECKS_PER_PHASE`] checked accesses
    /// once the state is settled, then halts until an interrupt: the boot CPU's shootdown IPI,
    /// its wake-up IPI after it publishes the next settled state, or a timer tick. So the vCPUs
    /// of idle readers leave the host's cores to the ones that have work. With `lazy` it halts
    /// as an idle CPU does (`memory::tlb::enter_lazy`): rounds that free no table leave it out,
    /// and it must flush when it wakes, before its next access.
    fn read_loop(&self, space: &Space, addr: u64, lazy: bool) {
        space.activate();
        x86_64::instructions::interrupts::enable();
        let mut n = 0u64;
        let (mut last, mut checks) = (u64::MAX, 0);
        while !self.stop.load(Ordering::SeqCst) {
            n += 1;
            let s1 = self.state.load(Ordering::SeqCst);
            if s1 != last {
                (last, checks) = (s1, 0);
            } else if checks >= CHECKS_PER_PHASE && s1 & 0xff != CHANGING {
                if lazy {
                    x86_64::instructions::interrupts::disable();
                    memory::tlb::enter_lazy();
                    x86_64::instructions::interrupts::enable_and_hlt();
                    x86_64::instructions::interrupts::disable();
                    memory::tlb::leave_lazy();
                    x86_64::instructions::interrupts::enable();
                } else {
                    x86_64::instructions::hlt();
                }
                continue;
            }
            checks += 1;
            let tag = (s1 >> 8) as u8;
            // Writes go to the byte after the tag, so that a write allowed by the state read
            // before it never overwrites a newer tag.
            let write_now = n % 4 == 0 && s1 & 0xff != NO_ACCESS;
            let result = if write_now { write(addr + 1, tag).map(|()| None) } else { read(addr).map(Some) };
            let s2 = self.state.load(Ordering::SeqCst);
            if s1 != s2 || s1 & 0xff == CHANGING {
                continue;
            }
            self.checked.fetch_add(1, Ordering::Relaxed);
            match (s1 & 0xff, write_now, result) {
                (READ_WRITE | READ_ONLY, false, Ok(Some(v))) if v == tag => {}
                (READ_WRITE | READ_ONLY, false, Ok(v)) => {
                    self.error(&self.stale, alloc::format!("read {v:#x?}, the page holds {tag:#x} (state {s1:#x})"))
                }
                (READ_WRITE, true, Ok(_)) | (READ_ONLY | NO_ACCESS, _, Err(_)) => {}
                (READ_ONLY, true, Ok(_)) => self.error(&self.stale, alloc::format!("write succeeded on a read-only page (state {s1:#x})")),
                (NO_ACCESS, _, Ok(_)) => self.error(&self.stale, alloc::format!("access succeeded on an inaccessible page (state {s1:#x})")),
                (_, _, Err(f)) => self.error(&self.refused, alloc::format!("access refused on an accessible page (state {s1:#x}): {f:?}")),
                // No other settled phase exists (CHANGING was skipped above).
                (_, _, Ok(_)) => {}
            }
        }
        x86_64::instructions::interrupts::disable();
        Space::deactivate();
    }
}

/// Most time one torture mode runs for: the vCPUs share the host's cores with everything
/// else, and each round waits for every reader to take its IPI, so a loaded host makes rounds
/// slow. A mode stops early (after at least [`MIN_ROUNDS`]) when its time is up.
const MODE_BUDGET_NS: u64 = 6_000_000_000;
/// Rounds every mode makes, whatever the time.
const MIN_ROUNDS: u32 = 30;

/// Runs up to `rounds` rounds of one torture mode (see [`MODE_BUDGET_NS`]): `narrow` then
/// `widen` around settled phases. Returns the rounds made.
fn torture_mode(
    t: &Torture,
    readers: &[usize],
    rounds: u32,
    mut narrow: impl FnMut(u8) -> Result<u64, String>,
    mut widen: impl FnMut(u8) -> Result<u64, String>,
    tag: &mut u8,
) -> Result<u32, String> {
    let deadline = time::ticks_ns() + MODE_BUDGET_NS;
    for made in 0..rounds {
        if made >= MIN_ROUNDS && time::ticks_ns() > deadline {
            return Ok(made);
        }
        let checked = t.checked.load(Ordering::SeqCst);
        t.state.store(state(CHANGING, *tag), Ordering::SeqCst);
        let phase = narrow(*tag)?;
        t.state.store(state(phase, *tag), Ordering::SeqCst);
        wake(readers);
        // Let the readers try the narrowed page at least once (bounded: they may be slow).
        let start = time::ticks_ns();
        while t.checked.load(Ordering::SeqCst) < checked + 2 && time::ticks_ns() - start < 50_000_000 {
            core::hint::spin_loop();
        }
        *tag = if *tag == 0xff { 1 } else { *tag + 1 };
        t.state.store(state(CHANGING, *tag), Ordering::SeqCst);
        let phase = widen(*tag)?;
        t.state.store(state(phase, *tag), Ordering::SeqCst);
        wake(readers);
        let checked = t.checked.load(Ordering::SeqCst);
        let start = time::ticks_ns();
        while t.checked.load(Ordering::SeqCst) < checked + 2 && time::ticks_ns() - start < 50_000_000 {
            core::hint::spin_loop();
        }
    }
    Ok(rounds)
}

/// See the module docs: after each call returns, no AP uses the old translation.
fn no_stale_access_after_decommit_protect_or_release() -> Result<(), String> {
    torture(false)
}

/// The same with readers that halt lazily between phases, as idle CPUs do: the rounds that leave
/// them out must still leave them no stale translation once they wake.
fn no_stale_access_from_cpus_that_idled_lazily_in_the_space() -> Result<(), String> {
    torture(true)
}

/// The torture of [`no_stale_access_after_decommit_protect_or_release`], its readers halting
/// lazily or not.
fn torture(lazy: bool) -> Result<(), String> {
    let aps = aps();
    if aps.is_empty() {
        kernel::kprintln!("    (one CPU: nothing to check)");
        return Ok(());
    }
    let before = frame_counts();
    // Thousands of calls in all; fewer per mode with more readers, whose busy loops share the
    // host's cores with the vCPU making the calls (every round waits for all of them).
    let rounds = (2000 / aps.len() as u32).clamp(500, 1000);
    let space = Arc::new(vm(Space::new(), "Space::new")?);
    let base = vm(space.virtual_alloc(0, 0x10000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE), "alloc")?;
    let addr = base + 5 * PAGE + 123;
    let t = Arc::new(Torture::default());
    let mut tag = 1u8;
    vm(space.with(|s, cx| s.write_user(cx, addr, &[tag])), "write")?;
    t.state.store(state(READ_WRITE, tag), Ordering::SeqCst);
    let readers: Vec<Arc<AtomicBool>> = aps
        .iter()
        .map(|&cpu| {
            let (t, s) = (Arc::clone(&t), Arc::clone(&space));
            spawn(cpu, move || t.read_loop(&s, addr, lazy))
        })
        .collect::<Result<_, _>>()?;
    wait_until("the readers to run the space", || space.active_cpus().len() as usize == aps.len())?;
    let stats0 = memory::shootdown_stats();
    let page = addr & !(PAGE - 1);
    let tag_page = |tag: u8| vm(space.with(|s, cx| s.write_user(cx, addr, &[tag])), "write").map(|()| READ_WRITE);
    let modes = |tag: &mut u8| -> Result<u32, String> {
        // Decommit / recommit: the recommitted page is a new zero frame, tagged anew.
        let mut calls = torture_mode(
            &t,
            &aps,
            rounds,
            |_| vm(space.virtual_free(page, PAGE, MEM_DECOMMIT), "decommit").map(|()| NO_ACCESS),
            |tag| vm(space.virtual_alloc(page, PAGE, MEM_COMMIT, PAGE_READWRITE), "recommit").and_then(|_| tag_page(tag)),
            tag,
        )?;
        // PAGE_NOACCESS (entry no longer present) and PAGE_READONLY (present, W taken away), and
        // back to PAGE_READWRITE.
        for (protect, phase) in [(PAGE_NOACCESS, NO_ACCESS), (PAGE_READONLY, READ_ONLY)] {
            calls += torture_mode(
                &t,
                &aps,
                rounds,
                |_| vm(space.virtual_protect(page, PAGE, protect), "protect").map(|_| phase),
                |tag| vm(space.virtual_protect(page, PAGE, PAGE_READWRITE), "protect").and_then(|_| tag_page(tag)),
                tag,
            )?;
        }
        // Release / reallocate at the same address (the page table is freed and rebuilt each time).
        calls += torture_mode(
            &t,
            &aps,
            rounds,
            |_| vm(space.virtual_free(base, 0, MEM_RELEASE), "release").map(|()| NO_ACCESS),
            |tag| {
                let again = vm(space.virtual_alloc(base, 0x10000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE), "reallocate")?;
                if again != base {
                    return Err(alloc::format!("reallocated at {again:#x}, not {base:#x}"));
                }
                tag_page(tag)
            },
            tag,
        )?;
        Ok(calls)
    };
    let outcome = modes(&mut tag);
    t.stop.store(true, Ordering::SeqCst);
    wake(&aps);
    for r in &readers {
        wait_until("the readers to stop", || r.load(Ordering::SeqCst))?;
    }
    let calls = u64::from(outcome?);
    let stats = memory::shootdown_stats();
    let (ipis, rounds_sent) = (stats.ipis - stats0.ipis, stats.rounds - stats0.rounds);
    let (skips, flushes) = (stats.lazy_skips - stats0.lazy_skips, stats.lazy_flushes - stats0.lazy_flushes);
    kernel::kprintln!(
        "    {} APs{}: {} checked accesses, {} stale, {} refused; {} narrowing calls, {} rounds, {} IPIs, {} cycles per round; {} left out lazily, {} flushes on waking",
        aps.len(),
        if lazy { " halting lazily" } else { "" },
        t.checked.load(Ordering::SeqCst),
        t.stale.load(Ordering::SeqCst),
        t.refused.load(Ordering::SeqCst),
        calls,
        rounds_sent,
        ipis,
        (stats.cycles - stats0.cycles) / rounds_sent.max(1),
        skips,
        flushes
    );
    if let Some(e) = t.first_error.lock().clone() {
        return Err(alloc::format!("{} stale, {} refused; first: {e}", t.stale.load(Ordering::SeqCst), t.refused.load(Ordering::SeqCst)));
    }
    ensure!(t.checked.load(Ordering::SeqCst) >= calls, "too few checked accesses");
    if lazy {
        // Both ways of reaching a reader were taken: left out while it halted (and flushing
        // when it woke), and the IPI (while it spun in a changing phase, and for releases).
        ensure!(skips > 0 && flushes > 0 && ipis > 0, "{skips} readers left out, {flushes} flushes on waking, {ipis} IPIs");
    } else {
        // Every narrowing call made exactly one round to every reader (the readers' own faults
        // make none: they only ever target themselves), and widening calls at most one each.
        ensure!(rounds_sent >= calls && rounds_sent <= 2 * calls, "{rounds_sent} rounds for {calls} narrowing calls");
        ensure_eq!(ipis, rounds_sent * aps.len() as u64);
    }
    drop(space);
    ensure_eq!(frame_counts(), before);
    Ok(())
}

/// Every CPU works on its own regions of one space at once; the data and every answer are
/// checked, and the accounting is exact at the end.
fn every_cpu_works_on_one_space_at_once() -> Result<(), String> {
    const ITERATIONS: u64 = 150;
    // At most 15 s (the vCPUs share a loaded host's cores), and at least MIN_ITERATIONS each.
    let deadline = time::ticks_ns() + 15_000_000_000;
    let made = Arc::new(AtomicU64::new(0));
    let cpus: Vec<usize> = core::iter::once(0).chain(aps()).collect();
    let before = frame_counts();
    let space = Arc::new(vm(Space::new(), "Space::new")?);
    let errors = Arc::new(SpinLock::new(Vec::<String>::new()));
    let finished = Arc::new(AtomicUsize::new(0));
    let work = |cpu: usize, space: Arc<Space>, errors: Arc<SpinLock<Vec<String>>>, finished: Arc<AtomicUsize>| {
        let made = Arc::clone(&made);
        move || {
            space.activate();
            // Interrupts on, as in a guest thread: IPIs arrive between the calls too.
            x86_64::instructions::interrupts::enable();
            let result = worker(cpu, &space, ITERATIONS, deadline);
            x86_64::instructions::interrupts::disable();
            match result {
                Ok(n) => _ = made.fetch_add(n, Ordering::SeqCst),
                Err(e) => errors.lock().push(alloc::format!("CPU {cpu}: {e}")),
            }
            Space::deactivate();
            finished.fetch_add(1, Ordering::SeqCst);
        }
    };
    for &cpu in &cpus[1..] {
        spawn(cpu, work(cpu, Arc::clone(&space), Arc::clone(&errors), Arc::clone(&finished)))?;
    }
    work(0, Arc::clone(&space), Arc::clone(&errors), Arc::clone(&finished))();
    wait_until("every worker", || finished.load(Ordering::SeqCst) == cpus.len())?;
    if let Some(e) = errors.lock().first() {
        return Err(e.clone());
    }
    ensure_eq!(space.with(|s, _| s.allocations().count()), 0);
    ensure_eq!(memory::with_mm(|mm| mm.charge.committed_pages()), before.2);
    drop(space);
    ensure_eq!(frame_counts(), before);
    kernel::kprintln!("    {} CPUs, {} iterations in all (at most {ITERATIONS} each)", cpus.len(), made.load(Ordering::SeqCst));
    Ok(())
}

/// Iterations every worker makes, whatever the time.
const MIN_ITERATIONS: u64 = 8;

/// One CPU's share of [`every_cpu_works_on_one_space_at_once`]: each iteration reserves 16 pages
/// (at an address of its own, or anywhere), commits 8, writes them through page faults, reads
/// them back, protects 4 read-only (writes refused), queries, decommits 2 (accesses refused,
/// the rest intact) and releases.
fn worker(cpu: usize, space: &Space, iterations: u64, deadline_ns: u64) -> Result<u64, String> {
    let own_base = 0x10_0000_0000 + cpu as u64 * 0x1_0000_0000;
    for i in 0..iterations {
        if i >= MIN_ITERATIONS && time::ticks_ns() > deadline_ns {
            return Ok(i);
        }
        let at = if i % 2 == 0 { own_base + (i % 64) * 0x10_0000 } else { 0 };
        let base = vm(space.virtual_alloc(at, 16 * PAGE, MEM_RESERVE, PAGE_NOACCESS), "reserve")?;
        ensure!(at == 0 || base == at, "reserved at {base:#x}, asked {at:#x}");
        vm(space.virtual_alloc(base + 4 * PAGE, 8 * PAGE, MEM_COMMIT, PAGE_READWRITE), "commit")?;
        let value = |p: u64| (cpu as u64 * 31 + i * 7 + p) as u8 | 1;
        for p in 4..12 {
            write(base + p * PAGE + p, value(p)).map_err(|f| alloc::format!("write page {p}: {f:?}"))?;
        }
        for p in 4..12 {
            ensure_eq!(read(base + p * PAGE + p).map_err(|f| alloc::format!("{f:?}"))?, value(p));
            ensure!(read(base + p * PAGE + p + 1) == Ok(0), "demand-zero page {p} not zero");
        }
        ensure!(read(base + 3 * PAGE).is_err(), "a reserved page was readable");
        ensure_eq!(vm(space.virtual_protect(base + 4 * PAGE, 4 * PAGE, PAGE_READONLY), "protect")?, PAGE_READWRITE);
        for p in 4..8 {
            ensure!(write(base + p * PAGE, 1).is_err(), "a read-only page took a write");
            ensure_eq!(read(base + p * PAGE + p), Ok(value(p)));
        }
        let q = vm(space.virtual_query(base + 4 * PAGE), "query")?;
        ensure_eq!((q.base_address, q.region_size, q.state, q.protect), (base + 4 * PAGE, 4 * PAGE, MEM_COMMIT, PAGE_READONLY));
        let q = vm(space.virtual_query(base + 8 * PAGE), "query")?;
        ensure_eq!((q.region_size, q.state, q.protect), (4 * PAGE, MEM_COMMIT, PAGE_READWRITE));
        vm(space.virtual_free(base + 8 * PAGE, 2 * PAGE, MEM_DECOMMIT), "decommit")?;
        ensure!(read(base + 8 * PAGE + 8).is_err() && read(base + 9 * PAGE).is_err(), "a decommitted page was readable");
        ensure_eq!(read(base + 10 * PAGE + 10), Ok(value(10)));
        let q = vm(space.virtual_query(base + 8 * PAGE), "query")?;
        ensure_eq!((q.region_size, q.state), (2 * PAGE, MEM_RESERVE));
        vm(space.virtual_free(base, 0, MEM_RELEASE), "release")?;
        // (A region placed anywhere may be another CPU's the moment it is released; this CPU's
        // own range is only ever reserved by it.)
        ensure!(at == 0 || read(base + 4 * PAGE).is_err(), "a released page was readable");
    }
    Ok(iterations)
}

/// The space lock's kind ([`RwSpinLock`]) between CPUs: writers exclude everyone (a two-field
/// value changed in two steps is never seen half changed, and no increment is lost), readers
/// share it (a reader holding it does not keep another out).
fn the_rw_lock_excludes_writers_and_lets_readers_share() -> Result<(), String> {
    let aps = aps();
    if aps.is_empty() {
        kernel::kprintln!("    (one CPU: nothing to check)");
        return Ok(());
    }
    let lock = Arc::new(RwSpinLock::new((0u64, 0u64)));
    // Sharing: an AP holds it shared until the boot CPU, holding it shared too, lets it go.
    let (held, release) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let done = spawn(aps[0], {
        let (lock, held, release) = (Arc::clone(&lock), Arc::clone(&held), Arc::clone(&release));
        move || {
            let _shared = lock.read();
            held.store(true, Ordering::SeqCst);
            while !release.load(Ordering::SeqCst) {
                memory::serve_flush_requests();
                core::hint::spin_loop();
            }
        }
    })?;
    wait_until("the AP to hold the lock shared", || held.load(Ordering::SeqCst))?;
    let both = lock.read();
    release.store(true, Ordering::SeqCst);
    drop(both);
    wait_until("the AP to leave", || done.load(Ordering::SeqCst))?;

    // Exclusion: every CPU writes in two steps and reads, in a loop.
    const ROUNDS: u64 = 3_000;
    let torn = Arc::new(AtomicU64::new(0));
    let work = |lock: Arc<RwSpinLock<(u64, u64)>>, torn: Arc<AtomicU64>| {
        move || {
            for i in 0..ROUNDS {
                {
                    let mut w = lock.write();
                    let a = w.0;
                    w.0 = a + 1;
                    for _ in 0..(i % 7) * 10 {
                        core::hint::spin_loop();
                    }
                    w.1 = a + 1;
                }
                let r = lock.read();
                if r.0 != r.1 {
                    torn.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    };
    let flags = aps.iter().map(|&cpu| spawn(cpu, work(Arc::clone(&lock), Arc::clone(&torn)))).collect::<Result<Vec<_>, _>>()?;
    work(Arc::clone(&lock), Arc::clone(&torn))();
    wait_until("the APs' rounds", || flags.iter().all(|f| f.load(Ordering::SeqCst)))?;
    let torn = torn.load(Ordering::SeqCst);
    ensure!(torn == 0, "{torn} reads saw a write half done");
    let total = ROUNDS * (aps.len() as u64 + 1);
    let value = *lock.read();
    ensure!(value == (total, total), "the value after every CPU's increments is {value:?}, not ({total}, {total})");
    Ok(())
}

/// The lock barges, but boundedly: CPUs taking it in a loop of one kind never keep a CPU that
/// wants the other kind out for long (a waiter past `HANDOFF_AFTER_US` claims the next turn).
/// APs hold it shared back to back (overlapping, so from 3 APs the readers inside rarely fall
/// to none) while the boot CPU takes it exclusively 200 times; then APs hold it exclusively in
/// a loop while the boot CPU takes it shared 200 times (there the boot CPU, which the APs'
/// barging writers keep out, gets in by claiming the turn). Each of the boot CPU's takes must
/// come within 200 ms (a vCPU may wait for a host core meanwhile; 20 s would be the test's
/// timeout).
fn a_waiter_of_the_rw_lock_is_not_starved_by_the_other_kind() -> Result<(), String> {
    let aps = aps();
    if aps.is_empty() {
        kernel::kprintln!("    (one CPU: nothing to check)");
        return Ok(());
    }
    let lock = Arc::new(RwSpinLock::new(0u64));
    for writers_in_loop in [false, true] {
        let stop = Arc::new(AtomicBool::new(false));
        let flags = aps
            .iter()
            .map(|&cpu| {
                let (lock, stop) = (Arc::clone(&lock), Arc::clone(&stop));
                spawn(cpu, move || {
                    while !stop.load(Ordering::Relaxed) {
                        if writers_in_loop {
                            let mut w = lock.write();
                            *w += 1;
                            for _ in 0..200 {
                                core::hint::spin_loop();
                            }
                        } else {
                            let r = lock.read();
                            for _ in 0..200 {
                                core::hint::spin_loop();
                            }
                            drop(r);
                        }
                    }
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut longest = 0;
        let handoffs = memory::lock::lock_stats().handoffs;
        for _ in 0..200 {
            let start = time::ticks_ns();
            if writers_in_loop {
                drop(lock.read());
            } else {
                *lock.write() += 1;
            }
            longest = longest.max(time::ticks_ns() - start);
        }
        stop.store(true, Ordering::SeqCst);
        wait_until("the APs to stop", || flags.iter().all(|f| f.load(Ordering::SeqCst)))?;
        kernel::kprintln!(
            "    boot CPU taking it {} against {} AP(s) taking it {} in a loop: longest wait {} us, {} turns claimed",
            if writers_in_loop { "shared" } else { "exclusively" },
            aps.len(),
            if writers_in_loop { "exclusively" } else { "shared" },
            longest / 1000,
            memory::lock::lock_stats().handoffs - handoffs
        );
        ensure!(longest < 200_000_000, "a take of the lock waited {} us", longest / 1000);
    }
    Ok(())
}

kernel::kernel_test_image!(
    ipis_go_exactly_to_the_cpus_running_the_space,
    a_space_dropped_while_aps_idle_in_it_is_left_first,
    a_round_in_flight_holds_up_only_calls_on_its_pages,
    no_stale_access_after_decommit_protect_or_release,
    no_stale_access_from_cpus_that_idled_lazily_in_the_space,
    every_cpu_works_on_one_space_at_once,
    the_rw_lock_excludes_writers_and_lets_readers_share,
    a_waiter_of_the_rw_lock_is_not_starved_by_the_other_kind,
);
