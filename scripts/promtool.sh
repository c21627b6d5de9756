#!/usr/bin/env bash
# Checks and unit-tests the Prometheus alert rules:
#   promtool check rules deploy/prometheus/alerts.yml
#   promtool test rules  deploy/prometheus/alerts.test.yaml
# Installs Debian's `prometheus` package (which ships promtool) when promtool is missing.
# Exits non-zero when a rule is invalid or a test fails.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[promtool] %s\n' "$*" >&2; }

if ! command -v promtool >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
      SUDO="sudo"
    else
      log "promtool is missing and this is neither root nor a user with sudo"
      exit 1
    fi
  fi
  log "promtool not found: apt-get install prometheus"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  # The package would start a Prometheus server through its service; nothing here needs it.
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    prometheus >/dev/null
fi

log "$(promtool --version 2>&1 | head -n1)"
promtool check rules deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/alerts.test.yaml
