//! The bundled garbage-collected runtime (tests/guests/gc-runtime): its workloads at small sizes
//! with checked results, the executable-heap stubs, a stack overflow it survives, and a run under
//! memory pressure that finishes because it collects when the host's notifications say memory is
//! low, and out of memory as a managed error; then the same with several mutator threads
//! (stop-the-world collections, parallel marking, a heap shared across threads). The suite runs
//! this image at 1, 2 and 4 CPUs. Every frame comes back after each run.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::String;

use kernel::console;
use kernel::guest::{self, GuestOutcome, run_guest};
use kernel::memory;
use qemu_tests::{ensure, ensure_eq};

fn frames() -> (u64, u64, u64, u64) {
    memory::with_mm(|mm| (mm.frames.free_frames(), mm.frames.reserved_frames(), mm.charge.committed_pages(), mm.page_table_pages()))
}

/// Runs the bundled runtime with `args`, output captured; checks that every frame came back.
fn run(args: &str) -> Result<(GuestOutcome, String), String> {
    let runtime = kernel::bundled_guests().into_iter().find(|g| g.name == "gc-runtime").ok_or("gc-runtime is not bundled")?;
    let before = frames();
    guest::set_guest_args_for_test(args);
    console::start_capture();
    let outcome = run_guest(&runtime.name, &runtime.data);
    let out = console::take_capture();
    guest::set_guest_args_for_test("");
    ensure_eq!(frames(), before);
    Ok((outcome, out))
}

/// The value of `key=` on the runtime's `gc-summary:` line.
fn summary(out: &str, key: &str) -> Result<u64, String> {
    let line = out.lines().find(|l| l.starts_with("gc-summary:")).ok_or("no gc-summary line")?;
    let pat = format!(" {key}=");
    let at = line.find(&pat).ok_or(format!("no {key} in {line}"))? + pat.len();
    let digits: String = line[at..].chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().map_err(|_| format!("bad {key} in {line}"))
}

/// Every one of `lines` occurs in `out`.
fn has_lines(out: &str, lines: &[&str]) -> Result<(), String> {
    for line in lines {
        ensure!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    Ok(())
}

fn passed(out: &str) -> Result<(), String> {
    ensure!(!out.contains("FAILED"), "the runtime reported a failed check:\n{out}");
    ensure!(out.contains(" passed, 0 failed"), "no summary line:\n{out}");
    Ok(())
}

fn workloads_at_small_sizes_give_the_right_results() -> Result<(), String> {
    let (outcome, out) = run("workload=all depth=10 size=2 iters=2000")?;
    passed(&out)?;
    ensure_eq!(outcome, GuestOutcome::Exited(0));
    // Binary trees: the closed forms, 2^(d+1) - 1 nodes per tree.
    has_lines(&out, &[
        "stretch tree of depth 11\t check: 4095",
        "1024\t trees of depth 4\t check: 31744",
        "64\t trees of depth 8\t check: 32704",
        "16\t trees of depth 10\t check: 32752",
        "long lived tree of depth 10\t check: 2047",
        "ok long lived tree counted by the executable stub: 2047",
        "ok mixed: long-lived records intact: 0",
        "ok mixed: record checksum (executable stub vs expected)",
        "ok heap verified after the final collection",
        "ok every old-generation segment decommitted: 0",
    ])?;
    ensure!(summary(&out, "minor")? > 0, "no minor collection");
    ensure!(summary(&out, "major")? > 0, "no major collection");
    ensure!(summary(&out, "decommitted")? > 0, "nothing decommitted");
    ensure!(summary(&out, "compactions")? > 0, "the old generation was never compacted");
    ensure!(summary(&out, "reset")? > 0, "nothing reset");
    ensure!(summary(&out, "dirty_pages")? > 0, "the write watch found no old-to-young stores");
    vmmap_shows_the_heap_and_the_stack(&out)
}

/// One row of the runtime's VMMap picture: `base size type committed [bar] protect what`.
struct Row<'a> {
    size: u64,
    committed: u64,
    cells: &'a str,
    protect: &'a str,
}

/// A size as the runtime prints it (`19.0 MiB`, `256 KiB`, `12 B`: rounded down) in bytes.
fn parse_size(number: &str, unit: &str) -> Option<u64> {
    let shift = match unit {
        "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        _ => return None,
    };
    let (whole, tenths) = match number.split_once('.') {
        Some((w, t)) => (w.parse::<u64>().ok()?, t.parse::<u64>().ok()?),
        None => (number.parse::<u64>().ok()?, 0),
    };
    Some((whole << shift) + ((tenths << shift) / 10))
}

/// The cells between `[` and `]`.
fn cells(line: &str) -> Option<&str> {
    let open = line.find('[')?;
    let close = open + line[open..].find(']')?;
    Some(&line[open + 1..close])
}

fn parse_row(line: &str) -> Option<Row<'_>> {
    let before: alloc::vec::Vec<&str> = line[..line.find('[')?].split_whitespace().collect();
    let [_base, size, size_unit, _type, committed, committed_unit] = before[..] else { return None };
    Some(Row {
        size: parse_size(size, size_unit)?,
        committed: parse_size(committed, committed_unit)?,
        cells: cells(line)?,
        protect: line[line.find(']')? + 1..].split_whitespace().next()?,
    })
}

/// The address-space picture: the 64 GiB reservation with its zoom row, and the guarded managed
/// stack, checked cell by cell against the committed sizes the rows print.
fn vmmap_shows_the_heap_and_the_stack(out: &str) -> Result<(), String> {
    const CELLS: u64 = 40;
    const TENTH_MIB: u64 = (1 << 20) / 10;
    let lines: alloc::vec::Vec<&str> = out.lines().collect();
    let at = lines.iter().position(|l| l.contains("64.0 GiB  private")).ok_or(format!("no 64 GiB row:\n{out}"))?;
    let heap = parse_row(lines[at]).ok_or(format!("unreadable heap row {:?}", lines[at]))?;
    ensure_eq!(heap.size, 64 << 30);
    ensure_eq!(heap.protect, "RW");
    // The zoom row follows: `[cells]  first Z of it`, Z the committed top rounded up to 1 MiB.
    let zoom_row = *lines.get(at + 1).ok_or("no row after the heap")?;
    let zoom_text = zoom_row.split("first ").nth(1).and_then(|t| t.strip_suffix(" of it")).ok_or(format!("no zoom row: {zoom_row:?}"))?;
    let (number, unit) = zoom_text.split_once(' ').ok_or(format!("bad zoom size {zoom_text:?}"))?;
    let zoom = parse_size(number, unit).ok_or(format!("bad zoom size {zoom_text:?}"))?;
    let zoom_cells = cells(zoom_row).ok_or(format!("no cells in {zoom_row:?}"))?;
    ensure_eq!(zoom_cells.len() as u64, CELLS);
    // Only a heap whose commit lies in the first 1/40 of it gets a zoom row; the window is at
    // least 40 pages.
    ensure!(zoom >= CELLS * 4096 && zoom <= heap.size / CELLS + (1 << 20), "zoom window {zoom:#x}");
    // The nursery is committed at the start of the heap, and so the first cell is.
    ensure!(zoom_cells.starts_with(['#', '+']), "the zoom row does not start committed: {zoom_row:?}");
    // Every committed byte of the heap lies in the window: full cells are a lower bound of the
    // committed size the heap row prints (rounded down to 0.1 MiB), full and partial cells an
    // upper bound.
    let full = zoom_cells.chars().filter(|&c| c == '#').count() as u64;
    let partial = zoom_cells.chars().filter(|&c| c == '+').count() as u64;
    ensure!(full * (zoom / CELLS) < heap.committed + TENTH_MIB, "{full} full cells of {} bytes, {} committed", zoom / CELLS, heap.committed);
    ensure!(heap.committed <= (full + partial) * zoom.div_ceil(CELLS), "{full}+{partial} cells of {} bytes, {} committed", zoom / CELLS, heap.committed);
    ensure!(zoom_cells.chars().all(|c| matches!(c, '#' | '+' | '.')), "a guard page in the heap: {zoom_row:?}");

    let line = lines.iter().find(|l| l.contains("managed thread stack")).ok_or(format!("no managed stack row:\n{out}"))?;
    let stack = parse_row(line).ok_or(format!("unreadable stack row {line:?}"))?;
    ensure_eq!(stack.protect, "RW+G");
    ensure!(stack.cells.contains('g'), "no guard-page cell in {line:?}");
    // A stack grows down: its top is committed, most of it below is only reserved.
    ensure!(stack.cells.ends_with(['#', 'g']), "the stack's top is not committed: {line:?}");
    ensure!(stack.cells.starts_with('.'), "the stack's bottom is committed: {line:?}");
    ensure!(stack.committed > 0 && stack.committed < stack.size, "stack committed {} of {}", stack.committed, stack.size);
    Ok(())
}

fn executable_heap_stubs_run() -> Result<(), String> {
    let (outcome, out) = run("workload=stubs")?;
    passed(&out)?;
    ensure_eq!(outcome, GuestOutcome::Exited(0));
    has_lines(&out, &[
        "ok executable stub: checksum of 1000 words",
        "ok executable stub: bump allocation",
        "ok executable stub: bump refuses what does not fit",
        "ok executable stub: recursive node count: 0x3",
    ])?;
    ensure!(out.lines().any(|l| l.contains("MALLOC_EXECUTABLE heap") && l.contains("RWX")), "no executable heap row:\n{out}");
    Ok(())
}

fn stack_overflow_is_a_managed_exception_the_runtime_survives() -> Result<(), String> {
    let (outcome, out) = run("workload=stackoverflow vmmap=0 threads=1")?;
    passed(&out)?;
    ensure_eq!(outcome, GuestOutcome::Exited(0));
    has_lines(&out, &[
        "ok stack overflow is a managed exception: round 1: Err(StackOverflow)",
        "ok stack overflow is a managed exception: round 2: Err(StackOverflow)",
        "ok guard page re-armed",
        "ok the runtime still works after surviving the overflows",
        "2 stack overflows survived",
    ])?;
    Ok(())
}

/// Pages of the commit limit for the pressure run: about two thirds of what the same workload commits
/// at its peak when nothing limits it (checked below).
const PRESSURE_LIMIT_PAGES: u64 = 22 << 8;

fn memory_pressure_is_survived_by_collecting_on_notifications() -> Result<(), String> {
    let args = "workload=mixed size=8 iters=8000 vmmap=0 threads=1";
    // Unconstrained, the heap grows well beyond the limit used next.
    let (outcome, out) = run(args)?;
    passed(&out)?;
    ensure_eq!(outcome, GuestOutcome::Exited(0));
    let wanted = summary(&out, "guest_commit_peak")?;
    ensure!(wanted > PRESSURE_LIMIT_PAGES * 4096 * 4 / 3, "unconstrained peak {wanted} is not well above the limit");
    // Limited: it finishes correctly, because it collects when told memory is low.
    ensure!(memory::set_commit_limit(PRESSURE_LIMIT_PAGES), "could not set the commit limit");
    let result = run(args);
    ensure!(memory::set_commit_limit(u64::MAX), "could not restore the commit limit");
    let (outcome, out) = result?;
    passed(&out)?;
    ensure_eq!(outcome, GuestOutcome::Exited(0));
    ensure!(out.contains("ok mixed: long-lived records intact: 0"), "records damaged:\n{out}");
    let by_notification = summary(&out, "by_notification")?;
    ensure!(by_notification > 0, "no collection caused by a notification:\n{out}");
    ensure!(out.contains(&format!("collections caused by notifications: {by_notification}")), "no notification count line:\n{out}");
    ensure!(summary(&out, "guest_commit_peak")? <= PRESSURE_LIMIT_PAGES * 4096, "committed beyond the limit");
    ensure_eq!(summary(&out, "managed_oom")?, 0);
    Ok(())
}

fn out_of_memory_is_a_managed_error_after_a_collection_and_a_retry() -> Result<(), String> {
    ensure!(memory::set_commit_limit(24 << 8), "could not set the commit limit");
    let result = run("workload=oom vmmap=0 threads=1");
    ensure!(memory::set_commit_limit(u64::MAX), "could not restore the commit limit");
    let (outcome, out) = result?;
    passed(&out)?;
    ensure_eq!(outcome, GuestOutcome::Exited(0));
    has_lines(&out, &[
        "ok out of memory is a managed error: Some(OutOfMemory)",
        "ok the live arrays survived the failed collection intact",
        "ok allocation works again once the program dropped its data",
    ])?;
    ensure_eq!(summary(&out, "managed_oom")?, 1);
    ensure!(summary(&out, "by_oom")? >= 1, "no collection before the failure");
    Ok(())
}

/// How many times `line` occurs in `out`.
fn count(out: &str, line: &str) -> usize {
    out.matches(line).count()
}

/// Four mutator threads whatever the CPU count: binary trees shared out, every thread's stack
/// overflows survived, the mixed workload's table shared by all (records read across threads),
/// parallel marking, and the picture shows every thread's stacks and allocation context.
fn four_mutator_threads_give_the_same_results() -> Result<(), String> {
    let (outcome, out) = run("workload=all depth=10 size=2 iters=2000 threads=4")?;
    passed(&out)?;
    ensure_eq!(outcome, GuestOutcome::Exited(0));
    has_lines(&out, &[
        "stretch tree of depth 11\t check: 4095",
        "1024\t trees of depth 4\t check: 31744",
        "16\t trees of depth 10\t check: 32752",
        "long lived tree of depth 10\t check: 2047",
        "ok long lived tree counted by the executable stub: 2047",
        "ok mixed: long-lived records intact: 0",
        "ok mixed: records read across threads intact",
        "ok heap verified after the final collection",
        "ok every old-generation segment decommitted: 0",
        "8 stack overflows survived",
        "4 mutator thread(s)",
    ])?;
    ensure_eq!(count(&out, "ok binary trees ran to the end: completed"), 4);
    ensure_eq!(count(&out, "ok stack overflow is a managed exception: round 2: Err(StackOverflow)"), 4);
    ensure_eq!(summary(&out, "threads")?, 4);
    ensure!(summary(&out, "minor")? > 0 && summary(&out, "major")? > 0, "collections missing");
    ensure!(summary(&out, "dirty_pages")? > 0, "the write watch found no old-to-young stores");
    ensure!(summary(&out, "stw_pauses")? > 0, "no stop-the-world pause");
    for id in 0..4 {
        ensure!(out.contains(&format!("managed thread stack (guard page), thread {id}")), "no managed stack row of thread {id}:\n{out}");
        ensure!(out.lines().any(|l| l.starts_with(&format!("    thread {id:<2} bump cursor")) || l.starts_with(&format!("    thread {id:<2} none"))), "no allocation context of thread {id}:\n{out}");
    }
    for id in 1..4 {
        ensure!(out.contains(&format!("mutator thread {id} stack (create_thread)")), "no create_thread stack row of thread {id}:\n{out}");
        ensure!(out.lines().any(|l| l.starts_with(&format!("    thread {id:<2}     ")) && l.contains(" objects, ")), "no statistics of thread {id}:\n{out}");
    }
    vmmap_shows_the_heap_and_the_stack(&out)
}

/// Several threads under the commit limit of the pressure test: they finish, because a band
/// change seen by any of them starts a collection; and each thread's out-of-memory phase ends
/// in a managed error it survives.
fn threads_under_memory_pressure_and_out_of_memory() -> Result<(), String> {
    ensure!(memory::set_commit_limit(PRESSURE_LIMIT_PAGES), "could not set the commit limit");
    let result = run("workload=mixed size=8 iters=8000 vmmap=0 threads=3");
    ensure!(memory::set_commit_limit(u64::MAX), "could not restore the commit limit");
    let (outcome, out) = result?;
    passed(&out)?;
    ensure_eq!(outcome, GuestOutcome::Exited(0));
    ensure!(out.contains("ok mixed: long-lived records intact: 0"), "records damaged:\n{out}");
    ensure!(summary(&out, "by_notification")? > 0, "no collection caused by a notification:\n{out}");
    ensure!(summary(&out, "guest_commit_peak")? <= PRESSURE_LIMIT_PAGES * 4096, "committed beyond the limit");
    ensure_eq!(summary(&out, "managed_oom")?, 0);

    ensure!(memory::set_commit_limit(24 << 8), "could not set the commit limit");
    let result = run("workload=oom vmmap=0 threads=2");
    ensure!(memory::set_commit_limit(u64::MAX), "could not restore the commit limit");
    let (outcome, out) = result?;
    passed(&out)?;
    ensure_eq!(outcome, GuestOutcome::Exited(0));
    ensure_eq!(count(&out, "ok out of memory is a managed error: Some(OutOfMemory)"), 2);
    ensure_eq!(count(&out, "ok the live arrays survived the failed collection intact"), 2);
    ensure_eq!(count(&out, "ok allocation works again once the program dropped its data"), 2);
    ensure!(summary(&out, "managed_oom")? >= 2, "fewer managed OutOfMemory errors than threads");
    Ok(())
}

kernel::kernel_test_image!(
    workloads_at_small_sizes_give_the_right_results,
    four_mutator_threads_give_the_same_results,
    threads_under_memory_pressure_and_out_of_memory,
    executable_heap_stubs_run,
    stack_overflow_is_a_managed_exception_the_runtime_survives,
    memory_pressure_is_survived_by_collecting_on_notifications,
    out_of_memory_is_a_managed_error_after_a_collection_and_a_retry
);
