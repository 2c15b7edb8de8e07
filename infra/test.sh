#!/usr/bin/env bash
# The project's one test command (the README names it, .ci/run calls it): formatting, lints and
# every test, against the real servers that infra/ starts. Servers this script starts, it stops.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/dscm/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

stop_pg=""
stop_kafka=""
cleanup() {
  if [ -n "$stop_kafka" ]; then infra/kafka.sh stop || true; fi
  if [ -n "$stop_pg" ]; then infra/pg.sh stop || true; fi
}
trap cleanup EXIT
if ! infra/pg.sh status >/dev/null 2>&1; then stop_pg=1; fi
infra/pg.sh start >/dev/null
DATABASE_URL="$(infra/pg.sh url)"
export DATABASE_URL
# The Kafka-protocol broker (tansu). On a machine without it this first builds it (~10 min).
if ! infra/kafka.sh status >/dev/null 2>&1; then stop_kafka=1; fi
infra/kafka.sh start >/dev/null
KAFKA_BROKERS="$(infra/kafka.sh url)"
export KAFKA_BROKERS

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== tests (DATABASE_URL=$DATABASE_URL KAFKA_BROKERS=$KAFKA_BROKERS)"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
