#!/usr/bin/env bash
# The prometheus-operator CRDs (ServiceMonitor, PodMonitor, PrometheusRule) the chart's monitor
# objects are checked against (tests/tests/helm_install.rs), into a cache outside the clone:
#
#   /var/cache/collector-monitoring-crds/<OPERATOR_VERSION>/crds/monitoring.coreos.com_*.yaml
#   /var/cache/collector-monitoring-crds/<OPERATOR_VERSION>/{gomodcache,gocache,bin,src}
#
# Generated the way prometheus-operator generates its own: controller-gen (sigs.k8s.io/
# controller-tools) over the operator's API types, the Go module
# github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring. The operator's root
# module (whose example/prometheus-operator-crd/ holds the released YAML) is not served by the Go
# module proxy here ("403 Forbidden: This module version is not available" for v0.95.2); the API
# module is, and its kubebuilder markers are what the released CRDs' schemas are made from.
# Descriptions are left out (maxDescLen=0): validation is the same, the objects far smaller.
#
# Idempotent: a warm run compares a stamp and does nothing. Prints the CRD directory on stdout.
set -euo pipefail

OPERATOR_VERSION=v0.95.2
CONTROLLER_TOOLS_VERSION=v0.23.0
CACHE_ROOT=${COLLECTOR_MONITORING_CRDS_CACHE:-/var/cache/collector-monitoring-crds}
TOP="$CACHE_ROOT/$OPERATOR_VERSION"
OUT="$TOP/crds"
KINDS=(servicemonitors podmonitors prometheusrules)

log() { printf '[monitoring-crds] %s\n' "$*" >&2; }

stamp_text="operator=$OPERATOR_VERSION controller-tools=$CONTROLLER_TOOLS_VERSION script=1"
if [ "$(cat "$OUT/.stamp" 2>/dev/null)" = "$stamp_text" ]; then
  echo "$OUT"; exit 0
fi

repo="$(cd "$(dirname "$0")/.." && pwd)"
GO=$(command -v go 2>/dev/null || ls -d "$repo"/target/go/[0-9]*/bin/go 2>/dev/null | sort -rV | head -1 || true)
if [ -z "$GO" ]; then
  log "no Go toolchain (run WITH_GO=1 scripts/bootstrap.sh)"; exit 1
fi
mkdir -p "$TOP/bin" "$TOP/src"
export GOMODCACHE="$TOP/gomodcache" GOCACHE="$TOP/gocache" GOTOOLCHAIN=local CGO_ENABLED=0
export GOBIN="$TOP/bin" GOFLAGS=-mod=mod PATH="$(dirname "$GO"):$PATH"
# k8s.io modules already downloaded for the control plane (scripts/k8s-control-plane.sh) first.
k8s_mods=$(ls -d /var/cache/collector-k8s/*/gomodcache/cache/download 2>/dev/null | head -1 || true)
export GOPROXY="${k8s_mods:+file://$k8s_mods,}${GOPROXY:-https://proxy.golang.org}"

if ! [ -x "$TOP/bin/controller-gen" ] || [ "$(cat "$TOP/bin/.controller-gen" 2>/dev/null)" != "$CONTROLLER_TOOLS_VERSION" ]; then
  log "building controller-gen $CONTROLLER_TOOLS_VERSION with $("$GO" env GOVERSION) (~2 min, once)"
  "$GO" install -trimpath "sigs.k8s.io/controller-tools/cmd/controller-gen@$CONTROLLER_TOOLS_VERSION" >&2
  echo "$CONTROLLER_TOOLS_VERSION" > "$TOP/bin/.controller-gen"
fi

# controller-gen loads the API package through go/packages: a module that requires it.
api=github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring
cd "$TOP/src"
printf 'module collector.test/monitoring-crds\n\ngo 1.25\n\nrequire %s %s\n' "$api" "$OPERATOR_VERSION" > go.mod
printf 'package tools\n\nimport _ "%s/v1"\n' "$api" > tools.go
"$GO" mod tidy >&2
rm -rf "$OUT.tmp"
"$TOP/bin/controller-gen" crd:crdVersions=v1,maxDescLen=0 "paths=$api/v1" "output:crd:dir=$OUT.tmp" >&2
for k in "${KINDS[@]}"; do
  [ -s "$OUT.tmp/monitoring.coreos.com_$k.yaml" ] || { log "controller-gen wrote no $k CRD"; exit 1; }
done
rm -rf "$OUT"
mv "$OUT.tmp" "$OUT"
echo "$stamp_text" > "$OUT/.stamp"
log "CRDs of prometheus-operator $OPERATOR_VERSION in $OUT"
echo "$OUT"
