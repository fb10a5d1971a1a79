#!/usr/bin/env python3
"""The reference for `videosdgx bench flux`: diffusers 0.42.1's FLUX.1 and FLUX.2 models at a preset's
published config with random bf16 weights on one GPU, measured as ours is measured.

- transformer: one `Flux2Transformer2DModel` forward, batch 1, 512 text tokens, the image's latent
  tokens with the pipelines' position ids (median of 5 after 2 warm-ups);
- vae: `AutoencoderKLFlux2.decode` of the image's latents (median of 5 after 1 warm-up);
- pipeline (FLUX.2): a whole `Flux2KleinPipeline` (or `Flux2Pipeline` for dev) call from prompt
  embeddings, `--steps` steps, `output_type="np"` (decode and copy to the host), timed once after
  one untimed call of the same size.

Memory is device memory in use (total - free, so the CUDA context and the caching allocator's
reserve count), sampled every millisecond over the warm-up and the timed calls, as ours is, next
to PyTorch's own allocator peak. With --compile the transformer is `torch.compile`d (the
documented fast path; compilation happens in the warm-up).

Run: python3 kernels/bench/flux_reference.py --preset flux2-klein-4b --component transformer [--compile]
"""

import argparse
import json
import statistics
import threading
import time

import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderKLFlux2,
    FlowMatchEulerDiscreteScheduler,
    Flux2KleinPipeline,
    Flux2Pipeline,
    Flux2Transformer2DModel,
    FluxTransformer2DModel,
)

# The published transformer configs, as host/cli/src/commands/bench/configs.rs builds them.
PRESETS = {
    "flux2-klein-4b": dict(num_layers=5, num_single_layers=20, num_attention_heads=24, joint_attention_dim=7680, guidance_embeds=False),
    "flux2-dev": dict(),
    "flux1-dev": dict(guidance_embeds=True),
}
# FLUX.1's VAE (black-forest-labs/FLUX.1-dev vae/config.json).
FLUX1_VAE = dict(
    block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=16, scaling_factor=0.3611,
    shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False,
)
TEXT_TOKENS = 512
SCHEDULER = dict(
    num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
    base_image_seq_len=256, max_image_seq_len=4096, time_shift_type="exponential",
)

parser = argparse.ArgumentParser()
parser.add_argument("--preset", choices=PRESETS, default="flux2-klein-4b")
parser.add_argument("--component", choices=["transformer", "vae", "pipeline"], default="transformer")
parser.add_argument("--height", type=int, default=1024)
parser.add_argument("--width", type=int, default=1024)
parser.add_argument("--steps", type=int, default=4)
parser.add_argument("--compile", action="store_true")
args = parser.parse_args()

dev, bf16 = "cuda", torch.bfloat16
gh, gw = args.height // 16, args.width // 16
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


flux1 = args.preset.startswith("flux1")


def build_transformer():
    with torch.device(dev):
        cls = FluxTransformer2DModel if flux1 else Flux2Transformer2DModel
        model = cls(**PRESETS[args.preset]).to(bf16).eval()
    if args.compile:
        model = torch.compile(model)
    return model


sampler = threading.Thread(target=sample)
result = {}
with torch.no_grad():
    torch.cuda.reset_peak_memory_stats()
    sampler.start()
    if args.component == "transformer" and flux1:
        model = build_transformer()
        x = torch.randn(1, gh * gw, 64, device=dev, dtype=bf16)
        text = torch.randn(1, TEXT_TOKENS, 4096, device=dev, dtype=bf16)
        pooled = torch.randn(1, 768, device=dev, dtype=bf16)
        t = torch.full((1,), 0.5, device=dev, dtype=bf16)
        guidance = torch.full((1,), 3.5, device=dev, dtype=bf16)
        img_ids = torch.cartesian_prod(torch.arange(1), torch.arange(gh), torch.arange(gw)).to(dev)
        txt_ids = torch.zeros(TEXT_TOKENS, 3, device=dev)
        call = lambda: model(hidden_states=x, encoder_hidden_states=text, pooled_projections=pooled, timestep=t,
                             img_ids=img_ids, txt_ids=txt_ids, guidance=guidance, return_dict=False)
        result["ms"] = median_ms(call, warmup=3 if args.compile else 2, reps=5)
    elif args.component == "vae" and flux1:
        with torch.device(dev):
            vae = AutoencoderKL(**FLUX1_VAE).to(bf16).eval()
        z = torch.randn(1, 16, gh * 2, gw * 2, device=dev, dtype=bf16)
        result["ms"] = median_ms(lambda: vae.decode(z), warmup=1, reps=5)
    elif args.component == "transformer":
        model = build_transformer()
        cfg = PRESETS[args.preset]
        x = torch.randn(1, gh * gw, 128, device=dev, dtype=bf16)
        text = torch.randn(1, TEXT_TOKENS, cfg.get("joint_attention_dim", 15360), device=dev, dtype=bf16)
        t = torch.full((1,), 0.5, device=dev, dtype=bf16)
        guidance = None if cfg.get("guidance_embeds") is False else torch.full((1,), 4.0, device=dev, dtype=bf16)
        img_ids = torch.cartesian_prod(torch.arange(1), torch.arange(gh), torch.arange(gw), torch.arange(1)).to(dev)
        txt_ids = torch.cartesian_prod(torch.arange(1), torch.arange(1), torch.arange(1), torch.arange(TEXT_TOKENS)).to(dev)
        call = lambda: model(hidden_states=x, encoder_hidden_states=text, timestep=t, img_ids=img_ids,
                             txt_ids=txt_ids, guidance=guidance, return_dict=False)
        result["ms"] = median_ms(call, warmup=3 if args.compile else 2, reps=5)
    elif args.component == "vae":
        with torch.device(dev):
            vae = AutoencoderKLFlux2().to(bf16).eval()
        z = torch.randn(1, 32, gh * 2, gw * 2, device=dev, dtype=bf16)
        result["ms"] = median_ms(lambda: vae.decode(z), warmup=1, reps=5)
    else:
        with torch.device(dev):
            vae = AutoencoderKLFlux2().to(bf16).eval()
        vae.bn.running_var.fill_(1.0)
        transformer = build_transformer()
        scheduler = FlowMatchEulerDiscreteScheduler(**SCHEDULER)
        if args.preset == "flux2-dev":
            pipe = Flux2Pipeline(scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None, transformer=transformer)
        else:
            pipe = Flux2KleinPipeline(scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None,
                                      transformer=transformer, is_distilled=True)
        pipe.set_progress_bar_config(disable=True)
        embeds = torch.randn(1, TEXT_TOKENS, PRESETS[args.preset].get("joint_attention_dim", 15360), device=dev, dtype=bf16)
        call = lambda: pipe(prompt_embeds=embeds, height=args.height, width=args.width,
                            num_inference_steps=args.steps, guidance_scale=4.0, output_type="np")
        call()
        torch.cuda.synchronize()
        start = time.perf_counter()
        image = call().images
        torch.cuda.synchronize()
        result["ms"] = (time.perf_counter() - start) * 1e3
        result["steps"] = args.steps
        assert image.shape == (1, args.height, args.width, 3)
    torch.cuda.synchronize()
    stop.set()
    sampler.join()

gib = 2**30
print(json.dumps({
    "gpu": torch.cuda.get_device_name(),
    "preset": args.preset,
    "component": args.component,
    "compiled": args.compile,
    "height": args.height,
    "width": args.width,
    **result,
    "device_in_use_peak_gib": peak[0] / gib,
    "max_memory_allocated_gib": torch.cuda.max_memory_allocated() / gib,
}, indent=1))
