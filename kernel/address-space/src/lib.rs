#![doc = include_str!("../README.md")]
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

mod allocation_map;
pub mod charge;
mod counters;
pub mod error;
pub mod frame;
pub mod paging;
mod phys;
pub mod placement;
pub mod protection;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub mod space;
pub mod win32;

#[cfg(test)]
mod model;

pub use charge::{ChargeSnapshot, ChargeSource, CommitCharge, CriticalLevel};
/// The crate's units, used throughout instead of literals: the page size, the 64 KiB
/// reservation granularity and the 2 MiB large-page size (the ABI's values, [`win32`]).
pub use win32::{ALLOCATION_GRANULARITY, LARGE_PAGE_SIZE, PAGE_SIZE};
pub use counters::WorkCounters;
pub use error::VmError;
pub use phys::PhysMemory;
pub use protection::{BaseProtection, CacheMode, PageProtection};
pub use space::{
    Access, AddressSpace, Allocation, AllocationKind, AllocationSummary, CheckedUserWrite, FaultOutcome, FAULT_AROUND_MAX, LazyRun, MemoryBasicInformation,
    PendingRound, SpaceConfig, VmContext,
};
