# Sourced by the benchmark scripts: starts Nimbus ($1: embedded or distributed; port
# $2) in a temporary directory ($dir, removed on exit), creates the tenant `bench`
# with high limits, and exports NIMBUS_URL and NIMBUS_TOKEN (its owner key).
# Leaves a noop packaged in $dir/py (python3) and $dir/js (nodejs); `deploy_noop NAME
# [RUNTIME]` deploys one.
# Needs N (the nimbus binary).
mode="${1:-embedded}"
port="${2:-18084}"
dir=$(mktemp -d)
case "$mode" in
  embedded)
    NIMBUS_LOG=warn "$N" up --data-dir "$dir" --listen 127.0.0.1:$port > "$dir/up.log" 2>&1 &
    pid=$!
    trap 'kill $pid; rm -rf "$dir"' EXIT
    for _ in $(seq 1 100); do [ -f "$dir/admin.key" ] && curl -sf http://127.0.0.1:$port/readyz >/dev/null && break; sleep 0.1; done
    export NIMBUS_URL=http://127.0.0.1:$port
    admin=$(cat "$dir/admin.key")
    ;;
  distributed)
    # CLUSTER_SCRIPT: another checkout's local-cluster.sh, for an older build whose
    # configuration differs.
    cluster="${CLUSTER_SCRIPT:-deploy/local-cluster.sh}"
    out=$(NIMBUS_PORT=$((port + 7)) NIMBUS_BIN="$N" NIMBUS_CLUSTER_DIR="$dir/cluster" "$cluster" start)
    trap 'NIMBUS_CLUSTER_DIR="$dir/cluster" "$cluster" stop; rm -rf "$dir"' EXIT
    export NIMBUS_URL=$(echo "$out" | sed -n 's/^NIMBUS_URL=//p')
    admin=$(echo "$out" | sed -n 's/^ADMIN_KEY=//p')
    for _ in $(seq 1 100); do curl -sf "$NIMBUS_URL/readyz" >/dev/null && break; sleep 0.1; done
    sleep 2   # the node registers; the gateway's node list refreshes every second
    ;;
  *) echo "mode must be embedded or distributed" >&2; exit 2 ;;
esac
made=$("$N" --token "$admin" tenant create bench 2>/dev/null)
owner=$(echo "$made" | python3 -c 'import json,sys;print(json.load(sys.stdin)["api_key"])')
# The owner key's AWS pair (builds with the Lambda-compatible API), for `bench invoke --lambda`.
export AWS_ACCESS_KEY_ID=$(echo "$made" | python3 -c 'import json,sys;print(json.load(sys.stdin).get("aws_access_key_id",""))')
export AWS_SECRET_ACCESS_KEY=$(echo "$made" | python3 -c 'import json,sys;print(json.load(sys.stdin).get("aws_secret_access_key",""))')
export AWS_REGION=$(echo "$made" | python3 -c 'import json,sys;print(json.load(sys.stdin).get("aws_region","local"))')
curl -sf -XPUT "$NIMBUS_URL/v1/tenants/bench/limits" -H "Authorization: Bearer $admin" -H 'content-type: application/json' \
  -d '{"max_concurrency":'"${MAX_CONCURRENCY:-1000}"',"rate_per_sec":1000000,"max_functions":1000,"max_memory_mb":3072}' >/dev/null
export NIMBUS_TOKEN="$owner"
mkdir -p "$dir/py"
printf 'def handler(event, context):\n    return event\n' > "$dir/py/index.py"
mkdir -p "$dir/js"
printf 'exports.handler = async (event) => event;\n' > "$dir/js/index.js"
# deploy_noop NAME [RUNTIME]: the noop in python3 (default) or nodejs.
deploy_noop() {
  local src="$dir/py"; [ "${2:-python3}" = nodejs ] && src="$dir/js"
  "$N" fn deploy "$src" --name "$1" --runtime "${2:-python3}" --handler index.handler > /dev/null
}
