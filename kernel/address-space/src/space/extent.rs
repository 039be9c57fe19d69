//! The committed extent of an allocation: a range of its pages outside which none is
//! committed, so that `VirtualQuery` answers a query beyond it (the reserved tail of a GC heap,
//! the reserved bottom of a stack) without reading a page table, whatever the reservation's
//! size.
//!
//! The extent may be wider than the committed pages (stale-wide), never narrower: a commit
//! widens it to cover its range, a decommit narrows it only where it covers an end of it, and
//! it is empty when no page is committed. A page outside it is reserved: its entry is zero (or it
//! has no table) and it is not in the lazy run, which lies inside it. Nothing else changes which
//! pages are committed (faults, guard pages, protection changes and write-watch resets change
//! committed pages only), so neither fault path touches it: the shared one
//! (`handle_fault_shared`, under the shared lock) never writes the record.
//!
//! Six bytes of the 48-byte record (room made by packing the lazy run): the distance in pages from
//! the base to its first page and from its end to the allocation's end, 24 bits each. Page-exact
//! up to 2^24 pages (64 GiB); above that both are kept in units of 2^k pages, the least that fits,
//! rounded outward (units of 8 pages for a 256 GiB reservation). A large-page allocation keeps
//! it empty: its pages are all committed and its queries answer from the record.

use super::Allocation;
use crate::PAGE_SIZE;

/// Width of each distance.
const FIELD_BITS: u32 = 24;
/// The largest distance a field holds.
const FIELD_MAX: u64 = (1 << FIELD_BITS) - 1;

/// An allocation's committed extent, relative to its base and end (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub(crate) struct CommittedExtent {
    /// Units from the base to the extent's first page (rounded down).
    from_base: [u8; 3],
    /// Units from the extent's end to the allocation's end (rounded down).
    to_end: [u8; 3],
}

impl CommittedExtent {
    /// No page: both distances at their maximum decode to a start at or after the end.
    pub(crate) const EMPTY: Self = CommittedExtent { from_base: [0xFF; 3], to_end: [0xFF; 3] };

    /// log2 of the unit for an allocation of `pages` pages: 0 below 2^24 pages.
    fn unit_shift(pages: u64) -> u32 {
        (u64::BITS - pages.leading_zeros()).saturating_sub(FIELD_BITS)
    }

    fn field(v: u64) -> [u8; 3] {
        debug_assert!(v <= FIELD_MAX);
        let b = v.to_le_bytes();
        [b[0], b[1], b[2]]
    }

    fn value(f: [u8; 3]) -> u64 {
        u64::from(f[0]) | u64::from(f[1]) << 8 | u64::from(f[2]) << 16
    }

    /// The extent as page offsets `[lo, hi)` in an allocation of `pages` pages; `lo >= hi` if
    /// empty.
    fn decode(self, pages: u64) -> (u64, u64) {
        let shift = Self::unit_shift(pages);
        let lo = (Self::value(self.from_base) << shift).min(pages);
        let hi = pages.saturating_sub(Self::value(self.to_end) << shift);
        (lo, hi)
    }

    /// The extent covering page offsets `[lo, hi)` (at least) of an allocation of `pages` pages.
    fn encode(lo: u64, hi: u64, pages: u64) -> Self {
        if lo >= hi {
            return Self::EMPTY;
        }
        debug_assert!(hi <= pages);
        // lo < pages and pages - hi < pages, both below 2^(24 + shift).
        let shift = Self::unit_shift(pages);
        CommittedExtent { from_base: Self::field(lo >> shift), to_end: Self::field((pages - hi) >> shift) }
    }
}

impl Allocation {
    fn pages(&self) -> u64 {
        self.size / PAGE_SIZE
    }

    /// Returns `[start, end)`, addresses inside the allocation outside which no page is
    /// committed, or `None` if none is. Cost: O(1).
    #[inline]
    pub(crate) fn committed_extent(&self) -> Option<(u64, u64)> {
        let (lo, hi) = self.committed_extent.decode(self.pages());
        (lo < hi).then(|| (self.base + lo * PAGE_SIZE, self.base + hi * PAGE_SIZE))
    }

    /// Widens the committed extent to cover `[start, end)` (pages of the allocation being
    /// committed).
    pub(crate) fn grow_extent(&mut self, start: u64, end: u64) {
        debug_assert!(self.base <= start && start < end && end <= self.end());
        let (s, e) = ((start - self.base) / PAGE_SIZE, (end - self.base) / PAGE_SIZE);
        let pages = self.pages();
        let (lo, hi) = self.committed_extent.decode(pages);
        let (lo, hi) = if lo < hi { (lo.min(s), hi.max(e)) } else { (s, e) };
        self.committed_extent = CommittedExtent::encode(lo, hi, pages);
    }

    /// Narrows the committed extent after every page of `[start, end)` was decommitted: an end
    /// of the extent inside the range moves to the range's edge (a range in its middle changes
    /// nothing: the extent may be wider than the committed pages).
    pub(crate) fn shrink_extent(&mut self, start: u64, end: u64) {
        let (s, e) = ((start.max(self.base) - self.base) / PAGE_SIZE, (end.min(self.end()) - self.base) / PAGE_SIZE);
        let pages = self.pages();
        let (mut lo, mut hi) = self.committed_extent.decode(pages);
        if s <= lo {
            lo = lo.max(e);
        }
        if e >= hi {
            hi = hi.min(s);
        }
        self.committed_extent = CommittedExtent::encode(lo, hi, pages);
    }
}

#[cfg(test)]
impl super::AddressSpace {
    /// Whether every committed page of `a` lies in its committed extent, and the extent is
    /// empty when none is committed (for the tests' invariant checks). Cost: a walk of the
    /// allocation.
    pub(crate) fn extent_holds(&self, mem: &impl crate::PhysMemory, a: &Allocation) -> bool {
        if a.large {
            return true;
        }
        let extent = a.committed_extent();
        let mut holds = extent.is_some() == (a.committed_pages > 0);
        crate::paging::table::scan(mem, self.root().start_address().as_u64(), a.base, a.end(), |va, _, e| {
            if Self::state(a, va, e).is_some_and(|e| e.is_committed()) {
                holds &= extent.is_some_and(|(lo, hi)| lo <= va && va < hi);
            }
            core::ops::ControlFlow::Continue(())
        });
        holds
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every extent encodes to one that covers it, exactly below 2^24 pages, and the empty one
    /// decodes empty at every size.
    #[test]
    fn encoding_covers_and_is_exact_below_64_gib() {
        // splitmix64: seeded, reproducible.
        let mut seed = 7u64;
        let mut next = move || {
            seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let z = (seed ^ (seed >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        for _ in 0..100_000 {
            // Up to 2^35 pages (the user range), every magnitude alike.
            let bits = 1 + next() % 35;
            let pages = 1 + next() % (1 << bits);
            let (a, b) = (next() % (pages + 1), next() % (pages + 1));
            let (lo, hi) = (a.min(b), a.max(b));
            let (dlo, dhi) = CommittedExtent::encode(lo, hi, pages).decode(pages);
            if lo < hi {
                assert!(dlo <= lo && hi <= dhi && dhi <= pages, "{lo}..{hi} of {pages} decodes to {dlo}..{dhi}");
                if pages < 1 << FIELD_BITS {
                    assert_eq!((dlo, dhi), (lo, hi));
                } else {
                    let unit = 1 << CommittedExtent::unit_shift(pages);
                    assert!(lo - dlo < unit && dhi - hi < unit);
                }
            } else {
                assert!(dlo >= dhi);
            }
            let (elo, ehi) = CommittedExtent::EMPTY.decode(pages);
            assert!(elo >= ehi, "the empty extent of {pages} pages decodes to {elo}..{ehi}");
        }
        for pages in [1, (1 << 24) - 1, 1 << 24, (1 << 25) - 1, 1 << 35, (1 << 35) - 1] {
            assert_eq!(CommittedExtent::encode(0, pages, pages).decode(pages), (0, pages));
            let (elo, ehi) = CommittedExtent::EMPTY.decode(pages);
            assert!(elo >= ehi);
        }
    }
}
