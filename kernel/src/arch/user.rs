//! Ring 3: entering user mode and coming back, for system calls and exceptions.
//!
//! The model is "user mode as a function call": [`enter_user`] saves the kernel's callee-saved
//! registers and stack pointer in the per-CPU area, loads a [`UserContext`] and drops to ring 3
//! (`sysretq` after a system call, whose ABI lets it clobber `rcx`/`r11`; `iretq` otherwise, which
//! restores every register). When the guest makes a `syscall` or raises an exception, the entry
//! code saves every general register into the same `UserContext`, switches back to the saved
//! kernel stack and *returns from `enter_user`* with the reason. All handling then happens in
//! ordinary kernel code on the kernel stack of the guest's run loop; nothing runs on a stack the
//! guest controls.
//!
//! - `syscall` lands in `syscall_entry`: `swapgs` first (the guest's GS base is not trusted, the
//!   per-CPU area's address comes from `IA32_KERNEL_GS_BASE`), then the stack switch. `FMASK`
//!   clears IF, TF, DF, AC and NT on entry, so the kernel runs with interrupts off, no single-step
//!   trap and SMAP enforced.
//! - An exception from ring 3 arrives on the TSS's `RSP0` stack (a dedicated entry stack with a
//!   guard page); the per-vector stub checks the saved CS: from ring 0 it jumps straight to the
//!   kernel's own handler (`crate::trap`), from ring 3 it records vector and error code and
//!   leaves through `enter_user`'s return path.
//! - `sysretq` is used only when the return address is canonical and below the user limit (never a
//!   non-canonical `rcx`, the classic `sysret` hazard); anything else returns with `iretq`.
//! - The kernel is built without SSE, so the guest's x87/SSE/AVX state stays in the registers
//!   across system calls; [`FpuImage`] saves it at exception and callback delivery (it goes onto the
//!   guest's stack) and loads it, checked, on resume. [`reset_user_state`] gives each guest the clean
//!   state of host-abi §10.1.

use core::arch::{asm, global_asm};
use core::mem::{offset_of, size_of};
use core::sync::atomic::{AtomicUsize, Ordering};

use x86_64::registers::control::{Cr0, Cr0Flags, Cr4, Cr4Flags};
use x86_64::registers::model_specific::{Efer, EferFlags, Msr};

/// User code segment selector (GDT index 4, RPL 3), as `sysretq` derives it from STAR.
pub const USER_CS: u64 = 0x23;
/// User data/stack segment selector (GDT index 3, RPL 3).
pub const USER_SS: u64 = 0x1b;
/// The highest address a guest's `rip` may hold on return to ring 3 through `sysretq`.
pub const SYSRET_LIMIT: u64 = 0x0000_7fff_ffff_f000;

/// Saved user registers: the contract's `GUEST_CONTEXT` (host-abi §8), defined once in
/// `host-abi`. The entry code below addresses its fields through `offset_of!`.
pub type UserContext = host_abi::GuestContext;

/// Bytes of a [`UserContext`] as it is written to guest memory.
pub const USER_CONTEXT_SIZE: usize = size_of::<UserContext>();

/// Every register of a [`UserContext`] with its offset in the `GUEST_CONTEXT` layout.
macro_rules! context_fields {
    ($m:ident) => {
        $m!(rax, rbx, rcx, rdx, rsi, rdi, rbp, rsp, r8, r9, r10, r11, r12, r13, r14, r15, rip, rflags)
    };
}

/// The registers as little-endian bytes, in the `GUEST_CONTEXT` layout.
pub fn context_to_bytes(context: &UserContext) -> [u8; USER_CONTEXT_SIZE] {
    let mut out = [0u8; USER_CONTEXT_SIZE];
    macro_rules! put {
        ($($field:ident),*) => {
            $(out[offset_of!(UserContext, $field)..][..8].copy_from_slice(&context.$field.to_le_bytes());)*
        };
    }
    context_fields!(put);
    out
}

/// The inverse of [`context_to_bytes`].
pub fn context_from_bytes(bytes: &[u8; USER_CONTEXT_SIZE]) -> UserContext {
    let read = |offset: usize| u64::from_le_bytes(bytes[offset..][..8].try_into().expect("8 bytes"));
    macro_rules! get {
        ($($field:ident),*) => {
            UserContext { $($field: read(offset_of!(UserContext, $field))),* }
        };
    }
    context_fields!(get)
}

/// Per-CPU data the entry code reaches through GS: the boot CPU's is the static [`PER_CPU`], each
/// application processor's is allocated at its start (`init_ap`); everything here reads it
/// through GS, so any CPU can enter ring 3.
#[repr(C)]
struct PerCpu {
    /// Kernel rsp saved by `enter_user`.
    kernel_rsp: u64,
    /// The user rsp at `syscall`.
    user_rsp: u64,
    /// `*mut UserContext` of the running guest.
    context: u64,
    /// Scratch.
    scratch: u64,
    /// Vector of the last user exception.
    vector: u64,
    /// Its error code.
    error_code: u64,
    /// This CPU's index in `super::percpu` (0 for the boot CPU).
    cpu_index: u64,
}

/// Offset of [`PerCpu::cpu_index`] from the GS base (read by `super::percpu`).
pub(crate) const PER_CPU_INDEX_OFFSET: usize = offset_of!(PerCpu, cpu_index);

static mut PER_CPU: PerCpu =
    PerCpu { kernel_rsp: 0, user_rsp: 0, context: 0, scratch: 0, vector: 0, error_code: 0, cpu_index: 0 };

/// Why [`enter_user`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserExit {
    /// The guest executed `syscall`: number in `rax`, arguments in `rdi, rsi, rdx, r10, r8, r9`
    /// (and `rbx` for a seventh); `rcx`/`r11` hold the return `rip`/`rflags`.
    Syscall,
    /// The guest raised CPU exception `vector` with `error_code` (`cr2` for page faults).
    Exception {
        /// The vector.
        vector: u8,
        /// The error code (0 for exceptions without one).
        error_code: u64,
        /// CR2 (page faults only).
        cr2: u64,
    },
    /// A device interrupt (the local APIC timer, an IPI) arrived while the guest ran; nothing of
    /// the guest's state changed. The caller serves it (`super::apic::on_interrupt`).
    Interrupt {
        /// The vector.
        vector: u8,
    },
}

const EXIT_SYSCALL: u64 = 1;
const EXIT_EXCEPTION: u64 = 2;

global_asm!(
    r#"
    .text
    # Stores every general register but rax and rsp into the UserContext at rax (c_*: the
    # GUEST_CONTEXT field offsets; pc_*: the PerCpu field offsets from the GS base).
    .macro vmk_save_gprs
    mov [rax + {c_rbx}], rbx
    mov [rax + {c_rcx}], rcx
    mov [rax + {c_rdx}], rdx
    mov [rax + {c_rsi}], rsi
    mov [rax + {c_rdi}], rdi
    mov [rax + {c_rbp}], rbp
    mov [rax + {c_r8}], r8
    mov [rax + {c_r9}], r9
    mov [rax + {c_r10}], r10
    mov [rax + {c_r11}], r11
    mov [rax + {c_r12}], r12
    mov [rax + {c_r13}], r13
    mov [rax + {c_r14}], r14
    mov [rax + {c_r15}], r15
    .endm

    # Loads every general register but rcx, r11 (whose values differ between the iretq and the
    # sysretq return), rsp and rdi (the context pointer, loaded last) from the UserContext at rdi.
    .macro vmk_load_gprs
    mov rax, [rdi + {c_rax}]
    mov rbx, [rdi + {c_rbx}]
    mov rdx, [rdi + {c_rdx}]
    mov rsi, [rdi + {c_rsi}]
    mov rbp, [rdi + {c_rbp}]
    mov r8, [rdi + {c_r8}]
    mov r9, [rdi + {c_r9}]
    mov r10, [rdi + {c_r10}]
    mov r12, [rdi + {c_r12}]
    mov r13, [rdi + {c_r13}]
    mov r14, [rdi + {c_r14}]
    mov r15, [rdi + {c_r15}]
    .endm

    .global vmk_enter_user
vmk_enter_user:
    push rbx
    push rbp
    push r12
    push r13
    push r14
    push r15
    mov gs:[{pc_kernel_rsp}], rsp
    mov gs:[{pc_context}], rdi
    test rsi, rsi
    jnz 2f
    push {user_ss}
    push qword ptr [rdi + {c_rsp}]
    push qword ptr [rdi + {c_rflags}]
    push {user_cs}
    push qword ptr [rdi + {c_rip}]
    vmk_load_gprs
    mov rcx, [rdi + {c_rcx}]
    mov r11, [rdi + {c_r11}]
    mov rdi, [rdi + {c_rdi}]
    swapgs
    iretq
2:
    vmk_load_gprs
    mov rcx, [rdi + {c_rip}]
    mov r11, [rdi + {c_rflags}]
    mov rsp, [rdi + {c_rsp}]
    mov rdi, [rdi + {c_rdi}]
    swapgs
    sysretq

vmk_enter_user_exit:
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbp
    pop rbx
    ret

    .global vmk_syscall_entry
vmk_syscall_entry:
    swapgs
    mov gs:[{pc_user_rsp}], rsp
    mov rsp, gs:[{pc_kernel_rsp}]
    mov gs:[{pc_scratch}], rax
    mov rax, gs:[{pc_context}]
    vmk_save_gprs
    mov [rax + {c_rip}], rcx
    mov [rax + {c_rflags}], r11
    mov rbx, gs:[{pc_user_rsp}]
    mov [rax + {c_rsp}], rbx
    mov rbx, gs:[{pc_scratch}]
    mov [rax + {c_rax}], rbx
    mov eax, {exit_syscall}
    jmp vmk_enter_user_exit

    .global vmk_user_exception
vmk_user_exception:
    # The CPU clears IF and TF on the way in, not DF and AC: the kernel must not run with the
    # guest's DF (string instructions would go backwards) or AC (SMAP would be open).
    cld
    cmp byte ptr [rip + KPROBE_SMAP], 0
    je 1f
    clac
1:
    swapgs
    mov gs:[{pc_scratch}], rax
    mov rax, gs:[{pc_context}]
    vmk_save_gprs
    mov rbx, gs:[{pc_scratch}]
    mov [rax + {c_rax}], rbx
    mov rbx, [rsp]
    mov gs:[{pc_vector}], rbx
    mov rbx, [rsp + 8]
    mov gs:[{pc_error_code}], rbx
    mov rbx, [rsp + 16]
    mov [rax + {c_rip}], rbx
    mov rbx, [rsp + 32]
    mov [rax + {c_rflags}], rbx
    mov rbx, [rsp + 40]
    mov [rax + {c_rsp}], rbx
    mov rsp, gs:[{pc_kernel_rsp}]
    mov eax, {exit_exception}
    jmp vmk_enter_user_exit
"#,
    user_ss = const USER_SS,
    user_cs = const USER_CS,
    exit_syscall = const EXIT_SYSCALL,
    exit_exception = const EXIT_EXCEPTION,
    c_rax = const offset_of!(UserContext, rax),
    c_rbx = const offset_of!(UserContext, rbx),
    c_rcx = const offset_of!(UserContext, rcx),
    c_rdx = const offset_of!(UserContext, rdx),
    c_rsi = const offset_of!(UserContext, rsi),
    c_rdi = const offset_of!(UserContext, rdi),
    c_rbp = const offset_of!(UserContext, rbp),
    c_rsp = const offset_of!(UserContext, rsp),
    c_r8 = const offset_of!(UserContext, r8),
    c_r9 = const offset_of!(UserContext, r9),
    c_r10 = const offset_of!(UserContext, r10),
    c_r11 = const offset_of!(UserContext, r11),
    c_r12 = const offset_of!(UserContext, r12),
    c_r13 = const offset_of!(UserContext, r13),
    c_r14 = const offset_of!(UserContext, r14),
    c_r15 = const offset_of!(UserContext, r15),
    c_rip = const offset_of!(UserContext, rip),
    c_rflags = const offset_of!(UserContext, rflags),
    pc_kernel_rsp = const offset_of!(PerCpu, kernel_rsp),
    pc_user_rsp = const offset_of!(PerCpu, user_rsp),
    pc_context = const offset_of!(PerCpu, context),
    pc_scratch = const offset_of!(PerCpu, scratch),
    pc_vector = const offset_of!(PerCpu, vector),
    pc_error_code = const offset_of!(PerCpu, error_code),
);

/// Declares the ring-3-capable entry stubs of the exception vectors: from ring 0 a stub jumps to
/// the kernel's handler `kexc_<name>` (defined in `crate::trap`), from ring 3 it goes to
/// `vmk_user_exception` with the vector and error code on the stack. Also declares
/// [`vector_stubs`], the stub address of each vector, for the IDT.
macro_rules! user_vector_stubs {
    ($(($vector:literal, $stub:ident, $name:literal, $err:ident)),* $(,)?) => {
        global_asm!($(user_vector_stubs!(@stub $vector, $stub, $name, $err)),*);

        unsafe extern "C" {
            $(fn $stub();)*
        }

        /// The entry-stub address of each vector that ring 3 can raise (for the IDT).
        pub(crate) fn vector_stubs() -> impl Iterator<Item = (u8, u64)> {
            [$(($vector, $stub as *const () as u64)),*].into_iter()
        }
    };
    (@stub $vector:literal, $stub:ident, $name:literal, noerr) => {
        concat!(
            ".text\n.global ", stringify!($stub), "\n", stringify!($stub), ":\n",
            "    test byte ptr [rsp + 8], 3\n",
            "    jz kexc_", $name, "\n",
            "    push 0\n",
            "    push ", $vector, "\n",
            "    jmp vmk_user_exception\n"
        )
    };
    (@stub $vector:literal, $stub:ident, $name:literal, err) => {
        concat!(
            ".text\n.global ", stringify!($stub), "\n", stringify!($stub), ":\n",
            "    test byte ptr [rsp + 16], 3\n",
            "    jz kexc_", $name, "\n",
            "    push ", $vector, "\n",
            "    jmp vmk_user_exception\n"
        )
    };
}

user_vector_stubs!(
    (0, vmk_vec_0, "divide_error", noerr),
    (1, vmk_vec_1, "debug", noerr),
    (3, vmk_vec_3, "breakpoint", noerr),
    (4, vmk_vec_4, "overflow", noerr),
    (5, vmk_vec_5, "bound_range_exceeded", noerr),
    (6, vmk_vec_6, "invalid_opcode", noerr),
    (7, vmk_vec_7, "device_not_available", noerr),
    (10, vmk_vec_10, "invalid_tss", err),
    (11, vmk_vec_11, "segment_not_present", err),
    (12, vmk_vec_12, "stack_segment_fault", err),
    (13, vmk_vec_13, "general_protection_fault", err),
    (14, vmk_vec_14, "page_fault", err),
    (16, vmk_vec_16, "x87_floating_point", noerr),
    (17, vmk_vec_17, "alignment_check", err),
    (19, vmk_vec_19, "simd_floating_point", noerr),
    (20, vmk_vec_20, "virtualization", noerr),
    (21, vmk_vec_21, "cp_protection", err),
    (48, vmk_vec_48, "apic_timer", noerr),
    (240, vmk_vec_240, "apic_wake", noerr),
);

unsafe extern "C" {
    fn vmk_enter_user(context: *mut UserContext, sysret: u64) -> u64;
    fn vmk_syscall_entry();
}

const IA32_STAR: u32 = 0xC000_0081;
const IA32_LSTAR: u32 = 0xC000_0082;
const IA32_FMASK: u32 = 0xC000_0084;
const IA32_FS_BASE: u32 = 0xC000_0100;
const IA32_GS_BASE: u32 = 0xC000_0101;
const IA32_KERNEL_GS_BASE: u32 = 0xC000_0102;
/// RFLAGS bits cleared on `syscall`: TF, IF, DF, NT, AC.
const FMASK: u64 = (1 << 8) | (1 << 9) | (1 << 10) | (1 << 14) | (1 << 18);

static XSAVE_SIZE: AtomicUsize = AtomicUsize::new(0);

/// Sets up everything ring 3 needs: `syscall` MSRs, the per-CPU area in GS, the FPU/SSE/AVX state
/// (so guests may use vector registers), alignment checking for ring 3 (`CR0.AM`), and remaps and
/// masks the legacy PIC (its power-on vectors would collide with CPU exceptions; a guest runs with
/// IF = 1). The local APIC stays enabled: its timer is the only device interrupt (`super::apic`).
pub fn init() {
    let sel = super::gdt::selectors();
    assert_eq!(
        (sel.kernel_code.0, sel.kernel_data.0, sel.user_data.0 as u64, sel.user_code.0 as u64),
        (0x08, 0x10, USER_SS, USER_CS),
        "the GDT layout must match STAR"
    );
    // SAFETY: programming the legacy PIC's mask registers (ports 0x21/0xa1) and
    // remapping it away from the exception vectors, then masking every line, only stops device
    // interrupts, which the kernel does not use.
    unsafe {
        use x86_64::instructions::port::Port;
        let mut cmd1 = Port::<u8>::new(0x20);
        let mut data1 = Port::<u8>::new(0x21);
        let mut cmd2 = Port::<u8>::new(0xa0);
        let mut data2 = Port::<u8>::new(0xa1);
        cmd1.write(0x11);
        cmd2.write(0x11);
        data1.write(0x20);
        data2.write(0x28);
        data1.write(4);
        data2.write(2);
        data1.write(1);
        data2.write(1);
        data1.write(0xff);
        data2.write(0xff);
    }
    init_cpu(core::ptr::addr_of!(PER_CPU) as u64);
}

/// Sets up ring 3 on an application processor (whose GDT has the boot CPU's layout): its own
/// per-CPU entry area (leaked: CPUs live forever) with index `cpu_index`, the `syscall` MSRs and
/// the FPU state, as [`init`] does for the boot CPU.
pub fn init_ap(cpu_index: usize) {
    let area = alloc::boxed::Box::leak(alloc::boxed::Box::new(PerCpu {
        kernel_rsp: 0,
        user_rsp: 0,
        context: 0,
        scratch: 0,
        vector: 0,
        error_code: 0,
        cpu_index: cpu_index as u64,
    }));
    init_cpu(area as *mut PerCpu as u64);
}

/// The per-CPU part of [`init`]: MSRs (with GS at `per_cpu`) and the FPU.
fn init_cpu(per_cpu: u64) {
    // SAFETY: STAR/LSTAR/FMASK define where `syscall` enters (vmk_syscall_entry, written for
    // exactly this) and the selectors it loads (checked against the GDT above); SCE enables it.
    unsafe {
        Msr::new(IA32_STAR).write((0x10u64 << 48) | (0x08u64 << 32));
        Msr::new(IA32_LSTAR).write(vmk_syscall_entry as *const () as u64);
        Msr::new(IA32_FMASK).write(FMASK);
        Efer::update(|e| e.insert(EferFlags::SYSTEM_CALL_EXTENSIONS));
    }
    // SAFETY: GS_BASE points at this CPU's per-CPU area (static or leaked, so it lives forever)
    // while in ring 0; KERNEL_GS_BASE holds the guest's GS base (0) and is swapped in by `swapgs`
    // on the way out.
    unsafe {
        Msr::new(IA32_GS_BASE).write(per_cpu);
        Msr::new(IA32_KERNEL_GS_BASE).write(0);
    }
    // SAFETY: a null LDT selector: ring 3 gets no LDT, so `lar`/`lsl`/`verr` with an LDT selector
    // fail (ZF = 0) instead of reading a descriptor wherever the firmware left LDTR.
    unsafe { asm!("lldt {0:x}", in(reg) 0u16, options(nostack, preserves_flags)) };
    enable_fpu();
}

fn enable_fpu() {
    let leaf1 = core::arch::x86_64::__cpuid_count(1, 0);
    let has_xsave = leaf1.ecx & (1 << 26) != 0;
    // SAFETY: CR0.MP/!EM/!TS and CR4.OSFXSR/OSXMMEXCPT make x87/SSE instructions usable; the
    // kernel itself is compiled without them, so only guests are affected. AM makes ring 3 honour
    // RFLAGS.AC (alignment checks), as the contract lets guests set it. NE reports x87 errors as
    // #MF (without it they go to FERR/IRQ 13, a masked PIC line) and OSXMMEXCPT SIMD ones as #XM
    // rather than #UD (host-abi §10.1; smp-and-dispatch §5).
    unsafe {
        Cr0::update(|c| {
            c.remove(Cr0Flags::EMULATE_COPROCESSOR | Cr0Flags::TASK_SWITCHED);
            c.insert(Cr0Flags::MONITOR_COPROCESSOR | Cr0Flags::ALIGNMENT_MASK | Cr0Flags::NUMERIC_ERROR);
        });
        Cr4::update(|c| c.insert(Cr4Flags::OSFXSR | Cr4Flags::OSXMMEXCPT_ENABLE));
    }
    if has_xsave {
        // SAFETY: OSXSAVE enables XGETBV/XSETBV/XSAVE; XCR0 gets only components CPUID reports
        // (x87 and SSE always, AVX if present).
        unsafe { Cr4::update(|c| c.insert(Cr4Flags::OSXSAVE)) };
        let d = core::arch::x86_64::__cpuid_count(0xd, 0);
        let supported = (d.edx as u64) << 32 | d.eax as u64;
        let xcr0 = supported & 0b111;
        // SAFETY: xsetbv with a value CPUID allows, in ring 0, with OSXSAVE set.
        unsafe { asm!("xsetbv", in("ecx") 0, in("eax") xcr0 as u32, in("edx") (xcr0 >> 32) as u32, options(nostack)) };
        let size = core::arch::x86_64::__cpuid_count(0xd, 0).ebx as usize;
        assert!(size <= FPU_IMAGE_MAX, "XSAVE area of {size} bytes for XCR0 {xcr0:#x}");
        XSAVE_SIZE.store(size.max(576), Ordering::SeqCst);
        XCR0.store(xcr0 as usize, Ordering::SeqCst);
    } else {
        XSAVE_SIZE.store(0, Ordering::SeqCst);
        XCR0.store(0, Ordering::SeqCst);
    }
    let mask = u32::from_le_bytes(FpuImage::save().bytes[28..32].try_into().expect("4 bytes"));
    MXCSR_MASK.store(if mask == 0 { 0xFFBF } else { mask as usize }, Ordering::SeqCst);
    reset_user_state();
}

/// Runs the guest context `context` in ring 3 until it makes a system call or raises an exception.
///
/// `after_syscall` selects the `sysretq` return (only legal when the previous exit was a system
/// call and the context's `rip`/`rflags` are the ones it saved; it is ignored for a return address
/// `sysretq` could not take). A context whose `rcx` and `r11` hold its `rip` and `rflags` (as the
/// kernel makes its entries to the host's dispatchers) returns with `sysretq` too: it then loads
/// exactly the registers `iretq` would (the flags are sanitised, so its mask of RFLAGS changes
/// nothing), for less than half the cost under TCG; but not with TF set. A `sysretq` that sets
/// TF raises the single-step trap at once, before the instruction at `rip`, "as if the
/// `syscall` had just completed" (right after a system call: the step over it), where `iretq`
/// runs that instruction first. A context resumed with TF (a debugger's handler stepping on, and
/// a context captured right after a stepped `syscall` has `rcx` = `rip` and `r11` = `rflags`)
/// must take `iretq`, or it would trap at the same `rip` forever.
///
/// # Safety
/// The context must be a guest's, whose `rip` and `rsp` lie in the loaded address space's user
/// half (CR3 = the guest's space), and `rflags` must be sanitised (IF set, IOPL 0, VM/NT clear).
pub unsafe fn enter_user(context: &mut UserContext, after_syscall: bool) -> UserExit {
    const TF: u64 = 1 << 8;
    let plain_return = context.rcx == context.rip && context.r11 == context.rflags && context.rflags & TF == 0;
    let sysret = (after_syscall || plain_return) && context.rip < SYSRET_LIMIT;
    // SAFETY: per the contract; the entry code saves/restores the kernel's callee-saved registers
    // and stack and writes only `*context` and the per-CPU area.
    let reason = unsafe { vmk_enter_user(context, sysret as u64) };
    if reason == EXIT_SYSCALL {
        UserExit::Syscall
    } else {
        let (vector, error_code): (u64, u64);
        // SAFETY: in ring 0 GS holds this CPU's entry area (`init_cpu`), whose vector and error
        // code fields the entry code of this CPU wrote just now; reads only.
        unsafe {
            asm!(
                "mov {v}, gs:[{vo}]",
                "mov {e}, gs:[{eo}]",
                v = out(reg) vector,
                e = out(reg) error_code,
                vo = const offset_of!(PerCpu, vector),
                eo = const offset_of!(PerCpu, error_code),
                options(nostack, readonly, preserves_flags)
            )
        };
        if vector >= 32 {
            return UserExit::Interrupt { vector: vector as u8 };
        }
        let cr2 = if vector == 14 { x86_64::registers::control::Cr2::read_raw() } else { 0 };
        UserExit::Exception { vector: vector as u8, error_code, cr2 }
    }
}

global_asm!(
    r#"
    .text
    .global vmk_call_on_stack
vmk_call_on_stack:
    push rbp
    mov rbp, rsp
    mov rsp, rdi
    mov rdi, rdx
    call rsi
    mov rsp, rbp
    pop rbp
    ret
"#
);

unsafe extern "C" {
    fn vmk_call_on_stack(top: u64, function: extern "C" fn(*mut u8), data: *mut u8);
}

extern "C" fn call_closure(data: *mut u8) {
    // SAFETY: `data` is the `&mut &mut dyn FnMut()` that `run_on_stack` passed, alive for the call.
    let f = unsafe { &mut *(data as *mut &mut dyn FnMut()) };
    f()
}

/// Runs `f` on the stack whose top is `top`, then returns to the current stack.
///
/// # Safety
/// `top` must be the 16-byte aligned top of a mapped, writable kernel stack that nothing else uses
/// while `f` runs and that is large enough for `f`.
pub unsafe fn run_on_stack(top: u64, f: &mut dyn FnMut()) {
    let mut f = f;
    // SAFETY: per the contract; vmk_call_on_stack restores rsp from rbp after the call, and the
    // trampoline only calls the closure.
    unsafe { vmk_call_on_stack(top, call_closure, (&mut f) as *mut &mut dyn FnMut() as *mut u8) };
}

/// Forces the RFLAGS bits a guest may not choose: IF = 1, IOPL = 0, NT = 0, RF = 0, VM = 0 (and the
/// reserved bit 1 set); keeps the arithmetic flags, TF, DF and AC (host-abi §9).
pub fn sanitize_rflags(rflags: u64) -> u64 {
    const KEEP: u64 = 0x1 | 0x4 | 0x10 | 0x40 | 0x80 | 0x100 | 0x400 | 0x800 | (1 << 18) | (1 << 21);
    (rflags & KEEP) | 0x2 | (1 << 9)
}

/// The largest register image [`FpuImage`] holds: XCR0 is limited to x87 | SSE | AVX (832 bytes).
pub const FPU_IMAGE_MAX: usize = 1024;
/// MXCSR bits the CPU accepts (MXCSR_MASK of the FXSAVE image; 0xFFBF where it reports 0).
static MXCSR_MASK: AtomicUsize = AtomicUsize::new(0xFFBF);
/// The XSAVE components enabled in XCR0 (0 without XSAVE).
static XCR0: AtomicUsize = AtomicUsize::new(0);

/// Bytes of a guest's x87/SSE/AVX image: what XSAVE writes for XCR0, or the 512-byte FXSAVE
/// image on a CPU without XSAVE. The image is 64-byte aligned wherever it is stored.
pub fn fpu_image_size() -> usize {
    XSAVE_SIZE.load(Ordering::Relaxed).max(512)
}

/// A guest's x87/SSE/AVX registers in the XSAVE standard layout (FXSAVE layout without XSAVE):
/// saved at exception and callback delivery, written to the guest's stack, checked and loaded
/// again on resume. The kernel is built without SSE, so the registers hold the running guest's
/// state whenever the kernel runs; nothing else ever touches them.
#[repr(C, align(64))]
pub struct FpuImage {
    /// The image; the first [`fpu_image_size`] bytes are meaningful.
    pub bytes: [u8; FPU_IMAGE_MAX],
}

impl FpuImage {
    /// The clean state of host-abi §10.1: FCW 0x037F, an empty x87 stack, MXCSR 0x1F80, every
    /// register zero (an XSAVE header with XSTATE_BV = 0 makes XRSTOR load every component's
    /// initial state; MXCSR comes from the legacy area either way).
    pub const fn initial() -> FpuImage {
        let mut bytes = [0; FPU_IMAGE_MAX];
        let [fcw0, fcw1] = 0x037Fu16.to_le_bytes();
        let [m0, m1, m2, m3] = 0x1F80u32.to_le_bytes();
        (bytes[0], bytes[1]) = (fcw0, fcw1);
        (bytes[24], bytes[25], bytes[26], bytes[27]) = (m0, m1, m2, m3);
        FpuImage { bytes }
    }

    /// Loads the [initial](Self::initial) state: one `xrstor` from a constant image (no image
    /// built, nothing checked: the constant is loadable), as exception delivery needs it each
    /// time.
    pub fn load_initial() {
        static INITIAL: FpuImage = FpuImage::initial();
        debug_assert!(INITIAL.is_loadable(), "the initial FPU image is loadable");
        INITIAL.load_unchecked();
    }

    /// An image of zeros.
    const ZERO: FpuImage = FpuImage { bytes: [0; FPU_IMAGE_MAX] };

    /// Saves the current registers.
    pub fn save() -> FpuImage {
        let mut image = FpuImage::ZERO;
        image.save_here();
        image
    }

    /// Saves the current registers into this image (XSAVE or FXSAVE: the bytes they do not
    /// write, reserved fields and the XSAVE header past XSTATE_BV, keep their values).
    fn save_here(&mut self) {
        let buf = self.bytes.as_mut_ptr();
        if XCR0.load(Ordering::Relaxed) != 0 {
            // SAFETY: buf is 64-aligned and FPU_IMAGE_MAX ≥ the XSAVE size for XCR0 (checked at
            // init); XSAVE does not raise pending x87 exceptions.
            unsafe { asm!("xsave64 [{}]", in(reg) buf, in("eax") u32::MAX, in("edx") u32::MAX, options(nostack)) };
        } else {
            // SAFETY: buf is 16-aligned and at least 512 bytes.
            unsafe { asm!("fxsave64 [{}]", in(reg) buf, options(nostack)) };
        }
    }

    /// The x87 control word.
    pub fn fcw(&self) -> u16 {
        u16::from_le_bytes([self.bytes[0], self.bytes[1]])
    }

    /// The x87 status word.
    pub fn fsw(&self) -> u16 {
        u16::from_le_bytes([self.bytes[2], self.bytes[3]])
    }

    /// MXCSR.
    pub fn mxcsr(&self) -> u32 {
        u32::from_le_bytes(self.bytes[24..28].try_into().expect("4 bytes"))
    }

    /// Whether loading the image cannot fault (as Linux and NtContinue check an image from user
    /// memory): MXCSR has no bit outside MXCSR_MASK; with XSAVE, the header's XSTATE_BV names
    /// only components of XCR0, XCOMP_BV is 0 (standard form) and the reserved header bytes are 0.
    pub fn is_loadable(&self) -> bool {
        if self.mxcsr() as usize & !MXCSR_MASK.load(Ordering::Relaxed) != 0 {
            return false;
        }
        let xcr0 = XCR0.load(Ordering::Relaxed) as u64;
        if xcr0 == 0 {
            return true;
        }
        let xstate_bv = u64::from_le_bytes(self.bytes[512..520].try_into().expect("8 bytes"));
        xstate_bv & !xcr0 == 0 && self.bytes[520..576].iter().all(|&b| b == 0)
    }

    /// Makes an image from guest memory loadable as NtContinue and Linux' sigreturn do: MXCSR
    /// masked with MXCSR_MASK; XSTATE_BV limited to XCR0, XCOMP_BV and the reserved header bytes
    /// zeroed (every register value itself is acceptable to XRSTOR/FXRSTOR).
    pub fn make_loadable(&mut self) {
        let mxcsr = self.mxcsr() & MXCSR_MASK.load(Ordering::Relaxed) as u32;
        self.bytes[24..28].copy_from_slice(&mxcsr.to_le_bytes());
        let xcr0 = XCR0.load(Ordering::Relaxed) as u64;
        if xcr0 != 0 {
            let xstate_bv = u64::from_le_bytes(self.bytes[512..520].try_into().expect("8 bytes")) & xcr0;
            self.bytes[512..520].copy_from_slice(&xstate_bv.to_le_bytes());
            self.bytes[520..576].fill(0);
        }
    }

    /// Makes the image [loadable](Self::make_loadable) and loads it (nothing left to check).
    pub fn load_sanitised(&mut self) {
        self.make_loadable();
        debug_assert!(self.is_loadable(), "a sanitised image loads");
        self.load_unchecked();
    }

    /// Loads the image into the registers; false (nothing loaded) if it is not
    /// [loadable](Self::is_loadable).
    pub fn load(&self) -> bool {
        if !self.is_loadable() {
            return false;
        }
        self.load_unchecked();
        true
    }

    /// Loads an image [`is_loadable`](Self::is_loadable) says is loadable (XRSTOR/FXRSTOR
    /// would fault on any other; both callers know).
    fn load_unchecked(&self) {
        let buf = self.bytes.as_ptr();
        if XCR0.load(Ordering::Relaxed) != 0 {
            // SAFETY: a 64-aligned standard-form image whose header and MXCSR are loadable (the
            // callers: `load` checked it, `load_sanitised` made it so, `load_initial`'s constant
            // is), so XRSTOR cannot fault;
            // it changes only the guest's FPU registers.
            unsafe { asm!("xrstor64 [{}]", in(reg) buf, in("eax") u32::MAX, in("edx") u32::MAX, options(nostack)) };
        } else {
            // SAFETY: a 16-aligned 512-byte image whose MXCSR is loadable (as above), so FXRSTOR
            // cannot fault.
            unsafe { asm!("fxrstor64 [{}]", in(reg) buf, options(nostack)) };
        }
    }
}

/// Per CPU: the image exception and callback delivery save the registers into
/// ([`with_saved_fpu`]) when they cannot save them straight into the frame
/// ([`save_fpu_to_user`]: an image across two pages, or the space not in CR3). Nothing but
/// XSAVE/FXSAVE ever writes it, so the bytes they leave alone stay zero, as in a fresh image,
/// without zeroing a kilobyte per exception; nothing of another thread's state can remain in it.
static SAVE_AREA: [spin::Mutex<FpuImage>; super::percpu::MAX_CPUS] = [const { spin::Mutex::new(FpuImage::ZERO) }; super::percpu::MAX_CPUS];
/// Per CPU: the image a resumed register state is read into, checked and loaded from
/// ([`with_fpu_scratch`]) when it is not loaded straight from guest memory
/// ([`load_fpu_from_user`]); its bytes are whatever its last use left.
static LOAD_AREA: [spin::Mutex<FpuImage>; super::percpu::MAX_CPUS] = [const { spin::Mutex::new(FpuImage::ZERO) }; super::percpu::MAX_CPUS];

/// Saves this CPU's x87/SSE/AVX registers into its save area and runs `f` on the image (which
/// `f` writes to the guest's stack); the image is as [`FpuImage::save`] makes it. `f` must not
/// call this again.
pub fn with_saved_fpu<R>(f: impl FnOnce(&FpuImage) -> R) -> R {
    let mut image = SAVE_AREA[super::percpu::this_cpu()].lock();
    image.save_here();
    f(&image)
}

/// Where a guest's register image at guest address `at` lies, as the probes need it.
fn user_image(at: u64) -> super::probe::UserFpuImage {
    super::probe::UserFpuImage { at, size: fpu_image_size(), xsave: XCR0.load(Ordering::Relaxed) != 0 }
}

/// Saves this CPU's x87/SSE/AVX registers straight into guest memory at `at` (64-byte aligned),
/// in the space in CR3: the image [`with_saved_fpu`] and a copy would write there
/// ([`probe::save_fpu_to_user`](super::probe::save_fpu_to_user)).
pub fn save_fpu_to_user(at: u64) -> Result<(), super::probe::FaultRecord> {
    super::probe::save_fpu_to_user(user_image(at))
}

/// Loads this CPU's x87/SSE/AVX registers straight from the image at guest address `at`, in the
/// space in CR3, if it is loadable as it stands (`Ok(false)` or a #GP fault otherwise, which a
/// copy made [loadable](FpuImage::load_sanitised) then settles;
/// [`probe::load_fpu_from_user`](super::probe::load_fpu_from_user)).
pub fn load_fpu_from_user(at: u64) -> Result<bool, super::probe::FaultRecord> {
    super::probe::load_fpu_from_user(user_image(at))
}

/// Runs `f` on this CPU's scratch image, whose bytes are stale (another thread's or guest's
/// image read before): `f` fills the part it loads. `f` must not call this again.
pub fn with_fpu_scratch<R>(f: impl FnOnce(&mut FpuImage) -> R) -> R {
    f(&mut LOAD_AREA[super::percpu::this_cpu()].lock())
}

/// Gives the CPU the clean user state every guest starts with (host-abi §10.1): the initial
/// x87/SSE/AVX state, null DS/ES/FS/GS selectors with FS and user GS bases 0 (`sysretq` keeps the
/// data selectors a previous guest loaded, and `iretq` nulls only those it may not use).
pub fn reset_user_state() {
    FpuImage::load_initial();
    x86_64::instructions::interrupts::without_interrupts(|| {
        // SAFETY: null selectors are valid in DS/ES/FS/GS in 64-bit mode and the kernel addresses
        // nothing through DS/ES/FS. Loading GS may clear GS_BASE, which holds this CPU's per-CPU
        // area: it is read first and written back, with interrupts off so no handler runs between.
        // KERNEL_GS_BASE holds the user GS base while the kernel runs (swapped in by `swapgs` on
        // the way out) and FS_BASE the user FS base: 0 is what a fresh guest has.
        unsafe {
            let per_cpu = Msr::new(IA32_GS_BASE).read();
            asm!("mov ds, {0:x}", "mov es, {0:x}", "mov fs, {0:x}", "mov gs, {0:x}", in(reg) 0u32, options(nostack, preserves_flags));
            Msr::new(IA32_GS_BASE).write(per_cpu);
            Msr::new(IA32_FS_BASE).write(0);
            Msr::new(IA32_KERNEL_GS_BASE).write(0);
        }
    });
}

/// The data selectors DS, ES, FS and GS the running thread loaded (the kernel changes none of
/// them between the thread's exit and this read; `sysretq` and `iretq` leave them to ring 3).
pub fn user_selectors() -> [u16; 4] {
    let (ds, es, fs, gs): (u16, u16, u16, u16);
    // SAFETY: reading segment registers has no side effect.
    unsafe {
        asm!("mov {0:x}, ds", "mov {1:x}, es", "mov {2:x}, fs", "mov {3:x}, gs",
            out(reg) ds, out(reg) es, out(reg) fs, out(reg) gs, options(nomem, nostack, preserves_flags));
    }
    [ds, es, fs, gs]
}

/// Loads a thread's saved data selectors ([`user_selectors`]) into DS, ES, FS and GS, after
/// [`reset_user_state`] and before its FS base is set (loading FS clears the base). Only values
/// ring 3 can hold are loaded: a null selector, or one of the two user descriptors (data, and
/// the readable code segment) with RPL 3; anything else (which ring 3 cannot load) becomes null.
/// The user GS base stays 0, as a load from ring 3 would leave it (both descriptors have base 0).
pub fn set_user_selectors(selectors: [u16; 4]) {
    let loadable = |s: u16| if s == USER_SS as u16 || s == USER_CS as u16 { s } else { 0 };
    let [ds, es, fs, gs] = selectors.map(loadable);
    if ds | es | fs | gs == 0 {
        return; // reset_user_state left them null
    }
    x86_64::instructions::interrupts::without_interrupts(|| {
        // SAFETY: each value is null or a present DPL-3 data / readable code descriptor of every
        // CPU's GDT (same layout on each), loadable at CPL 0 with RPL 3; the kernel addresses
        // nothing through DS/ES/FS. Loading GS replaces GS_BASE, this CPU's per-CPU area: it is
        // read first and written back, with interrupts off so no handler runs between.
        unsafe {
            let per_cpu = Msr::new(IA32_GS_BASE).read();
            asm!("mov ds, {0:x}", "mov es, {1:x}", "mov fs, {2:x}", "mov gs, {3:x}",
                in(reg) ds, in(reg) es, in(reg) fs, in(reg) gs, options(nostack, preserves_flags));
            Msr::new(IA32_GS_BASE).write(per_cpu);
        }
    });
}

/// The user FS base of the thread running on this CPU (`IA32_FS_BASE`; the kernel addresses
/// nothing through FS).
pub fn fs_base() -> u64 {
    // SAFETY: reading IA32_FS_BASE has no side effect.
    unsafe { Msr::new(IA32_FS_BASE).read() }
}

/// Sets the user FS base for the thread about to run on this CPU. The value must be canonical
/// (callers pass only canonical user addresses or 0); the kernel itself never uses FS.
pub fn set_fs_base(base: u64) {
    debug_assert!(base < 0x0000_8000_0000_0000, "FS base {base:#x} is not a canonical user address");
    // SAFETY: a canonical value (checked by the callers) cannot fault; FS is only the guest's.
    unsafe { Msr::new(IA32_FS_BASE).write(base) }
}
