//! The host-call clock (`test-hooks` only; the benchmark image reads it): where the cycles of a
//! host call go between the guest's `syscall` and the kernel's return to ring 3.
//!
//! A lap timer. [`enter`] starts it when control comes back from ring 3; each [`lap`] adds the
//! TSC cycles since the previous one to a stage of the current call kind ([`call`] names the
//! kind); [`leave`], just before ring 3 is entered again, closes the last lap as
//! [`Stage::Return`] and counts the call. What the kernel cannot see (the `syscall`/`sysretq`
//! transitions and the entry code's register saves, in `arch::user`) is the guest's own timing
//! minus the sum of the stages; the benchmark prints that difference as "outside".
//!
//! The clock only counts while armed ([`arm`]): the benchmark arms it for separate passes, so
//! its own cost (one `rdtsc` per lap, several dozen cycles under TCG) never enters the figures of
//! the ordinary workloads. Disarmed, a lap is a load and a branch. Without `test-hooks` every
//! function here is empty. Its counters are global: meaningful while one CPU makes host calls.

/// A stage of a host call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// From the kernel's return from `enter_user` to the manager method: the run loop, the
    /// system-call decode, the manager's `this`/poison checks.
    Dispatch = 0,
    /// Checking guest pointers (out-pointers before the operation).
    Check = 1,
    /// Taking the space's lock and finding the space (laps taken inside `Space::with`).
    Lock = 2,
    /// The memory manager's operation itself.
    Manager = 3,
    /// Copying results into guest memory (checked copies, NULL results on failure).
    Copy = 4,
    /// The memory band check and the notification machinery.
    Band = 5,
    /// From the band check back to `enter_user` (callback frames, the run loop).
    Return = 6,
}

/// Number of [`Stage`]s.
pub const STAGES: usize = 7;
/// Stage names, in [`Stage`] order.
pub const STAGE_NAMES: [&str; STAGES] = ["dispatch", "check", "lock", "manager", "copy", "band", "return"];
/// Call kinds: the 13 `IHostMemoryManager` vtable slots, then every other system call.
pub const KINDS: usize = 14;
/// The kind of a system call that is not a manager method.
pub const OTHER: usize = 13;
/// Kind names, in slot order.
pub const KIND_NAMES: [&str; KINDS] = [
    "QueryInterface",
    "AddRef",
    "Release",
    "CreateMalloc",
    "VirtualAlloc",
    "VirtualFree",
    "VirtualQuery",
    "VirtualProtect",
    "GetMemoryLoad",
    "RegisterMemoryNotificationCallback",
    "NeedsVirtualAddressSpace",
    "AcquiredVirtualAddressSpace",
    "ReleasedVirtualAddressSpace",
    "other",
];

/// Cycles per stage and calls, per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    /// TSC cycles per kind and stage (the clock's own `rdtsc`s included).
    pub cycles: [[u64; STAGES]; KINDS],
    /// Calls counted per kind.
    pub calls: [u64; KINDS],
    /// Laps taken (one `rdtsc` each), per kind and stage.
    pub laps: [[u64; STAGES]; KINDS],
}

#[cfg(feature = "test-hooks")]
mod imp {
    use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};

    use super::{KINDS, OTHER, STAGES, Snapshot, Stage};

    static ARMED: AtomicBool = AtomicBool::new(false);
    /// TSC at the last lap; 0: not in a host call.
    static LAST: AtomicU64 = AtomicU64::new(0);
    static KIND: AtomicUsize = AtomicUsize::new(OTHER);
    static CYCLES: [[AtomicU64; STAGES]; KINDS] = [const { [const { AtomicU64::new(0) }; STAGES] }; KINDS];
    static CALLS: [AtomicU64; KINDS] = [const { AtomicU64::new(0) }; KINDS];
    static LAPS: [[AtomicU64; STAGES]; KINDS] = [const { [const { AtomicU64::new(0) }; STAGES] }; KINDS];

    pub fn arm(on: bool) {
        LAST.store(0, Relaxed);
        ARMED.store(on, Relaxed);
    }

    #[inline]
    pub fn enter() {
        if ARMED.load(Relaxed) {
            KIND.store(OTHER, Relaxed);
            LAST.store(crate::arch::time::rdtsc(), Relaxed);
        }
    }

    #[inline]
    pub fn call(kind: usize) {
        if ARMED.load(Relaxed) {
            KIND.store(kind.min(OTHER), Relaxed);
            lap(Stage::Dispatch);
        }
    }

    #[inline]
    pub fn lap(stage: Stage) {
        if !ARMED.load(Relaxed) {
            return;
        }
        let last = LAST.load(Relaxed);
        if last == 0 {
            return;
        }
        let now = crate::arch::time::rdtsc();
        let kind = KIND.load(Relaxed);
        CYCLES[kind][stage as usize].fetch_add(now.wrapping_sub(last), Relaxed);
        LAPS[kind][stage as usize].fetch_add(1, Relaxed);
        LAST.store(now, Relaxed);
    }

    #[inline]
    pub fn leave() {
        if !ARMED.load(Relaxed) || LAST.load(Relaxed) == 0 {
            return;
        }
        lap(Stage::Return);
        CALLS[KIND.load(Relaxed)].fetch_add(1, Relaxed);
        LAST.store(0, Relaxed);
    }

    /// The cycles one lap adds to the stage it closes (its `rdtsc` and counter updates): the
    /// least mean of 20 batches of 50 laps in a row (counted on the `other` kind), so that a
    /// batch the machine's load disturbed does not count.
    pub fn lap_cost() -> u64 {
        const N: u64 = 50;
        arm(true);
        enter();
        let mut least = u64::MAX;
        for _ in 0..20 {
            let t0 = crate::arch::time::rdtsc();
            for _ in 0..N {
                lap(Stage::Dispatch);
            }
            least = least.min(crate::arch::time::rdtsc().wrapping_sub(t0) / N);
        }
        arm(false);
        least
    }

    pub fn snapshot() -> Snapshot {
        Snapshot {
            cycles: core::array::from_fn(|k| core::array::from_fn(|s| CYCLES[k][s].load(Relaxed))),
            calls: core::array::from_fn(|k| CALLS[k].load(Relaxed)),
            laps: core::array::from_fn(|k| core::array::from_fn(|s| LAPS[k][s].load(Relaxed))),
        }
    }
}

#[cfg(not(feature = "test-hooks"))]
mod imp {
    use super::Stage;

    #[inline(always)]
    pub fn enter() {}
    #[inline(always)]
    pub fn call(_kind: usize) {}
    #[inline(always)]
    pub fn lap(_stage: Stage) {}
    #[inline(always)]
    pub fn leave() {}
}

#[cfg(feature = "test-hooks")]
pub use imp::{arm, lap_cost, snapshot};
pub(super) use imp::{call, enter, lap, leave};
