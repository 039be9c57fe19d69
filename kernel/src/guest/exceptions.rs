//! CPU exceptions of a guest, as Windows reports and dispatches them (host-abi §8, §9, §10.1).
//!
//! A page fault goes to the address space first: demand-zero and kept frames resolve silently; a
//! guard page on the guest's own stack grows the stack (the next page down becomes the guard) or,
//! near the end of the reservation, raises STATUS_STACK_OVERFLOW (§10.3); any other guard page
//! raises STATUS_GUARD_PAGE_VIOLATION once; everything else is an access violation with the access
//! kind. Other vectors map to their NTSTATUS; a #GP is decoded (privileged instruction, `int n` on
//! a kernel gate, `sysenter`, or a non-canonical access) from a side-effect-free read of the code;
//! #MF and #XM are decoded from the x87 status word and MXCSR.
//!
//! Dispatch runs in ring 3, as Windows' `KiUserExceptionDispatcher` does; the kernel never calls
//! ring 3 and waits. Raising writes a frame below the faulting `rsp - 128` (the System V red
//! zone) and returns to ring 3 at the host's dispatcher stub ([`Stub::DispatchException`]):
//!
//! ```text
//!   faulting rsp - 128
//!   register image      x87/SSE/AVX (XSAVE layout), 64-byte aligned   <- r13
//!   GUEST_CONTEXT       144 bytes                                     <- r12
//!   GUEST_EXCEPTION     32 bytes, its `context` pointing above        <- rsp = rbx = rdi
//! ```
//!
//! The dispatcher runs with DF clear and the clean FPU state and calls the handlers in order, each
//! as `int32_t handler(GUEST_EXCEPTION *)` on that stack: the first is handed to it, the next ones
//! it asks for one by one ([`Guest::exception_handler`]) while they pass the exception on. EXCEPTION_CONTINUE_EXECUTION makes a `continue` call ([`Guest::resume`], NtContinue):
//! the context is read back and the image loaded (by the CPU straight from the frame when it
//! accepts it as it stands, else from a copy made loadable: MXCSR masked, XSAVE header cleaned),
//! RFLAGS sanitised, and a `rip` outside user space faults again as an execute access
//! violation. (The image is saved straight into the frame too, when it lies within one page.)
//! No handler taking it makes an `unhandled` call, which ends the guest with the code and prints
//! code, access, address and rip. The kernel keeps no state per exception: a handler
//! may leave without returning, and a fault inside a handler is a new exception dispatched
//! further down the same stack, so nesting is bounded by the stack: a frame that cannot be
//! written ends the guest with that fault's code.

use address_space::FaultOutcome;
use address_space::win32::*;
use x86_64::align_down;

use super::call_clock::{self, Stage};
use super::host_pages::{Stub, stub};
use super::{Ended, Guest, GuestMemory, PAGE_SIZE, ThreadLocal, within_one_page};
use crate::arch::probe::{self, UserCopy, UserRead};
use crate::arch::user::{
    FpuImage, USER_CONTEXT_SIZE, UserContext, context_from_bytes, context_to_bytes, fpu_image_size, load_fpu_from_user,
    sanitize_rflags, save_fpu_to_user, with_fpu_scratch, with_saved_fpu,
};

/// NTSTATUS codes (host-abi §8, §9, §10.1): host-abi's where the contract names them; the
/// x87/SSE and bound-range codes Windows raises besides are defined here.
pub mod status {
    use host_abi::win32;

    pub const ACCESS_VIOLATION: u32 = win32::STATUS_ACCESS_VIOLATION;
    pub const GUARD_PAGE_VIOLATION: u32 = win32::STATUS_GUARD_PAGE_VIOLATION;
    pub const STACK_OVERFLOW: u32 = win32::STATUS_STACK_OVERFLOW;
    pub const ILLEGAL_INSTRUCTION: u32 = win32::STATUS_ILLEGAL_INSTRUCTION;
    pub const PRIVILEGED_INSTRUCTION: u32 = win32::STATUS_PRIVILEGED_INSTRUCTION;
    pub const INTEGER_DIVIDE_BY_ZERO: u32 = win32::STATUS_INTEGER_DIVIDE_BY_ZERO;
    pub const INTEGER_OVERFLOW: u32 = win32::STATUS_INTEGER_OVERFLOW;
    pub const BREAKPOINT: u32 = win32::STATUS_BREAKPOINT;
    pub const SINGLE_STEP: u32 = win32::STATUS_SINGLE_STEP;
    pub const DATATYPE_MISALIGNMENT: u32 = win32::STATUS_DATATYPE_MISALIGNMENT;
    pub const ARRAY_BOUNDS_EXCEEDED: u32 = 0xC000_008C;
    pub const FLOAT_DENORMAL_OPERAND: u32 = 0xC000_008D;
    pub const FLOAT_DIVIDE_BY_ZERO: u32 = 0xC000_008E;
    pub const FLOAT_INEXACT_RESULT: u32 = 0xC000_008F;
    pub const FLOAT_INVALID_OPERATION: u32 = 0xC000_0090;
    pub const FLOAT_OVERFLOW: u32 = 0xC000_0091;
    pub const FLOAT_UNDERFLOW: u32 = 0xC000_0093;
    pub const FLOAT_MULTIPLE_TRAPS: u32 = 0xC000_02B5;
}

/// Size of GUEST_EXCEPTION.
const EXCEPTION_RECORD_SIZE: u64 = size_of::<host_abi::GuestException>() as u64;
/// The red zone below a faulting `rsp` that exception delivery leaves alone.
const RED_ZONE: u64 = 128;
const ALL_ONES: u64 = u64::MAX;
/// Resumes at a `rip` outside user space in a row after which the kernel ends the guest (host-abi
/// §10.1: a fault repeated forever ends that guest whenever the kernel decides). A real program
/// never does this twice; the bound only keeps a hostile handler from spinning forever.
pub const MAX_BAD_RESUMES: u32 = 1000;

/// One exception to deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestException {
    /// NTSTATUS.
    pub code: u32,
    /// 0 read, 1 write, 8 execute (memory exceptions), else 0.
    pub access: u64,
    /// Faulting data address, rip for execute, breakpoint and floating point, else 0.
    pub address: u64,
}

/// Where a frame went on the guest's stack.
#[derive(Debug, Clone, Copy)]
pub(super) struct Frame {
    /// The register image.
    pub fpu_at: u64,
    /// The saved GUEST_CONTEXT.
    pub context_at: u64,
    /// The lowest byte of the frame (16-aligned): the payload below the context, and the ring-3
    /// entry `rsp`.
    pub low: u64,
}

/// A vectored exception handler as the dispatcher gets it: its function (0: none left) and its
/// order key, which the dispatcher hands back to ask for the next one.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct HandlerAt {
    pub function: u64,
    pub order: u64,
}

/// Why a frame could not be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FrameError {
    /// Writing it reached the end of the guest's stack: the last pages are now committed and
    /// STACK_OVERFLOW (write at `address`) is to be raised instead (Windows does the same).
    StackOverflow { address: u64 },
    /// No usable stack (unmapped, read-only, non-canonical `rsp`, a foreign guard page).
    NoRoom,
}

/// What the growth of the guest's stack at a touched guard page did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StackGrowth {
    /// The page below is the new guard.
    Grown,
    /// Fewer than three pages would remain: the pages down to the hard end (the lowest page,
    /// never committed) are committed for the handlers, and STACK_OVERFLOW is raised.
    Overflow,
}

impl Frame {
    /// The frame below `rsp - 128` (the red zone) with `payload` bytes (a multiple of 16) below
    /// the context: the register image 64-byte aligned, `low` 16-aligned.
    pub(super) fn below(rsp: u64, payload: u64) -> Result<Frame, FrameError> {
        let size = fpu_image_size();
        let fpu_at = rsp.checked_sub(RED_ZONE + size as u64).ok_or(FrameError::NoRoom)? & !63;
        let context_at = fpu_at.checked_sub(USER_CONTEXT_SIZE as u64).ok_or(FrameError::NoRoom)?;
        let low = context_at.checked_sub(payload).ok_or(FrameError::NoRoom)? & !15;
        Ok(Frame { fpu_at, context_at, low })
    }
}

impl Guest {
    /// Handles CPU exception `vector` of the guest running `context`: resolves it or raises it.
    pub(super) fn exception(&mut self, context: &mut UserContext, vector: u8, error_code: u64, cr2: u64) -> Result<(), Ended> {
        call_clock::call(call_clock::EXCEPTION);
        let e = match vector {
            14 => match self.mem().page_fault(cr2, error_code) {
                None => return Ok(()),
                Some(e) => e,
            },
            13 => match self.general_protection(context, error_code) {
                None => return Ok(()),
                Some(e) => e,
            },
            0 => simple(status::INTEGER_DIVIDE_BY_ZERO),
            1 => simple(status::SINGLE_STEP),
            3 => {
                // int3 traps after the instruction; Windows reports (and resumes at) the int3.
                context.rip = context.rip.wrapping_sub(1);
                GuestException { code: status::BREAKPOINT, access: 0, address: context.rip }
            }
            4 => simple(status::INTEGER_OVERFLOW),
            5 => simple(status::ARRAY_BOUNDS_EXCEEDED),
            // `sysenter` is #UD in long mode on AMD CPUs (and QEMU's), #GP on Intel's.
            6 if self.unknown_sysenter(context) => return Ok(()),
            12 => GuestException { code: status::ACCESS_VIOLATION, access: 0, address: ALL_ONES },
            16 | 19 => {
                let fpu = FpuImage::save();
                GuestException { code: float_status(vector, fpu.fcw(), fpu.fsw(), fpu.mxcsr()), access: 0, address: context.rip }
            }
            17 => simple(status::DATATYPE_MISALIGNMENT),
            _ => simple(status::ILLEGAL_INSTRUCTION),
        };
        self.raise(context, e)
    }

    /// The instruction bytes at `rip` that can be read without changing anything (a guard page
    /// after the instruction stays armed: an observation by the kernel is not a touch by the
    /// guest), and how many there are: a byte at a time (the first unreadable one ends them),
    /// under one hold of the space lock.
    fn instruction_at(&self, rip: u64) -> ([u8; 16], usize) {
        let mut bytes = [0u8; 16];
        let n = self.space.with(|s, cx| {
            let mut n = 0;
            while n < bytes.len() && s.peek_user(cx.mem, rip.wrapping_add(n as u64), &mut bytes[n..n + 1]).is_ok() {
                n += 1;
            }
            n
        });
        (bytes, n)
    }

    /// The number of legacy and REX prefixes at the start of `code`.
    fn prefixes(code: &[u8]) -> usize {
        code.iter().take_while(|b| matches!(b, 0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 | 0x66 | 0x67 | 0xf0 | 0xf2 | 0xf3 | 0x40..=0x4f)).count()
    }

    /// Whether the faulting instruction is a `sysenter`: not how the host is called, so it fails
    /// cleanly (E_NOTIMPL in `rax`) and the guest continues after it (host-abi §9).
    fn unknown_sysenter(&self, context: &mut UserContext) -> bool {
        let (bytes, n) = self.instruction_at(context.rip);
        Self::skip_sysenter(context, &bytes[..n])
    }

    /// [`unknown_sysenter`](Self::unknown_sysenter) for the instruction bytes `code` at `rip`.
    fn skip_sysenter(context: &mut UserContext, code: &[u8]) -> bool {
        let i = Self::prefixes(code);
        if code.get(i..i + 2) != Some(&[0x0f, 0x34][..]) {
            return false;
        }
        context.rax = super::hresult::to_rax(super::hresult::E_NOTIMPL);
        context.rip = context.rip.wrapping_add(i as u64 + 2);
        true
    }

    /// A #GP from ring 3, decoded: `None` when handled without an exception (`sysenter`).
    fn general_protection(&mut self, context: &mut UserContext, error_code: u64) -> Option<GuestException> {
        if error_code & 0b10 != 0 {
            // `int n` through a gate guests may not use.
            return Some(simple(status::ACCESS_VIOLATION));
        }
        let (bytes, n) = self.instruction_at(context.rip);
        let code = &bytes[..n];
        if Self::skip_sysenter(context, code) {
            return None;
        }
        let i = Self::prefixes(code);
        let op = code.get(i).copied();
        let op2 = code.get(i + 1).copied();
        // hlt, cli, sti, in/out/ins/outs; and 0F-prefixed system instructions (lldt/ltr, lgdt/lidt…,
        // clts, sysret, invd, wbinvd, mov to/from CR/DR, wrmsr, rdmsr, rdpmc, sysexit).
        let privileged = matches!(
            (op, op2),
            (Some(0xf4 | 0xfa | 0xfb | 0xe4..=0xe7 | 0xec..=0xef | 0x6c..=0x6f), _)
                | (Some(0x0f), Some(0x00 | 0x01 | 0x06 | 0x07 | 0x08 | 0x09 | 0x20..=0x23 | 0x30 | 0x32 | 0x33 | 0x35))
        );
        if privileged {
            Some(simple(status::PRIVILEGED_INSTRUCTION))
        } else {
            // A non-canonical address (the usual #GP(0) of user code).
            Some(GuestException { code: status::ACCESS_VIOLATION, access: 0, address: ALL_ONES })
        }
    }

    /// Delivers `e`, raised by the guest running `context`: writes the exception frame and
    /// returns with `context` at the ring-3 dispatcher (see the module docs), or ends the guest.
    pub(super) fn raise(&mut self, context: &mut UserContext, e: GuestException) -> Result<(), Ended> {
        call_clock::lap(Stage::Lock);
        let first_handler = self.first_handler();
        let mem = GuestMemory { space: &self.space, stack: self.thread.stack };
        let raised = mem.raise(context, &mut self.thread, e, first_handler);
        raised.map_err(|(e, why)| self.unhandled(context, e, why))
    }

    /// The first vectored exception handler (the last added with `first`); function 0 for none.
    pub(super) fn first_handler(&self) -> HandlerAt {
        self.exception_handler(0)
    }

    /// The dispatcher's `exception_handler(after)`: the handler whose order key follows `after`
    /// (the key of the one it called last; 0 before the first), function 0 for none. Asking by
    /// key, not by position, keeps a dispatch on one thread from skipping or repeating a handler
    /// while other threads add or remove handlers (Windows' list walk keeps its place too).
    pub(super) fn exception_handler(&self, after: u64) -> HandlerAt {
        let next = self.handlers.partition_point(|h| h.order <= after);
        self.handlers.get(next).map_or(HandlerAt::default(), |h| HandlerAt { function: h.function, order: h.order })
    }

    /// `continue(context, image)` (NtContinue): resumes `context` (the caller's, replaced) with
    /// the GUEST_CONTEXT at `context_at` and the register image at `fpu_at`. Every register may
    /// be changed; RFLAGS is sanitised (host-abi §9), the image made loadable, and a `rip`
    /// outside user space faults again as an execute access violation.
    pub(super) fn resume(&mut self, context: &mut UserContext, context_at: u64, fpu_at: u64) -> Result<(), Ended> {
        if !self.mem().restore(context, context_at, fpu_at) {
            return Err(self.unreadable_resume(context_at, fpu_at));
        }
        self.resumed(context)
    }

    /// Ends the guest whose `continue` named a context or image it cannot read.
    pub(super) fn unreadable_resume(&self, context_at: u64, fpu_at: u64) -> Ended {
        crate::kprintln!("guest {}: the context to resume (at {context_at:#x}, image at {fpu_at:#x}) is unreadable", self.name);
        status::ACCESS_VIOLATION as i32
    }

    /// The rest of `continue` once `context` was [restored](GuestMemory::restore): a `rip`
    /// outside user space faults again as an execute access violation.
    pub(super) fn resumed(&mut self, context: &mut UserContext) -> Result<(), Ended> {
        if self.thread.resumed(context, self.max_application_address) {
            return Ok(());
        }
        // Resuming there would fetch outside user space: an execute violation at that rip,
        // delivered without entering ring 3 there (no iretq to a non-canonical address).
        self.thread.bad_resumes += 1;
        let e = GuestException { code: status::ACCESS_VIOLATION, access: 8, address: context.rip };
        if self.thread.bad_resumes >= MAX_BAD_RESUMES {
            return Err(self.unhandled(context, e, "handlers resumed outside user space too often"));
        }
        self.raise(context, e)
    }

    /// Notes that the guest runs at `rsp`: above the outermost exception frame, no handler of it
    /// runs any more (they returned, or left by a jump of their own); above a notification
    /// callback's frame, the callback was left (a handler's jump out of it: host-abi §8 lets a
    /// handler leave without returning), so the guest's next band change is delivered again.
    pub(super) fn note_stack(&mut self, rsp: u64) {
        self.thread.note_stack(rsp);
        if self.thread.notification_frame.is_some_and(|low| rsp > low) {
            self.thread.notification_frame = None;
            self.notifying = false;
        }
    }

    /// The dispatcher's `unhandled(record)`: ends the guest with the code of the GUEST_EXCEPTION
    /// at `record`, reporting it (an unreadable record ends it with an access violation).
    pub(super) fn unhandled_call(&self, record: u64) -> Ended {
        let mut r = [0u8; EXCEPTION_RECORD_SIZE as usize];
        if self.mem().read_bytes(record, &mut r).is_err() {
            crate::kprintln!("guest {}: unhandled exception, its record at {record:#x} unreadable", self.name);
            return status::ACCESS_VIOLATION as i32;
        }
        let u = |i: usize| u64::from_le_bytes(r[i..i + 8].try_into().expect("8 bytes"));
        let e = GuestException { code: u32::from_le_bytes(r[0..4].try_into().expect("4 bytes")), access: u(8), address: u(16) };
        let mut c = [0u8; USER_CONTEXT_SIZE];
        let context = match self.mem().read_bytes(u(24), &mut c) {
            Ok(()) => context_from_bytes(&c),
            Err(_) => UserContext { rip: ALL_ONES, ..UserContext::default() },
        };
        self.unhandled(&context, e, "no handler took it")
    }

    /// Prints the report of an exception that ends the guest and returns its exit code.
    pub(super) fn unhandled(&self, context: &UserContext, e: GuestException, why: &str) -> Ended {
        let memory = matches!(e.code, status::ACCESS_VIOLATION | status::GUARD_PAGE_VIOLATION | status::STACK_OVERFLOW);
        let access = match e.access {
            1 => "write",
            8 => "execute",
            _ => "read",
        };
        if memory {
            crate::kprintln!(
                "guest {}: unhandled exception {:#010x} ({why}): {access} at {:#x}, rip {:#x}",
                self.name,
                e.code,
                e.address,
                context.rip
            );
        } else {
            // Not a memory access: its record's access and address as they are (0, or the
            // breakpoint's rip), all four fields printed as host-abi §8 says.
            crate::kprintln!(
                "guest {}: unhandled exception {:#010x} ({why}): access {}, address {:#x}, rip {:#x}",
                self.name,
                e.code,
                e.access,
                e.address,
                context.rip
            );
        }
        e.code as i32
    }
}

impl ThreadLocal {
    /// See [`Guest::note_stack`].
    pub(super) fn note_stack(&mut self, rsp: u64) {
        if self.handler_frame.is_some_and(|low| rsp > low) {
            self.handler_frame = None;
        }
    }

    /// Notes the thread resumed at `context` by `continue`: whether its `rip` is in user space
    /// (at most `max_application_address`); the caller raises the fault otherwise.
    pub(super) fn resumed(&mut self, context: &UserContext, max_application_address: u64) -> bool {
        self.note_stack(context.rsp);
        call_clock::lap(Stage::Check);
        let good = context.rip <= max_application_address;
        if good {
            self.bad_resumes = 0;
        }
        good
    }
}

impl GuestMemory<'_> {
    /// [`Guest::raise`] with the guest's first handler `first_handler` (function 0: none): writes the
    /// frame and replaces `context` with the dispatcher's, noting the frame in `thread`; or the
    /// exception that ends the guest (the overflow the frame met, if it did) and why. Needs
    /// nothing of the guest but its memory and that handler, so the scheduler raises a page fault
    /// without the guest's lock.
    pub(super) fn raise(
        &self,
        context: &mut UserContext,
        thread: &mut ThreadLocal,
        e: GuestException,
        first_handler: HandlerAt,
    ) -> Result<(), (GuestException, &'static str)> {
        if first_handler.function == 0 {
            return Err((e, "no handler"));
        }
        let mut e = e;
        let mut written = self.write_exception_frame(context, &e);
        if let Err(FrameError::StackOverflow { address }) = written {
            // The frame reached the end of the stack: that is the exception now (as on
            // Windows), delivered on the pages just committed for it.
            e = GuestException { code: status::STACK_OVERFLOW, access: 1, address };
            written = self.write_exception_frame(context, &e);
        }
        let Ok(frame) = written else {
            return Err((e, "no room for the exception frame below rsp"));
        };
        call_clock::lap(Stage::Frame);
        // A fault below the outermost frame whose handlers still run is nested in them.
        thread.handler_frame = match thread.handler_frame {
            Some(outer) if context.rsp < outer => Some(outer),
            _ => Some(frame.low),
        };
        // rcx and r11 hold rip and rflags, as after a system call: ring 3 is entered with
        // `sysretq` (`enter_user`); the dispatcher uses neither.
        let (rip, rflags) = (stub(Stub::DispatchException), sanitize_rflags(0));
        *context = UserContext {
            rip,
            rcx: rip,
            rsp: frame.low,
            rdi: frame.low,
            rbx: frame.low,
            r11: rflags,
            r12: frame.context_at,
            r13: frame.fpu_at,
            r14: first_handler.order,
            r15: first_handler.function,
            rflags,
            ..UserContext::default()
        };
        // Handlers run with the clean FPU state (a pending x87 exception would fault again in
        // the first handler that touches the x87 unit); the faulting state is in the frame. The
        // thread's FS base and selectors stay: handlers run on the faulting thread, with its
        // thread pointer (host-abi §10.2).
        FpuImage::load_initial();
        call_clock::lap(Stage::Fpu);
        Ok(())
    }

    /// The frame `e` is delivered with: the register image, `context` and the GUEST_EXCEPTION
    /// record pointing at it, written as [`write_frame`](Self::write_frame) says.
    fn write_exception_frame(&self, context: &UserContext, e: &GuestException) -> Result<Frame, FrameError> {
        let frame = Frame::below(context.rsp, EXCEPTION_RECORD_SIZE)?;
        let mut record = [0u8; EXCEPTION_RECORD_SIZE as usize];
        record[0..4].copy_from_slice(&e.code.to_le_bytes());
        record[8..16].copy_from_slice(&e.access.to_le_bytes());
        record[16..24].copy_from_slice(&e.address.to_le_bytes());
        record[24..32].copy_from_slice(&frame.context_at.to_le_bytes());
        self.write_frame(&frame, context, &record)?;
        Ok(frame)
    }

    /// Writes `frame` (laid out by [`Frame::below`]): the register image of this CPU's
    /// x87/SSE/AVX registers (the guest's), `context` and, at `frame.low`, `payload`, a page at
    /// a time from the top down, as pushes would touch the stack (so that it grows through its
    /// guard page). Reaching the end of the stack while writing the image or the context is
    /// [`FrameError::StackOverflow`]; any failure in the payload is [`FrameError::NoRoom`].
    ///
    /// With the guest's space in this CPU's CR3 (always, when a thread's exit is served) the
    /// pieces go in one hardware-checked copy ([`probe::copy_to_user`]): a store to a page the
    /// memory manager refuses fails as `AddressSpace::write_user`'s check would (a guard page
    /// has its guard cleared), with no lock and no page-table walk per piece. An image within
    /// one page (most are: 832 bytes, 64-byte aligned) is saved by the CPU straight into the
    /// frame ([`save_fpu_to_user`], as Linux writes a signal frame's): one pass over it instead
    /// of a save into a kernel buffer and a copy of that. Across two pages it takes the buffer,
    /// so that the top page is written first.
    pub(super) fn write_frame(&self, frame: &Frame, context: &UserContext, payload: &[u8]) -> Result<(), FrameError> {
        let context_bytes = context_to_bytes(context);
        let size = fpu_image_size() as u64;
        if self.space.is_active() && within_one_page(frame.fpu_at, size) {
            let at = frame.fpu_at;
            self.copy_frame(|_| save_fpu_to_user(at).map_err(|fault| (0, fault)), |_| (at, size), |_, e| e)?;
            call_clock::lap(Stage::Fpu);
            return self.write_frame_parts(&[(frame.context_at, &context_bytes), (frame.low, payload)]);
        }
        with_saved_fpu(|fpu| {
            call_clock::lap(Stage::Fpu);
            self.write_frame_parts(&[(frame.fpu_at, &fpu.bytes[..size as usize]), (frame.context_at, &context_bytes), (frame.low, payload)])
        })
    }

    /// Writes the `parts` of a frame, `(guest address, bytes)` from the top down, the last the
    /// payload, as [`write_frame`](Self::write_frame) says.
    fn write_frame_parts(&self, parts: &[(u64, &[u8])]) -> Result<(), FrameError> {
        // Each part split at page boundaries, the top piece first: at most two pieces a part.
        let mut pieces = [UserCopy { to: 0, data: &[] }; 6];
        let mut part_of = [0usize; 6];
        let mut n = 0;
        for (k, &(addr, data)) in parts.iter().enumerate() {
            let end = addr.checked_add(data.len() as u64).ok_or(FrameError::NoRoom)?;
            let mut top = end;
            while top > addr {
                let start = align_down(top.wrapping_sub(1), PAGE_SIZE).max(addr);
                pieces[n] = UserCopy { to: start, data: &data[(start - addr) as usize..(top - addr) as usize] };
                part_of[n] = k;
                n += 1;
                top = start;
            }
        }
        // A failure in the payload is no overflow: the frame above it was written.
        let fail = |i: usize, e: FrameError| if part_of[i] == parts.len() - 1 { FrameError::NoRoom } else { e };
        if !self.space.is_active() {
            for (i, p) in pieces[..n].iter().enumerate() {
                self.write_stack_page(p.to, p.data).map_err(|e| fail(i, e))?;
            }
            return Ok(());
        }
        let pieces = &pieces[..n];
        let copied = self.copy_frame(
            |from| probe::copy_to_user(&pieces[from..]).map_err(|(j, fault)| (from + j, fault)),
            |i| (pieces[i].to, pieces[i].data.len() as u64),
            fail,
        );
        call_clock::lap(Stage::Frame);
        copied
    }

    /// Makes the hardware-checked writes of a frame's pieces: `copy(from)` writes pieces `from..`
    /// in order and returns the one that failed and its fault; piece `i` covers `range(i)`
    /// (guest address, length). A guard page of the stack grows it once and the piece is written
    /// again (the stack's end: [`FrameError::StackOverflow`]); anything else, or a second failure
    /// of the piece, ends the write with [`FrameError::NoRoom`]. `fail` turns the error of piece
    /// `i` into the frame's.
    fn copy_frame(
        &self,
        mut copy: impl FnMut(usize) -> Result<(), (usize, probe::FaultRecord)>,
        range: impl Fn(usize) -> (u64, u64),
        fail: impl Fn(usize, FrameError) -> FrameError,
    ) -> Result<(), FrameError> {
        let mut from = 0;
        let mut grown_at = None;
        loop {
            let Err((i, fault)) = copy(from) else { return Ok(()) };
            let guard = fault.memory.is_some_and(|m| m.code == probe::MemoryFault::GUARD_PAGE);
            // As `write_stack_page`: a guard page of the stack grows it once and the piece is
            // written again; anything else, or a second failure of the piece, ends the write.
            if !guard || grown_at == Some(i) {
                return Err(fail(i, FrameError::NoRoom));
            }
            let (at, len) = range(i);
            let page = self.stack_bottom_in(at, len).ok_or(fail(i, FrameError::NoRoom))?;
            if self.grow_stack(page) == StackGrowth::Overflow {
                return Err(fail(i, FrameError::StackOverflow { address: at }));
            }
            grown_at = Some(i);
            from = i;
        }
    }

    /// Writes `data`, within one page, growing the stack if that page is its guard page.
    fn write_stack_page(&self, addr: u64, data: &[u8]) -> Result<(), FrameError> {
        match self.space.with(|s, cx| s.write_user(cx, addr, data)) {
            Ok(()) => Ok(()),
            Err(address_space::VmError::GuardPage) => {
                // The check cleared the guard of this page: it is committed and writable now.
                let page = self.stack_bottom_in(addr, data.len() as u64).ok_or(FrameError::NoRoom)?;
                if self.grow_stack(page) == StackGrowth::Overflow {
                    return Err(FrameError::StackOverflow { address: addr });
                }
                self.space.with(|s, cx| s.write_user(cx, addr, data)).map_err(|_| FrameError::NoRoom)
            }
            Err(_) => Err(FrameError::NoRoom),
        }
    }

    /// `continue`'s restore: reads the GUEST_CONTEXT at `context_at` and the register image at
    /// `fpu_at` (as the guest's own loads would, the thread's stack growing), loads the image
    /// made loadable and replaces `context` with the one read, RFLAGS sanitised. `false` if
    /// either is unreadable: `context` is then unchanged (the registers may be partly loaded;
    /// every caller ends the guest). Needs nothing of the guest but its memory, so the scheduler
    /// runs it without the guest's lock.
    ///
    /// With the space in CR3, an image within one page that is loadable as it stands (the one
    /// the kernel wrote, whatever the handlers did to the registers it holds) is loaded by the
    /// CPU straight from the frame ([`load_fpu_from_user`]); one it refuses, or one not in the
    /// standard form, is copied and made loadable, as every image is otherwise.
    pub(super) fn restore(&self, context: &mut UserContext, context_at: u64, fpu_at: u64) -> bool {
        let mut bytes = [0u8; USER_CONTEXT_SIZE];
        let Some(mut context_read) = split_pages(context_at, &mut bytes) else { return false };
        if self.read_all(&mut context_read).is_err() {
            return false;
        }
        call_clock::lap(Stage::Frame);
        if !self.load_image_as_is(fpu_at).unwrap_or_else(|| self.load_image_copied(fpu_at)) {
            return false;
        }
        call_clock::lap(Stage::Fpu);
        let mut resumed = context_from_bytes(&bytes);
        resumed.rflags = sanitize_rflags(resumed.rflags);
        *context = resumed;
        true
    }

    /// Loads the register image at `fpu_at` by the CPU straight from guest memory, as the
    /// guest's loads would read it (the stack growing): `Some(true)` when loaded, `Some(false)`
    /// when a page of it is unreadable; `None` when it is to be
    /// [copied and made loadable](Self::load_image_copied) instead: the space not in CR3, the
    /// image across two pages, not in the standard form, refused by the CPU or not in user space.
    fn load_image_as_is(&self, fpu_at: u64) -> Option<bool> {
        let size = fpu_image_size() as u64;
        if !self.space.is_active() || !within_one_page(fpu_at, size) {
            return None;
        }
        let mut as_is = false;
        let mut load = || match load_fpu_from_user(fpu_at) {
            Ok(loaded) => {
                as_is = loaded;
                Ok(())
            }
            Err(fault) if fault.vector != 14 => Ok(()),
            Err(fault) => Err((0, fault)),
        };
        if self.copy_growing_stack(&mut load, |_| (fpu_at, size)).is_err() {
            return Some(false);
        }
        as_is.then_some(true)
    }

    /// Reads the register image at `fpu_at` into this CPU's scratch image and loads it made
    /// loadable; `false` if it is unreadable.
    fn load_image_copied(&self, fpu_at: u64) -> bool {
        with_fpu_scratch(|fpu| {
            let read = match split_pages(fpu_at, &mut fpu.bytes[..fpu_image_size()]) {
                Some(mut pieces) => self.read_all(&mut pieces),
                None => Err(address_space::VmError::NoAccess),
            };
            if read.is_err() {
                return false;
            }
            fpu.load_sanitised();
            true
        })
    }

    /// A page fault from ring 3: `None` when resolved (retry), else the exception to raise.
    pub(super) fn page_fault(&self, addr: u64, error_code: u64) -> Option<GuestException> {
        let access = crate::memory::fault_access(error_code);
        let outcome = self.space.handle_fault(addr, access);
        let e = |code| Some(GuestException { code, access: access.code(), address: addr });
        match outcome {
            FaultOutcome::Resolved => None,
            FaultOutcome::GuardPage { .. } if (self.stack.0..self.stack.1).contains(&addr) => match self.grow_stack(align_down(addr, PAGE_SIZE)) {
                StackGrowth::Grown => None,
                StackGrowth::Overflow => e(status::STACK_OVERFLOW),
            },
            FaultOutcome::GuardPage { .. } => e(status::GUARD_PAGE_VIOLATION),
            FaultOutcome::AccessViolation { .. } => e(status::ACCESS_VIOLATION),
        }
    }

    /// The guard page at `page` of the guest's stack was touched (its guard is gone): commits the
    /// page below as the new guard, or, when that would leave fewer than three pages of the
    /// reservation below the guard, commits the remaining pages but the lowest for the exception
    /// handlers and reports the overflow (host-abi §10.3). No commit left for the new guard is an
    /// overflow too (as on Windows), with no pages added.
    pub(super) fn grow_stack(&self, page: u64) -> StackGrowth {
        let growth = self.commit_stack_below(page);
        // After the commit, so that a band check that misses it sees the epoch move.
        super::notification::note_commit_change();
        growth
    }

    fn commit_stack_below(&self, page: u64) -> StackGrowth {
        let (low, _) = self.stack;
        let below = page.wrapping_sub(PAGE_SIZE);
        let level = address_space::CriticalLevel::Process;
        if page >= low + 4 * PAGE_SIZE
            && self.space.with(|s, cx| s.virtual_alloc(cx, below, PAGE_SIZE, MEM_COMMIT, PAGE_READWRITE | PAGE_GUARD, level)).is_ok()
        {
            return StackGrowth::Grown;
        }
        let cushion = low + PAGE_SIZE;
        if page > cushion && page < low + 4 * PAGE_SIZE {
            // Best effort: without commit the handlers find no room and the guest ends with the code.
            let _ = self.space.with(|s, cx| s.virtual_alloc(cx, cushion, page - cushion, MEM_COMMIT, PAGE_READWRITE, level));
        }
        StackGrowth::Overflow
    }
}

/// `buf` as the two pieces of a read from `addr` on either side of the first page boundary in
/// it (the second empty if there is none): pieces of a hardware-checked copy are kept within a
/// page. `None` if the range wraps around.
fn split_pages(addr: u64, buf: &mut [u8]) -> Option<[UserRead<'_>; 2]> {
    let end = addr.checked_add(buf.len() as u64)?;
    let boundary = align_down(addr, PAGE_SIZE).checked_add(PAGE_SIZE).map_or(end, |b| b.min(end));
    let (low, high) = buf.split_at_mut((boundary - addr) as usize);
    Some([UserRead { from: addr, buf: low }, UserRead { from: boundary, buf: high }])
}

fn simple(code: u32) -> GuestException {
    GuestException { code, access: 0, address: 0 }
}

/// The NTSTATUS of a #MF (vector 16) or #XM (19) from the unmasked exceptions pending in the x87
/// status word (`fsw` against the control word `fcw`) or in `mxcsr`, in the order Windows and
/// Linux test them (host-abi §10.1).
pub fn float_status(vector: u8, fcw: u16, fsw: u16, mxcsr: u32) -> u32 {
    let pending = if vector == 16 { fsw as u32 & !(fcw as u32) } else { mxcsr & !(mxcsr >> 7) } & 0x3F;
    // IE 0x01, DE 0x02, ZE 0x04, OE 0x08, UE 0x10, PE 0x20.
    if pending & 0x01 != 0 {
        status::FLOAT_INVALID_OPERATION
    } else if pending & 0x04 != 0 {
        status::FLOAT_DIVIDE_BY_ZERO
    } else if pending & 0x02 != 0 {
        status::FLOAT_DENORMAL_OPERAND
    } else if pending & 0x08 != 0 {
        status::FLOAT_OVERFLOW
    } else if pending & 0x10 != 0 {
        status::FLOAT_UNDERFLOW
    } else if pending & 0x20 != 0 {
        status::FLOAT_INEXACT_RESULT
    } else {
        status::FLOAT_MULTIPLE_TRAPS
    }
}
