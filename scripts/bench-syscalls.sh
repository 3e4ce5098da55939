#!/usr/bin/env bash
# What the sandbox's seccomp filter (and Landlock) add to a system call, measured
# inside a function: a python handler times 200,000 `getppid` calls (a syscall that
# does nothing, so the filter is most of what is timed) and 20,000 `open`+`close` of
# a file in /tmp (a path walk, which Landlock checks), in one build with
# `node.sandbox = "none"` (A) and sandboxed (B), in alternating rounds.
#
#   N=target/release/nimbus ROUNDS=3 scripts/bench-syscalls.sh
set -euo pipefail
cd "$(dirname "$0")/.."
N="${N:-target/release/nimbus}"
ROUNDS="${ROUNDS:-3}"
for round in $(seq 1 "$ROUNDS"); do
  for which in A B; do
    (
      export NIMBUS_NODE__SPARES=0
      if [ "$which" = A ]; then export NIMBUS_NODE__SANDBOX=none; fi
      source scripts/start-bench.sh embedded 18091
      mkdir -p "$dir/sc"
      cat > "$dir/sc/index.py" <<'PY'
import os, time
def handler(event, context):
    n = 200000
    t = time.perf_counter_ns()
    for _ in range(n):
        os.getppid()
    getppid_ns = (time.perf_counter_ns() - t) / n
    path = "/tmp/bench-open"
    open(path, "w").close()
    m = 20000
    t = time.perf_counter_ns()
    for _ in range(m):
        os.close(os.open(path, os.O_RDONLY))
    open_ns = (time.perf_counter_ns() - t) / m
    return {"getppid_ns": round(getppid_ns, 1), "open_close_ns": round(open_ns, 1)}
PY
      "$N" fn deploy "$dir/sc" --name sc --runtime python3 --handler index.handler > /dev/null
      "$N" fn invoke sc > /dev/null
      printf '%s round %s: ' "$which" "$round"
      "$N" fn invoke sc
    )
  done
done
