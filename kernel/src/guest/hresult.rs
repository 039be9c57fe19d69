//! The ABI edge: address-space errors as the HRESULTs of host-abi §4. This is the one place
//! HRESULTs are made from errors; the match is exhaustive, so a new error variant cannot slip
//! through unmapped.

use address_space::VmError;

use host_abi::HResult;

/// The guest layer passes HRESULTs as the `u32` a system call returns in `eax`; the values are
/// host-abi's.
macro_rules! codes {
    ($($name:ident),*) => {
        $(#[doc = concat!("`", stringify!($name), "` (host-abi).")] pub const $name: u32 = HResult::$name.0 as u32;)*
    };
}

codes!(S_OK, E_OUTOFMEMORY, E_INVALIDARG, E_POINTER, E_NOINTERFACE, E_NOTIMPL, E_FAIL, HOST_E_CLRNOTAVAILABLE, HOST_E_TIMEOUT);

/// HRESULT_FROM_WIN32.
pub const fn from_win32(e: u32) -> u32 {
    HResult::from_win32(e).0 as u32
}

/// ERROR_NOACCESS as an HRESULT.
pub const E_NOACCESS: u32 = from_win32(host_abi::win32::ERROR_NOACCESS);

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
