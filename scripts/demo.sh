#!/usr/bin/env bash
# The main job end to end: starts what it needs, builds abha-bulk, and runs `abha-bulk demo`
# (embedded ABDM sandbox + pipeline), which prints the outcome summary and the report path.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
# shellcheck source=scripts/services.sh
source scripts/services.sh
export ABHA_BULK__ABDM__CLIENT_SECRET="${ABHA_BULK__ABDM__CLIENT_SECRET:-sandbox-secret}"
echo "building abha-bulk (the first build takes a few minutes on 2 cores)..." >&2
cargo build --quiet --bin abha-bulk
exec ./target/debug/abha-bulk demo "$@"
