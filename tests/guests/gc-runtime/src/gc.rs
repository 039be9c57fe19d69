//! The garbage-collected heap, laid out and managed the way the CLR's GC uses a hosting host's
//! `IHostMemoryManager`:
//!
//! * one 64 GiB reservation made up front with `MEM_RESERVE | MEM_WRITE_WATCH`; nothing else of
//!   the heap is ever reserved;
//! * the nursery (generation 0) at its start, committed once and handed out in allocation
//!   contexts, one per mutator thread (the whole nursery when there is one thread), which each
//!   bump-allocates in through a machine-code stub in an executable `IHostMalloc` block (see
//!   `mutator.rs`); a minor collection copies its survivors into the old generation and
//!   `MEM_RESET`s the nursery;
//! * the old generation in 1 MiB segments above it, committed (`MEM_COMMIT`, eTaskCritical) as it
//!   grows and decommitted (`MEM_DECOMMIT`) when a major collection (mark, then sweep into
//!   size-class free lists, or slide the live objects down when most of it is holes) leaves one
//!   empty; free spans it keeps have their whole pages `MEM_RESET`;
//! * old-to-young references found with the host's write watch over the old generation (no card
//!   table, no write barrier): a minor collection asks `GetWriteWatch` which old pages were written
//!   since the last collection, scans the objects on them (found through an object-start bitmap
//!   per segment, kept in `IHostMalloc` memory), then resets the watch;
//! * a memory-notification callback that only sets a flag; the next allocation slow path, on any
//!   thread, runs a full collection;
//! * out of memory: a full collection and one retry, then a managed `OutOfMemory`;
//! * collections stop the world (`mutator.rs`): the heap's collection code runs on one thread
//!   while every other mutator is parked at a safepoint, with the roots of all of them; the mark
//!   phase of a major collection runs on every CPU (`mark.rs`).
//!
//! Objects: an 8-byte header, then `nrefs` reference fields, then data words. Header: bit 0
//! forwarded (the word is then the new address | 1), bit 1 mark, bit 2 free span, bits 8..32 the
//! number of reference fields, bits 32..64 the size in 8-byte words (header included). Every
//! old-generation segment is tiled by objects and free spans, so it can be walked from any
//! object start.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

use guest_abi::consts::*;
use guest_abi::{CriticalLevel, memory_available};

use crate::sys::{self, RuntimeScope, host, ticks};

pub const PAGE: usize = 4096;
/// The heap's reservation.
pub const RESERVE: usize = 64 << 30;
/// Address space at the start of the reservation set aside for the nursery.
const NURSERY_AREA: usize = 64 << 20;
/// Old-generation segment.
pub const SEG: usize = 1 << 20;
/// Objects larger than this are allocated in the old generation directly.
pub(crate) const LARGE: usize = 16 << 10;
/// Largest object (it must fit in a segment).
pub const MAX_OBJECT: usize = SEG - 64;
/// A major collection runs when the old generation's estimated use exceeds
/// max(MIN_BUDGET, GROWTH × what survived the last major collection).
const MIN_BUDGET: usize = 16 << 20;
const GROWTH: usize = 3;

const BUCKETS: usize = 12;

fn class_floor(len: usize) -> usize {
    ((63 - len.leading_zeros() as usize).saturating_sub(4)).min(BUCKETS - 1)
}
/// The smallest class whose every span holds `len` bytes.
fn class_ceil(len: usize) -> usize {
    let len = len.max(16);
    ((64 - (len - 1).leading_zeros() as usize) - 4).min(BUCKETS - 1)
}

const FWD: u64 = 1;
pub(crate) const MARK: u64 = 2;
const FREE: u64 = 4;

pub(crate) const fn header(nrefs: usize, words: usize, flags: u64) -> u64 {
    ((words as u64) << 32) | ((nrefs as u64) << 8) | flags
}
pub(crate) fn words_of(h: u64) -> usize {
    (h >> 32) as usize
}
pub(crate) fn nrefs_of(h: u64) -> usize {
    ((h >> 8) & 0xFF_FFFF) as usize
}

/// Reads word `i` of the object at `p`.
#[inline(always)]
pub fn word(p: usize, i: usize) -> usize {
    // SAFETY: runtime and workload code only pass live objects of the heap and indices within them.
    unsafe { ((p + 8 * i) as *const usize).read() }
}
/// Writes word `i` of the object at `p`.
#[inline(always)]
pub fn set_word(p: usize, i: usize, v: usize) {
    // SAFETY: as in word.
    unsafe { ((p + 8 * i) as *mut usize).write(v) }
}
pub(crate) fn hdr(p: usize) -> u64 {
    word(p, 0) as u64
}
pub(crate) fn set_hdr(p: usize, h: u64) {
    set_word(p, 0, h as usize)
}

/// Reference field `i` (0-based) of an object: word `1 + i`.
#[inline(always)]
pub fn get_ref(p: usize, i: usize) -> usize {
    word(p, 1 + i)
}
/// Stores reference field `i`. A plain store: the host's write watch is the only barrier.
#[inline(always)]
pub fn set_ref(p: usize, i: usize, v: usize) {
    set_word(p, 1 + i, v)
}
/// Data word `j` of an object with `nrefs` reference fields.
#[inline(always)]
pub fn get_data(p: usize, nrefs: usize, j: usize) -> usize {
    word(p, 1 + nrefs + j)
}
#[inline(always)]
pub fn set_data(p: usize, nrefs: usize, j: usize, v: usize) {
    set_word(p, 1 + nrefs + j, v)
}
/// Number of data words of an object.
pub fn data_len(p: usize) -> usize {
    let h = hdr(p);
    words_of(h) - 1 - nrefs_of(h)
}

/// Managed failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManagedError {
    OutOfMemory,
    StackOverflow,
}

/// Global handles: roots every thread can read (an object all threads share); the collector
/// updates them like the root stacks.
pub static HANDLES: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];

/// Set by the notification callback when the host says memory is low.
pub static COLLECT_NOW: AtomicBool = AtomicBool::new(false);
/// The band of the last notification (0 before the first).
pub static BAND: AtomicU32 = AtomicU32::new(0);
/// Print a line per collection.
pub static TRACE: AtomicBool = AtomicBool::new(false);
/// Notifications received, by `EMemoryAvailable` (index 1 low, 2 neutral, 3 high).
pub static NOTIFICATIONS: [AtomicU32; 4] = [AtomicU32::new(0), AtomicU32::new(0), AtomicU32::new(0), AtomicU32::new(0)];

extern "C" fn cb_query_interface(_: *mut guest_abi::MemoryNotificationCallback, _: *const [u8; 16], out: *mut *mut core::ffi::c_void) -> guest_abi::HResult {
    if !out.is_null() {
        // SAFETY: the host passes a valid out-pointer or NULL.
        unsafe { *out = core::ptr::null_mut() };
    }
    guest_abi::HResult::E_NOINTERFACE
}
extern "C" fn cb_add_ref(_: *mut guest_abi::MemoryNotificationCallback) -> u32 {
    1
}
extern "C" fn cb_release(_: *mut guest_abi::MemoryNotificationCallback) -> u32 {
    1
}
/// `OnMemoryNotification`: runs as a callback the host makes during some host call of ours; it must neither
/// allocate nor collect, so it only records the news.
extern "C" fn cb_on_memory_notification(_: *mut guest_abi::MemoryNotificationCallback, band: u32) -> guest_abi::HResult {
    if (1..=3).contains(&band) {
        NOTIFICATIONS[band as usize].fetch_add(1, Ordering::SeqCst);
    }
    BAND.store(band, Ordering::SeqCst);
    if band == memory_available::LOW {
        COLLECT_NOW.store(true, Ordering::SeqCst);
    }
    guest_abi::HResult::S_OK
}
static CALLBACK_VTBL: guest_abi::MemoryNotificationCallbackVtbl = guest_abi::MemoryNotificationCallbackVtbl {
    query_interface: cb_query_interface,
    add_ref: cb_add_ref,
    release: cb_release,
    on_memory_notification: cb_on_memory_notification,
};
/// The runtime's `ICLRMemoryNotificationCallback` object.
pub static CALLBACK: guest_abi::MemoryNotificationCallback = guest_abi::MemoryNotificationCallback { vtbl: &CALLBACK_VTBL };

/// Why a collection ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Budget,
    Notification,
    OutOfMemory,
    Requested,
}

/// GC statistics.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub minor: u64,
    pub major: u64,
    pub minor_pause_total: u64,
    pub minor_pause_max: u64,
    pub major_pause_total: u64,
    pub major_pause_max: u64,
    pub by_notification: u64,
    pub by_budget: u64,
    pub by_oom: u64,
    pub managed_oom: u64,
    pub promoted_bytes: u64,
    pub promoted_objects: u64,
    pub dirty_pages: u64,
    pub dirty_objects_scanned: u64,
    pub committed_bytes: u64,
    pub decommitted_bytes: u64,
    pub reset_bytes: u64,
    pub critical_commits: u64,
    pub failed_commits: u64,
    pub heap_committed: u64,
    pub heap_committed_peak: u64,
    pub guest_committed_peak: u64,
    pub swept_bytes: u64,
    pub compactions: u64,
    pub compacted_bytes: u64,
    pub live_after_major: u64,
    /// Marking (major collections): wall time, time the GC threads spent on it together,
    /// objects taken from another thread's queue, GC threads that marked.
    pub mark_wall_ns: u64,
    pub mark_busy_ns: u64,
    pub mark_steals: u64,
    pub mark_workers: u64,
    /// Stop-the-world pauses: time from the request until every mutator was parked, and the
    /// whole pause (safepoint wait, collection, restart), max and total.
    pub safepoint_wait_max: u64,
    pub stw_pause_max: u64,
    pub stw_pause_total: u64,
    pub stw_pauses: u64,
}

/// An old-generation segment.
struct Segment {
    committed: bool,
    /// Object-start bitmap: one bit per 8-byte granule (an `IHostMalloc` block, SEG/64 bytes).
    starts: *mut u64,
}

/// An allocation context in the nursery, as the bump stub sees it: [cursor, limit].
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct AllocContext {
    pub cursor: usize,
    pub limit: usize,
}

/// The bump-allocation helper: returns the old cursor and advances it, or 0 if the request does
/// not fit (an executable stub; see `stubs.rs`).
pub type BumpFn = extern "C" fn(*mut AllocContext, usize) -> usize;

pub extern "C" fn bump_in_rust(ctx: *mut AllocContext, size: usize) -> usize {
    // SAFETY: a mutator passes its own context.
    let ctx = unsafe { &mut *ctx };
    let p = ctx.cursor;
    if p + size > ctx.limit {
        return 0;
    }
    ctx.cursor = p + size;
    p
}

/// The root stacks of every mutator, for one collection (the world is stopped: their owners
/// are parked and touch them no more until it ends).
pub type RootStacks = [*mut Vec<usize>];

pub struct Heap {
    pub base: usize,
    pub nursery: usize,
    pub nursery_size: usize,
    /// The nursery is handed out up to here; objects and filler spans tile [nursery, top).
    pub nursery_top: usize,
    /// Bytes an allocation context gets at a time.
    chunk: usize,
    pub old_base: usize,
    max_segments: usize,
    segments: Vec<Segment>,
    /// Free spans (address, bytes) by size class (segregated fits): class k holds spans of
    /// [16 << k, 16 << (k + 1)) bytes, the last class everything larger.
    buckets: [Vec<(usize, usize)>; BUCKETS],
    /// Bytes in the buckets.
    free_bytes: usize,
    /// The span being bump-allocated in: [cur, cur_end), always formatted as a free span.
    cur: usize,
    cur_end: usize,
    /// The mutators' root stacks while a collection runs (empty otherwise).
    root_stacks: Vec<*mut Vec<usize>>,
    worklist: Vec<usize>,
    dirty: Vec<usize>,
    /// Dirty pages taken by a major collection that ran with young objects, for the minor
    /// collection that follows it.
    pending_dirty: Vec<usize>,
    pub stats: Stats,
    /// Old-generation bytes allocated since the last major collection (promotions, large objects).
    old_since_major: usize,
    /// Old-generation bytes marked by the current major collection.
    marked_bytes: usize,
    marked_objects: usize,
    /// Young bytes marked by the current major collection (what a minor one would promote).
    marked_young: usize,
}

// SAFETY: the raw pointers of a heap (object-start bitmaps) are IHostMalloc blocks it owns; the
// heap lives behind a mutex (mutator.rs), so one thread at a time uses them.
unsafe impl Send for Heap {}

/// Commits [addr, addr + size) read-write.
///
/// # Safety
/// The range is an uncommitted part of the heap's reservation (only reserved: nothing lies there).
unsafe fn commit(addr: usize, size: usize, level: CriticalLevel) -> bool {
    // SAFETY: only reserved pages (caller): committing them touches nothing in use.
    unsafe { host().virtual_alloc(addr, size, MEM_COMMIT, PAGE_READWRITE, level) }.is_ok()
}

impl Heap {
    /// Reserves the heap and commits the nursery, which is handed out `threads` contexts at a
    /// time (one thread: the whole nursery is its allocation context).
    pub fn new(nursery_size: usize, threads: usize) -> Result<Heap, guest_abi::HResult> {
        let h = host();
        let base = h.allocate(RESERVE, MEM_RESERVE | MEM_WRITE_WATCH, PAGE_READWRITE, CriticalLevel::Task)?;
        let nursery_size = nursery_size.clamp(64 << 10, NURSERY_AREA) & !(PAGE - 1);
        // SAFETY: the start of the reservation just made, which nothing else knows of yet.
        unsafe { h.virtual_alloc(base, nursery_size, MEM_COMMIT, PAGE_READWRITE, CriticalLevel::Task) }?;
        let mut heap = Heap {
            base,
            nursery: base,
            nursery_size,
            nursery_top: base,
            chunk: if threads <= 1 { nursery_size } else { (nursery_size / (4 * threads)).max(16 << 10) & !7 },
            old_base: base + NURSERY_AREA,
            max_segments: (RESERVE - NURSERY_AREA) / SEG,
            segments: Vec::new(),
            buckets: Default::default(),
            free_bytes: 0,
            cur: 0,
            cur_end: 0,
            root_stacks: Vec::new(),
            worklist: Vec::with_capacity(1024),
            dirty: Vec::with_capacity(1024),
            pending_dirty: Vec::new(),
            stats: Stats::default(),
            old_since_major: 0,
            marked_bytes: 0,
            marked_objects: 0,
            marked_young: 0,
        };
        heap.stats.committed_bytes += nursery_size as u64;
        heap.stats.heap_committed = nursery_size as u64;
        heap.note_commit();
        Ok(heap)
    }

    fn in_nursery(&self, p: usize) -> bool {
        p.wrapping_sub(self.nursery) < self.nursery_size
    }

    fn note_commit(&mut self) {
        let s = &mut self.stats;
        s.heap_committed_peak = s.heap_committed_peak.max(s.heap_committed);
        let c = host().commit_info().committed;
        s.guest_committed_peak = s.guest_committed_peak.max(c);
    }

    /// Old-generation segments committed now.
    pub fn committed_segments(&self) -> usize {
        self.segments.iter().filter(|s| s.committed).count()
    }

    // ---- allocation contexts ---------------------------------------------------------------

    /// A new allocation context for an object of `bytes`: the next chunk of the nursery, or
    /// `None` when the nursery is used up (a collection is due).
    pub fn take_chunk(&mut self, bytes: usize) -> Option<AllocContext> {
        let end = self.nursery + self.nursery_size;
        let size = self.chunk.max(bytes).min(end - self.nursery_top);
        if size < bytes {
            return None;
        }
        let ctx = AllocContext { cursor: self.nursery_top, limit: self.nursery_top + size };
        self.nursery_top += size;
        Some(ctx)
    }

    /// Gives back what is left of an allocation context: it becomes a filler span, so objects
    /// and fillers still tile the nursery.
    pub fn retire(&self, ctx: &mut AllocContext) {
        if ctx.cursor < ctx.limit {
            set_hdr(ctx.cursor, header(0, (ctx.limit - ctx.cursor) / 8, FREE));
        }
        *ctx = AllocContext::default();
    }

    /// Calls `f` with every root of every mutator and every global handle (during a
    /// collection).
    fn each_root(&mut self, mut f: impl FnMut(&mut Self, &mut usize)) {
        for h in &HANDLES {
            let mut r = h.load(Ordering::SeqCst);
            f(self, &mut r);
            h.store(r, Ordering::SeqCst);
        }
        let stacks = core::mem::take(&mut self.root_stacks);
        for &stack in &stacks {
            // SAFETY: RootStacks' contract: the world is stopped, the owners are parked.
            for r in unsafe { &mut *stack }.iter_mut() {
                f(self, r);
            }
        }
        self.root_stacks = stacks;
    }

    /// Runs `f` (a collection) with the mutators' root stacks.
    pub fn with_roots<R>(&mut self, roots: &RootStacks, f: impl FnOnce(&mut Self) -> R) -> R {
        self.root_stacks.clear();
        self.root_stacks.extend_from_slice(roots);
        let r = f(self);
        self.root_stacks.clear();
        r
    }

    // ---- collections the allocation paths ask for -------------------------------------------

    /// The nursery is used up: the collection(s) that make room (see below).
    #[cold]
    pub fn nursery_full(&mut self) -> Result<(), ManagedError> {
        let _scope = RuntimeScope::enter();
        if COLLECT_NOW.swap(false, Ordering::SeqCst) {
            // The host said memory is low: collect everything now, before promoting anything.
            return self.collect(Reason::Notification);
        }
        // Promotion must not fail half-way: if the survivors might not fit in the old
        // generation's free space plus what the host still lets us commit, free old space first.
        let used = self.nursery_top - self.nursery;
        if self.usable_free() < used {
            let band = BAND.load(Ordering::SeqCst);
            if band == memory_available::LOW || band == memory_available::NEUTRAL {
                // The host said memory is not plentiful: free old space instead of committing.
                return self.collect(Reason::Notification);
            }
            let available = host().memory_load().map_or(0, |(_, a)| a as usize);
            if available < used - self.usable_free() + 2 * SEG {
                return self.collect(Reason::OutOfMemory);
            }
        }
        let critical_before = self.stats.critical_commits;
        self.minor();
        let band = BAND.load(Ordering::SeqCst);
        let live = self.stats.live_after_major as usize;
        if COLLECT_NOW.swap(false, Ordering::SeqCst) || (band == memory_available::LOW && self.usable_free() < 2 * self.nursery_size) {
            // Told that memory is low (now, or earlier and still so): collect the old
            // generation before it has to grow.
            self.major(Reason::Notification);
        } else if self.stats.critical_commits != critical_before {
            self.major(Reason::OutOfMemory);
        } else if band == memory_available::NEUTRAL && self.old_since_major > (2 * self.nursery_size).max(live / 2) {
            // Memory is no longer plentiful (the host's neutral band): a tighter budget, so
            // the heap grows by half its live size at most before a major collection.
            self.major(Reason::Notification);
        } else if self.old_since_major > MIN_BUDGET.max(GROWTH * live) {
            self.major(Reason::Budget);
        }
        Ok(())
    }

    /// A large object in the old generation, without collecting (the mutator collects and
    /// retries when this fails).
    pub fn alloc_large(&mut self, nrefs: usize, words: usize) -> Option<usize> {
        let bytes = words * 8;
        let p = self.old_alloc(bytes, CriticalLevel::Task)?;
        set_hdr(p, header(nrefs, words, 0));
        // SAFETY: p..p+bytes was just carved out of a committed segment.
        unsafe { core::ptr::write_bytes((p + 8) as *mut u8, 0, bytes - 8) };
        self.old_since_major += bytes;
        Some(p)
    }

    fn segment_of(&self, p: usize) -> usize {
        (p - self.old_base) / SEG
    }

    fn set_start(&self, p: usize, on: bool) {
        let seg = &self.segments[self.segment_of(p)];
        let g = (p - self.old_base) % SEG / 8;
        // SAFETY: the bitmap of a committed segment has SEG/8 bits.
        unsafe {
            let w = seg.starts.add(g / 64);
            if on {
                *w |= 1 << (g % 64);
            } else {
                *w &= !(1 << (g % 64));
            }
        }
    }

    /// The last object start at or below `p` (in a committed segment).
    fn object_start_before(&self, p: usize) -> usize {
        let seg_index = self.segment_of(p);
        let seg_base = self.old_base + seg_index * SEG;
        let starts = self.segments[seg_index].starts;
        let mut g = (p - seg_base) / 8;
        loop {
            // SAFETY: g < SEG/8, inside the bitmap.
            let w = unsafe { *starts.add(g / 64) } & (u64::MAX >> (63 - g % 64));
            if w != 0 {
                return seg_base + ((g / 64) * 64 + 63 - w.leading_zeros() as usize) * 8;
            }
            if g < 64 {
                // A segment always starts with an object or a free span.
                return seg_base;
            }
            g = (g / 64) * 64 - 1;
        }
    }

    /// Carves `bytes` out of the old generation: the current span, then a free span of a class
    /// that fits (segregated fits; the rest of a span goes back to its class), then a newly
    /// committed segment. `None` if no segment could be committed at `level`.
    fn old_alloc(&mut self, bytes: usize, level: CriticalLevel) -> Option<usize> {
        loop {
            if self.cur_end - self.cur >= bytes {
                let p = self.cur;
                self.cur += bytes;
                self.set_start(p, true);
                if self.cur < self.cur_end {
                    set_hdr(self.cur, header(0, (self.cur_end - self.cur) / 8, FREE));
                    self.set_start(self.cur, true);
                }
                return Some(p);
            }
            // The rest of the current span (formatted as a free span) goes back to its class.
            if self.cur_end - self.cur >= 16 {
                self.push_span(self.cur, self.cur_end - self.cur);
            }
            self.cur = 0;
            self.cur_end = 0;
            if let Some((a, n)) = self.take_span(bytes) {
                self.cur = a;
                self.cur_end = a + n;
                continue;
            }
            let seg = self.commit_segment(level)?;
            self.cur = seg;
            self.cur_end = seg + SEG;
        }
    }

    fn push_span(&mut self, a: usize, n: usize) {
        self.buckets[class_floor(n)].push((a, n));
        self.free_bytes += n;
    }

    fn take_span(&mut self, bytes: usize) -> Option<(usize, usize)> {
        let k0 = class_ceil(bytes);
        for k in k0..BUCKETS - 1 {
            if let Some(span) = self.buckets[k].pop() {
                self.free_bytes -= span.1;
                return Some(span);
            }
        }
        let last = &mut self.buckets[BUCKETS - 1];
        let i = last.iter().rposition(|&(_, n)| n >= bytes)?;
        let span = last.swap_remove(i);
        self.free_bytes -= span.1;
        Some(span)
    }

    /// A conservative estimate of the old-generation space promotions can use without
    /// committing: the current span and half of every free span of 1 KiB or more (smaller ones
    /// may fit nothing). A promotion that still finds no room may use the critical reserve.
    fn usable_free(&self) -> usize {
        let big: usize = self.buckets[6..].iter().flat_map(|b| b.iter()).map(|&(_, n)| n / 2).sum();
        big + (self.cur_end - self.cur)
    }

    /// Commits the lowest uncommitted segment; formats it as one free span.
    fn commit_segment(&mut self, level: CriticalLevel) -> Option<usize> {
        let index = match self.segments.iter().position(|s| !s.committed) {
            Some(i) => i,
            None if self.segments.len() < self.max_segments => {
                self.segments.push(Segment { committed: false, starts: core::ptr::null_mut() });
                self.segments.len() - 1
            }
            None => return None,
        };
        let addr = self.old_base + index * SEG;
        let bitmap_bytes = SEG / 64;
        let starts = vec_block(bitmap_bytes)?;
        // SAFETY: segment `index` is not committed (or is new): its pages are only reserved.
        if !unsafe { commit(addr, SEG, level) } {
            self.stats.failed_commits += 1;
            free_block(starts);
            return None;
        }
        if level == CriticalLevel::Process {
            self.stats.critical_commits += 1;
        }
        self.segments[index] = Segment { committed: true, starts };
        set_hdr(addr, header(0, SEG / 8, FREE));
        self.set_start(addr, true);
        self.stats.committed_bytes += SEG as u64;
        self.stats.heap_committed += SEG as u64;
        self.note_commit();
        Some(addr)
    }

    /// Old-generation range that may hold committed segments.
    fn old_range(&self) -> (usize, usize) {
        (self.old_base, self.segments.len() * SEG)
    }

    // ---- collections ---------------------------------------------------------------------

    /// A full collection. If the nursery's survivors surely fit in the old generation: a minor
    /// collection, then a major one (which may compact). Else a major collection that marks
    /// through the nursery too (so the old generation's garbage is freed before anything is
    /// promoted), then a minor one. If even then the survivors cannot fit in the free space plus
    /// what the host still lets the runtime commit, nothing is promoted and the result is a
    /// managed `OutOfMemory` (the nursery stays full until the program drops something).
    pub fn collect(&mut self, reason: Reason) -> Result<(), ManagedError> {
        let _scope = RuntimeScope::enter();
        if self.usable_free() >= self.nursery_top - self.nursery {
            self.minor();
            self.major(reason);
        } else {
            self.major(reason);
            let available = host().memory_load().map_or(0, |(_, a)| a as usize);
            if self.marked_young > self.free_bytes + (self.cur_end - self.cur) + available {
                self.unmark_nursery();
                self.stats.managed_oom += 1;
                COLLECT_NOW.store(false, Ordering::SeqCst);
                return Err(ManagedError::OutOfMemory);
            }
            self.minor();
            // The nursery is empty now: if the old generation is mostly holes, compact it.
            let committed = self.committed_segments();
            if committed >= 4 && (self.stats.live_after_major as usize + self.old_since_major) * 2 < committed * SEG {
                self.major(reason);
            }
        }
        COLLECT_NOW.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Clears the marks a major collection left on young objects (when no minor collection
    /// follows it). The nursery is bump-allocated: its objects lie end to end.
    fn unmark_nursery(&mut self) {
        let mut obj = self.nursery;
        while obj < self.nursery_top {
            let h = hdr(obj);
            set_hdr(obj, h & !MARK);
            obj += words_of(h) * 8;
        }
    }

    /// Promotes `p` if it is young; returns its (new) address.
    #[inline]
    fn forward(&mut self, p: usize) -> usize {
        if !self.in_nursery(p) {
            return p;
        }
        let h = hdr(p);
        if h & FWD != 0 {
            return (h & !FWD) as usize;
        }
        let bytes = words_of(h) * 8;
        let q = match self.old_alloc(bytes, CriticalLevel::Task) {
            Some(q) => q,
            // A collection cannot stop half-way: this commit is the one whose failure would be
            // fatal, so it may use the host's critical reserve.
            None => match self.old_alloc(bytes, CriticalLevel::Process) {
                Some(q) => q,
                None => {
                    crate::out!("gc-runtime: fatal: out of memory while promoting ({} bytes)\n", bytes);
                    host().exit(0xE000_0001_u32 as i32)
                }
            },
        };
        // SAFETY: both are heap blocks of `bytes` bytes; they do not overlap (nursery vs old).
        unsafe { core::ptr::copy_nonoverlapping(p as *const u8, q as *mut u8, bytes) };
        // A full collection marks young objects too; the copy starts unmarked.
        set_hdr(q, h & !MARK);
        set_hdr(p, q as u64 | FWD);
        self.worklist.push(q);
        self.stats.promoted_bytes += bytes as u64;
        self.stats.promoted_objects += 1;
        self.old_since_major += bytes;
        q
    }

    fn scan_fields(&mut self, obj: usize, from: usize, to: usize) {
        let h = hdr(obj);
        let first = obj + 8;
        let end = first + nrefs_of(h) * 8;
        let mut f = first.max(from);
        while f < end.min(to) {
            // SAFETY: f is a reference field of a live object.
            let v = unsafe { *(f as *const usize) };
            if v != 0 && self.in_nursery(v) {
                let n = self.forward(v);
                // SAFETY: as above.
                unsafe { *(f as *mut usize) = n };
            }
            f += 8;
        }
    }

    /// Collects the dirty old pages (resetting their marks) into `self.dirty`.
    fn take_dirty_pages(&mut self) {
        self.dirty.clear();
        self.dirty.append(&mut self.pending_dirty);
        let (base, size) = self.old_range();
        if size == 0 {
            return;
        }
        let mut buf = [0usize; 256];
        loop {
            match host().get_write_watch(true, base, size, &mut buf) {
                Ok(n) => {
                    self.dirty.extend_from_slice(&buf[..n]);
                    if n < buf.len() {
                        break;
                    }
                }
                Err(e) => {
                    crate::out!("gc-runtime: fatal: GetWriteWatch failed with {e}\n");
                    host().exit(0xE000_0002_u32 as i32)
                }
            }
        }
    }

    fn reset_write_watch(&self) {
        let (base, size) = self.old_range();
        if size != 0 && let Err(e) = host().reset_write_watch(base, size) {
            crate::out!("gc-runtime: ResetWriteWatch failed with {e}\n");
        }
    }

    /// A minor collection: copies the nursery's survivors into the old generation. Roots: the
    /// root table and the old objects on pages the write watch reports written.
    pub fn minor(&mut self) {
        let _scope = RuntimeScope::enter();
        sys::set_critical(true);
        let t0 = ticks();
        self.take_dirty_pages();
        self.each_root(|heap, r| {
            if *r != 0 {
                *r = heap.forward(*r);
            }
        });
        let dirty = core::mem::take(&mut self.dirty);
        for &page in &dirty {
            let seg = self.segment_of(page);
            if !self.segments[seg].committed {
                continue;
            }
            self.stats.dirty_pages += 1;
            let seg_end = self.old_base + (seg + 1) * SEG;
            let mut obj = self.object_start_before(page);
            while obj < page + PAGE && obj < seg_end {
                let h = hdr(obj);
                let size = words_of(h) * 8;
                if h & FREE == 0 {
                    self.stats.dirty_objects_scanned += 1;
                    self.scan_fields(obj, page, page + PAGE);
                }
                obj += size;
            }
        }
        self.dirty = dirty;
        while let Some(obj) = self.worklist.pop() {
            self.scan_fields(obj, 0, usize::MAX);
        }
        // The nursery is empty: reuse it from the start; its old contents are garbage.
        let used = (self.nursery_top - self.nursery + PAGE - 1) & !(PAGE - 1);
        // SAFETY: every mutator is stopped and every live nursery object was copied out above,
        // the roots and old fields that referred to it forwarded: what is left is garbage, which
        // the heap reaches only by raw address and writes before it reads (bump allocation from
        // `nursery_top`, objects initialized when allocated). No Rust reference points there.
        if used > 0 && unsafe { host().virtual_alloc(self.nursery, used, MEM_RESET, PAGE_READWRITE, CriticalLevel::Task) }.is_ok() {
            self.stats.reset_bytes += used as u64;
        }
        self.nursery_top = self.nursery;
        // Nothing old points into the (empty) nursery now: start a new write-watch epoch.
        self.reset_write_watch();
        let dt = ticks() - t0;
        self.stats.minor += 1;
        self.stats.minor_pause_total += dt;
        self.stats.minor_pause_max = self.stats.minor_pause_max.max(dt);
        sys::set_critical(false);
    }

    /// Sliding compaction of the old generation (after marking, with the nursery empty): live
    /// objects move down in address order into the lowest committed segments, every reference is
    /// updated, and the segments left empty are decommitted. Returns the live bytes, or `None`
    /// (nothing changed) if the forwarding table cannot be allocated.
    fn compact(&mut self) -> Option<usize> {
        let segs: Vec<usize> = (0..self.segments.len()).filter(|&i| self.segments[i].committed).collect();
        // Compaction is optional (a sweep will do): its table is asked for at eTaskCritical.
        let mut fwd: Vec<(usize, usize)> = Vec::new();
        let mut fills: Vec<usize> = Vec::new();
        sys::set_critical(false);
        let got = fwd.try_reserve_exact(self.marked_objects).is_ok() && fills.try_reserve_exact(segs.len()).is_ok();
        sys::set_critical(true);
        if !got {
            return None;
        }
        // Plan: new addresses in address order.
        let old_base = self.old_base;
        let seg_base = |i: usize| old_base + i * SEG;
        let mut di = 0;
        let mut dst = seg_base(segs[0]);
        for &si in &segs {
            let mut obj = seg_base(si);
            while obj < seg_base(si) + SEG {
                let h = hdr(obj);
                let size = words_of(h) * 8;
                if h & FREE == 0 && h & MARK != 0 {
                    if dst + size > seg_base(segs[di]) + SEG {
                        fills.push(dst);
                        di += 1;
                        dst = seg_base(segs[di]);
                    }
                    fwd.push((obj, dst));
                    dst += size;
                }
                obj += size;
            }
        }
        fills.push(dst);
        let new_of = |p: usize| -> usize {
            match fwd.binary_search_by_key(&p, |&(old, _)| old) {
                Ok(i) => fwd[i].1,
                Err(_) => p,
            }
        };
        // Update every reference: roots and the fields of live objects (still at their old place).
        self.each_root(|_, r| {
            if *r != 0 {
                *r = new_of(*r);
            }
        });
        for &(old, _) in &fwd {
            for i in 0..nrefs_of(hdr(old)) {
                let r = get_ref(old, i);
                if r != 0 {
                    set_ref(old, i, new_of(r));
                }
            }
        }
        // Move, lowest first (a destination never overlaps a later object's source).
        let mut moved = 0usize;
        for &(old, new) in &fwd {
            let h = hdr(old) & !MARK;
            let size = words_of(h) * 8;
            if old != new {
                // SAFETY: both ranges lie in committed segments; copy handles the overlap.
                unsafe { core::ptr::copy(old as *const u8, new as *mut u8, size) };
                moved += size;
            }
            set_hdr(new, h);
        }
        // Rebuild the object-start bitmaps, format the tails, decommit what is left empty.
        for &si in &segs {
            // SAFETY: a committed segment's bitmap of SEG/64 bytes.
            unsafe { core::ptr::write_bytes(self.segments[si].starts, 0, SEG / 512) };
        }
        for &(_, new) in &fwd {
            self.set_start(new, true);
        }
        let mut live = 0;
        for (k, &si) in segs.iter().enumerate() {
            let base = seg_base(si);
            if k < fills.len() && !(k == fills.len() - 1 && fills[k] == base) {
                live += fills[k] - base;
                if fills[k] < base + SEG {
                    self.end_free_run(fills[k], base + SEG);
                }
            } else if
            // SAFETY: no live object was slid into this segment and every reference was forwarded
            // to the new places (the mutators are stopped): nothing refers into it, the heap
            // reaches it only by raw address, and it is marked uncommitted below.
            unsafe { host().virtual_free(base, SEG, MEM_DECOMMIT) }.is_ok() {
                free_block(self.segments[si].starts);
                self.segments[si] = Segment { committed: false, starts: core::ptr::null_mut() };
                self.stats.decommitted_bytes += SEG as u64;
                self.stats.heap_committed -= SEG as u64;
            } else {
                self.end_free_run(base, base + SEG);
            }
        }
        self.stats.compactions += 1;
        self.stats.compacted_bytes += moved as u64;
        Some(live)
    }

    /// A major collection: mark from the roots (through young objects too when the nursery is
    /// not empty), sweep the old generation into free spans, decommit empty segments and
    /// `MEM_RESET` the whole pages of the free spans it keeps.
    pub fn major(&mut self, reason: Reason) {
        let _scope = RuntimeScope::enter();
        sys::set_critical(true);
        let t0 = ticks();
        match reason {
            Reason::Notification => self.stats.by_notification += 1,
            Reason::Budget => self.stats.by_budget += 1,
            Reason::OutOfMemory => self.stats.by_oom += 1,
            _ => {}
        }
        let nursery_empty = self.nursery_top == self.nursery;
        self.marked_bytes = 0;
        self.marked_objects = 0;
        self.marked_young = 0;
        if !nursery_empty {
            // The sweep will write free-span headers all over the old generation: keep the pages
            // the mutator wrote for the minor collection that follows, and reset the watch after
            // the sweep.
            self.take_dirty_pages();
            self.pending_dirty = core::mem::take(&mut self.dirty);
        }
        // Mark, on every GC thread (mark.rs).
        let mut roots = Vec::new();
        self.each_root(|_, r| {
            if *r != 0 {
                roots.push(*r);
            }
        });
        let m = crate::mark::mark(self.nursery, self.nursery_size, &roots);
        drop(roots);
        self.marked_bytes = m.old_bytes;
        self.marked_objects = m.old_objects;
        self.marked_young = m.young_bytes;
        self.stats.mark_wall_ns += m.wall_ns;
        self.stats.mark_busy_ns += m.busy_ns;
        self.stats.mark_steals += m.steals;
        self.stats.mark_workers = self.stats.mark_workers.max(m.workers as u64);
        for b in self.buckets.iter_mut() {
            b.clear();
        }
        self.free_bytes = 0;
        self.cur = 0;
        self.cur_end = 0;
        // Compact when more than half of the committed old generation is garbage or holes (and
        // no young object refers to the old one), else sweep.
        let committed = self.committed_segments();
        let compacted = if nursery_empty && committed >= 4 && self.marked_bytes * 2 < committed * SEG { self.compact() } else { None };
        let mut live = compacted.unwrap_or(0);
        for index in 0..self.segments.len() {
            if compacted.is_some() {
                break;
            }
            if !self.segments[index].committed {
                continue;
            }
            let seg_base = self.old_base + index * SEG;
            let seg_end = seg_base + SEG;
            let mut obj = seg_base;
            let mut run: Option<usize> = None;
            let mut seg_live = 0usize;
            while obj < seg_end {
                let h = hdr(obj);
                let size = words_of(h) * 8;
                if h & FREE == 0 && h & MARK != 0 {
                    set_hdr(obj, h & !MARK);
                    seg_live += size;
                    if let Some(r) = run.take() {
                        self.end_free_run(r, obj);
                    }
                } else {
                    if h & FREE == 0 {
                        self.stats.swept_bytes += size as u64;
                    }
                    match run {
                        None => run = Some(obj),
                        Some(_) => self.set_start(obj, false),
                    }
                }
                obj += size;
            }
            // An empty segment is one run from its start: give its commit back.
            // SAFETY: (when `seg_live` is 0) nothing in the segment is marked, so nothing live
            // refers into it, and none of its spans went to the free lists (a run is kept only
            // when a live object ends it); the heap reaches it only by raw address and marks it
            // uncommitted below.
            if seg_live == 0 && unsafe { host().virtual_free(seg_base, SEG, MEM_DECOMMIT) }.is_ok() {
                free_block(self.segments[index].starts);
                self.segments[index] = Segment { committed: false, starts: core::ptr::null_mut() };
                self.stats.decommitted_bytes += SEG as u64;
                self.stats.heap_committed -= SEG as u64;
                continue;
            }
            if let Some(r) = run.take() {
                self.end_free_run(r, seg_end);
            }
            live += seg_live;
        }
        // Allocate from the lowest addresses first (buckets pop from their end), so live data
        // settles in the low segments and the high ones empty out and get decommitted.
        for b in self.buckets.iter_mut() {
            b.reverse();
        }
        self.old_since_major = 0;
        self.stats.live_after_major = live as u64;
        // The sweep's own writes are not the mutator's: start a new write-watch epoch.
        self.reset_write_watch();
        let dt = ticks() - t0;
        if TRACE.load(Ordering::Relaxed) {
            let info = host().commit_info();
            crate::out!(
                "gc-runtime: major #{} ({reason:?}): live {} KiB, free spans {} KiB, heap {} KiB committed, guest {} of {} KiB, {} us\n",
                self.stats.major + 1,
                live >> 10,
                self.free_bytes >> 10,
                self.stats.heap_committed >> 10,
                info.committed >> 10,
                info.commit_limit >> 10,
                dt / 1000
            );
        }
        self.stats.major += 1;
        self.stats.major_pause_total += dt;
        self.stats.major_pause_max = self.stats.major_pause_max.max(dt);
        self.note_commit();
        sys::set_critical(false);
    }

    /// Formats [start, end) as one free span, keeps it for allocation and resets its whole pages.
    fn end_free_run(&mut self, start: usize, end: usize) {
        set_hdr(start, header(0, (end - start) / 8, FREE));
        self.set_start(start, true);
        if end - start >= 16 {
            self.push_span(start, end - start);
        }
        let first = (start + 8 + PAGE - 1) & !(PAGE - 1);
        let last = end & !(PAGE - 1);
        // SAFETY: [first, last) are whole pages of a free span, past its header at `start`:
        // garbage the heap reaches only by raw address, and writes before it reads (an object
        // is initialized when allocated). No Rust reference points there.
        if last > first && unsafe { host().virtual_alloc(first, last - first, MEM_RESET, PAGE_READWRITE, CriticalLevel::Task) }.is_ok() {
            self.stats.reset_bytes += (last - first) as u64;
        }
    }

    /// Checks the heap's structure: every committed segment tiles exactly, every start bit is an
    /// object or span start, every reference points to an object start. Returns objects seen.
    pub fn verify(&self) -> Result<usize, &'static str> {
        let mut objects = 0;
        for (index, seg) in self.segments.iter().enumerate() {
            if !seg.committed {
                continue;
            }
            let seg_base = self.old_base + index * SEG;
            let mut obj = seg_base;
            while obj < seg_base + SEG {
                let h = hdr(obj);
                if h & (FWD | MARK) != 0 || words_of(h) == 0 {
                    return Err("bad header in the old generation");
                }
                if self.object_start_before(obj) != obj {
                    return Err("object-start bitmap disagrees with the heap");
                }
                if h & FREE == 0 {
                    objects += 1;
                    for i in 0..nrefs_of(h) {
                        let r = get_ref(obj, i);
                        if r != 0 && (self.in_nursery(r) && r >= self.nursery_top || !self.in_nursery(r) && !self.is_old_object(r)) {
                            return Err("reference to no object");
                        }
                    }
                }
                obj += words_of(h) * 8;
            }
            if obj != seg_base + SEG {
                return Err("segment not tiled exactly");
            }
        }
        Ok(objects)
    }

    fn is_old_object(&self, p: usize) -> bool {
        if p < self.old_base || p >= self.old_base + self.segments.len() * SEG || p % 8 != 0 {
            return false;
        }
        let seg = &self.segments[self.segment_of(p)];
        seg.committed && self.object_start_before(p) == p && hdr(p) & FREE == 0
    }
}

/// A zeroed block of the runtime's data heap (for bitmaps: eTaskCritical outside collections).
fn vec_block(bytes: usize) -> Option<*mut u64> {
    let layout = core::alloc::Layout::from_size_align(bytes, 16).ok()?;
    // SAFETY: a non-zero size.
    let p = unsafe { alloc::alloc::alloc_zeroed(layout) };
    (!p.is_null()).then_some(p.cast())
}

fn free_block(p: *mut u64) {
    if p.is_null() {
        return;
    }
    // SAFETY: allocated by vec_block with this layout.
    unsafe { alloc::alloc::dealloc(p.cast(), core::alloc::Layout::from_size_align_unchecked(SEG / 64, 16)) };
}
