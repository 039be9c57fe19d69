//! What the kernel keeps of the bootloader's boot info, which is unmapped once the kernel's own
//! tables are in (step 1 of [`super::init`]).

use alloc::vec::Vec;

use bootloader_api::BootInfo;
use bootloader_api::info::{MemoryRegion, MemoryRegionKind};
use spin::Once;
use x86_64::VirtAddr;
use x86_64::align_down;
use x86_64::registers::control::Cr3;
use x86_64::structures::paging::Translate;

use super::{PAGE_SIZE, kernel_tables};

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

pub(super) static SNAPSHOT: Once<BootSnapshot> = Once::new();

/// The boot snapshot (after [`super::init`]).
///
/// # Panics
/// If [`super::init`] has not run (a kernel bug).
pub fn boot_snapshot() -> &'static BootSnapshot {
    SNAPSHOT.get().expect("memory::init has run")
}

/// Takes the snapshot (before the boot info is unmapped).
pub(super) fn snapshot(boot_info: &BootInfo) -> BootSnapshot {
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
        let pages = boot_info.ramdisk_len.div_ceil(PAGE_SIZE);
        let frames = (0..pages)
            .map(|i| tables.translate_addr(VirtAddr::new(va + i * PAGE_SIZE)).expect("ramdisk page mapped").as_u64())
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
        firmware_tables.push((align_down(pa, PAGE_SIZE), align_down(pa, PAGE_SIZE) + PAGE_SIZE));
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
