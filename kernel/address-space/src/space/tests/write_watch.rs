//! Write watch (win32-semantics §7).

use super::*;

fn ww(fx: &mut Fx, flags: u32, base: u64, size: u64, max: usize) -> Result<Vec<u64>, VmError> {
    let mut out = ::alloc::vec![0u64; max];
    let n = fx.run(|s, cx| s.get_write_watch(cx, flags, base, size, &mut out))?;
    out.truncate(n);
    Ok(out)
}

fn setup() -> (Fx, u64) {
    let mut fx = Fx::new();
    let a = fx.alloc(0, 0x10000, MEM_RESERVE | MEM_WRITE_WATCH, PAGE_NOACCESS).unwrap();
    fx.alloc(a, 0x10000, MEM_COMMIT, PAGE_READWRITE).unwrap();
    (fx, a)
}

#[test]
fn parameter_errors() {
    let (mut fx, a) = setup();
    let b = fx.alloc(0, 0x10000, RC, PAGE_READWRITE).unwrap();
    for (flags, base, size, max) in [
        (2, a, 0x1000, 4),
        (0, a, 0, 4),
        (0, a, 0x1000, 0),
        (0, b, 0x1000, 4),
        (0, 0, 0x1000, 4),
        (0, a, 0x10001, 4),
        (0, a + 0x1000, u64::MAX, 4),
    ] {
        let before = fx.snapshot();
        assert_eq!(ww(&mut fx, flags, base, size, max), Err(VmError::InvalidParameter));
        assert_eq!(fx.snapshot(), before);
    }
    fx.fails(VmError::InvalidParameter, |fx| fx.run(|s, cx| s.reset_write_watch(cx, a, 0)));
    fx.fails(VmError::InvalidParameter, |fx| fx.run(|s, cx| s.reset_write_watch(cx, b, 0x1000)));
}

#[test]
fn writes_mark_reads_do_not() {
    let (mut fx, a) = setup();
    assert_eq!(ww(&mut fx, 0, a, 0x10000, 16), Ok(::alloc::vec![]));
    fx.read(a + 0x1000, 8).unwrap();
    fx.write_u64(a + 0x3000, 1).unwrap();
    // A write straddling two pages marks both.
    fx.write(a + 0x5FFC, &[1; 8]).unwrap();
    assert_eq!(ww(&mut fx, 0, a, 0x10000, 16), Ok(::alloc::vec![a + 0x3000, a + 0x5000, a + 0x6000]));
    // Reset with count 1 resets only the page returned.
    assert_eq!(ww(&mut fx, WRITE_WATCH_FLAG_RESET, a, 0x10000, 1), Ok(::alloc::vec![a + 0x3000]));
    assert_eq!(ww(&mut fx, 0, a, 0x10000, 16), Ok(::alloc::vec![a + 0x5000, a + 0x6000]));
    fx.check();
    // The CPU must set D again after a reset: the TLB entry was invalidated.
    fx.write_u64(a + 0x3000, 2).unwrap();
    assert_eq!(ww(&mut fx, 0, a, 0x4000, 16), Ok(::alloc::vec![a + 0x3000]));
    fx.run(|s, cx| s.reset_write_watch(cx, a, 0x10000)).unwrap();
    assert_eq!(ww(&mut fx, 0, a, 0x10000, 16), Ok(::alloc::vec![]));
    fx.check();
}

#[test]
fn protection_changes_keep_marks_and_decommit_clears_them() {
    let (mut fx, a) = setup();
    fx.write_u64(a, 1).unwrap();
    fx.write_u64(a + 0x1000, 1).unwrap();
    fx.protect(a, 0x2000, PAGE_NOACCESS).unwrap();
    assert_eq!(ww(&mut fx, 0, a, 0x2000, 16), Ok(::alloc::vec![a, a + 0x1000]));
    fx.protect(a, 0x2000, PAGE_READWRITE).unwrap();
    assert_eq!(ww(&mut fx, 0, a, 0x2000, 16), Ok(::alloc::vec![a, a + 0x1000]));
    fx.free(a + 0x1000, 0x1000, MEM_DECOMMIT).unwrap();
    fx.alloc(a + 0x1000, 0x1000, MEM_COMMIT, PAGE_READWRITE).unwrap();
    assert_eq!(ww(&mut fx, 0, a, 0x2000, 16), Ok(::alloc::vec![a]));
    fx.check();
}

#[test]
fn faulting_writes_do_not_mark_and_guard_marks_on_retry() {
    let (mut fx, a) = setup();
    fx.protect(a, 0x1000, PAGE_READONLY).unwrap();
    assert!(fx.write_u64(a, 1).is_err());
    fx.protect(a + 0x1000, 0x1000, PAGE_READWRITE | PAGE_GUARD).unwrap();
    assert!(matches!(fx.write_u64(a + 0x1000, 1), Err(FaultOutcome::GuardPage { .. })));
    assert_eq!(ww(&mut fx, 0, a, 0x2000, 16), Ok(::alloc::vec![]));
    fx.write_u64(a + 0x1000, 1).unwrap();
    assert_eq!(ww(&mut fx, 0, a, 0x2000, 16), Ok(::alloc::vec![a + 0x1000]));
}

#[test]
fn kernel_writes_count() {
    let (mut fx, a) = setup();
    fx.run(|s, cx| s.write_user(cx, a + 0x2000, &[9; 16])).unwrap();
    assert_eq!(ww(&mut fx, 0, a, 0x10000, 16), Ok(::alloc::vec![a + 0x2000]));
    fx.check();
}

#[test]
fn regression_end_near_2_pow_64_is_invalid_not_a_panic() {
    // Found by the property test (seed 0xa5a50001): base + size just below 2^64 overflowed
    // while rounding up to a page.
    let (mut fx, a) = setup();
    assert_eq!(ww(&mut fx, 0, a, u64::MAX - a, 4), Err(VmError::InvalidParameter));
    assert_eq!(fx.run(|s, cx| s.reset_write_watch(cx, a, u64::MAX - a)), Err(VmError::InvalidParameter));
    fx.fails(VmError::UnableToFree, |fx| fx.free(a, u64::MAX - a, MEM_DECOMMIT));
}
