#!/usr/bin/env bash
# Builds the fasthttp/fiber test server (tests/go/fasthttp/server) for each module set in
# tests/go/fasthttp/versions, default, stripped and PIE; prints "<set> <variant> <path>" per
# server. Module cache: $FASTHTTP_GOMODCACHE (default /var/cache/collector-go-fasthttp/mod).
# See tests/go/module-sets.sh.
exec "$(dirname "$0")/../module-sets.sh" fasthttp
