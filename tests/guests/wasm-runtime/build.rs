fn main() {
    // A guest's entry point is `guest_main` (host-abi §1).
    println!("cargo:rustc-link-arg-bins=--entry=guest_main");
}
