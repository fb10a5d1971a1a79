"""The reference's GPU memory measured the way `videosdgx bench wan` measures ours: device memory
in use (total - free from cudaMemGetInfo, so the CUDA context and the caching allocator's reserve
count), sampled every millisecond over a warm-up call and a second call (ours spans its warm-up
and timed calls the same way), next to PyTorch's own allocator peaks, and the second call's time.
Same models, shapes and dtype as shared/bench/diffusers_wan.py; vae22 is Wan2.2-TI2V-5B's
high-compression VAE (the config of its `vae/config.json`) decoding the same 81 frames at 480x832,
which that anchor does not cover.

    python3 reference_memory.py vae|vae22|wan2.1-1.3b|wan2.1-14b    # needs torch with CUDA, diffusers
"""

import json
import sys
import threading
import time

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel

LAYOUTS = {
    "wan2.1-1.3b": dict(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=30),
    "wan2.1-14b": dict(num_attention_heads=40, attention_head_dim=128, ffn_dim=13824, num_layers=40),
}
dev, bf16 = "cuda", torch.bfloat16
which = sys.argv[1]
if which == "vae":
    vae = AutoencoderKLWan().to(dev, bf16).eval()
    z = torch.randn(1, 16, 21, 60, 104, device=dev, dtype=bf16)
    call = lambda: vae.decode(z)
elif which == "vae22":
    vae = AutoencoderKLWan(
        base_dim=160, decoder_base_dim=256, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
        attn_scales=[], temperal_downsample=[False, True, True], is_residual=True, in_channels=12,
        out_channels=12, patch_size=2, scale_factor_spatial=16, scale_factor_temporal=4,
    ).to(dev, bf16).eval()
    z = torch.randn(1, 48, 21, 30, 52, device=dev, dtype=bf16)
    call = lambda: vae.decode(z)
else:
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2), in_channels=16, out_channels=16, text_dim=4096, freq_dim=256,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, **LAYOUTS[which],
    ).to(dev, bf16).eval()
    x = torch.randn(1, 16, 21, 60, 104, device=dev, dtype=bf16)
    t = torch.full((1,), 500.0, device=dev)
    e = torch.randn(1, 512, 4096, device=dev, dtype=bf16)
    call = lambda: model(hidden_states=x, timestep=t, encoder_hidden_states=e, return_dict=False)

peak, stop = [0], threading.Event()


def sample():
    while not stop.is_set():
        free, total = torch.cuda.mem_get_info()
        peak[0] = max(peak[0], total - free)
        time.sleep(0.001)


with torch.no_grad():
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    sampler = threading.Thread(target=sample)
    sampler.start()
    call()
    torch.cuda.synchronize()
    start = time.perf_counter()
    call()
    torch.cuda.synchronize()
    call_ms = (time.perf_counter() - start) * 1e3
    stop.set()
    sampler.join()

gib = 2**30
print(json.dumps({
    "gpu": torch.cuda.get_device_name(),
    "model": which,
    "call_ms": call_ms,
    "device_in_use_peak_gib": peak[0] / gib,
    "max_memory_allocated_gib": torch.cuda.max_memory_allocated() / gib,
    "max_memory_reserved_gib": torch.cuda.max_memory_reserved() / gib,
}, indent=1))
