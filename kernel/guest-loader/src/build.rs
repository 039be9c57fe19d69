//! A small ELF64 writer for tests (feature `build`): the host tests and the kernel's QEMU test
//! images make well-formed files with it and then break them on purpose.

use alloc::vec;
use alloc::vec::Vec;

use object::elf;

use crate::PAGE_SIZE;

/// One program header to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// `p_type`.
    pub p_type: u32,
    /// `p_flags`.
    pub flags: u32,
    /// `p_offset`.
    pub offset: u64,
    /// `p_vaddr` (and `p_paddr`).
    pub vaddr: u64,
    /// `p_filesz`.
    pub file_size: u64,
    /// `p_memsz`.
    pub mem_size: u64,
}

/// Size of the ELF header; the program headers follow it.
pub const EHDR_SIZE: usize = 64;
/// Size of one program header.
pub const PHDR_SIZE: usize = 56;

/// Writes an x86-64 ELF64 file of at least `len` bytes (zero-filled) with `headers` right after
/// the ELF header.
pub fn elf_file(e_type: u16, entry: u64, headers: &[Header], len: usize) -> Vec<u8> {
    let table_end = EHDR_SIZE + headers.len() * PHDR_SIZE;
    let mut f = vec![0u8; len.max(table_end)];
    f[..4].copy_from_slice(&elf::ELFMAG);
    f[4] = elf::ELFCLASS64;
    f[5] = elf::ELFDATA2LSB;
    f[6] = elf::EV_CURRENT;
    put(&mut f, 16, &e_type.to_le_bytes());
    put(&mut f, 18, &elf::EM_X86_64.to_le_bytes());
    put(&mut f, 20, &1u32.to_le_bytes());
    put(&mut f, 24, &entry.to_le_bytes());
    put(&mut f, 32, &(EHDR_SIZE as u64).to_le_bytes());
    put(&mut f, 52, &(EHDR_SIZE as u16).to_le_bytes());
    put(&mut f, 54, &(PHDR_SIZE as u16).to_le_bytes());
    put(&mut f, 56, &(headers.len() as u16).to_le_bytes());
    for (i, h) in headers.iter().enumerate() {
        let o = EHDR_SIZE + i * PHDR_SIZE;
        put(&mut f, o, &h.p_type.to_le_bytes());
        put(&mut f, o + 4, &h.flags.to_le_bytes());
        put(&mut f, o + 8, &h.offset.to_le_bytes());
        put(&mut f, o + 16, &h.vaddr.to_le_bytes());
        put(&mut f, o + 24, &h.vaddr.to_le_bytes());
        put(&mut f, o + 32, &h.file_size.to_le_bytes());
        put(&mut f, o + 40, &h.mem_size.to_le_bytes());
        put(&mut f, o + 48, &PAGE_SIZE.to_le_bytes());
    }
    f
}

/// Copies `bytes` into `file` at `offset`.
///
/// # Panics
///
/// If the range is not inside `file` (a test bug).
pub fn put(file: &mut [u8], offset: usize, bytes: &[u8]) {
    file[offset..offset + bytes.len()].copy_from_slice(bytes);
}

/// Where [`static_pie`] puts things (link-time addresses equal file offsets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PieLayout {
    /// The dynamic section (in the read-only segment).
    pub dynamic: u64,
    /// The RELA table.
    pub rela: u64,
    /// The code page (`xor eax, eax; ret`), also the entry point.
    pub text: u64,
    /// The data segment: one RELRO page, then zero-filled data.
    pub data: u64,
    /// The data segment's size in memory.
    pub data_size: u64,
}

/// The layout of [`static_pie`]`(relocations)`.
pub fn pie_layout(relocations: usize) -> PieLayout {
    let rela = 0x200;
    let text = (rela + relocations as u64 * 24).div_ceil(PAGE_SIZE) * PAGE_SIZE;
    let data = text + PAGE_SIZE;
    let data_size = PAGE_SIZE + (relocations as u64 * 8).div_ceil(PAGE_SIZE) * PAGE_SIZE;
    PieLayout { dynamic: 0x180, rela, text, data, data_size }
}

/// The program headers of [`static_pie`]: R (headers, dynamic, RELA), RX (code), RW (data),
/// `PT_DYNAMIC`, `PT_GNU_RELRO` (the data segment's first page), in that order.
pub fn pie_headers(relocations: usize) -> [Header; 5] {
    let l = pie_layout(relocations);
    let load = |flags, offset, file_size, mem_size| Header { p_type: elf::PT_LOAD, flags, offset, vaddr: offset, file_size, mem_size };
    let rela_end = l.rela + relocations as u64 * 24;
    [
        load(elf::PF_R, 0, rela_end, rela_end),
        load(elf::PF_R | elf::PF_X, l.text, 3, 3),
        load(elf::PF_R | elf::PF_W, l.data, PAGE_SIZE, l.data_size),
        Header { p_type: elf::PT_DYNAMIC, flags: elf::PF_R, offset: l.dynamic, vaddr: l.dynamic, file_size: 64, mem_size: 64 },
        Header { p_type: elf::PT_GNU_RELRO, flags: elf::PF_R, offset: l.data, vaddr: l.data, file_size: PAGE_SIZE, mem_size: PAGE_SIZE },
    ]
}

/// A well-formed static PIE whose entry point returns 0 and whose `relocations`
/// `R_X86_64_RELATIVE` relocations fill the data segment: relocation `k` writes
/// `load base + text + k` at `data + 8k` (the first 512 in the RELRO page).
pub fn static_pie(relocations: usize) -> Vec<u8> {
    let l = pie_layout(relocations);
    let mut f = elf_file(elf::ET_DYN, l.text, &pie_headers(relocations), (l.data + PAGE_SIZE) as usize);
    let dynamic = [(elf::DT_RELA, l.rela), (elf::DT_RELASZ, relocations as u64 * 24), (elf::DT_RELAENT, 24), (elf::DT_NULL, 0)];
    for (i, (tag, value)) in dynamic.iter().enumerate() {
        let o = l.dynamic as usize + i * 16;
        put(&mut f, o, &u64::from(*tag).to_le_bytes());
        put(&mut f, o + 8, &value.to_le_bytes());
    }
    for k in 0..relocations {
        let o = l.rela as usize + k * 24;
        put(&mut f, o, &(l.data + 8 * k as u64).to_le_bytes());
        put(&mut f, o + 8, &u64::from(elf::R_X86_64_RELATIVE).to_le_bytes());
        put(&mut f, o + 16, &(l.text + k as u64).to_le_bytes());
    }
    // xor eax, eax; ret
    put(&mut f, l.text as usize, &[0x31, 0xC0, 0xC3]);
    f
}
