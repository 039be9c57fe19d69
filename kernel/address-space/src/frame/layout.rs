//! Which frames the allocator manages, and where each 2 MiB chunk's metadata lives.
//!
//! [`Layout::new`] turns the caller's [`PhysRange`]s into *regions*: whole 4 KiB frames (start
//! rounded up, end rounded down), sorted, with overlapping or touching ranges merged (union: RAM
//! listed twice is managed once). Regions are grouped into *segments*: maximal runs of consecutive
//! 2 MiB chunks that contain at least one managed frame. Chunks get dense indices, segment after
//! segment, so a hole of one or more whole chunks between segments (the PCI hole at 3..4 GiB, or
//! everything below 4 GiB when RAM starts there) costs no per-chunk metadata at all.
//!
//! Lookups are binary searches over these short sorted lists: O(log segments) for the chunk of a
//! frame, O(log regions) for "is this frame managed" (needed only for chunks that are not wholly
//! managed; bootloader memory maps have tens of regions, usually one to three segments).

#![forbid(unsafe_code)]

use alloc::vec::Vec;

use super::{CHUNK_SHIFT, FRAME_SHIFT, PhysRange};

/// A half-open range of frame numbers `[start, end)` (frame number = physical address >> 12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FrameSpan {
    pub(super) start: u64,
    pub(super) end: u64,
}

/// A run of consecutive chunks `[first_chunk, end_chunk)` whose dense indices start at `base`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    first_chunk: u64,
    end_chunk: u64,
    base: usize,
}

/// The managed frames and the chunk-number <-> dense-index mapping.
#[derive(Debug, Clone)]
pub(super) struct Layout {
    /// Sorted, disjoint, non-adjacent, non-empty.
    regions: Vec<FrameSpan>,
    /// Sorted, disjoint, non-adjacent; `base` is the running sum of the previous segments' lengths.
    segments: Vec<Segment>,
    chunks: usize,
}

impl Layout {
    /// Trims, sorts and merges `usable`; empty or inverted ranges are ignored.
    pub(super) fn new(usable: &[PhysRange]) -> Self {
        let mut regions: Vec<FrameSpan> = usable
            .iter()
            .filter_map(|r| {
                // PhysAddr is at most 52 bits wide, so neither line can overflow.
                let start = r.start.as_u64().div_ceil(1 << FRAME_SHIFT);
                let end = r.end.as_u64() >> FRAME_SHIFT;
                (start < end).then_some(FrameSpan { start, end })
            })
            .collect();
        regions.sort_unstable_by_key(|r| r.start);
        // `dedup_by` passes (later, earlier-kept); returning true drops `later`.
        regions.dedup_by(|later, kept| {
            if later.start <= kept.end {
                kept.end = kept.end.max(later.end);
                true
            } else {
                false
            }
        });
        regions.shrink_to_fit();

        let mut segments: Vec<Segment> = Vec::new();
        let mut chunks = 0usize;
        for r in &regions {
            let first = r.start >> (CHUNK_SHIFT - FRAME_SHIFT);
            let end = ((r.end - 1) >> (CHUNK_SHIFT - FRAME_SHIFT)) + 1;
            match segments.last_mut() {
                // Regions are sorted, so `first >= last.first_chunk`; touching or sharing a chunk.
                Some(last) if first <= last.end_chunk => {
                    let grow = end.saturating_sub(last.end_chunk);
                    last.end_chunk += grow;
                    chunks += grow as usize;
                }
                _ => {
                    segments.push(Segment {
                        first_chunk: first,
                        end_chunk: end,
                        base: chunks,
                    });
                    chunks += (end - first) as usize;
                }
            }
        }
        segments.shrink_to_fit();
        Self {
            regions,
            segments,
            chunks,
        }
    }

    /// Returns the number of chunks that carry metadata.
    pub(super) fn chunk_count(&self) -> usize {
        self.chunks
    }

    /// Returns the merged regions, lowest first.
    pub(super) fn regions(&self) -> &[FrameSpan] {
        &self.regions
    }

    /// Returns the dense index of chunk number `chunk`, or `None` if it holds no managed frame.
    #[inline]
    pub(super) fn chunk_index(&self, chunk: u64) -> Option<usize> {
        let i = self.segments.partition_point(|s| s.end_chunk <= chunk);
        let s = self.segments.get(i)?;
        (s.first_chunk <= chunk).then(|| s.base + (chunk - s.first_chunk) as usize)
    }

    /// Returns the chunk number of dense index `index`.
    ///
    /// # Panics
    ///
    /// If `index >= chunk_count()` (an internal invariant: indices come from this layout).
    #[inline]
    pub(super) fn chunk_number(&self, index: usize) -> u64 {
        assert!(
            index < self.chunks,
            "frame allocator: chunk index {index} out of range"
        );
        // segments[0].base == 0 <= index, so the partition point is at least 1.
        let s = self.segments[self.segments.partition_point(|s| s.base <= index) - 1];
        s.first_chunk + (index - s.base) as u64
    }

    /// Returns whether frame number `frame` lies in a region.
    #[inline]
    pub(super) fn is_managed(&self, frame: u64) -> bool {
        let i = self.regions.partition_point(|r| r.end <= frame);
        self.regions.get(i).is_some_and(|r| r.start <= frame)
    }

    /// Returns the lowest frame number in `[start, end)` that is not managed, if any.
    pub(super) fn first_unmanaged(&self, start: u64, end: u64) -> Option<u64> {
        let mut f = start;
        let i = self.regions.partition_point(|r| r.end <= f);
        for r in &self.regions[i..] {
            if f >= end || r.start > f {
                break;
            }
            f = r.end;
        }
        (f < end).then_some(f)
    }

    /// Returns the number of managed frames in chunk number `chunk` (0..=512).
    #[cfg(test)]
    pub(super) fn managed_in_chunk(&self, chunk: u64) -> u64 {
        let start = chunk * super::CHUNK_FRAMES;
        let end = start + super::CHUNK_FRAMES;
        let i = self.regions.partition_point(|r| r.end <= start);
        self.regions[i..]
            .iter()
            .take_while(|r| r.start < end)
            .map(|r| r.end.min(end) - r.start.max(start))
            .sum()
    }

    /// Returns the heap bytes used by this layout.
    pub(super) fn heap_bytes(&self) -> usize {
        self.regions.capacity() * core::mem::size_of::<FrameSpan>()
            + self.segments.capacity() * core::mem::size_of::<Segment>()
    }
}
