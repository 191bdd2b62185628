#!/bin/bash
# Cost per call of the gRPC uprobes (BENCHMARKS.md "gRPC uprobes: cost per call"): BPF run time
# per program (kernel.bpf_stats_enabled) and the client's wall time with and without the probes,
# unary OK calls from one goroutine. Root; needs tests/go/grpc/build.sh and a release collector.
# Usage: tests/go/grpc/cost.sh   (V=grpc-go version, N=calls, EXTRA=collector options)
set -u
cd "$(dirname "$0")/../../.."
F=target/go-fixtures
V=${V:-v1.85.0}
N=${N:-5000}
run_client() { $F/grpc-$V/client -addr $1 -rounds $N -concurrency 1 -mix unary-ok 2>&1 >/dev/null | awk '/elapsed_ns/{print $2}'; }
$F/grpc-$V-default/server -listen 127.0.0.1:0 > ${TMPDIR:-/tmp}/grpc-cost-srv.out & SRV=$!
sleep 0.5; A=$(awk '{print $2}' ${TMPDIR:-/tmp}/grpc-cost-srv.out)
run_client $A >/dev/null  # warm-up
base=$(run_client $A)
echo "without probes: $N calls in $base ns = $((base / N)) ns/call"
sysctl -q kernel.bpf_stats_enabled=1
./target/release/collector --listen 127.0.0.1:0 --go-grpc-uprobes all ${EXTRA:-} > ${TMPDIR:-/tmp}/grpc-cost-col.log 2>&1 & COL=$!
for i in $(seq 1 50); do grep -q "grpc-go server instrumented" ${TMPDIR:-/tmp}/grpc-cost-col.log && break; sleep 0.2; done; sleep 0.5
grep "grpc-go server instrumented" ${TMPDIR:-/tmp}/grpc-cost-col.log | head -1 | cut -c1-250
before=$(bpftool -j prog show | python3 -c 'import json,sys; print(json.dumps({p["name"]:[p.get("run_time_ns",0),p.get("run_cnt",0)] for p in json.load(sys.stdin) if p["name"].startswith("grpc_")}))')
with=$(run_client $A)
after=$(bpftool -j prog show | python3 -c 'import json,sys; print(json.dumps({p["name"]:[p.get("run_time_ns",0),p.get("run_cnt",0)] for p in json.load(sys.stdin) if p["name"].startswith("grpc_")}))')
echo "with probes:    $N calls in $with ns = $((with / N)) ns/call; added $(((with - base) / N)) ns/call"
python3 - "$before" "$after" $N <<'PY'
import json,sys
b=json.loads(sys.argv[1]); a=json.loads(sys.argv[2]); n=int(sys.argv[3])
for k in sorted(a):
    t=a[k][0]-b.get(k,[0,0])[0]; c=a[k][1]-b.get(k,[0,0])[1]
    if c: print(f"{k}: {c} runs ({c/n:.2f} per call), {t/c:.0f} ns per run")
PY
kill $COL; wait $COL 2>/dev/null
sysctl -q kernel.bpf_stats_enabled=0
kill $SRV; wait $SRV 2>/dev/null
