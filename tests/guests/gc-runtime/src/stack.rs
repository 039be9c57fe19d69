//! Managed-thread stacks with guard pages, grown by the runtime's own exception handler, and
//! stack overflow as a managed exception the program survives.
//!
//! A managed stack is a reservation (256 KiB by default) whose top pages are committed read-write,
//! with a `PAGE_GUARD` page below them and a committed "cushion" page below the guard:
//!
//! ```text
//!   hi ┌──────────────┐
//!      │ committed RW │  frames of managed code
//!      ├──────────────┤
//!      │ RW | GUARD   │  first touch raises 0x80000001 (once; the page is then plain RW)
//!      ├──────────────┤
//!      │ cushion RW   │  room for the exception handler, which runs on this same stack
//!      ├──────────────┤
//!      │ reserved     │
//!   lo └──────────────┘  (the lowest pages: an emergency zone only runtime code may use)
//! ```
//!
//! On a guard-page exception the handler commits a new guard page and a new cushion below the
//! old cushion (as Windows moves a thread's guard page down) and resumes. When no room is left
//! for them it raises a managed `StackOverflow`: it edits the exception context so that the
//! thread resumes at the catch point saved by [`run_managed`] on the original stack (rsp and rip
//! of the landing code, which restores the callee-saved registers), and the call returns
//! `Err(StackOverflow)`. [`ManagedStack::rearm`] then decommits the used pages and puts the guard
//! back, so it can happen again.
//!
//! Every mutator thread has a managed stack of its own; the handler (one, per guest) runs on the
//! faulting thread and finds that thread's stack and catch point in its [`ThreadState`].

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use guest_abi::consts::*;
use guest_abi::{CriticalLevel, GuestException};

use crate::gc::{ManagedError, PAGE};
use crate::sys::{ThreadState, current, host, state_of_stack};

/// Committed pages at the top of a fresh stack.
const TOP_PAGES: usize = 2;
/// Committed pages below the guard page.
const CUSHION: usize = 2;
/// Pages at the bottom only runtime code (a collection under way) may grow into.
const EMERGENCY: usize = 6;

/// Guard-page growth steps taken (all threads), and the lowest guard page so far.
pub static GROWTHS: AtomicU64 = AtomicU64::new(0);
pub static LOWEST_GUARD: AtomicUsize = AtomicUsize::new(usize::MAX);
pub static OVERFLOWS: AtomicU64 = AtomicU64::new(0);

core::arch::global_asm!(
    ".globl gc_run_on_stack",
    // u64 gc_run_on_stack(void *arg, u64 (*f)(void *), usize stack_top, u64 jmp[2])
    "gc_run_on_stack:",
    "push rbp",
    "push rbx",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    "mov [rcx], rsp",
    "lea rax, [rip + 2f]",
    "mov [rcx + 8], rax",
    "mov r12, rsp",
    "mov rsp, rdx",
    "call rsi",
    "mov rsp, r12",
    // The catch point: a stack overflow resumes here with rsp = jmp[0].
    "2:",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbx",
    "pop rbp",
    "ret",
);

unsafe extern "C" {
    fn gc_run_on_stack(arg: *mut u8, f: extern "C" fn(*mut u8) -> u64, top: usize, jmp: *const AtomicU64) -> u64;
}

static HANDLER_INSTALLED: AtomicUsize = AtomicUsize::new(0);

/// A managed thread's stack.
pub struct ManagedStack {
    pub lo: usize,
    pub hi: usize,
}

impl ManagedStack {
    /// Reserves `size` bytes, arms the guard page and installs the handler (once per guest).
    /// The stack belongs to the thread that calls [`ManagedStack::run`] on it.
    pub fn new(size: usize) -> Result<ManagedStack, guest_abi::HResult> {
        let h = host();
        let lo = h.allocate(size, MEM_RESERVE, PAGE_READWRITE, CriticalLevel::Task)?;
        let s = ManagedStack { lo, hi: lo + size };
        // SAFETY: a new reservation: nothing runs on it or refers to it yet.
        if let Err(e) = unsafe { s.arm() } {
            // SAFETY: the same new reservation, known to nothing else.
            let _ = unsafe { h.virtual_free(lo, 0, MEM_RELEASE) };
            return Err(e);
        }
        if HANDLER_INSTALLED.swap(1, Ordering::SeqCst) == 0 && h.add_exception_handler(true, handler).is_none() {
            return Err(guest_abi::HResult::E_INVALIDARG);
        }
        Ok(s)
    }

    /// Commits the top pages read-write and the guard and cushion below them.
    ///
    /// # Safety
    /// Everything below the top pages is only reserved (a new stack, or one `rearm` just
    /// decommitted), so no frame or value lies where the guard goes.
    unsafe fn arm(&self) -> Result<(), guest_abi::HResult> {
        let h = host();
        let top = self.hi - TOP_PAGES * PAGE;
        // SAFETY: the top pages are only reserved, or (after an overflow) committed read-write
        // already: committing them read-write changes neither contents nor access.
        unsafe { h.virtual_alloc(top, TOP_PAGES * PAGE, MEM_COMMIT, PAGE_READWRITE, CriticalLevel::Task) }?;
        let guard = top - PAGE;
        // SAFETY: below the top pages, only reserved (this function's contract): nothing is there.
        unsafe { h.virtual_alloc(guard, PAGE, MEM_COMMIT, PAGE_READWRITE | PAGE_GUARD, CriticalLevel::Task) }?;
        // SAFETY: as above.
        unsafe { h.virtual_alloc(guard - CUSHION * PAGE, CUSHION * PAGE, MEM_COMMIT, PAGE_READWRITE, CriticalLevel::Task) }?;
        Ok(())
    }

    /// After an overflow: decommits everything below the top pages and arms the guard again.
    ///
    /// # Safety
    /// No frame runs on this stack ([`run`](Self::run) on it has returned, on the thread it
    /// belongs to) and nothing refers to what the abandoned frames of an overflow held (`run`'s
    /// contract for `f`; roots they registered are dropped).
    pub unsafe fn rearm(&self) -> Result<(), guest_abi::HResult> {
        // SAFETY: no frame is on the stack and nothing refers into it (caller); the pages are
        // reached only as the stack of `run`, which is not running.
        unsafe { host().virtual_free(self.lo, self.hi - TOP_PAGES * PAGE - self.lo, MEM_DECOMMIT) }?;
        // SAFETY: everything below the top pages was just decommitted.
        unsafe { self.arm() }
    }

    /// Runs `f` on this stack; a stack overflow in it comes back as `Err(StackOverflow)` (its
    /// frames are abandoned: `f` must not hold anything that needs dropping).
    pub fn run<F: FnMut() -> u64>(&self, f: &mut F) -> Result<u64, ManagedError> {
        extern "C" fn trampoline<F: FnMut() -> u64>(p: *mut u8) -> u64 {
            // SAFETY: p is the &mut F passed below, alive for the call.
            unsafe { (*(p as *mut F))() }
        }
        let t = current();
        t.pending.store(0, Ordering::SeqCst);
        t.stack_lo.store(self.lo, Ordering::SeqCst);
        t.stack_hi.store(self.hi, Ordering::SeqCst);
        let top = self.hi & !15;
        // SAFETY: the stack is reserved and armed; the assembly saves and restores every
        // callee-saved register and returns on the original stack, also after an overflow.
        let r = unsafe { gc_run_on_stack(f as *mut F as *mut u8, trampoline::<F>, top, t.jmp.as_ptr()) };
        t.stack_lo.store(0, Ordering::SeqCst);
        t.stack_hi.store(0, Ordering::SeqCst);
        match t.pending.swap(0, Ordering::SeqCst) {
            0 => Ok(r),
            _ => Err(ManagedError::StackOverflow),
        }
    }
}

impl Drop for ManagedStack {
    fn drop(&mut self) {
        // SAFETY: `run` borrows the stack, so none of it runs now; nothing outlives a frame of
        // `run` (its contract for `f`), so nothing refers into the reservation.
        let _ = unsafe { host().virtual_free(self.lo, 0, MEM_RELEASE) };
    }
}

fn overflow(t: &ThreadState, e: &GuestException) -> i32 {
    if t.in_runtime.load(Ordering::SeqCst) != 0 {
        // Runtime code (a collection, an IHostMalloc call) cannot be abandoned half-way.
        crate::out!("gc-runtime: fatal: stack overflow inside the runtime\n");
        host().exit(STATUS_STACK_OVERFLOW as i32);
    }
    OVERFLOWS.fetch_add(1, Ordering::SeqCst);
    t.pending.store(1, Ordering::SeqCst);
    // SAFETY: the host passes a valid context that the handler may edit.
    let c = unsafe { &mut *e.context };
    c.rsp = t.jmp[0].load(Ordering::SeqCst);
    c.rip = t.jmp[1].load(Ordering::SeqCst);
    c.rax = 0;
    EXCEPTION_CONTINUE_EXECUTION
}

extern "C" fn handler(e: *mut GuestException) -> i32 {
    // SAFETY: the host passes a valid GUEST_EXCEPTION.
    let e = unsafe { &*e };
    // The handler runs on the faulting thread, whose managed stack holds the address.
    let addr = e.address as usize;
    let Some(t) = state_of_stack(addr) else { return EXCEPTION_CONTINUE_SEARCH };
    let (lo, _) = (t.stack_lo.load(Ordering::SeqCst), t.stack_hi.load(Ordering::SeqCst));
    match e.code {
        STATUS_GUARD_PAGE_VIOLATION => {
            let g = addr & !(PAGE - 1);
            let new_guard = g - (CUSHION + 1) * PAGE;
            let new_cushion = new_guard - CUSHION * PAGE;
            let floor = lo + PAGE + if t.in_runtime.load(Ordering::SeqCst) != 0 { 0 } else { EMERGENCY * PAGE };
            if new_cushion < floor {
                return overflow(t, e);
            }
            let h = host();
            // SAFETY: both ranges lie below the cushion under the guard page just hit: the stack has
            // never grown there since it was armed (a touch would have faulted), so the pages are
            // only reserved and hold nothing; this handler runs on the cushion above them.
            let ok = unsafe {
                h.virtual_alloc(new_guard, PAGE, MEM_COMMIT, PAGE_READWRITE | PAGE_GUARD, CriticalLevel::Task).is_ok()
                    && h.virtual_alloc(new_cushion, CUSHION * PAGE, MEM_COMMIT, PAGE_READWRITE, CriticalLevel::Task).is_ok()
            };
            if !ok {
                // No commit left for the stack: that too is a stack overflow.
                return overflow(t, e);
            }
            GROWTHS.fetch_add(1, Ordering::SeqCst);
            LOWEST_GUARD.fetch_min(new_guard, Ordering::SeqCst);
            EXCEPTION_CONTINUE_EXECUTION
        }
        // A reserved page of the stack touched without passing the guard page.
        STATUS_ACCESS_VIOLATION => overflow(t, e),
        _ => EXCEPTION_CONTINUE_SEARCH,
    }
}
