//! Page faults and system-service accesses to guest memory (win32-semantics §8, host-abi §8–9).

use x86_64::PhysAddr;
use x86_64::structures::paging::PhysFrame;

use super::{AddressSpace, Allocation, VmContext};
use crate::paging::pte::{DIRTY, Pte};
use crate::paging::table;
use crate::paging::tlb::Tlb;
use crate::protection::{BaseProtection, CacheMode};
use crate::{PhysMemory, VmError};
use crate::PAGE_SIZE;

/// The most pages a first touch maps beyond its own ([`AddressSpace::fault_around`]): with the
/// touched page, 64 KiB, one allocation granule.
pub const FAULT_AROUND_MAX: u64 = 15;

/// The kind of a memory access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// A data read (`ExceptionInformation[0]` = 0).
    Read,
    /// A data write (1).
    Write,
    /// An instruction fetch (8).
    Execute,
}

impl Access {
    /// Returns the Windows exception-information code: 0 read, 1 write, 8 execute.
    pub const fn code(self) -> u64 {
        match self {
            Access::Read => 0,
            Access::Write => 1,
            Access::Execute => 8,
        }
    }

    /// Returns `true` if `prot` allows this access.
    pub const fn allowed_by(self, prot: BaseProtection) -> bool {
        match self {
            Access::Read => prot.can_read(),
            Access::Write => prot.can_write(),
            Access::Execute => prot.can_execute(),
        }
    }
}

/// What [`AddressSpace::handle_fault`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultOutcome {
    /// The page is now mapped (demand-zero, a kept frame, or a stale TLB entry): retry.
    Resolved,
    /// A guard page was hit: its guard is now clear. Deliver STATUS_GUARD_PAGE_VIOLATION
    /// (0x80000001) with `access` and `address`; retrying will then resolve.
    GuardPage {
        /// The faulting access.
        access: Access,
        /// The faulting address.
        address: u64,
    },
    /// Free, reserved or `PAGE_NOACCESS` memory, or an access the protection forbids: deliver
    /// STATUS_ACCESS_VIOLATION (0xC0000005).
    AccessViolation {
        /// The faulting access.
        access: Access,
        /// The faulting address.
        address: u64,
    },
}

/// A kernel write to guest memory checked by [`AddressSpace::check_user_write`]: where its bytes
/// go, and whether the page still needs its write-watch mark. Valid while the space is not
/// changed in between (the caller holds it under one lock), except by an operation on other
/// pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a checked write does nothing until completed"]
pub struct CheckedUserWrite {
    page: u64,
    pa: PhysAddr,
    len: u64,
    /// The page's entry has no D bit yet (the write sets it); never for a large page.
    mark: bool,
}

impl CheckedUserWrite {
    /// The 4 KiB page the write lands in.
    pub fn page(&self) -> u64 {
        self.page
    }

    /// The same check for `len` bytes at `addr` if they lie in this write's page (pages are
    /// checked whole, so the verdict is the same): no lookup, no walk. `None` otherwise.
    pub fn in_same_page(&self, addr: u64, len: u64) -> Option<CheckedUserWrite> {
        let last = addr.checked_add(len)?.checked_sub(1)?;
        let page_pa = self.pa.as_u64() & !(PAGE_SIZE - 1);
        (len > 0 && addr & !(PAGE_SIZE - 1) == self.page && last & !(PAGE_SIZE - 1) == self.page)
            .then(|| CheckedUserWrite { page: self.page, pa: PhysAddr::new(page_pa | (addr & (PAGE_SIZE - 1))), len, mark: self.mark })
    }
}

/// What a fault calls for (`AddressSpace::decide_fault`).
enum FaultAction {
    /// An access violation.
    Refuse,
    /// The page is mapped and allows the access: a stale TLB entry (invalidate, retry).
    Spurious(u64),
    /// A guard page: disarm it (its entry and where it is, allocation) and report the guard.
    DisarmGuard(u64, Pte, EntryAt, Allocation),
    /// A committed, accessible page without a frame: give it one (the entry as read — zero
    /// for a page of the lazy run —, where it is, the page's state, allocation).
    Populate(u64, Pte, EntryAt, Pte, Allocation),
}

/// The physical address of a page's leaf entry, as the walk that read it found it (`None`: no
/// page table, which a committed page always has). A shared fault's compare-and-exchange goes
/// there, so the page is walked once.
type EntryAt = Option<u64>;

impl AddressSpace {
    /// Checks a kernel write of `len` bytes at `addr` for the common case of a system service's
    /// result: the bytes lie in one page, committed, writable, not a guard page, and with a frame
    /// (or in a large page). Then [`write_user`](Self::write_user) could not fail, report a guard
    /// page or need a frame, and [`complete_user_write`](Self::complete_user_write) does the same
    /// write with no second lookup or walk. Returns `None` otherwise, including for `len` 0
    /// (the caller takes the general path, which reports what is wrong). Changes nothing.
    ///
    /// Cost: one allocation lookup and one table walk.
    pub fn check_user_write(&self, mem: &impl PhysMemory, addr: u64, len: u64) -> Option<CheckedUserWrite> {
        let page = addr & !(PAGE_SIZE - 1);
        let last = addr.checked_add(len)?.checked_sub(1)?;
        if len == 0 || last >= self.config.max_address_end || last & !(PAGE_SIZE - 1) != page {
            return None;
        }
        let a = self.allocation_at(page)?;
        if let Some(prot) = a.large_protection() {
            if !prot.can_write() {
                return None;
            }
            let (pa, _) = table::translate(mem, self.root_pa(), addr)?;
            return Some(CheckedUserWrite { page, pa: PhysAddr::new(pa), len, mark: false });
        }
        let e = self.entry(mem, a, page);
        if !e.is_committed() || e.guard() || !Access::Write.allowed_by(e.prot()) {
            return None;
        }
        let frame = e.frame()?;
        Some(CheckedUserWrite { page, pa: PhysAddr::new(frame | (addr & (PAGE_SIZE - 1))), len, mark: !e.dirty() })
    }

    /// Does a write checked by [`check_user_write`](Self::check_user_write): sets the page's
    /// write-watch mark if it has none, then copies `data` (at most the checked length).
    ///
    /// # Panics
    /// If `data` is longer than the checked write (a caller bug).
    pub fn complete_user_write<M: PhysMemory, T: Tlb>(&mut self, cx: &mut VmContext<'_, M, T>, w: CheckedUserWrite, data: &[u8]) {
        assert!(data.len() as u64 <= w.len, "a checked write of {} bytes given {}", w.len, data.len());
        if w.mark {
            let mut batch = self.batch();
            cx.tables(self.root_pa()).update_range(w.page, w.page + PAGE_SIZE, None, &mut batch, |_, _, old| Pte(old.0 | DIRTY));
            self.complete(&mut batch, (0, 0), cx);
        }
        cx.mem.write_bytes(w.pa, data);
    }

    /// Handles a page fault at `addr` caused by `access` from guest code.
    ///
    /// In the Windows priority order (win32-semantics §8): a guard page first (clear the guard,
    /// report [`FaultOutcome::GuardPage`]); then the protection (free, reserved, `PAGE_NOACCESS`
    /// or a forbidden access → [`FaultOutcome::AccessViolation`]); otherwise the page is mapped:
    /// with its kept frame, or a new frame taken from the reservation made at commit time
    /// (cannot fail) and zeroed (counted in `frames_zeroed`). A present page whose access is
    /// allowed was a stale TLB entry: it is invalidated and the fault resolved.
    ///
    /// The write-watch mark is the hardware D bit: the retried write sets it, a faulting write
    /// does not (host-abi §9).
    ///
    /// Cost: O(log n) plus one table walk and at most one frame zeroed.
    pub fn handle_fault<M: PhysMemory, T: Tlb>(
        &mut self,
        cx: &mut VmContext<'_, M, T>,
        addr: u64,
        access: Access,
    ) -> FaultOutcome {
        self.handle_fault_with_zeroed(cx, addr, access, &mut None)
    }

    /// As [`handle_fault`](Self::handle_fault), except that a demand-zero page takes the frame
    /// in `zeroed`, if it holds one, instead of taking a reserved frame and zeroing it here.
    ///
    /// This is how a kernel zeroes without the space lock (smp-and-dispatch §4(d)): it takes a
    /// frame from the allocator's unreserved pool, zeroes it with no lock held, and offers it to
    /// the next fault. The frame must be allocated, zeroed, and nobody else's. When it is used,
    /// one frame of the space's demand-zero reservation goes back to the allocator
    /// (`unreserve`), so the counts end as with `handle_fault` (one frame more in use, one
    /// reserved frame fewer); `zeroed` is then `None`, and is left alone otherwise. The page's
    /// entry is read under the lock as always, so a decommit or protect that ran while the frame
    /// was being zeroed is seen: no recheck is needed, the frame is simply not used.
    pub fn handle_fault_with_zeroed<M: PhysMemory, T: Tlb>(
        &mut self,
        cx: &mut VmContext<'_, M, T>,
        addr: u64,
        access: Access,
        zeroed: &mut Option<PhysFrame>,
    ) -> FaultOutcome {
        match self.decide_fault(cx.mem, addr, access) {
            FaultAction::Refuse => FaultOutcome::AccessViolation { access, address: addr },
            FaultAction::Spurious(page) => Self::drop_stale(cx, page),
            FaultAction::DisarmGuard(page, e, _, a) => {
                self.set_pte(cx, page, e.with_protection(e.prot(), false, a.cache), Self::in_run(&a, page));
                FaultOutcome::GuardPage { access, address: addr }
            }
            FaultAction::Populate(page, _, _, e, a) => {
                // Accessible, not guarded, not present: no frame yet (demand-zero).
                self.populate(cx, page, e, &a, zeroed);
                cx.counters.faults_resolved += 1;
                FaultOutcome::Resolved
            }
        }
    }

    /// As [`handle_fault_with_zeroed`](Self::handle_fault_with_zeroed), with the space lock
    /// held **shared** (`&self`): faults on one space run on several CPUs at once (Linux's
    /// `mmap_read_lock` fault path). Every call that changes the allocation map or the tables
    /// holds the lock exclusively, so only other shared faults run meanwhile, and they only
    /// ever make a non-present entry present (demand-zero) or disarm a guard: the decision is
    /// made as in `handle_fault_with_zeroed` and its one entry change is a compare-and-exchange
    /// of the entry it read. If another fault changed the entry first, nothing is done and the
    /// fault is `Resolved` (the access is retried and decides anew): of several CPUs touching one
    /// guard page, exactly one gets [`FaultOutcome::GuardPage`]; of several first touches of
    /// one page, exactly one frame is used.
    ///
    /// A demand-zero page takes the caller's `zeroed` frame (allocated, zeroed, nobody else's):
    /// when it is used, `zeroed` becomes `None` and one frame of the space's demand-zero
    /// reservation goes back through `cx.frames.unreserve`. Without one, the answer is `None`:
    /// the caller brings a zeroed frame and calls again (or handles the fault exclusively). The
    /// tables exist (commit creates them), so no table is created or freed and no TLB round is
    /// needed: a non-present entry is cached nowhere.
    pub fn handle_fault_shared<M: PhysMemory, T: Tlb>(
        &self,
        cx: &mut VmContext<'_, M, T>,
        addr: u64,
        access: Access,
        zeroed: &mut Option<PhysFrame>,
    ) -> Option<FaultOutcome> {
        Some(match self.decide_fault(cx.mem, addr, access) {
            FaultAction::Refuse => FaultOutcome::AccessViolation { access, address: addr },
            FaultAction::Spurious(page) => Self::drop_stale(cx, page),
            FaultAction::DisarmGuard(_, e, at, a) => {
                let new = e.with_protection(e.prot(), false, a.cache);
                if at.is_some_and(|at| Self::replace_entry(cx, at, e, new)) {
                    FaultOutcome::GuardPage { access, address: addr }
                } else {
                    FaultOutcome::Resolved
                }
            }
            FaultAction::Populate(_, raw, at, e, a) => {
                let frame = (*zeroed)?;
                if at.is_some_and(|at| self.install_zeroed(cx, at, raw, e, a.cache, frame)) {
                    *zeroed = None;
                    cx.counters.faults_resolved += 1;
                }
                FaultOutcome::Resolved
            }
        })
    }

    /// Fault-around for sequential first touches: how many pages after `page` (just given a
    /// frame by a first touch) are worth mapping now, before they are touched.
    ///
    /// A runtime fills the memory it commits in address order (a GC's allocation pointer, a
    /// heap's growth, a loader's copy), and each first touch is an exception, a lock pass and
    /// a return: under emulation several times the cost of zeroing the page. So a first touch
    /// that continues a run of present pages maps as many pages ahead as the run has behind it,
    /// up to [`FAULT_AROUND_MAX`]: the window doubles (1, 2, 4, 8, 15 pages ahead) while the
    /// touches stay sequential, and an isolated touch (its page's predecessor not present)
    /// maps only its own page, as before. Linux's read-ahead grows its window the same way;
    /// its anonymous multi-size THP maps 64 KiB per fault without asking.
    ///
    /// Only what a first touch would map anyway is mapped: pages of the same allocation and
    /// the same page table (no table is created), committed, readable, not a guard page, not
    /// present ([`prefault_shared`](Self::prefault_shared) checks each again). Nothing a guest
    /// can see changes: the frames are those its commit charge already holds (no overcommit),
    /// the pages read as zero, and their write-watch mark is unset until written.
    /// `GetMemoryLoad` counts commit, not frames.
    ///
    /// Reads only. Cost: one walk and at most `FAULT_AROUND_MAX` entry reads.
    pub fn fault_around(&self, mem: &impl PhysMemory, page: u64) -> u64 {
        // `allocation_at` answers only for an allocation holding `page`.
        let Some(a) = self.allocation_at(page) else { return 0 };
        if a.large {
            return 0;
        }
        let Some(at) = table::pte_address(mem, self.root_pa(), page) else { return 0 };
        let index = (page / PAGE_SIZE) % 512;
        let behind_limit = index.min((page - a.base) / PAGE_SIZE).min(FAULT_AROUND_MAX);
        let mut behind = 0;
        while behind < behind_limit && Pte(mem.read_u64(PhysAddr::new(at - 8 * (behind + 1)))).is_present() {
            behind += 1;
        }
        let ahead_limit = (511 - index).min((a.end() - page) / PAGE_SIZE - 1);
        behind.min(ahead_limit)
    }

    /// Maps `frames` (each allocated, zeroed and nobody else's) at the pages from `first` on,
    /// in order, while the pages are first touches in waiting: of one allocation and one page
    /// table, committed, readable, not a guard page and without a frame. Stops at the first page
    /// that is not; a frame used becomes `None`, and one frame of the demand-zero reservation
    /// goes back through `cx.frames.unreserve` for it (as for a first touch with a kept frame).
    /// Returns how many were mapped. The fault-around of [`fault_around`](Self::fault_around),
    /// with the space lock held shared (`&self`) as in
    /// [`handle_fault_shared`](Self::handle_fault_shared): every entry change is a
    /// compare-and-exchange of the entry read, so a page another fault maps meanwhile is left
    /// alone (and the run stops there). Counts `frames_zeroed` and `pte_writes`, not
    /// `faults_resolved` (no fault was taken for these pages).
    pub fn prefault_shared<M: PhysMemory, T: Tlb>(&self, cx: &mut VmContext<'_, M, T>, first: u64, frames: &mut [Option<PhysFrame>]) -> usize {
        // `allocation_at` answers only for an allocation holding `first`.
        let Some(a) = self.allocation_at(first).copied() else { return 0 };
        if a.large || !first.is_multiple_of(PAGE_SIZE) {
            return 0;
        }
        let Some(at) = table::pte_address(cx.mem, self.root_pa(), first) else { return 0 };
        let index = (first / PAGE_SIZE) % 512;
        let n = (frames.len() as u64).min(512 - index).min((a.end() - first) / PAGE_SIZE);
        let mut mapped = 0;
        for (i, slot) in frames.iter_mut().take(n as usize).enumerate() {
            let Some(frame) = *slot else { break };
            let page = first + i as u64 * PAGE_SIZE;
            let entry = at + 8 * i as u64;
            let raw = Pte(cx.mem.read_u64(PhysAddr::new(entry)));
            let e = if raw.0 == 0 { Self::lazy_entry(&a, page).unwrap_or(raw) } else { raw };
            if !e.is_committed() || e.guard() || e.frame().is_some() || !Access::Read.allowed_by(e.prot()) {
                break;
            }
            if !self.install_zeroed(cx, entry, raw, e, a.cache, frame) {
                break;
            }
            *slot = None;
            mapped += 1;
        }
        mapped
    }

    /// Gives a first touch in waiting — the committed page whose entry at `at` was read as
    /// `raw` (zero for a page of the lazy run), state `e`, no frame — the zeroed `frame`, with
    /// the space lock held shared: one compare-and-exchange of the entry it read, so nothing is
    /// done if another fault changed it first. When it is installed, one frame of the
    /// demand-zero reservation goes back (`unreserve`: the page's frame is `frame`). A page of
    /// the lazy run is counted in its table already, as any committed page is, so no count of
    /// tables changes. Returns whether it was installed.
    fn install_zeroed<M: PhysMemory, T: Tlb>(&self, cx: &mut VmContext<'_, M, T>, at: u64, raw: Pte, e: Pte, cache: CacheMode, frame: PhysFrame) -> bool {
        debug_assert!(e.is_committed() && e.frame().is_none());
        let new = Pte::committed(e.prot(), e.guard(), Some(frame.start_address().as_u64()), e.dirty(), cache);
        if !Self::replace_entry(cx, at, raw, new) {
            return false;
        }
        let promise = self.demand_zero.take_one().expect("a committed page without a frame has a reserved frame");
        cx.frames.unreserve(promise);
        cx.counters.frames_zeroed += 1;
        true
    }

    /// A fault on a page that allows the access: this CPU's TLB held a stale, more restrictive
    /// entry; it is invalidated and the access retried.
    fn drop_stale<M: PhysMemory, T: Tlb>(cx: &mut VmContext<'_, M, T>, page: u64) -> FaultOutcome {
        cx.tlb.invalidate_page(x86_64::VirtAddr::new_truncate(page));
        cx.counters.invlpg += 1;
        FaultOutcome::Resolved
    }

    /// Replaces the leaf entry at `at` by `new` if it still is `old` (one compare-and-exchange,
    /// for the shared fault path). Returns whether it did.
    fn replace_entry<M: PhysMemory, T: Tlb>(cx: &mut VmContext<'_, M, T>, at: u64, old: Pte, new: Pte) -> bool {
        let replaced = cx.mem.compare_exchange_u64(PhysAddr::new(at), old.0, new.0).is_ok();
        if replaced {
            cx.counters.pte_writes += 1;
        }
        replaced
    }

    /// What a fault at `addr` by `access` calls for, in the Windows priority order (see
    /// [`handle_fault`](Self::handle_fault)). Reads only.
    fn decide_fault(&self, mem: &impl PhysMemory, addr: u64, access: Access) -> FaultAction {
        let Some(a) = self.allocation_at(addr).copied() else {
            return FaultAction::Refuse;
        };
        let page = addr & !(PAGE_SIZE - 1);
        if let Some(prot) = a.large_protection() {
            return if access.allowed_by(prot) { FaultAction::Spurious(page) } else { FaultAction::Refuse };
        }
        // The entry as it is in the table (what a shared fault's compare-and-exchange expects)
        // and the page's state (a zero entry in the allocation's lazy run is committed).
        let at = table::pte_address(mem, self.root_pa(), page);
        let raw = at.map_or(Pte::RESERVED, |at| Pte(mem.read_u64(PhysAddr::new(at))));
        let e = if raw.0 == 0 { Self::lazy_entry(&a, page).unwrap_or(raw) } else { raw };
        if !e.is_committed() {
            return FaultAction::Refuse;
        }
        if e.guard() {
            // A guard page is never in a lazy run: its state is its entry.
            return FaultAction::DisarmGuard(page, e, at, a);
        }
        if !access.allowed_by(e.prot()) {
            return FaultAction::Refuse;
        }
        if e.is_present() {
            // Spurious: a stale (more restrictive) TLB entry.
            return FaultAction::Spurious(page);
        }
        FaultAction::Populate(page, raw, at, e, a)
    }

    /// Returns whether a fault at `addr` by `access` would map a new zeroed frame if it were
    /// handled now (a committed, accessible page without a frame, not a guard page). Reads only;
    /// the answer may change as soon as the space lock is dropped, which
    /// [`handle_fault_with_zeroed`](Self::handle_fault_with_zeroed) copes with.
    pub fn fault_needs_frame(&self, mem: &impl PhysMemory, addr: u64, access: Access) -> bool {
        matches!(self.decide_fault(mem, addr, access), FaultAction::Populate(..))
    }

    /// Gives the committed page at `page` (entry `e`, without a frame) a zeroed frame — the
    /// caller's `zeroed` one (the reservation then gives one frame back), else one from the
    /// commit-time reservation, zeroed here — and writes its entry. Returns the new entry.
    fn populate<M: PhysMemory, T: Tlb>(&mut self, cx: &mut VmContext<'_, M, T>, page: u64, e: Pte, a: &Allocation, zeroed: &mut Option<PhysFrame>) -> Pte {
        debug_assert!(e.frame().is_none());
        let mut promise = self.demand_zero.split(1);
        let frame = match zeroed.take() {
            Some(frame) => {
                cx.frames.unreserve(promise);
                frame
            }
            None => {
                let frame = cx.frames.alloc_reserved(&mut promise);
                cx.mem.zero_frame(frame);
                frame
            }
        };
        cx.counters.frames_zeroed += 1;
        let new = Pte::committed(e.prot(), e.guard(), Some(frame.start_address().as_u64()), e.dirty(), a.cache);
        self.set_pte(cx, page, new, Self::in_run(a, page));
        new
    }

    /// Rewrites the entry of one committed page (its table exists) of an allocation that is
    /// in its allocation's lazy run or not (such a page is already counted in its table).
    fn set_pte<M: PhysMemory, T: Tlb>(&mut self, cx: &mut VmContext<'_, M, T>, page: u64, new: Pte, lazy: bool) {
        let mut batch = self.batch();
        cx.tables(self.root_pa()).update_lazy(page, page + PAGE_SIZE, None, &mut batch, (lazy, lazy), |_, _, _| new);
        self.complete(&mut batch, (0, 0), cx);
    }

    /// Checks that the guest range `[addr, addr+len)` is committed memory that allows reads
    /// (and writes if `write`), as a system service must before touching a guest buffer.
    ///
    /// Pages are checked in ascending order; the first problem decides:
    /// a guard page → its guard is cleared and [`VmError::GuardPage`] (0x80000001) returned
    /// (host-abi §9: the retried call succeeds); a page that is free, reserved, `PAGE_NOACCESS`
    /// or not writable for a write, or a range beyond user space → [`VmError::NoAccess`] (998).
    /// `len` 0 always succeeds. Nothing else changes.
    ///
    /// Cost: O(log n) plus one walk per page.
    pub fn check_user_access<M: PhysMemory, T: Tlb>(
        &mut self,
        cx: &mut VmContext<'_, M, T>,
        addr: u64,
        len: u64,
        write: bool,
    ) -> Result<(), VmError> {
        if len == 0 {
            return Ok(());
        }
        let end = match addr.checked_add(len) {
            Some(e) if e <= self.config.max_address_end => e,
            _ => return Err(VmError::NoAccess),
        };
        let access = if write { Access::Write } else { Access::Read };
        let mut page = addr & !(PAGE_SIZE - 1);
        while page < end {
            let Some(a) = self.allocation_at(page).copied() else {
                return Err(VmError::NoAccess);
            };
            if let Some(prot) = a.large_protection() {
                if write && !prot.can_write() {
                    return Err(VmError::NoAccess);
                }
                page += PAGE_SIZE;
                continue;
            }
            if let Some(prot) = a.uniform {
                // Every page of the allocation committed with `prot`, no guard: one check for all.
                if !access.allowed_by(prot) {
                    return Err(VmError::NoAccess);
                }
                page = a.end();
                continue;
            }
            let e = self.entry(cx.mem, &a, page);
            if !e.is_committed() {
                return Err(VmError::NoAccess);
            }
            if e.guard() {
                self.set_pte(cx, page, e.with_protection(e.prot(), false, a.cache), Self::in_run(&a, page));
                return Err(VmError::GuardPage);
            }
            if !access.allowed_by(e.prot()) {
                return Err(VmError::NoAccess);
            }
            page += PAGE_SIZE;
        }
        Ok(())
    }

    /// Copies guest memory at `addr` into `buf` as a system service would (after
    /// [`check_user_access`](Self::check_user_access) semantics: errors 998 / 0x80000001).
    /// Untouched committed pages read as zero (they get a zeroed frame).
    ///
    /// # Errors
    ///
    /// As [`check_user_access`](Self::check_user_access); nothing is read then.
    ///
    /// Cost: O(len) plus one walk per page.
    pub fn read_user<M: PhysMemory, T: Tlb>(
        &mut self,
        cx: &mut VmContext<'_, M, T>,
        addr: u64,
        buf: &mut [u8],
    ) -> Result<(), VmError> {
        self.check_user_access(cx, addr, buf.len() as u64, false)?;
        let mut done = 0usize;
        while done < buf.len() {
            let va = addr + done as u64;
            let n = ((PAGE_SIZE - (va & (PAGE_SIZE - 1))) as usize).min(buf.len() - done);
            let pa = self.frame_for_kernel(cx, va, false);
            cx.mem.read_bytes(pa, &mut buf[done..done + n]);
            done += n;
        }
        Ok(())
    }

    /// Copies guest memory at `addr` into `buf` for the kernel's own inspection (an instruction
    /// decoder, a report), changing nothing: unlike [`read_user`](Self::read_user) a guard page is
    /// refused with its guard left armed, and a committed page without a frame reads as zero
    /// without being given one.
    ///
    /// # Errors
    ///
    /// [`VmError::NoAccess`] if any byte is beyond user space, free, reserved, a guard page, or
    /// not readable; nothing is read then.
    ///
    /// Cost: O(len) plus one walk per page.
    pub fn peek_user(&self, mem: &impl PhysMemory, addr: u64, buf: &mut [u8]) -> Result<(), VmError> {
        let end = match addr.checked_add(buf.len() as u64) {
            Some(e) if e <= self.config.max_address_end => e,
            _ => return Err(VmError::NoAccess),
        };
        let mut page = addr & !(PAGE_SIZE - 1);
        while page < end {
            let a = self.allocation_at(page).ok_or(VmError::NoAccess)?;
            if !a.large {
                let e = self.entry(mem, a, page);
                if !e.is_committed() || e.guard() || !Access::Read.allowed_by(e.prot()) {
                    return Err(VmError::NoAccess);
                }
            }
            page += PAGE_SIZE;
        }
        let mut done = 0usize;
        while done < buf.len() {
            let va = addr + done as u64;
            let n = ((PAGE_SIZE - (va & (PAGE_SIZE - 1))) as usize).min(buf.len() - done);
            let large = self.allocation_at(va).is_some_and(|a| a.large);
            let frame = if large {
                table::translate(mem, self.root_pa(), va).map(|(pa, _)| pa)
            } else {
                table::read_pte(mem, self.root_pa(), va & !(PAGE_SIZE - 1)).frame().map(|f| f | (va & (PAGE_SIZE - 1)))
            };
            match frame {
                Some(pa) => mem.read_bytes(PhysAddr::new(pa), &mut buf[done..done + n]),
                None => buf[done..done + n].fill(0),
            }
            done += n;
        }
        Ok(())
    }

    /// Copies `data` into guest memory at `addr` as a system service would: checks like
    /// [`check_user_access`](Self::check_user_access) with `write`, then writes through the
    /// physical frames and marks the pages written (kernel-side writes count for write watch,
    /// win32-semantics §7).
    ///
    /// # Errors
    ///
    /// As [`check_user_access`](Self::check_user_access); nothing is written then.
    ///
    /// Cost: O(len) plus one walk per page.
    pub fn write_user<M: PhysMemory, T: Tlb>(
        &mut self,
        cx: &mut VmContext<'_, M, T>,
        addr: u64,
        data: &[u8],
    ) -> Result<(), VmError> {
        self.check_user_access(cx, addr, data.len() as u64, true)?;
        self.copy_in(cx, addr, data, true);
        Ok(())
    }

    /// Writes `data` at `addr` through the frames, faulting pages in; `mark` sets write-watch
    /// marks. The caller has checked that every page is committed.
    pub(crate) fn copy_in<M: PhysMemory, T: Tlb>(&mut self, cx: &mut VmContext<'_, M, T>, addr: u64, data: &[u8], mark: bool) {
        let mut done = 0usize;
        while done < data.len() {
            let va = addr + done as u64;
            let n = ((PAGE_SIZE - (va & (PAGE_SIZE - 1))) as usize).min(data.len() - done);
            let pa = self.frame_for_kernel(cx, va, mark);
            cx.mem.write_bytes(pa, &data[done..done + n]);
            done += n;
        }
    }

    /// Returns the physical address of committed `va`, giving its page a frame if it has none,
    /// and setting its D bit if `mark`.
    fn frame_for_kernel<M: PhysMemory, T: Tlb>(&mut self, cx: &mut VmContext<'_, M, T>, va: u64, mark: bool) -> PhysAddr {
        let a = self.allocation_at(va).copied().expect("kernel access outside every allocation");
        if a.large {
            let (pa, _) = table::translate(cx.mem, self.root_pa(), va).expect("large page not mapped");
            return PhysAddr::new(pa);
        }
        let page = va & !(PAGE_SIZE - 1);
        let mut e = self.entry(cx.mem, &a, page);
        assert!(e.is_committed(), "kernel access to an uncommitted page");
        if e.frame().is_none() {
            e = self.populate(cx, page, e, &a, &mut None);
            cx.counters.faults_resolved += 1;
        }
        if mark && !e.dirty() {
            self.set_pte(cx, page, Pte(e.0 | DIRTY), Self::in_run(&a, page));
        }
        let frame: PhysFrame = PhysFrame::containing_address(PhysAddr::new(e.frame().expect("frame just given")));
        frame.start_address() + (va & (PAGE_SIZE - 1))
    }
}
