//! Per-CPU records: which CPUs exist (from the MADT), which are online, and what each counted.
//!
//! A CPU finds its own record through GS: the per-CPU entry area of `super::user` (GS base in
//! ring 0; the boot CPU's is a static, each application processor's is allocated at its start)
//! holds the CPU's index at [`super::user::PER_CPU_INDEX_OFFSET`]. The records themselves are a
//! fixed table of atomics, so an interrupt handler reads and counts without a lock or the heap.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// The most CPUs the kernel brings up (further MADT entries are listed but stay offline).
pub const MAX_CPUS: usize = 16;

/// One CPU's record.
struct CpuRecord {
    apic_id: AtomicU32,
    online: AtomicBool,
    timer_ticks: AtomicU64,
    wakeups: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: CpuRecord =
    CpuRecord { apic_id: AtomicU32::new(0), online: AtomicBool::new(false), timer_ticks: AtomicU64::new(0), wakeups: AtomicU64::new(0) };

static CPUS: [CpuRecord; MAX_CPUS] = [EMPTY; MAX_CPUS];
/// Records in use (index 0 is the boot CPU).
static COUNT: AtomicUsize = AtomicUsize::new(1);

/// What [`cpus`] reports of one CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuInfo {
    /// Index (0 = the boot CPU).
    pub index: usize,
    /// Local APIC id.
    pub apic_id: u32,
    /// Whether it finished its start-up (tables, APIC timer) and runs.
    pub online: bool,
    /// Timer interrupts it took.
    pub timer_ticks: u64,
    /// Wake-up IPIs it took.
    pub wakeups: u64,
}

/// The index of the CPU running this code.
#[inline]
pub fn current_index() -> usize {
    let index: u64;
    // SAFETY: in ring 0 GS holds this CPU's entry area (set by user::init / user::init_ap before
    // interrupts are enabled anywhere), whose cpu_index field is at this offset; a read only.
    unsafe {
        core::arch::asm!("mov {}, gs:[{off}]", out(reg) index, off = const super::user::PER_CPU_INDEX_OFFSET, options(nostack, readonly, preserves_flags))
    };
    (index as usize).min(MAX_CPUS - 1)
}

/// The index of the CPU running this code, or 0 (the boot CPU) before the boot CPU's per-CPU
/// area is set up (the only CPU running then). For code that runs early too (the memory manager).
#[inline]
pub fn this_cpu() -> usize {
    if CPUS[0].online.load(Ordering::Acquire) { current_index() } else { 0 }
}

/// The local APIC id of CPU `index` (0 for an index never registered).
pub fn apic_id_of(index: usize) -> u32 {
    CPUS.get(index).map_or(0, |c| c.apic_id.load(Ordering::Relaxed))
}

/// The index of the CPU with local APIC id `apic_id`, if it is registered; reads no GS, so an
/// interrupt handler may use it whatever ring it interrupted.
pub fn index_of_apic(apic_id: u32) -> Option<usize> {
    (0..COUNT.load(Ordering::Acquire)).find(|&i| CPUS[i].apic_id.load(Ordering::Relaxed) == apic_id)
}

/// Records the boot CPU (index 0) as online with `apic_id`.
pub fn register_boot_cpu(apic_id: u32) {
    CPUS[0].apic_id.store(apic_id, Ordering::SeqCst);
    CPUS[0].online.store(true, Ordering::SeqCst);
}

/// Adds an application processor with `apic_id` (offline until it says so); its index, or
/// `None` if the table is full.
pub fn register_ap(apic_id: u32) -> Option<usize> {
    let index = COUNT.load(Ordering::SeqCst);
    if index >= MAX_CPUS {
        return None;
    }
    CPUS[index].apic_id.store(apic_id, Ordering::SeqCst);
    COUNT.store(index + 1, Ordering::SeqCst);
    Some(index)
}

/// Marks CPU `index` online (called by that CPU at the end of its start-up).
pub fn set_online(index: usize) {
    CPUS[index].online.store(true, Ordering::SeqCst);
}

/// Counts an interrupt on the current CPU.
pub fn count_interrupt(vector: u8) {
    let cpu = &CPUS[current_index()];
    match vector {
        super::apic::TIMER_VECTOR => cpu.timer_ticks.fetch_add(1, Ordering::Relaxed),
        super::apic::WAKE_VECTOR => cpu.wakeups.fetch_add(1, Ordering::Relaxed),
        _ => 0,
    };
}

/// Every registered CPU.
pub fn cpus() -> impl Iterator<Item = CpuInfo> {
    (0..COUNT.load(Ordering::SeqCst)).map(|index| {
        let r = &CPUS[index];
        CpuInfo {
            index,
            apic_id: r.apic_id.load(Ordering::SeqCst),
            online: r.online.load(Ordering::SeqCst),
            timer_ticks: r.timer_ticks.load(Ordering::Relaxed),
            wakeups: r.wakeups.load(Ordering::Relaxed),
        }
    })
}

/// The local APIC id of CPU `index`, if it is registered.
pub fn apic_id(index: usize) -> Option<u32> {
    (index < COUNT.load(Ordering::SeqCst)).then(|| CPUS[index].apic_id.load(Ordering::SeqCst))
}

/// Whether CPU `index` is online.
pub fn is_online(index: usize) -> bool {
    index < COUNT.load(Ordering::SeqCst) && CPUS[index].online.load(Ordering::SeqCst)
}

/// CPUs online now.
pub fn online_count() -> usize {
    cpus().filter(|c| c.online).count()
}
