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
//! OUTPUT is RUNTIME.elf plus one read-only `PT_LOAD` segment right after the runtime's highest
//! segment holding:
//!
//! ```text
//! "VMKWASM1"            8 bytes
//! flags                 u32 LE   (bit 0: print the address-space report after the run)
//! name_len              u32 LE
//! module_len            u64 LE
//! name                  name_len bytes (argv[0] of the program)
//! padding to 16 bytes
//! module                module_len bytes (the serialized module)
//! ```
//!
//! The engine's settings come from the guest's own `engine_config.rs`, so both sides always
//! agree; the target is `x86_64-unknown-none` with the CPU features of `CRANELIFT_FLAGS`.
//! Exit status: 0, or 1 with a message on stderr (unreadable input, invalid module, bad ELF).

#[path = "../../../tests/guests/wasm-runtime/src/engine_config.rs"]
mod engine_config;

use std::process::ExitCode;

/// The payload's magic (see the module docs).
const MAGIC: &[u8; 8] = b"VMKWASM1";
const PAGE: u64 = 4096;

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

fn u16_at(d: &[u8], o: usize) -> Result<u16, String> {
    d.get(o..o + 2).map(|b| u16::from_le_bytes(b.try_into().expect("2 bytes"))).ok_or_else(|| "runtime ELF truncated".into())
}
fn u32_at(d: &[u8], o: usize) -> Result<u32, String> {
    d.get(o..o + 4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes"))).ok_or_else(|| "runtime ELF truncated".into())
}
fn u64_at(d: &[u8], o: usize) -> Result<u64, String> {
    d.get(o..o + 8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes"))).ok_or_else(|| "runtime ELF truncated".into())
}

/// The payload segment's contents.
fn payload(name: &str, module: &[u8], report: bool) -> Vec<u8> {
    let mut p = Vec::with_capacity(module.len() + name.len() + 48);
    p.extend_from_slice(MAGIC);
    p.extend_from_slice(&u32::from(report).to_le_bytes());
    p.extend_from_slice(&(name.len() as u32).to_le_bytes());
    p.extend_from_slice(&(module.len() as u64).to_le_bytes());
    p.extend_from_slice(name.as_bytes());
    p.resize(p.len().next_multiple_of(16), 0);
    p.extend_from_slice(module);
    p
}

/// `elf` with `payload` appended as a new read-only `PT_LOAD` segment at the first page after
/// its highest segment; the program header table moves to the end of the file (the kernel's
/// loader reads it wherever `e_phoff` says).
fn append_segment(elf: &[u8], payload: &[u8]) -> Result<Vec<u8>, String> {
    if elf.get(..4) != Some(b"\x7fELF") || elf.get(4) != Some(&2) {
        return Err("the runtime is not an ELF64 file".into());
    }
    let phoff = u64_at(elf, 32)? as usize;
    let phentsize = u16_at(elf, 54)? as usize;
    let phnum = u16_at(elf, 56)? as usize;
    if phentsize != 56 {
        return Err(format!("program header entries of {phentsize} bytes"));
    }
    let table = elf.get(phoff..phoff + phnum * 56).ok_or("the runtime's program headers lie beyond its end")?;
    let mut top = 0u64;
    for ph in table.chunks(56) {
        if u32_at(ph, 0)? == 1 {
            top = top.max(u64_at(ph, 16)? + u64_at(ph, 40)?);
        }
    }
    let vaddr = top.next_multiple_of(PAGE);
    let mut out = elf.to_vec();
    out.resize(out.len().next_multiple_of(PAGE as usize), 0);
    let offset = out.len() as u64;
    out.extend_from_slice(payload);
    out.resize(out.len().next_multiple_of(8), 0);
    let new_phoff = out.len() as u64;
    out.extend_from_slice(table);
    let mut ph = Vec::with_capacity(56);
    ph.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    ph.extend_from_slice(&4u32.to_le_bytes()); // PF_R
    for v in [offset, vaddr, vaddr, payload.len() as u64, payload.len() as u64, PAGE] {
        ph.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&ph);
    out[32..40].copy_from_slice(&new_phoff.to_le_bytes());
    let phnum = u16::try_from(phnum + 1).map_err(|_| "too many program headers")?;
    out[56..58].copy_from_slice(&phnum.to_le_bytes());
    Ok(out)
}

fn run(args: &Args) -> Result<(), String> {
    let source = std::fs::read(&args.input).map_err(|e| format!("{}: {e}", args.input))?;
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
            append_segment(&elf, &payload(&name, &module, args.report)).map_err(|e| format!("{rt}: {e}"))?
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 header with one PT_LOAD at 0x1000..0x2800 (memsz) and its table at 64.
    fn tiny_elf() -> Vec<u8> {
        let mut e = vec![0u8; 64 + 56];
        e[..5].copy_from_slice(b"\x7fELF\x02");
        e[32..40].copy_from_slice(&64u64.to_le_bytes());
        e[54..56].copy_from_slice(&56u16.to_le_bytes());
        e[56..58].copy_from_slice(&1u16.to_le_bytes());
        let ph = &mut e[64..];
        ph[0..4].copy_from_slice(&1u32.to_le_bytes());
        ph[16..24].copy_from_slice(&0x1000u64.to_le_bytes());
        ph[40..48].copy_from_slice(&0x1800u64.to_le_bytes());
        e
    }

    #[test]
    fn segment_is_appended_after_the_highest_one() {
        let p = payload("prog.wasm", &[1, 2, 3], true);
        assert_eq!(&p[..8], MAGIC);
        assert_eq!(u32::from_le_bytes(p[8..12].try_into().unwrap()), 1);
        assert_eq!(&p[24..33], b"prog.wasm");
        assert_eq!(&p[48..], &[1, 2, 3]);
        let out = append_segment(&tiny_elf(), &p).unwrap();
        assert_eq!(u16_at(&out, 56).unwrap(), 2);
        let phoff = u64_at(&out, 32).unwrap() as usize;
        let new = &out[phoff + 56..phoff + 112];
        assert_eq!(u32_at(new, 0).unwrap(), 1);
        assert_eq!(u32_at(new, 4).unwrap(), 4);
        let (off, vaddr, filesz) = (u64_at(new, 8).unwrap(), u64_at(new, 16).unwrap(), u64_at(new, 32).unwrap());
        assert_eq!(vaddr, 0x3000);
        assert_eq!(off % PAGE, 0);
        assert_eq!(&out[off as usize..(off + filesz) as usize], &p[..]);
        assert!(append_segment(b"not an elf", &p).is_err());
    }
}
