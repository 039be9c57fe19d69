//! [`Space`]: a guest address space registered with the memory manager, and which CPUs run it.

use alloc::sync::Arc;

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
}

impl SpaceShared {
    /// Runs `f` on the space with a context, holding the space lock exclusively (the frames and
    /// the charge are locked per request by `KernelFrames` / `KernelCharge`); interrupts off
    /// meanwhile. If `f` left a TLB round (a narrowing call: `AddressSpace::defer_rounds`), the
    /// lock is then downgraded to shared for the round, the frees after it and the uncharge
    /// (`PendingRound::complete`): faults on the space go on meanwhile, the next call waits
    /// until they are done (module docs of `memory`). `None` if the space is destroyed.
    pub(super) fn with<R>(&self, f: impl FnOnce(&mut AddressSpace, &mut VmContext<'_, PhysWindow, KernelTlb>) -> R) -> Option<R> {
        interrupts::without_interrupts(|| {
            let mut guard = self.space.write();
            self.in_context(|cx| {
                let (result, pending) = guard.as_mut()?.defer_rounds(cx, f);
                if let Some(pending) = pending {
                    let shared = guard.downgrade();
                    pending.complete(shared.as_ref().expect("the space lives: its lock is held"), cx);
                }
                Some(result)
            })
        })
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
        interrupts::without_interrupts(|| self.space.read().as_ref().map_or(0, |s| 1 + s.table_pages()))
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
        let shared = Arc::new(SpaceShared { root, active: space.active_set(), space: RwSpinLock::new(Some(space)) });
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
    /// guest mappings are never global). A CPU that idles with the root loaded stays in the set:
    /// it can still walk the tables, so rounds still target it.
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
        self.with(|s, cx| s.virtual_alloc(cx, addr, size, alloc_type, protect, CriticalLevel::Task))
    }

    /// `VirtualFree`.
    pub fn virtual_free(&self, addr: u64, size: u64, free_type: u32) -> Result<(), VmError> {
        self.with(|s, cx| s.virtual_free(cx, addr, size, free_type))
    }

    /// `VirtualProtect`; returns the old protection.
    pub fn virtual_protect(&self, addr: u64, size: u64, protect: u32) -> Result<u32, VmError> {
        self.with(|s, cx| s.virtual_protect(cx, addr, size, protect))
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
        self.with(|s, cx| s.reset_write_watch(cx, base, size))
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
