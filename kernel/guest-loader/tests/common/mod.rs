//! What the loader's host tests share: the kernel's guest policy and the invariants every
//! accepted image must satisfy.
#![allow(dead_code)]

use guest_loader::{Image, PAGE_SIZE as PAGE, Policy};

/// The policy the kernel applies to guests (kernel/src/guest/mod.rs).
pub const GUEST: Policy = Policy {
    user_min: 0x1_0000,
    user_end: 0x7FFF_FFF0_0000,
    max_image_size: 1 << 30,
    base_alignment: 0x1_0000,
    pie_base: 0x1_4000_0000,
};

/// Checks what the kernel relies on for an accepted image: everything it will map or write lies
/// inside `[base, base + size)`, inside the policy's range, and no page is writable and executable.
pub fn check_invariants(image: &Image<'_>, policy: &Policy) {
    let (base, size) = (image.base(), image.size());
    let end = base.checked_add(size).expect("image end fits");
    assert!(base >= policy.user_min && end <= policy.user_end, "image {base:#x}..{end:#x} outside the policy");
    assert!(size <= policy.max_image_size && size > 0 && size % PAGE == 0);
    assert_eq!(base % policy.base_alignment, 0);
    let rights: Vec<_> = image.page_rights().collect();
    assert_eq!(rights.len() as u64, image.pages());
    assert!(rights.iter().all(|r| !(r.write && r.execute)), "a W+X page");
    let entry = image.entry();
    assert!((base..end).contains(&entry));
    assert!(rights[((entry - base) / PAGE) as usize].execute, "entry page not executable");
    for s in image.segments() {
        assert!(s.address >= base && s.address.checked_add(s.mem_size).is_some_and(|e| e <= end));
        assert!(s.bytes.len() as u64 <= s.mem_size);
    }
    if let Some((start, stop)) = image.relro() {
        assert!(base <= start && start < stop && stop <= end);
    }
    for r in image.relocations() {
        assert!(r.address >= base && r.address.checked_add(8).is_some_and(|e| e <= end), "relocation at {:#x}", r.address);
    }
}
