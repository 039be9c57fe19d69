//! [`VmError`]: the one error type of the address-space layer.
//!
//! Each variant names *why* a call failed (the NTSTATUS Windows would use internally) and
//! [`VmError::win32_code`] gives the Win32 error `GetLastError` would return for it
//! (win32-semantics §1.4). Several variants share a code: the ABI only sees the code, tests and
//! logs see the reason.

use crate::win32;

/// Why an address-space operation failed.
///
/// A failed operation changes nothing: no page, frame, counter or page-table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VmError {
    /// A flag, size or address argument is invalid (STATUS_INVALID_PARAMETER_x). Win32 87.
    InvalidParameter,
    /// The protection value fails win32-semantics §2 (STATUS_INVALID_PAGE_PROTECTION). Win32 87.
    InvalidProtection,
    /// `VirtualFree(MEM_DECOMMIT)` range runs out of its allocation (STATUS_UNABLE_TO_FREE_VM). Win32 87.
    UnableToFree,
    /// `VirtualFree` on an image allocation (STATUS_UNABLE_TO_DELETE_SECTION). Win32 87.
    UnableToDeleteSection,
    /// The range is not free (reserve) or not inside one allocation (commit, protect, reset)
    /// (STATUS_CONFLICTING_ADDRESSES). Win32 487.
    ConflictingAddresses,
    /// No allocation contains the address (STATUS_MEMORY_NOT_ALLOCATED). Win32 487.
    NotAllocated,
    /// Release or whole decommit not at the allocation base (STATUS_FREE_VM_NOT_AT_BASE). Win32 487.
    FreeNotAtBase,
    /// A page of the range is not committed (STATUS_NOT_COMMITTED). Win32 487.
    NotCommitted,
    /// Commit into an image allocation (STATUS_ALREADY_COMMITTED). Win32 5.
    AlreadyCommitted,
    /// No physical frames, or no free address range of the requested size (STATUS_NO_MEMORY).
    /// Win32 8; an out-of-memory error.
    NoMemory,
    /// The commit charge would exceed the limit for the request's criticality
    /// (STATUS_COMMITMENT_LIMIT). Win32 1455; an out-of-memory error.
    CommitmentLimit,
    /// `MEM_LARGE_PAGES` without the lock-memory privilege. Win32 1314.
    PrivilegeNotHeld,
    /// A buffer is too small (STATUS_INFO_LENGTH_MISMATCH). Win32 24.
    BadLength,
    /// A system-service access to memory that is not committed and accessible
    /// (STATUS_ACCESS_VIOLATION). Win32 998.
    NoAccess,
    /// A system-service access touched a guard page; its guard bit is now clear
    /// (STATUS_GUARD_PAGE_VIOLATION, reported unchanged as 0x80000001).
    GuardPage,
}

impl VmError {
    /// Returns the Win32 error code Windows would set for this failure.
    ///
    /// Cost: O(1).
    pub const fn win32_code(self) -> u32 {
        match self {
            VmError::InvalidParameter
            | VmError::InvalidProtection
            | VmError::UnableToFree
            | VmError::UnableToDeleteSection => win32::ERROR_INVALID_PARAMETER,
            VmError::ConflictingAddresses
            | VmError::NotAllocated
            | VmError::FreeNotAtBase
            | VmError::NotCommitted => win32::ERROR_INVALID_ADDRESS,
            VmError::AlreadyCommitted => win32::ERROR_ACCESS_DENIED,
            VmError::NoMemory => win32::ERROR_NOT_ENOUGH_MEMORY,
            VmError::CommitmentLimit => win32::ERROR_COMMITMENT_LIMIT,
            VmError::PrivilegeNotHeld => win32::ERROR_PRIVILEGE_NOT_HELD,
            VmError::BadLength => win32::ERROR_BAD_LENGTH,
            VmError::NoAccess => win32::ERROR_NOACCESS,
            VmError::GuardPage => win32::STATUS_GUARD_PAGE_VIOLATION,
        }
    }

    /// Returns `true` for the errors the host ABI reports as `E_OUTOFMEMORY` (host-abi §4):
    /// [`VmError::NoMemory`] and [`VmError::CommitmentLimit`].
    pub const fn is_out_of_memory(self) -> bool {
        matches!(self, VmError::NoMemory | VmError::CommitmentLimit)
    }
}

impl core::fmt::Display for VmError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{self:?} (Win32 error {})", self.win32_code())
    }
}
