#!/usr/bin/env bash
# Runs every benchmark of the virtual-memory workloads and writes one report:
#   (a) the peer program tests/bench/vmbench_peer.c natively (cc -O2: Linux mmap/mprotect/munmap),
#   (b) the same program under Wine (x86_64-w64-mingw32-gcc + wine64: VirtualAlloc...), if installed,
#   (c) the host benchmarks of the address-space crate (cargo bench --bench host / --bench frames),
#   (d) the same-emulator comparison, in alternating rounds in this one run: Linux (Debian's
#       linux-image-cloud-amd64, apt-installed when missing) booted in the same QEMU
#       (-accel tcg -cpu max -m 1G) with the peer program as /init of an initramfs, in two
#       configurations (Debian's defaults, and the fair one: mitigations=off no5lvl clearcpuid=erms
#       transparent_hugepage=madvise), and the benchmark image ./run-qemu.sh --bench (in-kernel
#       workloads, scaling tables; its single-thread in-guest workloads in a second boot of their
#       own, --guest-args guest), each round booting all of them, all with the same number of vCPUs
#       (--smp, default 4 as run-qemu.sh --bench); the fair boot also runs the peer's scaling part
#       (disjoint work from 1, 2 and 4 threads of one process, and from a process each), beside
#       the image's scaling tables; under KVM once more with --kvm,
# then tests/bench/report.py turns the raw outputs (tests/bench/results/raw/) into
# tests/bench/results/report.md (tables) and tests/bench/results/chart.svg (matplotlib; the Debian
# package python3-matplotlib is apt-installed when missing).
#
# A part that cannot run is written as "not available: <why>" and shown so in the report; no figure
# is ever made up. Timings are printed, never asserted. Not part of tests/run-all.sh (it takes
# about 10 minutes); tests/bench/test_report.py checks report.py's parsing and arithmetic.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"

usage() {
  cat <<'USAGE'
usage: tests/bench/report.sh [--kvm] [--install-peers] [--skip-host] [--skip-kernel] [--rounds N] [--smp N]
                            [--out DIR]

  --kvm            also boot the benchmark image under KVM (QEMU takes about two minutes to start)
  --install-peers  apt-get install wine64 and gcc-mingw-w64-x86-64 if they are missing
  --skip-host      do not run the cargo host benchmarks (reported as not run)
  --skip-kernel    do not boot the benchmark image or Linux in QEMU (reported as not run)
  --rounds N       rounds of the same-emulator comparison (default 4; each boots Linux twice and
                   the benchmark image once, about a minute and a half per round under TCG)
  --smp N          vCPUs of every QEMU boot, Linux's and the benchmark image's alike (default 4,
                   what ./run-qemu.sh --bench uses when not told)
  --out DIR        where report.md, chart.svg and raw/ go (default tests/bench/results)
  -h, --help       this text

Environment: VMBENCH_C (peer source; default tests/bench/vmbench_peer.c),
LINUX_KERNEL (the Linux kernel to boot; default the newest /boot/vmlinuz-*-cloud-amd64),
CARGO_TARGET_DIR (honoured by cargo and run-qemu.sh), KVM_TIMEOUT (seconds for the KVM boot,
default 420: QEMU needs about two minutes to start under KVM here, and a KVM internal error
leaves QEMU paused until the timeout).
USAGE
}

kvm=0; install=0; host=1; kernel=1; rounds=4; smp=4; out="$here/results"
while [ $# -gt 0 ]; do
  case "$1" in
    --kvm) kvm=1 ;;
    --install-peers) install=1 ;;
    --skip-host) host=0 ;;
    --skip-kernel) kernel=0 ;;
    --rounds) [ $# -ge 2 ] && [ "$2" -ge 1 ] 2>/dev/null || { echo "--rounds needs a number >= 1" >&2; exit 2; }; rounds="$2"; shift ;;
    --smp) [ $# -ge 2 ] && [ "$2" -ge 1 ] 2>/dev/null || { echo "--smp needs a number >= 1" >&2; exit 2; }; smp="$2"; shift ;;
    --out) [ $# -ge 2 ] || { echo "--out needs a directory" >&2; exit 2; }; out="$2"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

mkdir -p "$out"
out="$(cd "$out" && pwd)"
raw="$out/raw"
mkdir -p "$raw"
rm -f "$raw"/*.txt "$raw"/rounds/*.txt
mkdir -p "$raw/rounds"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
peer_src="${VMBENCH_C:-$here/vmbench_peer.c}"
step() { echo "==> $*" >&2; }
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
apt_install() { # packages...; logs to $work/apt.log
  { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@"; } >> "$work/apt.log" 2>&1
}
load() { cut -d' ' -f1-3 /proc/loadavg; }

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
  echo "vcpus: $smp (-smp of every QEMU boot, Linux's and the benchmark image's)"
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
  apt_install wine64 gcc-mingw-w64-x86-64 || echo "apt-get install failed: $(tail -2 "$work/apt.log" | tr '\n' ' ')" > "$work/apt.err"
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

# --- (d) the same-emulator comparison: Linux and this kernel in the same QEMU, alternating rounds ---
# The benchmark image's figures (in-kernel and in-guest) come from these rounds; under KVM it boots once.
run_image() { # $1 = tcg|kvm, $2 = output file
  local name="$1" file="$2" flags=() status=0 limit=600
  [ "$name" = kvm ] && { flags=(--kvm); limit="${KVM_TIMEOUT:-420}"; }
  echo "load before: $(load)" > "$file"
  "$root/run-qemu.sh" --bench --smp "$smp" "${flags[@]}" --timeout "$limit" > "$work/image.log" 2>&1 || status=$?
  if [ "$status" != 0 ]; then
    { echo "not available: run-qemu.sh --bench ${flags[*]} exited with $status (0 ok, 1 kernel failure, 2 crash, 3 timeout);" \
        "$(grep -m2 -E 'KVM internal error|emulation failure|FAILURE|panicked' "$work/image.log" | tr '\n' ' ')" \
        "$(grep -m1 -E '^Code=' "$work/image.log" || true)"; } | tr '\n' ' ' >> "$file"
    echo >> "$file"
  fi
  if [ "$name" = tcg ]; then
    # The single-thread guest lines come from a boot of their own (`--guest-args guest`), as the
    # peer program runs first thing in a fresh Linux: after the in-kernel part the same workloads
    # measure up to twice as much, with the calls themselves no slower (docs/performance.md). The
    # full boot's guest lines stay in the file as `bench-after-kernel`, for the report's note.
    grep -E '^(bench|tlb-|\[boot\] qemu)' "$work/image.log" | sed -E 's/^bench (guest-)/bench-after-kernel \1/; s/^bench-zeroed-ahead /bench-after-kernel-zeroed-ahead /' >> "$file" || true
    echo "load between: $(load)" >> "$file"
    status=0
    "$root/run-qemu.sh" --bench --smp "$smp" --guest-args guest --timeout 300 > "$work/image-guest.log" 2>&1 || status=$?
    if [ "$status" != 0 ]; then
      echo "not available: run-qemu.sh --bench --guest-args guest exited with $status: $(grep -m2 -E 'FAILURE|panicked|failed' "$work/image-guest.log" | tr '\n' ' ')" >> "$file"
    fi
    grep -E '^(bench guest-|bench-zeroed-ahead |\[boot\] qemu)' "$work/image-guest.log" >> "$file" || true
  else
    grep -E '^(bench|tlb-|\[boot\] qemu)' "$work/image.log" >> "$file" || true
  fi
  echo "load after: $(load)" >> "$file"
}

# Linux's kernel command lines: Debian's defaults, and the configuration that compares memory
# management fairly under TCG (report.py explains each setting).
linux_default="console=ttyS0 quiet panic=-1"
linux_fair="$linux_default mitigations=off no5lvl clearcpuid=erms transparent_hugepage=madvise"
linux_kernel="${LINUX_KERNEL:-}"
find_linux() { ls -1 /boot/vmlinuz-*-cloud-amd64 2>/dev/null | sort -V | tail -1; }
linux_missing=""
if [ "$kernel" = 0 ]; then
  linux_missing="not available: not run (--skip-kernel)"
else
  step "Linux for the same-emulator comparison"
  if [ -z "$linux_kernel" ] && [ -z "$(find_linux)" ]; then
    step "installing linux-image-cloud-amd64 (apt-get)"
    apt_install linux-image-cloud-amd64 || true
  fi
  [ -n "$linux_kernel" ] || linux_kernel="$(find_linux)"
  if [ -z "$linux_kernel" ] || [ ! -r "$linux_kernel" ]; then
    linux_missing="not available: no readable /boot/vmlinuz-*-cloud-amd64 (apt-get install linux-image-cloud-amd64: $(tail -1 "$work/apt.log" 2>/dev/null))"
  elif [ ! -f "$peer_src" ]; then
    linux_missing="not available: peer source $peer_src not found"
  elif ! gcc -O2 -static -pthread -o "$work/init" "$peer_src" 2> "$work/static.err"; then
    linux_missing="not available: gcc -O2 -static -pthread failed: $(head -3 "$work/static.err" | tr '\n' ' ')"
  elif ! python3 "$here/mkinitramfs.py" "$work/init" "$work/initramfs.cpio"; then
    linux_missing="not available: mkinitramfs.py failed"
  else
    echo "linux: $(basename "$linux_kernel") ($(dpkg -S "$linux_kernel" 2>/dev/null | cut -d: -f1 | head -1 || echo 'package unknown'))" >> "$raw/env.txt"
  fi
fi
run_linux() { # $1 = default|fair, $2 = output file
  local append="$linux_default"
  # The kernel passes what follows "--" to /init as arguments: the fair boot also runs the scaling part.
  [ "$1" = fair ] && append="$linux_fair -- workloads scaling"
  echo "load before: $(load)" > "$2"
  if [ -n "$linux_missing" ]; then
    echo "$linux_missing" >> "$2"
    return
  fi
  local status=0
  timeout 300 qemu-system-x86_64 -accel tcg -cpu max -m 1G -smp "$smp" -kernel "$linux_kernel" -initrd "$work/initramfs.cpio" \
    -append "$append" -serial stdio -display none -monitor none -no-reboot > "$work/linux.log" 2>&1 || status=$?
  tr -d '\r' < "$work/linux.log" | grep -E '^(peer|[a-z_0-9]+ +[0-9.]+ ns/)' > "$work/linux.txt" || true
  if ! grep -q '^peer-done errors=0' "$work/linux.txt"; then
    echo "not available: Linux in QEMU did not finish the workloads (qemu exit $status): $(tr -d '\r' < "$work/linux.log" | grep -E 'peer-error|Kernel panic|segfault' | head -2 | tr '\n' ' ')" >> "$2"
  fi
  cat "$work/linux.txt" >> "$2"
  echo "load after: $(load)" >> "$2"
}

for r in $(seq 1 "$rounds"); do
  # The order rotates each round, so a slow phase of the machine does not always hit the same side.
  order=(linux-default linux-fair guest)
  case $(( (r - 1) % 3 )) in 1) order=(guest linux-default linux-fair) ;; 2) order=(linux-fair guest linux-default) ;; esac
  for what in "${order[@]}"; do
    step "round $r of $rounds: $what"
    case "$what" in
      linux-default) run_linux default "$raw/rounds/linux-default-$r.txt" ;;
      linux-fair) run_linux fair "$raw/rounds/linux-fair-$r.txt" ;;
      guest)
        if [ "$kernel" = 0 ]; then
          echo "not available: not run (--skip-kernel)" > "$raw/rounds/guest-$r.txt"
        else
          step "./run-qemu.sh --bench"
          run_image tcg "$raw/rounds/guest-$r.txt"
        fi ;;
    esac
  done
done

if [ "$kvm" = 1 ] && [ "$kernel" = 1 ]; then
  step "./run-qemu.sh --bench --kvm"
  if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
    run_image kvm "$raw/kernel-kvm.txt"
  else
    echo "not available: /dev/kvm is not usable on this machine" > "$raw/kernel-kvm.txt"
  fi
else
  echo "not available: not run (report.sh $( [ "$kernel" = 0 ] && echo --skip-kernel || echo without --kvm))" > "$raw/kernel-kvm.txt"
fi

echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$raw/env.txt"
# The chart needs matplotlib: the python3 on PATH if it has it, else Debian's (installed if missing).
py=python3
if ! python3 -c 'import matplotlib' 2>/dev/null; then
  if ! /usr/bin/python3 -c 'import matplotlib' 2>/dev/null; then
    step "installing python3-matplotlib (apt-get)"
    apt_install python3-matplotlib || true
  fi
  /usr/bin/python3 -c 'import matplotlib' 2>/dev/null && py=/usr/bin/python3
fi
step "writing $out/report.md and $out/chart.svg"
"$py" "$here/report.py" "$raw" "$out"
echo "$out/report.md"
