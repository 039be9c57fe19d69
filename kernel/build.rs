//! Builds the bundled C sample guest with the system C compiler (gcc), as any guest author would:
//! `gcc -ffreestanding -nostdlib -static-pie -e guest_main` against `guest-abi/include/host_abi.h`,
//! and with the same flags the in-guest benchmark (`tests/guests/c/vmbench_guest.c` →
//! `vmbench-guest.elf`, and `vmbench_threads.c` → `vmbench-threads.elf`) that the benchmark image
//! `src/bin/bench.rs` embeds.
//! The Rust sample guest comes in as an artifact dependency.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let include = manifest.join("guest-abi/include");
    let guests = manifest.join("../tests/guests/c");
    let cc = std::env::var("GUEST_CC").unwrap_or_else(|_| "gcc".into());
    for (source, output) in [
        ("sample.c", "sample-c.elf"),
        ("vmbench_guest.c", "vmbench-guest.elf"),
        ("vmbench_threads.c", "vmbench-threads.elf"),
    ] {
        let src = guests.join(source);
        let elf = out.join(output);
        let status = Command::new(&cc)
            .args(["-ffreestanding", "-nostdlib", "-static-pie", "-fno-stack-protector", "-O2", "-e", "guest_main", "-I"])
            .arg(&include)
            .arg("-I")
            .arg(&guests)
            .arg("-o")
            .arg(&elf)
            .arg(&src)
            .status()
            .unwrap_or_else(|e| panic!("cannot run {cc} to build {source}: {e} (apt-get install gcc)"));
        assert!(status.success(), "{cc} failed to build {}", src.display());
        println!("cargo:rerun-if-changed={}", src.display());
    }
    println!("cargo:rerun-if-changed={}", include.join("host_abi.h").display());
    println!("cargo:rerun-if-changed={}", guests.join("guest_util.h").display());
    println!("cargo:rerun-if-changed={}", guests.join("vmbench_util.h").display());
    println!("cargo:rerun-if-env-changed=GUEST_CC");
}
