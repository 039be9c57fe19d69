//! TLB invalidation: the [`Tlb`] trait the kernel implements and the per-operation [`TlbBatch`].
//!
//! Every operation collects the pages whose *present* entries it changed (only present entries
//! can be cached, Intel SDM vol. 3A §4.10.2.3) and flushes them once at the end: one `invlpg`
//! per page, or a single full flush when more than the threshold (default 32, as Asterinas
//! `mm/tlb.rs`) pages changed. Freeing a page-table page also needs an invalidation, because the
//! CPU caches paging-structure entries: any `invlpg` drops all of them (SDM §4.10.4.1), so a
//! batch that freed a table but changed no present entry issues one `invlpg` anyway.

use x86_64::VirtAddr;

use crate::WorkCounters;

/// Carries out TLB invalidations for one address space.
///
/// The kernel's implementation executes `invlpg` / reloads CR3 only when the space is active
/// on the CPU (and shoots down other CPUs if it ever runs a space on several);
/// `sim::TlbModel` (feature `sim`) models a TLB on the host.
pub trait Tlb {
    /// Invalidates the translation of the page containing `addr`.
    fn invalidate_page(&mut self, addr: VirtAddr);
    /// Invalidates every translation of the address space.
    fn flush_all(&mut self);
}

/// A TLB that needs no invalidation (an address space that has never been active).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoTlb;

impl Tlb for NoTlb {
    fn invalidate_page(&mut self, _addr: VirtAddr) {}
    fn flush_all(&mut self) {}
}

/// The largest threshold a batch accepts (its page list is a fixed array: no heap use).
pub const MAX_BATCH: usize = 64;
/// The default threshold above which a batch becomes a full flush.
pub const DEFAULT_FLUSH_THRESHOLD: usize = 32;

/// Invalidations collected during one operation.
#[must_use = "a TLB batch must be flushed"]
#[derive(Debug)]
pub struct TlbBatch {
    pages: [u64; MAX_BATCH],
    len: usize,
    threshold: usize,
    full: bool,
    table_freed: Option<u64>,
}

impl TlbBatch {
    /// Creates an empty batch; `threshold` is clamped to `1..=MAX_BATCH`.
    pub fn new(threshold: usize) -> Self {
        TlbBatch {
            pages: [0; MAX_BATCH],
            len: 0,
            threshold: threshold.clamp(1, MAX_BATCH),
            full: false,
            table_freed: None,
        }
    }

    /// Records that the present entry of the page at `addr` changed.
    pub fn add(&mut self, addr: u64) {
        if self.full {
            return;
        }
        if self.len == self.threshold {
            self.full = true;
            return;
        }
        self.pages[self.len] = addr;
        self.len += 1;
    }

    /// Records that a page-table page covering `addr` was freed.
    pub fn note_table_freed(&mut self, addr: u64) {
        self.table_freed.get_or_insert(addr);
    }

    /// Returns `true` if nothing needs invalidating.
    pub fn is_empty(&self) -> bool {
        !self.full && self.len == 0 && self.table_freed.is_none()
    }

    /// Carries out the batch on `tlb`, counting `invlpg`s and full flushes.
    pub fn flush(self, tlb: &mut impl Tlb, counters: &mut WorkCounters) {
        if self.full {
            tlb.flush_all();
            counters.full_flushes += 1;
            return;
        }
        for &a in &self.pages[..self.len] {
            tlb.invalidate_page(VirtAddr::new_truncate(a));
            counters.invlpg += 1;
        }
        if self.len == 0
            && let Some(a) = self.table_freed
        {
            tlb.invalidate_page(VirtAddr::new_truncate(a));
            counters.invlpg += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Log {
        pages: alloc::vec::Vec<u64>,
        full: usize,
    }
    impl Tlb for Log {
        fn invalidate_page(&mut self, addr: VirtAddr) {
            self.pages.push(addr.as_u64());
        }
        fn flush_all(&mut self) {
            self.full += 1;
        }
    }

    #[test]
    fn batch_becomes_full_flush_above_threshold() {
        let mut c = WorkCounters::default();
        let mut log = Log::default();
        let mut b = TlbBatch::new(2);
        b.add(0x1000);
        b.add(0x2000);
        b.flush(&mut log, &mut c);
        assert_eq!(log.pages, [0x1000, 0x2000]);
        assert_eq!(c.invlpg, 2);
        let mut b = TlbBatch::new(2);
        for a in [0x1000, 0x2000, 0x3000] {
            b.add(a);
        }
        b.flush(&mut log, &mut c);
        assert_eq!(log.full, 1);
        assert_eq!(c.full_flushes, 1);
        let mut b = TlbBatch::new(2);
        b.note_table_freed(0x5000);
        assert!(!b.is_empty());
        b.flush(&mut log, &mut c);
        assert_eq!(log.pages.last(), Some(&0x5000));
    }
}
