#!/usr/bin/env bash
# The whole test suite: formatting, clippy, unit and integration tests against real
# PostgreSQL, RabbitMQ and the embedded ABDM sandbox, then the short chaos run. Starts (or
# installs) what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
# shellcheck source=scripts/services.sh
source scripts/services.sh

echo "== cargo fmt --check" >&2
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -- -D warnings" >&2
cargo clippy --quiet --all-targets -- -D warnings
echo "== cargo deny: bans (one version of each crate, one TLS provider), licences, sources" >&2
DENY_VERSION=0.20.2
if ! cargo deny --version 2>/dev/null | grep -q "$DENY_VERSION"; then
  cargo install --locked --quiet cargo-deny --version "$DENY_VERSION"
fi
# Advisories need the RustSec database from GitHub, which the build machines cannot reach:
# run `cargo deny check advisories` where it can (deny.toml says which advisory is ignored and
# why).
cargo deny --log-level error check bans licenses sources
echo "== schemathesis (API fuzzer) in target/tools" >&2
ST_VERSION=4.32.5
ST=target/tools/venv/bin/schemathesis
if ! "$ST" --version 2>/dev/null | grep -q "$ST_VERSION"; then
  command -v python3 >/dev/null 2>&1 || apt_install python3
  python3 -m venv --clear target/tools/venv >/dev/null 2>&1 \
    || { apt_install python3-venv; python3 -m venv --clear target/tools/venv; }
  target/tools/venv/bin/pip install -q "schemathesis==$ST_VERSION"
fi
export ABHA_BULK_SCHEMATHESIS="$PWD/$ST"
echo "== kubernetes-validate (Kubernetes' own schemas, offline) in target/tools" >&2
# After schemathesis: its install may recreate the venv (--clear).
KV_VERSION=1.37.0
KV=target/tools/venv/bin/kubernetes-validate
if ! "$KV" --version 2>/dev/null | grep -q "$KV_VERSION"; then
  target/tools/venv/bin/pip install -q "kubernetes-validate==$KV_VERSION"
fi
export ABHA_BULK_KUBERNETES_VALIDATE="$PWD/$KV"
echo "== chromium and chromedriver (the console's browser test)" >&2
if [ ! -x /usr/bin/chromedriver ]; then apt_install chromium chromium-driver; fi
export ABHA_BULK_CHROMEDRIVER=/usr/bin/chromedriver
echo "== promtool: alert rules and their unit tests" >&2
./scripts/promtool.sh
if cargo nextest --version >/dev/null 2>&1; then
  echo "== cargo nextest run" >&2
  cargo nextest run --no-fail-fast "$@"
else
  echo "== cargo test (cargo-nextest not installed)" >&2
  cargo test --no-fail-fast "$@"
fi
# Last: the short chaos run (docs/reliability.md): real processes, their own PostgreSQL and
# RabbitMQ, each fault once; fails when a bound breaks.
echo "== chaos run (short)" >&2
./scripts/chaos.sh --short
