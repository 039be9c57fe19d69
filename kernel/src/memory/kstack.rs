//! Kernel stacks for guests: each guest's run loop (its system calls, exceptions, and the callbacks it enters ring 3 for) runs
//! on a kernel stack of its own, mapped in the kernel half with an unmapped guard page below it,
//! so a kernel stack overflow while serving one guest faults (and is reported) instead of
//! running into other memory.
//!
//! Stacks live in fixed slots of [`SLOT_SIZE`] from [`KSTACK_REGION`] (in the kernel half, whose
//! page-directory pointer tables every address space shares): a slot is its guard page and then
//! [`STACK_PAGES`] mapped pages. Slots are reused, so their page-table pages are allocated once.

use address_space::PAGE_SIZE;
use x86_64::VirtAddr;
use x86_64::structures::paging::{Mapper, OffsetPageTable, Page, PageTableFlags as F, Size4KiB};

use super::kernel_tables::{TableFrames, tables_at};
use super::{FrameState, manager};

/// Start of the kernel-stack region (in the kernel half, below the kernel image's dynamic range
/// the bootloader uses from 0xffff_8000_0000_0000 upwards).
pub const KSTACK_REGION: u64 = 0xffff_c000_0000_0000;
/// Pages of each stack (64 KiB).
pub const STACK_PAGES: u64 = 16;
/// Address space per slot: the guard page plus the stack.
pub const SLOT_SIZE: u64 = (STACK_PAGES + 1) * PAGE_SIZE;
/// Slots: one per guest running (one at a time today) and four per application processor
/// (its idle stack, double-fault and NMI IST stacks, ring-3 entry stack; `arch::smp`).
pub const SLOTS: usize = 128;

/// Why a stack could not be mapped.
enum NoStack {
    /// Every slot is taken.
    Slots,
    /// The allocator could not promise the stack's frames.
    Frames,
}

/// A mapped kernel stack; unmapped (frames returned) on drop.
pub struct KernelStack {
    slot: usize,
}

/// Runs `f` with the frames lock held (it serialises every change to the kernel's tables) and
/// the kernel's tables.
fn with_kernel_tables<R>(f: impl FnOnce(&mut FrameState, &mut OffsetPageTable<'static>) -> R) -> R {
    let manager = manager();
    x86_64::instructions::interrupts::without_interrupts(|| {
        let mut state = manager.frames.lock();
        // SAFETY: the window maps all RAM and the kernel's PML4; the frames lock, held until
        // `f` returns, serialises every change to the kernel's tables.
        let mut tables = unsafe { tables_at(manager.window.offset(), manager.kernel_root.start_address().as_u64()) };
        f(&mut state, &mut tables)
    })
}

impl KernelStack {
    /// Maps a new stack. `None` if every slot is taken or frames ran out (then nothing changed).
    /// Frames zeroed ahead are given back to the allocator and the stack asked for again if the
    /// first try found it short (`frames::zero_ahead`).
    pub fn new() -> Option<KernelStack> {
        match Self::try_new() {
            Err(NoStack::Frames) if super::frames::give_back_zeroed() > 0 => Self::try_new().ok(),
            r => r.ok(),
        }
    }

    fn try_new() -> Result<KernelStack, NoStack> {
        with_kernel_tables(|mm, tables| {
            let slot = (0..SLOTS).find(|&i| mm.kstack_slots & (1u128 << i) == 0).ok_or(NoStack::Slots)?;
            let mut promised = mm.allocator.reserve(STACK_PAGES).map_err(|_| NoStack::Frames)?;
            let base = KSTACK_REGION + slot as u64 * SLOT_SIZE + PAGE_SIZE;
            for i in 0..STACK_PAGES {
                let frame = mm.allocator.alloc_reserved(&mut promised);
                let page = Page::<Size4KiB>::containing_address(VirtAddr::new(base + i * PAGE_SIZE));
                let mut table_frames = TableFrames { frames: &mut mm.allocator, taken: 0 };
                // SAFETY: the page is in this slot's range, which nothing else maps; the frame is
                // fresh from the allocator.
                let r = unsafe {
                    tables.map_to_with_table_flags(
                        page,
                        frame,
                        F::PRESENT | F::WRITABLE | F::NO_EXECUTE | F::GLOBAL,
                        F::PRESENT | F::WRITABLE,
                        &mut table_frames,
                    )
                };
                mm.kernel_table_pages += table_frames.taken;
                match r {
                    Ok(flush) => flush.flush(),
                    Err(_) => panic!("mapping a kernel stack page failed (page-table frames exhausted)"),
                }
            }
            mm.kstack_slots |= 1 << slot;
            Ok(KernelStack { slot })
        })
    }

    /// Maps a stack that is kept for the whole run (a CPU's); its top. `None` as for [`new`](Self::new).
    pub fn new_permanent() -> Option<u64> {
        let stack = KernelStack::new()?;
        let top = stack.top();
        core::mem::forget(stack);
        Some(top)
    }

    /// The top of the stack (16-byte aligned; the first push goes just below it).
    pub fn top(&self) -> u64 {
        KSTACK_REGION + (self.slot as u64 + 1) * SLOT_SIZE
    }
}

impl Drop for KernelStack {
    fn drop(&mut self) {
        with_kernel_tables(|mm, tables| {
            let base = KSTACK_REGION + self.slot as u64 * SLOT_SIZE + PAGE_SIZE;
            for i in 0..STACK_PAGES {
                let page = Page::<Size4KiB>::containing_address(VirtAddr::new(base + i * PAGE_SIZE));
                match tables.unmap(page) {
                    Ok((frame, flush)) => {
                        flush.flush();
                        mm.allocator.free(frame).expect("a kernel stack frame is allocated");
                    }
                    Err(_) => panic!("a kernel stack page was not mapped"),
                }
            }
            // Global entries: invlpg (in unmap) drops them from this CPU's TLB.
            mm.kstack_slots &= !(1 << self.slot);
        })
    }
}

/// Creates the page-table pages of every slot now (by mapping and unmapping each stack once), so
/// that running a guest later allocates no page-table page and frame counts before and after a
/// guest are equal.
pub fn prepare() {
    let stacks: alloc::vec::Vec<KernelStack> = (0..SLOTS).map_while(|_| KernelStack::new()).collect();
    drop(stacks);
}

/// Whether `addr` is a kernel-stack guard page (for fault reports).
pub fn is_guard(addr: u64) -> bool {
    addr >= KSTACK_REGION && addr < KSTACK_REGION + SLOTS as u64 * SLOT_SIZE && (addr - KSTACK_REGION) % SLOT_SIZE < PAGE_SIZE
}
