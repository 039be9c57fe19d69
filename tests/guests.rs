//! Guests in ring 3 (issue 6): the samples, hostile pointers, faults that end a guest with the
//! right code, exception delivery, bad ELF files, and no frame left behind.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;

use kernel::console;
use kernel::guest::{GuestOutcome, run_guest};
use kernel::memory;
use qemu_tests::{ensure, ensure_eq};

macro_rules! guest_elf {
    ($name:literal) => {
        include_bytes!(concat!(env!("OUT_DIR"), "/", $name, ".elf"))
    };
}

const FAULTS: [&[u8]; 13] = [
    guest_elf!("fault0"),
    guest_elf!("fault1"),
    guest_elf!("fault2"),
    guest_elf!("fault3"),
    guest_elf!("fault4"),
    guest_elf!("fault5"),
    guest_elf!("fault6"),
    guest_elf!("fault7"),
    guest_elf!("fault8"),
    guest_elf!("fault9"),
    guest_elf!("fault10"),
    guest_elf!("fault11"),
    guest_elf!("fault12"),
];

/// Runs a guest with its output captured: (outcome, output).
fn run(name: &str, file: &[u8]) -> (GuestOutcome, String) {
    console::start_capture();
    let outcome = run_guest(name, file);
    (outcome, console::take_capture())
}

fn frames() -> (u64, u64, u64, u64) {
    memory::with_mm(|mm| (mm.frames.free_frames(), mm.frames.reserved_frames(), mm.charge.committed_pages(), mm.page_table_pages()))
}

fn samples_run_and_pass() -> Result<(), String> {
    for g in kernel::bundled_guests() {
        let (outcome, out) = run(&g.name, &g.data);
        ensure_eq!(outcome, GuestOutcome::Exited(0));
        ensure!(out.contains("hello from ring 3"), "{} printed: {out}", g.name);
        ensure!(out.contains(" passed, 0 failed"), "{} printed: {out}", g.name);
        ensure!(!out.contains("FAILED"), "{} printed: {out}", g.name);
    }
    Ok(())
}

fn hostile_pointers_fail_cleanly_and_the_next_guest_runs() -> Result<(), String> {
    let before = frames();
    let (outcome, out) = run("bad_pointers", guest_elf!("bad_pointers"));
    ensure!(!out.contains("FAILED"), "bad_pointers printed: {out}");
    ensure!(out.contains(" passed, 0 failed"), "bad_pointers printed: {out}");
    ensure_eq!(outcome, GuestOutcome::Exited(0));
    let sample = &kernel::bundled_guests()[0];
    ensure_eq!(run(&sample.name, &sample.data).0, GuestOutcome::Exited(0));
    ensure_eq!(frames(), before);
    Ok(())
}

fn exceptions_reach_handlers_which_may_edit_the_context() -> Result<(), String> {
    let (outcome, out) = run("exceptions", guest_elf!("exceptions"));
    ensure!(!out.contains("FAILED"), "exceptions printed: {out}");
    ensure!(out.contains(" passed, 0 failed"), "exceptions printed: {out}");
    ensure_eq!(outcome, GuestOutcome::Exited(0));
    Ok(())
}

fn faults_end_the_guest_with_the_right_code() -> Result<(), String> {
    let expected: [(u32, &str); 13] = [
        (0xC000_0096, "hlt"),
        (0xC000_0096, "cli"),
        (0xC000_0096, "mov to cr3"),
        (0xC000_0005, "read of kernel memory"),
        (0xC000_0005, "write to the host's read-only page"),
        (0xC000_001D, "ud2"),
        (0xC000_0094, "divide by zero"),
        (0x8000_0003, "int3"),
        (0xC000_0005, "int 0x80"),
        (0xC000_00FD, "stack overflow"),
        (0xC000_0005, "non-canonical access"),
        (0xC000_0096, "port input"),
        (0, "deep recursion within the stack reservation"),
    ];
    let before = frames();
    for (i, (code, what)) in expected.iter().enumerate() {
        let (outcome, out) = run("faults", FAULTS[i]);
        ensure!(out.contains("about to fault"), "{what}: the guest did not start: {out}");
        ensure_eq!((what, outcome), (what, GuestOutcome::Exited(*code as i32)));
        if *code != 0 {
            ensure!(!out.contains("still alive"), "{what}: the guest went on after the fault");
        }
    }
    ensure_eq!(frames(), before);
    Ok(())
}

fn patched(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut elf = kernel::bundled_guests()[0].data.to_vec();
    f(&mut elf);
    elf
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

/// Offset of the `i`-th program header.
fn ph(b: &[u8], i: usize) -> usize {
    u64_at(b, 32) as usize + i * 56
}

/// The Rust sample (a static PIE with R_X86_64_RELATIVE relocations) with the type of its first
/// relocation changed to `r_type`.
fn with_relocation_type(r_type: u32) -> Vec<u8> {
    let mut e = kernel::bundled_guests()[1].data.to_vec();
    let phnum = u16::from_le_bytes([e[56], e[57]]) as usize;
    let (mut dynamic, mut loads) = (None, Vec::new());
    for i in 0..phnum {
        let o = ph(&e, i);
        let kind = u32::from_le_bytes(e[o..o + 4].try_into().expect("4 bytes"));
        let (off, va, filesz) = (u64_at(&e, o + 8), u64_at(&e, o + 16), u64_at(&e, o + 32));
        match kind {
            1 => loads.push((off, va, filesz)),
            2 => dynamic = Some(off as usize),
            _ => {}
        }
    }
    let mut at = dynamic.expect("the Rust sample has a dynamic section");
    let rela = loop {
        let (tag, val) = (u64_at(&e, at), u64_at(&e, at + 8));
        if tag == 7 {
            break val;
        }
        assert!(tag != 0, "the Rust sample has RELA relocations");
        at += 16;
    };
    let (off, va, _) = loads.iter().copied().find(|&(_, va, sz)| (va..va + sz).contains(&rela)).expect("RELA in a segment");
    let entry = (off + (rela - va)) as usize;
    e[entry + 8..entry + 12].copy_from_slice(&r_type.to_le_bytes());
    e
}

fn bad_elf_files_are_refused_and_the_kernel_carries_on() -> Result<(), String> {
    let before = frames();
    let cases: Vec<(&str, Vec<u8>, &str)> = alloc::vec![
        ("text", b"#!/bin/sh\necho not an elf\n".to_vec(), "not an ELF file"),
        ("empty", Vec::new(), "not an ELF file"),
        ("32-bit", patched(|e| e[4] = 1), "not a 64-bit"),
        ("big-endian", patched(|e| e[5] = 2), "little-endian"),
        ("arm64", patched(|e| e[18] = 183), "wrong machine 183"),
        ("relocatable object", patched(|e| e[16] = 1), "neither an executable"),
        ("interpreter", patched(|e| { let o = ph(e, 0); e[o] = 3; }), "interpreter"),
        ("writable+executable", patched(|e| { let o = ph(e, 1); e[o + 4] = 7; }), "writable and executable"),
        ("overlapping", patched(|e| { let (a, b) = (ph(e, 1), ph(e, 2)); let v = u64_at(e, a + 16); e[b + 16..b + 24].copy_from_slice(&v.to_le_bytes()); }), "overlap"),
        ("in kernel space", patched(|e| {
            e[16] = 2;
            for i in 0..4 {
                let o = ph(e, i);
                let v = u64_at(e, o + 16) + 0xffff_8000_0000_0000;
                e[o + 16..o + 24].copy_from_slice(&v.to_le_bytes());
            }
        }), "outside user space"),
        ("truncated", patched(|e| e.truncate(200)), "beyond the end of the file"),
        ("entry outside code", patched(|e| e[24..32].copy_from_slice(&0x10u64.to_le_bytes())), "entry point"),
        ("R_X86_64_64 relocation", with_relocation_type(1), "unsupported relocation type 1"),
        ("R_X86_64_GLOB_DAT relocation", with_relocation_type(6), "unsupported relocation type 6"),
        ("1 TiB of bss", patched(|e| { let o = ph(e, 3); e[o + 40..o + 48].copy_from_slice(&(1u64 << 40).to_le_bytes()); }), "more than"),
        // Issue 12: these used to overflow in the kernel's own parser.
        ("segment in the last page", patched(|e| { let o = ph(e, 3); e[o + 16..o + 24].copy_from_slice(&0xFFFF_FFFF_FFFF_F000u64.to_le_bytes()); }), "wraps"),
        ("huge p_offset", patched(|e| { let o = ph(e, 3); e[o + 8..o + 16].copy_from_slice(&(u64::MAX - 1).to_le_bytes()); }), "beyond the end of the file"),
        ("p_memsz 0 with a wrapping file range", patched(|e| {
            let o = ph(e, 0);
            e[o + 8..o + 16].copy_from_slice(&u64::MAX.to_le_bytes());
            e[o + 32..o + 48].copy_from_slice(&[0xFF; 8].iter().chain(&[0; 8]).copied().collect::<Vec<u8>>());
        }), "exceeds memory size"),
    ];
    for (what, file, reason) in cases {
        match run(what, &file).0 {
            GuestOutcome::Refused(msg) => ensure!(msg.contains(reason), "{what}: refused with {msg:?}, expected {reason:?}"),
            other => return Err(alloc::format!("{what}: not refused: {other:?}")),
        }
    }
    ensure_eq!(frames(), before);
    let sample = &kernel::bundled_guests()[1];
    ensure_eq!(run(&sample.name, &sample.data).0, GuestOutcome::Exited(0));
    // An empty PT_LOAD (p_memsz 0) with a wrapping range and a huge p_offset maps nothing: the
    // C sample with its GNU_STACK header (index 7) turned into one still runs.
    let empty_load = patched(|e| {
        let o = ph(e, 7);
        e[o..o + 4].copy_from_slice(&1u32.to_le_bytes());
        e[o + 8..o + 16].copy_from_slice(&u64::MAX.to_le_bytes());
        e[o + 16..o + 24].copy_from_slice(&(u64::MAX - 7).to_le_bytes());
    });
    ensure_eq!(run("empty wrapping segment", &empty_load).0, GuestOutcome::Exited(0));
    ensure_eq!(frames(), before);
    Ok(())
}

/// A 14 MB static PIE with 600,000 R_X86_64_RELATIVE relocations (issue 12: collecting them
/// exhausted the 32 MiB kernel heap) loads and runs; the same file with a bad last relocation is
/// refused before anything is mapped; the kernel heap is back where it was.
fn six_hundred_thousand_relocations_load_in_bounded_heap() -> Result<(), String> {
    let before = frames();
    let mut file = guest_loader::build::static_pie(600_000);
    let heap_before = memory::accounting().kernel_heap_used;
    ensure_eq!(run("relocations", &file).0, GuestOutcome::Exited(0));
    let last = guest_loader::build::pie_layout(600_000).rela as usize + 599_999 * 24;
    file[last + 8] = 1;
    match run("bad last relocation", &file).0 {
        GuestOutcome::Refused(msg) => ensure!(msg.contains("relocation 599999: unsupported relocation type 1"), "refused with {msg:?}"),
        other => return Err(alloc::format!("not refused: {other:?}")),
    }
    ensure_eq!(memory::accounting().kernel_heap_used, heap_before);
    ensure_eq!(frames(), before);
    Ok(())
}

/// host-abi §10.1: the host library's vtables are read-only (PT_GNU_RELRO applied by the loader):
/// a write to the IHostMalloc vtable is an access violation, and the next guest runs.
fn host_library_vtables_are_read_only() -> Result<(), String> {
    let before = frames();
    let (outcome, out) = run("vtable_write", guest_elf!("vtable_write"));
    ensure!(out.contains(" passed, 0 failed"), "vtable_write printed: {out}");
    ensure!(out.contains("about to write"), "vtable_write printed: {out}");
    ensure!(!out.contains("still alive"), "the guest went on after writing to the vtable: {out}");
    ensure_eq!(outcome, GuestOutcome::Exited(0xC000_0005_u32 as i32));
    ensure_eq!(frames(), before);
    let sample = &kernel::bundled_guests()[0];
    ensure_eq!(run(&sample.name, &sample.data).0, GuestOutcome::Exited(0));
    Ok(())
}

fn guests_in_a_row_leave_every_frame_behind() -> Result<(), String> {
    let before = frames();
    for g in kernel::bundled_guests().iter().chain(kernel::bundled_guests().iter()) {
        ensure_eq!(run(&g.name, &g.data).0, GuestOutcome::Exited(0));
        ensure_eq!(frames(), before);
    }
    ensure_eq!(before.2, 0);
    Ok(())
}

fn e_fail_poisons_the_manager() -> Result<(), String> {
    let before = frames();
    kernel::guest::calls::inject_inconsistency_after(2);
    let (outcome, out) = run("poison", guest_elf!("poison"));
    kernel::guest::calls::inject_inconsistency_after(0);
    ensure!(!out.contains("FAILED"), "poison printed: {out}");
    ensure_eq!(outcome, GuestOutcome::Exited(0));
    ensure_eq!(frames(), before);
    // The next guest has a healthy manager.
    let sample = &kernel::bundled_guests()[0];
    ensure_eq!(run(&sample.name, &sample.data).0, GuestOutcome::Exited(0));
    Ok(())
}

fn memory_notifications_and_acquired_address_space() -> Result<(), String> {
    let before = frames();
    let (outcome, out) = run("notify", guest_elf!("notify"));
    ensure!(!out.contains("FAILED"), "notify printed: {out}");
    ensure!(out.contains(" passed, 0 failed"), "notify printed: {out}");
    ensure_eq!(outcome, GuestOutcome::Exited(0));
    ensure_eq!(frames(), before);
    Ok(())
}

/// Issue 17: IHostMalloc decommits what is freed (commit before/after) and recommits on reuse;
/// with version 2, threads share a MALLOC_THREADSAFE heap.
fn host_malloc_gives_commit_back() -> Result<(), String> {
    let before = frames();
    let (outcome, out) = run("malloc_commit", guest_elf!("malloc_commit"));
    ensure!(!out.contains("FAILED"), "malloc_commit printed: {out}");
    ensure!(out.contains("ok commit went back after the frees"), "malloc_commit printed: {out}");
    ensure!(out.contains(" passed, 0 failed"), "malloc_commit printed: {out}");
    ensure_eq!(outcome, GuestOutcome::Exited(0));
    ensure_eq!(frames(), before);
    Ok(())
}

/// Runs `contain.c` with `case` as its argument string (the case it plays).
fn contain(case: &str) -> (GuestOutcome, String) {
    kernel::guest::set_guest_args_for_test(case);
    let result = run(case, guest_elf!("contain"));
    kernel::guest::set_guest_args_for_test("");
    result
}

fn heap_used() -> u64 {
    memory::accounting().kernel_heap_used
}

/// Issue 12: handlers and callbacks that would have nested the kernel without bound end only
/// their own guest; the next guest runs and every frame and heap byte is back.
fn hostile_handlers_and_callbacks_end_only_their_guest() -> Result<(), String> {
    let (before, heap) = (frames(), heap_used());
    let cases: [(&str, u32); 5] = [
        ("bad-rip", 0xC000_0005),
        ("bad-rip-nc", 0xC000_0005),
        ("nest-forever", 0xC000_001D),
        ("addref-reregister", 0xC000_00FD),
        ("callback-nc", 0xC000_0005),
    ];
    for (case, code) in cases {
        let (outcome, out) = contain(case);
        ensure!(out.contains("contain: "), "{case}: the guest did not start: {out}");
        ensure!(!out.contains("still alive"), "{case}: the guest went on: {out}");
        ensure_eq!((case, outcome), (case, GuestOutcome::Exited(code as i32)));
        drop(out);
        ensure_eq!((case, frames()), (case, before));
        ensure_eq!((case, heap_used()), (case, heap));
        let sample = &kernel::bundled_guests()[0];
        ensure_eq!((case, run(&sample.name, &sample.data).0), (case, GuestOutcome::Exited(0)));
    }
    Ok(())
}

/// Issue 12: exception dispatch in ring 3 (handlers leaving by longjmp, nested faults, callback
/// methods at bad addresses, #MF/#XM codes, a #GP decoded next to a guard page, `lar`, the main
/// stack's overflow handled on its last pages, a spoiled register image made loadable, vector
/// registers and MXCSR preserved wherever the frame lands).
fn exceptions_are_dispatched_in_ring_3() -> Result<(), String> {
    let (before, heap) = (frames(), heap_used());
    for case in ["longjmp", "nested", "callbacks", "float", "gp-guard", "lar", "stack-overflow", "fpu-image", "fpu-frames"] {
        let (outcome, out) = contain(case);
        ensure!(!out.contains("FAILED"), "{case} printed: {out}");
        ensure!(out.contains(" passed, 0 failed"), "{case} printed: {out}");
        ensure_eq!((case, outcome), (case, GuestOutcome::Exited(0)));
    }
    ensure_eq!(frames(), before);
    ensure_eq!(heap_used(), heap);
    Ok(())
}

/// host-abi §10.1: the code of a #MF / #XM from the pending unmasked exceptions (QEMU's TCG
/// raises #MF but never #XM, so the SIMD decoding is checked here as well as in `contain.c`).
fn floating_point_exception_codes() -> Result<(), String> {
    use kernel::guest::exceptions::float_status;
    const MASKED: u32 = 0x1F80;
    let xm = |flags: u32, unmask: u32| float_status(19, 0x037F, 0, (MASKED & !unmask) | flags);
    ensure_eq!(xm(0x04, 0x0200), 0xC000_008E);
    ensure_eq!(xm(0x01, 0x0080), 0xC000_0090);
    ensure_eq!(xm(0x08 | 0x20, 0x0400), 0xC000_0091);
    ensure_eq!(xm(0x10 | 0x20, 0x0800), 0xC000_0093);
    ensure_eq!(xm(0x20, 0x1000), 0xC000_008F);
    ensure_eq!(xm(0x02, 0x0100), 0xC000_008D);
    // Flags whose exceptions are masked are not the cause.
    ensure_eq!(xm(0x04 | 0x20, 0x1000), 0xC000_008F);
    ensure_eq!(xm(0, 0), 0xC000_02B5);
    // Invalid wins over divide by zero, as on Windows and Linux.
    ensure_eq!(xm(0x05, 0x0280), 0xC000_0090);
    let mf = |fsw: u16, unmask: u16| float_status(16, 0x037F & !unmask, fsw | 0x80, MASKED);
    ensure_eq!(mf(0x04, 0x04), 0xC000_008E);
    ensure_eq!(mf(0x41, 0x01), 0xC000_0090);
    ensure_eq!(mf(0x08, 0x08), 0xC000_0091);
    ensure_eq!(mf(0x10, 0x10), 0xC000_0093);
    ensure_eq!(mf(0x20, 0x20), 0xC000_008F);
    ensure_eq!(mf(0x02, 0x02), 0xC000_008D);
    ensure_eq!(mf(0x04, 0x20), 0xC000_02B5);
    Ok(())
}

/// Runs the `contain.c` case `dirty` (which leaves state behind and exits 0), then `check`, twice
/// over: `check` must pass all of its checks (`summary`, e.g. "4 passed, 0 failed").
fn next_guest_sees_nothing_of(dirty: &str, check: &str, summary: &str) -> Result<(), String> {
    for _ in 0..2 {
        let (outcome, _) = contain(dirty);
        ensure_eq!(outcome, GuestOutcome::Exited(0));
        let (outcome, out) = contain(check);
        ensure!(!out.contains("FAILED"), "{check} printed: {out}");
        ensure!(out.contains(summary), "{check} printed: {out}");
        ensure_eq!(outcome, GuestOutcome::Exited(0));
    }
    Ok(())
}

/// Issue 12: guest B starts with the clean FPU state whatever guest A left in the registers.
fn each_guest_starts_with_a_clean_fpu_state() -> Result<(), String> {
    next_guest_sees_nothing_of("fpu-dirty", "fpu-check", " passed, 0 failed")
}

/// Issue 12: the data selectors guest A loaded (sysretq keeps them) do not reach guest B.
fn each_guest_starts_with_null_data_selectors() -> Result<(), String> {
    next_guest_sees_nothing_of("seg-dirty", "seg-check", "4 passed, 0 failed")
}

kernel::kernel_test_image!(
    e_fail_poisons_the_manager,
    memory_notifications_and_acquired_address_space,
    host_malloc_gives_commit_back,
    samples_run_and_pass,
    hostile_pointers_fail_cleanly_and_the_next_guest_runs,
    exceptions_reach_handlers_which_may_edit_the_context,
    faults_end_the_guest_with_the_right_code,
    bad_elf_files_are_refused_and_the_kernel_carries_on,
    six_hundred_thousand_relocations_load_in_bounded_heap,
    host_library_vtables_are_read_only,
    guests_in_a_row_leave_every_frame_behind,
    hostile_handlers_and_callbacks_end_only_their_guest,
    exceptions_are_dispatched_in_ring_3,
    each_guest_starts_with_a_clean_fpu_state,
    each_guest_starts_with_null_data_selectors,
    floating_point_exception_codes,
);
