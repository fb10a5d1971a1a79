# shellcheck shell=bash
# Sourced by scripts/cross-aarch64.sh and scripts/build-cuda.sh: makes sure the aarch64 cross
# tools are there (Debian's cross gcc/g++ for the C and C++ that crates bundle, qemu-user to run
# the result, the Rust target) and points cargo and the cc crate at them. Installs what is missing
# when it can (root with apt-get); otherwise fails with the list of what to install.

AARCH64_TARGET=aarch64-unknown-linux-gnu
# Debian's cross sysroot: the aarch64 glibc and libstdc++ the binary is linked against and that
# qemu's loader finds the target's shared libraries in.
AARCH64_SYSROOT=/usr/aarch64-linux-gnu

aarch64_ensure_tools() {
  local missing=()
  command -v aarch64-linux-gnu-gcc >/dev/null || missing+=(gcc-aarch64-linux-gnu)
  command -v aarch64-linux-gnu-g++ >/dev/null || missing+=(g++-aarch64-linux-gnu)
  [[ -e "$AARCH64_SYSROOT/lib/libc.so" ]] || missing+=(libc6-dev-arm64-cross)
  command -v qemu-aarch64 >/dev/null || missing+=(qemu-user)
  if ((${#missing[@]} > 0)); then
    if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null; then
      echo "error: the aarch64 cross build needs: ${missing[*]} (Debian packages); install them as root" >&2
      return 1
    fi
    echo "installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  fi
  # rustup never adds a target to a toolchain that is already installed (idempotent).
  if command -v rustup >/dev/null; then
    rustup target add "$AARCH64_TARGET" >/dev/null
  elif [[ ! -d "$(rustc --print sysroot)/lib/rustlib/$AARCH64_TARGET" ]]; then
    echo "error: the Rust standard library for $AARCH64_TARGET is missing and there is no rustup to add it" >&2
    return 1
  fi
}

aarch64_ensure_tools
# Only target-specific variables: the host's own build scripts and the wasm32 plugins keep the
# native compilers, and the native build's fingerprints stay valid.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
# `cargo run/test --target aarch64-unknown-linux-gnu` and tests/aarch64_qemu.rs run through this.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L $AARCH64_SYSROOT"
