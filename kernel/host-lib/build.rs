fn main() {
    // The entry point is CreateMalloc: the kernel puts it in the manager's vtable (slot 3).
    println!("cargo:rustc-link-arg-bins=--entry=host_create_malloc");
    // The vtables (`static`, function pointers relocated at load) sit in .data.rel.ro inside
    // PT_GNU_RELRO, which the kernel's loader maps read-only after relocating (host-abi §10.1:
    // the host library's vtables and code are read-only). lld does this by default for a PIE;
    // say it explicitly so a linker change cannot silently make them writable.
    println!("cargo:rustc-link-arg-bins=-zrelro");
    println!("cargo:rustc-link-arg-bins=-znow");
}
