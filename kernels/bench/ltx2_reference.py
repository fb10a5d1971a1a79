#!/usr/bin/env python3
"""The reference for `videosdgx bench ltx2`: diffusers 0.42.1's LTX-2 19B at the published configs
(kernels/bench/ltx2_19b.json, which ours reads too) with random bf16 weights on one GPU, measured as
ours is measured.

- transformer: one `LTX2VideoTransformer3DModel` forward over the video and its sound, batch 1,
  1,024 text tokens per stream with the connectors' all-ones mask, the clip's latent tokens
  (median of 5 after 2 warm-ups);
- vae: `AutoencoderKLLTX2Video.decode` of the clip's latents (median of 5 after 1 warm-up);
- pipeline: a whole `LTX2Pipeline` call from prompt embeddings (Gemma 3 12B's 49 hidden states of a
  128-token prompt left-padded to 1,024), the distilled 8-step sigmas with every guidance term off
  (the pipeline's defaults turn on audio CFG 7, STG and modality guidance),
  `output_type="np"` (video and audio decodes, the vocoder, the copy to the host), timed once after
  one untimed call of the same size.

The models are built on the GPU in bf16 (default dtype), so no f32 copy inflates the peak. Memory is
device memory in use (total - free: the CUDA context and the caching allocator's reserve count),
sampled every millisecond, as ours is, next to PyTorch's allocator peak. With --compile the
transformer is `torch.compile`d (the documented fast path; compilation happens in the warm-up).

Run: python3 kernels/bench/ltx2_reference.py --component transformer|vae|pipeline [--compile]
"""

import argparse
import json
import statistics
import threading
import time
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKLLTX2Audio,
    AutoencoderKLLTX2Video,
    FlowMatchEulerDiscreteScheduler,
    LTX2Pipeline,
    LTX2VideoTransformer3DModel,
)
from diffusers.pipelines.ltx2 import LTX2TextConnectors, LTX2Vocoder
from diffusers.pipelines.ltx2.utils import DISTILLED_SIGMA_VALUES

CONFIGS = json.loads((Path(__file__).with_name("ltx2_19b.json")).read_text())
TEXT_TOKENS, PROMPT_TOKENS, FPS = 1024, 128, 24.0
GEMMA_FEATURES = 3840 * 49

parser = argparse.ArgumentParser()
parser.add_argument("--component", choices=["transformer", "vae", "pipeline"], default="transformer")
parser.add_argument("--height", type=int, default=512)
parser.add_argument("--width", type=int, default=768)
parser.add_argument("--frames", type=int, default=121)
parser.add_argument("--compile", action="store_true")
args = parser.parse_args()

dev, bf16 = "cuda", torch.bfloat16
latent_frames, latent_h, latent_w = (args.frames - 1) // 8 + 1, args.height // 32, args.width // 32
video_tokens = latent_frames * latent_h * latent_w
audio_tokens = round(args.frames / FPS * 25)
peak, stop = [0], threading.Event()


def sample():
    while not stop.is_set():
        free, total = torch.cuda.mem_get_info()
        peak[0] = max(peak[0], total - free)
        time.sleep(0.001)


def median_ms(call, warmup, reps):
    for _ in range(warmup):
        call()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def build(cls, name):
    """The component from its published config, built on the GPU directly in bf16."""
    torch.set_default_dtype(bf16)
    try:
        with torch.device(dev):
            model = cls.from_config(CONFIGS[name]).eval()
    finally:
        torch.set_default_dtype(torch.float32)
    return model


def transformer():
    model = build(LTX2VideoTransformer3DModel, "transformer")
    return torch.compile(model) if args.compile else model


sampler = threading.Thread(target=sample)
result = {}
with torch.no_grad():
    torch.cuda.reset_peak_memory_stats()
    sampler.start()
    if args.component == "transformer":
        model = transformer()
        cfg = CONFIGS["transformer"]
        x = torch.randn(1, video_tokens, cfg["in_channels"], device=dev, dtype=bf16)
        audio = torch.randn(1, audio_tokens, cfg["audio_in_channels"], device=dev, dtype=bf16)
        # The connectors' outputs: caption_channels wide where the transformer projects them (2.0).
        projected = cfg["use_prompt_embeddings"]
        text_dim = cfg["caption_channels"] if projected else cfg["cross_attention_dim"]
        audio_text_dim = cfg["caption_channels"] if projected else cfg["audio_cross_attention_dim"]
        text = torch.randn(1, TEXT_TOKENS, text_dim, device=dev, dtype=bf16)
        audio_text = torch.randn(1, TEXT_TOKENS, audio_text_dim, device=dev, dtype=bf16)
        mask = torch.ones(1, TEXT_TOKENS, device=dev)
        t = torch.full((1,), 500.0, device=dev)
        call = lambda: model(
            hidden_states=x, audio_hidden_states=audio, encoder_hidden_states=text,
            audio_encoder_hidden_states=audio_text, timestep=t, sigma=t, encoder_attention_mask=mask,
            audio_encoder_attention_mask=mask, num_frames=latent_frames, height=latent_h, width=latent_w,
            fps=FPS, audio_num_frames=audio_tokens, use_cross_timestep=True, return_dict=False)
        out = None

        def timed():
            global out
            out = call()[0]

        result["ms"] = median_ms(timed, warmup=3 if args.compile else 2, reps=5)
        result["output_max_abs"] = out.float().abs().max().item()
    elif args.component == "vae":
        vae = build(AutoencoderKLLTX2Video, "vae")
        z = torch.randn(1, 128, latent_frames, latent_h, latent_w, device=dev, dtype=bf16)
        result["ms"] = median_ms(lambda: vae.decode(z), warmup=1, reps=5)
    else:
        pipe = LTX2Pipeline(
            scheduler=FlowMatchEulerDiscreteScheduler.from_config(CONFIGS["scheduler"]),
            vae=build(AutoencoderKLLTX2Video, "vae"), audio_vae=build(AutoencoderKLLTX2Audio, "audio_vae"),
            text_encoder=None, tokenizer=None, connectors=build(LTX2TextConnectors, "connectors"),
            transformer=transformer(), vocoder=build(LTX2Vocoder, "vocoder"),
        )
        pipe.set_progress_bar_config(disable=True)
        embeds = torch.randn(1, TEXT_TOKENS, GEMMA_FEATURES, device=dev, dtype=bf16)
        mask = torch.zeros(1, TEXT_TOKENS, device=dev, dtype=torch.long)
        mask[:, TEXT_TOKENS - PROMPT_TOKENS:] = 1
        call = lambda: pipe(
            prompt_embeds=embeds, prompt_attention_mask=mask, height=args.height, width=args.width,
            num_frames=args.frames, frame_rate=FPS, num_inference_steps=len(DISTILLED_SIGMA_VALUES),
            sigmas=DISTILLED_SIGMA_VALUES, guidance_scale=1.0, audio_guidance_scale=1.0, stg_scale=0.0,
            audio_stg_scale=0.0, modality_scale=1.0, audio_modality_scale=1.0, output_type="np", return_dict=False)
        call()
        torch.cuda.synchronize()
        start = time.perf_counter()
        video, audio = call()
        torch.cuda.synchronize()
        result["ms"] = (time.perf_counter() - start) * 1e3
        result["steps"] = len(DISTILLED_SIGMA_VALUES)
        assert video.shape == (1, args.frames, args.height, args.width, 3), video.shape
        result["audio_shape"] = list(audio.shape)
    torch.cuda.synchronize()
    stop.set()
    sampler.join()

gib = 2**30
print(json.dumps({
    "gpu": torch.cuda.get_device_name(),
    "component": args.component,
    "compiled": args.compile,
    "height": args.height,
    "width": args.width,
    "frames": args.frames,
    "video_tokens": video_tokens,
    "audio_tokens": audio_tokens,
    **result,
    "device_in_use_peak_gib": peak[0] / gib,
    "max_memory_allocated_gib": torch.cuda.max_memory_allocated() / gib,
}, indent=1))
