//! [`SpinLock`]: the memory manager's lock, whose waiters serve TLB flush requests.
//!
//! Kernel code runs with interrupts off (IF = 0). A CPU holding the memory manager's lock may
//! make a TLB shootdown round and wait for every target to acknowledge it; a target that spun on
//! the same lock with IF = 0 would never take the IPI, and both would wait forever
//! (smp-and-dispatch §4, pitfall 14; Linux `smp_call_function_many_cond`). So this lock's spin
//! loop serves the flush requests posted to its CPU ([`super::tlb::serve_flush_requests`]) while
//! it waits. Any other lock that a CPU may spin on, with IF = 0, while another CPU holds it and
//! waits for the memory manager must do the same (use this type).
//!
//! The lock also records which CPU holds it, so that the page-fault path can tell a fault taken
//! while this CPU holds the lock (a kernel bug, reported) from one that only has to wait.

use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::arch::percpu;

const NO_OWNER: usize = usize::MAX;

/// A spin lock whose waiters serve TLB flush requests (see the module docs).
pub struct SpinLock<T> {
    inner: spin::Mutex<T>,
    owner: AtomicUsize,
}

/// Holds a [`SpinLock`]; unlocks when dropped.
pub struct SpinLockGuard<'a, T> {
    guard: spin::MutexGuard<'a, T>,
    owner: &'a AtomicUsize,
}

impl<T> SpinLock<T> {
    /// A new, unlocked lock.
    pub const fn new(value: T) -> Self {
        SpinLock { inner: spin::Mutex::new(value), owner: AtomicUsize::new(NO_OWNER) }
    }

    /// Takes the lock, serving this CPU's TLB flush requests while it waits.
    pub fn lock(&self) -> SpinLockGuard<'_, T> {
        loop {
            if let Some(guard) = self.try_lock() {
                return guard;
            }
            super::tlb::serve_flush_requests();
            core::hint::spin_loop();
        }
    }

    /// Takes the lock if it is free.
    pub fn try_lock(&self) -> Option<SpinLockGuard<'_, T>> {
        let guard = self.inner.try_lock()?;
        self.owner.store(percpu::this_cpu(), Ordering::Relaxed);
        Some(SpinLockGuard { guard, owner: &self.owner })
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
        &self.guard
    }
}

impl<T> DerefMut for SpinLockGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

impl<T> Drop for SpinLockGuard<'_, T> {
    fn drop(&mut self) {
        // Before the inner guard unlocks (fields drop after this).
        self.owner.store(NO_OWNER, Ordering::Relaxed);
    }
}
