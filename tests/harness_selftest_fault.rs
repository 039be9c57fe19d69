//! Harness self-test: an unexpected page fault (no probe armed) must be reported as the case's
//! failure with the exception report, not hang or triple-fault (boot/src/suite.rs).
#![no_std]
#![no_main]

fn unexpected_page_fault() {
    // SAFETY: deliberately reads an unmapped address; the fault handler reports it and stops the
    // machine, which is what this self-test checks.
    let value = unsafe { core::ptr::read_volatile(0xdead_0000 as *const u64) };
    panic!("read of an unmapped page returned {value:#x}");
}

kernel::kernel_test_image!(unexpected_page_fault);
