//! [`Space`]: a guest address space registered with the memory manager, and which CPUs run it.

use alloc::sync::Arc;

use core::sync::atomic::{AtomicU64, Ordering};

use address_space::paging::tlb::ActiveCpus;
use address_space::{Access, AddressSpace, CriticalLevel, FaultOutcome, MemoryBasicInformation, PhysMemory, SpaceConfig, VmContext, VmError, WorkCounters};
use x86_64::PhysAddr;
use x86_64::instructions::interrupts;

use super::frames::{self, KernelCharge, KernelFrames};
use super::tlb::{self, KERNEL_ROOT, cr3_root};
use super::window::PhysWindow;
use super::lock::RwSpinLock;
use super::{KernelTlb, MAX_ALLOCATIONS_PER_SPACE, frame, kernel_tables, manager};
use crate::arch::percpu::{self, MAX_CPUS};

/// A guest address space: a handle to an `address_space::AddressSpace` registered with the
/// memory manager, with its own PML4 (kernel half shared). Dropping it destroys the space and
/// returns every frame, page-table pages and root included (after every CPU still running it
/// loaded the kernel's table).
pub struct Space {
    shared: Arc<SpaceShared>,
}

/// What a [`Space`] handle, the registry (root → space, for the page-fault path and
/// accounting) and each CPU running it share.
pub(super) struct SpaceShared {
    root: u64,
    /// The space's set of CPUs running it (shared with the `AddressSpace`), so that
    /// [`Space::activate`] needs no lock.
    active: Arc<ActiveCpus>,
    /// The space lock: the allocation map, the tables, the demand-zero reservation; held
    /// exclusively by every call, shared by page faults. `None` once the space is destroyed.
    space: RwSpinLock<Option<AddressSpace>>,
    /// Per CPU: the call of that CPU whose TLB round is in flight with the lock released, and
    /// its pages ([`SpaceShared::with_range`]).
    rounds: [RoundInFlight; MAX_CPUS],
    /// The CPUs whose slot in `rounds` holds a round in flight (bit per CPU index; set under the
    /// exclusive lock, cleared when the round is done): a call with none to wait for reads one
    /// word.
    rounds_in_flight: AtomicU64,
}

/// The pages a call may change, or whose state its result may depend on, as far as they are
/// known before it runs: at most two intervals (`[start, end)`), or every address
/// ([`CallRange::ALL`]) when the call chooses its place (`VirtualAlloc` at NULL), reports on a
/// whole allocation (`VirtualQuery`) or is not one of the calls that name their pages. A call
/// waits for the TLB rounds in flight on pages of its range only ([`SpaceShared::with_range`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallRange([(u64, u64); 2]);

impl CallRange {
    /// Every address: the call waits for every round in flight on the space.
    pub const ALL: CallRange = CallRange([(0, u64::MAX), (0, 0)]);

    /// `size` bytes at `addr` rounded out to whole 2 MiB pages (a reservation's base is rounded
    /// down to 64 KiB, and a call on part of a large page changes its one entry, so the range
    /// covers every entry the call may change); a `size` of 0 runs to the end of the address
    /// space (a release or decommit of the whole allocation based at `addr`); `addr` 0 (the call
    /// chooses the place) or a range past the end is [`ALL`](Self::ALL).
    pub fn bytes(addr: u64, size: u64) -> CallRange {
        const UNIT: u64 = address_space::LARGE_PAGE_SIZE;
        let start = addr & !(UNIT - 1);
        let end = if size == 0 { Some(u64::MAX) } else { addr.checked_add(size).and_then(|e| e.checked_next_multiple_of(UNIT)) };
        match end {
            Some(end) if addr != 0 => CallRange([(start, end), (0, 0)]),
            _ => CallRange::ALL,
        }
    }

    /// This range and the page holding `addr` (a result the call writes into guest memory).
    pub fn and_page(self, addr: u64) -> CallRange {
        let page = addr & !(address_space::PAGE_SIZE - 1);
        CallRange([self.0[0], (page, page.saturating_add(address_space::PAGE_SIZE))])
    }

    fn overlaps(&self, other: &CallRange) -> bool {
        self.0.iter().any(|a| other.0.iter().any(|b| a.0 < b.1 && b.0 < a.1))
    }
}

/// One CPU's call whose TLB round, frees and uncharge run with the space lock released
/// ([`SpaceShared::with_range`]). Written by its CPU only: the range while it holds the lock
/// exclusively, then `seq` made odd (in flight) before it releases the lock, and even again
/// when the round, frees and uncharge are done.
struct RoundInFlight {
    seq: AtomicU64,
    /// The call's [`CallRange`]: start and end of its two intervals.
    range: [AtomicU64; 4],
    /// CPUs halted waiting for this round (`lock::wait_until`).
    sleepers: AtomicU64,
}

impl RoundInFlight {
    const fn idle() -> RoundInFlight {
        RoundInFlight { seq: AtomicU64::new(0), range: [const { AtomicU64::new(0) }; 4], sleepers: AtomicU64::new(0) }
    }

    fn range(&self) -> CallRange {
        let r = |i: usize| self.range[i].load(Ordering::Relaxed);
        CallRange([(r(0), r(1)), (r(2), r(3))])
    }
}

impl SpaceShared {
    /// Runs `f` on the space with a context, holding the space lock exclusively (the frames and
    /// the charge are locked per request by `KernelFrames` / `KernelCharge`); interrupts off
    /// meanwhile. If `f` left a TLB round (a narrowing call: `AddressSpace::defer_rounds`), the
    /// lock is released for the round, the frees after it and the uncharge; every next call
    /// waits until they are done, as `f` may have changed any page ([`with_range`](Self::with_range)
    /// for a call that names its pages). `None` if the space is destroyed.
    pub(super) fn with<R>(&self, f: impl FnOnce(&mut AddressSpace, &mut VmContext<'_, PhysWindow, KernelTlb>) -> R) -> Option<R> {
        self.with_range(CallRange::ALL, f)
    }

    /// As [`with`](Self::with) for a call whose pages are `range` (every page it may change or
    /// report on): it waits only for the rounds in flight on those pages, and its own round, if it
    /// leaves one, runs with the lock **released** (not downgraded), so that the next call on
    /// other pages need not wait for it.
    ///
    /// Under the exclusive lock the call first waits, still holding it, for every round in flight
    /// on its range: only rounds registered before it took the lock (registering needs the lock),
    /// at most one per other CPU, so the wait is bounded, and no round needs the space lock to
    /// finish (a round waits for acknowledgements, which every waiting CPU serves; the frees and
    /// the uncharge take the frames' and the charge's locks only). Then the call runs
    /// (`AddressSpace::defer_rounds`); a round it left is registered under its range (this CPU's
    /// slot) before the lock is released, completed (`PendingRound::complete_on`: the round, the
    /// frees, the uncharge), and the slot cleared. Why a call on other pages cannot tell the round
    /// is still in flight, and why one on its pages must wait: the crate's `space/round.rs`
    /// ("Without the lock"). Faults take the lock shared and never wait for rounds, as while a
    /// call held the lock shared for its round.
    pub(super) fn with_range<R>(&self, range: CallRange, f: impl FnOnce(&mut AddressSpace, &mut VmContext<'_, PhysWindow, KernelTlb>) -> R) -> Option<R> {
        interrupts::without_interrupts(|| {
            let mut guard = self.space.write();
            self.wait_for_rounds(&range);
            self.in_context(|cx| {
                let (result, pending) = guard.as_mut()?.defer_rounds(cx, f);
                if let Some(pending) = pending {
                    let slot = &self.rounds[percpu::this_cpu()];
                    for (i, v) in range.0.iter().flat_map(|&(s, e)| [s, e]).enumerate() {
                        slot.range[i].store(v, Ordering::Relaxed);
                    }
                    // Odd: in flight. Seen by every later holder of the lock (its release below
                    // orders this before their acquire).
                    let seq = slot.seq.fetch_add(1, Ordering::Relaxed);
                    debug_assert!(seq % 2 == 0, "a CPU with two rounds in flight");
                    let bit = 1u64 << percpu::this_cpu();
                    self.rounds_in_flight.fetch_or(bit, Ordering::Relaxed);
                    drop(guard);
                    pending.complete_on(&self.active, cx);
                    // Even: done; the round, frees and uncharge happen before a waiter's return.
                    slot.seq.fetch_add(1, Ordering::SeqCst);
                    self.rounds_in_flight.fetch_and(!bit, Ordering::Release);
                    super::lock::wake_sleepers(&slot.sleepers);
                }
                Some(result)
            })
        })
    }

    /// Waits until no other CPU's round in flight on this space overlaps `range` (the caller
    /// holds the space lock, so no new one starts; see [`with_range`](Self::with_range)). With
    /// none in flight (every call but those that meet another CPU's round) it is one load, inline
    /// in every call's path.
    #[inline]
    fn wait_for_rounds(&self, range: &CallRange) {
        let in_flight = self.rounds_in_flight.load(Ordering::Acquire) & !(1 << percpu::this_cpu());
        if in_flight != 0 {
            self.wait_for_rounds_in_flight(in_flight, range);
        }
    }

    /// [`wait_for_rounds`](Self::wait_for_rounds) once rounds of the CPUs `in_flight` (bit per
    /// CPU index) were seen in flight.
    #[inline(never)]
    fn wait_for_rounds_in_flight(&self, mut in_flight: u64, range: &CallRange) {
        while in_flight != 0 {
            let slot = &self.rounds[in_flight.trailing_zeros() as usize];
            in_flight &= in_flight - 1;
            let seq = slot.seq.load(Ordering::Acquire);
            if seq % 2 == 1 && slot.range().overlaps(range) {
                super::lock::wait_until(&slot.sleepers, || slot.seq.load(Ordering::SeqCst) != seq);
            }
        }
    }

    /// As [`with`](Self::with) for an operation that only reads the space and its tables
    /// (`VirtualQuery`): the physical window instead of a context, so no TLB handle or work
    /// counters are set up and flushed for a call that can use neither. The lock is taken
    /// exclusively although the call only reads: page faults change entries under the shared
    /// lock, and a query reading several entries must not see two faults' changes out of order
    /// (every call takes effect atomically, host-abi §10.2).
    pub(super) fn with_mem<R>(&self, f: impl FnOnce(&AddressSpace, &PhysWindow) -> R) -> Option<R> {
        interrupts::without_interrupts(|| {
            let guard = self.space.write();
            self.wait_for_rounds(&CallRange::ALL);
            let space = guard.as_ref()?;
            Some(f(space, &manager().window))
        })
    }

    /// As [`with`](Self::with), holding the space lock shared (the page-fault path:
    /// `AddressSpace::handle_fault_shared`).
    pub(super) fn with_shared<R>(&self, f: impl FnOnce(&AddressSpace, &mut VmContext<'_, PhysWindow, KernelTlb>) -> R) -> Option<R> {
        interrupts::without_interrupts(|| {
            let guard = self.space.read();
            let space = guard.as_ref()?;
            Some(self.in_context(|cx| f(space, cx)))
        })
    }

    /// Runs `f` with a context for this space (the call's own TLB handle and work counters,
    /// added to this CPU's afterwards).
    fn in_context<R>(&self, f: impl FnOnce(&mut VmContext<'_, PhysWindow, KernelTlb>) -> R) -> R {
        let mut counters = WorkCounters::new();
        let mut tlb = KernelTlb::new(self.root);
        let mut window = manager().window;
        let result = f(&mut VmContext { frames: &mut KernelFrames, mem: &mut window, tlb: &mut tlb, charge: &mut KernelCharge, counters: &mut counters });
        frames::add_counters(&counters);
        result
    }

    /// Whether the CPU running this code holds the space lock exclusively.
    pub(super) fn held_by_this_cpu(&self) -> bool {
        self.space.written_by_this_cpu()
    }

    /// Page-table pages of the space, its root included (0 once destroyed).
    pub(super) fn table_pages(&self) -> u64 {
        interrupts::without_interrupts(|| {
            let guard = self.space.read();
            // Exact: the tables of calls whose rounds are in flight are freed first.
            self.wait_for_rounds(&CallRange::ALL);
            guard.as_ref().map_or(0, |s| 1 + s.table_pages())
        })
    }
}

/// The live space with root `root`: the one this CPU runs if that is it, else from the registry.
pub(super) fn find(root: u64) -> Option<Arc<SpaceShared>> {
    interrupts::without_interrupts(|| {
        if let Some(running) = RUNNING[percpu::this_cpu()].try_lock()
            && let Some(shared) = running.as_ref().filter(|s| s.root == root)
        {
            return Some(Arc::clone(shared));
        }
        manager().spaces.lock().get(&root).cloned()
    })
}

/// Per CPU: the space it last activated (its bit is set in that space's `ActiveCpus`), so that
/// activating another space or the kernel's table clears it, and the page-fault path finds the
/// space in CR3 without the registry. Only its own CPU changes its slot, with interrupts off;
/// the lock is never contended (the shootdown handler does not take it, the fault path only tries
/// it).
static RUNNING: [spin::Mutex<Option<Arc<SpaceShared>>>; MAX_CPUS] = [const { spin::Mutex::new(None) }; MAX_CPUS];

impl Space {
    /// Creates an empty space with the default Windows x64 layout.
    ///
    /// # Errors
    /// [`VmError::NoMemory`] if no frame is left for its root table.
    pub fn new() -> Result<Space, VmError> {
        Self::with_config(SpaceConfig { max_allocations: MAX_ALLOCATIONS_PER_SPACE, ..SpaceConfig::default() })
    }

    /// Creates an empty space with `config`.
    ///
    /// # Errors
    /// As [`AddressSpace::new`].
    pub fn with_config(config: SpaceConfig) -> Result<Space, VmError> {
        let manager = manager();
        let mut window = manager.window;
        let mut counters = WorkCounters::new();
        let space = interrupts::without_interrupts(|| AddressSpace::new(config, &mut KernelFrames, &mut window, &mut counters))?;
        let root = space.root().start_address().as_u64();
        let kernel_root = manager.kernel_root.start_address().as_u64();
        for i in 256..512u64 {
            let entry = window.read_u64(PhysAddr::new(kernel_root + i * 8));
            window.write_u64(PhysAddr::new(root + i * 8), entry);
        }
        let shared = Arc::new(SpaceShared {
            root,
            active: space.active_set(),
            space: RwSpinLock::new(Some(space)),
            rounds: [const { RoundInFlight::idle() }; MAX_CPUS],
            rounds_in_flight: AtomicU64::new(0),
        });
        interrupts::without_interrupts(|| {
            frames::add_counters(&counters);
            manager.spaces.lock().insert(root, Arc::clone(&shared));
        });
        Ok(Space { shared })
    }

    /// The physical address of the space's PML4.
    pub fn root(&self) -> u64 {
        self.shared.root
    }

    /// Makes this CPU run the space: records the CPU in the space's set of CPUs, loads the root
    /// into CR3 (unless it is there), then removes the CPU from the set of the space it ran
    /// before. Lock-free (no memory-manager lock), with interrupts off for its duration.
    ///
    /// The order is Linux's `switch_mm` (smp-and-dispatch §4): the set bit first (a locked
    /// read-modify-write, a full barrier), then the CR3 load whose walks read the tables; an
    /// operation writes its entries, then reads the set behind a full fence. So either its round
    /// targets this CPU, or this CPU's walks already see its entries. The bit in the old space is
    /// cleared only after the CR3 load has dropped the old space's translations (§4(e): no PCID,
    /// guest mappings are never global). A CPU that idles with the root loaded stays in the set
    /// (it can still walk the tables); halted lazily, it is left out of the rounds that free no
    /// table and flushes when it wakes (`tlb::enter_lazy`).
    pub fn activate(&self) {
        x86_64::instructions::interrupts::without_interrupts(|| {
            let cpu = percpu::this_cpu();
            let mut running = RUNNING[cpu].lock();
            self.shared.active.activate(cpu);
            if cr3_root() != self.shared.root {
                // SAFETY: the root maps the kernel half exactly like the kernel's own table (its
                // 256 upper entries are copies of the kernel's, whose PDPTs never change).
                unsafe { kernel_tables::activate(frame(self.shared.root)) };
            }
            if let Some(old) = running.replace(Arc::clone(&self.shared))
                && !Arc::ptr_eq(&old, &self.shared)
            {
                old.active.deactivate(cpu);
            }
        })
    }

    /// Makes this CPU run no guest space: loads the kernel's own table (unless it is in CR3) and
    /// removes the CPU from the set of the space it ran. Lock-free, interrupts off meanwhile.
    pub fn deactivate() {
        x86_64::instructions::interrupts::without_interrupts(|| {
            let cpu = percpu::this_cpu();
            let mut running = RUNNING[cpu].lock();
            let kernel = KERNEL_ROOT.load(core::sync::atomic::Ordering::Relaxed);
            if cr3_root() != kernel {
                // SAFETY: the kernel's own table maps everything the kernel uses.
                unsafe { kernel_tables::activate(frame(kernel)) };
            }
            if let Some(old) = running.take() {
                old.active.deactivate(cpu);
            }
        })
    }

    /// Whether this space is the one in this CPU's CR3.
    pub fn is_active(&self) -> bool {
        cr3_root() == self.shared.root
    }

    /// The CPUs running the space now (the targets of its TLB rounds).
    pub fn active_cpus(&self) -> address_space::paging::tlb::CpuSet {
        self.shared.active.get()
    }

    /// Runs `f` on the space with a context (frames, window, TLB, charge, counters), holding the
    /// space's lock (module docs of `memory`: what each lock protects).
    pub fn with<R>(&self, f: impl FnOnce(&mut AddressSpace, &mut VmContext<'_, PhysWindow, KernelTlb>) -> R) -> R {
        self.shared.with(f).expect("a Space handle's space is alive")
    }

    /// As [`with`](Self::with) for a call whose pages are `range`: it waits only for TLB rounds
    /// in flight on them, and its own round runs with the lock released
    /// ([`SpaceShared::with_range`]).
    pub fn with_range<R>(&self, range: CallRange, f: impl FnOnce(&mut AddressSpace, &mut VmContext<'_, PhysWindow, KernelTlb>) -> R) -> R {
        self.shared.with_range(range, f).expect("a Space handle's space is alive")
    }

    /// Runs `f` on the space and the physical window, holding the space's lock: for operations
    /// that only read (see [`SpaceShared::with_mem`]).
    pub fn with_mem<R>(&self, f: impl FnOnce(&AddressSpace, &PhysWindow) -> R) -> R {
        self.shared.with_mem(f).expect("a Space handle's space is alive")
    }

    /// Resolves a page fault at `addr` of a thread running this space (demand-zero, guard page,
    /// access violation: `AddressSpace::handle_fault`), a new frame zeroed outside the manager's
    /// lock (`memory::fault::resolve`). The page-fault path of guest threads.
    pub fn handle_fault(&self, addr: u64, access: Access) -> FaultOutcome {
        super::fault::resolve(&self.shared, addr, access).expect("a Space handle's space is alive").0
    }

    /// `VirtualAlloc` (see `AddressSpace::virtual_alloc`).
    pub fn virtual_alloc(&self, addr: u64, size: u64, alloc_type: u32, protect: u32) -> Result<u64, VmError> {
        self.with_range(CallRange::bytes(addr, size), |s, cx| s.virtual_alloc(cx, addr, size, alloc_type, protect, CriticalLevel::Task))
    }

    /// `VirtualFree`.
    pub fn virtual_free(&self, addr: u64, size: u64, free_type: u32) -> Result<(), VmError> {
        self.with_range(CallRange::bytes(addr, size), |s, cx| s.virtual_free(cx, addr, size, free_type))
    }

    /// `VirtualProtect`; returns the old protection.
    pub fn virtual_protect(&self, addr: u64, size: u64, protect: u32) -> Result<u32, VmError> {
        self.with_range(CallRange::bytes(addr, size), |s, cx| s.virtual_protect(cx, addr, size, protect))
    }

    /// `VirtualQuery`.
    pub fn virtual_query(&self, addr: u64) -> Result<MemoryBasicInformation, VmError> {
        self.with_mem(|s, mem| s.virtual_query(mem, addr))
    }

    /// `GetWriteWatch`: fills `out`, returns how many addresses it wrote.
    pub fn get_write_watch(&self, flags: u32, base: u64, size: u64, out: &mut [u64]) -> Result<usize, VmError> {
        self.with(|s, cx| s.get_write_watch(cx, flags, base, size, out))
    }

    /// `ResetWriteWatch`.
    pub fn reset_write_watch(&self, base: u64, size: u64) -> Result<(), VmError> {
        self.with_range(CallRange::bytes(base, size), |s, cx| s.reset_write_watch(cx, base, size))
    }
}

impl Drop for Space {
    fn drop(&mut self) {
        if self.is_active() {
            Space::deactivate();
        }
        let root = self.shared.root;
        interrupts::without_interrupts(|| {
            manager().spaces.lock().remove(&root);
            let mut guard = self.shared.space.write();
            self.shared.wait_for_rounds(&CallRange::ALL);
            // Every other CPU still running the space (idle ones that kept its root in CR3) loads
            // the kernel's table before the tables are freed (§4(b)); then none is left.
            let others = self.shared.active.get().without(percpu::this_cpu());
            tlb::leave_round(others, root);
            for cpu in others.iter() {
                self.shared.active.deactivate(cpu);
            }
            if let Some(space) = guard.take() {
                let root = self.shared.in_context(|cx| space.destroy(cx));
                address_space::frame::FrameSource::free(&mut KernelFrames, root).expect("a space's root frame is allocated");
            }
        })
    }
}
