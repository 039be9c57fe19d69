//! The kernel heap: `linked_list_allocator` over a fixed region of the kernel's `.bss`.
//!
//! The region is part of the kernel image, so it is mapped read+write+NX by the bootloader (and
//! later by the kernel's own tables) like the rest of `.bss`. An allocation failure is reported
//! by the allocator as a null pointer; `alloc`'s error handler then panics, which is a kernel bug
//! (guest input never sizes a kernel-heap allocation without a check).

use linked_list_allocator::LockedHeap;

/// Size of the kernel heap.
pub const HEAP_SIZE: usize = 32 * 1024 * 1024;

#[repr(C, align(4096))]
struct HeapArea([u8; HEAP_SIZE]);

static mut HEAP_AREA: HeapArea = HeapArea([0; HEAP_SIZE]);

#[global_allocator]
static ALLOCATOR: LockedHeap = LockedHeap::empty();

/// Hands the heap region to the allocator. Idempotent.
pub fn init() {
    let mut heap = ALLOCATOR.lock();
    if heap.size() == 0 {
        let start = core::ptr::addr_of_mut!(HEAP_AREA).cast::<u8>();
        // SAFETY: HEAP_AREA is a static region used by nothing but this allocator; it is handed
        // over once (guarded by size() == 0 under the lock) and lives for the whole run.
        unsafe { heap.init(start, HEAP_SIZE) };
    }
}

/// Heap figures for the memory accounting: (bytes in use, bytes free).
pub fn usage() -> (usize, usize) {
    let heap = ALLOCATOR.lock();
    (heap.used(), heap.free())
}
