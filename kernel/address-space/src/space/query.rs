//! `VirtualQuery` (win32-semantics §6).

use core::ops::ControlFlow;

use super::{AddressSpace, Allocation, AllocationKind};
use crate::paging::pte::{Pte, QUERY_KEY_MASK};
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
        if a.committed_pages == 0 {
            // Wholly reserved: no page walk (win32-semantics §6: Protect 0).
            info.region_size = a.end() - page;
            info.state = MEM_RESERVE;
            return Ok(info);
        }
        // One walk: the first page's entry sets the key the run must keep.
        let mut first: Option<Pte> = None;
        let mut run_end = a.end();
        table::scan(mem, self.root_pa(), page, a.end(), |va, _, e| {
            let e = Self::state(a, va, e).unwrap_or(Pte::RESERVED);
            let head = *first.get_or_insert(e);
            if e.0 & QUERY_KEY_MASK == head.0 & QUERY_KEY_MASK {
                ControlFlow::Continue(())
            } else {
                run_end = va;
                ControlFlow::Break(())
            }
        });
        let first = first.expect("the query page is inside the allocation");
        info.region_size = run_end - page;
        if first.is_committed() {
            info.state = MEM_COMMIT;
            info.protect = Self::page_protect(first, a);
        } else {
            info.state = MEM_RESERVE;
        }
        Ok(info)
    }
}
