//! The memory map the bootloader hands over: printing it and summing it per kind.
//!
//! Only `Usable` regions are RAM the kernel may allocate from. `Bootloader` regions hold the
//! kernel image, page tables, boot info and ramdisk as the bootloader laid them out; `UnknownBios`
//! and `UnknownUefi` regions are firmware's (reserved, ACPI, MMIO holes...). Under TCG the BIOS map
//! reports large reserved ranges, so the sum of all regions far exceeds the guest's RAM: the totals
//! are kept per kind for that reason.

use bootloader_api::info::{MemoryRegion, MemoryRegionKind};

/// Bytes per kind of region.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MemoryTotals {
    /// RAM free for the kernel to allocate.
    pub usable: u64,
    /// Used by the bootloader (kernel image, its page tables, boot info, ramdisk).
    pub bootloader: u64,
    /// Anything the firmware reported with its own type.
    pub firmware: u64,
    /// Number of regions.
    pub regions: usize,
}

/// Sums the regions per kind.
pub fn totals(regions: &[MemoryRegion]) -> MemoryTotals {
    let mut totals = MemoryTotals { regions: regions.len(), ..MemoryTotals::default() };
    for region in regions {
        let size = region.end.saturating_sub(region.start);
        match region.kind {
            MemoryRegionKind::Usable => totals.usable += size,
            MemoryRegionKind::Bootloader => totals.bootloader += size,
            _ => totals.firmware += size,
        }
    }
    totals
}

fn kind_name(kind: MemoryRegionKind) -> (&'static str, Option<u32>) {
    match kind {
        MemoryRegionKind::Usable => ("usable", None),
        MemoryRegionKind::Bootloader => ("bootloader", None),
        MemoryRegionKind::UnknownUefi(t) => ("uefi-type", Some(t)),
        MemoryRegionKind::UnknownBios(t) => ("bios-type", Some(t)),
        _ => ("unknown", None),
    }
}

/// Human-readable size: "640 KiB", "255.4 MiB", "3.0 GiB".
pub struct Size(pub u64);

impl core::fmt::Display for Size {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        const KIB: u64 = 1024;
        let b = self.0;
        if b < KIB {
            write!(f, "{b} B")
        } else if b < KIB * KIB {
            write!(f, "{}.{} KiB", b / KIB, (b % KIB) * 10 / KIB)
        } else if b < KIB * KIB * KIB {
            write!(f, "{}.{} MiB", b / (KIB * KIB), (b % (KIB * KIB)) * 10 / (KIB * KIB))
        } else {
            let g = KIB * KIB * KIB;
            write!(f, "{}.{} GiB", b / g, (b % g) * 10 / g)
        }
    }
}

/// Prints the map (adjacent regions of the same kind merged, as UEFI splits usable RAM into many
/// small entries) and the totals per kind.
pub fn print_map(regions: &[MemoryRegion]) {
    let mut merged: alloc::vec::Vec<MemoryRegion> = alloc::vec::Vec::new();
    for region in regions {
        match merged.last_mut() {
            Some(last) if last.kind == region.kind && last.end == region.start => last.end = region.end,
            _ => merged.push(*region),
        }
    }
    crate::kprintln!("memory map: {} regions from the bootloader, {} after merging adjacent ones of a kind", regions.len(), merged.len());
    crate::kprintln!("  {:>18}  {:>18}  {:>11}  kind", "start", "end", "size");
    for region in &merged {
        let (name, tag) = kind_name(region.kind);
        let size = Size(region.end.saturating_sub(region.start)).to_string_fixed();
        match tag {
            Some(t) => crate::kprintln!("  {:#018x}  {:#018x}  {:>11}  {name} {t}", region.start, region.end, size),
            None => crate::kprintln!("  {:#018x}  {:#018x}  {:>11}  {name}", region.start, region.end, size),
        }
    }
    let t = totals(regions);
    crate::kprintln!(
        "memory totals: usable {} (RAM to allocate), bootloader {}, firmware-reserved {}",
        Size(t.usable),
        Size(t.bootloader),
        Size(t.firmware)
    );
}

impl Size {
    fn to_string_fixed(&self) -> alloc::string::String {
        alloc::format!("{self}")
    }
}
