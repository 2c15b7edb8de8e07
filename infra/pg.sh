#!/usr/bin/env bash
# A private PostgreSQL cluster for development and tests.
#
#   infra/pg.sh start    initialise (once) and start the cluster, ensure role and database `dscm`,
#                        print DATABASE_URL=...
#   infra/pg.sh stop     stop it (pg_ctl, fast mode, by the cluster's own postmaster.pid)
#   infra/pg.sh status   say whether it runs; exit 0 if running, 3 if not
#   infra/pg.sh url      print the DATABASE_URL only
#   infra/pg.sh settings print the settings that matter for a benchmark, as the server has them
#
# Environment: DSCM_PG_DIR (default /var/tmp/dscm-pg), DSCM_PG_PORT (default 55432),
# DSCM_PG_DURABLE=1 keeps PostgreSQL's durable defaults (fsync, synchronous_commit and
# full_page_writes on) and lets role `dscm` CHECKPOINT and read every session's statistics — for
# benchmarks (infra/pg-bench.sh); DSCM_PG_STATEMENTS=1 loads pg_stat_statements (profiling).
# Every command is idempotent. As root, the server runs as the `postgres` OS user (initdb refuses
# root); otherwise it runs as the current user. The settings trade durability for speed: this
# cluster is for development and tests only.
set -euo pipefail

PG_DIR=${DSCM_PG_DIR:-/var/tmp/dscm-pg}
PG_PORT=${DSCM_PG_PORT:-55432}
PG_DATA=$PG_DIR/data
PG_LOG=$PG_DIR/server.log
# The unix socket lives in the data directory itself: private to this cluster, no /run needed.
PG_SOCKET_DIR=$PG_DATA
DB_NAME=dscm
DB_USER=dscm
DB_PASSWORD=dscm
DATABASE_URL="postgres://$DB_USER:$DB_PASSWORD@127.0.0.1:$PG_PORT/$DB_NAME"

log() { echo "pg.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

# Runs a command as the cluster's owner.
as_owner() {
    if [[ $EUID -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# Prints the bin directory of the newest installed PostgreSQL server, or nothing.
find_pg_bin() {
    local dir
    for dir in /usr/lib/postgresql/*/bin; do
        [[ -x $dir/initdb && -x $dir/pg_ctl && -x $dir/postgres ]] && echo "$dir"
    done | sort -V | tail -n 1
}

ensure_binaries() {
    PG_BIN=$(find_pg_bin)
    if [[ -z $PG_BIN ]]; then
        [[ $EUID -eq 0 ]] || die "PostgreSQL server binaries not found and not root: install the 'postgresql' package"
        log "PostgreSQL server binaries not found, installing the 'postgresql' package"
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql
        PG_BIN=$(find_pg_bin)
        [[ -n $PG_BIN ]] || die "no initdb/pg_ctl/postgres under /usr/lib/postgresql/*/bin after install"
    fi
}

# Exit status of `pg_ctl status`: 0 running, 3 not running, 4 no usable data directory.
cluster_status() {
    local rc=0
    as_owner "$PG_BIN/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1 || rc=$?
    return "$rc"
}

is_running() {
    [[ -n $PG_BIN && -f $PG_DATA/PG_VERSION ]] || return 1
    cluster_status
}

# Creates the cluster's directory, owned by the cluster's owner. An existing directory is never
# chowned (DSCM_PG_DIR=/tmp must not hand /tmp to postgres); it only has to be writable.
prepare_dir() {
    if [[ ! -d $PG_DIR ]]; then
        mkdir -p "$PG_DIR"
        chmod 0700 "$PG_DIR"
        if [[ $EUID -eq 0 ]]; then
            chown postgres:postgres "$PG_DIR"
        fi
    fi
    as_owner test -w "$PG_DIR" \
        || die "$PG_DIR is not writable by the cluster's owner (is a parent directory private?); set DSCM_PG_DIR"
}

init_cluster() {
    if [[ -f $PG_DATA/PG_VERSION ]]; then
        return
    fi
    log "initialising a new cluster in $PG_DATA"
    as_owner "$PG_BIN/initdb" -D "$PG_DATA" -U postgres \
        --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >/dev/null
    echo "include_if_exists = 'dscm.conf'" | as_owner tee -a "$PG_DATA/postgresql.conf" >/dev/null
}

# Rewritten at every start, so a changed port or setting takes effect on the next start.
write_settings() {
    as_owner tee "$PG_DATA/dscm.conf" >/dev/null <<EOF
# Written by infra/pg.sh at every start; edits here are overwritten.
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_SOCKET_DIR'
max_connections = 300
$(durability_settings)
EOF
}

# Tests trade durability for speed; DSCM_PG_DURABLE=1 keeps PostgreSQL's defaults (benchmarks).
durability_settings() {
    if [[ ${DSCM_PG_DURABLE:-} == 1 ]]; then
        printf '%s\n' "# Durable: PostgreSQL's defaults, written out." "fsync = on" "synchronous_commit = on" \
            "full_page_writes = on"
    else
        printf '%s\n' "# Tests only: no durability." "fsync = off" "synchronous_commit = off" "full_page_writes = off"
    fi
    if [[ ${DSCM_PG_STATEMENTS:-} == 1 ]]; then
        echo "shared_preload_libraries = 'pg_stat_statements'"
    fi
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
    psql_admin >/dev/null <<EOF
DO \$\$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = '$DB_USER') THEN
        CREATE ROLE $DB_USER LOGIN CREATEDB PASSWORD '$DB_PASSWORD';
    ELSE
        ALTER ROLE $DB_USER LOGIN CREATEDB NOSUPERUSER PASSWORD '$DB_PASSWORD';
    END IF;
END
\$\$;
SELECT 'CREATE DATABASE $DB_NAME OWNER $DB_USER'
WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_database WHERE datname = '$DB_NAME')
\gexec
EOF
    if [[ ${DSCM_PG_DURABLE:-} == 1 ]]; then
        # A benchmark checkpoints before each run and samples every session's activity.
        echo "GRANT pg_checkpoint, pg_read_all_stats TO $DB_USER;" | psql_admin >/dev/null
    fi
    if [[ ${DSCM_PG_STATEMENTS:-} == 1 ]]; then
        # In template1, so every database a benchmark creates has the view.
        echo "CREATE EXTENSION IF NOT EXISTS pg_stat_statements;" | psql_admin template1 >/dev/null
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
