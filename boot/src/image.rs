//! Disk images from kernel ELF files.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Which firmware boots the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// Legacy BIOS (SeaBIOS, QEMU's default).
    Bios,
    /// UEFI (OVMF).
    Uefi,
}

impl Firmware {
    /// Lower-case name, as in file names and messages.
    pub fn name(self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        }
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    path.metadata().and_then(|m| m.modified()).ok()
}

/// Builds (or reuses, when it is newer than its inputs) the disk image of `kernel` for `firmware`,
/// next to the kernel file, and returns its path. A ramdisk, if given, is handed to the kernel by
/// the bootloader (`BootInfo::ramdisk_addr`).
pub fn build(kernel: &Path, firmware: Firmware, ramdisk: Option<&Path>) -> Result<PathBuf, String> {
    if !kernel.is_file() {
        return Err(format!("kernel file {} not found", kernel.display()));
    }
    let suffix = match ramdisk {
        // Images with different ramdisks must not share a cache slot.
        Some(r) => format!("{}.{}-{:016x}.img", firmware.name(), "rd", fnv1a(r.to_string_lossy().as_bytes())),
        None => format!("{}.img", firmware.name()),
    };
    let out = PathBuf::from(format!("{}.{suffix}", kernel.display()));
    let fresh = match modified(&out) {
        Some(img) => {
            modified(kernel).is_some_and(|k| k <= img)
                && ramdisk.is_none_or(|r| modified(r).is_some_and(|t| t <= img))
        }
        None => false,
    };
    if !fresh {
        // Made under a name of this process's own, then renamed into place: a run that boots the
        // image meanwhile sees the old one or the new one whole, never one half written.
        let tmp = PathBuf::from(format!("{}.tmp-{}", out.display(), std::process::id()));
        let result = match firmware {
            Firmware::Bios => {
                let mut boot = bootloader::BiosBoot::new(kernel);
                if let Some(r) = ramdisk {
                    boot.set_ramdisk(r);
                }
                boot.create_disk_image(&tmp)
            }
            Firmware::Uefi => {
                let mut boot = bootloader::UefiBoot::new(kernel);
                if let Some(r) = ramdisk {
                    boot.set_ramdisk(r);
                }
                boot.create_disk_image(&tmp)
            }
        };
        let renamed = result
            .map_err(|e| format!("creating the {} image of {}: {e:#}", firmware.name(), kernel.display()))
            .and_then(|()| std::fs::rename(&tmp, &out).map_err(|e| format!("renaming {} to {}: {e}", tmp.display(), out.display())));
        if let Err(e) = renamed {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        if ramdisk.is_some()
            && let Some(at) = out.to_string_lossy().rfind(".rd-")
        {
            keep_newest(&out.to_string_lossy()[..at + 4], ".img", RAMDISK_IMAGES_KEPT);
        }
    }
    Ok(out)
}

/// Images kept per kernel and firmware with a ramdisk (and guest archives per kernel): each guest
/// set has files of its own (named by a hash of its contents), so the oldest go.
pub const RAMDISK_IMAGES_KEPT: usize = 8;

/// Removes the files named `PREFIX…SUFFIX` (`prefix` a path up to the varying part) beyond the
/// `keep` most recently modified (a run still booting one keeps its open file).
pub fn keep_newest(prefix: &str, suffix: &str, keep: usize) {
    let prefix = Path::new(prefix);
    let (Some(dir), Some(start)) = (prefix.parent(), prefix.file_name().map(|n| n.to_string_lossy().into_owned())) else { return };
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut files: Vec<(SystemTime, PathBuf)> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n.starts_with(&start) && n.ends_with(suffix) && !n.contains(".tmp-")
            })
        })
        .filter_map(|p| modified(&p).map(|t| (t, p)))
        .collect();
    files.sort_by_key(|f| std::cmp::Reverse(f.0));
    for (_, old) in files.into_iter().skip(keep) {
        let _ = std::fs::remove_file(old);
    }
}

/// FNV-1a of `bytes`: the short hashes in cached file names.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}
