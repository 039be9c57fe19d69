//! Test-only reference model of an address space: a flat per-page array over a small user range
//! and an unsorted list of allocations, every rule transcribed naively from win32-semantics
//! (linear scans everywhere, no page tables, no trees). The property test runs the real
//! [`crate::AddressSpace`] and this model side by side and compares every answer.
//!
//! Frame exhaustion is predicted exactly: the model computes the page-table pages a commit
//! needs from the set of committed pages (a table exists exactly while it maps something) and
//! is told the allocator's `available_frames` and free 2 MiB runs before each call.

use alloc::collections::BTreeSet;
use alloc::vec;
use alloc::vec::Vec;

use crate::charge::CriticalLevel;
use crate::space::{Access, FaultOutcome, MemoryBasicInformation};
use crate::win32::*;
use crate::VmError;

const PG: u64 = 0x1000;
const G: u64 = 0x10000;
const L: u64 = 0x20_0000;

/// Page state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum St {
    Free,
    Reserved,
    Committed,
}

/// One page.
#[derive(Clone, Copy, Debug)]
pub struct Pg {
    pub st: St,
    /// Base `PAGE_*` value (committed pages).
    pub prot: u32,
    pub guard: bool,
    pub dirty: bool,
    pub frame: bool,
    /// The u64 at offset 0 of the page.
    pub value: u64,
}

const FREE: Pg = Pg { st: St::Free, prot: 0, guard: false, dirty: false, frame: false, value: 0 };

/// One allocation.
#[derive(Clone, Copy, Debug)]
pub struct Al {
    pub base: u64,
    pub size: u64,
    pub aprot: u32,
    pub ww: bool,
    pub large: bool,
    pub cache: u32,
    /// 0 private, 1 image, 2 host-owned.
    pub kind: u8,
}

/// The frame allocator's state before a call.
#[derive(Clone, Copy, Debug)]
pub struct Env {
    pub available: u64,
    pub runs: u64,
}

/// The model.
pub struct Model {
    pub min: u64,
    pub end: u64,
    pub pages: Vec<Pg>,
    pub allocs: Vec<Al>,
    pub committed: u64,
    pub limit: u64,
    pub reserve: u64,
    /// Page-table pages paid from the kernel's reserve before the limit (charge.rs).
    pub allowance: u64,
    pub large_ok: bool,
    /// 2 MiB chunks (`va >> 21`) whose page table a decommit emptied and kept: it stays until a
    /// release of an allocation overlapping the chunk finds it empty.
    pub kept: BTreeSet<u64>,
}

/// A parsed protection: (base value, guard, cache bits).
fn parse(p: u32, private: bool) -> Option<(u32, bool, u32)> {
    let base = p & 0xFF;
    let mods = p & !0xFF;
    if mods & !0x700 != 0 || ![1, 2, 4, 8, 0x10, 0x20, 0x40, 0x80].contains(&base) {
        return None;
    }
    let (guard, nc, wc) = (mods & 0x100 != 0, mods & 0x200 != 0, mods & 0x400 != 0);
    if (base == 1 && mods != 0) || (guard && (nc || wc)) || (nc && wc) {
        return None;
    }
    if private && (base == 8 || base == 0x80) {
        return None;
    }
    Some((base, guard, mods & 0x600))
}

fn can(access: Access, prot: u32) -> bool {
    match access {
        Access::Read => prot != PAGE_NOACCESS,
        Access::Write => matches!(prot, 4 | 8 | 0x40 | 0x80),
        Access::Execute => matches!(prot, 0x10 | 0x20 | 0x40 | 0x80),
    }
}

fn up(v: u64, to: u64) -> u64 {
    v.div_ceil(to).saturating_mul(to)
}

impl Model {
    pub fn new(min: u64, end: u64, limit: u64, reserve: u64) -> Self {
        Model {
            min,
            end,
            pages: vec![FREE; ((end - min) / PG) as usize],
            allocs: Vec::new(),
            committed: 0,
            limit,
            reserve,
            allowance: 0,
            large_ok: true,
            kept: BTreeSet::new(),
        }
    }

    fn i(&self, va: u64) -> usize {
        ((va - self.min) / PG) as usize
    }

    pub fn page(&self, va: u64) -> Pg {
        self.pages[self.i(va)]
    }

    fn alloc_of(&self, va: u64) -> Option<usize> {
        self.allocs.iter().position(|a| a.base <= va && va < a.base + a.size)
    }

    fn block_used(&self, b: u64) -> bool {
        self.allocs.iter().any(|a| a.base / G <= b && b < up(a.base + a.size, G) / G)
    }

    fn cap(&self, level: CriticalLevel) -> u64 {
        match level {
            CriticalLevel::Task => self.limit - self.reserve,
            CriticalLevel::AppDomain => self.limit - self.reserve / 2,
            CriticalLevel::Process => self.limit,
        }
    }

    /// The total charge if `n` more pages were committed with `need` more tables, `before` tables
    /// existing: guest pages and the tables beyond the allowance (charge.rs).
    fn charge_after(&self, n: u64, before: u64, need: u64) -> u64 {
        self.committed + n + (before + need).saturating_sub(self.allowance)
    }

    /// The limit a guest is told: the limit less the tables beyond the allowance.
    pub fn reported_limit(&self) -> u64 {
        self.limit - self.tables((0, 0), (0, 0)).saturating_sub(self.allowance)
    }

    /// Page-table pages below the root if the 4 KiB pages `extra` and the 2 MiB pages `extra_large`
    /// were committed too.
    pub fn tables(&self, extra: (u64, u64), extra_large: (u64, u64)) -> u64 {
        let large_ranges = self.large_ranges();
        let in_large = |va: u64| large_ranges.iter().any(|&(s, e)| s <= va && va < e);
        let mut set = BTreeSet::new();
        for &chunk in &self.kept {
            set.insert((1, chunk));
            set.insert((2, chunk >> 9));
            set.insert((3, chunk >> 18));
        }
        for (k, p) in self.pages.iter().enumerate() {
            let va = self.min + k as u64 * PG;
            if (p.st == St::Committed && !in_large(va)) || (extra.0 <= va && va < extra.1) {
                set.insert((1, va >> 21));
                set.insert((2, va >> 30));
                set.insert((3, va >> 39));
            }
        }
        let mut larges: Vec<u64> = large_ranges.iter().flat_map(|&(s, e)| (s..e).step_by(L as usize)).collect();
        larges.extend((extra_large.0..extra_large.1).step_by(L as usize));
        for va in larges {
            set.insert((2, va >> 30));
            set.insert((3, va >> 39));
        }
        set.len() as u64
    }

    fn large_ranges(&self) -> Vec<(u64, u64)> {
        self.allocs.iter().filter(|a| a.large).map(|a| (a.base, a.base + a.size)).collect()
    }

    /// Frames held by 4 KiB pages, 2 MiB pages (count), committed 4 KiB pages.
    pub fn frame_counts(&self) -> (u64, u64, u64) {
        let mut held = 0;
        let mut committed = 0;
        let large_ranges = self.large_ranges();
        for (k, p) in self.pages.iter().enumerate() {
            let va = self.min + k as u64 * PG;
            if large_ranges.iter().any(|&(s, e)| s <= va && va < e) {
                continue;
            }
            held += u64::from(p.frame);
            committed += u64::from(p.st == St::Committed);
        }
        let large = self.allocs.iter().filter(|a| a.large).map(|a| a.size / L).sum();
        (held, large, committed)
    }

    pub fn alloc(&mut self, addr: u64, size: u64, ty: u32, protect: u32, level: CriticalLevel, env: Env) -> Result<u64, VmError> {
        use VmError::*;
        let valid = MEM_COMMIT | MEM_RESERVE | MEM_RESET | MEM_RESET_UNDO | MEM_PHYSICAL | MEM_TOP_DOWN | MEM_WRITE_WATCH | MEM_LARGE_PAGES;
        if ty & !valid != 0 || ty & (MEM_COMMIT | MEM_RESERVE | MEM_RESET | MEM_RESET_UNDO) == 0 {
            return Err(InvalidParameter);
        }
        if (ty & MEM_RESET != 0 && ty != MEM_RESET) || (ty & MEM_RESET_UNDO != 0 && ty != MEM_RESET_UNDO) {
            return Err(InvalidParameter);
        }
        let large = ty & MEM_LARGE_PAGES != 0;
        if large && (ty & MEM_RESERVE == 0 || ty & MEM_COMMIT == 0 || ty & (MEM_PHYSICAL | MEM_WRITE_WATCH) != 0) {
            return Err(InvalidParameter);
        }
        if ty & MEM_WRITE_WATCH != 0 && ty & MEM_RESERVE == 0 {
            return Err(InvalidParameter);
        }
        let phys = ty & MEM_PHYSICAL != 0;
        if phys && (ty & MEM_RESERVE == 0 || ty & !(MEM_RESERVE | MEM_TOP_DOWN | MEM_PHYSICAL) != 0 || protect != PAGE_READWRITE) {
            return Err(InvalidParameter);
        }
        let Some((prot, guard, cache)) = parse(protect, true) else {
            return Err(InvalidProtection);
        };
        if addr > self.end - 1 || (addr != 0 && addr < self.min) {
            return Err(InvalidParameter);
        }
        if size == 0 || addr.checked_add(size).is_none_or(|e| e > self.end) {
            return Err(InvalidParameter);
        }
        if large {
            if !self.large_ok {
                return Err(PrivilegeNotHeld);
            }
            if !addr.is_multiple_of(L) || !size.is_multiple_of(L) || (protect != PAGE_READWRITE && protect != PAGE_EXECUTE_READWRITE) {
                return Err(InvalidParameter);
            }
        }
        if phys {
            return Err(InvalidParameter);
        }
        if ty == MEM_RESET || ty == MEM_RESET_UNDO {
            let (s, e) = (addr / PG * PG, up(addr + size, PG));
            let a = self.one_alloc(s, e)?;
            if self.allocs[a].large {
                return Err(InvalidParameter);
            }
            return Ok(s);
        }
        if ty & MEM_RESERVE != 0 || addr == 0 {
            let (base, sz) = if addr == 0 {
                let sz = up(size, PG);
                (self.place(sz, ty & MEM_TOP_DOWN != 0, large).ok_or(NoMemory)?, sz)
            } else {
                let base = addr / G * G;
                let e = up(addr + size, PG);
                if (base / G..up(e, G) / G).any(|b| self.block_used(b)) {
                    return Err(ConflictingAddresses);
                }
                (base, e - base)
            };
            let commit = ty & MEM_COMMIT != 0;
            if commit {
                let n = sz / PG;
                let before = self.tables((0, 0), (0, 0));
                let need = if large {
                    self.tables((0, 0), (base, base + sz)) - before
                } else {
                    self.tables((base, base + sz), (0, 0)) - before
                };
                // Table pages beyond the allowance are charged with the pages they map (charge.rs).
                if self.charge_after(n, before, need) > self.cap(level) {
                    return Err(CommitmentLimit);
                }
                let runs = sz / L;
                if large && (env.runs < runs || env.available < runs * 512 + need) {
                    return Err(NoMemory);
                }
                if !large && env.available < n + need {
                    return Err(NoMemory);
                }
                self.committed += n;
            }
            self.allocs.push(Al { base, size: sz, aprot: protect, ww: ty & MEM_WRITE_WATCH != 0, large, cache, kind: 0 });
            for va in (base..base + sz).step_by(PG as usize) {
                let i = self.i(va);
                self.pages[i] = if commit {
                    Pg { st: St::Committed, prot, guard, dirty: false, frame: large, value: 0 }
                } else {
                    Pg { st: St::Reserved, ..FREE }
                };
            }
            return Ok(base);
        }
        // Commit.
        let (s, e) = (addr / PG * PG, up(addr + size, PG));
        let a = self.one_alloc(s, e)?;
        if self.allocs[a].kind == 1 {
            return Err(AlreadyCommitted);
        }
        if self.allocs[a].large {
            return Err(InvalidParameter);
        }
        let n = (s..e).step_by(PG as usize).filter(|&va| self.page(va).st != St::Committed).count() as u64;
        let before = self.tables((0, 0), (0, 0));
        let need = self.tables((s, e), (0, 0)) - before;
        if self.charge_after(n, before, need) > self.cap(level) {
            return Err(CommitmentLimit);
        }
        if env.available < n + need {
            return Err(NoMemory);
        }
        self.committed += n;
        for va in (s..e).step_by(PG as usize) {
            let i = self.i(va);
            let p = &mut self.pages[i];
            if p.st != St::Committed {
                *p = Pg { st: St::Committed, prot, guard, dirty: false, frame: false, value: 0 };
            } else {
                p.prot = prot;
                p.guard = guard;
            }
        }
        Ok(s)
    }

    /// The one allocation (not host-owned) holding `[s, e)`.
    fn one_alloc(&self, s: u64, e: u64) -> Result<usize, VmError> {
        self.alloc_of(s)
            .filter(|&a| e <= self.allocs[a].base + self.allocs[a].size && self.allocs[a].kind != 2)
            .ok_or(VmError::ConflictingAddresses)
    }

    /// The loader's image creation (host-abi §9).
    pub fn create_image(&mut self, base: u64, prots: &[u32], host: bool, level: CriticalLevel, env: Env) -> Result<(), VmError> {
        use VmError::*;
        if !base.is_multiple_of(G) || prots.is_empty() || base < self.min {
            return Err(InvalidParameter);
        }
        let size = prots.len() as u64 * PG;
        if base + size > self.end {
            return Err(InvalidParameter);
        }
        let mut parsed = Vec::new();
        for &p in prots {
            match parse(p, false) {
                Some((b, false, 0)) => parsed.push(b),
                _ => return Err(InvalidParameter),
            }
        }
        if (base / G..up(base + size, G) / G).any(|b| self.block_used(b)) {
            return Err(ConflictingAddresses);
        }
        let n = prots.len() as u64;
        let before = self.tables((0, 0), (0, 0));
        let need = self.tables((base, base + size), (0, 0)) - before;
        if self.charge_after(n, before, need) > self.cap(level) {
            return Err(CommitmentLimit);
        }
        if env.available < n + need {
            return Err(NoMemory);
        }
        self.committed += n;
        self.allocs.push(Al { base, size, aprot: PAGE_EXECUTE_WRITECOPY, ww: false, large: false, cache: 0, kind: if host { 2 } else { 1 } });
        for (k, prot) in parsed.into_iter().enumerate() {
            let i = self.i(base + k as u64 * PG);
            self.pages[i] = Pg { st: St::Committed, prot, guard: false, dirty: false, frame: false, value: 0 };
        }
        Ok(())
    }

    fn place(&self, size: u64, top: bool, large: bool) -> Option<u64> {
        let blocks = up(size, G) / G;
        let (lo, hi) = (self.min / G, self.end / G);
        if !large {
            let fits = |b: u64| (b..b + blocks).all(|x| !self.block_used(x));
            let mut cands = (lo..=hi.checked_sub(blocks)?).filter(|&b| b >= lo);
            let b = if top { cands.rev().find(|&b| fits(b)) } else { cands.find(|&b| fits(b)) }?;
            return Some(if top { (b * G + blocks * G - size) / G * G } else { b * G });
        }
        // Maximal runs of free blocks; the first (last) holding blocks + 31.
        let mut runs = vec![];
        let mut b = lo;
        while b < hi {
            if self.block_used(b) {
                b += 1;
                continue;
            }
            let s = b;
            while b < hi && !self.block_used(b) {
                b += 1;
            }
            runs.push((s, b));
        }
        let need = blocks + L / G - 1;
        let mut ok = runs.into_iter().filter(|(s, e)| e - s >= need);
        let (s, e) = if top { ok.next_back()? } else { ok.next()? };
        Some(if top { (e * G - size) / L * L } else { up(s * G, L) })
    }

    pub fn free(&mut self, addr: u64, size: u64, ty: u32) -> Result<(), VmError> {
        use VmError::*;
        if ty != MEM_DECOMMIT && ty != MEM_RELEASE {
            return Err(InvalidParameter);
        }
        if ty == MEM_RELEASE && size != 0 {
            return Err(InvalidParameter);
        }
        if addr > self.end - 1 {
            return Err(InvalidParameter);
        }
        let page = addr / PG * PG;
        let a = self.alloc_of(page).filter(|&a| self.allocs[a].kind != 2).ok_or(NotAllocated)?;
        let al = self.allocs[a];
        if al.kind == 1 {
            return Err(UnableToDeleteSection);
        }
        if ty == MEM_RELEASE {
            if page != al.base {
                return Err(FreeNotAtBase);
            }
            for va in (al.base..al.base + al.size).step_by(PG as usize) {
                let i = self.i(va);
                if self.pages[i].st == St::Committed {
                    self.committed -= 1;
                }
                self.pages[i] = FREE;
            }
            self.allocs.remove(a);
            // The kept tables the release's range touches go if nothing is committed in them.
            for chunk in (al.base >> 21)..=((al.base + al.size - 1) >> 21) {
                let (s, e) = ((chunk << 21).max(self.min), ((chunk + 1) << 21).min(self.end));
                if (s..e).step_by(PG as usize).all(|va| self.pages[self.i(va)].st != St::Committed) {
                    self.kept.remove(&chunk);
                }
            }
            return Ok(());
        }
        let (s, e) = if size == 0 {
            if page != al.base {
                return Err(FreeNotAtBase);
            }
            (al.base, al.base + al.size)
        } else {
            match addr.checked_add(size) {
                Some(e) if up(e, PG) <= al.base + al.size => (page, up(e, PG)),
                _ => return Err(UnableToFree),
            }
        };
        if al.large {
            return Err(InvalidParameter);
        }
        for va in (s..e).step_by(PG as usize) {
            let i = self.i(va);
            if self.pages[i].st == St::Committed {
                self.committed -= 1;
                self.kept.insert(va >> 21);
            }
            self.pages[i] = Pg { st: St::Reserved, ..FREE };
        }
        Ok(())
    }

    pub fn protect(&mut self, addr: u64, size: u64, newp: u32) -> Result<u32, VmError> {
        use VmError::*;
        let Some((prot, guard, _)) = parse(newp, true) else {
            return Err(InvalidProtection);
        };
        if addr > self.end - 1 || size == 0 || addr.checked_add(size).is_none_or(|e| e > self.end) {
            return Err(InvalidParameter);
        }
        let (s, e) = (addr / PG * PG, up(addr + size, PG));
        let a = self.one_alloc(s, e)?;
        let al = self.allocs[a];
        if !al.large && (s..e).step_by(PG as usize).any(|va| self.page(va).st != St::Committed) {
            return Err(NotCommitted);
        }
        if al.large {
            return Err(InvalidParameter);
        }
        let f = self.page(s);
        let old = f.prot | if f.guard { PAGE_GUARD } else { 0 } | al.cache;
        for va in (s..e).step_by(PG as usize) {
            let i = self.i(va);
            self.pages[i].prot = prot;
            self.pages[i].guard = guard;
        }
        Ok(old)
    }

    pub fn query(&self, addr: u64) -> Result<MemoryBasicInformation, VmError> {
        if addr > self.end - 1 {
            return Err(VmError::InvalidParameter);
        }
        let page = addr / PG * PG;
        let Some(a) = (page >= self.min).then(|| self.alloc_of(page)).flatten() else {
            let next = self.allocs.iter().map(|a| a.base).filter(|&b| b > page).min().unwrap_or(self.end);
            return Ok(MemoryBasicInformation {
                base_address: page,
                region_size: next - page,
                state: MEM_FREE,
                protect: PAGE_NOACCESS,
                ..Default::default()
            });
        };
        let al = self.allocs[a];
        let key = |va: u64| {
            let p = self.page(va);
            match p.st {
                St::Committed => (MEM_COMMIT, p.prot | if p.guard { PAGE_GUARD } else { 0 } | al.cache),
                _ => (MEM_RESERVE, 0),
            }
        };
        let k = key(page);
        let mut e = page;
        while e < al.base + al.size && key(e) == k {
            e += PG;
        }
        Ok(MemoryBasicInformation {
            base_address: page,
            allocation_base: al.base,
            allocation_protect: al.aprot,
            partition_id: 0,
            region_size: e - page,
            state: k.0,
            protect: k.1,
            type_: if al.kind == 0 { MEM_PRIVATE } else { MEM_IMAGE },
        })
    }

    /// A guest access to the u64 at `addr` (page aligned); writes store `value`.
    pub fn touch(&mut self, addr: u64, access: Access, value: u64) -> Result<u64, FaultOutcome> {
        let av = Err(FaultOutcome::AccessViolation { access, address: addr });
        if addr < self.min || addr >= self.end {
            return av;
        }
        let Some(a) = self.alloc_of(addr) else {
            return av;
        };
        let i = self.i(addr);
        let p = &mut self.pages[i];
        if p.st != St::Committed {
            return av;
        }
        if p.guard {
            p.guard = false;
            return Err(FaultOutcome::GuardPage { access, address: addr });
        }
        if !can(access, p.prot) {
            return av;
        }
        p.frame = true;
        if access == Access::Write {
            p.value = value;
            if !self.allocs[a].large {
                p.dirty = true;
            }
        }
        Ok(p.value)
    }

    /// The kernel's fault-around after a touch of `page` (`AddressSpace::fault_around`, then
    /// `prefault_shared`): as many pages after it as it has present pages right behind it, in
    /// its page table and allocation, at most `max`; each given a frame, until the first that is
    /// not committed, readable, unguarded and without one.
    pub fn fault_around(&mut self, page: u64, max: u64) {
        let Some(a) = self.alloc_of(page) else { return };
        let al = self.allocs[a];
        if al.large {
            return;
        }
        let table = page & !(0x20_0000 - 1);
        let (lo, end) = (table.max(al.base), (table + 0x20_0000).min(al.base + al.size));
        let present = |p: Pg| p.st == St::Committed && p.frame && p.prot != PAGE_NOACCESS && !p.guard;
        let mut behind = 0;
        while behind < max && page - behind * PG > lo && present(self.page(page - (behind + 1) * PG)) {
            behind += 1;
        }
        for k in 1..=behind {
            let va = page + k * PG;
            if va >= end {
                break;
            }
            let i = self.i(va);
            let p = &mut self.pages[i];
            if p.st != St::Committed || p.guard || p.frame || !can(Access::Read, p.prot) {
                break;
            }
            p.frame = true;
        }
    }

    /// A system-service write of the u64 `value` at `addr` (page aligned).
    pub fn user_write(&mut self, addr: u64, value: u64) -> Result<(), VmError> {
        if addr < self.min || addr.checked_add(8).is_none_or(|e| e > self.end) {
            return Err(VmError::NoAccess);
        }
        let Some(a) = self.alloc_of(addr) else {
            return Err(VmError::NoAccess);
        };
        let large = self.allocs[a].large;
        let i = self.i(addr);
        let p = &mut self.pages[i];
        if p.st != St::Committed {
            return Err(VmError::NoAccess);
        }
        if p.guard {
            p.guard = false;
            return Err(VmError::GuardPage);
        }
        if !can(Access::Write, p.prot) {
            return Err(VmError::NoAccess);
        }
        p.frame = true;
        p.value = value;
        if !large {
            p.dirty = true;
        }
        Ok(())
    }

    fn watched(&self, base: u64, size: u64) -> Result<(u64, u64), VmError> {
        let e = base.checked_add(size).ok_or(VmError::InvalidParameter)?;
        let (s, e) = (base / PG * PG, up(e, PG));
        if s < self.min {
            return Err(VmError::InvalidParameter);
        }
        match self.alloc_of(s) {
            Some(a) if self.allocs[a].ww && e <= self.allocs[a].base + self.allocs[a].size => Ok((s, e)),
            _ => Err(VmError::InvalidParameter),
        }
    }

    pub fn get_write_watch(&mut self, flags: u32, base: u64, size: u64, max: usize) -> Result<Vec<u64>, VmError> {
        if flags > 1 || size == 0 || max == 0 {
            return Err(VmError::InvalidParameter);
        }
        let (s, e) = self.watched(base, size)?;
        let out: Vec<u64> = (s..e).step_by(PG as usize).filter(|&va| self.page(va).dirty).take(max).collect();
        if flags == 1 {
            for &va in &out {
                let i = self.i(va);
                self.pages[i].dirty = false;
            }
        }
        Ok(out)
    }

    pub fn reset_write_watch(&mut self, base: u64, size: u64) -> Result<(), VmError> {
        if size == 0 {
            return Err(VmError::InvalidParameter);
        }
        let (s, e) = self.watched(base, size)?;
        for va in (s..e).step_by(PG as usize) {
            let i = self.i(va);
            self.pages[i].dirty = false;
        }
        Ok(())
    }
}
