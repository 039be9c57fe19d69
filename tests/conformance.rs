//! Conformance guest (tests/guests/c/conformance.c): checks the kernel against
//! shared/spec/host-abi.md and shared/spec/win32-semantics.md. The guest runs once, with its output
//! captured; each case below passes only if every check line of one spec area says `ok`, so a
//! failure is reported per area with the failing lines.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;
use core::cell::UnsafeCell;

use kernel::console;
use kernel::guest::{GuestOutcome, run_guest};
use kernel::memory;
use qemu_tests::{ensure, ensure_eq};

const CONFORMANCE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/conformance.elf"));

type Frames = (u64, u64, u64, u64);

struct Run {
    outcome: GuestOutcome,
    out: String,
    before: Frames,
    after: Frames,
}

struct Once(UnsafeCell<Option<Run>>);
// SAFETY: the test image runs its cases one after another on one CPU; nothing else touches it.
unsafe impl Sync for Once {}
static RUN: Once = Once(UnsafeCell::new(None));

fn frames() -> Frames {
    memory::with_mm(|mm| (mm.frames.free_frames(), mm.frames.reserved_frames(), mm.charge.committed_pages(), mm.page_table_pages()))
}

/// Runs the guest the first time it is asked for, then returns the recorded run.
fn run() -> &'static Run {
    // SAFETY: single-threaded test image (see `Once`); the reference handed out is only read.
    let slot = unsafe { &mut *RUN.0.get() };
    slot.get_or_insert_with(|| {
        let before = frames();
        console::start_capture();
        let outcome = run_guest("conformance", CONFORMANCE);
        let out = console::take_capture();
        Run { outcome, out, before, after: frames() }
    })
}

/// The guest with its mode marker switched from `ALL` to `DF_`: it then only raises a fault with
/// the direction flag set (kept apart: a kernel that mishandles it may crash, and must not take
/// the other results with it; this case runs last).
fn df_mode_copy() -> Result<Vec<u8>, String> {
    let marker = b"CONFORMANCE-MODE:ALL";
    let mut elf = CONFORMANCE.to_vec();
    let at = elf.windows(marker.len()).position(|w| w == marker).ok_or_else(|| String::from("mode marker not found in conformance.elf"))?;
    elf[at + 17..at + 20].copy_from_slice(b"DF_");
    Ok(elf)
}

/// The check lines (`ok …` / `FAILED …`) of one area (`== AREA` up to the next `==`).
fn area_lines(area: &str) -> Vec<&'static str> {
    let mut lines = Vec::new();
    let mut inside = false;
    for line in run().out.lines() {
        if let Some(name) = line.strip_prefix("== ") {
            inside = name.trim() == area;
        } else if inside && (line.starts_with("ok ") || line.starts_with("FAILED ")) {
            lines.push(line);
        }
    }
    lines
}

fn area_passes(area: &str) -> Result<(), String> {
    let lines = area_lines(area);
    ensure!(!lines.is_empty(), "area {area}: no check lines (did the guest reach it?)");
    let failed: Vec<&str> = lines.iter().copied().filter(|l| !l.starts_with("ok ")).collect();
    ensure!(failed.is_empty(), "area {area}: {} of {} checks failed:\n{}", failed.len(), lines.len(), failed.join("\n"));
    Ok(())
}

fn host_services_fields() -> Result<(), String> { area_passes("services") }
fn com_identity_and_reference_counts() -> Result<(), String> { area_passes("com") }
fn s2_protection_values() -> Result<(), String> { area_passes("protection") }
fn s3_1_virtual_alloc_validation_order() -> Result<(), String> { area_passes("alloc-validation") }
fn s3_2_reserve_rounding_and_conflicts() -> Result<(), String> { area_passes("reserve") }
fn s3_3_commit_path() -> Result<(), String> { area_passes("commit") }
fn s3_4_mem_reset() -> Result<(), String> { area_passes("reset") }
fn s3_5_placement_top_down_large_pages() -> Result<(), String> { area_passes("placement") }
fn h9_scale_100000_allocations() -> Result<(), String> { area_passes("scale") }
fn s4_virtual_free() -> Result<(), String> { area_passes("free") }
fn s5_virtual_protect() -> Result<(), String> { area_passes("protect") }
fn s6_virtual_query() -> Result<(), String> { area_passes("query") }
fn s7_write_watch() -> Result<(), String> { area_passes("write-watch") }
fn s8_guard_pages() -> Result<(), String> { area_passes("guard") }
fn h4_hresults_and_out_values() -> Result<(), String> { area_passes("hresults") }
fn h9_fine_points() -> Result<(), String> { area_passes("fine-points") }
fn h5_memory_load_and_critical_levels() -> Result<(), String> { area_passes("levels") }
fn h5_virtual_address_space_methods() -> Result<(), String> { area_passes("virtual-address-space") }
fn h6_host_malloc() -> Result<(), String> { area_passes("malloc") }
fn h5_memory_notifications() -> Result<(), String> { area_passes("notifications") }
fn guest_leaves_nothing_behind() -> Result<(), String> { area_passes("final") }

fn all_checks_pass_and_every_frame_comes_back() -> Result<(), String> {
    let r = run();
    let checks = r.out.lines().filter(|l| l.starts_with("ok ") || l.starts_with("FAILED ")).count();
    let summary = r.out.lines().rev().find(|l| l.ends_with(" failed")).unwrap_or("");
    let mut words = summary.split(' ');
    let passed: usize = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
    let failed: usize = words.nth(1).and_then(|w| w.parse().ok()).unwrap_or(usize::MAX);
    ensure_eq!(passed + failed, checks);
    ensure!(checks >= 150, "only {checks} checks");
    ensure_eq!(r.after, r.before);
    ensure_eq!(r.after.2, 0);
    ensure!(failed == 0, "summary line: {summary:?}");
    ensure_eq!(r.outcome, GuestOutcome::Exited(0));
    Ok(())
}

fn h9_fault_with_direction_flag_set_runs_last() -> Result<(), String> {
    let elf = df_mode_copy()?;
    let before = frames();
    console::start_capture();
    let outcome = run_guest("conformance-df", &elf);
    let out = console::take_capture();
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("ok ") || l.starts_with("FAILED ")).collect();
    ensure!(lines.len() == 5, "expected the 5 checks of the DF mode, got: {out}");
    let failed: Vec<&str> = lines.iter().copied().filter(|l| !l.starts_with("ok ")).collect();
    ensure!(failed.is_empty(), "{} of {} checks failed:\n{}", failed.len(), lines.len(), failed.join("\n"));
    ensure_eq!(outcome, GuestOutcome::Exited(0));
    ensure_eq!(frames(), before);
    Ok(())
}

kernel::kernel_test_image!(
    host_services_fields,
    com_identity_and_reference_counts,
    s2_protection_values,
    s3_1_virtual_alloc_validation_order,
    s3_2_reserve_rounding_and_conflicts,
    s3_3_commit_path,
    s3_4_mem_reset,
    s3_5_placement_top_down_large_pages,
    h9_scale_100000_allocations,
    s4_virtual_free,
    s5_virtual_protect,
    s6_virtual_query,
    s7_write_watch,
    s8_guard_pages,
    h4_hresults_and_out_values,
    h9_fine_points,
    h5_memory_load_and_critical_levels,
    h5_virtual_address_space_methods,
    h6_host_malloc,
    h5_memory_notifications,
    guest_leaves_nothing_behind,
    all_checks_pass_and_every_frame_comes_back,
    h9_fault_with_direction_flag_set_runs_last,
);
