#!/usr/bin/env bash
# Builds the OpenTelemetry Collector distribution of deploy/otel-collector/builder-config.yaml
# (OTLP receiver, batch, k8sattributes, Prometheus remote write) with the collector's builder
# (go.opentelemetry.io/collector/cmd/builder) from the Go module proxy, into a cache outside the
# clone:
#
#   /var/cache/collector-otelcol/<VERSION>/bin/otelcol-collector-example
#   /var/cache/collector-otelcol/<VERSION>/{gomodcache,gocache,build}
#
# The test tests/tests/otel_collector.rs validates and runs deploy/otel-collector/config.yaml
# with it. Idempotent: a warm run compares a stamp (the version and the manifest's hash) and does
# nothing. Prints the binary's path on stdout.
set -euo pipefail

VERSION=v0.165.0
CACHE_ROOT=${COLLECTOR_OTELCOL_CACHE:-/var/cache/collector-otelcol}
TOP="$CACHE_ROOT/$VERSION"
BIN="$TOP/bin"
repo="$(cd "$(dirname "$0")/.." && pwd)"
manifest="$repo/deploy/otel-collector/builder-config.yaml"

log() { printf '[otelcol] %s\n' "$*" >&2; }

stamp_text="otelcol=$VERSION manifest=$(sha256sum "$manifest" | cut -c1-16) script=2"
if [ -x "$BIN/otelcol-collector-example" ] && [ "$(cat "$BIN/.stamp" 2>/dev/null)" = "$stamp_text" ]; then
  echo "$BIN/otelcol-collector-example"; exit 0
fi

# A Go toolchain: the system's, else the newest scripts/bootstrap.sh installed.
GO=$(command -v go 2>/dev/null || ls -d "$repo"/target/go/[0-9]*/bin/go 2>/dev/null | sort -rV | head -1 || true)
if [ -z "$GO" ]; then
  log "no Go toolchain (run WITH_GO=1 scripts/bootstrap.sh)"; exit 1
fi
mkdir -p "$BIN" "$TOP/build"
export GOMODCACHE="$TOP/gomodcache" GOCACHE="$TOP/gocache" GOTOOLCHAIN=local CGO_ENABLED=0 GOBIN="$BIN"
export PATH="$(dirname "$GO"):$PATH"
# Modules already downloaded for the Kubernetes control plane (k8s.io, grpc, protobuf) first.
k8s_mods=$(ls -d /var/cache/collector-k8s/*/gomodcache/cache/download 2>/dev/null | head -1 || true)
export GOPROXY="${k8s_mods:+file://$k8s_mods,}${GOPROXY:-https://proxy.golang.org}"
if [ ! -x "$BIN/builder" ] || ! grep -q "builder=$VERSION" "$BIN/.builder" 2>/dev/null; then
  log "building the collector builder $VERSION with $("$GO" env GOVERSION)"
  "$GO" install -trimpath "go.opentelemetry.io/collector/cmd/builder@$VERSION" >&2
  echo "builder=$VERSION" > "$BIN/.builder"
fi
log "building the distribution of $manifest into $BIN (several minutes, once)"
# The builder writes the sources and go.mod; the module list is resolved and compiled here,
# because the builder's `go mod tidy` fails outright on a module only a dependency's tests
# import (k8sattributesprocessor's tests: pkg/semconvtest v0.164.0, not served by the proxy).
# `tidy -e` records every module the build needs and reports that one; the build does not need it.
# The output path is given here, so the manifest stays machine-independent.
# The builder writes go.mod only when it also resolves the modules (`--skip-get-modules` leaves
# it out: a fresh machine then had no go.mod to tidy), so it runs without that flag and its
# failing tidy is tolerated once go.mod is there.
rm -f "$TOP/build/go.mod" "$TOP/build/go.sum"
if ! "$BIN/builder" --config "$manifest" --output-path "$TOP/build" --skip-compilation --skip-strict-versioning >&2; then
  [ -f "$TOP/build/go.mod" ] || { log "the builder wrote no go.mod"; exit 1; }
  log "the builder's own go mod tidy failed (expected: see above); resolving with tidy -e"
fi
(
  cd "$TOP/build"
  "$GO" mod tidy -e -compat=1.25 >&2
  "$GO" build -trimpath -ldflags "-s -w" -o "$BIN/otelcol-collector-example" . >&2
)
echo "$stamp_text" > "$BIN/.stamp"
echo "$BIN/otelcol-collector-example"
