#!/usr/bin/env bash
# Builds the test server of a Go module-set fixture (tests/go/<name>/server) for each module set
# in tests/go/<name>/versions, in three variants (default, stripped, pie), and prints one line
# per server: "<set> <variant> <path>". Used by tests/go/routers and tests/go/fasthttp.
#
# A versions line: <set> <Go version> <tags> <module@version>... A set built without tags
# ("-") leaves out the server files named after the other sets' tags (echo5.go: echo v5 needs a
# newer Go than the old set's).
#
# Modules come from the Go module proxy into a cache outside the clone ($<NAME>_GOMODCACHE,
# default /var/cache/collector-go-<name>/mod); a warm cache needs no network. Go's build cache
# is shared with the other fixtures ($COLLECTOR_GOCACHE, default /var/cache/collector-go/build).
# Output: $TARGET/go-fixtures/<name>-<set>-<variant>/server, rebuilt only when its stamp (set
# line, sources, these scripts) changes.
set -euo pipefail

name=${1:?usage: module-sets.sh <fixture name under tests/go>}
go_root=$(cd "$(dirname "$0")" && pwd)
here=$go_root/$name
repo=$(cd "$go_root/../.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
out_root=$target/go-fixtures
cache_var=$(echo "$name" | tr '[:lower:]' '[:upper:]')_GOMODCACHE
cache=${!cache_var:-/var/cache/collector-go-$name/mod}

mapfile -t lines < <(grep -v '^[[:space:]]*\(#\|$\)' "$here/versions")
src_hash=$(cat "$go_root/module-sets.sh" "$here/build.sh" "$here"/server/*.go | sha256sum | cut -d' ' -f1)
all_tags=$(for line in "${lines[@]}"; do read -r _ _ t _ <<<"$line"; [ "$t" = - ] || echo "$t"; done)

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
    echo "$name build: Go $go_v is not installed at $target/go/$go_v; run: WITH_GO=1 scripts/bootstrap.sh" >&2
    exit 1
  fi
  work=$target/go-$name-src/$set
  mkdir -p "$work"
  rm -f "$work"/*.go
  cp "$here"/server/*.go "$work/"
  for t in $all_tags; do [ "$t" = "$tags" ] || rm -f "$work/$t.go"; done
  export GOMODCACHE=$cache GOCACHE=${COLLECTOR_GOCACHE:-/var/cache/collector-go/build} GOTOOLCHAIN=local CGO_ENABLED=0 GOENV=off
  export GOFLAGS=-mod=mod GOPROXY=${GOPROXY:-https://proxy.golang.org} GOSUMDB=${GOSUMDB:-sum.golang.org}
  if [ ! -f "$work/go.sum" ] || [ "$(cat "$work/.modstamp" 2>/dev/null)" != "$line" ]; then
    {
      printf 'module collector.test/%s\n\ngo %s\n\nrequire (\n' "$name" "$(echo "$go_v" | cut -d. -f1,2)"
      for m in $mods; do printf '\t%s %s\n' "${m%@*}" "${m#*@}"; done
      printf ')\n'
    } > "$work/go.mod"
    rm -f "$work/go.sum"
    # tidy reads every file whatever its build tags (so the untagged set's copy lacks them).
    (cd "$work" && "$go_bin" mod tidy) >"$work/tidy.log" 2>&1 || {
      echo "$name build: go mod tidy for $set failed:" >&2; cat "$work/tidy.log" >&2; exit 1; }
    # The versions asked for, not newer ones tidy may have preferred.
    for m in $mods; do
      got=$(cd "$work" && "$go_bin" list -m -f '{{.Version}}' "${m%@*}")
      [ "$got" = "${m#*@}" ] || { echo "$name build: $set resolved ${m%@*} $got, not ${m#*@}" >&2; exit 1; }
    done
    echo "$line" > "$work/.modstamp"
  fi
  for variant in default stripped pie; do
    dir=$out_root/$name-$set-$variant
    flags=$(variant_flags "$variant")
    stamp="$line|$src_hash|$variant|$flags"
    if [ ! -x "$dir/server" ] || [ "$(cat "$dir/stamp" 2>/dev/null)" != "$stamp" ]; then
      mkdir -p "$dir"
      args=(build -trimpath -o "$dir/server.tmp")
      # VCS stamping (Go 1.18+) would tie the binary to the checkout; Go 1.17 has neither the
      # stamping nor the flag.
      case "$go_v" in 1.17.*) ;; *) args+=(-buildvcs=false) ;; esac
      [ "$tags" != - ] && args+=(-tags "$tags")
      [ -n "$flags" ] && args+=("$flags")
      (cd "$work" && "$go_bin" "${args[@]}" .) >"$dir/build.log" 2>&1 || {
        echo "$name build: $set $variant failed:" >&2; cat "$dir/build.log" >&2; exit 1; }
      mv -f "$dir/server.tmp" "$dir/server"
      echo "$stamp" > "$dir/stamp"
    fi
    echo "$set $variant $dir/server"
  done
done
