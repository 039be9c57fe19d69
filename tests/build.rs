//! Builds the C test guests (tests/guests/c) with the system C compiler, as any guest author would,
//! into OUT_DIR for the QEMU test images to embed (`NAME.c` → `$OUT_DIR/NAME.elf`). `faults.c` is
//! built once per fault kind (`faultN.elf`).

use std::path::PathBuf;
use std::process::Command;

/// How many fault kinds `faults.c` knows (its `FAULT` switch).
const FAULT_KINDS: u32 = 13;

fn build(cc: &str, src: &PathBuf, out: &PathBuf, include: &PathBuf, defines: &[String]) {
    let status = Command::new(cc)
        .args(["-ffreestanding", "-nostdlib", "-static-pie", "-fno-stack-protector", "-O1", "-e", "guest_main", "-I"])
        .arg(include)
        .arg("-I")
        .arg(src.parent().expect("guest sources have a directory"))
        .args(defines)
        .arg("-o")
        .arg(out)
        .arg(src)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cc}: {e} (apt-get install gcc)"));
    assert!(status.success(), "{cc} failed on {}", src.display());
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let include = manifest.join("../kernel/guest-abi/include");
    let dir = manifest.join("guests/c");
    let cc = std::env::var("GUEST_CC").unwrap_or_else(|_| "gcc".into());
    // Every other `NAME.c` becomes `NAME.elf` (sample.c is built by the kernel, which bundles it).
    let mut sources: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/guests/c exists")
        .map(|e| e.expect("readable directory").path())
        .filter(|p| p.extension().is_some_and(|x| x == "c"))
        .collect();
    sources.sort();
    for src in sources {
        let name = src.file_stem().expect("a file name").to_string_lossy().into_owned();
        if name == "faults" || name == "sample" {
            continue;
        }
        build(&cc, &src, &out.join(format!("{name}.elf")), &include, &[]);
    }
    for kind in 0..FAULT_KINDS {
        build(&cc, &dir.join("faults.c"), &out.join(format!("fault{kind}.elf")), &include, &[format!("-DFAULT={kind}")]);
    }
    println!("cargo:rerun-if-changed={}", dir.display());
    println!("cargo:rerun-if-changed={}", include.display());
    println!("cargo:rerun-if-env-changed=GUEST_CC");
}
