//! Helpers shared by the kernel test images in this directory.
//!
//! Each `*.rs` next to this file is a kernel image (see `kernel::kernel_test_image!`); a case is a
//! function returning `()` (fails by panicking) or `Result<(), String>` (fails softly).
#![no_std]

extern crate alloc;

pub use kernel;

/// Returns `Err` with a message naming both values unless `left == right`.
#[macro_export]
macro_rules! ensure_eq {
    ($left:expr, $right:expr $(,)?) => {{
        let (l, r) = (&$left, &$right);
        if l != r {
            return Err(alloc::format!("{} == {}: left {:#x?}, right {:#x?} ({}:{})", stringify!($left), stringify!($right), l, r, file!(), line!()));
        }
    }};
}

/// Returns `Err` with the condition's text unless it holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr $(, $($msg:tt)*)?) => {{
        if !$cond {
            return Err(alloc::format!("{} failed{} ({}:{})", stringify!($cond), {
                #[allow(unused_mut)] let mut m = alloc::string::String::new();
                $( m = alloc::format!(": {}", alloc::format!($($msg)*)); )?
                m
            }, file!(), line!()));
        }
    }};
}

/// The bytes of the C test guest `tests/guests/c/NAME.c`, built by `tests/build.rs`.
#[macro_export]
macro_rules! guest_elf {
    ($name:literal) => {
        include_bytes!(concat!(env!("OUT_DIR"), "/", $name, ".elf"))
    };
}

/// The memory counts a guest must leave as it found them: free frames, reserved frames,
/// committed pages, page-table pages.
pub fn frame_counts() -> (u64, u64, u64, u64) {
    kernel::memory::with_mm(|mm| (mm.frames.free_frames(), mm.frames.reserved_frames(), mm.charge.committed_pages(), mm.page_table_pages()))
}

/// What a guest must leave as it found it: free frames, reserved frames, commit charge,
/// page-table pages, live guest address spaces.
pub type GuestAccounting = (u64, u64, u64, u64, usize);

/// The [`GuestAccounting`] now.
pub fn guest_accounting() -> GuestAccounting {
    let (free, reserved, committed, tables) = frame_counts();
    (free, reserved, committed, tables, kernel::memory::accounting().spaces)
}

/// The check lines (`ok …` / `FAILED …`) a guest printed in area `area` (from each `== AREA` line
/// up to the next `== ` line).
pub fn area_lines<'a>(out: &'a str, area: &str) -> alloc::vec::Vec<&'a str> {
    let mut lines = alloc::vec::Vec::new();
    let mut inside = false;
    for line in out.lines() {
        if let Some(name) = line.strip_prefix("== ") {
            inside = name.trim() == area;
        } else if inside && (line.starts_with("ok ") || line.starts_with("FAILED ")) {
            lines.push(line);
        }
    }
    lines
}
