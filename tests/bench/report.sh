#!/usr/bin/env bash
# Runs every benchmark of the virtual-memory workloads and writes one report:
#   (a) the peer program ../shared/peers/vmbench.c natively (cc -O2: Linux mmap/mprotect/munmap),
#   (b) the same program under Wine (x86_64-w64-mingw32-gcc + wine64: VirtualAlloc...), if installed,
#   (c) the host benchmarks of the address-space crate (cargo bench --bench host / --bench frames),
#   (d) the in-kernel benchmark image (./run-qemu.sh --bench) under TCG, and under KVM with --kvm,
# then tests/bench/report.py turns the raw outputs (tests/bench/results/raw/) into
# tests/bench/results/report.md (tables) and tests/bench/results/chart.svg.
#
# A part that cannot run is written as "not available: <why>" and shown so in the report; no figure
# is ever made up. Timings are printed, never asserted.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"

usage() {
  cat <<'USAGE'
usage: tests/bench/report.sh [--kvm] [--install-peers] [--skip-host] [--skip-kernel]

  --kvm            also boot the benchmark image under KVM (QEMU takes about two minutes to start)
  --install-peers  apt-get install wine64 and gcc-mingw-w64-x86-64 if they are missing
  --skip-host      do not run the cargo host benchmarks (reported as not run)
  --skip-kernel    do not boot the benchmark image (reported as not run)
  -h, --help       this text

Environment: VMBENCH_C (peer source; default ../shared/peers/vmbench.c next to the repository),
CARGO_TARGET_DIR (honoured by cargo and run-qemu.sh), KVM_TIMEOUT (seconds for the KVM boot,
default 420: QEMU needs about two minutes to start under KVM here, and a KVM internal error
leaves QEMU paused until the timeout).
USAGE
}

kvm=0; install=0; host=1; kernel=1
while [ $# -gt 0 ]; do
  case "$1" in
    --kvm) kvm=1 ;;
    --install-peers) install=1 ;;
    --skip-host) host=0 ;;
    --skip-kernel) kernel=0 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

out="$here/results"
raw="$out/raw"
mkdir -p "$raw"
rm -f "$raw"/*.txt
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
peer_src="${VMBENCH_C:-$root/../shared/peers/vmbench.c}"
step() { echo "==> $*" >&2; }

# --- where it runs ---------------------------------------------------------------------------
{
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "commit: $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$root" diff --quiet HEAD -- . ':!tests/bench/results' 2>/dev/null || echo ' (with uncommitted changes)')"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
  echo "cores: $(nproc)"
  if grep -qw hypervisor /proc/cpuinfo; then echo "machine: a virtual machine (CPUID hypervisor bit set)"; else echo "machine: bare metal"; fi
  echo "os: $(uname -sr)"
  echo "load at start: $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15-minute load averages; other work on the machine slows every column)"
  echo "qemu: $(qemu-system-x86_64 --version 2>/dev/null | head -1 || echo not installed)"
  echo "rustc: $(cd "$root" && rustc --version 2>/dev/null || echo unknown)"
  echo "cc: $(cc --version 2>/dev/null | head -1 || echo not installed)"
} > "$raw/env.txt"

# --- (a) the peer natively ---------------------------------------------------------------------
step "peer program, native (cc -O2)"
if [ ! -f "$peer_src" ]; then
  echo "not available: peer source $peer_src not found" > "$raw/peer-linux.txt"
elif ! cc -O2 -o "$work/vmbench-linux" "$peer_src" 2> "$work/cc.err"; then
  echo "not available: cc failed: $(head -3 "$work/cc.err" | tr '\n' ' ')" > "$raw/peer-linux.txt"
else
  "$work/vmbench-linux" > "$raw/peer-linux.txt" || echo "not available: the native peer exited with $?" > "$raw/peer-linux.txt"
fi

# --- (b) the peer under Wine -------------------------------------------------------------------
step "peer program, Wine"
find_wine() {
  command -v wine64 2>/dev/null && return 0
  [ -x /usr/lib/wine/wine64 ] && { echo /usr/lib/wine/wine64; return 0; }
  return 1
}
if [ "$install" = 1 ] && { ! find_wine >/dev/null || ! command -v x86_64-w64-mingw32-gcc >/dev/null; }; then
  step "installing wine64 and gcc-mingw-w64-x86-64 (apt-get)"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq wine64 gcc-mingw-w64-x86-64; } \
    > "$work/apt.log" 2>&1 || echo "apt-get install failed: $(tail -2 "$work/apt.log" | tr '\n' ' ')" > "$work/apt.err"
fi
if [ ! -f "$peer_src" ]; then
  echo "not available: peer source $peer_src not found" > "$raw/peer-wine.txt"
elif ! wine="$(find_wine)"; then
  echo "not available: wine64 is not installed$( [ -f "$work/apt.err" ] && echo " ($(cat "$work/apt.err"))" || echo " (run with --install-peers)")" > "$raw/peer-wine.txt"
elif ! command -v x86_64-w64-mingw32-gcc >/dev/null; then
  echo "not available: x86_64-w64-mingw32-gcc is not installed (run with --install-peers)" > "$raw/peer-wine.txt"
elif ! x86_64-w64-mingw32-gcc -O2 -o "$work/vmbench.exe" "$peer_src" 2> "$work/mingw.err"; then
  echo "not available: x86_64-w64-mingw32-gcc failed: $(head -3 "$work/mingw.err" | tr '\n' ' ')" > "$raw/peer-wine.txt"
else
  # A fresh prefix each time (created in a few seconds), so no state is carried between runs.
  if ! WINEPREFIX="$work/wineprefix" WINEDEBUG=-all timeout 600 "$wine" "$work/vmbench.exe" > "$work/wine.out" 2> "$work/wine.err"; then
    echo "not available: wine64 vmbench.exe failed: $(tail -2 "$work/wine.err" | tr '\n' ' ')" > "$raw/peer-wine.txt"
  else
    tr -d '\r' < "$work/wine.out" > "$raw/peer-wine.txt"
    echo "wine: $("$wine" --version 2>/dev/null || echo unknown)" >> "$raw/env.txt"
  fi
fi

# --- (c) the host benchmarks of the address-space crate -----------------------------------------
cd "$root"
for b in host frames; do
  step "cargo bench -p address-space --bench $b"
  if [ "$host" = 0 ]; then
    echo "not available: not run (--skip-host)" > "$raw/host-$b.txt"
  elif [ ! -f "kernel/address-space/benches/$b.rs" ] || ! grep -q "name = \"$b\"" kernel/address-space/Cargo.toml; then
    echo "not available: the bench target '$b' does not exist in this tree" > "$raw/host-$b.txt"
  elif ! cargo bench --quiet -p address-space --bench "$b" > "$work/$b.out" 2> "$work/$b.err"; then
    echo "not available: cargo bench --bench $b failed: $(grep -m3 -E 'error' "$work/$b.err" | tr '\n' ' ')" > "$raw/host-$b.txt"
  else
    cp "$work/$b.out" "$raw/host-$b.txt"
  fi
done

# --- (d) the in-kernel benchmark image -----------------------------------------------------------
run_kernel() { # $1 = tcg|kvm
  local name="$1" flags=()
  [ "$name" = kvm ] && flags=(--kvm)
  step "./run-qemu.sh --bench ${flags[*]}"
  if [ "$kernel" = 0 ]; then
    echo "not available: not run (--skip-kernel)" > "$raw/kernel-$name.txt"
    return
  fi
  if [ "$name" = kvm ] && ! { [ -r /dev/kvm ] && [ -w /dev/kvm ]; }; then
    echo "not available: /dev/kvm is not usable on this machine" > "$raw/kernel-$name.txt"
    return
  fi
  local status=0 limit=600
  [ "$name" = kvm ] && limit="${KVM_TIMEOUT:-420}"
  "$root/run-qemu.sh" --bench "${flags[@]}" --timeout "$limit" > "$work/kernel-$name.log" 2>&1 || status=$?
  if [ "$status" != 0 ]; then
    { echo "not available: run-qemu.sh --bench ${flags[*]} exited with $status (0 ok, 1 kernel failure, 2 crash, 3 timeout);" \
        "$(grep -m2 -E 'KVM internal error|emulation failure|FAILURE|panicked' "$work/kernel-$name.log" | tr '\n' ' ')" \
        "$(grep -m1 -E '^Code=' "$work/kernel-$name.log" || true)"; } | tr '\n' ' ' > "$raw/kernel-$name.txt"
    echo >> "$raw/kernel-$name.txt"
  fi
  grep -E '^(bench|tlb-|\[boot\] qemu)' "$work/kernel-$name.log" >> "$raw/kernel-$name.txt" || true
}
run_kernel tcg
if [ "$kvm" = 1 ]; then
  run_kernel kvm
else
  echo "not available: not run (report.sh without --kvm)" > "$raw/kernel-kvm.txt"
fi

echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$raw/env.txt"
step "writing $out/report.md and $out/chart.svg"
python3 "$here/report.py" "$raw" "$out"
echo "$out/report.md"
