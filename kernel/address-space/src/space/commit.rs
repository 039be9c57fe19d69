//! Committing and decommitting ranges: the shared core of VirtualAlloc(MEM_COMMIT), image
//! creation, VirtualFree(MEM_DECOMMIT / MEM_RELEASE) and teardown.
//!
//! Commit is split into [`AddressSpace::prepare_commit`] (may fail; obtains the charge — of the
//! new pages and the table pages they need, see `charge.rs` — the frame reservation and the
//! table pages, in that order, undoing what it took if a later step fails)
//! and [`AddressSpace::perform_commit`] (writes entries; cannot fail).

use ::alloc::vec::Vec;
use core::ops::ControlFlow;

use x86_64::structures::paging::{PhysFrame, Size2MiB};

use super::{AddressSpace, Allocation, VmContext};
use crate::charge::CriticalLevel;
use crate::frame::FrameReservation;
use crate::paging::pte::{self, Pte};
use crate::paging::table;
use crate::paging::tlb::{MAX_DEFERRED, Tlb, TlbBatch};
use crate::protection::{BaseProtection, CacheMode};
use crate::{PhysMemory, VmError};
use crate::{ALLOCATION_GRANULARITY, LARGE_PAGE_SIZE, PAGE_SIZE};

/// What a commit obtained in its fallible phase. It owns what it took: the perform phase
/// consumes it (dropping one that still holds frames is a leak, a debug assertion).
#[must_use = "a commit plan holds frames and charge"]
pub(crate) struct CommitPlan {
    /// Pages that were reserved and become committed (charged, with their tables, when the plan
    /// was made; frame-reserved).
    pub new_pages: u64,
    /// One frame for each new 4 KiB page, taken when the page is first touched.
    pub frames: FrameReservation,
    /// Zeroed table pages for the entries the range needs.
    pub tables: Vec<PhysFrame>,
    /// 2 MiB frames (large-page commits only).
    pub large: Vec<PhysFrame<Size2MiB>>,
}

impl Drop for CommitPlan {
    fn drop(&mut self) {
        debug_assert!(self.tables.is_empty() && self.large.is_empty(), "commit plan dropped holding table pages or large frames");
    }
}

/// The most frames one 2 MiB chunk of a decommit defers: 512 data frames and its page table,
/// directory and directory-pointer table.
const CHUNK_DEFERRED: usize = 512 + 3;

impl AddressSpace {
    /// Adds `delta` to the committed-page count of the allocation at `base`.
    pub(crate) fn note_committed(&mut self, base: u64, delta: i64) {
        let a = self.allocations.get_mut(&base).expect("allocation record");
        a.committed_pages = a.committed_pages.checked_add_signed(delta).expect("committed page count");
        if a.committed_pages != a.size / PAGE_SIZE {
            a.uniform = None;
        }
    }

    /// Keeps the [`uniform`](Allocation::uniform) state of the allocation at `base` after every
    /// page of `[start, end)` (all committed) got protection `prot` (and a guard if `guard`).
    pub(crate) fn note_protection(&mut self, base: u64, start: u64, end: u64, prot: BaseProtection, guard: bool) {
        let a = self.allocations.get_mut(&base).expect("allocation record");
        let whole = start <= a.base && end >= a.end() && a.committed_pages == a.size / PAGE_SIZE;
        a.uniform = (!guard && !a.large && (whole || a.uniform == Some(prot))).then_some(prot);
    }

    /// Counts the reserved (not committed) pages of `[start, end)` of allocation `a`.
    pub(crate) fn count_reserved(&self, mem: &impl PhysMemory, start: u64, end: u64, a: &Allocation) -> u64 {
        if a.committed_pages == 0 {
            return (end - start) / PAGE_SIZE;
        }
        if a.committed_pages == a.size / PAGE_SIZE {
            return 0;
        }
        let mut n = 0;
        table::scan(
            mem,
            self.root_pa(),
            start,
            end,
            |a, b, e| {
                match e {
                    Some(e) => n += u64::from(!e.is_committed()),
                    None => n += (b - a) / PAGE_SIZE,
                }
                ControlFlow::Continue(())
            },
        );
        n
    }

    /// Returns `true` if every page of `[start, end)` (inside `a`) is committed.
    pub(crate) fn all_committed(&self, mem: &impl PhysMemory, start: u64, end: u64, a: &Allocation) -> bool {
        if a.committed_pages == a.size / PAGE_SIZE {
            return true;
        }
        if a.committed_pages == 0 {
            return false;
        }
        let mut ok = true;
        table::scan(
            mem,
            self.root_pa(),
            start,
            end,
            |_, _, e| {
                if e.is_some_and(|e| e.is_committed()) {
                    ControlFlow::Continue(())
                } else {
                    ok = false;
                    ControlFlow::Break(())
                }
            },
        );
        ok
    }

    /// Obtains what committing `[start, end)` (4 KiB pages) needs: checks the charge for the
    /// pages not yet committed, reserves one frame for each, allocates the missing table pages.
    ///
    /// # Errors
    ///
    /// [`VmError::CommitmentLimit`] (checked first), then [`VmError::NoMemory`]; nothing is
    /// held or changed on error.
    pub(crate) fn prepare_commit<M: PhysMemory, T: Tlb>(
        &self,
        cx: &mut VmContext<'_, M, T>,
        start: u64,
        end: u64,
        level: CriticalLevel,
        a: &Allocation,
    ) -> Result<CommitPlan, VmError> {
        let new_pages = self.count_reserved(cx.mem, start, end, a);
        self.prepare_pages(cx, start, end, level, new_pages)
    }

    /// [`prepare_commit`](Self::prepare_commit) for a range that is not part of any allocation
    /// yet (a new reservation): every page is new.
    pub(crate) fn prepare_commit_new<M: PhysMemory, T: Tlb>(
        &self,
        cx: &mut VmContext<'_, M, T>,
        start: u64,
        end: u64,
        level: CriticalLevel,
    ) -> Result<CommitPlan, VmError> {
        self.prepare_pages(cx, start, end, level, (end - start) / PAGE_SIZE)
    }

    fn prepare_pages<M: PhysMemory, T: Tlb>(
        &self,
        cx: &mut VmContext<'_, M, T>,
        start: u64,
        end: u64,
        level: CriticalLevel,
        new_pages: u64,
    ) -> Result<CommitPlan, VmError> {
        let missing = table::count_missing_tables(cx.mem, self.root_pa(), start, end, 0);
        // The tables are charged with the pages (charge.rs): checked and charged together,
        // first, in one step (another space may be committing on another CPU).
        cx.charge.try_charge(new_pages, missing, level)?;
        let frames = if new_pages > 0 {
            match cx.frames.reserve(new_pages) {
                Ok(frames) => frames,
                Err(_) => {
                    cx.charge.uncharge(new_pages, missing);
                    return Err(VmError::NoMemory);
                }
            }
        } else {
            FrameReservation::empty()
        };
        match table::alloc_tables(missing, cx.frames, cx.mem, cx.counters) {
            Ok(tables) => Ok(CommitPlan { new_pages, frames, tables, large: Vec::new() }),
            Err(e) => {
                cx.frames.unreserve(frames);
                cx.charge.uncharge(new_pages, missing);
                Err(e)
            }
        }
    }

    /// Obtains what a large-page commit of `[start, end)` (2 MiB aligned, all reserved) needs:
    /// the charge, one 2 MiB frame per large page, and the missing directory pages.
    ///
    /// # Errors
    ///
    /// [`VmError::CommitmentLimit`], then [`VmError::NoMemory`]; nothing changes on error.
    pub(crate) fn prepare_large<M: PhysMemory, T: Tlb>(
        &self,
        cx: &mut VmContext<'_, M, T>,
        start: u64,
        end: u64,
        level: CriticalLevel,
    ) -> Result<CommitPlan, VmError> {
        let pages = (end - start) / PAGE_SIZE;
        let missing = table::count_missing_tables(cx.mem, self.root_pa(), start, end, 1);
        cx.charge.try_charge(pages, missing, level)?;
        let mut large = Vec::with_capacity(((end - start) / LARGE_PAGE_SIZE) as usize);
        for _ in 0..(end - start) / LARGE_PAGE_SIZE {
            match cx.frames.alloc_2mib() {
                Ok(f) => large.push(f),
                Err(_) => {
                    for f in large {
                        cx.frames.free_2mib(f).expect("large page: freeing a run just allocated");
                    }
                    cx.charge.uncharge(pages, missing);
                    return Err(VmError::NoMemory);
                }
            }
        }
        match table::alloc_tables(missing, cx.frames, cx.mem, cx.counters) {
            Ok(tables) => Ok(CommitPlan { new_pages: pages, frames: FrameReservation::empty(), tables, large }),
            Err(e) => {
                for f in large {
                    cx.frames.free_2mib(f).expect("large page: freeing a run just allocated");
                }
                cx.charge.uncharge(pages, missing);
                Err(e)
            }
        }
    }

    /// Commits `[start, end)` with `prot`/`guard` using `plan`: new pages become committed
    /// without a frame (demand-zero), committed pages get the new protection and keep their
    /// frame, contents and write-watch mark (win32-semantics §3.3). Cannot fail.
    pub(crate) fn perform_commit<M: PhysMemory, T: Tlb>(
        &mut self,
        cx: &mut VmContext<'_, M, T>,
        start: u64,
        end: u64,
        cache: CacheMode,
        mut plan: CommitPlan,
        mut prot_of: impl FnMut(u64) -> (BaseProtection, bool),
    ) {
        self.table_pages += plan.tables.len() as u64;
        self.demand_zero.absorb(core::mem::replace(&mut plan.frames, FrameReservation::empty()));
        let mut batch = self.batch();
        cx.tables(self.root_pa()).update_range(start, end, Some(&mut plan.tables), &mut batch, |_, va, old| {
            let (prot, guard) = prot_of(va);
            if old.is_committed() {
                old.with_protection(prot, guard, cache)
            } else {
                Pte::committed(prot, guard, None, false, cache)
            }
        });
        debug_assert!(plan.tables.is_empty(), "commit: table pool not used up");
        self.complete(batch, cx);
    }

    /// Maps the large pages of `plan` over `[start, end)`, zeroing them. Cannot fail.
    pub(crate) fn perform_large<M: PhysMemory, T: Tlb>(
        &mut self,
        cx: &mut VmContext<'_, M, T>,
        start: u64,
        prot: BaseProtection,
        cache: CacheMode,
        mut plan: CommitPlan,
    ) {
        self.table_pages += plan.tables.len() as u64;
        let root = self.root_pa();
        let large = core::mem::take(&mut plan.large);
        for (i, frame) in large.into_iter().enumerate() {
            let base = frame.start_address().as_u64();
            for k in 0..512u64 {
                let f = x86_64::structures::paging::PhysFrame::containing_address(x86_64::PhysAddr::new(base + k * PAGE_SIZE));
                cx.mem.zero_frame(f);
            }
            cx.counters.frames_zeroed += 512;
            let entry = base
                | pte::PRESENT
                | pte::USER
                | pte::HUGE
                | pte::hw_access_bits(prot)
                | pte::cache_bits_2m(cache)
                | pte::SW_COMMITTED
                | pte::SW_HAS_FRAME
                | (u64::from(prot.code()) << pte::SW_PROT_SHIFT);
            cx.tables(root).map_large(start + i as u64 * LARGE_PAGE_SIZE, entry, &mut plan.tables);
        }
        debug_assert!(plan.tables.is_empty(), "large commit: table pool not used up");
    }

    /// Decommits `[start, end)`: frees the frames of touched pages, unreserves the frames of
    /// untouched ones, clears the entries (and so the write-watch marks) and gives back the
    /// charge. With `keep_tables` (a decommit) emptied tables stay, empty, for the next commit;
    /// without (a release) they are freed, and so are the empty tables earlier decommits kept
    /// in the range, in the same invalidation round. Cannot fail. Returns the pages decommitted.
    pub(crate) fn decommit_range<M: PhysMemory, T: Tlb>(
        &mut self,
        cx: &mut VmContext<'_, M, T>,
        a: &Allocation,
        start: u64,
        end: u64,
        keep_tables: bool,
    ) -> u64 {
        if a.committed_pages == 0 && keep_tables {
            return 0;
        }
        let mut decommitted = 0;
        let mut unreserve = 0;
        let freed_before = cx.counters.table_pages_freed;
        let mut batch = self.batch();
        let mut unmap = |batch: &mut TlbBatch, _, old: Pte| {
            if old.is_committed() {
                decommitted += 1;
                match old.frame() {
                    Some(pa) => batch.defer_free(PhysFrame::containing_address(x86_64::PhysAddr::new(pa))),
                    None => unreserve += 1,
                }
            }
            Pte::RESERVED
        };
        // 2 MiB at a time (at most 512 frames and 3 tables deferred each): when the batch could
        // not take another chunk, a round now, so the list of frames to free stays bounded
        // (MAX_DEFERRED, as Linux's mmu_gather); a call freeing fewer makes one round.
        let mut va = if a.committed_pages == 0 { end } else { start };
        while va < end {
            let chunk_end = end.min((va & !(LARGE_PAGE_SIZE - 1)) + LARGE_PAGE_SIZE);
            let mut tables = cx.tables(self.root_pa());
            tables.keep_empty = keep_tables;
            tables.update_range(va, chunk_end, None, &mut batch, &mut unmap);
            va = chunk_end;
            if va < end && batch.deferred_frames().0 + CHUNK_DEFERRED > MAX_DEFERRED {
                self.complete(core::mem::replace(&mut batch, self.batch()), cx);
            }
        }
        let mut sweep = if keep_tables { end } else { start };
        while sweep < end {
            sweep = cx.tables(self.root_pa()).free_empty_tables(sweep, end, &mut batch);
            if sweep < end {
                self.complete(core::mem::replace(&mut batch, self.batch()), cx);
            }
        }
        if unreserve > 0 {
            cx.frames.unreserve(self.demand_zero.split(unreserve));
        }
        cx.charge.uncharge(decommitted, cx.counters.table_pages_freed - freed_before);
        self.table_pages -= cx.counters.table_pages_freed - freed_before;
        self.complete(batch, cx);
        self.note_committed(a.base, -(decommitted as i64));
        decommitted
    }

    /// Releases allocation `a` entirely: decommits every page (or unmaps its large pages),
    /// forgets the record and gives its blocks back to the gap tree. Cannot fail.
    pub(crate) fn release_allocation<M: PhysMemory, T: Tlb>(&mut self, cx: &mut VmContext<'_, M, T>, a: &Allocation) {
        if a.large {
            let freed_before = cx.counters.table_pages_freed;
            let mut batch = self.batch();
            let root = self.root_pa();
            let mut va = a.base;
            while va < a.end() {
                let e = cx.tables(root).unmap_large(va, &mut batch);
                let f = PhysFrame::<Size2MiB>::containing_address(x86_64::PhysAddr::new(e & pte::ADDR_MASK & !(LARGE_PAGE_SIZE - 1)));
                batch.defer_free_2mib(f);
                va += LARGE_PAGE_SIZE;
            }
            cx.charge.uncharge(a.size / PAGE_SIZE, cx.counters.table_pages_freed - freed_before);
            self.table_pages -= cx.counters.table_pages_freed - freed_before;
            self.complete(batch, cx);
        } else {
            self.decommit_range(cx, a, a.base, a.end(), false);
        }
        self.allocations.remove(&a.base);
        self.reserved_bytes -= a.size;
        self.gaps.give(a.base / ALLOCATION_GRANULARITY, (a.block_end() - a.base) / ALLOCATION_GRANULARITY);
    }
}
