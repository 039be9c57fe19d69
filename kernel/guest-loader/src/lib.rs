//! The guest ELF loader's parser and layout policy (host-abi §1), arch-neutral and host-tested.
//!
//! [`Image::parse`] turns a file into a checked, placed image or a [`LoadError`] naming the reason:
//! never a panic, never an overflow, in debug and release builds alike. The ELF structures are
//! read by the `object` crate (zero-copy views of the file: header, program headers, dynamic
//! entries, RELA records); what is ours is the policy:
//!
//! - ELF64, little-endian, `EM_X86_64`; `ET_EXEC` linked inside the user range, or `ET_DYN`
//!   (static PIE) placed at [`Policy::pie_base`]. No `PT_INTERP`, no `DT_NEEDED`, no PLT, REL or
//!   RELR relocations; RELA relocations only `R_X86_64_RELATIVE` (or `NONE`), each inside the
//!   image, and none in an `ET_EXEC`.
//! - `PT_LOAD` segments (those with `p_memsz` 0 and `p_filesz` 0 map nothing and are skipped):
//!   `p_filesz <= p_memsz`, bytes inside the file, page-rounded range not wrapping, in ascending
//!   order (as the ELF specification requires) and disjoint, at most [`MAX_PROGRAM_HEADERS`]
//!   headers in all.
//! - W^X by refusal: no segment both writable and executable, and no page shared by a writable
//!   and an executable segment (a page gets the union of the rights of the segments on it).
//! - The image (lowest to highest segment page) spans at most [`Policy::max_image_size`], starts
//!   aligned to [`Policy::base_alignment`] (64 KiB: the allocation granularity) and lies inside
//!   `user_min..user_end`; the entry point is inside an executable segment.
//! - `PT_GNU_RELRO`: the pages wholly inside it (start and end rounded down, as glibc's `ld.so`
//!   does) lose their write right once relocated — [`Image::page_rights`] reports them without it.
//!
//! Nothing here allocates: an [`Image`] borrows the file, [`Image::segments`],
//! [`Image::page_rights`] and [`Image::relocations`] are iterators over it. Relocations are all
//! checked by `parse` (one pass over the table) and then streamed by the caller while it applies
//! them, so a file with 600,000 relocations costs the kernel no heap for them. Every loop is
//! bounded by the file: headers by [`MAX_PROGRAM_HEADERS`], pages by the maximum image size,
//! relocations by the file's length.
#![no_std]
#![forbid(unsafe_code)]

#[cfg(feature = "build")]
extern crate alloc;

#[cfg(feature = "build")]
pub mod build;
mod error;

pub use error::LoadError;

use object::elf::{self, FileHeader64, ProgramHeader64, Rela64};
use object::read::elf::{Dyn as _, FileHeader as _, ProgramHeader as _};
use object::{LittleEndian, ReadRef};

const LE: LittleEndian = LittleEndian;

/// The page size (host-abi's, the one definition).
pub use host_abi::win32::PAGE_SIZE;
/// Most program headers a file may have (gcc and lld write about ten).
pub const MAX_PROGRAM_HEADERS: usize = 64;
/// Size of one RELA record.
const RELA_SIZE: u64 = 24;
/// `DT_RELRSZ` and `DT_RELR` (packed relative relocations; not in `object`'s constants).
const DT_RELRSZ: u32 = 35;
const DT_RELR: u32 = 36;

/// Where and how large an image may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Lowest address an image may use.
    pub user_min: u64,
    /// End (exclusive) of the range an image must fit in.
    pub user_end: u64,
    /// Most bytes from the lowest to the highest segment page.
    pub max_image_size: u64,
    /// Alignment of the image's start (64 KiB, the allocation granularity).
    pub base_alignment: u64,
    /// Where a static PIE's lowest page goes.
    pub pie_base: u64,
}

/// Access rights of a segment or a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rights {
    /// Readable.
    pub read: bool,
    /// Writable.
    pub write: bool,
    /// Executable.
    pub execute: bool,
}

impl Rights {
    fn of(flags: u32) -> Rights {
        Rights { read: flags & elf::PF_R != 0, write: flags & elf::PF_W != 0, execute: flags & elf::PF_X != 0 }
    }

    fn union(self, other: Rights) -> Rights {
        Rights { read: self.read || other.read, write: self.write || other.write, execute: self.execute || other.execute }
    }
}

/// A loadable segment at its load address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment<'a> {
    /// Load address (`p_vaddr` moved by the image's bias).
    pub address: u64,
    /// Size in memory; the part past `bytes` is zero.
    pub mem_size: u64,
    /// The segment's bytes in the file.
    pub bytes: &'a [u8],
    /// Its rights from `p_flags`.
    pub rights: Rights,
}

/// An applied `R_X86_64_RELATIVE` relocation: write `value` (8 bytes, little-endian) at `address`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relocation {
    /// Load address of the 8 bytes.
    pub address: u64,
    /// The addend moved by the image's bias.
    pub value: u64,
}

/// A checked, placed guest image borrowing its file.
#[derive(Debug, Clone, Copy)]
pub struct Image<'a> {
    file: &'a [u8],
    headers: &'a [ProgramHeader64<LittleEndian>],
    relocations: &'a [Rela64<LittleEndian>],
    relocatable: bool,
    /// Load address minus link-time address (wrapping).
    bias: u64,
    /// Lowest segment page and end of the highest one, link-time.
    low: u64,
    high: u64,
    entry: u64,
    /// Read-only-after-relocation pages, link-time, page-aligned (empty if `start == end`).
    relro: (u64, u64),
}

fn page_down(v: u64) -> u64 {
    v - v % PAGE_SIZE
}

fn page_up(v: u64) -> Option<u64> {
    v.checked_add(PAGE_SIZE - 1).map(page_down)
}

/// The `PT_LOAD` headers that map something, with their indices.
fn loads<'a>(headers: &'a [ProgramHeader64<LittleEndian>]) -> impl Iterator<Item = (usize, &'a ProgramHeader64<LittleEndian>)> + 'a {
    headers
        .iter()
        .enumerate()
        .filter(|(_, h)| h.p_type(LE) == elf::PT_LOAD && (h.p_memsz(LE) != 0 || h.p_filesz(LE) != 0))
}

/// `[p_vaddr, p_vaddr + p_memsz)` of a checked load header.
fn range(h: &ProgramHeader64<LittleEndian>) -> (u64, u64) {
    let start = h.p_vaddr(LE);
    (start, start.saturating_add(h.p_memsz(LE)))
}

impl<'a> Image<'a> {
    /// Checks `file` against the policy (module docs) and places it.
    ///
    /// # Errors
    ///
    /// A [`LoadError`] naming the first reason the file is refused.
    pub fn parse(file: &'a [u8], policy: &Policy) -> Result<Image<'a>, LoadError> {
        let header = file_header(file)?;
        let relocatable = match header.e_type(LE) {
            elf::ET_EXEC => false,
            elf::ET_DYN => true,
            t => return Err(LoadError::WrongType(t)),
        };
        let headers = program_headers(header, file)?;
        let (mut dynamic, mut relro) = (None, None);
        let mut previous: Option<&ProgramHeader64<LittleEndian>> = None;
        let (mut low, mut high) = (0, 0);
        for (index, h) in headers.iter().enumerate() {
            match h.p_type(LE) {
                elf::PT_INTERP => return Err(LoadError::Interpreter),
                elf::PT_DYNAMIC => {
                    if dynamic.replace(h).is_some() {
                        return Err(LoadError::DuplicateHeader("PT_DYNAMIC"));
                    }
                }
                elf::PT_GNU_RELRO => {
                    if relro.replace(h).is_some() {
                        return Err(LoadError::DuplicateHeader("PT_GNU_RELRO"));
                    }
                }
                elf::PT_LOAD if h.p_memsz(LE) != 0 || h.p_filesz(LE) != 0 => {
                    let (start, end, page_end) = check_load(file, index, h)?;
                    if let Some(p) = previous {
                        let (p_start, p_end) = range(p);
                        if start < p_end && p_start < end {
                            return Err(LoadError::Overlap { first: p_start, second: start });
                        }
                        if start < p_start {
                            return Err(LoadError::NotAscending { index });
                        }
                        let shared = page_down(p_end - 1) == page_down(start);
                        let rights = Rights::of(p.p_flags(LE)).union(Rights::of(h.p_flags(LE)));
                        if shared && rights.write && rights.execute {
                            return Err(LoadError::SharedPageWritableExecutable { page: page_down(start) });
                        }
                    } else {
                        low = page_down(start);
                    }
                    high = page_end;
                    previous = Some(h);
                }
                _ => {}
            }
        }
        if previous.is_none() {
            return Err(LoadError::NoLoadableSegment);
        }
        let size = high - low;
        if size > policy.max_image_size {
            return Err(LoadError::TooLarge { size, max: policy.max_image_size });
        }
        let base = if relocatable { policy.pie_base } else { low };
        if policy.base_alignment == 0 || !base.is_multiple_of(policy.base_alignment) {
            return Err(LoadError::Unaligned { base, alignment: policy.base_alignment });
        }
        match base.checked_add(size) {
            Some(end) if base >= policy.user_min && end <= policy.user_end => {}
            end => {
                let end = end.unwrap_or(u64::MAX);
                return Err(LoadError::OutsideUserSpace { start: base, end, user_min: policy.user_min, user_end: policy.user_end });
            }
        }
        let entry = header.e_entry(LE);
        let executable = loads(headers).any(|(_, h)| {
            let (start, end) = range(h);
            h.p_flags(LE) & elf::PF_X != 0 && (start..end).contains(&entry)
        });
        if !executable {
            return Err(LoadError::EntryNotExecutable(entry));
        }
        let relro = match relro {
            Some(h) => relro_pages(h, low, high)?,
            None => (low, low),
        };
        let mut image = Image { file, headers, relocations: &[], relocatable, bias: base.wrapping_sub(low), low, high, entry, relro };
        if let Some(h) = dynamic {
            image.relocations = image.relocation_table(h)?;
            image.check_relocations()?;
        }
        Ok(image)
    }

    /// Whether the image was moved (`ET_DYN`).
    pub fn relocatable(&self) -> bool {
        self.relocatable
    }

    /// Load address of the image's lowest page.
    pub fn base(&self) -> u64 {
        self.low.wrapping_add(self.bias)
    }

    /// Bytes from the lowest to the end of the highest segment page.
    pub fn size(&self) -> u64 {
        self.high - self.low
    }

    /// Pages of the image.
    pub fn pages(&self) -> u64 {
        self.size() / PAGE_SIZE
    }

    /// Load address of the entry point.
    pub fn entry(&self) -> u64 {
        self.entry.wrapping_add(self.bias)
    }

    /// The load-address page range made read-only after relocation (`PT_GNU_RELRO`), if any.
    pub fn relro(&self) -> Option<(u64, u64)> {
        (self.relro.0 < self.relro.1).then(|| (self.relro.0.wrapping_add(self.bias), self.relro.1.wrapping_add(self.bias)))
    }

    /// The loadable segments in address order.
    pub fn segments(&self) -> impl Iterator<Item = Segment<'a>> + 'a {
        let (file, bias) = (self.file, self.bias);
        loads(self.headers).map(move |(_, h)| {
            let (offset, size) = (h.p_offset(LE) as usize, h.p_filesz(LE) as usize);
            Segment {
                address: h.p_vaddr(LE).wrapping_add(bias),
                mem_size: h.p_memsz(LE),
                // check_load made sure the range is inside the file.
                bytes: file.get(offset..offset + size).unwrap_or_default(),
                rights: Rights::of(h.p_flags(LE)),
            }
        })
    }

    /// The rights of each page from [`base`](Self::base) on ([`pages`](Self::pages) items): the
    /// union of the rights of the segments on it, without write inside the RELRO range.
    pub fn page_rights(&self) -> impl Iterator<Item = Rights> + 'a {
        let (headers, low, relro) = (self.headers, self.low, self.relro);
        // Index of the first header that may still touch the current page (loads ascend).
        let mut first = 0;
        (0..self.pages()).map(move |i| {
            let page = low + i * PAGE_SIZE;
            let mut rights = Rights::default();
            for (k, h) in headers.iter().enumerate().skip(first) {
                if h.p_type(LE) != elf::PT_LOAD || (h.p_memsz(LE) == 0 && h.p_filesz(LE) == 0) {
                    continue;
                }
                let (start, end) = range(h);
                if end <= page {
                    first = k + 1;
                    continue;
                }
                if start >= page + PAGE_SIZE {
                    break;
                }
                rights = rights.union(Rights::of(h.p_flags(LE)));
            }
            if (relro.0..relro.1).contains(&page) {
                rights.write = false;
            }
            rights
        })
    }

    /// The `R_X86_64_RELATIVE` relocations to apply, in table order (all checked by `parse`).
    pub fn relocations(&self) -> impl Iterator<Item = Relocation> + 'a {
        let bias = self.bias;
        self.relocations.iter().filter(|r| r.r_type(LE, false) == elf::R_X86_64_RELATIVE).map(move |r| Relocation {
            address: r.r_offset.get(LE).wrapping_add(bias),
            value: (r.r_addend.get(LE) as u64).wrapping_add(bias),
        })
    }

    /// The RELA table named by the dynamic section `h`, or an empty one.
    fn relocation_table(&self, h: &ProgramHeader64<LittleEndian>) -> Result<&'a [Rela64<LittleEndian>], LoadError> {
        let entries = h.dynamic(LE, self.file).ok().flatten().ok_or(LoadError::DynamicBeyondFile)?;
        let (mut rela, mut size, mut entry_size) = (None, 0, RELA_SIZE);
        for d in entries {
            let value = d.d_val(LE);
            // Tags above 32 bits are none this loader knows.
            let Ok(tag) = u32::try_from(d.d_tag(LE)) else { continue };
            match tag {
                elf::DT_NULL => break,
                elf::DT_NEEDED => return Err(LoadError::NeedsLibraries),
                elf::DT_JMPREL | elf::DT_PLTRELSZ if value > 0 => return Err(LoadError::PltRelocations),
                elf::DT_REL | elf::DT_RELSZ if value > 0 => return Err(LoadError::RelRelocations),
                DT_RELR | DT_RELRSZ if value > 0 => return Err(LoadError::PackedRelocations),
                elf::DT_RELA => rela = Some(value),
                elf::DT_RELASZ => size = value,
                elf::DT_RELAENT => entry_size = value,
                _ => {}
            }
        }
        let Some(address) = rela.filter(|_| size > 0) else { return Ok(&[]) };
        if entry_size != RELA_SIZE {
            return Err(LoadError::RelaEntrySize(entry_size));
        }
        if !size.is_multiple_of(RELA_SIZE) {
            return Err(LoadError::RelaSize(size));
        }
        let not_in_file = LoadError::RelaNotInFile { address, size };
        let end = address.checked_add(size).ok_or(not_in_file)?;
        let offset = loads(self.headers)
            .find_map(|(_, h)| {
                let start = h.p_vaddr(LE);
                let file_end = start.checked_add(h.p_filesz(LE))?;
                (start <= address && end <= file_end).then(|| h.p_offset(LE) + (address - start))
            })
            .ok_or(not_in_file)?;
        self.file.read_slice_at(offset, (size / RELA_SIZE) as usize).map_err(|()| not_in_file)
    }

    /// Checks every relocation: type, and its 8 bytes inside the image.
    fn check_relocations(&self) -> Result<(), LoadError> {
        for (index, r) in self.relocations.iter().enumerate() {
            match r.r_type(LE, false) {
                elf::R_X86_64_NONE => {}
                elf::R_X86_64_RELATIVE => {
                    if !self.relocatable {
                        return Err(LoadError::RelativeInFixedImage);
                    }
                    let offset = r.r_offset.get(LE);
                    if offset < self.low || offset.checked_add(8).is_none_or(|end| end > self.high) {
                        return Err(LoadError::RelocationOutsideImage { index, offset });
                    }
                }
                r_type => return Err(LoadError::UnsupportedRelocation { index, r_type }),
            }
        }
        Ok(())
    }
}

/// The file header, with the identification checked field by field for precise messages.
fn file_header(file: &[u8]) -> Result<&FileHeader64<LittleEndian>, LoadError> {
    if file.get(..4) != Some(&elf::ELFMAG[..]) {
        return Err(LoadError::NotElf);
    }
    let ident = |i: usize| file.get(i).copied();
    if ident(4) != Some(elf::ELFCLASS64) {
        return Err(LoadError::Not64Bit);
    }
    if ident(5) != Some(elf::ELFDATA2LSB) {
        return Err(LoadError::NotLittleEndian);
    }
    if let Some(v) = ident(6).filter(|&v| v != elf::EV_CURRENT) {
        return Err(LoadError::BadVersion(v));
    }
    let header = FileHeader64::<LittleEndian>::parse(file).map_err(|_| LoadError::TruncatedHeader { len: file.len() })?;
    let machine = header.e_machine(LE);
    if machine != elf::EM_X86_64 {
        return Err(LoadError::WrongMachine(machine));
    }
    Ok(header)
}

fn program_headers<'a>(header: &FileHeader64<LittleEndian>, file: &'a [u8]) -> Result<&'a [ProgramHeader64<LittleEndian>], LoadError> {
    let entry_size = header.e_phentsize(LE);
    if header.e_phnum(LE) != 0 && usize::from(entry_size) != core::mem::size_of::<ProgramHeader64<LittleEndian>>() {
        return Err(LoadError::ProgramHeaderSize(entry_size));
    }
    let headers = header.program_headers(LE, file).map_err(|_| LoadError::ProgramHeadersBeyondFile)?;
    if headers.len() > MAX_PROGRAM_HEADERS {
        return Err(LoadError::TooManyProgramHeaders(headers.len()));
    }
    Ok(headers)
}

/// Checks one `PT_LOAD` that maps something; returns its link-time `[start, end)` and `end`
/// rounded up to a page.
fn check_load(file: &[u8], index: usize, h: &ProgramHeader64<LittleEndian>) -> Result<(u64, u64, u64), LoadError> {
    let (offset, file_size, vaddr, mem_size) = (h.p_offset(LE), h.p_filesz(LE), h.p_vaddr(LE), h.p_memsz(LE));
    if file_size > mem_size {
        return Err(LoadError::FileSizeExceedsMemSize { index, file_size, mem_size });
    }
    if offset.checked_add(file_size).is_none_or(|end| end > file.len() as u64) {
        return Err(LoadError::SegmentBeyondFile { index, offset, file_size });
    }
    let ends = vaddr.checked_add(mem_size).and_then(|end| Some((end, page_up(end)?)));
    let Some((end, page_end)) = ends else { return Err(LoadError::SegmentWraps { index, vaddr, mem_size }) };
    if h.p_flags(LE) & elf::PF_W != 0 && h.p_flags(LE) & elf::PF_X != 0 {
        return Err(LoadError::WritableExecutable { index, vaddr });
    }
    Ok((vaddr, end, page_end))
}

/// The pages wholly inside `PT_GNU_RELRO` (both ends rounded down, as `ld.so` does).
fn relro_pages(h: &ProgramHeader64<LittleEndian>, low: u64, high: u64) -> Result<(u64, u64), LoadError> {
    let (vaddr, mem_size) = (h.p_vaddr(LE), h.p_memsz(LE));
    let outside = LoadError::RelroOutsideImage { vaddr, mem_size };
    let end = vaddr.checked_add(mem_size).ok_or(outside)?;
    let (start, end) = (page_down(vaddr), page_down(end));
    if start >= end {
        return Ok((low, low));
    }
    if start < low || end > high {
        return Err(outside);
    }
    Ok((start, end))
}
