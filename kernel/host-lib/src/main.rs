//! The host's ring-3 library, mapped into every guest as a host-owned `MEM_IMAGE` (host-abi §6):
//! `IHostMemoryManager::CreateMalloc` and the `IHostMalloc` heaps it creates.
//!
//! Like a Windows heap, a heap runs in user mode with its bookkeeping in the guest's own memory,
//! so nothing a guest writes there can hurt the kernel, only the guest. Each heap is a chain of
//! regions reserved through the manager (`VirtualAlloc`, at the caller's critical level), each
//! with a `host_heap::Arena` of coalesced free spans over its reservation: carving a block commits
//! the pages it needs (and a little ahead), and a free span of 64 KiB or more decommits its pages
//! again, so a heap whose data shrinks gives its commit back (the `host-heap` crate has the rules
//! and their host tests). A new region is reserved when no span fits, and a region other than the
//! heap's first is released once all its blocks are freed. `MALLOC_EXECUTABLE` heaps commit
//! `PAGE_EXECUTE_READWRITE`.
//!
//! A heap made with `MALLOC_THREADSAFE` takes a lock in its object around every method (host-abi
//! §10.2): a futex-style word that waits with `HOST_SERVICES.wait_on_address` when the kernel
//! serves version 2 (threads), and would only spin without it (a version-1 guest has one thread,
//! so it never does). A heap without the flag takes no lock. The lock is not recursive, and a heap
//! in the middle of a change must not be entered again: so the heap calls the manager as
//! `nr::HELD_MANAGER`, which holds back the notification callback a commit or decommit would
//! enter, and asks for it (`nr::DELIVER_HELD`) once its change is complete and its lock released.
//! A callback may then use any host function, this heap included (host-abi §10.3).
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

use core::arch::asm;
use core::ptr;
use core::sync::atomic::{AtomicU32, Ordering};

use host_heap::{AllocError, Arena, GRAIN, Memory};

use host_abi::host::{MANAGER_OBJECT, nr};
use host_abi::win32::{
    ERROR_NOACCESS, MALLOC_EXECUTABLE, MALLOC_THREADSAFE, MEM_COMMIT, MEM_DECOMMIT, MEM_RELEASE, MEM_RESERVE,
    PAGE_EXECUTE_READWRITE, PAGE_GUARD, PAGE_READWRITE, PAGE_SIZE,
};
use host_abi::{CriticalLevel, HResult, HostMallocVtbl, HostServices, IID_IHOST_MALLOC, IID_IUNKNOWN};

// Short names for the results this library returns (the values are host-abi's).
const S_OK: HResult = HResult::S_OK;
const E_OUTOFMEMORY: HResult = HResult::E_OUTOFMEMORY;
const E_INVALIDARG: HResult = HResult::E_INVALIDARG;
const E_POINTER: HResult = HResult::E_POINTER;
const E_NOINTERFACE: HResult = HResult::E_NOINTERFACE;
const E_NOACCESS: HResult = HResult::from_win32(ERROR_NOACCESS);
const E_FAIL: HResult = HResult::E_FAIL;
const HOST_E_CLRNOTAVAILABLE: HResult = HResult::HOST_E_CLRNOTAVAILABLE;

const HEAP_MAGIC: u64 = 0x4845_4150_4F42_4A31; // "HEAPOBJ1"
const BLOCK_MAGIC: u64 = 0xB10C_4EAD_5AFE_C0DE;
const LIVE: u32 = 0x11FE;
const FREED: u32 = 0xDEAD;
const HEADER: usize = 64;
const PAGE: usize = PAGE_SIZE as usize;
/// Address space each region reserves (at least; a larger block gets a larger region).
const REGION_RESERVE: usize = 16 << 20;
/// What a new region commits at once beyond its headers and first block.
const FIRST_COMMIT: usize = host_heap::COMMIT_AHEAD;

fn services() -> &'static HostServices {
    // SAFETY: HOST_SERVICES is mapped read-only by the kernel, for the guest's whole life. Fields past
    // `cbSize` are only read after `has_threads` checked the version.
    unsafe { &*(host_abi::host::HOST_SERVICES as *const HostServices) }
}

fn print(s: &[u8]) {
    // SAFETY: `write` reads `len` bytes at the pointer: the slice's own.
    unsafe { (services().write)(s.as_ptr(), s.len() as u64) };
}

/// Whether the kernel serves HOST_SERVICES version 2 (threads, `wait_on_address`).
fn has_threads() -> bool {
    let s = services();
    s.version >= 2 && s.cb_size as usize >= core::mem::size_of::<HostServices>()
}

/// Asks the kernel whether `[ptr, ptr+len)` is committed guest memory readable (and writable if
/// `write`): 0, or the HRESULT to return (ERROR_NOACCESS, or 0x80000001 for a guard page, which
/// the kernel has then cleared).
fn probe(ptr: usize, len: usize, write: bool) -> HResult {
    let result: u64;
    // SAFETY: the kernel's probe call reads nothing from us but its three arguments; syscall
    // clobbers rcx and r11.
    unsafe {
        asm!("syscall", inlateout("rax") nr::PROBE => result, in("rdi") ptr, in("rsi") len, in("rdx") write as u64,
             lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    HResult(result as i32)
}

/// Checks that the NUL-terminated string at `s` is readable up to its NUL (or 4 KiB): 0, or the
/// probe's HRESULT for the first unreadable page.
fn probe_string(s: usize) -> HResult {
    // The first byte first: the kernel refuses addresses outside user space before any arithmetic
    // here could wrap.
    match probe(s, 1, false) {
        S_OK => {}
        e => return e,
    }
    let limit = s.saturating_add(4096);
    let mut at = s;
    while at < limit {
        let page_end = (at & !(PAGE - 1)).saturating_add(PAGE);
        let n = page_end.min(limit) - at;
        match probe(at, n, false) {
            S_OK => {}
            e => return e,
        }
        for i in 0..n {
            // SAFETY: [at, at + n) was probed readable just now.
            if unsafe { *((at + i) as *const u8) } == 0 {
                return S_OK;
            }
        }
        at += n;
    }
    S_OK
}

/// Manager method `slot` (`VirtualAlloc`, `VirtualFree`) with the arguments after `this`, made as
/// [`nr::HELD_MANAGER`]: a band change it causes is not delivered on its return but when
/// [`HeapMemory::deliver`] asks, once the heap's change is complete and its lock released (a
/// notification callback may use this very heap, host-abi §10.3). `a6` goes in `rbx`, as the
/// stubs pass a method's seventh argument.
fn held_manager_call(slot: u64, a1: u64, a2: u64, a3: u64, a4: u64, a5: u64, a6: u64) -> HResult {
    let result: u64;
    // SAFETY: the kernel reads the arguments and writes at most `*a6` (VirtualAlloc's `ppMem`,
    // our own variable); syscall clobbers rcx and r11. rbx is LLVM's, so it is swapped in and
    // out around the call.
    unsafe {
        asm!("xchg rbx, {a6}", "syscall", "xchg rbx, {a6}", a6 = inout(reg) a6 => _,
             inlateout("rax") nr::HELD_MANAGER + slot => result, in("rdi") MANAGER_OBJECT, in("rsi") a1, in("rdx") a2,
             in("r10") a3, in("r8") a4, in("r9") a5, lateout("rcx") _, lateout("r11") _);
    }
    HResult(result as i32)
}

/// A heap's memory as `host_heap` sees it: raw words of its regions, commit through the manager
/// (with the heap's protection, at the caller's critical level). One per heap method: it notes
/// whether the method changed the guest's commit, for [`deliver`](Self::deliver).
struct HeapMemory {
    protect: u32,
    level: CriticalLevel,
    changed: bool,
    /// What the manager answered to the last refused commit (E_OUTOFMEMORY, or a poisoned
    /// manager's HOST_E_CLRNOTAVAILABLE, which the heap's methods pass on).
    refusal: Option<HResult>,
}

impl HeapMemory {
    fn new(protect: u32, level: CriticalLevel) -> HeapMemory {
        HeapMemory { protect, level, changed: false, refusal: None }
    }

    fn reserve(&mut self, size: usize) -> Result<usize, HResult> {
        let mut out = 0usize;
        self.changed = true;
        match held_manager_call(SLOT_VIRTUAL_ALLOC, 0, size as u64, MEM_RESERVE.into(), self.protect.into(), self.level as u64, ptr::addr_of_mut!(out) as u64) {
            S_OK => Ok(out),
            e => Err(e),
        }
    }

    fn commit_pages(&mut self, addr: usize, size: usize) -> Result<(), HResult> {
        let mut out = 0usize;
        self.changed = true;
        match held_manager_call(SLOT_VIRTUAL_ALLOC, addr as u64, size as u64, MEM_COMMIT.into(), self.protect.into(), self.level as u64, ptr::addr_of_mut!(out) as u64) {
            S_OK => Ok(()),
            e => {
                self.refusal = Some(e);
                Err(e)
            }
        }
    }

    fn release(&mut self, addr: usize) {
        self.changed = true;
        let _ = held_manager_call(SLOT_VIRTUAL_FREE, addr as u64, 0, MEM_RELEASE.into(), 0, 0, 0);
    }

    /// Delivers the notification the method's manager calls held back, if they made any: call
    /// it once the heap's lock is released.
    fn deliver(&self) {
        if self.changed {
            // SAFETY: the kernel reads no argument; it may run callbacks in ring 3 before this
            // call returns, which keep every register (host-abi §9); syscall clobbers rcx, r11.
            unsafe { asm!("syscall", inlateout("rax") nr::DELIVER_HELD => _, lateout("rcx") _, lateout("r11") _) };
        }
    }
}

/// `VirtualAlloc`'s, `VirtualFree`'s and `GetMemoryLoad`'s vtable slots.
const SLOT_VIRTUAL_ALLOC: u64 = 4;
const SLOT_VIRTUAL_FREE: u64 = 5;
const SLOT_GET_MEMORY_LOAD: u64 = 8;

/// `VirtualQuery`'s vtable slot.
const SLOT_VIRTUAL_QUERY: u64 = 6;

/// Whether `[ptr, ptr + len)` is committed, writable memory with no guard page (asked with
/// `VirtualQuery`, which changes nothing), so that storing there has no other effect.
fn plainly_writable(ptr: usize, len: usize) -> bool {
    let Some(end) = ptr.checked_add(len).filter(|_| ptr != 0) else { return false };
    let mut page = ptr & !(PAGE - 1);
    while page < end {
        let mut info = host_abi::MemoryBasicInformation::default();
        let mut got = 0u64;
        let size = core::mem::size_of::<host_abi::MemoryBasicInformation>() as u64;
        let answered = held_manager_call(SLOT_VIRTUAL_QUERY, page as u64, ptr::addr_of_mut!(info) as u64, size, ptr::addr_of_mut!(got) as u64, 0, 0);
        let writable = info.protect & (PAGE_READWRITE | PAGE_EXECUTE_READWRITE) != 0 && info.protect & PAGE_GUARD == 0;
        if answered != S_OK || info.state != MEM_COMMIT || !writable {
            return false;
        }
        page += PAGE;
    }
    true
}

/// Whether the manager is poisoned (an E_FAIL came before): `GetMemoryLoad` with NULL pointers
/// answers HOST_E_CLRNOTAVAILABLE then, else E_POINTER, and changes nothing either way.
fn manager_poisoned() -> bool {
    held_manager_call(SLOT_GET_MEMORY_LOAD, 0, 0, 0, 0, 0, 0) == HOST_E_CLRNOTAVAILABLE
}
const _: () = {
    use core::mem::offset_of;
    assert!(offset_of!(host_abi::HostMemoryManagerVtbl, virtual_alloc) == SLOT_VIRTUAL_ALLOC as usize * 8);
    assert!(offset_of!(host_abi::HostMemoryManagerVtbl, virtual_free) == SLOT_VIRTUAL_FREE as usize * 8);
    assert!(offset_of!(host_abi::HostMemoryManagerVtbl, get_memory_load) == SLOT_GET_MEMORY_LOAD as usize * 8);
    assert!(offset_of!(host_abi::HostMemoryManagerVtbl, virtual_query) == SLOT_VIRTUAL_QUERY as usize * 8);
};

impl Memory for HeapMemory {
    fn read(&self, addr: usize) -> usize {
        // SAFETY: host_heap reads only span headers, which its rules keep in committed pages of
        // this heap's regions.
        unsafe { (addr as *const usize).read() }
    }
    fn write(&mut self, addr: usize, value: usize) {
        // SAFETY: as in read.
        unsafe { (addr as *mut usize).write(value) }
    }
    fn commit(&mut self, addr: usize, len: usize) -> bool {
        self.commit_pages(addr, len).is_ok()
    }
    fn decommit(&mut self, addr: usize, len: usize) {
        // Pages of our own reservation: this fails only if the guest released it under us.
        self.changed = true;
        let _ = held_manager_call(SLOT_VIRTUAL_FREE, addr as u64, len as u64, MEM_DECOMMIT.into(), 0, 0, 0);
    }
}

/// A reserved region of a heap; lives at the region's start.
#[repr(C)]
struct Region {
    next: *mut Region,
    base: usize,
    reserved: usize,
    arena: Arena,
}

/// Where a region's arena starts.
const REGION_HEADER: usize = core::mem::size_of::<Region>().next_multiple_of(GRAIN);

/// The `IHostMalloc` object; lives at the start of its first region, after that region's header.
#[repr(C)]
struct Malloc {
    vtbl: *const MallocVtbl,
    magic: u64,
    refs: u32,
    flags: u32,
    /// MALLOC_THREADSAFE heaps: 0 free, 1 held, 2 held with waiters (see [`HeapLock`]).
    lock: u32,
    _pad: u32,
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
    /// Bytes the arena handed out for this block (header included).
    extent: u64,
    _pad: u64,
}

/// `IHostMalloc`'s vtable as this library implements it: host-abi's [`HostMallocVtbl`] with every
/// guest-supplied pointer and level taken as a plain integer, checked before use (the guest can
/// pass anything). The const block below keeps the two layouts identical.
#[repr(C)]
struct MallocVtbl {
    query_interface: extern "C" fn(*mut Malloc, usize, usize) -> HResult,
    add_ref: extern "C" fn(*mut Malloc) -> u32,
    release: extern "C" fn(*mut Malloc) -> u32,
    alloc: extern "C" fn(*mut Malloc, usize, u32, usize) -> HResult,
    debug_alloc: extern "C" fn(*mut Malloc, usize, u32, usize, i32, usize) -> HResult,
    free: extern "C" fn(*mut Malloc, usize) -> HResult,
}

const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<MallocVtbl>() == size_of::<HostMallocVtbl>());
    assert!(offset_of!(MallocVtbl, query_interface) == offset_of!(HostMallocVtbl, query_interface));
    assert!(offset_of!(MallocVtbl, add_ref) == offset_of!(HostMallocVtbl, add_ref));
    assert!(offset_of!(MallocVtbl, release) == offset_of!(HostMallocVtbl, release));
    assert!(offset_of!(MallocVtbl, alloc) == offset_of!(HostMallocVtbl, alloc));
    assert!(offset_of!(MallocVtbl, debug_alloc) == offset_of!(HostMallocVtbl, debug_alloc));
    assert!(offset_of!(MallocVtbl, free) == offset_of!(HostMallocVtbl, free));
    // The object starts with its vtable pointer, as `IHostMalloc` does.
    assert!(offset_of!(Malloc, vtbl) == offset_of!(host_abi::HostMallocObject, vtbl));
};

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
fn heap_of(this: *mut Malloc) -> Option<*mut Malloc> {
    if probe(this as usize, core::mem::size_of::<Malloc>(), true) != S_OK {
        return None;
    }
    // SAFETY: probed as writable guest memory just now; a forged object only hurts the guest.
    // The magic changes only when the last reference goes, which no other thread may race.
    let magic = unsafe { ptr::addr_of!((*this).magic).read_volatile() };
    (magic == HEAP_MAGIC ^ this as u64).then_some(this)
}

/// A held heap lock (MALLOC_THREADSAFE heaps; nothing for the others), released on drop.
///
/// The word follows the classic futex mutex: 0 free, 1 held, 2 held and someone may be waiting.
/// A waiter sets 2 and sleeps in `wait_on_address` while the word is 2; the unlocking thread
/// wakes one waiter when it finds 2.
struct HeapLock(Option<&'static AtomicU32>);

impl HeapLock {
    /// Takes the lock of the (checked) heap object `m`.
    fn acquire(m: *mut Malloc) -> HeapLock {
        // SAFETY: `m` passed heap_of: a probed, writable heap object; `flags` never changes.
        if unsafe { (*m).flags } & MALLOC_THREADSAFE == 0 {
            return HeapLock(None);
        }
        // SAFETY: the lock word is a 4-byte-aligned u32 of the object, only ever accessed
        // atomically (every thread goes through this lock).
        let word = unsafe { AtomicU32::from_ptr(ptr::addr_of_mut!((*m).lock)) };
        if word.compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed).is_err() {
            Self::contended(word);
        }
        HeapLock(Some(word))
    }

    #[cold]
    fn contended(word: &AtomicU32) {
        let threads = has_threads();
        loop {
            // Spin a little first: the holder usually leaves within a few hundred cycles. Once
            // contended the lock is only ever taken as 2, never 1: a thread that took it as 1
            // would not wake the others still asleep when it leaves.
            for _ in 0..64 {
                if word.load(Ordering::Relaxed) == 0 {
                    break;
                }
                core::hint::spin_loop();
            }
            if word.swap(2, Ordering::Acquire) == 0 {
                return;
            }
            if threads {
                let compare = 2u32;
                // SAFETY: the kernel reads 4 bytes at each pointer: the lock word (a live
                // AtomicU32, aligned) and a local u32; version 2 was checked (`threads`).
                let _ = unsafe { (services().wait_on_address)(word.as_ptr().cast(), ptr::addr_of!(compare).cast(), 4, u64::MAX) };
            }
        }
    }

    /// Leaves the heap without unlocking (its memory is gone: the last reference was released).
    fn forget(mut self) {
        self.0 = None;
    }
}

impl Drop for HeapLock {
    fn drop(&mut self) {
        if let Some(word) = self.0
            && word.swap(0, Ordering::Release) == 2
            && has_threads()
        {
            // SAFETY: the address is only a key for the kernel's waiters, nothing is read
            // through it; version 2 was checked (`has_threads`).
            unsafe { (services().wake_by_address)(word.as_ptr().cast(), 0) };
        }
    }
}

/// Creates a new region able to hold a block of `need` bytes and links it first.
fn new_region(m: &mut Malloc, need: usize, memory: &mut HeapMemory) -> Result<(), HResult> {
    let reserve_size = (REGION_HEADER + need + PAGE).next_multiple_of(PAGE).max(REGION_RESERVE);
    let base = memory.reserve(reserve_size)?;
    let first = (REGION_HEADER + need + FIRST_COMMIT).next_multiple_of(PAGE).min(reserve_size);
    if let Err(e) = memory.commit_pages(base, first) {
        memory.release(base);
        return Err(e);
    }
    let arena = Arena::new(memory, base + REGION_HEADER, base + reserve_size, base + first);
    let region = base as *mut Region;
    // SAFETY: [base, base + first) was just committed read-write for this heap; the arena
    // manages the part after the header.
    unsafe { region.write(Region { next: m.regions, base, reserved: reserve_size, arena }) };
    m.regions = region;
    Ok(())
}

/// Bytes a block of `size` user bytes takes from an arena: header, at least one grain.
fn block_bytes(size: usize) -> Result<usize, HResult> {
    size.max(1).checked_add(HEADER + GRAIN - 1).map(|n| n & !(GRAIN - 1)).filter(|&n| n <= isize::MAX as usize).ok_or(E_OUTOFMEMORY)
}

/// Carves a block of `size` user bytes: (block address, extent).
fn allocate(m: &mut Malloc, size: usize, memory: &mut HeapMemory) -> Result<(usize, usize), HResult> {
    let need = block_bytes(size)?;
    let mut region = m.regions;
    let mut refused = false;
    while !region.is_null() {
        // SAFETY: regions are linked by this library inside the heap's committed memory.
        let r = unsafe { &mut *region };
        match r.arena.alloc(memory, need) {
            Ok(block) => return Ok(block),
            Err(AllocError::CommitFailed) => refused = true,
            Err(AllocError::NoFit) => {}
        }
        region = r.next;
    }
    // A size the heap cannot grow to is out of memory (host-abi §6), whatever the manager said
    // about the reservation (87 for a size beyond user space); a poisoned manager stays visible.
    // When a region had room but its commit was refused, a new region would be refused too.
    if refused {
        return Err(match memory.refusal {
            Some(e @ (HOST_E_CLRNOTAVAILABLE | E_FAIL)) => e,
            _ => E_OUTOFMEMORY,
        });
    }
    new_region(m, need, memory).map_err(|e| match e {
        HOST_E_CLRNOTAVAILABLE | E_FAIL => e,
        _ => E_OUTOFMEMORY,
    })?;
    // SAFETY: new_region linked a region sized for this block.
    unsafe { &mut *m.regions }.arena.alloc(memory, need).map_err(|_| E_OUTOFMEMORY)
}

fn do_alloc(this: *mut Malloc, size: usize, level: u32, file: usize, line: i32, pp: usize) -> HResult {
    if pp == 0 {
        return E_POINTER;
    }
    match probe(pp, 8, true) {
        S_OK => {}
        e => return e,
    }
    // Every failure leaves NULL there, a bad `this` included (host-abi §9).
    put(pp, 0usize);
    let Some(this) = heap_of(this) else { return E_NOACCESS };
    let Some(level) = CriticalLevel::from_u32(level) else {
        return E_INVALIDARG;
    };
    // SAFETY: `this` passed heap_of; `flags` never changes.
    let mut memory = HeapMemory::new(protect_for(unsafe { (*this).flags }), level);
    let result = alloc_locked(this, size, file, line, pp, &mut memory);
    memory.deliver();
    result
}

/// `do_alloc`'s part under the heap's lock (released on return, before any delivery).
fn alloc_locked(this: *mut Malloc, size: usize, file: usize, line: i32, pp: usize, memory: &mut HeapMemory) -> HResult {
    let _lock = HeapLock::acquire(this);
    // SAFETY: a checked heap object, ours alone while the lock is held.
    let m = unsafe { &mut *this };
    let (block, extent) = match allocate(m, size, memory) {
        Ok((b, extent)) => (b as *mut Block, extent),
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
            extent: extent as u64,
            _pad: 0,
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
    // Every failure leaves NULL in a writable `*ppMalloc` (host-abi §9), a bad `this` or a
    // poisoned manager included; for a bad `this` without clearing a guard (nothing of the call
    // is checked), as the kernel's own methods do.
    if this as u64 != MANAGER_OBJECT {
        if plainly_writable(pp, 8) {
            put(pp, 0usize);
        }
        return E_NOACCESS;
    }
    // After E_FAIL every method but the lifetime ones answers HOST_E_CLRNOTAVAILABLE (host-abi
    // §9), whatever its arguments: the kernel knows, so ask it.
    if manager_poisoned() {
        if pp != 0 && probe(pp, 8, true) == S_OK {
            put(pp, 0usize);
        }
        return HOST_E_CLRNOTAVAILABLE;
    }
    if pp == 0 {
        return E_POINTER;
    }
    match probe(pp, 8, true) {
        S_OK => {}
        e => return e,
    }
    put(pp, 0usize);
    if flags & !(MALLOC_THREADSAFE | MALLOC_EXECUTABLE) != 0 {
        return E_INVALIDARG;
    }
    // The object lives in a small block of its own first region.
    let m = Malloc {
        vtbl: &VTBL,
        magic: 0,
        refs: 1,
        flags,
        lock: 0,
        _pad: 0,
        regions: ptr::null_mut(),
        live_head: ptr::null_mut(),
        live_blocks: 0,
        live_bytes: 0,
    };
    // CreateMalloc names no critical level: the heap's first region is committed at the
    // default, eTaskCritical, so a new heap does not dip into the reserve kept for critical work
    // (host-abi §5); its blocks are then allocated at each call's own level.
    let mut memory = HeapMemory::new(protect_for(flags), CriticalLevel::Task);
    let result = create_heap(m, pp, &mut memory);
    memory.deliver();
    result
}

/// `host_create_malloc`'s making of the heap `m` (its first region and object), its address
/// stored through `pp`.
fn create_heap(mut m: Malloc, pp: usize, memory: &mut HeapMemory) -> HResult {
    let object_bytes = core::mem::size_of::<Malloc>().next_multiple_of(GRAIN);
    if let Err(e) = new_region(&mut m, object_bytes, memory) {
        return e;
    }
    // SAFETY: the first region was just created for this heap, its first commit covers the object.
    let obj = match unsafe { &mut *m.regions }.arena.alloc(memory, object_bytes) {
        Ok((p, _)) => p as *mut Malloc,
        Err(_) => {
            memory.release(m.regions as usize);
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
        S_OK => {}
        e => return e,
    }
    put(ppv, 0usize);
    if riid == 0 {
        return E_POINTER;
    }
    match probe(riid, 16, false) {
        S_OK => {}
        e => return e,
    }
    let Some(this) = heap_of(this) else { return E_NOACCESS };
    // SAFETY: probed readable just now.
    let iid = unsafe { ptr::read_unaligned(riid as *const [u8; 16]) };
    if iid == IID_IUNKNOWN.to_bytes() || iid == IID_IHOST_MALLOC.to_bytes() {
        add_ref(this);
        put(ppv, this as usize);
        S_OK
    } else {
        E_NOINTERFACE
    }
}

/// Adds a reference to a checked heap object; returns the new count.
fn add_ref(this: *mut Malloc) -> u32 {
    let _lock = HeapLock::acquire(this);
    // SAFETY: a checked heap object, ours alone while the lock is held.
    let m = unsafe { &mut *this };
    m.refs = m.refs.saturating_add(1);
    m.refs
}

extern "C" fn malloc_add_ref(this: *mut Malloc) -> u32 {
    heap_of(this).map_or(0, add_ref)
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
            while n < name.len() && probe(blk.file + n, 1, false) == S_OK {
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
    let Some(this) = heap_of(this) else { return 0 };
    // SAFETY: `this` passed heap_of; `flags` never changes.
    let mut memory = HeapMemory::new(protect_for(unsafe { (*this).flags }), CriticalLevel::Task);
    let refs = release_locked(this, &mut memory);
    memory.deliver();
    refs
}

/// `malloc_release`'s part under the heap's lock (which goes with the heap at the last reference).
fn release_locked(this: *mut Malloc, memory: &mut HeapMemory) -> u32 {
    let lock = HeapLock::acquire(this);
    // SAFETY: a checked heap object, ours alone while the lock is held.
    let m = unsafe { &mut *this };
    m.refs = m.refs.saturating_sub(1);
    if m.refs > 0 {
        return m.refs;
    }
    // The heap goes with its last reference, lock word included.
    lock.forget();
    if m.live_blocks > 0 {
        leak_report(m);
    }
    m.magic = 0;
    // Release every region; the object itself lives in the last one (the first created).
    let mut region = m.regions;
    while !region.is_null() {
        // SAFETY: regions are linked by this library; read `next` before the region goes.
        let next = unsafe { (*region).next };
        memory.release(region as usize);
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
        if probe(pp, 8, true) == S_OK {
            put(pp, 0usize);
        }
        return E_POINTER;
    }
    // The whole name must be readable, up to its NUL (a name longer than 4 KiB is cut there).
    match probe_string(file) {
        S_OK => {}
        e => {
            if probe(pp, 8, true) == S_OK {
                put(pp, 0usize);
            }
            return e;
        }
    }
    do_alloc(this, size, level, file, line, pp)
}

extern "C" fn malloc_free(this: *mut Malloc, p: usize) -> HResult {
    let Some(this) = heap_of(this) else { return E_NOACCESS };
    if p == 0 {
        return S_OK;
    }
    // SAFETY: `this` passed heap_of; `flags` never changes.
    let mut memory = HeapMemory::new(protect_for(unsafe { (*this).flags }), CriticalLevel::Task);
    let result = free_locked(this, p, &mut memory);
    memory.deliver();
    result
}

/// `malloc_free`'s part under the heap's lock (released on return, before any delivery).
fn free_locked(this: *mut Malloc, p: usize, memory: &mut HeapMemory) -> HResult {
    let _lock = HeapLock::acquire(this);
    // SAFETY: a checked heap object, ours alone while the lock is held.
    let m = unsafe { &mut *this };
    // The block must lie in one of this heap's regions...
    let (mut region, mut prev) = (m.regions, ptr::null_mut::<Region>());
    let arena_end = loop {
        if region.is_null() {
            return E_INVALIDARG;
        }
        // SAFETY: regions are linked by this library.
        let r = unsafe { &*region };
        if p >= r.arena.start + HEADER && p < r.arena.end && p.is_multiple_of(GRAIN) {
            break r.arena.end;
        }
        prev = region;
        region = r.next;
    };
    // ... in committed memory (a freed block's pages may have been decommitted) ...
    let block = (p - HEADER) as *mut Block;
    if probe(block as usize, HEADER, true) != S_OK {
        return E_INVALIDARG;
    }
    // ... and be a live block of it, whose extent fits its size (else the guest overwrote it).
    // SAFETY: inside a region of this heap, probed writable just now.
    let blk = unsafe { &mut *block };
    let extent = blk.extent as usize;
    let sane = |size: u64| block_bytes(size as usize).is_ok_and(|n| extent >= n && extent - n < host_heap::SPAN_HEADER);
    if blk.check != BLOCK_MAGIC ^ p as u64 || blk.state != LIVE || !sane(blk.size) || p - HEADER + extent > arena_end {
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
    // SAFETY: regions are linked by this library; the block came from this region's arena.
    let r = unsafe { &mut *region };
    r.arena.free(memory, block as usize, extent);
    // A region other than the heap's first (the object's, last in the list) goes back to the
    // host once it is empty.
    if !r.next.is_null() && r.arena.is_empty(memory) {
        let next = r.next;
        if prev.is_null() {
            m.regions = next;
        } else {
            // SAFETY: as above.
            unsafe { (*prev).next = next };
        }
        memory.release(r.base);
    }
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
