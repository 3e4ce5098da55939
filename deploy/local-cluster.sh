#!/usr/bin/env bash
# Runs Nimbus distributed on this machine: every service its own process, over
# RabbitMQ, PostgreSQL, Redis and an S3-protocol server (s3s-fs), as in production but
# on loopback. Used by the distributed benchmarks in docs/benchmarks.md and by the
# multi-region end-to-end test (nimbus/tests/multi_region.rs).
#
#   deploy/local-cluster.sh start   # one region: gateway, workflow, code, network,
#                                   # resource and one node; prints NIMBUS_URL and the
#                                   # admin key
#   NIMBUS_QUOTAS=local deploy/local-cluster.sh start   # quotas counted by the one
#                                                      # gateway, not leased in Redis
#   deploy/local-cluster.sh start --regions 2   # the global directory (its own
#        # database) and 2 regions × 2 zones × 2 nodes: per region a RabbitMQ vhost,
#        # a PostgreSQL database, a Redis database, an s3s-fs, a gateway, the
#        # workflow, code, network and resource services, and each zone's code cache.
#        # Writes $NIMBUS_CLUSTER_DIR/cluster.json (regions with url, zones and pids;
#        # the directory; the admin key).
#   deploy/local-cluster.sh restart REGION|directory   # starts again what was killed
#   deploy/local-cluster.sh stop    # ends everything it started, drops its databases
#                                   # and vhosts
#
# Needs: RabbitMQ on 127.0.0.1:5672 (and rabbitmqctl, for vhosts), PostgreSQL on
# 127.0.0.1:5432 (trust, db test), Redis on 127.0.0.1:6379,
# s3s-fs on PATH (cargo install s3s-fs@0.14.1 --locked --features binary), and a
# built nimbus (NIMBUS_BIN, default target/release/nimbus).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
run="${NIMBUS_CLUSTER_DIR:-/tmp/nimbus-cluster}"
bin="${NIMBUS_BIN:-$here/target/release/nimbus}"
# Each process runs one tokio worker (TOKIO_WORKER_THREADS, which tokio reads;
# set it to override). All the roles share this machine's cores, and with a worker
# per core in every process each wake-up of another worker is a cross-thread
# hand-off that waits for a core: one worker serves 27-47 % more calls a second
# through one region (docs/benchmarks.md, "One worker per process"). A machine per
# role would keep tokio's default of one worker per core.
export TOKIO_WORKER_THREADS="${TOKIO_WORKER_THREADS:-1}"
REGION_NAMES=(ap-guangzhou ap-shanghai ap-beijing ap-chengdu)

hexkey() { head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 100); do (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 did not open" >&2; return 1; }
wait_log() { for _ in $(seq 1 300); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done; echo "$1: '$2' not seen" >&2; cat "$1" >&2; return 1; }

# Starts process "$2..." logging to $1.log, recording its pid in $pids_file.
spawn() {
  local log="$1"; shift
  "$@" > "$log.log" 2>&1 &
  echo $! >> "$pids_file"
}

# Starts (or restarts) every process of region $1 from its saved settings.
start_region() {
  local name="$1" rdir="$run/$1"
  # shellcheck disable=SC1091
  . "$rdir/settings"
  pids_file="$rdir/pids"
  : > "$pids_file"
  spawn "$rdir/s3s-fs" s3s-fs --host 127.0.0.1 --port "$s3port" --access-key nimbus --secret-key nimbus-secret "$rdir/s3"
  wait_port "$s3port"
  local conf="$rdir/nimbus.toml"
  spawn "$rdir/api-gateway" "$bin" serve api-gateway --config "$conf"
  wait_log "$rdir/api-gateway.log" '^listening on'
  for svc in workflow code network resource; do
    spawn "$rdir/$svc" "$bin" serve "$svc" --config "$conf"
  done
  local z n
  for z in $(seq 1 "$zones"); do
    local zone="$name-$z" cport
    cport=$(sed -n "s/^cache_port_$z=//p" "$rdir/settings")
    NIMBUS_REGION__ZONE="$zone" NIMBUS_CODE_CACHE__LISTEN="127.0.0.1:$cport" \
      NIMBUS_CODE_CACHE__DIR="$rdir/cache-$zone" spawn "$rdir/cache-$zone" "$bin" serve code-cache --config "$conf"
    for n in $(seq 1 "$nodes"); do
      NIMBUS_REGION__ZONE="$zone" NIMBUS_NODE__ZONE="$zone" NIMBUS_NODE__ID="$zone-n$n" \
        NIMBUS_NODE__WORK_DIR="$rdir/node-$zone-n$n" NIMBUS_NODE__ZONE_CACHE="http://127.0.0.1:$cport" \
        spawn "$rdir/node-$zone-n$n" "$bin" serve node --config "$conf"
    done
  done
}

start_directory() {
  pids_file="$run/directory/pids"
  : > "$pids_file"
  spawn "$run/directory/directory" "$bin" serve directory --config "$run/directory/nimbus.toml"
  wait_log "$run/directory/directory.log" '^directory listening on'
}

# Writes cluster.json from what runs now.
write_json() {
  python3 - "$run" <<'PY'
import json, os, sys
run = sys.argv[1]
def pids(d):
    try:
        return [int(p) for p in open(os.path.join(d, "pids")).read().split()]
    except FileNotFoundError:
        return []
def setting(d, key):
    for line in open(os.path.join(d, "settings")):
        k, _, v = line.strip().partition("=")
        if k == key:
            return v
regions = []
for name in open(os.path.join(run, "regions")).read().split():
    d = os.path.join(run, name)
    zones = int(setting(d, "zones"))
    regions.append({"name": name, "url": setting(d, "url"),
                    "zones": [f"{name}-{z}" for z in range(1, zones + 1)],
                    "pids": pids(d)})
out = {"regions": regions,
       "directory": {"url": open(os.path.join(run, "directory", "url")).read().strip(),
                     "pids": pids(os.path.join(run, "directory"))},
       "admin_key": open(os.path.join(run, "directory", "admin.key")).read().strip()}
with open(os.path.join(run, "cluster.json.tmp"), "w") as f:
    json.dump(out, f, indent=2)
os.replace(os.path.join(run, "cluster.json.tmp"), os.path.join(run, "cluster.json"))
PY
}

start_regions() {
  local count="$1" zones=2 nodes=2
  [ "$count" -ge 1 ] && [ "$count" -le "${#REGION_NAMES[@]}" ] || { echo "--regions takes 1 to ${#REGION_NAMES[@]}" >&2; exit 2; }
  rm -rf "$run"; mkdir -p "$run/directory"
  local id jwt token idkey dport
  id="c$(date +%s)$RANDOM"
  jwt="$(hexkey)"; token="$(hexkey)"; idkey="$(hexkey)"
  echo "$id" > "$run/id"
  psql -q -h 127.0.0.1 -U postgres -d test -c "CREATE DATABASE nimbus_${id}_directory" >/dev/null
  # Every process's pool must fit in PostgreSQL's connection limit together: a
  # process keeps the connections its startup and bursts opened. Ten are left for
  # psql and other clients; the rest is shared by the directory and each region's
  # gateway, four services and nodes, at most 10 each.
  local pg_max pool
  pg_max=$(psql -Atq -h 127.0.0.1 -U postgres -d test -c "SHOW max_connections")
  pool=$(( (pg_max - 10) / (count * (5 + zones * nodes) + 1) ))
  [ "$pool" -gt 10 ] && pool=10
  [ "$pool" -lt 2 ] && pool=2
  dport=$(free_port)
  echo "http://127.0.0.1:$dport" > "$run/directory/url"
  cat > "$run/directory/nimbus.toml" <<TOML
[database]
url = "postgres://postgres@127.0.0.1:5432/nimbus_${id}_directory"
max_connections = $pool

[api]
admin_key_file = "$run/directory/admin.key"

[directory]
listen = "127.0.0.1:$dport"
token = "$token"
TOML
  start_directory
  : > "$run/regions"
  local i
  for i in $(seq 0 $((count - 1))); do
    local name="${REGION_NAMES[$i]}" rdir="$run/${REGION_NAMES[$i]}"
    mkdir -p "$rdir/s3"
    echo "$name" >> "$run/regions"
    local vhost="nimbus-$id-$name" db="nimbus_${id}_r$i" api s3port regport zl
    api=$(free_port); s3port=$(free_port); regport=$(free_port)
    zl=$(for z in $(seq 1 $zones); do printf '"%s-%s",' "$name" "$z"; done)
    {
      echo "name=$name"; echo "url=http://127.0.0.1:$api"; echo "zones=$zones"; echo "nodes=$nodes"
      echo "s3port=$s3port"; echo "vhost=$vhost"; echo "db=$db"
      for z in $(seq 1 $zones); do echo "cache_port_$z=$(free_port)"; done
    } > "$rdir/settings"
    rabbitmqctl -q add_vhost "$vhost" >/dev/null
    rabbitmqctl -q set_permissions -p "$vhost" guest '.*' '.*' '.*' >/dev/null
    psql -q -h 127.0.0.1 -U postgres -d test -c "CREATE DATABASE $db" >/dev/null
    cat > "$rdir/nimbus.toml" <<TOML
[region]
name = "$name"
zone = "$name-1"
url = "http://127.0.0.1:$api"
zones = [${zl%,}]

[database]
url = "postgres://postgres@127.0.0.1:5432/$db"
max_connections = $pool

[bus]
kind = "amqp"
url = "amqp://guest:guest@127.0.0.1:5672/$vhost"
prefix = "nimbus"

[objects]
kind = "s3"
bucket = "nimbus-$name"
endpoint = "http://127.0.0.1:$s3port"
access_key = "nimbus"
secret_key = "nimbus-secret"

[api]
listen = "127.0.0.1:$api"
jwt_secret = "$jwt"

[resource]
listen = "127.0.0.1:$regport"
endpoint = "http://127.0.0.1:$regport"
heartbeat_interval_ms = 500
node_timeout_ms = 3000

[router]
redis_url = "redis://127.0.0.1:6379/$((i + 1))"
redis_prefix = "nimbus-$id"

[node]
listen = "127.0.0.1:0"

[usage]
dir = "$rdir/usage"

[secrets]
key = "$(hexkey)"

[directory]
endpoint = "http://127.0.0.1:$dport"
token = "$token"
identity_key = "$idkey"
TOML
    start_region "$name"
  done
  write_json
  echo "NIMBUS_CLUSTER=$run/cluster.json"
  echo "ADMIN_KEY=$(cat "$run/directory/admin.key")"
}

kill_pids() {
  [ -f "$1" ] || return 0
  while read -r pid; do kill "$pid" 2>/dev/null || true; done < "$1"
  rm -f "$1"
}

stop() {
  kill_pids "$run/pids"
  # A single region's schema and vhost (its queues are durable: left alone, every
  # start would leave its own behind).
  if [ -f "$run/single" ]; then
    local sid; sid="$(cat "$run/single")"
    sleep 0.5
    rabbitmqctl -q delete_vhost "nimbus-$sid" >/dev/null 2>&1 || true
    psql -q -h 127.0.0.1 -U postgres -d test -c "DROP SCHEMA IF EXISTS nimbus_$sid CASCADE" >/dev/null 2>&1 || true
    rm -f "$run/single"
  fi
  [ -f "$run/id" ] || return 0
  local name id
  id="$(cat "$run/id")"
  kill_pids "$run/directory/pids"
  for name in $(cat "$run/regions" 2>/dev/null); do kill_pids "$run/$name/pids"; done
  sleep 0.5
  for name in $(cat "$run/regions" 2>/dev/null); do
    # shellcheck disable=SC1091
    (. "$run/$name/settings" 2>/dev/null || exit 0
     rabbitmqctl -q delete_vhost "$vhost" >/dev/null 2>&1 || true
     psql -q -h 127.0.0.1 -U postgres -d test -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true)
  done
  psql -q -h 127.0.0.1 -U postgres -d test -c "DROP DATABASE IF EXISTS nimbus_${id}_directory WITH (FORCE)" >/dev/null 2>&1 || true
  rm -f "$run/regions" "$run/id"
}

case "${1:-start}" in
  stop) stop; exit 0 ;;
  restart)
    what="${2:?restart REGION or directory}"
    if [ "$what" = directory ]; then kill_pids "$run/directory/pids"; start_directory
    else
      grep -qx "$what" "$run/regions" || { echo "no region $what" >&2; exit 2; }
      kill_pids "$run/$what/pids"; start_region "$what"
    fi
    write_json; exit 0 ;;
  start)
    if [ "${2:-}" = "--regions" ]; then stop; start_regions "${3:?--regions N}"; exit 0; fi ;;
  *) echo "usage: $0 start [--regions N] | restart REGION|directory | stop" >&2; exit 2 ;;
esac

stop
rm -rf "$run"; mkdir -p "$run/s3"
id="c$(date +%s)"
s3port=$((20000 + RANDOM % 10000))
regport=$((30000 + RANDOM % 10000))
echo "$id" > "$run/single"
rabbitmqctl -q add_vhost "nimbus-$id" >/dev/null
rabbitmqctl -q set_permissions -p "nimbus-$id" guest '.*' '.*' '.*' >/dev/null
cat > "$run/nimbus.toml" <<TOML
[database]
url = "postgres://postgres@127.0.0.1:5432/test"
schema = "nimbus_$id"

[bus]
kind = "amqp"
url = "amqp://guest:guest@127.0.0.1:5672/nimbus-$id"
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

[usage]
dir = "$run/usage"

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
