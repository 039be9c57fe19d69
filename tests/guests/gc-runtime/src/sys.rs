//! The runtime's link to the host: the `Host` it was started with, console output, and its own
//! data allocations (`Vec`s of roots, mark stacks, object-start bitmaps...), which all go through
//! an `IHostMalloc` heap as the CLR's do under a hosting host.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use guest_abi::{CriticalLevel, Host, Malloc};

/// A cell for the runtime's single-threaded global state.
pub struct Global<T>(UnsafeCell<T>);

// SAFETY: the guest runs one thread; code the host calls back into (exception handlers, the
// notification callback) only touches atomics, never a `Global`.
unsafe impl<T> Sync for Global<T> {}

impl<T> Global<T> {
    pub const fn new(v: T) -> Self {
        Global(UnsafeCell::new(v))
    }
    /// # Safety
    /// No other reference to the contents may be live (single-threaded runtime code only).
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn get(&self) -> &mut T {
        // SAFETY: the caller guarantees exclusivity.
        unsafe { &mut *self.0.get() }
    }
}

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

/// `print!` through the host console.
#[macro_export]
macro_rules! out {
    ($($t:tt)*) => {{
        let _ = core::fmt::Write::write_fmt(&mut guest_abi::Console($crate::sys::host()), format_args!($($t)*));
    }};
}

/// Nesting depth of runtime code (allocation slow paths, collections, IHostMalloc calls). A
/// stack overflow while it is non-zero cannot be unwound safely: the stack handler lets such
/// code use an emergency zone instead (see `stack.rs`).
pub static IN_RUNTIME: AtomicU32 = AtomicU32::new(0);

/// Marks runtime code for its lifetime.
pub struct RuntimeScope;

impl RuntimeScope {
    pub fn enter() -> RuntimeScope {
        IN_RUNTIME.fetch_add(1, Ordering::SeqCst);
        RuntimeScope
    }
}

impl Drop for RuntimeScope {
    fn drop(&mut self) {
        IN_RUNTIME.fetch_sub(1, Ordering::SeqCst);
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

static RUNTIME_HEAP: Global<Option<Malloc>> = Global::new(None);
/// Blocks and bytes handed out by the runtime heap (for the statistics).
pub static MALLOC_CALLS: AtomicUsize = AtomicUsize::new(0);
pub static MALLOC_BYTES: AtomicUsize = AtomicUsize::new(0);
/// Addresses inside the runtime heap (its first and latest blocks; to label it in the
/// address-space picture).
pub static MALLOC_SAMPLE: AtomicUsize = AtomicUsize::new(0);
pub static MALLOC_FIRST: AtomicUsize = AtomicUsize::new(0);

/// Creates the runtime's data heap (`CreateMalloc(0)`); before the first allocation.
pub fn init_runtime_heap(host: &Host) -> Result<(), guest_abi::HResult> {
    let m = host.create_malloc(0)?;
    // SAFETY: single-threaded start-up, nothing allocated yet.
    unsafe { *RUNTIME_HEAP.get() = Some(m) };
    Ok(())
}

/// The global allocator: every `alloc` allocation of the runtime is an `IHostMalloc` block.
pub struct HostMallocAllocator;

// SAFETY: blocks come from IHostMalloc (16-byte aligned, exclusive until freed); larger alignments
// are served by over-allocating and keeping the block's address just below the aligned pointer.
unsafe impl GlobalAlloc for HostMallocAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _scope = RuntimeScope::enter();
        // SAFETY: runtime code is single-threaded and this borrow ends within the call.
        let Some(heap) = (unsafe { RUNTIME_HEAP.get() }).as_ref() else { return core::ptr::null_mut() };
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
        // SAFETY: as in alloc.
        let Some(heap) = (unsafe { RUNTIME_HEAP.get() }).as_ref() else { return };
        let block = if layout.align() <= 16 {
            ptr
        } else {
            // SAFETY: alloc stored the block's address there.
            unsafe { ((ptr as usize - 8) as *const usize).read() as *mut u8 }
        };
        if heap.free(block).is_err() {
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
