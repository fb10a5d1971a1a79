#!/usr/bin/env bash
# Reproducible CUDA build of the `videosdgx` binary on a machine with no GPU and no driver.
#
#   scripts/build-cuda.sh [COMPUTE_CAP]     # 90 = H100/H200 (default), 121 = DGX Spark GB10
#
# Tools come from PyPI (CUDA 13.0 wheels, pinned below) into $VIDEOSDGX_CUDA_TOOLS
# (default ~/.cache/videosdgx/cuda-13.0), never into the repository. The driver library
# libcuda.so.1 is absent on such a machine, so the link goes against a stub that exports
# the cu* entry points cudarc declares; the real driver resolves them at run time.
# Everything is pinned to CUDA 13.0 so that candle's PTX uses an ISA the 13.0 driver accepts.
# candle-kernels is built with scripts/candle-kernels/build.rs (a cargo patch, applied for this
# build only): upstream's GGUF/MoE static kernels, which VideosDGX never runs and which take most
# of an hour to compile on a 2-core builder, become aborting stubs.
#
# Output: dist/videosdgx-cuda-sm<CAP> (stripped) and dist/videosdgx-cuda-sm<CAP>.xz.
# Run it on the GPU machine with the CUDA 13.0 libraries on the loader path, e.g.
#   LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib ./videosdgx-cuda-sm90 bench wan
set -euo pipefail

CAP="${1:-${CUDA_COMPUTE_CAP:-90}}"
case "$CAP" in 90 | 121) ;; *) echo "error: compute capability must be 90 or 121, got '$CAP'" >&2; exit 2 ;; esac

REPO="$(cd "$(dirname "$0")/.." && pwd)"
TOOLS="${VIDEOSDGX_CUDA_TOOLS:-$HOME/.cache/videosdgx/cuda-13.0}"
PYTHON="${PYTHON:-python3}"
WHEELS=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-cccl==13.0.85
  nvidia-cuda-nvrtc==13.0.88
  nvidia-cublas==13.0.2.14
  nvidia-curand==10.4.5.25
)

stamp="$TOOLS/.wheels"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "${WHEELS[*]}" ]]; then
  echo "installing CUDA 13.0 tools into $TOOLS" >&2
  rm -rf "$TOOLS/py"
  "$PYTHON" -m pip install --quiet --no-deps --target "$TOOLS/py" "${WHEELS[@]}"
  echo "${WHEELS[*]}" >"$stamp"
fi
CUDA_ROOT="$TOOLS/py/nvidia/cu13"

# The wheels ship only sonames (libcublas.so.13); the linker looks for libcublas.so.
for lib in cublas cublasLt nvrtc curand cudart; do
  soname="$(cd "$CUDA_ROOT/lib" && ls "lib$lib.so."* | grep -E "^lib$lib\.so\.[0-9]+$" | head -n1)"
  ln -sf "$soname" "$CUDA_ROOT/lib/lib$lib.so"
done

# Link stub for the driver: every cu* function cudarc's driver bindings declare.
crate_src() {
  cargo metadata --format-version 1 --manifest-path "$REPO/Cargo.toml" --features videosdgx/cuda 2>/dev/null |
    "$PYTHON" -c 'import json,sys; m=json.load(sys.stdin); print(next(p["manifest_path"] for p in m["packages"] if p["name"]==sys.argv[1]).rsplit("/",1)[0])' "$1"
}
cudarc_src="$(crate_src cudarc)"
mkdir -p "$CUDA_ROOT/lib/stubs"
grep -ohE '^\s+fn cu[A-Za-z0-9_]+\(' "$cudarc_src/src/driver/sys/mod.rs" |
  sed -E 's/^\s+fn (cu[A-Za-z0-9_]+)\(/\1/' | sort -u |
  awk '{ printf "int %s(void) { return 999; }\n", $1 }' >"$CUDA_ROOT/lib/stubs/cuda_stub.c"
cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$CUDA_ROOT/lib/stubs/libcuda.so" "$CUDA_ROOT/lib/stubs/cuda_stub.c"

# With VIDEOSDGX_CUDNN=1: the `cudnn` feature (cuDNN convolutions for the VAE). cuDNN is not
# downloaded: the link goes against a stub with soname libcudnn.so.9 exporting every cudnn*
# function cudarc declares; at run time the loader must find a real libcudnn.so.9 (9.2 or newer),
# e.g. the one PyTorch's nvidia-cudnn wheel installs.
FEATURES=cuda
if [[ "${VIDEOSDGX_CUDNN:-0}" == 1 ]]; then
  FEATURES=cuda,cudnn
  grep -ohE '^\s+fn cudnn[A-Za-z0-9_]+\(' "$cudarc_src/src/cudnn/sys/mod.rs" |
    sed -E 's/^\s+fn (cudnn[A-Za-z0-9_]+)\(/\1/' | sort -u |
    awk '{ printf "int %s(void) { return 999; }\n", $1 }' >"$CUDA_ROOT/lib/stubs/cudnn_stub.c"
  cc -shared -fPIC -Wl,-soname,libcudnn.so.9 -o "$CUDA_ROOT/lib/stubs/libcudnn.so" "$CUDA_ROOT/lib/stubs/cudnn_stub.c"
fi

export CUDA_ROOT
export PATH="$CUDA_ROOT/bin:$PATH"
export CUDARC_CUDA_VERSION=13000
export CUDA_COMPUTE_CAP="$CAP"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target/cuda-sm$CAP}"

kernels_src="$(crate_src candle-kernels)"
patched="$TOOLS/$(basename "$kernels_src")-videosdgx"
# Recreated only when our build script changed: cargo rebuilds a path dependency whose files are new.
if ! cmp -s "$REPO/scripts/candle-kernels/build.rs" "$patched/build.rs"; then
  rm -rf "$patched"
  cp -r "$kernels_src" "$patched"
  cp "$REPO/scripts/candle-kernels/build.rs" "$patched/build.rs"
fi

# The patch rewrites Cargo.lock's entry for candle-kernels: keep the repository's lock untouched.
lock_backup="$(mktemp)"
cp "$REPO/Cargo.lock" "$lock_backup"
trap 'cp "$lock_backup" "$REPO/Cargo.lock"; rm -f "$lock_backup"' EXIT
cargo build --release --manifest-path "$REPO/Cargo.toml" -p videosdgx --features "$FEATURES" \
  --config "patch.crates-io.candle-kernels.path=\"$patched\"" ${VIDEOSDGX_CARGO_EXTRA:-}
mkdir -p "$REPO/dist"
ship() {
  cp "$1" "$2"
  strip "$2"
  xz -T0 -6 -kf "$2"
  ls -l "$2" "$2.xz" >&2
}
ship "$CARGO_TARGET_DIR/release/videosdgx" "$REPO/dist/videosdgx-cuda-sm$CAP"

# With VIDEOSDGX_GPU_CHECKS=1, also the kernels' GPU checks (tests/gpu.rs) as a binary to run there.
if [[ "${VIDEOSDGX_GPU_CHECKS:-0}" == 1 ]]; then
  checks="$(cargo test --release --no-run --manifest-path "$REPO/Cargo.toml" -p videosdgx-kernels --features "$FEATURES" \
    --test gpu --config "patch.crates-io.candle-kernels.path=\"$patched\"" --message-format=json |
    "$PYTHON" -c 'import json,sys; print([m["executable"] for m in map(json.loads, sys.stdin) if m.get("reason")=="compiler-artifact" and m.get("executable")][-1])')"
  ship "$checks" "$REPO/dist/gpu-checks-sm$CAP"
fi
