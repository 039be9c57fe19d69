//! The scheduler: a guest's threads on every CPU, preemptively (host-abi §10.2).
//!
//! Continuations, not kernel threads: a thread that does not run is its saved registers
//! ([`Continuation`]), and each CPU runs the same loop — pick a ready thread, load its registers,
//! [`enter_user`], serve the exit (system call, exception, interrupt) under the guest's lock, and
//! either go back to ring 3 or put the thread back (ready queue, blocked, ended) and pick again.
//! Nothing waits in the kernel for ring 3 and no thread needs a kernel stack: a blocking call
//! parks the thread with the wait it is in ([`threads`](super::threads)).
//!
//! - One guest runs at a time. [`run`] (the CPU that called `run_guest`, the *owner*) publishes it
//!   as the active guest and runs the loop itself; every other CPU finds it from its idle loop
//!   ([`ap_idle`], called by `arch::smp` over and over) and runs the loop while there are ready
//!   threads, then leaves and waits in `sti; hlt` (or, when threads still look ready, comes
//!   straight back, serving the TLB rounds posted to it on the way). An idle CPU keeps the
//!   guest's tables in CR3 and halts lazily (`memory::tlb::enter_lazy`): the space's rounds
//!   leave it out unless they free tables, it flushes when it wakes if one did, and picking a
//!   thread of the same guest again loads no CR3. A CPU that makes a thread ready wakes the idle
//!   CPUs with the wake-up IPI.
//! - Lock: one spin lock per guest over the [`Guest`] (its calls, its exceptions, its thread
//!   table), taken with interrupts enabled while it spins (so a CPU waiting for it still takes
//!   IPIs, e.g. TLB shootdowns), and released before ring 3 is entered. Lock order: the guest's
//!   lock, then the memory manager's. The ready count and the end flag are atomics, read without
//!   the lock by idle CPUs.
//! - Preemption: the APIC timer (100 Hz on every CPU) brings a CPU out of ring 3; if another
//!   thread is ready the running one goes to the back of the queue (a 10 ms time slice). The same
//!   tick charges CPU time, checks the CPU-time limit, and wakes threads whose deadline passed.
//! - A thread's x87/SSE/AVX image and FS base are saved when it leaves a CPU and loaded when it
//!   comes back (eagerly: nothing of one thread is ever visible to another); a new thread starts
//!   with the clean state of host-abi §10.1.
//! - The end: `exit` from any thread, a return from `guest_main`, an unhandled exception on any
//!   thread, the CPU-time limit, the end of the last thread, or a deadlock (every thread blocked
//!   without a timeout: nothing could ever wake one; ended with STATUS_POSSIBLE_DEADLOCK
//!   0xC0000194, the kernel's choice where Windows would hang) set the guest's end code once; the
//!   CPU that sets it sends the wake-up IPI to every other CPU, and each CPU that sees it stops
//!   running the guest's threads. The owner then withdraws the guest, waits until no CPU is left
//!   inside it, and destroys it (its space last): no CPU can run or hold its tables by then.

use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use host_abi::host::nr;

use super::calls::Return;
use super::exceptions::{GuestException, HandlerAt};
use super::host_pages::{self, MANAGER_OBJECT};
use super::manager::{ManagerRefs, Made, manager_slot};
use super::threads::{Action, Continuation, Wait};
use super::{Ended, Guest, GuestMemory, call_clock, count_kernel_entry};
use crate::arch::user::{UserExit, enter_user, reset_user_state, set_fs_base, set_user_selectors};
use crate::arch::{apic, percpu, time};
use crate::memory::Space;

/// STATUS_POSSIBLE_DEADLOCK: the end code of a guest whose threads all wait forever.
pub const STATUS_POSSIBLE_DEADLOCK: u32 = 0xC000_0194;

/// The guest being run, shared by the CPUs that run its threads.
struct GuestRun {
    guest: spin::Mutex<Guest>,
    /// The guest's space, for what is served without the lock.
    space: Arc<Space>,
    /// The manager's reference count, for `AddRef`/`Release` served without the lock.
    refs: Arc<ManagerRefs>,
    /// Whether the manager's memory calls may be served without the lock (a copy of
    /// `Guest::memory_calls_unlocked`, kept under the lock). The exception dispatcher's
    /// `continue` is served so then too: with no notification callback registered, resuming
    /// has no band change to deliver.
    memory_unlocked: AtomicBool,
    /// The guest's highest user address (`continue` served without the lock checks `rip`).
    max_application_address: u64,
    /// Its first vectored exception handler (function 0 for none) and that handler's order key,
    /// a copy kept under the lock: a page fault is raised with it without the guest's lock (this
    /// small lock keeps the pair consistent).
    first_handler: spin::Mutex<HandlerAt>,
    /// 0 while it runs; `END_SET | exit code` once it ends (set once).
    end: AtomicU64,
}

/// Marks [`GuestRun::end`] as set.
const END_SET: u64 = 1 << 32;

/// The active guest, if any (set and cleared by [`run`]).
static ACTIVE: spin::Mutex<Option<Arc<GuestRun>>> = spin::Mutex::new(None);
/// CPUs other than the owner inside the active guest's loop (counted under [`ACTIVE`]'s lock).
static CPUS_IN: AtomicUsize = AtomicUsize::new(0);
/// Ready threads of the active guest (a copy kept under its lock, for idle CPUs).
static READY: AtomicUsize = AtomicUsize::new(0);
/// CPUs waiting in `hlt` for work (bit i: CPU i).
static IDLE: AtomicU32 = AtomicU32::new(0);
/// CPUs running a guest thread now (bit i: CPU i).
static RUNNING: AtomicU32 = AtomicU32::new(0);
/// The most CPUs that ran guest threads at once since [`take_peak_parallel`] last read it.
static PEAK_PARALLEL: AtomicU32 = AtomicU32::new(0);

/// The most CPUs that ran guest threads at the same time since the last call (a statistic for
/// tests and benchmarks: with as many spinning threads as CPUs, every CPU).
pub fn take_peak_parallel() -> u32 {
    PEAK_PARALLEL.swap(0, Ordering::SeqCst)
}

/// The CPUs guest threads run on (`HOST_SERVICES.cpu_count`).
pub fn cpu_count() -> u32 {
    percpu::online_count() as u32
}

impl GuestRun {
    /// Runs `f` on the guest under its lock (see the module docs), then updates the ready count.
    fn with<R>(&self, f: impl FnOnce(&mut Guest) -> R) -> R {
        let mut guard = loop {
            if let Some(g) = self.guest.try_lock() {
                break g;
            }
            // Spin with interrupts open, so that IPIs reach this CPU while it waits.
            x86_64::instructions::interrupts::enable();
            core::hint::spin_loop();
            x86_64::instructions::interrupts::disable();
        };
        let r = f(&mut guard);
        READY.store(guard.threads.ready_count(), Ordering::SeqCst);
        self.memory_unlocked.store(guard.memory_calls_unlocked(), Ordering::SeqCst);
        *self.first_handler.lock() = guard.first_handler();
        r
    }

    fn ended(&self) -> bool {
        self.end.load(Ordering::SeqCst) != 0
    }

    /// Ends the guest with `code` unless it has ended already (the first end wins).
    fn set_end(&self, code: Ended) {
        let _ = self.end.compare_exchange(0, END_SET | code as u32 as u64, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Brings every other CPU out of ring 3 (after the end was set): the wake-up IPI.
    fn kick_others(&self) {
        let me = percpu::current_index();
        for cpu in (0..percpu::MAX_CPUS).filter(|&c| c != me && percpu::is_online(c)) {
            if let Some(id) = percpu::apic_id(cpu) {
                apic::send_fixed(id, apic::WAKE_VECTOR);
            }
        }
    }
}

/// Wakes the CPUs idling in `hlt` if threads are ready.
fn wake_idle_cpus() {
    if READY.load(Ordering::SeqCst) == 0 {
        return;
    }
    let me = percpu::current_index();
    let idle = IDLE.load(Ordering::SeqCst) & !(1 << me);
    for cpu in (0..percpu::MAX_CPUS).filter(|&c| idle & (1 << c) != 0) {
        if let Some(id) = percpu::apic_id(cpu) {
            apic::send_fixed(id, apic::WAKE_VECTOR);
        }
    }
}

/// Whether more than half the CPUs online wait for work (this one included). Frames are zeroed
/// ahead only then, so that the zeroing does not take from the threads that run: on hardware
/// the memory bandwidth, under an emulator whose vCPUs outnumber the host's cores the cores
/// themselves (measured at 4 vCPUs on 2 cores: two busy CPUs and a zeroing one made disjoint
/// commit/touch/decommit from 2 CPUs 45 % slower; docs/performance.md).
fn more_than_half_idle() -> bool {
    IDLE.load(Ordering::Relaxed).count_ones() as usize * 2 > percpu::online_count()
}

/// Waits in `sti; hlt` until an interrupt, unless `work()` already holds (checked after this CPU
/// shows itself idle, so a wake-up sent in between is not lost: its IPI ends the `hlt`). Before
/// it halts, it zeroes free frames ahead of demand while `work()` does not hold and more than
/// half the CPUs idle (`memory::zero_ahead`: a frame takes about 5 µs under TCG, the latency
/// this adds to a wake-up).
fn idle_wait(work: impl Fn() -> bool) {
    let bit = 1 << percpu::current_index();
    IDLE.fetch_or(bit, Ordering::SeqCst);
    if work() {
        // Not halting, this CPU may be back here at once and loop with interrupts off (an
        // application processor after the guest ended, while its threads still count as ready):
        // it is still in the space's set (not lazy, it does not halt), so a TLB round may wait
        // for it, and it serves the rounds posted to it (as every wait with IF = 0 must).
        crate::memory::serve_flush_requests();
    } else {
        // A space's root may still be in CR3 (the guest's, while it runs: see `cpu_loop`); the
        // space's rounds leave this CPU out while it halts, and it flushes after if one did.
        crate::memory::tlb::enter_lazy();
        // Nothing to run: zero free frames for the next demand-zero faults first (Windows'
        // zero-page thread), a frame at a time, while there is still nothing to run and more
        // than half the CPUs idle (`more_than_half_idle`). Lazy meanwhile: the zeroing touches
        // no guest memory.
        while !work() && more_than_half_idle() && crate::memory::zero_ahead() {}
        if !work() {
            x86_64::instructions::interrupts::enable_and_hlt();
            x86_64::instructions::interrupts::disable();
        }
        crate::memory::tlb::leave_lazy();
    }
    IDLE.fetch_and(!bit, Ordering::SeqCst);
}

/// Runs `guest` on every CPU until it ends (see the module docs); its exit code. The guest is
/// destroyed (space included) before this returns.
pub(super) fn run(guest: Guest) -> i32 {
    let run = Arc::new(GuestRun {
        space: guest.space.clone(),
        refs: guest.manager_refs.clone(),
        memory_unlocked: AtomicBool::new(guest.memory_calls_unlocked()),
        max_application_address: guest.max_application_address,
        first_handler: spin::Mutex::new(guest.first_handler()),
        guest: spin::Mutex::new(guest),
        end: AtomicU64::new(0),
    });
    READY.store(1, Ordering::SeqCst);
    *ACTIVE.lock() = Some(run.clone());
    cpu_loop(&run, true);
    ACTIVE.lock().take();
    while CPUS_IN.load(Ordering::SeqCst) != 0 {
        x86_64::instructions::interrupts::enable();
        core::hint::spin_loop();
        x86_64::instructions::interrupts::disable();
    }
    READY.store(0, Ordering::SeqCst);
    let code = run.end.load(Ordering::SeqCst) as u32 as i32;
    let run = Arc::into_inner(run).expect("no CPU holds the guest once none is inside it");
    // The guest's threads, then its space (the last reference): this CPU leaves the space's
    // tables as it goes.
    drop(run.guest.into_inner());
    drop(run.space);
    // Nothing of the guest's registers stays in this CPU's for the next one.
    reset_user_state();
    code
}

/// What an application processor does when it has nothing else to do: runs the active guest's
/// threads while any is ready, else waits for an interrupt.
pub fn ap_idle() {
    let run = {
        let active = ACTIVE.lock();
        active.clone().inspect(|_| {
            CPUS_IN.fetch_add(1, Ordering::SeqCst);
        })
    };
    if let Some(run) = run {
        cpu_loop(&run, false);
        drop(run);
        CPUS_IN.fetch_sub(1, Ordering::SeqCst);
    }
    idle_wait(|| READY.load(Ordering::SeqCst) > 0);
}

/// One CPU's loop over the guest's threads. The owner stays until the guest ends (idling when
/// nothing is ready); another CPU leaves as soon as nothing is ready.
fn cpu_loop(run: &GuestRun, owner: bool) {
    while !run.ended() {
        let picked = run.with(|g| {
            let picked = g.pick();
            if matches!(picked, Ok(Some(_))) {
                // Loads the space's tables (and joins the CPUs its TLB rounds target).
                g.space.activate();
            }
            picked
        });
        let picked = match picked {
            Ok(picked) => picked,
            Err(code) => {
                run.set_end(code);
                run.kick_others();
                break;
            }
        };
        match picked {
            Some((key, cont)) => {
                wake_idle_cpus();
                run_thread(run, key, cont);
            }
            // An idle CPU keeps the guest's tables in CR3: halted, it is lazy (`idle_wait`), so
            // the space's rounds leave it out unless they free tables, and the next pick of one
            // of the guest's threads loads nothing (Linux's lazy TLB).
            None if owner => {
                // No thread of the guest runs, so no tick reaches one: the wall-clock limit of a
                // guest whose threads all sleep is checked here, each time a tick wakes this CPU.
                if let Some(code) = run.with(|g| g.cpu.check_wall(&g.name).err()) {
                    run.set_end(code);
                    run.kick_others();
                    break;
                }
                idle_wait(|| READY.load(Ordering::SeqCst) > 0 || run.ended());
            }
            None => break,
        }
    }
}

/// An exit of a thread as the locked part serves it.
#[derive(Debug, Clone, Copy)]
enum Exit {
    /// As it came from ring 3.
    User(UserExit),
    /// An exception that ends the guest (and why), found without the lock.
    Unhandled(GuestException, &'static str),
    /// `continue` restored the thread's context (served without the lock), whose `rip` is
    /// outside user space: the locked part raises the fault.
    Resumed,
    /// `continue` named a context or image it could not read: the guest ends.
    UnreadableResume { context_at: u64, fpu_at: u64 },
}

/// How serving one exit of a thread turned out.
enum Step {
    /// Back to ring 3.
    Resume,
    /// The thread leaves the CPU: to the back of the ready queue.
    Preempt,
    /// The thread leaves the CPU: blocked.
    Block { wait: Wait, deadline: Option<u64> },
    /// The thread ended.
    ThreadEnded,
    /// The guest ends with this code.
    GuestEnds(Ended),
}

/// Runs thread `key` from `cont` on this CPU until it leaves it.
fn run_thread(run: &GuestRun, key: u64, cont: Continuation) {
    let bit = 1 << percpu::current_index();
    let running = RUNNING.fetch_or(bit, Ordering::SeqCst) | bit;
    PEAK_PARALLEL.fetch_max(running.count_ones(), Ordering::SeqCst);
    serve_thread(run, key, cont);
    RUNNING.fetch_and(!bit, Ordering::SeqCst);
}

/// [`run_thread`]'s work: ring 3 and the exits, then the thread's new place. A thread that
/// blocks is parked in the same locked section that decided it blocks, so a wake or an end that
/// comes after the decision finds it parked (none is lost).
fn serve_thread(run: &GuestRun, key: u64, cont: Continuation) {
    reset_user_state();
    let loaded = cont.fpu[0].load();
    debug_assert!(loaded, "a thread's saved image loads");
    set_user_selectors(cont.selectors);
    set_fs_base(cont.fs_base);
    let mut held = Some(cont);
    let mut since = time::ticks_ns();
    while let Some(cont) = held.as_mut() {
        if run.ended() {
            return;
        }
        call_clock::leave();
        // SAFETY: the context is this guest's thread's (its entry, a stub, or a context resumed
        // with a checked rip), its rflags sanitised or 0x202, and the guest's space is in CR3.
        let exit = unsafe { enter_user(&mut cont.context, cont.after_syscall) };
        call_clock::enter();
        match exit {
            UserExit::Interrupt { vector } => apic::on_interrupt(vector),
            _ => count_kernel_entry(),
        }
        // Page faults, and the manager's memory calls, `AddRef`/`Release` and `ticks_ns` while
        // nothing else of the guest is involved (no callback registered, the manager not
        // poisoned), are served without the guest's lock (the memory manager has its own).
        let mem = GuestMemory { space: &run.space, stack: cont.local.stack };
        let exit = match exit {
            UserExit::Exception { vector, error_code, cr2 }
                if let Some(site) = host_pages::store_site(cont.context.rip)
                    && mem.store_fault(site, vector, error_code, cr2, run.memory_unlocked.load(Ordering::SeqCst), &mut cont.context) =>
            {
                cont.after_syscall = false;
                continue;
            }
            UserExit::Exception { vector: 14, error_code, cr2 } => match page_fault(run, &mem, cont, error_code, cr2) {
                Some(exit) => exit,
                None => continue,
            },
            UserExit::Syscall if cont.context.rax == nr::TICKS_NS && run.memory_unlocked.load(Ordering::SeqCst) => {
                cont.context.rax = time::ticks_ns();
                cont.after_syscall = true;
                continue;
            }
            // No callback registered: nothing was held back for the host library to deliver.
            UserExit::Syscall
                if cont.context.rax == nr::DELIVER_HELD && host_pages::is_library_return(cont.context.rcx) && run.memory_unlocked.load(Ordering::SeqCst) =>
            {
                cont.context.rax = 0;
                cont.after_syscall = true;
                continue;
            }
            UserExit::Syscall
                if cont.context.rax == nr::CONTINUE && host_pages::is_stub_return(cont.context.rcx) && run.memory_unlocked.load(Ordering::SeqCst) =>
            {
                match resume(run, &mem, cont) {
                    Some(exit) => exit,
                    None => continue,
                }
            }
            UserExit::Syscall if cont.context.rdi == MANAGER_OBJECT && run.memory_unlocked.load(Ordering::SeqCst) => {
                let c = &mut cont.context;
                let served = manager_slot(c.rax, c.rcx).and_then(|(slot, assisted)| {
                    call_clock::call(slot as usize);
                    let made = if assisted { Made::StubStores } else { Made::Plain };
                    run.refs.lifetime_call(slot, c.rdi).or_else(|| mem.memory_call(slot, made, c))
                });
                if let Some(rax) = served {
                    cont.context.rax = rax;
                    cont.after_syscall = true;
                    continue;
                }
                Exit::User(exit)
            }
            other => Exit::User(other),
        };
        let ended = run.with(|g| {
            // The guest ended meanwhile (the first end wins): nothing more of it is served.
            if run.ended() {
                return None;
            }
            let cont = held.as_mut()?;
            core::mem::swap(&mut g.thread, &mut cont.local);
            let step = g.serve(key, exit, cont, &mut since);
            core::mem::swap(&mut g.thread, &mut cont.local);
            if matches!(step, Step::Resume) {
                return None;
            }
            let now = time::ticks_ns();
            g.cpu.charge(now.saturating_sub(since));
            if let Step::GuestEnds(code) = step {
                run.set_end(code);
                return Some(code);
            }
            if let Some(mut cont) = held.take() {
                match step {
                    Step::Preempt => {
                        cont.save_cpu_state();
                        g.threads.requeue(key, cont);
                    }
                    Step::Block { wait, deadline } => {
                        cont.save_cpu_state();
                        g.threads.park(key, cont, wait, deadline);
                    }
                    Step::Resume | Step::ThreadEnded | Step::GuestEnds(_) => {}
                }
            }
            if g.threads.deadlocked() {
                crate::kprintln!("guest {}: every thread waits without a timeout (a deadlock): ended", g.name);
                run.set_end(STATUS_POSSIBLE_DEADLOCK as i32);
                return Some(STATUS_POSSIBLE_DEADLOCK as i32);
            }
            None
        });
        if ended.is_some() {
            // This CPU ended the guest: the others leave it at their next exit.
            run.kick_others();
            return;
        }
        // A call may have made threads ready (create_thread, a wake): idle CPUs take them.
        wake_idle_cpus();
    }
}

/// A page fault of the thread `cont` served without the guest's lock: resolved (`None`: back to
/// ring 3), or raised with the guest's first handler (`None`), or the exit that ends the guest.
/// Out of line, so that the system calls' path through the run loop stays as short as it was.
#[inline(never)]
fn page_fault(run: &GuestRun, mem: &GuestMemory<'_>, cont: &mut Continuation, error_code: u64, cr2: u64) -> Option<Exit> {
    call_clock::call(call_clock::EXCEPTION);
    let fault = mem.page_fault(cr2, error_code);
    call_clock::lap(call_clock::Stage::Manager);
    cont.after_syscall = false;
    // Raised without the lock while the guest has a handler; ending it takes the lock.
    let first_handler = *run.first_handler.lock();
    match mem.raise(&mut cont.context, &mut cont.local, fault?, first_handler) {
        Ok(()) => None,
        Err((e, why)) => Some(Exit::Unhandled(e, why)),
    }
}

/// The exception dispatcher's `continue` from the thread `cont`, served without the guest's lock
/// (no notification callback is registered): `None` when the thread resumes, else the exit the
/// locked part serves. Out of line, as [`page_fault`].
#[inline(never)]
fn resume(run: &GuestRun, mem: &GuestMemory<'_>, cont: &mut Continuation) -> Option<Exit> {
    call_clock::call(call_clock::CONTINUE);
    let (context_at, fpu_at) = (cont.context.rdi, cont.context.rsi);
    // As `Guest::syscall` notes every call's stack.
    cont.local.note_stack(cont.context.rsp);
    cont.after_syscall = false;
    if !mem.restore(&mut cont.context, context_at, fpu_at) {
        Some(Exit::UnreadableResume { context_at, fpu_at })
    } else if cont.local.resumed(&cont.context, run.max_application_address) {
        None
    } else {
        Some(Exit::Resumed)
    }
}

impl Guest {
    /// Takes the next ready thread, with the result of the wait it was woken from in its `rax`
    /// (and a band change reported first, as every host call reports one before it returns:
    /// a `wait_thread` whose thread's stack was released, host-abi §5); `Err` when reporting it
    /// ends the guest (an unreadable callback object, no room on the thread's stack).
    fn pick(&mut self) -> Result<Option<(u64, Continuation)>, Ended> {
        let Some((key, mut cont)) = self.threads.pick(time::ticks_ns()) else { return Ok(None) };
        if let Some((wait, woken)) = cont.woken.take() {
            core::mem::swap(&mut self.thread, &mut cont.local);
            cont.context.rax = self.finish_wait(wait, woken);
            let reported = self.deliver_band_change(&mut cont.context);
            core::mem::swap(&mut self.thread, &mut cont.local);
            reported?;
        }
        Ok(Some((key, cont)))
    }

    /// Serves one exit of the running thread `key` (its state swapped in); `since` is when this
    /// CPU last charged the guest's CPU time.
    fn serve(&mut self, key: u64, exit: Exit, cont: &mut Continuation, since: &mut u64) -> Step {
        let c = &mut cont.context;
        let exit = match exit {
            Exit::User(exit) => exit,
            Exit::Resumed => {
                return match self.resumed(c).and_then(|()| self.deliver_band_change(c)) {
                    Ok(()) => Step::Resume,
                    Err(code) => Step::GuestEnds(code),
                };
            }
            Exit::Unhandled(e, why) => return Step::GuestEnds(self.unhandled(c, e, why)),
            Exit::UnreadableResume { context_at, fpu_at } => return Step::GuestEnds(self.unreadable_resume(context_at, fpu_at)),
        };
        match exit {
            // The thread services are made by the host's stubs (`rcx`, the return rip, in its code
            // page); made from anywhere else they are unknown calls (E_NOTIMPL, host-abi §9), as
            // the dispatchers' are.
            UserExit::Syscall if (nr::CREATE_THREAD..=nr::GET_THREAD_POINTER).contains(&c.rax) && host_pages::is_stub_return(c.rcx) => {
                cont.after_syscall = true;
                match self.thread_call(key, c) {
                    Action::Return(v) => {
                        c.rax = v;
                        // A thread call that moved the band (create_thread's stack commit, a
                        // wait_thread whose thread's stack was released) reports it before it
                        // returns, as every host call does (host-abi §5).
                        match self.deliver_band_change(c) {
                            Ok(()) => Step::Resume,
                            Err(code) => Step::GuestEnds(code),
                        }
                    }
                    Action::Yield => {
                        c.rax = 0;
                        Step::Preempt
                    }
                    Action::Block { wait, deadline } => Step::Block { wait, deadline },
                    Action::ExitThread(code) => match self.end_thread(key, code) {
                        Ok(()) => Step::ThreadEnded,
                        Err(code) => Step::GuestEnds(code),
                    },
                }
            }
            UserExit::Syscall => match self.syscall(c) {
                Ok(r) => {
                    cont.after_syscall = r == Return::Sysret;
                    Step::Resume
                }
                Err(code) => Step::GuestEnds(code),
            },
            UserExit::Exception { vector, error_code, cr2 } => {
                cont.after_syscall = false;
                match self.exception(c, vector, error_code, cr2) {
                    Ok(()) => Step::Resume,
                    Err(code) => Step::GuestEnds(code),
                }
            }
            UserExit::Interrupt { vector } => {
                cont.after_syscall = false;
                if vector != apic::TIMER_VECTOR {
                    return Step::Resume;
                }
                let now = time::ticks_ns();
                self.cpu.charge(now.saturating_sub(*since));
                *since = now;
                if let Err(code) = self.cpu.check(&self.name) {
                    return Step::GuestEnds(code);
                }
                self.threads.wake_expired(now);
                if self.threads.ready_count() > 0 { Step::Preempt } else { Step::Resume }
            }
        }
    }
}
