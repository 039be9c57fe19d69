//! Threads and waiting (host-abi §10.2, version 2 of `HOST_SERVICES`): [`Thread`], the
//! `WaitOnAddress`-style waits and a [`Mutex`] built on them.
//!
//! Every call here first checks that the host serves version 2 (`version >= 2` and
//! `cbSize >= 192`); on a version-1 host it does nothing and reports
//! [`ThreadError::Unsupported`] (or `None`), so one guest binary runs on both.
//!
//! A closure is handed to its new thread without a heap: [`Thread::spawn`] keeps it in its own
//! frame and waits (on the host's `wait_on_address`) until the new thread has moved it onto its
//! own stack, so a spawn costs one short wait but needs no allocator.

use core::cell::UnsafeCell;
use core::ffi::c_void;
use core::marker::PhantomData;
use core::mem::ManuallyDrop;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicPtr, AtomicU8, AtomicU16, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use core::time::Duration;

use host_abi::win32::{ERROR_TIMEOUT, WAIT_TIMEOUT};
use host_abi::{HostServices, HostServicesV1, ThreadStart};

use crate::Host;

/// `cbSize` of a version-2 table (host-abi §10.3).
pub const HOST_SERVICES_V2_SIZE: u32 = 192;

/// Why a thread service did not do what was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadError {
    /// The host serves `HOST_SERVICES` version 1: it has no threads.
    Unsupported,
    /// `create_thread` returned 0: unexecutable start, stack reservation above 1 GiB, or out of
    /// commit or kernel memory.
    Refused,
    /// The Win32 error a service returned (`ERROR_INVALID_HANDLE` 6, `ERROR_NOACCESS` 998,
    /// `ERROR_INVALID_PARAMETER` 87).
    Win32(u32),
}

/// The services pointer of the running guest, for code that has no [`Host`] at hand (the
/// [`Mutex`], the panic handler); set by [`Host::from_raw`].
static SERVICES: AtomicPtr<HostServices> = AtomicPtr::new(core::ptr::null_mut());

pub(crate) fn remember_services(services: *const HostServices) {
    SERVICES.store(services.cast_mut(), Ordering::Release);
}

/// The services table remembered by [`Host::from_raw`], if any.
pub(crate) fn remembered_services() -> Option<&'static HostServicesV1> {
    let p = SERVICES.load(Ordering::Acquire);
    // SAFETY: only Host::from_raw stores here, with the services pointer the host passed to
    // guest_main: read-only host data that lives as long as the guest (from_raw's contract),
    // at least its version-1 part on any host.
    (!p.is_null()).then(|| unsafe { &*p.cast::<HostServicesV1>() })
}

/// The whole table if the host serves version 2 or later (its `cb_size` says the version-2
/// fields are there).
fn v2(services: &HostServicesV1) -> Result<&HostServices, ThreadError> {
    if services.version >= 2 && services.cb_size >= HOST_SERVICES_V2_SIZE {
        // SAFETY: the host's table is `cb_size` bytes long, at least the whole `HostServices`,
        // and lives as long as `services` does (the same table).
        Ok(unsafe { &*(services as *const HostServicesV1).cast::<HostServices>() })
    } else {
        Err(ThreadError::Unsupported)
    }
}

/// Nanoseconds of a timeout; `None` waits forever (`UINT64_MAX`).
fn timeout_ns(timeout: Option<Duration>) -> u64 {
    timeout.map_or(u64::MAX, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// An atomic integer `wait_on_address` can watch (1, 2, 4 or 8 bytes, naturally aligned).
pub trait AtomicWord: sealed::Sealed {
    /// The plain integer the atomic holds.
    type Value: Copy;
}
mod sealed {
    pub trait Sealed {}
}
macro_rules! atomic_word {
    ($($atomic:ty => $value:ty),*) => {$(
        impl sealed::Sealed for $atomic {}
        impl AtomicWord for $atomic {
            type Value = $value;
        }
    )*};
}
atomic_word!(AtomicU8 => u8, AtomicU16 => u16, AtomicU32 => u32, AtomicU64 => u64, AtomicUsize => usize);

/// `wait_on_address` through a version-2 table ([`v2`]).
fn wait_raw<A: AtomicWord>(s: &HostServices, address: &A, compare: A::Value, timeout: Option<Duration>) -> Result<bool, ThreadError> {
    // SAFETY: the host reads `size_of::<A::Value>()` bytes at each pointer: `address` is a live
    // atomic of that size (`AtomicWord` is implemented only for atomics whose value has the same
    // size and alignment), `compare` a local of that size; it writes nothing.
    let result = unsafe {
        (s.wait_on_address)(
            (address as *const A).cast(),
            (&compare as *const A::Value).cast(),
            size_of::<A::Value>() as u64,
            timeout_ns(timeout),
        )
    };
    match result {
        0 => Ok(true),
        ERROR_TIMEOUT => Ok(false),
        e => Err(ThreadError::Win32(e)),
    }
}

/// `wake_by_address` through a version-2 table ([`v2`]).
fn wake_raw<A: AtomicWord>(s: &HostServices, address: &A, all: bool) {
    // SAFETY: the address is only a key the host compares with its waiters' (it reads nothing
    // through it).
    unsafe { (s.wake_by_address)((address as *const A).cast(), all as u32) };
}

impl Host {
    /// The services table if the host serves version 2 (threads), else `None`.
    pub fn services_v2(&self) -> Option<&HostServices> {
        v2(self.services()).ok()
    }

    /// CPUs the host runs guest threads on.
    pub fn cpu_count(&self) -> Option<u32> {
        self.services_v2().map(|s| s.cpu_count)
    }

    /// The calling thread's id (the main thread's is 1).
    pub fn current_thread_id(&self) -> Option<u32> {
        // SAFETY: `current_thread_id` takes no argument and touches no guest memory.
        self.services_v2().map(|s| unsafe { (s.current_thread_id)() })
    }

    /// Gives the rest of this time slice to another thread.
    pub fn yield_now(&self) -> Result<(), ThreadError> {
        let s = v2(self.services())?;
        // SAFETY: `yield` takes no argument and touches no guest memory.
        unsafe { (s.yield_now)() };
        Ok(())
    }

    /// Sleeps at least `duration`.
    pub fn sleep(&self, duration: Duration) -> Result<(), ThreadError> {
        let s = v2(self.services())?;
        // SAFETY: `sleep_ns` takes a count and touches no guest memory.
        unsafe { (s.sleep_ns)(timeout_ns(Some(duration))) };
        Ok(())
    }

    /// Ends the calling thread with `code` (on the main thread, only that thread: the guest goes
    /// on until its last thread ends). Returns only on a version-1 host. The thread's stack is
    /// released and no destructor of its frames runs (as `pthread_exit` without unwinding);
    /// returning from the thread's closure or `start` function is the safe way to end it.
    ///
    /// # Safety
    /// Nothing on the calling thread's stack may still be needed: no value in its frames whose
    /// drop matters to the rest of the guest (a held [`MutexGuard`] would leave its mutex locked
    /// forever; a pinned value would be freed without its drop), and nothing another thread
    /// borrowed from those frames (a reference handed out, a value a scoped thread or a wait
    /// still uses).
    pub unsafe fn exit_thread(&self, code: u32) -> ThreadError {
        match v2(self.services()) {
            // SAFETY: the thread's frames hold nothing still needed (this function's contract);
            // `exit_thread` takes any code and touches no guest memory.
            Ok(s) => unsafe { (s.exit_thread)(code) },
            Err(e) => e,
        }
    }

    /// `WaitOnAddress`: sleeps while `*address == compare`, until woken or `timeout` (`None`:
    /// forever) passes. `Ok(true)` when it returned because of a wake, a differing value or
    /// spuriously (check the value again); `Ok(false)` on timeout.
    pub fn wait_on_address<A: AtomicWord>(&self, address: &A, compare: A::Value, timeout: Option<Duration>) -> Result<bool, ThreadError> {
        wait_raw(v2(self.services())?, address, compare, timeout)
    }

    /// `WakeByAddressSingle`: wakes one thread waiting on `address`.
    pub fn wake_one<A: AtomicWord>(&self, address: &A) -> Result<(), ThreadError> {
        wake_raw(v2(self.services())?, address, false);
        Ok(())
    }

    /// `WakeByAddressAll`: wakes every thread waiting on `address`.
    pub fn wake_all<A: AtomicWord>(&self, address: &A) -> Result<(), ThreadError> {
        wake_raw(v2(self.services())?, address, true);
        Ok(())
    }

    /// The calling thread's thread pointer (FS base; 0 when a thread starts).
    pub fn thread_pointer(&self) -> Option<*mut c_void> {
        // SAFETY: `get_thread_pointer` takes no argument and touches no guest memory.
        self.services_v2().map(|s| unsafe { (s.get_thread_pointer)() })
    }

    /// Sets the calling thread's thread pointer (FS base). The host ignores a value that is not a
    /// canonical user-space address.
    // The pointer is a register value for the host, never dereferenced (clippy sees a raw
    // pointer passed to an unsafe call).
    #[allow(clippy::not_unsafe_ptr_arg_deref)]
    pub fn set_thread_pointer(&self, pointer: *mut c_void) -> Result<(), ThreadError> {
        let s = v2(self.services())?;
        // SAFETY: the host only loads the value into the FS base register (ignoring a
        // non-user address); it reads nothing through it. Neither this crate nor the Rust code
        // of an x86_64-unknown-none guest (which has no thread-locals) addresses memory through FS.
        unsafe { (s.set_thread_pointer)(pointer) };
        Ok(())
    }
}

/// A thread of the guest. Dropping it closes the handle (the thread runs on); [`Thread::join`]
/// waits for its end and returns its exit code.
pub struct Thread {
    handle: u64,
    services: &'static HostServices,
}

/// What [`Thread::spawn`] hands its new thread: the closure and the flag saying it was taken.
struct Packet<F> {
    closure: ManuallyDrop<F>,
    taken: AtomicU32,
    services: &'static HostServices,
}

extern "C" fn closure_start<F: FnOnce() -> u32 + Send + 'static>(arg: *mut c_void) -> u32 {
    let packet = arg.cast::<Packet<F>>();
    // SAFETY: `arg` is the Packet<F> of the spawning frame, which stays alive until `taken` is
    // set below; the closure is moved out exactly once (the spawner never drops it after a
    // successful create_thread).
    let (closure, services) = unsafe { (core::ptr::read(&*(*packet).closure), (*packet).services) };
    // After this store the spawner may return and the packet is gone: only the flag's address
    // is used from here on, as a wake key, which the host does not dereference.
    // SAFETY: the packet is alive until the store below is seen.
    let taken: *const AtomicU32 = unsafe { &raw const (*packet).taken };
    // SAFETY: as above.
    unsafe { (*taken).store(1, Ordering::Release) };
    // SAFETY: the address is only a key for the host's waiters; nothing is read through it.
    unsafe { (services.wake_by_address)(taken.cast(), 1) };
    closure()
}

impl Thread {
    /// Starts `closure` on a new thread with the default stack (1 MiB reserved, one page
    /// committed); its return value is the thread's exit code.
    pub fn spawn<F: FnOnce() -> u32 + Send + 'static>(host: &Host, closure: F) -> Result<Thread, ThreadError> {
        Thread::spawn_with_stack(host, 0, 0, closure)
    }

    /// As [`Thread::spawn`] with a stack of `stack_reserve` bytes (rounded up to 64 KiB; 0 =
    /// 1 MiB, at most 1 GiB) of which `stack_commit` (rounded up to a page; 0 = one page) are
    /// committed, plus a guard page.
    pub fn spawn_with_stack<F: FnOnce() -> u32 + Send + 'static>(
        host: &Host,
        stack_reserve: u64,
        stack_commit: u64,
        closure: F,
    ) -> Result<Thread, ThreadError> {
        let services = v2(host.services_static())?;
        let packet = Packet { closure: ManuallyDrop::new(closure), taken: AtomicU32::new(0), services };
        let arg = (&packet as *const Packet<F>).cast_mut().cast();
        // SAFETY: `closure_start::<F>` is a thread start of the ABI's type, and `arg` points to
        // `packet`, which this frame keeps alive until the new thread says it took the closure
        // (the loop below); the host reads nothing through `arg`.
        let handle = unsafe { (services.create_thread)(closure_start::<F>, arg, stack_reserve, stack_commit) };
        if handle == 0 {
            drop(ManuallyDrop::into_inner(packet.closure));
            return Err(ThreadError::Refused);
        }
        // The new thread moves the closure out of `packet`; this frame must outlive that.
        while packet.taken.load(Ordering::Acquire) == 0 {
            let _ = wait_raw(services, &packet.taken, 0, None);
        }
        Ok(Thread { handle, services })
    }

    /// `create_thread(start, arg, stack_reserve, stack_commit)` as it is: `start(arg)` on a new
    /// thread; what `arg` points to must stay valid for as long as `start` uses it.
    // The host never dereferences `arg`; it hands it to `start`, a safe function (clippy sees a
    // raw pointer passed to an unsafe call).
    #[allow(clippy::not_unsafe_ptr_arg_deref)]
    pub fn spawn_raw(host: &Host, start: ThreadStart, arg: *mut c_void, stack_reserve: u64, stack_commit: u64) -> Result<Thread, ThreadError> {
        let services = v2(host.services_static())?;
        // SAFETY: `start` is a function of the ABI's thread-start type (the host checks that it is
        // executable); the host does not read through `arg`, only passes it to `start`, a safe
        // function that must not assume more of it than its type says.
        match unsafe { (services.create_thread)(start, arg, stack_reserve, stack_commit) } {
            0 => Err(ThreadError::Refused),
            handle => Ok(Thread { handle, services }),
        }
    }

    /// The host's handle.
    pub fn handle(&self) -> u64 {
        self.handle
    }

    /// Gives up the handle without closing it.
    pub fn into_raw(self) -> u64 {
        let handle = self.handle;
        core::mem::forget(self);
        handle
    }

    /// Waits up to `timeout` (`None`: forever) for the thread to end: `Some(exit code)` if it
    /// has, `None` on timeout.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<Option<u32>, ThreadError> {
        let mut code = 0u32;
        // SAFETY: the handle is this Thread's own (open until it is dropped); the host writes one
        // u32 to `code`, a local.
        match unsafe { (self.services.wait_thread)(self.handle, timeout_ns(timeout), &mut code) } {
            0 => Ok(Some(code)),
            WAIT_TIMEOUT => Ok(None),
            e => Err(ThreadError::Win32(e)),
        }
    }

    /// Waits for the thread to end and returns its exit code (the handle is then closed).
    pub fn join(self) -> Result<u32, ThreadError> {
        loop {
            if let Some(code) = self.wait(None)? {
                return Ok(code);
            }
        }
    }
}

impl Drop for Thread {
    fn drop(&mut self) {
        // SAFETY: this Thread owns the handle (`into_raw` forgets the Thread instead), and nothing
        // uses it after the drop.
        unsafe { (self.services.close_thread)(self.handle) };
    }
}

/// A mutual-exclusion lock over `T` built on `wait_on_address` (futex style: 0 free, 1 held, 2
/// held with waiters), usable in a `static` (`Mutex::new` is `const`). A contended `lock` sleeps
/// in the host; on a version-1 host (one thread) it spins instead, since no other thread can
/// release it there, only the thread itself, from an exception handler that interrupted it.
/// Like an SRW lock it is not recursive: locking it twice on one thread deadlocks.
pub struct Mutex<T: ?Sized> {
    state: AtomicU32,
    value: UnsafeCell<T>,
}

// SAFETY: the lock hands out `&mut T` to one thread at a time, so sharing it moves `T` between
// threads: `T: Send` is what that needs (as for std::sync::Mutex).
unsafe impl<T: ?Sized + Send> Sync for Mutex<T> {}
// SAFETY: owning the mutex is owning the `T`.
unsafe impl<T: ?Sized + Send> Send for Mutex<T> {}

const UNLOCKED: u32 = 0;
const LOCKED: u32 = 1;
const CONTENDED: u32 = 2;

impl<T> Mutex<T> {
    /// An unlocked mutex holding `value`.
    pub const fn new(value: T) -> Mutex<T> {
        Mutex { state: AtomicU32::new(UNLOCKED), value: UnsafeCell::new(value) }
    }

    /// The value, consuming the mutex.
    pub fn into_inner(self) -> T {
        self.value.into_inner()
    }
}

impl<T: ?Sized> Mutex<T> {
    /// Locks, sleeping while another thread holds it.
    pub fn lock(&self) -> MutexGuard<'_, T> {
        if self.state.compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed).is_err() {
            self.lock_contended();
        }
        MutexGuard { mutex: self, _shares: PhantomData }
    }

    #[cold]
    fn lock_contended(&self) {
        let services = remembered_services();
        // Whoever takes it from here marks it contended: a thread that slept may have company.
        while self.state.swap(CONTENDED, Ordering::Acquire) != UNLOCKED {
            match services.map(v2) {
                Some(Ok(s)) => {
                    let _ = wait_raw(s, &self.state, CONTENDED, None);
                }
                _ => core::hint::spin_loop(),
            }
        }
    }

    /// Locks if nobody holds it.
    pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        self.state.compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed).ok().map(|_| MutexGuard { mutex: self, _shares: PhantomData })
    }

    /// The value, through exclusive access (no locking needed).
    pub fn get_mut(&mut self) -> &mut T {
        self.value.get_mut()
    }

    fn unlock(&self) {
        if self.state.swap(UNLOCKED, Ordering::Release) == CONTENDED
            && let Some(Ok(s)) = remembered_services().map(v2)
        {
            wake_raw(s, &self.state, false);
        }
    }
}

/// Holds a [`Mutex`] locked; unlocks on drop.
pub struct MutexGuard<'a, T: ?Sized> {
    mutex: &'a Mutex<T>,
    /// Shared only where `T` may be: a `&MutexGuard` gives `&T` on every thread that has it, so
    /// the guard is `Sync` only if `T` is (as the standard library's guard; `&Mutex<T>` alone
    /// would make it `Sync` for any `T: Send`, a `Cell` raced from two threads).
    _shares: PhantomData<&'a mut T>,
}

impl<T: ?Sized> Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard proves this thread holds the lock, so no `&mut T` exists elsewhere.
        unsafe { &*self.mutex.value.get() }
    }
}

impl<T: ?Sized> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard proves this thread holds the lock, and `&mut self` that no other
        // reference through this guard is live.
        unsafe { &mut *self.mutex.value.get() }
    }
}

impl<T: ?Sized> Drop for MutexGuard<'_, T> {
    fn drop(&mut self) {
        self.mutex.unlock();
    }
}

/// The wrappers against a stand-in host whose thread services are std threads (the real ones
/// are exercised by the C and Rust guests in QEMU, tests/threads.rs).
#[cfg(test)]
mod tests {
    extern crate std;
    use std::sync::Mutex as StdMutex;
    use std::thread::JoinHandle;
    use std::vec::Vec;

    use super::*;
    use crate::{HostCommitInfo, HostMemoryManager};

    static HANDLES: StdMutex<Vec<Option<JoinHandle<u32>>>> = StdMutex::new(Vec::new());

    extern "C" fn write(_: *const u8, _: u64) {}
    extern "C" fn exit(code: i32) -> ! {
        panic!("guest exit {code}")
    }
    extern "C" fn ticks() -> u64 {
        0
    }
    extern "C" fn add_veh(_: u32, _: crate::ExceptionHandler) -> *mut c_void {
        core::ptr::null_mut()
    }
    extern "C" fn remove_veh(_: *mut c_void) -> u32 {
        0
    }
    extern "C" fn gww(_: u32, _: *mut u8, _: u64, _: *mut *mut u8, _: *mut u64, _: *mut u32) -> u32 {
        87
    }
    extern "C" fn rww(_: *mut u8, _: u64) -> u32 {
        87
    }
    extern "C" fn query_commit(_: *mut HostCommitInfo) {}
    extern "C" fn create_thread(start: ThreadStart, arg: *mut c_void, _: u64, _: u64) -> u64 {
        let arg = arg as usize;
        let mut handles = HANDLES.lock().unwrap();
        handles.push(Some(std::thread::spawn(move || start(arg as *mut c_void))));
        handles.len() as u64
    }
    extern "C" fn exit_thread(_: u32) -> ! {
        panic!("exit_thread")
    }
    extern "C" fn wait_thread(handle: u64, _: u64, code: *mut u32) -> u32 {
        let Some(h) = HANDLES.lock().unwrap().get_mut(handle as usize - 1).and_then(Option::take) else { return 6 };
        // SAFETY: the wrapper passes a pointer to its own local.
        unsafe { *code = h.join().unwrap() };
        0
    }
    extern "C" fn close_thread(_: u64) -> u32 {
        1
    }
    extern "C" fn thread_id() -> u32 {
        1
    }
    extern "C" fn yield_now() {
        std::thread::yield_now();
    }
    extern "C" fn sleep_ns(_: u64) {}
    /// Compares as the host does, then returns at once: a spurious wake, which callers must take.
    extern "C" fn wait_on_address(address: *const c_void, compare: *const c_void, size: u64, _: u64) -> u32 {
        // SAFETY: the wrappers pass an atomic of `size` bytes and a value of the same size.
        let differs = unsafe {
            let a = core::slice::from_raw_parts(address.cast::<u8>(), size as usize);
            let c = core::slice::from_raw_parts(compare.cast::<u8>(), size as usize);
            a != c
        };
        if !differs {
            std::thread::yield_now();
        }
        0
    }
    extern "C" fn wake(_: *const c_void, _: u32) {}
    extern "C" fn set_tp(_: *mut c_void) {}
    extern "C" fn get_tp() -> *mut c_void {
        core::ptr::null_mut()
    }

    fn services(version: u32, cb_size: u32) -> &'static HostServices {
        std::boxed::Box::leak(std::boxed::Box::new(HostServices {
            cb_size,
            version,
            page_size: 4096,
            allocation_granularity: 65536,
            min_application_address: 0x10000,
            max_application_address: 0x7FFF_FFFE_FFFF,
            write,
            exit,
            ticks_ns: ticks,
            add_vectored_exception_handler: add_veh,
            remove_vectored_exception_handler: remove_veh,
            get_write_watch: gww,
            reset_write_watch: rww,
            query_commit,
            cpu_count: 4,
            reserved0: 0,
            create_thread,
            exit_thread,
            wait_thread,
            close_thread,
            current_thread_id: thread_id,
            yield_now,
            sleep_ns,
            wait_on_address,
            wake_by_address: wake,
            set_thread_pointer: set_tp,
            get_thread_pointer: get_tp,
        }))
    }

    fn host(version: u32, cb_size: u32) -> Host {
        // SAFETY: the table is leaked, so it lives for the rest of the test; the manager is never used.
        unsafe { Host::from_raw(core::ptr::null_mut::<HostMemoryManager>(), services(version, cb_size)) }
    }

    #[test]
    fn a_version_1_host_refuses_every_thread_service() {
        for (version, cb_size) in [(1, 96), (2, 96), (1, 192)] {
            let h = host(version, cb_size);
            assert!(h.services_v2().is_none());
            assert_eq!(h.cpu_count(), None);
            assert_eq!(h.current_thread_id(), None);
            assert_eq!(h.thread_pointer(), None);
            assert_eq!(h.yield_now(), Err(ThreadError::Unsupported));
            assert_eq!(h.sleep(Duration::from_millis(1)), Err(ThreadError::Unsupported));
            // SAFETY: on a version-1 host it returns at once, ending nothing.
            assert_eq!(unsafe { h.exit_thread(3) }, ThreadError::Unsupported);
            assert_eq!(h.wait_on_address(&AtomicU32::new(0), 0, None), Err(ThreadError::Unsupported));
            assert_eq!(h.wake_all(&AtomicU32::new(0)), Err(ThreadError::Unsupported));
            assert!(matches!(Thread::spawn(&h, || 0), Err(ThreadError::Unsupported)));
        }
    }

    #[test]
    fn a_version_1_table_of_96_bytes_is_never_read_past_its_end() {
        // A real version-1 host's table: only the first 96 bytes exist (an allocation of exactly
        // that size, so a read past it is out of bounds for Miri and sanitizers).
        let full = services(1, 96);
        let v1: &'static HostServicesV1 = std::boxed::Box::leak(std::boxed::Box::new(HostServicesV1 {
            cb_size: 96,
            version: 1,
            page_size: full.page_size,
            allocation_granularity: full.allocation_granularity,
            min_application_address: full.min_application_address,
            max_application_address: full.max_application_address,
            write: full.write,
            exit: full.exit,
            ticks_ns: full.ticks_ns,
            add_vectored_exception_handler: full.add_vectored_exception_handler,
            remove_vectored_exception_handler: full.remove_vectored_exception_handler,
            get_write_watch: full.get_write_watch,
            reset_write_watch: full.reset_write_watch,
            query_commit: full.query_commit,
        }));
        // SAFETY: the table is leaked; the manager is never used.
        let h = unsafe { Host::from_raw(core::ptr::null_mut::<HostMemoryManager>(), (v1 as *const HostServicesV1).cast()) };
        assert_eq!(h.services().page_size, 4096);
        assert!(h.services_v2().is_none());
        assert_eq!(h.cpu_count(), None);
        assert_eq!(h.wait_on_address(&AtomicU32::new(0), 0, None), Err(ThreadError::Unsupported));
        assert!(matches!(Thread::spawn(&h, || 0), Err(ThreadError::Unsupported)));
    }

    #[test]
    fn spawned_closures_run_once_and_join_returns_their_value() {
        let h = host(2, 192);
        assert_eq!(h.cpu_count(), Some(4));
        let threads: Vec<Thread> = (0..8u32).map(|i| Thread::spawn(&h, move || i * 3 + 1).unwrap()).collect();
        let codes: Vec<u32> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(codes, (0..8u32).map(|i| i * 3 + 1).collect::<Vec<_>>());
    }

    #[test]
    fn the_mutex_excludes_under_contention() {
        static COUNTER: Mutex<u64> = Mutex::new(0);
        let h = host(2, 192);
        let threads: Vec<Thread> = (0..4)
            .map(|_| {
                Thread::spawn(&h, || {
                    for _ in 0..20_000 {
                        // A read-modify-write split by a yield: lost updates show without exclusion.
                        let mut g = COUNTER.lock();
                        let v = *g;
                        if v % 64 == 0 {
                            std::thread::yield_now();
                        }
                        *g = v + 1;
                    }
                    0
                })
                .unwrap()
            })
            .collect();
        for t in threads {
            assert_eq!(t.join(), Ok(0));
        }
        assert_eq!(*COUNTER.lock(), 80_000);
        assert!(COUNTER.try_lock().is_some());
        let g = COUNTER.lock();
        assert!(COUNTER.try_lock().is_none());
        drop(g);
    }
}
