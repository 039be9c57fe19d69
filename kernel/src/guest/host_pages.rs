//! The host's pages in every guest (host-abi §2, §3, §7): ring-3 code and read-only data, like a
//! vDSO, through which a guest reaches the kernel without knowing any system-call number.
//!
//! ```text
//!  HOST_BASE          page 0  PAGE_EXECUTE_READ  the stubs below (copied from the kernel image)
//!  HOST_BASE + 0x1000 page 1  PAGE_READONLY      +0x000 IHostMemoryManager object {lpVtbl}
//!                                                +0x040 its vtable (13 entries)
//!                                                +0x100 HOST_SERVICES (version 1)
//! ```
//! Both pages form one host-owned `MEM_IMAGE` allocation: VirtualAlloc/Free/Protect on it fail
//! with ERROR_INVALID_ADDRESS (host-abi §9).
//!
//! Each stub moves the fourth argument from `rcx` (clobbered by `syscall`) to `r10`, loads its
//! call number into `eax` and executes `syscall`; the seven-argument `VirtualAlloc` passes its
//! seventh (`ppMem`, on the stack) in `rbx`, which it saves and restores. The kernel returns the
//! result in `rax` and every other register as it was, except `rcx` and `r11`, which `syscall`
//! itself clobbers (caller-saved in the System V ABI).

use core::arch::global_asm;

/// Where the host's pages live in every guest (64 KiB aligned, just below the top of user space).
pub const HOST_BASE: u64 = 0x7FFF_FFFE_0000;
/// The code page.
pub const HOST_CODE: u64 = HOST_BASE;
/// The data page.
pub const HOST_DATA: u64 = HOST_BASE + 0x1000;
/// The `IHostMemoryManager` object.
pub const MANAGER_OBJECT: u64 = HOST_DATA;
/// Its vtable.
pub const MANAGER_VTABLE: u64 = HOST_DATA + 0x40;
/// `HOST_SERVICES`.
pub const HOST_SERVICES: u64 = HOST_DATA + 0x100;
/// `sizeof(HOST_SERVICES)` (version 1, exactly the contract's layout).
pub const HOST_SERVICES_SIZE: u32 = 96;
/// Where the guest's argument string is kept (in the read-only data page, NUL-terminated). Its
/// address is the entry point's third argument (`rdx`): a guest declared with the contract's two
/// parameters simply ignores it (System V passes it in a register).
pub const ARGS: u64 = HOST_DATA + 0x200;
/// Longest argument string.
pub const ARGS_MAX: usize = 0xE00 - 1;

/// System-call numbers used by the stubs (private to the host; guests call through the stubs).
pub mod nr {
    pub const EXIT: u64 = 0;
    pub const WRITE: u64 = 1;
    pub const TICKS_NS: u64 = 2;
    pub const ADD_VEH: u64 = 3;
    pub const REMOVE_VEH: u64 = 4;
    pub const GET_WRITE_WATCH: u64 = 5;
    pub const RESET_WRITE_WATCH: u64 = 6;
    pub const QUERY_COMMIT: u64 = 7;
    /// `probe(ptr, len, write)`: used by the host library to check guest pointers.
    pub const PROBE: u64 = 9;
    /// `exception_handler(index)`: the `index`-th vectored handler in call order, or 0 (used by
    /// the exception dispatcher).
    pub const EXCEPTION_HANDLER: u64 = 10;
    /// `continue(context, fpu_image)`: resumes with a context and register image from guest
    /// memory, checked (NtContinue).
    pub const CONTINUE: u64 = 11;
    /// `unhandled(record)`: no handler took the exception; the guest ends with its code.
    pub const UNHANDLED: u64 = 12;
    /// `callbacks_done(context, fpu_image, notified)`: the callbacks of a host call ran; resumes
    /// as `continue` does (and delivers a band change that happened meanwhile).
    pub const CALLBACKS_DONE: u64 = 13;
    /// `IHostMemoryManager` method `i` (vtable slot) is `MANAGER + i`.
    pub const MANAGER: u64 = 16;
}

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
# GUEST_EXCEPTION it wrote, r12 = its GUEST_CONTEXT, r13 = the saved register image, r14 = 0 and
# r15 = the first handler (all saved in the context; rsp 16-aligned, so each handler is entered as
# at a call). Handler r14 + 1 is asked for only when handler r14 passes the exception on.
hs_dispatch_exception:
    cld
    mov rax, r15
3:
    mov rdi, rbx
    call rax
    cmp eax, -1
    je 4f
    inc r14
    mov rdi, r14
    mov eax, {exception_handler}
    syscall
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
hm_4: push rbx
    mov rbx, [rsp + 16]
    mov r10, rcx
    mov eax, {m} + 4
    syscall
    pop rbx
    ret
hm_5: mov r10, rcx
    mov eax, {m} + 5
    syscall
    ret
hm_6: mov r10, rcx
    mov eax, {m} + 6
    syscall
    ret
hm_7: mov r10, rcx
    mov eax, {m} + 7
    syscall
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
    m = const nr::MANAGER,
);

unsafe extern "C" {
    static vmk_host_code_start: [u8; 0];
    static vmk_host_code_end: [u8; 0];
    static vmk_host_offsets: [u64; 24];
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
    /// `IHostMemoryManager` slot 0; slot `i` is `Manager0 as usize + i`.
    Manager0,
}

/// The guest address of a stub.
pub fn stub(s: Stub) -> u64 {
    stub_at(s as usize)
}

fn stub_at(index: usize) -> u64 {
    // SAFETY: a static table emitted by the global_asm! above, with 24 entries.
    HOST_CODE + unsafe { vmk_host_offsets[index] }
}

/// The code page's bytes (the stubs), padded to a page.
pub fn code_page() -> [u8; 4096] {
    // SAFETY: start and end delimit the stub bytes in the kernel's read-only data.
    let code = unsafe {
        let start = vmk_host_code_start.as_ptr();
        let len = vmk_host_code_end.as_ptr() as usize - start as usize;
        core::slice::from_raw_parts(start, len)
    };
    let mut page = [0xCCu8; 4096]; // int3 padding
    page[..code.len()].copy_from_slice(code);
    page
}

/// The data page's bytes: manager object, vtable, HOST_SERVICES (host-abi §3, §7).
/// `create_malloc` is the host library's `CreateMalloc` (vtable slot 3 is ring-3 code, not a
/// system call: the heaps live in guest memory).
pub fn data_page(max_application_address: u64, create_malloc: u64, args: &[u8]) -> [u8; 4096] {
    let mut page = [0u8; 4096];
    let mut put = |off: usize, v: u64| page[off..off + 8].copy_from_slice(&v.to_le_bytes());
    put(0, MANAGER_VTABLE);
    for slot in 0..13 {
        put(0x40 + slot * 8, if slot == 3 { create_malloc } else { stub_at(Stub::Manager0 as usize + slot) });
    }
    let s = (HOST_SERVICES - HOST_DATA) as usize;
    put(s, HOST_SERVICES_SIZE as u64 | (1u64 << 32)); // cbSize, version
    put(s + 8, 4096 | (65536u64 << 32)); // page_size, allocation_granularity
    put(s + 16, 0x1_0000);
    put(s + 24, max_application_address);
    put(s + 32, stub(Stub::Write));
    put(s + 40, stub(Stub::Exit));
    put(s + 48, stub(Stub::TicksNs));
    put(s + 56, stub(Stub::AddVeh));
    put(s + 64, stub(Stub::RemoveVeh));
    put(s + 72, stub(Stub::GetWriteWatch));
    put(s + 80, stub(Stub::ResetWriteWatch));
    put(s + 88, stub(Stub::QueryCommit));
    let args = &args[..args.len().min(ARGS_MAX)];
    let a = (ARGS - HOST_DATA) as usize;
    page[a..a + args.len()].copy_from_slice(args);
    page
}
