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
//! The raw `#[repr(C)]` types mirror the contract byte for byte; [`Host`] wraps the calls in
//! safe methods that return `Result<_, HResult>`.
#![no_std]

use core::fmt;

/// An HRESULT.
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HResult(pub i32);

impl HResult {
    pub const S_OK: HResult = HResult(0);
    pub const E_OUTOFMEMORY: HResult = HResult(0x8007_000E_u32 as i32);
    pub const E_INVALIDARG: HResult = HResult(0x8007_0057_u32 as i32);
    pub const E_POINTER: HResult = HResult(0x8000_4003_u32 as i32);
    pub const E_NOINTERFACE: HResult = HResult(0x8000_4002_u32 as i32);
    pub const E_NOTIMPL: HResult = HResult(0x8000_4001_u32 as i32);

    /// HRESULT_FROM_WIN32.
    pub const fn from_win32(e: u32) -> HResult {
        HResult(if e == 0 { 0 } else { (0x8007_0000 | (e & 0xFFFF)) as i32 })
    }

    fn check(self) -> Result<(), HResult> {
        if self.0 >= 0 { Ok(()) } else { Err(self) }
    }
}

impl fmt::Debug for HResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HRESULT({:#010x})", self.0 as u32)
    }
}

/// `MEM_*`, `PAGE_*` and related constants (win32-semantics §1.3).
pub mod consts {
    pub const MEM_COMMIT: u32 = 0x1000;
    pub const MEM_RESERVE: u32 = 0x2000;
    pub const MEM_DECOMMIT: u32 = 0x4000;
    pub const MEM_RELEASE: u32 = 0x8000;
    pub const MEM_FREE: u32 = 0x10000;
    pub const MEM_PRIVATE: u32 = 0x20000;
    pub const MEM_RESET: u32 = 0x80000;
    pub const MEM_TOP_DOWN: u32 = 0x100000;
    pub const MEM_WRITE_WATCH: u32 = 0x200000;
    pub const MEM_RESET_UNDO: u32 = 0x1000000;
    pub const MEM_IMAGE: u32 = 0x1000000;
    pub const MEM_LARGE_PAGES: u32 = 0x20000000;
    pub const PAGE_NOACCESS: u32 = 0x01;
    pub const PAGE_READONLY: u32 = 0x02;
    pub const PAGE_READWRITE: u32 = 0x04;
    pub const PAGE_EXECUTE: u32 = 0x10;
    pub const PAGE_EXECUTE_READ: u32 = 0x20;
    pub const PAGE_EXECUTE_READWRITE: u32 = 0x40;
    pub const PAGE_GUARD: u32 = 0x100;
    pub const PAGE_NOCACHE: u32 = 0x200;
    pub const PAGE_WRITECOMBINE: u32 = 0x400;
    pub const WRITE_WATCH_FLAG_RESET: u32 = 1;
    pub const STATUS_ACCESS_VIOLATION: u32 = 0xC000_0005;
    pub const STATUS_GUARD_PAGE_VIOLATION: u32 = 0x8000_0001;
    pub const STATUS_STACK_OVERFLOW: u32 = 0xC000_00FD;
    pub const EXCEPTION_CONTINUE_EXECUTION: i32 = -1;
    pub const EXCEPTION_CONTINUE_SEARCH: i32 = 0;
}

/// `EMemoryCriticalLevel`.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CriticalLevel {
    Task = 0,
    AppDomain = 1,
    Process = 2,
}

/// `MEMORY_BASIC_INFORMATION` (48 bytes).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MemoryBasicInformation {
    pub base_address: u64,
    pub allocation_base: u64,
    pub allocation_protect: u32,
    pub partition_id: u16,
    pub _padding1: u16,
    pub region_size: u64,
    pub state: u32,
    pub protect: u32,
    pub type_: u32,
    pub _padding2: u32,
}

/// `GUEST_CONTEXT`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct GuestContext {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub rsp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rflags: u64,
}

/// `GUEST_EXCEPTION`.
#[repr(C)]
#[derive(Debug)]
pub struct GuestException {
    pub code: u32,
    pub reserved: u32,
    pub access: u64,
    pub address: u64,
    pub context: *mut GuestContext,
}

/// A vectored exception handler.
pub type ExceptionHandler = extern "C" fn(*mut GuestException) -> i32;

/// `HOST_COMMIT_INFO`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct HostCommitInfo {
    pub commit_limit: u64,
    pub committed: u64,
    pub critical_reserve: u64,
    pub low_threshold: u64,
    pub high_threshold: u64,
}

/// `HOST_SERVICES` version 1.
#[repr(C)]
pub struct HostServices {
    pub cb_size: u32,
    pub version: u32,
    pub page_size: u32,
    pub allocation_granularity: u32,
    pub min_application_address: u64,
    pub max_application_address: u64,
    pub write: extern "C" fn(*const u8, u64),
    pub exit: extern "C" fn(i32) -> !,
    pub ticks_ns: extern "C" fn() -> u64,
    pub add_vectored_exception_handler: extern "C" fn(u32, ExceptionHandler) -> *mut core::ffi::c_void,
    pub remove_vectored_exception_handler: extern "C" fn(*mut core::ffi::c_void) -> u32,
    pub get_write_watch: extern "C" fn(u32, *mut u8, u64, *mut *mut u8, *mut u64, *mut u32) -> u32,
    pub reset_write_watch: extern "C" fn(*mut u8, u64) -> u32,
    pub query_commit: extern "C" fn(*mut HostCommitInfo),
}

/// `IHostMemoryManager`'s vtable.
#[repr(C)]
pub struct HostMemoryManagerVtbl {
    pub query_interface: extern "C" fn(*mut HostMemoryManager, *const [u8; 16], *mut *mut core::ffi::c_void) -> HResult,
    pub add_ref: extern "C" fn(*mut HostMemoryManager) -> u32,
    pub release: extern "C" fn(*mut HostMemoryManager) -> u32,
    pub create_malloc: extern "C" fn(*mut HostMemoryManager, u32, *mut *mut core::ffi::c_void) -> HResult,
    pub virtual_alloc: extern "C" fn(*mut HostMemoryManager, *mut u8, u64, u32, u32, CriticalLevel, *mut *mut u8) -> HResult,
    pub virtual_free: extern "C" fn(*mut HostMemoryManager, *mut u8, u64, u32) -> HResult,
    pub virtual_query: extern "C" fn(*mut HostMemoryManager, *mut u8, *mut MemoryBasicInformation, u64, *mut u64) -> HResult,
    pub virtual_protect: extern "C" fn(*mut HostMemoryManager, *mut u8, u64, u32, *mut u32) -> HResult,
    pub get_memory_load: extern "C" fn(*mut HostMemoryManager, *mut u32, *mut u64) -> HResult,
    pub register_memory_notification_callback: extern "C" fn(*mut HostMemoryManager, *mut core::ffi::c_void) -> HResult,
    pub needs_virtual_address_space: extern "C" fn(*mut HostMemoryManager, *mut u8, u64) -> HResult,
    pub acquired_virtual_address_space: extern "C" fn(*mut HostMemoryManager, *mut u8, u64) -> HResult,
    pub released_virtual_address_space: extern "C" fn(*mut HostMemoryManager, *mut u8) -> HResult,
}

/// `IHostMemoryManager`: a pointer to its vtable.
#[repr(C)]
pub struct HostMemoryManager {
    pub vtbl: *const HostMemoryManagerVtbl,
}

/// The host, as a guest sees it: the manager and the services, with safe wrappers.
pub struct Host {
    manager: *mut HostMemoryManager,
    services: *const HostServices,
}

impl Host {
    /// Wraps the pointers the entry point received.
    ///
    /// # Safety
    /// They must be the two arguments of `guest_main` (the host's read-only objects).
    pub unsafe fn from_raw(manager: *mut HostMemoryManager, services: *const HostServices) -> Host {
        Host { manager, services }
    }

    fn vtbl(&self) -> &HostMemoryManagerVtbl {
        // SAFETY: the host's manager object and its vtable live in read-only host pages for the
        // whole life of the guest (from_raw's contract).
        unsafe { &*(*self.manager).vtbl }
    }

    /// `HOST_SERVICES`.
    pub fn services(&self) -> &HostServices {
        // SAFETY: as for vtbl.
        unsafe { &*self.services }
    }

    /// The raw manager pointer (to pass to C code or to make calls with bad arguments on purpose).
    pub fn manager(&self) -> *mut HostMemoryManager {
        self.manager
    }

    /// Writes text to the console.
    pub fn print(&self, s: &str) {
        (self.services().write)(s.as_ptr(), s.len() as u64);
    }

    /// Ends the guest now.
    pub fn exit(&self, code: i32) -> ! {
        (self.services().exit)(code)
    }

    /// Nanoseconds since boot.
    pub fn ticks_ns(&self) -> u64 {
        (self.services().ticks_ns)()
    }

    /// `VirtualAlloc`; returns the base.
    pub fn virtual_alloc(&self, addr: usize, size: usize, kind: u32, protect: u32, level: CriticalLevel) -> Result<usize, HResult> {
        let mut out: *mut u8 = core::ptr::null_mut();
        (self.vtbl().virtual_alloc)(self.manager, addr as *mut u8, size as u64, kind, protect, level, &mut out).check()?;
        Ok(out as usize)
    }

    /// `VirtualFree`.
    pub fn virtual_free(&self, addr: usize, size: usize, free_type: u32) -> Result<(), HResult> {
        (self.vtbl().virtual_free)(self.manager, addr as *mut u8, size as u64, free_type).check()
    }

    /// `VirtualQuery`.
    pub fn virtual_query(&self, addr: usize) -> Result<MemoryBasicInformation, HResult> {
        let mut info = MemoryBasicInformation::default();
        let mut written = 0u64;
        (self.vtbl().virtual_query)(self.manager, addr as *mut u8, &mut info, 48, &mut written).check()?;
        Ok(info)
    }

    /// `VirtualProtect`; returns the old protection.
    pub fn virtual_protect(&self, addr: usize, size: usize, protect: u32) -> Result<u32, HResult> {
        let mut old = 0u32;
        (self.vtbl().virtual_protect)(self.manager, addr as *mut u8, size as u64, protect, &mut old).check()?;
        Ok(old)
    }

    /// `GetMemoryLoad`: (percent, bytes available at task criticality).
    pub fn memory_load(&self) -> Result<(u32, u64), HResult> {
        let (mut load, mut available) = (0u32, 0u64);
        (self.vtbl().get_memory_load)(self.manager, &mut load, &mut available).check()?;
        Ok((load, available))
    }

    /// Adds a vectored exception handler (first in line if `first`); `None` if refused.
    pub fn add_exception_handler(&self, first: bool, handler: ExceptionHandler) -> Option<core::ptr::NonNull<core::ffi::c_void>> {
        core::ptr::NonNull::new((self.services().add_vectored_exception_handler)(first as u32, handler))
    }

    /// Removes a handler; `true` if it was registered.
    pub fn remove_exception_handler(&self, handle: core::ptr::NonNull<core::ffi::c_void>) -> bool {
        (self.services().remove_vectored_exception_handler)(handle.as_ptr()) == 1
    }

    /// `GetWriteWatch` into `out`; returns how many page addresses were written.
    pub fn get_write_watch(&self, reset: bool, base: usize, size: usize, out: &mut [usize]) -> Result<usize, u32> {
        let mut count = out.len() as u64;
        let mut granularity = 0u32;
        let flags = reset as u32;
        match (self.services().get_write_watch)(flags, base as *mut u8, size as u64, out.as_mut_ptr().cast(), &mut count, &mut granularity) {
            0 => Ok(count as usize),
            e => Err(e),
        }
    }

    /// `ResetWriteWatch`.
    pub fn reset_write_watch(&self, base: usize, size: usize) -> Result<(), u32> {
        match (self.services().reset_write_watch)(base as *mut u8, size as u64) {
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
        // SAFETY: the host keeps a NUL-terminated string of at most a few KiB at this address in
        // its read-only data page for the guest's whole life; the scan stops at the NUL.
        let bytes = unsafe {
            let mut n = 0;
            while n < 4096 && *p.add(n) != 0 {
                n += 1;
            }
            core::slice::from_raw_parts(p, n)
        };
        core::str::from_utf8(bytes).unwrap_or("")
    }

    /// `query_commit`.
    pub fn commit_info(&self) -> HostCommitInfo {
        let mut info = HostCommitInfo::default();
        (self.services().query_commit)(&mut info);
        info
    }
}

/// `MALLOC_TYPE` flags of `CreateMalloc` (host-abi §3).
pub const MALLOC_THREADSAFE: u32 = 0x1;
/// Blocks of the heap are executable (`PAGE_EXECUTE_READWRITE`).
pub const MALLOC_EXECUTABLE: u32 = 0x2;

/// `IHostMalloc`'s vtable.
#[repr(C)]
pub struct HostMallocVtbl {
    pub query_interface: extern "C" fn(*mut HostMallocObject, *const [u8; 16], *mut *mut core::ffi::c_void) -> HResult,
    pub add_ref: extern "C" fn(*mut HostMallocObject) -> u32,
    pub release: extern "C" fn(*mut HostMallocObject) -> u32,
    pub alloc: extern "C" fn(*mut HostMallocObject, u64, CriticalLevel, *mut *mut u8) -> HResult,
    pub debug_alloc: extern "C" fn(*mut HostMallocObject, u64, CriticalLevel, *const u8, i32, *mut *mut u8) -> HResult,
    pub free: extern "C" fn(*mut HostMallocObject, *mut u8) -> HResult,
}

/// `IHostMalloc`: a pointer to its vtable.
#[repr(C)]
pub struct HostMallocObject {
    pub vtbl: *const HostMallocVtbl,
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
        (self.vtbl().alloc)(self.object, size as u64, level, &mut out).check()?;
        Ok(out)
    }

    /// `DebugAlloc`: as `alloc`, recording `file` (NUL-terminated) and `line` for leak reports.
    pub fn debug_alloc(&self, size: usize, level: CriticalLevel, file: &core::ffi::CStr, line: i32) -> Result<*mut u8, HResult> {
        let mut out: *mut u8 = core::ptr::null_mut();
        (self.vtbl().debug_alloc)(self.object, size as u64, level, file.as_ptr().cast(), line, &mut out).check()?;
        Ok(out)
    }

    /// `Free` (NULL is S_OK; a foreign or freed pointer is E_INVALIDARG).
    pub fn free(&self, p: *mut u8) -> Result<(), HResult> {
        (self.vtbl().free)(self.object, p).check()
    }
}

impl Drop for Malloc {
    fn drop(&mut self) {
        (self.vtbl().release)(self.object);
    }
}

/// `ICLRMemoryNotificationCallback`'s vtable (implemented by the guest).
#[repr(C)]
pub struct MemoryNotificationCallbackVtbl {
    pub query_interface: extern "C" fn(*mut MemoryNotificationCallback, *const [u8; 16], *mut *mut core::ffi::c_void) -> HResult,
    pub add_ref: extern "C" fn(*mut MemoryNotificationCallback) -> u32,
    pub release: extern "C" fn(*mut MemoryNotificationCallback) -> u32,
    /// Called with `eMemoryAvailable` (1 low, 2 neutral, 3 high) once per band change, in ring 3
    /// on the guest's stack, just before the host call that caused the change returns.
    pub on_memory_notification: extern "C" fn(*mut MemoryNotificationCallback, u32) -> HResult,
}

/// A guest-implemented `ICLRMemoryNotificationCallback` object: a pointer to a static vtable.
/// Keep it in a `static` (the host holds a reference to it until it is replaced).
#[repr(C)]
pub struct MemoryNotificationCallback {
    pub vtbl: &'static MemoryNotificationCallbackVtbl,
}

// SAFETY: the object is an immutable pointer to an immutable static table.
unsafe impl Sync for MemoryNotificationCallback {}

/// `EMemoryAvailable` values.
pub mod memory_available {
    pub const LOW: u32 = 1;
    pub const NEUTRAL: u32 = 2;
    pub const HIGH: u32 = 3;
}

impl Host {
    /// `CreateMalloc(flags)` (`MALLOC_THREADSAFE`, `MALLOC_EXECUTABLE`).
    pub fn create_malloc(&self, flags: u32) -> Result<Malloc, HResult> {
        let mut out: *mut core::ffi::c_void = core::ptr::null_mut();
        (self.vtbl().create_malloc)(self.manager, flags, &mut out).check()?;
        Ok(Malloc { object: out.cast() })
    }

    /// `RegisterMemoryNotificationCallback`: the host AddRefs `callback` (and Releases the one it
    /// replaces); `None` unregisters.
    pub fn register_memory_notification_callback(&self, callback: Option<&'static MemoryNotificationCallback>) -> Result<(), HResult> {
        let p = callback.map_or(core::ptr::null_mut(), |c| c as *const MemoryNotificationCallback as *mut core::ffi::c_void);
        (self.vtbl().register_memory_notification_callback)(self.manager, p).check()
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
pub static mut PANIC_SERVICES: *const HostServices = core::ptr::null();
#[doc(hidden)]
pub static mut GUEST_ARGS: *const u8 = core::ptr::null();

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
            // SAFETY: written once, before anything can panic, by the only thread.
            unsafe {
                $crate::PANIC_SERVICES = services;
                $crate::GUEST_ARGS = args;
            }
            $main(&host)
        }
    };
}

#[cfg(all(feature = "panic-handler", not(test)))]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    // SAFETY: set by guest_entry! before the guest's code runs; the host's services outlive it.
    let services = unsafe { PANIC_SERVICES };
    if !services.is_null() {
        // SAFETY: a pointer to the host's read-only HOST_SERVICES.
        let services = unsafe { &*services };
        let host = Host { manager: core::ptr::null_mut(), services };
        let _ = fmt::Write::write_fmt(&mut Console(&host), format_args!("guest panicked: {info}\n"));
        (services.exit)(101)
    }
    loop {
        core::hint::spin_loop();
    }
}
