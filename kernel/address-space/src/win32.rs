//! Win32 constants: `MEM_*`, `PAGE_*`, write-watch flags and the error codes this crate reports.
//!
//! Values are exact copies of `winnt.h` / `winerror.h` (listed in win32-semantics §1.3). They are
//! plain `u32` integers because that is how a guest passes them; [`crate::PageProtection`] parses
//! them into types once, at the API edge.

/// Commits pages (allocation type).
pub const MEM_COMMIT: u32 = 0x1000;
/// Reserves address space (allocation type).
pub const MEM_RESERVE: u32 = 0x2000;
/// Decommits pages (free type).
pub const MEM_DECOMMIT: u32 = 0x4000;
/// Releases a whole allocation (free type).
pub const MEM_RELEASE: u32 = 0x8000;
/// State of a page that belongs to no allocation (`MEMORY_BASIC_INFORMATION::state`).
pub const MEM_FREE: u32 = 0x10000;
/// Type of a `VirtualAlloc` allocation.
pub const MEM_PRIVATE: u32 = 0x20000;
/// Type of a mapped view (never produced by this crate).
pub const MEM_MAPPED: u32 = 0x40000;
/// The contents of the pages are no longer of interest (allocation type).
pub const MEM_RESET: u32 = 0x80000;
/// Places a reservation at the highest possible address.
pub const MEM_TOP_DOWN: u32 = 0x100000;
/// Tracks the pages written to (allocation type, needs `MEM_RESERVE`).
pub const MEM_WRITE_WATCH: u32 = 0x200000;
/// AWE physical memory (rejected by this crate, see [`crate::AddressSpace::virtual_alloc`]).
pub const MEM_PHYSICAL: u32 = 0x400000;
/// Undoes a `MEM_RESET`.
pub const MEM_RESET_UNDO: u32 = 0x1000000;
/// Type of an image allocation (a loaded program, or the host's own pages).
pub const MEM_IMAGE: u32 = 0x1000000;
/// Maps 2 MiB pages.
pub const MEM_LARGE_PAGES: u32 = 0x20000000;
/// Not a valid `VirtualAlloc` flag (listed so callers can test its rejection).
pub const AT_ROUND_TO_PAGE: u32 = 0x40000000;

/// No access: any touch is an access violation.
pub const PAGE_NOACCESS: u32 = 0x01;
/// Read only.
pub const PAGE_READONLY: u32 = 0x02;
/// Read and write.
pub const PAGE_READWRITE: u32 = 0x04;
/// Copy on write (images and views only).
pub const PAGE_WRITECOPY: u32 = 0x08;
/// Execute (x86_64 cannot forbid reads of executable pages).
pub const PAGE_EXECUTE: u32 = 0x10;
/// Execute and read.
pub const PAGE_EXECUTE_READ: u32 = 0x20;
/// Execute, read and write.
pub const PAGE_EXECUTE_READWRITE: u32 = 0x40;
/// Execute and copy on write (images and views only).
pub const PAGE_EXECUTE_WRITECOPY: u32 = 0x80;
/// One-shot guard page modifier.
pub const PAGE_GUARD: u32 = 0x100;
/// Uncached memory modifier.
pub const PAGE_NOCACHE: u32 = 0x200;
/// Write-combined memory modifier.
pub const PAGE_WRITECOMBINE: u32 = 0x400;

/// `GetWriteWatch` flag: reset the pages returned.
pub const WRITE_WATCH_FLAG_RESET: u32 = 0x1;

/// `ERROR_ACCESS_DENIED`.
pub const ERROR_ACCESS_DENIED: u32 = 5;
/// `ERROR_NOT_ENOUGH_MEMORY`.
pub const ERROR_NOT_ENOUGH_MEMORY: u32 = 8;
/// `ERROR_BAD_LENGTH`.
pub const ERROR_BAD_LENGTH: u32 = 24;
/// `ERROR_INVALID_PARAMETER`.
pub const ERROR_INVALID_PARAMETER: u32 = 87;
/// `ERROR_INVALID_ADDRESS`.
pub const ERROR_INVALID_ADDRESS: u32 = 487;
/// `ERROR_NOACCESS`.
pub const ERROR_NOACCESS: u32 = 998;
/// `ERROR_PRIVILEGE_NOT_HELD`.
pub const ERROR_PRIVILEGE_NOT_HELD: u32 = 1314;
/// `ERROR_COMMITMENT_LIMIT`.
pub const ERROR_COMMITMENT_LIMIT: u32 = 1455;
/// `STATUS_GUARD_PAGE_VIOLATION`, which `GetLastError` reports unchanged (win32-semantics §1.4).
pub const STATUS_GUARD_PAGE_VIOLATION: u32 = 0x8000_0001;

/// Page size (`dwPageSize`).
pub const PAGE_SIZE: u64 = 0x1000;
/// Allocation granularity (`dwAllocationGranularity`).
pub const ALLOCATION_GRANULARITY: u64 = 0x10000;
/// Large page size (`GetLargePageMinimum`).
pub const LARGE_PAGE_SIZE: u64 = 0x20_0000;
