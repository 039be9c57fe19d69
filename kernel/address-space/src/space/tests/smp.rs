//! Several CPUs on one address space: the shootdown protocol (one round per call, exactly the
//! CPUs running the space, none when only the caller runs it, frames freed after the round),
//! and a concurrency test with real threads against the reference model.

use ::alloc::format;
use ::alloc::string::String;
use ::alloc::vec::Vec;
use std::sync::{Arc, Mutex};

use super::{RAM_BASE, Rendezvous, Rng};
use crate::frame::FrameAllocator;
use crate::model::{Env, Model};
use crate::paging::table;
use crate::paging::tlb::CpuSet;
use crate::sim::{SimAccess, SimPhysMemory, SmpTlbModel, sim_access};
use crate::win32::*;
use crate::*;

/// RAM, allocator, charge, one TLB per CPU and one space: what the kernel keeps behind its locks.
struct World {
    frames: FrameAllocator,
    mem: SimPhysMemory,
    tlb: SmpTlbModel,
    charge: CommitCharge,
    counters: WorkCounters,
    space: AddressSpace,
    start_used: u64,
}

impl World {
    fn new(cfg: SpaceConfig, cpus: usize, ram: usize, limit: u64) -> Self {
        let mut mem = SimPhysMemory::new(RAM_BASE, ram);
        let mut frames = FrameAllocator::new(&[mem.range()]);
        let mut counters = WorkCounters::default();
        let start_used = frames.used_frames();
        let space = AddressSpace::new(cfg, &mut frames, &mut mem, &mut counters).expect("space");
        World { frames, mem, tlb: SmpTlbModel::new(cpus), charge: CommitCharge::new(limit, 0), counters, space, start_used }
    }

    /// Runs `f` on CPU `cpu` with the space and a context.
    fn on<R>(&mut self, cpu: usize, f: impl FnOnce(&mut AddressSpace, &mut VmContext<'_, SimPhysMemory, SmpTlbModel>) -> R) -> R {
        let World { frames, mem, tlb, charge, counters, space, .. } = self;
        tlb.current = cpu;
        f(space, &mut VmContext { frames, mem, tlb, charge, counters })
    }

    /// A guest access of the u64 at `addr` on CPU `cpu` (writes store `value`).
    fn touch(&mut self, cpu: usize, addr: u64, access: Access, value: u64) -> Result<u64, FaultOutcome> {
        self.on(cpu, |s, cx| sim_touch(s, cx, addr, access, value))
    }

    fn stale(&self) -> Vec<(usize, u64)> {
        self.tlb.stale_entries(&self.space, &self.mem)
    }

    /// Releases everything, destroys the space and checks every frame and charge came back.
    fn teardown(self) {
        let World { mut frames, mut mem, mut tlb, mut charge, mut counters, mut space, start_used } = self;
        let mut cx = VmContext { frames: &mut frames, mem: &mut mem, tlb: &mut tlb, charge: &mut charge, counters: &mut counters };
        let bases: Vec<u64> = space.allocations().filter(|a| a.kind == AllocationKind::Private).map(|a| a.base).collect();
        for b in bases {
            space.virtual_free(&mut cx, b, 0, MEM_RELEASE).expect("release");
        }
        let root = space.destroy(&mut cx);
        frames.free(root).expect("root");
        assert_eq!(frames.used_frames(), start_used, "frames after teardown");
        assert_eq!(frames.reserved_frames(), 0);
        assert_eq!((charge.committed_pages(), charge.table_pages()), (0, 0));
    }
}

const BASE: u64 = 0x4000_0000;

fn cfg() -> SpaceConfig {
    SpaceConfig { min_address: BASE, max_address_end: BASE + (8 << 20), ..SpaceConfig::default() }
}

/// Only the caller runs the space: one round per narrowing call, no IPI.
#[test]
fn no_ipi_when_only_the_caller_runs_the_space() {
    let mut w = World::new(cfg(), 2, 16 << 20, 10_000);
    w.tlb.switch_to(0, &w.space);
    let a = w.on(0, |s, cx| s.virtual_alloc(cx, BASE, 0x8000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, CriticalLevel::Task)).unwrap();
    // A commit of new pages changes no present entry: no round at all.
    assert_eq!((w.tlb.rounds, w.counters.shootdown_rounds), (0, 0));
    for p in 0..8 {
        w.touch(0, a + p * 0x1000, Access::Write, p).unwrap();
    }
    assert_eq!(w.on(0, |s, cx| s.virtual_protect(cx, a, 0x8000, PAGE_READONLY)), Ok(PAGE_READWRITE));
    assert_eq!((w.tlb.rounds, w.tlb.ipis, w.counters.shootdown_ipis), (1, 0, 0));
    assert_eq!(w.tlb.last_targets, CpuSet::single(0));
    assert!(w.stale().is_empty());
    w.teardown();
}

/// Two CPUs run the space: each narrowing call is one round reaching both, with one IPI, and
/// leaves no stale entry on either; a CPU that left the space is no target.
#[test]
fn one_round_to_exactly_the_cpus_running_the_space() {
    let mut w = World::new(cfg(), 3, 16 << 20, 10_000);
    w.tlb.switch_to(0, &w.space);
    w.tlb.switch_to(1, &w.space);
    let a = w.on(0, |s, cx| s.virtual_alloc(cx, BASE, 0x10_0000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, CriticalLevel::Task)).unwrap();
    for p in 0..256 {
        w.touch(1, a + p * 0x1000, Access::Write, p).unwrap();
    }
    assert!(w.tlb.cpus[1].len() >= 256);
    let before = (w.tlb.rounds, w.tlb.ipis);
    // 4 pages: invlpg each, one round, one IPI (to CPU 1).
    w.on(0, |s, cx| s.virtual_protect(cx, a, 0x4000, PAGE_READONLY)).unwrap();
    assert_eq!((w.tlb.rounds - before.0, w.tlb.ipis - before.1), (1, 1));
    assert_eq!(w.tlb.last_targets, CpuSet(0b11));
    assert!(w.stale().is_empty(), "{:x?}", w.stale());
    // CPU 1 writes through the stale-free TLB: the read-only page faults.
    assert!(matches!(w.touch(1, a, Access::Write, 9), Err(FaultOutcome::AccessViolation { .. })));
    // 256 pages decommitted (frames and the page table freed): still one round (a full flush).
    let full = w.counters.full_flushes;
    let used = w.frames.used_frames();
    w.on(0, |s, cx| s.virtual_free(cx, a, 0x10_0000, MEM_DECOMMIT)).unwrap();
    assert_eq!((w.tlb.rounds - before.0, w.tlb.ipis - before.1), (2, 2));
    assert_eq!(w.counters.full_flushes, full + 1);
    assert_eq!(used - w.frames.used_frames(), 256 + w.counters.table_pages_freed, "frames given back after the round");
    assert!(w.stale().is_empty(), "{:x?}", w.stale());
    // CPU 1 leaves (its CR3 load flushed it): CPU 0 alone is the target again.
    w.tlb.switch_away(1, &w.space);
    w.on(0, |s, cx| s.virtual_alloc(cx, a, 0x1000, MEM_COMMIT, PAGE_READWRITE, CriticalLevel::Task)).unwrap();
    w.touch(0, a, Access::Write, 1).unwrap();
    let ipis = w.tlb.ipis;
    w.on(0, |s, cx| s.virtual_protect(cx, a, 0x1000, PAGE_NOACCESS)).unwrap();
    assert_eq!((w.tlb.ipis, w.tlb.last_targets), (ipis, CpuSet::single(0)));
    // A call from a CPU that does not run the space (the kernel working on it from elsewhere)
    // still reaches the CPUs that do: CPU 2 calls, CPU 0 is flushed, one IPI.
    w.on(0, |s, cx| s.virtual_protect(cx, a, 0x1000, PAGE_READWRITE)).unwrap();
    w.touch(0, a, Access::Read, 0).unwrap();
    w.on(2, |s, cx| s.virtual_protect(cx, a, 0x1000, PAGE_READONLY)).unwrap();
    assert_eq!((w.tlb.ipis - ipis, w.tlb.last_targets), (1, CpuSet::single(0)));
    assert!(w.stale().is_empty());
    w.teardown();
}

/// A release freeing more frames than a batch carries makes a round each time the list fills
/// (bounded heap), and still leaves nothing stale and every frame back.
#[test]
fn a_huge_release_makes_bounded_rounds() {
    let cfg = SpaceConfig { min_address: BASE, max_address_end: BASE + (32 << 20), ..SpaceConfig::default() };
    let mut w = World::new(cfg, 2, 24 << 20, 10_000);
    w.tlb.switch_to(0, &w.space);
    w.tlb.switch_to(1, &w.space);
    let pages = 4096u64; // 16 MiB
    let a = w.on(0, |s, cx| s.virtual_alloc(cx, 0, pages * 0x1000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, CriticalLevel::Task)).unwrap();
    for p in 0..pages {
        w.touch(1, a + p * 0x1000, Access::Write, p).unwrap();
    }
    let (rounds, used) = (w.tlb.rounds, w.frames.used_frames());
    w.on(0, |s, cx| s.virtual_free(cx, a, 0, MEM_RELEASE)).unwrap();
    let made = w.tlb.rounds - rounds;
    // 4096 frames and 10 tables (8 PTs, a PD, a PDPT), at most 2048 per round, 2 MiB at a time: 3 rounds.
    assert_eq!(made, 3, "rounds for 4096 frames");
    assert_eq!(used - w.frames.used_frames(), pages + 8 + 1 + 1, "frames and tables back");
    assert!(w.stale().is_empty());
    w.teardown();
}

/// The checks can fail: a CPU that caches translations without being in the set (a kernel that
/// forgot `activate`) keeps stale entries, and the check reports them.
#[test]
fn a_cpu_missing_from_the_set_is_caught() {
    let mut w = World::new(cfg(), 2, 16 << 20, 10_000);
    w.tlb.switch_to(0, &w.space);
    let a = w.on(0, |s, cx| s.virtual_alloc(cx, BASE, 0x1000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, CriticalLevel::Task)).unwrap();
    w.touch(1, a, Access::Write, 5).unwrap(); // CPU 1 never activated
    w.on(0, |s, cx| s.virtual_free(cx, a, 0x1000, MEM_DECOMMIT)).unwrap();
    let stale = w.stale();
    assert!(stale.contains(&(1, a)), "{stale:x?}");
    assert!(w.tlb.cpus[0].is_empty());
    crate::paging::tlb::Tlb::flush_all(&mut w.tlb.cpus[1]);
    w.teardown();
}

/// Another CPU's MMU sets the D bit of a present entry between the read and the write of a
/// protect (pitfall 12): the write-watch mark survives, and `GetWriteWatch` reports the page.
#[test]
fn a_d_bit_set_by_another_cpu_during_an_update_is_kept() {
    /// RAM whose next compare-and-exchange at `at` first sees a hardware write (A and D set).
    struct Racy {
        ram: SimPhysMemory,
        at: Option<u64>,
    }
    impl PhysMemory for Racy {
        fn read_u64(&self, pa: x86_64::PhysAddr) -> u64 {
            self.ram.read_u64(pa)
        }
        fn write_u64(&mut self, pa: x86_64::PhysAddr, value: u64) {
            self.ram.write_u64(pa, value);
        }
        fn compare_exchange_u64(&mut self, pa: x86_64::PhysAddr, current: u64, new: u64) -> Result<(), u64> {
            if self.at == Some(pa.as_u64()) {
                self.at = None;
                let e = self.ram.read_u64(pa);
                self.ram.write_u64(pa, e | crate::paging::pte::ACCESSED | crate::paging::pte::DIRTY);
            }
            self.ram.compare_exchange_u64(pa, current, new)
        }
        fn zero_frame(&mut self, frame: x86_64::structures::paging::PhysFrame) {
            self.ram.zero_frame(frame);
        }
        fn read_bytes(&self, pa: x86_64::PhysAddr, buf: &mut [u8]) {
            self.ram.read_bytes(pa, buf);
        }
        fn write_bytes(&mut self, pa: x86_64::PhysAddr, data: &[u8]) {
            self.ram.write_bytes(pa, data);
        }
    }
    let mut w = World::new(cfg(), 2, 16 << 20, 10_000);
    let a = w.on(0, |s, cx| s.virtual_alloc(cx, BASE, 0x2000, MEM_RESERVE | MEM_COMMIT | MEM_WRITE_WATCH, PAGE_READWRITE, CriticalLevel::Task)).unwrap();
    w.touch(0, a, Access::Read, 0).unwrap(); // present, clean
    let root = w.space.root().start_address().as_u64();
    let table::Leaf::Table(pt) = table::walk(&w.mem, root, a) else { panic!("no page table") };
    let World { frames, mem, tlb, charge, counters, space, .. } = &mut w;
    let mut racy = Racy { ram: core::mem::replace(mem, SimPhysMemory::new(0, 0)), at: Some(pt + table::index(a, 0) * 8) };
    let mut cx = VmContext { frames, mem: &mut racy, tlb, charge, counters };
    assert_eq!(space.virtual_protect(&mut cx, a, 0x1000, PAGE_READONLY), Ok(PAGE_READWRITE));
    assert!(racy.at.is_none(), "the protect did not update the entry by compare-and-exchange");
    *mem = racy.ram;
    let mut out = [0u64; 4];
    let n = w.on(0, |s, cx| s.get_write_watch(cx, 0, a, 0x2000, &mut out)).unwrap();
    assert_eq!(&out[..n], &[a], "the concurrent write's mark was lost");
    w.teardown();
}

/// A guest access of the u64 at `addr` (writes store `value`), as the MMU would make it: the
/// value read after, or the fault that refused it.
fn sim_touch<M: PhysMemory, T: crate::sim::SimTlb>(space: &mut AddressSpace, cx: &mut VmContext<'_, M, T>, addr: u64, access: Access, value: u64) -> Result<u64, FaultOutcome> {
    match sim_access(space, cx, addr, access) {
        SimAccess::Done(pa) => {
            if access == Access::Write {
                cx.mem.write_bytes(pa, &value.to_le_bytes());
            }
            let mut b = [0u8; 8];
            cx.mem.read_bytes(pa, &mut b);
            Ok(u64::from_le_bytes(b))
        }
        SimAccess::Fault(f) => Err(f),
    }
}

/// One call as it took effect, in lock order.
#[derive(Debug, Clone)]
enum Op {
    Alloc { addr: u64, size: u64, ty: u32, prot: u32, env: Env, got: Result<u64, VmError> },
    Free { addr: u64, size: u64, ty: u32, got: Result<(), VmError> },
    Protect { addr: u64, size: u64, prot: u32, got: Result<u32, VmError> },
    Query { addr: u64, got: Result<MemoryBasicInformation, VmError> },
    Touch { addr: u64, access: Access, value: u64, got: Result<u64, FaultOutcome> },
}

const THREADS: usize = 4;
/// Each thread's own 1.5 MiB; the last 2 MiB of the space are shared by all.
const REGION: u64 = 0x18_0000;
const SHARED: u64 = BASE + THREADS as u64 * REGION;

/// A random call on CPU `cpu`, mostly in its own region, else in the shared one.
fn random_op(w: &mut World, r: &mut Rng, cpu: usize) -> Op {
    let (lo, len) = if r.below(10) < 7 { (BASE + cpu as u64 * REGION, REGION) } else { (SHARED, 0x20_0000) };
    // Mostly inside an allocation of the region (looked up under the lock), else anywhere in it.
    let inside: Vec<(u64, u64)> = w.space.allocations().filter(|a| a.base >= lo && a.base < lo + len).map(|a| (a.base, a.size)).collect();
    let page = match inside.len() {
        n if n > 0 && r.below(10) < 7 => {
            let (base, size) = inside[r.below(n as u64) as usize];
            base + r.below(size / 0x1000) * 0x1000
        }
        _ => lo + r.below(len / 0x1000) * 0x1000,
    };
    let block = page & !0xFFFF;
    let size = (1 + r.below(8)) * 0x1000 - [0, 1, 0x800][r.below(3) as usize];
    let prot = [PAGE_READWRITE, PAGE_READWRITE, PAGE_READONLY, PAGE_NOACCESS, PAGE_EXECUTE_READ, PAGE_READWRITE | PAGE_GUARD][r.below(6) as usize];
    match r.below(100) {
        0..=14 => {
            let ty = [MEM_RESERVE, MEM_RESERVE | MEM_COMMIT, MEM_RESERVE | MEM_COMMIT, MEM_RESERVE | MEM_COMMIT | MEM_WRITE_WATCH][r.below(4) as usize];
            let addr = if r.below(20) == 0 { 0 } else { block };
            let env = Env { available: w.frames.available_frames(), runs: w.frames.free_2mib_runs() };
            let got = w.on(cpu, |s, cx| s.virtual_alloc(cx, addr, size, ty, prot, CriticalLevel::Task));
            Op::Alloc { addr, size, ty, prot, env, got }
        }
        15..=29 => {
            let env = Env { available: w.frames.available_frames(), runs: w.frames.free_2mib_runs() };
            let got = w.on(cpu, |s, cx| s.virtual_alloc(cx, page, size, MEM_COMMIT, prot, CriticalLevel::Task));
            Op::Alloc { addr: page, size, ty: MEM_COMMIT, prot, env, got }
        }
        30..=39 => {
            let size = if r.below(4) == 0 { 0 } else { size };
            let got = w.on(cpu, |s, cx| s.virtual_free(cx, page, size, MEM_DECOMMIT));
            Op::Free { addr: page, size, ty: MEM_DECOMMIT, got }
        }
        40..=47 => {
            let got = w.on(cpu, |s, cx| s.virtual_free(cx, block, 0, MEM_RELEASE));
            Op::Free { addr: block, size: 0, ty: MEM_RELEASE, got }
        }
        48..=59 => {
            let got = w.on(cpu, |s, cx| s.virtual_protect(cx, page, size, prot));
            Op::Protect { addr: page, size, prot, got }
        }
        60..=64 => Op::Query { addr: page, got: w.space.virtual_query(&w.mem, page) },
        _ => {
            let access = if r.below(2) == 0 { Access::Read } else { Access::Write };
            let value = r.next();
            Op::Touch { addr: page, access, value, got: w.touch(cpu, page, access, value) }
        }
    }
}

/// The call's answer from the model, to compare with what the space answered.
fn replay(m: &mut Model, op: &Op) -> bool {
    match op {
        Op::Alloc { addr, size, ty, prot, env, got } => m.alloc(*addr, *size, *ty, *prot, CriticalLevel::Task, *env) == *got,
        Op::Free { addr, size, ty, got } => m.free(*addr, *size, *ty) == *got,
        Op::Protect { addr, size, prot, got } => m.protect(*addr, *size, *prot) == *got,
        Op::Query { addr, got } => m.query(*addr) == *got,
        Op::Touch { addr, access, value, got } => m.touch(*addr, *access, *value) == *got,
    }
}

fn seed() -> u64 {
    std::env::var("AS_CONC_SEED")
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64))
}

/// Four threads, each a simulated CPU running the space, call reserve / commit / decommit /
/// release / protect / query and touch pages — in their own regions and in a shared one —
/// on one space behind one lock (the space lock of the README's design, which the call holds
/// with the charge and frame locks). Each call is logged with its answer under the lock; the
/// log, replayed on the model in lock order, must give the same answers. After every call no
/// CPU holds a stale entry, the call made at most one round, and a fifth CPU that never runs
/// the space is never a target. At the end the state and the frame, commit and table accounting
/// match the model exactly. Context switches (a CPU leaving and re-entering the space) happen
/// now and then. `AS_CONC_SEED=0x…` picks the seed (printed); `AS_CONC_OPS` the calls per thread.
#[test]
fn threads_on_one_space_agree_with_the_model() {
    let seed = seed();
    let ops: u64 = std::env::var("AS_CONC_OPS").ok().and_then(|s| s.parse().ok()).unwrap_or(3000);
    std::eprintln!("concurrency test: AS_CONC_SEED={seed:#x}, {THREADS} threads x {ops} calls");
    const IDLE_CPU: usize = THREADS;
    let world = World::new(cfg(), THREADS + 1, 8 << 20, 1500);
    for cpu in 0..THREADS {
        world.space.activate(cpu);
    }
    let shared = Arc::new(Mutex::new((world, Vec::<(usize, Op)>::new())));
    let handles: Vec<_> = (0..THREADS)
        .map(|cpu| {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || {
                let mut r = Rng(seed ^ (cpu as u64).wrapping_mul(0x1234_5678_9ABC_DEF1));
                for i in 0..ops {
                    let mut guard = shared.lock().expect("lock");
                    let (w, log) = &mut *guard;
                    if r.below(64) == 0 {
                        w.tlb.switch_away(cpu, &w.space);
                        w.tlb.switch_to(cpu, &w.space);
                    }
                    let rounds = w.tlb.rounds;
                    let op = random_op(w, &mut r, cpu);
                    assert!(w.tlb.rounds - rounds <= 1, "[seed {seed:#x}] cpu {cpu} call {i}: more than one round: {op:x?}");
                    assert!(!w.tlb.last_targets.contains(IDLE_CPU), "[seed {seed:#x}] a CPU not running the space was a target");
                    if !matches!(op, Op::Query { .. } | Op::Touch { .. }) {
                        let stale = w.stale();
                        assert!(stale.is_empty(), "[seed {seed:#x}] cpu {cpu} call {i}: stale (cpu, page) {stale:x?} after {op:x?}");
                    }
                    log.push((cpu, op));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("a thread failed");
    }
    let (w, log) = Arc::into_inner(shared).expect("threads done").into_inner().expect("lock");
    let mut m = Model::new(cfg().min_address, cfg().max_address_end, 1500, 0);
    let mut outcomes = std::collections::BTreeMap::<String, u64>::new();
    for (i, (cpu, op)) in log.iter().enumerate() {
        assert!(replay(&mut m, op), "[seed {seed:#x}] call {i} (cpu {cpu}) disagrees with the model replayed in lock order: {op:x?}");
        let kind = format!("{op:?}");
        let ok = !kind.contains("Err(");
        *outcomes.entry(format!("{} {}", kind.split(' ').next().unwrap_or(""), if ok { "ok" } else { "err" })).or_default() += 1;
    }
    std::eprintln!("outcomes: {outcomes:?}, rounds {}, IPIs {}", w.tlb.rounds, w.tlb.ipis);
    // Final state: every entry, the commit charge, tables and frames, exactly as the model says.
    let (held, _, committed4k) = m.frame_counts();
    let tables = m.tables((0, 0), (0, 0));
    let census = w.space.census(&w.mem);
    assert_eq!(w.charge.committed_pages(), m.committed, "[seed {seed:#x}] commit charge");
    assert_eq!((census.committed_pages, census.pages_with_frame, census.bad_counts), (committed4k, held, 0), "[seed {seed:#x}] entries");
    assert_eq!((census.table_pages, w.space.table_pages(), w.charge.table_pages()), (tables, tables, tables), "[seed {seed:#x}] table pages");
    assert_eq!(w.frames.used_frames() - w.start_used, held + tables + 1, "[seed {seed:#x}] frames in use");
    assert_eq!(w.frames.reserved_frames(), committed4k - held, "[seed {seed:#x}] reserved frames");
    let mut a = 0;
    while a < m.end {
        let q = w.space.virtual_query(&w.mem, a);
        assert_eq!(q, m.query(a), "[seed {seed:#x}] query view at {a:#x}");
        a = q.expect("query").base_address + q.expect("query").region_size;
    }
    assert!(outcomes.keys().any(|k| k == "Touch ok") && outcomes.keys().any(|k| k == "Free ok"), "the run did work: {outcomes:?}");
    w.teardown();
}

/// Physical memory shared by the threads of [`spaces_on_threads_share_frames_and_charge_exactly`]:
/// each access locks the simulated RAM (a compare-and-exchange is one step under the lock).
struct SharedRam<'a>(&'a Mutex<SimPhysMemory>);

impl PhysMemory for SharedRam<'_> {
    fn read_u64(&self, pa: x86_64::PhysAddr) -> u64 {
        self.0.lock().expect("ram").read_u64(pa)
    }
    fn write_u64(&mut self, pa: x86_64::PhysAddr, value: u64) {
        self.0.lock().expect("ram").write_u64(pa, value)
    }
    fn compare_exchange_u64(&mut self, pa: x86_64::PhysAddr, current: u64, new: u64) -> Result<(), u64> {
        self.0.lock().expect("ram").compare_exchange_u64(pa, current, new)
    }
    fn zero_frame(&mut self, frame: x86_64::structures::paging::PhysFrame) {
        self.0.lock().expect("ram").zero_frame(frame)
    }
    fn read_bytes(&self, pa: x86_64::PhysAddr, buf: &mut [u8]) {
        self.0.lock().expect("ram").read_bytes(pa, buf)
    }
    fn write_bytes(&mut self, pa: x86_64::PhysAddr, data: &[u8]) {
        self.0.lock().expect("ram").write_bytes(pa, data)
    }
}

/// The frames as the kernel reaches them: the allocator behind its lock, taken per request, and
/// this thread's (CPU's) frame cache in front of it for single frames.
struct CachedFrames<'a> {
    cache: crate::frame::FrameCache,
    global: &'a Mutex<FrameAllocator>,
}

impl crate::frame::FrameSource for CachedFrames<'_> {
    fn with_allocator(&mut self, f: &mut dyn FnMut(&mut FrameAllocator)) {
        f(&mut self.global.lock().expect("frames"))
    }
    fn alloc(&mut self) -> Result<x86_64::structures::paging::PhysFrame, crate::frame::FrameError> {
        self.cache.alloc(self.global)
    }
    fn free(&mut self, frame: x86_64::structures::paging::PhysFrame) -> Result<(), crate::frame::FrameError> {
        self.cache.free(frame, self.global)
    }
}

/// The split locks of the README's design with real threads: three threads, each a CPU with its
/// own space (its own space lock) and its own frame cache, share one frame allocator behind its
/// lock taken per request (`FrameSource`) and one lock-free commit charge (`&CommitCharge`),
/// and commit, touch, protect, decommit and release at random against a commit limit they
/// cannot all fit in. Checked: every answer but the limit's agrees with a per-space model; the
/// charge never passes the limit (check and charge are one compare-exchange, so two spaces never
/// both pass); no commit that passed the charge fails for lack of frames although the RAM holds only
/// the limit, the roots and what the caches may hold (`limit ≤ frames − CPUs × CACHE_CAPACITY`);
/// at the end the charge, tables, frames in use and reservations add up exactly over the spaces,
/// and after teardown every frame and page of charge is back.
#[test]
fn spaces_on_threads_share_frames_and_charge_exactly() {
    const SPACES: usize = 3;
    const LIMIT: u64 = 360;
    let seed = seed();
    let ops: u64 = std::env::var("AS_CONC_OPS").ok().and_then(|s| s.parse().ok()).unwrap_or(3000);
    std::eprintln!("split-lock test: AS_CONC_SEED={seed:#x}, {SPACES} spaces x {ops} calls");
    let cfg = SpaceConfig { min_address: BASE, max_address_end: BASE + 0x20_0000, ..SpaceConfig::default() };
    let needed = LIMIT + SPACES as u64 * (1 + crate::frame::CACHE_CAPACITY as u64);
    let ram = Mutex::new(SimPhysMemory::new(RAM_BASE, ((needed + 16) * 0x1000).next_multiple_of(0x1_0000) as usize));
    let frames = Mutex::new(FrameAllocator::new(&[ram.lock().expect("ram").range()]));
    let start_used = frames.lock().expect("frames").used_frames();
    assert!(frames.lock().expect("frames").available_frames() >= needed);
    let charge = CommitCharge::new(LIMIT, 0);
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..SPACES)
            .map(|t| {
                let (ram, frames, charge) = (&ram, &frames, &charge);
                scope.spawn(move || {
                    let mut r = Rng(seed ^ (t as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                    let mut src = CachedFrames { cache: crate::frame::FrameCache::new(), global: frames };
                    let (mut mem, mut tlb, mut counters) = (SharedRam(ram), crate::sim::TlbModel::new(), WorkCounters::default());
                    let mut space = AddressSpace::new(cfg, &mut src, &mut mem, &mut counters).expect("space");
                    let mut m = Model::new(cfg.min_address, cfg.max_address_end, u64::MAX / 4, 0);
                    let env = Env { available: u64::MAX / 4, runs: 0 };
                    let mut limit_hits = 0;
                    for i in 0..ops {
                        let mut cx = VmContext { frames: &mut src, mem: &mut mem, tlb: &mut tlb, charge: &mut { charge }, counters: &mut counters };
                        let page = BASE + r.below(512) * 0x1000;
                        let size = (1 + r.below(24)) * 0x1000;
                        let prot = [PAGE_READWRITE, PAGE_READONLY, PAGE_NOACCESS, PAGE_READWRITE | PAGE_GUARD][r.below(4) as usize];
                        let op = match r.below(100) {
                            0..=19 => {
                                let got = space.virtual_alloc(&mut cx, page & !0xFFFF, size, MEM_RESERVE | MEM_COMMIT, prot, CriticalLevel::Task);
                                Op::Alloc { addr: page & !0xFFFF, size, ty: MEM_RESERVE | MEM_COMMIT, prot, env, got }
                            }
                            20..=39 => {
                                let got = space.virtual_alloc(&mut cx, page, size, MEM_COMMIT, prot, CriticalLevel::Task);
                                Op::Alloc { addr: page, size, ty: MEM_COMMIT, prot, env, got }
                            }
                            40..=49 => Op::Free { addr: page, size, ty: MEM_DECOMMIT, got: space.virtual_free(&mut cx, page, size, MEM_DECOMMIT) },
                            50..=57 => Op::Free { addr: page & !0xFFFF, size: 0, ty: MEM_RELEASE, got: space.virtual_free(&mut cx, page & !0xFFFF, 0, MEM_RELEASE) },
                            58..=64 => Op::Protect { addr: page, size, prot, got: space.virtual_protect(&mut cx, page, size, prot) },
                            _ => {
                                let access = if r.below(2) == 0 { Access::Read } else { Access::Write };
                                let value = r.next();
                                Op::Touch { addr: page, access, value, got: sim_touch(&mut space, &mut cx, page, access, value) }
                            }
                        };
                        let over = { let c = charge.snapshot(); c.committed_pages() + c.table_pages() > LIMIT };
                        assert!(!over, "[seed {seed:#x}] space {t} call {i}: the charge passed the limit");
                        let failed_on_limit = match &op {
                            Op::Alloc { got, .. } => {
                                assert_ne!(*got, Err(VmError::NoMemory), "[seed {seed:#x}] space {t} call {i}: a commit that passed the charge found no frames");
                                *got == Err(VmError::CommitmentLimit)
                            }
                            _ => false,
                        };
                        if failed_on_limit {
                            limit_hits += 1;
                        } else {
                            assert!(replay(&mut m, &op), "[seed {seed:#x}] space {t} call {i} disagrees with the model: {op:x?}");
                        }
                    }
                    (space, m, src.cache, tlb, counters, limit_hits)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("a thread failed")).collect()
    });
    // Every frame the caches hold goes back: the allocator's figures are then exact.
    let mut mem = SharedRam(&ram);
    let (mut committed, mut tables, mut held_all, mut reserved, mut hits) = (0, 0, 0, 0, 0);
    for (space, m, mut cache, _, _, limit_hits) in results.iter().map(|(s, m, c, t, n, h)| (s, m, c.clone(), t, n, *h)) {
        cache.drain(&frames);
        let (held, _, committed4k) = m.frame_counts();
        let census = space.census_with(&mem, |_, _| {}, |_, _| {});
        assert_eq!((census.committed_pages, census.pages_with_frame, census.bad_counts), (committed4k, held, 0), "[seed {seed:#x}] entries");
        assert_eq!(census.table_pages, space.table_pages(), "[seed {seed:#x}] table pages");
        committed += m.committed;
        tables += census.table_pages;
        held_all += held;
        reserved += committed4k - held;
        hits += limit_hits;
    }
    {
        let (f, c) = (frames.lock().expect("frames"), &charge);
        assert_eq!((c.committed_pages(), c.table_pages()), (committed, tables), "[seed {seed:#x}] commit charge");
        assert_eq!(f.used_frames() - start_used, held_all + tables + SPACES as u64, "[seed {seed:#x}] frames in use");
        assert_eq!(f.reserved_frames(), reserved, "[seed {seed:#x}] reserved frames");
    }
    std::eprintln!("split-lock test: {hits} commits refused at the limit; at the end {committed} pages committed, {tables} table pages");
    assert!(hits > 0, "the spaces never met the commit limit: the test did not race on it");
    for (mut space, _, _, mut tlb, mut counters, _) in results {
        let mut f = frames.lock().expect("frames");
        let mut cx = VmContext { frames: &mut *f, mem: &mut mem, tlb: &mut tlb, charge: &mut &charge, counters: &mut counters };
        let bases: Vec<u64> = space.allocations().map(|a| a.base).collect();
        for b in bases {
            space.virtual_free(&mut cx, b, 0, MEM_RELEASE).expect("release");
        }
        let root = space.destroy(&mut cx);
        f.free(root).expect("root");
    }
    let (f, c) = (frames.lock().expect("frames"), &charge);
    assert_eq!((f.used_frames(), f.reserved_frames()), (start_used, 0), "[seed {seed:#x}] frames after teardown");
    assert_eq!((c.committed_pages(), c.table_pages()), (0, 0), "[seed {seed:#x}] charge after teardown");
}

/// Four threads on one space behind a reader/writer lock, as the kernel holds it: page faults
/// take it shared (`handle_fault_shared`, several at once), every other call exclusively, and a
/// call that leaves a TLB round (`defer_rounds`) either downgrades it to shared for the round, the
/// frees and the uncharge (`PendingRound::complete`), while the faults of the others go on, or
/// releases it (`PendingRound::complete_on`, the kernel's way), while the others' faults and calls
/// on other pages go on. Each
/// thread decommits, recommits, protects and touches the pages of its own region (checked
/// against its own model: they are only its). And in rounds, all of them first-touch one fresh
/// shared page at the same moment (a barrier), each writing its own slot of it: a second frame
/// installed for the page would lose a write; some rounds' page is a guard page, which exactly
/// one thread must get. After each round thread 0 checks the page and decommits and recommits it
/// (one call, its round left for the shared phase). At the end the entries, frames, reservations
/// and charge add up exactly.
#[test]
fn shared_faults_on_one_space_agree() {
    const OWN: u64 = 64;
    const SHARED_PAGES: u64 = 64;
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    let seed = seed();
    let rounds: u64 = std::env::var("AS_CONC_OPS").ok().and_then(|s| s.parse().ok()).unwrap_or(3000) / 2;
    std::eprintln!("shared-fault test: AS_CONC_SEED={seed:#x}, {THREADS} threads x {rounds} rounds");
    let ram = Mutex::new(SimPhysMemory::new(RAM_BASE, 16 << 20));
    let frames = Mutex::new(FrameAllocator::new(&[ram.lock().expect("ram").range()]));
    let start_used = frames.lock().expect("frames").used_frames();
    let charge = CommitCharge::new(10_000, 0);
    let mut mem = SharedRam(&ram);
    let mut setup = CachedFrames { cache: crate::frame::FrameCache::new(), global: &frames };
    let (mut tlb, mut counters) = (crate::sim::TlbModel::new(), WorkCounters::default());
    let mut space = AddressSpace::new(cfg(), &mut setup, &mut mem, &mut counters).expect("space");
    let shared_base = BASE + THREADS as u64 * OWN * 0x1000;
    {
        let mut cx = VmContext { frames: &mut setup, mem: &mut mem, tlb: &mut tlb, charge: &mut &charge, counters: &mut counters };
        let all = (THREADS as u64 * OWN + SHARED_PAGES) * 0x1000;
        space.virtual_alloc(&mut cx, BASE, all, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, CriticalLevel::Task).expect("commit");
    }
    setup.cache.drain(&frames);
    let root = space.root().start_address().as_u64();
    let space = std::sync::RwLock::new(space);
    let barrier = Rendezvous::default();
    let guards_hit = AtomicU64::new(0);

    /// A guest access through the shared fault path: the MMU's check, else a fault under the
    /// read lock (with a zeroed frame when it asks for one), until it is done or refused.
    fn touch(space: &std::sync::RwLock<AddressSpace>, cx: &mut VmContext<'_, SharedRam<'_>, crate::sim::TlbModel>, root: u64, addr: u64, access: Access) -> Result<x86_64::PhysAddr, FaultOutcome> {
        let mut zeroed = None;
        let result = loop {
            let s = space.read().expect("space");
            let e = table::read_pte(cx.mem, root, addr);
            if e.is_present() && access.allowed_by(e.prot()) {
                break Ok(x86_64::PhysAddr::new(e.frame().expect("present") + (addr & 0xFFF)));
            }
            match s.handle_fault_shared(cx, addr, access, &mut zeroed) {
                Some(FaultOutcome::Resolved) => {}
                Some(refused) => break Err(refused),
                None => {
                    drop(s);
                    let f = cx.frames.alloc().expect("frame");
                    cx.mem.zero_frame(f);
                    zeroed = Some(f);
                }
            }
        };
        if let Some(f) = zeroed {
            cx.frames.free(f).expect("unused zeroed frame");
        }
        // The kernel's fault-around after a first touch (`fault::resolve`): frames zeroed with
        // no lock held, offered under the read lock.
        if result.is_ok() && (addr / 0x1000) % 3 != 0 {
            let page = addr & !0xFFF;
            let ahead = space.read().expect("space").fault_around(cx.mem, page);
            let mut frames: Vec<_> = (0..ahead)
                .map(|_| {
                    let f = cx.frames.alloc().expect("frame");
                    cx.mem.zero_frame(f);
                    Some(f)
                })
                .collect();
            space.read().expect("space").prefault_shared(cx, page + 0x1000, &mut frames);
            for f in frames.into_iter().flatten() {
                cx.frames.free(f).expect("unused zeroed frame");
            }
        }
        result
    }

    /// A call on the page at `page` as the kernel makes it (`SpaceShared::with_range`): under
    /// the write lock it waits for the rounds in flight on its page, makes its changes, and if it
    /// left a round, registers its page as in flight and releases the lock for the round, frees
    /// and uncharge (`PendingRound::complete_on`), while the other threads' faults and calls go
    /// on. Even rounds use the downgrade instead (no writer in between), as a kernel may.
    fn in_two_phases<R>(
        space: &std::sync::RwLock<AddressSpace>,
        in_flight: &Mutex<Vec<u64>>,
        page: u64,
        cx: &mut VmContext<'_, SharedRam<'_>, crate::sim::TlbModel>,
        call: impl FnOnce(&mut AddressSpace, &mut VmContext<'_, SharedRam<'_>, crate::sim::TlbModel>) -> R,
    ) -> R {
        let mut s = space.write().expect("space");
        // Only rounds registered before this holder took the lock: the wait ends.
        while in_flight.lock().expect("in flight").contains(&page) {
            std::thread::yield_now();
        }
        let (result, left) = s.defer_rounds(cx, call);
        if let Some(left) = left {
            if page / 0x1000 % 2 == 0 {
                left.complete(&std::sync::RwLockWriteGuard::downgrade(s), cx);
            } else {
                let active = s.active_set();
                in_flight.lock().expect("in flight").push(page);
                drop(s);
                left.complete_on(&active, cx);
                in_flight.lock().expect("in flight").retain(|&p| p != page);
            }
        }
        result
    }
    let in_flight = Mutex::new(Vec::new());

    /// Per own page of a thread: committed, writable, has a frame, value.
    type OwnPages = Vec<(bool, bool, bool, u64)>;
    let (guards, finals): (u64, Vec<OwnPages>) = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (ram, frames, charge, space, barrier, guards_hit, in_flight) = (&ram, &frames, &charge, &space, &barrier, &guards_hit, &in_flight);
                scope.spawn(move || {
                    let _failing = barrier.fails_with_this_thread();
                    let mut r = Rng(seed ^ (t as u64 + 7).wrapping_mul(0x2545_F491_4F6C_DD1D));
                    let mut src = CachedFrames { cache: crate::frame::FrameCache::new(), global: frames };
                    let (mut mem, mut tlb, mut counters) = (SharedRam(ram), crate::sim::TlbModel::new(), WorkCounters::default());
                    let own = BASE + t as u64 * OWN * 0x1000;
                    let mut model: OwnPages = vec![(true, true, false, 0u64); OWN as usize];
                    let (mut guarded, mut guards) = (false, 0);
                    for i in 0..rounds {
                        let mut cx = VmContext { frames: &mut src, mem: &mut mem, tlb: &mut tlb, charge: &mut { charge }, counters: &mut counters };
                        // One call of its own.
                        let p = r.below(OWN);
                        let page = own + p * 0x1000;
                        let m = &mut model[p as usize];
                        match r.below(100) {
                            0..=14 => {
                                in_two_phases(space, in_flight, page, &mut cx, |s, cx| s.virtual_free(cx, page, 0x1000, MEM_DECOMMIT)).expect("decommit");
                                *m = (false, false, false, 0);
                            }
                            15..=29 => {
                                space.write().expect("space").virtual_alloc(&mut cx, page, 0x1000, MEM_COMMIT, PAGE_READWRITE, CriticalLevel::Task).expect("commit");
                                *m = if m.0 { (true, true, m.2, m.3) } else { (true, true, false, 0) };
                            }
                            30..=44 => {
                                let writable = r.below(2) == 0;
                                let got = in_two_phases(space, in_flight, page, &mut cx, |s, cx| s.virtual_protect(cx, page, 0x1000, if writable { PAGE_READWRITE } else { PAGE_READONLY }));
                                assert_eq!(got.is_ok(), m.0, "[seed {seed:#x}] thread {t} round {i}: protect of {page:#x}");
                                if m.0 {
                                    m.1 = writable;
                                }
                            }
                            _ => {
                                let write = r.below(2) == 0;
                                let value = r.next();
                                match touch(space, &mut cx, root, page, if write { Access::Write } else { Access::Read }) {
                                    Ok(pa) if m.0 && (m.1 || !write) => {
                                        if write {
                                            cx.mem.write_bytes(pa, &value.to_le_bytes());
                                            m.3 = value;
                                        }
                                        let mut b = [0u8; 8];
                                        cx.mem.read_bytes(pa, &mut b);
                                        assert_eq!(u64::from_le_bytes(b), m.3, "[seed {seed:#x}] thread {t} round {i}: value of {page:#x}");
                                        m.2 = true;
                                    }
                                    Err(FaultOutcome::AccessViolation { .. }) if !(m.0 && (m.1 || !write)) => {}
                                    other => panic!("[seed {seed:#x}] thread {t} round {i}: touch of {page:#x} (model {m:?}): {other:x?}"),
                                }
                            }
                        }
                        // Everyone first-touches the round's shared page at once.
                        let shared = shared_base + (i % SHARED_PAGES) * 0x1000;
                        barrier.wait(THREADS);
                        let slot = shared + t as u64 * 8;
                        let pa = match touch(space, &mut cx, root, slot, Access::Write) {
                            Ok(pa) => pa,
                            Err(FaultOutcome::GuardPage { .. }) => {
                                guards_hit.fetch_add(1, Relaxed);
                                touch(space, &mut cx, root, slot, Access::Write).expect("the guard is gone")
                            }
                            Err(other) => panic!("[seed {seed:#x}] thread {t} round {i}: shared page: {other:x?}"),
                        };
                        cx.mem.write_bytes(pa, &(i * 16 + t as u64 + 1).to_le_bytes());
                        barrier.wait(THREADS);
                        if t == 0 {
                            let e = table::read_pte(cx.mem, root, shared);
                            for other in 0..THREADS as u64 {
                                let mut b = [0u8; 8];
                                cx.mem.read_bytes(x86_64::PhysAddr::new(e.frame().expect("frame") + other * 8), &mut b);
                                assert_eq!(u64::from_le_bytes(b), i * 16 + other + 1, "[seed {seed:#x}] round {i}: thread {other}'s write to the shared page was lost");
                            }
                            assert_eq!(guards_hit.swap(0, Relaxed), u64::from(guarded), "[seed {seed:#x}] round {i}: guard reports");
                            guards += u64::from(guarded);
                            // The next round's page: fresh, a guard page now and then.
                            let next = shared_base + ((i + 1) % SHARED_PAGES) * 0x1000;
                            guarded = r.below(4) == 0;
                            let prot = if guarded { PAGE_READWRITE | PAGE_GUARD } else { PAGE_READWRITE };
                            in_two_phases(space, in_flight, next, &mut cx, |s, cx| {
                                s.virtual_free(cx, next, 0x1000, MEM_DECOMMIT).expect("decommit");
                                s.virtual_alloc(cx, next, 0x1000, MEM_COMMIT, prot, CriticalLevel::Task).expect("commit");
                            });
                        }
                        barrier.wait(THREADS);
                    }
                    src.cache.drain(frames);
                    (guards, model)
                })
            })
            .collect();
        let finals: Vec<_> = handles.into_iter().map(|h| h.join().expect("a thread failed")).collect();
        (finals.iter().map(|f| f.0).sum(), finals.into_iter().map(|f| f.1).collect())
    });
    let mut space = space.into_inner().expect("space");
    // The shared pages: every one committed; the one of the last round holds a frame unless
    // it was refreshed after (the last round refreshes the next page only).
    let last = shared_base + ((rounds - 1) % SHARED_PAGES) * 0x1000;
    let shared_framed: u64 = (0..SHARED_PAGES).filter(|p| table::read_pte(&mem, root, shared_base + p * 0x1000).frame().is_some()).count() as u64;
    assert!(table::read_pte(&mem, root, last).frame().is_some(), "[seed {seed:#x}] the last round's page");
    let own_committed: u64 = finals.iter().map(|m| m.iter().filter(|p| p.0).count() as u64).sum();
    // Fault-around maps pages no one touched (first touches in waiting): the model says which
    // pages must have a frame (touched since their last commit) and which cannot (decommitted).
    let mut own_framed = 0;
    for (t, model) in finals.iter().enumerate() {
        for (p, m) in model.iter().enumerate() {
            let page = BASE + (t as u64 * OWN + p as u64) * 0x1000;
            let has = table::read_pte(&mem, root, page).frame().is_some();
            assert!(has || !m.2, "[seed {seed:#x}] {page:#x}: touched, no frame");
            assert!(!has || m.0, "[seed {seed:#x}] {page:#x}: decommitted, a frame");
            own_framed += u64::from(has);
        }
    }
    let census = space.census_with(&mem, |_, _| {}, |_, _| {});
    let (committed, framed) = (own_committed + SHARED_PAGES, own_framed + shared_framed);
    assert_eq!((census.committed_pages, census.pages_with_frame, census.bad_counts), (committed, framed, 0), "[seed {seed:#x}] entries");
    assert_eq!(space.demand_zero_frames(), committed - framed, "[seed {seed:#x}] frames the space holds promised");
    {
        let (f, c) = (frames.lock().expect("frames"), &charge);
        assert_eq!(f.reserved_frames(), committed - framed, "[seed {seed:#x}] reserved frames");
        assert_eq!(f.used_frames() - start_used, framed + census.table_pages + 1, "[seed {seed:#x}] frames in use");
        assert_eq!(c.committed_pages(), committed, "[seed {seed:#x}] charge");
    }
    std::eprintln!("shared-fault test: {rounds} rounds of {THREADS} first touches at once ({guards} on guard pages); {committed} committed, {framed} with a frame");
    assert!(guards > 0, "no round had a guard page");
    let mut f = frames.lock().expect("frames");
    let mut cx = VmContext { frames: &mut *f, mem: &mut mem, tlb: &mut tlb, charge: &mut &charge, counters: &mut counters };
    space.virtual_free(&mut cx, BASE, 0, MEM_RELEASE).expect("release");
    let root = space.destroy(&mut cx);
    f.free(root).expect("root");
    assert_eq!((f.used_frames(), f.reserved_frames(), charge.committed_pages(), charge.table_pages()), (start_used, 0, 0, 0), "[seed {seed:#x}] after teardown");
}

