//! The ABI edge: address-space errors as the HRESULTs of host-abi §4. This is the one place
//! HRESULTs are made from errors; the match is exhaustive, so a new error variant cannot slip
//! through unmapped.

use address_space::VmError;

pub use host_abi::HResult;

/// The HRESULTs the guest layer returns, host-abi's values.
macro_rules! codes {
    ($($name:ident),*) => {
        $(#[doc = concat!("`", stringify!($name), "` (host-abi).")] pub const $name: HResult = HResult::$name;)*
    };
}

codes!(S_OK, E_OUTOFMEMORY, E_INVALIDARG, E_POINTER, E_NOINTERFACE, E_NOTIMPL, E_FAIL, HOST_E_CLRNOTAVAILABLE, HOST_E_TIMEOUT);

/// HRESULT_FROM_WIN32.
pub const fn from_win32(e: u32) -> HResult {
    HResult::from_win32(e)
}

/// ERROR_NOACCESS as an HRESULT.
pub const E_NOACCESS: HResult = from_win32(host_abi::win32::ERROR_NOACCESS);

/// The value a system call returns in `rax` for `h`: its 32 bits, zero-extended (the guest reads
/// `eax`).
pub const fn to_rax(h: HResult) -> u64 {
    h.0 as u32 as u64
}

/// A guest's exit code for `h` (the guest ends as if it had called `exit(h)`).
pub const fn to_exit_code(h: HResult) -> i32 {
    h.0
}

/// The HRESULT for a failed address-space call.
pub const fn from_vm(e: VmError) -> HResult {
    match e {
        // Exhaustion of commit, frames or address space (host-abi §4).
        VmError::NoMemory | VmError::CommitmentLimit => E_OUTOFMEMORY,
        // A guard page hit by the kernel on the guest's behalf surfaces unchanged (§9).
        VmError::GuardPage => HResult(e.win32_code() as i32),
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
