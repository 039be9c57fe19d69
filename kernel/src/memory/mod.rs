//! The kernel's memory: frames from the real memory map, its own page tables, guest address
//! spaces, and page faults.
//!
//! [`init`] (called by `kernel::init`) does, in order:
//! 1. snapshots what it needs of the boot info ([`BootSnapshot`]): after step 4 the boot info is
//!    no longer mapped;
//! 2. builds the [`FrameAllocator`](address_space::frame::FrameAllocator) over every `Usable` and
//!    `Bootloader` region at or above 1 MiB (the first MiB holds the real-mode IVT, BIOS data and
//!    EBDA, and keeping it out also keeps physical address 0 out), with every `Bootloader` frame
//!    marked in use;
//! 3. switches on NXE, WP, PGE and programs the PAT ([`crate::arch::cpu`]);
//! 4. builds the kernel's own PML4 ([`kernel_tables`]) and loads it into CR3, then turns on SMEP
//!    and SMAP;
//! 5. frees every `Bootloader` frame the new tables do not map (the bootloader's page tables, boot
//!    info, its stage-4 data, the unmapped parts of the kernel ELF file), keeping the kernel image,
//!    the kernel stack and the ramdisk;
//! 6. sets the commit limit: the frames then available minus a kernel reserve (page-table pages
//!    and other kernel allocations come from there; see [`KERNEL_RESERVE_DIVISOR`]), so that there
//!    is no overcommit and a committed page always faults in. Half the reserve is the commit
//!    charge's page-table allowance: guest page tables beyond it are charged to the limit, so a
//!    sparse guest's tables can never eat the frames its commits were promised.
//!
//! Guest address spaces ([`Space`]) each own a PML4 whose upper half is a copy of the kernel's 256
//! upper-half entries (all pre-allocated, so they never change) and whose lower half is managed by
//! `address_space::AddressSpace`. Page faults below the canonical hole go to the space loaded in
//! CR3 ([`on_page_fault`]).
//!
//! The rooms: this file holds the manager's shared state (`Manager`, reached through `manager()`), the
//! exact view [`with_mm`] and [`init`]; `boot.rs` the boot snapshot, `config.rs` the boot
//! configuration, `accounting.rs` the figures and the commit state guests are told about,
//! `space.rs` the [`Space`] handle, the registry of spaces and which CPUs run each space,
//! `frames.rs` the frames and the charge as the crate reaches them (per-CPU caches, per-CPU work
//! counters), `tlb.rs` [`KernelTlb`] and TLB shootdown by IPI, `lock.rs` the [`SpinLock`],
//! `fault.rs` the page-fault policy, `kernel_tables.rs` the kernel's own tables, `kstack.rs`
//! guests' kernel stacks, `window.rs` the physical-memory window.
//!
//! # Locking and concurrency (every CPU)
//!
//! Every lock below is a fair [`SpinLock`] (ticket lock; uncontended: one locked add) or, for
//! a space, an [`RwSpinLock`] whose writers barge and whose readers defer to waiting writers,
//! with a waiter's turn guaranteed after 1 ms (`lock.rs`), taken with interrupts off. Disjoint
//! work — two spaces, or faults of several threads in one space — shares no lock but, once per
//! 32 frames, the frames lock, and one cache line: the commit charge's counts (one
//! compare-exchange per commit, one `fetch_sub` per decommit or release; no lock).
//!
//! | lock | protects | taken by |
//! | --- | --- | --- |
//! | **space lock**, one per space (`SpaceShared::space`, an [`RwSpinLock`]) | the space's allocation map and gap tree, its lower-half page tables (every entry write, table creation and freeing), its demand-zero reservation and table-page count | exclusively: every [`Space`] call, from its first check to its last entry change — a call that left a TLB round then releases it for the round, its frees and its uncharge, which calls on its pages wait for (`SpaceShared::with_range`); shared: page faults on the space, [`with_mm`] (briefly, to count tables) |
//! | **CPU frames**, one per CPU (`frames.rs`) | the CPU's `FrameCache` (≤ 64 free frames) and the reservation it keeps back for its next commit (≤ 32) | its own CPU: single-frame alloc/free (page tables, demand-zero frames, everything a round frees), small reserve/unreserve; [`with_mm`] drains them all |
//! | none: the charge's atomics (`Manager::charge`) | the [`CommitCharge`]: committed pages, tables charged and the limits' generation (one word), the peak, the limits | a commit's check-and-charge (one compare-exchange), a decommit's uncharge (`fetch_sub`); [`commit_state`] reads a snapshot, [`set_commit_limit`] moves the limits |
//! | **frames lock** (`Manager::frames`) | the `FrameAllocator` (bitmap, reservations), the kernel's own tables and kernel-stack slots | per request: cache refills and drains (32 frames each), large pages, reservations beyond the CPU's kept ones; kernel stacks |
//! | **registry** (`Manager::spaces`) | root → space, for the page-fault path (when the space is not this CPU's running one) and accounting | [`Space::new`] / drop, faults, [`with_mm`] |
//! | per-CPU work counters (`frames.rs`) | the CPU's sum of `WorkCounters` | its own CPU after each call that did work; readers add them up |
//! | none: atomics | each space's `ActiveCpus` (the CPUs running it) | [`Space::activate`] / [`Space::deactivate`] (context switch), read by every round |
//! | none: per-CPU atomics | the shootdown mailboxes (`tlb.rs`: each CPU's outgoing request, each CPU's pending mask) | rounds and the shootdown IPI handler |
//! | per-CPU `spin::Mutex`, only its own CPU takes it (the fault path only tries it) | the space this CPU runs (its bit is set in that space's set), for the fault path | `activate` / `deactivate`, faults |
//!
//! - **Lock order: registry → space → CPU frames → frames.** A call holds its space lock and
//!   takes the others one request at a time (the crate's `FrameSource`, implemented by
//!   [`KernelFrames`]; the charge, `ChargeSource` by [`KernelCharge`], takes no lock and can be
//!   reached under any of them), no one holds two space locks (the registry is dropped before a
//!   space lock is taken), and the frames holders never wait for anything (no round, no other
//!   lock but frames under a CPU's cache). The kernel heap is taken inside any of them, never the
//!   other way round. A round's frees take the CPU's frames and the frames lock with no space
//!   lock held (the call released it after its last change).
//! - **Interrupts.** Every lock is held with interrupts off, so a holder is never preempted. A
//!   CPU waiting for a lock (or for the acknowledgements of its own round) spins with IF = 0 but
//!   serves the TLB flush requests posted to it, so a space-lock holder that waits for its
//!   acknowledgements never deadlocks with it (smp-and-dispatch §4 pitfall 14). Any other lock a
//!   CPU may spin on while its holder waits for a round must do the same: use [`SpinLock`], or
//!   call [`serve_flush_requests`] in the loop. The shootdown IPI handler takes no lock.
//! - **Each call is atomic**: it holds its space lock exclusively from its first check to its
//!   last entry change, and returns only after its TLB round and the freeing of what it unmapped
//!   (frames reach the allocator only after every CPU that may hold a translation has
//!   acknowledged, §4(c)); a call on the same pages does not start before that. Calls on one
//!   space are serialised by the lock; the charge is checked and charged in one step (one
//!   compare-exchange of the word that holds both counts, `address_space::CommitCharge`), so two
//!   spaces committing at once can never together pass the limit.
//! - **A narrowing call's round runs with the lock released**, keeping only its pages.
//!   `SpaceShared::with_range` (`space.rs`) runs every call inside
//!   `AddressSpace::defer_rounds`: the call validates and changes every entry, record and count
//!   under the exclusive lock (validate, then perform: nothing fails after the first change) and
//!   leaves its round, the frames and table pages to free after it and the charge to give back
//!   after those (`PendingRound`). Its pages ([`CallRange`]: what the call's arguments name,
//!   rounded out to 2 MiB; every address for a call that picks its place or reports on a whole
//!   allocation, `VirtualQuery`, and for every call that does not say) are registered in this
//!   CPU's slot of the space, the lock is released, and `PendingRound::complete_on` runs the
//!   round, the frees and the uncharge; then the slot is cleared. A later call takes the lock
//!   and first waits, holding it, for the rounds in flight on its pages (only those registered
//!   before it took the lock: bounded); a call on other pages goes on at once. So two threads
//!   decommitting their own regions no longer wait for each other's rounds, while a call on the
//!   same pages (a recommit, a query) still sees the finished call. Faults never wait for rounds
//!   (they see the call's finished entries and records; a range being decommitted is already
//!   reserved, so no demand-zero fault can put a page into it; a table the call unlinked is
//!   unreachable from the root and freed only after the round). Why a call on other pages cannot
//!   tell a round is in flight: the crate's `space/round.rs` ("Without the lock") and its README's
//!   Concurrency section. Calls that need no round (commits of new pages, reservations, queries)
//!   register nothing. This replaced a downgrade to shared for the round (Linux's munmap), under
//!   which every next call waited for the round. While this CPU makes its round it touches no
//!   guest memory, so it cannot fault on the space.
//! - **Frames held by the CPUs.** A cached frame (and the zeroed frame each CPU keeps for its next
//!   demand-zero fault) is used and a kept reservation reserved to the allocator, so nothing a
//!   reservation promised ever sits in a cache; the commit limit leaves
//!   `MAX_CPUS × (64 + 1 + 15 + 32)` frames out for them (`frames::PER_CPU_FRAMES`: the cache,
//!   the kept zeroed frame, a fault-around's frames in flight, the kept reservation; `limit +
//!   allowance ≤ frames − reserve/2 − cached`), so a commit that passed the charge always gets
//!   its frames. [`with_mm`] gives every
//!   CPU's frames back first, so its figures (and the tests' before/after counts) are exact.
//! - **Frames zeroed ahead.** A CPU with nothing to run (the scheduler's idle wait, while more
//!   than half the CPUs idle) zeroes free frames into one list of up to 4,096 ([`zero_ahead`],
//!   one CPU at a time, only while more than `2 × 4,096` frames are available); demand-zero
//!   faults take from it before zeroing a frame.
//!   Listed frames are used to the allocator but not left out of the commit limit: every frames
//!   request that finds the allocator short gives the list back and asks again (`frames.rs`), and
//!   [`with_mm`] gives it back too. `--config zero_idle=0` turns it off.
//! - **A page fault** (ring 0: [`on_page_fault`]; ring 3: [`Space::handle_fault`]) finds its
//!   space through this CPU's running space (no shared lock), else the registry, and takes that
//!   space's lock **shared** (Linux's `mmap_read_lock` fault path): faults on one space run on
//!   several CPUs at once, and change only non-present entries (a first touch, a guard disarmed),
//!   by `lock cmpxchg` of the entry they read (`AddressSpace::handle_fault_shared`); the one that
//!   loses a race does nothing and retries the access. The tables exist (commit made them), so a
//!   fault creates none and needs no round. A demand-zero fault takes the lock once, bringing
//!   the zeroed frame its CPU keeps (zeroed with no lock held, after the CPU's previous fault used
//!   the last one, §4(d)); the entry is installed by compare-and-exchange, and a frame not used
//!   (the page changed, or was no first touch) stays kept. A CPU with no kept frame takes the
//!   lock twice: once to learn it needs a frame, then to install one zeroed meanwhile. The page's reserved frame comes out of the space's atomic reservation into
//!   this CPU's kept reservation: the common fault path takes no global lock. (With no
//!   unreserved frame left, the fault is handled exclusively with the reserved frame.) A first
//!   touch that continues a run of present pages then maps up to 15 pages ahead
//!   (fault-around, `AddressSpace::fault_around`): their frames zeroed with no lock held, then
//!   installed in one more shared pass (`prefault_shared`, first touches in waiting only). Frames
//!   are zeroed with `rep stosq` or 64-bit stores, whichever the CPU runs faster, timed at boot
//!   (`PhysWindow::calibrate_zeroing`: stores under TCG, about half the time). A call
//!   holds the lock exclusively, so it never sees a fault half done. A fault taken while this CPU
//!   holds the space's lock exclusively is a kernel bug and is reported as a kernel fault.
//! - **TLB shootdown** (`tlb.rs`): one round per call, by IPI to exactly the other CPUs in the
//!   space's set, pages or a full flush per the crate's threshold; none when no other CPU runs
//!   the space. A CPU halted lazily with the root in CR3 is left out of the rounds that free no
//!   table and flushes when it wakes (`tlb::enter_lazy`). A space is destroyed only after
//!   every CPU still running it loaded the kernel's table.
//! - **Present entries** that are writable without their D bit are changed with `lock cmpxchg`
//!   ([`window::PhysWindow`]'s `compare_exchange_u64`): another CPU's MMU may set D at any
//!   moment. Others (D set, or not writable) with a plain store: the MMU can then set only A,
//!   which nothing reads (address-space `Tables::replace_present`).

mod accounting;
mod boot;
mod config;
mod fault;
mod frames;
pub mod kernel_tables;
pub mod kstack;
pub mod lock;
mod space;
pub mod tlb;
pub mod window;

pub use accounting::{Accounting, CommitState, commit_state, print_accounting, set_commit_limit, accounting};
pub use boot::{BootSnapshot, boot_snapshot};
pub use config::{MemoryConfig, config};
pub use fault::{PageFaultVerdict, fault_access, on_page_fault};
pub use frames::{KernelCharge, KernelFrames, PER_CPU_FRAMES, ZeroedStats, check_zeroed_ahead, with_zero_ahead_paused, zero_ahead, zeroed_stats};
pub use space::{CallRange, Space};
pub use lock::{RwSpinLock, SpinLock};
pub use tlb::{KernelTlb, serve_flush_requests, shootdown_stats};

use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;

use address_space::PAGE_SIZE;
use address_space::frame::{FrameAllocator, PhysRange};
use address_space::{ChargeSnapshot, CommitCharge, WorkCounters};
use bootloader_api::BootInfo;
use bootloader_api::info::MemoryRegionKind;
use x86_64::PhysAddr;
use x86_64::align_down;
use x86_64::structures::paging::PhysFrame;

use crate::arch::cpu;
use crate::arch::{percpu, probe};
use window::PhysWindow;

/// Frames below this physical address are never allocated (real-mode IVT, BIOS data, EBDA).
pub const LOW_MEMORY_END: u64 = 0x10_0000;
/// The kernel keeps `1 / KERNEL_RESERVE_DIVISOR` of the frames available after boot (at least
/// [`KERNEL_RESERVE_MIN_FRAMES`]) out of the commit limit, for page-table pages and other kernel
/// allocations. A fully populated page table costs 1/512 of what it maps, so 1/64 leaves room
/// for sparse layouts (a few committed pages per 2 MiB).
pub const KERNEL_RESERVE_DIVISOR: u64 = 64;
/// Lower bound of the kernel reserve, in frames (4 MiB).
pub const KERNEL_RESERVE_MIN_FRAMES: u64 = 1024;
/// Kernel-heap bytes one allocation of a guest space costs at most (the allocation map and the
/// free-gap tree; measured by `tests/paging.rs`).
pub const KERNEL_HEAP_PER_ALLOCATION: usize = 160;
/// The most allocations one guest space may hold, so that guests cannot exhaust the kernel heap
/// (a reservation past it is E_OUTOFMEMORY). host-abi §9 asks for at least 100,000.
pub const MAX_ALLOCATIONS_PER_SPACE: usize = 131_072;

/// The memory manager's shared state (after [`init`]); each part behind its own lock (module
/// docs).
pub(crate) struct Manager {
    /// The frame allocator and the kernel's own tables (kernel stacks).
    frames: SpinLock<FrameState>,
    /// The system-wide commit charge (lock-free).
    charge: CommitCharge,
    /// Every live space by root: for the page-fault path and accounting.
    spaces: SpinLock<BTreeMap<u64, Arc<space::SpaceShared>>>,
    /// The physical-memory window (a copy per user: it is an offset).
    window: PhysWindow,
    kernel_root: PhysFrame,
    ram_bytes: u64,
    usable_bytes: u64,
    boot_frames_returned: u64,
    /// The commit limit set at boot (what the frames allow, or the configured cap).
    boot_commit_limit: u64,
}

/// What the frames lock protects.
struct FrameState {
    allocator: FrameAllocator,
    /// Page-table pages of the kernel's own tables.
    kernel_table_pages: u64,
    /// Kernel-stack slots in use (bit i: slot i, see [`kstack`]).
    kstack_slots: u128,
}

/// A view of the whole memory manager with every shared part locked and every CPU's cached
/// frames given back to the allocator, so that its figures are exact ([`with_mm`]): for
/// accounting and tests. Not for the common path.
pub struct MemoryManager<'a> {
    /// Physical frames (no frame in any CPU's cache while the view lives).
    pub frames: &'a mut FrameAllocator,
    /// The system-wide commit charge, read once when the view was made (commits in other
    /// spaces go on meanwhile: it takes no lock).
    pub charge: ChargeSnapshot,
    /// Work done by address-space operations (every CPU's, added up).
    pub counters: WorkCounters,
    /// The physical-memory window.
    pub window: PhysWindow,
    kernel_table_pages: u64,
    /// Page-table pages of every space (roots included), counted when the view was made.
    space_table_pages: u64,
    spaces: usize,
    manager: &'static Manager,
}

/// Runs `f` with physical memory, through the window (after [`init`]).
pub fn with_phys(f: &mut crate::arch::smp::PhysAccess<'_>) {
    let mut window = manager().window;
    f(&mut window)
}

static MANAGER: spin::Once<Manager> = spin::Once::new();

/// The memory manager.
///
/// # Panics
/// If [`init`] has not run.
#[inline]
fn manager() -> &'static Manager {
    MANAGER.get().expect("memory::init has run")
}

fn frame(pa: u64) -> PhysFrame {
    PhysFrame::containing_address(PhysAddr::new(pa))
}

/// Takes over physical memory and paging (see the module docs). Call once, after the GDT and IDT
/// are loaded and the heap works.
pub fn init(boot_info: &'static BootInfo) {
    let snap = boot::SNAPSHOT.call_once(|| boot::snapshot(boot_info));
    let limit = snap.ram.iter().map(|r| r.1).max().unwrap_or(0);
    // SAFETY: the bootloader maps all physical memory at window_offset (we asked it to), and
    // `build` below maps every RAM frame at the same place before the switch.
    let mut window = unsafe { PhysWindow::new(snap.window_offset, limit.div_ceil(2 << 20) * (2 << 20)) };

    let ranges: Vec<PhysRange> = snap
        .ram
        .iter()
        .filter(|r| r.1 > LOW_MEMORY_END)
        .map(|r| PhysRange { start: PhysAddr::new(r.0.max(LOW_MEMORY_END)), end: PhysAddr::new(r.1) })
        .collect();
    let mut frames = FrameAllocator::new(&ranges);
    for r in snap.regions.iter().filter(|r| r.kind == MemoryRegionKind::Bootloader) {
        let start = align_down(r.start.max(LOW_MEMORY_END), PAGE_SIZE);
        for pa in (start..r.end.div_ceil(PAGE_SIZE) * PAGE_SIZE).step_by(PAGE_SIZE as usize) {
            let _ = frames.mark_allocated(frame(pa));
        }
    }

    let features = cpu::features();
    cpu::enable_paging_features(&features);
    // SAFETY: CR3 still holds the bootloader's tables, the window is its physical mapping, and
    // the snapshot was taken from its boot info.
    let tables = unsafe { kernel_tables::build(&mut frames, &mut window, snap, features.gib_pages) };
    // SAFETY: the new tables map the kernel image, its stack and the window at the addresses in
    // use (kernel_tables::build); the GDT, IDT and TSS live in the kernel image.
    unsafe { kernel_tables::activate(tables.root) };
    cpu::enable_user_protection(&features);
    probe::set_smap(cpu::smap_enabled());

    // Step 5: give back what the bootloader used and the kernel no longer maps.
    let mut keep = tables.kept_frames.clone();
    if let Some((_, pages)) = &snap.ramdisk {
        keep.extend(pages.iter().copied());
    }
    let mut returned = 0;
    for r in snap.regions.iter().filter(|r| r.kind == MemoryRegionKind::Bootloader) {
        let start = align_down(r.start.max(LOW_MEMORY_END), PAGE_SIZE);
        for pa in (start..r.end.div_ceil(PAGE_SIZE) * PAGE_SIZE).step_by(PAGE_SIZE as usize) {
            if !keep.contains(&pa) && frames.free(frame(pa)).is_ok() {
                returned += 1;
            }
        }
    }

    let scratch = frames.alloc().expect("a frame at boot");
    let (stosq, stores) = window.calibrate_zeroing(scratch);
    frames.free(scratch).expect("the scratch frame");
    let ((chosen, cost), (other, other_cost)) =
        if stores < stosq { (("64-bit stores", stores), ("rep stosq", stosq)) } else { (("rep stosq", stosq), ("64-bit stores", stores)) };
    log::info!("memory: frames zeroed with {chosen} ({cost} cycles a page; {other}: {other_cost})");

    let config = *config::CONFIG.call_once(MemoryConfig::from_boot);
    let available = frames.available_frames();
    let reserve = (available / KERNEL_RESERVE_DIVISOR).max(KERNEL_RESERVE_MIN_FRAMES).min(available);
    // The frames every CPU may hold in its cache are out of reach of a reservation
    // (address-space frame/cache.rs): they come out of the limit.
    let cached = percpu::MAX_CPUS as u64 * frames::PER_CPU_FRAMES;
    let mut limit_pages = (available - reserve).saturating_sub(cached);
    if let Some(mb) = config.commit_limit_mb {
        limit_pages = limit_pages.min(mb * 256);
    }
    // Half the kernel reserve (and every frame a configured cap leaves out) is the page-table
    // allowance: tables beyond it are charged to the limit (address-space charge.rs). So limit +
    // allowance ≤ frames − reserve / 2 − cached: the other half of the reserve is for roots and
    // kernel allocations.
    let table_allowance = (available - reserve / 2).saturating_sub(cached) - limit_pages;
    let charge = CommitCharge::new(limit_pages, limit_pages * config.critical_reserve_percent / 100).with_table_allowance(table_allowance);
    let usable_bytes = snap.regions.iter().filter(|r| r.kind == MemoryRegionKind::Usable).map(|r| r.end - r.start).sum();
    let ram_bytes = snap.ram.iter().map(|r| r.1 - r.0).sum();
    tlb::KERNEL_ROOT.store(tables.root.start_address().as_u64(), core::sync::atomic::Ordering::Relaxed);
    MANAGER.call_once(|| Manager {
        frames: SpinLock::new(FrameState { allocator: frames, kernel_table_pages: tables.table_pages, kstack_slots: 0 }),
        charge,
        spaces: SpinLock::new(BTreeMap::new()),
        window,
        kernel_root: tables.root,
        ram_bytes,
        usable_bytes,
        boot_frames_returned: returned,
        boot_commit_limit: limit_pages,
    });
    frames::ZERO_IDLE.store(config.zero_idle, core::sync::atomic::Ordering::Relaxed);
    kstack::prepare();
    log::info!(
        "memory: kernel page tables in CR3 ({} table pages), {} bootloader frames returned, NX/WP on, SMEP {}, SMAP {}, PAT entry 4 = WC",
        tables.table_pages,
        returned,
        if cpu::smep_enabled() { "on" } else { "absent" },
        if cpu::smap_enabled() { "on" } else { "absent" }
    );
}

/// Runs `f` on a view of the whole memory manager ([`MemoryManager`]): every CPU's cached frames
/// given back, the frames locked, the charge read (a snapshot), the spaces' table pages counted. For
/// accounting and tests; every address-space call takes only the locks it needs instead. Must
/// not be called while this CPU holds a space lock.
///
/// # Panics
/// If [`init`] has not run.
pub fn with_mm<R>(f: impl FnOnce(&mut MemoryManager<'_>) -> R) -> R {
    let manager = manager();
    x86_64::instructions::interrupts::without_interrupts(|| {
        // Lock order: the registry, then each space (one at a time), then the CPUs' frames, the
        // frames.
        let spaces: Vec<Arc<space::SpaceShared>> = manager.spaces.lock().values().cloned().collect();
        let space_table_pages = spaces.iter().map(|s| s.table_pages()).sum();
        frames::drain_all(|| {
            let charge = manager.charge.snapshot();
            let mut state = manager.frames.lock();
            let kernel_table_pages = state.kernel_table_pages;
            f(&mut MemoryManager {
                frames: &mut state.allocator,
                charge,
                counters: frames::counters(),
                window: manager.window,
                kernel_table_pages,
                space_table_pages,
                spaces: spaces.len(),
                manager,
            })
        })
    })
}

/// The work counters of every address-space call so far, every CPU's added up (no other lock).
pub fn work_counters() -> WorkCounters {
    x86_64::instructions::interrupts::without_interrupts(frames::counters)
}

impl MemoryManager<'_> {
    /// Page-table pages in use: the kernel's and every space's (roots included).
    pub fn page_table_pages(&self) -> u64 {
        self.kernel_table_pages + self.space_table_pages
    }
}
