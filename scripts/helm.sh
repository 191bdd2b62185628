#!/usr/bin/env bash
# Builds the helm binary the chart tests use (tests/tests/deploy.rs) from its Go module, at one
# pinned release, into a cache outside the clone:
#
#   /var/cache/collector-helm/<HELM_VERSION>/bin/helm
#   /var/cache/collector-helm/<HELM_VERSION>/{gomodcache,gocache}
#
# `go install helm.sh/helm/v4/cmd/helm@<version>` works as is (no replace directives in helm's
# go.mod). Modules already downloaded for the Kubernetes control plane (scripts/k8s-control-plane.sh
# uses the same k8s.io v0.x release) are read from that cache first, the Go proxy after.
# Idempotent: a warm run compares a stamp and does nothing. Prints the helm path on stdout.
set -euo pipefail

HELM_VERSION=v4.3.2
CACHE_ROOT=${COLLECTOR_HELM_CACHE:-/var/cache/collector-helm}
TOP="$CACHE_ROOT/$HELM_VERSION"
BIN="$TOP/bin"

log() { printf '[helm] %s\n' "$*" >&2; }

stamp_text="helm=$HELM_VERSION script=1"
if [ -x "$BIN/helm" ] && [ "$(cat "$BIN/.stamp" 2>/dev/null)" = "$stamp_text" ]; then
  echo "$BIN/helm"; exit 0
fi

repo="$(cd "$(dirname "$0")/.." && pwd)"
# helm's go.mod asks for Go 1.26: the newest Go that scripts/bootstrap.sh installed.
GO=$(command -v go 2>/dev/null || ls -d "$repo"/target/go/[0-9]*/bin/go 2>/dev/null | sort -rV | head -1 || true)
if [ -z "$GO" ]; then
  log "no Go toolchain (run WITH_GO=1 scripts/bootstrap.sh)"; exit 1
fi
mkdir -p "$BIN"
export GOMODCACHE="$TOP/gomodcache" GOCACHE="$TOP/gocache" GOTOOLCHAIN=local CGO_ENABLED=0 GOBIN="$BIN"
k8s_mods=$(ls -d /var/cache/collector-k8s/*/gomodcache/cache/download 2>/dev/null | head -1 || true)
export GOPROXY="${k8s_mods:+file://$k8s_mods,}${GOPROXY:-https://proxy.golang.org}"
log "building helm $HELM_VERSION with $("$GO" env GOVERSION) into $BIN (a few minutes, once)"
# What `helm version` prints (helm's Makefile sets the same variable).
"$GO" install -trimpath -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION" \
  "helm.sh/helm/v4/cmd/helm@$HELM_VERSION" >&2
echo "$stamp_text" > "$BIN/.stamp"
echo "$BIN/helm"
