//! Wasmtime as a guest (tests/guests/wasm-runtime): WASI programs precompiled on the host and
//! appended to the runtime's ELF (tests/guests/wasm-bundle) run with their arguments, exit
//! codes, clocks, random bytes and unsupported calls; a linear memory grows to hundreds of MiB;
//! every kind of wasm trap ends the guest with `wasm trap: …` and 134, and the next guest runs;
//! a WasmGC module allocates far more than its heap; a damaged module and a runtime without one
//! are clear errors. Every frame and every commit comes back after each guest.
//!
//! This image boots with 1 GiB of RAM (boot/src/suite.rs) for the growth case.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::String;

use kernel::console;
use kernel::guest::{self, GuestOutcome, run_guest};
use kernel::memory;
use qemu_tests::{ensure, ensure_eq};

fn accounting() -> (u64, u64, u64, u64) {
    memory::with_mm(|mm| (mm.frames.free_frames(), mm.frames.reserved_frames(), mm.charge.committed_pages(), mm.page_table_pages()))
}

/// Runs `elf` with `args`, output captured; checks that the accounting is back where it was.
fn run(name: &str, elf: &[u8], args: &str) -> Result<(GuestOutcome, String), String> {
    let before = accounting();
    guest::set_guest_args_for_test(args);
    console::start_capture();
    let outcome = run_guest(name, elf);
    let out = console::take_capture();
    guest::set_guest_args_for_test("");
    ensure_eq!(accounting(), before);
    ensure!(!out.contains("FAILED"), "a check failed:\n{out}");
    Ok((outcome, out))
}

fn wasi(args: &str) -> Result<(GuestOutcome, String), String> {
    run("wasi-test.wasm", wasm_bundle::WASI_TEST, args)
}

fn expect_exit(args: &str, code: i32) -> Result<String, String> {
    let (outcome, out) = wasi(args)?;
    ensure!(outcome == GuestOutcome::Exited(code), "{outcome:?}: wasi-test {args}:\n{out}");
    Ok(out)
}

fn arguments_reach_the_program() -> Result<(), String> {
    let out = expect_exit("args one  two three", 0)?;
    for line in ["argc=5", "argv[0]=wasi-test.wasm", "argv[1]=args", "argv[2]=one", "argv[3]=two", "argv[4]=three", "ok no environment variables"] {
        ensure!(out.contains(line), "no {line:?} in:\n{out}");
    }
    Ok(())
}

fn proc_exit_is_the_exit_code() -> Result<(), String> {
    expect_exit("exit 42", 42)?;
    expect_exit("exit 0", 0)?;
    let out = expect_exit("exit 3", 3)?;
    ensure!(out.contains("exiting with 3"), "{out}");
    Ok(())
}

fn clocks_random_and_unsupported_calls() -> Result<(), String> {
    let out = expect_exit("clocks", 0)?;
    ensure!(out.contains("ok the monotonic clock advances"), "{out}");
    expect_exit("random", 0)?;
    let out = expect_exit("unsupported", 0)?;
    ensure!(out.contains("ok poll_oneoff is ENOSYS (52)"), "{out}");
    ensure!(out.contains("ok std::fs::read fails cleanly"), "{out}");
    Ok(())
}

fn memory_grows_to_hundreds_of_mib() -> Result<(), String> {
    let out = expect_exit("grow 400", 0)?;
    ensure!(out.contains("ok 400 MiB written and read back"), "{out}");
    Ok(())
}

/// Each trap kind: the message, exit code 134, then a guest that passes.
fn every_trap_kind_ends_only_its_guest() -> Result<(), String> {
    for (mode, what) in [
        ("oob", "out of bounds memory access"),
        ("stack", "call stack exhausted"),
        ("div", "integer divide by zero"),
        ("unreachable", "wasm `unreachable` instruction executed"),
        ("indirect", "indirect call type mismatch"),
    ] {
        let out = expect_exit(mode, 134)?;
        ensure!(out.contains(&format!("wasm trap: {what}")), "{mode}: no `wasm trap: {what}` in:\n{out}");
        let out = expect_exit("hello", 0)?;
        ensure!(out.contains("wasi-test: hello"), "after {mode}:\n{out}");
    }
    Ok(())
}

fn wasm_gc_allocates_far_beyond_its_heap() -> Result<(), String> {
    let (outcome, out) = run("gc-test.wat", wasm_bundle::GC_TEST, "")?;
    ensure!(outcome == GuestOutcome::Exited(0), "{outcome:?}: {out}");
    ensure!(out.contains("gc-test: ok"), "{out}");
    Ok(())
}

fn the_bundled_demo_reports_its_linear_memory() -> Result<(), String> {
    let (outcome, out) = run("hello-wasi.wasm", wasm_bundle::HELLO_WASI, "")?;
    ensure!(outcome == GuestOutcome::Exited(0), "{outcome:?}: {out}");
    ensure!(out.contains("ok primes below 4194304: 295947 (expected 295947)"), "{out}");
    let line = out.lines().find(|l| l.starts_with("linear memory at")).ok_or(format!("no linear-memory line:\n{out}"))?;
    ensure!(line.contains("guard after 32.0 MiB"), "{line}");
    Ok(())
}

fn a_damaged_module_or_none_is_an_error() -> Result<(), String> {
    // Break the serialized module's own header.
    let mut elf = wasm_bundle::WASI_TEST.to_vec();
    let at = elf.windows(8).rposition(|w| w == b"VMKWASM1").ok_or("no payload")?;
    let module = wasm_payload::parse(&elf[at..]).ok_or("no payload")??.module;
    let module = module.as_ptr() as usize - elf.as_ptr() as usize;
    elf[module..module + 4].copy_from_slice(b"XXXX");
    let (outcome, out) = run("damaged.wasm", &elf, "")?;
    ensure!(outcome == GuestOutcome::Exited(1), "{outcome:?}: {out}");
    ensure!(out.contains("damaged.wasm") || out.contains("wasi-test.wasm"), "{out}");
    ensure!(out.contains("cannot load the precompiled module"), "{out}");
    let (outcome, out) = run("wasm-runtime", wasm_bundle::RUNTIME_ALONE, "")?;
    ensure!(outcome == GuestOutcome::Exited(1), "{outcome:?}: {out}");
    ensure!(out.contains("no WebAssembly module is appended"), "{out}");
    Ok(())
}

kernel::kernel_test_image!(
    arguments_reach_the_program,
    proc_exit_is_the_exit_code,
    clocks_random_and_unsupported_calls,
    every_trap_kind_ends_only_its_guest,
    wasm_gc_allocates_far_beyond_its_heap,
    the_bundled_demo_reports_its_linear_memory,
    a_damaged_module_or_none_is_an_error,
    memory_grows_to_hundreds_of_mib
);
