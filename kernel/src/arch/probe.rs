//! Fault probes: memory accesses and calls that may fault, with the fault caught, recorded and
//! turned into an error instead of a kernel crash.
//!
//! This is the kernel's exception table, in the small: each probe is a short assembly routine whose
//! one faulting instruction has a known address. When an exception handler sees `rip` at such an
//! address it records the fault ([`FaultRecord`]: vector, error code, CR2, RIP) and resumes at a
//! fix-up that makes the probe return `u64::MAX`. The QEMU tests and the benchmark image use this to
//! assert "this access must raise a page fault at address X with these error bits".
//!
//! [`copy_to_user`] is the host calls' checked write of a result to guest memory: the MMU checks
//! the destination as the guest's own store would (present, writable; the kernel's `CR0.WP`
//! makes a read-only page fault in ring 0 too), and a fault goes to the memory manager first,
//! exactly like the guest's: a demand-zero page gets its frame and the store is retried; a
//! guard page has its guard cleared and is refused. So one store does what a page-table walk, a
//! check and a copy through the physical window did (`AddressSpace::write_user`, which host calls
//! still use for reads and for writes across pages), and the hardware sets the write-watch mark.
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

    # copy_list(descriptors = rdi, count = rsi): for each 24-byte descriptor (destination,
    # source, length), 32 and 8 bytes at a time, then bytes, inside one stac/clac window. Either the
    # stores (copy_to_user) or the loads (copy_from_user) between kprobe_copy_start and
    # kprobe_copy_end touch guest memory, the other side is kernel memory. Caller-saved registers
    # only, nothing pushed: the fault fix-up returns from here directly.
    .global kprobe_copy_list
kprobe_copy_list:
    xor eax, eax
    cmp byte ptr [rip + KPROBE_SMAP], 0
    je 1f
    stac
1:
    .global kprobe_copy_start
kprobe_copy_start:
6:
    test rsi, rsi
    jz 5f
    mov r8, [rdi]
    mov r9, [rdi + 8]
    mov r10, [rdi + 16]
    add rdi, 24
    dec rsi
    cmp r10, 32
    jb 7f
    # 32 bytes a round while they last (a register frame is about a kilobyte; under TCG the
    # loop's own instructions cost as much as its loads and stores), in the same order.
8:
    mov rcx, [r9]
    mov [r8], rcx
    mov rcx, [r9 + 8]
    mov [r8 + 8], rcx
    mov rcx, [r9 + 16]
    mov [r8 + 16], rcx
    mov rcx, [r9 + 24]
    mov [r8 + 24], rcx
    add r9, 32
    add r8, 32
    sub r10, 32
    cmp r10, 32
    jae 8b
7:
    cmp r10, 8
    jb 3f
2:
    mov rcx, [r9]
    mov [r8], rcx
    add r9, 8
    add r8, 8
    sub r10, 8
    cmp r10, 8
    jae 2b
3:
    test r10, r10
    jz 6b
4:
    mov cl, [r9]
    mov [r8], cl
    inc r9
    inc r8
    dec r10
    jnz 4b
    jmp 6b
5:
    .global kprobe_copy_end
kprobe_copy_end:
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

    # save_fpu(image = rdi, xsave = rsi): the x87/SSE/AVX registers saved at guest address rdi
    # (64-byte aligned), by XSAVE of every component when rsi != 0, else by FXSAVE; then the
    # bytes neither writes zeroed (the legacy area's 464..512 and, with XSAVE, the header after
    # XSTATE_BV), so that the image is the one a save into a zeroed buffer makes.
    #
    # load_fpu(image = rdi, xsave = rsi): the registers loaded from the image at guest address
    # rdi by XRSTOR of every component (rsi != 0) or FXRSTOR; 1, with nothing loaded, if the
    # image's XCOMP_BV is not 0 (not the standard form the kernel writes). An image the CPU
    # refuses (#GP: misaligned, reserved MXCSR bits, XSTATE_BV beyond XCR0) is caught as a page
    # fault is. Both routines within one stac/clac window, caller-saved registers only.
    .global kprobe_save_fpu
kprobe_save_fpu:
    cmp byte ptr [rip + KPROBE_SMAP], 0
    je 1f
    stac
1:
    mov eax, -1
    mov edx, -1
    .global kprobe_fpu_start
kprobe_fpu_start:
    test rsi, rsi
    jz 2f
    xsave64 [rdi]
    xor eax, eax
    .irp offset, 520, 528, 536, 544, 552, 560, 568
    mov [rdi + \offset], rax
    .endr
    jmp 3f
2:
    fxsave64 [rdi]
    xor eax, eax
3:
    .irp offset, 464, 472, 480, 488, 496, 504
    mov [rdi + \offset], rax
    .endr
    jmp kprobe_done

    .global kprobe_load_fpu
kprobe_load_fpu:
    cmp byte ptr [rip + KPROBE_SMAP], 0
    je 1f
    stac
1:
    mov eax, -1
    mov edx, -1
    test rsi, rsi
    jz 2f
    cmp qword ptr [rdi + 520], 0
    jne 3f
    xrstor64 [rdi]
    xor eax, eax
    jmp kprobe_done
2:
    fxrstor64 [rdi]
    xor eax, eax
    jmp kprobe_done
3:
    mov eax, 1
    .global kprobe_fpu_end
kprobe_fpu_end:
    jmp kprobe_done

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
    fn kprobe_copy_list(descriptors: *const [u64; 3], count: usize) -> u64;
    fn kprobe_save_fpu(image: u64, xsave: u64) -> u64;
    fn kprobe_load_fpu(image: u64, xsave: u64) -> u64;
    static kprobe_fpu_start: [u8; 0];
    static kprobe_fpu_end: [u8; 0];
    static kprobe_copy_start: [u8; 0];
    static kprobe_copy_end: [u8; 0];
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

/// The end of the lower half: every page below it is guest memory of the space in CR3 (the
/// kernel maps nothing of its own there).
const LOWER_HALF_END: u64 = 0x0000_8000_0000_0000;

/// One piece of a [`copy_to_user`]: `data` goes to guest address `to`.
#[derive(Debug, Clone, Copy)]
pub struct UserCopy<'a> {
    /// The guest address.
    pub to: u64,
    /// The bytes.
    pub data: &'a [u8],
}

/// The most pieces one [`copy_to_user`] or [`copy_from_user`] takes.
pub const MAX_USER_COPIES: usize = 8;

/// Copies each piece to guest memory in the address space in CR3, in order, as the guest's own
/// stores would, inside one `stac`/`clac` window (under TCG each toggle of `AC` ends a
/// translation block, so a call writes its results with one window, not one per result): a
/// demand-zero page is given its frame on the way, and the first store the memory manager
/// refuses (a guard page, whose guard it clears; free, reserved, `PAGE_NOACCESS` or read-only
/// memory) ends the copy with the index of its piece and the fault. The pieces before it, and the
/// bytes of its own before the faulting store, are written: callers keep a piece within one
/// page when a failed piece must leave nothing behind. A piece reaching beyond the lower half is
/// refused without a store of its own (record: vector 0, CR2 its first address past the end).
///
/// No space lock may be held: a fault is resolved under the space's lock.
///
/// # Panics
/// If given more than [`MAX_USER_COPIES`] pieces (a kernel bug).
pub fn copy_to_user(pieces: &[UserCopy<'_>]) -> Result<(), (usize, FaultRecord)> {
    assert!(pieces.len() <= MAX_USER_COPIES, "{} pieces for one copy", pieces.len());
    let mut descriptors = [[0u64; 3]; MAX_USER_COPIES];
    for (d, p) in descriptors.iter_mut().zip(pieces) {
        *d = [p.to, p.data.as_ptr() as u64, p.data.len() as u64];
    }
    // SAFETY: each destination is guest memory (the lower half, which maps only guest pages of
    // the space in CR3: no kernel data, page table or device; `copy_list` refuses anything else),
    // never a Rust reference, so the stores alias nothing of the kernel's; each source is the
    // readable kernel memory of a borrowed slice of that length.
    unsafe { copy_list(&descriptors[..pieces.len()], 0) }
}

/// One piece of a [`copy_from_user`]: `buf` is filled from guest address `from`.
#[derive(Debug)]
pub struct UserRead<'a> {
    /// The guest address.
    pub from: u64,
    /// Where the bytes go.
    pub buf: &'a mut [u8],
}

/// Fills each piece from guest memory in the address space in CR3, in order, as the guest's own
/// loads would, inside one `stac`/`clac` window: a demand-zero page is given its frame on the
/// way, and the first load the memory manager refuses (a guard page, whose guard it clears; free,
/// reserved or `PAGE_NOACCESS` memory) ends the copy with the index of its piece and the fault —
/// what `AddressSpace::read_user` reports, with one load instead of a lookup and a walk per page.
/// A piece reaching beyond the lower half is refused without a load of its own.
///
/// No space lock may be held: a fault is resolved under the space's lock.
///
/// # Panics
/// If given more than [`MAX_USER_COPIES`] pieces (a kernel bug).
pub fn copy_from_user(pieces: &mut [UserRead<'_>]) -> Result<(), (usize, FaultRecord)> {
    assert!(pieces.len() <= MAX_USER_COPIES, "{} pieces for one copy", pieces.len());
    let mut descriptors = [[0u64; 3]; MAX_USER_COPIES];
    for (d, p) in descriptors.iter_mut().zip(pieces.iter_mut()) {
        *d = [p.buf.as_mut_ptr() as u64, p.from, p.buf.len() as u64];
    }
    // SAFETY: each source is guest memory (the lower half, checked by `copy_list`), which the
    // kernel only reads here (no side effect but the memory manager's, as for the guest's own
    // load); each destination is kernel memory of a slice borrowed mutably for the call, so
    // nothing else sees the stores.
    unsafe { copy_list(&descriptors[..pieces.len()], 1) }
}

/// Runs `kprobe_copy_list` over `descriptors` (destination, source, length), whose word `user`
/// (0: destination, 1: source) is the guest address; returns the piece that faulted and its
/// fault. A piece whose guest range reaches beyond the lower half ends the copy before it.
///
/// # Safety
/// The kernel side of every descriptor must be memory the copy may read (source) or write
/// (destination, not aliased by any live reference) for its length.
unsafe fn copy_list(descriptors: &[[u64; 3]], user: usize) -> Result<(), (usize, FaultRecord)> {
    let beyond = |d: &[u64; 3]| d[user].checked_add(d[2]).is_none_or(|end| end > LOWER_HALF_END);
    let (count, refused) = match descriptors.iter().position(beyond) {
        Some(bad) => (bad, Some(bad)),
        None => (descriptors.len(), None),
    };
    // SAFETY: the guest side of each descriptor lies in the lower half (checked above), which
    // maps only guest pages of the space in CR3; the kernel side is valid per the contract. The
    // routine clobbers only caller-saved registers (rax, rcx, rsi, rdi, r8-r10), pushes nothing
    // and leaves AC clear; a fault on a guest access is fixed up by `try_recover`.
    let result = unsafe { kprobe_copy_list(descriptors.as_ptr(), count) };
    if result == u64::MAX {
        let record = take_record();
        // The first piece holding the faulting address is the one being copied (each access lies
        // within its piece, and the pieces are copied in order).
        let at = descriptors[..count].iter().position(|d| (d[user]..d[user] + d[2]).contains(&record.cr2)).unwrap_or(0);
        return Err((at, record));
    }
    match refused {
        Some(bad) => {
            let cr2 = descriptors[bad][user].max(LOWER_HALF_END);
            Err((bad, FaultRecord { vector: 0, error_code: 0, cr2, rip: 0, memory: None }))
        }
        None => Ok(()),
    }
}

/// Where [`save_fpu_to_user`] and [`load_fpu_from_user`] find the register image, and how big
/// it is.
#[derive(Debug, Clone, Copy)]
pub struct UserFpuImage {
    /// Its guest address.
    pub at: u64,
    /// Its size in bytes (the XSAVE area for XCR0, or FXSAVE's 512).
    pub size: usize,
    /// XSAVE/XRSTOR (every component of XCR0), else FXSAVE/FXRSTOR.
    pub xsave: bool,
}

impl UserFpuImage {
    /// A fault record for an image that lies (partly) outside the lower half: no access made.
    fn beyond(&self) -> Option<FaultRecord> {
        let end = self.at.checked_add(self.size as u64);
        end.is_none_or(|end| end > LOWER_HALF_END).then_some(FaultRecord { vector: 0, error_code: 0, cr2: self.at.max(LOWER_HALF_END), rip: 0, memory: None })
    }
}

/// Saves this CPU's x87/SSE/AVX registers (the running guest's: the kernel uses none of them)
/// straight into the register image `image` in guest memory of the space in CR3, as the guest's
/// own stores would make it (a demand-zero page gets its frame; a page the memory manager
/// refuses, a guard page whose guard it clears, ends the save with the fault), in one
/// `stac`/`clac` window: the image a save into a zeroed kernel buffer and a [`copy_to_user`] of
/// it would write, without the kernel buffer and the copy. The image must be 64-byte aligned
/// (16 for FXSAVE); bytes of it may be written before a fault.
///
/// No space lock may be held: a fault is resolved under the space's lock.
pub fn save_fpu_to_user(image: UserFpuImage) -> Result<(), FaultRecord> {
    if let Some(refused) = image.beyond() {
        return Err(refused);
    }
    debug_assert!(image.at % 64 == 0, "a misaligned register image");
    // SAFETY: the image lies in the lower half (checked above), which maps only guest pages of
    // the space in CR3, never a Rust reference, so the stores alias nothing of the kernel's;
    // XSAVE/FXSAVE only read the registers. The routine clobbers only rax, rdx (and AC, left
    // clear); a fault is fixed up by `try_recover`.
    let result = unsafe { kprobe_save_fpu(image.at, image.xsave as u64) };
    if result == u64::MAX { Err(take_record()) } else { Ok(()) }
}

/// Loads this CPU's x87/SSE/AVX registers straight from the register image `image` in guest
/// memory of the space in CR3, as the guest's own loads would read it, in one `stac`/`clac`
/// window: `Ok(true)` when loaded; `Ok(false)`, nothing loaded, when the image is not in the
/// standard form (XCOMP_BV not 0); the fault when a page of it is unreadable or the CPU refuses
/// the image (#GP: misaligned, MXCSR or header bits it does not accept; the registers may then
/// be partly loaded). A caller makes such an image loadable from a copy instead.
///
/// No space lock may be held: a fault is resolved under the space's lock.
pub fn load_fpu_from_user(image: UserFpuImage) -> Result<bool, FaultRecord> {
    if let Some(refused) = image.beyond() {
        return Err(refused);
    }
    // SAFETY: the image lies in the lower half (checked above): guest pages of the space in CR3,
    // only read. XRSTOR/FXRSTOR change only the guest's registers, which the kernel does not
    // use; a refused image faults (#GP) before it loads anything, a page fault is fixed up by
    // `try_recover` either way. Clobbers only rax, rdx and AC (left clear).
    let result = unsafe { kprobe_load_fpu(image.at, image.xsave as u64) };
    match result {
        u64::MAX => Err(take_record()),
        0 => Ok(true),
        _ => Ok(false),
    }
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
    let (read_at, write_at, fixup, call_return, call_fixup, copy_start, copy_end, fpu_start, fpu_end) = unsafe {
        (
            symbol(&kprobe_read_u8_access),
            symbol(&kprobe_write_u8_access),
            symbol(&kprobe_fault_fixup),
            symbol(&kprobe_call_return),
            symbol(&kprobe_call_fixup),
            symbol(&kprobe_copy_start),
            symbol(&kprobe_copy_end),
            symbol(&kprobe_fpu_start),
            symbol(&kprobe_fpu_end),
        )
    };
    let in_copy = (copy_start..copy_end).contains(&rip) || (fpu_start..fpu_end).contains(&rip);
    let resume = if rip == read_at || rip == write_at || in_copy {
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
