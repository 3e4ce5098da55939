#!/usr/bin/env bash
# Data-path benchmark, embedded (`nimbus up`: router and node agent in one process)
# or distributed (deploy/local-cluster.sh: gateway+router and node agent as separate
# processes, quotas leased in Redis, calls over gRPC). Side by side in one run:
#   1. the floor: a bare loopback HTTP endpoint, at a fixed 1,000 rps and closed-loop x8;
#   2. a warm python noop through Nimbus, the same loads;
#   3. cold starts (code cached on the node) for python3, nodejs (from spares), and
#      provided (a sh + curl bootstrap, and a Rust binary built with lambda_runtime);
#   4. wasm: a C module (examples/wasm/echo.c, when clang-14 and wasi-libc are
#      installed) warm at 1,000 rps, and its cold start in the node's code
#      (`nimbus bench wasm`: precompiled on disk, not in memory).
#
#   cargo build --release -p nimbus --bins --example lambda_rust_echo && scripts/bench-invoke.sh embedded
#   cargo build --release -p nimbus && scripts/bench-invoke.sh distributed
set -euo pipefail
cd "$(dirname "$0")/.."
N="${NIMBUS_BIN:-target/release/nimbus}"
DUR="${DURATION:-10}"
source scripts/start-bench.sh "${1:-embedded}" 18084

mkdir -p "$dir/js" "$dir/sh"
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
colds="python3:py:index.handler nodejs:js:index.handler provided:sh:bootstrap"
rust_echo="$(dirname "$N")/examples/lambda_rust_echo"
if [ -x "$rust_echo" ]; then
  mkdir -p "$dir/rs" && cp "$rust_echo" "$dir/rs/bootstrap"
  colds="$colds provided:rs:bootstrap"
else
  echo "(no $rust_echo: build it with --example lambda_rust_echo for the Rust provided row)"
fi
deploy_noop noop
"$N" bench invoke noop --concurrency 1 --duration 1 --json > /dev/null   # warm it

echo "== floor, open loop 1000/s";     "$N" bench floor --rate 1000 --duration "$DUR" --json
echo "== nimbus, open loop 1000/s";    "$N" bench invoke noop --rate 1000 --duration "$DUR" --json
echo "== floor, closed loop x8";       "$N" bench floor --concurrency 8 --duration "$DUR" --json
echo "== nimbus, closed loop x8";      "$N" bench invoke noop --concurrency 8 --duration "$DUR" --json

echo "== cold starts (code cached on the node): init_ms and first-call latency, 15 functions each"
for rt in $colds; do
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
print('$runtime/$src', 'cold starts=%d' % len(init), 'init_ms p50=%.1f max=%.1f' % (statistics.median(init), init[-1]),
      'first-call p50=%.1f ms max=%.1f ms' % (statistics.median(tot), tot[-1]))"
done

if command -v clang-14 >/dev/null && [ -f /usr/lib/wasm32-wasi/libc.a ]; then
  mkdir -p "$dir/wasm"
  clang-14 --target=wasm32-wasi -O2 -o "$dir/wasm/module.wasm" examples/wasm/echo.c
  "$N" fn deploy "$dir/wasm" --name wasm-echo --runtime wasm --handler module.wasm > /dev/null
  "$N" bench invoke wasm-echo --concurrency 1 --duration 1 --json > /dev/null   # compile it
  echo "== wasm (C echo), open loop 1000/s"; "$N" bench invoke wasm-echo --rate 1000 --duration "$DUR" --json
  echo "== wasm (C echo), closed loop x8";   "$N" bench invoke wasm-echo --concurrency 8 --duration "$DUR" --json
  echo "== wasm cold start in the node's code (module precompiled on disk, not in memory)"
  "$N" bench wasm "$dir/wasm/module.wasm" --iterations 500
else
  echo "(clang-14 / wasi-libc missing: apt-get install clang-14 lld-14 wasi-libc libclang-rt-14-dev-wasm32 for the wasm rows)"
fi
