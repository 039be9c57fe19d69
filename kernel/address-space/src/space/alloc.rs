//! `VirtualAlloc`: validation (win32-semantics §3.1, in order), reserve (§3.2), commit (§3.3),
//! `MEM_RESET` / `MEM_RESET_UNDO` (§3.4), large pages (§3.5).

use super::{AddressSpace, Allocation, AllocationKind, VmContext, round_up};
use crate::allocation_map::Slot;
use crate::charge::CriticalLevel;
use crate::paging::tlb::Tlb;
use crate::protection::{BaseProtection, PageProtection};
use crate::win32::*;
use crate::{PhysMemory, VmError};
use crate::{ALLOCATION_GRANULARITY, LARGE_PAGE_SIZE, PAGE_SIZE};

const VALID_TYPES: u32 = MEM_COMMIT
    | MEM_RESERVE
    | MEM_RESET
    | MEM_RESET_UNDO
    | MEM_PHYSICAL
    | MEM_TOP_DOWN
    | MEM_WRITE_WATCH
    | MEM_LARGE_PAGES;

/// A `VirtualAlloc` request after validation.
struct Request {
    addr: u64,
    size: u64,
    ty: u32,
    prot: PageProtection,
}

impl AddressSpace {
    /// `VirtualAlloc(addr, size, alloc_type, protect)`: reserves, commits, or resets memory.
    /// Returns the base of what was reserved or committed (64 KiB aligned for a reservation,
    /// page aligned for a commit or reset).
    ///
    /// Checks run in the Windows order (win32-semantics §3.1); the first failure decides:
    ///
    /// 1. `alloc_type` has a bit outside COMMIT/RESERVE/RESET/RESET_UNDO/PHYSICAL/TOP_DOWN/
    ///    WRITE_WATCH/LARGE_PAGES → [`VmError::InvalidParameter`] (87);
    /// 2. none of COMMIT/RESERVE/RESET/RESET_UNDO → 87;
    /// 3. RESET or RESET_UNDO with any other flag → 87;
    /// 4. LARGE_PAGES without both RESERVE and COMMIT, or with PHYSICAL/WRITE_WATCH → 87;
    /// 5. WRITE_WATCH without RESERVE → 87;
    /// 6. PHYSICAL without RESERVE, with flags other than RESERVE/TOP_DOWN, or protect ≠
    ///    READWRITE → 87;
    /// 7. `protect` invalid for private memory (§2, also for RESET) → [`VmError::InvalidProtection`] (87);
    /// 8. `addr` above `max_application_address` or non-zero below `min_address` → 87;
    /// 9. `size` 0, `addr + size` overflowing or past the user range → 87;
    /// 10. LARGE_PAGES without the privilege ([`crate::SpaceConfig::large_pages_allowed`]) →
    ///     [`VmError::PrivilegeNotHeld`] (1314); address or size not 2 MiB multiples, or
    ///     protect not exactly READWRITE / EXECUTE_READWRITE → 87 (host-abi §9);
    /// 11. PHYSICAL (AWE) is not supported → 87.
    ///
    /// Then, by operation:
    ///
    /// * **reserve** (RESERVE, or COMMIT with `addr` 0): base = `addr` rounded down to 64 KiB,
    ///   end = `addr + size` rounded up to 4 KiB, or, with `addr` 0, the lowest (TOP_DOWN:
    ///   highest) free 64 KiB-aligned fit. A page not free (including another allocation's
    ///   unusable 64 KiB tail) → [`VmError::ConflictingAddresses`] (487); no room →
    ///   [`VmError::NoMemory`] (8). With COMMIT every page is committed too.
    /// * **commit** (COMMIT with `addr` ≠ 0): pages touching `[addr, addr+size)` must lie in one
    ///   allocation, else 487 (also for host-owned allocations); image allocations →
    ///   [`VmError::AlreadyCommitted`] (5); large-page allocations → 87. Committed pages get
    ///   `protect` and keep their contents; new ones read as zero on first touch.
    /// * **reset / reset-undo**: pages touching the range must lie in one allocation, else 487;
    ///   large-page allocations → 87. Contents are *kept* (a conforming choice, §3.4: this kernel
    ///   has no page file, so discarding would save nothing), so RESET_UNDO always succeeds.
    ///
    /// Committing checks the commit charge at `level` ([`VmError::CommitmentLimit`], 1455) before
    /// reserving frames and table pages ([`VmError::NoMemory`], 8). Re-committing committed
    /// pages charges nothing. A failed call changes nothing.
    ///
    /// Cost: O(log n) in the number of allocations, plus O(pages committed) entry writes, plus
    /// one walk per 2 MiB of the range; a pure reservation touches no page-table memory at all.
    pub fn virtual_alloc<M: PhysMemory, T: Tlb>(
        &mut self,
        cx: &mut VmContext<'_, M, T>,
        addr: u64,
        size: u64,
        alloc_type: u32,
        protect: u32,
        level: CriticalLevel,
    ) -> Result<u64, VmError> {
        let req = self.validate_alloc(addr, size, alloc_type, protect)?;
        let ty = req.ty;
        if ty & (MEM_RESET | MEM_RESET_UNDO) != 0 {
            return self.reset(&req);
        }
        if ty & MEM_RESERVE != 0 || addr == 0 {
            return self.reserve(cx, &req, level);
        }
        self.commit(cx, &req, level)
    }

    fn validate_alloc(&self, addr: u64, size: u64, ty: u32, protect: u32) -> Result<Request, VmError> {
        use VmError::InvalidParameter as Inval;
        if ty & !VALID_TYPES != 0 {
            return Err(Inval);
        }
        if ty & (MEM_COMMIT | MEM_RESERVE | MEM_RESET | MEM_RESET_UNDO) == 0 {
            return Err(Inval);
        }
        let reset = ty & (MEM_RESET | MEM_RESET_UNDO);
        if reset != 0 && ty != MEM_RESET && ty != MEM_RESET_UNDO {
            return Err(Inval);
        }
        let large = ty & MEM_LARGE_PAGES != 0;
        if large
            && (ty & (MEM_RESERVE | MEM_COMMIT) != (MEM_RESERVE | MEM_COMMIT)
                || ty & (MEM_PHYSICAL | MEM_WRITE_WATCH) != 0)
        {
            return Err(Inval);
        }
        if ty & MEM_WRITE_WATCH != 0 && ty & MEM_RESERVE == 0 {
            return Err(Inval);
        }
        let physical = ty & MEM_PHYSICAL != 0;
        if physical
            && (ty & MEM_RESERVE == 0
                || ty & !(MEM_RESERVE | MEM_TOP_DOWN | MEM_PHYSICAL) != 0
                || protect != PAGE_READWRITE)
        {
            return Err(Inval);
        }
        let prot = PageProtection::parse_private(protect)?;
        let cfg = &self.config;
        if addr > cfg.max_application_address() || (addr != 0 && addr < cfg.min_address) {
            return Err(Inval);
        }
        if size == 0 {
            return Err(Inval);
        }
        match addr.checked_add(size) {
            Some(end) if end <= cfg.max_address_end => {}
            _ => return Err(Inval),
        }
        if large {
            if !cfg.large_pages_allowed {
                return Err(VmError::PrivilegeNotHeld);
            }
            let rw = matches!(protect, PAGE_READWRITE | PAGE_EXECUTE_READWRITE);
            if !addr.is_multiple_of(LARGE_PAGE_SIZE) || !size.is_multiple_of(LARGE_PAGE_SIZE) || !rw {
                return Err(Inval);
            }
        }
        if physical {
            return Err(Inval);
        }
        Ok(Request { addr, size, ty, prot })
    }

    /// The one allocation holding all of `[start, end)`, for commit/protect/reset, with the
    /// slot of its record (to change it without a second lookup).
    pub(crate) fn single_allocation(&self, start: u64, end: u64) -> Result<(Slot, Allocation), VmError> {
        match self.record_at(start) {
            Some((slot, a)) if end <= a.end() && a.kind != AllocationKind::HostOwned => Ok((slot, a)),
            _ => Err(VmError::ConflictingAddresses),
        }
    }

    /// [`allocation_at`](Self::allocation_at) with the slot of the record.
    #[inline]
    pub(crate) fn record_at(&self, addr: u64) -> Option<(Slot, Allocation)> {
        let (_, slot) = self.allocations.floor_slot(addr)?;
        let a = self.allocations.slot(slot);
        (addr < a.end()).then_some((slot, *a))
    }

    fn reset(&self, req: &Request) -> Result<u64, VmError> {
        let start = req.addr & !(PAGE_SIZE - 1);
        let end = round_up(req.addr + req.size, PAGE_SIZE);
        let (_, a) = self.single_allocation(start, end)?;
        if a.large {
            return Err(VmError::InvalidParameter);
        }
        // Contents are kept (win32-semantics §3.4): nothing to do.
        Ok(start)
    }

    fn reserve<M: PhysMemory, T: Tlb>(
        &mut self,
        cx: &mut VmContext<'_, M, T>,
        req: &Request,
        level: CriticalLevel,
    ) -> Result<u64, VmError> {
        let large = req.ty & MEM_LARGE_PAGES != 0;
        let (base, size) = if req.addr == 0 {
            let size = round_up(req.size, PAGE_SIZE);
            (self.place(size, req.ty & MEM_TOP_DOWN != 0, large)?, size)
        } else {
            let base = req.addr & !(ALLOCATION_GRANULARITY - 1);
            let end = round_up(req.addr + req.size, PAGE_SIZE);
            let blocks = (round_up(end, ALLOCATION_GRANULARITY) - base) / ALLOCATION_GRANULARITY;
            match self.gaps.floor(base / ALLOCATION_GRANULARITY) {
                Some((s, l)) if base / ALLOCATION_GRANULARITY + blocks <= s + l => {}
                _ => return Err(VmError::ConflictingAddresses),
            }
            (base, end - base)
        };
        if self.allocations.len() >= self.config.max_allocations {
            return Err(VmError::NoMemory);
        }
        let cache = req.prot.cache;
        let plan = if large {
            Some(self.prepare_large(cx, base, base + size, level)?)
        } else if req.ty & MEM_COMMIT != 0 {
            Some(self.prepare_commit_new(cx, base, base + size, level)?)
        } else {
            None
        };
        // Perform: nothing below can fail.
        let mut a = Allocation {
            base,
            size,
            allocation_protect: req.prot.to_win32(),
            kind: AllocationKind::Private,
            write_watch: req.ty & MEM_WRITE_WATCH != 0,
            large,
            cache,
            committed_pages: plan.as_ref().map_or(0, |p| p.new_pages),
            uniform: (plan.is_some() && !large && !req.prot.guard).then_some(req.prot.base),
            lazy_run: None,
            committed_extent: super::CommittedExtent::EMPTY,
        };
        if let Some(plan) = plan {
            let (prot, guard) = (req.prot.base, req.prot.guard);
            if large {
                self.perform_large(cx, base, prot, cache, plan);
            } else {
                // Before the record goes into the map: the commit may give it a lazy run.
                self.perform_commit(cx, &mut a, base, base + size, plan, |_| (prot, guard));
            }
        }
        self.allocations.insert(base, a);
        self.reserved_bytes += a.size;
        self.gaps.take(base / ALLOCATION_GRANULARITY, (a.block_end() - base) / ALLOCATION_GRANULARITY);
        Ok(base)
    }

    /// Finds a 64 KiB-aligned base for `size` bytes (2 MiB aligned for large pages).
    fn place(&self, size: u64, top_down: bool, large: bool) -> Result<u64, VmError> {
        let blocks = round_up(size, ALLOCATION_GRANULARITY) / ALLOCATION_GRANULARITY;
        // A large-page allocation needs a 2 MiB-aligned base: ask for enough slack to align
        // within the gap found (so it is the lowest/highest gap that surely fits).
        let slack = if large { LARGE_PAGE_SIZE / ALLOCATION_GRANULARITY - 1 } else { 0 };
        let need = blocks + slack;
        let found = if top_down { self.gaps.highest_fit(need) } else { self.gaps.lowest_fit(need) };
        let (s, l) = found.ok_or(VmError::NoMemory)?;
        let (gs, ge) = (s * ALLOCATION_GRANULARITY, (s + l) * ALLOCATION_GRANULARITY);
        let base = match (top_down, large) {
            (false, false) => gs,
            (false, true) => round_up(gs, LARGE_PAGE_SIZE),
            (true, false) => (ge - size) & !(ALLOCATION_GRANULARITY - 1),
            (true, true) => (ge - size) & !(LARGE_PAGE_SIZE - 1),
        };
        debug_assert!(base >= gs && round_up(base + size, ALLOCATION_GRANULARITY) <= ge);
        Ok(base)
    }

    fn commit<M: PhysMemory, T: Tlb>(
        &mut self,
        cx: &mut VmContext<'_, M, T>,
        req: &Request,
        level: CriticalLevel,
    ) -> Result<u64, VmError> {
        let start = req.addr & !(PAGE_SIZE - 1);
        let end = round_up(req.addr + req.size, PAGE_SIZE);
        let (slot, mut a) = self.single_allocation(start, end)?;
        match (a.kind, a.large) {
            (AllocationKind::Image, _) => return Err(VmError::AlreadyCommitted),
            (_, true) => return Err(VmError::InvalidParameter),
            _ => {}
        }
        let plan = self.prepare_commit(cx, start, end, level, &a)?;
        let (prot, guard): (BaseProtection, bool) = (req.prot.base, req.prot.guard);
        // NOCACHE/WRITECOMBINE are fixed per allocation (win32-semantics §2): the commit uses its mode.
        self.note_committed(slot, plan.new_pages as i64);
        self.perform_commit(cx, &mut a, start, end, plan, |_| (prot, guard));
        self.note_protection(slot, &a, start, end, prot, guard);
        Ok(start)
    }
}
