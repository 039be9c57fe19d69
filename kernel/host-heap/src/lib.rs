//! The free-span bookkeeping of an `IHostMalloc` heap region (host-abi §6), kept apart from the
//! host library so that it builds and is tested on the host.
//!
//! An [`Arena`] is the part of a reserved region that blocks are carved from. Its free spans form
//! a singly linked list in address order whose headers live in the spans themselves (so in guest
//! memory, like every other piece of a heap's bookkeeping). Allocation is first fit and carves
//! from the front of a span; freeing coalesces with both neighbours, so no two free spans touch.
//!
//! Commit follows the spans, as a Windows heap's does above its decommit threshold:
//!
//! * every free span has at most one decommitted page range, inside its *interior* (the whole
//!   pages after its header); everything else of the arena is committed;
//! * a new arena is one span whose pages above what the caller committed are decommitted (a fresh
//!   reservation), so a region grows by carving, not by a separate "top" pointer;
//! * carving from a span commits the decommitted pages the block and the remainder's header need,
//!   plus up to [`COMMIT_AHEAD`] bytes more (fewer commit calls while a heap grows);
//! * freeing decommits the interior of the merged span when the span is [`DECOMMIT_SPAN`] bytes
//!   or more and at least [`DECOMMIT_MIN_COMMITTED`] of its interior is committed (the gap between
//!   that and the commit-ahead keeps an alloc/free pair at a span's edge from committing and
//!   decommitting every time), or when both neighbours brought a decommitted range (one range per
//!   span).
//!
//! So a free span of 64 KiB or more never holds more than [`DECOMMIT_MIN_COMMITTED`] +
//! [`COMMIT_AHEAD`] committed bytes in its interior, and a heap whose blocks are all freed keeps
//! no more than that per region.
//! Decommitting pages that are already decommitted is allowed (as Windows' `VirtualFree` allows
//! it), which keeps the merge a single call.
//!
//! Memory is reached only through [`Memory`]: the host library implements it over raw pointers and
//! `IHostMemoryManager`, the tests over a simulated address range that checks every access is to a
//! committed page.
#![no_std]
#![forbid(unsafe_code)]

/// Page size.
pub const PAGE: usize = 4096;
/// Block and span alignment; every size handed to [`Arena::alloc`] is a multiple of it.
pub const GRAIN: usize = 16;
/// A free span's header: size, next span, decommitted range (low, high). Also the smallest span.
pub const SPAN_HEADER: usize = 32;
/// Free spans this large or larger give their committed pages back.
pub const DECOMMIT_SPAN: usize = 64 << 10;
/// ... once at least this much of their interior is committed.
pub const DECOMMIT_MIN_COMMITTED: usize = 32 << 10;
/// Commit at least this much past what a carve needs, when it needs any.
pub const COMMIT_AHEAD: usize = 16 << 10;

/// Access to the arena's memory and to the host's commit.
pub trait Memory {
    /// Reads the word at `addr` (committed).
    fn read(&self, addr: usize) -> usize;
    /// Writes the word at `addr` (committed).
    fn write(&mut self, addr: usize, value: usize);
    /// Commits the pages of `[addr, addr + len)` (page-aligned); `false` if the host refused.
    fn commit(&mut self, addr: usize, len: usize) -> bool;
    /// Decommits the pages of `[addr, addr + len)` (page-aligned; some may be decommitted).
    fn decommit(&mut self, addr: usize, len: usize);
}

/// A free span as its header describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// First byte (the header's address).
    pub start: usize,
    /// Bytes, header included.
    pub size: usize,
    /// The next span's start, or 0.
    pub next: usize,
    /// The decommitted pages `[lo, hi)` (empty: `lo == hi`), inside the span's interior.
    pub decommitted: (usize, usize),
}

impl Span {
    fn end(&self) -> usize {
        self.start + self.size
    }
    fn decommitted_bytes(&self) -> usize {
        self.decommitted.1 - self.decommitted.0
    }
    fn read(mem: &impl Memory, start: usize) -> Span {
        Span {
            start,
            size: mem.read(start),
            next: mem.read(start + 8),
            decommitted: (mem.read(start + 16), mem.read(start + 24)),
        }
    }
    fn write(&self, mem: &mut impl Memory) {
        mem.write(self.start, self.size);
        mem.write(self.start + 8, self.next);
        mem.write(self.start + 16, self.decommitted.0);
        mem.write(self.start + 24, self.decommitted.1);
    }
}

const fn page_up(v: usize) -> usize {
    (v + PAGE - 1) & !(PAGE - 1)
}
const fn page_down(v: usize) -> usize {
    v & !(PAGE - 1)
}

/// The whole pages of `[start, end)` after a span header at `start` (empty: `lo >= hi`).
pub fn interior(start: usize, end: usize) -> (usize, usize) {
    let lo = page_up(start + SPAN_HEADER);
    (lo, page_down(end).max(lo))
}

/// A range as stored in a header: an empty one is (0, 0).
fn range(lo: usize, hi: usize) -> (usize, usize) {
    if lo < hi { (lo, hi) } else { (0, 0) }
}

/// Why [`Arena::alloc`] found no block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocError {
    /// No free span is large enough.
    NoFit,
    /// Spans were large enough, but the host refused to commit the pages they needed.
    CommitFailed,
}

/// The free list of `[start, end)`; the host library keeps it in its region header.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arena {
    /// First byte blocks are carved from (a multiple of [`GRAIN`]).
    pub start: usize,
    /// One past the last (a multiple of [`GRAIN`]).
    pub end: usize,
    /// The lowest free span's start, or 0.
    pub head: usize,
}

impl Arena {
    /// Makes `[start, end)` one free span. `[start, committed_end)` must be committed (at least
    /// the header's page) and the pages above it never committed or decommitted.
    pub fn new(mem: &mut impl Memory, start: usize, end: usize, committed_end: usize) -> Arena {
        debug_assert!(start.is_multiple_of(GRAIN) && end.is_multiple_of(GRAIN) && end - start >= SPAN_HEADER);
        let (lo, hi) = interior(start, end);
        let span = Span { start, size: end - start, next: 0, decommitted: range(lo.max(page_up(committed_end)), hi) };
        span.write(mem);
        Arena { start, end, head: start }
    }

    /// Carves `need` bytes (a multiple of [`GRAIN`], at least [`SPAN_HEADER`]) out of the first
    /// span that has them: `(address, extent)`, the extent `need` or a little more (a remainder
    /// too small to be a span goes with the block). Nothing changes on an error.
    pub fn alloc(&mut self, mem: &mut impl Memory, need: usize) -> Result<(usize, usize), AllocError> {
        debug_assert!(need.is_multiple_of(GRAIN) && need >= SPAN_HEADER);
        let (mut prev, mut at, mut refused) = (0, self.head, false);
        while at != 0 {
            let span = Span::read(mem, at);
            if span.size >= need {
                match self.carve(mem, prev, span, need) {
                    Some(block) => return Ok(block),
                    None => refused = true,
                }
            }
            prev = at;
            at = span.next;
        }
        Err(if refused { AllocError::CommitFailed } else { AllocError::NoFit })
    }

    /// Points `prev`'s link (or the head) at `to`.
    fn link(&mut self, mem: &mut impl Memory, prev: usize, to: usize) {
        if prev == 0 {
            self.head = to;
        } else {
            mem.write(prev + 8, to);
        }
    }

    fn carve(&mut self, mem: &mut impl Memory, prev: usize, span: Span, need: usize) -> Option<(usize, usize)> {
        let (lo, hi) = span.decommitted;
        if span.size - need < SPAN_HEADER {
            // The whole span: every page of it committed.
            if lo < hi && !mem.commit(lo, hi - lo) {
                return None;
            }
            self.link(mem, prev, span.next);
            return Some((span.start, span.size));
        }
        let rest = span.start + need;
        let needed = page_up(rest + SPAN_HEADER);
        let mut decommitted = (lo, hi);
        if lo < hi && needed > lo {
            let to = needed.max(lo + COMMIT_AHEAD).min(hi);
            if !mem.commit(lo, to - lo) {
                return None;
            }
            decommitted = range(to, hi);
        }
        Span { start: rest, size: span.size - need, next: span.next, decommitted }.write(mem);
        self.link(mem, prev, rest);
        Some((span.start, need))
    }

    /// Gives back the block `[addr, addr + extent)` that [`Arena::alloc`] returned: it becomes a
    /// free span merged with the free spans it touches, then the decommit rule applies.
    pub fn free(&mut self, mem: &mut impl Memory, addr: usize, extent: usize) {
        let (mut prev, mut at) = (0, self.head);
        while at != 0 && at < addr {
            prev = at;
            at = mem.read(at + 8);
        }
        let (mut start, mut end, mut next) = (addr, addr + extent, at);
        let mut ranges = [(0, 0); 2];
        let lower = (prev != 0).then(|| Span::read(mem, prev)).filter(|p| p.end() == addr);
        match lower {
            // The merged span starts at the lower one's header; the link to it stays.
            Some(p) => {
                start = p.start;
                ranges[0] = p.decommitted;
            }
            None => self.link(mem, prev, addr),
        }
        if at != 0 && at == end {
            let n = Span::read(mem, at);
            end = n.end();
            next = n.next;
            ranges[1] = n.decommitted;
        }
        let (lo, hi) = interior(start, end);
        let decommitted: usize = ranges.iter().map(|r| r.1 - r.0).sum();
        let committed = (hi - lo) - decommitted;
        let both = ranges.iter().all(|r| r.0 < r.1);
        let decommitted = if both || (end - start >= DECOMMIT_SPAN && committed >= DECOMMIT_MIN_COMMITTED) {
            if committed > 0 {
                mem.decommit(lo, hi - lo);
            }
            range(lo, hi)
        } else if ranges[0].0 < ranges[0].1 {
            ranges[0]
        } else {
            ranges[1]
        };
        Span { start, size: end - start, next, decommitted }.write(mem);
    }

    /// Whether the arena is one free span again (every block freed).
    pub fn is_empty(&self, mem: &impl Memory) -> bool {
        self.head == self.start && mem.read(self.start) == self.end - self.start
    }

    /// Calls `f` with every free span in address order.
    pub fn for_each_span(&self, mem: &impl Memory, mut f: impl FnMut(&Span)) {
        let mut at = self.head;
        while at != 0 {
            let span = Span::read(mem, at);
            f(&span);
            at = span.next;
        }
    }

    /// Committed bytes of the arena's free spans (their headers and committed interiors).
    pub fn committed_free_bytes(&self, mem: &impl Memory) -> usize {
        let mut bytes = 0;
        self.for_each_span(mem, |s| bytes += s.size - s.decommitted_bytes());
        bytes
    }
}

#[cfg(test)]
mod tests;
