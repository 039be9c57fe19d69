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
//!   the number of non-zero entries of its child table in its ignored bits 52–61
//!   ([`child_count`]), so no table is scanned. The PML4 is never freed; only its lower half
//!   (indices 0–255, user space) is ever touched: the kernel owns the upper half.
//! * Ranges are processed one leaf table (2 MiB) at a time, with one walk per table, and absent
//!   subtrees are skipped whole (a 64 GiB reservation costs nothing to scan).

use alloc::vec::Vec;
use core::ops::ControlFlow;

use x86_64::PhysAddr;
use x86_64::structures::paging::{PhysFrame, Size4KiB};

use super::pte::{ACCESSED, ADDR_MASK, DIRTY, HUGE, PRESENT, Pte, TABLE_FLAGS};
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
    /// them with [`Tables::free_empty_tables`]).
    pub keep_empty: bool,
}

impl<M: PhysMemory> Tables<'_, M> {
    #[inline]
    fn write(&mut self, at: u64, v: u64) {
        self.mem.write_u64(pa(at), v);
        self.counters.pte_writes += 1;
    }

    /// Replaces the present leaf entry `old` at `at` with `new` by compare-and-exchange: the MMU
    /// of another CPU running the space may set A or D in it between the read and the write
    /// (pitfall 12). A D bit set meanwhile is carried into `new` if `new` keeps the frame (the
    /// D bit is the write-watch mark, present or not), so no write escapes write watch. Hardware
    /// only ever sets those two bits, so at most three attempts.
    fn replace_present(&mut self, at: u64, old: Pte, mut new: Pte) {
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

    /// Sets the child count kept in the non-leaf entry at `at` (whose value is `e`). A count of
    /// zero clears the entry and frees the child table (`va`, an address it mapped, tells the
    /// TLB's paging-structure caches what to forget); returns whether it did, i.e. whether the
    /// table holding `at` lost an entry.
    fn set_children(&mut self, at: u64, e: u64, count: u64, va: u64, batch: &mut TlbBatch) -> bool {
        if count != 0 || self.keep_empty {
            self.write(at, with_count(e, count));
            return false;
        }
        self.write(at, 0);
        self.free_table(e & ADDR_MASK, va, batch);
        true
    }

    /// Counts one more non-zero entry in the child table of the entry at `at` (value `e`);
    /// returns the entry's new value.
    fn link_child(&mut self, at: u64, e: u64) -> u64 {
        let e = with_count(e, child_count(e) + 1);
        self.write(at, e);
        e
    }

    /// Counts one non-zero entry fewer in the child table of the entry at `at` (value `e`),
    /// freeing the child table if it emptied; returns whether it did (see [`Self::set_children`]).
    fn unlink_child(&mut self, at: u64, e: u64, va: u64, batch: &mut TlbBatch) -> bool {
        self.set_children(at, e, child_count(e) - 1, va, batch)
    }

    /// Returns the entry address at `level` for `va` below `table`, creating the child table
    /// from `pool` if the entry is absent. Returns the child table address and the entry value.
    fn ensure(&mut self, entry_at: u64, pool: &mut Vec<PhysFrame>) -> (u64, u64, bool) {
        let e = self.mem.read_u64(pa(entry_at));
        if e & PRESENT != 0 {
            return (e & ADDR_MASK, e, false);
        }
        let frame = pool.pop().expect("page table: table pool smaller than count_missing_tables");
        let e = frame.start_address().as_u64() | TABLE_FLAGS;
        self.write(entry_at, e);
        (e & ADDR_MASK, e, true)
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
    /// Cost: O(pages in range) entry reads plus one walk per 2 MiB; absent subtrees are O(1).
    pub fn update_range(
        &mut self,
        start: u64,
        end: u64,
        mut pool: Option<&mut Vec<PhysFrame>>,
        batch: &mut TlbBatch,
        mut f: impl FnMut(&mut TlbBatch, u64, Pte) -> Pte,
    ) {
        let mut va = start;
        while va < end {
            let i4 = self.root + index(va, 3) * 8;
            let i3;
            let i2;
            let (mut e4, mut e3, e2);
            let pdpt;
            let pd;
            let pt;
            match pool.as_deref_mut() {
                Some(pool) => {
                    let (t, e, _) = self.ensure(i4, pool);
                    pdpt = t;
                    e4 = e;
                    i3 = pdpt + index(va, 2) * 8;
                    let (t, e, new) = self.ensure(i3, pool);
                    pd = t;
                    e3 = e;
                    if new {
                        e4 = self.link_child(i4, e4);
                    }
                    i2 = pd + index(va, 1) * 8;
                    let (t, e, new) = self.ensure(i2, pool);
                    debug_assert!(e & HUGE == 0, "4 KiB update inside a 2 MiB mapping");
                    pt = t;
                    e2 = e;
                    if new {
                        e3 = self.link_child(i3, e3);
                    }
                }
                None => {
                    e4 = self.mem.read_u64(pa(i4));
                    if e4 & PRESENT == 0 {
                        va = next_boundary(va, entry_span(3), end);
                        continue;
                    }
                    pdpt = e4 & ADDR_MASK;
                    i3 = pdpt + index(va, 2) * 8;
                    e3 = self.mem.read_u64(pa(i3));
                    if e3 & PRESENT == 0 {
                        va = next_boundary(va, entry_span(2), end);
                        continue;
                    }
                    pd = e3 & ADDR_MASK;
                    i2 = pd + index(va, 1) * 8;
                    e2 = self.mem.read_u64(pa(i2));
                    if e2 & PRESENT == 0 || e2 & HUGE != 0 {
                        debug_assert!(e2 & HUGE == 0, "4 KiB update inside a 2 MiB mapping");
                        va = next_boundary(va, entry_span(1), end);
                        continue;
                    }
                    pt = e2 & ADDR_MASK;
                }
            }
            let chunk_end = next_boundary(va, LARGE_PAGE_SIZE, end);
            let old_count = child_count(e2);
            let mut count = old_count;
            let mut at = pt + index(va, 0) * 8;
            while va < chunk_end {
                let old = Pte(self.mem.read_u64(pa(at)));
                let new = f(batch, va, old);
                if new != old {
                    if old.is_present() {
                        self.replace_present(at, old, new);
                        batch.add(va);
                    } else {
                        self.write(at, new.0);
                    }
                    match (old.0 != 0, new.0 != 0) {
                        (false, true) => count += 1,
                        (true, false) => count -= 1,
                        _ => {}
                    }
                }
                va += PAGE_SIZE;
                at += 8;
            }
            if count == old_count {
                continue;
            }
            // An emptied page table is freed, then its parents if they empty too.
            let here = va - PAGE_SIZE;
            if self.set_children(i2, e2, count, here, batch) && self.unlink_child(i3, e3, here, batch) {
                self.unlink_child(i4, e4, here, batch);
            }
        }
    }

    /// Frees every page table mapping part of `[start, end)` that holds no entry (kept by a
    /// decommit, see [`Tables::keep_empty`]), and its parents if they empty, up to but not
    /// including the PML4. A table shared with a neighbouring reservation is freed too when it is
    /// empty: no entry of anyone's is in it. Stops early when `batch` could not take three more
    /// table pages ([`MAX_DEFERRED`]) and returns where to go on after the batch's round; `end`
    /// when done.
    ///
    /// Cost: one walk per 2 MiB of the range; absent subtrees are skipped whole.
    pub fn free_empty_tables(&mut self, start: u64, end: u64, batch: &mut TlbBatch) -> u64 {
        let mut va = start & !(LARGE_PAGE_SIZE - 1);
        while va < end {
            if batch.deferred_frames().0 + 3 > MAX_DEFERRED {
                return va.max(start);
            }
            let i4 = self.root + index(va, 3) * 8;
            let e4 = self.mem.read_u64(pa(i4));
            if e4 & PRESENT == 0 {
                va = next_boundary(va, entry_span(3), end);
                continue;
            }
            let i3 = (e4 & ADDR_MASK) + index(va, 2) * 8;
            let e3 = self.mem.read_u64(pa(i3));
            if e3 & PRESENT == 0 {
                va = next_boundary(va, entry_span(2), end);
                continue;
            }
            let i2 = (e3 & ADDR_MASK) + index(va, 1) * 8;
            let e2 = self.mem.read_u64(pa(i2));
            if e2 & PRESENT != 0
                && e2 & HUGE == 0
                && child_count(e2) == 0
                && self.set_children(i2, e2, 0, va, batch)
                && self.unlink_child(i3, e3, va, batch)
            {
                self.unlink_child(i4, e4, va, batch);
            }
            va = next_boundary(va, entry_span(1), end);
        }
        end
    }

    /// Maps the 2 MiB page at `va` (2 MiB aligned) with the directory entry `entry` (frame, PS
    /// and flags), creating the PDPT/PD from `pool` if needed.
    pub fn map_large(&mut self, va: u64, entry: u64, pool: &mut Vec<PhysFrame>) {
        let i4 = self.root + index(va, 3) * 8;
        let (pdpt, e4, _) = self.ensure(i4, pool);
        let i3 = pdpt + index(va, 2) * 8;
        let (pd, e3, new) = self.ensure(i3, pool);
        if new {
            self.link_child(i4, e4);
        }
        let i2 = pd + index(va, 1) * 8;
        debug_assert_eq!(self.mem.read_u64(pa(i2)), 0, "large page over an existing entry");
        self.write(i2, entry);
        self.link_child(i3, e3);
    }

    /// Removes the 2 MiB mapping at `va`, returning its directory entry; frees emptied tables.
    ///
    /// # Panics
    ///
    /// If no 2 MiB mapping is there (a kernel bug).
    pub fn unmap_large(&mut self, va: u64, batch: &mut TlbBatch) -> u64 {
        let i4 = self.root + index(va, 3) * 8;
        let e4 = self.mem.read_u64(pa(i4));
        let pdpt = e4 & ADDR_MASK;
        let i3 = pdpt + index(va, 2) * 8;
        let e3 = self.mem.read_u64(pa(i3));
        let pd = e3 & ADDR_MASK;
        let i2 = pd + index(va, 1) * 8;
        let e2 = self.mem.read_u64(pa(i2));
        assert!(
            e4 & PRESENT != 0 && e3 & PRESENT != 0 && e2 & HUGE != 0,
            "page table: no large page at {va:#x}"
        );
        self.write(i2, 0);
        batch.add(va);
        if self.unlink_child(i3, e3, va, batch) {
            self.unlink_child(i4, e4, va, batch);
        }
        e2
    }
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

/// Walks every table of the lower half, calling `leaf(va, pte)` for every non-zero 4 KiB entry
/// and `large(va, entry)` for every 2 MiB entry, and checks the kept child counts.
///
/// Cost: O(table pages × 512). For tests, statistics and teardown checks.
pub fn census(
    mem: &impl PhysMemory,
    root: u64,
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
                    let e = Pte(mem.read_u64(pa(pt + i1 * 8)));
                    if e.0 == 0 {
                        continue;
                    }
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
