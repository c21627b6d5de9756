# shellcheck shell=bash
# Steps 4 to 7 of scripts/container-check.sh (sourced by it: uses its log, CT, ROOT, PROJECT,
# COMPOSE_FILES, ROWS): the compose stack, the demo and the faults in containers, the image's
# runtime properties, and the teardown. Containers are reached on their bridge network by IP:
# compose.override.yaml publishes nothing on the host.

export CHECK_DIR=$CT
BENEFIT=DEMO-BENEFIT
STATE=$CT/check-state
mkdir -p "$STATE"

dc() { docker compose -p "$PROJECT" "${COMPOSE_FILES[@]}" "$@"; }

# The IP of the n-th (1-based) container of a service on the compose network.
ip_of() {
  local id
  id=$(dc ps -q "$1" | sed -n "${2:-1}p")
  docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$id"
}

wait_until() { # seconds description command...
  local limit=$1 what=$2 i
  shift 2
  for ((i = 0; i < limit; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  log "timed out after ${limit}s waiting for: $what"
  return 1
}

healthy() { # service: every container of it reports healthy
  local id ids
  ids=$(dc ps -q "$1")
  [ -n "$ids" ] || return 1
  for id in $ids; do
    [ "$(docker inspect -f '{{.State.Health.Status}}' "$id")" = healthy ] || return 1
  done
}

make_secrets() {
  mkdir -p "$CT/secrets" "$CT/samples"
  local s=$CT/secrets
  [ -s "$s/abdm_client_secret" ] || printf 'sandbox-secret' >"$s/abdm_client_secret"
  [ -s "$s/db_password" ] || head -c 18 /dev/urandom | base64 | tr -d '/+=\n' >"$s/db_password"
  [ -s "$s/rabbitmq_password" ] || head -c 18 /dev/urandom | base64 | tr -d '/+=\n' >"$s/rabbitmq_password"
  [ -s "$s/pii_key" ] || head -c 32 /dev/urandom | base64 | tr -d '\n' >"$s/pii_key"
  # Bind-mounted as they are: readable by the containers' users (postgres, rabbitmq, 10001).
  chmod 0755 "$s"
  chmod 0644 "$s"/*
  # The sandbox (uid 10001) writes its sample files here.
  rm -rf "$CT/samples"
  mkdir -p "$CT/samples"
  chmod 0777 "$CT/samples"
}

stack_healthy() { healthy worker && healthy api && healthy sandbox; }

stack_up() {
  make_secrets
  local t0=$SECONDS
  DOCKER_BUILDKIT=0 dc build postgres rabbitmq prometheus >"$CT/standins-build.log" 2>&1 \
    || { tail -30 "$CT/standins-build.log" >&2; return 1; }
  log "stand-in images built in $((SECONDS - t0)) s"
  t0=$SECONDS
  # `up` waits for each depends_on condition: postgres healthy, migrate exited 0, rabbitmq
  # healthy.
  dc up -d --no-build --scale worker=2 postgres rabbitmq sandbox migrate worker api prometheus \
    >"$CT/compose-up.log" 2>&1 || { tail -30 "$CT/compose-up.log" >&2; dc logs --tail 30 >&2; return 1; }
  wait_until 180 "workers, api and sandbox healthy" stack_healthy || { dc ps -a >&2; dc logs --tail 20 worker api sandbox >&2; return 1; }
  log "stack up and healthy in $((SECONDS - t0)) s"
  dc ps -a --format 'table {{.Service}}\t{{.Status}}' >&2
}

# ---------------------------------------------------------------- the demo
API=""
KEY=""
api() { curl -fsS -H "Authorization: Bearer $KEY" "$@"; }

submit_file() { # kind file name → prints the batch id
  local answer
  answer=$(api -X POST "http://$API:8090/v1/batches?kind=$1&benefit=$BENEFIT&file_name=$3" \
    -H "Content-Type: text/csv" -H "Idempotency-Key: check-$3-$(date +%s%N)" --data-binary "@$2")
  echo "$answer" >"$STATE/submit-$3.json"
  jq -r .batch <<<"$answer"
}

batch_finished() { # batch
  api "http://$API:8090/v1/batches/$1" >"$STATE/batch-$1.json" \
    && [ "$(jq -r .state "$STATE/batch-$1.json")" = finished ]
}

# Every row of the batch in a final state, the report with one line per accepted row and no
# row twice.
batch_complete() { # batch accepted_rows
  local b=$1 accepted=$2 status=$STATE/batch-$1.json
  api "http://$API:8090/v1/batches/$b" >"$status"
  local total open
  total=$(jq '[.counts[]] | add' "$status")
  open=$(jq '[.counts | to_entries[] | select(.key | test("^(queued|running|retrying|pending|claimed)$")) | .value] | add // 0' "$status")
  log "batch $b: $(jq -c .counts "$status")"
  [ "$total" -eq "$accepted" ] || { log "batch $b counts $total rows, $accepted were accepted"; return 1; }
  [ "$open" -eq 0 ] || { log "batch $b still has $open open rows"; return 1; }
  api "http://$API:8090/v1/batches/$b/report" -o "$STATE/report-$b.csv"
  # One line per row of the file (accepted, rejected or duplicate), each row once, none open.
  python3 - "$STATE/report-$b.csv" "$accepted" <<'PY'
import collections, csv, sys
rows = list(csv.DictReader(open(sys.argv[1], newline="")))
states = collections.Counter(r["state"] for r in rows)
numbers = [r["row"] for r in rows]
jobs = sum(n for s, n in states.items() if s not in ("rejected", "duplicate"))
print(f"report: {len(rows)} lines, {len(set(numbers))} distinct rows, states {dict(states)}", file=sys.stderr)
ok = len(set(numbers)) == len(numbers) and jobs == int(sys.argv[2]) \
    and not any(s in states for s in ("queued", "running", "retrying"))
sys.exit(0 if ok else 1)
PY
}

prom_query() { # promql → the JSON result array
  curl -fsS "http://$(ip_of prometheus):9090/api/v1/query" --data-urlencode "query=$1" | jq -c .data.result
}

# True when a PromQL comparison returns a series.
prom_true() { [ "$(prom_query "$1" | jq length)" -gt 0 ]; }

demo_in_containers() {
  local t0=$SECONDS
  # migrate ran once and exited 0 (up waited for it).
  local migrate_exit
  migrate_exit=$(docker inspect -f '{{.State.ExitCode}}' "$(dc ps -a -q migrate)")
  [ "$migrate_exit" = 0 ] || { log "migrate exited $migrate_exit"; return 1; }
  API=$(ip_of api)
  KEY=$(dc run --rm --no-deps api api-key create --benefit "$BENEFIT" --scope submit,read --name container-check 2>&1 \
    | grep -o 'abk_[A-Za-z0-9_]*' | head -1)
  [ -n "$KEY" ] || { log "no API key created"; return 1; }
  echo "$KEY" >"$STATE/api-key"
  wait_until 120 "the sandbox's sample files" test -s "$CT/samples/benefit-link.csv"
  ls -l "$CT/samples" >&2
  local file
  file=$CT/samples/benefit-link.csv
  # A demo-sized batch: the first 200 rows.
  head -n 201 "$file" >"$STATE/demo.csv"
  local batch accepted
  batch=$(submit_file benefit-link "$STATE/demo.csv" demo.csv)
  accepted=$(jq -r .accepted_rows "$STATE/submit-demo.csv.json")
  log "submitted batch $batch through the API: $accepted rows accepted"
  [ "$accepted" -gt 0 ] || return 1
  wait_until 300 "batch $batch finished" batch_finished "$batch" || return 1
  log "batch $batch finished in $((SECONDS - t0)) s"
  batch_complete "$batch" "$accepted" || return 1
  echo "$batch" >"$STATE/demo-batch"

  # Prometheus scraped both workers, sees the jobs and the build, and evaluated the rules.
  wait_until 90 "Prometheus scraping 2 workers" prom_true 'sum(up{job="abha-bulk-worker"}) == 2' \
    || return 1
  log "up: $(prom_query 'up{job="abha-bulk-worker"}')"
  log "build info: $(prom_query 'count by (version, commit) (abha_build_info)')"
  wait_until 60 "succeeded jobs in Prometheus" prom_true 'sum(abha_jobs_total{outcome="succeeded"}) > 0' \
    || return 1
  log "jobs: $(prom_query 'sum by (outcome) (abha_jobs_total)')"
  curl -fsS "http://$(ip_of prometheus):9090/api/v1/rules" >"$STATE/rules.json"
  local rule
  rule=$(jq -c '[.data.groups[].rules[] | select(.name == "AbhaBulkWorkerDown")][0]
    | {name, state, health, lastEvaluation}' "$STATE/rules.json")
  log "alert rule: $rule"
  jq -e '.health == "ok" and (.lastEvaluation | startswith("0001") | not)' <<<"$rule" >/dev/null \
    || { log "AbhaBulkWorkerDown was not evaluated"; return 1; }
  local bad_rules
  bad_rules=$(jq '[.data.groups[].rules[] | select(.health != "ok")] | length' "$STATE/rules.json")
  [ "$bad_rules" -eq 0 ] || { log "$bad_rules rules are not healthy"; return 1; }
}

# ---------------------------------------------------------------- faults mid-batch
rows_done_at_least() { # batch n
  api "http://$API:8090/v1/batches/$1" | jq -e "(.counts.succeeded // 0) + (.counts.failed // 0) >= $2"
}

chaos_in_containers() {
  local file batch accepted t0=$SECONDS
  file=$CT/samples/benefit-link.csv
  # Rows the demo did not use.
  { head -n 1 "$file"; tail -n +202 "$file" | head -n "$ROWS"; } >"$STATE/chaos.csv"
  batch=$(submit_file benefit-link "$STATE/chaos.csv" chaos.csv)
  accepted=$(jq -r .accepted_rows "$STATE/submit-chaos.csv.json")
  log "chaos batch $batch: $accepted rows"
  [ "$accepted" -gt 50 ] || { log "too few rows for the chaos batch"; return 1; }
  # Mid-batch: some rows done, most not.
  wait_until 120 "a tenth of the chaos batch done" rows_done_at_least "$batch" $((accepted / 10)) \
    || return 1
  local victim
  victim=$(dc ps -q worker | head -1)
  log "SIGKILL worker container ${victim:0:12} mid-batch"
  docker kill -s KILL "$victim" >/dev/null
  log "restarting the RabbitMQ container mid-batch"
  local r0=$SECONDS
  dc restart rabbitmq >/dev/null 2>&1
  wait_until 120 "RabbitMQ healthy again" healthy rabbitmq || return 1
  log "RabbitMQ back and healthy in $((SECONDS - r0)) s"
  wait_until 600 "chaos batch $batch finished" batch_finished "$batch" || {
    dc logs --tail 30 worker >&2
    return 1
  }
  log "chaos batch finished $((SECONDS - t0)) s after submit"
  batch_complete "$batch" "$accepted" || return 1
  log "killed worker: $(docker inspect -f '{{.State.Status}} (restarts {{.RestartCount}}, exit {{.State.ExitCode}})' "$victim")"
  # Nothing parked in the dead-letter queue by the faults.
  log "dead-letter and queues: $(prom_query 'abha_queue_messages')"
}

# ---------------------------------------------------------------- the image at run time
image_properties() {
  local ok=0 id
  id=$(dc ps -q worker | tail -1)
  log "image abha-bulk:local: $(docker image inspect abha-bulk:local --format '{{.Size}}' | awk '{printf "%.1f MB", $1/1e6}'), user $(docker image inspect abha-bulk:local --format '{{.Config.User}}')"
  [ "$(docker image inspect abha-bulk:local --format '{{.Config.User}}')" = 10001:10001 ] || { log "image user is not 10001"; ok=1; }
  [ "$(docker inspect -f '{{.HostConfig.ReadonlyRootfs}}' "$id")" = true ] || { log "worker root is not read-only"; ok=1; }
  local uids
  uids=$(docker top "$id" -o pid,uid,comm | tail -n +2 | awk '{print $2}' | sort -u | tr '\n' ' ')
  log "worker processes run as uid(s): $uids"
  [ "$uids" = "10001 " ] || { log "worker runs as $uids"; ok=1; }
  log "HEALTHCHECK of the image: $(docker image inspect abha-bulk:local --format '{{json .Config.Healthcheck.Test}}'); worker: $(docker inspect -f '{{.State.Health.Status}}' "$id")"
  # SIGTERM: the worker stops consuming, finishes in-flight calls, exits 0 within the grace.
  local t0
  t0=$(date +%s%N)
  docker stop -t 45 "$id" >/dev/null
  local took exit_code
  took=$(awk -v a="$t0" -v b="$(date +%s%N)" 'BEGIN {printf "%.2f", (b - a) / 1e9}')
  exit_code=$(docker inspect -f '{{.State.ExitCode}}' "$id")
  log "worker stopped on SIGTERM in ${took} s, exit code $exit_code (grace period 45 s)"
  echo "$took" >"$STATE/worker-stop-seconds"
  [ "$exit_code" = 0 ] || ok=1
  local api_id
  api_id=$(dc ps -q api)
  t0=$(date +%s%N)
  docker stop -t 30 "$api_id" >/dev/null
  log "api stopped on SIGTERM in $(awk -v a="$t0" -v b="$(date +%s%N)" 'BEGIN {printf "%.2f", (b - a) / 1e9}') s, exit code $(docker inspect -f '{{.State.ExitCode}}' "$api_id")"
  return "$ok"
}

teardown() {
  if docker info >/dev/null 2>&1; then
    # Each container stopped on its own first: how long its graceful stop takes.
    local id name t0
    for id in $(docker ps -q --filter "label=com.docker.compose.project=$PROJECT"); do
      name=$(docker inspect -f '{{.Name}}' "$id")
      t0=$(date +%s%N)
      docker stop -t 45 "$id" >/dev/null
      log "stopped ${name#/} in $(awk -v a="$t0" -v b="$(date +%s%N)" 'BEGIN {printf "%.2f", (b - a) / 1e9}') s, exit code $(docker inspect -f '{{.State.ExitCode}}' "$id")"
    done
    dc --profile grafana down -v --remove-orphans --timeout 45 >"$CT/compose-down.log" 2>&1 || true
    local left
    left=$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT" | wc -l)
    log "containers of $PROJECT left: $left; networks: $(docker network ls -q --filter "label=com.docker.compose.project=$PROJECT" | wc -l)"
  fi
  rm -rf "$CT/samples"
  stop_engine
}
