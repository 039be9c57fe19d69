//! `VirtualProtect` (win32-semantics §5).

use super::{AddressSpace, VmContext, round_up};
use crate::paging::pte::ProtectionBits;
use crate::paging::tlb::Tlb;
use crate::protection::PageProtection;
use crate::{PhysMemory, VmError};
use crate::PAGE_SIZE;

impl AddressSpace {
    /// Validates a `VirtualProtect` protection value alone (win32-semantics §5 step 1).
    ///
    /// The ABI calls this first, then checks the `lpflOldProtect` pointer (ERROR_NOACCESS),
    /// then calls [`virtual_protect`](Self::virtual_protect) — the Windows order (host-abi §9).
    ///
    /// # Errors
    ///
    /// [`VmError::InvalidProtection`] (87) for values invalid on private memory (§2), including
    /// `PAGE_WRITECOPY` / `PAGE_EXECUTE_WRITECOPY`.
    pub fn check_protect_value(new_protect: u32) -> Result<(), VmError> {
        PageProtection::parse_private(new_protect).map(|_| ())
    }

    /// `VirtualProtect(addr, size, new_protect)`: changes the protection of committed pages and
    /// returns the old protection of the first page (as `VirtualQuery` reports it, with
    /// `PAGE_GUARD` / `PAGE_NOCACHE`).
    ///
    /// Checks, in order (win32-semantics §5):
    ///
    /// 1. `new_protect` invalid ([`check_protect_value`](Self::check_protect_value)) → 87;
    /// 2. (the ABI's old-protect pointer check goes here);
    /// 3. `addr` above `max_application_address`, `size` 0 (the ReactOS answer; Wine accepts
    ///    it), or `addr + size` overflowing or past the user range → [`VmError::InvalidParameter`] (87);
    /// 4. pages touching `[addr, addr+size)` not inside one allocation (or in a host-owned one)
    ///    → [`VmError::ConflictingAddresses`] (487);
    /// 5. a page not committed → [`VmError::NotCommitted`] (487), nothing changed;
    /// 6. a large-page allocation → 87 (its pages are always read/write).
    ///
    /// `PAGE_GUARD` arms guard pages; `PAGE_NOCACHE` / `PAGE_WRITECOMBINE` are ignored (the
    /// cache mode is fixed per allocation). Contents, frames and write-watch marks survive any
    /// change; a page that already has a frame is mapped (or unmapped) at once.
    ///
    /// Cost: O(log n) plus O(pages) entry reads and writes, and the TLB invalidation of the
    /// pages that were present.
    pub fn virtual_protect<M: PhysMemory, T: Tlb>(
        &mut self,
        cx: &mut VmContext<'_, M, T>,
        addr: u64,
        size: u64,
        new_protect: u32,
    ) -> Result<u32, VmError> {
        let prot = PageProtection::parse_private(new_protect)?;
        if addr > self.config.max_application_address() || size == 0 {
            return Err(VmError::InvalidParameter);
        }
        let end = match addr.checked_add(size) {
            Some(e) if e <= self.config.max_address_end => round_up(e, PAGE_SIZE),
            _ => return Err(VmError::InvalidParameter),
        };
        let start = addr & !(PAGE_SIZE - 1);
        let (slot, a) = self.single_allocation(start, end)?;
        if !a.large && !self.all_committed(cx.mem, start, end, &a) {
            return Err(VmError::NotCommitted);
        }
        if a.large {
            return Err(VmError::InvalidParameter);
        }
        // The lazy run stays if its pages stay alike: the range covers it or keeps its
        // protection, and arms no guard. Its pages are the range's only zero entries.
        // (Materialising writes the entries the run's pages had: the first page's state stays.)
        let a = match a.lazy() {
            Some(r) if r.overlaps(start, end) && (prot.guard || (prot.base != r.prot && !(start <= r.start && r.end <= end))) => {
                self.materialise(cx, a.base)
            }
            _ => a,
        };
        let lazy = a.lazy().is_some_and(|r| r.overlaps(start, end));
        // The old protection is the first page's, read by the walk (every page of the range is
        // committed, so it has a table and the walk visits it): no walk of its own.
        let mut first = None;
        let mut batch = self.batch();
        let bits = ProtectionBits::new(prot.base, prot.guard, a.cache);
        cx.tables(self.root_pa()).update_lazy(start, end, None, &mut batch, (lazy, lazy), |_, va, old| {
            if old.0 == 0 {
                first.get_or_insert_with(|| Self::lazy_entry(&a, va).unwrap_or(old));
                old
            } else {
                first.get_or_insert(old);
                old.with_bits(bits)
            }
        });
        self.complete(&mut batch, (0, 0), cx);
        self.note_protection(slot, &a, start, end, prot.base, prot.guard);
        Ok(Self::page_protect(first.expect("protect: the walk visits every committed page"), &a))
    }
}
