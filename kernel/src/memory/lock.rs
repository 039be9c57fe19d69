//! [`SpinLock`] and [`RwSpinLock`]: the memory manager's locks (the frames', a CPU's frame
//! cache, the registry; a space's), whose waiters serve TLB flush requests. A [`SpinLock`] is
//! first come, first served; an [`RwSpinLock`] lets a running CPU in before earlier waiters, up to
//! a bound (its docs say why).
//!
//! Kernel code runs with interrupts off (IF = 0). A CPU holding a space's lock may
//! make a TLB shootdown round and wait for every target to acknowledge it; a target that spun on
//! the same lock with IF = 0 would never take the IPI, and both would wait forever
//! (smp-and-dispatch §4, pitfall 14; Linux `smp_call_function_many_cond`). So this lock's spin
//! loop serves the flush requests posted to its CPU ([`super::tlb::serve_flush_requests`]) while
//! it waits. Any other lock that a CPU may spin on, with IF = 0, while another CPU holds it and
//! waits for the memory manager must do the same (use this type).
//!
//! A waiter spins for 20 µs, then halts (interrupts on) until the unlock wakes it by IPI: under
//! QEMU the vCPUs share the host's cores, and spinning would take host time from the holder.
//! Measured (the benchmark's `bench-lock-policy` lines, `./run-qemu.sh --bench --smp 2
//! --guest-args scaling`, policies alternated in 0.2 s slices; median speed-up at 2 CPUs on one
//! space, commit_touch_decommit / reserve_release): on a quiet host (load average about 1.5, two
//! runs) halting at once 0.32–0.46× / 0.08–0.09×, after 5 µs 0.54–0.59× / 0.13–0.46×, after
//! 20 µs 0.68–0.98× / 0.50–0.54×, after 200 µs 0.77–1.08× / 0.37–0.57×; on a host loaded by
//! other QEMU runs (load about 9.5) the order reversed (at once 0.26× / 0.69×, 5 µs 0.21× /
//! 0.30×, 20 µs 0.13× / 0.22×, 200 µs 0.03× / 0.31×), as a halted vCPU gives its host core to the
//! holder. 20 µs is near the best where the vCPUs have cores of their own (the case the kernel is
//! built for), longer than the usual hold, and between the extremes under load. Never halting
//! stalled the holder almost completely.
//!
//! The lock also records which CPU holds it, so that the page-fault path can tell a fault taken
//! while this CPU holds the lock (a kernel bug, reported) from one that only has to wait.

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use x86_64::instructions::interrupts;

use crate::arch::{apic, percpu, time};

const NO_OWNER: usize = usize::MAX;

/// A fair (ticket) spin lock whose waiters serve TLB flush requests (see the module docs).
/// Fair because faults in a loop on several CPUs (a guest thread hammering an inaccessible page)
/// must not starve a CPU that waits to make a call: waiters are served in arrival order.
pub struct SpinLock<T> {
    next_ticket: AtomicU32,
    now_serving: AtomicU32,
    owner: AtomicUsize,
    /// CPUs halted while they wait (bit per CPU index); each unlock wakes them.
    sleepers: AtomicU64,
    value: UnsafeCell<T>,
}

/// How long a waiter spins before it halts until the lock changes hands, by default: under QEMU
/// the vCPUs share the host's cores, and a spinning vCPU takes host time from the one holding the
/// lock (Linux's paravirt spinlocks halt their waiters for the same reason).
pub const SPIN_BEFORE_HALT_US: u64 = 20;

/// The spin of [`wait_until`] in µs ([`set_spin_before_halt_us`]; `u64::MAX`: never halts).
static SPIN_BEFORE_HALT: AtomicU64 = AtomicU64::new(SPIN_BEFORE_HALT_US);

/// Waits that found a lock taken, those of them that halted, and the wake-up IPIs unlocks sent
/// (all locks of this module together; counted on the slow paths only).
static WAITS: AtomicU64 = AtomicU64::new(0);
static HALTS: AtomicU64 = AtomicU64::new(0);
static WAKE_IPIS: AtomicU64 = AtomicU64::new(0);
/// TSC cycles spent in waits (all CPUs together).
static WAIT_CYCLES: AtomicU64 = AtomicU64::new(0);
/// Waits of an [`RwSpinLock`] that lasted long enough to claim the next turn.
static HANDOFFS: AtomicU64 = AtomicU64::new(0);

/// How often the locks of this module were contended since boot ([`lock_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LockStats {
    /// Takes that found the lock held (or, for a writer, readers inside) and waited.
    pub waits: u64,
    /// Waits that spun out their time and halted until woken.
    pub halts: u64,
    /// Wake-up IPIs sent by unlocks to halted waiters.
    pub wake_ipis: u64,
    /// TSC cycles the waits took, all CPUs together.
    pub wait_cycles: u64,
    /// Waiters of an [`RwSpinLock`] that claimed the next turn ([`HANDOFF_AFTER_US`]).
    pub handoffs: u64,
}

/// The contention counters since boot.
pub fn lock_stats() -> LockStats {
    LockStats {
        waits: WAITS.load(Ordering::Relaxed),
        halts: HALTS.load(Ordering::Relaxed),
        wake_ipis: WAKE_IPIS.load(Ordering::Relaxed),
        wait_cycles: WAIT_CYCLES.load(Ordering::Relaxed),
        handoffs: HANDOFFS.load(Ordering::Relaxed),
    }
}

/// Sets how long a waiter spins before it halts, in µs (`u64::MAX`: it never halts, it spins
/// serving flush requests until its turn); returns the previous setting. For the benchmark's
/// comparison of waiting policies; the default is [`SPIN_BEFORE_HALT_US`].
pub fn set_spin_before_halt_us(us: u64) -> u64 {
    SPIN_BEFORE_HALT.swap(us, Ordering::Relaxed)
}

// SAFETY: the value is reached only through a guard, and at most one guard exists at a time
// (a guard holds the ticket being served), so sharing the lock shares `T` between CPUs one at a
// time, as a mutex does: `T: Send` suffices.
unsafe impl<T: Send> Sync for SpinLock<T> {}

/// Holds a [`SpinLock`]; unlocks when dropped.
pub struct SpinLockGuard<'a, T> {
    lock: &'a SpinLock<T>,
}

impl<T> SpinLock<T> {
    /// A new, unlocked lock.
    pub const fn new(value: T) -> Self {
        SpinLock {
            next_ticket: AtomicU32::new(0),
            now_serving: AtomicU32::new(0),
            owner: AtomicUsize::new(NO_OWNER),
            sleepers: AtomicU64::new(0),
            value: UnsafeCell::new(value),
        }
    }

    /// Takes the lock (after every CPU that asked before), serving this CPU's TLB flush
    /// requests while it waits: spinning for [`SPIN_BEFORE_HALT_US`], then halted with
    /// interrupts on until an unlock wakes it (a wake-up IPI) or a shootdown IPI comes (served by
    /// its handler). No interrupt handler takes this lock, so taking interrupts while waiting is
    /// safe; the interrupt flag is as it was on return.
    ///
    /// The uncontended path is one locked instruction (the ticket) and one load: the clock is
    /// read only once the lock turns out to be held.
    #[inline]
    pub fn lock(&self) -> SpinLockGuard<'_, T> {
        let ticket = self.next_ticket.fetch_add(1, Ordering::Acquire);
        if self.now_serving.load(Ordering::Acquire) != ticket {
            wait_until(&self.sleepers, || self.now_serving.load(Ordering::SeqCst) == ticket);
        }
        self.owner.store(percpu::this_cpu(), Ordering::Relaxed);
        SpinLockGuard { lock: self }
    }

    /// Takes the lock if it is free and nobody waits for it.
    pub fn try_lock(&self) -> Option<SpinLockGuard<'_, T>> {
        let serving = self.now_serving.load(Ordering::Relaxed);
        self.next_ticket.compare_exchange(serving, serving.wrapping_add(1), Ordering::Acquire, Ordering::Relaxed).ok()?;
        self.owner.store(percpu::this_cpu(), Ordering::Relaxed);
        Some(SpinLockGuard { lock: self })
    }

    /// Whether the CPU running this code holds the lock.
    pub fn held_by_this_cpu(&self) -> bool {
        self.owner.load(Ordering::Relaxed) == percpu::this_cpu()
    }
}

impl<T: Default> Default for SpinLock<T> {
    fn default() -> Self {
        SpinLock::new(T::default())
    }
}

impl<T> Deref for SpinLockGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: this guard holds the lock (its ticket is served), so no other reference to
        // the value exists until it is dropped.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for SpinLockGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as for `deref`; `&mut self` makes this the only reference through the guard.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for SpinLockGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.owner.store(NO_OWNER, Ordering::Relaxed);
        // Release: the holder's writes are visible to the next ticket's holder.
        self.lock.now_serving.fetch_add(1, Ordering::SeqCst);
        wake_sleepers(&self.lock.sleepers);
    }
}

/// Waits until `ready()` (which reads with `SeqCst`), serving this CPU's TLB flush requests:
/// spinning for [`SPIN_BEFORE_HALT_US`], then halted with interrupts on until a wake-up IPI
/// ([`wake_sleepers`] after the state `ready` reads changed) or any other interrupt; the interrupt
/// flag is as it was on return.
#[inline]
pub(super) fn wait_until(sleepers: &AtomicU64, ready: impl Fn() -> bool) {
    wait_for(sleepers, |_| ready());
}

/// [`wait_until`] for a lock taken by an attempt: calls `attempt(waited_long)` until it returns
/// true (and not once more), where `waited_long` says this wait has lasted longer than
/// [`HANDOFF_AFTER_US`]. The attempt reads and changes the lock's state with `SeqCst`. The slow
/// path of every lock here: the clock is read only here.
#[cold]
#[inline(never)]
fn wait_for(sleepers: &AtomicU64, mut attempt: impl FnMut(bool) -> bool) {
    WAITS.fetch_add(1, Ordering::Relaxed);
    let start = time::rdtsc();
    let per_ms = time::tsc_per_ms();
    let spin = per_ms.saturating_mul(SPIN_BEFORE_HALT.load(Ordering::Relaxed)) / 1000;
    let long = per_ms.saturating_mul(HANDOFF_AFTER_US) / 1000;
    loop {
        let waited = time::rdtsc().wrapping_sub(start);
        if attempt(waited > long) {
            break;
        }
        super::tlb::serve_flush_requests();
        if waited > spin {
            let bit = 1u64 << percpu::this_cpu();
            let enabled = interrupts::are_enabled();
            // Dekker with the state change (both sides full barriers: a locked
            // read-modify-write, then a SeqCst load): either the changer sees this CPU's bit and
            // wakes it, or this CPU's attempt sees the change and it does not halt.
            sleepers.fetch_or(bit, Ordering::SeqCst);
            if attempt(waited > long) {
                sleepers.fetch_and(!bit, Ordering::SeqCst);
                break;
            }
            HALTS.fetch_add(1, Ordering::Relaxed);
            interrupts::enable_and_hlt();
            if !enabled {
                interrupts::disable();
            }
            sleepers.fetch_and(!bit, Ordering::SeqCst);
        } else {
            core::hint::spin_loop();
        }
    }
    WAIT_CYCLES.fetch_add(time::rdtsc().wrapping_sub(start), Ordering::Relaxed);
}

/// Wakes the CPUs halted in [`wait_until`] on `sleepers`, if any (call after a locked
/// read-modify-write of the state they wait on). The bits are taken: a CPU is sent one wake-up
/// per halt, however many changes come before it runs again (a lock taken and released in a
/// loop by a running CPU sends none to a waiter already woken).
#[inline]
pub(super) fn wake_sleepers(sleepers: &AtomicU64) {
    if sleepers.load(Ordering::SeqCst) != 0 {
        let waiting = sleepers.swap(0, Ordering::SeqCst);
        if waiting != 0 {
            wake(waiting);
        }
    }
}

/// Wakes the CPUs of `sleepers` (bit per CPU index) halted waiting for a lock.
#[cold]
#[inline(never)]
fn wake(sleepers: u64) {
    WAKE_IPIS.fetch_add(u64::from(sleepers.count_ones()), Ordering::Relaxed);
    // With interrupts off: no interrupt handler may split this CPU's ICR writes.
    interrupts::without_interrupts(|| {
        for cpu in (0..percpu::MAX_CPUS).filter(|&c| sleepers & (1 << c) != 0) {
            apic::send_fixed(percpu::apic_id_of(cpu), apic::WAKE_VECTOR);
        }
    });
}

/// How long a waiter of an [`RwSpinLock`] lets others take the lock before it, in µs: past it,
/// the waiter claims the next turn (the lock's handoff), and no other CPU enters before it has.
pub const HANDOFF_AFTER_US: u64 = 1000;

/// [`RwSpinLock`] state: a writer is inside.
const WRITER: u32 = 1 << 31;
/// [`RwSpinLock`] state: a waiter has claimed the next turn (`RwSpinLock::handoff` says which).
const HANDOFF: u32 = 1 << 30;
/// [`RwSpinLock`] state: one writer waiting (bits 24–29 count them, at most one per CPU).
const WAITING_WRITER: u32 = 1 << 24;
/// [`RwSpinLock`] state: the number of readers inside (bits 0–23).
const READERS: u32 = WAITING_WRITER - 1;
// Every CPU may wait to write at once: their count must stay below the HANDOFF bit.
const _: () = assert!((percpu::MAX_CPUS as u32) < HANDOFF / WAITING_WRITER);

/// A reader/writer lock whose waiters serve TLB flush requests, as [`SpinLock`]: a space's
/// lock, held shared by page faults and exclusively by every call that changes the allocation
/// map or the tables (Linux's `mmap_lock`); a call that ends in a TLB round releases it for the
/// round (`SpaceShared::with_range`).
///
/// Writers barge, readers defer to writers, and a long wait claims the next turn (as Linux's
/// rwsem and Go's `sync.Mutex`): a writer that finds the lock empty enters, whoever waited
/// before; a reader enters beside the readers inside unless a writer is inside or waiting; a
/// waiter of either kind that has waited [`HANDOFF_AFTER_US`] claims the next turn, after which
/// no other CPU enters until it has (a writer then waits only for the readers inside to leave).
/// So a call waits for the faults inside, not for later ones; calls in a loop keep faults out for
/// at most that long, and a waiter waits at most about that long plus one turn per other CPU.
/// Why not first come, first served (a ticket lock, as [`SpinLock`] is, and as this lock was):
/// every change of hands then waits for the next waiter to run, and under QEMU a vCPU shares the
/// host's cores, so the next waiter is often not running (or halted, to be woken by IPI) while
/// the CPU that just left, still running, could have gone on. Measured (`bench-scaling`, one
/// space, 4 vCPUs on a 2-core host): `reserve_release_64k` from 4 CPUs at 0.04–0.05× of one CPU
/// with the ticket lock, 0.30–0.32× with this one; from 4 guest threads 0.07× and 0.52–1.07×. At
/// 2 CPUs the ticket lock measured a little better (`commit_touch_decommit_64k` median 1.30×
/// against about 1.16×; `docs/performance.md`).
pub struct RwSpinLock<T> {
    /// [`WRITER`], [`HANDOFF`], the waiting writers (in units of [`WAITING_WRITER`]) and the
    /// readers inside ([`READERS`]).
    state: AtomicU32,
    /// The CPU that claimed the next turn ([`HANDOFF`]), or `NO_OWNER`.
    handoff: AtomicUsize,
    /// The CPU holding it exclusively, if one does.
    writer: AtomicUsize,
    /// CPUs halted while they wait (bit per CPU index); every change wakes them.
    sleepers: AtomicU64,
    value: UnsafeCell<T>,
}

// SAFETY: the value is reached through guards only: readers share `&T` between CPUs at once
// (`T: Sync`), a writer holds the only reference (`T: Send`, as a mutex).
unsafe impl<T: Send + Sync> Sync for RwSpinLock<T> {}

/// Holds an [`RwSpinLock`] shared; leaves when dropped.
pub struct RwReadGuard<'a, T> {
    lock: &'a RwSpinLock<T>,
}

/// Holds an [`RwSpinLock`] exclusively; unlocks when dropped.
pub struct RwWriteGuard<'a, T> {
    lock: &'a RwSpinLock<T>,
}

impl<T> RwSpinLock<T> {
    /// A new, unlocked lock.
    pub const fn new(value: T) -> Self {
        RwSpinLock {
            state: AtomicU32::new(0),
            handoff: AtomicUsize::new(NO_OWNER),
            writer: AtomicUsize::new(NO_OWNER),
            sleepers: AtomicU64::new(0),
            value: UnsafeCell::new(value),
        }
    }

    /// Takes the lock shared: at once unless a writer is inside or waiting or another CPU
    /// claimed the next turn; else waiting as [`SpinLock::lock`] does. Uncontended: one load and
    /// one locked compare-and-exchange.
    #[inline]
    pub fn read(&self) -> RwReadGuard<'_, T> {
        let s = self.state.load(Ordering::Relaxed);
        if s & !READERS != 0 || self.state.compare_exchange(s, s + 1, Ordering::Acquire, Ordering::Relaxed).is_err() {
            wait_for(&self.sleepers, |waited_long| self.try_read(waited_long));
        }
        RwReadGuard { lock: self }
    }

    /// Takes the lock exclusively: at once if no reader or writer is inside and nobody claimed
    /// the next turn (before writers already waiting); else waiting (counted as a waiting
    /// writer, which keeps new readers out) as [`SpinLock::lock`] does. Uncontended: one load and
    /// one locked compare-and-exchange.
    #[inline]
    pub fn write(&self) -> RwWriteGuard<'_, T> {
        let s = self.state.load(Ordering::Relaxed);
        if s & (WRITER | HANDOFF | READERS) != 0 || self.state.compare_exchange(s, s | WRITER, Ordering::Acquire, Ordering::Relaxed).is_err() {
            self.state.fetch_add(WAITING_WRITER, Ordering::SeqCst);
            wait_for(&self.sleepers, |waited_long| self.try_write(waited_long));
        }
        self.writer.store(percpu::this_cpu(), Ordering::Relaxed);
        RwWriteGuard { lock: self }
    }

    /// One attempt of a waiting reader: enters if no writer is inside or waiting and nobody
    /// claimed the next turn, or if this CPU claimed it and no writer is inside (then it passes
    /// the turn on: readers after it may enter too).
    fn try_read(&self, waited_long: bool) -> bool {
        let s = self.state.load(Ordering::SeqCst);
        if s & !READERS == 0 {
            return self.state.compare_exchange(s, s + 1, Ordering::SeqCst, Ordering::Relaxed).is_ok();
        }
        if s & HANDOFF == 0 || s & WRITER != 0 {
            self.claim_turn(s, waited_long);
            return false;
        }
        if self.handoff.load(Ordering::SeqCst) != percpu::this_cpu() {
            return false;
        }
        if self.state.compare_exchange(s, (s & !HANDOFF) + 1, Ordering::SeqCst, Ordering::Relaxed).is_err() {
            return false;
        }
        self.handoff.store(NO_OWNER, Ordering::SeqCst);
        // Readers that waited behind the claim may enter beside this one (unless writers wait).
        wake_sleepers(&self.sleepers);
        true
    }

    /// One attempt of a waiting writer (counted in units of [`WAITING_WRITER`]): enters, and
    /// stops being counted, if no reader or writer is inside and the next turn is nobody's or
    /// this CPU's.
    fn try_write(&self, waited_long: bool) -> bool {
        let s = self.state.load(Ordering::SeqCst);
        if s & (WRITER | READERS) != 0 {
            self.claim_turn(s, waited_long);
            return false;
        }
        let claimed = s & HANDOFF != 0;
        if claimed && self.handoff.load(Ordering::SeqCst) != percpu::this_cpu() {
            return false;
        }
        let entered = (s & !HANDOFF) - WAITING_WRITER + WRITER;
        if self.state.compare_exchange(s, entered, Ordering::SeqCst, Ordering::Relaxed).is_err() {
            return false;
        }
        if claimed {
            self.handoff.store(NO_OWNER, Ordering::SeqCst);
        }
        true
    }

    /// Claims the next turn for this CPU if it has waited long and nobody holds the claim.
    fn claim_turn(&self, s: u32, waited_long: bool) {
        if waited_long && s & HANDOFF == 0 && self.handoff.compare_exchange(NO_OWNER, percpu::this_cpu(), Ordering::SeqCst, Ordering::Relaxed).is_ok() {
            // The CPU is named before the bit is set: whoever sees the bit finds the name.
            self.state.fetch_or(HANDOFF, Ordering::SeqCst);
            HANDOFFS.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether the CPU running this code holds the lock exclusively.
    pub fn written_by_this_cpu(&self) -> bool {
        self.writer.load(Ordering::Relaxed) == percpu::this_cpu()
    }
}

impl<T> Deref for RwReadGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: a reader holds the lock: no writer is inside until every reader left, and
        // readers only make shared references.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> Drop for RwReadGuard<'_, T> {
    fn drop(&mut self) {
        // Release: this reader's reads happen before the next writer's writes. Only the last
        // reader's leaving lets a waiter in (a writer).
        if self.lock.state.fetch_sub(1, Ordering::SeqCst) & READERS == 1 {
            wake_sleepers(&self.lock.sleepers);
        }
    }
}

impl<T> Deref for RwWriteGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the writer holds the lock alone (no reader inside, no other writer) until
        // dropped.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for RwWriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as for `deref`; `&mut self` makes this the only reference through the guard.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for RwWriteGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.writer.store(NO_OWNER, Ordering::Relaxed);
        // Release: the writer's writes are visible to whoever enters next. A claim of the next
        // turn made meanwhile stays.
        self.lock.state.fetch_and(!WRITER, Ordering::SeqCst);
        wake_sleepers(&self.lock.sleepers);
    }
}
