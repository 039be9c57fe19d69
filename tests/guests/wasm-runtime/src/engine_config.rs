//! The Wasmtime settings shared by the guest and the host precompiler (`tools/wasm-precompile`
//! compiles this file in with `#[path]`): a module precompiled with other settings is refused by
//! `Module::deserialize`, so there is exactly one definition of them.

/// Bytes reserved for each linear memory (its address space; only what `memory.grow` makes
/// accessible is committed). 4 GiB: every 32-bit address lands in the reservation or its guard.
pub const MEMORY_RESERVATION: u64 = 4 << 30;
/// The inaccessible guard region after each linear memory (bounds checks are elided for offsets
/// that land in it; an access there is an access violation that becomes a wasm trap).
pub const MEMORY_GUARD: u64 = 32 << 20;
/// The WasmGC heap's reservation and guard (the collector's heap is a linear memory of its own).
pub const GC_HEAP_RESERVATION: u64 = 64 << 20;
pub const GC_HEAP_GUARD: u64 = 32 << 20;
/// Wasm stack before `call stack exhausted` (the guest's main stack is 1 MiB; the runtime's own
/// frames need the rest).
pub const MAX_WASM_STACK: usize = 512 << 10;

/// CPU features the code is compiled for (used by the precompiler): those of QEMU's `-cpu max` (and any x86-64 CPU of the
/// last decade). The guest checks them with `cpuid` before it loads a module.
#[allow(dead_code)]
pub const CRANELIFT_FLAGS: &[&str] = &["has_sse3", "has_ssse3", "has_sse41", "has_sse42", "has_popcnt"];

/// Applies the settings that compiled code depends on.
pub fn configure(config: &mut wasmtime::Config) {
    config
        .signals_based_traps(true)
        .memory_reservation(MEMORY_RESERVATION)
        .memory_guard_size(MEMORY_GUARD)
        .memory_reservation_for_growth(0)
        .memory_may_move(false)
        .guard_before_linear_memory(true)
        .gc_heap_reservation(GC_HEAP_RESERVATION)
        .gc_heap_guard_size(GC_HEAP_GUARD)
        .gc_heap_reservation_for_growth(0)
        .gc_heap_may_move(false)
        .wasm_gc(true)
        .wasm_function_references(true)
        // Relaxed SIMD's fused multiply-add would be a float libcall without FMA (the guest's
        // soft-float ABI cannot take one; see main.rs).
        .wasm_relaxed_simd(false)
        .collector(wasmtime::Collector::DeferredReferenceCounting)
        .max_wasm_stack(MAX_WASM_STACK);
}
