//! The in-kernel test harness behind the QEMU test images in `tests/`.
//!
//! A test image is a kernel binary made with [`kernel_test_image!`](crate::kernel_test_image): it boots,
//! runs [`init`](crate::init), then its cases in order, and prints what the host runner (`boot/`)
//! parses:
//!
//! ```text
//! running 3 tests
//! test heap_grows ... ok
//! test fails_softly ... FAILED
//!     expected 2, got 3
//! 1 passed, 1 failed
//! ```
//!
//! A case is a `fn()` (fails by panicking) or a `fn() -> Result<(), E: Display>` (fails by
//! returning `Err`, and the next case still runs). There is no unwinding in the kernel, so a panic
//! (or an unexpected CPU exception) ends the image: that case is reported `FAILED` with the panic
//! message and location, every case after it is reported `FAILED (not run)`, the summary follows and
//! QEMU exits with failure. The runner also kills an image that does not finish in time.

use core::fmt::Display;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use alloc::string::{String, ToString};
use spin::Once;

use crate::qemu::{ExitCode, exit};

/// One named test case.
pub struct TestCase {
    /// The name printed in `test NAME ... ok`.
    pub name: &'static str,
    /// Runs the case; `Err` carries the failure message.
    pub run: fn() -> Result<(), String>,
}

/// What a case function may return: `()` or `Result<(), E>` with a displayable error.
pub trait CaseOutcome {
    /// Converts into the harness's result.
    fn into_outcome(self) -> Result<(), String>;
}

impl CaseOutcome for () {
    fn into_outcome(self) -> Result<(), String> {
        Ok(())
    }
}

impl<E: Display> CaseOutcome for Result<(), E> {
    fn into_outcome(self) -> Result<(), String> {
        self.map_err(|e| e.to_string())
    }
}

static CASES: Once<&'static [TestCase]> = Once::new();
static RUNNING: AtomicBool = AtomicBool::new(false);
static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PASSED: AtomicUsize = AtomicUsize::new(0);
static FAILED: AtomicUsize = AtomicUsize::new(0);

/// Runs every case, prints the per-case lines and the summary, and exits QEMU: success if every
/// case passed, failure otherwise.
pub fn run(cases: &'static [TestCase]) -> ! {
    CASES.call_once(|| cases);
    crate::kprintln!("running {} tests", cases.len());
    RUNNING.store(true, Ordering::SeqCst);
    for (index, case) in cases.iter().enumerate() {
        CURRENT.store(index, Ordering::SeqCst);
        match (case.run)() {
            Ok(()) => {
                PASSED.fetch_add(1, Ordering::SeqCst);
                crate::kprintln!("test {} ... ok", case.name);
            }
            Err(message) => {
                FAILED.fetch_add(1, Ordering::SeqCst);
                crate::kprintln!("test {} ... FAILED", case.name);
                for line in message.lines() {
                    crate::kprintln!("    {line}");
                }
            }
        }
    }
    RUNNING.store(false, Ordering::SeqCst);
    let (passed, failed) = (PASSED.load(Ordering::SeqCst), FAILED.load(Ordering::SeqCst));
    crate::kprintln!("{passed} passed, {failed} failed");
    exit(if failed == 0 { ExitCode::Success } else { ExitCode::Failure })
}

/// The end of the road for a panic or an unexpected exception: reports it (as the failure of the
/// running case, if a test image is running), then exits QEMU with failure.
///
/// `report` prints the details; it must not allocate or take blocking locks.
pub fn fatal(report: &dyn Fn()) -> ! {
    // Only the first fatal event reports; a second one (a fault while reporting) just stops.
    static ONCE: AtomicBool = AtomicBool::new(false);
    if ONCE.swap(true, Ordering::SeqCst) {
        exit(ExitCode::Failure)
    }
    let running = RUNNING.swap(false, Ordering::SeqCst);
    let cases = CASES.get().copied().unwrap_or(&[]);
    let current = CURRENT.load(Ordering::SeqCst);
    if running && current < cases.len() {
        crate::emergency_println!("test {} ... FAILED", cases[current].name);
        report();
        for case in &cases[current + 1..] {
            crate::emergency_println!("test {} ... FAILED (not run: the image stopped at {})", case.name, cases[current].name);
        }
        let passed = PASSED.load(Ordering::SeqCst);
        let failed = FAILED.load(Ordering::SeqCst) + (cases.len() - current);
        crate::emergency_println!("{passed} passed, {failed} failed");
    } else {
        crate::emergency_println!("KERNEL FAILURE");
        report();
    }
    exit(ExitCode::Failure)
}

/// The kernel's panic handler (installed by the crate root).
pub fn on_panic(info: &core::panic::PanicInfo) -> ! {
    fatal(&|| match info.location() {
        Some(location) => crate::emergency_println!("    panicked at {location}: {}", info.message()),
        None => crate::emergency_println!("    panicked: {}", info.message()),
    })
}

/// Defines a kernel test image: its entry point boots, initialises the kernel and runs the cases.
///
/// ```ignore
/// kernel::kernel_test_image!(heap_allocates, page_fault_is_caught);
/// ```
#[macro_export]
macro_rules! kernel_test_image {
    ($($case:ident),* $(,)?) => {
        $crate::bootloader_api::entry_point!(__kernel_test_main, config = &$crate::BOOTLOADER_CONFIG);

        static __KERNEL_TEST_CASES: &[$crate::testing::TestCase] = &[
            $($crate::testing::TestCase {
                name: stringify!($case),
                run: || $crate::testing::CaseOutcome::into_outcome($case()),
            }),*
        ];

        fn __kernel_test_main(boot_info: &'static mut $crate::bootloader_api::BootInfo) -> ! {
            $crate::init(boot_info);
            $crate::testing::run(__KERNEL_TEST_CASES)
        }
    };
}
