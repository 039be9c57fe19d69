//! `VirtualQuery` (win32-semantics §6).

use super::{AddressSpace, Allocation, AllocationKind};
use crate::paging::pte::{ADDR_MASK, HUGE, PRESENT, Pte, QUERY_KEY_MASK};
use crate::paging::table;
use crate::win32::*;
use crate::{PhysMemory, VmError};
use crate::PAGE_SIZE;

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
    /// Cost: O(log n) plus O(pages in the returned run) for committed runs; reserved runs cost
    /// one walk per absent table.
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
        let Some((lo, hi)) = a.committed_extent().filter(|_| a.committed_pages > 0) else {
            // Wholly reserved: no page walk (win32-semantics §6: Protect 0).
            info.region_size = a.end() - page;
            info.state = MEM_RESERVE;
            return Ok(info);
        };
        // Outside the committed extent every page is reserved: no walk for the page itself.
        let head = if (lo..hi).contains(&page) { self.entry(mem, a, page) } else { Pte::RESERVED };
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

    /// The end of the run of reserved pages from `page` (reserved) in `a`, whose committed
    /// extent is `[lo, hi)`: the first page at or after it that is committed (it has an entry,
    /// or lies in the lazy run), or the allocation's end. Only `[max(page, lo), hi)` is looked
    /// at, up to the lazy run's first page there.
    fn reserved_run_end(&self, mem: &impl PhysMemory, a: &Allocation, page: u64, (lo, hi): (u64, u64)) -> u64 {
        let from = page.max(lo);
        if from >= hi {
            return a.end();
        }
        // The run lies inside the extent: its first page at or after `from` is committed.
        let run_next = a.lazy().filter(|r| r.end > from).map(|r| r.start.max(from));
        let to = run_next.unwrap_or(hi);
        match first_unlike(mem, self.root_pa(), from, to, true, |_, e| e.0 == 0) {
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
            va = first_unlike(mem, self.root_pa(), va, to, false, |at, e| {
                Self::state(a, at, Some(e)).is_some_and(|e| e.0 & QUERY_KEY_MASK == key)
            });
            // Stopped on a page that differs, or at the end of the extent (or of the
            // allocation): done; at the lazy run's start: step over it.
            if va < to || to == hi {
                return va.min(hi);
            }
        }
    }
}

/// Returns the first page of `[from, to)` for which `like(va, entry)` is false, or `to`: the
/// pages whose page table is absent or counts no entry (reserved: no entry, not lazily
/// committed) are alike if `absent_alike`, and are skipped whole then (one entry read per
/// absent PML4, directory-pointer or directory entry), or end the search at once otherwise.
///
/// Cost: one entry read per absent or empty table on the way, and one per page looked at in
/// the page tables that hold entries.
fn first_unlike(mem: &impl PhysMemory, root: u64, from: u64, to: u64, absent_alike: bool, mut like: impl FnMut(u64, Pte) -> bool) -> u64 {
    let read = |at: u64| mem.read_u64(x86_64::PhysAddr::new(at));
    // An entry whose table maps nothing: absent, or kept empty by a decommit (count 0).
    let empty = |e: u64| e & PRESENT == 0 || table::child_count(e) == 0;
    let span_end = |va: u64, level: u32| ((va & !(table::entry_span(level) - 1)) + table::entry_span(level)).min(to);
    let mut va = from;
    while va < to {
        let e4 = read(root + table::index(va, 3) * 8);
        let l4_end = span_end(va, 3);
        if empty(e4) {
            if !absent_alike {
                return va;
            }
            va = l4_end;
            continue;
        }
        while va < l4_end {
            let e3 = read((e4 & ADDR_MASK) + table::index(va, 2) * 8);
            let l3_end = span_end(va, 2);
            if empty(e3) {
                if !absent_alike {
                    return va;
                }
                va = l3_end;
                continue;
            }
            while va < l3_end {
                let e2 = read((e3 & ADDR_MASK) + table::index(va, 1) * 8);
                let l2_end = span_end(va, 1);
                // 2 MiB mappings are large-page allocations', which queries answer from the record.
                debug_assert!(e2 & HUGE == 0, "a 4 KiB query over a 2 MiB mapping");
                if empty(e2) || e2 & HUGE != 0 {
                    if !absent_alike {
                        return va;
                    }
                    va = l2_end;
                    continue;
                }
                let mut at = (e2 & ADDR_MASK) + table::index(va, 0) * 8;
                while va < l2_end {
                    if !like(va, Pte(read(at))) {
                        return va;
                    }
                    va += PAGE_SIZE;
                    at += 8;
                }
            }
        }
    }
    to
}
