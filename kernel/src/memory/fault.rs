//! The memory manager's page-fault policy: resolving a fault on guest memory (demand-zero, a
//! kept frame), refusing it (guard page, access violation), or leaving it to the kernel's fault
//! report ([`crate::trap`]).

use core::sync::atomic::{AtomicU64, Ordering};

use address_space::{Access, FaultOutcome};
use x86_64::registers::control::Cr3;

use super::MM;
use crate::arch::cpu;
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
static REPEAT_ADDR: AtomicU64 = AtomicU64::new(u64::MAX);
static REPEAT_COUNT: AtomicU64 = AtomicU64::new(0);

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
    // A fault taken while this CPU holds the manager's lock is a kernel bug (reported as a
    // kernel fault); one taken while another CPU holds it waits, serving flush requests.
    if MM.held_by_this_cpu() {
        return PageFaultVerdict::NotGuestMemory;
    }
    let mut guard = MM.lock();
    let Some(mm) = guard.as_mut() else { return PageFaultVerdict::NotGuestMemory };
    let root = Cr3::read().0.start_address().as_u64();
    let populated_before = mm.counters.faults_resolved;
    let Some(outcome) = mm.with_space(root, |space, cx| space.handle_fault(cx, addr, access)) else {
        return PageFaultVerdict::NotGuestMemory;
    };
    match outcome {
        FaultOutcome::Resolved if mm.counters.faults_resolved != populated_before => {
            REPEAT_COUNT.store(0, Ordering::SeqCst);
            PageFaultVerdict::Resolved
        }
        FaultOutcome::Resolved => {
            let key = addr ^ error_code.rotate_left(48);
            if REPEAT_ADDR.swap(key, Ordering::SeqCst) == key {
                if REPEAT_COUNT.fetch_add(1, Ordering::SeqCst) >= 8 {
                    REPEAT_COUNT.store(0, Ordering::SeqCst);
                    return PageFaultVerdict::NotGuestMemory;
                }
            } else {
                REPEAT_COUNT.store(0, Ordering::SeqCst);
            }
            PageFaultVerdict::Resolved
        }
        FaultOutcome::GuardPage { .. } => violation(MemoryFault::GUARD_PAGE),
        FaultOutcome::AccessViolation { .. } => violation(MemoryFault::ACCESS_VIOLATION),
    }
}
