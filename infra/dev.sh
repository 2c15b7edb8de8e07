#!/usr/bin/env bash
# Runs the local platform: a private PostgreSQL (infra/pg.sh), the command service on
# http://127.0.0.1:${DSCM_HTTP_PORT:-8080}, an admin API key, and a short demo of the write API.
# Ctrl-C stops everything this script started.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/dscm/target}"
port="${DSCM_HTTP_PORT:-8080}"

stop_pg=""
svc_pid=""
cleanup() {
  [ -n "$svc_pid" ] && kill "$svc_pid" 2>/dev/null && wait "$svc_pid" 2>/dev/null || true
  [ -n "$stop_pg" ] && infra/pg.sh stop >/dev/null || true
}
trap cleanup EXIT INT TERM
if ! infra/pg.sh status >/dev/null 2>&1; then stop_pg=1; fi
infra/pg.sh start >/dev/null
DSCM_DATABASE_URL="$(infra/pg.sh url)"
export DSCM_DATABASE_URL DSCM_HTTP_ADDR="127.0.0.1:$port"

echo "== building command-svc (first build takes a few minutes)"
cargo build --release -p command-svc --locked -q
bin="$CARGO_TARGET_DIR/release/command-svc"
"$bin" migrate
key_file="${DSCM_HOME:-$HOME/.cache/dscm}/admin.key"
mkdir -p "$(dirname "$key_file")"
if [ ! -s "$key_file" ]; then "$bin" bootstrap-admin > "$key_file"; fi
admin="$(cat "$key_file")"

RUST_LOG="${RUST_LOG:-info}" "$bin" serve &
svc_pid=$!
for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break; sleep 0.1; done

api() { # api KEY PATH JSON
  curl -sS -X POST "http://127.0.0.1:$port$2" -H "authorization: Bearer $1" \
    -H "idempotency-key: $(cat /proc/sys/kernel/random/uuid)" -H 'content-type: application/json' -d "$3"
}
json_field() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }

echo "== demo: a client deposits, posts and funds a job"
client=$(api "$admin" /v1/admin/api-keys '{"role":"client","label":"demo client"}')
client_key=$(echo "$client" | json_field "['key']")
client_id=$(echo "$client" | json_field "['party_id']")
finance_key=$(api "$admin" /v1/admin/api-keys '{"role":"finance","label":"demo finance"}' | json_field "['key']")
api "$finance_key" /v1/deposits "{\"party_id\":\"$client_id\",\"amount\":{\"minor_units\":100000,\"currency\":\"EUR\"},\"provider\":\"manual\",\"external_ref\":\"demo-wire-$RANDOM$RANDOM\"}" >/dev/null
job=$(api "$client_key" /v1/jobs '{"class":"dscm_verified","reward_per_replica":{"minor_units":250,"currency":"EUR"},"task_count":2,"workload":{"name":"monte_carlo_pi"}}' | json_field "['job_id']")
api "$client_key" "/v1/jobs/$job/fund" '{}' | python3 -m json.tool | head -40

cat <<MSG

== the command service is running on http://127.0.0.1:$port
   admin key:   $key_file
   health:      curl http://127.0.0.1:$port/healthz
   metrics:     curl http://127.0.0.1:$port/metrics
   a demo job:  $job (funded with 15.00 EUR from a 1 000.00 EUR deposit)
   database:    psql "$DSCM_DATABASE_URL" -c 'select position, aggregate_type, event_type from events order by position'
   Ctrl-C stops the service (and PostgreSQL, if this script started it).
MSG
wait "$svc_pid"
