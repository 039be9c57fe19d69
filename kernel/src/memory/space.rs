//! [`Space`]: a guest address space registered with the memory manager, and which CPUs run it.

use alloc::sync::Arc;

use address_space::paging::tlb::ActiveCpus;
use address_space::{Access, AddressSpace, CriticalLevel, FaultOutcome, MemoryBasicInformation, PhysMemory, SpaceConfig, VmContext, VmError};
use x86_64::PhysAddr;

use super::tlb::{self, KERNEL_ROOT, cr3_root};
use super::window::PhysWindow;
use super::{KernelTlb, MAX_ALLOCATIONS_PER_SPACE, MemoryManager, frame, kernel_tables, with_mm};
use crate::arch::percpu::{self, MAX_CPUS};

/// A guest address space: a handle to an `address_space::AddressSpace` registered with the
/// memory manager, with its own PML4 (kernel half shared). Dropping it destroys the space and
/// returns every frame, page-table pages and root included (after every CPU still running it
/// loaded the kernel's table).
pub struct Space {
    root: u64,
    /// The space's set of CPUs running it (shared with the `AddressSpace`), so that
    /// [`activate`](Self::activate) needs no lock.
    active: Arc<ActiveCpus>,
}

/// Per CPU: the `ActiveCpus` set of the space it last activated (its bit is set there), so that
/// activating another space or the kernel's table clears it. Only its own CPU touches its slot,
/// with interrupts off; the lock is never contended (the shootdown handler does not take it).
#[allow(clippy::type_complexity)]
static RUNNING: [spin::Mutex<Option<Arc<ActiveCpus>>>; MAX_CPUS] = [const { spin::Mutex::new(None) }; MAX_CPUS];

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
        with_mm(|mm| {
            let space = AddressSpace::new(config, &mut mm.frames, &mut mm.window, &mut mm.counters)?;
            let root = space.root().start_address().as_u64();
            let kernel_root = mm.kernel_root.start_address().as_u64();
            for i in 256..512u64 {
                let entry = mm.window.read_u64(PhysAddr::new(kernel_root + i * 8));
                mm.window.write_u64(PhysAddr::new(root + i * 8), entry);
            }
            let active = space.active_set();
            mm.spaces.insert(root, space);
            Ok(Space { root, active })
        })
    }

    /// The physical address of the space's PML4.
    pub fn root(&self) -> u64 {
        self.root
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
            self.active.activate(cpu);
            if cr3_root() != self.root {
                // SAFETY: the root maps the kernel half exactly like the kernel's own table (its
                // 256 upper entries are copies of the kernel's, whose PDPTs never change).
                unsafe { kernel_tables::activate(frame(self.root)) };
            }
            if let Some(old) = running.replace(Arc::clone(&self.active))
                && !Arc::ptr_eq(&old, &self.active)
            {
                old.deactivate(cpu);
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
                old.deactivate(cpu);
            }
        })
    }

    /// Whether this space is the one in this CPU's CR3.
    pub fn is_active(&self) -> bool {
        cr3_root() == self.root
    }

    /// The CPUs running the space now (the targets of its TLB rounds).
    pub fn active_cpus(&self) -> address_space::paging::tlb::CpuSet {
        self.active.get()
    }

    /// Runs `f` on the space with a context (frames, window, TLB, charge, counters).
    pub fn with<R>(&self, f: impl FnOnce(&mut AddressSpace, &mut VmContext<'_, PhysWindow, KernelTlb>) -> R) -> R {
        with_mm(|mm| mm.with_space(self.root, f).expect("a Space handle's space is registered"))
    }

    /// Resolves a page fault at `addr` of a thread running this space (demand-zero, guard page,
    /// access violation: `AddressSpace::handle_fault`), a new frame zeroed outside the manager's
    /// lock (`memory::fault::resolve`). The page-fault path of guest threads.
    pub fn handle_fault(&self, addr: u64, access: Access) -> FaultOutcome {
        super::fault::resolve(self.root, addr, access).expect("a Space handle's space is registered").0
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
        self.with(|s, cx| s.virtual_query(cx.mem, addr))
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
        with_mm(|mm| {
            // Every other CPU still running the space (idle ones that kept its root in CR3) loads
            // the kernel's table before the tables are freed (§4(b)); then none is left.
            let others = self.active.get().without(percpu::this_cpu());
            tlb::leave_round(others, self.root);
            for cpu in others.iter() {
                self.active.deactivate(cpu);
            }
            if let Some(space) = mm.spaces.remove(&self.root) {
                let mut tlb = KernelTlb::new(self.root);
                let mut cx = MemoryManager::context(&mut mm.frames, &mut mm.window, &mut tlb, &mut mm.charge, &mut mm.counters);
                let root = space.destroy(&mut cx);
                mm.frames.free(root).expect("a space's root frame is allocated");
            }
        })
    }
}
