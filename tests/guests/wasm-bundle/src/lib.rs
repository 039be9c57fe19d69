//! The `wasm-runtime` guest with precompiled WebAssembly appended (built by `build.rs`).
#![no_std]
#![forbid(unsafe_code)]

/// The default run's WASI demo (`tests/guests/wasm-programs/src/bin/hello-wasi.rs`), with the
/// address-space report.
pub static HELLO_WASI: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/hello-wasi.elf"));
/// The test program (`wasi-test.rs`; its first argument picks the case).
pub static WASI_TEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/wasi-test.elf"));
/// The WasmGC test module (`gc-test.wat`).
pub static GC_TEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/gc-test.elf"));
/// The runtime alone, no module appended.
pub static RUNTIME_ALONE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/wasm-runtime.elf"));
