//! Leaving QEMU with a status the host runner understands.
//!
//! QEMU is started with `-device isa-debug-exit,iobase=0xf4,iosize=0x04`: writing `v` to port 0xf4
//! ends QEMU with process status `(v << 1) | 1`. The runner (`boot/`) maps 33 to success and 35 to
//! failure; anything else (0 after a triple fault with `-no-reboot`, a signal, a timeout) is a crash.

use x86_64::instructions::port::Port;

const ISA_DEBUG_EXIT_PORT: u16 = 0xf4;

/// The two outcomes a kernel image reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ExitCode {
    /// QEMU exits with status 33.
    Success = 0x10,
    /// QEMU exits with status 35.
    Failure = 0x11,
}

/// Ends the virtual machine with `code`. Never returns (if the exit device is missing, the CPU halts).
pub fn exit(code: ExitCode) -> ! {
    let mut port = Port::<u32>::new(ISA_DEBUG_EXIT_PORT);
    // SAFETY: port 0xf4 is QEMU's isa-debug-exit device, which has no side effect other than
    // ending the virtual machine; on a machine without it the write is ignored.
    unsafe { port.write(code as u32) };
    crate::arch::cpu::halt_forever()
}
