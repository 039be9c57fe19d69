//! [`PhysWindow`]: physical memory reached through the kernel's physical-memory window.
//!
//! The window is a supervisor-only, read+write+NX mapping of every RAM frame at
//! `offset + physical address` (built in [`super::kernel_tables`]). It implements the
//! address-space crate's safe [`PhysMemory`] trait, which is how that crate reads and writes page
//! tables and zeroes frames; this module holds the unsafe code that makes it true.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

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

    /// Zeroes `frame` in `pieces` equal parts (a power of two up to 64: each part a multiple of
    /// 64 bytes, as [`zero_bytes`] needs), calling `between` after each part but the last: a long
    /// write with interrupts off that lets the caller do something short in between (the fault
    /// path serves TLB flush requests there).
    ///
    /// # Panics
    /// If `pieces` is not such a power of two (a kernel bug).
    pub fn zero_frame_in(&mut self, frame: PhysFrame<Size4KiB>, pieces: u64, mut between: impl FnMut()) {
        assert!(pieces.is_power_of_two() && pieces <= PAGE_SIZE / 64, "zeroing a frame in {pieces} pieces");
        let va = self.virt(frame.start_address().as_u64(), PAGE_SIZE);
        let piece = PAGE_SIZE / pieces;
        for i in 0..pieces {
            if i > 0 {
                between();
            }
            // SAFETY: `[va + i·piece, + piece)` lies in the frame, which the window maps (checked
            // above for the whole frame); the frame was just handed to the caller by the frame
            // allocator (the callers zero only frames they own), so nothing else uses it; at most
            // 64 pieces (checked above) of a page-aligned frame are 64-byte multiples and aligned.
            unsafe { zero_bytes(va + i * piece, piece) }
        }
    }

    /// Chooses how frames are zeroed on this machine: times `rep stosq` (what `memset` does)
    /// and plain 64-bit stores on `frame` (allocated, the caller's, zeroed on return) and keeps
    /// the faster. Returns the two costs in TSC cycles (the least of [`CALIBRATION_ROUNDS`]
    /// alternated rounds of each), `rep stosq` first.
    ///
    /// Why measure: the fastest way to clear a page depends on the CPU, and a page fault's
    /// first touch is mostly this. On hardware `rep stosq`/`stosb` is fastest (Linux picks
    /// `clear_page_rep` or `clear_page_erms` by CPU feature, else an unrolled loop of stores);
    /// QEMU's TCG runs a `rep` string instruction one iteration per translated-block jump, so
    /// there 64-bit stores take about half the time (1,944 against 3,764 cycles a page, measured
    /// with the benchmark image's `zero_4k` pieces).
    pub fn calibrate_zeroing(&mut self, frame: PhysFrame<Size4KiB>) -> (u64, u64) {
        let va = self.virt(frame.start_address().as_u64(), PAGE_SIZE);
        let time = |stores: bool| {
            let t0 = crate::arch::time::rdtsc();
            // SAFETY: `va` maps the caller's frame, whole (checked above), used by no one else.
            unsafe {
                if stores { zero_with_stores(va, PAGE_SIZE) } else { core::ptr::write_bytes(va as *mut u8, 0, PAGE_SIZE as usize) }
            }
            crate::arch::time::rdtsc().wrapping_sub(t0)
        };
        // Alternated, the least of each: the first rounds pay for translation and cold caches.
        let (mut stosq, mut stores) = (u64::MAX, u64::MAX);
        for _ in 0..CALIBRATION_ROUNDS {
            stosq = stosq.min(time(false));
            stores = stores.min(time(true));
        }
        ZERO_WITH_STORES.store(stores < stosq, Ordering::Relaxed);
        (stosq, stores)
    }
}

/// Rounds of each way of zeroing timed at boot.
const CALIBRATION_ROUNDS: u32 = 32;

/// Frames are zeroed with 64-bit stores instead of `rep stosq` ([`PhysWindow::calibrate_zeroing`]).
static ZERO_WITH_STORES: AtomicBool = AtomicBool::new(false);

/// Zeroes `len` bytes at `va` the way chosen at boot.
///
/// # Safety
/// `[va, va + len)` must be writable memory that no Rust reference aliases; `va` and `len`
/// multiples of 64.
unsafe fn zero_bytes(va: u64, len: u64) {
    if ZERO_WITH_STORES.load(Ordering::Relaxed) {
        // SAFETY: the caller's contract.
        unsafe { zero_with_stores(va, len) }
    } else {
        // SAFETY: the caller's contract.
        unsafe { core::ptr::write_bytes(va as *mut u8, 0, len as usize) }
    }
}

/// Zeroes `len` bytes at `va` with aligned 64-bit stores, eight a loop (volatile, so the
/// compiler does not turn the loop back into `memset`).
///
/// # Safety
/// As [`zero_bytes`].
unsafe fn zero_with_stores(va: u64, len: u64) {
    let words = va as *mut u64;
    for i in (0..(len / 8) as usize).step_by(8) {
        for j in 0..8 {
            // SAFETY: word `i + j` lies in `[va, va + len)` (len a multiple of 64), which the
            // caller lets us write; `va` is 8-byte aligned.
            unsafe { words.add(i + j).write_volatile(0) }
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
