//! TLB invalidation: the [`Tlb`] trait the kernel implements, the per-operation [`TlbBatch`],
//! and the set of CPUs that run an address space ([`ActiveCpus`]).
//!
//! Every operation collects the pages whose *present* entries it changed (only present entries
//! can be cached, Intel SDM vol. 3A §4.10.2.3) and flushes them once at the end, as **one
//! round** ([`FlushRound`], [`Tlb::shootdown`]): one `invlpg` per page, or a single full flush
//! when more than the threshold (default 32, as Asterinas `mm/tlb.rs`) pages changed, on every
//! CPU that may hold a translation of the space. Freeing a page-table page also needs an
//! invalidation, because the CPU caches paging-structure entries: any `invlpg` drops all of them
//! (SDM §4.10.4.1), so a batch that freed a table but changed no present entry issues one
//! `invlpg` anyway.
//!
//! **Frames are freed after the round, never before** (smp-and-dispatch §4(c), CVE-2018-18281):
//! a data frame unmapped or a table page emptied by the operation is handed to the batch
//! ([`TlbBatch::defer_free`]), which gives it to the frame allocator only in
//! [`TlbBatch::flush`], after [`Tlb::shootdown`] has returned — and `shootdown` returns only when
//! every target CPU has flushed. Until then no other user can get the frame while a stale
//! translation (or a cached paging-structure entry pointing at a table page) may still reach it.
//! The list is bounded ([`MAX_DEFERRED`]): a decommit that frees more frames than that makes a
//! round each time its list fills (as Linux's `mmu_gather`), so such a call makes more than one.
//!
//! **Who is a target.** [`ActiveCpus`] (one per [`AddressSpace`](crate::AddressSpace), atomic so
//! that a context switch updates it without the space lock) holds the CPUs that have the
//! space's root in CR3: a CPU sets its bit *before* loading the CR3 and clears it only *after*
//! loading another (lazy CPUs idling on the space stay in the set: they can still walk its
//! tables, §4(b)). The batch reads the set after its entries are written, so a CPU that joins
//! later walks the new tables (the Linux ordering: cpumask bit, then tlb_gen, §4). A round with
//! no CPU but the caller sends no IPI; a kernel may also leave out lazy CPUs that flush before
//! they use the space again, unless the round freed tables ([`Tlb::shootdown`]).

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use x86_64::VirtAddr;
use x86_64::structures::paging::{PhysFrame, Size2MiB};

use crate::WorkCounters;
use crate::frame::FrameSource;

/// The most CPUs a [`CpuSet`] can name (one bit each).
pub const MAX_CPUS: usize = 64;

/// A set of CPU indices `0..MAX_CPUS`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CpuSet(pub u64);

impl CpuSet {
    /// The empty set.
    pub const EMPTY: CpuSet = CpuSet(0);

    /// The set holding only `cpu`.
    ///
    /// # Panics
    ///
    /// If `cpu >= MAX_CPUS`.
    pub const fn single(cpu: usize) -> CpuSet {
        assert!(cpu < MAX_CPUS, "CPU index out of range");
        CpuSet(1 << cpu)
    }

    /// Returns whether `cpu` is in the set.
    pub const fn contains(self, cpu: usize) -> bool {
        cpu < MAX_CPUS && self.0 & (1 << cpu) != 0
    }

    /// Returns the set without `cpu`.
    pub const fn without(self, cpu: usize) -> CpuSet {
        if cpu < MAX_CPUS { CpuSet(self.0 & !(1 << cpu)) } else { self }
    }

    /// Returns the number of CPUs in the set.
    pub const fn len(self) -> u32 {
        self.0.count_ones()
    }

    /// Returns `true` if the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Iterates over the CPUs of the set, lowest first.
    pub fn iter(self) -> impl Iterator<Item = usize> {
        (0..MAX_CPUS).filter(move |&c| self.contains(c))
    }
}

/// The CPUs running an address space (see the module docs for the protocol). Updated with
/// atomic read-modify-writes, without the space lock.
#[derive(Debug, Default)]
pub struct ActiveCpus(AtomicU64);

impl ActiveCpus {
    /// Records that `cpu` is about to load the space's root into CR3 (call it before the load).
    ///
    /// # Panics
    ///
    /// If `cpu >= MAX_CPUS`.
    pub fn activate(&self, cpu: usize) {
        self.0.fetch_or(CpuSet::single(cpu).0, Ordering::SeqCst);
    }

    /// Records that `cpu` has loaded another root into CR3 (call it after the load: the CR3
    /// load flushed every non-global translation of this space on that CPU, §4(e)).
    ///
    /// # Panics
    ///
    /// If `cpu >= MAX_CPUS`.
    pub fn deactivate(&self, cpu: usize) {
        self.0.fetch_and(!CpuSet::single(cpu).0, Ordering::SeqCst);
    }

    /// Returns the CPUs running the space now.
    ///
    /// A full fence comes first: the entries the caller just wrote (plain stores, not atomics)
    /// must be visible before the set is read, or a CPU joining meanwhile could both miss them
    /// in its walk and be missed by the round (a store-load reordering, which x86 allows). The
    /// joining side's `fetch_or` is a locked instruction, a full barrier too: either the round
    /// sees its bit or its walks see the new entries (Linux: cpumask bit, then `tlb_gen`).
    pub fn get(&self) -> CpuSet {
        core::sync::atomic::fence(Ordering::SeqCst);
        CpuSet(self.0.load(Ordering::SeqCst))
    }
}

/// What one round invalidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushScope<'a> {
    /// `invlpg` of each page (addresses of 4 KiB pages; a page of a 2 MiB mapping stands for
    /// it); when empty, the round only drops paging-structure caches (see `tables_freed`).
    Pages(&'a [u64]),
    /// Every non-global translation of the space (CR3 reload).
    All,
}

/// One invalidation round of one call: what to flush, and on which CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushRound<'a> {
    /// The CPUs that may hold translations of the space (its [`ActiveCpus`] when the call's
    /// entries were written); the caller's CPU may or may not be among them.
    pub targets: CpuSet,
    /// What to invalidate.
    pub scope: FlushScope<'a>,
    /// Page-table pages were freed: every target must drop its paging-structure caches (any
    /// `invlpg` or a CR3 reload does), even a CPU that holds no translation of the pages.
    pub tables_freed: bool,
}

/// Carries out TLB invalidations for one address space.
///
/// The kernel's implementation executes `invlpg` / reloads CR3 only when the space is active
/// on the CPU; a multi-CPU kernel implements [`shootdown`](Self::shootdown): local flush if
/// the caller is a target, one IPI to each other target, then wait (with interrupts enabled,
/// §4 pitfall 14) until each has flushed. `sim::TlbModel` (feature `sim`) models one CPU's TLB,
/// `sim::SmpTlbModel` one TLB per simulated CPU.
pub trait Tlb {
    /// Invalidates the translation of the page containing `addr` on this CPU.
    fn invalidate_page(&mut self, addr: VirtAddr);
    /// Invalidates every translation of the address space on this CPU.
    fn flush_all(&mut self);
    /// Carries out one round on every CPU of `round.targets` and returns only when none of them
    /// can use a translation the round removes (frames are freed right after it returns).
    /// Returns the IPIs it sent: the other CPUs it interrupted. A kernel may leave out a target
    /// that cannot use the space's translations until it has flushed anyway (Linux's lazy-TLB
    /// CPUs: idle with the root loaded, flushing when they return), unless
    /// `round.tables_freed`.
    ///
    /// The default is the single-CPU kernel's: the round is carried out on this CPU alone
    /// (through [`invalidate_page`](Self::invalidate_page) / [`flush_all`](Self::flush_all)),
    /// whatever the targets, and sends nothing; correct only while no other CPU runs the space.
    fn shootdown(&mut self, round: &FlushRound<'_>) -> u32 {
        match round.scope {
            FlushScope::All => self.flush_all(),
            FlushScope::Pages(pages) => {
                for &a in pages {
                    self.invalidate_page(VirtAddr::new_truncate(a));
                }
            }
        }
        0
    }
}

/// A TLB that needs no invalidation (an address space that has never been active).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoTlb;

impl Tlb for NoTlb {
    fn invalidate_page(&mut self, _addr: VirtAddr) {}
    fn flush_all(&mut self) {}
}

/// The largest threshold a batch accepts.
pub const MAX_BATCH: usize = 64;
/// The default threshold above which a batch becomes a full flush.
pub const DEFAULT_FLUSH_THRESHOLD: usize = 32;
/// Pages a batch holds in place: the default threshold's, so a batch under the default
/// configuration never uses the heap. Past them (only with a threshold configured above the
/// default, and more present entries changed) its list moves to the heap, at most [`MAX_BATCH`]
/// entries (a full flush instead if the heap has no room). A batch is made by every operation
/// that may change an entry, most of which change none or a few: a fixed array of `MAX_BATCH`
/// would be zeroed each time (512 bytes: a `rep stos` of 64 steps, slow under emulation).
const INLINE_PAGES: usize = DEFAULT_FLUSH_THRESHOLD;

/// The most 4 KiB frames a batch carries: a decommit or release that frees more makes a round
/// each time its list would pass this (so a batch's heap use stays under 16 KiB).
pub const MAX_DEFERRED: usize = 2048;

/// Invalidations collected during one operation, and the frames it may free only once they are
/// done (see the module docs).
#[must_use = "a TLB batch must be flushed: it holds the frames to free"]
#[derive(Debug)]
pub struct TlbBatch {
    /// The first pages (all of them while `len` ≤ [`INLINE_PAGES`]).
    pages: [u64; INLINE_PAGES],
    /// Every page once there are more than [`INLINE_PAGES`].
    spilled: Vec<u64>,
    len: usize,
    threshold: usize,
    full: bool,
    table_freed: Option<u64>,
    deferred: Vec<PhysFrame>,
    deferred_2mib: Vec<PhysFrame<Size2MiB>>,
}

impl TlbBatch {
    /// Creates an empty batch; `threshold` is clamped to `1..=MAX_BATCH`.
    pub fn new(threshold: usize) -> Self {
        TlbBatch {
            pages: [0; INLINE_PAGES],
            spilled: Vec::new(),
            len: 0,
            threshold: threshold.clamp(1, MAX_BATCH),
            full: false,
            table_freed: None,
            deferred: Vec::new(),
            deferred_2mib: Vec::new(),
        }
    }

    /// Records that the present entry of the page at `addr` changed.
    pub fn add(&mut self, addr: u64) {
        // Called for every entry a walk changes: the common cases inline (already a full
        // flush, or room in place), the rest out of line.
        if self.full {
            return;
        }
        if self.len < INLINE_PAGES && self.len < self.threshold {
            self.pages[self.len] = addr;
            self.len += 1;
            return;
        }
        self.add_beyond_inline(addr);
    }

    #[cold]
    #[inline(never)]
    fn add_beyond_inline(&mut self, addr: u64) {
        if self.len == self.threshold {
            self.full = true;
            return;
        }
        if self.len < INLINE_PAGES {
            self.pages[self.len] = addr;
        } else {
            if self.len == INLINE_PAGES {
                // Out of heap: a full flush covers every page (the call cannot fail here).
                if self.spilled.try_reserve_exact(self.threshold).is_err() {
                    self.full = true;
                    return;
                }
                self.spilled.extend_from_slice(&self.pages);
            }
            self.spilled.push(addr);
        }
        self.len += 1;
    }

    /// The pages recorded (none once the batch is a full flush).
    fn page_list(&self) -> &[u64] {
        if self.len <= INLINE_PAGES { &self.pages[..self.len] } else { &self.spilled }
    }

    /// Records that a page-table page covering `addr` was freed.
    pub fn note_table_freed(&mut self, addr: u64) {
        self.table_freed.get_or_insert(addr);
    }

    /// Hands over a frame (data or table page) no longer referenced by the tables, to be freed
    /// once the round is done.
    pub fn defer_free(&mut self, frame: PhysFrame) {
        self.deferred.push(frame);
    }

    /// Hands over a 2 MiB frame no longer mapped, to be freed once the round is done.
    pub fn defer_free_2mib(&mut self, frame: PhysFrame<Size2MiB>) {
        self.deferred_2mib.push(frame);
    }

    /// Returns the frames waiting for the round (4 KiB frames, 2 MiB frames).
    pub fn deferred_frames(&self) -> (usize, usize) {
        (self.deferred.len(), self.deferred_2mib.len())
    }

    /// Returns `true` if nothing needs invalidating.
    pub fn is_empty(&self) -> bool {
        !self.full && self.len == 0 && self.table_freed.is_none()
    }

    /// Moves everything `other` holds into this batch (its pages — a full flush past the
    /// threshold —, its freed-table note, its frames), leaving `other` empty: one round then
    /// covers both. The caller keeps the frames under [`MAX_DEFERRED`].
    pub fn append(&mut self, other: &mut TlbBatch) {
        if other.full {
            self.full = true;
        } else {
            other.page_list().iter().for_each(|&a| self.add(a));
        }
        if let Some(a) = other.table_freed.take() {
            self.note_table_freed(a);
        }
        self.deferred.append(&mut other.deferred);
        self.deferred_2mib.append(&mut other.deferred_2mib);
        other.len = 0;
        other.full = false;
        other.spilled.clear();
    }

    /// Completes the batch: one round on `targets` through `tlb` (none if nothing needs
    /// invalidating), counting `invlpg`s, full flushes, rounds and IPIs; then — only then —
    /// frees the deferred frames into `frames`. Takes the batch by reference (moving a batch
    /// would copy its few hundred bytes) and leaves it empty.
    ///
    /// # Panics
    ///
    /// If a deferred frame is not allocated (a kernel bug: the tables held a frame the
    /// allocator disowns).
    #[inline]
    pub fn flush(&mut self, targets: CpuSet, tlb: &mut impl Tlb, frames: &mut dyn FrameSource, counters: &mut WorkCounters) {
        if !self.is_empty() {
            let single;
            let scope = if self.full {
                counters.full_flushes += 1;
                FlushScope::All
            } else if self.len == 0 {
                single = [self.table_freed.unwrap_or_default()];
                counters.invlpg += 1;
                FlushScope::Pages(&single)
            } else {
                counters.invlpg += self.len as u64;
                FlushScope::Pages(self.page_list())
            };
            counters.shootdown_rounds += 1;
            counters.shootdown_ipis += u64::from(tlb.shootdown(&FlushRound { targets, scope, tables_freed: self.table_freed.is_some() }));
            self.len = 0;
            self.full = false;
            self.table_freed = None;
            self.spilled.clear();
        }
        if !self.deferred.is_empty() {
            for f in self.deferred.drain(..) {
                frames.free(f).expect("TLB batch: freeing a frame the allocator disowns");
            }
        }
        if !self.deferred_2mib.is_empty() {
            for f in self.deferred_2mib.drain(..) {
                frames.free_2mib(f).expect("TLB batch: freeing a 2 MiB run the allocator disowns");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FrameAllocator;

    #[derive(Default)]
    struct Log {
        pages: alloc::vec::Vec<u64>,
        full: usize,
    }
    impl Tlb for Log {
        fn invalidate_page(&mut self, addr: VirtAddr) {
            self.pages.push(addr.as_u64());
        }
        fn flush_all(&mut self) {
            self.full += 1;
        }
    }

    #[test]
    fn batch_becomes_full_flush_above_threshold() {
        let mut c = WorkCounters::default();
        let mut fa = FrameAllocator::new(&[]);
        let mut log = Log::default();
        let mut b = TlbBatch::new(2);
        b.add(0x1000);
        b.add(0x2000);
        b.flush(CpuSet::EMPTY, &mut log, &mut fa, &mut c);
        assert_eq!(log.pages, [0x1000, 0x2000]);
        assert_eq!(c.invlpg, 2);
        let mut b = TlbBatch::new(2);
        for a in [0x1000, 0x2000, 0x3000] {
            b.add(a);
        }
        b.flush(CpuSet::EMPTY, &mut log, &mut fa, &mut c);
        assert_eq!(log.full, 1);
        assert_eq!(c.full_flushes, 1);
        let mut b = TlbBatch::new(2);
        b.note_table_freed(0x5000);
        assert!(!b.is_empty());
        b.flush(CpuSet::EMPTY, &mut log, &mut fa, &mut c);
        assert_eq!(log.pages.last(), Some(&0x5000));
    }

    /// Past the pages a batch holds in place, the list goes on (up to the threshold) in order.
    #[test]
    fn a_batch_keeps_every_page_up_to_the_largest_threshold() {
        let mut c = WorkCounters::default();
        let mut fa = FrameAllocator::new(&[]);
        for n in [1, INLINE_PAGES, INLINE_PAGES + 1, MAX_BATCH] {
            let mut log = Log::default();
            let mut b = TlbBatch::new(MAX_BATCH);
            let pages: alloc::vec::Vec<u64> = (1..=n as u64).map(|i| i << 12).collect();
            pages.iter().for_each(|&p| b.add(p));
            b.flush(CpuSet::EMPTY, &mut log, &mut fa, &mut c);
            assert_eq!((log.pages, log.full), (pages, 0), "{n} pages");
        }
        let mut log = Log::default();
        let mut b = TlbBatch::new(MAX_BATCH);
        (0..=MAX_BATCH as u64).for_each(|i| b.add(i << 12));
        b.flush(CpuSet::EMPTY, &mut log, &mut fa, &mut c);
        assert_eq!((log.pages.len(), log.full), (0, 1), "one past the threshold: a full flush");
    }

    /// The frames a batch carries are freed only once the round returned: a round that never
    /// completes (here: panics) leaves them allocated.
    #[test]
    fn deferred_frames_are_freed_after_the_round_only() {
        struct Fails;
        impl Tlb for Fails {
            fn invalidate_page(&mut self, _: VirtAddr) {}
            fn flush_all(&mut self) {}
            fn shootdown(&mut self, _: &FlushRound<'_>) -> u32 {
                panic!("round not acknowledged");
            }
        }
        let range = crate::frame::PhysRange::new(x86_64::PhysAddr::new(0x20_0000), x86_64::PhysAddr::new(0x40_0000));
        let mut fa = FrameAllocator::new(&[range]);
        let mut c = WorkCounters::default();
        let f = fa.alloc().unwrap();
        let mut b = TlbBatch::new(4);
        b.add(0x1000);
        b.defer_free(f);
        assert_eq!(b.deferred_frames(), (1, 0));
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| b.flush(CpuSet(0b11), &mut Fails, &mut fa, &mut c)));
        assert!(r.is_err());
        assert_eq!(fa.is_allocated(f), Ok(true), "freed before the round completed");
        let mut b = TlbBatch::new(4);
        b.add(0x1000);
        b.defer_free(f);
        b.flush(CpuSet(0b11), &mut NoTlb, &mut fa, &mut c);
        assert_eq!(fa.is_allocated(f), Ok(false));
        assert_eq!((c.shootdown_rounds, c.shootdown_ipis), (2, 0), "NoTlb flushes nothing and sends no IPI");
    }
}
