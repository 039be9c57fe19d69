//! Harness self-test: unbounded recursion runs into the guard page below the kernel stack. The page
//! fault cannot push its frame, so the CPU raises a double fault, which runs on its own IST stack
//! and must be reported (never a triple fault and reset) (boot/src/suite.rs).
#![no_std]
#![no_main]

#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let buffer = [depth; 64];
    // black_box keeps the frame and the recursion from being optimised away.
    core::hint::black_box(&buffer);
    recurse(depth + 1) + core::hint::black_box(buffer[3])
}

fn overflows_the_kernel_stack() {
    let n = recurse(0);
    panic!("recursion returned {n}");
}

kernel::kernel_test_image!(overflows_the_kernel_stack);
