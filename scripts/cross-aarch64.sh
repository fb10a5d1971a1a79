#!/usr/bin/env bash
# The CPU build of `videosdgx` for aarch64-unknown-linux-gnu (DGX Spark's Grace), cross-compiled on
# an x86-64 machine and run under qemu-user.
#
#   scripts/cross-aarch64.sh              # build, then run `videosdgx --version` under qemu
#   scripts/cross-aarch64.sh CMD [ARG...] # build, then run CMD with VIDEOSDGX_AARCH64_BIN set, e.g.
#   scripts/cross-aarch64.sh cargo test -p videosdgx --test aarch64_qemu -- --ignored
#
# Installs the cross tools when missing and allowed (scripts/aarch64-env.sh). Builds only the
# binary, in the dev profile the tests use (dependencies at opt-level 2, see Cargo.toml), into
# <target>/aarch64-unknown-linux-gnu/debug/videosdgx; the first-party wasm plugins the build embeds
# are shared with the native build (<target>/plugins-wasm), not built again.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=scripts/aarch64-env.sh
source "$REPO/scripts/aarch64-env.sh"

start=$SECONDS
cargo build --manifest-path "$REPO/Cargo.toml" --locked -p videosdgx --bin videosdgx --target "$AARCH64_TARGET"
echo "aarch64 build: $((SECONDS - start)) s" >&2

target_dir="$(cargo metadata --manifest-path "$REPO/Cargo.toml" --format-version 1 --no-deps |
  grep -o '"target_directory":"[^"]*"' | cut -d'"' -f4)"
export VIDEOSDGX_AARCH64_BIN="$target_dir/$AARCH64_TARGET/debug/videosdgx"

if (($# == 0)); then
  # shellcheck disable=SC2086 # the runner is a command line: program and its arguments
  $CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER "$VIDEOSDGX_AARCH64_BIN" --version
  echo "$VIDEOSDGX_AARCH64_BIN" >&2
else
  exec "$@"
fi
