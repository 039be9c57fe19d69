//! The kernel's [`Tlb`] for the address-space crate.

use address_space::paging::tlb::Tlb;
use x86_64::VirtAddr;

/// TLB invalidation for one address space: real `invlpg` / CR3 reloads only when that space is
/// the one in CR3 (a space that is not loaded has no cached translations: every switch to it
/// reloads CR3, which drops all non-global entries, and guest mappings are never global).
pub struct KernelTlb {
    pub(super) active: bool,
}

impl Tlb for KernelTlb {
    fn invalidate_page(&mut self, addr: VirtAddr) {
        if self.active {
            x86_64::instructions::tlb::flush(addr);
        }
    }

    fn flush_all(&mut self) {
        if self.active {
            // Reloading CR3 drops every non-global translation, i.e. all of the guest's.
            x86_64::instructions::tlb::flush_all();
        }
    }
}

