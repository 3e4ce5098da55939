#!/usr/bin/env bash
# CPU per call of every process on the machine, while a warm python noop is called
# at 1,000/s (open loop) and by 8 connections (closed loop), DUR seconds each
# (default 10). MODE=distributed (default: deploy/local-cluster.sh, spares off) or
# embedded. N: the nimbus build under test; CLI: the one sending the load
# (default N); CLUSTER_SCRIPT: an older checkout's local-cluster.sh.
#
#   N=target/release/nimbus scripts/bench-cpu-per-call.sh
#   CLUSTER_SCRIPT=/tmp/old-src/deploy/local-cluster.sh N=/tmp/old-bin/nimbus \
#     CLI=target/release/nimbus scripts/bench-cpu-per-call.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export NIMBUS_NODE__SPARES=0
source scripts/start-bench.sh ${MODE:-distributed} 18090
CLI=${CLI:-$N}
deploy_noop noop
"$CLI" bench invoke noop --concurrency 1 --duration 2 --json > /dev/null
# MODES: the loads, comma-separated (default "--rate 1000,--concurrency 8").
IFS=',' read -ra modes <<< "${MODES:---rate 1000,--concurrency 8}"
for mode in "${modes[@]}"; do
  python3 scripts/cpu-per-process.py snap "$dir/s1.json"
  out=$("$CLI" bench invoke noop $mode --duration ${DUR:-10} --json)
  python3 scripts/cpu-per-process.py snap "$dir/s2.json"
  n=$(echo "$out" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["ok"])')
  echo "== $mode: $(echo "$out" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(round(d["throughput_per_s"]), "/s p50", d["latency_ms"]["p50"], "p99", d["latency_ms"]["p99"], "cold", d["cold_starts"])')"
  python3 scripts/cpu-per-process.py diff "$dir/s1.json" "$dir/s2.json" "$n"
done
