//! Physical frame allocator: hands out 4 KiB frames and naturally aligned 2 MiB runs of the usable
//! RAM, with exact counts, reservations (promised frames) and error-checked frees.
//!
//! Key types: [`FrameAllocator`] (the allocator), [`PhysRange`] (its input, later taken from the
//! bootloader's memory map), [`FrameError`], [`FrameStats`]. The page-table code takes page-table
//! frames from here and the address-space layer takes the frames of committed pages; both hold
//! [`reserve`](FrameAllocator::reserve)d frames for work that must not fail half-way (commit charge:
//! a committed page never fails to fault in).
//!
//! **Frames are not zeroed.** The allocator never touches the memory it manages (it has no mapping
//! of it); the caller zeroes a frame through its physical-memory window before exposing it, and
//! counts that work where it belongs.
//!
//! # Data structure
//!
//! Managed RAM is cut into 2 MiB *chunks* (512 frames, aligned to 2 MiB). Per chunk:
//!
//! * a bitmap of 512 bits, one per frame, **1 = free** (8 `u64` words, 64 bytes); frames of the
//!   chunk that are not usable RAM are permanently 0 and are told apart from allocated frames by
//!   the region list (below);
//! * `free`: the number of free frames (`u16`);
//! * `usable`: the number of managed frames (`u16`; 512 for almost every chunk).
//!
//! Two hierarchical bitsets over chunk indices (`summary.rs`; a bit per chunk, a bit per non-zero
//! word above, up to a single top word) index the chunks that can serve a request:
//!
//! * `whole`: chunks whose 512 frames are all usable and all free: the free 2 MiB runs;
//! * `partial`: every other chunk with at least one free frame.
//!
//! Chunks only exist for the span actually touched by usable ranges (`layout.rs`): the input
//! ranges are trimmed to whole frames, sorted and merged (overlapping or touching ranges are
//! **merged**, i.e. their union is managed once), then grouped into *segments* of consecutive
//! chunks; a hole of whole chunks between segments costs nothing, so RAM at 4..24 GiB carries no
//! metadata for 0..4 GiB, and the 3..4 GiB PCI hole carries none either.
//!
//! # Complexity (n = managed chunks, s = segments, r = regions; s and r are tiny in practice)
//!
//! | call | cost |
//! |------|------|
//! | [`alloc`](FrameAllocator::alloc), [`alloc_reserved`](FrameAllocator::alloc_reserved) | O(log64 n + s): summary descent, ≤ 8-word scan, segment search |
//! | [`alloc_2mib`](FrameAllocator::alloc_2mib) | O(log64 n + s) |
//! | [`free`](FrameAllocator::free), [`mark_allocated`](FrameAllocator::mark_allocated), [`is_allocated`](FrameAllocator::is_allocated) | O(log s + log64 n), plus O(log r) only in chunks not wholly usable |
//! | [`free_2mib`](FrameAllocator::free_2mib) | O(log s + log64 n) (O(r) on the `Foreign` error path) |
//! | [`reserve`](FrameAllocator::reserve), [`unreserve`](FrameAllocator::unreserve), counts, [`stats`](FrameAllocator::stats) | O(1) |
//! | [`new`](FrameAllocator::new) | O(r log r + n + managed / 64) |
//!
//! Measured (`cargo bench --bench frames`, release, dev host): an `alloc` + `free` pair costs
//! 12–15 ns with 1 or 16 GiB managed, nearly empty or half full, and 20 ns in the worst pattern
//! measured (the pair breaks and re-forms a whole chunk every time); `alloc_2mib` + `free_2mib`
//! 11–14 ns.
//!
//! No call allocates heap memory except [`new`](FrameAllocator::new), which allocates all
//! metadata once (the three per-chunk arrays, the two summaries' levels, the region and segment
//! lists), their sizes fixed from then on.
//!
//! # Metadata overhead
//!
//! Per chunk: 64 B bitmap + 2 B `free` + 2 B `usable` + 2 × (1/8 B + ~1/504 B) for the two summaries
//! ≈ **68.25 B per 2 MiB**. Per GiB managed (512 chunks): 32 768 + 1 024 + 1 024 + 2 × (64 + 8)
//! = **34 960 B ≈ 34.1 KiB per GiB, i.e. 0.0033 % of the managed RAM** (target: < 0.1 %). Fixed
//! costs on top: 16 B per merged region, 24 B per segment, a few `Vec` headers. Measured by
//! [`metadata_bytes`](FrameAllocator::metadata_bytes) (checked by a test, printed by
//! `benches/frames.rs`): 1 GiB → 35 096 B, 16 GiB → 559 336 B, 64 GiB → 2 236 744 B
//! (0.0033 % in each case).
//!
//! The bound in general is 68.25 B × (chunks touched) ≤ 68.25 B × (managed / 2 MiB + regions):
//! only a pathological map of many tiny scattered ranges (one frame per 2 MiB) would approach
//! 1.7 %; real memory maps have a few dozen entries.
//!
//! # Keeping 2 MiB runs available
//!
//! Single frames come from the lowest-indexed `partial` chunk first; a `whole` chunk is broken
//! only when no partial chunk has a free frame. So single-frame traffic packs into chunks that are
//! already broken, and every chunk that becomes wholly free again on [`free`](FrameAllocator::free)
//! is back in `whole` at once. [`free_2mib_runs`](FrameAllocator::free_2mib_runs) is exact.
//! 2 MiB runs are naturally aligned by construction (a chunk is one aligned 2 MiB block) and
//! chunks with any unusable frame are never in `whole`.
//!
//! # Reservation contract
//!
//! `free = reserved + available`. [`reserve`](FrameAllocator::reserve)`(n)` succeeds only when
//! `available >= n` and moves `n` frames from available to reserved (no particular frames: a count).
//! [`alloc`](FrameAllocator::alloc), [`alloc_2mib`](FrameAllocator::alloc_2mib) and
//! [`mark_allocated`](FrameAllocator::mark_allocated) draw only on `available`, so the invariant
//! `free >= reserved` always holds, and [`alloc_reserved`](FrameAllocator::alloc_reserved) (which
//! consumes one reserved frame) cannot fail while `reserved > 0`. Reservations are returned with
//! [`unreserve`](FrameAllocator::unreserve). Misusing the contract (taking or returning more than
//! was reserved) is a kernel bug and panics.
//!
//! # Errors, not corruption
//!
//! Freeing a free frame (`DoubleFree`), a frame outside every usable range (`Foreign`), or marking
//! an allocated frame (`AlreadyAllocated`) returns an error and changes nothing. Every call
//! validates first and then performs a step that cannot fail (decode, then perform). The
//! allocator tracks frames, not allocations: the frames of a 2 MiB run may be freed one by one,
//! and 512 single frames forming an aligned run may be freed with
//! [`free_2mib`](FrameAllocator::free_2mib).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cache;
mod shared;
mod source;
mod layout;
mod summary;
#[cfg(test)]
mod tests;
pub mod zeroed;

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use x86_64::PhysAddr;
use x86_64::structures::paging::{PhysFrame, Size2MiB, Size4KiB};

pub use cache::{CACHE_BATCH, CACHE_CAPACITY, FrameAccounting, FrameCache, SharedFrames};
pub use shared::SharedReservation;
pub use source::FrameSource;
pub use zeroed::{ZEROED_CAPACITY, ZeroedFrames};
use layout::Layout;
use summary::Summary;

/// log2 of the frame size (4 KiB).
const FRAME_SHIFT: u32 = crate::PAGE_SIZE.trailing_zeros();
/// log2 of the chunk size (2 MiB).
const CHUNK_SHIFT: u32 = crate::LARGE_PAGE_SIZE.trailing_zeros();
/// Frames per 2 MiB chunk.
const CHUNK_FRAMES: u64 = 1 << (CHUNK_SHIFT - FRAME_SHIFT);
/// Bitmap words per chunk.
const CHUNK_WORDS: usize = (CHUNK_FRAMES / 64) as usize;

/// The number of 4 KiB frames in a 2 MiB run.
pub const FRAMES_PER_2MIB: u64 = CHUNK_FRAMES;

/// Frames promised by [`FrameAllocator::reserve`]: every one of them can later be taken with
/// [`FrameAllocator::alloc_reserved`], which cannot fail.
///
/// A reservation is an owned, move-only value (neither `Copy` nor `Clone`), as Theseus'
/// `AllocatedFrames`: its frames are taken one by one, handed over whole or in part to another
/// owner ([`absorb`](Self::absorb), [`split`](Self::split)), or returned with
/// [`FrameAllocator::unreserve`]. Dropping one that still promises frames would leak them from the
/// allocator's count; debug builds panic then.
///
/// It cannot be copied, so a frame cannot be promised twice:
///
/// ```compile_fail,E0599
/// let promised = address_space::frame::FrameReservation::empty();
/// let copy = promised.clone();
/// ```
#[must_use = "a frame reservation must be taken from, handed over or given back (FrameAllocator::unreserve)"]
#[derive(Debug, PartialEq, Eq)]
pub struct FrameReservation {
    frames: u64,
}

impl FrameReservation {
    /// A reservation of no frame (dropping it is fine).
    pub const fn empty() -> FrameReservation {
        FrameReservation { frames: 0 }
    }

    /// Returns how many frames it still promises.
    pub const fn frames(&self) -> u64 {
        self.frames
    }

    /// Moves every frame of `other` into this reservation.
    pub fn absorb(&mut self, mut other: FrameReservation) {
        self.frames += core::mem::take(&mut other.frames);
    }

    /// Moves `n` of its frames into a reservation of their own.
    ///
    /// # Panics
    ///
    /// If it holds fewer than `n` frames (a kernel bug).
    pub fn split(&mut self, n: u64) -> FrameReservation {
        assert!(n <= self.frames, "frame reservation: split({n}) of {} frames (kernel bug)", self.frames);
        self.frames -= n;
        FrameReservation { frames: n }
    }
}

impl Drop for FrameReservation {
    fn drop(&mut self) {
        // A test that fails while holding a reservation must report its own failure.
        #[cfg(test)]
        if std::thread::panicking() {
            return;
        }
        debug_assert_eq!(self.frames, 0, "frame reservation dropped with {} frames still promised (a leak)", self.frames);
    }
}

/// A half-open range of physical memory `[start, end)`.
///
/// Ranges given to [`FrameAllocator::new`] need not be aligned (they are trimmed to whole 4 KiB
/// frames), sorted or disjoint (overlaps are merged); empty or inverted ranges are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhysRange {
    /// The first byte of the range.
    pub start: PhysAddr,
    /// One past the last byte of the range.
    pub end: PhysAddr,
}

impl PhysRange {
    /// Returns the range `[start, end)`.
    pub const fn new(start: PhysAddr, end: PhysAddr) -> Self {
        Self { start, end }
    }
}

/// An error of the frame allocator. Every error leaves the allocator unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// No frame (or no wholly free 2 MiB run) is available outside the reserved pool; also the
    /// result of an injected failure (see [`FrameAllocator::fail_request_after`]).
    OutOfFrames,
    /// The frame is managed here but already free (the address of the first free frame).
    DoubleFree(PhysAddr),
    /// The frame is not managed by this allocator (outside every usable range).
    Foreign(PhysAddr),
    /// [`FrameAllocator::mark_allocated`] was given a frame that is already allocated.
    AlreadyAllocated(PhysAddr),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutOfFrames => f.write_str("out of physical frames"),
            Self::DoubleFree(a) => write!(f, "double free of frame p{:#x}", a.as_u64()),
            Self::Foreign(a) => write!(
                f,
                "frame p{:#x} is not managed by this allocator",
                a.as_u64()
            ),
            Self::AlreadyAllocated(a) => write!(f, "frame p{:#x} is already allocated", a.as_u64()),
        }
    }
}

impl core::error::Error for FrameError {}

/// A snapshot of the allocator's counts and lifetime counters.
///
/// Invariants: `total = free + used`, `free = reserved + available`, and
/// `used = allocs + marked + 512 × allocs_2mib − frees − 512 × frees_2mib`.
/// Failed calls change no field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FrameStats {
    /// Managed frames.
    pub total_frames: u64,
    /// Frames not allocated (reserved ones included).
    pub free_frames: u64,
    /// Allocated frames: `total_frames - free_frames`.
    pub used_frames: u64,
    /// Frames promised by [`FrameAllocator::reserve`] and not yet taken.
    pub reserved_frames: u64,
    /// Frames that [`FrameAllocator::alloc`] may hand out: `free_frames - reserved_frames`.
    pub available_frames: u64,
    /// Wholly free, naturally aligned 2 MiB runs.
    pub free_2mib_runs: u64,
    /// Successful single-frame allocations ([`FrameAllocator::alloc`] and
    /// [`FrameAllocator::alloc_reserved`]).
    pub allocs: u64,
    /// The part of `allocs` made by [`FrameAllocator::alloc_reserved`].
    pub allocs_reserved: u64,
    /// Successful [`FrameAllocator::free`] calls.
    pub frees: u64,
    /// Successful [`FrameAllocator::alloc_2mib`] calls.
    pub allocs_2mib: u64,
    /// Successful [`FrameAllocator::free_2mib`] calls.
    pub frees_2mib: u64,
    /// Successful [`FrameAllocator::mark_allocated`] calls.
    pub marked: u64,
}

/// Which summary a chunk belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkClass {
    /// No free frame: in no summary.
    Full,
    /// Some free frame, but not a free 2 MiB run: in `partial`.
    Partial,
    /// All 512 frames usable and free: in `whole`.
    Whole,
}

/// A frame resolved to its bitmap position.
#[derive(Debug, Clone, Copy)]
struct Slot {
    chunk: usize,
    word: usize,
    mask: u64,
}

/// A physical frame allocator over a fixed set of usable ranges; see the [module docs](self).
///
/// Deliberately not `Clone`: two copies would both believe they own the free frames.
pub struct FrameAllocator {
    layout: Layout,
    /// Per chunk: one bit per frame, 1 = free (unusable frames are 0).
    bits: Vec<[u64; CHUNK_WORDS]>,
    /// Per chunk: free frames.
    free_in_chunk: Vec<u16>,
    /// Per chunk: managed frames.
    usable_in_chunk: Vec<u16>,
    /// Chunks of class [`ChunkClass::Partial`].
    partial: Summary,
    /// Chunks of class [`ChunkClass::Whole`].
    whole: Summary,
    total: u64,
    free: u64,
    reserved: u64,
    whole_runs: u64,
    stats: FrameStats,
    /// Requests left until the injected failure (1 = the next one fails).
    fail_countdown: Option<u64>,
}

/// Prints the counts and the managed ranges, not the bitmaps (which run to megabytes).
impl fmt::Debug for FrameAllocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Ranges<'a>(&'a FrameAllocator);
        impl fmt::Debug for Ranges<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_list()
                    .entries(self.0.ranges().map(|r| {
                        // p0x… marks physical addresses.
                        fmt::from_fn(move |f| {
                            write!(f, "p{:#x}..p{:#x}", r.start.as_u64(), r.end.as_u64())
                        })
                    }))
                    .finish()
            }
        }
        f.debug_struct("FrameAllocator")
            .field("ranges", &Ranges(self))
            .field("stats", &self.stats())
            .field("fail_countdown", &self.fail_countdown)
            .finish_non_exhaustive()
    }
}

impl FrameAllocator {
    /// Returns an allocator managing the whole 4 KiB frames inside `usable`, all free.
    ///
    /// Ranges are trimmed to whole frames (start rounded up, end rounded down), may come in any
    /// order, and may overlap or touch (their union is managed). All metadata is allocated here,
    /// once: about 34.1 KiB per GiB managed (see the module docs).
    ///
    /// Cost: O(r log r + n + managed frames / 64).
    ///
    /// # Panics
    ///
    /// Only through the global allocator's out-of-memory handling, if the heap cannot hold the
    /// metadata (0.0033 % of the managed RAM).
    pub fn new(usable: &[PhysRange]) -> Self {
        let layout = Layout::new(usable);
        let n = layout.chunk_count();
        let mut bits = vec![[0u64; CHUNK_WORDS]; n];
        let mut free_in_chunk = vec![0u16; n];
        let mut total = 0u64;
        for r in layout.regions() {
            // Set the free bits a word at a time.
            let mut f = r.start;
            while f < r.end {
                let ci = layout
                    .chunk_index(f >> (CHUNK_SHIFT - FRAME_SHIFT))
                    .expect("frame allocator: layout lost a region's chunk");
                let off = f % CHUNK_FRAMES;
                let bit = off % 64;
                let count = (64 - bit).min(r.end - f);
                let mask = if count == 64 {
                    !0
                } else {
                    ((1u64 << count) - 1) << bit
                };
                bits[ci][(off / 64) as usize] |= mask;
                free_in_chunk[ci] += count as u16;
                total += count;
                f += count;
            }
        }
        let usable_in_chunk = free_in_chunk.clone();
        let mut this = Self {
            layout,
            bits,
            free_in_chunk,
            usable_in_chunk,
            partial: Summary::new(n),
            whole: Summary::new(n),
            total,
            free: total,
            reserved: 0,
            whole_runs: 0,
            stats: FrameStats::default(),
            fail_countdown: None,
        };
        for ci in 0..n {
            match this.class(ci) {
                ChunkClass::Full => {}
                ChunkClass::Partial => this.partial.insert(ci),
                ChunkClass::Whole => {
                    this.whole.insert(ci);
                    this.whole_runs += 1;
                }
            }
        }
        this
    }

    /// Takes one frame out of the free, unreserved pool. The frame is **not zeroed**.
    ///
    /// Frames come from partially used chunks first, so that whole 2 MiB runs stay available.
    ///
    /// # Errors
    ///
    /// [`FrameError::OutOfFrames`] when `available_frames() == 0`, or on an injected failure;
    /// nothing changes then.
    ///
    /// Cost: O(log64 n + s).
    pub fn alloc(&mut self) -> Result<PhysFrame<Size4KiB>, FrameError> {
        self.count_request()?;
        if self.available_frames() == 0 {
            return Err(FrameError::OutOfFrames);
        }
        let frame = self.take_any();
        self.stats.allocs += 1;
        Ok(frame)
    }

    /// Takes a naturally aligned, wholly free 2 MiB run (512 frames) out of the unreserved pool.
    /// The memory is **not zeroed**.
    ///
    /// # Errors
    ///
    /// [`FrameError::OutOfFrames`] when `available_frames() < 512`, when no free aligned run
    /// exists, or on an injected failure; nothing changes then.
    ///
    /// Cost: O(log64 n + s).
    pub fn alloc_2mib(&mut self) -> Result<PhysFrame<Size2MiB>, FrameError> {
        self.count_request()?;
        if self.available_frames() < CHUNK_FRAMES {
            return Err(FrameError::OutOfFrames);
        }
        let ci = self.whole.first().ok_or(FrameError::OutOfFrames)?;
        // Perform: cannot fail from here on.
        self.bits[ci] = [0; CHUNK_WORDS];
        self.free_in_chunk[ci] = 0;
        self.whole.remove(ci);
        self.whole_runs -= 1;
        self.free -= CHUNK_FRAMES;
        self.stats.allocs_2mib += 1;
        let addr = PhysAddr::new(self.layout.chunk_number(ci) << CHUNK_SHIFT);
        Ok(PhysFrame::containing_address(addr))
    }

    /// Returns a frame to the free pool.
    ///
    /// # Errors
    ///
    /// [`FrameError::Foreign`] if the frame is not managed here, [`FrameError::DoubleFree`] if it
    /// is already free; nothing changes then.
    ///
    /// Cost: O(log s + log64 n), plus O(log r) in a chunk that is not wholly usable RAM.
    pub fn free(&mut self, frame: PhysFrame<Size4KiB>) -> Result<(), FrameError> {
        let addr = frame.start_address();
        let (slot, is_free) = self.locate(addr)?;
        if is_free {
            return Err(FrameError::DoubleFree(addr));
        }
        self.put(slot);
        self.stats.frees += 1;
        Ok(())
    }

    /// Returns a 2 MiB run: all 512 frames of the aligned 2 MiB block become free.
    ///
    /// The frames need not come from [`alloc_2mib`](Self::alloc_2mib): any 512 allocated frames
    /// forming the block qualify.
    ///
    /// # Errors
    ///
    /// [`FrameError::Foreign`] (with the first unmanaged address) if any frame of the block is
    /// not managed here; otherwise [`FrameError::DoubleFree`] with the first frame of the block
    /// that is already free. Nothing changes on error.
    ///
    /// Cost: O(log s + log64 n); O(r) more on the `Foreign` path.
    pub fn free_2mib(&mut self, frame: PhysFrame<Size2MiB>) -> Result<(), FrameError> {
        let addr = frame.start_address();
        let chunk = addr.as_u64() >> CHUNK_SHIFT;
        let Some(ci) = self.layout.chunk_index(chunk) else {
            return Err(FrameError::Foreign(addr));
        };
        if u64::from(self.usable_in_chunk[ci]) != CHUNK_FRAMES {
            let first = chunk * CHUNK_FRAMES;
            let f = self
                .layout
                .first_unmanaged(first, first + CHUNK_FRAMES)
                .expect("frame allocator: chunk usable count disagrees with the regions");
            return Err(FrameError::Foreign(PhysAddr::new(f << FRAME_SHIFT)));
        }
        if let Some((w, word)) = self.bits[ci].iter().enumerate().find(|(_, w)| **w != 0) {
            let f = (chunk * CHUNK_FRAMES) + (w as u64) * 64 + u64::from(word.trailing_zeros());
            return Err(FrameError::DoubleFree(PhysAddr::new(f << FRAME_SHIFT)));
        }
        // Perform: the chunk is Full (no free frame), becomes Whole.
        self.bits[ci] = [!0; CHUNK_WORDS];
        self.free_in_chunk[ci] = CHUNK_FRAMES as u16;
        self.whole.insert(ci);
        self.whole_runs += 1;
        self.free += CHUNK_FRAMES;
        self.stats.frees_2mib += 1;
        Ok(())
    }

    /// Promises `n` frames for later [`alloc_reserved`](Self::alloc_reserved) calls, and returns
    /// the promise as an owned [`FrameReservation`].
    ///
    /// Afterwards `available_frames()` is `n` lower and `reserved_frames()` `n` higher; no
    /// particular frames are set aside, so 2 MiB runs stay intact until frames are taken.
    /// `reserve(0)` always succeeds (unless it is the injected failure).
    ///
    /// # Errors
    ///
    /// [`FrameError::OutOfFrames`] if `available_frames() < n`, or on an injected failure;
    /// nothing changes then.
    ///
    /// Cost: O(1).
    pub fn reserve(&mut self, n: u64) -> Result<FrameReservation, FrameError> {
        self.count_request()?;
        if self.available_frames() < n {
            return Err(FrameError::OutOfFrames);
        }
        self.reserved += n;
        Ok(FrameReservation { frames: n })
    }

    /// Gives back the promised frames of `reservation` that will not be taken.
    ///
    /// Cost: O(1).
    ///
    /// # Panics
    ///
    /// If it promises more than `reserved_frames()`: a reservation made by another allocator
    /// (a kernel bug).
    pub fn unreserve(&mut self, mut reservation: FrameReservation) {
        let n = core::mem::take(&mut reservation.frames);
        assert!(
            n <= self.reserved,
            "frame allocator: unreserve({n}) but only {} frames are reserved (kernel bug)",
            self.reserved
        );
        self.reserved -= n;
    }

    /// Takes one of the frames `reservation` promises. The frame is **not zeroed**.
    ///
    /// Cannot fail while the reservation holds a frame: the reservation contract keeps
    /// `free_frames() >= reserved_frames()`. Not subject to injected failures.
    ///
    /// Cost: O(log64 n + s).
    ///
    /// # Panics
    ///
    /// If the reservation is empty, or promises more than `reserved_frames()` (it was made by
    /// another allocator): taking a frame that was never promised is a kernel bug.
    #[must_use = "dropping the frame leaks it"]
    pub fn alloc_reserved(&mut self, reservation: &mut FrameReservation) -> PhysFrame<Size4KiB> {
        assert!(
            reservation.frames > 0 && self.reserved > 0,
            "frame allocator: alloc_reserved() with no frame reserved (kernel bug)"
        );
        reservation.frames -= 1;
        self.reserved -= 1;
        let frame = self.take_any();
        self.stats.allocs += 1;
        self.stats.allocs_reserved += 1;
        frame
    }

    /// Marks a free managed frame as allocated (at boot: frames already in use, such as the
    /// kernel image or the boot page tables). Draws on the unreserved pool like
    /// [`alloc`](Self::alloc).
    ///
    /// # Errors
    ///
    /// Checked in this order, first failing check wins, nothing changes on error:
    /// [`FrameError::Foreign`] if the frame is not managed here; [`FrameError::AlreadyAllocated`]
    /// if it is allocated; [`FrameError::OutOfFrames`] if `available_frames() == 0` (taking it
    /// would break a reservation). Not subject to injected failures.
    ///
    /// Cost: as [`free`](Self::free).
    pub fn mark_allocated(&mut self, frame: PhysFrame<Size4KiB>) -> Result<(), FrameError> {
        let addr = frame.start_address();
        let (slot, is_free) = self.locate(addr)?;
        if !is_free {
            return Err(FrameError::AlreadyAllocated(addr));
        }
        if self.available_frames() == 0 {
            return Err(FrameError::OutOfFrames);
        }
        self.take(slot);
        self.stats.marked += 1;
        Ok(())
    }

    /// Returns whether a managed frame is allocated.
    ///
    /// # Errors
    ///
    /// [`FrameError::Foreign`] if the frame is not managed here.
    ///
    /// Cost: as [`free`](Self::free).
    pub fn is_allocated(&self, frame: PhysFrame<Size4KiB>) -> Result<bool, FrameError> {
        self.locate(frame.start_address())
            .map(|(_, is_free)| !is_free)
    }

    /// Returns whether the frame lies inside the usable ranges. Cost: O(log r).
    pub fn manages(&self, frame: PhysFrame<Size4KiB>) -> bool {
        self.layout
            .is_managed(frame.start_address().as_u64() >> FRAME_SHIFT)
    }

    /// Returns the managed ranges: the input trimmed to whole frames, sorted, overlaps merged.
    pub fn ranges(&self) -> impl Iterator<Item = PhysRange> + '_ {
        self.layout.regions().iter().map(|r| {
            PhysRange::new(
                PhysAddr::new(r.start << FRAME_SHIFT),
                PhysAddr::new(r.end << FRAME_SHIFT),
            )
        })
    }

    /// Returns the number of managed frames. O(1).
    pub fn total_frames(&self) -> u64 {
        self.total
    }

    /// Returns the number of frames not allocated, reserved ones included. O(1).
    pub fn free_frames(&self) -> u64 {
        self.free
    }

    /// Returns the number of allocated frames (`total - free`). O(1).
    pub fn used_frames(&self) -> u64 {
        self.total - self.free
    }

    /// Returns the number of frames promised by [`reserve`](Self::reserve) and not yet taken. O(1).
    pub fn reserved_frames(&self) -> u64 {
        self.reserved
    }

    /// Returns the number of frames [`alloc`](Self::alloc) may hand out (`free - reserved`). O(1).
    pub fn available_frames(&self) -> u64 {
        self.free - self.reserved
    }

    /// Returns the number of wholly free, naturally aligned 2 MiB runs right now. O(1).
    ///
    /// [`alloc_2mib`](Self::alloc_2mib) succeeds iff this is non-zero and
    /// `available_frames() >= 512` (barring an injected failure).
    pub fn free_2mib_runs(&self) -> u64 {
        self.whole_runs
    }

    /// Returns the heap bytes held as metadata (capacity of every `Vec`), for the overhead
    /// figure: about 34 960 B per GiB managed. O(depth).
    pub fn metadata_bytes(&self) -> usize {
        self.layout.heap_bytes()
            + self.bits.capacity() * core::mem::size_of::<[u64; CHUNK_WORDS]>()
            + self.free_in_chunk.capacity() * core::mem::size_of::<u16>()
            + self.usable_in_chunk.capacity() * core::mem::size_of::<u16>()
            + self.partial.heap_bytes()
            + self.whole.heap_bytes()
    }

    /// Arms failure injection for tests of callers: the `k`-th call from now (1-based) of
    /// [`alloc`](Self::alloc), [`alloc_2mib`](Self::alloc_2mib) or [`reserve`](Self::reserve)
    /// fails with [`FrameError::OutOfFrames`], changing nothing else. Every such call counts,
    /// whether it would have succeeded or not; the failure fires once, then injection is
    /// disarmed. `None` or `Some(0)` disarms. Re-arming replaces the previous setting.
    ///
    /// [`alloc_reserved`](Self::alloc_reserved) (which must not fail), [`free`](Self::free) and
    /// [`mark_allocated`](Self::mark_allocated) are not counted.
    pub fn fail_request_after(&mut self, k: Option<u64>) {
        self.fail_countdown = k.filter(|&k| k > 0);
    }

    /// Returns a snapshot of the counts and the lifetime counters. O(1).
    pub fn stats(&self) -> FrameStats {
        FrameStats {
            total_frames: self.total,
            free_frames: self.free,
            used_frames: self.used_frames(),
            reserved_frames: self.reserved,
            available_frames: self.available_frames(),
            free_2mib_runs: self.whole_runs,
            ..self.stats
        }
    }

    // ---- internals -------------------------------------------------------------------------

    /// Counts one request against the injected failure; `Err` if this is the one to fail.
    #[inline]
    fn count_request(&mut self) -> Result<(), FrameError> {
        match self.fail_countdown {
            None => Ok(()),
            Some(1) => {
                self.fail_countdown = None;
                Err(FrameError::OutOfFrames)
            }
            Some(k) => {
                self.fail_countdown = Some(k - 1);
                Ok(())
            }
        }
    }

    #[inline]
    fn class(&self, ci: usize) -> ChunkClass {
        match u64::from(self.free_in_chunk[ci]) {
            0 => ChunkClass::Full,
            // free == 512 implies all 512 frames are usable.
            CHUNK_FRAMES => ChunkClass::Whole,
            _ => ChunkClass::Partial,
        }
    }

    /// Moves chunk `ci` between summaries after its free count changed from class `before`.
    #[inline]
    fn reclassify(&mut self, ci: usize, before: ChunkClass) {
        let after = self.class(ci);
        if before == after {
            return;
        }
        match before {
            ChunkClass::Full => {}
            ChunkClass::Partial => self.partial.remove(ci),
            ChunkClass::Whole => {
                self.whole.remove(ci);
                self.whole_runs -= 1;
            }
        }
        match after {
            ChunkClass::Full => {}
            ChunkClass::Partial => self.partial.insert(ci),
            ChunkClass::Whole => {
                self.whole.insert(ci);
                self.whole_runs += 1;
            }
        }
    }

    /// Resolves `addr` to its slot and whether the frame is free.
    ///
    /// # Errors
    ///
    /// [`FrameError::Foreign`] if the frame is not managed.
    #[inline]
    fn locate(&self, addr: PhysAddr) -> Result<(Slot, bool), FrameError> {
        let f = addr.as_u64() >> FRAME_SHIFT;
        let ci = self
            .layout
            .chunk_index(f >> (CHUNK_SHIFT - FRAME_SHIFT))
            .ok_or(FrameError::Foreign(addr))?;
        let off = f % CHUNK_FRAMES;
        let slot = Slot {
            chunk: ci,
            word: (off / 64) as usize,
            mask: 1 << (off % 64),
        };
        if self.bits[ci][slot.word] & slot.mask != 0 {
            // Only managed frames ever have their bit set.
            Ok((slot, true))
        } else if u64::from(self.usable_in_chunk[ci]) == CHUNK_FRAMES || self.layout.is_managed(f) {
            Ok((slot, false))
        } else {
            Err(FrameError::Foreign(addr))
        }
    }

    /// Marks the free frame at `slot` allocated. The caller checked that it is free and that
    /// taking it respects the reservations.
    #[inline]
    fn take(&mut self, slot: Slot) {
        let before = self.class(slot.chunk);
        self.bits[slot.chunk][slot.word] &= !slot.mask;
        self.free_in_chunk[slot.chunk] -= 1;
        self.free -= 1;
        self.reclassify(slot.chunk, before);
    }

    /// Marks the allocated frame at `slot` free. The caller checked that it is managed and
    /// allocated.
    #[inline]
    fn put(&mut self, slot: Slot) {
        let before = self.class(slot.chunk);
        self.bits[slot.chunk][slot.word] |= slot.mask;
        self.free_in_chunk[slot.chunk] += 1;
        self.free += 1;
        self.reclassify(slot.chunk, before);
    }

    /// Takes the lowest free frame of the lowest partial chunk, else of the lowest whole chunk.
    ///
    /// # Panics
    ///
    /// If no chunk has a free frame although the caller checked `free > 0` (broken invariant).
    #[inline]
    fn take_any(&mut self) -> PhysFrame<Size4KiB> {
        let ci = self
            .partial
            .first()
            .or_else(|| self.whole.first())
            .expect("frame allocator: free count > 0 but no chunk has a free frame");
        let (word, bits) = self.bits[ci]
            .iter()
            .enumerate()
            .find(|(_, w)| **w != 0)
            .map(|(i, w)| (i, *w))
            .expect("frame allocator: chunk in a summary has no free frame");
        // The lowest set bit (`isolate_lowest_one`, not stable in 1.95).
        let mask = bits & bits.wrapping_neg();
        self.take(Slot {
            chunk: ci,
            word,
            mask,
        });
        let f = self.layout.chunk_number(ci) * CHUNK_FRAMES
            + (word as u64) * 64
            + u64::from(mask.trailing_zeros());
        PhysFrame::containing_address(PhysAddr::new(f << FRAME_SHIFT))
    }

    /// Checks every derived structure against a recount from the bitmaps (tests only).
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        let mut free = 0u64;
        let mut total = 0u64;
        let mut whole = 0u64;
        for ci in 0..self.layout.chunk_count() {
            let chunk = self.layout.chunk_number(ci);
            assert_eq!(self.layout.chunk_index(chunk), Some(ci));
            let ones: u32 = self.bits[ci].iter().map(|w| w.count_ones()).sum();
            assert_eq!(
                u64::from(ones),
                u64::from(self.free_in_chunk[ci]),
                "chunk {ci} free count"
            );
            let managed = self.layout.managed_in_chunk(chunk);
            assert_eq!(
                managed,
                u64::from(self.usable_in_chunk[ci]),
                "chunk {ci} usable count"
            );
            assert!(
                managed > 0,
                "chunk {ci} carries metadata but no managed frame"
            );
            for f in chunk * CHUNK_FRAMES..(chunk + 1) * CHUNK_FRAMES {
                let off = f % CHUNK_FRAMES;
                if self.bits[ci][(off / 64) as usize] & (1 << (off % 64)) != 0 {
                    assert!(
                        self.layout.is_managed(f),
                        "unmanaged frame {f:#x} marked free"
                    );
                }
            }
            let class = self.class(ci);
            assert_eq!(
                self.partial.contains(ci),
                class == ChunkClass::Partial,
                "chunk {ci} partial"
            );
            assert_eq!(
                self.whole.contains(ci),
                class == ChunkClass::Whole,
                "chunk {ci} whole"
            );
            whole += u64::from(class == ChunkClass::Whole);
            free += u64::from(ones);
            total += managed;
        }
        self.partial.check_invariants();
        self.whole.check_invariants();
        assert_eq!(free, self.free);
        assert_eq!(total, self.total);
        assert_eq!(whole, self.whole_runs);
        assert!(self.reserved <= self.free, "reservation contract broken");
        let s = self.stats;
        assert_eq!(
            self.total - self.free,
            s.allocs + s.marked + CHUNK_FRAMES * s.allocs_2mib
                - s.frees
                - CHUNK_FRAMES * s.frees_2mib,
            "frame conservation"
        );
    }
}
