#!/usr/bin/env bash
# Builds the router test server (tests/go/routers/server) for each module set in
# tests/go/routers/versions, default, stripped and PIE; prints "<set> <variant> <path>" per
# server. Module cache: $ROUTERS_GOMODCACHE (default /var/cache/collector-go-routers/mod).
# See tests/go/module-sets.sh.
exec "$(dirname "$0")/../module-sets.sh" routers
