#!/usr/bin/env bash
# The write-side benchmark, side by side (issue 3): DSCM's command path (command-svc's `bench`
# binary), the measured peer cqrs-es 0.5.0 + postgres-es 0.5.0 (bench/peer-cqrs-es, its own Cargo
# project, sqlx 0.8) and a bare `BEGIN; INSERT; COMMIT`, on the peer study's workload, in one
# session against the durable benchmark cluster (infra/pg-bench.sh).
#
#   bench/run.sh                     3 rounds, n = 20 000 (15-40 min: it depends on the disk's flush time)
#   bench/run.sh --runs 1 --pairs 2000   a quick look (n = 5 000)
#   bench/run.sh --synchronous-commit off   without waiting for the WAL flush: what the command path
#                                    costs when the disk is not the limit (not the peer study's setting)
#   bench/run.sh --table DIR         print the table again from a finished run's DIR
#
# The systems are interleaved, one run at a time: each round runs every concurrency level once for
# every system (DSCM without and with idempotency keys, the peer, the raw insert), in an order that
# rotates from round to round. The flush time of a virtual disk drifts over minutes; interleaving
# exposes every system to the same drift. Per system and concurrency the table shows the run with
# the median time, and the medians of the runs' p50 and p99 (the peer study's rule).
#
# Raw outputs and the table go to $BENCH_OUT (default: a new /tmp/dscm-bench.* directory): every
# run is a `scenario=...` line in dscm.out / peer.out, with its details in dscm.err / peer.err. A
# cluster this script starts, it stops.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=3
PAIRS=9500
SYNC=on
CONCURRENCY="1 8 32"
TABLE_ONLY=""
while [[ $# -gt 0 ]]; do
    case $1 in
    --runs) RUNS=$2; shift 2 ;;
    --pairs) PAIRS=$2; shift 2 ;;
    --synchronous-commit) SYNC=$2; shift 2 ;;
    --table) TABLE_ONLY=$2; shift 2 ;;
    *) echo "usage: $0 [--runs N] [--pairs N] [--synchronous-commit on|off] [--table DIR]" >&2; exit 2 ;;
    esac
done
PARTIES=1000
N=$((PARTIES + 2 * PAIRS))

# The table: one row per system and concurrency, ratios against the raw insert and the peer.
print_table() {
    local dir=$1
    cat "$dir/header"
    awk '
        function kv(line, arr,   i, parts, f, eq) {
            delete arr
            f = split(line, parts, " ")
            for (i = 1; i <= f; i++) {
                eq = index(parts[i], "=")
                if (eq > 0) arr[substr(parts[i], 1, eq - 1)] = substr(parts[i], eq + 1)
            }
        }
        # The median of list[key, 1..count[key]], numerically (upper middle for an even count);
        # also sets MEDIAN_INDEX to the position it came from.
        function median(list, count, key,   i, j, m, idx, tmp) {
            m = count[key]
            for (i = 1; i <= m; i++) idx[i] = i
            for (i = 2; i <= m; i++)
                for (j = i; j > 1 && list[key, idx[j - 1]] + 0 > list[key, idx[j]] + 0; j--) {
                    tmp = idx[j]; idx[j] = idx[j - 1]; idx[j - 1] = tmp
                }
            MEDIAN_INDEX = idx[int(m / 2) + 1]
            return list[key, MEDIAN_INDEX]
        }
        FNR == 1 { side = (FILENAME ~ /peer.out$/) ? "peer" : "dscm" }
        /^scenario=/ {
            kv($0, f)
            s = f["scenario"]; c = f["concurrency"]
            if (s == "dscm-commands") key = (f["idempotency"] == "on") ? "dscm-idem" : "dscm"
            else if (s == "escrow-commands") key = "peer"
            else if (s == "raw-insert-1row-txn") key = "raw"
            else if (s == "replay-all") { k = "replay-" side; i = ++rc[k]; rsec[k, i] = f["seconds"]; rops[k, i] = f["ops_per_s"]; rn[k] = f["n"]; next }
            else if (s == "verify-all") { k = "verify"; i = ++rc[k]; rsec[k, i] = f["seconds"]; rops[k, i] = f["ops_per_s"]; rn[k] = f["n"]; next }
            else next
            if (!(c in seen)) { seen[c] = 1; cs[++ncs] = c }
            k = key SUBSEP c
            i = ++cnt[k]
            sec[k, i] = f["seconds"]; ops[k, i] = f["ops_per_s"]; p50[k, i] = f["p50_ms"]; p99[k, i] = f["p99_ms"]
            if (key == "peer") {
                retr[k, i] = f["conflicts_retried"]
                ok = (f["rejected"] == 0 && f["event_rows"] == f["n"] && f["state_mismatch"] ~ /^0\// \
                      && f["balances_ok"] == "1000/1000")
                if (!ok) bad[k] = bad[k] " rejected=" f["rejected"] " rows=" f["event_rows"] " state=" f["state_mismatch"]
            } else if (key == "raw") {
                retr[k, i] = "-"
            } else {
                retr[k, i] = f["retries"]
                split(f["balances_ok"], b, "/")
                ok = (f["failed"] == 0 && f["event_rows"] == f["n"] && b[1] == b[2] && f["fold"] == "ok" && f["verify"] == "intact")
                if (!ok) bad[k] = bad[k] " failed=" f["failed"] " rows=" f["event_rows"] " bal=" f["balances_ok"] " fold=" f["fold"] " chain=" f["verify"]
            }
        }
        END {
            name["dscm"] = "DSCM, no idempotency key"
            name["dscm-idem"] = "DSCM, idempotency key"
            name["peer"] = "cqrs-es 0.5 + postgres-es"
            name["raw"] = "raw BEGIN;INSERT;COMMIT"
            order[1] = "dscm"; order[2] = "dscm-idem"; order[3] = "peer"; order[4] = "raw"
            for (i = 1; i <= ncs; i++)
                for (j = 1; j <= 4; j++) {
                    k = order[j] SUBSEP cs[i]
                    if (!(k in cnt)) continue
                    median(sec, cnt, k); med_ops[k] = ops[k, MEDIAN_INDEX]
                    med_p50[k] = median(p50, cnt, k); med_p99[k] = median(p99, cnt, k)
                    runs_retr[k] = ""
                    for (r = 1; r <= cnt[k]; r++) runs_retr[k] = runs_retr[k] (r > 1 ? "/" : "") retr[k, r]
                    runs_ops[k] = ""
                    for (r = 1; r <= cnt[k]; r++) runs_ops[k] = runs_ops[k] (r > 1 ? " " : "") ops[k, r]
                }
            printf "%3s  %-26s %7s %7s %8s %6s %7s  %-11s %-6s %s\n", "C", "system", "cmds/s", "p50 ms", "p99 ms", "/raw", "/peer", "retries", "checks", "cmds/s of each run"
            print "---  -------------------------- ------- ------- -------- ------ -------  ----------- ------ ------------------"
            for (i = 1; i <= ncs; i++) {
                c = cs[i]
                for (j = 1; j <= 4; j++) {
                    k = order[j] SUBSEP c
                    if (!(k in cnt)) continue
                    kr = "raw" SUBSEP c; kp = "peer" SUBSEP c
                    vr = ((kr in med_ops) && med_ops[kr] > 0) ? sprintf("%.2f", med_ops[k] / med_ops[kr]) : "-"
                    vp = ((kp in med_ops) && med_ops[kp] > 0) ? sprintf("%.2f", med_ops[k] / med_ops[kp]) : "-"
                    chk = (order[j] == "raw") ? "rows" : ((k in bad) ? "FAIL" : "ok")
                    printf "%3s  %-26s %7s %7s %8s %6s %7s  %-11s %-6s %s\n", c, name[order[j]], med_ops[k], med_p50[k], med_p99[k], vr, vp, runs_retr[k], chk, runs_ops[k]
                }
                if (i < ncs) print ""
            }
            print ""
            for (k in bad) printf "FAILED CHECKS %s:%s\n", k, bad[k]
            if ("replay-dscm" in rc) { m = median(rsec, rc, "replay-dscm"); printf "replay, DSCM (read_log, pages of 1000, + Marketplace::apply): %s events/s (%s events in %s s, median of %d)\n", rops["replay-dscm", MEDIAN_INDEX], rn["replay-dscm"], m, rc["replay-dscm"] }
            if ("verify" in rc) { m = median(rsec, rc, "verify"); printf "verify, DSCM (event_store::verify_all: SHA-256 chains, gaps):  %s events/s (%s s, median of %d)\n", rops["verify", MEDIAN_INDEX], m, rc["verify"] }
            if ("replay-peer" in rc) { m = median(rsec, rc, "replay-peer"); printf "replay, peer (QueryReplay::replay_all into a fold):           %s events/s (%s events in %s s, median of %d)\n", rops["replay-peer", MEDIAN_INDEX], rn["replay-peer"], m, rc["replay-peer"] }
        }
    ' "$dir/dscm.out" "$dir/peer.out"
}

if [[ -n $TABLE_ONLY ]]; then
    print_table "$TABLE_ONLY"
    exit 0
fi

OUT=${BENCH_OUT:-$(mktemp -d /tmp/dscm-bench.XXXXXX)}
mkdir -p "$OUT"
: >"$OUT/dscm.out"; : >"$OUT/dscm.err"; : >"$OUT/peer.out"; : >"$OUT/peer.err"

stop_pg=""
cleanup() { if [[ -n $stop_pg ]]; then infra/pg-bench.sh stop || true; fi; }
trap cleanup EXIT
if ! infra/pg-bench.sh status >/dev/null 2>&1; then stop_pg=1; fi
infra/pg-bench.sh start >/dev/null
DATABASE_URL=$(infra/pg-bench.sh url)
export DATABASE_URL

echo "== building (release)" >&2
DSCM_TARGET=${CARGO_TARGET_DIR:-$HOME/.cache/dscm/target}
CARGO_TARGET_DIR=$DSCM_TARGET cargo build --release --locked -p command-svc --bin bench >&2
DSCM_BIN=$DSCM_TARGET/release/bench
PEER_TARGET=${PEER_TARGET_DIR:-$HOME/.cache/dscm/target-peer}
(cd bench/peer-cqrs-es && CARGO_TARGET_DIR=$PEER_TARGET cargo build --release --locked >&2)
PEER_BIN=$PEER_TARGET/release/peer-cqrs-es

# What the numbers depend on most: the disk's flush time. Measured before and after.
PG_BIN=$(for d in /usr/lib/postgresql/*/bin; do echo "$d"; done | sort -V | tail -n 1)
flush_time() {
    "$PG_BIN/pg_test_fsync" -s 1 -f "$OUT/pg_test_fsync.tmp" 2>/dev/null |
        awk '$1 == "fdatasync" && $2 ~ /^[0-9.]+$/ { print $4, $5; exit }' || true
    rm -f "$OUT/pg_test_fsync.tmp"
}
{
    echo "Write side, n=$N commands ($PARTIES deposits/opens + $PAIRS hold/release pairs), median of $RUNS interleaved run(s)"
    echo "$(date -u +%FT%TZ), $(nproc) cores, load average at start $(cut -d' ' -f1-3 /proc/loadavg)"
    infra/pg-bench.sh settings
    echo "synchronous_commit=$SYNC on the benchmark's own databases"
    echo "8 kB write + fdatasync (pg_test_fsync) at start: $(flush_time)"
} >"$OUT/header"

dscm() { "$DSCM_BIN" --runs 1 --pairs "$PAIRS" --parties "$PARTIES" --synchronous-commit "$SYNC" "$@" >>"$OUT/dscm.out" 2>>"$OUT/dscm.err"; }
peer() { "$PEER_BIN" all --runs 1 --n "$N" --synchronous-commit "$SYNC" "$@" >>"$OUT/peer.out" 2>>"$OUT/peer.err"; }
run_system() {
    local system=$1 c=$2
    case $system in
    dscm) dscm --scenarios commands --idempotency off --concurrency "$c" ;;
    dscm-idem) dscm --scenarios commands --idempotency on --concurrency "$c" ;;
    peer) peer --concurrency "$c" ;;
    raw) dscm --scenarios raw --concurrency "$c" ;;
    esac
}

SYSTEMS=(dscm dscm-idem peer raw)
for round in $(seq 1 "$RUNS"); do
    for c in $CONCURRENCY; do
        for i in 0 1 2 3; do
            system=${SYSTEMS[$(((i + round - 1) % 4))]}
            echo "== round $round/$RUNS, C=$c: $system ($(date -u +%T))" >&2
            run_system "$system" "$c"
        done
    done
done

{
    echo "8 kB write + fdatasync (pg_test_fsync) at end:   $(flush_time); load average at end $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
} >>"$OUT/header"
print_table "$OUT" | tee "$OUT/table"
echo "(raw outputs in $OUT)" >&2
