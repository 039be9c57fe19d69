//! One test per refusal rule and per malformed-header case that used to crash the kernel's
//! hand-written parser (issue 12): a segment ending in the last page, a `p_memsz` 0 segment with
//! a wrapping range or a huge `p_offset`, and relocation tables in the hundreds of thousands.

mod common;

use common::{GUEST, check_invariants};
use guest_loader::build::{Header, elf_file, pie_headers, pie_layout, put, static_pie};
use guest_loader::{Image, LoadError, PAGE_SIZE as PAGE, Rights};
use object::elf;

fn parse(file: &[u8]) -> Result<Image<'_>, LoadError> {
    // Files come at any alignment (include_bytes!, ramdisk copies): parse an odd-aligned copy too.
    let mut shifted = vec![0u8; file.len() + 1];
    shifted[1..].copy_from_slice(file);
    assert_eq!(Image::parse(&shifted[1..], &GUEST).err(), Image::parse(file, &GUEST).err(), "alignment changed the answer");
    let r = Image::parse(file, &GUEST);
    if let Ok(image) = &r {
        check_invariants(image, &GUEST);
    }
    r
}

fn load(flags: u32, offset: u64, vaddr: u64, file_size: u64, mem_size: u64) -> Header {
    Header { p_type: elf::PT_LOAD, flags, offset, vaddr, file_size, mem_size }
}

const RX: u32 = elf::PF_R | elf::PF_X;
const RW: u32 = elf::PF_R | elf::PF_W;

/// A fixed executable at 0x400000: one code page plus `extra` headers.
fn exec_with(extra: &[Header]) -> Vec<u8> {
    let mut headers = vec![load(RX, 0x1000, 0x40_0000, 3, 0x1000)];
    headers.extend_from_slice(extra);
    elf_file(elf::ET_EXEC, 0x40_0000, &headers, 0x2000)
}

#[test]
fn a_static_pie_is_placed_relocated_and_its_relro_made_read_only() {
    let file = static_pie(1000);
    let l = pie_layout(1000);
    let image = parse(&file).expect("accepted");
    let base = GUEST.pie_base;
    assert!(image.relocatable());
    assert_eq!((image.base(), image.entry()), (base, base + l.text));
    assert_eq!(image.size(), l.data + l.data_size);
    assert_eq!(image.relro(), Some((base + l.data, base + l.data + PAGE)));
    let rights: Vec<Rights> = image.page_rights().collect();
    let page = |a: u64| rights[(a / PAGE) as usize];
    assert_eq!(page(0), Rights { read: true, write: false, execute: false });
    assert_eq!(page(l.text), Rights { read: true, write: false, execute: true });
    assert_eq!(page(l.data), Rights { read: true, write: false, execute: false }, "RELRO page");
    assert_eq!(page(l.data + PAGE), Rights { read: true, write: true, execute: false });
    let relocations: Vec<_> = image.relocations().collect();
    assert_eq!(relocations.len(), 1000);
    for (k, r) in relocations.iter().enumerate() {
        assert_eq!((r.address, r.value), (base + l.data + 8 * k as u64, base + l.text + k as u64));
    }
    let segments: Vec<_> = image.segments().collect();
    assert_eq!(segments.len(), 3);
    assert_eq!(segments[1].bytes, &[0x31, 0xC0, 0xC3]);
}

#[test]
fn a_fixed_executable_stays_where_it_is_linked() {
    let file = exec_with(&[load(RW, 0, 0x40_1000, 0x10, 0x3000)]);
    let image = parse(&file).expect("accepted");
    assert!(!image.relocatable());
    assert_eq!((image.base(), image.size(), image.entry()), (0x40_0000, 0x4000, 0x40_0000));
    assert_eq!(image.relro(), None);
    assert_eq!(image.relocations().count(), 0);
}

#[test]
fn a_segment_ending_in_the_last_page_is_refused_not_an_overflow() {
    // Ends exactly at 2^64: p_vaddr + p_memsz overflows.
    let file = exec_with(&[load(RW, 0, 0xFFFF_FFFF_FFFF_F000, 0, 0x1000)]);
    assert!(matches!(parse(&file), Err(LoadError::SegmentWraps { index: 1, .. })));
    // Ends inside the last page: the page-rounded end overflows.
    let file = exec_with(&[load(RW, 0, 0xFFFF_FFFF_FFFF_E000, 0, 0x1800)]);
    assert!(matches!(parse(&file), Err(LoadError::SegmentWraps { index: 1, .. })));
    // Ends just below the last page: no wrap, but far outside user space (and far too large).
    let file = exec_with(&[load(RW, 0, 0xFFFF_FFFF_FFFF_E000, 0, 0x1000)]);
    assert!(matches!(parse(&file), Err(LoadError::TooLarge { .. })));
    let file = elf_file(elf::ET_EXEC, 0xFFFF_FFFF_FFFF_0000, &[load(RX, 0x1000, 0xFFFF_FFFF_FFFF_0000, 3, 0xF000)], 0x2000);
    assert!(matches!(parse(&file), Err(LoadError::OutsideUserSpace { .. })));
    // The same in a static PIE (a relocatable image's range is moved, never computed wrapping).
    let mut h = pie_headers(4).to_vec();
    h[2].vaddr = u64::MAX - 0x100;
    h[2].offset = 0;
    let mut file = static_pie(4);
    let fresh = elf_file(elf::ET_DYN, pie_layout(4).text, &h, 0);
    put(&mut file, 0, &fresh[..64 + 5 * 56]);
    let e = parse(&file).expect_err("refused");
    assert!(matches!(e, LoadError::SegmentWraps { index: 2, .. }), "{e}");
    assert!(e.to_string().contains("wraps"));
}

#[test]
fn an_empty_segment_with_a_wrapping_range_or_huge_offset_maps_nothing() {
    let empty = |vaddr, offset| load(RW, offset, vaddr, 0, 0);
    for (vaddr, offset) in [(u64::MAX, 0), (u64::MAX - 0xFFF, u64::MAX), (0, u64::MAX), (0xFFFF_8000_0000_0000, 1 << 63)] {
        let file = exec_with(&[empty(vaddr, offset)]);
        let image = parse(&file).expect("an empty PT_LOAD is skipped");
        assert_eq!((image.base(), image.size()), (0x40_0000, 0x1000));
        assert_eq!(image.segments().count(), 1);
    }
    // p_memsz 0 with bytes in the file is malformed.
    let file = exec_with(&[load(RW, u64::MAX, u64::MAX, 8, 0)]);
    assert!(matches!(parse(&file), Err(LoadError::FileSizeExceedsMemSize { index: 1, .. })));
    // In a static PIE, the RELA lookup (which used to compute `va + file_size` of every
    // PT_LOAD, empty ones included) skips it too.
    let mut h = pie_headers(8).to_vec();
    h.insert(0, empty(u64::MAX - 4, u64::MAX));
    let l = pie_layout(8);
    let mut file = static_pie(8);
    // Move the RELA table one header further? No: the headers grow by 56 bytes into the dynamic
    // section at 0x180 (64 + 6 * 56 = 0x188), so put the dynamic section after them.
    let fresh = elf_file(elf::ET_DYN, l.text, &h, 0);
    let dynamic: Vec<u8> = file[l.dynamic as usize..l.dynamic as usize + 64].to_vec();
    put(&mut file, 0, &fresh);
    put(&mut file, 0x1c0, &dynamic);
    let o = 64 + 4 * 56;
    put(&mut file, o + 8, &0x1c0u64.to_le_bytes());
    put(&mut file, o + 16, &0x1c0u64.to_le_bytes());
    let image = parse(&file).expect("accepted");
    assert_eq!(image.relocations().count(), 8);
}

#[test]
fn huge_offsets_are_refusals() {
    let file = exec_with(&[load(RW, u64::MAX - 1, 0x40_1000, 16, 16)]);
    let e = parse(&file).expect_err("refused");
    assert!(matches!(e, LoadError::SegmentBeyondFile { index: 1, .. }));
    assert!(e.to_string().contains("beyond the end of the file"), "{e}");
    let file = exec_with(&[Header { p_type: elf::PT_DYNAMIC, flags: RW, offset: u64::MAX - 8, vaddr: 0, file_size: 64, mem_size: 64 }]);
    assert_eq!(parse(&file).err(), Some(LoadError::DynamicBeyondFile));
    // Program header table offset near 2^64.
    let mut file = exec_with(&[]);
    put(&mut file, 32, &(u64::MAX - 8).to_le_bytes());
    assert_eq!(parse(&file).err(), Some(LoadError::ProgramHeadersBeyondFile));
    // DT_RELA pointing near 2^64, and a DT_RELASZ that wraps it.
    let l = pie_layout(2);
    for (rela, size) in [(u64::MAX - 8, 48), (l.rela, u64::MAX - 15)] {
        let mut file = static_pie(2);
        put(&mut file, l.dynamic as usize + 8, &rela.to_le_bytes());
        put(&mut file, l.dynamic as usize + 24, &size.to_le_bytes());
        let e = parse(&file).expect_err("refused");
        assert!(matches!(e, LoadError::RelaNotInFile { .. } | LoadError::RelaSize(_)), "{e}");
    }
}

#[test]
fn each_refusal_names_its_reason() {
    let pie = static_pie(4);
    let l = pie_layout(4);
    let patched = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut v = pie.clone();
        f(&mut v);
        v
    };
    let ph = |i: usize| 64 + i * 56;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("text", b"#!/bin/sh\n".to_vec(), "not an ELF file"),
        ("empty", Vec::new(), "not an ELF file"),
        ("short header", pie[..40].to_vec(), "too short for an ELF header"),
        ("32-bit", patched(&|e| e[4] = 1), "not a 64-bit"),
        ("big-endian", patched(&|e| e[5] = 2), "little-endian"),
        ("version", patched(&|e| e[6] = 2), "ELF version 2"),
        ("arm64", patched(&|e| e[18] = 183), "wrong machine 183"),
        ("object", patched(&|e| e[16] = 1), "neither an executable"),
        ("phentsize", patched(&|e| e[54] = 32), "program header entries of 32 bytes"),
        ("phnum", patched(&|e| e[56] = 65), "65 program headers"),
        ("interpreter", patched(&|e| e[ph(3)] = 3), "interpreter"),
        ("W+X", patched(&|e| e[ph(2) + 4] = 7), "writable and executable"),
        ("overlap", patched(&|e| put(e, ph(2) + 16, &l.text.to_le_bytes())), "overlap"),
        ("descending", patched(&|e| put(e, ph(1) + 16, &0x10_0000u64.to_le_bytes())), "ascending"),
        ("truncated", pie[..200].to_vec(), "beyond the end of the file"),
        ("filesz > memsz", patched(&|e| put(e, ph(1) + 32, &0x10u64.to_le_bytes())), "exceeds memory size"),
        ("entry", patched(&|e| put(e, 24, &0x10u64.to_le_bytes())), "entry point"),
        ("1 TiB", patched(&|e| put(e, ph(2) + 40, &(1u64 << 40).to_le_bytes())), "more than"),
        ("R_X86_64_64", patched(&|e| e[l.rela as usize + 8] = 1), "unsupported relocation type 1"),
        ("GLOB_DAT", patched(&|e| e[l.rela as usize + 24 + 8] = 6), "relocation 1: unsupported relocation type 6"),
        ("reloc outside", patched(&|e| put(e, l.rela as usize, &(l.data + l.data_size - 4).to_le_bytes())), "outside the image"),
        ("RELAENT", patched(&|e| e[l.dynamic as usize + 40] = 16), "RELA entries of 16 bytes"),
        ("RELASZ", patched(&|e| e[l.dynamic as usize + 24] = 25), "not a multiple of 24"),
        ("DT_NEEDED", patched(&|e| e[l.dynamic as usize + 32] = 1), "DT_NEEDED"),
        ("DT_JMPREL", patched(&|e| e[l.dynamic as usize + 32] = 23), "PLT"),
        ("DT_RELR", patched(&|e| e[l.dynamic as usize + 32] = 36), "DT_RELR"),
        ("relro outside", patched(&|e| put(e, ph(4) + 16, &0x100_0000u64.to_le_bytes())), "PT_GNU_RELRO"),
        ("two RELRO", patched(&|e| e[ph(3)..ph(3) + 4].copy_from_slice(&elf::PT_GNU_RELRO.to_le_bytes())), "more than one PT_GNU_RELRO"),
        ("no segment", patched(&|e| for i in 0..3 { e[ph(i)] = 6 }), "no loadable segment"),
    ];
    for (what, file, reason) in cases {
        match parse(&file) {
            Err(e) => assert!(e.to_string().contains(reason), "{what}: refused with {e:?} ({e}), expected {reason:?}"),
            Ok(_) => panic!("{what}: accepted"),
        }
    }
}

#[test]
fn fixed_images_must_lie_in_user_space_and_be_aligned() {
    let file = elf_file(elf::ET_EXEC, 0xFFFF_8000_0040_0000, &[load(RX, 0x1000, 0xFFFF_8000_0040_0000, 3, 3)], 0x2000);
    assert!(parse(&file).expect_err("refused").to_string().contains("outside user space"));
    let file = elf_file(elf::ET_EXEC, 0x40_1000, &[load(RX, 0x1000, 0x40_1000, 3, 3)], 0x2000);
    assert!(parse(&file).expect_err("refused").to_string().contains("not aligned"));
    let file = elf_file(elf::ET_EXEC, 0x7FFF_FFEF_0000, &[load(RX, 0x1000, 0x7FFF_FFEF_0000, 3, 0x20000)], 0x2000);
    assert!(parse(&file).expect_err("refused").to_string().contains("outside user space"));
    // R_X86_64_RELATIVE in an ET_EXEC: its dynamic section at 0x100 and RELA table at 0x140 of
    // a read-only segment at 0x401000.
    let dynamic = Header { p_type: elf::PT_DYNAMIC, flags: elf::PF_R, offset: 0x100, vaddr: 0x40_1100, file_size: 64, mem_size: 64 };
    let mut file = exec_with(&[load(elf::PF_R, 0, 0x40_1000, 0x200, 0x200), dynamic]);
    for (i, (tag, value)) in [(elf::DT_RELA, 0x40_1140u64), (elf::DT_RELASZ, 24), (elf::DT_NULL, 0)].iter().enumerate() {
        put(&mut file, 0x100 + i * 16, &u64::from(*tag).to_le_bytes());
        put(&mut file, 0x108 + i * 16, &value.to_le_bytes());
    }
    put(&mut file, 0x140, &0x40_1000u64.to_le_bytes());
    put(&mut file, 0x148, &u64::from(elf::R_X86_64_RELATIVE).to_le_bytes());
    assert_eq!(parse(&file).err(), Some(LoadError::RelativeInFixedImage));
    put(&mut file, 0x148, &u64::from(elf::R_X86_64_NONE).to_le_bytes());
    assert_eq!(parse(&file).map(|i| i.relocations().count()), Ok(0));
}

#[test]
fn a_page_shared_by_code_and_data_is_refused() {
    let file = exec_with(&[load(RW, 0, 0x40_0800, 0x10, 0x1000)]);
    // Overlaps the code segment's page-rounded range but not its bytes: 0x400000 + 0x1000 > 0x400800.
    assert!(matches!(parse(&file), Err(LoadError::Overlap { .. })));
    let file = elf_file(elf::ET_EXEC, 0x40_0000, &[load(RX, 0x1000, 0x40_0000, 3, 0x800), load(RW, 0, 0x40_0800, 0x10, 0x1000)], 0x2000);
    assert_eq!(parse(&file).err(), Some(LoadError::SharedPageWritableExecutable { page: 0x40_0000 }));
}

#[test]
fn six_hundred_thousand_relocations_stream_from_the_file() {
    let n = 600_000;
    let file = static_pie(n);
    assert!(file.len() > 13 << 20, "a 14 MB file");
    let image = parse(&file).expect("accepted");
    let l = pie_layout(n);
    let mut count = 0u64;
    for (k, r) in image.relocations().enumerate() {
        assert_eq!(r.address, GUEST.pie_base + l.data + 8 * k as u64);
        count += 1;
    }
    assert_eq!(count, n as u64);
    // A bad one at the very end is found by parse, before anything is mapped.
    let mut bad = file.clone();
    bad[l.rela as usize + (n - 1) * 24 + 8] = 1;
    assert_eq!(parse(&bad).err(), Some(LoadError::UnsupportedRelocation { index: n - 1, r_type: 1 }));
}
