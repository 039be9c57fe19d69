//! Faults, guard pages, system-service access checks (win32-semantics §8, host-abi §9).

use super::*;
use crate::sim::SimAccess;

fn av(access: Access, address: u64) -> SimAccess {
    SimAccess::Fault(FaultOutcome::AccessViolation { access, address })
}

#[test]
fn free_reserved_and_noaccess_pages_violate() {
    let mut fx = Fx::new();
    let a = fx.alloc(0, 0x10000, MEM_RESERVE, PAGE_READWRITE | PAGE_GUARD).unwrap();
    assert_eq!(fx.touch(0x7000_0000, Access::Read), av(Access::Read, 0x7000_0000));
    // A reserved page is a plain access violation, even if the reservation said GUARD.
    assert_eq!(fx.touch(a + 8, Access::Write), av(Access::Write, a + 8));
    fx.alloc(a, 0x1000, MEM_COMMIT, PAGE_NOACCESS).unwrap();
    assert_eq!(fx.touch(a, Access::Read), av(Access::Read, a));
    assert_eq!(fx.sp().census(&fx.mem).pages_with_frame, 0);
    fx.check();
}

#[test]
fn protection_violations() {
    let mut fx = Fx::new();
    let a = fx.alloc(0, 0x4000, RC, PAGE_READONLY).unwrap();
    fx.protect(a + 0x1000, 0x1000, PAGE_EXECUTE).unwrap();
    fx.protect(a + 0x2000, 0x1000, PAGE_READWRITE).unwrap();
    fx.protect(a + 0x3000, 0x1000, PAGE_EXECUTE_READ).unwrap();
    assert_eq!(fx.touch(a, Access::Write), av(Access::Write, a));
    assert_eq!(fx.touch(a, Access::Execute), av(Access::Execute, a));
    assert!(matches!(fx.touch(a, Access::Read), SimAccess::Done(_)));
    // PAGE_EXECUTE is readable on x64.
    assert!(matches!(fx.touch(a + 0x1000, Access::Read), SimAccess::Done(_)));
    assert!(matches!(fx.touch(a + 0x1000, Access::Execute), SimAccess::Done(_)));
    assert_eq!(fx.touch(a + 0x2000, Access::Execute), av(Access::Execute, a + 0x2000));
    assert_eq!(fx.touch(a + 0x3000, Access::Write), av(Access::Write, a + 0x3000));
    assert_eq!(Access::Execute.code(), 8);
    fx.check();
}

#[test]
fn demand_zero_counts_and_uses_the_reservation() {
    let mut fx = Fx::new();
    let a = fx.alloc(0, 0x10000, RC, PAGE_READWRITE).unwrap();
    assert_eq!(fx.frames.reserved_frames(), 16);
    let zeroed = fx.counters.frames_zeroed;
    assert_eq!(fx.read_u64(a + 0x3008), Ok(0));
    assert_eq!(fx.counters.frames_zeroed, zeroed + 1);
    assert_eq!(fx.counters.faults_resolved, 1);
    assert_eq!(fx.frames.reserved_frames(), 15);
    fx.check();
}

/// A frame zeroed by the caller (outside the lock) serves a demand-zero fault in place of a
/// reserved one: same counts as `handle_fault` in the end, and not used (left to the caller)
/// when the page needs none.
#[test]
fn a_caller_zeroed_frame_serves_a_demand_zero_fault() {
    let mut fx = Fx::new();
    let a = fx.alloc(0, 0x10000, RC, PAGE_READWRITE).unwrap();
    let (used, reserved) = (fx.frames.used_frames(), fx.frames.reserved_frames());
    let spare = fx.frames.alloc().unwrap();
    fx.mem.write_bytes(spare.start_address(), &[0xAA; 8]);
    fx.mem.zero_frame(spare);
    assert!(fx.sp().fault_needs_frame(&fx.mem, a + 0x2010, Access::Write));
    let mut zeroed = Some(spare);
    let out = fx.run(|s, cx| s.handle_fault_with_zeroed(cx, a + 0x2010, Access::Write, &mut zeroed));
    assert_eq!(out, FaultOutcome::Resolved);
    assert_eq!(zeroed, None, "the offered frame was used");
    assert_eq!(fx.pte(a + 0x2000).frame(), Some(spare.start_address().as_u64()));
    assert_eq!((fx.frames.used_frames(), fx.frames.reserved_frames()), (used + 1, reserved - 1));
    assert_eq!(fx.read_u64(a + 0x2010), Ok(0));
    // Not needed (present page, free memory, decommitted page): the frame stays the caller's.
    let spare = fx.frames.alloc().unwrap();
    for at in [a + 0x2010, a + 0x20000 - 0x1000] {
        assert!(!fx.sp().fault_needs_frame(&fx.mem, at, Access::Read));
        let mut zeroed = Some(spare);
        let _ = fx.run(|s, cx| s.handle_fault_with_zeroed(cx, at, Access::Read, &mut zeroed));
        assert_eq!(zeroed, Some(spare));
    }
    fx.free(a + 0x3000, 0x1000, MEM_DECOMMIT).unwrap();
    assert!(!fx.sp().fault_needs_frame(&fx.mem, a + 0x3000, Access::Read));
    fx.protect(a + 0x4000, 0x1000, PAGE_READONLY).unwrap();
    assert!(!fx.sp().fault_needs_frame(&fx.mem, a + 0x4000, Access::Write), "a refused write needs no frame");
    assert!(fx.sp().fault_needs_frame(&fx.mem, a + 0x4000, Access::Read));
    let mut zeroed = Some(spare);
    assert!(matches!(fx.run(|s, cx| s.handle_fault_with_zeroed(cx, a + 0x3000, Access::Read, &mut zeroed)), FaultOutcome::AccessViolation { .. }));
    assert_eq!(zeroed, Some(spare));
    fx.frames.free(spare).unwrap();
    fx.check();
}

#[test]
fn guard_page_is_one_shot() {
    let mut fx = Fx::new();
    let a = fx.alloc(0, 0x2000, MEM_RESERVE, PAGE_READWRITE | PAGE_GUARD).unwrap();
    fx.alloc(a, 0x2000, MEM_COMMIT, PAGE_READWRITE | PAGE_GUARD).unwrap();
    assert_eq!(fx.touch(a + 0x10, Access::Write), SimAccess::Fault(FaultOutcome::GuardPage { access: Access::Write, address: a + 0x10 }));
    let m = fx.query(a).unwrap();
    assert_eq!((m.region_size, m.protect, m.allocation_protect), (0x1000, PAGE_READWRITE, PAGE_READWRITE | PAGE_GUARD));
    assert!(matches!(fx.touch(a + 0x10, Access::Write), SimAccess::Done(_)));
    // Re-arm: old protection is RW.
    assert_eq!(fx.protect(a, 0x1000, PAGE_READWRITE | PAGE_GUARD), Ok(PAGE_READWRITE));
    assert_eq!(fx.read(a, 1), Err(FaultOutcome::GuardPage { access: Access::Read, address: a }));
    // The written value survived the guard period (the frame was kept).
    assert_eq!(fx.read_u64(a + 0x10), Ok(0));
    // Guard first, then protection: a write to a READONLY|GUARD page raises the guard first.
    fx.protect(a + 0x1000, 0x1000, PAGE_READONLY | PAGE_GUARD).unwrap();
    assert!(matches!(fx.touch(a + 0x1000, Access::Write), SimAccess::Fault(FaultOutcome::GuardPage { .. })));
    assert_eq!(fx.touch(a + 0x1000, Access::Write), av(Access::Write, a + 0x1000));
    fx.check();
}

#[test]
fn system_service_access_checks() {
    let mut fx = Fx::new();
    let a = fx.alloc(0, 0x10000, MEM_RESERVE, PAGE_READWRITE).unwrap();
    fx.alloc(a, 0x3000, MEM_COMMIT, PAGE_READWRITE).unwrap();
    fx.protect(a + 0x1000, 0x1000, PAGE_READWRITE | PAGE_GUARD).unwrap();
    fx.protect(a + 0x2000, 0x1000, PAGE_READONLY).unwrap();
    let check = |fx: &mut Fx, addr, len, w| fx.run(|s, cx| s.check_user_access(cx, addr, len, w));
    assert_eq!(check(&mut fx, a, 0x1000, true), Ok(()));
    assert_eq!(check(&mut fx, a, 0, true), Ok(()));
    assert_eq!(check(&mut fx, a + 0x3000, 1, false), Err(VmError::NoAccess));
    assert_eq!(check(&mut fx, 0x7000_0000, 1, false), Err(VmError::NoAccess));
    assert_eq!(check(&mut fx, u64::MAX, 2, false), Err(VmError::NoAccess));
    // A guard page: 0x80000001 once, guard cleared, then fine.
    assert_eq!(check(&mut fx, a + 0xFF0, 0x20, true), Err(VmError::GuardPage));
    assert_eq!(VmError::GuardPage.win32_code(), 0x8000_0001);
    assert_eq!(fx.q(a + 0x1000).2, PAGE_READWRITE);
    assert_eq!(check(&mut fx, a + 0xFF0, 0x20, true), Ok(()));
    // Read-only page: reads pass, writes fail with 998.
    assert_eq!(check(&mut fx, a + 0x2000, 8, false), Ok(()));
    assert_eq!(check(&mut fx, a + 0x2000, 8, true), Err(VmError::NoAccess));
    // Kernel copies: write_user then read back through the guest view.
    fx.run(|s, cx| s.write_user(cx, a + 0xFFC, &[1, 2, 3, 4, 5, 6, 7, 8])).unwrap();
    assert_eq!(fx.read(a + 0xFFC, 8).unwrap(), [1, 2, 3, 4, 5, 6, 7, 8]);
    let mut buf = [0u8; 4];
    fx.run(|s, cx| s.read_user(cx, a + 0x1000, &mut buf)).unwrap();
    assert_eq!(buf, [5, 6, 7, 8]);
    let before = fx.snapshot();
    assert_eq!(fx.run(|s, cx| s.write_user(cx, a + 0x2000, &[1])), Err(VmError::NoAccess));
    assert_eq!(fx.snapshot(), before);
    fx.check();
}

#[test]
fn a_stale_tlb_entry_is_resolved_not_reported() {
    let mut fx = Fx::new();
    let a = fx.alloc(0, 0x1000, RC, PAGE_READONLY).unwrap();
    assert_eq!(fx.read_u64(a), Ok(0));
    // Upgrade: the TLB entry (read-only) stays cached; a write faults and is resolved.
    fx.protect(a, 0x1000, PAGE_READWRITE).unwrap();
    fx.write_u64(a, 5).unwrap();
    assert_eq!(fx.read_u64(a), Ok(5));
    fx.check();
}

#[test]
fn stack_growth_flow_the_kernel_drives() {
    // host-abi §1: 1 MiB reserved, top pages committed RW, a guard page below; on the guard
    // fault the kernel commits the next page below as the new guard (Windows' stack growth).
    let mut fx = Fx::new();
    let stack = fx.alloc(0, 0x10_0000, MEM_RESERVE, PAGE_READWRITE).unwrap();
    let top = stack + 0x10_0000;
    fx.alloc(top - 0x2000, 0x2000, MEM_COMMIT, PAGE_READWRITE).unwrap();
    fx.alloc(top - 0x3000, 0x1000, MEM_COMMIT, PAGE_READWRITE | PAGE_GUARD).unwrap();
    let mut guard = top - 0x3000;
    for _ in 0..4 {
        let sp = guard + 0xF00;
        match fx.touch(sp, Access::Write) {
            SimAccess::Fault(FaultOutcome::GuardPage { address, .. }) => {
                assert_eq!(address & !0xFFF, guard);
                guard -= 0x1000;
                fx.alloc(guard, 0x1000, MEM_COMMIT, PAGE_READWRITE | PAGE_GUARD).unwrap();
            }
            other => panic!("expected a guard fault, got {other:?}"),
        }
        assert!(matches!(fx.touch(sp, Access::Write), SimAccess::Done(_)));
    }
    assert_eq!(fx.q(guard + 0x1000), (top - guard - 0x1000, MEM_COMMIT, PAGE_READWRITE));
    assert_eq!(fx.q(guard), (0x1000, MEM_COMMIT, PAGE_READWRITE | PAGE_GUARD));
    assert_eq!(fx.q(stack), (guard - stack, MEM_RESERVE, 0));
    fx.check();
}

#[test]
fn peek_reads_without_changing_anything() {
    // Issue 12: the kernel's own inspection (the #GP decoder) must leave guards armed and give no
    // frame to an untouched page.
    let mut fx = Fx::new();
    let a = fx.alloc(0, 0x10000, MEM_RESERVE, PAGE_READWRITE).unwrap();
    fx.alloc(a, 0x4000, MEM_COMMIT, PAGE_READWRITE).unwrap();
    fx.write_u64(a + 0xFF8, 0x1122_3344_5566_7788).unwrap();
    fx.protect(a + 0x1000, 0x1000, PAGE_READWRITE | PAGE_GUARD).unwrap();
    fx.protect(a + 0x3000, 0x1000, PAGE_NOACCESS).unwrap();
    let before = fx.snapshot();
    let peek = |fx: &Fx, addr: u64, len: usize| {
        let mut buf = ::alloc::vec![0xAAu8; len];
        fx.sp().peek_user(&fx.mem, addr, &mut buf).map(|()| buf)
    };
    assert_eq!(peek(&fx, a + 0xFF8, 8), Ok(0x1122_3344_5566_7788u64.to_le_bytes().to_vec()));
    // Crossing into the guard page: refused, guard still armed.
    assert_eq!(peek(&fx, a + 0xFF8, 16), Err(VmError::NoAccess));
    // An untouched committed page reads as zero and gets no frame.
    assert_eq!(peek(&fx, a + 0x2000, 4), Ok(::alloc::vec![0; 4]));
    assert_eq!(peek(&fx, a + 0x3000, 1), Err(VmError::NoAccess));
    assert_eq!(peek(&fx, a + 0x4000, 1), Err(VmError::NoAccess));
    assert_eq!(peek(&fx, u64::MAX - 1, 4), Err(VmError::NoAccess));
    assert_eq!(peek(&fx, a, 0), Ok(::alloc::vec![]));
    assert_eq!(fx.snapshot(), before);
    assert_eq!(fx.q(a + 0x1000).2, PAGE_READWRITE | PAGE_GUARD);
    fx.check();
}

/// Touches the pages of `[base, base + pages·4K)` in order as a guest with fault-around does:
/// a write to each, a fault where the page has no frame (then `fault_around_after`). Returns
/// the faults taken.
fn touch_in_order(fx: &mut Fx, base: u64, pages: u64) -> u64 {
    let mut faults = 0;
    for p in 0..pages {
        let page = base + p * PAGE_SIZE;
        if !fx.raw_pte(page).is_present() {
            faults += 1;
            assert!(fx.sp().fault_needs_frame(&fx.mem, page, Access::Write));
            assert!(matches!(fx.touch(page, Access::Write), SimAccess::Done(_)), "page {page:#x}");
            fx.fault_around_after(page);
        }
        fx.write_u64(page + 8, p + 1).unwrap();
    }
    faults
}

/// Sequential first touches map ahead in a doubling window: of 256 pages, faults at pages 0, 1,
/// 3, 7 and then every 16th; every page reads as written, the frames, reservations and charge
/// stay exact, and each entry is written once.
#[test]
fn fault_around_maps_sequential_first_touches_ahead() {
    let mut fx = Fx::new();
    let base = 0x4000_0000;
    fx.alloc(base, 0x10_0000, RC, PAGE_READWRITE).unwrap();
    let (zeroed, writes, resolved) = (fx.counters.frames_zeroed, fx.counters.pte_writes, fx.counters.faults_resolved);
    assert_eq!(touch_in_order(&mut fx, base, 256), 20);
    assert_eq!(fx.counters.faults_resolved - resolved, 20);
    assert_eq!(fx.counters.frames_zeroed - zeroed, 256);
    assert_eq!(fx.counters.pte_writes - writes, 256);
    for p in 0..256 {
        assert_eq!(fx.read_u64(base + p * PAGE_SIZE + 8), Ok(p + 1));
        assert_eq!(fx.read_u64(base + p * PAGE_SIZE + 16), Ok(0));
    }
    assert_eq!(fx.frames.reserved_frames(), 0);
    fx.check();
    // Decommitted and touched again: the same faults.
    fx.free(base, 0x10_0000, MEM_DECOMMIT).unwrap();
    fx.alloc(base, 0x10_0000, MEM_COMMIT, PAGE_READWRITE).unwrap();
    assert_eq!(touch_in_order(&mut fx, base, 256), 20);
    fx.check();
    fx.teardown();
}

/// An isolated first touch maps its page only; the window never leaves the allocation or the
/// page table, and stops at the first page that is not a first touch in waiting: a guard page,
/// a `PAGE_NOACCESS` page, a reserved page, a page with a frame.
#[test]
fn fault_around_maps_only_first_touches_in_waiting() {
    let mut fx = Fx::new();
    let base = 0x4000_0000;
    fx.alloc(base, 0x40_0000, RC, PAGE_READWRITE).unwrap();
    let page = |i: u64| base + i * PAGE_SIZE;
    let framed = |fx: &Fx, from: u64, to: u64| (from..to).filter(|&i| fx.raw_pte(page(i)).frame().is_some()).count();
    // Isolated: page 10 alone.
    fx.write_u64(page(10), 1).unwrap();
    assert_eq!(fx.sp().fault_around(&fx.mem, page(10)), 0);
    assert_eq!(fx.fault_around_after(page(10)), 0);
    // 11 continues a run of one: one page ahead (12).
    fx.write_u64(page(11), 1).unwrap();
    assert_eq!(fx.fault_around_after(page(11)), 1);
    assert_eq!(framed(&fx, 0, 64), 3);
    // Stops before a guard page, a no-access page, a reserved page and a present page.
    fx.write_u64(page(13), 1).unwrap();
    fx.protect(page(15), PAGE_SIZE, PAGE_READWRITE | PAGE_GUARD).unwrap();
    assert_eq!(fx.fault_around_after(page(13)), 1, "14, then the guard page");
    assert!(fx.pte(page(15)).guard() && fx.raw_pte(page(15)).frame().is_none());
    for (i, stop) in [(32u64, "noaccess"), (48, "reserved"), (64, "present")] {
        for j in i - 8..i - 3 {
            fx.write_u64(page(j), 1).unwrap();
        }
        match stop {
            "noaccess" => drop(fx.protect(page(i), PAGE_SIZE, PAGE_NOACCESS).unwrap()),
            "reserved" => fx.free(page(i), PAGE_SIZE, MEM_DECOMMIT).unwrap(),
            _ => fx.write_u64(page(i), 7).unwrap(),
        }
        fx.write_u64(page(i - 3), 1).unwrap();
        assert_eq!(fx.sp().fault_around(&fx.mem, page(i - 3)), 5, "{stop}: 5 behind");
        assert_eq!(fx.fault_around_after(page(i - 3)), 2, "{stop}");
        assert_eq!(fx.raw_pte(page(i)).frame().is_some(), stop == "present", "{stop}");
        fx.check();
    }
    // The end of a page table (512 pages at a 2 MiB boundary) and of the allocation.
    for j in 500..509 {
        fx.write_u64(page(j), 1).unwrap();
    }
    assert_eq!(fx.sp().fault_around(&fx.mem, page(508)), 3, "509..511, not past the table");
    let small = fx.alloc(0, 0x5000, RC, PAGE_READWRITE).unwrap();
    for j in 0..3 {
        fx.write_u64(small + j * PAGE_SIZE, 1).unwrap();
    }
    assert_eq!(fx.sp().fault_around(&fx.mem, small + 2 * PAGE_SIZE), 2, "two pages left in the allocation");
    // A read-only run maps read-only pages; a write to them faults as before.
    let ro = fx.alloc(0, 0x10000, RC, PAGE_READONLY).unwrap();
    for j in 0..4 {
        assert_eq!(fx.read_u64(ro + j * PAGE_SIZE), Ok(0));
    }
    assert_eq!(fx.fault_around_after(ro + 3 * PAGE_SIZE), 3);
    assert_eq!(fx.touch(ro + 5 * PAGE_SIZE, Access::Write), av(Access::Write, ro + 5 * PAGE_SIZE));
    assert_eq!(fx.read_u64(ro + 5 * PAGE_SIZE), Ok(0));
    fx.check();
    fx.teardown();
}

/// Pages mapped ahead are not written: write watch reports only the pages the guest wrote.
#[test]
fn fault_around_leaves_write_watch_marks_alone() {
    let mut fx = Fx::new();
    let base = fx.alloc(0, 0x10000, MEM_RESERVE | MEM_COMMIT | MEM_WRITE_WATCH, PAGE_READWRITE).unwrap();
    for j in 0..4 {
        fx.write_u64(base + j * PAGE_SIZE, 1).unwrap();
    }
    assert_eq!(fx.fault_around_after(base + 3 * PAGE_SIZE), 3);
    let mut out = [0u64; 16];
    let n = fx.run(|s, cx| s.get_write_watch(cx, 0, base, 0x10000, &mut out)).unwrap();
    assert_eq!(&out[..n], &[base, base + 0x1000, base + 0x2000, base + 0x3000]);
    fx.write_u64(base + 5 * PAGE_SIZE, 1).unwrap();
    let n = fx.run(|s, cx| s.get_write_watch(cx, 0, base, 0x10000, &mut out)).unwrap();
    assert_eq!(n, 5);
    assert_eq!(out[4], base + 5 * PAGE_SIZE);
    fx.check();
}
