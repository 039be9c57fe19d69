//! WASI preview 1 (`wasi_snapshot_preview1`), the subset a command module needs to run on this
//! kernel: console output, arguments, an empty environment, clocks, random bytes, exit.
//!
//! | call | behaviour |
//! | --- | --- |
//! | `fd_write` | fds 1 and 2 go to the host console (`HOST_SERVICES.write`); other fds `EBADF` |
//! | `fd_read` | fd 0 is at end of file (0 bytes); other fds `EBADF` |
//! | `fd_fdstat_get` | fds 0–2: a character device; other fds `EBADF` |
//! | `proc_exit` | ends the program with that exit code |
//! | `args_get`, `args_sizes_get` | argv[0] is the module's file name, then the `--guest-args` words |
//! | `environ_get`, `environ_sizes_get` | no variables |
//! | `clock_time_get`, `clock_res_get` | every clock is the host's monotonic nanoseconds since boot (resolution 1 ns); other ids `EINVAL` |
//! | `random_get` | pseudo-random bytes (xorshift seeded from the TSC; not for cryptography) |
//! | `sched_yield` | success (one thread) |
//! | anything else | `EBADF` for an `fd_*` call on an fd other than 0–2, else `ENOSYS`; never a trap |
//!
//! A pointer or length from the module that does not lie inside its memory is `EFAULT`.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use wasmtime::{Caller, Extern, ExternType, Linker, Module, Val, ValType};

use crate::sys::host;

/// WASI's name for its module.
pub const MODULE: &str = "wasi_snapshot_preview1";

const SUCCESS: i32 = 0;
const EBADF: i32 = 8;
const EFAULT: i32 = 21;
const EINVAL: i32 = 28;
const ENOSYS: i32 = 52;

/// What a WASI program's store holds.
pub struct WasiCtx {
    /// argv: the module's file name, then the words of the guest's argument string.
    pub args: Vec<String>,
    random_state: u64,
}

impl WasiCtx {
    pub fn new(args: Vec<String>) -> WasiCtx {
        // SAFETY: rdtsc is allowed in ring 3 and has no memory effects.
        let seed = unsafe { core::arch::x86_64::_rdtsc() } ^ host().ticks_ns().rotate_left(32);
        WasiCtx { args, random_state: seed | 1 }
    }

    fn next_random(&mut self) -> u64 {
        let mut x = self.random_state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.random_state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// `proc_exit`: carried out of the wasm call as the call's error.
#[derive(Debug)]
pub struct Exit(pub i32);

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "exit with code {}", self.0)
    }
}

impl core::error::Error for Exit {}

/// A module's memory seen by a host function, with every access bounds-checked.
struct Memory<'a>(&'a mut [u8]);

impl Memory<'_> {
    fn range(&self, ptr: i32, len: usize) -> Result<core::ops::Range<usize>, i32> {
        let start = ptr as u32 as usize;
        let end = start.checked_add(len).ok_or(EFAULT)?;
        if end > self.0.len() { Err(EFAULT) } else { Ok(start..end) }
    }
    fn bytes(&self, ptr: i32, len: usize) -> Result<&[u8], i32> {
        let r = self.range(ptr, len)?;
        Ok(&self.0[r])
    }
    fn write(&mut self, ptr: i32, data: &[u8]) -> Result<(), i32> {
        let r = self.range(ptr, data.len())?;
        self.0[r].copy_from_slice(data);
        Ok(())
    }
    fn u32(&self, ptr: i32) -> Result<u32, i32> {
        Ok(u32::from_le_bytes(self.bytes(ptr, 4)?.try_into().expect("4 bytes")))
    }
    fn put_u32(&mut self, ptr: i32, v: u32) -> Result<(), i32> {
        self.write(ptr, &v.to_le_bytes())
    }
    fn put_u64(&mut self, ptr: i32, v: u64) -> Result<(), i32> {
        self.write(ptr, &v.to_le_bytes())
    }
}

/// Runs `f` over the caller's exported memory and its context; `EFAULT` without a memory.
fn with_memory(caller: &mut Caller<'_, WasiCtx>, f: impl FnOnce(&mut Memory<'_>, &mut WasiCtx) -> Result<(), i32>) -> i32 {
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else { return EFAULT };
    let (data, ctx) = memory.data_and_store_mut(caller);
    match f(&mut Memory(data), ctx) {
        Ok(()) => SUCCESS,
        Err(errno) => errno,
    }
}

/// Strings laid out as WASI's `*_get` calls want them: pointers into one buffer of
/// NUL-terminated strings.
fn strings_get(m: &mut Memory<'_>, strings: &[String], ptrs: i32, buf: i32) -> Result<(), i32> {
    let mut at = buf as u32;
    for (i, s) in strings.iter().enumerate() {
        m.put_u32(ptrs.wrapping_add(4 * i as i32), at)?;
        m.write(at as i32, s.as_bytes())?;
        m.write(at.wrapping_add(s.len() as u32) as i32, &[0])?;
        at = at.wrapping_add(s.len() as u32 + 1);
    }
    Ok(())
}

fn strings_sizes(m: &mut Memory<'_>, strings: &[String], count: i32, size: i32) -> Result<(), i32> {
    m.put_u32(count, strings.len() as u32)?;
    m.put_u32(size, strings.iter().map(|s| s.len() as u32 + 1).sum())
}

/// Adds the implemented calls to `linker`, and for every other import of `module` from
/// `wasi_snapshot_preview1` a function that returns an errno (`EBADF` or `ENOSYS`).
pub fn add_to_linker(linker: &mut Linker<WasiCtx>, module: &Module) -> wasmtime::Result<()> {
    linker.func_wrap(MODULE, "fd_write", |mut c: Caller<'_, WasiCtx>, fd: i32, iovs: i32, iovs_len: i32, nwritten: i32| -> i32 {
        if fd != 1 && fd != 2 {
            return EBADF;
        }
        with_memory(&mut c, |m, _| {
            let mut total = 0u32;
            for i in 0..iovs_len.max(0) {
                let iov = iovs.wrapping_add(8 * i);
                let (ptr, len) = (m.u32(iov)?, m.u32(iov.wrapping_add(4))?);
                let bytes = m.bytes(ptr as i32, len as usize)?;
                host().write_bytes(bytes);
                total = total.wrapping_add(len);
            }
            m.put_u32(nwritten, total)
        })
    })?;
    linker.func_wrap(MODULE, "fd_read", |mut c: Caller<'_, WasiCtx>, fd: i32, _iovs: i32, _iovs_len: i32, nread: i32| -> i32 {
        if fd != 0 {
            return EBADF;
        }
        with_memory(&mut c, |m, _| m.put_u32(nread, 0))
    })?;
    linker.func_wrap(MODULE, "fd_fdstat_get", |mut c: Caller<'_, WasiCtx>, fd: i32, out: i32| -> i32 {
        if !(0..=2).contains(&fd) {
            return EBADF;
        }
        with_memory(&mut c, |m, _| {
            // fdstat: filetype u8 (2 = character device), flags u16 at 2 (1 = append for the
            // output fds), rights_base u64 at 8, rights_inheriting u64 at 16.
            let mut stat = [0u8; 24];
            stat[0] = 2;
            stat[2] = u8::from(fd != 0);
            let rights: u64 = if fd == 0 { 1 << 1 } else { 1 << 6 }; // fd_read / fd_write
            stat[8..16].copy_from_slice(&rights.to_le_bytes());
            m.write(out, &stat)
        })
    })?;
    linker.func_wrap(MODULE, "proc_exit", |_: Caller<'_, WasiCtx>, code: i32| -> wasmtime::Result<()> {
        Err(wasmtime::Error::new(Exit(code)))
    })?;
    linker.func_wrap(MODULE, "args_sizes_get", |mut c: Caller<'_, WasiCtx>, count: i32, size: i32| -> i32 {
        with_memory(&mut c, |m, ctx| strings_sizes(m, &ctx.args, count, size))
    })?;
    linker.func_wrap(MODULE, "args_get", |mut c: Caller<'_, WasiCtx>, argv: i32, buf: i32| -> i32 {
        with_memory(&mut c, |m, ctx| strings_get(m, &ctx.args, argv, buf))
    })?;
    linker.func_wrap(MODULE, "environ_sizes_get", |mut c: Caller<'_, WasiCtx>, count: i32, size: i32| -> i32 {
        with_memory(&mut c, |m, _| strings_sizes(m, &[], count, size))
    })?;
    linker.func_wrap(MODULE, "environ_get", |mut c: Caller<'_, WasiCtx>, environ: i32, buf: i32| -> i32 {
        with_memory(&mut c, |m, _| strings_get(m, &[], environ, buf))
    })?;
    linker.func_wrap(MODULE, "clock_res_get", |mut c: Caller<'_, WasiCtx>, id: i32, out: i32| -> i32 {
        if !(0..=3).contains(&id) {
            return EINVAL;
        }
        with_memory(&mut c, |m, _| m.put_u64(out, 1))
    })?;
    linker.func_wrap(MODULE, "clock_time_get", |mut c: Caller<'_, WasiCtx>, id: i32, _precision: i64, out: i32| -> i32 {
        if !(0..=3).contains(&id) {
            return EINVAL;
        }
        with_memory(&mut c, |m, _| m.put_u64(out, host().ticks_ns()))
    })?;
    linker.func_wrap(MODULE, "random_get", |mut c: Caller<'_, WasiCtx>, buf: i32, len: i32| -> i32 {
        with_memory(&mut c, |m, ctx| {
            let r = m.range(buf, len as u32 as usize)?;
            for chunk in m.0[r].chunks_mut(8) {
                let v = ctx.next_random().to_le_bytes();
                chunk.copy_from_slice(&v[..chunk.len()]);
            }
            Ok(())
        })
    })?;
    linker.func_wrap(MODULE, "sched_yield", || -> i32 { SUCCESS })?;

    // Every other import from WASI: a function of the imported type returning an errno.
    for import in module.imports() {
        let (ExternType::Func(ty), MODULE) = (import.ty(), import.module()) else { continue };
        let name = import.name();
        if IMPLEMENTED.contains(&name) {
            continue;
        }
        let fd_call = name.starts_with("fd_");
        let results: Vec<ValType> = ty.results().collect();
        linker.func_new(MODULE, name, ty.clone(), move |_, params, out| {
            let errno = match params.first() {
                Some(Val::I32(fd)) if fd_call && !(0..=2).contains(fd) => EBADF,
                _ => ENOSYS,
            };
            for (slot, t) in out.iter_mut().zip(&results) {
                *slot = match t {
                    ValType::I64 => Val::I64(0),
                    ValType::F32 => Val::F32(0),
                    ValType::F64 => Val::F64(0),
                    _ => Val::I32(0),
                };
            }
            if let (Some(first), Some(ValType::I32)) = (out.first_mut(), results.first()) {
                *first = Val::I32(errno);
            }
            Ok(())
        })?;
    }
    Ok(())
}

/// The calls `add_to_linker` implements.
const IMPLEMENTED: &[&str] = &[
    "fd_write",
    "fd_read",
    "fd_fdstat_get",
    "proc_exit",
    "args_sizes_get",
    "args_get",
    "environ_sizes_get",
    "environ_get",
    "clock_res_get",
    "clock_time_get",
    "random_get",
    "sched_yield",
];
