//! The host's ring-3 library, mapped into every guest as a host-owned `MEM_IMAGE` (host-abi §6):
//! `IHostMemoryManager::CreateMalloc` and the `IHostMalloc` heaps it creates.
//!
//! Like a Windows heap, a heap runs in user mode with its bookkeeping in the guest's own memory,
//! so nothing a guest writes there can hurt the kernel, only the guest. Each heap is a chain of
//! regions reserved through the manager (`VirtualAlloc`, at the caller's critical level), each with
//! a `linked_list_allocator::Heap` over its committed part; a region grows by committing more of
//! its reservation, and a new region is reserved when one is full. `MALLOC_EXECUTABLE` heaps commit
//! `PAGE_EXECUTE_READWRITE`.
//!
//! Every block has a 64-byte header: a check word (a magic XOR the block's address), its size,
//! its `DebugAlloc` file and line, a live/freed state and links in the heap's list of live blocks
//! (for the leak report printed when the last reference goes). `Free` of a pointer that is not a
//! live block of this heap (a foreign or already freed pointer) fails with E_INVALIDARG and touches
//! nothing. Pointers the guest passes are checked with the kernel's probe call before use, so a
//! bad pointer is an error, never a fault in this library.
//!
//! This code runs in ring 3 on the guest's stack and has no mutable global state (the guest can
//! write the library's data pages; all state lives in the heaps).
#![no_std]
#![no_main]

use core::alloc::Layout;
use core::arch::asm;
use core::ptr::{self, NonNull};

use linked_list_allocator::Heap;

type HResult = i32;
const S_OK: HResult = 0;
const E_OUTOFMEMORY: HResult = 0x8007_000E_u32 as i32;
const E_INVALIDARG: HResult = 0x8007_0057_u32 as i32;
const E_POINTER: HResult = 0x8000_4003_u32 as i32;
const E_NOINTERFACE: HResult = 0x8000_4002_u32 as i32;
const E_NOACCESS: HResult = 0x8007_03E6_u32 as i32;
const E_FAIL: HResult = 0x8000_4005_u32 as i32;
const HOST_E_CLRNOTAVAILABLE: HResult = 0x8013_1023_u32 as i32;

/// Where the kernel puts the manager object and `HOST_SERVICES` (kernel/src/guest/host_pages.rs).
const MANAGER_OBJECT: usize = 0x7FFF_FFFE_1000;
const HOST_SERVICES: usize = 0x7FFF_FFFE_1100;
/// The kernel's probe call: `probe(ptr, len, write) -> 0 | HRESULT`.
const NR_PROBE: u64 = 9;

const MEM_COMMIT: u32 = 0x1000;
const MEM_RESERVE: u32 = 0x2000;
const MEM_RELEASE: u32 = 0x8000;
const PAGE_READWRITE: u32 = 0x04;
const PAGE_EXECUTE_READWRITE: u32 = 0x40;
const MALLOC_EXECUTABLE: u32 = 0x2;

const IID_IUNKNOWN: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0xC0, 0, 0, 0, 0, 0, 0, 0x46];
const IID_IHOST_MALLOC: [u8; 16] = [0x1C, 0x99, 0x31, 0x18, 0x53, 0xCC, 0x31, 0x4A, 0xB2, 0x18, 0x04, 0xE9, 0x10, 0x44, 0x64, 0x79];

const HEAP_MAGIC: u64 = 0x4845_4150_4F42_4A31; // "HEAPOBJ1"
const BLOCK_MAGIC: u64 = 0xB10C_4EAD_5AFE_C0DE;
const LIVE: u32 = 0x11FE;
const FREED: u32 = 0xDEAD;
const HEADER: usize = 64;
const ALIGN: usize = 16;
const PAGE: usize = 4096;
/// Address space each region reserves (at least; a larger block gets a larger region).
const REGION_RESERVE: usize = 16 << 20;
/// How much a region commits at a time.
const COMMIT_STEP: usize = 64 << 10;

/// The manager's vtable, as far as this library calls it.
#[repr(C)]
struct ManagerVtbl {
    _unknown: [usize; 4],
    virtual_alloc: extern "C" fn(usize, usize, usize, u32, u32, u32, *mut usize) -> HResult,
    virtual_free: extern "C" fn(usize, usize, usize, u32) -> HResult,
}

#[repr(C)]
struct Services {
    _fields: [u8; 32],
    write: extern "C" fn(*const u8, u64),
}

fn manager() -> &'static ManagerVtbl {
    // SAFETY: the kernel maps the manager object and its vtable, read-only, at these addresses in
    // every guest for the guest's whole life.
    unsafe { &**(MANAGER_OBJECT as *const *const ManagerVtbl) }
}

fn print(s: &[u8]) {
    // SAFETY: as for manager(): HOST_SERVICES is mapped read-only by the kernel.
    let services = unsafe { &*(HOST_SERVICES as *const Services) };
    (services.write)(s.as_ptr(), s.len() as u64);
}

/// Asks the kernel whether `[ptr, ptr+len)` is committed guest memory readable (and writable if
/// `write`): 0, or the HRESULT to return (ERROR_NOACCESS, or 0x80000001 for a guard page, which
/// the kernel has then cleared).
fn probe(ptr: usize, len: usize, write: bool) -> HResult {
    let result: u64;
    // SAFETY: the kernel's probe call reads nothing from us but its three arguments; syscall
    // clobbers rcx and r11.
    unsafe {
        asm!("syscall", inlateout("rax") NR_PROBE => result, in("rdi") ptr, in("rsi") len, in("rdx") write as u64,
             lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    result as i32
}

/// Checks that the NUL-terminated string at `s` is readable up to its NUL (or 4 KiB): 0, or the
/// probe's HRESULT for the first unreadable page.
fn probe_string(s: usize) -> HResult {
    // The first byte first: the kernel refuses addresses outside user space before any arithmetic
    // here could wrap.
    match probe(s, 1, false) {
        0 => {}
        e => return e,
    }
    let limit = s.saturating_add(4096);
    let mut at = s;
    while at < limit {
        let page_end = (at & !(PAGE - 1)).saturating_add(PAGE);
        let n = page_end.min(limit) - at;
        match probe(at, n, false) {
            0 => {}
            e => return e,
        }
        for i in 0..n {
            // SAFETY: [at, at + n) was probed readable just now.
            if unsafe { *((at + i) as *const u8) } == 0 {
                return 0;
            }
        }
        at += n;
    }
    0
}

fn reserve(size: usize, protect: u32, level: u32) -> Result<usize, HResult> {
    let mut out = 0usize;
    match (manager().virtual_alloc)(MANAGER_OBJECT, 0, size, MEM_RESERVE, protect, level, &mut out) {
        S_OK => Ok(out),
        e => Err(e),
    }
}

fn commit(addr: usize, size: usize, protect: u32, level: u32) -> Result<(), HResult> {
    let mut out = 0usize;
    match (manager().virtual_alloc)(MANAGER_OBJECT, addr, size, MEM_COMMIT, protect, level, &mut out) {
        S_OK => Ok(()),
        e => Err(e),
    }
}

fn release(addr: usize) {
    let _ = (manager().virtual_free)(MANAGER_OBJECT, addr, 0, MEM_RELEASE);
}

/// A reserved region of a heap; lives at the region's start.
#[repr(C)]
struct Region {
    next: *mut Region,
    base: usize,
    reserved: usize,
    committed: usize,
    heap: Heap,
}

/// The `IHostMalloc` object; lives at the start of its first region, after that region's header.
#[repr(C)]
struct Malloc {
    vtbl: *const MallocVtbl,
    magic: u64,
    refs: u32,
    flags: u32,
    regions: *mut Region,
    live_head: *mut Block,
    live_blocks: u64,
    live_bytes: u64,
}

#[repr(C)]
struct Block {
    check: u64,
    size: u64,
    prev: *mut Block,
    next: *mut Block,
    file: usize,
    line: i32,
    state: u32,
    _pad: [u64; 2],
}

#[repr(C)]
struct MallocVtbl {
    query_interface: extern "C" fn(*mut Malloc, usize, usize) -> HResult,
    add_ref: extern "C" fn(*mut Malloc) -> u32,
    release: extern "C" fn(*mut Malloc) -> u32,
    alloc: extern "C" fn(*mut Malloc, usize, u32, usize) -> HResult,
    debug_alloc: extern "C" fn(*mut Malloc, usize, u32, usize, i32, usize) -> HResult,
    free: extern "C" fn(*mut Malloc, usize) -> HResult,
}

static VTBL: MallocVtbl = MallocVtbl {
    query_interface: malloc_query_interface,
    add_ref: malloc_add_ref,
    release: malloc_release,
    alloc: malloc_alloc,
    debug_alloc: malloc_debug_alloc,
    free: malloc_free,
};

fn protect_for(flags: u32) -> u32 {
    if flags & MALLOC_EXECUTABLE != 0 { PAGE_EXECUTE_READWRITE } else { PAGE_READWRITE }
}

/// Writes `value` to a guest out-pointer already probed writable.
fn put<T>(ptr: usize, value: T) {
    // SAFETY: the caller probed [ptr, ptr + size_of::<T>()) as writable guest memory.
    unsafe { ptr::write_unaligned(ptr as *mut T, value) }
}

/// Returns the heap object if `this` is readable and carries the heap magic.
fn heap_of(this: *mut Malloc) -> Option<&'static mut Malloc> {
    if probe(this as usize, core::mem::size_of::<Malloc>(), true) != 0 {
        return None;
    }
    // SAFETY: probed as writable guest memory just now; a forged object only hurts the guest.
    let m = unsafe { &mut *this };
    (m.magic == HEAP_MAGIC ^ this as u64).then_some(m)
}

/// Creates a new region able to hold a block of `need` bytes and links it first.
fn new_region(m: &mut Malloc, need: usize, level: u32) -> Result<(), HResult> {
    let header = core::mem::size_of::<Region>().next_multiple_of(ALIGN);
    let reserve_size = (need + header + COMMIT_STEP).next_multiple_of(PAGE).max(REGION_RESERVE);
    let protect = protect_for(m.flags);
    let base = reserve(reserve_size, protect, level)?;
    let first = (header + need).next_multiple_of(COMMIT_STEP).min(reserve_size);
    if let Err(e) = commit(base, first, protect, level) {
        release(base);
        return Err(e);
    }
    let region = base as *mut Region;
    // SAFETY: [base, base + first) was just committed read-write for this heap; the Heap manages
    // the part after the header.
    unsafe {
        region.write(Region {
            next: m.regions,
            base,
            reserved: reserve_size,
            committed: first,
            heap: Heap::new((base + header) as *mut u8, first - header),
        });
    }
    m.regions = region;
    Ok(())
}

fn layout(size: usize) -> Result<Layout, HResult> {
    let total = size.max(1).checked_add(HEADER).ok_or(E_OUTOFMEMORY)?;
    Layout::from_size_align(total, ALIGN).map_err(|_| E_OUTOFMEMORY)
}

fn allocate(m: &mut Malloc, size: usize, level: u32) -> Result<NonNull<u8>, HResult> {
    let layout = layout(size)?;
    let protect = protect_for(m.flags);
    let mut region = m.regions;
    while !region.is_null() {
        // SAFETY: regions are linked by this library inside the heap's committed memory.
        let r = unsafe { &mut *region };
        if let Ok(p) = r.heap.allocate_first_fit(layout) {
            return Ok(p);
        }
        // Grow this region's committed part if its reservation has room.
        let grow = (layout.size() + COMMIT_STEP).next_multiple_of(COMMIT_STEP);
        if r.committed + grow <= r.reserved && commit(r.base + r.committed, grow, protect, level).is_ok() {
            r.committed += grow;
            // SAFETY: the `grow` bytes right above the heap's top were just committed.
            unsafe { r.heap.extend(grow) };
            if let Ok(p) = r.heap.allocate_first_fit(layout) {
                return Ok(p);
            }
        }
        region = r.next;
    }
    // A size the heap cannot grow to is out of memory (host-abi §6), whatever the manager said
    // about the reservation (87 for a size beyond user space); a poisoned manager stays visible.
    new_region(m, layout.size(), level).map_err(|e| match e {
        HOST_E_CLRNOTAVAILABLE | E_FAIL => e,
        _ => E_OUTOFMEMORY,
    })?;
    // SAFETY: new_region linked a region sized for this block.
    unsafe { &mut *m.regions }.heap.allocate_first_fit(layout).map_err(|_| E_OUTOFMEMORY)
}

fn do_alloc(this: *mut Malloc, size: usize, level: u32, file: usize, line: i32, pp: usize) -> HResult {
    if pp == 0 {
        return E_POINTER;
    }
    match probe(pp, 8, true) {
        0 => {}
        e => return e,
    }
    let Some(m) = heap_of(this) else { return E_NOACCESS };
    put(pp, 0usize);
    if level > 2 {
        return E_INVALIDARG;
    }
    let block = match allocate(m, size, level) {
        Ok(b) => b.as_ptr() as *mut Block,
        Err(e) => return e,
    };
    let user = block as usize + HEADER;
    // SAFETY: `block` is a fresh allocation of HEADER + size bytes from this heap.
    unsafe {
        block.write(Block {
            check: BLOCK_MAGIC ^ user as u64,
            size: size as u64,
            prev: ptr::null_mut(),
            next: m.live_head,
            file,
            line,
            state: LIVE,
            _pad: [0; 2],
        });
        if !m.live_head.is_null() {
            (*m.live_head).prev = block;
        }
    }
    m.live_head = block;
    m.live_blocks += 1;
    m.live_bytes += size as u64;
    put(pp, user);
    S_OK
}

/// `IHostMemoryManager::CreateMalloc` (vtable slot 3): the library's entry point.
#[unsafe(no_mangle)]
pub extern "C" fn host_create_malloc(this: usize, flags: u32, pp: usize) -> HResult {
    if this != MANAGER_OBJECT {
        return E_NOACCESS;
    }
    if pp == 0 {
        return E_POINTER;
    }
    match probe(pp, 8, true) {
        0 => {}
        e => return e,
    }
    put(pp, 0usize);
    if flags & !0x3 != 0 {
        return E_INVALIDARG;
    }
    // The object lives in a small block of its own first region.
    let mut m = Malloc {
        vtbl: &VTBL,
        magic: 0,
        refs: 1,
        flags,
        regions: ptr::null_mut(),
        live_head: ptr::null_mut(),
        live_blocks: 0,
        live_bytes: 0,
    };
    if let Err(e) = new_region(&mut m, core::mem::size_of::<Malloc>(), 2) {
        return e;
    }
    // SAFETY: the first region was just created for this heap.
    let obj = match unsafe { &mut *m.regions }.heap.allocate_first_fit(Layout::new::<Malloc>()) {
        Ok(p) => p.as_ptr() as *mut Malloc,
        Err(()) => {
            release(m.regions as usize);
            return E_OUTOFMEMORY;
        }
    };
    m.magic = HEAP_MAGIC ^ obj as u64;
    // SAFETY: `obj` is a fresh allocation of size_of::<Malloc>() bytes.
    unsafe { obj.write(m) };
    put(pp, obj as usize);
    S_OK
}

extern "C" fn malloc_query_interface(this: *mut Malloc, riid: usize, ppv: usize) -> HResult {
    if ppv == 0 {
        return E_POINTER;
    }
    match probe(ppv, 8, true) {
        0 => {}
        e => return e,
    }
    put(ppv, 0usize);
    if riid == 0 {
        return E_POINTER;
    }
    match probe(riid, 16, false) {
        0 => {}
        e => return e,
    }
    let Some(m) = heap_of(this) else { return E_NOACCESS };
    // SAFETY: probed readable just now.
    let iid = unsafe { ptr::read_unaligned(riid as *const [u8; 16]) };
    if iid == IID_IUNKNOWN || iid == IID_IHOST_MALLOC {
        m.refs = m.refs.saturating_add(1);
        put(ppv, this as usize);
        S_OK
    } else {
        E_NOINTERFACE
    }
}

extern "C" fn malloc_add_ref(this: *mut Malloc) -> u32 {
    match heap_of(this) {
        Some(m) => {
            m.refs = m.refs.saturating_add(1);
            m.refs
        }
        None => 0,
    }
}

fn print_dec(mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    print(&buf[i..]);
}

/// Prints the heap's live blocks (the leak report), naming DebugAlloc's file and line.
fn leak_report(m: &Malloc) {
    print(b"IHostMalloc: ");
    print_dec(m.live_blocks);
    print(b" block(s), ");
    print_dec(m.live_bytes);
    print(b" bytes leaked\n");
    let mut b = m.live_head;
    let mut shown = 0;
    while !b.is_null() && shown < 16 {
        // SAFETY: the live list is kept by this library inside the heap's memory.
        let blk = unsafe { &*b };
        if blk.file != 0 {
            print(b"  leak: ");
            let mut name = [0u8; 96];
            let mut n = 0;
            while n < name.len() && probe(blk.file + n, 1, false) == 0 {
                // SAFETY: probed readable just now.
                let c = unsafe { *((blk.file + n) as *const u8) };
                if c == 0 {
                    break;
                }
                name[n] = c;
                n += 1;
            }
            print(&name[..n]);
            print(b":");
            print_dec(blk.line as u64);
            print(b" (");
            print_dec(blk.size);
            print(b" bytes)\n");
            shown += 1;
        }
        b = blk.next;
    }
}

extern "C" fn malloc_release(this: *mut Malloc) -> u32 {
    let Some(m) = heap_of(this) else { return 0 };
    m.refs = m.refs.saturating_sub(1);
    if m.refs > 0 {
        return m.refs;
    }
    if m.live_blocks > 0 {
        leak_report(m);
    }
    m.magic = 0;
    // Release every region; the object itself lives in the last one (the first created).
    let mut region = m.regions;
    while !region.is_null() {
        // SAFETY: regions are linked by this library; read `next` before the region goes.
        let next = unsafe { (*region).next };
        release(region as usize);
        region = next;
    }
    0
}

extern "C" fn malloc_alloc(this: *mut Malloc, size: usize, level: u32, pp: usize) -> HResult {
    do_alloc(this, size, level, 0, 0, pp)
}

extern "C" fn malloc_debug_alloc(this: *mut Malloc, size: usize, level: u32, file: usize, line: i32, pp: usize) -> HResult {
    if pp == 0 {
        return E_POINTER;
    }
    if file == 0 {
        if probe(pp, 8, true) == 0 {
            put(pp, 0usize);
        }
        return E_POINTER;
    }
    // The whole name must be readable, up to its NUL (a name longer than 4 KiB is cut there).
    match probe_string(file) {
        0 => {}
        e => {
            if probe(pp, 8, true) == 0 {
                put(pp, 0usize);
            }
            return e;
        }
    }
    do_alloc(this, size, level, file, line, pp)
}

extern "C" fn malloc_free(this: *mut Malloc, p: usize) -> HResult {
    let Some(m) = heap_of(this) else { return E_NOACCESS };
    if p == 0 {
        return S_OK;
    }
    // The block must lie in one of this heap's regions...
    let mut region = m.regions;
    let mut inside = false;
    while !region.is_null() {
        // SAFETY: regions are linked by this library.
        let r = unsafe { &*region };
        if p >= r.base + HEADER && p < r.base + r.committed && p.is_multiple_of(ALIGN) {
            inside = true;
            break;
        }
        region = r.next;
    }
    if !inside {
        return E_INVALIDARG;
    }
    // ... and be a live block of it.
    let block = (p - HEADER) as *mut Block;
    // SAFETY: inside a committed region of this heap (checked above).
    let blk = unsafe { &mut *block };
    if blk.check != BLOCK_MAGIC ^ p as u64 || blk.state != LIVE {
        return E_INVALIDARG;
    }
    blk.state = FREED;
    blk.check = 0;
    // SAFETY: unlinking from the live list this library keeps.
    unsafe {
        if blk.prev.is_null() {
            m.live_head = blk.next;
        } else {
            (*blk.prev).next = blk.next;
        }
        if !blk.next.is_null() {
            (*blk.next).prev = blk.prev;
        }
    }
    m.live_blocks -= 1;
    m.live_bytes -= blk.size;
    let layout = layout(blk.size as usize).expect("a live block's layout was valid");
    // SAFETY: the block was allocated from this region's heap with this layout.
    unsafe { (*region).heap.deallocate(NonNull::new_unchecked(block as *mut u8), layout) };
    S_OK
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    print(b"host library: internal error\n");
    loop {
        // SAFETY: ud2 raises an illegal-instruction exception, ending the guest as any fault
        // would (the library cannot continue).
        unsafe { asm!("ud2") };
    }
}
