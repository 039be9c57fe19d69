//! The mark phase of a major collection on every CPU, with work stealing (as the CLR's server
//! GC marks with one GC thread per CPU).
//!
//! The collector (the thread that stopped the world) is GC thread 0; GC threads 1.. are started
//! once ([`start_gc_threads`]) and sleep in `wait_on_address` between collections. For a mark
//! phase each takes an equal share of the roots, then works depth-first from its private stack.
//! A thread with plenty of work moves half of it to its public queue when that is empty; a thread
//! out of work takes its own queue back first, then steals half of another's. A thread that finds
//! no work anywhere counts itself idle; marking ends when all are idle (no queue can then hold
//! work: only its owner fills a queue, and an owner goes idle only after emptying its own).
//!
//! Mark bits are set with an atomic OR on the object header, so two threads reaching one object
//! agree on which of them scans it. With one GC thread this is the plain depth-first mark.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use guest_abi::{Mutex, Thread};

use crate::gc::{MARK, get_ref, hdr, nrefs_of, words_of};
use crate::sys::{self, ThreadState, host, ticks};

/// GC threads, the collector included.
static GC_THREADS: AtomicUsize = AtomicUsize::new(1);
/// Bumped (and woken) for each mark phase; the helpers wait on it.
static EPOCH: AtomicU32 = AtomicU32::new(0);
/// Helpers done with the current phase.
static DONE: AtomicU32 = AtomicU32::new(0);
/// The current phase's shared state.
static JOB: AtomicPtr<Job> = AtomicPtr::new(core::ptr::null_mut());

/// What a mark phase found.
#[derive(Debug, Default, Clone, Copy)]
pub struct MarkResult {
    /// Old-generation bytes and objects marked, young bytes marked.
    pub old_bytes: usize,
    pub old_objects: usize,
    pub young_bytes: usize,
    /// Wall time of the phase, and the time the GC threads worked in it together.
    pub wall_ns: u64,
    pub busy_ns: u64,
    pub steals: u64,
    pub workers: usize,
}

struct Queue {
    items: Mutex<Vec<usize>>,
    len: AtomicUsize,
}

struct Job {
    nursery: usize,
    nursery_size: usize,
    roots: *const [usize],
    queues: Vec<Queue>,
    idle: AtomicUsize,
    results: Vec<Mutex<MarkResult>>,
}

// SAFETY: `roots` points at the collector's root list, alive and unchanged for the whole phase
// (the collector waits for every helper before it returns); the rest is Sync by itself.
unsafe impl Sync for Job {}

/// Starts `n - 1` GC threads (the collector is the n-th). Without threads (a version-1 host, or
/// `n` 1) marking runs on the collector alone.
pub fn start_gc_threads(n: usize) -> usize {
    let mut started = 1;
    for id in 1..n {
        // Made here, so the new thread registers before its first allocation.
        let state: &'static ThreadState = Box::leak(Box::new(ThreadState::new()));
        GC_THREAD_STATES.lock().push(state);
        let spawned = Thread::spawn(host(), move || {
            sys::enter_thread(state);
            helper(id)
        });
        match spawned {
            // The helper runs until the guest ends; its handle is not needed.
            Ok(t) => drop(t),
            Err(_) => break,
        }
        started += 1;
    }
    GC_THREADS.store(started, Ordering::SeqCst);
    started
}

/// The GC threads' states (to label their stacks in the address-space picture).
pub static GC_THREAD_STATES: guest_abi::Mutex<Vec<&'static ThreadState>> = guest_abi::Mutex::new(Vec::new());

/// GC threads marking (the collector included).
pub fn gc_threads() -> usize {
    GC_THREADS.load(Ordering::SeqCst)
}

fn helper(id: usize) -> u32 {
    let mut seen = 0;
    loop {
        let mut epoch = EPOCH.load(Ordering::SeqCst);
        while epoch == seen {
            let _ = host().wait_on_address(&EPOCH, seen, None);
            epoch = EPOCH.load(Ordering::SeqCst);
        }
        seen = epoch;
        // SAFETY: the collector published the job before bumping EPOCH and keeps it alive until
        // every helper has counted itself DONE.
        let job = unsafe { &*JOB.load(Ordering::SeqCst) };
        work(job, id);
        DONE.fetch_add(1, Ordering::SeqCst);
        let _ = host().wake_all(&DONE);
    }
}

/// Marks everything reachable from `roots` (non-zero object addresses).
pub fn mark(nursery: usize, nursery_size: usize, roots: &[usize]) -> MarkResult {
    let n = gc_threads();
    let t0 = ticks();
    let job = Job {
        nursery,
        nursery_size,
        roots: roots as *const [usize],
        queues: (0..n).map(|_| Queue { items: Mutex::new(Vec::new()), len: AtomicUsize::new(0) }).collect(),
        idle: AtomicUsize::new(0),
        results: (0..n).map(|_| Mutex::new(MarkResult::default())).collect(),
    };
    if n > 1 {
        JOB.store(&job as *const Job as *mut Job, Ordering::SeqCst);
        DONE.store(0, Ordering::SeqCst);
        EPOCH.fetch_add(1, Ordering::SeqCst);
        let _ = host().wake_all(&EPOCH);
    }
    work(&job, 0);
    let helpers = (n - 1) as u32;
    loop {
        let done = DONE.load(Ordering::SeqCst);
        if done >= helpers || n == 1 {
            break;
        }
        let _ = host().wait_on_address(&DONE, done, None);
    }
    JOB.store(core::ptr::null_mut(), Ordering::SeqCst);
    let mut total = MarkResult { workers: n, wall_ns: ticks() - t0, ..MarkResult::default() };
    for r in &job.results {
        let r = *r.lock();
        total.old_bytes += r.old_bytes;
        total.old_objects += r.old_objects;
        total.young_bytes += r.young_bytes;
        total.busy_ns += r.busy_ns;
        total.steals += r.steals;
    }
    total
}

/// Sets the mark bit of `p`; true if this call set it (the caller then scans `p`).
#[inline]
fn try_mark(job: &Job, p: usize, r: &mut MarkResult) -> bool {
    // SAFETY: `p` is an object start of the heap (a root or a reference field); its header is
    // an aligned u64 that every GC thread accesses atomically during the phase.
    let h = unsafe { AtomicU64::from_ptr(p as *mut u64) };
    if h.load(Ordering::Relaxed) & MARK != 0 {
        return false;
    }
    let old = h.fetch_or(MARK, Ordering::Relaxed);
    if old & MARK != 0 {
        return false;
    }
    let bytes = words_of(old) * 8;
    if p.wrapping_sub(job.nursery) < job.nursery_size {
        r.young_bytes += bytes;
    } else {
        r.old_bytes += bytes;
        r.old_objects += 1;
    }
    true
}

fn work(job: &Job, id: usize) {
    let t0 = ticks();
    let n = job.queues.len();
    let mut r = MarkResult::default();
    let mut local: Vec<usize> = Vec::with_capacity(1024);
    // SAFETY: see Job.
    let roots = unsafe { &*job.roots };
    for &p in &roots[id * roots.len() / n..(id + 1) * roots.len() / n] {
        if try_mark(job, p, &mut r) {
            local.push(p);
        }
    }
    let mut idle_ns = 0;
    let mut scanned = 0u64;
    loop {
        while let Some(obj) = local.pop() {
            for i in 0..nrefs_of(hdr(obj)) {
                let p = get_ref(obj, i);
                if p != 0 && try_mark(job, p, &mut r) {
                    local.push(p);
                }
            }
            scanned += 1;
            // Share: half of a deep stack goes public when this thread's queue ran dry.
            if n > 1 && scanned.is_multiple_of(32) && local.len() > 64 && job.queues[id].len.load(Ordering::Relaxed) == 0 {
                let mut q = job.queues[id].items.lock();
                q.extend(local.drain(..local.len() / 2));
                job.queues[id].len.store(q.len(), Ordering::SeqCst);
            }
        }
        if steal(job, id, &mut local, &mut r) {
            continue;
        }
        let t_idle = ticks();
        job.idle.fetch_add(1, Ordering::SeqCst);
        let mut spins = 0u32;
        let finished = loop {
            if job.idle.load(Ordering::SeqCst) == n {
                break true;
            }
            if job.queues.iter().any(|q| q.len.load(Ordering::SeqCst) > 0) {
                job.idle.fetch_sub(1, Ordering::SeqCst);
                break false;
            }
            // Spin briefly, then give the CPU to a thread with work (more GC threads than
            // free CPUs must not starve the one still marking).
            spins += 1;
            if spins < 64 {
                core::hint::spin_loop();
            } else {
                let _ = host().yield_now();
            }
        };
        idle_ns += ticks() - t_idle;
        if finished {
            break;
        }
    }
    r.busy_ns = (ticks() - t0).saturating_sub(idle_ns);
    *job.results[id].lock() = r;
}

/// Takes work from this thread's own queue (all of it) or another's (half): true if it got some.
fn steal(job: &Job, id: usize, local: &mut Vec<usize>, r: &mut MarkResult) -> bool {
    let n = job.queues.len();
    for k in 0..n {
        let v = (id + k) % n;
        let q = &job.queues[v];
        if q.len.load(Ordering::SeqCst) == 0 {
            continue;
        }
        // Its own queue it waits for (so a thread never goes idle with work in it); another's
        // it leaves to whoever holds it.
        let mut items = if v == id {
            q.items.lock()
        } else {
            match q.items.try_lock() {
                Some(items) => items,
                None => continue,
            }
        };
        let take = if v == id { items.len() } else { items.len().div_ceil(2) };
        if take == 0 {
            continue;
        }
        let at = items.len() - take;
        local.extend(items.drain(at..));
        q.len.store(items.len(), Ordering::SeqCst);
        if v != id {
            r.steals += 1;
        }
        return true;
    }
    false
}
