//! The loader needs no heap per relocation: parsing a 14 MB static PIE with 600,000
//! relocations and streaming them allocates nothing (measured with a counting allocator; this
//! test binary holds one test so no other thread allocates meanwhile).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use guest_loader::build::static_pie;
use guest_loader::{Image, Policy};

/// Counts the bytes allocated through it.
struct Counting;

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to `System` with the caller's arguments unchanged, so the
// `GlobalAlloc` contract holds as it does for `System`; the counter is only statistics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller upholds `alloc`'s contract (non-zero size), which is System's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above, i.e. from System, with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn six_hundred_thousand_relocations_cost_no_heap() {
    let file = static_pie(600_000);
    let policy = Policy { user_min: 0x1_0000, user_end: 0x7FFF_FFF0_0000, max_image_size: 1 << 30, base_alignment: 0x1_0000, pie_base: 0x1_4000_0000 };
    let before = ALLOCATED.load(Ordering::Relaxed);
    let image = Image::parse(&file, &policy).expect("accepted");
    let (mut count, mut sum) = (0u64, 0u64);
    for r in image.relocations() {
        count += 1;
        sum = sum.wrapping_add(r.value);
    }
    let pages = image.page_rights().count();
    let allocated = ALLOCATED.load(Ordering::Relaxed) - before;
    assert_eq!(count, 600_000);
    assert!(sum != 0 && pages > 0);
    assert_eq!(allocated, 0, "parsing and streaming allocated {allocated} bytes");
}
