//! [`FrameSource`]: how an address-space operation reaches the frame allocator.
//!
//! An operation takes frames (page tables, large pages, reservations for commits, demand-zero
//! frames) and gives them back (after its TLB round) through the [`VmContext`](crate::VmContext)'s
//! `frames`, a `&mut dyn FrameSource`. A `FrameAllocator` is one (the operation owns it for the
//! call: the single-threaded simulation and tests). A kernel that shares the allocator between
//! CPUs implements it over its lock, taken once per request (and per-CPU [`FrameCache`]s in
//! front of it for single frames), so no lock on the frames is held across a whole call.
//!
//! [`FrameCache`]: super::FrameCache

use x86_64::structures::paging::{PhysFrame, Size2MiB, Size4KiB};

use super::{FrameAllocator, FrameError, FrameReservation};

/// Where an operation's frames come from and go back to (see the module docs). Every method but
/// [`with_allocator`](Self::with_allocator) has a default that runs the allocator's own method
/// under it; an implementation may serve [`alloc`](Self::alloc) and [`free`](Self::free) from a
/// per-CPU cache instead.
pub trait FrameSource {
    /// Runs `f` on the allocator, which no one else changes meanwhile.
    fn with_allocator(&mut self, f: &mut dyn FnMut(&mut FrameAllocator));

    /// [`FrameAllocator::alloc`]: one unreserved frame.
    ///
    /// # Errors
    /// As [`FrameAllocator::alloc`].
    fn alloc(&mut self) -> Result<PhysFrame<Size4KiB>, FrameError> {
        locked(self, FrameAllocator::alloc)
    }

    /// [`FrameAllocator::free`].
    ///
    /// # Errors
    /// As [`FrameAllocator::free`].
    fn free(&mut self, frame: PhysFrame<Size4KiB>) -> Result<(), FrameError> {
        locked(self, |a| a.free(frame))
    }

    /// [`FrameAllocator::alloc_2mib`].
    ///
    /// # Errors
    /// As [`FrameAllocator::alloc_2mib`].
    fn alloc_2mib(&mut self) -> Result<PhysFrame<Size2MiB>, FrameError> {
        locked(self, FrameAllocator::alloc_2mib)
    }

    /// [`FrameAllocator::free_2mib`].
    ///
    /// # Errors
    /// As [`FrameAllocator::free_2mib`].
    fn free_2mib(&mut self, frame: PhysFrame<Size2MiB>) -> Result<(), FrameError> {
        locked(self, |a| a.free_2mib(frame))
    }

    /// [`FrameAllocator::reserve`].
    ///
    /// # Errors
    /// As [`FrameAllocator::reserve`].
    fn reserve(&mut self, n: u64) -> Result<FrameReservation, FrameError> {
        locked(self, |a| a.reserve(n))
    }

    /// [`FrameAllocator::unreserve`].
    fn unreserve(&mut self, reservation: FrameReservation) {
        let mut reservation = Some(reservation);
        locked(self, |a| a.unreserve(reservation.take().expect("run once")));
    }

    /// [`FrameAllocator::alloc_reserved`].
    fn alloc_reserved(&mut self, reservation: &mut FrameReservation) -> PhysFrame<Size4KiB> {
        locked(self, |a| a.alloc_reserved(reservation))
    }
}

/// Runs `f` on the allocator of `source` and returns its result.
fn locked<S: FrameSource + ?Sized, R>(source: &mut S, f: impl FnOnce(&mut FrameAllocator) -> R) -> R {
    let mut f = Some(f);
    let mut result = None;
    source.with_allocator(&mut |a| result = Some((f.take().expect("with_allocator runs its closure once"))(a)));
    result.expect("with_allocator runs its closure")
}

impl FrameSource for FrameAllocator {
    fn with_allocator(&mut self, f: &mut dyn FnMut(&mut FrameAllocator)) {
        f(self)
    }
    fn alloc(&mut self) -> Result<PhysFrame<Size4KiB>, FrameError> {
        FrameAllocator::alloc(self)
    }
    fn free(&mut self, frame: PhysFrame<Size4KiB>) -> Result<(), FrameError> {
        FrameAllocator::free(self, frame)
    }
    fn alloc_2mib(&mut self) -> Result<PhysFrame<Size2MiB>, FrameError> {
        FrameAllocator::alloc_2mib(self)
    }
    fn free_2mib(&mut self, frame: PhysFrame<Size2MiB>) -> Result<(), FrameError> {
        FrameAllocator::free_2mib(self, frame)
    }
    fn reserve(&mut self, n: u64) -> Result<FrameReservation, FrameError> {
        FrameAllocator::reserve(self, n)
    }
    fn unreserve(&mut self, reservation: FrameReservation) {
        FrameAllocator::unreserve(self, reservation)
    }
    fn alloc_reserved(&mut self, reservation: &mut FrameReservation) -> PhysFrame<Size4KiB> {
        FrameAllocator::alloc_reserved(self, reservation)
    }
}
