//! The kernel image `./run-qemu.sh` boots.
#![no_std]
#![no_main]

use kernel::{boot_memory, kprintln, memory, qemu};

bootloader_api::entry_point!(kernel_main, config = &kernel::BOOTLOADER_CONFIG);

fn kernel_main(boot_info: &'static mut bootloader_api::BootInfo) -> ! {
    kernel::init(boot_info);
    let boot = kernel::boot_snapshot();
    kprintln!("vmkernel {} booted", env!("CARGO_PKG_VERSION"));
    kprintln!(
        "kernel image at {:#x} (ELF at phys {:#x}, {}), physical-memory window at {:#x}",
        boot.kernel_image_offset,
        boot.kernel_phys,
        boot_memory::Size(boot.kernel_len),
        boot.window_offset
    );
    boot_memory::print_map(&boot.regions);
    kprintln!("running on the kernel's own page tables (CR3 = {:#x})", x86_64::registers::control::Cr3::read().0.start_address().as_u64());
    memory::print_accounting();
    kprintln!("boot complete");
    qemu::exit(qemu::ExitCode::Success)
}
