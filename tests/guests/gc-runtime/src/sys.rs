//! The runtime's link to the host: the `Host` it was started with, console output, its own data
//! allocations (`Vec`s of roots, mark stacks, object-start bitmaps...), which all go through a
//! `MALLOC_THREADSAFE` `IHostMalloc` heap as the CLR's do under a hosting host, and the state each
//! thread of the runtime keeps for itself ([`ThreadState`], found from the stack it runs on).

use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use guest_abi::{CriticalLevel, Host, MALLOC_THREADSAFE, Malloc};

static HOST: AtomicUsize = AtomicUsize::new(0);

/// Records the host for the rest of the run (the `Host` lives in `guest_main`'s frame, which
/// outlives everything the runtime does).
pub fn set_host(h: &Host) {
    HOST.store(h as *const Host as usize, Ordering::SeqCst);
}

/// The host.
pub fn host() -> &'static Host {
    // SAFETY: set by set_host before anything else runs; see there for the lifetime.
    unsafe { &*(HOST.load(Ordering::SeqCst) as *const Host) }
}

/// `print!` through the host console, one write per call (so lines of different threads do not
/// mix).
#[macro_export]
macro_rules! out {
    ($($t:tt)*) => {{
        $crate::sys::host().print(&alloc::format!($($t)*));
    }};
}

/// What each thread of the runtime keeps for itself: its stacks, its managed stack's catch
/// point (`stack.rs`), and how deep it is in runtime code. A thread's state is found from the
/// stack it runs on ([`current`]): every thread runs either on the stack the host made for it or
/// on its managed stack, and no two threads share one. (The FS base would do as well, but this
/// needs no host call and survives whatever a handler's resume does to segment bases.)
#[repr(C)]
pub struct ThreadState {
    /// Nesting depth of runtime code (allocation slow paths, collections, IHostMalloc calls). A
    /// stack overflow while it is non-zero cannot be unwound safely: the stack handler lets such
    /// code use an emergency zone instead (see `stack.rs`).
    pub in_runtime: AtomicU32,
    /// The managed stack, [lo, hi) (0, 0: none).
    pub stack_lo: AtomicUsize,
    pub stack_hi: AtomicUsize,
    /// Just above the frames of the stack the host made for the thread (0: not entered).
    pub thread_stack_top: AtomicUsize,
    /// The catch point: rsp after the landing code's pushes, and the landing code's address.
    pub jmp: [AtomicU64; 2],
    /// Set by the handler when it raised a managed exception (1 = stack overflow).
    pub pending: AtomicU64,
}

impl ThreadState {
    pub const fn new() -> ThreadState {
        ThreadState {
            in_runtime: AtomicU32::new(0),
            stack_lo: AtomicUsize::new(0),
            stack_hi: AtomicUsize::new(0),
            thread_stack_top: AtomicUsize::new(0),
            jmp: [AtomicU64::new(0), AtomicU64::new(0)],
            pending: AtomicU64::new(0),
        }
    }

    fn owns(&self, sp: usize) -> bool {
        let top = self.thread_stack_top.load(Ordering::Relaxed);
        (top.saturating_sub(THREAD_STACK)..top).contains(&sp)
            || (self.stack_lo.load(Ordering::Relaxed)..self.stack_hi.load(Ordering::Relaxed)).contains(&sp)
    }
}

/// How far below its first frame a thread's host-made stack may reach (its 1 MiB reservation).
const THREAD_STACK: usize = 1 << 20;

/// The main thread's state (and the fallback).
static MAIN_STATE: ThreadState = ThreadState::new();
/// Every runtime thread's state (the main one first).
static STATES: [AtomicPtr<ThreadState>; 80] = [const { AtomicPtr::new(core::ptr::null_mut()) }; 80];

fn stack_pointer() -> usize {
    let sp: usize;
    // SAFETY: reads rsp, nothing else.
    unsafe { core::arch::asm!("mov {}, rsp", out(reg) sp, options(nomem, nostack, preserves_flags)) };
    sp
}

/// Registers `state` as the calling thread's: first thing on each runtime thread, from the
/// thread's first frame (its stack above that is the host's start-up code only).
#[inline(never)]
pub fn enter_thread(state: &'static ThreadState) {
    state.thread_stack_top.store(stack_pointer() + 4096, Ordering::SeqCst);
    let p = state as *const ThreadState as *mut ThreadState;
    // (More threads than slots: they run as the main thread's state, without managed stack
    // overflows.)
    let _ = STATES.iter().any(|slot| slot.compare_exchange(core::ptr::null_mut(), p, Ordering::SeqCst, Ordering::SeqCst).is_ok());
}

/// Sets up the main thread's state (before any other runtime thread starts).
pub fn enter_main_thread() {
    enter_thread(&MAIN_STATE);
}

/// The calling thread's state.
pub fn current() -> &'static ThreadState {
    let sp = stack_pointer();
    state_where(|t| t.owns(sp)).unwrap_or(&MAIN_STATE)
}

fn state_where(f: impl Fn(&ThreadState) -> bool) -> Option<&'static ThreadState> {
    STATES.iter().map(|p| p.load(Ordering::Acquire)).take_while(|p| !p.is_null()).find_map(|p| {
        // SAFETY: STATES holds only statics and leaked states (enter_thread).
        let t = unsafe { &*p };
        f(t).then_some(t)
    })
}

/// The state of the thread whose managed stack holds `addr`: the thread a fault there happened
/// on (each managed stack belongs to one thread).
pub fn state_of_stack(addr: usize) -> Option<&'static ThreadState> {
    state_where(|t| (t.stack_lo.load(Ordering::SeqCst)..t.stack_hi.load(Ordering::SeqCst)).contains(&addr))
}

/// Marks runtime code for its lifetime.
pub struct RuntimeScope(&'static ThreadState);

impl RuntimeScope {
    pub fn enter() -> RuntimeScope {
        let t = current();
        t.in_runtime.fetch_add(1, Ordering::SeqCst);
        RuntimeScope(t)
    }
}

impl Drop for RuntimeScope {
    fn drop(&mut self) {
        self.0.in_runtime.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Critical level of the runtime's own allocations: eTaskCritical normally; a collection in
/// progress raises it to eProcessCritical, because a collection that cannot get its mark stack
/// or promotion list cannot stop half-way (the one place where failure would be fatal).
static LEVEL: AtomicU32 = AtomicU32::new(0);

pub fn set_critical(on: bool) {
    LEVEL.store(if on { 2 } else { 0 }, Ordering::SeqCst);
}

fn level() -> CriticalLevel {
    match LEVEL.load(Ordering::SeqCst) {
        2 => CriticalLevel::Process,
        _ => CriticalLevel::Task,
    }
}

/// The runtime's data heap, set once before any allocation (a pointer to a leaked `Malloc`).
static RUNTIME_HEAP: AtomicPtr<Malloc> = AtomicPtr::new(core::ptr::null_mut());
/// Blocks and bytes handed out by the runtime heap (for the statistics).
pub static MALLOC_CALLS: AtomicUsize = AtomicUsize::new(0);
pub static MALLOC_BYTES: AtomicUsize = AtomicUsize::new(0);
/// Addresses inside the runtime heap (its first and latest blocks; to label it in the
/// address-space picture).
pub static MALLOC_SAMPLE: AtomicUsize = AtomicUsize::new(0);
pub static MALLOC_FIRST: AtomicUsize = AtomicUsize::new(0);

/// Creates the runtime's data heap (`CreateMalloc(MALLOC_THREADSAFE)`: every thread of the
/// runtime allocates from it); before the first allocation.
pub fn init_runtime_heap(host: &Host) -> Result<(), guest_abi::HResult> {
    let m = host.create_malloc(MALLOC_THREADSAFE)?;
    // The Malloc lives in a static slot for the rest of the run (it is never released: the
    // guest's end frees its memory).
    static mut STORAGE: core::mem::MaybeUninit<Malloc> = core::mem::MaybeUninit::uninit();
    // SAFETY: start-up, one thread, called once: nothing else touches STORAGE.
    let p = unsafe { (*core::ptr::addr_of_mut!(STORAGE)).write(m) as *mut Malloc };
    RUNTIME_HEAP.store(p, Ordering::SeqCst);
    Ok(())
}

fn runtime_heap() -> Option<&'static Malloc> {
    let p = RUNTIME_HEAP.load(Ordering::Acquire);
    // SAFETY: set once by init_runtime_heap to a Malloc that lives for the rest of the run; its
    // methods take &self and the heap is MALLOC_THREADSAFE.
    (!p.is_null()).then(|| unsafe { &*p })
}

/// The global allocator: every `alloc` allocation of the runtime is an `IHostMalloc` block.
pub struct HostMallocAllocator;

// SAFETY: blocks come from IHostMalloc (16-byte aligned, exclusive until freed); larger alignments
// are served by over-allocating and keeping the block's address just below the aligned pointer.
unsafe impl GlobalAlloc for HostMallocAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _scope = RuntimeScope::enter();
        let Some(heap) = runtime_heap() else { return core::ptr::null_mut() };
        MALLOC_CALLS.fetch_add(1, Ordering::Relaxed);
        MALLOC_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        if layout.align() <= 16 {
            let p = heap.alloc(layout.size(), level()).unwrap_or(core::ptr::null_mut());
            MALLOC_SAMPLE.store(p as usize, Ordering::Relaxed);
            let _ = MALLOC_FIRST.compare_exchange(0, p as usize, Ordering::Relaxed, Ordering::Relaxed);
            return p;
        }
        let Ok(raw) = heap.alloc(layout.size() + layout.align(), level()) else { return core::ptr::null_mut() };
        let aligned = (raw as usize + layout.align()) & !(layout.align() - 1);
        // SAFETY: aligned - 8 >= raw, inside the block.
        unsafe { ((aligned - 8) as *mut usize).write(raw as usize) };
        aligned as *mut u8
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let _scope = RuntimeScope::enter();
        let Some(heap) = runtime_heap() else { return };
        let block = if layout.align() <= 16 {
            ptr
        } else {
            // SAFETY: alloc stored the block's address there.
            unsafe { ((ptr as usize - 8) as *const usize).read() as *mut u8 }
        };
        // SAFETY: `dealloc`'s contract: the block was allocated by `alloc` on this heap and the
        // caller uses it no more.
        if unsafe { heap.free(block) }.is_err() {
            crate::out!("gc-runtime: IHostMalloc refused to free {block:p}\n");
        }
    }
}

#[global_allocator]
static ALLOCATOR: HostMallocAllocator = HostMallocAllocator;

/// Ticks (the host's monotonic nanoseconds).
pub fn ticks() -> u64 {
    host().ticks_ns()
}

/// Bytes as a short human string.
pub struct Size(pub u64);

impl core::fmt::Display for Size {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let b = self.0;
        let s = if b >= 1 << 30 {
            alloc::format!("{}.{} GiB", b >> 30, ((b & 0x3FFF_FFFF) * 10) >> 30)
        } else if b >= 1 << 20 {
            alloc::format!("{}.{} MiB", b >> 20, ((b & 0xFFFFF) * 10) >> 20)
        } else if b >= 1 << 10 {
            alloc::format!("{} KiB", b >> 10)
        } else {
            alloc::format!("{b} B")
        };
        f.pad(&s)
    }
}
