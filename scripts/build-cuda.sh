#!/usr/bin/env bash
# Reproducible CUDA build of the `videosdgx` binary on a machine with no GPU and no driver.
#
#   scripts/build-cuda.sh [COMPUTE_CAP]     # 90 = H100/H200 (default), 121 = DGX Spark GB10
#
# The binary's architecture follows the machine the GPU sits in: 90 builds for x86-64, 121 for
# aarch64 (DGX Spark's Grace CPU). VIDEOSDGX_TARGET=<rust target triple> overrides that. An
# aarch64 build on an x86-64 machine is a cross build: candle's kernels are PTX and the host tools
# (nvcc) stay x86-64, the libraries it links against (cudart, cuBLAS, NVRTC, cuRAND) come from the
# same CUDA 13.0 wheels for linux aarch64, the driver stubs and the C code crates bundle are built
# with Debian's aarch64 cross gcc (scripts/aarch64-env.sh installs it), and the result is run
# under qemu-user for `--version` and a CPU `model forward` before it is shipped.
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
# Output: dist/videosdgx-cuda-sm<CAP>[-aarch64] (stripped) and the same with .xz. With
# VIDEOSDGX_CUDA_CHECK=1 it only runs clippy on the CUDA build (see below).
# Run it on the GPU machine with the CUDA 13.0 libraries on the loader path, e.g.
#   LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib ./videosdgx-cuda-sm90 bench wan
#   LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/sbsa-linux/lib ./videosdgx-cuda-sm121-aarch64 bench wan
set -euo pipefail

CAP="${1:-${CUDA_COMPUTE_CAP:-90}}"
case "$CAP" in 90 | 121) ;; *) echo "error: compute capability must be 90 or 121, got '$CAP'" >&2; exit 2 ;; esac

REPO="$(cd "$(dirname "$0")/.." && pwd)"
HOST="$(rustc -vV | sed -n 's/^host: //p')"
if [[ "$CAP" == 121 ]]; then default_target=aarch64-unknown-linux-gnu; else default_target=x86_64-unknown-linux-gnu; fi
TARGET="${VIDEOSDGX_TARGET:-$default_target}"
CROSS=0
if [[ "$TARGET" != "$HOST" ]]; then
  if [[ "$HOST" != x86_64-unknown-linux-gnu || "$TARGET" != aarch64-unknown-linux-gnu ]]; then
    echo "error: cross builds are for aarch64-unknown-linux-gnu on x86-64 only (host $HOST, target $TARGET)" >&2
    exit 2
  fi
  CROSS=1
fi
SUFFIX=""
[[ "$TARGET" == aarch64-* ]] && SUFFIX=-aarch64
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
HOST_CUDA="$TOOLS/py/nvidia/cu13"
CUDA_ROOT="$HOST_CUDA"
CC_TARGET="cc"
STRIP_TARGET="strip"
if ((CROSS)); then
  # shellcheck source=scripts/aarch64-env.sh
  source "$REPO/scripts/aarch64-env.sh"
  CC_TARGET="$CC_aarch64_unknown_linux_gnu"
  STRIP_TARGET=aarch64-linux-gnu-strip
  # The libraries the aarch64 binary links against and loads: the same pins, linux aarch64 wheels
  # (manylinux_2_17 for some, manylinux_2_27 for the others).
  TARGET_WHEELS=(nvidia-cuda-runtime==13.0.96 nvidia-cuda-nvrtc==13.0.88 nvidia-cublas==13.0.2.14 nvidia-curand==10.4.5.25)
  stamp="$TOOLS/.wheels-aarch64"
  if [[ ! -f "$stamp" || "$(cat "$stamp")" != "${TARGET_WHEELS[*]}" ]]; then
    echo "installing the CUDA 13.0 aarch64 libraries into $TOOLS/py-aarch64" >&2
    rm -rf "$TOOLS/py-aarch64"
    "$PYTHON" -m pip install --quiet --no-deps --only-binary=:all: --platform manylinux_2_17_aarch64 \
      --platform manylinux_2_27_aarch64 --target "$TOOLS/py-aarch64" "${TARGET_WHEELS[@]}"
    echo "${TARGET_WHEELS[*]}" >"$stamp"
  fi
  CUDA_ROOT="$TOOLS/py-aarch64/nvidia/cu13"
fi

# The wheels ship only sonames (libcublas.so.13); the linker looks for libcublas.so.
for lib in cublas cublasLt nvrtc curand cudart; do
  for file in "$CUDA_ROOT/lib/lib$lib.so."*; do
    if [[ "$(basename "$file")" =~ ^lib$lib\.so\.[0-9]+$ ]]; then
      ln -sf "$(basename "$file")" "$CUDA_ROOT/lib/lib$lib.so"
      break
    fi
  done
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
"$CC_TARGET" -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$CUDA_ROOT/lib/stubs/libcuda.so" "$CUDA_ROOT/lib/stubs/cuda_stub.c"

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
  "$CC_TARGET" -shared -fPIC -Wl,-soname,libcudnn.so.9 -o "$CUDA_ROOT/lib/stubs/libcudnn.so" "$CUDA_ROOT/lib/stubs/cudnn_stub.c"
fi
# With VIDEOSDGX_NCCL=1: the `nccl` feature (one generation split across cards). Likewise linked
# against a stub (soname libnccl.so.2, every nccl* function cudarc declares); at run time the
# loader must find a real libnccl.so.2 (2.18 or newer), e.g. the nvidia-nccl-cu13 wheel's.
if [[ "${VIDEOSDGX_NCCL:-0}" == 1 ]]; then
  FEATURES="$FEATURES,nccl"
  grep -ohE '^\s+fn nccl[A-Za-z0-9_]+\(' "$cudarc_src/src/nccl/sys/mod.rs" |
    sed -E 's/^\s+fn (nccl[A-Za-z0-9_]+)\(/\1/' | sort -u |
    awk '{ printf "int %s(void) { return 999; }\n", $1 }' >"$CUDA_ROOT/lib/stubs/nccl_stub.c"
  "$CC_TARGET" -shared -fPIC -Wl,-soname,libnccl.so.2 -o "$CUDA_ROOT/lib/stubs/libnccl.so" "$CUDA_ROOT/lib/stubs/nccl_stub.c"
fi

# cudarc links against $CUDA_ROOT/lib (the target's libraries); nvcc (PTX only) is the host's.
export CUDA_ROOT
export PATH="$HOST_CUDA/bin:$PATH"
export CUDARC_CUDA_VERSION=13000
export CUDA_COMPUTE_CAP="$CAP"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target/cuda-sm$CAP}"
# A native build keeps cargo's host layout (<target dir>/release); a cross build adds the triple.
TARGET_ARGS=()
OUT="$CARGO_TARGET_DIR/release"
if ((CROSS)); then
  TARGET_ARGS=(--target "$TARGET")
  OUT="$CARGO_TARGET_DIR/$TARGET/release"
fi

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
# VIDEOSDGX_CARGO_EXTRA: more cargo arguments, split on spaces.
read -ra extra <<<"${VIDEOSDGX_CARGO_EXTRA:-}"
# VIDEOSDGX_CUDA_CHECK=1: only type-check and lint the CUDA build, its tests and the GPU checks
# included (minutes, no codegen), as CI cannot: it builds without CUDA.
if [[ "${VIDEOSDGX_CUDA_CHECK:-0}" == 1 ]]; then
  cargo clippy --manifest-path "$REPO/Cargo.toml" -p videosdgx -p videosdgx-kernels \
    --features "$(sed 's/[^,]*/videosdgx\/&/g' <<<"$FEATURES")" --tests "${TARGET_ARGS[@]}" \
    --config "patch.crates-io.candle-kernels.path=\"$patched\"" "${extra[@]}" -- -D warnings
  exit
fi
cargo build --release --manifest-path "$REPO/Cargo.toml" -p videosdgx --features "$FEATURES" "${TARGET_ARGS[@]}" \
  --config "patch.crates-io.candle-kernels.path=\"$patched\"" "${extra[@]}"
mkdir -p "$REPO/dist"
ship() {
  cp "$1" "$2"
  "$STRIP_TARGET" "$2"
  xz -T0 -6 -kf "$2"
  ls -l "$2" "$2.xz" >&2
}
ship "$OUT/videosdgx" "$REPO/dist/videosdgx-cuda-sm$CAP$SUFFIX"

if ((CROSS)); then
  # No aarch64 GPU here: the shipped binary runs under qemu-user for `--version` and a CPU
  # `model forward` of the tiny Wan transformer, with the aarch64 CUDA libraries and the stubs on
  # the guest's loader path (-E: the guest's only). The loader looks the stubs up by soname,
  # which only this run's directory names them by.
  smoke="$(mktemp -d)"
  ln -s "$CUDA_ROOT/lib/stubs/libcuda.so" "$smoke/libcuda.so.1"
  if [[ "$FEATURES" == *cudnn* ]]; then
    ln -s "$CUDA_ROOT/lib/stubs/libcudnn.so" "$smoke/libcudnn.so.9"
  fi
  if [[ "$FEATURES" == *nccl* ]]; then
    ln -s "$CUDA_ROOT/lib/stubs/libnccl.so" "$smoke/libnccl.so.2"
  fi
  read -ra runner <<<"$CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER"
  guest=("${runner[@]}" -E "LD_LIBRARY_PATH=$CUDA_ROOT/lib:$smoke" "$REPO/dist/videosdgx-cuda-sm$CAP$SUFFIX")
  "${guest[@]}" --version
  fixture="$REPO/tests/fixtures/components/wan_t2v"
  "${guest[@]}" model forward --device cpu --model "$fixture/model" --inputs "$fixture/inputs.safetensors" \
    --out "$smoke/out.safetensors" --json
  rm -rf "$smoke"
fi

# With VIDEOSDGX_GPU_CHECKS=1, also the kernels' GPU checks (tests/gpu.rs) as a binary to run there.
if [[ "${VIDEOSDGX_GPU_CHECKS:-0}" == 1 ]]; then
  checks="$(cargo test --release --no-run --manifest-path "$REPO/Cargo.toml" -p videosdgx-kernels --features "$FEATURES" "${TARGET_ARGS[@]}" \
    --test gpu --config "patch.crates-io.candle-kernels.path=\"$patched\"" --message-format=json |
    "$PYTHON" -c 'import json,sys; print([m["executable"] for m in map(json.loads, sys.stdin) if m.get("reason")=="compiler-artifact" and m.get("executable")][-1])')"
  ship "$checks" "$REPO/dist/gpu-checks-sm$CAP$SUFFIX"
fi
