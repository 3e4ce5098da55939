#!/usr/bin/env bash
# Density: many python functions on one node, called round robin, against one
# function's throughput, in one run. Each build (A, then B if given) runs as
# `nimbus up`; FUNCTIONS python noops are deployed (density-0 … density-N-1) and one
# more (one); every function is called once (their instances become resident),
# then closed loop ×8 against `one`, then the same spread over all of them with
# `nimbus bench invoke --functions N`, for DURATION seconds each, ROUNDS times.
#
#   A=target/release/nimbus FUNCTIONS=200 scripts/bench-density.sh
#   A=/tmp/old-bin/nimbus B=target/release/nimbus FUNCTIONS=200 scripts/bench-density.sh
#
# The load comes from CLI (default: the last build given), which must know
# `--functions`; an older build is only the server.
# Reports each run's JSON (throughput, latency, cold starts) and the instances the
# node holds after it (`nimbus_node_instances` on /metrics).
set -euo pipefail
cd "$(dirname "$0")/.."
DUR="${DURATION:-10}"
ROUNDS="${ROUNDS:-2}"
COUNT="${FUNCTIONS:-200}"
builds=(A)
[ -n "${B:-}" ] && builds+=(B)
CLI="${CLI:-${B:-${A:?A=path of build A}}}"
for which in "${builds[@]}"; do
  N="${!which:?A=path of build A}"
  (
    source scripts/start-bench.sh embedded 18190
    deploy_noop one
    for i in $(seq 0 $((COUNT - 1))); do deploy_noop "density-$i"; done
    instances() {
      curl -s "$NIMBUS_URL/metrics" | awk '/^nimbus_node_instances[{ ]/ {s += $NF} END {print s + 0}'
    }
    # Every function once: what is resident stays so (or is evicted, if it cannot).
    for i in $(seq 0 $((COUNT - 1))); do
      curl -s -o /dev/null -XPOST "$NIMBUS_URL/v1/functions/density-$i/invoke" \
        -H "Authorization: Bearer $NIMBUS_TOKEN" -d '{}'
    done
    "$CLI" bench invoke one --concurrency 1 --duration 1 --json > /dev/null
    for round in $(seq 1 "$ROUNDS"); do
      echo "== $which round $round: one function, closed loop x8"
      "$CLI" bench invoke one --concurrency 8 --duration "$DUR" --json
      echo "== $which round $round: $COUNT functions in turn, closed loop x8"
      "$CLI" bench invoke density --functions "$COUNT" --concurrency 8 --duration "$DUR" --json
      echo "== $which round $round: instances on the node: $(instances)"
    done
  )
done
