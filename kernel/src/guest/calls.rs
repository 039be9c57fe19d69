//! Host calls: the system-call dispatcher behind the stubs of [`super::host_pages`] (host-abi
//! §3–§7, §9), and the callbacks a call leaves for ring 3 to make. The calls themselves live in
//! their rooms: [`super::services`] (`HOST_SERVICES`), [`super::manager`] (`IHostMemoryManager`),
//! [`super::notification`] (memory bands and the notification callback).
//!
//! Argument registers on entry: call number in `rax`; `rdi, rsi, rdx, r10, r8, r9`, and `rbx`
//! for the seventh argument of `VirtualAlloc`. Every pointer is checked against the guest's
//! address space before use; checks run in the contract's order: E_POINTER for NULL COM
//! out-pointers, then Windows' validation order, then Windows' own pointer arguments, then the
//! operation. A failed call changes nothing but the NULL/0 results §9 lists.


use super::exceptions::{self, Frame, FrameError};
use super::host_pages::{self, Stub, nr, stub};
use super::hresult::{self, E_NOACCESS, E_NOTIMPL};
use super::{Ended, Guest};
#[cfg(feature = "test-hooks")]
pub use super::manager::inject_inconsistency_after;
#[cfg(feature = "test-hooks")]
pub use super::services::WRITE_HOOK;
use crate::arch::user::{UserContext, sanitize_rflags};


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
    /// Leaves `OnMemoryNotification(band)` of the callback `object` (its method at `method`).
    pub(super) fn push_notification(&mut self, method: u64, object: u64, band: host_abi::MemoryAvailable) {
        self.push(method, object, band as u64);
        self.notification = true;
    }

    pub(super) fn push(&mut self, method: u64, object: u64, argument: u64) {
        self.calls[self.len] = (method, object, argument);
        self.len += 1;
    }
}

impl Guest {
    /// Serves one system call of the guest running `c` (its result goes to `c.rax`, or `c` is
    /// replaced), or ends the guest.
    pub(super) fn syscall(&mut self, c: &mut UserContext) -> Result<Return, Ended> {
        let (a1, a2, a3, a4, a5, a6) = (c.rdi, c.rsi, c.rdx, c.r10, c.r8, c.r9);
        self.note_stack(c.rsp);
        // The dispatchers' calls are private to the host's code page (`rcx` = the return rip):
        // made from anywhere else they are unknown calls (host-abi §9: E_NOTIMPL).
        let dispatcher = host_pages::is_stub_return(c.rcx);
        c.rax = match c.rax {
            nr::EXIT => return Err(a1 as i32),
            nr::WRITE => self.write_console(a1, a2, a3 != 0),
            nr::TICKS_NS => crate::arch::time::ticks_ns(),
            // `first` is a 32-bit argument: the upper half of its register is undefined (SysV).
            nr::ADD_VEH => self.add_handler(a1 as u32 != 0, a2),
            nr::REMOVE_VEH => self.remove_handler(a1),
            nr::GET_WRITE_WATCH => self.get_write_watch(a1 as u32, a2, a3, a4, a5, a6) as u64,
            nr::RESET_WRITE_WATCH => match self.space.reset_write_watch(a1, a2) {
                Ok(()) => 0,
                Err(e) => e.win32_code() as u64,
            },
            nr::PROBE => match self.mem().with_stack_growth(a1, a2, || self.space.with(|s, cx| s.check_user_access(cx, a1, a2, a3 != 0))) {
                Ok(()) if a1 != 0 => 0,
                Ok(()) => hresult::to_rax(E_NOACCESS),
                Err(e) => hresult::to_rax(hresult::from_vm(e)),
            },
            nr::QUERY_COMMIT => {
                self.query_commit(a1);
                0
            }
            nr::EXCEPTION_HANDLER if dispatcher => {
                // The next handler's key goes back in rdx, for the dispatcher's next question.
                let next = self.exception_handler(a1);
                c.rdx = next.order;
                next.function
            }
            nr::CONTINUE if dispatcher => {
                super::call_clock::call(super::call_clock::CONTINUE);
                self.resume(c, a1, a2)?;
                self.deliver_band_change(c)?;
                return Ok(Return::Context);
            }
            nr::UNHANDLED if dispatcher => return Err(self.unhandled_call(a1)),
            nr::CALLBACKS_DONE if dispatcher => {
                self.callbacks_done(c, a1, a2, a3 != 0)?;
                return Ok(Return::Context);
            }
            n if let Some((slot, assisted)) = super::manager::manager_slot(n, c.rcx) => {
                let mut callbacks = Callbacks::default();
                c.rax = self.manager_call(slot, assisted, c, &mut callbacks)?;
                // The host library's heap calls leave a band change for `DELIVER_HELD` (the
                // commit epoch it is noted by stays behind until then).
                if !super::manager::holds_notification(n, c.rcx) {
                    self.note_band_change(&mut callbacks)?;
                }
                return self.enter_callbacks(c, &callbacks);
            }
            nr::DELIVER_HELD if host_pages::is_library_return(c.rcx) => {
                c.rax = 0;
                let mut callbacks = Callbacks::default();
                self.note_band_change(&mut callbacks)?;
                return self.enter_callbacks(c, &callbacks);
            }
            _ => hresult::to_rax(E_NOTIMPL),
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
        let mut triples = [0u8; 3 * 24];
        for (i, word) in callbacks.calls[..callbacks.len].iter().flat_map(|&(m, o, a)| [m, o, a]).enumerate() {
            triples[i * 8..i * 8 + 8].copy_from_slice(&word.to_le_bytes());
        }
        let written = Frame::below(c.rsp, (callbacks.len as u64 * 24).next_multiple_of(16))
            .and_then(|frame| self.mem().write_frame(&frame, c, &triples[..callbacks.len * 24]).map(|()| frame));
        let frame = match written {
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
        if callbacks.notification {
            self.notifying = true;
            self.thread.notification_frame = Some(frame.low);
        }
        // As for an exception: entered with `sysretq` (rcx and r11 hold rip and rflags).
        let (rip, rflags) = (stub(Stub::DispatchCallbacks), sanitize_rflags(0));
        *c = UserContext {
            rip,
            rcx: rip,
            rsp: frame.low,
            rbx: frame.low,
            r11: rflags,
            r12: callbacks.len as u64,
            r13: frame.context_at,
            r14: frame.fpu_at,
            r15: callbacks.notification as u64,
            rflags,
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
            self.thread.notification_frame = None;
        }
        self.resume(c, context_at, fpu_at)?;
        self.deliver_band_change(c)
    }

    /// After a resume: delivers a band change that was held back (while a notification or an
    /// exception handler ran), entering the callback dispatcher from the resumed context `c`.
    pub(super) fn deliver_band_change(&mut self, c: &mut UserContext) -> Result<(), Ended> {
        let mut callbacks = Callbacks::default();
        self.note_band_change(&mut callbacks)?;
        self.enter_callbacks(c, &callbacks).map(|_| ())
    }
}
