//! The foundation in QEMU: heap, memory map, and CPU faults that are caught, checked and resumed.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::{string::String, vec::Vec};

use kernel::arch::probe::{self, pf};
use qemu_tests::{ensure, ensure_eq};

/// An address in the lower half that nothing maps (the bootloader puts the kernel, stacks, boot
/// info and the physical-memory window far above it).
const UNMAPPED: u64 = 0x0000_5a5a_0000_0000;

fn heap_allocates_several_mib() -> Result<(), String> {
    let (used_before, _) = kernel::heap::usage();
    let len = 6 * 1024 * 1024;
    let mut big: Vec<u8> = Vec::with_capacity(len);
    for i in 0..len {
        big.push((i % 251) as u8);
    }
    ensure!(big.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8), "pattern survives");
    let small: Vec<Vec<u64>> = (0..2000).map(|i| alloc::vec![i; 16]).collect();
    ensure!(small.iter().enumerate().all(|(i, v)| v.iter().all(|&x| x == i as u64)));
    let (used_during, _) = kernel::heap::usage();
    ensure!(used_during >= used_before + len, "heap usage grew by at least 6 MiB");
    drop(big);
    drop(small);
    ensure_eq!(kernel::heap::usage().0, used_before);
    Ok(())
}

fn read_of_unmapped_page_faults_and_resumes() -> Result<(), String> {
    // SAFETY: UNMAPPED is not mapped, so the read has no side effect; it faults and is caught.
    let fault = unsafe { probe::read_u8(UNMAPPED) }.err().ok_or("read of an unmapped page succeeded")?;
    ensure_eq!(fault.vector, 14);
    ensure_eq!(fault.cr2, UNMAPPED);
    ensure_eq!(fault.error_code & (pf::PRESENT | pf::WRITE | pf::USER | pf::INSTRUCTION), 0);
    Ok(())
}

fn write_to_unmapped_page_faults_with_write_bit() -> Result<(), String> {
    let addr = UNMAPPED + 0x1234;
    // SAFETY: the page is not mapped, so nothing is written; the fault is caught.
    let fault = unsafe { probe::write_u8(addr, 0xAA) }.err().ok_or("write to an unmapped page succeeded")?;
    ensure_eq!(fault.vector, 14);
    ensure_eq!(fault.cr2, addr);
    ensure_eq!(fault.error_code & (pf::PRESENT | pf::WRITE | pf::INSTRUCTION), pf::WRITE);
    Ok(())
}

fn execute_from_heap_faults_with_fetch_bit() -> Result<(), String> {
    // `mov eax, 42; ret`: if NX were not enforced this would run and return 42, and the case
    // fails cleanly instead of crashing.
    let code: Vec<u8> = alloc::vec![0xB8, 42, 0, 0, 0, 0xC3];
    let addr = code.as_ptr() as u64;
    // SAFETY: the bytes form a complete function returning 42, so even if executed nothing breaks.
    let fault = match unsafe { probe::call(addr) } {
        Ok(v) => return Err(alloc::format!("heap code ran and returned {v}: NX is not enforced")),
        Err(f) => f,
    };
    ensure_eq!(fault.vector, 14);
    ensure_eq!(fault.cr2, addr);
    ensure_eq!(fault.rip, addr);
    ensure_eq!(fault.error_code & (pf::PRESENT | pf::INSTRUCTION), pf::PRESENT | pf::INSTRUCTION);
    Ok(())
}

fn non_canonical_access_is_a_general_protection_fault() -> Result<(), String> {
    // SAFETY: a non-canonical address cannot be accessed at all; the #GP is caught.
    let fault = unsafe { probe::read_u8(0x8000_0000_0000_0000) }.err().ok_or("non-canonical read succeeded")?;
    ensure_eq!(fault.vector, 13);
    ensure_eq!(fault.error_code, 0);
    Ok(())
}

fn many_faults_in_a_row_leave_the_kernel_sound() -> Result<(), String> {
    for i in 0..1000u64 {
        let addr = UNMAPPED + i * 4096;
        // SAFETY: unmapped pages; each fault is caught.
        let fault = unsafe { probe::read_u8(addr) }.err().ok_or("unmapped read succeeded")?;
        ensure_eq!(fault.cr2, addr);
    }
    // A mapped byte still reads normally through the same probe.
    let value = 0x5Au8;
    // SAFETY: reads a local variable.
    ensure_eq!(unsafe { probe::read_u8(&value as *const u8 as u64) }, Ok(0x5A));
    Ok(())
}

fn memory_map_reports_usable_ram() -> Result<(), String> {
    let regions = &kernel::boot_snapshot().regions;
    let totals = kernel::boot_memory::totals(regions);
    ensure!(totals.usable >= 128 * 1024 * 1024, "usable RAM {} of a 256 MiB guest", totals.usable);
    ensure!(totals.usable <= 256 * 1024 * 1024);
    ensure!(totals.bootloader > 0, "the kernel image is in a bootloader region");
    for pair in regions.windows(2) {
        ensure!(pair[0].end <= pair[1].start, "regions sorted and disjoint: {:#x?}", pair);
    }
    Ok(())
}

kernel::kernel_test_image!(
    heap_allocates_several_mib,
    read_of_unmapped_page_faults_and_resumes,
    write_to_unmapped_page_faults_with_write_bit,
    execute_from_heap_faults_with_fetch_bit,
    non_canonical_access_is_a_general_protection_fault,
    many_faults_in_a_row_leave_the_kernel_sound,
    memory_map_reports_usable_ram,
);
