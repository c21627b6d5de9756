#!/usr/bin/env bash
# The chaos run (docs/reliability.md): the real abha-bulk processes (sandbox with faults on,
# three workers, a relay) against a PostgreSQL and a RabbitMQ of their own, faults injected
# on a schedule, bounds checked. Exits non-zero when a bound breaks.
#
#   ./scripts/chaos.sh --short     # each fault once on 3 000 rows (CI, about 3 minutes)
#   ./scripts/chaos.sh             # the full run: 20 000 rows, a rolling upgrade from the
#                                  # previous release (built once by scripts/previous-release.sh)
#   ./scripts/chaos.sh --only postgres-down,skewed-clock   # some faults alone, 3 000 rows
#   ./scripts/chaos.sh --binary-all-previous   # the full run on the previous release ("before")
#   CHAOS_KEEP=1 ./scripts/chaos.sh --short   # keep the work folder (logs, samples)
# Other options: target/debug/abha-bulk-chaos --help.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
# shellcheck source=scripts/services.sh
source scripts/services.sh # installs postgresql and rabbitmq-server when absent
cargo build --quiet --bins

WORK=$(mktemp -d /tmp/abha-chaos.XXXXXX)
driver=""
# True when pid $1 belongs to this run (its command line or environment names $WORK), so a
# recycled pid of someone else's process is never killed.
ours() { grep -qaF "$WORK" "/proc/$1/cmdline" "/proc/$1/environ" 2>/dev/null; }
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$driver" ] && kill -0 "$driver" 2>/dev/null; then
    kill -TERM "$driver" 2>/dev/null || true
    wait "$driver" 2>/dev/null || true
  fi
  # What the driver could not stop itself (it was killed or crashed).
  local pid
  for pid in $(cat "$WORK/logs/pids" "$WORK/rabbitmq/pid" 2>/dev/null) \
    $(head -n1 "$WORK/pg/data/postmaster.pid" 2>/dev/null); do
    if ours "$pid"; then kill -9 "$pid" 2>/dev/null || true; fi
  done
  if [ "${CHAOS_KEEP:-0}" = 1 ]; then
    echo "chaos: work folder kept: $WORK" >&2
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT INT TERM
target/debug/abha-bulk-chaos --work-dir "$WORK" "$@" &
driver=$!
wait "$driver"
