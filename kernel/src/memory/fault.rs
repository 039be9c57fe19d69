//! The memory manager's page-fault policy: resolving a fault on guest memory (demand-zero, a
//! kept frame), refusing it (guard page, access violation), or leaving it to the kernel's fault
//! report ([`crate::trap`]).

use core::sync::atomic::{AtomicU64, Ordering};

use address_space::frame::FrameSource;
use address_space::{Access, FAULT_AROUND_MAX, FaultOutcome, PAGE_SIZE};
use x86_64::registers::control::Cr3;
use x86_64::structures::paging::PhysFrame;

use super::frames::{self, KernelFrames};
use super::manager;
use super::space::SpaceShared;
use crate::arch::cpu;
use crate::arch::percpu::{self, MAX_CPUS};
use crate::arch::probe::{self, MemoryFault};

/// What the page-fault handler should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageFaultVerdict {
    /// The page is mapped now: return and retry the access.
    Resolved,
    /// Guest memory, but the access is refused: a guard page or an access violation.
    Refused(MemoryFault),
    /// Not guest memory (kernel half, no space loaded, or the manager was busy): a kernel fault.
    NotGuestMemory,
}

/// Consecutive "spurious" resolutions of the same fault (the page was already mapped and allowed,
/// so the manager only invalidated the TLB entry). A stale entry explains one such fault; a run of
/// them means the hardware keeps refusing what the manager allows (a kernel bug), which must be
/// reported rather than spun on.
static REPEAT_ADDR: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(u64::MAX) }; MAX_CPUS];
static REPEAT_COUNT: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// The access a page fault's error code describes (Intel SDM Vol. 3A §4.7): an instruction fetch,
/// a write, or else a read.
pub fn fault_access(error_code: u64) -> Access {
    use probe::pf;
    if error_code & pf::INSTRUCTION != 0 {
        Access::Execute
    } else if error_code & pf::WRITE != 0 {
        Access::Write
    } else {
        Access::Read
    }
}

/// The page-fault entry of the memory manager: `addr` from CR2, `error_code` as pushed by the
/// CPU, `rflags` of the interrupted context.
pub fn on_page_fault(addr: u64, error_code: u64, rflags: u64) -> PageFaultVerdict {
    use probe::pf;
    if addr >= 0x0000_8000_0000_0000 || error_code & pf::RESERVED != 0 {
        return PageFaultVerdict::NotGuestMemory;
    }
    let access = fault_access(error_code);
    let violation = |code| PageFaultVerdict::Refused(MemoryFault { code, access: access.code(), address: addr });
    let supervisor = error_code & pf::USER == 0;
    if supervisor && error_code & pf::PRESENT != 0 {
        // Ring 0 touched a present guest page and was refused: SMEP (an instruction fetch), or
        // SMAP outside a stac window. Either is refused whatever the page allows.
        const RFLAGS_AC: u64 = 1 << 18;
        if access == Access::Execute && cpu::smep_enabled() {
            return violation(MemoryFault::ACCESS_VIOLATION);
        }
        if cpu::smap_enabled() && rflags & RFLAGS_AC == 0 {
            return violation(MemoryFault::ACCESS_VIOLATION);
        }
    }
    let root = Cr3::read().0.start_address().as_u64();
    let Some(space) = super::space::find(root) else {
        return PageFaultVerdict::NotGuestMemory;
    };
    let Some((outcome, populated)) = resolve(&space, addr, access) else {
        return PageFaultVerdict::NotGuestMemory;
    };
    let cpu = percpu::this_cpu();
    match outcome {
        FaultOutcome::Resolved if populated => {
            REPEAT_COUNT[cpu].store(0, Ordering::Relaxed);
            PageFaultVerdict::Resolved
        }
        FaultOutcome::Resolved => {
            let key = addr ^ error_code.rotate_left(48);
            if REPEAT_ADDR[cpu].swap(key, Ordering::Relaxed) == key {
                if REPEAT_COUNT[cpu].fetch_add(1, Ordering::Relaxed) >= 8 {
                    REPEAT_COUNT[cpu].store(0, Ordering::Relaxed);
                    return PageFaultVerdict::NotGuestMemory;
                }
            } else {
                REPEAT_COUNT[cpu].store(0, Ordering::Relaxed);
            }
            PageFaultVerdict::Resolved
        }
        FaultOutcome::GuardPage { .. } => violation(MemoryFault::GUARD_PAGE),
        FaultOutcome::AccessViolation { .. } => violation(MemoryFault::ACCESS_VIOLATION),
    }
}

/// Resolves a fault at `addr` in `space` (`None`: the space is destroyed, or this CPU holds its
/// lock exclusively, a kernel bug reported as a kernel fault; a fault taken while another CPU
/// holds it waits, serving flush requests): the outcome, and whether a frame was mapped
/// (demand-zero).
///
/// Faults hold the space lock **shared** (`AddressSpace::handle_fault_shared`, Linux's
/// `mmap_read_lock` fault path), so faults on one space run on several CPUs at once; calls hold
/// it exclusively and never see a fault half done. A fault may run while a call's TLB round is
/// in flight (the lock released after its last change): it sees the call's finished entries
/// (module docs).
///
/// Demand-zero without zeroing under the lock (smp-and-dispatch §4(d), Linux
/// `do_anonymous_page`), in one pass: the fault takes this CPU's kept zeroed frame
/// (`frames::take_zeroed`) and offers it to the space under the shared lock, which installs it by
/// compare-and-exchange if the fault is a first touch (the page's reserved frame then goes back,
/// to this CPU's kept reservation, so the counts are exactly those of a fault handled in one go);
/// an unused frame is kept for the next fault, a used one replaced after the lock is dropped (a
/// frame from this CPU's cache, zeroed with no lock held). Without a kept frame (the first fault
/// on a CPU, or none to be had) the first pass says whether one is needed, and a second pass
/// offers it; with no unreserved frame left at all, the fault is handled exclusively
/// (`handle_fault`: the page's reserved frame, zeroed under the lock). So a first touch costs one
/// lock pass and one zeroing, and the zeroing never holds up a call waiting for the lock.
pub(super) fn resolve(space: &SpaceShared, addr: u64, access: Access) -> Option<(FaultOutcome, bool)> {
    if space.held_by_this_cpu() {
        return None;
    }
    let page = addr & !(PAGE_SIZE - 1);
    // A first touch also says how many pages after it are worth mapping (fault-around).
    let mut ahead = 0;
    let mut shared_pass = |zeroed: &mut Option<PhysFrame>| {
        space.with_shared(|space, cx| {
            let populated_before = cx.counters.faults_resolved;
            let outcome = space.handle_fault_shared(cx, addr, access, zeroed)?;
            let populated = cx.counters.faults_resolved != populated_before;
            if populated {
                ahead = space.fault_around(cx.mem, page);
            }
            Some((outcome, populated))
        })
    };
    // A frame from this CPU's cache, zeroed: it is this CPU's alone (allocated, in no table), so
    // no lock is needed. Interrupts are off (a fault from ring 3): a shootdown IPI sent meanwhile
    // would wait for the whole zeroing (thousands of cycles under TCG) and hold up another CPU's
    // round, so the requests posted to this CPU are served between eighths of the page.
    //
    // A frame an idle CPU zeroed ahead comes first (`frames::zero_ahead`): no zeroing here, and
    // in a virtual machine no first touch of memory the host may not have backed yet.
    let zero_new = || {
        KernelFrames.alloc().ok().inspect(|&frame| {
            let mut window = manager().window;
            window.zero_frame_in(frame, 8, super::tlb::serve_flush_requests);
        })
    };
    let new_zeroed = || frames::take_zeroed().or_else(zero_new);
    let mut zeroed = frames::take_kept_zeroed();
    let kept = zeroed.is_some();
    let mut resolved = shared_pass(&mut zeroed);
    if matches!(resolved, Some(None)) && !kept {
        zeroed = new_zeroed();
        if zeroed.is_some() {
            resolved = shared_pass(&mut zeroed);
        }
    }
    match zeroed {
        // Unused (not a first touch, a race lost, or the space is gone): still all zero.
        Some(unused) => frames::keep_zeroed(unused),
        // Installed: the next fault's, zeroed now that no lock is held.
        None if kept || matches!(resolved, Some(Some((_, true)))) => {
            if let Some(frame) = new_zeroed() {
                frames::keep_zeroed(frame);
            }
        }
        None => {}
    }
    if ahead > 0 {
        fault_around(space, page + PAGE_SIZE, ahead, zero_new);
    }
    match resolved? {
        Some(resolved) => Some(resolved),
        // No unreserved frame to zero outside the lock: the reserved one, under it.
        None => space.with(|space, cx| {
            let populated_before = cx.counters.faults_resolved;
            let outcome = space.handle_fault(cx, addr, access);
            (outcome, cx.counters.faults_resolved != populated_before)
        }),
    }
}

/// Maps up to `ahead` pages from `first` on with frames zeroed ahead (`frames::fill_zeroed`) or
/// zeroed now by `zero_new`, with no lock held (`AddressSpace::fault_around`: a sequential first
/// touch maps the pages it is about to touch). The pages are checked again under the shared lock
/// (`AddressSpace::prefault_shared`); frames it did not use go back (one is kept as this CPU's
/// zeroed frame). Bounded: at most `FAULT_AROUND_MAX` frames, each zeroed in eighths with the
/// flush requests served between.
fn fault_around(space: &SpaceShared, first: u64, ahead: u64, zero_new: impl Fn() -> Option<PhysFrame>) {
    let mut zeroed = [None; FAULT_AROUND_MAX as usize];
    let n = ahead.min(FAULT_AROUND_MAX) as usize;
    // The listed frames fill the first slots; the rest are zeroed here, up to the first frame
    // not to be had (the frames are consecutive from the first page: `prefault_shared`).
    let listed = frames::fill_zeroed(&mut zeroed[..n]);
    for slot in &mut zeroed[listed..n] {
        *slot = zero_new();
        if slot.is_none() {
            break;
        }
    }
    space.with_shared(|space, cx| space.prefault_shared(cx, first, &mut zeroed[..n]));
    for frame in zeroed.into_iter().flatten() {
        frames::keep_zeroed(frame);
    }
}
