#!/usr/bin/env bash
# The benchmarks recorded in bench/RESULTS.md: the shipped abha-bulk binary as separate
# processes with its shipped defaults (see bench/main.rs). Builds release binaries, starts (or
# installs) PostgreSQL and RabbitMQ, prints every figure with its target and writes the two
# pictures (bench/throughput.svg, bench/overload.svg).
#
#   bench/run.sh                 # everything (about 15 minutes on 2 cores)
#   bench/run.sh throughput --rows 20000 --workers 1,2
#   bench/run.sh rated --rates 50 --workers 1,2,4 --secs 30
# Any arguments are passed to abha-bulk-bench instead of `all`.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
# shellcheck source=scripts/services.sh
source scripts/services.sh
cargo build --release --quiet --bins
if [ $# -eq 0 ]; then set -- all --out-dir bench; fi
exec ./target/release/abha-bulk-bench "$@"
