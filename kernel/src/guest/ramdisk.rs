//! Guest files handed over in the bootloader's ramdisk.
//!
//! `boot` packs the files given with `run-qemu.sh --guest FILE` into one archive:
//!
//! ```text
//! "VMKGST01"                          8 bytes
//! count                               u32 LE
//! count × { name_len u32 LE, name (UTF-8), data_len u64 LE, data }
//! ```
//!
//! The archive is copied into the kernel heap and parsed with every length checked, so a damaged
//! ramdisk is an error message, never a panic.

use alloc::borrow::Cow;
use alloc::string::String;
use alloc::vec::Vec;

use address_space::PAGE_SIZE;
use address_space::PhysMemory;
use x86_64::PhysAddr;

/// The archive's magic.
pub const MAGIC: &[u8; 8] = b"VMKGST01";

/// One guest file.
#[derive(Debug, Clone)]
pub struct GuestFile {
    /// Its name (the file name it had on the host).
    pub name: String,
    /// Its bytes: borrowed from the kernel image for a bundled guest (never copied into the
    /// kernel heap, which a runtime's ELF with its debug information can exceed), owned for one
    /// from the ramdisk.
    pub data: Cow<'static, [u8]>,
}

/// Reads the ramdisk (if any) into the heap: `Some(Err)` if it is too large for the kernel heap
/// (it is held twice while parsed: the archive and the files).
pub fn read() -> Option<Result<Vec<u8>, String>> {
    let (len, pages) = crate::memory::boot_snapshot().ramdisk.clone()?;
    let (_, free) = crate::heap::usage();
    if len.saturating_mul(2).saturating_add(1 << 20) > free as u64 {
        return Some(Err(alloc::format!(
            "the guest archive ({} KiB) does not fit twice in the kernel heap ({} KiB free)",
            len / 1024,
            free / 1024
        )));
    }
    let mut out = alloc::vec![0u8; len as usize];
    crate::memory::with_mm(|mm| {
        for (i, chunk) in out.chunks_mut(PAGE_SIZE as usize).enumerate() {
            mm.window.read_bytes(PhysAddr::new(pages[i]), chunk);
        }
    });
    Some(Ok(out))
}

/// Parses an archive.
pub fn parse(data: &[u8]) -> Result<Vec<GuestFile>, String> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8], String> {
        let end = at.checked_add(n).filter(|&e| e <= data.len()).ok_or_else(|| String::from("the guest archive is truncated"))?;
        let s = &data[at..end];
        at = end;
        Ok(s)
    };
    if take(8)? != MAGIC {
        return Err("the ramdisk is not a guest archive".into());
    }
    let count = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes"));
    let mut files = Vec::new();
    for _ in 0..count {
        let name_len = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
        let name = String::from_utf8_lossy(take(name_len)?).into_owned();
        let data_len = u64::from_le_bytes(take(8)?.try_into().expect("8 bytes"));
        let data_len = usize::try_from(data_len).map_err(|_| String::from("a guest file is too large"))?;
        files.push(GuestFile { name, data: Cow::Owned(take(data_len)?.to_vec()) });
    }
    Ok(files)
}
