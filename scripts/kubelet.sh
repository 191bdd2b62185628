#!/usr/bin/env bash
# Builds the node half of the single-node cluster test (tests/src/k8s.rs, `Node`), next to the
# control plane of scripts/k8s-control-plane.sh and from the same k8s.io/kubernetes release:
#
#   /var/cache/collector-k8s/<K8S_VERSION>/bin/{kubelet,kube-controller-manager,kube-scheduler}
#   /var/cache/collector-k8s/<K8S_VERSION>/images/pause.oci.tar  (the sandbox image, no registry)
#   /var/cache/collector-k8s/debian/{containerd,containernetworking-plugins}_<version>/  (unpacked)
#
# containerd and the CNI plugins are Debian's packages, downloaded and unpacked with dpkg-deb,
# not installed: the host's runc (used as is), podman configuration and init are not touched,
# and nothing starts at boot. The controller-manager is there for the EndpointSlice controller
# (a Service's endpoints follow its pods' readiness) and the DaemonSet controller, the scheduler
# for DaemonSet pods (the controller gives them node affinity, the scheduler binds them).
#
# Idempotent (a warm run only compares stamps). Prints the bin directory on stdout, then, on a
# second line, the directory of the unpacked Debian packages. Needs gcc and buildah
# (scripts/bootstrap.sh installs both).
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
BIN=$("$repo/scripts/k8s-control-plane.sh")
TOP=$(dirname "$BIN")
K8S_VERSION=$(basename "$TOP")
DEB="$(dirname "$TOP")/debian"
BINARIES=(kubelet kube-controller-manager kube-scheduler)
DEBS=(containerd containernetworking-plugins)
stamp_text="k8s=$K8S_VERSION node script=1"

log() { printf '[kubelet] %s\n' "$*" >&2; }

# Debian packages, unpacked under a directory named by package and version; `current-<pkg>`
# points at the one in use.
mkdir -p "$DEB"
for p in "${DEBS[@]}"; do
  v=$(apt-cache policy "$p" | sed -n 's/^ *Candidate: //p')
  [ -n "$v" ] && [ "$v" != "(none)" ] || { log "apt has no $p (apt-get update?)"; exit 1; }
  d="$DEB/${p}_${v}"
  if ! [ -f "$d/.unpacked" ]; then
    tmp=$(mktemp -d "$DEB/.dl.XXXXXX")
    (cd "$tmp" && apt-get download "$p=$v" >&2) || { rm -rf "$tmp"; log "apt-get download $p=$v failed"; exit 1; }
    rm -rf "$d"; mkdir -p "$d"
    dpkg-deb -x "$tmp"/*.deb "$d"
    rm -rf "$tmp"
    touch "$d/.unpacked"
    log "unpacked $p $v"
  fi
  ln -sfn "${p}_${v}" "$DEB/current-$p"
done

missing=()
for b in "${BINARIES[@]}"; do
  if ! [ -x "$BIN/$b" ] || [ "$(cat "$BIN/.built-$b" 2>/dev/null)" != "$stamp_text" ]; then
    missing+=("$b")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  export GOMODCACHE="$TOP/gomodcache" GOCACHE="$TOP/gocache" GOTOOLCHAIN=local GOFLAGS=-mod=mod
  export CGO_ENABLED=0 GOPROXY="${GOPROXY:-https://proxy.golang.org}"
  # Same Go as the control plane: the newest under target/go, or the machine's own.
  GO=$(command -v go || ls -d "$repo"/target/go/[0-9]*/bin/go 2>/dev/null | sort -rV | head -1)
  # The control plane's wrapper module (its replace lines) plus these commands' imports.
  src="$TOP/src-node"
  mkdir -p "$src"
  sed -e 's|^module .*|module collector.test/k8s-node|' "$TOP/src/go.mod" > "$src/go.mod"
  {
    echo "//go:build tools"
    echo
    echo "package tools"
    echo
    for b in "${BINARIES[@]}"; do echo "import _ \"k8s.io/kubernetes/cmd/$b\""; done
  } > "$src/tools.go"
  (cd "$src" && "$GO" mod tidy >&2)
  minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags="$ldflags -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags="$ldflags -X $pkg.gitTreeState=clean"
  done
  for b in "${missing[@]}"; do
    start=$SECONDS
    (cd "$src" && "$GO" build -trimpath -ldflags "$ldflags" -o "$BIN/$b.tmp" "k8s.io/kubernetes/cmd/$b" >&2)
    mv "$BIN/$b.tmp" "$BIN/$b"
    echo "$stamp_text" > "$BIN/.built-$b"
    log "$b built in $((SECONDS - start)) s"
  done
fi
# The pod sandbox ("pause") image: Kubernetes' own build/pause/linux/pause.c from the same
# module, static, in an image from scratch (buildah, as `./x image`). Tests have no registry.
IMG="$TOP/images"
pause_stamp="$stamp_text pause=1"
if [ "$(cat "$IMG/.built-pause" 2>/dev/null)" != "$pause_stamp" ] || ! [ -f "$IMG/pause.oci.tar" ]; then
  mkdir -p "$IMG"
  src=$(ls -d "$TOP"/gomodcache/k8s.io/kubernetes@"$K8S_VERSION"/build/pause/linux/pause.c)
  gcc -Os -static -DVERSION="$K8S_VERSION" -o "$IMG/pause" "$src"
  strip "$IMG/pause"
  c=$(buildah from scratch)
  trap 'buildah rm "$c" >/dev/null 2>&1 || true' EXIT
  buildah copy "$c" "$IMG/pause" /pause >/dev/null
  buildah config --entrypoint '["/pause"]' --user 65535:65535 "$c"
  rm -f "$IMG/pause.oci.tar"
  buildah commit -q "$c" "oci-archive:$IMG/pause.oci.tar:collector.test/pause:$K8S_VERSION" >/dev/null
  buildah rm "$c" >/dev/null; trap - EXIT
  echo "$pause_stamp" > "$IMG/.built-pause"
  log "pause image built"
fi
echo "$BIN"
echo "$DEB"
