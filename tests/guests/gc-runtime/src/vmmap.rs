//! A VMMap-like picture of the guest's address space: `VirtualQuery` from the lowest to the
//! highest application address, one row per allocation (`AllocationBase`).

use alloc::string::String;
use alloc::vec::Vec;

use guest_abi::consts::*;

use crate::out;
use crate::sys::{Size, host};

const BAR: usize = 40;

struct Region {
    base: usize,
    size: usize,
    state: u32,
    protect: u32,
}

/// A known allocation: (an address inside it, what it is).
pub type Label<'a> = (usize, &'a str);

fn protection(p: u32) -> &'static str {
    match p & 0xFF {
        PAGE_NOACCESS => "NA",
        PAGE_READONLY => "R",
        PAGE_READWRITE => "RW",
        PAGE_EXECUTE => "X",
        PAGE_EXECUTE_READ => "RX",
        PAGE_EXECUTE_READWRITE => "RWX",
        0x08 => "WC",
        0x80 => "RWXC",
        _ => "?",
    }
}

/// The bar over [base, base + size): each cell covers size/BAR bytes.
fn bar(regions: &[Region], base: usize, size: usize) -> String {
    let mut bar = String::with_capacity(BAR + 2);
    bar.push('[');
    for i in 0..BAR {
        let (c0, c1) = (base + size * i / BAR, base + size * (i + 1) / BAR);
        let c1 = c1.max(c0 + 1);
        let (mut com, mut guard) = (0usize, false);
        for r in regions {
            let (a, b) = (r.base.max(c0), (r.base + r.size).min(c1));
            if a < b && r.state == MEM_COMMIT {
                com += b - a;
                guard |= r.protect & PAGE_GUARD != 0;
            }
        }
        bar.push(if guard {
            'g'
        } else if com >= c1 - c0 {
            '#'
        } else if com > 0 {
            '+'
        } else {
            '.'
        });
    }
    bar.push(']');
    bar
}

/// Prints the picture; returns (allocations, reserved bytes, committed bytes).
pub fn print(labels: &[Label<'_>]) -> (usize, u64, u64) {
    let h = host();
    let s = h.services();
    let (min, max) = (s.min_application_address as usize, s.max_application_address as usize);
    // Collect the allocations.
    let mut allocations: Vec<(usize, u32, u32, Vec<Region>)> = Vec::new();
    let mut addr = min;
    while addr < max {
        let Ok(q) = h.virtual_query(addr) else { break };
        let next = (q.base_address + q.region_size) as usize;
        if q.state != MEM_FREE {
            let region = Region { base: q.base_address as usize, size: q.region_size as usize, state: q.state, protect: q.protect };
            match allocations.last_mut() {
                Some(last) if last.0 == q.allocation_base as usize => last.3.push(region),
                _ => allocations.push((q.allocation_base as usize, q.type_, q.allocation_protect, alloc::vec![region])),
            }
        }
        if next <= addr {
            break;
        }
        addr = next;
    }
    out!("address space (VirtualQuery from {min:#x} to {max:#x}): {} allocations\n", allocations.len());
    out!("  bar: # committed, + partly committed, g guard page, . reserved; protection: of most committed bytes\n");
    out!("  {:<18} {:>9}  {:<7} {:>9}  {:<width$}  {:<7} {}\n", "base", "size", "type", "committed", "pages", "protect", "what", width = BAR + 2);
    let (mut total_reserved, mut total_committed) = (0u64, 0u64);
    for (base, ty, _, regions) in &allocations {
        let end = regions.last().map_or(*base, |r| r.base + r.size);
        let size = end - base;
        let committed: usize = regions.iter().filter(|r| r.state == MEM_COMMIT).map(|r| r.size).sum();
        total_reserved += size as u64;
        total_committed += committed as u64;
        let cells = bar(regions, *base, size);
        // Dominant protection by committed bytes.
        let mut by_prot: Vec<(u32, usize)> = Vec::new();
        for r in regions.iter().filter(|r| r.state == MEM_COMMIT) {
            match by_prot.iter_mut().find(|(p, _)| *p == r.protect & !PAGE_GUARD) {
                Some(e) => e.1 += r.size,
                None => by_prot.push((r.protect & !PAGE_GUARD, r.size)),
            }
        }
        by_prot.sort_by_key(|e| core::cmp::Reverse(e.1));
        let mut prot = String::new();
        match by_prot.first() {
            Some((p, _)) => prot.push_str(protection(*p)),
            None => prot.push('-'),
        }
        if by_prot.len() > 1 {
            prot.push('*');
        }
        if regions.iter().any(|r| r.state == MEM_COMMIT && r.protect & PAGE_GUARD != 0) {
            prot.push_str("+G");
        }
        let what = labels.iter().find(|(a, _)| (*base..end).contains(a)).map_or(
            if *ty == MEM_IMAGE { "image (host library: IHostMalloc code)" } else { "private" },
            |(_, l)| *l,
        );
        let ty = if *ty == MEM_IMAGE { "image" } else { "private" };
        out!(
            "  {:#018x} {:>9}  {:<7} {:>9}  {}  {:<7} {}\n",
            base,
            Size(size as u64),
            ty,
            Size(committed as u64),
            cells,
            prot,
            what
        );
        // A large reservation with all its commit near the start (a GC heap): zoom in on it.
        let top = regions.iter().filter(|r| r.state == MEM_COMMIT).map(|r| r.base + r.size).max().unwrap_or(*base);
        if top > *base && top - base <= size / BAR && size >= 1 << 30 {
            let zoom = ((top - base + (1 << 20) - 1) & !((1 << 20) - 1)).max(BAR * 4096);
            out!("  {:>48}  {}  first {} of it\n", "", bar(regions, *base, zoom), Size(zoom as u64));
        }
    }
    out!(
        "  total: {} allocations, {} reserved, {} committed (* = mixed protections)\n",
        allocations.len(),
        Size(total_reserved),
        Size(total_committed)
    );
    (allocations.len(), total_reserved, total_committed)
}
