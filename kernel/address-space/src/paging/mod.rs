//! The page-table backend: x86_64 4-level tables over [`crate::PhysMemory`], the encoding of
//! Win32 page state in page-table entries, and batched TLB invalidation.
//!
//! * [`pte`]: the bit layout of a leaf entry (hardware bits plus the software state of
//!   committed pages, present or not).
//! * [`table`]: walking, creating and freeing tables; range updates; translation.
//! * [`tlb`]: the [`Tlb`](tlb::Tlb) trait the kernel implements and [`TlbBatch`](tlb::TlbBatch).
//!
//! The address-space layer above uses this interface only: map / unmap / change protection are
//! all "rewrite the leaf entries of a range" ([`table::Tables::update_range`]), plus
//! [`table::translate`] and the TLB batch.

pub mod pte;
pub mod table;
pub mod tlb;
