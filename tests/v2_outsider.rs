//! An outsider's conformance guest for host-abi §10.1 and §10.2 (`tests/guests/c/v2_outsider.c`,
//! written from the spec), run by the suite at 1, 2 and 4 CPUs:
//! - after a guest that leaves its x87/SSE/AVX state dirty, the clean start state at guest_main and
//!   at every thread's start; every unmasked x87 and SSE exception with its code, access and
//!   address, on the main thread and a worker, skipped or fixed up;
//! - atomicity of concurrent calls on ranges crossing 2 MiB, 1 GiB and 512 GiB table boundaries (VirtualQuery against
//!   commit/protect/decommit, racing VirtualProtects' old protections, write watch against resets);
//! - threads up to create_thread's bound, each waiting on an address of its own;
//! - the CPU-time limit with threads: spinning workers (all threads together count), sleeping ones
//!   (they do not), a handler refaulting forever on a worker; the next guest runs each time.
//!
//! After every guest the kernel's accounting is as before.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::UnsafeCell;

use kernel::arch::{percpu, time};
use kernel::console;
use kernel::guest::hresult::HOST_E_TIMEOUT;
use kernel::guest::{GuestOutcome, cpu_time, run_guest, set_guest_args_for_test};
use qemu_tests::{GuestAccounting, area_lines, ensure, ensure_eq, guest_accounting, guest_elf};

const GUEST: &[u8] = guest_elf!("v2_outsider");

struct Run {
    outcome: GuestOutcome,
    out: String,
    ms: u64,
    before: GuestAccounting,
    after: GuestAccounting,
}

/// Runs the guest with argument string `args` and CPU-time limit `limit_ms`, output captured.
fn run(args: &str, limit_ms: Option<u64>) -> Run {
    set_guest_args_for_test(args);
    cpu_time::set_limit_for_test(limit_ms);
    let before = guest_accounting();
    let start = time::ticks_ns();
    console::start_capture();
    let outcome = run_guest(&format!("v2_outsider-{args}"), GUEST);
    let out = console::take_capture();
    let ms = (time::ticks_ns() - start) / 1_000_000;
    cpu_time::set_limit_for_test(None);
    set_guest_args_for_test("");
    Run { outcome, out, ms, before, after: guest_accounting() }
}

/// Frames, commit, page tables and address spaces as before the guest.
fn ensure_nothing_left(r: &Run) -> Result<(), String> {
    ensure_eq!(r.before.4, 0);
    ensure_eq!(r.after, r.before);
    Ok(())
}

fn tail(out: &str) -> String {
    let lines: Vec<&str> = out.lines().collect();
    lines[lines.len().saturating_sub(12)..].join("\n")
}

struct Once(UnsafeCell<Option<Run>>);
// SAFETY: the test image runs its cases one after another on the boot CPU; nothing else touches it.
unsafe impl Sync for Once {}
static DIRTY_RUN: Once = Once(UnsafeCell::new(None));
static MAIN_RUN: Once = Once(UnsafeCell::new(None));

/// The guest that leaves its FPU dirty and exits with markers in every register (a worker
/// spinning with its own), once.
fn dirty_run() -> &'static Run {
    // SAFETY: see `Once`; the reference handed out is only read.
    let slot = unsafe { &mut *DIRTY_RUN.0.get() };
    slot.get_or_insert_with(|| run("dirty", None))
}

/// The full run, once, right after the dirty guest.
fn main_run() -> &'static Run {
    dirty_run();
    // SAFETY: see `Once`; the reference handed out is only read.
    let slot = unsafe { &mut *MAIN_RUN.0.get() };
    slot.get_or_insert_with(|| run("", None))
}

/// Every check line of one area of the full run is ok.
fn area_passes(area: &str) -> Result<(), String> {
    let out = &main_run().out;
    let lines = area_lines(out, area);
    ensure!(!lines.is_empty(), "area {area}: no check lines (did the guest reach it?)\n{}", tail(out));
    let failed: Vec<&str> = lines.iter().copied().filter(|l| !l.starts_with("ok ")).collect();
    ensure!(failed.is_empty(), "area {area}: {} of {} checks failed:\n{}", failed.len(), lines.len(), failed.join("\n"));
    Ok(())
}

fn clean_fpu_at_guest_and_thread_start_after_a_dirty_guest() -> Result<(), String> {
    area_passes("start-state")?;
    let dirty = dirty_run();
    ensure!(dirty.out.contains("left the FPU dirty"), "{}", tail(&dirty.out));
    ensure_eq!(dirty.outcome, GuestOutcome::Exited(0));
    ensure_nothing_left(dirty)
}
fn every_x87_and_sse_exception_kind_on_main_and_worker() -> Result<(), String> { area_passes("fp-exceptions") }
fn host_calls_and_faults_with_ac_or_df_set() -> Result<(), String> { area_passes("flags") }
fn virtual_query_sees_only_whole_calls_across_table_boundaries() -> Result<(), String> { area_passes("atomic-query") }
fn racing_virtual_protects_form_one_chain() -> Result<(), String> { area_passes("atomic-protect") }
fn a_write_after_a_reset_is_reported() -> Result<(), String> { area_passes("write-watch-race") }
fn racing_commits_and_decommits_keep_the_charge_exact() -> Result<(), String> { area_passes("atomic-commit") }
fn racing_reserves_and_releases_at_one_address_one_winner() -> Result<(), String> { area_passes("atomic-reserve") }
fn a_protect_over_a_page_being_decommitted_is_all_or_nothing() -> Result<(), String> { area_passes("atomic-partial") }
fn reserve_commit_and_release_are_each_one_step() -> Result<(), String> { area_passes("atomic-whole") }
fn threads_up_to_the_bound_each_waiting_on_its_own_address() -> Result<(), String> { area_passes("bounds") }
fn handlers_acquired_ranges_and_reservations_up_to_their_bounds() -> Result<(), String> { area_passes("limits") }
fn page_tables_for_sparse_commits_run_out_as_an_error() -> Result<(), String> { area_passes("tables") }
fn the_guest_passes_and_leaves_nothing() -> Result<(), String> {
    area_passes("final")?;
    let r = main_run();
    for line in r.out.lines().filter(|l| l.starts_with("atomic-query: ") || l.starts_with("atomic-commit: ") || l.starts_with("atomic-partial: ") || l.starts_with("atomic-whole: ") || l.starts_with("bounds: ") || l.starts_with("limits: ") || l.starts_with("tables: ")) {
        kernel::kprintln!("{line}");
    }
    let checks = r.out.lines().filter(|l| l.starts_with("ok ") || l.starts_with("FAILED ")).count();
    ensure!(checks >= 150, "only {checks} checks:\n{}", tail(&r.out));
    ensure!(r.out.contains(&format!("{checks} passed, 0 failed")), "{}", tail(&r.out));
    ensure_eq!(r.outcome, GuestOutcome::Exited(0));
    ensure_nothing_left(r)
}

/// The CPU-time limit of the spinning and refaulting runs.
const LIMIT_MS: u64 = 2000;

fn spinning_workers_end_at_the_limit_of_all_threads_together() -> Result<(), String> {
    let r = run("spin", Some(LIMIT_MS));
    ensure!(r.out.contains("workers spinning"), "{}", tail(&r.out));
    ensure_eq!(r.outcome, GuestOutcome::Exited(HOST_E_TIMEOUT.0));
    let cpus = percpu::online_count() as u64;
    let workers = cpus.clamp(2, 8);
    // The workers run on min(workers, cpus) CPUs at once while main waits: the guest's CPU time
    // grows that many times faster than the wall clock.
    let parallel = workers.min(cpus);
    kernel::kprintln!("spin: {workers} workers on {cpus} CPUs ended after {} ms (limit {LIMIT_MS} ms of CPU time)", r.ms);
    ensure!(r.ms * 10 >= LIMIT_MS * 8 / parallel, "ended after {} ms: before its limit", r.ms);
    if parallel > 1 {
        ensure!(r.ms * 10 < LIMIT_MS * 8, "ended after {} ms on {cpus} CPUs: the workers' CPU time was not added up", r.ms);
    }
    ensure!(r.ms < LIMIT_MS * 10, "ended only after {} ms", r.ms);
    ensure_nothing_left(&r)
}

/// `mode` ends with HOST_E_TIMEOUT under a limit of `limit_ms`, within ten times that (and a
/// second), leaving nothing.
fn ends_at_the_limit(mode: &str, announces: &str, limit_ms: u64) -> Result<(), String> {
    let r = run(mode, Some(limit_ms));
    ensure!(r.out.contains(announces), "{}", tail(&r.out));
    kernel::kprintln!("{mode}: ended after {} ms (limit {limit_ms} ms of CPU time)", r.ms);
    ensure_eq!(r.outcome, GuestOutcome::Exited(HOST_E_TIMEOUT.0));
    ensure!(r.ms < limit_ms * 10 + 1000, "ended only after {} ms", r.ms);
    ensure_nothing_left(&r)
}

/// Twenty times, as the end of a guest whose threads are in host calls on every CPU once hung
/// the kernel about one time in fifteen: a CPU left the guest's space while a TLB round that
/// still counted it was posted, then looped with interrupts off without serving it
/// (`sched::idle_wait`).
fn threads_looping_on_host_calls_use_cpu_time() -> Result<(), String> {
    for _ in 0..20 {
        ends_at_the_limit("busycall", "workers looping on yield", 250)?;
    }
    Ok(())
}

/// The other ends of a guest whose threads are in host calls, twenty times each: `exit` from the
/// main thread and an unhandled fault.
fn exit_or_a_fault_while_threads_are_in_host_calls() -> Result<(), String> {
    for (mode, code) in [("busyexit", 0x42), ("busyfault", 0xC000_001Du32 as i32)] {
        for _ in 0..20 {
            let r = run(mode, None);
            ensure!(r.out.contains("workers looping on yield"), "{}", tail(&r.out));
            ensure_eq!(r.outcome, GuestOutcome::Exited(code));
            ensure_nothing_left(&r)?;
        }
    }
    Ok(())
}

fn making_threads_forever_uses_cpu_time() -> Result<(), String> { ends_at_the_limit("churn", "churning threads", 1000) }

fn every_thread_nesting_exceptions_at_once_ends_only_its_guest() -> Result<(), String> {
    let r = run("nest", None);
    ensure!(r.out.contains("every thread nesting exceptions"), "{}", tail(&r.out));
    // ud2 nested until the stack overflows, then no room for a frame: that fault's code.
    let codes = [0xC000_001Du32, 0xC000_00FD, 0xC000_0005];
    ensure!(codes.iter().any(|&c| r.outcome == GuestOutcome::Exited(c as i32)), "{:?}\n{}", r.outcome, tail(&r.out));
    ensure_nothing_left(&r)
}

fn sleeping_and_waiting_threads_do_not_burn_the_limit() -> Result<(), String> {
    let r = run("sleep", Some(1000));
    ensure!(r.out.contains("v2_outsider: slept "), "{}", tail(&r.out));
    ensure_eq!(r.outcome, GuestOutcome::Exited(0));
    ensure_nothing_left(&r)
}

fn a_worker_refaulting_forever_ends_only_its_guest() -> Result<(), String> {
    let r = run("refault", Some(LIMIT_MS));
    ensure!(r.out.contains("worker refaulting"), "{}", tail(&r.out));
    // "whenever the kernel decides to end it (at the latest at the CPU-time limit)"
    ensure!(
        matches!(r.outcome, GuestOutcome::Exited(c) if c != 0 && c != 0x5D1),
        "{:?}\n{}",
        r.outcome,
        tail(&r.out)
    );
    ensure!(r.ms < LIMIT_MS * 10, "ended only after {} ms", r.ms);
    ensure_nothing_left(&r)?;
    // and the next guest runs
    let next = run("sleep", None);
    ensure_eq!(next.outcome, GuestOutcome::Exited(0));
    ensure_nothing_left(&next)
}

kernel::kernel_test_image!(
    clean_fpu_at_guest_and_thread_start_after_a_dirty_guest,
    every_x87_and_sse_exception_kind_on_main_and_worker,
    host_calls_and_faults_with_ac_or_df_set,
    virtual_query_sees_only_whole_calls_across_table_boundaries,
    racing_virtual_protects_form_one_chain,
    a_write_after_a_reset_is_reported,
    racing_commits_and_decommits_keep_the_charge_exact,
    racing_reserves_and_releases_at_one_address_one_winner,
    a_protect_over_a_page_being_decommitted_is_all_or_nothing,
    reserve_commit_and_release_are_each_one_step,
    threads_up_to_the_bound_each_waiting_on_its_own_address,
    handlers_acquired_ranges_and_reservations_up_to_their_bounds,
    page_tables_for_sparse_commits_run_out_as_an_error,
    the_guest_passes_and_leaves_nothing,
    spinning_workers_end_at_the_limit_of_all_threads_together,
    threads_looping_on_host_calls_use_cpu_time,
    exit_or_a_fault_while_threads_are_in_host_calls,
    making_threads_forever_uses_cpu_time,
    every_thread_nesting_exceptions_at_once_ends_only_its_guest,
    sleeping_and_waiting_threads_do_not_burn_the_limit,
    a_worker_refaulting_forever_ends_only_its_guest,
);
