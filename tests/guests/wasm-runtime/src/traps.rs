//! Traps: hardware faults in compiled WebAssembly (an access in a linear memory's guard region,
//! `ud2` at a trap site, a division fault) arrive as the kernel's exception delivery to a
//! vectored handler. Wasmtime's trap handler (`wasmtime_init_traps`) decides whether the fault is
//! a wasm trap and, if so, unwinds to the entry of the wasm call — it never returns.
//!
//! The vectored handler does not call it itself: it edits the exception context so that the
//! faulting thread resumes in `trap_trampoline` (on its own stack, below the faulting frame's red
//! zone, with the fault's pc, frame pointer and address as arguments) and returns
//! `EXCEPTION_CONTINUE_EXECUTION`. The unwind then starts from ordinary guest code, which works
//! whether the kernel's exception dispatch lets a handler leave without returning or not. If
//! Wasmtime says the fault is not a wasm trap, the runtime reports the fault and ends the guest
//! with its exception code, as an unhandled exception would.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

use guest_abi::GuestException;
use guest_abi::consts::*;

use crate::sys::host;

/// Wasmtime's handler: `(pc, fp, has_faulting_addr, faulting_addr)`.
type TrapHandler = extern "C" fn(usize, usize, bool, usize);

static WASMTIME_HANDLER: AtomicUsize = AtomicUsize::new(0);
/// Set while a fault is on its way through `trap_trampoline` (a fault in Wasmtime's handler
/// itself is then not redirected again); cleared by `trap_handled` once the unwind landed.
static REDIRECTING: AtomicBool = AtomicBool::new(false);
/// The code of the fault being redirected (for the report if it is not a wasm trap).
static FAULT_CODE: AtomicU32 = AtomicU32::new(0);

const STATUS_ILLEGAL_INSTRUCTION: u32 = 0xC000_001D;
const STATUS_INTEGER_DIVIDE_BY_ZERO: u32 = 0xC000_0094;
const STATUS_INTEGER_OVERFLOW: u32 = 0xC000_0095;

/// Registers Wasmtime's handler and installs the vectored exception handler (first in line).
///
/// # Safety
/// `handler` is Wasmtime's trap handler (called with the documented arguments).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn wasmtime_init_traps(handler: TrapHandler) -> i32 {
    let first = WASMTIME_HANDLER.swap(handler as usize, Ordering::SeqCst) == 0;
    if first && host().add_exception_handler(true, on_exception).is_none() {
        return -1;
    }
    0
}

/// Called after a wasm call returned (normally or through a trap): the next fault may be
/// redirected again.
pub fn trap_handled() {
    REDIRECTING.store(false, Ordering::SeqCst);
}

extern "C" fn on_exception(e: *mut GuestException) -> i32 {
    // SAFETY: the kernel passes a valid exception record whose context we may edit (host-abi §8).
    let e = unsafe { &mut *e };
    let wasm_fault = matches!(
        e.code,
        STATUS_ACCESS_VIOLATION | STATUS_ILLEGAL_INSTRUCTION | STATUS_INTEGER_DIVIDE_BY_ZERO | STATUS_INTEGER_OVERFLOW
    );
    if !wasm_fault || WASMTIME_HANDLER.load(Ordering::SeqCst) == 0 || REDIRECTING.swap(true, Ordering::SeqCst) {
        return EXCEPTION_CONTINUE_SEARCH;
    }
    FAULT_CODE.store(e.code, Ordering::SeqCst);
    // SAFETY: as above.
    let c = unsafe { &mut *e.context };
    let has_address = e.code == STATUS_ACCESS_VIOLATION;
    // Arguments in the System V registers; the trampoline starts as if called (rsp + 8 aligned
    // to 16) below the faulting code's 128-byte red zone. It never returns, so its return
    // address slot is left as it is.
    c.rdi = c.rip;
    c.rsi = c.rbp;
    c.rdx = u64::from(has_address);
    c.rcx = if has_address { e.address } else { 0 };
    c.rsp = ((c.rsp - 128) & !15) - 8;
    c.rip = trap_trampoline as *const () as usize as u64;
    EXCEPTION_CONTINUE_EXECUTION
}

extern "C" fn trap_trampoline(pc: usize, fp: usize, has_address: bool, address: usize) -> ! {
    let handler = WASMTIME_HANDLER.load(Ordering::SeqCst);
    // SAFETY: stored from wasmtime_init_traps' argument, a function of this type.
    let handler: TrapHandler = unsafe { core::mem::transmute::<usize, TrapHandler>(handler) };
    // Resumes at the wasm call's entry if this is a wasm trap; returns otherwise.
    handler(pc, fp, has_address, address);
    let code = FAULT_CODE.load(Ordering::SeqCst);
    crate::out!("wasm-runtime: exception {code:#010x} at rip {pc:#x} (address {address:#x}) outside WebAssembly code\n");
    host().exit(code as i32)
}
