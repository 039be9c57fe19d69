//! Win32-grade virtual memory for a hobby kernel (see README.md).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod frame;
