//! Guest threads in the kernel (issue 13, host-abi §10.2): the version-2 services work, threads
//! run on every CPU at once, and every way a guest with threads ends (exit from a thread, an
//! unhandled exception on a thread, the last thread's exit, a deadlock, the CPU-time limit, the
//! wall-clock limit of a guest whose threads all sleep)
//! ends all of its threads and leaves every frame as it was; the next guest runs. The suite runs
//! this image at 1, 2 and 4 CPUs (`boot/src/suite.rs`). The thread conformance and torture
//! guests are tests/threads.rs.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::string::String;

use kernel::arch::{fw_cfg, percpu};
use kernel::console;
use kernel::guest::{GuestOutcome, cpu_time, run_guest, sched, set_guest_args_for_test};
use qemu_tests::{ensure, ensure_eq, frame_counts, guest_elf};

const SMOKE: &[u8] = guest_elf!("threads_smoke");

/// Runs the smoke guest with `case` as its argument string: (outcome, output).
fn run(case: &str) -> (GuestOutcome, String) {
    set_guest_args_for_test(case);
    console::start_capture();
    let outcome = run_guest(case, SMOKE);
    (outcome, console::take_capture())
}

fn passes(case: &str) -> Result<String, String> {
    let (outcome, out) = run(case);
    ensure!(!out.contains("FAILED"), "{case} printed: {out}");
    ensure!(out.contains(" passed, 0 failed"), "{case} printed: {out}");
    ensure_eq!(outcome, GuestOutcome::Exited(0));
    Ok(out)
}

fn the_thread_services_work() -> Result<(), String> {
    let before = frame_counts();
    let out = passes("basic")?;
    let cpus = fw_cfg::cpu_count().ok_or("no fw_cfg CPU count")?;
    ensure!(out.contains(&alloc::format!("cpu_count {cpus}\n")), "expected cpu_count {cpus}: {out}");
    ensure_eq!(frame_counts(), before);
    Ok(())
}

fn one_thread_per_cpu_runs_at_the_same_time() -> Result<(), String> {
    let cpus = fw_cfg::cpu_count().ok_or("no fw_cfg CPU count")? as u32;
    sched::take_peak_parallel();
    let before: alloc::vec::Vec<(u64, u64)> = percpu::cpus().map(|c| (c.timer_ticks, c.wakeups)).collect();
    passes("parallel")?;
    let peak = sched::take_peak_parallel();
    // On failure: each CPU's timer ticks and wake-ups during the guest (a CPU with no ticks did
    // not run at all: its virtual CPU got no host time).
    let during: alloc::vec::Vec<(u64, u64)> = percpu::cpus().zip(before).map(|(c, b)| (c.timer_ticks - b.0, c.wakeups - b.1)).collect();
    ensure!(peak == cpus, "at most {peak} of {cpus} CPUs ran threads at once; ticks and wake-ups per CPU: {during:?}");
    Ok(())
}

fn exit_from_a_thread_ends_every_thread() -> Result<(), String> {
    let before = frame_counts();
    let (outcome, out) = run("exit");
    ensure!(!out.contains("FAILED"), "{out}");
    ensure_eq!(outcome, GuestOutcome::Exited(42));
    ensure_eq!(frame_counts(), before);
    passes("basic")?;
    Ok(())
}

fn an_unhandled_exception_on_a_thread_ends_the_guest() -> Result<(), String> {
    let before = frame_counts();
    let (outcome, out) = run("crash");
    ensure!(!out.contains("FAILED"), "{out}");
    ensure_eq!(outcome, GuestOutcome::Exited(0xC000_0005u32 as i32));
    ensure_eq!(frame_counts(), before);
    passes("basic")?;
    Ok(())
}

fn the_guest_ends_with_its_last_threads_exit_code() -> Result<(), String> {
    let before = frame_counts();
    ensure_eq!(run("last").0, GuestOutcome::Exited(7));
    ensure_eq!(frame_counts(), before);
    Ok(())
}

fn a_deadlocked_guest_ends() -> Result<(), String> {
    let before = frame_counts();
    let (outcome, out) = run("deadlock");
    ensure!(!out.contains("FAILED"), "{out}");
    ensure_eq!(outcome, GuestOutcome::Exited(sched::STATUS_POSSIBLE_DEADLOCK as i32));
    ensure_eq!(frame_counts(), before);
    Ok(())
}

fn the_cpu_time_limit_counts_every_thread() -> Result<(), String> {
    let before = frame_counts();
    cpu_time::set_limit_for_test(Some(400));
    let (outcome, out) = run("spin");
    cpu_time::set_limit_for_test(None);
    ensure!(out.contains("threads_smoke: spin") && !out.contains("FAILED"), "{out}");
    ensure_eq!(outcome, GuestOutcome::Exited(0x8013_1024u32 as i32));
    ensure_eq!(frame_counts(), before);
    passes("parallel")?;
    Ok(())
}

/// A guest whose threads all sleep uses no CPU time: the wall-clock limit ends it (and the next
/// guest runs), where the CPU-time limit never would.
fn the_wall_clock_limit_ends_a_guest_whose_threads_all_sleep() -> Result<(), String> {
    let before = frame_counts();
    cpu_time::set_wall_limit_for_test(Some(500));
    let t0 = kernel::arch::time::ticks_ns();
    let (outcome, out) = run("sleep");
    let taken_ms = (kernel::arch::time::ticks_ns() - t0) / 1_000_000;
    cpu_time::set_wall_limit_for_test(None);
    ensure!(out.contains("threads_smoke: sleep") && !out.contains("FAILED"), "{out}");
    ensure_eq!(outcome, GuestOutcome::Exited(0x8013_1024u32 as i32));
    ensure!((500..20_000).contains(&taken_ms), "ended after {taken_ms} ms (limit 500 ms)");
    ensure_eq!(frame_counts(), before);
    passes("parallel")?;
    Ok(())
}

kernel::kernel_test_image!(
    the_thread_services_work,
    one_thread_per_cpu_runs_at_the_same_time,
    exit_from_a_thread_ends_every_thread,
    an_unhandled_exception_on_a_thread_ends_the_guest,
    the_guest_ends_with_its_last_threads_exit_code,
    a_deadlocked_guest_ends,
    the_cpu_time_limit_counts_every_thread,
    the_wall_clock_limit_ends_a_guest_whose_threads_all_sleep,
);
