//! VirtualFree (win32-semantics §4).

use super::*;

#[test]
fn free_type_must_be_exactly_decommit_or_release() {
    let mut fx = Fx::new();
    let a = fx.alloc(0, 0x10000, RC, PAGE_READWRITE).unwrap();
    for ty in [0, MEM_FREE, MEM_DECOMMIT | MEM_RELEASE, MEM_RELEASE | 0x1, MEM_RELEASE | 0x2, MEM_RESERVE] {
        fx.fails(VmError::InvalidParameter, |fx| fx.free(a, 0, ty));
    }
}

#[test]
fn release_needs_size_zero_before_anything_else() {
    let mut fx = Fx::new();
    let a = fx.alloc(0, 0x10000, RC, PAGE_READWRITE).unwrap();
    fx.fails(VmError::InvalidParameter, |fx| fx.free(a, 0x10000, MEM_RELEASE));
    // Even for free memory (kernelbase checks size first).
    fx.fails(VmError::InvalidParameter, |fx| fx.free(0x7000_0000, 1, MEM_RELEASE));
}

#[test]
fn address_checks() {
    let mut fx = Fx::new();
    fx.fails(VmError::InvalidParameter, |fx| fx.free(0x7FFF_FFFF_0000, 0, MEM_RELEASE));
    fx.fails(VmError::InvalidParameter, |fx| fx.free(u64::MAX, 0x1000, MEM_DECOMMIT));
    fx.fails(VmError::NotAllocated, |fx| fx.free(0x7000_0000, 0, MEM_RELEASE));
    fx.fails(VmError::NotAllocated, |fx| fx.free(0x7000_0000, 0x1000, MEM_DECOMMIT));
    // NULL: Windows 487 (Wine 87); we follow Windows.
    fx.fails(VmError::NotAllocated, |fx| fx.free(0, 0, MEM_RELEASE));
    // The unusable tail of a 64 KiB block is free memory.
    fx.alloc(A, 0x1000, MEM_RESERVE, PAGE_READWRITE).unwrap();
    fx.fails(VmError::NotAllocated, |fx| fx.free(A + 0x1000, 0, MEM_RELEASE));
}

#[test]
fn release_only_at_the_base_page() {
    // WN: a+0x1001 fails, a+0xfff succeeds.
    let mut fx = Fx::new();
    let a = fx.alloc(0, 0x10000, RC, PAGE_READWRITE).unwrap();
    fx.fails(VmError::FreeNotAtBase, |fx| fx.free(a + 0x1001, 0, MEM_RELEASE));
    fx.free(a + 0xFFF, 0, MEM_RELEASE).unwrap();
    assert_eq!(fx.q(a).1, MEM_FREE);
    fx.check();
}

#[test]
fn decommit_size_zero_only_at_the_base_page() {
    let mut fx = Fx::new();
    let a = fx.alloc(0, 0x10000, RC, PAGE_READWRITE).unwrap();
    fx.fails(VmError::FreeNotAtBase, |fx| fx.free(a + 0x1001, 0, MEM_DECOMMIT));
    fx.free(a + 0xFFE, 0, MEM_DECOMMIT).unwrap();
    // Windows: one reserved region for the whole allocation.
    assert_eq!(fx.q(a), (0x10000, MEM_RESERVE, 0));
    assert_eq!(fx.charge.committed_pages(), 0);
    fx.check();
}

#[test]
fn decommit_pages_touching_the_range() {
    // WN: a+0x1fff, size 2 → two pages from a+0x1000.
    let mut fx = Fx::new();
    let a = fx.alloc(0, 0x10000, RC, PAGE_READWRITE).unwrap();
    fx.free(a + 0x1FFF, 2, MEM_DECOMMIT).unwrap();
    assert_eq!(fx.q(a), (0x1000, MEM_COMMIT, PAGE_READWRITE));
    assert_eq!(fx.q(a + 0x1000), (0x2000, MEM_RESERVE, 0));
    assert_eq!(fx.q(a + 0x3000), (0xD000, MEM_COMMIT, PAGE_READWRITE));
    assert_eq!(fx.charge.committed_pages(), 14);
    fx.check();
}

#[test]
fn decommit_past_the_allocation_is_unable_to_free() {
    let mut fx = Fx::new();
    let a = fx.alloc(0, 0x1000, RC, PAGE_READWRITE).unwrap();
    fx.fails(VmError::UnableToFree, |fx| fx.free(a, 0x1001, MEM_DECOMMIT));
    fx.fails(VmError::UnableToFree, |fx| fx.free(a, u64::MAX, MEM_DECOMMIT));
    assert_eq!(VmError::UnableToFree.win32_code(), 87);
}

#[test]
fn decommit_of_reserved_pages_is_allowed() {
    let mut fx = Fx::new();
    let a = fx.alloc(0, 0x10000, MEM_RESERVE, PAGE_READWRITE).unwrap();
    fx.free(a, 0x10000, MEM_DECOMMIT).unwrap();
    fx.alloc(a, 0x1000, MEM_COMMIT, PAGE_READWRITE).unwrap();
    fx.free(a, 0x10000, MEM_DECOMMIT).unwrap();
    assert_eq!(fx.q(a), (0x10000, MEM_RESERVE, 0));
    fx.check();
}

#[test]
fn decommit_frees_frames_and_recommit_reads_zero() {
    let mut fx = Fx::new();
    let a = fx.alloc(0, 0x10000, RC, PAGE_READWRITE).unwrap();
    let used = fx.frames.used_frames();
    fx.write_u64(a + 0x2000, 0xDEAD).unwrap();
    assert_eq!(fx.frames.used_frames(), used + 1);
    fx.free(a + 0x2000, 0x1000, MEM_DECOMMIT).unwrap();
    assert_eq!(fx.frames.used_frames(), used);
    assert!(matches!(fx.read_u64(a + 0x2000), Err(FaultOutcome::AccessViolation { .. })));
    fx.alloc(a + 0x2000, 0x1000, MEM_COMMIT, PAGE_READWRITE).unwrap();
    assert_eq!(fx.read_u64(a + 0x2000), Ok(0));
    fx.check();
}

#[test]
fn release_frees_everything_and_the_range() {
    let mut fx = Fx::new();
    let start = fx.frames.used_frames();
    let a = fx.alloc(0, 0x400000, RC, PAGE_READWRITE).unwrap();
    for i in 0..0x400 {
        fx.write_u64(a + i * 0x1000, i).unwrap();
    }
    fx.free(a, 0, MEM_RELEASE).unwrap();
    assert_eq!(fx.frames.used_frames(), start);
    assert_eq!(fx.sp().census(&fx.mem).table_pages, 0);
    assert_eq!(fx.q(a).1, MEM_FREE);
    fx.check();
    fx.teardown();
}
