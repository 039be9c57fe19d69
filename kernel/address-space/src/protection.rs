//! Page protections: parsing and validating Win32 `PAGE_*` values (win32-semantics §2).
//!
//! A protection is a [`BaseProtection`] (exactly one of the eight access values) plus the
//! modifiers `PAGE_GUARD`, `PAGE_NOCACHE` and `PAGE_WRITECOMBINE` ([`CacheMode`]). The base
//! protection fits in three bits, which is how the page-table entry stores it
//! (see [`crate::paging::pte`]).

use crate::VmError;
use crate::win32::*;

/// The access part of a protection: one of the eight `PAGE_*` access values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum BaseProtection {
    /// `PAGE_NOACCESS`.
    NoAccess = 0,
    /// `PAGE_READONLY`.
    ReadOnly = 1,
    /// `PAGE_READWRITE`.
    ReadWrite = 2,
    /// `PAGE_WRITECOPY` (images only).
    WriteCopy = 3,
    /// `PAGE_EXECUTE`.
    Execute = 4,
    /// `PAGE_EXECUTE_READ`.
    ExecuteRead = 5,
    /// `PAGE_EXECUTE_READWRITE`.
    ExecuteReadWrite = 6,
    /// `PAGE_EXECUTE_WRITECOPY` (images only).
    ExecuteWriteCopy = 7,
}

impl BaseProtection {
    /// All eight values, in code order.
    pub const ALL: [BaseProtection; 8] = [
        BaseProtection::NoAccess,
        BaseProtection::ReadOnly,
        BaseProtection::ReadWrite,
        BaseProtection::WriteCopy,
        BaseProtection::Execute,
        BaseProtection::ExecuteRead,
        BaseProtection::ExecuteReadWrite,
        BaseProtection::ExecuteWriteCopy,
    ];

    /// Returns the 3-bit code stored in page-table entries.
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// Decodes a 3-bit code (only the low three bits are used).
    pub const fn from_code(code: u8) -> Self {
        Self::ALL[(code & 7) as usize]
    }

    /// Returns the `PAGE_*` value.
    pub const fn to_win32(self) -> u32 {
        match self {
            BaseProtection::NoAccess => PAGE_NOACCESS,
            BaseProtection::ReadOnly => PAGE_READONLY,
            BaseProtection::ReadWrite => PAGE_READWRITE,
            BaseProtection::WriteCopy => PAGE_WRITECOPY,
            BaseProtection::Execute => PAGE_EXECUTE,
            BaseProtection::ExecuteRead => PAGE_EXECUTE_READ,
            BaseProtection::ExecuteReadWrite => PAGE_EXECUTE_READWRITE,
            BaseProtection::ExecuteWriteCopy => PAGE_EXECUTE_WRITECOPY,
        }
    }

    /// Returns `true` if reads are allowed (every value but `PAGE_NOACCESS`: x86_64 cannot make
    /// a page execute-only, so `PAGE_EXECUTE` pages are readable, as on Windows x64).
    pub const fn can_read(self) -> bool {
        !matches!(self, BaseProtection::NoAccess)
    }

    /// Returns `true` if writes are allowed (write-copy counts as writable: the only copy is ours).
    pub const fn can_write(self) -> bool {
        matches!(
            self,
            BaseProtection::ReadWrite
                | BaseProtection::WriteCopy
                | BaseProtection::ExecuteReadWrite
                | BaseProtection::ExecuteWriteCopy
        )
    }

    /// Returns `true` if instruction fetches are allowed.
    pub const fn can_execute(self) -> bool {
        matches!(
            self,
            BaseProtection::Execute
                | BaseProtection::ExecuteRead
                | BaseProtection::ExecuteReadWrite
                | BaseProtection::ExecuteWriteCopy
        )
    }

    /// Returns `true` for the copy-on-write values, invalid for private memory (§2 step 6).
    pub const fn is_write_copy(self) -> bool {
        matches!(self, BaseProtection::WriteCopy | BaseProtection::ExecuteWriteCopy)
    }
}

/// The caching attribute of an allocation (`PAGE_NOCACHE`, `PAGE_WRITECOMBINE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CacheMode {
    /// Write-back (no modifier).
    #[default]
    WriteBack,
    /// `PAGE_NOCACHE`: mapped uncached (PCD | PWT, PAT index 3).
    NoCache,
    /// `PAGE_WRITECOMBINE`: mapped with the PAT bit (PAT index 4); the kernel must program PAT
    /// entry 4 as write-combining (the power-on PAT has write-back there, which is harmless).
    WriteCombine,
}

impl CacheMode {
    /// Returns the `PAGE_*` modifier bit (0 for write-back).
    pub const fn to_win32(self) -> u32 {
        match self {
            CacheMode::WriteBack => 0,
            CacheMode::NoCache => PAGE_NOCACHE,
            CacheMode::WriteCombine => PAGE_WRITECOMBINE,
        }
    }
}

/// A validated Win32 page protection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PageProtection {
    /// The access value.
    pub base: BaseProtection,
    /// `PAGE_GUARD`.
    pub guard: bool,
    /// `PAGE_NOCACHE` / `PAGE_WRITECOMBINE`.
    pub cache: CacheMode,
}

impl PageProtection {
    /// A protection with no modifiers.
    pub const fn plain(base: BaseProtection) -> Self {
        PageProtection { base, guard: false, cache: CacheMode::WriteBack }
    }

    /// Parses and validates a `PAGE_*` value per win32-semantics §2 steps 1–5 (any memory type).
    ///
    /// # Errors
    ///
    /// [`VmError::InvalidProtection`] (Win32 87) for: bits above `PAGE_WRITECOMBINE`; zero or
    /// more than one access bit; `PAGE_GUARD` with `PAGE_NOACCESS`, `PAGE_NOCACHE` or
    /// `PAGE_WRITECOMBINE`; `PAGE_NOCACHE` with `PAGE_NOACCESS` or `PAGE_WRITECOMBINE`;
    /// `PAGE_WRITECOMBINE` with `PAGE_NOACCESS`.
    ///
    /// Cost: O(1).
    pub const fn parse(p: u32) -> Result<Self, VmError> {
        // Step 1: nothing above PAGE_WRITECOMBINE (the CFG bit 0x40000000 is rejected too).
        if p >= 0x800 {
            return Err(VmError::InvalidProtection);
        }
        // Step 2: exactly one nibble non-zero, and it is a single bit.
        let lo = p & 0x0F;
        let hi = (p >> 4) & 0x0F;
        let base = match (lo, hi) {
            (1, 0) => BaseProtection::NoAccess,
            (2, 0) => BaseProtection::ReadOnly,
            (4, 0) => BaseProtection::ReadWrite,
            (8, 0) => BaseProtection::WriteCopy,
            (0, 1) => BaseProtection::Execute,
            (0, 2) => BaseProtection::ExecuteRead,
            (0, 4) => BaseProtection::ExecuteReadWrite,
            (0, 8) => BaseProtection::ExecuteWriteCopy,
            _ => return Err(VmError::InvalidProtection),
        };
        let guard = p & PAGE_GUARD != 0;
        let nocache = p & PAGE_NOCACHE != 0;
        let wc = p & PAGE_WRITECOMBINE != 0;
        let noaccess = matches!(base, BaseProtection::NoAccess);
        // Steps 3-5.
        if guard && (noaccess || nocache || wc) {
            return Err(VmError::InvalidProtection);
        }
        if nocache && (noaccess || wc) {
            return Err(VmError::InvalidProtection);
        }
        if wc && noaccess {
            return Err(VmError::InvalidProtection);
        }
        let cache = if nocache {
            CacheMode::NoCache
        } else if wc {
            CacheMode::WriteCombine
        } else {
            CacheMode::WriteBack
        };
        Ok(PageProtection { base, guard, cache })
    }

    /// Parses a protection for private (`VirtualAlloc`) memory: [`parse`](Self::parse) plus
    /// §2 step 6 (`PAGE_WRITECOPY` and `PAGE_EXECUTE_WRITECOPY` are invalid).
    ///
    /// # Errors
    ///
    /// [`VmError::InvalidProtection`] (Win32 87).
    pub const fn parse_private(p: u32) -> Result<Self, VmError> {
        match Self::parse(p) {
            Ok(prot) if prot.base.is_write_copy() => Err(VmError::InvalidProtection),
            other => other,
        }
    }

    /// Returns the `PAGE_*` value, modifiers included.
    pub const fn to_win32(self) -> u32 {
        self.base.to_win32() | if self.guard { PAGE_GUARD } else { 0 } | self.cache.to_win32()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_six_base_values_are_valid_for_private_memory() {
        // WK test_VirtualAlloc_protection / test_VirtualProtect: 0x00..0xF0 table.
        for p in 0u32..=0xFF {
            let ok = PageProtection::parse_private(p).is_ok();
            let expected = matches!(p, 0x01 | 0x02 | 0x04 | 0x10 | 0x20 | 0x40);
            assert_eq!(ok, expected, "protection {p:#x}");
        }
        assert!(PageProtection::parse(PAGE_WRITECOPY).is_ok());
        assert!(PageProtection::parse(PAGE_EXECUTE_WRITECOPY).is_ok());
    }

    #[test]
    fn modifier_rules_match_reactos_pins() {
        // RK SimpleErrorChecks.
        for bad in [0, 0xFFFF_FFFF, PAGE_NOACCESS | PAGE_GUARD, PAGE_NOACCESS | PAGE_WRITECOMBINE] {
            assert_eq!(PageProtection::parse(bad), Err(VmError::InvalidProtection), "{bad:#x}");
        }
        assert!(PageProtection::parse(PAGE_READONLY | PAGE_WRITECOMBINE).is_ok());
        for bad in [
            PAGE_READWRITE | PAGE_GUARD | PAGE_NOCACHE,
            PAGE_READWRITE | PAGE_GUARD | PAGE_WRITECOMBINE,
            PAGE_NOACCESS | PAGE_NOCACHE,
            PAGE_READWRITE | PAGE_NOCACHE | PAGE_WRITECOMBINE,
            PAGE_READWRITE | 0x800,
            PAGE_EXECUTE_READ | 0x4000_0000,
            PAGE_READONLY | PAGE_EXECUTE,
        ] {
            assert_eq!(PageProtection::parse(bad), Err(VmError::InvalidProtection), "{bad:#x}");
        }
        let p = PageProtection::parse(PAGE_EXECUTE_READ | PAGE_GUARD).unwrap();
        assert_eq!(p.base, BaseProtection::ExecuteRead);
        assert!(p.guard);
        assert_eq!(p.to_win32(), PAGE_EXECUTE_READ | PAGE_GUARD);
        let p = PageProtection::parse(PAGE_READWRITE | PAGE_NOCACHE).unwrap();
        assert_eq!(p.cache, CacheMode::NoCache);
        assert_eq!(p.to_win32(), PAGE_READWRITE | PAGE_NOCACHE);
    }

    #[test]
    fn codes_round_trip() {
        for b in BaseProtection::ALL {
            assert_eq!(BaseProtection::from_code(b.code()), b);
            assert_eq!(PageProtection::parse(b.to_win32()).unwrap().base, b);
        }
    }
}
