//! Leaf page-table entries: hardware bits plus the Win32 state of committed pages.
//!
//! The page table *is* the per-page store (no per-page metadata anywhere else): a reserved page
//! has entry 0 (or no table at all), a committed page has a non-zero entry. Software fields use
//! bits the CPU ignores: bits 9–11 and 52–58 of a present entry (Intel SDM vol. 3A §4.5,
//! table 4-19, "Ignored"), and every bit but P of a non-present entry (§4.5: "if P = 0 the
//! other bits are ignored"). The layout is the same in both cases:
//!
//! | bits  | present entry (P = 1)                   | non-present committed entry (P = 0)   |
//! |-------|-----------------------------------------|---------------------------------------|
//! | 0     | P = 1                                   | P = 0                                 |
//! | 1     | RW (protection allows writes)           | 0                                     |
//! | 2     | US = 1                                  | 0                                     |
//! | 3, 4  | PWT, PCD (`PAGE_NOCACHE`: both)         | 0                                     |
//! | 5     | A (accessed, set by the CPU)            | 0                                     |
//! | 6     | D (dirty: the write-watch mark)         | D kept from when the page was present |
//! | 7     | PAT (`PAGE_WRITECOMBINE`: PAT index 4)  | 0                                     |
//! | 9     | COMMITTED = 1                           | COMMITTED = 1                         |
//! | 10    | HAS_FRAME = 1                           | HAS_FRAME: a frame is kept in 12–51   |
//! | 12–51 | frame                                   | frame if HAS_FRAME, else 0            |
//! | 52–54 | Win32 base protection code (3 bits)     | same                                  |
//! | 55    | GUARD = 0                               | GUARD (armed `PAGE_GUARD`)            |
//! | 63    | NX unless the protection executes       | 0                                     |
//!
//! A committed page is present exactly when it has a frame, its protection is not
//! `PAGE_NOACCESS` and it is not a guard page. So *committed but never touched* (no frame),
//! `PAGE_NOACCESS` and guard pages are not present, and the entry says why. A page written and
//! then made `PAGE_NOACCESS` or guarded keeps its frame and contents (HAS_FRAME) and its
//! write-watch mark (D). The base protection is stored exactly, because x86 cannot tell e.g.
//! `PAGE_EXECUTE` from `PAGE_EXECUTE_READ`. Bytes of metadata per committed page outside the
//! page table: **zero**.
//!
//! Non-leaf entries keep, in their ignored bits 52–61, the number of non-zero entries of the
//! table they point to, so that a table page is freed the moment its last entry goes without
//! scanning it (see [`crate::paging::table`]).

use x86_64::structures::paging::PageTableFlags as F;

use crate::protection::{BaseProtection, CacheMode};

/// Physical-address bits of an entry (12–51).
pub const ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;
/// Software bit: the page is committed.
pub const SW_COMMITTED: u64 = 1 << 9;
/// Software bit: a frame is held in bits 12–51 (also set in present entries).
pub const SW_HAS_FRAME: u64 = 1 << 10;
/// Shift of the 3-bit base protection code.
pub const SW_PROT_SHIFT: u32 = 52;
/// Mask of the base protection code.
pub const SW_PROT_MASK: u64 = 7 << SW_PROT_SHIFT;
/// Software bit: the guard is armed.
pub const SW_GUARD: u64 = 1 << 55;
/// The bits that make up a page's (State, Protect) for `VirtualQuery` coalescing.
pub const QUERY_KEY_MASK: u64 = SW_COMMITTED | SW_PROT_MASK | SW_GUARD;

const P: u64 = F::PRESENT.bits();
const RW: u64 = F::WRITABLE.bits();
const US: u64 = F::USER_ACCESSIBLE.bits();
const PWT: u64 = F::WRITE_THROUGH.bits();
const PCD: u64 = F::NO_CACHE.bits();
/// Accessed bit.
pub const ACCESSED: u64 = F::ACCESSED.bits();
/// Dirty bit: the write-watch mark.
pub const DIRTY: u64 = F::DIRTY.bits();
/// PAT bit of a 4 KiB entry (bit 7).
pub const PAT_4K: u64 = F::HUGE_PAGE.bits();
/// PS bit of a directory entry mapping 2 MiB.
pub const HUGE: u64 = F::HUGE_PAGE.bits();
/// PAT bit of a 2 MiB entry (bit 12).
pub const PAT_2M: u64 = 1 << 12;
const NX: u64 = F::NO_EXECUTE.bits();

/// A leaf page-table entry (a copy; writing it back is the table module's job).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pte(pub u64);

impl Pte {
    /// The entry of a reserved (or free) page.
    pub const RESERVED: Pte = Pte(0);

    /// Builds the entry of a committed page.
    ///
    /// `frame` is the physical address of the page's frame if it has one; `dirty` is the
    /// write-watch mark. The entry is present exactly when a frame is there, the protection is
    /// accessible and no guard is armed.
    pub fn committed(
        prot: BaseProtection,
        guard: bool,
        frame: Option<u64>,
        dirty: bool,
        cache: CacheMode,
    ) -> Pte {
        let mut v = SW_COMMITTED | (u64::from(prot.code()) << SW_PROT_SHIFT);
        if guard {
            v |= SW_GUARD;
        }
        if dirty {
            v |= DIRTY;
        }
        if let Some(pa) = frame {
            v |= SW_HAS_FRAME | (pa & ADDR_MASK);
            if prot != BaseProtection::NoAccess && !guard {
                v |= P | US | hw_access_bits(prot) | cache_bits_4k(cache);
            }
        }
        Pte(v)
    }

    /// Returns `true` for a committed page.
    pub const fn is_committed(self) -> bool {
        self.0 & SW_COMMITTED != 0
    }
    /// Returns `true` if the CPU may use the entry.
    pub const fn is_present(self) -> bool {
        self.0 & P != 0
    }
    /// Returns the frame's physical address, if the page holds one.
    pub const fn frame(self) -> Option<u64> {
        if self.0 & SW_HAS_FRAME != 0 { Some(self.0 & ADDR_MASK) } else { None }
    }
    /// Returns the stored base protection (meaningful for committed pages).
    pub const fn prot(self) -> BaseProtection {
        BaseProtection::from_code(((self.0 & SW_PROT_MASK) >> SW_PROT_SHIFT) as u8)
    }
    /// Returns `true` if a guard is armed.
    pub const fn guard(self) -> bool {
        self.0 & SW_GUARD != 0
    }
    /// Returns the write-watch mark (the D bit, present or kept).
    pub const fn dirty(self) -> bool {
        self.0 & DIRTY != 0
    }
    /// Returns the same page with a new protection/guard, keeping frame and mark.
    pub fn with_protection(self, prot: BaseProtection, guard: bool, cache: CacheMode) -> Pte {
        Pte::committed(prot, guard, self.frame(), self.dirty(), cache)
    }
    /// As [`with_protection`](Self::with_protection) with the protection's bits worked out once
    /// for many pages ([`ProtectionBits`]): a few instructions a page.
    #[inline]
    pub const fn with_bits(self, bits: ProtectionBits) -> Pte {
        if self.0 & SW_HAS_FRAME != 0 { Pte(bits.framed | (self.0 & (ADDR_MASK | DIRTY))) } else { Pte(bits.unframed | (self.0 & DIRTY)) }
    }
    /// Returns the same page with the write-watch mark cleared.
    pub fn without_dirty(self) -> Pte {
        Pte(self.0 & !DIRTY)
    }
}

/// A protection, guard and cache mode as entry bits, for a page with a frame (at address 0) and
/// one without, mark clear: what [`Pte::with_bits`] combines with each page's frame and mark.
/// A call that sets one protection on many pages (`VirtualProtect`, a recommit) works them out
/// once instead of once a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtectionBits {
    framed: u64,
    unframed: u64,
}

impl ProtectionBits {
    /// The bits of `prot`, `guard` and `cache`.
    pub fn new(prot: BaseProtection, guard: bool, cache: CacheMode) -> Self {
        ProtectionBits {
            framed: Pte::committed(prot, guard, Some(0), false, cache).0,
            unframed: Pte::committed(prot, guard, None, false, cache).0,
        }
    }
}

/// Returns RW/NX for a base protection (P and US are added by the caller).
pub const fn hw_access_bits(prot: BaseProtection) -> u64 {
    let mut v = 0;
    if prot.can_write() {
        v |= RW;
    }
    if !prot.can_execute() {
        v |= NX;
    }
    v
}

/// Returns the cache bits of a 4 KiB entry: uncached is PCD|PWT (PAT index 3, UC in the power-on
/// PAT), write-combining is the PAT bit (index 4, which the kernel programs as WC).
pub const fn cache_bits_4k(cache: CacheMode) -> u64 {
    match cache {
        CacheMode::WriteBack => 0,
        CacheMode::NoCache => PCD | PWT,
        CacheMode::WriteCombine => PAT_4K,
    }
}

/// Returns the cache bits of a 2 MiB entry (PAT is bit 12 there).
pub const fn cache_bits_2m(cache: CacheMode) -> u64 {
    match cache {
        CacheMode::WriteBack => 0,
        CacheMode::NoCache => PCD | PWT,
        CacheMode::WriteCombine => PAT_2M,
    }
}

/// Flags of a non-leaf entry: present, writable, user (the leaf decides the real rights).
pub const TABLE_FLAGS: u64 = P | RW | US;
/// Present bit.
pub const PRESENT: u64 = P;
/// Writable bit.
pub const WRITABLE: u64 = RW;
/// User bit.
pub const USER: u64 = US;
/// No-execute bit.
pub const NO_EXECUTE: u64 = NX;

#[cfg(test)]
mod tests {
    use super::*;

    /// `with_bits` is `with_protection`, for every state of the page (with the A bit the MMU may
    /// have set) and every new protection, guard and cache mode.
    #[test]
    fn protection_bits_give_what_with_protection_gives() {
        let caches = [CacheMode::WriteBack, CacheMode::NoCache, CacheMode::WriteCombine];
        for (old_prot, new_prot) in BaseProtection::ALL.iter().flat_map(|&a| BaseProtection::ALL.iter().map(move |&b| (a, b))) {
            for (old_guard, new_guard) in [(false, false), (false, true), (true, false), (true, true)] {
                for frame in [None, Some(0x1234_5000), Some(ADDR_MASK)] {
                    for (dirty, accessed) in [(false, false), (true, false), (false, true), (true, true)] {
                        for (&old_cache, &new_cache) in caches.iter().flat_map(|a| caches.iter().map(move |b| (a, b))) {
                            let mut e = Pte::committed(old_prot, old_guard, frame, dirty, old_cache);
                            if accessed && e.is_present() {
                                e = Pte(e.0 | ACCESSED);
                            }
                            let bits = ProtectionBits::new(new_prot, new_guard, new_cache);
                            assert_eq!(e.with_bits(bits), e.with_protection(new_prot, new_guard, new_cache), "{e:x?} to {new_prot:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn encoding_keeps_state_present_or_not() {
        for prot in BaseProtection::ALL {
            for guard in [false, true] {
                for frame in [None, Some(0x1234_5000)] {
                    for dirty in [false, true] {
                        let e = Pte::committed(prot, guard, frame, dirty, CacheMode::NoCache);
                        assert!(e.is_committed());
                        assert_eq!(e.prot(), prot);
                        assert_eq!(e.guard(), guard);
                        assert_eq!(e.frame(), frame);
                        assert_eq!(e.dirty(), dirty);
                        let present = frame.is_some() && prot != BaseProtection::NoAccess && !guard;
                        assert_eq!(e.is_present(), present);
                        if present {
                            assert_eq!(e.0 & RW != 0, prot.can_write());
                            assert_eq!(e.0 & NX == 0, prot.can_execute());
                            assert_eq!(e.0 & (PCD | PWT), PCD | PWT);
                            assert_ne!(e.0 & US, 0);
                        } else {
                            assert_eq!(e.0 & (RW | US | NX | PCD | PWT | P), 0);
                        }
                    }
                }
            }
        }
        assert!(!Pte::RESERVED.is_committed());
    }
}
