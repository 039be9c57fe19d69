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
