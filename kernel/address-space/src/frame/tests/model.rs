//! Randomized comparison against a reference model: a `BTreeSet` of allocated frame numbers plus
//! the reservation count, with the same documented policy (lowest free frame of the lowest
//! partial chunk, else of the lowest whole chunk; lowest whole chunk for 2 MiB), written by brute
//! force. Every result, every count and the whole `is_allocated` view are compared after every
//! step, and the allocator's internal invariants are rechecked.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::vec::Vec;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use super::{FrameAllocator, FrameError, FrameReservation, FrameStats, PhysRange, big, frame, range};
use x86_64::PhysAddr;

/// Physical memory the generated ranges live in: 12 MiB (6 chunks, 3072 frames).
const SPAN: u64 = 12 << 20;
const SPAN_FRAMES: u64 = SPAN / 4096;
const CHUNKS: u64 = SPAN_FRAMES / 512;

#[derive(Debug, Clone)]
enum Op {
    Alloc,
    AllocMany(u16),
    Alloc2M,
    /// Frees the allocated frame picked by the selector (or frame 0 when none is allocated).
    FreeAllocated(u16),
    /// Frees an arbitrary frame: exercises DoubleFree and Foreign.
    FreeAny(u16),
    /// free_2mib of a fully allocated chunk picked by the selector, else of chunk `sel % CHUNKS`.
    Free2M(u16),
    Mark(u16),
    Reserve(u16),
    /// Unreserves `sel % (reserved + 1)`.
    Unreserve(u16),
    AllocReserved,
    FailAfter(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => Just(Op::Alloc),
        2 => (1u16..700).prop_map(Op::AllocMany),
        3 => Just(Op::Alloc2M),
        6 => any::<u16>().prop_map(Op::FreeAllocated),
        2 => (0..SPAN_FRAMES as u16 + 64).prop_map(Op::FreeAny),
        2 => any::<u16>().prop_map(Op::Free2M),
        2 => (0..SPAN_FRAMES as u16 + 64).prop_map(Op::Mark),
        2 => prop_oneof![Just(0u16), Just(1), Just(511), Just(512), 0u16..1200].prop_map(Op::Reserve),
        2 => any::<u16>().prop_map(Op::Unreserve),
        3 => Just(Op::AllocReserved),
        1 => (0u8..6).prop_map(Op::FailAfter),
    ]
}

/// Up to five ranges with edges biased to frame and chunk boundaries, possibly overlapping.
fn ranges() -> impl Strategy<Value = Vec<PhysRange>> {
    let edge = prop_oneof![
        (0..=SPAN / 4096).prop_map(|f| f * 4096),
        (0..=CHUNKS).prop_map(|c| c << 21),
        0..=SPAN,
    ];
    proptest::collection::vec((edge.clone(), edge), 0..5)
        .prop_map(|v| v.into_iter().map(|(a, b)| range(a, b)).collect())
}

struct Model {
    managed: BTreeSet<u64>,
    allocated: BTreeSet<u64>,
    reserved: u64,
    stats: FrameStats,
    fail_countdown: Option<u64>,
}

impl Model {
    fn new(ranges: &[PhysRange]) -> Self {
        // Independent of the implementation's trimming: a frame is managed iff it lies wholly
        // inside some range.
        let managed: BTreeSet<u64> = (0..SPAN_FRAMES)
            .filter(|f| {
                ranges
                    .iter()
                    .any(|r| r.start.as_u64() <= f * 4096 && (f + 1) * 4096 <= r.end.as_u64())
            })
            .collect();
        let total = managed.len() as u64;
        Model {
            managed,
            allocated: BTreeSet::new(),
            reserved: 0,
            stats: FrameStats {
                total_frames: total,
                free_frames: total,
                available_frames: total,
                ..FrameStats::default()
            },
            fail_countdown: None,
        }
    }

    fn free(&self) -> u64 {
        self.managed.len() as u64 - self.allocated.len() as u64
    }

    fn available(&self) -> u64 {
        self.free() - self.reserved
    }

    fn is_free(&self, f: u64) -> bool {
        self.managed.contains(&f) && !self.allocated.contains(&f)
    }

    fn chunk_whole(&self, c: u64) -> bool {
        (c * 512..(c + 1) * 512).all(|f| self.is_free(f))
    }

    fn chunk_has_free(&self, c: u64) -> bool {
        (c * 512..(c + 1) * 512).any(|f| self.is_free(f))
    }

    fn whole_runs(&self) -> u64 {
        (0..CHUNKS).filter(|&c| self.chunk_whole(c)).count() as u64
    }

    /// The documented single-frame policy.
    fn pick(&self) -> u64 {
        let c = (0..CHUNKS)
            .find(|&c| self.chunk_has_free(c) && !self.chunk_whole(c))
            .or_else(|| (0..CHUNKS).find(|&c| self.chunk_whole(c)))
            .expect("model: no free frame");
        (c * 512..(c + 1) * 512).find(|&f| self.is_free(f)).unwrap()
    }

    fn request(&mut self) -> bool {
        match self.fail_countdown {
            Some(1) => {
                self.fail_countdown = None;
                false
            }
            Some(k) => {
                self.fail_countdown = Some(k - 1);
                true
            }
            None => true,
        }
    }

    fn alloc(&mut self) -> Result<u64, FrameError> {
        if !self.request() || self.available() == 0 {
            return Err(FrameError::OutOfFrames);
        }
        let f = self.pick();
        self.allocated.insert(f);
        self.stats.allocs += 1;
        Ok(f)
    }

    fn alloc_2mib(&mut self) -> Result<u64, FrameError> {
        if !self.request() || self.available() < 512 {
            return Err(FrameError::OutOfFrames);
        }
        let c = (0..CHUNKS)
            .find(|&c| self.chunk_whole(c))
            .ok_or(FrameError::OutOfFrames)?;
        self.allocated.extend(c * 512..(c + 1) * 512);
        self.stats.allocs_2mib += 1;
        Ok(c)
    }

    fn free_frame(&mut self, f: u64) -> Result<(), FrameError> {
        let a = PhysAddr::new(f * 4096);
        if !self.managed.contains(&f) {
            Err(FrameError::Foreign(a))
        } else if !self.allocated.remove(&f) {
            Err(FrameError::DoubleFree(a))
        } else {
            self.stats.frees += 1;
            Ok(())
        }
    }

    fn free_2mib(&mut self, c: u64) -> Result<(), FrameError> {
        let frames = c * 512..(c + 1) * 512;
        if let Some(f) = frames.clone().find(|f| !self.managed.contains(f)) {
            return Err(FrameError::Foreign(PhysAddr::new(f * 4096)));
        }
        if let Some(f) = frames.clone().find(|f| !self.allocated.contains(f)) {
            return Err(FrameError::DoubleFree(PhysAddr::new(f * 4096)));
        }
        for f in frames {
            self.allocated.remove(&f);
        }
        self.stats.frees_2mib += 1;
        Ok(())
    }

    fn mark(&mut self, f: u64) -> Result<(), FrameError> {
        let a = PhysAddr::new(f * 4096);
        if !self.managed.contains(&f) {
            Err(FrameError::Foreign(a))
        } else if self.allocated.contains(&f) {
            Err(FrameError::AlreadyAllocated(a))
        } else if self.available() == 0 {
            Err(FrameError::OutOfFrames)
        } else {
            self.allocated.insert(f);
            self.stats.marked += 1;
            Ok(())
        }
    }

    fn reserve(&mut self, n: u64) -> Result<(), FrameError> {
        if !self.request() || self.available() < n {
            return Err(FrameError::OutOfFrames);
        }
        self.reserved += n;
        Ok(())
    }

    fn alloc_reserved(&mut self) -> u64 {
        assert!(self.reserved > 0);
        self.reserved -= 1;
        let f = self.pick();
        self.allocated.insert(f);
        self.stats.allocs += 1;
        self.stats.allocs_reserved += 1;
        f
    }

    fn expected_stats(&self) -> FrameStats {
        let total = self.managed.len() as u64;
        FrameStats {
            total_frames: total,
            free_frames: self.free(),
            used_frames: total - self.free(),
            reserved_frames: self.reserved,
            available_frames: self.available(),
            free_2mib_runs: self.whole_runs(),
            ..self.stats
        }
    }
}

fn fno(f: x86_64::structures::paging::PhysFrame) -> u64 {
    f.start_address().as_u64() / 4096
}

/// How often each interesting outcome occurred, so the test can prove it explored them.
#[derive(Default)]
struct Coverage {
    steps: Cell<u64>,
    out_of_frames: Cell<u64>,
    allocs_2mib: Cell<u64>,
    double_frees: Cell<u64>,
    foreign: Cell<u64>,
    already_allocated: Cell<u64>,
    alloc_reserved: Cell<u64>,
}

impl Coverage {
    fn note<T>(&self, r: &Result<T, FrameError>) {
        let c = match r {
            Ok(_) => return,
            Err(FrameError::OutOfFrames) => &self.out_of_frames,
            Err(FrameError::DoubleFree(_)) => &self.double_frees,
            Err(FrameError::Foreign(_)) => &self.foreign,
            Err(FrameError::AlreadyAllocated(_)) => &self.already_allocated,
        };
        c.set(c.get() + 1);
    }
}

/// Compares implementation and model result, and records the outcome.
macro_rules! same {
    ($cov:expr, $imp:expr, $model:expr) => {{
        let model = $model;
        $cov.note(&model);
        assert_eq!($imp, model);
    }};
}

fn run(ranges: &[PhysRange], ops: &[Op], cov: &Coverage) {
    let mut fa = FrameAllocator::new(ranges);
    // Every frame reserved by the sequence, as one owned reservation.
    let mut held = FrameReservation::empty();
    let mut m = Model::new(ranges);
    let check = |fa: &FrameAllocator, m: &Model| {
        assert_eq!(fa.stats(), m.expected_stats());
        for f in 0..SPAN_FRAMES + 64 {
            let expect = if !m.managed.contains(&f) {
                Err(FrameError::Foreign(PhysAddr::new(f * 4096)))
            } else {
                Ok(m.allocated.contains(&f))
            };
            assert_eq!(fa.is_allocated(frame(f * 4096)), expect, "frame {f:#x}");
        }
        fa.check_invariants();
    };
    check(&fa, &m);
    for op in ops {
        cov.steps.set(cov.steps.get() + 1);
        match *op {
            Op::Alloc => same!(cov, fa.alloc().map(fno), m.alloc()),
            Op::AllocMany(n) => {
                for _ in 0..n {
                    same!(cov, fa.alloc().map(fno), m.alloc());
                }
            }
            Op::Alloc2M => {
                let r = m.alloc_2mib();
                if r.is_ok() {
                    cov.allocs_2mib.set(cov.allocs_2mib.get() + 1);
                }
                same!(
                    cov,
                    fa.alloc_2mib().map(|r| r.start_address().as_u64() >> 21),
                    r
                )
            }
            Op::FreeAllocated(sel) => {
                let f = m
                    .allocated
                    .iter()
                    .nth(usize::from(sel) % m.allocated.len().max(1))
                    .copied()
                    .unwrap_or(0);
                same!(cov, fa.free(frame(f * 4096)), m.free_frame(f));
            }
            Op::FreeAny(f) => same!(
                cov,
                fa.free(frame(u64::from(f) * 4096)),
                m.free_frame(u64::from(f))
            ),
            Op::Free2M(sel) => {
                let full: Vec<u64> = (0..CHUNKS + 1)
                    .filter(|&c| (c * 512..(c + 1) * 512).all(|f| m.allocated.contains(&f)))
                    .collect();
                let c = if full.is_empty() {
                    u64::from(sel) % (CHUNKS + 1)
                } else {
                    full[usize::from(sel) % full.len()]
                };
                same!(cov, fa.free_2mib(big(c << 21)), m.free_2mib(c));
            }
            Op::Mark(f) => same!(
                cov,
                fa.mark_allocated(frame(u64::from(f) * 4096)),
                m.mark(u64::from(f))
            ),
            Op::Reserve(n) => same!(cov, fa.reserve(u64::from(n)).map(|r| held.absorb(r)), m.reserve(u64::from(n))),
            Op::Unreserve(sel) => {
                let n = u64::from(sel) % (m.reserved + 1);
                fa.unreserve(held.split(n));
                m.reserved -= n;
            }
            Op::AllocReserved => {
                if m.reserved > 0 {
                    assert_eq!(fno(fa.alloc_reserved(&mut held)), m.alloc_reserved());
                    cov.alloc_reserved.set(cov.alloc_reserved.get() + 1);
                }
            }
            Op::FailAfter(k) => {
                let k = (k > 0).then_some(u64::from(k));
                fa.fail_request_after(k);
                m.fail_countdown = k;
            }
        }
        check(&fa, &m);
    }
    assert_eq!(held.frames(), m.reserved);
    fa.unreserve(held);
}

#[test]
fn random_sequences_match_the_model() {
    let mut runner = TestRunner::new(Config {
        cases: 128,
        failure_persistence: None,
        ..Config::default()
    });
    let cov = Coverage::default();
    let strategy = (ranges(), proptest::collection::vec(op(), 100..=160));
    runner
        .run(&strategy, |(ranges, ops)| {
            run(&ranges, &ops, &cov);
            Ok(())
        })
        .unwrap();
    // Shrinking never happens on success, so these count the generated cases exactly.
    let n = |c: &Cell<u64>| c.get();
    std::println!(
        "model comparison: {} steps; out of frames {}, 2 MiB allocs {}, double frees {}, foreign {}, \
         already allocated {}, reserved allocs {}",
        n(&cov.steps),
        n(&cov.out_of_frames),
        n(&cov.allocs_2mib),
        n(&cov.double_frees),
        n(&cov.foreign),
        n(&cov.already_allocated),
        n(&cov.alloc_reserved)
    );
    assert!(n(&cov.steps) >= 10_000, "only {} steps", n(&cov.steps));
    for c in [
        &cov.out_of_frames,
        &cov.allocs_2mib,
        &cov.double_frees,
        &cov.foreign,
        &cov.already_allocated,
        &cov.alloc_reserved,
    ] {
        assert!(n(c) >= 50, "an outcome was hardly explored");
    }
}
