#!/usr/bin/env bash
# Builds the kernel and boots it in QEMU. Exit status: the kernel's (0 = success).
# On a fresh machine it first installs the pinned toolchain and QEMU/OVMF.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$root"

usage() {
  cat <<'USAGE'
usage: ./run-qemu.sh [OPTIONS]

Builds the kernel and boots it in QEMU (BIOS image, TCG by default); the serial console is this
terminal. Exits with 0 if the kernel reports success, 1 if it reports failure, 2 on a crash
(e.g. a triple fault), 3 on a timeout.

options:
  --uefi          boot the UEFI image (OVMF) instead of the BIOS image
  --kvm           use KVM (-enable-kvm -cpu host,-arch-capabilities) if /dev/kvm is usable; otherwise say so and use TCG
  --gdb           QEMU waits for a debugger: gdb target/x86_64-unknown-none/debug/kernel -ex 'target remote :1234'
  --mem SIZE      guest RAM in QEMU syntax (default 256M)
  --release       build the kernel with the release profile
  --debug         build the kernel with the dev profile (default)
  --timeout SECS  kill QEMU after SECS seconds (default: no limit)
  -h, --help      this text
USAGE
}

firmware=(); kvm=(); gdb=(); mem=256M; profile=debug; timeout=0
while [ $# -gt 0 ]; do
  case "$1" in
    --uefi) firmware=(--uefi) ;;
    --kvm) kvm=(--kvm) ;;
    --gdb) gdb=(--gdb) ;;
    --mem) [ $# -ge 2 ] || { echo "--mem needs a size" >&2; exit 2; }; mem="$2"; shift ;;
    --mem=*) mem="${1#--mem=}" ;;
    --release) profile=release ;;
    --debug) profile=debug ;;
    --timeout) [ $# -ge 2 ] || { echo "--timeout needs seconds" >&2; exit 2; }; timeout="$2"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

source "$root/tests/setup.sh"
ensure_toolchain
ensure_qemu

if [ ${#kvm[@]} -gt 0 ] && ! { [ -r /dev/kvm ] && [ -w /dev/kvm ]; }; then
  echo "run-qemu.sh: /dev/kvm is not usable here; running under TCG instead" >&2
  kvm=()
fi

cargo_profile=(); [ "$profile" = release ] && cargo_profile=(--release)
cargo build --quiet -p boot
cargo build --quiet -p kernel --target x86_64-unknown-none "${cargo_profile[@]}"
set +e
"$root/target/debug/boot" run "${firmware[@]}" "${kvm[@]}" "${gdb[@]}" --mem "$mem" --timeout "$timeout" \
  "$root/target/x86_64-unknown-none/$profile/kernel"
exit $?
