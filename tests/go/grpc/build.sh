#!/usr/bin/env bash
# Builds the gRPC test server and client (tests/go/grpc/{server,client}) against each grpc-go
# version in tests/go/grpc/versions, the server in three variants (default, stripped, pie), and
# prints one line per server: "<grpc version> <variant> <server path> <client path>".
#
# Modules come from the Go module proxy into a cache outside the clone
# ($GRPC_GOMODCACHE, default /var/cache/collector-go-grpc/mod); a warm cache needs no network.
# Go's build cache is outside the clone too ($COLLECTOR_GOCACHE, default
# /var/cache/collector-go/build, shared with tests/go/build-fixtures.sh): a fresh clone links
# the fixtures instead of compiling grpc-go twelve times.
# Output: $TARGET/go-fixtures/grpc-<version>-<variant>/server and .../grpc-<version>/client.
# A binary is rebuilt only when its stamp (versions, flags, sources, this script) changes.
# A versions line may name build tags (third field; "-" or none: no tags), for a grpc-go older
# than an API the sources use (grpcdial: grpc.Dial, before grpc.NewClient existed).
# Toolchains come from `WITH_GO=1 scripts/bootstrap.sh` ($TARGET/go/<version>/bin/go).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
out_root=$target/go-fixtures
cache=${GRPC_GOMODCACHE:-/var/cache/collector-go-grpc/mod}

# Tests running in parallel each call this script: one at a time, or their copies into the
# shared work directories collide ("cp: cannot create regular file: File exists").
mkdir -p "$target/go-grpc-src"
exec 9>"$target/go-grpc-src/.lock"
flock 9

mapfile -t lines < <(grep -v '^[[:space:]]*\(#\|$\)' "$here/versions")
src_hash=$(cat "$here/build.sh" "$here"/server/*.go "$here"/client/*.go | sha256sum | cut -d' ' -f1)

variant_flags() {
  case "$1" in
    default) echo "" ;;
    stripped) echo "-ldflags=-s -w" ;;
    pie) echo "-buildmode=pie" ;;
  esac
}

for line in "${lines[@]}"; do
  read -r gv go_v tags <<<"$line"
  tags=${tags:--}
  go_bin=$target/go/$go_v/bin/go
  if [ ! -x "$go_bin" ]; then
    echo "grpc build: Go $go_v is not installed at $target/go/$go_v; run: WITH_GO=1 scripts/bootstrap.sh" >&2
    exit 1
  fi
  work=$target/go-grpc-src/$gv
  mkdir -p "$work/server" "$work/client"
  rm -f "$work"/server/*.go "$work"/client/*.go
  cp "$here"/server/*.go "$work/server/"
  cp "$here"/client/*.go "$work/client/"
  # VCS stamping (Go 1.18+) would tie the binaries to the checkout; Go 1.17 has neither the
  # stamping nor the flag.
  common=(-trimpath)
  case "$go_v" in 1.17.*) ;; *) common+=(-buildvcs=false) ;; esac
  [ "$tags" != - ] && common+=(-tags "$tags")
  export GOMODCACHE=$cache GOCACHE=${COLLECTOR_GOCACHE:-/var/cache/collector-go/build} GOTOOLCHAIN=local CGO_ENABLED=0 GOENV=off
  export GOFLAGS=-mod=mod GOPROXY=${GOPROXY:-https://proxy.golang.org} GOSUMDB=${GOSUMDB:-sum.golang.org}
  if [ ! -f "$work/go.sum" ] || [ "$(cat "$work/.modstamp" 2>/dev/null)" != "$gv|$go_v" ]; then
    printf 'module collector.test/grpc\n\ngo %s\n\nrequire google.golang.org/grpc %s\n' \
      "$(echo "$go_v" | cut -d. -f1,2)" "$gv" > "$work/go.mod"
    rm -f "$work/go.sum"
    (cd "$work" && "$go_bin" mod tidy) >"$work/tidy.log" 2>&1 || {
      echo "grpc build: go mod tidy for grpc $gv failed:" >&2; cat "$work/tidy.log" >&2; exit 1; }
    echo "$gv|$go_v" > "$work/.modstamp"
  fi
  cdir=$out_root/grpc-$gv
  stamp="$gv|$go_v|$tags|$src_hash"
  if [ ! -x "$cdir/client" ] || [ "$(cat "$cdir/stamp" 2>/dev/null)" != "$stamp" ]; then
    mkdir -p "$cdir"
    (cd "$work" && "$go_bin" build "${common[@]}" -o "$cdir/client.tmp" ./client) \
      >"$cdir/build.log" 2>&1 || { echo "grpc build: client $gv failed:" >&2; cat "$cdir/build.log" >&2; exit 1; }
    mv -f "$cdir/client.tmp" "$cdir/client"
    echo "$stamp" > "$cdir/stamp"
  fi
  for variant in default stripped pie; do
    dir=$out_root/grpc-$gv-$variant
    flags=$(variant_flags "$variant")
    vstamp="$stamp|$variant|$flags"
    if [ ! -x "$dir/server" ] || [ "$(cat "$dir/stamp" 2>/dev/null)" != "$vstamp" ]; then
      mkdir -p "$dir"
      args=(build "${common[@]}" -o "$dir/server.tmp")
      [ -n "$flags" ] && args+=("$flags")
      (cd "$work" && "$go_bin" "${args[@]}" ./server) >"$dir/build.log" 2>&1 || {
        echo "grpc build: server $gv $variant failed:" >&2; cat "$dir/build.log" >&2; exit 1; }
      mv -f "$dir/server.tmp" "$dir/server"
      echo "$vstamp" > "$dir/stamp"
    fi
    echo "$gv $variant $dir/server $cdir/client"
  done
done
