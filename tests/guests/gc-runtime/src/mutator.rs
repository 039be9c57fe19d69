//! Mutators (threads that run managed code) and stop-the-world collections at safepoints, as
//! the CLR does them.
//!
//! Each mutator has its own allocation context in the nursery (bump-allocated without a lock),
//! its own root stack (the shadow stack the collector scans) and its own statistics. When its
//! context is used up it takes the next chunk of the nursery under the heap's lock; when the
//! nursery is used up (or the host said memory is low, or a large object does not fit) it needs
//! a collection:
//!
//! 1. it raises [`GC_REQUESTED`] (the first to raise it is the collector; a thread that finds it
//!    raised parks instead and retries afterwards);
//! 2. every other mutator polls the flag at its safepoints — each allocation and the loop
//!    back-edges of managed code ([`Mutator::poll`]) — and parks: it says it is safe, wakes the
//!    collector, and sleeps in `wait_on_address` until the flag drops. A mutator that waits for
//!    something else (a thread to end, the next task) is safe for as long as it waits
//!    ([`Mutator::blocking`]);
//! 3. the collector waits (`wait_on_address` on [`SAFE_EPOCH`]) until every other registered
//!    mutator is safe, then collects with all their root stacks, retires all their allocation
//!    contexts, lowers the flag and wakes them all.
//!
//! A mutator going back from safe to running stores "running" and then re-reads the flag (both
//! sequentially consistent), and the collector raises the flag and then reads the states: so
//! either the collector sees it running and waits, or it sees the flag and parks again.
//!
//! With one thread all of this reduces to what a single-threaded runtime does: the context is
//! the whole nursery, the flag is always free, nobody else is waited for.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use guest_abi::{Mutex, MutexGuard};

use crate::gc::{self, AllocContext, BumpFn, COLLECT_NOW, Heap, LARGE, MAX_OBJECT, ManagedError, Reason, header, set_hdr};
use crate::sys::{RuntimeScope, host, ticks};

/// The heap, shared by every mutator (taken for chunks, large objects and collections).
static HEAP: Mutex<Option<Heap>> = Mutex::new(None);
/// Every registered mutator (a collection waits for all of them and scans their roots).
static REGISTRY: Mutex<Vec<MutatorPtr>> = Mutex::new(Vec::new());
/// Non-zero while a collection is requested or running.
pub static GC_REQUESTED: AtomicU32 = AtomicU32::new(0);
/// Bumped (and woken) whenever a mutator becomes safe: what the collector waits on.
static SAFE_EPOCH: AtomicU32 = AtomicU32::new(0);
/// The bump helper every mutator uses (the executable stub once it is written).
static BUMP: AtomicUsize = AtomicUsize::new(0);

const RUNNING: u32 = 0;
const SAFE: u32 = 1;

struct MutatorPtr(*mut Mutator);
// SAFETY: the registry only hands the pointers to the collector while the world is stopped.
unsafe impl Send for MutatorPtr {}

/// Installs the heap every mutator allocates from.
pub fn install_heap(heap: Heap) {
    *HEAP.lock() = Some(heap);
}

/// The heap, locked. Never held across a safepoint.
pub fn heap() -> HeapGuard {
    HeapGuard(HEAP.lock())
}

/// The locked heap.
pub struct HeapGuard(MutexGuard<'static, Option<Heap>>);

impl core::ops::Deref for HeapGuard {
    type Target = Heap;
    fn deref(&self) -> &Heap {
        self.0.as_ref().expect("the heap is installed before any mutator runs")
    }
}
impl core::ops::DerefMut for HeapGuard {
    fn deref_mut(&mut self) -> &mut Heap {
        self.0.as_mut().expect("the heap is installed before any mutator runs")
    }
}

/// Uses `f` as every mutator's bump-allocation helper.
pub fn set_bump_helper(f: BumpFn) {
    BUMP.store(f as usize, Ordering::SeqCst);
}

fn bump_helper() -> BumpFn {
    match BUMP.load(Ordering::SeqCst) {
        0 => gc::bump_in_rust,
        // SAFETY: only set_bump_helper stores here, from a BumpFn.
        f => unsafe { core::mem::transmute::<usize, BumpFn>(f) },
    }
}

/// What one mutator did.
#[derive(Debug, Default, Clone, Copy)]
pub struct MutatorStats {
    pub allocated_objects: u64,
    pub allocated_bytes: u64,
    pub large_objects: u64,
    /// Allocation contexts taken from the nursery.
    pub contexts: u64,
    /// Collections this thread ran (as the collector).
    pub collections: u64,
    /// Times it parked for another thread's collection, and the time it spent parked.
    pub parked: u64,
    pub parked_ns: u64,
    pub managed_oom: u64,
}

/// A thread running managed code: its allocation context, root stack and statistics.
pub struct Mutator {
    pub id: usize,
    pub ctx: AllocContext,
    bump: BumpFn,
    /// The root table (shadow stack and handles).
    pub roots: Vec<usize>,
    pub stats: MutatorStats,
    state: AtomicU32,
}

impl Mutator {
    /// Registers a new mutator for the calling thread; it starts running (after any collection
    /// under way).
    pub fn register(id: usize) -> Box<Mutator> {
        let mut m = Box::new(Mutator {
            id,
            ctx: AllocContext::default(),
            bump: bump_helper(),
            roots: Vec::with_capacity(1024),
            stats: MutatorStats::default(),
            state: AtomicU32::new(SAFE),
        });
        REGISTRY.lock().push(MutatorPtr(&mut *m));
        m.resume();
        m
    }

    /// Leaves the registry (the thread runs no more managed code); its context goes back.
    pub fn unregister(&mut self) {
        self.enter_safe();
        let mut registry = REGISTRY.lock();
        heap().retire(&mut self.ctx);
        let me = self as *mut Mutator;
        registry.retain(|p| p.0 != me);
    }

    // ---- roots ---------------------------------------------------------------------------

    /// Pushes a root; returns its index.
    #[inline]
    pub fn root(&mut self, p: usize) -> usize {
        self.roots.push(p);
        self.roots.len() - 1
    }
    #[inline]
    pub fn get(&self, i: usize) -> usize {
        self.roots[i]
    }
    #[inline]
    pub fn set(&mut self, i: usize, p: usize) {
        self.roots[i] = p
    }
    /// Pops roots down to `depth`.
    #[inline]
    pub fn truncate(&mut self, depth: usize) {
        self.roots.truncate(depth)
    }
    pub fn depth(&self) -> usize {
        self.roots.len()
    }

    // ---- safepoints ----------------------------------------------------------------------

    /// A safepoint: parks here if a collection is requested.
    #[inline]
    pub fn poll(&mut self) {
        if GC_REQUESTED.load(Ordering::Relaxed) != 0 {
            self.park();
        }
    }

    #[cold]
    fn park(&mut self) {
        let t0 = ticks();
        self.blocking(|| ());
        self.stats.parked += 1;
        self.stats.parked_ns += ticks() - t0;
    }

    fn enter_safe(&self) {
        self.state.store(SAFE, Ordering::SeqCst);
        SAFE_EPOCH.fetch_add(1, Ordering::SeqCst);
        let _ = host().wake_all(&SAFE_EPOCH);
    }

    /// Back to running once no collection is under way.
    fn resume(&self) {
        loop {
            while GC_REQUESTED.load(Ordering::SeqCst) != 0 {
                let _ = host().wait_on_address(&GC_REQUESTED, 1, None);
            }
            self.state.store(RUNNING, Ordering::SeqCst);
            if GC_REQUESTED.load(Ordering::SeqCst) == 0 {
                return;
            }
            self.enter_safe();
        }
    }

    /// Runs `f` (a wait for something other than the heap) as safe: collections go on
    /// meanwhile. `f` must not touch managed objects.
    pub fn blocking<R>(&mut self, f: impl FnOnce() -> R) -> R {
        self.enter_safe();
        let r = f();
        self.resume();
        r
    }

    /// Stops the world and runs `f` on the heap with every mutator's roots. `None` if another
    /// thread was collecting (this one parked meanwhile; the caller retries).
    pub fn stop_the_world<R>(&mut self, f: impl FnOnce(&mut Heap) -> R) -> Option<R> {
        let _scope = RuntimeScope::enter();
        if GC_REQUESTED.compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst).is_err() {
            self.park();
            return None;
        }
        let t0 = ticks();
        let registry = REGISTRY.lock();
        let me = self as *mut Mutator;
        loop {
            let epoch = SAFE_EPOCH.load(Ordering::SeqCst);
            // SAFETY: registered mutators stay alive until they unregister, which needs the
            // registry lock held here.
            if registry.iter().all(|p| p.0 == me || unsafe { &*p.0 }.state.load(Ordering::SeqCst) == SAFE) {
                break;
            }
            let _ = host().wait_on_address(&SAFE_EPOCH, epoch, None);
        }
        let t_safe = ticks();
        let r = {
            let mut heap = heap();
            let mut stacks: Vec<*mut Vec<usize>> = Vec::with_capacity(registry.len());
            for p in registry.iter() {
                // SAFETY: every other mutator is parked (safe) and this one is the caller: the
                // collector has them to itself until GC_REQUESTED drops.
                let m = unsafe { &mut *p.0 };
                heap.retire(&mut m.ctx);
                stacks.push(&mut m.roots);
            }
            let r = heap.with_roots(&stacks, f);
            let s = &mut heap.stats;
            let pause = ticks() - t0;
            s.safepoint_wait_max = s.safepoint_wait_max.max(t_safe - t0);
            s.stw_pause_max = s.stw_pause_max.max(pause);
            s.stw_pause_total += pause;
            s.stw_pauses += 1;
            r
        };
        self.stats.collections += 1;
        GC_REQUESTED.store(0, Ordering::SeqCst);
        let _ = host().wake_all(&GC_REQUESTED);
        drop(registry);
        Some(r)
    }

    /// A full collection (the program asked for it).
    pub fn collect(&mut self, reason: Reason) -> Result<(), ManagedError> {
        loop {
            if let Some(r) = self.stop_the_world(|heap| heap.collect(reason)) {
                return r;
            }
        }
    }

    // ---- allocation ----------------------------------------------------------------------

    /// Allocates an object with `nrefs` reference fields (null) and `ndata` data words (zero).
    /// A safepoint: every unrooted reference the caller holds is invalid afterwards.
    #[inline]
    pub fn alloc(&mut self, nrefs: usize, ndata: usize) -> Result<usize, ManagedError> {
        self.poll();
        let words = 1 + nrefs + ndata;
        let bytes = words * 8;
        if bytes > LARGE {
            return self.alloc_large(nrefs, words);
        }
        let mut p = (self.bump)(&mut self.ctx, bytes);
        if p == 0 {
            p = self.refill(bytes)?;
        }
        set_hdr(p, header(nrefs, words, 0));
        // SAFETY: p..p+bytes is the nursery block just handed out.
        unsafe { core::ptr::write_bytes((p + 8) as *mut u8, 0, bytes - 8) };
        self.stats.allocated_bytes += bytes as u64;
        self.stats.allocated_objects += 1;
        Ok(p)
    }

    /// A new allocation context with room for `bytes` (collecting when the nursery is used up);
    /// returns the block.
    #[cold]
    fn refill(&mut self, bytes: usize) -> Result<usize, ManagedError> {
        let _scope = RuntimeScope::enter();
        loop {
            if COLLECT_NOW.load(Ordering::SeqCst) {
                // The host said memory is low (to whichever thread's call): collect now.
                self.stop_the_world(|heap| heap.collect(Reason::Notification)).transpose()?;
            }
            {
                let mut heap = heap();
                heap.retire(&mut self.ctx);
                if let Some(ctx) = heap.take_chunk(bytes) {
                    self.ctx = ctx;
                    self.stats.contexts += 1;
                    let p = (self.bump)(&mut self.ctx, bytes);
                    if p != 0 {
                        return Ok(p);
                    }
                }
            }
            match self.stop_the_world(|heap| {
                // Another thread may have collected meanwhile: only collect if still full.
                if heap.nursery_top + bytes > heap.nursery + heap.nursery_size { heap.nursery_full() } else { Ok(()) }
            }) {
                Some(Err(e)) => {
                    self.stats.managed_oom += 1;
                    return Err(e);
                }
                _ => continue,
            }
        }
    }

    #[cold]
    fn alloc_large(&mut self, nrefs: usize, words: usize) -> Result<usize, ManagedError> {
        let _scope = RuntimeScope::enter();
        let bytes = words * 8;
        if bytes > MAX_OBJECT {
            self.stats.managed_oom += 1;
            heap().stats.managed_oom += 1;
            return Err(ManagedError::OutOfMemory);
        }
        if COLLECT_NOW.load(Ordering::SeqCst) {
            // (If the nursery could not be promoted, the allocation below still may succeed.)
            let _ = self.stop_the_world(|heap| heap.collect(Reason::Notification));
        }
        let first = heap().alloc_large(nrefs, words);
        let p = match first {
            Some(p) => p,
            None => {
                // Out of memory: collect everything and retry once (in the same pause, so no
                // other thread takes the space first).
                let retried = loop {
                    if let Some(r) = self.stop_the_world(|heap| {
                        let collected = heap.collect(Reason::OutOfMemory);
                        heap.alloc_large(nrefs, words).filter(|_| collected.is_ok())
                    }) {
                        break r;
                    }
                };
                match retried {
                    Some(p) => p,
                    None => {
                        self.stats.managed_oom += 1;
                        heap().stats.managed_oom += 1;
                        return Err(ManagedError::OutOfMemory);
                    }
                }
            }
        };
        self.stats.allocated_bytes += bytes as u64;
        self.stats.allocated_objects += 1;
        self.stats.large_objects += 1;
        Ok(p)
    }
}
