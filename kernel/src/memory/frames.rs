//! The shared frame allocator and commit charge as the address-space crate reaches them
//! ([`KernelFrames`], [`KernelCharge`]): each frames request takes its lock for that request
//! only, and single frames and small reservations go through this CPU's cache first; the charge
//! takes no lock; the work counters, added up per CPU.
//!
//! **Per-CPU frames** ([`CpuFrames`], one per CPU, used by its own CPU with interrupts off): a
//! `FrameCache` of up to `CACHE_CAPACITY` free frames in front of the allocator (`alloc` and
//! `free` of single frames: page tables, demand-zero frames, everything a TLB round frees), and
//! up to [`PROMISED_MAX`] frames of reservation kept back from decommits and first touches for
//! the next commit on this CPU, and one zeroed frame kept for its next demand-zero fault
//! ([`take_kept_zeroed`], [`keep_zeroed`]) and up to `FAULT_AROUND_MAX` zeroed for a fault-around
//! while it is in flight. They count as used (cached, zeroed) or reserved (kept) to
//! the global allocator, so nothing it promises sits in a cache; the commit limit leaves
//! [`PER_CPU_FRAMES`] × `MAX_CPUS` frames out for them (the `limit + allowance ≤ frames −
//! CPUs × cached` rule of the crate's `frame::cache` docs), so a commit that passed the charge
//! check still always gets its reservation. [`drain_all`] gives everything back (for an exact
//! picture: `with_mm`).
//!
//! **Frames zeroed ahead** (the crate's `frame::zeroed`, Windows' zeroed page list and zero-page
//! thread): a CPU with nothing to run ([`zero_ahead`], from the scheduler's idle wait while more
//! than half the CPUs idle) zeroes free frames, one CPU at a time, into one list of up to
//! `ZEROED_CAPACITY`; a demand-zero fault takes its frames from there first ([`take_zeroed`],
//! [`fill_zeroed`]) and zeroes one itself only when the list is empty. Listed frames are used to
//! the allocator, and every request this module serves that finds the allocator short gives the
//! list back and asks again (so the commit limit does not leave them out). Off with
//! `--config zero_idle=0`.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use address_space::frame::{
    CACHE_BATCH, CACHE_CAPACITY, FrameAllocator, FrameCache, FrameError, FrameReservation, FrameSource, SharedFrames, ZEROED_CAPACITY, ZeroedFrames,
};
use address_space::{ChargeSource, CriticalLevel, VmError, WorkCounters};
use x86_64::instructions::interrupts;
use x86_64::structures::paging::{PhysFrame, Size2MiB, Size4KiB};

use super::{SpinLock, manager};
use crate::arch::percpu::{self, MAX_CPUS};

/// Most frames of reservation one CPU keeps back for its next commit.
pub const PROMISED_MAX: u64 = CACHE_BATCH as u64;
/// Most frames one CPU holds out of the global allocator's reach (cached, kept zeroed, zeroed
/// for a fault-around in flight — `fault::resolve` —, or kept reserved).
pub const PER_CPU_FRAMES: u64 = CACHE_CAPACITY as u64 + 1 + address_space::FAULT_AROUND_MAX + PROMISED_MAX;

/// One CPU's frames (see the module docs).
pub(super) struct CpuFrames {
    cache: FrameCache,
    promised: FrameReservation,
    /// A frame allocated and zeroed for this CPU's next demand-zero fault.
    zeroed: Option<PhysFrame<Size4KiB>>,
}

/// Per CPU; only its own CPU takes its lock, except [`drain_all`] (so it is never contended on
/// the common path). Lock order: a space's lock → this → the frames.
static CPU_FRAMES: [SpinLock<CpuFrames>; MAX_CPUS] =
    [const { SpinLock::new(CpuFrames { cache: FrameCache::new(), promised: FrameReservation::empty(), zeroed: None }) }; MAX_CPUS];

/// Frames zeroed ahead (see the module docs). Lock order: a CPU's frames → this → the frames.
static ZEROED: SpinLock<ZeroedFrames> = SpinLock::new(ZeroedFrames::new());
/// How many frames the list holds, as of its last change (read without its lock).
static LISTED: AtomicU64 = AtomicU64::new(0);
/// Whether idle CPUs zero frames ahead (`MemoryConfig::zero_idle`, set once at boot).
pub(super) static ZERO_IDLE: AtomicBool = AtomicBool::new(false);
/// Zeroing ahead paused by [`with_zero_ahead_paused`] (a benchmark of how disjoint work scales).
static PAUSED: AtomicBool = AtomicBool::new(false);
/// A CPU is zeroing ahead: one at a time, as Windows runs one zero-page thread, so that idle
/// CPUs do not take every host core from the CPUs that run threads (QEMU's vCPUs share them).
static ZEROING: AtomicBool = AtomicBool::new(false);
/// Frames zeroed ahead, taken by faults, and given back unused (to serve a request, or for an
/// exact picture): for the benchmark and tests.
static ZEROED_AHEAD: AtomicU64 = AtomicU64::new(0);
static ZEROED_TAKEN: AtomicU64 = AtomicU64::new(0);
static ZEROED_RETURNED: AtomicU64 = AtomicU64::new(0);
/// Frames are zeroed ahead only while the allocator has this many available (so the list does
/// not take the last free memory; a request that finds the allocator short drains it anyway).
const ZERO_AHEAD_FLOOR: u64 = 2 * ZEROED_CAPACITY as u64;

/// Work counters per CPU, added to after each call that did work.
static CPU_COUNTERS: [SpinLock<WorkCounters>; MAX_CPUS] = [const { SpinLock::new(WorkCounters::new()) }; MAX_CPUS];

/// The global allocator, for the caches' refills and drains.
struct Global;

impl SharedFrames for Global {
    fn with<R>(&self, f: impl FnOnce(&mut FrameAllocator) -> R) -> R {
        f(&mut manager().frames.lock().allocator)
    }
}

/// Runs `f` on this CPU's frames, interrupts off.
fn this_cpu<R>(f: impl FnOnce(&mut CpuFrames) -> R) -> R {
    interrupts::without_interrupts(|| f(&mut CPU_FRAMES[percpu::this_cpu()].lock()))
}

/// The frame allocator as every address-space call reaches it (see the module docs).
pub struct KernelFrames;

impl FrameSource for KernelFrames {
    fn with_allocator(&mut self, f: &mut dyn FnMut(&mut FrameAllocator)) {
        interrupts::without_interrupts(|| Global.with(f));
    }

    fn alloc(&mut self) -> Result<PhysFrame<Size4KiB>, FrameError> {
        this_cpu(|c| c.cache.alloc(&Global).or_else(|e| if give_back_zeroed() > 0 { c.cache.alloc(&Global) } else { Err(e) }))
    }

    fn alloc_2mib(&mut self) -> Result<PhysFrame<Size2MiB>, FrameError> {
        interrupts::without_interrupts(|| {
            Global.with(FrameAllocator::alloc_2mib).or_else(|e| if give_back_zeroed() > 0 { Global.with(FrameAllocator::alloc_2mib) } else { Err(e) })
        })
    }

    fn free(&mut self, frame: PhysFrame<Size4KiB>) -> Result<(), FrameError> {
        this_cpu(|c| c.cache.free(frame, &Global))
    }

    fn reserve(&mut self, n: u64) -> Result<FrameReservation, FrameError> {
        this_cpu(|c| {
            if c.promised.frames() >= n {
                return Ok(c.promised.split(n));
            }
            Global.with(|g| g.reserve(n)).or_else(|e| if give_back_zeroed() > 0 { Global.with(|g| g.reserve(n)) } else { Err(e) })
        })
    }

    fn unreserve(&mut self, reservation: FrameReservation) {
        this_cpu(|c| {
            c.promised.absorb(reservation);
            let excess = c.promised.frames().saturating_sub(PROMISED_MAX);
            if excess > 0 {
                let back = c.promised.split(excess);
                Global.with(|g| g.unreserve(back));
            }
        })
    }
}

/// The commit charge as every address-space call reaches it: the system-wide `CommitCharge`,
/// lock-free (one compare-exchange per commit, one `fetch_sub` per decommit or release).
pub struct KernelCharge;

impl ChargeSource for KernelCharge {
    fn try_charge(&mut self, pages: u64, tables: u64, level: CriticalLevel) -> Result<(), VmError> {
        manager().charge.try_charge(pages, tables, level)
    }

    fn uncharge(&mut self, pages: u64, tables: u64) {
        manager().charge.uncharge(pages, tables)
    }
}

/// Gives every CPU's cached frames and kept reservations back to the allocator, and runs `f`
/// with the CPUs' frames still locked (so they stay empty): the allocator's figures are then
/// exact. Interrupts must be off.
pub(super) fn drain_all<R>(f: impl FnOnce() -> R) -> R {
    let mut held = [const { None }; MAX_CPUS];
    for (slot, cpu) in held.iter_mut().zip(CPU_FRAMES.iter()) {
        let mut c = cpu.lock();
        if let Some(zeroed) = c.zeroed.take() {
            c.cache.free(zeroed, &Global).expect("the kept zeroed frame is allocated");
        }
        c.cache.drain(&Global);
        let all = c.promised.frames();
        if all > 0 {
            let back = c.promised.split(all);
            Global.with(|g| g.unreserve(back));
        }
        *slot = Some(c);
    }
    // The frames zeroed ahead too, the list held (empty) while `f` runs.
    let mut zeroed = ZEROED.lock();
    ZEROED_RETURNED.fetch_add(zeroed.drain(&Global) as u64, Ordering::Relaxed);
    LISTED.store(0, Ordering::Relaxed);
    f()
}

/// Takes this CPU's kept zeroed frame, if it has one: allocated, all zero, mapped nowhere (for
/// a demand-zero fault, `fault::resolve`).
pub(super) fn take_kept_zeroed() -> Option<PhysFrame<Size4KiB>> {
    this_cpu(|c| c.zeroed.take())
}

/// Takes a frame zeroed ahead, if one is listed: allocated, all zero, mapped nowhere.
pub(super) fn take_zeroed() -> Option<PhysFrame<Size4KiB>> {
    let frame = with_zeroed(ZeroedFrames::pop);
    if frame.is_some() {
        ZEROED_TAKEN.fetch_add(1, Ordering::Relaxed);
    }
    frame
}

/// Fills the empty slots of `slots` in order with frames zeroed ahead while any is listed (one
/// lock acquisition); how many it filled.
pub(super) fn fill_zeroed(slots: &mut [Option<PhysFrame<Size4KiB>>]) -> usize {
    let filled = with_zeroed(|list| list.fill(slots));
    ZEROED_TAKEN.fetch_add(filled as u64, Ordering::Relaxed);
    filled
}

/// Keeps `frame` (allocated, all zero, mapped nowhere) as this CPU's zeroed frame; if it has one
/// already, lists it with the frames zeroed ahead, or frees it if the list is full.
pub(super) fn keep_zeroed(frame: PhysFrame<Size4KiB>) {
    this_cpu(|c| match c.zeroed {
        None => c.zeroed = Some(frame),
        Some(_) => {
            if let Err(frame) = with_zeroed(|list| list.push(frame)) {
                c.cache.free(frame, &Global).expect("a zeroed frame is allocated");
            }
        }
    })
}

/// Runs `f` on the list of frames zeroed ahead, locked, interrupts off.
fn with_zeroed<R>(f: impl FnOnce(&mut ZeroedFrames) -> R) -> R {
    interrupts::without_interrupts(|| {
        let mut list = ZEROED.lock();
        let r = f(&mut list);
        LISTED.store(list.len() as u64, Ordering::Relaxed);
        r
    })
}

/// Gives the frames zeroed ahead back to the allocator (a request found it short); how many.
pub(super) fn give_back_zeroed() -> usize {
    let returned = with_zeroed(|list| list.drain(&Global));
    ZEROED_RETURNED.fetch_add(returned as u64, Ordering::Relaxed);
    returned
}

/// Zeroes one free frame ahead of demand and lists it, for a CPU with nothing to run (the
/// scheduler's idle wait calls it until it returns `false`, checking for work in between);
/// `false` when zeroing ahead is off, the list is full, another CPU is zeroing, or the allocator
/// is down to `ZERO_AHEAD_FLOOR` available frames. Interrupts must be off: the frame is zeroed
/// in eighths with the TLB flush requests posted to this CPU served between them, as a fault
/// zeroes one, and this CPU's frames stay locked meanwhile, so an exact picture ([`drain_all`])
/// waits for the frame to be listed rather than miss it.
pub fn zero_ahead() -> bool {
    if !ZERO_IDLE.load(Ordering::Relaxed) || PAUSED.load(Ordering::Relaxed) || LISTED.load(Ordering::Relaxed) >= ZEROED_CAPACITY as u64 || ZEROING.swap(true, Ordering::Acquire) {
        return false;
    }
    debug_assert!(!interrupts::are_enabled(), "zero_ahead with interrupts on");
    let zeroed = {
        let mut c = CPU_FRAMES[percpu::this_cpu()].lock();
        let frame = if Global.with(|g| g.available_frames()) < ZERO_AHEAD_FLOOR { None } else { c.cache.alloc(&Global).ok() };
        frame.is_some_and(|frame| {
            let mut window = manager().window;
            window.zero_frame_in(frame, 8, super::tlb::serve_flush_requests);
            if let Err(frame) = with_zeroed(|list| list.push(frame)) {
                c.cache.free(frame, &Global).expect("a zeroed frame is allocated");
            }
            true
        })
    };
    ZEROING.store(false, Ordering::Release);
    if zeroed {
        ZEROED_AHEAD.fetch_add(1, Ordering::Relaxed);
    }
    zeroed
}

/// Runs `f` with zeroing ahead paused and the list given back first (at most the frame a CPU
/// was zeroing meanwhile is listed after). For a benchmark of how disjoint work scales from 1, 2
/// and 4 CPUs: a CPU left idle would otherwise zero for the 1-CPU row. Not nested.
pub fn with_zero_ahead_paused<R>(f: impl FnOnce() -> R) -> R {
    PAUSED.store(true, Ordering::SeqCst);
    give_back_zeroed();
    let r = f();
    PAUSED.store(false, Ordering::SeqCst);
    r
}

/// The frames zeroed ahead (counts since boot but `listed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZeroedStats {
    /// Listed now.
    pub listed: u64,
    /// Zeroed by idle CPUs.
    pub zeroed: u64,
    /// Taken by demand-zero faults and fault-arounds.
    pub taken: u64,
    /// Given back to the allocator unused.
    pub returned: u64,
}

/// The frames zeroed ahead (see [`ZeroedStats`]); takes no lock.
pub fn zeroed_stats() -> ZeroedStats {
    ZeroedStats {
        listed: LISTED.load(Ordering::Relaxed),
        zeroed: ZEROED_AHEAD.load(Ordering::Relaxed),
        taken: ZEROED_TAKEN.load(Ordering::Relaxed),
        returned: ZEROED_RETURNED.load(Ordering::Relaxed),
    }
}

/// Adds one call's work counters to this CPU's (if it did anything). Interrupts must be off.
#[inline]
pub(super) fn add_counters(counters: &WorkCounters) {
    if *counters != WorkCounters::new() {
        add_to_this_cpu(counters);
    }
}

fn add_to_this_cpu(counters: &WorkCounters) {
    *CPU_COUNTERS[percpu::this_cpu()].lock() += counters;
}

/// The work counters of every CPU added up.
pub(super) fn counters() -> WorkCounters {
    let mut total = WorkCounters::new();
    for c in &CPU_COUNTERS {
        total += &*c.lock();
    }
    total
}

/// Checks up to `max` of the frames zeroed ahead (the list locked meanwhile): `Ok(checked)` if
/// each is all zero, else `Err` with the physical address of the first word that is not. For
/// tests.
pub fn check_zeroed_ahead(max: usize) -> Result<usize, u64> {
    use address_space::PhysMemory;
    let window = manager().window;
    interrupts::without_interrupts(|| {
        let list = ZEROED.lock();
        let mut checked = 0;
        for frame in list.frames().take(max) {
            let pa = frame.start_address().as_u64();
            if let Some(word) = (0..address_space::PAGE_SIZE / 8).map(|i| pa + 8 * i).find(|&a| window.read_u64(x86_64::PhysAddr::new(a)) != 0) {
                return Err(word);
            }
            checked += 1;
        }
        Ok(checked)
    })
}
