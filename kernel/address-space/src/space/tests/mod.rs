//! Unit tests of the address space: one test (or more) per rule of win32-semantics, each error
//! case checking that nothing changed. Shared fixture here; tests grouped by behaviour.

mod alloc;
mod equivalence;
mod failure_injection;
mod fault;
mod free;
mod images_large;
mod protect;
mod query;
mod query_scale;
mod round;
mod smp;
mod tables;
mod write_watch;

use ::alloc::vec::Vec;

use crate::frame::FrameAllocator;
use crate::paging::pte::Pte;
use crate::paging::table::{self, TableCensus};
use crate::sim::{SimAccess, SimPhysMemory, TlbModel, sim_access, sim_read, sim_write};
use crate::win32::*;
use crate::*;

/// The tests' random numbers (splitmix64): seeded, reproducible.
pub(crate) struct Rng(u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

/// Physical base of the simulated RAM (2 MiB aligned, so 2 MiB runs exist).
pub(crate) const RAM_BASE: u64 = 0x20_0000;

/// Everything a test needs: RAM, allocator, charge, TLB model, one space.
pub(crate) struct Fx {
    pub frames: FrameAllocator,
    pub mem: SimPhysMemory,
    pub tlb: TlbModel,
    pub charge: CommitCharge,
    pub counters: WorkCounters,
    pub space: Option<AddressSpace>,
    pub start_used: u64,
    /// Runs each call in two phases (`AddressSpace::defer_rounds`), leaving its round in
    /// `pending` until the next call or [`finish_round`](Self::finish_round).
    pub two_phase: bool,
    pub pending: Option<PendingRound>,
}

/// A picture of all state an operation may change.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Snapshot {
    allocations: Vec<Allocation>,
    entries: Vec<(u64, u64)>,
    census: TableCensus,
    charge: (u64, u64),
    frames: (u64, u64, u64),
    counters: WorkCounters,
}

impl Fx {
    pub fn new() -> Self {
        Self::with(SpaceConfig::default(), 16 << 20, 100_000, 0)
    }

    pub fn with(config: SpaceConfig, ram: usize, limit: u64, reserve: u64) -> Self {
        let mut mem = SimPhysMemory::new(RAM_BASE, ram);
        let mut frames = FrameAllocator::new(&[mem.range()]);
        let mut counters = WorkCounters::default();
        let start_used = frames.used_frames();
        let space = AddressSpace::new(config, &mut frames, &mut mem, &mut counters).expect("space");
        Fx {
            frames,
            mem,
            tlb: TlbModel::new(),
            charge: CommitCharge::new(limit, reserve),
            counters,
            space: Some(space),
            start_used,
            two_phase: false,
            pending: None,
        }
    }

    /// Runs `f` with the space and a context (after the round the previous call left, if
    /// any: a call waits for it). In two-phase mode `f` runs as phase 1 and its round is left
    /// in `pending`.
    pub fn run<R>(&mut self, f: impl FnOnce(&mut AddressSpace, &mut VmContext<'_, SimPhysMemory, TlbModel>) -> R) -> R {
        self.finish_round();
        let Fx { frames, mem, tlb, charge, counters, space, two_phase, pending, .. } = self;
        let (space, cx) = (space.as_mut().expect("space"), &mut VmContext { frames, mem, tlb, charge, counters });
        if !*two_phase {
            return f(space, cx);
        }
        let (result, left) = space.defer_rounds(cx, f);
        *pending = left;
        result
    }

    /// Completes the round the last call left (phase 2), if any.
    pub fn finish_round(&mut self) {
        if let Some(round) = self.pending.take() {
            let Fx { frames, mem, tlb, charge, counters, space, .. } = self;
            round.complete(space.as_ref().expect("space"), &mut VmContext { frames, mem, tlb, charge, counters });
        }
    }

    pub fn sp(&self) -> &AddressSpace {
        self.space.as_ref().expect("space")
    }

    pub fn alloc(&mut self, addr: u64, size: u64, ty: u32, prot: u32) -> Result<u64, VmError> {
        self.run(|s, cx| s.virtual_alloc(cx, addr, size, ty, prot, CriticalLevel::Task))
    }

    pub fn alloc_at(&mut self, addr: u64, size: u64, ty: u32, prot: u32, level: CriticalLevel) -> Result<u64, VmError> {
        self.run(|s, cx| s.virtual_alloc(cx, addr, size, ty, prot, level))
    }

    pub fn free(&mut self, addr: u64, size: u64, ty: u32) -> Result<(), VmError> {
        self.run(|s, cx| s.virtual_free(cx, addr, size, ty))
    }

    pub fn protect(&mut self, addr: u64, size: u64, prot: u32) -> Result<u32, VmError> {
        self.run(|s, cx| s.virtual_protect(cx, addr, size, prot))
    }

    pub fn query(&self, addr: u64) -> Result<MemoryBasicInformation, VmError> {
        self.sp().virtual_query(&self.mem, addr)
    }

    /// Query shorthand: (region size, state, protect).
    pub fn q(&self, addr: u64) -> (u64, u32, u32) {
        let m = self.query(addr).expect("query");
        (m.region_size, m.state, m.protect)
    }

    pub fn touch(&mut self, addr: u64, access: Access) -> SimAccess {
        self.run(|s, cx| sim_access(s, cx, addr, access))
    }

    pub fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), FaultOutcome> {
        self.run(|s, cx| sim_write(s, cx, addr, data))
    }

    pub fn read(&mut self, addr: u64, len: usize) -> Result<Vec<u8>, FaultOutcome> {
        let mut buf = ::alloc::vec![0u8; len];
        self.run(|s, cx| sim_read(s, cx, addr, &mut buf))?;
        Ok(buf)
    }

    pub fn write_u64(&mut self, addr: u64, v: u64) -> Result<(), FaultOutcome> {
        self.write(addr, &v.to_le_bytes())
    }

    pub fn read_u64(&mut self, addr: u64) -> Result<u64, FaultOutcome> {
        self.read(addr, 8).map(|b| u64::from_le_bytes(b.try_into().expect("8")))
    }

    /// What a kernel does after a first touch of `page` (`AddressSpace::fault_around`): maps the
    /// pages it says with frames zeroed outside the space (`prefault_shared`), gives back the
    /// frames not used, and returns how many pages were mapped.
    pub fn fault_around_after(&mut self, page: u64) -> usize {
        self.fault_around_with_frames(page).0
    }

    /// As [`fault_around_after`](Self::fault_around_after), also returning how many frames it
    /// could get for the pages (fewer than asked for when frames run out).
    pub fn fault_around_with_frames(&mut self, page: u64) -> (usize, u64) {
        let ahead = self.sp().fault_around(&self.mem, page) as usize;
        let mut frames = ::alloc::vec::Vec::new();
        for _ in 0..ahead {
            // As the kernel does: as many frames as there are (fault-around is a hint).
            let Ok(f) = self.frames.alloc() else { break };
            self.mem.write_bytes(f.start_address(), &[0x5A; 64]);
            self.mem.zero_frame(f);
            frames.push(Some(f));
        }
        let got = frames.len() as u64;
        let mapped = self.run(|s, cx| s.prefault_shared(cx, page + PAGE_SIZE, &mut frames));
        for f in frames.into_iter().flatten() {
            self.frames.free(f).expect("an unused frame");
        }
        (mapped, got)
    }

    /// The page's state: its entry, or that of a lazily committed page without one.
    pub fn pte(&self, addr: u64) -> Pte {
        match self.sp().allocation_at(addr) {
            Some(a) => self.sp().entry(&self.mem, a, addr & !(PAGE_SIZE - 1)),
            None => table::read_pte(&self.mem, self.sp().root().start_address().as_u64(), addr),
        }
    }

    /// The page's entry as written in its page table.
    pub fn raw_pte(&self, addr: u64) -> Pte {
        table::read_pte(&self.mem, self.sp().root().start_address().as_u64(), addr)
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut entries = Vec::new();
        let mut large = Vec::new();
        let census = self.sp().census_with(
            &self.mem,
            |va, e| entries.push((va, e.0)),
            |va, e| large.push((va, e)),
        );
        entries.extend(large);
        Snapshot {
            allocations: self.sp().allocations().copied().collect(),
            entries,
            census,
            charge: (self.charge.committed_pages(), self.charge.table_pages()),
            frames: (self.frames.free_frames(), self.frames.reserved_frames(), self.frames.used_frames()),
            counters: self.counters,
        }
    }

    /// Asserts `r` is `err` and that nothing changed.
    #[track_caller]
    pub fn fails<T: core::fmt::Debug>(&mut self, err: VmError, f: impl FnOnce(&mut Fx) -> Result<T, VmError>) {
        let before = self.snapshot();
        let r = f(self);
        assert_eq!(r.map(|_| ()), Err(err));
        assert_eq!(self.snapshot(), before, "a failed call changed state");
    }

    /// Checks the global invariants: charge = committed pages, frames in use = resident pages +
    /// table pages + root (+ 512 per large page), reserved frames = committed pages without a
    /// frame, table counts consistent, no stale TLB entry.
    #[track_caller]
    pub fn check(&self) {
        let c = self.sp().census(&self.mem);
        assert_eq!(c.bad_counts, 0, "kept child counts disagree with tables");
        assert_eq!(c.table_pages, self.sp().table_pages(), "kept table-page count");
        assert_eq!(self.charge.committed_pages(), c.committed_pages + c.large_pages * 512, "charge");
        assert_eq!(self.charge.table_pages(), c.table_pages, "table pages charged");
        assert_eq!(
            self.frames.used_frames() - self.start_used,
            c.pages_with_frame + c.table_pages + 1 + c.large_pages * 512,
            "frames in use"
        );
        assert_eq!(self.frames.reserved_frames(), c.committed_pages - c.pages_with_frame, "reserved frames");
        assert_eq!(self.sp().demand_zero_frames(), c.committed_pages - c.pages_with_frame, "frames the space holds promised");
        assert_eq!(self.tlb.stale_entries(self.sp(), &self.mem), Vec::<u64>::new(), "stale TLB entries");
        for s in self.sp().summaries(&self.mem) {
            assert_eq!(s.committed_pages, s.allocation.committed_pages, "committed count of {:#x}", s.allocation.base);
            assert!(self.sp().uniform_holds(&self.mem, &s.allocation), "uniform state of {:#x}: {:?}", s.allocation.base, s.allocation.uniform);
            assert!(self.sp().extent_holds(&self.mem, &s.allocation), "committed extent of {:#x}: {:?}", s.allocation.base, s.allocation.committed_extent());
        }
    }

    /// Destroys the space (every allocation released, every frame and promise given back).
    fn destroy_space(&mut self) {
        self.finish_round();
        let Fx { frames, mem, tlb, charge, counters, space, .. } = self;
        let root = space.take().expect("space").destroy(&mut VmContext { frames, mem, tlb, charge, counters });
        self.frames.free(root).expect("root frame");
    }

    /// Tears the space down and checks every frame came back.
    pub fn teardown(&mut self) {
        self.destroy_space();
        assert_eq!(self.frames.used_frames(), self.start_used);
        assert_eq!(self.frames.reserved_frames(), 0);
        assert_eq!(self.charge.committed_pages(), 0);
        assert_eq!(self.charge.table_pages(), 0);
    }
}

impl Drop for Fx {
    /// A space must be destroyed, not dropped (it owns the frames promised to its committed
    /// pages): a test that does not end with [`Fx::teardown`] has it destroyed here.
    fn drop(&mut self) {
        if self.space.is_some() && !std::thread::panicking() {
            self.destroy_space();
        }
        // A failed test may leave a round: its frames die with the simulated RAM.
        core::mem::forget(self.pending.take());
    }
}

pub(crate) const RC: u32 = MEM_RESERVE | MEM_COMMIT;
pub(crate) const A: u64 = 0x5000_0000;

#[test]
fn fixture_starts_and_ends_clean() {
    let mut fx = Fx::new();
    fx.check();
    fx.teardown();
}

/// A barrier for the threads of one test that a failing thread breaks: the others then fail too,
/// instead of waiting forever (`std::sync::Barrier` would leave them waiting). Used by the
/// concurrency tests here and by the commit charge's.
#[derive(Default)]
pub(crate) struct Rendezvous {
    arrived: std::sync::atomic::AtomicUsize,
    generation: std::sync::atomic::AtomicUsize,
    failed: std::sync::atomic::AtomicBool,
}

/// Breaks its [`Rendezvous`] if dropped while its thread panics.
pub(crate) struct FailsRendezvous<'a>(&'a Rendezvous);

impl Drop for FailsRendezvous<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.failed.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

impl Rendezvous {
    pub(crate) fn fails_with_this_thread(&self) -> FailsRendezvous<'_> {
        FailsRendezvous(self)
    }

    /// Returns once `n` threads called it (this time round).
    pub(crate) fn wait(&self, n: usize) {
        use std::sync::atomic::Ordering::SeqCst;
        let generation = self.generation.load(SeqCst);
        if self.arrived.fetch_add(1, SeqCst) + 1 == n {
            self.arrived.store(0, SeqCst);
            self.generation.fetch_add(1, SeqCst);
            return;
        }
        while self.generation.load(SeqCst) == generation {
            assert!(!self.failed.load(SeqCst), "another thread failed");
            std::thread::yield_now();
        }
    }
}
