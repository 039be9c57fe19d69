//! The timer and the guest CPU-time limit (host-abi §10.1, issue 12): timer interrupts reach a
//! guest whatever it does, a guest past its limit ends with HOST_E_TIMEOUT (0x80131024), the
//! next guest runs, and every frame comes back.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::string::String;

use kernel::arch::{percpu, time};
use kernel::console;
use kernel::guest::cpu_time;
use kernel::guest::hresult::HOST_E_TIMEOUT;
use kernel::guest::{GuestOutcome, run_guest};
use kernel::memory;
use qemu_tests::{ensure, ensure_eq, frame_counts, guest_elf};

/// The limit the spinning guests get.
const LIMIT_MS: u64 = 1000;

fn boot_cpu_ticks() -> u64 {
    percpu::cpus().next().map_or(0, |c| c.timer_ticks)
}

/// Runs `file` under a limit of `LIMIT_MS` and checks that it ends at the limit with
/// HOST_E_TIMEOUT (the kernel prints why on its console), after about that much time, with the
/// timer ticking meanwhile.
fn ends_at_the_limit(name: &str, file: &[u8], announces: &str) -> Result<(), String> {
    cpu_time::set_limit_for_test(Some(LIMIT_MS));
    let (ticks, start) = (boot_cpu_ticks(), time::ticks_ns());
    console::start_capture();
    let outcome = run_guest(name, file);
    let out = console::take_capture();
    let (ticks, ms) = (boot_cpu_ticks() - ticks, (time::ticks_ns() - start) / 1_000_000);
    cpu_time::set_limit_for_test(None);
    ensure_eq!(outcome, GuestOutcome::Exited(HOST_E_TIMEOUT.0));
    ensure!(out.contains(announces), "{name} did not start as expected: {out}");
    ensure!(ms >= LIMIT_MS, "{name} ended after {ms} ms, before its limit");
    ensure!(ms < LIMIT_MS * 10, "{name} ended only after {ms} ms");
    // 100 Hz: about 100 ticks in a second, each reaching the guest's run loop. When the host
    // starves the vCPU thread (a loaded machine), QEMU coalesces the periods it missed, so only
    // a floor well below the nominal rate is a fact about the kernel rather than the host.
    ensure!(ticks >= 10, "only {ticks} timer ticks on the boot CPU in {ms} ms");
    Ok(())
}

fn a_guest_spinning_forever_ends_at_its_limit() -> Result<(), String> {
    ends_at_the_limit("spin_loop", guest_elf!("spin_loop"), "spin_loop: spinning")
}

fn a_guest_trying_cli_ends_at_its_limit() -> Result<(), String> {
    ends_at_the_limit("spin_cli", guest_elf!("spin_cli"), "spin_cli: cli in a loop")
}

fn a_handler_resuming_at_the_fault_forever_ends_at_the_limit() -> Result<(), String> {
    ends_at_the_limit("spin_refault", guest_elf!("spin_refault"), "spin_refault: ud2")
}

fn the_next_guest_runs_and_every_frame_comes_back() -> Result<(), String> {
    let before = frame_counts();
    ends_at_the_limit("spin_loop", guest_elf!("spin_loop"), "spin_loop: spinning")?;
    ensure_eq!(frame_counts(), before);
    // A guest that finishes well inside a limit is not disturbed by it.
    cpu_time::set_limit_for_test(Some(60_000));
    let sample = &kernel::bundled_guests()[0];
    console::start_capture();
    let outcome = run_guest(&sample.name, &sample.data);
    let out = console::take_capture();
    cpu_time::set_limit_for_test(None);
    ensure_eq!(outcome, GuestOutcome::Exited(0));
    ensure!(out.contains(" passed, 0 failed"), "{} printed: {out}", sample.name);
    ensure_eq!(frame_counts(), before);
    Ok(())
}

fn a_guest_cannot_fake_the_interrupt_vectors() -> Result<(), String> {
    console::start_capture();
    let outcome = run_guest("fake_interrupts", guest_elf!("fake_interrupts"));
    let out = console::take_capture();
    ensure_eq!(outcome, GuestOutcome::Exited(0));
    ensure!(out.contains("4 passed, 0 failed"), "fake_interrupts printed: {out}");
    Ok(())
}

fn no_limit_is_the_default() -> Result<(), String> {
    ensure_eq!(memory::config().guest_cpu_limit_s, 0);
    ensure_eq!(cpu_time::limit_ns(), None);
    Ok(())
}

kernel::kernel_test_image!(
    no_limit_is_the_default,
    a_guest_cannot_fake_the_interrupt_vectors,
    a_guest_spinning_forever_ends_at_its_limit,
    a_guest_trying_cli_ends_at_its_limit,
    a_handler_resuming_at_the_fault_forever_ends_at_the_limit,
    the_next_guest_runs_and_every_frame_comes_back,
);
