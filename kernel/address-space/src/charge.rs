//! [`CommitCharge`]: the system-wide commit limit, shared by every address space.
//!
//! Committing a page charges one page; decommitting or releasing it gives it back. The charge
//! is checked when memory is committed, never later: together with the frame reservation made
//! at the same time (see [`crate::AddressSpace::virtual_alloc`]) a committed page can always be
//! faulted in.
//!
//! Page-table pages are kernel overhead, not guest commit (host-abi §9), kept inside the
//! kernel's reserve so that the limit stays honest. The kernel gives the charge a *table
//! allowance*: frames of its reserve, outside the limit, set aside for table pages. Tables are
//! paid from the allowance while it lasts, which covers any dense use (a full page table maps
//! 512 pages), so there the limit is exactly what a guest can commit. Tables beyond the
//! allowance (a sparse pattern: one page per 2 MiB needs a table per page) are charged to the
//! limit as the kernel's part, as Windows charges page tables to commit: a commit is checked for
//! its pages *and* the tables it needs, and a freed table gives its charge back. So every frame
//! a guest can make the kernel take is inside the limit plus the allowance, which the kernel
//! sizes from its frames, and a commit never passes the check and then fails for lack of
//! frames. [`committed_pages`](CommitCharge::committed_pages) stays the guests' own pages;
//! [`limit_pages`](CommitCharge::limit_pages) — what a guest is told its limit is — is the limit
//! less the tables charged to it, so `limit - committed` is always what can still be committed.
//!
//! A part of the limit, the *critical reserve*, is kept for critical requests (host-abi §5):
//! [`CriticalLevel::Task`] may not use it, [`CriticalLevel::AppDomain`] may use half of it,
//! [`CriticalLevel::Process`] all of it.

use crate::VmError;

/// How critical a commit request is (`EMemoryCriticalLevel`, host-abi §3 and §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CriticalLevel {
    /// `eTaskCritical` (0): may commit up to `limit - reserve`.
    Task,
    /// `eAppDomainCritical` (1): may commit up to `limit - reserve / 2`.
    AppDomain,
    /// `eProcessCritical` (2): may commit up to `limit`.
    Process,
}

impl CriticalLevel {
    /// Parses the ABI integer; `None` for values above 2 (the ABI answers `E_INVALIDARG`).
    pub const fn from_raw(v: u32) -> Option<Self> {
        match v {
            0 => Some(CriticalLevel::Task),
            1 => Some(CriticalLevel::AppDomain),
            2 => Some(CriticalLevel::Process),
            _ => None,
        }
    }
}

/// The commit charge: how many pages are committed, out of which limit.
///
/// One object for the whole system, passed to every address-space call that commits or frees
/// (the kernel keeps it behind a lock with the frame allocator). Large pages and image pages are
/// charged like ordinary pages (one per 4 KiB). Page-table pages below the roots are charged as
/// the kernel's part (module docs); the roots themselves, one per space, come from the kernel's
/// own reserve outside the limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitCharge {
    limit_pages: u64,
    committed_pages: u64,
    table_pages: u64,
    table_allowance: u64,
    critical_reserve_pages: u64,
}

impl CommitCharge {
    /// Creates a charge with `limit_pages` pages in all, of which the top
    /// `critical_reserve_pages` are kept for critical requests.
    ///
    /// The kernel should choose a limit no larger than the frames it can give to committed
    /// pages (no overcommit, host-abi §9). A reserve larger than the limit is clamped to it.
    pub fn new(limit_pages: u64, critical_reserve_pages: u64) -> Self {
        CommitCharge {
            limit_pages,
            committed_pages: 0,
            table_pages: 0,
            table_allowance: 0,
            critical_reserve_pages: critical_reserve_pages.min(limit_pages),
        }
    }

    /// Sets aside `pages` frames of the kernel's reserve (outside the limit) for page-table pages,
    /// which are charged to the limit only beyond them (module docs). Default: none.
    #[must_use]
    pub fn with_table_allowance(mut self, pages: u64) -> Self {
        self.table_allowance = pages;
        self
    }

    /// Returns the table allowance in pages.
    pub fn table_allowance(&self) -> u64 {
        self.table_allowance
    }

    /// Returns the page-table pages charged to the limit: those beyond the allowance.
    fn tables_over_allowance(&self) -> u64 {
        self.table_pages.saturating_sub(self.table_allowance)
    }

    /// Returns the limit in pages for guest commit: the system limit less the page-table pages
    /// charged to it now (what `query_commit` and `GetMemoryLoad` report).
    pub fn limit_pages(&self) -> u64 {
        self.limit_pages - self.tables_over_allowance()
    }

    /// Returns the system limit in pages (guest commit and page tables together).
    pub fn system_limit_pages(&self) -> u64 {
        self.limit_pages
    }

    /// Returns the pages committed by guests now (page tables excluded).
    pub fn committed_pages(&self) -> u64 {
        self.committed_pages
    }

    /// Returns the page-table pages in use now (inside the allowance or charged to the limit).
    pub fn table_pages(&self) -> u64 {
        self.table_pages
    }

    /// Returns the size of the critical reserve in pages.
    pub fn critical_reserve_pages(&self) -> u64 {
        self.critical_reserve_pages
    }

    /// Returns the highest total charge (guest commit and tables) a request of `level` may reach.
    pub fn cap(&self, level: CriticalLevel) -> u64 {
        match level {
            CriticalLevel::Task => self.limit_pages - self.critical_reserve_pages,
            CriticalLevel::AppDomain => self.limit_pages - self.critical_reserve_pages / 2,
            CriticalLevel::Process => self.limit_pages,
        }
    }

    /// Returns the total charge now: guest commit and the page tables charged to the limit.
    fn total(&self) -> u64 {
        self.committed_pages + self.tables_over_allowance()
    }

    /// Returns how many more pages a request of `level` could commit now (tables it may need
    /// not counted).
    pub fn available(&self, level: CriticalLevel) -> u64 {
        self.cap(level).saturating_sub(self.total())
    }

    /// Checks that `pages` more guest pages and `tables` more page-table pages (those beyond the
    /// allowance) may be charged at `level`, without charging them.
    ///
    /// # Errors
    ///
    /// [`VmError::CommitmentLimit`] when the charge would pass [`cap`](Self::cap)`(level)`.
    pub fn check(&self, pages: u64, tables: u64, level: CriticalLevel) -> Result<(), VmError> {
        let over = self.table_pages.checked_add(tables).map(|t| t.saturating_sub(self.table_allowance));
        match over.and_then(|over| self.committed_pages.checked_add(over)?.checked_add(pages)) {
            Some(total) if total <= self.cap(level) => Ok(()),
            _ => Err(VmError::CommitmentLimit),
        }
    }

    /// Charges `pages` guest pages and `tables` table pages (after a successful
    /// [`check`](Self::check)).
    pub(crate) fn charge(&mut self, pages: u64, tables: u64) {
        self.committed_pages += pages;
        self.table_pages += tables;
    }

    /// Checks and charges `pages` guest pages and `tables` table pages in one step
    /// ([`check`](Self::check), then the charge): nothing changes on error.
    ///
    /// # Errors
    ///
    /// As [`check`](Self::check).
    pub(crate) fn try_charge(&mut self, pages: u64, tables: u64, level: CriticalLevel) -> Result<(), VmError> {
        self.check(pages, tables, level)?;
        self.charge(pages, tables);
        Ok(())
    }

    /// Gives back the charge of `tables` freed table pages.
    ///
    /// # Panics
    ///
    /// If more are given back than are charged (a kernel bug).
    pub(crate) fn uncharge_tables(&mut self, tables: u64) {
        self.table_pages = self
            .table_pages
            .checked_sub(tables)
            .expect("commit charge: more table pages uncharged than charged");
    }

    /// Gives `pages` pages back.
    ///
    /// # Panics
    ///
    /// If more pages are given back than are charged (a kernel bug).
    pub(crate) fn uncharge(&mut self, pages: u64) {
        self.committed_pages = self
            .committed_pages
            .checked_sub(pages)
            .expect("commit charge: more pages uncharged than charged");
    }

    /// Returns the percentage (0–100) of the system limit in use, tables charged to it included
    /// (`GetMemoryLoad`, host-abi §5).
    pub fn load_percent(&self) -> u32 {
        if self.limit_pages == 0 {
            return 100;
        }
        ((self.total().min(self.limit_pages) * 100) / self.limit_pages) as u32
    }
}

/// How an address-space operation reaches the commit charge: through the
/// [`VmContext`](crate::VmContext)'s `charge`, a `&mut dyn ChargeSource`. A [`CommitCharge`] is
/// one (the operation owns it for the call). A kernel that shares the charge between CPUs
/// implements [`with_charge`](Self::with_charge) over its lock, taken once per request, so that
/// a commit's check and charge ([`try_charge`](Self::try_charge)) are one step under it: two
/// spaces committing at once can never both pass the check and together exceed the limit.
pub trait ChargeSource {
    /// Runs `f` on the charge, which no one else changes meanwhile.
    fn with_charge(&mut self, f: &mut dyn FnMut(&mut CommitCharge));

    /// Checks and charges `pages` guest pages and `tables` table pages at once.
    ///
    /// # Errors
    ///
    /// [`VmError::CommitmentLimit`] when the charge would pass the cap of `level`; nothing
    /// changes then.
    fn try_charge(&mut self, pages: u64, tables: u64, level: CriticalLevel) -> Result<(), VmError> {
        let mut result = Ok(());
        self.with_charge(&mut |c| result = c.try_charge(pages, tables, level));
        result
    }

    /// Gives back the charge of `pages` guest pages and `tables` table pages.
    ///
    /// # Panics
    ///
    /// If more are given back than are charged (a kernel bug).
    fn uncharge(&mut self, pages: u64, tables: u64) {
        self.with_charge(&mut |c| {
            c.uncharge(pages);
            c.uncharge_tables(tables);
        });
    }
}

impl ChargeSource for CommitCharge {
    fn with_charge(&mut self, f: &mut dyn FnMut(&mut CommitCharge)) {
        f(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_use_their_share_of_the_reserve() {
        let mut c = CommitCharge::new(100, 20);
        assert_eq!(c.cap(CriticalLevel::Task), 80);
        assert_eq!(c.cap(CriticalLevel::AppDomain), 90);
        assert_eq!(c.cap(CriticalLevel::Process), 100);
        assert_eq!(c.check(81, 0, CriticalLevel::Task), Err(VmError::CommitmentLimit));
        assert_eq!(c.check(80, 0, CriticalLevel::Task), Ok(()));
        c.charge(80, 0);
        assert_eq!(c.check(1, 0, CriticalLevel::Task), Err(VmError::CommitmentLimit));
        assert_eq!(c.check(10, 0, CriticalLevel::AppDomain), Ok(()));
        assert_eq!(c.check(11, 0, CriticalLevel::AppDomain), Err(VmError::CommitmentLimit));
        assert_eq!(c.check(20, 0, CriticalLevel::Process), Ok(()));
        assert_eq!(c.check(u64::MAX, 0, CriticalLevel::Process), Err(VmError::CommitmentLimit));
        assert_eq!(c.check(0, u64::MAX, CriticalLevel::Process), Err(VmError::CommitmentLimit));
        assert_eq!(c.load_percent(), 80);
        c.uncharge(80);
        assert_eq!(c.committed_pages(), 0);
        assert_eq!(CriticalLevel::from_raw(3), None);
    }

    #[test]
    fn tables_shrink_the_guest_limit_and_share_the_caps() {
        let mut c = CommitCharge::new(100, 20);
        c.charge(40, 10);
        assert_eq!((c.limit_pages(), c.system_limit_pages(), c.committed_pages(), c.table_pages()), (90, 100, 40, 10));
        assert_eq!(c.available(CriticalLevel::Task), 30);
        assert_eq!(c.available(CriticalLevel::Process), 50);
        assert_eq!(c.load_percent(), 50);
        // 30 pages more at Task level, tables included.
        assert_eq!(c.check(28, 2, CriticalLevel::Task), Ok(()));
        assert_eq!(c.check(29, 2, CriticalLevel::Task), Err(VmError::CommitmentLimit));
        c.uncharge_tables(10);
        c.uncharge(40);
        assert_eq!((c.limit_pages(), c.available(CriticalLevel::Process)), (100, 100));
    }

    #[test]
    fn tables_within_the_allowance_cost_the_limit_nothing() {
        let mut c = CommitCharge::new(100, 20).with_table_allowance(5);
        c.charge(40, 4);
        assert_eq!((c.limit_pages(), c.available(CriticalLevel::Task)), (100, 40));
        // One more table still fits the allowance; the next two are charged to the limit.
        assert_eq!(c.check(40, 1, CriticalLevel::Task), Ok(()));
        assert_eq!(c.check(40, 2, CriticalLevel::Task), Err(VmError::CommitmentLimit));
        assert_eq!(c.check(39, 2, CriticalLevel::Task), Ok(()));
        c.charge(39, 2);
        assert_eq!((c.table_pages(), c.limit_pages(), c.committed_pages(), c.available(CriticalLevel::Task)), (6, 99, 79, 0));
        c.uncharge_tables(6);
        c.uncharge(79);
        assert_eq!((c.limit_pages(), c.load_percent()), (100, 0));
    }
}
