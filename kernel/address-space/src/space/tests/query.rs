//! VirtualQuery (win32-semantics §6).

use super::*;

#[test]
fn above_the_user_range_is_invalid() {
    let fx = Fx::new();
    assert_eq!(fx.query(0x7FFF_FFFF_0000), Err(VmError::InvalidParameter));
    assert_eq!(fx.query(u64::MAX), Err(VmError::InvalidParameter));
    assert!(fx.query(0x7FFF_FFFE_FFFF).is_ok());
}

#[test]
fn free_memory() {
    let mut fx = Fx::new();
    let m = fx.query(0).unwrap();
    assert_eq!(m, MemoryBasicInformation {
        base_address: 0,
        allocation_base: 0,
        allocation_protect: 0,
        partition_id: 0,
        region_size: 0x7FFF_FFFF_0000,
        state: MEM_FREE,
        protect: PAGE_NOACCESS,
        type_: 0,
    });
    fx.alloc(A, 0x1000, MEM_RESERVE, PAGE_READWRITE).unwrap();
    let m = fx.query(0x1234_5678).unwrap();
    assert_eq!((m.base_address, m.region_size), (0x1234_5000, A - 0x1234_5000));
}

#[test]
fn examples_from_wine_and_reactos() {
    let mut fx = Fx::new();
    let a = fx.alloc(A, 0xFFFC, MEM_RESERVE, PAGE_NOACCESS).unwrap();
    let m = fx.query(a).unwrap();
    assert_eq!((m.region_size, m.state, m.protect, m.type_), (0x10000, MEM_RESERVE, 0, MEM_PRIVATE));
    fx.alloc(a, 0x1000, MEM_COMMIT, PAGE_NOACCESS).unwrap();
    assert_eq!(fx.q(a), (0x1000, MEM_COMMIT, PAGE_NOACCESS));
    let m = fx.query(0x5000_F700).unwrap();
    assert_eq!((m.base_address, m.allocation_base, m.allocation_protect), (0x5000_F000, A, PAGE_NOACCESS));
}

#[test]
fn runs_coalesce_and_re_merge() {
    // WK test_write_watch: 3 of 16 pages READONLY → 3 pages; back to RW → 0x10000.
    let mut fx = Fx::new();
    let a = fx.alloc(0, 0x10000, MEM_RESERVE | MEM_WRITE_WATCH, PAGE_READWRITE).unwrap();
    fx.alloc(a, 0x10000, MEM_COMMIT, PAGE_READWRITE).unwrap();
    fx.write_u64(a + 0x5000, 1).unwrap(); // a dirty page does not split runs
    fx.protect(a + 0x1000, 0x3000, PAGE_READONLY).unwrap();
    assert_eq!(fx.q(a), (0x1000, MEM_COMMIT, PAGE_READWRITE));
    assert_eq!(fx.q(a + 0x1000), (0x3000, MEM_COMMIT, PAGE_READONLY));
    assert_eq!(fx.q(a + 0x4000), (0xC000, MEM_COMMIT, PAGE_READWRITE));
    fx.protect(a + 0x1000, 0x3000, PAGE_READWRITE).unwrap();
    assert_eq!(fx.q(a), (0x10000, MEM_COMMIT, PAGE_READWRITE));
    // Guard pages form their own run.
    fx.protect(a + 0x2000, 0x1000, PAGE_READWRITE | PAGE_GUARD).unwrap();
    assert_eq!(fx.q(a), (0x2000, MEM_COMMIT, PAGE_READWRITE));
    assert_eq!(fx.q(a + 0x2000), (0x1000, MEM_COMMIT, PAGE_READWRITE | PAGE_GUARD));
}

#[test]
fn adjacent_allocations_never_merge() {
    let mut fx = Fx::new();
    fx.alloc(A, 0x10000, RC, PAGE_READWRITE).unwrap();
    fx.alloc(A + 0x10000, 0x10000, RC, PAGE_READWRITE).unwrap();
    assert_eq!(fx.q(A), (0x10000, MEM_COMMIT, PAGE_READWRITE));
    fx.free(A, 0, MEM_DECOMMIT).unwrap();
    fx.free(A + 0x10000, 0, MEM_DECOMMIT).unwrap();
    assert_eq!(fx.q(A), (0x10000, MEM_RESERVE, 0));
}

#[test]
fn reserved_run_spans_absent_tables() {
    let mut fx = Fx::new();
    let a = fx.alloc(0x40_0000_0000, 3 << 30, MEM_RESERVE, PAGE_READWRITE).unwrap();
    fx.alloc(a + (2 << 30) + 0x5000, 1, MEM_COMMIT, PAGE_READONLY).unwrap();
    assert_eq!(fx.q(a), ((2 << 30) + 0x5000, MEM_RESERVE, 0));
    assert_eq!(fx.q(a + (2 << 30) + 0x5000), (0x1000, MEM_COMMIT, PAGE_READONLY));
    assert_eq!(fx.q(a + (2 << 30) + 0x6000), ((1 << 30) - 0x6000, MEM_RESERVE, 0));
}

#[test]
fn byte_image_is_the_x64_layout() {
    let m = MemoryBasicInformation {
        base_address: 0x1122,
        allocation_base: 0x3344,
        allocation_protect: 4,
        partition_id: 0,
        region_size: 0x5566,
        state: MEM_COMMIT,
        protect: 2,
        type_: MEM_PRIVATE,
    };
    let b = m.to_bytes();
    assert_eq!(b.len(), MemoryBasicInformation::SIZE);
    assert_eq!(&b[0..8], &0x1122u64.to_le_bytes());
    assert_eq!(&b[8..16], &0x3344u64.to_le_bytes());
    assert_eq!(&b[16..20], &4u32.to_le_bytes());
    assert_eq!(&b[20..24], &[0; 4]);
    assert_eq!(&b[24..32], &0x5566u64.to_le_bytes());
    assert_eq!(&b[32..36], &MEM_COMMIT.to_le_bytes());
    assert_eq!(&b[36..40], &2u32.to_le_bytes());
    assert_eq!(&b[40..44], &MEM_PRIVATE.to_le_bytes());
    assert_eq!(&b[44..48], &[0; 4]);
}

/// The allocation's `uniform` state: set by a commit or protect of the whole allocation, ended
/// by a partial change to another protection, a guard or a decommit; queries answer from it
/// exactly as from the page table (`Fx::check` compares it with the table after every step).
#[test]
fn uniform_allocations() {
    let mut fx = Fx::new();
    let uniform = |fx: &Fx, a: u64| fx.sp().allocation_at(a).unwrap().uniform;
    let a = fx.alloc(A, 0x8000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE).unwrap();
    assert_eq!(uniform(&fx, a), Some(BaseProtection::ReadWrite));
    assert_eq!(fx.q(a + 0x3000), (0x5000, MEM_COMMIT, PAGE_READWRITE));
    fx.check();
    // Part of it to the same protection: still uniform; to another: not.
    fx.protect(a + 0x1000, 0x1000, PAGE_READWRITE).unwrap();
    assert_eq!(uniform(&fx, a), Some(BaseProtection::ReadWrite));
    fx.protect(a + 0x1000, 0x1000, PAGE_READONLY).unwrap();
    assert_eq!(uniform(&fx, a), None);
    assert_eq!(fx.q(a), (0x1000, MEM_COMMIT, PAGE_READWRITE));
    assert_eq!(fx.q(a + 0x1000), (0x1000, MEM_COMMIT, PAGE_READONLY));
    fx.check();
    // The whole allocation: uniform again.
    fx.protect(a, 0x8000, PAGE_EXECUTE_READ).unwrap();
    assert_eq!(uniform(&fx, a), Some(BaseProtection::ExecuteRead));
    assert_eq!(fx.q(a), (0x8000, MEM_COMMIT, PAGE_EXECUTE_READ));
    // A guard page ends it, and so does a decommit; a commit of part of it does not bring it back.
    fx.protect(a + 0x7000, 0x1000, PAGE_EXECUTE_READ | PAGE_GUARD).unwrap();
    assert_eq!(uniform(&fx, a), None);
    assert_eq!(fx.q(a + 0x7000), (0x1000, MEM_COMMIT, PAGE_EXECUTE_READ | PAGE_GUARD));
    fx.protect(a, 0x8000, PAGE_READWRITE).unwrap();
    assert_eq!(uniform(&fx, a), Some(BaseProtection::ReadWrite));
    fx.free(a + 0x2000, 0x1000, MEM_DECOMMIT).unwrap();
    assert_eq!(uniform(&fx, a), None);
    assert_eq!(fx.q(a + 0x2000), (0x1000, MEM_RESERVE, 0));
    fx.alloc(a + 0x2000, 0x1000, MEM_COMMIT, PAGE_READWRITE).unwrap();
    assert_eq!(uniform(&fx, a), None);
    fx.check();
    // A commit of the whole reservation does; with a guard it does not.
    fx.alloc(a, 0x8000, MEM_COMMIT, PAGE_READONLY).unwrap();
    assert_eq!(uniform(&fx, a), Some(BaseProtection::ReadOnly));
    fx.alloc(a, 0x8000, MEM_COMMIT, PAGE_READONLY | PAGE_GUARD).unwrap();
    assert_eq!(uniform(&fx, a), None);
    let g = fx.alloc(0, 0x4000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE | PAGE_GUARD).unwrap();
    assert_eq!(uniform(&fx, g), None);
    // A reservation, a partial commit, an image and a large page are never uniform.
    let r = fx.alloc(0, 0x4000, MEM_RESERVE, PAGE_READWRITE).unwrap();
    assert_eq!(uniform(&fx, r), None);
    fx.alloc(r, 0x1000, MEM_COMMIT, PAGE_READWRITE).unwrap();
    assert_eq!(uniform(&fx, r), None);
    fx.check();
}

/// Access checks of system services read a uniform allocation's protection.
#[test]
fn uniform_access_checks() {
    let mut fx = Fx::new();
    let a = fx.alloc(A, 0x3000, MEM_RESERVE | MEM_COMMIT, PAGE_READONLY).unwrap();
    assert!(fx.sp().allocation_at(a).unwrap().uniform.is_some());
    assert_eq!(fx.run(|s, cx| s.check_user_access(cx, a + 0x800, 0x2000, false)), Ok(()));
    assert_eq!(fx.run(|s, cx| s.check_user_access(cx, a + 0x800, 0x2000, true)), Err(VmError::NoAccess));
    // Past the end of the allocation: the next page is free.
    assert_eq!(fx.run(|s, cx| s.check_user_access(cx, a + 0x2000, 0x1001, false)), Err(VmError::NoAccess));
    fx.check();
}

/// `check_user_write` accepts one committed, writable, touched page without a guard and changes
/// nothing; `complete_user_write` writes and sets the write-watch mark; `in_same_page` reuses it.
#[test]
fn checked_user_writes() {
    let mut fx = Fx::new();
    let a = fx.alloc(A, 0x4000, MEM_RESERVE | MEM_COMMIT | MEM_WRITE_WATCH, PAGE_READWRITE).unwrap();
    // Untouched (no frame yet): refused, so the general path gives it one.
    assert!(fx.sp().check_user_write(&fx.mem, a, 8).is_none());
    fx.touch(a, Access::Read);
    let before = fx.snapshot();
    let w = fx.sp().check_user_write(&fx.mem, a + 0x10, 8).expect("a touched read/write page");
    assert_eq!(fx.snapshot(), before, "a check changes nothing");
    assert_eq!(w.page(), a);
    // Across a page boundary, zero bytes, beyond the allocation, read-only, guard: refused.
    assert!(fx.sp().check_user_write(&fx.mem, a + 0xFFC, 8).is_none());
    assert!(fx.sp().check_user_write(&fx.mem, a, 0).is_none());
    assert!(fx.sp().check_user_write(&fx.mem, a + 0x4000, 8).is_none());
    assert!(fx.sp().check_user_write(&fx.mem, u64::MAX - 3, 8).is_none());
    fx.touch(a + 0x1000, Access::Read);
    fx.touch(a + 0x2000, Access::Read);
    fx.protect(a + 0x1000, 0x1000, PAGE_READONLY).unwrap();
    fx.protect(a + 0x2000, 0x1000, PAGE_READWRITE | PAGE_GUARD).unwrap();
    assert!(fx.sp().check_user_write(&fx.mem, a + 0x1000, 8).is_none());
    assert!(fx.sp().check_user_write(&fx.mem, a + 0x2000, 8).is_none());
    let m = w.in_same_page(a + 0x100, 48).expect("the same page");
    assert!(w.in_same_page(a + 0xFF0, 48).is_none());
    assert!(w.in_same_page(a + 0x1000, 8).is_none());
    fx.run(|s, cx| {
        s.complete_user_write(cx, m, &[7u8; 48]);
        s.complete_user_write(cx, w, &0x1122_3344_5566_7788u64.to_le_bytes());
    });
    assert_eq!(fx.read_u64(a + 0x10), Ok(0x1122_3344_5566_7788));
    assert_eq!(fx.read(a + 0x100, 48), Ok(::alloc::vec![7u8; 48]));
    assert!(fx.pte(a).dirty(), "the write-watch mark is set");
    let mut out = [0u64; 4];
    let n = fx.run(|s, cx| s.get_write_watch(cx, 0, a, 0x4000, &mut out)).unwrap();
    assert_eq!(&out[..n], &[a]);
    fx.check();
}
