#!/usr/bin/env bash
# The reusable crates as a user outside this repository meets them (run by tests/run-all.sh):
#
#   tests/outside-workspace.sh stable   address-space, host-abi and guest-abi build with the stable
#                                       toolchain their `rust-version` names (1.95.0), as path
#                                       dependencies of a crate in a temporary directory
#   tests/outside-workspace.sh guest    a guest project of its own in a temporary directory, with
#                                       `guest-abi = { path = ... }` and no unstable cargo flags,
#                                       builds for x86_64-unknown-none (with that stable toolchain)
#
# Prints `test NAME ... ok|FAILED` and exits non-zero on failure, with cargo's output.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
stable=1.95.0
# Must match `rust-version` in the crates' manifests.
for crate in address-space host-abi guest-abi; do
  declared="$(sed -nE 's/^rust-version = "([0-9.]+)"/\1/p' "$root/kernel/$crate/Cargo.toml")"
  if [ "${stable%.0}" != "$declared" ]; then
    echo "kernel/$crate/Cargo.toml declares rust-version \"$declared\", this script checks $stable"
    echo "test rust-version-$crate ... FAILED"; exit 1
  fi
done

if ! rustup toolchain install "$stable" --profile minimal --target x86_64-unknown-none >/dev/null 2>&1; then
  echo "installing the stable toolchain $stable failed; retrying verbosely" >&2
  rustup toolchain install "$stable" --profile minimal --target x86_64-unknown-none || {
    echo "test stable-$stable-toolchain ... FAILED"; exit 1; }
fi

dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
# Outside the repository: no rust-toolchain.toml, no .cargo/config.toml (bindeps), no workspace.
cd "$dir"
# No lock file: a new user's project has none (and with a copy of the repository's, cargo loads
# path dependencies differently and would not show the problem this checks).

# Cargo.toml of a new package named $1 (its dependencies follow).
manifest() {
  mkdir src
  printf '[package]\nname = "%s"\nversion = "0.1.0"\nedition = "2024"\n\n[dependencies]\n' "$1" > Cargo.toml
}

case "${1:-}" in
  stable)
    name="stable-$stable-builds-the-reusable-crates"
    manifest uses-the-crates
    cat >> Cargo.toml <<EOF
address-space = { path = "$root/kernel/address-space" }
host-abi = { path = "$root/kernel/host-abi" }
guest-abi = { path = "$root/kernel/guest-abi", default-features = false }
EOF
    cat > src/lib.rs <<'EOF'
#![no_std]
pub use address_space::AddressSpace;
pub const COMMIT: u32 = address_space::win32::MEM_COMMIT | guest_abi::consts::MEM_RESERVE;
EOF
    cmd=(cargo "+$stable" build)
    ;;
  guest)
    name="guest-crate-outside-the-workspace"
    manifest my-guest
    cat >> Cargo.toml <<EOF
guest-abi = { path = "$root/kernel/guest-abi" }

[profile.dev]
panic = "abort"
EOF
    cat > build.rs <<'EOF'
fn main() {
    println!("cargo:rustc-link-arg-bins=--entry=guest_main");
}
EOF
    cat > src/main.rs <<'EOF'
#![no_std]
#![no_main]
use guest_abi::consts::{MEM_COMMIT, MEM_RELEASE, MEM_RESERVE, PAGE_READWRITE};

guest_abi::guest_entry!(main);

fn main(host: &guest_abi::Host) -> i32 {
    host.print("hello from my own guest\n");
    match host.allocate(0x10000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, guest_abi::CriticalLevel::Task) {
        // SAFETY: the allocation just made, which nothing refers to.
        Ok(base) => unsafe { host.virtual_free(base, 0, MEM_RELEASE) }.map_or(1, |()| 0),
        Err(_) => 1,
    }
}
EOF
    cmd=(cargo "+$stable" build --target x86_64-unknown-none)
    ;;
  *)
    echo "usage: $0 stable|guest" >&2; exit 2 ;;
esac

if "${cmd[@]}" > "$dir/out.txt" 2>&1 && { [ "$1" != guest ] || [ -s target/x86_64-unknown-none/debug/my-guest ]; }; then
  echo "test $name ... ok"
else
  cat "$dir/out.txt"; echo "test $name ... FAILED"; exit 1
fi
