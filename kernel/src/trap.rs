//! Traps: the IDT and the policy of every exception and interrupt the kernel takes in ring 0.
//!
//! This module sits above both `arch` (the entry stubs, probes, APIC) and `memory` (the page-fault
//! policy, kernel stacks), so that neither imports the other's floor upwards: `arch` is the ground
//! floor and knows nothing of memory policy. Ring-3 exceptions do not come here: the stubs of
//! `arch::user` return them to the guest's run loop (`crate::guest`).
//!
//! Each handler first offers the fault to [`crate::arch::probe`] (a fault a test or a host call expected
//! is recorded and resumed). Anything else is a kernel bug: the handler prints a report (exception
//! name and vector, error code decoded, CR2 for page faults, RIP, RSP, CS, RFLAGS) and stops QEMU
//! with the failure code — never a triple fault. Double faults and NMIs run on IST stacks of their
//! own (see [`crate::arch::gdt`]), so even a kernel stack overflow is reported.

use spin::Once;
use x86_64::registers::control::Cr2;
use x86_64::structures::idt::{InterruptDescriptorTable, InterruptStackFrame, PageFaultErrorCode};

use crate::arch::gdt::{DOUBLE_FAULT_IST_INDEX, NMI_IST_INDEX};
use crate::arch::{apic, probe, user};

static IDT: Once<InterruptDescriptorTable> = Once::new();

/// Builds and loads the IDT. Idempotent.
pub fn init() {
    let idt = IDT.call_once(|| {
        let mut idt = InterruptDescriptorTable::new();
        idt.divide_error.set_handler_fn(divide_error);
        idt.debug.set_handler_fn(debug);
        idt.breakpoint.set_handler_fn(breakpoint);
        idt.overflow.set_handler_fn(overflow);
        idt.bound_range_exceeded.set_handler_fn(bound_range_exceeded);
        idt.invalid_opcode.set_handler_fn(invalid_opcode);
        idt.device_not_available.set_handler_fn(device_not_available);
        idt.invalid_tss.set_handler_fn(invalid_tss);
        idt.segment_not_present.set_handler_fn(segment_not_present);
        idt.stack_segment_fault.set_handler_fn(stack_segment_fault);
        idt.general_protection_fault.set_handler_fn(general_protection_fault);
        idt.page_fault.set_handler_fn(page_fault);
        idt.x87_floating_point.set_handler_fn(x87_floating_point);
        idt.alignment_check.set_handler_fn(alignment_check);
        idt.simd_floating_point.set_handler_fn(simd_floating_point);
        idt.virtualization.set_handler_fn(virtualization);
        idt.cp_protection_exception.set_handler_fn(cp_protection);
        idt.hv_injection_exception.set_handler_fn(hv_injection);
        idt.vmm_communication_exception.set_handler_fn(vmm_communication);
        idt.security_exception.set_handler_fn(security);
        // SAFETY: the IST indices name stacks that gdt::init installed in the TSS before this runs;
        // they are used by nothing else.
        unsafe {
            idt.double_fault.set_handler_fn(double_fault).set_stack_index(DOUBLE_FAULT_IST_INDEX);
            idt.non_maskable_interrupt.set_handler_fn(nmi).set_stack_index(NMI_IST_INDEX);
            idt.machine_check.set_handler_fn(machine_check).set_stack_index(NMI_IST_INDEX);
        }
        // The spurious vector needs no acknowledgement and touches nothing (not even GS, which
        // is the guest's when it interrupts ring 3), so one plain handler serves both rings.
        idt[apic::SPURIOUS_VECTOR].set_handler_fn(spurious_interrupt);
        // So does the TLB shootdown IPI's handler (no GS, no lock; memory::tlb).
        idt[apic::SHOOTDOWN_VECTOR].set_handler_fn(crate::memory::tlb::shootdown_interrupt);
        // Vectors ring 3 can raise enter through the stubs of `crate::arch::user`, which send kernel-mode
        // exceptions on to the handlers above (exported as `kexc_*`) and user-mode ones to the
        // guest's run loop. int3 and into may be executed by guests (DPL 3); every other gate is
        // DPL 0, so `int n` on it from ring 3 is a #GP.
        for (vector, stub) in user::vector_stubs() {
            let addr = x86_64::VirtAddr::new(stub);
            // SAFETY: each stub is an interrupt entry point written for exactly this vector's
            // stack layout (with or without an error code).
            let options = unsafe {
                match vector {
                    0 => idt.divide_error.set_handler_addr(addr),
                    1 => idt.debug.set_handler_addr(addr),
                    3 => idt.breakpoint.set_handler_addr(addr),
                    4 => idt.overflow.set_handler_addr(addr),
                    5 => idt.bound_range_exceeded.set_handler_addr(addr),
                    6 => idt.invalid_opcode.set_handler_addr(addr),
                    7 => idt.device_not_available.set_handler_addr(addr),
                    10 => idt.invalid_tss.set_handler_addr(addr),
                    11 => idt.segment_not_present.set_handler_addr(addr),
                    12 => idt.stack_segment_fault.set_handler_addr(addr),
                    13 => idt.general_protection_fault.set_handler_addr(addr),
                    14 => idt.page_fault.set_handler_addr(addr),
                    16 => idt.x87_floating_point.set_handler_addr(addr),
                    17 => idt.alignment_check.set_handler_addr(addr),
                    19 => idt.simd_floating_point.set_handler_addr(addr),
                    20 => idt.virtualization.set_handler_addr(addr),
                    21 => idt.cp_protection_exception.set_handler_addr(addr),
                    apic::TIMER_VECTOR | apic::WAKE_VECTOR => idt[vector].set_handler_addr(addr),
                    _ => unreachable!("user::vector_stubs lists only the vectors above"),
                }
            };
            if vector == 3 || vector == 4 {
                options.set_privilege_level(x86_64::PrivilegeLevel::Ring3);
            }
        }
        idt
    });
    idt.load();
}

/// Prints the report of an unexpected exception and stops the machine with failure.
///
/// Uses no heap and no blocking lock: the fault may have hit inside either.
fn fatal(name: &str, vector: u8, error_code: Option<u64>, memory: Option<probe::MemoryFault>, frame: &InterruptStackFrame) -> ! {
    let cr2 = if vector == 14 { Cr2::read_raw() } else { 0 };
    crate::testing::fatal(&|| {
        crate::emergency_println!("EXCEPTION: {name} (vector {vector})");
        match error_code {
            Some(code) if vector == 14 => {
                crate::emergency_println!("    error code {code:#x} ({}), cr2={cr2:#x}", describe_pf(code))
            }
            Some(code) => crate::emergency_println!("    error code {code:#x}"),
            None => {}
        }
        crate::emergency_println!(
            "    rip={:#x} rsp={:#x} cs={:#x} rflags={:#x}",
            frame.instruction_pointer.as_u64(),
            frame.stack_pointer.as_u64(),
            frame.code_segment.0,
            frame.cpu_flags.bits()
        );
        if let Some(m) = memory {
            let what = if m.code == probe::MemoryFault::GUARD_PAGE { "guard-page violation" } else { "access violation" };
            let access = match m.access {
                1 => "write",
                8 => "execute",
                _ => "read",
            };
            crate::emergency_println!("    address space: {what} ({:#x}), {access} at {:#x}", m.code, m.address);
        }
        if vector == 8 {
            crate::emergency_println!("    (a double fault: a kernel stack overflow, or a fault while delivering a fault)");
        }
        if vector == 14 && crate::memory::kstack::is_guard(cr2) {
            crate::emergency_println!("    (the guard page of a guest's kernel stack: a kernel stack overflow)");
        }
    })
}

fn describe_pf(code: u64) -> &'static str {
    use probe::pf::*;
    let present = code & PRESENT != 0;
    match (code & INSTRUCTION != 0, code & WRITE != 0, present) {
        (true, _, true) => "instruction fetch, protection violation",
        (true, _, false) => "instruction fetch, page not present",
        (false, true, true) => "write, protection violation",
        (false, true, false) => "write, page not present",
        (false, false, true) => "read, protection violation",
        (false, false, false) => "read, page not present",
    }
}

fn handle(name: &str, vector: u8, error_code: Option<u64>, frame: &mut InterruptStackFrame) {
    let cr2 = if vector == 14 { Cr2::read_raw() } else { 0 };
    if probe::try_recover(vector, error_code.unwrap_or(0), cr2, None, frame) {
        return;
    }
    fatal(name, vector, error_code, None, frame)
}

macro_rules! exception {
    ($fn:ident, $name:literal, $vector:literal) => {
        #[unsafe(export_name = concat!("kexc_", stringify!($fn)))]
        extern "x86-interrupt" fn $fn(mut frame: InterruptStackFrame) {
            handle($name, $vector, None, &mut frame)
        }
    };
    ($fn:ident, $name:literal, $vector:literal, error) => {
        #[unsafe(export_name = concat!("kexc_", stringify!($fn)))]
        extern "x86-interrupt" fn $fn(mut frame: InterruptStackFrame, error_code: u64) {
            handle($name, $vector, Some(error_code), &mut frame)
        }
    };
}

exception!(divide_error, "DIVIDE ERROR", 0);
exception!(debug, "DEBUG", 1);
exception!(nmi, "NON-MASKABLE INTERRUPT", 2);
exception!(breakpoint, "BREAKPOINT", 3);
exception!(overflow, "OVERFLOW", 4);
exception!(bound_range_exceeded, "BOUND RANGE EXCEEDED", 5);
exception!(invalid_opcode, "INVALID OPCODE", 6);
exception!(device_not_available, "DEVICE NOT AVAILABLE", 7);
exception!(invalid_tss, "INVALID TSS", 10, error);
exception!(segment_not_present, "SEGMENT NOT PRESENT", 11, error);
exception!(stack_segment_fault, "STACK-SEGMENT FAULT", 12, error);
exception!(general_protection_fault, "GENERAL PROTECTION FAULT", 13, error);
exception!(x87_floating_point, "x87 FLOATING-POINT EXCEPTION", 16);
exception!(alignment_check, "ALIGNMENT CHECK", 17, error);
exception!(simd_floating_point, "SIMD FLOATING-POINT EXCEPTION", 19);
exception!(virtualization, "VIRTUALIZATION EXCEPTION", 20);
exception!(cp_protection, "CONTROL PROTECTION EXCEPTION", 21, error);
exception!(hv_injection, "HYPERVISOR INJECTION EXCEPTION", 28);
exception!(vmm_communication, "VMM COMMUNICATION EXCEPTION", 29, error);
exception!(security, "SECURITY EXCEPTION", 30, error);

/// Page faults go to the memory manager first: a fault on guest memory that it resolves
/// (demand-zero, a kept frame) simply retries; one it refuses (guard page, access violation) is
/// offered to the probes with that verdict, and is otherwise fatal with the verdict in the report.
#[unsafe(export_name = "kexc_page_fault")]
extern "x86-interrupt" fn page_fault(mut frame: InterruptStackFrame, error_code: PageFaultErrorCode) {
    let cr2 = Cr2::read_raw();
    let code = error_code.bits();
    let memory = match crate::memory::on_page_fault(cr2, code, frame.cpu_flags.bits()) {
        crate::memory::PageFaultVerdict::Resolved => return,
        crate::memory::PageFaultVerdict::Refused(m) => Some(m),
        crate::memory::PageFaultVerdict::NotGuestMemory => None,
    };
    if probe::try_recover(14, code, cr2, memory, &mut frame) {
        return;
    }
    fatal("PAGE FAULT", 14, Some(code), memory, &frame)
}

/// Interrupts from the local APIC in ring 0 (an idle CPU; ring-3 ones go to the guest's run loop
/// through `crate::arch::user`'s stubs): count, acknowledge, return.
macro_rules! apic_interrupt {
    ($fn:ident, $vector:expr) => {
        #[unsafe(export_name = concat!("kexc_", stringify!($fn)))]
        extern "x86-interrupt" fn $fn(_frame: InterruptStackFrame) {
            apic::on_interrupt($vector)
        }
    };
}

apic_interrupt!(apic_timer, apic::TIMER_VECTOR);
apic_interrupt!(apic_wake, apic::WAKE_VECTOR);

extern "x86-interrupt" fn spurious_interrupt(_frame: InterruptStackFrame) {}

extern "x86-interrupt" fn double_fault(frame: InterruptStackFrame, error_code: u64) -> ! {
    fatal("DOUBLE FAULT", 8, Some(error_code), None, &frame)
}

extern "x86-interrupt" fn machine_check(frame: InterruptStackFrame) -> ! {
    fatal("MACHINE CHECK", 18, None, None, &frame)
}
