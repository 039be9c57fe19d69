# Sourced by run-qemu.sh and tests/run-all.sh: installs what a fresh machine lacks.

ensure_toolchain() {
  # RUSTUP_AUTO_INSTALL=0 on these machines: install the toolchain rust-toolchain.toml names.
  if ! rustup toolchain install >/dev/null 2>&1; then
    echo "installing the pinned toolchain failed; retrying verbosely" >&2
    rustup toolchain install || exit 2
  fi
}

ensure_qemu() {
  if command -v qemu-system-x86_64 >/dev/null 2>&1 && [ -e /usr/share/ovmf/OVMF.fd ]; then
    return 0
  fi
  echo "==> installing QEMU and OVMF (apt-get)" >&2
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq >/dev/null && \
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq qemu-system-x86 ovmf >/dev/null || {
      echo "could not install qemu-system-x86 and ovmf" >&2; exit 2; }
}
