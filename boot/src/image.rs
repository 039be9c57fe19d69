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
        let result = match firmware {
            Firmware::Bios => {
                let mut boot = bootloader::BiosBoot::new(kernel);
                if let Some(r) = ramdisk {
                    boot.set_ramdisk(r);
                }
                boot.create_disk_image(&out)
            }
            Firmware::Uefi => {
                let mut boot = bootloader::UefiBoot::new(kernel);
                if let Some(r) = ramdisk {
                    boot.set_ramdisk(r);
                }
                boot.create_disk_image(&out)
            }
        };
        result.map_err(|e| format!("creating the {} image of {}: {e:#}", firmware.name(), kernel.display()))?;
    }
    Ok(out)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}
