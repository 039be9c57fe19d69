//! [`PhysMemory`]: the only way this crate touches physical memory.
//!
//! The crate has no `unsafe`: page tables and page contents are read and written through this
//! safe trait. The kernel implements it over its physical-memory window (a virtual mapping of
//! all RAM at a fixed offset, with volatile accesses in its own unsafe code); host tests use
//! `sim::SimPhysMemory` (feature `sim`), a `Vec` standing in for RAM at real physical addresses.

use x86_64::PhysAddr;
use x86_64::structures::paging::{PhysFrame, Size4KiB};

/// Access to physical memory by physical address.
///
/// Implementations may panic on an address they do not back: the crate only passes addresses
/// of frames it got from the [`crate::frame::FrameAllocator`] (or the root table frame), so such
/// a panic is a kernel bug.
pub trait PhysMemory {
    /// Reads the aligned 8-byte word at `pa` (a page-table entry).
    fn read_u64(&self, pa: PhysAddr) -> u64;
    /// Writes the aligned 8-byte word at `pa` (a page-table entry).
    fn write_u64(&mut self, pa: PhysAddr, value: u64);
    /// Replaces the aligned 8-byte word at `pa` with `new` if it still holds `current`; else
    /// returns what it holds. Used for present leaf entries, whose A and D bits the MMU of
    /// another CPU may set at any time (smp-and-dispatch §4(a), pitfall 12).
    ///
    /// The default reads, compares and writes: right while no other CPU runs the space. A kernel
    /// that runs a space on several CPUs implements it with `lock cmpxchg`.
    ///
    /// # Errors
    ///
    /// The word's value if it was not `current` (nothing written).
    fn compare_exchange_u64(&mut self, pa: PhysAddr, current: u64, new: u64) -> Result<(), u64> {
        let now = self.read_u64(pa);
        if now != current {
            return Err(now);
        }
        self.write_u64(pa, new);
        Ok(())
    }
    /// Fills the 4 KiB frame with zeroes.
    fn zero_frame(&mut self, frame: PhysFrame<Size4KiB>);
    /// Copies `buf.len()` bytes starting at `pa` into `buf` (may cross frames).
    fn read_bytes(&self, pa: PhysAddr, buf: &mut [u8]);
    /// Copies `data` to physical memory starting at `pa` (may cross frames).
    fn write_bytes(&mut self, pa: PhysAddr, data: &[u8]);
}
