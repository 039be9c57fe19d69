//! Image and host-owned allocations (host-abi §9) and large pages (§3.5).

use super::*;
use crate::paging::pte::HUGE;

#[test]
fn image_allocations() {
    let mut fx = Fx::new();
    let base = 0x40_0000;
    let prots = [PAGE_READONLY, PAGE_EXECUTE_READ, PAGE_EXECUTE_READ, PAGE_READWRITE];
    fx.run(|s, cx| s.create_image(cx, base, &prots, false, CriticalLevel::Process)).unwrap();
    fx.run(|s, cx| s.write_image(cx, base + 0x1000, &[0xC3])).unwrap();
    assert_eq!(fx.read(base + 0x1000, 1).unwrap(), [0xC3]);
    let m = fx.query(base + 0x1000).unwrap();
    assert_eq!(
        (m.allocation_base, m.allocation_protect, m.region_size, m.state, m.protect, m.type_),
        (base, PAGE_EXECUTE_WRITECOPY, 0x2000, MEM_COMMIT, PAGE_EXECUTE_READ, MEM_IMAGE)
    );
    assert_eq!(fx.charge.committed_pages(), 4);
    fx.fails(VmError::UnableToDeleteSection, |fx| fx.free(base, 0, MEM_RELEASE));
    fx.fails(VmError::UnableToDeleteSection, |fx| fx.free(base, 0x1000, MEM_DECOMMIT));
    fx.fails(VmError::ConflictingAddresses, |fx| fx.alloc(base, 0x1000, MEM_RESERVE, PAGE_READWRITE));
    fx.fails(VmError::AlreadyCommitted, |fx| fx.alloc(base, 0x1000, MEM_COMMIT, PAGE_READWRITE));
    assert_eq!(fx.protect(base + 0x3000, 0x1000, PAGE_READONLY), Ok(PAGE_READWRITE));
    fx.fails(VmError::ConflictingAddresses, |fx| {
        fx.run(|s, cx| s.create_image(cx, base + 0x10000 - 0x10000, &[PAGE_READONLY], false, CriticalLevel::Process))
    });
    fx.fails(VmError::InvalidParameter, |fx| {
        fx.run(|s, cx| s.create_image(cx, 0x80_0000, &[PAGE_READONLY | PAGE_GUARD], false, CriticalLevel::Process))
    });
    fx.check();
    fx.teardown();
}

#[test]
fn host_owned_allocations_refuse_everything_but_query() {
    let mut fx = Fx::new();
    let base = 0x7FFF_0000_0000;
    fx.run(|s, cx| s.create_image(cx, base, &[PAGE_EXECUTE_READ, PAGE_READONLY], true, CriticalLevel::Process)).unwrap();
    assert!(fx.sp().is_host_owned(base + 0x1000));
    fx.fails(VmError::NotAllocated, |fx| fx.free(base, 0, MEM_RELEASE));
    fx.fails(VmError::ConflictingAddresses, |fx| fx.protect(base, 0x1000, PAGE_READWRITE));
    fx.fails(VmError::ConflictingAddresses, |fx| fx.alloc(base, 0x1000, MEM_COMMIT, PAGE_READWRITE));
    fx.fails(VmError::ConflictingAddresses, |fx| fx.alloc(base, 0x1000, MEM_RESERVE, PAGE_READWRITE));
    fx.fails(VmError::ConflictingAddresses, |fx| fx.alloc(base, 0x1000, MEM_RESET, PAGE_READWRITE));
    let m = fx.query(base).unwrap();
    assert_eq!((m.type_, m.protect, m.region_size), (MEM_IMAGE, PAGE_EXECUTE_READ, 0x1000));
    assert_eq!(fx.touch(base, Access::Write), crate::sim::SimAccess::Fault(FaultOutcome::AccessViolation { access: Access::Write, address: base }));
    fx.check();
    fx.teardown();
}

#[test]
fn large_pages_map_2mib_entries() {
    let mut fx = Fx::with(SpaceConfig::default(), 16 << 20, 100_000, 0);
    fx.fails(VmError::InvalidParameter, |fx| fx.alloc(0, 0x1000, MEM_LARGE_PAGES | RC, PAGE_READWRITE));
    fx.fails(VmError::InvalidParameter, |fx| fx.alloc(0x1_0000, 0x20_0000, MEM_LARGE_PAGES | RC, PAGE_READWRITE));
    fx.fails(VmError::InvalidParameter, |fx| fx.alloc(0, 0x20_0000, MEM_LARGE_PAGES | RC, PAGE_READONLY));
    let runs = fx.frames.free_2mib_runs();
    let a = fx.alloc(0, 0x40_0000, MEM_LARGE_PAGES | RC, PAGE_READWRITE).unwrap();
    assert_eq!(a % 0x20_0000, 0);
    assert_eq!(fx.frames.free_2mib_runs(), runs - 2);
    let (_, e) = fx.sp().translate(&fx.mem, a + 0x1234).unwrap();
    assert_ne!(e & HUGE, 0);
    assert_eq!(fx.q(a + 0x1000), (0x3F_F000, MEM_COMMIT, PAGE_READWRITE));
    fx.write_u64(a + 0x20_0008, 77).unwrap();
    assert_eq!(fx.read_u64(a + 0x20_0008), Ok(77));
    assert_eq!(fx.read_u64(a + 0x8), Ok(0));
    fx.check();
    fx.fails(VmError::InvalidParameter, |fx| fx.protect(a, 0x1000, PAGE_READONLY));
    fx.fails(VmError::InvalidParameter, |fx| fx.free(a, 0x1000, MEM_DECOMMIT));
    fx.fails(VmError::InvalidParameter, |fx| fx.alloc(a, 0x1000, MEM_COMMIT, PAGE_READWRITE));
    fx.free(a, 0, MEM_RELEASE).unwrap();
    assert_eq!(fx.frames.free_2mib_runs(), runs);
    assert!(fx.tlb.stale_entries(fx.sp(), &fx.mem).is_empty());
    // Top-down placement is 2 MiB aligned too.
    let t = fx.alloc(0, 0x20_0000, MEM_LARGE_PAGES | RC | MEM_TOP_DOWN, PAGE_EXECUTE_READWRITE).unwrap();
    assert_eq!(t, 0x7FFF_FFE0_0000 - 0x20_0000);
    fx.check();
    fx.teardown();
}

#[test]
fn large_pages_without_runs_are_out_of_memory() {
    let mut fx = Fx::with(SpaceConfig::default(), 2 << 20, 100_000, 0);
    // The root frame broke the only 2 MiB run.
    fx.fails(VmError::NoMemory, |fx| fx.alloc(0, 0x20_0000, MEM_LARGE_PAGES | RC, PAGE_READWRITE));
}

#[test]
fn large_page_protection_is_fixed_and_enforced() {
    let mut fx = Fx::new();
    let rw = fx.alloc(0, 0x20_0000, MEM_LARGE_PAGES | RC, PAGE_READWRITE).unwrap();
    let rwx = fx.alloc(0, 0x20_0000, MEM_LARGE_PAGES | RC, PAGE_EXECUTE_READWRITE).unwrap();
    assert_eq!(fx.sp().allocation_at(rw).unwrap().large_protection(), Some(BaseProtection::ReadWrite));
    assert_eq!(fx.sp().allocation_at(rwx).unwrap().large_protection(), Some(BaseProtection::ExecuteReadWrite));
    // Reads and writes anywhere in the 2 MiB page; instruction fetches only from the RWX one.
    assert!(matches!(fx.touch(rw + 0x1F_F008, Access::Write), SimAccess::Done(_)));
    assert!(matches!(fx.touch(rw + 0x1000, Access::Read), SimAccess::Done(_)));
    assert_eq!(
        fx.touch(rw + 0x1000, Access::Execute),
        SimAccess::Fault(FaultOutcome::AccessViolation { access: Access::Execute, address: rw + 0x1000 })
    );
    assert!(matches!(fx.touch(rwx + 0x10_0000, Access::Execute), SimAccess::Done(_)));
    // Query: committed to the end of the allocation, with the fixed protection.
    assert_eq!(fx.q(rwx + 0x10_0000), (0x10_0000, MEM_COMMIT, PAGE_EXECUTE_READWRITE));
    assert_eq!(fx.q(rw), (0x20_0000, MEM_COMMIT, PAGE_READWRITE));
    fx.check();
    fx.teardown();
}

#[test]
fn only_large_page_allocations_have_a_large_protection() {
    let mut fx = Fx::new();
    let small = fx.alloc(0, 0x20_0000, RC, PAGE_EXECUTE_READWRITE).unwrap();
    assert_eq!(fx.sp().allocation_at(small).unwrap().large_protection(), None);
}

#[test]
fn large_page_placement_aligns_up_and_keeps_the_gap_below() {
    let mut fx = Fx::new();
    assert_eq!(fx.alloc(0, 0x1_0000, MEM_RESERVE, PAGE_READWRITE), Ok(0x1_0000));
    // The lowest gap starts at 0x2_0000: the large allocation goes to the next 2 MiB boundary.
    assert_eq!(fx.alloc(0, 0x20_0000, MEM_LARGE_PAGES | RC, PAGE_READWRITE), Ok(0x20_0000));
    // The gap below it still serves small allocations, to its last block.
    assert_eq!(fx.alloc(0, 0x1_0000, MEM_RESERVE, PAGE_READWRITE), Ok(0x2_0000));
    assert_eq!(fx.alloc(0, 0x1D_0000, MEM_RESERVE, PAGE_READWRITE), Ok(0x3_0000));
    assert_eq!(fx.alloc(0, 0x1000, MEM_RESERVE, PAGE_READWRITE), Ok(0x40_0000));
    // Top down, below a small top-down allocation: the highest 2 MiB boundary that fits.
    assert_eq!(fx.alloc(0, 0x1000, MEM_RESERVE | MEM_TOP_DOWN, PAGE_READWRITE), Ok(0x7FFF_FFFE_0000));
    assert_eq!(fx.alloc(0, 0x20_0000, MEM_LARGE_PAGES | RC | MEM_TOP_DOWN, PAGE_READWRITE), Ok(0x7FFF_FFC0_0000));
    // And the gap above it (up to 0x7FFF_FFFE_0000) is still free for small top-down ones.
    assert_eq!(fx.alloc(0, 0x1000, MEM_RESERVE | MEM_TOP_DOWN, PAGE_READWRITE), Ok(0x7FFF_FFFD_0000));
    fx.check();
    fx.teardown();
}

#[test]
fn releasing_large_pages_frees_their_directories() {
    let mut fx = Fx::new();
    let tables = fx.sp().table_pages();
    let a = fx.alloc(0x4000_0000, 0x40_0000, MEM_LARGE_PAGES | RC, PAGE_READWRITE).unwrap();
    // A PDPT and a PD; no page table under 2 MiB entries.
    assert_eq!(fx.sp().table_pages(), tables + 2);
    fx.write_u64(a, 1).unwrap();
    assert_eq!(fx.tlb.structure_entries(), 2);
    fx.free(a, 0, MEM_RELEASE).unwrap();
    assert_eq!(fx.sp().table_pages(), tables);
    assert_eq!(fx.tlb.structure_entries(), 0);
    assert_eq!(fx.query(a).map(|i| i.state), Ok(MEM_FREE));
    fx.check();
    fx.teardown();
}
