#!/usr/bin/env bash
# Runs Nimbus distributed on this machine: every service its own process (gateway,
# workflow, code, network, resource, and a compute node agent), over RabbitMQ,
# PostgreSQL, Redis and an S3-protocol server (s3s-fs), as in production but on
# loopback. Used by the distributed benchmarks in docs/benchmarks.md.
#
#   deploy/local-cluster.sh start   # prints NIMBUS_URL and the admin key
#   NIMBUS_QUOTAS=local deploy/local-cluster.sh start   # quotas counted by the one
#                                                      # gateway, not leased in Redis
#   deploy/local-cluster.sh stop
#
# Needs: RabbitMQ on 127.0.0.1:5672, PostgreSQL on 127.0.0.1:5432 (trust, db test),
# Redis on 127.0.0.1:6379,
# s3s-fs on PATH (cargo install s3s-fs@0.14.1 --locked --features binary), and a
# built nimbus (NIMBUS_BIN, default target/release/nimbus).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
run="${NIMBUS_CLUSTER_DIR:-/tmp/nimbus-cluster}"
bin="${NIMBUS_BIN:-$here/target/release/nimbus}"

stop() {
  if [ -f "$run/pids" ]; then
    while read -r pid; do kill "$pid" 2>/dev/null || true; done < "$run/pids"
    rm -f "$run/pids"
  fi
}

case "${1:-start}" in
  stop) stop; exit 0 ;;
  start) ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac

stop
rm -rf "$run"; mkdir -p "$run/s3"
id="c$(date +%s)"
s3port=$((20000 + RANDOM % 10000))
regport=$((30000 + RANDOM % 10000))
cat > "$run/nimbus.toml" <<TOML
[database]
url = "postgres://postgres@127.0.0.1:5432/test"
schema = "nimbus_$id"

[bus]
kind = "amqp"
url = "amqp://guest:guest@127.0.0.1:5672/%2f"
prefix = "nimbus-$id"

[objects]
kind = "s3"
bucket = "nimbus-$id"
endpoint = "http://127.0.0.1:$s3port"
access_key = "nimbus"
secret_key = "nimbus-secret"

[api]
listen = "127.0.0.1:${NIMBUS_PORT:-8080}"
jwt_secret = "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
admin_key_file = "$run/admin.key"

[resource]
listen = "127.0.0.1:$regport"
endpoint = "http://127.0.0.1:$regport"

$(if [ "${NIMBUS_QUOTAS:-redis}" = redis ]; then printf '[router]\nredis_url = "redis://127.0.0.1:6379/0"\nredis_prefix = "nimbus-%s"\n' "$id"; fi)

[node]
listen = "127.0.0.1:0"
work_dir = "$run/node"

[secrets]
key = "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
TOML

s3s-fs --host 127.0.0.1 --port "$s3port" --access-key nimbus --secret-key nimbus-secret "$run/s3" > "$run/s3s-fs.log" 2>&1 &
echo $! >> "$run/pids"
for _ in $(seq 1 50); do (echo > /dev/tcp/127.0.0.1/$s3port) 2>/dev/null && break; sleep 0.1; done

"$bin" serve api-gateway --config "$run/nimbus.toml" > "$run/api-gateway.log" 2>&1 &
echo $! >> "$run/pids"
for _ in $(seq 1 100); do grep -q '^listening on' "$run/api-gateway.log" 2>/dev/null && break; sleep 0.1; done
for svc in workflow code network resource node; do
  "$bin" serve "$svc" --config "$run/nimbus.toml" > "$run/$svc.log" 2>&1 &
  echo $! >> "$run/pids"
done
url="$(sed -n 's/^listening on //p' "$run/api-gateway.log")"
echo "NIMBUS_URL=$url"
echo "ADMIN_KEY=$(cat "$run/admin.key")"
