#!/usr/bin/env bash
# The data path before and after a change, side by side in one run: two builds of
# nimbus (A, B), each as `nimbus up`, a warm python noop at 1,000 rps open loop and
# closed loop x8, and python cold starts (code cached, spares off), in alternating
# rounds (A, B, A, B) so the machine's drift hits both; the bare loopback floor
# first.
#
#   A=/tmp/old-bin/nimbus B=/tmp/new-bin/nimbus ROUNDS=2 DURATION=10 scripts/bench-sandbox.sh
#   A=target/release/nimbus A_SANDBOX=none B=target/release/nimbus scripts/bench-sandbox.sh
# MODE=distributed runs each side as deploy/local-cluster.sh (separate processes,
# PostgreSQL, RabbitMQ, Redis) instead of `nimbus up`. A_ENV / B_ENV: more
# NAME=value settings for that side, space-separated (e.g.
# B_ENV=NIMBUS_NODE__PLATFORM_LOG_LINES=false).
# (A_SANDBOX / B_SANDBOX set node.sandbox for that side: `none` is a plain process,
# the floor of what the sandbox costs. A_OTLP / B_OTLP set that side's
# OTEL_EXPORTER_OTLP_ENDPOINT: tracing on, exporting to a collector there, e.g.
# `cargo run -p nimbus --example otlp_sink -- 127.0.0.1:4317`.)
set -euo pipefail
cd "$(dirname "$0")/.."
DUR="${DURATION:-10}"
ROUNDS="${ROUNDS:-2}"
N="${A:?A=path of build A}"
echo "== floor, open loop 1000/s"; "$N" bench floor --rate 1000 --duration "$DUR" --json
echo "== floor, closed loop x8";   "$N" bench floor --concurrency 8 --duration "$DUR" --json
for round in $(seq 1 "$ROUNDS"); do
  for which in A B; do
    N="${!which}"
    (
      export NIMBUS_NODE__SPARES=0
      sandbox_var="${which}_SANDBOX"
      if [ -n "${!sandbox_var:-}" ]; then export NIMBUS_NODE__SANDBOX="${!sandbox_var}"; fi
      otlp_var="${which}_OTLP"
      if [ -n "${!otlp_var:-}" ]; then export OTEL_EXPORTER_OTLP_ENDPOINT="${!otlp_var}"; fi
      env_var="${which}_ENV"
      for kv in ${!env_var:-}; do export "${kv?}"; done
      source scripts/start-bench.sh "${MODE:-embedded}" 18090
      deploy_noop noop
      "$N" bench invoke noop --concurrency 1 --duration 1 --json > /dev/null
      echo "== $which round $round: open loop 1000/s"; "$N" bench invoke noop --rate 1000 --duration "$DUR" --json
      echo "== $which round $round: closed loop x8";   "$N" bench invoke noop --concurrency 8 --duration "$DUR" --json
      echo "== $which round $round: python cold starts (code cached, no spares), init_ms"
      for i in $(seq 1 10); do
        deploy_noop "cold-$i"
        curl -s -o /dev/null -D - -XPOST "$NIMBUS_URL/v1/functions/cold-$i/invoke" \
          -H "Authorization: Bearer $NIMBUS_TOKEN" -d '{}' | tr -d '\r' | sed -n 's/^x-nimbus-init-ms: //p'
      done | sort -n | tr '\n' ' '; echo
    )
  done
done
