//! Win32 constants: `MEM_*`, `PAGE_*`, write-watch flags, the error codes this crate reports and
//! the page, allocation-granularity and large-page sizes.
//!
//! They are the `host-abi` crate's (`host_abi::win32`), re-exported: that crate is the one
//! definition of every number that crosses the guest/host boundary, checked against the C header
//! `host_abi.h`. Values are exact copies of `winnt.h` / `winerror.h` (win32-semantics §1.3), plain
//! `u32` integers because that is how a guest passes them; [`crate::PageProtection`] parses them
//! into types once, at the API edge.

pub use host_abi::win32::*;
