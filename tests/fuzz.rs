//! ABI fuzzing (issue: ABI fuzzing guest): `tests/guests/c/fuzz.c` makes at least 200,000 host
//! calls with random and adversarial arguments, interleaved with valid work whose data it checks;
//! afterwards the kernel's invariants hold (free and reserved frames, commit charge, page-table
//! pages as before, no guest space left) and the next guest runs.
//!
//! The guest's seed is a compile-time default (`FUZZ_SEED` in fuzz.c); a second seed runs the
//! same file with the seed slot patched (the 8 bytes after the marker `FUZZSEEDSLOT0001` in its
//! read-only data), so no second build is needed. To reproduce a failing seed outside this test:
//! build fuzz.c with `-DFUZZ_SEED=0x...` and `./run-qemu.sh --guest fuzz.elf`.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;

use kernel::console;
use kernel::guest::{GuestOutcome, run_guest};
use kernel::memory;
use qemu_tests::{ensure, ensure_eq};

const FUZZ: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/fuzz.elf"));
const SEED_MARKER: &[u8; 16] = b"FUZZSEEDSLOT0001";
/// The second seed (any non-zero value; 0 in the slot means the compiled-in default).
const SECOND_SEED: u64 = 0x5eed_0002_c0ff_ee17;
/// Host calls the issue asks for.
const MIN_CALLS: u64 = 200_000;

/// Runs a guest with its output captured: (outcome, output).
fn run(name: &str, file: &[u8]) -> (GuestOutcome, String) {
    console::start_capture();
    let outcome = run_guest(name, file);
    (outcome, console::take_capture())
}

/// (free frames, reserved frames, commit charge, page-table pages, live guest spaces).
fn invariants() -> (u64, u64, u64, u64, usize) {
    let spaces = memory::accounting().spaces;
    memory::with_mm(|mm| (mm.frames.free_frames(), mm.frames.reserved_frames(), mm.charge.committed_pages(), mm.page_table_pages(), spaces))
}

/// The decimal number after `key` in `out`.
fn number_after(out: &str, key: &str) -> Option<u64> {
    let rest = &out[out.find(key)? + key.len()..];
    let digits: String = rest.chars().skip_while(|c| *c == ' ').take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Runs `file` (the fuzz guest, maybe re-seeded) and checks everything the issue asks for.
fn fuzz_run(name: &str, file: &[u8], seed: Option<u64>) -> Result<(), String> {
    let before = invariants();
    ensure_eq!(before.4, 0);
    let t0 = kernel::arch::time::ticks_ns();
    let (outcome, out) = run(name, file);
    let elapsed_ms = (kernel::arch::time::ticks_ns() - t0) / 1_000_000;
    // The kernel's invariants first (they must hold whatever the guest found): every frame,
    // commit page and page-table page back, no space left; then the next guest runs and leaves
    // everything as it found it too.
    let after = invariants();
    let sample = &kernel::bundled_guests()[0];
    let (next_outcome, next_out) = run(&sample.name, &sample.data);
    let after_next = invariants();
    ensure_eq!(after, before);
    ensure!(next_out.contains(" passed, 0 failed"), "{} after the fuzzer printed: {next_out}", sample.name);
    ensure_eq!(next_outcome, GuestOutcome::Exited(0));
    ensure_eq!(after_next, before);
    // Then what the guest checked.
    let calls = number_after(&out, "fuzz calls:").ok_or_else(|| alloc::format!("{name}: no call count in {out}"))?;
    kernel::kprintln!("{name}: {calls} fuzz calls in {elapsed_ms} ms");
    ensure!(calls >= MIN_CALLS, "{name}: only {calls} fuzz calls");
    if let Some(seed) = seed {
        let hex = alloc::format!("seed {seed:#018x}");
        ensure!(out.contains(&hex), "{name}: the guest did not run seed {seed:#x}: {out}");
    }
    // Buffers the guest hands to `write` that are not wholly readable end in this marker: the
    // host must print none of them.
    ensure!(!out.contains("WRITE-LEAK"), "{name}: `write` printed part of a buffer that is not wholly readable");
    let failures: Vec<&str> = out.lines().filter(|l| l.contains("FAILED")).take(20).collect();
    ensure!(failures.is_empty(), "{name}: failed checks (first 20):\n{}", failures.join("\n"));
    ensure!(out.contains(" passed, 0 failed"), "{name} printed: {out}");
    ensure_eq!(outcome, GuestOutcome::Exited(0));
    Ok(())
}

fn fuzz_guest_default_seed_passes_and_leaks_nothing() -> Result<(), String> {
    fuzz_run("fuzz", FUZZ, None)
}

fn fuzz_guest_second_seed_passes_and_leaks_nothing() -> Result<(), String> {
    let mut file = FUZZ.to_vec();
    let at = file
        .windows(SEED_MARKER.len())
        .position(|w| w == SEED_MARKER)
        .ok_or_else(|| String::from("fuzz.elf has no seed slot"))?;
    file[at + 16..at + 24].copy_from_slice(&SECOND_SEED.to_le_bytes());
    fuzz_run("fuzz-seed2", &file, Some(SECOND_SEED))
}

kernel::kernel_test_image!(fuzz_guest_default_seed_passes_and_leaks_nothing, fuzz_guest_second_seed_passes_and_leaks_nothing);
