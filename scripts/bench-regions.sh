#!/usr/bin/env bash
# Identity propagation between regions: the loopback cluster with 2 regions
# (deploy/local-cluster.sh start --regions 2), then `nimbus bench propagation` both
# ways: a key made in one region polled (every 1 ms) in the other until accepted,
# then revoked and polled until refused; beside it, one request to the other region
# (the floor the polling itself costs).
#
#   N=target/release/nimbus COUNT=50 scripts/bench-regions.sh
set -euo pipefail
cd "$(dirname "$0")/.."
N="${N:?N=path of the nimbus binary}"
COUNT="${COUNT:-50}"
export NIMBUS_CLUSTER_DIR="$(mktemp -d)/cluster"
trap 'NIMBUS_BIN="$N" deploy/local-cluster.sh stop; rm -rf "$(dirname "$NIMBUS_CLUSTER_DIR")"' EXIT
NIMBUS_LOG=warn NIMBUS_BIN="$N" deploy/local-cluster.sh start --regions 2 > /dev/null
json="$NIMBUS_CLUSTER_DIR/cluster.json"
field() { python3 -c "import json,sys; d=json.load(open('$json')); print($1)"; }
admin=$(field 'd["admin_key"]')
a=$(field 'd["regions"][0]["url"]'); b=$(field 'd["regions"][1]["url"]')
for url in "$a" "$b"; do
  for _ in $(seq 1 100); do
    curl -sf "$url/readyz" | grep -q '"connected":true' && break; sleep 0.1
  done
done
echo "== $(field 'd["regions"][0]["name"]') -> $(field 'd["regions"][1]["name"]')"
"$N" --url "$a" --token "$admin" bench propagation --to "$b" --count "$COUNT"
echo "== $(field 'd["regions"][1]["name"]') -> $(field 'd["regions"][0]["name"]')"
"$N" --url "$b" --token "$admin" bench propagation --to "$a" --count "$COUNT"
