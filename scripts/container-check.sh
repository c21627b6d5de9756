#!/usr/bin/env bash
# The deployment run for real, in containers (opt-in; scripts/test.sh does not call it):
#   1. a Docker engine: the running one, or a private dockerd started here (installed with
#      apt-get when absent) with its data, sockets and pid file under target/container/;
#   2. the base images, built locally when missing (no registry is reachable here):
#      debian:bookworm-slim from debootstrap, and a rust:1-bookworm stand-in with Debian's
#      rustc-web/cargo-web, a C toolchain and this machine's CA certificates;
#   3. the project's image from deploy/Dockerfile (the dependency layer stays cached in the
#      engine between runs);
#   4. the compose stack (deploy/compose.yaml + deploy/container-check/compose.override.yaml,
#      which swaps PostgreSQL, RabbitMQ and Prometheus for stand-ins built from Debian
#      packages and drops Grafana);
#   5. the demo inside the containers: sandbox, migrate, two workers, serve, a submit through
#      the API, the batch finished, its report downloaded, /metrics scraped by Prometheus and
#      an alert rule evaluated;
#   6. one worker container killed and the RabbitMQ container restarted mid-batch: every row
#      still ends in a final state, none twice;
#   7. teardown: containers, networks, volumes, the engine it started (by pid) and the
#      iptables chains that engine made.
# Prints a pass/fail summary with timings; exits non-zero when a step failed.
#
#   scripts/container-check.sh            # everything above
#   KEEP=1 scripts/container-check.sh     # leave the stack and the engine running
#   ROWS=1200 scripts/container-check.sh  # rows of the chaos batch (default 1000)
#   scripts/container-check.sh stack      # steps 4-7 only, with the image already built
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CT=$ROOT/target/container
mkdir -p "$CT"
KEEP=${KEEP:-0}
ROWS=${ROWS:-1000}
PROJECT=abha-bulk-check
COMPOSE_FILES=(-f deploy/compose.yaml -f deploy/container-check/compose.override.yaml)

log() { printf '[container-check %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# ---------------------------------------------------------------- summary
declare -a SUMMARY=()
FAILED=0
step() { # name command...: runs one step, records pass/fail and its duration
  local name=$1
  shift
  local t0=$SECONDS
  log "== $name"
  if "$@"; then
    SUMMARY+=("PASS  $(printf '%4d' $((SECONDS - t0)))s  $name")
  else
    SUMMARY+=("FAIL  $(printf '%4d' $((SECONDS - t0)))s  $name")
    FAILED=1
    return 1
  fi
}
print_summary() {
  printf '\n== container-check summary (%s)\n' "$(date -u +%FT%TZ)"
  printf '%s\n' "${SUMMARY[@]}"
  if [ "$FAILED" -eq 0 ]; then echo "container-check: PASS"; else echo "container-check: FAIL"; fi
}

# ---------------------------------------------------------------- 1. engine
apt_install() {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null \
    || { DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null; }
}

# Compose v2: bookworm only has compose v1 (1.29); trixie's docker-compose (2.x, a static Go
# binary) unpacks and runs on bookworm. apt fetches it with a private state directory, so the
# machine's own package lists never see trixie.
ensure_compose() {
  if docker compose version >/dev/null 2>&1; then return 0; fi
  local plugin=$CT/cli-plugins/docker-compose
  if [ ! -x "$plugin" ]; then
    log "fetching trixie's docker-compose (compose v2) with a private apt state"
    local apt=$CT/apt-trixie
    mkdir -p "$apt/lists/partial" "$apt/archives/partial" "$CT/cli-plugins"
    printf 'deb http://deb.debian.org/debian trixie main\n' >"$apt/sources.list"
    local opts=(-o "Dir::Etc::SourceList=$apt/sources.list" -o "Dir::Etc::SourceParts=/nonexistent"
      -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache::Archives=$apt/archives"
      -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache=" -o "APT::Get::List-Cleanup=0")
    apt-get "${opts[@]}" update -q >/dev/null
    (cd "$apt" && apt-get "${opts[@]}" download docker-compose >/dev/null)
    rm -rf "$apt/unpacked"
    dpkg-deb -x "$apt"/docker-compose_*.deb "$apt/unpacked"
    install -m 0755 "$apt/unpacked/usr/libexec/docker/cli-plugins/docker-compose" "$plugin"
  fi
  mkdir -p "${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"
  ln -sf "$plugin" "${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins/docker-compose"
  docker compose version
}

start_engine() {
  if docker info >/dev/null 2>&1; then
    log "using the running engine (${DOCKER_HOST:-/var/run/docker.sock})"
  else
    export DOCKER_HOST=unix://$CT/docker.sock
    if ! docker info >/dev/null 2>&1; then
      command -v dockerd >/dev/null 2>&1 || apt_install docker.io iptables
      command -v docker >/dev/null 2>&1 || apt_install docker.io
      # What the host had before, to put back at teardown.
      # (iptables-save prints nothing while no table is loaded: ask for the policy itself.)
      iptables -S FORWARD 2>/dev/null | awk '$1 == "-P" {print $3; exit}' >"$CT/forward-policy.before"
      cat /proc/sys/net/ipv4/ip_forward >"$CT/ip_forward.before"
      mkdir -p "$CT/data" "$CT/exec"
      log "starting a private dockerd (data, exec root, socket and pid file under $CT)"
      # Its bridge network is a private range the engine creates and owns; nothing else on
      # the host listens there. setsid: the engine outlives this shell only with KEEP=1.
      setsid dockerd --data-root "$CT/data" --exec-root "$CT/exec" --pidfile "$CT/dockerd.pid" \
        -H "unix://$CT/docker.sock" --bip 10.213.0.1/24 --default-address-pool \
        base=10.214.0.0/16,size=24 >"$CT/dockerd.log" 2>&1 </dev/null &
      local i
      for ((i = 0; i < 120; i++)); do
        docker info >/dev/null 2>&1 && break
        sleep 0.5
      done
      docker info >/dev/null 2>&1 || { tail -20 "$CT/dockerd.log" >&2; return 1; }
      echo 1 >"$CT/started-engine"
    fi
  fi
  ensure_compose
  docker version --format 'engine {{.Server.Version}}, client {{.Client.Version}}'
}

stop_engine() {
  [ -f "$CT/started-engine" ] || return 0
  local pid
  pid=$(cat "$CT/dockerd.pid" 2>/dev/null || true)
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    log "stopping the dockerd this script started (pid $pid)"
    kill -TERM "$pid"
    local i
    for ((i = 0; i < 60; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  fi
  # The chains and rules that engine made: every rule naming a DOCKER chain, its bridges
  # (docker0, br-<id>) or its address pools, then the DOCKER* chains, in the filter and nat
  # tables. Rules of anyone else are left alone.
  local table rule chain
  local ours='DOCKER|docker0|br-[0-9a-f]{12}|10\.21[34]\.'
  for table in filter nat; do
    iptables -t "$table" -S 2>/dev/null | grep -E '^-A ' | grep -vE '^-A DOCKER' | grep -E "$ours" \
      | while read -r rule; do
        # shellcheck disable=SC2086
        iptables -t "$table" ${rule/-A/-D} 2>/dev/null || true
      done
    for chain in $(iptables -t "$table" -S 2>/dev/null | awk '/^-N DOCKER/ {print $2}'); do
      iptables -t "$table" -F "$chain" 2>/dev/null || true
    done
    for chain in $(iptables -t "$table" -S 2>/dev/null | awk '/^-N DOCKER/ {print $2}'); do
      iptables -t "$table" -X "$chain" 2>/dev/null || true
    done
  done
  # dockerd set the FORWARD policy to DROP when it turned forwarding on: put both back.
  iptables -P FORWARD "$(cat "$CT/forward-policy.before" 2>/dev/null || echo ACCEPT)" 2>/dev/null || true
  [ -f "$CT/ip_forward.before" ] && cat "$CT/ip_forward.before" >/proc/sys/net/ipv4/ip_forward
  ip link del docker0 2>/dev/null || true
  rm -f "$CT/started-engine"
  if iptables-save 2>/dev/null | grep -Eq "$ours"; then
    log "iptables still holds rules of the engine after teardown:"
    iptables-save | grep -E "$ours" >&2
    return 1
  fi
  log "engine stopped; iptables back to: $(iptables -S | tr '\n' ' ')"
}

# ---------------------------------------------------------------- 2. base images
# debootstrap mounts /proc and /sys in the new root and a failed run can leave them: never
# archive or delete through a mount.
unmount_under() {
  local m
  for m in $(findmnt -rn -o TARGET | grep -F "$1/" | sort -r); do umount -l "$m" || true; done
}

build_debian_base() {
  if docker image inspect debian:bookworm-slim >/dev/null 2>&1; then return 0; fi
  command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
  local rootfs=$CT/rootfs-bookworm
  unmount_under "$rootfs"
  rm -rf --one-file-system "$rootfs"
  log "debootstrap --variant=minbase bookworm (a few minutes)"
  debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >"$CT/debootstrap.log" 2>&1 \
    || { tail -20 "$CT/debootstrap.log" >&2; return 1; }
  cat >"$rootfs/etc/apt/sources.list" <<'EOF'
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
EOF
  # Like the official image: services never start inside a build (policy-rc.d), and, like
  # the slim variant, no apt lists, docs or man pages.
  printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
  chmod +x "$rootfs/usr/sbin/policy-rc.d"
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
  unmount_under "$rootfs"
  tar -C "$rootfs" --one-file-system -c . | docker import -c 'CMD ["bash"]' - debian:bookworm-slim
  rm -rf --one-file-system "$rootfs"
}

build_rust_base() {
  if docker image inspect rust:1-bookworm >/dev/null 2>&1; then return 0; fi
  local ctx=$CT/rust-base
  rm -rf "$ctx"
  mkdir -p "$ctx/ca"
  cp /usr/local/share/ca-certificates/*.crt "$ctx/ca/" 2>/dev/null || true
  cp deploy/container-check/rust-base.Dockerfile "$ctx/Dockerfile"
  DOCKER_BUILDKIT=0 docker build -q -t rust:1-bookworm "$ctx"
}

# ---------------------------------------------------------------- 3. the project's image
build_image() {
  local version commit
  version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
  commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
  local t0=$SECONDS
  DOCKER_BUILDKIT=0 docker build -f deploy/Dockerfile -t abha-bulk:local \
    --build-arg "VERSION=$version" --build-arg "GIT_COMMIT=$commit" . >"$CT/image-build.log" 2>&1 \
    || { tail -30 "$CT/image-build.log" >&2; return 1; }
  log "image built in $((SECONDS - t0)) s: $(docker image inspect abha-bulk:local --format '{{.Size}}' \
    | awk '{printf "%.1f MB", $1/1e6}')"
  docker image inspect abha-bulk:local \
    --format '{{index .Config.Labels "org.opencontainers.image.version"}} {{index .Config.Labels "org.opencontainers.image.revision"}}' \
    | grep -qx "$version $commit" || { log "OCI labels are not $version $commit"; return 1; }
  docker run --rm abha-bulk:local --version | tee /dev/stderr | grep -q "$version.*$commit"
}

source "$ROOT/deploy/container-check/stack.sh"

main() {
  trap 'print_summary' EXIT
  step "1. container engine" start_engine || exit 1
  if [ "${1:-all}" = all ]; then
    step "2a. base image debian:bookworm-slim" build_debian_base || exit 1
    step "2b. base image rust:1-bookworm (stand-in)" build_rust_base || exit 1
    step "3. project image abha-bulk:local" build_image || exit 1
  else
    docker image inspect abha-bulk:local >/dev/null 2>&1 \
      || { log "no abha-bulk:local image: run without 'stack' first"; exit 1; }
  fi
  if step "4. compose stack up" stack_up \
    && step "5. demo in containers" demo_in_containers; then
    step "6. worker killed, RabbitMQ restarted mid-batch" chaos_in_containers || true
    step "4b. image: non-root, read-only, SIGTERM stop time" image_properties || true
  fi
  if [ "$KEEP" = 1 ]; then
    log "KEEP=1: stack and engine left running (DOCKER_HOST=${DOCKER_HOST:-default})"
  else
    step "7. teardown" teardown || true
  fi
  [ "$FAILED" -eq 0 ]
}

case "${1:-all}" in
  all) main all ;;
  stack) main stack ;;
  engine) start_engine ;;
  base) start_engine && build_debian_base && build_rust_base ;;
  image) start_engine && build_image ;;
  down)
    # Never starts an engine: tears down what a KEEP=1 run left.
    [ -S "$CT/docker.sock" ] && export DOCKER_HOST=unix://$CT/docker.sock
    teardown
    ;;
  *) echo "usage: $0 [all|stack|engine|base|image|down]" >&2; exit 2 ;;
esac
