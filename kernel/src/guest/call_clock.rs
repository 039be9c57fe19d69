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
//! function here is empty. The clock and its counters are per CPU (a host call is served from
//! start to end on the CPU that took its `syscall` or fault, and no interrupt handler laps), so
//! calls on several CPUs at once are each timed on their own; [`snapshot`] adds the CPUs up.

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
    /// An exception frame: the exception record, `GUEST_CONTEXT` and register image written to
    /// the guest's stack, or read back by `continue`.
    Frame = 6,
    /// Saving, sanitising and loading the x87/SSE/AVX registers (`xsave`/`xrstor`).
    Fpu = 7,
    /// From the last stage back to `enter_user` (callback frames, the run loop).
    Return = 8,
}

/// Number of [`Stage`]s.
pub const STAGES: usize = 9;
/// Stage names, in [`Stage`] order.
pub const STAGE_NAMES: [&str; STAGES] = ["dispatch", "check", "lock", "manager", "copy", "band", "frame", "fpu", "return"];
/// Call kinds: the 13 `IHostMemoryManager` vtable slots, a page fault or other CPU exception of
/// the guest, the exception dispatcher's `continue`, then every other system call.
pub const KINDS: usize = 16;
/// The kind of a CPU exception (a page fault resolved or raised, any other vector raised).
pub const EXCEPTION: usize = 13;
/// The kind of the dispatcher's `continue` (NtContinue).
pub const CONTINUE: usize = 14;
/// The kind of a system call that is none of the above.
pub const OTHER: usize = 15;
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
    "exception",
    "continue",
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
    use crate::arch::percpu::{MAX_CPUS, this_cpu};

    static ARMED: AtomicBool = AtomicBool::new(false);

    /// One CPU's clock. Only its own CPU writes it (a load and a store per counter, no locked
    /// instruction); [`snapshot`] reads every CPU's.
    #[repr(align(64))]
    struct CpuClock {
        /// TSC at the last lap; 0: not in a host call.
        last: AtomicU64,
        kind: AtomicUsize,
        cycles: [[AtomicU64; STAGES]; KINDS],
        calls: [AtomicU64; KINDS],
        laps: [[AtomicU64; STAGES]; KINDS],
    }

    #[allow(clippy::declare_interior_mutable_const)]
    const IDLE: CpuClock = CpuClock {
        last: AtomicU64::new(0),
        kind: AtomicUsize::new(OTHER),
        cycles: [const { [const { AtomicU64::new(0) }; STAGES] }; KINDS],
        calls: [const { AtomicU64::new(0) }; KINDS],
        laps: [const { [const { AtomicU64::new(0) }; STAGES] }; KINDS],
    };

    static CPUS: [CpuClock; MAX_CPUS] = [IDLE; MAX_CPUS];

    fn clock() -> &'static CpuClock {
        &CPUS[this_cpu()]
    }

    /// Adds `n` to a counter only this CPU writes.
    fn add(counter: &AtomicU64, n: u64) {
        counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed);
    }

    pub fn arm(on: bool) {
        for c in &CPUS {
            c.last.store(0, Relaxed);
        }
        ARMED.store(on, Relaxed);
    }

    #[inline]
    pub fn enter() {
        if ARMED.load(Relaxed) {
            let c = clock();
            c.kind.store(OTHER, Relaxed);
            c.last.store(crate::arch::time::rdtsc(), Relaxed);
        }
    }

    #[inline]
    pub fn call(kind: usize) {
        if ARMED.load(Relaxed) {
            let c = clock();
            c.kind.store(kind.min(OTHER), Relaxed);
            lap_on(c, Stage::Dispatch);
        }
    }

    #[inline]
    pub fn lap(stage: Stage) {
        if ARMED.load(Relaxed) {
            lap_on(clock(), stage);
        }
    }

    fn lap_on(c: &CpuClock, stage: Stage) {
        let last = c.last.load(Relaxed);
        if last == 0 {
            return;
        }
        let now = crate::arch::time::rdtsc();
        let kind = c.kind.load(Relaxed);
        add(&c.cycles[kind][stage as usize], now.wrapping_sub(last));
        add(&c.laps[kind][stage as usize], 1);
        c.last.store(now, Relaxed);
    }

    #[inline]
    pub fn leave() {
        if !ARMED.load(Relaxed) {
            return;
        }
        let c = clock();
        if c.last.load(Relaxed) == 0 {
            return;
        }
        lap_on(c, Stage::Return);
        add(&c.calls[c.kind.load(Relaxed)], 1);
        c.last.store(0, Relaxed);
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

    /// Every CPU's counters added up.
    pub fn snapshot() -> Snapshot {
        let sum = |f: &dyn Fn(&CpuClock) -> u64| CPUS.iter().map(f).fold(0u64, u64::wrapping_add);
        Snapshot {
            cycles: core::array::from_fn(|k| core::array::from_fn(|s| sum(&|c| c.cycles[k][s].load(Relaxed)))),
            calls: core::array::from_fn(|k| sum(&|c| c.calls[k].load(Relaxed))),
            laps: core::array::from_fn(|k| core::array::from_fn(|s| sum(&|c| c.laps[k][s].load(Relaxed)))),
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
