#!/usr/bin/env bash
# wasm echo through the whole HTTP path, side by side in one run (wrk, POST of a small
# JSON event, keep-alive):
#   1. the floor: nginx `return 200` on loopback;
#   2. Nimbus embedded (`nimbus up`): examples/wasm/echo.c as a `wasm` function,
#      invoked at POST /v1/functions/echo/invoke;
#   3. Spin (its WAGI executor: the same WASI command module, event on stdin, answer
#      on stdout), when `spin` is on PATH or SPIN_BIN names it. Spin cannot be built
#      or installed everywhere (crates.io's `spin-cli` is a placeholder); without it
#      the script says so and compares with the Spin figures recorded in
#      docs/benchmarks.md, relative to the floor of their run.
# Each at 1 connection (latency) and 16 connections (throughput), ROUNDS times,
# alternating, so the three see the same machine.
#
#   apt-get install wrk nginx clang-14 lld-14 wasi-libc libclang-rt-14-dev-wasm32
#   cargo build --release -p nimbus && scripts/bench-peer-spin.sh
set -euo pipefail
cd "$(dirname "$0")/.."
N="${NIMBUS_BIN:-target/release/nimbus}"
DUR="${DURATION:-10}"
ROUNDS="${ROUNDS:-2}"
# Spin 4.0.2 WAGI on this module, recorded with the floor of the same run (issue 18):
# c=1 p50 0.168 ms; c=16 13.1-13.3k/s against a floor of 101-109k/s.
SPIN_C1_P50_MS=0.168
SPIN_C16_PER_FLOOR=0.125
for tool in wrk nginx clang-14; do
  command -v "$tool" > /dev/null || { echo "needs $tool (see the apt-get line above)" >&2; exit 2; }
done
source scripts/start-bench.sh embedded 18094

clang-14 --target=wasm32-wasi -O2 -o "$dir/echo.wasm" examples/wasm/echo.c
mkdir -p "$dir/wasm" && cp "$dir/echo.wasm" "$dir/wasm/"
"$N" fn deploy "$dir/wasm" --name echo --runtime wasm --handler echo.wasm > /dev/null

# The floor.
floor_port=18095
mkdir -p "$dir/nginx"
cat > "$dir/nginx/nginx.conf" <<EOF
worker_processes 1;
pid $dir/nginx/nginx.pid;
error_log $dir/nginx/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $dir/nginx;
  server { listen 127.0.0.1:$floor_port; keepalive_requests 1000000; location / { return 200 '{"ok":true}'; } }
}
EOF
nginx -c "$dir/nginx/nginx.conf"
trap 'kill $pid; nginx -c "$dir/nginx/nginx.conf" -s stop 2>/dev/null; [ -n "${spin_pid:-}" ] && kill $spin_pid; rm -rf "$dir"' EXIT

# Spin, when it is here.
spin="${SPIN_BIN:-$(command -v spin || true)}"
spin_url=""
if [ -n "$spin" ]; then
  mkdir -p "$dir/spin" && cp "$dir/echo.wasm" "$dir/spin/"
  cat > "$dir/spin/spin.toml" <<'EOF'
spin_manifest_version = 2
[application]
name = "echo"
[[trigger.http]]
route = "/..."
component = "echo"
executor = { type = "wagi" }
[component.echo]
source = "echo.wasm"
EOF
  (cd "$dir/spin" && "$spin" up --listen 127.0.0.1:18096 > "$dir/spin/up.log" 2>&1) &
  spin_pid=$!
  for _ in $(seq 1 100); do curl -sf -XPOST -d '{}' http://127.0.0.1:18096/ > /dev/null && break; sleep 0.1; done
  spin_url=http://127.0.0.1:18096/
  echo "Spin: $("$spin" --version)"
else
  echo "Spin is not installed on this machine (no 'spin' on PATH, no SPIN_BIN; crates.io's spin-cli is a placeholder)."
  echo "Comparing with the recorded Spin 4.0.2 figures: c=1 p50 ${SPIN_C1_P50_MS} ms, c=16 ${SPIN_C16_PER_FLOOR} x floor."
fi

cat > "$dir/post.lua" <<'EOF'
wrk.method = "POST"
wrk.body = '{"n":1}'
wrk.headers["Content-Type"] = "application/json"
local token = os.getenv("NIMBUS_TOKEN")
if token and token ~= "" then wrk.headers["Authorization"] = "Bearer " .. token end
EOF
# Warm every target (first calls load the module).
curl -sf -XPOST "$NIMBUS_URL/v1/functions/echo/invoke" -H "Authorization: Bearer $NIMBUS_TOKEN" -d '{"n":1}'; echo
wrk -t1 -c1 -d2 -s "$dir/post.lua" "$NIMBUS_URL/v1/functions/echo/invoke" > /dev/null

# run NAME URL CONNECTIONS: one wrk run, a line "NAME c=C rps=… p50_ms=… p99_ms=… errors=…".
run() {
  local threads=1; [ "$3" -gt 1 ] && threads=2
  wrk -t$threads -c"$3" -d"$DUR" --latency -s "$dir/post.lua" "$2" | python3 -c "
import re, sys
out = sys.stdin.read()
if 'Requests/sec' not in out:
    sys.exit('wrk gave no result for $1 c=$3:\n' + out)
def ms(v):
    m = re.match(r'([\d.]+)(us|ms|s)', v); x = float(m.group(1))
    return x / 1000 if m.group(2) == 'us' else x * 1000 if m.group(2) == 's' else x
rps = float(re.search(r'Requests/sec:\s+([\d.]+)', out).group(1))
# The distribution's lines only (a stdev column may end in 50%).
p50 = ms(re.search(r'^\s+50%\s+(\S+)', out, re.M).group(1)); p99 = ms(re.search(r'^\s+99%\s+(\S+)', out, re.M).group(1))
bad = re.search(r'Non-2xx or 3xx responses: (\d+)', out); err = re.search(r'Socket errors: (.*)', out)
print(f'$1 c=$3 rps={rps:.0f} p50_ms={p50:.3f} p99_ms={p99:.3f} non2xx={bad.group(1) if bad else 0}' + (f' socket_errors=[{err.group(1)}]' if err else ''))
"
}

for round in $(seq 1 "$ROUNDS"); do
  echo "== round $round"
  for c in 1 16; do
    floor=$(run floor "http://127.0.0.1:$floor_port/" $c); echo "$floor"
    ours=$(run nimbus "$NIMBUS_URL/v1/functions/echo/invoke" $c); echo "$ours"
    [ -n "$spin_url" ] && { peer=$(run spin "$spin_url" $c); echo "$peer"; }
    python3 - "$floor" "$ours" "${peer:-}" "$SPIN_C1_P50_MS" "$SPIN_C16_PER_FLOOR" <<'EOF'
import re, sys
def f(line, key):
    m = re.search(key + r'=([\d.]+)', line); return float(m.group(1)) if m else None
floor, ours, peer = sys.argv[1:4]
c = int(f(ours, 'c'))
if c == 1:
    o, fl = f(ours, 'p50_ms'), f(floor, 'p50_ms')
    p = f(peer, 'p50_ms') if peer else float(sys.argv[4])
    src = 'this run' if peer else 'recorded'
    print(f'   c=1: nimbus p50 {o:.3f} ms = {o / fl:.2f} x floor; Spin ({src}) {p:.3f} ms; nimbus/Spin {o / p:.2f}')
else:
    o, fl = f(ours, 'rps'), f(floor, 'rps')
    if peer:
        p, src = f(peer, 'rps'), 'this run'
    else:
        p, src = float(sys.argv[5]) * fl, 'recorded, as a share of this floor'
    print(f'   c=16: nimbus {o:.0f}/s = {o / fl:.3f} x floor; Spin ({src}) {p:.0f}/s; nimbus/Spin {o / p:.2f}')
EOF
  done
done
