//! Calls in two phases (`AddressSpace::defer_rounds`, then `PendingRound::complete`): phase 1
//! makes no round, frees nothing and gives no charge back; between the phases a fault sees the
//! call's finished state; phase 2 makes one round, then frees — each frame only once no CPU's
//! TLB model reaches it —, then gives the charge back; and the end state (entries, records,
//! frames, charge, work counters) is the one-call API's, state for state.

use ::alloc::format;
use ::alloc::string::String;
use ::alloc::vec::Vec;
use core::cell::RefCell;

use x86_64::VirtAddr;
use x86_64::structures::paging::{PhysFrame, Size2MiB, Size4KiB};

use super::RAM_BASE;
use crate::frame::{FrameAllocator, FrameError, FrameSource};
use crate::paging::tlb::{FlushRound, Tlb};
use crate::sim::{SimAccess, SimPhysMemory, SmpTlbModel, sim_access};
use crate::win32::*;
use crate::*;

/// What phase 2 did, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Round,
    Free,
    Uncharge,
}

/// The TLBs of two CPUs (0 calls, 1 touches), shared by the round and the free check.
struct Tlbs<'a> {
    model: &'a RefCell<SmpTlbModel>,
    log: &'a RefCell<Vec<Event>>,
}

impl Tlb for Tlbs<'_> {
    fn invalidate_page(&mut self, addr: VirtAddr) {
        self.model.borrow_mut().invalidate_page(addr);
    }
    fn flush_all(&mut self) {
        self.model.borrow_mut().flush_all();
    }
    fn shootdown(&mut self, round: &FlushRound<'_>) -> u32 {
        self.log.borrow_mut().push(Event::Round);
        self.model.borrow_mut().shootdown(round)
    }
}

/// The allocator, checking at every free that no CPU's TLB model still reaches the frame (§4(c)).
struct Watched<'a> {
    frames: &'a mut FrameAllocator,
    model: &'a RefCell<SmpTlbModel>,
    log: &'a RefCell<Vec<Event>>,
}

impl Watched<'_> {
    fn check(&self, start: u64, len: u64) {
        let reached: Vec<usize> = (0..2).filter(|&c| self.model.borrow().cpus[c].reaches(start, len)).collect();
        assert!(reached.is_empty(), "frame {start:#x} freed while the TLB of CPU {reached:?} still reaches it");
        self.log.borrow_mut().push(Event::Free);
    }
}

impl FrameSource for Watched<'_> {
    fn with_allocator(&mut self, f: &mut dyn FnMut(&mut FrameAllocator)) {
        f(self.frames)
    }
    fn free(&mut self, frame: PhysFrame<Size4KiB>) -> Result<(), FrameError> {
        self.check(frame.start_address().as_u64(), PAGE_SIZE);
        self.frames.free(frame)
    }
    fn free_2mib(&mut self, frame: PhysFrame<Size2MiB>) -> Result<(), FrameError> {
        self.check(frame.start_address().as_u64(), LARGE_PAGE_SIZE);
        self.frames.free_2mib(frame)
    }
}

/// The charge, logging every give-back.
struct Logged<'a> {
    charge: &'a CommitCharge,
    log: &'a RefCell<Vec<Event>>,
}

impl ChargeSource for Logged<'_> {
    fn try_charge(&mut self, pages: u64, tables: u64, level: CriticalLevel) -> Result<(), VmError> {
        self.charge.try_charge(pages, tables, level)
    }
    fn uncharge(&mut self, pages: u64, tables: u64) {
        self.log.borrow_mut().push(Event::Uncharge);
        self.charge.uncharge(pages, tables);
    }
}

type Cx<'a, 'b> = VmContext<'a, SimPhysMemory, Tlbs<'b>>;

/// Two CPUs running one space, CPU 1 touching, CPU 0 calling.
struct World {
    frames: FrameAllocator,
    mem: SimPhysMemory,
    model: RefCell<SmpTlbModel>,
    log: RefCell<Vec<Event>>,
    charge: CommitCharge,
    counters: WorkCounters,
    space: AddressSpace,
    start_used: u64,
}

/// Everything a call may change, to compare the two-phase and the one-call runs.
#[derive(Debug, PartialEq, Eq)]
struct State {
    allocations: Vec<Allocation>,
    census: crate::paging::table::TableCensus,
    entries: Vec<(u64, u64)>,
    frames: (u64, u64),
    charge: (u64, u64),
    counters: WorkCounters,
    answers: Vec<String>,
}

const BASE: u64 = 0x4000_0000;

impl World {
    fn new() -> World {
        let mut mem = SimPhysMemory::new(RAM_BASE, 16 << 20);
        let mut frames = FrameAllocator::new(&[mem.range()]);
        let mut counters = WorkCounters::default();
        let start_used = frames.used_frames();
        let cfg = SpaceConfig { min_address: BASE, max_address_end: BASE + (16 << 20), ..SpaceConfig::default() };
        let space = AddressSpace::new(cfg, &mut frames, &mut mem, &mut counters).expect("space");
        space.activate(0);
        space.activate(1);
        let model = RefCell::new(SmpTlbModel::new(2));
        World { frames, mem, model, log: RefCell::new(Vec::new()), charge: CommitCharge::new(4000, 0), counters, space, start_used }
    }

    /// Runs `f` on CPU 0 with the watched context.
    fn call<R>(&mut self, f: impl FnOnce(&mut AddressSpace, &mut Cx<'_, '_>) -> R) -> R {
        let World { frames, mem, model, log, charge, counters, space, .. } = self;
        let (model, log) = (&*model, &*log);
        model.borrow_mut().current = 0;
        let (tlb, frames, charge) = (&mut Tlbs { model, log }, &mut Watched { frames, model, log }, &mut Logged { charge, log });
        f(space, &mut VmContext { frames, mem, tlb, charge, counters })
    }

    /// CPU 1 accesses `addr` (a write stores the address): its TLB caches the translation.
    fn touch(&mut self, addr: u64, access: Access) -> SimAccess {
        let World { frames, mem, model, charge, counters, space, .. } = self;
        let mut tlb = model.borrow_mut();
        tlb.current = 1;
        let done = sim_access(space, &mut VmContext { frames, mem, tlb: &mut *tlb, charge, counters }, addr, access);
        if let (SimAccess::Done(pa), Access::Write) = (done, access) {
            mem.write_bytes(pa, &addr.to_le_bytes());
        }
        done
    }

    fn state(&self, answers: Vec<String>) -> State {
        let root = self.space.root().start_address().as_u64();
        let mut entries = Vec::new();
        crate::paging::table::scan(&self.mem, root, BASE, BASE + (16 << 20), |va, _, e| {
            if let Some(e) = e.filter(|e| e.0 != 0) {
                entries.push((va, e.0));
            }
            core::ops::ControlFlow::Continue(())
        });
        State {
            allocations: self.space.allocations().copied().collect(),
            census: self.space.census(&self.mem),
            entries,
            frames: (self.frames.used_frames(), self.frames.reserved_frames()),
            charge: (self.charge.committed_pages(), self.charge.table_pages()),
            counters: self.counters,
            answers,
        }
    }

    fn teardown(self) {
        let World { mut frames, mut mem, model, log, charge, mut counters, space, start_used } = self;
        let cx = &mut VmContext { frames: &mut frames, mem: &mut mem, tlb: &mut Tlbs { model: &model, log: &log }, charge: &mut &charge, counters: &mut counters };
        let root = space.destroy(cx);
        frames.free(root).expect("root");
        assert_eq!((frames.used_frames(), frames.reserved_frames(), charge.committed_pages(), charge.table_pages()), (start_used, 0, 0, 0));
    }
}

/// A narrowing call made from CPU 0 on what [`prepare`] set up: its answer as text.
type Call = fn(&mut AddressSpace, &mut Cx<'_, '_>) -> String;

/// What the calls work on, in a fresh world: a committed 4 MiB allocation at `BASE` (two page
/// tables' worth) whose pages CPU 1 wrote, a write-watch allocation at `BASE + 8 MiB` with
/// written pages, and a 2 MiB large-page allocation at `BASE + 12 MiB` that CPU 1 read.
fn prepare(w: &mut World) {
    let rw = |w: &mut World, addr, size, ty| w.call(|s, cx| s.virtual_alloc(cx, addr, size, ty, PAGE_READWRITE, CriticalLevel::Task)).expect("alloc");
    rw(w, BASE, 4 << 20, MEM_RESERVE | MEM_COMMIT);
    rw(w, BASE + (8 << 20), 0x10_0000, MEM_RESERVE | MEM_COMMIT | MEM_WRITE_WATCH);
    rw(w, BASE + (12 << 20), 2 << 20, MEM_RESERVE | MEM_COMMIT | MEM_LARGE_PAGES);
    for p in (0..1024).step_by(7).chain([1023]) {
        assert!(matches!(w.touch(BASE + p * PAGE_SIZE, Access::Write), SimAccess::Done(_)));
    }
    for p in 0..40 {
        assert!(matches!(w.touch(BASE + (8 << 20) + p * PAGE_SIZE, Access::Write), SimAccess::Done(_)));
    }
    // Present and clean: a kernel write there sets the mark, which needs a round.
    assert!(matches!(w.touch(BASE + (8 << 20) + 0x4_1000, Access::Read), SimAccess::Done(_)));
    assert!(matches!(w.touch(BASE + (12 << 20) + 0x5000, Access::Read), SimAccess::Done(_)));
    w.log.borrow_mut().clear();
}

/// A narrowing call: its name, the call, and a page it changed that a fault between the phases
/// must find refused (`Some`), or `None`.
type Case = (&'static str, Call, Option<(u64, Access)>);

/// The narrowing calls.
const CALLS: [Case; 7] = [
    ("decommit of touched pages", |s, cx| format!("{:?}", s.virtual_free(cx, BASE + 0x3_0000, 0x20_0000, MEM_DECOMMIT)), Some((BASE + 0x3_1000, Access::Read))),
    ("release, tables freed", |s, cx| format!("{:?}", s.virtual_free(cx, BASE, 0, MEM_RELEASE)), Some((BASE + 0x1C_0000, Access::Read))),
    ("protect to no access", |s, cx| format!("{:?}", s.virtual_protect(cx, BASE + 0x7000, 0x40_0000 - 0x7000, PAGE_NOACCESS)), Some((BASE + 0x7000, Access::Read))),
    ("protect to read-only, then the old value's mark (one call)", |s, cx| {
        let old = s.virtual_protect(cx, BASE, 0x10_0000, PAGE_READONLY);
        let w = s.check_user_write(cx.mem, BASE + (8 << 20) + 0x4_1000, 4).expect("a writable page with a frame");
        s.complete_user_write(cx, w, &1u32.to_le_bytes());
        format!("{old:?}")
    }, Some((BASE + 0x7000, Access::Write))),
    ("write-watch reset", |s, cx| format!("{:?}", s.reset_write_watch(cx, BASE + (8 << 20), 0x10_0000)), None),
    ("get and reset write watch", |s, cx| {
        let mut out = [0u64; 64];
        let got = s.get_write_watch(cx, WRITE_WATCH_FLAG_RESET, BASE + (8 << 20), 0x10_0000, &mut out);
        format!("{got:?} {:x?}", &out[..*got.as_ref().unwrap_or(&0)])
    }, None),
    ("release of large pages", |s, cx| format!("{:?}", s.virtual_free(cx, BASE + (12 << 20), 0, MEM_RELEASE)), Some((BASE + (12 << 20) + 0x5000, Access::Read))),
];

/// Each narrowing call in two phases: phase 1 leaves a round and does no round, free or
/// uncharge, with CPU 1's TLB still reaching what it unmapped; between the phases the space
/// answers a query and a fault from its finished state (a shared fault with a zeroed frame in
/// hand is refused and keeps the frame: no demand-zero page enters the range); phase 2 makes
/// exactly one round, then the frees (each checked unreachable), then at most one give-back of
/// charge, last. Then the state equals that of the same call made in one go.
#[test]
fn a_call_in_two_phases_frees_after_its_round_and_ends_as_in_one() {
    for (name, call, refused) in CALLS {
        let mut one = World::new();
        prepare(&mut one);
        let answer = one.call(call);
        let log: Vec<Event> = one.log.borrow_mut().drain(..).collect();
        // In one go each operation makes its round (the protect and the mark: two).
        let rounds = log.iter().filter(|&&e| e == Event::Round).count();
        assert!(rounds >= 1, "{name} in one call: {log:?}");
        assert_ordered(name, &log);

        let mut two = World::new();
        prepare(&mut two);
        let before = (two.frames.used_frames(), two.charge.committed_pages(), two.charge.table_pages());
        let (answer2, pending) = two.call(|s, cx| s.defer_rounds(cx, call));
        let pending = pending.unwrap_or_else(|| panic!("{name}: no round left"));
        assert_eq!(two.log.borrow().as_slice(), &[], "{name}: phase 1 made a round, freed or gave charge back");
        assert_eq!((two.frames.used_frames(), two.charge.committed_pages(), two.charge.table_pages()), before, "{name}: phase 1");
        let frees = pending.frames();
        if frees != (0, 0) {
            assert!(!two.model.borrow().cpus[1].is_empty(), "{name}: CPU 1 cached nothing, the test shows nothing");
        }
        // Between the phases: the finished state for a query and for a fault.
        assert_eq!(two.space.allocations().copied().collect::<Vec<_>>(), one.space.allocations().copied().collect::<Vec<_>>(), "{name}: records");
        for a in (0..16u64 << 20).step_by(0x1_0000) {
            assert_eq!(two.space.virtual_query(&two.mem, BASE + a), one.space.virtual_query(&one.mem, BASE + a), "{name}: query at +{a:#x}");
        }
        if let Some((page, access)) = refused {
            let mut zeroed = Some(two.frames.alloc().expect("frame"));
            let got = two.call(|s, cx| s.handle_fault_shared(cx, page, access, &mut zeroed));
            assert_eq!(got, Some(FaultOutcome::AccessViolation { access, address: page }), "{name}: a fault between the phases");
            two.frames.free(zeroed.expect("the zeroed frame was not used")).expect("free");
        }
        two.call(|s, cx| pending.complete(s, cx));
        let log: Vec<Event> = two.log.borrow_mut().drain(..).collect();
        assert_eq!(log.first(), Some(&Event::Round), "{name}: phase 2 starts with its round: {log:?}");
        assert_eq!(log.iter().filter(|&&e| e == Event::Round).count(), 1, "{name}: one round: {log:?}");
        assert_eq!(log.iter().filter(|&&e| e == Event::Free).count(), frees.0 + frees.1, "{name}: frees");
        assert_ordered(name, &log);
        assert!(two.model.borrow().stale_entries(&two.space, &two.mem).is_empty(), "{name}: stale entries after phase 2");
        let (mut a, mut b) = (two.state(Vec::from([answer2])), one.state(Vec::from([answer])));
        if rounds > 1 {
            // The rounds merged into one: the same work but the invalidations.
            for c in [&mut a.counters, &mut b.counters] {
                (c.shootdown_rounds, c.shootdown_ipis, c.invlpg, c.full_flushes) = (0, 0, 0, 0);
            }
        }
        assert_eq!(a, b, "{name}: two phases and one call end alike");
        one.teardown();
        two.teardown();
    }
}

/// Rounds before frees, frees before the charge given back (which comes once, last).
fn assert_ordered(name: &str, log: &[Event]) {
    let last = |e| log.iter().rposition(|&x| x == e);
    let first = |e| log.iter().position(|&x| x == e);
    if let (Some(round), Some(free)) = (last(Event::Round), first(Event::Free)) {
        assert!(round < free, "{name}: a frame freed before the round: {log:?}");
    }
    if let Some(uncharge) = first(Event::Uncharge) {
        assert_eq!(uncharge, log.len() - 1, "{name}: the charge given back before a free or round: {log:?}");
    }
}

/// Calls that change no entry a CPU may cache leave no round (a reservation, a commit of new
/// pages, a query-free decommit of untouched pages, a failed call) and free what needs no round
/// at once.
#[test]
fn calls_needing_no_round_leave_none() {
    let mut w = World::new();
    let (got, left) = w.call(|s, cx| s.defer_rounds(cx, |s, cx| s.virtual_alloc(cx, BASE, 0x10_0000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, CriticalLevel::Task)));
    assert!(got.is_ok() && left.is_none());
    let (got, left) = w.call(|s, cx| s.defer_rounds(cx, |s, cx| s.virtual_free(cx, BASE, 0x8000, MEM_DECOMMIT)));
    assert!(got.is_ok() && left.is_none(), "untouched pages: no round");
    let (got, left) = w.call(|s, cx| s.defer_rounds(cx, |s, cx| s.virtual_free(cx, BASE + 0x1000, 0, MEM_RELEASE)));
    assert!(got == Err(VmError::FreeNotAtBase) && left.is_none());
    let (got, left) = w.call(|s, cx| s.defer_rounds(cx, |s, cx| s.virtual_free(cx, BASE, 0, MEM_RELEASE)));
    assert!(got.is_ok() && left.is_some(), "the release frees the page table: a round");
    w.call(|s, cx| left.expect("round").complete(s, cx));
    w.teardown();
}

/// Two narrowing operations in one `defer_rounds` leave one round covering both; past
/// `MAX_DEFERRED` frames together the earlier one is completed first (under the exclusive lock),
/// so the round left carries at most that many.
#[test]
fn rounds_left_by_one_call_merge_up_to_the_bound() {
    use crate::paging::tlb::MAX_DEFERRED;
    let mut w = World::new();
    let size = (MAX_DEFERRED as u64 * 3 / 4) * PAGE_SIZE;
    for (i, base) in [BASE, BASE + (8 << 20)].into_iter().enumerate() {
        w.call(|s, cx| s.virtual_alloc(cx, base, size, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, CriticalLevel::Task)).expect("alloc");
        for p in 0..size / PAGE_SIZE {
            assert!(matches!(w.touch(base + p * PAGE_SIZE, Access::Write), SimAccess::Done(_)), "allocation {i} page {p}");
        }
    }
    // Two small decommits: one round for both.
    let (_, left) = w.call(|s, cx| {
        s.defer_rounds(cx, |s, cx| {
            s.virtual_free(cx, BASE, 0x4000, MEM_DECOMMIT).expect("decommit");
            s.virtual_free(cx, BASE + (8 << 20), 0x4000, MEM_DECOMMIT).expect("decommit");
        })
    });
    let left = left.expect("a round");
    assert_eq!((left.frames(), left.uncharge(), w.log.borrow().len()), ((8, 0), (8, 0), 0));
    w.call(|s, cx| left.complete(s, cx));
    assert_eq!(w.log.borrow_mut().drain(..).filter(|&e| e == Event::Round).count(), 1);
    // Two large ones: the first is completed when the second would pass the bound.
    let (_, left) = w.call(|s, cx| {
        s.defer_rounds(cx, |s, cx| {
            s.virtual_free(cx, BASE, 0, MEM_RELEASE).expect("release");
            s.virtual_free(cx, BASE + (8 << 20), 0, MEM_RELEASE).expect("release");
        })
    });
    let left = left.expect("a round");
    assert!(left.frames().0 <= MAX_DEFERRED && left.frames().0 >= (size / PAGE_SIZE) as usize, "{:?}", left.frames());
    assert_eq!(w.log.borrow().iter().filter(|&&e| e == Event::Round).count(), 1, "the first release completed in phase 1");
    w.call(|s, cx| left.complete(s, cx));
    assert!(w.model.borrow().stale_entries(&w.space, &w.mem).is_empty());
    w.teardown();
}
