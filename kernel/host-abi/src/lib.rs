//! The binary contract between the vmkernel host and the guests it runs (`shared/spec/host-abi.md`),
//! in Rust: every layout, number and constant that crosses the ring boundary, defined once.
//!
//! Its C twin is `kernel/guest-abi/include/host_abi.h`; `tests/header.rs` compiles that header
//! and checks every `#define`, enum value, interface identifier and struct layout in it against
//! this crate, so the two cannot drift. The layouts are also checked at compile time (the
//! `const` assertions below).
//!
//! Who uses it:
//! - `guest-abi` (Rust guests) re-exports all of it and adds safe wrappers;
//! - `host-lib` (the host's ring-3 library) takes the host-page addresses, the system-call
//!   numbers, the vtable layouts and the results from it;
//! - `address-space` re-exports [`win32`] as its own `win32` module (the values its API takes).
//!
//! Everything here is plain data: no code runs and no `unsafe` code is written (the
//! `HOST_SERVICES` function pointers are `unsafe extern "C" fn` types: calling one is the
//! caller's `unsafe`, see [`HostServices`]).
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use core::ffi::c_void;
use core::fmt;
use core::mem::{offset_of, size_of};

/// Defines documented `pub const`s and a table of them by name, [`win32::CONSTANTS`], which the
/// header check compares with the C `#define`s of the same names.
macro_rules! constants {
    ($($(#[$doc:meta])* $name:ident: $ty:ty = $value:expr;)*) => {
        $($(#[$doc])* pub const $name: $ty = $value;)*
        /// Every constant of this module with its C name (all of them are `#define`s in
        /// `host_abi.h`), as a signed 64-bit value.
        pub const CONSTANTS: &[(&str, i64)] = &[$((stringify!($name), $name as i64)),*];
    };
}

/// Win32 constants: `MEM_*`, `PAGE_*`, write-watch flags, Win32 error codes, exception codes
/// (win32-semantics §1.3). Exact copies of `winnt.h` / `winerror.h`, as plain integers because
/// that is how a guest passes them.
pub mod win32 {
    constants! {
        /// Commits pages (allocation type).
        MEM_COMMIT: u32 = 0x1000;
        /// Reserves address space (allocation type).
        MEM_RESERVE: u32 = 0x2000;
        /// Decommits pages (free type).
        MEM_DECOMMIT: u32 = 0x4000;
        /// Releases a whole allocation (free type).
        MEM_RELEASE: u32 = 0x8000;
        /// State of a page that belongs to no allocation (`MEMORY_BASIC_INFORMATION::State`).
        MEM_FREE: u32 = 0x10000;
        /// Type of a `VirtualAlloc` allocation.
        MEM_PRIVATE: u32 = 0x20000;
        /// Type of a mapped view (never produced by this host).
        MEM_MAPPED: u32 = 0x40000;
        /// The contents of the pages are no longer of interest (allocation type).
        MEM_RESET: u32 = 0x80000;
        /// Places a reservation at the highest possible address.
        MEM_TOP_DOWN: u32 = 0x100000;
        /// Tracks the pages written to (allocation type, needs `MEM_RESERVE`).
        MEM_WRITE_WATCH: u32 = 0x200000;
        /// AWE physical memory (rejected by this host).
        MEM_PHYSICAL: u32 = 0x400000;
        /// Undoes a `MEM_RESET`.
        MEM_RESET_UNDO: u32 = 0x1000000;
        /// Type of an image allocation (a loaded program, or the host's own pages).
        MEM_IMAGE: u32 = 0x1000000;
        /// Maps 2 MiB pages.
        MEM_LARGE_PAGES: u32 = 0x20000000;
        /// Not a valid `VirtualAlloc` flag (listed so callers can test its rejection).
        AT_ROUND_TO_PAGE: u32 = 0x40000000;

        /// No access: any touch is an access violation.
        PAGE_NOACCESS: u32 = 0x01;
        /// Read only.
        PAGE_READONLY: u32 = 0x02;
        /// Read and write.
        PAGE_READWRITE: u32 = 0x04;
        /// Copy on write (images and views only).
        PAGE_WRITECOPY: u32 = 0x08;
        /// Execute (x86_64 cannot forbid reads of executable pages).
        PAGE_EXECUTE: u32 = 0x10;
        /// Execute and read.
        PAGE_EXECUTE_READ: u32 = 0x20;
        /// Execute, read and write.
        PAGE_EXECUTE_READWRITE: u32 = 0x40;
        /// Execute and copy on write (images and views only).
        PAGE_EXECUTE_WRITECOPY: u32 = 0x80;
        /// One-shot guard page modifier.
        PAGE_GUARD: u32 = 0x100;
        /// Uncached memory modifier.
        PAGE_NOCACHE: u32 = 0x200;
        /// Write-combined memory modifier.
        PAGE_WRITECOMBINE: u32 = 0x400;

        /// `GetWriteWatch` flag: reset the pages returned.
        WRITE_WATCH_FLAG_RESET: u32 = 0x1;

        /// `CreateMalloc` flag (`MALLOC_TYPE`, host-abi §3): the heap may be used by several threads.
        MALLOC_THREADSAFE: u32 = 0x1;
        /// `CreateMalloc` flag: blocks of the heap are executable (`PAGE_EXECUTE_READWRITE`).
        MALLOC_EXECUTABLE: u32 = 0x2;

        /// `ERROR_ACCESS_DENIED`.
        ERROR_ACCESS_DENIED: u32 = 5;
        /// `ERROR_NOT_ENOUGH_MEMORY`.
        ERROR_NOT_ENOUGH_MEMORY: u32 = 8;
        /// `ERROR_BAD_LENGTH`.
        ERROR_BAD_LENGTH: u32 = 24;
        /// `ERROR_INVALID_HANDLE` (`wait_thread` on an unknown or closed handle).
        ERROR_INVALID_HANDLE: u32 = 6;
        /// `ERROR_INVALID_PARAMETER`.
        ERROR_INVALID_PARAMETER: u32 = 87;
        /// `ERROR_INVALID_ADDRESS`.
        ERROR_INVALID_ADDRESS: u32 = 487;
        /// `ERROR_NOACCESS`.
        ERROR_NOACCESS: u32 = 998;
        /// `ERROR_PRIVILEGE_NOT_HELD`.
        ERROR_PRIVILEGE_NOT_HELD: u32 = 1314;
        /// `ERROR_COMMITMENT_LIMIT`.
        ERROR_COMMITMENT_LIMIT: u32 = 1455;
        /// `ERROR_TIMEOUT` (`wait_on_address` timed out).
        ERROR_TIMEOUT: u32 = 0x5B4;
        /// `WAIT_TIMEOUT` (`wait_thread` timed out).
        WAIT_TIMEOUT: u32 = 0x102;

        /// Exception code: access to memory the protection forbids (host-abi §8).
        STATUS_ACCESS_VIOLATION: u32 = 0xC000_0005;
        /// Exception code, and what `GetLastError` reports for a touched guard page
        /// (win32-semantics §1.4).
        STATUS_GUARD_PAGE_VIOLATION: u32 = 0x8000_0001;
        /// Exception code: misaligned data access (alignment check).
        STATUS_DATATYPE_MISALIGNMENT: u32 = 0x8000_0002;
        /// Exception code: `int3`.
        STATUS_BREAKPOINT: u32 = 0x8000_0003;
        /// Exception code: single step (trap flag).
        STATUS_SINGLE_STEP: u32 = 0x8000_0004;
        /// Exception code: the guard page below a stack was hit with no room left.
        STATUS_STACK_OVERFLOW: u32 = 0xC000_00FD;
        /// Exception code: undefined opcode.
        STATUS_ILLEGAL_INSTRUCTION: u32 = 0xC000_001D;
        /// Exception code: a ring-0 instruction in ring 3.
        STATUS_PRIVILEGED_INSTRUCTION: u32 = 0xC000_0096;
        /// Exception code: integer division by zero.
        STATUS_INTEGER_DIVIDE_BY_ZERO: u32 = 0xC000_0094;
        /// Exception code: integer overflow (`idiv` overflow, `into`).
        STATUS_INTEGER_OVERFLOW: u32 = 0xC000_0095;
        /// Exception code (host-abi §10.1): x87/SSE divide by zero.
        STATUS_FLOAT_DIVIDE_BY_ZERO: u32 = 0xC000_008E;
        /// Exception code: x87/SSE invalid operation.
        STATUS_FLOAT_INVALID_OPERATION: u32 = 0xC000_0090;
        /// Exception code: x87/SSE overflow.
        STATUS_FLOAT_OVERFLOW: u32 = 0xC000_0091;
        /// Exception code: x87/SSE underflow.
        STATUS_FLOAT_UNDERFLOW: u32 = 0xC000_0093;
        /// Exception code: x87/SSE inexact result.
        STATUS_FLOAT_INEXACT_RESULT: u32 = 0xC000_008F;
        /// Exception code: x87/SSE denormal operand.
        STATUS_FLOAT_DENORMAL_OPERAND: u32 = 0xC000_008D;
        /// Exception code: a SIMD exception whose cause is none of the above.
        STATUS_FLOAT_MULTIPLE_TRAPS: u32 = 0xC000_02B5;
        /// `HOST_SERVICES.cbSize` of a version-1 host (host-abi §7).
        HOST_SERVICES_V1_SIZE: u32 = 96;
        /// `HOST_SERVICES.cbSize` of a version-2 host (host-abi §10.2): check `cbSize` against it
        /// (and `version >= 2`) before using the thread services.
        HOST_SERVICES_V2_SIZE: u32 = 192;
        /// A vectored handler's answer: resume at the (possibly changed) context.
        EXCEPTION_CONTINUE_EXECUTION: i32 = -1;
        /// A vectored handler's answer: pass the exception to the next handler.
        EXCEPTION_CONTINUE_SEARCH: i32 = 0;
    }

    /// Page size (`dwPageSize`, `HOST_SERVICES::page_size`).
    pub const PAGE_SIZE: u64 = 0x1000;
    /// Allocation granularity (`dwAllocationGranularity`, `HOST_SERVICES::allocation_granularity`).
    pub const ALLOCATION_GRANULARITY: u64 = 0x10000;
    /// Large page size (`GetLargePageMinimum`).
    pub const LARGE_PAGE_SIZE: u64 = 0x20_0000;
}

/// An HRESULT.
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct HResult(pub i32);

/// Defines the `HResult` constants and [`HResult::CONSTANTS`], checked against the header's
/// `#define`s of the same names.
macro_rules! hresults {
    ($($(#[$doc:meta])* $name:ident = $value:expr;)*) => {
        impl HResult {
            $($(#[$doc])* pub const $name: HResult = HResult($value as i32);)*
            /// Every named HRESULT with its C name.
            pub const CONSTANTS: &[(&str, HResult)] = &[$((stringify!($name), HResult::$name)),*];
        }
    };
}

hresults! {
    /// Success.
    S_OK = 0;
    /// Out of memory, or over the commit limit (host-abi §4).
    E_OUTOFMEMORY = 0x8007_000E_u32;
    /// An invalid argument (`HRESULT_FROM_WIN32(ERROR_INVALID_PARAMETER)`).
    E_INVALIDARG = 0x8007_0057_u32;
    /// A null pointer where one is required.
    E_POINTER = 0x8000_4003_u32;
    /// `QueryInterface` for an interface the object does not implement.
    E_NOINTERFACE = 0x8000_4002_u32;
    /// A method this host does not implement.
    E_NOTIMPL = 0x8000_4001_u32;
    /// Unspecified failure.
    E_FAIL = 0x8000_4005_u32;
    /// The runtime is not available (the CLR's hosting error).
    HOST_E_CLRNOTAVAILABLE = 0x8013_1023_u32;
    /// A wait timed out.
    HOST_E_TIMEOUT = 0x8013_1024_u32;
    /// The caller does not own the lock.
    HOST_E_NOT_OWNER = 0x8013_1025_u32;
    /// An abandoned wait object.
    HOST_E_ABANDONED = 0x8013_1026_u32;
}

impl HResult {
    /// `HRESULT_FROM_WIN32`, as `winerror.h` (and `host_abi.h`) define it: 0 and values that
    /// are already HRESULTs (negative as an `i32`) pass through; any other code `e` becomes
    /// `0x8007_0000 | (e & 0xFFFF)`.
    pub const fn from_win32(e: u32) -> HResult {
        let x = e as i32;
        HResult(if x <= 0 { x } else { (0x8007_0000 | (e & 0xFFFF)) as i32 })
    }

    /// `Ok(())` for a success code (`SUCCEEDED`), else `Err(self)`.
    pub const fn to_result(self) -> Result<(), HResult> {
        if self.0 >= 0 { Ok(()) } else { Err(self) }
    }
}

impl fmt::Debug for HResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HRESULT({:#010x})", self.0 as u32)
    }
}

/// Defines a 32-bit C enum: the Rust enum, `from_u32` (decoding an untrusted value) and
/// `VALUES`, every value with its C enumerator name (checked against the header).
macro_rules! abi_enum {
    ($(#[$doc:meta])* pub enum $name:ident { $($(#[$vdoc:meta])* $variant:ident = $value:literal => $cname:literal,)* }) => {
        $(#[$doc])*
        #[repr(u32)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vdoc])* $variant = $value,)*
        }

        impl $name {
            /// Every value with its C enumerator name.
            pub const VALUES: &[(&str, $name)] = &[$(($cname, $name::$variant)),*];

            /// Decodes a value a caller passed; `None` for anything else.
            pub const fn from_u32(value: u32) -> Option<$name> {
                match value {
                    $($value => Some($name::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

abi_enum! {
    /// `EMemoryCriticalLevel`.
    pub enum CriticalLevel {
        /// `eTaskCritical`: may fail when memory is low.
        Task = 0 => "eTaskCritical",
        /// `eAppDomainCritical`.
        AppDomain = 1 => "eAppDomainCritical",
        /// `eProcessCritical`: may use the host's critical reserve.
        Process = 2 => "eProcessCritical",
    }
}

abi_enum! {
    /// `EMemoryAvailable`: the band of free memory `OnMemoryNotification` reports (host-abi §5).
    pub enum MemoryAvailable {
        /// `eMemoryAvailableLow`: below the low threshold.
        Low = 1 => "eMemoryAvailableLow",
        /// `eMemoryAvailableNeutral`: between the thresholds.
        Neutral = 2 => "eMemoryAvailableNeutral",
        /// `eMemoryAvailableHigh`: above the high threshold.
        High = 3 => "eMemoryAvailableHigh",
    }
}

/// `EMemoryAvailable` values as plain integers (what `OnMemoryNotification` receives).
pub mod memory_available {
    use super::MemoryAvailable;
    /// `eMemoryAvailableLow`.
    pub const LOW: u32 = MemoryAvailable::Low as u32;
    /// `eMemoryAvailableNeutral`.
    pub const NEUTRAL: u32 = MemoryAvailable::Neutral as u32;
    /// `eMemoryAvailableHigh`.
    pub const HIGH: u32 = MemoryAvailable::High as u32;
}

/// A COM `GUID` / `IID`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guid {
    /// `Data1`.
    pub data1: u32,
    /// `Data2`.
    pub data2: u16,
    /// `Data3`.
    pub data3: u16,
    /// `Data4`.
    pub data4: [u8; 8],
}

impl Guid {
    /// The 16 bytes of the GUID as they lie in memory (what a `REFIID` points to).
    pub const fn to_bytes(&self) -> [u8; 16] {
        let [a, b, c, d] = self.data1.to_le_bytes();
        let [e, f] = self.data2.to_le_bytes();
        let [g, h] = self.data3.to_le_bytes();
        let t = self.data4;
        [a, b, c, d, e, f, g, h, t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7]]
    }
}

/// `IID_IUnknown`.
pub const IID_IUNKNOWN: Guid = Guid { data1: 0, data2: 0, data3: 0, data4: [0xC0, 0, 0, 0, 0, 0, 0, 0x46] };
/// `IID_IHostMemoryManager`.
pub const IID_IHOST_MEMORY_MANAGER: Guid =
    Guid { data1: 0x7BC698D1, data2: 0xF9E3, data3: 0x4460, data4: [0x9C, 0xDE, 0xD0, 0x42, 0x48, 0xE9, 0xFA, 0x25] };
/// `IID_IHostMalloc`.
pub const IID_IHOST_MALLOC: Guid =
    Guid { data1: 0x1831991C, data2: 0xCC53, data3: 0x4A31, data4: [0xB2, 0x18, 0x04, 0xE9, 0x10, 0x44, 0x64, 0x79] };
/// `IID_ICLRMemoryNotificationCallback`.
pub const IID_ICLR_MEMORY_NOTIFICATION_CALLBACK: Guid =
    Guid { data1: 0x47EB8E57, data2: 0x0846, data3: 0x4546, data4: [0xAF, 0x76, 0x6F, 0x42, 0xFC, 0xFC, 0x26, 0x49] };
/// Every interface identifier with its C name, for the header check.
pub const IIDS: &[(&str, Guid)] = &[
    ("IID_IUnknown", IID_IUNKNOWN),
    ("IID_IHostMemoryManager", IID_IHOST_MEMORY_MANAGER),
    ("IID_IHostMalloc", IID_IHOST_MALLOC),
    ("IID_ICLRMemoryNotificationCallback", IID_ICLR_MEMORY_NOTIFICATION_CALLBACK),
];

/// `MEMORY_BASIC_INFORMATION` (48 bytes).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MemoryBasicInformation {
    /// `BaseAddress`.
    pub base_address: u64,
    /// `AllocationBase`.
    pub allocation_base: u64,
    /// `AllocationProtect`.
    pub allocation_protect: u32,
    /// `PartitionId`.
    pub partition_id: u16,
    /// Padding (zero).
    pub _padding1: u16,
    /// `RegionSize`.
    pub region_size: u64,
    /// `State`.
    pub state: u32,
    /// `Protect`.
    pub protect: u32,
    /// `Type`.
    pub type_: u32,
    /// Padding (zero).
    pub _padding2: u32,
}

/// `GUEST_CONTEXT`: the guest's registers at an exception (host-abi §8); a handler may change
/// them before returning `EXCEPTION_CONTINUE_EXECUTION`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)] // the fields are the registers they are named after
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

/// `GUEST_EXCEPTION`: what a vectored handler receives (host-abi §8).
#[repr(C)]
#[derive(Debug)]
pub struct GuestException {
    /// `STATUS_*` code.
    pub code: u32,
    /// Zero.
    pub reserved: u32,
    /// 0 read, 1 write, 8 execute (access violations and guard pages).
    pub access: u64,
    /// The faulting address (access violations and guard pages).
    pub address: u64,
    /// The guest's registers at the exception.
    pub context: *mut GuestContext,
}

/// A vectored exception handler: returns `EXCEPTION_CONTINUE_EXECUTION` or
/// `EXCEPTION_CONTINUE_SEARCH`.
pub type ExceptionHandler = extern "C" fn(*mut GuestException) -> i32;

/// `HOST_COMMIT_INFO` (`HOST_SERVICES::query_commit`).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HostCommitInfo {
    /// The host's commit limit in bytes.
    pub commit_limit: u64,
    /// Bytes committed now.
    pub committed: u64,
    /// The part of the limit only `eProcessCritical` commits may use.
    pub critical_reserve: u64,
    /// Below this much free, the band is low.
    pub low_threshold: u64,
    /// Above this much free, the band is high.
    pub high_threshold: u64,
}

/// A guest thread's entry point (`GUEST_THREAD_START`, host-abi §10.2): its return value is the
/// thread's exit code.
pub type ThreadStart = extern "C" fn(*mut c_void) -> u32;

/// The first 96 bytes of `HOST_SERVICES`, what every host has (version 1, host-abi §7): the part of
/// the table a guest may read before it knows the host's version (a version-1 host's table ends
/// here, so a reference to the whole [`HostServices`] would reach past it).
///
/// The function pointers are `unsafe extern "C" fn`: they take raw pointers the host writes
/// through or reads (and `exit`, `exit_thread`, `close_thread` end what other code may still rely
/// on), which no Rust type checks. Callers use `guest-abi`'s safe wrappers (`Host`, `Thread`) or
/// uphold the contract of each service (host-abi §7, §10.2) themselves.
#[repr(C)]
pub struct HostServicesV1 {
    /// `sizeof(HOST_SERVICES)`: 96 for version 1, [`host::HOST_SERVICES_SIZE`] for version 2.
    pub cb_size: u32,
    /// 1 or 2.
    pub version: u32,
    /// [`win32::PAGE_SIZE`].
    pub page_size: u32,
    /// [`win32::ALLOCATION_GRANULARITY`].
    pub allocation_granularity: u32,
    /// Lowest address a guest can allocate.
    pub min_application_address: u64,
    /// Highest address a guest can allocate.
    pub max_application_address: u64,
    /// Writes bytes to the console.
    pub write: unsafe extern "C" fn(*const u8, u64),
    /// Ends the guest.
    pub exit: unsafe extern "C" fn(i32) -> !,
    /// Nanoseconds since boot.
    pub ticks_ns: unsafe extern "C" fn() -> u64,
    /// `AddVectoredExceptionHandler(first, handler)`: a handle, or null.
    pub add_vectored_exception_handler: unsafe extern "C" fn(u32, ExceptionHandler) -> *mut c_void,
    /// `RemoveVectoredExceptionHandler(handle)`: 1 if it was registered.
    pub remove_vectored_exception_handler: unsafe extern "C" fn(*mut c_void) -> u32,
    /// `GetWriteWatch(flags, base, size, addresses, count, granularity)`: a Win32 error code.
    pub get_write_watch: unsafe extern "C" fn(u32, *mut u8, u64, *mut *mut u8, *mut u64, *mut u32) -> u32,
    /// `ResetWriteWatch(base, size)`: a Win32 error code.
    pub reset_write_watch: unsafe extern "C" fn(*mut u8, u64) -> u32,
    /// Fills a [`HostCommitInfo`].
    pub query_commit: unsafe extern "C" fn(*mut HostCommitInfo),
}

/// `HOST_SERVICES` version 2 (host-abi §7 and §10.2): the version-1 fields keep their offsets; a
/// guest checks `version >= 2` (or `cb_size >= 192`) before it uses the thread services.
///
/// As in [`HostServicesV1`], the function pointers are `unsafe extern "C" fn`: callers use
/// `guest-abi`'s safe wrappers (`Host`, `Thread`, `Mutex`) or uphold each service's contract
/// (host-abi §7, §10.2) themselves: pointers valid for what the call reads or writes, no handle
/// closed or waited on that other code owns, no thread ended while its frames hold values that
/// must be dropped.
#[repr(C)]
pub struct HostServices {
    /// `sizeof(HOST_SERVICES)`: [`host::HOST_SERVICES_SIZE`].
    pub cb_size: u32,
    /// 2.
    pub version: u32,
    /// [`win32::PAGE_SIZE`].
    pub page_size: u32,
    /// [`win32::ALLOCATION_GRANULARITY`].
    pub allocation_granularity: u32,
    /// Lowest address a guest can allocate.
    pub min_application_address: u64,
    /// Highest address a guest can allocate.
    pub max_application_address: u64,
    /// Writes bytes to the console.
    pub write: unsafe extern "C" fn(*const u8, u64),
    /// Ends the guest.
    pub exit: unsafe extern "C" fn(i32) -> !,
    /// Nanoseconds since boot.
    pub ticks_ns: unsafe extern "C" fn() -> u64,
    /// `AddVectoredExceptionHandler(first, handler)`: a handle, or null.
    pub add_vectored_exception_handler: unsafe extern "C" fn(u32, ExceptionHandler) -> *mut c_void,
    /// `RemoveVectoredExceptionHandler(handle)`: 1 if it was registered.
    pub remove_vectored_exception_handler: unsafe extern "C" fn(*mut c_void) -> u32,
    /// `GetWriteWatch(flags, base, size, addresses, count, granularity)`: a Win32 error code.
    pub get_write_watch: unsafe extern "C" fn(u32, *mut u8, u64, *mut *mut u8, *mut u64, *mut u32) -> u32,
    /// `ResetWriteWatch(base, size)`: a Win32 error code.
    pub reset_write_watch: unsafe extern "C" fn(*mut u8, u64) -> u32,
    /// Fills a [`HostCommitInfo`].
    pub query_commit: unsafe extern "C" fn(*mut HostCommitInfo),
    /// Version 2: CPUs the kernel runs guest threads on.
    pub cpu_count: u32,
    /// Version 2: 0.
    pub reserved0: u32,
    /// `create_thread(start, arg, stack_reserve, stack_commit)`: a handle, or 0.
    pub create_thread: unsafe extern "C" fn(ThreadStart, *mut c_void, u64, u64) -> u64,
    /// `exit_thread(code)`: ends the calling thread.
    pub exit_thread: unsafe extern "C" fn(u32) -> !,
    /// `wait_thread(handle, timeout_ns, exit_code)`: 0, `WAIT_TIMEOUT`, `ERROR_INVALID_HANDLE`
    /// or `ERROR_NOACCESS`.
    pub wait_thread: unsafe extern "C" fn(u64, u64, *mut u32) -> u32,
    /// `close_thread(handle)`: 1 closed, 0 unknown.
    pub close_thread: unsafe extern "C" fn(u64) -> u32,
    /// The calling thread's id (the main thread's is 1).
    pub current_thread_id: unsafe extern "C" fn() -> u32,
    /// Gives up the rest of the time slice.
    pub yield_now: unsafe extern "C" fn(),
    /// Sleeps at least this many nanoseconds.
    pub sleep_ns: unsafe extern "C" fn(u64),
    /// `WaitOnAddress(address, compare, size, timeout_ns)`: 0, `ERROR_TIMEOUT`,
    /// `ERROR_INVALID_PARAMETER` or `ERROR_NOACCESS`.
    pub wait_on_address: unsafe extern "C" fn(*const c_void, *const c_void, u64, u64) -> u32,
    /// `WakeByAddressSingle` (`all` 0) or `WakeByAddressAll` (`all` non-zero).
    pub wake_by_address: unsafe extern "C" fn(*const c_void, u32),
    /// Sets the calling thread's FS base (ignored unless a canonical user address).
    pub set_thread_pointer: unsafe extern "C" fn(*mut c_void),
    /// The calling thread's FS base.
    pub get_thread_pointer: unsafe extern "C" fn() -> *mut c_void,
}

/// `IHostMemoryManager`'s vtable; the order is the ABI (host-abi §3).
#[repr(C)]
#[allow(missing_docs)] // the slots are the methods they are named after
pub struct HostMemoryManagerVtbl {
    pub query_interface: extern "C" fn(*mut HostMemoryManager, *const [u8; 16], *mut *mut c_void) -> HResult,
    pub add_ref: extern "C" fn(*mut HostMemoryManager) -> u32,
    pub release: extern "C" fn(*mut HostMemoryManager) -> u32,
    pub create_malloc: extern "C" fn(*mut HostMemoryManager, u32, *mut *mut c_void) -> HResult,
    pub virtual_alloc:
        extern "C" fn(*mut HostMemoryManager, *mut u8, u64, u32, u32, CriticalLevel, *mut *mut u8) -> HResult,
    pub virtual_free: extern "C" fn(*mut HostMemoryManager, *mut u8, u64, u32) -> HResult,
    pub virtual_query:
        extern "C" fn(*mut HostMemoryManager, *mut u8, *mut MemoryBasicInformation, u64, *mut u64) -> HResult,
    pub virtual_protect: extern "C" fn(*mut HostMemoryManager, *mut u8, u64, u32, *mut u32) -> HResult,
    pub get_memory_load: extern "C" fn(*mut HostMemoryManager, *mut u32, *mut u64) -> HResult,
    pub register_memory_notification_callback: extern "C" fn(*mut HostMemoryManager, *mut c_void) -> HResult,
    pub needs_virtual_address_space: extern "C" fn(*mut HostMemoryManager, *mut u8, u64) -> HResult,
    pub acquired_virtual_address_space: extern "C" fn(*mut HostMemoryManager, *mut u8, u64) -> HResult,
    pub released_virtual_address_space: extern "C" fn(*mut HostMemoryManager, *mut u8) -> HResult,
}

/// `IHostMemoryManager`: a pointer to its vtable.
#[repr(C)]
pub struct HostMemoryManager {
    /// `lpVtbl`.
    pub vtbl: *const HostMemoryManagerVtbl,
}

/// `IHostMalloc`'s vtable.
#[repr(C)]
#[allow(missing_docs)] // the slots are the methods they are named after
pub struct HostMallocVtbl {
    pub query_interface: extern "C" fn(*mut HostMallocObject, *const [u8; 16], *mut *mut c_void) -> HResult,
    pub add_ref: extern "C" fn(*mut HostMallocObject) -> u32,
    pub release: extern "C" fn(*mut HostMallocObject) -> u32,
    pub alloc: extern "C" fn(*mut HostMallocObject, u64, CriticalLevel, *mut *mut u8) -> HResult,
    pub debug_alloc: extern "C" fn(*mut HostMallocObject, u64, CriticalLevel, *const u8, i32, *mut *mut u8) -> HResult,
    pub free: extern "C" fn(*mut HostMallocObject, *mut u8) -> HResult,
}

/// `IHostMalloc`: a pointer to its vtable.
#[repr(C)]
pub struct HostMallocObject {
    /// `lpVtbl`.
    pub vtbl: *const HostMallocVtbl,
}

/// `ICLRMemoryNotificationCallback`'s vtable (implemented by the guest).
#[repr(C)]
pub struct MemoryNotificationCallbackVtbl {
    /// `QueryInterface`.
    pub query_interface: extern "C" fn(*mut MemoryNotificationCallback, *const [u8; 16], *mut *mut c_void) -> HResult,
    /// `AddRef`.
    pub add_ref: extern "C" fn(*mut MemoryNotificationCallback) -> u32,
    /// `Release`.
    pub release: extern "C" fn(*mut MemoryNotificationCallback) -> u32,
    /// Called with an [`MemoryAvailable`] value (1 low, 2 neutral, 3 high) once per band change,
    /// in ring 3 on the guest's stack, just before the host call that caused the change returns.
    pub on_memory_notification: extern "C" fn(*mut MemoryNotificationCallback, u32) -> HResult,
}

/// A guest-implemented `ICLRMemoryNotificationCallback` object: a pointer to a static vtable.
/// Keep it in a `static` (the host holds a reference to it until it is replaced).
#[repr(C)]
pub struct MemoryNotificationCallback {
    /// `lpVtbl`.
    pub vtbl: &'static MemoryNotificationCallbackVtbl,
}

/// The host's pages in every guest and the system calls behind them: a contract between the
/// kernel and its ring-3 library (`host-lib`), not part of the guest-visible ABI (guests reach
/// the host through the pointers their entry point receives, never through these numbers).
pub mod host {
    /// Where the host's pages live in every guest (64 KiB aligned, just below the top of user
    /// space): page 0 is code, page 1 read-only data.
    pub const HOST_BASE: u64 = 0x7FFF_FFFE_0000;
    /// The code page.
    pub const HOST_CODE: u64 = HOST_BASE;
    /// The data page.
    pub const HOST_DATA: u64 = HOST_BASE + super::win32::PAGE_SIZE;
    /// The `IHostMemoryManager` object.
    pub const MANAGER_OBJECT: u64 = HOST_DATA;
    /// Its vtable.
    pub const MANAGER_VTABLE: u64 = HOST_DATA + 0x40;
    /// `HOST_SERVICES`.
    pub const HOST_SERVICES: u64 = HOST_DATA + 0x100;
    /// `sizeof(HOST_SERVICES)` (version 2, exactly the contract's layout).
    pub const HOST_SERVICES_SIZE: u32 = size_of::<super::HostServices>() as u32;
    /// Where the guest's argument string is kept (in the read-only data page, NUL-terminated);
    /// its address is the entry point's third argument.
    pub const ARGS: u64 = HOST_DATA + 0x200;
    /// Longest argument string.
    pub const ARGS_MAX: usize = 0xE00 - 1;

    /// System-call numbers used by the host's stubs and library (guests call through the stubs).
    pub mod nr {
        /// `exit(code)`.
        pub const EXIT: u64 = 0;
        /// `write(buf, len)`.
        pub const WRITE: u64 = 1;
        /// `ticks_ns()`.
        pub const TICKS_NS: u64 = 2;
        /// `add_vectored_exception_handler(first, handler)`.
        pub const ADD_VEH: u64 = 3;
        /// `remove_vectored_exception_handler(handle)`.
        pub const REMOVE_VEH: u64 = 4;
        /// `get_write_watch(...)`.
        pub const GET_WRITE_WATCH: u64 = 5;
        /// `reset_write_watch(base, size)`.
        pub const RESET_WRITE_WATCH: u64 = 6;
        /// `query_commit(out)`.
        pub const QUERY_COMMIT: u64 = 7;
        /// `probe(ptr, len, write) -> 0 | HRESULT`: used by the host library to check guest
        /// pointers.
        pub const PROBE: u64 = 9;
        /// `exception_handler(index)`: the `index`-th vectored handler in call order, or 0 (used
        /// by the exception dispatcher).
        pub const EXCEPTION_HANDLER: u64 = 10;
        /// `continue(context, fpu_image)`: resumes with a context and register image from guest
        /// memory, checked (NtContinue).
        pub const CONTINUE: u64 = 11;
        /// `unhandled(record)`: no handler took the exception; the guest ends with its code.
        pub const UNHANDLED: u64 = 12;
        /// `callbacks_done(context, fpu_image, notified)`: the callbacks of a host call ran;
        /// resumes as `continue` does (and delivers a band change that happened meanwhile).
        pub const CALLBACKS_DONE: u64 = 13;
        /// `deliver_held()`: delivers a memory notification that `HELD_MANAGER` calls held
        /// back (the host library, once a heap's change is complete and its lock released).
        /// Served only when made from the host library's code.
        pub const DELIVER_HELD: u64 = 14;
        /// `IHostMemoryManager` method `i` (vtable slot) is `MANAGER + i`.
        pub const MANAGER: u64 = 16;
        /// `IHostMemoryManager` method `i` as `MANAGER + i` is, with the notification callback
        /// its band change would enter held back until `DELIVER_HELD`: the host library's heaps
        /// call the manager this way, so that a callback (which may use any host function, the
        /// same heap included: host-abi §10.3) never enters a heap in the middle of a change or
        /// while its lock is held. Served only when made from the host library's code.
        pub const HELD_MANAGER: u64 = 64;
        /// Version 2 (host-abi §10.2): `create_thread(start, arg, stack_reserve, stack_commit)`.
        pub const CREATE_THREAD: u64 = 32;
        /// `exit_thread(code)`.
        pub const EXIT_THREAD: u64 = 33;
        /// `wait_thread(handle, timeout_ns, exit_code)`.
        pub const WAIT_THREAD: u64 = 34;
        /// `close_thread(handle)`.
        pub const CLOSE_THREAD: u64 = 35;
        /// `current_thread_id()`.
        pub const CURRENT_THREAD_ID: u64 = 36;
        /// `yield()`.
        pub const YIELD: u64 = 37;
        /// `sleep_ns(ns)`.
        pub const SLEEP_NS: u64 = 38;
        /// `wait_on_address(address, compare, size, timeout_ns)`.
        pub const WAIT_ON_ADDRESS: u64 = 39;
        /// `wake_by_address(address, all)`.
        pub const WAKE_BY_ADDRESS: u64 = 40;
        /// `set_thread_pointer(pointer)`.
        pub const SET_THREAD_POINTER: u64 = 41;
        /// `get_thread_pointer()`.
        pub const GET_THREAD_POINTER: u64 = 42;
    }

    const _: () = assert!(HOST_BASE.is_multiple_of(super::win32::ALLOCATION_GRANULARITY));
    const _: () = assert!(MANAGER_VTABLE + 13 * 8 <= HOST_SERVICES);
    const _: () = assert!(HOST_SERVICES + HOST_SERVICES_SIZE as u64 <= ARGS);
    const _: () = assert!(ARGS + ARGS_MAX as u64 + 1 == HOST_DATA + super::win32::PAGE_SIZE);
}

// Compile-time layout checks: sizes and the offsets the host's assembler and the C header rely
// on (host-abi §3, §7, §8). `tests/header.rs` checks every field against the C compiler.
const _: () = {
    assert!(size_of::<Guid>() == 16);
    assert!(size_of::<MemoryBasicInformation>() == 48);
    assert!(offset_of!(MemoryBasicInformation, region_size) == 24);
    assert!(offset_of!(MemoryBasicInformation, type_) == 40);
    assert!(size_of::<GuestContext>() == 18 * 8);
    assert!(offset_of!(GuestContext, rsp) == 56);
    assert!(offset_of!(GuestContext, rip) == 128);
    assert!(offset_of!(GuestContext, rflags) == 136);
    assert!(size_of::<GuestException>() == 32);
    assert!(offset_of!(GuestException, context) == 24);
    assert!(size_of::<HostCommitInfo>() == 40);
    assert!(size_of::<HostServices>() == 192);
    // The version-1 view is the table's first 96 bytes, field for field.
    assert!(size_of::<HostServicesV1>() == 96);
    assert!(offset_of!(HostServicesV1, max_application_address) == offset_of!(HostServices, max_application_address));
    assert!(offset_of!(HostServicesV1, write) == offset_of!(HostServices, write));
    assert!(offset_of!(HostServicesV1, add_vectored_exception_handler) == offset_of!(HostServices, add_vectored_exception_handler));
    assert!(offset_of!(HostServicesV1, get_write_watch) == offset_of!(HostServices, get_write_watch));
    assert!(offset_of!(HostServicesV1, query_commit) == offset_of!(HostServices, query_commit));
    assert!(offset_of!(HostServices, cpu_count) == size_of::<HostServicesV1>());
    assert!(offset_of!(HostServices, write) == 32);
    assert!(offset_of!(HostServices, query_commit) == 88);
    assert!(offset_of!(HostServices, cpu_count) == 96);
    assert!(offset_of!(HostServices, create_thread) == 104);
    assert!(offset_of!(HostServices, get_thread_pointer) == 184);
    assert!(size_of::<HostMemoryManagerVtbl>() == 13 * 8);
    assert!(offset_of!(HostMemoryManagerVtbl, virtual_alloc) == 4 * 8);
    assert!(size_of::<HostMallocVtbl>() == 6 * 8);
    assert!(size_of::<MemoryNotificationCallbackVtbl>() == 4 * 8);
    assert!(size_of::<CriticalLevel>() == 4);
    assert!(size_of::<MemoryAvailable>() == 4);
};

#[cfg(test)]
mod tests {
    use super::*;

    /// `HResult::from_win32` is the header's `HRESULT_FROM_WIN32` (winerror.h's): 0 and values
    /// already negative as HRESULTs pass through, the rest become `0x8007xxxx`.
    #[test]
    fn from_win32_is_the_headers_hresult_from_win32() {
        assert_eq!(HResult::from_win32(0), HResult::S_OK);
        assert_eq!(HResult::from_win32(win32::ERROR_INVALID_PARAMETER), HResult(0x8007_0057_u32 as i32));
        assert_eq!(HResult::from_win32(win32::ERROR_INVALID_PARAMETER), HResult::E_INVALIDARG);
        assert_eq!(HResult::from_win32(win32::ERROR_NOACCESS), HResult(0x8007_03E6_u32 as i32));
        assert_eq!(HResult::from_win32(0x8013_1023), HResult::HOST_E_CLRNOTAVAILABLE);
        assert_eq!(HResult::from_win32(HResult::E_FAIL.0 as u32), HResult::E_FAIL);
        assert_eq!(HResult::from_win32(0x8000_0000), HResult(i32::MIN));
        // Positive codes above 16 bits keep only their low 16 bits, as the macro does.
        assert_eq!(HResult::from_win32(0x7FFF_0005), HResult(0x8007_0005_u32 as i32));
        const { assert!(HResult::from_win32(87).0 == HResult::E_INVALIDARG.0) };
    }
}
