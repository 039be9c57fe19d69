//! Guests: untrusted ring-3 programs, each in an address space of its own, loaded from ELF files
//! and calling the host through the binary contract of `host-abi.md`.
//!
//! - The `guest-loader` crate (host-tested) checks the file and decides its layout; [`Guest::load`]
//!   maps its segments as one `MEM_IMAGE` allocation (per-page protections from the segment
//!   flags, `PT_GNU_RELRO` pages read-only), applies its `R_X86_64_RELATIVE` relocations as it
//!   reads them, maps the host's library and pages ([`host_pages`]) the same way and reserves its
//!   stack: 1 MiB, the top two pages committed, a guard page below them.
//! - [`Guest::run`] drops to ring 3 at the entry point with `rdi` = the `IHostMemoryManager`
//!   object and `rsi` = `HOST_SERVICES`, and serves its system calls ([`calls`], the thread
//!   services in [`threads`]) and exceptions ([`exceptions`]) on whichever CPU runs the thread
//!   ([`sched`]) until it ends: by returning from its entry point, by `exit`, by an unhandled
//!   exception on any thread, or when its last thread ends. Then its space is destroyed: every
//!   frame and page-table page goes back.
//! - Guest memory is never a Rust reference: the kernel reads it through the address space's
//!   checked copies (`read_user`), which refuse anything that is not committed and accessible to
//!   the guest (ERROR_NOACCESS) and report a guard page (0x80000001, clearing it), and writes it
//!   the same way: within a page with one hardware-checked copy (`arch::probe::copy_to_user`,
//!   SMAP opened around its stores only, faults resolved or refused by the memory manager as
//!   the guest's own would be), across pages with `write_user` — so a guest can never make the
//!   kernel touch kernel memory or memory it may not write.
//!
//! One guest runs at a time; its threads run on every CPU ([`sched`]). The CPU that called
//! [`run_guest`] serves it on a kernel stack of its own and destroys it at its end; the other
//! CPUs join from their idle loops, on the stacks they idle on.

pub mod call_clock;
pub mod calls;
pub mod cpu_time;
pub mod exceptions;
pub mod host_pages;
pub mod hresult;
mod manager;
mod notification;
pub mod ramdisk;
pub mod sched;
mod services;
mod threads;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;

use address_space::win32::*;
use address_space::{AllocationKind, CriticalLevel, SpaceConfig, VmError};
use guest_loader::{Image, Policy, Rights};
use x86_64::align_down;

use crate::arch::probe::{self, UserCopy};
use crate::arch::user::UserContext;
use crate::memory::Space;
use host_pages::{HOST_BASE, HOST_SERVICES, MANAGER_OBJECT, Stub, stub};
use manager::ManagerRefs;

/// Where a static-PIE guest is placed (the default image base of 64-bit Windows executables).
pub const PIE_BASE: u64 = 0x1_4000_0000;
/// Reserved size of a guest's stack.
pub const STACK_RESERVE: u64 = 1 << 20;
/// Pages committed at the top of the stack at start.
pub const STACK_INITIAL_PAGES: u64 = 2;

/// The host's ring-3 library (kernel/host-lib), built for the guest target and embedded here.
const HOST_LIB: &[u8] = include_bytes!(env!("CARGO_BIN_FILE_HOST_LIB_host-lib"));
/// One CPU's count of [`KERNEL_ENTRIES`], in a cache line of its own.
#[repr(align(64))]
struct EntryCount(core::sync::atomic::AtomicU64);

/// Entries into the kernel from ring 3 (system calls and exceptions), for statistics and
/// benchmarks: per CPU, each counted by the CPU that took it ([`count_kernel_entry`], from the
/// run loop with interrupts off: a load and a store, no locked instruction on every host call's
/// path); [`kernel_entries`] adds them up.
static KERNEL_ENTRIES: [EntryCount; crate::arch::percpu::MAX_CPUS] =
    [const { EntryCount(core::sync::atomic::AtomicU64::new(0)) }; crate::arch::percpu::MAX_CPUS];

/// Counts one entry into the kernel from ring 3 on this CPU (the run loop only: only this CPU
/// writes its counter, and no interrupt handler does, so a load and a store suffice).
#[inline]
fn count_kernel_entry() {
    use core::sync::atomic::Ordering::Relaxed;
    let count = &KERNEL_ENTRIES[crate::arch::percpu::current_index()].0;
    count.store(count.load(Relaxed).wrapping_add(1), Relaxed);
}

/// The number of entries into the kernel from guests since boot (every CPU's count added up).
pub fn kernel_entries() -> u64 {
    KERNEL_ENTRIES.iter().map(|c| c.0.load(core::sync::atomic::Ordering::Relaxed)).fold(0, u64::wrapping_add)
}

/// The largest image (lowest to highest segment page) the loader maps.
pub const MAX_IMAGE_SIZE: u64 = 1 << 30;
/// Where the host library is mapped in every guest.
pub const HOST_LIB_BASE: u64 = 0x7FFF_FFF0_0000;

/// The refusal message for a guest whose setup failed at `what` with `e`.
fn fail(what: &str, e: VmError) -> String {
    format!("{what}: {e:?} (Win32 {})", e.win32_code())
}

/// The layout policy for images whose space ends at `user_end`, a static PIE going to `pie_base`.
fn image_policy(cfg: &SpaceConfig, user_end: u64, pie_base: u64) -> Policy {
    Policy { user_min: cfg.min_address, user_end, max_image_size: MAX_IMAGE_SIZE, base_alignment: 0x1_0000, pie_base }
}

/// The page protection the image's pages get for the rights of the segments on them.
fn page_protection(r: Rights) -> u32 {
    match (r.read || r.write, r.write, r.execute) {
        (_, true, _) => PAGE_READWRITE,
        (true, false, true) => PAGE_EXECUTE_READ,
        (false, false, true) => PAGE_EXECUTE,
        (true, false, false) => PAGE_READONLY,
        (false, false, false) => PAGE_NOACCESS,
    }
}

/// Maps a checked image into `space` as one `MEM_IMAGE` allocation with its final per-page
/// protections (RELRO pages already read-only: the loader's writes ignore protections), copies
/// its segments and applies its relocations as it reads them, in runs of adjacent targets
/// written together from a fixed buffer (no heap per relocation). Returns the entry point.
///
/// Kernel heap per file: the protection list, 4 bytes per page, at most `MAX_IMAGE_SIZE / 1024`.
fn map_image(space: &Space, image: &Image<'_>, host_owned: bool) -> Result<u64, String> {
    let prots: Vec<u32> = image.page_rights().map(page_protection).collect();
    space
        .with(|s, cx| s.create_image(cx, image.base(), &prots, host_owned, CriticalLevel::Process))
        .map_err(|e| fail("mapping the image", e))?;
    drop(prots);
    for seg in image.segments().filter(|s| !s.bytes.is_empty()) {
        space.with(|s, cx| s.write_image(cx, seg.address, seg.bytes)).map_err(|e| fail("copying a segment", e))?;
    }
    let write_run = |at: u64, bytes: &[u8]| space.with(|s, cx| s.write_image(cx, at, bytes)).map_err(|e| fail("relocating", e));
    let mut run = [0u8; 512];
    let (mut run_start, mut run_len) = (0u64, 0usize);
    for r in image.relocations() {
        if run_len > 0 && (run_len == run.len() || run_start.wrapping_add(run_len as u64) != r.address) {
            write_run(run_start, &run[..run_len])?;
            run_len = 0;
        }
        if run_len == 0 {
            run_start = r.address;
        }
        run[run_len..run_len + 8].copy_from_slice(&r.value.to_le_bytes());
        run_len += 8;
    }
    if run_len > 0 {
        write_run(run_start, &run[..run_len])?;
    }
    Ok(image.entry())
}

/// Set by [`set_guest_args_for_test`]: the argument string instead of fw_cfg's.
#[cfg(feature = "test-hooks")]
static GUEST_ARGS_OVERRIDE: spin::Mutex<Option<Vec<u8>>> = spin::Mutex::new(None);

/// For QEMU test images (`test-hooks` feature), which cannot pass fw_cfg: guests loaded from now on get `args` as their
/// argument string (an empty string is an empty argument string).
#[cfg(feature = "test-hooks")]
pub fn set_guest_args_for_test(args: &str) {
    *GUEST_ARGS_OVERRIDE.lock() = Some(args.as_bytes().to_vec());
}

/// The argument string every guest gets (`run-qemu.sh --guest-args "..."`, QEMU's fw_cfg file
/// `opt/vmk/args`, or what a test set with `set_guest_args_for_test` (`test-hooks`)); empty without one.
pub fn guest_args() -> Vec<u8> {
    #[cfg(feature = "test-hooks")]
    if let Some(args) = GUEST_ARGS_OVERRIDE.lock().as_ref() {
        return args.clone();
    }
    static ARGS: spin::Once<Vec<u8>> = spin::Once::new();
    ARGS.call_once(|| {
        let mut a = crate::arch::fw_cfg::file("opt/vmk/args").unwrap_or_default();
        while a.last().is_some_and(|&b| b == 0 || b == b'\n') {
            a.pop();
        }
        a
    })
    .clone()
}

/// A registered vectored exception handler.
#[derive(Debug, Clone, Copy)]
struct Handler {
    handle: u64,
    function: u64,
    /// Its place in the call order, never reused: the list is sorted by it, and the exception
    /// dispatcher asks for the handler after the one it called by this key, so that handlers
    /// added or removed by other threads meanwhile never make it skip or repeat one.
    order: u64,
}

/// The order keys of the handlers added first and last (`add_vectored_exception_handler` with
/// `first` takes the key below the lowest, without it the key above the highest).
#[derive(Debug, Clone, Copy)]
struct HandlerOrders {
    lowest: u64,
    highest: u64,
}

/// A loaded guest.
pub struct Guest {
    name: String,
    /// Its address space (shared with the scheduler, which serves page faults and memory calls
    /// without the guest's lock).
    space: Arc<Space>,
    /// The highest user address of its space (fixed at creation; read without the space's lock).
    max_application_address: u64,
    handlers: Vec<Handler>,
    handler_orders: HandlerOrders,
    next_handle: u64,
    /// The part of the state that belongs to the thread whose exit is being served: swapped in
    /// by the scheduler ([`sched`]) for the time it holds the guest's lock. At load, the main
    /// thread's.
    thread: ThreadLocal,
    /// A notification callback was entered and has not come back (host-abi §9, §10.3: never
    /// entered while another one runs, on any thread).
    notifying: bool,
    /// The manager's reference count (host-abi §9: starts at 1, never destroys).
    manager_refs: Arc<ManagerRefs>,
    /// Set after E_FAIL: every later manager call returns HOST_E_CLRNOTAVAILABLE.
    poisoned: bool,
    /// Address ranges the runtime told us it acquired by other means (start, size).
    acquired: Vec<(u64, u64)>,
    /// The registered `ICLRMemoryNotificationCallback` object, if any.
    callback: Option<u64>,
    /// The memory band last reported (or current at registration); `None` before a callback is
    /// registered.
    band: Option<host_abi::MemoryAvailable>,
    /// The [`notification::commit_epoch`] at the last band check: the check runs again only once
    /// the commit charge may have changed (a commit, decommit, release or stack growth of any
    /// guest's or thread's).
    band_epoch: u64,
    /// CPU time used by all its threads and its limit.
    cpu: cpu_time::CpuClock,
    /// Its threads and their scheduling state (version 2, host-abi §10.2).
    threads: threads::Threads,
}

/// What of a guest's state is per thread (host-abi §10.2: exceptions are delivered on the
/// faulting thread, each thread has a stack of its own).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ThreadLocal {
    /// Lowest address of the thread's stack reservation and its end.
    stack: (u64, u64),
    /// Resumes at a `rip` outside user space since the last good one (bounded, see
    /// [`exceptions::MAX_BAD_RESUMES`]).
    bad_resumes: u32,
    /// The lowest address (the dispatcher's `rsp`) of the outermost exception frame whose
    /// handlers may still run on this thread: a host call from below it comes from a handler,
    /// and a band change it makes is delivered once the handlers are left (a host call or resume
    /// above it).
    handler_frame: Option<u64>,
    /// The lowest address (the callback dispatcher's `rsp`) of the frame of a notification
    /// callback this thread entered and has not come back from: if the thread ends inside it
    /// (`exit_thread`) or leaves it by a jump of its own (a host call or resume above it), the
    /// guest's `notifying` is cleared with it, so later band changes are still delivered.
    notification_frame: Option<u64>,
}

/// A guest's memory as one of its threads reaches it: the checked copies of its address space,
/// with that thread's stack growing when a copy touches its guard page (as Windows grows a
/// thread's stack when the kernel touches its guard). It needs nothing of the guest but the
/// space and the thread's stack, so the scheduler serves page faults and the manager's memory
/// calls through it without the guest's lock.
pub(crate) struct GuestMemory<'a> {
    space: &'a Space,
    /// The thread's stack reservation: (lowest address, end).
    stack: (u64, u64),
}

/// Whether `len` bytes at guest address `addr` lie within one page (nothing, for `len` 0): a
/// hardware-checked copy of them is then all or nothing.
pub(super) fn within_one_page(addr: u64, len: u64) -> bool {
    len == 0 || addr.checked_add(len - 1).is_some_and(|last| last & !(PAGE_SIZE - 1) == addr & !(PAGE_SIZE - 1))
}

impl GuestMemory<'_> {
    /// Runs a checked access to guest memory at `[addr, addr+len)`; if it hit the guard page of
    /// the guest's own stack (the check cleared that guard), grows the stack as a touch from the
    /// guest would (Windows grows a thread's stack when the kernel touches its guard too) and
    /// retries. Any other guard page stays the caller's 0x80000001, and so does the end of the
    /// stack (the last pages are then committed: the retried call succeeds).
    fn with_stack_growth<T>(&self, addr: u64, len: u64, mut access: impl FnMut() -> Result<T, VmError>) -> Result<T, VmError> {
        for _ in 0..4 {
            match access() {
                Err(VmError::GuardPage) => {
                    let Some(page) = self.stack_bottom_in(addr, len) else { return Err(VmError::GuardPage) };
                    if self.grow_stack(page) == exceptions::StackGrowth::Overflow {
                        return Err(VmError::GuardPage);
                    }
                }
                other => return other,
            }
        }
        access()
    }

    /// The lowest committed page of the guest's stack if it lies in `[addr, addr+len)`: after an
    /// access check cleared the stack's guard, that page is where the guard was.
    fn stack_bottom_in(&self, addr: u64, len: u64) -> Option<u64> {
        let (low, high) = self.stack;
        let start = align_down(addr.max(low), PAGE_SIZE);
        let end = addr.saturating_add(len.max(1)).min(high);
        let mut page = start;
        while page < end {
            let below_reserved = page > low && self.space.virtual_query(page - PAGE_SIZE).is_ok_and(|q| q.state == MEM_RESERVE);
            if below_reserved && self.space.virtual_query(page).is_ok_and(|q| q.state == MEM_COMMIT) {
                return Some(page);
            }
            page += PAGE_SIZE;
        }
        None
    }

    fn read_bytes(&self, addr: u64, buf: &mut [u8]) -> Result<(), VmError> {
        let len = buf.len() as u64;
        self.with_stack_growth(addr, len, || self.space.with(|s, cx| s.read_user(cx, addr, buf)))
    }

    fn write_bytes(&self, addr: u64, data: &[u8]) -> Result<(), VmError> {
        self.write_all(&[UserCopy { to: addr, data }]).map_err(|(_, e)| e)
    }

    /// Writes each piece to guest memory in order as
    /// [`AddressSpace::write_user`](address_space::AddressSpace::write_user) does (each piece
    /// all or nothing; a guard page cleared and reported), growing the thread's stack as
    /// [`with_stack_growth`](Self::with_stack_growth) says; the first piece that fails stops the
    /// rest: `Err((its index, why))`. When every piece lies within a page and the guest's space
    /// is in this CPU's CR3 (it is whenever a thread's calls are served; not when a CPU picks a
    /// woken thread before loading the space, which writes `wait_thread`'s exit code) that is one
    /// hardware-checked copy ([`probe::copy_to_user`]), with no lock and no page-table walk.
    fn write_all(&self, pieces: &[UserCopy<'_>]) -> Result<(), (usize, VmError)> {
        if !self.space.is_active() || !pieces.iter().all(|p| within_one_page(p.to, p.data.len() as u64)) {
            return pieces.iter().enumerate().try_for_each(|(i, p)| {
                self.with_stack_growth(p.to, p.data.len() as u64, || self.space.with(|s, cx| s.write_user(cx, p.to, p.data))).map_err(|e| (i, e))
            });
        }
        self.copy_growing_stack(|| probe::copy_to_user(pieces), |i| (pieces[i].to, pieces[i].data.len() as u64))
    }

    /// Reads guest memory into each piece in order as
    /// [`AddressSpace::read_user`](address_space::AddressSpace::read_user) does (pages checked in
    /// ascending order, a guard page cleared and reported), growing the thread's stack as
    /// [`with_stack_growth`](Self::with_stack_growth) says; the first piece that fails stops the
    /// rest. With the guest's space in this CPU's CR3 that is one hardware-checked copy
    /// ([`probe::copy_from_user`]): no lock and no page-table walk per piece.
    fn read_all(&self, pieces: &mut [probe::UserRead<'_>]) -> Result<(), VmError> {
        if !self.space.is_active() {
            return pieces.iter_mut().try_for_each(|p| self.read_bytes(p.from, p.buf));
        }
        let mut ranges = [(0, 0); probe::MAX_USER_COPIES];
        for (r, p) in ranges.iter_mut().zip(pieces.iter()) {
            *r = (p.from, p.buf.len() as u64);
        }
        self.copy_growing_stack(|| probe::copy_from_user(pieces), |i| ranges[i]).map_err(|(_, e)| e)
    }

    /// Makes a hardware-checked copy (`copy`: the piece that failed and its fault) as
    /// [`with_stack_growth`](Self::with_stack_growth) makes a checked access: when piece `i`
    /// (guest range `range(i)`) hit the guard page of the thread's stack, the stack grows and the
    /// copy is made again (the pieces before it too: the same bytes). The error: the piece, and
    /// 0x80000001 for a guard page, else ERROR_NOACCESS.
    fn copy_growing_stack(
        &self,
        mut copy: impl FnMut() -> Result<(), (usize, probe::FaultRecord)>,
        range: impl Fn(usize) -> (u64, u64),
    ) -> Result<(), (usize, VmError)> {
        let mut copy = || {
            copy().map_err(|(i, f)| match f.memory {
                Some(m) if m.code == probe::MemoryFault::GUARD_PAGE => (i, VmError::GuardPage),
                _ => (i, VmError::NoAccess),
            })
        };
        for _ in 0..4 {
            match copy() {
                Err((i, VmError::GuardPage)) => {
                    let (at, len) = range(i);
                    let Some(page) = self.stack_bottom_in(at, len) else { return Err((i, VmError::GuardPage)) };
                    if self.grow_stack(page) == exceptions::StackGrowth::Overflow {
                        return Err((i, VmError::GuardPage));
                    }
                }
                other => return other,
            }
        }
        copy()
    }

    /// Writes a call's result to a guest out-pointer, dropping a failure: that is the contract
    /// of every caller. A result goes to a pointer the call checked writable before changing
    /// anything (`out_pointer`, `out_result`, `check_writable`), so the write fails only if
    /// another thread of the guest freed or protected that page in between (the guest's own
    /// race, as on Windows, where such a write faults in the kernel and is dropped the same way);
    /// the NULL a failed call stores (host-abi §9) is best effort, the call's own error being
    /// what the caller sees; `query_commit` returns nothing to report a failure with (Windows'
    /// `void` functions ignore a bad buffer the same way).
    fn put_result(&self, addr: u64, data: &[u8]) {
        let _ = self.write_bytes(addr, data);
    }

    fn read_u64(&self, addr: u64) -> Result<u64, VmError> {
        let mut b = [0u8; 8];
        self.read_bytes(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Whether `[addr, addr + len)` is committed, writable memory with no guard page, so that a
    /// store there does nothing but store: where a call that fails before its pointer checks (a
    /// bad `this`) still leaves its NULL result (host-abi §9) without clearing a guard or growing
    /// a stack. Read-only: two queries at most for the 8 bytes it is asked about.
    fn plainly_writable(&self, addr: u64, len: u64) -> bool {
        let Some(end) = addr.checked_add(len) else { return false };
        let mut page = addr & !(PAGE_SIZE - 1);
        while page < end {
            let writable = self.space.virtual_query(page).is_ok_and(|q| {
                q.state == MEM_COMMIT && q.protect & (PAGE_READWRITE | PAGE_EXECUTE_READWRITE) != 0 && q.protect & PAGE_GUARD == 0
            });
            if !writable {
                return false;
            }
            page += PAGE_SIZE;
        }
        true
    }

    fn check_writable(&self, addr: u64, len: u64) -> Result<(), VmError> {
        self.with_stack_growth(addr, len, || self.space.with(|s, cx| s.check_user_access(cx, addr, len, true)))
    }

    /// Checks a buffer of the caller's chosen size, `len` bytes at `addr`, writable as Windows
    /// probes one it is given (`ProbeForWrite`): all of it, whatever part the call then writes.
    /// A range that wraps or leaves user space fails at once (no page of it is touched); else
    /// pages are checked in ascending order as [`check_writable`](Self::check_writable) does, a
    /// 2 MiB piece per hold of the space lock. Bounded: every page checked is committed, so a
    /// range runs past at most the guest's commit before a page fails.
    fn check_writable_buffer(&self, addr: u64, len: u64) -> Result<(), VmError> {
        const PIECE: u64 = address_space::LARGE_PAGE_SIZE;
        let max_end = self.space.with(|s, _| s.config().max_address_end);
        let end = match addr.checked_add(len) {
            Some(end) if end <= max_end => end,
            _ => return Err(VmError::NoAccess),
        };
        let mut at = addr;
        while at < end {
            let piece = (end - at).min(PIECE - at % PIECE);
            self.check_writable(at, piece)?;
            at += piece;
        }
        Ok(())
    }
}

/// How a guest ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestOutcome {
    /// The file was refused before it ran.
    Refused(String),
    /// It ran and ended with this exit code.
    Exited(i32),
}

/// How control leaves a run loop early: the guest ended with an exit code.
pub(crate) type Ended = i32;

impl Guest {
    /// Checks `file`, creates the guest's address space and maps everything it needs.
    ///
    /// # Errors
    /// A message naming the reason the file is refused (malformed, unsupported, or no memory).
    pub fn load(name: &str, file: &[u8]) -> Result<Guest, String> {
        let space = Space::new().map_err(|e| format!("no address space: {e:?}"))?;
        let cfg = space.with(|s, _| *s.config());
        let image = Image::parse(file, &image_policy(&cfg, HOST_LIB_BASE, PIE_BASE)).map_err(|e| e.to_string())?;
        let entry = map_image(&space, &image, false)?;
        // The host's ring-3 library (IHostMalloc), as a host-owned image below the host pages.
        let host_lib = Image::parse(HOST_LIB, &image_policy(&cfg, HOST_BASE, HOST_LIB_BASE)).map_err(|e| format!("host library: {e}"))?;
        let create_malloc = map_image(&space, &host_lib, true).map_err(|e| format!("host library: {e}"))?;
        space
            .with(|s, cx| s.create_image(cx, HOST_BASE, &[PAGE_EXECUTE_READ, PAGE_READONLY], true, CriticalLevel::Process))
            .map_err(|e| fail("mapping the host pages", e))?;
        space
            .with(|s, cx| {
                s.write_image(cx, host_pages::HOST_CODE, &host_pages::code_page())?;
                s.write_image(cx, host_pages::HOST_DATA, &host_pages::data_page(cfg.max_application_address(), create_malloc, &guest_args(), sched::cpu_count()))
            })
            .map_err(|e| fail("filling the host pages", e))?;
        let (stack_base, stack_top) = threads::allocate_stack(&space, STACK_RESERVE, STACK_INITIAL_PAGES * PAGE_SIZE, CriticalLevel::Process)
            .map_err(|e| fail("making the stack", e))?;
        // The entry point is called: its return address leads to `exit(eax)`.
        space
            .with(|s, cx| s.write_user(cx, stack_top - 8, &stub(Stub::GuestReturn).to_le_bytes()))
            .map_err(|e| fail("committing the stack", e))?;
        let entry_context = UserContext {
            rip: entry,
            rsp: stack_top - 8,
            rdi: MANAGER_OBJECT,
            rsi: HOST_SERVICES,
            // Beyond the contract's two arguments: the argument string (see host_pages::ARGS).
            rdx: host_pages::ARGS,
            rflags: 0x202,
            ..UserContext::default()
        };
        let main = ThreadLocal { stack: (stack_base, stack_top), bad_resumes: 0, handler_frame: None, notification_frame: None };
        Ok(Guest {
            name: name.into(),
            space: Arc::new(space),
            max_application_address: cfg.max_application_address(),
            handlers: Vec::new(),
            // Keys grow from the middle both ways; 0 stays below every key (the dispatcher's start).
            handler_orders: HandlerOrders { lowest: 1 << 63, highest: 1 << 63 },
            next_handle: 1,
            thread: main,
            notifying: false,
            manager_refs: Arc::new(ManagerRefs::default()),
            poisoned: false,
            acquired: Vec::new(),
            callback: None,
            band: None,
            band_epoch: u64::MAX,
            cpu: cpu_time::CpuClock::start(),
            threads: threads::Threads::new(entry_context, main).ok_or("no kernel memory for the thread table")?,
        })
    }

    /// The guest's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The guest's address space.
    pub fn space(&self) -> &Space {
        &self.space
    }

    /// Runs the guest to its end on every CPU (see [`sched`]) and returns its exit code; its
    /// address space is destroyed.
    pub fn run(self) -> i32 {
        sched::run(self)
    }

    /// The guest's memory as the thread being served reaches it (see [`GuestMemory`]).
    fn mem(&self) -> GuestMemory<'_> {
        GuestMemory { space: &self.space, stack: self.thread.stack }
    }

    /// Whether `addr` is executable guest memory (committed, with an execute right), not the
    /// host's pages: where an exception handler may be (host-abi §9, "the guest's executable
    /// memory").
    fn is_executable(&self, addr: u64) -> bool {
        self.is_executable_code(addr) && !self.space.with(|s, _| s.allocation_at(addr).is_some_and(|a| a.kind == AllocationKind::HostOwned))
    }

    /// Whether `addr` is executable (committed, with an execute right), the host's code page
    /// included: where a thread may start (host-abi §10.2 refuses only an unexecutable `start`;
    /// on Windows `CreateThread(ExitThread, ...)` is a known idiom). The guest can jump into the
    /// host's code anyway, so starting there reaches nothing new.
    fn is_executable_code(&self, addr: u64) -> bool {
        self.space
            .virtual_query(addr)
            .is_ok_and(|q| q.state == MEM_COMMIT && q.protect & (PAGE_EXECUTE | PAGE_EXECUTE_READ | PAGE_EXECUTE_READWRITE) != 0)
    }
}

/// Loads and runs one guest, printing `guest NAME exited with code N` (or why it was refused).
pub fn run_guest(name: &str, file: &[u8]) -> GuestOutcome {
    match Guest::load(name, file) {
        Err(reason) => {
            crate::kprintln!("guest {name} refused: {reason}");
            GuestOutcome::Refused(reason)
        }
        Ok(guest) => {
            // The guest's system calls and exceptions are served on a kernel stack of its own.
            let Some(stack) = crate::memory::kstack::KernelStack::new() else {
                crate::kprintln!("guest {name} refused: no kernel stack could be mapped for it");
                return GuestOutcome::Refused("no kernel stack".into());
            };
            let mut guest = Some(guest);
            let mut code = 0;
            // SAFETY: the stack was just mapped for this guest alone and is dropped only after.
            unsafe { crate::arch::user::run_on_stack(stack.top(), &mut || code = guest.take().expect("run once").run()) };
            drop(stack);
            if code < 0 {
                crate::kprintln!("guest {name} exited with code {code} ({:#010x})", code as u32);
            } else {
                crate::kprintln!("guest {name} exited with code {code}");
            }
            GuestOutcome::Exited(code)
        }
    }
}
