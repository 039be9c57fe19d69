//! Precompiles the bundled WebAssembly programs with the host tool `wasm-precompile` (an artifact
//! build dependency, so Wasmtime and Cranelift are built once for the host and cached) and appends
//! each to the `wasm-runtime` guest's ELF: `hello-wasi.elf` (the default run's demo, with the
//! address-space report), `wasi-test.elf` and `gc-test.elf` (for tests/wasm.rs).

use std::path::{Path, PathBuf};
use std::process::Command;

fn artifact(var: &str) -> PathBuf {
    PathBuf::from(std::env::var(var).unwrap_or_else(|_| panic!("cargo sets {var} (artifact dependency)")))
}

fn precompile(tool: &Path, runtime: &Path, input: &Path, name: &str, report: bool, out: &Path) {
    let mut cmd = Command::new(tool);
    cmd.arg("--runtime").arg(runtime).args(["--name", name]).arg(input).arg("-o").arg(out);
    if report {
        cmd.arg("--report");
    }
    let status = cmd.status().unwrap_or_else(|e| panic!("cannot run {}: {e}", tool.display()));
    assert!(status.success(), "wasm-precompile failed on {}", input.display());
}

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let tool = artifact("CARGO_BIN_FILE_WASM_PRECOMPILE_wasm-precompile");
    let runtime = artifact("CARGO_BIN_FILE_WASM_RUNTIME_wasm-runtime");
    let hello = artifact("CARGO_BIN_FILE_WASM_PROGRAMS_hello-wasi");
    let test = artifact("CARGO_BIN_FILE_WASM_PROGRAMS_wasi-test");
    let gc = manifest.join("../wasm-programs/gc-test.wat");
    precompile(&tool, &runtime, &hello, "hello-wasi.wasm", true, &out.join("hello-wasi.elf"));
    precompile(&tool, &runtime, &test, "wasi-test.wasm", false, &out.join("wasi-test.elf"));
    precompile(&tool, &runtime, &gc, "gc-test.wat", true, &out.join("gc-test.elf"));
    std::fs::copy(&runtime, out.join("wasm-runtime.elf")).expect("copy the runtime");
    println!("cargo:rerun-if-changed={}", gc.display());
}
