#!/usr/bin/env bash
# Control-plane benchmark: create → Active latency and tasks per second, in the
# embedded mode (nimbus up) or distributed (deploy/local-cluster.sh), at each
# concurrency given. Prints one JSON report per concurrency (and, embedded, the
# server's CPU time per create).
#
#   cargo build --release -p nimbus
#   scripts/bench-control-plane.sh embedded 1 8
#   scripts/bench-control-plane.sh distributed 1 8
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:?embedded|distributed}"; shift
N="${NIMBUS_BIN:-target/release/nimbus}"
count="${COUNT:-300}"
case "$mode" in
  embedded)
    dir=$(mktemp -d)
    NIMBUS_LOG=warn "$N" up --data-dir "$dir" --listen 127.0.0.1:18082 > "$dir/up.log" 2>&1 &
    pid=$!
    trap 'kill $pid; rm -rf "$dir"' EXIT
    for _ in $(seq 1 100); do [ -f "$dir/admin.key" ] && curl -sf http://127.0.0.1:18082/readyz >/dev/null && break; sleep 0.1; done
    export NIMBUS_URL=http://127.0.0.1:18082
    admin=$(cat "$dir/admin.key")
    ;;
  distributed)
    out=$(NIMBUS_PORT=18090 NIMBUS_BIN="$N" deploy/local-cluster.sh start)
    trap 'deploy/local-cluster.sh stop' EXIT
    export NIMBUS_URL=$(echo "$out" | sed -n 's/^NIMBUS_URL=//p')
    admin=$(echo "$out" | sed -n 's/^ADMIN_KEY=//p')
    for _ in $(seq 1 100); do curl -sf "$NIMBUS_URL/readyz" >/dev/null && break; sleep 0.1; done
    sleep 1
    ;;
  *) echo "mode must be embedded or distributed" >&2; exit 2 ;;
esac
owner=$("$N" --token "$admin" tenant create bench | python3 -c 'import json,sys;print(json.load(sys.stdin)["api_key"])')
curl -sf -XPUT "$NIMBUS_URL/v1/tenants/bench/limits" -H "Authorization: Bearer $admin" -H 'content-type: application/json' \
  -d '{"max_concurrency":100,"rate_per_sec":100000,"max_functions":100000,"max_memory_mb":3072}' >/dev/null
# Embedded, the server's CPU time per create is printed after each report (read from
# /proc). The functions are kept: the run's data goes with the run (the temporary
# directory, or the cluster's schema when it stops).
cpu() { if [ "$mode" = embedded ]; then awk '{print $14+$15}' "/proc/$pid/stat"; else echo 0; fi; }
for c in "$@"; do
  before=$(cpu)
  "$N" --token "$owner" bench create --count "$count" --concurrency "$c" --poll-ms "${POLL_MS:-2}" --keep
  after=$(cpu)
  if [ "$mode" = embedded ]; then
    python3 -c "print('server CPU per create: %.2f ms' % (($after - $before) * 1000 / $(getconf CLK_TCK) / $count))"
  fi
done
