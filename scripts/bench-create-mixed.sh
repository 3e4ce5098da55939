#!/usr/bin/env bash
# Creates and asynchronous invokes at once, embedded: `bench create` at concurrency 8
# while one client sends asynchronous invokes (each an autocommit write outside the
# create path's group commit) one after another for 3 s. Prints the invokes'
# latency and the creates' server-side latency, for each build given.
#
#   cargo build --release -p nimbus
#   scripts/bench-create-mixed.sh /tmp/base-bin/nimbus target/release/nimbus
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
fn=$(mktemp -d)
mkdir -p "$fn/echo"
printf 'def handler(event, context):\n    return event\n' > "$fn/echo/index.py"
for b in "$@"; do
  case "$b" in /*) bin="$b" ;; *) bin="$root/$b" ;; esac
  dir=$(mktemp -d)
  NIMBUS_LOG=warn "$bin" up --data-dir "$dir" --listen 127.0.0.1:18084 > "$dir/up.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do [ -f "$dir/admin.key" ] && curl -sf http://127.0.0.1:18084/readyz >/dev/null && break; sleep 0.1; done
  export NIMBUS_URL=http://127.0.0.1:18084
  admin=$(cat "$dir/admin.key")
  owner=$("$bin" --token "$admin" tenant create bench 2>/dev/null | python3 -c 'import json,sys;print(json.load(sys.stdin)["api_key"])')
  curl -sf -XPUT "$NIMBUS_URL/v1/tenants/bench/limits" -H "Authorization: Bearer $admin" -H 'content-type: application/json' \
    -d '{"max_concurrency":100,"rate_per_sec":100000,"max_functions":100000,"max_memory_mb":3072,"max_queued_events":100000}' >/dev/null
  (cd "$fn" && "$bin" --token "$owner" fn deploy echo --runtime python3 --handler index.handler >/dev/null)
  "$bin" --token "$owner" bench create --count 600 --concurrency 8 > "$dir/create.json" 2>/dev/null &
  bp=$!
  sleep 0.5
  echo "== $b"
  python3 - "$owner" <<'PY'
import sys, time, urllib.request
tok = sys.argv[1]
lat = []
end = time.time() + 3
while time.time() < end:
    req = urllib.request.Request(
        "http://127.0.0.1:18084/v1/functions/echo/invoke", data=b'{"a":1}', method="POST",
        headers={"Authorization": "Bearer " + tok, "content-type": "application/json",
                 "x-nimbus-invocation-type": "async"})
    t = time.time()
    with urllib.request.urlopen(req) as r:
        r.read()
    lat.append((time.time() - t) * 1000)
lat.sort()
print("async invokes during the creates: %d, p50 %.1f ms, p99 %.1f ms, max %.1f ms"
      % (len(lat), lat[len(lat) // 2], lat[int(len(lat) * 0.99)], lat[-1]))
PY
  wait $bp
  python3 -c 'import json,sys; o=json.load(open(sys.argv[1])); s=o["server_task_duration"]; print("creates: server p50 %.0f ms, p99 %.0f ms, %.0f tasks/s" % (s["p50_ms"], s["p99_ms"], o["tasks_per_sec"]))' "$dir/create.json"
  kill $pid; wait $pid 2>/dev/null || true; rm -rf "$dir"
done
rm -rf "$fn"
