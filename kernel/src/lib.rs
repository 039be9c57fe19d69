//! The kernel: a freestanding x86_64 kernel booted by the rust-osdev `bootloader`, whose job is
//! Win32-grade virtual memory for guest runtimes.
//!
//! This crate is the hardware side. Its pieces, in the order [`init`] brings them up:
//!
//! | module | what it does |
//! | --- | --- |
//! | [`console`] | COM1 through `uart_16550`, the `kprint!` macros and the `log` backend |
//! | [`arch::gdt`] | GDT with kernel/user segments and a TSS whose IST stacks serve double faults and NMIs |
//! | [`trap`] | the IDT: every CPU exception prints a report (vector, error code, CR2, RIP, RSP) and stops QEMU with failure, unless a [`arch::probe`] expected it; page faults go to [`memory`] first |
//! | [`heap`] | the kernel heap (`linked_list_allocator`) behind `#[global_allocator]` |
//! | [`guest`] | guests in ring 3: ELF loading, host calls, exceptions delivered to the guest |
//! | [`memory`] | frames from the memory map, the kernel's own page tables, guest address spaces, page faults |
//! | [`boot_memory`] | the bootloader's memory map: printing it, totals per kind |
//! | [`qemu`] | leaving QEMU through `isa-debug-exit` with a success or failure code |
//! | [`testing`] | the in-kernel test harness used by the images in `tests/` |
//!
//! Unsafe code lives in `arch/`, `console`, `heap` and `qemu` only: the modules that touch hardware.
#![no_std]
#![feature(abi_x86_interrupt)]

extern crate alloc;

pub mod arch;
pub mod boot_memory;
pub mod console;
pub mod guest;
pub mod heap;
pub mod memory;
pub mod qemu;
pub mod testing;
pub mod trap;

pub use bootloader_api;

use bootloader_api::{BootInfo, BootloaderConfig, config::Mapping};

/// What the kernel kept of the boot info (the boot info itself is unmapped by [`init`]).
pub use memory::boot_snapshot;

/// Start of the kernel's half of the virtual address space (the upper canonical half).
pub const KERNEL_SPACE_START: u64 = 0xffff_8000_0000_0000;

/// How every kernel image (the kernel itself and each test image) asks the bootloader to boot it.
///
/// The physical-memory window is requested now because the frame allocator and page tables of the
/// later memory manager reach physical memory through it.
pub const BOOTLOADER_CONFIG: BootloaderConfig = {
    let mut config = BootloaderConfig::new_default();
    config.mappings.physical_memory = Some(Mapping::Dynamic);
    // Everything the bootloader maps for the kernel (image, stack, boot info, framebuffer, the
    // physical-memory window) goes to the upper half: the lower half belongs to guests.
    config.mappings.dynamic_range_start = Some(KERNEL_SPACE_START);
    config.kernel_stack_size = 256 * 1024;
    config
};

/// Brings up the console, CPU tables, exception handlers and the heap.
///
/// Call once, first thing, from the entry point of every kernel image.
pub fn init(boot_info: &'static mut BootInfo) {
    let boot_info: &'static BootInfo = boot_info;
    console::init();
    arch::gdt::init();
    trap::init();
    heap::init();
    memory::init(boot_info);
    arch::user::init();
    arch::time::init();
    arch::apic::init_bsp();
    arch::percpu::register_boot_cpu(arch::apic::id());
    let snap = memory::boot_snapshot();
    arch::smp::init(arch::smp::Support {
        regions: &snap.regions,
        rsdp: snap.rsdp,
        window_offset: snap.window_offset,
        window_covers: |pa, len| memory::boot_snapshot().window_covers(pa, len),
        with_phys: memory::with_phys,
        kernel_stack: memory::kstack::KernelStack::new_permanent,
        load_idt: trap::init,
        ap_idle: guest::sched::ap_idle,
    });
}

/// The guests `./run-qemu.sh` runs when none is given: the C and Rust samples, then the bundled
/// garbage-collected runtime (`tests/guests/gc-runtime`), then Wasmtime (`tests/guests/wasm-runtime`)
/// running the bundled WASI demo; built by the normal build (see `build.rs` and
/// `tests/guests/wasm-bundle`) and embedded in the kernel image.
pub fn bundled_guests() -> alloc::vec::Vec<guest::ramdisk::GuestFile> {
    use alloc::borrow::Cow;
    use guest::ramdisk::GuestFile;
    alloc::vec![
        GuestFile { name: "sample-c".into(), data: Cow::Borrowed(include_bytes!(concat!(env!("OUT_DIR"), "/sample-c.elf"))) },
        GuestFile { name: "sample-rust".into(), data: Cow::Borrowed(include_bytes!(env!("CARGO_BIN_FILE_GUEST_SAMPLE_RUST_guest-sample-rust"))) },
        GuestFile { name: "gc-runtime".into(), data: Cow::Borrowed(include_bytes!(env!("CARGO_BIN_FILE_GC_RUNTIME_gc-runtime"))) },
        GuestFile { name: "hello-wasi.wasm".into(), data: Cow::Borrowed(wasm_bundle::HELLO_WASI) },
    ]
}

pub use arch::cpu::halt_forever;

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    testing::on_panic(info)
}
