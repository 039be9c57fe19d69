//! Memory accounting: the figures (frames, commit, page tables, heap), printing them, the commit
//! state guests are told about, and changing the commit limit for tests and demonstrations.

use address_space::CriticalLevel;
use host_abi::win32::PAGE_SIZE;

use super::{MemoryManager, config, manager, with_mm};

impl MemoryManager<'_> {
    /// The figures of [`Accounting`].
    pub fn accounting(&self) -> Accounting {
        let (heap_used, heap_free) = crate::heap::usage();
        Accounting {
            ram_bytes: self.manager.ram_bytes,
            usable_bytes: self.manager.usable_bytes,
            managed_bytes: self.frames.total_frames() * PAGE_SIZE,
            free_bytes: self.frames.free_frames() * PAGE_SIZE,
            committed_bytes: self.charge.committed_pages() * PAGE_SIZE,
            peak_committed_bytes: self.charge.peak_pages() * PAGE_SIZE,
            commit_limit_bytes: self.charge.limit_pages() * PAGE_SIZE,
            critical_reserve_bytes: self.charge.critical_reserve_pages() * PAGE_SIZE,
            page_table_pages: self.page_table_pages(),
            kernel_heap_used: heap_used as u64,
            kernel_heap_size: (heap_used + heap_free) as u64,
            boot_frames_returned: self.manager.boot_frames_returned,
            spaces: self.spaces,
        }
    }
}

/// Memory accounting: what `print_accounting` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accounting {
    /// RAM handed over by the bootloader (usable + bootloader-owned regions).
    pub ram_bytes: u64,
    /// Of which the firmware reported usable.
    pub usable_bytes: u64,
    /// Managed by the frame allocator (RAM above 1 MiB).
    pub managed_bytes: u64,
    /// Free frames now (reserved-for-commit ones included).
    pub free_bytes: u64,
    /// Commit charge now.
    pub committed_bytes: u64,
    /// The most committed at once since boot (Windows' commit peak).
    pub peak_committed_bytes: u64,
    /// The commit limit.
    pub commit_limit_bytes: u64,
    /// Part of the limit only critical requests may use.
    pub critical_reserve_bytes: u64,
    /// Page-table pages in use (kernel and guest spaces).
    pub page_table_pages: u64,
    /// Kernel heap in use.
    pub kernel_heap_used: u64,
    /// Kernel heap size.
    pub kernel_heap_size: u64,
    /// Frames the bootloader used that went back to the allocator.
    pub boot_frames_returned: u64,
    /// Live guest address spaces.
    pub spaces: usize,
}

/// Sets a new commit limit (and the critical reserve from the configuration), for tests and
/// demonstrations of memory pressure. Fails (returning false) while anything is committed (or
/// another CPU is changing the limit), so the limit never drops below what is charged, and never
/// raises the limit above what the frames allow (the limit set at boot).
pub fn set_commit_limit(pages: u64) -> bool {
    let manager = manager();
    let limit = pages.min(manager.boot_commit_limit);
    // The frames the limit gives up (or takes back) go to (or come from) the table allowance
    // (`CommitCharge::set_limit`). Interrupts off: commits on this CPU wait while it moves them.
    x86_64::instructions::interrupts::without_interrupts(|| manager.charge.set_limit(limit, limit * config().critical_reserve_percent / 100))
}

/// The current memory accounting.
pub fn accounting() -> Accounting {
    with_mm(|mm| mm.accounting())
}

/// Prints the memory accounting.
pub fn print_accounting() {
    use crate::boot_memory::Size;
    let a = accounting();
    crate::kprintln!("memory accounting:");
    crate::kprintln!("  RAM            {:>11}  (usable {}, managed above 1 MiB {})", Size(a.ram_bytes), Size(a.usable_bytes), Size(a.managed_bytes));
    crate::kprintln!("  free           {:>11}  ({} bootloader frames returned)", Size(a.free_bytes), a.boot_frames_returned);
    crate::kprintln!(
        "  committed      {:>11}  of a commit limit of {} ({} critical reserve; peak {})",
        Size(a.committed_bytes),
        Size(a.commit_limit_bytes),
        Size(a.critical_reserve_bytes),
        Size(a.peak_committed_bytes)
    );
    crate::kprintln!("  page tables    {:>11}  ({} pages; {} guest spaces)", Size(a.page_table_pages * PAGE_SIZE), a.page_table_pages, a.spaces);
    crate::kprintln!("  kernel heap    {:>11}  used of {}", Size(a.kernel_heap_used), Size(a.kernel_heap_size));
}


/// The commit state as guests see it, in bytes (host-abi §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitState {
    /// The commit limit.
    pub limit_bytes: u64,
    /// Committed now.
    pub committed_bytes: u64,
    /// The part of the limit only critical requests may use.
    pub critical_reserve_bytes: u64,
    /// What a `Task`-level request may still commit.
    pub available_bytes: u64,
    /// The memory load in percent (`GetMemoryLoad`).
    pub load_percent: u32,
}

impl CommitState {
    /// Free commit: the limit minus what is committed.
    pub fn free_bytes(&self) -> u64 {
        self.limit_bytes.saturating_sub(self.committed_bytes)
    }
}

/// The commit state now.
pub fn commit_state() -> CommitState {
    let c = manager().charge.snapshot();
    CommitState {
        limit_bytes: c.limit_pages() * PAGE_SIZE,
        committed_bytes: c.committed_pages() * PAGE_SIZE,
        critical_reserve_bytes: c.critical_reserve_pages() * PAGE_SIZE,
        available_bytes: c.available(CriticalLevel::Task) * PAGE_SIZE,
        load_percent: c.load_percent(),
    }
}
