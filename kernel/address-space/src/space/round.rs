//! A call in two phases: its entries changed under the exclusive space lock, its TLB round and
//! frees under the shared lock (Linux's munmap: `mmap_write_downgrade` before the unmap's TLB
//! flush and frees).
//!
//! Every call that narrows what a CPU may still have cached — decommit and release
//! (`virtual_free`), a protect that removes access or arms a guard, a commit over committed pages
//! with another protection, a write-watch reset (`reset_write_watch`, `get_write_watch` with
//! `WRITE_WATCH_FLAG_RESET`), anything else whose batch needs a round — ends in one TLB round
//! and then gives back what it unmapped (data frames, table pages, 2 MiB runs) and, after
//! those, the commit charge of the pages and tables it dropped. The round is the long part
//! (an IPI to every other CPU running the space and the wait for their acknowledgements), and
//! it needs nothing of the space but its set of CPUs. So a kernel may run a call as:
//!
//! 1. with the space lock held exclusively, [`AddressSpace::defer_rounds`]`(cx, |s, cx| s.…)`:
//!    the call validates and changes every entry, record, count and reservation as the one-call
//!    API does, and returns its result and a [`PendingRound`] instead of making its round;
//! 2. the lock downgraded to shared (no other exclusive holder in between: a fair lock hands
//!    it to the waiters after this one only when the shared holders left),
//!    [`PendingRound::complete`]`(&space, cx)`: the round on the CPUs running the space then,
//!    the frees, the uncharge.
//!
//! Without `defer_rounds` every call runs both phases itself, as before (the simulation, the
//! tests, a kernel that does not care): the same code, so the model tests cover both.
//!
//! **Phase 1 cannot fail after its first change** (validate, then perform, as every call): it
//! is the call's own perform phase; what it leaves is a list and two counts. A round deferred by
//! an earlier operation of the same `defer_rounds` (a protect and then the write of the old
//! protection's mark, say) is merged with the next one's, so a call still makes one round; if
//! the two together would pass [`MAX_DEFERRED`] frames, the earlier one is completed first, under
//! the exclusive lock. A walk that frees more than a batch carries makes its intermediate rounds
//! under the exclusive lock as before (they free the frames they flushed): only the last one is
//! left.
//!
//! **What a fault taking the lock shared sees between the phases** (`handle_fault_shared`, the
//! only code a kernel runs under the shared lock besides reading counts) is the call's finished
//! state in everything it reads: the allocation map (a released allocation is gone, so the fault
//! is an access violation before any entry is read), each allocation's lazy run, committed count
//! and committed extent, every entry (decommitted pages are reserved, protected pages carry their
//! new protection), the table links, the demand-zero reservation (the untouched pages' promises
//! went back in phase 1) and the table-page count. What is not finished is invisible to it:
//! - *stale translations on other CPUs*: the same as while the exclusive holder waited for its
//!   round; the hardware never looked at the lock. A CPU whose access faults decides from the
//!   entries, which are final: a decommitted page is refused, a page protected `PAGE_NOACCESS`
//!   is refused, a page protected read-only refuses a write. A fault that finds the entry
//!   present and allowing the access (a widening protect, a guard disarmed meanwhile by another
//!   fault) only invalidates its own TLB entry; the round flushing a page that was re-made
//!   present since costs that CPU one more walk.
//! - *a demand-zero fault cannot install a page into a range being decommitted*: the entries
//!   are already reserved (zero, or the range left the lazy run), so the fault refuses; a fault
//!   that asked for a frame before the call and comes back with it zeroed re-reads the entry
//!   and finds it changed (its compare-and-exchange, or its decision, fails) and the frame goes
//!   back to the caller. Its promise was not taken, and the call gave back exactly the promises
//!   of the pages it found untouched.
//! - *a guard disarmed between the phases* on a page the call armed: the call has taken effect
//!   (the page is a guard page), the fault consumed the guard, as it may after the call returns.
//! - *a table unlinked but not yet freed*: the walk of a fault starts at the root and follows
//!   present entries only, so it never reaches a table the call unlinked (the parent's entry is
//!   zero). The table page stays allocated until the round has flushed every paging-structure
//!   cache that may still point at it (§4(c)). Tables kept empty by a decommit stay linked, as
//!   at the end of the call.
//! - *frames not yet freed, charge not yet given back*: a fault never frees, and takes only its
//!   own page's promise (an atomic count). The charge is given back after the frees, so another
//!   space's commit that passes the charge always finds its frames; one that is refused while a
//!   decommit is in its second phase is ordered before the decommit (which has not returned).
//!
//! **Without the lock.** Phase 2 reads nothing of the space but its set of CPUs, and changes
//! nothing of it: the frames and table pages it frees were unlinked in phase 1 (no walk from the
//! root reaches them), the charge is the charge's. So a kernel may instead release the lock after
//! phase 1 and run [`PendingRound::complete_on`] with no hold on the space, if it keeps out, until
//! that returns, every later call whose pages *overlap the call's* (all of a large page counts as
//! one; the ones it may change, or whose state it reports: a query, a protect's old protection, a
//! failure that depends on them). What such a call would otherwise see is the first call's
//! finished entries while a stale translation of them may still be in another CPU's TLB: a guest
//! could observe the call as done (a query says decommitted) and still reach the old page through
//! that TLB, so the call would not be atomic.
//! A call on other pages cannot tell the difference: its result depends only on its own pages'
//! entries and on the global counts, and those are as if it ran before the first call (a commit
//! refused for the charge the first call gives back only in phase 2 is ordered before it). Its
//! phase 1 may share a table with the first call's pages: it writes only its own entries, creates
//! a table where the first call unlinked one, and a CPU whose paging-structure cache still points
//! at the unlinked table faults once, finds the page allowed and invalidates its entry (`INVLPG`
//! drops the paging-structure caches for the address too). The kernel does this
//! (`kernel/src/memory/space.rs`, `SpaceShared::with_range`).
//!
//! **A second exclusive caller** (any other call on the space, a `VirtualQuery`, a fault handled
//! exclusively, the teardown) waits until every shared holder left, the first call's second
//! phase included (or, without the lock, until the second phase of every call on its pages is
//! done): it sees the round done, the frames freed, the charge given back — each call takes
//! effect atomically for every other call (host-abi §10.2). With the lock downgraded only faults
//! run between the phases; without it, also calls on other pages, whose own second phases may
//! then overlap the first's (each round serves the other's requests while it waits).

use super::{AddressSpace, VmContext};
use crate::paging::tlb::{ActiveCpus, MAX_DEFERRED, Tlb, TlbBatch};
use crate::PhysMemory;

/// The part of a call left for after the exclusive lock (see the module docs): one TLB round
/// on the CPUs running the space, the frames and table pages it unmapped, freed after the round,
/// and the commit charge (pages, table pages) given back after those.
#[must_use = "a pending round holds frames to free and charge to give back: complete it"]
#[derive(Debug)]
pub struct PendingRound {
    batch: TlbBatch,
    uncharge: (u64, u64),
    /// The space's root, to catch a round completed on another space.
    root: u64,
}

impl PendingRound {
    /// Runs the round on the CPUs running `space` (read now: a CPU that joined since phase 1
    /// walks the new tables and is flushed for nothing, one that left has no translation left),
    /// then frees the frames and table pages and gives back the charge. Needs the space only
    /// shared: nothing of it changes.
    ///
    /// # Panics
    ///
    /// If `space` is not the space that left the round (a caller bug), or a frame it frees is
    /// not allocated (a kernel bug).
    pub fn complete<M: PhysMemory, T: Tlb>(self, space: &AddressSpace, cx: &mut VmContext<'_, M, T>) {
        assert_eq!(self.root, space.root_pa(), "a pending round completed on another space");
        self.complete_on(&space.active, cx);
    }

    /// As [`complete`](Self::complete) with no hold on the space at all: `active` is the space's
    /// set of CPUs ([`AddressSpace::active_set`]), the only thing of it the round reads. For a
    /// caller that releases the space lock after phase 1 and keeps every later call that may
    /// change or report the pages of this call out until this returns (module docs, "Without
    /// the lock").
    pub fn complete_on<M: PhysMemory, T: Tlb>(mut self, active: &ActiveCpus, cx: &mut VmContext<'_, M, T>) {
        self.run(active, cx);
    }

    /// The frames and table pages it will free (4 KiB frames, 2 MiB runs).
    pub fn frames(&self) -> (usize, usize) {
        self.batch.deferred_frames()
    }

    /// The commit charge it will give back: pages, table pages.
    pub fn uncharge(&self) -> (u64, u64) {
        self.uncharge
    }

    fn run<M: PhysMemory, T: Tlb>(&mut self, active: &ActiveCpus, cx: &mut VmContext<'_, M, T>) {
        self.batch.flush(active.get(), cx.tlb, cx.frames, cx.counters);
        give_back(core::mem::take(&mut self.uncharge), cx);
    }
}

impl Drop for PendingRound {
    fn drop(&mut self) {
        debug_assert!(self.batch.is_empty() && self.frames() == (0, 0) && self.uncharge == (0, 0), "a pending round dropped before it was completed");
    }
}

/// Gives `(pages, table pages)` of commit charge back (nothing for none).
pub(super) fn give_back<M: PhysMemory, T: Tlb>(uncharge: (u64, u64), cx: &mut VmContext<'_, M, T>) {
    if uncharge != (0, 0) {
        cx.charge.uncharge(uncharge.0, uncharge.1);
    }
}

impl AddressSpace {
    /// Runs `call` (one call of this API, or several that make one) as the first phase of a
    /// two-phase call (module docs): its TLB round, the frees after it and the charge it gives
    /// back are not carried out but returned, for [`PendingRound::complete`] once the caller
    /// holds the space only shared. `None`: nothing was left (no entry a CPU may cache changed).
    ///
    /// # Panics
    ///
    /// If called from inside `call` (one level only).
    pub fn defer_rounds<M: PhysMemory, T: Tlb, R>(
        &mut self,
        cx: &mut VmContext<'_, M, T>,
        call: impl FnOnce(&mut AddressSpace, &mut VmContext<'_, M, T>) -> R,
    ) -> (R, Option<PendingRound>) {
        assert!(!self.deferring, "defer_rounds inside defer_rounds");
        self.deferring = true;
        let result = call(self, cx);
        self.deferring = false;
        // Moved out only when there is one: `Option::take` copies the whole slot (a round's batch
        // is several hundred bytes) even when it is empty, which nearly every call would pay.
        let pending = if self.pending.is_some() { self.pending.take() } else { None };
        (result, pending)
    }

    /// Leaves `batch` (which needs a round) and `uncharge` for the caller's second phase, merged
    /// with what an earlier operation of the call left; past [`MAX_DEFERRED`] frames together,
    /// the earlier one is completed now. `batch` is left empty.
    pub(super) fn defer<M: PhysMemory, T: Tlb>(&mut self, batch: &mut TlbBatch, uncharge: (u64, u64), cx: &mut VmContext<'_, M, T>) {
        let count = |(small, large): (usize, usize)| small + large;
        match &mut self.pending {
            Some(p) if count(p.frames()) + count(batch.deferred_frames()) <= MAX_DEFERRED => {
                p.batch.append(batch);
                p.uncharge = (p.uncharge.0 + uncharge.0, p.uncharge.1 + uncharge.1);
            }
            slot => {
                if let Some(mut earlier) = slot.take() {
                    earlier.run(&self.active, cx);
                }
                let batch = core::mem::replace(batch, TlbBatch::new(self.config.tlb_flush_threshold));
                *slot = Some(PendingRound { batch, uncharge, root: self.root.start_address().as_u64() });
            }
        }
    }
}
