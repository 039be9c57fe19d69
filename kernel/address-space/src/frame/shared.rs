//! [`SharedReservation`]: a frame reservation that faults holding the space lock shared take
//! from, one frame at a time.

use core::sync::atomic::{AtomicU64, Ordering};

use super::FrameReservation;

/// The frames a space holds promised to its committed pages that have none yet (demand-zero).
/// Calls that hold the space lock exclusively (`&mut`) add and split off whole reservations, as
/// with a [`FrameReservation`]; a demand-zero fault that holds it shared (`&self`) and has just
/// installed a frame of its own takes one frame's promise out ([`take_one`](Self::take_one)) to
/// give it back to the allocator. The count is atomic, so concurrent faults on other pages of
/// the space each take their own. Dropping one that still promises frames is a leak (a debug
/// assertion).
#[derive(Debug, Default)]
pub struct SharedReservation {
    frames: AtomicU64,
}

impl SharedReservation {
    /// A reservation of no frame.
    pub const fn empty() -> SharedReservation {
        SharedReservation { frames: AtomicU64::new(0) }
    }

    /// Returns how many frames it still promises.
    pub fn frames(&self) -> u64 {
        self.frames.load(Ordering::Relaxed)
    }

    /// Moves every frame of `other` into this reservation.
    pub fn absorb(&mut self, mut other: FrameReservation) {
        *self.frames.get_mut() += core::mem::take(&mut other.frames);
    }

    /// Moves `n` of its frames into a reservation of their own.
    ///
    /// # Panics
    ///
    /// If it holds fewer than `n` frames (a kernel bug).
    pub fn split(&mut self, n: u64) -> FrameReservation {
        let frames = self.frames.get_mut();
        assert!(n <= *frames, "frame reservation: split({n}) of {frames} frames (kernel bug)");
        *frames -= n;
        FrameReservation { frames: n }
    }

    /// Moves every frame into a reservation of their own.
    pub fn take_all(&mut self) -> FrameReservation {
        FrameReservation { frames: core::mem::take(self.frames.get_mut()) }
    }

    /// Moves one frame into a reservation of its own, through `&self` (a fault holding the space
    /// lock shared); `None` if it promises none.
    pub fn take_one(&self) -> Option<FrameReservation> {
        let mut seen = self.frames.load(Ordering::Relaxed);
        loop {
            let left = seen.checked_sub(1)?;
            match self.frames.compare_exchange_weak(seen, left, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Some(FrameReservation { frames: 1 }),
                Err(now) => seen = now,
            }
        }
    }
}

impl Drop for SharedReservation {
    fn drop(&mut self) {
        #[cfg(test)]
        if std::thread::panicking() {
            return;
        }
        let left = *self.frames.get_mut();
        debug_assert_eq!(left, 0, "frame reservation dropped with {left} frames still promised (a leak)");
    }
}
