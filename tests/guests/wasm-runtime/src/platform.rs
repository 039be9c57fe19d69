//! Wasmtime's custom platform (`custom-virtual-memory`, `custom-native-signals`): the C functions
//! its `sys/custom` layer calls, written over `IHostMemoryManager` and `HOST_SERVICES` only.
//!
//! Mapping of the POSIX-like calls onto the Win32 model:
//! * `wasmtime_mmap_new(size, 0)` reserves (`MEM_RESERVE`, no commit charge): this is how every
//!   linear memory starts, as one reservation covering the optional guard before it, the 4 GiB
//!   it may grow into and the guard after it. With protections it reserves and commits.
//! * `wasmtime_mprotect(READ|WRITE)` on reserved pages commits them: this is what `memory.grow`
//!   (and instantiation) do, so a memory's commit charge is its current size. On committed pages
//!   it is `VirtualProtect` (publishing JIT code as read-execute, read-only data).
//!   `wasmtime_mprotect(0)` makes committed pages `PAGE_NOACCESS` (contents kept, as mprotect).
//! * `wasmtime_mmap_remap` (a fresh zeroed mapping in place) decommits, then commits again if
//!   protections are asked for; `wasmtime_munmap` of a whole mapping releases it, of a part of
//!   one decommits that part.
//! * Memory images (the initial contents of a linear memory) are a private read-only committed
//!   copy; mapping one commits the target pages and copies (there is no copy-on-write sharing).
//! * Traps: `traps.rs`. TLS: two statics (the guest has one thread).
//!
//! Errors are returned as the failed call's HRESULT (non-zero), which Wasmtime reports as
//! `os error N`.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicPtr, Ordering};

use guest_abi::consts::*;
use guest_abi::{CriticalLevel, HResult};

use crate::sys::host;

const PROT_READ: u32 = 1;
const PROT_WRITE: u32 = 2;
const PROT_EXEC: u32 = 4;
const PAGE: usize = 4096;

/// The Win32 protection for Wasmtime's flags (0 = no access).
fn win32_protection(prot: u32) -> u32 {
    let (r, w, x) = (prot & PROT_READ != 0, prot & PROT_WRITE != 0, prot & PROT_EXEC != 0);
    match (w, x) {
        (true, true) => PAGE_EXECUTE_READWRITE,
        (true, false) => PAGE_READWRITE,
        (false, true) if r => PAGE_EXECUTE_READ,
        (false, true) => PAGE_EXECUTE,
        (false, false) if r => PAGE_READONLY,
        (false, false) => PAGE_NOACCESS,
    }
}

fn code(r: Result<impl Sized, HResult>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) if e.0 == 0 => -1,
        Err(e) => e.0,
    }
}

/// (base, size) of allocations.
pub type Ranges = Vec<(usize, usize)>;

/// A table of allocations of this layer.
struct Table(UnsafeCell<Ranges>);
// SAFETY: one guest thread; the platform functions are never re-entered (the exception handler
// does not touch these tables), and `with` lends the contents only for the closure's duration.
unsafe impl Sync for Table {}
/// The mappings `wasmtime_mmap_new` made.
static MAPPINGS: Table = Table(UnsafeCell::new(Vec::new()));
/// The memory images' copies.
static IMAGES: Table = Table(UnsafeCell::new(Vec::new()));

impl Table {
    fn with<R>(&self, f: impl FnOnce(&mut Ranges) -> R) -> R {
        // SAFETY: see Table: no other borrow of the contents exists while `f` runs (`f` never
        // calls back into `with`).
        f(unsafe { &mut *self.0.get() })
    }
}

/// The live mappings and memory-image copies, for the address-space report.
pub fn live_allocations() -> (Ranges, Ranges) {
    (MAPPINGS.with(|m| m.clone()), IMAGES.with(|m| m.clone()))
}

/// Calls `f(base, len, committed)` for each run of pages of [start, start + len) that is wholly
/// committed or wholly not, as `VirtualQuery` reports them.
fn for_each_run(start: usize, len: usize, mut f: impl FnMut(usize, usize, bool) -> Result<(), HResult>) -> Result<(), HResult> {
    let end = start + len;
    let mut at = start;
    while at < end {
        let q = host().virtual_query(at)?;
        let run_end = ((q.base_address + q.region_size) as usize).min(end);
        if run_end <= at {
            return Err(HResult::E_INVALIDARG);
        }
        f(at, run_end - at, q.state == MEM_COMMIT)?;
        at = run_end;
    }
    Ok(())
}

/// Gives [ptr, ptr + len) the protection `prot`: commits what is only reserved (prot != 0),
/// re-protects what is committed.
///
/// # Safety
/// [ptr, ptr + len) lies in mappings made by `wasmtime_mmap_new` (Wasmtime's linear memories,
/// code and data, which no Rust reference of this runtime points into: Wasmtime reaches them
/// through raw pointers), and Wasmtime accesses them afterwards only as `prot` allows (its
/// contract for `mprotect`).
unsafe fn protect(ptr: usize, len: usize, prot: u32) -> Result<(), HResult> {
    let h = host();
    let p = win32_protection(prot);
    for_each_run(ptr, len, |base, n, committed| match (committed, prot) {
        // SAFETY: pages of Wasmtime's own mappings, used as `prot` allows from now on (caller).
        (true, _) => unsafe { h.virtual_protect(base, n, p) }.map(drop),
        (false, 0) => Ok(()),
        // SAFETY: these pages are only reserved (not committed): nothing can refer to their
        // contents, so committing them changes nothing anything uses.
        (false, _) => unsafe { h.virtual_alloc(base, n, MEM_COMMIT, p, CriticalLevel::Task) }.map(drop),
    })
}

/// # Safety
/// `ret` is a valid out-pointer (Wasmtime passes a reference).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn wasmtime_mmap_new(size: usize, prot_flags: u32, ret: &mut *mut u8) -> i32 {
    let h = host();
    let size = size.next_multiple_of(PAGE);
    let base = match h.allocate(size, MEM_RESERVE, PAGE_NOACCESS, CriticalLevel::Task) {
        Ok(b) => b,
        Err(e) => return code(Err::<(), _>(e)),
    };
    if prot_flags != 0
        // SAFETY: `base` is the reservation just made, known to nothing else yet; its pages were
        // only reserved, so committing them touches nothing in use.
        && let Err(e) = unsafe { h.virtual_alloc(base, size, MEM_COMMIT, win32_protection(prot_flags), CriticalLevel::Task) }
    {
        // SAFETY: the same new reservation, which nothing else knows of.
        let _ = unsafe { h.virtual_free(base, 0, MEM_RELEASE) };
        return code(Err::<(), _>(e));
    }
    MAPPINGS.with(|m| m.push((base, size)));
    *ret = base as *mut u8;
    0
}

/// # Safety
/// [addr, addr + size) lies in a mapping made by `wasmtime_mmap_new` (the host refuses a range
/// outside any allocation), whose contents Wasmtime no longer needs: it asks for fresh zeroed
/// pages in place.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn wasmtime_mmap_remap(addr: *mut u8, size: usize, prot_flags: u32) -> i32 {
    let h = host();
    let (addr, size) = (addr as usize, size.next_multiple_of(PAGE));
    if size == 0 {
        return 0;
    }
    // SAFETY: pages of Wasmtime's own mapping, reached only through its raw pointers, whose
    // contents it no longer needs (caller).
    if let Err(e) = unsafe { h.virtual_free(addr, size, MEM_DECOMMIT) } {
        return code(Err::<(), _>(e));
    }
    if prot_flags == 0 {
        return 0;
    }
    // SAFETY: the pages were just decommitted: nothing refers to contents there.
    code(unsafe { h.virtual_alloc(addr, size, MEM_COMMIT, win32_protection(prot_flags), CriticalLevel::Task) })
}

/// # Safety
/// [ptr, ptr + size) was mapped by `wasmtime_mmap_new` and is no longer used.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn wasmtime_munmap(ptr: *mut u8, size: usize) -> i32 {
    let h = host();
    let (ptr, size) = (ptr as usize, size.next_multiple_of(PAGE));
    if size == 0 {
        // (MEM_DECOMMIT with size 0 would decommit a whole allocation.)
        return 0;
    }
    let whole = MAPPINGS.with(|maps| {
        let i = maps.iter().position(|&(b, s)| b == ptr && s == size);
        i.map(|i| maps.swap_remove(i)).is_some()
    });
    if whole {
        // SAFETY: a whole mapping of Wasmtime's that it no longer uses (caller); no Rust
        // reference of this runtime points into it.
        return code(unsafe { h.virtual_free(ptr, 0, MEM_RELEASE) });
    }
    // Part of a mapping: give its memory back; the address space stays reserved until the
    // mapping itself goes.
    // SAFETY: as above, for part of a mapping.
    code(unsafe { h.virtual_free(ptr, size, MEM_DECOMMIT) })
}

/// # Safety
/// [ptr, ptr + size) lies in a mapping made by `wasmtime_mmap_new` (the host refuses a range
/// outside any allocation), which Wasmtime accesses afterwards only as `prot_flags` allows.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn wasmtime_mprotect(ptr: *mut u8, size: usize, prot_flags: u32) -> i32 {
    if size == 0 {
        return 0;
    }
    // SAFETY: Wasmtime's own mapping, used as the new protection allows (caller).
    code(unsafe { protect(ptr as usize, size.next_multiple_of(PAGE), prot_flags) })
}

#[unsafe(no_mangle)]
pub extern "C" fn wasmtime_page_size() -> usize {
    host().services().page_size as usize
}

/// A memory image: a read-only committed copy of a linear memory's initial contents.
struct MemoryImage {
    base: usize,
    len: usize,
}

/// # Safety
/// `ptr..ptr + len` is readable (Wasmtime passes page-aligned module data); `ret` is valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn wasmtime_memory_image_new(ptr: *const u8, len: usize, ret: &mut *mut u8) -> i32 {
    *ret = core::ptr::null_mut();
    if len == 0 {
        return 0;
    }
    let h = host();
    let size = len.next_multiple_of(PAGE);
    let base = match h.allocate(size, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, CriticalLevel::Task) {
        Ok(b) => b,
        Err(e) => return code(Err::<(), _>(e)),
    };
    // SAFETY: the source is readable for len bytes (caller); the destination was just committed.
    unsafe { core::ptr::copy_nonoverlapping(ptr, base as *mut u8, len) };
    // SAFETY: the image's own new allocation, written above through a raw pointer and only read
    // from now on; nothing else knows of it yet.
    if let Err(e) = unsafe { h.virtual_protect(base, size, PAGE_READONLY) } {
        // SAFETY: the same allocation, which nothing else knows of.
        let _ = unsafe { h.virtual_free(base, 0, MEM_RELEASE) };
        return code(Err::<(), _>(e));
    }
    IMAGES.with(|m| m.push((base, size)));
    *ret = Box::into_raw(Box::new(MemoryImage { base, len })).cast();
    0
}

/// # Safety
/// `image` came from `wasmtime_memory_image_new`; [addr, addr + len) lies in a mapping made by
/// `wasmtime_mmap_new`: a linear memory Wasmtime is giving its initial contents.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn wasmtime_memory_image_map_at(image: *mut u8, addr: *mut u8, len: usize) -> i32 {
    // SAFETY: a live image (caller).
    let image = unsafe { &*image.cast::<MemoryImage>() };
    let size = len.next_multiple_of(PAGE);
    // SAFETY: [addr, addr + len) lies in one of Wasmtime's mappings (caller), a linear memory it
    // is giving its initial contents: data pages, to which read-write takes no access away.
    if let Err(e) = unsafe { protect(addr as usize, size, PROT_READ | PROT_WRITE) } {
        return code(Err::<(), _>(e));
    }
    // SAFETY: the destination was just made read-write for `size` >= min(len, image.len) bytes;
    // the image holds image.len readable bytes.
    unsafe { core::ptr::copy_nonoverlapping(image.base as *const u8, addr, len.min(image.len)) };
    0
}

/// # Safety
/// `image` came from `wasmtime_memory_image_new` and is not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn wasmtime_memory_image_free(image: *mut u8) {
    if image.is_null() {
        return;
    }
    // SAFETY: made by Box::into_raw in wasmtime_memory_image_new (caller).
    let image = unsafe { Box::from_raw(image.cast::<MemoryImage>()) };
    IMAGES.with(|m| m.retain(|&(b, _)| b != image.base));
    // SAFETY: the image's own allocation, which Wasmtime no longer uses (caller) and which
    // nothing else refers to (its IMAGES entry is gone).
    let _ = unsafe { host().virtual_free(image.base, 0, MEM_RELEASE) };
}

static TLS: [AtomicPtr<u8>; 2] = [AtomicPtr::new(core::ptr::null_mut()), AtomicPtr::new(core::ptr::null_mut())];

#[unsafe(no_mangle)]
pub extern "C" fn wasmtime_tls_get(slot: usize) -> *mut u8 {
    TLS.get(slot).map_or(core::ptr::null_mut(), |s| s.load(Ordering::Relaxed))
}

#[unsafe(no_mangle)]
pub extern "C" fn wasmtime_tls_set(slot: usize, ptr: *mut u8) {
    if let Some(s) = TLS.get(slot) {
        s.store(ptr, Ordering::Relaxed);
    }
}
