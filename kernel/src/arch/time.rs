//! Time: the TSC, calibrated once against the PIT, as monotonic nanoseconds since boot.
//!
//! Calibration counts TSC ticks over 10 ms of PIT channel 2 (1.193182 MHz), gated through port
//! 0x61 with the speaker off. Under TCG the TSC follows the host clock loosely, so figures are
//! emulation time, not hardware time; benchmarks say where they ran.

use core::sync::atomic::{AtomicU64, Ordering};

use x86_64::instructions::port::Port;

static TSC_PER_MS: AtomicU64 = AtomicU64::new(0);
static TSC_AT_BOOT: AtomicU64 = AtomicU64::new(0);

/// Reads the TSC.
pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no side effects and is allowed in ring 0.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Calibrates the TSC (call once at boot, interrupts off).
pub fn init() {
    const PIT_HZ: u64 = 1_193_182;
    const MS: u64 = 10;
    let count = (PIT_HZ * MS / 1000) as u16;
    // SAFETY: ports 0x42/0x43 (PIT channel 2) and 0x61 (its gate) are used by nothing
    // else in the kernel; the speaker output stays off.
    let ticks = unsafe {
        let mut gate = Port::<u8>::new(0x61);
        let mut command = Port::<u8>::new(0x43);
        let mut channel2 = Port::<u8>::new(0x42);
        let g = gate.read();
        gate.write((g & !0x02) | 0x01); // gate on, speaker off
        command.write(0b1011_0000); // channel 2, lobyte/hibyte, mode 0
        channel2.write(count as u8);
        channel2.write((count >> 8) as u8);
        // Restart the count by toggling the gate.
        let g = gate.read();
        gate.write(g & !0x01);
        gate.write(g | 0x01);
        let start = rdtsc();
        let mut spins = 0u64;
        while gate.read() & 0x20 == 0 && spins < 200_000_000 {
            spins += 1;
        }
        rdtsc() - start
    };
    TSC_PER_MS.store((ticks / MS).max(1), Ordering::SeqCst);
    TSC_AT_BOOT.store(rdtsc(), Ordering::SeqCst);
}

/// TSC ticks per millisecond (from the calibration).
pub fn tsc_per_ms() -> u64 {
    TSC_PER_MS.load(Ordering::SeqCst).max(1)
}

/// Monotonic nanoseconds since [`init`].
pub fn ticks_ns() -> u64 {
    let elapsed = rdtsc().saturating_sub(TSC_AT_BOOT.load(Ordering::SeqCst));
    ((elapsed as u128 * 1_000_000) / tsc_per_ms() as u128) as u64
}
