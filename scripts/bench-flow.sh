#!/usr/bin/env bash
# State machines: a chain of noop Tasks end to end (client-side and the execution's
# own start → stop), against the same calls made by hand from the client in the same
# run; then transitions per second: 4×COUNT Pass chains (at most 1,000) started at
# once, timed from the first start to the last stop.
#
#   N=target/release/nimbus STATES=10 COUNT=50 scripts/bench-flow.sh [embedded|distributed]
#
# SERVER=path runs that build as the platform (its engine) with N as the client,
# to compare two builds with the same measurement.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${N:?N=path of the nimbus binary}"
client="$N"
N="${SERVER:-$N}"
export NIMBUS_NODE__SPARES=0
source scripts/start-bench.sh "${1:-embedded}" 18094
"$client" bench flow --states "${STATES:-10}" --count "${COUNT:-50}" --concurrency "${CONCURRENCY:-8}"
