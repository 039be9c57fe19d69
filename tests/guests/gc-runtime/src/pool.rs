//! The runtime's mutator threads: the main thread (mutator 0) and `threads - 1` more, started
//! once, each with its own managed stack and [`Mutator`]. A phase of the program is a task that
//! every one of them runs ([`Pool::run`]); between tasks the extra threads wait as safe
//! mutators, so collections go on without them.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, Ordering};

use guest_abi::{Mutex, Thread};

use crate::gc::AllocContext;
use crate::mutator::{Mutator, MutatorStats};
use crate::stack::ManagedStack;
use crate::sys::{self, ThreadState, host};

/// A phase: runs on every mutator thread with its mutator and managed stack.
pub type Task<'a> = dyn Fn(&mut Mutator, &ManagedStack) + Sync + 'a;

struct TaskPtr(*const Task<'static>);
// SAFETY: the task is Sync, and Pool::run keeps it alive until every thread is done with it.
unsafe impl Send for TaskPtr {}

/// The current task (`None`: the threads leave).
static TASK: Mutex<Option<TaskPtr>> = Mutex::new(None);
/// Bumped (and woken) for each task.
static EPOCH: AtomicU32 = AtomicU32::new(0);
/// Threads done with the current task.
static DONE: AtomicU32 = AtomicU32::new(0);

/// What the address-space picture and the statistics show of a mutator thread.
#[derive(Debug, Clone, Copy)]
pub struct ThreadInfo {
    pub id: usize,
    /// Its managed stack [lo, hi).
    pub stack: (usize, usize),
    /// An address on the stack the kernel made for the thread (0 for the main thread).
    pub kernel_stack: usize,
    /// Its allocation context when it last finished a task.
    pub ctx: AllocContext,
    pub stats: MutatorStats,
}

/// Every mutator thread's [`ThreadInfo`], by id.
pub static INFO: Mutex<Vec<ThreadInfo>> = Mutex::new(Vec::new());

/// Records (or updates) a thread's info.
pub fn note(m: &Mutator, stack: &ManagedStack, kernel_stack: usize) {
    let info = ThreadInfo { id: m.id, stack: (stack.lo, stack.hi), kernel_stack, ctx: m.ctx, stats: m.stats };
    let mut all = INFO.lock();
    match all.iter_mut().find(|i| i.id == m.id) {
        Some(i) => *i = info,
        None => {
            all.push(info);
            all.sort_by_key(|i| i.id);
        }
    }
}

/// The extra mutator threads.
pub struct Pool {
    threads: Vec<Thread>,
}

impl Pool {
    /// Starts `extra` mutator threads (ids 1..=extra) with managed stacks of `stack_size` bytes;
    /// fewer if the host refuses some (a version-1 host: none).
    pub fn start(extra: usize, stack_size: usize) -> Pool {
        let mut threads = Vec::new();
        for id in 1..=extra {
            // Made here, so the new thread registers before its first allocation.
            let state: &'static ThreadState = Box::leak(Box::new(ThreadState::new()));
            match Thread::spawn(host(), move || mutator_thread(id, state, stack_size)) {
                Ok(t) => threads.push(t),
                Err(_) => break,
            }
        }
        Pool { threads }
    }

    /// Mutator threads, the main one included.
    pub fn threads(&self) -> usize {
        self.threads.len() + 1
    }

    /// Runs `task` on every mutator thread (this one as mutator `m`) and returns when all are
    /// done.
    pub fn run(&self, m: &mut Mutator, stack: &ManagedStack, task: &Task<'_>) {
        // SAFETY: only the lifetime is erased: this function waits below until every thread has
        // finished the task, and the threads never touch it afterwards.
        let task_static: &'static Task<'static> = unsafe { core::mem::transmute::<&Task<'_>, &'static Task<'static>>(task) };
        *TASK.lock() = Some(TaskPtr(task_static));
        DONE.store(0, Ordering::SeqCst);
        EPOCH.fetch_add(1, Ordering::SeqCst);
        let _ = host().wake_all(&EPOCH);
        task(m, stack);
        self.wait_done(m);
    }

    fn wait_done(&self, m: &mut Mutator) {
        let extra = self.threads.len() as u32;
        m.blocking(|| {
            loop {
                let done = DONE.load(Ordering::SeqCst);
                if done >= extra {
                    break;
                }
                let _ = host().wait_on_address(&DONE, done, None);
            }
        });
    }

    /// Ends the threads (they unregister their mutators) and waits for them.
    pub fn stop(self, m: &mut Mutator) {
        *TASK.lock() = None;
        EPOCH.fetch_add(1, Ordering::SeqCst);
        let _ = host().wake_all(&EPOCH);
        m.blocking(|| {
            for t in self.threads {
                let _ = t.join();
            }
        });
    }
}

fn mutator_thread(id: usize, state: &'static ThreadState, stack_size: usize) -> u32 {
    sys::enter_thread(state);
    let kernel_stack = &id as *const usize as usize;
    let stack = match ManagedStack::new(stack_size) {
        Ok(s) => s,
        Err(e) => {
            crate::out!("gc-runtime: fatal: thread {id}: managed stack: {e:?}\n");
            host().exit(1)
        }
    };
    let mut m = Mutator::register(id);
    note(&m, &stack, kernel_stack);
    let mut seen = 0;
    loop {
        seen = m.blocking(|| {
            loop {
                let epoch = EPOCH.load(Ordering::SeqCst);
                if epoch != seen {
                    break epoch;
                }
                let _ = host().wait_on_address(&EPOCH, seen, None);
            }
        });
        let task = TASK.lock().as_ref().map(|t| t.0);
        let Some(task) = task else { break };
        // SAFETY: see TaskPtr: alive until DONE counts this thread.
        unsafe { (*task)(&mut m, &stack) };
        note(&m, &stack, kernel_stack);
        DONE.fetch_add(1, Ordering::SeqCst);
        let _ = host().wake_all(&DONE);
    }
    m.unregister();
    note(&m, &stack, kernel_stack);
    0
}
