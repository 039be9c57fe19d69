//! Harness self-test: a case that never returns; the runner must kill the image at its timeout
//! and count it as failed (boot/src/suite.rs gives this image a 10 s timeout).
#![no_std]
#![no_main]

fn hangs() {
    loop {
        core::hint::spin_loop();
    }
}

kernel::kernel_test_image!(hangs);
