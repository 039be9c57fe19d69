//! Host calls: what the stubs of [`super::host_pages`] ask for (host-abi §3–§7, §9).
//!
//! Argument registers on entry: call number in `rax`; `rdi, rsi, rdx, r10, r8, r9`, and `rbx`
//! for the seventh argument of `VirtualAlloc`. Every pointer is checked against the guest's
//! address space before use; checks run in the contract's order: E_POINTER for NULL COM
//! out-pointers, then Windows' validation order, then Windows' own pointer arguments, then the
//! operation. A failed call changes nothing but the NULL/0 results §9 lists.

use address_space::win32::*;
use address_space::{CriticalLevel, VmError};

use super::exceptions::{self, FrameError};
use super::host_pages::{self, MANAGER_OBJECT, Stub, nr, stub};
use super::hresult::{self, E_INVALIDARG, E_NOINTERFACE, E_NOTIMPL, E_POINTER, HOST_E_CLRNOTAVAILABLE, S_OK};
use super::{Ended, Guest, Handler};
use crate::arch::user::{FpuImage, UserContext, sanitize_rflags};

/// `IID_IUnknown` as its 16 bytes in memory (GUID layout: u32, u16, u16, 8 bytes).
const IID_IUNKNOWN: [u8; 16] = guid(0x0000_0000, 0x0000, 0x0000, [0xC0, 0, 0, 0, 0, 0, 0, 0x46]);
/// `IID_IHostMemoryManager`.
const IID_IHOST_MEMORY_MANAGER: [u8; 16] =
    guid(0x7BC6_98D1, 0xF9E3, 0x4460, [0x9C, 0xDE, 0xD0, 0x42, 0x48, 0xE9, 0xFA, 0x25]);

const fn guid(a: u32, b: u16, c: u16, d: [u8; 8]) -> [u8; 16] {
    let a = a.to_le_bytes();
    let b = b.to_le_bytes();
    let c = c.to_le_bytes();
    [a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]
}

/// Most vectored exception handlers a guest may register (kept in the kernel heap).
pub const MAX_HANDLERS: usize = 4096;
/// Most ranges a guest may record with `AcquiredVirtualAddressSpace` (kept in the kernel heap).
pub const MAX_ACQUIRED_RANGES: usize = 4096;

/// Bytes a `write` copies at once (longer writes go in pieces).
const WRITE_CHUNK: usize = 4096;
/// Most bytes one `write` system call prints; the stub calls again for the rest.
const WRITE_PIECE: u64 = 64 * 1024;

/// Benchmark hook (`test-hooks` feature): when set, called with each piece (at most [`WRITE_CHUNK`] bytes) of console
/// output a guest writes, before it is printed, inside the guest's system call (its space in CR3,
/// no lock held). Set only by the benchmark image (`src/bin/bench.rs`), which reads the work
/// counters and [`super::kernel_entries`] at the in-guest benchmark's marker lines.
#[cfg(feature = "test-hooks")]
pub static WRITE_HOOK: spin::Once<fn(&[u8])> = spin::Once::new();

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

/// The result of a HOST_SERVICES call whose pointer check failed: the Win32 error itself
/// (host-abi §7), and for a guard page the status 0x80000001 as Windows' GetLastError reports it
/// (host-abi §9; the guard is cleared, the retry succeeds).
fn service_error(e: VmError) -> u32 {
    match e {
        VmError::GuardPage => e.win32_code(),
        _ => ERROR_NOACCESS,
    }
}

/// The notification thresholds in bytes of free commit: (low, high) (host-abi §5; set at boot,
/// see `memory::MemoryConfig`).
fn thresholds() -> (u64, u64) {
    let c = crate::memory::config();
    let limit = crate::memory::with_mm(|mm| mm.charge.limit_pages()) * 4096;
    (limit * c.low_threshold_percent / 100, limit * c.high_threshold_percent / 100)
}

/// Whether a test's injected inconsistency fires on this call (never without `test-hooks`).
#[cfg(feature = "test-hooks")]
fn injected_inconsistency() -> bool {
    use core::sync::atomic::Ordering;
    // One CPU, and guests run with the kernel not re-entered: a load and a store suffice.
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

fn hr(result: Result<(), u32>) -> u64 {
    match result {
        Ok(()) => S_OK as u64,
        Err(h) => h as u64,
    }
}

/// ERROR_NOACCESS as an HRESULT.
const E_NOACCESS: u32 = hresult::from_win32(ERROR_NOACCESS);

/// How a system call returns to ring 3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Return {
    /// To the caller with the result in `rax` (`sysretq` may be used).
    Sysret,
    /// To a context that replaced the caller's (`iretq`: every register is loaded).
    Context,
}

/// The callbacks a host call leaves for ring 3 to make before its caller sees the result
/// (host-abi §5): AddRef of a newly registered callback, Release of the one it replaces, and
/// `OnMemoryNotification` on a band change.
#[derive(Debug, Default)]
pub(super) struct Callbacks {
    /// `(method, object, argument)`, in call order.
    calls: [(u64, u64, u64); 3],
    len: usize,
    /// One of them is `OnMemoryNotification`.
    notification: bool,
}

impl Callbacks {
    fn push(&mut self, method: u64, object: u64, argument: u64) {
        self.calls[self.len] = (method, object, argument);
        self.len += 1;
    }
}

impl Guest {
    /// Serves one system call of the guest running `c` (its result goes to `c.rax`, or `c` is
    /// replaced), or ends the guest.
    pub(super) fn syscall(&mut self, c: &mut UserContext) -> Result<Return, Ended> {
        let (a1, a2, a3, a4, a5, a6, a7) = (c.rdi, c.rsi, c.rdx, c.r10, c.r8, c.r9, c.rbx);
        self.note_stack(c.rsp);
        // The dispatchers' calls are private to the host's code page (`rcx` = the return rip):
        // made from anywhere else they are unknown calls (host-abi §9: E_NOTIMPL).
        let dispatcher = (host_pages::HOST_CODE..host_pages::HOST_CODE + super::PAGE).contains(&c.rcx);
        c.rax = match c.rax {
            nr::EXIT => return Err(a1 as i32),
            nr::WRITE => self.write_console(a1, a2, a3 != 0),
            nr::TICKS_NS => crate::arch::time::ticks_ns(),
            nr::ADD_VEH => self.add_handler(a1 != 0, a2),
            nr::REMOVE_VEH => self.remove_handler(a1),
            nr::GET_WRITE_WATCH => self.get_write_watch(a1 as u32, a2, a3, a4, a5, a6) as u64,
            nr::RESET_WRITE_WATCH => match self.space.reset_write_watch(a1, a2) {
                Ok(()) => 0,
                Err(e) => e.win32_code() as u64,
            },
            nr::PROBE => match self.with_stack_growth(a1, a2, || self.space.with(|s, cx| s.check_user_access(cx, a1, a2, a3 != 0))) {
                Ok(()) if a1 != 0 => 0,
                Ok(()) => E_NOACCESS as u64,
                Err(e) => hresult::from_vm(e) as u64,
            },
            nr::QUERY_COMMIT => {
                self.query_commit(a1);
                0
            }
            nr::EXCEPTION_HANDLER if dispatcher => self.exception_handler(a1),
            nr::CONTINUE if dispatcher => {
                self.resume(c, a1, a2)?;
                self.deliver_band_change(c)?;
                return Ok(Return::Context);
            }
            nr::UNHANDLED if dispatcher => return Err(self.unhandled_call(a1)),
            nr::CALLBACKS_DONE if dispatcher => {
                self.callbacks_done(c, a1, a2, a3 != 0)?;
                return Ok(Return::Context);
            }
            n if (nr::MANAGER..nr::MANAGER + 13).contains(&n) => {
                let mut callbacks = Callbacks::default();
                c.rax = self.manager_call(n - nr::MANAGER, [a1, a2, a3, a4, a5, a6, a7], &mut callbacks)?;
                self.note_band_change(&mut callbacks)?;
                return self.enter_callbacks(c, &callbacks);
            }
            _ => E_NOTIMPL as u64,
        };
        Ok(Return::Sysret)
    }

    /// Returns to ring 3 through the callback dispatcher ([`Stub::DispatchCallbacks`]) when a
    /// host call left callbacks: the caller's context `c` (with its result) and register image go
    /// on its stack below `rsp - 128` as for an exception, the `(method, object, argument)`
    /// triples below them; the dispatcher calls each and resumes `c` through `callbacks_done`.
    /// Ring 3 enters each method with a `call`, so a method at a bad address faults there, as
    /// a guest exception.
    fn enter_callbacks(&mut self, c: &mut UserContext, callbacks: &Callbacks) -> Result<Return, Ended> {
        if callbacks.len == 0 {
            return Ok(Return::Sysret);
        }
        let fpu = FpuImage::save();
        let payload = (callbacks.len as u64 * 24).next_multiple_of(16);
        let frame = match self.write_frame(c, &fpu, payload) {
            Ok(frame) => frame,
            Err(FrameError::StackOverflow { address }) => {
                // No room left on the stack for the calls: the overflow is the guest's exception.
                let e = exceptions::GuestException { code: exceptions::status::STACK_OVERFLOW, access: 1, address };
                self.raise(c, e)?;
                return Ok(Return::Context);
            }
            Err(FrameError::NoRoom) => {
                crate::kprintln!("guest {}: no usable stack for its callbacks (rsp {:#x})", self.name, c.rsp);
                return Err(exceptions::status::ACCESS_VIOLATION as i32);
            }
        };
        let mut triples = [0u8; 3 * 24];
        for (i, word) in callbacks.calls[..callbacks.len].iter().flat_map(|&(m, o, a)| [m, o, a]).enumerate() {
            triples[i * 8..i * 8 + 8].copy_from_slice(&word.to_le_bytes());
        }
        if self.write_stack(frame.low, &triples[..callbacks.len * 24]).is_err() {
            crate::kprintln!("guest {}: no usable stack for its callbacks (rsp {:#x})", self.name, c.rsp);
            return Err(exceptions::status::ACCESS_VIOLATION as i32);
        }
        self.notifying |= callbacks.notification;
        *c = UserContext {
            rip: stub(Stub::DispatchCallbacks),
            rsp: frame.low,
            rbx: frame.low,
            r12: callbacks.len as u64,
            r13: frame.context_at,
            r14: frame.fpu_at,
            r15: callbacks.notification as u64,
            rflags: sanitize_rflags(0),
            ..UserContext::default()
        };
        Ok(Return::Context)
    }

    /// `callbacks_done(context, image, notified)`: the callback dispatcher ran a host call's
    /// callbacks; resumes its caller as `continue` does. A band change that happened while a
    /// notification ran is delivered now (host-abi §10.3: after the callback returns).
    fn callbacks_done(&mut self, c: &mut UserContext, context_at: u64, fpu_at: u64, notified: bool) -> Result<(), Ended> {
        if notified {
            self.notifying = false;
        }
        self.resume(c, context_at, fpu_at)?;
        self.deliver_band_change(c)
    }

    /// After a resume: delivers a band change that was held back (while a notification or an
    /// exception handler ran), entering the callback dispatcher from the resumed context `c`.
    fn deliver_band_change(&mut self, c: &mut UserContext) -> Result<(), Ended> {
        let mut callbacks = Callbacks::default();
        self.note_band_change(&mut callbacks)?;
        self.enter_callbacks(c, &callbacks).map(|_| ())
    }

    /// `write(buf, len)` as the stub makes it: prints at most [`WRITE_PIECE`] bytes of `buf` and
    /// returns how many (0: nothing), so that one kernel entry does a bounded amount of work
    /// whatever `len` is (the stub loops in ring 3). With `whole`, set on the stub's first call,
    /// nothing is written unless the whole buffer is readable.
    fn write_console(&self, buf: u64, len: u64, whole: bool) -> u64 {
        let check = |len| self.with_stack_growth(buf, len, || self.space.with(|s, cx| s.check_user_access(cx, buf, len, false)));
        if len == 0 || (whole && check(len).is_err()) {
            return 0;
        }
        let piece = len.min(WRITE_PIECE);
        if check(piece).is_err() {
            return 0;
        }
        let mut chunk = [0u8; WRITE_CHUNK];
        let mut done = 0;
        while done < piece {
            let n = (piece - done).min(WRITE_CHUNK as u64) as usize;
            if self.read_bytes(buf + done, &mut chunk[..n]).is_err() {
                return done;
            }
            #[cfg(feature = "test-hooks")]
            if let Some(hook) = WRITE_HOOK.get() {
                hook(&chunk[..n]);
            }
            crate::console::write_bytes(&chunk[..n]);
            done += n as u64;
        }
        piece
    }

    fn add_handler(&mut self, first: bool, function: u64) -> u64 {
        // The list lives in the kernel heap: bounded, so a guest cannot exhaust it.
        if !self.is_executable(function) || self.handlers.len() >= MAX_HANDLERS {
            return 0;
        }
        let handle = self.next_handle;
        self.next_handle += 1;
        let h = Handler { handle: handle * 16, function };
        if first { self.handlers.insert(0, h) } else { self.handlers.push(h) }
        h.handle
    }

    fn remove_handler(&mut self, handle: u64) -> u64 {
        match self.handlers.iter().position(|h| h.handle == handle && handle != 0) {
            Some(i) => {
                self.handlers.remove(i);
                1
            }
            None => 0,
        }
    }

    /// `GetWriteWatch`: returns 0 or the Win32 error (host-abi §7).
    fn get_write_watch(&mut self, flags: u32, base: u64, size: u64, addresses: u64, count_ptr: u64, gran_ptr: u64) -> u32 {
        // The two out-pointers Windows probes for writing first.
        if count_ptr == 0 || gran_ptr == 0 {
            return ERROR_NOACCESS;
        }
        if let Err(e) = self.check_writable(count_ptr, 8).and_then(|_| self.check_writable(gran_ptr, 4)) {
            return service_error(e);
        }
        let Ok(count) = self.read_u64(count_ptr) else { return ERROR_NOACCESS };
        if count > 0 && addresses == 0 {
            return ERROR_NOACCESS;
        }
        // Windows' own checks (region, size, flags, count 0) come from the address space; a
        // one-slot probe without the reset flag validates without changing anything.
        let mut probe = [0u64; 1];
        if let Err(e) = self.space.get_write_watch(flags & !WRITE_WATCH_FLAG_RESET, base, size, if count == 0 { &mut [] } else { &mut probe }) {
            return e.win32_code();
        }
        let pages = size.div_ceil(4096);
        let capacity = count.min(pages);
        if capacity > 0
            && let Err(e) = self.check_writable(addresses, capacity * 8)
        {
            return service_error(e);
        }
        // Collect in pieces of at most 4096 addresses, each call resuming after the last page the
        // previous one returned, so a huge request needs no huge kernel buffer and the cost stays
        // proportional to the tables present, not to the size of the range.
        let mut found = 0u64;
        let mut chunk = alloc::vec![0u64; 4096];
        let end = base + size;
        let mut at = base;
        while at < end && found < capacity {
            let room = (capacity - found).min(4096) as usize;
            let k = match self.space.get_write_watch(flags, at, end - at, &mut chunk[..room]) {
                Ok(k) => k,
                Err(e) => return e.win32_code(),
            };
            let bytes: alloc::vec::Vec<u8> = chunk[..k].iter().flat_map(|a| a.to_le_bytes()).collect();
            if self.write_bytes(addresses + found * 8, &bytes).is_err() {
                return ERROR_NOACCESS;
            }
            found += k as u64;
            if k < room {
                break;
            }
            at = chunk[k - 1] + 4096;
        }
        let _ = self.write_bytes(count_ptr, &found.to_le_bytes());
        let _ = self.write_bytes(gran_ptr, &4096u32.to_le_bytes());
        0
    }

    fn query_commit(&self, out: u64) {
        let (low, high) = thresholds();
        let info = crate::memory::with_mm(|mm| {
            let c = &mm.charge;
            [c.limit_pages() * 4096, c.committed_pages() * 4096, c.critical_reserve_pages() * 4096, low, high]
        });
        let bytes: alloc::vec::Vec<u8> = info.iter().flat_map(|v| v.to_le_bytes()).collect();
        let _ = self.write_bytes(out, &bytes);
    }

    /// An `IHostMemoryManager` method; `args[0]` is `this`. Callbacks it leaves for ring 3 go
    /// to `callbacks`.
    fn manager_call(&mut self, slot: u64, args: [u64; 7], callbacks: &mut Callbacks) -> Result<u64, Ended> {
        if args[0] != MANAGER_OBJECT {
            return Ok(E_NOACCESS as u64);
        }
        let lifetime = matches!(slot, slot::QUERY_INTERFACE | slot::ADD_REF | slot::RELEASE);
        if self.poisoned && !lifetime {
            return Ok(HOST_E_CLRNOTAVAILABLE as u64);
        }
        if !lifetime && injected_inconsistency() {
            return Ok(self.internal_inconsistency("injected by a test") as u64);
        }
        Ok(match slot {
            slot::QUERY_INTERFACE => hr(self.query_interface(args[1], args[2])),
            slot::ADD_REF => {
                self.manager_refs = self.manager_refs.saturating_add(1);
                self.manager_refs as u64
            }
            slot::RELEASE => {
                self.manager_refs = self.manager_refs.saturating_sub(1);
                self.manager_refs as u64
            }
            slot::VIRTUAL_ALLOC => hr(self.virtual_alloc(args[1], args[2], args[3] as u32, args[4] as u32, args[5] as u32, args[6])),
            slot::VIRTUAL_FREE => hr(self.space.virtual_free(args[1], args[2], args[3] as u32).map_err(hresult::from_vm)),
            slot::VIRTUAL_QUERY => hr(self.virtual_query(args[1], args[2], args[3], args[4])),
            slot::VIRTUAL_PROTECT => hr(self.virtual_protect(args[1], args[2], args[3] as u32, args[4])),
            slot::GET_MEMORY_LOAD => hr(self.get_memory_load(args[1], args[2])),
            slot::REGISTER_CALLBACK => hr(self.register_callback(args[1], callbacks)?),
            slot::NEEDS_ADDRESS_SPACE => hr(self.check_address_range(args[1], args[2])),
            slot::ACQUIRED_ADDRESS_SPACE => hr(self.acquired(args[1], args[2])),
            slot::RELEASED_ADDRESS_SPACE => hr(self.released(args[1])),
            // CreateMalloc (slot 3) is ring-3 code of the host library, never a system call.
            _ => E_NOTIMPL as u64,
        })
    }

    /// The kernel found its own state inconsistent: the manager is poisoned (host-abi §4).
    fn internal_inconsistency(&mut self, what: &str) -> u32 {
        crate::kprintln!("guest {}: internal inconsistency ({what}); its memory manager is now unavailable", self.name);
        self.poisoned = true;
        hresult::E_FAIL
    }

    /// The memory band now: free commit against the thresholds.
    fn current_band() -> u32 {
        let (low, high) = thresholds();
        crate::memory::with_mm(|mm| {
            let free = mm.charge.limit_pages().saturating_sub(mm.charge.committed_pages()) * 4096;
            if free < low {
                1
            } else if free > high {
                3
            } else {
                2
            }
        })
    }

    /// Leaves a call of the registered callback's `OnMemoryNotification` in `callbacks` if the
    /// band changed since the last report, unless a notification or an exception handler is
    /// running (it is delivered when that one returns or is left).
    fn note_band_change(&mut self, callbacks: &mut Callbacks) -> Result<(), Ended> {
        let Some(object) = self.callback else { return Ok(()) };
        if self.notifying || self.handler_frame.is_some() {
            return Ok(());
        }
        let band = Self::current_band();
        if band == self.band {
            return Ok(());
        }
        self.band = band;
        let function = self.callback_method(object, 3)?;
        callbacks.push(function, object, band as u64);
        callbacks.notification = true;
        Ok(())
    }

    /// Reads slot `slot` of a guest COM object's vtable; an unreadable object ends the guest with
    /// an access violation (host-abi §9: a bad callback object, for a callback).
    fn callback_method(&self, object: u64, slot: u64) -> Result<u64, Ended> {
        let vtbl = self.read_u64(object).map_err(|_| self.bad_callback(object))?;
        self.read_u64(vtbl.wrapping_add(slot * 8)).map_err(|_| self.bad_callback(object))
    }

    fn bad_callback(&self, object: u64) -> Ended {
        crate::kprintln!("guest {}: callback object {object:#x} is unreadable", self.name);
        exceptions::status::ACCESS_VIOLATION as i32
    }

    /// `RegisterMemoryNotificationCallback`: AddRef the new object, Release the old one (both
    /// made by ring 3 before the call returns), no notification now (host-abi §5, §9).
    fn register_callback(&mut self, object: u64, callbacks: &mut Callbacks) -> Result<Result<(), u32>, Ended> {
        if object != 0 {
            let mut header = [0u8; 8];
            if self.read_bytes(object, &mut header).is_err() {
                return Ok(Err(E_NOACCESS));
            }
            let vtbl = u64::from_le_bytes(header);
            let mut table = [0u8; 32];
            if self.read_bytes(vtbl, &mut table).is_err() {
                return Ok(Err(E_NOACCESS));
            }
            let add_ref = u64::from_le_bytes(table[8..16].try_into().expect("8 bytes"));
            callbacks.push(add_ref, object, 0);
        }
        if let Some(old) = self.callback.take() {
            let release = self.callback_method(old, 2)?;
            callbacks.push(release, old, 0);
        }
        self.callback = (object != 0).then_some(object);
        self.band = Self::current_band();
        Ok(Ok(()))
    }

    /// Validates a range for the `*VirtualAddressSpace` methods: in user space, size > 0.
    fn check_address_range(&self, start: u64, size: u64) -> Result<(), u32> {
        let cfg = self.space.with(|s, _| *s.config());
        let ok = size > 0 && start >= cfg.min_address && start.checked_add(size).is_some_and(|end| end <= cfg.max_address_end);
        if ok { Ok(()) } else { Err(E_INVALIDARG) }
    }

    /// `AcquiredVirtualAddressSpace`: records the range, which must overlap no allocation of the
    /// host's and no range recorded before.
    fn acquired(&mut self, start: u64, size: u64) -> Result<(), u32> {
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
    fn released(&mut self, start: u64) -> Result<(), u32> {
        match self.acquired.iter().position(|&(s, _)| s == start) {
            Some(i) => {
                self.acquired.remove(i);
                Ok(())
            }
            None => Err(hresult::from_win32(ERROR_INVALID_ADDRESS)),
        }
    }

    /// Checks a COM out-pointer: NULL → E_POINTER, not writable → ERROR_NOACCESS (or the guard
    /// page status, the guard now cleared).
    fn out_pointer(&self, ptr: u64, len: u64) -> Result<(), u32> {
        if ptr == 0 {
            return Err(E_POINTER);
        }
        self.check_writable(ptr, len).map_err(hresult::from_vm)
    }

    fn query_interface(&mut self, riid: u64, ppv: u64) -> Result<(), u32> {
        self.out_pointer(ppv, 8)?;
        if riid == 0 {
            let _ = self.write_bytes(ppv, &0u64.to_le_bytes());
            return Err(E_POINTER);
        }
        let mut iid = [0u8; 16];
        if let Err(e) = self.read_bytes(riid, &mut iid) {
            let _ = self.write_bytes(ppv, &0u64.to_le_bytes());
            return Err(hresult::from_vm(e));
        }
        if iid == IID_IUNKNOWN || iid == IID_IHOST_MEMORY_MANAGER {
            self.manager_refs = self.manager_refs.saturating_add(1);
            let _ = self.write_bytes(ppv, &MANAGER_OBJECT.to_le_bytes());
            Ok(())
        } else {
            let _ = self.write_bytes(ppv, &0u64.to_le_bytes());
            Err(E_NOINTERFACE)
        }
    }

    fn virtual_alloc(&mut self, addr: u64, size: u64, alloc_type: u32, protect: u32, level: u32, pp_mem: u64) -> Result<(), u32> {
        self.out_pointer(pp_mem, 8)?;
        let level = match level {
            0 => CriticalLevel::Task,
            1 => CriticalLevel::AppDomain,
            2 => CriticalLevel::Process,
            _ => {
                let _ = self.write_bytes(pp_mem, &0u64.to_le_bytes());
                return Err(E_INVALIDARG);
            }
        };
        match self.space.with(|s, cx| s.virtual_alloc(cx, addr, size, alloc_type, protect, level)) {
            Ok(base) => {
                let _ = self.write_bytes(pp_mem, &base.to_le_bytes());
                Ok(())
            }
            Err(e) => {
                let _ = self.write_bytes(pp_mem, &0u64.to_le_bytes());
                Err(hresult::from_vm(e))
            }
        }
    }

    fn virtual_query(&mut self, addr: u64, buffer: u64, length: u64, p_result: u64) -> Result<(), u32> {
        self.out_pointer(p_result, 8)?;
        let zero = |g: &Self| {
            let _ = g.write_bytes(p_result, &0u64.to_le_bytes());
        };
        if length < address_space::MemoryBasicInformation::SIZE as u64 {
            zero(self);
            return Err(hresult::from_vm(VmError::BadLength));
        }
        let info = match self.space.virtual_query(addr) {
            Ok(info) => info,
            Err(e) => {
                zero(self);
                return Err(hresult::from_vm(e));
            }
        };
        if let Err(e) = self.write_bytes(buffer, &info.to_bytes()) {
            zero(self);
            return Err(hresult::from_vm(if buffer == 0 { VmError::NoAccess } else { e }));
        }
        let _ = self.write_bytes(p_result, &(address_space::MemoryBasicInformation::SIZE as u64).to_le_bytes());
        Ok(())
    }

    fn virtual_protect(&mut self, addr: u64, size: u64, protect: u32, p_old: u64) -> Result<(), u32> {
        address_space::AddressSpace::check_protect_value(protect).map_err(hresult::from_vm)?;
        if p_old == 0 {
            return Err(E_NOACCESS);
        }
        self.check_writable(p_old, 4).map_err(hresult::from_vm)?;
        let old = self.space.virtual_protect(addr, size, protect).map_err(hresult::from_vm)?;
        let _ = self.write_bytes(p_old, &old.to_le_bytes());
        Ok(())
    }

    fn get_memory_load(&mut self, p_load: u64, p_available: u64) -> Result<(), u32> {
        // E_POINTER for either NULL first, then writability (host-abi §9 order).
        if p_load == 0 || p_available == 0 {
            return Err(E_POINTER);
        }
        self.out_pointer(p_load, 4)?;
        self.out_pointer(p_available, 8)?;
        let (commit_load, available) =
            crate::memory::with_mm(|mm| (mm.charge.load_percent(), mm.charge.available(CriticalLevel::Task) * 4096));
        // Address space the runtime acquired by other means counts as in use (host-abi §5): the
        // load is the larger of the commit load and the address-space load.
        let cfg = self.space.with(|s, _| *s.config());
        let span = cfg.max_address_end - cfg.min_address;
        let reserved: u64 = self.space.with(|s, _| s.allocations().map(|a| a.size).sum::<u64>());
        let acquired: u64 = self.acquired.iter().map(|&(_, l)| l).sum();
        let space_load = ((reserved + acquired) as u128 * 100 / span as u128) as u32;
        let load = commit_load.max(space_load).min(100);
        let _ = self.write_bytes(p_load, &load.to_le_bytes());
        let _ = self.write_bytes(p_available, &available.to_le_bytes());
        Ok(())
    }
}
