//! Time: the TSC, calibrated once against the PIT, as monotonic nanoseconds since boot.
//!
//! Calibration ([`per_ms_against_pit`], also used for the local APIC timer) counts TSC ticks over
//! about 30 ms of PIT channel 2 (1.193182 MHz), measuring the elapsed PIT counts rather than
//! trusting the interval. Under TCG the TSC follows the host clock loosely, so figures are
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
    TSC_PER_MS.store(per_ms_against_pit(rdtsc).max(1), Ordering::SeqCst);
    TSC_AT_BOOT.store(rdtsc(), Ordering::SeqCst);
}

const PIT_HZ: u64 = 1_193_182;
/// The calibration interval: 30 ms of PIT counts (the 16-bit count from 0xFFFF lasts 55 ms).
const PIT_SPAN: u16 = (PIT_HZ * 30 / 1000) as u16;
/// Samples taken at each end of the interval (the tightest one is kept).
const SAMPLES: usize = 8;

/// Reads PIT channel 2's current count (latched, so the two bytes belong together).
fn pit_count(command: &mut Port<u8>, channel2: &mut Port<u8>) -> u16 {
    // SAFETY: the latch command for channel 2 and two reads of its data port; channel 2 is used
    // by nothing else.
    unsafe {
        command.write(0b1000_0000);
        let lo = channel2.read() as u16;
        let hi = channel2.read() as u16;
        hi << 8 | lo
    }
}

/// Measures how fast the counter `read` (increasing) runs, in units per millisecond, against PIT
/// channel 2 (1.193182 MHz, gated through port 0x61 with the speaker off).
///
/// The elapsed time is what the PIT counted between the two end samples, not an assumed
/// interval, so a pause of the CPU in the middle (a TCG vCPU thread descheduled on a busy host)
/// does not skew the result. Each end sample reads the PIT and `read` between two TSC reads and
/// the one with the smallest TSC span is kept, which bounds the error of a pause inside a sample.
/// A run in which the PIT reached zero (a pause over 25 ms) is repeated (at most four times).
pub fn per_ms_against_pit(read: impl Fn() -> u64) -> u64 {
    let mut gate = Port::<u8>::new(0x61);
    let mut command = Port::<u8>::new(0x43);
    let mut channel2 = Port::<u8>::new(0x42);
    let sample = |command: &mut Port<u8>, channel2: &mut Port<u8>| {
        let mut best = (u64::MAX, 0u16, 0u64);
        for _ in 0..SAMPLES {
            let t0 = rdtsc();
            let value = read();
            let pit = pit_count(command, channel2);
            let span = rdtsc().wrapping_sub(t0);
            if span < best.0 {
                best = (span, pit, value);
            }
        }
        (best.1, best.2)
    };
    let mut result = 0;
    for _attempt in 0..4 {
        // SAFETY: ports 0x42/0x43 (PIT channel 2) and 0x61 (its gate) are used by nothing else in
        // the kernel; the speaker output stays off.
        unsafe {
            let g = gate.read();
            gate.write(g & !0x03); // gate off, speaker off
            command.write(0b1011_0000); // channel 2, lobyte/hibyte, mode 0
            channel2.write(0xFF);
            channel2.write(0xFF);
            gate.write((g & !0x02) | 0x01); // gate on: counting starts
        }
        let (pit0, v0) = sample(&mut command, &mut channel2);
        let mut spins = 0u64;
        while pit0.wrapping_sub(pit_count(&mut command, &mut channel2)) < PIT_SPAN && spins < 10_000_000 {
            spins += 1;
        }
        let (pit1, v1) = sample(&mut command, &mut channel2);
        // SAFETY: reading the gate register has no side effect.
        let reached_zero = unsafe { gate.read() } & 0x20 != 0;
        let elapsed = pit0.wrapping_sub(pit1) as u64;
        if reached_zero || pit1 > pit0 || elapsed == 0 {
            continue;
        }
        result = (v1.wrapping_sub(v0) as u128 * PIT_HZ as u128 / (elapsed as u128 * 1000)) as u64;
        break;
    }
    result
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
