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

use super::{AddressSpace, Allocation, AllocationKind, LazyRun, VmContext};
use crate::allocation_map::Slot;
use crate::charge::CriticalLevel;
use crate::frame::FrameReservation;
use crate::paging::pte::{self, ProtectionBits, Pte};
use crate::paging::table;
use crate::paging::tlb::{Tlb, TlbBatch};
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

impl AddressSpace {
    /// Adds `delta` to the committed-page count of the allocation whose record is at `slot`.
    pub(crate) fn note_committed(&mut self, slot: Slot, delta: i64) {
        self.allocations.slot_mut(slot).add_committed(delta);
    }

    /// Writes the entry of every page of the lazy run of the allocation at `base` that has none
    /// (see [`Allocation::lazy`]), and ends the run: the cost of its pages ceasing to be alike,
    /// one entry write per untouched page (the tables exist; no count changes, no TLB round).
    pub(crate) fn materialise<M: PhysMemory, T: Tlb>(&mut self, cx: &mut VmContext<'_, M, T>, base: u64) -> Allocation {
        let a = self.allocations.get_mut(&base).expect("allocation record");
        let Some(run) = a.lazy() else { return *a };
        a.set_lazy(None);
        let a = *a;
        let untouched = Pte::committed(run.prot, false, None, false, a.cache);
        let mut batch = self.batch();
        cx.tables(self.root_pa()).update_lazy(run.start, run.end, None, &mut batch, (true, false), |_, _, old| {
            if old.0 == 0 { untouched } else { old }
        });
        self.complete(&mut batch, (0, 0), cx);
        a
    }

    /// Keeps the [`uniform`](Allocation::uniform) state of the allocation `a` (record at `slot`)
    /// after every page of `[start, end)` (all committed) got protection `prot` (and a guard if
    /// `guard`), and records its lazy run as `a` has it (a run overlapping the range had its
    /// pages alike, so they now have `prot`; a guard ended it before) and its committed extent
    /// (widened by a commit).
    pub(crate) fn note_protection(&mut self, slot: Slot, a: &Allocation, start: u64, end: u64, prot: BaseProtection, guard: bool) {
        let run = a.lazy().filter(|r| r.overlaps(start, end)).map_or(a.lazy(), |r| Some(LazyRun { prot, ..r }));
        debug_assert!(!guard || !a.lazy().is_some_and(|r| r.overlaps(start, end)), "a guard in a lazy run");
        let extent = a.committed_extent;
        let a = self.allocations.slot_mut(slot);
        a.committed_extent = extent;
        let kept = a.set_lazy(run);
        debug_assert!(kept, "the same run");
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
            |va, b, e| {
                match Self::state(a, va, e) {
                    Some(e) => n += u64::from(!e.is_committed()),
                    None => n += (b - va) / PAGE_SIZE,
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
            |va, _, e| {
                if Self::state(a, va, e).is_some_and(|e| e.is_committed()) {
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
    ///
    /// `a` is the allocation (a working copy: the map's record is not read); its lazy run is
    /// updated in it (made, extended, or ended), and the caller records it.
    pub(crate) fn perform_commit<M: PhysMemory, T: Tlb>(
        &mut self,
        cx: &mut VmContext<'_, M, T>,
        a: &mut Allocation,
        start: u64,
        end: u64,
        mut plan: CommitPlan,
        mut prot_of: impl FnMut(u64) -> (BaseProtection, bool),
    ) {
        self.table_pages += plan.tables.len() as u64;
        self.demand_zero.absorb(core::mem::replace(&mut plan.frames, FrameReservation::empty()));
        a.grow_extent(start, end);
        let cache = a.cache;
        let (prot, guard) = prot_of(start);
        let private = a.kind == AllocationKind::Private;
        // Pages of the lazy run recommitted with its protection stay as they are; any other
        // overlap makes them differ, so they get their entries first.
        let alike = |r: &LazyRun| private && !guard && r.prot == prot && r.start <= start && end <= r.end;
        if let Some(r) = a.lazy()
            && r.overlaps(start, end)
            && !alike(&r)
        {
            self.materialise(cx, a.base);
            a.lazy_run = None;
        }
        let mut batch = self.batch();
        let mut tables = cx.tables(self.root_pa());
        let new_only = plan.new_pages == (end - start) / PAGE_SIZE;
        let grown = a.lazy().map_or(Some(LazyRun { start, end, prot }), |r| {
            (r.prot == prot && (r.end == start || r.start == end)).then_some(LazyRun { start: r.start.min(start), end: r.end.max(end), prot })
        });
        let in_run = a.lazy().is_some_and(|r| alike(&r));
        let lazily = !in_run && private && !guard && new_only && grown.is_some_and(|run| a.set_lazy(Some(run)));
        if in_run {
            let bits = ProtectionBits::new(prot, guard, cache);
            tables.update_lazy(start, end, Some(&mut plan.tables), &mut batch, (true, true), |_, _, old| {
                if old.0 == 0 { old } else { old.with_bits(bits) }
            });
        } else if lazily {
            // Reserved pages committed alike: no leaf entry, each page counted in its table, the
            // run made or extended (Allocation::lazy); the first touch writes the entry.
            tables.commit_lazy(start, end, &mut plan.tables, &mut batch);
        } else {
            // Outside the run (new pages never overlap it: its pages are committed).
            tables.update_range(start, end, Some(&mut plan.tables), &mut batch, |_, va, old| {
                let (prot, guard) = prot_of(va);
                if old.is_committed() { old.with_protection(prot, guard, cache) } else { Pte::committed(prot, guard, None, false, cache) }
            });
        }
        debug_assert!(plan.tables.is_empty(), "commit: table pool not used up");
        self.complete(&mut batch, (0, 0), cx);
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
        let large = core::mem::take(&mut plan.large);
        let mut entries = Vec::with_capacity(large.len());
        for frame in large {
            let base = frame.start_address().as_u64();
            for k in 0..512u64 {
                let f = x86_64::structures::paging::PhysFrame::containing_address(x86_64::PhysAddr::new(base + k * PAGE_SIZE));
                cx.mem.zero_frame(f);
            }
            cx.counters.frames_zeroed += 512;
            entries.push(
                base | pte::PRESENT
                    | pte::USER
                    | pte::HUGE
                    | pte::hw_access_bits(prot)
                    | pte::cache_bits_2m(cache)
                    | pte::SW_COMMITTED
                    | pte::SW_HAS_FRAME
                    | (u64::from(prot.code()) << pte::SW_PROT_SHIFT),
            );
        }
        cx.tables(self.root_pa()).map_large(start, &entries, &mut plan.tables);
        debug_assert!(plan.tables.is_empty(), "large commit: table pool not used up");
    }

    /// Decommits `[start, end)`: frees the frames of touched pages, unreserves the frames of
    /// untouched ones, clears the entries (and so the write-watch marks) and gives back the
    /// charge. `decommit`: the slot of `a`'s record for a decommit, which keeps emptied tables,
    /// empty, for the next commit, and updates the record; `None` for a release, which frees
    /// them, and the empty tables earlier decommits kept in the range, in the same invalidation
    /// round, and leaves the record (it goes next). Cannot fail. Returns the pages decommitted.
    pub(crate) fn decommit_range<M: PhysMemory, T: Tlb>(
        &mut self,
        cx: &mut VmContext<'_, M, T>,
        a: &Allocation,
        start: u64,
        end: u64,
        decommit: Option<Slot>,
    ) -> u64 {
        let keep_tables = decommit.is_some();
        if a.committed_pages == 0 && keep_tables {
            return 0;
        }
        // A decommit of the middle of the lazy run would leave two: its pages get entries first.
        let a = &match a.lazy() {
            Some(r) if r.start < start && end < r.end => self.materialise(cx, a.base),
            _ => *a,
        };
        let run = a.lazy().filter(|r| r.overlaps(start, end));
        let mut decommitted = 0;
        let mut unreserve = 0;
        let freed_before = cx.counters.table_pages_freed;
        let mut batch = self.batch();
        let mut unmap = |batch: &mut TlbBatch, va, old: Pte| {
            let old = if old.0 == 0 { Self::lazy_entry(a, va).unwrap_or(old) } else { old };
            if old.is_committed() {
                decommitted += 1;
                match old.frame() {
                    Some(pa) => batch.defer_free(PhysFrame::containing_address(x86_64::PhysAddr::new(pa))),
                    None => unreserve += 1,
                }
            }
            Pte::RESERVED
        };
        // One walk (the tables count the lazy run's pages without an entry), 2 MiB at a time (at
        // most 512 frames and 3 tables deferred each): when the batch could not take another
        // chunk, the walk stops for a round, so the list of frames to free stays bounded
        // (MAX_DEFERRED, as Linux's mmu_gather); a call freeing fewer makes one round. A release
        // also frees the empty tables earlier decommits kept.
        let leaves = a.committed_pages > 0;
        let span = run.map(|r| (r.start, r.end));
        let mut va = start;
        while va < end {
            let mut tables = cx.tables(self.root_pa());
            va = if keep_tables {
                tables.keep_empty = true;
                tables.decommit_range(va, end, &mut batch, span, &mut unmap)
            } else {
                tables.release_range(va, end, &mut batch, leaves, span, &mut unmap)
            };
            if va < end {
                self.flush_now(&mut batch, cx);
            }
        }
        if unreserve > 0 {
            cx.frames.unreserve(self.demand_zero.split(unreserve));
        }
        let tables_freed = cx.counters.table_pages_freed - freed_before;
        self.table_pages -= tables_freed;
        self.complete(&mut batch, (decommitted, tables_freed), cx);
        let Some(slot) = decommit else { return decommitted };
        let record = self.allocations.slot_mut(slot);
        if let Some(r) = run {
            // What is left of the run: none, or the part before or after the range.
            let left = if start <= r.start { LazyRun { start: end, ..r } } else { LazyRun { end: start, ..r } };
            record.set_lazy((left.start < left.end).then_some(left));
        }
        record.shrink_extent(start, end);
        record.add_committed(-(decommitted as i64));
        decommitted
    }

    /// Releases allocation `a` entirely: decommits every page (or unmaps its large pages),
    /// forgets the record and gives its blocks back to the gap tree. Cannot fail.
    pub(crate) fn release_allocation<M: PhysMemory, T: Tlb>(&mut self, cx: &mut VmContext<'_, M, T>, a: &Allocation) {
        if a.large {
            let freed_before = cx.counters.table_pages_freed;
            let mut batch = self.batch();
            cx.tables(self.root_pa()).unmap_large(a.base, a.end(), &mut batch, |batch, e| {
                let f = PhysFrame::<Size2MiB>::containing_address(x86_64::PhysAddr::new(e & pte::ADDR_MASK & !(LARGE_PAGE_SIZE - 1)));
                batch.defer_free_2mib(f);
            });
            let tables_freed = cx.counters.table_pages_freed - freed_before;
            self.table_pages -= tables_freed;
            self.complete(&mut batch, (a.size / PAGE_SIZE, tables_freed), cx);
        } else if a.committed_pages > 0 || table::holds_empty_table(cx.mem, self.root_pa(), a.base, a.end()) {
            self.decommit_range(cx, a, a.base, a.end(), None);
        }
        // Else nothing is committed (so there is no lazy run) and no table of the range waits
        // to be freed: no entry, frame, charge or TLB round to touch.
        self.allocations.remove(&a.base);
        self.reserved_bytes -= a.size;
        self.gaps.give(a.base / ALLOCATION_GRANULARITY, (a.block_end() - a.base) / ALLOCATION_GRANULARITY);
    }
}
