#!/usr/bin/env bash
# The benchmarks recorded in bench/RESULTS.md. Builds release binaries, starts the services,
# and prints the figures. Usage: bench/run.sh [ROWS_SUBMIT] [ROWS_E2E] [ROWS_RATED] [RATE]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
# shellcheck source=scripts/services.sh
source scripts/services.sh
ROWS_SUBMIT=${1:-1000000}
ROWS_E2E=${2:-30000}
ROWS_RATED=${3:-6000}
RATE=${4:-100}
cargo build --release --quiet --bins
B=./target/release/abha-bulk-bench
FILE=$(mktemp --suffix=.csv)
trap 'rm -f "$FILE"' EXIT
echo "== machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r)"
echo "== submit of ${ROWS_SUBMIT} rows"
$B gen --rows "$ROWS_SUBMIT" --out "$FILE"
$B submit --file "$FILE"
echo "== end to end, rate limit off, ${ROWS_E2E} rows"
$B e2e --rows "$ROWS_E2E"
echo "== rate-limited: ${ROWS_RATED} rows at ${RATE}/s, sandbox limit ${RATE}/s"
$B e2e --rows "$ROWS_RATED" --rate "$RATE" --sandbox-limit "$RATE"
