#!/usr/bin/env bash
# Builds the fasthttp/fiber test server (tests/go/fasthttp/server) for each module set in
# tests/go/fasthttp/versions, in three variants (default, stripped, pie), and prints one line
# per server: "<set> <variant> <path>".
#
# Modules come from the Go module proxy into a cache outside the clone
# ($FASTHTTP_GOMODCACHE, default /var/cache/collector-go-fasthttp/mod); a warm cache needs no
# network. Go's build cache is shared with the other fixtures ($COLLECTOR_GOCACHE, default
# /var/cache/collector-go/build). Output: $TARGET/go-fixtures/fasthttp-<set>-<variant>/server,
# rebuilt only when its stamp (set line, sources, this script) changes.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
out_root=$target/go-fixtures
cache=${FASTHTTP_GOMODCACHE:-/var/cache/collector-go-fasthttp/mod}

mapfile -t lines < <(grep -v '^[[:space:]]*\(#\|$\)' "$here/versions")
src_hash=$(cat "$here/build.sh" "$here"/server/*.go | sha256sum | cut -d' ' -f1)

variant_flags() {
  case "$1" in
    default) echo "" ;;
    stripped) echo "-ldflags=-s -w" ;;
    pie) echo "-buildmode=pie" ;;
  esac
}

for line in "${lines[@]}"; do
  read -r set go_v tags mods <<<"$line"
  go_bin=$target/go/$go_v/bin/go
  if [ ! -x "$go_bin" ]; then
    echo "fasthttp build: Go $go_v is not installed at $target/go/$go_v; run: WITH_GO=1 scripts/bootstrap.sh" >&2
    exit 1
  fi
  work=$target/go-fasthttp-src/$set
  mkdir -p "$work"
  rm -f "$work"/*.go
  cp "$here"/server/*.go "$work/"
  [ "$tags" = - ] && rm -f "$work/fiber3.go"
  export GOMODCACHE=$cache GOCACHE=${COLLECTOR_GOCACHE:-/var/cache/collector-go/build} GOTOOLCHAIN=local CGO_ENABLED=0 GOENV=off
  export GOFLAGS=-mod=mod GOPROXY=${GOPROXY:-https://proxy.golang.org} GOSUMDB=${GOSUMDB:-sum.golang.org}
  if [ ! -f "$work/go.sum" ] || [ "$(cat "$work/.modstamp" 2>/dev/null)" != "$line" ]; then
    {
      printf 'module collector.test/fasthttp\n\ngo %s\n\nrequire (\n' "$(echo "$go_v" | cut -d. -f1,2)"
      for m in $mods; do printf '\t%s %s\n' "${m%@*}" "${m#*@}"; done
      printf ')\n'
    } > "$work/go.mod"
    rm -f "$work/go.sum"
    # tidy reads every file whatever its build tags (the old set's copy has no fiber3.go).
    (cd "$work" && "$go_bin" mod tidy) >"$work/tidy.log" 2>&1 || {
      echo "fasthttp build: go mod tidy for $set failed:" >&2; cat "$work/tidy.log" >&2; exit 1; }
    # The versions asked for, not newer ones tidy may have preferred.
    for m in $mods; do
      got=$(cd "$work" && "$go_bin" list -m -f '{{.Version}}' "${m%@*}")
      [ "$got" = "${m#*@}" ] || { echo "fasthttp build: $set resolved ${m%@*} $got, not ${m#*@}" >&2; exit 1; }
    done
    echo "$line" > "$work/.modstamp"
  fi
  for variant in default stripped pie; do
    dir=$out_root/fasthttp-$set-$variant
    flags=$(variant_flags "$variant")
    stamp="$line|$src_hash|$variant|$flags"
    if [ ! -x "$dir/server" ] || [ "$(cat "$dir/stamp" 2>/dev/null)" != "$stamp" ]; then
      mkdir -p "$dir"
      args=(build -trimpath -buildvcs=false -o "$dir/server.tmp")
      [ "$tags" != - ] && args+=(-tags "$tags")
      [ -n "$flags" ] && args+=("$flags")
      (cd "$work" && "$go_bin" "${args[@]}" .) >"$dir/build.log" 2>&1 || {
        echo "fasthttp build: $set $variant failed:" >&2; cat "$dir/build.log" >&2; exit 1; }
      mv -f "$dir/server.tmp" "$dir/server"
      echo "$stamp" > "$dir/stamp"
    fi
    echo "$set $variant $dir/server"
  done
done
