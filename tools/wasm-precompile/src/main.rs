//! `wasm-precompile`: compiles a WebAssembly module (binary `.wasm` or text `.wat`) on the host
//! with Cranelift for the `wasm-runtime` guest, which cannot compile (Cranelift does not run in a
//! `no_std` guest), and optionally appends the result to the runtime's ELF file so that the
//! kernel's ELF loader maps it into the guest with the runtime's image.
//!
//! ```text
//! wasm-precompile [--runtime RUNTIME.elf] [--name NAME] [--report] INPUT -o OUTPUT
//! ```
//!
//! Without `--runtime` OUTPUT is the serialized module (`Engine::precompile_module`). With it,
//! OUTPUT is RUNTIME.elf with the module appended as one more segment (format: the
//! `wasm-payload` crate), named NAME (default: INPUT's file name; the program's argv[0]);
//! `--report` asks the runtime to print a banner and, after the run, its address-space report.
//!
//! The engine's settings come from the guest's own `engine_config.rs`, so both sides always
//! agree; the target is `x86_64-unknown-none` with the CPU features of `CRANELIFT_FLAGS`.
//! Exit status: 0, or 1 with a message on stderr (unreadable input, invalid module, bad ELF).

#[path = "../../../tests/guests/wasm-runtime/src/engine_config.rs"]
mod engine_config;

use std::process::ExitCode;

struct Args {
    input: String,
    output: String,
    runtime: Option<String>,
    name: Option<String>,
    report: bool,
}

fn parse_args() -> Result<Args, String> {
    let usage = "usage: wasm-precompile [--runtime RUNTIME.elf] [--name NAME] [--report] INPUT -o OUTPUT";
    let (mut input, mut output, mut runtime, mut name, mut report) = (None, None, None, None, false);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "-o" => output = Some(it.next().ok_or(usage)?),
            "--runtime" => runtime = Some(it.next().ok_or(usage)?),
            "--name" => name = Some(it.next().ok_or(usage)?),
            "--report" => report = true,
            "-h" | "--help" => return Err(usage.into()),
            s if s.starts_with('-') => return Err(format!("unknown option {s}\n{usage}")),
            _ if input.is_none() => input = Some(a),
            _ => return Err(usage.into()),
        }
    }
    Ok(Args { input: input.ok_or(usage)?, output: output.ok_or(usage)?, runtime, name, report })
}

/// The engine the guest's modules are compiled with.
fn engine() -> Result<wasmtime::Engine, String> {
    let mut config = wasmtime::Config::new();
    config.target("x86_64-unknown-none").map_err(|e| format!("target: {e}"))?;
    engine_config::configure(&mut config);
    for flag in engine_config::CRANELIFT_FLAGS {
        // SAFETY: the guest checks each of these flags with cpuid before it runs the code
        // (Engine::check_compatible_with_native_isa through Config::detect_host_feature).
        unsafe { config.cranelift_flag_enable(flag) };
    }
    wasmtime::Engine::new(&config).map_err(|e| format!("engine: {e:#}"))
}

fn run(args: &Args) -> Result<(), String> {
    let source = std::fs::read(&args.input).map_err(|e| format!("{}: {e}", args.input))?;
    if args.input.ends_with(".wasm") && !source.starts_with(b"\0asm") {
        return Err(format!("{}: not a WebAssembly binary module (no \\0asm header)", args.input));
    }
    let engine = engine()?;
    let module = engine.precompile_module(&source).map_err(|e| format!("{}: cannot compile: {e:#}", args.input))?;
    let bytes = match &args.runtime {
        None => module,
        Some(rt) => {
            let elf = std::fs::read(rt).map_err(|e| format!("{rt}: {e}"))?;
            let name = match &args.name {
                Some(n) => n.clone(),
                None => std::path::Path::new(&args.input).file_name().map_or("module.wasm".into(), |n| n.to_string_lossy().into_owned()),
            };
            let flags = if args.report { wasm_payload::FLAG_REPORT } else { 0 };
            wasm_payload::append_segment(&elf, &wasm_payload::payload(&name, &module, flags)).map_err(|e| format!("{rt}: {e}"))?
        }
    };
    // Only rewrite an unchanged output when it differs (keeps disk-image caches valid).
    if std::fs::read(&args.output).ok().as_deref() != Some(&bytes[..]) {
        std::fs::write(&args.output, &bytes).map_err(|e| format!("{}: {e}", args.output))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    match parse_args().and_then(|a| run(&a)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wasm-precompile: {e}");
            ExitCode::FAILURE
        }
    }
}
