#!/usr/bin/env bash
# Runs every test of the project, host and QEMU, and prints one summary line `N passed, M failed`.
# Exit status: 0 only if everything passed.
#
#   tests/run-all.sh            host unit/property tests, then every QEMU test image under BIOS and UEFI
#   FIRMWARE=bios tests/run-all.sh     only BIOS boots (faster while developing)
#   VMK_TIMEOUT=300 tests/run-all.sh   per-image timeout in seconds (default 120)
#
# On a fresh machine it installs what it needs first: the pinned toolchain (rust-toolchain.toml)
# and QEMU + OVMF from Debian.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
source "$root/tests/setup.sh"
ensure_toolchain
ensure_qemu

log="$(mktemp -d)"
trap 'rm -rf "$log"' EXIT
host_passed=0; host_failed=0; status=0

echo "==> host tests (cargo test: the host crates boot, address-space, guest-abi, guest-loader, host-abi, host-heap and wasm-payload, the workspace's default members)"
cargo test 2>&1 | tee "$log/host.txt"
host_rc=${PIPESTATUS[0]}
while read -r p f; do
  host_passed=$((host_passed + p)); host_failed=$((host_failed + f))
done < <(sed -nE 's/^test result: [A-Za-z]+\. ([0-9]+) passed; ([0-9]+) failed.*/\1 \2/p' "$log/host.txt")
if [ "$host_rc" -ne 0 ] && [ "$host_failed" -eq 0 ]; then
  echo "host tests: cargo exited with $host_rc (build failure?)"; host_failed=1
fi
echo "host tests: $host_passed passed, $host_failed failed"

echo "==> lints (cargo clippy: host crates, the kernel, the guest crates and the QEMU test images)"
# The workspace denies undocumented unsafe blocks and unsafe fns without a Safety section.
if cargo clippy --quiet -p boot -p address-space -p guest-loader -p host-abi -p host-heap -p wasm-payload --all-targets \
  && cargo clippy --quiet -p kernel -p host-lib -p guest-abi -p host-abi -p guest-sample-rust -p gc-runtime -p wasm-runtime -p wasm-bundle --target x86_64-unknown-none \
  && cargo clippy --quiet -p wasm-precompile \
  && cargo clippy --quiet -p qemu-tests --tests --target x86_64-unknown-none; then
  echo "test clippy ... ok"; host_passed=$((host_passed + 1))
else
  echo "test clippy ... FAILED"; host_failed=$((host_failed + 1))
fi

echo "==> host benchmark of the address-space crate (figures only; targets are read, never asserted)"
if cargo bench --quiet -p address-space --bench host --bench frames 2>&1 | tee "$log/bench.txt" | grep -v '^$'; [ "${PIPESTATUS[0]}" -eq 0 ]; then
  echo "test host-benchmarks-run ... ok"; host_passed=$((host_passed + 1))
else
  echo "test host-benchmarks-run ... FAILED"; host_failed=$((host_failed + 1))
fi

echo "==> tests/bench/report.py self-test (the benchmark report's parsing and ratios; no QEMU)"
if ! command -v python3 >/dev/null 2>&1; then
  echo "test bench-report-py ... skipped (no python3; counted neither passed nor failed)"
elif python3 tests/bench/test_report.py > "$log/report-py.txt" 2>&1; then
  echo "test bench-report-py ... ok"; host_passed=$((host_passed + 1))
else
  cat "$log/report-py.txt"; echo "test bench-report-py ... FAILED"; host_failed=$((host_failed + 1))
fi

echo "==> the address-space crate packages for crates.io (cargo package: builds it, and host-abi, from their tarballs)"
if cargo package --quiet -p host-abi -p address-space --allow-dirty > "$log/package.txt" 2>&1; then
  echo "test cargo-package-address-space ... ok"; host_passed=$((host_passed + 1))
else
  cat "$log/package.txt"; echo "test cargo-package-address-space ... FAILED"; host_failed=$((host_failed + 1))
fi

echo "==> the reusable crates outside the workspace: stable rust-version, a guest project of its own"
for check in stable guest; do
  if "$root/tests/outside-workspace.sh" "$check"; then host_passed=$((host_passed + 1)); else host_failed=$((host_failed + 1)); fi
done

echo "==> QEMU test images"
qemu_passed=0; qemu_failed=0
if cargo build -p boot \
  && cargo test -p qemu-tests --target x86_64-unknown-none --no-run --message-format=json > "$log/build.json" 2> "$log/build.err"; then
  # Only the test targets of qemu-tests are kernel images (artifact dependencies, such as the
  # bundled Rust guest, are executables too).
  mapfile -t images < <(grep '"kind":\["test"\]' "$log/build.json" | grep -o '"executable":"[^"]*"' \
    | sed 's/"executable":"\(.*\)"/\1/' | sort)
  if [ "${#images[@]}" -eq 0 ]; then
    echo "no QEMU test images were built"; qemu_failed=1
  else
    "$root/target/debug/boot" suite --quiet --firmware "${FIRMWARE:-both}" "${images[@]}" | tee "$log/qemu.txt"
    read -r qemu_passed qemu_failed < <(tail -n 1 "$log/qemu.txt" | sed -nE 's/^([0-9]+) passed, ([0-9]+) failed$/\1 \2/p')
    qemu_passed=${qemu_passed:-0}; qemu_failed=${qemu_failed:-1}
  fi
else
  cat "$log/build.err"; echo "building the QEMU test images failed"; qemu_failed=1
fi

echo
echo "host: $host_passed passed, $host_failed failed; qemu: $qemu_passed passed, $qemu_failed failed"
passed=$((host_passed + qemu_passed)); failed=$((host_failed + qemu_failed))
[ "$failed" -eq 0 ] || status=1
echo "$passed passed, $failed failed"
exit $status
