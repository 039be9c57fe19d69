//! Parsing and checking a guest's ELF file (host-abi §1).
//!
//! Accepted: ELF64, little-endian, `EM_X86_64`, `ET_EXEC` linked inside the user range or `ET_DYN`
//! (static PIE) whose dynamic relocations are all `R_X86_64_RELATIVE` (or `R_X86_64_NONE`). Refused,
//! each with a message naming the reason: anything else, an interpreter (`PT_INTERP`), shared-library
//! dependencies (`DT_NEEDED`), PLT relocations, segments outside the user range, overlapping
//! segments, a file too short for what its headers claim, and an image in which any page would be
//! both writable and executable (the union of the rights of the segments sharing a page, as the
//! image's pages get one protection each): W^X is enforced by refusal, not by splitting.
//!
//! The file is a byte slice in kernel memory (copied from the ramdisk); every offset is checked
//! before it is used, so a malformed file is an error, never a panic.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const PF_X: u32 = 1;
const PF_W: u32 = 2;
const PF_R: u32 = 4;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const DT_PLTRELSZ: u64 = 2;
const DT_RELA: u64 = 7;
const DT_RELASZ: u64 = 8;
const DT_RELAENT: u64 = 9;
const DT_REL: u64 = 17;
const DT_RELSZ: u64 = 18;
const R_X86_64_NONE: u32 = 0;
const R_X86_64_RELATIVE: u32 = 8;
const PAGE: u64 = 4096;

/// A loadable segment, at its link-time address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Link-time virtual address.
    pub vaddr: u64,
    /// Size in memory (the part past `file_size` is zero).
    pub mem_size: u64,
    /// Offset of its bytes in the file.
    pub file_offset: u64,
    /// Bytes present in the file.
    pub file_size: u64,
    /// Readable / writable / executable.
    pub read: bool,
    /// Writable.
    pub write: bool,
    /// Executable.
    pub execute: bool,
}

/// A checked guest image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestImage {
    /// Whether addresses are relative to a load base chosen by the loader (`ET_DYN`).
    pub relocatable: bool,
    /// Entry point, link-time address.
    pub entry: u64,
    /// Loadable segments.
    pub segments: Vec<Segment>,
    /// `R_X86_64_RELATIVE` relocations: (link-time offset, addend).
    pub relocations: Vec<(u64, u64)>,
    /// Lowest page of the image (link-time).
    pub low: u64,
    /// End of the image, page-rounded (link-time).
    pub high: u64,
}

fn rd<const N: usize>(data: &[u8], off: u64) -> Result<[u8; N], String> {
    let start = usize::try_from(off).map_err(|_| String::from("offset out of range"))?;
    let end = start.checked_add(N).ok_or_else(|| String::from("offset out of range"))?;
    data.get(start..end)
        .map(|s| s.try_into().expect("slice of N bytes"))
        .ok_or_else(|| format!("the file is too short (needs bytes {start:#x}..{end:#x}, has {:#x})", data.len()))
}
fn u16_at(d: &[u8], o: u64) -> Result<u16, String> {
    rd::<2>(d, o).map(u16::from_le_bytes)
}
fn u32_at(d: &[u8], o: u64) -> Result<u32, String> {
    rd::<4>(d, o).map(u32::from_le_bytes)
}
fn u64_at(d: &[u8], o: u64) -> Result<u64, String> {
    rd::<8>(d, o).map(u64::from_le_bytes)
}

/// Parses and checks `data` (see the module docs). `user_min..user_end` is the user range a
/// non-relocatable image must fit in; a relocatable one must fit once placed, which the loader checks.
pub fn parse(data: &[u8], user_min: u64, user_end: u64) -> Result<GuestImage, String> {
    if data.len() < 64 || &data[..4] != b"\x7fELF" {
        return Err("not an ELF file".into());
    }
    if data[4] != 2 {
        return Err("not a 64-bit ELF file".into());
    }
    if data[5] != 1 {
        return Err("not little-endian".into());
    }
    let e_type = u16_at(data, 16)?;
    let machine = u16_at(data, 18)?;
    if machine != 62 {
        return Err(format!("wrong machine {machine} (expected x86-64, 62)"));
    }
    let relocatable = match e_type {
        2 => false,
        3 => true,
        t => return Err(format!("ELF type {t} is neither an executable (2) nor a static PIE (3)")),
    };
    let entry = u64_at(data, 24)?;
    let phoff = u64_at(data, 32)?;
    let phentsize = u16_at(data, 54)? as u64;
    let phnum = u16_at(data, 56)? as u64;
    if phentsize < 56 {
        return Err(format!("program header entries of {phentsize} bytes"));
    }
    let mut segments = Vec::new();
    let mut dynamic = None;
    for i in 0..phnum {
        let ph = phoff.checked_add(i * phentsize).ok_or("program header offset overflows")?;
        let kind = u32_at(data, ph)?;
        let flags = u32_at(data, ph + 4)?;
        let offset = u64_at(data, ph + 8)?;
        let vaddr = u64_at(data, ph + 16)?;
        let file_size = u64_at(data, ph + 32)?;
        let mem_size = u64_at(data, ph + 40)?;
        match kind {
            PT_INTERP => return Err("it asks for an interpreter (PT_INTERP): only static executables run here".into()),
            PT_DYNAMIC => dynamic = Some((offset, file_size)),
            PT_LOAD if mem_size > 0 => {
                if file_size > mem_size {
                    return Err(format!("segment {i}: file size {file_size:#x} exceeds memory size {mem_size:#x}"));
                }
                if offset.checked_add(file_size).is_none_or(|end| end > data.len() as u64) {
                    return Err(format!("segment {i}: its bytes lie beyond the end of the file"));
                }
                if vaddr.checked_add(mem_size).is_none() {
                    return Err(format!("segment {i}: address range wraps"));
                }
                if flags & PF_W != 0 && flags & PF_X != 0 {
                    return Err(format!("segment {i} at {vaddr:#x} is writable and executable (W^X: refused)"));
                }
                segments.push(Segment {
                    vaddr,
                    mem_size,
                    file_offset: offset,
                    file_size,
                    read: flags & PF_R != 0,
                    write: flags & PF_W != 0,
                    execute: flags & PF_X != 0,
                });
            }
            _ => {}
        }
    }
    if segments.is_empty() {
        return Err("no loadable segment".into());
    }
    segments.sort_by_key(|s| s.vaddr);
    for w in segments.windows(2) {
        if w[0].vaddr + w[0].mem_size > w[1].vaddr {
            return Err(format!("segments at {:#x} and {:#x} overlap", w[0].vaddr, w[1].vaddr));
        }
    }
    let low = segments[0].vaddr & !(PAGE - 1);
    let last = segments.last().expect("non-empty");
    let high = (last.vaddr + last.mem_size).div_ceil(PAGE) * PAGE;
    // Pages shared by two segments get the union of their rights: refuse W+X unions.
    for w in segments.windows(2) {
        let last_page = (w[0].vaddr + w[0].mem_size - 1) & !(PAGE - 1);
        let first_page = w[1].vaddr & !(PAGE - 1);
        if last_page == first_page && (w[0].write || w[1].write) && (w[0].execute || w[1].execute) {
            return Err(format!("page {first_page:#x} is shared by a writable and an executable segment (W^X: refused)"));
        }
    }
    if !relocatable && (low < user_min || high > user_end) {
        return Err(format!("segments at {low:#x}..{high:#x} lie outside user space ({user_min:#x}..{user_end:#x})"));
    }
    if relocatable && high - low > user_end - user_min {
        return Err("the image is larger than user space".into());
    }
    if !(low..high).contains(&entry) || !segments.iter().any(|s| s.execute && (s.vaddr..s.vaddr + s.mem_size).contains(&entry)) {
        return Err(format!("entry point {entry:#x} is not in an executable segment"));
    }
    let relocations = match dynamic {
        Some((off, size)) => parse_dynamic(data, off, size, relocatable, low, high)?,
        None => Vec::new(),
    };
    Ok(GuestImage { relocatable, entry, segments, relocations, low, high })
}

/// Translates a link-time address inside a segment to a file offset (for DT_RELA).
fn file_offset_of(data: &[u8], vaddr: u64) -> Option<u64> {
    // Parse again lazily: the dynamic table's pointers are addresses, not offsets.
    let phoff = u64_at(data, 32).ok()?;
    let phentsize = u16_at(data, 54).ok()? as u64;
    let phnum = u16_at(data, 56).ok()? as u64;
    (0..phnum).find_map(|i| {
        let ph = phoff + i * phentsize;
        let kind = u32_at(data, ph).ok()?;
        let offset = u64_at(data, ph + 8).ok()?;
        let va = u64_at(data, ph + 16).ok()?;
        let file_size = u64_at(data, ph + 32).ok()?;
        (kind == PT_LOAD && (va..va + file_size).contains(&vaddr)).then(|| offset + (vaddr - va))
    })
}

fn parse_dynamic(data: &[u8], off: u64, size: u64, relocatable: bool, low: u64, high: u64) -> Result<Vec<(u64, u64)>, String> {
    let (mut rela, mut relasz, mut relaent) = (None, 0u64, 24u64);
    let mut i = 0;
    while i + 16 <= size {
        let tag = u64_at(data, off + i)?;
        let val = u64_at(data, off + i + 8)?;
        match tag {
            DT_NULL => break,
            DT_NEEDED => return Err("it needs shared libraries (DT_NEEDED)".into()),
            DT_PLTRELSZ if val > 0 => return Err("it has PLT relocations (only R_X86_64_RELATIVE is supported)".into()),
            DT_REL | DT_RELSZ if val > 0 => return Err("it has REL relocations (only RELA R_X86_64_RELATIVE is supported)".into()),
            DT_RELA => rela = Some(val),
            DT_RELASZ => relasz = val,
            DT_RELAENT => relaent = val,
            _ => {}
        }
        i += 16;
    }
    let Some(rela) = rela else { return Ok(Vec::new()) };
    if relaent != 24 {
        return Err(format!("RELA entries of {relaent} bytes"));
    }
    let start = file_offset_of(data, rela).ok_or("the relocation table is not in the file")?;
    let mut out = Vec::new();
    for k in 0..relasz / 24 {
        let e = start + k * 24;
        let r_offset = u64_at(data, e)?;
        let r_info = u64_at(data, e + 8)?;
        let addend = u64_at(data, e + 16)?;
        match r_info as u32 {
            R_X86_64_NONE => {}
            R_X86_64_RELATIVE => {
                if !relocatable {
                    return Err("R_X86_64_RELATIVE in a non-relocatable executable".into());
                }
                if r_offset < low || r_offset.checked_add(8).is_none_or(|end| end > high) {
                    return Err(format!("relocation at {r_offset:#x} lies outside the image"));
                }
                out.push((r_offset, addend));
            }
            t => return Err(format!("unsupported relocation type {t} (only R_X86_64_RELATIVE)")),
        }
    }
    Ok(out)
}
