//! Failure injection: the frame allocator fails its k-th request, for every k along a scripted
//! workload; every failing operation must return the out-of-memory error and change nothing
//! (state, charge, frame counts, counters, table bytes).

use super::*;

#[derive(Debug, Clone, Copy)]
enum Op {
    Alloc(u64, u64, u32, u32),
    Free(u64, u64, u32),
    Protect(u64, u64, u32),
    Write(u64, u64),
    WriteUser(u64, u64),
    Image(u64, usize),
}

const B: u64 = 0x80_0000_0000 - 0x4000; // straddles a PML4 boundary

fn script() -> Vec<Op> {
    use Op::*;
    ::alloc::vec![
        Alloc(A, 0x10000, RC, PAGE_READWRITE),
        Alloc(B, 0x8000, RC, PAGE_READWRITE | PAGE_GUARD),
        Alloc(0x6000_0000, 0x400000, MEM_RESERVE | MEM_WRITE_WATCH, PAGE_READWRITE),
        Alloc(0x6000_0000 + 0x1F_F000, 0x3000, MEM_COMMIT, PAGE_READWRITE),
        Write(A + 0x3000, 7),
        Write(0x6000_0000 + 0x20_0000, 8),
        Alloc(0, 0x40_0000, RC | MEM_LARGE_PAGES, PAGE_READWRITE),
        Image(0x100_0000, 5),
        Alloc(A, 0x10000, MEM_COMMIT, PAGE_READONLY),
        Protect(A, 0x4000, PAGE_NOACCESS),
        Free(A + 0x4000, 0x4000, MEM_DECOMMIT),
        Alloc(A, 0x10000, MEM_COMMIT, PAGE_READWRITE),
        Alloc(0, 0x3000, MEM_COMMIT | MEM_TOP_DOWN, PAGE_EXECUTE_READ),
        Alloc(0x7000_0000, 0x200000, RC, PAGE_READWRITE),
        WriteUser(0x7000_0000 + 0x1000, 9),
        Free(0x7000_0000, 0, MEM_RELEASE),
        Alloc(0x7000_0000, 0x200000, RC, PAGE_READWRITE),
    ]
}

fn apply(fx: &mut Fx, op: Op) -> Result<(), VmError> {
    match op {
        Op::Alloc(a, s, t, p) => fx.alloc_at(a, s, t, p, CriticalLevel::Process).map(|_| ()),
        Op::Free(a, s, t) => fx.free(a, s, t),
        Op::Protect(a, s, p) => fx.protect(a, s, p).map(|_| ()),
        // Committed pages never fail to fault in; a fault here means the page is not committed
        // (an earlier step failed), reported as 998.
        Op::Write(a, v) => fx.write_u64(a, v).map_err(|_| VmError::NoAccess),
        Op::WriteUser(a, v) => fx.run(|s, cx| s.write_user(cx, a, &v.to_le_bytes())),
        Op::Image(base, n) => {
            let prots = ::alloc::vec![PAGE_EXECUTE_READ; n];
            fx.run(|s, cx| s.create_image(cx, base, &prots, false, CriticalLevel::Process))
        }
    }
}

#[test]
fn every_kth_frame_request_failing_changes_nothing() {
    // Without injection every step succeeds.
    let mut fx = Fx::with(SpaceConfig::default(), 32 << 20, 1 << 20, 0);
    for op in script() {
        apply(&mut fx, op).unwrap_or_else(|e| panic!("{op:?}: {e:?}"));
        fx.check();
    }
    fx.teardown();

    let mut k = 1;
    loop {
        let mut fx = Fx::with(SpaceConfig::default(), 32 << 20, 1 << 20, 0);
        fx.frames.fail_request_after(Some(k));
        let mut fired = false;
        for op in script() {
            let before = fx.snapshot();
            match apply(&mut fx, op) {
                Ok(()) => {}
                Err(e) if !fired && e == VmError::NoMemory => {
                    fired = true;
                    assert!(e.is_out_of_memory());
                    assert_eq!(fx.snapshot(), before, "k = {k}: {op:?} failed but changed state");
                }
                // A later step may fail because the failed one left its range unreserved.
                Err(e) if fired => assert_ne!(e, VmError::NoMemory, "k = {k}: {op:?}"),
                Err(e) => panic!("k = {k}: {op:?} failed with {e:?}, not the out-of-memory error"),
            }
            fx.check();
        }
        let all_released: Vec<u64> = fx.sp().allocations().filter(|a| a.kind == AllocationKind::Private).map(|a| a.base).collect();
        for base in all_released {
            fx.free(base, 0, MEM_RELEASE).unwrap();
        }
        fx.teardown();
        if !fired {
            assert!(k > 10, "the script makes more than 10 frame requests");
            std::println!("failure injection: {} request positions, each failed cleanly", k - 1);
            break;
        }
        k += 1;
    }
}

#[test]
fn creating_a_space_without_frames_fails_cleanly() {
    let mut mem = crate::sim::SimPhysMemory::new(RAM_BASE, 1 << 20);
    let mut frames = crate::frame::FrameAllocator::new(&[mem.range()]);
    let mut counters = WorkCounters::default();
    frames.fail_request_after(Some(1));
    let r = AddressSpace::new(SpaceConfig::default(), &mut frames, &mut mem, &mut counters);
    assert_eq!(r.map(|_| ()), Err(VmError::NoMemory));
    assert_eq!(frames.used_frames(), 0);
    assert_eq!(counters, WorkCounters::default());
    let bad = SpaceConfig { min_address: 0x1000, ..SpaceConfig::default() };
    assert_eq!(AddressSpace::new(bad, &mut frames, &mut mem, &mut counters).map(|_| ()), Err(VmError::InvalidParameter));
}
