#!/usr/bin/env bash
# The Lambda-compatible Invoke against the native invoke: one build as `nimbus up`, one
# warm python noop, the same load through `POST /v1/functions/noop/invoke` (bearer
# key) and `POST /2015-03-31/functions/noop/invocations` (each call signed with
# Signature V4 by the client and checked by the gateway), alternating in rounds so
# the machine's drift hits both; the bare loopback floor first.
#
#   N=target/release/nimbus ROUNDS=3 DURATION=10 scripts/bench-lambda.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DUR="${DURATION:-10}"
ROUNDS="${ROUNDS:-3}"
N="${N:?N=path of the nimbus binary}"
export NIMBUS_NODE__SPARES=0
source scripts/start-bench.sh embedded 18092
deploy_noop noop
"$N" bench invoke noop --concurrency 16 --duration 1 --json > /dev/null
for c in 1 16; do
  echo "== floor, closed loop x$c"; "$N" bench floor --concurrency "$c" --duration "$DUR" --json
  for round in $(seq 1 "$ROUNDS"); do
    echo "== native round $round, closed loop x$c"
    "$N" bench invoke noop --concurrency "$c" --duration "$DUR" --json
    echo "== lambda round $round, closed loop x$c"
    "$N" bench invoke noop --lambda --concurrency "$c" --duration "$DUR" --json
  done
done
