#!/usr/bin/env bash
# wasm compiled at deploy against compiled at the first call, side by side in one
# `nimbus up`: COUNT distinct modules (the C echo of examples/wasm/echo.c, each with
# its own custom section, so each has its own digest), deployed and called once.
# "deploy": each first call loads what the code service compiled at deploy.
# "first call": the same, with the compiled artifact deleted from object storage
# before the call, so the node compiles as it did before session 13.
# Prints, per side, the deploy time (fn deploy: create -> Active) and the first
# call's x-nimbus-init-ms and round trip, p50 and max.
#
#   N=target/release/nimbus COUNT=20 scripts/bench-wasm-deploy.sh
# Needs clang-14, lld-14, wasi-libc and libclang-rt-14-dev-wasm32.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${N:-target/release/nimbus}"
COUNT="${COUNT:-20}"
command -v clang-14 >/dev/null && [ -f /usr/lib/wasm32-wasi/libc.a ] || {
  echo "needs clang-14 and wasi-libc: apt-get install clang-14 lld-14 wasi-libc libclang-rt-14-dev-wasm32" >&2
  exit 2
}
source scripts/start-bench.sh embedded 18190
clang-14 --target=wasm32-wasi -O2 -o "$dir/echo.wasm" examples/wasm/echo.c
echo "module: $(stat -c %s "$dir/echo.wasm") bytes"
for side in deploy first-call; do
  for i in $(seq 1 "$COUNT"); do
    d="$dir/$side-$i"; mkdir -p "$d"
    # A custom section ("n", the side and index) makes each module's digest its own.
    python3 - "$dir/echo.wasm" "$d/module.wasm" "$side-$i" <<'PY'
import sys
data = open(sys.argv[1], 'rb').read()
payload = b'\x01n' + sys.argv[3].encode()
open(sys.argv[2], 'wb').write(data + bytes([0, len(payload)]) + payload)
PY
    t0=$(date +%s%N)
    "$N" fn deploy "$d" --name "w-$side-$i" --runtime wasm --handler module.wasm > /dev/null
    t1=$(date +%s%N)
    if [ "$side" = first-call ]; then rm -rf "$dir/objects/wasm"; fi
    curl -s -o /dev/null -D "$d/h" -w '%{time_total}\n' -XPOST "$NIMBUS_URL/v1/functions/w-$side-$i/invoke" \
      -H "Authorization: Bearer $NIMBUS_TOKEN" -d '{"n": 1}' > "$d/t"
    init=$(tr -d '\r' < "$d/h" | sed -n 's/^x-nimbus-init-ms: //p')
    echo "$side $(( (t1 - t0) / 1000 )) $init $(cat "$d/t")"
  done
done | python3 -c "
import statistics, sys
rows = {}
for line in sys.stdin:
    side, deploy_us, init, total = line.split()
    rows.setdefault(side, []).append((int(deploy_us) / 1000, float(init), float(total) * 1000))
for side, r in rows.items():
    col = lambda i: sorted(x[i] for x in r)
    d, i, t = col(0), col(1), col(2)
    print(f'{side:>10}: n={len(r)} deploy p50 {statistics.median(d):.0f} ms max {d[-1]:.0f} | '
          f'first call init_ms p50 {statistics.median(i):.1f} max {i[-1]:.1f} | round trip p50 {statistics.median(t):.2f} ms max {t[-1]:.2f}')
"
