//! Host simulation: RAM, a TLB and a CPU's memory accesses, for tests of this crate and of
//! crates built on it.
//!
//! * [`SimPhysMemory`]: a `Vec` standing in for RAM at real physical addresses
//!   (`base..base+size`), implementing [`PhysMemory`]; the page tables of an
//!   [`AddressSpace`] live in it, so tests read the real table bytes.
//! * [`TlbModel`]: caches translations when [`sim_access`] uses them, and the paging-structure
//!   entries (PML4E, PDPTE, PDE) its walks go through, even walks that end in a fault (Intel SDM
//!   vol. 3A §4.10.3); `invlpg` drops the page's translation and *every* paging-structure entry,
//!   a full flush drops everything (§4.10.4.1). [`TlbModel::stale_entries`] lists cached
//!   translations and structure entries that no longer agree with the tables: what a missing
//!   `invlpg` would leave behind, including after a page-table page is freed.
//! * [`SmpTlbModel`]: one [`TlbModel`] per simulated CPU, and the shootdown protocol of
//!   [`Tlb::shootdown`]: a round reaches exactly the CPUs of its target set (so a CPU running the
//!   space but missing from the set keeps its stale entries, and the checks see them); it counts
//!   rounds and IPIs. [`SmpTlbModel::stale_entries`] checks every CPU.
//! * [`sim_access`]: one access as the MMU does it: TLB hit, else a walk that starts from the
//!   deepest cached paging-structure entry (§4.10.3.3), checks P/RW/US/NX and sets A/D like
//!   hardware, else a page fault handed to [`AddressSpace::handle_fault`] and the access
//!   retried.

use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;

use x86_64::structures::paging::{PhysFrame, Size4KiB};
use x86_64::{PhysAddr, VirtAddr};

use crate::frame::PhysRange;
use crate::paging::pte::{ACCESSED, ADDR_MASK, DIRTY, HUGE, NO_EXECUTE, PRESENT, USER, WRITABLE};
use crate::paging::table;
use crate::paging::tlb::{CpuSet, FlushRound, FlushScope, Tlb};
use crate::space::{Access, AddressSpace, FaultOutcome, VmContext};
use crate::PhysMemory;
use crate::{LARGE_PAGE_SIZE, PAGE_SIZE};

/// Simulated RAM: `size` bytes at physical address `base`.
#[derive(Clone)]
pub struct SimPhysMemory {
    base: u64,
    bytes: Vec<u8>,
}

impl core::fmt::Debug for SimPhysMemory {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "SimPhysMemory(p{:#x}..p{:#x})", self.base, self.base + self.bytes.len() as u64)
    }
}

impl SimPhysMemory {
    /// Creates `size` bytes of RAM (rounded down to 4 KiB) at `base` (4 KiB aligned), filled with
    /// 0xA5 so that missing zeroing shows.
    ///
    /// # Panics
    ///
    /// If `base` is not 4 KiB aligned.
    pub fn new(base: u64, size: usize) -> Self {
        assert_eq!(base % PAGE_SIZE, 0, "simulated RAM must start on a frame");
        SimPhysMemory { base, bytes: vec![0xA5; size & !(PAGE_SIZE as usize - 1)] }
    }

    /// Returns the range of RAM, as the frame allocator takes it.
    pub fn range(&self) -> PhysRange {
        PhysRange { start: PhysAddr::new(self.base), end: PhysAddr::new(self.base + self.bytes.len() as u64) }
    }

    fn offset(&self, pa: PhysAddr, len: usize) -> usize {
        let a = pa.as_u64();
        assert!(
            a >= self.base && a - self.base + len as u64 <= self.bytes.len() as u64,
            "simulated RAM: access outside RAM at {pa:?}"
        );
        (a - self.base) as usize
    }
}

impl PhysMemory for SimPhysMemory {
    fn read_u64(&self, pa: PhysAddr) -> u64 {
        let o = self.offset(pa, 8);
        u64::from_le_bytes(self.bytes[o..o + 8].try_into().expect("8 bytes"))
    }
    fn write_u64(&mut self, pa: PhysAddr, value: u64) {
        let o = self.offset(pa, 8);
        self.bytes[o..o + 8].copy_from_slice(&value.to_le_bytes());
    }
    fn zero_frame(&mut self, frame: PhysFrame<Size4KiB>) {
        let o = self.offset(frame.start_address(), PAGE_SIZE as usize);
        self.bytes[o..o + PAGE_SIZE as usize].fill(0);
    }
    fn read_bytes(&self, pa: PhysAddr, buf: &mut [u8]) {
        let o = self.offset(pa, buf.len());
        buf.copy_from_slice(&self.bytes[o..o + buf.len()]);
    }
    fn write_bytes(&mut self, pa: PhysAddr, data: &[u8]) {
        let o = self.offset(pa, data.len());
        self.bytes[o..o + data.len()].copy_from_slice(data);
    }
}

/// A cached translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlbEntry {
    /// Physical address of the 4 KiB page.
    pub frame: u64,
    /// Writes allowed.
    pub writable: bool,
    /// Instruction fetches forbidden.
    pub no_execute: bool,
    /// The D bit was set when cached (writes will not walk again).
    pub dirty: bool,
    /// Comes from a 2 MiB mapping.
    pub large: bool,
}

/// A model of a TLB: translations and paging-structure entries cached by [`sim_access`],
/// dropped by invalidation.
#[derive(Debug, Default, Clone)]
pub struct TlbModel {
    entries: BTreeMap<u64, TlbEntry>,
    /// Paging-structure caches: (level of the entry: 3 PML4E, 2 PDPTE, 1 PDE; the first
    /// address it maps) → the physical address of the table it pointed to.
    structures: BTreeMap<(u32, u64), u64>,
    /// `invlpg`s received.
    pub invalidations: u64,
    /// Full flushes received.
    pub full_flushes: u64,
}

impl TlbModel {
    /// Creates an empty TLB.
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns the number of cached translations.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Returns `true` if nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Returns the cached translation of the page of `addr`.
    pub fn get(&self, addr: u64) -> Option<TlbEntry> {
        self.entries.get(&(addr & !(PAGE_SIZE - 1))).copied()
    }

    /// Returns the number of cached paging-structure entries.
    pub fn structure_entries(&self) -> usize {
        self.structures.len()
    }

    /// Returns whether a cached translation or paging-structure entry leads into the physical
    /// range `[start, start + len)`: a frame there must not be freed yet (§4(c)).
    pub fn reaches(&self, start: u64, len: u64) -> bool {
        let inside = |pa: u64| start <= pa && pa < start + len;
        self.entries.values().any(|e| inside(e.frame)) || self.structures.values().any(|&t| inside(t))
    }

    /// The deepest cached paging-structure entry for `addr`: (level of the table it points to,
    /// that table's physical address).
    fn deepest_structure(&self, addr: u64) -> Option<(u32, u64)> {
        (1..=3).find_map(|level| {
            let key = (level, addr & !(table::entry_span(level) - 1));
            self.structures.get(&key).map(|&t| (level - 1, t))
        })
    }

    /// Returns the pages whose cached translation disagrees with the current page tables of
    /// `space` (not present any more, another frame, other rights, or cached dirty while the
    /// entry is clean). Empty after every correct operation.
    /// A cached paging-structure entry is stale when the entry it copied is now absent or points
    /// to another table (its table page was freed); it is listed by the first address it maps.
    pub fn stale_entries(&self, space: &AddressSpace, mem: &impl PhysMemory) -> Vec<u64> {
        let root = space.root().start_address().as_u64();
        let stale_structures = self.structures.iter().filter(|&(&(level, va), &table)| {
            structure_entry(mem, root, level, va).is_none_or(|e| e & ADDR_MASK != table)
        });
        stale_structures
            .map(|(&(_, va), _)| va)
            .chain(self.entries
            .iter()
            .filter(|(va, t)| match space.translate(mem, **va) {
                None => true,
                Some((pa, e)) => {
                    pa.as_u64() & !(PAGE_SIZE - 1) != t.frame
                        || (e & WRITABLE != 0) != t.writable
                        || (e & NO_EXECUTE != 0) != t.no_execute
                        || (t.dirty && e & DIRTY == 0)
                }
            })
            .map(|(va, _)| *va))
            .collect()
    }
}

/// The present non-leaf entry at `level` on the walk to `va` in the tables at `root`, if the
/// walk gets there.
fn structure_entry(mem: &impl PhysMemory, root: u64, level: u32, va: u64) -> Option<u64> {
    let mut table = root;
    for l in (level..=3).rev() {
        let e = mem.read_u64(PhysAddr::new(table + table::index(va, l) * 8));
        if e & PRESENT == 0 || (l == 1 && e & HUGE != 0) {
            return None;
        }
        if l == level {
            return Some(e);
        }
        table = e & ADDR_MASK;
    }
    None
}

impl Tlb for TlbModel {
    fn invalidate_page(&mut self, addr: VirtAddr) {
        let page = addr.as_u64() & !(PAGE_SIZE - 1);
        self.invalidations += 1;
        self.entries.remove(&page);
        // invlpg drops every paging-structure entry, whatever address it maps (SDM §4.10.4.1).
        self.structures.clear();
        // invlpg drops a 2 MiB translation whatever 4 KiB page of it is named.
        let big = page & !(LARGE_PAGE_SIZE - 1);
        let large: Vec<u64> = self.entries.range(big..big + LARGE_PAGE_SIZE).filter(|(_, e)| e.large).map(|(k, _)| *k).collect();
        for k in large {
            self.entries.remove(&k);
        }
    }
    fn flush_all(&mut self) {
        self.full_flushes += 1;
        self.entries.clear();
        self.structures.clear();
    }
}

/// A simulated TLB that [`sim_access`] can fill: the TLB of the CPU doing the access.
pub trait SimTlb: Tlb {
    /// The TLB of the CPU that performs accesses now.
    fn cpu_tlb(&mut self) -> &mut TlbModel;
}

impl SimTlb for TlbModel {
    fn cpu_tlb(&mut self) -> &mut TlbModel {
        self
    }
}

/// The TLBs of several simulated CPUs running one address space. Accesses and local
/// invalidations use the TLB of [`current`](Self::current); [`Tlb::shootdown`] flushes the
/// TLB of each target CPU and of no other.
#[derive(Debug, Clone)]
pub struct SmpTlbModel {
    /// One TLB per CPU (index = CPU number).
    pub cpus: Vec<TlbModel>,
    /// The CPU that runs the code now (accesses, calls).
    pub current: usize,
    /// Rounds received.
    pub rounds: u64,
    /// IPIs those rounds needed (targets other than the current CPU).
    pub ipis: u64,
    /// The targets of the last round.
    pub last_targets: CpuSet,
}

impl SmpTlbModel {
    /// Creates `n` empty TLBs, CPU 0 current.
    pub fn new(n: usize) -> Self {
        SmpTlbModel { cpus: vec![TlbModel::new(); n], current: 0, rounds: 0, ipis: 0, last_targets: CpuSet::EMPTY }
    }

    /// CPU `cpu` starts running `space`: its bit is set, then (as the CR3 load would) nothing is
    /// cached yet.
    pub fn switch_to(&mut self, cpu: usize, space: &AddressSpace) {
        space.activate(cpu);
    }

    /// CPU `cpu` stops running `space`: the CR3 load of another space drops every translation
    /// of this one (no PCID, §4(e)), then the bit is cleared.
    pub fn switch_away(&mut self, cpu: usize, space: &AddressSpace) {
        self.cpus[cpu].flush_all();
        space.deactivate(cpu);
    }

    /// Returns `(cpu, address)` of every stale translation or paging-structure entry on any CPU
    /// (see [`TlbModel::stale_entries`]). Empty after every correct operation.
    pub fn stale_entries(&self, space: &AddressSpace, mem: &impl PhysMemory) -> Vec<(usize, u64)> {
        self.cpus
            .iter()
            .enumerate()
            .flat_map(|(cpu, t)| t.stale_entries(space, mem).into_iter().map(move |va| (cpu, va)))
            .collect()
    }
}

impl Tlb for SmpTlbModel {
    fn invalidate_page(&mut self, addr: VirtAddr) {
        self.cpus[self.current].invalidate_page(addr);
    }
    fn flush_all(&mut self) {
        self.cpus[self.current].flush_all();
    }
    fn shootdown(&mut self, round: &FlushRound<'_>) -> u32 {
        let ipis = round.targets.without(self.current).len();
        self.rounds += 1;
        self.ipis += u64::from(ipis);
        self.last_targets = round.targets;
        let n = self.cpus.len();
        for cpu in round.targets.iter().filter(|&c| c < n) {
            let tlb = &mut self.cpus[cpu];
            match round.scope {
                FlushScope::All => tlb.flush_all(),
                FlushScope::Pages(pages) => pages.iter().for_each(|&a| tlb.invalidate_page(VirtAddr::new_truncate(a))),
            }
        }
        ipis
    }
}

impl SimTlb for SmpTlbModel {
    fn cpu_tlb(&mut self) -> &mut TlbModel {
        &mut self.cpus[self.current]
    }
}

/// The result of a simulated access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimAccess {
    /// The access happened at this physical address.
    Done(PhysAddr),
    /// The access faulted and the fault was not resolved: the guest would get this exception.
    Fault(FaultOutcome),
}

fn permits(access: Access, writable: bool, no_execute: bool) -> bool {
    match access {
        Access::Read => true,
        Access::Write => writable,
        Access::Execute => !no_execute,
    }
}

/// Performs one guest access to `addr` as the CPU would (see the module docs). A resolved fault
/// is retried; a guard page or access violation is returned.
///
/// # Panics
///
/// If a fault is "resolved" three times without the access succeeding (a bug in the space).
pub fn sim_access<M: PhysMemory, T: SimTlb>(
    space: &mut AddressSpace,
    cx: &mut VmContext<'_, M, T>,
    addr: u64,
    access: Access,
) -> SimAccess {
    let page = addr & !(PAGE_SIZE - 1);
    for _ in 0..3 {
        if let Some(t) = cx.tlb.cpu_tlb().get(page)
            && permits(access, t.writable, t.no_execute)
            && (access != Access::Write || t.dirty)
        {
            return SimAccess::Done(PhysAddr::new(t.frame | (addr & (PAGE_SIZE - 1))));
        }
        if let Some(pa) = walk_and_mark(space, cx, addr, access) {
            return SimAccess::Done(pa);
        }
        match space.handle_fault(cx, addr, access) {
            FaultOutcome::Resolved => continue,
            other => return SimAccess::Fault(other),
        }
    }
    panic!("sim_access: fault at {addr:#x} resolved three times without success");
}

/// The page walk of the MMU: checks rights, sets A (and D for writes), fills the TLB.
fn walk_and_mark<M: PhysMemory, T: SimTlb>(
    space: &AddressSpace,
    cx: &mut VmContext<'_, M, T>,
    addr: u64,
    access: Access,
) -> Option<PhysAddr> {
    if addr >= space.config().max_address_end {
        return None;
    }
    // The walk starts from the deepest cached paging-structure entry (a stale one reads a freed
    // table, as the hardware would), and caches the non-leaf entries it goes through.
    let root = space.root().start_address().as_u64();
    let (mut level, mut table) = cx.tlb.cpu_tlb().deepest_structure(addr).unwrap_or((3, root));
    let (entry_at, large) = loop {
        let at = table + table::index(addr, level) * 8;
        if level == 0 {
            break (at, false);
        }
        let e = cx.mem.read_u64(PhysAddr::new(at));
        if e & PRESENT == 0 {
            return None;
        }
        if level == 1 && e & HUGE != 0 {
            break (at, true);
        }
        cx.tlb.cpu_tlb().structures.insert((level, addr & !(table::entry_span(level) - 1)), e & ADDR_MASK);
        table = e & ADDR_MASK;
        level -= 1;
    };
    let e = cx.mem.read_u64(PhysAddr::new(entry_at));
    if e & PRESENT == 0 || e & USER == 0 {
        return None;
    }
    if large {
        debug_assert!(e & HUGE != 0);
    }
    let writable = e & WRITABLE != 0;
    let no_execute = e & NO_EXECUTE != 0;
    if !permits(access, writable, no_execute) {
        return None;
    }
    let mut new = e | ACCESSED;
    if access == Access::Write {
        new |= DIRTY;
    }
    if new != e {
        cx.mem.write_u64(PhysAddr::new(entry_at), new);
    }
    let frame = if large {
        ((e & ADDR_MASK) & !(LARGE_PAGE_SIZE - 1)) | (addr & (LARGE_PAGE_SIZE - 1) & !(PAGE_SIZE - 1))
    } else {
        e & ADDR_MASK
    };
    cx.tlb
        .cpu_tlb()
        .entries
        .insert(addr & !(PAGE_SIZE - 1), TlbEntry { frame, writable, no_execute, dirty: new & DIRTY != 0, large });
    Some(PhysAddr::new(frame | (addr & (PAGE_SIZE - 1))))
}

/// Reads guest memory like a sequence of guest loads (page by page).
///
/// # Errors
///
/// The fault outcome of the first page that could not be read.
pub fn sim_read<M: PhysMemory, T: SimTlb>(
    space: &mut AddressSpace,
    cx: &mut VmContext<'_, M, T>,
    addr: u64,
    buf: &mut [u8],
) -> Result<(), FaultOutcome> {
    let mut done = 0;
    while done < buf.len() {
        let va = addr + done as u64;
        let n = ((PAGE_SIZE - (va & (PAGE_SIZE - 1))) as usize).min(buf.len() - done);
        match sim_access(space, cx, va, Access::Read) {
            SimAccess::Done(pa) => cx.mem.read_bytes(pa, &mut buf[done..done + n]),
            SimAccess::Fault(f) => return Err(f),
        }
        done += n;
    }
    Ok(())
}

/// Writes guest memory like a sequence of guest stores (page by page; a store straddling two
/// pages marks both).
///
/// # Errors
///
/// The fault outcome of the first page that could not be written (earlier pages are written).
pub fn sim_write<M: PhysMemory, T: SimTlb>(
    space: &mut AddressSpace,
    cx: &mut VmContext<'_, M, T>,
    addr: u64,
    data: &[u8],
) -> Result<(), FaultOutcome> {
    let mut done = 0;
    while done < data.len() {
        let va = addr + done as u64;
        let n = ((PAGE_SIZE - (va & (PAGE_SIZE - 1))) as usize).min(data.len() - done);
        match sim_access(space, cx, va, Access::Write) {
            SimAccess::Done(pa) => cx.mem.write_bytes(pa, &data[done..done + n]),
            SimAccess::Fault(f) => return Err(f),
        }
        done += n;
    }
    Ok(())
}
