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

use core::sync::atomic::{AtomicU64, Ordering};

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

/// The commit charge's figures at one moment ([`CommitCharge::snapshot`]): plain values, with
/// the arithmetic of the limit, the caps and the table allowance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChargeSnapshot {
    limit_pages: u64,
    committed_pages: u64,
    table_pages: u64,
    table_allowance: u64,
    critical_reserve_pages: u64,
    peak_pages: u64,
}

impl ChargeSnapshot {
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
        self.limit_pages.saturating_sub(self.tables_over_allowance())
    }

    /// Returns the system limit in pages (guest commit and page tables together).
    pub fn system_limit_pages(&self) -> u64 {
        self.limit_pages
    }

    /// Returns the pages committed by guests (page tables excluded).
    pub fn committed_pages(&self) -> u64 {
        self.committed_pages
    }

    /// Returns the most pages guests had committed at once (Windows' commit peak).
    pub fn peak_pages(&self) -> u64 {
        self.peak_pages
    }

    /// Returns the page-table pages in use (inside the allowance or charged to the limit).
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

    /// Returns the total charge: guest commit and the page tables charged to the limit.
    fn total(&self) -> u64 {
        self.committed_pages + self.tables_over_allowance()
    }

    /// Returns how many more pages a request of `level` could commit (tables it may need not
    /// counted).
    pub fn available(&self, level: CriticalLevel) -> u64 {
        self.cap(level).saturating_sub(self.total())
    }

    /// Checks that `pages` more guest pages and `tables` more page-table pages (those beyond the
    /// allowance) may be charged at `level`; returns the committed and table pages after them.
    ///
    /// # Errors
    ///
    /// [`VmError::CommitmentLimit`] when the charge would pass [`cap`](Self::cap)`(level)` (or
    /// the tables [`MAX_TABLE_PAGES`]).
    pub fn check(&self, pages: u64, tables: u64, level: CriticalLevel) -> Result<(u64, u64), VmError> {
        let new_tables = self.table_pages.checked_add(tables).filter(|&t| t <= MAX_TABLE_PAGES).ok_or(VmError::CommitmentLimit)?;
        let new_committed = self.committed_pages.checked_add(pages).ok_or(VmError::CommitmentLimit)?;
        match new_committed.checked_add(new_tables.saturating_sub(self.table_allowance)) {
            Some(total) if total <= self.cap(level) => Ok((new_committed, new_tables)),
            _ => Err(VmError::CommitmentLimit),
        }
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

/// The most guest pages the charge counts: 2^32 − 1 pages, 16 TiB. A larger limit is clamped
/// to it.
pub const MAX_CHARGE_PAGES: u64 = u32::MAX as u64;

/// The most page-table pages the charge counts: 2^24 − 1 (64 GiB of tables, which map 32 TiB
/// densely); a commit that would need more is refused as over the limit.
pub const MAX_TABLE_PAGES: u64 = (1 << 24) - 1;

/// The counts word: committed pages in bits 0–31, table pages in bits 32–55, the limits'
/// generation in bits 56–63 (odd while [`CommitCharge::set_limit`] changes them).
const TABLES_SHIFT: u32 = 32;
const GEN_SHIFT: u32 = 56;
const GEN_ONE: u64 = 1 << GEN_SHIFT;

/// The counts of a word with generation `generation_bits` (already in place).
fn pack(committed: u64, tables: u64, generation_bits: u64) -> u64 {
    committed | tables << TABLES_SHIFT | generation_bits
}

/// The committed pages, the table pages and the generation bits of a counts word.
fn unpack(word: u64) -> (u64, u64, u64) {
    (word & MAX_CHARGE_PAGES, (word >> TABLES_SHIFT) & MAX_TABLE_PAGES, word & !(GEN_ONE - 1))
}

/// Whether a limit change is under way in the word's generation.
fn changing(word: u64) -> bool {
    word & GEN_ONE != 0
}

/// The commit charge: how many pages are committed, out of which limit. One object for the
/// whole system, shared by every address space (`&CommitCharge` is all a call needs), and
/// lock-free.
///
/// Large pages and image pages are charged like ordinary pages (one per 4 KiB). Page-table pages
/// below the roots are charged as the kernel's part (module docs); the roots themselves, one per
/// space, come from the kernel's own reserve outside the limit.
///
/// **Exact without a lock.** The committed pages, the table pages and the generation of the
/// limits live in one atomic word ([`MAX_CHARGE_PAGES`], [`MAX_TABLE_PAGES`]):
/// [`try_charge`](Self::try_charge) reads it, checks the request against the cap of its level
/// and installs the new counts with one compare-exchange, retrying if the word changed
/// meanwhile, so every charge was checked against the counts it replaced and two spaces
/// committing at once can never together pass a cap; [`uncharge`](Self::uncharge) is one
/// `fetch_sub`, the commit peak a `fetch_max` (only when a charge passes it). The limits (limit,
/// critical reserve, table allowance) change only through [`set_limit`](Self::set_limit), while
/// nothing is committed: it makes the generation odd by a compare-exchange of a word with
/// nothing committed, stores the limits, and makes it even again (a seqlock inside the word).
/// A charge reads the limits after the word, and its exchange fails if the generation moved, so
/// no charge ever takes effect under limits other than those it was checked against — up to the
/// generation wrapping (8 bits: 128 limit changes completed while one charge is held up between
/// its read and its exchange; the kernel changes the limit only for tests).
#[derive(Debug)]
pub struct CommitCharge {
    /// The committed pages, the table pages and the limits' generation ([`pack`]).
    counts: AtomicU64,
    /// The most pages committed at once so far.
    peak_pages: AtomicU64,
    limit_pages: AtomicU64,
    table_allowance: AtomicU64,
    critical_reserve_pages: AtomicU64,
}

impl CommitCharge {
    /// Creates a charge with `limit_pages` pages in all (at most [`MAX_CHARGE_PAGES`]), of which
    /// the top `critical_reserve_pages` are kept for critical requests.
    ///
    /// The kernel should choose a limit no larger than the frames it can give to committed
    /// pages (no overcommit, host-abi §9). A reserve larger than the limit is clamped to it.
    pub fn new(limit_pages: u64, critical_reserve_pages: u64) -> Self {
        let limit_pages = limit_pages.min(MAX_CHARGE_PAGES);
        CommitCharge {
            counts: AtomicU64::new(0),
            peak_pages: AtomicU64::new(0),
            limit_pages: AtomicU64::new(limit_pages),
            table_allowance: AtomicU64::new(0),
            critical_reserve_pages: AtomicU64::new(critical_reserve_pages.min(limit_pages)),
        }
    }

    /// Sets aside `pages` frames of the kernel's reserve (outside the limit) for page-table pages,
    /// which are charged to the limit only beyond them (module docs). Default: none. Limit and
    /// allowance together are at most [`MAX_CHARGE_PAGES`] (the allowance is clamped).
    #[must_use]
    pub fn with_table_allowance(self, pages: u64) -> Self {
        let room = MAX_CHARGE_PAGES - self.limit_pages.load(Ordering::Relaxed);
        self.table_allowance.store(pages.min(room), Ordering::Relaxed);
        self
    }

    /// Reads the counts word and the limits of its generation, waiting while a
    /// [`set_limit`](Self::set_limit) is changing them (a few instructions).
    fn read(&self) -> (u64, ChargeSnapshot) {
        loop {
            let word = self.counts.load(Ordering::Acquire);
            if !changing(word) {
                // Acquire: a limit stored by a change begun after `word` was read makes the
                // word read below (and any exchange) see that change's generation.
                let (limit_pages, table_allowance, critical_reserve_pages) = (
                    self.limit_pages.load(Ordering::Acquire),
                    self.table_allowance.load(Ordering::Acquire),
                    self.critical_reserve_pages.load(Ordering::Acquire),
                );
                let (committed_pages, table_pages, generation) = unpack(word);
                if unpack(self.counts.load(Ordering::Acquire)).2 == generation {
                    let peak_pages = self.peak_pages.load(Ordering::Relaxed).max(committed_pages);
                    let s = ChargeSnapshot { limit_pages, committed_pages, table_pages, table_allowance, critical_reserve_pages, peak_pages };
                    return (word, s);
                }
            }
            core::hint::spin_loop();
        }
    }

    /// Returns every figure at one moment: the counts read once, under the limits in force then.
    pub fn snapshot(&self) -> ChargeSnapshot {
        self.read().1
    }

    /// Returns the table allowance in pages.
    pub fn table_allowance(&self) -> u64 {
        self.snapshot().table_allowance()
    }

    /// Returns the limit in pages for guest commit now ([`ChargeSnapshot::limit_pages`]).
    pub fn limit_pages(&self) -> u64 {
        self.snapshot().limit_pages()
    }

    /// Returns the system limit in pages (guest commit and page tables together).
    pub fn system_limit_pages(&self) -> u64 {
        self.snapshot().system_limit_pages()
    }

    /// Returns the pages committed by guests now (page tables excluded).
    pub fn committed_pages(&self) -> u64 {
        unpack(self.counts.load(Ordering::Acquire)).0
    }

    /// Returns the most pages guests had committed at once.
    pub fn peak_pages(&self) -> u64 {
        self.snapshot().peak_pages()
    }

    /// Returns the page-table pages in use now (inside the allowance or charged to the limit).
    pub fn table_pages(&self) -> u64 {
        unpack(self.counts.load(Ordering::Acquire)).1
    }

    /// Returns the size of the critical reserve in pages.
    pub fn critical_reserve_pages(&self) -> u64 {
        self.snapshot().critical_reserve_pages()
    }

    /// Returns the highest total charge a request of `level` may reach ([`ChargeSnapshot::cap`]).
    pub fn cap(&self, level: CriticalLevel) -> u64 {
        self.snapshot().cap(level)
    }

    /// Returns how many more pages a request of `level` could commit now.
    pub fn available(&self, level: CriticalLevel) -> u64 {
        self.snapshot().available(level)
    }

    /// Returns the memory load in percent ([`ChargeSnapshot::load_percent`]).
    pub fn load_percent(&self) -> u32 {
        self.snapshot().load_percent()
    }

    /// Checks, without charging, that `pages` guest pages and `tables` table pages may be
    /// charged at `level` now.
    ///
    /// # Errors
    ///
    /// As [`ChargeSnapshot::check`].
    pub fn check(&self, pages: u64, tables: u64, level: CriticalLevel) -> Result<(), VmError> {
        self.snapshot().check(pages, tables, level).map(|_| ())
    }

    /// Checks and charges `pages` guest pages and `tables` table pages in one step (one
    /// compare-exchange of the counts word, see the type's docs): nothing changes on error.
    ///
    /// # Errors
    ///
    /// [`VmError::CommitmentLimit`] when the charge would pass the cap of `level`.
    pub fn try_charge(&self, pages: u64, tables: u64, level: CriticalLevel) -> Result<(), VmError> {
        loop {
            let (word, figures) = self.read();
            #[cfg(test)]
            tests::between_read_and_exchange(self);
            let (committed, table_pages) = figures.check(pages, tables, level)?;
            let new = pack(committed, table_pages, unpack(word).2);
            // Fails if the counts or the limits' generation moved since the read: read again.
            if self.counts.compare_exchange_weak(word, new, Ordering::SeqCst, Ordering::Relaxed).is_ok() {
                if committed > self.peak_pages.load(Ordering::Relaxed) {
                    self.peak_pages.fetch_max(committed, Ordering::Relaxed);
                }
                return Ok(());
            }
        }
    }

    /// Gives back `pages` guest pages and `tables` table pages (one `fetch_sub`).
    ///
    /// # Panics
    ///
    /// If more are given back than are charged (a kernel bug).
    pub fn uncharge(&self, pages: u64, tables: u64) {
        assert!(pages <= MAX_CHARGE_PAGES && tables <= MAX_TABLE_PAGES, "commit charge: more pages uncharged than charged");
        let (committed, table_pages, _) = unpack(self.counts.fetch_sub(pack(pages, tables, 0), Ordering::SeqCst));
        assert!(committed >= pages, "commit charge: more pages uncharged than charged");
        assert!(table_pages >= tables, "commit charge: more table pages uncharged than charged");
    }

    /// Moves the limit to `limit_pages` with a new critical reserve, while nothing is committed
    /// (table pages may be): the pages the limit gives up go to the table allowance, those it
    /// takes back come from it (limit and allowance together stay, so the frames that back them
    /// do; the limit is clamped to that sum). Returns false, changing nothing, while anything is
    /// committed or another change is under way.
    pub fn set_limit(&self, limit_pages: u64, critical_reserve_pages: u64) -> bool {
        let mut word = self.counts.load(Ordering::Relaxed);
        loop {
            if changing(word) || unpack(word).0 != 0 {
                return false;
            }
            // Odd generation: charges wait, and any charge that read the word before fails its
            // exchange. (Table uncharges go on: they leave the generation alone.)
            match self.counts.compare_exchange_weak(word, word.wrapping_add(GEN_ONE), Ordering::SeqCst, Ordering::Relaxed) {
                Ok(_) => break,
                Err(now) => word = now,
            }
        }
        let both = self.limit_pages.load(Ordering::Relaxed) + self.table_allowance.load(Ordering::Relaxed);
        let limit_pages = limit_pages.min(both);
        // Release: a reader that sees one of these sees the odd generation when it reads the
        // word again.
        self.limit_pages.store(limit_pages, Ordering::Release);
        self.table_allowance.store(both - limit_pages, Ordering::Release);
        self.critical_reserve_pages.store(critical_reserve_pages.min(limit_pages), Ordering::Release);
        // Even again (wrapping at the top of the word).
        self.counts.fetch_add(GEN_ONE, Ordering::SeqCst);
        true
    }
}

/// How an address-space operation reaches the commit charge: through the
/// [`VmContext`](crate::VmContext)'s `charge`, a `&mut dyn ChargeSource`. A [`CommitCharge`] is
/// one, and so is a `&CommitCharge` (spaces on several threads share one); the kernel's handle
/// reaches its system-wide charge. A commit's check and charge are one step
/// ([`CommitCharge::try_charge`]): two spaces committing at once can never both pass the check
/// and together exceed the limit.
pub trait ChargeSource {
    /// Checks and charges `pages` guest pages and `tables` table pages at once.
    ///
    /// # Errors
    ///
    /// [`VmError::CommitmentLimit`] when the charge would pass the cap of `level`; nothing
    /// changes then.
    fn try_charge(&mut self, pages: u64, tables: u64, level: CriticalLevel) -> Result<(), VmError>;

    /// Gives back the charge of `pages` guest pages and `tables` table pages.
    ///
    /// # Panics
    ///
    /// If more are given back than are charged (a kernel bug).
    fn uncharge(&mut self, pages: u64, tables: u64);
}

impl ChargeSource for &CommitCharge {
    fn try_charge(&mut self, pages: u64, tables: u64, level: CriticalLevel) -> Result<(), VmError> {
        CommitCharge::try_charge(self, pages, tables, level)
    }

    fn uncharge(&mut self, pages: u64, tables: u64) {
        CommitCharge::uncharge(self, pages, tables)
    }
}

impl ChargeSource for CommitCharge {
    fn try_charge(&mut self, pages: u64, tables: u64, level: CriticalLevel) -> Result<(), VmError> {
        CommitCharge::try_charge(self, pages, tables, level)
    }

    fn uncharge(&mut self, pages: u64, tables: u64) {
        CommitCharge::uncharge(self, pages, tables)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::space::tests::Rendezvous;

    std::thread_local! {
        /// Run once by this thread's next `try_charge` after it read the counts and the limits.
        static BETWEEN: core::cell::Cell<Option<fn(&CommitCharge)>> = const { core::cell::Cell::new(None) };
    }

    pub(super) fn between_read_and_exchange(c: &CommitCharge) {
        if let Some(f) = BETWEEN.take() {
            f(c)
        }
    }

    /// The limit moves after a charge read it and before the charge takes effect: a charge that
    /// passed against the old limit is checked again against the new one (down: refused); one
    /// refused by the old limit was refused while it held (up: the next one passes).
    #[test]
    fn a_charge_that_read_a_limit_since_moved_is_checked_again() {
        let c = CommitCharge::new(100, 0);
        BETWEEN.set(Some(|c| assert!(c.set_limit(8, 0))));
        assert_eq!(c.try_charge(45, 0, CriticalLevel::Process), Err(VmError::CommitmentLimit));
        assert_eq!((c.committed_pages(), c.system_limit_pages(), c.peak_pages()), (0, 8, 0));
        BETWEEN.set(Some(|c| assert!(c.set_limit(100, 0))));
        assert_eq!(c.try_charge(45, 0, CriticalLevel::Process), Err(VmError::CommitmentLimit));
        assert_eq!(c.try_charge(45, 0, CriticalLevel::Process), Ok(()));
        assert_eq!((c.committed_pages(), c.system_limit_pages(), c.peak_pages()), (45, 100, 45));
        // A move refused (something is committed) changes nothing: the charge passes at once.
        BETWEEN.set(Some(|c| assert!(!c.set_limit(8, 0))));
        assert_eq!(c.try_charge(5, 0, CriticalLevel::Process), Ok(()));
        assert_eq!((c.committed_pages(), c.system_limit_pages(), c.peak_pages()), (50, 100, 50));
    }

    #[test]
    fn levels_use_their_share_of_the_reserve() {
        let c = CommitCharge::new(100, 20);
        assert_eq!(c.cap(CriticalLevel::Task), 80);
        assert_eq!(c.cap(CriticalLevel::AppDomain), 90);
        assert_eq!(c.cap(CriticalLevel::Process), 100);
        assert_eq!(c.check(81, 0, CriticalLevel::Task), Err(VmError::CommitmentLimit));
        assert_eq!(c.check(80, 0, CriticalLevel::Task), Ok(()));
        c.try_charge(80, 0, CriticalLevel::Task).expect("fits");
        assert_eq!(c.check(1, 0, CriticalLevel::Task), Err(VmError::CommitmentLimit));
        assert_eq!(c.check(10, 0, CriticalLevel::AppDomain), Ok(()));
        assert_eq!(c.check(11, 0, CriticalLevel::AppDomain), Err(VmError::CommitmentLimit));
        assert_eq!(c.check(20, 0, CriticalLevel::Process), Ok(()));
        assert_eq!(c.check(u64::MAX, 0, CriticalLevel::Process), Err(VmError::CommitmentLimit));
        assert_eq!(c.check(0, u64::MAX, CriticalLevel::Process), Err(VmError::CommitmentLimit));
        assert_eq!(c.load_percent(), 80);
        c.uncharge(80, 0);
        assert_eq!(c.committed_pages(), 0);
        assert_eq!(CriticalLevel::from_raw(3), None);
    }

    #[test]
    fn tables_shrink_the_guest_limit_and_share_the_caps() {
        let c = CommitCharge::new(100, 20);
        c.try_charge(40, 10, CriticalLevel::Process).expect("fits");
        assert_eq!((c.limit_pages(), c.system_limit_pages(), c.committed_pages(), c.table_pages()), (90, 100, 40, 10));
        assert_eq!(c.available(CriticalLevel::Task), 30);
        assert_eq!(c.available(CriticalLevel::Process), 50);
        assert_eq!(c.load_percent(), 50);
        // 30 pages more at Task level, tables included.
        assert_eq!(c.check(28, 2, CriticalLevel::Task), Ok(()));
        assert_eq!(c.check(29, 2, CriticalLevel::Task), Err(VmError::CommitmentLimit));
        c.uncharge(40, 10);
        assert_eq!((c.limit_pages(), c.available(CriticalLevel::Process)), (100, 100));
    }

    #[test]
    fn tables_within_the_allowance_cost_the_limit_nothing() {
        let c = CommitCharge::new(100, 20).with_table_allowance(5);
        c.try_charge(40, 4, CriticalLevel::Process).expect("fits");
        assert_eq!((c.limit_pages(), c.available(CriticalLevel::Task)), (100, 40));
        // One more table still fits the allowance; the next two are charged to the limit.
        assert_eq!(c.check(40, 1, CriticalLevel::Task), Ok(()));
        assert_eq!(c.check(40, 2, CriticalLevel::Task), Err(VmError::CommitmentLimit));
        assert_eq!(c.check(39, 2, CriticalLevel::Task), Ok(()));
        c.try_charge(39, 2, CriticalLevel::Task).expect("fits");
        assert_eq!((c.table_pages(), c.limit_pages(), c.committed_pages(), c.available(CriticalLevel::Task)), (6, 99, 79, 0));
        c.uncharge(79, 6);
        assert_eq!((c.limit_pages(), c.load_percent()), (100, 0));
    }

    /// Threads racing for the last pages under the limit, round after round (all released by a
    /// barrier): exactly as many charges pass as fit, never two for a place only one fits, at
    /// each level only what its share of the critical reserve allows; at the end the counts are
    /// exactly what the winners hold, and the peak is the highest total reached.
    #[test]
    fn threads_racing_for_the_last_pages_get_exactly_what_fits() {
        use std::sync::atomic::AtomicU64;
        const THREADS: usize = 4;
        const ROUNDS: u64 = 2000;
        // Task cap 80, AppDomain 90, Process 100.
        let c = CommitCharge::new(100, 20);
        let barrier = Rendezvous::default();
        let (won, lost, highest) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
        std::thread::scope(|scope| {
            for t in 0..THREADS {
                let (c, barrier, won, lost, highest) = (&c, &barrier, &won, &lost, &highest);
                scope.spawn(move || {
                    let _poison = barrier.fails_with_this_thread();
                    for round in 0..ROUNDS {
                        // Thread 0 fills the charge to 70 pages; each round one level races
                        // for the room above: 10 pages at Task, 20 at AppDomain, 30 at Process.
                        if t == 0 {
                            c.try_charge(70, 0, CriticalLevel::Task).expect("empty charge");
                        }
                        barrier.wait(THREADS);
                        let (level, room) = [(CriticalLevel::Task, 10), (CriticalLevel::AppDomain, 20), (CriticalLevel::Process, 30)][(round % 3) as usize];
                        // 3, 4 or 5 pages (tables included): one page more than `room` in
                        // all but one of the combinations, so the winners are exact.
                        let (pages, tables) = (2 + t as u64 % 2, 1 + t as u64 / 2);
                        let mut held = 0;
                        while c.try_charge(pages, tables, level).is_ok() {
                            held += 1;
                        }
                        barrier.wait(THREADS);
                        if t == 0 {
                            let s = c.snapshot();
                            assert!(s.committed_pages() + s.table_pages() <= 70 + room, "round {round}: {s:?} passed {room} pages at {level:?}");
                            assert!(s.available(level) < 3, "round {round}: {s:?} left room at {level:?}");
                            highest.fetch_max(s.committed_pages(), Ordering::Relaxed);
                        }
                        barrier.wait(THREADS);
                        for _ in 0..held {
                            c.uncharge(pages, tables);
                        }
                        won.fetch_add(held, Ordering::Relaxed);
                        lost.fetch_add(1, Ordering::Relaxed);
                        barrier.wait(THREADS);
                        if t == 0 {
                            c.uncharge(70, 0);
                            assert_eq!((c.committed_pages(), c.table_pages()), (0, 0), "round {round}: counts after everything went back");
                        }
                    }
                });
            }
        });
        assert!(won.load(Ordering::Relaxed) > ROUNDS, "the threads won {won:?} charges");
        assert_eq!(lost.load(Ordering::Relaxed), ROUNDS * THREADS as u64);
        let s = c.snapshot();
        assert_eq!((s.committed_pages(), s.table_pages()), (0, 0));
        // No charge is given back during a race: the peak is the highest count after one.
        assert_eq!(s.peak_pages(), highest.load(Ordering::Relaxed));
    }

    /// Charges on several threads while another moves the limit between 100 and 8 pages (it can
    /// only while nothing is committed): no snapshot ever sees more committed than the limit in
    /// force, every charge that passed is given back exactly, and the limit moved many times
    /// (for 0.3 s).
    #[test]
    fn the_limit_moves_only_while_nothing_is_committed() {
        use std::sync::atomic::{AtomicBool, AtomicU64};
        const CHARGERS: usize = 3;
        let c = CommitCharge::new(100, 10).with_table_allowance(4);
        let stop = AtomicBool::new(false);
        let moves = AtomicU64::new(0);
        std::thread::scope(|scope| {
            for t in 0..CHARGERS {
                let (c, stop) = (&c, &stop);
                scope.spawn(move || {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        // Large charges fit only the large limit: one checked against it that took
                        // effect under the small one would show.
                        let (pages, tables) = (if i % 2 == 0 { 45 } else { 1 + (i + t as u64) % 7 }, i % 3);
                        let level = [CriticalLevel::Task, CriticalLevel::AppDomain, CriticalLevel::Process][(i % 3) as usize];
                        if c.try_charge(pages, tables, level).is_ok() {
                            let s = c.snapshot();
                            assert!(s.committed_pages() + s.table_pages().saturating_sub(s.table_allowance()) <= s.system_limit_pages(), "{s:?}");
                            assert!(s.committed_pages() >= pages, "{s:?}");
                            c.uncharge(pages, tables);
                        }
                        // Moments with nothing committed, for the limit to move.
                        std::thread::yield_now();
                    }
                });
            }
            let (c, stop, moves) = (&c, &stop, &moves);
            scope.spawn(move || {
                /// Stops the chargers however this thread ends (a failed check too).
                struct StopOnExit<'a>(&'a AtomicBool);
                impl Drop for StopOnExit<'_> {
                    fn drop(&mut self) {
                        self.0.store(true, Ordering::Relaxed);
                    }
                }
                let _stop = StopOnExit(stop);
                let deadline = std::time::Instant::now() + std::time::Duration::from_millis(300);
                for i in 0u64.. {
                    if std::time::Instant::now() > deadline {
                        break;
                    }
                    let limit = if i % 2 == 0 { 8 } else { 100 };
                    if c.set_limit(limit, limit / 10) {
                        moves.fetch_add(1, Ordering::Relaxed);
                    }
                    let s = c.snapshot();
                    assert!(s.committed_pages() <= s.cap(CriticalLevel::Process), "{s:?}");
                    assert_eq!(s.system_limit_pages() + s.table_allowance(), 104, "{s:?}");
                }
            });
        });
        let s = c.snapshot();
        assert_eq!((s.committed_pages(), s.table_pages()), (0, 0));
        assert!(moves.load(Ordering::Relaxed) > 10, "the limit moved {moves:?} times");
        assert!(s.peak_pages() <= 100);
    }

    #[test]
    fn a_limit_moves_within_limit_and_allowance_and_not_while_committed() {
        let c = CommitCharge::new(100, 20).with_table_allowance(10);
        c.try_charge(1, 2, CriticalLevel::Task).expect("fits");
        assert!(!c.set_limit(50, 5));
        c.uncharge(1, 0);
        assert!(c.set_limit(50, 5));
        let s = c.snapshot();
        assert_eq!((s.system_limit_pages(), s.table_allowance(), s.critical_reserve_pages(), s.table_pages()), (50, 60, 5, 2));
        assert!(c.set_limit(u64::MAX, 200));
        assert_eq!((c.system_limit_pages(), c.table_allowance(), c.critical_reserve_pages()), (110, 0, 110));
        assert_eq!((c.limit_pages(), c.peak_pages()), (108, 1));
        c.uncharge(0, 2);
        let huge = CommitCharge::new(u64::MAX, 0).with_table_allowance(u64::MAX);
        assert_eq!((huge.system_limit_pages(), huge.table_allowance()), (MAX_CHARGE_PAGES, 0));
        huge.try_charge(MAX_CHARGE_PAGES, 0, CriticalLevel::Process).expect("fits");
        assert_eq!(huge.check(1, 0, CriticalLevel::Process), Err(VmError::CommitmentLimit));
        assert_eq!(huge.check(0, 1, CriticalLevel::Process), Err(VmError::CommitmentLimit));
        assert_eq!((huge.committed_pages(), huge.table_pages()), (MAX_CHARGE_PAGES, 0));
    }

    #[test]
    #[should_panic(expected = "more table pages uncharged")]
    fn giving_back_more_than_charged_is_a_bug() {
        let c = CommitCharge::new(100, 0);
        c.try_charge(3, 1, CriticalLevel::Task).expect("fits");
        c.uncharge(3, 2);
    }
}
