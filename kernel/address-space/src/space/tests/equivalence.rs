//! Property test: random operation sequences on the real address space and on the naive
//! reference model (`crate::model`), comparing every result, error, query answer and fault,
//! and checking the invariants after every step.
//!
//! Seeded and reproducible: the seed (default fixed per configuration, or `AS_PROPTEST_SEED`)
//! and the failing step are printed on failure; `AS_PROPTEST_OPS` sets the steps per
//! configuration (default 100,000; three configurations, so 300,000 operations per run).

use ::alloc::format;
use ::alloc::string::String;
use ::alloc::vec;
use ::alloc::vec::Vec;

use super::*;
use crate::model::{Env, Model, St};
use crate::sim::SimAccess;
use super::Rng;

struct Gen<'a> {
    r: &'a mut Rng,
    m: &'a Model,
}

impl Gen<'_> {
    fn addr(&mut self) -> u64 {
        let m = self.m;
        let page = |r: &mut Rng| m.min + r.below((m.end - m.min) / 0x1000) * 0x1000;
        match self.r.below(12) {
            0..=5 if !m.allocs.is_empty() => {
                let a = m.allocs[self.r.below(m.allocs.len() as u64) as usize];
                let inside = self.r.below(a.size / 0x1000) * 0x1000;
                let off = self.r.pick(&[0, 0, 1, 0xFFF, 0x1000, 0x1001, a.size - 1, a.size, a.size + 1, inside, inside, (a.size + 0xFFFF) & !0xFFFF]);
                if self.r.below(20) == 0 { a.base.wrapping_sub(1) } else { a.base + off }
            }
            6 => page(self.r) + self.r.below(0x1000),
            7 => {
                let e = [0, m.min, m.min - 1, m.end - 1, m.end, m.end + 0x1000, u64::MAX, 0x7FFF_FFFF_0000, 1 << 63];
                self.r.pick(&e)
            }
            8 => page(self.r) & !0xFFFF,
            _ => page(self.r),
        }
    }

    /// Mostly an address in a write-watch allocation.
    fn watched_addr(&mut self) -> u64 {
        let ww: Vec<_> = self.m.allocs.iter().filter(|a| a.ww).copied().collect();
        if ww.is_empty() || self.r.below(4) == 0 {
            return self.addr();
        }
        let a = ww[self.r.below(ww.len() as u64) as usize];
        a.base + self.r.pick(&[0, 0, 0x1000, 0x1FFF, (a.size / 2) & !0xFFF])
    }

    fn size(&mut self, addr: u64) -> u64 {
        match self.r.below(16) {
            0 => 0,
            1 => 1,
            2 => 0xFFF,
            3 => 0x1000,
            4 => 0x1001,
            5 => 0x10000,
            6 => 0x10001,
            7 => u64::MAX,
            8 => (u64::MAX - addr).wrapping_add(1),
            9 => 0x20_0000 * (1 + self.r.below(2)),
            10 => self.r.below(0x10_0000),
            _ => (1 + self.r.below(24)) * 0x1000 - self.r.pick(&[0, 0, 1, 0x800]),
        }
    }

    fn prot(&mut self) -> u32 {
        if self.r.below(12) == 0 {
            let any = self.r.next() as u32;
            return self.r.pick(&[0, PAGE_WRITECOPY, PAGE_EXECUTE_WRITECOPY, 3, 0x800 | 4, PAGE_NOACCESS | PAGE_GUARD, PAGE_NOACCESS | PAGE_NOCACHE, any]);
        }
        let base = self.r.pick(&[PAGE_NOACCESS, PAGE_READONLY, PAGE_READWRITE, PAGE_READWRITE, PAGE_EXECUTE, PAGE_EXECUTE_READ, PAGE_EXECUTE_READWRITE]);
        match self.r.below(10) {
            0 if base != PAGE_NOACCESS => base | PAGE_GUARD,
            1 if base != PAGE_NOACCESS => base | self.r.pick(&[PAGE_NOCACHE, PAGE_WRITECOMBINE]),
            _ => base,
        }
    }

    fn reserve_type(&mut self) -> u32 {
        if self.r.below(25) == 0 {
            let any = self.r.next() as u32;
            return self.r.pick(&[0, MEM_TOP_DOWN, MEM_WRITE_WATCH | MEM_COMMIT, MEM_PHYSICAL | MEM_RESERVE, AT_ROUND_TO_PAGE | MEM_RESERVE, MEM_RESET | MEM_COMMIT, any]);
        }
        let mut t = MEM_RESERVE;
        if self.r.below(2) == 0 {
            t |= MEM_COMMIT;
        }
        if self.r.below(4) == 0 {
            t |= MEM_TOP_DOWN;
        }
        if self.r.below(3) == 0 {
            t |= MEM_WRITE_WATCH;
        }
        if self.r.below(8) == 0 {
            t &= !MEM_RESERVE; // NULL-address commit implies reserve; at an address it commits
            t |= MEM_COMMIT;
        }
        t
    }
}

/// Runs `ops` random steps from `seed` on a space over `[min, end)`.
/// `allowance`: the commit charge's page-table allowance (charge.rs).
fn run(seed: u64, ops: u64, cfg: SpaceConfig, ram: usize, limit: u64, reserve: u64, allowance: u64) {
    let fresh = || {
        let mut fx = Fx::with(cfg, ram, limit, reserve);
        fx.charge = CommitCharge::new(limit, reserve).with_table_allowance(allowance);
        let mut m = Model::new(cfg.min_address, cfg.max_address_end, limit, reserve);
        m.large_ok = cfg.large_pages_allowed;
        m.allowance = allowance;
        (fx, m)
    };
    let (mut fx, mut m) = fresh();
    let mut r = Rng(seed);
    // Which steps run in two phases (`defer_rounds`, then the round): a stream of its own, so
    // that a seed makes the same calls as before.
    let mut phases = Rng(seed ^ 0x2F_A5E5);
    let mut last;
    let mut stats: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    let mut step = 0u64;
    // Shown by the test harness only if the test fails.
    std::println!("property test: AS_PROPTEST_SEED={seed:#x}, {ops} steps");
    while step < ops {
        if step % 10_000 == 9_999 {
            // Now and then a new space: the old one (images included) is destroyed, and every
            // frame, reservation and charged page must come back.
            for a in m.allocs.clone() {
                if a.kind == 0 {
                    fx.free(a.base, 0, MEM_RELEASE).expect("release");
                }
            }
            fx.teardown();
            (fx, m) = fresh();
        }
        if step % 1000 == 999 {
            // Start over now and then: release everything (so placement sees an empty space
            // again, e.g. for 2 MiB pages) and check that every frame came back.
            for a in m.allocs.clone() {
                assert_eq!(fx.free(a.base, 0, MEM_RELEASE), m.free(a.base, 0, MEM_RELEASE));
            }
            fx.finish_round();
            if m.allocs.is_empty() {
                assert_eq!(fx.frames.used_frames(), fx.start_used + 1, "frames after releasing everything");
            }
        }
        fx.two_phase = phases.below(2) == 0;
        let before = (fx.frames.used_frames(), fx.charge.committed_pages(), fx.charge.table_pages(), fx.counters.shootdown_rounds);
        let op = r.below(100);
        let env = Env { available: fx.frames.available_frames(), runs: fx.frames.free_2mib_runs() };
        let level = r.pick(&[CriticalLevel::Task, CriticalLevel::Task, CriticalLevel::AppDomain, CriticalLevel::Process]);
        let mut g = Gen { r: &mut r, m: &m };
        let outcome: String = match op {
            0..=11 => {
                let addr = if g.r.below(2) == 0 { 0 } else { g.addr() };
                let size = g.size(addr);
                let (ty, p) = (g.reserve_type(), g.prot());
                last = format!("[seed {seed:#x} step {step}] alloc({addr:#x}, {size:#x}, {ty:#x}, {p:#x}, {level:?})");
                let got = fx.alloc_at(addr, size, ty, p, level);
                assert_eq!(got, m.alloc(addr, size, ty, p, level, env), "{last}");
                res(&got)
            }
            12..=26 => {
                let addr = g.addr();
                let size = g.size(addr);
                let p = g.prot();
                last = format!("[seed {seed:#x} step {step}] commit({addr:#x}, {size:#x}, {p:#x}, {level:?})");
                let got = fx.alloc_at(addr, size, MEM_COMMIT, p, level);
                assert_eq!(got, m.alloc(addr, size, MEM_COMMIT, p, level, env), "{last}");
                res(&got)
            }
            27..=28 => {
                let (addr, size) = (g.addr(), 0x20_0000 * (1 + g.r.below(2)));
                let addr = if g.r.below(2) == 0 { 0 } else { addr & !0x1F_FFFF };
                let ty = MEM_RESERVE | MEM_COMMIT | MEM_LARGE_PAGES | if g.r.below(3) == 0 { MEM_TOP_DOWN } else { 0 };
                let p = g.r.pick(&[PAGE_READWRITE, PAGE_EXECUTE_READWRITE, PAGE_READONLY]);
                last = format!("[seed {seed:#x} step {step}] large({addr:#x}, {size:#x}, {ty:#x}, {p:#x})");
                let got = fx.alloc_at(addr, size, ty, p, level);
                assert_eq!(got, m.alloc(addr, size, ty, p, level, env), "{last}");
                res(&got)
            }
            29..=36 => {
                let addr = g.addr();
                let size = if g.r.below(3) == 0 { 0 } else { g.size(addr) };
                last = format!("[seed {seed:#x} step {step}] decommit({addr:#x}, {size:#x})");
                let got = fx.free(addr, size, MEM_DECOMMIT);
                assert_eq!(got, m.free(addr, size, MEM_DECOMMIT), "{last}");
                res(&got)
            }
            37..=46 => {
                let addr = g.addr();
                let size = if g.r.below(6) == 0 { 1 } else { 0 };
                let ty = if g.r.below(20) == 0 { g.r.pick(&[0, MEM_FREE, MEM_RELEASE | MEM_DECOMMIT]) } else { MEM_RELEASE };
                last = format!("[seed {seed:#x} step {step}] free({addr:#x}, {size:#x}, {ty:#x})");
                let got = fx.free(addr, size, ty);
                assert_eq!(got, m.free(addr, size, ty), "{last}");
                res(&got)
            }
            47..=57 => {
                let addr = g.addr();
                let size = g.size(addr);
                let p = g.prot();
                last = format!("[seed {seed:#x} step {step}] protect({addr:#x}, {size:#x}, {p:#x})");
                let got = fx.protect(addr, size, p);
                assert_eq!(got, m.protect(addr, size, p), "{last}");
                res(&got)
            }
            58..=63 => {
                let addr = g.addr();
                last = format!("[seed {seed:#x} step {step}] query({addr:#x})");
                let got = fx.query(addr);
                assert_eq!(got, m.query(addr), "{last}");
                res(&got)
            }
            64..=66 => {
                let addr = g.addr();
                let size = g.size(addr);
                let ty = g.r.pick(&[MEM_RESET, MEM_RESET_UNDO]);
                let p = g.prot();
                last = format!("[seed {seed:#x} step {step}] reset({addr:#x}, {size:#x}, {ty:#x}, {p:#x})");
                let got = fx.alloc_at(addr, size, ty, p, level);
                assert_eq!(got, m.alloc(addr, size, ty, p, level, env), "{last}");
                res(&got)
            }
            67..=88 => {
                let addr = if g.r.below(3) == 0 { g.watched_addr() } else { g.addr() } & !0xFFF;
                let access = g.r.pick(&[Access::Read, Access::Read, Access::Write, Access::Write, Access::Execute]);
                let value = g.r.next();
                last = format!("[seed {seed:#x} step {step}] touch({addr:#x}, {access:?}, {value:#x})");
                let got = match access {
                    Access::Read => fx.read_u64(addr),
                    Access::Write => fx.write_u64(addr, value).map(|_| value),
                    Access::Execute => match fx.touch(addr, Access::Execute) {
                        SimAccess::Done(_) => fx.read_u64(addr).or(Ok(0)).map(|_| 0),
                        SimAccess::Fault(f) => Err(f),
                    },
                };
                let want = m.touch(addr, access, value).map(|v| if access == Access::Execute { 0 } else { v });
                assert_eq!(got, want, "{last}");
                // The kernel's fault-around after a touch: pages mapped ahead change nothing the
                // model can see (they read zero, keep no write-watch mark, cost no charge).
                let mut around = 0;
                if got.is_ok() && value % 2 == 0 {
                    // Frames may run out (`model_equivalence_scarce_frames`): the kernel maps
                    // only as many pages as it got frames for.
                    let got;
                    (around, got) = fx.fault_around_with_frames(addr);
                    m.fault_around(addr, FAULT_AROUND_MAX.min(got));
                }
                let outcome = match got { Ok(_) => "ok", Err(FaultOutcome::GuardPage { .. }) => "guard", Err(_) => "av" };
                format!("{access:?} {outcome}{}", if around > 0 { " +around" } else { "" })
            }
            89..=93 => {
                let base = g.watched_addr();
                let size = g.size(base);
                let flags = g.r.pick(&[0, 0, 1, 1, 2]);
                let max = g.r.pick(&[0, 1, 2, 5, 64]);
                last = format!("[seed {seed:#x} step {step}] get_write_watch({flags}, {base:#x}, {size:#x}, {max})");
                let mut out = vec![0u64; max];
                let got = fx.run(|s, cx| s.get_write_watch(cx, flags, base, size, &mut out)).map(|n| out[..n].to_vec());
                assert_eq!(got, m.get_write_watch(flags, base, size, max), "{last}");
                match &got { Ok(v) if !v.is_empty() => "ok-nonempty".into(), other => res(other) }
            }
            94..=95 => {
                let base = g.watched_addr();
                let size = g.size(base);
                last = format!("[seed {seed:#x} step {step}] reset_write_watch({base:#x}, {size:#x})");
                let got = fx.run(|s, cx| s.reset_write_watch(cx, base, size));
                assert_eq!(got, m.reset_write_watch(base, size), "{last}");
                res(&got)
            }
            96 if g.r.below(4) == 0 => {
                let base = if g.r.below(4) == 0 { g.addr() } else { g.addr() & !0xFFFF };
                let n = 1 + g.r.below(12) as usize;
                let prots: Vec<u32> = (0..n)
                    .map(|_| {
                        g.r.pick(&[PAGE_READONLY, PAGE_EXECUTE_READ, PAGE_READWRITE, PAGE_EXECUTE, PAGE_NOACCESS, PAGE_EXECUTE_READWRITE, PAGE_WRITECOPY])
                    })
                    .collect();
                let mut prots = prots;
                if g.r.below(10) == 0 {
                    prots[0] = g.r.pick(&[0, PAGE_READONLY | PAGE_GUARD, PAGE_READWRITE | PAGE_NOCACHE]);
                }
                let host = g.r.below(2) == 0;
                last = format!("[seed {seed:#x} step {step}] image({base:#x}, {prots:x?}, host {host})");
                let got = fx.run(|s, cx| s.create_image(cx, base, &prots, host, level));
                assert_eq!(got, m.create_image(base, &prots, host, level, env), "{last}");
                res(&got)
            }
            _ => {
                let addr = g.addr() & !0xFFF;
                let value = g.r.next();
                last = format!("[seed {seed:#x} step {step}] write_user({addr:#x}, {value:#x})");
                let got = fx.run(|s, cx| s.write_user(cx, addr, &value.to_le_bytes()));
                assert_eq!(got, m.user_write(addr, value), "{last}");
                res(&got)
            }
        };
        check_against_model(&fx, &m, &last);
        if fx.pending.is_some() {
            // Phase 1 freed nothing (unless a walk made a round of its own) and gave no charge
            // back: that waits for the round.
            if fx.counters.shootdown_rounds == before.3 {
                assert!(fx.frames.used_frames() >= before.0, "a frame freed before the round: {last}");
            }
            assert!(fx.charge.committed_pages() >= before.1 && fx.charge.table_pages() >= before.2, "charge given back before the round: {last}");
        }
        if let Some(p) = &fx.pending {
            // Checked above between the phases; now the round, the frees and the uncharge.
            let freed = if p.frames() == (0, 0) { "nothing" } else { "frames" };
            *stats.entry(format!("(two-phase call with a round, freeing {freed})")).or_default() += 1;
            fx.finish_round();
            check_against_model(&fx, &m, &last);
        }
        let kind = last.split("] ").nth(1).unwrap_or("").split('(').next().unwrap_or("").to_string();
        *stats.entry(format!("{kind} {}", outcome)).or_default() += 1;
        step += 1;
    }
    std::println!("outcomes: {stats:#?}");
    // Releasing everything gives every frame back (images go with the space).
    for a in m.allocs.clone() {
        if a.kind == 0 {
            fx.free(a.base, 0, MEM_RELEASE).expect("release");
        }
    }
    fx.teardown();
}

/// The invariants of the issue, plus entry-by-entry agreement with the model. Between the
/// phases of a two-phase call (a round pending) every entry, record, count and reservation is
/// already final: only the frames and table pages to free after the round, the charge to give
/// back after them and the stale TLB entries the round will flush are not.
fn check_against_model(fx: &Fx, m: &Model, last: &str) {
    let ((frames_left, runs_left), (pages_left, tables_left)) = fx.pending.as_ref().map_or(((0, 0), (0, 0)), |p| (p.frames(), p.uncharge()));
    let between = fx.pending.is_some();
    assert_eq!(fx.charge.committed_pages(), m.committed + pages_left, "commit charge after {last} (between phases: {between})");
    let mut leaves = 0u64;
    let census = fx.sp().census_with(
        &fx.mem,
        |va, e| {
            leaves += 1;
            let p = m.page(va);
            assert_eq!(p.st, St::Committed, "entry for a page the model has {:?} at {va:#x} after {last}", p.st);
            assert_eq!(e.prot().to_win32(), p.prot, "protection at {va:#x} after {last}");
            assert_eq!(e.guard(), p.guard, "guard at {va:#x} after {last}");
            assert_eq!(e.dirty(), p.dirty, "dirty at {va:#x} after {last}");
            assert_eq!(e.frame().is_some(), p.frame, "frame at {va:#x} after {last}");
            let present = p.frame && p.prot != PAGE_NOACCESS && !p.guard;
            assert_eq!(e.is_present(), present, "present at {va:#x} after {last}");
        },
        |_, _| {},
    );
    let (held, large, committed4k) = m.frame_counts();
    assert_eq!(leaves, committed4k, "committed 4 KiB entries after {last}");
    assert_eq!(census.large_pages, large, "2 MiB entries after {last}");
    assert_eq!(census.bad_counts, 0, "table child counts after {last}");
    let tables = m.tables((0, 0), (0, 0));
    assert_eq!(census.table_pages, tables, "table pages after {last}");
    assert_eq!(fx.charge.table_pages(), tables + tables_left, "table pages charged after {last} (between phases: {between})");
    if !between {
        assert_eq!(fx.charge.limit_pages(), m.reported_limit(), "reported limit after {last}");
        assert!(fx.tlb.stale_entries(fx.sp(), &fx.mem).is_empty(), "stale TLB entry after {last}");
    }
    assert_eq!(fx.sp().table_pages(), tables, "kept table-page count after {last}");
    let left = (frames_left + runs_left * 512) as u64;
    assert_eq!(fx.frames.used_frames() - fx.start_used, held + tables + 1 + large * 512 + left, "frames in use after {last} (between phases: {between})");
    assert_eq!(fx.frames.reserved_frames(), committed4k - held, "reserved frames after {last}");
    assert_eq!(fx.sp().reserved_bytes(), fx.sp().allocations().map(|a| a.size).sum::<u64>(), "reserved bytes after {last}");
    for s in fx.sp().summaries(&fx.mem) {
        assert_eq!(s.committed_pages, s.allocation.committed_pages, "committed count of {:#x} after {last}", s.allocation.base);
        assert!(fx.sp().extent_holds(&fx.mem, &s.allocation), "committed extent of {:#x} after {last}", s.allocation.base);
    }
    // The whole VirtualQuery view.
    let mut a = 0;
    while a < m.end {
        let q = fx.query(a);
        assert_eq!(q, m.query(a), "query view at {a:#x} after {last}");
        a = q.expect("query").base_address + q.expect("query").region_size;
    }
}

fn res<T>(r: &Result<T, VmError>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => format!("{e:?}"),
    }
}

fn seed(default: u64) -> u64 {
    std::env::var("AS_PROPTEST_SEED")
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
        .unwrap_or(default)
}

fn ops() -> u64 {
    std::env::var("AS_PROPTEST_OPS").ok().and_then(|s| s.parse().ok()).unwrap_or(100_000)
}

/// 16 MiB straddling the 512 GiB boundary (two PML4 entries, PDPT/PD/PT splits), 12 MiB of
/// RAM (six 2 MiB runs, so large pages come and go), a commit limit below RAM.
#[test]
fn model_equivalence_across_a_pml4_boundary() {
    let cfg = SpaceConfig {
        min_address: 0x80_0000_0000 - 0x80_0000,
        max_address_end: 0x80_0000_0000 + 0x80_0000,
        tlb_flush_threshold: 8,
        ..SpaceConfig::default()
    };
    // Some of the tables come from the allowance, the rest are charged to the limit.
    run(seed(0xA5A5_0001), ops(), cfg, 12 << 20, 2400, 200, 6);
}

/// The bottom of user space (8 MiB), no large-page privilege, a commit limit well below RAM so
/// that the limit and the critical levels decide.
#[test]
fn model_equivalence_low_range_no_privilege() {
    let cfg = SpaceConfig {
        min_address: 0x10000,
        max_address_end: 0x80_0000,
        large_pages_allowed: false,
        ..SpaceConfig::default()
    };
    run(seed(0xA5A5_0002), ops(), cfg, 8 << 20, 400, 64, 0);
}

/// 8 MiB crossing a 1 GiB boundary with only 2 MiB of RAM (512 frames) and a generous limit:
/// frames run out first, for commits, tables and large pages.
#[test]
fn model_equivalence_scarce_frames() {
    let cfg = SpaceConfig {
        min_address: 0x4000_0000 - 0x40_0000,
        max_address_end: 0x4000_0000 + 0x40_0000,
        ..SpaceConfig::default()
    };
    run(seed(0xA5A5_0003), ops(), cfg, 2 << 20, 5000, 100, 0);
}
