//! Threads in guests (issue 13, host-abi §10.2/§10.3), run by the suite at 1, 2 and 4 CPUs:
//! - `threads.c`: HOST_SERVICES version 2 conformance, one case per area of check lines (with
//!   a notification callback that uses the heap whose commit changed the band, and one left
//!   by a handler's jump, after which notifications go on);
//! - `shootdown.c`: the TLB shootdown torture (zero stale or late accesses, thousands of rounds);
//! - `vm_concurrent.c`: four threads on the memory manager at once, exact commit at the end;
//! - `chaos_threads.c`: four threads (and threads they start) fuzzing one 4 MiB window at once,
//!   out-pointers aimed into it: results within the contract, queries consistent, no word read
//!   that is neither zero nor what every writer stores there, exact commit at the end; and the
//!   same ended by `exit` from one of them halfway;
//! - `lifecycle.c`: threads ending every way, and guests ending with threads running (one mode
//!   per run, patched into the file), each with the exit code the spec gives;
//! - `thread_edges.c`: an outsider's conformance guest for §8-§10 aimed at the edges (wait and
//!   close return paths, handle/id reuse, wait_on_address's order of checks, FS base and FPU
//!   state under preemption, stack rounding and overflow, nested exceptions and handlers that
//!   never return, callbacks, heaps and the manager from several threads), plus five modes
//!   that end the guest from a thread;
//! - at 4 CPUs, the single-threaded conformance and fuzz guests again.
//!
//! After every guest the kernel's accounting is as before: free and reserved frames, commit
//! charge, page-table pages, live address spaces.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::UnsafeCell;

use kernel::arch::percpu;
use kernel::console;
use kernel::guest::{GuestOutcome, run_guest};
use qemu_tests::{GuestAccounting, area_lines, ensure, ensure_eq, guest_accounting, guest_elf};

const THREADS: &[u8] = guest_elf!("threads");
const SHOOTDOWN: &[u8] = guest_elf!("shootdown");
const VM_CONCURRENT: &[u8] = guest_elf!("vm_concurrent");
const CHAOS_THREADS: &[u8] = guest_elf!("chaos_threads");
const LIFECYCLE: &[u8] = guest_elf!("lifecycle");
const CONFORMANCE: &[u8] = guest_elf!("conformance");
const FUZZ: &[u8] = guest_elf!("fuzz");
const THREAD_EDGES: &[u8] = guest_elf!("thread_edges");

struct Run {
    outcome: GuestOutcome,
    out: String,
    before: GuestAccounting,
    after: GuestAccounting,
}

/// Runs a guest with its output captured, noting the accounting before and after.
fn run(name: &str, file: &[u8]) -> Run {
    let before = guest_accounting();
    console::start_capture();
    let outcome = run_guest(name, file);
    let out = console::take_capture();
    Run { outcome, out, before, after: guest_accounting() }
}

/// A guest that must leave everything as it found it.
fn ensure_nothing_left(r: &Run) -> Result<(), String> {
    ensure_eq!(r.before.4, 0);
    ensure_eq!(r.after, r.before);
    Ok(())
}

struct Once(UnsafeCell<Option<Run>>);
// SAFETY: the test image runs its cases one after another on the boot CPU; nothing else touches it.
unsafe impl Sync for Once {}
static THREADS_RUN: Once = Once(UnsafeCell::new(None));
static EDGES_RUN: Once = Once(UnsafeCell::new(None));

/// Runs `file` the first time `once` is asked for, then returns the recorded run.
fn run_once(once: &'static Once, name: &str, file: &[u8]) -> &'static Run {
    // SAFETY: see `Once`; the reference handed out is only read.
    let slot = unsafe { &mut *once.0.get() };
    slot.get_or_insert_with(|| run(name, file))
}

fn threads_run() -> &'static Run {
    run_once(&THREADS_RUN, "threads", THREADS)
}

fn edges_run() -> &'static Run {
    run_once(&EDGES_RUN, "thread_edges", THREAD_EDGES)
}

fn area_passes(out: &str, area: &str) -> Result<(), String> {
    let lines = area_lines(out, area);
    ensure!(!lines.is_empty(), "area {area}: no check lines (did the guest reach it?)\n{}", tail(out));
    let failed: Vec<&str> = lines.iter().copied().filter(|l| !l.starts_with("ok ")).collect();
    ensure!(failed.is_empty(), "area {area}: {} of {} checks failed:\n{}", failed.len(), lines.len(), failed.join("\n"));
    Ok(())
}

/// The last lines of a guest's output, for messages.
fn tail(out: &str) -> String {
    let lines: Vec<&str> = out.lines().collect();
    lines[lines.len().saturating_sub(12)..].join("\n")
}

/// Every check line says ok, the summary counts them all, there are at least `min` of them, the
/// guest exited 0 and left nothing behind.
fn all_pass(r: &Run, min: usize) -> Result<(), String> {
    let checks: Vec<&str> = r.out.lines().filter(|l| l.starts_with("ok ") || l.starts_with("FAILED ")).collect();
    let failed: Vec<&str> = checks.iter().copied().filter(|l| l.starts_with("FAILED ")).take(20).collect();
    ensure!(failed.is_empty(), "failed checks (first 20):\n{}", failed.join("\n"));
    ensure!(checks.len() >= min, "only {} checks (expected at least {min}):\n{}", checks.len(), tail(&r.out));
    ensure!(r.out.contains(&format!("{} passed, 0 failed", checks.len())), "no matching summary line:\n{}", tail(&r.out));
    ensure_eq!(r.outcome, GuestOutcome::Exited(0));
    ensure_nothing_left(r)
}

fn services_and_cpu_count() -> Result<(), String> {
    let out = &threads_run().out;
    area_passes(out, "services")?;
    let reported = out.lines().find_map(|l| l.strip_prefix("cpu_count ")).and_then(|n| n.trim().parse::<usize>().ok());
    ensure_eq!(reported, Some(percpu::online_count()));
    Ok(())
}
fn clean_start_state_of_a_thread() -> Result<(), String> { area_passes(&threads_run().out, "start-state") }
fn create_thread_refusals() -> Result<(), String> { area_passes(&threads_run().out, "create") }
fn thread_stacks_layout_rounding_release() -> Result<(), String> { area_passes(&threads_run().out, "stack") }
fn thread_pointer_per_thread() -> Result<(), String> { area_passes(&threads_run().out, "thread-pointer") }
fn data_selectors_per_thread() -> Result<(), String> { area_passes(&threads_run().out, "selectors") }
fn a_thread_ending_in_its_notification_callback() -> Result<(), String> { area_passes(&threads_run().out, "notification-exit") }
fn a_notification_callback_using_the_heap_that_changed_the_band() -> Result<(), String> {
    area_passes(&threads_run().out, "notification-heap")
}
fn a_notification_callback_left_by_a_handlers_jump() -> Result<(), String> {
    area_passes(&threads_run().out, "notification-left")
}
fn exit_codes() -> Result<(), String> { area_passes(&threads_run().out, "exit-codes") }
fn wait_thread_and_close_thread() -> Result<(), String> { area_passes(&threads_run().out, "wait-close") }
fn thread_ids() -> Result<(), String> { area_passes(&threads_run().out, "ids") }
fn wait_on_address_and_wakes() -> Result<(), String> { area_passes(&threads_run().out, "wait-on-address") }
fn exceptions_on_the_faulting_thread() -> Result<(), String> { area_passes(&threads_run().out, "exceptions") }
fn stack_overflow_on_a_thread() -> Result<(), String> { area_passes(&threads_run().out, "stack-overflow") }
fn registers_kept_across_preemption_and_migration() -> Result<(), String> { area_passes(&threads_run().out, "preemption") }
fn threads_guest_passes_and_leaves_nothing() -> Result<(), String> {
    area_passes(&threads_run().out, "final")?;
    all_pass(threads_run(), 150)
}

fn shootdown_torture_no_stale_or_late_access() -> Result<(), String> {
    let before = kernel::memory::shootdown_stats();
    let r = run("shootdown", SHOOTDOWN);
    let after = kernel::memory::shootdown_stats();
    for line in r.out.lines().filter(|l| l.starts_with("shootdown ")) {
        kernel::kprintln!("{line}");
    }
    let (ipis, skips, flushes) = (after.ipis - before.ipis, after.lazy_skips - before.lazy_skips, after.lazy_flushes - before.lazy_flushes);
    kernel::kprintln!("{ipis} IPIs; {skips} times a CPU idling in the guest's space was left out of a round, {flushes} flushes on waking");
    // With another CPU, the blocking variants' workers sleep through calls: their CPUs idle in
    // the guest's space and rounds leave them out (lazy TLB), so both paths ran.
    if percpu::online_count() > 1 {
        ensure!(ipis > 0 && skips > 0 && flushes > 0, "{ipis} IPIs, {skips} lazy CPUs left out, {flushes} flushes on waking");
    }
    for area in [
        "protect-noaccess-read",
        "protect-readonly-write",
        "protect-noaccess-write-64-pages",
        "protect-noaccess-read-600-pages",
        "decommit-read",
        "decommit-write-16-pages",
        "release-read",
        "commit-readonly-write",
        "protect-noaccess-read-blocking",
        "decommit-write-blocking",
        "release-read-blocking",
        "write-watch-reset",
    ] {
        area_passes(&r.out, area)?;
    }
    all_pass(&r, 60)
}

fn four_threads_on_the_memory_manager_exact_commit() -> Result<(), String> {
    let r = run("vm_concurrent", VM_CONCURRENT);
    if let Some(line) = r.out.lines().find(|l| l.starts_with("vm_concurrent: ")) {
        kernel::kprintln!("{line}");
    }
    all_pass(&r, 15)
}

fn threads_fuzzing_one_window_at_once() -> Result<(), String> {
    let r = run("chaos_threads", CHAOS_THREADS);
    if let Some(line) = r.out.lines().find(|l| l.starts_with("chaos_threads: ")) {
        kernel::kprintln!("{line}");
    }
    all_pass(&r, 20)
}

/// The same guest with "quit": worker 0 calls `exit(42)` halfway, while the other threads are in
/// calls, faults and exception dispatch on every CPU; the guest ends with 42, nothing left.
fn threads_fuzzing_one_window_ended_by_exit_midway() -> Result<(), String> {
    kernel::guest::set_guest_args_for_test("quit");
    let r = run("chaos_threads-quit", CHAOS_THREADS);
    kernel::guest::set_guest_args_for_test("");
    ensure!(!r.out.contains("FAILED"), "{}", tail(&r.out));
    ensure_eq!(r.outcome, GuestOutcome::Exited(42));
    ensure_nothing_left(&r)
}

/// The guest `file` (`name`.elf) run with the five mode letters after `marker` set to `mode`.
fn run_mode(name: &str, file: &[u8], marker: &[u8], mode: &str) -> Result<Run, String> {
    let mut elf = file.to_vec();
    let at = elf.windows(marker.len()).position(|w| w == marker).ok_or_else(|| format!("mode marker not in {name}.elf"))?;
    elf[at + marker.len()..at + marker.len() + 5].copy_from_slice(mode.as_bytes());
    Ok(run(&format!("{name}-{mode}"), &elf))
}

/// lifecycle.c with its mode letters set to `mode`.
fn lifecycle_mode(mode: &str) -> Result<Run, String> {
    run_mode("lifecycle", LIFECYCLE, b"LIFECYCLE-MODE:", mode)
}

fn lifecycle_ends(mode: &str, code: u32) -> Result<(), String> {
    let r = lifecycle_mode(mode)?;
    ensure!(!r.out.contains("FAILED"), "{mode}: {}", tail(&r.out));
    ensure_eq!(r.outcome, GuestOutcome::Exited(code as i32));
    ensure_nothing_left(&r)
}

fn threads_end_every_way_and_are_waited_on() -> Result<(), String> {
    let r = lifecycle_mode("JOINS")?;
    all_pass(&r, 3)
}
fn guest_main_returning_ends_every_thread() -> Result<(), String> { lifecycle_ends("RETRN", 7) }
fn an_unhandled_fault_on_a_worker_ends_the_guest() -> Result<(), String> { lifecycle_ends("CRASH", 0xC000_0005) }
fn exit_from_a_worker_ends_the_guest() -> Result<(), String> { lifecycle_ends("EXITW", 33) }
fn exit_thread_on_main_leaves_the_last_threads_code() -> Result<(), String> { lifecycle_ends("MAINX", 23) }
fn unhandled_stack_overflow_on_a_worker() -> Result<(), String> { lifecycle_ends("OVFLW", 0xC000_00FD) }
fn main_stack_overflow_handled_then_exit_thread() -> Result<(), String> { lifecycle_ends("MOVFL", 0x44) }

fn edges_wait_and_close_every_return_path() -> Result<(), String> { area_passes(&edges_run().out, "wait-close") }
fn edges_overflowing_deadlines_timers_lost_wakes_closed_handles() -> Result<(), String> { area_passes(&edges_run().out, "more-waits") }
fn edges_thread_limit_and_exit_code_into_a_released_stack() -> Result<(), String> { area_passes(&edges_run().out, "limits") }
fn edges_handle_and_id_reuse() -> Result<(), String> { area_passes(&edges_run().out, "ids") }
fn edges_wait_on_address_order_of_checks_and_wakes() -> Result<(), String> { area_passes(&edges_run().out, "wait-on-address") }
fn edges_thread_pointer_refusals_and_handlers() -> Result<(), String> { area_passes(&edges_run().out, "thread-pointer") }
fn edges_fpu_clean_starts_and_kept_across_host_calls() -> Result<(), String> { area_passes(&edges_run().out, "fpu") }
fn edges_stack_rounding_and_release() -> Result<(), String> { area_passes(&edges_run().out, "stack") }
fn edges_stack_overflows_on_threads() -> Result<(), String> { area_passes(&edges_run().out, "overflow") }
fn edges_nested_exceptions_and_handlers_that_never_return() -> Result<(), String> { area_passes(&edges_run().out, "nested") }
fn edges_faults_while_others_allocate_and_change_handlers() -> Result<(), String> { area_passes(&edges_run().out, "exceptions") }
fn edges_one_guard_exception_per_page_raced_by_four_threads() -> Result<(), String> { area_passes(&edges_run().out, "guard-race") }
fn edges_notifications_from_four_threads() -> Result<(), String> { area_passes(&edges_run().out, "notify") }
fn edges_band_change_in_a_handler_that_ends_its_thread() -> Result<(), String> { area_passes(&edges_run().out, "notify-handler") }
fn edges_band_change_while_a_callback_runs_elsewhere() -> Result<(), String> { area_passes(&edges_run().out, "notify-overlap") }
fn edges_threadsafe_heap_from_four_threads() -> Result<(), String> { area_passes(&edges_run().out, "malloc") }
fn edges_every_manager_method_from_four_threads() -> Result<(), String> { area_passes(&edges_run().out, "vm") }
fn edges_guest_passes_and_leaves_nothing() -> Result<(), String> {
    area_passes(&edges_run().out, "final")?;
    all_pass(edges_run(), 250)
}

/// thread_edges.c in `mode`: it ends with one of `codes` and leaves nothing behind.
fn edges_mode_ends(mode: &str, codes: &[u32]) -> Result<(), String> {
    let r = run_mode("thread_edges", THREAD_EDGES, b"THREAD-EDGES-MODE:", mode)?;
    ensure!(
        codes.iter().any(|&c| r.outcome == GuestOutcome::Exited(c as i32)),
        "{mode}: {:?}, expected one of {codes:x?}\n{}",
        r.outcome,
        tail(&r.out)
    );
    ensure_nothing_left(&r)
}
fn edges_exit_thread_on_the_only_thread() -> Result<(), String> { edges_mode_ends("MAIN1", &[0x61]) }
fn edges_main_exit_thread_then_a_chain_of_waits() -> Result<(), String> { edges_mode_ends("MAINX", &[22]) }
fn edges_exit_from_a_worker_after_main_exit_thread() -> Result<(), String> { edges_mode_ends("MAINE", &[0x33]) }
fn edges_unhandled_divide_on_a_worker_ends_sleepers_and_waiters() -> Result<(), String> { edges_mode_ends("DIV0W", &[0xC000_0094]) }
fn edges_a_handler_faulting_forever_ends_the_guest() -> Result<(), String> {
    edges_mode_ends("NESTX", &[0xC000_0005, 0xC000_00FD])
}

/// The single-threaded guests again with every CPU online (they run at 1 and 2 CPUs in their own
/// images): these cases do their work in the 4-CPU run only.
fn at_four_cpus() -> bool {
    let n = percpu::online_count();
    if n != 4 {
        kernel::kprintln!("(runs at 4 CPUs; this run has {n})");
    }
    n == 4
}

fn conformance_guest_passes_at_4_cpus() -> Result<(), String> {
    if !at_four_cpus() {
        return Ok(());
    }
    all_pass(&run("conformance", CONFORMANCE), 150)
}

fn fuzz_guest_passes_at_4_cpus() -> Result<(), String> {
    if !at_four_cpus() {
        return Ok(());
    }
    let r = run("fuzz", FUZZ);
    ensure!(!r.out.contains("WRITE-LEAK"), "`write` printed part of a buffer that is not wholly readable");
    let failures: Vec<&str> = r.out.lines().filter(|l| l.contains("FAILED")).take(20).collect();
    ensure!(failures.is_empty(), "failed checks (first 20):\n{}", failures.join("\n"));
    ensure!(r.out.contains(" passed, 0 failed"), "{}", tail(&r.out));
    ensure_eq!(r.outcome, GuestOutcome::Exited(0));
    ensure_nothing_left(&r)
}

kernel::kernel_test_image!(
    services_and_cpu_count,
    clean_start_state_of_a_thread,
    create_thread_refusals,
    thread_stacks_layout_rounding_release,
    thread_pointer_per_thread,
    data_selectors_per_thread,
    a_thread_ending_in_its_notification_callback,
    a_notification_callback_using_the_heap_that_changed_the_band,
    a_notification_callback_left_by_a_handlers_jump,
    exit_codes,
    wait_thread_and_close_thread,
    thread_ids,
    wait_on_address_and_wakes,
    exceptions_on_the_faulting_thread,
    stack_overflow_on_a_thread,
    registers_kept_across_preemption_and_migration,
    threads_guest_passes_and_leaves_nothing,
    shootdown_torture_no_stale_or_late_access,
    four_threads_on_the_memory_manager_exact_commit,
    threads_fuzzing_one_window_at_once,
    threads_fuzzing_one_window_ended_by_exit_midway,
    threads_end_every_way_and_are_waited_on,
    guest_main_returning_ends_every_thread,
    an_unhandled_fault_on_a_worker_ends_the_guest,
    exit_from_a_worker_ends_the_guest,
    exit_thread_on_main_leaves_the_last_threads_code,
    unhandled_stack_overflow_on_a_worker,
    main_stack_overflow_handled_then_exit_thread,
    edges_wait_and_close_every_return_path,
    edges_overflowing_deadlines_timers_lost_wakes_closed_handles,
    edges_thread_limit_and_exit_code_into_a_released_stack,
    edges_handle_and_id_reuse,
    edges_wait_on_address_order_of_checks_and_wakes,
    edges_thread_pointer_refusals_and_handlers,
    edges_fpu_clean_starts_and_kept_across_host_calls,
    edges_stack_rounding_and_release,
    edges_stack_overflows_on_threads,
    edges_nested_exceptions_and_handlers_that_never_return,
    edges_faults_while_others_allocate_and_change_handlers,
    edges_one_guard_exception_per_page_raced_by_four_threads,
    edges_notifications_from_four_threads,
    edges_band_change_in_a_handler_that_ends_its_thread,
    edges_band_change_while_a_callback_runs_elsewhere,
    edges_threadsafe_heap_from_four_threads,
    edges_every_manager_method_from_four_threads,
    edges_guest_passes_and_leaves_nothing,
    edges_exit_thread_on_the_only_thread,
    edges_main_exit_thread_then_a_chain_of_waits,
    edges_exit_from_a_worker_after_main_exit_thread,
    edges_unhandled_divide_on_a_worker_ends_sleepers_and_waiters,
    edges_a_handler_faulting_forever_ends_the_guest,
    conformance_guest_passes_at_4_cpus,
    fuzz_guest_passes_at_4_cpus,
);
