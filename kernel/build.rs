//! Builds the bundled C sample guest with the system C compiler (gcc), as any guest author would:
//! `gcc -ffreestanding -nostdlib -static-pie -e guest_main` against `guest-abi/include/host_abi.h`.
//! The Rust sample guest comes in as an artifact dependency.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let include = manifest.join("guest-abi/include");
    let guests = manifest.join("../tests/guests/c");
    let cc = std::env::var("GUEST_CC").unwrap_or_else(|_| "gcc".into());
    {
        let src = guests.join("sample.c");
        let elf = out.join("sample-c.elf");
        let status = Command::new(&cc)
            .args(["-ffreestanding", "-nostdlib", "-static-pie", "-fno-stack-protector", "-O2", "-e", "guest_main", "-I"])
            .arg(&include)
            .arg("-I")
            .arg(&guests)
            .arg("-o")
            .arg(&elf)
            .arg(&src)
            .status()
            .unwrap_or_else(|e| panic!("cannot run {cc} to build the C sample guest: {e} (apt-get install gcc)"));
        assert!(status.success(), "{cc} failed to build {}", src.display());
        println!("cargo:rerun-if-changed={}", src.display());
    }
    println!("cargo:rerun-if-changed={}", include.join("host_abi.h").display());
    println!("cargo:rerun-if-changed={}", guests.join("guest_util.h").display());
    println!("cargo:rerun-if-env-changed=GUEST_CC");
}
