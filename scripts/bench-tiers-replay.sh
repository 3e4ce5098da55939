#!/usr/bin/env bash
# Issue 5, third part. Side by side in one run:
#   1. code fetch per cache tier (`nimbus bench code-fetch`): object storage, the
#      zone cache (miss and hit), node-local — with object storage a local directory,
#      then S3 (s3s-fs on loopback);
#   2. `nimbus replay --live` of one slice of the Azure sample against `nimbus up`,
#      under the predictor (hybrid) and under the fixed 10-minute keep-alive, both
#      scaled to the speedup, beside the offline replay of the same slice.
#
#   cargo build --release -p nimbus && scripts/bench-tiers-replay.sh
set -euo pipefail
cd "$(dirname "$0")/.."
N="${NIMBUS_BIN:-target/release/nimbus}"
TRACE="${TRACE:-../shared/traces/azure-functions-2019-sample}"
SPEEDUP="${SPEEDUP:-60}"
FUNCTIONS="${FUNCTIONS:-30}"
FROM="${FROM_MINUTE:-0}"
MINUTES="${MINUTES:-120}"
MAXPM="${MAX_PER_MINUTE:-100}"
SIZE_KB="${SIZE_KB:-1024}"

if [ -z "${SKIP_TIERS:-}" ]; then
echo "== code fetch per tier, ${SIZE_KB} KiB packages, object storage: local directory"
"$N" bench code-fetch --size-kb "$SIZE_KB" --iterations 30

s3dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
s3s-fs --host 127.0.0.1 --port "$port" --access-key bench --secret-key bench-secret "$s3dir" > /dev/null 2>&1 &
s3pid=$!
trap 'kill $s3pid 2>/dev/null; rm -rf "$s3dir"' EXIT
for _ in $(seq 1 50); do (echo > /dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
echo "== code fetch per tier, ${SIZE_KB} KiB packages, object storage: S3 (s3s-fs on loopback)"
"$N" bench code-fetch --size-kb "$SIZE_KB" --iterations 30 \
  --s3-endpoint "http://127.0.0.1:$port" --bucket bench --access-key bench --secret-key bench-secret
fi

# The node's clock is not sped up: its predictor bins, fallback keep-alive and the
# worth of a cold start are divided by the speedup, as the report suggests.
bin=$(python3 -c "print(max(100, round(10000 / $SPEEDUP)))")
keep=$(python3 -c "print(round(600000 / $SPEEDUP))")
cost=$(python3 -c "print(max(1, round(300000 / $SPEEDUP)))")
for policy in "hybrid:${cost}ms" "fixed:${keep}ms"; do
  echo "== live replay, node.keep_alive_policy=$policy (bins ${bin} ms), ${FUNCTIONS} functions, trace minutes $FROM..$((FROM + MINUTES)), ${SPEEDUP}x"
  (
    export NIMBUS_NODE__KEEP_ALIVE_POLICY="$policy" NIMBUS_NODE__PREDICTOR_BIN_MS="$bin" NIMBUS_NODE__KEEP_ALIVE_MS="$keep"
    source scripts/start-bench.sh embedded 18094
    "$N" replay --trace "$TRACE" --live --speedup "$SPEEDUP" --functions "$FUNCTIONS" \
      --from-minute "$FROM" --minutes "$MINUTES" --max-per-minute "$MAXPM" \
      --policy none --policy fixed:10m --policy hybrid \
      | python3 -c "
import json, sys
r = json.load(sys.stdin)
print('live: invocations=%d succeeded=%d cold_starts=%d (%.2f%%) idle_instance_s=%s errors=%s wall=%.0fs latency p50=%.1f ms p99=%.1f ms send lateness p99=%.1f ms' % (
  r['invocations'], r['succeeded'], r['cold_starts'], 100 * r['cold_start_rate'],
  '%.0f' % r['idle_instance_seconds'] if r['idle_instance_seconds'] is not None else 'n/a', r['errors'], r['wall_seconds'],
  r['latency']['p50_ms'], r['latency']['p99_ms'], r['send_lateness']['p99_ms']))
for o in r['offline']:
  print('offline %-10s cold_starts=%d (%.2f%%) idle_instance_s=%.0f' % (o['policy'], o['cold_starts'], 100 * o['cold_start_rate'], o['idle_instance_seconds']))
"
  )
done
