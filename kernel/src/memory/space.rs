//! [`Space`]: a guest address space registered with the memory manager.

use address_space::{AddressSpace, CriticalLevel, MemoryBasicInformation, PhysMemory, SpaceConfig, VmContext, VmError};
use x86_64::PhysAddr;

use super::window::PhysWindow;
use super::{KernelTlb, MAX_ALLOCATIONS_PER_SPACE, MemoryManager, frame, kernel_tables, with_mm};

/// A guest address space: a handle to an `address_space::AddressSpace` registered with the
/// memory manager, with its own PML4 (kernel half shared). Dropping it destroys the space and
/// returns every frame, page-table pages and root included.
pub struct Space {
    root: u64,
}

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
            mm.spaces.insert(root, space);
            Ok(Space { root })
        })
    }

    /// The physical address of the space's PML4.
    pub fn root(&self) -> u64 {
        self.root
    }

    /// Loads this space into CR3 (the kernel half is the same in every space).
    pub fn activate(&self) {
        with_mm(|mm| {
            // SAFETY: the root maps the kernel half exactly like the kernel's own table (its 256
            // upper entries are copies of the kernel's, whose PDPTs never change).
            unsafe { kernel_tables::activate(frame(self.root)) };
            mm.active_root = self.root;
        })
    }

    /// Leaves this space on the calling CPU (the scheduler calls it when the CPU stops running
    /// the space's threads): loads the kernel's own table if this space is in this CPU's CR3, so
    /// that no CPU holds a space's tables once it is destroyed. Safe to call on a CPU that does
    /// not run the space (nothing changes).
    pub fn deactivate(&self) {
        with_mm(|mm| {
            if x86_64::registers::control::Cr3::read().0.start_address().as_u64() == self.root {
                // SAFETY: the kernel's own table maps everything the kernel uses.
                unsafe { kernel_tables::activate(mm.kernel_root) };
            }
        })
    }

    /// Whether this space is the one in CR3.
    pub fn is_active(&self) -> bool {
        with_mm(|mm| mm.active_root == self.root)
    }

    /// Runs `f` on the space with a context (frames, window, TLB, charge, counters).
    pub fn with<R>(&self, f: impl FnOnce(&mut AddressSpace, &mut VmContext<'_, PhysWindow, KernelTlb>) -> R) -> R {
        with_mm(|mm| mm.with_space(self.root, f).expect("a Space handle's space is registered"))
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
        with_mm(|mm| {
            if mm.active_root == self.root {
                // SAFETY: the kernel's own table maps everything the kernel uses.
                unsafe { kernel_tables::activate(mm.kernel_root) };
                mm.active_root = mm.kernel_root.start_address().as_u64();
            }
            if let Some(space) = mm.spaces.remove(&self.root) {
                let mut tlb = KernelTlb { active: false };
                let mut cx = MemoryManager::context(&mut mm.frames, &mut mm.window, &mut tlb, &mut mm.charge, &mut mm.counters);
                let root = space.destroy(&mut cx);
                mm.frames.free(root).expect("a space's root frame is allocated");
            }
        })
    }
}

