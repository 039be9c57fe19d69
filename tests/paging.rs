//! The kernel owns its memory (issue 5): its own page tables, demand-zero faults, and every
//! `PAGE_*` protection enforced by the MMU, checked with real accesses that fault or not.
//!
//! The accesses are made from ring 0 through `kernel::arch::probe` (which opens a SMAP window);
//! executing a guest page from ring 0 needs SMEP lifted for that one call (`cpu::without_smep`).
//! A refused access comes back as a `FaultRecord` with the CPU's error code and the address
//! space's verdict (access violation or guard page, access kind, address).
#![no_std]
#![no_main]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;

use address_space::VmError;
use address_space::win32::*;
use kernel::arch::cpu;
use kernel::arch::probe::{self, FaultRecord, MemoryFault, pf};
use kernel::memory::{self, Space};
use qemu_tests::{ensure, ensure_eq};
use x86_64::registers::control::{Cr0, Cr0Flags, Cr3, Cr4, Cr4Flags};
use x86_64::registers::model_specific::{Efer, EferFlags};

const PAGE: u64 = 4096;

fn new_space() -> Result<Space, String> {
    let space = Space::new().map_err(|e| alloc::format!("Space::new: {e:?}"))?;
    space.activate();
    Ok(space)
}

fn read(addr: u64) -> Result<u8, FaultRecord> {
    // SAFETY: guest pages of a test space; reading them has no side effect.
    unsafe { probe::read_u8(addr) }
}

fn write(addr: u64, value: u8) -> Result<(), FaultRecord> {
    // SAFETY: guest pages of a test space, owned by this test.
    unsafe { probe::write_u8(addr, value) }
}

fn call(addr: u64) -> Result<u64, FaultRecord> {
    // SAFETY: the tests put a complete `mov eax, imm32; ret` function at `addr` before calling;
    // SMEP is lifted only for this call.
    cpu::without_smep(|| unsafe { probe::call(addr) })
}

fn vm(e: VmError) -> String {
    alloc::format!("{e:?} (Win32 {})", e.win32_code())
}

/// Checks that `r` is a page fault at `addr` whose error code has exactly `bits` among
/// P/W/I and whose address-space verdict is `code` with `access`.
fn expect_fault<T: core::fmt::Debug>(r: Result<T, FaultRecord>, addr: u64, bits: u64, code: u32, access: u64) -> Result<(), String> {
    let f = match r {
        Ok(v) => return Err(alloc::format!("access at {addr:#x} succeeded ({v:?}) but must fault")),
        Err(f) => f,
    };
    ensure_eq!(f.vector, 14);
    ensure_eq!(f.cr2, addr);
    ensure_eq!(f.error_code & (pf::PRESENT | pf::WRITE | pf::INSTRUCTION), bits);
    ensure_eq!(f.memory, Some(MemoryFault { code, access, address: addr }));
    Ok(())
}

const AV: u32 = MemoryFault::ACCESS_VIOLATION;

fn cpu_protections_are_on() -> Result<(), String> {
    let f = cpu::features();
    ensure!(Efer::read().contains(EferFlags::NO_EXECUTE_ENABLE));
    ensure!(Cr0::read().contains(Cr0Flags::WRITE_PROTECT));
    ensure_eq!(Cr4::read().contains(Cr4Flags::SUPERVISOR_MODE_EXECUTION_PROTECTION), f.smep);
    ensure_eq!(Cr4::read().contains(Cr4Flags::SUPERVISOR_MODE_ACCESS_PREVENTION), f.smap);
    // QEMU runs with `-cpu max`, which has both: the tests below then exercise them.
    ensure!(f.smep && f.smap, "SMEP/SMAP offered by the CPU: {f:?}");
    ensure_eq!(x86_64::registers::model_specific::Msr::new(0x277).read_cached(), cpu::PAT_VALUE);
    Ok(())
}

trait ReadCached {
    fn read_cached(&self) -> u64;
}
impl ReadCached for x86_64::registers::model_specific::Msr {
    fn read_cached(&self) -> u64 {
        // SAFETY: reading IA32_PAT has no side effects.
        unsafe { self.read() }
    }
}

static RODATA_WORD: u64 = 0x1234_5678;

fn kernel_runs_on_its_own_tables_with_w_xor_x() -> Result<(), String> {
    let kernel_root = Cr3::read().0.start_address().as_u64();
    ensure!(memory::with_mm(|mm| mm.page_table_pages()) > 0);
    // Read-only data: a write faults even in ring 0 (CR0.WP) with P|W set.
    let ro = &RODATA_WORD as *const u64 as u64;
    // SAFETY: the write must fault; if WP were off it would write the same value back.
    let r = unsafe { probe::write_u8(ro, 0x78) };
    let f = r.err().ok_or("writing kernel read-only data succeeded")?;
    ensure_eq!(f.error_code & (pf::PRESENT | pf::WRITE), pf::PRESENT | pf::WRITE);
    ensure_eq!(f.memory, None);
    // Text is not writable either.
    let text = kernel_runs_on_its_own_tables_with_w_xor_x as *const () as u64;
    // SAFETY: must fault (text is read-only); nothing is written otherwise... except the same byte.
    let byte = unsafe { probe::read_u8(text) }.map_err(|f| alloc::format!("reading text faulted: {f:?}"))?;
    // SAFETY: as above.
    ensure!(unsafe { probe::write_u8(text, byte) }.is_err(), "kernel text is writable");
    // Data on the heap is not executable (NX).
    let code: Vec<u8> = alloc::vec![0xB8, 1, 0, 0, 0, 0xC3];
    // SAFETY: a complete function; it must not run.
    ensure!(unsafe { probe::call(code.as_ptr() as u64) }.is_err(), "heap is executable");
    // The lower half of the kernel's table is empty: guests own it.
    let empty = memory::with_mm(|mm| {
        use address_space::PhysMemory;
        (0..256u64).all(|i| mm.window.read_u64(x86_64::PhysAddr::new(kernel_root + i * 8)) == 0)
    });
    ensure!(empty, "the kernel PML4 maps something in the lower half");
    // The guard pages below the IST stacks and the kernel stack are not mapped.
    for guard in kernel::arch::gdt::guard_pages() {
        let f = read(guard + 100).err().ok_or("an IST guard page is mapped")?;
        ensure_eq!(f.error_code & pf::PRESENT, 0);
    }
    let snap = kernel::boot_snapshot();
    let below = snap.stack_bottom - 1;
    let f = read(below).err().ok_or("the page below the kernel stack is mapped")?;
    ensure_eq!(f.error_code & pf::PRESENT, 0);
    Ok(())
}

fn fresh_commit_reads_zero_and_is_demand_faulted() -> Result<(), String> {
    let s = new_space()?;
    let base = s.virtual_alloc(0, 64 * PAGE, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE).map_err(vm)?;
    let zeroed_before = memory::with_mm(|mm| mm.counters.frames_zeroed);
    for i in 0..64 {
        ensure_eq!(read(base + i * PAGE + (i * 37) % PAGE), Ok(0));
    }
    let zeroed = memory::with_mm(|mm| mm.counters.frames_zeroed) - zeroed_before;
    ensure_eq!(zeroed, 64);
    Ok(())
}

/// Touched in address order, a committed MiB takes 20 faults, not 256 (fault-around maps ahead
/// a window that doubles to 16 pages), and each page still gets exactly one zeroed frame; touched
/// every other page, or from the top down, every touch faults alone and no page it skipped gets a
/// frame.
fn sequential_first_touches_map_ahead_and_sparse_ones_do_not() -> Result<(), String> {
    let s = new_space()?;
    let base = s.virtual_alloc(0x4000_0000, 0x10_0000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE).map_err(vm)?;
    let counters = || memory::with_mm(|mm| (mm.counters.faults_resolved, mm.counters.frames_zeroed, mm.frames.used_frames()));
    let before = counters();
    for p in 0..256 {
        write(base + p * PAGE + 8, (p % 200) as u8 + 1).map_err(|f| alloc::format!("{f:?}"))?;
    }
    let after = counters();
    ensure_eq!((after.0 - before.0, after.1 - before.1, after.2 - before.2), (20, 256, 256));
    for p in 0..256 {
        ensure_eq!(read(base + p * PAGE + 8), Ok((p % 200) as u8 + 1));
        ensure_eq!(read(base + p * PAGE + 9), Ok(0));
    }
    for order in ["every other page", "top down"] {
        s.virtual_free(base, 0x10_0000, MEM_DECOMMIT).map_err(vm)?;
        s.virtual_alloc(base, 0x10_0000, MEM_COMMIT, PAGE_READWRITE).map_err(vm)?;
        let pages: Vec<u64> = if order == "top down" { (0..64).rev().collect() } else { (0..128).map(|p| 2 * p).collect() };
        let before = counters();
        for &p in &pages {
            write(base + p * PAGE, 1).map_err(|f| alloc::format!("{f:?}"))?;
        }
        let after = counters();
        let n = pages.len() as u64;
        let got = (after.0 - before.0, after.1 - before.1, after.2 - before.2);
        ensure!(got == (n, n, n), "{order}: faults, frames zeroed, frames used {got:?}, not {n} each");
    }
    s.virtual_free(base, 0, MEM_RELEASE).map_err(vm)?;
    Ok(())
}

fn decommitted_then_recommitted_page_reads_zero_and_recommit_keeps_data() -> Result<(), String> {
    let s = new_space()?;
    let base = s.virtual_alloc(0, 4 * PAGE, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE).map_err(vm)?;
    write(base, 0xAB).map_err(|f| alloc::format!("{f:?}"))?;
    write(base + PAGE + 5, 0xCD).map_err(|f| alloc::format!("{f:?}"))?;
    // Re-commit of committed pages keeps their data.
    ensure_eq!(s.virtual_alloc(base, 4 * PAGE, MEM_COMMIT, PAGE_READWRITE).map_err(vm)?, base);
    ensure_eq!(read(base), Ok(0xAB));
    ensure_eq!(read(base + PAGE + 5), Ok(0xCD));
    // Decommit, commit again: zero.
    s.virtual_free(base, PAGE, MEM_DECOMMIT).map_err(vm)?;
    s.virtual_alloc(base, PAGE, MEM_COMMIT, PAGE_READWRITE).map_err(vm)?;
    ensure_eq!(read(base), Ok(0));
    ensure_eq!(read(base + PAGE + 5), Ok(0xCD));
    Ok(())
}

fn write_to_readonly_pages_faults_with_the_write_bit() -> Result<(), String> {
    let s = new_space()?;
    for prot in [PAGE_READONLY, PAGE_EXECUTE_READ] {
        let base = s.virtual_alloc(0, 2 * PAGE, MEM_RESERVE | MEM_COMMIT, prot).map_err(vm)?;
        // Never touched: not present, the manager refuses the write.
        expect_fault(write(base, 1), base, pf::WRITE, AV, 1)?;
        // Touched by a read (now present and read-only): the MMU refuses.
        ensure_eq!(read(base + PAGE), Ok(0));
        expect_fault(write(base + PAGE, 1), base + PAGE, pf::PRESENT | pf::WRITE, AV, 1)?;
        ensure_eq!(read(base + PAGE), Ok(0));
    }
    Ok(())
}

/// `mov eax, 42; ret`
const CODE_42: [u8; 6] = [0xB8, 42, 0, 0, 0, 0xC3];

fn put_code(addr: u64) -> Result<(), String> {
    for (i, b) in CODE_42.iter().enumerate() {
        write(addr + i as u64, *b).map_err(|f| alloc::format!("writing code: {f:?}"))?;
    }
    Ok(())
}

fn execute_is_enforced_by_nx() -> Result<(), String> {
    let s = new_space()?;
    let base = s.virtual_alloc(0, 2 * PAGE, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE).map_err(vm)?;
    put_code(base)?;
    expect_fault(call(base), base, pf::PRESENT | pf::INSTRUCTION, AV, 8)?;
    // Untouched read-write page: the manager refuses the fetch.
    expect_fault(call(base + PAGE), base + PAGE, pf::INSTRUCTION, AV, 8)?;
    // The same code in a PAGE_EXECUTE_READ page runs.
    ensure_eq!(s.virtual_protect(base, PAGE, PAGE_EXECUTE_READ).map_err(vm)?, PAGE_READWRITE);
    ensure_eq!(call(base), Ok(42));
    // ... and PAGE_EXECUTE_READWRITE too; PAGE_READONLY does not execute.
    s.virtual_protect(base, PAGE, PAGE_EXECUTE_READWRITE).map_err(vm)?;
    ensure_eq!(call(base), Ok(42));
    s.virtual_protect(base, PAGE, PAGE_READONLY).map_err(vm)?;
    expect_fault(call(base), base, pf::PRESENT | pf::INSTRUCTION, AV, 8)?;
    Ok(())
}

fn noaccess_reserved_and_free_pages_fault() -> Result<(), String> {
    let s = new_space()?;
    let na = s.virtual_alloc(0, PAGE, MEM_RESERVE | MEM_COMMIT, PAGE_NOACCESS).map_err(vm)?;
    expect_fault(read(na), na, 0, AV, 0)?;
    expect_fault(write(na, 1), na, pf::WRITE, AV, 1)?;
    let reserved = s.virtual_alloc(0, 16 * PAGE, MEM_RESERVE, PAGE_READWRITE).map_err(vm)?;
    expect_fault(read(reserved + 3 * PAGE), reserved + 3 * PAGE, 0, AV, 0)?;
    expect_fault(write(reserved, 9), reserved, pf::WRITE, AV, 1)?;
    let free = 0x0000_4000_0000_0000;
    ensure_eq!(s.virtual_query(free).map_err(vm)?.state, MEM_FREE);
    expect_fault(read(free), free, 0, AV, 0)?;
    // A written page made PAGE_NOACCESS keeps its data for when it is readable again.
    let p = s.virtual_alloc(0, PAGE, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE).map_err(vm)?;
    write(p + 7, 0x77).map_err(|f| alloc::format!("{f:?}"))?;
    s.virtual_protect(p, PAGE, PAGE_NOACCESS).map_err(vm)?;
    expect_fault(read(p + 7), p + 7, 0, AV, 0)?;
    s.virtual_protect(p, PAGE, PAGE_READONLY).map_err(vm)?;
    ensure_eq!(read(p + 7), Ok(0x77));
    Ok(())
}

fn guard_page_is_one_shot() -> Result<(), String> {
    let s = new_space()?;
    let base = s.virtual_alloc(0, 2 * PAGE, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE | PAGE_GUARD).map_err(vm)?;
    let q = s.virtual_query(base).map_err(vm)?;
    ensure_eq!(q.protect, PAGE_READWRITE | PAGE_GUARD);
    expect_fault(read(base + 8), base + 8, 0, MemoryFault::GUARD_PAGE, 0)?;
    // The retried access succeeds, and the page shows its plain protection.
    ensure_eq!(read(base + 8), Ok(0));
    write(base + 8, 3).map_err(|f| alloc::format!("{f:?}"))?;
    let q = s.virtual_query(base).map_err(vm)?;
    ensure_eq!(q.protect, PAGE_READWRITE);
    ensure_eq!(q.region_size, PAGE);
    ensure_eq!(q.allocation_protect, PAGE_READWRITE | PAGE_GUARD);
    // The second page is still guarded, for a write too; re-arming works on a touched page.
    expect_fault(write(base + PAGE, 1), base + PAGE, pf::WRITE, MemoryFault::GUARD_PAGE, 1)?;
    write(base + PAGE, 1).map_err(|f| alloc::format!("{f:?}"))?;
    ensure_eq!(s.virtual_protect(base, PAGE, PAGE_READWRITE | PAGE_GUARD).map_err(vm)?, PAGE_READWRITE);
    expect_fault(read(base), base, 0, MemoryFault::GUARD_PAGE, 0)?;
    ensure_eq!(read(base + 8), Ok(3));
    Ok(())
}

fn no_stale_translation_survives_protect_decommit_or_release() -> Result<(), String> {
    let s = new_space()?;
    let base = s.virtual_alloc(0, 64 * PAGE, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE).map_err(vm)?;
    // Protect: a page just written (translation cached) becomes read-only.
    write(base, 1).map_err(|f| alloc::format!("{f:?}"))?;
    s.virtual_protect(base, PAGE, PAGE_READONLY).map_err(vm)?;
    expect_fault(write(base, 2), base, pf::PRESENT | pf::WRITE, AV, 1)?;
    // The same above the full-flush threshold (64 pages cached, then protected).
    for i in 1..64 {
        write(base + i * PAGE, 1).map_err(|f| alloc::format!("{f:?}"))?;
    }
    s.virtual_protect(base + PAGE, 63 * PAGE, PAGE_READONLY).map_err(vm)?;
    for i in 1..64 {
        expect_fault(write(base + i * PAGE, 2), base + i * PAGE, pf::PRESENT | pf::WRITE, AV, 1)?;
    }
    s.virtual_protect(base, 64 * PAGE, PAGE_READWRITE).map_err(vm)?;
    // Decommit: the page was just read; afterwards it is reserved.
    ensure_eq!(read(base + 5 * PAGE), Ok(1));
    s.virtual_free(base + 5 * PAGE, PAGE, MEM_DECOMMIT).map_err(vm)?;
    expect_fault(read(base + 5 * PAGE), base + 5 * PAGE, 0, AV, 0)?;
    // Release: every page was just touched; afterwards all are free.
    for i in 0..64 {
        let _ = read(base + i * PAGE);
    }
    s.virtual_free(base, 0, MEM_RELEASE).map_err(vm)?;
    for i in [0, 1, 31, 63] {
        expect_fault(read(base + i * PAGE), base + i * PAGE, 0, AV, 0)?;
    }
    Ok(())
}

fn frames_come_back_after_a_64_mib_cycle() -> Result<(), String> {
    let free = || memory::with_mm(|mm| (mm.frames.free_frames(), mm.frames.reserved_frames(), mm.charge.committed_pages()));
    let before = free();
    let tables_before = memory::with_mm(|mm| mm.page_table_pages());
    {
        let s = new_space()?;
        let size = 64 << 20;
        let base = s.virtual_alloc(0, size, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE).map_err(vm)?;
        for off in (0..size).step_by(PAGE as usize) {
            write(base + off, 0x5A).map_err(|f| alloc::format!("{f:?}"))?;
        }
        let during = free();
        ensure!(before.0 - during.0 >= (size / PAGE), "64 MiB of frames in use");
        ensure_eq!(during.2 - before.2, size / PAGE);
        s.virtual_free(base, 0, MEM_RELEASE).map_err(vm)?;
        // Released, but the space itself (root table) is alive.
        ensure_eq!(free().0 + 1, before.0);
    }
    ensure_eq!(free(), before);
    ensure_eq!(memory::with_mm(|mm| mm.page_table_pages()), tables_before);
    // Creating and destroying spaces leaks nothing either.
    for i in 0..50 {
        let s = new_space()?;
        s.virtual_alloc(0x7FF0_0000_0000, PAGE, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE).map_err(vm)?;
        write(0x7FF0_0000_0000, 1).map_err(|f| alloc::format!("iteration {i}: cr3 {:#x} root {:#x}: {f:?}", Cr3::read().0.start_address().as_u64(), s.root()))?;
    }
    ensure_eq!(free(), before);
    Ok(())
}

fn commit_beyond_the_limit_fails_and_everything_committed_can_be_touched() -> Result<(), String> {
    let s = new_space()?;
    let limit = memory::with_mm(|mm| mm.charge.limit_pages() - mm.charge.committed_pages());
    let chunk = 4096 * PAGE; // 16 MiB
    let mut bases = Vec::new();
    let err = loop {
        match s.virtual_alloc(0, chunk, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE) {
            Ok(b) => bases.push(b),
            Err(e) => break e,
        }
        ensure!((bases.len() as u64) * 4096 <= limit, "committed past the commit limit");
    };
    ensure!(matches!(err, VmError::CommitmentLimit | VmError::NoMemory), "out-of-memory error, got {err:?}");
    // Smaller commits fill up to the limit for this criticality.
    let mut pages = bases.len() as u64 * 4096;
    let tail = s.virtual_alloc(0, 16 << 20, MEM_RESERVE, PAGE_READWRITE).map_err(vm)?;
    let mut off = 0;
    while s.virtual_alloc(tail + off, 64 * PAGE, MEM_COMMIT, PAGE_READWRITE).is_ok() {
        off += 64 * PAGE;
        pages += 64;
    }
    ensure!(pages + 64 > limit - limit / 16 - 64, "filled to the task-critical cap ({pages} of {limit} pages)");
    // Process-critical requests may use the critical reserve: fill the rest of the limit.
    let critical = s.virtual_alloc(0, 32 << 20, MEM_RESERVE, PAGE_READWRITE).map_err(vm)?;
    let mut critical_off = 0;
    while s
        .with(|sp, cx| sp.virtual_alloc(cx, critical + critical_off, PAGE, MEM_COMMIT, PAGE_READWRITE, address_space::CriticalLevel::Process))
        .is_ok()
    {
        critical_off += PAGE;
        pages += 1;
    }
    // Page-table pages beyond the kernel's table allowance are charged to the limit (address-space
    // charge.rs): the reported limit shrinks by them.
    let shrunk = limit - memory::with_mm(|mm| mm.charge.limit_pages() - mm.charge.committed_pages()) - pages;
    ensure!(pages + shrunk + 8 > limit, "filled to the whole commit limit ({pages} pages, limit shrunk by {shrunk}, of {limit} pages)");
    for o in (0..critical_off).step_by(PAGE as usize) {
        write(critical + o, 1).map_err(|f| alloc::format!("{f:?}"))?;
    }
    // Every committed page faults in.
    for &b in &bases {
        for o in (0..chunk).step_by(PAGE as usize) {
            write(b + o, 1).map_err(|f| alloc::format!("touching committed memory failed: {f:?}"))?;
        }
    }
    for o in (0..off).step_by(PAGE as usize) {
        write(tail + o, 1).map_err(|f| alloc::format!("{f:?}"))?;
    }
    // The kernel carries on: release, and commit works again.
    for b in bases {
        s.virtual_free(b, 0, MEM_RELEASE).map_err(vm)?;
    }
    ensure!(s.virtual_alloc(0, chunk, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE).is_ok());
    Ok(())
}

/// Issue 12: one page per 2 MiB needs a page table per page. Tables beyond the kernel's table
/// allowance are charged to the commit limit as the kernel's part, so the commits end at the
/// commit limit (never for lack of frames), the limit a guest is told shrinks by those tables,
/// what it committed reaches that limit, every committed page can be touched, and everything
/// comes back at the end.
fn one_page_per_2_mib_commits_up_to_the_reported_limit() -> Result<(), String> {
    const SPAN: u64 = 2 << 20;
    let state = || memory::with_mm(|mm| (mm.frames.free_frames(), mm.frames.reserved_frames(), mm.charge.committed_pages(), mm.charge.table_pages(), mm.page_table_pages()));
    let before = state();
    {
        let s = new_space()?;
        let (limit0, committed0) = memory::with_mm(|mm| (mm.charge.limit_pages(), mm.charge.committed_pages()));
        let base = s.virtual_alloc(0, (limit0 + 64) * SPAN, MEM_RESERVE, PAGE_READWRITE).map_err(vm)?;
        let process = address_space::CriticalLevel::Process;
        let mut n = 0u64;
        let err = loop {
            match s.with(|sp, cx| sp.virtual_alloc(cx, base + n * SPAN, PAGE, MEM_COMMIT, PAGE_READWRITE, process)) {
                Ok(_) => n += 1,
                Err(e) => break e,
            }
        };
        ensure_eq!(err, VmError::CommitmentLimit);
        let (limit, committed, tables, allowance, load) = memory::with_mm(|mm| {
            let c = &mm.charge;
            (c.limit_pages(), c.committed_pages(), c.table_pages(), c.table_allowance(), c.load_percent())
        });
        kernel::kprintln!(
            "one page per 2 MiB: {n} pages committed, {tables} table pages ({allowance} from the allowance), reported limit {limit} of {limit0} pages, load {load}%"
        );
        ensure_eq!(committed - committed0, n);
        ensure_eq!(limit, limit0 - tables.saturating_sub(allowance));
        // Reached: not even one more page with its tables (a page table, at a 1 GiB boundary a
        // directory too) fits.
        ensure!(limit - committed < 3, "committed {committed} of a reported limit of {limit} pages ({tables} table pages)");
        ensure!(n >= limit0 / 2 - 64, "{n} pages committed of a limit of {limit0}");
        ensure!(load >= 99, "memory load {load}%");
        for i in 0..n {
            write(base + i * SPAN, 1).map_err(|f| alloc::format!("page {i}: {f:?}"))?;
        }
        s.virtual_free(base, 0, MEM_RELEASE).map_err(vm)?;
        ensure_eq!(memory::with_mm(|mm| (mm.charge.limit_pages(), mm.charge.committed_pages())), (limit0, committed0));
    }
    ensure_eq!(state(), before);
    Ok(())
}

fn large_pages_map_2_mib_entries() -> Result<(), String> {
    let s = new_space()?;
    let size = 4 << 20;
    let base = s
        .virtual_alloc(0, size, MEM_RESERVE | MEM_COMMIT | MEM_LARGE_PAGES, PAGE_READWRITE)
        .map_err(vm)?;
    ensure_eq!(base % (2 << 20), 0);
    // Walk the real tables: PML4 → PDPT → PD entry with PS set, 2 MiB-aligned frame.
    for half in [0u64, 2 << 20] {
        let va = base + half;
        let pde = memory::with_mm(|mm| {
            use address_space::PhysMemory;
            let mut table = s.root();
            for level in [39u32, 30] {
                let e = mm.window.read_u64(x86_64::PhysAddr::new(table + ((va >> level) & 511) * 8));
                table = e & 0x000F_FFFF_FFFF_F000;
            }
            mm.window.read_u64(x86_64::PhysAddr::new(table + ((va >> 21) & 511) * 8))
        });
        ensure!(pde & 1 != 0 && pde & (1 << 7) != 0, "PDE {pde:#x} maps 2 MiB");
        ensure_eq!(pde & 0x000F_FFFF_FFE0_0000 & ((2 << 20) - 1), 0);
        ensure!(pde & (1 << 63) != 0, "read-write large page is NX");
    }
    ensure_eq!(read(base + 12345), Ok(0));
    write(base + (3 << 20), 9).map_err(|f| alloc::format!("{f:?}"))?;
    ensure_eq!(read(base + (3 << 20)), Ok(9));
    s.virtual_free(base, 0, MEM_RELEASE).map_err(vm)?;
    expect_fault(read(base), base, 0, AV, 0)?;
    Ok(())
}

fn write_watch_reports_exactly_the_written_pages() -> Result<(), String> {
    let s = new_space()?;
    let n = 16;
    let base = s.virtual_alloc(0, n * PAGE, MEM_RESERVE | MEM_WRITE_WATCH, PAGE_READWRITE).map_err(vm)?;
    s.virtual_alloc(base, n * PAGE, MEM_COMMIT, PAGE_READWRITE).map_err(vm)?;
    // Reads do not count.
    for i in 0..n {
        ensure_eq!(read(base + i * PAGE), Ok(0));
    }
    let written = [1u64, 4, 9, 15];
    for &i in &written {
        write(base + i * PAGE + 100, 1).map_err(|f| alloc::format!("{f:?}"))?;
    }
    let mut out = [0u64; 16];
    let k = s.get_write_watch(0, base, n * PAGE, &mut out).map_err(vm)?;
    let expected: Vec<u64> = written.iter().map(|i| base + i * PAGE).collect();
    ensure_eq!(&out[..k], &expected[..]);
    s.reset_write_watch(base, n * PAGE).map_err(vm)?;
    ensure_eq!(s.get_write_watch(0, base, n * PAGE, &mut out).map_err(vm)?, 0);
    // A page written before the reset (its translation cached with D set) is seen again: the
    // reset invalidated the TLB entry, so the CPU sets D anew.
    write(base + 4 * PAGE, 2).map_err(|f| alloc::format!("{f:?}"))?;
    let k = s.get_write_watch(WRITE_WATCH_FLAG_RESET, base, n * PAGE, &mut out).map_err(vm)?;
    ensure_eq!(&out[..k], &[base + 4 * PAGE][..]);
    ensure_eq!(s.get_write_watch(0, base, n * PAGE, &mut out).map_err(vm)?, 0);
    // A write that faults does not mark.
    s.virtual_protect(base + 2 * PAGE, PAGE, PAGE_READONLY).map_err(vm)?;
    ensure!(write(base + 2 * PAGE, 1).is_err());
    ensure_eq!(s.get_write_watch(0, base, n * PAGE, &mut out).map_err(vm)?, 0);
    Ok(())
}

fn a_space_holds_100000_live_allocations() -> Result<(), String> {
    let heap_start = kernel::heap::usage().0;
    let mut bases = Vec::with_capacity(100_000);
    {
        let s = new_space()?;
        let mut after_first_round = 0;
        for round in 0..2 {
            let heap_before = kernel::heap::usage().0;
            // Every other 64 KiB block, so that each allocation also leaves a free gap behind it
            // (the worst case for the kernel-heap cost of the gap tree).
            for i in 0..100_000u64 {
                bases.push(s.virtual_alloc(0x1_0000_0000 + i * 0x2_0000, 0x1_0000, MEM_RESERVE, PAGE_READWRITE).map_err(vm)?);
            }
            if round == 0 {
                let per = (kernel::heap::usage().0 - heap_before) / 100_000;
                kernel::kprintln!("kernel heap per live allocation: {per} bytes");
                ensure!(per <= memory::KERNEL_HEAP_PER_ALLOCATION, "{per} bytes per allocation, budget {}", memory::KERNEL_HEAP_PER_ALLOCATION);
            }
            ensure_eq!(s.virtual_query(bases[99_999] + 0x8000).map_err(vm)?.state, MEM_RESERVE);
            for b in bases.drain(..) {
                s.virtual_free(b, 0, MEM_RELEASE).map_err(vm)?;
            }
            // The space keeps its node arena for reuse: a second round must not grow the heap.
            if round == 0 {
                after_first_round = kernel::heap::usage().0;
            } else {
                ensure!(kernel::heap::usage().0 <= after_first_round, "the kernel heap grew in the second round");
            }
        }
    }
    drop(bases);
    ensure_eq!(kernel::heap::usage().0, heap_start);
    Ok(())
}

fn accounting_adds_up() -> Result<(), String> {
    let a = memory::accounting();
    ensure!(a.commit_limit_bytes > 0 && a.commit_limit_bytes <= a.free_bytes);
    ensure!(a.free_bytes <= a.managed_bytes && a.managed_bytes <= a.ram_bytes);
    ensure!(a.boot_frames_returned > 0, "bootloader frames went back to the allocator");
    ensure!(a.page_table_pages >= 257, "kernel PML4 and its 256 upper-half PDPTs");
    memory::print_accounting();
    Ok(())
}

kernel::kernel_test_image!(
    cpu_protections_are_on,
    kernel_runs_on_its_own_tables_with_w_xor_x,
    fresh_commit_reads_zero_and_is_demand_faulted,
    sequential_first_touches_map_ahead_and_sparse_ones_do_not,
    decommitted_then_recommitted_page_reads_zero_and_recommit_keeps_data,
    write_to_readonly_pages_faults_with_the_write_bit,
    execute_is_enforced_by_nx,
    noaccess_reserved_and_free_pages_fault,
    guard_page_is_one_shot,
    no_stale_translation_survives_protect_decommit_or_release,
    frames_come_back_after_a_64_mib_cycle,
    commit_beyond_the_limit_fails_and_everything_committed_can_be_touched,
    one_page_per_2_mib_commits_up_to_the_reported_limit,
    large_pages_map_2_mib_entries,
    write_watch_reports_exactly_the_written_pages,
    a_space_holds_100000_live_allocations,
    accounting_adds_up,
);
