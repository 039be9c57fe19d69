fn main() {
    // The entry point is CreateMalloc: the kernel puts it in the manager's vtable (slot 3).
    println!("cargo:rustc-link-arg-bins=--entry=host_create_malloc");
}
