//! The zeroed-frame list: frames an idle CPU zeroed ahead of demand, for demand-zero faults
//! (Windows' zeroed page list, which its zero-page thread fills at idle priority).
//!
//! A demand-zero fault needs an all-zero frame. Zeroing it on the fault path costs the faulting
//! thread the zeroing (and, in a virtual machine, the host's own fault on a page of guest RAM it
//! never backed: under QEMU TCG about 12,500 cycles against 1,800 for the zeroing). A CPU with
//! nothing to run zeroes free frames instead and pushes them here; a fault pops one and skips
//! both. The list is bounded ([`ZEROED_CAPACITY`]) so the work done ahead stays bounded.
//!
//! # Accounting
//!
//! To the global allocator a listed frame is allocated (as a cached frame is, `cache.rs`), so
//! a reservation never promises a frame that sits here. Unlike the caches, the list is not left
//! out of the commit limit: whoever finds the allocator short ([`drain`](ZeroedFrames::drain)s
//! it) gives every listed frame back and asks again, so a request that the allocator could serve
//! without the list still succeeds. The zeroing done ahead is then lost; nothing else is.
//!
//! The kernel keeps one list behind a lock, taken with interrupts off, for a push or a pop only
//! (a frame is zeroed before it is pushed, with no lock of the list held).

use x86_64::PhysAddr;
use x86_64::structures::paging::{PhysFrame, Size4KiB};

use super::SharedFrames;

/// Most frames the list holds (16 MiB).
pub const ZEROED_CAPACITY: usize = 4096;

/// Frames known to be all zero, allocated and mapped nowhere (see the module docs).
#[derive(Debug, Clone)]
pub struct ZeroedFrames {
    frames: [u64; ZEROED_CAPACITY],
    len: usize,
}

impl Default for ZeroedFrames {
    fn default() -> Self {
        Self::new()
    }
}

impl ZeroedFrames {
    /// Creates an empty list.
    pub const fn new() -> Self {
        ZeroedFrames { frames: [0; ZEROED_CAPACITY], len: 0 }
    }

    /// Returns the frames listed.
    pub const fn len(&self) -> usize {
        self.len
    }

    /// Returns `true` if no frame is listed.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Returns `true` if the list is full.
    pub const fn is_full(&self) -> bool {
        self.len == ZEROED_CAPACITY
    }

    /// Lists `frame`, which the caller has allocated and zeroed and maps nowhere.
    ///
    /// # Errors
    /// `frame` itself if the list is full (the caller keeps it).
    pub fn push(&mut self, frame: PhysFrame<Size4KiB>) -> Result<(), PhysFrame<Size4KiB>> {
        if self.is_full() {
            return Err(frame);
        }
        self.frames[self.len] = frame.start_address().as_u64();
        self.len += 1;
        Ok(())
    }

    /// Takes a listed frame (all zero, allocated, the caller's), the one listed last.
    pub fn pop(&mut self) -> Option<PhysFrame<Size4KiB>> {
        self.len = self.len.checked_sub(1)?;
        Some(PhysFrame::containing_address(PhysAddr::new(self.frames[self.len])))
    }

    /// Fills the empty slots of `slots`, in order, while frames are listed; returns how many it
    /// filled.
    pub fn fill(&mut self, slots: &mut [Option<PhysFrame<Size4KiB>>]) -> usize {
        let mut filled = 0;
        for slot in slots.iter_mut().filter(|s| s.is_none()) {
            let Some(frame) = self.pop() else { break };
            *slot = Some(frame);
            filled += 1;
        }
        filled
    }

    /// Gives every listed frame back to `global` (one lock acquisition); returns how many.
    /// A frame the allocator refuses (free already, or foreign: a kernel bug) is dropped from
    /// the list all the same and not counted.
    pub fn drain(&mut self, global: &impl SharedFrames) -> usize {
        if self.len == 0 {
            return 0;
        }
        let listed = &self.frames[..self.len];
        let returned = global.with(|g| listed.iter().filter(|&&a| g.free(PhysFrame::containing_address(PhysAddr::new(a))).is_ok()).count());
        debug_assert_eq!(returned, self.len, "zeroed frames: the allocator refused a listed frame");
        self.len = 0;
        returned
    }

    /// Iterates over the listed frames.
    pub fn frames(&self) -> impl Iterator<Item = PhysFrame<Size4KiB>> + '_ {
        self.frames[..self.len].iter().map(|&a| PhysFrame::containing_address(PhysAddr::new(a)))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::frame::{FrameAllocator, PhysRange};

    struct Global(Mutex<FrameAllocator>);

    impl SharedFrames for Global {
        fn with<R>(&self, f: impl FnOnce(&mut FrameAllocator) -> R) -> R {
            f(&mut self.0.lock().unwrap())
        }
    }

    fn global(frames: u64) -> Global {
        Global(Mutex::new(FrameAllocator::new(&[PhysRange::new(PhysAddr::new(0x10_0000), PhysAddr::new(0x10_0000 + frames * 4096))])))
    }

    #[test]
    fn push_pop_last_in_first_out_and_bounded() {
        let g = global(ZEROED_CAPACITY as u64 + 1);
        let mut list = ZeroedFrames::new();
        let taken: Vec<_> = (0..=ZEROED_CAPACITY).map(|_| g.with(|a| a.alloc().unwrap())).collect();
        for &f in &taken[..ZEROED_CAPACITY] {
            list.push(f).unwrap();
        }
        assert!(list.is_full());
        assert_eq!(list.push(taken[ZEROED_CAPACITY]), Err(taken[ZEROED_CAPACITY]), "a full list hands the frame back");
        assert_eq!(list.pop(), Some(taken[ZEROED_CAPACITY - 1]));
        assert_eq!(list.len(), ZEROED_CAPACITY - 1);
        let mut empty = ZeroedFrames::new();
        assert_eq!(empty.pop(), None);
        assert_eq!(empty.drain(&g), 0);
    }

    #[test]
    fn fill_only_empty_slots_in_order() {
        let g = global(8);
        let mut list = ZeroedFrames::new();
        let frames: Vec<_> = (0..3).map(|_| g.with(|a| a.alloc().unwrap())).collect();
        for &f in &frames {
            list.push(f).unwrap();
        }
        let own = g.with(|a| a.alloc().unwrap());
        let mut slots = [None, Some(own), None, None, None];
        assert_eq!(list.fill(&mut slots), 3);
        assert_eq!(slots, [Some(frames[2]), Some(own), Some(frames[1]), Some(frames[0]), None]);
        assert!(list.is_empty());
    }

    #[test]
    fn drain_gives_every_frame_back_exactly() {
        let g = global(64);
        let free_before = g.with(|a| (a.free_frames(), a.available_frames(), a.free_2mib_runs()));
        let mut list = ZeroedFrames::new();
        for _ in 0..40 {
            let f = g.with(|a| a.alloc().unwrap());
            list.push(f).unwrap();
        }
        assert_eq!(g.with(|a| a.available_frames()), 24);
        assert!(g.with(|a| a.reserve(30)).is_err(), "listed frames are allocated to the allocator");
        assert_eq!(list.drain(&g), 40);
        assert!(list.is_empty());
        assert_eq!(g.with(|a| (a.free_frames(), a.available_frames(), a.free_2mib_runs())), free_before, "every frame free again");
        assert_eq!(g.with(|a| (a.stats().allocs, a.stats().frees)), (40, 40));
        let r = g.with(|a| a.reserve(64)).expect("after the drain every frame can be promised");
        g.with(|a| a.unreserve(r));
    }
}
