//! The bundled Rust sample guest.
#![no_std]
#![no_main]

use core::fmt::Write;
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use guest_abi::consts::*;
use guest_abi::{Console, CriticalLevel, GuestException, Host};

guest_abi::guest_entry!(main);

static GUARD_HITS: AtomicU32 = AtomicU32::new(0);
static AV_HITS: AtomicU32 = AtomicU32::new(0);
static HOST: AtomicUsize = AtomicUsize::new(0);

extern "C" fn handler(e: *mut GuestException) -> i32 {
    // SAFETY: the host passes a valid GUEST_EXCEPTION on our stack.
    let e = unsafe { &*e };
    match e.code {
        STATUS_GUARD_PAGE_VIOLATION => {
            GUARD_HITS.fetch_add(1, Ordering::SeqCst);
            EXCEPTION_CONTINUE_EXECUTION
        }
        STATUS_ACCESS_VIOLATION if e.access == 1 => {
            AV_HITS.fetch_add(1, Ordering::SeqCst);
            // SAFETY: HOST holds the address of main's Host, which outlives every exception.
            let host = unsafe { &*(HOST.load(Ordering::SeqCst) as *const Host) };
            let page = (e.address & !0xFFF) as usize;
            // Only a page that is reserved and not committed is committed here (a write to a
            // committed read-only page is not this handler's to fix).
            if host.virtual_query(page).map(|q| q.state) != Ok(MEM_RESERVE) {
                return EXCEPTION_CONTINUE_SEARCH;
            }
            // SAFETY: the page is only reserved: it has no contents anything could refer to, so
            // committing it changes no memory in use.
            match unsafe { host.virtual_alloc(page, 4096, MEM_COMMIT, PAGE_READWRITE, CriticalLevel::Task) } {
                Ok(_) => EXCEPTION_CONTINUE_EXECUTION,
                Err(_) => EXCEPTION_CONTINUE_SEARCH,
            }
        }
        _ => EXCEPTION_CONTINUE_SEARCH,
    }
}

struct Checks<'a> {
    out: Console<'a>,
    failed: u32,
    passed: u32,
}

impl Checks<'_> {
    fn check(&mut self, name: &str, got: u64, expected: u64) {
        if got == expected {
            self.passed += 1;
            let _ = writeln!(self.out, "ok {name}");
        } else {
            self.failed += 1;
            let _ = writeln!(self.out, "FAILED {name} (got {got:#x}, expected {expected:#x})");
        }
    }
}

fn main(host: &Host) -> i32 {
    HOST.store(host as *const Host as usize, Ordering::SeqCst);
    let mut c = Checks { out: Console(host), failed: 0, passed: 0 };
    host.print("sample-rust: hello from ring 3\n");
    let base = match host.allocate(1 << 20, MEM_RESERVE, PAGE_READWRITE, CriticalLevel::Task) {
        Ok(b) => b,
        Err(e) => {
            let _ = writeln!(c.out, "reserve failed: {e:?}");
            return 1;
        }
    };
    c.check("reserve is 64 KiB aligned", (base & 0xFFFF) as u64, 0);
    // SAFETY: the reservation just made, of which nothing is committed yet: nothing refers to it.
    let p = unsafe { host.virtual_alloc(base, 0x10000, MEM_COMMIT, PAGE_READWRITE, CriticalLevel::Task) }.unwrap_or(0);
    c.check("commit returns the base", p as u64, base as u64);
    let bytes = p as *mut u8;
    // SAFETY: p..p+64 KiB is committed read-write memory of this guest.
    unsafe {
        c.check("committed memory reads zero", bytes.add(0x2345).read_volatile() as u64, 0);
        bytes.add(0x2345).write_volatile(0x5A);
        c.check("and keeps what is written", bytes.add(0x2345).read_volatile() as u64, 0x5A);
    }
    let q = host.virtual_query(p).unwrap_or_default();
    c.check("query state", q.state as u64, MEM_COMMIT as u64);
    c.check("query size", q.region_size, 0x10000);
    c.check("query protect", q.protect as u64, PAGE_READWRITE as u64);
    // SAFETY: the first page of this guest's own reservation, reached only through `bytes`, and
    // neither written nor read again.
    let old = unsafe { host.virtual_protect(p, 4096, PAGE_READONLY) };
    c.check("protect returns the old protection", old.unwrap_or(0) as u64, PAGE_READWRITE as u64);
    // SAFETY: as above (and protection 0 is refused, changing nothing).
    let refused = unsafe { host.virtual_protect(p, 4096, 0) };
    c.check("a bad protection is refused", refused.err().map_or(0, |e| e.0 as u32 as u64), 0x8007_0057);

    let handle = host.add_exception_handler(true, handler);
    c.check("handler registered", handle.is_some() as u64, 1);
    // SAFETY: a page of this guest's own reservation, reached only through `bytes`; the guard's
    // one exception is resumed by the handler registered above.
    let _ = unsafe { host.virtual_protect(p + 0x4000, 4096, PAGE_READWRITE | PAGE_GUARD) };
    // SAFETY: committed memory; the first touch raises the guard exception the handler resumes.
    unsafe {
        bytes.add(0x4000).write_volatile(1);
        bytes.add(0x4001).write_volatile(2);
    }
    c.check("guard exception once", GUARD_HITS.load(Ordering::SeqCst) as u64, 1);
    c.check("guard cleared", host.virtual_query(p + 0x4000).map(|q| q.protect).unwrap_or(0) as u64, PAGE_READWRITE as u64);
    let lazy = (base + 0x80000) as *mut u8;
    // SAFETY: reserved memory: the write faults, the handler commits the page, the write retries.
    unsafe { lazy.add(8).write_volatile(3) };
    c.check("access violation handled", AV_HITS.load(Ordering::SeqCst) as u64, 1);
    // SAFETY: committed by the handler.
    c.check("write landed", unsafe { lazy.add(8).read_volatile() } as u64, 3);
    if let Some(h) = handle {
        c.check("handler removed", host.remove_exception_handler(h) as u64, 1);
    }
    // SAFETY: this guest's own reservation, reached only through `bytes` and `lazy`, neither of
    // which is used again.
    let released = unsafe { host.virtual_free(base, 0, MEM_RELEASE) };
    c.check("release", released.is_ok() as u64, 1);
    c.check("released memory is free", host.virtual_query(base).map(|q| q.state).unwrap_or(0) as u64, MEM_FREE as u64);
    // The COM lifetime methods and the address-space bookkeeping of host-abi §3 and §9.
    let me = host.query_interface(&guest_abi::IID_IHOST_MEMORY_MANAGER).unwrap_or(core::ptr::null_mut());
    c.check("QueryInterface(IID_IHostMemoryManager) is the manager", me as u64, host.manager() as u64);
    let refs = host.add_ref();
    c.check("AddRef and Release count", host.release() as u64, refs as u64 - 1);
    host.release(); // the reference QueryInterface added
    c.check("NeedsVirtualAddressSpace of the freed range", host.needs_virtual_address_space(base, 1 << 20).is_ok() as u64, 1);
    c.check("AcquiredVirtualAddressSpace records it", host.acquired_virtual_address_space(base, 1 << 20).is_ok() as u64, 1);
    c.check(
        "... twice is E_INVALIDARG (it overlaps the range recorded)",
        host.acquired_virtual_address_space(base, 0x10000).err().map_or(0, |e| e.0 as u32 as u64),
        0x8007_0057,
    );
    c.check("ReleasedVirtualAddressSpace forgets it", host.released_virtual_address_space(base).is_ok() as u64, 1);
    match host.create_threadsafe_malloc(0) {
        Ok(heap) => {
            let block = heap.alloc(100, CriticalLevel::Task).unwrap_or(core::ptr::null_mut());
            c.check("a thread-safe heap allocates", (!block.is_null()) as u64, 1);
            // SAFETY: the block was just allocated on this heap and is not used after the call.
            c.check("... and frees", unsafe { heap.free(block) }.is_ok() as u64, 1);
        }
        Err(e) => c.check("create_threadsafe_malloc", e.0 as u32 as u64, 0),
    }
    let _ = writeln!(c.out, "{} passed, {} failed", c.passed, c.failed);
    if c.failed == 0 { 0 } else { 1 }
}
