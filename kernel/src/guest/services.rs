//! The `HOST_SERVICES` calls (host-abi §7): console output, time, vectored exception handlers,
//! write watch, the commit figures.

use address_space::VmError;
use address_space::win32::*;

use super::{Guest, Handler};
use super::notification::thresholds;

/// Most vectored exception handlers a guest may register (kept in the kernel heap).
pub const MAX_HANDLERS: usize = 4096;
/// Addresses `GetWriteWatch` collects per pass (a bounded kernel buffer).
const WATCH_CHUNK: usize = 4096;

/// Bytes a `write` copies at once (longer writes go in pieces).
const WRITE_CHUNK: usize = 4096;
/// Most bytes one `write` system call prints; the stub calls again for the rest.
const WRITE_PIECE: u64 = 64 * 1024;

/// Benchmark hook (`test-hooks` feature): when set, called with each piece (at most [`WRITE_CHUNK`] bytes) of console
/// output a guest writes, before it is printed, inside the guest's system call (its space in CR3,
/// no lock held). Set only by the benchmark image (`src/bin/bench.rs`), which reads the work
/// counters and [`super::kernel_entries`] at the in-guest benchmark's marker lines.
#[cfg(feature = "test-hooks")]
pub static WRITE_HOOK: spin::Once<fn(&[u8])> = spin::Once::new();

/// The result of a HOST_SERVICES call whose pointer check failed: the Win32 error itself
/// (host-abi §7), and for a guard page the status 0x80000001 as Windows' GetLastError reports it
/// (host-abi §9; the guard is cleared, the retry succeeds).
pub(super) fn service_error(e: VmError) -> u32 {
    match e {
        VmError::GuardPage => e.win32_code(),
        _ => ERROR_NOACCESS,
    }
}

impl Guest {
    /// `write(buf, len)` as the stub makes it: prints at most [`WRITE_PIECE`] bytes of `buf` and
    /// returns how many (0: nothing), so that one kernel entry does a bounded amount of work
    /// whatever `len` is (the stub loops in ring 3). With `whole`, set on the stub's first call,
    /// nothing is written unless the whole buffer is readable.
    pub(super) fn write_console(&self, buf: u64, len: u64, whole: bool) -> u64 {
        let check = |len| self.mem().with_stack_growth(buf, len, || self.space.with(|s, cx| s.check_user_access(cx, buf, len, false)));
        if len == 0 || (whole && check(len).is_err()) {
            return 0;
        }
        let piece = len.min(WRITE_PIECE);
        if check(piece).is_err() {
            return 0;
        }
        let mut chunk = [0u8; WRITE_CHUNK];
        let mut done = 0;
        while done < piece {
            let n = (piece - done).min(WRITE_CHUNK as u64) as usize;
            if self.mem().read_bytes(buf + done, &mut chunk[..n]).is_err() {
                return done;
            }
            #[cfg(feature = "test-hooks")]
            if let Some(hook) = WRITE_HOOK.get() {
                hook(&chunk[..n]);
            }
            crate::console::write_bytes(&chunk[..n]);
            done += n as u64;
        }
        piece
    }

    pub(super) fn add_handler(&mut self, first: bool, function: u64) -> u64 {
        // The list lives in the kernel heap: bounded, so a guest cannot exhaust it.
        if !self.is_executable(function) || self.handlers.len() >= MAX_HANDLERS {
            return 0;
        }
        let orders = &mut self.handler_orders;
        let order = if first { orders.lowest.checked_sub(1).filter(|&k| k > 0) } else { orders.highest.checked_add(1) };
        let Some(order) = order else { return 0 };
        if first { orders.lowest = order } else { orders.highest = order }
        let handle = self.next_handle;
        self.next_handle += 1;
        let h = Handler { handle: handle * 16, function, order };
        if first { self.handlers.insert(0, h) } else { self.handlers.push(h) }
        h.handle
    }

    pub(super) fn remove_handler(&mut self, handle: u64) -> u64 {
        match self.handlers.iter().position(|h| h.handle == handle && handle != 0) {
            Some(i) => {
                self.handlers.remove(i);
                1
            }
            None => 0,
        }
    }

    /// `GetWriteWatch`: returns 0 or the Win32 error (host-abi §7).
    pub(super) fn get_write_watch(&mut self, flags: u32, base: u64, size: u64, addresses: u64, count_ptr: u64, gran_ptr: u64) -> u32 {
        // The two out-pointers Windows probes for writing first.
        if count_ptr == 0 || gran_ptr == 0 {
            return ERROR_NOACCESS;
        }
        if let Err(e) = self.mem().check_writable(count_ptr, 8).and_then(|_| self.mem().check_writable(gran_ptr, 4)) {
            return service_error(e);
        }
        let Ok(count) = self.mem().read_u64(count_ptr) else { return ERROR_NOACCESS };
        if count > 0 && addresses == 0 {
            return ERROR_NOACCESS;
        }
        // Windows' own checks (region, size, flags, count 0) come from the address space; a
        // one-slot probe without the reset flag validates without changing anything.
        let mut probe = [0u64; 1];
        if let Err(e) = self.space.get_write_watch(flags & !WRITE_WATCH_FLAG_RESET, base, size, if count == 0 { &mut [] } else { &mut probe }) {
            return e.win32_code();
        }
        // Every page touching [base, base + size) (one more than `size` alone says when `base` is
        // not page-aligned), as the address space counts them; the range was validated above, so
        // the sum cannot wrap.
        let pages = (base + size).div_ceil(PAGE_SIZE) - base / PAGE_SIZE;
        let capacity = count.min(pages);
        // The array is checked for all `*count` entries, as Windows probes it, however few the
        // range can fill (a count whose bytes wrap is ERROR_NOACCESS).
        if count > 0
            && let Err(e) = count.checked_mul(8).ok_or(VmError::NoAccess).and_then(|bytes| self.mem().check_writable_buffer(addresses, bytes))
        {
            return service_error(e);
        }
        // Collect in pieces of at most WATCH_CHUNK addresses, each call resuming after the last page the
        // previous one returned, so a huge request needs no huge kernel buffer and the cost stays
        // proportional to the tables present, not to the size of the range.
        let mut found = 0u64;
        let mut chunk = alloc::vec![0u64; WATCH_CHUNK];
        let end = base + size;
        let mut at = base;
        while at < end && found < capacity {
            let room = (capacity - found).min(WATCH_CHUNK as u64) as usize;
            let k = match self.space.get_write_watch(flags, at, end - at, &mut chunk[..room]) {
                Ok(k) => k,
                Err(e) => return e.win32_code(),
            };
            let bytes: alloc::vec::Vec<u8> = chunk[..k].iter().flat_map(|a| a.to_le_bytes()).collect();
            if self.mem().write_bytes(addresses + found * 8, &bytes).is_err() {
                return ERROR_NOACCESS;
            }
            found += k as u64;
            if k < room {
                break;
            }
            at = chunk[k - 1] + PAGE_SIZE;
        }
        self.mem().put_result(count_ptr, &found.to_le_bytes());
        self.mem().put_result(gran_ptr, &(PAGE_SIZE as u32).to_le_bytes());
        0
    }

    pub(super) fn query_commit(&self, out: u64) {
        let (low, high) = thresholds();
        let c = crate::memory::commit_state();
        let info = [c.limit_bytes, c.committed_bytes, c.critical_reserve_bytes, low, high];
        let bytes: alloc::vec::Vec<u8> = info.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.mem().put_result(out, &bytes);
    }
}
