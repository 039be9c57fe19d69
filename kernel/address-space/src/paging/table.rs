//! Walking, creating and freeing x86_64 4-level page tables through [`PhysMemory`].
//!
//! Tables are reached by physical address (the kernel's physical-memory window, or the
//! simulated RAM on the host), so the same code runs in the kernel and in host tests, which
//! read the real table bytes.
//!
//! * Intermediate tables are created on demand, from frames the caller allocated *before* the
//!   operation started (a pool sized by [`count_missing_tables`]), so the perform phase of an
//!   operation never fails half-way (decode, then perform).
//! * A table page is freed the moment its last non-zero entry goes: every non-leaf entry keeps
//!   the number of non-zero entries of its child table (plus its lazily committed pages, which
//!   have none: [`Tables::update_lazy`]) in its ignored bits 52–61 ([`child_count`]), so no
//!   table is scanned. A walk writes each non-leaf entry once, with its final count. The PML4 is never freed; only its lower half
//!   (indices 0–255, user space) is ever touched: the kernel owns the upper half.
//! * Ranges are processed one leaf table (2 MiB) at a time, with one walk per table, and absent
//!   subtrees are skipped whole (a 64 GiB reservation costs nothing to scan).

use alloc::vec::Vec;
use core::ops::ControlFlow;

use x86_64::PhysAddr;
use x86_64::structures::paging::{PhysFrame, Size4KiB};

use super::pte::{ACCESSED, ADDR_MASK, DIRTY, HUGE, PRESENT, Pte, TABLE_FLAGS, WRITABLE};
use super::tlb::{MAX_DEFERRED, TlbBatch};
use crate::frame::FrameSource;
use crate::{LARGE_PAGE_SIZE, PAGE_SIZE, PhysMemory, VmError, WorkCounters};

const COUNT_SHIFT: u32 = 52;
const COUNT_MASK: u64 = 0x3FF << COUNT_SHIFT;

/// Returns the index of `va` in its table at `level` (0 = page table … 3 = PML4).
#[inline]
pub const fn index(va: u64, level: u32) -> u64 {
    (va >> (12 + 9 * level)) & 511
}

/// Returns the bytes covered by one entry at `level` (0: 4 KiB, 1: 2 MiB, 2: 1 GiB, 3: 512 GiB).
#[inline]
pub const fn entry_span(level: u32) -> u64 {
    1 << (12 + 9 * level)
}

/// Returns the number of non-zero entries in the child table, kept in a non-leaf entry.
#[inline]
pub const fn child_count(entry: u64) -> u64 {
    (entry & COUNT_MASK) >> COUNT_SHIFT
}

#[inline]
const fn with_count(entry: u64, count: u64) -> u64 {
    (entry & !COUNT_MASK) | (count << COUNT_SHIFT)
}

#[inline]
fn pa(a: u64) -> PhysAddr {
    PhysAddr::new(a)
}

#[inline]
fn next_boundary(va: u64, span: u64, end: u64) -> u64 {
    ((va & !(span - 1)) + span).min(end)
}

/// The mutable pieces a table update needs.
pub struct Tables<'a, M: PhysMemory> {
    /// Physical address of the PML4.
    pub root: u64,
    /// Physical memory holding the tables.
    pub mem: &'a mut M,
    /// Where freed table pages go.
    pub frames: &'a mut dyn FrameSource,
    /// Work counters.
    pub counters: &'a mut WorkCounters,
    /// A page table whose last entry goes stays, linked with a count of 0, instead of being
    /// freed (a decommit keeps its reservation's tables for the next commit; the release sweeps
    /// them with [`Tables::release_range`]).
    pub keep_empty: bool,
}

impl<M: PhysMemory> Tables<'_, M> {
    #[inline]
    fn write(&mut self, at: u64, v: u64) {
        self.mem.write_u64(pa(at), v);
        self.counters.pte_writes += 1;
    }

    /// Replaces the present leaf entry `old` at `at` with `new`: the MMU of another CPU running
    /// the space may set A or D in it between the read and the write (pitfall 12). A D bit set
    /// meanwhile is carried into `new` if `new` keeps the frame (the D bit is the write-watch
    /// mark, present or not), so no write escapes write watch. Hardware only ever sets those two
    /// bits, so at most three attempts.
    ///
    /// The MMU sets A and D each by a locked read-modify-write of the entry as it is in memory,
    /// and D only through a writable translation whose D is clear. Losing an A set meanwhile
    /// loses nothing (nothing reads A). So an entry that has its mark, or is not writable, is
    /// replaced by a plain store; only a writable entry without its mark needs the
    /// compare-and-exchange (a helper call under TCG: 256 entries 8,400 cycles, against 3,100
    /// stored). No CPU holds a writable translation of an entry that is not writable: a call
    /// that narrowed it finished its TLB round before any other call on its pages changed them.
    fn replace_present(&mut self, at: u64, old: Pte, mut new: Pte) {
        if old.0 & DIRTY != 0 || old.0 & WRITABLE == 0 {
            self.write(at, new.0);
            return;
        }
        let mut seen = old.0;
        loop {
            match self.mem.compare_exchange_u64(pa(at), seen, new.0) {
                Ok(()) => break,
                Err(now) => {
                    debug_assert_eq!(now & !(ACCESSED | DIRTY), seen & !(ACCESSED | DIRTY), "a present entry changed beyond A/D under the space lock");
                    if new.frame().is_some() {
                        new = Pte(new.0 | (now & !seen & DIRTY));
                    }
                    seen = now;
                }
            }
        }
        self.counters.pte_writes += 1;
    }

    fn free_table(&mut self, table: u64, va: u64, batch: &mut TlbBatch) {
        // Freed only after the batch's round: other CPUs may still walk it (§4(b), (c)).
        batch.defer_free(PhysFrame::<Size4KiB>::containing_address(pa(table)));
        self.counters.table_pages_freed += 1;
        batch.note_table_freed(va);
    }

    /// Opens the non-leaf entry at `at` (mapping `va`) for a walk: its present value, or a new
    /// table from `pool` (not linked yet: [`Upper::written`] is 0), or `None` if it is absent
    /// and there is no pool.
    fn open(&mut self, at: u64, va: u64, pool: &mut Option<&mut Vec<PhysFrame>>) -> Option<Upper> {
        let e = self.mem.read_u64(pa(at));
        if e & PRESENT != 0 {
            return Some(Upper { at, written: e, want: e, va });
        }
        let frame = pool.as_deref_mut()?.pop().expect("page table: table pool smaller than count_missing_tables");
        Some(Upper { at, written: 0, want: frame.start_address().as_u64() | TABLE_FLAGS, va })
    }

    /// Writes the entry a walk leaves: its final count, once (nothing if unchanged); an entry
    /// whose child table emptied is cleared and the table freed (unless [`Tables::keep_empty`]).
    /// Returns whether the table holding the entry lost it.
    fn settle_one(&mut self, u: Upper, batch: &mut TlbBatch) -> bool {
        if child_count(u.want) == 0 && !self.keep_empty {
            debug_assert!(u.written != 0, "page table: a new table left empty");
            self.write(u.at, 0);
            self.free_table(u.table(), u.va, batch);
            return true;
        }
        if u.want != u.written {
            self.write(u.at, u.want);
        }
        false
    }

    /// Settles the directory-pointer entry, then the PML4 entry, the cursor holds.
    fn settle(&mut self, cur: &mut Cursor, batch: &mut TlbBatch) {
        self.settle_pdpt_entry(cur, batch);
        if let Some(u) = cur.l4.take() {
            self.settle_one(u, batch);
        }
    }

    fn settle_pdpt_entry(&mut self, cur: &mut Cursor, batch: &mut TlbBatch) {
        if let Some(u) = cur.l3.take()
            && self.settle_one(u, batch)
        {
            cur.l4.as_mut().expect("page table: a directory entry without its PML4 entry").add(-1);
        }
    }

    /// Moves the cursor to the PML4 and directory-pointer entries of `va` (settling the ones it
    /// leaves, creating missing tables from `pool`); returns the directory's address, or the level
    /// of the absent entry above `va` (no pool).
    fn descend(&mut self, cur: &mut Cursor, va: u64, pool: &mut Option<&mut Vec<PhysFrame>>, batch: &mut TlbBatch) -> Result<u64, u32> {
        let i4 = self.root + index(va, 3) * 8;
        if cur.l4.map(|u| u.at) != Some(i4) {
            self.settle(cur, batch);
            cur.l4 = Some(self.open(i4, va, pool).ok_or(3u32)?);
        }
        let l4 = cur.l4.expect("page table: cursor");
        let i3 = l4.table() + index(va, 2) * 8;
        if cur.l3.map(|u| u.at) != Some(i3) {
            self.settle_pdpt_entry(cur, batch);
            let u = self.open(i3, va, pool).ok_or(2u32)?;
            if u.written == 0 {
                cur.l4.as_mut().expect("page table: cursor").add(1);
            }
            cur.l3 = Some(u);
        }
        Ok(cur.l3.expect("page table: cursor").table())
    }

    /// Rewrites every leaf entry of `[start, end)` (4 KiB pages) as `f(batch, va, old)` (`f`
    /// hands the frames of the pages it unmaps to the batch, which frees them after its round).
    ///
    /// With `pool` = `Some`, missing tables are created from the pool (which must hold at least
    /// [`count_missing_tables`] zeroed frames) and `f` must return a non-zero entry for every
    /// page. With `None`, absent tables are skipped (their pages are reserved, and `f` must map a
    /// reserved entry to a reserved entry). Changed present entries are added to `batch`; a
    /// table whose last entry goes is freed (and its parents, up to but not including the PML4).
    ///
    /// Every non-leaf entry is written at most once, with its final count: a new table is linked
    /// after its entries are written, and an emptied parent is cleared without a count on the way.
    ///
    /// Cost: O(pages in range) entry reads plus one walk per 2 MiB; absent subtrees are O(1).
    pub fn update_range(
        &mut self,
        start: u64,
        end: u64,
        pool: Option<&mut Vec<PhysFrame>>,
        batch: &mut TlbBatch,
        f: impl FnMut(&mut TlbBatch, u64, Pte) -> Pte,
    ) {
        self.update_lazy(start, end, pool, batch, (false, false), f);
    }

    /// [`update_range`](Self::update_range) over pages some of which may be *lazily committed*:
    /// committed without an entry (see `Allocation::lazy`), counted in their page table's child
    /// count as if they had one. `lazy.0`: a zero entry in the range is such a page before the
    /// update; `lazy.1`: after it. So a zero entry is counted before if `lazy.0`, after if
    /// `lazy.1` (`(false, true)` with an identity `f`: a commit that writes no leaf entry).
    pub fn update_lazy(
        &mut self,
        start: u64,
        end: u64,
        pool: Option<&mut Vec<PhysFrame>>,
        batch: &mut TlbBatch,
        lazy: (bool, bool),
        f: impl FnMut(&mut TlbBatch, u64, Pte) -> Pte,
    ) {
        let lazy = LazyPages { start, end, before: lazy.0, after: lazy.1 };
        let done = self.walk_range(start, end, pool, batch, (Walk::Update, lazy), f);
        debug_assert_eq!(done, end);
    }

    /// Commits every page of `[start, end)` (all reserved: zero entries) lazily: no leaf entry is
    /// read or written, each page is counted in its page table's child count (see
    /// [`update_lazy`](Self::update_lazy)); missing tables are created from `pool`.
    ///
    /// Cost: one walk per 2 MiB and the non-leaf entries whose counts change.
    pub fn commit_lazy(&mut self, start: u64, end: u64, pool: &mut Vec<PhysFrame>, batch: &mut TlbBatch) {
        let lazy = LazyPages { start, end, before: false, after: true };
        let done = self.walk_range(start, end, Some(pool), batch, (Walk::Count, lazy), |_, _, old| old);
        debug_assert_eq!(done, end);
    }

    /// [`update_range`](Self::update_range) for a release (no pool): also frees the empty page
    /// tables a decommit kept in the range (a table shared with a neighbouring reservation too:
    /// it holds no entry of anyone's), and their parents if they empty. With `leaves` false the
    /// leaf entries are not visited (a wholly reserved allocation). Stops after a 2 MiB chunk
    /// when `batch` could not take another ([`CHUNK_DEFERRED`] frames; [`MAX_DEFERRED`]) and
    /// returns where to go on after the batch's round (its parents' counts are written then:
    /// one more write per round); `end` when done.
    pub fn release_range(
        &mut self,
        start: u64,
        end: u64,
        batch: &mut TlbBatch,
        leaves: bool,
        lazy: Option<(u64, u64)>,
        f: impl FnMut(&mut TlbBatch, u64, Pte) -> Pte,
    ) -> u64 {
        let mode = if leaves { Walk::Release } else { Walk::Sweep };
        self.walk_range(start, end, None, batch, (mode, LazyPages::decommitted(lazy)), f)
    }

    /// [`release_range`](Self::release_range) for a decommit that keeps emptied tables
    /// ([`Tables::keep_empty`]) or one that frees them: bounded the same way, no sweep.
    /// `lazy`: the zero entries in this span are lazily committed pages (see
    /// [`Self::update_lazy`]); they are counted before the walk, not after it.
    pub fn decommit_range(
        &mut self,
        start: u64,
        end: u64,
        batch: &mut TlbBatch,
        lazy: Option<(u64, u64)>,
        f: impl FnMut(&mut TlbBatch, u64, Pte) -> Pte,
    ) -> u64 {
        self.walk_range(start, end, None, batch, (Walk::Decommit, LazyPages::decommitted(lazy)), f)
    }

    fn walk_range(
        &mut self,
        start: u64,
        end: u64,
        mut pool: Option<&mut Vec<PhysFrame>>,
        batch: &mut TlbBatch,
        (mode, lazy): (Walk, LazyPages),
        mut f: impl FnMut(&mut TlbBatch, u64, Pte) -> Pte,
    ) -> u64 {
        if let Some(done) = self.walk_one_table(start, end, pool.is_some(), batch, (mode, lazy), &mut f) {
            return done;
        }
        let mut cur = Cursor::default();
        let mut va = start;
        while va < end {
            let pd = match self.descend(&mut cur, va, &mut pool, batch) {
                Ok(pd) => pd,
                Err(level) => {
                    va = next_boundary(va, entry_span(level), end);
                    continue;
                }
            };
            let chunk_end = next_boundary(va, LARGE_PAGE_SIZE, end);
            let i2 = pd + index(va, 1) * 8;
            let e2 = self.mem.read_u64(pa(i2));
            let new = e2 & PRESENT == 0;
            let pt = if !new {
                debug_assert!(e2 & HUGE == 0, "4 KiB update inside a 2 MiB mapping");
                if e2 & HUGE != 0 {
                    va = chunk_end;
                    continue;
                }
                e2 & ADDR_MASK
            } else if let Some(pool) = pool.as_deref_mut() {
                pool.pop().expect("page table: table pool smaller than count_missing_tables").start_address().as_u64()
            } else {
                va = chunk_end;
                continue;
            };
            let old_count = if new { 0 } else { child_count(e2) };
            let count = self.walk_leaves(pt, va, chunk_end, old_count, pool.is_some(), batch, (mode, lazy), &mut f);
            let l3 = cur.l3.as_mut().expect("page table: cursor");
            let here = chunk_end - PAGE_SIZE;
            if new {
                // Linked after its entries are written, with its final count: one write.
                self.write(i2, with_count(pt | TABLE_FLAGS, count));
                l3.add(1);
            } else if self.frees(mode, count, old_count) {
                // An emptied page table is freed; its parents when the walk leaves them.
                self.write(i2, 0);
                self.free_table(pt, here, batch);
                l3.add(-1);
            } else if count != old_count {
                self.write(i2, with_count(e2, count));
            }
            va = chunk_end;
            if mode != Walk::Update && va < end && batch.deferred_frames().0 + CHUNK_DEFERRED > MAX_DEFERRED {
                self.settle(&mut cur, batch);
                return va;
            }
        }
        self.settle(&mut cur, batch);
        end
    }

    /// Whether a walk in `mode` frees a page table whose count went from `old_count` to `count`.
    fn frees(&self, mode: Walk, count: u64, old_count: u64) -> bool {
        count == 0 && !self.keep_empty && (count != old_count || matches!(mode, Walk::Release | Walk::Sweep))
    }

    /// [`walk_range`](Self::walk_range) of a range inside one present page table (the common
    /// call: a few pages): the PML4 and directory-pointer entries are read once and, unless the
    /// page table empties and goes, never written (their counts count tables, which stay), so
    /// the walk needs no cursor. `None` (nothing done) if the range spans page tables or one of
    /// its tables is absent (`pool`: the walk may create entries where there are none).
    #[inline]
    fn walk_one_table(
        &mut self,
        start: u64,
        end: u64,
        pool: bool,
        batch: &mut TlbBatch,
        (mode, lazy): (Walk, LazyPages),
        f: &mut impl FnMut(&mut TlbBatch, u64, Pte) -> Pte,
    ) -> Option<u64> {
        if start >= end || start >> 21 != (end - 1) >> 21 {
            return None;
        }
        let i4 = self.root + index(start, 3) * 8;
        let e4 = self.mem.read_u64(pa(i4));
        if e4 & PRESENT == 0 {
            return None;
        }
        let i3 = (e4 & ADDR_MASK) + index(start, 2) * 8;
        let e3 = self.mem.read_u64(pa(i3));
        if e3 & PRESENT == 0 {
            return None;
        }
        let i2 = (e3 & ADDR_MASK) + index(start, 1) * 8;
        let e2 = self.mem.read_u64(pa(i2));
        if e2 & PRESENT == 0 || e2 & HUGE != 0 {
            return None;
        }
        let old_count = child_count(e2);
        let count = self.walk_leaves(e2 & ADDR_MASK, start, end, old_count, pool, batch, (mode, lazy), f);
        if !self.frees(mode, count, old_count) {
            if count != old_count {
                self.write(i2, with_count(e2, count));
            }
            return Some(end);
        }
        // The page table goes, and each parent its last child leaves (each written once).
        self.write(i2, 0);
        self.free_table(e2 & ADDR_MASK, end - PAGE_SIZE, batch);
        for (at, e, va) in [(i3, e3, start), (i4, e4, start)] {
            let left = child_count(e) - 1;
            if left > 0 {
                self.write(at, with_count(e, left));
                break;
            }
            self.write(at, 0);
            self.free_table(e & ADDR_MASK, va, batch);
        }
        Some(end)
    }

    /// Rewrites the leaf entries of `[va, chunk_end)` (one page table, at `pt`, whose count is
    /// `count`) for a walk in `mode` and returns the table's new count. `pool`: the walk may
    /// create entries where there are none.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn walk_leaves(
        &mut self,
        pt: u64,
        va: u64,
        chunk_end: u64,
        mut count: u64,
        pool: bool,
        batch: &mut TlbBatch,
        (mode, lazy): (Walk, LazyPages),
        f: &mut impl FnMut(&mut TlbBatch, u64, Pte) -> Pte,
    ) -> u64 {
        // A table without entries holds only reserved pages, which `f` leaves reserved
        // without a pool: nothing to read.
        if mode == Walk::Count {
            debug_assert!((va..chunk_end).step_by(PAGE_SIZE as usize).all(|p| self.mem.read_u64(pa(pt + index(p, 0) * 8)) == 0));
            count += (chunk_end - va) / PAGE_SIZE;
        } else if mode != Walk::Sweep && (count > 0 || pool) {
            let mut at = pt + index(va, 0) * 8;
            let mut page = va;
            while page < chunk_end {
                let old = Pte(self.mem.read_u64(pa(at)));
                let entry = f(batch, page, old);
                if entry != old {
                    if old.is_present() {
                        self.replace_present(at, old, entry);
                        batch.add(page);
                    } else {
                        self.write(at, entry.0);
                    }
                }
                // A page counts if it has an entry or is lazily committed.
                let in_span = lazy.start <= page && page < lazy.end;
                match (old.0 != 0 || (lazy.before && in_span), entry.0 != 0 || (lazy.after && in_span)) {
                    (false, true) => count += 1,
                    (true, false) => count -= 1,
                    _ => {}
                }
                page += PAGE_SIZE;
                at += 8;
            }
        }
        count
    }

    /// Maps the 2 MiB pages of `[start, start + 2 MiB × entries.len())` with the directory
    /// entries `entries` (frame, PS and flags), creating the PDPTs/PDs from `pool` if needed.
    /// Each non-leaf entry is written once, with its final count.
    pub fn map_large(&mut self, start: u64, entries: &[u64], pool: &mut Vec<PhysFrame>) {
        let mut cur = Cursor::default();
        let mut pool = Some(pool);
        // Nothing is freed while mapping: the batch stays empty.
        let mut batch = TlbBatch::new(1);
        for (i, &entry) in entries.iter().enumerate() {
            let va = start + i as u64 * LARGE_PAGE_SIZE;
            let pd = self.descend(&mut cur, va, &mut pool, &mut batch).expect("page table: pool given");
            let i2 = pd + index(va, 1) * 8;
            debug_assert_eq!(self.mem.read_u64(pa(i2)), 0, "large page over an existing entry");
            self.write(i2, entry);
            cur.l3.as_mut().expect("page table: cursor").add(1);
        }
        self.settle(&mut cur, &mut batch);
        debug_assert_eq!(batch.deferred_frames().0, 0);
    }

    /// Removes the 2 MiB mappings of `[start, end)` (2 MiB aligned), calling `f(entry)` with
    /// each directory entry; frees emptied tables (each parent entry written once).
    ///
    /// # Panics
    ///
    /// If a 2 MiB mapping is missing there (a kernel bug).
    pub fn unmap_large(&mut self, start: u64, end: u64, batch: &mut TlbBatch, mut f: impl FnMut(&mut TlbBatch, u64)) {
        let mut cur = Cursor::default();
        let mut va = start;
        while va < end {
            let pd = self.descend(&mut cur, va, &mut None, batch);
            let i2 = pd.map(|pd| pd + index(va, 1) * 8);
            let e2 = i2.map_or(0, |i2| self.mem.read_u64(pa(i2)));
            assert!(e2 & HUGE != 0 && e2 & PRESENT != 0, "page table: no large page at {va:#x}");
            self.write(i2.expect("checked above"), 0);
            batch.add(va);
            cur.l3.as_mut().expect("page table: cursor").add(-1);
            f(batch, e2);
            va += LARGE_PAGE_SIZE;
        }
        self.settle(&mut cur, batch);
    }
}

/// The most frames one 2 MiB chunk of a decommit or release defers: 512 data frames and its
/// page table, directory and directory-pointer table.
pub const CHUNK_DEFERRED: usize = 512 + 3;

/// Where zero entries are lazily committed pages, counted in their table's child count (see
/// [`Tables::update_lazy`]): in `[start, end)`, before the walk if `before`, after it if `after`.
#[derive(Debug, Clone, Copy)]
struct LazyPages {
    start: u64,
    end: u64,
    before: bool,
    after: bool,
}

impl LazyPages {
    /// The lazily committed pages of `span`, all decommitted by the walk.
    fn decommitted(span: Option<(u64, u64)>) -> Self {
        let (start, end) = span.unwrap_or((0, 0));
        LazyPages { start, end, before: true, after: false }
    }
}

/// What a walk over a range does with its tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Walk {
    /// Rewrite leaves, unbounded (commit, protect, write watch).
    Update,
    /// Count every page as lazily committed, reading no leaf (a lazy commit).
    Count,
    /// Rewrite leaves, bounded by the batch (decommit).
    Decommit,
    /// Rewrite leaves, bounded, and free kept empty tables (release).
    Release,
    /// Free kept empty tables only, bounded (release of a wholly reserved allocation).
    Sweep,
}

/// A non-leaf entry (PML4 or directory-pointer entry) a walk is under: its count changes are
/// kept here and written once, when the walk leaves it.
#[derive(Debug, Clone, Copy)]
struct Upper {
    /// The entry's address.
    at: u64,
    /// Its value in the table (0: a new table, not linked yet).
    written: u64,
    /// The value it is to have: child table, flags, count.
    want: u64,
    /// An address it maps (tells the paging-structure caches what to forget if it is freed).
    va: u64,
}

impl Upper {
    fn table(&self) -> u64 {
        self.want & ADDR_MASK
    }

    fn add(&mut self, delta: i64) {
        let count = child_count(self.want).checked_add_signed(delta).expect("page table: child count");
        self.want = with_count(self.want, count);
    }
}

/// The PML4 and directory-pointer entries a walk is under.
#[derive(Debug, Default)]
struct Cursor {
    l4: Option<Upper>,
    l3: Option<Upper>,
}

/// Allocates `n` table frames and zeroes them, or allocates none.
///
/// # Errors
///
/// [`VmError::NoMemory`] if the allocator runs out (or fails by injection); the frames taken so
/// far are given back and no counter changes.
pub fn alloc_tables(
    n: u64,
    frames: &mut dyn FrameSource,
    mem: &mut impl PhysMemory,
    counters: &mut WorkCounters,
) -> Result<Vec<PhysFrame>, VmError> {
    if n == 0 {
        // The common commit: its tables are there.
        return Ok(Vec::new());
    }
    let mut pool = Vec::with_capacity(n as usize);
    for _ in 0..n {
        match frames.alloc() {
            Ok(f) => pool.push(f),
            Err(_) => {
                for f in pool {
                    frames.free(f).expect("page table: freeing a frame just allocated");
                }
                return Err(VmError::NoMemory);
            }
        }
    }
    for f in &pool {
        mem.zero_frame(*f);
    }
    counters.frames_zeroed += n;
    counters.table_pages_allocated += n;
    Ok(pool)
}

/// Where a walk for `va` stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leaf {
    /// The page table at this physical address holds the entry.
    Table(u64),
    /// The entry at `level` (1 = PD entry, 2 = PDPT entry, 3 = PML4 entry) is absent: every
    /// page below it is reserved or free.
    Absent(u32),
    /// A 2 MiB mapping (directory entry value).
    Large(u64),
}

/// Walks to the page table of `va`.
///
/// Cost: at most three entry reads.
pub fn walk(mem: &impl PhysMemory, root: u64, va: u64) -> Leaf {
    let mut table = root;
    for level in (1..=3).rev() {
        let e = mem.read_u64(pa(table + index(va, level) * 8));
        if e & PRESENT == 0 {
            return Leaf::Absent(level);
        }
        if level == 1 && e & HUGE != 0 {
            return Leaf::Large(e);
        }
        table = e & ADDR_MASK;
    }
    Leaf::Table(table)
}

/// Reads the leaf entry of the 4 KiB page at `va` (reserved if no table).
pub fn read_pte(mem: &impl PhysMemory, root: u64, va: u64) -> Pte {
    match walk(mem, root, va) {
        Leaf::Table(t) => Pte(mem.read_u64(pa(t + index(va, 0) * 8))),
        Leaf::Absent(_) | Leaf::Large(_) => Pte::RESERVED,
    }
}

/// Returns the physical address of the leaf entry of the 4 KiB page at `va`, if its page table
/// exists.
pub fn pte_address(mem: &impl PhysMemory, root: u64, va: u64) -> Option<u64> {
    match walk(mem, root, va) {
        Leaf::Table(t) => Some(t + index(va, 0) * 8),
        Leaf::Absent(_) | Leaf::Large(_) => None,
    }
}

/// Calls `f(span_start, span_end, leaf)` for consecutive spans covering `[start, end)`: one per
/// page table (at most 2 MiB), or one per absent subtree.
pub fn visit(
    mem: &impl PhysMemory,
    root: u64,
    start: u64,
    end: u64,
    mut f: impl FnMut(u64, u64, Leaf) -> ControlFlow<()>,
) {
    let mut va = start;
    while va < end {
        let leaf = walk(mem, root, va);
        let span = match leaf {
            Leaf::Table(_) | Leaf::Large(_) => entry_span(1),
            Leaf::Absent(level) => entry_span(level),
        };
        let span_end = next_boundary(va, span, end);
        if f(va, span_end, leaf).is_break() {
            return;
        }
        va = span_end;
    }
}

/// Calls `f(va, va + PAGE_SIZE, Some(pte))` for every page of `[start, end)` in a present table,
/// and `f(span_start, span_end, None)` for spans without a table (reserved or free pages).
/// Stops when `f` breaks.
pub fn scan(
    mem: &impl PhysMemory,
    root: u64,
    start: u64,
    end: u64,
    mut f: impl FnMut(u64, u64, Option<Pte>) -> ControlFlow<()>,
) {
    visit(mem, root, start, end, |a, b, leaf| match leaf {
        Leaf::Table(t) => {
            let mut at = t + index(a, 0) * 8;
            let mut va = a;
            while va < b {
                f(va, va + PAGE_SIZE, Some(Pte(mem.read_u64(pa(at)))))?;
                va += PAGE_SIZE;
                at += 8;
            }
            ControlFlow::Continue(())
        }
        Leaf::Absent(_) | Leaf::Large(_) => f(a, b, None),
    });
}

/// Returns whether a page table with no entry (one a decommit kept, see [`Tables::keep_empty`])
/// covers a page of `[start, end)`: what a release of pages none of which is committed has to
/// free ([`Tables::release_range`]); without one it has nothing to do.
///
/// Cost: one walk per present page table or absent subtree in the range (three entry reads for
/// a range inside one 2 MiB).
pub fn holds_empty_table(mem: &impl PhysMemory, root: u64, start: u64, end: u64) -> bool {
    let mut va = start;
    while va < end {
        // As `walk`, keeping the directory entry (its child count).
        let mut table = root;
        let mut span = entry_span(1);
        for level in (1..=3).rev() {
            let e = mem.read_u64(pa(table + index(va, level) * 8));
            if e & PRESENT == 0 {
                span = entry_span(level);
                break;
            }
            if level == 1 && e & HUGE == 0 && child_count(e) == 0 {
                return true;
            }
            table = e & ADDR_MASK;
        }
        va = next_boundary(va, span, end);
    }
    false
}

/// Returns how many table pages a mapping of every page of `[start, end)` would create:
/// page tables when `leaf_level` is 0 (4 KiB pages), directories and above when it is 1
/// (2 MiB pages).
///
/// Cost: one walk per present page table or absent subtree in the range.
pub fn count_missing_tables(
    mem: &impl PhysMemory,
    root: u64,
    start: u64,
    end: u64,
    leaf_level: u32,
) -> u64 {
    let mut n = 0;
    visit(mem, root, start, end, |a, b, leaf| {
        if let Leaf::Absent(level) = leaf {
            for l in (leaf_level + 1)..=level {
                let s = entry_span(l);
                n += ((b - 1) / s) - (a / s) + 1;
            }
        }
        ControlFlow::Continue(())
    });
    n
}

/// Translates `va`: the physical address and the leaf entry, if the entry is present.
pub fn translate(mem: &impl PhysMemory, root: u64, va: u64) -> Option<(u64, u64)> {
    match walk(mem, root, va) {
        Leaf::Table(t) => {
            let e = mem.read_u64(pa(t + index(va, 0) * 8));
            (e & PRESENT != 0).then_some(((e & ADDR_MASK) | (va & (PAGE_SIZE - 1)), e))
        }
        Leaf::Large(e) => Some(((e & ADDR_MASK & !(LARGE_PAGE_SIZE - 1)) | (va & (LARGE_PAGE_SIZE - 1)), e)),
        Leaf::Absent(_) => None,
    }
}

/// What a full walk of the lower half found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TableCensus {
    /// Table pages below the PML4 (PDPTs, PDs, PTs).
    pub table_pages: u64,
    /// Non-zero 4 KiB leaf entries (committed pages).
    pub committed_pages: u64,
    /// Committed pages holding a frame.
    pub pages_with_frame: u64,
    /// Present 4 KiB entries.
    pub present_pages: u64,
    /// 2 MiB mappings.
    pub large_pages: u64,
    /// Non-leaf entries whose kept child count disagrees with the child table.
    pub bad_counts: u64,
}

/// Walks every table of the lower half, calling `leaf(va, pte)` for every committed 4 KiB page
/// and `large(va, entry)` for every 2 MiB entry, and checks the kept child counts. A committed
/// page is a non-zero entry, or a zero one for which `lazy(va)` gives the page's state (a lazily
/// committed page, see [`Tables::update_lazy`]; it counts in its table's child count).
///
/// Cost: O(table pages × 512). For tests, statistics and teardown checks.
pub fn census(
    mem: &impl PhysMemory,
    root: u64,
    lazy: impl Fn(u64) -> Option<Pte>,
    mut leaf: impl FnMut(u64, Pte),
    mut large: impl FnMut(u64, u64),
) -> TableCensus {
    let mut c = TableCensus::default();
    for i4 in 0..256u64 {
        let e4 = mem.read_u64(pa(root + i4 * 8));
        if e4 & PRESENT == 0 {
            continue;
        }
        c.table_pages += 1;
        let pdpt = e4 & ADDR_MASK;
        let mut n4 = 0;
        for i3 in 0..512u64 {
            let e3 = mem.read_u64(pa(pdpt + i3 * 8));
            if e3 == 0 {
                continue;
            }
            n4 += 1;
            c.table_pages += 1;
            let pd = e3 & ADDR_MASK;
            let mut n3 = 0;
            for i2 in 0..512u64 {
                let e2 = mem.read_u64(pa(pd + i2 * 8));
                if e2 == 0 {
                    continue;
                }
                n3 += 1;
                let base = (i4 << 39) | (i3 << 30) | (i2 << 21);
                if e2 & HUGE != 0 {
                    c.large_pages += 1;
                    large(base, e2);
                    continue;
                }
                c.table_pages += 1;
                let pt = e2 & ADDR_MASK;
                let mut n2 = 0;
                for i1 in 0..512u64 {
                    let raw = Pte(mem.read_u64(pa(pt + i1 * 8)));
                    let Some(e) = (if raw.0 == 0 { lazy(base | (i1 << 12)) } else { Some(raw) }) else {
                        continue;
                    };
                    n2 += 1;
                    c.committed_pages += 1;
                    if e.frame().is_some() {
                        c.pages_with_frame += 1;
                    }
                    if e.is_present() {
                        c.present_pages += 1;
                    }
                    leaf(base | (i1 << 12), e);
                }
                // A page table may be empty: a decommit keeps its reservation's tables.
                if n2 != child_count(e2) {
                    c.bad_counts += 1;
                }
            }
            if n3 != child_count(e3) || n3 == 0 {
                c.bad_counts += 1;
            }
        }
        if n4 != child_count(e4) || n4 == 0 {
            c.bad_counts += 1;
        }
    }
    c
}
