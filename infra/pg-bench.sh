#!/usr/bin/env bash
# A second private PostgreSQL cluster for benchmarks, with PostgreSQL's durable defaults
# (fsync, synchronous_commit and full_page_writes on), as the measured peer used: infra/pg.sh
# with DSCM_PG_DURABLE=1 on its own directory and port. The test cluster trades durability for
# speed; a benchmark on it would measure no fsync.
#
#   infra/pg-bench.sh start|stop|status|url|settings   as infra/pg.sh
#
# Environment: DSCM_PG_BENCH_DIR (default /var/tmp/dscm-pg-bench), DSCM_PG_BENCH_PORT (default
# 55433), DSCM_PG_BENCH_STATEMENTS=1 loads pg_stat_statements (for profiling; restart to change).
set -euo pipefail
export DSCM_PG_DIR=${DSCM_PG_BENCH_DIR:-/var/tmp/dscm-pg-bench}
export DSCM_PG_PORT=${DSCM_PG_BENCH_PORT:-55433}
export DSCM_PG_DURABLE=1
export DSCM_PG_STATEMENTS=${DSCM_PG_BENCH_STATEMENTS:-}
exec "$(dirname "$0")/pg.sh" "$@"
