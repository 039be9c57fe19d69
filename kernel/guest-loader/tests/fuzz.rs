//! Property/fuzz test: generated headers (fields drawn from boundary values) and mutated
//! well-formed files never make the parser panic or overflow (debug builds check every
//! arithmetic operation), and every file it accepts satisfies what the kernel relies on
//! ([`common::check_invariants`]). Bounded: a fixed number of cases, a few seconds.

mod common;

use common::{GUEST, check_invariants};
use guest_loader::Image;
use guest_loader::build::{Header, elf_file, pie_layout, put, static_pie};
use object::elf;
use proptest::prelude::*;

/// 64-bit values at the edges the parser must handle.
fn edge_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(8),
        Just(0xFFF),
        Just(0x1000),
        Just(0x1_0000),
        Just(0x40_0000),
        Just(0x1_4000_0000),
        Just(0x7FFF_FFF0_0000),
        Just(0x8000_0000_0000),
        Just(0xFFFF_8000_0000_0000),
        Just(u64::MAX - 0x1000),
        Just(u64::MAX - 0xFFF),
        Just(u64::MAX - 7),
        Just(u64::MAX),
        Just(1 << 63),
        0u64..0x1_0000,
        any::<u64>(),
    ]
}

fn header() -> impl Strategy<Value = Header> {
    let p_type = prop_oneof![
        4 => Just(elf::PT_LOAD),
        1 => Just(elf::PT_DYNAMIC),
        1 => Just(elf::PT_GNU_RELRO),
        1 => Just(elf::PT_INTERP),
        1 => any::<u32>(),
    ];
    (p_type, 0u32..8, edge_u64(), edge_u64(), edge_u64(), edge_u64())
        .prop_map(|(p_type, flags, offset, vaddr, file_size, mem_size)| Header { p_type, flags, offset, vaddr, file_size, mem_size })
}

/// A byte-level mutation: write `value`'s low `width` bytes at `offset` (modulo the file length).
#[derive(Debug, Clone)]
struct Mutation {
    offset: usize,
    width: usize,
    value: u64,
}

fn mutation() -> impl Strategy<Value = Mutation> {
    // Mostly the headers, the dynamic section and the first relocations.
    let offset = prop_oneof![3 => 0usize..0x300, 1 => any::<usize>()];
    (offset, prop_oneof![Just(1usize), Just(2), Just(4), Just(8)], edge_u64()).prop_map(|(offset, width, value)| Mutation { offset, width, value })
}

fn apply(file: &mut [u8], m: &Mutation) {
    if file.is_empty() {
        return;
    }
    let at = m.offset % file.len();
    let n = m.width.min(file.len() - at);
    file[at..at + n].copy_from_slice(&m.value.to_le_bytes()[..n]);
}

/// Parses `file` at an odd address too (files are byte slices of any alignment): the answers
/// agree, an accepted image satisfies the invariants, a refusal has a message.
fn check(file: &[u8]) {
    let mut shifted = vec![0u8; file.len() + 1];
    shifted[1..].copy_from_slice(file);
    let (r, r_odd) = (Image::parse(file, &GUEST), Image::parse(&shifted[1..], &GUEST));
    assert_eq!(r.as_ref().err(), r_odd.as_ref().err());
    match r {
        Ok(image) => check_invariants(&image, &GUEST),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10_000, failure_persistence: None, ..ProptestConfig::default() })]

    /// Files made of generated program headers (and a dynamic section where one points).
    #[test]
    fn generated_headers_never_panic(
        e_type in prop_oneof![Just(elf::ET_EXEC), Just(elf::ET_DYN), any::<u16>()],
        entry in edge_u64(),
        headers in proptest::collection::vec(header(), 0..8),
        len in prop_oneof![Just(0usize), 0usize..0x3000],
        dynamic in proptest::collection::vec((0u64..40, edge_u64()), 0..6),
    ) {
        let mut file = elf_file(e_type, entry, &headers, len);
        // Drop a dynamic section at 0x200 if the file is long enough; headers may point at it.
        for (i, (tag, value)) in dynamic.iter().enumerate() {
            if file.len() >= 0x200 + (i + 1) * 16 {
                put(&mut file, 0x200 + i * 16, &tag.to_le_bytes());
                put(&mut file, 0x208 + i * 16, &value.to_le_bytes());
            }
        }
        check(&file);
    }

    /// Well-formed static PIEs with a few mutations.
    #[test]
    fn mutated_static_pies_never_panic(
        relocations in 0usize..64,
        mutations in proptest::collection::vec(mutation(), 1..6),
        truncate in prop_oneof![4 => Just(None), 1 => (0usize..0x3000).prop_map(Some)],
    ) {
        let mut file = static_pie(relocations);
        let l = pie_layout(relocations);
        prop_assume!(l.rela > 0);
        for m in &mutations {
            apply(&mut file, m);
        }
        if let Some(n) = truncate {
            file.truncate(n);
        }
        check(&file);
    }
}

/// The unmutated files are accepted (so the mutation test starts from files that pass).
#[test]
fn the_seed_files_are_accepted() {
    for n in [0, 1, 511, 512, 513] {
        let file = static_pie(n);
        let image = Image::parse(&file, &GUEST).expect("accepted");
        check_invariants(&image, &GUEST);
        assert_eq!(image.relocations().count(), n);
    }
}
