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
  --smp N         CPUs (default 2); the kernel starts every one and runs guest threads on all of them
                  (a guest's HOST_SERVICES cpu_count is N)
  --release       build the kernel with the release profile
  --debug         build the kernel with the dev profile (default)
  --timeout SECS  kill QEMU after SECS seconds (default: no limit)
  --guest FILE    run this guest ELF file instead of the bundled samples (repeatable; in order).
                  A guest is a static executable or static PIE built against
                  kernel/guest-abi/include/host_abi.h, e.g.
                  gcc -ffreestanding -nostdlib -static-pie -fno-stack-protector -e guest_main -o my.elf my.c
                  The exit status is 0 only if every guest exited with code 0.
  --config "K=V,..."  kernel settings at boot: critical_reserve_percent (default 6),
                  low_threshold_percent (12), high_threshold_percent (25) of the commit limit for
                  memory notifications, commit_limit_mb (cap the commit limit; default: what RAM allows),
                  guest_cpu_limit_s (end a guest past N seconds of CPU time with 0x80131024; 0 = none),
                  guest_wall_limit_s (the same past N seconds from its start, sleeping or not; 0 = none)
  --guest-args "ARGS"  the argument string guests receive (the entry point's third argument); alias --runtime-args
  --wasm FILE     run a WebAssembly module (.wasm, or .wat text) in the Wasmtime guest
                  (tests/guests/wasm-runtime) instead of the bundled guests: FILE is precompiled on
                  the host (tools/wasm-precompile, Cranelift), argv[0] is FILE's name and the words
                  of --guest-args follow; WASI preview 1 subset (README). The exit status is the
                  program's exit code (134 after a wasm trap, 1 if FILE does not compile)
  --bench         boot the benchmark image (kernel/src/bin/bench.rs) instead of the kernel: release
                  profile, --mem 1G and --smp 4 unless --debug / --mem / --smp say otherwise
  -h, --help      this text
USAGE
}

smp=(); firmware=(); kvm=(); gdb=(); mem=256M; profile=debug; timeout=0; guests=(); config=(); guest_args=()
bin=kernel; mem_set=; profile_set=; wasm=
while [ $# -gt 0 ]; do
  case "$1" in
    --uefi) firmware=(--uefi) ;;
    --kvm) kvm=(--kvm) ;;
    --gdb) gdb=(--gdb) ;;
    --mem) [ $# -ge 2 ] || { echo "--mem needs a size" >&2; exit 2; }; mem="$2"; mem_set=1; shift ;;
    --mem=*) mem="${1#--mem=}"; mem_set=1 ;;
    --smp) [ $# -ge 2 ] || { echo "--smp needs a CPU count" >&2; exit 2; }; smp=(--smp "$2"); shift ;;
    --release) profile=release; profile_set=1 ;;
    --debug) profile=debug; profile_set=1 ;;
    --bench) bin=bench ;;
    --timeout) [ $# -ge 2 ] || { echo "--timeout needs seconds" >&2; exit 2; }; timeout="$2"; shift ;;
    --guest-args|--runtime-args) [ $# -ge 2 ] || { echo "$1 needs a string" >&2; exit 2; }; guest_args=(--guest-args "$2"); shift ;;
    --config) [ $# -ge 2 ] || { echo "--config needs key=value pairs" >&2; exit 2; }; config=(--config "$2"); shift ;;
    --guest)
      [ $# -ge 2 ] || { echo "--guest needs a file" >&2; exit 2; }
      [ -f "$2" ] || { echo "--guest $2: no such file" >&2; exit 2; }
      guests+=(--guest "$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"); shift ;;
    --wasm)
      [ $# -ge 2 ] || { echo "--wasm needs a file" >&2; exit 2; }
      [ -f "$2" ] || { echo "--wasm $2: no such file" >&2; exit 2; }
      wasm="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

if [ "$bin" = bench ]; then
  # commit_touch_256m needs 256 MiB of frames on top of the kernel's own memory.
  [ -n "$mem_set" ] || mem=1G
  [ -n "$profile_set" ] || profile=release
fi

source "$root/tests/setup.sh"
ensure_toolchain
ensure_qemu

if [ ${#kvm[@]} -gt 0 ] && ! { [ -r /dev/kvm ] && [ -w /dev/kvm ]; }; then
  echo "run-qemu.sh: /dev/kvm is not usable here; running under TCG instead" >&2
  kvm=()
fi

cargo_profile=(); [ "$profile" = release ] && cargo_profile=(--release)
cargo build --quiet -p boot
features=(); [ "$bin" = bench ] && features=(--features test-hooks)
cargo build --quiet -p kernel --bin "$bin" "${features[@]}" --target x86_64-unknown-none "${cargo_profile[@]}"
target="${CARGO_TARGET_DIR:-$root/target}"
if [ -n "$wasm" ]; then
  # The kernel's build made the precompiler (a host tool) and the runtime guest as artifacts of
  # tests/guests/wasm-bundle; cargo's JSON messages say where.
  artifacts="$(cargo build --quiet -p kernel --bin "$bin" "${features[@]}" --target x86_64-unknown-none "${cargo_profile[@]}" --message-format=json)"
  exe() { grep "\"name\":\"$1\"" <<<"$artifacts" | grep -o '"executable":"[^"]*"' | tail -n 1 | sed 's/"executable":"\(.*\)"/\1/'; }
  precompile="$(exe wasm-precompile)"; runtime="$(exe wasm-runtime)"
  [ -x "$precompile" ] && [ -f "$runtime" ] || { echo "run-qemu.sh: wasm-precompile or wasm-runtime was not built" >&2; exit 2; }
  mkdir -p "$target/wasm-run"
  elf="$target/wasm-run/$(basename "$wasm").elf"
  "$precompile" --runtime "$runtime" "$wasm" -o "$elf" || exit 1
  guests=(--guest "$elf")
fi
# The benchmark's scaling table runs its workloads from 1, 2 and 4 CPUs.
[ "$bin" = bench ] && [ ${#smp[@]} -eq 0 ] && smp=(--smp 4)
boot_run=("$target/debug/boot" run "${smp[@]}" "${firmware[@]}" "${kvm[@]}" "${gdb[@]}" "${guests[@]}" "${config[@]}" "${guest_args[@]}" --mem "$mem" --timeout "$timeout" \
  "$target/x86_64-unknown-none/$profile/$bin")
set +e
if [ -z "$wasm" ]; then
  "${boot_run[@]}"
  exit $?
fi
"${boot_run[@]}" | tee "$target/wasm-run/output.txt"
status=${PIPESTATUS[0]}
if [ "$status" -le 1 ]; then
  # The program's exit code, from the kernel's line for the guest.
  code="$(tr -d '\r' < "$target/wasm-run/output.txt" | sed -nE 's/^guest .* exited with code (-?[0-9]+).*/\1/p' | tail -n 1)"
  [ -n "$code" ] && exit $((code & 255))
fi
exit "$status"
