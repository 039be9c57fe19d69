//! How a precompiled WebAssembly module travels with the `wasm-runtime` guest: `wasm-precompile`
//! appends it to the runtime's ELF file as one more read-only `PT_LOAD` segment, placed at the
//! first page after the runtime's highest segment, so the kernel's ELF loader maps it with the
//! image and the runtime finds it right after its own `_end`. The segment holds:
//!
//! ```text
//! "VMKWASM1"            8 bytes
//! flags                 u32 LE   (bit 0: print a banner and the address-space report)
//! name_len              u32 LE
//! module_len            u64 LE
//! name                  name_len bytes (argv[0] of the program)
//! padding to 16 bytes
//! module                module_len bytes (Engine::precompile_module's output)
//! ```
//!
//! Both sides use this crate: [`payload`] and [`append_segment`] on the host, [`parse`] in the
//! guest. Everything is checked; nothing here panics on bad input.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// The payload's magic.
pub const MAGIC: &[u8; 8] = b"VMKWASM1";
/// Flag: the runtime prints a banner and, after the run, its address-space report.
pub const FLAG_REPORT: u32 = 1;
const PAGE: u64 = 4096;
const HEADER: usize = 24;

/// A parsed payload, borrowing from the bytes it was parsed from.
#[derive(Debug, PartialEq, Eq)]
pub struct Payload<'a> {
    pub flags: u32,
    pub name: &'a [u8],
    pub module: &'a [u8],
}

fn module_offset(name_len: usize) -> Option<usize> {
    HEADER.checked_add(name_len)?.checked_next_multiple_of(16)
}

/// The payload segment's contents.
pub fn payload(name: &str, module: &[u8], flags: u32) -> Vec<u8> {
    let mut p = Vec::with_capacity(module.len() + name.len() + 48);
    p.extend_from_slice(MAGIC);
    p.extend_from_slice(&flags.to_le_bytes());
    p.extend_from_slice(&(name.len() as u32).to_le_bytes());
    p.extend_from_slice(&(module.len() as u64).to_le_bytes());
    p.extend_from_slice(name.as_bytes());
    p.resize(p.len().next_multiple_of(16), 0);
    p.extend_from_slice(module);
    p
}

/// Parses a payload at the start of `bytes` (which may extend beyond it): `None` without the
/// magic, `Err` if the header does not fit.
pub fn parse(bytes: &[u8]) -> Option<Result<Payload<'_>, &'static str>> {
    if bytes.get(..8)? != MAGIC {
        return None;
    }
    let corrupt = "the appended module's header is corrupt";
    Some((|| {
        let header = bytes.get(..HEADER).ok_or(corrupt)?;
        let word = |o: usize| u32::from_le_bytes([header[o], header[o + 1], header[o + 2], header[o + 3]]);
        let (flags, name_len) = (word(8), word(12) as usize);
        let module_len = usize::try_from(u64::from(word(16)) | (u64::from(word(20)) << 32)).map_err(|_| corrupt)?;
        let name = bytes.get(HEADER..HEADER.checked_add(name_len).ok_or(corrupt)?).ok_or(corrupt)?;
        let at = module_offset(name_len).ok_or(corrupt)?;
        let module = bytes.get(at..at.checked_add(module_len).ok_or(corrupt)?).ok_or(corrupt)?;
        Ok(Payload { flags, name, module })
    })())
}

fn field<const N: usize>(d: &[u8], o: usize) -> Result<[u8; N], String> {
    d.get(o..o + N).and_then(|b| b.try_into().ok()).ok_or_else(|| "the ELF file is truncated".into())
}

/// `elf` (an ELF64 executable) with `payload` appended as a new read-only `PT_LOAD` segment at
/// the first page after its highest segment; the program header table moves to the end of the
/// file (the kernel's loader reads it wherever `e_phoff` says).
pub fn append_segment(elf: &[u8], payload: &[u8]) -> Result<Vec<u8>, String> {
    if elf.get(..5) != Some(b"\x7fELF\x02") {
        return Err("not an ELF64 file".into());
    }
    let phoff = usize::try_from(u64::from_le_bytes(field(elf, 32)?)).map_err(|_| "bad e_phoff")?;
    let phentsize = usize::from(u16::from_le_bytes(field(elf, 54)?));
    let phnum = usize::from(u16::from_le_bytes(field(elf, 56)?));
    if phentsize != 56 {
        return Err(format!("program header entries of {phentsize} bytes"));
    }
    let table = phoff.checked_add(phnum * 56).and_then(|end| elf.get(phoff..end)).ok_or("the program headers lie beyond the end of the file")?;
    let mut top = 0u64;
    for ph in table.chunks(56) {
        if u32::from_le_bytes(field(ph, 0)?) == 1 {
            let end = u64::from_le_bytes(field(ph, 16)?).checked_add(u64::from_le_bytes(field(ph, 40)?)).ok_or("a segment wraps")?;
            top = top.max(end);
        }
    }
    let vaddr = top.checked_next_multiple_of(PAGE).ok_or("a segment wraps")?;
    let phnum = u16::try_from(phnum + 1).map_err(|_| "too many program headers")?;
    let mut out = elf.to_vec();
    out.resize(out.len().next_multiple_of(PAGE as usize), 0);
    let offset = out.len() as u64;
    out.extend_from_slice(payload);
    out.resize(out.len().next_multiple_of(8), 0);
    let new_phoff = out.len() as u64;
    out.extend_from_slice(table);
    out.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    out.extend_from_slice(&4u32.to_le_bytes()); // PF_R
    for v in [offset, vaddr, vaddr, payload.len() as u64, payload.len() as u64, PAGE] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out[32..40].copy_from_slice(&new_phoff.to_le_bytes());
    out[56..58].copy_from_slice(&phnum.to_le_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 header with one PT_LOAD at 0x1000 of memory size 0x1800 and its table at 64.
    fn tiny_elf() -> Vec<u8> {
        let mut e = alloc::vec![0u8; 64 + 56];
        e[..5].copy_from_slice(b"\x7fELF\x02");
        e[32..40].copy_from_slice(&64u64.to_le_bytes());
        e[54..56].copy_from_slice(&56u16.to_le_bytes());
        e[56..58].copy_from_slice(&1u16.to_le_bytes());
        e[64..68].copy_from_slice(&1u32.to_le_bytes());
        e[80..88].copy_from_slice(&0x1000u64.to_le_bytes());
        e[104..112].copy_from_slice(&0x1800u64.to_le_bytes());
        e
    }

    #[test]
    fn payload_round_trips() {
        let p = payload("prog.wasm", &[1, 2, 3], FLAG_REPORT);
        assert_eq!(p.len(), 48 + 3);
        let parsed = parse(&p).unwrap().unwrap();
        assert_eq!(parsed, Payload { flags: 1, name: b"prog.wasm", module: &[1, 2, 3] });
        // Trailing bytes (the rest of the page) are ignored.
        let mut longer = p.clone();
        longer.extend_from_slice(&[0; 100]);
        assert_eq!(parse(&longer).unwrap().unwrap().module, &[1, 2, 3]);
        // Truncated or lying headers are errors; no magic is None.
        assert!(parse(&p[..p.len() - 1]).unwrap().is_err());
        assert!(parse(&p[..20]).unwrap().is_err());
        let mut huge = p.clone();
        huge[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(parse(&huge).unwrap().is_err());
        huge[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse(&huge).unwrap().is_err());
        assert!(parse(b"VMKWASM0 and more bytes than a header").is_none());
        assert!(parse(b"short").is_none());
    }

    #[test]
    fn segment_is_appended_after_the_highest_one() {
        let p = payload("m", &[7; 5000], 0);
        let out = append_segment(&tiny_elf(), &p).unwrap();
        assert_eq!(u16::from_le_bytes(field(&out, 56).unwrap()), 2);
        let phoff = u64::from_le_bytes(field(&out, 32).unwrap()) as usize;
        assert_eq!(&out[phoff..phoff + 56], &tiny_elf()[64..120], "the old entries are kept");
        let new = &out[phoff + 56..phoff + 112];
        let word = |o| u64::from_le_bytes(field(new, o).unwrap());
        assert_eq!(u32::from_le_bytes(field(new, 0).unwrap()), 1);
        assert_eq!(u32::from_le_bytes(field(new, 4).unwrap()), 4);
        let (off, vaddr, filesz, memsz) = (word(8), word(16), word(32), word(40));
        assert_eq!(vaddr, 0x3000);
        assert_eq!(off % PAGE, 0);
        assert_eq!((filesz, memsz), (p.len() as u64, p.len() as u64));
        assert_eq!(&out[off as usize..(off + filesz) as usize], &p[..]);
        let elf = tiny_elf();
        assert_eq!((&out[..32], &out[40..56], &out[58..120]), (&elf[..32], &elf[40..56], &elf[58..120]), "only e_phoff and e_phnum change");
    }

    #[test]
    fn bad_elf_files_are_refused() {
        let p = payload("m", &[], 0);
        assert!(append_segment(b"not an elf", &p).is_err());
        let mut e = tiny_elf();
        e[54..56].copy_from_slice(&32u16.to_le_bytes());
        assert!(append_segment(&e, &p).is_err());
        let mut e = tiny_elf();
        e[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(append_segment(&e, &p).is_err());
        let mut e = tiny_elf();
        e[104..112].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(append_segment(&e, &p).is_err());
    }
}
