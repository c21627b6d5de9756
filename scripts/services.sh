#!/usr/bin/env bash
# Makes sure PostgreSQL and RabbitMQ run on this machine, installing them with apt-get when
# they are absent. Sourced by demo.sh and test.sh; safe to run again and again.
#
#   PostgreSQL: 127.0.0.1:5432, role postgres (password "postgres" is set when this script
#               installed the server; trust auth on machines that have it ignores passwords).
#   RabbitMQ:   127.0.0.1:5672, guest/guest.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

log() { printf '[services] %s\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port seconds name
  local i
  for ((i = 0; i < $2 * 2; i++)); do
    if port_open "$1"; then return 0; fi
    sleep 0.5
  done
  log "$3 did not open port $1 within $2 s"
  return 1
}

apt_updated=0
apt_install() {
  if [ "$apt_updated" -eq 0 ]; then
    log "apt-get update"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  log "apt-get install $*"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_postgres() {
  if port_open 5432; then return 0; fi
  local installed_now=0
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    apt_install postgresql postgresql-client
    installed_now=1
  fi
  local version
  version=$(find /etc/postgresql -mindepth 1 -maxdepth 1 -printf "%f\n" | sort -V | tail -n1)
  log "starting PostgreSQL $version"
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null \
    || $SUDO pg_ctlcluster "$version" main start
  wait_port 5432 60 PostgreSQL
  if [ "$installed_now" -eq 1 ]; then
    # A fresh Debian install authenticates TCP connections by password: give postgres one.
    $SUDO runuser -u postgres -- psql -q -c "ALTER USER postgres PASSWORD 'postgres'" >/dev/null
  fi
}

ensure_rabbitmq() {
  if port_open 5672; then return 0; fi
  if ! command -v rabbitmq-server >/dev/null 2>&1 && [ ! -x /usr/sbin/rabbitmq-server ]; then
    apt_install rabbitmq-server
  fi
  if port_open 5672; then return 0; fi
  log "starting RabbitMQ"
  $SUDO rabbitmq-server -detached >/dev/null 2>&1 || $SUDO service rabbitmq-server start
  wait_port 5672 120 RabbitMQ
}

ensure_postgres
ensure_rabbitmq

# Defaults for every abha-bulk process and test started from these scripts.
export ABHA_BULK__DATABASE__PASSWORD="${ABHA_BULK__DATABASE__PASSWORD:-postgres}"
export ABHA_BULK__RABBITMQ__PASSWORD="${ABHA_BULK__RABBITMQ__PASSWORD:-guest}"
export ABHA_BULK_TEST_DATABASE_URL="${ABHA_BULK_TEST_DATABASE_URL:-postgres://postgres:${ABHA_BULK__DATABASE__PASSWORD}@127.0.0.1:5432/postgres}"
export ABHA_BULK_TEST_AMQP_URL="${ABHA_BULK_TEST_AMQP_URL:-amqp://guest:${ABHA_BULK__RABBITMQ__PASSWORD}@127.0.0.1:5672/%2f}"
log "PostgreSQL and RabbitMQ are up"
