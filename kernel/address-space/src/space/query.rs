//! `VirtualQuery` (win32-semantics §6).

use x86_64::PhysAddr;

use super::{AddressSpace, Allocation, AllocationKind, LazyRun};
use crate::paging::pte::{ADDR_MASK, HUGE, Pte, QUERY_KEY_MASK};
use crate::paging::table::{self, Leaf};
use crate::win32::*;
use crate::{PhysMemory, VmError};
use crate::{LARGE_PAGE_SIZE, PAGE_SIZE};

/// `MEMORY_BASIC_INFORMATION` (x64 layout: 48 bytes, host-abi §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct MemoryBasicInformation {
    /// Queried address rounded down to a page.
    pub base_address: u64,
    /// Base of the allocation (0 for free memory).
    pub allocation_base: u64,
    /// Protection given at reservation (0 for free memory).
    pub allocation_protect: u32,
    /// Always 0.
    pub partition_id: u16,
    /// Bytes from `base_address` with the same state and protection, within one allocation.
    pub region_size: u64,
    /// `MEM_COMMIT`, `MEM_RESERVE` or `MEM_FREE`.
    pub state: u32,
    /// Current protection of committed pages (with GUARD/NOCACHE), 0 for reserved pages,
    /// `PAGE_NOACCESS` for free memory.
    pub protect: u32,
    /// `MEM_PRIVATE`, `MEM_IMAGE`, or 0 for free memory.
    pub type_: u32,
}

impl MemoryBasicInformation {
    /// Size of the structure on x64.
    pub const SIZE: usize = 48;

    /// Returns the x64 byte image of the structure (little endian, padding and `PartitionId`
    /// zero), as the ABI copies it to the guest.
    pub fn to_bytes(&self) -> [u8; 48] {
        let mut b = [0u8; 48];
        b[0..8].copy_from_slice(&self.base_address.to_le_bytes());
        b[8..16].copy_from_slice(&self.allocation_base.to_le_bytes());
        b[16..20].copy_from_slice(&self.allocation_protect.to_le_bytes());
        b[20..22].copy_from_slice(&self.partition_id.to_le_bytes());
        b[24..32].copy_from_slice(&self.region_size.to_le_bytes());
        b[32..36].copy_from_slice(&self.state.to_le_bytes());
        b[36..40].copy_from_slice(&self.protect.to_le_bytes());
        b[40..44].copy_from_slice(&self.type_.to_le_bytes());
        b
    }
}

impl AddressSpace {
    /// The `Protect` value `VirtualQuery` reports for a committed page of `a`.
    pub(crate) fn page_protect(e: Pte, a: &Allocation) -> u32 {
        e.prot().to_win32() | if e.guard() { PAGE_GUARD } else { 0 } | a.cache.to_win32()
    }

    /// `VirtualQuery(addr)`: describes the region of pages from `addr`'s page that share its
    /// state and protection.
    ///
    /// * Free memory (also an allocation's unusable 64 KiB tail, and below `min_address`):
    ///   allocation base 0, `MEM_FREE`, `PAGE_NOACCESS`, type 0, size up to the next allocation
    ///   or the end of the user range.
    /// * Inside an allocation: the run of pages with equal (state, protection incl. GUARD and
    ///   NOCACHE) from `addr`'s page to at most the allocation end; write-watch marks do not
    ///   split runs; reserved pages report `Protect` 0. Image and host-owned allocations report
    ///   `MEM_IMAGE`.
    ///
    /// # Errors
    ///
    /// [`VmError::InvalidParameter`] (87) if `addr` is above `max_application_address`. (The
    /// buffer-length and pointer checks, 24 and 998, are the ABI's.)
    ///
    /// Cost: O(log n), plus nothing for a page outside the allocation's committed extent
    /// (`extent.rs`) or in a wholly reserved, uniform or large-page one; a committed run costs
    /// one walk and one entry read per page of it outside the lazy run (which is stepped over);
    /// a reserved run inside the extent, a search of the tables that exist, bounded whatever the
    /// allocation's size (`next_committed`). No allocation on the heap, no write.
    pub fn virtual_query(&self, mem: &impl PhysMemory, addr: u64) -> Result<MemoryBasicInformation, VmError> {
        if addr > self.config.max_application_address() {
            return Err(VmError::InvalidParameter);
        }
        let page = addr & !(PAGE_SIZE - 1);
        // One descent of the map: the allocation at or below the page and, for free memory, the
        // next allocation's base (the floor's base is not the page's then, so the key after the
        // floor is the first at or above the page).
        let (below, next) = self.allocations.floor_and_next(page);
        let Some((_, a)) = below.filter(|(_, a)| page < a.end()) else {
            let next = next.unwrap_or(self.config.max_address_end);
            return Ok(MemoryBasicInformation {
                base_address: page,
                region_size: next - page,
                state: MEM_FREE,
                protect: PAGE_NOACCESS,
                ..Default::default()
            });
        };
        let type_ = match a.kind {
            AllocationKind::Private => MEM_PRIVATE,
            AllocationKind::Image | AllocationKind::HostOwned => MEM_IMAGE,
        };
        let mut info = MemoryBasicInformation {
            base_address: page,
            allocation_base: a.base,
            allocation_protect: a.allocation_protect,
            type_,
            ..Default::default()
        };
        if let Some(prot) = a.large_protection() {
            info.region_size = a.end() - page;
            info.state = MEM_COMMIT;
            info.protect = prot.to_win32() | a.cache.to_win32();
            return Ok(info);
        }
        if let Some(prot) = a.uniform {
            // Wholly committed with one protection: no page walk either.
            info.region_size = a.end() - page;
            info.state = MEM_COMMIT;
            info.protect = prot.to_win32() | a.cache.to_win32();
            return Ok(info);
        }
        if a.committed_pages == 0 {
            // Wholly reserved: no page walk (win32-semantics §6: Protect 0).
            info.region_size = a.end() - page;
            info.state = MEM_RESERVE;
            return Ok(info);
        }
        // Some while a page is committed (`extent.rs`); the whole allocation would do as well.
        debug_assert!(a.committed_extent().is_some(), "committed pages outside the committed extent");
        let (lo, hi) = a.committed_extent().unwrap_or((a.base, a.end()));
        if page >= hi {
            // Past every committed page (a GC heap's reserved tail): no walk, whatever the size.
            info.region_size = a.end() - page;
            info.state = MEM_RESERVE;
            return Ok(info);
        }
        // No walk for the page itself in the lazy run (all its pages have the run's state, an
        // entry or not) or outside the committed extent (reserved).
        let head = if page < lo {
            Pte::RESERVED
        } else {
            Self::lazy_entry(a, page).unwrap_or_else(|| self.entry(mem, a, page))
        };
        let run_end = if head.is_committed() {
            info.state = MEM_COMMIT;
            info.protect = Self::page_protect(head, a);
            self.committed_run_end(mem, a, page, head, hi)
        } else {
            info.state = MEM_RESERVE;
            self.reserved_run_end(mem, a, page, (lo, hi))
        };
        info.region_size = run_end - page;
        Ok(info)
    }

    /// The end of the run of reserved pages from `page` (reserved, below `hi`) in `a`, whose
    /// committed extent is `[lo, hi)`: the first page at or after it that is committed (it has an
    /// entry, or lies in the lazy run), or the allocation's end. Only `[max(page, lo), hi)` is
    /// looked at, up to the lazy run's first page there.
    fn reserved_run_end(&self, mem: &impl PhysMemory, a: &Allocation, page: u64, (lo, hi): (u64, u64)) -> u64 {
        let from = page.max(lo);
        debug_assert!(from < hi);
        // The run lies inside the extent: its first page at or after `from` is committed.
        let run_next = a.lazy().filter(|r| r.end > from).map(|r| r.start.max(from));
        let to = run_next.unwrap_or(hi);
        match next_committed(mem, self.root_pa(), from, to, a.lazy()) {
            found if found < to || run_next.is_some() => found,
            _ => a.end(),
        }
    }

    /// The end of the run of pages from `page` (committed, state `head`) of `a` with `head`'s
    /// state and protection: the first page after it that differs (a page from `hi`, the end of
    /// the committed extent, is reserved). The lazy run's pages all have its state, so a run
    /// of the same protection is stepped over without reading its entries.
    fn committed_run_end(&self, mem: &impl PhysMemory, a: &Allocation, page: u64, head: Pte, hi: u64) -> u64 {
        let key = head.0 & QUERY_KEY_MASK;
        let alike = a.lazy().filter(|r| Self::lazy_entry(a, r.start).is_some_and(|e| e.0 & QUERY_KEY_MASK == key));
        let mut va = page + PAGE_SIZE;
        loop {
            if let Some(r) = alike.filter(|r| r.contains(va)) {
                va = r.end;
            }
            let to = alike.filter(|r| r.start > va).map_or(hi, |r| r.start);
            // Outside the run stepped over, a zero entry is reserved or in a run of another
            // state: never alike (the key has the committed bit).
            va = first_unlike(mem, self.root_pa(), va, to, key);
            // Stopped on a page that differs, or at the end of the extent (or of the
            // allocation): done; at the lazy run's start: step over it.
            if va < to || to == hi {
                return va.min(hi);
            }
        }
    }
}

/// Returns the first page of `[from, to)` whose entry's state and protection are not `key`'s,
/// or `to`. A page without a table is reserved: it ends the run.
///
/// Cost: one walk per page table, one entry read per page of the run.
fn first_unlike(mem: &impl PhysMemory, root: u64, from: u64, to: u64, key: u64) -> u64 {
    let mut va = from;
    while va < to {
        let Leaf::Table(pt) = table::walk(mem, root, va) else { return va };
        let chunk_end = ((va | (LARGE_PAGE_SIZE - 1)) + 1).min(to);
        let mut at = pt + table::index(va, 0) * 8;
        while va < chunk_end {
            if mem.read_u64(PhysAddr::new(at)) & QUERY_KEY_MASK != key {
                return va;
            }
            va += PAGE_SIZE;
            at += 8;
        }
    }
    to
}

/// Returns the first page of `[from, to)` that is committed (a non-zero entry, or a page of
/// `run`), or `to` if there is none.
///
/// The search goes down from the root to the first table entry at or after the page at each
/// level that maps something, and back up when a table has none left: an absent or empty
/// subtree costs one entry read, and a table is left as soon as its count says that the entries
/// before the page hold all it has (see [`next_in_table`]).
///
/// Cost: bounded by the tables on the way, whatever the range's size: at most one table per
/// level on the way down to the page and one on the way down to the next committed page, each
/// read up to its end or up to twice the entries before the position searched.
fn next_committed(mem: &impl PhysMemory, root: u64, from: u64, to: u64, run: Option<LazyRun>) -> u64 {
    let mut va = from;
    'down: while va < to {
        let (mut table, mut count) = (root, None);
        for level in (0..=3).rev() {
            let span = table::entry_span(level);
            let table_base = va & !(span * 512 - 1);
            // Entries of the table from `va`'s up to the one holding `to` (if the table holds it).
            let (first, end) = (table::index(va, level), (to - table_base).div_ceil(span).min(512));
            let found = if level == 0 {
                let counted = |i: u64, e: u64| e != 0 || run.is_some_and(|r| r.contains(table_base + i * PAGE_SIZE));
                next_in_table(mem, table, first, end, count, counted, |_| true)
            } else {
                // A 2 MiB mapping belongs to a large-page allocation, never to the range.
                next_in_table(mem, table, first, end, count, |_, e| e != 0, |e| e & HUGE == 0 && table::child_count(e) > 0)
            };
            let Some((i, e)) = found else {
                // Nothing in this table from `va` on: on after it, from the root.
                va = table_base + span * 512;
                continue 'down;
            };
            va = va.max(table_base + i * span);
            if level == 0 {
                return va.min(to);
            }
            (table, count) = (e & ADDR_MASK, Some(table::child_count(e)));
        }
    }
    to
}

/// Returns the first entry of `table` in `[first, end)` that is `wanted` (its index and value),
/// or `None`. `counted` entries are those the table's `count` (from its parent entry, `None` for
/// the root) counts: while the entries from `first` are searched, those before it are counted
/// in step, and the search ends as soon as the counted entries seen make up the count (the rest
/// of the table then holds none). So a table is read up to the entry found, or until the
/// entries before `first` and those passed make up its count (two reads a step), whichever
/// comes first.
fn next_in_table(
    mem: &impl PhysMemory,
    table: u64,
    first: u64,
    end: u64,
    count: Option<u64>,
    counted: impl Fn(u64, u64) -> bool,
    wanted: impl Fn(u64) -> bool,
) -> Option<(u64, u64)> {
    let read = |i: u64| mem.read_u64(PhysAddr::new(table + i * 8));
    let count = count.unwrap_or(u64::MAX);
    let (mut seen, mut before) = (0, 0);
    for i in first..end {
        if seen == count {
            return None;
        }
        if before < first {
            seen += u64::from(counted(before, read(before)));
            before += 1;
        }
        let e = read(i);
        if counted(i, e) {
            if wanted(e) {
                return Some((i, e));
            }
            seen += 1;
        }
    }
    None
}
