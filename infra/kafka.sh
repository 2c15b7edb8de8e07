#!/usr/bin/env bash
# A Kafka-protocol broker (tansu 0.6.0) for development and tests.
#
#   infra/kafka.sh start    install tansu (once) and start a broker, wait until its port answers,
#                           print KAFKA_BROKERS=...
#   infra/kafka.sh stop     stop it, by the PID in its PID file (never by name)
#   infra/kafka.sh status   say whether it runs; exit 0 if running, 3 if not
#   infra/kafka.sh url      print host:port only (the bootstrap servers)
#
# Environment:
#   DSCM_KAFKA_PORT     listener port on 127.0.0.1 (default 59092)
#   DSCM_KAFKA_DIR      PID file and log (default /var/tmp/dscm-kafka-$DSCM_KAFKA_PORT); a test that
#                       stops and restarts a broker runs its own with its own port and directory
#   DSCM_KAFKA_STORAGE  tansu storage engine URL (default memory://tansu/)
#   DSCM_TOOLS          where tansu is installed (default $HOME/.cache/dscm/tools)
#   DSCM_KAFKA_STOP_GRACE_S  seconds `stop` waits after SIGTERM before SIGKILL (default 10)
#
# Every command is idempotent. The default storage is memory: a stopped broker loses every
# topic and record, and starts empty. That is fine for tests, since the event log in PostgreSQL is
# the source of truth and the outbox relay re-creates topics; a durable broker needs S3 storage
# (docs/adr/0006-kafka-envelope-and-relay.md). tansu has no Kafka transactions and does not
# create topics on first use: clients create them.
set -euo pipefail

TANSU_VERSION=0.6.0
KAFKA_PORT=${DSCM_KAFKA_PORT:-59092}
KAFKA_DIR=${DSCM_KAFKA_DIR:-/var/tmp/dscm-kafka-$KAFKA_PORT}
KAFKA_STORAGE=${DSCM_KAFKA_STORAGE:-memory://tansu/}
TOOLS=${DSCM_TOOLS:-$HOME/.cache/dscm/tools}
TANSU=$TOOLS/bin/tansu
PID_FILE=$KAFKA_DIR/tansu.pid
LOG_FILE=$KAFKA_DIR/tansu.log
ADDRESS=127.0.0.1:$KAFKA_PORT
START_TIMEOUT_S=30
STOP_GRACE_S=${DSCM_KAFKA_STOP_GRACE_S:-10}

log() { echo "kafka.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

installed_version() {
    [[ -x $TANSU ]] || return 0
    "$TANSU" --version 2>/dev/null | awk '{print $NF}' || true
}

# Installs tansu into $TOOLS unless this version is there. Memory and S3 storage need the
# `dynostore` feature, PostgreSQL storage `postgres`: the default build cannot store anything.
# About 10 minutes cold on 2 cores; its own target directory, so it never rebuilds the workspace's.
ensure_tansu() {
    if [[ $(installed_version) == "$TANSU_VERSION" ]]; then
        return
    fi
    mkdir -p "$TOOLS"
    # One installer at a time (several test processes may call `start` at once); the others wait
    # here and then find it installed.
    exec {install_lock}>"$TOOLS/.tansu-install.lock"
    flock "$install_lock"
    if [[ $(installed_version) != "$TANSU_VERSION" ]]; then
        log "installing tansu $TANSU_VERSION into $TOOLS (about 10 minutes cold)"
        CARGO_TARGET_DIR=${DSCM_TOOLS_TARGET_DIR:-$HOME/.cache/dscm/target-tools} \
            nice -n 10 cargo install tansu --version "$TANSU_VERSION" --locked \
            --features dynostore,postgres --root "$TOOLS" >&2
        [[ $(installed_version) == "$TANSU_VERSION" ]] || die "tansu $TANSU_VERSION is not at $TANSU after install"
    fi
    exec {install_lock}>&-
}

# Serialises start and stop of this broker (same DSCM_KAFKA_DIR) across processes.
lock_broker() {
    mkdir -p "$KAFKA_DIR"
    exec {broker_lock}>"$KAFKA_DIR/lock"
    flock "$broker_lock"
}

# Whether the process exists and is not a zombie (an init that is slow to reap must not make
# `stop` wait forever).
alive() {
    local state
    state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z && $state != X ]]
}

# The PID in the PID file, if that process is alive and is a tansu broker.
running_pid() {
    local pid
    [[ -f $PID_FILE ]] || return 1
    pid=$(cat "$PID_FILE")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    alive "$pid" || return 1
    # A recycled PID is not ours: check the executable (still ours if it was reinstalled since).
    local exe
    exe=$(readlink "/proc/$pid/exe" 2>/dev/null || true)
    [[ ${exe% (deleted)} == "$(readlink -f "$TANSU")" ]] || return 1
    echo "$pid"
}

port_answers() {
    (exec 3<>"/dev/tcp/127.0.0.1/$KAFKA_PORT") 2>/dev/null
}

cmd_start() {
    ensure_tansu
    lock_broker
    local pid
    if pid=$(running_pid); then
        log "already running (pid $pid)"
    else
        if port_answers; then
            die "127.0.0.1:$KAFKA_PORT is in use by another process; set DSCM_KAFKA_PORT"
        fi
        log "starting tansu on $ADDRESS, storage $KAFKA_STORAGE (log: $LOG_FILE)"
        RUST_LOG=${RUST_LOG:-warn} nohup "$TANSU" broker \
            --listener-url "tcp://$ADDRESS" \
            --advertised-listener-url "tcp://$ADDRESS" \
            --storage-engine "$KAFKA_STORAGE" \
            >>"$LOG_FILE" 2>&1 </dev/null {broker_lock}>&- &
        pid=$!
        echo "$pid" >"$PID_FILE"
        local deadline=$((SECONDS + START_TIMEOUT_S))
        until port_answers; do
            if ! alive "$pid"; then
                tail -n 20 "$LOG_FILE" >&2 || true
                rm -f "$PID_FILE"
                die "tansu exited during start"
            fi
            ((SECONDS < deadline)) || die "tansu did not answer on $ADDRESS within ${START_TIMEOUT_S}s"
            sleep 0.05
        done
    fi
    echo "KAFKA_BROKERS=$ADDRESS"
}

cmd_stop() {
    local pid
    if [[ -d $KAFKA_DIR ]]; then
        lock_broker
    fi
    if pid=$(running_pid); then
        kill -TERM "$pid"
        # tansu drains open connections for about 5 s after SIGTERM.
        local deadline=$((SECONDS + STOP_GRACE_S)) killed=""
        while alive "$pid"; do
            if [[ -z $killed ]] && ((SECONDS >= deadline)); then
                log "pid $pid still running ${STOP_GRACE_S}s after SIGTERM, sending SIGKILL"
                kill -KILL "$pid" 2>/dev/null || true
                killed=1
            fi
            sleep 0.05
        done
        rm -f "$PID_FILE"
        log "stopped (pid $pid)"
    else
        rm -f "$PID_FILE"
        log "not running"
    fi
}

cmd_status() {
    local pid
    if pid=$(running_pid); then
        echo "running: pid $pid, $ADDRESS, storage $KAFKA_STORAGE"
    else
        echo "stopped"
        return 3
    fi
}

case ${1:-} in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
url) echo "$ADDRESS" ;;
*)
    echo "usage: $0 start|stop|status|url" >&2
    exit 2
    ;;
esac
