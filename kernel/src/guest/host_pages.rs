//! The host's pages in every guest (host-abi §2, §3, §7): ring-3 code and read-only data, like a
//! vDSO, through which a guest reaches the kernel without knowing any system-call number.
//!
//! ```text
//!  HOST_BASE          page 0  PAGE_EXECUTE_READ  the stubs below (copied from the kernel image)
//!  HOST_BASE + 0x1000 page 1  PAGE_READONLY      +0x000 IHostMemoryManager object {lpVtbl}
//!                                                +0x040 its vtable (13 entries)
//!                                                +0x100 HOST_SERVICES (version 2)
//! ```
//! Both pages form one host-owned `MEM_IMAGE` allocation: VirtualAlloc/Free/Protect on it fail
//! with ERROR_INVALID_ADDRESS (host-abi §9).
//!
//! Each stub moves the fourth argument from `rcx` (clobbered by `syscall`) to `r10`, loads its
//! call number into `eax` and executes `syscall`; the seven-argument `VirtualAlloc` passes its
//! seventh (`ppMem`, on the stack) in `rbx`, which it saves and restores. The kernel returns the
//! result in `rax` and every other register as it was, except `rcx` and `r11`, which `syscall`
//! itself clobbers (caller-saved in the System V ABI).
//!
//! `VirtualAlloc`, `VirtualQuery` and `VirtualProtect` store their out-values in ring 3 (the
//! [`assisted`] calls): a store from the kernel needs SMAP's `stac`/`clac` window (under TCG
//! each toggle of `AC` ends a translation block; a store there cost more than the query itself),
//! a ring-3 store is an ordinary one. The stores have an exception table, [`store_site`]: a fault at one of them
//! goes to the memory manager as the guest's own would (a demand-zero page gets its frame, the
//! thread's stack grows), and one it refuses becomes the call's documented error (ERROR_NOACCESS,
//! or 0x80000001 with the guard cleared), never an exception of the guest: exactly what the
//! kernel's checked copy gave. Where that copy would differ (a result straddling two pages, which
//! must be all or nothing; `RFLAGS.AC` set, where a ring-3 store may raise #AC; a query of the
//! thread's own stack; a call served under the guest's lock, after which a notification callback
//! may run before the stub resumes) the kernel stores the results itself and the stub only
//! returns.

use core::arch::global_asm;
use core::mem::offset_of;

use host_abi::HostServices;
pub use host_abi::host::{ARGS, ARGS_MAX, HOST_BASE, HOST_CODE, HOST_DATA, HOST_SERVICES, HOST_SERVICES_SIZE, MANAGER_OBJECT, MANAGER_VTABLE, nr};
use host_abi::win32::{ALLOCATION_GRANULARITY, PAGE_SIZE};

global_asm!(
    r#"
    .section .rodata.vmk_host_code, "a"
    .balign 16
    .global vmk_host_code_start
vmk_host_code_start:
hs_exit:
    mov eax, {exit}
    syscall
    ud2
# write(buf, len): the kernel writes at most a bounded piece per call and returns its length (0:
# nothing more); rdx = 1 on the first call asks it to check the whole buffer first.
hs_write:
    push rbx
    push r12
    mov rbx, rdi
    mov r12, rsi
    mov edx, 1
7:
    test r12, r12
    jz 8f
    mov rdi, rbx
    mov rsi, r12
    mov eax, {write}
    syscall
    test rax, rax
    jz 8f
    add rbx, rax
    sub r12, rax
    xor edx, edx
    jmp 7b
8:
    pop r12
    pop rbx
    ret
hs_ticks:
    mov eax, {ticks}
    syscall
    ret
hs_add_veh:
    mov eax, {add_veh}
    syscall
    ret
hs_remove_veh:
    mov eax, {remove_veh}
    syscall
    ret
hs_get_write_watch:
    mov r10, rcx
    mov eax, {gww}
    syscall
    ret
hs_reset_write_watch:
    mov eax, {rww}
    syscall
    ret
hs_query_commit:
    mov eax, {qc}
    syscall
    ret
# The exception dispatcher (KiUserExceptionDispatcher): the kernel enters it with rsp = rbx = the
# GUEST_EXCEPTION it wrote, r12 = its GUEST_CONTEXT, r13 = the saved register image, r15 = the
# first handler and r14 its order key (all saved in the context; rsp 16-aligned, so each handler
# is entered as at a call). Only when a handler passes the exception on is the one after it asked
# for, by the key of the one called (the next key comes back in rdx).
hs_dispatch_exception:
    cld
    mov rax, r15
3:
    mov rdi, rbx
    call rax
    cmp eax, -1
    je 4f
    mov rdi, r14
    mov eax, {exception_handler}
    syscall
    mov r14, rdx
    test rax, rax
    jnz 3b
    mov rdi, rbx
    mov eax, {unhandled}
    syscall
    ud2
4:
    mov rdi, r12
    mov rsi, r13
    mov eax, {continue_}
    syscall
    ud2
# The callback dispatcher: calls `method(object, argument)` for each of the r12 triples
# (method, object, argument) at rbx (= rsp, 16-aligned), then resumes the host call's caller from
# the context at r13 and the image at r14; r15 says whether a notification was among them.
hs_dispatch_callbacks:
    cld
5:
    test r12, r12
    jz 6f
    mov rax, [rbx]
    mov rdi, [rbx + 8]
    mov rsi, [rbx + 16]
    add rbx, 24
    dec r12
    call rax
    jmp 5b
6:
    mov rdi, r13
    mov rsi, r14
    mov rdx, r15
    mov eax, {callbacks_done}
    syscall
    ud2
hs_guest_return:
    movsxd rdi, eax
    mov eax, {exit}
    syscall
    ud2
# A new thread starts here (host-abi §10.2) with rsp 16-aligned, rdi = arg, r12 = start: start(arg)
# is called, and its return value is the thread's exit code.
hs_thread_start:
    call r12
    mov edi, eax
    mov eax, {exit_thread}
    syscall
    ud2
hs_create_thread:
    mov r10, rcx
    mov eax, {create_thread}
    syscall
    ret
hs_exit_thread:
    mov eax, {exit_thread}
    syscall
    ud2
hs_wait_thread:
    mov eax, {wait_thread}
    syscall
    ret
hs_close_thread:
    mov eax, {close_thread}
    syscall
    ret
hs_current_thread_id:
    mov eax, {current_thread_id}
    syscall
    ret
hs_yield:
    mov eax, {yield_}
    syscall
    ret
hs_sleep_ns:
    mov eax, {sleep_ns}
    syscall
    ret
hs_wait_on_address:
    mov r10, rcx
    mov eax, {wait_on_address}
    syscall
    ret
hs_wake_by_address:
    mov eax, {wake_by_address}
    syscall
    ret
hs_set_thread_pointer:
    mov eax, {set_thread_pointer}
    syscall
    ret
hs_get_thread_pointer:
    mov eax, {get_thread_pointer}
    syscall
    ret
hm_0: mov r10, rcx
    mov eax, {m} + 0
    syscall
    ret
hm_1: mov eax, {m} + 1
    syscall
    ret
hm_2: mov eax, {m} + 2
    syscall
    ret
hm_3: mov eax, {m} + 3
    syscall
    ret
# VirtualAlloc: `*ppMem = NULL` is stored here, in ring 3, before the call (the out-pointer's
# check: host-abi §9 order, E_POINTER and a bad `this` left to the kernel), and the base after
# it; a fault on either store is the call's error, never the guest's exception (`store_site`).
hm_4: push rbx
    mov rbx, [rsp + 16]
    mov r10, rcx
    mov eax, {m} + 4
    mov r11, {manager_object}
    cmp rdi, r11
    jne hm_4_call
    test rbx, rbx
    jz hm_4_call
hm_4_check:
    mov qword ptr [rbx], 0
    mov eax, {alloc_stored}
hm_4_call:
    syscall
    bt rax, 32
    jnc hm_4_done
hm_4_result:
    mov [rbx], rdx
    xor eax, eax
hm_4_done:
    pop rbx
    ret
hm_5: mov r10, rcx
    mov eax, {m} + 5
    syscall
    ret
# VirtualQuery: the kernel answers in registers (rax bit 32 set, the structure's six words in
# rdi, rsi, rdx, r8, r9, r10) when the stores below are the whole rest of the call; they store
# `*pResult = 0` (its check), the structure, `*pResult = 48`, as the kernel's checked copy did.
hm_6: mov r10, rcx
    push r8
    push rdx
    mov eax, {query_regs}
    syscall
    pop rcx
    pop r11
    bt rax, 32
    jnc hm_6_done
hm_6_check:
    mov qword ptr [r11], 0
hm_6_info:
    mov [rcx], rdi
    mov [rcx + 8], rsi
    mov [rcx + 16], rdx
    mov [rcx + 24], r8
    mov [rcx + 32], r9
    mov [rcx + 40], r10
hm_6_result:
    mov qword ptr [r11], 48
hm_6_result_end:
    xor eax, eax
hm_6_done:
    ret
# VirtualProtect: the kernel checks `lpflOldProtect` before the change (it must stay untouched
# on failure) and returns the old protection in edx (rax bit 32 set) for the stub to store.
hm_7: mov r10, rcx
    push r8
    mov eax, {protect_regs}
    syscall
    pop rcx
    bt rax, 32
    jnc hm_7_done
hm_7_result:
    mov [rcx], edx
    xor eax, eax
hm_7_done:
    ret
hm_8: mov eax, {m} + 8
    syscall
    ret
hm_9: mov eax, {m} + 9
    syscall
    ret
hm_10: mov eax, {m} + 10
    syscall
    ret
hm_11: mov eax, {m} + 11
    syscall
    ret
hm_12: mov eax, {m} + 12
    syscall
    ret
    .global vmk_host_code_end
vmk_host_code_end:

    .section .rodata.vmk_host_offsets, "a"
    .balign 8
    .global vmk_host_offsets
vmk_host_offsets:
    .quad hs_exit - vmk_host_code_start
    .quad hs_write - vmk_host_code_start
    .quad hs_ticks - vmk_host_code_start
    .quad hs_add_veh - vmk_host_code_start
    .quad hs_remove_veh - vmk_host_code_start
    .quad hs_get_write_watch - vmk_host_code_start
    .quad hs_reset_write_watch - vmk_host_code_start
    .quad hs_query_commit - vmk_host_code_start
    .quad hs_dispatch_exception - vmk_host_code_start
    .quad hs_dispatch_callbacks - vmk_host_code_start
    .quad hs_guest_return - vmk_host_code_start
    .quad hs_thread_start - vmk_host_code_start
    .quad hs_create_thread - vmk_host_code_start
    .quad hs_exit_thread - vmk_host_code_start
    .quad hs_wait_thread - vmk_host_code_start
    .quad hs_close_thread - vmk_host_code_start
    .quad hs_current_thread_id - vmk_host_code_start
    .quad hs_yield - vmk_host_code_start
    .quad hs_sleep_ns - vmk_host_code_start
    .quad hs_wait_on_address - vmk_host_code_start
    .quad hs_wake_by_address - vmk_host_code_start
    .quad hs_set_thread_pointer - vmk_host_code_start
    .quad hs_get_thread_pointer - vmk_host_code_start
    .quad hm_0 - vmk_host_code_start
    .quad hm_1 - vmk_host_code_start
    .quad hm_2 - vmk_host_code_start
    .quad hm_3 - vmk_host_code_start
    .quad hm_4 - vmk_host_code_start
    .quad hm_5 - vmk_host_code_start
    .quad hm_6 - vmk_host_code_start
    .quad hm_7 - vmk_host_code_start
    .quad hm_8 - vmk_host_code_start
    .quad hm_9 - vmk_host_code_start
    .quad hm_10 - vmk_host_code_start
    .quad hm_11 - vmk_host_code_start
    .quad hm_12 - vmk_host_code_start

    # The stubs' result stores (see `store_site`): start, end, kind, where the call ends, where
    # the plain call is made.
    .balign 8
    .global vmk_host_store_sites
vmk_host_store_sites:
    .quad hm_4_check - vmk_host_code_start, hm_4_call - vmk_host_code_start, {site_check}, hm_4_done - vmk_host_code_start, hm_4_call - vmk_host_code_start
    .quad hm_4_result - vmk_host_code_start, hm_4_done - vmk_host_code_start, {site_result}, hm_4_done - vmk_host_code_start, 0
    .quad hm_6_check - vmk_host_code_start, hm_6_result - vmk_host_code_start, {site_fail}, hm_6_done - vmk_host_code_start, 0
    .quad hm_6_result - vmk_host_code_start, hm_6_result_end - vmk_host_code_start, {site_result}, hm_6_done - vmk_host_code_start, 0
    .quad hm_7_result - vmk_host_code_start, hm_7_done - vmk_host_code_start, {site_result}, hm_7_done - vmk_host_code_start, 0
    .text
"#,
    exit = const nr::EXIT,
    write = const nr::WRITE,
    ticks = const nr::TICKS_NS,
    add_veh = const nr::ADD_VEH,
    remove_veh = const nr::REMOVE_VEH,
    gww = const nr::GET_WRITE_WATCH,
    rww = const nr::RESET_WRITE_WATCH,
    qc = const nr::QUERY_COMMIT,
    exception_handler = const nr::EXCEPTION_HANDLER,
    continue_ = const nr::CONTINUE,
    unhandled = const nr::UNHANDLED,
    callbacks_done = const nr::CALLBACKS_DONE,
    create_thread = const nr::CREATE_THREAD,
    exit_thread = const nr::EXIT_THREAD,
    wait_thread = const nr::WAIT_THREAD,
    close_thread = const nr::CLOSE_THREAD,
    current_thread_id = const nr::CURRENT_THREAD_ID,
    yield_ = const nr::YIELD,
    sleep_ns = const nr::SLEEP_NS,
    wait_on_address = const nr::WAIT_ON_ADDRESS,
    wake_by_address = const nr::WAKE_BY_ADDRESS,
    set_thread_pointer = const nr::SET_THREAD_POINTER,
    get_thread_pointer = const nr::GET_THREAD_POINTER,
    m = const nr::MANAGER,
    manager_object = const MANAGER_OBJECT,
    alloc_stored = const assisted::VIRTUAL_ALLOC,
    query_regs = const assisted::VIRTUAL_QUERY,
    protect_regs = const assisted::VIRTUAL_PROTECT,
    site_check = const SiteKind::Check as u64,
    site_fail = const SiteKind::Fail as u64,
    site_result = const SiteKind::Result as u64,
);

unsafe extern "C" {
    static vmk_host_code_start: [u8; 0];
    static vmk_host_code_end: [u8; 0];
    static vmk_host_offsets: [u64; STUB_COUNT];
    static vmk_host_store_sites: [[u64; 5]; STORE_SITES];
}

/// The system calls of the stubs that store a manager method's results in ring 3 themselves
/// (served only when made from the code page: [`is_stub_return`]).
pub mod assisted {
    /// `VirtualAlloc` whose stub stored `*ppMem = NULL` before the call (so `ppMem` is writable):
    /// the kernel returns rax bit 32 set and the base in `rdx` on success, for the stub to store.
    pub const VIRTUAL_ALLOC: u64 = 48;
    /// `VirtualQuery` answered in registers where it can be (rax bit 32 set, the
    /// `MEMORY_BASIC_INFORMATION` words in `rdi, rsi, rdx, r8, r9, r10`), else as slot 6 is.
    pub const VIRTUAL_QUERY: u64 = 49;
    /// `VirtualProtect` whose old protection comes back in `edx` (rax bit 32 set) when the
    /// kernel checked `lpflOldProtect` and the stub may store it, else as slot 7 is.
    pub const VIRTUAL_PROTECT: u64 = 50;
}

/// Entries of the stubs' store table.
const STORE_SITES: usize = 5;

/// What a fault at one of the stubs' result stores means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SiteKind {
    /// The out-pointer's check before the call (`*ppMem = NULL`): a store the memory manager
    /// refuses is the call's error; whenever the kernel must check the pointer itself (the
    /// manager not served unlocked: poisoned, a callback registered, a test counting calls), the
    /// stub makes the plain call instead, the page untouched.
    Check = 1,
    /// A store the memory manager refuses is the call's error (`*pResult` is 0 already).
    Fail = 2,
    /// The last store, to a page a store of this call reached already or the kernel checked
    /// writable: it fails only if another thread changed that page meanwhile, and the result is
    /// then lost (as the kernel's own write of a result is): the call returns S_OK.
    Result = 3,
}

/// A result store of the stubs: a fault there is never the guest's exception.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreSite {
    /// What the fault means.
    pub kind: SiteKind,
    /// Where the stub returns to its caller with the result in `rax`.
    pub done: u64,
    /// Where it makes the plain call ([`SiteKind::Check`]).
    pub plain: u64,
}

/// The result store at `rip`, if it is one.
pub fn store_site(rip: u64) -> Option<StoreSite> {
    if !is_stub_return(rip) {
        return None;
    }
    let at = rip - HOST_CODE;
    // SAFETY: a static table emitted by the global_asm! above with STORE_SITES entries.
    let sites = unsafe { &vmk_host_store_sites };
    sites.iter().find(|s| (s[0]..s[1]).contains(&at)).map(|s| StoreSite {
        kind: match s[2] {
            1 => SiteKind::Check,
            2 => SiteKind::Fail,
            _ => SiteKind::Result,
        },
        done: HOST_CODE + s[3],
        plain: HOST_CODE + s[4],
    })
}

/// Offsets of the stubs in the code page, in the order of [`Stub`].
#[derive(Debug, Clone, Copy)]
#[repr(usize)]
pub enum Stub {
    Exit = 0,
    Write,
    TicksNs,
    AddVeh,
    RemoveVeh,
    GetWriteWatch,
    ResetWriteWatch,
    QueryCommit,
    /// Where the kernel enters ring 3 to deliver an exception.
    DispatchException,
    /// Where the kernel enters ring 3 to run a host call's callbacks.
    DispatchCallbacks,
    GuestReturn,
    /// Where a new thread starts (version 2): calls its `start(arg)`, then `exit_thread`.
    ThreadStart,
    CreateThread,
    ExitThread,
    WaitThread,
    CloseThread,
    CurrentThreadId,
    Yield,
    SleepNs,
    WaitOnAddress,
    WakeByAddress,
    SetThreadPointer,
    GetThreadPointer,
    /// `IHostMemoryManager` slot 0; slot `i` is `Manager0 as usize + i`.
    Manager0,
}

/// Entries of the stub offset table: every [`Stub`], the 13 manager slots counting as one each.
const STUB_COUNT: usize = Stub::Manager0 as usize + 13;

/// Whether a system call returning to `rip` was made by the host's stubs (from the code page).
pub fn is_stub_return(rip: u64) -> bool {
    (HOST_CODE..HOST_CODE + PAGE_SIZE).contains(&rip)
}

/// Whether a system call returning to `rip` was made from the host library's code (mapped
/// host-owned from [`super::HOST_LIB_BASE`] up to the host pages; the guest cannot map or change
/// anything there).
pub fn is_library_return(rip: u64) -> bool {
    (super::HOST_LIB_BASE..HOST_CODE).contains(&rip)
}

/// The guest address of a stub.
pub fn stub(s: Stub) -> u64 {
    stub_at(s as usize)
}

fn stub_at(index: usize) -> u64 {
    // SAFETY: a static table emitted by the global_asm! above, with STUB_COUNT entries (the
    // asm lists them in the order of `Stub`; the link would not match otherwise).
    HOST_CODE + unsafe { vmk_host_offsets[index] }
}

/// The code page's bytes (the stubs), padded to a page.
pub fn code_page() -> [u8; PAGE_SIZE as usize] {
    // SAFETY: start and end delimit the stub bytes in the kernel's read-only data.
    let code = unsafe {
        let start = vmk_host_code_start.as_ptr();
        let len = vmk_host_code_end.as_ptr() as usize - start as usize;
        core::slice::from_raw_parts(start, len)
    };
    let mut page = [0xCCu8; PAGE_SIZE as usize]; // int3 padding
    page[..code.len()].copy_from_slice(code);
    page
}

/// Slots of the `IHostMemoryManager` vtable.
const VTABLE_SLOTS: usize = size_of::<host_abi::HostMemoryManagerVtbl>() / 8;

/// The data page's bytes: manager object, vtable, HOST_SERVICES version 2 (host-abi §3, §7, §10.2)
/// with `cpu_count`, the CPUs guest threads run on.
/// `create_malloc` is the host library's `CreateMalloc` (vtable slot 3 is ring-3 code, not a
/// system call: the heaps live in guest memory).
pub fn data_page(max_application_address: u64, create_malloc: u64, args: &[u8], cpu_count: u32) -> [u8; PAGE_SIZE as usize] {
    let mut page = [0u8; PAGE_SIZE as usize];
    let mut put = |off: usize, v: u64| page[off..off + 8].copy_from_slice(&v.to_le_bytes());
    put((MANAGER_OBJECT - HOST_DATA) as usize, MANAGER_VTABLE);
    for slot in 0..VTABLE_SLOTS {
        put((MANAGER_VTABLE - HOST_DATA) as usize + slot * 8, if slot == 3 { create_malloc } else { stub_at(Stub::Manager0 as usize + slot) });
    }
    let s = (HOST_SERVICES - HOST_DATA) as usize;
    let mut field = |off: usize, v: u64| put(s + off, v);
    field(offset_of!(HostServices, cb_size), HOST_SERVICES_SIZE as u64 | (2u64 << 32)); // cbSize, version
    field(offset_of!(HostServices, page_size), PAGE_SIZE | (ALLOCATION_GRANULARITY << 32)); // page_size, allocation_granularity
    field(offset_of!(HostServices, min_application_address), ALLOCATION_GRANULARITY); // the lowest 64 KiB are never mapped
    field(offset_of!(HostServices, max_application_address), max_application_address);
    field(offset_of!(HostServices, write), stub(Stub::Write));
    field(offset_of!(HostServices, exit), stub(Stub::Exit));
    field(offset_of!(HostServices, ticks_ns), stub(Stub::TicksNs));
    field(offset_of!(HostServices, add_vectored_exception_handler), stub(Stub::AddVeh));
    field(offset_of!(HostServices, remove_vectored_exception_handler), stub(Stub::RemoveVeh));
    field(offset_of!(HostServices, get_write_watch), stub(Stub::GetWriteWatch));
    field(offset_of!(HostServices, reset_write_watch), stub(Stub::ResetWriteWatch));
    field(offset_of!(HostServices, query_commit), stub(Stub::QueryCommit));
    field(offset_of!(HostServices, cpu_count), cpu_count as u64); // cpu_count, reserved0 = 0
    field(offset_of!(HostServices, create_thread), stub(Stub::CreateThread));
    field(offset_of!(HostServices, exit_thread), stub(Stub::ExitThread));
    field(offset_of!(HostServices, wait_thread), stub(Stub::WaitThread));
    field(offset_of!(HostServices, close_thread), stub(Stub::CloseThread));
    field(offset_of!(HostServices, current_thread_id), stub(Stub::CurrentThreadId));
    field(offset_of!(HostServices, yield_now), stub(Stub::Yield));
    field(offset_of!(HostServices, sleep_ns), stub(Stub::SleepNs));
    field(offset_of!(HostServices, wait_on_address), stub(Stub::WaitOnAddress));
    field(offset_of!(HostServices, wake_by_address), stub(Stub::WakeByAddress));
    field(offset_of!(HostServices, set_thread_pointer), stub(Stub::SetThreadPointer));
    field(offset_of!(HostServices, get_thread_pointer), stub(Stub::GetThreadPointer));
    let args = &args[..args.len().min(ARGS_MAX)];
    let a = (ARGS - HOST_DATA) as usize;
    page[a..a + args.len()].copy_from_slice(args);
    page
}
