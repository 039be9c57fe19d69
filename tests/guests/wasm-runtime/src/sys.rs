//! The runtime's link to the host: the `Host` it was started with, console output, and the
//! global allocator, whose every block is an `IHostMalloc` block (Wasmtime's own data: module
//! metadata, stores, instances, WASI state).

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use guest_abi::{CriticalLevel, Host, Malloc};

static HOST: AtomicPtr<Host> = AtomicPtr::new(core::ptr::null_mut());
/// Bytes the global allocator has handed out and not yet taken back.
pub static HEAP_LIVE: AtomicUsize = AtomicUsize::new(0);

/// The runtime heap's handle, written once by `init` before the first allocation.
struct HeapCell(UnsafeCell<Option<Malloc>>);
// SAFETY: written once by `init` before anything allocates, only read afterwards; the guest has
// one thread.
unsafe impl Sync for HeapCell {}
static HEAP: HeapCell = HeapCell(UnsafeCell::new(None));

/// Records the host and creates the runtime's heap (`CreateMalloc(0)`: the guest runs one
/// thread); before anything allocates. The `Host` lives in `guest_main`'s frame, which outlives
/// the runtime's work; the heap is never released (the guest's address space goes with it).
pub fn init(host: &Host) -> Result<(), guest_abi::HResult> {
    HOST.store(core::ptr::from_ref(host).cast_mut(), Ordering::SeqCst);
    let heap = host.create_malloc(0)?;
    // SAFETY: single-threaded start-up, nothing has allocated yet, so no reader exists.
    unsafe { *HEAP.0.get() = Some(heap) };
    Ok(())
}

/// The host.
pub fn host() -> &'static Host {
    let p = HOST.load(Ordering::SeqCst);
    assert!(!p.is_null(), "the host is used before sys::init");
    // SAFETY: set by init from guest_main's `Host`, which lives for the whole run.
    unsafe { &*p }
}

/// `print!` through the host console.
#[macro_export]
macro_rules! out {
    ($($t:tt)*) => {{
        let _ = core::fmt::Write::write_fmt(&mut guest_abi::Console($crate::sys::host()), format_args!($($t)*));
    }};
}

fn heap() -> Option<&'static Malloc> {
    // SAFETY: see HeapCell: after init the contents never change.
    unsafe { (*HEAP.0.get()).as_ref() }
}

/// The global allocator over `IHostMalloc` (blocks are 16-byte aligned; larger alignments
/// over-allocate and keep the block's address just below the aligned pointer).
struct HostMallocAllocator;

// SAFETY: blocks come from IHostMalloc, exclusive until freed, at least `layout.size()` bytes
// from the returned (aligned) pointer.
unsafe impl GlobalAlloc for HostMallocAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(heap) = heap() else { return core::ptr::null_mut() };
        let p = if layout.align() <= 16 {
            heap.alloc(layout.size(), CriticalLevel::Task).unwrap_or(core::ptr::null_mut())
        } else {
            let Ok(raw) = heap.alloc(layout.size() + layout.align(), CriticalLevel::Task) else { return core::ptr::null_mut() };
            let aligned = (raw as usize + layout.align()) & !(layout.align() - 1);
            // SAFETY: raw + 8 <= aligned - 8 + 8 <= raw + align: the slot lies inside the block.
            unsafe { ((aligned - 8) as *mut usize).write(raw as usize) };
            aligned as *mut u8
        };
        if !p.is_null() {
            HEAP_LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some(heap) = heap() else { return };
        let block = if layout.align() <= 16 {
            ptr
        } else {
            // SAFETY: alloc stored the block's address there.
            unsafe { ((ptr as usize - 8) as *const usize).read() as *mut u8 }
        };
        HEAP_LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `dealloc`'s contract: the block was allocated by `alloc` on this heap and the
        // caller uses it no more.
        if unsafe { heap.free(block) }.is_err() {
            crate::out!("wasm-runtime: IHostMalloc refused to free {block:p}\n");
        }
    }
}

#[global_allocator]
static ALLOCATOR: HostMallocAllocator = HostMallocAllocator;

/// Bytes as a short string with one decimal (KiB, MiB, GiB).
pub fn size(bytes: u64) -> alloc::string::String {
    const UNITS: [(&str, u32); 3] = [("GiB", 30), ("MiB", 20), ("KiB", 10)];
    for (unit, shift) in UNITS {
        if bytes >= 1 << shift {
            let tenths = (bytes * 10) >> shift;
            return alloc::format!("{}.{} {unit}", tenths / 10, tenths % 10);
        }
    }
    alloc::format!("{bytes} B")
}
