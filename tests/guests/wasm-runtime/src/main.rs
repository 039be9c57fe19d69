//! wasm-runtime: Wasmtime hosted through `IHostMemoryManager` — a third-party runtime on the
//! kernel. It runs one precompiled WebAssembly module (a WASI preview 1 command, possibly using
//! WasmGC) that `tools/wasm-precompile` appended to this ELF file (format: `tools/wasm-payload`).
//!
//! * `platform.rs`: Wasmtime's custom platform (virtual memory, memory images, TLS) over the host;
//! * `traps.rs`: hardware faults → the kernel's exception delivery → Wasmtime's trap handler;
//! * `wasi.rs`: the WASI preview 1 subset;
//! * `sys.rs`: the host, the console, the global allocator on `IHostMalloc`;
//! * `vmmap.rs`: the address-space report;
//! * `engine_config.rs`: the engine settings shared with the host precompiler.
//!
//! argv is the module's file name followed by the words of the guest's argument string
//! (`--guest-args`). Exit code: the program's (`proc_exit`, 0 when `_start` returns); 134 after a
//! wasm trap (printed as `wasm trap: <what>`, as `wasmtime run` does); 1 when the module cannot be
//! loaded (a message says why).
#![no_std]
#![no_main]

extern crate alloc;

mod engine_config;
mod platform;
mod sys;
mod traps;
mod vmmap;
mod wasi;

use alloc::string::String;
use alloc::vec::Vec;

use guest_abi::Host;
use guest_abi::consts::*;
use wasmtime::{Config, Engine, Linker, Module, Store};

use sys::{host, size};

guest_abi::guest_entry!(main);

/// Exit code after a wasm trap (that of `wasmtime run` on Unix: 128 + SIGABRT).
const TRAP_EXIT: i32 = 134;

/// The module appended by `wasm-precompile --runtime` (format: the wasm-payload crate).
struct Payload {
    name: String,
    report: bool,
    module: &'static [u8],
}

unsafe extern "C" {
    /// End of this image's highest segment (defined by the linker).
    static _end: u8;
}

/// Finds the payload in the page after the runtime's own segments, if one was appended.
fn find_payload() -> Result<Payload, &'static str> {
    const NONE: &str = "no WebAssembly module is appended to this runtime (see wasm-precompile --runtime)";
    let h = host();
    let at = (&raw const _end as usize).next_multiple_of(4096);
    let own = h.virtual_query(find_payload as *const () as usize).map_err(|_| NONE)?;
    // The readable extent of the image from `at` on.
    let mut end = at;
    while let Ok(q) = h.virtual_query(end) {
        if q.allocation_base != own.allocation_base || q.state != MEM_COMMIT || q.protect & 0xFF == PAGE_NOACCESS {
            break;
        }
        end = (q.base_address + q.region_size) as usize;
    }
    // SAFETY: [at, end) is committed, readable memory of this image, which lives as long as the
    // guest and is never written (a read-only segment).
    let bytes: &'static [u8] = unsafe { core::slice::from_raw_parts(at as *const u8, end.saturating_sub(at)) };
    let p = wasm_payload::parse(bytes).ok_or(NONE)??;
    Ok(Payload { name: String::from_utf8_lossy(p.name).into_owned(), report: p.flags & wasm_payload::FLAG_REPORT != 0, module: p.module })
}

/// Commits the main stack ahead down to 64 KiB above its reservation's end. The kernel grows a
/// guest's stack only through its guard page, one page at a time, while compiled wasm may open a
/// frame larger than a page; with the stack committed, Wasmtime's own stack limit
/// (`MAX_WASM_STACK`) is what stops deep recursion.
fn commit_main_stack() {
    let marker = 0u8;
    let sp = core::ptr::addr_of!(marker) as usize;
    let Ok(q) = host().virtual_query(sp) else { return };
    let floor = q.allocation_base as usize + (64 << 10);
    let mut page = (sp & !0xFFF).saturating_sub(4096);
    while page >= floor {
        // SAFETY: a page of this thread's own stack reservation, below the current frame; the
        // read touches the guard page just below the committed part, which the kernel turns
        // into one more committed page.
        unsafe { core::ptr::read_volatile(page as *const u8) };
        page -= 4096;
    }
}

/// `Config::detect_host_feature`: the CPU's features by `cpuid` (allowed in ring 3).
fn cpu_has(feature: &str) -> Option<bool> {
    use core::arch::x86_64::{__cpuid, __cpuid_count, _xgetbv};
    let leaf1 = __cpuid(1);
    let leaf7 = __cpuid_count(7, 0);
    let ext = __cpuid(0x8000_0001);
    let bit = |r: u32, b: u32| r & (1 << b) != 0;
    // AVX needs the OS to save the YMM state (OSXSAVE and XCR0 bits 1 and 2).
    // SAFETY: xgetbv is executed only when cpuid reports OSXSAVE.
    let avx_os = bit(leaf1.ecx, 27) && unsafe { _xgetbv(0) } & 6 == 6;
    Some(match feature {
        "sse3" => bit(leaf1.ecx, 0),
        "ssse3" => bit(leaf1.ecx, 9),
        "sse4.1" => bit(leaf1.ecx, 19),
        "sse4.2" => bit(leaf1.ecx, 20),
        "popcnt" => bit(leaf1.ecx, 23),
        "cmpxchg16b" => bit(leaf1.ecx, 13),
        "lzcnt" => bit(ext.ecx, 5),
        "bmi1" => bit(leaf7.ebx, 3),
        "bmi2" => bit(leaf7.ebx, 8),
        "avx" => avx_os && bit(leaf1.ecx, 28),
        "fma" => avx_os && bit(leaf1.ecx, 12),
        "avx2" => avx_os && bit(leaf7.ebx, 5),
        _ => return None,
    })
}

fn engine() -> wasmtime::Result<Engine> {
    let mut config = Config::new();
    engine_config::configure(&mut config);
    // SAFETY: cpu_has answers from cpuid (and XCR0 for AVX), so its answers are correct.
    unsafe { config.detect_host_feature(cpu_has) };
    // SAFETY: this guest's Rust code uses x86_64-unknown-none's soft-float ABI, Cranelift's code
    // the SSE one; they would disagree only on floats passed in registers between the two, which
    // happens only in float libcalls. Modules are compiled with SSE4.1 (native rounding) and
    // without relaxed SIMD (engine_config.rs), so compiled code makes no float libcalls.
    unsafe { config.x86_float_abi_ok(true) };
    Engine::new(&config)
}

/// How a run ended.
enum Outcome {
    Exit(i32),
    Trap(String),
    Error(String),
}

impl Outcome {
    fn of(result: wasmtime::Result<()>) -> Outcome {
        let Err(e) = result else { return Outcome::Exit(0) };
        if let Some(wasi::Exit(code)) = e.downcast_ref::<wasi::Exit>() {
            Outcome::Exit(*code)
        } else if let Some(trap) = e.downcast_ref::<wasmtime::Trap>() {
            Outcome::Trap(alloc::format!("{trap}"))
        } else {
            Outcome::Error(alloc::format!("{e:?}"))
        }
    }
}

fn main(h: &Host) -> i32 {
    if sys::init(h).is_err() {
        h.print("wasm-runtime: CreateMalloc failed\n");
        return 1;
    }
    commit_main_stack();
    let payload = match find_payload() {
        Ok(p) => p,
        Err(e) => {
            out!("wasm-runtime: {e}\n");
            return 1;
        }
    };
    if payload.report {
        out!("wasm-runtime: hello from ring 3: Wasmtime 51.0.0 running {}\n", payload.name);
    }
    let committed_at_start = h.commit_info().committed;
    let mut args: Vec<String> = alloc::vec![payload.name.clone()];
    args.extend(h.args().split(' ').filter(|w| !w.is_empty()).map(String::from));

    let engine = match engine() {
        Ok(e) => e,
        Err(e) => {
            out!("wasm-runtime: cannot create the Wasmtime engine: {e:?}\n");
            return 1;
        }
    };
    let started = h.ticks_ns();
    // SAFETY: the bytes are the output of Engine::precompile_module by wasm-precompile (same
    // Wasmtime version and settings); Wasmtime checks its header, version, settings and target
    // and refuses anything else.
    let module = match unsafe { Module::deserialize(&engine, payload.module) } {
        Ok(m) => m,
        Err(e) => {
            out!("wasm-runtime: {}: cannot load the precompiled module: {e:?}\n", payload.name);
            return 1;
        }
    };
    let loaded = h.ticks_ns();
    let mut store = Store::new(&engine, wasi::WasiCtx::new(args));
    let mut linker = Linker::new(&engine);
    if let Err(e) = wasi::add_to_linker(&mut linker, &module) {
        out!("wasm-runtime: {}: {e:?}\n", payload.name);
        return 1;
    }
    let instance = match linker.instantiate(&mut store, &module) {
        Ok(i) => i,
        Err(e) => {
            traps::trap_handled();
            return finish(&payload.name, Outcome::of(Err(e)), "instantiation");
        }
    };
    let start = match instance.get_typed_func::<(), ()>(&mut store, "_start") {
        Ok(f) => f,
        Err(e) => {
            out!("wasm-runtime: {}: no `_start` function to run: {e}\n", payload.name);
            return 1;
        }
    };
    let result = start.call(&mut store, ());
    traps::trap_handled();
    let ran = h.ticks_ns();
    if payload.report {
        let memory = instance.get_memory(&mut store, "memory").map(|m| vmmap::LinearMemory {
            data: m.data_ptr(&store) as usize,
            accessible: m.data_size(&store),
        });
        let heap = alloc::boxed::Box::new(0u8);
        let code = module.image_range().start as usize;
        out!(
            "wasm-runtime: {}: precompiled module {}, loaded in {} ms, ran in {} ms; guest commit {} (at start {})\n",
            payload.name,
            size(payload.module.len() as u64),
            (loaded - started) / 1_000_000,
            (ran - loaded) / 1_000_000,
            size(h.commit_info().committed),
            size(committed_at_start)
        );
        vmmap::print(memory.as_ref(), &*heap as *const u8 as usize, code, core::ptr::addr_of!(heap) as usize);
    }
    let outcome = Outcome::of(result);
    drop(store);
    drop(linker);
    drop(module);
    drop(engine);
    if payload.report {
        out!(
            "wasm-runtime: after the store, module and engine are dropped: guest commit {} (at start {}), runtime heap {} live\n",
            size(h.commit_info().committed),
            size(committed_at_start),
            size(sys::HEAP_LIVE.load(core::sync::atomic::Ordering::Relaxed) as u64)
        );
    }
    finish(&payload.name, outcome, "run")
}

fn finish(name: &str, outcome: Outcome, phase: &str) -> i32 {
    match outcome {
        Outcome::Exit(code) => code,
        Outcome::Trap(what) => {
            // Trap's Display is `wasm trap: <what>`.
            out!("{what}\n");
            TRAP_EXIT
        }
        Outcome::Error(e) => {
            out!("wasm-runtime: {name}: {phase} failed: {e}\n");
            1
        }
    }
}
