//! What the runtime committed and reserved: its address space as `VirtualQuery` reports it, one
//! line per allocation, and the layout of the program's linear memory (guard before it, the
//! pages `memory.grow` made accessible and committed, the rest of its reservation, the guard
//! after it).

use alloc::string::String;
use alloc::vec::Vec;

use guest_abi::consts::*;

use crate::out;
use crate::sys::{host, size};

/// One allocation: base, extent, committed bytes, type, protections seen on committed pages.
struct Allocation {
    base: usize,
    end: usize,
    committed: usize,
    image: bool,
    protections: Vec<u32>,
}

fn allocations() -> Vec<Allocation> {
    let h = host();
    let s = h.services();
    let (mut at, max) = (s.min_application_address as usize, s.max_application_address as usize);
    let mut list: Vec<Allocation> = Vec::new();
    while at < max {
        let Ok(q) = h.virtual_query(at) else { break };
        let (base, end) = (q.base_address as usize, (q.base_address + q.region_size) as usize);
        if q.state != MEM_FREE {
            if list.last().is_none_or(|a| a.base != q.allocation_base as usize) {
                list.push(Allocation { base: q.allocation_base as usize, end, committed: 0, image: q.type_ == MEM_IMAGE, protections: Vec::new() });
            }
            let a = list.last_mut().expect("pushed above");
            a.end = end;
            if q.state == MEM_COMMIT {
                a.committed += end - base;
                if !a.protections.contains(&q.protect) {
                    a.protections.push(q.protect);
                }
            }
        }
        if end <= at {
            break;
        }
        at = end;
    }
    list
}

fn protection_name(p: u32) -> &'static str {
    match p & 0xFF {
        PAGE_NOACCESS => "NA",
        PAGE_READONLY => "R",
        PAGE_READWRITE => "RW",
        PAGE_EXECUTE_READ => "RX",
        PAGE_EXECUTE_READWRITE => "RWX",
        PAGE_EXECUTE => "X",
        _ => "?",
    }
}

/// The linear memory to describe: where its accessible bytes start and how many there are.
pub struct LinearMemory {
    pub data: usize,
    pub accessible: usize,
}

/// Prints the picture; `heap` is an address in the runtime's `IHostMalloc` heap, `code` one in
/// the module's compiled code, `stack` one on the main stack.
pub fn print(memory: Option<&LinearMemory>, heap: usize, code: usize, stack: usize) {
    let list = allocations();
    let (wasmtime, images) = crate::platform::live_allocations();
    let gc_heap = (crate::engine_config::GC_HEAP_RESERVATION + crate::engine_config::GC_HEAP_GUARD) as usize;
    out!("address space (VirtualQuery over the user range): {} allocations\n", list.len());
    out!("  {:<18} {:>10} {:>10}  {:<7} {:<10} what\n", "base", "reserved", "committed", "type", "protect");
    let (mut reserved, mut committed) = (0usize, 0usize);
    for a in &list {
        let inside = |p: usize| (a.base..a.end).contains(&p);
        let what = if memory.is_some_and(|m| inside(m.data)) {
            "linear memory (Wasmtime mapping: guard, reservation, guard)"
        } else if inside(code) {
            "compiled module (Wasmtime mapping: code read-execute, data read-only)"
        } else if inside(heap) {
            "IHostMalloc heap (Wasmtime's own data)"
        } else if inside(stack) {
            "main stack (committed ahead for wasm's stack)"
        } else if images.iter().any(|&(b, _)| b == a.base) {
            "memory image (a linear memory's initial data, read-only copy)"
        } else if wasmtime.iter().any(|&(b, s)| b == a.base && s >= gc_heap) {
            "WasmGC heap (Wasmtime mapping: reservation and guard)"
        } else if wasmtime.iter().any(|&(b, _)| b == a.base) {
            "Wasmtime mapping"
        } else if a.image && a.base >= 0x7fff_0000_0000 {
            "host pages / host library"
        } else if a.image {
            "wasm-runtime image + appended module"
        } else {
            "private"
        };
        let mut protect = String::new();
        for (i, p) in a.protections.iter().enumerate() {
            if i > 0 {
                protect.push('/');
            }
            protect.push_str(protection_name(*p));
            if p & PAGE_GUARD != 0 {
                protect.push_str("+G");
            }
        }
        if protect.is_empty() {
            protect.push('-');
        }
        out!(
            "  {:#018x} {:>10} {:>10}  {:<7} {:<10} {what}\n",
            a.base,
            size((a.end - a.base) as u64),
            size(a.committed as u64),
            if a.image { "image" } else { "private" },
            protect
        );
        reserved += a.end - a.base;
        committed += a.committed;
    }
    out!("  total: {} reserved, {} committed\n", size(reserved as u64), size(committed as u64));
    if let Some(m) = memory
        && let Some(a) = list.iter().find(|a| (a.base..a.end).contains(&m.data))
    {
        let reservation = crate::engine_config::MEMORY_RESERVATION as usize;
        let after = (a.end - m.data).saturating_sub(reservation);
        out!(
            "linear memory at {:#x}: guard before {}, accessible and committed {} ({} wasm pages), reserved for memory.grow {}, guard after {}\n",
            m.data,
            size((m.data - a.base) as u64),
            size(m.accessible as u64),
            m.accessible / 65536,
            size(reservation.saturating_sub(m.accessible) as u64),
            size(after as u64)
        );
    }
}
