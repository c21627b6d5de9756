#!/usr/bin/env bash
# Database size under retention (issue 19): bytes per row of a batch in Postgres (tables,
# indexes, WAL) before and after the retention sweep erased it, and a simulation of nightly
# uploads with retention that shows whether the size reaches a plateau.
#
#   bench/retention.sh size [ROWS]                 # default 1000000
#   bench/retention.sh plateau [DAYS] [ROWS/DAY] [RETENTION_DAYS]   # default 60 20000 7
#     (identifiers_days = rows_days = RETENTION_DAYS, attempts_days = twice that)
#
# Rows go in through the real `abha-bulk submit` of a generated benefit-link file; running
# them through ABDM is simulated with SQL (state succeeded, a result ciphertext of a real
# one's size, one attempt row each), and "days" pass by moving every timestamp back a day.
# Needs Postgres at 127.0.0.1:5432 (user postgres, trust) and an abha-bulk binary
# (ABHA_BULK_BIN, default target/release/abha-bulk, else target/debug/abha-bulk).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${ABHA_BULK_BIN:-target/release/abha-bulk}
[ -x "$BIN" ] || BIN=target/debug/abha-bulk
DB=abha_retention_bench_$$
export ABHA_BULK__DATABASE__URL="postgres://postgres@127.0.0.1:5432/$DB"
export ABHA_BULK__PII__KEY=$(head -c 32 /dev/urandom | base64)
export ABHA_BULK__TELEMETRY__LOG_FILTER=warn
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"; psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1 || true' EXIT
psql_db() { psql -X -q -At -h 127.0.0.1 -U postgres -d "$DB" -c "$1"; }
vacuum() { psql_db "VACUUM ANALYZE jobs"; psql_db "VACUUM ANALYZE attempts"; }

# N benefit-link rows with distinct well-formed ABHA numbers (offset: distinct per day).
gen() {
  python3 - "$1" "$2" "$3" <<'PY'
import sys
n, off, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
with open(path, "w") as f:
    f.write("external_ref,abha_number\n")
    for i in range(off, off + n):
        d = f"{(i * 7919 + 13) % 10**12:012d}"
        f.write(f"ref-{i},91-{d[0:4]}-{d[4:8]}-{d[8:12]}\n")
PY
}

# What a run of the batch leaves: every job succeeded with a result and one attempt.
simulate_run() {
  psql_db "UPDATE jobs SET state = 'succeeded', outcome = 'linked', attempts = 1,
             result = substring(payload from 1 for 51), result_masked = subject_masked,
             finished_at = now(), updated_at = now()
           WHERE state = 'queued';
           INSERT INTO attempts (job_id, job_attempt, operation, request_id, http_status,
                                 disposition, duration_ms)
           SELECT id, 1, 'benefit-link', gen_random_uuid(), 200, 'success', 120 FROM jobs
           WHERE id > COALESCE((SELECT max(job_id) FROM attempts), 0);
           DELETE FROM outbox;
           UPDATE batches SET state = 'finished', finished_at = now() WHERE state = 'active';"
}

sizes() { # table bytes, index bytes of jobs and attempts; whole database; live bytes of jobs' rows
  psql_db "SELECT pg_table_size('jobs'), pg_indexes_size('jobs'), pg_table_size('attempts'),
                  pg_indexes_size('attempts'), pg_database_size(current_database()),
                  (SELECT COALESCE(sum(pg_column_size(j.*)), 0) FROM jobs j)" | tr '|' ' '
}
lsn() { psql_db "SELECT pg_current_wal_lsn()"; }
wal_since() { psql_db "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '$1')"; }

"$BIN" migrate >/dev/null

case "${1:-size}" in
size)
  ROWS=${2:-1000000}
  gen "$ROWS" 0 "$TMP/links.csv"
  base=$(sizes); l0=$(lsn); t0=$(date +%s.%N)
  "$BIN" submit "$TMP/links.csv" --kind benefit-link --benefit PMJAY >/dev/null
  t1=$(date +%s.%N); w_submit=$(wal_since "$l0"); l1=$(lsn)
  simulate_run
  vacuum
  w_run=$(wal_since "$l1"); run=$(sizes)
  psql_db "UPDATE batches SET finished_at = now() - interval '31 days'"
  l2=$(lsn); t2=$(date +%s.%N)
  "$BIN" retention
  t3=$(date +%s.%N); w_erase=$(wal_since "$l2"); erased=$(sizes)
  vacuum; vacuumed=$(sizes)
  echo "rows $ROWS; submit $(echo "$t1 - $t0" | bc) s; retention sweep $(echo "$t3 - $t2" | bc) s"
  echo "columns: jobs table, jobs indexes, attempts table, attempts indexes, database, live row bytes of jobs (bytes)"
  echo "empty:             $base"
  echo "after run:         $run"
  echo "after erasure:     $erased"
  echo "after VACUUM:      $vacuumed"
  echo "WAL bytes: submit $w_submit, run (SQL stand-in) $w_run, erasure $w_erase"
  ;;
plateau)
  DAYS=${2:-60}; PER_DAY=${3:-20000}; KEEP=${4:-7}
  export ABHA_BULK__RETENTION__IDENTIFIERS_DAYS=$KEEP
  export ABHA_BULK__RETENTION__ROWS_DAYS=$KEEP
  export ABHA_BULK__RETENTION__ATTEMPTS_DAYS=$((KEEP * 2))
  echo "day jobs_table jobs_indexes attempts_table attempts_indexes database jobs_live_bytes jobs_rows unerased_rows"
  for day in $(seq 1 "$DAYS"); do
    gen "$PER_DAY" $((day * PER_DAY)) "$TMP/day.csv"
    "$BIN" submit "$TMP/day.csv" --kind benefit-link --benefit PMJAY >/dev/null
    simulate_run
    # A day passes.
    psql_db "UPDATE batches SET finished_at = finished_at - interval '1 day',
                                created_at = created_at - interval '1 day',
                                erased_at = erased_at - interval '1 day';
             UPDATE attempts SET created_at = created_at - interval '1 day'"
    "$BIN" retention >/dev/null
    # Stands in for a day of autovacuum (the simulated day lasts seconds).
    vacuum
    echo "$day $(sizes) $(psql_db "SELECT count(*), count(*) FILTER (WHERE erased_at IS NULL) FROM jobs" | tr '|' ' ')"
  done
  ;;
*) echo "usage: $0 size [ROWS] | plateau [DAYS] [ROWS_PER_DAY] [RETENTION_DAYS]" >&2; exit 2 ;;
esac
