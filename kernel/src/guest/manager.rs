//! `IHostMemoryManager` (host-abi §4, §5, §9): its COM methods, served for the stubs of the
//! vtable in the host's data page.

use core::sync::atomic::{AtomicU32, Ordering};

use address_space::win32::*;
use address_space::{CriticalLevel, VmError};

use super::call_clock::{self, Stage};
use super::calls::Callbacks;
use super::host_pages::{self, MANAGER_OBJECT};
use super::hresult::{self, E_INVALIDARG, E_NOACCESS, E_NOINTERFACE, E_NOTIMPL, E_POINTER, HOST_E_CLRNOTAVAILABLE, HResult, S_OK};
use super::{Ended, Guest, GuestMemory, UserCopy, notification, within_one_page};
use crate::arch::user::UserContext;
use crate::memory::CallRange;

/// `IID_IUnknown` as its 16 bytes in memory.
const IID_IUNKNOWN: [u8; 16] = host_abi::IID_IUNKNOWN.to_bytes();
/// `IID_IHostMemoryManager`.
const IID_IHOST_MEMORY_MANAGER: [u8; 16] = host_abi::IID_IHOST_MEMORY_MANAGER.to_bytes();

/// Most ranges a guest may record with `AcquiredVirtualAddressSpace` (kept in the kernel heap).
pub const MAX_ACQUIRED_RANGES: usize = 4096;

/// The manager's reference count (host-abi §9: starts at 1, never destroys). Shared with the
/// scheduler, which serves `AddRef`/`Release` without the guest's lock as it serves the memory
/// calls.
#[derive(Debug)]
pub(crate) struct ManagerRefs(AtomicU32);

impl Default for ManagerRefs {
    fn default() -> ManagerRefs {
        ManagerRefs(AtomicU32::new(1))
    }
}

impl ManagerRefs {
    /// Adds a reference (saturating); the new count.
    pub(super) fn add_ref(&self) -> u32 {
        self.update(|n| n.saturating_add(1))
    }

    /// Drops a reference (saturating at 0); the new count.
    pub(super) fn release(&self) -> u32 {
        self.update(|n| n.saturating_sub(1))
    }

    fn update(&self, f: impl Fn(u32) -> u32) -> u32 {
        let mut n = self.0.load(Ordering::Relaxed);
        loop {
            match self.0.compare_exchange_weak(n, f(n), Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return f(n),
                Err(now) => n = now,
            }
        }
    }

    /// `AddRef` or `Release` (vtable `slot`) when `this` is the manager, served without the
    /// guest's lock; `None` for anything else.
    pub(super) fn lifetime_call(&self, slot: u64, this: u64) -> Option<u64> {
        match slot {
            _ if this != MANAGER_OBJECT => None,
            slot::ADD_REF => Some(self.add_ref() as u64),
            slot::RELEASE => Some(self.release() as u64),
            _ => None,
        }
    }
}

/// The `IHostMemoryManager` methods, by vtable slot.
mod slot {
    pub const QUERY_INTERFACE: u64 = 0;
    pub const ADD_REF: u64 = 1;
    pub const RELEASE: u64 = 2;
    pub const VIRTUAL_ALLOC: u64 = 4;
    pub const VIRTUAL_FREE: u64 = 5;
    pub const VIRTUAL_QUERY: u64 = 6;
    pub const VIRTUAL_PROTECT: u64 = 7;
    pub const GET_MEMORY_LOAD: u64 = 8;
    pub const REGISTER_CALLBACK: u64 = 9;
    pub const NEEDS_ADDRESS_SPACE: u64 = 10;
    pub const ACQUIRED_ADDRESS_SPACE: u64 = 11;
    pub const RELEASED_ADDRESS_SPACE: u64 = 12;
}


/// Test-only fault injection (`test-hooks` feature): when non-zero, the manager call that brings it from 1 to 0 acts as
/// if the kernel had found its own state inconsistent (E_FAIL, the manager poisoned). Set by the
/// QEMU tests through [`inject_inconsistency_after`]; never set otherwise.
#[cfg(feature = "test-hooks")]
static INJECT_INCONSISTENCY: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Makes the `n`-th manager call from now (of the next guest that runs) report E_FAIL as if the
/// kernel had found its own state inconsistent (host-abi §4); 0 disarms. For tests only.
#[cfg(feature = "test-hooks")]
pub fn inject_inconsistency_after(n: u64) {
    INJECT_INCONSISTENCY.store(n, core::sync::atomic::Ordering::SeqCst);
}

/// Whether a test's injected inconsistency fires on this call (never without `test-hooks`).
#[cfg(feature = "test-hooks")]
fn injected_inconsistency() -> bool {
    use core::sync::atomic::Ordering;
    // Called under the guest's lock (the unlocked memory calls are off while one is armed), and
    // one guest runs at a time: a load and a store suffice.
    let n = INJECT_INCONSISTENCY.load(Ordering::SeqCst);
    if n == 0 {
        return false;
    }
    INJECT_INCONSISTENCY.store(n - 1, Ordering::SeqCst);
    n == 1
}

#[cfg(not(feature = "test-hooks"))]
fn injected_inconsistency() -> bool {
    false
}

/// Whether a test armed an injected inconsistency (then every manager call goes through the
/// guest's lock, which counts it).
#[cfg(feature = "test-hooks")]
pub(super) fn inconsistency_armed() -> bool {
    INJECT_INCONSISTENCY.load(core::sync::atomic::Ordering::SeqCst) != 0
}

#[cfg(not(feature = "test-hooks"))]
pub(super) fn inconsistency_armed() -> bool {
    false
}

/// The `EMemoryCriticalLevel` a guest passed, if it is one.
fn critical_level(level: u32) -> Option<CriticalLevel> {
    match level {
        0 => Some(CriticalLevel::Task),
        1 => Some(CriticalLevel::AppDomain),
        2 => Some(CriticalLevel::Process),
        _ => None,
    }
}

/// Whether an operation on `[addr, addr + size)` (64 KiB-aligned below, as a reservation is) may
/// change `page`, the page of a checked result: its protection or its frame. The result then
/// goes through the general checked write, which sees the page as it is now.
fn may_change(page: u64, addr: u64, size: u64) -> bool {
    let start = addr & !(ALLOCATION_GRANULARITY - 1);
    let end = addr.saturating_add(size.max(1));
    (start..end).contains(&page)
}

/// The manager method a system call `n` asks for, made with return address `rip`: its vtable
/// slot, and whether it is the stubs' assisted variant ([`host_pages::assisted`], served only
/// from the code page; from anywhere else it is an unknown call).
pub(super) fn manager_slot(n: u64, rip: u64) -> Option<(u64, bool)> {
    use host_pages::{assisted, nr};
    match n {
        _ if (nr::MANAGER..nr::MANAGER + 13).contains(&n) => Some((n - nr::MANAGER, false)),
        _ if holds_notification(n, rip) => Some((n - nr::HELD_MANAGER, false)),
        _ if !host_pages::is_stub_return(rip) => None,
        assisted::VIRTUAL_ALLOC => Some((slot::VIRTUAL_ALLOC, true)),
        assisted::VIRTUAL_QUERY => Some((slot::VIRTUAL_QUERY, true)),
        assisted::VIRTUAL_PROTECT => Some((slot::VIRTUAL_PROTECT, true)),
        _ => None,
    }
}

/// Whether system call `n` made with return address `rip` is the host library's manager call
/// whose notification is held back until it asks for it ([`nr::HELD_MANAGER`](host_pages::nr::HELD_MANAGER)).
pub(super) fn holds_notification(n: u64, rip: u64) -> bool {
    use host_pages::nr;
    (nr::HELD_MANAGER..nr::HELD_MANAGER + 13).contains(&n) && host_pages::is_library_return(rip)
}

/// How a manager memory call was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Made {
    /// The plain call (`nr::MANAGER + slot`): the kernel checks and stores everything.
    Plain,
    /// By an assisted stub ([`host_pages::assisted`]) that stores the results after the call
    /// returns: nothing else runs in ring 3 before it does.
    StubStores,
    /// By an assisted stub, served where callbacks may run in ring 3 before the stub resumes (a
    /// notification, host-abi §5): the kernel stores the results, so that they are in place
    /// when a callback runs, as the plain call has them. (`VirtualAlloc`'s stub checked `ppMem`
    /// by its store all the same.)
    KernelStores,
}

/// `rax` of an assisted call whose stub stores the results ([`host_pages::assisted`]): S_OK in
/// the low half, bit 32 set.
const STUB_STORES: u64 = 1 << 32;

/// `RFLAGS.AC`: with it set (and `CR0.AM`, which the kernel sets), a misaligned ring-3 store
/// raises #AC, so the kernel stores such a call's results itself.
const RFLAGS_AC: u64 = 1 << 18;

/// Bytes of a `MEMORY_BASIC_INFORMATION`.
const MBI_SIZE: u64 = address_space::MemoryBasicInformation::SIZE as u64;

fn hr(result: Result<(), HResult>) -> u64 {
    hresult::to_rax(result.err().unwrap_or(S_OK))
}

impl Guest {
    /// An `IHostMemoryManager` method, its arguments in the caller's registers `c` (`rdi` is
    /// `this`); `assisted`: the stubs' variant ([`host_pages::assisted`]). Callbacks it leaves
    /// for ring 3 go to `callbacks`.
    pub(super) fn manager_call(&mut self, slot: u64, assisted: bool, c: &mut UserContext, callbacks: &mut Callbacks) -> Result<u64, Ended> {
        call_clock::call(slot as usize);
        let args = [c.rdi, c.rsi, c.rdx, c.r10, c.r8, c.r9, c.rbx];
        if args[0] != MANAGER_OBJECT {
            // A bad `this` is ERROR_NOACCESS, and like every failure it leaves NULL in `*ppv`,
            // `*ppMem` and `*pResult` wherever those are writable (host-abi §9); a pointer into a
            // guard page keeps its guard (nothing of the call was checked yet).
            let out = match slot {
                slot::QUERY_INTERFACE => args[2],
                slot::VIRTUAL_ALLOC => args[6],
                slot::VIRTUAL_QUERY => args[4],
                _ => 0,
            };
            if out != 0 && self.mem().plainly_writable(out, 8) {
                self.mem().put_result(out, &0u64.to_le_bytes());
            }
            return Ok(hresult::to_rax(E_NOACCESS));
        }
        let lifetime = matches!(slot, slot::QUERY_INTERFACE | slot::ADD_REF | slot::RELEASE);
        if self.poisoned && !lifetime {
            return Ok(hresult::to_rax(HOST_E_CLRNOTAVAILABLE));
        }
        if !lifetime && injected_inconsistency() {
            return Ok(hresult::to_rax(self.internal_inconsistency("injected by a test")));
        }
        let rax = match slot {
            slot::QUERY_INTERFACE => hr(self.query_interface(args[1], args[2])),
            slot::ADD_REF => self.manager_refs.add_ref() as u64,
            slot::RELEASE => self.manager_refs.release() as u64,
            slot::VIRTUAL_ALLOC | slot::VIRTUAL_FREE | slot::VIRTUAL_QUERY | slot::VIRTUAL_PROTECT => {
                // Served under the guest's lock: a band change may send a notification
                // callback before the caller resumes.
                let made = if assisted { Made::KernelStores } else { Made::Plain };
                self.mem().memory_call(slot, made, c).unwrap_or(hresult::to_rax(E_NOTIMPL))
            }
            slot::GET_MEMORY_LOAD => hr(self.get_memory_load(args[1], args[2])),
            slot::REGISTER_CALLBACK => hr(self.register_callback(args[1], callbacks)?),
            slot::NEEDS_ADDRESS_SPACE => hr(self.check_address_range(args[1], args[2])),
            slot::ACQUIRED_ADDRESS_SPACE => hr(self.acquired(args[1], args[2])),
            slot::RELEASED_ADDRESS_SPACE => hr(self.released(args[1])),
            // CreateMalloc (slot 3) is ring-3 code of the host library, never a system call.
            _ => hresult::to_rax(E_NOTIMPL),
        };
        call_clock::lap(Stage::Manager);
        Ok(rax)
    }

    /// Whether the manager's memory methods may be served without the guest's lock: the
    /// manager is not poisoned, no notification callback is registered (a band change to report
    /// needs the guest's state) and no test counts the calls.
    pub(super) fn memory_calls_unlocked(&self) -> bool {
        !self.poisoned && self.callback.is_none() && !inconsistency_armed()
    }

    /// The kernel found its own state inconsistent: the manager is poisoned (host-abi §4).
    pub(super) fn internal_inconsistency(&mut self, what: &str) -> HResult {
        crate::kprintln!("guest {}: internal inconsistency ({what}); its memory manager is now unavailable", self.name);
        self.poisoned = true;
        hresult::E_FAIL
    }

    /// Validates a range for the `*VirtualAddressSpace` methods: in user space, size > 0.
    fn check_address_range(&self, start: u64, size: u64) -> Result<(), HResult> {
        let cfg = self.space.with(|s, _| *s.config());
        let ok = size > 0 && start >= cfg.min_address && start.checked_add(size).is_some_and(|end| end <= cfg.max_address_end);
        if ok { Ok(()) } else { Err(E_INVALIDARG) }
    }

    /// `AcquiredVirtualAddressSpace`: records the range, which must overlap no allocation of the
    /// host's and no range recorded before.
    fn acquired(&mut self, start: u64, size: u64) -> Result<(), HResult> {
        self.check_address_range(start, size)?;
        if self.acquired.len() >= MAX_ACQUIRED_RANGES {
            return Err(hresult::E_OUTOFMEMORY);
        }
        let end = start + size;
        if self.acquired.iter().any(|&(s, l)| s < end && start < s + l) {
            return Err(E_INVALIDARG);
        }
        // Walk the regions of the range: every one must be free.
        let mut at = start;
        while at < end {
            match self.space.virtual_query(at) {
                Ok(q) if q.state == MEM_FREE && q.region_size > 0 => at = q.base_address.saturating_add(q.region_size),
                _ => return Err(E_INVALIDARG),
            }
        }
        self.acquired.push((start, size));
        Ok(())
    }

    /// `ReleasedVirtualAddressSpace`: forgets the range recorded at `start`.
    fn released(&mut self, start: u64) -> Result<(), HResult> {
        match self.acquired.iter().position(|&(s, _)| s == start) {
            Some(i) => {
                self.acquired.remove(i);
                Ok(())
            }
            None => Err(hresult::from_win32(ERROR_INVALID_ADDRESS)),
        }
    }

    /// [`GuestMemory::out_pointer`] for the thread being served.
    fn out_pointer(&self, ptr: u64, len: u64) -> Result<(), HResult> {
        self.mem().out_pointer(ptr, len)
    }

    fn query_interface(&mut self, riid: u64, ppv: u64) -> Result<(), HResult> {
        self.out_pointer(ppv, 8)?;
        if riid == 0 {
            self.mem().put_result(ppv, &0u64.to_le_bytes());
            return Err(E_POINTER);
        }
        let mut iid = [0u8; 16];
        if let Err(e) = self.mem().read_bytes(riid, &mut iid) {
            self.mem().put_result(ppv, &0u64.to_le_bytes());
            return Err(hresult::from_vm(e));
        }
        if iid == IID_IUNKNOWN || iid == IID_IHOST_MEMORY_MANAGER {
            self.manager_refs.add_ref();
            self.mem().put_result(ppv, &MANAGER_OBJECT.to_le_bytes());
            Ok(())
        } else {
            self.mem().put_result(ppv, &0u64.to_le_bytes());
            Err(E_NOINTERFACE)
        }
    }

    fn get_memory_load(&mut self, p_load: u64, p_available: u64) -> Result<(), HResult> {
        // E_POINTER for either NULL first, then writability (host-abi §9 order).
        if p_load == 0 || p_available == 0 {
            return Err(E_POINTER);
        }
        self.out_pointer(p_load, 4)?;
        self.out_pointer(p_available, 8)?;
        let commit = crate::memory::commit_state();
        let (commit_load, available) = (commit.load_percent, commit.available_bytes);
        // Address space the runtime acquired by other means counts as in use (host-abi §5): the
        // load is the larger of the commit load and the acquired ranges' share of user space.
        // Reservations do not count: the load is of the commit limit (a GC that reserves its
        // heap's range up front must not read that as memory pressure).
        let cfg = self.space.with(|s, _| *s.config());
        let span = cfg.max_address_end - cfg.min_address;
        let acquired: u64 = self.acquired.iter().map(|&(_, l)| l).sum();
        let space_load = (acquired as u128 * 100 / span as u128) as u32;
        let load = commit_load.max(space_load).min(100);
        self.mem().put_result(p_load, &load.to_le_bytes());
        self.mem().put_result(p_available, &available.to_le_bytes());
        Ok(())
    }
}

impl GuestMemory<'_> {
    /// The manager's memory methods (`VirtualAlloc`, `VirtualFree`, `VirtualQuery`,
    /// `VirtualProtect`), which need nothing of the guest but its memory: the scheduler serves
    /// them without the guest's lock when no notification callback is registered and the manager
    /// is not poisoned. `None` for any other slot.
    ///
    /// Arguments come from the caller's registers `c`; `made` says how the call was made, and
    /// whether its results may go back in `c`'s registers for the stub to store (the returned
    /// `rax` has bit 32 set then).
    ///
    /// The assisted `VirtualQuery` (its structure back in registers) is decided here, inline in
    /// the run loop: the commonest call, whose own work is small, goes to the space's lock
    /// without a call, a jump table and a frame of its own; everything else is
    /// [`other_memory_call`](Self::other_memory_call).
    #[inline(always)]
    pub(super) fn memory_call(&self, slot: u64, made: Made, c: &mut UserContext) -> Option<u64> {
        if slot == slot::VIRTUAL_QUERY && made == Made::StubStores && self.stub_may_store_query(c.rsi, c.rdx, c.r10, c.r8, c.rflags) {
            return Some(match self.query(c.rsi) {
                Ok(info) => {
                    // The structure's six words as `to_bytes` lays them out (PartitionId and
                    // padding zero).
                    c.rdi = info.base_address;
                    c.rsi = info.allocation_base;
                    c.rdx = info.allocation_protect as u64 | (info.partition_id as u64) << 32;
                    c.r8 = info.region_size;
                    c.r9 = info.state as u64 | (info.protect as u64) << 32;
                    c.r10 = info.type_ as u64;
                    STUB_STORES
                }
                Err(e) => self.query_failed(c.r8, e),
            });
        }
        self.other_memory_call(slot, made, c)
    }

    /// The `rax` of an assisted `VirtualQuery` whose query failed with `e`: `*pResult` = 0
    /// first (its check), then the query's error. Out of line, off the common path.
    #[inline(never)]
    fn query_failed(&self, p_result: u64, e: VmError) -> u64 {
        hr(self.out_result(p_result, 8).and(Err(hresult::from_vm(e))))
    }

    /// [`memory_call`](Self::memory_call) for every call but the assisted `VirtualQuery` whose
    /// results the stub stores.
    #[inline(never)]
    fn other_memory_call(&self, slot: u64, made: Made, c: &mut UserContext) -> Option<u64> {
        let args = [c.rdi, c.rsi, c.rdx, c.r10, c.r8, c.r9, c.rbx];
        let stub_stores = made == Made::StubStores;
        Some(match slot {
            slot::VIRTUAL_ALLOC if made != Made::Plain => match self.virtual_alloc_stored(args[1], args[2], args[3] as u32, args[4] as u32, args[5] as u32) {
                Ok(base) if stub_stores => {
                    c.rdx = base;
                    STUB_STORES
                }
                Ok(base) => {
                    self.put_result(args[6], &base.to_le_bytes());
                    hresult::to_rax(S_OK)
                }
                Err(e) => hresult::to_rax(e),
            },
            slot::VIRTUAL_ALLOC => hr(self.virtual_alloc(args[1], args[2], args[3] as u32, args[4] as u32, args[5] as u32, args[6])),
            slot::VIRTUAL_FREE => hr(self.virtual_free(args[1], args[2], args[3] as u32)),
            slot::VIRTUAL_QUERY => hr(self.virtual_query(args[1], args[2], args[3], args[4])),
            slot::VIRTUAL_PROTECT => match self.virtual_protect(args[1], args[2], args[3] as u32, args[4], stub_stores && c.rflags & RFLAGS_AC == 0) {
                Ok(Some(old)) => {
                    c.rdx = old as u64;
                    STUB_STORES
                }
                Ok(None) => hresult::to_rax(S_OK),
                Err(e) => hresult::to_rax(e),
            },
            _ => return None,
        })
    }

    /// A fault (`vector`, with `error_code` and `cr2` for a page fault) at the stubs' result
    /// store `site` in the thread's context `c`: served as the guest's own fault would be (a
    /// demand-zero page, the thread's stack growing: the store is retried), and one the memory
    /// manager refuses becomes the call's error (ERROR_NOACCESS; 0x80000001, the guard cleared,
    /// for a guard page or the end of the stack, as the kernel's own write reports it). At the
    /// out-pointer's check the stub makes the plain call instead when `unlocked` is false (the
    /// kernel then checks the pointer itself, in the contract's order) or on #AC. `false`: the
    /// fault is not one of these (the guest's exception, as before).
    pub(super) fn store_fault(&self, site: host_pages::StoreSite, vector: u8, error_code: u64, cr2: u64, unlocked: bool, c: &mut UserContext) -> bool {
        use host_pages::SiteKind;
        let plain = site.kind == SiteKind::Check && (!unlocked || vector == 17);
        if plain {
            c.rip = site.plain;
            return true;
        }
        let error = match vector {
            14 => match self.page_fault(cr2, error_code) {
                None => return true,
                Some(e) if e.code == super::exceptions::status::ACCESS_VIOLATION => VmError::NoAccess,
                Some(_) => VmError::GuardPage,
            },
            13 => VmError::NoAccess,
            _ => return false,
        };
        c.rax = if site.kind == SiteKind::Result { hresult::to_rax(S_OK) } else { hresult::to_rax(hresult::from_vm(error)) };
        c.rip = site.done;
        true
    }

    /// Checks a COM out-pointer: NULL → E_POINTER, not writable → ERROR_NOACCESS (or the guard
    /// page status, the guard now cleared).
    pub(super) fn out_pointer(&self, ptr: u64, len: u64) -> Result<(), HResult> {
        if ptr == 0 {
            return Err(E_POINTER);
        }
        self.check_writable(ptr, len).map_err(hresult::from_vm)
    }

    /// Checks a COM out-pointer by storing the NULL result every failure of the call leaves
    /// there (host-abi §9): NULL → E_POINTER, not writable → ERROR_NOACCESS (or the guard page
    /// status, the guard now cleared). The store is the check: one hardware-checked write, where
    /// a check and a later write would each walk the tables.
    fn out_result(&self, ptr: u64, len: usize) -> Result<(), HResult> {
        if ptr == 0 {
            return Err(E_POINTER);
        }
        self.write_bytes(ptr, &[0u8; 8][..len]).map_err(hresult::from_vm)
    }

    fn virtual_alloc(&self, addr: u64, size: u64, alloc_type: u32, protect: u32, level: u32, pp_mem: u64) -> Result<(), HResult> {
        self.out_result(pp_mem, 8)?;
        let base = self.virtual_alloc_stored(addr, size, alloc_type, protect, level)?;
        self.put_result(pp_mem, &base.to_le_bytes());
        call_clock::lap(Stage::Copy);
        Ok(())
    }

    /// `VirtualAlloc` once `ppMem` was checked by the store of the NULL a failure leaves there
    /// (by the kernel, or by the stub before the call): the base, for the caller to store.
    fn virtual_alloc_stored(&self, addr: u64, size: u64, alloc_type: u32, protect: u32, level: u32) -> Result<u64, HResult> {
        call_clock::lap(Stage::Check);
        let Some(level) = critical_level(level) else {
            return Err(E_INVALIDARG);
        };
        let result = self.space.with_range(CallRange::bytes(addr, size), |s, cx| {
            call_clock::lap(Stage::Lock);
            s.virtual_alloc(cx, addr, size, alloc_type, protect, level)
        });
        // After the change (see notification::note_commit_change).
        notification::note_commit_change();
        call_clock::lap(Stage::Manager);
        result.map_err(hresult::from_vm)
    }

    fn virtual_free(&self, addr: u64, size: u64, free_type: u32) -> Result<(), HResult> {
        let result = self.space.with_range(CallRange::bytes(addr, size), |s, cx| {
            call_clock::lap(Stage::Lock);
            s.virtual_free(cx, addr, size, free_type)
        });
        // After the change (see notification::note_commit_change).
        notification::note_commit_change();
        call_clock::lap(Stage::Manager);
        result.map_err(hresult::from_vm)
    }

    /// Whether the stub's ring-3 stores give a successful `VirtualQuery` exactly what
    /// [`virtual_query`](Self::virtual_query) would: every check before the query passes, the
    /// structure lies within one page (the stub's six stores are then all or nothing, as the
    /// kernel's copy is), the caller's `RFLAGS.AC` is clear (no #AC on a ring-3 store) and the
    /// query is not of the thread's own stack (a store that grows it must come first).
    fn stub_may_store_query(&self, addr: u64, buffer: u64, length: u64, p_result: u64, rflags: u64) -> bool {
        p_result != 0
            && length == MBI_SIZE
            && within_one_page(buffer, MBI_SIZE)
            && rflags & RFLAGS_AC == 0
            && !(self.stack.0..self.stack.1).contains(&addr)
    }

    /// The query itself, under the space's lock.
    fn query(&self, addr: u64) -> Result<address_space::MemoryBasicInformation, VmError> {
        call_clock::lap(Stage::Check);
        let info = self.space.with_mem(|s, mem| {
            call_clock::lap(Stage::Lock);
            s.virtual_query(mem, addr)
        });
        call_clock::lap(Stage::Manager);
        info
    }

    fn virtual_query(&self, addr: u64, buffer: u64, length: u64, p_result: u64) -> Result<(), HResult> {
        if p_result == 0 {
            return Err(E_POINTER);
        }
        if length < MBI_SIZE {
            self.out_result(p_result, 8)?;
            return Err(hresult::from_vm(VmError::BadLength));
        }
        // The query changes nothing, so it runs before `pResult` is checked (by the copy below);
        // its error still comes after that check's. The one thing a check can change is the
        // thread's stack (a guard page touched grows it): a query there checks `pResult` first.
        if (self.stack.0..self.stack.1).contains(&addr) {
            self.out_result(p_result, 8)?;
        }
        let info = match self.query(addr) {
            Ok(info) => info,
            Err(e) => {
                self.out_result(p_result, 8)?;
                return Err(hresult::from_vm(e));
            }
        };
        // A buffer longer than the structure is checked whole before anything is written, as
        // Windows probes `lpBuffer` for `dwLength` bytes.
        if length > MBI_SIZE
            && let Err(e) = self.check_writable_buffer(buffer, length)
        {
            self.out_result(p_result, 8)?;
            return Err(hresult::from_vm(e));
        }
        // One checked copy: `*pResult` = 0 (its check, and what a failure leaves), the
        // structure, then `*pResult` = 48.
        let (zero, mbi, size) = (0u64.to_le_bytes(), info.to_bytes(), MBI_SIZE.to_le_bytes());
        let pieces = [UserCopy { to: p_result, data: &zero }, UserCopy { to: buffer, data: &mbi }, UserCopy { to: p_result, data: &size }];
        let result = match self.write_all(&pieces) {
            Err((0, e)) => Err(hresult::from_vm(e)),
            Err((1, e)) => Err(hresult::from_vm(if buffer == 0 { VmError::NoAccess } else { e })),
            // The last store went to a page just written: it can fail only if another thread
            // changed that page meanwhile (the result is then lost, as a check-then-write loses it).
            _ => Ok(()),
        };
        call_clock::lap(Stage::Copy);
        result
    }

    /// `VirtualProtect`; with `stub_stores` (the assisted call, `RFLAGS.AC` clear) the old
    /// protection of the common case is returned for the stub to store (`Ok(Some)`), once the
    /// pointer was checked writable and the change cannot have touched its page.
    ///
    /// `lpflOldProtect` is checked inside the operation's lock, before the change (it must stay
    /// untouched on failure). When the stub stores the result the check only has to know that
    /// the store will succeed: a present, writable user entry in the hardware tables says so
    /// with one walk and no allocation lookup (the space maps nothing else writable; a page
    /// that is not present yet, a guard page or any other case takes `check_user_write`, which
    /// decides).
    fn virtual_protect(&self, addr: u64, size: u64, protect: u32, p_old: u64, stub_stores: bool) -> Result<Option<u32>, HResult> {
        address_space::AddressSpace::check_protect_value(protect).map_err(hresult::from_vm)?;
        if p_old == 0 {
            return Err(E_NOACCESS);
        }
        call_clock::lap(Stage::Check);
        // The common case in one lock: `lpflOldProtect` checked, the protection, its result.
        let fast = self.space.with_range(CallRange::bytes(addr, size).and_page(p_old), |s, cx| {
            call_clock::lap(Stage::Lock);
            let page = p_old & !(PAGE_SIZE - 1);
            let mapped_writable = || {
                use address_space::paging::{pte, table};
                // Within user space (a non-canonical address would walk as its alias) and a page.
                let in_user_page = p_old.checked_add(4).is_some_and(|end| end <= s.config().max_address_end) && within_one_page(p_old, 4);
                let bits = pte::PRESENT | pte::WRITABLE | pte::USER;
                in_user_page && table::translate(cx.mem, s.root().start_address().as_u64(), p_old).is_some_and(|(_, e)| e & bits == bits)
            };
            let out = if stub_stores && mapped_writable() { None } else { Some(s.check_user_write(cx.mem, p_old, 4)?) };
            call_clock::lap(Stage::Check);
            let result = s.virtual_protect(cx, addr, size, protect);
            call_clock::lap(Stage::Manager);
            let written = match result {
                Ok(old) if !may_change(page, addr, size) => {
                    if let Some(out) = out {
                        s.complete_user_write(cx, out, &old.to_le_bytes());
                    }
                    true
                }
                _ => false,
            };
            Some((result, written))
        });
        let old = match fast {
            Some((Ok(old), true)) => {
                // The lock's release (and the work counters' flush) after the last lap.
                call_clock::lap(if stub_stores { Stage::Lock } else { Stage::Copy });
                return Ok(stub_stores.then_some(old));
            }
            Some((result, _)) => result.map_err(hresult::from_vm)?,
            None => {
                self.check_writable(p_old, 4).map_err(hresult::from_vm)?;
                call_clock::lap(Stage::Check);
                let old = self.space.with_range(CallRange::bytes(addr, size), |s, cx| {
                    call_clock::lap(Stage::Lock);
                    s.virtual_protect(cx, addr, size, protect)
                });
                call_clock::lap(Stage::Manager);
                old.map_err(hresult::from_vm)?
            }
        };
        self.put_result(p_old, &old.to_le_bytes());
        call_clock::lap(Stage::Copy);
        Ok(None)
    }
}
