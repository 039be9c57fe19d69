//! VirtualProtect (win32-semantics §5).

use super::*;

#[test]
fn invalid_protection_first_and_nothing_changes() {
    let mut fx = Fx::new();
    let a = fx.alloc(0, 0x10000, MEM_RESERVE, PAGE_READWRITE).unwrap();
    fx.alloc(a, 0x1000, MEM_COMMIT, PAGE_READWRITE).unwrap();
    for p in [0, 0x03, 0x30, PAGE_WRITECOPY, PAGE_EXECUTE_WRITECOPY, PAGE_READWRITE | PAGE_EXECUTE_WRITECOPY, PAGE_NOACCESS | PAGE_GUARD] {
        fx.fails(VmError::InvalidProtection, |fx| fx.protect(a, 0x1000, p));
        assert_eq!(AddressSpace::check_protect_value(p), Err(VmError::InvalidProtection));
    }
    // Windows validates the protection before looking at the pages (Wine says 487 here).
    fx.fails(VmError::InvalidProtection, |fx| fx.protect(a + 0x1000, 0x1000, 0));
    fx.fails(VmError::InvalidProtection, |fx| fx.protect(0x7000_0000, 0x1000, 0));
}

#[test]
fn address_and_size_checks() {
    let mut fx = Fx::new();
    let a = fx.alloc(0, 0x10000, RC, PAGE_READWRITE).unwrap();
    fx.fails(VmError::InvalidParameter, |fx| fx.protect(0x7FFF_FFFF_0000, 0x1000, PAGE_READONLY));
    fx.fails(VmError::InvalidParameter, |fx| fx.protect(a, 0, PAGE_READONLY));
    fx.fails(VmError::InvalidParameter, |fx| fx.protect(a, u64::MAX, PAGE_READONLY));
}

#[test]
fn range_must_lie_in_one_allocation() {
    let mut fx = Fx::new();
    fx.alloc(A, 0x10000, RC, PAGE_READWRITE).unwrap();
    fx.alloc(A + 0x10000, 0x10000, RC, PAGE_READWRITE).unwrap();
    fx.fails(VmError::ConflictingAddresses, |fx| fx.protect(A + 0xF000, 0x2000, PAGE_READONLY));
    fx.fails(VmError::ConflictingAddresses, |fx| fx.protect(A + 0x20000, 0x1000, PAGE_READONLY));
    fx.fails(VmError::ConflictingAddresses, |fx| fx.protect(0x7000_0000, 0x1000, PAGE_READONLY));
}

#[test]
fn every_page_must_be_committed() {
    // WK: reserve 0xFFFC, protect fails; commit first page only, protect still fails.
    let mut fx = Fx::new();
    let a = fx.alloc(0, 0xFFFC, MEM_RESERVE, PAGE_NOACCESS).unwrap();
    fx.fails(VmError::NotCommitted, |fx| fx.protect(a, 0xFFFC, PAGE_READONLY));
    fx.alloc(a, 0x1000, MEM_COMMIT, PAGE_NOACCESS).unwrap();
    fx.fails(VmError::NotCommitted, |fx| fx.protect(a, 0xFFFC, PAGE_READONLY));
    assert_eq!(fx.protect(a, 0x1000, PAGE_READONLY), Ok(PAGE_NOACCESS));
    fx.check();
}

#[test]
fn old_protection_is_the_first_pages() {
    // WN: 16 pages whose halves differ → old = first half's value.
    let mut fx = Fx::new();
    let a = fx.alloc(0, 0x10000, RC, PAGE_READWRITE).unwrap();
    fx.protect(a + 0x8000, 0x8000, PAGE_READONLY).unwrap();
    assert_eq!(fx.protect(a, 0x10000, PAGE_EXECUTE_READ), Ok(PAGE_READWRITE));
    assert_eq!(fx.q(a), (0x10000, MEM_COMMIT, PAGE_EXECUTE_READ));
    assert_eq!(fx.protect(a + 1, 1, PAGE_READWRITE), Ok(PAGE_EXECUTE_READ));
    assert_eq!(fx.q(a), (0x1000, MEM_COMMIT, PAGE_READWRITE));
    fx.check();
}

#[test]
fn guard_is_armed_and_reported() {
    let mut fx = Fx::new();
    let a = fx.alloc(0, 0x10000, RC, PAGE_READWRITE).unwrap();
    assert_eq!(fx.protect(a, 0x1000, PAGE_READWRITE | PAGE_GUARD), Ok(PAGE_READWRITE));
    assert_eq!(fx.protect(a, 0x1000, PAGE_READWRITE | PAGE_GUARD), Ok(PAGE_READWRITE | PAGE_GUARD));
    assert_eq!(fx.q(a).2, PAGE_READWRITE | PAGE_GUARD);
}

#[test]
fn contents_survive_every_protection_change() {
    // RA TestReadWrite: RW → READONLY → NOACCESS → READONLY still reads the data.
    let mut fx = Fx::new();
    let a = fx.alloc(0, 0x1000, RC, PAGE_READWRITE).unwrap();
    fx.write(a, &[0xFF; 64]).unwrap();
    fx.protect(a, 0x1000, PAGE_READONLY).unwrap();
    assert!(matches!(fx.touch(a, Access::Write), crate::sim::SimAccess::Fault(FaultOutcome::AccessViolation { .. })));
    fx.protect(a, 0x1000, PAGE_NOACCESS).unwrap();
    assert!(!fx.pte(a).is_present());
    assert!(fx.pte(a).frame().is_some());
    assert!(matches!(fx.read(a, 1), Err(FaultOutcome::AccessViolation { .. })));
    fx.check();
    fx.protect(a, 0x1000, PAGE_READONLY).unwrap();
    assert_eq!(fx.read(a, 64).unwrap(), ::alloc::vec![0xFF; 64]);
    fx.protect(a, 0x1000, PAGE_READWRITE | PAGE_GUARD).unwrap();
    fx.protect(a, 0x1000, PAGE_EXECUTE_READWRITE).unwrap();
    assert_eq!(fx.read(a, 64).unwrap(), ::alloc::vec![0xFF; 64]);
    fx.check();
}

#[test]
fn protection_downgrade_leaves_no_stale_translation() {
    let mut fx = Fx::new();
    let a = fx.alloc(0, 0x40000, RC, PAGE_READWRITE).unwrap();
    for i in 0..0x40 {
        fx.write_u64(a + i * 0x1000, i).unwrap();
    }
    assert_eq!(fx.tlb.len(), 0x40);
    fx.protect(a, 0x2000, PAGE_READONLY).unwrap();
    fx.check();
    assert!(matches!(fx.touch(a, Access::Write), crate::sim::SimAccess::Fault(_)));
    let flushes = fx.counters.full_flushes;
    fx.protect(a, 0x40000, PAGE_NOACCESS).unwrap();
    assert_eq!(fx.counters.full_flushes, flushes + 1, "64 pages > threshold 32: one full flush");
    fx.check();
    assert!(fx.tlb.is_empty());
}
