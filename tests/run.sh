#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the tests need, then runs them.
set -euo pipefail
cd "$(dirname "$0")/.."

# Browser end-to-end tests (tests/web_e2e.rs) drive Debian's headless Chromium with
# playwright-core; neither is needed at run time, only here.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=()
  [ -x /usr/bin/chromium ] || missing+=(chromium)
  command -v node >/dev/null || missing+=(nodejs)
  command -v npm >/dev/null || missing+=(npm)
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
fi
if [ ! -d tests/web/node_modules/playwright-core ]; then
  (cd tests/web && npm ci --no-audit --no-fund --loglevel=error)
fi

# rustup installs rust-toolchain.toml's toolchain on first use, but never adds its targets to a
# toolchain that is already installed; the guest plugins need wasm32-wasip2 (idempotent).
if command -v rustup >/dev/null; then
  rustup target add wasm32-wasip2 >/dev/null
fi

cargo test --workspace
# The guest plugins' own unit tests (prompt construction, answer parsing) run natively.
cargo test --manifest-path plugins/Cargo.toml --target "$(rustc -vV | sed -n 's/^host: //p')" \
  -p reviewer -p prompt-expander

# The aarch64 build (DGX Spark's Grace CPU), cross-compiled and run under qemu-user beside the
# native build on the tiny fixtures (tests/aarch64_qemu.rs). The script installs the cross tools
# when it can and fails otherwise; VIDEOSDGX_SKIP_AARCH64=1 skips this step explicitly.
if [ "${VIDEOSDGX_SKIP_AARCH64:-0}" = 1 ]; then
  echo "skipping the aarch64 cross build and qemu run (VIDEOSDGX_SKIP_AARCH64=1)" >&2
else
  scripts/cross-aarch64.sh cargo test -p videosdgx --test aarch64_qemu -- --ignored --nocapture
fi
