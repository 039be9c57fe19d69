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
