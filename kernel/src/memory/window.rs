//! [`PhysWindow`]: physical memory reached through the kernel's physical-memory window.
//!
//! The window is a supervisor-only, read+write+NX mapping of every RAM frame at
//! `offset + physical address` (built in [`super::kernel_tables`]). It implements the
//! address-space crate's safe [`PhysMemory`] trait, which is how that crate reads and writes page
//! tables and zeroes frames; this module holds the unsafe code that makes it true.

use core::sync::atomic::{AtomicU64, Ordering};

use address_space::PAGE_SIZE;
use address_space::PhysMemory;
use x86_64::PhysAddr;
use x86_64::structures::paging::{PhysFrame, Size4KiB};

/// Physical memory at `offset + pa`, for `pa < limit`.
#[derive(Debug, Clone, Copy)]
pub struct PhysWindow {
    offset: u64,
    limit: u64,
}

impl PhysWindow {
    /// A window at `offset` covering physical addresses below `limit`.
    ///
    /// # Safety
    /// Every 4 KiB frame below `limit` that is RAM must be mapped read+write at `offset + pa` in
    /// every address space the kernel runs on, for as long as the window is used, and no Rust
    /// reference may alias a frame that the window is used to write (frames handed out by the
    /// frame allocator belong to their user).
    pub const unsafe fn new(offset: u64, limit: u64) -> Self {
        PhysWindow { offset, limit }
    }

    /// The virtual address of physical address `pa`.
    ///
    /// # Panics
    /// If `pa + len` is beyond the window (a kernel bug: the memory manager passes only frames
    /// it owns).
    fn virt(&self, pa: u64, len: u64) -> u64 {
        assert!(pa.checked_add(len).is_some_and(|end| end <= self.limit), "physical {pa:#x}+{len:#x} is outside the window");
        self.offset + pa
    }

    /// The window's virtual base.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Zeroes `frame` in `pieces` equal parts (a power of two up to 512), calling `between`
    /// after each part but the last: a long write with interrupts off that lets the caller do
    /// something short in between (the fault path serves TLB flush requests there).
    pub fn zero_frame_in(&mut self, frame: PhysFrame<Size4KiB>, pieces: u64, mut between: impl FnMut()) {
        debug_assert!(pieces.is_power_of_two() && pieces <= PAGE_SIZE / 8);
        let va = self.virt(frame.start_address().as_u64(), PAGE_SIZE);
        let piece = PAGE_SIZE / pieces;
        for i in 0..pieces {
            if i > 0 {
                between();
            }
            // SAFETY: `[va + i·piece, + piece)` lies in the frame, which the window maps (checked
            // above for the whole frame); the frame was just handed to the caller by the frame
            // allocator (the callers zero only frames they own), so nothing else uses it.
            unsafe { core::ptr::write_bytes((va + i * piece) as *mut u8, 0, piece as usize) }
        }
    }
}

impl PhysMemory for PhysWindow {
    fn read_u64(&self, pa: PhysAddr) -> u64 {
        let va = self.virt(pa.as_u64(), 8);
        // SAFETY: the window maps `pa` (checked against the limit; contract of `new`), the address
        // is 8-byte aligned as page-table entries are, and a volatile read creates no reference.
        unsafe { core::ptr::read_volatile(va as *const u64) }
    }

    fn write_u64(&mut self, pa: PhysAddr, value: u64) {
        let va = self.virt(pa.as_u64(), 8);
        // SAFETY: as for read_u64; the frame belongs to the memory manager (a page table), which
        // is the only writer.
        unsafe { core::ptr::write_volatile(va as *mut u64, value) }
    }

    fn compare_exchange_u64(&mut self, pa: PhysAddr, current: u64, new: u64) -> Result<(), u64> {
        let va = self.virt(pa.as_u64(), 8);
        // SAFETY: the window maps `pa` (checked), 8-byte aligned as page-table entries are, for
        // the whole run; the word is only ever accessed with aligned 8-byte accesses (the MMU's
        // A/D updates are locked read-modify-writes too), so a `lock cmpxchg` on it is sound.
        let word = unsafe { AtomicU64::from_ptr(va as *mut u64) };
        word.compare_exchange(current, new, Ordering::SeqCst, Ordering::SeqCst).map(|_| ())
    }

    fn zero_frame(&mut self, frame: PhysFrame<Size4KiB>) {
        self.zero_frame_in(frame, 1, || {});
    }

    fn read_bytes(&self, pa: PhysAddr, buf: &mut [u8]) {
        let va = self.virt(pa.as_u64(), buf.len() as u64);
        // SAFETY: the whole range is inside the window; `buf` is kernel memory, not in the window's
        // frames handed out to guests, so the two do not overlap.
        unsafe { core::ptr::copy_nonoverlapping(va as *const u8, buf.as_mut_ptr(), buf.len()) }
    }

    fn write_bytes(&mut self, pa: PhysAddr, data: &[u8]) {
        let va = self.virt(pa.as_u64(), data.len() as u64);
        // SAFETY: as for read_bytes, in the other direction; the target frames belong to the caller.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), va as *mut u8, data.len()) }
    }
}
