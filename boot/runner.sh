#!/usr/bin/env bash
# Cargo runner for x86_64-unknown-none binaries: hands the kernel file to the `boot` program.
# `boot` is built into its own target directory, so this works while the outer cargo holds the
# lock on the main one.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cargo build --quiet --manifest-path "$root/Cargo.toml" -p boot 
exec "$root/target/debug/boot" "$@"
