//! The local APIC (xAPIC, memory-mapped): the periodic timer and inter-processor interrupts.
//!
//! - The APIC stays globally enabled (`IA32_APIC_BASE.EN`; clearing it is permanent on QEMU 7.2
//!   and makes the CPU one "without an on-chip APIC"). It is switched on by the software-enable
//!   bit of the spurious-interrupt vector register, with [`SPURIOUS_VECTOR`].
//! - LINT0 (where firmware routes the 8259's ExtINT), LINT1, the error, performance-counter and
//!   thermal entries are masked; the 8259 stays remapped and masked (`super::user::init`). The
//!   only interrupts a CPU takes are its own timer and IPIs.
//! - The register page is mapped uncached at [`MMIO_VA`] in the kernel half (see
//!   `memory::kernel_tables`), the same page for every CPU: each CPU sees its own APIC there.
//! - The timer runs periodically at [`TIMER_HZ`] (100 Hz: a 10 ms tick, the granularity of the
//!   guest CPU-time limit; cheap under TCG, where every tick costs an exit of the emulated CPU).
//!   Its rate is calibrated once, on the boot CPU, against PIT channel 2 with
//!   [`super::time::per_ms_against_pit`] (as the TSC is): divide-by-16, a one-shot count from
//!   `u32::MAX` over about 30 ms. Application processors reuse the figure (one bus clock).
//! - A tick arriving in ring 0 (an idle CPU in `sti; hlt`) is counted and acknowledged by
//!   [`on_timer_interrupt`]; one arriving in ring 3 leaves the guest through the ring-3 entry
//!   stubs (`super::user`), and the guest's run loop calls the same function.
//! - IPIs: [`WAKE_VECTOR`] (wakes a halted CPU), [`SHOOTDOWN_VECTOR`] (TLB shootdown, served by
//!   the memory manager without a lock, in either ring). With the `test-hooks` feature,
//!   [`run_on`] hands a closure to an idle application processor, which runs it in ring 0
//!   ([`run_posted_work`], called by its idle loop): tests and benchmarks use it to work on
//!   several CPUs before guests have threads.

use core::sync::atomic::{AtomicU32, Ordering};

use x86_64::registers::model_specific::Msr;

/// The timer's interrupt vector (above the 8259's remapped 0x20–0x2F).
pub const TIMER_VECTOR: u8 = 0x30;
/// A fixed IPI vector that only wakes the target (its handler counts it and acknowledges it).
pub const WAKE_VECTOR: u8 = 0xF0;
/// The TLB shootdown IPI: the target serves the flush requests posted to it
/// (`memory::tlb::shootdown_interrupt`, installed by `trap::init`).
pub const SHOOTDOWN_VECTOR: u8 = 0xF2;
/// The spurious-interrupt vector (low nibble all ones, as older APICs require).
pub const SPURIOUS_VECTOR: u8 = 0xFF;
/// Timer interrupts per second on every CPU.
pub const TIMER_HZ: u64 = 100;
/// Virtual address of the APIC's register page (uncached, supervisor-only, global).
pub const MMIO_VA: u64 = 0xffff_c080_0000_0000;

const IA32_APIC_BASE: u32 = 0x1B;
/// `IA32_APIC_BASE` bit 11: the APIC is globally enabled.
const APIC_GLOBAL_ENABLE: u64 = 1 << 11;

// Register offsets (Intel SDM Vol. 3A table 11-1).
const REG_ID: u64 = 0x20;
const REG_TPR: u64 = 0x80;
const REG_EOI: u64 = 0xB0;
const REG_SVR: u64 = 0xF0;
const REG_ESR: u64 = 0x280;
const REG_ICR_LOW: u64 = 0x300;
const REG_ICR_HIGH: u64 = 0x310;
const REG_LVT_TIMER: u64 = 0x320;
const REG_LVT_THERMAL: u64 = 0x330;
const REG_LVT_PERF: u64 = 0x340;
const REG_LVT_LINT0: u64 = 0x350;
const REG_LVT_LINT1: u64 = 0x360;
const REG_LVT_ERROR: u64 = 0x370;
const REG_TIMER_INITIAL: u64 = 0x380;
const REG_TIMER_CURRENT: u64 = 0x390;
const REG_TIMER_DIVIDE: u64 = 0x3E0;

const LVT_MASKED: u32 = 1 << 16;
const LVT_TIMER_PERIODIC: u32 = 1 << 17;
const SVR_SOFTWARE_ENABLE: u32 = 1 << 8;
/// Divide configuration 0b0011: divide by 16.
const TIMER_DIVIDE_16: u32 = 0b0011;
const ICR_DELIVERY_PENDING: u32 = 1 << 12;
const ICR_LEVEL_ASSERT: u32 = 1 << 14;
const ICR_TRIGGER_LEVEL: u32 = 1 << 15;
const ICR_INIT: u32 = 0b101 << 8;
const ICR_STARTUP: u32 = 0b110 << 8;

/// Timer counts (after divide-by-16) per tick, from the calibration.
static COUNT_PER_TICK: AtomicU32 = AtomicU32::new(0);
/// Timer counts per millisecond (after divide-by-16), from the calibration.
static COUNT_PER_MS: AtomicU32 = AtomicU32::new(0);

/// The physical address of this CPU's APIC register page.
pub fn base_phys() -> u64 {
    // SAFETY: reading IA32_APIC_BASE has no side effects; every x86_64 CPU has it.
    let v = unsafe { Msr::new(IA32_APIC_BASE).read() };
    v & 0x000F_FFFF_FFFF_F000
}

fn read(reg: u64) -> u32 {
    // SAFETY: MMIO_VA maps the APIC page uncached (kernel_tables::build) in every address space,
    // and `reg` is one of the register offsets above, 16-byte aligned inside the page.
    unsafe { core::ptr::read_volatile((MMIO_VA + reg) as *const u32) }
}

fn write(reg: u64, value: u32) {
    // SAFETY: as in `read`; writes go to this CPU's own APIC registers only.
    unsafe { core::ptr::write_volatile((MMIO_VA + reg) as *mut u32, value) }
}

/// This CPU's local APIC id.
pub fn id() -> u32 {
    read(REG_ID) >> 24
}

/// Switches the APIC on for this CPU (global enable kept, software enable with the spurious
/// vector), masks every local interrupt source but the timer (still stopped) and clears errors.
fn enable() {
    // SAFETY: setting the global-enable bit (normally already set by firmware) keeps the APIC
    // at the base address it has; nothing else in the MSR changes.
    unsafe {
        let mut msr = Msr::new(IA32_APIC_BASE);
        let v = msr.read();
        if v & APIC_GLOBAL_ENABLE == 0 {
            msr.write(v | APIC_GLOBAL_ENABLE);
        }
    }
    write(REG_TPR, 0);
    for lvt in [REG_LVT_LINT0, REG_LVT_LINT1, REG_LVT_ERROR, REG_LVT_PERF, REG_LVT_THERMAL, REG_LVT_TIMER] {
        write(lvt, LVT_MASKED);
    }
    write(REG_TIMER_INITIAL, 0);
    write(REG_SVR, SVR_SOFTWARE_ENABLE | SPURIOUS_VECTOR as u32);
    // The error status register latches on a write; two writes clear it.
    write(REG_ESR, 0);
    write(REG_ESR, 0);
    eoi();
}

/// Measures the timer's rate against the PIT (interrupts off, on the boot CPU).
fn calibrate() {
    write(REG_TIMER_DIVIDE, TIMER_DIVIDE_16);
    write(REG_LVT_TIMER, LVT_MASKED);
    write(REG_TIMER_INITIAL, u32::MAX);
    let per_ms = super::time::per_ms_against_pit(|| (u32::MAX - read(REG_TIMER_CURRENT)) as u64).max(1);
    write(REG_TIMER_INITIAL, 0);
    COUNT_PER_MS.store(per_ms.min(u32::MAX as u64) as u32, Ordering::SeqCst);
    COUNT_PER_TICK.store((per_ms * 1000 / TIMER_HZ).clamp(1, u32::MAX as u64) as u32, Ordering::SeqCst);
}

/// Starts the periodic timer on this CPU.
fn start_timer() {
    write(REG_TIMER_DIVIDE, TIMER_DIVIDE_16);
    write(REG_LVT_TIMER, LVT_TIMER_PERIODIC | TIMER_VECTOR as u32);
    write(REG_TIMER_INITIAL, COUNT_PER_TICK.load(Ordering::SeqCst));
}

/// Brings up the boot CPU's APIC: enable, calibrate, start the timer. Interrupts stay off in
/// ring 0 (the kernel runs with IF = 0); ticks arrive while a guest runs or the CPU idles.
pub fn init_bsp() {
    enable();
    calibrate();
    start_timer();
    log::info!(
        "apic: local APIC {} timer at {} Hz, {} counts per ms (divide by 16); TSC {} kHz",
        id(),
        TIMER_HZ,
        timer_counts_per_ms(),
        super::time::tsc_per_ms()
    );
}

/// Brings up an application processor's APIC with the boot CPU's calibration.
pub fn init_ap() {
    enable();
    start_timer();
}

/// Timer counts per millisecond (divide-by-16) measured at boot.
pub fn timer_counts_per_ms() -> u32 {
    COUNT_PER_MS.load(Ordering::SeqCst)
}

/// Signals the end of the interrupt being served (not for the spurious vector).
pub fn eoi() {
    write(REG_EOI, 0);
}

/// Serves an interrupt from the local APIC on this CPU, wherever it arrived (ring 0 or, through
/// the guest's run loop, ring 3): counts it for the CPU and acknowledges it.
pub fn on_interrupt(vector: u8) {
    super::percpu::count_interrupt(vector);
    if vector != SPURIOUS_VECTOR {
        eoi();
    }
}

/// Writes the ICR (destination first: writing the low half sends) and waits, boundedly, for the
/// APIC to accept it. Returns false if it was still pending after about a millisecond. The two
/// writes must not be split by another send on this CPU: the kernel sends with interrupts off,
/// and no interrupt handler sends.
fn send(destination: u32, low: u32) -> bool {
    write(REG_ICR_HIGH, destination << 24);
    write(REG_ICR_LOW, low);
    let start = super::time::rdtsc();
    let limit = super::time::tsc_per_ms();
    while read(REG_ICR_LOW) & ICR_DELIVERY_PENDING != 0 {
        if super::time::rdtsc().wrapping_sub(start) > limit {
            return false;
        }
        core::hint::spin_loop();
    }
    true
}

/// Sends a fixed interrupt `vector` to the CPU with APIC id `destination`.
pub fn send_fixed(destination: u32, vector: u8) -> bool {
    send(destination, ICR_LEVEL_ASSERT | vector as u32)
}

/// Sends INIT (assert, then de-assert as the MP specification's sequence has it).
pub fn send_init(destination: u32) -> bool {
    let asserted = send(destination, ICR_INIT | ICR_LEVEL_ASSERT | ICR_TRIGGER_LEVEL);
    let deasserted = send(destination, ICR_INIT | ICR_TRIGGER_LEVEL);
    asserted && deasserted
}

/// Sends a start-up IPI: the target starts in real mode at `page` (a 4 KiB-aligned physical
/// address below 1 MiB).
pub fn send_startup(destination: u32, page: u64) -> bool {
    debug_assert!(page < 0x10_0000 && page.is_multiple_of(address_space::PAGE_SIZE));
    send(destination, ICR_STARTUP | ICR_LEVEL_ASSERT | (page >> 12) as u32)
}

/// Closures waiting to run on each CPU's idle loop (`test-hooks`).
#[cfg(feature = "test-hooks")]
#[allow(clippy::type_complexity)]
static POSTED_WORK: [spin::Mutex<Option<alloc::boxed::Box<dyn FnOnce() + Send>>>; super::percpu::MAX_CPUS] =
    [const { spin::Mutex::new(None) }; super::percpu::MAX_CPUS];

/// Hands `work` to the idle loop of CPU `cpu` (an online application processor) and wakes it;
/// the CPU runs it in ring 0 with interrupts off (the closure may enable them). Returns false,
/// without posting, if `cpu` is this CPU, not online, or still has work pending.
#[cfg(feature = "test-hooks")]
pub fn run_on(cpu: usize, work: impl FnOnce() + Send + 'static) -> bool {
    let online = super::percpu::cpus().nth(cpu).is_some_and(|c| c.online);
    if cpu == super::percpu::current_index() || !online {
        return false;
    }
    {
        let mut slot = POSTED_WORK[cpu].lock();
        if slot.is_some() {
            return false;
        }
        *slot = Some(alloc::boxed::Box::new(work));
    }
    send_fixed(super::percpu::apic_id_of(cpu), WAKE_VECTOR)
}

/// Runs the closure posted to this CPU by [`run_on`], if any (called by the idle loop of an
/// application processor, with interrupts off).
#[cfg(feature = "test-hooks")]
pub fn run_posted_work() {
    let work = POSTED_WORK[super::percpu::current_index()].lock().take();
    if let Some(work) = work {
        work();
        x86_64::instructions::interrupts::disable();
    }
}
