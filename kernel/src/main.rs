//! The kernel image `./run-qemu.sh` boots: boot report, then the guests.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;

use kernel::guest::{self, GuestOutcome, ramdisk};
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
    kernel::arch::smp::print_cpus();
    memory::print_accounting();

    let guests: Vec<ramdisk::GuestFile> = match ramdisk::read() {
        Some(Err(e)) => {
            kprintln!("ramdisk: {e}");
            qemu::exit(qemu::ExitCode::Failure)
        }
        Some(Ok(bytes)) => match ramdisk::parse(&bytes) {
            Ok(files) => files,
            Err(e) => {
                kprintln!("ramdisk: {e}");
                qemu::exit(qemu::ExitCode::Failure)
            }
        },
        None => kernel::bundled_guests(),
    };
    kprintln!("running {} guest(s)", guests.len());
    let mut all_ok = true;
    for g in &guests {
        let outcome = guest::run_guest(&g.name, &g.data);
        all_ok &= outcome == GuestOutcome::Exited(0);
    }
    memory::print_accounting();
    kprintln!("boot complete");
    qemu::exit(if all_ok { qemu::ExitCode::Success } else { qemu::ExitCode::Failure })
}
