//! [`LoadError`]: why a guest file is refused.

use core::fmt;

/// Why a file is refused. Every variant says what is wrong with the file in terms its author
/// can act on; [`Display`](fmt::Display) gives the message the kernel prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadError {
    /// No ELF magic.
    NotElf,
    /// The ELF header is cut short.
    TruncatedHeader {
        /// The file's length.
        len: usize,
    },
    /// `EI_CLASS` is not ELFCLASS64.
    Not64Bit,
    /// `EI_DATA` is not ELFDATA2LSB.
    NotLittleEndian,
    /// `EI_VERSION` is not EV_CURRENT.
    BadVersion(u8),
    /// `e_machine` is not EM_X86_64.
    WrongMachine(u16),
    /// `e_type` is neither ET_EXEC nor ET_DYN.
    WrongType(u16),
    /// `e_phentsize` is not the size of an ELF64 program header.
    ProgramHeaderSize(u16),
    /// The program header table does not lie within the file.
    ProgramHeadersBeyondFile,
    /// More program headers than the loader looks at.
    TooManyProgramHeaders(usize),
    /// `PT_INTERP`.
    Interpreter,
    /// Two headers of a type there may be only one of.
    DuplicateHeader(&'static str),
    /// A `PT_LOAD` with `p_filesz > p_memsz`.
    FileSizeExceedsMemSize {
        /// Program header index.
        index: usize,
        /// `p_filesz`.
        file_size: u64,
        /// `p_memsz`.
        mem_size: u64,
    },
    /// A `PT_LOAD` whose `p_offset..p_offset + p_filesz` is not inside the file.
    SegmentBeyondFile {
        /// Program header index.
        index: usize,
        /// `p_offset`.
        offset: u64,
        /// `p_filesz`.
        file_size: u64,
    },
    /// A `PT_LOAD` whose page-rounded address range passes the end of the address space.
    SegmentWraps {
        /// Program header index.
        index: usize,
        /// `p_vaddr`.
        vaddr: u64,
        /// `p_memsz`.
        mem_size: u64,
    },
    /// A `PT_LOAD` with both PF_W and PF_X.
    WritableExecutable {
        /// Program header index.
        index: usize,
        /// `p_vaddr`.
        vaddr: u64,
    },
    /// Two `PT_LOAD` ranges intersect.
    Overlap {
        /// `p_vaddr` of the earlier segment.
        first: u64,
        /// `p_vaddr` of the later one.
        second: u64,
    },
    /// `PT_LOAD` entries not in ascending `p_vaddr` order (the ELF specification requires it).
    NotAscending {
        /// Program header index of the segment below its predecessor.
        index: usize,
    },
    /// A page shared by a writable and an executable segment.
    SharedPageWritableExecutable {
        /// The page (link-time address).
        page: u64,
    },
    /// No `PT_LOAD` with a non-zero size.
    NoLoadableSegment,
    /// The image spans more than the policy's maximum.
    TooLarge {
        /// Lowest to highest segment page, in bytes.
        size: u64,
        /// The maximum.
        max: u64,
    },
    /// The image would start at an address that is not aligned to the allocation granularity.
    Unaligned {
        /// The start address.
        base: u64,
        /// The required alignment.
        alignment: u64,
    },
    /// The placed image is not inside the user range.
    OutsideUserSpace {
        /// Placed start.
        start: u64,
        /// Placed end (saturated).
        end: u64,
        /// Lowest address allowed.
        user_min: u64,
        /// End of the range allowed.
        user_end: u64,
    },
    /// `e_entry` is not inside an executable segment.
    EntryNotExecutable(u64),
    /// A `PT_GNU_RELRO` range outside the image.
    RelroOutsideImage {
        /// `p_vaddr`.
        vaddr: u64,
        /// `p_memsz`.
        mem_size: u64,
    },
    /// The `PT_DYNAMIC` bytes are not inside the file (or not a whole number of entries).
    DynamicBeyondFile,
    /// `DT_NEEDED`.
    NeedsLibraries,
    /// `DT_JMPREL` / `DT_PLTRELSZ`.
    PltRelocations,
    /// `DT_REL` / `DT_RELSZ`.
    RelRelocations,
    /// `DT_RELR` / `DT_RELRSZ` (packed relative relocations).
    PackedRelocations,
    /// `DT_RELAENT` other than 24.
    RelaEntrySize(u64),
    /// `DT_RELASZ` not a multiple of 24.
    RelaSize(u64),
    /// The `DT_RELA` table is not inside the file part of one `PT_LOAD`.
    RelaNotInFile {
        /// `DT_RELA`.
        address: u64,
        /// `DT_RELASZ`.
        size: u64,
    },
    /// A relocation of a type other than R_X86_64_RELATIVE (or NONE).
    UnsupportedRelocation {
        /// Index in the RELA table.
        index: usize,
        /// `ELF64_R_TYPE(r_info)`.
        r_type: u32,
    },
    /// R_X86_64_RELATIVE in an `ET_EXEC` file, which is not moved.
    RelativeInFixedImage,
    /// A relocation whose 8 bytes are not inside the image.
    RelocationOutsideImage {
        /// Index in the RELA table.
        index: usize,
        /// `r_offset`.
        offset: u64,
    },
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use LoadError::*;
        match *self {
            NotElf => write!(f, "not an ELF file"),
            TruncatedHeader { len } => write!(f, "the file ({len} bytes) is too short for an ELF header"),
            Not64Bit => write!(f, "not a 64-bit ELF file"),
            NotLittleEndian => write!(f, "not little-endian"),
            BadVersion(v) => write!(f, "ELF version {v} (expected 1)"),
            WrongMachine(m) => write!(f, "wrong machine {m} (expected x86-64, 62)"),
            WrongType(t) => write!(f, "ELF type {t} is neither an executable (2) nor a static PIE (3)"),
            ProgramHeaderSize(n) => write!(f, "program header entries of {n} bytes (expected 56)"),
            ProgramHeadersBeyondFile => write!(f, "the program header table lies beyond the end of the file"),
            TooManyProgramHeaders(n) => write!(f, "{n} program headers (this loader takes at most {})", crate::MAX_PROGRAM_HEADERS),
            Interpreter => write!(f, "it asks for an interpreter (PT_INTERP): only static executables run here"),
            DuplicateHeader(what) => write!(f, "more than one {what} program header"),
            FileSizeExceedsMemSize { index, file_size, mem_size } => {
                write!(f, "segment {index}: file size {file_size:#x} exceeds memory size {mem_size:#x}")
            }
            SegmentBeyondFile { index, offset, file_size } => {
                write!(f, "segment {index}: its bytes ({file_size:#x} at offset {offset:#x}) lie beyond the end of the file")
            }
            SegmentWraps { index, vaddr, mem_size } => {
                write!(f, "segment {index}: address range {vaddr:#x} + {mem_size:#x} wraps past the end of the address space")
            }
            WritableExecutable { index, vaddr } => {
                write!(f, "segment {index} at {vaddr:#x} is writable and executable (W^X: refused)")
            }
            Overlap { first, second } => write!(f, "segments at {first:#x} and {second:#x} overlap"),
            NotAscending { index } => {
                write!(f, "segment {index} lies below the one before it (PT_LOAD entries must be in ascending address order)")
            }
            SharedPageWritableExecutable { page } => {
                write!(f, "page {page:#x} is shared by a writable and an executable segment (W^X: refused)")
            }
            NoLoadableSegment => write!(f, "no loadable segment"),
            TooLarge { size, max } => write!(f, "the image spans {size:#x} bytes, more than the {max:#x} this kernel maps"),
            Unaligned { base, alignment } => {
                write!(f, "the image starts at {base:#x}, which is not aligned to {alignment:#x} bytes")
            }
            OutsideUserSpace { start, end, user_min, user_end } => {
                write!(f, "segments at {start:#x}..{end:#x} lie outside user space ({user_min:#x}..{user_end:#x})")
            }
            EntryNotExecutable(entry) => write!(f, "entry point {entry:#x} is not in an executable segment"),
            RelroOutsideImage { vaddr, mem_size } => {
                write!(f, "PT_GNU_RELRO range {vaddr:#x} + {mem_size:#x} is not inside the loaded segments")
            }
            DynamicBeyondFile => write!(f, "the dynamic section (PT_DYNAMIC) lies beyond the end of the file"),
            NeedsLibraries => write!(f, "it needs shared libraries (DT_NEEDED)"),
            PltRelocations => write!(f, "it has PLT relocations (only R_X86_64_RELATIVE is supported)"),
            RelRelocations => write!(f, "it has REL relocations (only RELA R_X86_64_RELATIVE is supported)"),
            PackedRelocations => write!(f, "it has packed relative relocations (DT_RELR; only RELA R_X86_64_RELATIVE is supported)"),
            RelaEntrySize(n) => write!(f, "RELA entries of {n} bytes (expected 24)"),
            RelaSize(n) => write!(f, "the RELA table size {n:#x} is not a multiple of 24"),
            RelaNotInFile { address, size } => {
                write!(f, "the relocation table ({size:#x} bytes at {address:#x}) is not in the file part of one segment")
            }
            UnsupportedRelocation { index, r_type } => {
                write!(f, "relocation {index}: unsupported relocation type {r_type} (only R_X86_64_RELATIVE)")
            }
            RelativeInFixedImage => write!(f, "R_X86_64_RELATIVE in a non-relocatable executable"),
            RelocationOutsideImage { index, offset } => {
                write!(f, "relocation {index} at {offset:#x} lies outside the image")
            }
        }
    }
}
