//! QEMU's firmware configuration device (fw_cfg, I/O ports 0x510/0x511): how settings reach the
//! kernel at boot (`run-qemu.sh --config "key=value,..."` becomes `-fw_cfg name=opt/vmk/config,...`).
//!
//! Protocol (QEMU docs/specs/fw_cfg.rst): write a 16-bit selector to port 0x510, then read the
//! item byte by byte from port 0x511. Item 0x0000 is the signature "QEMU"; item 0x0005 the CPU
//! count; item 0x0019 is the file
//! directory (big-endian count, then 64-byte entries: size u32 BE, select u16 BE, reserved u16,
//! name[56]). On a machine without fw_cfg the signature does not match and nothing is read.

use alloc::string::String;
use alloc::vec::Vec;

use x86_64::instructions::port::Port;

const SELECTOR: u16 = 0x510;
const DATA: u16 = 0x511;
const SIGNATURE: u16 = 0x0000;
const FILE_DIR: u16 = 0x0019;
const NB_CPUS: u16 = 0x0005;

fn select(key: u16) {
    // SAFETY: port 0x510 is fw_cfg's selector on QEMU's PC machine; writing it only chooses the
    // item the data port returns.
    unsafe { Port::<u16>::new(SELECTOR).write(key) };
}

fn read(buf: &mut [u8]) {
    let mut port = Port::<u8>::new(DATA);
    for b in buf {
        // SAFETY: port 0x511 returns the next byte of the selected item (0 past its end).
        *b = unsafe { port.read() };
    }
}

/// Whether the device is there (its signature item reads "QEMU").
fn present() -> bool {
    select(SIGNATURE);
    let mut sig = [0u8; 4];
    read(&mut sig);
    &sig == b"QEMU"
}

/// The number of CPUs QEMU was started with (`-smp`; item 0x0005, little-endian u16), for tests
/// that check the kernel brought every one up.
pub fn cpu_count() -> Option<u16> {
    if !present() {
        return None;
    }
    select(NB_CPUS);
    let mut n = [0u8; 2];
    read(&mut n);
    Some(u16::from_le_bytes(n))
}

/// The contents of the fw_cfg file `name`, if QEMU provides it.
pub fn file(name: &str) -> Option<Vec<u8>> {
    if !present() {
        return None;
    }
    select(FILE_DIR);
    let mut count = [0u8; 4];
    read(&mut count);
    for _ in 0..u32::from_be_bytes(count).min(4096) {
        let mut entry = [0u8; 64];
        read(&mut entry);
        let size = u32::from_be_bytes(entry[0..4].try_into().expect("4 bytes")) as usize;
        let key = u16::from_be_bytes(entry[4..6].try_into().expect("2 bytes"));
        let end = entry[8..].iter().position(|&b| b == 0).unwrap_or(56);
        if &entry[8..8 + end] == name.as_bytes() {
            let mut data = alloc::vec![0u8; size.min(64 * 1024)];
            select(key);
            read(&mut data);
            return Some(data);
        }
    }
    None
}

/// `key=value` pairs of the kernel's configuration string (separated by commas, semicolons or
/// white space).
pub fn config_pairs() -> Vec<(String, String)> {
    let Some(bytes) = file("opt/vmk/config") else { return Vec::new() };
    let text = String::from_utf8_lossy(&bytes).into_owned();
    text.split([',', ';', ' ', '\n'])
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (String::from(k.trim()), String::from(v.trim())))
        .collect()
}
