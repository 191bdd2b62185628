#!/usr/bin/env bash
# Builds the Go test server (tests/go/server) with every Go toolchain in tests/go/versions,
# in three variants each, and prints one line per binary: "<version> <variant> <path>".
#
#   default   go build
#   stripped  go build -ldflags="-s -w"     (no .symtab, no DWARF; .gopclntab stays)
#   pie       go build -buildmode=pie        (ET_DYN, text mapped from vaddr 0)
#
# Output: $TARGET/go-fixtures/<version>-<variant>/server, where $TARGET is $CARGO_TARGET_DIR
# or <repo>/target. A binary is rebuilt only when its stamp (toolchain, flags, sources, this
# script) changes, so a warm run costs a few hashes. Toolchains come from
# `WITH_GO=1 scripts/bootstrap.sh` ($TARGET/go/<version>/bin/go); a missing one is an error.
#
# Usage: tests/go/build-fixtures.sh [VERSION...]    (default: every version in tests/go/versions)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
src=$here/server
out_root=$target/go-fixtures
jobs=${GO_FIXTURE_JOBS:-$(nproc)}

if [ $# -gt 0 ]; then
  versions=("$@")
else
  mapfile -t versions < <(grep -v '^[[:space:]]*\(#\|$\)' "$here/versions")
fi

for v in "${versions[@]}"; do
  if [ ! -x "$target/go/$v/bin/go" ]; then
    echo "build-fixtures: Go $v is not installed at $target/go/$v; run: WITH_GO=1 scripts/bootstrap.sh" >&2
    exit 1
  fi
done

# Everything a binary depends on besides the toolchain and its flags.
src_hash=$(cd "$src" && cat "$here/build-fixtures.sh" $(LC_ALL=C ls go.mod *.go) | sha256sum | cut -d' ' -f1)

variant_flags() {
  case "$1" in
    default) echo "" ;;
    stripped) echo "-ldflags=-s -w" ;;
    pie) echo "-buildmode=pie" ;;
  esac
}

build_one() {
  local v=$1 variant=$2
  local dir=$out_root/$v-$variant
  local flags
  flags=$(variant_flags "$variant")
  local stamp="$v|$variant|$flags|$src_hash"
  if [ -x "$dir/server" ] && [ "$(cat "$dir/stamp" 2>/dev/null)" = "$stamp" ]; then
    return 0
  fi
  mkdir -p "$dir"
  local tmp="$dir/server.tmp.$$"
  local args=(build -trimpath -o "$tmp")
  # VCS stamping (Go 1.18+) would tie the binary to the checkout's state; Go 1.17 has neither
  # the stamping nor the flag.
  case "$v" in 1.17.*) ;; *) args+=(-buildvcs=false) ;; esac
  [ -n "$flags" ] && args+=("$flags")
  if ! (cd "$src" && env GOTOOLCHAIN=local GOPROXY=off CGO_ENABLED=0 GOFLAGS=-mod=mod \
      GOCACHE="${COLLECTOR_GOCACHE:-/var/cache/collector-go/build}" GOPATH="$target/go-path" GOENV=off \
      "$target/go/$v/bin/go" "${args[@]}" . ) >"$dir/build.log" 2>&1; then
    echo "build-fixtures: go$v $variant failed:" >&2
    cat "$dir/build.log" >&2
    rm -f "$tmp"
    return 1
  fi
  # Rename last, so a concurrent reader never sees a half-written binary.
  mv -f "$tmp" "$dir/server"
  echo "$stamp" > "$dir/stamp"
}

pids=()
failed=0
for v in "${versions[@]}"; do
  for variant in default stripped pie; do
    build_one "$v" "$variant" &
    pids+=($!)
    if [ ${#pids[@]} -ge "$jobs" ]; then
      wait "${pids[0]}" || failed=1
      pids=("${pids[@]:1}")
    fi
  done
done
for p in "${pids[@]}"; do wait "$p" || failed=1; done
[ "$failed" = 0 ] || exit 1

for v in "${versions[@]}"; do
  for variant in default stripped pie; do
    echo "$v $variant $out_root/$v-$variant/server"
  done
done
