//! Guest threads (host-abi §10.2, §10.3): the thread table of a guest and the version-2 thread
//! services. The CPUs that run the threads are [`super::sched`]'s business; this module keeps
//! what a thread is while no CPU runs it and serves the calls.
//!
//! - A thread that does not run is a [`Continuation`]: its general registers, its x87/SSE/AVX
//!   image (its own XSAVE area, in the kernel heap), its FS base and its per-thread guest state
//!   ([`ThreadLocal`]: stack, nested handler frames). No thread has a kernel stack: a blocking
//!   call parks the continuation with the wait it is in, and the CPU serves another thread. The
//!   wait's result is computed when the thread is picked again ([`Guest::finish_wait`]), on
//!   whichever CPU picks it, and put in its `rax`.
//! - Threads are kept in a list with one entry per thread that is alive or whose handle is still
//!   open (at most [`MAX_THREADS`] per guest: `create_thread` returns 0 beyond that). The ready
//!   queue's room for every thread is reserved when the guest is loaded, each new thread's
//!   entry and image are allocated fallibly before anything else changes: out of kernel memory,
//!   `create_thread` returns 0, never panics.
//! - Handles are multiples of 4 counting up, never reused within a guest; the main thread has
//!   none. Ids are the lowest free number (the main thread's is 1); an id is free again once its
//!   thread has ended and its handle is closed.
//! - Waits on addresses are found by a scan of the (at most 512) threads; a sequence number
//!   orders the waits, so `wake_by_address(…, 0)` wakes the longest waiter. A scan bounded by the
//!   thread cap needs no index of its own, and nothing is allocated per wait.
//!   `wait_on_address` compares and parks under the guest's lock, and `wake_by_address` takes
//!   the same lock, so a wake after the guest changed the value and before the waiter parked is
//!   never lost.
//! - Timeouts are absolute deadlines in `ticks_ns` time, checked whenever a CPU picks a thread
//!   and at every timer tick (100 Hz): a wait or sleep lasts at least its timeout and at most
//!   about one tick more.
//! - Thread stacks are made as the main stack is ([`allocate_stack`]) and released when the
//!   thread ends, before any waiter can see it ended.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec::Vec;

use address_space::win32::*;
use address_space::{CriticalLevel, VmError};
use host_abi::host::nr;

use super::host_pages::{Stub, stub};
use super::{Ended, Guest, ThreadLocal};
use crate::arch::user::{FpuImage, UserContext, fs_base, set_fs_base, user_selectors};
use crate::memory::Space;

/// Most threads a guest may have at once (alive, or ended with their handle still open): each
/// costs about 1.5 KiB of kernel heap (entry, register image).
pub const MAX_THREADS: usize = 512;
/// The largest stack reservation `create_thread` makes (host-abi §10.3).
pub const MAX_STACK_RESERVE: u64 = 1 << 30;
/// A thread stack's reservation when `create_thread` asks for 0.
pub const DEFAULT_STACK_RESERVE: u64 = 1 << 20;
/// The first handle; handles count up by 4 from here.
const FIRST_HANDLE: u64 = 4;
/// `timeout_ns` meaning "forever".
pub const INFINITE: u64 = u64::MAX;

/// Reserves a stack of `reserve` bytes at the top of the guest's space (64 KiB multiple), commits
/// its top `commit` bytes (a page multiple) read-write and the page below them as its guard page
/// (host-abi §1, §10.2). Returns (lowest address, top). On failure nothing is left allocated.
pub(super) fn allocate_stack(space: &Space, reserve: u64, commit: u64, level: CriticalLevel) -> Result<(u64, u64), VmError> {
    let made = space.with(|s, cx| {
        let base = s.virtual_alloc(cx, 0, reserve, MEM_RESERVE | MEM_TOP_DOWN, PAGE_READWRITE, level)?;
        let top = base + reserve;
        let committed = top - commit;
        let made = s
            .virtual_alloc(cx, committed, commit, MEM_COMMIT, PAGE_READWRITE, level)
            .and_then(|_| s.virtual_alloc(cx, committed - PAGE_SIZE, PAGE_SIZE, MEM_COMMIT, PAGE_READWRITE | PAGE_GUARD, level));
        match made {
            Ok(_) => Ok((base, top)),
            Err(e) => {
                let _ = s.virtual_free(cx, base, 0, MEM_RELEASE);
                Err(e)
            }
        }
    });
    super::notification::note_commit_change();
    made
}

/// The stack `create_thread(…, stack_reserve, stack_commit)` gets: (reservation, commit), or
/// `None` for a reservation above [`MAX_STACK_RESERVE`] (host-abi §10.2, §10.3).
fn stack_sizes(reserve: u64, commit: u64) -> Option<(u64, u64)> {
    const GRANULE: u64 = ALLOCATION_GRANULARITY;
    let round = |v: u64, to: u64| v.checked_add(to - 1).map(|v| v / to * to);
    let commit = if commit == 0 { PAGE_SIZE } else { round(commit, PAGE_SIZE)? };
    let mut reserve = if reserve == 0 { DEFAULT_STACK_RESERVE } else { round(reserve, GRANULE)? };
    // The guard page comes in addition to the commit; the reservation grows to hold both.
    let needed = commit.checked_add(PAGE_SIZE)?;
    if needed > reserve {
        reserve = round(needed, GRANULE)?;
    }
    (reserve <= MAX_STACK_RESERVE).then_some((reserve, commit))
}

/// What a blocked thread waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wait {
    /// `sleep_ns`.
    Sleep,
    /// `wait_thread` on `handle`, its exit code to go to `exit_code` (0: nowhere).
    Thread { handle: u64, exit_code: u64 },
    /// `wait_on_address` on `address`; `seq` orders the waits (the lowest is woken first).
    Address { address: u64, seq: u64 },
}

/// How a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Woken {
    /// What it waited for happened (or a wake, possibly spurious).
    Signaled,
    /// Its deadline passed first.
    TimedOut,
}

/// A thread while no CPU runs it (see the module docs).
pub(super) struct Continuation {
    /// Its general registers.
    pub context: UserContext,
    /// Its last exit was a system call (`sysretq` may return to it).
    pub after_syscall: bool,
    /// Its x87/SSE/AVX registers (one image, in the kernel heap).
    pub fpu: Box<[FpuImage; 1]>,
    /// Its FS base (`set_thread_pointer`).
    pub fs_base: u64,
    /// Its DS, ES, FS and GS selectors (null at its start, host-abi §10.1).
    pub selectors: [u16; 4],
    /// Its per-thread guest state.
    pub local: ThreadLocal,
    /// The wait it was woken from, whose result it gets before it runs.
    pub woken: Option<(Wait, Woken)>,
}

impl Continuation {
    /// A thread that starts at `context` with the clean state of host-abi §10.1 and FS base 0;
    /// `None` without kernel memory for its register image.
    pub fn new(context: UserContext, local: ThreadLocal) -> Option<Continuation> {
        // Allocated fallibly (a Vec's try_reserve; `Box::try_new` is not stable).
        let mut image = Vec::new();
        image.try_reserve_exact(1).ok()?;
        image.push(FpuImage::initial());
        let fpu = image.into_boxed_slice().try_into().ok()?;
        Some(Continuation { context, after_syscall: false, fpu, fs_base: 0, selectors: [0; 4], local, woken: None })
    }

    /// Saves the registers that stay in the CPU while the kernel serves the thread: the
    /// x87/SSE/AVX image, the data selectors and the FS base (the kernel uses none of them).
    pub fn save_cpu_state(&mut self) {
        self.fpu[0] = FpuImage::save();
        self.selectors = user_selectors();
        self.fs_base = fs_base();
    }
}

/// A thread's scheduling state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In the ready queue.
    Ready,
    /// A CPU runs it (and holds its continuation).
    Running,
    /// Parked until `deadline` (`ticks_ns`; `None`: none) or a wake.
    Blocked { wait: Wait, deadline: Option<u64> },
    /// Ended with this exit code (kept while its handle is open).
    Ended(u32),
}

/// One entry of the thread table.
struct Thread {
    /// Its scheduling key: its handle (0 for the main thread, which has none).
    key: u64,
    id: u32,
    handle_open: bool,
    state: State,
    /// Its registers unless a CPU runs it or it ended.
    cont: Option<Continuation>,
}

/// A guest's threads (see the module docs).
pub(super) struct Threads {
    list: Vec<Thread>,
    /// Keys of the ready threads, in the order they became ready (room for [`MAX_THREADS`]).
    ready: VecDeque<u64>,
    next_handle: u64,
    next_wait_seq: u64,
    /// Ids in use (bit i: id i).
    ids: [u64; MAX_THREADS / 64 + 1],
}

impl Threads {
    /// The table of a guest whose main thread starts at `entry` with `local`; `None` without
    /// kernel memory for it.
    pub fn new(entry: UserContext, local: ThreadLocal) -> Option<Threads> {
        let mut list = Vec::new();
        list.try_reserve_exact(1).ok()?;
        let mut ready = VecDeque::new();
        ready.try_reserve_exact(MAX_THREADS).ok()?;
        let main = Continuation::new(entry, local)?;
        list.push(Thread { key: 0, id: 1, handle_open: false, state: State::Ready, cont: Some(main) });
        ready.push_back(0);
        let mut ids = [0; MAX_THREADS / 64 + 1];
        ids[0] = 1 << 1;
        Some(Threads { list, ready, next_handle: FIRST_HANDLE, next_wait_seq: 0, ids })
    }

    fn index(&self, key: u64) -> Option<usize> {
        self.list.iter().position(|t| t.key == key)
    }

    fn by_handle(&mut self, handle: u64) -> Option<&mut Thread> {
        self.list.iter_mut().find(|t| t.key == handle && t.handle_open && handle != 0)
    }

    /// Threads ready to run.
    pub fn ready_count(&self) -> usize {
        self.ready.len()
    }

    /// Takes the next ready thread (after waking those whose deadline passed by `now`): its key
    /// and continuation; it is `Running` until parked, requeued or ended.
    pub fn pick(&mut self, now: u64) -> Option<(u64, Continuation)> {
        self.wake_expired(now);
        while let Some(key) = self.ready.pop_front() {
            let Some(i) = self.index(key) else { continue };
            let t = &mut self.list[i];
            if t.state != State::Ready {
                continue;
            }
            let Some(cont) = t.cont.take() else { continue };
            t.state = State::Running;
            return Some((key, cont));
        }
        None
    }

    /// Makes every blocked thread whose deadline is at or before `now` ready (timed out).
    pub fn wake_expired(&mut self, now: u64) {
        for i in 0..self.list.len() {
            if let State::Blocked { wait, deadline: Some(d) } = self.list[i].state
                && d <= now
            {
                self.make_ready(i, wait, Woken::TimedOut);
            }
        }
    }

    fn make_ready(&mut self, i: usize, wait: Wait, woken: Woken) {
        let t = &mut self.list[i];
        if let Some(cont) = t.cont.as_mut() {
            cont.woken = Some((wait, woken));
        }
        t.state = State::Ready;
        // Cannot fail: the queue has room for every thread, and a thread is in it at most once.
        self.ready.push_back(t.key);
    }

    /// The running thread `key` goes back to the end of the ready queue.
    pub fn requeue(&mut self, key: u64, cont: Continuation) {
        if let Some(i) = self.index(key) {
            let t = &mut self.list[i];
            t.cont = Some(cont);
            t.state = State::Ready;
            self.ready.push_back(key);
        }
    }

    /// The running thread `key` blocks in `wait` until `deadline` or a wake.
    pub fn park(&mut self, key: u64, cont: Continuation, wait: Wait, deadline: Option<u64>) {
        if let Some(i) = self.index(key) {
            let t = &mut self.list[i];
            t.cont = Some(cont);
            t.state = State::Blocked { wait, deadline };
        }
    }

    /// Whether no thread can ever run again: none ready or running, and every blocked one waits
    /// without a deadline (only the guest's own threads could wake them).
    pub fn deadlocked(&self) -> bool {
        self.list.iter().all(|t| matches!(t.state, State::Ended(_) | State::Blocked { deadline: None, .. }))
            && self.list.iter().any(|t| matches!(t.state, State::Blocked { .. }))
    }

    /// The id of thread `key`.
    pub fn id(&self, key: u64) -> u32 {
        self.index(key).map_or(0, |i| self.list[i].id)
    }

    /// Wakes the threads waiting on `address`: the longest waiting one, or all. Returns how many.
    pub fn wake_address(&mut self, address: u64, all: bool) -> usize {
        let waiting = |t: &Thread| match t.state {
            State::Blocked { wait: wait @ Wait::Address { address: a, seq }, .. } if a == address => Some((seq, wait)),
            _ => None,
        };
        if all {
            let mut woken = 0;
            for i in 0..self.list.len() {
                if let Some((_, wait)) = waiting(&self.list[i]) {
                    self.make_ready(i, wait, Woken::Signaled);
                    woken += 1;
                }
            }
            return woken;
        }
        let longest = (0..self.list.len()).filter_map(|i| waiting(&self.list[i]).map(|(seq, wait)| (seq, i, wait))).min_by_key(|&(seq, ..)| seq);
        match longest {
            Some((_, i, wait)) => {
                self.make_ready(i, wait, Woken::Signaled);
                1
            }
            None => 0,
        }
    }

    /// Thread `key` ended with `code`: waiters on it wake; its entry goes once its handle is
    /// closed. Returns how many threads are still alive.
    fn end(&mut self, key: u64, code: u32) -> usize {
        if let Some(i) = self.index(key) {
            self.list[i].state = State::Ended(code);
            self.list[i].cont = None;
            for j in 0..self.list.len() {
                if let State::Blocked { wait: wait @ Wait::Thread { handle, .. }, .. } = self.list[j].state
                    && handle == key
                {
                    self.make_ready(j, wait, Woken::Signaled);
                }
            }
            if !self.list[i].handle_open {
                self.remove(i);
            }
        }
        self.list.iter().filter(|t| !matches!(t.state, State::Ended(_))).count()
    }

    fn remove(&mut self, i: usize) {
        let t = self.list.swap_remove(i);
        self.ids[t.id as usize / 64] &= !(1 << (t.id % 64));
    }

    /// The lowest free id (there is one: ids go up to MAX_THREADS + 1, entries to MAX_THREADS).
    fn take_id(&mut self) -> u32 {
        let id = (1..=MAX_THREADS as u32 + 1).find(|&id| self.ids[id as usize / 64] & (1 << (id % 64)) == 0).expect("fewer entries than ids");
        self.ids[id as usize / 64] |= 1 << (id % 64);
        id
    }
}

/// What a thread service asks of the scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    /// Return to the caller with this in `rax`.
    Return(u64),
    /// Park the caller in `wait` (its result comes from [`Guest::finish_wait`]).
    Block { wait: Wait, deadline: Option<u64> },
    /// Put the caller at the end of the ready queue (`rax` set).
    Yield,
    /// The caller ends with this exit code.
    ExitThread(u32),
}

/// The deadline of a wait of `timeout_ns` from `now` (`None`: forever).
fn deadline(now: u64, timeout_ns: u64) -> Option<u64> {
    (timeout_ns != INFINITE).then(|| now.saturating_add(timeout_ns))
}

impl Guest {
    /// Serves version-2 thread service `n` (`nr::CREATE_THREAD..=nr::GET_THREAD_POINTER`) for
    /// the running thread `key`, whose registers are `c`.
    pub(super) fn thread_call(&mut self, key: u64, c: &UserContext) -> Action {
        let (a1, a2, a3, a4) = (c.rdi, c.rsi, c.rdx, c.r10);
        let now = crate::arch::time::ticks_ns();
        match c.rax {
            nr::CREATE_THREAD => Action::Return(self.create_thread(a1, a2, a3, a4)),
            nr::EXIT_THREAD => Action::ExitThread(a1 as u32),
            nr::WAIT_THREAD => match self.thread_result(a1, a3) {
                Some(result) => Action::Return(result as u64),
                None if a2 == 0 => Action::Return(WAIT_TIMEOUT as u64),
                None => Action::Block { wait: Wait::Thread { handle: a1, exit_code: a3 }, deadline: deadline(now, a2) },
            },
            nr::CLOSE_THREAD => Action::Return(self.close_thread(a1) as u64),
            nr::CURRENT_THREAD_ID => Action::Return(self.threads.id(key) as u64),
            nr::YIELD => Action::Yield,
            nr::SLEEP_NS if a1 == 0 => Action::Yield,
            nr::SLEEP_NS => Action::Block { wait: Wait::Sleep, deadline: deadline(now, a1.min(INFINITE - 1)) },
            nr::WAIT_ON_ADDRESS => match self.compare_address(a1, a2, a3) {
                Err(code) => Action::Return(code as u64),
                Ok(false) => Action::Return(0),
                Ok(true) if a4 == 0 => Action::Return(ERROR_TIMEOUT as u64),
                Ok(true) => {
                    let seq = self.threads.next_wait_seq;
                    self.threads.next_wait_seq += 1;
                    Action::Block { wait: Wait::Address { address: a1, seq }, deadline: deadline(now, a4) }
                }
            },
            nr::WAKE_BY_ADDRESS => {
                self.threads.wake_address(a1, a2 as u32 != 0);
                Action::Return(0)
            }
            nr::SET_THREAD_POINTER => {
                // Only a user-space address (host-abi §10.3, and §9: "beyond user space" is above
                // `max_application_address`); anything else is ignored.
                if a1 <= self.max_application_address {
                    set_fs_base(a1);
                }
                Action::Return(0)
            }
            nr::GET_THREAD_POINTER => Action::Return(fs_base()),
            _ => Action::Return(super::hresult::to_rax(super::hresult::E_NOTIMPL)),
        }
    }

    /// The result of the wait `wait` the picked thread (its state swapped in) was woken from.
    pub(super) fn finish_wait(&mut self, wait: Wait, woken: Woken) -> u64 {
        match (wait, woken) {
            (Wait::Sleep, _) => 0,
            (Wait::Address { .. }, Woken::Signaled) => 0,
            (Wait::Address { .. }, Woken::TimedOut) => ERROR_TIMEOUT as u64,
            // The thread may have ended just as the deadline passed: then it is a success.
            (Wait::Thread { handle, exit_code }, _) => match self.thread_result(handle, exit_code) {
                Some(result) => result as u64,
                None => WAIT_TIMEOUT as u64,
            },
        }
    }

    /// `wait_thread`'s result if it need not wait: 6 for an unknown or closed handle, else for an
    /// ended thread 0 with its exit code written through `exit_code` (unless NULL) or 998 when
    /// that is unwritable. `None` while the thread runs.
    fn thread_result(&mut self, handle: u64, exit_code: u64) -> Option<u32> {
        let Some(t) = self.threads.by_handle(handle) else { return Some(ERROR_INVALID_HANDLE) };
        let State::Ended(code) = t.state else { return None };
        if exit_code == 0 {
            return Some(0);
        }
        Some(match self.mem().check_writable(exit_code, 4) {
            Ok(()) => {
                self.mem().put_result(exit_code, &code.to_le_bytes());
                0
            }
            Err(e) => super::services::service_error(e),
        })
    }

    /// `close_thread`: 1 closed, 0 unknown. An ended thread's entry goes with its handle.
    fn close_thread(&mut self, handle: u64) -> u32 {
        let Some(i) = self.threads.list.iter().position(|t| t.key == handle && t.handle_open && handle != 0) else { return 0 };
        self.threads.list[i].handle_open = false;
        if matches!(self.threads.list[i].state, State::Ended(_)) {
            self.threads.remove(i);
        }
        1
    }

    /// `wait_on_address`'s checks and comparison: `Ok(true)` when `*address` equals `*compare`
    /// (the caller sleeps), `Ok(false)` when they differ, else the error (host-abi §10.3: size,
    /// alignment, then readability).
    fn compare_address(&self, address: u64, compare: u64, size: u64) -> Result<bool, u32> {
        if !matches!(size, 1 | 2 | 4 | 8) || !address.is_multiple_of(size) {
            return Err(ERROR_INVALID_PARAMETER);
        }
        let (mut now, mut expected) = ([0u8; 8], [0u8; 8]);
        let n = size as usize;
        // A guard page fails the call with 0x80000001 (its guard cleared), as every other
        // service's pointer does (host-abi §9).
        self.mem().read_bytes(address, &mut now[..n]).map_err(super::services::service_error)?;
        self.mem().read_bytes(compare, &mut expected[..n]).map_err(super::services::service_error)?;
        Ok(now == expected)
    }

    /// `create_thread(start, arg, stack_reserve, stack_commit)`: the new thread's handle, or 0
    /// (validate, take the kernel memory, make the stack, then add it: a failure changes nothing).
    fn create_thread(&mut self, start: u64, arg: u64, reserve: u64, commit: u64) -> u64 {
        if self.threads.list.len() >= MAX_THREADS || !self.is_executable_code(start) {
            return 0;
        }
        let Some((reserve, commit)) = stack_sizes(reserve, commit) else { return 0 };
        if self.threads.list.try_reserve(1).is_err() {
            return 0;
        }
        let Some(mut cont) = Continuation::new(UserContext::default(), ThreadLocal::default()) else { return 0 };
        let Ok((base, top)) = allocate_stack(&self.space, reserve, commit, CriticalLevel::Task) else { return 0 };
        cont.context = UserContext { rip: stub(Stub::ThreadStart), rsp: top, rdi: arg, r12: start, rflags: 0x202, ..UserContext::default() };
        cont.local = ThreadLocal { stack: (base, top), bad_resumes: 0, handler_frame: None, notification_frame: None };
        let handle = self.threads.next_handle;
        self.threads.next_handle += 4;
        let id = self.threads.take_id();
        self.threads.list.push(Thread { key: handle, id, handle_open: true, state: State::Ready, cont: Some(cont) });
        self.threads.ready.push_back(handle);
        handle
    }

    /// The running thread `key` ends with `code` (`exit_thread`, or its `start` returned): its
    /// stack is released, then waiters see it ended. When it was the last thread the guest ends
    /// with its code (host-abi §10.3).
    pub(super) fn end_thread(&mut self, key: u64, code: u32) -> Result<(), Ended> {
        let (base, _) = self.thread.stack;
        if self.thread.notification_frame.take().is_some() {
            // It left a notification callback by ending: the next band change is delivered.
            self.notifying = false;
        }
        // The guest may have released or changed it itself; then there is nothing to release.
        let _ = self.space.with(|s, cx| s.virtual_free(cx, base, 0, MEM_RELEASE));
        super::notification::note_commit_change();
        if self.threads.end(key, code) == 0 { Err(code as i32) } else { Ok(()) }
    }
}
