//! CPU exceptions of a guest, as Windows would report them (host-abi §8).
//!
//! A page fault goes to the address space first: demand-zero and kept frames resolve silently; a
//! guard page on the guest's own stack grows the stack (the next page down becomes the guard) or,
//! at the end of the reservation, raises STATUS_STACK_OVERFLOW; any other guard page raises
//! STATUS_GUARD_PAGE_VIOLATION once; everything else is an access violation with the access kind.
//! Other vectors map to their NTSTATUS; a #GP is decoded (privileged instruction, `int n` on a
//! kernel gate, `sysenter`, or a non-canonical access).
//!
//! Raising an exception writes a `GUEST_CONTEXT` and a `GUEST_EXCEPTION` below the faulting
//! `rsp - 128` and calls the vectored handlers in ring 3 in order, each as a function
//! `int32_t handler(GUEST_EXCEPTION *)` entered as at a call with DF clear. A handler returning
//! EXCEPTION_CONTINUE_EXECUTION (-1) resumes with the (possibly edited) context read back from
//! guest memory, with RFLAGS sanitised; the x87/SSE/AVX state of the faulting code is restored
//! whatever the handler did to it. No handler, a handler that faults, or a frame that cannot be
//! written (unusable `rsp`) ends the guest with the exception's code.

use address_space::FaultOutcome;
use address_space::win32::*;

use super::host_pages::{Stub, stub};
use super::{Ended, Guest, PAGE};
use crate::arch::user::{FpuState, UserContext, sanitize_rflags};

/// NTSTATUS codes (host-abi §8, §9).
pub mod status {
    pub const ACCESS_VIOLATION: u32 = 0xC000_0005;
    pub const GUARD_PAGE_VIOLATION: u32 = 0x8000_0001;
    pub const STACK_OVERFLOW: u32 = 0xC000_00FD;
    pub const ILLEGAL_INSTRUCTION: u32 = 0xC000_001D;
    pub const PRIVILEGED_INSTRUCTION: u32 = 0xC000_0096;
    pub const INTEGER_DIVIDE_BY_ZERO: u32 = 0xC000_0094;
    pub const INTEGER_OVERFLOW: u32 = 0xC000_0095;
    pub const ARRAY_BOUNDS_EXCEEDED: u32 = 0xC000_008C;
    pub const BREAKPOINT: u32 = 0x8000_0003;
    pub const SINGLE_STEP: u32 = 0x8000_0004;
    pub const DATATYPE_MISALIGNMENT: u32 = 0x8000_0002;
    pub const FLOAT_MULTIPLE_FAULTS: u32 = 0xC000_02B4;
    pub const FLOAT_MULTIPLE_TRAPS: u32 = 0xC000_02B5;
}

/// EXCEPTION_CONTINUE_EXECUTION.
const CONTINUE_EXECUTION: i32 = -1;
/// Size of GUEST_EXCEPTION.
const EXCEPTION_RECORD_SIZE: u64 = 40;
/// The red zone below a faulting `rsp` that exception delivery leaves alone.
const RED_ZONE: u64 = 128;
const ALL_ONES: u64 = u64::MAX;

/// One exception to deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestException {
    /// NTSTATUS.
    pub code: u32,
    /// 0 read, 1 write, 8 execute (memory exceptions), else 0.
    pub access: u64,
    /// Faulting data address, rip for execute and breakpoint, else 0.
    pub address: u64,
}

impl Guest {
    /// Handles CPU exception `vector` of the guest running `context`: resolves it or raises it.
    pub(super) fn exception(&mut self, context: &mut UserContext, vector: u8, error_code: u64, cr2: u64) -> Result<(), Ended> {
        let e = match vector {
            14 => match self.page_fault(cr2, error_code)? {
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
            12 => GuestException { code: status::ACCESS_VIOLATION, access: 0, address: ALL_ONES },
            16 => simple(status::FLOAT_MULTIPLE_FAULTS),
            17 => simple(status::DATATYPE_MISALIGNMENT),
            19 => simple(status::FLOAT_MULTIPLE_TRAPS),
            _ => simple(status::ILLEGAL_INSTRUCTION),
        };
        self.raise(context, e)
    }

    /// A page fault from ring 3: `Ok(None)` when resolved (retry), else the exception to raise.
    fn page_fault(&mut self, addr: u64, error_code: u64) -> Result<Option<GuestException>, Ended> {
        let access = crate::memory::fault_access(error_code);
        let outcome = self.space.with(|s, cx| s.handle_fault(cx, addr, access));
        let e = |code| Some(GuestException { code, access: access.code(), address: addr });
        Ok(match outcome {
            FaultOutcome::Resolved => None,
            FaultOutcome::GuardPage { .. } if (self.stack.0..self.stack.1).contains(&addr) => {
                if self.grow_stack(addr & !(PAGE - 1)) { None } else { e(status::STACK_OVERFLOW) }
            }
            FaultOutcome::GuardPage { .. } => e(status::GUARD_PAGE_VIOLATION),
            FaultOutcome::AccessViolation { .. } => e(status::ACCESS_VIOLATION),
        })
    }

    /// The guard page at `page` of the guest's stack was touched (its guard is gone): commit the
    /// page below as the new guard. False when there is no room left (the last page of the
    /// reservation is never committed, as the "hard" end) or no commit.
    pub(super) fn grow_stack(&self, page: u64) -> bool {
        let below = page.wrapping_sub(PAGE);
        if below <= self.stack.0 {
            return false;
        }
        self.space
            .with(|s, cx| {
                s.virtual_alloc(cx, below, PAGE, MEM_COMMIT, PAGE_READWRITE | PAGE_GUARD, address_space::CriticalLevel::Process)
            })
            .is_ok()
    }

    /// A #GP from ring 3, decoded: `None` when handled without an exception (`sysenter`).
    fn general_protection(&mut self, context: &mut UserContext, error_code: u64) -> Option<GuestException> {
        if error_code & 0b10 != 0 {
            // `int n` through a gate guests may not use.
            return Some(simple(status::ACCESS_VIOLATION));
        }
        let mut bytes = [0u8; 16];
        let mut n = 0;
        while n < bytes.len() && self.read_bytes(context.rip + n as u64, &mut bytes[n..n + 1]).is_ok() {
            n += 1;
        }
        let code = &bytes[..n];
        let mut i = 0;
        while i < code.len() && matches!(code[i], 0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 | 0x66 | 0x67 | 0xf0 | 0xf2 | 0xf3 | 0x40..=0x4f) {
            i += 1;
        }
        let op = code.get(i).copied();
        let op2 = code.get(i + 1).copied();
        // hlt, cli, sti, in/out/ins/outs; and 0F-prefixed system instructions (lldt/ltr, lgdt/lidt…,
        // clts, sysret, invd, wbinvd, mov to/from CR/DR, wrmsr, rdmsr, rdpmc, sysexit).
        let privileged = matches!(
            (op, op2),
            (Some(0xf4 | 0xfa | 0xfb | 0xe4..=0xe7 | 0xec..=0xef | 0x6c..=0x6f), _)
                | (Some(0x0f), Some(0x00 | 0x01 | 0x06 | 0x07 | 0x08 | 0x09 | 0x20..=0x23 | 0x30 | 0x32 | 0x33 | 0x35))
        );
        if op == Some(0x0f) && op2 == Some(0x34) {
            // sysenter: not how the host is called; fails cleanly and the guest continues.
            context.rax = super::hresult::E_NOTIMPL as u64;
            context.rip += i as u64 + 2;
            return None;
        }
        if privileged {
            Some(simple(status::PRIVILEGED_INSTRUCTION))
        } else {
            // A non-canonical address (the usual #GP(0) of user code).
            Some(GuestException { code: status::ACCESS_VIOLATION, access: 0, address: ALL_ONES })
        }
    }

    /// Delivers `e` to the vectored handlers (see the module docs).
    pub(super) fn raise(&mut self, context: &mut UserContext, e: GuestException) -> Result<(), Ended> {
        if self.upcall_depth > 0 {
            // A fault inside a handler or callback ends the guest with that fault's code.
            return Err(self.unhandled(context, e, "inside a handler"));
        }
        if self.handlers.is_empty() {
            return Err(self.unhandled(context, e, "no handler"));
        }
        let fpu = FpuState::save();
        let context_at = (context.rsp.wrapping_sub(RED_ZONE).wrapping_sub(UserContext::SIZE as u64)) & !15;
        let record_at = (context_at.wrapping_sub(EXCEPTION_RECORD_SIZE)) & !15;
        let entry_rsp = record_at.wrapping_sub(8);
        let mut record = [0u8; EXCEPTION_RECORD_SIZE as usize];
        record[0..4].copy_from_slice(&e.code.to_le_bytes());
        record[8..16].copy_from_slice(&e.access.to_le_bytes());
        record[16..24].copy_from_slice(&e.address.to_le_bytes());
        record[24..32].copy_from_slice(&context_at.to_le_bytes());
        let written = self
            .write_bytes(context_at, &context.to_bytes())
            .and_then(|_| self.write_bytes(record_at, &record))
            .and_then(|_| self.write_bytes(entry_rsp, &stub(Stub::UpcallReturn).to_le_bytes()));
        if written.is_err() {
            return Err(self.unhandled(context, e, "the exception frame cannot be written below rsp"));
        }
        for handler in self.handlers.clone() {
            let result = self.upcall(handler.function, record_at, entry_rsp)? as u32 as i32;
            if result == CONTINUE_EXECUTION {
                let mut bytes = [0u8; UserContext::SIZE];
                if self.read_bytes(context_at, &mut bytes).is_err() {
                    return Err(self.unhandled(context, e, "the handler's context cannot be read back"));
                }
                let mut resumed = UserContext::from_bytes(&bytes);
                resumed.rflags = sanitize_rflags(resumed.rflags);
                fpu.restore();
                *context = resumed;
                let max = self.space.with(|s, _| s.config().max_application_address());
                if context.rip > max {
                    // Resuming there would fetch outside user space: an execute violation.
                    let address = context.rip;
                    return self.raise(context, GuestException { code: status::ACCESS_VIOLATION, access: 8, address });
                }
                return Ok(());
            }
        }
        fpu.restore();
        Err(self.unhandled(context, e, "no handler took it"))
    }

    /// Prints the report of an exception that ends the guest and returns its exit code.
    fn unhandled(&self, context: &UserContext, e: GuestException, why: &str) -> Ended {
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
            crate::kprintln!("guest {}: unhandled exception {:#010x} ({why}) at rip {:#x}", self.name, e.code, context.rip);
        }
        e.code as i32
    }
}

fn simple(code: u32) -> GuestException {
    GuestException { code, access: 0, address: 0 }
}
