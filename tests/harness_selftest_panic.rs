//! Harness self-test: the second case panics. The image must report that case FAILED with the
//! panic message and location, the third as not run, and exit with failure (boot/src/suite.rs).
#![no_std]
#![no_main]

fn passes() {}

fn panics() {
    panic!("deliberate panic");
}

fn never_runs() {}

kernel::kernel_test_image!(passes, panics, never_runs);
