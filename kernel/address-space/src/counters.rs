//! [`WorkCounters`]: the work an address space did, for the kernel's statistics and benchmarks.

/// Counts of the work done by address-space operations (monotonic; the caller resets them).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WorkCounters {
    /// Writes to page-table memory (leaf and non-leaf entries).
    pub pte_writes: u64,
    /// Single-page TLB invalidations.
    pub invlpg: u64,
    /// Full TLB flushes.
    pub full_flushes: u64,
    /// 4 KiB frames zeroed (demand-zero faults, new tables, large pages count 512 each).
    pub frames_zeroed: u64,
    /// Page-table pages allocated.
    pub table_pages_allocated: u64,
    /// Page-table pages freed.
    pub table_pages_freed: u64,
    /// Faults resolved by mapping a page (demand-zero or a kept frame).
    pub faults_resolved: u64,
    /// TLB invalidation rounds (at most one per call, [`crate::paging::tlb::TlbBatch::flush`]).
    pub shootdown_rounds: u64,
    /// Inter-processor interrupts those rounds needed: the target CPUs other than the caller's.
    pub shootdown_ipis: u64,
}
