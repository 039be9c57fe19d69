//! Harness self-test: one case passes, one fails by returning `Err`; the image must report
//! `1 passed, 1 failed` and exit with failure (checked by boot/src/suite.rs).
#![no_std]
#![no_main]

extern crate alloc;

use alloc::string::String;

fn passes() -> Result<(), String> {
    Ok(())
}

fn fails_by_result() -> Result<(), String> {
    let got = 1 + 2;
    if got != 2 { Err(alloc::format!("expected 2, got {got}")) } else { Ok(()) }
}

kernel::kernel_test_image!(passes, fails_by_result);
