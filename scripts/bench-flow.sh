#!/usr/bin/env bash
# State machines: a chain of noop Tasks end to end (client-side and the execution's
# own start → stop), against the same calls made by hand from the client in the same
# run; then transitions per second with Pass chains, several executions at once.
#
#   N=target/release/nimbus STATES=10 COUNT=50 scripts/bench-flow.sh [embedded|distributed]
set -euo pipefail
cd "$(dirname "$0")/.."
N="${N:?N=path of the nimbus binary}"
export NIMBUS_NODE__SPARES=0
source scripts/start-bench.sh "${1:-embedded}" 18094
"$N" bench flow --states "${STATES:-10}" --count "${COUNT:-50}" --concurrency "${CONCURRENCY:-8}"
