//! A guest's CPU time and its limit (host-abi §10.1: `--config guest_cpu_limit_s=N`).
//!
//! A guest's CPU time is the time its threads spend on CPUs, user and kernel time together, as
//! Windows charges a process both: each CPU charges the time from when it starts running one of
//! the guest's threads to when it stops (preemption, a block, the thread's end), and at every
//! timer interrupt in between ([`CpuClock::charge`], called by the scheduler, `super::sched`).
//! Time with no thread running (all blocked) is not charged. The limit is checked at every timer
//! interrupt that reaches a thread (every 10 ms of ring-3 time on each CPU, see
//! `crate::arch::apic`); a guest cannot avoid those ticks, as it runs with interrupts on and `cli`
//! is privileged in ring 3. Past the limit the guest ends with [`HOST_E_TIMEOUT`].
//!
//! A guest whose threads all sleep uses no CPU time, so the CPU-time limit never ends one that
//! sleeps for ever (`sleep_ns(UINT64_MAX)` is a finite wait, not a deadlock). The wall-clock limit
//! (`--config guest_wall_limit_s=N`) does: it is checked at the same ticks and, while no thread
//! of the guest runs, at every tick that wakes the CPU that runs the guest (`super::sched`).

use super::hresult::{self, HOST_E_TIMEOUT};

/// Set by [`set_limit_for_test`]: the limit in nanoseconds instead of the configuration's.
#[cfg(feature = "test-hooks")]
static LIMIT_OVERRIDE: spin::Mutex<Option<Option<u64>>> = spin::Mutex::new(None);

/// Set by [`set_wall_limit_for_test`]: the wall-clock limit in nanoseconds instead of the
/// configuration's.
#[cfg(feature = "test-hooks")]
static WALL_LIMIT_OVERRIDE: spin::Mutex<Option<Option<u64>>> = spin::Mutex::new(None);

/// For QEMU test images (`test-hooks` feature), which cannot pass fw_cfg: guests started from now on have `limit_ms`
/// milliseconds of CPU time (`None`: no limit).
#[cfg(feature = "test-hooks")]
pub fn set_limit_for_test(limit_ms: Option<u64>) {
    *LIMIT_OVERRIDE.lock() = Some(limit_ms.map(|ms| ms.saturating_mul(1_000_000)));
}

/// For QEMU test images (`test-hooks` feature): guests started from now on may take `limit_ms`
/// milliseconds from their start (`None`: no limit).
#[cfg(feature = "test-hooks")]
pub fn set_wall_limit_for_test(limit_ms: Option<u64>) {
    *WALL_LIMIT_OVERRIDE.lock() = Some(limit_ms.map(|ms| ms.saturating_mul(1_000_000)));
}

/// A limit of the boot configuration in nanoseconds: `seconds`, 0 being none.
fn configured_ns(seconds: u64) -> Option<u64> {
    (seconds != 0).then(|| seconds.saturating_mul(1_000_000_000))
}

/// The wall-clock limit of a guest in nanoseconds, if there is one: a test's override, else the
/// boot configuration's `guest_wall_limit_s` (0 = none).
pub fn wall_limit_ns() -> Option<u64> {
    #[cfg(feature = "test-hooks")]
    if let Some(limit) = *WALL_LIMIT_OVERRIDE.lock() {
        return limit;
    }
    configured_ns(crate::memory::config().guest_wall_limit_s)
}

/// The CPU-time limit of a guest in nanoseconds, if there is one: a test's override, else the
/// boot configuration's `guest_cpu_limit_s` (0 = none).
pub fn limit_ns() -> Option<u64> {
    #[cfg(feature = "test-hooks")]
    if let Some(limit) = *LIMIT_OVERRIDE.lock() {
        return limit;
    }
    configured_ns(crate::memory::config().guest_cpu_limit_s)
}

/// `Err(HOST_E_TIMEOUT)`, with the reason printed, once `spent` ns (`how`: "used", "since its
/// start") are past the guest `name`'s limit `what` of `limit` ns (`None`: no limit).
fn past_limit(name: &str, what: &str, limit: Option<u64>, spent: u64, how: &str) -> Result<(), super::Ended> {
    let Some(limit) = limit else { return Ok(()) };
    if spent <= limit {
        return Ok(());
    }
    crate::kprintln!(
        "guest {name}: {what} of {} ms reached ({} ms {how}): ended with HOST_E_TIMEOUT",
        limit / 1_000_000,
        spent / 1_000_000
    );
    Err(hresult::to_exit_code(HOST_E_TIMEOUT))
}

/// One guest's CPU clock.
#[derive(Debug, Clone, Copy)]
pub struct CpuClock {
    used_ns: u64,
    limit_ns: Option<u64>,
    /// When the guest started, and how long it may take from then ([`wall_limit_ns`]).
    started_ns: u64,
    wall_limit_ns: Option<u64>,
}

impl CpuClock {
    /// A clock with nothing used, with the limits in force now, the wall clock started now.
    pub fn start() -> CpuClock {
        CpuClock { used_ns: 0, limit_ns: limit_ns(), started_ns: crate::arch::time::ticks_ns(), wall_limit_ns: wall_limit_ns() }
    }

    /// Adds `ns` of CPU time (one CPU's, since it last charged).
    pub fn charge(&mut self, ns: u64) {
        self.used_ns = self.used_ns.saturating_add(ns);
    }

    /// CPU time used so far, in nanoseconds.
    pub fn used_ns(&self) -> u64 {
        self.used_ns
    }

    /// `Err(HOST_E_TIMEOUT)` (with the reason printed) once the guest `name` is past its
    /// wall-clock limit.
    pub fn check_wall(&self, name: &str) -> Result<(), super::Ended> {
        if self.wall_limit_ns.is_none() {
            return Ok(()); // no clock read on every tick for a limit that is not there
        }
        let taken = crate::arch::time::ticks_ns().saturating_sub(self.started_ns);
        past_limit(name, "wall-clock limit", self.wall_limit_ns, taken, "since its start")
    }

    /// `Err(HOST_E_TIMEOUT)` (with the reason printed) once the guest `name` is past either limit.
    pub fn check(&self, name: &str) -> Result<(), super::Ended> {
        self.check_wall(name)?;
        past_limit(name, "CPU time limit", self.limit_ns, self.used_ns, "used")
    }
}
