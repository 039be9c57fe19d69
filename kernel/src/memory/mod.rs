//! The kernel's memory: frames from the real memory map, its own page tables, guest address
//! spaces, and page faults.
//!
//! [`init`] (called by `kernel::init`) does, in order:
//! 1. snapshots what it needs of the boot info ([`BootSnapshot`]): after step 4 the boot info is
//!    no longer mapped;
//! 2. builds the [`FrameAllocator`](address_space::frame::FrameAllocator) over every `Usable` and
//!    `Bootloader` region at or above 1 MiB (the first MiB holds the real-mode IVT, BIOS data and
//!    EBDA, and keeping it out also keeps physical address 0 out), with every `Bootloader` frame
//!    marked in use;
//! 3. switches on NXE, WP, PGE and programs the PAT ([`crate::arch::cpu`]);
//! 4. builds the kernel's own PML4 ([`kernel_tables`]) and loads it into CR3, then turns on SMEP
//!    and SMAP;
//! 5. frees every `Bootloader` frame the new tables do not map (the bootloader's page tables, boot
//!    info, its stage-4 data, the unmapped parts of the kernel ELF file), keeping the kernel image,
//!    the kernel stack and the ramdisk;
//! 6. sets the commit limit: the frames then available minus a kernel reserve (page-table pages
//!    and other kernel allocations come from there; see [`KERNEL_RESERVE_DIVISOR`]), so that there
//!    is no overcommit and a committed page always faults in. Half the reserve is the commit
//!    charge's page-table allowance: guest page tables beyond it are charged to the limit, so a
//!    sparse guest's tables can never eat the frames its commits were promised.
//!
//! Guest address spaces ([`Space`]) each own a PML4 whose upper half is a copy of the kernel's 256
//! upper-half entries (all pre-allocated, so they never change) and whose lower half is managed by
//! `address_space::AddressSpace`. Page faults below the canonical hole go to the space loaded in
//! CR3 ([`on_page_fault`]).
//!
//! Locking: one spin lock ([`MM`]) over the whole manager. Interrupts are never enabled yet, so
//! only a page fault can re-enter; the fault path uses `try_lock`, and a fault while the lock is
//! held is reported as the kernel bug it is.

pub mod kernel_tables;
pub mod kstack;
pub mod window;

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use address_space::frame::{FrameAllocator, PhysRange};
use address_space::paging::tlb::Tlb;
use address_space::{
    Access, AddressSpace, CommitCharge, CriticalLevel, FaultOutcome, MemoryBasicInformation, PhysMemory, SpaceConfig,
    VmContext, VmError, WorkCounters,
};
use bootloader_api::BootInfo;
use bootloader_api::info::{MemoryRegion, MemoryRegionKind};
use spin::{Mutex, Once};
use x86_64::registers::control::Cr3;
use x86_64::structures::paging::{PhysFrame, Translate};
use x86_64::{PhysAddr, VirtAddr};

use crate::arch::cpu;
use crate::arch::probe::{self, MemoryFault};
use window::PhysWindow;

const PAGE: u64 = 4096;
/// Frames below this physical address are never allocated (real-mode IVT, BIOS data, EBDA).
pub const LOW_MEMORY_END: u64 = 0x10_0000;
/// The kernel keeps `1 / KERNEL_RESERVE_DIVISOR` of the frames available after boot (at least
/// [`KERNEL_RESERVE_MIN_FRAMES`]) out of the commit limit, for page-table pages and other kernel
/// allocations. A fully populated page table costs 1/512 of what it maps, so 1/64 leaves room
/// for sparse layouts (a few committed pages per 2 MiB).
pub const KERNEL_RESERVE_DIVISOR: u64 = 64;
/// Lower bound of the kernel reserve, in frames (4 MiB).
pub const KERNEL_RESERVE_MIN_FRAMES: u64 = 1024;
/// Settings of the memory manager that can be changed at boot (`run-qemu.sh --config
/// "key=value,..."`, read from QEMU's fw_cfg file `opt/vmk/config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryConfig {
    /// `critical_reserve_percent`: the part of the commit limit only critical requests may use
    /// (host-abi §5: eAppDomainCritical may use half of it, eProcessCritical all). Default 6.
    pub critical_reserve_percent: u64,
    /// `low_threshold_percent`: free commit below this share of the limit is
    /// `eMemoryAvailableLow`. Default 12.
    pub low_threshold_percent: u64,
    /// `high_threshold_percent`: free commit above this share is `eMemoryAvailableHigh`. Default 25.
    pub high_threshold_percent: u64,
    /// `commit_limit_mb`: caps the commit limit (to show behaviour under pressure); default: none,
    /// the limit is what the frames allow.
    pub commit_limit_mb: Option<u64>,
    /// `guest_cpu_limit_s`: the CPU time a guest may use before it is ended with
    /// HOST_E_TIMEOUT (host-abi §10.1); 0, the default, is no limit. Not a memory setting, but
    /// read with the others from the same boot configuration (`crate::guest::cpu_time`).
    pub guest_cpu_limit_s: u64,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig { critical_reserve_percent: 6, low_threshold_percent: 12, high_threshold_percent: 25, commit_limit_mb: None, guest_cpu_limit_s: 0 }
    }
}

impl MemoryConfig {
    /// The defaults overridden by the boot configuration; unknown keys and bad values are reported
    /// and ignored.
    pub fn from_boot() -> MemoryConfig {
        let mut c = MemoryConfig::default();
        for (key, value) in crate::arch::fw_cfg::config_pairs() {
            let Ok(n) = value.parse::<u64>() else {
                log::warn!("config: {key}={value}: not a number, ignored");
                continue;
            };
            match key.as_str() {
                "critical_reserve_percent" if n <= 50 => c.critical_reserve_percent = n,
                "low_threshold_percent" if n <= 100 => c.low_threshold_percent = n,
                "high_threshold_percent" if n <= 100 => c.high_threshold_percent = n,
                "commit_limit_mb" if n > 0 => c.commit_limit_mb = Some(n),
                "guest_cpu_limit_s" => c.guest_cpu_limit_s = n,
                _ => {
                    log::warn!("config: {key}={value}: unknown key or out of range, ignored");
                    continue;
                }
            }
            log::info!("config: {key}={n}");
        }
        if c.high_threshold_percent < c.low_threshold_percent {
            c.high_threshold_percent = c.low_threshold_percent;
        }
        c
    }
}

static CONFIG: Once<MemoryConfig> = Once::new();

/// The memory configuration in force (defaults before [`init`]).
pub fn config() -> MemoryConfig {
    CONFIG.get().copied().unwrap_or_default()
}

/// Kernel-heap bytes one allocation of a guest space costs at most (the allocation map and the
/// free-gap tree; measured by `tests/paging.rs`).
pub const KERNEL_HEAP_PER_ALLOCATION: usize = 160;
/// The most allocations one guest space may hold, so that guests cannot exhaust the kernel heap
/// (a reservation past it is E_OUTOFMEMORY). host-abi §9 asks for at least 100,000.
pub const MAX_ALLOCATIONS_PER_SPACE: usize = 131_072;

/// What the kernel keeps of the boot info (which is unmapped once the kernel's own tables are in).
#[derive(Debug, Clone)]
pub struct BootSnapshot {
    /// The memory map, as handed over.
    pub regions: Vec<MemoryRegion>,
    /// RAM (usable and bootloader-owned regions), merged, as physical [start, end).
    pub ram: Vec<(u64, u64)>,
    /// Physical address and length of the kernel ELF file.
    pub kernel_phys: u64,
    /// Length of the kernel ELF file.
    pub kernel_len: u64,
    /// Virtual address the kernel image was loaded at.
    pub kernel_image_offset: u64,
    /// Lowest address of the kernel stack.
    pub stack_bottom: u64,
    /// Size of the kernel stack.
    pub stack_len: u64,
    /// Virtual base of the physical-memory window.
    pub window_offset: u64,
    /// The ramdisk: its length and the physical address of each of its pages.
    pub ramdisk: Option<(u64, Vec<u64>)>,
    /// Physical address of the ACPI RSDP, if the firmware has one.
    pub rsdp: Option<u64>,
    /// Physical ranges the physical-memory window maps besides RAM: the firmware's ACPI regions
    /// (E820 types 3 and 4, UEFI types 9 and 10) and the RSDP's page, where the ACPI tables are.
    pub firmware_tables: Vec<(u64, u64)>,
}

impl BootSnapshot {
    /// Whether the physical-memory window maps `[pa, pa + len)`: it maps every 2 MiB block that
    /// holds RAM or one of [`firmware_tables`](Self::firmware_tables) (`kernel_tables::build`).
    pub fn window_covers(&self, pa: u64, len: u64) -> bool {
        const BLOCK: u64 = 2 << 20;
        let Some(end) = pa.checked_add(len.max(1)) else { return false };
        let mut block = pa & !(BLOCK - 1);
        while block < end {
            let mapped = self.ram.iter().chain(&self.firmware_tables).any(|r| r.0 < block + BLOCK && r.1 > block);
            if !mapped {
                return false;
            }
            block += BLOCK;
        }
        true
    }
}

static SNAPSHOT: Once<BootSnapshot> = Once::new();

/// The boot snapshot (after [`init`]).
///
/// # Panics
/// If [`init`] has not run (a kernel bug).
pub fn boot_snapshot() -> &'static BootSnapshot {
    SNAPSHOT.get().expect("memory::init has run")
}

/// The whole memory manager, behind [`MM`].
pub struct MemoryManager {
    /// Physical frames.
    pub frames: FrameAllocator,
    /// The system-wide commit charge.
    pub charge: CommitCharge,
    /// Work done by address-space operations.
    pub counters: WorkCounters,
    /// The physical-memory window.
    pub window: PhysWindow,
    kernel_root: PhysFrame,
    kernel_table_pages: u64,
    spaces: BTreeMap<u64, AddressSpace>,
    active_root: u64,
    ram_bytes: u64,
    usable_bytes: u64,
    boot_frames_returned: u64,
    /// The commit limit set at boot (what the frames allow, or the configured cap).
    boot_commit_limit: u64,
    /// Kernel-stack slots in use (bit i: slot i, see [`kstack`]).
    kstack_slots: u128,
}

/// Runs `f` with physical memory, through the window (after [`init`]).
pub fn with_phys(f: &mut crate::arch::smp::PhysAccess<'_>) {
    with_mm(|mm| f(&mut mm.window))
}

/// The memory manager (after [`init`]).
pub static MM: Mutex<Option<MemoryManager>> = Mutex::new(None);

fn snapshot(boot_info: &BootInfo) -> BootSnapshot {
    let regions: Vec<MemoryRegion> = boot_info.memory_regions.iter().copied().collect();
    let mut ram: Vec<(u64, u64)> = Vec::new();
    for r in regions.iter().filter(|r| matches!(r.kind, MemoryRegionKind::Usable | MemoryRegionKind::Bootloader)) {
        match ram.last_mut() {
            Some(last) if last.1 == r.start => last.1 = r.end,
            _ => ram.push((r.start, r.end)),
        }
    }
    let window_offset = boot_info.physical_memory_offset.into_option().expect("the bootloader mapped physical memory");
    let ramdisk = boot_info.ramdisk_addr.into_option().filter(|_| boot_info.ramdisk_len > 0).map(|va| {
        let (root, _) = Cr3::read();
        // SAFETY: the bootloader's PML4 is mapped by its physical-memory window; only read here.
        let tables = unsafe { kernel_tables::tables_at(window_offset, root.start_address().as_u64()) };
        let pages = boot_info.ramdisk_len.div_ceil(PAGE);
        let frames = (0..pages)
            .map(|i| tables.translate_addr(VirtAddr::new(va + i * PAGE)).expect("ramdisk page mapped").as_u64())
            .collect();
        (boot_info.ramdisk_len, frames)
    });
    let rsdp = boot_info.rsdp_addr.into_option();
    let mut firmware_tables: Vec<(u64, u64)> = regions
        .iter()
        .filter(|r| matches!(r.kind, MemoryRegionKind::UnknownBios(3 | 4) | MemoryRegionKind::UnknownUefi(9 | 10)))
        .map(|r| (r.start, r.end))
        .collect();
    if let Some(pa) = rsdp {
        firmware_tables.push((pa & !(PAGE - 1), (pa & !(PAGE - 1)) + PAGE));
    }
    BootSnapshot {
        regions,
        ram,
        kernel_phys: boot_info.kernel_addr,
        kernel_len: boot_info.kernel_len,
        kernel_image_offset: boot_info.kernel_image_offset,
        stack_bottom: boot_info.kernel_stack_bottom,
        stack_len: boot_info.kernel_stack_len,
        window_offset,
        ramdisk,
        rsdp,
        firmware_tables,
    }
}

fn frame(pa: u64) -> PhysFrame {
    PhysFrame::containing_address(PhysAddr::new(pa))
}

/// Takes over physical memory and paging (see the module docs). Call once, after the GDT and IDT
/// are loaded and the heap works.
pub fn init(boot_info: &'static BootInfo) {
    let snap = SNAPSHOT.call_once(|| snapshot(boot_info));
    let limit = snap.ram.iter().map(|r| r.1).max().unwrap_or(0);
    // SAFETY: the bootloader maps all physical memory at window_offset (we asked it to), and
    // `build` below maps every RAM frame at the same place before the switch.
    let mut window = unsafe { PhysWindow::new(snap.window_offset, limit.div_ceil(2 << 20) * (2 << 20)) };

    let ranges: Vec<PhysRange> = snap
        .ram
        .iter()
        .filter(|r| r.1 > LOW_MEMORY_END)
        .map(|r| PhysRange { start: PhysAddr::new(r.0.max(LOW_MEMORY_END)), end: PhysAddr::new(r.1) })
        .collect();
    let mut frames = FrameAllocator::new(&ranges);
    for r in snap.regions.iter().filter(|r| r.kind == MemoryRegionKind::Bootloader) {
        let start = r.start.max(LOW_MEMORY_END) & !(PAGE - 1);
        for pa in (start..r.end.div_ceil(PAGE) * PAGE).step_by(PAGE as usize) {
            let _ = frames.mark_allocated(frame(pa));
        }
    }

    let features = cpu::features();
    cpu::enable_paging_features(&features);
    // SAFETY: CR3 still holds the bootloader's tables, the window is its physical mapping, and
    // the snapshot was taken from its boot info.
    let tables = unsafe { kernel_tables::build(&mut frames, &mut window, snap, features.gib_pages) };
    // SAFETY: the new tables map the kernel image, its stack and the window at the addresses in
    // use (kernel_tables::build); the GDT, IDT and TSS live in the kernel image.
    unsafe { kernel_tables::activate(tables.root) };
    cpu::enable_user_protection(&features);
    probe::set_smap(cpu::smap_enabled());

    // Step 5: give back what the bootloader used and the kernel no longer maps.
    let mut keep = tables.kept_frames.clone();
    if let Some((_, pages)) = &snap.ramdisk {
        keep.extend(pages.iter().copied());
    }
    let mut returned = 0;
    for r in snap.regions.iter().filter(|r| r.kind == MemoryRegionKind::Bootloader) {
        let start = r.start.max(LOW_MEMORY_END) & !(PAGE - 1);
        for pa in (start..r.end.div_ceil(PAGE) * PAGE).step_by(PAGE as usize) {
            if !keep.contains(&pa) && frames.free(frame(pa)).is_ok() {
                returned += 1;
            }
        }
    }

    let config = *CONFIG.call_once(MemoryConfig::from_boot);
    let available = frames.available_frames();
    let reserve = (available / KERNEL_RESERVE_DIVISOR).max(KERNEL_RESERVE_MIN_FRAMES).min(available);
    let mut limit_pages = available - reserve;
    if let Some(mb) = config.commit_limit_mb {
        limit_pages = limit_pages.min(mb * 256);
    }
    // Half the kernel reserve (and every frame a configured cap leaves out) is the page-table
    // allowance: tables beyond it are charged to the limit (address-space charge.rs).
    let table_allowance = available - limit_pages - reserve / 2;
    let charge = CommitCharge::new(limit_pages, limit_pages * config.critical_reserve_percent / 100).with_table_allowance(table_allowance);
    let usable_bytes = snap.regions.iter().filter(|r| r.kind == MemoryRegionKind::Usable).map(|r| r.end - r.start).sum();
    let ram_bytes = snap.ram.iter().map(|r| r.1 - r.0).sum();
    *MM.lock() = Some(MemoryManager {
        frames,
        charge,
        counters: WorkCounters::default(),
        window,
        kernel_root: tables.root,
        kernel_table_pages: tables.table_pages,
        spaces: BTreeMap::new(),
        active_root: tables.root.start_address().as_u64(),
        ram_bytes,
        usable_bytes,
        boot_frames_returned: returned,
        boot_commit_limit: limit_pages,
        kstack_slots: 0,
    });
    kstack::prepare();
    log::info!(
        "memory: kernel page tables in CR3 ({} table pages), {} bootloader frames returned, NX/WP on, SMEP {}, SMAP {}, PAT entry 4 = WC",
        tables.table_pages,
        returned,
        if cpu::smep_enabled() { "on" } else { "absent" },
        if cpu::smap_enabled() { "on" } else { "absent" }
    );
}

/// Runs `f` on the memory manager.
///
/// # Panics
/// If [`init`] has not run, or (a kernel bug) if called from the page-fault path.
pub fn with_mm<R>(f: impl FnOnce(&mut MemoryManager) -> R) -> R {
    let mut guard = MM.lock();
    f(guard.as_mut().expect("memory::init has run"))
}

/// TLB invalidation for one address space: real `invlpg` / CR3 reloads only when that space is
/// the one in CR3 (a space that is not loaded has no cached translations: every switch to it
/// reloads CR3, which drops all non-global entries, and guest mappings are never global).
pub struct KernelTlb {
    active: bool,
}

impl Tlb for KernelTlb {
    fn invalidate_page(&mut self, addr: VirtAddr) {
        if self.active {
            x86_64::instructions::tlb::flush(addr);
        }
    }

    fn flush_all(&mut self) {
        if self.active {
            // Reloading CR3 drops every non-global translation, i.e. all of the guest's.
            x86_64::instructions::tlb::flush_all();
        }
    }
}

impl MemoryManager {
    fn context<'a>(
        frames: &'a mut FrameAllocator,
        window: &'a mut PhysWindow,
        tlb: &'a mut KernelTlb,
        charge: &'a mut CommitCharge,
        counters: &'a mut WorkCounters,
    ) -> VmContext<'a, PhysWindow, KernelTlb> {
        VmContext { frames, mem: window, tlb, charge, counters }
    }

    /// Runs `f` on the space with root `root` and a context for it.
    fn with_space<R>(
        &mut self,
        root: u64,
        f: impl FnOnce(&mut AddressSpace, &mut VmContext<'_, PhysWindow, KernelTlb>) -> R,
    ) -> Option<R> {
        let mut tlb = KernelTlb { active: self.active_root == root };
        let space = self.spaces.get_mut(&root)?;
        let mut cx = Self::context(&mut self.frames, &mut self.window, &mut tlb, &mut self.charge, &mut self.counters);
        Some(f(space, &mut cx))
    }

    /// Page-table pages in use: the kernel's and every space's (roots included).
    pub fn page_table_pages(&self) -> u64 {
        self.kernel_table_pages
            + self.spaces.values().map(|s| 1 + s.table_pages()).sum::<u64>()
    }

    /// The figures of [`Accounting`].
    pub fn accounting(&self) -> Accounting {
        let (heap_used, heap_free) = crate::heap::usage();
        Accounting {
            ram_bytes: self.ram_bytes,
            usable_bytes: self.usable_bytes,
            managed_bytes: self.frames.total_frames() * PAGE,
            free_bytes: self.frames.free_frames() * PAGE,
            committed_bytes: self.charge.committed_pages() * PAGE,
            commit_limit_bytes: self.charge.limit_pages() * PAGE,
            critical_reserve_bytes: self.charge.critical_reserve_pages() * PAGE,
            page_table_pages: self.page_table_pages(),
            kernel_heap_used: heap_used as u64,
            kernel_heap_size: (heap_used + heap_free) as u64,
            boot_frames_returned: self.boot_frames_returned,
            spaces: self.spaces.len(),
        }
    }
}

/// Memory accounting: what `print_accounting` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accounting {
    /// RAM handed over by the bootloader (usable + bootloader-owned regions).
    pub ram_bytes: u64,
    /// Of which the firmware reported usable.
    pub usable_bytes: u64,
    /// Managed by the frame allocator (RAM above 1 MiB).
    pub managed_bytes: u64,
    /// Free frames now (reserved-for-commit ones included).
    pub free_bytes: u64,
    /// Commit charge now.
    pub committed_bytes: u64,
    /// The commit limit.
    pub commit_limit_bytes: u64,
    /// Part of the limit only critical requests may use.
    pub critical_reserve_bytes: u64,
    /// Page-table pages in use (kernel and guest spaces).
    pub page_table_pages: u64,
    /// Kernel heap in use.
    pub kernel_heap_used: u64,
    /// Kernel heap size.
    pub kernel_heap_size: u64,
    /// Frames the bootloader used that went back to the allocator.
    pub boot_frames_returned: u64,
    /// Live guest address spaces.
    pub spaces: usize,
}

/// Sets a new commit limit (and the critical reserve from the configuration), for tests and
/// demonstrations of memory pressure. Fails (returning false) while anything is committed, so the
/// limit never drops below what is charged, and never raises the limit above what the frames allow
/// (the limit set at boot).
pub fn set_commit_limit(pages: u64) -> bool {
    with_mm(|mm| {
        if mm.charge.committed_pages() != 0 {
            return false;
        }
        let ceiling = mm.boot_commit_limit;
        let limit = pages.min(ceiling);
        // The frames the limit gives up (or takes back) go to (or come from) the table allowance.
        let table_allowance = mm.charge.table_allowance() + mm.charge.system_limit_pages() - limit;
        mm.charge = CommitCharge::new(limit, limit * config().critical_reserve_percent / 100).with_table_allowance(table_allowance);
        true
    })
}

/// The current memory accounting.
pub fn accounting() -> Accounting {
    with_mm(|mm| mm.accounting())
}

/// Prints the memory accounting.
pub fn print_accounting() {
    use crate::boot_memory::Size;
    let a = accounting();
    crate::kprintln!("memory accounting:");
    crate::kprintln!("  RAM            {:>11}  (usable {}, managed above 1 MiB {})", Size(a.ram_bytes), Size(a.usable_bytes), Size(a.managed_bytes));
    crate::kprintln!("  free           {:>11}  ({} bootloader frames returned)", Size(a.free_bytes), a.boot_frames_returned);
    crate::kprintln!("  committed      {:>11}  of a commit limit of {} ({} critical reserve)", Size(a.committed_bytes), Size(a.commit_limit_bytes), Size(a.critical_reserve_bytes));
    crate::kprintln!("  page tables    {:>11}  ({} pages; {} guest spaces)", Size(a.page_table_pages * PAGE), a.page_table_pages, a.spaces);
    crate::kprintln!("  kernel heap    {:>11}  used of {}", Size(a.kernel_heap_used), Size(a.kernel_heap_size));
}

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

/// What the page-fault handler should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageFaultVerdict {
    /// The page is mapped now: return and retry the access.
    Resolved,
    /// Guest memory, but the access is refused: a guard page or an access violation.
    Refused(MemoryFault),
    /// Not guest memory (kernel half, no space loaded, or the manager was busy): a kernel fault.
    NotGuestMemory,
}

/// Consecutive "spurious" resolutions of the same fault (the page was already mapped and allowed,
/// so the manager only invalidated the TLB entry). A stale entry explains one such fault; a run of
/// them means the hardware keeps refusing what the manager allows (a kernel bug), which must be
/// reported rather than spun on.
static REPEAT_ADDR: AtomicU64 = AtomicU64::new(u64::MAX);
static REPEAT_COUNT: AtomicU64 = AtomicU64::new(0);

/// The access a page fault's error code describes (Intel SDM Vol. 3A §4.7): an instruction fetch,
/// a write, or else a read.
pub fn fault_access(error_code: u64) -> Access {
    use probe::pf;
    if error_code & pf::INSTRUCTION != 0 {
        Access::Execute
    } else if error_code & pf::WRITE != 0 {
        Access::Write
    } else {
        Access::Read
    }
}

/// The page-fault entry of the memory manager: `addr` from CR2, `error_code` as pushed by the
/// CPU, `rflags` of the interrupted context.
pub fn on_page_fault(addr: u64, error_code: u64, rflags: u64) -> PageFaultVerdict {
    use probe::pf;
    if addr >= 0x0000_8000_0000_0000 || error_code & pf::RESERVED != 0 {
        return PageFaultVerdict::NotGuestMemory;
    }
    let access = fault_access(error_code);
    let violation = |code| PageFaultVerdict::Refused(MemoryFault { code, access: access.code(), address: addr });
    let supervisor = error_code & pf::USER == 0;
    if supervisor && error_code & pf::PRESENT != 0 {
        // Ring 0 touched a present guest page and was refused: SMEP (an instruction fetch), or
        // SMAP outside a stac window. Either is refused whatever the page allows.
        const RFLAGS_AC: u64 = 1 << 18;
        if access == Access::Execute && cpu::smep_enabled() {
            return violation(MemoryFault::ACCESS_VIOLATION);
        }
        if cpu::smap_enabled() && rflags & RFLAGS_AC == 0 {
            return violation(MemoryFault::ACCESS_VIOLATION);
        }
    }
    let Some(mut guard) = MM.try_lock() else { return PageFaultVerdict::NotGuestMemory };
    let Some(mm) = guard.as_mut() else { return PageFaultVerdict::NotGuestMemory };
    let root = Cr3::read().0.start_address().as_u64();
    let populated_before = mm.counters.faults_resolved;
    let Some(outcome) = mm.with_space(root, |space, cx| space.handle_fault(cx, addr, access)) else {
        return PageFaultVerdict::NotGuestMemory;
    };
    match outcome {
        FaultOutcome::Resolved if mm.counters.faults_resolved != populated_before => {
            REPEAT_COUNT.store(0, Ordering::SeqCst);
            PageFaultVerdict::Resolved
        }
        FaultOutcome::Resolved => {
            let key = addr ^ error_code.rotate_left(48);
            if REPEAT_ADDR.swap(key, Ordering::SeqCst) == key {
                if REPEAT_COUNT.fetch_add(1, Ordering::SeqCst) >= 8 {
                    REPEAT_COUNT.store(0, Ordering::SeqCst);
                    return PageFaultVerdict::NotGuestMemory;
                }
            } else {
                REPEAT_COUNT.store(0, Ordering::SeqCst);
            }
            PageFaultVerdict::Resolved
        }
        FaultOutcome::GuardPage { .. } => violation(MemoryFault::GUARD_PAGE),
        FaultOutcome::AccessViolation { .. } => violation(MemoryFault::ACCESS_VIOLATION),
    }
}
