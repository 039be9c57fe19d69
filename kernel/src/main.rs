//! The kernel image `./run-qemu.sh` boots.
#![no_std]
#![no_main]

use kernel::{boot_memory, kprintln, qemu};

bootloader_api::entry_point!(kernel_main, config = &kernel::BOOTLOADER_CONFIG);

fn kernel_main(boot_info: &'static mut bootloader_api::BootInfo) -> ! {
    kernel::init(boot_info);
    let boot_info = kernel::boot_info();
    kprintln!("vmkernel {} booted", env!("CARGO_PKG_VERSION"));
    kprintln!(
        "kernel image at phys {:#x} ({}), physical-memory window at {:#x}",
        boot_info.kernel_addr,
        boot_memory::Size(boot_info.kernel_len),
        boot_info.physical_memory_offset.into_option().unwrap_or(0)
    );
    boot_memory::print_map(&boot_info.memory_regions);
    let (used, free) = kernel::heap::usage();
    kprintln!("kernel heap: {} used, {} free", boot_memory::Size(used as u64), boot_memory::Size(free as u64));
    kprintln!("boot complete");
    qemu::exit(qemu::ExitCode::Success)
}
