//! VirtualAlloc: validation order (§3.1), reserve (§3.2), commit (§3.3), reset (§3.4), charge.

use super::*;

mod validation {
    use super::*;

    #[test]
    fn unknown_type_bits_are_invalid() {
        let mut fx = Fx::new();
        for ty in [AT_ROUND_TO_PAGE | MEM_RESERVE, 0xFFFF_FFFF, MEM_RESERVE | 0x8000, MEM_COMMIT | MEM_DECOMMIT] {
            fx.fails(VmError::InvalidParameter, |fx| fx.alloc(0, 0x1000, ty, PAGE_READWRITE));
        }
        // Type checks come before the protection check: both wrong gives InvalidParameter.
        fx.fails(VmError::InvalidParameter, |fx| fx.alloc(0, 0x1000, 0xFFFF_FFFF, 0));
    }

    #[test]
    fn an_operation_is_required() {
        let mut fx = Fx::new();
        for ty in [0, MEM_TOP_DOWN, MEM_WRITE_WATCH, MEM_PHYSICAL, MEM_LARGE_PAGES] {
            fx.fails(VmError::InvalidParameter, |fx| fx.alloc(0, 0x1000, ty, PAGE_READWRITE));
        }
    }

    #[test]
    fn reset_must_be_alone() {
        let mut fx = Fx::new();
        let a = fx.alloc(0, 0x10000, RC, PAGE_READWRITE).unwrap();
        for ty in [
            MEM_RESET | MEM_COMMIT,
            MEM_RESET | MEM_TOP_DOWN,
            MEM_RESET | MEM_RESET_UNDO,
            MEM_RESET_UNDO | MEM_RESERVE,
            MEM_RESET | MEM_WRITE_WATCH,
        ] {
            fx.fails(VmError::InvalidParameter, |fx| fx.alloc(a, 0x1000, ty, PAGE_READWRITE));
        }
    }

    #[test]
    fn large_pages_need_reserve_and_commit_and_no_watch() {
        let mut fx = Fx::new();
        for ty in [
            MEM_LARGE_PAGES | MEM_RESERVE,
            MEM_LARGE_PAGES | MEM_COMMIT,
            MEM_LARGE_PAGES | RC | MEM_WRITE_WATCH,
            MEM_LARGE_PAGES | RC | MEM_PHYSICAL,
        ] {
            fx.fails(VmError::InvalidParameter, |fx| fx.alloc(0, 0x20_0000, ty, PAGE_READWRITE));
        }
    }

    #[test]
    fn write_watch_needs_reserve() {
        let mut fx = Fx::new();
        fx.fails(VmError::InvalidParameter, |fx| fx.alloc(0, 0x1000, MEM_WRITE_WATCH | MEM_COMMIT, PAGE_READWRITE));
    }

    #[test]
    fn physical_rules_then_unsupported() {
        let mut fx = Fx::new();
        fx.fails(VmError::InvalidParameter, |fx| fx.alloc(0, 0x1000, MEM_PHYSICAL | MEM_COMMIT, PAGE_READWRITE));
        fx.fails(VmError::InvalidParameter, |fx| fx.alloc(0, 0x1000, MEM_PHYSICAL | RC, PAGE_READWRITE));
        fx.fails(VmError::InvalidParameter, |fx| fx.alloc(0, 0x1000, MEM_PHYSICAL | MEM_RESERVE, PAGE_READONLY));
        fx.fails(VmError::InvalidParameter, |fx| fx.alloc(0, 0x1000, MEM_PHYSICAL | MEM_RESERVE, PAGE_READWRITE));
    }

    #[test]
    fn protection_is_validated_for_every_operation() {
        let mut fx = Fx::new();
        let a = fx.alloc(0, 0x10000, MEM_RESERVE, PAGE_READWRITE).unwrap();
        for ty in [MEM_RESERVE, MEM_COMMIT, RC, MEM_RESET, MEM_RESET_UNDO] {
            for p in [0, PAGE_WRITECOPY, PAGE_EXECUTE_WRITECOPY, PAGE_READWRITE | PAGE_EXECUTE, PAGE_NOACCESS | PAGE_GUARD] {
                fx.fails(VmError::InvalidProtection, |fx| fx.alloc(a, 0x1000, ty, p));
            }
        }
        // Protection before address and size (a bad protection with size 0 still says 87 via
        // InvalidProtection).
        fx.fails(VmError::InvalidProtection, |fx| fx.alloc(0, 0, MEM_RESERVE, 0));
    }

    #[test]
    fn address_checks() {
        let mut fx = Fx::new();
        for addr in [0x7FFF_FFFF_0000, 0xFFFF_8000_0000_0000, u64::MAX, 0x1000, 0xFFFF] {
            fx.fails(VmError::InvalidParameter, |fx| fx.alloc(addr, 0x1000, MEM_RESERVE, PAGE_READWRITE));
        }
        // The highest application address itself is in range.
        assert_eq!(fx.alloc(0x7FFF_FFFE_FFFF, 1, MEM_RESERVE, PAGE_READWRITE), Ok(0x7FFF_FFFE_0000));
        fx.check();
    }

    #[test]
    fn size_checks() {
        let mut fx = Fx::new();
        fx.fails(VmError::InvalidParameter, |fx| fx.alloc(0, 0, MEM_RESERVE, PAGE_READWRITE));
        fx.fails(VmError::InvalidParameter, |fx| fx.alloc(0, u64::MAX, MEM_RESERVE, PAGE_READWRITE));
        fx.fails(VmError::InvalidParameter, |fx| fx.alloc(A, u64::MAX - A + 1, MEM_RESERVE, PAGE_READWRITE));
        fx.fails(VmError::InvalidParameter, |fx| fx.alloc(0x7FFF_FFFE_0000, 0x1_0001, MEM_RESERVE, PAGE_READWRITE));
        fx.fails(VmError::InvalidParameter, |fx| fx.alloc(0, 0x7FFF_FFFF_0001, MEM_RESERVE, PAGE_READWRITE));
        // Size before privilege: large pages without privilege and size 0 is 87.
        let cfg = SpaceConfig { large_pages_allowed: false, ..SpaceConfig::default() };
        let mut fx = Fx::with(cfg, 16 << 20, 100_000, 0);
        fx.fails(VmError::InvalidParameter, |fx| fx.alloc(0, 0, MEM_LARGE_PAGES | RC, PAGE_READWRITE));
        fx.fails(VmError::PrivilegeNotHeld, |fx| fx.alloc(0, 0x1000, MEM_LARGE_PAGES | RC, PAGE_READWRITE));
    }

    #[test]
    fn valid_protections_with_modifiers() {
        let mut fx = Fx::new();
        for p in [PAGE_READONLY | PAGE_WRITECOMBINE, PAGE_READWRITE | PAGE_GUARD, PAGE_EXECUTE_READ | PAGE_NOCACHE] {
            let a = fx.alloc(0, 0x1000, MEM_RESERVE, p).unwrap();
            assert_eq!(fx.query(a).unwrap().allocation_protect, p);
        }
        fx.check();
    }
}

mod reserve {
    use super::*;

    #[test]
    fn the_allocation_cap_is_out_of_memory_after_validation() {
        let cfg = SpaceConfig { max_allocations: 3, ..SpaceConfig::default() };
        let mut fx = Fx::with(cfg, 16 << 20, 100_000, 0);
        let a = fx.alloc(0, 0x1000, MEM_RESERVE, PAGE_READWRITE).unwrap();
        fx.alloc(0, 0x1000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE).unwrap();
        fx.alloc(0, 0x1000, MEM_RESERVE, PAGE_READWRITE).unwrap();
        // Validation still decides first; then the cap is out of memory, and nothing changes.
        fx.fails(VmError::InvalidParameter, |fx| fx.alloc(0, 0, MEM_RESERVE, PAGE_READWRITE));
        fx.fails(VmError::ConflictingAddresses, |fx| fx.alloc(a, 0x1000, MEM_RESERVE, PAGE_READWRITE));
        fx.fails(VmError::NoMemory, |fx| fx.alloc(0, 0x1000, MEM_RESERVE, PAGE_READWRITE));
        fx.fails(VmError::NoMemory, |fx| fx.alloc(0, 0x1000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE));
        // Commit inside an existing allocation is not limited; a release makes room again.
        fx.alloc(a, 0x1000, MEM_COMMIT, PAGE_READWRITE).unwrap();
        fx.free(a, 0, MEM_RELEASE).unwrap();
        fx.alloc(0, 0x1000, MEM_RESERVE, PAGE_READWRITE).unwrap();
        fx.check();
    }

    #[test]
    fn rounding_examples_from_reactos() {
        // RA CheckAlignment, RK CustomBaseAllocation.
        let cases = [
            (0x5000_0000, 1, 0x5000_0000, 0x1000),
            (0x5000_8000, 1, 0x5000_0000, 0x9000),
            (0x5000_0010, 0x1000, 0x5000_0000, 0x2000),
            (0x5000_FFFF, 0x3000, 0x5000_0000, 0x13000),
            (0x5000_1010, 0x7000, 0x5000_0000, 0x9000),
            (0x5000_1010, 0xC000, 0x5000_0000, 0xE000),
            (0x6002_5000, 200, 0x6002_0000, 0x6000),
        ];
        for (addr, size, base, rsize) in cases {
            let mut fx = Fx::new();
            assert_eq!(fx.alloc(addr, size, MEM_RESERVE, PAGE_READWRITE), Ok(base));
            let m = fx.query(base).unwrap();
            assert_eq!((m.allocation_base, m.region_size, m.state, m.protect), (base, rsize, MEM_RESERVE, 0));
            assert_eq!(fx.sp().allocation_at(base).unwrap().size, rsize);
        }
    }

    #[test]
    fn the_dead_tail_of_a_block_conflicts() {
        let mut fx = Fx::new();
        fx.alloc(A, 0x3000, MEM_RESERVE, PAGE_READWRITE).unwrap();
        fx.fails(VmError::ConflictingAddresses, |fx| fx.alloc(A + 0x8000, 0x1000, MEM_RESERVE, PAGE_READWRITE));
        // Query calls the tail free.
        assert_eq!(fx.q(A + 0x8000), (0x7FFF_FFFF_0000 - A - 0x8000, MEM_FREE, PAGE_NOACCESS));
        fx.alloc(A + 0x10000, 0x1000, MEM_RESERVE, PAGE_READWRITE).unwrap();
        assert_eq!(fx.q(A + 0x8000), (0x8000, MEM_FREE, PAGE_NOACCESS));
        // WN: RESERVE|COMMIT at a+0x1000 next to a one-page allocation fails.
        let mut fx = Fx::new();
        fx.alloc(A, 0x1000, RC, PAGE_READWRITE).unwrap();
        fx.fails(VmError::ConflictingAddresses, |fx| fx.alloc(A + 0x1000, 0x1000, RC, PAGE_READWRITE));
        // Overlap with the start of an existing allocation.
        fx.fails(VmError::ConflictingAddresses, |fx| fx.alloc(A - 0x10000, 0x10001, MEM_RESERVE, PAGE_READWRITE));
        assert_eq!(fx.alloc(A - 0x10000, 0x10000, MEM_RESERVE, PAGE_READWRITE), Ok(A - 0x10000));
        fx.check();
    }

    #[test]
    fn null_address_placement_is_lowest_fit_or_top_down() {
        let mut fx = Fx::new();
        assert_eq!(fx.alloc(0, 0x1000, MEM_RESERVE, PAGE_READWRITE), Ok(0x10000));
        assert_eq!(fx.alloc(0, 0x11000, MEM_RESERVE, PAGE_READWRITE), Ok(0x20000));
        assert_eq!(fx.alloc(0, 1, MEM_RESERVE, PAGE_READWRITE), Ok(0x40000));
        let top = fx.alloc(0, 0x1000, MEM_RESERVE | MEM_TOP_DOWN, PAGE_READWRITE).unwrap();
        assert_eq!(top, 0x7FFF_FFFE_0000);
        let top2 = fx.alloc(0, 0x21000, MEM_RESERVE | MEM_TOP_DOWN, PAGE_READWRITE).unwrap();
        assert_eq!(top2, 0x7FFF_FFFB_0000);
        // A freed hole is reused by the next lowest fit.
        fx.free(0x20000, 0, MEM_RELEASE).unwrap();
        assert_eq!(fx.alloc(0, 0x20000, MEM_RESERVE, PAGE_READWRITE), Ok(0x20000));
        // TOP_DOWN with COMMIT alone (a NULL-address commit implies reserve) is legal.
        let c = fx.alloc(0, 0x1000, MEM_COMMIT | MEM_TOP_DOWN, PAGE_READWRITE).unwrap();
        assert!(c > 0x7FFF_0000_0000);
        assert_eq!(fx.q(c), (0x1000, MEM_COMMIT, PAGE_READWRITE));
        fx.check();
    }

    #[test]
    fn top_down_takes_the_highest_gap_that_fits() {
        let mut fx = Fx::new();
        let td = MEM_RESERVE | MEM_TOP_DOWN;
        let t1 = fx.alloc(0, 0x1_0000, td, PAGE_READWRITE).unwrap();
        let t2 = fx.alloc(0, 0x1_0000, td, PAGE_READWRITE).unwrap();
        let t3 = fx.alloc(0, 0x1_0000, td, PAGE_READWRITE).unwrap();
        assert_eq!((t1, t2, t3), (0x7FFF_FFFE_0000, 0x7FFF_FFFD_0000, 0x7FFF_FFFC_0000));
        fx.free(t2, 0, MEM_RELEASE).unwrap();
        // 128 KiB does not fit the 64 KiB hole: it goes below t3.
        assert_eq!(fx.alloc(0, 0x2_0000, td, PAGE_READWRITE), Ok(0x7FFF_FFFA_0000));
        // A page does: the hole is the highest gap that fits.
        assert_eq!(fx.alloc(0, 0x1000, td, PAGE_READWRITE), Ok(t2));
        // An unaligned size: its last 64 KiB block ends where the gap does.
        assert_eq!(fx.alloc(0, 0x1_1000, td, PAGE_READWRITE), Ok(0x7FFF_FFF8_0000));
        assert_eq!(fx.q(0x7FFF_FFF8_0000), (0x1_1000, MEM_RESERVE, 0));
        assert_eq!(fx.q(0x7FFF_FFF9_1000).1, MEM_FREE);
        // Bottom-up placement is unaffected.
        assert_eq!(fx.alloc(0, 0x1000, MEM_RESERVE, PAGE_READWRITE), Ok(0x1_0000));
        fx.check();
        fx.teardown();
    }

    #[test]
    fn address_space_exhaustion_is_out_of_memory() {
        let cfg = SpaceConfig { min_address: 0x10000, max_address_end: 0x50000, ..SpaceConfig::default() };
        let mut fx = Fx::with(cfg, 16 << 20, 100_000, 0);
        assert_eq!(fx.alloc(0, 0x20000, MEM_RESERVE, PAGE_READWRITE), Ok(0x10000));
        fx.fails(VmError::NoMemory, |fx| fx.alloc(0, 0x30000, MEM_RESERVE, PAGE_READWRITE));
        assert_eq!(fx.alloc(0, 0x20000, MEM_RESERVE, PAGE_READWRITE), Ok(0x30000));
        fx.fails(VmError::NoMemory, |fx| fx.alloc(0, 0x1000, MEM_RESERVE | MEM_TOP_DOWN, PAGE_READWRITE));
        assert!(VmError::NoMemory.is_out_of_memory());
    }

    #[test]
    fn reserve_commit_commits_pages_below_an_unaligned_address() {
        // RA CheckAlignment: 0x50004080/0x1000 RESERVE|COMMIT → 0x50000000 size 0x6000.
        let mut fx = Fx::new();
        assert_eq!(fx.alloc(0x5000_4080, 0x1000, RC, PAGE_READWRITE), Ok(A));
        assert_eq!(fx.q(A), (0x6000, MEM_COMMIT, PAGE_READWRITE));
        fx.write_u64(A, 7).unwrap();
        assert_eq!(fx.charge.committed_pages(), 6);
        fx.check();
    }

    #[test]
    fn release_then_reserve_at_the_same_address() {
        let mut fx = Fx::new();
        let a = fx.alloc(0, 0x1000, RC, PAGE_READWRITE).unwrap();
        fx.free(a, 0, MEM_RELEASE).unwrap();
        assert_eq!(fx.alloc(a, 0x1000, RC, PAGE_READWRITE), Ok(a));
        fx.check();
    }

    #[test]
    fn a_huge_reservation_costs_nothing() {
        let mut fx = Fx::new();
        let before = (fx.counters, fx.frames.used_frames());
        let a = fx.alloc(0, 64 << 30, MEM_RESERVE, PAGE_READWRITE).unwrap();
        assert_eq!((fx.counters, fx.frames.used_frames()), before);
        assert_eq!(fx.q(a + (40 << 30)), (24 << 30, MEM_RESERVE, 0));
        fx.free(a, 0, MEM_RELEASE).unwrap();
        assert_eq!((fx.counters, fx.frames.used_frames()), before);
    }
}

mod commit {
    use super::*;

    #[test]
    fn commit_outside_one_allocation_fails() {
        let mut fx = Fx::new();
        fx.alloc(A, 0x10000, MEM_RESERVE, PAGE_READWRITE).unwrap();
        fx.alloc(A + 0x10000, 0x10000, MEM_RESERVE, PAGE_READWRITE).unwrap();
        fx.fails(VmError::ConflictingAddresses, |fx| fx.alloc(A + 0x20000, 0x1000, MEM_COMMIT, PAGE_READWRITE));
        fx.fails(VmError::ConflictingAddresses, |fx| fx.alloc(A + 0xF000, 0x2000, MEM_COMMIT, PAGE_READWRITE));
        fx.fails(VmError::ConflictingAddresses, |fx| fx.alloc(0x7000_0000, 0x1000, MEM_COMMIT, PAGE_READWRITE));
        let mut fx = Fx::new();
        fx.alloc(A, 0x3000, MEM_RESERVE, PAGE_READWRITE).unwrap();
        fx.fails(VmError::ConflictingAddresses, |fx| fx.alloc(A + 0x2000, 0x2000, MEM_COMMIT, PAGE_READWRITE));
        fx.fails(VmError::ConflictingAddresses, |fx| fx.alloc(A + 0x3000, 0x1000, MEM_COMMIT, PAGE_READWRITE));
    }

    #[test]
    fn commit_returns_the_page_rounded_base_and_zero_fills() {
        let mut fx = Fx::new();
        fx.alloc(A, 0x10000, MEM_RESERVE, PAGE_NOACCESS).unwrap();
        assert_eq!(fx.alloc(A + 0x1234, 0x1000, MEM_COMMIT, PAGE_READWRITE), Ok(A + 0x1000));
        assert_eq!(fx.q(A + 0x1000), (0x2000, MEM_COMMIT, PAGE_READWRITE));
        assert_eq!(fx.read(A + 0x1000, 0x2000).unwrap(), ::alloc::vec![0u8; 0x2000]);
        assert_eq!(fx.counters.frames_zeroed, 1 + 3 + 2); // root, PDPT/PD/PT, two pages
        fx.check();
    }

    #[test]
    fn recommit_keeps_contents_and_changes_protection() {
        let mut fx = Fx::new();
        fx.alloc(A, 0x10000, MEM_RESERVE, PAGE_READWRITE).unwrap();
        fx.alloc(A, 0x1000, MEM_COMMIT, PAGE_READWRITE).unwrap();
        fx.write_u64(A, 0x1122).unwrap();
        let charged = fx.charge.committed_pages();
        // RA CheckAdjacentVADs: committing 3 pages READONLY over a RW page.
        fx.alloc(A, 0x3000, MEM_COMMIT, PAGE_READONLY).unwrap();
        assert_eq!(fx.charge.committed_pages(), charged + 2);
        assert_eq!(fx.q(A), (0x3000, MEM_COMMIT, PAGE_READONLY));
        assert_eq!(fx.read_u64(A), Ok(0x1122));
        assert!(matches!(fx.write_u64(A, 1), Err(FaultOutcome::AccessViolation { .. })));
        // Re-commit a NOACCESS page as READWRITE.
        fx.protect(A, 0x1000, PAGE_NOACCESS).unwrap();
        fx.alloc(A, 0x1000, MEM_COMMIT, PAGE_READWRITE).unwrap();
        assert_eq!(fx.read_u64(A), Ok(0x1122));
        fx.check();
    }

    #[test]
    fn commit_applies_guard() {
        let mut fx = Fx::new();
        fx.alloc(A, 0x10000, MEM_RESERVE, PAGE_READWRITE).unwrap();
        fx.alloc(A + 0xF000, 0x1000, MEM_COMMIT, PAGE_READWRITE | PAGE_GUARD).unwrap();
        assert_eq!(fx.q(A + 0xF000), (0x1000, MEM_COMMIT, PAGE_READWRITE | PAGE_GUARD));
    }

    #[test]
    fn nocache_is_fixed_per_allocation() {
        let mut fx = Fx::new();
        let a = fx.alloc(0, 0x2000, MEM_RESERVE, PAGE_READWRITE | PAGE_NOCACHE).unwrap();
        fx.alloc(a, 0x1000, MEM_COMMIT, PAGE_READWRITE).unwrap();
        assert_eq!(fx.q(a).2, PAGE_READWRITE | PAGE_NOCACHE);
        fx.protect(a, 0x1000, PAGE_READONLY).unwrap();
        assert_eq!(fx.q(a).2, PAGE_READONLY | PAGE_NOCACHE);
        let b = fx.alloc(0, 0x2000, MEM_RESERVE, PAGE_READWRITE).unwrap();
        fx.alloc(b, 0x1000, MEM_COMMIT, PAGE_READWRITE | PAGE_NOCACHE).unwrap();
        assert_eq!(fx.q(b).2, PAGE_READWRITE);
        assert_eq!(fx.protect(b, 0x1000, PAGE_READONLY | PAGE_NOCACHE), Ok(PAGE_READWRITE));
        assert_eq!(fx.q(b).2, PAGE_READONLY);
    }

    #[test]
    fn commit_limit_and_critical_levels() {
        let mut fx = Fx::with(SpaceConfig::default(), 16 << 20, 100, 20);
        let a = fx.alloc(0, 0x100000, MEM_RESERVE, PAGE_READWRITE).unwrap();
        // The first commit needs a PDPT, a PD and a PT: 3 table pages charged with its pages.
        fx.fails(VmError::CommitmentLimit, |fx| fx.alloc_at(a, 78 * 0x1000, MEM_COMMIT, PAGE_READWRITE, CriticalLevel::Task));
        fx.alloc_at(a, 77 * 0x1000, MEM_COMMIT, PAGE_READWRITE, CriticalLevel::Task).unwrap();
        assert_eq!((fx.charge.committed_pages(), fx.charge.table_pages(), fx.charge.limit_pages()), (77, 3, 97));
        // Re-committing committed pages charges nothing.
        fx.alloc_at(a, 77 * 0x1000, MEM_COMMIT, PAGE_READONLY, CriticalLevel::Task).unwrap();
        fx.fails(VmError::CommitmentLimit, |fx| fx.alloc_at(a, 78 * 0x1000, MEM_COMMIT, PAGE_READWRITE, CriticalLevel::Task));
        fx.fails(VmError::CommitmentLimit, |fx| fx.alloc_at(a, 88 * 0x1000, MEM_COMMIT, PAGE_READWRITE, CriticalLevel::AppDomain));
        fx.alloc_at(a, 87 * 0x1000, MEM_COMMIT, PAGE_READWRITE, CriticalLevel::AppDomain).unwrap();
        fx.fails(VmError::CommitmentLimit, |fx| fx.alloc_at(a, 98 * 0x1000, MEM_COMMIT, PAGE_READWRITE, CriticalLevel::Process));
        fx.alloc_at(a, 97 * 0x1000, MEM_COMMIT, PAGE_READWRITE, CriticalLevel::Process).unwrap();
        // What a guest is told: committed = its limit, nothing available.
        assert_eq!((fx.charge.committed_pages(), fx.charge.limit_pages()), (97, 97));
        assert_eq!(fx.charge.available(CriticalLevel::Process), 0);
        // A NULL-address RESERVE|COMMIT over the limit creates no reservation either.
        fx.fails(VmError::CommitmentLimit, |fx| fx.alloc_at(0, 0x1000, RC, PAGE_READWRITE, CriticalLevel::Process));
        assert_eq!(VmError::CommitmentLimit.win32_code(), 1455);
        assert!(VmError::CommitmentLimit.is_out_of_memory());
        fx.check();
        fx.teardown();
    }

    #[test]
    fn no_frames_is_not_enough_memory_and_changes_nothing() {
        // 1 MiB of RAM: 256 frames.
        let mut fx = Fx::with(SpaceConfig::default(), 1 << 20, 100_000, 0);
        let a = fx.alloc(0, 0x200000, MEM_RESERVE, PAGE_READWRITE).unwrap();
        fx.fails(VmError::NoMemory, |fx| fx.alloc(a, 0x100000, MEM_COMMIT, PAGE_READWRITE));
        // Every committed page can still be touched: frames were promised at commit time.
        let n = fx.frames.available_frames() - 3; // PDPT, PD and PT
        fx.alloc(a, n * 0x1000, MEM_COMMIT, PAGE_READWRITE).unwrap();
        fx.fails(VmError::NoMemory, |fx| fx.alloc(a + n * 0x1000, 0x1000, MEM_COMMIT, PAGE_READWRITE));
        for i in 0..n {
            fx.write_u64(a + i * 0x1000, i).unwrap();
        }
        assert_eq!(fx.frames.available_frames(), 0);
        fx.check();
        fx.teardown();
    }
}

mod reset {
    use super::*;

    #[test]
    fn reset_keeps_state_and_contents() {
        let mut fx = Fx::new();
        fx.alloc(A, 0x10000, MEM_RESERVE, PAGE_READWRITE).unwrap();
        fx.alloc(A, 0x1000, MEM_COMMIT, PAGE_READWRITE).unwrap();
        fx.write_u64(A, 99).unwrap();
        let before = fx.snapshot();
        assert_eq!(fx.alloc(A + 0x10, 0x10, MEM_RESET, PAGE_READWRITE), Ok(A));
        // WK: reset of a reserved page succeeds and the region stays reserved.
        assert_eq!(fx.alloc(A + 0x1000, 0x1000, MEM_RESET, PAGE_NOACCESS), Ok(A + 0x1000));
        assert_eq!(fx.alloc(A, 0x2000, MEM_RESET_UNDO, PAGE_READWRITE), Ok(A));
        assert_eq!(fx.snapshot(), before);
        assert_eq!(fx.q(A), (0x1000, MEM_COMMIT, PAGE_READWRITE));
        assert_eq!(fx.q(A + 0x1000), (0xF000, MEM_RESERVE, 0));
        assert_eq!(fx.read_u64(A), Ok(99));
    }

    #[test]
    fn reset_range_must_be_in_one_allocation() {
        let mut fx = Fx::new();
        fx.alloc(A, 0x10000, MEM_RESERVE, PAGE_READWRITE).unwrap();
        fx.fails(VmError::ConflictingAddresses, |fx| fx.alloc(A + 0xF000, 0x2000, MEM_RESET, PAGE_READWRITE));
        fx.fails(VmError::ConflictingAddresses, |fx| fx.alloc(0x7000_0000, 0x1000, MEM_RESET, PAGE_READWRITE));
        fx.fails(VmError::ConflictingAddresses, |fx| fx.alloc(0x7000_0000, 0x1000, MEM_RESET_UNDO, PAGE_READWRITE));
        fx.fails(VmError::InvalidProtection, |fx| fx.alloc(A, 0x1000, MEM_RESET, 0));
    }
}

mod scale {
    use super::*;

    #[test]
    fn the_whole_user_range_can_be_reserved_at_once() {
        // host-abi §9: a guest may reserve the whole user range.
        let mut fx = Fx::new();
        let all = 0x7FFF_FFFF_0000 - 0x10000;
        assert_eq!(fx.alloc(0, all, MEM_RESERVE, PAGE_READWRITE), Ok(0x10000));
        assert_eq!(fx.q(0x10000), (all, MEM_RESERVE, 0));
        fx.fails(VmError::NoMemory, |fx| fx.alloc(0, 0x1000, MEM_RESERVE, PAGE_READWRITE));
        assert_eq!(fx.alloc(0x7FFF_0000_0000, 0x1000, MEM_COMMIT, PAGE_READWRITE), Ok(0x7FFF_0000_0000));
        fx.free(0x10000, 0, MEM_RELEASE).unwrap();
        fx.check();
        fx.teardown();
    }

    #[test]
    fn a_hundred_thousand_live_allocations() {
        // host-abi §9: at least 100,000 live allocations.
        let mut fx = Fx::new();
        let mut bases = Vec::new();
        for i in 0..100_000u64 {
            let ty = if i % 2 == 0 { MEM_RESERVE } else { MEM_RESERVE | MEM_TOP_DOWN };
            bases.push(fx.alloc(0, 0x1000 + (i % 3) * 0x10000, ty, PAGE_READWRITE).unwrap());
        }
        assert_eq!(fx.sp().allocation_count(), 100_000);
        // Bottom-up ones are packed from the bottom, top-down ones from the top.
        assert_eq!(bases[0], 0x10000);
        assert_eq!(bases[1], 0x7FFF_FFFD_0000); // 0x11000 bytes ending at or below the top
        for (i, &b) in bases.iter().enumerate() {
            if i % 7 == 0 {
                fx.free(b, 0, MEM_RELEASE).unwrap();
            }
        }
        // Freed holes are reused lowest first.
        assert_eq!(fx.alloc(0, 0x1000, MEM_RESERVE, PAGE_READWRITE), Ok(0x10000));
        for (i, &b) in bases.iter().enumerate() {
            if i % 7 != 0 {
                fx.free(b, 0, MEM_RELEASE).unwrap();
            }
        }
        fx.free(0x10000, 0, MEM_RELEASE).unwrap();
        assert_eq!(fx.sp().allocation_count(), 0);
        assert_eq!(fx.alloc(0, 0x7FFF_FFFF_0000 - 0x10000, MEM_RESERVE, PAGE_READWRITE), Ok(0x10000), "gaps merged back into one");
    }
}

mod rounding {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// win32-semantics §3.2: base = addr rounded down to 64 KiB, end = addr + size rounded up
        /// to 4 KiB; the whole [base, end) is one reserved region.
        #[test]
        fn reserve_at_an_address_rounds_like_windows(addr in 0x10000u64..0x7FFF_FFFF_0000, size in 1u64..0x40_0000) {
            let mut fx = Fx::new();
            let r = fx.alloc(addr, size, MEM_RESERVE, PAGE_READWRITE);
            if addr + size > 0x7FFF_FFFF_0000 {
                prop_assert_eq!(r, Err(VmError::InvalidParameter));
            } else {
                let base = addr & !0xFFFF;
                let end = (addr + size + 0xFFF) & !0xFFF;
                prop_assert_eq!(r, Ok(base));
                let m = fx.query(addr).unwrap();
                prop_assert_eq!((m.allocation_base, m.region_size + (addr & !0xFFF) - base), (base, end - base));
            }
        }

        /// win32-semantics §3.3: a commit covers every page touching [addr, addr + size) and
        /// returns the page-rounded address.
        #[test]
        fn commit_covers_every_touched_page(off in 0u64..0x20000, size in 1u64..0x20000) {
            let mut fx = Fx::new();
            fx.alloc(A, 0x40000, MEM_RESERVE, PAGE_READWRITE).unwrap();
            let first = (A + off) & !0xFFF;
            let last = (A + off + size - 1) & !0xFFF;
            prop_assert_eq!(fx.alloc(A + off, size, MEM_COMMIT, PAGE_READONLY), Ok(first));
            prop_assert_eq!(fx.q(first), (last + 0x1000 - first, MEM_COMMIT, PAGE_READONLY));
            prop_assert_eq!(fx.charge.committed_pages(), (last - first) / 0x1000 + 1);
        }
    }
}

/// The allocation record stays within the 48 bytes the kernel-heap budget assumes (crate README).
#[test]
fn the_allocation_record_is_48_bytes() {
    assert_eq!(core::mem::size_of::<Allocation>(), 48);
}
