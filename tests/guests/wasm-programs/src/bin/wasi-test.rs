//! The test program of `tests/wasm.rs` (std Rust for wasm32-wasip1): `argv[1]` picks what it
//! does, so one precompiled module covers every case.
//!
//! `hello` · `args A B…` (prints them) · `exit N` (`proc_exit`) · `clocks` · `random` ·
//! `unsupported` (calls outside the subset: each must return an errno) · `grow MIB` (grows its
//! memory by MIB MiB, writes and checks every page, prints the memory size) · `growbench N`
//! (N × `memory.grow(1)` and a touch, timed) · traps: `oob`,
//! `stack`, `div`, `unreachable`, `indirect`.
#![feature(core_intrinsics)]
#![allow(internal_features)]

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

#[link(wasm_import_module = "wasi_snapshot_preview1")]
unsafe extern "C" {
    fn clock_res_get(id: u32, resolution: *mut u64) -> u16;
    fn clock_time_get(id: u32, precision: u64, time: *mut u64) -> u16;
    fn random_get(buf: *mut u8, len: usize) -> u16;
    fn path_open(fd: u32, dirflags: u32, path: *const u8, path_len: usize, oflags: u16, base: u64, inheriting: u64, fdflags: u16, out: *mut u32) -> u16;
    fn fd_close(fd: u32) -> u16;
    fn fd_seek(fd: u32, offset: i64, whence: u8, out: *mut u64) -> u16;
    fn poll_oneoff(input: *const u8, output: *mut u8, n: usize, out: *mut usize) -> u16;
    fn sched_yield() -> u16;
}

fn check(what: &str, ok: bool) {
    println!("{} {what}", if ok { "ok" } else { "FAILED" });
    if !ok {
        std::process::exit(1);
    }
}

static DEPTH: AtomicU64 = AtomicU64::new(0);

/// Recursion on wasm's own call stack: no local has its address taken, so nothing goes to the
/// shadow stack in linear memory (whose overflow would be an out-of-bounds access instead).
#[inline(never)]
fn recurse(n: u64) -> u64 {
    DEPTH.fetch_add(1, Ordering::Relaxed);
    if n == u64::MAX {
        return 0;
    }
    recurse(n + 1).wrapping_add(DEPTH.load(Ordering::Relaxed))
}

#[inline(never)]
fn add_one(x: i32) -> i32 {
    x + 1
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map(String::as_str).unwrap_or("hello");
    match mode {
        "hello" => println!("wasi-test: hello"),
        "args" => {
            println!("argc={}", args.len());
            for (i, a) in args.iter().enumerate() {
                println!("argv[{i}]={a}");
            }
            check("no environment variables", std::env::vars().count() == 0);
        }
        "exit" => {
            let code: i32 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(0);
            println!("exiting with {code}");
            std::process::exit(code);
        }
        "clocks" => {
            let (mut res, mut t0, mut t1) = (0u64, 0u64, 0u64);
            // SAFETY: valid out-pointers.
            unsafe {
                check("clock_res_get(monotonic)", clock_res_get(1, &mut res) == 0 && res > 0);
                check("clock_time_get(monotonic)", clock_time_get(1, 1, &mut t0) == 0);
                let mut x = 0u64;
                for i in 0..200_000u64 {
                    x = black_box(x.wrapping_add(i));
                }
                check("clock_time_get(monotonic) again", clock_time_get(1, 1, &mut t1) == 0);
                check("clock_time_get(99) is EINVAL (28)", clock_time_get(99, 1, &mut t1) == 28);
            }
            check("the monotonic clock advances", t1 > t0);
            let a = std::time::Instant::now();
            let b = std::time::Instant::now();
            check("Instant is monotonic", b >= a);
            check("SystemTime is after the epoch", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).is_ok());
            println!("clocks: resolution {res} ns, {} ns elapsed", t1 - t0);
        }
        "random" => {
            let (mut a, mut b) = ([0u8; 64], [0u8; 64]);
            // SAFETY: valid buffers.
            unsafe {
                check("random_get", random_get(a.as_mut_ptr(), a.len()) == 0 && random_get(b.as_mut_ptr(), b.len()) == 0);
            }
            check("random bytes differ between calls", a != b && a.iter().any(|&x| x != 0));
        }
        "unsupported" => {
            let mut fd = 0u32;
            let mut pos = 0u64;
            let mut n = 0usize;
            // SAFETY: valid pointers; every call must fail with an errno, never trap.
            unsafe {
                let p = b"file.txt";
                let e = path_open(3, 0, p.as_ptr(), p.len(), 0, 0, 0, 0, &mut fd);
                check(&format!("path_open is an errno ({e})"), e != 0);
                check("fd_close(7) is EBADF (8)", fd_close(7) == 8);
                let e = fd_seek(1, 0, 0, &mut pos);
                check(&format!("fd_seek(stdout) is an errno ({e})"), e != 0);
                let e = poll_oneoff(std::ptr::null(), std::ptr::null_mut(), 0, &mut n);
                check(&format!("poll_oneoff is ENOSYS (52): {e}"), e == 52);
                check("sched_yield", sched_yield() == 0);
            }
            check("std::fs::read fails cleanly", std::fs::read("nothing").is_err());
        }
        "grow" => {
            let mib: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(64);
            let mut blocks: Vec<Vec<u8>> = Vec::new();
            for i in 0..mib {
                let mut b = vec![0u8; 1 << 20];
                for (j, page) in b.chunks_mut(4096).enumerate() {
                    page[0] = (i + j) as u8;
                }
                blocks.push(b);
            }
            let bad = blocks.iter().enumerate().map(|(i, b)| b.chunks(4096).enumerate().filter(|(j, p)| p[0] != (i + j) as u8).count()).sum::<usize>();
            let pages = core::arch::wasm32::memory_size(0);
            println!("grew to {} MiB of linear memory ({pages} wasm pages)", pages * 64 / 1024);
            check(&format!("{mib} MiB written and read back"), bad == 0 && pages * 65536 >= mib << 20);
        }
        "growbench" => {
            // memory.grow by one 64 KiB page at a time, each new page touched once: the cost of
            // growth (benchmark figures; nothing asserted).
            let pages: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2048);
            let start = std::time::Instant::now();
            for _ in 0..pages {
                let old = core::arch::wasm32::memory_grow(0, 1);
                if old == usize::MAX {
                    check("memory.grow", false);
                }
                // SAFETY: the page [old * 64 KiB, +64 KiB) was just added to the memory.
                unsafe { std::ptr::write_volatile((old * 65536) as *mut u8, 1) };
            }
            let ns = start.elapsed().as_nanos() / pages as u128;
            println!("growbench: {pages} x memory.grow(1) + first touch: {ns} ns per 64 KiB page");
        }
        "oob" => {
            println!("reading far beyond the linear memory");
            // SAFETY: none — this is the trap under test (an access beyond the memory's size).
            let v = unsafe { std::ptr::read_volatile(black_box(0xFFFF_FFF0usize) as *const u32) };
            println!("read {v} (no trap!)");
        }
        "stack" => {
            println!("recursing without end");
            println!("{}", recurse(0));
        }
        "div" => {
            println!("dividing by zero");
            // SAFETY: none — the raw i32.div_s with a zero divisor is the trap under test.
            let q = unsafe { std::intrinsics::unchecked_div(black_box(7i32), black_box(0i32)) };
            println!("quotient {q} (no trap!)");
        }
        "unreachable" => {
            println!("executing unreachable");
            core::arch::wasm32::unreachable();
        }
        "indirect" => {
            println!("call_indirect with the wrong signature");
            let f: fn(i32) -> i32 = black_box(add_one);
            // SAFETY: none — calling through a function pointer of another type is the trap under
            // test (call_indirect's signature check).
            let g: fn(i64, i64) -> i64 = unsafe { std::mem::transmute(f) };
            println!("{} (no trap!)", black_box(g)(1, 2));
        }
        other => {
            eprintln!("wasi-test: unknown mode {other}");
            std::process::exit(2);
        }
    }
}
