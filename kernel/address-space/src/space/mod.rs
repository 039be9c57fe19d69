//! [`AddressSpace`]: the Win32 virtual-memory manager of one guest.
//!
//! ```text
//!  virtual address (lower canonical half; the kernel owns the upper half of the PML4)
//!  0x0000_0000_0000 +-------------------------------+
//!                   | never allocatable (64 KiB)    |  catches NULL+offset dereferences
//!  min_address      +-------------------------------+  default 0x1_0000
//!  (0x1_0000)       | allocations, 64 KiB aligned:  |
//!                   |  [base .. base+size) pages    |  reserved (PTE 0) or committed
//!                   |  [end .. next 64 KiB) tail    |  free for VirtualQuery, usable by no one
//!                   |  ... gaps (GapTree) ...       |
//!                   |  MEM_TOP_DOWN allocations     |  placed from the top down
//!  max_address_end  +-------------------------------+  default 0x7FFF_FFFF_0000
//!                   | never allocatable (64 KiB)    |  max_application_address = end - 1
//!  0x8000_0000_0000 +-------------------------------+  non-canonical hole, then the kernel
//! ```
//!
//! State lives in two places only:
//!
//! * an ordered map of [`Allocation`] records (base, size, `AllocationProtect`, kind, flags; a
//!   B+ tree of wide nodes (`allocation_map.rs`) for lookups with few cache misses) plus
//!   the [`GapTree`] of free 64 KiB blocks — O(log n) in the number of allocations;
//! * the page tables, which *are* the per-page store (see [`crate::paging::pte`]): a reserved
//!   page costs nothing, a committed page costs its 8-byte entry and no other metadata.
//!
//! Every operation runs in two phases (decode, then perform): validation in the order of
//! win32-semantics (first failing check decides the error), then the frames, table pages and
//! commit charge it needs are obtained — which may fail, and is undone completely if it does —
//! and only then are entries written, by code that cannot fail. So a failed call changes
//! nothing: no page, frame, counter or entry.
//!
//! Commit reserves one frame per newly committed page from the frame allocator (a count, no
//! particular frame); the page gets its frame, zeroed, on first touch ([`AddressSpace::handle_fault`]),
//! which therefore cannot fail for lack of memory. Decommit and release give frames back, and
//! unreserve the frames of pages never touched.
//!
//! Submodules: `alloc` (VirtualAlloc: reserve, commit, reset), `free` (VirtualFree),
//! `protect`, `query`, `fault` (faults and system-service access checks), `write_watch`,
//! `image` (image and host-owned allocations), `round` (a call's TLB round, frees and uncharge
//! left for after the exclusive lock: [`AddressSpace::defer_rounds`], [`PendingRound`]).

mod alloc;
mod commit;
mod extent;
mod fault;
mod free;
mod image;
mod protect;
mod query;
mod round;
mod write_watch;

#[cfg(test)]
pub(crate) mod tests;

use core::ops::ControlFlow;

use ::alloc::sync::Arc;

use x86_64::PhysAddr;
use x86_64::structures::paging::{PhysFrame, Size4KiB};

use extent::CommittedExtent;
pub use fault::{Access, CheckedUserWrite, FaultOutcome, FAULT_AROUND_MAX};
pub use query::MemoryBasicInformation;
pub use round::PendingRound;

use crate::allocation_map::WideMap;
use crate::frame::{FrameSource, SharedReservation};
use crate::paging::pte::Pte;
use crate::paging::table::{self, TableCensus, Tables};
use crate::paging::tlb::{ActiveCpus, CpuSet, DEFAULT_FLUSH_THRESHOLD, Tlb, TlbBatch};
use crate::placement::GapTree;
use crate::protection::{BaseProtection, CacheMode};
use crate::{ALLOCATION_GRANULARITY, ChargeSource, PAGE_SIZE, PhysMemory, VmError, WorkCounters};

/// The configuration of an address space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpaceConfig {
    /// Lowest address an allocation may use (64 KiB aligned, at least 64 KiB).
    pub min_address: u64,
    /// End (exclusive) of the allocatable range (64 KiB aligned, at most 0x8000_0000_0000);
    /// `max_application_address` is one less.
    pub max_address_end: u64,
    /// Whether the guest holds the lock-memory privilege `MEM_LARGE_PAGES` needs.
    pub large_pages_allowed: bool,
    /// Pages above which an operation's TLB invalidation becomes one full flush (1..=64).
    pub tlb_flush_threshold: usize,
    /// Most allocations the space may hold at once; a reservation past it fails with
    /// [`VmError::NoMemory`] (after every validation check). Each allocation costs the embedding
    /// kernel a little heap, so a kernel with a bounded heap bounds this. Default: unlimited.
    pub max_allocations: usize,
}

impl Default for SpaceConfig {
    /// The Windows x64 layout (win32-semantics §1.1): 0x1_0000 to 0x7FFF_FFFF_0000, large pages
    /// allowed, flush threshold 32.
    fn default() -> Self {
        SpaceConfig {
            min_address: 0x1_0000,
            max_address_end: 0x7FFF_FFFF_0000,
            large_pages_allowed: true,
            tlb_flush_threshold: DEFAULT_FLUSH_THRESHOLD,
            max_allocations: usize::MAX,
        }
    }
}

impl SpaceConfig {
    /// Returns `lpMaximumApplicationAddress`.
    pub const fn max_application_address(&self) -> u64 {
        self.max_address_end - 1
    }
}

/// What an allocation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AllocationKind {
    /// `VirtualAlloc` memory (`MEM_PRIVATE`).
    Private,
    /// A loaded guest program (`MEM_IMAGE`): protect works, free fails with 87.
    Image,
    /// The host's own pages in the guest (`MEM_IMAGE`): every alloc/free/protect fails with 487
    /// (host-abi §9).
    HostOwned,
}

/// One allocation (Windows: a VAD): the unit every operation works within.
///
/// 48 bytes, in this order: what `VirtualQuery` reads when the record answers alone (base to
/// `uniform`) is the first 32 bytes, so that it lies in one cache line for three in four records
/// of the allocation map's slab (48-byte slots). The lazy run (9 bytes) and the committed extent
/// (6) are byte-aligned, so that with `write_watch` they fill the last 16 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Allocation {
    /// Base address (64 KiB aligned).
    pub base: u64,
    /// Size in bytes (a multiple of 4 KiB; not rounded to 64 KiB).
    pub size: u64,
    /// Pages committed now. Lets queries, decommits and protects of wholly reserved or wholly
    /// committed allocations skip the page walk (8 bytes per allocation, none per page).
    pub committed_pages: u64,
    /// The protection given at reservation (`AllocationProtect`, modifiers included).
    pub allocation_protect: u32,
    /// Private, image or host-owned.
    pub kind: AllocationKind,
    /// Mapped with 2 MiB pages (`MEM_LARGE_PAGES`): always committed, fixed protection.
    pub large: bool,
    /// Cache attribute of every page (fixed at allocation time, win32-semantics §2).
    pub cache: CacheMode,
    /// `Some(p)`: every page is committed with protection `p` and none is a guard page (a commit
    /// or protect of the whole allocation makes it so; a decommit, or a commit or protect of part
    /// of it with another protection or a guard, ends it). `VirtualQuery` and the access checks
    /// of system services then read the allocation instead of the page table. `None`: mixed or
    /// partly committed, the page table decides; always `None` for large pages.
    pub uniform: Option<BaseProtection>,
    /// Created with `MEM_WRITE_WATCH`.
    pub write_watch: bool,
    /// The lazy run, as page offsets from `base` (see [`lazy`](Self::lazy)).
    pub(crate) lazy_run: Option<PackedRun>,
    /// The pages that may be committed: none outside it is (`extent.rs`).
    pub(crate) committed_extent: CommittedExtent,
}

const _: () = assert!(core::mem::size_of::<Allocation>() == 48 && core::mem::offset_of!(Allocation, write_watch) == 32);

/// [`LazyRun`] as an allocation keeps it: pages from the allocation's base (packed: 9 bytes,
/// `None` in the protection's niche).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C, packed)]
pub(crate) struct PackedRun {
    first: u32,
    end: u32,
    prot: BaseProtection,
}

/// A run of lazily committed pages of an allocation ([`Allocation::lazy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LazyRun {
    /// First page.
    pub start: u64,
    /// End (exclusive).
    pub end: u64,
    /// The protection of every page of the run.
    pub prot: BaseProtection,
}

impl LazyRun {
    /// Whether the run holds `va`.
    pub const fn contains(&self, va: u64) -> bool {
        self.start <= va && va < self.end
    }

    /// Whether the run and `[start, end)` share a page.
    pub const fn overlaps(&self, start: u64, end: u64) -> bool {
        self.start < end && start < self.end
    }
}

impl Allocation {
    /// Returns the run of pages committed without an entry, if any. A zero entry inside the run
    /// is a committed page with the run's protection, no frame, no guard, no write-watch mark. A
    /// commit of reserved pages with one protection and no guard makes (or extends) the run and
    /// writes no leaf entry (the page tables exist and count these pages in their child counts);
    /// the first touch writes the only one. An operation that would make the run's pages differ
    /// (a protect of part of it with another protection or a guard, a decommit of its middle, an
    /// overlapping commit with another protection) first writes the missing entries; a decommit
    /// at its ends shrinks it. 12 bytes per allocation (page offsets from the base: a run that
    /// would reach past 16 TiB of its allocation is not made), none per page.
    pub fn lazy(&self) -> Option<LazyRun> {
        self.lazy_run.map(|r| LazyRun {
            start: self.base + u64::from(r.first) * PAGE_SIZE,
            end: self.base + u64::from(r.end) * PAGE_SIZE,
            prot: r.prot,
        })
    }

    /// Sets the lazy run (pages inside the allocation); returns `false`, changing nothing, if it
    /// reaches past 16 TiB from the base (no run then: the caller writes the entries).
    pub(crate) fn set_lazy(&mut self, run: Option<LazyRun>) -> bool {
        let Some(r) = run else {
            self.lazy_run = None;
            return true;
        };
        debug_assert!(self.base <= r.start && r.start < r.end && r.end <= self.end());
        match (u32::try_from((r.start - self.base) / PAGE_SIZE), u32::try_from((r.end - self.base) / PAGE_SIZE)) {
            (Ok(first), Ok(end)) => {
                self.lazy_run = Some(PackedRun { first, end, prot: r.prot });
                true
            }
            _ => false,
        }
    }

    /// Adds `delta` to the committed-page count; the allocation stops being uniform unless
    /// every page is committed.
    pub(crate) fn add_committed(&mut self, delta: i64) {
        self.committed_pages = self.committed_pages.checked_add_signed(delta).expect("committed page count");
        if self.committed_pages != self.size / PAGE_SIZE {
            self.uniform = None;
        }
        if self.committed_pages == 0 {
            self.committed_extent = CommittedExtent::EMPTY;
        }
    }

    /// Returns the end address (exclusive).
    pub const fn end(&self) -> u64 {
        self.base + self.size
    }
    /// Returns the end of the 64 KiB blocks the allocation occupies.
    pub const fn block_end(&self) -> u64 {
        (self.end() + ALLOCATION_GRANULARITY - 1) & !(ALLOCATION_GRANULARITY - 1)
    }
    /// Returns the protection of every page of a large-page allocation, fixed when it was made
    /// (`PAGE_READWRITE` or `PAGE_EXECUTE_READWRITE`, win32-semantics §3.5); `None` for an
    /// allocation of 4 KiB pages.
    pub const fn large_protection(&self) -> Option<BaseProtection> {
        if !self.large {
            return None;
        }
        Some(match self.allocation_protect & 0xFF {
            crate::win32::PAGE_EXECUTE_READWRITE => BaseProtection::ExecuteReadWrite,
            _ => BaseProtection::ReadWrite,
        })
    }
}

/// Page counts of one allocation, for a VMMap-like picture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllocationSummary {
    /// The allocation.
    pub allocation: Allocation,
    /// Committed pages.
    pub committed_pages: u64,
    /// Reserved (not committed) pages.
    pub reserved_pages: u64,
    /// Committed pages with an armed guard.
    pub guard_pages: u64,
    /// Committed pages holding a frame (touched).
    pub resident_pages: u64,
}

/// Everything an operation may need besides the space itself. The kernel keeps the frame
/// allocator and the commit charge behind their own locks and builds one of these per call;
/// `frames` and `charge` take those locks per request, never for the whole call (see
/// [`FrameSource`], [`ChargeSource`]).
pub struct VmContext<'a, M: PhysMemory, T: Tlb> {
    /// The physical frames (shared by all spaces): a `FrameAllocator`, or the kernel's handle
    /// to its locked allocator.
    pub frames: &'a mut dyn FrameSource,
    /// Physical memory (the kernel's window, or simulated RAM).
    pub mem: &'a mut M,
    /// TLB invalidation for this space.
    pub tlb: &'a mut T,
    /// The commit charge (shared by all spaces): a `CommitCharge`, or the kernel's handle to
    /// its locked charge.
    pub charge: &'a mut dyn ChargeSource,
    /// Work counters.
    pub counters: &'a mut WorkCounters,
}

impl<M: PhysMemory, T: Tlb> VmContext<'_, M, T> {
    pub(crate) fn tables(&mut self, root: u64) -> Tables<'_, M> {
        Tables { root, mem: self.mem, frames: &mut *self.frames, counters: self.counters, keep_empty: false }
    }
}

/// The virtual address space of one guest: its allocations and its page tables.
///
/// Created with a fresh zeroed PML4 ([`AddressSpace::new`]); the kernel copies its upper-half
/// entries into the root itself (this crate never touches PML4 entries 256–511). Must be
/// torn down with [`AddressSpace::destroy`], which frees everything in the lower half.
#[derive(Debug)]
pub struct AddressSpace {
    root: PhysFrame<Size4KiB>,
    config: SpaceConfig,
    allocations: WideMap<Allocation>,
    gaps: GapTree,
    table_pages: u64,
    /// Bytes reserved by all allocations together (a running count, for `GetMemoryLoad`).
    reserved_bytes: u64,
    /// The frames promised to committed pages that have none yet (demand-zero): one per such
    /// page, taken when the page is first touched, given back when it is decommitted untouched.
    demand_zero: SharedReservation,
    /// The CPUs that have this space's root in CR3: the targets of every TLB round.
    active: Arc<ActiveCpus>,
    /// Whether the call running now leaves its TLB round to the caller
    /// ([`defer_rounds`](Self::defer_rounds), `round.rs`).
    deferring: bool,
    /// The round, frees and uncharge the call running now left (only while `deferring`).
    pending: Option<PendingRound>,
}

impl AddressSpace {
    /// Creates an empty space with a new, zeroed root table.
    ///
    /// # Errors
    ///
    /// [`VmError::InvalidParameter`] if the configuration is inconsistent (unaligned or
    /// out-of-range bounds); [`VmError::NoMemory`] if no frame is available for the root.
    ///
    /// Cost: one frame allocation and one frame zeroed.
    pub fn new(
        config: SpaceConfig,
        frames: &mut dyn FrameSource,
        mem: &mut impl PhysMemory,
        counters: &mut WorkCounters,
    ) -> Result<Self, VmError> {
        let ok = config.min_address >= ALLOCATION_GRANULARITY
            && config.min_address.is_multiple_of(ALLOCATION_GRANULARITY)
            && config.max_address_end.is_multiple_of(ALLOCATION_GRANULARITY)
            && config.max_address_end <= 0x8000_0000_0000
            && config.min_address < config.max_address_end;
        if !ok {
            return Err(VmError::InvalidParameter);
        }
        let root = frames.alloc().map_err(|_| VmError::NoMemory)?;
        mem.zero_frame(root);
        counters.frames_zeroed += 1;
        Ok(AddressSpace {
            root,
            config,
            allocations: WideMap::new(),
            gaps: GapTree::new(config.min_address / ALLOCATION_GRANULARITY, config.max_address_end / ALLOCATION_GRANULARITY),
            table_pages: 0,
            reserved_bytes: 0,
            demand_zero: SharedReservation::empty(),
            active: Arc::new(ActiveCpus::default()),
            deferring: false,
            pending: None,
        })
    }

    /// Returns the root table (PML4) frame, to load into CR3.
    pub fn root(&self) -> PhysFrame<Size4KiB> {
        self.root
    }

    /// Returns the configuration.
    pub fn config(&self) -> &SpaceConfig {
        &self.config
    }

    fn root_pa(&self) -> u64 {
        self.root.start_address().as_u64()
    }

    fn batch(&self) -> TlbBatch {
        TlbBatch::new(self.config.tlb_flush_threshold)
    }

    /// Completes an operation's batch: one TLB round on the CPUs running the space, then the
    /// frees it deferred, then `uncharge` (pages, table pages) given back to the commit charge —
    /// after the frees, so that the charge never counts as available a frame still held. Inside
    /// [`defer_rounds`](Self::defer_rounds) a batch that needs a round is left, with its frees
    /// and uncharge, for the caller's second phase instead (`round.rs`).
    #[inline]
    fn complete<M: PhysMemory, T: Tlb>(&mut self, batch: &mut TlbBatch, uncharge: (u64, u64), cx: &mut VmContext<'_, M, T>) {
        if self.deferring && !batch.is_empty() {
            self.defer(batch, uncharge, cx);
            return;
        }
        self.flush_now(batch, cx);
        round::give_back(uncharge, cx);
    }

    /// One TLB round for `batch` on the CPUs running the space (read after the entries were
    /// written), then the frees it deferred, whether or not the call defers its round: for a
    /// batch that must be emptied before the call goes on (a walk freeing more frames than a
    /// batch carries). A batch that needs no round reads no set (and makes no fence: there is
    /// nothing to order against a CPU joining).
    #[inline]
    fn flush_now<M: PhysMemory, T: Tlb>(&self, batch: &mut TlbBatch, cx: &mut VmContext<'_, M, T>) {
        let targets = if batch.is_empty() { CpuSet::EMPTY } else { self.active.get() };
        batch.flush(targets, cx.tlb, cx.frames, cx.counters);
    }

    /// Records that `cpu` is about to load this space's root into CR3 (before the load). Takes
    /// `&self`: the context switch does not take the space lock (see [`ActiveCpus`]).
    ///
    /// # Panics
    ///
    /// If `cpu >= MAX_CPUS` (64).
    pub fn activate(&self, cpu: usize) {
        self.active.activate(cpu);
    }

    /// Records that `cpu` has loaded another root into CR3 (after the load).
    ///
    /// # Panics
    ///
    /// If `cpu >= MAX_CPUS` (64).
    pub fn deactivate(&self, cpu: usize) {
        self.active.deactivate(cpu);
    }

    /// Returns the CPUs running this space: the targets of its TLB rounds.
    pub fn active_cpus(&self) -> CpuSet {
        self.active.get()
    }

    /// Returns a shared handle to the space's [`ActiveCpus`], so that a context switch can set
    /// and clear its CPU's bit without the space lock (and without the space itself: the handle
    /// outlives it, so a CPU may clear its bit in the set of a space destroyed meanwhile).
    pub fn active_set(&self) -> Arc<ActiveCpus> {
        Arc::clone(&self.active)
    }

    /// Returns the allocation containing `addr`, if any (the unusable 64 KiB tail is not part of
    /// it). Cost: O(log n), a few cache misses at 100,000 allocations (a wide B-tree, `allocation_map`).
    pub fn allocation_at(&self, addr: u64) -> Option<&Allocation> {
        self.allocations.floor(addr).map(|(_, a)| a).filter(|a| addr < a.end())
    }

    /// Returns the page-table pages below the root (PDPTs, PDs, PTs) this space holds now; the
    /// root is one more. Cost: O(1) (kept up to date by every operation; [`census`](Self::census)
    /// recounts by walking).
    pub fn table_pages(&self) -> u64 {
        self.table_pages
    }

    /// Returns how many frames this space holds promised to its committed pages that have none
    /// yet (demand-zero): each is taken at the page's first touch. Cost: O(1).
    pub fn demand_zero_frames(&self) -> u64 {
        self.demand_zero.frames()
    }

    /// Returns the number of allocations.
    pub fn allocation_count(&self) -> usize {
        self.allocations.len()
    }

    /// Returns the bytes reserved by all allocations together (their `RegionSize` sums, image
    /// and host-owned ones included). Cost: O(1), a running count.
    pub fn reserved_bytes(&self) -> u64 {
        self.reserved_bytes
    }

    /// Returns every allocation in address order.
    pub fn allocations(&self) -> impl Iterator<Item = &Allocation> + '_ {
        self.allocations.values()
    }

    /// Whether the allocation's [`uniform`](Allocation::uniform) state, if it has one, is what its
    /// page table holds (for the tests' invariant checks). Cost: a walk of the allocation.
    #[cfg(test)]
    pub(crate) fn uniform_holds(&self, mem: &impl PhysMemory, a: &Allocation) -> bool {
        let Some(p) = a.uniform else { return true };
        let mut holds = !a.large;
        table::scan(mem, self.root_pa(), a.base, a.end(), |va, _, e| {
            let e = Self::state(a, va, e);
            holds &= e.is_some_and(|e| e.is_committed() && !e.guard() && e.prot() == p);
            ControlFlow::Continue(())
        });
        holds
    }

    /// Returns the state of the 4 KiB page at `page` of allocation `a`: its entry, or the state
    /// of a lazily committed page ([`Allocation::lazy`]) for a zero entry.
    ///
    /// Cost: one table walk.
    pub(crate) fn entry(&self, mem: &impl PhysMemory, a: &Allocation, page: u64) -> Pte {
        let e = table::read_pte(mem, self.root_pa(), page);
        if e.0 == 0 { Self::lazy_entry(a, page).unwrap_or(e) } else { e }
    }

    /// The state of the page at `va` of `a` if its entry is zero: committed untouched inside
    /// the allocation's lazy run.
    fn lazy_entry(a: &Allocation, va: u64) -> Option<Pte> {
        let run = a.lazy().filter(|r| r.contains(va))?;
        Some(Pte::committed(run.prot, false, None, false, a.cache))
    }

    /// Whether the page at `va` of `a` is in its lazy run.
    pub(crate) fn in_run(a: &Allocation, va: u64) -> bool {
        a.lazy().is_some_and(|r| r.contains(va))
    }

    /// The state of the page at `va` of `a` as a [`table::scan`] reports it (`e`, `None` where
    /// no table is): a zero entry in the lazy run is a committed page.
    pub(crate) fn state(a: &Allocation, va: u64, e: Option<Pte>) -> Option<Pte> {
        match e {
            Some(Pte(0)) => Self::lazy_entry(a, va).or(e),
            e => e,
        }
    }

    /// The state of the page at `va` if its entry is zero (for [`table::census`]).
    fn lazy_at(&self, va: u64) -> Option<Pte> {
        self.allocation_at(va).and_then(|a| Self::lazy_entry(a, va))
    }

    /// Calls `leaf(va, state)` for every committed 4 KiB page (lazily committed ones included)
    /// and `large(va, entry)` for every 2 MiB mapping; returns the census (see
    /// [`census`](Self::census)).
    pub fn census_with(&self, mem: &impl PhysMemory, leaf: impl FnMut(u64, Pte), large: impl FnMut(u64, u64)) -> TableCensus {
        table::census(mem, self.root_pa(), |va| self.lazy_at(va), leaf, large)
    }

    /// Returns page counts for every allocation in address order (walks the page tables).
    ///
    /// Cost: O(allocations + committed pages); reserved-only ranges are skipped per table.
    pub fn summaries<'s>(&'s self, mem: &'s impl PhysMemory) -> impl Iterator<Item = AllocationSummary> + 's {
        self.allocations.values().map(move |a| self.summary(mem, a))
    }

    fn summary(&self, mem: &impl PhysMemory, a: &Allocation) -> AllocationSummary {
        let pages = a.size / PAGE_SIZE;
        if a.large {
            return AllocationSummary {
                allocation: *a,
                committed_pages: pages,
                reserved_pages: 0,
                guard_pages: 0,
                resident_pages: pages,
            };
        }
        let (mut committed, mut guard, mut resident) = (0, 0, 0);
        table::scan(
            mem,
            self.root_pa(),
            a.base,
            a.end(),
            |va, _, e| {
                if let Some(e) = Self::state(a, va, e).filter(|e| e.is_committed()) {
                    committed += 1;
                    guard += u64::from(e.guard());
                    resident += u64::from(e.frame().is_some());
                }
                ControlFlow::Continue(())
            },
        );
        AllocationSummary {
            allocation: *a,
            committed_pages: committed,
            reserved_pages: pages - committed,
            guard_pages: guard,
            resident_pages: resident,
        }
    }

    /// Walks all page tables of the lower half: table pages, committed, resident and present
    /// pages, 2 MiB mappings, and child-count consistency.
    ///
    /// Cost: O(table pages × 512). Meant for tests, statistics and debugging.
    pub fn census(&self, mem: &impl PhysMemory) -> TableCensus {
        self.census_with(mem, |_, _| {}, |_, _| {})
    }

    /// Translates a user address: the physical address and the raw leaf entry, if present.
    ///
    /// Cost: one table walk.
    pub fn translate(&self, mem: &impl PhysMemory, addr: u64) -> Option<(PhysAddr, u64)> {
        if addr >= self.config.max_address_end {
            return None;
        }
        table::translate(mem, self.root_pa(), addr).map(|(pa, e)| (PhysAddr::new(pa), e))
    }

    /// Releases every allocation and every table page of the lower half, and returns the root
    /// frame (the caller frees it, after removing its own upper-half entries if it wishes).
    ///
    /// Cost: O(allocations log n + committed pages + table pages).
    ///
    /// # Panics
    ///
    /// If a lower-half PML4 entry survives (a kernel bug).
    pub fn destroy<M: PhysMemory, T: Tlb>(mut self, cx: &mut VmContext<'_, M, T>) -> PhysFrame<Size4KiB> {
        let bases: ::alloc::vec::Vec<u64> = self.allocations.keys().collect();
        for base in bases {
            let a = self.allocations[&base];
            self.release_allocation(cx, &a);
        }
        for i in 0..256u64 {
            let e = cx.mem.read_u64(PhysAddr::new(self.root_pa() + i * 8));
            assert_eq!(e, 0, "address space: PML4 entry {i} survives teardown");
        }
        // Every committed page is gone, and with it every promised frame.
        cx.frames.unreserve(self.demand_zero.take_all());
        self.root
    }
}

/// Rounds `v` up to a multiple of the power of two `to`, saturating at the highest multiple
/// (guest-supplied ends near 2^64 must compare as "too large", never wrap or panic).
pub(crate) const fn round_up(v: u64, to: u64) -> u64 {
    match v.checked_add(to - 1) {
        Some(x) => x & !(to - 1),
        None => !(to - 1),
    }
}
