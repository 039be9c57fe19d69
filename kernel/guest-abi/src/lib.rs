//! Guest side of the host ABI (`shared/spec/host-abi.md`; the C twin is `include/host_abi.h`).
//!
//! A Rust guest is a `no_std`, `no_main` binary for `x86_64-unknown-none` (a static PIE) whose
//! entry point is `guest_main`; [`guest_entry!`] defines it and hands the body a [`Host`]:
//!
//! ```ignore
//! #![no_std]
//! #![no_main]
//! guest_abi::guest_entry!(main);
//! fn main(host: &guest_abi::Host) -> i32 {
//!     host.print("hello\n");
//!     0
//! }
//! ```
//! and links with `--entry=guest_main` (see `tests/guests/sample-rust/build.rs`).
//!
//! The raw `#[repr(C)]` types, results and constants are those of the `host-abi` crate (the one
//! definition of the contract, checked against the C header in its tests), re-exported here;
//! [`Host`] wraps the calls in safe methods that return `Result<_, HResult>`.
//!
//! Memory: [`Host::allocate`] (`VirtualAlloc` at NULL: a new region the host places) is safe;
//! [`Host::virtual_alloc`] at an address, [`Host::virtual_free`] and [`Host::virtual_protect`]
//! are `unsafe fn`, as `munmap`/`mprotect` are in Rust's own libraries: they can decommit,
//! reset or re-protect memory a live reference points to (the stack, a static). Call them on
//! memory you reserved yourself and reach through raw pointers, with a `// SAFETY:` comment
//! saying so:
//!
//! ```ignore
//! let base = host.allocate(1 << 20, MEM_RESERVE, PAGE_READWRITE, CriticalLevel::Task)?;
//! // SAFETY: the reservation just made; nothing refers to it yet.
//! unsafe { host.virtual_alloc(base, 0x1000, MEM_COMMIT, PAGE_READWRITE, CriticalLevel::Task) }?;
//! ```
//!
//! The function pointers of `HOST_SERVICES` ([`Host::services`], [`Host::services_v2`]) are
//! `unsafe extern "C" fn`: the methods here are their safe wrappers.
//!
//! Threads (`HOST_SERVICES` version 2, host-abi §10.2): [`Thread`] (spawn a closure or a
//! `start(arg)` function, join for the exit code; dropping it closes the handle), the
//! `WaitOnAddress`-style waits on [`Host`] and a [`Mutex`] on top of them. On a version-1 host
//! these refuse with [`ThreadError::Unsupported`] or `None`.
//!
//! ```ignore
//! static TOTAL: guest_abi::Mutex<u64> = guest_abi::Mutex::new(0);
//! let worker = guest_abi::Thread::spawn(host, || { *TOTAL.lock() += 1; 7 })?;
//! assert_eq!(worker.join()?, 7);
//! ```
//!
//! A guest project of its own depends on this crate by path (`guest-abi = { path =
//! ".../kernel/guest-abi" }`) with no unstable cargo flags; `tests/run-all.sh` builds one.
#![no_std]

use core::fmt;

// The ABI itself (layouts, numbers, constants) is defined once, in host-abi; this crate adds the
// guest's side: safe wrappers, the entry-point macro and the panic handler.
pub use host_abi::win32 as consts;
pub use host_abi::{
    CriticalLevel, ExceptionHandler, Guid, GuestContext, GuestException, HResult, HostCommitInfo, HostMallocObject,
    HostMallocVtbl, HostMemoryManager, HostMemoryManagerVtbl, HostServices, HostServicesV1, IID_ICLR_MEMORY_NOTIFICATION_CALLBACK,
    IID_IHOST_MALLOC, IID_IHOST_MEMORY_MANAGER, IID_IUNKNOWN, MemoryAvailable, MemoryBasicInformation,
    MemoryNotificationCallback, MemoryNotificationCallbackVtbl, memory_available,
};
/// `MALLOC_TYPE` flags of `CreateMalloc` (host-abi §3).
pub use host_abi::win32::{MALLOC_EXECUTABLE, MALLOC_THREADSAFE};

mod thread;
pub use thread::{AtomicWord, HOST_SERVICES_V2_SIZE, Mutex, MutexGuard, Thread, ThreadError};
pub use host_abi::ThreadStart;

/// The host, as a guest sees it: the manager and the services, with safe wrappers. It is `Copy`
/// and may be used from every thread of the guest (host-abi §10.2: every host function may be
/// called from any number of threads at once).
#[derive(Clone, Copy)]
pub struct Host {
    manager: *mut HostMemoryManager,
    services: *const HostServices,
}

// SAFETY: a Host is two pointers to the host's read-only objects, valid for the guest's life;
// the host serves calls through them from any thread at once (host-abi §10.2).
unsafe impl Send for Host {}
// SAFETY: as for Send; &Host gives nothing but those calls.
unsafe impl Sync for Host {}

impl Host {
    /// Wraps the pointers the entry point received.
    ///
    /// # Safety
    /// They must be the two arguments of `guest_main` (the host's read-only objects).
    pub unsafe fn from_raw(manager: *mut HostMemoryManager, services: *const HostServices) -> Host {
        thread::remember_services(services);
        Host { manager, services }
    }

    fn vtbl(&self) -> &HostMemoryManagerVtbl {
        // SAFETY: the host's manager object and its vtable live in read-only host pages for the
        // whole life of the guest (from_raw's contract).
        unsafe { &*(*self.manager).vtbl }
    }

    /// `HOST_SERVICES` as every host has it (its version-1 part, host-abi §7); the whole table,
    /// thread services included, is [`services_v2`](Self::services_v2) on a version-2 host.
    ///
    /// Its data fields (`page_size`, `min_application_address`...) are plain values; its function
    /// pointers are `unsafe extern "C" fn`: the methods of [`Host`] are their safe wrappers, and
    /// code that calls one directly upholds that service's contract itself.
    pub fn services(&self) -> &HostServicesV1 {
        self.services_static()
    }

    fn services_static(&self) -> &'static HostServicesV1 {
        // SAFETY: the host's read-only services table lives as long as the guest (from_raw's
        // contract) and every host's table has at least these 96 bytes; the version-2 fields are
        // reached only through `thread::v2`, after `cb_size` says they are there.
        unsafe { &*self.services.cast::<HostServicesV1>() }
    }

    /// The raw manager pointer (to pass to C code or to make calls with bad arguments on purpose).
    pub fn manager(&self) -> *mut HostMemoryManager {
        self.manager
    }

    /// Writes text to the console.
    pub fn print(&self, s: &str) {
        self.write_bytes(s.as_bytes());
    }

    /// Writes bytes to the console as they are (text that may not be UTF-8).
    pub fn write_bytes(&self, bytes: &[u8]) {
        // SAFETY: `write` reads `len` bytes from `ptr`, and the slice is that many readable bytes.
        unsafe { (self.services().write)(bytes.as_ptr(), bytes.len() as u64) };
    }

    /// Ends the guest now, every thread of it. Safe although no destructor runs: nothing of the
    /// guest runs afterwards (no thread, handler or callback), so nothing can observe a value
    /// that was not dropped or a lock that stays held (as `std::process::exit`).
    pub fn exit(&self, code: i32) -> ! {
        // SAFETY: `exit` takes any code and touches no guest memory; it ends the whole guest, so
        // no code of the guest runs again to see what was not dropped.
        unsafe { (self.services().exit)(code) }
    }

    /// Nanoseconds since boot.
    pub fn ticks_ns(&self) -> u64 {
        // SAFETY: `ticks_ns` takes no argument and touches no guest memory.
        unsafe { (self.services().ticks_ns)() }
    }

    /// `VirtualAlloc(NULL, size, kind, protect)`: a new region of address space placed by the
    /// host (`MEM_RESERVE`, with `MEM_COMMIT` to commit it at once; `MEM_TOP_DOWN`,
    /// `MEM_WRITE_WATCH`, `MEM_LARGE_PAGES` as `VirtualAlloc` takes them); returns its base. Safe:
    /// a new allocation never overlaps memory that exists, so it changes nothing anything refers
    /// to. Committing, resetting or re-protecting pages of an existing reservation is
    /// [`virtual_alloc`](Self::virtual_alloc) with its address.
    pub fn allocate(&self, size: usize, kind: u32, protect: u32, level: CriticalLevel) -> Result<usize, HResult> {
        // SAFETY: at address 0 the host places a new allocation in free address space (or fails):
        // no existing page is committed, reset or re-protected, so no live reference is touched.
        unsafe { self.virtual_alloc(0, size, kind, protect, level) }
    }

    /// `VirtualAlloc(addr, size, kind, protect)`; returns the base. With `addr` 0 this is
    /// [`allocate`](Self::allocate), which is safe.
    ///
    /// # Safety
    /// At an address, the call changes existing memory: `MEM_COMMIT` over committed pages sets
    /// their protection to `protect`, `MEM_RESET` discards their contents (they read as zero or
    /// as before, unpredictably). No live Rust reference, borrowed value, or value other code may
    /// still use may lie in pages the call resets, or whose protection it changes so that a place
    /// is no longer readable (or, where it is written, writable); a thread's stack and the
    /// guest's statics are such memory. Memory the caller reserved itself and reaches only through
    /// raw pointers, whose contents it no longer needs (for a reset) or whose new protection it
    /// respects, is the normal case.
    pub unsafe fn virtual_alloc(&self, addr: usize, size: usize, kind: u32, protect: u32, level: CriticalLevel) -> Result<usize, HResult> {
        let mut out: *mut u8 = core::ptr::null_mut();
        (self.vtbl().virtual_alloc)(self.manager, addr as *mut u8, size as u64, kind, protect, level, &mut out).to_result()?;
        Ok(out as usize)
    }

    /// `VirtualFree` (`MEM_DECOMMIT` a range, or `MEM_RELEASE` a whole allocation).
    ///
    /// # Safety
    /// The pages the call decommits or releases stop existing: no live Rust reference, borrowed
    /// value, or value other code may still use may lie in them (a thread's stack and the
    /// guest's statics are such memory; so is a heap's). Memory the caller allocated itself and
    /// reaches only through raw pointers, none of which is used after the call, is the normal
    /// case.
    pub unsafe fn virtual_free(&self, addr: usize, size: usize, free_type: u32) -> Result<(), HResult> {
        (self.vtbl().virtual_free)(self.manager, addr as *mut u8, size as u64, free_type).to_result()
    }

    /// `VirtualQuery`.
    pub fn virtual_query(&self, addr: usize) -> Result<MemoryBasicInformation, HResult> {
        let mut info = MemoryBasicInformation::default();
        let mut written = 0u64;
        (self.vtbl().virtual_query)(self.manager, addr as *mut u8, &mut info, size_of::<MemoryBasicInformation>() as u64, &mut written).to_result()?;
        Ok(info)
    }

    /// `VirtualProtect`; returns the old protection.
    ///
    /// # Safety
    /// No live Rust reference, borrowed value, or value other code may still use may lie in pages
    /// the call makes inaccessible (`PAGE_NOACCESS`, `PAGE_GUARD`), or read-only where it is
    /// written (a `&mut`, an `UnsafeCell`, an atomic, a lock, a thread's stack, a static that
    /// is written); code the guest still runs must stay executable. Memory the caller allocated
    /// itself and reaches only through raw pointers, whose accesses respect the new protection,
    /// is the normal case.
    pub unsafe fn virtual_protect(&self, addr: usize, size: usize, protect: u32) -> Result<u32, HResult> {
        let mut old = 0u32;
        (self.vtbl().virtual_protect)(self.manager, addr as *mut u8, size as u64, protect, &mut old).to_result()?;
        Ok(old)
    }

    /// `QueryInterface`: the manager itself for `IID_IUnknown` / `IID_IHostMemoryManager` (a
    /// reference added), else `E_NOINTERFACE`.
    pub fn query_interface(&self, iid: &host_abi::Guid) -> Result<*mut core::ffi::c_void, HResult> {
        let mut out: *mut core::ffi::c_void = core::ptr::null_mut();
        let bytes = iid.to_bytes();
        (self.vtbl().query_interface)(self.manager, &bytes, &mut out).to_result()?;
        Ok(out)
    }

    /// `AddRef`: the new count.
    pub fn add_ref(&self) -> u32 {
        (self.vtbl().add_ref)(self.manager)
    }

    /// `Release`: the new count (the manager lives as long as the guest whatever it is).
    pub fn release(&self) -> u32 {
        (self.vtbl().release)(self.manager)
    }

    /// `NeedsVirtualAddressSpace(addr, size)`: whether the range may be used (host-abi §9).
    pub fn needs_virtual_address_space(&self, addr: usize, size: usize) -> Result<(), HResult> {
        (self.vtbl().needs_virtual_address_space)(self.manager, addr as *mut u8, size as u64).to_result()
    }

    /// `AcquiredVirtualAddressSpace(addr, size)`: records a range the runtime took itself.
    pub fn acquired_virtual_address_space(&self, addr: usize, size: usize) -> Result<(), HResult> {
        (self.vtbl().acquired_virtual_address_space)(self.manager, addr as *mut u8, size as u64).to_result()
    }

    /// `ReleasedVirtualAddressSpace(addr)`: forgets a range recorded by the call above.
    pub fn released_virtual_address_space(&self, addr: usize) -> Result<(), HResult> {
        (self.vtbl().released_virtual_address_space)(self.manager, addr as *mut u8).to_result()
    }

    /// `GetMemoryLoad`: (percent, bytes available at task criticality).
    pub fn memory_load(&self) -> Result<(u32, u64), HResult> {
        let (mut load, mut available) = (0u32, 0u64);
        (self.vtbl().get_memory_load)(self.manager, &mut load, &mut available).to_result()?;
        Ok((load, available))
    }

    /// Adds a vectored exception handler (first in line if `first`); `None` if refused.
    pub fn add_exception_handler(&self, first: bool, handler: ExceptionHandler) -> Option<core::ptr::NonNull<core::ffi::c_void>> {
        // SAFETY: the host keeps the function pointer, of the ABI's type, and calls it with a
        // valid `GUEST_EXCEPTION` when an exception is raised; it reads no guest memory here.
        core::ptr::NonNull::new(unsafe { (self.services().add_vectored_exception_handler)(first as u32, handler) })
    }

    /// Removes a handler; `true` if it was registered.
    pub fn remove_exception_handler(&self, handle: core::ptr::NonNull<core::ffi::c_void>) -> bool {
        // SAFETY: the handle is only compared with the host's list of registered handlers (an
        // unknown one returns 0); nothing is read through it.
        unsafe { (self.services().remove_vectored_exception_handler)(handle.as_ptr()) == 1 }
    }

    /// `GetWriteWatch` into `out`; returns how many page addresses were written.
    pub fn get_write_watch(&self, reset: bool, base: usize, size: usize, out: &mut [usize]) -> Result<usize, u32> {
        let mut count = out.len() as u64;
        let mut granularity = 0u32;
        let flags = reset as u32;
        // SAFETY: the host writes at most `count` (= `out.len()`) addresses to `out` and one value
        // each to the two locals; `base` and `size` name a range it looks up in its own tables
        // (an invalid one is refused), reading or changing no guest memory there.
        let result = unsafe {
            (self.services().get_write_watch)(flags, base as *mut u8, size as u64, out.as_mut_ptr().cast(), &mut count, &mut granularity)
        };
        match result {
            0 => Ok(count as usize),
            e => Err(e),
        }
    }

    /// `ResetWriteWatch`.
    pub fn reset_write_watch(&self, base: usize, size: usize) -> Result<(), u32> {
        // SAFETY: only the host's record of written pages changes; the pages and their contents
        // are untouched (an invalid range is refused).
        match unsafe { (self.services().reset_write_watch)(base as *mut u8, size as u64) } {
            0 => Ok(()),
            e => Err(e),
        }
    }

    /// The guest's argument string (`run-qemu.sh --guest-args "..."`: the entry point's third
    /// argument, kept by [`guest_entry!`]), empty if none.
    pub fn args(&self) -> &str {
        // SAFETY: written once by guest_entry! before the guest's code runs.
        let p = unsafe { GUEST_ARGS };
        if p.is_null() {
            return "";
        }
        // SAFETY: the host keeps a NUL-terminated string of at most ARGS_MAX bytes at this
        // address in its read-only data page for the guest's whole life; the scan stops at the NUL.
        let bytes = unsafe {
            let mut n = 0;
            while n <= host_abi::host::ARGS_MAX && *p.add(n) != 0 {
                n += 1;
            }
            core::slice::from_raw_parts(p, n)
        };
        core::str::from_utf8(bytes).unwrap_or("")
    }

    /// `query_commit`.
    pub fn commit_info(&self) -> HostCommitInfo {
        let mut info = HostCommitInfo::default();
        // SAFETY: `query_commit` writes one HostCommitInfo to the pointer, a local of that type.
        unsafe { (self.services().query_commit)(&mut info) };
        info
    }
}

/// A heap made by `CreateMalloc` (one reference; `Release` on drop). Its code and bookkeeping run
/// in ring 3 in the guest's own memory (host-abi §6).
pub struct Malloc {
    object: *mut HostMallocObject,
}

impl Malloc {
    fn vtbl(&self) -> &HostMallocVtbl {
        // SAFETY: CreateMalloc returned this object; its vtable lives in the host library's
        // read-only data for the life of the guest.
        unsafe { &*(*self.object).vtbl }
    }

    /// The raw `IHostMalloc*`.
    pub fn as_raw(&self) -> *mut HostMallocObject {
        self.object
    }

    /// `Alloc`: a 16-byte aligned block of `size` bytes.
    pub fn alloc(&self, size: usize, level: CriticalLevel) -> Result<*mut u8, HResult> {
        let mut out: *mut u8 = core::ptr::null_mut();
        (self.vtbl().alloc)(self.object, size as u64, level, &mut out).to_result()?;
        Ok(out)
    }

    /// `DebugAlloc`: as `alloc`, recording `file` (NUL-terminated) and `line` for leak reports.
    pub fn debug_alloc(&self, size: usize, level: CriticalLevel, file: &core::ffi::CStr, line: i32) -> Result<*mut u8, HResult> {
        let mut out: *mut u8 = core::ptr::null_mut();
        (self.vtbl().debug_alloc)(self.object, size as u64, level, file.as_ptr().cast(), line, &mut out).to_result()?;
        Ok(out)
    }

    /// `Free` (NULL is S_OK; a foreign or freed pointer is E_INVALIDARG).
    ///
    /// # Safety
    /// The block stops existing: `p` is NULL, or nothing uses it or any pointer or reference into
    /// its bytes after the call (as `GlobalAlloc::dealloc`; a block this heap handed out to other
    /// code, a `Box` made on it, is still used there). The heap refusing a pointer it did not
    /// hand out is its own check, not the caller's guarantee.
    pub unsafe fn free(&self, p: *mut u8) -> Result<(), HResult> {
        (self.vtbl().free)(self.object, p).to_result()
    }
}

impl Drop for Malloc {
    fn drop(&mut self) {
        (self.vtbl().release)(self.object);
    }
}

// SAFETY: a heap's methods may be called from any thread (host-abi §10.2), one thread at a time
// for a heap without MALLOC_THREADSAFE, which owning the handle (not sharing it) ensures.
unsafe impl Send for Malloc {}

/// A heap made with `MALLOC_THREADSAFE` ([`Host::create_threadsafe_malloc`]): any number of
/// threads may use it at once (host-abi §10.2), so it can be shared (`Sync`); it derefs to its
/// [`Malloc`].
pub struct ThreadSafeMalloc(Malloc);

// SAFETY: the host serializes a MALLOC_THREADSAFE heap's methods itself (the heap's lock), so
// calls through `&ThreadSafeMalloc` from many threads at once are what the contract allows.
unsafe impl Sync for ThreadSafeMalloc {}

impl core::ops::Deref for ThreadSafeMalloc {
    type Target = Malloc;
    fn deref(&self) -> &Malloc {
        &self.0
    }
}

impl Host {
    /// `CreateMalloc(flags)` (`MALLOC_THREADSAFE`, `MALLOC_EXECUTABLE`).
    pub fn create_malloc(&self, flags: u32) -> Result<Malloc, HResult> {
        let mut out: *mut core::ffi::c_void = core::ptr::null_mut();
        (self.vtbl().create_malloc)(self.manager, flags, &mut out).to_result()?;
        Ok(Malloc { object: out.cast() })
    }

    /// `CreateMalloc(MALLOC_THREADSAFE | flags)`: a heap threads may share.
    pub fn create_threadsafe_malloc(&self, flags: u32) -> Result<ThreadSafeMalloc, HResult> {
        self.create_malloc(flags | MALLOC_THREADSAFE).map(ThreadSafeMalloc)
    }

    /// `RegisterMemoryNotificationCallback`: the host AddRefs `callback` (and Releases the one it
    /// replaces); `None` unregisters.
    pub fn register_memory_notification_callback(&self, callback: Option<&'static MemoryNotificationCallback>) -> Result<(), HResult> {
        let p = callback.map_or(core::ptr::null_mut(), |c| c as *const MemoryNotificationCallback as *mut core::ffi::c_void);
        (self.vtbl().register_memory_notification_callback)(self.manager, p).to_result()
    }
}

/// A `core::fmt::Write` sink that prints through the host.
pub struct Console<'a>(pub &'a Host);

impl fmt::Write for Console<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.print(s);
        Ok(())
    }
}

#[doc(hidden)]
pub static mut GUEST_ARGS: *const u8 = core::ptr::null();

/// Where this kernel keeps the argument string it passes as the entry point's third argument.
#[doc(hidden)]
pub const fn host_args_address() -> u64 {
    host_abi::host::ARGS
}

/// Defines `guest_main`, which wraps the pointers in a [`Host`] and calls `$main(&Host) -> i32`.
#[macro_export]
macro_rules! guest_entry {
    ($main:path) => {
        #[unsafe(no_mangle)]
        // The host calls the entry point with its own two valid pointers (host-abi §1).
        #[allow(clippy::not_unsafe_ptr_arg_deref)]
        pub extern "C" fn guest_main(
            manager: *mut $crate::HostMemoryManager,
            services: *const $crate::HostServices,
            args: *const u8,
        ) -> i32 {
            // SAFETY: these are the arguments the host passes to the entry point.
            let host = unsafe { $crate::Host::from_raw(manager, services) };
            // SAFETY: written once, before the guest's code runs (so before any other thread).
            // The third argument is this kernel's (not the contract's): kept only when it is the
            // address where this kernel keeps the string, so another host's undefined register
            // never becomes a string to read.
            unsafe {
                $crate::GUEST_ARGS = if args as u64 == $crate::host_args_address() { args } else { core::ptr::null() };
            }
            $main(&host)
        }
    };
}

#[cfg(all(feature = "panic-handler", not(test), target_os = "none"))]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    if let Some(services) = thread::remembered_services() {
        let host = Host { manager: core::ptr::null_mut(), services: (services as *const HostServicesV1).cast() };
        let _ = fmt::Write::write_fmt(&mut Console(&host), format_args!("guest panicked: {info}\n"));
        // SAFETY: `exit` touches no guest memory and ends the whole guest: nothing runs after it.
        unsafe { (services.exit)(101) }
    }
    loop {
        core::hint::spin_loop();
    }
}
