//! `GetWriteWatch` / `ResetWriteWatch` (win32-semantics §7).
//!
//! The write-watch mark of a page is the hardware dirty bit of its entry, set by the CPU on the
//! first successful write through a present entry — no extra fault per write, and a faulting
//! write never marks. The mark is kept in the same bit while the page is not present (a written
//! page made `PAGE_NOACCESS` or guarded), is unaffected by protection changes, and goes with
//! the entry on decommit. Clearing it on a present page invalidates that page's TLB entry, or
//! the CPU (which caches the D state) would never set it again.

use core::ops::ControlFlow;

use super::{AddressSpace, Allocation, VmContext, round_up};
use crate::paging::table;
use crate::paging::tlb::Tlb;
use crate::win32::WRITE_WATCH_FLAG_RESET;
use crate::{PhysMemory, VmError};
use crate::PAGE_SIZE;

impl AddressSpace {
    /// The write-watch allocation holding the pages touching `[base, base+size)`.
    fn watched(&self, base: u64, size: u64) -> Result<(Allocation, u64, u64), VmError> {
        let end = base.checked_add(size).ok_or(VmError::InvalidParameter)?;
        let start = base & !(PAGE_SIZE - 1);
        let end = round_up(end, PAGE_SIZE);
        match self.allocation_at(start) {
            Some(a) if a.write_watch && end <= a.end() => Ok((*a, start, end)),
            _ => Err(VmError::InvalidParameter),
        }
    }

    /// `GetWriteWatch(flags, base, size, addresses, &count, &granularity)`: fills `out` with the
    /// addresses of the pages of `[base, base+size)` written since they were last reset, in
    /// ascending order, at most `out.len()` of them, and returns how many. With
    /// `WRITE_WATCH_FLAG_RESET` exactly the pages returned are reset. The granularity is 4 KiB.
    ///
    /// # Errors
    ///
    /// [`VmError::InvalidParameter`] (87) for, in this order: `flags` other than 0 or 1; `size`
    /// 0; `out` empty (`*count == 0`); a range not inside one `MEM_WRITE_WATCH` allocation
    /// (including past its end, or overflowing). Pointer checks (998) are the ABI's.
    ///
    /// Cost: O(log n) plus O(pages scanned) entry reads, plus writes for the pages reset.
    pub fn get_write_watch<M: PhysMemory, T: Tlb>(
        &mut self,
        cx: &mut VmContext<'_, M, T>,
        flags: u32,
        base: u64,
        size: u64,
        out: &mut [u64],
    ) -> Result<usize, VmError> {
        if flags & !WRITE_WATCH_FLAG_RESET != 0 || size == 0 || out.is_empty() {
            return Err(VmError::InvalidParameter);
        }
        let (a, start, end) = self.watched(base, size)?;
        if a.committed_pages == 0 {
            return Ok(0);
        }
        let mut n = 0;
        table::scan(
            cx.mem,
            self.root_pa(),
            start,
            end,
            |va, _, e| {
                if e.is_some_and(|e| e.dirty()) {
                    out[n] = va;
                    n += 1;
                    if n == out.len() {
                        return ControlFlow::Break(());
                    }
                }
                ControlFlow::Continue(())
            },
        );
        if flags & WRITE_WATCH_FLAG_RESET != 0 && n > 0 {
            // The returned pages are all the dirty pages of [start, last returned].
            self.clear_marks(cx, start, out[n - 1] + PAGE_SIZE);
        }
        Ok(n)
    }

    /// `ResetWriteWatch(base, size)`: clears the write-watch marks of the pages touching
    /// `[base, base+size)`.
    ///
    /// # Errors
    ///
    /// [`VmError::InvalidParameter`] (87) for `size` 0 or a range not inside one
    /// `MEM_WRITE_WATCH` allocation.
    ///
    /// Cost: O(log n) plus O(pages) entry reads and the writes of marked pages.
    pub fn reset_write_watch<M: PhysMemory, T: Tlb>(
        &mut self,
        cx: &mut VmContext<'_, M, T>,
        base: u64,
        size: u64,
    ) -> Result<(), VmError> {
        if size == 0 {
            return Err(VmError::InvalidParameter);
        }
        let (_, start, end) = self.watched(base, size)?;
        self.clear_marks(cx, start, end);
        Ok(())
    }

    fn clear_marks<M: PhysMemory, T: Tlb>(&mut self, cx: &mut VmContext<'_, M, T>, start: u64, end: u64) {
        let mut batch = self.batch();
        cx.tables(self.root_pa()).update_range(start, end, None, &mut batch, |_, _, e| e.without_dirty());
        self.complete(&mut batch, (0, 0), cx);
    }
}
