//! The guest archive: the files given with `--guest`, packed into the ramdisk the kernel reads
//! (format in `kernel/src/guest/ramdisk.rs`).

use std::path::{Path, PathBuf};

/// The archive's magic.
pub const MAGIC: &[u8; 8] = b"VMKGST01";

/// Packs `files` (name = file name) into an archive.
pub fn archive(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::from(&MAGIC[..]);
    out.extend_from_slice(&(files.len() as u32).to_le_bytes());
    for (name, data) in files {
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(data.len() as u64).to_le_bytes());
        out.extend_from_slice(data);
    }
    out
}

/// Reads `paths` and writes their archive next to `prefix`, named `PREFIX.guests-HASH` by a hash
/// of its contents (so that runs with other guests, at the same time or later, never share or
/// overwrite it, and each set keeps its cached disk image); returns its path. An archive already
/// there is not written again.
pub fn write_archive(paths: &[impl AsRef<Path>], prefix: &Path) -> Result<PathBuf, String> {
    let mut files = Vec::new();
    for p in paths {
        let p = p.as_ref();
        let data = std::fs::read(p).map_err(|e| format!("guest file {}: {e}", p.display()))?;
        let name = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "guest".into());
        files.push((name, data));
    }
    let bytes = archive(&files);
    let out = PathBuf::from(format!("{}.guests-{:016x}", prefix.display(), crate::image::fnv1a(&bytes)));
    if std::fs::read(&out).ok().as_deref() != Some(&bytes[..]) {
        // Written under a name of this process's own and renamed into place (whole or not at all).
        let tmp = PathBuf::from(format!("{}.tmp-{}", out.display(), std::process::id()));
        std::fs::write(&tmp, &bytes).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, &out).map_err(|e| format!("renaming {} to {}: {e}", tmp.display(), out.display()))?;
        crate::image::keep_newest(&format!("{}.guests-", prefix.display()), "", crate::image::RAMDISK_IMAGES_KEPT);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_layout() {
        let a = archive(&[("ab".into(), vec![1, 2, 3])]);
        assert_eq!(&a[..8], MAGIC);
        assert_eq!(u32::from_le_bytes(a[8..12].try_into().unwrap()), 1);
        assert_eq!(u32::from_le_bytes(a[12..16].try_into().unwrap()), 2);
        assert_eq!(&a[16..18], b"ab");
        assert_eq!(u64::from_le_bytes(a[18..26].try_into().unwrap()), 3);
        assert_eq!(&a[26..], &[1, 2, 3]);
    }
}
