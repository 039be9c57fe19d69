//! Fault probes: memory accesses and calls that may fault, with the fault caught, recorded and
//! turned into an error instead of a kernel crash.
//!
//! This is the kernel's exception table, in the small: each probe is a short assembly routine whose
//! one faulting instruction has a known address. When an exception handler sees `rip` at such an
//! address it records the fault ([`FaultRecord`]: vector, error code, CR2, RIP) and resumes at a
//! fix-up that makes the probe return `u64::MAX`. The QEMU tests and the benchmark image use this to
//! assert "this access must raise a page fault at address X with these error bits". Host calls do
//! not use probes: they reach guest memory through the address space's own page-table walk
//! (`AddressSpace::read_user`/`write_user`), which never faults.
//!
//! `call` runs code at an address; if the *first* instruction cannot be fetched (NX, not present),
//! the fault arrives with the return address still on top of the stack, and the fix-up pops it.

use core::arch::global_asm;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use x86_64::structures::idt::InterruptStackFrame;

global_asm!(
    r#"
    .section .text.kprobe, "ax"
    .global kprobe_read_u8
kprobe_read_u8:
    xor eax, eax
    cmp byte ptr [rip + KPROBE_SMAP], 0
    je 1f
    stac
1:
    .global kprobe_read_u8_access
kprobe_read_u8_access:
    movzx eax, byte ptr [rdi]
    jmp kprobe_done

    .global kprobe_write_u8
kprobe_write_u8:
    xor eax, eax
    cmp byte ptr [rip + KPROBE_SMAP], 0
    je 1f
    stac
1:
    .global kprobe_write_u8_access
kprobe_write_u8_access:
    mov byte ptr [rdi], sil
    jmp kprobe_done

    .global kprobe_fault_fixup
kprobe_fault_fixup:
    mov rax, -1
kprobe_done:
    cmp byte ptr [rip + KPROBE_SMAP], 0
    je 1f
    clac
1:
    ret

    .global kprobe_call
kprobe_call:
    push rbx
    call rdi
    .global kprobe_call_return
kprobe_call_return:
    pop rbx
    ret

    .global kprobe_call_fixup
kprobe_call_fixup:
    add rsp, 8
    pop rbx
    mov rax, -1
    ret
    .text
"#
);

/// Read by the probes: whether SMAP is on, so that they open a `stac`/`clac` window around the
/// access (`stac` itself is an invalid opcode on CPUs without SMAP).
#[unsafe(no_mangle)]
static KPROBE_SMAP: AtomicBool = AtomicBool::new(false);

/// Tells the probes that SMAP is now on (called by the code that enables it).
pub(crate) fn set_smap(on: bool) {
    KPROBE_SMAP.store(on, Ordering::SeqCst);
}

unsafe extern "C" {
    fn kprobe_read_u8(addr: u64) -> u64;
    fn kprobe_write_u8(addr: u64, value: u8) -> u64;
    fn kprobe_call(addr: u64) -> u64;
    static kprobe_read_u8_access: [u8; 0];
    static kprobe_write_u8_access: [u8; 0];
    static kprobe_fault_fixup: [u8; 0];
    static kprobe_call_return: [u8; 0];
    static kprobe_call_fixup: [u8; 0];
}

/// A CPU exception caught by a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultRecord {
    /// Exception vector (14 = page fault, 13 = general protection, ...).
    pub vector: u8,
    /// The error code the CPU pushed (0 for exceptions without one).
    pub error_code: u64,
    /// CR2 at the fault (the faulting linear address for page faults; 0 otherwise).
    pub cr2: u64,
    /// Address of the faulting instruction.
    pub rip: u64,
    /// For a page fault on guest memory: what the address-space manager made of it.
    pub memory: Option<MemoryFault>,
}

/// The address-space manager's verdict on a page fault it could not resolve, in the terms a
/// guest's exception record uses (host-abi §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryFault {
    /// NTSTATUS: [`MemoryFault::ACCESS_VIOLATION`] or [`MemoryFault::GUARD_PAGE`].
    pub code: u32,
    /// 0 read, 1 write, 8 execute.
    pub access: u64,
    /// The faulting address.
    pub address: u64,
}

impl MemoryFault {
    /// STATUS_ACCESS_VIOLATION.
    pub const ACCESS_VIOLATION: u32 = host_abi::win32::STATUS_ACCESS_VIOLATION;
    /// STATUS_GUARD_PAGE_VIOLATION.
    pub const GUARD_PAGE: u32 = host_abi::win32::STATUS_GUARD_PAGE_VIOLATION;
}

/// Page-fault error-code bits (Intel SDM Vol. 3A §4.7).
pub mod pf {
    /// The fault was a protection violation (the page was present).
    pub const PRESENT: u64 = 1 << 0;
    /// The access was a write.
    pub const WRITE: u64 = 1 << 1;
    /// The access came from ring 3.
    pub const USER: u64 = 1 << 2;
    /// A reserved bit was set in a paging-structure entry.
    pub const RESERVED: u64 = 1 << 3;
    /// The access was an instruction fetch.
    pub const INSTRUCTION: u64 = 1 << 4;
}

/// The fault a probe caught, one record per CPU (probes may fault on several CPUs at once).
struct Record {
    exec_probe_armed: AtomicBool,
    have: AtomicBool,
    vector: AtomicU64,
    error: AtomicU64,
    cr2: AtomicU64,
    rip: AtomicU64,
    mem_code: AtomicU64,
    mem_access: AtomicU64,
    mem_address: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY_RECORD: Record = Record {
    exec_probe_armed: AtomicBool::new(false),
    have: AtomicBool::new(false),
    vector: AtomicU64::new(0),
    error: AtomicU64::new(0),
    cr2: AtomicU64::new(0),
    rip: AtomicU64::new(0),
    mem_code: AtomicU64::new(0),
    mem_access: AtomicU64::new(0),
    mem_address: AtomicU64::new(0),
};

static RECORDS: [Record; super::percpu::MAX_CPUS] = [EMPTY_RECORD; super::percpu::MAX_CPUS];

/// This CPU's record (probes run in ring 0, where GS is the kernel's).
fn record() -> &'static Record {
    &RECORDS[super::percpu::this_cpu()]
}

fn take_record() -> FaultRecord {
    let r = record();
    let had = r.have.swap(false, Ordering::SeqCst);
    debug_assert!(had, "a probe returned the fault marker without a recorded fault");
    FaultRecord {
        vector: r.vector.load(Ordering::SeqCst) as u8,
        error_code: r.error.load(Ordering::SeqCst),
        cr2: r.cr2.load(Ordering::SeqCst),
        rip: r.rip.load(Ordering::SeqCst),
        memory: match r.mem_code.load(Ordering::SeqCst) {
            0 => None,
            code => Some(MemoryFault {
                code: code as u32,
                access: r.mem_access.load(Ordering::SeqCst),
                address: r.mem_address.load(Ordering::SeqCst),
            }),
        },
    }
}

/// Reads the byte at `addr`, catching any fault. With SMAP on, the read happens inside a
/// `stac`/`clac` window, so it may touch guest pages.
///
/// # Safety
/// `addr` must not be memory whose *reading* has side effects (device registers); the read itself
/// may fault freely. The byte is read, not borrowed, so no aliasing rule is involved.
pub unsafe fn read_u8(addr: u64) -> Result<u8, FaultRecord> {
    // SAFETY: kprobe_read_u8 reads one byte at `addr` (the caller vouches that reading has no side
    // effect) and clobbers only rax, as the C ABI allows; a fault in it is fixed up by the handler.
    let value = unsafe { kprobe_read_u8(addr) };
    if value == u64::MAX { Err(take_record()) } else { Ok(value as u8) }
}

/// Writes `value` to the byte at `addr`, catching any fault.
///
/// # Safety
/// `addr` must not be memory owned by anything else that the write would corrupt (kernel data,
/// page tables, device registers): only memory the caller set up for the probe.
pub unsafe fn write_u8(addr: u64, value: u8) -> Result<(), FaultRecord> {
    // SAFETY: writes one byte to memory the caller owns (contract above); clobbers only rax.
    let result = unsafe { kprobe_write_u8(addr, value) };
    if result == u64::MAX { Err(take_record()) } else { Ok(()) }
}

/// Calls the code at `addr` (System V ABI, no arguments, returns `u64`), catching a fault on the
/// fetch of its first instruction.
///
/// # Safety
/// If the code at `addr` runs, it must be a function of that signature that returns something other
/// than `u64::MAX` and breaks no kernel invariant.
pub unsafe fn call(addr: u64) -> Result<u64, FaultRecord> {
    record().exec_probe_armed.store(true, Ordering::SeqCst);
    // SAFETY: per the contract, running the code at `addr` is allowed; a fetch fault is fixed up.
    let value = unsafe { kprobe_call(addr) };
    record().exec_probe_armed.store(false, Ordering::SeqCst);
    if value == u64::MAX { Err(take_record()) } else { Ok(value) }
}

fn symbol(s: &[u8; 0]) -> u64 {
    s.as_ptr() as u64
}

/// Called by every exception handler first: if the fault happened inside a probe, records it,
/// redirects the interrupted context to the probe's fix-up and returns true.
pub(crate) fn try_recover(
    vector: u8,
    error_code: u64,
    cr2: u64,
    memory: Option<MemoryFault>,
    frame: &mut InterruptStackFrame,
) -> bool {
    if frame.code_segment.0 & 3 != 0 {
        // Probes run in ring 0; and with ring 3 interrupted, GS (the per-CPU record) is the guest's.
        return false;
    }
    let rip = frame.instruction_pointer.as_u64();
    // SAFETY: taking the address of link-time symbols defined in the global_asm! above.
    let (read_at, write_at, fixup, call_return, call_fixup) = unsafe {
        (
            symbol(&kprobe_read_u8_access),
            symbol(&kprobe_write_u8_access),
            symbol(&kprobe_fault_fixup),
            symbol(&kprobe_call_return),
            symbol(&kprobe_call_fixup),
        )
    };
    let resume = if rip == read_at || rip == write_at {
        fixup
    } else if record().exec_probe_armed.load(Ordering::SeqCst) {
        let rsp = frame.stack_pointer.as_u64();
        // SAFETY: the probe is armed only while kprobe_call runs on this CPU's kernel stack, so rsp
        // is a kernel stack address; only its top word is read, and it is compared, not trusted.
        let top = unsafe { core::ptr::read_volatile(rsp as *const u64) };
        if top == call_return { call_fixup } else { return false }
    } else {
        return false;
    };
    let r = record();
    r.vector.store(vector as u64, Ordering::SeqCst);
    r.error.store(error_code, Ordering::SeqCst);
    r.cr2.store(cr2, Ordering::SeqCst);
    r.rip.store(rip, Ordering::SeqCst);
    let m = memory.unwrap_or(MemoryFault { code: 0, access: 0, address: 0 });
    r.mem_code.store(m.code as u64, Ordering::SeqCst);
    r.mem_access.store(m.access, Ordering::SeqCst);
    r.mem_address.store(m.address, Ordering::SeqCst);
    r.have.store(true, Ordering::SeqCst);
    // SAFETY: the new rip is a fix-up routine of this module written for exactly this context
    // (same stack, same privilege level); nothing else in the frame changes.
    unsafe {
        frame.as_mut().update(|f| f.instruction_pointer = x86_64::VirtAddr::new(resume));
    }
    true
}
