//! The kernel's own page tables, built at boot from what the bootloader left.
//!
//! ```text
//!  0x0000_0000_0000_0000 ┌──────────────────────────────┐
//!                        │ lower half: guests only       │  empty in the kernel's table;
//!                        │ (address-space manager)       │  each guest space fills its own
//!  0x0000_8000_0000_0000 ├──────────────────────────────┤
//!                        │ non-canonical hole            │
//!  0xffff_8000_0000_0000 ├──────────────────────────────┤  KERNEL_SPACE_START
//!                        │ kernel image (bootloader's    │  text R+X, rodata R+NX, RELRO R+NX,
//!                        │ choice), kernel stack with an │  data/bss (heap, IST stacks with a
//!                        │                               │  guard page each) RW+NX,
//!                        │ unmapped guard page below it, │  stack RW+NX; all global, supervisor
//!                        │ physical-memory window,       │  window RW+NX, 2 MiB pages, supervisor
//!                        │ local APIC page, kernel stacks│  APIC page UC+NX (arch::apic::MMIO_VA)
//!  0xffff_ffff_ffff_ffff └──────────────────────────────┘
//! ```
//!
//! The bootloader already put every kernel mapping in the upper half (see
//! `BOOTLOADER_CONFIG.mappings.dynamic_range_start`), at addresses the kernel keeps: the new
//! table maps the same virtual pages to the same frames, with the kernel's own permissions
//! taken from the kernel ELF's program headers (the bootloader hands over the file's physical
//! location). Every one of the 256 upper-half PML4 entries gets its PDPT now, so that a guest
//! space can share the whole kernel half by copying those 256 entries once, and later kernel
//! mappings still appear in every space.
//!
//! Nothing the kernel does not map survives: boot info, the bootloader's GDT, its page tables and
//! the rest of its memory are given back to the frame allocator once CR3 points at the new table
//! (see [`super::init`]).

use alloc::collections::BTreeSet;
use alloc::vec::Vec;

use address_space::PAGE_SIZE;
use address_space::PhysMemory;
use address_space::frame::FrameAllocator;
use x86_64::align_down;
use x86_64::registers::control::{Cr3, Cr3Flags};
use x86_64::structures::paging::{
    Mapper, OffsetPageTable, Page, PageTable, PageTableFlags as F, PhysFrame, Size2MiB, Size4KiB, Translate,
};
use x86_64::{PhysAddr, VirtAddr};

use super::window::PhysWindow;
use super::BootSnapshot;

/// What building the tables produced.
pub struct KernelTables {
    /// The kernel's PML4.
    pub root: PhysFrame,
    /// Frames (physical addresses) mapped by the new tables that lie outside the frame
    /// allocator's free pool: the kernel image's frames and the kernel stack.
    pub kept_frames: BTreeSet<u64>,
    /// Page-table pages the kernel's tables use (PML4 included).
    pub table_pages: u64,
}

/// Hands frames to the x86_64 crate's mapper for the kernel's own page-table pages, counting them.
pub(super) struct TableFrames<'a> {
    pub(super) frames: &'a mut FrameAllocator,
    pub(super) taken: u64,
}

// SAFETY: every frame returned comes from the frame allocator, which hands each frame out once
// and never again until freed; the kernel's page-table pages are never freed (the kernel tables
// live forever, and kernel-stack slots keep theirs for reuse).
unsafe impl x86_64::structures::paging::FrameAllocator<Size4KiB> for TableFrames<'_> {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        let f = self.frames.alloc().ok()?;
        self.taken += 1;
        Some(f)
    }
}

/// The 4-level table whose PML4 is at physical `root`, reached through the window at `offset`.
///
/// # Safety
/// `offset` must map all RAM (the physical-memory window), `root` must be a PML4 frame, and the
/// caller must be the only one changing that table while the returned mapper is used.
pub(super) unsafe fn tables_at(offset: u64, root: u64) -> OffsetPageTable<'static> {
    let offset = VirtAddr::new(offset);
    // SAFETY: per the contract, the PML4 is mapped at offset + root and nobody else writes it.
    unsafe { OffsetPageTable::new(&mut *((offset + root).as_mut_ptr::<PageTable>()), offset) }
}

/// ELF program-header fields the kernel needs.
struct Segment {
    kind: u32,
    flags: u32,
    vaddr: u64,
    memsz: u64,
}

const PT_LOAD: u32 = 1;
const PT_GNU_RELRO: u32 = 0x6474_e552;
const PF_X: u32 = 1;
const PF_W: u32 = 2;

fn read_segments(window: &PhysWindow, elf_phys: u64, elf_len: u64) -> Vec<Segment> {
    let mut header = [0u8; 64];
    window.read_bytes(PhysAddr::new(elf_phys), &mut header);
    assert_eq!(&header[..4], b"\x7fELF", "the bootloader's kernel_addr does not hold the kernel ELF");
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
    let phoff = u64_at(&header, 0x20);
    let phentsize = u16_at(&header, 0x36) as u64;
    let phnum = u16_at(&header, 0x38) as u64;
    assert!(phentsize >= 56 && phoff + phnum * phentsize <= elf_len, "malformed kernel program headers");
    (0..phnum)
        .map(|i| {
            let mut ph = [0u8; 56];
            window.read_bytes(PhysAddr::new(elf_phys + phoff + i * phentsize), &mut ph);
            Segment { kind: u32_at(&ph, 0), flags: u32_at(&ph, 4), vaddr: u64_at(&ph, 16), memsz: u64_at(&ph, 40) }
        })
        .collect()
}


/// Builds the kernel's PML4 as described in the module docs and returns it; CR3 is not changed.
///
/// # Safety
/// `window` must be the bootloader's physical-memory mapping (all RAM at its offset, in the
/// current tables), CR3 must still hold the bootloader's tables, and `snapshot` must describe them.
pub unsafe fn build(frames: &mut FrameAllocator, window: &mut PhysWindow, snapshot: &BootSnapshot, gib_pages: bool) -> KernelTables {
    let (old_root, _) = Cr3::read();
    // SAFETY: the bootloader's PML4 is mapped by the window (contract); it is only read here.
    let old = unsafe { tables_at(window.offset(), old_root.start_address().as_u64()) };

    let root = frames.alloc().expect("a frame for the kernel PML4");
    window.zero_frame(root);
    // SAFETY: `root` is a zeroed frame owned by nobody else, and the window maps all RAM.
    let mut new = unsafe { tables_at(window.offset(), root.start_address().as_u64()) };
    let mut alloc = TableFrames { frames, taken: 1 };
    let mut kept_frames = BTreeSet::new();

    // Kernel image: page → union of the flags of the segments touching it.
    let segments = read_segments(window, snapshot.kernel_phys, snapshot.kernel_len);
    let mut pages: alloc::collections::BTreeMap<u64, F> = alloc::collections::BTreeMap::new();
    for s in segments.iter().filter(|s| s.kind == PT_LOAD && s.memsz > 0) {
        let start = align_down(snapshot.kernel_image_offset + s.vaddr, PAGE_SIZE);
        let end = (snapshot.kernel_image_offset + s.vaddr + s.memsz).div_ceil(PAGE_SIZE) * PAGE_SIZE;
        for page in (start..end).step_by(PAGE_SIZE as usize) {
            let mut f = F::PRESENT | F::GLOBAL;
            if s.flags & PF_W != 0 {
                f |= F::WRITABLE;
            }
            if s.flags & PF_X == 0 {
                f |= F::NO_EXECUTE;
            }
            pages
                .entry(page)
                .and_modify(|old| {
                    // Union of rights: writable if either is, executable if either is.
                    let nx = old.contains(F::NO_EXECUTE) && f.contains(F::NO_EXECUTE);
                    *old = (*old | f) - F::NO_EXECUTE;
                    if nx {
                        *old |= F::NO_EXECUTE;
                    }
                })
                .or_insert(f);
        }
    }
    // RELRO: pages wholly inside it become read-only once relocated (the bootloader has applied
    // the relocations by now).
    for s in segments.iter().filter(|s| s.kind == PT_GNU_RELRO) {
        let start = (snapshot.kernel_image_offset + s.vaddr).div_ceil(PAGE_SIZE) * PAGE_SIZE;
        let end = align_down(snapshot.kernel_image_offset + s.vaddr + s.memsz, PAGE_SIZE);
        for page in (start..end).step_by(PAGE_SIZE as usize) {
            if let Some(f) = pages.get_mut(&page) {
                f.remove(F::WRITABLE);
            }
        }
    }
    // Guard pages below the IST stacks (inside .bss) stay unmapped.
    for guard in crate::arch::gdt::guard_pages() {
        pages.remove(&guard);
    }
    // The kernel stack: the page below its bottom stays unmapped as the guard.
    let stack_start = align_down(snapshot.stack_bottom, PAGE_SIZE);
    let stack_end = (snapshot.stack_bottom + snapshot.stack_len).div_ceil(PAGE_SIZE) * PAGE_SIZE;
    for page in (stack_start..stack_end).step_by(PAGE_SIZE as usize) {
        pages.insert(page, F::PRESENT | F::WRITABLE | F::NO_EXECUTE | F::GLOBAL);
    }
    for (&va, &flags) in &pages {
        let phys = align_down(old.translate_addr(VirtAddr::new(va)).expect("the bootloader mapped every kernel page").as_u64(), PAGE_SIZE);
        kept_frames.insert(phys);
        // SAFETY: maps a kernel page to the frame the bootloader gave it, in a table not yet in use.
        unsafe {
            new.map_to_with_table_flags(
                Page::<Size4KiB>::containing_address(VirtAddr::new(va)),
                PhysFrame::containing_address(PhysAddr::new(phys)),
                flags,
                F::PRESENT | F::WRITABLE,
                &mut alloc,
            )
        }
        .expect("mapping a kernel page")
        .ignore();
    }

    // The physical-memory window: every 2 MiB (or 1 GiB) block that holds RAM.
    let window_flags = F::PRESENT | F::WRITABLE | F::NO_EXECUTE | F::GLOBAL | F::HUGE_PAGE;
    let mut blocks = BTreeSet::new();
    let block = if gib_pages { 1u64 << 30 } else { 2 << 20 };
    for r in snapshot.ram.iter().chain(&snapshot.firmware_tables) {
        let mut b = r.0 & !(block - 1);
        while b < r.1 {
            blocks.insert(b);
            b += block;
        }
    }
    for &b in &blocks {
        let va = VirtAddr::new(window.offset() + b);
        // SAFETY: the window maps RAM (and the rest of the blocks holding it) supervisor-only and
        // non-executable; the frames are not owned by any Rust reference through this mapping.
        let r = unsafe {
            if gib_pages {
                use x86_64::structures::paging::Size1GiB;
                new.map_to_with_table_flags(
                    Page::<Size1GiB>::containing_address(va),
                    PhysFrame::<Size1GiB>::containing_address(PhysAddr::new(b)),
                    window_flags,
                    F::PRESENT | F::WRITABLE,
                    &mut alloc,
                )
                .map(|f| f.ignore())
                .map_err(|_| ())
            } else {
                new.map_to_with_table_flags(
                    Page::<Size2MiB>::containing_address(va),
                    PhysFrame::<Size2MiB>::containing_address(PhysAddr::new(b)),
                    window_flags,
                    F::PRESENT | F::WRITABLE,
                    &mut alloc,
                )
                .map(|f| f.ignore())
                .map_err(|_| ())
            }
        };
        r.expect("mapping the physical-memory window");
    }

    // The local APIC's register page: uncached (PCD|PWT: PAT entry 3, UC), like any MMIO.
    let apic = crate::arch::apic::base_phys();
    // SAFETY: maps the APIC's MMIO page (not RAM, owned by no Rust object) at an address in the
    // kernel half that nothing else uses, supervisor-only and non-executable.
    unsafe {
        new.map_to_with_table_flags(
            Page::<Size4KiB>::containing_address(VirtAddr::new(crate::arch::apic::MMIO_VA)),
            PhysFrame::containing_address(PhysAddr::new(apic)),
            F::PRESENT | F::WRITABLE | F::NO_EXECUTE | F::GLOBAL | F::NO_CACHE | F::WRITE_THROUGH,
            F::PRESENT | F::WRITABLE,
            &mut alloc,
        )
    }
    .expect("mapping the local APIC")
    .ignore();

    // Give every upper-half PML4 entry its PDPT now (see the module docs).
    for i in 256..512 {
        if new.level_4_table()[i].is_unused() {
            let f = alloc.frames.alloc().expect("a frame for a kernel PDPT");
            alloc.taken += 1;
            window.zero_frame(f);
            new.level_4_table_mut()[i].set_frame(f, F::PRESENT | F::WRITABLE);
        }
    }
    KernelTables { root, kept_frames, table_pages: alloc.taken }
}

/// Loads `root` into CR3.
///
/// # Safety
/// `root` must map the running kernel's code, data, stack and the physical-memory window at the
/// addresses in use (as [`build`] does).
pub unsafe fn activate(root: PhysFrame) {
    // SAFETY: per the contract, execution continues seamlessly on the new tables.
    unsafe { Cr3::write(root, Cr3Flags::empty()) };
}
