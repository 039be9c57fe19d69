//! The ABI edge: address-space errors as the HRESULTs of host-abi §4. This is the one place
//! HRESULTs are made from errors; the match is exhaustive, so a new error variant cannot slip
//! through unmapped.

use address_space::VmError;

/// S_OK.
pub const S_OK: u32 = 0;
/// E_OUTOFMEMORY.
pub const E_OUTOFMEMORY: u32 = 0x8007_000E;
/// E_INVALIDARG (= HRESULT_FROM_WIN32(ERROR_INVALID_PARAMETER)).
pub const E_INVALIDARG: u32 = 0x8007_0057;
/// E_POINTER.
pub const E_POINTER: u32 = 0x8000_4003;
/// E_NOINTERFACE.
pub const E_NOINTERFACE: u32 = 0x8000_4002;
/// E_NOTIMPL.
pub const E_NOTIMPL: u32 = 0x8000_4001;
/// E_FAIL.
pub const E_FAIL: u32 = 0x8000_4005;
/// HOST_E_CLRNOTAVAILABLE.
pub const HOST_E_CLRNOTAVAILABLE: u32 = 0x8013_1023;
/// HOST_E_TIMEOUT: the exit code of a guest ended at its CPU-time limit (host-abi §10.1).
pub const HOST_E_TIMEOUT: u32 = 0x8013_1024;

/// HRESULT_FROM_WIN32.
pub const fn from_win32(e: u32) -> u32 {
    if e == 0 { 0 } else { 0x8007_0000 | (e & 0xFFFF) }
}

/// The HRESULT for a failed address-space call.
pub const fn from_vm(e: VmError) -> u32 {
    match e {
        // Exhaustion of commit, frames or address space (host-abi §4).
        VmError::NoMemory | VmError::CommitmentLimit => E_OUTOFMEMORY,
        // A guard page hit by the kernel on the guest's behalf surfaces unchanged (§9).
        VmError::GuardPage => e.win32_code(),
        VmError::InvalidParameter
        | VmError::InvalidProtection
        | VmError::UnableToFree
        | VmError::UnableToDeleteSection
        | VmError::ConflictingAddresses
        | VmError::NotAllocated
        | VmError::FreeNotAtBase
        | VmError::NotCommitted
        | VmError::AlreadyCommitted
        | VmError::PrivilegeNotHeld
        | VmError::BadLength
        | VmError::NoAccess => from_win32(e.win32_code()),
    }
}
