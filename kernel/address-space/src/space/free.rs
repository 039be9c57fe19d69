//! `VirtualFree`: decommit and release (win32-semantics §4).

use super::{AddressSpace, AllocationKind, VmContext, round_up};
use crate::paging::tlb::Tlb;
use crate::win32::{MEM_DECOMMIT, MEM_RELEASE};
use crate::{PhysMemory, VmError};
use crate::PAGE_SIZE;

impl AddressSpace {
    /// `VirtualFree(addr, size, free_type)`: decommits pages or releases a whole allocation.
    ///
    /// Checks, in the Windows order (win32-semantics §4):
    ///
    /// 1. `free_type` not exactly `MEM_DECOMMIT` or `MEM_RELEASE` (placeholder extensions are not
    ///    supported) → [`VmError::InvalidParameter`] (87);
    /// 2. `MEM_RELEASE` with `size` ≠ 0 → 87;
    /// 3. `addr` above `max_application_address` → 87;
    /// 4. no allocation contains `addr`'s page (including `addr` 0, where Windows answers 487
    ///    and Wine 87: we follow Windows), or it is host-owned → [`VmError::NotAllocated`] (487);
    /// 5. an image allocation → [`VmError::UnableToDeleteSection`] (87);
    /// 6. `MEM_RELEASE`, or `MEM_DECOMMIT` with size 0, not at the allocation base (page of
    ///    `addr`) → [`VmError::FreeNotAtBase`] (487);
    /// 7. `MEM_DECOMMIT` with size > 0: pages touching `[addr, addr+size)` must end inside the
    ///    allocation, else [`VmError::UnableToFree`] (87);
    /// 8. `MEM_DECOMMIT` of a large-page allocation → 87 (its pages cannot be decommitted;
    ///    release it instead).
    ///
    /// Decommitting pages that are not committed is allowed. Decommitted pages become reserved:
    /// their frames are freed (or their frame reservation returned), their write-watch marks
    /// cleared, their charge given back. Release frees every page and the address range.
    ///
    /// Cost: O(log n) plus O(pages in range) entry reads/writes (reserved-only tables are
    /// skipped whole); releasing a reservation that was never committed touches no table.
    pub fn virtual_free<M: PhysMemory, T: Tlb>(
        &mut self,
        cx: &mut VmContext<'_, M, T>,
        addr: u64,
        size: u64,
        free_type: u32,
    ) -> Result<(), VmError> {
        if free_type != MEM_DECOMMIT && free_type != MEM_RELEASE {
            return Err(VmError::InvalidParameter);
        }
        if free_type == MEM_RELEASE && size != 0 {
            return Err(VmError::InvalidParameter);
        }
        if addr > self.config.max_application_address() {
            return Err(VmError::InvalidParameter);
        }
        let page = addr & !(PAGE_SIZE - 1);
        let (slot, a) = match self.record_at(page) {
            Some((slot, a)) if a.kind != AllocationKind::HostOwned => (slot, a),
            _ => return Err(VmError::NotAllocated),
        };
        if a.kind == AllocationKind::Image {
            return Err(VmError::UnableToDeleteSection);
        }
        if free_type == MEM_RELEASE {
            if page != a.base {
                return Err(VmError::FreeNotAtBase);
            }
            self.release_allocation(cx, &a);
            return Ok(());
        }
        let (start, end) = if size == 0 {
            if page != a.base {
                return Err(VmError::FreeNotAtBase);
            }
            (a.base, a.end())
        } else {
            match addr.checked_add(size) {
                Some(e) if round_up(e, PAGE_SIZE) <= a.end() => (page, round_up(e, PAGE_SIZE)),
                _ => return Err(VmError::UnableToFree),
            }
        };
        if a.large {
            return Err(VmError::InvalidParameter);
        }
        self.decommit_range(cx, &a, start, end, Some(slot));
        Ok(())
    }
}
