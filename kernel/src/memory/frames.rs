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
//! ([`take_zeroed`], [`keep_zeroed`]) and up to `FAULT_AROUND_MAX` zeroed for a fault-around
//! while it is in flight. They count as used (cached, zeroed) or reserved (kept) to
//! the global allocator, so nothing it promises sits in a cache; the commit limit leaves
//! [`PER_CPU_FRAMES`] × `MAX_CPUS` frames out for them (the `limit + allowance ≤ frames −
//! CPUs × cached` rule of the crate's `frame::cache` docs), so a commit that passed the charge
//! check still always gets its reservation. [`drain_all`] gives everything back (for an exact
//! picture: `with_mm`).

use address_space::frame::{CACHE_BATCH, CACHE_CAPACITY, FrameAllocator, FrameCache, FrameError, FrameReservation, FrameSource, SharedFrames};
use address_space::{ChargeSource, CriticalLevel, VmError, WorkCounters};
use x86_64::instructions::interrupts;
use x86_64::structures::paging::{PhysFrame, Size4KiB};

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
        this_cpu(|c| c.cache.alloc(&Global))
    }

    fn free(&mut self, frame: PhysFrame<Size4KiB>) -> Result<(), FrameError> {
        this_cpu(|c| c.cache.free(frame, &Global))
    }

    fn reserve(&mut self, n: u64) -> Result<FrameReservation, FrameError> {
        this_cpu(|c| if c.promised.frames() >= n { Ok(c.promised.split(n)) } else { Global.with(|g| g.reserve(n)) })
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
    f()
}

/// Takes this CPU's kept zeroed frame, if it has one: allocated, all zero, mapped nowhere (for
/// a demand-zero fault, `fault::resolve`).
pub(super) fn take_zeroed() -> Option<PhysFrame<Size4KiB>> {
    this_cpu(|c| c.zeroed.take())
}

/// Keeps `frame` (allocated, all zero, mapped nowhere) as this CPU's zeroed frame; if it has one
/// already, `frame` is freed.
pub(super) fn keep_zeroed(frame: PhysFrame<Size4KiB>) {
    this_cpu(|c| match c.zeroed {
        None => c.zeroed = Some(frame),
        Some(_) => c.cache.free(frame, &Global).expect("a zeroed frame is allocated"),
    })
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
