#!/usr/bin/env bash
# The first second of a burst: a warm noop (python3, or RUNTIME=nodejs) called at
# concurrency 1, then at once by 16 connections. Reports the p50 at concurrency 1,
# the burst's first second, the steady state after it (5 s more at 16), and the
# instances the node then holds, per build (A, then B if given), ROUNDS times each,
# every round on a fresh `nimbus up`.
#
#   A=/tmp/old-bin/nimbus B=target/release/nimbus ROUNDS=3 scripts/bench-burst.sh
#   RUNTIME=nodejs A=target/release/nimbus scripts/bench-burst.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-3}"
BURST="${BURST:-16}"
builds=(A)
[ -n "${B:-}" ] && builds+=(B)
for round in $(seq 1 "$ROUNDS"); do
  for which in "${builds[@]}"; do
    N="${!which:?A=path of build A}"
    (
      source scripts/start-bench.sh embedded 18290
      deploy_noop noop "${RUNTIME:-python3}"
      "$N" bench invoke noop --concurrency 1 --duration 2 --json > /dev/null
      one=$("$N" bench invoke noop --concurrency 1 --duration 2 --json)
      first=$("$N" bench invoke noop --concurrency "$BURST" --duration 1 --json)
      steady=$("$N" bench invoke noop --concurrency "$BURST" --duration 5 --json)
      held=$(curl -s "$NIMBUS_URL/metrics" | awk '/^nimbus_node_instances[{ ]/ {s += $NF} END {print s + 0}')
      python3 - "$which" "$round" "$first" "$steady" "$held" "$one" <<'EOF'
import json, sys
which, rnd, first, steady, held = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4]), sys.argv[5]
one = json.loads(sys.argv[6])
f, s = first["throughput_per_s"], steady["throughput_per_s"]
print(f"{which} round {rnd}: c=1 p50 {one['latency_ms']['p50']:.3f} ms; first second {f:,.0f}/s (p99 {first['latency_ms']['p99']:.1f} ms, "
      f"{first['cold_starts']} cold), steady {s:,.0f}/s, first/steady {f / s:.0%}, instances {held}")
EOF
    )
  done
done
