#!/usr/bin/env python3
"""The reference for the fast-paths headline, `videosdgx bench wan --preset wan2.1-14b --component
pipeline --schedule wan2.1-distill-4step`: diffusers 0.42.1's `WanPipeline` generating a 480x832,
81-frame clip with Wan 2.1 14B on a 4-step distilled schedule, from random weights, timed stage by
stage as ours is.

- text: the UMT5-XXL encoder (random bf16 weights of the published config) on 96 real random token
  ids padded to 512, the pipeline's `max_sequence_length`; guidance is off, so no negative prompt;
- steps: 4 flow-Euler steps at shift 5 without classifier-free guidance (`guidance_scale=1`), the
  transformer in bf16. The distillation LoRA is merged into the weights before a generation (ours
  merges at load too), so a LoRA'd model costs what the base model costs and none is loaded here;
- decode: the f32 VAE (as the diffusers Wan examples load it) and the frames' copy to the host
  (`output_type="np"`);
- mp4: `diffusers.utils.export_to_video` where the device has a video writer for it, else null.

The models are built on the GPU directly in bf16 (the VAE in f32). One untimed 2-step call of the
same size comes first (cuDNN, cuBLAS and allocator warm-up); device memory in use (total - free) is
sampled every millisecond over both calls, as ours is.

Run: python3 kernels/bench/wan_distill_reference.py [--steps 4] [--height 480 --width 832 --frames 81]
"""

import argparse
import json
import statistics
import tempfile
import threading
import time

import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
from transformers import UMT5Config, UMT5EncoderModel

TRANSFORMER = dict(  # Wan 2.1 T2V 14B
    patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16, out_channels=16,
    text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6,
)
UMT5_XXL = dict(
    vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
    relative_attention_num_buckets=32, relative_attention_max_distance=128, layer_norm_epsilon=1e-6,
    feed_forward_proj="gated-gelu", is_encoder_decoder=False,
)
PROMPT_TOKENS, MAX_SEQUENCE_LENGTH, FLOW_SHIFT, FPS = 96, 512, 5.0, 16

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=4)
parser.add_argument("--height", type=int, default=480)
parser.add_argument("--width", type=int, default=832)
parser.add_argument("--frames", type=int, default=81)
args = parser.parse_args()
dev, bf16 = "cuda", torch.bfloat16


def build(make, dtype):
    """A model built on the GPU directly in `dtype`, so no f32 copy of 14B parameters exists."""
    torch.set_default_dtype(dtype)
    try:
        with torch.device(dev):
            return make().eval()
    finally:
        torch.set_default_dtype(torch.float32)


encoder = build(lambda: UMT5EncoderModel(UMT5Config(**UMT5_XXL)), bf16)
pipe = WanPipeline(
    tokenizer=None, text_encoder=None,
    transformer=build(lambda: WanTransformer3DModel(**TRANSFORMER), bf16),
    vae=build(AutoencoderKLWan, torch.float32),
    scheduler=FlowMatchEulerDiscreteScheduler(shift=FLOW_SHIFT),
)
pipe.set_progress_bar_config(disable=True)

peak, stop = [0], threading.Event()


def sample():
    while not stop.is_set():
        free, total = torch.cuda.mem_get_info()
        peak[0] = max(peak[0], total - free)
        time.sleep(0.001)


try:
    from diffusers.utils import export_to_video

    export_to_video([torch.zeros(16, 16, 3).numpy()], tempfile.mktemp(suffix=".mp4"), fps=FPS)
except Exception as err:  # no imageio/OpenCV video writer on the device
    export_to_video = None
    print(f"no MP4 writer: {err}")


def generate(steps):
    ids = torch.zeros(1, MAX_SEQUENCE_LENGTH, dtype=torch.long, device=dev)
    ids[:, :PROMPT_TOKENS] = torch.randint(1, UMT5_XXL["vocab_size"], (1, PROMPT_TOKENS), device=dev)
    mask = (ids != 0).long()
    stamps = []

    def on_step(_pipe, _i, _t, kwargs):
        torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        return kwargs

    torch.cuda.synchronize()
    start = time.perf_counter()
    embeds = encoder(ids, attention_mask=mask).last_hidden_state
    embeds = embeds * mask.unsqueeze(-1)  # WanPipeline zeroes what lies past the prompt
    torch.cuda.synchronize()
    encoded = time.perf_counter()
    video = pipe(prompt_embeds=embeds, height=args.height, width=args.width, num_frames=args.frames,
                 num_inference_steps=steps, guidance_scale=1.0, output_type="np",
                 callback_on_step_end=on_step).frames[0]
    torch.cuda.synchronize()
    generated = time.perf_counter()
    if export_to_video is not None:
        export_to_video(list(video), tempfile.mktemp(suffix=".mp4"), fps=FPS)
    end = time.perf_counter()
    step_s = [b - a for a, b in zip([encoded] + stamps[:-1], stamps)]
    ms = lambda s: s * 1e3
    return dict(
        text_encode_ms=ms(encoded - start), step_ms=ms(statistics.median(step_s)),
        denoise_ms=ms(stamps[-1] - encoded), decode_ms=ms(generated - stamps[-1]),
        mp4_ms=ms(end - generated) if export_to_video is not None else None,
        total_ms=ms(end - start), total_without_mp4_ms=ms(generated - start),
        output_max_abs=float(abs(video).max()), frames_shape=list(video.shape),
    )


with torch.no_grad():
    sampler = threading.Thread(target=sample)
    sampler.start()
    generate(2)
    result = generate(args.steps)
    stop.set()
    sampler.join()

params = sum(p.numel() for m in (encoder, pipe.transformer, pipe.vae) for p in m.parameters())
print(json.dumps({
    "gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "height": args.height,
    "width": args.width, "frames": args.frames, "steps": args.steps, "guidance": 1.0, "flow_shift": FLOW_SHIFT,
    **result, "device_in_use_peak_gib": peak[0] / 2**30,
    "max_memory_allocated_gib": torch.cuda.max_memory_allocated() / 2**30, "params_b": params / 1e9,
}, indent=1))
