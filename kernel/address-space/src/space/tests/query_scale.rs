//! Property test of `VirtualQuery` in large, partly committed reservations (64 MiB to 300 GiB:
//! past the 64 GiB where the committed extent stops being page-exact): random commits,
//! decommits, protects (guards included) and faults at the reservations' ends, in their middle
//! and across table boundaries, each followed by queries compared with a sparse model (the
//! committed pages only, in an ordered map), and by a walk of the reservation's whole query view
//! now and then. The crate's flat model cannot hold such ranges; this one knows nothing of
//! tables, lazy runs or extents.

use ::alloc::collections::BTreeMap;
use ::alloc::vec::Vec;

use super::*;
use super::Rng;
use crate::sim::SimAccess;

/// The committed pages of one reservation: page → (base `PAGE_*` protection, guard).
struct Sparse {
    base: u64,
    size: u64,
    pages: BTreeMap<u64, (u32, bool)>,
}

impl Sparse {
    fn end(&self) -> u64 {
        self.base + self.size
    }

    /// (region size, state, protect) of the query at `addr`'s page.
    fn query(&self, addr: u64) -> (u64, u32, u32) {
        let page = addr & !(PAGE_SIZE - 1);
        match self.pages.get(&page) {
            None => {
                let next = self.pages.range(page..).next().map_or(self.end(), |(&va, _)| va);
                (next - page, MEM_RESERVE, 0)
            }
            Some(&(prot, guard)) => {
                let mut end = page;
                for (&va, &k) in self.pages.range(page..) {
                    if va != end || k != (prot, guard) {
                        break;
                    }
                    end += PAGE_SIZE;
                }
                (end - page, MEM_COMMIT, prot | if guard { PAGE_GUARD } else { 0 })
            }
        }
    }

    fn all_committed(&self, start: u64, end: u64) -> bool {
        self.pages.range(start..end).count() as u64 == (end - start) / PAGE_SIZE
    }
}

/// An offset in a reservation of `size` bytes where queries and runs meet the interesting
/// edges: its ends, 2 MiB and 1 GiB table boundaries, or anywhere.
fn offset(r: &mut Rng, size: u64) -> u64 {
    let pages = size / PAGE_SIZE;
    let near = |r: &mut Rng, at: u64| (at + r.below(64)).saturating_sub(32).min(pages - 1);
    let page = match r.below(8) {
        0 => r.below(64.min(pages)),
        1 => pages - 1 - r.below(64.min(pages)),
        2 => {
            let table = (r.below(pages) & !511) + 512;
            near(r, table)
        }
        3 => {
            let directory = (r.below(pages) & !(512 * 512 - 1)) + 512 * 512;
            near(r, directory)
        }
        4 => near(r, pages / 2),
        _ => r.below(pages),
    };
    page * PAGE_SIZE
}

fn check_queries(fx: &Fx, m: &Sparse, r: &mut Rng, around: &[u64], step: u64) {
    let mut at: Vec<u64> = around.iter().flat_map(|&a| [a.saturating_sub(PAGE_SIZE), a, a + PAGE_SIZE]).collect();
    at.extend((0..8).map(|_| m.base + offset(r, m.size)));
    for a in at.into_iter().filter(|&a| m.base <= a && a < m.end()) {
        let q = fx.query(a).expect("query");
        assert_eq!((q.base_address, q.allocation_base), (a & !(PAGE_SIZE - 1), m.base), "query at {a:#x}, step {step}");
        assert_eq!(fx.q(a), m.query(a), "query at {a:#x} (reservation {:#x}+{:#x}), step {step}", m.base, m.size);
    }
}

fn run(seed: u64, steps: u64) {
    let mut fx = Fx::with(SpaceConfig::default(), 32 << 20, 100_000, 0);
    let mut r = Rng(seed);
    let sizes = [64 << 20, (1 << 30) + 0x5000, 16 << 30, 300 << 30];
    let mut ms: Vec<Sparse> = sizes
        .iter()
        .map(|&size| {
            let ty = if r.below(2) == 0 { MEM_RESERVE | MEM_WRITE_WATCH } else { MEM_RESERVE };
            let base = fx.alloc(0, size, ty, PAGE_READWRITE).expect("reserve");
            Sparse { base, size, pages: BTreeMap::new() }
        })
        .collect();
    let prots = [PAGE_READWRITE, PAGE_READWRITE, PAGE_READONLY, PAGE_EXECUTE_READ, PAGE_NOACCESS];
    for step in 0..steps {
        let m = &mut ms[r.below(sizes.len() as u64) as usize];
        let start = m.base + offset(&mut r, m.size);
        let len = match r.below(10) {
            0 => m.size / (1 + r.below(4)),
            1..=3 => (1 + r.below(600)) * PAGE_SIZE,
            _ => (1 + r.below(24)) * PAGE_SIZE,
        };
        let end = (start + len).min(m.end());
        let committed: usize = ms.iter().map(|m| m.pages.len()).sum();
        let m = ms.iter_mut().find(|m| m.base <= start && start < m.end()).expect("reservation");
        let prot = prots[r.below(prots.len() as u64) as usize];
        let guard = prot != PAGE_NOACCESS && r.below(8) == 0;
        let p = prot | if guard { PAGE_GUARD } else { 0 };
        match r.below(8) {
            // Commit while the frames last (one reserved per page), otherwise decommit.
            0..=2 if committed + ((end - start) / PAGE_SIZE) as usize <= 4000 => {
                fx.alloc(start, end - start, MEM_COMMIT, p).expect("commit");
                for va in (start..end).step_by(PAGE_SIZE as usize) {
                    m.pages.insert(va, (prot, guard));
                }
            }
            0..=4 => {
                fx.free(start, end - start, MEM_DECOMMIT).expect("decommit");
                let gone: Vec<u64> = m.pages.range(start..end).map(|(&va, _)| va).collect();
                for va in gone {
                    m.pages.remove(&va);
                }
            }
            5 => {
                let got = fx.protect(start, end - start, p);
                if m.all_committed(start, end) {
                    assert_eq!(got.map(|_| ()), Ok(()), "protect, step {step}");
                    for va in (start..end).step_by(PAGE_SIZE as usize) {
                        m.pages.insert(va, (prot, guard));
                    }
                } else {
                    assert_eq!(got, Err(VmError::NotCommitted), "protect, step {step}");
                }
            }
            _ => {
                // Touch a committed page (a fault: demand-zero, or a guard disarmed) or any.
                let va = m.pages.range(start..).next().map_or(start, |(&va, _)| va);
                let access = if r.below(2) == 0 { Access::Read } else { Access::Write };
                let got = fx.touch(va, access);
                match m.pages.get_mut(&va) {
                    Some((_, guard @ true)) => {
                        assert!(matches!(got, SimAccess::Fault(FaultOutcome::GuardPage { .. })), "guard page at {va:#x}, step {step}");
                        *guard = false;
                    }
                    Some((PAGE_READWRITE, _)) => assert!(matches!(got, SimAccess::Done(_)), "touch at {va:#x}, step {step}"),
                    Some((PAGE_READONLY | PAGE_EXECUTE_READ, _)) if access == Access::Read => {
                        assert!(matches!(got, SimAccess::Done(_)), "read at {va:#x}, step {step}");
                    }
                    _ => assert!(matches!(got, SimAccess::Fault(FaultOutcome::AccessViolation { .. })), "touch at {va:#x}, step {step}"),
                }
            }
        }
        check_queries(&fx, m, &mut r, &[start, end], step);
        if step % 64 == 0 {
            // The whole view of every reservation, region by region.
            for m in &ms {
                let mut a = m.base;
                while a < m.end() {
                    let q = fx.q(a);
                    assert_eq!(q, m.query(a), "view at {a:#x}, step {step}");
                    a += q.0;
                }
            }
        }
        if step % 256 == 0 {
            fx.check();
        }
    }
    fx.check();
    for m in &ms {
        fx.free(m.base, 0, MEM_RELEASE).expect("release");
    }
    fx.teardown();
}

#[test]
fn queries_in_large_partly_committed_reservations_match_a_sparse_model() {
    let steps = std::env::var("AS_PROPTEST_OPS").ok().and_then(|s| s.parse::<u64>().ok()).map_or(4000, |n| n / 25);
    for seed in [0x5CA1_E001, 0x5CA1_E002, 0x5CA1_E003] {
        run(seed, steps);
    }
}
