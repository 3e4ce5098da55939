#!/usr/bin/env bash
# Data-path benchmark, embedded (`nimbus up`: router and node agent in one process)
# or distributed (deploy/local-cluster.sh: gateway+router and node agent as separate
# processes, quotas leased in Redis, calls over gRPC). Side by side in one run:
#   1. the floor: a bare loopback HTTP endpoint, at a fixed 1,000 rps and closed-loop x8;
#   2. a warm python noop through Nimbus, the same loads;
#   3. cold starts (code cached on the node) for python3, nodejs and provided.
#
#   cargo build --release -p nimbus && scripts/bench-invoke.sh embedded
#   cargo build --release -p nimbus && scripts/bench-invoke.sh distributed
set -euo pipefail
cd "$(dirname "$0")/.."
N="${NIMBUS_BIN:-target/release/nimbus}"
DUR="${DURATION:-10}"
source scripts/start-bench.sh "${1:-embedded}" 18084

mkdir -p "$dir/py" "$dir/js" "$dir/sh"
printf 'def handler(event, context):\n    return event\n' > "$dir/py/index.py"
printf 'exports.handler = async (event) => event;\n' > "$dir/js/index.js"
cat > "$dir/sh/bootstrap" <<'SH'
#!/bin/sh
API="http://$AWS_LAMBDA_RUNTIME_API/2018-06-01/runtime"
while true; do
  H=$(mktemp); E=$(curl -sS -D "$H" "$API/invocation/next")
  ID=$(grep -i '^lambda-runtime-aws-request-id:' "$H" | cut -d' ' -f2 | tr -d '\r'); rm -f "$H"
  curl -sS -X POST "$API/invocation/$ID/response" -d "$E" > /dev/null
done
SH
chmod +x "$dir/sh/bootstrap"
"$N" fn deploy "$dir/py" --name noop --runtime python3 --handler index.handler > /dev/null
"$N" bench invoke noop --concurrency 1 --duration 1 --json > /dev/null   # warm it

echo "== floor, open loop 1000/s";     "$N" bench floor --rate 1000 --duration "$DUR" --json
echo "== nimbus, open loop 1000/s";    "$N" bench invoke noop --rate 1000 --duration "$DUR" --json
echo "== floor, closed loop x8";       "$N" bench floor --concurrency 8 --duration "$DUR" --json
echo "== nimbus, closed loop x8";      "$N" bench invoke noop --concurrency 8 --duration "$DUR" --json

echo "== cold starts (code cached on the node): init_ms and first-call latency, 15 functions each"
for rt in python3:py:index.handler nodejs:js:index.handler provided:sh:bootstrap; do
  IFS=: read -r runtime src handler <<< "$rt"
  for i in $(seq 1 15); do
    "$N" fn deploy "$dir/$src" --name "cold-$src-$i" --runtime "$runtime" --handler "$handler" > /dev/null
    curl -s -o /dev/null -D - -w 'total_ms=%{time_total}\n' -XPOST "$NIMBUS_URL/v1/functions/cold-$src-$i/invoke" \
      -H "Authorization: Bearer $owner" -d '{}' | tr -d '\r' | grep -E 'x-nimbus-init-ms|total_ms' | tr '\n' ' '
    echo
  done | python3 -c "
import re, sys, statistics
init = []; tot = []
for line in sys.stdin:
    m = re.search(r'x-nimbus-init-ms: (\\d+)', line); t = re.search(r'total_ms=([0-9.]+)', line)
    if m and t:
        init.append(float(m.group(1))); tot.append(float(t.group(1)) * 1000)
init.sort(); tot.sort()
print('$runtime', 'cold starts=%d' % len(init), 'init_ms p50=%.1f max=%.1f' % (statistics.median(init), init[-1]),
      'first-call p50=%.1f ms max=%.1f ms' % (statistics.median(tot), tot[-1]))"
done
