//! Host side of the project: disk images, QEMU, and the test-suite runner.
//!
//! - [`image`] turns a kernel ELF (the kernel or a test image) into a BIOS or UEFI disk image with
//!   the `bootloader` crate, optionally with a ramdisk.
//! - [`guests`] packs guest ELF files into the ramdisk archive the kernel reads.
//! - [`qemu`] boots an image (`-serial stdio -display none -no-reboot`, `isa-debug-exit`), streams
//!   the serial output, enforces a wall-clock timeout and maps QEMU's status to an [`qemu::Outcome`].
//! - [`report`] parses what a test image prints (`test NAME ... ok|FAILED`, `N passed, M failed`).
//! - [`suite`] runs a list of test images, including the harness's own self-test images whose
//!   failure is the expected result, and prints one summary.
//!
//! The `boot` binary wires these to a command line; it is also the cargo runner for the
//! `x86_64-unknown-none` target (see `.cargo/config.toml`).

pub mod guests;
pub mod image;
pub mod qemu;
pub mod report;
pub mod suite;
