#!/usr/bin/env bash
# A second private PostgreSQL cluster for benchmarks, with PostgreSQL's durable defaults
# (fsync, synchronous_commit and full_page_writes on), as the measured peer used. The test
# cluster of infra/pg.sh trades durability for speed; a benchmark on it would measure no fsync.
#
#   infra/pg-bench.sh start    initialise (once) and start the cluster, ensure role `dscm`,
#                              print DATABASE_URL=...
#   infra/pg-bench.sh stop     stop it (pg_ctl, fast mode, by the cluster's own postmaster.pid)
#   infra/pg-bench.sh status   say whether it runs; exit 0 if running, 3 if not
#   infra/pg-bench.sh url      print the DATABASE_URL only
#   infra/pg-bench.sh settings print the settings that matter for a benchmark, as the server has them
#
# Environment: DSCM_PG_BENCH_DIR (default /var/tmp/dscm-pg-bench), DSCM_PG_BENCH_PORT (default
# 55433), DSCM_PG_BENCH_STATEMENTS=1 loads pg_stat_statements (for profiling; restart to change).
# Role `dscm` may CREATEDB and CHECKPOINT (pg_checkpoint) and read every session's statistics
# (pg_read_all_stats). Structure and conventions as in infra/pg.sh.
set -euo pipefail

PG_DIR=${DSCM_PG_BENCH_DIR:-/var/tmp/dscm-pg-bench}
PG_PORT=${DSCM_PG_BENCH_PORT:-55433}
PG_DATA=$PG_DIR/data
PG_LOG=$PG_DIR/server.log
PG_SOCKET_DIR=$PG_DATA
DB_NAME=dscm
DB_USER=dscm
DB_PASSWORD=dscm
DATABASE_URL="postgres://$DB_USER:$DB_PASSWORD@127.0.0.1:$PG_PORT/$DB_NAME"

log() { echo "pg-bench.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

as_owner() {
    if [[ $EUID -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

find_pg_bin() {
    local dir
    for dir in /usr/lib/postgresql/*/bin; do
        [[ -x $dir/initdb && -x $dir/pg_ctl && -x $dir/postgres ]] && echo "$dir"
    done | sort -V | tail -n 1
}

ensure_binaries() {
    PG_BIN=$(find_pg_bin)
    [[ -n $PG_BIN ]] || die "PostgreSQL server binaries not found: run infra/pg.sh start once (it installs them)"
}

is_running() {
    [[ -n $PG_BIN && -f $PG_DATA/PG_VERSION ]] || return 1
    as_owner "$PG_BIN/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1
}

prepare_dir() {
    if [[ ! -d $PG_DIR ]]; then
        mkdir -p "$PG_DIR"
        chmod 0700 "$PG_DIR"
        if [[ $EUID -eq 0 ]]; then
            chown postgres:postgres "$PG_DIR"
        fi
    fi
    as_owner test -w "$PG_DIR" || die "$PG_DIR is not writable by the cluster's owner; set DSCM_PG_BENCH_DIR"
}

init_cluster() {
    if [[ -f $PG_DATA/PG_VERSION ]]; then
        return
    fi
    log "initialising a new cluster in $PG_DATA"
    as_owner "$PG_BIN/initdb" -D "$PG_DATA" -U postgres \
        --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >/dev/null
    echo "include_if_exists = 'dscm-bench.conf'" | as_owner tee -a "$PG_DATA/postgresql.conf" >/dev/null
}

# Only what must differ from a default cluster: where it listens. Durability stays at the
# defaults, written out so that nobody has to guess.
write_settings() {
    local preload=""
    if [[ ${DSCM_PG_BENCH_STATEMENTS:-} == 1 ]]; then
        preload="shared_preload_libraries = 'pg_stat_statements'"
    fi
    as_owner tee "$PG_DATA/dscm-bench.conf" >/dev/null <<CONF
# Written by infra/pg-bench.sh at every start; edits here are overwritten.
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_SOCKET_DIR'
# Durable, PostgreSQL's defaults (the peer study's cluster had these too).
fsync = on
synchronous_commit = on
full_page_writes = on
$preload
CONF
}

start_cluster() {
    log "starting the cluster on 127.0.0.1:$PG_PORT (log: $PG_LOG)"
    if ! as_owner "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t 60 start >/dev/null; then
        tail -n 20 "$PG_LOG" >&2 || true
        die "the cluster did not start"
    fi
}

psql_admin() {
    "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_SOCKET_DIR" -p "$PG_PORT" -U postgres -d "${1:-postgres}"
}

ensure_role_and_database() {
    psql_admin >/dev/null <<SQL
SET client_min_messages = warning;
DO \$\$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = '$DB_USER') THEN
        CREATE ROLE $DB_USER LOGIN CREATEDB PASSWORD '$DB_PASSWORD';
    ELSE
        ALTER ROLE $DB_USER LOGIN CREATEDB NOSUPERUSER PASSWORD '$DB_PASSWORD';
    END IF;
END
\$\$;
GRANT pg_checkpoint, pg_read_all_stats TO $DB_USER;
SELECT 'CREATE DATABASE $DB_NAME OWNER $DB_USER'
WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_database WHERE datname = '$DB_NAME')
\gexec
SQL
    if [[ ${DSCM_PG_BENCH_STATEMENTS:-} == 1 ]]; then
        # In template1, so every database a benchmark creates has the view.
        echo "CREATE EXTENSION IF NOT EXISTS pg_stat_statements;" | psql_admin template1 >/dev/null
    fi
}

cmd_start() {
    ensure_binaries
    prepare_dir
    init_cluster
    if is_running; then
        log "already running"
    else
        write_settings
        start_cluster
    fi
    ensure_role_and_database
    echo "DATABASE_URL=$DATABASE_URL"
}

cmd_stop() {
    PG_BIN=$(find_pg_bin)
    if is_running; then
        as_owner "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 60 stop >/dev/null
        log "stopped"
    else
        log "not running"
    fi
}

cmd_status() {
    PG_BIN=$(find_pg_bin)
    if is_running; then
        echo "running: pid $(head -n 1 "$PG_DATA/postmaster.pid"), $DATABASE_URL"
    else
        echo "stopped"
        return 3
    fi
}

cmd_settings() {
    PG_BIN=$(find_pg_bin)
    is_running || die "not running"
    echo "SELECT 'PostgreSQL ' || split_part(current_setting('server_version'), ' ', 1) || ': '
                 || string_agg(name || '=' || current_setting(name), ' ' ORDER BY name)
          FROM pg_settings WHERE name IN ('fsync', 'synchronous_commit', 'full_page_writes', 'wal_sync_method',
          'shared_buffers')" |
        "$PG_BIN/psql" -X -q -t -A -h "$PG_SOCKET_DIR" -p "$PG_PORT" -U postgres -d postgres
}

case ${1:-} in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
url) echo "$DATABASE_URL" ;;
settings) cmd_settings ;;
*)
    echo "usage: $0 start|stop|status|url|settings" >&2
    exit 2
    ;;
esac
