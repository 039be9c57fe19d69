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
    /// Inter-processor interrupts those rounds sent, as [`crate::paging::tlb::Tlb::shootdown`]
    /// reports them (the targets other than the caller's, less those a kernel left out as lazy).
    pub shootdown_ipis: u64,
}

impl WorkCounters {
    /// All zero (a `const` [`Default`], for per-CPU statics).
    pub const fn new() -> Self {
        WorkCounters {
            pte_writes: 0,
            invlpg: 0,
            full_flushes: 0,
            frames_zeroed: 0,
            table_pages_allocated: 0,
            table_pages_freed: 0,
            faults_resolved: 0,
            shootdown_rounds: 0,
            shootdown_ipis: 0,
        }
    }
}

/// Adds the counts of one call (or one CPU) to a total.
impl core::ops::AddAssign<&WorkCounters> for WorkCounters {
    fn add_assign(&mut self, o: &WorkCounters) {
        self.pte_writes += o.pte_writes;
        self.invlpg += o.invlpg;
        self.full_flushes += o.full_flushes;
        self.frames_zeroed += o.frames_zeroed;
        self.table_pages_allocated += o.table_pages_allocated;
        self.table_pages_freed += o.table_pages_freed;
        self.faults_resolved += o.faults_resolved;
        self.shootdown_rounds += o.shootdown_rounds;
        self.shootdown_ipis += o.shootdown_ipis;
    }
}
