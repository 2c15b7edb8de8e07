#!/usr/bin/env bash
# Runs the local platform:
#   - a private PostgreSQL (infra/pg.sh) and a Kafka-protocol broker (infra/kafka.sh, tansu);
#   - command-svc on http://127.0.0.1:${DSCM_HTTP_PORT:-8080}: the write API, the deadline
#     scheduler, the auto-payout process manager and the outbox relay to Kafka;
#   - projection-svc on http://127.0.0.1:${DSCM_READ_HTTP_PORT:-8081}: the Kafka consumer, the
#     read models and the read API;
# then an admin API key and a short demo: a client deposits, posts and funds a job, and reads it
# back through the read API with min_position. Ctrl-C stops everything this script started
# (by PID): the two services, and the broker and PostgreSQL if they were not running before.
# Service logs: ${DSCM_HOME:-~/.cache/dscm}/logs/.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/dscm/target}"
home="${DSCM_HOME:-$HOME/.cache/dscm}"
write_port="${DSCM_HTTP_PORT:-8080}"
read_port="${DSCM_READ_HTTP_PORT:-8081}"
write="http://127.0.0.1:$write_port"
read="http://127.0.0.1:$read_port"
logs="$home/logs"
mkdir -p "$logs"

stop_pg=""
stop_kafka=""
pids=()
# Stops what this script started: the services first (SIGINT: they drain and stop their
# scheduler, relay and consumer), then the broker and PostgreSQL.
cleanup() {
  trap - EXIT INT TERM
  local pid
  for pid in "${pids[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
    wait "$pid" 2>/dev/null || true
  done
  if [ -n "$stop_kafka" ]; then infra/kafka.sh stop >/dev/null 2>&1 || true; fi
  if [ -n "$stop_pg" ]; then infra/pg.sh stop >/dev/null 2>&1 || true; fi
  echo "== stopped"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Waits until URL answers 2xx, at most $2 seconds.
wait_http() {
  for _ in $(seq 1 $(($2 * 10))); do curl -fsS "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "error: $1 did not answer within $2 s" >&2
  return 1
}

echo "== PostgreSQL (infra/pg.sh)"
if ! infra/pg.sh status >/dev/null 2>&1; then stop_pg=1; fi
infra/pg.sh start >/dev/null
DSCM_DATABASE_URL="$(infra/pg.sh url)"
export DSCM_DATABASE_URL

echo "== Kafka broker (infra/kafka.sh: tansu, memory storage)"
if [ ! -x "${DSCM_TOOLS:-$HOME/.cache/dscm/tools}/bin/tansu" ]; then
  echo "   FIRST RUN: building tansu 0.6.0 from crates.io — this takes 10 minutes or more on 2 cores."
  echo "   (once; it is kept in ${DSCM_TOOLS:-$HOME/.cache/dscm/tools})"
fi
if ! infra/kafka.sh status >/dev/null 2>&1; then stop_kafka=1; fi
infra/kafka.sh start >/dev/null
DSCM_KAFKA_BROKERS="$(infra/kafka.sh url)"
export DSCM_KAFKA_BROKERS

echo "== building command-svc and projection-svc (release; the first build takes several minutes)"
cargo build --release -p command-svc -p projection-svc --locked -q
cmd_bin="$CARGO_TARGET_DIR/release/command-svc"
proj_bin="$CARGO_TARGET_DIR/release/projection-svc"

"$cmd_bin" migrate
key_file="$home/admin.key"
if [ ! -s "$key_file" ]; then "$cmd_bin" bootstrap-admin >"$key_file"; fi
admin="$(cat "$key_file")"

echo "== command-svc on $write (write API, scheduler, outbox relay → $DSCM_KAFKA_BROKERS)"
DSCM_HTTP_ADDR="127.0.0.1:$write_port" RUST_LOG="${RUST_LOG:-info}" \
  "$cmd_bin" serve >>"$logs/command-svc.log" 2>&1 &
pids+=($!)
wait_http "$write/healthz" 30

# The local broker keeps its log in memory: after a restart its topics are empty, and a consumer
# group's offsets stored in PostgreSQL would point past what the new topics hold (projection-svc
# would skip events). So every run rebuilds the read models from the event store (the source of
# truth) and consumes in a group of its own, from the topics' beginning (copies are dropped).
echo "== projection-svc: rebuilding the read models from the event store"
"$proj_bin" replay
echo "== projection-svc on $read (consumer, read models, read API)"
DSCM_READ_HTTP_ADDR="127.0.0.1:$read_port" DSCM_CONSUMER_GROUP="dscm-projection-dev-$(date +%s)" \
  RUST_LOG="${RUST_LOG:-info}" "$proj_bin" serve >>"$logs/projection-svc.log" 2>&1 &
pids+=($!)
wait_http "$read/readyz" 30

api() { # api KEY PATH JSON
  curl -sS -X POST "$write$2" -H "authorization: Bearer $1" \
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
funded=$(api "$client_key" "/v1/jobs/$job/fund" '{}')
position=$(echo "$funded" | json_field "['last_position']")
echo "$funded" | python3 -c "import json,sys; a=json.load(sys.stdin); print('   funded: last_position', a['last_position'], 'events', [e['event_type'] for e in a['events']])"

echo "== demo: reading the job back through the read API: GET $read/v1/jobs/$job?min_position=$position"
# min_position waits (2 s) for the projection; a consumer that is still joining its group answers
# 503 with Retry-After, so ask again for a while.
for attempt in $(seq 1 30); do
  status=$(curl -sS -o "$logs/demo-read.json" -w '%{http_code}' -D "$logs/demo-read.headers" \
    -H "authorization: Bearer $client_key" "$read/v1/jobs/$job?min_position=$position")
  [ "$status" = 200 ] && break
  echo "   attempt $attempt: HTTP $status ($(json_field "['code']" <"$logs/demo-read.json" 2>/dev/null || echo '?')), retrying"
  sleep 1
done
[ "$status" = 200 ] || { echo "error: the read API did not show the job" >&2; exit 1; }
echo "   HTTP $status, $(grep -i '^x-projection-position' "$logs/demo-read.headers" | tr -d '\r')"
python3 - "$logs/demo-read.json" <<'PY'
import json, sys
job = json.load(open(sys.argv[1]))
print(f"   job {job['job_id']}: status={job['status']} funded={job['funded']} "
      f"budget={job['budget']['minor_units'] / 100:.2f} {job['budget']['currency']} tasks={len(job['tasks'])}")
PY

cat <<MSG

== the platform is running (Ctrl-C stops everything this script started)
   write API:   $write          (POST /v1/..., see README)   metrics: curl $write/metrics
   read API:    $read          (GET /v1/jobs, /v1/balances, /v1/streams/job/$job/events, ...)
                curl $read/openapi.json                      metrics: curl $read/metrics
   admin key:   $key_file
   try:         curl -H "authorization: Bearer \$(cat $key_file)" "$read/v1/jobs/$job"
   a demo job:  $job (funded with 15.00 EUR from a 1 000.00 EUR deposit)
   logs:        $logs/command-svc.log, $logs/projection-svc.log
   database:    psql "$DSCM_DATABASE_URL" -c 'select position, aggregate_type, event_type from events order by position'
   Kafka:       $DSCM_KAFKA_BROKERS (topics dscm.<aggregate_type>)
MSG
# Until Ctrl-C, or until a service exits.
wait -n "${pids[@]}" || true
echo "== a service exited; see $logs" >&2
