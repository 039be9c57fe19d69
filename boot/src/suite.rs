//! Running a list of QEMU test images as one suite.
//!
//! Most images are expected to pass. The harness proves that it catches failures with self-test
//! images (`tests/harness_selftest_*.rs`) that are *meant* to fail in one particular way; for those
//! the suite checks that the failure was reported exactly as intended, and counts the image as one
//! passed case if so. An image is named by its file name without cargo's `-<hash>` suffix.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::image::{self, Firmware};
use crate::qemu::{self, Outcome, QemuOptions};
use crate::report::{self, parse};

/// What an image is expected to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expectation {
    /// Every case passes and the image exits with success.
    Pass,
    /// The image exits with the failure code, its summary reads `passed, failed`, and its output
    /// contains every one of `must_contain`.
    Fail { summary: (usize, usize), must_contain: &'static [&'static str] },
    /// The image never finishes and is killed at `timeout`.
    Hang { timeout: Duration },
}

/// The expectation for an image by name.
pub fn expectation_for(name: &str) -> Expectation {
    match name {
        "harness_selftest_fail" => Expectation::Fail {
            summary: (1, 1),
            must_contain: &["test passes ... ok", "test fails_by_result ... FAILED", "    expected 2, got 3"],
        },
        "harness_selftest_panic" => Expectation::Fail {
            summary: (1, 2),
            must_contain: &[
                "test panics ... FAILED",
                "    panicked at tests/harness_selftest_panic.rs:",
                "deliberate panic",
                "test never_runs ... FAILED (not run: the image stopped at panics)",
            ],
        },
        "harness_selftest_fault" => Expectation::Fail {
            summary: (0, 1),
            must_contain: &["test unexpected_page_fault ... FAILED", "EXCEPTION: PAGE FAULT (vector 14)", "cr2=0xdead0000"],
        },
        "harness_selftest_stack_overflow" => Expectation::Fail {
            summary: (0, 1),
            must_contain: &["test overflows_the_kernel_stack ... FAILED", "EXCEPTION: DOUBLE FAULT (vector 8)"],
        },
        "harness_selftest_hang" => Expectation::Hang { timeout: Duration::from_secs(10) },
        _ => Expectation::Pass,
    }
}

/// The CPU counts an image runs with: the `smp` image (it checks that every CPU comes online),
/// the `threads_kernel`, `threads` and `v2_outsider` images (guest threads on every CPU, TLB
/// shootdown) and the `runtime` image (the parallel gc-runtime) at 1, 2 and 4 CPUs, the `shootdown` image at 2 and
/// 4, every other image once with `default`.
pub fn cpu_counts_for(name: &str, default: u32) -> Vec<u32> {
    match name {
        "smp" | "threads_kernel" | "threads" | "runtime" | "v2_outsider" => vec![1, 2, 4],
        "shootdown" => vec![2, 4],
        _ => vec![default],
    }
}

/// The image's name: its file name without cargo's `-<16 hex digits>` suffix.
pub fn image_name(path: &Path) -> String {
    let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    match file.rsplit_once('-') {
        Some((stem, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => stem.to_string(),
        _ => file,
    }
}

/// Judges one finished image against its expectation: (passed, failed, problems).
pub fn judge(expectation: &Expectation, outcome: Outcome, output: &str) -> report::Verdict {
    let report = parse(output);
    match expectation {
        Expectation::Pass => report.verdict(outcome),
        Expectation::Fail { summary, must_contain } => {
            let mut problems = Vec::new();
            if outcome != Outcome::Failure {
                problems.push(format!("expected a reported failure, got {}", outcome.describe()));
            }
            if report.summary != Some(*summary) {
                problems.push(format!("expected summary {} passed, {} failed, got {:?}", summary.0, summary.1, report.summary));
            }
            for needle in *must_contain {
                if !output.contains(needle) {
                    problems.push(format!("output lacks {needle:?}"));
                }
            }
            self_test_verdict(problems)
        }
        Expectation::Hang { .. } => {
            let problems =
                if outcome == Outcome::Timeout { Vec::new() } else { vec![format!("expected a timeout, got {}", outcome.describe())] };
            self_test_verdict(problems)
        }
    }
}

fn self_test_verdict(problems: Vec<String>) -> report::Verdict {
    let ok = problems.is_empty();
    report::Verdict { passed: ok as usize, failed: (!ok) as usize, problems }
}

/// Prints what the test harness printed (from `running N tests` on), or, for an image that failed
/// before its harness started, everything.
fn print_harness_output(output: &str, failed: bool) {
    match output.find("running ") {
        Some(start) => print!("{}", &output[start..]),
        None if failed => print!("{output}"),
        None => {}
    }
}

/// Totals of a suite run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SuiteTotals {
    /// Cases passed (a self-test image whose failure was as expected counts as one).
    pub passed: usize,
    /// Cases failed (an image that died without naming a case counts as one).
    pub failed: usize,
}

/// Runs every image under `opts` (its timeout is the default for images that expect to pass) and
/// prints a line per image and the suite's summary.
pub fn run(images: &[PathBuf], opts: &QemuOptions) -> SuiteTotals {
    let mut totals = SuiteTotals::default();
    let mut failures = Vec::new();
    let runs = images.iter().flat_map(|path| cpu_counts_for(&image_name(path), opts.cpus).into_iter().map(move |cpus| (path, cpus)));
    for (path, cpus) in runs {
        let name = image_name(path);
        let expectation = expectation_for(&name);
        let mut run_opts = QemuOptions { cpus, ..opts.clone() };
        if let Expectation::Hang { timeout } = expectation {
            run_opts.timeout = Some(timeout);
        }
        // The threads image runs every thread guest and, at 4 CPUs, the conformance and fuzz
        // guests again: 4 TCG vCPUs on a small host need more than the default. So does the
        // v2_outsider image (tables filled to their bounds, timed races, CPU-limit runs).
        if name == "threads" || name == "v2_outsider" {
            run_opts.timeout = run_opts.timeout.map(|t| t.max(Duration::from_secs(600)));
        }
        // The wasm image grows a linear memory to hundreds of MiB (tests/wasm.rs).
        if name == "wasm" && run_opts.memory == "256M" {
            run_opts.memory = "1G".into();
        }
        let name = if cpus == opts.cpus { name } else { format!("{name} ({cpus} CPUs)") };
        println!("\n=== {name} ({}{})", opts.firmware.name(), if expectation == Expectation::Pass { "" } else { ", expected to fail: harness self-test" });
        let verdict = match image::build(path, opts.firmware, None).and_then(|img| qemu::run(&img, &run_opts)) {
            Ok(result) => {
                let v = judge(&expectation, result.outcome, &result.output);
                if !opts.echo {
                    print_harness_output(&result.output, v.failed > 0 && expectation == Expectation::Pass);
                }
                println!("=== {name}: {} ({:.1} s)", result.outcome.describe(), result.elapsed.as_secs_f64());
                v
            }
            Err(e) => report::Verdict { passed: 0, failed: 1, problems: vec![e] },
        };
        if expectation != Expectation::Pass && verdict.failed == 0 {
            println!("test {name} (harness self-test: failure reported as expected) ... ok");
        }
        for problem in &verdict.problems {
            if expectation == Expectation::Pass || verdict.failed > 0 {
                println!("=== {name}: {problem}");
                failures.push(format!("{name}: {problem}"));
            }
        }
        totals.passed += verdict.passed;
        totals.failed += verdict.failed;
    }
    if !failures.is_empty() {
        println!("\nfailures ({}):", opts.firmware.name());
        for f in &failures {
            println!("    {f}");
        }
    }
    println!("qemu tests ({}): {} passed, {} failed", opts.firmware.name(), totals.passed, totals.failed);
    totals
}

/// The firmware list for `--firmware`: `bios`, `uefi` or `both`.
pub fn parse_firmwares(s: &str) -> Option<Vec<Firmware>> {
    match s {
        "bios" => Some(vec![Firmware::Bios]),
        "uefi" => Some(vec![Firmware::Uefi]),
        "both" => Some(vec![Firmware::Bios, Firmware::Uefi]),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_smp_and_threads_images_run_at_1_2_and_4_cpus_others_once() {
        assert_eq!(cpu_counts_for("smp", 2), vec![1, 2, 4]);
        assert_eq!(cpu_counts_for("threads", 2), vec![1, 2, 4]);
        assert_eq!(cpu_counts_for("v2_outsider", 2), vec![1, 2, 4]);
        assert_eq!(cpu_counts_for("threads_kernel", 2), vec![1, 2, 4]);
        assert_eq!(cpu_counts_for("shootdown", 2), vec![2, 4]);
        assert_eq!(cpu_counts_for("runtime", 2), vec![1, 2, 4]);
        assert_eq!(cpu_counts_for("basic", 2), vec![2]);
        assert_eq!(cpu_counts_for("basic", 3), vec![3]);
    }

    #[test]
    fn image_names_drop_the_cargo_hash() {
        assert_eq!(image_name(Path::new("/t/deps/basic-0123456789abcdef")), "basic");
        assert_eq!(image_name(Path::new("/t/deps/harness_selftest_hang-fedcba9876543210")), "harness_selftest_hang");
        assert_eq!(image_name(Path::new("/t/kernel")), "kernel");
        assert_eq!(image_name(Path::new("/t/my-kernel")), "my-kernel");
    }

    #[test]
    fn an_expected_failure_that_passes_is_a_failure() {
        let e = expectation_for("harness_selftest_fail");
        let v = judge(&e, Outcome::Success, "running 2 tests\ntest passes ... ok\ntest fails_by_result ... ok\n2 passed, 0 failed\n");
        assert_eq!((v.passed, v.failed), (0, 1));
    }

    #[test]
    fn an_expected_failure_as_intended_counts_as_passed() {
        let e = expectation_for("harness_selftest_fail");
        let out = "running 2 tests\ntest passes ... ok\ntest fails_by_result ... FAILED\n    expected 2, got 3\n1 passed, 1 failed\n";
        let v = judge(&e, Outcome::Failure, out);
        assert_eq!((v.passed, v.failed), (1, 0), "{:?}", v.problems);
    }

    #[test]
    fn a_hang_must_time_out() {
        let e = expectation_for("harness_selftest_hang");
        assert_eq!(judge(&e, Outcome::Timeout, "").failed, 0);
        assert_eq!(judge(&e, Outcome::Success, "").failed, 1);
        assert_eq!(judge(&e, Outcome::Crash(Some(0)), "").failed, 1);
    }

    #[test]
    fn a_crash_is_not_the_expected_panic_report() {
        let e = expectation_for("harness_selftest_panic");
        assert_eq!(judge(&e, Outcome::Crash(Some(0)), "").failed, 1);
    }
}
