//! Image and host-owned allocations (host-abi §1 and §9): created committed by the kernel's
//! loader, shown as `MEM_IMAGE`.

use super::{AddressSpace, Allocation, AllocationKind, VmContext};
use crate::charge::CriticalLevel;
use crate::paging::tlb::Tlb;
use crate::protection::{CacheMode, PageProtection};
use crate::win32::PAGE_EXECUTE_WRITECOPY;
use crate::{PhysMemory, VmError};
use crate::{ALLOCATION_GRANULARITY, PAGE_SIZE};

impl AddressSpace {
    /// Creates a committed `MEM_IMAGE` allocation at `base` with one protection per page
    /// (`page_protections[i]` for page `base + i * 4096`; plain `PAGE_*` access values, no
    /// modifiers). `AllocationProtect` is `PAGE_EXECUTE_WRITECOPY`, as on Windows.
    ///
    /// With `host_owned`, the allocation holds the host's own pages: every `VirtualAlloc`,
    /// `VirtualFree` and `VirtualProtect` on it fails with 487. Otherwise it is a guest image:
    /// `VirtualProtect` works as on private memory, `VirtualFree` fails with 87, reserving over
    /// it with 487, committing into it with 5.
    ///
    /// Pages are demand-zero like any commit; fill them with
    /// [`write_image`](Self::write_image). The pages are charged at `level`.
    ///
    /// # Errors
    ///
    /// [`VmError::InvalidParameter`] if `base` is not 64 KiB aligned, the list is empty, the range
    /// leaves the user range, or a protection is not a plain valid access value;
    /// [`VmError::ConflictingAddresses`] if a page is not free; [`VmError::CommitmentLimit`],
    /// [`VmError::NoMemory`] as for a commit. Nothing changes on error.
    ///
    /// Cost: as reserve + commit of the pages.
    pub fn create_image<M: PhysMemory, T: Tlb>(
        &mut self,
        cx: &mut VmContext<'_, M, T>,
        base: u64,
        page_protections: &[u32],
        host_owned: bool,
        level: CriticalLevel,
    ) -> Result<(), VmError> {
        if !base.is_multiple_of(ALLOCATION_GRANULARITY) || page_protections.is_empty() || base < self.config.min_address {
            return Err(VmError::InvalidParameter);
        }
        let size = (page_protections.len() as u64).checked_mul(PAGE_SIZE).ok_or(VmError::InvalidParameter)?;
        let end = base.checked_add(size).ok_or(VmError::InvalidParameter)?;
        if end > self.config.max_address_end {
            return Err(VmError::InvalidParameter);
        }
        let mut prots = ::alloc::vec::Vec::with_capacity(page_protections.len());
        for &p in page_protections {
            match PageProtection::parse(p) {
                Ok(pp) if !pp.guard && pp.cache == CacheMode::WriteBack => prots.push(pp.base),
                _ => return Err(VmError::InvalidParameter),
            }
        }
        let blocks = (super::round_up(end, ALLOCATION_GRANULARITY) - base) / ALLOCATION_GRANULARITY;
        match self.gaps.floor(base / ALLOCATION_GRANULARITY) {
            Some((s, l)) if base / ALLOCATION_GRANULARITY + blocks <= s + l => {}
            _ => return Err(VmError::ConflictingAddresses),
        }
        let plan = self.prepare_commit_new(cx, base, end, level)?;
        let mut a = Allocation {
            base,
            size,
            allocation_protect: PAGE_EXECUTE_WRITECOPY,
            kind: if host_owned { AllocationKind::HostOwned } else { AllocationKind::Image },
            write_watch: false,
            large: false,
            cache: CacheMode::WriteBack,
            committed_pages: plan.new_pages,
            uniform: None,
            lazy_run: None,
            committed_extent: super::CommittedExtent::EMPTY,
        };
        self.perform_commit(cx, &mut a, base, end, plan, |va| (prots[((va - base) / PAGE_SIZE) as usize], false));
        self.allocations.insert(base, a);
        self.reserved_bytes += a.size;
        self.gaps.take(base / ALLOCATION_GRANULARITY, blocks);
        Ok(())
    }

    /// Writes `data` into an image or host-owned allocation at `addr`, whatever the pages'
    /// protection (the loader filling segments), giving pages frames as needed. Does not mark
    /// pages written.
    ///
    /// # Errors
    ///
    /// [`VmError::InvalidParameter`] if `[addr, addr + data.len())` is not inside one image or
    /// host-owned allocation.
    ///
    /// Cost: O(len) plus one walk per page.
    pub fn write_image<M: PhysMemory, T: Tlb>(
        &mut self,
        cx: &mut VmContext<'_, M, T>,
        addr: u64,
        data: &[u8],
    ) -> Result<(), VmError> {
        let end = addr.checked_add(data.len() as u64).ok_or(VmError::InvalidParameter)?;
        match self.allocation_at(addr) {
            Some(a) if a.kind != AllocationKind::Private && end <= a.end() => {}
            _ => return Err(VmError::InvalidParameter),
        }
        self.copy_in(cx, addr, data, false);
        Ok(())
    }

    /// Returns `true` if `addr` lies in a host-owned allocation.
    pub fn is_host_owned(&self, addr: u64) -> bool {
        self.allocation_at(addr).is_some_and(|a| a.kind == AllocationKind::HostOwned)
    }
}
