//! Machine-code stubs written at run time into a `MALLOC_EXECUTABLE` `IHostMalloc` heap, as a JIT
//! writes its helpers: the nursery's bump-allocation helper (used for every small allocation),
//! a checksum loop and a recursive tree-node counter (used to check the workloads' results).

use guest_abi::{CriticalLevel, MALLOC_EXECUTABLE, Malloc};

use crate::gc::{AllocContext, BumpFn};
use crate::sys::host;

/// `u64 checksum(const u64 *p, u64 n)`: h = rol(h, 5) ^ p[i] over the words.
const CHECKSUM: &[u8] = &[
    0x31, 0xc0, // xor eax, eax
    0x48, 0x85, 0xf6, // test rsi, rsi
    0x74, 0x10, // jz done
    0x48, 0xc1, 0xc0, 0x05, // loop: rol rax, 5
    0x48, 0x33, 0x07, // xor rax, [rdi]
    0x48, 0x83, 0xc7, 0x08, // add rdi, 8
    0x48, 0xff, 0xce, // dec rsi
    0x75, 0xf0, // jnz loop
    0xc3, // done: ret
];

/// `usize bump(AllocContext *c, usize size)`: the old cursor if cursor + size <= limit (and
/// the cursor advances), else 0.
const BUMP: &[u8] = &[
    0x48, 0x8b, 0x07, // mov rax, [rdi]
    0x48, 0x8d, 0x14, 0x30, // lea rdx, [rax + rsi]
    0x48, 0x3b, 0x57, 0x08, // cmp rdx, [rdi + 8]
    0x77, 0x04, // ja fail
    0x48, 0x89, 0x17, // mov [rdi], rdx
    0xc3, // ret
    0x31, 0xc0, // fail: xor eax, eax
    0xc3, // ret
];

/// `u64 count_nodes(node *n)`: 0 for null, else 1 + count(n->left) + count(n->right), with left
/// and right the node's first two reference fields (words 1 and 2).
const COUNT_NODES: &[u8] = &[
    0x48, 0x85, 0xff, // test rdi, rdi
    0x74, 0x24, // jz zero
    0x53, // push rbx
    0x41, 0x54, // push r12
    0x48, 0x89, 0xfb, // mov rbx, rdi
    0x48, 0x8b, 0x7b, 0x08, // mov rdi, [rbx + 8]
    0xe8, 0xec, 0xff, 0xff, 0xff, // call count_nodes (rel32 -0x14)
    0x49, 0x89, 0xc4, // mov r12, rax
    0x48, 0x8b, 0x7b, 0x10, // mov rdi, [rbx + 16]
    0xe8, 0xe0, 0xff, 0xff, 0xff, // call count_nodes (rel32 -0x20)
    0x4a, 0x8d, 0x44, 0x20, 0x01, // lea rax, [rax + r12 + 1]
    0x41, 0x5c, // pop r12
    0x5b, // pop rbx
    0xc3, // ret
    0x31, 0xc0, // zero: xor eax, eax
    0xc3, // ret
];

/// The stubs' entry points (to share with every thread).
#[derive(Clone, Copy)]
pub struct StubFns {
    pub checksum: extern "C" fn(*const u64, u64) -> u64,
    pub count_nodes: extern "C" fn(usize) -> u64,
}

/// The stubs, in an executable block of their own heap.
pub struct Stubs {
    _heap: Malloc,
    pub block: usize,
    pub checksum: extern "C" fn(*const u64, u64) -> u64,
    pub bump: BumpFn,
    pub count_nodes: extern "C" fn(usize) -> u64,
}

impl Stubs {
    pub fn new() -> Result<Stubs, guest_abi::HResult> {
        let heap = host().create_malloc(MALLOC_EXECUTABLE)?;
        let total = 0x40 * 3;
        let block = heap.alloc(total, CriticalLevel::Task)? as usize;
        let put = |off: usize, code: &[u8]| {
            // SAFETY: block..block+total is a writable (PAGE_EXECUTE_READWRITE) block of ours.
            unsafe {
                core::ptr::write_bytes((block + off) as *mut u8, 0xcc, 0x40);
                core::ptr::copy_nonoverlapping(code.as_ptr(), (block + off) as *mut u8, code.len());
            }
        };
        put(0, CHECKSUM);
        put(0x40, BUMP);
        put(0x80, COUNT_NODES);
        // SAFETY: each offset holds a complete function with the signature given above.
        unsafe {
            Ok(Stubs {
                _heap: heap,
                block,
                checksum: core::mem::transmute::<usize, extern "C" fn(*const u64, u64) -> u64>(block),
                bump: core::mem::transmute::<usize, BumpFn>(block + 0x40),
                count_nodes: core::mem::transmute::<usize, extern "C" fn(usize) -> u64>(block + 0x80),
            })
        }
    }
}

impl Stubs {
    pub fn fns(&self) -> StubFns {
        StubFns { checksum: self.checksum, count_nodes: self.count_nodes }
    }
}

impl Drop for Stubs {
    fn drop(&mut self) {
        // Free the block before the heap's last reference goes (no leak report).
        // SAFETY: the block is this heap's, held by these stubs alone, and they are being dropped:
        // nothing runs their code or reads the block afterwards.
        let _ = unsafe { self._heap.free(self.block as *mut u8) };
    }
}

/// The same checksum in Rust (to check the stub).
pub fn checksum_rust(words: &[u64]) -> u64 {
    words.iter().fold(0u64, |h, &w| h.rotate_left(5) ^ w)
}

/// Checks the stubs against Rust: (name, got, expected) for each.
pub fn self_test(s: &Stubs) -> [(&'static str, u64, u64); 4] {
    let data: alloc::vec::Vec<u64> = (0..1000u64).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i << 7)).collect();
    let sum = (s.checksum)(data.as_ptr(), data.len() as u64);
    let mut ctx = AllocContext { cursor: 0x1000, limit: 0x1100 };
    let a = (s.bump)(&mut ctx, 0x80);
    let b = (s.bump)(&mut ctx, 0x81);
    let after = ctx.cursor;
    // A three-node tree in a plain array: node = [header, left, right].
    let nodes = [[0usize; 3]; 3];
    let mut nodes = nodes;
    let n1 = &nodes[1] as *const _ as usize;
    let n2 = &nodes[2] as *const _ as usize;
    nodes[0][1] = n1;
    nodes[0][2] = n2;
    let count = (s.count_nodes)(&nodes[0] as *const _ as usize);
    [
        ("executable stub: checksum of 1000 words", sum, checksum_rust(&data)),
        ("executable stub: bump allocation", a as u64, 0x1000),
        ("executable stub: bump refuses what does not fit", (b as u64) << 32 | after as u64, 0x1080),
        ("executable stub: recursive node count", count, 3),
    ]
}
