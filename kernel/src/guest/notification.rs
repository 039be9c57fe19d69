//! Memory notifications (host-abi §5): the band of free commit, the registered
//! `ICLRMemoryNotificationCallback`, and the `OnMemoryNotification` calls left for ring 3 when the
//! band changes.

use core::sync::atomic::{AtomicU64, Ordering};

use host_abi::MemoryAvailable;

use super::call_clock::{self, Stage};
use super::calls::Callbacks;
use super::hresult::{self, HResult};
use super::{Ended, Guest, exceptions};
use crate::arch::percpu::{self, MAX_CPUS};

/// One CPU's count of [`COMMIT_EPOCH`], in a cache line of its own.
#[repr(align(64))]
struct EpochCount(AtomicU64);

/// Counts the host calls, stack growths and thread stacks that may have changed the commit
/// charge, of every guest and thread: a guest checks its memory band again only once this moved.
/// Per CPU, each counted by the CPU that made the change (only that CPU writes its count, and
/// never from an interrupt handler, so a load and a store suffice: no locked instruction in every
/// commit, decommit and release); the epoch is their sum ([`commit_epoch`]).
static COMMIT_EPOCH: [EpochCount; MAX_CPUS] = [const { EpochCount(AtomicU64::new(0)) }; MAX_CPUS];

/// Notes that the commit charge may have changed (a commit, decommit, release or stack growth),
/// once the change is made. With threads on other CPUs changing it (stack growth is served
/// without the guest's lock), the order is what keeps a change from being missed: a check reads
/// the epoch before the charge, so a change it did not see moves the epoch after that read, and
/// the next check reads the charge again. (Each CPU's count only grows, so a sum read after
/// another CPU's count moved differs from one read before.)
pub(super) fn note_commit_change() {
    let count = &COMMIT_EPOCH[percpu::current_index()].0;
    count.store(count.load(Ordering::Relaxed).wrapping_add(1), Ordering::Release);
}

/// The number of [`note_commit_change`]s so far (every CPU's added up); read before the commit
/// charge it stands for.
pub(super) fn commit_epoch() -> u64 {
    COMMIT_EPOCH.iter().map(|c| c.0.load(Ordering::Acquire)).fold(0, u64::wrapping_add)
}

/// The notification thresholds in bytes of free commit: (low, high) (host-abi §5; set at boot,
/// see `memory::MemoryConfig`).
pub(super) fn thresholds() -> (u64, u64) {
    thresholds_for(crate::memory::commit_state().limit_bytes)
}

/// The thresholds for a commit limit of `limit` bytes.
fn thresholds_for(limit: u64) -> (u64, u64) {
    let c = crate::memory::config();
    (limit * c.low_threshold_percent / 100, limit * c.high_threshold_percent / 100)
}

impl Guest {
    /// The memory band now: free commit against the thresholds.
    fn current_band() -> MemoryAvailable {
        let commit = crate::memory::commit_state();
        let (low, high) = thresholds_for(commit.limit_bytes);
        let free = commit.free_bytes();
        if free < low {
            MemoryAvailable::Low
        } else if free > high {
            MemoryAvailable::High
        } else {
            MemoryAvailable::Neutral
        }
    }

    /// Leaves a call of the registered callback's `OnMemoryNotification` in `callbacks` if the
    /// band changed since the last report, unless a notification or an exception handler is
    /// running (it is delivered when that one returns or is left: host-abi §10.3 for a
    /// notification; for a handler, §9 allows either, and the maintainers' conformance guest
    /// expects no callback during a handler).
    pub(super) fn note_band_change(&mut self, callbacks: &mut Callbacks) -> Result<(), Ended> {
        let noted = self.note_band(callbacks);
        call_clock::lap(Stage::Band);
        noted
    }

    fn note_band(&mut self, callbacks: &mut Callbacks) -> Result<(), Ended> {
        let Some(object) = self.callback else { return Ok(()) };
        if self.notifying || self.thread.handler_frame.is_some() {
            return Ok(());
        }
        // Only commits, decommits, releases and stack growths move the band: the commit state is
        // read only after one (of any guest's) since the last check.
        let epoch = commit_epoch();
        if epoch == self.band_epoch {
            return Ok(());
        }
        self.band_epoch = epoch;
        let band = Self::current_band();
        if Some(band) == self.band {
            return Ok(());
        }
        self.band = Some(band);
        let function = self.callback_method(object, 3)?;
        callbacks.push_notification(function, object, band);
        Ok(())
    }

    /// Reads slot `slot` of a guest COM object's vtable; an unreadable object ends the guest with
    /// an access violation (host-abi §9: a bad callback object, for a callback).
    pub(super) fn callback_method(&self, object: u64, slot: u64) -> Result<u64, Ended> {
        let vtbl = self.mem().read_u64(object).map_err(|_| self.bad_callback(object))?;
        self.mem().read_u64(vtbl.wrapping_add(slot * 8)).map_err(|_| self.bad_callback(object))
    }

    fn bad_callback(&self, object: u64) -> Ended {
        crate::kprintln!("guest {}: callback object {object:#x} is unreadable", self.name);
        exceptions::status::ACCESS_VIOLATION as i32
    }

    /// `RegisterMemoryNotificationCallback`: AddRef the new object, Release the old one (both
    /// made by ring 3 before the call returns), no notification now (host-abi §5, §9). A first
    /// registration takes the band now as the one reported; a replacement keeps the band last
    /// reported, so that a change the old callback was not told of yet (one made while it ran)
    /// reaches the new one (§10.3: the newest band is delivered after the running callback
    /// returns).
    pub(super) fn register_callback(&mut self, object: u64, callbacks: &mut Callbacks) -> Result<Result<(), HResult>, Ended> {
        if object != 0 {
            // An unreadable object or vtable is ERROR_NOACCESS; one in a guard page 0x80000001,
            // the guard cleared (host-abi §9), as for every pointer a call reads.
            let mut header = [0u8; 8];
            if let Err(e) = self.mem().read_bytes(object, &mut header) {
                return Ok(Err(hresult::from_vm(e)));
            }
            let vtbl = u64::from_le_bytes(header);
            let mut table = [0u8; 32];
            if let Err(e) = self.mem().read_bytes(vtbl, &mut table) {
                return Ok(Err(hresult::from_vm(e)));
            }
            let add_ref = u64::from_le_bytes(table[8..16].try_into().expect("8 bytes"));
            callbacks.push(add_ref, object, 0);
        }
        let replaced = self.callback.take();
        if let Some(old) = replaced {
            let release = self.callback_method(old, 2)?;
            callbacks.push(release, old, 0);
        }
        self.callback = (object != 0).then_some(object);
        if replaced.is_none() {
            self.band_epoch = commit_epoch();
            self.band = Some(Self::current_band());
        }
        Ok(Ok(()))
    }
}
