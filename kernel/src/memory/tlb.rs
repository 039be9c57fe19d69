//! TLB shootdown by IPI: the kernel's [`Tlb`] for the address-space crate, and the requests
//! one CPU posts to the others.
//!
//! **Who runs a space.** Each space's `ActiveCpus` set (address-space crate) holds the CPUs that
//! have its root in CR3: [`super::Space::activate`] sets this CPU's bit before it loads CR3 and
//! clears its bit in the space it leaves after; a CPU idling with the root still loaded stays in
//! the set (it can still walk the tables). An operation reads the set after writing its entries
//! (with a full fence, `ActiveCpus::get`), so a CPU that joins later walks the new tables.
//!
//! **Lazy CPUs** ([`enter_lazy`], [`leave_lazy`]; Linux's lazy TLB mode, `should_flush_tlb`). A
//! CPU that halts with nothing to run marks itself lazy; a round that freed no page table leaves
//! it out (no IPI: waking a halted vCPU costs tens of thousands of cycles under QEMU) and asks it
//! to flush when it returns; the CPU, leaving idle, clears its mark and then reloads CR3 if asked,
//! before it touches the space. The mark and the request are a Dekker pair (SeqCst stores, then
//! loads, on both sides): either the initiator sees the CPU no longer lazy and sends the IPI, or
//! the CPU sees the request. While lazy the CPU runs only interrupt handlers, which never touch
//! user memory, so its stale translations are never used. A round that freed tables still goes
//! to lazy CPUs: a paging-structure cache pointing at a freed table could be walked
//! speculatively into whatever the frame holds next (smp-and-dispatch §4(b)).
//!
//! **One round per call** ([`KernelTlb::shootdown`]): the calling CPU fills its own outgoing
//! request (pages to `invlpg`, or a full flush above the crate's threshold, 32 pages), sets its
//! bit in each other target's pending mask (lazy ones left out, above) and sends each one IPI
//! ([`apic::SHOOTDOWN_VECTOR`]), flushes locally if it runs the space, then waits until every
//! target acknowledged. A round
//! whose only target is the caller sends nothing; a space no CPU runs costs no round at all.
//! Frames the call unmapped are freed by the crate only after the round returned (§4(c)).
//!
//! **Serving a request** ([`shootdown_interrupt`], [`serve_flush_requests`]): take the pending
//! mask (atomic swap), carry out each initiator's request, decrement its acknowledgement counter.
//! No lock, no heap, no GS (the CPU's index comes from its APIC id), so the handler runs the
//! same whether it interrupted ring 3 (a guest) or ring 0 (an idle CPU).
//!
//! **No deadlock with interrupts off** (§4 pitfall 14). Kernel code runs with IF = 0. Every wait
//! that may stand between a CPU and the IPI serves this CPU's requests itself: the spin loop of
//! the memory manager's lock ([`super::lock::SpinLock`]) and the acknowledgement wait of a round
//! (two CPUs making rounds at once serve each other; after 50 µs it halts with IF = 1, woken by
//! the last acknowledgement's IPI). A CPU in ring 3 or halted takes the IPI.
//! A round not acknowledged within [`ACK_TIMEOUT_MS`] is a kernel bug and panics, naming the CPUs.
//!
//! **Leaving a dying space** ([`leave_round`]): before a space's tables are freed, every other
//! CPU still running it (lazily) is made to load the kernel's table.

use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use address_space::paging::tlb::{CpuSet, FlushRound, FlushScope, MAX_BATCH, Tlb};
use x86_64::VirtAddr;
use x86_64::registers::control::Cr3;
use x86_64::structures::idt::InterruptStackFrame;

use crate::arch::percpu::{self, MAX_CPUS};
use crate::arch::{apic, time};

/// A round not acknowledged within this time is a kernel bug (a target CPU spinning with
/// interrupts off on something that never comes).
pub const ACK_TIMEOUT_MS: u64 = 20_000;

/// The kernel's own PML4, loaded by a CPU leaving a dying space (set by `memory::init`).
pub(super) static KERNEL_ROOT: AtomicU64 = AtomicU64::new(0);

/// The physical address of the root in this CPU's CR3.
pub(super) fn cr3_root() -> u64 {
    Cr3::read().0.start_address().as_u64()
}

/// TLB invalidation for one space, on the calling CPU and, by IPI, on every other CPU that runs
/// it (see the module docs).
pub struct KernelTlb {
    cpu: usize,
    root: u64,
    /// Whether the space is in this CPU's CR3, read at the first invalidation (a call that
    /// invalidates nothing never reads CR3).
    local: Option<bool>,
}

impl KernelTlb {
    /// The TLB of the space with root `root`, seen from the calling CPU.
    #[inline]
    pub(super) fn new(root: u64) -> Self {
        KernelTlb { cpu: percpu::this_cpu(), root, local: None }
    }

    /// Whether the space is in this CPU's CR3 (it does not change during a call: interrupts are
    /// off).
    fn local(&mut self) -> bool {
        *self.local.get_or_insert_with(|| cr3_root() == self.root)
    }
}

impl Tlb for KernelTlb {
    fn invalidate_page(&mut self, addr: VirtAddr) {
        if self.local() {
            x86_64::instructions::tlb::flush(addr);
        }
    }

    fn flush_all(&mut self) {
        if self.local() {
            // Reloading CR3 drops every non-global translation, i.e. all of the guest's.
            x86_64::instructions::tlb::flush_all();
        }
    }

    fn shootdown(&mut self, round: &FlushRound<'_>) -> u32 {
        let request = match round.scope {
            FlushScope::All => Request::All,
            FlushScope::Pages(pages) => Request::Pages(pages),
        };
        let mut others = round.targets.without(self.cpu);
        if !round.tables_freed {
            others = without_lazy(others);
        }
        let posted = post(self.cpu, others, &request);
        if self.local() || round.targets.contains(self.cpu) {
            request.apply();
        }
        if posted {
            wait_for_acks(self.cpu, others);
        }
        others.len()
    }
}

/// Per CPU: idling with a guest space's root still in CR3 ([`enter_lazy`]); rounds that free no
/// table leave it out (see the module docs).
static LAZY: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
/// Per CPU: a round left this CPU out while it was lazy, so it reloads CR3 in [`leave_lazy`].
static FLUSH_ON_RETURN: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];

/// `targets` without the CPUs that are lazy; each CPU left out is told to flush when it
/// returns. Dekker with [`leave_lazy`] (SeqCst stores then loads on both sides): a CPU that reads
/// no flush request when it leaves idle stopped being lazy before this read its flag, so it is
/// kept as a target and takes the IPI.
fn without_lazy(targets: CpuSet) -> CpuSet {
    let mut kept = targets;
    for t in targets.iter() {
        if LAZY[t].load(Ordering::SeqCst) {
            FLUSH_ON_RETURN[t].store(true, Ordering::SeqCst);
            if LAZY[t].load(Ordering::SeqCst) {
                kept = kept.without(t);
                LAZY_SKIPS.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    kept
}

/// Marks this CPU lazy before it halts with nothing to run: if a guest space's root is in CR3,
/// the space's rounds that free no page table leave this CPU out until [`leave_lazy`], which
/// flushes if any did (Linux's lazy TLB mode, smp-and-dispatch §4). Call with interrupts off, and
/// touch no user memory until `leave_lazy`.
pub fn enter_lazy() {
    if cr3_root() != KERNEL_ROOT.load(Ordering::Relaxed) {
        LAZY[percpu::this_cpu()].store(true, Ordering::SeqCst);
    }
}

/// Whether CPU `cpu` idles lazily now ([`enter_lazy`]). For tests.
pub fn is_lazy(cpu: usize) -> bool {
    LAZY[cpu].load(Ordering::SeqCst)
}

/// Ends [`enter_lazy`]: from here rounds target this CPU again; if one left it out meanwhile,
/// every translation of the space in CR3 is dropped (a CR3 reload) before anything uses them.
pub fn leave_lazy() {
    let cpu = percpu::this_cpu();
    if LAZY[cpu].load(Ordering::Relaxed) {
        LAZY[cpu].store(false, Ordering::SeqCst);
        if FLUSH_ON_RETURN[cpu].swap(false, Ordering::SeqCst) {
            x86_64::instructions::tlb::flush_all();
            LAZY_FLUSHES.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What a round asks each target to do.
enum Request<'a> {
    /// `invlpg` each page (an empty list: one `invlpg` of address 0, which still drops the
    /// paging-structure caches).
    Pages(&'a [u64]),
    /// Reload CR3.
    All,
    /// If CR3 holds this root, load the kernel's table instead.
    Leave(u64),
}

const KIND_PAGES: u8 = 0;
const KIND_ALL: u8 = 1;
const KIND_LEAVE: u8 = 2;

impl Request<'_> {
    fn apply(&self) {
        match *self {
            Request::Pages(pages) => apply_pages(pages.iter().copied()),
            Request::All => x86_64::instructions::tlb::flush_all(),
            Request::Leave(root) => leave(root),
        }
    }
}

fn apply_pages(pages: impl ExactSizeIterator<Item = u64>) {
    if pages.len() == 0 {
        x86_64::instructions::tlb::flush(VirtAddr::zero());
    }
    for a in pages {
        x86_64::instructions::tlb::flush(VirtAddr::new_truncate(a));
    }
}

fn leave(root: u64) {
    if cr3_root() == root {
        let kernel = KERNEL_ROOT.load(Ordering::Relaxed);
        // SAFETY: the kernel's own table maps everything the kernel uses (code, stacks, window);
        // the upper half of every space is a copy of it, so execution continues seamlessly.
        unsafe { super::kernel_tables::activate(super::frame(kernel)) };
    }
}

/// One CPU's outgoing request, read by its targets while they serve it.
struct Outgoing {
    kind: AtomicU8,
    len: AtomicUsize,
    pages: [AtomicU64; MAX_BATCH],
    root: AtomicU64,
    /// Targets that have not yet acknowledged.
    acks_left: AtomicU32,
    /// The initiator halts until the last acknowledgement (which then wakes it by IPI).
    sleeping: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)]
const IDLE: Outgoing = Outgoing {
    kind: AtomicU8::new(KIND_PAGES),
    len: AtomicUsize::new(0),
    pages: [const { AtomicU64::new(0) }; MAX_BATCH],
    root: AtomicU64::new(0),
    acks_left: AtomicU32::new(0),
    sleeping: AtomicBool::new(false),
};

static OUTGOING: [Outgoing; MAX_CPUS] = [IDLE; MAX_CPUS];
/// Per target CPU: bit `i` set = the request of CPU `i` awaits it.
static PENDING: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// Counters of the shootdown machinery (for tests and benchmarks).
static ROUNDS_SENT: AtomicU64 = AtomicU64::new(0);
static IPIS_SENT: AtomicU64 = AtomicU64::new(0);
static ROUND_CYCLES: AtomicU64 = AtomicU64::new(0);
static REQUESTS_SERVED: AtomicU64 = AtomicU64::new(0);
static IPIS_TAKEN: AtomicU64 = AtomicU64::new(0);
static IPI_HANDLER_CYCLES: AtomicU64 = AtomicU64::new(0);
static LAZY_SKIPS: AtomicU64 = AtomicU64::new(0);
static LAZY_FLUSHES: AtomicU64 = AtomicU64::new(0);

/// Figures of the shootdown machinery since boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ShootdownStats {
    /// Rounds that sent at least one IPI.
    pub rounds: u64,
    /// IPIs sent (one per target other than the caller).
    pub ipis: u64,
    /// TSC cycles from the first IPI sent to the last acknowledgement, summed over `rounds`.
    pub cycles: u64,
    /// Requests carried out by targets.
    pub served: u64,
    /// Shootdown IPIs taken by targets (their handler ran; a request served from a wait loop
    /// before its IPI arrived leaves the handler nothing to do).
    pub ipis_taken: u64,
    /// TSC cycles the targets spent in the IPI's handler (serving, the EOI), summed.
    pub handler_cycles: u64,
    /// Targets left out of rounds because they idled lazily (no IPI sent to them).
    pub lazy_skips: u64,
    /// CR3 reloads of CPUs leaving lazy idle after a round left them out.
    pub lazy_flushes: u64,
}

/// The shootdown figures since boot.
pub fn shootdown_stats() -> ShootdownStats {
    ShootdownStats {
        rounds: ROUNDS_SENT.load(Ordering::Relaxed),
        ipis: IPIS_SENT.load(Ordering::Relaxed),
        cycles: ROUND_CYCLES.load(Ordering::Relaxed),
        served: REQUESTS_SERVED.load(Ordering::Relaxed),
        ipis_taken: IPIS_TAKEN.load(Ordering::Relaxed),
        handler_cycles: IPI_HANDLER_CYCLES.load(Ordering::Relaxed),
        lazy_skips: LAZY_SKIPS.load(Ordering::Relaxed),
        lazy_flushes: LAZY_FLUSHES.load(Ordering::Relaxed),
    }
}

/// Posts `request` of CPU `me` to `targets` (not containing `me`) and sends each one IPI.
/// Returns whether anything was posted (then the caller must [`wait_for_acks`]).
fn post(me: usize, targets: CpuSet, request: &Request<'_>) -> bool {
    if targets.is_empty() {
        return false;
    }
    let out = &OUTGOING[me];
    // The previous round of this CPU is complete (it waited for every acknowledgement), so no
    // target reads these fields now.
    match *request {
        Request::Pages(pages) => {
            out.kind.store(KIND_PAGES, Ordering::Relaxed);
            for (slot, &a) in out.pages.iter().zip(pages) {
                slot.store(a, Ordering::Relaxed);
            }
            out.len.store(pages.len().min(MAX_BATCH), Ordering::Relaxed);
        }
        Request::All => out.kind.store(KIND_ALL, Ordering::Relaxed),
        Request::Leave(root) => {
            out.kind.store(KIND_LEAVE, Ordering::Relaxed);
            out.root.store(root, Ordering::Relaxed);
        }
    }
    out.acks_left.store(targets.len(), Ordering::Relaxed);
    ROUND_CYCLES.fetch_sub(time::rdtsc(), Ordering::Relaxed);
    for t in targets.iter() {
        // Release: the request's fields are visible to the target that sees its bit.
        PENDING[t].fetch_or(1 << me, Ordering::Release);
        if !apic::send_fixed(percpu::apic_id_of(t), apic::SHOOTDOWN_VECTOR) {
            // The APIC did not accept it within a millisecond; the wait below times out (and
            // reports the CPU) if it never arrives.
            log::warn!("tlb: shootdown IPI to CPU {t} not accepted");
        }
    }
    ROUNDS_SENT.fetch_add(1, Ordering::Relaxed);
    IPIS_SENT.fetch_add(u64::from(targets.len()), Ordering::Relaxed);
    true
}

/// How long a round's initiator spins for its acknowledgements before it halts (interrupts on)
/// until the last one wakes it: on a loaded host a spinning vCPU takes host time from the very
/// vCPUs it waits for.
const SPIN_BEFORE_HALT_US: u64 = 50;

/// Waits until every target of CPU `me`'s posted request acknowledged, serving requests posted
/// to `me` meanwhile: spinning at first, then halted with interrupts on (the last target to
/// acknowledge sends [`apic::WAKE_VECTOR`]; a shootdown IPI or a timer tick wakes it too). With
/// interrupts on, this CPU takes other CPUs' shootdown IPIs like any other; no ring-0 interrupt
/// handler takes a lock or switches threads.
///
/// # Panics
/// If a target does not acknowledge within [`ACK_TIMEOUT_MS`] (a kernel bug).
fn wait_for_acks(me: usize, targets: CpuSet) {
    let out = &OUTGOING[me];
    let start = time::rdtsc();
    let per_ms = time::tsc_per_ms();
    let (spin, limit) = (per_ms * SPIN_BEFORE_HALT_US / 1000, per_ms.saturating_mul(ACK_TIMEOUT_MS));
    while out.acks_left.load(Ordering::Acquire) != 0 {
        serve(me);
        let waited = time::rdtsc().wrapping_sub(start);
        if waited > limit {
            let late: CpuSet = CpuSet(targets.iter().filter(|&t| PENDING[t].load(Ordering::Relaxed) & (1 << me) != 0).fold(0, |m, t| m | 1 << t));
            panic!("TLB shootdown of CPU {me}: CPUs {late:?} did not acknowledge within {ACK_TIMEOUT_MS} ms");
        }
        if waited > spin {
            // Dekker with the last acknowledgement (both sides full barriers): either it sees
            // `sleeping` and wakes this CPU, or this CPU sees the count at zero and does not halt.
            out.sleeping.store(true, Ordering::SeqCst);
            if out.acks_left.load(Ordering::SeqCst) != 0 {
                x86_64::instructions::interrupts::enable_and_hlt();
                x86_64::instructions::interrupts::disable();
            }
            out.sleeping.store(false, Ordering::SeqCst);
        } else {
            core::hint::spin_loop();
        }
    }
    ROUND_CYCLES.fetch_add(time::rdtsc(), Ordering::Relaxed);
}

/// Carries out every request posted to CPU `cpu` (the CPU running this) and acknowledges each.
fn serve(cpu: usize) {
    if PENDING[cpu].load(Ordering::Relaxed) == 0 {
        return;
    }
    let mut mask = PENDING[cpu].swap(0, Ordering::Acquire);
    while mask != 0 {
        let from = mask.trailing_zeros() as usize;
        mask &= mask - 1;
        let req = &OUTGOING[from];
        match req.kind.load(Ordering::Relaxed) {
            KIND_ALL => x86_64::instructions::tlb::flush_all(),
            KIND_LEAVE => leave(req.root.load(Ordering::Relaxed)),
            _ => apply_pages(req.pages[..req.len.load(Ordering::Relaxed)].iter().map(|a| a.load(Ordering::Relaxed))),
        }
        REQUESTS_SERVED.fetch_add(1, Ordering::Relaxed);
        // Release: the flush is done before the initiator sees the acknowledgement. The last
        // one wakes the initiator if it halted (see `wait_for_acks`).
        if req.acks_left.fetch_sub(1, Ordering::SeqCst) == 1 && req.sleeping.load(Ordering::SeqCst) {
            apic::send_fixed(percpu::apic_id_of(from), apic::WAKE_VECTOR);
        }
    }
}

/// Serves the TLB flush requests posted to this CPU. Call it in any loop that waits with
/// interrupts off for something another CPU may only give after a round (see the module docs).
/// Cheap when nothing is pending (one load).
pub fn serve_flush_requests() {
    serve(percpu::this_cpu());
}

/// Whether a flush request of another CPU waits to be served by this one (its round is in
/// flight until then). For tests that hold a round open.
pub fn flush_requests_pending() -> bool {
    PENDING[percpu::this_cpu()].load(Ordering::Acquire) != 0
}

/// The IDT handler of [`apic::SHOOTDOWN_VECTOR`]: serves this CPU's requests and acknowledges
/// the interrupt. Reads no GS (the CPU's index comes from its APIC id), takes no lock.
pub extern "x86-interrupt" fn shootdown_interrupt(_frame: InterruptStackFrame) {
    let start = time::rdtsc();
    if let Some(cpu) = percpu::index_of_apic(apic::id()) {
        serve(cpu);
    }
    apic::eoi();
    IPI_HANDLER_CYCLES.fetch_add(time::rdtsc().wrapping_sub(start), Ordering::Relaxed);
    IPIS_TAKEN.fetch_add(1, Ordering::Relaxed);
}

/// Makes every CPU of `targets` (not the caller) that has `root` in CR3 load the kernel's table,
/// and returns when all did. For a space about to be destroyed.
pub(super) fn leave_round(targets: CpuSet, root: u64) {
    let me = percpu::this_cpu();
    let targets = targets.without(me);
    if post(me, targets, &Request::Leave(root)) {
        wait_for_acks(me, targets);
    }
}
