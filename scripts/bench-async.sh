#!/usr/bin/env bash
# Asynchronous delivery and triggers, embedded (`nimbus up`) or distributed
# (deploy/local-cluster.sh: RabbitMQ, PostgreSQL, Redis, separate processes):
#   1. async: COUNT events queued by 8 senders to a python noop, then drained:
#      accept latency, drain rate, enqueue → start and enqueue → finish latency;
#   2. http trigger against direct invoke, same function, same loads (open loop
#      1,000/s and closed loop x8);
#   3. timer jitter: an every-second timer for TIMER_S seconds; the function logs the
#      tick it was fired for; jitter = log time − tick (fire, queue, run).
#
#   cargo build --release -p nimbus && scripts/bench-async.sh embedded
#   cargo build --release -p nimbus && scripts/bench-async.sh distributed
set -euo pipefail
cd "$(dirname "$0")/.."
N="${NIMBUS_BIN:-target/release/nimbus}"
DUR="${DURATION:-10}"
COUNT="${COUNT:-2000}"
TIMER_S="${TIMER_S:-20}"
source scripts/start-bench.sh "${1:-embedded}" 18184

mkdir -p "$dir/tick"
printf 'def handler(event, context):\n    print("TICK " + event["time"])\n' > "$dir/tick/index.py"
deploy_noop noop
"$N" bench invoke noop --concurrency 1 --duration 1 --json > /dev/null   # warm it

echo "== async: $COUNT events, 8 senders"
"$N" bench async noop --count "$COUNT" --concurrency 8

"$N" trigger add noop --type http --path /noop --method POST --public > /dev/null
echo "== direct invoke, open loop 1000/s";  "$N" bench invoke noop --rate 1000 --duration "$DUR" --json
echo "== http trigger, open loop 1000/s";   "$N" bench invoke noop --target /t/bench/noop --rate 1000 --duration "$DUR" --json
echo "== direct invoke, closed loop x8";    "$N" bench invoke noop --concurrency 8 --duration "$DUR" --json
echo "== http trigger, closed loop x8";     "$N" bench invoke noop --target /t/bench/noop --concurrency 8 --duration "$DUR" --json

echo "== timer jitter: every second for ${TIMER_S} s"
"$N" fn deploy "$dir/tick" --name tick --runtime python3 --handler index.handler > /dev/null
"$N" trigger add tick --type timer --cron '* * * * * *' > /dev/null
sleep "$TIMER_S"
"$N" fn logs tick --limit 1000 | python3 -c '
import sys, datetime, statistics
def ms(s):
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp() * 1000
j = []
for line in sys.stdin:
    parts = line.split()
    if "TICK" in parts:
        j.append(ms(parts[0]) - ms(parts[parts.index("TICK") + 1]))
j.sort()
print("ticks=%d jitter_ms p50=%.1f p99=%.1f max=%.1f" % (len(j), statistics.median(j), j[int(len(j) * 0.99) - 1 if len(j) > 1 else 0], j[-1]))'
