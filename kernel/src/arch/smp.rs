//! Bringing up the application processors (APs).
//!
//! 1. The CPUs come from the ACPI MADT (the `acpi` crate, reading the tables through the
//!    physical-memory window, which maps the firmware's ACPI regions for this): the boot CPU and
//!    every AP not marked disabled, up to [`percpu::MAX_CPUS`].
//! 2. The start-up trampoline is copied to a page below 1 MiB that the firmware reports usable
//!    (0x8000 if it can be, never page 0; the frame allocator never hands out memory below 1 MiB,
//!    and the bootloader's real-mode stages that lived there are dead once the kernel runs). The
//!    three pages after it hold a temporary PML4 below 4 GiB (CR3 is loaded in 32-bit mode): an
//!    identity mapping of the first 2 MiB, for the trampoline, and the kernel's 256 upper-half
//!    entries, for the jump into the kernel.
//! 3. Each AP in turn gets INIT, 10 ms, start-up IPI, 200 µs, a second start-up IPI if it has
//!    not started (the MP specification's sequence). The trampoline goes 16 → 32 → 64-bit mode
//!    (protected mode, PAE, the temporary CR3, EFER.LME|NXE, paging), loads the stack the boot
//!    CPU prepared and calls [`ap_main`] in the kernel half.
//! 4. [`ap_main`] switches to the kernel's CR3, takes the boot CPU's CR0, CR4, EFER and PAT,
//!    loads a GDT and TSS of its own (double-fault and NMI IST stacks, ring-3 entry stack: kernel
//!    stacks with guard pages), the shared IDT, its per-CPU entry area in GS with the `syscall`
//!    MSRs and FPU/XCR0 setup (`super::user::init_ap`), and its local APIC with the timer; then it
//!    is online and loops in `Support::ap_idle`: the scheduler runs guest threads on it, and it
//!    waits in `sti; hlt` when there are none.
//!
//! A CPU that does not come up within half a second is reported offline; the kernel goes on.

use alloc::string::String;
use alloc::vec::Vec;
use core::arch::global_asm;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use acpi::platform::ProcessorState;
use acpi::{AcpiHandler, AcpiTables, PhysicalMapping};
use address_space::PAGE_SIZE;
use address_space::PhysMemory;
use bootloader_api::info::{MemoryRegion, MemoryRegionKind};
use x86_64::PhysAddr;
use x86_64::registers::control::{Cr0, Cr3, Cr3Flags, Cr4};
use x86_64::structures::paging::PhysFrame;
use x86_64::registers::model_specific::{Efer, EferFlags, Msr};

use super::{apic, percpu, time};

/// The preferred trampoline page (Asterinas uses it too); any usable page below the EBDA does.
const PREFERRED_TRAMPOLINE: u64 = 0x8000;
/// Pages the trampoline needs: its code and data, then the temporary PML4, PDPT and PD.
const TRAMPOLINE_PAGES: u64 = 4;
/// The start-up IPI can only name a page below this (and the EBDA starts at 0x9F000 or lower).
const TRAMPOLINE_LIMIT: u64 = 0x9F000;

global_asm!(
    r#"
    .pushsection .rodata.vmk_ap_trampoline, "a"
    .code16
    .global vmk_ap_trampoline_start
vmk_ap_trampoline_start:
    cli
    cld
    movw %cs, %ax
    movw %ax, %ds
    movw %ax, %ss
    movw $0x1000, %sp
    xorl %ebx, %ebx
    movw %ax, %bx
    shll $4, %ebx
    leal (vmk_ap_gdt - vmk_ap_trampoline_start)(%ebx), %eax
    movl %eax, (vmk_ap_gdtr - vmk_ap_trampoline_start + 2)
    lgdtl (vmk_ap_gdtr - vmk_ap_trampoline_start)
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    leal (vmk_ap_protected - vmk_ap_trampoline_start)(%ebx), %eax
    pushl $0x08
    pushl %eax
    lretl

    .code32
vmk_ap_protected:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    leal 0x1000(%ebx), %esp
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    movl (vmk_ap_cr3 - vmk_ap_trampoline_start)(%ebx), %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx
    rdmsr
    orl $0x900, %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax
    movl %eax, %cr0
    leal (vmk_ap_long - vmk_ap_trampoline_start)(%ebx), %eax
    pushl $0x18
    pushl %eax
    lretl

    .code64
vmk_ap_long:
    movl %ebx, %ebx
    movq (vmk_ap_stack - vmk_ap_trampoline_start)(%rbx), %rsp
    movq (vmk_ap_arg - vmk_ap_trampoline_start)(%rbx), %rdi
    movq (vmk_ap_entry - vmk_ap_trampoline_start)(%rbx), %rax
    callq *%rax
2:
    cli
    hlt
    jmp 2b

    .balign 16
vmk_ap_gdt:
    .quad 0
    .quad 0x00CF9A000000FFFF
    .quad 0x00CF92000000FFFF
    .quad 0x00AF9A000000FFFF
vmk_ap_gdtr:
    .word 31
    .long 0
    .balign 8
    .global vmk_ap_cr3
vmk_ap_cr3:
    .quad 0
    .global vmk_ap_stack
vmk_ap_stack:
    .quad 0
    .global vmk_ap_arg
vmk_ap_arg:
    .quad 0
    .global vmk_ap_entry
vmk_ap_entry:
    .quad 0
    .global vmk_ap_trampoline_end
vmk_ap_trampoline_end:
    .popsection
"#,
    options(att_syntax)
);

unsafe extern "C" {
    static vmk_ap_trampoline_start: u8;
    static vmk_ap_trampoline_end: u8;
    static vmk_ap_cr3: u8;
    static vmk_ap_stack: u8;
    static vmk_ap_arg: u8;
    static vmk_ap_entry: u8;
}

/// Offset of a trampoline symbol from its start.
fn offset_of(symbol: *const u8) -> u64 {
    symbol as u64 - core::ptr::addr_of!(vmk_ap_trampoline_start) as u64
}

/// Maps ACPI tables for the `acpi` crate through the physical-memory window.
#[derive(Clone, Copy)]
struct WindowHandler;

impl AcpiHandler for WindowHandler {
    unsafe fn map_physical_region<T>(&self, physical_address: usize, size: usize) -> PhysicalMapping<Self, T> {
        let support = support();
        assert!(
            (support.window_covers)(physical_address as u64, size as u64),
            "ACPI table at {physical_address:#x}+{size:#x} outside the RAM and ACPI regions of the memory map"
        );
        let virt = (support.window_offset + physical_address as u64) as *mut T;
        // SAFETY: the window maps the range (checked above) read-write at this address for the
        // whole run, and the tables are firmware data no Rust object owns; the crate only reads.
        unsafe { PhysicalMapping::new(physical_address, NonNull::new(virt).expect("window addresses are non-null"), size, size, *self) }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

/// What the MADT says about the CPUs: the boot CPU's APIC id, the APs to start, and how many
/// it lists as disabled.
struct Madt {
    boot_apic_id: u32,
    aps: Vec<u32>,
    disabled: usize,
}

fn read_madt(rsdp: u64) -> Result<Madt, String> {
    // SAFETY: the bootloader reports `rsdp` as the firmware's RSDP; the handler maps through the
    // window only ranges the memory map names as RAM or ACPI tables.
    let tables = unsafe { AcpiTables::from_rsdp(WindowHandler, rsdp as usize) }.map_err(|e| alloc::format!("ACPI tables: {e:?}"))?;
    let info = tables.platform_info().map_err(|e| alloc::format!("ACPI platform info: {e:?}"))?;
    let processors = info.processor_info.ok_or("the MADT lists no processors")?;
    let aps = processors.application_processors.iter().filter(|p| p.state != ProcessorState::Disabled).map(|p| p.local_apic_id).collect();
    let disabled = processors.application_processors.iter().filter(|p| p.state == ProcessorState::Disabled).count();
    Ok(Madt { boot_apic_id: processors.boot_processor.local_apic_id, aps, disabled })
}

/// The first page of `TRAMPOLINE_PAGES` usable pages below 1 MiB (not page 0): 0x8000 if usable.
fn trampoline_page() -> Option<u64> {
    let usable = |start: u64| {
        let end = start + TRAMPOLINE_PAGES * PAGE_SIZE;
        support().regions.iter().any(|r| r.kind == MemoryRegionKind::Usable && r.start <= start && r.end >= end)
    };
    if usable(PREFERRED_TRAMPOLINE) {
        return Some(PREFERRED_TRAMPOLINE);
    }
    (1..TRAMPOLINE_LIMIT / PAGE_SIZE - TRAMPOLINE_PAGES).map(|p| p * PAGE_SIZE).find(|&p| usable(p))
}

/// The boot CPU's control state, which every AP copies.
static BSP_CR0: AtomicU64 = AtomicU64::new(0);
static BSP_CR4: AtomicU64 = AtomicU64::new(0);
static BSP_EFER: AtomicU64 = AtomicU64::new(0);
static KERNEL_CR3: AtomicU64 = AtomicU64::new(0);
/// Stack tops for the AP starting now: double-fault IST, NMI IST, ring-3 entry.
static AP_STACKS: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
/// Set by the starting AP once it runs kernel code (it has read the trampoline's data).
static AP_STARTED: AtomicBool = AtomicBool::new(false);

/// What [`init`] found, for the boot report.
static SUMMARY: spin::Mutex<Option<String>> = spin::Mutex::new(None);

/// A closure given physical memory.
pub type PhysAccess<'a> = dyn FnMut(&mut dyn PhysMemory) + 'a;

/// What AP bring-up needs from the floors above `arch` (the boot facts, physical memory, kernel
/// stacks, the IDT), handed in by `kernel::init` so that `arch` imports nothing above it.
pub struct Support {
    /// The bootloader's memory map.
    pub regions: &'static [MemoryRegion],
    /// Physical address of the ACPI RSDP, if the firmware has one.
    pub rsdp: Option<u64>,
    /// Virtual base of the physical-memory window.
    pub window_offset: u64,
    /// Whether the window maps `[pa, pa + len)`.
    pub window_covers: fn(u64, u64) -> bool,
    /// Runs a closure with physical memory (through the window).
    pub with_phys: fn(&mut PhysAccess),
    /// A kernel stack with a guard page, kept for the whole run: its top (`None`: out of memory).
    pub kernel_stack: fn() -> Option<u64>,
    /// Loads the IDT on the calling CPU.
    pub load_idt: fn(),
    /// What an online AP does, over and over, with interrupts off: run guest threads if there
    /// are any (the scheduler, `crate::guest::sched`), else wait for an interrupt (`sti; hlt`).
    pub ap_idle: fn(),
}

static SUPPORT: spin::Once<Support> = spin::Once::new();

fn support() -> &'static Support {
    SUPPORT.get().expect("smp::init has run")
}

/// Finds the CPUs and starts every AP (see the module docs). Call once from `kernel::init`, on
/// the boot CPU, after its APIC is up.
pub fn init(support: Support) {
    SUPPORT.call_once(|| support);
    let summary = match start_all() {
        Ok(s) => s,
        Err(e) => alloc::format!("the boot CPU only ({e})"),
    };
    log::info!("smp: {summary}");
    *SUMMARY.lock() = Some(summary);
}

fn start_all() -> Result<String, String> {
    let rsdp = support().rsdp.ok_or("no ACPI RSDP from the bootloader")?;
    let madt = read_madt(rsdp)?;
    let own = apic::id();
    if madt.boot_apic_id != own {
        log::warn!("smp: the MADT names APIC {} as the boot CPU, this is APIC {own}", madt.boot_apic_id);
    }
    let mut extra = String::new();
    if madt.disabled > 0 {
        extra = alloc::format!(", {} listed disabled", madt.disabled);
    }
    if madt.aps.is_empty() {
        return Ok(alloc::format!("1 CPU in the MADT{extra}"));
    }
    let page = trampoline_page().ok_or("no usable page below 1 MiB for the AP trampoline")?;
    install_trampoline(page);
    let mut failed = Vec::new();
    for &apic_id in madt.aps.iter().filter(|&&id| id != own) {
        if apic_id > 0xFE {
            failed.push(alloc::format!("APIC {apic_id}: an x2APIC id, not addressable in xAPIC mode"));
            continue;
        }
        let Some(index) = percpu::register_ap(apic_id) else {
            failed.push(alloc::format!("APIC {apic_id}: more than {} CPUs", percpu::MAX_CPUS));
            continue;
        };
        if let Err(e) = start_ap(page, index, apic_id) {
            failed.push(alloc::format!("APIC {apic_id}: {e}"));
        }
    }
    let total = 1 + madt.aps.len();
    let mut s = alloc::format!("{total} CPUs in the MADT{extra}, {} online, trampoline at {page:#x}", percpu::online_count());
    for f in failed {
        s.push_str("; offline: ");
        s.push_str(&f);
    }
    Ok(s)
}

/// Copies the trampoline to `page` and builds the temporary tables after it.
fn install_trampoline(page: u64) {
    let start = core::ptr::addr_of!(vmk_ap_trampoline_start);
    let len = offset_of(core::ptr::addr_of!(vmk_ap_trampoline_end)) as usize;
    // SAFETY: the two symbols delimit the trampoline's bytes in the kernel's read-only data.
    let code = unsafe { core::slice::from_raw_parts(start, len) };
    let (pml4, pdpt, pd) = (page + PAGE_SIZE, page + 2 * PAGE_SIZE, page + 3 * PAGE_SIZE);
    let kernel_root = Cr3::read().0.start_address().as_u64();
    const PRESENT_WRITABLE: u64 = 0b11;
    const HUGE: u64 = 1 << 7;
    (support().with_phys)(&mut |w| {
        w.write_bytes(PhysAddr::new(page), &[0; PAGE_SIZE as usize]);
        w.write_bytes(PhysAddr::new(page), code);
        for table in [pml4, pdpt, pd] {
            w.write_bytes(PhysAddr::new(table), &[0; PAGE_SIZE as usize]);
        }
        w.write_u64(PhysAddr::new(pml4), pdpt | PRESENT_WRITABLE);
        w.write_u64(PhysAddr::new(pdpt), pd | PRESENT_WRITABLE);
        w.write_u64(PhysAddr::new(pd), HUGE | PRESENT_WRITABLE);
        for i in 256..512u64 {
            let entry = w.read_u64(PhysAddr::new(kernel_root + i * 8));
            w.write_u64(PhysAddr::new(pml4 + i * 8), entry);
        }
        w.write_u64(PhysAddr::new(page + offset_of(core::ptr::addr_of!(vmk_ap_cr3))), pml4);
        w.write_u64(PhysAddr::new(page + offset_of(core::ptr::addr_of!(vmk_ap_entry))), ap_main as *const () as u64);
    });
    BSP_CR0.store(Cr0::read_raw(), Ordering::SeqCst);
    BSP_CR4.store(Cr4::read_raw(), Ordering::SeqCst);
    BSP_EFER.store(Efer::read_raw(), Ordering::SeqCst);
    KERNEL_CR3.store(kernel_root, Ordering::SeqCst);
}

/// A kernel stack for a CPU, kept for the whole run; its top.
fn cpu_stack() -> Result<u64, &'static str> {
    (support().kernel_stack)().ok_or("no kernel stack")
}

/// Waits until `done` or `ms` milliseconds passed; whether `done` held.
fn wait_until(ms: u64, done: impl Fn() -> bool) -> bool {
    let start = time::rdtsc();
    let limit = time::tsc_per_ms() * ms;
    while !done() {
        if time::rdtsc().wrapping_sub(start) > limit {
            return false;
        }
        core::hint::spin_loop();
    }
    true
}

fn start_ap(page: u64, index: usize, apic_id: u32) -> Result<(), &'static str> {
    let main = cpu_stack()?;
    for slot in &AP_STACKS {
        slot.store(cpu_stack()?, Ordering::SeqCst);
    }
    (support().with_phys)(&mut |w| {
        w.write_u64(PhysAddr::new(page + offset_of(core::ptr::addr_of!(vmk_ap_stack))), main);
        w.write_u64(PhysAddr::new(page + offset_of(core::ptr::addr_of!(vmk_ap_arg))), index as u64);
    });
    AP_STARTED.store(false, Ordering::SeqCst);
    if !apic::send_init(apic_id) {
        return Err("INIT not accepted");
    }
    wait_until(10, || false);
    for _ in 0..2 {
        if !apic::send_startup(apic_id, page) {
            return Err("start-up IPI not accepted");
        }
        if wait_until(1, || AP_STARTED.load(Ordering::SeqCst)) {
            break;
        }
    }
    if !wait_until(500, || AP_STARTED.load(Ordering::SeqCst)) {
        return Err("did not start");
    }
    if !wait_until(500, || percpu::cpus().nth(index).is_some_and(|c| c.online)) {
        return Err("started but did not finish its set-up");
    }
    Ok(())
}

/// Where an AP enters the kernel, on its own stack, with the trampoline's temporary CR3.
extern "C" fn ap_main(index: u64) -> ! {
    // SAFETY: the kernel's PML4 maps everything the kernel uses, including this code and stack
    // (the temporary table's upper half is a copy of it).
    unsafe { Cr3::write(PhysFrame::containing_address(PhysAddr::new(KERNEL_CR3.load(Ordering::SeqCst))), Cr3Flags::empty()) };
    AP_STARTED.store(true, Ordering::SeqCst);
    // SAFETY: the boot CPU's CR0/CR4 values are valid on this identical CPU: paging and PAE are
    // already on, the rest (WP, NE/MP/AM, PGE, OSFXSR/OSXMMEXCPT/OSXSAVE, SMEP/SMAP) the kernel
    // relies on everywhere; the write also clears the CD/NW bits INIT left set.
    unsafe {
        Cr4::write_raw(BSP_CR4.load(Ordering::SeqCst));
        Cr0::write_raw(BSP_CR0.load(Ordering::SeqCst));
    }
    // SAFETY: adds the boot CPU's EFER bits (NXE, SCE; LME is already set, LMA is read-only).
    unsafe { Efer::write_raw(Efer::read_raw() | (BSP_EFER.load(Ordering::SeqCst) & !EferFlags::LONG_MODE_ACTIVE.bits())) };
    // SAFETY: the kernel's PAT (entries 0-3 at their power-on values) on this CPU too.
    unsafe { Msr::new(0x277).write(super::cpu::PAT_VALUE) };
    let [df, nmi, entry] = [0, 1, 2].map(|i| AP_STACKS[i].load(Ordering::SeqCst));
    super::gdt::init_ap(df, nmi, entry);
    (support().load_idt)();
    super::user::init_ap(index as usize);
    apic::init_ap();
    percpu::set_online(index as usize);
    let idle = support().ap_idle;
    loop {
        idle();
        #[cfg(feature = "test-hooks")]
        apic::run_posted_work();
    }
}

/// Prints the CPUs: what [`init`] found, then each CPU with its APIC id and state.
pub fn print_cpus() {
    let summary = SUMMARY.lock().clone().unwrap_or_else(|| "not started".into());
    crate::kprintln!("cpus: {summary}");
    for c in percpu::cpus() {
        crate::kprintln!(
            "  cpu {}  APIC id {:>3}  {}{}",
            c.index,
            c.apic_id,
            if c.online { "online" } else { "offline" },
            if c.index == 0 { " (boot CPU)" } else { "" }
        );
    }
}
