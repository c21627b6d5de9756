#!/usr/bin/env bash
# The previous release's abha-bulk binary (commit 56dcb3c), for the chaos run's rolling upgrade
# and its "before" figures (docs/reliability.md). Prints the binary's path on its last line;
# builds it only when it is missing, once, into target/previous-release:
#   target/previous-release/src      a git worktree of the commit (detached)
#   target/previous-release/target   its CARGO_TARGET_DIR
# The profile is the one the chaos run builds the new release with (dev, dependencies at
# opt-level 2 as Cargo.toml says), so old and new are compared like with like;
# PREVIOUS_RELEASE_PROFILE=release builds a release binary instead.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
COMMIT=56dcb3c
PROFILE=${PREVIOUS_RELEASE_PROFILE:-dev}
CACHE=target/previous-release
SRC=$CACHE/src
export CARGO_TARGET_DIR=$PWD/$CACHE/target
if [ "$PROFILE" = dev ]; then dir=debug; flag=(); else dir=$PROFILE; flag=(--profile "$PROFILE"); fi
BIN=$CARGO_TARGET_DIR/$dir/abha-bulk

if [ -x "$BIN" ] && [ -f "$CACHE/built-$COMMIT-$PROFILE" ]; then
  echo "$BIN"
  exit 0
fi
if [ "$(git rev-parse --is-shallow-repository 2>/dev/null)" = true ] &&
  ! git cat-file -e "$COMMIT^{commit}" 2>/dev/null; then
  echo "previous-release: this clone is shallow and lacks commit $COMMIT (the previous release);" \
    "fetch it first: git fetch --unshallow (or git fetch origin $COMMIT)" >&2
  exit 1
fi
if ! git cat-file -e "$COMMIT^{commit}" 2>/dev/null; then
  echo "previous-release: commit $COMMIT (the previous release) is not in this repository;" \
    "fetch it first (git fetch origin)" >&2
  exit 1
fi
mkdir -p "$CACHE"
if [ ! -e "$SRC/.git" ]; then
  # -f: a folder removed by hand leaves its registration behind.
  git worktree add -f --detach "$SRC" "$COMMIT" >&2
fi
# A cold cache starts from this checkout's own build: the dependencies are the same crates,
# so Cargo reuses them instead of compiling everything again (minutes on 2 cores).
if [ "$PROFILE" = dev ] && [ ! -d "$CARGO_TARGET_DIR/debug" ] && [ -d target/debug/deps ]; then
  mkdir -p "$CARGO_TARGET_DIR/debug"
  echo "previous-release: seeding $CARGO_TARGET_DIR from target/debug" >&2
  cp -a target/debug/deps target/debug/build target/debug/.fingerprint "$CARGO_TARGET_DIR/debug/" 2>/dev/null || true
fi
echo "previous-release: building abha-bulk at $COMMIT ($PROFILE) into $CARGO_TARGET_DIR" >&2
(cd "$SRC" && cargo build --locked "${flag[@]}" --bin abha-bulk >&2)
touch "$CACHE/built-$COMMIT-$PROFILE"
echo "$BIN"
