//! The page tables themselves: entry bits, table creation and freeing, TLB batching.

use super::*;
use crate::paging::pte::{self, NO_EXECUTE, PRESENT, USER, WRITABLE};
use crate::paging::table::Leaf;

#[test]
fn present_entries_carry_the_protection() {
    let mut fx = Fx::new();
    let cases = [
        (PAGE_READONLY, 0, NO_EXECUTE),
        (PAGE_READWRITE, WRITABLE, NO_EXECUTE),
        (PAGE_EXECUTE, 0, 0),
        (PAGE_EXECUTE_READ, 0, 0),
        (PAGE_EXECUTE_READWRITE, WRITABLE, 0),
    ];
    for (p, rw, nx) in cases {
        let a = fx.alloc(0, 0x1000, RC, p).unwrap();
        fx.read(a, 1).unwrap();
        let e = fx.pte(a);
        assert!(e.is_present() && e.0 & USER != 0, "{p:#x}");
        assert_eq!(e.0 & (WRITABLE | NO_EXECUTE), rw | nx, "{p:#x}");
        assert_eq!(e.prot().to_win32(), p);
        assert_eq!(e.0 & pte::SW_COMMITTED, pte::SW_COMMITTED);
    }
    let a = fx.alloc(0, 0x1000, RC, PAGE_READWRITE | PAGE_NOCACHE).unwrap();
    fx.read(a, 1).unwrap();
    assert_eq!(fx.pte(a).0 & 0x18, 0x18, "PCD|PWT");
    let a = fx.alloc(0, 0x1000, RC, PAGE_READWRITE | PAGE_WRITECOMBINE).unwrap();
    fx.read(a, 1).unwrap();
    assert_eq!(fx.pte(a).0 & (0x18 | pte::PAT_4K), pte::PAT_4K, "PAT");
    assert_eq!(fx.q(a).2, PAGE_READWRITE | PAGE_WRITECOMBINE);
    fx.check();
}

#[test]
fn untouched_noaccess_and_guard_pages_are_not_present_and_say_why() {
    let mut fx = Fx::new();
    let a = fx.alloc(0, 0x3000, RC, PAGE_READWRITE).unwrap();
    fx.protect(a + 0x1000, 0x1000, PAGE_NOACCESS).unwrap();
    fx.protect(a + 0x2000, 0x1000, PAGE_EXECUTE_READ | PAGE_GUARD).unwrap();
    let (e0, e1, e2) = (fx.pte(a), fx.pte(a + 0x1000), fx.pte(a + 0x2000));
    assert!(!e0.is_present() && e0.is_committed() && e0.frame().is_none() && !e0.guard());
    assert!(!e1.is_present() && e1.prot() == BaseProtection::NoAccess);
    assert!(!e2.is_present() && e2.guard() && e2.prot() == BaseProtection::ExecuteRead);
    assert_eq!(e0.0 & PRESENT, 0);
}

#[test]
fn tables_are_created_on_demand_kept_by_decommit_and_freed_at_release() {
    let mut fx = Fx::new();
    // Straddle a 512 GiB boundary so PDPT, PD and PT levels all split.
    let base = 0x80_0000_0000 - 0x10000;
    let a = fx.alloc(base, 0x20000, RC, PAGE_READWRITE).unwrap();
    let c = fx.sp().census(&fx.mem);
    assert_eq!(c.table_pages, 6, "two PDPTs, two PDs, two PTs");
    assert_eq!(fx.counters.table_pages_allocated, 6);
    // A decommit empties the first PT and keeps it (and its parents) for the next commit.
    fx.free(a, 0x10000, MEM_DECOMMIT).unwrap();
    assert_eq!(fx.sp().census(&fx.mem).table_pages, 6);
    assert_eq!(fx.counters.table_pages_freed, 0);
    fx.check();
    let before = fx.counters;
    fx.alloc(a, 0x10000, MEM_COMMIT, PAGE_READWRITE).unwrap();
    assert_eq!(fx.counters.table_pages_allocated, before.table_pages_allocated, "the kept tables are used");
    assert_eq!(fx.counters.pte_writes - before.pte_writes, 1, "the PT's count, once (the pages are a lazy run)");
    fx.free(a, 0x20000, MEM_DECOMMIT).unwrap();
    assert_eq!(fx.sp().census(&fx.mem).table_pages, 6);
    fx.check();
    // The release finds them empty and frees them all.
    fx.free(a, 0, MEM_RELEASE).unwrap();
    assert_eq!(fx.sp().census(&fx.mem).table_pages, 0);
    assert_eq!(fx.counters.table_pages_freed, 6);
    fx.check();
    fx.teardown();
}

/// Every non-leaf entry is written once, with its final count: a commit links each new table
/// once, and a release clears each parent once without rewriting its count on the way.
#[test]
fn non_leaf_entries_are_written_once() {
    let mut fx = Fx::new();
    // 8 MiB in a fresh 512 GiB slot: 1 PDPT, 1 PD, 4 PTs.
    let base = 0x100_0000_0000;
    let before = fx.counters;
    let a = fx.alloc(base, 0x80_0000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE).unwrap();
    assert_eq!(fx.counters.table_pages_allocated - before.table_pages_allocated, 6);
    assert_eq!(fx.counters.pte_writes - before.pte_writes, 6, "one link per table, no leaf entry (lazy)");
    fx.check();
    let before = fx.counters;
    fx.free(a, 0, MEM_RELEASE).unwrap();
    assert_eq!(fx.counters.table_pages_freed - before.table_pages_freed, 6);
    assert_eq!(fx.counters.pte_writes - before.pte_writes, 6, "one unlink per table");
    fx.check();
    // Committed in two parts: the first extends... nothing, it makes the lazy run; the second,
    // with another protection, writes software entries; the release clears them.
    let a = fx.alloc(base, 0x80_0000, MEM_RESERVE, PAGE_READWRITE).unwrap();
    fx.alloc(a, 0x40_0000, MEM_COMMIT, PAGE_READWRITE).unwrap();
    let before = fx.counters;
    fx.alloc(a + 0x40_0000, 0x40_0000, MEM_COMMIT, PAGE_READONLY).unwrap();
    assert_eq!(fx.counters.pte_writes - before.pte_writes, 1024 + 2 + 1, "the entries, one link per new table, the directory's count once");
    fx.check();
    let before = fx.counters;
    fx.free(a, 0, MEM_RELEASE).unwrap();
    assert_eq!(fx.counters.pte_writes - before.pte_writes, 1024 + 6, "the written entries and one unlink per table");
    fx.check();
    // Committed in two parts alike: the run grows, no entry is written.
    let a = fx.alloc(base, 0x80_0000, MEM_RESERVE, PAGE_READWRITE).unwrap();
    fx.alloc(a + 0x40_0000, 0x40_0000, MEM_COMMIT, PAGE_READWRITE).unwrap();
    let before = fx.counters;
    fx.alloc(a, 0x40_0000, MEM_COMMIT, PAGE_READWRITE).unwrap();
    assert_eq!(fx.counters.pte_writes - before.pte_writes, 2 + 1, "one link per new table, the directory's count once");
    assert_eq!(fx.sp().allocation_at(a).unwrap().lazy().map(|r| (r.start, r.end)), Some((a, a + 0x80_0000)));
    assert_eq!(fx.q(a).0, 0x80_0000);
    fx.check();
    fx.free(a, 0, MEM_RELEASE).unwrap();
    // Large pages: three 2 MiB pages under one new directory and PDPT, then their release.
    if fx.sp().config().large_pages_allowed {
        let before = fx.counters;
        let a = fx.alloc(base, 0x60_0000, MEM_RESERVE | MEM_COMMIT | MEM_LARGE_PAGES, PAGE_READWRITE).unwrap();
        assert_eq!(fx.counters.pte_writes - before.pte_writes, 3 + 2);
        let before = fx.counters;
        fx.free(a, 0, MEM_RELEASE).unwrap();
        assert_eq!(fx.counters.pte_writes - before.pte_writes, 3 + 2);
        fx.check();
    }
    fx.teardown();
}

/// A whole allocation committed from reserved writes no leaf entry; the first touch writes the
/// only one; leaving the uniform state (a partial protect) writes the untouched pages' entries.
#[test]
fn a_lazy_commit_writes_each_entry_once() {
    let mut fx = Fx::new();
    let a = fx.alloc(0, 0x10000, RC, PAGE_READWRITE).unwrap();
    assert!(fx.sp().allocation_at(a).unwrap().lazy().is_some());
    assert_eq!(fx.raw_pte(a), Pte::RESERVED);
    assert!(fx.pte(a).is_committed() && fx.pte(a).frame().is_none());
    let before = fx.counters;
    fx.write_u64(a + 0x2000, 7).unwrap();
    assert_eq!(fx.counters.pte_writes - before.pte_writes, 1, "the touch writes the page's entry, its table's count is unchanged");
    assert!(fx.raw_pte(a + 0x2000).is_present());
    fx.check();
    // A protect of the whole allocation keeps it lazy: only the touched page's entry changes.
    let before = fx.counters;
    assert_eq!(fx.protect(a, 0x10000, PAGE_READONLY), Ok(PAGE_READWRITE));
    assert_eq!(fx.counters.pte_writes - before.pte_writes, 1);
    assert!(fx.sp().allocation_at(a).unwrap().lazy().is_some());
    assert_eq!(fx.q(a + 0x1000).2, PAGE_READONLY);
    assert_eq!(fx.read_u64(a + 0x2000), Ok(7));
    fx.check();
    // A guard on one page ends it: the 15 other pages get their entries (the touched one has its own).
    let before = fx.counters;
    fx.protect(a + 0x3000, 0x1000, PAGE_READONLY | PAGE_GUARD).unwrap();
    assert_eq!(fx.counters.pte_writes - before.pte_writes, 15 + 1);
    assert!(fx.sp().allocation_at(a).unwrap().lazy().is_none());
    assert_eq!(fx.raw_pte(a + 0x4000), fx.pte(a + 0x4000));
    fx.check();
    // A whole decommit of a lazy allocation unreserves the untouched pages' frames.
    let b = fx.alloc(0, 0x20000, RC, PAGE_EXECUTE_READ).unwrap();
    fx.read_u64(b + 0x1_0000).unwrap();
    let before = fx.counters;
    fx.free(b, 0x20000, MEM_DECOMMIT).unwrap();
    assert_eq!(fx.counters.pte_writes - before.pte_writes, 1 + 1, "the touched page's entry and its table's count");
    assert_eq!(fx.q(b).1, MEM_RESERVE);
    fx.check();
    fx.teardown();
}

/// A lazy run in part of a reservation: queries see it committed; decommits at its ends shrink
/// it; one of its middle, a guard or another protection on part of it write its entries.
#[test]
fn a_lazy_run_in_part_of_a_reservation() {
    let mut fx = Fx::new();
    let a = fx.alloc(0, 0x40_0000, MEM_RESERVE, PAGE_READWRITE).unwrap();
    let before = fx.counters;
    fx.alloc(a + 0x10_0000, 0x10_0000, MEM_COMMIT, PAGE_READONLY).unwrap();
    let tables = fx.counters.table_pages_allocated - before.table_pages_allocated;
    assert_eq!(fx.counters.pte_writes - before.pte_writes, tables, "the new tables' links, no leaf entry");
    let run = |fx: &Fx| fx.sp().allocation_at(a).unwrap().lazy().map(|r| (r.start - a, r.end - a));
    assert_eq!(run(&fx), Some((0x10_0000, 0x20_0000)));
    assert_eq!(fx.q(a), (0x10_0000, MEM_RESERVE, 0));
    assert_eq!(fx.q(a + 0x18_0000), (0x8_0000, MEM_COMMIT, PAGE_READONLY));
    assert_eq!(fx.q(a + 0x20_0000), (0x20_0000, MEM_RESERVE, 0));
    assert_eq!(fx.read_u64(a + 0x1F_F000), Ok(0));
    // Alike, adjacent: the run grows; the same protection on part of it changes nothing.
    fx.alloc(a + 0x20_0000, 0x1000, MEM_COMMIT, PAGE_READONLY).unwrap();
    assert_eq!(run(&fx), Some((0x10_0000, 0x20_1000)));
    let before = fx.counters;
    assert_eq!(fx.protect(a + 0x12_0000, 0x1000, PAGE_READONLY), Ok(PAGE_READONLY));
    assert_eq!(fx.counters.pte_writes, before.pte_writes);
    fx.check();
    // Decommits at the ends shrink it.
    fx.free(a + 0x10_0000, 0x1000, MEM_DECOMMIT).unwrap();
    fx.free(a + 0x20_0000, 0x1000, MEM_DECOMMIT).unwrap();
    assert_eq!(run(&fx), Some((0x10_1000, 0x20_0000)));
    assert_eq!(fx.q(a + 0x10_0000), (0x1000, MEM_RESERVE, 0));
    fx.check();
    // A decommit of its middle writes the entries of what stays committed.
    let before = fx.counters;
    fx.free(a + 0x14_0000, 0x1000, MEM_DECOMMIT).unwrap();
    assert_eq!(run(&fx), None);
    assert_eq!(fx.counters.pte_writes - before.pte_writes, 254 + 1 + 1, "the untouched pages' entries, the decommitted entry, its table's count");
    assert_eq!(fx.q(a + 0x10_1000), (0x3_F000, MEM_COMMIT, PAGE_READONLY));
    fx.check();
    // Another run; a guard on one of its pages ends it.
    let b = fx.alloc(0, 0x10000, MEM_RESERVE, PAGE_READWRITE).unwrap();
    fx.alloc(b + 0x4000, 0x4000, MEM_COMMIT, PAGE_READWRITE).unwrap();
    fx.protect(b + 0x5000, 0x1000, PAGE_READWRITE | PAGE_GUARD).unwrap();
    assert_eq!(fx.sp().allocation_at(b).unwrap().lazy(), None);
    assert_eq!(fx.q(b + 0x4000), (0x1000, MEM_COMMIT, PAGE_READWRITE));
    assert_eq!(fx.q(b + 0x5000), (0x1000, MEM_COMMIT, PAGE_READWRITE | PAGE_GUARD));
    fx.check();
    fx.teardown();
}

#[test]
fn a_kept_table_shared_with_a_neighbour_goes_when_both_are_empty() {
    let mut fx = Fx::new();
    // Two allocations in one 2 MiB chunk: one page table.
    let a = fx.alloc(A, 0x10000, RC, PAGE_READWRITE).unwrap();
    let b = fx.alloc(A + 0x10000, 0x10000, RC, PAGE_READWRITE).unwrap();
    assert_eq!(fx.sp().table_pages(), 3);
    fx.free(a, 0, MEM_DECOMMIT).unwrap();
    fx.free(a, 0, MEM_RELEASE).unwrap();
    assert_eq!(fx.sp().table_pages(), 3, "b still has entries in the table");
    fx.free(b, 0, MEM_DECOMMIT).unwrap();
    assert_eq!(fx.sp().table_pages(), 3, "kept for b");
    fx.check();
    fx.free(b, 0, MEM_RELEASE).unwrap();
    assert_eq!(fx.sp().table_pages(), 0);
    fx.check();
    // Kept tables at teardown go with the space.
    let c = fx.alloc(A, 0x10000, RC, PAGE_READWRITE).unwrap();
    fx.free(c, 0, MEM_DECOMMIT).unwrap();
    assert_eq!(fx.sp().table_pages(), 3);
    fx.check();
    fx.teardown();
}

/// A release of an allocation with no committed page walks no table unless an empty one it
/// must free is there; when one is, it is freed as before (also a neighbour's kept table).
#[test]
fn a_release_without_committed_pages_touches_tables_only_to_free_an_empty_one() {
    let mut fx = Fx::new();
    // No table at all: nothing but the record and the gap.
    let r = fx.alloc(A, 0x10000, MEM_RESERVE, PAGE_READWRITE).unwrap();
    let before = fx.counters;
    fx.free(r, 0, MEM_RELEASE).unwrap();
    assert_eq!(fx.counters, before, "no entry, table, frame or flush");
    // A table with a neighbour's entries: left as it is.
    let a = fx.alloc(A, 0x10000, RC, PAGE_READWRITE).unwrap();
    let r = fx.alloc(A + 0x10000, 0x10000, MEM_RESERVE, PAGE_READWRITE).unwrap();
    let before = fx.counters;
    fx.free(r, 0, MEM_RELEASE).unwrap();
    assert_eq!(fx.counters, before);
    assert_eq!(fx.sp().table_pages(), 3);
    fx.check();
    // The neighbour's decommit keeps the table empty: the next release over it frees it (and
    // its parents), whoever it belongs to.
    let r = fx.alloc(A + 0x10000, 0x10000, MEM_RESERVE, PAGE_READWRITE).unwrap();
    fx.free(a, 0, MEM_DECOMMIT).unwrap();
    assert_eq!(fx.sp().table_pages(), 3);
    fx.free(r, 0, MEM_RELEASE).unwrap();
    assert_eq!(fx.sp().table_pages(), 0);
    fx.free(a, 0, MEM_RELEASE).unwrap();
    // A kept table in a later 2 MiB of a large reservation is found too.
    let big = fx.alloc(A, 0x60_0000, MEM_RESERVE, PAGE_READWRITE).unwrap();
    fx.alloc(big + 0x40_0000, 0x1000, MEM_COMMIT, PAGE_READWRITE).unwrap();
    fx.free(big + 0x40_0000, 0x1000, MEM_DECOMMIT).unwrap();
    assert_eq!(fx.sp().allocation_at(big).unwrap().committed_pages, 0);
    assert_eq!(fx.sp().table_pages(), 3);
    fx.free(big, 0, MEM_RELEASE).unwrap();
    assert_eq!(fx.sp().table_pages(), 0);
    fx.check();
    fx.teardown();
}

#[test]
fn the_upper_half_of_the_root_is_never_touched() {
    let mut fx = Fx::new();
    let root = fx.sp().root().start_address().as_u64();
    // The kernel's entries.
    for i in 256..512u64 {
        fx.mem.write_u64(x86_64::PhysAddr::new(root + i * 8), 0xABCD_0000 | i);
    }
    let a = fx.alloc(0, 0x7FFF_0000_0000, MEM_RESERVE | MEM_TOP_DOWN, PAGE_READWRITE).unwrap();
    fx.alloc(a, 0x7FFF_0000_0000, MEM_COMMIT, PAGE_READWRITE).unwrap_err();
    fx.alloc(a + 0x7FFE_0000_0000, 0x1000, MEM_COMMIT, PAGE_READWRITE).unwrap();
    fx.free(a, 0, MEM_RELEASE).unwrap();
    for i in 256..512u64 {
        assert_eq!(fx.mem.read_u64(x86_64::PhysAddr::new(root + i * 8)), 0xABCD_0000 | i);
    }
}

#[test]
fn invalidations_are_batched_per_operation() {
    let mut fx = Fx::new();
    let a = fx.alloc(0, 0x100000, RC, PAGE_READWRITE).unwrap();
    for i in 0..4 {
        fx.write_u64(a + i * 0x1000, 1).unwrap();
    }
    let before = fx.counters;
    fx.free(a, 0x100000, MEM_DECOMMIT).unwrap();
    // Only the 4 present pages need invalidating.
    assert_eq!(fx.counters.invlpg - before.invlpg, 4);
    assert_eq!(fx.counters.full_flushes, before.full_flushes);
    fx.check();
    // Committing never-present pages invalidates nothing.
    let before = fx.counters;
    fx.alloc(a, 0x100000, MEM_COMMIT, PAGE_READONLY).unwrap();
    assert_eq!((fx.counters.invlpg, fx.counters.full_flushes), (before.invlpg, before.full_flushes));
    // The whole allocation, committed from reserved: no leaf entry, only the kept table's
    // count, once (the decommit kept the tables); the pages are lazily committed.
    assert_eq!(fx.counters.pte_writes - before.pte_writes, 1);
    assert_eq!(fx.raw_pte(a + 0x5000), Pte::RESERVED);
    assert_eq!(fx.q(a + 0x5000).2, PAGE_READONLY);
    assert_eq!(fx.counters.table_pages_allocated, before.table_pages_allocated);
}

#[test]
fn the_tlb_model_catches_a_missing_invalidation() {
    // The stale-TLB checks elsewhere can fail: rewrite an entry behind the space's back.
    let mut fx = Fx::new();
    let a = fx.alloc(0, 0x1000, RC, PAGE_READWRITE).unwrap();
    fx.write_u64(a, 1).unwrap();
    assert!(fx.tlb.get(a).is_some());
    let root = fx.sp().root().start_address().as_u64();
    let Leaf::Table(pt) = table::walk(&fx.mem, root, a) else { panic!("no table") };
    let at = x86_64::PhysAddr::new(pt + table::index(a, 0) * 8);
    let e = fx.mem.read_u64(at);
    fx.mem.write_u64(at, e & !WRITABLE);
    assert_eq!(fx.tlb.stale_entries(fx.sp(), &fx.mem), ::alloc::vec![a]);
    // And the stale entry is used by the simulated CPU, as real hardware would.
    assert!(matches!(fx.touch(a, Access::Write), crate::sim::SimAccess::Done(_)));
}

#[test]
fn spaces_share_the_allocator_and_the_charge() {
    let mut fx = Fx::new();
    let mut other = AddressSpace::new(SpaceConfig::default(), &mut fx.frames, &mut fx.mem, &mut fx.counters).unwrap();
    // Each space has its own TLB (a CR3 switch flushes the non-global entries).
    let mut other_tlb = crate::sim::TlbModel::new();
    let a = fx.alloc(0, 0x10000, RC, PAGE_READWRITE).unwrap();
    let b = {
        let mut cx = VmContext { frames: &mut fx.frames, mem: &mut fx.mem, tlb: &mut other_tlb, charge: &mut fx.charge, counters: &mut fx.counters };
        let b = other.virtual_alloc(&mut cx, 0, 0x8000, RC, PAGE_READWRITE, CriticalLevel::Task).unwrap();
        crate::sim::sim_write(&mut other, &mut cx, b, &[7; 16]).unwrap();
        b
    };
    assert_eq!(a, b, "separate spaces place independently");
    fx.write_u64(a, 1).unwrap();
    assert_eq!(fx.charge.committed_pages(), 16 + 8);
    assert_eq!(fx.frames.reserved_frames(), 15 + 7);
    // Destroying one space leaves the other intact.
    let root = {
        let mut cx = VmContext { frames: &mut fx.frames, mem: &mut fx.mem, tlb: &mut other_tlb, charge: &mut fx.charge, counters: &mut fx.counters };
        other.destroy(&mut cx)
    };
    fx.frames.free(root).unwrap();
    assert_eq!(fx.charge.committed_pages(), 16);
    assert_eq!(fx.read_u64(a), Ok(1));
    fx.check();
    fx.teardown();
}

/// A committed `PAGE_NOACCESS` page at `A`, the only page of its tables, after a faulting walk
/// that cached its PML4E, PDPTE and PDE (the model caches structure entries of faulting walks,
/// as the hardware may, SDM vol. 3A §4.10.3.1).
fn walked_noaccess_page() -> Fx {
    let mut fx = Fx::new();
    assert_eq!(fx.alloc(A, 0x1000, RC, PAGE_NOACCESS), Ok(A));
    assert!(matches!(fx.touch(A, Access::Read), SimAccess::Fault(FaultOutcome::AccessViolation { .. })));
    assert!(fx.tlb.get(A).is_none());
    assert_eq!(fx.tlb.structure_entries(), 3);
    fx
}

#[test]
fn freeing_a_table_page_invalidates_the_paging_structure_caches() {
    let mut fx = walked_noaccess_page();
    let tables = fx.sp().table_pages();
    let before = fx.counters;
    fx.free(A, 0, MEM_RELEASE).unwrap();
    // No present entry changed, but the PT, PD and PDPT went: one invlpg, for the caches.
    assert_eq!(fx.sp().table_pages(), tables - 3);
    assert_eq!(fx.counters.invlpg - before.invlpg, 1);
    assert_eq!(fx.tlb.structure_entries(), 0);
    fx.check();
}

#[test]
fn the_tlb_model_catches_a_missing_invlpg_after_a_table_page_is_freed() {
    let mut fx = walked_noaccess_page();
    // The same decommit, with every invalidation lost.
    let mut lost = crate::paging::tlb::NoTlb;
    let mut cx = VmContext { frames: &mut fx.frames, mem: &mut fx.mem, tlb: &mut lost, charge: &mut fx.charge, counters: &mut fx.counters };
    fx.space.as_mut().unwrap().virtual_free(&mut cx, A, 0, MEM_RELEASE).unwrap();
    // The cached PDE, PDPTE and PML4E name freed tables: all three are stale.
    let pml4e_span = table::entry_span(3);
    assert_eq!(fx.tlb.stale_entries(fx.sp(), &fx.mem), ::alloc::vec![A, A & !((1 << 30) - 1), A & !(pml4e_span - 1)]);
    // A full flush (as a CR3 reload) clears them.
    crate::paging::tlb::Tlb::flush_all(&mut fx.tlb);
    fx.check();
}

/// Issue 12: committing one page per 2 MiB needs a page table per page. With the limit and the
/// table allowance together set to exactly the frames there are (as the kernel sets them, no
/// overcommit), the commits run into the commit limit — never into a lack of frames — and at
/// that point the limit a guest is told, less what it committed, is smaller than one more commit
/// (a page and its table); every committed page can be touched; releasing gives every frame
/// and every charged page back.
#[test]
fn one_page_per_2mib_reaches_the_reported_limit_and_never_lacks_frames() {
    for allowance in [0, 64] {
        let mut fx = Fx::with(SpaceConfig::default(), 16 << 20, 0, 0);
        let limit = fx.frames.available_frames() - allowance;
        fx.charge = CommitCharge::new(limit, limit / 16).with_table_allowance(allowance);
        let span = 8u64 << 30;
        let a = fx.alloc(0, span, MEM_RESERVE, PAGE_READWRITE).unwrap();
        let mut committed = Vec::new();
        let error = loop {
            let at = a + committed.len() as u64 * crate::LARGE_PAGE_SIZE;
            assert!(at < a + span, "the reservation ran out before the limit");
            match fx.alloc_at(at, 0x1000, MEM_COMMIT, PAGE_READWRITE, CriticalLevel::Process) {
                Ok(_) => committed.push(at),
                Err(e) => break e,
            }
        };
        assert_eq!(error, VmError::CommitmentLimit, "the commit limit decides, not the frames");
        let c = &fx.charge;
        assert_eq!(c.committed_pages(), committed.len() as u64);
        assert_eq!(c.table_pages(), fx.sp().table_pages());
        assert_eq!(c.limit_pages(), limit - (c.table_pages() - allowance));
        assert!(c.limit_pages() - c.committed_pages() < 2, "a page and its table would have fitted");
        assert!(committed.len() as u64 >= limit / 2 - 8, "about half the frames are tables");
        for (i, &at) in committed.iter().enumerate() {
            fx.write_u64(at, i as u64).unwrap();
        }
        fx.check();
        fx.free(a, 0, MEM_RELEASE).unwrap();
        assert_eq!((fx.charge.committed_pages(), fx.charge.table_pages(), fx.charge.limit_pages()), (0, 0, limit));
        fx.teardown();
    }
}

/// Dense commits within the table allowance cost the limit nothing: what is committed is
/// exactly what the reported limit loses.
#[test]
fn dense_commits_use_the_table_allowance_only() {
    let mut fx = Fx::with(SpaceConfig::default(), 16 << 20, 0, 0);
    let limit = fx.frames.available_frames() - 16;
    fx.charge = CommitCharge::new(limit, 0).with_table_allowance(16);
    let a = fx.alloc(0, limit * 0x1000, RC, PAGE_READWRITE).unwrap();
    assert_eq!((fx.charge.committed_pages(), fx.charge.limit_pages()), (limit, limit));
    assert!(fx.charge.table_pages() <= 16);
    fx.fails(VmError::CommitmentLimit, |fx| fx.alloc(0, 0x1000, RC, PAGE_READWRITE));
    fx.free(a, 0, MEM_RELEASE).unwrap();
    fx.teardown();
}
